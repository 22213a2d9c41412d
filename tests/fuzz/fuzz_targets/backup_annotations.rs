//! Annotation parsing in plan-backup: a pod's include/exclude annotations (Coracle's and
//! Velero's), its volumes, mounts, owner and labels, a request's selector and mode. Planning
//! never panics; every planned volume is one the pod really has, that some container mounts,
//! that is not a secret/configMap/hostPath/token volume; in opt-in mode it was named in an
//! include annotation, in opt-out mode it was not excluded; identities are safe restic tags.
#![no_main]

use coracle_events::BackupRequest;
use coracle_functions::plan_backup::{plan_backup, EXCLUDE_ANNOTATIONS, INCLUDE_ANNOTATIONS};
use coracle_functions::snapshot::ClusterSnapshot;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use std::collections::BTreeSet;

#[derive(Arbitrary, Debug)]
struct Input {
    include: String,
    velero_include: Option<String>,
    exclude: String,
    velero_exclude: Option<String>,
    opt_out: bool,
    selector: Option<String>,
    labels: Vec<(String, String)>,
    volumes: Vec<(String, u8)>,
    mounts: Vec<String>,
    owner: Option<(u8, String)>,
    pvc_opt_out: bool,
}

const KINDS: [&str; 5] = ["Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job"];

fn volume(name: &str, kind: u8) -> Value {
    match kind % 8 {
        0 => json!({"name": name, "emptyDir": {}}),
        1 => json!({"name": name, "persistentVolumeClaim": {"claimName": "data"}}),
        2 => json!({"name": name, "hostPath": {"path": "/etc"}}),
        3 => json!({"name": name, "configMap": {"name": "c"}}),
        4 => json!({"name": name, "secret": {"secretName": "s"}}),
        5 => json!({"name": name, "projected": {"sources": []}}),
        6 => json!({"name": name, "csi": {"driver": "x.csi"}}),
        _ => json!({"name": name, "persistentVolumeClaim": {"claimName": "other"}}),
    }
}

fn names(list: &str) -> BTreeSet<String> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

fuzz_target!(|input: Input| {
    let mut annotations = serde_json::Map::new();
    annotations.insert(INCLUDE_ANNOTATIONS[0].into(), json!(input.include));
    annotations.insert(EXCLUDE_ANNOTATIONS[0].into(), json!(input.exclude));
    if let Some(v) = &input.velero_include {
        annotations.insert(INCLUDE_ANNOTATIONS[1].into(), json!(v));
    }
    if let Some(v) = &input.velero_exclude {
        annotations.insert(EXCLUDE_ANNOTATIONS[1].into(), json!(v));
    }
    let labels: serde_json::Map<String, Value> = input.labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let owners: Vec<Value> = input
        .owner
        .iter()
        .map(|(k, n)| json!({"apiVersion": "apps/v1", "kind": KINDS[*k as usize % KINDS.len()], "name": n, "uid": "u", "controller": true}))
        .collect();
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "shop", "uid": "3e9f6a52-5555-4555-8555-000000000001",
            "labels": labels, "annotations": annotations, "ownerReferences": owners},
        "spec": {"nodeName": "node-1",
            "containers": [{"name": "app", "image": "x",
                "volumeMounts": input.mounts.iter().map(|m| json!({"name": m, "mountPath": "/m"})).collect::<Vec<_>>()}],
            "volumes": input.volumes.iter().map(|(n, k)| volume(n, *k)).collect::<Vec<_>>()},
        "status": {"phase": "Running"}
    });
    let Ok(pod) = serde_json::from_value::<Pod>(pod) else { return };
    let pvc_annotations = if input.pvc_opt_out { json!({"coracle.dev/backup": "false"}) } else { json!({}) };
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "data", "namespace": "shop", "uid": "7a4b0a11-2222-4222-8222-000000000001", "annotations": pvc_annotations},
        "spec": {"volumeName": "pvc-data", "volumeMode": "Filesystem"},
        "status": {"phase": "Bound"}
    }))
    .expect("pvc");
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": "pvc-data"}, "spec": {"csi": {"driver": "d", "volumeHandle": "h"}}
    }))
    .expect("pv");
    let snapshot = ClusterSnapshot { pods: vec![pod], pvcs: vec![pvc], pvs: vec![pv], ..Default::default() };
    let request = BackupRequest {
        name: "fuzz".into(),
        default_volumes_to_backup: input.opt_out,
        label_selector: input.selector.clone(),
        ..Default::default()
    };
    let Ok(plan) = plan_backup(&request, &snapshot) else { return };

    let pod_volumes: BTreeSet<&str> = input.volumes.iter().map(|(n, _)| n.as_str()).collect();
    let mounted: BTreeSet<&str> = input.mounts.iter().map(String::as_str).collect();
    let included: BTreeSet<String> = names(&input.include)
        .into_iter()
        .chain(input.velero_include.as_deref().map(names).into_iter().flatten())
        .collect();
    let excluded: BTreeSet<String> = names(&input.exclude)
        .into_iter()
        .chain(input.velero_exclude.as_deref().map(names).into_iter().flatten())
        .collect();
    let mut seen = BTreeSet::new();
    for v in &plan.volumes {
        assert!(pod_volumes.contains(v.volume.as_str()), "planned {:?}, which the pod does not have", v.volume);
        assert!(mounted.contains(v.volume.as_str()), "planned {:?}, which nothing mounts", v.volume);
        assert!(seen.insert(v.volume.clone()), "planned {:?} twice", v.volume);
        if input.opt_out {
            assert!(!excluded.contains(&v.volume), "planned excluded {:?}", v.volume);
        } else {
            assert!(included.contains(&v.volume), "planned {:?}, which no include annotation names", v.volume);
        }
        let kind = input.volumes.iter().find(|(n, _)| *n == v.volume).map(|(_, k)| k % 8).expect("volume");
        assert!(![2, 3, 4, 5].contains(&kind), "planned a hostPath/configMap/secret/projected volume {:?}", v.volume);
        assert!(!v.volume.starts_with("kube-api-access-") && !v.volume.starts_with("default-token-"));
        assert!(
            !v.identity.is_empty() && !v.identity.contains(',') && !v.identity.chars().any(char::is_whitespace),
            "identity {:?}",
            v.identity
        );
        assert!(
            coracle_events::names::validate_name("dir", &v.dir, coracle_volume_job::paths::dir_kind(v.source)).is_ok(),
            "dir {:?}",
            v.dir
        );
    }
    if input.pvc_opt_out {
        assert!(plan.volumes.iter().all(|v| v.pvc.as_deref() != Some("data")), "an opted-out PVC was planned");
    }
});
