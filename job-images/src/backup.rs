//! One backup Job index end to end: pick the volume, resolve it on the node, open (or create)
//! the namespace's repository, find the parent by identity, run restic, judge the result,
//! publish events and write the termination message.

use crate::cli::BackupArgs;
use crate::job::{self, Attempt};
use crate::names::{self, NameError, NameKind};
use crate::notify::{self, Notifier};
use crate::paths;
use crate::progress::{self, Throttle, PROGRESS_INTERVAL};
use crate::restic::json::{ItemError, Message};
use crate::restic::{self, BackupOptions, BackupRun, Restic, SnapshotFilter};
use crate::tags;
use coracle_events::{
    job_source, BackupRef, BackupStats, PlannedVolume, VolumeBackupCompleted, VolumeBackupFailed, VolumeOutcome,
    VolumeSource,
};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub use crate::job::{JobError, JobResult};

/// Warnings carried by the completion event; the rest are counted.
pub const MAX_WARNINGS: usize = 100;
/// How long to wait for queued progress events once restic is done.
const PROGRESS_DRAIN: Duration = Duration::from_secs(5);

/// Runs one index. Never fails: every error becomes a `Failed` outcome.
pub async fn run(args: &BackupArgs) -> JobResult {
    let backup = BackupRef {
        name: args.backup_name.clone().unwrap_or_default(),
        uid: args.backup_uid.clone().unwrap_or_default(),
    };
    let attempt = Attempt::from_args(&args.job);
    let is_final = attempt.is_last();
    let attempt = attempt.number;
    let scrubber = job::scrubber(&args.job);

    let (outcome, exit_code) = match select_volume(args) {
        Err(e) => {
            tracing::error!("{e}");
            // Without a volume there is nothing to attribute an event to; the sweep reads this
            // message by Job and index.
            let failed = failed(&backup, placeholder_volume(), scrubber.scrub(&e.to_string()), attempt, is_final);
            (VolumeOutcome::Failed(failed), e.exit_code())
        }
        Ok(volume) => {
            let notifier =
                Notifier::connect(args.job.nats_url.as_deref(), job_source(args.job.job()), Some(backup.name.clone()))
                    .await;
            let result = tokio::select! {
                result = backup_volume(args, &backup, &volume, attempt, &notifier) => result,
                signal = job::terminated() => Err(JobError::Terminated(signal)),
            };
            match result {
                Ok(done) => {
                    if done.warnings.is_empty() {
                        tracing::info!(snapshot = %done.snapshot_id, "backup of {} completed", volume.key());
                    } else {
                        tracing::warn!(
                            snapshot = %done.snapshot_id,
                            "backup of {} completed with {} warnings", volume.key(), done.warnings.len()
                        );
                    }
                    let completed = VolumeBackupCompleted {
                        backup: backup.clone(),
                        volume: volume.clone(),
                        snapshot_id: done.snapshot_id,
                        parent_snapshot: done.parent,
                        stats: done.stats,
                        warnings: done.warnings.iter().map(|w| scrubber.scrub(w)).collect(),
                        attempt,
                    };
                    notifier.publish(completed.event_id(), completed.clone()).await;
                    (VolumeOutcome::Completed(completed), 0)
                }
                Err(e) => {
                    let reason = scrubber.scrub(&e.to_string());
                    tracing::error!(attempt, is_final, "backup of {} failed: {reason}", volume.key());
                    let failed = failed(&backup, volume.clone(), reason, attempt, is_final);
                    notifier.publish(failed.event_id(), failed.clone()).await;
                    (VolumeOutcome::Failed(failed), e.exit_code())
                }
            }
        }
    };

    let termination_message = job::write_termination(&args.job.termination_log, &outcome);
    JobResult { outcome, exit_code, termination_message }
}

fn failed(
    backup: &BackupRef,
    volume: PlannedVolume,
    reason: String,
    attempt: u32,
    is_final: bool,
) -> VolumeBackupFailed {
    VolumeBackupFailed { backup: backup.clone(), volume, reason, attempt, is_final }
}

