//! Retention and repository maintenance, decided purely from records, Jobs and fire state.
//!
//! - A backup whose `expires` has passed (or that `coracle backup delete` named) gets a
//!   [`Deletion`]; its snapshots are then forgotten by `backup-uid` tag in each namespace's
//!   repository, and once every namespace has reported it is deleted.
//! - Each namespace's repository is pruned every `pruneInterval` and checked every
//!   `checkInterval`; the last claim of each is kept per namespace in KV (`coracle-schedules`,
//!   key `maintenance.<namespace>`) and advanced by compare-and-set, so two ticks launch once.
//! - Nothing is launched for a repository while a backup Job writing to it, or another
//!   maintenance Job on it, is still running.
//!
//! All of a namespace's tasks go into one Job ([`crate::jobs::maintenance_job`]).

use crate::jobs::{MaintenanceTasks, LABEL_OPERATION, LABEL_REPOSITORY, OPERATION_MAINTAIN};
use crate::record::{BackupRecord, Deletion, RecordPhase};
use chrono::{DateTime, Duration, Utc};
use coracle_events::{BackupRef, PlannedVolume};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub const REASON_EXPIRED: &str = "expired";
pub const REASON_REQUESTED: &str = "requested";
/// KV key prefix of the per-namespace maintenance fire state in `coracle-schedules`.
pub const STATE_PREFIX: &str = "maintenance.";

/// When a namespace's repository was last claimed for prune and check.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_prune: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<DateTime<Utc>>,
}

/// How often prune and check run; `None` turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intervals {
    pub prune: Option<Duration>,
    pub check: Option<Duration>,
}

impl Intervals {
    pub fn from_settings(s: &crate::settings::Settings) -> Result<Self, String> {
        let parse = |key: &str, v: &str| -> Result<Option<Duration>, String> {
            let d = coracle_events::duration::parse_duration(v).map_err(|e| format!("{key} {v:?}: {e}"))?;
            let d = Duration::from_std(d).map_err(|e| format!("{key} {v:?}: {e}"))?;
            Ok((d > Duration::zero()).then_some(d))
        };
        Ok(Intervals {
            prune: parse("pruneInterval", &s.prune_interval)?,
            check: parse("checkInterval", &s.check_interval)?,
        })
    }
}

/// Which of prune and check are due for a repository with this state.
pub fn due(state: Option<&MaintenanceState>, intervals: Intervals, now: DateTime<Utc>) -> (bool, bool) {
    let is_due = |last: Option<DateTime<Utc>>, every: Option<Duration>| match (every, last) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(every), Some(last)) => now - last >= every,
    };
    let state = state.cloned().unwrap_or_default();
    (is_due(state.last_prune, intervals.prune), is_due(state.last_check, intervals.check))
}

/// Claims the due tasks in `state` (what the compare-and-set writes); false when none is due.
pub fn claim(state: &mut MaintenanceState, prune: bool, check: bool, now: DateTime<Utc>) -> bool {
    if prune {
        state.last_prune = Some(now);
    }
    if check {
        state.last_check = Some(now);
    }
    prune || check
}

/// The namespaces a backup has snapshots in.
pub fn namespaces_of(record: &BackupRecord) -> BTreeSet<String> {
    record.volumes.values().map(|v| v.volume.namespace.clone()).collect()
}

/// Finished backups past their expiry that are not being deleted yet.
pub fn expired(records: &[BackupRecord], now: DateTime<Utc>) -> Vec<&BackupRecord> {
    records.iter().filter(|r| r.phase != RecordPhase::InProgress && r.deletion.is_none() && r.expires <= now).collect()
}

/// Starts a backup's deletion (the record's compare-and-set change); false if it has one
/// already. A backup without volumes has nothing to forget and is deleted at once.
pub fn mark_for_deletion(record: &mut BackupRecord, reason: &str, now: DateTime<Utc>) -> bool {
    if record.deletion.is_some() {
        return false;
    }
    let empty = record.volumes.is_empty();
    record.deletion = Some(Deletion {
        reason: reason.to_string(),
        requested: now,
        forgotten: BTreeSet::new(),
        deleted: empty.then_some(now),
        event_published: false,
    });
    true
}

