//! record-result: merges per-volume results — backups and restores — into their records with
//! compare-and-set, and publishes `coracle.backup.completed` / `coracle.restore.completed`
//! exactly once, when the last volume is terminal.

use crate::context::Context;
use crate::parents;
use crate::record::BackupRecord;
use crate::restore_state::{apply_to_entry, RestoreRecord, VolumeResult};
use chrono::{DateTime, Utc};
use coracle_events::consume::HandleError;
use coracle_events::{
    function_source, BackupRef, CloudEvent, EventData, VolumeBackupCompleted, VolumeBackupFailed,
    VolumeRestoreCompleted, VolumeRestoreFailed,
};
use futures::StreamExt;
use std::collections::BTreeMap;

pub const NAME: &str = "record-result";

/// How many records' read-modify-write cycles a batch runs at once: each is a KV get and an
/// update, so overlapping them hides the round trips to NATS.
const CONCURRENT_RECORDS: usize = 16;

/// A backup volume's result, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum BackupResult {
    Completed(VolumeBackupCompleted),
    Failed(VolumeBackupFailed),
}

impl BackupResult {
    pub fn backup(&self) -> &BackupRef {
        match self {
            BackupResult::Completed(ev) => &ev.backup,
            BackupResult::Failed(ev) => &ev.backup,
        }
    }

    /// Applies it to the record; true when the record changed.
    pub fn apply(&self, record: &mut BackupRecord, now: DateTime<Utc>) -> bool {
        match self {
            BackupResult::Completed(ev) => record.apply_completed(ev, now),
            BackupResult::Failed(ev) => record.apply_failed(ev, now),
        }
    }
}

/// A record-result event, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Backup(BackupResult),
    RestoreCompleted(VolumeRestoreCompleted),
    RestoreFailed(VolumeRestoreFailed),
}

/// Decodes one event; every error is permanent (the bytes will never decode better).
pub fn decode(payload: &[u8]) -> Result<Decoded, HandleError> {
    let event = CloudEvent::parse(payload).map_err(HandleError::permanent)?;
    let ty = event.ty.as_str();
    if ty == VolumeRestoreCompleted::TYPE {
        let ev = event.into_typed::<VolumeRestoreCompleted>().map_err(HandleError::permanent)?.data;
        Ok(Decoded::RestoreCompleted(ev))
    } else if ty == VolumeRestoreFailed::TYPE {
        let ev = event.into_typed::<VolumeRestoreFailed>().map_err(HandleError::permanent)?.data;
        Ok(Decoded::RestoreFailed(ev))
    } else if ty == VolumeBackupFailed::TYPE {
        let ev = event.into_typed::<VolumeBackupFailed>().map_err(HandleError::permanent)?.data;
        Ok(Decoded::Backup(BackupResult::Failed(ev)))
    } else {
        // Also reports a version mismatch (or a wrong type) precisely.
        let ev = event.into_typed::<VolumeBackupCompleted>().map_err(HandleError::permanent)?.data;
        Ok(Decoded::Backup(BackupResult::Completed(ev)))
    }
}

/// Applies every result in order; true when any changed the record. A duplicate, a result
/// for another uid or for a volume already terminal changes nothing, so applying the same
/// results again (after a compare-and-set conflict, or a redelivery) is harmless.
pub fn apply_all<'a>(
    record: &mut BackupRecord,
    results: impl IntoIterator<Item = &'a BackupResult>,
    now: DateTime<Utc>,
) -> bool {
    results.into_iter().fold(false, |changed, r| r.apply(record, now) | changed)
}

/// The batch's backup results grouped by record key (the backup name), each group in batch
/// order, with the index of the message each came from.
pub fn group_by_record(results: Vec<(usize, BackupResult)>) -> BTreeMap<String, Vec<(usize, BackupResult)>> {
    let mut groups: BTreeMap<String, Vec<(usize, BackupResult)>> = BTreeMap::new();
    for (i, r) in results {
        groups.entry(r.backup().name.clone()).or_default().push((i, r));
    }
    groups
}

pub async fn handle(ctx: &Context, payload: &[u8]) -> Result<(), HandleError> {
    handle_decoded(ctx, decode(payload)?).await
}

