//! `restic restore --json` of one snapshot into a directory, streamed like a backup, and the
//! snapshot's restore size (`restic stats --mode restore-size`) for restic versions whose
//! restore prints no summary (0.14, 0.15).

use super::json::{self, ExitError, ItemError, RestoreMessage, RestoreSummary};
use super::stream::Diagnostics;
use super::{Restic, ResticError};
use std::ffi::OsString;
use std::path::PathBuf;

/// How 0.14 reports what it could not restore (there is no JSON for it).
const IGNORED_ERROR_PREFIX: &str = "ignoring error for ";
/// 0.14's first line, `restoring <Snapshot … > to <target>`: information, not a problem.
const STARTING_PREFIX: &str = "restoring <Snapshot ";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Full id or unique prefix; validated by the caller (it is an argument).
    pub snapshot_id: String,
    /// The snapshot's root lands here: backups store the volume's contents at the root.
    pub target: PathBuf,
}

impl RestoreOptions {
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = ["restore", "--json", "--target"].map(OsString::from).into();
        args.push(self.target.clone().into_os_string());
        // `--`: the id can never be read as an option.
        args.extend(["--".into(), self.snapshot_id.clone().into()]);
        args
    }
}

/// Everything a finished `restic restore` told us.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RestoreRun {
    /// Exit code; `None` when restic was killed by a signal.
    pub code: Option<i32>,
    /// 0.16+ only.
    pub summary: Option<RestoreSummary>,
    /// Files restic could not restore (JSON in 0.16+, text in 0.14).
    pub errors: Vec<ItemError>,
    pub errors_dropped: usize,
    pub exit_error: Option<ExitError>,
    /// Last plain-text lines (scrubbed), for failure reasons.
    pub text_tail: String,
}

impl Restic {
    /// Runs `restic restore`. Returns once restic has exited; the exit code is not judged here.
    pub async fn restore(&self, options: &RestoreOptions) -> Result<RestoreRun, ResticError> {
        let mut cmd = self.command();
        cmd.args(options.args());
        if std::env::var_os("RESTIC_PROGRESS_FPS").is_none() {
            // Status lines only reach the debug log: one every five seconds is plenty.
            cmd.env("RESTIC_PROGRESS_FPS", "0.2");
        }
        let mut summary = None;
        let mut diagnostics = Diagnostics::default();
        let code = self
            .run_streaming(cmd, |stream, line| match json::parse_restore_line(line) {
                Some(RestoreMessage::Summary(s)) => summary = Some(s),
                Some(RestoreMessage::Status(status)) => {
                    tracing::debug!(percent = status.percent_done * 100.0, "restore progress")
                }
                Some(RestoreMessage::Error(err)) => diagnostics.item_error(&err),
                Some(RestoreMessage::ExitError(exit)) => diagnostics.exit_error(&exit, self.scrubber()),
                Some(RestoreMessage::Text(text)) => match parse_ignored_error(&text) {
                    Some(err) => diagnostics.item_error(&err),
                    None if text.starts_with(STARTING_PREFIX) => tracing::debug!("restic: {text}"),
                    None => diagnostics.text(stream, &text, self.scrubber()),
                },
                Some(RestoreMessage::Other { .. }) | None => {}
            })
            .await?;
        Ok(RestoreRun {
            code,
            summary,
            text_tail: diagnostics.text_tail(),
            errors: diagnostics.errors,
            errors_dropped: diagnostics.errors_dropped,
            exit_error: diagnostics.exit_error,
        })
    }

    /// `(files, bytes)` a restore of the snapshot writes, counting directories and symlinks as
    /// files like restic's restore summary does.
    pub async fn restore_size(&self, snapshot_id: &str) -> Result<(u64, u64), ResticError> {
        let args = ["stats", "--json", "--mode", "restore-size", "--", snapshot_id].map(String::from);
        let out = self.output(&args).await?;
        if !out.success() {
            return Err(self.failed("stats", &out));
        }
        let parsed: serde_json::Value = serde_json::from_str(out.stdout.trim())
            .map_err(|e| ResticError::Output { command: "stats".into(), reason: e.to_string() })?;
        let field = |name: &str| {
            parsed.get(name).and_then(serde_json::Value::as_u64).ok_or_else(|| ResticError::Output {
                command: "stats".into(),
                reason: format!("no {name} in {}", super::tail(&out.stdout)),
            })
        };
        Ok((field("total_file_count")?, field("total_size")?))
    }
}

/// restic 0.14's `ignoring error for /path: message` as an item error.
pub fn parse_ignored_error(line: &str) -> Option<ItemError> {
    let rest = line.trim_end().strip_prefix(IGNORED_ERROR_PREFIX)?;
    let (item, message) = rest.split_once(": ").unwrap_or((rest, ""));
    Some(ItemError {
        message: Some(message.to_string()).filter(|m| !m.is_empty()),
        during: "restore".into(),
        item: item.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let o = RestoreOptions { snapshot_id: "05ae74ee".into(), target: "/host/pod/volumes/x/mount".into() };
        assert_eq!(o.args(), ["restore", "--json", "--target", "/host/pod/volumes/x/mount", "--", "05ae74ee"]);
    }

    #[test]
    fn ignored_errors_of_014() {
        // Real lines of restic 0.14.0 restoring over existing data.
        let e = parse_ignored_error("ignoring error for /link: Symlink: symlink a /tmp/rt/out/link: file exists\n")
            .unwrap();
        assert_eq!(e.item, "/link");
        assert_eq!(e.message.as_deref(), Some("Symlink: symlink a /tmp/rt/out/link: file exists"));
        assert_eq!(e.during, "restore");
        let e = parse_ignored_error("ignoring error for /a: open /tmp/rt/t2/a: is a directory").unwrap();
        assert_eq!((e.item.as_str(), e.message.as_deref()), ("/a", Some("open /tmp/rt/t2/a: is a directory")));
        assert_eq!(parse_ignored_error("Fatal: There were 1 errors"), None);
    }
}
