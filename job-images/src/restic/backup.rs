//! `restic backup --json`, streamed: every line of stdout and stderr is parsed as it arrives
//! (0.17+ writes status/summary to stdout and errors to stderr, 0.14 mixes JSON errors and
//! plain-text warnings on stderr).

use super::json::{self, ExitError, ItemError, Message, Summary};
use super::{tail, Restic, ResticError};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;

/// Item errors kept in full; a volume with thousands of unreadable files reports a count.
const MAX_ITEM_ERRORS: usize = 1000;
const TEXT_LINES_KEPT: usize = 40;

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
    /// Item errors beyond [`MAX_ITEM_ERRORS`], counted only.
    pub errors_dropped: usize,
    pub exit_error: Option<ExitError>,
    /// Last plain-text lines (scrubbed), for failure reasons.
    pub text_tail: String,
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
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
        cmd.args(options.args()).current_dir(&options.workdir).stdout(Stdio::piped()).stderr(Stdio::piped());
        if std::env::var_os("RESTIC_PROGRESS_FPS").is_none() {
            // With --json restic would print 60 status lines a second; progress is published once a second.
            cmd.env("RESTIC_PROGRESS_FPS", "2");
        }
        let mut child = cmd.spawn().map_err(|e| self.spawn_error(e))?;
        let (tx, mut rx) = mpsc::channel(256);
        let readers = [
            child.stdout.take().map(|out| tokio::spawn(forward_lines(out, Stream::Stdout, tx.clone()))),
            child.stderr.take().map(|err| tokio::spawn(forward_lines(err, Stream::Stderr, tx.clone()))),
        ];
        drop(tx);

        let mut run = BackupRun::default();
        let mut text = VecDeque::new();
        while let Some((stream, line)) = rx.recv().await {
            let Some(message) = json::parse_line(&line) else { continue };
            match &message {
                Message::Summary(summary) => run.summary = Some(summary.clone()),
                Message::Error(err) if run.errors.len() < MAX_ITEM_ERRORS => run.errors.push(err.clone()),
                Message::Error(_) => run.errors_dropped += 1,
                Message::ExitError(exit) => {
                    run.exit_error = Some(ExitError { code: exit.code, message: self.scrubber().scrub(&exit.message) })
                }
                Message::Text(line) => {
                    tracing::debug!(stream = ?stream, "restic: {}", self.scrubber().scrub(line));
                    if text.len() == TEXT_LINES_KEPT {
                        text.pop_front();
                    }
                    text.push_back(self.scrubber().scrub(line));
                }
                _ => {}
            }
            on_message(&message);
        }
        for reader in readers.into_iter().flatten() {
            reader.await.map_err(|e| ResticError::Io(std::io::Error::other(e)))??;
        }
        run.code = child.wait().await?.code();
        run.text_tail = tail(&text.into_iter().collect::<Vec<_>>().join("\n"));
        Ok(run)
    }
}

/// Sends each line (lossily decoded: file names need not be UTF-8) to the collector.
async fn forward_lines(
    reader: impl AsyncRead + Unpin,
    stream: Stream,
    tx: mpsc::Sender<(Stream, String)>,
) -> Result<(), std::io::Error> {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).await? == 0 {
            return Ok(());
        }
        if tx.send((stream, String::from_utf8_lossy(&buf).into_owned())).await.is_err() {
            return Ok(());
        }
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
