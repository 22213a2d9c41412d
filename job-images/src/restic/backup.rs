//! `restic backup --json`, streamed: every line of stdout and stderr is parsed as it arrives
//! (0.17+ writes status/summary to stdout and errors to stderr, 0.14 mixes JSON errors and
//! plain-text warnings on stderr).

use super::json::{self, ExitError, ItemError, Message, Summary};
use super::stream::Diagnostics;
use super::{Restic, ResticError};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupOptions {
    /// restic runs here and backs up `.`, so the snapshot holds the volume's contents at its
    /// root and can be restored into any other path.
    pub workdir: PathBuf,
    pub host: String,
    /// Complete `key=value` tags, each passed as its own `--tag`.
    pub tags: Vec<String>,
    pub parent: Option<String>,
}

impl BackupOptions {
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["backup".to_string(), "--json".to_string(), "--host".to_string(), self.host.clone()];
        for tag in &self.tags {
            args.extend(["--tag".to_string(), tag.clone()]);
        }
        if let Some(parent) = &self.parent {
            args.extend(["--parent".to_string(), parent.clone()]);
        }
        args.push(".".to_string());
        args
    }
}

/// Everything a finished `restic backup` told us.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackupRun {
    /// Exit code; `None` when restic was killed by a signal.
    pub code: Option<i32>,
    pub summary: Option<Summary>,
    pub errors: Vec<ItemError>,
    /// Item errors beyond the 1000 kept, counted only.
    pub errors_dropped: usize,
    pub exit_error: Option<ExitError>,
    /// Last plain-text lines (scrubbed), for failure reasons.
    pub text_tail: String,
}

impl BackupRun {
    /// restic's fatal message: 0.17+'s `exit_error`, and the plain-text tail (all 0.14 gives).
    fn fatal_text(&self) -> String {
        let exit = self.exit_error.as_ref().map(|e| e.message.as_str()).unwrap_or_default();
        format!("{exit}\n{}", self.text_tail)
    }

    /// Stopped before reading a file (no summary, a fatal exit code).
    fn stopped_early(&self) -> bool {
        self.summary.is_none() && !matches!(self.code, Some(0) | Some(3))
    }

    /// The repository does not exist yet.
    pub fn found_no_repository(&self) -> bool {
        self.stopped_early() && super::says_repository_missing(self.code, &self.fatal_text())
    }

    /// The `--parent` given cannot be loaded (forgotten since the hint was recorded). Wording of
    /// 0.14 ("invalid id … no matching ID found") and 0.17+ ("failed to load snapshot …").
    pub fn parent_unusable(&self) -> bool {
        let text = self.fatal_text();
        self.stopped_early()
            && ["no matching ID found", "failed to load snapshot", "invalid id", "unable to load parent"]
                .iter()
                .any(|m| text.contains(m))
    }
}

impl Restic {
    /// Runs `restic backup`, calling `on_message` for every parsed line (status lines drive
    /// progress events). Returns once restic has exited; the exit code is not judged here.
    pub async fn backup(
        &self,
        options: &BackupOptions,
        mut on_message: impl FnMut(&Message),
    ) -> Result<BackupRun, ResticError> {
        let mut cmd = self.command();
        cmd.args(options.args()).current_dir(&options.workdir);
        if std::env::var_os("RESTIC_PROGRESS_FPS").is_none() {
            // With --json restic would print 60 status lines a second; progress is published once a second.
            cmd.env("RESTIC_PROGRESS_FPS", "2");
        }
        let mut summary = None;
        let mut diagnostics = Diagnostics::default();
        let code = self
            .run_streaming(cmd, |stream, line| {
                let Some(message) = json::parse_line(line) else { return };
                match &message {
                    Message::Summary(s) => summary = Some(s.clone()),
                    Message::Error(err) => diagnostics.item_error(err),
                    Message::ExitError(exit) => diagnostics.exit_error(exit, self.scrubber()),
                    Message::Text(text) => diagnostics.text(stream, text, self.scrubber()),
                    _ => {}
                }
                on_message(&message);
            })
            .await?;
        Ok(BackupRun {
            code,
            summary,
            text_tail: diagnostics.text_tail(),
            errors: diagnostics.errors,
            errors_dropped: diagnostics.errors_dropped,
            exit_error: diagnostics.exit_error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let o = BackupOptions {
            workdir: "/pods/x".into(),
            host: "shop".into(),
            tags: vec!["backup=b".into(), "identity=i".into()],
            parent: Some("abc".into()),
        };
        assert_eq!(
            o.args(),
            ["backup", "--json", "--host", "shop", "--tag", "backup=b", "--tag", "identity=i", "--parent", "abc", "."]
        );
        let o = BackupOptions { parent: None, tags: vec![], ..o };
        assert_eq!(o.args(), ["backup", "--json", "--host", "shop", "."]);
    }
}
