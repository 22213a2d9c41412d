//! The scheduler: binds pods without `spec.nodeName` to a node that passes the default filters, or leaves
//! them Pending with `PodScheduled=False`, reason `Unschedulable` and the scheduler's usual message
//! (`0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, ...`).
//!
//! Filters: `spec.unschedulable`, `nodeSelector`, required node affinity (`matchExpressions` with In, NotIn,
//! Exists, DoesNotExist, Gt, Lt on labels; `matchFields` on `metadata.name`), taints with effect NoSchedule or
//! NoExecute against tolerations, PVCs (missing, unbound) and PV node affinity. Among the nodes left it picks
//! the one with the fewest running pods (then by name). Not simulated: resources, pod (anti-)affinity,
//! topology spread, preemption.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, PersistentVolume, PersistentVolumeClaim, Pod, Taint, Toleration,
};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::sync::Notify;

use super::events::Recorder;
use super::informer::Informer;
use super::Timing;

/// Why a node does not fit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Misfit {
    Unschedulable,
    Affinity,
    Taint(String),
    VolumeAffinity,
}

impl Misfit {
    fn describe(&self) -> String {
        match self {
            Misfit::Unschedulable => "node(s) were unschedulable".into(),
            Misfit::Affinity => "node(s) didn't match Pod's node affinity/selector".into(),
            Misfit::Taint(t) => format!("node(s) had untolerated taint {t}"),
            Misfit::VolumeAffinity => "node(s) had volume node affinity conflict".into(),
        }
    }
}

fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|w| w == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|w| w == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => matches!((value.and_then(number), values.first().and_then(|w| number(w))), (Some(v), Some(w)) if v > w),
        "Lt" => matches!((value.and_then(number), values.first().and_then(|w| number(w))), (Some(v), Some(w)) if v < w),
        _ => false,
    }
}

/// A node selector term: all of its expressions and fields (an empty term matches nothing).
fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs.iter().all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| r.key == "metadata.name" && requirement_matches(r, node.metadata.name.as_deref()))
}

fn affinity_matches(pod: &Pod, node: &Node) -> bool {
    let spec = pod.spec.clone().unwrap_or_default();
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let selector_ok = spec.node_selector.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref());
    selector_ok && required.is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, node)))
}

/// Whether a toleration tolerates a taint (Kubernetes' `ToleratesTaint`).
pub(crate) fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect.as_deref().is_some_and(|e| !e.is_empty() && e != taint.effect) {
        return false;
    }
    let key = t.key.as_deref().unwrap_or_default();
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => key.is_empty() || key == taint.key,
        _ => key == taint.key && t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default(),
    }
}

pub(crate) fn untolerated(pod: &Pod, taint: &Taint) -> bool {
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or_default();
    !tolerations.iter().any(|t| tolerates(t, taint))
}

/// Why `node` cannot run `pod`, or `None` when it can. `pv_terms` are the node selector terms of its PVs.
pub(crate) fn misfit(pod: &Pod, node: &Node, pv_terms: &[Vec<NodeSelectorTerm>]) -> Option<Misfit> {
    let spec = node.spec.clone().unwrap_or_default();
    let taints = spec.taints.clone().unwrap_or_default();
    if spec.unschedulable == Some(true) {
        let cordon =
            Taint { key: "node.kubernetes.io/unschedulable".into(), effect: "NoSchedule".into(), ..Default::default() };
        if untolerated(pod, &cordon) {
            return Some(Misfit::Unschedulable);
        }
    }
    if !affinity_matches(pod, node) {
        return Some(Misfit::Affinity);
    }
    for taint in &taints {
        if (taint.effect == "NoSchedule" || taint.effect == "NoExecute") && untolerated(pod, taint) {
            return Some(Misfit::Taint(format!("{{{}: {}}}", taint.key, taint.value.clone().unwrap_or_default())));
        }
    }
    if pv_terms.iter().any(|terms| !terms.iter().any(|t| term_matches(t, node))) {
        return Some(Misfit::VolumeAffinity);
    }
    None
}

