//! The admission function on AdmissionReviews shaped like kube-apiserver's: generateName pods
//! with no name or uid, pods that already have init containers, pods with nothing to restore,
//! namespaces without a restore, reinvocation, malformed reviews, shared PVCs.

use base64::Engine;
use coracle_events::{BackupRef, PendingRestore, RestoreRef, RestoreTarget};
use coracle_functions::admission::{HelperSettings, ANNOTATION_OWNED, HELPER_NAME};
use coracle_functions::handlers::admit::{review, MemoryPending};
use coracle_functions::plan_restore::pending_key;
use coracle_functions::restore_state::{EntryState, PendingEntry};
use coracle_functions::settings::Settings;
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/admission/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn entry(ns: &str, target: RestoreTarget, snapshot: &str) -> PendingEntry {
    PendingEntry::new(PendingRestore {
        restore: RestoreRef { name: "shop-restore".into(), uid: "4f0c1d7e-2b8a-4c51-9e0f-6a7b8c9d0e1f".into() },
        backup: BackupRef { name: "nightly".into(), uid: "b".into() },
        target_namespace: ns.into(),
        target,
        source_namespace: ns.into(),
        source_pod: "web-old".into(),
        source_volume: "data".into(),
        snapshot_id: snapshot.into(),
        identity: "pvc/x".into(),
    })
}

fn store() -> MemoryPending {
    let store = MemoryPending::default();
    let entries = [
        entry("shop", RestoreTarget::Pvc { claim: "web-data".into() }, "s-data"),
        entry("shop", RestoreTarget::Workload { owner: "deployment/web".into(), volume: "cache".into() }, "s-cache"),
        entry("shop", RestoreTarget::Pvc { claim: "data-db-0".into() }, "s-db"),
        entry(
            "shop",
            RestoreTarget::Workload { owner: "statefulset/db/db-0".into(), volume: "scratch".into() },
            "s-scr",
        ),
    ];
    if let Ok(mut map) = store.0.lock() {
        for e in entries {
            map.insert(pending_key(&e.pending.target_namespace, &e.pending.target), e);
        }
    }
    store
}

fn settings() -> HelperSettings {
    HelperSettings::from(&Settings { nats_url: "nats://nats.nats:4222".into(), ..Settings::default() })
}

/// Applies the response's patch to the reviewed pod.
fn patched(review_body: &[u8], response: &Value) -> Pod {
    let req: Value = serde_json::from_slice(review_body).expect("review json");
    let mut pod = req["request"]["object"].clone();
    let b64 = response["response"]["patch"].as_str().expect("a patch");
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
    let patch: json_patch::Patch = serde_json::from_slice(&raw).expect("json patch");
    json_patch::patch(&mut pod, &patch).expect("patch applies to the submitted pod");
    serde_json::from_value(pod).expect("still a pod")
}

fn env_of(pod: &Pod, name: &str) -> Option<String> {
    let init = &pod.spec.as_ref()?.init_containers.as_ref()?[0];
    init.env.as_ref()?.iter().find(|e| e.name == name).and_then(|e| e.value.clone())
}

#[tokio::test]
async fn generate_name_pod_gets_the_helper_with_every_pending_volume() {
    let body = fixture("generate-name-pod.json");
    let resp = review(&store(), &settings(), &body).await;
    assert_eq!(resp["response"]["uid"], "6a1d2f0e-1b1c-4f7e-9d0e-000000000001");
    assert_eq!(resp["response"]["allowed"], true);
    assert_eq!(resp["response"]["patchType"], "JSONPatch");
    let pod = patched(&body, &resp);
    let spec = pod.spec.as_ref().expect("spec");
    let helper = &spec.init_containers.as_ref().expect("init containers")[0];
    assert_eq!(helper.name, HELPER_NAME);
    let mounts: Vec<(&str, &str)> =
        helper.volume_mounts.iter().flatten().map(|m| (m.name.as_str(), m.mount_path.as_str())).collect();
    assert_eq!(mounts, [("data", "/restores/data"), ("cache", "/restores/cache")], "configMap volume is not restored");
    assert_eq!(env_of(&pod, "CORACLE_VOLUMES").as_deref(), Some("data,cache"));
    assert_eq!(env_of(&pod, "CORACLE_NATS_URL").as_deref(), Some("nats://nats.nats:4222"));
    let fields: Vec<(String, String)> = helper
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value_from.as_ref()?.field_ref.as_ref()?.field_path.clone())))
        .collect();
    assert!(fields.contains(&("CORACLE_POD_UID".into(), "metadata.uid".into())), "uid comes from the downward API");
    assert!(fields.contains(&("CORACLE_NODE_NAME".into(), "spec.nodeName".into())));
    // Restricted Pod Security Standard.
    let sc = helper.security_context.as_ref().expect("security context");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.capabilities.as_ref().and_then(|c| c.drop.clone()), Some(vec!["ALL".to_string()]));
    assert_eq!(sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()), Some("RuntimeDefault"));
    let limits = helper.resources.as_ref().and_then(|r| r.limits.clone()).expect("limits");
    assert_eq!(limits.get("cpu").map(|q| q.0.as_str()), Some("100m"));
    assert_eq!(limits.get("memory").map(|q| q.0.as_str()), Some("128Mi"));
    let annotations = pod.metadata.annotations.expect("annotations");
    assert_eq!(annotations.get("coracle.dev/restore").map(String::as_str), Some("shop-restore"));
    assert_eq!(annotations.get(ANNOTATION_OWNED).map(String::as_str), Some("data,cache"));
}

