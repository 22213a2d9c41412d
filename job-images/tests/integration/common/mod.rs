//! Helpers shared by the integration tests: finding the real tools (scripts/install-tools.sh
//! puts them in .tools/bin), running restic directly to check results, making restic exit 3
//! even when the tests run as root, a real nats-server, and the secret-leak check every run of
//! the job binary goes through.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub const PASSWORD: &str = "test-password-0123456789";

/// A temporary root holding a fake kubelet pods tree (`pods/`), the repositories (`repos/`) and
/// restic's cache.
pub struct Fixture {
    pub _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub restic: PathBuf,
}

impl Fixture {
    pub fn new(restic: &Path) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        Fixture { _tmp: tmp, root, restic: restic.to_path_buf() }
    }

    pub fn pods(&self) -> PathBuf {
        self.root.join("pods")
    }

    pub fn repo(&self, namespace: &str) -> PathBuf {
        self.root.join("repos").join(namespace)
    }

    pub fn pod_dir(&self, pod_uid: &str) -> PathBuf {
        self.pods().join(pod_uid)
    }

    pub fn csi_mount(&self, pod_uid: &str, pv: &str) -> PathBuf {
        self.pod_dir(pod_uid).join("volumes/kubernetes.io~csi").join(pv).join("mount")
    }

    /// The job binary with the environment every Job index gets; callers add the rest.
    pub fn job(&self, subcommand: &str, job_name: &str, master_key: &str, termination: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_coracle-volume-job"));
        cmd.arg(subcommand)
            .env_clear()
            .env("PATH", path_env())
            .env("JOB_COMPLETION_INDEX", "0")
            .env("CORACLE_JOB_NAME", job_name)
            .env("CORACLE_REPOSITORY_PREFIX", self.root.join("repos"))
            .env("CORACLE_MASTER_KEY", master_key)
            .env("CORACLE_TERMINATION_LOG", termination)
            .env("CORACLE_RESTIC", &self.restic)
            .env("RESTIC_CACHE_DIR", self.root.join("cache"))
            .env("CORACLE_LOG", "debug");
        cmd
    }
}

/// One run of the job binary: its exit code, output and parsed termination message.
pub struct Run<O> {
    pub code: i32,
    pub outcome: O,
    pub stdout: String,
    pub stderr: String,
    pub termination: String,
}

impl Fixture {
    /// Backs up pod `pod_uid`'s volume `data` (PVC `data-db-0` on the CSI PV `pv-1`, namespace `shop`)
    /// with the backup subcommand, as the restore tests start; returns the snapshot id ("" for an
    /// empty volume).
    pub fn backup_pv1(&self, pod_uid: &str, job: &str, master_key: &str) -> String {
        const PVC_UID: &str = "7d9e0c52-1111-2222-3333-444455556666";
        let volume = coracle_events::PlannedVolume {
            namespace: "shop".into(),
            pod: "db-0".into(),
            pod_uid: pod_uid.into(),
            volume: "data".into(),
            node: "node-1".into(),
            source: coracle_events::VolumeSource::Pvc,
            pvc: Some("data-db-0".into()),
            pvc_uid: Some(PVC_UID.into()),
            pv: Some("pv-1".into()),
            dir: "pv-1".into(),
            identity: format!("pvc:{PVC_UID}"),
        };
        let termination = self.root.join("termination-backup");
        let run: Run<coracle_events::VolumeOutcome> = run_job(
            self.job("backup", job, master_key, &termination)
                .env("CORACLE_VOLUMES", serde_json::to_string(&[volume]).unwrap())
                .env("CORACLE_BACKUP_NAME", "nightly")
                .env("CORACLE_BACKUP_UID", "b0a5e7d2-0000-4111-8222-333344445555")
                .env("CORACLE_PODS_ROOT", self.pods()),
            &termination,
            master_key,
        );
        assert_eq!(run.code, 0, "backup failed:\n{}", run.stderr);
        let coracle_events::VolumeOutcome::Completed(completed) = run.outcome else {
            panic!("{:?}\n{}", run.outcome, run.stderr)
        };
        completed.snapshot_id
    }
}

/// Runs a job command, reads its termination message, and checks that no secret leaked into
/// anything it wrote.
pub fn run_job<O: serde::de::DeserializeOwned>(cmd: &mut Command, termination: &Path, master_key: &str) -> Run<O> {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let message = std::fs::read_to_string(termination)
        .unwrap_or_else(|e| panic!("no termination message ({e}); stderr:\n{stderr}"));
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        outcome: serde_json::from_str(&message).unwrap(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
        termination: message,
    };
    let texts = [("stdout", run.stdout.as_str()), ("stderr", &run.stderr), ("termination", &run.termination)];
    assert_no_secrets(master_key, &["shop"], &texts);
    run
}

