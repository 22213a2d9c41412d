//! B1 (issue 8): `plan_backup` over generated clusters, against the floor of deserialising the
//! same pod list alone.
//!
//! A generated cluster has `pods` pods in 50 namespaces on 100 nodes, owned ten at a time by a
//! Deployment's ReplicaSet. Every pod has a PVC volume `data`, an emptyDir `cache`, every
//! other pod a second PVC `logs` (so 2.5 planned volumes per pod: 25,000 at 10,000 pods), and
//! the service-account token volume every real pod has. Pods, PVCs, PVs and ReplicaSets are
//! serialised once as the API server's List bodies (`{"items": [...]}`), the JSON the function
//! receives.
//!
//! Series, per size (1k, 10k, 50k pods; `CORACLE_BENCH_B1_SIZES=1000,10000` to choose):
//! - `deserialize_pods`: the floor, `serde_json` of the pod list into `Vec<Pod>`;
//! - `deserialize_pods_and_plan`: the pod list deserialised, then planned against the other
//!   lists already in memory: the planner's cost on top of the floor;
//! - `deserialize_all_and_plan`: every list deserialised, then planned (the whole function
//!   minus the network);
//! - `plan`: `plan_backup` alone over a snapshot in memory.
//!
//! criterion writes its estimates under `target/criterion/b1_*`; `scripts/bench.sh` reads them.

use coracle_events::BackupRequest;
use coracle_functions::plan_backup::plan_backup;
use coracle_functions::snapshot::ClusterSnapshot;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::hint::black_box;
use std::time::Duration;

const NAMESPACES: usize = 50;
const NODES: usize = 100;
const PODS_PER_REPLICASET: usize = 10;

/// The List bodies of one generated cluster.
struct Lists {
    pods: Vec<u8>,
    pvcs: Vec<u8>,
    pvs: Vec<u8>,
    replica_sets: Vec<u8>,
}

#[derive(serde::Deserialize)]
struct List<T> {
    items: Vec<T>,
}

fn items<T: DeserializeOwned>(body: &[u8]) -> Vec<T> {
    serde_json::from_slice::<List<T>>(body).expect("the generated list deserialises").items
}

/// A deterministic UUID-shaped uid.
fn uid(kind: u32, n: usize) -> String {
    format!("{kind:08x}-0000-4000-8000-{n:012x}")
}

fn list(kind: &str, items: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items}))
        .expect("JSON")
}

fn generate(pods: usize) -> Lists {
    let (mut pod_items, mut pvcs, mut pvs, mut rss) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..pods {
        let ns = format!("team-{:02}", i % NAMESPACES);
        let rs_index = i / PODS_PER_REPLICASET;
        let app = format!("app-{rs_index}");
        let rs = format!("{app}-7c9d8f6b5d");
        let name = format!("{rs}-{i:05x}");
        let node = format!("node-{:03}", i % NODES);
        let with_logs = i % 2 == 0;
        if i % PODS_PER_REPLICASET == 0 {
            rss.push(json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": rs, "namespace": ns, "uid": uid(3, rs_index),
                    "labels": {"app": app, "pod-template-hash": "7c9d8f6b5d"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": app,
                        "uid": uid(4, rs_index), "controller": true, "blockOwnerDeletion": true}]},
                "spec": {"replicas": PODS_PER_REPLICASET, "selector": {"matchLabels": {"app": app}}},
                "status": {"replicas": PODS_PER_REPLICASET, "readyReplicas": PODS_PER_REPLICASET}
            }));
        }
        let mut claims = vec!["data"];
        if with_logs {
            claims.push("logs");
        }
        for claim in &claims {
            let n = i * 2 + usize::from(*claim == "logs");
            let pvc_name = format!("{name}-{claim}");
            let pv = format!("pvc-{}", uid(2, n));
            pvcs.push(json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": pvc_name, "namespace": ns, "uid": uid(1, n),
                    "annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}},
                    "storageClassName": "standard", "volumeMode": "Filesystem", "volumeName": pv},
                "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "10Gi"}}
            }));
            pvs.push(json!({
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": pv, "uid": uid(5, n)},
                "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "10Gi"},
                    "claimRef": {"kind": "PersistentVolumeClaim", "name": pvc_name, "namespace": ns, "uid": uid(1, n)},
                    "csi": {"driver": "pd.csi.storage.gke.io", "volumeHandle": format!("vol-{n}"), "fsType": "ext4"},
                    "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "standard", "volumeMode": "Filesystem"},
                "status": {"phase": "Bound"}
            }));
        }
        let mut volumes = vec![
            json!({"name": "data", "persistentVolumeClaim": {"claimName": format!("{name}-data")}}),
            json!({"name": "cache", "emptyDir": {}}),
            json!({"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
            ]}}),
        ];
        let mut mounts = vec![
            json!({"name": "data", "mountPath": "/data"}),
            json!({"name": "cache", "mountPath": "/cache"}),
            json!({"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}),
        ];
        let mut annotated = "data,cache".to_string();
        if with_logs {
            volumes.push(json!({"name": "logs", "persistentVolumeClaim": {"claimName": format!("{name}-logs")}}));
            mounts.push(json!({"name": "logs", "mountPath": "/logs"}));
            annotated.push_str(",logs");
        }
        pod_items.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name, "generateName": format!("{rs}-"), "namespace": ns, "uid": uid(0, i),
                "resourceVersion": format!("{}", 1000 + i), "creationTimestamp": "2025-06-02T08:14:11Z",
                "labels": {"app": app, "pod-template-hash": "7c9d8f6b5d", "tier": "backend"},
                "annotations": {"coracle.dev/backup-volumes": annotated},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
                    "uid": uid(3, rs_index), "controller": true, "blockOwnerDeletion": true}]
            },
            "spec": {
                "nodeName": node, "serviceAccountName": "default", "restartPolicy": "Always",
                "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
                "containers": [{
                    "name": "app", "image": "registry.example/app:1.4.2", "imagePullPolicy": "IfNotPresent",
                    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                    "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                    "volumeMounts": mounts
                }],
                "volumes": volumes,
                "tolerations": [
                    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
                ]
            },
            "status": {
                "phase": "Running", "hostIP": "10.0.0.1", "podIP": "10.1.0.1", "qosClass": "Burstable",
                "startTime": "2025-06-02T08:14:11Z",
                "conditions": [
                    {"type": "Initialized", "status": "True", "lastTransitionTime": "2025-06-02T08:14:11Z"},
                    {"type": "Ready", "status": "True", "lastTransitionTime": "2025-06-02T08:14:15Z"},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2025-06-02T08:14:15Z"},
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2025-06-02T08:14:11Z"}
                ],
                "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0, "started": true,
                    "image": "registry.example/app:1.4.2", "imageID": "registry.example/app@sha256:0123",
                    "containerID": "containerd://0123456789abcdef",
                    "state": {"running": {"startedAt": "2025-06-02T08:14:14Z"}}}]
            }
        }));
    }
    Lists {
        pods: list("PodList", pod_items),
        pvcs: list("PersistentVolumeClaimList", pvcs),
        pvs: list("PersistentVolumeList", pvs),
        replica_sets: list("ReplicaSetList", rss),
    }
}