#[tokio::test]
async fn existing_init_containers_run_after_the_helper() {
    let body = fixture("pod-with-init-containers.json");
    let pod = patched(&body, &review(&store(), &settings(), &body).await);
    let names: Vec<String> = pod.spec.and_then(|s| s.init_containers).into_iter().flatten().map(|c| c.name).collect();
    assert_eq!(names, [HELPER_NAME, "migrate"]);
}

#[tokio::test]
async fn statefulset_pods_match_by_their_stable_name() {
    let body = fixture("statefulset-pod.json");
    let pod = patched(&body, &review(&store(), &settings(), &body).await);
    assert_eq!(env_of(&pod, "CORACLE_VOLUMES").as_deref(), Some("data,scratch"));
}

#[tokio::test]
async fn nothing_pending_means_allowed_without_a_patch() {
    for name in ["pod-without-pending-volumes.json", "namespace-without-restore.json", "reinvocation.json"] {
        let resp = review(&store(), &settings(), &fixture(name)).await;
        assert_eq!(resp["response"]["allowed"], true, "{name}");
        assert!(resp["response"].get("patch").is_none(), "{name}: {resp}");
        assert!(resp["response"]["uid"].as_str().is_some_and(|u| u.starts_with("6a1d2f0e")), "{name}");
    }
}

#[tokio::test]
async fn malformed_reviews_are_answered_allowed_with_a_warning() {
    let resp = review(&store(), &settings(), &fixture("malformed-object.json")).await;
    assert_eq!(resp["response"]["uid"], "6a1d2f0e-1b1c-4f7e-9d0e-000000000007");
    assert_eq!(resp["response"]["allowed"], true);
    assert!(resp["response"]["warnings"][0].as_str().is_some_and(|w| w.contains("not a Pod")), "{resp}");
    let resp = review(&store(), &settings(), &fixture("truncated.json")).await;
    assert_eq!(resp["response"]["allowed"], true);
    assert!(resp["response"].get("patch").is_none());
}

#[tokio::test]
async fn a_shared_claim_is_restored_by_the_first_pod_and_awaited_by_the_next() {
    let store = store();
    let body = fixture("generate-name-pod.json");
    let first = patched(&body, &review(&store, &settings(), &body).await);
    let second = patched(&body, &review(&store, &settings(), &body).await);
    let owned = |p: &Pod| p.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION_OWNED).cloned());
    assert_eq!(owned(&first).as_deref(), Some("data,cache"));
    assert_eq!(owned(&second).as_deref(), Some(""), "the second replica drives nothing");
    assert_eq!(env_of(&second, "CORACLE_KEEP_MARKERS").as_deref(), Some("data,cache"));
    assert_eq!(env_of(&second, "CORACLE_VOLUMES").as_deref(), Some("data,cache"), "but waits for the same markers");
    // Once restored, later pods are not held back.
    if let Ok(mut map) = store.0.lock() {
        map.values_mut().for_each(|e| e.state = EntryState::Completed);
    }
    let resp = review(&store, &settings(), &body).await;
    assert!(resp["response"].get("patch").is_none());
}
