//! A whole Coracle installation on this machine, for end-to-end tests and the demo: a real
//! nats-server, the simulated API server loaded with a cluster, a simulated kubelet per node
//! that runs Jobs, local restic repositories, and the real `coracle` binary.

use crate::binaries::{scratch_dir, workspace_bin};
use crate::kubelet::{Kubelet, Node};
use crate::nats::{tools_path, NatsServer};
use crate::sim::SimServer;
use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, consumer::pull};
use base64::Engine;
use coracle_events::publish::Publisher;
use coracle_events::{subjects, BackupRequest, CloudEvent};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const SYSTEM_NAMESPACE: &str = "coracle-system";

pub struct Harness {
    pub nats: NatsServer,
    pub sim: SimServer,
    pub tmp: tempfile::TempDir,
    pub repos: PathBuf,
    pub kubeconfig: PathBuf,
    pub master_key: String,
    pub kubelet: Kubelet,
}

/// Writes a file, creating its directories.
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
        let nodes = nodes
            .iter()
            .map(|n| Node { name: n.to_string(), kubelet_root: tmp.path().join("nodes").join(n).join("kubelet") })
            .collect();
        let kubelet = Kubelet {
            client: sim.client()?,
            nodes,
            bin_dir: workspace_bin("coracle-volume-job")?.parent().context("bin dir")?.to_path_buf(),
            extra_env: vec![("PATH".into(), tools_path()), ("RUST_LOG".into(), "info".into())],
            scratch: tmp.path().join("pods-scratch"),
        };
        Ok(Harness { nats, sim, tmp, repos, kubeconfig, master_key, kubelet })
    }

    /// A pod volume's directory on a node, as the kubelet lays it out
    /// (`<pods>/<pod-uid>/volumes/<plugin>/<dir>`).
    pub fn volume_dir(&self, node: &str, pod_uid: &str, plugin: &str, dir: &str) -> anyhow::Result<PathBuf> {
        let node = self.kubelet.nodes.iter().find(|n| n.name == node).context("no such node")?;
        Ok(node.pods_root().join(pod_uid).join("volumes").join(plugin).join(dir))
    }

    fn command(&self, args: &[&str]) -> anyhow::Result<Command> {
        let mut cmd = Command::new(workspace_bin("coracle")?);
        cmd.args(args).env("KUBECONFIG", &self.kubeconfig).env("PATH", tools_path());
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

    pub fn jobs(&self) -> anyhow::Result<Vec<Job>> {
        self.sim.store().list_as::<Job>(Some(SYSTEM_NAMESPACE))
    }

    /// Runs every Job of one backup on its node; fails when an index fails.
    pub async fn run_jobs_of(&self, backup_uid: &str) -> anyhow::Result<()> {
        for job in self.jobs()? {
            let labels = job.metadata.labels.clone().unwrap_or_default();
            if labels.get("coracle.dev/backup-uid").map(String::as_str) != Some(backup_uid) {
                continue;
            }
            let name = job.metadata.name.clone().unwrap_or_default();
            let run = self.kubelet.run_job(SYSTEM_NAMESPACE, &name).await?;
            if let Some(bad) = run.indexes.iter().find(|i| i.exit_code != 0) {
                bail!("{name} index {} failed: {}\n{}", bad.index, bad.termination_message, bad.stderr);
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

/// A child process stopped by pid when dropped.
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
