//! End to end: the `coracle-volume-job backup` binary on a fake kubelet pods tree, with real
//! restic (0.18, and 0.14 when installed) and, for events, a real nats-server.

use crate::common;

use common::*;
use coracle_events::{PlannedVolume, VolumeOutcome, VolumeSource};
use coracle_volume_job::namespace_password;
use coracle_volume_job::restic::ResticVersion;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

const MASTER_KEY: &str = "e2e-master-key-never-printed-0123456789";
const POD_UID_1: &str = "0f2c7f4e-3c1a-4a8e-9b7d-2f0e1d2c3b4a";
const POD_UID_2: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
const PVC_UID: &str = "7d9e0c52-1111-2222-3333-444455556666";
const BACKUP_UID: &str = "b0a5e7d2-0000-4111-8222-333344445555";

type Run = common::Run<VolumeOutcome>;

impl Fixture {
    /// `<pods>/<uid>/volumes/kubernetes.io~csi/pv-1/mount` with files.
    fn csi_volume(&self, pod_uid: &str) -> PathBuf {
        let mount = self.pods().join(pod_uid).join("volumes/kubernetes.io~csi/pv-1/mount");
        write_files(&mount);
        std::fs::write(mount.parent().unwrap().join("vol_data.json"), "{}").unwrap();
        mount
    }

    fn volume(&self, pod: &str, pod_uid: &str) -> PlannedVolume {
        PlannedVolume {
            namespace: "shop".into(),
            pod: pod.into(),
            pod_uid: pod_uid.into(),
            volume: "data".into(),
            node: "node-1".into(),
            source: VolumeSource::Pvc,
            pvc: Some("data-db-0".into()),
            pvc_uid: Some(PVC_UID.into()),
            pv: Some("pv-1".into()),
            dir: "pv-1".into(),
            identity: format!("pvc:{PVC_UID}"),
        }
    }

    fn run(&self, volumes: &[PlannedVolume], index: usize, extra: &[(&str, &str)]) -> Run {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let termination = self.root.join(format!("termination-log-{}", RUNS.fetch_add(1, Ordering::Relaxed)));
        let mut cmd = self.job("backup", "coracle-backup-abc-node-1", MASTER_KEY, &termination);
        cmd.env("JOB_COMPLETION_INDEX", index.to_string())
            .env("CORACLE_VOLUMES", serde_json::to_string(volumes).unwrap())
            .env("CORACLE_BACKUP_NAME", "nightly-20250101000000")
            .env("CORACLE_BACKUP_UID", BACKUP_UID)
            .env("CORACLE_PODS_ROOT", self.pods())
            .env("CORACLE_ATTEMPT", "");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        run_job(&mut cmd, &termination, MASTER_KEY)
    }
}

impl Run {
    fn completed(&self) -> &coracle_events::VolumeBackupCompleted {
        match &self.outcome {
            VolumeOutcome::Completed(c) => c,
            other => panic!("expected Completed, got {other:?}\nstderr:\n{}", self.stderr),
        }
    }

    fn failed(&self) -> &coracle_events::VolumeBackupFailed {
        match &self.outcome {
            VolumeOutcome::Failed(f) => f,
            other => panic!("expected Failed, got {other:?}\nstderr:\n{}", self.stderr),
        }
    }
}

fn password() -> String {
    namespace_password(MASTER_KEY.as_bytes(), "shop", 1)
}

