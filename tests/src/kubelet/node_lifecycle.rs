//! What the control plane does about nodes whose kubelet stopped, after Kubernetes' node lifecycle
//! controller, taint-eviction controller and pod garbage collector:
//! - a node whose Lease (`kube-node-lease/<node>`) was not renewed within `Timing::node_monitor_grace` gets
//!   its conditions set to `Unknown` (`NodeStatusUnknown`, "Kubelet stopped posting node status.") and the
//!   `node.kubernetes.io/unreachable` taints (NoSchedule, NoExecute); its pods get `Ready=False`. A renewed
//!   Lease removes the taints again (the kubelet reports Ready itself);
//! - pods on a node with a NoExecute taint they do not tolerate are evicted: condition `DisruptionTarget`
//!   (`DeletionByTaintManager`), then deleted. Pods without a toleration for the not-ready/unreachable taints
//!   get the 300 s ones the `DefaultTolerationSeconds` admission plugin would have added; pods tolerating the
//!   taint forever (Coracle's Jobs tolerate every taint) stay, reported Running by nobody, as in Kubernetes;
//! - pods bound to a node that no longer exists (the cloud deleted the vanished machine) are marked `Failed`
//!   with `reason: NodeLost`, the message of the old node controller ("Node X which was running pod Y is
//!   unresponsive") and `DisruptionTarget` (`DeletionByPodGC`), then deleted (a Job's pods stay until the Job
//!   controller has counted them); so are terminating pods that were never scheduled.
//!
//! Node-loss timings are configurable (Kubernetes: 40 s grace, 300 s default tolerations, 40 s pod GC quarantine).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::events::Recorder;
use super::informer::Informer;
use super::scheduler::tolerates;
use super::Timing;

pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// What `DefaultTolerationSeconds` adds for the not-ready and unreachable taints.
const DEFAULT_TOLERATION: Duration = Duration::from_secs(300);

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn ready_status(node: &Node) -> Option<String> {
    node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready").map(|c| c.status.clone())
}

fn terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// When a NoExecute taint evicts this pod: now, after tolerationSeconds, or never.
fn eviction_delay(pod: &Pod, taint: &Taint) -> Option<Duration> {
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
    let matching: Vec<_> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
    if matching.is_empty() {
        let defaulted = taint.key == TAINT_UNREACHABLE || taint.key == TAINT_NOT_READY;
        return Some(if defaulted { DEFAULT_TOLERATION } else { Duration::ZERO });
    }
    // The shortest finite tolerationSeconds wins; any toleration without one tolerates forever.
    if matching.iter().any(|t| t.toleration_seconds.is_none()) {
        return None;
    }
    matching.iter().filter_map(|t| t.toleration_seconds).min().map(|s| Duration::from_secs(s.max(0) as u64))
}

struct Controller {
    client: kube::Client,
    timing: Timing,
    recorder: Recorder,
    /// When each node was first seen, for nodes that never had a Lease.
    first_seen: HashMap<String, Instant>,
    /// When a node name was first found missing while pods were bound to it.
    missing_since: HashMap<String, Instant>,
}

