//! Keeping the inotify teardown off the pod's critical path.
//!
//! Releasing an inotify instance that held watches waits for an SRCU grace period in the
//! kernel (`fsnotify_destroy_group` flushes the mark reaper): about 8 ms on an idle machine
//! and tens of milliseconds under load, which is most of the time between the last marker and
//! this init container's exit — time the pod's own containers wait for (issue 8, B4).
//!
//! [`park`] hands the descriptor to the kernel instead: it is sent (SCM_RIGHTS) into a unix
//! socket that is itself in flight on its own queue, and both ends are closed. Nothing can
//! reach that cycle any more, so the kernel's unix-socket garbage collector frees it, and
//! with it the inotify instance. Since Linux 6.10 the collector runs in a kernel worker, so
//! the grace period is waited for there, not by this process. On older kernels it runs when
//! the socket is closed, which costs what a plain close costs; if anything fails the
//! descriptor is simply closed. Either way the instance is released exactly once.

use rustix::net::{
    sendmsg, socketpair, AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};

/// Releases `fd` through the unix-socket garbage collector (see the module documentation).
pub fn park(fd: OwnedFd) {
    let Ok((sender, receiver)) = socketpair(AddressFamily::UNIX, SocketType::DGRAM, SocketFlags::CLOEXEC, None) else {
        return;
    };
    let fds = [fd.as_fd(), receiver.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if control.push(SendAncillaryMessage::ScmRights(&fds)) {
        // On failure nothing is in flight and the drops below close everything as usual.
        let _ = sendmsg(&sender, &[IoSlice::new(&[0])], &mut control, SendFlags::DONTWAIT);
    }
    // `fd`, `sender` and `receiver` are closed here; only the in-flight references remain.
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::{Duration, Instant};

    /// The parked end is really released (no leak): its peer sees end of file once the
    /// collector has run, and nothing before.
    #[test]
    fn a_parked_descriptor_is_released() {
        let (a, b) = socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None).unwrap();
        let mut peer = std::os::unix::net::UnixStream::from(b);
        peer.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut buf = [0u8; 8];
        // Still open: a read times out rather than reporting end of file.
        assert!(peer.read(&mut buf).is_err());
        park(a);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match peer.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => panic!("unexpected {n} bytes"),
                Err(_) => assert!(Instant::now() < deadline, "the parked descriptor was never released"),
            }
        }
    }
}
