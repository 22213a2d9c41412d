//! A real nats-server (>= 2.10, JetStream on) started for a test on a free port and a temporary store
//! directory, stopped by pid.

use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::process::signal;

/// How long nats-server gets to accept connections after starting.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a stopped nats-server gets to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// `<workspace>/.tools/bin`, where `scripts/install-tools.sh` puts nats-server and restic.
pub fn tools_bin() -> PathBuf {
    workspace_root().join(".tools/bin")
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `PATH` with `.tools/bin` first, for spawning restic, nats-server and workspace binaries.
pub fn tools_path() -> String {
    let rest = std::env::var("PATH").unwrap_or_default();
    format!("{}:{rest}", tools_bin().display())
}

/// Parses `nats-server: v2.10.27` into (2, 10).
fn parse_version(output: &str) -> Option<(u32, u32)> {
    let v = output.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn version_of(binary: &Path) -> anyhow::Result<(u32, u32)> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    parse_version(&text).with_context(|| format!("unrecognised `{} --version` output: {text:?}", binary.display()))
}

fn recent_enough(version: (u32, u32)) -> bool {
    version >= (2, 10)
}

/// The first usable nats-server: `.tools/bin`, then PATH.
fn find_nats_server() -> Option<PathBuf> {
    let mut candidates = vec![tools_bin().join("nats-server")];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
    }
    candidates.into_iter().find(|c| c.is_file() && version_of(c).is_ok_and(recent_enough))
}

/// Runs `scripts/install-tools.sh` at most once per process, and under a file lock across processes
/// (test binaries run in parallel).
fn install_tools() -> anyhow::Result<()> {
    static INSTALLED: Mutex<bool> = Mutex::new(false);
    let mut done = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return Ok(());
    }
    let root = workspace_root();
    let tools = root.join(".tools");
    std::fs::create_dir_all(&tools).with_context(|| format!("creating {}", tools.display()))?;
    let lock_path = tools.join("install.lock");
    let lock = File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    lock.lock().with_context(|| format!("locking {}", lock_path.display()))?;
    let out = Command::new("bash")
        .arg("scripts/install-tools.sh")
        .current_dir(&root)
        .output()
        .context("running scripts/install-tools.sh")?;
    if !out.status.success() {
        bail!(
            "scripts/install-tools.sh failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    *done = true;
    Ok(())
}

/// The nats-server binary to use, installing it into `.tools/bin` when none >= 2.10 is found.
pub fn nats_server_binary() -> anyhow::Result<PathBuf> {
    if let Some(found) = find_nats_server() {
        return Ok(found);
    }
    install_tools()?;
    let installed = tools_bin().join("nats-server");
    let version = version_of(&installed).context("nats-server after scripts/install-tools.sh")?;
    if !recent_enough(version) {
        bail!("{} is v{}.{}; Coracle needs nats-server >= 2.10", installed.display(), version.0, version.1);
    }
    Ok(installed)
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr().context("reading the free port")?.port())
}

/// A nats-server process with JetStream, owned by the test: killed by pid when dropped.
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// With [`NatsServer::start_with_accounts`]: the configuration file and each user's password.
    accounts: Option<(PathBuf, Vec<(String, String)>)>,
}

/// The users of `deploy/nats/accounts.conf` and the environment variable holding each one's password.
pub const ACCOUNT_USERS: [(&str, &str); 5] = [
    ("coracle-functions", "CORACLE_NATS_FUNCTIONS_PASSWORD"),
    ("coracle-jobs", "CORACLE_NATS_JOBS_PASSWORD"),
    ("coracle-restore-wait", "CORACLE_NATS_HELPER_PASSWORD"),
    ("coracle-triggers", "CORACLE_NATS_TRIGGERS_PASSWORD"),
    ("coracle-admin", "CORACLE_NATS_ADMIN_PASSWORD"),
];

impl NatsServer {
    /// Starts nats-server with JetStream on a free port and a fresh store directory, and waits until it
    /// accepts clients.
    pub fn start() -> anyhow::Result<Self> {
        let binary = nats_server_binary()?;
        let dir =
            tempfile::Builder::new().prefix("coracle-nats-").tempdir().context("creating the JetStream store dir")?;
        let mut server = Self { binary, port: free_port()?, dir, child: None, accounts: None };
        server.spawn()?;
        Ok(server)
    }

