//! Publishing the Job's events to NATS JetStream, when configured.
//!
//! NATS is optional and never decides the outcome: if it is unreachable the backup or restore
//! still runs and the result still reaches the termination message, from where a sweep
//! recovers it.

use crate::scrub::redact_url_credentials;
use coracle_events::publish::Publisher;
use coracle_events::{CloudEvent, EventData, PlannedVolume};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound for one publish including the JetStream ack.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// `<backup-uid>.<namespace>.<pod>.<volume>`: unambiguous, since namespaces and volume names
/// cannot contain dots. Result events carry their own ids (`event_id()` in `coracle-events`,
/// shared with the sweep that recovers results); this prefix serves progress events.
pub fn event_id_prefix(backup_uid: &str, volume: &PlannedVolume) -> String {
    format!("{backup_uid}.{}.{}.{}", volume.namespace, volume.pod, volume.volume)
}

/// Unique per message: attempt, sequence and start time of this process (a pod restarted
/// without a failure being counted starts again at sequence 0).
pub fn progress_id(backup_uid: &str, volume: &PlannedVolume, attempt: u32, run: u64, seq: u64) -> String {
    format!("{}.progress.{attempt}.{run}.{seq}", event_id_prefix(backup_uid, volume))
}

#[derive(Clone)]
pub struct Notifier {
    publisher: Option<Publisher>,
    source: String,
    subject: Option<String>,
}

impl Notifier {
    pub fn disabled(source: String, subject: Option<String>) -> Self {
        Notifier { publisher: None, source, subject }
    }

    /// Connects when `url` is set and not empty; on failure logs a warning and stays disabled.
    pub async fn connect(url: Option<&str>, source: String, subject: Option<String>) -> Self {
        let Some(url) = url.map(str::trim).filter(|u| !u.is_empty()) else {
            tracing::info!("CORACLE_NATS_URL not set: no events are published");
            return Notifier::disabled(source, subject);
        };
        let shown = redact_url_credentials(url);
        let connect = coracle_events::nats_auth::connect_options(url)
            .name("coracle-volume-job")
            .connection_timeout(CONNECT_TIMEOUT)
            .connect(url);
        match tokio::time::timeout(CONNECT_TIMEOUT * 2, connect).await {
            Ok(Ok(client)) => {
                tracing::info!("publishing events to NATS at {shown}");
                Notifier { publisher: Some(Publisher::new(async_nats::jetstream::new(client))), source, subject }
            }
            Ok(Err(e)) => {
                let e = redact_url_credentials(&e.to_string());
                tracing::warn!("NATS at {shown} is unreachable ({e}); continuing without events");
                Notifier::disabled(source, subject)
            }
            Err(_) => {
                tracing::warn!("connecting to NATS at {shown} timed out; continuing without events");
                Notifier::disabled(source, subject)
            }
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.publisher.is_some()
    }

    /// Publishes one event; failures are logged, never returned. True when the stream has it.
    pub async fn publish<T: EventData>(&self, id: String, data: T) -> bool {
        let Some(publisher) = &self.publisher else { return false };
        let event = CloudEvent::new(id, self.source.clone(), self.subject.clone(), data);
        match tokio::time::timeout(PUBLISH_TIMEOUT, publisher.publish(&event)).await {
            Ok(Ok(published)) => {
                tracing::debug!(id = %event.id, duplicate = published.duplicate, "published {}", T::SUBJECT);
                true
            }
            Ok(Err(e)) => {
                tracing::warn!("{}", redact_url_credentials(&e.to_string()));
                false
            }
            Err(_) => {
                tracing::warn!("publishing {} to {} timed out", event.id, T::SUBJECT);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coracle_events::VolumeSource;

    #[test]
    fn ids() {
        let v = PlannedVolume {
            namespace: "shop".into(),
            pod: "db-0".into(),
            pod_uid: "0f2c7f4e-3c1a-4a8e-9b7d-2f0e1d2c3b4a".into(),
            volume: "data".into(),
            node: "n".into(),
            source: VolumeSource::EmptyDir,
            pvc: None,
            pvc_uid: None,
            pv: None,
            dir: "data".into(),
            identity: "x".into(),
        };
        assert_eq!(event_id_prefix("u1", &v), "u1.shop.db-0.data");
        assert_ne!(progress_id("u1", &v, 0, 7, 1), progress_id("u1", &v, 0, 7, 2));
        assert_ne!(progress_id("u1", &v, 0, 7, 1), progress_id("u1", &v, 1, 7, 1));
    }
}
