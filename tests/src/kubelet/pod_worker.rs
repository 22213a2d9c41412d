//! One pod's life on its node, as the kubelet drives it: volumes, init containers in order, then the
//! containers; restarts by `restartPolicy`; `activeDeadlineSeconds`; deletion; status written back after
//! every change; volumes torn down when the pod ends and its directory removed when it is deleted.
//!
//! Approximations, each for speed or because nothing here needs more: restarts back off from
//! `Timing::restart_backoff` doubling to `Timing::restart_backoff_cap` (Kubernetes: 10 s doubling to 5 min);
//! the grace period of a kill is the pod's `terminationGracePeriodSeconds` capped at `Timing::termination_grace_cap`;
//! there are no probes (a running container is ready), no resource limits, no image pulls; native sidecars
//! (init containers with `restartPolicy: Always`) are started in order and not waited for.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{self, FutureExt as _};
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use super::container::{self, ContainerSpec, Mount, Propagation};
use super::env::{self, Objects};
use super::images;
use super::node_kubelet::NodeContext;
use super::process_table::{exit_code, Process};
use super::volumes::{self, PreparedVolume};

/// Kubernetes' limit for a termination message, and the log tail used by `FallbackToLogsOnError`.
const MESSAGE_LIMIT: usize = 4096;
const LOG_TAIL_BYTES: usize = 2048;
const LOG_TAIL_LINES: usize = 80;

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[derive(Debug, Clone)]
struct Terminated {
    exit_code: i32,
    signal: Option<i32>,
    reason: String,
    message: Option<String>,
    started_at: String,
    finished_at: String,
    container_id: String,
}

#[derive(Debug, Clone)]
enum State {
    Waiting { reason: String, message: Option<String> },
    Running { started_at: String },
    Terminated(Terminated),
}

struct Ctr {
    spec: Container,
    sidecar: bool,
    restart_count: i32,
    state: State,
    last: Option<Terminated>,
    process: Option<Process>,
    id: String,
    /// When a waiting or terminated container may be (re)started.
    retry_at: Option<Instant>,
    termination_file: Option<PathBuf>,
    root_dir: Option<PathBuf>,
    log: Option<PathBuf>,
}

impl Ctr {
    fn new(spec: Container, sidecar: bool, waiting_reason: &str) -> Self {
        Self {
            spec,
            sidecar,
            restart_count: 0,
            state: State::Waiting { reason: waiting_reason.into(), message: None },
            last: None,
            process: None,
            id: String::new(),
            retry_at: None,
            termination_file: None,
            root_dir: None,
            log: None,
        }
    }

    fn running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }

    fn terminated(&self) -> Option<&Terminated> {
        match &self.state {
            State::Terminated(t) => Some(t),
            _ => None,
        }
    }

    fn ever_started(&self) -> bool {
        !self.id.is_empty()
    }

    fn status(&self, ready: bool) -> Value {
        let state = |s: &State| match s {
            State::Waiting { reason, message } => json!({"waiting": {"reason": reason, "message": message}}),
            State::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            State::Terminated(t) => terminated_json(t),
        };
        let mut status = json!({
            "name": self.spec.name,
            "image": self.spec.image.clone().unwrap_or_default(),
            "imageID": format!("sim://{}", self.spec.image.clone().unwrap_or_default()),
            "ready": ready && self.running(),
            "started": self.running(),
            "restartCount": self.restart_count,
            "state": state(&self.state),
        });
        if self.ever_started() {
            status["containerID"] = json!(format!("sim://{}", self.id));
        }
        if let Some(last) = &self.last {
            status["lastState"] = terminated_json(last);
        }
        status
    }
}

fn terminated_json(t: &Terminated) -> Value {
    let mut v = json!({"terminated": {
        "exitCode": t.exit_code, "reason": t.reason, "startedAt": t.started_at, "finishedAt": t.finished_at,
        "containerID": format!("sim://{}", t.container_id),
    }});
    if let Some(m) = &t.message {
        v["terminated"]["message"] = json!(m);
    }
    if let Some(s) = t.signal {
        v["terminated"]["signal"] = json!(s);
    }
    v
}

/// Last lines of a log, as `FallbackToLogsOnError` reports them.
fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(LOG_TAIL_BYTES);
    let tail = String::from_utf8_lossy(&text[start..]).into_owned();
    let lines: Vec<&str> = tail.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// The termination message file, at most 4096 bytes.
