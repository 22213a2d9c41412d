//! AdmissionReview handling: any body the API server (or anyone reaching the webhook) sends.
//! The answer is always an AdmissionReview that allows the pod, echoes the request uid when
//! there is one, and, when it patches, carries a JSON Patch that applies to the pod and puts
//! `coracle-restore-wait` first among its init containers.
#![no_main]

use coracle_events::{BackupRef, PendingRestore, RestoreRef, RestoreTarget};
use coracle_functions::admission::{HelperSettings, HELPER_NAME};
use coracle_functions::handlers::admit::{review, MemoryPending};
use coracle_functions::restore_state::PendingEntry;
use coracle_functions::settings::Settings;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::collections::BTreeMap;

/// Restores pending for a PVC `data` and the `web` Deployment's `cache` in namespace `shop`, so
/// that inputs naming them reach the injection.
fn pending() -> MemoryPending {
    let entry = |target: RestoreTarget| {
        PendingEntry::new(PendingRestore {
            restore: RestoreRef { name: "r".into(), uid: "0f8fad5b-d9cb-469f-a165-70867728950e".into() },
            backup: BackupRef { name: "b".into(), uid: "1f8fad5b-d9cb-469f-a165-70867728950e".into() },
            target_namespace: "shop".into(),
            target,
            source_namespace: "shop".into(),
            source_pod: "web-0".into(),
            source_volume: "data".into(),
            snapshot_id: "4f1c0b9e".into(),
            identity: "pvc/x".into(),
        })
    };
    let mut map = BTreeMap::new();
    for target in [
        RestoreTarget::Pvc { claim: "data".into() },
        RestoreTarget::Workload { owner: "deployment/web".into(), volume: "cache".into() },
    ] {
        map.insert(coracle_functions::plan_restore::pending_key("shop", &target), entry(target));
    }
    MemoryPending(std::sync::Mutex::new(map))
}

fuzz_target!(|body: &[u8]| {
    let settings = HelperSettings::from(&Settings::default());
    let answer = futures::executor::block_on(review(&pending(), &settings, body));
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert_eq!(response["allowed"], true, "a review never blocks a pod");
    let sent: Option<Value> = serde_json::from_slice(body).ok();
    if let Some(uid) = sent.as_ref().and_then(|v| v["request"]["uid"].as_str()) {
        assert_eq!(response["uid"], uid, "the answer names the request");
    }
    let Some(patch) = response["patch"].as_str() else { return };
    use base64::Engine as _;
    let ops = base64::engine::general_purpose::STANDARD.decode(patch).expect("base64 patch");
    let ops: json_patch::Patch = serde_json::from_slice(&ops).expect("a JSON Patch");
    let mut pod = sent.expect("a patched review was JSON")["request"]["object"].clone();
    json_patch::patch(&mut pod, &ops).expect("the patch applies to the pod it was made for");
    assert_eq!(pod["spec"]["initContainers"][0]["name"], HELPER_NAME);
    let security = &pod["spec"]["initContainers"][0]["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
});