pub fn tools_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin")
}

/// PATH with .tools/bin first, so `cargo test` works without PATH tweaks.
pub fn path_env() -> String {
    format!("{}:{}", tools_bin().display(), std::env::var("PATH").unwrap_or_default())
}

fn find(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&path_env()).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// restic (>= 0.15 from .tools/bin or PATH). Required: run scripts/install-tools.sh.
pub fn restic() -> PathBuf {
    find("restic").expect("restic not found in .tools/bin or PATH: run scripts/install-tools.sh")
}

/// restic 0.14 (Debian 12), when installed; prints why a test is skipped otherwise.
pub fn restic_014(test: &str) -> Option<PathBuf> {
    let found = find("restic-0.14");
    if found.is_none() {
        println!("SKIPPED {test}: restic-0.14 not found in .tools/bin or PATH (scripts/install-tools.sh fetches it)");
    }
    found
}

/// Every restic this machine has: (label, program).
pub fn restics(test: &str) -> Vec<(&'static str, PathBuf)> {
    let mut all = vec![("restic", restic())];
    if let Some(old) = restic_014(test) {
        all.push(("restic-0.14", old));
    }
    all
}

pub fn version(program: &Path) -> String {
    let out = Command::new(program).arg("version").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs restic directly against `repo`; returns (exit code, stdout, stderr).
pub fn raw(program: &Path, repo: &Path, password: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(program)
        .arg("--no-cache")
        .args(args)
        .env("RESTIC_REPOSITORY", repo)
        .env("RESTIC_PASSWORD", password)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn snapshots_json(program: &Path, repo: &Path, password: &str) -> Vec<serde_json::Value> {
    let (code, out, err) = raw(program, repo, password, &["snapshots", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

/// A restic that cannot read mode-000 files. Tests run as root here, and root reads
/// everything through CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, so restic is started through
/// `setpriv` with both dropped from its bounding set. `None` (with a message) if impossible.
pub fn restic_without_dac(program: &Path, dir: &Path, test: &str) -> Option<PathBuf> {
    if !is_root() {
        return Some(program.to_path_buf());
    }
    let ok = Command::new("setpriv")
        .args(["--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("SKIPPED {test}: running as root and setpriv cannot drop CAP_DAC_OVERRIDE");
        return None;
    }
    let wrapper = dir.join(format!("{}-without-dac", program.file_name().unwrap().to_string_lossy()));
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec setpriv --bounding-set=-dac_override,-dac_read_search \
             --inh-caps=-dac_override,-dac_read_search {} \"$@\"\n",
            program.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    Some(wrapper)
}

/// A directory with files restic backs up.
pub fn write_files(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.txt"), "hello coracle\n").unwrap();
    std::fs::write(dir.join("sub/b.bin"), vec![7u8; 300_000]).unwrap();
}

/// Fails if the master key or a namespace password derived from it appears in any of `texts`
/// (what, text); a termination message must also fit Kubernetes' 4096 bytes.
pub fn assert_no_secrets(master_key: &str, namespaces: &[&str], texts: &[(&str, &str)]) {
    for (what, text) in texts {
        assert!(!text.contains(master_key), "master key in {what}: {text}");
        for namespace in namespaces {
            let password = coracle_volume_job::namespace_password(master_key.as_bytes(), namespace, 1);
            assert!(!text.contains(&password), "repository password of {namespace} in {what}: {text}");
        }
        if *what == "termination" {
            assert!(text.len() <= 4096, "termination message of {} bytes", text.len());
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A nats-server with JetStream, killed by pid when dropped.
pub struct NatsServer {
    child: std::process::Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// `None` (with a message naming `test`) when nats-server is not installed.
    pub fn start(test: &str) -> Option<Self> {
        let bin = tools_bin().join("nats-server");
        if !bin.is_file() {
            println!("SKIPPED {test}: nats-server not in .tools/bin");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // From here on Drop kills and reaps it, whatever happens.
        let server = NatsServer { child, url: format!("nats://127.0.0.1:{port}"), _dir: dir };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("nats-server did not start on {}", server.url);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every event in the stream (a handful, in these tests), read by sequence number.
pub async fn stream_events(js: &async_nats::jetstream::Context, stream: &str) -> Vec<coracle_events::CloudEvent> {
    let stream = js.get_stream(stream).await.unwrap();
    let count = stream.cached_info().state.messages;
    let mut out = Vec::new();
    for seq in 1..=count {
        let msg = stream.get_raw_message(seq).await.unwrap();
        out.push(coracle_events::CloudEvent::parse(&msg.payload).unwrap());
    }
    out
}