fn read_message(path: &std::path::Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let mut end = bytes.len().min(MESSAGE_LIMIT);
    while end > 0 && std::str::from_utf8(&bytes[..end]).is_err() {
        end -= 1;
    }
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

pub(crate) struct PodWorker {
    ctx: Arc<NodeContext>,
    pod: Pod,
    uid: String,
    namespace: String,
    name: String,
    init: Vec<Ctr>,
    app: Vec<Ctr>,
    phase: String,
    reason: Option<String>,
    message: Option<String>,
    pod_ip: String,
    start_time: String,
    deadline: Option<Instant>,
    volumes: Option<BTreeMap<String, PreparedVolume>>,
    mount_error: Option<String>,
    mount_retry_at: Option<Instant>,
    initialized: bool,
    deleted: bool,
    conditions: BTreeMap<&'static str, (bool, String)>,
    pushed: Option<Value>,
}

fn is_terminal(phase: &str) -> bool {
    phase == "Succeeded" || phase == "Failed"
}

impl PodWorker {
    fn new(ctx: Arc<NodeContext>, pod: Pod) -> Self {
        let spec = pod.spec.clone().unwrap_or_default();
        let has_init = spec.init_containers.as_ref().is_some_and(|c| !c.is_empty());
        let init = spec
            .init_containers
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|c| {
                let sidecar = c.restart_policy.as_deref() == Some("Always");
                Ctr::new(c, sidecar, "PodInitializing")
            })
            .collect();
        let waiting = if has_init { "PodInitializing" } else { "ContainerCreating" };
        let app = spec.containers.iter().cloned().map(|c| Ctr::new(c, false, waiting)).collect();
        let status = pod.status.clone().unwrap_or_default();
        let pod_ip = status.pod_ip.clone().filter(|ip| !ip.is_empty()).unwrap_or_else(|| ctx.allocate_pod_ip());
        let start_time = status.start_time.as_ref().map(|t| t.0.to_string()).unwrap_or_else(now);
        let deadline = spec.active_deadline_seconds.map(|secs| {
            let started = chrono::DateTime::parse_from_rfc3339(&start_time).map(|t| t.with_timezone(&chrono::Utc));
            let elapsed = started.map(|t| (chrono::Utc::now() - t).to_std().unwrap_or_default()).unwrap_or_default();
            Instant::now() + Duration::from_secs(secs.max(0) as u64).saturating_sub(elapsed)
        });
        let phase = status.phase.clone().unwrap_or_else(|| "Pending".into());
        Self {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            ctx,
            pod,
            init,
            app,
            phase,
            reason: None,
            message: None,
            pod_ip,
            start_time,
            deadline,
            volumes: None,
            mount_error: None,
            mount_retry_at: None,
            initialized: !has_init,
            deleted: false,
            conditions: BTreeMap::new(),
            pushed: None,
        }
    }

    fn restart_policy(&self) -> &str {
        self.pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always")
    }

    fn deleting(&self) -> bool {
        self.pod.metadata.deletion_timestamp.is_some()
    }

    fn hostname(&self) -> String {
        let h = self.pod.spec.as_ref().and_then(|s| s.hostname.clone()).unwrap_or_else(|| self.name.clone());
        h.chars().take(63).collect::<String>().trim_end_matches(['-', '.']).to_string()
    }

    fn pod_dir(&self) -> PathBuf {
        volumes::pod_dir(&self.ctx.dirs.kubelet_root, &self.uid)
    }

    fn set_condition(&mut self, kind: &'static str, value: bool) {
        let changed = self.conditions.get(kind).is_none_or(|(v, _)| *v != value);
        if changed {
            self.conditions.insert(kind, (value, now()));
        }
    }

    fn status(&mut self) -> Value {
        let terminal = is_terminal(&self.phase);
        let all_ready = !terminal && self.initialized && self.app.iter().all(Ctr::running);
        self.set_condition("PodScheduled", true);
        self.set_condition("PodReadyToStartContainers", self.volumes.is_some() && !terminal);
        self.set_condition("Initialized", self.initialized);
        self.set_condition("ContainersReady", all_ready);
        self.set_condition("Ready", all_ready);
        let reason_for = |kind: &str, ok: bool| -> Option<&'static str> {
            if ok {
                return None;
            }
            match kind {
                "Initialized" => Some("ContainersNotInitialized"),
                "Ready" | "ContainersReady" if terminal => Some("PodCompleted"),
                "Ready" | "ContainersReady" => Some("ContainersNotReady"),
                _ => None,
            }
        };
        let conditions: Vec<Value> = self
            .conditions
            .iter()
            .map(|(kind, (ok, at))| {
                let mut c = json!({"type": kind, "status": if *ok { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": at});
                if let Some(r) = reason_for(kind, *ok) {
                    c["reason"] = json!(r);
                }
                c
            })
            .collect();
        let mut status = json!({
            "phase": self.phase,
            "hostIP": self.ctx.host_ip, "hostIPs": [{"ip": self.ctx.host_ip}],
            "podIP": self.pod_ip, "podIPs": [{"ip": self.pod_ip}],
            "startTime": self.start_time,
            "conditions": conditions,
            "containerStatuses": self.app.iter().map(|c| c.status(all_ready)).collect::<Vec<_>>(),
        });
        if !self.init.is_empty() {
            status["initContainerStatuses"] = json!(self.init.iter().map(|c| c.status(c.sidecar)).collect::<Vec<_>>());
        }
        if let Some(r) = &self.reason {
            status["reason"] = json!(r);
        }
        if let Some(m) = &self.message {
            status["message"] = json!(m);
        }
        status
    }

    async fn push_status(&mut self) {
        if self.deleted {
            return;
        }
        let status = self.status();
        if self.pushed.as_ref() == Some(&status) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.ctx.volumes.client.clone(), &self.namespace);
        let patch = json!({"status": status});
        match api.patch_status(&self.name, &PatchParams::default(), &Patch::Strategic(&patch)).await {
            Ok(_) => self.pushed = Some(status),
            Err(kube::Error::Api(e)) if e.code == 404 => self.deleted = true,
            Err(e) => {
                tracing::warn!("kubelet {}: writing the status of {}/{}: {e}", self.ctx.name, self.namespace, self.name)
            }
        }
    }

    fn event(&self, warning: bool, reason: &str, message: &str) {
        self.ctx.recorder.record(&self.pod, warning, reason, message);
    }

    /// The bind mounts of one container, from its volumeMounts and the prepared volumes.
    fn mounts(&self, c: &Container, env: &BTreeMap<String, String>) -> Result<Vec<Mount>, String> {
        let volumes = self.volumes.as_ref().ok_or("volumes are not set up")?;
        let mut out = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let v = volumes.get(&m.name).ok_or_else(|| format!("volume {:?} not found in the pod", m.name))?;
            let sub = match (&m.sub_path, &m.sub_path_expr) {
                (Some(s), _) if !s.is_empty() => s.clone(),
                (_, Some(e)) if !e.is_empty() => env::expand(e, env),
                _ => String::new(),
            };
            if sub.split('/').any(|p| p == "..") || sub.starts_with('/') {
                return Err(format!("subPath {sub:?} must be a relative path without '..'"));
            }
            let source = if sub.is_empty() { v.host.clone() } else { v.host.join(&sub) };
            if !sub.is_empty() && !source.exists() {
                std::fs::create_dir_all(&source).map_err(|e| format!("creating subPath {}: {e}", source.display()))?;
            }
            let propagation = match m.mount_propagation.as_deref() {
                Some("HostToContainer") | Some("Bidirectional") => Propagation::HostToContainer,
                _ => Propagation::Private,
            };
            out.push(Mount {
                source,
                target: m.mount_path.clone(),
                read_only: m.read_only == Some(true) || v.read_only,
                recursive_read_only: matches!(m.recursive_read_only.as_deref(), Some("Enabled") | Some("IfPossible")),
                propagation,
            });
        }
        Ok(out)
    }

    /// Starts (or restarts) a container. Failures land in its state.
    async fn start(&mut self, init: bool, i: usize) {
        let ctx = self.ctx.clone();
        let spec = if init { self.init[i].spec.clone() } else { self.app[i].spec.clone() };
        let pod_spec = self.pod.spec.clone().unwrap_or_default();
        // The downward API sees the status this kubelet has reported (podIP, hostIP).
        let mut pod = self.pod.clone();
        let status = pod.status.get_or_insert_with(Default::default);
        status.pod_ip = Some(self.pod_ip.clone());
        status.host_ip = Some(ctx.host_ip.clone());
        let mut objects = Objects::new(&ctx.volumes.client, &self.namespace);
        let resolved = env::container_env(&mut objects, &pod, &spec, ctx.volumes.allocatable).await;
        let config = resolved.and_then(|pod_env| {
            let mut vars: Vec<(String, Vec<u8>)> = vec![
                ("PATH".into(), images::default_path(ctx.shared.config.bin_dirs.len()).into_bytes()),
                ("HOSTNAME".into(), self.hostname().into_bytes()),
                ("HOME".into(), b"/root".to_vec()),
            ];
            for (k, v) in pod_env {
                vars.retain(|(n, _)| *n != k);
                vars.push((k, v));
            }
            let text: BTreeMap<String, String> =
                vars.iter().map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned())).collect();
            let mounts = self.mounts(&spec, &text)?;
            let image = images::image(spec.image.as_deref().unwrap_or_default());
            let expand = |v: &Option<Vec<String>>| {
                v.as_ref().map(|a| a.iter().map(|s| env::expand(s, &text)).collect::<Vec<_>>())
            };
            let argv = images::argv(&image, expand(&spec.command).as_deref(), expand(&spec.args).as_deref());
            if argv.is_empty() {
                return Err("no command specified".to_string());
            }
            Ok((vars, mounts, argv))
        });
        let (vars, mounts, argv) = match config {
            Ok(c) => c,
            Err(message) => {
                self.event(true, "Failed", &format!("Error: {message}"));
                let ctr = if init { &mut self.init[i] } else { &mut self.app[i] };
                ctr.state = State::Waiting { reason: "CreateContainerConfigError".into(), message: Some(message) };
                ctr.retry_at = Some(Instant::now() + ctx.shared.config.timing.mount_retry);
                return;
            }
        };
        let id = uuid::Uuid::new_v4().simple().to_string();
        let pod_dir = self.pod_dir();
        let hosts = pod_dir.join("etc-hosts");
        let hostname_file = pod_dir.join("etc-hostname");
        let termination_dir = pod_dir.join("containers").join(&spec.name);
        let termination = termination_dir.join(&id);
        let ctr = if init { &mut self.init[i] } else { &mut self.app[i] };
        let restart = ctr.ever_started();
        let log_dir = ctx
            .dirs
            .rootfs
            .join("var/log/pods")
            .join(format!("{}_{}_{}", self.namespace, self.name, self.uid))
            .join(&spec.name);
        let log = log_dir.join(format!("{}.log", ctr.restart_count + i32::from(restart)));
        let prepared = std::fs::create_dir_all(&termination_dir)
            .and_then(|_| std::fs::create_dir_all(&log_dir))
            .and_then(|_| std::fs::write(&termination, b""))
            .and_then(|_| {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&termination, std::fs::Permissions::from_mode(0o666))
            });
        let sc = spec.security_context.clone().unwrap_or_default();
        let pod_sc = pod_spec.security_context.clone().unwrap_or_default();
        let uid = sc.run_as_user.or(pod_sc.run_as_user);
        let gid = sc.run_as_group.or(pod_sc.run_as_group);
        let caps = sc.capabilities.clone().unwrap_or_default();
        let container_spec = ContainerSpec {
            root_dir: ctx.dirs.containers.join(&id),
            argv: argv.into_iter().map(OsString::from).collect(),
            env: vars.into_iter().map(|(k, v)| (OsString::from(k), OsString::from_vec(v))).collect(),
            working_dir: spec.working_dir.clone().filter(|w| w.starts_with('/')).unwrap_or_else(|| "/".into()),
            bin_dirs: ctx
                .shared
                .config
                .bin_dirs
                .iter()
                .enumerate()
                .map(|(n, d)| (d.clone(), format!("{}/{n}", images::BIN_MOUNT_PREFIX)))
                .collect(),
            shared_paths: ctx.shared.config.shared_paths.clone(),
            mounts,
            files: vec![
                (hosts, "/etc/hosts".into()),
                (hostname_file, "/etc/hostname".into()),
                (
                    termination.clone(),
                    spec.termination_message_path.clone().unwrap_or_else(|| "/dev/termination-log".into()),
                ),
            ],
            read_only_root: sc.read_only_root_filesystem == Some(true),
            no_new_privileges: sc.allow_privilege_escalation == Some(false),
            capabilities: (sc.privileged != Some(true))
                .then(|| container::capability_mask(&caps.add.unwrap_or_default(), &caps.drop.unwrap_or_default())),
            run_as: match (uid, gid) {
                (None, None) | (Some(0), None) | (Some(0), Some(0)) | (None, Some(0)) => None,
                (u, g) => Some((u.unwrap_or(0) as u32, g.unwrap_or(0) as u32)),
            },
            log: log.clone(),
        };
        let started = match prepared {
            Err(e) => Err(container::StartError(format!("preparing the container: {e}"))),
            Ok(()) => ctx.start_container(&container_spec),
        };
        let at = now();
        if restart {
            ctr.restart_count += 1;
            if let State::Terminated(t) = &ctr.state {
                ctr.last = Some(t.clone());
            }
        }
        ctr.id = id.clone();
        ctr.retry_at = None;
        ctr.termination_file = Some(termination);
        ctr.root_dir = Some(container_spec.root_dir.clone());
        ctr.log = Some(log);
        let name = spec.name.clone();
        match started {
            Ok(process) => {
                ctr.process = Some(process);
                ctr.state = State::Running { started_at: at };
                let image = spec.image.clone().unwrap_or_default();
                self.event(false, "Pulled", &format!("Container image {image:?} already present on machine"));
                self.event(false, "Created", &format!("Created container: {name}"));
                self.event(false, "Started", &format!("Started container {name}"));
            }
            Err(container::StartError(message)) => {
                let _ = std::fs::remove_dir_all(&container_spec.root_dir);
                self.event(true, "Failed", &format!("Error: {message}"));
                let ctr = if init { &mut self.init[i] } else { &mut self.app[i] };
                ctr.state = State::Terminated(Terminated {
                    exit_code: 128,
                    signal: None,
                    reason: "StartError".into(),
                    message: Some(message),
                    started_at: at.clone(),
                    finished_at: at,
                    container_id: id,
                });
            }
        }
    }

    /// Records a container's exit: its termination message (or log tail), reason, and cleans its root.
    fn record_exit(&mut self, init: bool, i: usize, status: Option<std::process::ExitStatus>) {
        let ctr = if init { &mut self.init[i] } else { &mut self.app[i] };
        let State::Running { started_at } = &ctr.state else { return };
        use std::os::unix::process::ExitStatusExt as _;
        let code = exit_code(status);
        let mut message = ctr.termination_file.as_deref().map(read_message).unwrap_or_default();
        let fallback = ctr.spec.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
        if message.is_empty() && fallback && code != 0 {
            message = ctr.log.as_deref().map(log_tail).unwrap_or_default();
        }
        ctr.state = State::Terminated(Terminated {
            exit_code: code,
            signal: status.and_then(|s| s.signal()),
            reason: if code == 0 { "Completed".into() } else { "Error".into() },
            message: (!message.is_empty()).then_some(message),
            started_at: started_at.clone(),
            finished_at: now(),
            container_id: ctr.id.clone(),
        });
        ctr.process = None;
        if let Some(root) = ctr.root_dir.take() {
            // On the host these are plain empty directories: the container's mounts lived in its own namespace.
            let _ = std::fs::remove_dir_all(root);
        }
    }

    /// Stops every running container (SIGTERM, SIGKILL after the grace period) and records the exits.
    async fn kill_all(&mut self, why: &str) {
        let cap = self.ctx.shared.config.timing.termination_grace_cap;
        let grace = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .map_or(cap, |s| Duration::from_secs(s.max(0) as u64).min(cap));
        let mut running = Vec::new();
        for (init, list) in [(true, &self.init), (false, &self.app)] {
            for (i, c) in list.iter().enumerate() {
                if let Some(p) = &c.process {
                    running.push((init, i, p.clone(), c.spec.name.clone()));
                }
            }
        }
        for (_, _, _, name) in &running {
            self.event(false, "Killing", &format!("Stopping container {name}: {why}"));
        }
        let stops = running.iter().map(|(_, _, p, _)| p.stop(grace));
        let statuses = future::join_all(stops).await;
        for ((init, i, _, _), status) in running.into_iter().zip(statuses) {
            self.record_exit(init, i, status);
        }
    }

    /// The first container exit among the running ones; pending forever when none runs.
    fn next_exit(&self) -> future::BoxFuture<'static, (bool, usize, Option<std::process::ExitStatus>)> {
        let mut waits = Vec::new();
        for (init, list) in [(true, &self.init), (false, &self.app)] {
            for (i, c) in list.iter().enumerate() {
                if let Some(p) = c.process.clone() {
                    waits.push(async move { (init, i, p.wait().await) }.boxed());
                }
            }
        }
        if waits.is_empty() {
            future::pending().boxed()
        } else {
            future::select_all(waits).map(|(r, _, _)| r).boxed()
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        let retries = self.init.iter().chain(&self.app).filter_map(|c| c.retry_at);
        retries.chain(self.mount_retry_at).chain(self.deadline).min()
    }

    fn backoff(&self, restarts: i32) -> Duration {
        let t = &self.ctx.shared.config.timing;
        let factor = 1u32 << restarts.clamp(0, 16);
        t.restart_backoff.saturating_mul(factor).min(t.restart_backoff_cap)
    }

    fn due(at: Option<Instant>) -> bool {
        at.is_none_or(|t| t <= Instant::now())
    }

    /// One round of decisions; `true` when something changed that may allow the next one at once.
    async fn step(&mut self) -> bool {
        if self.volumes.is_none() {
            if !Self::due(self.mount_retry_at) {
                return false;
            }
            return match volumes::set_up(&self.ctx.volumes, &self.pod).await {
                Ok(v) => {
                    self.volumes = Some(v);
                    self.mount_error = None;
                    self.mount_retry_at = None;
                    if let Err(e) = self.write_sandbox_files() {
                        tracing::warn!("kubelet {}: {e}", self.ctx.name);
                    }
                    true
                }
                Err(e) => {
                    if self.mount_error.as_ref() != Some(&e) {
                        self.event(true, "FailedMount", &e);
                    }
                    self.mount_error = Some(e);
                    self.mount_retry_at = Some(Instant::now() + self.ctx.shared.config.timing.mount_retry);
                    false
                }
            };
        }
        let policy = self.restart_policy().to_string();
        if !self.initialized {
            for i in 0..self.init.len() {
                let c = &self.init[i];
                if c.sidecar {
                    match &c.state {
                        State::Running { .. } => continue,
                        State::Terminated(_) if c.retry_at.is_none() => {
                            let delay = self.backoff(c.restart_count);
                            self.init[i].retry_at = Some(Instant::now() + delay);
                            return false;
                        }
                        _ if Self::due(c.retry_at) => {
                            self.start(true, i).await;
                            return true;
                        }
                        _ => return false,
                    }
                }
                match &c.state {
                    State::Running { .. } => return false,
                    State::Terminated(t) if t.exit_code == 0 => continue,
                    State::Terminated(t) => {
                        if policy == "Never" {
                            self.phase = "Failed".into();
                            let reason = t.reason.clone();
                            self.event(true, "Failed", &format!("Init container {} failed: {reason}", c.spec.name));
                            return true;
                        }
                        if c.retry_at.is_none() {
                            let delay = self.backoff(c.restart_count);
                            self.init[i].retry_at = Some(Instant::now() + delay);
                            return false;
                        }
                        if Self::due(c.retry_at) {
                            self.start(true, i).await;
                            return true;
                        }
                        return false;
                    }
                    State::Waiting { .. } if Self::due(c.retry_at) => {
                        self.start(true, i).await;
                        return true;
                    }
                    State::Waiting { .. } => return false,
                }
            }
            self.initialized = true;
            for c in &mut self.app {
                if let State::Waiting { reason, .. } = &mut c.state {
                    *reason = "ContainerCreating".into();
                }
            }
            return true;
        }
        let mut progressed = false;
        for i in 0..self.app.len() {
            let c = &self.app[i];
            let restart = match &c.state {
                State::Running { .. } => false,
                State::Waiting { .. } => Self::due(c.retry_at),
                State::Terminated(t) => {
                    let wanted = policy == "Always" || (policy == "OnFailure" && t.exit_code != 0);
                    if wanted && c.retry_at.is_none() {
                        let delay = self.backoff(c.restart_count);
                        self.app[i].retry_at = Some(Instant::now() + delay);
                        false
                    } else {
                        wanted && Self::due(c.retry_at)
                    }
                }
            };
            if restart {
                self.start(false, i).await;
                progressed = true;
            }
        }
        if self.app.iter().any(Ctr::ever_started) && self.phase == "Pending" {
            self.phase = "Running".into();
        }
        let done = self
            .app
            .iter()
            .all(|c| c.terminated().is_some_and(|t| policy == "Never" || (policy == "OnFailure" && t.exit_code == 0)));
        if done && !self.app.is_empty() {
            let ok = self.app.iter().all(|c| c.terminated().is_some_and(|t| t.exit_code == 0));
            self.phase = if ok { "Succeeded".into() } else { "Failed".into() };
            progressed = true;
        }
        progressed
    }

    /// `/etc/hosts` and `/etc/hostname` for the pod's containers, as the kubelet writes them.
    fn write_sandbox_files(&self) -> std::io::Result<()> {
        let dir = self.pod_dir();
        let hostname = self.hostname();
        let hosts = format!(
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n{}\t{hostname}\n",
            self.pod_ip
        );
        std::fs::write(dir.join("etc-hosts"), hosts)?;
        std::fs::write(dir.join("etc-hostname"), format!("{hostname}\n"))
    }

    async fn wait_event(&mut self, rx: &mut watch::Receiver<Option<Pod>>) {
        let exit = self.next_exit();
        let wake = self.next_wake().unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            changed = rx.changed() => {
                match changed {
                    Err(_) => self.deleted = true,
                    Ok(()) => match rx.borrow_and_update().clone() {
                        Some(pod) => self.pod = pod,
                        None => self.deleted = true,
                    },
                }
            }
            (init, i, status) = exit => self.record_exit(init, i, status),
            _ = tokio::time::sleep_until(wake) => {}
        }
    }

    /// Drives the pod until it is deleted from the API.
    pub(crate) async fn run(ctx: Arc<NodeContext>, mut rx: watch::Receiver<Option<Pod>>) {
        let Some(pod) = rx.borrow_and_update().clone() else { return };
        let mut w = PodWorker::new(ctx, pod);
        // A pod that ended before this kubelet saw it keeps the status it has.
        let report = !is_terminal(&w.phase);
        if report && !w.deleting() {
            w.live(&mut rx).await;
        } else if report {
            // Deleted before it ever ran.
            w.phase = "Failed".into();
        }
        w.finish(&mut rx, report).await;
    }

    async fn live(&mut self, rx: &mut watch::Receiver<Option<Pod>>) {
        loop {
            if self.deleted || self.deleting() {
                self.kill_all("pod deleted").await;
                if !is_terminal(&self.phase) {
                    let ok = self.initialized
                        && !self.app.is_empty()
                        && self.app.iter().all(|c| c.terminated().is_some_and(|t| t.exit_code == 0));
                    self.phase = if ok { "Succeeded".into() } else { "Failed".into() };
                }
                return;
            }
            if self.deadline.is_some_and(|d| d <= Instant::now()) {
                self.event(true, "DeadlineExceeded", "Pod was active on the node longer than the specified deadline");
                self.kill_all("deadline exceeded").await;
                self.phase = "Failed".into();
                self.reason = Some("DeadlineExceeded".into());
                self.message = Some("Pod was active on the node longer than the specified deadline".into());
                return;
            }
            let progressed = self.step().await;
            if is_terminal(&self.phase) {
                // Native sidecars and anything else still running go with the pod.
                self.kill_all("pod completed").await;
                return;
            }
            self.push_status().await;
            if !progressed {
                self.wait_event(rx).await;
            }
        }
    }

    /// A terminal pod: report, tear the volumes down, and once the pod is gone from the API remove its directory.
    async fn finish(&mut self, rx: &mut watch::Receiver<Option<Pod>>, report: bool) {
        if report {
            self.push_status().await;
        }
        if let Err(e) = volumes::tear_down(&self.ctx.volumes, &self.uid) {
            tracing::warn!(
                "kubelet {}: tearing down the volumes of {}/{}: {e:#}",
                self.ctx.name,
                self.namespace,
                self.name
            );
        }
        while !self.deleted {
            match rx.changed().await {
                Err(_) => self.deleted = true,
                Ok(()) => {
                    if rx.borrow_and_update().is_none() {
                        self.deleted = true;
                    }
                }
            }
        }
        if let Err(e) = volumes::remove_pod_dir(&self.ctx.volumes, &self.uid) {
            tracing::warn!("kubelet {}: removing the directory of pod {}: {e:#}", self.ctx.name, self.uid);
        }
    }
}
