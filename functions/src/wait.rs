//! `--wait`: follows one backup or restore to its end. The KV record is the source of truth (it is
//! read every half second, so nothing is missed even if an event is); progress events only move
//! the bars. Bars are drawn on a terminal; otherwise (CI logs, pipes) each volume's start and end
//! is one plain line on standard error, and standard output stays for the final table or JSON.

use crate::context::Nats;
use crate::follow::{BackupFollow, Change, VolumeView};
use crate::record::{BackupRecord, VolumeStatus};
use crate::restore_state::RestoreRecord;
use crate::watch::{events, Seen, WatchError};
use coracle_events::{envelope::decode, subjects, VolumeBackupProgress};
use futures::{Stream, StreamExt};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("{what} {name} did not finish within {limit:?}; it goes on: `coracle {what} describe {name}` shows it")]
    Timeout { what: &'static str, name: String, limit: Duration },
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error("reading {what} {name}: {source}")]
    Store {
        what: &'static str,
        name: String,
        #[source]
        source: crate::kv_json::StoreError,
    },
}

/// Progress events of every backup, from now on: open it before publishing the request so the
/// first progress of a fast volume is not missed.
pub async fn backup_progress(nats: &Nats) -> Result<impl Stream<Item = Result<Seen, WatchError>>, WaitError> {
    Ok(events(&nats.js, vec![subjects::VOLUME_BACKUP_PROGRESS.to_string()], false).await?)
}

/// Follows backup `name` until its record is terminal; returns the final record.
pub async fn backup(
    nats: &Nats,
    name: &str,
    progress: impl Stream<Item = Result<Seen, WatchError>>,
    limit: Duration,
) -> Result<BackupRecord, WaitError> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut progress = std::pin::pin!(progress);
    let mut follow = BackupFollow::default();
    let mut bars = Bars::new();
    let mut poll = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                bars.clear();
                return Err(WaitError::Timeout { what: "backup", name: name.into(), limit });
            }
            _ = poll.tick() => {
                let record = nats.records.get(name).await
                    .map_err(|source| WaitError::Store { what: "backup", name: name.into(), source })?;
                let Some((record, _)) = record else { continue };
                for change in follow.on_record(&record) {
                    bars.show(&follow, &change);
                }
                if record.is_terminal() {
                    bars.clear();
                    return Ok(record);
                }
            }
            Some(seen) = progress.next() => {
                // A stream error is not fatal: the record still decides the end.
                let Ok(seen) = seen else { continue };
                let Ok(ev) = decode::<VolumeBackupProgress>(&seen.payload) else { continue };
                if ev.data.backup.name != name {
                    continue;
                }
                if let Some(change) = follow.on_progress(&ev.data) {
                    bars.show(&follow, &change);
                }
            }
        }
    }
}

/// Follows restore `name` until its record is terminal, one line per target as it changes state.
pub async fn restore(nats: &Nats, name: &str, limit: Duration) -> Result<RestoreRecord, WaitError> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen: HashMap<String, crate::restore_state::EntryState> = HashMap::new();
    let mut announced = false;
    loop {
        let record = nats.restores.get(name).await.map_err(|source| WaitError::Store {
            what: "restore",
            name: name.into(),
            source,
        })?;
        if let Some((record, _)) = record {
            if !announced {
                eprintln!(
                    "restore {name}: {} target(s) waiting for their pods to be created (or re-created)",
                    record.entries.len()
                );
                announced = true;
            }
            for (key, entry) in &record.entries {
                if seen.insert(key.clone(), entry.state) != Some(entry.state) {
                    let pod = entry.pod.as_deref().map(|p| format!(" by pod {p}")).unwrap_or_default();
                    let reason = entry.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
                    eprintln!("  {key}: {:?}{pod}{reason}", entry.state);
                }
            }
            if record.phase != crate::record::RecordPhase::InProgress {
                return Ok(record);
            }
        }
        if tokio::time::Instant::now() + POLL > deadline {
            return Err(WaitError::Timeout { what: "restore", name: name.into(), limit });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One bar per volume on a terminal; plain lines elsewhere.
struct Bars {
    multi: MultiProgress,
    bars: BTreeMap<String, ProgressBar>,
    style: ProgressStyle,
}

impl Bars {
    fn new() -> Self {
        let style = ProgressStyle::with_template(
            "{prefix:40} [{bar:30}] {bytes:>10}/{total_bytes:10} {binary_bytes_per_sec:>12} ETA {eta:>4} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        Bars { multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()), bars: BTreeMap::new(), style }
    }

    fn show(&mut self, follow: &BackupFollow, change: &Change) {
        let (Change::Planned(key) | Change::Progress(key) | Change::Finished(key)) = change;
        let Some(view) = follow.volumes().get(key) else { return };
        let hidden = self.multi.is_hidden();
        let bar = self.bars.entry(key.clone()).or_insert_with(|| {
            let bar = self.multi.add(ProgressBar::new(0).with_style(self.style.clone()).with_prefix(key.clone()));
            if hidden {
                eprintln!("{key}: planned on {}", view.node);
            }
            bar
        });
        bar.set_length(view.bytes_total);
        bar.set_position(view.bytes_done);
        if let Change::Finished(_) = change {
            let text = outcome(view);
            if hidden {
                eprintln!("{key}: {text}");
            }
            bar.finish_with_message(text);
        }
    }

    fn clear(&self) {
        let _ = self.multi.clear();
    }
}

fn outcome(view: &VolumeView) -> String {
    let status = match view.status {
        VolumeStatus::Completed => "Completed",
        VolumeStatus::CompletedWithWarnings => "Completed with warnings",
        VolumeStatus::Failed => "Failed",
        VolumeStatus::Pending => "Pending",
    };
    if view.note.is_empty() {
        status.to_string()
    } else {
        format!("{status} ({})", view.note)
    }
}
