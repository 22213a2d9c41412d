//! The Job controller (batch/v1), after Kubernetes 1.33's:
//! - pods named `<job>-<index>-<random>` (Indexed) or `<job>-<random>`, owned by the Job, labelled `job-name`,
//!   `batch.kubernetes.io/job-name`, `controller-uid`, `batch.kubernetes.io/controller-uid`,
//!   `batch.kubernetes.io/job-completion-index`, annotated with the completion index and (with
//!   `backoffLimitPerIndex`) `batch.kubernetes.io/job-index-failure-count`, with `JOB_COMPLETION_INDEX` from the
//!   downward API in every container, hostname `<job>-<index>`, and the `batch.kubernetes.io/job-tracking`
//!   finalizer, removed once the pod's end is counted in the Job status;
//! - `parallelism`, `completions`, `backoffLimit`, `backoffLimitPerIndex`, `maxFailedIndexes`,
//!   `activeDeadlineSeconds`, `podReplacementPolicy` (`Failed`: no replacement while the old pod terminates),
//!   `suspend`, `ttlSecondsAfterFinished` (the Job and its pods are deleted after it);
//! - status `startTime`, `active`, `ready`, `terminating`, `succeeded`, `failed`, `completedIndexes`,
//!   `failedIndexes`, `completionTime`, and conditions as 1.33 writes them: `SuccessCriteriaMet` or
//!   `FailureTarget` first, then `Complete` or `Failed` once no pod is still running or terminating. A pod
//!   that can never terminate (deleted on an unreachable node whose kubelet is gone) therefore keeps a Job at
//!   `FailureTarget`, as in Kubernetes, until the pod goes (the Node is deleted and pod GC removes it).
//!
//! Approximations: a failed pod is replaced after `Timing::job_backoff` (Kubernetes: 10 s doubling); what
//! the controller has counted is kept in memory (Kubernetes uses `uncountedTerminatedPods`); deleting a Job
//! deletes its pods (background propagation; the simulated API server has no garbage collector); no
//! `podFailurePolicy` or `successPolicy`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::batch::v1::{Job, JobStatus};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::events::Recorder;
use super::index_ranges;
use super::informer::Informer;
use super::Timing;

pub(crate) const FINALIZER: &str = "batch.kubernetes.io/job-tracking";
pub(crate) const LABEL_CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
pub(crate) const LABEL_JOB_NAME: &str = "batch.kubernetes.io/job-name";
pub(crate) const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
pub(crate) const INDEX_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";
/// Kubernetes' limit on generated pod name prefixes.
const MAX_GENERATED_PREFIX: usize = 58;

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub(crate) fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

fn terminal(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

pub(crate) fn pod_index(pod: &Pod) -> Option<i32> {
    pod.metadata.annotations.as_ref()?.get(COMPLETION_INDEX)?.parse().ok()
}

/// How many earlier pods of this pod's index failed (set on indexed Jobs with `backoffLimitPerIndex`).
pub(crate) fn index_failures(pod: &Pod) -> Option<i32> {
    pod.metadata.annotations.as_ref()?.get(INDEX_FAILURE_COUNT)?.parse().ok()
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `SuccessCriteriaMet`/`Complete` or `FailureTarget`/`Failed`, with reason and message.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    success: bool,
    reason: String,
    message: String,
}

/// What the controller has counted for one Job (by uid).
#[derive(Default)]
struct Tracking {
    loaded: bool,
    counted: HashSet<String>,
    succeeded_indexes: BTreeSet<i32>,
    index_failures: BTreeMap<i32, i32>,
    succeeded: i32,
    failed: i32,
    /// Pods created but not yet seen in the cache: (name, index).
    pending: Vec<(String, Option<i32>, Instant)>,
    /// Index (or -1 for NonIndexed) → when it last failed, for the replacement delay.
    last_failure: HashMap<i32, Instant>,
    seen_live: HashSet<String>,
    /// The Job has reached its end (SuccessCriteriaMet/FailureTarget or a terminal condition).
    ending: bool,
    /// The Job as returned by this controller's last status write.
    written: Option<Job>,
}

impl Tracking {
    fn load(&mut self, job: &Job) {
        if self.loaded {
            return;
        }
        self.loaded = true;
        if let Some(s) = &job.status {
            self.succeeded = s.succeeded.unwrap_or(0);
            self.failed = s.failed.unwrap_or(0);
            self.succeeded_indexes = index_ranges::parse(s.completed_indexes.as_deref().unwrap_or_default());
            for i in index_ranges::parse(s.failed_indexes.as_deref().unwrap_or_default()) {
                self.index_failures.insert(i, i32::MAX);
            }
        }
    }
}

fn condition_true(job: &Job, kind: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == kind && c.status == "True"))
}

