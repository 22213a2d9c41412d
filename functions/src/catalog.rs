//! The durable source of truth: a backup's record rebuilt from the tags restic keeps on its
//! snapshots, for when NATS state is lost. Pure: snapshots in, record out.
//!
//! Rebuilt from the repository: the backup's name and uid; per volume the namespace, pod, pod
//! uid, volume, claim and its uid, identity, node, source kind, PV (and so the on-node
//! directory), snapshot and parent ids; the expiry (`expires` tag); and, from the `summary`
//! restic 0.17+ stores in each snapshot, the volume's files, size, bytes added and duration; the
//! Job names follow from the uid and the nodes.
//!
//! Not in the repository, so not rebuilt:
//! - volumes without a snapshot: empty volumes (restic stores no empty snapshot), failed volumes,
//!   and the plan's skipped volumes; so the phase is always `Completed`;
//! - warnings (a volume that completed with warnings comes back `Completed`);
//! - the request beyond its name and uid (namespaces, selector, ttl, origin);
//! - exact times: `started` is the earliest snapshot's start (the Jobs started a little after
//!   the plan), `finished` the latest snapshot's end (the record noted when it saw the result);
//!   the duration is restic's `backup_end - backup_start`, without opening the repository;
//! - with restic before 0.17: the statistics; from snapshots made before these tags existed:
//!   node, source kind (guessed from the claim), PV, directory of a claim, expiry (none: 100 years).

use crate::jobs::backup_job_name;
use crate::record::{BackupRecord, RecordPhase, VolumeRecord, VolumeStatus};
use chrono::{DateTime, Utc};
use coracle_events::{BackupRef, BackupRequest, BackupStats, PlannedVolume, VolumeSource};
use coracle_volume_job::restic::snapshots::{Snapshot, SnapshotSummary};
use coracle_volume_job::tags;
use std::collections::{BTreeMap, BTreeSet};

/// The record of backup `name` from the snapshots tagged with it, if there are any. Snapshots of
/// an earlier backup of the same name (another uid) are left out: the newest uid wins.
pub fn record_from_snapshots(name: &str, snapshots: &[Snapshot]) -> Option<BackupRecord> {
    let mut ours: Vec<&Snapshot> = snapshots.iter().filter(|s| s.tag(tags::BACKUP) == Some(name)).collect();
    // Oldest first, so that when a retried index left two snapshots of one volume, the newest wins.
    ours.sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.id.cmp(&b.id)));
    let uid = ours.last()?.tag(tags::BACKUP_UID).unwrap_or_default().to_string();
    ours.retain(|s| s.tag(tags::BACKUP_UID).unwrap_or_default() == uid);

    let started = ours.iter().map(|s| s.time.with_timezone(&Utc)).min()?;
    let finished = ours.iter().map(|s| finished_at(s)).max();
    let volumes: BTreeMap<String, VolumeRecord> = ours
        .iter()
        .map(|s| {
            let rec = volume_record(s);
            (rec.volume.key(), rec)
        })
        .collect();
    let nodes: BTreeSet<&str> = volumes.values().map(|v| v.volume.node.as_str()).filter(|n| !n.is_empty()).collect();
    let expires = ours.iter().find_map(|s| s.tag(tags::EXPIRES).and_then(tags::parse_expires));
    Some(BackupRecord {
        backup: BackupRef { name: name.to_string(), uid: uid.clone() },
        request: BackupRequest { name: name.to_string(), uid: Some(uid.clone()), ..Default::default() },
        phase: RecordPhase::Completed,
        started,
        finished,
        // Snapshots from before the `expires` tag: retention cannot know, so it must not delete.
        expires: expires.unwrap_or(started + chrono::Duration::days(36_500)),
        // One Job per node, named from the uid and the node, in node order as the plan had them.
        jobs: nodes.into_iter().map(|node| backup_job_name(&uid, node)).collect(),
        volumes,
        skipped: Vec::new(),
        completion_published: true,
        deletion: None,
    })
}

