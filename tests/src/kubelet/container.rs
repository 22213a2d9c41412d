//! Starting one container: a process in its own mount namespace (a child of its node's namespace) whose
//! root is built the way a runtime builds it, then `pivot_root` and exec.
//!
//! The root is a tmpfs holding:
//! - the "image": the host's `/usr`, `/etc`, `/bin`, `/sbin` and `/lib*` as overlays (host directory below,
//!   a per-container tmpfs layer above), so the image is writable and throw-away, and mount points such as
//!   `/usr/share/nginx/html` can be created in it without touching the host; symlinked ones (merged /usr)
//!   stay symlinks;
//! - `/proc` (a new procfs; there is no pid namespace, so it lists every process), `/sys` (read-only), a
//!   minimal `/dev` (null, zero, full, random, urandom, tty, shm) and empty `/tmp`, `/root`, `/var`, `/run`;
//! - the executables of the simulation's binary directories (read-only) and shared host paths (same path
//!   inside and out);
//! - the volume mounts, parents first, read-only where asked (recursively with `recursiveReadOnly`), private
//!   unless `mountPropagation` asks for `HostToContainer`/`Bidirectional` (both receive the node's later mounts;
//!   nothing propagates back to the node);
//! - `/etc/hosts` and `/etc/hostname` written by the kubelet, and the termination message file.
//!
//! `readOnlyRootFilesystem` makes the tmpfs and the image overlays read-only after the mount points exist.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

use super::mount_ops::{self, Op};
use super::process_table::{Process, ProcessTable};

/// How a volume mount receives mounts made later on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Propagation {
    Private,
    HostToContainer,
}

/// One bind mount into the container.
#[derive(Debug, Clone)]
pub(crate) struct Mount {
    /// Host path (as the node's namespace sees it).
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub target: String,
    pub read_only: bool,
    pub recursive_read_only: bool,
    pub propagation: Propagation,
}

/// Everything needed to start one container process.
pub(crate) struct ContainerSpec {
    /// An empty host directory the container's root is built on (the tmpfs is mounted there only inside the
    /// container's namespace).
    pub root_dir: PathBuf,
    pub argv: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub working_dir: String,
    /// Host directories with the simulation's binaries, and where they appear inside.
    pub bin_dirs: Vec<(PathBuf, String)>,
    /// Host paths visible at the same path inside (stand-ins for network storage such as restic repositories).
    pub shared_paths: Vec<PathBuf>,
    pub mounts: Vec<Mount>,
    /// Files the kubelet writes and binds over files of the image (`/etc/hosts`, the termination log).
    pub files: Vec<(PathBuf, String)>,
    pub read_only_root: bool,
    pub no_new_privileges: bool,
    /// Capability bit mask to keep; `None` keeps everything (privileged).
    pub capabilities: Option<u64>,
    pub run_as: Option<(u32, u32)>,
    /// Standard output and error go here.
    pub log: PathBuf,
}

/// Image directories taken from the host.
const IMAGE_DIRS: &[&str] = &["/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// Capabilities a container runtime grants by default (containerd's list).
const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// The capability mask a securityContext asks for: the runtime default, minus `drop`, plus `add` (`ALL` works in both).
pub(crate) fn capability_mask(add: &[String], drop: &[String]) -> u64 {
    let bit = |name: &str| mount_ops::capability_number(name).map_or(0, |n| 1u64 << n);
    let all = (0..=40).fold(0u64, |m, n| m | (1u64 << n));
    let mut mask = DEFAULT_CAPABILITIES.iter().fold(0u64, |m, c| m | bit(c));
    for d in drop {
        mask &= if d.eq_ignore_ascii_case("ALL") { 0 } else { !bit(d) };
    }
    for a in add {
        mask |= if a.eq_ignore_ascii_case("ALL") { all } else { bit(a) };
    }
    mask
}

/// `root` joined with an absolute container path; `..` is refused.
fn inside(root: &Path, container_path: &str) -> anyhow::Result<PathBuf> {
    let mut out = root.to_path_buf();
    for component in Path::new(container_path).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            Component::ParentDir | Component::Prefix(_) => bail!("container path {container_path:?} contains '..'"),
        }
    }
    Ok(out)
}

