//! Every volume-selection rule of SPEC §3, on fixtures that look like `kubectl get -o yaml`.
//!
//! `tests/fixtures/cluster.yaml` is the test cluster (one v1/List plus separate documents);
//! `tests/fixtures/rollout.yaml` holds the same workloads re-created. Plans are compared as
//! one line per entry so a failure shows the whole difference at once.

use coracle_events::{BackupRequest, PlannedVolume, VolumeSource};
use coracle_functions::objects::{load_snapshot, snapshot_from_yaml};
use coracle_functions::plan_backup::{plan_backup, BackupPlan, PlanError};
use coracle_functions::request::parse_backup_request;
use coracle_functions::snapshot::ClusterSnapshot;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimStatus, PersistentVolumeClaimVolumeSource, PersistentVolumeSpec, Pod, PodSpec, PodStatus,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use std::collections::BTreeMap;
use std::path::Path;

const WEB_A: &str = "web-7c9d8f6b5d-x2x7k";
const WEB_B: &str = "web-7c9d8f6b5d-zq4mp";
const FILES: &str = "files-6d4c8b7f9-l2m3n";
const INVALID_NAME: &str = "invalid volume name \"Bad_Name\" in annotation coracle.dev/backup-volumes: must be a DNS-1123 label (lowercase letters, digits and '-', at most 63 characters)";

fn fixture(name: &str) -> ClusterSnapshot {
    load_snapshot(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)).expect("fixture loads")
}

fn request(yaml: &str) -> BackupRequest {
    parse_backup_request(yaml.as_bytes()).expect("valid request")
}

fn plan(snapshot: &ClusterSnapshot, request_yaml: &str) -> BackupPlan {
    plan_backup(&request(request_yaml), snapshot).expect("plan")
}

/// `ns/pod/volume node source dir=… pvc=… identity`.
fn line(v: &PlannedVolume) -> String {
    format!(
        "{}/{}/{} {} {:?} dir={} pvc={} {}",
        v.namespace,
        v.pod,
        v.volume,
        v.node,
        v.source,
        v.dir,
        v.pvc.as_deref().unwrap_or("-"),
        v.identity
    )
}

fn volumes(plan: &BackupPlan) -> Vec<String> {
    plan.volumes.iter().map(line).collect()
}

fn skipped(plan: &BackupPlan) -> Vec<String> {
    plan.skipped.iter().map(|s| format!("{}/{}/{}: {}", s.namespace, s.pod, s.volume, s.reason)).collect()
}

fn volumes_of(plan: &BackupPlan, ns: &str, pod: &str) -> Vec<String> {
    plan.volumes.iter().filter(|v| v.namespace == ns && v.pod == pod).map(line).collect()
}

fn skipped_of(plan: &BackupPlan, ns: &str, pod: &str) -> Vec<String> {
    plan.skipped
        .iter()
        .filter(|s| s.namespace == ns && s.pod == pod)
        .map(|s| format!("{}: {}", s.volume, s.reason))
        .collect()
}

fn find<'p>(plan: &'p BackupPlan, pod: &str, volume: &str) -> &'p PlannedVolume {
    plan.volumes.iter().find(|v| v.pod == pod && v.volume == volume).unwrap_or_else(|| panic!("{pod}/{volume} planned"))
}

