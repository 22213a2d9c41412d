//! The simulated cluster's scheduler and kubelets, with real processes: scheduling rules, the kubelet's
//! volume layout per plugin, PV data across pod re-creation and between nodes, init containers, the
//! container environment, read-only mounts and isolation in private mount namespaces, termination messages.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use coracle_tests::binaries::scratch_dir;
use coracle_tests::kubelet::{Cluster, ClusterConfig};
use coracle_tests::process::pid_alive;
use coracle_tests::sim::SimServer;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// A simulated API server with a cluster on it; dropped in field order (cluster first).
struct Sim {
    cluster: Cluster,
    sim: SimServer,
    dir: tempfile::TempDir,
}

async fn sim(name: &str, objects: &str, nodes: &[&str]) -> anyhow::Result<Sim> {
    sim_with(name, objects, nodes, |_| {}).await
}

async fn sim_with(
    name: &str,
    objects: &str,
    nodes: &[&str],
    tune: impl FnOnce(&mut ClusterConfig),
) -> anyhow::Result<Sim> {
    let dir = scratch_dir(name)?;
    let sim = SimServer::start(objects).await?;
    let mut config = ClusterConfig::new(dir.path().join("cluster"), nodes)?;
    tune(&mut config);
    let cluster = Cluster::start(&sim, config)?;
    Ok(Sim { cluster, sim, dir })
}

impl Sim {
    fn pods(&self, namespace: &str) -> anyhow::Result<Api<Pod>> {
        Ok(Api::namespaced(self.sim.client()?, namespace))
    }

    async fn create_pod(&self, yaml: &str) -> anyhow::Result<Pod> {
        let pod: Pod = serde_yaml::from_str(yaml).context("pod YAML")?;
        let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        Ok(self.pods(&namespace)?.create(&PostParams::default(), &pod).await?)
    }

    async fn terminal(&self, namespace: &str, name: &str) -> anyhow::Result<Pod> {
        self.cluster.wait_pod(namespace, name, WAIT, |p| matches!(phase(p).as_str(), "Succeeded" | "Failed")).await
    }