impl Controller {
    async fn mark_unknown(&self, node: &Node, pods: &[&Pod]) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let at = now();
        let unknown = |kind: &str| {
            json!({"type": kind, "status": "Unknown", "reason": "NodeStatusUnknown",
                   "message": "Kubelet stopped posting node status.", "lastTransitionTime": at})
        };
        let conditions = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"].map(unknown);
        let status = json!({"status": {"conditions": conditions}});
        let mut taints: Vec<serde_json::Value> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t.key != TAINT_UNREACHABLE)
            .filter_map(|t| serde_json::to_value(t).ok())
            .collect();
        for effect in ["NoSchedule", "NoExecute"] {
            taints.push(json!({"key": TAINT_UNREACHABLE, "effect": effect, "timeAdded": at}));
        }
        // Taints first: whoever sees the node Unknown also sees them.
        let nodes: Api<Node> = Api::all(self.client.clone());
        if let Err(e) =
            nodes.patch(&name, &PatchParams::default(), &Patch::Merge(&json!({"spec": {"taints": taints}}))).await
        {
            tracing::debug!("node-lifecycle: tainting {name}: {e}");
            return;
        }
        if let Err(e) = nodes.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&status)).await {
            tracing::debug!("node-lifecycle: marking {name} unknown: {e}");
            return;
        }
        self.recorder.record(node, false, "NodeNotReady", &format!("Node {name} status is now: NodeNotReady"));
        for pod in pods {
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &pod.metadata.namespace.clone().unwrap_or_default());
            let ready =
                json!({"status": {"conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": at}]}});
            let _ = api
                .patch_status(
                    &pod.metadata.name.clone().unwrap_or_default(),
                    &PatchParams::default(),
                    &Patch::Strategic(&ready),
                )
                .await;
            self.recorder.record(*pod, true, "NodeNotReady", "Node is not ready");
        }
    }

    async fn clear_unreachable(&self, node: &Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let taints: Vec<serde_json::Value> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t.key != TAINT_UNREACHABLE)
            .filter_map(|t| serde_json::to_value(t).ok())
            .collect();
        let nodes: Api<Node> = Api::all(self.client.clone());
        let _ = nodes.patch(&name, &PatchParams::default(), &Patch::Merge(&json!({"spec": {"taints": taints}}))).await;
    }

    /// Marks a pod Failed (with a reason and a DisruptionTarget condition) and deletes it.
    async fn fail_and_delete(
        &self,
        pod: &Pod,
        reason: Option<(&str, String)>,
        disruption: &str,
        disruption_message: &str,
    ) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.metadata.namespace.clone().unwrap_or_default());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let at = now();
        let mut status = json!({"status": {"conditions": [{"type": "DisruptionTarget", "status": "True", "reason": disruption,
                                                           "message": disruption_message, "lastTransitionTime": at}]}});
        if let Some((reason, message)) = reason {
            status["status"]["phase"] = json!("Failed");
            status["status"]["reason"] = json!(reason);
            status["status"]["message"] = json!(message);
        }
        if api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&status)).await.is_ok() {
            let _ = api.delete(&name, &DeleteParams::default().grace_period(0)).await;
        }
    }

    async fn sync(&mut self, nodes: &[Node], leases: &Informer<Lease>, pods: &[Pod]) {
        let now_wall = chrono::Utc::now();
        let mut on_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
        for pod in pods {
            if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()) {
                on_node.entry(node).or_default().push(pod);
            }
        }
        for node in nodes {
            let name = node.metadata.name.clone().unwrap_or_default();
            let first_seen = *self.first_seen.entry(name.clone()).or_insert_with(Instant::now);
            let renewed = leases
                .get(super::NODE_LEASE_NAMESPACE, &name)
                .and_then(|l| l.spec?.renew_time)
                .map(|t| t.0.as_millisecond());
            let fresh = match renewed {
                Some(ms) => now_wall.timestamp_millis() - ms < self.timing.node_monitor_grace.as_millis() as i64,
                None => first_seen.elapsed() < self.timing.node_monitor_grace,
            };
            let tainted = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.key == TAINT_UNREACHABLE));
            let node_pods = on_node.get(&name).cloned().unwrap_or_default();
            if !fresh && ready_status(node).as_deref() != Some("Unknown") {
                self.mark_unknown(node, &node_pods).await;
            } else if fresh && tainted {
                self.clear_unreachable(node).await;
            }
            // Taint-based eviction.
            let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
            for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
                let added = taint
                    .time_added
                    .as_ref()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t.0.to_string()).ok())
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .unwrap_or(now_wall);
                for pod in node_pods.iter().filter(|p| !terminal(p) && p.metadata.deletion_timestamp.is_none()) {
                    let Some(delay) = eviction_delay(pod, taint) else { continue };
                    if now_wall >= added + chrono::Duration::from_std(delay).unwrap_or_default() {
                        self.recorder.record(*pod, false, "TaintManagerEviction", "Marking for deletion Pod");
                        self.fail_and_delete(
                            pod,
                            None,
                            "DeletionByTaintManager",
                            "Taint manager: deleting due to NoExecute taint",
                        )
                        .await;
                    }
                }
            }
        }
        // Pod GC: pods bound to nodes that do not exist.
        let existing: std::collections::HashSet<String> =
            nodes.iter().filter_map(|n| n.metadata.name.clone()).collect();
        self.missing_since.retain(|n, _| !existing.contains(n));
        for (node, node_pods) in &on_node {
            if existing.contains(node) {
                continue;
            }
            let since = *self.missing_since.entry(node.clone()).or_insert_with(Instant::now);
            if since.elapsed() < self.timing.pod_gc_quarantine {
                continue;
            }
            for pod in node_pods.iter().filter(|p| !terminal(p)) {
                let name = pod.metadata.name.clone().unwrap_or_default();
                let message = format!("Node {node} which was running pod {name} is unresponsive");
                self.fail_and_delete(
                    pod,
                    Some(("NodeLost", message)),
                    "DeletionByPodGC",
                    "PodGC: node no longer exists",
                )
                .await;
            }
        }
        // Pod GC: terminating pods that were never scheduled have no kubelet to end them.
        for pod in pods {
            let unscheduled = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or_default().is_empty();
            if unscheduled && pod.metadata.deletion_timestamp.is_some() && !terminal(pod) {
                let message = "PodGC: deleting a terminating pod that was never scheduled";
                self.fail_and_delete(pod, Some(("Terminated", message.to_string())), "DeletionByPodGC", message).await;
            }
        }
    }
}

