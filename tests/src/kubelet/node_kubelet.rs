//! One node's kubelet: registers its Node (creating it if missing, reporting Ready, addresses, capacity),
//! renews its Lease in `kube-node-lease` as the heartbeat, watches the pods bound to it
//! (`spec.nodeName=<node>`, as a real kubelet does) and runs one [`PodWorker`] per pod uid.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use super::container::{self, ContainerSpec, StartError};
use super::events::Recorder;
use super::informer::Informer;
use super::pod_worker::PodWorker;
use super::process_table::Process;
use super::volumes::VolumeHost;
use super::Shared;

/// A node's directories on this machine.
#[derive(Debug, Clone)]
pub struct NodeDirs {
    /// `<cluster>/nodes/<node>`.
    pub root: PathBuf,
    /// The node's kubelet root (`/var/lib/kubelet` on the node): `pods/<uid>/volumes/...` live here.
    pub kubelet_root: PathBuf,
    /// The node's own filesystem for hostPath volumes and container logs (`var/log/pods/...`).
    pub rootfs: PathBuf,
    /// Empty directories containers' roots are built on (inside their own namespaces).
    pub containers: PathBuf,
}

impl NodeDirs {
    pub(crate) fn new(cluster_dir: &std::path::Path, node: &str) -> Self {
        let root = cluster_dir.join("nodes").join(node);
        Self {
            kubelet_root: root.join("kubelet"),
            rootfs: root.join("rootfs"),
            containers: root.join("containers"),
            root,
        }
    }
}

pub(crate) struct NodeContext {
    pub name: String,
    pub host_ip: String,
    pub dirs: NodeDirs,
    pub volumes: VolumeHost,
    pub shared: Arc<Shared>,
    pub recorder: Recorder,
    /// Cleared when the node is lost: nothing more is started on it.
    pub alive: AtomicBool,
    subnet: usize,
    next_pod_ip: AtomicU32,
}

impl NodeContext {
    pub(crate) fn new(name: &str, index: usize, dirs: NodeDirs, volumes: VolumeHost, shared: Arc<Shared>) -> Self {
        Self {
            name: name.to_string(),
            host_ip: format!("10.0.0.{}", index + 1),
            recorder: Recorder::new(volumes.client.clone(), "kubelet", Some(name)),
            dirs,
            volumes,
            shared,
            alive: AtomicBool::new(true),
            subnet: index + 1,
            next_pod_ip: AtomicU32::new(2),
        }
    }

    /// Pod IPs come from the node's /24 (`10.244.<n>.0/24`); processes share the host's network, so
    /// the address is what the API reports, not where a container listens.
    pub(crate) fn allocate_pod_ip(&self) -> String {
        let n = self.next_pod_ip.fetch_add(1, Ordering::SeqCst);
        format!("10.244.{}.{}", self.subnet, 2 + (n - 2) % 250)
    }

    pub(crate) fn start_container(&self, spec: &ContainerSpec) -> Result<Process, StartError> {
        if !self.alive.load(Ordering::SeqCst) {
            return Err(StartError("the node is gone".into()));
        }
        container::start(spec, self.volumes.ns.fd(), &self.shared.processes, &self.name)
    }
}

fn now_micro() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Creates the Node if missing and reports it Ready.
async fn register(ctx: &NodeContext) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(ctx.volumes.client.clone());
    if nodes.get_opt(&ctx.name).await?.is_none() {
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": ctx.name, "labels": {
                "kubernetes.io/hostname": ctx.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64"}},
            "spec": {},
        }))
        .map_err(kube::Error::SerdeError)?;
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    let at = now_micro();
    let a = ctx.volumes.allocatable;
    let capacity = json!({"cpu": format!("{}m", a.cpu_millis), "memory": format!("{}Ki", a.memory / 1024), "pods": "110", "ephemeral-storage": "100Gi"});
    let ready = |kind: &str, ok: bool, reason: &str, message: &str| {
        json!({"type": kind, "status": if ok { "True" } else { "False" }, "reason": reason, "message": message,
               "lastHeartbeatTime": at, "lastTransitionTime": at})
    };
    let status = json!({"status": {
        "conditions": [
            ready("MemoryPressure", false, "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            ready("DiskPressure", false, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ready("PIDPressure", false, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            ready("Ready", true, "KubeletReady", "kubelet is posting ready status"),
        ],
        "addresses": [{"type": "InternalIP", "address": ctx.host_ip}, {"type": "Hostname", "address": ctx.name}],
        "capacity": capacity, "allocatable": capacity,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {"architecture": "amd64", "bootID": "", "containerRuntimeVersion": "sim://1.0", "kernelVersion": "",
                     "kubeProxyVersion": "", "kubeletVersion": "v1.33.0-sim", "machineID": "", "operatingSystem": "linux",
                     "osImage": "coracle simulated node", "systemUUID": ""},
    }});
    nodes.patch_status(&ctx.name, &PatchParams::default(), &Patch::Strategic(&status)).await?;
    Ok(())
}

