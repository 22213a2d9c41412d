//! Waiting for every volume's marker with inotify.
//!
//! Three levels are watched, each added as soon as its directory exists: the restores root
//! (a volume directory appearing late), each volume directory (`.coracle` appearing) and
//! each `.coracle` directory (the markers). Watches are added before a directory is
//! inspected, so a marker written in between is seen either by the inspection or as an
//! event. Events only say where to look: the state is always read back through
//! [`Root::inspect`], so spurious and unrelated events are harmless.
//!
//! A marker seen arriving counts even if it is gone when inspected: a volume shared by
//! several pods has one marker, and the first helper to finish may remove it at once. (The
//! restore Job creates `.coracle` when it starts, so helpers watch it before the marker comes.)
//!
//! Every volume is also inspected again every [`RESCAN_INTERVAL`], a backstop for events a
//! filesystem does not deliver; without inotify at all the helper polls every
//! [`POLL_INTERVAL`] rather than block the pod.

use crate::markers::{MarkerError, Root, VolumeState};
use coracle_events::{FAILED_MARKER_SUFFIX, MARKER_DIR};
use futures::StreamExt;
use inotify::{EventMask, EventStream, Inotify, WatchDescriptor, WatchMask, Watches};
use rustix::io::Errno;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};

/// A backstop while inotify works (events are the mechanism): it only matters where a
/// filesystem does not report changes made through another mount.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(30);
/// When inotify is unavailable (the per-user instance or watch limit is reached), the
/// helper degrades to polling rather than blocking the pod.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The reason given for a failure marker that is empty.
const NO_REASON: &str = "the restore Job failed without giving a reason";
/// Room for many events per read; an overflow only costs a rescan.
const EVENT_BUFFER: usize = 16 * 1024;

const ROOT_MASK: WatchMask = WatchMask::CREATE.union(WatchMask::MOVED_TO).union(WatchMask::ONLYDIR);
/// MOVE_SELF: a `.coracle` moved away must no longer count (see `marker_dir_wd`).
const VOLUME_MASK: WatchMask = ROOT_MASK.union(WatchMask::DONT_FOLLOW).union(WatchMask::MOVE_SELF);
/// CLOSE_WRITE as well: a failure marker written in place is read once complete.
const MARKER_DIR_MASK: WatchMask = VOLUME_MASK.union(WatchMask::CLOSE_WRITE);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Restored,
    Failed { volume: String, reason: String },
    TimedOut { missing: Vec<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watched {
    Root,
    Volume(usize),
    MarkerDir(usize),
}

struct Waiter<'a> {
    root: &'a Root,
    uid: &'a str,
    failed_name: String,
    volumes: &'a [String],
    done: Vec<bool>,
    failure: Option<Outcome>,
    watches: Option<Watches>,
    /// Several pod volumes can be one directory (the same claim mounted twice), and then
    /// the kernel hands out one watch descriptor for them.
    by_wd: HashMap<WatchDescriptor, Vec<Watched>>,
    /// The watch of the directory now at `<volume>/.coracle`: only its events may count a
    /// marker as seen.
    marker_dir_wd: Vec<Option<WatchDescriptor>>,
    /// Some directory could not be watched: rescan at [`POLL_INTERVAL`].
    degraded: bool,
    /// The deadline passed: an empty failure marker is taken as it is.
    final_rescan: bool,
}

/// Waits until every volume has its marker, one has a failure marker, or `timeout` passes.
pub async fn wait(root: &Root, uid: &str, volumes: &[String], timeout: Duration) -> Outcome {
    let inotify = Inotify::init();
    // A second descriptor of the instance: closing the stream's then only drops a reference,
    // and the release itself (a kernel grace period) happens off the exit path.
    let spare = inotify.as_ref().ok().and_then(|i| rustix::io::fcntl_dupfd_cloexec(i, 0).ok());
    let stream = inotify.and_then(|i| i.into_event_stream(vec![0u8; EVENT_BUFFER]));
    let outcome = wait_with(root, uid, volumes, timeout, stream).await;
    if let Some(fd) = spare {
        crate::teardown::park(fd);
    }
    outcome
}

