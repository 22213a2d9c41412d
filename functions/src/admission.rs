//! The restore admission function's pure core: which of a pod's volumes have a pending
//! restore, and the JSON Patch that injects the `coracle-restore-wait` init container.
//!
//! At Pod CREATE the pod has no uid and, for generateName pods, no name; it is recognised by
//! its namespace plus the PVC claims it mounts, or plus its owning workload and volume names —
//! the same identities the backup recorded (`plan_backup::workload_of`). Any problem answers
//! "allowed, unpatched" with a warning: a restore must never block pod creation.

use crate::plan_backup::{volume_kind, workload_of, ReplicaSetOwner};
use crate::settings::Settings;
use base64::Engine;
use coracle_events::{RestoreRef, RestoreTarget, VolumeSource};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, ObjectFieldSelector, Pod, ResourceRequirements, SeccompProfile,
    SecurityContext, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub const HELPER_NAME: &str = "coracle-restore-wait";
pub const RESTORES_ROOT: &str = "/restores";
pub const ANNOTATION_RESTORE: &str = "coracle.dev/restore";
pub const ANNOTATION_RESTORE_UID: &str = "coracle.dev/restore-uid";
pub const ANNOTATION_CLAIM: &str = "coracle.dev/restore-claim";
/// The volumes this pod's restore Job writes (the rest it only waits for).
pub const ANNOTATION_OWNED: &str = "coracle.dev/restore-volumes";
/// Label plan-restore puts on target namespaces; the webhook's namespaceSelector matches it.
pub const NAMESPACE_LABEL: &str = "coracle.dev/restore";

/// One Pod CREATE review as the function needs it.
#[derive(Debug, Clone)]
pub struct PodReview {
    pub uid: String,
    pub namespace: String,
    pub pod: Pod,
}

/// What a review turned out to be.
#[derive(Debug)]
pub enum Review {
    Pod(Box<PodReview>),
    /// Anything else (another kind or operation): allowed untouched.
    Other {
        uid: String,
    },
}

/// Parses an AdmissionReview v1. The error carries whatever uid could be read, so even a
/// malformed review gets an answer the API server can match.
pub fn parse_review(body: &[u8]) -> Result<Review, (String, String)> {
    let v: Value = serde_json::from_slice(body).map_err(|e| (String::new(), format!("not JSON: {e}")))?;
    let req = &v["request"];
    let uid = req["uid"].as_str().unwrap_or_default().to_string();
    if uid.is_empty() {
        return Err((uid, "AdmissionReview has no request.uid".into()));
    }
    let is_pod = req["kind"]["kind"] == "Pod" && req["kind"]["group"].as_str().unwrap_or("").is_empty();
    if !is_pod || req["operation"] != "CREATE" {
        return Ok(Review::Other { uid });
    }
    // The patch adds under /metadata and /spec: without them it would not apply (found by fuzzing).
    if !req["object"]["metadata"].is_object() || !req["object"]["spec"].is_object() {
        return Err((uid, "request.object is not a Pod: it has no metadata or no spec".into()));
    }
    let pod: Pod = serde_json::from_value(req["object"].clone())
        .map_err(|e| (uid.clone(), format!("request.object is not a Pod: {e}")))?;
    let namespace = req["namespace"]
        .as_str()
        .or(pod.metadata.namespace.as_deref())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| (uid.clone(), "request has no namespace".to_string()))?
        .to_string();
    Ok(Review::Pod(Box::new(PodReview { uid, namespace, pod })))
}

/// True when this pod already carries the helper (a reinvocation, or a re-submitted pod).
pub fn already_injected(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.init_containers.as_ref()).is_some_and(|c| c.iter().any(|c| c.name == HELPER_NAME))
}

/// Every (volume name, target) under which a restore for this pod could be pending.
pub fn pod_targets(pod: &Pod) -> Vec<(String, RestoreTarget)> {
    let workload = workload_of(pod, ReplicaSetOwner::Unknown).ok();
    let mut out = Vec::new();
    for volume in pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).into_iter().flatten() {
        let target = match volume_kind(volume) {
            Ok(VolumeSource::Pvc) => {
                volume.persistent_volume_claim.as_ref().map(|c| RestoreTarget::Pvc { claim: c.claim_name.clone() })
            }
            Ok(_) => {
                workload.as_ref().map(|w| RestoreTarget::Workload { owner: w.clone(), volume: volume.name.clone() })
            }
            Err(_) => None,
        };
        if let Some(t) = target {
            out.push((volume.name.clone(), t));
        }
    }
    out
}

