//! restic's repository locks: listing them, reading who holds them, and removing exactly the ones
//! whose owner is gone. Which owners are gone is decided by [`stale_locks`], a pure function, so
//! that a live backup's lock can never be removed by a mistake in plumbing.
//!
//! restic records the owner's hostname and pid in each lock. Inside Kubernetes a Job pod's
//! hostname is its pod name (`<job>-<index>` for Indexed Jobs), unique per Job, so hostnames map
//! to Job pods; restic itself cannot use that (it only checks pids on its own host, or waits
//! 30 minutes), which is why a killed Job's lock would otherwise block maintenance that long.

use super::{Repository, Restic, ResticError};
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use std::collections::BTreeSet;

/// Hostnames of Coracle's Job pods start with this (`coracle-backup-…`, `coracle-maintain-…`).
pub const JOB_HOST_PREFIX: &str = "coracle-";
/// Allowed clock difference between the node that wrote a lock and the function that listed the
/// live pods.
pub const CLOCK_SKEW: Duration = Duration::minutes(2);

/// One lock as `restic cat lock ID` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Lock {
    #[serde(skip)]
    pub id: String,
    pub time: DateTime<Utc>,
    #[serde(default)]
    pub exclusive: bool,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub pid: u32,
}

/// Hostnames of Coracle's Job pods that were not finished, and when they were listed.
pub type LiveHosts = (BTreeSet<String>, DateTime<Utc>);

/// What the Job knows about who is alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Liveness {
    /// This process's hostname and pid.
    pub hostname: String,
    pub pid: u32,
    /// Pids alive on this host (only asked about locks written from this host).
    pub live_pids: BTreeSet<u32>,
    /// Hostnames of Coracle's Job pods that were not finished when the function listed them, and
    /// when it did. `None`: nobody told this Job, so no other host's lock is judged.
    pub live_hosts: Option<LiveHosts>,
}

/// The locks whose owner is certainly gone:
/// - written from this host by a pid that no longer exists (not this process), or
/// - written by a Coracle Job pod that was not alive when the live pods were listed, *before*
///   that listing (minus clock skew): a pod that started after the listing is unknown to it, but
///   all its locks are younger than the listing, so they are kept.
///
/// Locks of other hosts (a person running restic by hand) are left to restic's own rules.
pub fn stale_locks<'a>(locks: &'a [Lock], me: &Liveness) -> Vec<&'a Lock> {
    locks
        .iter()
        .filter(|l| {
            if l.hostname == me.hostname {
                return l.pid != me.pid && !me.live_pids.contains(&l.pid);
            }
            match &me.live_hosts {
                Some((hosts, listed_at)) => {
                    l.hostname.starts_with(JOB_HOST_PREFIX)
                        && !hosts.contains(&l.hostname)
                        && l.time < *listed_at - CLOCK_SKEW
                }
                None => false,
            }
        })
        .collect()
}

/// Parses `CORACLE_LIVE_HOSTS` (comma list) and `CORACLE_LIVE_HOSTS_AT` (RFC 3339).
pub fn parse_live_hosts(hosts: Option<&str>, at: Option<&str>) -> Result<Option<LiveHosts>, String> {
    let (Some(hosts), Some(at)) = (hosts, at.map(str::trim).filter(|a| !a.is_empty())) else { return Ok(None) };
    let at = DateTime::parse_from_rfc3339(at)
        .map_err(|e| format!("CORACLE_LIVE_HOSTS_AT {at:?} is not an RFC 3339 time: {e}"))?
        .with_timezone(&Utc);
    let hosts = hosts.split(',').map(str::trim).filter(|h| !h.is_empty()).map(String::from).collect();
    Ok(Some((hosts, at)))
}

/// Whether a pid exists on this host (signal 0 probes without signalling).
pub fn pid_alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else { return false };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        // It exists, it is just not ours to signal.
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

/// This machine's hostname, as restic records it in its locks.
pub fn hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