fn placeholder_volume() -> PlannedVolume {
    PlannedVolume {
        namespace: String::new(),
        pod: String::new(),
        pod_uid: String::new(),
        volume: String::new(),
        node: String::new(),
        source: VolumeSource::Other,
        pvc: None,
        pvc_uid: None,
        pv: None,
        dir: String::new(),
        identity: String::new(),
    }
}

/// This index's entry of `CORACLE_VOLUMES`.
pub fn select_volume(args: &BackupArgs) -> Result<PlannedVolume, JobError> {
    job::select_entry(args.job.index.as_deref(), args.volumes.as_deref(), "CORACLE_VOLUMES", "planned volumes")
}

/// Checks the names that reach paths, tags and event ids (pod uid and directory are checked
/// by [`paths::resolve_planned`]).
pub fn validate_volume(volume: &PlannedVolume) -> Result<(), NameError> {
    names::validate_name("namespace", &volume.namespace, NameKind::Label)?;
    names::validate_name("pod name", &volume.pod, NameKind::Subdomain)?;
    names::validate_name("volume name", &volume.volume, NameKind::Label)?;
    if let Some(pvc) = &volume.pvc {
        names::validate_name("PVC name", pvc, NameKind::Subdomain)?;
    }
    if let Some(pv) = &volume.pv {
        names::validate_name("PV name", pv, NameKind::Subdomain)?;
    }
    Ok(())
}

/// A successful backup, before it becomes an event.
#[derive(Debug, Clone, PartialEq)]
struct Done {
    snapshot_id: String,
    parent: Option<String>,
    stats: BackupStats,
    warnings: Vec<String>,
}

async fn backup_volume(
    args: &BackupArgs,
    backup: &BackupRef,
    volume: &PlannedVolume,
    attempt: u32,
    notifier: &Notifier,
) -> Result<Done, JobError> {
    let started = Instant::now();
    validate_volume(volume)?;
    let tags = tags::snapshot_tags(backup, volume, expires(args)?)?;
    let resolved = paths::resolve_planned(&args.pods_root, volume)?;
    tracing::info!(attempt, "backing up {} from {}", volume.key(), resolved.path.display());
    if is_empty_dir(&resolved.path) {
        // restic (0.17+) refuses to store an empty snapshot; an empty volume is still a
        // successful backup, and restoring it means leaving it empty.
        tracing::info!("{} is empty: nothing to store, no snapshot", volume.key());
        return Ok(Done {
            snapshot_id: String::new(),
            parent: None,
            stats: BackupStats::default(),
            warnings: Vec::new(),
        });
    }

    let restic = job::open_repository(&args.job, &volume.namespace).await?;
    let reporting = Run { backup, volume, attempt, notifier, started };
    let options = BackupOptions { workdir: resolved.path.clone(), host: volume.namespace.clone(), tags, parent: None };
    // Usually one restic run: the planner's hint names the parent. Without a usable hint, a
    // `snapshots` run finds the parent (and whether the repository exists) first.
    let hinted = parent_hint(args.parents.as_deref(), &volume.identity);
    let hinted_run = match &hinted {
        Some(parent) => {
            tracing::info!("parent snapshot {parent} (the planner's hint for identity {})", volume.identity);
            let options = BackupOptions { parent: Some(parent.clone()), ..options.clone() };
            Some(run_restic(&restic, &options, &reporting).await?)
        }
        None => None,
    };
    let (parent, run) = match hinted_run {
        Some(run) if run.found_no_repository() => {
            tracing::warn!("the repository does not exist although a parent was hinted; creating it");
            create_repository(&restic).await?;
            (None, run_restic(&restic, &options, &reporting).await?)
        }
        Some(run) if run.parent_unusable() => {
            tracing::warn!("the hinted parent cannot be loaded (forgotten since?); looking the parent up");
            let parent = find_parent(&restic, volume).await?;
            (parent.clone(), run_restic(&restic, &BackupOptions { parent, ..options }, &reporting).await?)
        }
        Some(run) => (hinted, run),
        None => {
            let parent = find_parent(&restic, volume).await?;
            (parent.clone(), run_restic(&restic, &BackupOptions { parent, ..options }, &reporting).await?)
        }
    };

    let (reported_id, warnings) = match judge(&run, &resolved.path) {
        Verdict::Failed(reason) => return Err(JobError::Backup(reason)),
        Verdict::Completed { snapshot_id, warnings } => (snapshot_id, warnings),
    };
    let snapshot_id = full_snapshot_id(&restic, reported_id, backup, volume, run.code).await?;
    Ok(Done { snapshot_id, parent, stats: stats(&run), warnings })
}

