//! The steps that turn a freshly forked child into a container (or a node's mount namespace holder):
//! join a node's mount namespace, unshare a private one, build a root of bind mounts, pivot into it,
//! drop capabilities. They run between `fork` and `exec` (`CommandExt::pre_exec`) in a copy of a
//! multi-threaded process, so everything is prepared beforehand and [`run`] only makes system calls:
//! no allocation, no locks. The same steps also run on a dedicated thread to act inside a node's
//! namespace (see [`super::node_namespace`]).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

/// `struct __user_cap_header_struct` / `__user_cap_data_struct` (capability version 3: two data words).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
/// Highest capability number the kernel may know (CAP_CHECKPOINT_RESTORE is 40); higher ones fail with EINVAL.
const LAST_CAP: u32 = 63;

/// One system-call-level step.
#[derive(Debug)]
pub(crate) enum Op {
    /// Own process group, so the whole container can be signalled by one id.
    NewProcessGroup,
    /// `setns(fd, CLONE_NEWNS)`: enter a node's mount namespace.
    EnterNamespace(RawFd),
    /// `unshare(CLONE_NEWNS)`: from here on, mounts are private to this process.
    Unshare,
    /// `mount(NULL, target, NULL, flags)`: change propagation (`MS_REC | MS_SLAVE`, `MS_SHARED`, ...).
    Propagation {
        target: CString,
        flags: libc::c_ulong,
    },
    Tmpfs {
        target: CString,
        options: CString,
    },
    /// An overlay (`lowerdir=...,upperdir=...,workdir=...`): a host directory made writable per container.
    Overlay {
        target: CString,
        options: CString,
    },
    Proc {
        target: CString,
    },
    /// `mkdir`, an existing entry is fine.
    Mkdir {
        path: CString,
        mode: libc::mode_t,
    },
    /// Creates an empty file to bind a file onto; an existing one is kept.
    Touch {
        path: CString,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    /// Bind mount (`MS_REC` when recursive, as runtimes do for volumes).
    Bind {
        source: CString,
        target: CString,
        recursive: bool,
    },
    /// Read-only through `mount_setattr`, on one mount or (recursive) on the whole subtree.
    ReadOnly {
        target: CString,
        recursive: bool,
    },
    /// `umount2(target, MNT_DETACH)`; not mounted (`EINVAL`) or gone (`ENOENT`) is fine.
    Unmount {
        target: CString,
    },
    /// `chdir(root); pivot_root(".", "."); umount2(".", MNT_DETACH); chdir("/")`: the old root disappears.
    PivotRoot {
        root: CString,
    },
    Chdir {
        path: CString,
    },
    NoNewPrivileges,
    /// Keeps only these capabilities (bit mask) in the bounding set and clears inheritable and ambient ones, so
    /// that a root process gets exactly them at exec.
    LimitCapabilities {
        keep: u64,
    },
    /// `setgroups([gid]); setgid(gid); setuid(uid)`.
    SetIds {
        uid: libc::uid_t,
        gid: libc::gid_t,
    },
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("path {} contains NUL", path.display())))
}

impl Op {
    pub(crate) fn propagation(target: &Path, flags: libc::c_ulong) -> io::Result<Self> {
        Ok(Self::Propagation { target: cstring(target)?, flags })
    }
    pub(crate) fn tmpfs(target: &Path, options: &str) -> io::Result<Self> {
        Ok(Self::Tmpfs { target: cstring(target)?, options: CString::new(options)? })
    }
    pub(crate) fn proc(target: &Path) -> io::Result<Self> {
        Ok(Self::Proc { target: cstring(target)? })
    }
    pub(crate) fn mkdir(path: &Path, mode: libc::mode_t) -> io::Result<Self> {
        Ok(Self::Mkdir { path: cstring(path)?, mode })
    }
    pub(crate) fn touch(path: &Path) -> io::Result<Self> {
        Ok(Self::Touch { path: cstring(path)? })
    }
    pub(crate) fn symlink(target: &Path, link: &Path) -> io::Result<Self> {
        Ok(Self::Symlink { target: cstring(target)?, link: cstring(link)? })
    }
    pub(crate) fn bind(source: &Path, target: &Path, recursive: bool) -> io::Result<Self> {
        Ok(Self::Bind { source: cstring(source)?, target: cstring(target)?, recursive })
    }
    pub(crate) fn read_only(target: &Path, recursive: bool) -> io::Result<Self> {
        Ok(Self::ReadOnly { target: cstring(target)?, recursive })
    }
    pub(crate) fn unmount(target: &Path) -> io::Result<Self> {
        Ok(Self::Unmount { target: cstring(target)? })
    }
    pub(crate) fn pivot_root(root: &Path) -> io::Result<Self> {
        Ok(Self::PivotRoot { root: cstring(root)? })
    }
    pub(crate) fn chdir(path: &Path) -> io::Result<Self> {
        Ok(Self::Chdir { path: cstring(path)? })
    }

