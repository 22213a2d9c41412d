//! maintenance: retention and repository upkeep (see `crate::retention`).
//!
//! On a tick (`coracle.schedule.tick`, read by its own durable consumer next to schedule-tick's)
//! it marks expired backups for deletion and launches, per namespace repository that no running
//! backup or maintenance Job is using, one Job forgetting the pending backups' snapshots and
//! running prune/check when due. On `coracle.maintenance.completed` (the Job's result) it marks
//! each forgotten backup's namespace done, and once all are, the backup deleted, publishing
//! `coracle.backup.deleted` exactly once.

use crate::context::Context;
use crate::jobs::{maintenance_job, maintenance_job_name, MaintenanceTasks, LABEL_MANAGED_BY};
use crate::kube_cluster;
use crate::kv_json::{Created, JsonKv};
use crate::record::BackupRecord;
use crate::retention::{self, Intervals, MaintenanceState, REASON_EXPIRED};
use chrono::{DateTime, Utc};
use coracle_events::consume::HandleError;
use coracle_events::subjects::KV_SCHEDULES;
use coracle_events::{function_source, BackupDeleted, CloudEvent, EventData, MaintenanceCompleted, ScheduleTick};
use std::collections::BTreeSet;

pub const NAME: &str = "maintenance";

pub async fn handle(ctx: &Context, payload: &[u8]) -> Result<(), HandleError> {
    // Ticks come in every form schedule-tick accepts (`{}`, EventBridge, foreign CloudEvents).
    if let Ok(event) = CloudEvent::parse(payload) {
        if event.ty == MaintenanceCompleted::TYPE {
            let done = event.into_typed::<MaintenanceCompleted>().map_err(HandleError::permanent)?.data;
            return record_completion(ctx, &done).await;
        }
        if event.is_coracle() && event.ty != ScheduleTick::TYPE {
            return Err(HandleError::permanent(format!("{NAME} does not handle {}", event.ty)));
        }
    }
    let now = super::schedule_tick::tick_time(payload, Utc::now()).map_err(HandleError::permanent)?;
    run(ctx, now, None).await.map(|_| ())
}

/// What one maintenance run did.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub marked_expired: Vec<String>,
    /// Jobs created (existing ones, from a duplicate run, are not counted).
    pub launched: Vec<String>,
    /// Repositories left alone because a backup or maintenance Job is using them.
    pub busy: Vec<String>,
}

/// A tick's work, or (with `only`) that of `coracle backup delete` / `coracle maintenance run`
/// for some namespaces, which then also skips the interval check when `force` asks for it.
pub async fn run(ctx: &Context, now: DateTime<Utc>, only: Option<&Only>) -> Result<RunSummary, HandleError> {
    let nats = ctx.nats.as_ref().ok_or_else(|| HandleError::permanent(format!("{NAME} needs NATS (--nats)")))?;
    let kube = ctx.kube()?;
    let mut settings = kube_cluster::settings(kube, &ctx.system_namespace).await?;
    settings.system_namespace = ctx.system_namespace.clone();
    let intervals = Intervals::from_settings(&settings).map_err(HandleError::permanent)?;
    let mut summary = RunSummary::default();

    let records = nats.records.list().await?;
    for r in retention::expired(&records, now) {
        let uid = r.backup.uid.clone();
        nats.records
            .modify(&r.backup.name, |doc| {
                doc.backup.uid == uid && retention::mark_for_deletion(doc, REASON_EXPIRED, now)
            })
            .await?;
        tracing::info!(backup = %r.backup.name, expires = %r.expires, "expired: deleting");
        summary.marked_expired.push(r.backup.name.clone());
    }
    let records = nats.records.list().await?;
    for r in &records {
        publish_deleted(ctx, r).await?;
    }
    let pending = retention::pending_forgets(&records);
    let (jobs, pods) =
        kube_cluster::jobs_and_pods(kube, &ctx.system_namespace, &format!("{LABEL_MANAGED_BY}=coracle")).await?;
    let busy = retention::busy_namespaces(&jobs);
    let hosts = retention::live_hosts(&pods);
    let states = JsonKv::<MaintenanceState>::open(&nats.js, KV_SCHEDULES, retention::STATE_PREFIX).await?;

    let mut namespaces = retention::repositories(&records);
    if let Some(only) = only.filter(|o| !o.namespaces.is_empty()) {
        namespaces = only.namespaces.clone();
    }
    for ns in namespaces {
        if busy.contains(&ns) {
            tracing::info!(namespace = %ns, "repository in use by a running Job: maintenance waits for the next run");
            summary.busy.push(ns);
            continue;
        }
        let forgets = pending.get(&ns).cloned().unwrap_or_default();
        let (prune, check) = match only {
            Some(o) if o.prune || o.check => (o.prune, o.check),
            Some(_) => (false, false),
            None => claim(&states, &ns, intervals, now).await?,
        };
        let Some(tasks) = retention::tasks_for(&ns, &forgets, prune, check) else { continue };
        // Periodic work is told apart by its claim time; a forget alone is named by its backups.
        let claim = if prune || check { now.to_rfc3339() } else { String::new() };
        let name = maintenance_job_name(&tasks, &claim);
        let job = maintenance_job(&tasks, &name, &hosts, now, &settings);
        match kube_cluster::create_job(kube, &job).await {
            Ok(true) => {
                tracing::info!(namespace = %ns, job = %name, forget = tasks.forget.len(), prune, check, "maintenance launched");
                summary.launched.push(name);
            }
            Ok(false) => {}
            Err(e) => {
                if prune || check {
                    release(&states, &ns, &tasks, now).await;
                }
                return Err(e.into());
            }
        }
    }
    Ok(summary)
}