fn existing_target(job: &Job) -> Option<Target> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find(|c| (c.type_ == "FailureTarget" || c.type_ == "SuccessCriteriaMet") && c.status == "True")
        .map(|c| Target {
            success: c.type_ == "SuccessCriteriaMet",
            reason: c.reason.clone().unwrap_or_default(),
            message: c.message.clone().unwrap_or_default(),
        })
}

/// The pod a Job creates for an index (or without one).
fn pod_for(job: &Job, index: Option<i32>, failures: i32) -> Pod {
    let name = job.metadata.name.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let spec = job.spec.clone().unwrap_or_default();
    let template = spec.template;
    let mut meta = template.metadata.unwrap_or_default();
    let mut labels = meta.labels.take().unwrap_or_default();
    labels.insert("controller-uid".into(), uid.clone());
    labels.insert(LABEL_CONTROLLER_UID.into(), uid.clone());
    labels.insert("job-name".into(), name.clone());
    labels.insert(LABEL_JOB_NAME.into(), name.clone());
    let mut annotations = meta.annotations.take().unwrap_or_default();
    let mut pod_spec = template.spec.unwrap_or_default();
    let prefix = match index {
        Some(i) => {
            labels.insert(COMPLETION_INDEX.into(), i.to_string());
            annotations.insert(COMPLETION_INDEX.into(), i.to_string());
            if spec.backoff_limit_per_index.is_some() {
                annotations.insert(INDEX_FAILURE_COUNT.into(), failures.to_string());
            }
            if pod_spec.hostname.is_none() {
                pod_spec.hostname =
                    Some(format!("{name}-{i}").chars().take(63).collect::<String>().trim_end_matches('-').to_string());
            }
            let env = EnvVar {
                name: "JOB_COMPLETION_INDEX".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            for c in pod_spec.containers.iter_mut().chain(pod_spec.init_containers.iter_mut().flatten()) {
                c.env.get_or_insert_with(Vec::new).push(env.clone());
            }
            let suffix = format!("-{i}-");
            if name.len() + suffix.len() > MAX_GENERATED_PREFIX {
                format!("{}{suffix}", &name[..MAX_GENERATED_PREFIX.saturating_sub(suffix.len())])
            } else {
                format!("{name}{suffix}")
            }
        }
        None => format!("{}-", &name[..name.len().min(MAX_GENERATED_PREFIX - 1)]),
    };
    meta.name = None;
    meta.generate_name = Some(prefix);
    meta.namespace = job.metadata.namespace.clone();
    meta.labels = Some(labels);
    meta.annotations = Some(annotations);
    meta.finalizers = Some(vec![FINALIZER.into()]);
    meta.owner_references = Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        name,
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    Pod { metadata: meta, spec: Some(pod_spec), status: None }
}

struct Controller {
    client: kube::Client,
    timing: Timing,
    recorder: Recorder,
    tracking: HashMap<String, Tracking>,
}

impl Controller {
    async fn create_pod(&mut self, job: &Job, index: Option<i32>, failures: i32) {
        let namespace = job.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        match api.create(&PostParams::default(), &pod_for(job, index, failures)).await {
            Ok(pod) => {
                let name = pod.metadata.name.clone().unwrap_or_default();
                self.recorder.record(job, false, "SuccessfulCreate", &format!("Created pod: {name}"));
                let uid = job.metadata.uid.clone().unwrap_or_default();
                self.tracking.entry(uid).or_default().pending.push((name, index, Instant::now()));
            }
            Err(e) => {
                self.recorder.record(job, true, "FailedCreate", &format!("Error creating: {e}"));
            }
        }
    }

    async fn delete_pod(&self, job: &Job, pod: &Pod) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.metadata.namespace.clone().unwrap_or_default());
        let name = pod.metadata.name.clone().unwrap_or_default();
        if api.delete(&name, &DeleteParams::default()).await.is_ok() {
            self.recorder.record(job, false, "SuccessfulDelete", &format!("Deleted pod: {name}"));
        }
    }

    async fn remove_finalizer(&self, pod: &Pod) {
        let Some(finalizers) = pod.metadata.finalizers.as_ref().filter(|f| f.iter().any(|f| f == FINALIZER)) else {
            return;
        };
        let rest: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.metadata.namespace.clone().unwrap_or_default());
        let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": pod.metadata.resource_version}});
        if let Err(e) = api
            .patch(&pod.metadata.name.clone().unwrap_or_default(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::debug!("job-controller: removing the finalizer of {:?}: {e}", pod.metadata.name);
        }
    }

    async fn reconcile(&mut self, cached: &Job, pods: Vec<Pod>, now_wall: chrono::DateTime<chrono::Utc>) {
        let uid = cached.metadata.uid.clone().unwrap_or_default();
        // The Job as this controller last wrote it, when the cache has not caught up with that write yet.
        let version = |j: &Job| j.metadata.resource_version.as_deref().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let written = self.tracking.get(&uid).and_then(|t| t.written.clone()).filter(|w| version(w) > version(cached));
        let job = written.as_ref().unwrap_or(cached);
        let namespace = job.metadata.namespace.clone().unwrap_or_default();
        let name = job.metadata.name.clone().unwrap_or_default();
        let spec = job.spec.clone().unwrap_or_default();
        let indexed = spec.completion_mode.as_deref() == Some("Indexed");
        let completions = spec.completions.unwrap_or(1).max(0);
        let parallelism = spec.parallelism.unwrap_or(1).max(0);
        let per_index = spec.backoff_limit_per_index;
        let backoff_limit = spec.backoff_limit.unwrap_or(if per_index.is_some() { i32::MAX } else { 6 });
        let replace_only_failed = spec.pod_replacement_policy.as_deref() == Some("Failed");
        let finished = condition_true(job, "Complete") || condition_true(job, "Failed");

        let t = self.tracking.entry(uid.clone()).or_default();
        t.load(job);
        // Remembered, since the Job in the cache may lag behind its pods.
        t.ending |= finished || existing_target(job).is_some();
        let ending = t.ending;
        // 1. Count pods that ended.
        for pod in &pods {
            let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
            t.pending.retain(|(n, _, _)| Some(n) != pod.metadata.name.as_ref());
            if !terminal(pod) {
                t.seen_live.insert(pod_uid);
                continue;
            }
            if !t.counted.insert(pod_uid.clone()) {
                continue;
            }
            t.seen_live.remove(&pod_uid);
            let index = pod_index(pod);
            if phase(pod) == "Succeeded" {
                match index.filter(|_| indexed) {
                    Some(i) if (0..completions).contains(&i) => {
                        t.succeeded_indexes.insert(i);
                    }
                    Some(_) => {}
                    None => t.succeeded += 1,
                }
            } else {
                t.failed += 1;
                let key = index.filter(|_| indexed).unwrap_or(-1);
                t.last_failure.insert(key, Instant::now());
                // Pods the controller stops because the Job already ends do not use up their index's retries.
                if let Some(i) = index.filter(|_| indexed && !ending) {
                    let from_pod = index_failures(pod).unwrap_or(0);
                    let entry = t.index_failures.entry(i).or_insert(0);
                    *entry = (*entry).max(from_pod).saturating_add(1);
                }
            }
        }
        // Pods that disappeared without ending (force-deleted) count as failed.
        let present: HashSet<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        let vanished: Vec<String> = t.seen_live.iter().filter(|u| !present.contains(*u)).cloned().collect();
        for gone in vanished {
            t.seen_live.remove(&gone);
            if t.counted.insert(gone) {
                t.failed += 1;
                t.last_failure.insert(-1, Instant::now());
            }
        }
        if indexed {
            t.succeeded = t.succeeded_indexes.len() as i32;
        }
        let failed_indexes: BTreeSet<i32> = match per_index {
            Some(limit) => t
                .index_failures
                .iter()
                .filter(|(i, f)| **f > limit && !t.succeeded_indexes.contains(i))
                .map(|(i, _)| *i)
                .collect(),
            None => BTreeSet::new(),
        };
        let pending_live: Vec<(String, Option<i32>)> = {
            t.pending.retain(|(_, _, at)| at.elapsed() < std::time::Duration::from_secs(10));
            t.pending.iter().map(|(n, i, _)| (n.clone(), *i)).collect()
        };
        let (succeeded, failed) = (t.succeeded, t.failed);
        let succeeded_indexes = t.succeeded_indexes.clone();
        let index_failures = t.index_failures.clone();
        let last_failure = t.last_failure.clone();

        let active: Vec<&Pod> =
            pods.iter().filter(|p| !terminal(p) && p.metadata.deletion_timestamp.is_none()).collect();
        let terminating: Vec<&Pod> =
            pods.iter().filter(|p| !terminal(p) && p.metadata.deletion_timestamp.is_some()).collect();

        // 2. Start time and the deadline.
        let suspended = spec.suspend == Some(true);
        let start_time = job
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0.to_string())
            .or_else(|| (!suspended && !finished).then(now));
        let started_at = start_time
            .as_deref()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&chrono::Utc));

        // 3. Has the Job reached its end?
        let mut target = existing_target(job);
        if target.is_none() && !finished {
            let deadline = spec
                .active_deadline_seconds
                .zip(started_at)
                .is_some_and(|(secs, start)| !suspended && now_wall >= start + chrono::Duration::seconds(secs));
            let all_decided = (0..completions).all(|i| succeeded_indexes.contains(&i) || failed_indexes.contains(&i));
            target = if deadline {
                Some(Target {
                    success: false,
                    reason: "DeadlineExceeded".into(),
                    message: "Job was active longer than specified deadline".into(),
                })
            } else if spec.max_failed_indexes.is_some_and(|m| failed_indexes.len() as i32 > m) {
                Some(Target {
                    success: false,
                    reason: "MaxFailedIndexesExceeded".into(),
                    message: "Job has exceeded the specified maximal number of failed indexes".into(),
                })
            } else if per_index.is_none() && failed > backoff_limit {
                Some(Target {
                    success: false,
                    reason: "BackoffLimitExceeded".into(),
                    message: "Job has reached the specified backoff limit".into(),
                })
            } else if (indexed && succeeded_indexes.len() as i32 >= completions)
                || (!indexed && succeeded >= completions)
            {
                Some(Target {
                    success: true,
                    reason: "CompletionsReached".into(),
                    message: "Reached expected number of succeeded pods".into(),
                })
            } else if indexed && per_index.is_some() && all_decided && !failed_indexes.is_empty() {
                Some(Target {
                    success: false,
                    reason: "FailedIndexes".into(),
                    message: "Job has failed indexes".into(),
                })
            } else {
                None
            };
            if let Some(t) = target.as_ref().filter(|t| !t.success) {
                self.recorder.record(job, true, &t.reason, &t.message);
            }
            if target.is_some() {
                self.tracking.entry(uid.clone()).or_default().ending = true;
            }
        }

        // 4. Act: stop what should not run, start what should.
        if finished || target.is_some() || suspended {
            for pod in &active {
                self.delete_pod(job, pod).await;
            }
        } else {
            let replacing: Vec<&Pod> = if replace_only_failed { terminating.clone() } else { Vec::new() };
            let backoff_over =
                |key: i32| last_failure.get(&key).is_none_or(|at| at.elapsed() >= self.timing.job_backoff);
            let live = active.len() + pending_live.len() + replacing.len();
            let room = (parallelism as usize).saturating_sub(live);
            if indexed {
                let busy: BTreeSet<i32> = active
                    .iter()
                    .chain(&replacing)
                    .filter_map(|p| pod_index(p))
                    .chain(pending_live.iter().filter_map(|(_, i)| *i))
                    .collect();
                let wanted: Vec<i32> = (0..completions)
                    .filter(|i| !succeeded_indexes.contains(i) && !failed_indexes.contains(i) && !busy.contains(i))
                    .filter(|i| backoff_over(*i))
                    .take(room)
                    .collect();
                for i in wanted {
                    let failures = index_failures.get(&i).copied().unwrap_or(0);
                    self.create_pod(job, Some(i), failures).await;
                }
            } else if backoff_over(-1) {
                let remaining = (completions - succeeded).max(0) as usize;
                let want = remaining.min(parallelism as usize).saturating_sub(live);
                for _ in 0..want {
                    self.create_pod(job, None, 0).await;
                }
            }
        }

        // 5. Status: counts, index sets, conditions.
        let mut conditions: Vec<Value> = job
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| serde_json::to_value(c).ok())
            .collect();
        let mut set_condition = |kind: &str, status: bool, reason: &str, message: &str| {
            let same = conditions.iter().any(|c| {
                c["type"] == kind && c["status"] == if status { "True" } else { "False" } && c["reason"] == reason
            });
            if same {
                return;
            }
            conditions.retain(|c| c["type"] != kind);
            let at = now();
            conditions.push(json!({"type": kind, "status": if status { "True" } else { "False" }, "reason": reason,
                                   "message": message, "lastProbeTime": at, "lastTransitionTime": at}));
        };
        if suspended && !finished {
            set_condition("Suspended", true, "JobSuspended", "Job suspended");
        } else if job
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Suspended"))
        {
            set_condition("Suspended", false, "JobResumed", "Job resumed");
        }
        let mut completion_time = job.status.as_ref().and_then(|s| s.completion_time.as_ref()).map(|t| t.0.to_string());
        // As in Kubernetes, the terminal condition waits until every pod has ended and been counted (its
        // tracking finalizer removed).
        let tracked = self.tracking.get(&uid);
        let uncounted_finalizers = pods.iter().any(|p| {
            let counted = p.metadata.uid.as_ref().is_some_and(|u| tracked.is_some_and(|t| t.counted.contains(u)));
            counted && p.metadata.finalizers.as_ref().is_some_and(|f| f.iter().any(|f| f == FINALIZER))
        });
        if let Some(t) = &target {
            set_condition(if t.success { "SuccessCriteriaMet" } else { "FailureTarget" }, true, &t.reason, &t.message);
            let still_running = !active.is_empty() || !terminating.is_empty() || uncounted_finalizers;
            if !finished && !still_running {
                set_condition(if t.success { "Complete" } else { "Failed" }, true, &t.reason, &t.message);
                if t.success {
                    completion_time = Some(now());
                    self.recorder.record(job, false, "Completed", "Job completed");
                }
            }
        }
        let mut status = json!({
            "startTime": start_time,
            "active": active.len(),
            "ready": active.iter().filter(|p| ready(p)).count(),
            "terminating": terminating.len(),
            "succeeded": succeeded,
            "failed": failed,
            "conditions": conditions,
            "completionTime": completion_time,
            "uncountedTerminatedPods": {},
        });
        if indexed {
            status["completedIndexes"] = json!(index_ranges::format(&succeeded_indexes));
            if per_index.is_some() {
                status["failedIndexes"] = json!(index_ranges::format(&failed_indexes));
            }
        }
        // Compared in the typed form, so that time formats and absent-versus-zero do not cause rewrites.
        let desired =
            serde_json::from_value::<JobStatus>(status.clone()).ok().and_then(|s| serde_json::to_value(s).ok());
        let current = serde_json::to_value(job.status.clone().unwrap_or_default()).ok();
        let changed = desired != current;
        let api: Api<Job> = Api::namespaced(self.client.clone(), &namespace);
        if changed {
            match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&json!({"status": status}))).await {
                Ok(updated) => self.tracking.entry(uid.clone()).or_default().written = Some(updated),
                Err(e) => {
                    tracing::debug!("job-controller: status of {namespace}/{name}: {e}");
                    return;
                }
            }
        }
        // 6. Only now that the Job status counts them, let counted pods go.
        for pod in &pods {
            let counted = pod
                .metadata
                .uid
                .as_ref()
                .is_some_and(|u| self.tracking.get(&uid).is_some_and(|t| t.counted.contains(u)));
            if counted {
                self.remove_finalizer(pod).await;
            }
        }

        // 7. ttlSecondsAfterFinished.
        if let (Some(ttl), true) = (spec.ttl_seconds_after_finished, finished) {
            let ended = job
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True"))
                .and_then(|c| c.last_transition_time.as_ref())
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t.0.to_string()).ok());
            if ended.is_some_and(|e| now_wall >= e.with_timezone(&chrono::Utc) + chrono::Duration::seconds(ttl.into()))
            {
                let dp = DeleteParams::background();
                if api.delete(&name, &dp).await.is_ok() {
                    for pod in &pods {
                        self.remove_finalizer(pod).await;
                        self.delete_pod(job, pod).await;
                    }
                }
            }
        }
    }

    /// Pods whose Job is gone: the garbage collector's work (background propagation).
    async fn collect_orphans(&mut self, jobs: &[Job], pods: &[Pod]) {
        let live: HashSet<String> = jobs.iter().filter_map(|j| j.metadata.uid.clone()).collect();
        for pod in pods {
            let owner = pod.metadata.labels.as_ref().and_then(|l| l.get(LABEL_CONTROLLER_UID));
            if owner.is_some_and(|o| !live.contains(o)) {
                self.remove_finalizer(pod).await;
                if pod.metadata.deletion_timestamp.is_none() {
                    let api: Api<Pod> =
                        Api::namespaced(self.client.clone(), &pod.metadata.namespace.clone().unwrap_or_default());
                    let _ = api.delete(&pod.metadata.name.clone().unwrap_or_default(), &DeleteParams::default()).await;
                }
            }
        }
        self.tracking.retain(|uid, _| live.contains(uid));
    }
}