    /// Stops everything and checks that no process and no mount outlived the cluster.
    fn finish(self) -> anyhow::Result<()> {
        let pids = self.cluster.pids();
        assert!(!pids.is_empty(), "node namespace holders at least");
        let dir = self.dir.path().to_path_buf();
        self.cluster.shutdown();
        for pid in pids {
            assert!(!pid_alive(pid), "pid {pid} outlived the cluster");
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
        assert!(!mounts.contains(&dir.display().to_string()), "a mount leaked into the host namespace:\n{mounts}");
        Ok(())
    }
}

fn phase(pod: &Pod) -> String {
    pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default()
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn node_of(pod: &Pod) -> String {
    pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default()
}

/// The first container's termination message.
fn message(pod: &Pod) -> String {
    container_state(pod, 0).and_then(|s| s.terminated).and_then(|t| t.message).unwrap_or_default()
}

fn container_state(pod: &Pod, i: usize) -> Option<k8s_openapi::api::core::v1::ContainerState> {
    pod.status.as_ref()?.container_statuses.as_ref()?.get(i)?.state.clone()
}

fn running(pod: &Pod) -> bool {
    phase(pod) == "Running" && container_state(pod, 0).and_then(|s| s.running).is_some()
}

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: apps}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_follows_node_name_selectors_affinity_and_taints() -> anyhow::Result<()> {
    let nodes = r#"
---
apiVersion: v1
kind: Node
metadata: {name: node-a, labels: {kubernetes.io/hostname: node-a, disk: ssd, zone: a}}
---
apiVersion: v1
kind: Node
metadata: {name: node-b, labels: {kubernetes.io/hostname: node-b, zone: b}}
spec:
  taints: [{key: dedicated, value: db, effect: NoSchedule}]
---
apiVersion: v1
kind: Node
metadata: {name: node-c, labels: {kubernetes.io/hostname: node-c, zone: c}}
"#;
    let s = sim("sched", &format!("{NAMESPACE}{nodes}"), &["node-a", "node-b", "node-c"]).await?;
    let pod = |name: &str, spec: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: apps}}\nspec:\n  containers: [{{name: app, image: nginx:1.27}}]\n{spec}")
    };
    let hostname_b = "  affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [node-b]}]}]}}}\n";
    let tolerate_db = "  tolerations: [{key: dedicated, operator: Equal, value: db, effect: NoSchedule}]\n";
    s.create_pod(&pod("by-name", "  nodeName: node-b\n")).await?;
    s.create_pod(&pod("by-affinity", &format!("{hostname_b}{tolerate_db}"))).await?;
    s.create_pod(&pod("by-selector", "  nodeSelector: {disk: ssd}\n")).await?;
    s.create_pod(&pod(
        "not-in-a",
        "  affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: zone, operator: NotIn, values: [a]}]}]}}}\n",
    ))
    .await?;
    s.create_pod(&pod(
        "no-disk",
        &format!("  affinity: {{nodeAffinity: {{requiredDuringSchedulingIgnoredDuringExecution: {{nodeSelectorTerms: [{{matchExpressions: [{{key: disk, operator: DoesNotExist}}, {{key: zone, operator: Exists}}]}}]}}}}}}\n{tolerate_db}"),
    ))
    .await?;
    s.create_pod(&pod("untolerated", hostname_b)).await?;

    let expect = [
        ("by-name", &["node-b"][..]),
        ("by-affinity", &["node-b"]),
        ("by-selector", &["node-a"]),
        ("not-in-a", &["node-c"]),
        ("no-disk", &["node-b", "node-c"]),
    ];
    for (name, allowed) in expect {
        let p = s.cluster.wait_pod("apps", name, WAIT, running).await.with_context(|| format!("{name} running"))?;
        assert!(allowed.contains(&node_of(&p).as_str()), "{name} ran on {}", node_of(&p));
        // The kubelet of that node runs it and reports its own address.
        let host_ip = p.status.as_ref().and_then(|s| s.host_ip.clone()).unwrap_or_default();
        let node: Node = s.sim.store().get_as("", &node_of(&p))?.context("node")?;
        let addresses = node.status.and_then(|s| s.addresses).unwrap_or_default();
        assert!(addresses.iter().any(|a| a.type_ == "InternalIP" && a.address == host_ip), "{name}: {host_ip}");
    }

    let pending = s
        .cluster
        .wait_pod("apps", "untolerated", WAIT, |p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "PodScheduled" && c.status == "False"))
        })
        .await?;
    assert_eq!(phase(&pending), "Pending");
    assert_eq!(node_of(&pending), "");
    let scheduled = pending
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")
        .context("condition")?;
    assert_eq!(scheduled.reason.as_deref(), Some("Unschedulable"));
    assert_eq!(
        scheduled.message.as_deref(),
        Some("0/3 nodes are available: 2 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {dedicated: db}.")
    );

    // Once node-b's taint goes, the pod is scheduled there.
    let nodes: Api<Node> = Api::all(s.sim.client()?);
    nodes.patch("node-b", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"taints": null}}))).await?;
    let p = s.cluster.wait_pod("apps", "untolerated", WAIT, running).await?;
    assert_eq!(node_of(&p), "node-b");
    s.finish()
}

/// Mounts one volume of every kind and uses each; `__NAME__` and `__THEN__` (what it does last) are filled in.
const LAYOUT_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: __NAME__, namespace: apps, labels: {app: layout}}
spec:
  restartPolicy: Never
  containers:
  - name: app
    image: busybox
    command: [sh, -c]
    args:
    - |
      set -e
      cat /csi/hello > /scratch/seen
      cat /config/app.conf /creds/password /projected/ca.crt /info/name >> /scratch/seen
      test -s /projected/token
      echo written-by-pod > /nfs/out
      echo ok > /local/out
      echo ok > /hostpv/out
      echo ok > /inline/out
      echo ok > /logs/out
      echo done > /dev/termination-log
      __THEN__
    volumeMounts:
    - {name: csi, mountPath: /csi}
    - {name: nfs, mountPath: /nfs}
    - {name: local, mountPath: /local}
    - {name: hostpv, mountPath: /hostpv}
    - {name: scratch, mountPath: /scratch}
    - {name: config, mountPath: /config}
    - {name: creds, mountPath: /creds}
    - {name: projected, mountPath: /projected}
    - {name: info, mountPath: /info}
    - {name: inline, mountPath: /inline}
    - {name: logs, mountPath: /logs}
  volumes:
  - {name: csi, persistentVolumeClaim: {claimName: c-csi}}
  - {name: nfs, persistentVolumeClaim: {claimName: c-nfs}}
  - {name: local, persistentVolumeClaim: {claimName: c-local}}
  - {name: hostpv, persistentVolumeClaim: {claimName: c-host}}
  - {name: scratch, emptyDir: {}}
  - {name: config, configMap: {name: app-config, items: [{key: app.conf, path: app.conf}]}}
  - {name: creds, secret: {secretName: creds}}
  - name: projected
    projected:
      sources:
      - serviceAccountToken: {path: token}
      - configMap: {name: kube-root-ca.crt, items: [{key: ca.crt, path: ca.crt}]}
      - downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]}
  - name: info
    downwardAPI: {items: [{path: name, fieldRef: {fieldPath: metadata.name}}]}
  - {name: inline, csi: {driver: inline.csi.k8s.io}}
  - {name: logs, hostPath: {path: /var/log/app, type: DirectoryOrCreate}}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_are_laid_out_as_the_kubelet_does_per_plugin() -> anyhow::Result<()> {
    let objects = r#"
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-csi}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  csi: {driver: hostpath.csi.k8s.io, volumeHandle: handle-csi}
  claimRef: {namespace: apps, name: c-csi}