/// Backup, snapshot tags and relocatability, then the pod is re-created (new uid, same
/// identity) and the second backup uses the first snapshot as its parent.
fn backup_and_incremental_after_pod_recreation(restic: &Path) {
    let f = Fixture::new(restic);
    let label = version(restic);
    f.csi_volume(POD_UID_1);
    let other = PlannedVolume { pod: "web-0".into(), ..f.volume("web-0", POD_UID_2) };
    let volumes = vec![other, f.volume("db-0", POD_UID_1)];

    let first = f.run(&volumes, 1, &[]);
    assert_eq!(first.code, 0, "{label}: {}", first.stderr);
    let c1 = first.completed();
    assert_eq!(c1.snapshot_id.len(), 64, "{label}: full id even from 0.14");
    assert_eq!(c1.parent_snapshot, None);
    assert!(c1.warnings.is_empty(), "{:?}", c1.warnings);
    assert_eq!((c1.stats.files_new, c1.stats.total_files), (2, 2), "{label}: {:?}", c1.stats);
    assert_eq!(c1.stats.total_bytes, 300_014);
    assert_eq!(c1.volume.pod, "db-0");
    assert_eq!(c1.backup.uid, BACKUP_UID);
    assert_eq!(serde_json::from_str::<VolumeOutcome>(first.stdout.trim()).unwrap(), first.outcome);

    let snaps = snapshots_json(restic, &f.repo("shop"), &password());
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["id"], c1.snapshot_id.as_str());
    assert_eq!(snaps[0]["hostname"], "shop");
    let tags: Vec<&str> = snaps[0]["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    for expected in [
        "backup=nightly-20250101000000".to_string(),
        format!("backup-uid={BACKUP_UID}"),
        "namespace=shop".into(),
        "pod=db-0".into(),
        format!("pod-uid={POD_UID_1}"),
        "volume=data".into(),
        "pvc=data-db-0".into(),
        format!("pvc-uid={PVC_UID}"),
        format!("identity=pvc:{PVC_UID}"),
    ] {
        assert!(tags.contains(&expected.as_str()), "{label}: {expected} not in {tags:?}");
    }
    // Relocatable: the volume's files sit at the snapshot's root.
    let (code, out, err) = raw(restic, &f.repo("shop"), &password(), &["ls", &c1.snapshot_id]);
    assert_eq!(code, 0, "{err}");
    let listed: Vec<&str> = out.lines().filter(|l| l.starts_with('/')).collect();
    assert_eq!(listed, ["/a.txt", "/sub", "/sub/b.bin"], "{label}");

    // The pod is re-created: new uid, same PVC (same filesystem, so same inodes: moved, not
    // copied), one file changed. The old pod's directory is gone.
    let csi2 = f.pods().join(POD_UID_2).join("volumes/kubernetes.io~csi");
    std::fs::create_dir_all(&csi2).unwrap();
    std::fs::rename(f.pods().join(POD_UID_1).join("volumes/kubernetes.io~csi/pv-1"), csi2.join("pv-1")).unwrap();
    std::fs::remove_dir_all(f.pods().join(POD_UID_1)).unwrap();
    std::fs::write(csi2.join("pv-1/mount/a.txt"), "changed\n").unwrap();
    let volumes = vec![f.volume("db-0", POD_UID_2)];
    let second = f.run(&volumes, 0, &[("CORACLE_ATTEMPT", "1"), ("CORACLE_BACKOFF_LIMIT_PER_INDEX", "3")]);
    assert_eq!(second.code, 0, "{label}: {}", second.stderr);
    let c2 = second.completed();
    assert_eq!(c2.parent_snapshot.as_deref(), Some(c1.snapshot_id.as_str()), "{label}");
    assert_eq!(c2.attempt, 1);
    assert_eq!((c2.stats.files_changed, c2.stats.files_unmodified), (1, 1), "{label}: {:?}", c2.stats);
    let snaps = snapshots_json(restic, &f.repo("shop"), &password());
    let new = snaps.iter().find(|s| s["id"] == c2.snapshot_id.as_str()).unwrap();
    assert_eq!(new["parent"], c1.snapshot_id.as_str(), "{label}");

    // Restoring into another directory recreates the files directly there.
    let target = f.root.join("restore-target");
    let (code, _, err) =
        raw(restic, &f.repo("shop"), &password(), &["restore", &c2.snapshot_id, "--target", target.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_to_string(target.join("a.txt")).unwrap(), "changed\n");
    assert_eq!(std::fs::read(target.join("sub/b.bin")).unwrap().len(), 300_000);
}

#[test]
fn backup_and_incremental_after_pod_recreation_restic() {
    backup_and_incremental_after_pod_recreation(&restic());
}