    /// Like [`NatsServer::start`], but with the per-component users of `deploy/nats/accounts.conf`
    /// (opt-in: every other test runs without authentication), each with a fresh random password
    /// handed to nats-server through its environment as in a deployment. [`NatsServer::url`] then
    /// has no credentials; [`NatsServer::url_as`] has a user's.
    pub fn start_with_accounts() -> anyhow::Result<Self> {
        let binary = nats_server_binary()?;
        let dir =
            tempfile::Builder::new().prefix("coracle-nats-").tempdir().context("creating the JetStream store dir")?;
        let accounts = workspace_root().join("deploy/nats/accounts.conf");
        let config = dir.path().join("nats.conf");
        // nats-server resolves `include` relative to the including file: the file is copied in whole.
        std::fs::copy(&accounts, &config).with_context(|| format!("copying {}", accounts.display()))?;
        // nats-server parses a variable's value as a config value: one starting with a digit would
        // be read as a number, so each password starts with a letter.
        let users = ACCOUNT_USERS
            .iter()
            .map(|(user, _)| (user.to_string(), format!("p{}", uuid::Uuid::new_v4().simple())))
            .collect();
        let mut server = Self { binary, port: free_port()?, dir, child: None, accounts: Some((config, users)) };
        server.spawn()?;
        Ok(server)
    }

    /// `nats://USER:PASSWORD@127.0.0.1:<port>` for a user of `deploy/nats/accounts.conf`.
    pub fn url_as(&self, user: &str) -> anyhow::Result<String> {
        let (_, users) = self.accounts.as_ref().context("nats-server was started without accounts")?;
        let (_, password) = users.iter().find(|(u, _)| u == user).with_context(|| format!("no NATS user {user}"))?;
        Ok(format!("nats://{user}:{password}@127.0.0.1:{}", self.port))
    }

    /// Every NATS password of this server (for checking that none leaks).
    pub fn passwords(&self) -> Vec<String> {
        self.accounts.iter().flat_map(|(_, users)| users.iter().map(|(_, p)| p.clone())).collect()
    }

    /// `nats://127.0.0.1:<port>`; the same across [`NatsServer::restart`].
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The running process' pid, `None` while stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The JetStream store directory (kept across restarts).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    /// The server's log (its stderr), appended across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("opening {}", self.log_path().display()))?;
        let mut cmd = Command::new(&self.binary);
        if let Some((config, users)) = &self.accounts {
            cmd.arg("-c").arg(config);
            for ((_, variable), (_, password)) in ACCOUNT_USERS.iter().zip(users) {
                cmd.env(variable, password);
            }
        }
        let child = cmd
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.store_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Waits until the port answers with a NATS INFO line announcing JetStream.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("checking nats-server")? {
                    self.child = None;
                    bail!("nats-server exited during startup ({status}); its log:\n{}", self.log_tail());
                }
            }
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                stream.set_read_timeout(Some(Duration::from_secs(2))).ok();
                let mut line = String::new();
                if BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("INFO ") {
                    if line.contains("\"jetstream\":true") {
                        return Ok(());
                    }
                    self.stop();
                    bail!("nats-server on port {} runs without JetStream: {line}", self.port);
                }
            }
            if Instant::now() > deadline {
                self.stop();
                bail!(
                    "nats-server did not accept connections on port {} within {START_TIMEOUT:?}; its log:\n{}",
                    self.port,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (SIGTERM, then SIGKILL after a timeout) and reaps it. The store directory stays.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal(child.id(), libc::SIGKILL);
        let _ = child.wait();
    }

    /// Kills the server at once (SIGKILL), as a crash would, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Stops the server if it runs and starts it again on the same port with the same store directory.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    /// Starts a stopped server again (same port and store directory).
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("nats-server is already running (pid {:?})", self.pid());
        }
        self.spawn()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("nats-server: v2.10.27"), Some((2, 10)));
        assert_eq!(parse_version("nats-server: v2.9.11\n"), Some((2, 9)));
        assert_eq!(parse_version("garbage"), None);
        assert!(recent_enough((2, 10)) && recent_enough((3, 0)) && !recent_enough((2, 9)));
        assert!(tools_path().starts_with(&tools_bin().display().to_string()));
    }
}
