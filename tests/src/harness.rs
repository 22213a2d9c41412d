//! A whole Coracle installation on this machine, for end-to-end tests and the demo: a real
//! nats-server, the simulated API server loaded with a cluster, the simulated cluster's controllers and a
//! kubelet per node that run every Job as it appears, local restic repositories, and the real `coracle` binary.

use crate::binaries::{scratch_dir, workspace_bin};
use crate::kubelet::{Cluster, ClusterConfig};
use crate::nats::{tools_path, NatsServer};
use crate::sim::SimServer;
use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, consumer::pull};
use base64::Engine;
use coracle_events::publish::Publisher;
use coracle_events::{subjects, BackupRequest, CloudEvent, RestoreRequest};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const SYSTEM_NAMESPACE: &str = "coracle-system";

pub struct Harness {
    /// First, so that it stops (killing its processes) before the API server and the files go.
    pub cluster: Cluster,
    pub nats: NatsServer,
    pub sim: SimServer,
    pub tmp: tempfile::TempDir,
    pub repos: PathBuf,
    pub kubeconfig: PathBuf,
    pub master_key: String,
}

/// Writes a file, creating its directories.
/// Pseudo-random bytes (xorshift64*, fixed seed): restic can neither deduplicate nor compress them.
pub fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn write_file(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    std::fs::create_dir_all(path.parent().context("path has no parent")?)?;
    std::fs::write(path, content).with_context(|| format!("writing {}", path.display()))
}