#[test]
fn opt_in_plan_of_the_whole_test_cluster() {
    let plan = plan(&fixture("cluster.yaml"), "name: nightly");
    assert_eq!(
        volumes(&plan),
        [
            "analytics/etl-0/cache node-c EmptyDir dir=cache pvc=- statefulset/etl/etl-0/cache",
            "kube-system/coredns-5d78c9869d-4hx7q/tmp node-b EmptyDir dir=tmp pvc=- deployment/coredns/tmp",
            "monitoring/log-agent-8hx2c/buffer node-a EmptyDir dir=buffer pvc=- daemonset/log-agent/node-a/buffer",
            "shop/api-6f5b7d9c8-k4j2n/tmp node-b EmptyDir dir=tmp pvc=- deployment/api/tmp",
            "shop/api-6f5b7d9c8-k4j2n/work node-b Other dir=work pvc=- deployment/api/work",
            "shop/db-0/data node-a Pvc dir=pvc-2e6b0138-6f38-4538-a972-c4b75fc5e1ce pvc=data-db-0 pvc/12a98867-7db7-4e84-8510-bf9368251611",
            "shop/db-0/wal node-a EmptyDir dir=wal pvc=- statefulset/db/db-0/wal",
            "shop/db-1/data node-b Pvc dir=pvc-50af6ff5-1748-4071-80e5-4029547d6a22 pvc=data-db-1 pvc/c96c44e9-9f9f-441f-9e02-39abf3bd8f85",
            "shop/db-1/wal node-b EmptyDir dir=wal pvc=- statefulset/db/db-1/wal",
            "shop/debug/notes node-c EmptyDir dir=notes pvc=- pod/debug/notes",
            "shop/debug/seed node-c EmptyDir dir=seed pvc=- pod/debug/seed",
            "shop/debug/tools node-c EmptyDir dir=tools pvc=- pod/debug/tools",
            "shop/files-6d4c8b7f9-l2m3n/inline-cache node-c CsiEphemeral dir=inline-cache pvc=- deployment/files/inline-cache",
            "shop/files-6d4c8b7f9-l2m3n/local-data node-c Pvc dir=local-pv-node-c-ssd1 pvc=local-data pvc/d45fa909-589c-4a67-861f-ef223a5c3bd5",
            "shop/files-6d4c8b7f9-l2m3n/nfs-share node-c Pvc dir=nfs-share-pv pvc=nfs-share pvc/75e80508-57f2-4834-b30e-84f1f0c588f3",
            "shop/files-6d4c8b7f9-l2m3n/scratch node-c Ephemeral dir=pvc-5f621fa4-142a-4309-be08-501a41ffdceb pvc=files-6d4c8b7f9-l2m3n-scratch deployment/files/scratch",
            "shop/orphan-5b6c7d8e9f-abcde/state node-a EmptyDir dir=state pvc=- replicaset/orphan-5b6c7d8e9f/state",
            "shop/report-x7k9p/out node-b EmptyDir dir=out pvc=- job/report/out",
            "shop/web-7c9d8f6b5d-x2x7k/cache node-a EmptyDir dir=cache pvc=- deployment/web/cache",
            "shop/web-7c9d8f6b5d-x2x7k/uploads node-a Pvc dir=pvc-7fef4b81-a6a7-45a7-a141-92324d54a06c pvc=uploads pvc/8f7f9407-f30c-4b5e-8dd7-62d005c450a5",
            "shop/web-7c9d8f6b5d-zq4mp/cache node-b EmptyDir dir=cache pvc=- deployment/web/cache",
        ]
    );
    assert_eq!(
        skipped(&plan),
        [
            "analytics/etl-0/ghost: volume named in annotation coracle.dev/backup-volumes does not exist in the pod",
            "monitoring/log-agent-8hx2c/varlog: hostPath volume is never backed up (node data, not pod data)",
            format!("shop/debug/Bad_Name: {INVALID_NAME}").as_str(),
            "shop/debug/default-token-9z8y7: service-account token volume is never backed up",
            "shop/debug/kube-api-access-7xk2p: service-account token volume is never backed up",
            "shop/debug/missing: volume named in annotation coracle.dev/backup-volumes does not exist in the pod",
            "shop/debug/unmounted: no container mounts this volume",
            "shop/files-6d4c8b7f9-l2m3n/gone: PVC gone not found",
            "shop/files-6d4c8b7f9-l2m3n/host-data: PVC host-data is bound to hostPath PV host-pv-files, which is never backed up",
            "shop/files-6d4c8b7f9-l2m3n/raw-disk: PVC raw-disk has volumeMode Block (a raw block device has no files to back up)",
            "shop/files-6d4c8b7f9-l2m3n/scratch-space: PVC scratch-space is annotated coracle.dev/backup: \"false\"",
            "shop/files-6d4c8b7f9-l2m3n/unbound: PVC unbound is Pending, not Bound",
            "shop/importer/: pod is Pending, not Running",
            "shop/migrate-8xk2p/: pod is Succeeded, not Running",
            "shop/web-7c9d8f6b5d-zq4mp/uploads: PVC uploads is backed up with pod web-7c9d8f6b5d-x2x7k",
        ]
    );
}

#[test]
fn opt_in_with_the_include_annotation_of_etl() {
    // In opt-in mode etl-0's `coracle.dev/backup-volumes: cache,ghost` is what counts; its
    // exclude annotations (which name `cache` too) are ignored.
    let plan = plan(&fixture("cluster.yaml"), "name: b\nincludedNamespaces: [analytics]");
    assert_eq!(volumes(&plan), ["analytics/etl-0/cache node-c EmptyDir dir=cache pvc=- statefulset/etl/etl-0/cache"]);
}

