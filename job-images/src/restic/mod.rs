//! A small adapter over the restic command line, shared by backup and restore.
//!
//! The password reaches restic only through `RESTIC_PASSWORD` in the child's environment and
//! the repository through `RESTIC_REPOSITORY` (repository URLs can carry credentials); the
//! master key is removed from the child's environment; everything restic prints that is kept
//! for messages goes through a [`Scrubber`].

pub mod backup;
pub mod forget;
mod init;
pub mod json;
pub mod locks;
pub mod restore;
pub mod snapshots;
mod stream;

pub use backup::{BackupOptions, BackupRun};
pub use init::{says_repository_missing, RepositoryState};
pub use restore::{RestoreOptions, RestoreRun};
pub use snapshots::{Snapshot, SnapshotFilter};

use crate::keys::RepositoryPassword;
use crate::scrub::{redact_url_credentials, Scrubber};
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// restic backends addressed as `<backend>:…`; anything else is a local path.
const REMOTE_BACKENDS: [&str; 8] = ["sftp", "rest", "s3", "azure", "gs", "b2", "swift", "rclone"];
/// Variables that must not reach restic: they would override the password/repository we set,
/// or are secrets restic has no use for (every `CORACLE_*` variable is removed as well).
const ENV_REMOVED: [&str; 6] = [
    "CORACLE_MASTER_KEY",
    "RESTIC_PASSWORD_FILE",
    "RESTIC_PASSWORD_COMMAND",
    "RESTIC_REPOSITORY_FILE",
    "RESTIC_KEY_HINT",
    "RESTIC_FROM_PASSWORD",
];
/// Most stderr lines kept for a failure reason.
const TAIL_LINES: usize = 12;
const TAIL_BYTES: usize = 1500;

#[derive(Debug, thiserror::Error)]
pub enum ResticError {
    #[error("cannot run restic ({program}): {source}")]
    Spawn { program: String, source: io::Error },
    #[error("reading restic's output: {0}")]
    Io(#[from] io::Error),
    #[error("restic {command} failed ({status}){}", detail_suffix(.detail))]
    Command { command: String, code: Option<i32>, status: String, detail: String },
    #[error("restic {command} printed output that is not understood: {reason}")]
    Output { command: String, reason: String },
    #[error(
        "repository {repository} cannot be opened: {detail}. If it was just created, several Jobs initialised it at \
         the same time and it holds no data yet: delete it so the next attempt creates it again"
    )]
    Damaged { repository: String, detail: String },
    #[error("invalid repository {0:?}")]
    Repository(String),
    #[error("cannot prepare repository {path}: {source}")]
    Local { path: PathBuf, source: io::Error },
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

/// What restic's exit codes mean (0.17+ documents them; 0.14 uses 0, 1 and 3).
pub fn exit_code_meaning(code: i32) -> &'static str {
    match code {
        0 => "success",
        1 => "fatal error",
        2 => "restic crashed",
        3 => "some source files could not be read",
        10 => "repository does not exist",
        11 => "failed to lock repository",
        12 => "wrong password",
        130 => "interrupted",
        _ => "unknown exit code",
    }
}

fn status_text(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("exit code {c}: {}", exit_code_meaning(c)),
        None => "killed by a signal".to_string(),
    }
}

/// Where a repository lives: local paths are handled specially (absolute paths, atomic init).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repository {
    Local(PathBuf),
    Remote(String),
}

impl Repository {
    /// Parses a restic repository string. Relative local paths are made absolute now, because
    /// restic runs with the volume as its working directory.
    pub fn parse(location: &str) -> Result<Self, ResticError> {
        if location.trim().is_empty() || location.contains('\0') {
            return Err(ResticError::Repository(redact_url_credentials(location)));
        }
        if let Some((scheme, _)) = location.split_once(':') {
            if REMOTE_BACKENDS.contains(&scheme) {
                return Ok(Repository::Remote(location.to_string()));
            }
        }
        let path = Path::new(location.strip_prefix("local:").unwrap_or(location));
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|source| ResticError::Local { path: path.to_path_buf(), source })?
                .join(path)
        };
        Ok(Repository::Local(path))
    }

    /// The repository of a namespace: `<prefix>/<namespace>`.
    pub fn for_namespace(prefix: &str, namespace: &str) -> Result<Self, ResticError> {
        if prefix.trim().is_empty() {
            return Err(ResticError::Repository(prefix.to_string()));
        }
        Self::parse(&format!("{}/{namespace}", prefix.trim_end_matches('/')))
    }

    fn location(&self) -> OsString {
        match self {
            Repository::Local(p) => p.clone().into_os_string(),
            Repository::Remote(s) => s.into(),
        }
    }
}

impl fmt::Display for Repository {
    /// Safe to log: URL credentials are masked.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Repository::Local(p) => write!(f, "{}", p.display()),
            Repository::Remote(s) => f.write_str(&redact_url_credentials(s)),
        }
    }
}