/// The "0/N nodes are available: ..." message.
pub(crate) fn unschedulable_message(total: usize, misfits: &[Misfit]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for m in misfits {
        *counts.entry(m.describe()).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(what, n)| format!("{n} {what}")).collect();
    if parts.is_empty() {
        format!("0/{total} nodes are available.")
    } else {
        format!("0/{total} nodes are available: {}.", parts.join(", "))
    }
}

struct Caches {
    pods: Informer<Pod>,
    nodes: Informer<Node>,
    pvcs: Informer<PersistentVolumeClaim>,
    pvs: Informer<PersistentVolume>,
}

/// The PV node-affinity terms of a pod's claims, or why the pod cannot be scheduled anywhere.
fn volume_constraints(pod: &Pod, c: &Caches) -> Result<Vec<Vec<NodeSelectorTerm>>, String> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut terms = Vec::new();
    for v in pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).into_iter().flatten() {
        let claim = match (&v.persistent_volume_claim, &v.ephemeral) {
            (Some(p), _) => p.claim_name.clone(),
            (None, Some(_)) => format!("{}-{}", pod.metadata.name.clone().unwrap_or_default(), v.name),
            _ => continue,
        };
        let pvc = c.pvcs.get(&namespace, &claim).ok_or_else(|| format!("persistentvolumeclaim {claim:?} not found"))?;
        let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        let pv_name = pvc.spec.as_ref().and_then(|s| s.volume_name.clone()).filter(|_| bound);
        let pv_name = pv_name.ok_or_else(|| "pod has unbound immediate PersistentVolumeClaims".to_string())?;
        if let Some(pv) = c.pvs.get("", &pv_name) {
            if let Some(required) = pv.spec.and_then(|s| s.node_affinity).and_then(|a| a.required) {
                terms.push(required.node_selector_terms);
            }
        }
    }
    Ok(terms)
}

fn pending_unscheduled(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    spec.is_some_and(|s| s.node_name.as_deref().unwrap_or_default().is_empty())
        && spec.and_then(|s| s.scheduler_name.as_deref()).is_none_or(|n| n == "default-scheduler")
        && phase == "Pending"
        && pod.metadata.deletion_timestamp.is_none()
}

