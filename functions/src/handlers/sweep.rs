//! `coracle sweep` (a CronJob): publishes the results `sweep::backup_sweep` recovers for every
//! backup still in progress. Safe to run any number of times, concurrently with everything.

use crate::context::Context;
use crate::jobs::LABEL_BACKUP_UID;
use crate::kube_cluster;
use crate::record::RecordPhase;
use crate::sweep::backup_sweep;
use coracle_events::consume::HandleError;
use coracle_events::{function_source, CloudEvent, VolumeOutcome};

pub const NAME: &str = "sweep";

/// Returns how many results it published.
pub async fn run(ctx: &Context) -> Result<usize, HandleError> {
    let nats = ctx.nats.as_ref().ok_or_else(|| HandleError::permanent("sweep needs NATS (--nats)"))?;
    let kube = ctx.kube()?;
    let mut published = 0;
    for record in nats.records.list().await? {
        if record.phase != RecordPhase::InProgress {
            continue;
        }
        let selector = format!("{LABEL_BACKUP_UID}={}", record.backup.uid);
        let (jobs, pods) = kube_cluster::jobs_and_pods(kube, &ctx.system_namespace, &selector).await?;
        for outcome in backup_sweep(&record, &jobs, &pods) {
            let subject = Some(record.backup.name.clone());
            match outcome {
                VolumeOutcome::Completed(c) => {
                    ctx.emit(&CloudEvent::new(c.event_id(), function_source(NAME), subject, c)).await?
                }
                VolumeOutcome::Failed(f) => {
                    ctx.emit(&CloudEvent::new(f.event_id(), function_source(NAME), subject, f)).await?
                }
            }
            published += 1;
        }
    }
    Ok(published)
}
