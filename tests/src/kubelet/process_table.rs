//! Every process the simulated cluster starts (container processes and node namespace holders), so that each
//! can be stopped by its id — one node's on node loss, all of them at shutdown — and none outlives the cluster.
//!
//! Each process leads its own process group. A waiter thread notices the exit without reaping
//! (`waitid(WNOWAIT)`), kills what is left of the group — a container's other processes die with its main
//! process, as they do when a pid namespace's init exits — and only then reaps, so the group id can never be
//! reused while it may still be signalled.

use std::collections::BTreeMap;
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Entry {
    owner: String,
    reaped: Arc<Mutex<bool>>,
    waiter: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Inner {
    entries: BTreeMap<u32, Entry>,
    /// Owners whose processes must not run any more (a lost node), or nobody's (`all_closed`: shutdown).
    closed: std::collections::HashSet<String>,
    all_closed: bool,
}

/// A process being killed: pid, its reaped flag, its waiter thread.
type Taken = (u32, Arc<Mutex<bool>>, Option<JoinHandle<()>>);

/// Shared table of running processes; clones share it.
#[derive(Clone, Default)]
pub(crate) struct ProcessTable {
    inner: Arc<Mutex<Inner>>,
}

/// A running (or finished) process of the table.
#[derive(Clone)]
pub(crate) struct Process {
    pid: u32,
    reaped: Arc<Mutex<bool>>,
    exit: watch::Receiver<Option<ExitStatus>>,
}

/// Sends a signal to a whole process group, unless its leader has been reaped already.
fn signal_group(pid: u32, reaped: &Mutex<bool>, signal: libc::c_int) {
    let reaped = lock(reaped);
    if !*reaped {
        if let Ok(pid) = libc::pid_t::try_from(pid) {
            // SAFETY: kill(2) on the process group this table started and has not reaped.
            unsafe {
                libc::kill(-pid, signal);
            }
        }
    }
}

impl ProcessTable {
    /// Registers a just-spawned child (which made itself a process group leader) under an owner (a node name).
    pub(crate) fn adopt(&self, child: Child, owner: &str) -> Process {
        let pid = child.id();
        let reaped = Arc::new(Mutex::new(false));
        let (tx, rx) = watch::channel(None);
        let table = self.clone();
        let thread_reaped = reaped.clone();
        // Registered before the waiter can run, so that its removal always finds the entry.
        let mut inner = lock(&self.inner);
        let waiter = std::thread::Builder::new()
            .name(format!("reap-{pid}"))
            .spawn(move || {
                let status = wait_and_reap(child, &thread_reaped);
                lock(&table.inner).entries.remove(&pid);
                tx.send_replace(status);
            })
            .ok();
        let closed = inner.all_closed || inner.closed.contains(owner);
        inner.entries.insert(pid, Entry { owner: owner.to_string(), reaped: reaped.clone(), waiter });
        drop(inner);
        let process = Process { pid, reaped, exit: rx };
        if closed {
            // Started while its node was being lost or the cluster shut down: it goes at once.
            process.signal(libc::SIGKILL);
        }
        process
    }

    /// No process of this owner (or, with `None`, of anyone) may run from now on; see [`ProcessTable::kill`].
    pub(crate) fn close(&self, owner: Option<&str>) {
        let mut inner = lock(&self.inner);
        match owner {
            Some(o) => {
                inner.closed.insert(o.to_string());
            }
            None => inner.all_closed = true,
        }
    }

    /// Pids of the processes still running, of one owner or all.
    pub(crate) fn pids(&self, owner: Option<&str>) -> Vec<u32> {
        lock(&self.inner)
            .entries
            .iter()
            .filter(|(_, e)| owner.is_none_or(|o| e.owner == o))
            .map(|(pid, _)| *pid)
            .collect()
    }

    /// SIGKILLs every process group of an owner (or all) and waits until each is reaped.
    pub(crate) fn kill(&self, owner: Option<&str>) {
        let taken: Vec<Taken> = {
            let mut inner = lock(&self.inner);
            inner
                .entries
                .iter_mut()
                .filter(|(_, e)| owner.is_none_or(|o| e.owner == o))
                .map(|(pid, e)| (*pid, e.reaped.clone(), e.waiter.take()))
                .collect()
        };
        for (pid, reaped, _) in &taken {
            signal_group(*pid, reaped, libc::SIGKILL);
        }
        for (_, _, waiter) in taken {
            if let Some(waiter) = waiter {
                let _ = waiter.join();
            }
        }
    }
}

/// Blocks until the child exits, kills the rest of its group, then reaps it.
fn wait_and_reap(mut child: Child, reaped: &Mutex<bool>) -> Option<ExitStatus> {
    let pid: libc::id_t = child.id();
    loop {
        // SAFETY: waitid on our own child with a zeroed siginfo buffer; WNOWAIT leaves it reapable.
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT)
        };
        if rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    let mut reaped = lock(reaped);
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: the group leader is a zombie we have not reaped: the group id is still ours.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let status = child.wait().ok();
    *reaped = true;
    status
}

impl Process {
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Signals the process group (no-op once reaped).
    pub(crate) fn signal(&self, signal: libc::c_int) {
        signal_group(self.pid, &self.reaped, signal);
    }

    /// Waits for the exit. `None` only if the status could not be read.
    pub(crate) async fn wait(&self) -> Option<ExitStatus> {
        let mut rx = self.exit.clone();
        loop {
            if let Some(status) = *rx.borrow_and_update() {
                return Some(status);
            }
            if rx.changed().await.is_err() {
                return *rx.borrow();
            }
        }
    }

    /// SIGTERM to the group, SIGKILL after `grace`, and the exit status.
    pub(crate) async fn stop(&self, grace: Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(status) => status,
            Err(_) => {
                self.signal(libc::SIGKILL);
                self.wait().await
            }
        }
    }
}

/// A container-style exit code: the code, or 128 + the signal that killed the process.
pub(crate) fn exit_code(status: Option<ExitStatus>) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    match status {
        Some(s) => s.code().or_else(|| s.signal().map(|sig| 128 + sig)).unwrap_or(-1),
        None => -1,
    }
}
