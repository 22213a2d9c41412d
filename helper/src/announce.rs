//! `coracle.restore.pod.ready`: tells start-restore that this pod is scheduled and waiting, so
//! its restore Jobs can start at once. Best effort: start-restore also reacts to the pod's
//! scheduling event, so an unreachable NATS is a warning, never a reason to fail the pod.

use crate::config::{Config, PodIdentity};
use crate::log;
use coracle_events::publish::Publisher;
use coracle_events::{CloudEvent, RestorePodReady};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One publish including the JetStream acknowledgement.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
const ATTEMPTS: u32 = 3;
const RETRY_DELAY: Duration = Duration::from_secs(2);

/// `<restore-uid>.<pod-uid>.ready`: one per pod, whatever the number of helper restarts.
pub fn event_id(restore_uid: &str, pod_uid: &str) -> String {
    format!("{restore_uid}.{pod_uid}.ready")
}

/// `/coracle/pods/<namespace>/<pod>`: the helper speaks for its pod.
pub fn event_source(pod: &PodIdentity) -> String {
    format!("/coracle/pods/{}/{}", pod.namespace, pod.name)
}

pub fn ready_event(config: &Config, pod: &PodIdentity) -> CloudEvent<RestorePodReady> {
    let data = RestorePodReady {
        restore: config.restore.clone(),
        namespace: pod.namespace.clone(),
        pod: pod.name.clone(),
        pod_uid: pod.uid.clone(),
        node: pod.node.clone(),
        volumes: config.volumes.clone(),
    };
    let subject = Some(config.restore.name.clone()).filter(|n| !n.is_empty());
    CloudEvent::new(event_id(&config.restore.uid, &pod.uid), event_source(pod), subject, data)
}

/// Publishes the ready event, retrying a little; logs the outcome and never fails.
pub async fn announce(url: String, event: CloudEvent<RestorePodReady>) {
    for attempt in 1..=ATTEMPTS {
        match publish_once(&url, &event).await {
            Ok(duplicate) => {
                let note = if duplicate { " (already published by an earlier run)" } else { "" };
                log::info(&format!("published coracle.restore.pod.ready {}{note}", event.id));
                return;
            }
            Err(e) if attempt < ATTEMPTS => {
                log::warn(&format!("publishing the ready event failed ({e}); retrying"));
                tokio::time::sleep(RETRY_DELAY).await;
            }
            Err(e) => log::warn(&format!(
                "publishing the ready event failed ({e}); waiting anyway: the restore also starts from the pod's \
                 scheduling"
            )),
        }
    }
}

async fn publish_once(url: &str, event: &CloudEvent<RestorePodReady>) -> Result<bool, String> {
    let connect = coracle_events::nats_auth::connect_options(url)
        .name("coracle-restore-wait")
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(url);
    let client = match tokio::time::timeout(CONNECT_TIMEOUT * 2, connect).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return Err(format!("NATS unreachable: {}", log::redact_url_credentials(&e.to_string()))),
        Err(_) => return Err("connecting to NATS timed out".into()),
    };
    let publisher = Publisher::new(async_nats::jetstream::new(client.clone()));
    let result = match tokio::time::timeout(PUBLISH_TIMEOUT, publisher.publish(event)).await {
        Ok(Ok(published)) => Ok(published.duplicate),
        Ok(Err(e)) => Err(log::redact_url_credentials(&e.to_string())),
        Err(_) => Err("no acknowledgement from JetStream".into()),
    };
    // Flush and close before returning, so the process can exit right after.
    let _ = tokio::time::timeout(Duration::from_secs(1), client.drain()).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use coracle_events::RestoreRef;

    #[test]
    fn the_event() {
        let pod = PodIdentity {
            namespace: "shop".into(),
            name: "web-0".into(),
            uid: "0f2c7f4e-3c1a-4a8e-9b7d-2f0e1d2c3b4a".into(),
            node: "node-1".into(),
        };
        let config = Config {
            restore: RestoreRef { name: "r1".into(), uid: "ruid".into() },
            pod: Some(pod.clone()),
            volumes: vec!["data".into(), "cache".into()],
            keep_markers: vec![],
            root: "/restores".into(),
            timeout: Duration::from_secs(1),
            nats_url: None,
            termination_log: "/dev/null".into(),
            warnings: vec![],
        };
        let event = ready_event(&config, &pod);
        assert_eq!(event.id, "ruid.0f2c7f4e-3c1a-4a8e-9b7d-2f0e1d2c3b4a.ready");
        assert_eq!(event.ty, "dev.coracle.restore.pod.ready.v1");
        assert_eq!(event.source, "/coracle/pods/shop/web-0");
        assert_eq!(event.subject.as_deref(), Some("r1"));
        assert_eq!(event.data.volumes, ["data", "cache"]);
        assert_eq!(event.data.node, "node-1");
    }
}