/// Records that one namespace's repository no longer holds the backup's snapshots; the backup
/// is deleted once all its namespaces have. False when nothing changed (a duplicate).
pub fn apply_forgotten(record: &mut BackupRecord, uid: &str, namespace: &str, now: DateTime<Utc>) -> bool {
    if record.backup.uid != uid {
        return false;
    }
    let namespaces = namespaces_of(record);
    let Some(d) = record.deletion.as_mut() else { return false };
    if d.deleted.is_some() || !d.forgotten.insert(namespace.to_string()) {
        return false;
    }
    if namespaces.iter().all(|n| d.forgotten.contains(n)) {
        d.deleted = Some(now);
    }
    true
}

/// Backups still to be forgotten, by namespace.
pub fn pending_forgets(records: &[BackupRecord]) -> BTreeMap<String, Vec<BackupRef>> {
    let mut out: BTreeMap<String, Vec<BackupRef>> = BTreeMap::new();
    for r in records {
        let Some(d) = &r.deletion else { continue };
        if d.deleted.is_some() {
            continue;
        }
        for ns in namespaces_of(r) {
            if !d.forgotten.contains(&ns) {
                out.entry(ns).or_default().push(r.backup.clone());
            }
        }
    }
    out
}

fn is_finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True"))
}

/// Repositories a running Coracle Job is using: backups by the namespaces of their volumes
/// (from the Job's `CORACLE_VOLUMES`), maintenance Jobs by their repository label.
pub fn busy_namespaces(jobs: &[Job]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for job in jobs.iter().filter(|j| !is_finished(j)) {
        let labels = job.metadata.labels.clone().unwrap_or_default();
        match labels.get(LABEL_OPERATION).map(String::as_str) {
            Some("backup") => {
                let containers = job.spec.as_ref().and_then(|s| s.template.spec.as_ref()).map(|p| &p.containers);
                for c in containers.into_iter().flatten() {
                    for e in c.env.iter().flatten().filter(|e| e.name == "CORACLE_VOLUMES") {
                        let vols: Vec<PlannedVolume> =
                            serde_json::from_str(e.value.as_deref().unwrap_or("[]")).unwrap_or_default();
                        out.extend(vols.into_iter().map(|v| v.namespace));
                    }
                }
            }
            Some(OPERATION_MAINTAIN) => out.extend(labels.get(LABEL_REPOSITORY).cloned()),
            _ => {}
        }
    }
    out
}

/// Hostnames of Coracle's Job pods that have not finished: a pod's hostname is `spec.hostname`
/// (`<job>-<index>` for Indexed Jobs) or else its name.
pub fn live_hosts(pods: &[Pod]) -> Vec<String> {
    let mut out: BTreeSet<String> = BTreeSet::new();
    for p in pods {
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        if phase == "Succeeded" || phase == "Failed" {
            continue;
        }
        out.extend(p.spec.as_ref().and_then(|s| s.hostname.clone()));
        out.extend(p.metadata.name.clone());
    }
    out.into_iter().collect()
}

/// One tick's plan for one repository: its forgets plus, when due, prune and check.
pub fn tasks_for(namespace: &str, forgets: &[BackupRef], prune: bool, check: bool) -> Option<MaintenanceTasks> {
    (!forgets.is_empty() || prune || check).then(|| MaintenanceTasks {
        namespace: namespace.to_string(),
        forget: forgets.to_vec(),
        prune,
        check,
    })
}

