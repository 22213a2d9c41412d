//! One restore Job index end to end: pick the volume, validate it, resolve the target pod's
//! volume directory, run `restic restore` from the source namespace's repository, judge the
//! result, leave the marker (or, when the failure is final, the failure marker) for the pod's
//! restore-wait helper, publish events and write the termination message.
//!
//! Nothing in the volume is deleted: restic writes the snapshot's files over files of the
//! same name and leaves every other file alone, so a restore into a non-empty volume merges.

use crate::cli::RestoreArgs;
use crate::job::{self, Attempt, JobError, JobResult};
use crate::markers;
use crate::names::{self, NameError, NameKind};
use crate::notify::Notifier;
use crate::paths;
use crate::restic::json::ItemError;
use crate::restic::{self, Restic, RestoreOptions, RestoreRun};
use coracle_events::{
    job_source, RestoreOutcome, RestoreRef, RestoreStats, RestoreVolume, VolumeRestoreCompleted, VolumeRestoreFailed,
    MARKER_DIR,
};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Item errors named in a failure reason; the rest are counted.
const ERRORS_IN_REASON: usize = 3;

/// Runs one index. Never fails: every error becomes a `Failed` outcome.
pub async fn run(args: &RestoreArgs) -> JobResult<RestoreOutcome> {
    let restore = RestoreRef {
        name: args.restore_name.clone().unwrap_or_default(),
        uid: args.restore_uid.clone().unwrap_or_default(),
    };
    let attempt = Attempt::from_args(&args.job);
    let scrubber = job::scrubber(&args.job);

    let (outcome, exit_code) = match select_volume(args) {
        Err(e) => {
            tracing::error!("{e}");
            let reason = scrubber.scrub(&e.to_string());
            let failed = failed(&restore, placeholder_volume(), reason, attempt, is_final(attempt, &e));
            (RestoreOutcome::Failed(failed), e.exit_code())
        }
        Ok(volume) => {
            let notifier =
                Notifier::connect(args.job.nats_url.as_deref(), job_source(args.job.job()), Some(restore.name.clone()))
                    .await;
            // Owned here, not by the restore: a SIGTERM ending the restore still finds it.
            let mut reservation = None;
            let (target, result) = match prepare(args, &restore, &volume) {
                Ok(target) => {
                    let result = tokio::select! {
                        result = restore_into(args, &restore, &volume, &target, attempt, &mut reservation) => result,
                        signal = job::terminated() => Err(JobError::Terminated(signal)),
                    };
                    (Some(target), result)
                }
                Err(e) => (None, Err(e)),
            };
            match result {
                Ok(stats) => {
                    tracing::info!(files = stats.files, bytes = stats.bytes, "restore of {} completed", volume.key());
                    let completed = VolumeRestoreCompleted {
                        restore: restore.clone(),
                        volume: volume.clone(),
                        stats,
                        attempt: attempt.number,
                    };
                    notifier.publish(completed.event_id(), completed.clone()).await;
                    (RestoreOutcome::Completed(completed), 0)
                }
                Err(e) => {
                    let reason = scrubber.scrub(&e.to_string());
                    let is_final = is_final(attempt, &e);
                    tracing::error!(attempt = attempt.number, is_final, "restore of {} failed: {reason}", volume.key());
                    if is_final {
                        leave_failure_marker(target.as_deref(), reservation, &restore.uid, &reason);
                    } else if reservation.is_some_and(markers::Reservation::release) {
                        tracing::info!("the volume is (nearly) full: the marker's reserved room is kept for the retry");
                    }
                    let failed = failed(&restore, volume.clone(), reason, attempt, is_final);
                    notifier.publish(failed.event_id(), failed.clone()).await;
                    (RestoreOutcome::Failed(failed), e.exit_code())
                }
            }
        }
    };

    let termination_message = job::write_termination(&args.job.termination_log, &outcome);
    JobResult { outcome, exit_code, termination_message }
}

/// No retry follows: the last attempt, or an error a retry cannot fix (exit code 2, which a
/// podFailurePolicy FailIndex rule may stop at once). Then the helper must be told.
fn is_final(attempt: Attempt, error: &JobError) -> bool {
    attempt.is_last() || error.exit_code() == 2
}

fn failed(
    restore: &RestoreRef,
    volume: RestoreVolume,
    reason: String,
    attempt: Attempt,
    is_final: bool,
) -> VolumeRestoreFailed {
    VolumeRestoreFailed { restore: restore.clone(), volume, reason, attempt: attempt.number, is_final }
}

fn placeholder_volume() -> RestoreVolume {
    RestoreVolume {
        namespace: String::new(),
        pod: String::new(),
        pod_uid: String::new(),
        volume: String::new(),
        dir: String::new(),
        source_namespace: String::new(),
        snapshot_id: String::new(),
        entry: String::new(),
    }
}

