//! The root CA publisher: a `kube-root-ca.crt` ConfigMap in every namespace, which every pod's projected
//! `kube-api-access-*` volume reads. The simulated API server serves plain HTTP, so the certificate is a
//! placeholder that only has to exist.

use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::sync::Notify;

use super::informer::Informer;
use super::Timing;

const NAME: &str = "kube-root-ca.crt";
const PLACEHOLDER: &str =
    "-----BEGIN CERTIFICATE-----\nY29yYWNsZS1zaW11bGF0ZWQtY2x1c3Rlcg==\n-----END CERTIFICATE-----\n";

/// Runs until aborted.
pub(crate) async fn run(client: kube::Client, timing: Timing) {
    let notify = Arc::new(Notify::new());
    let (namespaces, task) = Informer::start(Api::<Namespace>::all(client.clone()), None, None, vec![notify.clone()]);
    let _informer = super::AbortOnDrop(vec![task]);
    let mut published: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(timing.resync) => {}
        }
        for ns in namespaces.list() {
            let Some(name) = ns.metadata.name.clone() else { continue };
            if published.contains(&name) || ns.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &name);
            let Ok(cm) = serde_json::from_value::<ConfigMap>(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": NAME, "namespace": name, "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
                "data": {"ca.crt": PLACEHOLDER},
            })) else {
                continue;
            };
            match api.create(&PostParams::default(), &cm).await {
                Ok(_) => {
                    published.insert(name);
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    published.insert(name);
                }
                Err(e) => tracing::debug!("root-ca publisher: {name}: {e}"),
            }
        }
        published.retain(|n| namespaces.get("", n).is_some());
    }
}