fn volume_record(s: &Snapshot) -> VolumeRecord {
    let tag = |k: &str| s.tag(k).unwrap_or_default().to_string();
    let pvc = s.tag(tags::PVC).map(String::from);
    let pv = s.tag(tags::PV).map(String::from);
    let volume = tag(tags::VOLUME);
    // Before the `source` tag, a claim meant a PVC volume (a generic ephemeral one looks the same).
    let source = s.tag(tags::SOURCE).and_then(tags::parse_source).unwrap_or(if pvc.is_some() {
        VolumeSource::Pvc
    } else {
        VolumeSource::EmptyDir
    });
    // SPEC §4: a claim's data lives in the directory named after its PV, anything else in one
    // named after the volume; a claim whose PV was not tagged leaves the directory unknown.
    let dir = pv.clone().or_else(|| pvc.is_none().then(|| volume.clone())).unwrap_or_default();
    VolumeRecord {
        status: VolumeStatus::Completed,
        snapshot_id: Some(s.id.clone()),
        parent_snapshot: s.parent.clone(),
        stats: s.summary.as_ref().map(stats),
        warnings: Vec::new(),
        reason: None,
        failed_attempts: 0,
        volume: PlannedVolume {
            namespace: tag(tags::NAMESPACE),
            pod: tag(tags::POD),
            pod_uid: tag(tags::POD_UID),
            node: tag(tags::NODE),
            source,
            pvc,
            pvc_uid: s.tag(tags::PVC_UID).map(String::from),
            pv,
            dir,
            identity: tag(tags::IDENTITY),
            volume,
        },
    }
}

/// The figures the Job reported, as restic stored them with the snapshot.
fn stats(summary: &SnapshotSummary) -> BackupStats {
    BackupStats {
        files_new: summary.files_new,
        files_changed: summary.files_changed,
        files_unmodified: summary.files_unmodified,
        total_files: summary.total_files_processed,
        bytes_added: summary.data_added,
        total_bytes: summary.total_bytes_processed,
        duration_seconds: summary.duration_seconds().unwrap_or_default(),
    }
}

