//! `coracle-volume-job maintain`: one namespace's repository maintenance, as one Job.
//!
//! In order: remove locks whose owner pod is gone (see [`crate::restic::locks::stale_locks`]), forget the
//! snapshots of expired or deleted backups by their `backup-uid` tag, `prune`, `check`. Each task
//! holding restic's exclusive lock waits for running backups' locks (`--retry-lock` on restic
//! 0.16+, a retry loop here on 0.14), and a backup arriving meanwhile waits the same way, so
//! neither fails. The result is always written to the termination message and, when NATS is
//! configured, published as `coracle.maintenance.completed`.

use crate::cli::MaintainArgs;
use crate::job::{self, JobError};
use crate::notify::Notifier;
use crate::restic::forget::{is_lock_conflict, CheckResult};
use crate::restic::locks::{self, Liveness};
use crate::restic::{Restic, ResticError, SnapshotFilter};
use crate::tags;
use chrono::Utc;
use coracle_events::{job_source, BackupRef, MaintenanceCompleted};
use std::future::Future;
use std::time::{Duration, Instant};

/// How long an exclusive task waits for other processes' locks (restic 0.14's retry loop).
const LOCK_WAIT: Duration = Duration::from_secs(120);
const LOCK_POLL: Duration = Duration::from_secs(2);

/// What `maintain` was asked to do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tasks {
    pub forget: Vec<BackupRef>,
    pub prune: bool,
    /// `Some(subset)` runs `check`; an empty subset reads no pack data.
    pub check: Option<String>,
}

impl Tasks {
    pub fn from_args(args: &MaintainArgs) -> Result<Self, JobError> {
        let forget = match args.forget.as_deref().map(str::trim).filter(|f| !f.is_empty()) {
            None => Vec::new(),
            Some(raw) => serde_json::from_str(raw)
                .map_err(|e| JobError::Settings(format!("CORACLE_FORGET is not a JSON array of backups: {e}")))?,
        };
        let flag = |name: &str, v: Option<&str>| match v.map(str::trim) {
            None | Some("") | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(JobError::Settings(format!("{name} must be true or false, not {other:?}"))),
        };
        let prune = flag("CORACLE_PRUNE", args.prune.as_deref())?;
        let check = flag("CORACLE_CHECK", args.check.as_deref())?
            .then(|| args.check_read_data_subset.clone().unwrap_or_default());
        Ok(Tasks { forget, prune, check })
    }
}

/// Runs the Job. Never fails: every error ends in the outcome's `failure` and exit code 1 (2 for
/// settings a retry cannot fix).
pub async fn run(args: &MaintainArgs) -> job::JobResult<MaintenanceCompleted> {
    let started = Utc::now();
    let namespace = args.namespace.clone().unwrap_or_default();
    let mut outcome = MaintenanceCompleted {
        namespace: namespace.clone(),
        job: args.job.job().to_string(),
        started,
        finished: started,
        ..Default::default()
    };
    let scrubber = job::scrubber(&args.job);
    let result = tokio::select! {
        r = maintain(args, &namespace, &mut outcome) => r,
        signal = job::terminated() => Err(JobError::Terminated(signal)),
    };
    let exit_code = match &result {
        Ok(()) if outcome.check_passed == Some(false) => 1,
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e}");
            outcome.failure = Some(scrubber.scrub(&e.to_string()));
            e.exit_code()
        }
    };
    outcome.finished = Utc::now();
    let notifier =
        Notifier::connect(args.job.nats_url.as_deref(), job_source(args.job.job()), Some(namespace.clone())).await;
    notifier.publish(format!("{}.maintenance", args.job.job()), outcome.clone()).await;
    let termination_message = job::write_termination(&args.job.termination_log, &outcome);
    job::JobResult { outcome, exit_code, termination_message }
}