/// What to inject: the restore, the volumes whose restore this pod drives, and those it waits for.
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    pub restore: RestoreRef,
    pub claim: String,
    pub owned: Vec<String>,
    pub waiting: Vec<String>,
}

/// The helper init container's settings, from Coracle's settings.
#[derive(Debug, Clone)]
pub struct HelperSettings {
    pub image: String,
    pub pull_policy: String,
    pub cpu: String,
    pub memory: String,
    pub timeout: String,
    pub nats_url: String,
}

impl From<&Settings> for HelperSettings {
    fn from(s: &Settings) -> Self {
        HelperSettings {
            image: s.helper_image.clone(),
            pull_policy: s.image_pull_policy.clone(),
            cpu: s.helper_cpu.clone(),
            memory: s.helper_memory.clone(),
            timeout: s.helper_timeout.clone(),
            nats_url: s.nats_url.clone(),
        }
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The init container: restricted-PSS compliant, mounting each restored volume at
/// `/restores/<volume>`, told its pod's identity through the downward API.
pub fn helper_container(inj: &Injection, s: &HelperSettings) -> Container {
    let all: Vec<&str> = inj.owned.iter().chain(&inj.waiting).map(String::as_str).collect();
    let mut envs = vec![
        env("CORACLE_RESTORE_NAME", &inj.restore.name),
        env("CORACLE_RESTORE_UID", &inj.restore.uid),
        field_env("CORACLE_POD_NAME", "metadata.name"),
        field_env("CORACLE_POD_NAMESPACE", "metadata.namespace"),
        field_env("CORACLE_POD_UID", "metadata.uid"),
        field_env("CORACLE_NODE_NAME", "spec.nodeName"),
        env("CORACLE_VOLUMES", &all.join(",")),
        env("CORACLE_RESTORES_ROOT", RESTORES_ROOT),
        env("CORACLE_TIMEOUT", &s.timeout),
    ];
    if !inj.waiting.is_empty() {
        // Another pod's restore writes these markers; leave them for the other pods waiting too.
        envs.push(env("CORACLE_KEEP_MARKERS", &inj.waiting.join(",")));
    }
    if !s.nats_url.is_empty() {
        envs.push(env("CORACLE_NATS_URL", &s.nats_url));
    }
    let q = |v: &str| Quantity(v.to_string());
    let resources = BTreeMap::from([("cpu".to_string(), q(&s.cpu)), ("memory".to_string(), q(&s.memory))]);
    Container {
        name: HELPER_NAME.into(),
        image: Some(s.image.clone()),
        image_pull_policy: Some(s.pull_policy.clone()),
        env: Some(envs),
        volume_mounts: Some(
            all.iter()
                .map(|v| VolumeMount {
                    name: v.to_string(),
                    mount_path: format!("{RESTORES_ROOT}/{v}"),
                    ..Default::default()
                })
                .collect(),
        ),
        resources: Some(ResourceRequirements {
            requests: Some(resources.clone()),
            limits: Some(resources),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// The JSON Patch (RFC 6902) that injects the helper first among init containers and
/// annotates the pod with the restore it belongs to.
pub fn injection_patch(pod: &Pod, inj: &Injection, s: &HelperSettings) -> Vec<Value> {
    let container = serde_json::to_value(helper_container(inj, s)).unwrap_or(Value::Null);
    let mut ops = Vec::new();
    let has_init = pod.spec.as_ref().and_then(|s| s.init_containers.as_ref()).is_some_and(|c| !c.is_empty());
    if has_init {
        ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": container}));
    } else {
        ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [container]}));
    }
    let annotations = [
        (ANNOTATION_RESTORE, inj.restore.name.clone()),
        (ANNOTATION_RESTORE_UID, inj.restore.uid.clone()),
        (ANNOTATION_CLAIM, inj.claim.clone()),
        (ANNOTATION_OWNED, inj.owned.join(",")),
    ];
    if pod.metadata.annotations.is_none() {
        let map: serde_json::Map<String, Value> =
            annotations.iter().map(|(k, v)| (k.to_string(), Value::String(v.clone()))).collect();
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": map}));
    } else {
        for (k, v) in annotations {
            ops.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", k.replace('~', "~0").replace('/', "~1")), "value": v}));
        }
    }
    ops
}

/// The AdmissionReview v1 response: always allowed; patched when there is a patch.
pub fn response(uid: &str, patch: Option<&[Value]>, warnings: &[String]) -> Value {
    let mut resp = json!({"uid": uid, "allowed": true});
    if let Some(ops) = patch {
        let encoded = base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(ops).unwrap_or_default());
        resp["patchType"] = json!("JSONPatch");
        resp["patch"] = json!(encoded);
    }
    if !warnings.is_empty() {
        resp["warnings"] = json!(warnings);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(extra_init: bool) -> Pod {
        let mut p = json!({
            "metadata": {"generateName": "web-7c9d8f6b5d-", "namespace": "shop",
                "labels": {"app": "web", "pod-template-hash": "7c9d8f6b5d"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7c9d8f6b5d", "uid": "x", "controller": true}]},
            "spec": {"containers": [{"name": "web", "image": "nginx"}],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "web-data"}},
                            {"name": "cache", "emptyDir": {}},
                            {"name": "config", "configMap": {"name": "c"}},
                            {"name": "kube-api-access-abcde", "projected": {"sources": []}}]}
        });
        if extra_init {
            p["spec"]["initContainers"] = json!([{"name": "migrate", "image": "m"}]);
        }
        serde_json::from_value(p).expect("pod")
    }

    #[test]
    fn targets_follow_backup_identities() {
        assert_eq!(
            pod_targets(&pod(false)),
            vec![
                ("data".into(), RestoreTarget::Pvc { claim: "web-data".into() }),
                ("cache".into(), RestoreTarget::Workload { owner: "deployment/web".into(), volume: "cache".into() }),
            ]
        );
    }

    #[test]
    fn patch_puts_the_helper_first_and_annotates() {
        let inj = Injection {
            restore: RestoreRef { name: "r1".into(), uid: "u1".into() },
            claim: "c1".into(),
            owned: vec!["data".into()],
            waiting: vec!["cache".into()],
        };
        let s = HelperSettings::from(&Settings::default());
        let ops = injection_patch(&pod(true), &inj, &s);
        assert_eq!(ops[0]["path"], "/spec/initContainers/0");
        assert_eq!(ops[0]["value"]["name"], HELPER_NAME);
        let mounts: Vec<&str> = ops[0]["value"]["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["mountPath"].as_str())
            .collect();
        assert_eq!(mounts, ["/restores/data", "/restores/cache"]);
        assert_eq!(ops[1]["path"], "/metadata/annotations");
        // Applying the patch yields a valid pod with the helper first.
        let mut doc = serde_json::to_value(pod(true)).expect("json");
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).expect("patch");
        json_patch::patch(&mut doc, &patch).expect("applies");
        let patched: Pod = serde_json::from_value(doc).expect("pod");
        let inits = patched.spec.and_then(|s| s.init_containers).expect("inits");
        assert_eq!(inits.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), [HELPER_NAME, "migrate"]);
        assert!(already_injected(&Pod {
            spec: Some(k8s_openapi::api::core::v1::PodSpec { init_containers: Some(inits), ..Default::default() }),
            ..Default::default()
        }));
        assert_eq!(
            patched.metadata.annotations.and_then(|a| a.get(ANNOTATION_OWNED).cloned()).as_deref(),
            Some("data")
        );
    }

    #[test]
    fn malformed_reviews_are_reported_with_whatever_uid_was_there() {
        assert!(matches!(parse_review(b"{"), Err((uid, _)) if uid.is_empty()));
        let bad = br#"{"request": {"uid": "abc", "kind": {"group": "", "kind": "Pod"}, "operation": "CREATE", "object": {"spec": 5}}}"#;
        assert!(matches!(parse_review(bad), Err((uid, reason)) if uid == "abc" && reason.contains("not a Pod")));
        let other =
            br#"{"request": {"uid": "abc", "kind": {"group": "apps", "kind": "Deployment"}, "operation": "CREATE"}}"#;
        assert!(matches!(parse_review(other), Ok(Review::Other { .. })));
        let r = response("abc", None, &["x".into()]);
        assert_eq!(r["response"]["allowed"], true);
        assert!(r["response"].get("patch").is_none());
    }
}