#[test]
fn planned_volume_carries_pod_uid_pvc_uid_and_pv() {
    let plan = plan(&fixture("cluster.yaml"), "name: b");
    let uploads = find(&plan, WEB_A, "uploads");
    assert_eq!(uploads.pod_uid, "13158944-a091-4085-a029-0689d4eb1ee8");
    assert_eq!(uploads.source, VolumeSource::Pvc);
    assert_eq!(uploads.pvc.as_deref(), Some("uploads"));
    assert_eq!(uploads.pvc_uid.as_deref(), Some("8f7f9407-f30c-4b5e-8dd7-62d005c450a5"));
    assert_eq!(uploads.pv.as_deref(), Some("pvc-7fef4b81-a6a7-45a7-a141-92324d54a06c"));
    let scratch = find(&plan, FILES, "scratch");
    assert_eq!(scratch.pvc_uid.as_deref(), Some("679a08eb-fafa-44f4-b590-097fbf632abb"));
    assert_eq!(scratch.pv.as_deref(), Some("pvc-5f621fa4-142a-4309-be08-501a41ffdceb"));
    let cache = find(&plan, WEB_A, "cache");
    assert_eq!((cache.pvc.as_deref(), cache.pvc_uid.as_deref(), cache.pv.as_deref()), (None, None, None));
    // The JSON contract of `coracle plan backup -o json`.
    let json = serde_json::to_value(&plan).expect("serialises");
    assert_eq!(json["volumes"][0]["podUid"], serde_json::json!(plan.volumes[0].pod_uid));
    assert!(json["volumes"][0]["pvc"].is_null());
    assert_eq!(json["skipped"][0]["reason"], serde_json::json!(plan.skipped[0].reason));
}

#[test]
fn velero_and_coracle_include_annotations_are_united() {
    // api has `backup.velero.io/backup-volumes: tmp` and `coracle.dev/backup-volumes: work`.
    let plan = plan(&fixture("cluster.yaml"), "name: b");
    assert_eq!(
        volumes_of(&plan, "shop", "api-6f5b7d9c8-k4j2n"),
        [
            "shop/api-6f5b7d9c8-k4j2n/tmp node-b EmptyDir dir=tmp pvc=- deployment/api/tmp",
            "shop/api-6f5b7d9c8-k4j2n/work node-b Other dir=work pvc=- deployment/api/work",
        ]
    );
}

#[test]
fn annotation_entries_that_are_missing_invalid_or_tokens_are_reported() {
    // debug's annotation: " notes, missing ,Bad_Name,kube-api-access-7xk2p,default-token-9z8y7, unmounted,seed,tools,"
    let plan = plan(&fixture("cluster.yaml"), "name: b");
    assert_eq!(
        skipped_of(&plan, "shop", "debug"),
        [
            format!("Bad_Name: {INVALID_NAME}"),
            // A secret-backed legacy token and a projected one: both recognised by name.
            "default-token-9z8y7: service-account token volume is never backed up".to_string(),
            "kube-api-access-7xk2p: service-account token volume is never backed up".to_string(),
            "missing: volume named in annotation coracle.dev/backup-volumes does not exist in the pod".to_string(),
            "unmounted: no container mounts this volume".to_string(),
        ]
    );
    // Mounted by the main, an init and an ephemeral container respectively: all count as mounted.
    let names: Vec<&str> = plan.volumes.iter().filter(|v| v.pod == "debug").map(|v| v.volume.as_str()).collect();
    assert_eq!(names, ["notes", "seed", "tools"]);
}

#[test]
fn pvc_rules_local_nfs_hostpath_block_opted_out_missing_unbound() {
    let plan = plan(&fixture("cluster.yaml"), "name: b");
    assert_eq!(
        skipped_of(&plan, "shop", FILES),
        [
            "gone: PVC gone not found",
            "host-data: PVC host-data is bound to hostPath PV host-pv-files, which is never backed up",
            "raw-disk: PVC raw-disk has volumeMode Block (a raw block device has no files to back up)",
            "scratch-space: PVC scratch-space is annotated coracle.dev/backup: \"false\"",
            "unbound: PVC unbound is Pending, not Bound",
        ]
    );
    // A `local` PV is real data; an NFS PV behind a PVC is a PVC volume like any other.
    assert_eq!(find(&plan, FILES, "local-data").dir, "local-pv-node-c-ssd1");
    assert_eq!(find(&plan, FILES, "nfs-share").source, VolumeSource::Pvc);
}