/// Runs until aborted.
pub(crate) async fn run(client: kube::Client, timing: Timing) {
    let notify = Arc::new(Notify::new());
    let (nodes, t1) = Informer::start(Api::<Node>::all(client.clone()), None, None, vec![notify.clone()]);
    let (leases, t2) =
        Informer::start(Api::<Lease>::namespaced(client.clone(), super::NODE_LEASE_NAMESPACE), None, None, vec![]);
    let (pods, t3) = Informer::start(Api::<Pod>::all(client.clone()), None, None, vec![notify.clone()]);
    let _informers = super::AbortOnDrop(vec![t1, t2, t3]);
    let mut controller = Controller {
        recorder: Recorder::new(client.clone(), "node-controller", None),
        client,
        timing: timing.clone(),
        first_seen: HashMap::new(),
        missing_since: HashMap::new(),
    };
    loop {
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(timing.resync) => {}
        }
        if nodes.synced() && leases.synced() && pods.synced() {
            controller.sync(&nodes.list(), &leases, &pods.list()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_delays() {
        let taint = Taint { key: TAINT_UNREACHABLE.into(), effect: "NoExecute".into(), ..Default::default() };
        let pod = |tolerations: serde_json::Value| -> Pod {
            serde_json::from_value(
                json!({"metadata": {"name": "p"}, "spec": {"containers": [], "tolerations": tolerations}}),
            )
            .expect("pod")
        };
        assert_eq!(eviction_delay(&pod(json!([])), &taint), Some(DEFAULT_TOLERATION));
        assert_eq!(eviction_delay(&pod(json!([{"operator": "Exists"}])), &taint), None);
        let limited = pod(
            json!([{"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]),
        );
        assert_eq!(eviction_delay(&limited, &taint), Some(Duration::from_secs(5)));
        let other = Taint { key: "dedicated".into(), effect: "NoExecute".into(), ..Default::default() };
        assert_eq!(eviction_delay(&pod(json!([])), &other), Some(Duration::ZERO));
    }
}