/// What a short restic command left behind.
#[derive(Debug)]
pub(crate) struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    /// Scrubbed.
    pub stderr: String,
}

impl Output {
    pub(crate) fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// restic's version, as `restic version` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResticVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl fmt::Display for ResticVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl ResticVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        ResticVersion { major, minor, patch }
    }

    /// Parses `restic 0.14.0 compiled with go1.19.8 on linux/amd64`.
    pub fn parse(text: &str) -> Option<Self> {
        Self::parse_number(text.split_whitespace().skip_while(|w| *w != "restic").nth(1)?)
    }

    /// Parses a bare version: `0.18.0`, `0.16`, or a Debian package version such as `0.18.0-1+b4`.
    pub fn parse_number(word: &str) -> Option<Self> {
        let mut parts = word.trim().split(['.', '-', '+']).map(|p| p.parse::<u32>().ok());
        Some(ResticVersion { major: parts.next()??, minor: parts.next()??, patch: parts.next().flatten().unwrap_or(0) })
    }
}

/// One repository, opened with one password.
#[derive(Debug, Clone)]
pub struct Restic {
    program: PathBuf,
    repository: Repository,
    password: RepositoryPassword,
    scrubber: Scrubber,
    retry_lock: Option<Duration>,
}

impl Restic {
    /// `program` is the restic binary (a bare name is looked up on PATH). The scrubber starts
    /// with the password and credential-like variables of this process's environment.
    pub fn new(program: impl Into<PathBuf>, repository: Repository, password: RepositoryPassword) -> Self {
        let mut scrubber = Scrubber::from_env();
        scrubber.add(password.expose());
        Restic { program: program.into(), repository, password, scrubber, retry_lock: None }
    }

    /// Waits up to `wait` for a conflicting lock (a concurrent `prune`) instead of failing at
    /// once. Only for restic >= 0.16, which added `--retry-lock`.
    pub fn with_retry_lock(mut self, wait: Duration) -> Self {
        self.retry_lock = Some(wait);
        self
    }

    /// Whether restic itself waits for a conflicting lock ([`Restic::with_retry_lock`]).
    pub fn waits_for_locks(&self) -> bool {
        self.retry_lock.is_some()
    }

    /// Adds a value that must never appear in anything kept from restic's output.
    pub fn add_secret(&mut self, secret: &str) {
        self.scrubber.add(secret);
    }

    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    pub fn scrubber(&self) -> &Scrubber {
        &self.scrubber
    }

    /// The same restic and password on another repository.
    pub fn with_repository(&self, repository: Repository) -> Self {
        Restic { repository, ..self.clone() }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        if let Some(wait) = self.retry_lock {
            cmd.arg("--retry-lock").arg(format!("{}s", wait.as_secs()));
        }
        cmd.env("RESTIC_REPOSITORY", self.repository.location())
            .env("RESTIC_PASSWORD", self.password.expose())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for name in ENV_REMOVED {
            cmd.env_remove(name);
        }
        // Coracle's own settings (the NATS URL may hold credentials) are none of restic's business.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CORACLE_") {
                cmd.env_remove(name);
            }
        }
        cmd
    }

    fn spawn_error(&self, source: io::Error) -> ResticError {
        ResticError::Spawn { program: self.program.display().to_string(), source }
    }

    /// Runs a short command to completion.
    pub(crate) async fn output(&self, args: &[String]) -> Result<Output, ResticError> {
        let out = self
            .command()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|e| self.spawn_error(e))?;
        Ok(Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: self.scrubber.scrub(&String::from_utf8_lossy(&out.stderr)),
        })
    }

    pub(crate) fn failed(&self, command: &str, out: &Output) -> ResticError {
        ResticError::Command {
            command: command.to_string(),
            code: out.code,
            status: status_text(out.code),
            detail: tail(&out.stderr),
        }
    }

    /// `restic version`.
    pub async fn version(&self) -> Result<ResticVersion, ResticError> {
        let out = self.output(&["version".to_string()]).await?;
        if !out.success() {
            return Err(self.failed("version", &out));
        }
        ResticVersion::parse(&out.stdout)
            .ok_or_else(|| ResticError::Output { command: "version".into(), reason: tail(&out.stdout) })
    }

    /// `restic snapshots --json` with a filter.
    pub async fn snapshots(&self, filter: &SnapshotFilter) -> Result<Vec<Snapshot>, ResticError> {
        let out = self.snapshots_output(filter).await?;
        if !out.success() {
            return Err(self.failed("snapshots", &out));
        }
        parse_listed(&out)
    }

    async fn snapshots_output(&self, filter: &SnapshotFilter) -> Result<Output, ResticError> {
        let mut args = vec!["snapshots".to_string(), "--json".to_string()];
        args.extend(filter.args());
        self.output(&args).await
    }

    /// The newest snapshot matching a filter.
    pub async fn latest_snapshot(&self, filter: &SnapshotFilter) -> Result<Option<Snapshot>, ResticError> {
        Ok(snapshots::newest(self.snapshots(filter).await?))
    }

    /// Like [`Restic::latest_snapshot`], but `Ok(None)` when the repository does not exist yet: one
    /// restic run both checks the repository and finds a backup's parent.
    pub async fn latest_snapshot_if_repository(
        &self,
        filter: &SnapshotFilter,
    ) -> Result<Option<Option<Snapshot>>, ResticError> {
        let out = self.snapshots_output(filter).await?;
        if out.success() {
            return Ok(Some(snapshots::newest(parse_listed(&out)?)));
        }
        if init::says_repository_missing(out.code, &out.stderr) {
            return Ok(None);
        }
        Err(self.failed("snapshots", &out))
    }

    /// The snapshot with this id or unique id prefix (e.g. restic 0.14's short ids).
    pub async fn find_snapshot(&self, id: &str) -> Result<Option<Snapshot>, ResticError> {
        let found = self.snapshots(&SnapshotFilter::new().id(id)).await?;
        Ok(found.into_iter().find(|s| s.id.starts_with(id)))
    }
}

