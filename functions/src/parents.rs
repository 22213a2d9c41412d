//! Parent hints: the newest snapshot of each volume identity, one KV document per namespace, so
//! that a backup Job can give restic its parent at once instead of first listing the repository's
//! snapshots — a second restic run that derives the repository key again (about half a second
//! per volume, more than an unchanged volume's whole incremental backup).
//!
//! A hint only ever saves time. restic uses a parent to skip re-reading files whose metadata is
//! unchanged; a hint naming a snapshot that was forgotten since makes the Job look the parent up
//! itself, and a missing hint means the same lookup. So hints are written after the fact (when a
//! backup is terminal), best effort, and never decide an outcome.

use crate::kv_json::{Created, JsonKv, StoreError};
use crate::record::{BackupRecord, VolumeStatus};
use chrono::{DateTime, Utc};
use coracle_events::PlannedVolume;
// Only a full id is ever handed to a Job (the Job checks the same).
use coracle_volume_job::restic::snapshots::is_snapshot_id;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Identities kept per namespace; the oldest go first. Keeps a document far below NATS's
/// default 1 MB message limit (about 150 bytes an entry).
pub const MAX_PER_NAMESPACE: usize = 4096;

/// One namespace's hints, keyed by volume identity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceParents {
    #[serde(default)]
    pub parents: BTreeMap<String, Parent>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Parent {
    pub snapshot_id: String,
    /// The backup that made the snapshot, and when it started: a later backup's hint wins,
    /// whatever order results are recorded in.
    pub backup: String,
    pub started: DateTime<Utc>,
}

impl NamespaceParents {
    /// Takes the completed volumes of `record` in `namespace` where they are newer than what is
    /// kept. Returns whether anything changed.
    pub fn merge(&mut self, record: &BackupRecord, namespace: &str) -> bool {
        let mut changed = false;
        for v in record.volumes.values().filter(|v| v.volume.namespace == namespace) {
            let completed = matches!(v.status, VolumeStatus::Completed | VolumeStatus::CompletedWithWarnings);
            let Some(snapshot_id) = v.snapshot_id.as_deref().filter(|id| completed && is_snapshot_id(id)) else {
                continue;
            };
            let newer = self
                .parents
                .get(&v.volume.identity)
                .is_none_or(|p| (record.started, record.backup.name.as_str()) > (p.started, p.backup.as_str()));
            if newer {
                let parent = Parent {
                    snapshot_id: snapshot_id.to_string(),
                    backup: record.backup.name.clone(),
                    started: record.started,
                };
                changed |= self.parents.insert(v.volume.identity.clone(), parent.clone()).as_ref() != Some(&parent);
            }
        }
        changed | self.trim()
    }

    /// Drops the oldest hints beyond [`MAX_PER_NAMESPACE`].
    fn trim(&mut self) -> bool {
        let excess = self.parents.len().saturating_sub(MAX_PER_NAMESPACE);
        if excess == 0 {
            return false;
        }
        let mut by_age: Vec<(DateTime<Utc>, String)> =
            self.parents.iter().map(|(identity, p)| (p.started, identity.clone())).collect();
        by_age.sort();
        for (_, identity) in by_age.into_iter().take(excess) {
            self.parents.remove(&identity);
        }
        true
    }

    /// The hints for these volumes (identity → snapshot id).
    pub fn for_volumes<'a>(&self, volumes: impl IntoIterator<Item = &'a PlannedVolume>) -> BTreeMap<String, String> {
        volumes
            .into_iter()
            .filter_map(|v| self.parents.get(&v.identity).map(|p| (v.identity.clone(), p.snapshot_id.clone())))
            .collect()
    }
}

/// Hints for the planned volumes, read with one KV get per namespace. Best effort: a namespace
/// whose document cannot be read has no hints (its Jobs look their parents up).
pub async fn lookup(kv: &JsonKv<NamespaceParents>, volumes: &[PlannedVolume]) -> BTreeMap<String, String> {
    let namespaces: BTreeSet<&str> = volumes.iter().map(|v| v.namespace.as_str()).collect();
    let reads = namespaces.into_iter().map(|ns| async move { (ns, kv.get(ns).await) });
    let mut hints = BTreeMap::new();
    for (ns, read) in futures::future::join_all(reads).await {
        match read {
            Ok(Some((doc, _))) => hints.extend(doc.for_volumes(volumes.iter().filter(|v| v.namespace == ns))),
            Ok(None) => {}
            Err(e) => tracing::warn!("parent hints of namespace {ns} not read ({e}); its Jobs look them up"),
        }
    }
    hints
}

