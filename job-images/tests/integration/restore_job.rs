//! End to end: `coracle-volume-job backup` of pod A's volume, then `coracle-volume-job restore`
//! of that snapshot into pod B (a new pod uid, a new empty volume directory), with real
//! restic (0.18, and 0.14 when installed) and, for events, a real nats-server.

use crate::common;

use common::*;
use coracle_events::{RestoreOutcome, RestoreVolume};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

const MASTER_KEY: &str = "e2e-master-key-never-printed-0123456789";
const POD_A: &str = "0f2c7f4e-3c1a-4a8e-9b7d-2f0e1d2c3b4a";
const POD_B: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
const RESTORE_UID: &str = "5b2e7c1a-0000-4000-8000-000000000001";
const JOB: &str = "coracle-restore-5b2e7c1a-db-0";

type Run = common::Run<RestoreOutcome>;

impl Fixture {
    /// Backs up pod A's CSI volume `pv-1` with the backup subcommand; returns the snapshot id.
    fn backup(&self) -> String {
        self.backup_pv1(POD_A, JOB, MASTER_KEY)
    }

    /// The job binary with the settings every run shares.
    fn restore(&self, volumes: &[RestoreVolume], pod_uid: &str, extra: &[(&str, &str)]) -> Run {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let termination = self.root.join(format!("termination-restore-{}", RUNS.fetch_add(1, Ordering::Relaxed)));
        let mut cmd = self.job("restore", JOB, MASTER_KEY, &termination);
        cmd.env("CORACLE_RESTORE_NAME", "restore-1")
            .env("CORACLE_RESTORE_UID", RESTORE_UID)
            .env("CORACLE_RESTORE_VOLUMES", serde_json::to_string(volumes).unwrap())
            .env("CORACLE_POD_DIR", self.pod_dir(pod_uid));
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let run: Run = run_job(&mut cmd, &termination, MASTER_KEY);
        assert_eq!(serde_json::from_str::<RestoreOutcome>(run.stdout.trim()).unwrap(), run.outcome);
        run
    }
}

impl Run {
    fn completed(&self) -> &coracle_events::VolumeRestoreCompleted {
        match &self.outcome {
            RestoreOutcome::Completed(c) => c,
            other => panic!("expected Completed, got {other:?}\nstderr:\n{}", self.stderr),
        }
    }

    fn failed(&self) -> &coracle_events::VolumeRestoreFailed {
        match &self.outcome {
            RestoreOutcome::Failed(f) => f,
            other => panic!("expected Failed, got {other:?}\nstderr:\n{}", self.stderr),
        }
    }
}

/// Pod B's volume `data` (PV `pv-2`, an empty CSI mount) restored from `snapshot`.
fn target(f: &Fixture, snapshot: &str) -> RestoreVolume {
    std::fs::create_dir_all(f.csi_mount(POD_B, "pv-2")).unwrap();
    RestoreVolume {
        namespace: "shop".into(),
        pod: "db-0".into(),
        pod_uid: POD_B.into(),
        volume: "data".into(),
        dir: "pv-2".into(),
        source_namespace: "shop".into(),
        snapshot_id: snapshot.into(),
        entry: String::new(),
    }
}