/// Handles the messages of one fetch: every result for one backup is merged into its record
/// with ONE compare-and-set (instead of a read and a write of the whole record per volume),
/// records are updated concurrently, the parent hints of all backups the fetch completed are
/// written together, restore results go one by one. Returns one outcome per payload, in order;
/// a payload that does not decode fails alone.
pub async fn handle_batch(ctx: &Context, payloads: &[&[u8]]) -> Vec<Result<(), HandleError>> {
    let mut outcomes: Vec<Option<Result<(), HandleError>>> = vec![None; payloads.len()];
    let mut backups = Vec::new();
    for (i, payload) in payloads.iter().enumerate() {
        match decode(payload) {
            Ok(Decoded::Backup(result)) => backups.push((i, result)),
            Ok(restore) => outcomes[i] = Some(handle_decoded(ctx, restore).await),
            Err(e) => outcomes[i] = Some(Err(e)),
        }
    }
    for (i, outcome) in record_groups(ctx, group_by_record(backups)).await {
        outcomes[i] = Some(outcome);
    }
    outcomes.into_iter().map(|o| o.unwrap_or_else(|| Err(HandleError::retryable("result was not handled")))).collect()
}

/// One backup's results merged into its record: the record as stored, with its revision.
struct Merged {
    group: Vec<(usize, BackupResult)>,
    stored: Result<(BackupRecord, u64), HandleError>,
}

impl Merged {
    /// The record and revision, when this merge made the backup terminal and its completion is
    /// still to be announced (only results of the record's own uid may announce it).
    fn due(&self) -> Option<&(BackupRecord, u64)> {
        let stored = self.stored.as_ref().ok()?;
        let record = &stored.0;
        let ours = self.group.iter().any(|(_, r)| r.backup().uid == record.backup.uid);
        (ours && record.completion().is_some() && !record.completion_published).then_some(stored)
    }

    /// Each message's outcome, given how announcing the completion went.
    fn outcomes(self, completion: Result<(), HandleError>) -> Vec<(usize, Result<(), HandleError>)> {
        let Merged { group, stored } = self;
        group
            .into_iter()
            .map(|(i, result)| {
                let outcome = match &stored {
                    Err(e) => Err(e.clone()),
                    Ok((record, _)) if record.backup.uid != result.backup().uid => {
                        Err(HandleError::permanent(format!(
                            "result for backup {} uid {} but the record has uid {}",
                            result.backup().name,
                            result.backup().uid,
                            record.backup.uid
                        )))
                    }
                    Ok(_) => completion.clone(),
                };
                (i, outcome)
            })
            .collect()
    }
}

/// Merges each group into its record (concurrently), stores the parent hints of every backup
/// that became terminal with one write per namespace, then announces those completions.
async fn record_groups(
    ctx: &Context,
    groups: BTreeMap<String, Vec<(usize, BackupResult)>>,
) -> Vec<(usize, Result<(), HandleError>)> {
    let merged: Vec<Merged> = futures::stream::iter(groups)
        .map(|(name, group)| merge_group(ctx, name, group))
        .buffer_unordered(CONCURRENT_RECORDS)
        .collect()
        .await;
    let due: Vec<&BackupRecord> = merged.iter().filter_map(|m| m.due().map(|(record, _)| record)).collect();
    remember_parents(ctx, &due).await;
    futures::stream::iter(merged)
        .map(|m| async move {
            let completion = match m.due() {
                Some((record, revision)) => announce(ctx, record, Some(*revision)).await,
                None => Ok(()),
            };
            m.outcomes(completion)
        })
        .buffer_unordered(CONCURRENT_RECORDS)
        .flat_map(futures::stream::iter)
        .collect()
        .await
}

/// Merges one backup's results into its record by compare-and-set (re-applying them all when
/// a concurrent writer got there first).
async fn merge_group(ctx: &Context, name: String, group: Vec<(usize, BackupResult)>) -> Merged {
    let stored = match ctx.records() {
        None => Err(HandleError::permanent("record-result needs NATS (--nats)")),
        Some(records) => {
            let now = Utc::now();
            match records.modify_from(&name, None, |r| apply_all(r, group.iter().map(|(_, g)| g), now)).await {
                Ok(Some(stored)) => Ok(stored),
                // The plan is written before any Job starts, so a missing record is a reordering
                // (or a lost KV): retry, and dead-letter with the reason if it never appears.
                Ok(None) => Err(HandleError::retryable(format!("no record for backup {name} yet"))),
                Err(e) => Err(e.into()),
            }
        }
    };
    Merged { group, stored }
}

/// One decoded result on its own.
async fn handle_decoded(ctx: &Context, decoded: Decoded) -> Result<(), HandleError> {
    match decoded {
        Decoded::RestoreCompleted(ev) => restore_result(ctx, &ev.volume.clone(), VolumeResult::Completed(&ev)).await,
        Decoded::RestoreFailed(ev) => restore_result(ctx, &ev.volume.clone(), VolumeResult::Failed(&ev)).await,
        Decoded::Backup(result) => {
            let groups = group_by_record(vec![(0, result)]);
            record_groups(ctx, groups).await.pop().map_or(Ok(()), |(_, outcome)| outcome)
        }
    }
}

