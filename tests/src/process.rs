//! Helpers for tests that start processes: every process a test starts is stopped by the test, by pid.

use std::process::{Child, ExitStatus, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// Whether a process with this pid exists (a reaped child does not; an unreaped zombie does).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: kill with signal 0 only checks that the pid exists and may be signalled.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Sends a signal to one pid.
pub fn signal(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: plain kill(2) on one pid; the caller owns the process.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Sends SIGTERM to a child.
pub fn terminate(child: &Child) {
    signal(child.id(), libc::SIGTERM);
}

/// Waits for a child to exit; after `timeout` it is killed (SIGKILL, by pid), reaped, and an error returned.
pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().with_context(|| format!("waiting for pid {}", child.id()))? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            signal(child.id(), libc::SIGKILL);
            let _ = child.wait();
            bail!("pid {} did not exit within {timeout:?} and was killed", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for a child within `limit`, reading its piped output meanwhile (so a chatty child never
/// blocks on a full pipe); past the limit it is SIGKILLed by pid and an error returned.
pub fn output_within(child: Child, limit: Duration) -> anyhow::Result<Output> {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => Ok(out.with_context(|| format!("waiting for pid {pid}"))?),
        Err(_) => {
            signal(pid, libc::SIGKILL);
            let _ = rx.recv_timeout(Duration::from_secs(10));
            bail!("pid {pid} did not finish within {limit:?} and was killed")
        }
    }
}

/// Starts a server process (output discarded, stopped with the guard or when this process dies)
/// and waits until it accepts connections on `port` of loopback.
pub async fn spawn_listening(
    mut cmd: std::process::Command,
    port: u16,
    what: &str,
) -> anyhow::Result<crate::harness::ChildGuard> {
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    die_with_parent(&mut cmd);
    let guard = crate::harness::ChildGuard(cmd.spawn().with_context(|| format!("starting {what}"))?);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("{what} did not listen on {port}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(guard)
}

/// Asks the kernel to SIGTERM the child when this process dies, so a crashed test or demo
/// leaves nothing running.
pub fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child's own state.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// SIGTERM, then SIGKILL if the child has not exited after `grace`; always reaps it.
pub fn stop(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    terminate(child);
    wait_with_timeout(child, grace).ok().or_else(|| child.try_wait().ok().flatten())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn stops_and_reaps_by_pid() -> anyhow::Result<()> {
        let mut sleeper = Command::new("sleep").arg("30").spawn()?;
        let pid = sleeper.id();
        assert!(pid_alive(pid));
        assert!(wait_with_timeout(&mut sleeper, Duration::from_millis(50)).is_err(), "still sleeping: killed");
        assert!(!pid_alive(pid));

        let mut sleeper = Command::new("sleep").arg("30").spawn()?;
        let pid = sleeper.id();
        let status = stop(&mut sleeper, Duration::from_secs(5));
        assert!(status.is_some_and(|s| !s.success()));
        assert!(!pid_alive(pid));
        Ok(())
    }
}
