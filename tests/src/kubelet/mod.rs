//! A simulated cluster's nodes and control-plane controllers, driving the simulated API server ([`crate::sim`])
//! the way a real cluster does, so that Coracle's binaries cannot tell the difference: a scheduler, a Job
//! controller, a node lifecycle controller (with taint eviction and pod GC), the root-CA publisher, and one
//! kubelet per node that runs pods as real processes in their own mount namespaces.
//!
//! Start one with [`Cluster::start`]; it runs on its own runtime thread until [`Cluster::shutdown`] or drop,
//! which kills every process it started (by process group) and leaves no mount behind: all mounts live in
//! the nodes' and containers' own mount namespaces, never in the host's.
//!
//! Where it differs from Kubernetes, and why, is documented per module: `scheduler` (filters), `pod_worker`
//! (restarts, grace periods, probes), `images` (no image pulls: the host's filesystem with a per-container
//! writable layer), `volumes` (plugins and layout), `container` (the container root), `job_controller`,
//! `node_lifecycle` (timings). Cross-cutting ones: containers share the host's network and pid namespace
//! (pod IPs are reported, not routable; `/proc` lists every process), there are no resource limits or
//! cgroups, and everything runs as root unless `runAsUser` says otherwise.

mod container;
mod env;
mod events;
mod images;
pub mod index_ranges;
mod informer;
mod job_controller;
mod mount_ops;
mod node_kubelet;
mod node_lifecycle;
mod node_namespace;
mod pod_worker;
mod process_table;
mod root_ca;
mod scheduler;
mod volumes;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;

pub use node_kubelet::NodeDirs;
pub use node_lifecycle::{TAINT_NOT_READY, TAINT_UNREACHABLE};
pub use volumes::WELL_KNOWN_KUBELET_ROOTS;

use crate::sim::{SimServer, Store};
use env::Allocatable;
use node_kubelet::NodeContext;
use node_namespace::NodeNamespace;
use process_table::ProcessTable;
use volumes::VolumeHost;

/// Where kubelets keep their Leases (their heartbeats).
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// How fast the simulated cluster reacts. Kubernetes' own values are far slower (see each field).
#[derive(Debug, Clone)]
pub struct Timing {
    /// Controllers re-examine everything at least this often, besides reacting to watch events.
    pub resync: Duration,
    /// Lease renewal interval (Kubernetes: 10 s).
    pub heartbeat: Duration,
    /// A node whose Lease is older than this becomes `Unknown` (Kubernetes: 40 s).
    pub node_monitor_grace: Duration,
    /// How long pods may stay bound to a deleted node before pod GC fails them (Kubernetes: 40 s).
    pub pod_gc_quarantine: Duration,
    /// First container restart delay, doubled per restart (Kubernetes: 10 s).
    pub restart_backoff: Duration,
    /// Longest container restart delay (Kubernetes: 5 min).
    pub restart_backoff_cap: Duration,
    /// Delay before a Job replaces a failed pod (Kubernetes: 10 s, doubling).
    pub job_backoff: Duration,
    /// Longest SIGTERM-to-SIGKILL grace period (Kubernetes: `terminationGracePeriodSeconds`, default 30 s).
    pub termination_grace_cap: Duration,
    /// Retry interval for volume set-up and container configuration errors.
    pub mount_retry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            resync: Duration::from_millis(200),
            heartbeat: Duration::from_millis(500),
            node_monitor_grace: Duration::from_secs(8),
            pod_gc_quarantine: Duration::from_secs(1),
            restart_backoff: Duration::from_millis(500),
            restart_backoff_cap: Duration::from_secs(5),
            job_backoff: Duration::from_millis(100),
            termination_grace_cap: Duration::from_secs(2),
            mount_retry: Duration::from_millis(500),
        }
    }
}

/// What the simulated cluster runs on.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The cluster's state: `nodes/<node>/{kubelet,rootfs,containers}` and `storage/<pv>`.
    pub dir: PathBuf,
    /// Node names, each with a kubelet (a missing Node object is registered by it).
    pub nodes: Vec<String>,
    /// Host directories of binaries, mounted read-only into every container at `/sim/bin/<n>` and first on the
    /// images' `PATH` (the workspace's binaries, `.tools/bin` with restic).
    pub bin_dirs: Vec<PathBuf>,
    /// Host paths every container sees at the same path, read-write: stand-ins for storage reachable from every
    /// node, such as local restic repositories. They must exist.
    pub shared_paths: Vec<PathBuf>,
    /// Further hostPath prefixes that mean "the kubelet root" (beyond [`WELL_KNOWN_KUBELET_ROOTS`]).
    pub kubelet_roots: Vec<String>,
    pub timing: Timing,
}