/// [`wait`] with the inotify instance given, so that polling can be tested too.
async fn wait_with(
    root: &Root,
    uid: &str,
    volumes: &[String],
    timeout: Duration,
    inotify: io::Result<EventStream<Vec<u8>>>,
) -> Outcome {
    let deadline = Instant::now() + timeout;
    let mut waiter = Waiter {
        root,
        uid,
        failed_name: format!("{uid}{FAILED_MARKER_SUFFIX}"),
        volumes,
        done: vec![false; volumes.len()],
        failure: None,
        watches: None,
        by_wd: HashMap::new(),
        marker_dir_wd: vec![None; volumes.len()],
        degraded: false,
        final_rescan: false,
    };
    let mut stream = match inotify {
        Ok(stream) => {
            waiter.watches = Some(stream.watches());
            waiter.add_watch(root.path().to_path_buf(), ROOT_MASK, Watched::Root);
            Some(stream)
        }
        Err(e) => {
            crate::log::warn(&format!("inotify is unavailable ({e}); polling every {POLL_INTERVAL:?} instead"));
            waiter.degraded = true;
            None
        }
    };
    waiter.rescan();
    if waiter.outcome().is_none() {
        let how = if waiter.degraded { "polling" } else { "inotify" };
        crate::log::info(&format!("watching {} volume(s) with {how}", volumes.len()));
    }

    let mut rescan = tokio::time::interval_at(Instant::now() + waiter.rescan_interval(), waiter.rescan_interval());
    rescan.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut degraded = waiter.degraded;
    loop {
        if let Some(outcome) = waiter.outcome() {
            return outcome;
        }
        if waiter.degraded != degraded {
            degraded = waiter.degraded;
            rescan = tokio::time::interval(waiter.rescan_interval());
            rescan.set_missed_tick_behavior(MissedTickBehavior::Delay);
        }
        tokio::select! {
            event = next_event(&mut stream) => match event {
                Some(Ok(event)) => waiter.on_event(&event.wd, event.mask, event.name.as_deref()),
                Some(Err(e)) => {
                    crate::log::warn(&format!("reading inotify events failed ({e}); polling instead"));
                    stream = None;
                    waiter.stop_watching();
                }
                None => {
                    stream = None;
                    waiter.stop_watching();
                }
            },
            _ = rescan.tick() => waiter.rescan(),
            _ = tokio::time::sleep_until(deadline) => {
                // One last look, so a marker whose event was lost is not reported missing.
                waiter.final_rescan = true;
                waiter.rescan();
                return waiter.outcome().unwrap_or_else(|| Outcome::TimedOut { missing: waiter.missing() });
            }
        }
    }
}