/// Every namespace that has (or had) a repository, as far as the records know.
pub fn repositories(records: &[BackupRecord]) -> BTreeSet<String> {
    records.iter().flat_map(namespaces_of).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use coracle_events::{BackupPlanned, BackupRequest};
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};

    fn record(name: &str, namespaces: &[&str], expires_in_hours: i64, now: DateTime<Utc>) -> BackupRecord {
        let plan = BackupPlanned {
            backup: BackupRef { name: name.into(), uid: format!("{name}-uid") },
            request: BackupRequest { name: name.into(), ..Default::default() },
            volumes: namespaces.iter().map(|ns| crate::test_support::empty_dir(ns, name, "n1")).collect(),
            skipped: vec![],
            jobs: vec![],
            expires: now + Duration::hours(expires_in_hours),
        };
        let mut r = BackupRecord::from_plan(&plan, now - Duration::hours(1));
        r.phase = RecordPhase::Completed;
        r
    }

    #[test]
    fn exactly_the_expired_finished_backups_are_selected() {
        let now = Utc::now();
        let mut running = record("running", &["shop"], -1, now);
        running.phase = RecordPhase::InProgress;
        let mut deleting = record("deleting", &["shop"], -5, now);
        assert!(mark_for_deletion(&mut deleting, REASON_EXPIRED, now));
        let records = vec![
            record("old", &["shop"], -1, now),
            record("new", &["shop"], 1, now),
            running,
            deleting,
            record("edge", &["a"], 0, now),
        ];
        let names: Vec<&str> = expired(&records, now).iter().map(|r| r.backup.name.as_str()).collect();
        assert_eq!(names, ["old", "edge"]);
    }

    #[test]
    fn a_backup_is_deleted_once_every_namespace_forgot_it() {
        let now = Utc::now();
        let mut r = record("b", &["shop", "media"], -1, now);
        assert!(!apply_forgotten(&mut r, "b-uid", "shop", now), "no deletion asked for");
        assert!(mark_for_deletion(&mut r, REASON_REQUESTED, now));
        assert!(!mark_for_deletion(&mut r, REASON_EXPIRED, now), "once");
        let pending = pending_forgets(std::slice::from_ref(&r));
        assert_eq!(pending.keys().collect::<Vec<_>>(), ["media", "shop"]);
        assert!(!apply_forgotten(&mut r, "other-uid", "shop", now), "another backup's report");
        assert!(apply_forgotten(&mut r, "b-uid", "shop", now));
        assert!(!apply_forgotten(&mut r, "b-uid", "shop", now), "duplicate");
        assert!(r.deletion.as_ref().is_some_and(|d| d.deleted.is_none()));
        assert_eq!(pending_forgets(std::slice::from_ref(&r)).keys().collect::<Vec<_>>(), ["media"]);
        assert!(apply_forgotten(&mut r, "b-uid", "media", now));
        assert_eq!(r.deletion.as_ref().and_then(|d| d.deleted), Some(now));
        assert!(pending_forgets(&[r]).is_empty());
        let mut empty = record("e", &[], -1, now);
        assert!(mark_for_deletion(&mut empty, REASON_EXPIRED, now));
        assert!(empty.deletion.is_some_and(|d| d.deleted.is_some()), "nothing to forget");
    }

    #[test]
    fn prune_and_check_fall_due_by_interval_and_a_claim_moves_them_on() {
        let now = Utc::now();
        let every = Intervals { prune: Some(Duration::days(7)), check: Some(Duration::days(30)) };
        assert_eq!(due(None, every, now), (true, true), "never done: due");
        let mut state = MaintenanceState::default();
        assert!(claim(&mut state, true, true, now - Duration::days(8)));
        assert_eq!(due(Some(&state), every, now), (true, false));
        assert!(claim(&mut state, true, false, now));
        assert_eq!(due(Some(&state), every, now), (false, false));
        assert!(!claim(&mut state, false, false, now));
        let off = Intervals { prune: None, check: None };
        assert_eq!(due(None, off, now), (false, false));
        let s = crate::settings::Settings { prune_interval: "0s".into(), ..Default::default() };
        let parsed = Intervals::from_settings(&s).expect("valid");
        assert_eq!((parsed.prune, parsed.check), (None, Some(Duration::hours(720))));
        let bad = crate::settings::Settings { check_interval: "monthly".into(), ..Default::default() };
        assert!(Intervals::from_settings(&bad).is_err());
    }

    #[test]
    fn running_backups_and_maintenance_make_their_repositories_busy() {
        let s = crate::settings::Settings::default();
        let b = BackupRef { name: "b".into(), uid: "u".into() };
        let mut jobs = crate::jobs::backup_jobs(
            &b,
            &[crate::test_support::empty_dir("shop", "p", "n1"), crate::test_support::empty_dir("media", "q", "n1")],
            None,
            &Default::default(),
            std::time::Duration::from_secs(60),
            &s,
        );
        let tasks = MaintenanceTasks { namespace: "ops".into(), ..Default::default() };
        jobs.push(crate::jobs::maintenance_job(&tasks, "m", &[], Utc::now(), &s));
        assert_eq!(busy_namespaces(&jobs), ["media", "ops", "shop"].map(String::from).into());
        for j in &mut jobs {
            j.status = Some(JobStatus {
                conditions: Some(vec![JobCondition {
                    type_: "Complete".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            });
        }
        assert!(busy_namespaces(&jobs).is_empty(), "finished Jobs hold no lock");
    }
}
