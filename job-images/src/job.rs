//! What every Job index shares, backup or restore: its error type and exit codes, the result
//! it reports, which attempt it is, picking its entry from the JSON list in the environment,
//! opening the namespace's repository, and noticing that the pod is being terminated.

use crate::cli::{parse_count, JobArgs};
use crate::keys::KeyError;
use crate::markers::MarkerError;
use crate::names::{self, NameError};
use crate::paths::PathError;
use crate::restic::{self, Repository, Restic, ResticError};
use crate::scrub::Scrubber;
use crate::tags::TagError;
use crate::termination;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

/// How long restic waits for a conflicting exclusive lock (a concurrent prune) before failing.
const RETRY_LOCK: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("invalid job settings: {0}")]
    Settings(String),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Tag(#[from] TagError),
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("repository {repository}: {source}")]
    Repository { repository: String, source: ResticError },
    #[error("{0}")]
    Restic(ResticError),
    #[error("{0}")]
    Backup(String),
    #[error("{0}")]
    Restore(String),
    #[error(transparent)]
    Marker(#[from] MarkerError),
    #[error("terminated by {0} before it finished (activeDeadlineSeconds reached or pod deleted)")]
    Terminated(&'static str),
}

impl JobError {
    /// 2 for errors a retry cannot fix (bad settings or names, a refused path), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            JobError::Settings(_) | JobError::Name(_) | JobError::Tag(_) | JobError::Key(_) => 2,
            JobError::Path(PathError::Name(_) | PathError::Escape { .. }) => 2,
            JobError::Marker(MarkerError::Unsafe { .. }) => 2,
            _ => 1,
        }
    }
}

/// What a finished index reports: the outcome also written to the termination message.
#[derive(Debug, Clone, PartialEq)]
pub struct JobResult<O = coracle_events::VolumeOutcome> {
    pub outcome: O,
    pub exit_code: i32,
    /// The termination message as written (`None` if writing failed).
    pub termination_message: Option<String>,
}

/// Which attempt of its index this run is, from the Job's own counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Failures of this index so far (0 on the first run).
    pub number: u32,
    pub backoff_limit: u32,
}

impl Attempt {
    /// Unparsable counters are logged and read as 0: the result must still be reported.
    pub fn from_args(args: &JobArgs) -> Self {
        let count = |name: &str, value: Option<&str>| {
            parse_count(name, value, 0).unwrap_or_else(|e| {
                tracing::warn!("{e}; assuming 0");
                0
            })
        };
        Attempt {
            number: count("CORACLE_ATTEMPT", args.attempt.as_deref()),
            backoff_limit: count("CORACLE_BACKOFF_LIMIT_PER_INDEX", args.backoff_limit_per_index.as_deref()),
        }
    }

    /// No retry follows a failure of this attempt.
    pub fn is_last(&self) -> bool {
        self.number >= self.backoff_limit
    }
}

/// A scrubber knowing credential-like environment values and the master key.
pub fn scrubber(args: &JobArgs) -> Scrubber {
    let mut scrubber = Scrubber::from_env();
    if let Ok(key) = args.master_key() {
        scrubber.add(&String::from_utf8_lossy(key.expose()));
    }
    scrubber
}

/// This index's entry of a JSON array in the environment (`variable`, also `--volumes`);
/// `what` names the entries in errors.
pub fn select_entry<T: DeserializeOwned>(
    index: Option<&str>,
    list: Option<&str>,
    variable: &str,
    what: &str,
) -> Result<T, JobError> {
    let index = index.map(str::trim).filter(|i| !i.is_empty());
    let index: usize = index
        .ok_or_else(|| JobError::Settings("JOB_COMPLETION_INDEX (--index) is not set".into()))?
        .parse()
        .map_err(|_| {
            JobError::Settings(format!("JOB_COMPLETION_INDEX {} is not an index", names::quote(index.unwrap_or(""))))
        })?;
    let raw = list
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| JobError::Settings(format!("{variable} (--volumes) is not set")))?;
    let entries: Vec<T> = serde_json::from_str(raw)
        .map_err(|e| JobError::Settings(format!("{variable} is not a JSON array of {what}: {e}")))?;
    let count = entries.len();
    entries.into_iter().nth(index).ok_or_else(|| {
        JobError::Settings(format!("JOB_COMPLETION_INDEX {index} is out of range: {variable} has {count} volumes"))
    })
}

