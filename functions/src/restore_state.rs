//! Restore state kept in the `coracle-restores` KV bucket: one pending entry per target (what
//! admission matches and claims) and one record per restore (what `restore describe` shows and
//! what decides `coracle.restore.completed`). Pure transitions; the KV adapter applies them with
//! compare-and-set.

use crate::record::RecordPhase;
use chrono::{DateTime, Utc};
use coracle_events::{
    BackupPhase, BackupRef, PendingRestore, RestoreCompleted, RestoreRef, RestoreRequest, RestoreStats, SkippedVolume,
    VolumeFailure, VolumeRestoreCompleted, VolumeRestoreFailed,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum EntryState {
    /// Waiting for a pod to be admitted.
    Pending,
    /// Claimed by an admitted pod; its restore Job will write the marker.
    Claimed,
    Completed,
    Failed,
}

impl EntryState {
    pub fn is_terminal(self) -> bool {
        matches!(self, EntryState::Completed | EntryState::Failed)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PendingEntry {
    pub pending: PendingRestore,
    pub state: EntryState,
    /// The claim token of the pod that restores this entry; other pods sharing the volume wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// The pod (`namespace/name`) that restored it, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<RestoreStats>,
}

impl PendingEntry {
    pub fn new(pending: PendingRestore) -> Self {
        PendingEntry { pending, state: EntryState::Pending, claim: None, pod: None, reason: None, stats: None }
    }
}

/// Who restores a volume a pod is admitted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// This pod claimed the entry: its restore Job writes the data and the marker.
    Owner,
    /// Another pod claimed it (a shared PVC): this pod only waits for the marker.
    Waiter,
}

/// Claims an entry for `token`. Returns the role and whether the entry changed.
pub fn claim(entry: &mut PendingEntry, token: &str) -> (Role, bool) {
    match &entry.claim {
        Some(t) if t == token => (Role::Owner, false),
        Some(_) => (Role::Waiter, false),
        None => {
            entry.claim = Some(token.to_string());
            entry.state = EntryState::Claimed;
            (Role::Owner, true)
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreRecord {
    pub restore: RestoreRef,
    pub request: RestoreRequest,
    pub backup: BackupRef,
    pub phase: RecordPhase,
    pub started: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<DateTime<Utc>>,
    /// Keyed like the pending entries (`<target-ns>.pvc.<claim>`, …).
    pub entries: BTreeMap<String, PendingEntry>,
    #[serde(default)]
    pub skipped: Vec<SkippedVolume>,
    #[serde(default)]
    pub completion_published: bool,
}

impl RestoreRecord {
    /// Applies a volume's result to the entry it restored. Duplicates and results for another
    /// restore uid change nothing; a non-final failure only records the reason.
    pub fn apply(&mut self, key: &str, result: &VolumeResult, now: DateTime<Utc>) -> bool {
        let changed = match self.entries.get_mut(key) {
            Some(entry) => apply_to_entry(entry, &self.restore, result),
            None => false,
        };
        if changed {
            self.settle(now);
        }
        changed
    }

    fn settle(&mut self, now: DateTime<Utc>) {
        if self.phase != RecordPhase::InProgress || self.entries.values().any(|e| !e.state.is_terminal()) {
            return;
        }
        let failed = self.entries.values().filter(|e| e.state == EntryState::Failed).count();
        self.phase = match failed {
            0 => RecordPhase::Completed,
            n if n == self.entries.len() => RecordPhase::Failed,
            _ => RecordPhase::PartiallyFailed,
        };
        self.finished = Some(now);
    }

    pub fn completion(&self) -> Option<RestoreCompleted> {
        let phase = match self.phase {
            RecordPhase::InProgress => return None,
            RecordPhase::Completed => BackupPhase::Completed,
            RecordPhase::PartiallyFailed => BackupPhase::PartiallyFailed,
            RecordPhase::Failed => BackupPhase::Failed,
        };
        let count = |s: EntryState| self.entries.values().filter(|e| e.state == s).count() as u32;
        Some(RestoreCompleted {
            restore: self.restore.clone(),
            phase,
            volumes: self.entries.len() as u32,
            volumes_completed: count(EntryState::Completed),
            volumes_failed: count(EntryState::Failed),
            failures: self
                .entries
                .iter()
                .filter(|(_, e)| e.state == EntryState::Failed)
                .map(|(k, e)| VolumeFailure { volume: k.clone(), reason: e.reason.clone().unwrap_or_default() })
                .collect(),
        })
    }
}

/// A restore Job's result for one volume.
pub enum VolumeResult<'a> {
    Completed(&'a VolumeRestoreCompleted),
    Failed(&'a VolumeRestoreFailed),
}

impl VolumeResult<'_> {
    pub fn restore(&self) -> &RestoreRef {
        match self {
            VolumeResult::Completed(c) => &c.restore,
            VolumeResult::Failed(f) => &f.restore,
        }
    }
}

/// The same transition for the pending entry in its own KV key and its copy in the record.
pub fn apply_to_entry(entry: &mut PendingEntry, restore: &RestoreRef, result: &VolumeResult) -> bool {
    if result.restore().uid != restore.uid || entry.pending.restore.uid != restore.uid || entry.state.is_terminal() {
        return false;
    }
    match result {
        VolumeResult::Completed(c) => {
            entry.state = EntryState::Completed;
            entry.stats = Some(c.stats.clone());
            entry.pod = Some(format!("{}/{}", c.volume.namespace, c.volume.pod));
            entry.reason = None;
        }
        VolumeResult::Failed(f) => {
            if entry.reason.as_deref() == Some(f.reason.as_str()) && !f.is_final {
                return false;
            }
            entry.reason = Some(f.reason.clone());
            entry.pod = Some(format!("{}/{}", f.volume.namespace, f.volume.pod));
            if f.is_final {
                entry.state = EntryState::Failed;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use coracle_events::{RestoreTarget, RestoreVolume};

    fn pending(claim: &str) -> PendingRestore {
        PendingRestore {
            restore: RestoreRef { name: "r".into(), uid: "ru".into() },
            backup: BackupRef { name: "b".into(), uid: "bu".into() },
            target_namespace: "shop".into(),
            target: RestoreTarget::Pvc { claim: claim.into() },
            source_namespace: "shop".into(),
            source_pod: "db-0".into(),
            source_volume: "data".into(),
            snapshot_id: "s1".into(),
            identity: "pvc/u".into(),
        }
    }

    fn volume() -> RestoreVolume {
        RestoreVolume {
            namespace: "shop".into(),
            pod: "db-0".into(),
            pod_uid: "0b9f3b36-1b8e-4f1a-9a43-5a0c0f9a2a11".into(),
            volume: "data".into(),
            dir: "pv-1".into(),
            source_namespace: "shop".into(),
            snapshot_id: "s1".into(),
            entry: String::new(),
        }
    }

    fn record(claims: &[&str]) -> RestoreRecord {
        RestoreRecord {
            restore: RestoreRef { name: "r".into(), uid: "ru".into() },
            request: RestoreRequest::default(),
            backup: BackupRef::default(),
            phase: RecordPhase::InProgress,
            started: Utc::now(),
            finished: None,
            entries: claims.iter().map(|c| (format!("shop.pvc.{c}"), PendingEntry::new(pending(c)))).collect(),
            skipped: vec![],
            completion_published: false,
        }
    }

    #[test]
    fn first_claim_owns_the_entry_the_rest_wait() {
        let mut e = PendingEntry::new(pending("data"));
        assert_eq!(claim(&mut e, "pod-a"), (Role::Owner, true));
        assert_eq!(claim(&mut e, "pod-a"), (Role::Owner, false), "reinvocation");
        assert_eq!(claim(&mut e, "pod-b"), (Role::Waiter, false));
        assert_eq!(e.state, EntryState::Claimed);
    }

    #[test]
    fn results_complete_the_record_once() {
        let mut r = record(&["a", "b"]);
        let done = VolumeRestoreCompleted {
            restore: r.restore.clone(),
            volume: volume(),
            stats: RestoreStats { files: 3, bytes: 10, duration_seconds: 1.0 },
            attempt: 0,
        };
        let now = Utc::now();
        assert!(r.apply("shop.pvc.a", &VolumeResult::Completed(&done), now));
        assert!(!r.apply("shop.pvc.a", &VolumeResult::Completed(&done), now), "duplicate");
        let retry = VolumeRestoreFailed {
            restore: r.restore.clone(),
            volume: volume(),
            reason: "x".into(),
            attempt: 0,
            is_final: false,
        };
        assert!(r.apply("shop.pvc.b", &VolumeResult::Failed(&retry), now));
        assert!(r.completion().is_none());
        let last = VolumeRestoreFailed { is_final: true, attempt: 1, ..retry };
        assert!(r.apply("shop.pvc.b", &VolumeResult::Failed(&last), now));
        let c = r.completion().expect("terminal");
        assert_eq!((c.phase, c.volumes_completed, c.volumes_failed), (BackupPhase::PartiallyFailed, 1, 1));
        let mut other = done.clone();
        other.restore.uid = "another".into();
        assert!(!record(&["a"]).apply("shop.pvc.a", &VolumeResult::Completed(&other), now));
    }
}