/// The failure marker lets the pod's helper stop waiting and say why. It goes into the room
/// reserved before the restore (which a full volume still has); without a reservation it is
/// written anew. Without a resolved volume (or with an unsafe one) there is nowhere safe to
/// put it: the helper then times out.
fn leave_failure_marker(target: Option<&Path>, reservation: Option<markers::Reservation>, uid: &str, reason: &str) {
    let Some(target) = target else {
        tracing::warn!("no usable volume directory to leave a failure marker in; the pod's helper will time out");
        return;
    };
    let written = match reservation {
        Some(reserved) => reserved.write_failed(reason).or_else(|e| {
            tracing::warn!("{e}; writing the failure marker anew");
            markers::write_failed(target, uid, reason)
        }),
        None => markers::write_failed(target, uid, reason),
    };
    match written {
        Ok(path) => tracing::info!("failure marker written: {}", path.display()),
        Err(e) => tracing::error!("{e}; the pod's helper will time out"),
    }
}

/// This index's entry of `CORACLE_RESTORE_VOLUMES`.
pub fn select_volume(args: &RestoreArgs) -> Result<RestoreVolume, JobError> {
    job::select_entry(args.job.index.as_deref(), args.volumes.as_deref(), "CORACLE_RESTORE_VOLUMES", "restore volumes")
}

/// Checks every value that reaches a path, a restic argument, a marker name or an event id.
pub fn validate_volume(restore: &RestoreRef, volume: &RestoreVolume) -> Result<(), NameError> {
    names::validate_restore_uid(&restore.uid)?;
    names::validate_name("namespace", &volume.namespace, NameKind::Label)?;
    names::validate_name("pod name", &volume.pod, NameKind::Subdomain)?;
    names::validate_uuid("pod uid", &volume.pod_uid)?;
    names::validate_name("volume name", &volume.volume, NameKind::Label)?;
    names::validate_name("source namespace", &volume.source_namespace, NameKind::Label)?;
    if volume.snapshot_id.is_empty() {
        return Ok(());
    }
    names::validate_snapshot_id(&volume.snapshot_id)
}

/// Validates the entry and resolves the volume directory: the restore's target.
fn prepare(args: &RestoreArgs, restore: &RestoreRef, volume: &RestoreVolume) -> Result<PathBuf, JobError> {
    validate_volume(restore, volume)?;
    // A PV name or a pod volume name: the subdomain rule covers both.
    let resolved = paths::resolve_in_pod_dir(&args.pod_dir, &volume.dir, NameKind::Subdomain)?;
    Ok(resolved.path)
}

async fn restore_into(
    args: &RestoreArgs,
    restore: &RestoreRef,
    volume: &RestoreVolume,
    target: &Path,
    attempt: Attempt,
    reservation: &mut Option<markers::Reservation>,
) -> Result<RestoreStats, JobError> {
    let started = Instant::now();
    tracing::info!(
        attempt = attempt.number,
        "restoring snapshot {} of namespace {} into {} at {}",
        volume.snapshot_id,
        volume.source_namespace,
        volume.key(),
        target.display()
    );
    if holds_data(target) {
        tracing::warn!("{} is not empty: files of the same name are overwritten, all others kept", volume.key());
    }
    if volume.snapshot_id.is_empty() {
        markers::prepare(target)?;
        let marker = markers::write_done(target, &restore.uid, "the volume was empty when it was backed up\n")?;
        tracing::info!("empty volume: nothing to restore; marker written: {}", marker.display());
        return Ok(RestoreStats { duration_seconds: started.elapsed().as_secs_f64(), ..RestoreStats::default() });
    }
    let restic = job::open_repository(&args.job, &volume.source_namespace).await?;
    // Before restic can fill the volume: room for whichever marker ends the restore.
    *reservation = Some(markers::reserve(target, &restore.uid)?);
    let options = RestoreOptions { snapshot_id: volume.snapshot_id.clone(), target: target.to_path_buf() };
    let run = restic.restore(&options).await.map_err(JobError::Restic)?;
    judge(&run, target).map_err(JobError::Restore)?;
    let stats = stats(&restic, &run, &volume.snapshot_id, started).await;

    let note = format!("restored snapshot {} ({} files, {} bytes)\n", volume.snapshot_id, stats.files, stats.bytes);
    let marker = match reservation.take() {
        Some(reserved) => reserved.write_done(&note)?,
        None => markers::write_done(target, &restore.uid, &note)?,
    };
    tracing::info!("marker written: {}", marker.display());
    if let Err(e) = markers::remove_failed(target, &restore.uid) {
        tracing::warn!("cannot remove an earlier attempt's failure marker: {e}");
    }
    Ok(stats)
}