#[test]
fn generic_ephemeral_inline_csi_and_inline_nfs_sources() {
    let plan = plan(&fixture("cluster.yaml"), "name: b");
    let scratch = find(&plan, FILES, "scratch");
    assert_eq!(
        line(scratch),
        "shop/files-6d4c8b7f9-l2m3n/scratch node-c Ephemeral dir=pvc-5f621fa4-142a-4309-be08-501a41ffdceb pvc=files-6d4c8b7f9-l2m3n-scratch deployment/files/scratch"
    );
    let inline = find(&plan, FILES, "inline-cache");
    assert_eq!((inline.source, inline.dir.as_str()), (VolumeSource::CsiEphemeral, "inline-cache"));
    let nfs = find(&plan, "api-6f5b7d9c8-k4j2n", "work");
    assert_eq!((nfs.source, nfs.dir.as_str(), nfs.pvc.as_deref()), (VolumeSource::Other, "work", None));
}

#[test]
fn shared_pvc_is_backed_up_once_by_the_first_pod() {
    let snapshot = fixture("cluster.yaml");
    let plan = plan(&snapshot, "name: b");
    assert_eq!(find(&plan, WEB_A, "uploads").identity, "pvc/8f7f9407-f30c-4b5e-8dd7-62d005c450a5");
    assert!(plan.volumes.iter().all(|v| !(v.pod == WEB_B && v.volume == "uploads")));
    assert_eq!(skipped_of(&plan, "shop", WEB_B), [format!("uploads: PVC uploads is backed up with pod {WEB_A}")]);
    // The order of objects in the input does not matter.
    let mut reversed = snapshot.clone();
    reversed.pods.reverse();
    reversed.pvcs.reverse();
    assert_eq!(plan_backup(&request("name: b"), &reversed).expect("plan"), plan);
    // Nor does an object listed twice (two overlapping dumps): each pod is planned once.
    let mut doubled = snapshot.clone();
    doubled.pods.extend(snapshot.pods.iter().cloned());
    assert_eq!(plan_backup(&request("name: b"), &doubled).expect("plan"), plan);
}

#[test]
fn a_shared_pvc_skipped_for_the_first_pod_is_covered_by_the_next() {
    // When the first pod cannot back the claim up (here: it does not mount it), the next one does.
    let mut snapshot = fixture("cluster.yaml");
    let web_a = snapshot.pods.iter_mut().find(|p| p.metadata.name.as_deref() == Some(WEB_A)).expect("web a");
    let containers = &mut web_a.spec.as_mut().expect("spec").containers;
    containers[0].volume_mounts.as_mut().expect("mounts").retain(|m| m.name != "uploads");
    let plan = plan(&snapshot, "name: b\nlabelSelector: app=web");
    assert_eq!(skipped(&plan), [format!("shop/{WEB_A}/uploads: no container mounts this volume")]);
    assert_eq!(find(&plan, WEB_B, "uploads").node, "node-b");
}

#[test]
fn workload_identities_for_every_owner_kind() {
    let plan = plan(&fixture("cluster.yaml"), "name: b");
    let identity = |pod: &str, volume: &str| find(&plan, pod, volume).identity.clone();
    // Pod → ReplicaSet (in the snapshot) → Deployment.
    assert_eq!(identity(WEB_A, "cache"), "deployment/web/cache");
    // ReplicaSet not in the snapshot: its name minus `-<pod-template-hash>`.
    assert_eq!(identity("api-6f5b7d9c8-k4j2n", "tmp"), "deployment/api/tmp");
    // Each StatefulSet replica keeps its own identity.
    assert_eq!(identity("db-0", "wal"), "statefulset/db/db-0/wal");
    assert_eq!(identity("db-1", "wal"), "statefulset/db/db-1/wal");
    assert_eq!(identity("log-agent-8hx2c", "buffer"), "daemonset/log-agent/node-a/buffer");
    assert_eq!(identity("orphan-5b6c7d8e9f-abcde", "state"), "replicaset/orphan-5b6c7d8e9f/state");
    assert_eq!(identity("report-x7k9p", "out"), "job/report/out");
    assert_eq!(identity("debug", "notes"), "pod/debug/notes");
    // Identities are restic tags: no commas, no whitespace.
    assert!(plan.volumes.iter().all(|v| !v.identity.contains(',') && !v.identity.contains(char::is_whitespace)));
}

