//! `coracle-restore-wait`: the init container Coracle's admission function injects first into
//! a pod that is being restored. It announces the pod (`coracle.restore.pod.ready`), waits with
//! inotify until every volume holds the restore Job's marker `.coracle/<restore-uid>`, removes
//! the markers and exits 0, so the pod's own containers start on restored data. A failure
//! marker, a timeout or a bad configuration ends it with a non-zero exit code and a message
//! in the termination log (see [`exit`]).

pub mod announce;
pub mod config;
pub use coracle_events::duration;
pub mod log;
pub mod markers;
pub use coracle_events::names;
pub mod teardown;
pub mod watch;

/// The exit codes, part of the contract with the admission function and the docs.
pub mod exit {
    /// Every volume restored, markers removed.
    pub const RESTORED: i32 = 0;
    /// A restore Job left a failure marker, or a marker could not be read safely.
    pub const FAILED: i32 = 1;
    /// `CORACLE_TIMEOUT` passed with volumes still missing their marker.
    pub const TIMED_OUT: i32 = 2;
    /// Invalid or missing settings.
    pub const BAD_CONFIG: i32 = 3;
    /// Terminated by a signal while waiting: 128 + the signal number, as a shell reports it.
    pub const SIGTERM: i32 = 128 + 15;
    pub const SIGINT: i32 = 128 + 2;
}
