//! plan-restore: a `coracle.restore.requested` event → pending restore entries in KV (what the
//! admission function matches), the restore record, the namespace label the webhook's
//! namespaceSelector needs, and `coracle.restore.planned`. Idempotent like plan-backup.

use crate::admission::NAMESPACE_LABEL;
use crate::catalog::record_from_snapshots;
use crate::context::Context;
use crate::handlers::event_uid;
use crate::kube_cluster;
use crate::kv_json::Created;
use crate::plan_restore::{pending_key, plan_restore};
use crate::record::BackupRecord;
use crate::record::RecordPhase;
use crate::restore_state::{PendingEntry, RestoreRecord};
use chrono::Utc;
use coracle_events::consume::HandleError;
use coracle_events::{function_source, CloudEvent, RestorePlanned, RestoreRef, RestoreRequest, SkippedVolume};
use coracle_volume_job::keys::MasterKey;
use coracle_volume_job::restic::{Repository, Restic, SnapshotFilter};
use coracle_volume_job::tags;
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
    let backup = match nats.records.get(&request.backup).await? {
        Some((record, _)) => record,
        None => record_from_repositories(ctx, &request).await?,
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

/// The backup's record from its snapshots' tags, when NATS lost it: the repositories of the
/// namespaces the request names are searched (there is no record to say which hold the backup).
async fn record_from_repositories(ctx: &Context, request: &RestoreRequest) -> Result<BackupRecord, HandleError> {
    let not_found = |why: &str| HandleError::permanent(format!("backup {} not found: {why}", request.backup));
    let mut namespaces: BTreeSet<&str> =
        request.included_namespaces.iter().map(String::as_str).filter(|n| *n != "*").collect();
    namespaces.extend(request.namespace_mapping.keys().map(String::as_str));
    if namespaces.is_empty() {
        return Err(not_found("no record in NATS; name includedNamespaces so their repositories can be searched"));
    }
    let master =
        master_key().map_err(|e| not_found(&format!("no record in NATS, and the repositories cannot be read: {e}")))?;
    let settings = kube_cluster::settings(ctx.kube()?, &ctx.system_namespace).await?;
    let restic_program = std::env::var("CORACLE_RESTIC").unwrap_or_else(|_| "restic".into());
    let mut snapshots = Vec::new();
    for ns in namespaces {
        let repository = Repository::for_namespace(&settings.repository_prefix, ns).map_err(HandleError::permanent)?;
        let restic = Restic::new(&restic_program, repository, master.namespace_password(ns, 1));
        let filter = SnapshotFilter::new().tag(tags::BACKUP, &request.backup).map_err(HandleError::permanent)?;
        match restic.snapshots(&filter).await {
            Ok(found) => snapshots.extend(found),
            // A namespace without a repository holds nothing of this backup.
            Err(e) => tracing::info!(namespace = ns, error = %e, "no snapshots read"),
        }
    }
    record_from_snapshots(&request.backup, &snapshots)
        .ok_or_else(|| not_found("neither NATS nor the named namespaces' repositories know it"))
}

/// The installation master key, from `CORACLE_MASTER_KEY` or the file `CORACLE_MASTER_KEY_FILE`.
fn master_key() -> Result<MasterKey, String> {
    if let Ok(path) = std::env::var("CORACLE_MASTER_KEY_FILE") {
        return MasterKey::from_file(std::path::Path::new(&path)).map_err(|e| e.to_string());
    }
    let raw = std::env::var("CORACLE_MASTER_KEY").map_err(|_| "CORACLE_MASTER_KEY is not set".to_string())?;
    MasterKey::new(raw.as_bytes()).map_err(|e| e.to_string())
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