status: {phase: Bound}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-nfs}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteMany]
  nfs: {server: nfs.example, path: /exports/a}
status: {phase: Bound}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-local}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  local: {path: /mnt/disks/ssd1}
  nodeAffinity: {required: {nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [node-1]}]}]}}
status: {phase: Bound}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-host}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  hostPath: {path: /srv/host-pv, type: DirectoryOrCreate}
status: {phase: Bound}
"#;
    let claims: String = ["csi", "nfs", "local", "host"]
        .iter()
        .map(|k| {
            format!(
                "---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: c-{k}, namespace: apps}}\n\
                 spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}, volumeName: pv-{k}}}\nstatus: {{phase: Bound}}\n"
            )
        })
        .collect();
    let config = r#"
---
apiVersion: v1
kind: ConfigMap
metadata: {name: app-config, namespace: apps}
data: {app.conf: "level=debug\n", other: x}
---
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: apps}
stringData: {password: hunter2}
"#;
    let s = sim("volumes", &format!("{NAMESPACE}{objects}{claims}{config}"), &["node-1"]).await?;
    std::fs::write(s.cluster.pv_data_dir("pv-csi")?.join("hello"), "from the PV\n")?;
    let pod = s.create_pod(&LAYOUT_POD.replace("__NAME__", "layout").replace("__THEN__", "")).await?;
    let done = s.terminal("apps", "layout").await?;
    assert_eq!(phase(&done), "Succeeded", "{:#?}", done.status);
    assert_eq!(message(&done), "done\n");
    let vols = s.cluster.pods_root("node-1")?.join(uid(&pod)).join("volumes");
    let node = s.cluster.node_dirs("node-1")?;
    // A terminated pod's volumes are torn down (after its status says so); the layout is checked on a twin.
    s.cluster
        .wait_for("the volumes of a terminated pod to be torn down", WAIT, |_| Ok((!vols.exists()).then_some(())))
        .await?;
    let storage = |pv: &str| s.cluster.pv_data_dir(pv);
    assert_eq!(std::fs::read_to_string(storage("pv-nfs")?.join("out"))?, "written-by-pod\n");
    assert_eq!(std::fs::read_to_string(storage("pv-local")?.join("out"))?, "ok\n");
    assert_eq!(
        std::fs::read_to_string(node.rootfs.join("srv/host-pv/out"))?,
        "ok\n",
        "a hostPath PV is the node's path"
    );
    assert_eq!(std::fs::read_to_string(node.rootfs.join("var/log/app/out"))?, "ok\n");

    // The same pod again, kept running, to look at the layout.
    let twin = s.create_pod(&LAYOUT_POD.replace("__NAME__", "layout-twin").replace("__THEN__", "sleep 600")).await?;
    s.cluster.wait_pod("apps", "layout-twin", WAIT, running).await?;
    let vols = s.cluster.pods_root("node-1")?.join(uid(&twin)).join("volumes");
    let csi = vols.join("kubernetes.io~csi/pv-csi");
    let vol_data: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(csi.join("vol_data.json"))?)?;
    assert_eq!(vol_data["driverName"], "hostpath.csi.k8s.io");
    assert_eq!(vol_data["specVolID"], "pv-csi");
    assert_eq!(vol_data["volumeHandle"], "handle-csi");
    assert_eq!(vol_data["volumeLifecycleMode"], "Persistent");
    assert!(csi.join("mount").is_dir());
    assert!(std::fs::read_dir(csi.join("mount"))?.next().is_none(), "seen from the host the PV is not mounted");
    let node_view = s.cluster.node_view("node-1", &csi.join("mount/hello"))?;
    assert_eq!(std::fs::read_to_string(node_view)?, "from the PV\n", "the node sees the PV's data at .../mount");
    assert!(vols.join("kubernetes.io~nfs/pv-nfs").is_dir());
    assert!(vols.join("kubernetes.io~local-volume/pv-local").is_dir());
    let plugins: Vec<String> = std::fs::read_dir(&vols)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut plugins = plugins;
    plugins.sort();
    assert_eq!(
        plugins,
        [
            "kubernetes.io~configmap",
            "kubernetes.io~csi",
            "kubernetes.io~downward-api",
            "kubernetes.io~empty-dir",
            "kubernetes.io~local-volume",
            "kubernetes.io~nfs",
            "kubernetes.io~projected",
            "kubernetes.io~secret"
        ],
        "no directory for the hostPath PV or the hostPath volume"
    );
    let seen_file = vols.join("kubernetes.io~empty-dir/scratch/seen");
    let seen = s
        .cluster
        .wait_for("the twin to read its volumes", WAIT, |_| {
            Ok(std::fs::read_to_string(&seen_file).ok().filter(|t| t.ends_with("layout-twin")))
        })
        .await?;
    // The script writes the inline volume last of the files looked at here; wait for it too.
    let inline_out = vols.join("kubernetes.io~csi/inline/mount/out");
    s.cluster
        .wait_for("the twin to write its inline volume", WAIT, |_| {
            Ok(std::fs::read_to_string(&inline_out).ok().filter(|t| t.ends_with('\n')))
        })
        .await?;
    assert!(seen.starts_with("from the PV\nlevel=debug\nhunter2-----BEGIN CERTIFICATE-----"), "{seen}");
    let config = vols.join("kubernetes.io~configmap/config");
    assert_eq!(std::fs::read_link(config.join("app.conf"))?, Path::new("..data/app.conf"), "atomic-writer layout");
    assert!(std::fs::read_link(config.join("..data"))?.to_string_lossy().starts_with("..20"));
    assert!(!config.join("other").exists(), "only the listed items");
    assert_eq!(std::fs::read_to_string(vols.join("kubernetes.io~secret/creds/password"))?, "hunter2");
    assert_eq!(std::fs::read_to_string(vols.join("kubernetes.io~projected/projected/labels"))?, "app=\"layout\"");
    assert_eq!(std::fs::read_to_string(vols.join("kubernetes.io~downward-api/info/name"))?, "layout-twin");
    let inline: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(vols.join("kubernetes.io~csi/inline/vol_data.json"))?)?;
    assert_eq!(inline["volumeLifecycleMode"], "Ephemeral");
    assert_eq!(std::fs::read_to_string(inline_out)?, "ok\n");
    s.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pv_data_survives_pod_recreation_and_is_shared_across_nodes() -> anyhow::Result<()> {
    let objects = r#"
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-shared}
spec: {capacity: {storage: 1Gi}, accessModes: [ReadWriteMany], nfs: {server: nfs.example, path: /shared}}
status: {phase: Bound}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: shared, namespace: apps}
spec: {accessModes: [ReadWriteMany], resources: {requests: {storage: 1Gi}}, volumeName: pv-shared}
status: {phase: Bound}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-db}
spec: {capacity: {storage: 1Gi}, accessModes: [ReadWriteOnce], csi: {driver: hostpath.csi.k8s.io, volumeHandle: db}}
status: {phase: Bound}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: db, namespace: apps}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}, volumeName: pv-db}
status: {phase: Bound}
"#;
    let s = sim("pv-data", &format!("{NAMESPACE}{objects}"), &["node-1", "node-2"]).await?;
    let pod = |name: &str, node: &str, script: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: apps}}\nspec:\n  nodeName: {node}\n  restartPolicy: Never\n  \
             containers:\n  - {{name: app, image: busybox, command: [sh, -c, '{script}'], volumeMounts: [{{name: shared, mountPath: /shared}}, {{name: db, mountPath: /db}}]}}\n  \
             volumes:\n  - {{name: shared, persistentVolumeClaim: {{claimName: shared}}}}\n  - {{name: db, persistentVolumeClaim: {{claimName: db}}}}\n"
        )
    };
    // A writer on node-1, deleted once done.
    s.create_pod(&pod("writer", "node-1", "echo one > /db/row && echo hello > /shared/greeting")).await?;
    let writer = s.terminal("apps", "writer").await?;
    assert_eq!(phase(&writer), "Succeeded");
    s.pods("apps")?.delete("writer", &DeleteParams::default()).await?;
    let old_dir = s.cluster.pods_root("node-1")?.join(uid(&writer));
    s.cluster.wait_for("the writer's pod directory to go", WAIT, |_| Ok((!old_dir.exists()).then_some(()))).await?;
    assert_eq!(std::fs::read_to_string(s.cluster.pv_data_dir("pv-db")?.join("row"))?, "one\n", "the PV keeps its data");

    // Re-created (same name, new uid) on the other node: same data, appended to.
    s.create_pod(&pod("writer", "node-2", "cat /db/row > /dev/termination-log && echo two >> /db/row")).await?;
    let again = s.terminal("apps", "writer").await?;
    assert_ne!(uid(&again), uid(&writer));
    assert_eq!((phase(&again).as_str(), message(&again).as_str()), ("Succeeded", "one\n"));
    assert_eq!(std::fs::read_to_string(s.cluster.pv_data_dir("pv-db")?.join("row"))?, "one\ntwo\n");

    // RWX: two pods on two nodes at the same time see each other's writes.
    s.create_pod(&pod("left", "node-1", "echo ping > /shared/ping; while [ ! -f /shared/pong ]; do sleep 0.1; done; cat /shared/pong > /dev/termination-log")).await?;
    s.create_pod(&pod("right", "node-2", "while [ ! -f /shared/ping ]; do sleep 0.1; done; cat /shared/greeting /shared/ping > /dev/termination-log; echo pong > /shared/pong")).await?;
    let (left, right) = (s.terminal("apps", "left").await?, s.terminal("apps", "right").await?);
    assert_eq!(message(&left), "pong\n");
    assert_eq!(message(&right), "hello\nping\n");
    s.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_run_in_order_and_block_the_app_until_released() -> anyhow::Result<()> {
    let s = sim("init", NAMESPACE, &["node-1"]).await?;
    let pod = s
        .create_pod(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: gated, namespace: apps}
spec:
  restartPolicy: Never
  initContainers:
  - {name: first, image: busybox, command: [sh, -c, 'echo first >> /work/order'], volumeMounts: [{name: work, mountPath: /work}]}
  - name: wait
    image: busybox
    command: [sh, -c, 'echo wait >> /work/order; while [ ! -f /gate/open ]; do sleep 0.1; done']
    volumeMounts: [{name: work, mountPath: /work}, {name: gate, mountPath: /gate}]
  containers:
  - {name: app, image: busybox, command: [sh, -c, 'echo app >> /work/order; cat /work/order > /dev/termination-log'], volumeMounts: [{name: work, mountPath: /work}]}
  volumes:
  - {name: work, emptyDir: {}}
  - {name: gate, emptyDir: {}}
"#,
        )
        .await?;
    let blocked = s
        .cluster
        .wait_pod("apps", "gated", WAIT, |p| {
            let init = p.status.as_ref().and_then(|s| s.init_container_statuses.clone()).unwrap_or_default();
            init.get(1).and_then(|c| c.state.as_ref()).and_then(|s| s.running.as_ref()).is_some()
        })
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still = s.sim.store().get_as::<Pod>("apps", "gated")?.context("pod")?;
    assert_eq!(phase(&still), "Pending", "the app does not start while an init container runs");
    let app_state = container_state(&still, 0).context("app state")?;
    assert_eq!(app_state.waiting.and_then(|w| w.reason).as_deref(), Some("PodInitializing"));
    let first = blocked.status.and_then(|s| s.init_container_statuses).unwrap_or_default();
    assert_eq!(first[0].state.as_ref().and_then(|s| s.terminated.as_ref()).map(|t| t.exit_code), Some(0));
    // Release it from outside, through the pod's emptyDir on the node.
    std::fs::write(
        s.cluster.pod_volume_dir("node-1", &uid(&pod), "kubernetes.io~empty-dir", "gate")?.join("open"),
        "",
    )?;
    let done = s.terminal("apps", "gated").await?;
    assert_eq!((phase(&done).as_str(), message(&done).as_str()), ("Succeeded", "first\nwait\napp\n"));

    // A failing init container fails the pod (restartPolicy Never); the app never runs.
    s.create_pod(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: broken, namespace: apps}