impl ClusterConfig {
    /// A cluster in `dir` with these nodes, the workspace's binaries and `.tools/bin` on the containers' PATH.
    pub fn new(dir: impl Into<PathBuf>, nodes: &[&str]) -> anyhow::Result<Self> {
        let bins = crate::binaries::workspace_bin("coracle-volume-job")?;
        let bin_dir = bins.parent().context("the workspace binaries' directory")?.to_path_buf();
        let mut bin_dirs = vec![bin_dir];
        let tools = crate::nats::tools_bin();
        if tools.is_dir() {
            bin_dirs.push(tools);
        }
        Ok(Self {
            dir: dir.into(),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            bin_dirs,
            shared_paths: Vec::new(),
            kubelet_roots: Vec::new(),
            timing: Timing::default(),
        })
    }
}

pub(crate) struct Shared {
    pub config: ClusterConfig,
    pub processes: ProcessTable,
}

/// Aborts tasks when dropped (informers owned by a controller task end with it).
pub(crate) struct AbortOnDrop(pub Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The cluster's runtime, on its own thread so the cluster keeps running while a test blocks its own.
struct RuntimeThread {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RuntimeThread {
    fn start() -> anyhow::Result<Self> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("sim-cluster".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    let _ = handle_tx.send(Err(e));
                    return;
                }
            };
            let _ = handle_tx.send(Ok(runtime.handle().clone()));
            runtime.block_on(async {
                let _ = stopped.await;
            });
            // Dropping the runtime here cancels every task of the cluster before the thread ends.
        })?;
        let handle = handle_rx.recv().context("the cluster runtime thread")?.context("building the cluster runtime")?;
        Ok(Self { handle, stop: Some(stop), thread: Some(thread) })
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct NodeHandle {
    ctx: Arc<NodeContext>,
    task: tokio::task::AbortHandle,
    lost: bool,
}

/// One index of a finished Job: its last pod and how it ended.
#[derive(Debug, Clone)]
pub struct IndexOutcome {
    /// Completion index (`-1` for the pods of a NonIndexed Job).
    pub index: i32,
    /// How many pods ran it.
    pub attempts: usize,
    pub succeeded: bool,
    /// The last pod and the node it ran on.
    pub pod: String,
    pub node: Option<String>,
    /// The first container's exit code, when it terminated.
    pub exit_code: Option<i32>,
    /// The pod's `status.reason` (`DeadlineExceeded`, `NodeLost`, ...) or the container's terminated reason.
    pub reason: Option<String>,
    pub termination_message: String,
    /// The first container's log (last run).
    pub log: String,
}

/// A finished Job and its indexes.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub job: Job,
    pub indexes: Vec<IndexOutcome>,
}

impl JobOutcome {
    /// The terminal condition: `("Complete" | "Failed", reason)`.
    pub fn condition(&self) -> Option<(String, Option<String>)> {
        let conditions = self.job.status.as_ref()?.conditions.as_ref()?;
        conditions
            .iter()
            .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
            .map(|c| (c.type_.clone(), c.reason.clone()))
    }

    pub fn complete(&self) -> bool {
        self.condition().is_some_and(|(kind, _)| kind == "Complete")
    }

    /// A summary for assertion messages: condition, and per index its outcome, message and log tail.
    pub fn describe(&self) -> String {
        let mut out = format!("Job {:?}: {:?}\n", self.job.metadata.name, self.condition());
        for i in &self.indexes {
            let log: String =
                i.log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            out.push_str(&format!(
                "  index {} on {:?}: attempts {}, succeeded {}, exit {:?}, reason {:?}\n    message: {}\n    log:\n{log}\n",
                i.index, i.node, i.attempts, i.succeeded, i.exit_code, i.reason, i.termination_message
            ));
        }
        out
    }
}