async fn maintain(args: &MaintainArgs, namespace: &str, outcome: &mut MaintenanceCompleted) -> Result<(), JobError> {
    crate::names::validate_name("namespace", namespace, crate::names::NameKind::Label)?;
    let tasks = Tasks::from_args(args)?;
    let live_hosts = locks::parse_live_hosts(args.live_hosts.as_deref(), args.live_hosts_at.as_deref())
        .map_err(JobError::Settings)?;
    let restic = job::open_repository(&args.job, namespace).await?;
    // restic before 0.16 has no --retry-lock: this Job waits for a conflicting lock itself.
    let old_restic = !restic.waits_for_locks();
    let repo_err = |source| JobError::Repository { repository: restic.repository().to_string(), source };

    // A namespace that never had a backup has no repository: there is nothing to forget or keep
    // healthy, and the backups asked about are as gone as they can be.
    let probe = restic.snapshots(&SnapshotFilter::new()).await;
    if let Err(e) = &probe {
        if is_missing_repository(e) {
            tracing::info!("no repository for namespace {namespace}: nothing to do");
            outcome.forgotten = tasks.forget;
            return Ok(());
        }
    }
    probe.map_err(repo_err)?;

    outcome.stale_locks_removed = remove_stale_locks(&restic, live_hosts).await.map_err(repo_err)?;

    for backup in &tasks.forget {
        let filter = SnapshotFilter::new().tag(tags::BACKUP_UID, &backup.uid)?;
        let ids: Vec<String> = restic.snapshots(&filter).await.map_err(repo_err)?.into_iter().map(|s| s.id).collect();
        with_lock_retry(old_restic, || restic.forget(&ids)).await.map_err(repo_err)?;
        tracing::info!(backup = %backup.name, uid = %backup.uid, "forgot {} snapshot(s)", ids.len());
        outcome.snapshots_removed += u32::try_from(ids.len()).unwrap_or(u32::MAX);
        outcome.forgotten.push(backup.clone());
    }
    if tasks.prune {
        with_lock_retry(old_restic, || restic.prune()).await.map_err(repo_err)?;
        tracing::info!("pruned");
        outcome.pruned = true;
    }
    if let Some(subset) = &tasks.check {
        let result = with_lock_retry(old_restic, || restic.check(Some(subset))).await.map_err(repo_err)?;
        outcome.check_passed = Some(result == CheckResult::Passed);
        if let CheckResult::Failed(why) = result {
            tracing::error!("restic check found errors: {why}");
            outcome.failure = Some(format!("restic check found errors: {why}"));
        }
    }
    Ok(())
}

/// Lists the locks and removes those whose owner is gone; returns how many it removed.
async fn remove_stale_locks(restic: &Restic, live_hosts: Option<locks::LiveHosts>) -> Result<u32, ResticError> {
    let all = restic.locks().await?;
    if all.is_empty() {
        return Ok(0);
    }
    let hostname = locks::hostname();
    let live_pids = all.iter().filter(|l| l.hostname == hostname && locks::pid_alive(l.pid)).map(|l| l.pid).collect();
    let me = Liveness { hostname, pid: std::process::id(), live_pids, live_hosts };
    let mut removed = 0;
    for lock in locks::stale_locks(&all, &me) {
        if restic.remove_lock(lock).await? {
            tracing::warn!(lock = %lock.id, host = %lock.hostname, pid = lock.pid, "removed a lock whose owner is gone");
            removed += 1;
        }
    }
    Ok(removed)
}

/// Runs `task`, retrying while another process holds a conflicting lock. restic 0.16+ already
/// waits by itself (`--retry-lock`), so only older versions loop here.
async fn with_lock_retry<T, F, Fut>(old_restic: bool, mut task: F) -> Result<T, ResticError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ResticError>>,
{
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match task().await {
            Err(ResticError::Command { detail, .. })
                if old_restic && is_lock_conflict(&detail) && Instant::now() < deadline =>
            {
                tracing::info!("repository locked by another process; waiting");
                tokio::time::sleep(LOCK_POLL).await;
            }
            other => return other,
        }
    }
}

fn is_missing_repository(e: &ResticError) -> bool {
    match e {
        ResticError::Command { code: Some(10), .. } => true,
        ResticError::Command { detail, .. } => {
            detail.contains("Is there a repository at the following location?") || detail.contains("does not exist")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_from_the_environment() {
        let args = MaintainArgs {
            forget: Some(r#"[{"name":"nightly","uid":"u1"}]"#.into()),
            prune: Some("true".into()),
            check: Some("true".into()),
            check_read_data_subset: Some("5%".into()),
            ..Default::default()
        };
        let t = Tasks::from_args(&args).unwrap();
        assert_eq!(t.forget, vec![BackupRef { name: "nightly".into(), uid: "u1".into() }]);
        assert!(t.prune);
        assert_eq!(t.check.as_deref(), Some("5%"));
        assert_eq!(Tasks::from_args(&MaintainArgs::default()).unwrap(), Tasks::default());
        let bad = MaintainArgs { prune: Some("yes".into()), ..Default::default() };
        assert_eq!(Tasks::from_args(&bad).unwrap_err().exit_code(), 2);
    }
}