/// A restore volume's result: the pending entry (so later pods are not injected again) and
/// the restore record, both by compare-and-set.
async fn restore_result(
    ctx: &Context,
    volume: &coracle_events::RestoreVolume,
    result: VolumeResult<'_>,
) -> Result<(), HandleError> {
    let nats = ctx.nats.as_ref().ok_or_else(|| HandleError::permanent("record-result needs NATS (--nats)"))?;
    let restore = result.restore().clone();
    let Some((record, _)) = nats.restores.get(&restore.name).await? else {
        return Err(HandleError::retryable(format!("no record for restore {} yet", restore.name)));
    };
    // The entry this volume restored, as start-restore named it.
    let key = record.entries.contains_key(&volume.entry).then(|| volume.entry.clone());
    let Some(key) = key else {
        return Err(HandleError::permanent(format!("restore {} has no entry for {}", restore.name, volume.key())));
    };
    let now = Utc::now();
    nats.pending.modify(&key, |e| apply_to_entry(e, &restore, &result)).await?;
    let stored = nats.restores.modify(&restore.name, |r| r.apply(&key, &result, now)).await?;
    match stored {
        Some(record) => publish_restore_completion(ctx, &record).await,
        None => Err(HandleError::retryable(format!("restore record {} vanished", restore.name))),
    }
}

/// Publishes the completion of a terminal backup once: the deterministic event id makes a
/// repeat within the duplicate window a no-op, and the record's flag stops any later repeat.
pub async fn publish_completion(ctx: &Context, record: &BackupRecord) -> Result<(), HandleError> {
    if record.completion().is_none() || record.completion_published {
        return Ok(());
    }
    remember_parents(ctx, &[record]).await;
    announce(ctx, record, None).await
}

/// Emits the completion event, then sets the record's flag; `revision` is the record's as just
/// written, when known, to save re-reading it.
async fn announce(ctx: &Context, record: &BackupRecord, revision: Option<u64>) -> Result<(), HandleError> {
    let Some(data) = record.completion() else { return Ok(()) };
    if record.completion_published {
        return Ok(());
    }
    let uid = record.backup.uid.clone();
    let event =
        CloudEvent::new(format!("{uid}.completed"), function_source(NAME), Some(record.backup.name.clone()), data);
    ctx.emit(&event).await?;
    if let Some(records) = ctx.records() {
        let known = revision.map(|rev| (record.clone(), rev));
        records
            .modify_from(&record.backup.name, known, |r| {
                let first = r.backup.uid == uid && !r.completion_published;
                r.completion_published |= first;
                first
            })
            .await?;
    }
    Ok(())
}

/// Terminal backups' snapshots become the next backups' parent hints (`crate::parents`).
/// Best effort: without hints the Jobs look their parents up, so a failure is only logged.
async fn remember_parents(ctx: &Context, records: &[&BackupRecord]) {
    let Some(nats) = &ctx.nats else { return };
    if records.is_empty() {
        return;
    }
    let stored = match nats.parents().await {
        Ok(kv) => parents::remember(kv, records).await,
        Err(e) => Err(e),
    };
    if let Err(e) = stored {
        let names: Vec<&str> = records.iter().map(|r| r.backup.name.as_str()).collect();
        tracing::warn!("parent hints of backups {} not stored: {e}", names.join(", "));
    }
}

