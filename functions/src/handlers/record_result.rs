//! record-result: merges per-volume results — backups and restores — into their records with
//! compare-and-set, and publishes `coracle.backup.completed` / `coracle.restore.completed`
//! exactly once, when the last volume is terminal.

use crate::context::Context;
use crate::kv_json::JsonKv;
use crate::parents;
use crate::record::BackupRecord;
use crate::restore_state::{apply_to_entry, RestoreRecord, VolumeResult};
use chrono::Utc;
use coracle_events::consume::HandleError;
use coracle_events::subjects::KV_PARENTS;
use coracle_events::{
    function_source, CloudEvent, EventData, VolumeBackupCompleted, VolumeBackupFailed, VolumeRestoreCompleted,
    VolumeRestoreFailed,
};

pub const NAME: &str = "record-result";

pub async fn handle(ctx: &Context, payload: &[u8]) -> Result<(), HandleError> {
    let event = CloudEvent::parse(payload).map_err(HandleError::permanent)?;
    let ty = event.ty.clone();
    if ty == VolumeRestoreCompleted::TYPE {
        let ev = event.into_typed::<VolumeRestoreCompleted>().map_err(HandleError::permanent)?.data;
        return restore_result(ctx, &ev.volume.clone(), VolumeResult::Completed(&ev)).await;
    }
    if ty == VolumeRestoreFailed::TYPE {
        let ev = event.into_typed::<VolumeRestoreFailed>().map_err(HandleError::permanent)?.data;
        return restore_result(ctx, &ev.volume.clone(), VolumeResult::Failed(&ev)).await;
    }
    let nats = ctx.nats.as_ref().ok_or_else(|| HandleError::permanent("record-result needs NATS (--nats)"))?;
    let records = &nats.records;
    let now = Utc::now();
    let (backup, stored) = if ty == VolumeBackupCompleted::TYPE {
        let ev = event.into_typed::<VolumeBackupCompleted>().map_err(HandleError::permanent)?.data;
        (ev.backup.clone(), records.modify(&ev.backup.name, |r| r.apply_completed(&ev, now)).await?)
    } else if ty == VolumeBackupFailed::TYPE {
        let ev = event.into_typed::<VolumeBackupFailed>().map_err(HandleError::permanent)?.data;
        (ev.backup.clone(), records.modify(&ev.backup.name, |r| r.apply_failed(&ev, now)).await?)
    } else {
        // Reports the version mismatch (or wrong type) precisely.
        event.into_typed::<VolumeBackupCompleted>().map_err(HandleError::permanent)?;
        return Ok(());
    };
    match stored {
        // The plan is written before any Job starts, so a missing record is a reordering
        // (or a lost KV): retry, and dead-letter with the reason if it never appears.
        None => Err(HandleError::retryable(format!("no record for backup {} yet", backup.name))),
        Some(record) if record.backup.uid != backup.uid => Err(HandleError::permanent(format!(
            "result for backup {} uid {} but the record has uid {}",
            backup.name, backup.uid, record.backup.uid
        ))),
        Some(record) => publish_completion(ctx, &record).await,
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
    let Some(data) = record.completion() else { return Ok(()) };
    if record.completion_published {
        return Ok(());
    }
    remember_parents(ctx, record).await;
    let uid = record.backup.uid.clone();
    let event =
        CloudEvent::new(format!("{uid}.completed"), function_source(NAME), Some(record.backup.name.clone()), data);
    ctx.emit(&event).await?;
    if let Some(records) = ctx.records() {
        records
            .modify(&record.backup.name, |r| {
                let first = r.backup.uid == uid && !r.completion_published;
                r.completion_published |= first;
                first
            })
            .await?;
    }
    Ok(())
}

/// The terminal backup's snapshots become the next backups' parent hints (`crate::parents`).
/// Best effort: without hints the Jobs look their parents up, so a failure is only logged.
async fn remember_parents(ctx: &Context, record: &BackupRecord) {
    let Some(nats) = &ctx.nats else { return };
    let stored = match JsonKv::open(&nats.js, KV_PARENTS, "").await {
        Ok(kv) => parents::remember(&kv, record).await,
        Err(e) => Err(e),
    };
    if let Err(e) = stored {
        tracing::warn!("parent hints of backup {} not stored: {e}", record.backup.name);
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