/// What one volume's restic runs share for their progress events.
struct Run<'a> {
    backup: &'a BackupRef,
    volume: &'a PlannedVolume,
    attempt: u32,
    notifier: &'a Notifier,
    started: Instant,
}

/// One `restic backup`, publishing its progress (throttled) and, when it ends with a summary,
/// the final figures.
async fn run_restic(restic: &Restic, options: &BackupOptions, run: &Run<'_>) -> Result<BackupRun, JobError> {
    let Run { backup, volume, attempt, notifier, started } = *run;
    let key = volume.key();
    let run_id = unix_millis();
    let (tx, rx) = mpsc::channel(4);
    let publishing = notifier.is_enabled().then(|| {
        tokio::spawn(publish_progress(notifier.clone(), rx, backup.uid.clone(), volume.clone(), attempt, run_id))
    });
    let mut throttle = Throttle::new(PROGRESS_INTERVAL);
    let result = restic
        .backup(options, |message| {
            if let Message::Status(status) = message {
                if throttle.ready(Instant::now()) {
                    tracing::debug!(percent = status.percent_done * 100.0, "progress");
                    // A full queue means NATS is slow: drop this update, the next one follows.
                    let _ = tx.try_send(progress::from_status(backup, &key, status, started.elapsed()));
                }
            }
        })
        .await
        .map_err(JobError::Restic)?;
    drop(tx);
    if let Some(task) = publishing {
        let _ = tokio::time::timeout(PROGRESS_DRAIN, task).await;
    }
    if let Some(summary) = &result.summary {
        let last = progress::finished(backup, &key, summary, started.elapsed());
        notifier.publish(notify::progress_id(&backup.uid, volume, attempt, run_id, u64::MAX), last).await;
    }
    Ok(result)
}

/// The newest snapshot of the volume's identity, creating the repository when there is none.
async fn find_parent(restic: &Restic, volume: &PlannedVolume) -> Result<Option<String>, JobError> {
    let filter = SnapshotFilter::new().host(volume.namespace.clone()).tag(tags::IDENTITY, &volume.identity)?;
    // This is the volume's first look at the repository: a failure here (wrong password,
    // unreachable, damaged) is the repository's, and said so.
    let listed = restic
        .latest_snapshot_if_repository(&filter)
        .await
        .map_err(|source| JobError::Repository { repository: restic.repository().to_string(), source })?;
    let parent = match listed {
        Some(newest) => newest.map(|s| s.id),
        None => {
            create_repository(restic).await?;
            None
        }
    };
    match &parent {
        Some(p) => tracing::info!("parent snapshot {p} (identity {})", volume.identity),
        None => tracing::info!("no earlier snapshot of identity {}: full backup", volume.identity),
    }
    Ok(parent)
}

async fn create_repository(restic: &Restic) -> Result<(), JobError> {
    let state = restic
        .create_repository()
        .await
        .map_err(|source| JobError::Repository { repository: restic.repository().to_string(), source })?;
    tracing::info!("repository {}: {state:?}", restic.repository());
    Ok(())
}