fn set_mtime(path: &Path, secs: u64, nanos: u32) {
    let time = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec { tv_sec: secs as i64, tv_nsec: 0 },
        last_modification: rustix::fs::Timespec { tv_sec: secs as i64, tv_nsec: nanos as _ },
    };
    // Without following symlinks: a link's own mtime is part of the tree too.
    rustix::fs::utimensat(rustix::fs::CWD, path, &time, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A volume with what real ones hold: nested and empty directories with unusual modes,
/// symlinks (relative, absolute, dangling), empty and larger files, odd names, owners, and
/// old mtimes with nanoseconds. Directory mtimes are set last, bottom up.
fn populate(mount: &Path) {
    std::fs::create_dir_all(mount.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(mount.join("empty-private")).unwrap();
    std::fs::create_dir_all(mount.join("shared")).unwrap();
    std::fs::write(mount.join("a.txt"), "hello coracle\n").unwrap();
    std::fs::write(mount.join("empty"), "").unwrap();
    std::fs::write(mount.join("with space & ünïcode.txt"), "odd name\n").unwrap();
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(mount.join("sub/big.bin"), big).unwrap();
    std::fs::write(mount.join("sub/deeper/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::write(mount.join("sub/secret.key"), "private\n").unwrap();
    std::os::unix::fs::symlink("a.txt", mount.join("link-relative")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", mount.join("link-absolute")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", mount.join("sub/link-dangling")).unwrap();

    chmod(&mount.join("sub/deeper/run.sh"), 0o755);
    chmod(&mount.join("sub/secret.key"), 0o600);
    chmod(&mount.join("a.txt"), 0o640);
    chmod(&mount.join("empty-private"), 0o700);
    chmod(&mount.join("shared"), 0o2775);
    if is_root() {
        let owner =
            |p: &str, uid: u32, gid: u32| std::os::unix::fs::lchown(mount.join(p), Some(uid), Some(gid)).unwrap();
        owner("a.txt", 1000, 2000);
        owner("sub/secret.key", 999, 999);
        owner("shared", 1000, 3000);
        owner("link-relative", 1000, 2000);
    }
    let mut t = 1_600_000_000;
    for file in ["a.txt", "empty", "with space & ünïcode.txt", "sub/big.bin", "sub/deeper/run.sh", "sub/secret.key"] {
        t += 86_400;
        set_mtime(&mount.join(file), t, 123_456_789);
    }
    for link in ["link-relative", "link-absolute", "sub/link-dangling"] {
        t += 3_600;
        set_mtime(&mount.join(link), t, 5);
    }
    for dir in ["sub/deeper", "sub", "empty-private", "shared"] {
        t += 60;
        set_mtime(&mount.join(dir), t, 987_654_321);
    }
}

/// One entry of a tree, everything a restore must reproduce.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    /// File content or symlink target.
    data: Vec<u8>,
}

/// Every entry below `root` (not `root` itself, whose mtime the marker changes, nor
/// `.coracle`), by path relative to `root`.
fn tree(root: &Path) -> BTreeMap<String, Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == ".coracle" {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let (kind, data) = if meta.file_type().is_symlink() {
                ("symlink", std::fs::read_link(&path).unwrap().into_os_string().into_encoded_bytes())
            } else if meta.is_dir() {
                walk(root, &path, out);
                ("dir", Vec::new())
            } else {
                ("file", std::fs::read(&path).unwrap())
            };
            let entry = Entry {
                kind,
                mode: meta.mode(),
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                data,
            };
            out.insert(rel, entry);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn assert_same_tree(expected: &BTreeMap<String, Entry>, actual: &BTreeMap<String, Entry>, label: &str) {
    let names = |t: &BTreeMap<String, Entry>| t.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(expected), names(actual), "{label}: different entries");
    for (path, want) in expected {
        let got = &actual[path];
        assert_eq!(want.kind, got.kind, "{label}: {path} kind");
        assert_eq!(format!("{:o}", want.mode), format!("{:o}", got.mode), "{label}: {path} mode");
        assert_eq!((want.uid, want.gid), (got.uid, got.gid), "{label}: {path} owner");
        assert_eq!(want.mtime, got.mtime, "{label}: {path} mtime");
        assert!(want.data == got.data, "{label}: {path} content differs");
    }
}

/// Backup of pod A, restore into pod B: the same tree, the marker, a Completed result. Then a
/// second restore over the now-used volume keeps the user's own files and puts the snapshot's
/// files back.
fn backup_then_restore_into_another_pod(restic: &Path) {
    let label = version(restic);
    let f = Fixture::new(restic);
    let source = f.csi_mount(POD_A, "pv-1");
    populate(&source);
    std::fs::write(source.parent().unwrap().join("vol_data.json"), "{}").unwrap();
    let expected = tree(&source);
    let snapshot = f.backup();

    let volume = target(&f, &snapshot);
    let other = RestoreVolume { volume: "other".into(), dir: "pv-9".into(), ..volume.clone() };
    let run = f.restore(&[other, volume.clone()], POD_B, &[("JOB_COMPLETION_INDEX", "1")]);
    assert_eq!(run.code, 0, "{label}: {}", run.stderr);
    let completed = run.completed();
    assert_eq!(completed.volume, volume);
    assert_eq!(completed.restore.uid, RESTORE_UID);
    assert_eq!(completed.restore.name, "restore-1");
    assert_eq!(completed.attempt, 0);
    let files = expected.len() as u64;
    let bytes: u64 = expected.values().filter(|e| e.kind == "file").map(|e| e.data.len() as u64).sum();
    assert_eq!((completed.stats.files, completed.stats.bytes), (files, bytes), "{label}: {:?}", completed.stats);
    assert!(completed.stats.duration_seconds > 0.0);

    let mount = f.csi_mount(POD_B, "pv-2");
    assert_same_tree(&expected, &tree(&mount), &label);
    let marker = mount.join(".coracle").join(RESTORE_UID);
    let note = std::fs::read_to_string(&marker).unwrap();
    assert!(note.starts_with(&format!("restored snapshot {snapshot}")), "{note}");
    assert!(!mount.join(".coracle").join(format!("{RESTORE_UID}.failed")).exists());
    assert_eq!(std::fs::metadata(mount.join(".coracle")).unwrap().permissions().mode() & 0o7777, 0o777);
    assert_no_secrets(MASTER_KEY, &["shop"], &[("marker", &note)]);
    // The source is untouched.
    assert_same_tree(&expected, &tree(&source), &label);

    // The app has run: it changed a file and added its own. A second restore (another
    // restore uid) overwrites the snapshot's files and keeps the rest.
    std::fs::write(mount.join("a.txt"), "changed by the app\n").unwrap();
    std::fs::write(mount.join("app-data.db"), "keep me\n").unwrap();
    let second_uid = "6c3f8d2b-0000-4000-8000-000000000002";
    let run = f.restore(std::slice::from_ref(&volume), POD_B, &[("CORACLE_RESTORE_UID", second_uid)]);
    assert_eq!(run.code, 0, "{label}: {}", run.stderr);
    assert!(run.stderr.contains("is not empty: files of the same name are overwritten"), "{}", run.stderr);
    if label.contains(" 0.14.") {
        // 0.14 cannot replace the symlinks the first restore made; they are what the snapshot holds.
        assert!(run.stderr.contains("3 symlinks were already in place"), "{label}: {}", run.stderr);
    }
    assert_eq!(std::fs::read_to_string(mount.join("app-data.db")).unwrap(), "keep me\n");
    let mut after = tree(&mount);
    after.remove("app-data.db");
    assert_same_tree(&expected, &after, &format!("{label}, second restore"));
    assert!(mount.join(".coracle").join(second_uid).is_file());
    assert!(marker.is_file(), "the first restore's marker is not another restore's business");
}

#[test]
fn backup_then_restore_into_another_pod_restic() {
    backup_then_restore_into_another_pod(&restic());
}

#[test]
fn backup_then_restore_into_another_pod_restic_014() {
    if let Some(old) = restic_014("backup_then_restore_into_another_pod_restic_014") {
        backup_then_restore_into_another_pod(&old);
    }
}

/// A snapshot that does not exist, on the last attempt: Failed, final, the failure marker
/// holds the reason, no success marker.
fn missing_snapshot_fails_with_a_final_marker(restic: &Path) {
    let label = version(restic);
    let f = Fixture::new(restic);
    populate(&f.csi_mount(POD_A, "pv-1"));
    f.backup();
    let volume = target(&f, "deadbeefdeadbeef");
    let run = f.restore(&[volume], POD_B, &[("CORACLE_ATTEMPT", "2"), ("CORACLE_BACKOFF_LIMIT_PER_INDEX", "2")]);
    assert_eq!(run.code, 1, "{label}: {}", run.stderr);
    let failed = run.failed();
    assert_eq!((failed.attempt, failed.is_final), (2, true));
    assert!(failed.reason.starts_with("restic restore failed (exit code"), "{label}: {}", failed.reason);
    assert!(failed.reason.contains("deadbeefdeadbeef"), "{label}: {}", failed.reason);

    let mount = f.csi_mount(POD_B, "pv-2");
    let marker = std::fs::read_to_string(mount.join(".coracle").join(format!("{RESTORE_UID}.failed"))).unwrap();
    assert_eq!(marker, failed.reason);
    assert!(marker.len() <= 4096);
    assert!(!mount.join(".coracle").join(RESTORE_UID).exists());
    assert_no_secrets(MASTER_KEY, &["shop"], &[("failure marker", &marker)]);
}

#[test]
fn missing_snapshot_fails_with_a_final_marker_restic() {
    missing_snapshot_fails_with_a_final_marker(&restic());
}

#[test]
fn missing_snapshot_fails_with_a_final_marker_restic_014() {
    if let Some(old) = restic_014("missing_snapshot_fails_with_a_final_marker_restic_014") {
        missing_snapshot_fails_with_a_final_marker(&old);
    }
}

#[test]
fn a_failure_that_will_be_retried_leaves_no_marker() {
    let f = Fixture::new(&restic());
    populate(&f.csi_mount(POD_A, "pv-1"));
    f.backup();
    let volume = target(&f, "deadbeefdeadbeef");
    let run = f.restore(&[volume], POD_B, &[("CORACLE_ATTEMPT", "0"), ("CORACLE_BACKOFF_LIMIT_PER_INDEX", "1")]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!((run.failed().attempt, run.failed().is_final), (0, false));
    assert!(run.termination.contains("\"final\":false"), "{}", run.termination);
    // Only the (empty) marker directory, made before restic ran: a retry follows, the helper
    // must keep waiting.
    assert_eq!(std::fs::read_dir(f.csi_mount(POD_B, "pv-2").join(".coracle")).unwrap().count(), 0);
}

#[test]
fn a_missing_repository_is_an_error_and_is_not_created() {
    let f = Fixture::new(&restic());
    let volume = RestoreVolume { source_namespace: "never-backed-up".into(), ..target(&f, "deadbeefdeadbeef") };
    let run = f.restore(&[volume], POD_B, &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.failed().reason.contains("restic restore failed"), "{}", run.failed().reason);
    assert!(!f.root.join("repos/never-backed-up").exists(), "a restore must never initialise a repository");
    // The last attempt by default (no backoff limit): the helper is told.
    assert!(f.csi_mount(POD_B, "pv-2").join(".coracle").join(format!("{RESTORE_UID}.failed")).is_file());
}

#[test]
fn hostile_entries_are_refused() {
    let f = Fixture::new(&restic());
    populate(&f.csi_mount(POD_A, "pv-1"));
    let snapshot = f.backup();
    let good = target(&f, &snapshot);
    let outside = f.root.join("outside");
    std::fs::create_dir(&outside).unwrap();

    type Case<'a> = (RestoreVolume, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (RestoreVolume { dir: "../../../outside".into(), ..good.clone() }, vec![], "invalid volume directory name"),
        (RestoreVolume { pod_uid: "../../x".into(), ..good.clone() }, vec![], "invalid pod uid"),
        (RestoreVolume { snapshot_id: "--delete".into(), ..good.clone() }, vec![], "invalid snapshot id"),
        (RestoreVolume { source_namespace: "../etc".into(), ..good.clone() }, vec![], "invalid source namespace"),
        (good.clone(), vec![("CORACLE_RESTORE_UID", "../../outside/x")], "invalid restore uid"),
    ];
    for (volume, extra, expected) in cases {
        let run = f.restore(&[volume], POD_B, &extra);
        assert_eq!(run.code, 2, "{expected}: {}", run.stderr);
        assert!(run.failed().reason.contains(expected), "{expected}: {}", run.failed().reason);
        assert!(run.failed().is_final, "a retry cannot help: final at once");
    }

    // The CSI mount is a symlink out of the pod: refused before restic runs.
    let pv3 = f.pod_dir(POD_B).join("volumes/kubernetes.io~csi/pv-3");
    std::fs::create_dir_all(&pv3).unwrap();
    std::os::unix::fs::symlink(&outside, pv3.join("mount")).unwrap();
    let run = f.restore(&[RestoreVolume { dir: "pv-3".into(), ..good.clone() }], POD_B, &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.failed().reason.contains("refusing to follow"), "{}", run.failed().reason);

    // `.coracle` in the volume is a symlink out of it: refused before restic runs, and no
    // marker (nor failure marker) is written through it.
    std::os::unix::fs::symlink(&outside, f.csi_mount(POD_B, "pv-2").join(".coracle")).unwrap();
    let run = f.restore(&[good], POD_B, &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.failed().reason.contains(".coracle is a symbolic link"), "{}", run.failed().reason);
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "something was written outside the volume");
    // A pod directory that does not exist at all.
    let run = f.restore(&[target(&f, &snapshot)], "11111111-2222-3333-4444-555555555555", &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.failed().reason.contains("pod directory"), "{}", run.failed().reason);
}

#[test]
fn bad_settings_still_write_a_termination_message() {
    let f = Fixture::new(&restic());
    let volume = target(&f, "deadbeefdeadbeef");
    let run = f.restore(std::slice::from_ref(&volume), POD_B, &[("JOB_COMPLETION_INDEX", "1")]);
    assert_eq!(run.code, 2);
    assert!(run.failed().reason.contains("CORACLE_RESTORE_VOLUMES has 1 volumes"), "{}", run.failed().reason);
    let run = f.restore(&[volume], POD_B, &[("CORACLE_MASTER_KEY", " ")]);
    assert_eq!(run.code, 2);
    assert!(run.failed().reason.contains("master key is empty"), "{}", run.failed().reason);
}

/// restic gets the password only in its environment and never sees the master key.
#[test]
fn restic_gets_the_password_only_through_its_environment() {
    let f = Fixture::new(&restic());
    populate(&f.csi_mount(POD_A, "pv-1"));
    let snapshot = f.backup();
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
    chmod(&spy, 0o755);
    let f = Fixture { restic: spy, ..f };
    let run = f.restore(&[target(&f, &snapshot)], POD_B, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);

    let seen = std::fs::read_to_string(&log).unwrap();
    let argv: Vec<&str> = seen.lines().filter(|l| l.starts_with("ARGV ")).collect();
    let expected = format!("restore --json --target {} -- {snapshot}", f.csi_mount(POD_B, "pv-2").display());
    assert!(argv.iter().any(|a| a.ends_with(&expected)), "{argv:?}");
    let password = coracle_volume_job::namespace_password(MASTER_KEY.as_bytes(), "shop", 1);
    assert!(!argv.iter().any(|l| l.contains(&password) || l.contains(MASTER_KEY)), "{argv:?}");
    assert!(seen.contains(&format!("ENV RESTIC_PASSWORD={password}")));
    assert!(!seen.contains(MASTER_KEY), "the master key reached restic");
    assert!(!seen.lines().any(|l| l.starts_with("ENV CORACLE_")), "Coracle's settings reached restic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_restore_events_to_jetstream() {
    use coracle_events::subjects;
    let Some(server) = NatsServer::start("publishes_restore_events_to_jetstream") else { return };
    let client = async_nats::connect(&server.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    coracle_events::bootstrap::ensure(&js).await.unwrap();

    let url = server.url.clone();
    let (ok, bad) = tokio::task::spawn_blocking(move || {
        let f = Fixture::new(&restic());
        populate(&f.csi_mount(POD_A, "pv-1"));
        let snapshot = f.backup();
        let ok = f.restore(&[target(&f, &snapshot)], POD_B, &[("CORACLE_NATS_URL", &url)]);
        let missing = target(&f, "deadbeefdeadbeef");
        let bad = f.restore(&[missing], POD_B, &[("CORACLE_NATS_URL", &url), ("CORACLE_ATTEMPT", "1")]);
        (ok, bad)
    })
    .await
    .unwrap();
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert_eq!(bad.code, 1, "{}", bad.stderr);

    let events = stream_events(&js, subjects::STREAM).await;
    let prefix = format!("{RESTORE_UID}.shop.db-0.data");
    let completed: Vec<_> = events.iter().filter(|e| e.ty == "dev.coracle.volume.restore.completed.v1").collect();
    assert_eq!(completed.len(), 1, "{events:?}");
    assert_eq!(completed[0].id, format!("{prefix}.restore-completed"));
    assert_eq!(completed[0].source, format!("/coracle/jobs/{JOB}"));
    assert_eq!(completed[0].subject.as_deref(), Some("restore-1"));
    assert_eq!(completed[0].data["volume"]["podUid"], POD_B);
    assert!(completed[0].data["stats"]["files"].as_u64().unwrap() > 0);

    let failed: Vec<_> = events.iter().filter(|e| e.ty == "dev.coracle.volume.restore.failed.v1").collect();
    assert_eq!(failed.len(), 1, "{events:?}");
    assert_eq!(failed[0].id, format!("{prefix}.restore-failed.1"));
    assert_eq!(failed[0].data["final"], true);
    assert!(failed[0].data["reason"].as_str().unwrap().contains("deadbeefdeadbeef"));
    for event in &events {
        let text = serde_json::to_string(event).unwrap();
        assert_no_secrets(MASTER_KEY, &["shop"], &[("event", &text)]);
    }
    drop(server);
}

#[test]
fn unreachable_nats_does_not_fail_the_restore() {
    let f = Fixture::new(&restic());
    populate(&f.csi_mount(POD_A, "pv-1"));
    let snapshot = f.backup();
    let url = format!("nats://127.0.0.1:{}", free_port());
    let run = f.restore(&[target(&f, &snapshot)], POD_B, &[("CORACLE_NATS_URL", &url)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("unreachable"), "{}", run.stderr);
    assert!(f.csi_mount(POD_B, "pv-2").join(".coracle").join(RESTORE_UID).is_file());
}

/// SIGTERM during the restore: restic is stopped, the failure still reaches the termination
/// message and, on the last attempt, the failure marker.
#[test]
fn sigterm_still_writes_a_failed_outcome_and_marker() {
    let f = Fixture::new(&restic());
    populate(&f.csi_mount(POD_A, "pv-1"));
    let snapshot = f.backup();
    let started = f.root.join("restore-started");
    let slow = f.root.join("slow-restic");
    std::fs::write(
        &slow,
        format!(
            "#!/bin/sh\ncase \" $* \" in *\" restore \"*) touch {}; exec sleep 60;; esac\nexec {} \"$@\"\n",
            started.display(),
            restic().display()
        ),
    )
    .unwrap();
    chmod(&slow, 0o755);
    let volume = target(&f, &snapshot);
    let termination = f.root.join("termination-sigterm");
    let f = Fixture { restic: slow, ..f };
    let mut child = f
        .job("restore", JOB, MASTER_KEY, &termination)
        .env("CORACLE_RESTORE_UID", RESTORE_UID)
        .env("CORACLE_RESTORE_VOLUMES", serde_json::to_string(&[volume]).unwrap())
        .env("CORACLE_POD_DIR", f.pod_dir(POD_B))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !started.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(started.exists(), "restic restore never started");
    let sent = SystemTime::now();
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    assert_eq!(child.wait().unwrap().code(), Some(1));
    assert!(sent.elapsed().unwrap() < Duration::from_secs(20), "did not stop promptly");
    let outcome: RestoreOutcome = serde_json::from_str(&std::fs::read_to_string(&termination).unwrap()).unwrap();
    let RestoreOutcome::Failed(failed) = outcome else { panic!("{outcome:?}") };
    assert!(failed.reason.contains("terminated by SIGTERM"), "{}", failed.reason);
    let marker = f.csi_mount(POD_B, "pv-2").join(".coracle").join(format!("{RESTORE_UID}.failed"));
    assert!(std::fs::read_to_string(marker).unwrap().contains("terminated by SIGTERM"));
}

/// restic refuses to store an empty snapshot: an empty volume backs up as Completed with no
/// snapshot, and restoring it only writes the marker (leaving the volume empty).
#[test]
fn an_empty_volume_backs_up_without_a_snapshot_and_restores_to_empty() {
    let f = Fixture::new(&restic());
    std::fs::create_dir_all(f.csi_mount(POD_A, "pv-1")).unwrap();
    assert_eq!(f.backup(), "", "no snapshot for an empty volume");
    let run = f.restore(&[target(&f, "")], POD_B, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mount = f.csi_mount(POD_B, "pv-2");
    assert!(mount.join(".coracle").join(RESTORE_UID).is_file(), "the helper still gets its marker");
    let entries: Vec<_> = std::fs::read_dir(&mount).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert_eq!(entries, [std::ffi::OsString::from(".coracle")]);
}