spec:
  restartPolicy: Never
  initContainers: [{name: check, image: busybox, command: [sh, -c, 'echo "no markers" > /dev/termination-log; exit 4']}]
  containers: [{name: app, image: busybox, command: [sh, -c, 'exit 0']}]
"#,
    )
    .await?;
    let broken = s.terminal("apps", "broken").await?;
    assert_eq!(phase(&broken), "Failed");
    let init = broken.status.as_ref().and_then(|s| s.init_container_statuses.clone()).unwrap_or_default();
    let t = init[0].state.as_ref().and_then(|s| s.terminated.clone()).context("terminated")?;
    assert_eq!((t.exit_code, t.reason.as_deref(), t.message.as_deref()), (4, Some("Error"), Some("no markers\n")));
    assert!(container_state(&broken, 0).and_then(|s| s.waiting).is_some(), "the app container never started");
    s.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_from_secrets_config_maps_and_the_downward_api() -> anyhow::Result<()> {
    let objects = r#"
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: apps}
data: {mode: fast, LEVEL: "3"}
---
apiVersion: v1
kind: Secret
metadata: {name: key, namespace: apps}
stringData: {token: s3cr3t}
"#;
    let s = sim("env", &format!("{NAMESPACE}{objects}"), &["node-1"]).await?;
    let pod = s
        .create_pod(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: env, namespace: apps, labels: {app: envtest}, annotations: {note: hello}}