/// Whether the volume holds anything besides Coracle's own marker directory.
fn holds_data(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut entries| {
            entries.any(|e| e.is_ok_and(|e| e.file_name() != MARKER_DIR && e.file_name() != "lost+found"))
        })
        .unwrap_or(false)
}

/// Files and bytes from restic's summary (0.16+), else from the snapshot's restore size.
async fn stats(restic: &Restic, run: &RestoreRun, snapshot_id: &str, started: Instant) -> RestoreStats {
    let duration_seconds = started.elapsed().as_secs_f64();
    if let Some(s) = &run.summary {
        return RestoreStats {
            files: s.files_restored + s.files_skipped,
            bytes: s.bytes_restored + s.bytes_skipped,
            duration_seconds,
        };
    }
    match restic.restore_size(snapshot_id).await {
        Ok((files, bytes)) => RestoreStats { files, bytes, duration_seconds },
        Err(e) => {
            tracing::warn!("cannot count the restored files: {e}");
            RestoreStats { files: 0, bytes: 0, duration_seconds }
        }
    }
}

/// Whether a finished `restic restore` put the snapshot in place; the reason when not.
pub fn judge(run: &RestoreRun, target: &Path) -> Result<(), String> {
    if run.code == Some(0) {
        return Ok(());
    }
    // restic 0.14 cannot replace a symlink (a retry after a partial restore meets its own
    // links) and fails; when every error is such a link, already as the snapshot has it, and
    // restic names no other problem, the volume is complete.
    let only_existing_links = run.code == Some(1)
        && !run.errors.is_empty()
        && run.errors_dropped == 0
        && run.errors.iter().all(|e| is_same_symlink(e, target))
        && restic::restic_says(run.exit_error.as_ref(), &run.text_tail)
            .is_none_or(|said| said.trim() == format!("Fatal: There were {} errors", run.errors.len()));
    if only_existing_links {
        tracing::info!("{} symlinks were already in place (restic 0.14 does not replace them)", run.errors.len());
        return Ok(());
    }
    let status = match run.code {
        Some(c) => format!("exit code {c}: {}", restic::exit_code_meaning(c)),
        None => "killed by a signal, out of memory?".to_string(),
    };
    let mut detail: Vec<String> =
        run.errors.iter().take(ERRORS_IN_REASON).map(|e| describe_item_error(e, target)).collect();
    let more = run.errors.len().saturating_sub(ERRORS_IN_REASON) + run.errors_dropped;
    if more > 0 {
        detail.push(format!("… and {more} more"));
    }
    if let Some(said) = restic::restic_says(run.exit_error.as_ref(), &run.text_tail) {
        detail.push(said);
    }
    let detail = if detail.is_empty() { "restic printed no error".to_string() } else { detail.join("; ") };
    Err(format!("restic restore failed ({status}): {detail}"))
}

/// `cannot restore /path: why`, with node paths made volume paths.
fn describe_item_error(err: &ItemError, target: &Path) -> String {
    let root = format!("{}/", target.display());
    match err.message.as_deref().filter(|m| !m.is_empty()) {
        Some(m) => format!("cannot restore {}: {}", err.item, m.replace(&root, "/")),
        None => format!("cannot restore {}", err.item),
    }
}