/// A running simulated cluster.
pub struct Cluster {
    shared: Arc<Shared>,
    store: Store,
    client: kube::Client,
    runtime: RuntimeThread,
    nodes: Mutex<BTreeMap<String, NodeHandle>>,
}

/// Orders the pods of one index oldest attempt first. Creation timestamps have second resolution, so a
/// retry made within the same second ties with the pod it replaces: the per-index failure count breaks
/// that tie, and a failed pod sorts before one that is still running or succeeded (a replacement is only
/// created after its predecessor failed).
fn attempt_order(pod: &Pod) -> (i32, i64, bool) {
    let failures = job_controller::index_failures(pod).unwrap_or(0);
    let created = pod.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_millisecond());
    (failures, created, job_controller::phase(pod) != "Failed")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn allocatable() -> Allocatable {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next().and_then(|k| k.parse::<u64>().ok()))
        })
        .map_or(4 << 30, |kib| kib * 1024);
    Allocatable { cpu_millis: cpus * 1000, memory }
}

impl Cluster {
    /// Starts the controllers and a kubelet per node against `sim`.
    pub fn start(sim: &SimServer, config: ClusterConfig) -> anyhow::Result<Cluster> {
        for dir in [config.dir.join("storage"), config.dir.join("nodes")] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        for shared in &config.shared_paths {
            if !shared.exists() {
                bail!("shared path {} does not exist", shared.display());
            }
        }
        let runtime = RuntimeThread::start()?;
        let client = {
            let _enter = runtime.handle.enter();
            sim.client()?
        };
        let shared = Arc::new(Shared { config: config.clone(), processes: ProcessTable::default() });
        let mut cluster = Cluster {
            shared: shared.clone(),
            store: sim.store().clone(),
            client: client.clone(),
            runtime,
            nodes: Mutex::new(BTreeMap::new()),
        };
        let timing = config.timing.clone();
        let h = &cluster.runtime.handle;
        h.spawn(scheduler::run(client.clone(), timing.clone()));
        h.spawn(job_controller::run(client.clone(), timing.clone()));
        h.spawn(node_lifecycle::run(client.clone(), timing.clone()));
        h.spawn(root_ca::run(client.clone(), timing.clone()));
        for (index, name) in config.nodes.iter().enumerate() {
            if let Err(e) = cluster.start_node(index, name) {
                cluster.stop_everything();
                return Err(e);
            }
        }
        Ok(cluster)
    }

    fn start_node(&mut self, index: usize, name: &str) -> anyhow::Result<()> {
        let dirs = NodeDirs::new(&self.shared.config.dir, name);
        let ns = Arc::new(NodeNamespace::create(&dirs.kubelet_root, &self.shared.processes, name)?);
        let volumes = VolumeHost {
            client: self.client.clone(),
            node: name.to_string(),
            kubelet_root: dirs.kubelet_root.clone(),
            rootfs: dirs.rootfs.clone(),
            storage: self.shared.config.dir.join("storage"),
            extra_kubelet_roots: self.shared.config.kubelet_roots.clone(),
            ns,
            allocatable: allocatable(),
        };
        let ctx = Arc::new(NodeContext::new(name, index, dirs, volumes, self.shared.clone()));
        let task = self.runtime.handle.spawn(node_kubelet::run(ctx.clone())).abort_handle();
        lock(&self.nodes).insert(name.to_string(), NodeHandle { ctx, task, lost: false });
        Ok(())
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.shared.config
    }

    /// The object store of the API server the cluster drives.
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn node_dirs(&self, node: &str) -> anyhow::Result<NodeDirs> {
        lock(&self.nodes).get(node).map(|n| n.ctx.dirs.clone()).ok_or_else(|| anyhow!("no simulated node {node:?}"))
    }

    /// `<kubelet-root>/pods` of a node, on this machine.
    pub fn pods_root(&self, node: &str) -> anyhow::Result<PathBuf> {
        Ok(self.node_dirs(node)?.kubelet_root.join("pods"))
    }