impl Harness {
    /// Starts NATS and the API server loaded with `objects`, in which `__REPOS__`, `__NATS__`
    /// and `__MASTER_KEY_B64__` are replaced by this installation's values.
    pub async fn start(name: &str, objects: &str, nodes: &[&str]) -> anyhow::Result<Harness> {
        let nats = NatsServer::start()?;
        let tmp = scratch_dir(name)?;
        let repos = tmp.path().join("repos");
        let master_key = hex::encode(uuid::Uuid::new_v4().as_bytes()) + &hex::encode(uuid::Uuid::new_v4().as_bytes());
        let objects = objects
            .replace("__REPOS__", &repos.display().to_string())
            .replace("__NATS__", &nats.url())
            .replace("__MASTER_KEY_B64__", &base64::engine::general_purpose::STANDARD.encode(&master_key));
        let sim = SimServer::start(&objects).await?;
        let kubeconfig = tmp.path().join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig)?;
        // The repositories are local paths: every container sees them, as if on storage reachable from every node.
        std::fs::create_dir_all(&repos)?;
        let mut config = ClusterConfig::new(tmp.path().join("cluster"), nodes)?;
        config.shared_paths.push(repos.clone());
        let cluster = Cluster::start(&sim, config)?;
        Ok(Harness { cluster, nats, sim, tmp, repos, kubeconfig, master_key })
    }

    /// A pod volume's directory on a node, as the kubelet lays it out
    /// (`<pods>/<pod-uid>/volumes/<plugin>/<dir>`); PV data is in [`Harness::pv_data_dir`].
    pub fn volume_dir(&self, node: &str, pod_uid: &str, plugin: &str, dir: &str) -> anyhow::Result<PathBuf> {
        self.cluster.pod_volume_dir(node, pod_uid, plugin, dir)
    }

    /// A PersistentVolume's data, shared by every pod that mounts it.
    pub fn pv_data_dir(&self, pv: &str) -> anyhow::Result<PathBuf> {
        self.cluster.pv_data_dir(pv)
    }

    /// Waits until the pod is Running with its volumes set up (so its emptyDirs exist).
    pub async fn wait_running(&self, namespace: &str, pod: &str) -> anyhow::Result<k8s_openapi::api::core::v1::Pod> {
        self.cluster
            .wait_pod(namespace, pod, Duration::from_secs(60), |p| {
                let s = p.status.as_ref();
                s.and_then(|s| s.phase.as_deref()) == Some("Running")
                    && s.and_then(|s| s.container_statuses.as_ref()).is_some_and(|c| {
                        !c.is_empty() && c.iter().all(|c| c.state.as_ref().and_then(|s| s.running.as_ref()).is_some())
                    })
            })
            .await
    }

    /// The `coracle` binary with this installation's environment (KUBECONFIG, tools, master key).
    pub fn command(&self, args: &[&str]) -> anyhow::Result<Command> {
        let mut cmd = Command::new(workspace_bin("coracle")?);
        // The master key, as a function's Deployment gets it from the Secret: plan-restore reads
        // repositories when a backup's record is gone.
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("PATH", tools_path())
            .env("CORACLE_MASTER_KEY", &self.master_key);
        Ok(cmd)
    }

    /// Runs the `coracle` binary to completion; its standard output.
    pub fn coracle(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.command(args)?.output().context("running coracle")?;
        if !out.status.success() {
            bail!("coracle {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts a function as a long-running NATS consumer, stopped by pid when the guard drops
    /// (and by the kernel if this process dies first).
    pub fn spawn_function(&self, function: &str) -> anyhow::Result<ChildGuard> {
        let mut cmd = self.command(&["fn", function, "--nats", &self.nats.url()])?;
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        crate::process::die_with_parent(&mut cmd);
        Ok(ChildGuard(cmd.spawn().context("starting a function")?))
    }

    /// Runs a function as a draining consumer (a KEDA/CronJob run).
    pub fn drain(&self, function: &str) -> anyhow::Result<String> {
        self.coracle(&["fn", function, "--nats", &self.nats.url(), "--drain"])
    }

    pub async fn js(&self) -> anyhow::Result<jetstream::Context> {
        Ok(jetstream::new(async_nats::connect(self.nats.url()).await?))
    }

    /// Publishes a `coracle.backup.requested` event.
    pub async fn request(&self, request: BackupRequest, event_id: &str) -> anyhow::Result<()> {
        let subject = Some(request.name.clone());
        let event = CloudEvent::new(event_id, "/coracle/tests", subject, request);
        Publisher::new(self.js().await?).publish(&event).await?;
        Ok(())
    }

    /// `coracle sweep --nats URL`; how many results it published.
    pub fn sweep(&self) -> anyhow::Result<usize> {
        let out = self.coracle(&["sweep", "--nats", &self.nats.url()])?;
        out.trim()
            .strip_prefix("sweep: published ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("unexpected sweep output {out:?}"))
    }

    /// The latest event on `subject` stored in the stream, waiting up to `timeout` for one.
    pub async fn wait_event<T: coracle_events::EventData>(
        &self,
        subject: &str,
        timeout: Duration,
    ) -> anyhow::Result<T> {
        let js = self.js().await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(last) = messages(&js, subject).await?.last() {
                return Ok(coracle_events::envelope::decode::<T>(last)?.data);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("no {subject} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn jobs(&self) -> anyhow::Result<Vec<Job>> {
        self.sim.store().list_as::<Job>(Some(SYSTEM_NAMESPACE))
    }

    /// Waits for every Job of one backup (which the cluster runs as they appear); fails unless all complete.
    pub async fn run_jobs_of(&self, backup_uid: &str) -> anyhow::Result<()> {
        for job in self.jobs()? {
            let labels = job.metadata.labels.clone().unwrap_or_default();
            if labels.get("coracle.dev/backup-uid").map(String::as_str) != Some(backup_uid) {
                continue;
            }
            let name = job.metadata.name.clone().unwrap_or_default();
            let outcome = self.cluster.wait_job(SYSTEM_NAMESPACE, &name, Duration::from_secs(300)).await?;
            if !outcome.complete() {
                bail!("{}", outcome.describe());
            }
        }
        Ok(())
    }

    /// `coracle backup describe NAME -o json`.
    pub fn describe(&self, name: &str) -> anyhow::Result<Value> {
        Ok(serde_json::from_str(&self.coracle(&[
            "backup",
            "describe",
            name,
            "--nats",
            &self.nats.url(),
            "-o",
            "json",
        ])?)?)
    }

    /// Runs restic against a namespace's repository with its derived password.
    pub fn restic(&self, namespace: &str, args: &[&str]) -> anyhow::Result<String> {
        let password = coracle_volume_job::namespace_password(self.master_key.as_bytes(), namespace, 1);
        let out = Command::new("restic")
            .env("PATH", tools_path())
            .env("RESTIC_PASSWORD", password)
            .arg("-r")
            .arg(self.repos.join(namespace))
            .args(args)
            .output()
            .context("running restic")?;
        if !out.status.success() {
            bail!("restic {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn snapshots(&self, namespace: &str) -> anyhow::Result<Vec<Value>> {
        Ok(serde_json::from_str(&self.restic(namespace, &["snapshots", "--json"])?)?)
    }
}

impl Harness {
    /// Publishes a `coracle.restore.requested` event.
    pub async fn request_restore(&self, request: RestoreRequest, event_id: &str) -> anyhow::Result<()> {
        let subject = Some(request.name.clone());
        let event = CloudEvent::new(event_id, "/coracle/tests", subject, request);
        Publisher::new(self.js().await?).publish(&event).await?;
        Ok(())
    }

    /// Installs Coracle's admission webhooks: `coracle serve` over HTTPS with a certificate for
    /// its Service name, reached through the simulated Service, the MutatingWebhookConfiguration
    /// a real installation has and the optional ValidatingWebhookConfiguration for rollouts. The
    /// server stops with the guard.
    pub async fn install_webhook(&self) -> anyhow::Result<ChildGuard> {
        let (guard, ca) =
            install_restore_webhook(&self.sim, self.tmp.path(), &self.nats.url(), |args| self.command(args)).await?;
        // The optional rollout webhook: always allows, and publishes coracle.k8s.workload.updated.
        let rollouts = serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "coracle-rollouts"},
            "webhooks": [{
                "name": "rollouts.coracle.dev",
                "admissionReviewVersions": ["v1"],
                "clientConfig": {
                    "service": {"namespace": SYSTEM_NAMESPACE, "name": "coracle", "path": "/validate/workloads", "port": 443},
                    "caBundle": base64::engine::general_purpose::STANDARD.encode(ca),
                },
                "rules": [{"operations": ["UPDATE"], "apiGroups": ["apps"], "apiVersions": ["v1"], "resources": ["deployments", "statefulsets"], "scope": "Namespaced"}],
                "failurePolicy": "Ignore", "sideEffects": "NoneOnDryRun", "timeoutSeconds": 5,
            }]
        });
        self.sim.store().put(rollouts)?;
        Ok(guard)
    }

    /// Creates a pod again through the API (and so through admission), as its controller would:
    /// a fresh object from `original` without uid, status or (for `generate_name`) name.
    pub async fn recreate_pod(&self, original: &Pod, generate_name: Option<&str>) -> anyhow::Result<Pod> {
        let namespace = original.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let mut pod = original.clone();
        pod.metadata.uid = None;
        pod.metadata.resource_version = None;
        pod.metadata.creation_timestamp = None;
        pod.metadata.managed_fields = None;
        pod.status = None;
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name = None;
        }
        if let Some(prefix) = generate_name {
            pod.metadata.name = None;
            pod.metadata.generate_name = Some(prefix.to_string());
        }
        let api: kube::Api<Pod> = kube::Api::namespaced(self.sim.client()?, &namespace);
        Ok(api.create(&kube::api::PostParams::default(), &pod).await?)
    }
}

/// Every file under `dir` with its SHA-256, mode and modification time (relative paths), for
/// checking that a restore gave back exactly what was backed up. Coracle's `.coracle` marker
/// directory is left out.
pub fn tree_digest(dir: &Path) -> anyhow::Result<BTreeMap<String, (String, u32, i64)>> {
    use sha2::Digest;
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let entry = entry?;
            let path = entry.path();
            let rel = path.strip_prefix(dir)?.display().to_string();
            if rel == coracle_events::MARKER_DIR {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let hash = hex::encode(sha2::Sha256::digest(std::fs::read(&path)?));
                out.insert(rel, (hash, meta.mode(), meta.mtime()));
            }
        }
    }
    Ok(out)
}

/// A child process stopped by pid when dropped.
/// NATS (stream and buckets ready) and the simulated API server, without nodes: for tests of
/// functions that plan or publish but run no Jobs.
/// `coracle serve` over HTTPS with a certificate for its Service name, reached through the simulated
/// Service `coracle-system/coracle`, and the MutatingWebhookConfiguration a real installation has.
/// `command` builds the `coracle` command with the caller's environment. Returns the server's guard
/// (it stops with it) and the CA that signed its certificate.
pub async fn install_restore_webhook(
    sim: &SimServer,
    tmp: &Path,
    nats_url: &str,
    command: impl FnOnce(&[&str]) -> anyhow::Result<Command>,
) -> anyhow::Result<(ChildGuard, String)> {
    let (ca, cert, key) = crate::tls::test_ca_and_cert(&["coracle.coracle-system.svc"]);
    let dir = tmp.join("webhook-tls");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("tls.crt"), cert)?;
    std::fs::write(dir.join("tls.key"), key)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut cmd = command(&["serve", "--listen", &format!("127.0.0.1:{port}"), "--nats", nats_url])?;
    cmd.arg("--tls-cert").arg(dir.join("tls.crt")).arg("--tls-key").arg(dir.join("tls.key"));
    let guard = crate::process::spawn_listening(cmd, port, "coracle serve").await?;
    sim.set_service_endpoint(SYSTEM_NAMESPACE, "coracle", 443, format!("https://127.0.0.1:{port}"));
    sim.store().put(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "coracle-restore"},
        "webhooks": [{
            "name": "restore.coracle.dev",
            "admissionReviewVersions": ["v1"],
            "clientConfig": {
                "service": {"namespace": SYSTEM_NAMESPACE, "name": "coracle", "path": "/admission/pods", "port": 443},
                "caBundle": base64::engine::general_purpose::STANDARD.encode(&ca),
            },
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {"coracle.dev/restore": "enabled"}},
            "failurePolicy": "Ignore", "sideEffects": "None", "timeoutSeconds": 5, "reinvocationPolicy": "IfNeeded",
        }]
    }))?;
    Ok((guard, ca))
}