/// Records the completed volumes of terminal backups as the newest parents of their identities:
/// one compare-and-set per namespace for all of them (record-result hands it a whole fetch's
/// completions), namespaces concurrently; an older backup recorded late changes nothing.
pub async fn remember(kv: &JsonKv<NamespaceParents>, records: &[&BackupRecord]) -> Result<(), StoreError> {
    let namespaces: BTreeSet<&str> =
        records.iter().flat_map(|r| r.volumes.values().map(|v| v.volume.namespace.as_str())).collect();
    let merge_all = |doc: &mut NamespaceParents, ns: &str| records.iter().fold(false, |c, r| doc.merge(r, ns) | c);
    let writes = namespaces.into_iter().map(|ns| async move {
        if kv.modify(ns, |doc| merge_all(doc, ns)).await?.is_some() {
            return Ok(());
        }
        // The namespace's first hints; a concurrent first writer makes it a merge after all.
        let mut fresh = NamespaceParents::default();
        if merge_all(&mut fresh, ns) {
            if let Created::Exists(_) = kv.create(ns, &fresh).await? {
                kv.modify(ns, |doc| merge_all(doc, ns)).await?;
            }
        }
        Ok(())
    });
    futures::future::try_join_all(writes).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{RecordPhase, VolumeRecord};
    use coracle_events::{BackupRef, BackupRequest, VolumeSource};

    fn volume(ns: &str, identity: &str) -> PlannedVolume {
        PlannedVolume {
            namespace: ns.into(),
            pod: "db-0".into(),
            pod_uid: "u".into(),
            volume: identity.into(),
            node: "n".into(),
            source: VolumeSource::Pvc,
            pvc: None,
            pvc_uid: None,
            pv: None,
            dir: "d".into(),
            identity: identity.into(),
        }
    }

    fn id(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    fn record(name: &str, started: &str, volumes: &[(&str, &str, VolumeStatus, Option<String>)]) -> BackupRecord {
        BackupRecord {
            backup: BackupRef { name: name.into(), uid: format!("uid-{name}") },
            request: BackupRequest::default(),
            phase: RecordPhase::Completed,
            started: started.parse().expect("time"),
            finished: None,
            expires: started.parse().expect("time"),
            jobs: Vec::new(),
            volumes: volumes
                .iter()
                .map(|(ns, identity, status, snapshot)| {
                    let volume = volume(ns, identity);
                    let record = VolumeRecord {
                        volume: volume.clone(),
                        status: *status,
                        snapshot_id: snapshot.clone(),
                        parent_snapshot: None,
                        stats: None,
                        warnings: Vec::new(),
                        reason: None,
                        failed_attempts: 0,
                    };
                    (volume.key(), record)
                })
                .collect(),
            skipped: Vec::new(),
            completion_published: false,
            deletion: None,
        }
    }

    #[test]
    fn newer_backups_win_in_any_order_and_only_completed_volumes_count() {
        let older = record(
            "b1",
            "2026-11-21T10:00:00Z",
            &[
                ("shop", "pvc/a", VolumeStatus::Completed, Some(id('a'))),
                ("shop", "pvc/b", VolumeStatus::CompletedWithWarnings, Some(id('b'))),
                ("other", "pvc/c", VolumeStatus::Completed, Some(id('c'))),
            ],
        );
        let newer = record(
            "b2",
            "2026-11-21T11:00:00Z",
            &[
                ("shop", "pvc/a", VolumeStatus::Completed, Some(id('d'))),
                ("shop", "pvc/b", VolumeStatus::Failed, None),
                ("shop", "pvc/e", VolumeStatus::Completed, Some("short".into())),
            ],
        );
        let mut in_order = NamespaceParents::default();
        assert!(in_order.merge(&older, "shop"));
        assert!(in_order.merge(&newer, "shop"));
        let mut reversed = NamespaceParents::default();
        assert!(reversed.merge(&newer, "shop"));
        assert!(reversed.merge(&older, "shop"), "b's only completed snapshot is the older one");
        assert!(!reversed.merge(&older, "shop"), "a duplicate changes nothing");
        assert_eq!(in_order, reversed);
        let hints = in_order.for_volumes(&[volume("shop", "pvc/a"), volume("shop", "pvc/b"), volume("shop", "pvc/e")]);
        assert_eq!(hints, BTreeMap::from([("pvc/a".into(), id('d')), ("pvc/b".into(), id('b'))]));
        assert!(!in_order.parents.contains_key("pvc/c"), "another namespace's volume");
    }

    #[test]
    fn the_oldest_hints_go_beyond_the_cap() {
        let mut doc = NamespaceParents::default();
        let volumes: Vec<(String, String)> =
            (0..MAX_PER_NAMESPACE + 2).map(|i| (format!("pvc/{i}"), format!("{:064x}", i))).collect();
        for (i, (identity, snapshot)) in volumes.iter().enumerate() {
            let base: DateTime<Utc> =
                if i < 2 { "2026-01-01T00:00:00Z" } else { "2026-11-21T10:00:00Z" }.parse().expect("time");
            let started = (base + chrono::Duration::seconds(i as i64)).to_rfc3339();
            doc.merge(
                &record(
                    &format!("b{i}"),
                    &started,
                    &[("shop", identity, VolumeStatus::Completed, Some(snapshot.clone()))],
                ),
                "shop",
            );
        }
        assert_eq!(doc.parents.len(), MAX_PER_NAMESPACE);
        assert!(!doc.parents.contains_key("pvc/0") && !doc.parents.contains_key("pvc/1"));
        assert!(doc.parents.contains_key("pvc/2"));
    }
}