/// The planner's parent for this identity (`CORACLE_PARENTS`: identity → snapshot id). Only a
/// full snapshot id is used: anything else in the hint is ignored, never handed to restic.
pub fn parent_hint(parents: Option<&str>, identity: &str) -> Option<String> {
    let parents = parents.map(str::trim).filter(|p| !p.is_empty())?;
    let map: std::collections::BTreeMap<String, String> = match serde_json::from_str(parents) {
        Ok(map) => map,
        Err(e) => {
            tracing::warn!("CORACLE_PARENTS is not a JSON object of strings ({e}); looking parents up");
            return None;
        }
    };
    map.get(identity).filter(|id| restic::snapshots::is_snapshot_id(id)).cloned()
}

/// `CORACLE_BACKUP_EXPIRES`; absent or empty when the Job was not told (older functions).
fn expires(args: &BackupArgs) -> Result<Option<chrono::DateTime<chrono::Utc>>, JobError> {
    match args.backup_expires.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => tags::parse_expires(v)
            .map(Some)
            .ok_or_else(|| JobError::Settings(format!("CORACLE_BACKUP_EXPIRES must be an RFC 3339 time, not {v:?}"))),
    }
}

/// A directory with no entries at all (an unreadable one is left for restic to report).
fn is_empty_dir(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).map(|mut entries| entries.next().is_none()).unwrap_or(false)
}

async fn publish_progress(
    notifier: Notifier,
    mut rx: mpsc::Receiver<coracle_events::VolumeBackupProgress>,
    backup_uid: String,
    volume: PlannedVolume,
    attempt: u32,
    run_id: u64,
) {
    let mut seq = 0;
    while let Some(progress) = rx.recv().await {
        notifier.publish(notify::progress_id(&backup_uid, &volume, attempt, run_id, seq), progress).await;
        seq += 1;
    }
}

/// restic 0.14 reports a short id, and a summary may be missing altogether: find the full id.
async fn full_snapshot_id(
    restic: &Restic,
    reported: Option<String>,
    backup: &BackupRef,
    volume: &PlannedVolume,
    code: Option<i32>,
) -> Result<String, JobError> {
    match reported {
        Some(id) if id.len() == 64 => Ok(id),
        Some(short) => match restic.find_snapshot(&short).await {
            Ok(Some(snapshot)) => Ok(snapshot.id),
            Ok(None) => {
                tracing::warn!("snapshot {short} not found when listing; reporting the short id");
                Ok(short)
            }
            Err(e) => {
                tracing::warn!("cannot resolve snapshot id {short}: {e}; reporting the short id");
                Ok(short)
            }
        },
        None => {
            let filter = SnapshotFilter::new()
                .host(volume.namespace.clone())
                .tag(tags::BACKUP_UID, &backup.uid)?
                .tag(tags::IDENTITY, &volume.identity)?;
            match restic.latest_snapshot(&filter).await.map_err(JobError::Restic)? {
                Some(snapshot) => Ok(snapshot.id),
                None => Err(JobError::Backup(format!(
                    "restic backup exited with code {} but reported no snapshot and none is tagged backup-uid={}",
                    code.unwrap_or(-1),
                    backup.uid
                ))),
            }
        }
    }
}

fn stats(run: &BackupRun) -> BackupStats {
    run.summary
        .as_ref()
        .map(|s| BackupStats {
            files_new: s.files_new,
            files_changed: s.files_changed,
            files_unmodified: s.files_unmodified,
            total_files: s.total_files_processed,
            bytes_added: s.data_added,
            total_bytes: s.total_bytes_processed,
            duration_seconds: s.total_duration,
        })
        .unwrap_or_default()
}

/// How a finished `restic backup` is judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Exit 0, or 3 (a snapshot exists but some files could not be read: `warnings`).
    Completed {
        snapshot_id: Option<String>,
        warnings: Vec<String>,
    },
    Failed(String),
}

