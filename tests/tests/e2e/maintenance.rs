//! The repository-maintenance Job binary against real restic: stale locks (a killed restic's lock
//! is removed, a live backup's lock never is, Job-pod hostnames judged against the live list), and
//! maintenance and a backup on one repository at the same time (both finish, nothing lost).

use anyhow::{bail, Context as _};
use coracle_events::MaintenanceCompleted;
use coracle_tests::binaries::workspace_bin;
use coracle_tests::nats::tools_path;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MASTER_KEY: &str = "maintenance-test-master-key-0123456789";
const NS: &str = "shop";

struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new() -> anyhow::Result<Self> {
        let repo = Repo { dir: tempfile::tempdir()? };
        repo.restic(&["init"])?;
        Ok(repo)
    }

    fn prefix(&self) -> PathBuf {
        self.dir.path().join("repos")
    }

    fn restic_cmd(&self, args: &[&str]) -> Command {
        let password = coracle_volume_job::namespace_password(MASTER_KEY.as_bytes(), NS, 1);
        let mut cmd = Command::new("restic");
        cmd.env("PATH", tools_path()).env("RESTIC_PASSWORD", password).arg("-r").arg(self.prefix().join(NS)).args(args);
        cmd
    }

    fn restic(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.restic_cmd(args).output()?;
        if !out.status.success() {
            bail!("restic {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn locks(&self) -> anyhow::Result<Vec<String>> {
        Ok(self.restic(&["list", "locks", "--no-lock"])?.lines().map(String::from).collect())
    }

    /// A `restic backup --stdin` that holds its lock until its input is closed; `hostname` runs it in
    /// its own UTS namespace under that hostname (as a Job pod would be).
    fn live_backup(&self, hostname: Option<&str>) -> anyhow::Result<Child> {
        let mut cmd = match hostname {
            None => self.restic_cmd(&["backup", "--stdin", "--stdin-filename", "stream.bin"]),
            Some(h) => {
                let inner = self.restic_cmd(&["backup", "--stdin", "--stdin-filename", "stream.bin"]);
                let mut cmd = Command::new("unshare");
                cmd.arg("--uts").arg("sh").arg("-c").arg(format!("hostname {h} && exec \"$@\"")).arg("sh");
                cmd.arg(inner.get_program()).args(inner.get_args());
                for (k, v) in inner.get_envs() {
                    if let Some(v) = v {
                        cmd.env(k, v);
                    }
                }
                cmd
            }
        };
        let child = cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        Ok(child)
    }

    /// Waits until the repository holds `n` locks.
    fn wait_locks(&self, n: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.locks()?.len() < n {
            if Instant::now() > deadline {
                bail!("expected {n} locks, have {:?}", self.locks()?);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Runs `coracle-volume-job maintain` as a maintenance Job would.
    fn maintain(&self, env: &[(&str, &str)]) -> anyhow::Result<(i32, MaintenanceCompleted)> {
        let termination = self.dir.path().join(format!("termination-{}", uuid::Uuid::new_v4()));
        let out = Command::new(workspace_bin("coracle-volume-job")?)
            .arg("maintain")
            .env("PATH", tools_path())
            .env("CORACLE_MASTER_KEY", MASTER_KEY)
            .env("CORACLE_REPOSITORY_PREFIX", self.prefix())
            .env("CORACLE_MAINTENANCE_NAMESPACE", NS)
            .env("CORACLE_JOB_NAME", "coracle-maintain-test")
            .env("CORACLE_TERMINATION_LOG", &termination)
            .envs(env.iter().copied())
            .output()?;
        let text = std::fs::read_to_string(&termination).context("termination message")?;
        assert!(!text.contains(MASTER_KEY), "no secret in the termination message");
        let outcome: MaintenanceCompleted = serde_json::from_str(&text)?;
        if outcome.failure.is_some() {
            eprintln!("maintain stderr: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok((out.status.code().unwrap_or(-1), outcome))
    }
}

fn finish(mut child: Child, data: &[u8]) -> anyhow::Result<()> {
    child.stdin.take().context("stdin")?.write_all(data)?;
    let status = child.wait()?;
    if !status.success() {
        bail!("backup exited with {status}");
    }
    Ok(())
}

fn kill(mut child: Child) -> anyhow::Result<()> {
    child.kill()?;
    child.wait()?;
    Ok(())
}

fn has_unshare() -> bool {
    Command::new("unshare").args(["--uts", "true"]).status().is_ok_and(|s| s.success())
}

#[test]
fn a_killed_backups_lock_is_removed_and_a_live_ones_never() -> anyhow::Result<()> {
    let repo = Repo::new()?;
    // A killed backup on this host (dead pid) and a live one.
    let killed = repo.live_backup(None)?;
    repo.wait_locks(1)?;
    kill(killed)?;
    let live = repo.live_backup(None)?;
    repo.wait_locks(2)?;
    let mut expected_removed = 1;
    let mut live_pods = Vec::new();
    if has_unshare() {
        // Locks of Job pods (hostname = pod name): one whose pod is gone, one whose pod is alive.
        let gone = repo.live_backup(Some("coracle-backup-gone-0"))?;
        repo.wait_locks(3)?;
        kill(gone)?;
        live_pods.push(repo.live_backup(Some("coracle-backup-live-0"))?);
        repo.wait_locks(4)?;
        expected_removed += 1;
    }
    let before = repo.locks()?;
    // The live pods were listed after every lock was written.
    let listed_at = (chrono::Utc::now() + chrono::Duration::minutes(5)).to_rfc3339();
    let (code, outcome) = repo.maintain(&[
        ("CORACLE_LIVE_HOSTS", "coracle-backup-live-0,coracle-maintain-test-0"),
        ("CORACLE_LIVE_HOSTS_AT", &listed_at),
    ])?;
    assert_eq!((code, outcome.failure.as_deref()), (0, None), "{outcome:?}");
    assert_eq!(outcome.stale_locks_removed, expected_removed);
    let after = repo.locks()?;
    assert_eq!(after.len(), before.len() - expected_removed as usize, "{before:?} -> {after:?}");
    assert!(after.iter().all(|l| before.contains(l)));

    // The live backups were not disturbed: they finish and their data is in the repository.
    finish(live, b"live data\n")?;
    for p in live_pods {
        finish(p, b"live pod data\n")?;
    }
    let snapshots: Vec<serde_json::Value> = serde_json::from_str(&repo.restic(&["snapshots", "--json"])?)?;
    assert_eq!(snapshots.len(), expected_removed as usize, "each live backup made its snapshot");
    assert!(repo.locks()?.is_empty(), "nothing left behind");
    // Again: no lock is judged stale now.
    let (_, again) = repo.maintain(&[])?;
    assert_eq!(again.stale_locks_removed, 0);
    Ok(())
}

#[test]
fn maintenance_and_a_backup_on_one_repository_both_finish() -> anyhow::Result<()> {
    let repo = Repo::new()?;
    let data = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))?;
    let first = repo.live_backup(None)?;
    finish(first, &data)?;
    // A backup is running (holding its lock) when prune and check start; it ends a little later.
    let running = repo.live_backup(None)?;
    repo.wait_locks(1)?;
    let maintain = {
        let prefix = repo.prefix();
        let dir = repo.dir.path().to_path_buf();
        std::thread::spawn(move || {
            let r = Repo { dir: tempfile::TempDir::new_in(&dir).expect("tmp") };
            let termination = r.dir.path().join("termination");
            let out = Command::new(workspace_bin("coracle-volume-job").expect("bin"))
                .arg("maintain")
                .env("PATH", tools_path())
                .env("CORACLE_MASTER_KEY", MASTER_KEY)
                .env("CORACLE_REPOSITORY_PREFIX", prefix)
                .env("CORACLE_MAINTENANCE_NAMESPACE", NS)
                .env("CORACLE_JOB_NAME", "coracle-maintain-test")
                .env("CORACLE_TERMINATION_LOG", &termination)
                .env("CORACLE_PRUNE", "true")
                .env("CORACLE_CHECK", "true")
                .env("CORACLE_CHECK_READ_DATA_SUBSET", "100%")
                .output()
                .expect("maintain runs");
            (out.status.code(), std::fs::read_to_string(termination).unwrap_or_default())
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    // And a second backup arrives while maintenance holds (or waits for) the exclusive lock.
    let arriving = repo.restic_cmd(&["backup", "--retry-lock", "2m", "--stdin", "--stdin-filename", "late.bin"]);
    let mut arriving = arriving_spawn(arriving)?;
    finish(running, b"the running backup's data\n")?;
    arriving.stdin.take().context("stdin")?.write_all(b"late data\n")?;
    assert!(arriving.wait()?.success(), "the backup arriving during maintenance finished");
    let (code, text) = maintain.join().map_err(|_| anyhow::anyhow!("maintain thread"))?;
    let outcome: MaintenanceCompleted = serde_json::from_str(&text).context(text.clone())?;
    assert_eq!(code, Some(0), "{outcome:?}");
    assert!(outcome.pruned && outcome.check_passed == Some(true), "{outcome:?}");
    let snapshots: Vec<serde_json::Value> = serde_json::from_str(&repo.restic(&["snapshots", "--json"])?)?;
    assert_eq!(snapshots.len(), 3, "nothing lost");
    repo.restic(&["check", "--read-data"])?;
    Ok(())
}

fn arriving_spawn(mut cmd: Command) -> anyhow::Result<Child> {
    Ok(cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?)
}