#[test]
fn backup_and_incremental_after_pod_recreation_restic_014() {
    if let Some(old) = restic_014("backup_and_incremental_after_pod_recreation_restic_014") {
        backup_and_incremental_after_pod_recreation(&old);
    }
}

/// `restic` wrapped by a script that logs each run's subcommand, to count restic runs.
fn counted_restic(restic: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt as _;
    let log = dir.join("restic-runs.log");
    let script = dir.join("restic-counted");
    let body = format!(
        "#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in -*|[0-9]*s) ;; *) echo \"$a\" >> '{}'; break;; esac; done\nexec '{}' \"$@\"\n",
        log.display(),
        restic.display()
    );
    std::fs::write(&script, body).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, log)
}

/// Every subcommand restic ran since the last call (the log is emptied).
fn subcommands(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let _ = std::fs::remove_file(log);
    text.lines().map(str::to_string).collect()
}

/// The subcommands restic ran since the last call that open the repository (the log is
/// emptied). `restic version` (asked once per Job for its features) opens nothing and is cheap.
fn runs(log: &Path) -> Vec<String> {
    subcommands(log).into_iter().filter(|s| s != "version").collect()
}

/// The image stamps its pinned restic's version (CORACLE_RESTIC_VERSION): the Job then never runs
/// `restic version`, and restic 0.14 stamped as such still gets no `--retry-lock` (it would refuse
/// the flag). Without a stamp, or with one that is not a version (reported), restic is asked.
fn stamped_restic_version(restic: &Path) {
    let f = Fixture::new(restic);
    let label = version(restic);
    let number = ResticVersion::parse(&label).unwrap().to_string();
    let (counted, log) = counted_restic(restic, &f.root);
    let counted = counted.to_str().unwrap();
    f.csi_volume(POD_UID_1);
    let volumes = vec![f.volume("db-0", POD_UID_1)];

    let stamped = f.run(&volumes, 0, &[("CORACLE_RESTIC", counted), ("CORACLE_RESTIC_VERSION", &number)]);
    assert_eq!(stamped.completed().snapshot_id.len(), 64, "{label}");
    let ran = subcommands(&log);
    assert!(ran.contains(&"backup".to_string()) && !ran.contains(&"version".to_string()), "{label}: {ran:?}");
    let logged = format!("restic {number}, repository");
    assert!(stamped.stderr.contains(&logged), "{label}: {}", stamped.stderr);

    for stamp in ["", "latest"] {
        let run = f.run(&volumes, 0, &[("CORACLE_RESTIC", counted), ("CORACLE_RESTIC_VERSION", stamp)]);
        assert_eq!(run.completed().snapshot_id.len(), 64, "{label} {stamp:?}");
        let ran = subcommands(&log);
        assert_eq!(ran.iter().filter(|s| *s == "version").count(), 1, "{label} {stamp:?}: {ran:?}");
        assert_eq!(run.stderr.contains("is not a version"), !stamp.is_empty(), "{label} {stamp:?}: {}", run.stderr);
    }
}

#[test]
fn stamped_restic_version_restic() {
    stamped_restic_version(&restic());
}

#[test]
fn stamped_restic_version_restic_014() {
    if let Some(old) = restic_014("stamped_restic_version_restic_014") {
        stamped_restic_version(&old);
    }
}