spec:
  restartPolicy: Never
  containers:
  - name: app
    image: busybox
    command: [sh, -c, 'printf "%s\n" "$GREETING" "$TOKEN" "$MODE" "$CFG_LEVEL" "$POD" "$NS" "$UID_" "$NODE" "$IP" "$APP" "$NOTE" "$MEM" "$(cat /etc/hostname)" "$0" > /dev/termination-log']
    args: ["$(MODE)-arg"]
    resources: {limits: {memory: 64Mi}}
    envFrom:
    - {configMapRef: {name: settings}, prefix: CFG_}
    - {secretRef: {name: absent, optional: true}}
    env:
    - {name: MODE, valueFrom: {configMapKeyRef: {name: settings, key: mode}}}
    - {name: GREETING, value: "mode is $(MODE), $$(MODE) is literal"}
    - {name: TOKEN, valueFrom: {secretKeyRef: {name: key, key: token}}}
    - {name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: NS, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
    - {name: UID_, valueFrom: {fieldRef: {fieldPath: metadata.uid}}}
    - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
    - {name: IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: APP, valueFrom: {fieldRef: {fieldPath: "metadata.labels['app']"}}}
    - {name: NOTE, valueFrom: {fieldRef: {fieldPath: "metadata.annotations['note']"}}}
    - {name: MEM, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}
"#,
        )
        .await?;
    let done = s.terminal("apps", "env").await?;
    assert_eq!(phase(&done), "Succeeded", "{:#?}", done.status);
    let ip = done.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
    assert!(ip.starts_with("10.244.1."), "{ip}");
    let lines: Vec<String> = message(&done).lines().map(str::to_string).collect();
    let expected = [
        "mode is fast, $(MODE) is literal",
        "s3cr3t",
        "fast",
        "3",
        "env",
        "apps",
        &uid(&pod),
        "node-1",
        &ip,
        "envtest",
        "hello",
        "64",
        "env",
        "fast-arg",
    ];
    assert_eq!(lines, expected);

    // A missing secret holds the container in CreateContainerConfigError until it appears.
    s.create_pod(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: needs-secret, namespace: apps}