pub struct ApiAndNats {
    pub nats: NatsServer,
    pub sim: SimServer,
    pub tmp: tempfile::TempDir,
    /// The API server's kubeconfig, in `tmp`.
    pub kubeconfig: PathBuf,
    pub js: jetstream::Context,
}

impl ApiAndNats {
    pub async fn start(name: &str, objects: &str) -> anyhow::Result<Self> {
        let nats = NatsServer::start()?;
        let sim = SimServer::start(objects).await?;
        let tmp = scratch_dir(name)?;
        let kubeconfig = tmp.path().join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig)?;
        let js = jetstream::new(async_nats::connect(nats.url()).await?);
        coracle_events::bootstrap::ensure(&js).await?;
        Ok(ApiAndNats { nats, sim, tmp, kubeconfig, js })
    }
}

pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        crate::process::stop(&mut self.0, Duration::from_secs(5));
    }
}

/// Every message stored on a subject, in order.
pub async fn messages(js: &jetstream::Context, subject: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let stream = js.get_stream(subjects::STREAM).await?;
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: subject.to_string(),
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await?;
    let mut out = Vec::new();
    loop {
        let mut batch = consumer.fetch().max_messages(1000).expires(Duration::from_millis(300)).messages().await?;
        let mut got = 0;
        while let Some(m) = batch.next().await {
            out.push(m.map_err(|e| anyhow::anyhow!("{e}"))?.payload.to_vec());
            got += 1;
        }
        if got == 0 {
            return Ok(out);
        }
    }
}

/// A restic snapshot's `key=value` tags.
pub fn snapshot_tags(snapshot: &Value) -> BTreeMap<String, String> {
    snapshot["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str()?.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}
