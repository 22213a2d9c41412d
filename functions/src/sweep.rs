//! The result sweep: recovers volume results that never reached NATS and fails volumes whose
//! Job gave up without reporting. Pure: a backup record plus its Jobs and their pods → the
//! result events to publish. Every event carries the id the Job itself would have used, so a
//! result that did arrive is de-duplicated, and record-result ignores volumes already terminal.
//!
//! Sources, in order: a pod's termination message (the Job binary always writes its result
//! there, NATS or not); then the Job's own verdict — an index in `failedIndexes`, or the whole
//! Job `Failed` (deadline exceeded, node lost) — for volumes that reported nothing.

use crate::jobs::backup_job_name;
use crate::record::{BackupRecord, VolumeStatus};
use coracle_events::{PlannedVolume, VolumeBackupFailed, VolumeOutcome};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeSet;

const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";

/// The results to publish for a backup's still-pending volumes.
pub fn backup_sweep(record: &BackupRecord, jobs: &[Job], pods: &[Pod]) -> Vec<VolumeOutcome> {
    let mut out = Vec::new();
    for vrec in record.volumes.values().filter(|v| v.status == VolumeStatus::Pending) {
        let volume = &vrec.volume;
        let job_name = backup_job_name(&record.backup.uid, &volume.node);
        let Some(job) = jobs.iter().find(|j| j.metadata.name.as_deref() == Some(job_name.as_str())) else { continue };
        let Some(index) = job_volumes(job).iter().position(|v| v.key() == volume.key()) else { continue };
        let index_pods: Vec<&Pod> = pods.iter().filter(|p| pod_of(p, &job_name, index)).collect();
        // The newest terminated result for this volume wins: a success after a retried failure.
        let reported = index_pods
            .iter()
            .filter_map(|p| termination_message(p))
            .filter_map(|m| serde_json::from_str::<VolumeOutcome>(&m).ok())
            .filter(|o| outcome_volume(o).key() == volume.key())
            .max_by_key(|o| (matches!(o, VolumeOutcome::Completed(_)), outcome_attempt(o)));
        match reported {
            Some(outcome @ VolumeOutcome::Completed(_)) => out.push(outcome),
            Some(VolumeOutcome::Failed(f)) if f.is_final => out.push(VolumeOutcome::Failed(f)),
            _ => {
                if let Some(mut reason) = job_gave_up(job, index) {
                    if let Some(why) = index_pods.iter().rev().find_map(|p| pod_failure(p)) {
                        reason = format!("{reason}; last pod: {why}");
                    }
                    // At least the retry limit: the Job's own non-final failures used lower
                    // attempt numbers, so this final one can never share their event id.
                    let limit = job.spec.as_ref().and_then(|s| s.backoff_limit_per_index).unwrap_or(0).max(0) as u32;
                    out.push(VolumeOutcome::Failed(VolumeBackupFailed {
                        backup: record.backup.clone(),
                        volume: volume.clone(),
                        reason,
                        attempt: (index_pods.len() as u32).max(limit),
                        is_final: true,
                    }));
                }
            }
        }
    }
    out
}

/// The volumes a backup Job was given (its `CORACLE_VOLUMES`), in index order.
pub fn job_volumes(job: &Job) -> Vec<PlannedVolume> {
    job.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .and_then(|c| c.env.as_ref())
        .and_then(|env| env.iter().find(|e| e.name == "CORACLE_VOLUMES"))
        .and_then(|e| e.value.as_deref())
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default()
}

fn pod_of(pod: &Pod, job: &str, index: usize) -> bool {
    let labels = pod.metadata.labels.as_ref();
    let of_job = labels.is_some_and(|l| {
        l.get("batch.kubernetes.io/job-name").or_else(|| l.get("job-name")).map(String::as_str) == Some(job)
    });
    let idx =
        pod.metadata.annotations.as_ref().and_then(|a| a.get(INDEX_ANNOTATION)).and_then(|i| i.parse::<usize>().ok());
    of_job && idx == Some(index)
}

/// Why a pod failed, as the kubelet or the control plane recorded it (`NodeLost: …`).
fn pod_failure(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let reason = status.reason.as_deref().filter(|r| !r.is_empty())?;
    Some(match status.message.as_deref().filter(|m| !m.is_empty()) {
        Some(message) => format!("{reason}: {message}"),
        None => reason.to_string(),
    })
}

fn termination_message(pod: &Pod) -> Option<String> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses
        .iter()
        .find_map(|s| s.state.as_ref()?.terminated.as_ref()?.message.clone())
        .filter(|m| !m.trim().is_empty())
}

fn outcome_volume(o: &VolumeOutcome) -> &PlannedVolume {
    match o {
        VolumeOutcome::Completed(c) => &c.volume,
        VolumeOutcome::Failed(f) => &f.volume,
    }
}