#[test]
fn identity_is_stable_across_pod_recreation() {
    let before = plan(&fixture("cluster.yaml"), "name: b\nincludedNamespaces: [shop]");
    let after = plan(&fixture("rollout.yaml"), "name: b");
    let pairs = [
        ((WEB_A, "cache"), ("web-54d8b9c7f6-p9r2t", "cache"), "deployment/web/cache"),
        ((WEB_A, "uploads"), ("web-54d8b9c7f6-p9r2t", "uploads"), "pvc/8f7f9407-f30c-4b5e-8dd7-62d005c450a5"),
        // The new ReplicaSet is missing from rollout.yaml: the pod-template-hash fallback agrees.
        (("api-6f5b7d9c8-k4j2n", "tmp"), ("api-7b9c6d5f4-m2n3p", "tmp"), "deployment/api/tmp"),
        (("db-0", "wal"), ("db-0", "wal"), "statefulset/db/db-0/wal"),
        (("db-0", "data"), ("db-0", "data"), "pvc/12a98867-7db7-4e84-8510-bf9368251611"),
    ];
    for ((old_pod, old_volume), (new_pod, new_volume), identity) in pairs {
        let old = find(&before, old_pod, old_volume);
        let new = find(&after, new_pod, new_volume);
        assert_ne!(old.pod_uid, new.pod_uid, "{new_pod} is a new pod");
        assert_eq!((old.identity.as_str(), new.identity.as_str()), (identity, identity), "{new_pod}/{new_volume}");
    }
    assert_ne!(find(&before, "db-0", "wal").node, find(&after, "db-0", "wal").node);
}

#[test]
fn opt_out_backs_up_everything_eligible_and_reports_the_rest() {
    let plan = plan(&fixture("cluster.yaml"), "name: b\nincludedNamespaces: [analytics]\ndefaultVolumesToBackup: true");
    assert_eq!(
        volumes(&plan),
        [
            "analytics/etl-0/data node-c Pvc dir=pvc-8acb0b6e-01de-4661-881d-e8b550fae30c pvc=data-etl-0 pvc/1511f1de-7a87-459d-bf59-a3072afbef63",
            "analytics/etl-0/tmp node-c EmptyDir dir=tmp pvc=- statefulset/etl/etl-0/tmp",
        ]
    );
    // Excludes come from both annotation keys; the include annotation (`cache,ghost`) is ignored.
    assert_eq!(
        skipped_of(&plan, "analytics", "etl-0"),
        [
            "cache: excluded by annotation coracle.dev/backup-volumes-excludes",
            "host: hostPath volume is never backed up (node data, not pod data)",
            "kube-api-access-q8w2m: service-account token volume is never backed up",
            "nothere: volume named in annotation backup.velero.io/backup-volumes-excludes does not exist in the pod",
            "podinfo: downwardAPI volume is never backed up (its content comes from the API server)",
            "secrets: secret volume is never backed up (its content comes from the API server)",
            "spool: excluded by annotation backup.velero.io/backup-volumes-excludes",
            "unused: no container mounts this volume",
        ]
    );
}

#[test]
fn opt_out_in_shop_reports_configmaps_tokens_and_pending_pods() {
    let plan = plan(&fixture("cluster.yaml"), "name: b\nincludedNamespaces: [shop]\ndefaultVolumesToBackup: true");
    assert_eq!(
        skipped_of(&plan, "shop", WEB_A),
        [
            "config: configMap volume is never backed up (its content comes from the API server)",
            "kube-api-access-x2x7k: service-account token volume is never backed up",
        ]
    );
    assert_eq!(
        skipped_of(&plan, "shop", WEB_B),
        [
            "config: configMap volume is never backed up (its content comes from the API server)",
            "kube-api-access-zq4mp: service-account token volume is never backed up",
            format!("uploads: PVC uploads is backed up with pod {WEB_A}").as_str(),
        ]
    );
    // idle-worker has no annotation: in opt-in mode it is not mentioned, in opt-out mode its
    // emptyDir would have been backed up, so the pending pod is reported.
    assert_eq!(skipped_of(&plan, "shop", "idle-worker"), [": pod is Pending, not Running"]);
    let opt_in = self::plan(&fixture("cluster.yaml"), "name: b\nincludedNamespaces: [shop]");
    assert!(skipped_of(&opt_in, "shop", "idle-worker").is_empty());
    // The include annotation of debug does not matter in opt-out mode, so its bad entries are not reported.
    assert_eq!(
        skipped_of(&plan, "shop", "debug"),
        [
            "default-token-9z8y7: service-account token volume is never backed up",
            "kube-api-access-7xk2p: service-account token volume is never backed up",
            "unmounted: no container mounts this volume",
        ]
    );
}

