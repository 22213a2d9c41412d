//! A simulated node's own mount namespace: what a real node's host mount table is to its kubelet.
//!
//! A holder process (`sleep infinity`, in its own process group) keeps the namespace alive. In it the node's
//! kubelet root is a shared bind mount of itself, so the PV bind mounts the kubelet makes there (volume
//! set-up) propagate into containers that mount the pods directory with `HostToContainer` propagation,
//! even when the container started first — as on a real node. Nothing is ever mounted in the host's own
//! namespace: when the node goes (node loss, shutdown) the holder is killed and every mount goes with it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

use super::mount_ops::{self, Op};
use super::process_table::{Process, ProcessTable};

pub(crate) struct NodeNamespace {
    holder: Process,
    ns: File,
    ns_inode: u64,
}

fn namespace_inode(path: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(path)?.ino())
}

impl NodeNamespace {
    /// Starts the holder with `kubelet_root` (created if missing) as a shared mount in its new namespace.
    pub(crate) fn create(kubelet_root: &Path, table: &ProcessTable, owner: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(kubelet_root).with_context(|| format!("creating {}", kubelet_root.display()))?;
        let ops = vec![
            Op::NewProcessGroup,
            Op::Unshare,
            Op::propagation(Path::new("/"), libc::MS_REC | libc::MS_PRIVATE)?,
            Op::bind(kubelet_root, kubelet_root, true)?,
            Op::propagation(kubelet_root, libc::MS_SHARED)?,
        ];
        let mut cmd = Command::new("sleep");
        cmd.arg("infinity").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
        // SAFETY: `mount_ops::run` only makes system calls on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || mount_ops::run(&ops));
        }
        let child = cmd.spawn().context("starting the node's mount namespace (unshare -m as root)")?;
        let holder = table.adopt(child, owner);
        let ns_path = format!("/proc/{}/ns/mnt", holder.pid());
        let opened = File::open(&ns_path).and_then(|f| Ok((namespace_inode(Path::new(&ns_path))?, f)));
        let (ns_inode, ns) = match opened {
            Ok(found) => found,
            Err(e) => {
                holder.signal(libc::SIGKILL);
                bail!("opening {ns_path}: {e}");
            }
        };
        if ns_inode == namespace_inode(Path::new("/proc/self/ns/mnt"))? {
            holder.signal(libc::SIGKILL);
            bail!("the node's mount namespace is the host's: refusing to mount anything");
        }
        Ok(Self { holder, ns, ns_inode })
    }

    /// The namespace as a file descriptor to `setns` into (valid while `self` lives).
    pub(crate) fn fd(&self) -> std::os::fd::RawFd {
        self.ns.as_raw_fd()
    }

    /// Runs steps inside the node's namespace on a throw-away thread (a thread can change its mount namespace
    /// once it stops sharing filesystem state with the others). Blocking.
    pub(crate) fn run(&self, ops: Vec<Op>) -> anyhow::Result<()> {
        let fd = self.ns.try_clone().context("duplicating the namespace descriptor")?;
        let expected = self.ns_inode;
        let thread = std::thread::Builder::new().name("node-mount-ns".into()).spawn(move || -> io::Result<()> {
            // SAFETY: this thread is about to exit; unshare/setns affect only it.
            unsafe {
                if libc::unshare(libc::CLONE_FS) != 0 || libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNS) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // Belt and braces: never mount anything unless this thread is really in the node's namespace.
            if namespace_inode(Path::new("/proc/thread-self/ns/mnt"))? != expected {
                return Err(io::Error::other("setns did not enter the node's mount namespace"));
            }
            mount_ops::run(&ops)
        })?;
        match thread.join() {
            Ok(result) => result.context("acting in the node's mount namespace"),
            Err(_) => bail!("the node namespace thread panicked"),
        }
    }

    /// A host path as the node sees it (through `/proc/<holder>/root`): PV mounts included.
    pub(crate) fn view(&self, path: &Path) -> PathBuf {
        let relative = path.strip_prefix("/").unwrap_or(path);
        PathBuf::from(format!("/proc/{}/root", self.holder.pid())).join(relative)
    }

    /// Mount points in the node's namespace at or below `prefix`, deepest first.
    pub(crate) fn mounts_under(&self, prefix: &Path) -> anyhow::Result<Vec<PathBuf>> {
        let path = format!("/proc/{}/mountinfo", self.holder.pid());
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let mut found: Vec<PathBuf> = text
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .map(|escaped| PathBuf::from(unescape_mountinfo(escaped)))
            .filter(|p| p.starts_with(prefix))
            .collect();
        found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        found.dedup();
        Ok(found)
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            out.push((bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::unescape_mountinfo;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