spec:
  restartPolicy: Never
  containers:
  - name: app
    image: busybox
    command: [sh, -c, 'printf "%s" "$PASSWORD" > /dev/termination-log']
    env: [{name: PASSWORD, valueFrom: {secretKeyRef: {name: late, key: password}}}]
"#,
    )
    .await?;
    let waiting = s
        .cluster
        .wait_pod("apps", "needs-secret", WAIT, |p| {
            container_state(p, 0).and_then(|s| s.waiting).and_then(|w| w.reason).as_deref()
                == Some("CreateContainerConfigError")
        })
        .await?;
    assert_eq!(phase(&waiting), "Pending");
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "late", "namespace": "apps"}, "stringData": {"password": "finally"}});
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(s.sim.client()?, "apps");
    secrets.create(&PostParams::default(), &serde_json::from_value(secret)?).await?;
    let done = s.terminal("apps", "needs-secret").await?;
    assert_eq!((phase(&done).as_str(), message(&done).as_str()), ("Succeeded", "finally"));
    s.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_are_private_read_only_where_asked_and_nodes_are_isolated() -> anyhow::Result<()> {
    let objects = r#"
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-late}
spec: {capacity: {storage: 1Gi}, accessModes: [ReadWriteOnce], csi: {driver: hostpath.csi.k8s.io, volumeHandle: late}}
status: {phase: Bound}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: late, namespace: apps}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}, volumeName: pv-late}
status: {phase: Bound}
"#;
    let s = sim("isolation", &format!("{NAMESPACE}{objects}"), &["node-1", "node-2"]).await?;
    std::fs::write(s.cluster.pv_data_dir("pv-late")?.join("data.txt"), "late data\n")?;
    let other_node = s.cluster.node_dirs("node-2")?.kubelet_root;
    let cluster_dir = s.dir.path().display().to_string();
    // A reader like Coracle's backup Job: the kubelet's pods directory, read-only, HostToContainer. It starts
    // before the pod whose PV it then reads, so it sees that mount only through propagation.
    let reader = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: reader, namespace: apps}}