/// The same exactly-once publication for restores.
pub async fn publish_restore_completion(ctx: &Context, record: &RestoreRecord) -> Result<(), HandleError> {
    let Some(data) = record.completion() else { return Ok(()) };
    if record.completion_published {
        return Ok(());
    }
    let uid = record.restore.uid.clone();
    let event =
        CloudEvent::new(format!("{uid}.completed"), function_source(NAME), Some(record.restore.name.clone()), data);
    ctx.emit(&event).await?;
    if let Some(nats) = &ctx.nats {
        nats.restores
            .modify(&record.restore.name, |r| {
                let first = r.restore.uid == uid && !r.completion_published;
                r.completion_published |= first;
                first
            })
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{RecordPhase, VolumeStatus};
    use coracle_events::{BackupPlanned, BackupRequest, BackupStats};

    fn backup(name: &str) -> BackupRef {
        BackupRef { name: name.into(), uid: format!("uid-{name}") }
    }

    fn record(name: &str, pods: &[&str]) -> BackupRecord {
        let plan = BackupPlanned {
            backup: backup(name),
            request: BackupRequest { name: name.into(), ..Default::default() },
            volumes: pods.iter().map(|p| crate::test_support::empty_dir("ns", p, "n1")).collect(),
            skipped: vec![],
            jobs: vec![],
            expires: Utc::now(),
        };
        BackupRecord::from_plan(&plan, Utc::now())
    }

    fn done(name: &str, pod: &str, attempt: u32) -> BackupResult {
        BackupResult::Completed(VolumeBackupCompleted {
            backup: backup(name),
            volume: crate::test_support::empty_dir("ns", pod, "n1"),
            snapshot_id: format!("snap-{pod}-{attempt}"),
            parent_snapshot: None,
            stats: BackupStats { bytes_added: 1, ..Default::default() },
            warnings: vec![],
            attempt,
        })
    }

    fn failed(name: &str, pod: &str, attempt: u32, is_final: bool) -> BackupResult {
        BackupResult::Failed(VolumeBackupFailed {
            backup: backup(name),
            volume: crate::test_support::empty_dir("ns", pod, "n1"),
            reason: format!("boom {attempt}"),
            attempt,
            is_final,
        })
    }

    #[test]
    fn grouping_keeps_each_backups_results_in_batch_order_with_their_message_index() {
        let batch = vec![
            (0, done("a", "p1", 0)),
            (1, done("b", "p1", 0)),
            (3, failed("a", "p2", 0, false)),
            (4, done("a", "p2", 1)),
        ];
        let groups = group_by_record(batch);
        let indices = |k: &str| groups[k].iter().map(|(i, _)| *i).collect::<Vec<_>>();
        assert_eq!(groups.len(), 2);
        assert_eq!(indices("a"), vec![0, 3, 4]);
        assert_eq!(indices("b"), vec![1]);
    }

    #[test]
    fn applying_a_group_counts_duplicates_once_and_again_changes_nothing() {
        let group = [done("a", "p1", 0), failed("a", "p2", 0, false), done("a", "p1", 1), done("a", "p2", 1)];
        let mut r = record("a", &["p1", "p2"]);
        assert!(apply_all(&mut r, &group, Utc::now()));
        assert_eq!(r.phase, RecordPhase::Completed);
        assert_eq!(r.volumes["ns/p1/data"].snapshot_id.as_deref(), Some("snap-p1-0"), "the first success wins");
        assert_eq!(r.volumes["ns/p2/data"].failed_attempts, 1);
        assert_eq!(r.completion().map(|c| c.bytes_added), Some(2));
        // A compare-and-set conflict or a redelivery applies the same results again.
        let settled = r.clone();
        assert!(!apply_all(&mut r, &group, Utc::now()));
        assert_eq!(r, settled);
    }

    #[test]
    fn reordered_results_settle_the_same_way() {
        let group =
            [failed("a", "p1", 0, false), done("a", "p1", 1), failed("a", "p1", 0, false), failed("a", "p2", 2, true)];
        let mut forward = record("a", &["p1", "p2"]);
        let mut backward = forward.clone();
        let now = Utc::now();
        apply_all(&mut forward, &group, now);
        apply_all(&mut backward, group.iter().rev(), now);
        for r in [&forward, &backward] {
            assert_eq!(r.phase, RecordPhase::PartiallyFailed);
            assert_eq!(
                r.volumes["ns/p1/data"].status,
                VolumeStatus::Completed,
                "a retried attempt's failure does not undo the success"
            );
            assert_eq!(r.volumes["ns/p2/data"].status, VolumeStatus::Failed);
        }
    }

    #[test]
    fn decoding_names_what_is_wrong() {
        let reason = |b: &[u8]| decode(b).err().map(|e| e.reason().to_string()).unwrap_or_default();
        assert!(reason(b"{\"specversion\":").contains("EOF"));
        let event = CloudEvent::new(
            "x",
            "/t",
            None,
            VolumeBackupCompleted {
                backup: backup("a"),
                volume: crate::test_support::empty_dir("ns", "p", "n1"),
                snapshot_id: "s".into(),
                parent_snapshot: None,
                stats: BackupStats::default(),
                warnings: vec![],
                attempt: 0,
            },
        );
        let mut v = serde_json::to_value(&event).unwrap_or_default();
        assert!(matches!(
            decode(&serde_json::to_vec(&v).unwrap_or_default()),
            Ok(Decoded::Backup(BackupResult::Completed(_)))
        ));
        v["type"] = "dev.coracle.volume.backup.completed.v2".into();
        assert!(reason(&serde_json::to_vec(&v).unwrap_or_default()).contains("v2"));
        v["type"] = "dev.coracle.something.else.v1".into();
        assert!(reason(&serde_json::to_vec(&v).unwrap_or_default()).contains("something.else"));
    }
}