/// Runs until aborted.
pub(crate) async fn run(client: kube::Client, timing: Timing) {
    let notify = Arc::new(Notify::new());
    let (jobs, t1) = Informer::start(Api::<Job>::all(client.clone()), None, None, vec![notify.clone()]);
    let (pods, t2) = Informer::start(
        Api::<Pod>::all(client.clone()),
        Some(LABEL_CONTROLLER_UID.to_string()),
        None,
        vec![notify.clone()],
    );
    let _informers = super::AbortOnDrop(vec![t1, t2]);
    let mut controller = Controller {
        recorder: Recorder::new(client.clone(), "job-controller", None),
        client,
        timing: timing.clone(),
        tracking: HashMap::new(),
    };
    loop {
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(timing.resync) => {}
        }
        if !jobs.synced() || !pods.synced() {
            continue;
        }
        let all_jobs = jobs.list();
        let all_pods = pods.list();
        let mut by_owner: HashMap<String, Vec<Pod>> = HashMap::new();
        for pod in &all_pods {
            if let Some(owner) = pod.metadata.labels.as_ref().and_then(|l| l.get(LABEL_CONTROLLER_UID)) {
                by_owner.entry(owner.clone()).or_default().push(pod.clone());
            }
        }
        let now_wall = chrono::Utc::now();
        for job in &all_jobs {
            if job.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let owned = by_owner.remove(job.metadata.uid.as_deref().unwrap_or_default()).unwrap_or_default();
            controller.reconcile(job, owned, now_wall).await;
        }
        controller.collect_orphans(&all_jobs, &all_pods).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_for_indexes() {
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "backup", "namespace": "ns", "uid": "u-1"},
            "spec": {"completionMode": "Indexed", "completions": 3, "backoffLimitPerIndex": 1,
                     "template": {"metadata": {"labels": {"app": "x"}},
                                  "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}
        }))
        .expect("job");
        let pod = pod_for(&job, Some(2), 1);
        let meta = &pod.metadata;
        assert_eq!(meta.generate_name.as_deref(), Some("backup-2-"));
        let labels = meta.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("job-name").map(String::as_str), Some("backup"));
        assert_eq!(labels.get(LABEL_CONTROLLER_UID).map(String::as_str), Some("u-1"));
        assert_eq!(labels.get(COMPLETION_INDEX).map(String::as_str), Some("2"));
        assert_eq!(labels.get("app").map(String::as_str), Some("x"));
        let annotations = meta.annotations.clone().unwrap_or_default();
        assert_eq!(annotations.get(INDEX_FAILURE_COUNT).map(String::as_str), Some("1"));
        assert_eq!(meta.finalizers.as_deref(), Some(&[FINALIZER.to_string()][..]));
        let spec = pod.spec.expect("spec");
        assert_eq!(spec.hostname.as_deref(), Some("backup-2"));
        let env = spec.containers[0].env.clone().unwrap_or_default();
        assert!(env.iter().any(|e| e.name == "JOB_COMPLETION_INDEX"));
        let long: Job = serde_json::from_value(json!({"metadata": {"name": "x".repeat(63)}, "spec": {"template": {}}}))
            .expect("job");
        let prefix = pod_for(&long, Some(10), 0).metadata.generate_name.unwrap_or_default();
        assert_eq!(prefix.len(), MAX_GENERATED_PREFIX);
        assert!(prefix.ends_with("-10-"));
    }
}