/// Maps restic's exit code and messages to a verdict.
pub fn judge(run: &BackupRun, workdir: &Path) -> Verdict {
    match run.code {
        Some(code @ (0 | 3)) => {
            let mut warnings = warnings(&run.errors, run.errors_dropped, workdir);
            if code == 3 && warnings.is_empty() {
                let why = restic_says(run).unwrap_or_else(|| restic::exit_code_meaning(3).to_string());
                warnings.push(format!("incomplete snapshot: {why}"));
            }
            Verdict::Completed { snapshot_id: run.summary.as_ref().and_then(|s| s.snapshot_id.clone()), warnings }
        }
        code => {
            let status = match code {
                Some(c) => format!("exit code {c}: {}", restic::exit_code_meaning(c)),
                None => "killed by a signal, out of memory?".to_string(),
            };
            let detail = restic_says(run)
                .or_else(|| {
                    (!run.errors.is_empty())
                        .then(|| warnings(&run.errors, 0, workdir)[..run.errors.len().min(3)].join("; "))
                })
                .unwrap_or_else(|| "restic printed no error".to_string());
            Verdict::Failed(format!("restic backup failed ({status}): {detail}"))
        }
    }
}

/// restic's own words: 0.17+'s `exit_error`, else the tail of its plain-text output (0.14).
fn restic_says(run: &BackupRun) -> Option<String> {
    restic::restic_says(run.exit_error.as_ref(), &run.text_tail)
}

/// One `unreadable: <path in the volume>: <why>` per item, first report wins, at most
/// [`MAX_WARNINGS`] plus a count of the rest.
fn warnings(errors: &[ItemError], dropped: usize, workdir: &Path) -> Vec<String> {
    let root = workdir.to_string_lossy();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut more = dropped;
    for err in errors {
        let path = volume_path(&err.item, &root);
        if !seen.insert(path.clone()) {
            continue;
        }
        if out.len() == MAX_WARNINGS {
            more += 1;
            continue;
        }
        let message = err.message.as_deref().map(|m| {
            let m = m.strip_prefix(err.item.as_str()).and_then(|m| m.strip_prefix(": ")).unwrap_or(m);
            // Node paths mean nothing to the user; paths inside the volume do.
            m.replace(&format!("{root}/"), "/")
        });
        out.push(match message {
            Some(m) if !m.is_empty() => format!("unreadable: {path}: {m}"),
            _ if err.during.is_empty() => format!("unreadable: {path}"),
            _ => format!("unreadable: {path} (during {})", err.during),
        });
    }
    if more > 0 {
        out.push(format!("… and {more} more unreadable items"));
    }
    out
}

