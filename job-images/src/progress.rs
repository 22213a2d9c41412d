//! Turning restic's status lines into `coracle.volume.backup.progress` data, at most once a
//! second.

use crate::restic::json::{Status, Summary};
use coracle_events::{BackupRef, VolumeBackupProgress};
use std::time::{Duration, Instant};

pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Lets an event through when at least `interval` has passed since the last one let through.
#[derive(Debug, Clone)]
pub struct Throttle {
    interval: Duration,
    last: Option<Instant>,
}

impl Throttle {
    pub fn new(interval: Duration) -> Self {
        Throttle { interval, last: None }
    }

    pub fn ready(&mut self, now: Instant) -> bool {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

/// Progress of a running backup. `percent_done` is restic's fraction, 0.0 to 1.0.
/// `elapsed` is used when restic does not report `seconds_elapsed` (0.14 omits zero fields).
pub fn from_status(backup: &BackupRef, volume_key: &str, status: &Status, elapsed: Duration) -> VolumeBackupProgress {
    VolumeBackupProgress {
        backup: backup.clone(),
        volume: volume_key.to_string(),
        percent_done: status.percent_done,
        bytes_done: status.bytes_done.unwrap_or(0),
        bytes_total: status.total_bytes.unwrap_or(0),
        files_done: status.files_done.unwrap_or(0),
        files_total: status.total_files.unwrap_or(0),
        seconds_elapsed: status.seconds_elapsed.unwrap_or(elapsed.as_secs()),
        seconds_remaining: status.seconds_remaining,
    }
}

/// The final 100% progress of a finished backup.
pub fn finished(backup: &BackupRef, volume_key: &str, summary: &Summary, elapsed: Duration) -> VolumeBackupProgress {
    VolumeBackupProgress {
        backup: backup.clone(),
        volume: volume_key.to_string(),
        percent_done: 1.0,
        bytes_done: summary.total_bytes_processed,
        bytes_total: summary.total_bytes_processed,
        files_done: summary.total_files_processed,
        files_total: summary.total_files_processed,
        seconds_elapsed: elapsed.as_secs(),
        seconds_remaining: Some(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_one_through_per_interval() {
        let start = Instant::now();
        let mut t = Throttle::new(Duration::from_secs(1));
        let at = |ms| start + Duration::from_millis(ms);
        let passed: Vec<u64> =
            [0, 100, 999, 1000, 1500, 1999, 2000, 2001, 5000].into_iter().filter(|&ms| t.ready(at(ms))).collect();
        assert_eq!(passed, [0, 1000, 2000, 5000]);
        // A clock that goes backwards never panics and never floods.
        assert!(!t.ready(at(10)));
    }

    #[test]
    fn status_mapping() {
        let backup = BackupRef { name: "b".into(), uid: "u".into() };
        let status = Status {
            percent_done: 0.5,
            total_files: Some(10),
            files_done: Some(5),
            total_bytes: Some(1000),
            bytes_done: Some(500),
            seconds_elapsed: None,
            seconds_remaining: Some(7),
            ..Status::default()
        };
        let p = from_status(&backup, "ns/pod/vol", &status, Duration::from_millis(3500));
        assert_eq!((p.percent_done, p.files_done, p.files_total, p.bytes_done, p.bytes_total), (0.5, 5, 10, 500, 1000));
        assert_eq!((p.seconds_elapsed, p.seconds_remaining), (3, Some(7)));
        let p = from_status(&backup, "ns/pod/vol", &Status { seconds_elapsed: Some(9), ..status }, Duration::ZERO);
        assert_eq!(p.seconds_elapsed, 9);
        let summary = Summary { total_files_processed: 4, total_bytes_processed: 600, ..Summary::default() };
        let f = finished(&backup, "ns/pod/vol", &summary, Duration::from_secs(2));
        assert_eq!((f.percent_done, f.files_done, f.bytes_total, f.seconds_remaining), (1.0, 4, 600, Some(0)));
    }
}