/// What an on-demand run is limited to (no namespaces: every repository).
#[derive(Debug, Clone, Default)]
pub struct Only {
    pub namespaces: BTreeSet<String>,
    pub prune: bool,
    pub check: bool,
}

/// Claims due prune/check for a namespace by compare-and-set; only the run whose write won
/// launches them.
async fn claim(
    states: &JsonKv<MaintenanceState>,
    ns: &str,
    intervals: Intervals,
    now: DateTime<Utc>,
) -> Result<(bool, bool), HandleError> {
    for _ in 0..16 {
        match states.get(ns).await? {
            None => {
                let (prune, check) = retention::due(None, intervals, now);
                let mut state = MaintenanceState::default();
                if !retention::claim(&mut state, prune, check, now) {
                    return Ok((false, false));
                }
                match states.create(ns, &state).await? {
                    Created::Created => return Ok((prune, check)),
                    Created::Exists(_) => continue,
                }
            }
            Some(_) => {
                let mut decided = (false, false);
                let stored = states
                    .modify(ns, |state| {
                        let (prune, check) = retention::due(Some(state), intervals, now);
                        decided = (prune, check);
                        retention::claim(state, prune, check, now)
                    })
                    .await?;
                if stored.is_some() {
                    return Ok(decided);
                }
            }
        }
    }
    Err(HandleError::retryable(format!("maintenance state of {ns} kept changing under concurrent runs")))
}

/// Gives a claim back when its Job could not be created, so the next run tries again.
async fn release(states: &JsonKv<MaintenanceState>, ns: &str, tasks: &MaintenanceTasks, now: DateTime<Utc>) {
    let result = states
        .modify(ns, |s| {
            let mut changed = false;
            if tasks.prune && s.last_prune == Some(now) {
                s.last_prune = None;
                changed = true;
            }
            if tasks.check && s.last_check == Some(now) {
                s.last_check = None;
                changed = true;
            }
            changed
        })
        .await;
    if let Err(e) = result {
        tracing::warn!(namespace = ns, "could not release the maintenance claim: {e}");
    }
}

/// A maintenance Job's result: each forgotten backup's namespace is done.
async fn record_completion(ctx: &Context, done: &MaintenanceCompleted) -> Result<(), HandleError> {
    let nats = ctx.nats.as_ref().ok_or_else(|| HandleError::permanent(format!("{NAME} needs NATS (--nats)")))?;
    if let Some(failure) = &done.failure {
        tracing::warn!(namespace = %done.namespace, job = %done.job, "maintenance reported a failure: {failure}");
    }
    let now = Utc::now();
    for backup in &done.forgotten {
        let stored = nats
            .records
            .modify(&backup.name, |r| retention::apply_forgotten(r, &backup.uid, &done.namespace, now))
            .await?;
        if let Some(record) = stored {
            publish_deleted(ctx, &record).await?;
        }
    }
    Ok(())
}

/// Publishes `coracle.backup.deleted` once the record is deleted, exactly once (deterministic id,
/// then a flag in the record).
async fn publish_deleted(ctx: &Context, record: &BackupRecord) -> Result<(), HandleError> {
    let Some(d) = &record.deletion else { return Ok(()) };
    let Some(deleted) = d.deleted else { return Ok(()) };
    if d.event_published {
        return Ok(());
    }
    let uid = record.backup.uid.clone();
    let data = BackupDeleted {
        backup: record.backup.clone(),
        reason: d.reason.clone(),
        namespaces: retention::namespaces_of(record).into_iter().collect(),
        deleted,
    };
    ctx.emit(&CloudEvent::new(format!("{uid}.deleted"), function_source(NAME), Some(record.backup.name.clone()), data))
        .await?;
    if let Some(records) = ctx.records() {
        records
            .modify(&record.backup.name, |r| {
                let mine = r.backup.uid == uid;
                match r.deletion.as_mut() {
                    Some(d) if mine && !d.event_published => {
                        d.event_published = true;
                        true
                    }
                    _ => false,
                }
            })
            .await?;
    }
    Ok(())
}