/// An item as restic reports it (absolute node path or relative to the volume) as a path
/// inside the volume.
fn volume_path(item: &str, root: &str) -> String {
    if let Some(rest) = item.strip_prefix(root) {
        if rest.is_empty() {
            return "/".into();
        }
        if rest.starts_with('/') {
            return rest.into();
        }
    }
    if item.starts_with('/') {
        return item.into();
    }
    format!("/{}", item.trim_start_matches("./"))
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restic::json::{ExitError, Summary};

    const ROOT: &str = "/host/pods/0f2c7f4e-3c1a-4a8e-9b7d-2f0e1d2c3b4a/volumes/kubernetes.io~empty-dir/data";

    fn summary(id: &str) -> Option<Summary> {
        Some(Summary { snapshot_id: Some(id.into()), total_files_processed: 3, ..Summary::default() })
    }

    fn item(message: Option<&str>, during: &str, item: &str) -> ItemError {
        ItemError { message: message.map(Into::into), during: during.into(), item: item.into() }
    }

    #[test]
    fn exit_0_is_completed() {
        let run = BackupRun { code: Some(0), summary: summary("abc"), ..BackupRun::default() };
        assert_eq!(
            judge(&run, Path::new(ROOT)),
            Verdict::Completed { snapshot_id: Some("abc".into()), warnings: vec![] }
        );
    }

    #[test]
    fn exit_3_is_completed_with_warnings_018() {
        let run = BackupRun {
            code: Some(3),
            summary: summary("abc"),
            errors: vec![
                item(
                    Some(&format!("{ROOT}/locked: open locked: permission denied")),
                    "archival",
                    &format!("{ROOT}/locked"),
                ),
                item(
                    Some("openfile for readdirnames failed: open lockeddir: permission denied"),
                    "archival",
                    "lockeddir",
                ),
                item(
                    Some(&format!("openfile for readdirnames failed: open {ROOT}/lockeddir: permission denied")),
                    "scan",
                    &format!("{ROOT}/lockeddir"),
                ),
            ],
            exit_error: Some(ExitError {
                code: Some(3),
                message: "Warning: at least one source file could not be read".into(),
            }),
            ..BackupRun::default()
        };
        let Verdict::Completed { warnings, .. } = judge(&run, Path::new(ROOT)) else { panic!() };
        assert_eq!(
            warnings,
            [
                "unreadable: /locked: open locked: permission denied",
                "unreadable: /lockeddir: openfile for readdirnames failed: open lockeddir: permission denied",
            ]
        );
    }

    #[test]
    fn exit_3_is_completed_with_warnings_014() {
        let run = BackupRun {
            code: Some(3),
            summary: summary("05ae74ee"),
            errors: vec![
                item(Some("open locked: permission denied"), "archival", &format!("{ROOT}/locked")),
                item(None, "scan", &format!("{ROOT}/lockeddir")),
            ],
            text_tail: "Warning: at least one source file could not be read".into(),
            ..BackupRun::default()
        };
        let Verdict::Completed { warnings, snapshot_id } = judge(&run, Path::new(ROOT)) else { panic!() };
        assert_eq!(snapshot_id.as_deref(), Some("05ae74ee"));
        assert_eq!(
            warnings,
            ["unreadable: /locked: open locked: permission denied", "unreadable: /lockeddir (during scan)"]
        );
    }

    #[test]
    fn exit_3_without_item_errors_still_warns() {
        let run = BackupRun { code: Some(3), summary: summary("abc"), ..BackupRun::default() };
        let Verdict::Completed { warnings, .. } = judge(&run, Path::new(ROOT)) else { panic!() };
        assert_eq!(warnings, ["incomplete snapshot: some source files could not be read"]);
    }

    #[test]
    fn warnings_are_capped() {
        let errors: Vec<ItemError> =
            (0..150).map(|i| item(Some("permission denied"), "archival", &format!("f{i}"))).collect();
        let run =
            BackupRun { code: Some(3), summary: summary("abc"), errors, errors_dropped: 5, ..BackupRun::default() };
        let Verdict::Completed { warnings, .. } = judge(&run, Path::new(ROOT)) else { panic!() };
        assert_eq!(warnings.len(), MAX_WARNINGS + 1);
        assert_eq!(warnings[0], "unreadable: /f0: permission denied");
        assert_eq!(warnings[MAX_WARNINGS], "… and 55 more unreadable items");
    }

    #[test]
    fn other_codes_fail_with_restics_words() {
        let run = BackupRun {
            code: Some(12),
            exit_error: Some(ExitError { code: Some(12), message: "Fatal: wrong password or no key found".into() }),
            ..BackupRun::default()
        };
        assert_eq!(
            judge(&run, Path::new(ROOT)),
            Verdict::Failed(
                "restic backup failed (exit code 12: wrong password): Fatal: wrong password or no key found".into()
            )
        );
        let run =
            BackupRun { code: Some(1), text_tail: "Fatal: unable to open config file".into(), ..BackupRun::default() };
        let Verdict::Failed(reason) = judge(&run, Path::new(ROOT)) else { panic!() };
        assert!(
            reason.contains("exit code 1: fatal error") && reason.contains("unable to open config file"),
            "{reason}"
        );
        let run = BackupRun { code: None, ..BackupRun::default() };
        let Verdict::Failed(reason) = judge(&run, Path::new(ROOT)) else { panic!() };
        assert!(reason.contains("killed by a signal"), "{reason}");
        let run = BackupRun { code: Some(2), errors: vec![item(None, "scan", "x")], ..BackupRun::default() };
        let Verdict::Failed(reason) = judge(&run, Path::new(ROOT)) else { panic!() };
        assert!(reason.contains("unreadable: /x"), "{reason}");
    }

    #[test]
    fn volume_paths() {
        assert_eq!(volume_path(ROOT, ROOT), "/");
        assert_eq!(volume_path(&format!("{ROOT}/a/b"), ROOT), "/a/b");
        assert_eq!(volume_path(&format!("{ROOT}2/a"), ROOT), format!("{ROOT}2/a"));
        assert_eq!(volume_path("./a", ROOT), "/a");
        assert_eq!(volume_path("a", ROOT), "/a");
    }

    fn args(volumes: &str, index: &str) -> BackupArgs {
        BackupArgs {
            volumes: Some(volumes.into()),
            job: crate::cli::JobArgs { index: Some(index.into()), ..Default::default() },
            ..BackupArgs::default()
        }
    }

    #[test]
    fn volume_selection() {
        let v = r#"[{"namespace":"shop","pod":"db-0","podUid":"0f2c7f4e-3c1a-4a8e-9b7d-2f0e1d2c3b4a","volume":"data","node":"n1","source":"emptyDir","pvc":null,"dir":"data","identity":"StatefulSet/db/data"},
                   {"namespace":"shop","pod":"db-1","podUid":"1f2c7f4e-3c1a-4a8e-9b7d-2f0e1d2c3b4a","volume":"data","node":"n1","source":"pvc","pvc":"data-db-1","pvcUid":"u","pv":"pv-1","dir":"pv-1","identity":"pvc:u","futureField":1}]"#;
        assert_eq!(select_volume(&args(v, "1")).unwrap().pod, "db-1");
        assert_eq!(select_volume(&args(v, "0")).unwrap().identity, "StatefulSet/db/data");
        let e = select_volume(&args(v, "2")).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        assert_eq!(e.exit_code(), 2);
        assert!(select_volume(&args(v, "x")).unwrap_err().to_string().contains("not an index"));
        assert!(select_volume(&args("{}", "0")).unwrap_err().to_string().contains("CORACLE_VOLUMES"));
        assert!(select_volume(&BackupArgs::default()).unwrap_err().to_string().contains("JOB_COMPLETION_INDEX"));
    }

    #[test]
    fn expiry_setting() {
        let with = |v: Option<&str>| BackupArgs { backup_expires: v.map(Into::into), ..BackupArgs::default() };
        assert_eq!(expires(&with(None)).unwrap(), None);
        assert_eq!(expires(&with(Some(" "))).unwrap(), None);
        let t = expires(&with(Some("2026-12-21T00:00:00.5Z"))).unwrap().expect("parsed");
        assert_eq!(tags::expires_value(t), "2026-12-21T00:00:00.500Z");
        let e = expires(&with(Some("720h"))).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
    }

    #[test]
    fn volume_validation() {
        let mut v = select_volume(&args(
            r#"[{"namespace":"shop","pod":"db-0","podUid":"0f2c7f4e-3c1a-4a8e-9b7d-2f0e1d2c3b4a","volume":"data","node":"n1","source":"emptyDir","pvc":null,"dir":"data","identity":"i"}]"#,
            "0",
        ))
        .unwrap();
        assert!(validate_volume(&v).is_ok());
        v.namespace = "../x".into();
        assert!(validate_volume(&v).unwrap_err().to_string().contains("namespace"));
        v.namespace = "shop".into();
        v.pvc = Some("a/b".into());
        assert!(validate_volume(&v).unwrap_err().to_string().contains("PVC"));
    }
}