fn snapshot(lists: &Lists, pods: Vec<Pod>) -> ClusterSnapshot {
    ClusterSnapshot {
        pods,
        pvcs: items::<PersistentVolumeClaim>(&lists.pvcs),
        pvs: items::<PersistentVolume>(&lists.pvs),
        replica_sets: items::<ReplicaSet>(&lists.replica_sets),
        ..Default::default()
    }
}

fn sizes() -> Vec<usize> {
    let parsed = std::env::var("CORACLE_BENCH_B1_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect::<Vec<usize>>());
    parsed.filter(|v| !v.is_empty()).unwrap_or_else(|| vec![1_000, 10_000, 50_000])
}

fn bench(c: &mut Criterion) {
    let request = BackupRequest { name: "nightly".into(), uid: Some(uid(9, 0)), ..Default::default() };
    for pods in sizes() {
        let lists = generate(pods);
        let mut full = snapshot(&lists, items::<Pod>(&lists.pods));
        let plan = plan_backup(&request, &full).expect("plan");
        // The cluster is what it claims: 2.5 planned volumes per pod, nothing else planned.
        assert_eq!(plan.volumes.len(), pods * 5 / 2, "planned volumes");
        eprintln!(
            "B1 cluster: {pods} pods, {} planned volumes, {} skipped, pod list {} bytes",
            plan.volumes.len(),
            plan.skipped.len(),
            lists.pods.len()
        );
        let mut group = c.benchmark_group("b1");
        group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
        group.throughput(Throughput::Elements(pods as u64));
        group.bench_with_input(BenchmarkId::new("deserialize_pods", pods), &lists, |b, l| {
            b.iter(|| black_box(items::<Pod>(black_box(&l.pods))))
        });
        // The other lists stay in memory; only the pods are deserialised in each iteration.
        let others = std::mem::take(&mut full.pods);
        group.bench_function(BenchmarkId::new("deserialize_pods_and_plan", pods), |b| {
            b.iter(|| {
                full.pods = items::<Pod>(black_box(&lists.pods));
                black_box(plan_backup(&request, &full).expect("plan"))
            })
        });
        full.pods = others;
        group.bench_with_input(BenchmarkId::new("deserialize_all_and_plan", pods), &lists, |b, l| {
            b.iter(|| {
                let snap = snapshot(l, items::<Pod>(black_box(&l.pods)));
                black_box(plan_backup(&request, &snap).expect("plan"))
            })
        });
        group.bench_function(BenchmarkId::new("plan", pods), |b| {
            b.iter(|| black_box(plan_backup(&request, black_box(&full)).expect("plan")))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
