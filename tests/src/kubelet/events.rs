//! Core `Event` objects, as the kubelet, scheduler and controllers record them (so `kubectl describe` and
//! anything bridging Kubernetes events see the usual reasons). Recording never blocks or fails its caller.

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt as _};
use serde_json::json;

/// Who records: `component` (`kubelet`, `default-scheduler`, `job-controller`, ...) and, for the kubelet, its node.
#[derive(Clone)]
pub(crate) struct Recorder {
    client: kube::Client,
    component: String,
    host: Option<String>,
}

impl Recorder {
    pub(crate) fn new(client: kube::Client, component: &str, host: Option<&str>) -> Self {
        Self { client, component: component.to_string(), host: host.map(str::to_string) }
    }

    /// Records a `Normal` (or, with `warning`, a `Warning`) event about `object`.
    pub(crate) fn record<K>(&self, object: &K, warning: bool, reason: &str, message: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        let namespace = object.namespace().unwrap_or_else(|| "default".into());
        let name = object.name_any();
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": format!("{name}.{}", &uuid::Uuid::new_v4().simple().to_string()[..16]), "namespace": namespace},
            "involvedObject": {"apiVersion": K::api_version(&()), "kind": K::kind(&()), "namespace": object.namespace(),
                               "name": name, "uid": object.uid(), "resourceVersion": object.resource_version()},
            "reason": reason, "message": message, "type": if warning { "Warning" } else { "Normal" },
            "source": {"component": self.component, "host": self.host},
            "firstTimestamp": now, "lastTimestamp": now, "eventTime": null, "count": 1,
            "reportingComponent": self.component, "reportingInstance": self.host.clone().unwrap_or_default(),
        });
        let Ok(event) = serde_json::from_value::<Event>(event) else { return };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        tokio::spawn(async move {
            if let Err(e) = api.create(&PostParams::default(), &event).await {
                tracing::debug!("recording an event: {e}");
            }
        });
    }
}