/// The planner's parent hint (`CORACLE_PARENTS`) makes a backup one restic run; a hint naming a
/// forgotten snapshot, or a repository that does not exist, falls back to looking up / creating.
fn parent_hints(restic: &Path) {
    let f = Fixture::new(restic);
    let label = version(restic);
    // restic 0.14 reports short ids: the Job asks `snapshots` for the full one afterwards.
    let resolve: &[&str] = if label.contains("0.14") { &["snapshots"] } else { &[] };
    let (counted, log) = counted_restic(restic, &f.root);
    let counted = counted.to_str().unwrap();
    f.csi_volume(POD_UID_1);
    let volumes = vec![f.volume("db-0", POD_UID_1)];
    let identity = format!("pvc:{PVC_UID}");
    let hint = |id: &str| serde_json::json!({ identity.clone(): id }).to_string();

    // No repository, no hint: one `snapshots` finds neither, the repository is created, backup.
    let first = f.run(&volumes, 0, &[("CORACLE_RESTIC", counted)]);
    let c1 = first.completed().clone();
    assert_eq!(runs(&log), [&["snapshots", "init", "backup"][..], resolve].concat(), "{label}");

    // The hint names the parent: restic runs once.
    std::fs::write(f.csi_mount(POD_UID_1, "pv-1").join("a.txt"), "changed\n").unwrap();
    let second = f.run(&volumes, 0, &[("CORACLE_RESTIC", counted), ("CORACLE_PARENTS", &hint(&c1.snapshot_id))]);
    let c2 = second.completed().clone();
    assert_eq!(c2.parent_snapshot.as_deref(), Some(c1.snapshot_id.as_str()), "{label}");
    assert_eq!((c2.stats.files_changed, c2.stats.files_unmodified), (1, 1), "{label}: {:?}", c2.stats);
    assert_eq!(runs(&log), [&["backup"][..], resolve].concat(), "{label}: {}", second.stderr);

    // A hint naming a snapshot that is gone: the parent is looked up, and it is the newest.
    let gone = "f".repeat(64);
    let third = f.run(&volumes, 0, &[("CORACLE_RESTIC", counted), ("CORACLE_PARENTS", &hint(&gone))]);
    let c3 = third.completed().clone();
    assert_eq!(c3.parent_snapshot.as_deref(), Some(c2.snapshot_id.as_str()), "{label}: {}", third.stderr);
    assert_eq!(runs(&log), [&["backup", "snapshots", "backup"][..], resolve].concat(), "{label}");

    // Not a hint for this identity, or not a full id, or not JSON: looked up as without hints.
    for parents in [r#"{"pvc:other": "%"}"#.replace('%', &c1.snapshot_id), hint("abc"), "not json".to_string()] {
        let run = f.run(&volumes, 0, &[("CORACLE_RESTIC", counted), ("CORACLE_PARENTS", &parents)]);
        assert!(run.completed().parent_snapshot.is_some(), "{label}: {parents}");
        assert_eq!(runs(&log), [&["snapshots", "backup"][..], resolve].concat(), "{label}: {parents}");
    }

    // A hint, but the repository is gone (deleted by hand): it is created again, full backup.
    std::fs::remove_dir_all(f.repo("shop")).unwrap();
    let fourth = f.run(&volumes, 0, &[("CORACLE_RESTIC", counted), ("CORACLE_PARENTS", &hint(&c3.snapshot_id))]);
    assert_eq!(fourth.completed().parent_snapshot, None, "{label}: {}", fourth.stderr);
    assert_eq!(runs(&log), [&["backup", "init", "backup"][..], resolve].concat(), "{label}");
    assert_eq!(snapshots_json(restic, &f.repo("shop"), &password()).len(), 1);
}

#[test]
fn parent_hints_restic() {
    parent_hints(&restic());
}

#[test]
fn parent_hints_restic_014() {
    if let Some(old) = restic_014("parent_hints_restic_014") {
        parent_hints(&old);
    }
}

/// restic exits 3 for real (files it cannot read): completed with warnings, exit code 0.
fn unreadable_files_complete_with_warnings(restic: &Path, test: &str) {
    let f = Fixture::new(restic);
    let Some(limited) = restic_without_dac(restic, &f.root, test) else { return };
    let f = Fixture { restic: limited, ..f };
    let mount = f.csi_volume(POD_UID_1);
    std::fs::write(mount.join("locked"), "secret").unwrap();
    std::fs::set_permissions(mount.join("locked"), std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let run = f.run(&[f.volume("db-0", POD_UID_1)], 0, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let c = run.completed();
    assert_eq!(c.snapshot_id.len(), 64);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].starts_with("unreadable: /locked"), "{:?}", c.warnings);
    assert!(c.warnings[0].contains("permission denied"), "{:?}", c.warnings);
    // Node paths stay out of the warnings.
    assert!(!c.warnings[0].contains(&f.root.display().to_string()), "{:?}", c.warnings);
    assert!(run.stderr.contains("completed with 1 warnings"), "{}", run.stderr);
}

