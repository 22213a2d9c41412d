//! Creating a namespace's repository on first use, safe against Jobs racing to do it.
//!
//! Concurrent `restic init` of one repository is not safe by itself: each racer creates its
//! own master key and the last `config` written wins, so the other keys cannot decrypt it.
//! Every racer's `init` succeeds and afterwards every open may fail with "config or key … is
//! damaged" (observed with restic 0.14 and 0.18). "Already exists" errors only cover racers
//! that start late. So:
//! * local repositories are initialised in a private staging directory next to the target
//!   and renamed into place; rename(2) onto a non-empty directory fails, so exactly one
//!   racer's repository wins and the others discard theirs;
//! * remote backends have no such primitive: a random delay and a re-check narrow the window,
//!   and a damaged repository is reported as such (it holds no data yet and can be deleted).

use super::{Repository, Restic, ResticError};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How [`Restic::ensure_repository`] found the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepositoryState {
    Existed,
    /// This call created it.
    Created,
    /// Another Job created it while this one was trying to.
    CreatedConcurrently,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConfigState {
    Exists,
    Missing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InitOutcome {
    Created,
    AlreadyExists,
}

/// How long a remote racer waits for the winner to finish writing its config.
const VERIFY_ATTEMPTS: u32 = 5;
const VERIFY_DELAY: Duration = Duration::from_secs(1);
const MAX_JITTER_MS: u64 = 2000;

impl Restic {
    /// Makes sure the repository exists and opens with this password, creating it if needed.
    pub async fn ensure_repository(&self) -> Result<RepositoryState, ResticError> {
        if self.config_state().await? == ConfigState::Exists {
            return Ok(RepositoryState::Existed);
        }
        self.create_repository().await
    }

    /// Creates the repository another restic command just found missing (see
    /// [`says_repository_missing`]), without asking again; racing Jobs are handled as above.
    pub async fn create_repository(&self) -> Result<RepositoryState, ResticError> {
        match self.repository() {
            Repository::Local(path) => self.init_local(path).await,
            Repository::Remote(_) => self.init_in_place(true).await,
        }
    }

    /// `restic cat config`: whether the repository exists (and opens).
    async fn config_state(&self) -> Result<ConfigState, ResticError> {
        let out = self.output(&["cat".into(), "config".into()]).await?;
        if out.success() {
            return Ok(ConfigState::Exists);
        }
        let err = out.stderr.as_str();
        if says_repository_missing(out.code, err) {
            return Ok(ConfigState::Missing);
        }
        if ["is damaged", "ciphertext verification failed", "config cannot be loaded"].iter().any(|m| err.contains(m)) {
            return Err(ResticError::Damaged { repository: self.repository().to_string(), detail: super::tail(err) });
        }
        Err(self.failed("cat config", &out))
    }

    /// A plain `restic init`; "already exists" is reported, not an error.
    async fn init(&self) -> Result<InitOutcome, ResticError> {
        let out = self.output(&["init".into()]).await?;
        if out.success() {
            return Ok(InitOutcome::Created);
        }
        if out.stderr.contains("already exists") || out.stderr.contains("already initialized") {
            return Ok(InitOutcome::AlreadyExists);
        }
        Err(self.failed("init", &out))
    }

    async fn init_local(&self, path: &Path) -> Result<RepositoryState, ResticError> {
        let local_err = |source| ResticError::Local { path: path.to_path_buf(), source };
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(ResticError::Repository(path.display().to_string()));
        };
        tokio::fs::create_dir_all(parent).await.map_err(local_err)?;
        let staging = Staging {
            path: parent.join(format!(".{}.coracle-init-{}-{}", name.to_string_lossy(), std::process::id(), nanos())),
            keep: false,
        };
        if self.with_repository(Repository::Local(staging.path.clone())).init().await? != InitOutcome::Created {
            return Err(ResticError::Local {
                path: staging.path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "staging directory already in use"),
            });
        }
        match std::fs::rename(&staging.path, path) {
            Ok(()) => {
                staging.keep();
                Ok(RepositoryState::Created)
            }
            Err(e) => {
                drop(staging);
                // Usually another Job's repository is in place now; otherwise the target cannot
                // be replaced (a mount point, another filesystem) and restic must init in place.
                tracing::debug!(error = %e, "repository {} not renamed into place", path.display());
                match self.config_state().await? {
                    ConfigState::Exists => Ok(RepositoryState::CreatedConcurrently),
                    ConfigState::Missing => self.init_in_place(false).await,
                }
            }
        }
    }

    async fn init_in_place(&self, jitter: bool) -> Result<RepositoryState, ResticError> {
        if jitter {
            // Jobs started together would otherwise init in lockstep.
            tokio::time::sleep(Duration::from_millis(nanos() % MAX_JITTER_MS)).await;
            if self.config_state().await? == ConfigState::Exists {
                return Ok(RepositoryState::CreatedConcurrently);
            }
        }
        let outcome = self.init().await?;
        for attempt in 1..=VERIFY_ATTEMPTS {
            match self.config_state().await? {
                ConfigState::Exists => {
                    return Ok(match outcome {
                        InitOutcome::Created => RepositoryState::Created,
                        InitOutcome::AlreadyExists => RepositoryState::CreatedConcurrently,
                    })
                }
                // Another racer has written its key but not yet its config.
                ConfigState::Missing if attempt < VERIFY_ATTEMPTS => tokio::time::sleep(VERIFY_DELAY).await,
                ConfigState::Missing => {}
            }
        }
        Err(ResticError::Command {
            command: "init".into(),
            code: None,
            status: "no config after initialisation".into(),
            detail: format!("repository {} still has no config", self.repository()),
        })
    }
}

/// Whether a failed restic command (exit code and what it printed) found no repository at all:
/// 0.17+ exits 10; 0.14 exits 1 and only says so in text, differently per backend.
pub fn says_repository_missing(code: Option<i32>, text: &str) -> bool {
    code == Some(10)
        || [
            "repository does not exist",
            "Is there a repository at the following location?",
            "unable to open config file",
        ]
        .iter()
        .any(|m| text.contains(m))
}

/// Low bits of the clock mixed with the pid: enough to separate racers, no RNG needed.
fn nanos() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (t.as_nanos() as u64) ^ (u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// A staging repository, removed unless it was renamed into place.
struct Staging {
    path: PathBuf,
    keep: bool,
}

impl Staging {
    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.keep && self.path.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                tracing::warn!(error = %e, "cannot remove staging repository {}", self.path.display());
            }
        }
    }
}