#[test]
fn namespace_include_and_exclude() {
    let snapshot = fixture("cluster.yaml");
    let namespaces = |request_yaml: &str| {
        let plan = plan(&snapshot, request_yaml);
        let mut names: Vec<String> = plan
            .volumes
            .iter()
            .map(|v| v.namespace.clone())
            .chain(plan.skipped.iter().map(|s| s.namespace.clone()))
            .collect();
        names.sort();
        names.dedup();
        names
    };
    let all = ["analytics", "kube-system", "monitoring", "shop"];
    assert_eq!(namespaces("name: b"), all);
    assert_eq!(namespaces("name: b\nincludedNamespaces: ['*']"), all);
    assert_eq!(
        namespaces("name: b\nincludedNamespaces: [shop, monitoring]\nexcludedNamespaces: [monitoring]"),
        ["shop"]
    );
    assert_eq!(namespaces("name: b\nexcludedNamespaces: [kube-system, shop]"), ["analytics", "monitoring"]);
    assert_eq!(namespaces("name: b\nincludedNamespaces: [nowhere]"), Vec::<String>::new());
}

#[test]
fn label_selector_on_pod_labels() {
    let snapshot = fixture("cluster.yaml");
    let pods = |selector: &str| {
        let plan = plan(&snapshot, &format!("name: b\nlabelSelector: '{selector}'"));
        let mut names: Vec<String> =
            plan.volumes.iter().map(|v| v.pod.clone()).chain(plan.skipped.iter().map(|s| s.pod.clone())).collect();
        names.sort();
        names.dedup();
        names
    };
    assert_eq!(pods("app in (web, db)"), ["db-0", "db-1", WEB_A, WEB_B]);
    assert_eq!(pods("tier=backend,app!=db"), ["api-6f5b7d9c8-k4j2n", FILES]);
    assert_eq!(pods("job-name"), ["migrate-8xk2p", "report-x7k9p"]);
    // `!=` also selects pods without the label.
    assert!(pods("tier!=frontend").contains(&"debug".to_string()));
    assert!(!pods("tier!=frontend").contains(&WEB_A.to_string()));
}

#[test]
fn request_level_problems_are_errors_with_the_selector_shown() {
    let snapshot = fixture("cluster.yaml");
    let bad = BackupRequest { name: "b".into(), label_selector: Some("app in (web".into()), ..Default::default() };
    let err = plan_backup(&bad, &snapshot).expect_err("invalid selector");
    assert!(matches!(err, PlanError::Selector(_)));
    assert_eq!(
        err.to_string(),
        "invalid label selector \"app in (web\" at position 11: missing ')' to close the value list"
    );
    let bad = BackupRequest { name: "b".into(), excluded_namespaces: vec!["Shop".into()], ..Default::default() };
    let err = plan_backup(&bad, &snapshot).expect_err("invalid namespace");
    assert_eq!(err.to_string(), "excludedNamespaces: \"Shop\" is not a namespace name (or \"*\" for all)");
}

/// One running pod with a single mounted emptyDir, for the edge cases below.
const LONE_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: lone
  namespace: edge
  uid: 5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d
  annotations: {coracle.dev/backup-volumes: "data"}
spec:
  nodeName: node-a
  containers:
  - name: main
    image: busybox:1.36
    volumeMounts: [{name: data, mountPath: /data}]
  volumes:
  - name: data
    emptyDir: {}
status:
  phase: Running
"#;

fn lone_plan(edit: impl FnOnce(&mut Pod), extra_yaml: &str) -> BackupPlan {
    let mut snapshot = snapshot_from_yaml(&format!("{LONE_POD}---\n{extra_yaml}")).expect("valid yaml");
    edit(&mut snapshot.pods[0]);
    plan_backup(&request("name: b"), &snapshot).expect("plan")
}

#[test]
fn running_pod_without_node_or_uid_is_reported() {
    let no_node = lone_plan(|p| p.spec.as_mut().expect("spec").node_name = None, "");
    assert_eq!(skipped(&no_node), ["edge/lone/: pod has no node"]);
    let no_uid = lone_plan(|p| p.metadata.uid = None, "");
    assert_eq!(skipped(&no_uid), ["edge/lone/: pod has no metadata.uid"]);
    let no_phase = lone_plan(|p| p.status = None, "");
    assert_eq!(skipped(&no_phase), ["edge/lone/: pod has no status.phase, not Running"]);
    assert!(no_node.volumes.is_empty() && no_uid.volumes.is_empty() && no_phase.volumes.is_empty());
}