#[test]
fn unreadable_files_complete_with_warnings_restic() {
    unreadable_files_complete_with_warnings(&restic(), "unreadable_files_complete_with_warnings_restic");
}

#[test]
fn unreadable_files_complete_with_warnings_restic_014() {
    let test = "unreadable_files_complete_with_warnings_restic_014";
    if let Some(old) = restic_014(test) {
        unreadable_files_complete_with_warnings(&old, test);
    }
}

#[test]
fn missing_volume_fails_with_a_clear_reason() {
    let f = Fixture::new(&restic());
    std::fs::create_dir_all(f.pods().join(POD_UID_1).join("volumes/kubernetes.io~csi")).unwrap();
    let volumes = [f.volume("db-0", POD_UID_1)];

    let run = f.run(&volumes, 0, &[("CORACLE_BACKOFF_LIMIT_PER_INDEX", "2")]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let failed = run.failed();
    assert!(failed.reason.contains(&format!("{POD_UID_1}/volumes/*/pv-1")), "{}", failed.reason);
    assert_eq!((failed.attempt, failed.is_final), (0, false));
    assert_eq!(failed.volume.pod, "db-0");
    assert!(run.termination.contains("\"final\":false"), "{}", run.termination);

    let run = f.run(&volumes, 0, &[("CORACLE_ATTEMPT", "2"), ("CORACLE_BACKOFF_LIMIT_PER_INDEX", "2")]);
    assert_eq!(run.code, 1);
    assert_eq!((run.failed().attempt, run.failed().is_final), (2, true));
    assert!(!f.repo("shop").exists(), "nothing may be created for a volume that was not found");
}

#[test]
fn hostile_names_are_refused() {
    let f = Fixture::new(&restic());
    f.csi_volume(POD_UID_1);
    let mut v = f.volume("db-0", POD_UID_1);
    v.dir = "../../../etc".into();
    let run = f.run(&[v.clone()], 0, &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.failed().reason.contains("invalid volume directory name"), "{}", run.failed().reason);

    v.dir = "pv-1".into();
    v.pod_uid = "../../x".into();
    let run = f.run(&[v.clone()], 0, &[]);
    assert_eq!(run.code, 2);
    assert!(run.failed().reason.contains("pod uid"), "{}", run.failed().reason);

    v.pod_uid = POD_UID_1.into();
    v.identity = "pvc:a,pvc:b".into();
    let run = f.run(&[v], 0, &[]);
    assert_eq!(run.code, 2);
    assert!(run.failed().reason.contains("comma"), "{}", run.failed().reason);
}

#[test]
fn symlink_escape_is_refused() {
    let f = Fixture::new(&restic());
    let outside = f.root.join("outside");
    write_files(&outside);
    let csi = f.pods().join(POD_UID_1).join("volumes/kubernetes.io~csi/pv-1");
    std::fs::create_dir_all(&csi).unwrap();
    std::os::unix::fs::symlink(&outside, csi.join("mount")).unwrap();
    let run = f.run(&[f.volume("db-0", POD_UID_1)], 0, &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.failed().reason.contains("refusing to follow"), "{}", run.failed().reason);
    assert!(!f.repo("shop").exists());
}

#[test]
fn bad_settings_still_write_a_termination_message() {
    let f = Fixture::new(&restic());
    f.csi_volume(POD_UID_1);
    let run = f.run(&[f.volume("db-0", POD_UID_1)], 3, &[]);
    assert_eq!(run.code, 2);
    assert!(run.failed().reason.contains("out of range"), "{}", run.failed().reason);

    let run = f.run(&[f.volume("db-0", POD_UID_1)], 0, &[("CORACLE_MASTER_KEY", "  ")]);
    assert_eq!(run.code, 2);
    assert!(run.failed().reason.contains("master key is empty"), "{}", run.failed().reason);
}

#[test]
fn another_master_key_cannot_open_the_repository() {
    let f = Fixture::new(&restic());
    f.csi_volume(POD_UID_1);
    let volumes = [f.volume("db-0", POD_UID_1)];
    assert_eq!(f.run(&volumes, 0, &[]).code, 0);
    let other_key = "some-other-master-key-0123456789";
    let run = f.run(&volumes, 0, &[("CORACLE_MASTER_KEY", other_key)]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let reason = &run.failed().reason;
    assert!(reason.contains("wrong password"), "{reason}");
    let other_password = namespace_password(other_key.as_bytes(), "shop", 1);
    for text in [&run.stdout, &run.stderr, &run.termination] {
        assert!(!text.contains(other_key) && !text.contains(&other_password), "{text}");
    }
}

#[test]
fn unreachable_nats_does_not_fail_the_backup() {
    let f = Fixture::new(&restic());
    f.csi_volume(POD_UID_1);
    let port = free_port();
    let run = f.run(&[f.volume("db-0", POD_UID_1)], 0, &[("CORACLE_NATS_URL", &format!("nats://127.0.0.1:{port}"))]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.completed();
    assert!(run.stderr.contains("unreachable"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_events_to_jetstream() {
    use coracle_events::{subjects, CloudEvent};
    let Some(server) = NatsServer::start("publishes_events_to_jetstream") else { return };
    let client = async_nats::connect(&server.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    coracle_events::bootstrap::ensure(&js).await.unwrap();

    let f = Fixture::new(&restic());
    f.csi_volume(POD_UID_1);
    let volumes = [f.volume("db-0", POD_UID_1)];
    let url = server.url.clone();
    let (ok, f) = tokio::task::spawn_blocking(move || {
        let run = f.run(&volumes, 0, &[("CORACLE_NATS_URL", &url)]);
        (run, f)
    })
    .await
    .unwrap();
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    let snapshot = ok.completed().snapshot_id.clone();

    // A failing run publishes a failure event for its attempt.
    std::fs::remove_dir_all(f.pods().join(POD_UID_1).join("volumes/kubernetes.io~csi/pv-1")).unwrap();
    let volumes = [f.volume("db-0", POD_UID_1)];
    let url = server.url.clone();
    let bad = tokio::task::spawn_blocking(move || {
        f.run(&volumes, 0, &[("CORACLE_NATS_URL", &url), ("CORACLE_ATTEMPT", "1")])
    })
    .await
    .unwrap();
    assert_eq!(bad.code, 1);

    let events = stream_events(&js, subjects::STREAM).await;
    let source = "/coracle/jobs/coracle-backup-abc-node-1";
    let prefix = format!("{BACKUP_UID}.shop.db-0.data");
    let completed: Vec<&CloudEvent> =
        events.iter().filter(|e| e.ty == "dev.coracle.volume.backup.completed.v1").collect();
    assert_eq!(completed.len(), 1, "{events:?}");
    assert_eq!(completed[0].id, format!("{prefix}.completed"));
    assert_eq!(completed[0].source, source);
    assert_eq!(completed[0].subject.as_deref(), Some("nightly-20250101000000"));
    assert_eq!(completed[0].data["snapshotId"], snapshot.as_str());

    let progress: Vec<&CloudEvent> =
        events.iter().filter(|e| e.ty == "dev.coracle.volume.backup.progress.v1").collect();
    assert!(!progress.is_empty(), "{events:?}");
    let last = progress.last().unwrap();
    assert_eq!(last.data["percentDone"], 1.0);
    assert_eq!(last.data["volume"], "shop/db-0/data");
    let mut ids: Vec<&str> = progress.iter().map(|e| e.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), progress.len(), "progress ids must be unique");

    let failed: Vec<&CloudEvent> = events.iter().filter(|e| e.ty == "dev.coracle.volume.backup.failed.v1").collect();
    assert_eq!(failed.len(), 1, "{events:?}");
    assert_eq!(failed[0].id, format!("{prefix}.failed.1"));
    assert_eq!(failed[0].data["final"], true);
    assert!(failed[0].data["reason"].as_str().unwrap().contains("volumes/*/pv-1"));
    drop(server);
}

/// restic gets the password only in its environment and never sees the master key; its argv
/// holds neither.
#[test]
fn restic_gets_the_password_only_through_its_environment() {
    let f = Fixture::new(&restic());
    let spy = f.root.join("restic-spy");
    let log = f.root.join("spy.log");
    std::fs::write(
        &spy,
        format!(
            "#!/bin/sh\n{{ echo \"ARGV $*\"; env | sed 's/^/ENV /'; }} >> {}\nexec {} \"$@\"\n",
            log.display(),
            restic().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&spy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let f = Fixture { restic: spy, ..f };
    f.csi_volume(POD_UID_1);
    let run = f.run(&[f.volume("db-0", POD_UID_1)], 0, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);

    let seen = std::fs::read_to_string(&log).unwrap();
    let argv: Vec<&str> = seen.lines().filter(|l| l.starts_with("ARGV ")).collect();
    let env: Vec<&str> = seen.lines().filter(|l| l.starts_with("ENV ")).collect();
    // restic 0.18 waits for a conflicting lock rather than failing at once.
    assert!(argv.iter().any(|a| a.starts_with("ARGV --retry-lock 120s backup --json --host shop")), "{argv:?}");
    for line in &argv {
        assert!(!line.contains(&password()) && !line.contains(MASTER_KEY), "{line}");
    }
    assert!(env.contains(&format!("ENV RESTIC_PASSWORD={}", password()).as_str()));
    assert!(env.contains(&format!("ENV RESTIC_REPOSITORY={}", f.repo("shop").display()).as_str()));
    assert!(!seen.contains(MASTER_KEY), "the master key reached restic");
    assert!(!env.iter().any(|l| l.starts_with("ENV CORACLE_")), "{env:?}");
    assert!(env.iter().any(|l| l.starts_with("ENV RESTIC_CACHE_DIR=")), "inherited settings must stay: {env:?}");
}

/// SIGTERM (pod deleted, activeDeadlineSeconds) during the backup: restic is stopped and the
/// failure still reaches the termination message.
#[test]
fn sigterm_still_writes_a_failed_outcome() {
    let f = Fixture::new(&restic());
    let started = f.root.join("backup-started");
    let slow = f.root.join("slow-restic");
    std::fs::write(
        &slow,
        format!(
            "#!/bin/sh\ncase \" $* \" in *\" backup \"*) touch {}; exec sleep 60;; esac\nexec {} \"$@\"\n",
            started.display(),
            restic().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let f = Fixture { restic: slow, ..f };
    f.csi_volume(POD_UID_1);
    let volumes = [f.volume("db-0", POD_UID_1)];

    let termination = f.root.join("termination-sigterm");
    let mut child = Command::new(env!("CARGO_BIN_EXE_coracle-volume-job"))
        .arg("backup")
        .env("PATH", path_env())
        .env("JOB_COMPLETION_INDEX", "0")
        .env("CORACLE_VOLUMES", serde_json::to_string(&volumes).unwrap())
        .env("CORACLE_BACKUP_NAME", "b")
        .env("CORACLE_BACKUP_UID", BACKUP_UID)
        .env("CORACLE_PODS_ROOT", f.pods())
        .env("CORACLE_REPOSITORY_PREFIX", f.root.join("repos"))
        .env("CORACLE_MASTER_KEY", MASTER_KEY)
        .env("CORACLE_TERMINATION_LOG", &termination)
        .env("CORACLE_RESTIC", &f.restic)
        .env("RESTIC_CACHE_DIR", f.root.join("cache"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !started.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let began = std::time::Instant::now();
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(started.exists(), "restic backup never started");
    assert!(killed.success());
    assert_eq!(status.code(), Some(1));
    assert!(began.elapsed() < std::time::Duration::from_secs(20), "did not stop promptly");
    let outcome: VolumeOutcome = serde_json::from_str(&std::fs::read_to_string(&termination).unwrap()).unwrap();
    let VolumeOutcome::Failed(failed) = outcome else { panic!("{outcome:?}") };
    assert!(failed.reason.contains("terminated by SIGTERM"), "{}", failed.reason);
}