spec:
  nodeName: node-1
  restartPolicy: Never
  containers:
  - name: reader
    image: busybox
    command:
    - sh
    - -c
    - |
      r() {{ if "$@" 2>/dev/null; then echo yes; else echo no; fi; }}
      echo "pods-writable=$(r touch /host/pods/x)"
      echo "scratch-writable=$(r touch /scratch/x)"
      echo "root-writable=$(r touch /etc/x)"
      echo "tmp-writable=$(r touch /tmp/x)"
      echo "other-node-visible=$(r test -e {other})"
      echo "cluster-visible=$(r test -e {cluster})"
      while ! cat /host/pods/*/volumes/kubernetes.io~csi/pv-late/mount/data.txt 2>/dev/null; do sleep 0.1; done
      echo "done"
    securityContext: {{readOnlyRootFilesystem: true}}
    volumeMounts:
    - {{name: pods, mountPath: /host/pods, readOnly: true, mountPropagation: HostToContainer}}
    - {{name: scratch, mountPath: /scratch}}
  volumes:
  - {{name: pods, hostPath: {{path: /var/lib/kubelet/pods, type: Directory}}}}
  - {{name: scratch, emptyDir: {{}}}}
"#,
        other = other_node.display(),
        cluster = cluster_dir,
    );
    s.create_pod(&reader).await?;
    s.cluster.wait_pod("apps", "reader", WAIT, running).await?;
    let checked = |_: &coracle_tests::sim::Store| {
        let log = s.cluster.container_log("apps", "reader", "reader").unwrap_or_default();
        Ok(log.contains("cluster-visible=").then_some(()))
    };
    s.cluster.wait_for("the reader's checks", WAIT, checked).await?;
    s.create_pod(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: owner, namespace: apps}\nspec:\n  nodeName: node-1\n  \
         containers: [{name: app, image: postgres:17, volumeMounts: [{name: data, mountPath: /var/lib/postgresql/data}]}]\n  \
         volumes: [{name: data, persistentVolumeClaim: {claimName: late}}]\n",
    )
    .await?;
    let done = s.terminal("apps", "reader").await?;
    assert_eq!(phase(&done), "Succeeded");
    let log = s.cluster.container_log("apps", "reader", "reader")?;
    let facts: BTreeMap<&str, &str> = log.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(facts.get("pods-writable"), Some(&"no"), "a read-only mount refuses writes:\n{log}");
    assert_eq!(facts.get("scratch-writable"), Some(&"yes"), "{log}");
    assert_eq!(facts.get("root-writable"), Some(&"no"), "readOnlyRootFilesystem:\n{log}");
    assert_eq!(facts.get("tmp-writable"), Some(&"no"), "no volume at /tmp on a read-only root:\n{log}");
    assert_eq!(facts.get("other-node-visible"), Some(&"no"), "{log}");
    assert_eq!(facts.get("cluster-visible"), Some(&"no"), "{log}");
    assert!(log.contains("late data\ndone"), "the later PV mount propagated into the reader:\n{log}");
    assert!(!s.cluster.pods_root("node-1")?.join("x").exists());
    // The long-running app container keeps its pod Running until deleted; then it is killed.
    let owner = s.cluster.wait_pod("apps", "owner", WAIT, running).await?;
    s.pods("apps")?.delete("owner", &DeleteParams::default()).await?;
    let dir = s.cluster.pods_root("node-1")?.join(uid(&owner));
    s.cluster.wait_for("the owner pod's directory to go", WAIT, |_| Ok((!dir.exists()).then_some(()))).await?;
    s.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn termination_messages_limits_paths_and_log_fallback() -> anyhow::Result<()> {
    let s = sim("termination", NAMESPACE, &["node-1"]).await?;
    let pod = |name: &str, container: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: apps}}\nspec:\n  restartPolicy: Never\n  containers:\n  - {container}\n")
    };
    s.create_pod(&pod("big", "{name: app, image: busybox, command: [sh, -c, 'head -c 5000 /dev/zero | tr \"\\\\0\" x > /dev/termination-log']}")).await?;
    s.create_pod(&pod(
        "custom-path",
        "{name: app, image: busybox, terminationMessagePath: /results/out.json, command: [sh, -c, 'echo result > /results/out.json']}",
    ))
    .await?;
    s.create_pod(&pod(
        "fallback",
        "{name: app, image: busybox, terminationMessagePolicy: FallbackToLogsOnError, command: [sh, -c, 'echo line one; echo line two >&2; exit 7']}",
    ))
    .await?;
    s.create_pod(&pod("no-fallback", "{name: app, image: busybox, command: [sh, -c, 'echo only logs; exit 7']}"))
        .await?;
    s.create_pod(&pod("missing", "{name: app, image: busybox, command: [no-such-program]}")).await?;

    let big = s.terminal("apps", "big").await?;
    assert_eq!(message(&big), "x".repeat(4096), "at most 4096 bytes");
    let custom = s.terminal("apps", "custom-path").await?;
    assert_eq!(message(&custom), "result\n");
    let fallback = s.terminal("apps", "fallback").await?;
    let t = container_state(&fallback, 0).and_then(|s| s.terminated).context("terminated")?;
    assert_eq!(
        (t.exit_code, t.reason.as_deref(), t.message.as_deref()),
        (7, Some("Error"), Some("line one\nline two"))
    );
    assert_eq!(phase(&fallback), "Failed");
    let plain = s.terminal("apps", "no-fallback").await?;
    assert_eq!(message(&plain), "");
    assert_eq!(s.cluster.container_log("apps", "no-fallback", "app")?, "only logs\n");
    let missing = s.terminal("apps", "missing").await?;
    let t = container_state(&missing, 0).and_then(|s| s.terminated).context("terminated")?;
    assert_eq!((t.exit_code, t.reason.as_deref()), (128, Some("StartError")));
    assert!(t.message.unwrap_or_default().contains("executable file not found"));
    s.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_host_paths_stay_visible_under_a_tmp_volume() -> anyhow::Result<()> {
    // A host path under /tmp, as a restic repository might be, and a container with an emptyDir at /tmp (as
    // Coracle's Jobs have): the shared path is mounted over the volume, at its own path.
    let repo = tempfile::tempdir()?;
    assert!(repo.path().starts_with("/tmp"));
    let shared = repo.path().to_path_buf();
    let s = sim_with("shared", NAMESPACE, &["node-1"], |c| c.shared_paths.push(shared.clone())).await?;
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: writer, namespace: apps}}\nspec:\n  restartPolicy: Never\n  \
         containers: [{{name: app, image: busybox, command: [sh, -c, 'echo kept > {repo}/file && echo scratch > /tmp/own'], \
         volumeMounts: [{{name: tmp, mountPath: /tmp}}]}}]\n  volumes: [{{name: tmp, emptyDir: {{}}}}]\n",
        repo = shared.display()
    );
    s.create_pod(&pod).await?;
    let done = s.terminal("apps", "writer").await?;
    assert_eq!(phase(&done), "Succeeded", "{:#?}", done.status);
    assert_eq!(std::fs::read_to_string(shared.join("file"))?, "kept\n");
    s.finish()
}