    /// Performs the step. Only system calls: safe between fork and exec.
    fn apply(&self) -> io::Result<()> {
        // SAFETY (whole function): plain system calls on NUL-terminated strings owned by `self` and on
        // stack-allocated structs; no memory is allocated or freed.
        unsafe {
            match self {
                Op::NewProcessGroup => check(libc::setpgid(0, 0)),
                Op::EnterNamespace(fd) => check(libc::setns(*fd, libc::CLONE_NEWNS)),
                Op::Unshare => check(libc::unshare(libc::CLONE_NEWNS)),
                Op::Propagation { target, flags } => {
                    check(libc::mount(std::ptr::null(), target.as_ptr(), std::ptr::null(), *flags, std::ptr::null()))
                }
                Op::Tmpfs { target, options } => check(libc::mount(
                    c"tmpfs".as_ptr(),
                    target.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    options.as_ptr().cast(),
                )),
                Op::Overlay { target, options } => check(libc::mount(
                    c"overlay".as_ptr(),
                    target.as_ptr(),
                    c"overlay".as_ptr(),
                    0,
                    options.as_ptr().cast(),
                )),
                Op::Proc { target } => check(libc::mount(
                    c"proc".as_ptr(),
                    target.as_ptr(),
                    c"proc".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null(),
                )),
                Op::Mkdir { path, mode } => {
                    if libc::mkdir(path.as_ptr(), *mode) == 0 {
                        // mkdir applies the umask; the mode asked for is the mode wanted (emptyDir-like 0777).
                        check(libc::chmod(path.as_ptr(), *mode))
                    } else {
                        let err = io::Error::last_os_error();
                        if err.raw_os_error() == Some(libc::EEXIST) {
                            Ok(())
                        } else {
                            Err(err)
                        }
                    }
                }
                Op::Touch { path } => {
                    let fd = libc::open(path.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o644);
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    libc::close(fd);
                    Ok(())
                }
                Op::Symlink { target, link } => {
                    if libc::symlink(target.as_ptr(), link.as_ptr()) == 0 {
                        Ok(())
                    } else {
                        let err = io::Error::last_os_error();
                        if err.raw_os_error() == Some(libc::EEXIST) {
                            Ok(())
                        } else {
                            Err(err)
                        }
                    }
                }
                Op::Bind { source, target, recursive } => {
                    let flags = libc::MS_BIND | if *recursive { libc::MS_REC } else { 0 };
                    check(libc::mount(source.as_ptr(), target.as_ptr(), std::ptr::null(), flags, std::ptr::null()))
                }
                Op::ReadOnly { target, recursive } => {
                    let attr = libc::mount_attr {
                        attr_set: libc::MOUNT_ATTR_RDONLY,
                        attr_clr: 0,
                        propagation: 0,
                        userns_fd: 0,
                    };
                    let flags = if *recursive { libc::AT_RECURSIVE } else { 0 };
                    check_long(libc::syscall(
                        libc::SYS_mount_setattr,
                        libc::AT_FDCWD,
                        target.as_ptr(),
                        flags,
                        &attr as *const libc::mount_attr,
                        std::mem::size_of::<libc::mount_attr>(),
                    ))
                }
                Op::Unmount { target } => {
                    if libc::umount2(target.as_ptr(), libc::MNT_DETACH) == 0 {
                        Ok(())
                    } else {
                        let err = io::Error::last_os_error();
                        match err.raw_os_error() {
                            Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(()),
                            _ => Err(err),
                        }
                    }
                }
                Op::PivotRoot { root } => {
                    check(libc::chdir(root.as_ptr()))?;
                    check_long(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()))?;
                    check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
                    check(libc::chdir(c"/".as_ptr()))
                }
                Op::Chdir { path } => check(libc::chdir(path.as_ptr())),
                Op::NoNewPrivileges => check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)),
                Op::LimitCapabilities { keep } => {
                    for cap in 0..=LAST_CAP {
                        if keep & (1u64 << cap) == 0
                            && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
                        {
                            let err = io::Error::last_os_error();
                            // Past the kernel's last capability.
                            if err.raw_os_error() != Some(libc::EINVAL) {
                                return Err(err);
                            }
                        }
                    }
                    check(libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0))?;
                    let mut header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
                    let mut data = [CapData::default(); 2];
                    check_long(libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, data.as_mut_ptr()))?;
                    data[0].inheritable = 0;
                    data[1].inheritable = 0;
                    check_long(libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()))
                }
                Op::SetIds { uid, gid } => {
                    check(libc::setgroups(1, gid as *const libc::gid_t))?;
                    check(libc::setgid(*gid))?;
                    check(libc::setuid(*uid))
                }
            }
        }
    }

    /// What the step is, for the error message (no allocation: a static word and the step's path).
    fn describe(&self) -> (&'static CStr, Option<&CStr>) {
        match self {
            Op::NewProcessGroup => (c"setpgid", None),
            Op::EnterNamespace(_) => (c"setns (node mount namespace)", None),
            Op::Unshare => (c"unshare (mount namespace)", None),
            Op::Propagation { target, .. } => (c"propagation", Some(target)),
            Op::Tmpfs { target, .. } => (c"mount tmpfs", Some(target)),
            Op::Overlay { target, .. } => (c"mount overlay", Some(target)),
            Op::Proc { target } => (c"mount proc", Some(target)),
            Op::Mkdir { path, .. } => (c"mkdir", Some(path)),
            Op::Touch { path } => (c"create", Some(path)),
            Op::Symlink { link, .. } => (c"symlink", Some(link)),
            Op::Bind { target, .. } => (c"bind mount onto", Some(target)),
            Op::ReadOnly { target, .. } => (c"read-only", Some(target)),
            Op::Unmount { target } => (c"unmount", Some(target)),
            Op::PivotRoot { root } => (c"pivot_root", Some(root)),
            Op::Chdir { path } => (c"chdir", Some(path)),
            Op::NoNewPrivileges => (c"no_new_privs", None),
            Op::LimitCapabilities { .. } => (c"capabilities", None),
            Op::SetIds { .. } => (c"setuid/setgid", None),
        }
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn check_long(rc: libc::c_long) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Runs the steps in order and stops at the first failure, after writing which step failed (and errno) to
/// standard error — for a container that is its log.
pub(crate) fn run(ops: &[Op]) -> io::Result<()> {
    for op in ops {
        if let Err(err) = op.apply() {
            report(op, &err);
            return Err(err);
        }
    }
    Ok(())
}

fn report(op: &Op, err: &io::Error) {
    let (what, path) = op.describe();
    write_stderr(b"coracle-sim container setup failed: ");
    write_stderr(what.to_bytes());
    if let Some(path) = path {
        write_stderr(b" ");
        write_stderr(path.to_bytes());
    }
    write_stderr(b": errno ");
    let mut digits = [0u8; 12];
    let mut n = err.raw_os_error().unwrap_or(0).unsigned_abs();
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    write_stderr(&digits[at..]);
    write_stderr(b"\n");
}

fn write_stderr(bytes: &[u8]) {
    // SAFETY: write(2) on fd 2 from a valid buffer.
    unsafe {
        libc::write(2, bytes.as_ptr().cast(), bytes.len());
    }
}

/// Capability numbers by name (`CAP_` prefix optional, any case), as a container's securityContext names them.
pub(crate) fn capability_number(name: &str) -> Option<u32> {
    const NAMES: [&str; 41] = [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    NAMES.iter().position(|n| *n == bare).and_then(|i| u32::try_from(i).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names() {
        assert_eq!(capability_number("CHOWN"), Some(0));
        assert_eq!(capability_number("cap_dac_read_search"), Some(2));
        assert_eq!(capability_number("SYS_ADMIN"), Some(21));
        assert_eq!(capability_number("CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(capability_number("FLY"), None);
    }
}