/// Runs until aborted.
pub(crate) async fn run(client: kube::Client, timing: Timing) {
    let notify = Arc::new(Notify::new());
    let n = || vec![notify.clone()];
    let (pods, t1) = Informer::start(Api::<Pod>::all(client.clone()), None, None, n());
    let (nodes, t2) = Informer::start(Api::<Node>::all(client.clone()), None, None, n());
    let (pvcs, t3) = Informer::start(Api::<PersistentVolumeClaim>::all(client.clone()), None, None, n());
    let (pvs, t4) = Informer::start(Api::<PersistentVolume>::all(client.clone()), None, None, n());
    let _informers = super::AbortOnDrop(vec![t1, t2, t3, t4]);
    let caches = Caches { pods, nodes, pvcs, pvs };
    let recorder = Recorder::new(client.clone(), "default-scheduler", None);
    // What each pending pod was last told, so the condition and the event are written once per change.
    let mut told: BTreeMap<String, String> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(timing.resync) => {}
        }
        if ![caches.pods.synced(), caches.nodes.synced(), caches.pvcs.synced(), caches.pvs.synced()].iter().all(|s| *s)
        {
            continue;
        }
        let all_pods = caches.pods.list();
        let mut load: BTreeMap<String, usize> = BTreeMap::new();
        for p in &all_pods {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
            if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()) {
                if phase != "Succeeded" && phase != "Failed" {
                    *load.entry(node).or_default() += 1;
                }
            }
        }
        let nodes = caches.nodes.list();
        let mut still_pending = std::collections::BTreeSet::new();
        for pod in all_pods.iter().filter(|p| pending_unscheduled(p)) {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            still_pending.insert(uid.clone());
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let chosen = volume_constraints(pod, &caches).map(|terms| {
                let mut misfits = Vec::new();
                let mut fits = Vec::new();
                for node in &nodes {
                    match misfit(pod, node, &terms) {
                        Some(m) => misfits.push(m),
                        None => fits.push(node.metadata.name.clone().unwrap_or_default()),
                    }
                }
                fits.sort_by_key(|n| (load.get(n).copied().unwrap_or(0), n.clone()));
                fits.into_iter().next().ok_or_else(|| unschedulable_message(nodes.len(), &misfits))
            });
            let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
            match chosen.and_then(|r| r) {
                Ok(node) => {
                    let bind = json!({"spec": {"nodeName": node}});
                    if let Err(e) = api.patch(&name, &PatchParams::default(), &Patch::Merge(&bind)).await {
                        tracing::debug!("scheduler: binding {namespace}/{name}: {e}");
                        continue;
                    }
                    *load.entry(node.clone()).or_default() += 1;
                    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                    let condition = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": at}]}});
                    let _ = api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&condition)).await;
                    recorder.record(
                        pod,
                        false,
                        "Scheduled",
                        &format!("Successfully assigned {namespace}/{name} to {node}"),
                    );
                    told.remove(&uid);
                }
                Err(message) => {
                    if told.get(&uid) == Some(&message) {
                        continue;
                    }
                    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                    let condition = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                        "message": message, "lastProbeTime": null, "lastTransitionTime": at}]}});
                    if api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&condition)).await.is_ok() {
                        recorder.record(pod, true, "FailedScheduling", &message);
                        told.insert(uid, message);
                    }
                }
            }
        }
        told.retain(|uid, _| still_pending.contains(uid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: serde_json::Value, taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}}))
            .expect("node")
    }

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).expect("pod")
    }

    #[test]
    fn filters() {
        let n1 = node("node-1", json!({"kubernetes.io/hostname": "node-1", "disk": "ssd", "gen": "5"}), json!([]));
        let tainted = node(
            "node-2",
            json!({"kubernetes.io/hostname": "node-2"}),
            json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
        );
        let plain = pod(json!({"containers": []}));
        assert_eq!(misfit(&plain, &n1, &[]), None);
        assert_eq!(misfit(&plain, &tainted, &[]), Some(Misfit::Taint("{dedicated: db}".into())));
        let tolerant = pod(
            json!({"containers": [], "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]}),
        );
        assert_eq!(misfit(&tolerant, &tainted, &[]), None);
        let everything = pod(json!({"containers": [], "tolerations": [{"operator": "Exists"}]}));
        assert_eq!(misfit(&everything, &tainted, &[]), None);
        let selector = pod(json!({"containers": [], "nodeSelector": {"disk": "ssd"}}));
        assert_eq!(misfit(&selector, &n1, &[]), None);
        assert_eq!(misfit(&selector, &tainted, &[]), Some(Misfit::Affinity));
        let affinity = |op: &str, values: serde_json::Value| {
            pod(
                json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "gen", "operator": op, "values": values}]}]}}}}),
            )
        };
        assert_eq!(misfit(&affinity("In", json!(["5", "6"])), &n1, &[]), None);
        assert_eq!(misfit(&affinity("NotIn", json!(["5"])), &n1, &[]), Some(Misfit::Affinity));
        assert_eq!(misfit(&affinity("Exists", json!(null)), &n1, &[]), None);
        assert_eq!(misfit(&affinity("DoesNotExist", json!(null)), &n1, &[]), Some(Misfit::Affinity));
        assert_eq!(misfit(&affinity("Gt", json!(["4"])), &n1, &[]), None);
        assert_eq!(misfit(&affinity("Lt", json!(["4"])), &n1, &[]), Some(Misfit::Affinity));
        let msg = unschedulable_message(2, &[Misfit::Affinity, Misfit::Taint("{a: b}".into())]);
        assert_eq!(msg, "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {a: b}.");
    }
}