async fn next_event(stream: &mut Option<EventStream<Vec<u8>>>) -> Option<io::Result<inotify::EventOwned>> {
    match stream {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

impl Waiter<'_> {
    fn outcome(&self) -> Option<Outcome> {
        if let Some(failure) = &self.failure {
            return Some(failure.clone());
        }
        self.done.iter().all(|d| *d).then_some(Outcome::Restored)
    }

    fn missing(&self) -> Vec<String> {
        self.volumes.iter().zip(&self.done).filter(|(_, done)| !**done).map(|(v, _)| v.clone()).collect()
    }

    fn stop_watching(&mut self) {
        self.watches = None;
        self.by_wd.clear();
        self.marker_dir_wd.iter_mut().for_each(|wd| *wd = None);
        self.degraded = true;
    }

    fn rescan_interval(&self) -> Duration {
        if self.degraded {
            POLL_INTERVAL
        } else {
            RESCAN_INTERVAL
        }
    }

    /// Watches (again) every directory that exists and inspects every volume not yet done.
    fn rescan(&mut self) {
        for i in 0..self.volumes.len() {
            if self.failure.is_some() {
                return;
            }
            if !self.done[i] {
                self.arm(i);
                self.check(i, false);
            }
        }
    }

    /// Adds the watches of volume `i` that can be added now. Re-adding an existing watch
    /// returns the same descriptor; a directory replaced by a new one gets a new watch.
    fn arm(&mut self, i: usize) {
        let volume_dir = self.root.volume_path(&self.volumes[i]);
        if self.add_watch(volume_dir, VOLUME_MASK, Watched::Volume(i)).is_none() {
            return;
        }
        let marker_dir = self.root.marker_dir_path(&self.volumes[i]);
        if let Some(wd) = self.add_watch(marker_dir, MARKER_DIR_MASK, Watched::MarkerDir(i)) {
            self.marker_dir_wd[i] = Some(wd);
        }
    }

    /// The watch descriptor when the directory is watched now.
    fn add_watch(&mut self, path: PathBuf, mask: WatchMask, what: Watched) -> Option<WatchDescriptor> {
        let watches = self.watches.as_mut()?;
        match watches.add(&path, mask) {
            Ok(wd) => {
                let entry = self.by_wd.entry(wd.clone()).or_default();
                if !entry.contains(&what) {
                    entry.push(what);
                }
                Some(wd)
            }
            Err(e) => {
                // Missing: its parent's watch reports it when it appears. Not a directory, or
                // a symlink (DONT_FOLLOW): the inspection reports that.
                let expected = matches!(Errno::from_io_error(&e), Some(Errno::NOENT | Errno::NOTDIR | Errno::LOOP));
                if !expected {
                    crate::log::warn(&format!("cannot watch {} ({e}); polling instead", path.display()));
                    self.degraded = true;
                }
                None
            }
        }
    }

    fn on_event(&mut self, wd: &WatchDescriptor, mask: EventMask, name: Option<&OsStr>) {
        if mask.contains(EventMask::Q_OVERFLOW) {
            crate::log::warn("inotify event queue overflowed; rescanning");
            self.rescan();
            return;
        }
        if mask.contains(EventMask::IGNORED) {
            // The directory is gone (or unmounted): drop the watch and look again.
            for what in self.by_wd.remove(wd).unwrap_or_default() {
                match what {
                    Watched::Root => {
                        crate::log::warn("the restores root stopped being watchable; polling instead");
                        self.degraded = true;
                    }
                    Watched::Volume(i) | Watched::MarkerDir(i) => {
                        if self.marker_dir_wd[i].as_ref() == Some(wd) {
                            self.marker_dir_wd[i] = None;
                        }
                        if !self.done[i] && self.failure.is_none() {
                            self.arm(i);
                            self.check(i, false);
                        }
                    }
                }
            }
            return;
        }
        if mask.contains(EventMask::MOVE_SELF) {
            // Moved elsewhere, the directory keeps its watch but is no longer the volume's
            // `.coracle`; `arm` watches whatever takes its place.
            for what in self.by_wd.get(wd).cloned().unwrap_or_default() {
                if let Watched::Volume(i) | Watched::MarkerDir(i) = what {
                    self.marker_dir_wd[i] = None;
                }
            }
            return;
        }
        let (Some(targets), Some(name)) = (self.by_wd.get(wd).cloned(), name.and_then(OsStr::to_str)) else {
            return;
        };
        for what in targets {
            if self.failure.is_some() {
                return;
            }
            match what {
                Watched::Root => {
                    for i in 0..self.volumes.len() {
                        if self.volumes[i] == name && !self.done[i] {
                            self.arm(i);
                            self.check(i, false);
                        }
                    }
                }
                Watched::Volume(i) if name == MARKER_DIR && !self.done[i] => {
                    self.arm(i);
                    self.check(i, false);
                }
                Watched::MarkerDir(i) if !self.done[i] => {
                    let arrived = mask.intersects(EventMask::CREATE | EventMask::MOVED_TO);
                    if name == self.uid {
                        let current = self.marker_dir_wd[i].as_ref() == Some(wd);
                        self.check(i, arrived && current);
                    } else if name == self.failed_name && mask.intersects(EventMask::MOVED_TO | EventMask::CLOSE_WRITE)
                    {
                        // A bare CREATE of the failure marker may precede its content.
                        self.check_with(i, false, true);
                    }
                }
                _ => {}
            }
        }
    }

    /// Reads volume `i`'s state; `seen` means its marker was just seen arriving.
    fn check(&mut self, i: usize, seen: bool) {
        self.check_with(i, seen, false);
    }

    /// `written` means a failure marker was just closed after writing or renamed into place,
    /// so it is complete even if empty.
    fn check_with(&mut self, i: usize, seen: bool, written: bool) {
        let volume = &self.volumes[i];
        match self.root.inspect(volume, self.uid) {
            Ok(VolumeState::Restored) => {
                crate::log::info(&format!("volume {volume} is restored"));
                self.done[i] = true;
            }
            // Created but not written yet: its CLOSE_WRITE follows.
            Ok(VolumeState::Failed(reason)) if reason.is_empty() && !written && !self.final_rescan => {}
            Ok(VolumeState::Failed(reason)) => {
                let reason = if reason.is_empty() { NO_REASON.to_string() } else { reason };
                self.failure = Some(Outcome::Failed { volume: volume.clone(), reason });
            }
            Ok(VolumeState::Waiting | VolumeState::NoMarkerDir | VolumeState::NoVolume) if seen => {
                crate::log::info(&format!(
                    "volume {volume} is restored (its marker was removed at once, by another pod sharing the volume)"
                ));
                self.done[i] = true;
            }
            Ok(VolumeState::Waiting | VolumeState::NoMarkerDir | VolumeState::NoVolume) => {}
            Err(e) => {
                self.failure = Some(Outcome::Failed { volume: volume.clone(), reason: describe(&e) });
            }
        }
    }
}

fn describe(e: &MarkerError) -> String {
    match e {
        MarkerError::Symlink { .. } | MarkerError::WrongType { .. } => {
            format!("{e} (only a restore Job may write the markers)")
        }
        MarkerError::Io { .. } => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "r-uid-1";

    fn marker(dir: &std::path::Path, volume: &str) {
        std::fs::create_dir_all(dir.join(volume).join(MARKER_DIR)).unwrap();
        std::fs::write(dir.join(volume).join(MARKER_DIR).join(UID), "").unwrap();
    }

    #[tokio::test]
    async fn without_inotify_it_polls() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::open(tmp.path()).unwrap();
        let volumes = vec!["a".to_string(), "b".to_string()];
        marker(tmp.path(), "a");
        let dir = tmp.path().to_path_buf();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            marker(&dir, "b");
        });
        let unavailable = Err(io::Error::from_raw_os_error(24));
        let started = std::time::Instant::now();
        let outcome = wait_with(&root, UID, &volumes, Duration::from_secs(10), unavailable).await;
        assert_eq!(outcome, Outcome::Restored);
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn timeout_lists_what_is_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::open(tmp.path()).unwrap();
        marker(tmp.path(), "b");
        let volumes = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let outcome = wait(&root, UID, &volumes, Duration::from_millis(100)).await;
        assert_eq!(outcome, Outcome::TimedOut { missing: vec!["a".into(), "c".into()] });
    }
}