fn outcome_attempt(o: &VolumeOutcome) -> u32 {
    match o {
        VolumeOutcome::Completed(c) => c.attempt,
        VolumeOutcome::Failed(f) => f.attempt,
    }
}

/// Why the Job will not finish this index, if it will not.
fn job_gave_up(job: &Job, index: usize) -> Option<String> {
    let name = job.metadata.name.clone().unwrap_or_default();
    let status = job.status.as_ref()?;
    if indexes(status.failed_indexes.as_deref().unwrap_or("")).contains(&index) {
        return Some(format!("index {index} of Job {name} failed and will not be retried"));
    }
    let done = indexes(status.completed_indexes.as_deref().unwrap_or("")).contains(&index);
    // FailureTarget comes first and is final: since Kubernetes 1.31 a Job whose pods sit on an
    // unreachable node may stay there long before (or without ever) reaching Failed.
    let failed = status
        .conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "Failed" || c.type_ == "FailureTarget") && c.status == "True");
    match failed {
        Some(c) if !done => Some(format!(
            "Job {name} failed ({}): {}",
            c.reason.as_deref().unwrap_or("unknown reason"),
            c.message.as_deref().unwrap_or("no message")
        )),
        _ => None,
    }
}

/// Kubernetes' index list notation: `1,3-5,7`.
pub fn indexes(text: &str) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    out.extend(a..=b.min(a.saturating_add(100_000)));
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::backup_jobs;
    use crate::settings::Settings;
    use chrono::Utc;
    use coracle_events::{BackupPlanned, BackupRef, BackupRequest, BackupStats, VolumeBackupCompleted};
    use serde_json::json;
    use std::time::Duration;

    fn vol(pod: &str) -> PlannedVolume {
        crate::test_support::empty_dir("ns", pod, "n1")
    }

    fn setup() -> (BackupRecord, Job) {
        let backup = BackupRef { name: "b".into(), uid: "u".into() };
        let vols = vec![vol("a"), vol("b"), vol("c")];
        let job = backup_jobs(&backup, &vols, None, &Default::default(), Duration::from_secs(60), &Settings::default())
            .remove(0);
        let plan = BackupPlanned {
            backup,
            request: BackupRequest::default(),
            volumes: vols,
            skipped: vec![],
            jobs: vec![],
            expires: Utc::now(),
        };
        (BackupRecord::from_plan(&plan, Utc::now()), job)
    }

    fn pod(job: &Job, index: usize, message: &str) -> Pod {
        let name = job.metadata.name.clone().unwrap_or_default();
        serde_json::from_value(json!({
            "metadata": {"name": format!("{name}-{index}"), "labels": {"batch.kubernetes.io/job-name": name},
                         "annotations": {INDEX_ANNOTATION: index.to_string()}},
            "status": {"phase": "Succeeded", "containerStatuses": [{"name": "backup", "image": "i", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"terminated": {"exitCode": 0, "message": message}}}]}
        }))
        .expect("pod")
    }

    #[test]
    fn recovers_results_from_termination_messages_and_fails_what_the_job_gave_up() {
        let (record, mut job) = setup();
        let done = VolumeOutcome::Completed(VolumeBackupCompleted {
            backup: record.backup.clone(),
            volume: vol("a"),
            snapshot_id: "s".into(),
            parent_snapshot: None,
            stats: BackupStats::default(),
            warnings: vec![],
            attempt: 0,
        });
        let pods = vec![pod(&job, 0, &serde_json::to_string(&done).expect("json")), pod(&job, 1, "garbage")];
        job.status = serde_json::from_value(json!({"failedIndexes": "1", "completedIndexes": "0"})).expect("status");
        let out = backup_sweep(&record, &[job.clone()], &pods);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0], done);
        assert!(
            matches!(&out[1], VolumeOutcome::Failed(f) if f.volume.pod == "b" && f.is_final && f.reason.contains("index 1"))
        );
        // Index 2 is still running: nothing to say yet. Once the Job fails, it is failed too.
        job.status = serde_json::from_value(json!({"completedIndexes": "0", "conditions": [
            {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}]}))
        .expect("status");
        let out = backup_sweep(&record, &[job], &pods[..1]);
        let reasons: Vec<String> = out
            .iter()
            .filter_map(|o| match o {
                VolumeOutcome::Failed(f) => Some(f.reason.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(reasons.len(), 2);
        assert!(reasons.iter().all(|r| r.contains("DeadlineExceeded")), "{reasons:?}");
    }

    #[test]
    fn index_lists() {
        assert_eq!(indexes("0,2-4, 7"), BTreeSet::from([0, 2, 3, 4, 7]));
        assert!(indexes("x,-").is_empty());
    }
}