fn parse_listed(out: &Output) -> Result<Vec<Snapshot>, ResticError> {
    snapshots::parse_snapshots(&out.stdout)
        .map_err(|e| ResticError::Output { command: "snapshots".into(), reason: e.to_string() })
}

/// restic's own words about a failure: 0.17+'s `exit_error`, else the tail of its plain-text
/// output (0.14).
pub fn restic_says(exit_error: Option<&json::ExitError>, text_tail: &str) -> Option<String> {
    let exit = exit_error.map(|e| e.message.trim().to_string()).filter(|m| !m.is_empty());
    let text = Some(text_tail.trim().to_string()).filter(|t| !t.is_empty());
    match (exit, text) {
        (Some(e), Some(t)) if !t.contains(&e) => Some(format!("{e} | {t}")),
        (Some(e), _) => Some(e),
        (None, t) => t,
    }
}

/// The last lines of some output, bounded, for error messages.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(TAIL_LINES);
    let joined = lines[start..].join(" | ");
    if joined.len() <= TAIL_BYTES {
        return joined;
    }
    let mut cut = joined.len() - TAIL_BYTES;
    while !joined.is_char_boundary(cut) {
        cut += 1;
    }
    format!("…{}", &joined[cut..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_kinds() {
        assert_eq!(Repository::parse("/srv/restic/ns").unwrap(), Repository::Local("/srv/restic/ns".into()));
        assert_eq!(Repository::parse("local:/srv/r").unwrap(), Repository::Local("/srv/r".into()));
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(Repository::parse("rel/repo").unwrap(), Repository::Local(cwd.join("rel/repo")));
        for remote in ["s3:s3.amazonaws.com/bucket/x", "rest:https://u:p@h/", "sftp:u@h:/srv", "rclone:r:path"] {
            assert_eq!(Repository::parse(remote).unwrap(), Repository::Remote(remote.into()));
        }
        assert!(Repository::parse("").is_err());
    }

    #[test]
    fn namespace_repositories() {
        assert_eq!(Repository::for_namespace("/backups/", "shop").unwrap(), Repository::Local("/backups/shop".into()));
        assert_eq!(
            Repository::for_namespace("s3:s3.example.com/bucket/coracle", "shop").unwrap(),
            Repository::Remote("s3:s3.example.com/bucket/coracle/shop".into())
        );
        assert_eq!(Repository::for_namespace("/", "shop").unwrap(), Repository::Local("/shop".into()));
        assert!(Repository::for_namespace("", "shop").is_err());
    }

    #[test]
    fn display_masks_credentials() {
        let r = Repository::parse("rest:https://user:hunter22@host:8000/ns").unwrap();
        assert_eq!(r.to_string(), "rest:https://***@host:8000/ns");
    }

    #[test]
    fn versions() {
        let v = ResticVersion::parse("restic 0.14.0 compiled with go1.19.8 on linux/amd64").unwrap();
        assert_eq!(v, ResticVersion { major: 0, minor: 14, patch: 0 });
        assert!(ResticVersion::parse("restic 0.18.1-dev (compiled manually) compiled with go").unwrap() > v);
        assert_eq!(ResticVersion::parse("nonsense"), None);
        // Bare, as an image stamps it.
        assert_eq!(ResticVersion::parse_number("0.18.0-1+b4"), Some(ResticVersion::new(0, 18, 0)));
        assert_eq!(ResticVersion::parse_number(" 0.16 "), Some(ResticVersion::new(0, 16, 0)));
        for bad in ["", "v0.18.0", "latest", "0"] {
            assert_eq!(ResticVersion::parse_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn tails_are_bounded() {
        let many: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let t = tail(&many);
        assert!(t.starts_with("line 88") && t.ends_with("line 99"), "{t}");
        let long = "é".repeat(5000);
        let t = tail(&long);
        assert!(t.len() <= TAIL_BYTES + 4, "{}", t.len());
    }
}
