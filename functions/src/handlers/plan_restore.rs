//! plan-restore: a `coracle.restore.requested` event → pending restore entries in KV (what the
//! admission function matches), the restore record, the namespace label the webhook's
//! namespaceSelector needs, and `coracle.restore.planned`. Idempotent like plan-backup.

use crate::admission::NAMESPACE_LABEL;
use crate::context::Context;
use crate::handlers::event_uid;
use crate::kube_cluster;
use crate::kv_json::Created;
use crate::plan_restore::{pending_key, plan_restore};
use crate::record::RecordPhase;
use crate::restore_state::{PendingEntry, RestoreRecord};
use chrono::Utc;
use coracle_events::consume::HandleError;
use coracle_events::{function_source, CloudEvent, RestorePlanned, RestoreRef, RestoreRequest, SkippedVolume};
use std::collections::BTreeSet;

pub const NAME: &str = "plan-restore";

pub async fn handle(ctx: &Context, payload: &[u8]) -> Result<(), HandleError> {
    let event = coracle_events::envelope::decode::<RestoreRequest>(payload).map_err(HandleError::permanent)?;
    let mut request = event.data;
    if !crate::selector::is_dns1123_subdomain(&request.name) {
        return Err(HandleError::permanent(format!("restore name {:?} is not a valid Kubernetes name", request.name)));
    }
    let uid = request.uid.clone().unwrap_or_else(|| event_uid("restore", &event.id));
    request.uid = Some(uid.clone());
    let restore = RestoreRef { name: request.name.clone(), uid: uid.clone() };
    let nats = ctx.nats.as_ref().ok_or_else(|| HandleError::permanent("plan-restore needs NATS (--nats)"))?;

    if let Some((existing, _)) = nats.restores.get(&restore.name).await? {
        if existing.restore.uid != uid {
            return Err(HandleError::permanent(format!(
                "restore {} already exists with uid {}",
                restore.name, existing.restore.uid
            )));
        }
        return finish(ctx, &existing, &request).await;
    }
    let Some((backup, _)) = nats.records.get(&request.backup).await? else {
        return Err(HandleError::permanent(format!(
            "backup {} not found (rebuild the catalog if NATS state was lost)",
            request.backup
        )));
    };
    let plan = plan_restore(&request, &uid, &backup).map_err(HandleError::permanent)?;
    let mut record = RestoreRecord {
        restore: restore.clone(),
        request: request.clone(),
        backup: backup.backup.clone(),
        phase: RecordPhase::InProgress,
        started: Utc::now(),
        finished: None,
        entries: Default::default(),
        skipped: plan.skipped,
        completion_published: false,
    };
    for entry in plan.entries {
        let key = pending_key(&entry.target_namespace, &entry.target);
        let fresh = PendingEntry::new(entry.clone());
        let taken_by = match nats.pending.create(&key, &fresh).await? {
            Created::Created => None,
            Created::Exists(other) if other.pending.restore.uid == uid => None,
            // A finished restore's entry gives way to the new one.
            Created::Exists(other) if other.state.is_terminal() => {
                nats.pending
                    .modify(&key, |e| {
                        let replace = e.state.is_terminal();
                        if replace {
                            *e = fresh.clone();
                        }
                        replace
                    })
                    .await?;
                None
            }
            Created::Exists(other) => Some(other.pending.restore.name),
        };
        match taken_by {
            None => {
                record.entries.insert(key, fresh);
            }
            Some(other) => record.skipped.push(SkippedVolume {
                namespace: entry.source_namespace,
                pod: entry.source_pod,
                volume: entry.source_volume,
                reason: format!("restore {other} is still pending for the same target in {}", entry.target_namespace),
            }),
        }
    }
    let record = match nats.restores.create(&restore.name, &record).await? {
        Created::Created => record,
        Created::Exists(existing) => *existing,
    };
    finish(ctx, &record, &request).await
}

/// Labels the target namespaces, announces the plan, and completes an empty restore.
async fn finish(ctx: &Context, record: &RestoreRecord, request: &RestoreRequest) -> Result<(), HandleError> {
    let namespaces: BTreeSet<&str> = record.entries.values().map(|e| e.pending.target_namespace.as_str()).collect();
    if !namespaces.is_empty() {
        let kube = ctx.kube()?;
        for ns in namespaces {
            kube_cluster::label_namespace(kube, ns, NAMESPACE_LABEL, "enabled").await?;
        }
    }
    let planned = RestorePlanned {
        restore: record.restore.clone(),
        request: request.clone(),
        backup: record.backup.clone(),
        entries: record.entries.values().map(|e| e.pending.clone()).collect(),
        skipped: record.skipped.clone(),
    };
    let id = format!("{}.planned", record.restore.uid);
    ctx.emit(&CloudEvent::new(id, function_source(NAME), Some(record.restore.name.clone()), planned)).await?;
    crate::handlers::record_result::publish_restore_completion(ctx, record).await
}