impl Restic {
    /// Every lock in the repository with its owner (`restic list locks` + `restic cat lock`).
    /// A lock that vanished between the two (its owner finished) is left out.
    pub async fn locks(&self) -> Result<Vec<Lock>, ResticError> {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let out = self.output(&args(&["list", "locks", "--no-lock"])).await?;
        if !out.success() {
            return Err(self.failed("list locks", &out));
        }
        let mut locks = Vec::new();
        for id in out.stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let cat = self.output(&args(&["cat", "lock", id, "--no-lock"])).await?;
            if !cat.success() {
                continue;
            }
            let mut lock: Lock = serde_json::from_str(&cat.stdout)
                .map_err(|e| ResticError::Output { command: "cat lock".into(), reason: e.to_string() })?;
            lock.id = id.to_string();
            locks.push(lock);
        }
        Ok(locks)
    }

    /// Removes one lock. restic has no command for a single lock, so for local repositories the
    /// lock file is deleted; other backends fall back to `restic unlock`, which removes only the
    /// locks restic itself deems stale (same host and dead pid, or not refreshed for 30 minutes).
    /// Returns whether that lock is gone.
    pub async fn remove_lock(&self, lock: &Lock) -> Result<bool, ResticError> {
        match &self.repository {
            Repository::Local(path) => {
                if lock.id.is_empty() || !lock.id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Ok(false);
                }
                let file = path.join("locks").join(&lock.id);
                match std::fs::remove_file(&file) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
                    Err(source) => Err(ResticError::Local { path: file, source }),
                }
            }
            Repository::Remote(_) => {
                let out = self.output(&["unlock".to_string()]).await?;
                if !out.success() {
                    return Err(self.failed("unlock", &out));
                }
                Ok(!self.locks().await?.iter().any(|l| l.id == lock.id))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(id: &str, host: &str, pid: u32, minutes_ago: i64, now: DateTime<Utc>) -> Lock {
        Lock { id: id.into(), time: now - Duration::minutes(minutes_ago), exclusive: false, hostname: host.into(), pid }
    }

    #[test]
    fn only_locks_of_gone_owners_are_stale() {
        let now = Utc::now();
        let me = Liveness {
            hostname: "coracle-maintain-abc-0".into(),
            pid: 7,
            live_pids: [1, 7, 9].into(),
            live_hosts: Some((["coracle-backup-live-0".to_string(), "coracle-maintain-abc-0".into()].into(), now)),
        };
        let locks = [
            lock("own", "coracle-maintain-abc-0", 7, 0, now),
            lock("same-host-live", "coracle-maintain-abc-0", 9, 5, now),
            lock("same-host-dead", "coracle-maintain-abc-0", 42, 5, now),
            lock("live-pod", "coracle-backup-live-0", 7, 10, now),
            lock("gone-pod", "coracle-backup-gone-1", 7, 10, now),
            // Started after the listing: unknown to it, but younger, so kept.
            lock("new-pod", "coracle-backup-new-0", 7, -1, now),
            lock("within-skew", "coracle-backup-gone-1", 7, 1, now),
            lock("by-hand", "alice-laptop", 4242, 600, now),
        ];
        let stale: Vec<&str> = stale_locks(&locks, &me).into_iter().map(|l| l.id.as_str()).collect();
        assert_eq!(stale, ["same-host-dead", "gone-pod"]);
        let unknown = Liveness { live_hosts: None, ..me };
        let stale: Vec<&str> = stale_locks(&locks, &unknown).into_iter().map(|l| l.id.as_str()).collect();
        assert_eq!(stale, ["same-host-dead"], "without a listing no other host's lock is judged");
    }

    #[test]
    fn live_hosts_parse() {
        assert_eq!(parse_live_hosts(None, None), Ok(None));
        let (hosts, at) = parse_live_hosts(Some("a, b,,"), Some("2026-11-21T10:00:00Z")).unwrap().unwrap();
        assert_eq!(hosts, ["a".to_string(), "b".into()].into());
        assert_eq!(at.to_rfc3339(), "2026-11-21T10:00:00+00:00");
        assert!(parse_live_hosts(Some("a"), Some("yesterday")).is_err());
        assert!(pid_alive(std::process::id()));
        assert!(!hostname().is_empty());
    }
}