    /// A PV's data (created if missing): what every pod using the PV sees, on any node.
    pub fn pv_data_dir(&self, pv: &str) -> anyhow::Result<PathBuf> {
        if pv.is_empty() || pv.contains('/') || pv == "." || pv == ".." {
            bail!("{pv:?} is not a PV name");
        }
        let dir = self.shared.config.dir.join("storage").join(pv);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// A pod volume's directory as the kubelet lays it out on the node (`<pods>/<uid>/volumes/<plugin>/<dir>`).
    /// For a PV volume the data is not here on the host but in [`Cluster::pv_data_dir`], mounted at this
    /// path only in the node's namespace; see [`Cluster::node_view`].
    pub fn pod_volume_dir(&self, node: &str, pod_uid: &str, plugin: &str, dir: &str) -> anyhow::Result<PathBuf> {
        Ok(self.pods_root(node)?.join(pod_uid).join("volumes").join(plugin).join(dir))
    }

    /// A host path as the node sees it, PV mounts included (through `/proc/<pid>/root` of the process holding
    /// the node's mount namespace).
    pub fn node_view(&self, node: &str, path: &Path) -> anyhow::Result<PathBuf> {
        let nodes = lock(&self.nodes);
        let n = nodes.get(node).ok_or_else(|| anyhow!("no simulated node {node:?}"))?;
        if n.lost {
            bail!("node {node} is gone");
        }
        Ok(n.ctx.volumes.ns.view(path))
    }

    /// The last log of a pod's container (by pod name; the pod must still exist).
    pub fn container_log(&self, namespace: &str, pod: &str, container: &str) -> anyhow::Result<String> {
        let p = self.store.get_as::<Pod>(namespace, pod)?.ok_or_else(|| anyhow!("no pod {namespace}/{pod}"))?;
        self.log_of(&p, container)
    }

    fn log_of(&self, pod: &Pod, container: &str) -> anyhow::Result<String> {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).context("the pod is not bound to a node")?;
        let dirs = NodeDirs::new(&self.shared.config.dir, &node);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let dir = dirs
            .rootfs
            .join("var/log/pods")
            .join(format!(
                "{}_{}_{uid}",
                pod.metadata.namespace.clone().unwrap_or_default(),
                pod.metadata.name.clone().unwrap_or_default()
            ))
            .join(container);
        let latest = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().strip_suffix(".log")?.parse::<u32>().ok()?;
                Some((n, e.path()))
            })
            .max_by_key(|(n, _)| *n)
            .map(|(_, p)| p)
            .ok_or_else(|| anyhow!("no log in {}", dir.display()))?;
        std::fs::read_to_string(&latest).with_context(|| format!("reading {}", latest.display()))
    }

    /// Waits until `check` returns something, re-checking after every change in the API server.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Store) -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        let mut changes = self.store.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.borrow_and_update();
            if let Some(found) = check(&self.store)? {
                return Ok(found);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => bail!("the API server stopped while waiting for {what}"),
                Err(_) => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
    }

    /// Waits until the pod exists and `accept` holds for it.
    pub async fn wait_pod(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
        accept: impl Fn(&Pod) -> bool,
    ) -> anyhow::Result<Pod> {
        self.wait_for(&format!("pod {namespace}/{name}"), timeout, |store| {
            Ok(store.get_as::<Pod>(namespace, name)?.filter(|p| accept(p)))
        })
        .await
    }

    /// Waits until the pod's `status.phase` is `phase`.
    pub async fn wait_pod_phase(
        &self,
        namespace: &str,
        name: &str,
        phase: &str,
        timeout: Duration,
    ) -> anyhow::Result<Pod> {
        self.wait_pod(namespace, name, timeout, |p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(phase))
            .await
            .with_context(|| format!("pod {namespace}/{name} never reached {phase}"))
    }

    /// Waits until the Job has a `Complete` or `Failed` condition, then reports every index.
    pub async fn wait_job(&self, namespace: &str, name: &str, timeout: Duration) -> anyhow::Result<JobOutcome> {
        let job = self
            .wait_for(&format!("Job {namespace}/{name} to finish"), timeout, |store| {
                let job = store.get_as::<Job>(namespace, name)?;
                Ok(job.filter(|j| JobOutcome { job: j.clone(), indexes: Vec::new() }.condition().is_some()))
            })
            .await?;
        Ok(self.outcome(job))
    }

    /// Creates a Job through the API, waits for it to finish and reports every index.
    pub async fn run_job(&self, job: &Job, timeout: Duration) -> anyhow::Result<JobOutcome> {
        let namespace = job.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let name = job.metadata.name.clone().context("the Job needs a name")?;
        let client = self.client.clone();
        let job = job.clone();
        let ns = namespace.clone();
        self.runtime
            .handle
            .spawn(async move {
                let api: kube::Api<Job> = kube::Api::namespaced(client, &ns);
                api.create(&Default::default(), &job).await
            })
            .await
            .context("creating the Job")??;
        self.wait_job(&namespace, &name, timeout).await
    }

    /// Every index of a Job from its pods (the last pod of each index decides).
    pub fn outcome(&self, job: Job) -> JobOutcome {
        let uid = job.metadata.uid.clone().unwrap_or_default();
        let namespace = job.metadata.namespace.clone().unwrap_or_default();
        let pods: Vec<Pod> = self
            .store
            .list_as::<Pod>(Some(&namespace))
            .unwrap_or_default()
            .into_iter()
            .filter(|p| {
                p.metadata.labels.as_ref().and_then(|l| l.get(job_controller::LABEL_CONTROLLER_UID)) == Some(&uid)
            })
            .collect();
        let mut by_index: BTreeMap<i32, Vec<Pod>> = BTreeMap::new();
        for pod in pods {
            by_index.entry(job_controller::pod_index(&pod).unwrap_or(-1)).or_default().push(pod);
        }
        let indexes = by_index
            .into_iter()
            .map(|(index, mut pods)| {
                pods.sort_by_key(attempt_order);
                let attempts = pods.len();
                let succeeded = pods.iter().any(|p| job_controller::phase(p) == "Succeeded");
                let last = pods.last().cloned().unwrap_or_default();
                let status = last.status.clone().unwrap_or_default();
                let first = status.container_statuses.as_ref().and_then(|c| c.first()).cloned();
                let terminated = first.as_ref().and_then(|c| c.state.as_ref()).and_then(|s| s.terminated.clone());
                let container =
                    last.spec.as_ref().and_then(|s| s.containers.first()).map(|c| c.name.clone()).unwrap_or_default();
                IndexOutcome {
                    index,
                    attempts,
                    succeeded,
                    pod: last.metadata.name.clone().unwrap_or_default(),
                    node: last.spec.as_ref().and_then(|s| s.node_name.clone()),
                    exit_code: terminated.as_ref().map(|t| t.exit_code),
                    reason: status.reason.clone().or_else(|| terminated.as_ref().and_then(|t| t.reason.clone())),
                    termination_message: terminated.and_then(|t| t.message).unwrap_or_default(),
                    log: self.log_of(&last, &container).unwrap_or_default(),
                }
            })
            .collect();
        JobOutcome { job, indexes }
    }

    /// The node's machine stops: its kubelet ends and every process on it is killed (its mounts go with its
    /// namespace). The Node object stays: after `Timing::node_monitor_grace` it turns `Unknown` and tainted
    /// unreachable; see `node_lifecycle` for what happens to its pods.
    pub fn stop_node(&self, node: &str) -> anyhow::Result<()> {
        let mut nodes = lock(&self.nodes);
        let n = nodes.get_mut(node).ok_or_else(|| anyhow!("no simulated node {node:?}"))?;
        n.ctx.alive.store(false, Ordering::SeqCst);
        self.shared.processes.close(Some(node));
        n.task.abort();
        self.shared.processes.kill(Some(node));
        n.lost = true;
        Ok(())
    }

    /// The node vanishes, as a machine gone from its cloud: [`Cluster::stop_node`], and the Node object is
    /// deleted (what the cloud node controller does), so pod GC fails its pods with reason `NodeLost`.
    pub fn vanish_node(&self, node: &str) -> anyhow::Result<()> {
        self.stop_node(node)?;
        self.store.delete("nodes", "", node)?;
        Ok(())
    }

    /// Pids of the processes the cluster is running (container processes and node namespace holders).
    pub fn pids(&self) -> Vec<u32> {
        self.shared.processes.pids(None)
    }

    fn stop_everything(&mut self) {
        self.shared.processes.close(None);
        self.runtime.stop();
        self.shared.processes.kill(None);
    }

    /// Stops every controller and kubelet and kills every process (dropping the cluster does the same).
    pub fn shutdown(mut self) {
        self.stop_everything();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_everything();
    }
}
