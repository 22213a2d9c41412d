//! A minimal simulated kubelet for Jobs: runs a Job's pod template as local processes, one per
//! completion index, honouring parallelism and `backoffLimitPerIndex`, and writes pods and Job
//! status back to the simulated API server.
//!
//! Volume mounts are realised by path mapping rather than a mount namespace: a hostPath mount
//! of the kubelet's pods directory becomes the node's own temporary pods tree, emptyDirs become
//! per-pod temporary directories, and environment values under a mount path are rewritten to
//! the host path (so host paths handed to a Job must not sit under a container mount path such
//! as `/tmp`; see `binaries::scratch_dir`). The termination message is read from the file the
//! container wrote.

use anyhow::{anyhow, bail, Context as _};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// One simulated node: its name and its kubelet root on this machine.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub kubelet_root: PathBuf,
}

impl Node {
    pub fn pods_root(&self) -> PathBuf {
        self.kubelet_root.join("pods")
    }
}

/// What one index's last attempt did.
#[derive(Debug, Clone)]
pub struct IndexRun {
    pub index: i32,
    pub attempts: u32,
    pub exit_code: i32,
    pub termination_message: String,
    pub stderr: String,
}

#[derive(Debug, Clone)]
pub struct JobRun {
    pub job: String,
    pub node: String,
    pub indexes: Vec<IndexRun>,
}

impl JobRun {
    pub fn succeeded(&self) -> bool {
        self.indexes.iter().all(|i| i.exit_code == 0)
    }
}

pub struct Kubelet {
    pub client: kube::Client,
    pub nodes: Vec<Node>,
    /// Directory holding the binaries a container's `command[0]` names.
    pub bin_dir: PathBuf,
    /// Extra environment for every container process (PATH to restic, for example).
    pub extra_env: Vec<(String, String)>,
    pub scratch: PathBuf,
}

