//! The backup record: what a backup planned and how each volume ended. Pure state transitions
//! that tolerate duplicated and reordered result events; the KV adapter applies them with
//! compare-and-set.

use chrono::{DateTime, Utc};
use coracle_events::{
    BackupCompleted, BackupPhase, BackupPlanned, BackupRef, BackupRequest, BackupStats, PlannedVolume, SkippedVolume,
    VolumeBackupCompleted, VolumeBackupFailed, VolumeFailure,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum RecordPhase {
    InProgress,
    Completed,
    PartiallyFailed,
    Failed,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum VolumeStatus {
    Pending,
    Completed,
    CompletedWithWarnings,
    Failed,
}

impl VolumeStatus {
    pub fn is_terminal(self) -> bool {
        self != VolumeStatus::Pending
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRecord {
    pub volume: PlannedVolume,
    pub status: VolumeStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_snapshot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<BackupStats>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The latest failure reason, kept even while a retry is pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Failed attempts seen so far.
    #[serde(default)]
    pub failed_attempts: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupRecord {
    pub backup: BackupRef,
    pub request: BackupRequest,
    pub phase: RecordPhase,
    pub started: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<DateTime<Utc>>,
    pub expires: DateTime<Utc>,
    pub jobs: Vec<String>,
    /// Keyed by `namespace/pod/volume`.
    pub volumes: BTreeMap<String, VolumeRecord>,
    #[serde(default)]
    pub skipped: Vec<SkippedVolume>,
    /// Set once `coracle.backup.completed` has been published, so it is published exactly once.
    #[serde(default)]
    pub completion_published: bool,
    /// Set once the backup is due for deletion (TTL expiry or `coracle backup delete`); see
    /// `crate::retention`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion: Option<Deletion>,
}

/// A backup's deletion: its snapshots are forgotten repository by repository, and it is deleted
/// once every namespace it has volumes in has reported.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Deletion {
    /// `expired` or `requested`.
    pub reason: String,
    pub requested: DateTime<Utc>,
    /// Namespaces whose repositories no longer hold its snapshots.
    #[serde(default)]
    pub forgotten: std::collections::BTreeSet<String>,
    /// When the last namespace reported; `coracle.backup.deleted` is published once this is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<DateTime<Utc>>,
    #[serde(default)]
    pub event_published: bool,
}

impl BackupRecord {
    pub fn from_plan(plan: &BackupPlanned, started: DateTime<Utc>) -> Self {
        let volumes = plan
            .volumes
            .iter()
            .map(|v| {
                let rec = VolumeRecord {
                    volume: v.clone(),
                    status: VolumeStatus::Pending,
                    snapshot_id: None,
                    parent_snapshot: None,
                    stats: None,
                    warnings: Vec::new(),
                    reason: None,
                    failed_attempts: 0,
                };
                (v.key(), rec)
            })
            .collect();
        let mut record = BackupRecord {
            backup: plan.backup.clone(),
            request: plan.request.clone(),
            phase: RecordPhase::InProgress,
            started,
            finished: None,
            expires: plan.expires,
            jobs: plan.jobs.clone(),
            volumes,
            skipped: plan.skipped.clone(),
            completion_published: false,
            deletion: None,
        };
        record.settle(started);
        record
    }

    /// Applies a volume's completion. Returns whether the record changed; a duplicate, an event
    /// for another backup uid, or an event for a volume already terminal changes nothing.
    pub fn apply_completed(&mut self, ev: &VolumeBackupCompleted, now: DateTime<Utc>) -> bool {
        if ev.backup.uid != self.backup.uid {
            return false;
        }
        let Some(v) = self.volumes.get_mut(&ev.volume.key()) else { return false };
        if v.status.is_terminal() {
            return false;
        }
        v.status = if ev.warnings.is_empty() { VolumeStatus::Completed } else { VolumeStatus::CompletedWithWarnings };
        v.snapshot_id = Some(ev.snapshot_id.clone());
        v.parent_snapshot = ev.parent_snapshot.clone();
        v.stats = Some(ev.stats.clone());
        v.warnings = ev.warnings.clone();
        self.settle(now);
        true
    }

    /// Applies a failure. A non-final failure (the Job will retry the index) only records the
    /// reason; a final one makes the volume Failed. Late failures after a success are ignored.
    pub fn apply_failed(&mut self, ev: &VolumeBackupFailed, now: DateTime<Utc>) -> bool {
        if ev.backup.uid != self.backup.uid {
            return false;
        }
        let Some(v) = self.volumes.get_mut(&ev.volume.key()) else { return false };
        if v.status.is_terminal() {
            return false;
        }
        let attempts = ev.attempt.saturating_add(1);
        let changed_attempts = attempts > v.failed_attempts;
        if !ev.is_final && !changed_attempts {
            return false;
        }
        v.failed_attempts = v.failed_attempts.max(attempts);
        v.reason = Some(ev.reason.clone());
        if ev.is_final {
            v.status = VolumeStatus::Failed;
            self.settle(now);
        }
        true
    }

    /// Recomputes the phase once every volume is terminal.
    fn settle(&mut self, now: DateTime<Utc>) {
        if self.phase != RecordPhase::InProgress || self.volumes.values().any(|v| !v.status.is_terminal()) {
            return;
        }
        let failed = self.volumes.values().filter(|v| v.status == VolumeStatus::Failed).count();
        self.phase = if failed == 0 {
            RecordPhase::Completed
        } else if failed == self.volumes.len() {
            RecordPhase::Failed
        } else {
            RecordPhase::PartiallyFailed
        };
        self.finished = Some(now);
    }

    pub fn is_terminal(&self) -> bool {
        self.phase != RecordPhase::InProgress
    }

    /// The `coracle.backup.completed` data, once the backup is terminal.
    pub fn completion(&self) -> Option<BackupCompleted> {
        let phase = match self.phase {
            RecordPhase::InProgress => return None,
            RecordPhase::Completed => BackupPhase::Completed,
            RecordPhase::PartiallyFailed => BackupPhase::PartiallyFailed,
            RecordPhase::Failed => BackupPhase::Failed,
        };
        let count = |s: VolumeStatus| self.volumes.values().filter(|v| v.status == s).count() as u32;
        let stats = || self.volumes.values().filter_map(|v| v.stats.as_ref());
        Some(BackupCompleted {
            backup: self.backup.clone(),
            phase,
            volumes: self.volumes.len() as u32,
            volumes_completed: count(VolumeStatus::Completed) + count(VolumeStatus::CompletedWithWarnings),
            volumes_with_warnings: count(VolumeStatus::CompletedWithWarnings),
            volumes_failed: count(VolumeStatus::Failed),
            bytes_added: stats().map(|s| s.bytes_added).sum(),
            total_bytes: stats().map(|s| s.total_bytes).sum(),
            started: self.started,
            finished: self.finished.unwrap_or(self.started),
            failures: self
                .volumes
                .iter()
                .filter(|(_, v)| v.status == VolumeStatus::Failed)
                .map(|(k, v)| VolumeFailure { volume: k.clone(), reason: v.reason.clone().unwrap_or_default() })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(pod: &str) -> PlannedVolume {
        crate::test_support::empty_dir("ns", pod, "n1")
    }

    fn record(pods: &[&str]) -> BackupRecord {
        let plan = BackupPlanned {
            backup: BackupRef { name: "b".into(), uid: "u".into() },
            request: BackupRequest { name: "b".into(), ..Default::default() },
            volumes: pods.iter().map(|p| vol(p)).collect(),
            skipped: vec![],
            jobs: vec![],
            expires: Utc::now(),
        };
        BackupRecord::from_plan(&plan, Utc::now())
    }

    fn completed(pod: &str, warnings: &[&str]) -> VolumeBackupCompleted {
        VolumeBackupCompleted {
            backup: BackupRef { name: "b".into(), uid: "u".into() },
            volume: vol(pod),
            snapshot_id: format!("snap-{pod}"),
            parent_snapshot: None,
            stats: BackupStats { bytes_added: 10, total_bytes: 100, ..Default::default() },
            warnings: warnings.iter().map(|w| w.to_string()).collect(),
            attempt: 0,
        }
    }

    fn failed(pod: &str, attempt: u32, is_final: bool) -> VolumeBackupFailed {
        VolumeBackupFailed {
            backup: BackupRef { name: "b".into(), uid: "u".into() },
            volume: vol(pod),
            reason: format!("boom {attempt}"),
            attempt,
            is_final,
        }
    }

    #[test]
    fn duplicates_change_nothing_and_completion_appears_once_all_are_terminal() {
        let mut r = record(&["a", "b"]);
        let now = Utc::now();
        assert!(r.apply_completed(&completed("a", &[]), now));
        assert!(!r.apply_completed(&completed("a", &[]), now), "duplicate");
        assert!(r.completion().is_none());
        assert!(r.apply_completed(&completed("b", &["unreadable: /x"]), now));
        let c = r.completion().expect("terminal");
        assert_eq!(c.phase, BackupPhase::Completed);
        assert_eq!((c.volumes, c.volumes_completed, c.volumes_with_warnings), (2, 2, 1));
        assert_eq!(c.bytes_added, 20, "each volume counted once");
    }

    #[test]
    fn retries_do_not_fail_the_volume_and_late_failures_after_success_are_ignored() {
        let mut r = record(&["a", "b"]);
        let now = Utc::now();
        assert!(r.apply_failed(&failed("a", 0, false), now));
        assert!(!r.apply_failed(&failed("a", 0, false), now), "duplicate attempt");
        assert_eq!(r.volumes["ns/a/data"].status, VolumeStatus::Pending);
        assert!(r.apply_completed(&completed("a", &[]), now));
        // Reordered: the first attempt's failure arrives after the success.
        assert!(!r.apply_failed(&failed("a", 1, true), now));
        assert!(r.apply_failed(&failed("b", 2, true), now));
        let c = r.completion().expect("terminal");
        assert_eq!(c.phase, BackupPhase::PartiallyFailed);
        assert_eq!(c.failures, vec![VolumeFailure { volume: "ns/b/data".into(), reason: "boom 2".into() }]);
    }

    #[test]
    fn empty_plan_is_complete_at_once_and_all_failed_is_failed() {
        let r = record(&[]);
        assert_eq!(r.completion().map(|c| c.phase), Some(BackupPhase::Completed));
        let mut r = record(&["a"]);
        assert!(r.apply_failed(&failed("a", 0, true), Utc::now()));
        assert_eq!(r.completion().map(|c| c.phase), Some(BackupPhase::Failed));
        let mut other = completed("a", &[]);
        other.backup.uid = "someone-else".into();
        assert!(!record(&["a"]).apply_completed(&other, Utc::now()), "another backup's result is ignored");
    }
}
