//! A restore into a volume too small for the data: pod B's volume is a 1 MiB tmpfs (mounted in a
//! private mount namespace held by a `sleep` this test starts and kills), the snapshot holds
//! 3 MiB of incompressible data. Real restic fails with ENOSPC; the attempt a retry follows
//! leaves no marker but keeps its reserved room; the last attempt writes the failure marker
//! into it although the volume is full; the real `coracle-restore-wait`, waiting from before
//! the first attempt, exits non-zero at once with the reason. Needs root (unshare, mount);
//! skipped with a message otherwise.

use crate::common;

use common::*;
use coracle_events::{RestoreOutcome, RestoreVolume};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const MASTER_KEY: &str = "full-volume-master-key-never-printed-0123";
const POD_A: &str = "0f2c7f4e-3c1a-4a8e-9b7d-2f0e1d2c3b4a";
const POD_B: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
const RESTORE_UID: &str = "5b2e7c1a-0000-4000-8000-000000000001";
const JOB: &str = "coracle-restore-5b2e7c1a-db-0";

/// A private mount namespace, held by a `sleep` killed (by pid) and reaped on drop; the
/// tmpfs mounted in it goes with it.
struct Namespace {
    holder: Child,
}

impl Namespace {
    /// `None` (with a message) where unsharing or mounting is not allowed.
    fn with_tmpfs(at: &Path, size: &str) -> Option<Namespace> {
        let holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn();
        let holder = match holder {
            Ok(child) => child,
            Err(e) => {
                println!("SKIPPED restore_full_volume: no unshare ({e})");
                return None;
            }
        };
        let ns = Namespace { holder };
        // unshare execs sleep once the namespace exists; until then its namespace is ours.
        let own = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_link(ns.ns_path()).ok().as_ref() == Some(&own) || !ns.is_sleeping() {
            assert!(Instant::now() < deadline, "unshare did not start sleep");
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = ns.enter("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(at).output();
        match out {
            Ok(o) if o.status.success() => Some(ns),
            Ok(o) => {
                println!("SKIPPED restore_full_volume: cannot mount a tmpfs ({})", String::from_utf8_lossy(&o.stderr));
                None
            }
            Err(e) => {
                println!("SKIPPED restore_full_volume: no nsenter ({e})");
                None
            }
        }
    }

    fn is_sleeping(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/comm", self.holder.id())).is_ok_and(|c| c.trim() == "sleep")
    }

    fn ns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/mnt", self.holder.id()))
    }

    /// `program` run inside the namespace.
    fn enter(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--mount={}", self.ns_path().display())).arg("--").arg(program);
        cmd
    }

    /// `path` as the namespace sees it, from outside.
    fn view(&self, path: &Path) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.holder.id())).join(path.strip_prefix("/").unwrap())
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Incompressible bytes, so restic's compression cannot make them fit.
fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The real helper binary, built next to this test's (cargo builds it for its own tests).
fn helper_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join("coracle-restore-wait");
    if !bin.is_file() {
        let status = Command::new(env!("CARGO")).args(["build", "-p", "coracle-restore-wait"]).status().unwrap();
        assert!(status.success(), "cannot build coracle-restore-wait");
    }
    assert!(bin.is_file(), "{} not found", bin.display());
    bin
}

/// One restore attempt into pod B's volume, run inside the namespace.
fn restore(f: &Fixture, ns: &Namespace, volume: &RestoreVolume, attempt: &str) -> common::Run<RestoreOutcome> {
    let termination = f.root.join(format!("termination-restore-{attempt}"));
    let mut cmd = ns.enter(env!("CARGO_BIN_EXE_coracle-volume-job"));
    let job = f.job("restore", JOB, MASTER_KEY, &termination);
    cmd.arg("restore").env_clear().envs(job.get_envs().filter_map(|(k, v)| Some((k, v?))));
    cmd.env("CORACLE_RESTORE_NAME", "restore-1")
        .env("CORACLE_RESTORE_UID", RESTORE_UID)
        .env("CORACLE_RESTORE_VOLUMES", serde_json::to_string(&[volume]).unwrap())
        .env("CORACLE_POD_DIR", f.pod_dir(POD_B))
        .env("CORACLE_ATTEMPT", attempt)
        .env("CORACLE_BACKOFF_LIMIT_PER_INDEX", "1");
    run_job(&mut cmd, &termination, MASTER_KEY)
}

