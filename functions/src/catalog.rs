//! The durable source of truth: a backup's record rebuilt from the tags restic keeps on its
//! snapshots, for when NATS state is lost. Pure: snapshots in, record out.
//!
//! Tags carry everything restore needs (namespace, pod, volume, claim, identity) but not what
//! only the plan knew: the node and the on-node directory (restore finds those on the new pod),
//! and skipped volumes.

use crate::record::{BackupRecord, RecordPhase, VolumeRecord, VolumeStatus};
use chrono::{DateTime, Utc};
use coracle_events::{BackupRef, BackupRequest, PlannedVolume, VolumeSource};
use coracle_volume_job::restic::snapshots::Snapshot;
use coracle_volume_job::tags;

/// The record of backup `name` from the snapshots tagged with it, if there are any.
pub fn record_from_snapshots(name: &str, snapshots: &[Snapshot]) -> Option<BackupRecord> {
    let ours: Vec<&Snapshot> = snapshots.iter().filter(|s| s.tag(tags::BACKUP) == Some(name)).collect();
    let first = ours.first()?;
    let uid = first.tag(tags::BACKUP_UID).unwrap_or_default().to_string();
    let times: Vec<DateTime<Utc>> = ours.iter().map(|s| s.time.with_timezone(&Utc)).collect();
    let started = times.iter().min().copied().unwrap_or_else(Utc::now);
    let mut volumes = std::collections::BTreeMap::new();
    for s in ours.iter().filter(|s| s.tag(tags::BACKUP_UID) == Some(uid.as_str())) {
        let tag = |k: &str| s.tag(k).unwrap_or_default().to_string();
        let pvc = s.tag(tags::PVC).map(String::from);
        let volume = PlannedVolume {
            namespace: tag(tags::NAMESPACE),
            pod: tag(tags::POD),
            pod_uid: tag(tags::POD_UID),
            volume: tag(tags::VOLUME),
            node: String::new(),
            source: if pvc.is_some() { VolumeSource::Pvc } else { VolumeSource::EmptyDir },
            pvc,
            pvc_uid: s.tag(tags::PVC_UID).map(String::from),
            pv: None,
            dir: String::new(),
            identity: tag(tags::IDENTITY),
        };
        let rec = VolumeRecord {
            status: VolumeStatus::Completed,
            snapshot_id: Some(s.id.clone()),
            parent_snapshot: s.parent.clone(),
            stats: None,
            warnings: Vec::new(),
            reason: None,
            failed_attempts: 0,
            volume,
        };
        volumes.insert(rec.volume.key(), rec);
    }
    Some(BackupRecord {
        backup: BackupRef { name: name.to_string(), uid },
        request: BackupRequest { name: name.to_string(), ..Default::default() },
        phase: RecordPhase::Completed,
        started,
        finished: times.iter().max().copied(),
        // Retention is the maintenance function's business; a rebuilt record claims none.
        expires: started + chrono::Duration::days(36_500),
        jobs: Vec::new(),
        volumes,
        skipped: Vec::new(),
        completion_published: true,
        deletion: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `backup` is (name, uid), `at` is (namespace, pod, volume).
    fn snapshot(id: &str, backup: (&str, &str), at: (&str, &str, &str), pvc: Option<&str>, identity: &str) -> Snapshot {
        let mut tags = vec![
            format!("backup={}", backup.0),
            format!("backup-uid={}", backup.1),
            format!("namespace={}", at.0),
            format!("pod={}", at.1),
            "pod-uid=0b9f3b36-1b8e-4f1a-9a43-5a0c0f9a2a11".to_string(),
            format!("volume={}", at.2),
            format!("identity={identity}"),
        ];
        if let Some(c) = pvc {
            tags.push(format!("pvc={c}"));
            tags.push("pvc-uid=c1".to_string());
        }
        serde_json::from_value(serde_json::json!({"id": id, "time": "2026-11-21T02:00:00.5+01:00", "tags": tags}))
            .expect("snapshot")
    }

    #[test]
    fn rebuilds_volumes_from_tags_and_ignores_other_backups() {
        let snaps = [
            snapshot("a1", ("nightly", "u1"), ("shop", "db-0", "data"), Some("data-db-0"), "pvc/c1"),
            snapshot("a2", ("nightly", "u1"), ("shop", "web-x", "cache"), None, "deployment/web/cache"),
            snapshot("b1", ("weekly", "u2"), ("shop", "db-0", "data"), Some("data-db-0"), "pvc/c1"),
        ];
        let r = record_from_snapshots("nightly", &snaps).expect("record");
        assert_eq!(r.backup, BackupRef { name: "nightly".into(), uid: "u1".into() });
        assert_eq!(r.volumes.len(), 2);
        let db = &r.volumes["shop/db-0/data"];
        assert_eq!(
            (db.volume.source, db.volume.pvc.as_deref(), db.snapshot_id.as_deref()),
            (VolumeSource::Pvc, Some("data-db-0"), Some("a1"))
        );
        assert_eq!(r.volumes["shop/web-x/cache"].volume.identity, "deployment/web/cache");
        assert_eq!(r.started.to_rfc3339(), "2026-11-21T01:00:00.500+00:00");
        assert!(record_from_snapshots("monthly", &snaps).is_none());
    }
}