/// restic on the repository of `namespace` (`<prefix>/<namespace>`), with that namespace's
/// derived password. The repository is not created here: a backup does that, a restore
/// must find it.
pub async fn open_repository(args: &JobArgs, namespace: &str) -> Result<Restic, JobError> {
    let master = args.master_key()?;
    if master.is_weak() {
        tracing::warn!("the master key is shorter than 16 bytes; use a long random key");
    }
    let generation = args.generation(namespace).map_err(JobError::Settings)?;
    let prefix = args
        .repository_prefix
        .as_deref()
        .filter(|p| !p.trim().is_empty())
        .ok_or_else(|| JobError::Settings("CORACLE_REPOSITORY_PREFIX (--repository-prefix) is not set".into()))?;
    let repository = Repository::for_namespace(prefix, namespace).map_err(|e| JobError::Settings(e.to_string()))?;
    let mut restic = Restic::new(&args.restic, repository, master.namespace_password(namespace, generation));
    restic.add_secret(&String::from_utf8_lossy(master.expose()));

    let version = restic_version(args, &restic).await?;
    tracing::info!("restic {version}, repository {}", restic.repository());
    if version < restic::ResticVersion::new(0, 14, 0) {
        tracing::warn!("restic {version} is older than 0.14, the oldest version Coracle is tested with");
    }
    if version >= restic::ResticVersion::new(0, 16, 0) {
        restic = restic.with_retry_lock(RETRY_LOCK);
    }
    Ok(restic)
}

/// The version the image stamped (CORACLE_RESTIC_VERSION), or restic's own answer when none is
/// stamped or the stamp is not a version.
async fn restic_version(args: &JobArgs, restic: &Restic) -> Result<restic::ResticVersion, JobError> {
    if let Some(stamped) = args.restic_version.as_deref().filter(|v| !v.trim().is_empty()) {
        match restic::ResticVersion::parse_number(stamped) {
            Some(version) => return Ok(version),
            None => tracing::warn!("CORACLE_RESTIC_VERSION {stamped:?} is not a version such as 0.18.0; asking restic"),
        }
    }
    restic.version().await.map_err(JobError::Restic)
}

/// Writes the outcome to the termination log, logging (not failing) when that is impossible.
pub fn write_termination<O: Serialize>(path: &Path, outcome: &O) -> Option<String> {
    match termination::write_outcome(path, outcome) {
        Ok(text) => Some(text),
        Err(e) => {
            tracing::error!("cannot write the termination message to {}: {e}", path.display());
            None
        }
    }
}

/// Resolves on SIGTERM (pod deletion, activeDeadlineSeconds) or SIGINT. As PID 1 the process
/// would otherwise ignore SIGTERM and be killed without writing its result.
pub async fn terminated() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(JobError::Settings("x".into()).exit_code(), 2);
        assert_eq!(JobError::Key(KeyError::Missing).exit_code(), 2);
        assert_eq!(JobError::Backup("x".into()).exit_code(), 1);
        assert_eq!(JobError::Restore("x".into()).exit_code(), 1);
        assert_eq!(JobError::Path(PathError::NoMatch { pattern: "p".into() }).exit_code(), 1);
        assert_eq!(JobError::Terminated("SIGTERM").exit_code(), 1);
        let unsafe_dir = MarkerError::Unsafe { path: "/v/.coracle".into(), reason: "is a symbolic link" };
        assert_eq!(JobError::Marker(unsafe_dir).exit_code(), 2);
        let io = MarkerError::Io { path: "/v/.coracle".into(), source: std::io::ErrorKind::Other.into() };
        assert_eq!(JobError::Marker(io).exit_code(), 1);
    }

    #[test]
    fn attempts() {
        let args = |attempt: &str, limit: &str| JobArgs {
            attempt: Some(attempt.into()),
            backoff_limit_per_index: Some(limit.into()),
            ..JobArgs::default()
        };
        assert_eq!(Attempt::from_args(&args("", "")), Attempt { number: 0, backoff_limit: 0 });
        assert!(Attempt::from_args(&args("", "")).is_last());
        assert!(!Attempt::from_args(&args("0", "1")).is_last());
        assert!(Attempt::from_args(&args("1", "1")).is_last());
        assert_eq!(Attempt::from_args(&args("x", "2")).number, 0);
    }

    #[test]
    fn entries() {
        let list = r#"[{"a":1},{"a":2}]"#;
        let pick = |i: &str| select_entry::<serde_json::Value>(Some(i), Some(list), "CORACLE_X", "things");
        assert_eq!(pick("1").unwrap()["a"], 2);
        let e = pick("2").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid job settings: JOB_COMPLETION_INDEX 2 is out of range: CORACLE_X has 2 volumes"
        );
        assert!(pick("-1").unwrap_err().to_string().contains("not an index"));
        let e = select_entry::<serde_json::Value>(Some("0"), Some("{}"), "CORACLE_X", "things").unwrap_err();
        assert!(e.to_string().contains("CORACLE_X is not a JSON array of things"), "{e}");
        let e = select_entry::<serde_json::Value>(None, Some(list), "CORACLE_X", "things").unwrap_err();
        assert!(e.to_string().contains("JOB_COMPLETION_INDEX"), "{e}");
        let e = select_entry::<serde_json::Value>(Some("0"), Some(" "), "CORACLE_X", "things").unwrap_err();
        assert!(e.to_string().contains("CORACLE_X (--volumes) is not set"), "{e}");
    }
}