/// mkdir steps for every directory from `root` (exclusive) down to `path` (exclusive).
fn parents(root: &Path, path: &Path, ops: &mut Vec<Op>) -> anyhow::Result<()> {
    let relative = path.strip_prefix(root).context("mount point outside the container root")?;
    let mut at = root.to_path_buf();
    let mut components: Vec<_> = relative.components().collect();
    components.pop();
    for c in components {
        at.push(c);
        ops.push(Op::mkdir(&at, 0o755)?);
    }
    Ok(())
}

/// The mount point for a source: a file for a file, a directory otherwise.
fn mount_point(root: &Path, target: &Path, source: &Path, ops: &mut Vec<Op>) -> anyhow::Result<()> {
    parents(root, target, ops)?;
    if source.is_file() {
        ops.push(Op::touch(target)?);
    } else {
        ops.push(Op::mkdir(target, 0o755)?);
    }
    Ok(())
}

/// The steps that build the container's root and process state.
fn plan(spec: &ContainerSpec, node_ns: std::os::fd::RawFd) -> anyhow::Result<Vec<Op>> {
    let root = spec.root_dir.join("root");
    let layers = spec.root_dir.join("layers");
    let mut ops = vec![
        Op::NewProcessGroup,
        Op::EnterNamespace(node_ns),
        Op::Unshare,
        // Receive the node's mounts (HostToContainer), send nothing back.
        Op::propagation(Path::new("/"), libc::MS_REC | libc::MS_SLAVE)?,
        Op::tmpfs(&layers, "mode=700")?,
        Op::tmpfs(&root, "mode=755")?,
    ];
    let mut overlays = Vec::new();
    for dir in IMAGE_DIRS {
        let host = Path::new(dir);
        let Ok(meta) = host.symlink_metadata() else { continue };
        let target = inside(&root, dir)?;
        if meta.file_type().is_symlink() {
            ops.push(Op::symlink(&std::fs::read_link(host)?, &target)?);
        } else if meta.is_dir() {
            let name = dir.trim_start_matches('/');
            let (upper, work) = (layers.join(name).join("upper"), layers.join(name).join("work"));
            for d in [layers.join(name), upper.clone(), work.clone(), target.clone()] {
                ops.push(Op::mkdir(&d, 0o755)?);
            }
            let options = format!("lowerdir={dir},upperdir={},workdir={}", upper.display(), work.display());
            ops.push(Op::Overlay { target: cstr(&target)?, options: std::ffi::CString::new(options)? });
            overlays.push(target);
        }
    }
    for (dir, mode) in [
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("var", 0o755),
        ("run", 0o755),
    ] {
        ops.push(Op::mkdir(&root.join(dir), mode)?);
    }
    ops.push(Op::proc(&root.join("proc"))?);
    ops.push(Op::bind(Path::new("/sys"), &root.join("sys"), true)?);
    ops.push(Op::read_only(&root.join("sys"), true)?);
    let dev = root.join("dev");
    ops.push(Op::tmpfs(&dev, "mode=755")?);
    for device in DEVICES {
        let host = Path::new("/dev").join(device);
        if host.exists() {
            ops.push(Op::touch(&dev.join(device))?);
            ops.push(Op::bind(&host, &dev.join(device), false)?);
        }
    }
    ops.push(Op::mkdir(&dev.join("shm"), 0o1777)?);
    ops.push(Op::tmpfs(&dev.join("shm"), "mode=1777")?);
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        ops.push(Op::symlink(Path::new(target), &dev.join(name))?);
    }
    // Each executable on its own (symlinks resolved on the host, since their targets are not mounted).
    for (host, container) in &spec.bin_dirs {
        let dir = inside(&root, container)?;
        parents(&root, &dir, &mut ops)?;
        ops.push(Op::mkdir(&dir, 0o755)?);
        for entry in std::fs::read_dir(host).with_context(|| format!("reading {}", host.display()))? {
            let entry = entry?;
            let Ok(real) = entry.path().canonicalize() else { continue };
            let executable = real.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            if executable {
                let target = dir.join(entry.file_name());
                ops.push(Op::touch(&target)?);
                ops.push(Op::bind(&real, &target, false)?);
                ops.push(Op::read_only(&target, false)?);
            }
        }
    }
    // Parents before children, so a nested mount lands inside its parent volume.
    let mut mounts: Vec<&Mount> = spec.mounts.iter().collect();
    mounts.sort_by_key(|m| Path::new(&m.target).components().count());
    for m in mounts {
        let target = inside(&root, &m.target)?;
        mount_point(&root, &target, &m.source, &mut ops)?;
        ops.push(Op::bind(&m.source, &target, true)?);
        if m.read_only {
            ops.push(Op::read_only(&target, m.recursive_read_only)?);
        }
        let propagation = match m.propagation {
            Propagation::Private => libc::MS_REC | libc::MS_PRIVATE,
            Propagation::HostToContainer => libc::MS_REC | libc::MS_SLAVE,
        };
        ops.push(Op::propagation(&target, propagation)?);
    }
    // Shared paths last, so that no volume hides them (a shared path below a volume's mount path gets its
    // mount point created inside that volume, as any nested mount does).
    for shared in &spec.shared_paths {
        let target = inside(&root, &shared.to_string_lossy())?;
        mount_point(&root, &target, shared, &mut ops)?;
        ops.push(Op::bind(shared, &target, true)?);
    }
    for (host, container) in &spec.files {
        let target = inside(&root, container)?;
        parents(&root, &target, &mut ops)?;
        ops.push(Op::touch(&target)?);
        ops.push(Op::bind(host, &target, false)?);
    }
    let work = inside(&root, &spec.working_dir)?;
    parents(&root, &work, &mut ops)?;
    ops.push(Op::mkdir(&work, 0o755)?);
    if spec.read_only_root {
        ops.push(Op::read_only(&root, false)?);
        for overlay in &overlays {
            ops.push(Op::read_only(overlay, false)?);
        }
    }
    ops.push(Op::pivot_root(&root)?);
    ops.push(Op::chdir(Path::new(&spec.working_dir))?);
    if spec.no_new_privileges {
        ops.push(Op::NoNewPrivileges);
    }
    if let Some(keep) = spec.capabilities {
        ops.push(Op::LimitCapabilities { keep });
    }
    if let Some((uid, gid)) = spec.run_as {
        ops.push(Op::SetIds { uid, gid });
    }
    Ok(ops)
}

