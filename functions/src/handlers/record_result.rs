//! record-result: merges per-volume results into the backup record with compare-and-set and
//! publishes `coracle.backup.completed` exactly once, when the last volume is terminal.

use crate::context::Context;
use crate::record::BackupRecord;
use chrono::Utc;
use coracle_events::consume::HandleError;
use coracle_events::{function_source, CloudEvent, EventData, VolumeBackupCompleted, VolumeBackupFailed};

pub const NAME: &str = "record-result";

pub async fn handle(ctx: &Context, payload: &[u8]) -> Result<(), HandleError> {
    let event = CloudEvent::parse(payload).map_err(HandleError::permanent)?;
    let records = ctx.records().ok_or_else(|| HandleError::permanent("record-result needs NATS (--nats)"))?;
    let now = Utc::now();
    let (backup, stored) = if event.ty == VolumeBackupCompleted::TYPE {
        let ev = event.into_typed::<VolumeBackupCompleted>().map_err(HandleError::permanent)?.data;
        (ev.backup.clone(), records.modify(&ev.backup.name, |r| r.apply_completed(&ev, now)).await?)
    } else if event.ty == VolumeBackupFailed::TYPE {
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

/// Publishes the completion of a terminal backup once: the deterministic event id makes a
/// repeat within the duplicate window a no-op, and the record's flag stops any later repeat.
pub async fn publish_completion(ctx: &Context, record: &BackupRecord) -> Result<(), HandleError> {
    let Some(data) = record.completion() else { return Ok(()) };
    if record.completion_published {
        return Ok(());
    }
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