fn owner_refs(refs: &[(&str, &str, Option<bool>)]) -> Vec<OwnerReference> {
    refs.iter()
        .map(|(kind, name, controller)| OwnerReference {
            api_version: "v1".into(),
            kind: kind.to_string(),
            name: name.to_string(),
            uid: "0".into(),
            controller: *controller,
            block_owner_deletion: None,
        })
        .collect()
}

#[test]
fn controller_owner_reference_wins_and_other_kinds_are_lowercased() {
    let owners = |refs: &'static [(&'static str, &'static str, Option<bool>)]| {
        move |p: &mut Pod| p.metadata.owner_references = Some(owner_refs(refs))
    };
    let identity = |plan: BackupPlan| plan.volumes.first().map(|v| v.identity.clone()).unwrap_or_default();
    let two = lone_plan(owners(&[("ConfigMap", "marker", None), ("StatefulSet", "store", Some(true))]), "");
    assert_eq!(identity(two), "statefulset/store/lone/data");
    let first = lone_plan(owners(&[("CloneSet", "kruise-app", None), ("Job", "other", Some(false))]), "");
    assert_eq!(identity(first), "cloneset/kruise-app/data");
    // A ReplicaSet owned by something other than a Deployment (an Argo Rollout) names that owner.
    let rollout_rs = "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata:\n  name: app-6d5f\n  namespace: edge\n  ownerReferences:\n  - {apiVersion: argoproj.io/v1alpha1, kind: Rollout, name: app, uid: '1', controller: true}\n";
    let rollout = lone_plan(owners(&[("ReplicaSet", "app-6d5f", Some(true))]), rollout_rs);
    assert_eq!(identity(rollout), "rollout/app/data");
    // No ReplicaSet and no pod-template-hash label: the ReplicaSet is all we know.
    let bare_rs = lone_plan(owners(&[("ReplicaSet", "app-6d5f", Some(true))]), "");
    assert_eq!(identity(bare_rs), "replicaset/app-6d5f/data");
}

#[test]
fn identity_that_would_break_a_restic_tag_is_skipped() {
    let plan = lone_plan(|p| p.metadata.owner_references = Some(owner_refs(&[("Job", "a,b", Some(true))])), "");
    assert!(plan.volumes.is_empty());
    assert_eq!(
        skipped(&plan),
        ["edge/lone/data: cannot form a stable identity: owner name \"a,b\" is empty or contains '/', ',' or whitespace"]
    );
}

#[test]
fn odd_objects_are_reported_not_panicked_on() {
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: nospec, namespace: edge, uid: u1, annotations: {coracle.dev/backup-volumes: "a"}}
status: {phase: Running}
---
apiVersion: v1
kind: Pod
metadata: {name: commas, namespace: edge, uid: u2, annotations: {coracle.dev/backup-volumes: " , ,, "}}
spec: {nodeName: n, containers: []}
status: {phase: Running}
---
apiVersion: v1
kind: Pod
metadata: {name: nosource, namespace: edge, uid: u3, annotations: {coracle.dev/backup-volumes: "x,y"}}
spec:
  nodeName: n
  containers: [{name: c, volumeMounts: [{name: x, mountPath: /x}, {name: y, mountPath: /y}]}]
  volumes: [{name: x}, {name: y, persistentVolumeClaim: {claimName: nospec}}]
status: {phase: Running}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: nospec, namespace: edge, uid: c1}
status: {phase: Bound}
"#;
    let snapshot = snapshot_from_yaml(yaml).expect("valid yaml");
    let plan = plan_backup(&request("name: b"), &snapshot).expect("plan");
    assert_eq!(volumes(&plan), ["edge/nosource/x n EmptyDir dir=x pvc=- pod/nosource/x"]);
    assert_eq!(
        skipped(&plan),
        // nospec has no node, so it is not running anywhere and contributes nothing: not mentioned.
        ["edge/nosource/y: PVC nospec is Bound but has no spec.volumeName"]
    );
}