#[test]
fn a_target_too_small_fails_the_restore_and_the_helper_at_once() {
    let f = Fixture::new(&restic());
    let source = f.csi_mount(POD_A, "pv-1");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("a.txt"), "hello coracle\n").unwrap();
    // Several files, so some fit and the volume is filled whether or not restic preallocates.
    let data = noise(3 << 20);
    for (i, chunk) in data.chunks(384 << 10).enumerate() {
        std::fs::write(source.join(format!("part-{i}.bin")), chunk).unwrap();
    }
    let snapshot = f.backup_pv1(POD_A, JOB, MASTER_KEY);

    let mount = f.csi_mount(POD_B, "pv-2");
    std::fs::create_dir_all(&mount).unwrap();
    let Some(ns) = Namespace::with_tmpfs(&mount, "1m") else { return };
    let volume = RestoreVolume {
        namespace: "shop".into(),
        pod: "db-0".into(),
        pod_uid: POD_B.into(),
        volume: "data".into(),
        dir: "pv-2".into(),
        source_namespace: "shop".into(),
        snapshot_id: snapshot,
        entry: String::new(),
    };
    let view = ns.view(&mount);
    let marker_dir = view.join(".coracle");

    // The helper as the pod's init container: `<root>/<volume>` is the tmpfs.
    let helper_termination = f.root.join("termination-helper");
    let mut helper = ns
        .enter(helper_binary())
        .env_clear()
        .env("CORACLE_RESTORE_NAME", "restore-1")
        .env("CORACLE_RESTORE_UID", RESTORE_UID)
        .env("CORACLE_VOLUMES", "mount")
        .env("CORACLE_RESTORES_ROOT", mount.parent().unwrap())
        .env("CORACLE_TIMEOUT", "300s")
        .env("CORACLE_TERMINATION_LOG", &helper_termination)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stderr = helper.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut helper_log = Vec::new();
    while !helper_log.iter().any(|l: &String| l.contains("watching")) {
        match lines.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => helper_log.push(line),
            Err(_) => {
                let _ = helper.kill();
                let _ = helper.wait();
                panic!("the helper never started watching:\n{}", helper_log.join("\n"));
            }
        }
    }

    // Attempt 0 of 2: ENOSPC, a retry follows, so no marker; the volume is left full and
    // the reserved room is kept for the retry.
    let first = restore(&f, &ns, &volume, "0");
    assert_eq!(first.code, 1, "{}", first.stderr);
    let RestoreOutcome::Failed(failed) = &first.outcome else { panic!("{:?}\n{}", first.outcome, first.stderr) };
    assert!(!failed.is_final);
    assert!(failed.reason.contains("no space left on device"), "{}", failed.reason);
    assert!(!marker_dir.join(format!("{RESTORE_UID}.failed")).exists());
    assert!(!marker_dir.join(RESTORE_UID).exists());
    assert!(marker_dir.join(format!(".{RESTORE_UID}.reserved")).is_file(), "{}", first.stderr);
    // Really full: nothing more fits.
    let e = std::fs::write(view.join("probe"), vec![1u8; 64 << 10]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(28), "{e}");
    let _ = std::fs::remove_file(view.join("probe"));
    assert!(helper.try_wait().unwrap().is_none(), "the helper must keep waiting while a retry follows");

    // Attempt 1, the last: fails the same way, and the failure marker fits in the reserved room.
    let last = restore(&f, &ns, &volume, "1");
    let job_ended = Instant::now();
    assert_eq!(last.code, 1, "{}", last.stderr);
    let RestoreOutcome::Failed(failed) = &last.outcome else { panic!("{:?}\n{}", last.outcome, last.stderr) };
    assert!(failed.is_final);
    assert!(failed.reason.contains("no space left on device"), "{}", failed.reason);
    let marker = std::fs::read_to_string(marker_dir.join(format!("{RESTORE_UID}.failed")))
        .unwrap_or_else(|e| panic!("no failure marker ({e}); job stderr:\n{}", last.stderr));
    assert_eq!(marker, failed.reason);
    assert!(!marker_dir.join(format!(".{RESTORE_UID}.reserved")).exists(), "the reservation became the marker");
    assert!(!marker_dir.join(RESTORE_UID).exists());

    // The helper exits non-zero at once with the reason, not at its 300 s timeout.
    let status = loop {
        if let Some(status) = helper.try_wait().unwrap() {
            break status;
        }
        if job_ended.elapsed() > Duration::from_secs(20) {
            let _ = helper.kill();
            let _ = helper.wait();
            panic!("the helper did not exit within 20 s of the failure");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let waited = job_ended.elapsed();
    helper_log.extend(lines.try_iter());
    let helper_stderr = helper_log.join("\n");
    assert_eq!(status.code(), Some(1), "{helper_stderr}");
    assert!(waited < Duration::from_secs(5), "helper exited {waited:?} after the Job");
    let said = std::fs::read_to_string(&helper_termination).unwrap();
    assert!(said.contains("failed for volume mount") && said.contains("no space left on device"), "{said}");
    println!("helper exited {waited:?} after the Job: {said}");

    // Started afterwards, the helper finds the marker and exits at once.
    let started = Instant::now();
    let again = ns
        .enter(helper_binary())
        .env_clear()
        .env("CORACLE_RESTORE_UID", RESTORE_UID)
        .env("CORACLE_VOLUMES", "mount")
        .env("CORACLE_RESTORES_ROOT", mount.parent().unwrap())
        .env("CORACLE_TIMEOUT", "300s")
        .env("CORACLE_TERMINATION_LOG", f.root.join("termination-helper-2"))
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(String::from_utf8_lossy(&again.stderr).contains("no space left on device"));
}