impl Kubelet {
    /// Runs every index of a Job to completion (or exhausted retries) and records the result.
    pub async fn run_job(&self, namespace: &str, name: &str) -> anyhow::Result<JobRun> {
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), namespace);
        let job = jobs.get(name).await.with_context(|| format!("reading Job {namespace}/{name}"))?;
        let spec = job.spec.clone().ok_or_else(|| anyhow!("Job {name} has no spec"))?;
        let pod_spec = spec.template.spec.clone().ok_or_else(|| anyhow!("Job {name} has no pod spec"))?;
        let node = self.node_for(&pod_spec)?;
        let completions = spec.completions.unwrap_or(1);
        let parallelism = spec.parallelism.unwrap_or(1).max(1) as usize;
        let backoff = spec.backoff_limit_per_index.unwrap_or(0).max(0) as u32;

        let mut pending: Vec<i32> = (0..completions).collect();
        let mut runs = Vec::new();
        while !pending.is_empty() {
            let wave: Vec<i32> = pending.drain(..pending.len().min(parallelism)).collect();
            let mut set = tokio::task::JoinSet::new();
            for index in wave {
                let this = self.clone_for_task();
                let job = job.clone();
                let pod_spec = pod_spec.clone();
                let node = node.clone();
                set.spawn(async move { this.run_index(&job, &pod_spec, &node, index, backoff).await });
            }
            while let Some(done) = set.join_next().await {
                runs.push(done.map_err(|e| anyhow!("index task: {e}"))??);
            }
        }
        runs.sort_by_key(|r| r.index);
        self.write_status(&jobs, name, completions, &runs).await?;
        Ok(JobRun { job: name.to_string(), node: node.name.clone(), indexes: runs })
    }

    fn clone_for_task(&self) -> Kubelet {
        Kubelet {
            client: self.client.clone(),
            nodes: self.nodes.clone(),
            bin_dir: self.bin_dir.clone(),
            extra_env: self.extra_env.clone(),
            scratch: self.scratch.clone(),
        }
    }

    /// The node a pod template's required node affinity on `kubernetes.io/hostname` selects.
    fn node_for(&self, spec: &PodSpec) -> anyhow::Result<Node> {
        let wanted: Option<String> = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref())
            .and_then(|r| r.node_selector_terms.first())
            .and_then(|t| t.match_expressions.as_ref())
            .and_then(|e| e.iter().find(|r| r.key == "kubernetes.io/hostname" && r.operator == "In"))
            .and_then(|r| r.values.as_ref()?.first().cloned())
            .or_else(|| spec.node_name.clone());
        let wanted = wanted.ok_or_else(|| anyhow!("pod template selects no node"))?;
        self.nodes.iter().find(|n| n.name == wanted).cloned().ok_or_else(|| anyhow!("no node {wanted} (unschedulable)"))
    }

    async fn run_index(
        &self,
        job: &Job,
        spec: &PodSpec,
        node: &Node,
        index: i32,
        backoff: u32,
    ) -> anyhow::Result<IndexRun> {
        let container = spec.containers.first().ok_or_else(|| anyhow!("pod template has no container"))?;
        let namespace = job.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let job_name = job.metadata.name.clone().unwrap_or_default();
        let mut attempt = 0u32;
        loop {
            let pod_dir = self.scratch.join(format!("{job_name}-{index}-{attempt}"));
            std::fs::create_dir_all(&pod_dir)?;
            let run = self.run_container(&namespace, spec, container, node, index, attempt, &pod_dir).await?;
            self.record_pod(&namespace, &job_name, node, index, attempt, &run).await?;
            if run.exit_code == 0 || attempt >= backoff {
                return Ok(IndexRun { attempts: attempt + 1, ..run });
            }
            attempt += 1;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_container(
        &self,
        namespace: &str,
        spec: &PodSpec,
        container: &Container,
        node: &Node,
        index: i32,
        attempt: u32,
        pod_dir: &Path,
    ) -> anyhow::Result<IndexRun> {
        // Mount path → host path, longest first so nested mounts win.
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        for m in container.volume_mounts.iter().flatten() {
            let vol = spec.volumes.iter().flatten().find(|v| v.name == m.name);
            let host = match vol {
                Some(v) if v.host_path.is_some() => {
                    let hp = v.host_path.as_ref().map(|h| h.path.clone()).unwrap_or_default();
                    map_host_path(&hp, node)?
                }
                Some(v) if v.empty_dir.is_some() => {
                    let d = pod_dir.join("volumes").join(&v.name);
                    std::fs::create_dir_all(&d)?;
                    d
                }
                _ => bail!("volume {} of the pod template is not simulated", m.name),
            };
            mounts.push((m.mount_path.clone(), host));
        }
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let map_path = |value: &str| -> String {
            for (mount, host) in &mounts {
                if value == mount || value.starts_with(&format!("{mount}/")) {
                    return format!("{}{}", host.display(), &value[mount.len()..]);
                }
            }
            value.to_string()
        };

        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for from in container.env_from.iter().flatten() {
            if let Some(sref) = &from.secret_ref {
                if let Some(data) = self.secret_data(namespace, &sref.name, sref.optional.unwrap_or(false)).await? {
                    env.extend(data);
                }
            }
        }
        for var in container.env.iter().flatten() {
            if let Some(value) = self.env_value(namespace, var, attempt).await? {
                env.insert(var.name.clone(), map_path(&value));
            }
        }
        env.insert("JOB_COMPLETION_INDEX".into(), index.to_string());
        let termination = pod_dir.join("termination-log");
        env.insert("CORACLE_TERMINATION_LOG".into(), termination.display().to_string());

        let command = container.command.clone().unwrap_or_default();
        let (program, args) = command.split_first().ok_or_else(|| anyhow!("container has no command"))?;
        let binary = self.bin_dir.join(program);
        let mut cmd = tokio::process::Command::new(&binary);
        cmd.args(args.iter().chain(container.args.iter().flatten()))
            .env_clear()
            .envs(self.extra_env.iter().cloned())
            .envs(env)
            .current_dir(pod_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = cmd.output().await.with_context(|| format!("running {}", binary.display()))?;
        let termination_message = std::fs::read_to_string(&termination).unwrap_or_default();
        Ok(IndexRun {
            index,
            attempts: attempt + 1,
            exit_code: out.status.code().unwrap_or(-1),
            termination_message,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    async fn env_value(&self, namespace: &str, var: &EnvVar, attempt: u32) -> anyhow::Result<Option<String>> {
        if let Some(v) = &var.value {
            return Ok(Some(v.clone()));
        }
        let Some(from) = &var.value_from else { return Ok(Some(String::new())) };
        if let Some(field) = &from.field_ref {
            return Ok(match field.field_path.as_str() {
                "metadata.annotations['batch.kubernetes.io/job-index-failure-count']" => Some(attempt.to_string()),
                "metadata.namespace" => Some(namespace.to_string()),
                other => bail!("fieldRef {other} is not simulated"),
            });
        }
        if let Some(sref) = &from.secret_key_ref {
            let optional = sref.optional.unwrap_or(false);
            let data = self.secret_data(namespace, &sref.name, optional).await?;
            return match data.and_then(|d| d.get(&sref.key).cloned()) {
                Some(v) => Ok(Some(v)),
                None if optional => Ok(None),
                None => bail!("secret {namespace}/{} has no key {}", sref.name, sref.key),
            };
        }
        bail!("env {} has an unsupported valueFrom", var.name)
    }

    async fn secret_data(
        &self,
        namespace: &str,
        name: &str,
        optional: bool,
    ) -> anyhow::Result<Option<HashMap<String, String>>> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        match api.get_opt(name).await? {
            Some(secret) => {
                let mut out = HashMap::new();
                for (k, v) in secret.data.unwrap_or_default() {
                    out.insert(k, String::from_utf8_lossy(&v.0).into_owned());
                }
                for (k, v) in secret.string_data.unwrap_or_default() {
                    out.insert(k, v);
                }
                Ok(Some(out))
            }
            None if optional => Ok(None),
            None => bail!("secret {namespace}/{name} not found"),
        }
    }

    /// Records the attempt as a finished pod, as the real kubelet would leave it.
    async fn record_pod(
        &self,
        namespace: &str,
        job: &str,
        node: &Node,
        index: i32,
        attempt: u32,
        run: &IndexRun,
    ) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let name = format!("{job}-{index}-{attempt}");
        let phase = if run.exit_code == 0 { "Succeeded" } else { "Failed" };
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name, "namespace": namespace,
                "labels": {"job-name": job, "batch.kubernetes.io/job-name": job,
                           "batch.kubernetes.io/job-completion-index": index.to_string()},
                "annotations": {"batch.kubernetes.io/job-completion-index": index.to_string(),
                                "batch.kubernetes.io/job-index-failure-count": attempt.to_string()}
            },
            "spec": {"nodeName": node.name, "restartPolicy": "Never", "containers": [{"name": "main", "image": "sim"}]},
        }))?;
        pods.create(&PostParams::default(), &pod).await.with_context(|| format!("creating pod {name}"))?;
        let status = json!({"status": {"phase": phase, "containerStatuses": [{
            "name": "main", "image": "sim", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": run.exit_code, "message": run.termination_message,
                                     "reason": if run.exit_code == 0 { "Completed" } else { "Error" }}}
        }]}});
        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await?;
        Ok(())
    }

    async fn write_status(
        &self,
        jobs: &Api<Job>,
        name: &str,
        completions: i32,
        runs: &[IndexRun],
    ) -> anyhow::Result<()> {
        let ok: BTreeSet<i32> = runs.iter().filter(|r| r.exit_code == 0).map(|r| r.index).collect();
        let failed: BTreeSet<i32> = runs.iter().filter(|r| r.exit_code != 0).map(|r| r.index).collect();
        let list = |s: &BTreeSet<i32>| s.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
        let now = chrono::Utc::now().to_rfc3339();
        let condition = if failed.is_empty() { "Complete" } else { "Failed" };
        let status = json!({"status": {
            "succeeded": ok.len(), "failed": runs.iter().map(|r| r.attempts - u32::from(r.exit_code == 0)).sum::<u32>(),
            "completedIndexes": list(&ok), "failedIndexes": list(&failed),
            "conditions": [{"type": condition, "status": "True", "lastTransitionTime": now, "lastProbeTime": now}],
            "completionTime": if failed.is_empty() && ok.len() as i32 == completions { Some(now.clone()) } else { None },
        }});
        jobs.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await?;
        Ok(())
    }
}

/// Maps a hostPath under `/var/lib/kubelet` (or any kubelet root) onto the node's own tree.
fn map_host_path(host_path: &str, node: &Node) -> anyhow::Result<PathBuf> {
    let rel = host_path
        .rsplit_once("/pods")
        .filter(|(_, rest)| rest.is_empty() || rest.starts_with('/'))
        .map(|(_, rest)| rest.trim_start_matches('/'))
        .ok_or_else(|| anyhow!("hostPath {host_path} is outside the simulated kubelet's pods directory"))?;
    Ok(if rel.is_empty() { node.pods_root() } else { node.pods_root().join(rel) })
}