#[test]
fn bound_pvc_whose_pv_is_not_in_the_snapshot_is_still_planned() {
    let mut snapshot = fixture("cluster.yaml");
    snapshot.pvs.clear();
    let plan = plan(&snapshot, "name: b\nlabelSelector: app=files");
    // Without the PV the hostPath check cannot be made; the directory is still known.
    let host = find(&plan, FILES, "host-data");
    assert_eq!((host.dir.as_str(), host.pv.as_deref()), ("host-pv-files", Some("host-pv-files")));
}

/// 10,000 pods in 50 namespaces, two pods per shared PVC, one ReplicaSet per ten pods.
#[test]
fn plans_ten_thousand_pods() {
    let mut snapshot = ClusterSnapshot::default();
    let string_map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    for i in 0..10_000 {
        let ns = format!("ns-{}", i / 200);
        let rs = format!("app-{}-5f6d7c8b9a", i / 10);
        let claim = format!("shared-{}", i / 2);
        if i % 10 == 0 {
            snapshot.replica_sets.push(ReplicaSet {
                metadata: ObjectMeta {
                    name: Some(rs.clone()),
                    namespace: Some(ns.clone()),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "apps/v1".into(),
                        kind: "Deployment".into(),
                        name: format!("app-{}", i / 10),
                        uid: format!("d-{i}"),
                        controller: Some(true),
                        block_owner_deletion: Some(true),
                    }]),
                    ..Default::default()
                },
                ..Default::default()
            });
        }
        if i % 2 == 0 {
            snapshot.pvcs.push(PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(claim.clone()),
                    namespace: Some(ns.clone()),
                    uid: Some(format!("pvc-uid-{i}")),
                    ..Default::default()
                },
                spec: Some(PersistentVolumeClaimSpec { volume_name: Some(format!("pv-{i}")), ..Default::default() }),
                status: Some(PersistentVolumeClaimStatus { phase: Some("Bound".into()), ..Default::default() }),
            });
            snapshot.pvs.push(PersistentVolume {
                metadata: ObjectMeta { name: Some(format!("pv-{i}")), ..Default::default() },
                spec: Some(PersistentVolumeSpec::default()),
                ..Default::default()
            });
        }
        snapshot.pods.push(Pod {
            metadata: ObjectMeta {
                name: Some(format!("{rs}-{i:05}")),
                namespace: Some(ns),
                uid: Some(format!("pod-uid-{i}")),
                annotations: Some(string_map(&[("coracle.dev/backup-volumes", "cache,data")])),
                labels: Some(string_map(&[("pod-template-hash", "5f6d7c8b9a")])),
                owner_references: Some(vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "ReplicaSet".into(),
                    name: rs,
                    uid: format!("rs-{}", i / 10),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(format!("node-{}", i % 100)),
                containers: vec![Container {
                    name: "main".into(),
                    volume_mounts: Some(vec![
                        VolumeMount { name: "cache".into(), mount_path: "/cache".into(), ..Default::default() },
                        VolumeMount { name: "data".into(), mount_path: "/data".into(), ..Default::default() },
                    ]),
                    ..Default::default()
                }],
                volumes: Some(vec![
                    Volume {
                        name: "cache".into(),
                        empty_dir: Some(EmptyDirVolumeSource::default()),
                        ..Default::default()
                    },
                    Volume {
                        name: "data".into(),
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: claim,
                            read_only: None,
                        }),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            status: Some(PodStatus { phase: Some("Running".into()), ..Default::default() }),
        });
    }
    // Reverse so the planner has to sort rather than rely on input order.
    snapshot.pods.reverse();
    let plan = plan_backup(&request("name: scale"), &snapshot).expect("plan");
    assert_eq!(plan.volumes.len(), 15_000);
    assert_eq!(plan.skipped.len(), 5_000);
    let first = &plan.volumes[0];
    assert_eq!(line(first), "ns-0/app-0-5f6d7c8b9a-00000/cache node-0 EmptyDir dir=cache pvc=- deployment/app-0/cache");
    let second_data = plan.volumes.iter().find(|v| v.pod == "app-0-5f6d7c8b9a-00001" && v.volume == "data");
    assert!(second_data.is_none(), "the shared claim is backed up by the first pod only");
    assert_eq!(plan.skipped[0].reason, "PVC shared-0 is backed up with pod app-0-5f6d7c8b9a-00000");
    assert!(plan
        .volumes
        .windows(2)
        .all(|w| (&w[0].namespace, &w[0].pod, &w[0].volume) < (&w[1].namespace, &w[1].pod, &w[1].volume)));
}
