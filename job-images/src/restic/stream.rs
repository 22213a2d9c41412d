//! Running a long restic command (`backup`, `restore`) with its stdout and stderr read line by
//! line as they arrive, and collecting what restic says besides progress.

use super::json::{ExitError, ItemError};
use super::{tail, Restic, ResticError};
use crate::scrub::Scrubber;
use std::collections::VecDeque;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

/// Item errors kept in full; a volume with thousands of failing files reports a count.
const MAX_ITEM_ERRORS: usize = 1000;
const TEXT_LINES_KEPT: usize = 40;

#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// restic's item errors, its exit error (0.17+) and its last plain-text lines (scrubbed).
#[derive(Debug, Default)]
pub(crate) struct Diagnostics {
    pub errors: Vec<ItemError>,
    /// Item errors beyond [`MAX_ITEM_ERRORS`], counted only.
    pub errors_dropped: usize,
    pub exit_error: Option<ExitError>,
    text: VecDeque<String>,
}

impl Diagnostics {
    pub fn item_error(&mut self, err: &ItemError) {
        if self.errors.len() < MAX_ITEM_ERRORS {
            self.errors.push(err.clone());
        } else {
            self.errors_dropped += 1;
        }
    }

    pub fn exit_error(&mut self, exit: &ExitError, scrubber: &Scrubber) {
        self.exit_error = Some(ExitError { code: exit.code, message: scrubber.scrub(&exit.message) });
    }

    pub fn text(&mut self, stream: Stream, line: &str, scrubber: &Scrubber) {
        let line = scrubber.scrub(line);
        tracing::debug!(stream = ?stream, "restic: {line}");
        if self.text.len() == TEXT_LINES_KEPT {
            self.text.pop_front();
        }
        self.text.push_back(line);
    }

    /// The last plain-text lines, bounded, for failure reasons.
    pub fn text_tail(&self) -> String {
        tail(&self.text.iter().map(String::as_str).collect::<Vec<_>>().join("\n"))
    }
}

impl Restic {
    /// Runs `cmd` (from [`Restic::command`]), handing every line of its output to `on_line`
    /// as it arrives. Returns the exit code (`None`: killed by a signal), not judged here.
    pub(crate) async fn run_streaming(
        &self,
        mut cmd: Command,
        mut on_line: impl FnMut(Stream, &str),
    ) -> Result<Option<i32>, ResticError> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| self.spawn_error(e))?;
        let (tx, mut rx) = mpsc::channel(256);
        let readers = [
            child.stdout.take().map(|out| tokio::spawn(forward_lines(out, Stream::Stdout, tx.clone()))),
            child.stderr.take().map(|err| tokio::spawn(forward_lines(err, Stream::Stderr, tx.clone()))),
        ];
        drop(tx);
        while let Some((stream, line)) = rx.recv().await {
            on_line(stream, &line);
        }
        for reader in readers.into_iter().flatten() {
            reader.await.map_err(|e| ResticError::Io(std::io::Error::other(e)))??;
        }
        Ok(child.wait().await?.code())
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
    fn diagnostics_are_bounded_and_scrubbed() {
        let mut scrubber = Scrubber::new();
        scrubber.add("hunter2-password");
        let mut d = Diagnostics::default();
        for i in 0..MAX_ITEM_ERRORS + 5 {
            d.item_error(&ItemError { item: format!("/f{i}"), ..ItemError::default() });
        }
        assert_eq!((d.errors.len(), d.errors_dropped), (MAX_ITEM_ERRORS, 5));
        for i in 0..TEXT_LINES_KEPT + 3 {
            d.text(Stream::Stderr, &format!("line {i} hunter2-password"), &scrubber);
        }
        let tail = d.text_tail();
        assert!(!tail.contains("hunter2"), "{tail}");
        assert!(tail.ends_with(&format!("line {} [redacted]", TEXT_LINES_KEPT + 2)), "{tail}");
        d.exit_error(&ExitError { code: Some(12), message: "wrong password hunter2-password".into() }, &scrubber);
        assert_eq!(d.exit_error.unwrap().message, "wrong password [redacted]");
    }
}
