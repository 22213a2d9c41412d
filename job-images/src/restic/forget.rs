//! Repository maintenance commands: `forget` (by snapshot id), `prune`, `check`, and the key
//! commands key rotation needs. Each returns restic's scrubbed failure on error.

use super::{Restic, ResticError};
use crate::keys::RepositoryPassword;
use serde::Deserialize;
use std::io::Write;

/// One key of the repository, as `restic key list --json` prints it (0.14 prints short ids).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KeyInfo {
    pub id: String,
    #[serde(default)]
    pub current: bool,
}

/// What `restic check` concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    Passed,
    /// restic found errors; the tail of what it said.
    Failed(String),
}

impl Restic {
    async fn run_ok(&self, command: &str, args: &[&str]) -> Result<String, ResticError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = self.output(&args).await?;
        if !out.success() {
            return Err(self.failed(command, &out));
        }
        Ok(out.stdout)
    }

    /// `restic forget ID...`: removes exactly these snapshots (no policy, nothing else).
    pub async fn forget(&self, ids: &[String]) -> Result<(), ResticError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut args = vec!["forget"];
        args.extend(ids.iter().map(String::as_str));
        self.run_ok("forget", &args).await.map(|_| ())
    }

    /// `restic prune`: deletes data no snapshot references any more (exclusive lock).
    pub async fn prune(&self) -> Result<(), ResticError> {
        self.run_ok("prune", &["prune"]).await.map(|_| ())
    }

    /// `restic check [--read-data-subset S]`. restic exits 1 both when it finds errors and when it
    /// cannot run; a lock conflict is returned as an error so the caller can retry.
    pub async fn check(&self, read_data_subset: Option<&str>) -> Result<CheckResult, ResticError> {
        let mut args = vec!["check".to_string()];
        if let Some(subset) = read_data_subset.filter(|s| !s.trim().is_empty()) {
            args.push(format!("--read-data-subset={}", subset.trim()));
        }
        let out = self.output(&args).await?;
        if out.success() {
            return Ok(CheckResult::Passed);
        }
        if is_lock_conflict(&out.stderr) || out.code != Some(1) {
            return Err(self.failed("check", &out));
        }
        Ok(CheckResult::Failed(super::tail(&format!("{}\n{}", out.stdout, out.stderr))))
    }

    /// `restic key list --json`.
    pub async fn keys(&self) -> Result<Vec<KeyInfo>, ResticError> {
        let out = self.run_ok("key list", &["key", "list", "--json"]).await?;
        serde_json::from_str(&out)
            .map_err(|e| ResticError::Output { command: "key list".into(), reason: e.to_string() })
    }

    /// `restic key add`: adds `new` as a further key. The new password reaches restic through a
    /// private file that is deleted when this returns (restic reads no new password from the
    /// environment).
    pub async fn add_key(&self, new: &RepositoryPassword) -> Result<(), ResticError> {
        let dir = std::env::temp_dir();
        let mut file = tempfile_in(&dir).map_err(|source| ResticError::Local { path: dir.clone(), source })?;
        file.1
            .write_all(new.expose().as_bytes())
            .map_err(|source| ResticError::Local { path: file.0.clone(), source })?;
        let path = file.0.display().to_string();
        let result = self.run_ok("key add", &["key", "add", "--new-password-file", &path]).await;
        let _ = std::fs::remove_file(&file.0);
        result.map(|_| ())
    }

    /// `restic key remove ID` (restic refuses to remove the key it was opened with).
    pub async fn remove_key(&self, id: &str) -> Result<(), ResticError> {
        self.run_ok("key remove", &["key", "remove", id]).await.map(|_| ())
    }
}

/// A new file readable only by this user, created exclusively under a random name.
fn tempfile_in(dir: &std::path::Path) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    for attempt in 0..16u32 {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let path = dir.join(format!(".coracle-key-{}-{nanos}-{attempt}", std::process::id()));
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "no free temporary file name"))
}

/// restic's words for "another process holds a conflicting lock" (0.14 to 0.18).
pub fn is_lock_conflict(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("repository is already locked") || s.contains("unable to create lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_conflicts_are_recognised() {
        assert!(is_lock_conflict("unable to create lock in backend: repository is already locked by PID 7 on h"));
        assert!(is_lock_conflict("Fatal: unable to create lock in backend: repository is already locked exclusively"));
        assert!(!is_lock_conflict("Fatal: wrong password or no key found"));
    }
}