fn cstr(path: &Path) -> anyhow::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt as _;
    Ok(std::ffi::CString::new(path.as_os_str().as_bytes())?)
}

/// Why a container did not start.
#[derive(Debug)]
pub(crate) struct StartError(pub String);

/// Starts the container's process; its exit is observed through the returned [`Process`].
pub(crate) fn start(
    spec: &ContainerSpec,
    node_ns: std::os::fd::RawFd,
    table: &ProcessTable,
    owner: &str,
) -> Result<Process, StartError> {
    let fail = |e: anyhow::Error| StartError(format!("{e:#}"));
    for dir in [spec.root_dir.join("root"), spec.root_dir.join("layers")] {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display())).map_err(fail)?;
    }
    let ops = plan(spec, node_ns).map_err(fail)?;
    let log = File::options()
        .create(true)
        .append(true)
        .open(&spec.log)
        .with_context(|| format!("opening the log {}", spec.log.display()))
        .map_err(fail)?;
    let log2 = log.try_clone().map_err(|e| StartError(format!("duplicating the log descriptor: {e}")))?;
    let (program, args) = spec.argv.split_first().ok_or_else(|| StartError("no command to run".into()))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2));
    // SAFETY: `mount_ops::run` only makes system calls on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || mount_ops::run(&ops));
    }
    match cmd.spawn() {
        Ok(child) => Ok(table.adopt(child, owner)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(StartError(format!("exec: {:?}: executable file not found in $PATH", program.to_string_lossy())))
        }
        Err(e) => Err(StartError(format!("starting {:?}: {e} (see the container log)", program.to_string_lossy()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_masks() {
        let only = capability_mask(&["DAC_READ_SEARCH".into()], &["ALL".into()]);
        assert_eq!(only, 1 << 2);
        let default = capability_mask(&[], &[]);
        assert_ne!(default & (1 << 0), 0, "CHOWN by default");
        assert_eq!(default & (1 << 21), 0, "no SYS_ADMIN by default");
        assert_eq!(capability_mask(&["SYS_ADMIN".into()], &["CHOWN".into()]) & ((1 << 21) | 1), 1 << 21);
    }

    #[test]
    fn container_paths_stay_inside() {
        let root = Path::new("/r");
        assert_eq!(inside(root, "/host/pods").expect("inside"), Path::new("/r/host/pods"));
        assert_eq!(inside(root, "/").expect("root"), Path::new("/r"));
        assert!(inside(root, "/a/../../etc").is_err());
    }
}