/// restic 0.14's `Symlink: symlink <link target> <path>: file exists` for a link that exists
/// and already points where the snapshot says.
fn is_same_symlink(err: &ItemError, target: &Path) -> bool {
    let Some(message) = err.message.as_deref() else { return false };
    let relative = err.item.trim_start_matches('/');
    if relative.is_empty() || relative.split('/').any(|part| part == "..") {
        return false;
    }
    let path = target.join(relative);
    let Ok(existing) = std::fs::read_link(&path) else { return false };
    message == format!("Symlink: symlink {} {}: file exists", existing.display(), path.display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restic::json::{ExitError, RestoreSummary};

    const POD_UID: &str = "0f2c7f4e-3c1a-4a8e-9b7d-2f0e1d2c3b4a";

    fn volume() -> RestoreVolume {
        RestoreVolume {
            namespace: "shop".into(),
            pod: "db-0".into(),
            pod_uid: POD_UID.into(),
            volume: "data".into(),
            dir: "pvc-7d9e0c52".into(),
            source_namespace: "shop-old".into(),
            snapshot_id: "38deac329419ed8e794ea924795ea948df667cb05e941a4522ee1e885ff54b95".into(),
            entry: String::new(),
        }
    }

    fn restore() -> RestoreRef {
        RestoreRef { name: "r1".into(), uid: "5b2e7c1a-0000-4000-8000-000000000001".into() }
    }

    #[test]
    fn validation() {
        assert!(validate_volume(&restore(), &volume()).is_ok());
        type Spoil = fn(&mut RestoreVolume, &mut RestoreRef);
        let cases: [(&str, Spoil); 6] = [
            ("restore uid", |_, r| r.uid = "../x".into()),
            ("namespace", |v, _| v.namespace = "a/b".into()),
            ("pod uid", |v, _| v.pod_uid = "../../etc".into()),
            ("volume name", |v, _| v.volume = "a.b".into()),
            ("source namespace", |v, _| v.source_namespace = "".into()),
            ("snapshot id", |v, _| v.snapshot_id = "--delete".into()),
        ];
        for (what, spoil) in cases {
            let (mut v, mut r) = (volume(), restore());
            spoil(&mut v, &mut r);
            let e = validate_volume(&r, &v).unwrap_err();
            assert!(e.to_string().contains(what), "{what}: {e}");
        }
    }

    #[test]
    fn selection() {
        let list = serde_json::to_string(&[volume(), RestoreVolume { volume: "cache".into(), ..volume() }]).unwrap();
        let args = |index: &str| RestoreArgs {
            volumes: Some(list.clone()),
            job: crate::cli::JobArgs { index: Some(index.into()), ..Default::default() },
            ..RestoreArgs::default()
        };
        assert_eq!(select_volume(&args("1")).unwrap().volume, "cache");
        let e = select_volume(&args("2")).unwrap_err();
        assert!(e.to_string().contains("CORACLE_RESTORE_VOLUMES has 2 volumes"), "{e}");
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn finality() {
        let first = Attempt { number: 0, backoff_limit: 1 };
        assert!(!is_final(first, &JobError::Restore("x".into())));
        assert!(is_final(first, &JobError::Settings("x".into())));
        assert!(is_final(Attempt { number: 1, backoff_limit: 1 }, &JobError::Restore("x".into())));
    }

    #[test]
    fn judging() {
        let target = Path::new("/host/pod/volumes/kubernetes.io~csi/pv/mount");
        let ok = RestoreRun { code: Some(0), summary: Some(RestoreSummary::default()), ..RestoreRun::default() };
        assert_eq!(judge(&ok, target), Ok(()));
        let run = RestoreRun {
            code: Some(1),
            exit_error: Some(ExitError {
                code: Some(1),
                message: "Fatal: failed to find snapshot: no matching ID found for prefix \"deadbeef\"".into(),
            }),
            ..RestoreRun::default()
        };
        let reason = judge(&run, target).unwrap_err();
        assert_eq!(
            reason,
            "restic restore failed (exit code 1: fatal error): Fatal: failed to find snapshot: no matching ID found \
             for prefix \"deadbeef\""
        );
        let errors = (0..5)
            .map(|i| ItemError {
                message: Some(format!("open {}/f{i}: permission denied", target.display())),
                during: "restore".into(),
                item: format!("/f{i}"),
            })
            .collect();
        let run = RestoreRun { code: Some(1), errors, text_tail: "Fatal: There were 5 errors".into(), ..run };
        let reason = judge(&RestoreRun { exit_error: None, ..run }, target).unwrap_err();
        assert!(
            reason.starts_with(
                "restic restore failed (exit code 1: fatal error): cannot restore /f0: open /f0: permission denied; "
            ),
            "{reason}"
        );
        assert!(reason.contains("… and 2 more; Fatal: There were 5 errors"), "{reason}");
        assert!(!reason.contains("/host/pod"), "{reason}");
        let killed = judge(&RestoreRun { code: None, ..RestoreRun::default() }, target).unwrap_err();
        assert!(killed.contains("killed by a signal") && killed.contains("restic printed no error"), "{killed}");
    }

    #[test]
    fn existing_identical_symlinks_are_not_a_failure() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path();
        std::os::unix::fs::symlink("a", target.join("link")).unwrap();
        std::os::unix::fs::symlink("elsewhere", target.join("other")).unwrap();
        let link_error = |name: &str, to: &str| ItemError {
            message: Some(format!("Symlink: symlink {to} {}: file exists", target.join(name).display())),
            during: "restore".into(),
            item: format!("/{name}"),
        };
        let run = RestoreRun {
            code: Some(1),
            errors: vec![link_error("link", "a")],
            text_tail: "Fatal: unable to create lock in backend | Fatal: There were 1 errors".into(),
            ..RestoreRun::default()
        };
        assert!(judge(&run, target).is_err(), "restic saying anything but the error count must fail");
        let run = RestoreRun { text_tail: "Fatal: There were 1 errors".into(), ..run };
        assert_eq!(judge(&run, target), Ok(()));
        // A link that points elsewhere than the snapshot says is a real failure.
        let run = RestoreRun { errors: vec![link_error("other", "a")], ..run };
        assert!(judge(&run, target).is_err());
        let run = RestoreRun { errors: vec![link_error("missing", "a")], ..run };
        assert!(judge(&run, target).is_err());
    }
}