/// When a snapshot's backup ended: its summary's end (0.17+), else when it started.
fn finished_at(s: &Snapshot) -> DateTime<Utc> {
    s.summary.as_ref().and_then(|m| m.backup_end).unwrap_or(s.time).with_timezone(&Utc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use coracle_events::{BackupPlanned, VolumeBackupCompleted};
    use coracle_volume_job::restic::snapshots::parse_snapshots;
    use serde_json::json;

    const UID: &str = "5e1c0a52-8f0e-4d55-9d0c-3b1f4f3c7d10";

    fn backup() -> BackupRef {
        BackupRef { name: "nightly".into(), uid: UID.into() }
    }

    fn time(t: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(t).expect("time").with_timezone(&Utc)
    }

    fn pvc_volume() -> PlannedVolume {
        PlannedVolume {
            namespace: "shop".into(),
            pod: "db-0".into(),
            pod_uid: "0f2c7f4e-3c1a-4a8e-9b7d-2f0e1d2c3b4a".into(),
            volume: "data".into(),
            node: "node-2".into(),
            source: VolumeSource::Pvc,
            pvc: Some("data-db-0".into()),
            pvc_uid: Some("7d9e0c52-1111-2222-3333-444455556666".into()),
            pv: Some("pvc-7d9e0c52".into()),
            dir: "pvc-7d9e0c52".into(),
            identity: "pvc/7d9e0c52-1111-2222-3333-444455556666".into(),
        }
    }

    fn ephemeral_volume() -> PlannedVolume {
        PlannedVolume {
            pod: "web-x".into(),
            volume: "scratch".into(),
            node: "node-1".into(),
            source: VolumeSource::Ephemeral,
            pvc: Some("web-x-scratch".into()),
            pvc_uid: Some("9d9e0c52-1111-2222-3333-444455556666".into()),
            pv: Some("pvc-9d9e0c52".into()),
            dir: "pvc-9d9e0c52".into(),
            identity: "Deployment/web/scratch".into(),
            ..pvc_volume()
        }
    }

    /// A snapshot as `restic snapshots --json` lists it: restic 0.18 with its summary, or 0.14
    /// (no summary, no `program_version`). Shapes as in `restic::snapshots`' real-output fixture.
    fn listed(
        id: &str,
        tags: Vec<String>,
        start: &str,
        end: &str,
        stats: &BackupStats,
        v018: bool,
    ) -> serde_json::Value {
        let mut s = json!({
            "time": start, "tree": "cfaeb70a", "paths": ["/host/pods/x"], "hostname": "shop",
            "username": "root", "tags": tags, "id": id, "short_id": &id[..8],
        });
        if v018 {
            s["program_version"] = json!("restic 0.18.0");
            s["summary"] = json!({
                "backup_start": start, "backup_end": end, "files_new": stats.files_new,
                "files_changed": stats.files_changed, "files_unmodified": stats.files_unmodified,
                "dirs_new": 1, "dirs_changed": 0, "dirs_unmodified": 0, "data_blobs": 4, "tree_blobs": 2,
                "data_added": stats.bytes_added, "data_added_packed": stats.bytes_added / 2,
                "total_files_processed": stats.total_files, "total_bytes_processed": stats.total_bytes,
            });
        }
        s
    }

    /// What the functions recorded for a backup of `volumes`, and the snapshots its Jobs left.
    fn original_and_snapshots(v018: bool) -> (BackupRecord, Vec<Snapshot>) {
        let volumes = vec![pvc_volume(), ephemeral_volume()];
        let plan = BackupPlanned {
            backup: backup(),
            request: BackupRequest { name: "nightly".into(), uid: Some(UID.into()), ..Default::default() },
            volumes: volumes.clone(),
            skipped: vec![],
            jobs: vec![backup_job_name(UID, "node-1"), backup_job_name(UID, "node-2")],
            expires: time("2026-12-21T01:00:00.123456789Z"),
        };
        let mut record = BackupRecord::from_plan(&plan, time("2026-11-21T01:00:00Z"));
        let mut listing = Vec::new();
        for (i, volume) in volumes.iter().enumerate() {
            let id = format!("{i}{}", "a".repeat(63));
            let stats = BackupStats {
                files_new: 3 + i as u64,
                files_changed: 1,
                files_unmodified: 7,
                total_files: 11 + i as u64,
                bytes_added: 4096,
                total_bytes: 1 << 20,
                duration_seconds: 1.25,
            };
            let start = format!("2026-11-21T02:00:0{i}.5+01:00");
            let end = format!("2026-11-21T02:00:0{}.75+01:00", i + 1);
            let tags = tags::snapshot_tags(&backup(), volume, Some(plan.expires)).expect("tags");
            listing.push(listed(&id, tags, &start, &end, &stats, v018));
            let done = VolumeBackupCompleted {
                backup: backup(),
                volume: volume.clone(),
                snapshot_id: id,
                parent_snapshot: None,
                stats,
                warnings: vec![],
                attempt: 0,
            };
            assert!(record.apply_completed(&done, time("2026-11-21T01:00:05Z")));
        }
        // record-result published `coracle.backup.completed` once the last volume was in.
        record.completion_published = true;
        let snapshots = parse_snapshots(&serde_json::to_string(&listing).expect("json")).expect("parsed");
        (record, snapshots)
    }

    #[test]
    fn restic_018_snapshots_rebuild_the_record_as_it_was() {
        let (original, snapshots) = original_and_snapshots(true);
        let rebuilt = record_from_snapshots("nightly", &snapshots).expect("record");
        // Everything but the times the repository cannot know exactly (see the module doc).
        let comparable =
            |r: &BackupRecord| BackupRecord { started: time("2000-01-01T00:00:00Z"), finished: None, ..r.clone() };
        assert_eq!(comparable(&rebuilt), comparable(&original));
        // The earliest snapshot's start, the latest one's end.
        assert_eq!(rebuilt.started, time("2026-11-21T01:00:00.5Z"));
        assert_eq!(rebuilt.finished, Some(time("2026-11-21T01:00:02.75Z")));
        assert_eq!(rebuilt.volumes["shop/web-x/scratch"].volume.source, VolumeSource::Ephemeral);
    }

    #[test]
    fn restic_014_snapshots_rebuild_all_but_the_statistics() {
        let (original, snapshots) = original_and_snapshots(false);
        let rebuilt = record_from_snapshots("nightly", &snapshots).expect("record");
        assert_eq!(rebuilt.expires, original.expires);
        assert_eq!(rebuilt.jobs, original.jobs);
        for (key, v) in &rebuilt.volumes {
            assert_eq!(v.stats, None, "{key}: 0.14 stores no summary");
            assert_eq!(v.volume, original.volumes[key].volume, "{key}");
            assert_eq!(v.snapshot_id, original.volumes[key].snapshot_id, "{key}");
        }
        assert_eq!(rebuilt.finished, Some(time("2026-11-21T01:00:01.5Z")), "the latest snapshot's start");
    }

    /// A snapshot written before the node/source/pv/expires tags existed (restic 0.14 shape).
    fn old_snapshot(id: &str, backup: (&str, &str), at: (&str, &str, &str), pvc: Option<&str>) -> serde_json::Value {
        let mut tags = vec![
            format!("backup={}", backup.0),
            format!("backup-uid={}", backup.1),
            format!("namespace={}", at.0),
            format!("pod={}", at.1),
            "pod-uid=0b9f3b36-1b8e-4f1a-9a43-5a0c0f9a2a11".to_string(),
            format!("volume={}", at.2),
        ];
        if let Some(c) = pvc {
            tags.push(format!("pvc={c}"));
            tags.push("pvc-uid=c1".to_string());
        }
        tags.push(format!("identity=id-{}", at.2));
        json!({"id": id, "time": "2026-11-21T02:00:00.5+01:00", "hostname": at.0, "tags": tags})
    }

    #[test]
    fn old_snapshots_still_rebuild_with_defaults_and_other_backups_are_ignored() {
        let listing = json!([
            old_snapshot("a1", ("nightly", "u1"), ("shop", "db-0", "data"), Some("data-db-0")),
            old_snapshot("a2", ("nightly", "u1"), ("shop", "web-x", "cache"), None),
            old_snapshot("b1", ("weekly", "u2"), ("shop", "db-0", "data"), Some("data-db-0")),
        ]);
        let snaps = parse_snapshots(&listing.to_string()).expect("parsed");
        let r = record_from_snapshots("nightly", &snaps).expect("record");
        assert_eq!(r.backup, backup_ref("nightly", "u1"));
        assert_eq!(r.volumes.len(), 2);
        let db = &r.volumes["shop/db-0/data"];
        assert_eq!(
            (db.volume.source, db.volume.pvc.as_deref(), db.snapshot_id.as_deref(), db.volume.dir.as_str()),
            (VolumeSource::Pvc, Some("data-db-0"), Some("a1"), ""),
            "a claim's directory is its PV's, which old snapshots do not name"
        );
        let cache = &r.volumes["shop/web-x/cache"];
        assert_eq!((cache.volume.source, cache.volume.dir.as_str()), (VolumeSource::EmptyDir, "cache"));
        assert_eq!((cache.volume.node.as_str(), cache.stats.as_ref()), ("", None));
        assert!(r.jobs.is_empty(), "no node, no Job name");
        assert_eq!(r.started.to_rfc3339(), "2026-11-21T01:00:00.500+00:00");
        assert!(r.expires > r.started + chrono::Duration::days(36_000), "no expiry known: retention keeps it");
        assert!(record_from_snapshots("monthly", &snaps).is_none());
    }

    #[test]
    fn the_newest_uid_and_the_newest_snapshot_of_a_volume_win() {
        let mut older = old_snapshot("c1", ("nightly", "old"), ("shop", "db-0", "data"), None);
        older["time"] = json!("2026-11-20T02:00:00Z");
        let mut retried = old_snapshot("a2", ("nightly", "u1"), ("shop", "db-0", "data"), None);
        retried["time"] = json!("2026-11-21T03:00:00+01:00");
        let first = old_snapshot("a1", ("nightly", "u1"), ("shop", "db-0", "data"), None);
        let snaps = parse_snapshots(&json!([retried, older, first]).to_string()).expect("parsed");
        let r = record_from_snapshots("nightly", &snaps).expect("record");
        assert_eq!(r.backup.uid, "u1");
        assert_eq!(r.volumes.len(), 1);
        assert_eq!(r.volumes["shop/db-0/data"].snapshot_id.as_deref(), Some("a2"));
        assert_eq!(r.started, time("2026-11-21T01:00:00.5Z"));
    }

    fn backup_ref(name: &str, uid: &str) -> BackupRef {
        BackupRef { name: name.into(), uid: uid.into() }
    }
}
