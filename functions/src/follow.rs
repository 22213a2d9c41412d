//! Following one backup for `coracle backup create --wait`: what each volume's progress bar shows.
//! Pure: the KV record (the source of truth for which volumes exist and how they ended) and the
//! progress events (bytes done, throttled by the Jobs) are folded into one view per volume. Events
//! arrive at least once and may be reordered, so progress never moves backwards and nothing moves
//! a volume out of a terminal state.

use crate::record::{BackupRecord, VolumeStatus};
use coracle_events::VolumeBackupProgress;
use std::collections::BTreeMap;

/// One volume's bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeView {
    pub node: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub status: VolumeStatus,
    /// Why it failed, its warnings, or its snapshot once finished.
    pub note: String,
}

/// What changed for one volume, for the shell to redraw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A volume appeared in the plan: create its bar.
    Planned(String),
    /// Bytes moved.
    Progress(String),
    /// The volume reached a terminal status.
    Finished(String),
}

#[derive(Debug, Default)]
pub struct BackupFollow {
    uid: Option<String>,
    volumes: BTreeMap<String, VolumeView>,
}

impl BackupFollow {
    pub fn volumes(&self) -> &BTreeMap<String, VolumeView> {
        &self.volumes
    }

    /// Folds in the latest record read from KV.
    pub fn on_record(&mut self, record: &BackupRecord) -> Vec<Change> {
        self.uid = Some(record.backup.uid.clone());
        let mut changes = Vec::new();
        for (key, v) in &record.volumes {
            let view = self.volumes.entry(key.clone()).or_insert_with(|| {
                changes.push(Change::Planned(key.clone()));
                VolumeView {
                    node: v.volume.node.clone(),
                    bytes_done: 0,
                    bytes_total: 0,
                    status: VolumeStatus::Pending,
                    note: String::new(),
                }
            });
            if view.status.is_terminal() || !v.status.is_terminal() {
                continue;
            }
            view.status = v.status;
            if let Some(stats) = &v.stats {
                view.bytes_total = view.bytes_total.max(stats.total_bytes);
                view.bytes_done = view.bytes_total;
            }
            view.note = match v.status {
                VolumeStatus::Failed => v.reason.clone().unwrap_or_else(|| "failed".into()),
                VolumeStatus::CompletedWithWarnings => format!("{} warning(s)", v.warnings.len()),
                _ => match v.snapshot_id.as_deref() {
                    Some("") => "empty volume, no snapshot".into(),
                    Some(id) => format!("snapshot {}", id.chars().take(8).collect::<String>()),
                    None => String::new(),
                },
            };
            changes.push(Change::Finished(key.clone()));
        }
        changes
    }

    /// Folds in one progress event; `None` when it changes nothing (another backup, a finished
    /// volume, or an older event arriving late).
    pub fn on_progress(&mut self, p: &VolumeBackupProgress) -> Option<Change> {
        if self.uid.as_deref().is_some_and(|uid| uid != p.backup.uid) {
            return None;
        }
        let view = self.volumes.get_mut(&p.volume)?;
        if view.status.is_terminal() || p.bytes_done < view.bytes_done {
            return None;
        }
        view.bytes_done = p.bytes_done;
        view.bytes_total = view.bytes_total.max(p.bytes_total).max(p.bytes_done);
        Some(Change::Progress(p.volume.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::empty_dir;
    use chrono::{TimeZone, Utc};
    use coracle_events::{BackupPlanned, BackupRef, BackupStats, VolumeBackupCompleted};

    fn vol(pod: &str) -> coracle_events::PlannedVolume {
        empty_dir("shop", pod, "node-1")
    }

    fn record() -> BackupRecord {
        let at = Utc.with_ymd_and_hms(2026, 11, 21, 10, 0, 0).single().unwrap_or_default();
        let planned = BackupPlanned {
            backup: BackupRef { name: "b".into(), uid: "u1".into() },
            request: Default::default(),
            volumes: vec![vol("web-0"), vol("web-1")],
            skipped: vec![],
            jobs: vec![],
            expires: at,
        };
        BackupRecord::from_plan(&planned, at)
    }

    fn progress(pod: &str, done: u64, uid: &str) -> VolumeBackupProgress {
        VolumeBackupProgress {
            backup: BackupRef { name: "b".into(), uid: uid.into() },
            volume: vol(pod).key(),
            bytes_done: done,
            bytes_total: 1000,
            ..Default::default()
        }
    }

    #[test]
    fn progress_only_moves_forward_and_stops_at_the_terminal_status() {
        let mut rec = record();
        let mut follow = BackupFollow::default();
        let planned = follow.on_record(&rec);
        assert_eq!(planned.len(), 2);
        assert!(planned.iter().all(|c| matches!(c, Change::Planned(_))));
        assert!(follow.on_record(&rec).is_empty(), "the same record again changes nothing");

        let key = vol("web-0").key();
        assert_eq!(follow.on_progress(&progress("web-0", 400, "u1")), Some(Change::Progress(key.clone())));
        assert_eq!(follow.on_progress(&progress("web-0", 300, "u1")), None, "a late, older event is ignored");
        assert_eq!(follow.on_progress(&progress("web-0", 900, "other-uid")), None, "another backup's event");
        assert_eq!(follow.volumes()[&key].bytes_done, 400);

        let done = VolumeBackupCompleted {
            backup: rec.backup.clone(),
            volume: vol("web-0"),
            snapshot_id: "0123456789abcdef".into(),
            parent_snapshot: None,
            stats: BackupStats { total_bytes: 1000, ..Default::default() },
            warnings: vec![],
            attempt: 0,
        };
        rec.apply_completed(&done, Utc::now());
        assert_eq!(follow.on_record(&rec), vec![Change::Finished(key.clone())]);
        let view = &follow.volumes()[&key];
        assert_eq!(
            (view.status, view.bytes_done, view.note.as_str()),
            (VolumeStatus::Completed, 1000, "snapshot 01234567")
        );
        assert_eq!(follow.on_progress(&progress("web-0", 999, "u1")), None, "no progress after the end");
        assert!(follow.on_record(&rec).is_empty());
    }
}
