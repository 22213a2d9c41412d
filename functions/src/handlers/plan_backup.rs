//! plan-backup: a `coracle.backup.requested` event → the plan, the backup record, the
//! `coracle.backup.planned` event and one Indexed Job per node.
//!
//! Idempotent: the backup uid is derived from the event id when the request has none, the
//! record is created with compare-and-set, Job names are deterministic and AlreadyExists is
//! success, and every event id is deterministic — a redelivered request changes nothing.

use crate::context::Context;
use crate::handlers::record_result::publish_completion;
use crate::jobs::backup_jobs;
use crate::kube_cluster;
use crate::kv_json::Created;
use crate::parents;
use crate::plan_backup::plan_backup;
use crate::record::{BackupRecord, RecordPhase};
use crate::request::parse_backup_request;
use crate::settings::Settings;
use crate::snapshot::ClusterSnapshot;
use chrono::{DateTime, Utc};
use coracle_events::consume::HandleError;
use coracle_events::{function_source, BackupPlanned, BackupRef, BackupRequest, CloudEvent, PlannedVolume};
use std::collections::BTreeMap;
use std::time::Duration;

pub const NAME: &str = "plan-backup";

pub async fn handle(ctx: &Context, payload: &[u8]) -> Result<(), HandleError> {
    let event = CloudEvent::parse(payload).map_err(HandleError::permanent)?;
    let mut request = parse_backup_request(payload).map_err(HandleError::permanent)?;
    let uid = request.uid.clone().unwrap_or_else(|| crate::handlers::event_uid("backup", &event.id));
    request.uid = Some(uid.clone());
    let backup = BackupRef { name: request.name.clone(), uid };

    if let Some(records) = ctx.records() {
        if let Some((existing, _)) = records.get(&backup.name).await? {
            return resume(ctx, existing, &backup).await;
        }
    }
    let kube = ctx.kube()?;
    let snapshot = kube_cluster::settings_and_backup_snapshot(
        kube,
        &ctx.system_namespace,
        &request.included_namespaces,
        request.label_selector.as_deref(),
    )
    .await?;
    let now = Utc::now();
    let (planned, volume_timeout) = planned(request, &snapshot, backup.clone(), now)?;
    let record = BackupRecord::from_plan(&planned, now);
    if let Some(records) = ctx.records() {
        if let Created::Exists(existing) = records.create(&record.backup.name, &record).await? {
            // A concurrent delivery of the same request won the race; continue from its record.
            return resume(ctx, *existing, &backup).await;
        }
    }
    launch(ctx, &record, &planned, &snapshot.settings, volume_timeout).await
}

/// The same backup name again: re-drive an unfinished backup of the same uid from its stored
/// plan (the cluster may have changed since), refuse a different uid.
async fn resume(ctx: &Context, existing: BackupRecord, backup: &BackupRef) -> Result<(), HandleError> {
    if existing.backup.uid != backup.uid {
        return Err(HandleError::permanent(format!(
            "backup {} already exists with uid {} (this request has uid {})",
            backup.name, existing.backup.uid, backup.uid
        )));
    }
    if existing.phase != RecordPhase::InProgress {
        return publish_completion(ctx, &existing).await;
    }
    let kube = ctx.kube()?;
    let settings = kube_cluster::settings(kube, &ctx.system_namespace).await?;
    let (volume_timeout, _) = durations(&existing.request, &settings)?;
    let planned = BackupPlanned {
        backup: existing.backup.clone(),
        request: existing.request.clone(),
        volumes: existing.volumes.values().map(|v| v.volume.clone()).collect(),
        skipped: existing.skipped.clone(),
        jobs: existing.jobs.clone(),
        expires: existing.expires,
    };
    launch(ctx, &existing, &planned, &settings, volume_timeout).await
}

async fn launch(
    ctx: &Context,
    record: &BackupRecord,
    planned: &BackupPlanned,
    settings: &Settings,
    volume_timeout: Duration,
) -> Result<(), HandleError> {
    let uid = &planned.backup.uid;
    let event = CloudEvent::new(
        format!("{uid}.planned"),
        function_source(NAME),
        Some(planned.backup.name.clone()),
        planned.clone(),
    );
    ctx.emit(&event).await?;
    if !planned.volumes.is_empty() {
        let kube = ctx.kube()?;
        let parents = parent_hints(ctx, &planned.volumes).await;
        let jobs =
            backup_jobs(&planned.backup, &planned.volumes, Some(planned.expires), &parents, volume_timeout, settings);
        kube_cluster::create_jobs(kube, &jobs).await?;
    }
    publish_completion(ctx, record).await
}

/// Each volume's newest snapshot, when NATS holds hints (see `crate::parents`); none otherwise.
async fn parent_hints(ctx: &Context, volumes: &[PlannedVolume]) -> BTreeMap<String, String> {
    let Some(nats) = &ctx.nats else { return BTreeMap::new() };
    match nats.parents().await {
        Ok(kv) => parents::lookup(kv, volumes).await,
        Err(e) => {
            tracing::warn!("parent hints not read ({e}); the Jobs look their parents up");
            BTreeMap::new()
        }
    }
}

/// The plan as the `coracle.backup.planned` event carries it, and the per-volume time limit.
/// Shared with `coracle backup run`, which plans the same way without NATS.
pub fn planned(
    request: BackupRequest,
    snapshot: &ClusterSnapshot,
    backup: BackupRef,
    now: DateTime<Utc>,
) -> Result<(BackupPlanned, Duration), HandleError> {
    let plan = plan_backup(&request, snapshot).map_err(HandleError::permanent)?;
    let (volume_timeout, ttl) = durations(&request, &snapshot.settings)?;
    let expires = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::days(30));
    // Only the Jobs' names are needed here; hints are looked up when the Jobs are created.
    let jobs = backup_jobs(&backup, &plan.volumes, Some(expires), &BTreeMap::new(), volume_timeout, &snapshot.settings);
    let planned = BackupPlanned {
        backup,
        request,
        volumes: plan.volumes,
        skipped: plan.skipped,
        jobs: jobs.iter().filter_map(|j| j.metadata.name.clone()).collect(),
        expires,
    };
    Ok((planned, volume_timeout))
}

fn durations(request: &BackupRequest, settings: &Settings) -> Result<(Duration, Duration), HandleError> {
    let parse = |value: Option<&String>, default: &str, what: &str| {
        let text = value.map(String::as_str).unwrap_or(default);
        crate::duration::parse_duration(text).map_err(|e| HandleError::permanent(format!("{what} {text:?}: {e}")))
    };
    Ok((
        parse(request.volume_timeout.as_ref(), &settings.default_volume_timeout, "volumeTimeout")?,
        parse(request.ttl.as_ref(), &settings.default_ttl, "ttl")?,
    ))
}