/// Renews the node's Lease: the heartbeat the node lifecycle controller watches.
async fn renew_lease(ctx: &NodeContext) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(ctx.volumes.client.clone(), super::NODE_LEASE_NAMESPACE);
    let renew = json!({"spec": {"holderIdentity": ctx.name, "leaseDurationSeconds": 40, "renewTime": now_micro()}});
    match leases.patch(&ctx.name, &PatchParams::default(), &Patch::Merge(&renew)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let lease: Lease = serde_json::from_value(json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": ctx.name, "namespace": super::NODE_LEASE_NAMESPACE},
                "spec": renew["spec"],
            }))
            .map_err(kube::Error::SerdeError)?;
            leases.create(&PostParams::default(), &lease).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// The kubelet's main loop; runs until its task is aborted (node loss, shutdown).
pub(crate) async fn run(ctx: Arc<NodeContext>) {
    let timing = ctx.shared.config.timing.clone();
    for dir in [ctx.dirs.kubelet_root.join("pods"), ctx.dirs.rootfs.clone(), ctx.dirs.containers.clone()] {
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::error!("kubelet {}: creating {}: {e}", ctx.name, dir.display());
        }
    }
    while let Err(e) = register(&ctx).await {
        tracing::warn!("kubelet {}: registering the node: {e}", ctx.name);
        tokio::time::sleep(timing.resync).await;
    }
    let mut tasks = JoinSet::new();
    let heartbeat = ctx.clone();
    tasks.spawn(async move {
        loop {
            if let Err(e) = renew_lease(&heartbeat).await {
                tracing::warn!("kubelet {}: renewing the lease: {e}", heartbeat.name);
            }
            tokio::time::sleep(heartbeat.shared.config.timing.heartbeat).await;
        }
    });
    let notify = Arc::new(Notify::new());
    let pods_api: Api<Pod> = Api::all(ctx.volumes.client.clone());
    let (pods, informer_task) =
        Informer::start(pods_api, None, Some(format!("spec.nodeName={}", ctx.name)), vec![notify.clone()]);
    // Dropping the set (when this task is aborted) aborts the informer and every pod worker.
    tasks.spawn(async move {
        let _ = informer_task.await;
    });
    let mut workers: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    let mut worker_tasks: JoinSet<String> = JoinSet::new();
    loop {
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(timing.resync) => {}
            Some(Ok(uid)) = worker_tasks.join_next() => { workers.remove(&uid); }
        }
        if !pods.synced() {
            continue;
        }
        let current = pods.list();
        let mut present = std::collections::HashSet::new();
        for pod in current {
            let Some(uid) = pod.metadata.uid.clone() else { continue };
            present.insert(uid.clone());
            match workers.get(&uid) {
                Some(tx) => {
                    tx.send_if_modified(|old| {
                        let changed = old.as_ref().and_then(|p| p.metadata.resource_version.as_ref())
                            != pod.metadata.resource_version.as_ref();
                        if changed {
                            *old = Some(pod.clone());
                        }
                        changed
                    });
                }
                None => {
                    let (tx, rx) = watch::channel(Some(pod));
                    workers.insert(uid.clone(), tx);
                    let ctx = ctx.clone();
                    worker_tasks.spawn(async move {
                        PodWorker::run(ctx, rx).await;
                        uid
                    });
                }
            }
        }
        for (uid, tx) in &workers {
            if !present.contains(uid) && tx.borrow().is_some() {
                tx.send_replace(None);
            }
        }
    }
}
