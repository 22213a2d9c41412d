//! The markers a restore Job leaves in the volume for the pod's restore-wait helper:
//! `<volume>/.coracle/<restore-uid>` once the data is in place, or, after a final failure,
//! `<volume>/.coracle/<restore-uid>.failed` holding the reason.
//!
//! The Job runs as root on the node, and `.coracle` is a name inside user data: a restored
//! snapshot may hold a `.coracle` symlink to anywhere on the node. So every step goes through
//! directory descriptors with `O_NOFOLLOW`; a `.coracle` that is not a plain directory is
//! refused, never followed. Each marker is written to a temporary file, synced and renamed,
//! so the helper never sees a half-written one.
//!
//! A restore can fill its volume (a target smaller than the data: restic fails with ENOSPC),
//! and then no new marker fits. So before restic runs, [`reserve`] sets the room aside: a
//! hidden `.<restore-uid>.reserved` file with [`MAX_REASON`] bytes allocated. The marker is
//! then written into that space and renamed into place; neither needs a new data block, so
//! the helper hears of the failure on a full volume too instead of waiting for its timeout.
//!
//! `.coracle` is made world-writable (mode 0777, without the sticky bit): the helper runs as
//! an arbitrary non-root user and must be able to remove the markers root wrote. That grants
//! nothing new: whoever can reach `.coracle` can already write the volume it lives in.

use coracle_events::{FAILED_MARKER_SUFFIX, MARKER_DIR};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Longest failure reason written; the helper reads at most this much.
pub const MAX_REASON: usize = 4096;
/// Bytes set aside for the marker: room for the longest reason.
const RESERVED: u64 = MAX_REASON as u64;
/// A failed attempt leaving less free than this keeps its reservation for the retry: it
/// probably filled the volume, and the retry could not set aside room anew.
const ROOM_FOR_A_RETRY: u64 = 1 << 20;
const RESERVED_SUFFIX: &str = ".reserved";
const DIR_MODE: u32 = 0o777;
const FILE_MODE: u32 = 0o644;

#[derive(Debug, thiserror::Error)]
pub enum MarkerError {
    #[error("{path} {reason}: refusing to write the restore marker through it")]
    Unsafe { path: PathBuf, reason: &'static str },
    #[error("writing the restore marker {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Creates `<volume>/.coracle` before the restore starts, so that every helper waiting on the
/// volume watches it well before the marker arrives: on a volume several pods share, the first
/// helper removes the marker at once, and the others must see it arrive. Also refuses an
/// unsafe `.coracle` before a long restore rather than after it.
pub fn prepare(volume: &Path) -> Result<(), MarkerError> {
    let vol = open_volume(volume)?;
    marker_dir(&vol, &volume.join(MARKER_DIR)).map(drop)
}

/// Writes `<volume>/.coracle/<uid>`: the restore of this volume is done.
pub fn write_done(volume: &Path, uid: &str, content: &str) -> Result<PathBuf, MarkerError> {
    write(volume, uid, content.as_bytes())
}

/// Writes `<volume>/.coracle/<uid>.failed` holding `reason` (cut to [`MAX_REASON`] bytes).
pub fn write_failed(volume: &Path, uid: &str, reason: &str) -> Result<PathBuf, MarkerError> {
    write(volume, &format!("{uid}{FAILED_MARKER_SUFFIX}"), truncate(reason, MAX_REASON).as_bytes())
}

/// Removes a failure marker an earlier attempt left, if any.
pub fn remove_failed(volume: &Path, uid: &str) -> Result<(), MarkerError> {
    let dir_path = volume.join(MARKER_DIR);
    let vol = open_volume(volume)?;
    let dir = match open_marker_dir(&vol, &dir_path) {
        Ok(dir) => dir,
        Err(MarkerError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let name = format!("{uid}{FAILED_MARKER_SUFFIX}");
    match rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(MarkerError::Io { path: dir_path.join(name), source: e.into() }),
    }
}

/// Room in `<volume>/.coracle` for this restore's marker, set aside before the restore.
/// Consumed by writing a marker into it, or given up by [`Reservation::release`]; a process
/// killed in between leaves it for its retry to reuse.
#[derive(Debug)]
pub struct Reservation {
    dir: OwnedFd,
    dir_path: PathBuf,
    name: String,
    file: std::fs::File,
    uid: String,
}

/// Creates `.coracle` (like [`prepare`]) and sets aside [`MAX_REASON`] bytes in it for the
/// marker of restore `uid`. An earlier attempt's reservation is reused: on a volume that
/// attempt filled, it is the only room there is.
pub fn reserve(volume: &Path, uid: &str) -> Result<Reservation, MarkerError> {
    let dir_path = volume.join(MARKER_DIR);
    let vol = open_volume(volume)?;
    let dir = marker_dir(&vol, &dir_path)?;
    let name = format!(".{uid}{RESERVED_SUFFIX}");
    let path = dir_path.join(&name);
    let io_err = |e: Errno| MarkerError::Io { path: path.clone(), source: e.into() };
    // NONBLOCK: a FIFO planted under this name must not hang the open (ENXIO instead).
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(&dir, name.as_str(), flags, Mode::from_raw_mode(FILE_MODE)) {
        Ok(fd) => fd,
        Err(Errno::LOOP) => return Err(MarkerError::Unsafe { path, reason: "is a symbolic link" }),
        Err(e) => return Err(io_err(e)),
    };
    let st = rustix::fs::fstat(&fd).map_err(io_err)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(MarkerError::Unsafe { path, reason: "is not a regular file" });
    }
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(FILE_MODE)).map_err(io_err)?;
    allocate(&fd, st.st_blocks as u64 * 512).map_err(|source| MarkerError::Io { path: path.clone(), source })?;
    let file = std::fs::File::from(fd);
    file.sync_all().map_err(|source| MarkerError::Io { path: path.clone(), source })?;
    rustix::fs::fsync(&dir).map_err(|e| MarkerError::Io { path: dir_path.clone(), source: e.into() })?;
    Ok(Reservation { dir, dir_path, name, file, uid: uid.to_string() })
}

/// Allocates [`RESERVED`] bytes; `allocated` is what the file already holds (a reused one).
fn allocate(fd: &OwnedFd, allocated: u64) -> io::Result<()> {
    match rustix::fs::fallocate(fd, rustix::fs::FallocateFlags::empty(), 0, RESERVED) {
        Ok(()) => Ok(()),
        Err(_) if allocated >= RESERVED => Ok(()),
        // No fallocate on this file system: written bytes hold their blocks too.
        Err(Errno::OPNOTSUPP | Errno::NOSYS) => {
            std::os::unix::fs::FileExt::write_all_at(&std::fs::File::from(fd.try_clone()?), &[b' '; MAX_REASON], 0)
        }
        Err(e) => Err(e.into()),
    }
}

impl Reservation {
    /// Writes `<uid>` (the restore of this volume is done) into the reserved space.
    pub fn write_done(self, content: &str) -> Result<PathBuf, MarkerError> {
        let name = self.uid.clone();
        self.fill(&name, content.as_bytes())
    }

    /// Writes `<uid>.failed` holding `reason` (cut to [`MAX_REASON`] bytes) into the reserved space.
    pub fn write_failed(self, reason: &str) -> Result<PathBuf, MarkerError> {
        let name = format!("{}{FAILED_MARKER_SUFFIX}", self.uid);
        self.fill(&name, truncate(reason, MAX_REASON).as_bytes())
    }

    /// Gives the room back after an attempt a retry follows, unless that attempt left the
    /// volume (nearly) full: then the retry reuses it. Whether it was kept.
    pub fn release(self) -> bool {
        let free = rustix::fs::fstatvfs(&self.dir).map(|st| st.f_bavail.saturating_mul(st.f_frsize));
        if free.is_ok_and(|free| free < ROOM_FOR_A_RETRY) {
            return true;
        }
        if let Err(e) = rustix::fs::unlinkat(&self.dir, self.name.as_str(), AtFlags::empty()) {
            tracing::warn!("cannot remove {}: {e}", self.dir_path.join(&self.name).display());
        }
        false
    }

    /// Overwrites the allocated bytes in place, cuts the file to `content`, then renames it:
    /// the helper sees the marker arrive complete, and no step needs a new data block.
    fn fill(self, name: &str, content: &[u8]) -> Result<PathBuf, MarkerError> {
        let reserved = self.dir_path.join(&self.name);
        let io_err = |source: io::Error| MarkerError::Io { path: reserved.clone(), source };
        std::os::unix::fs::FileExt::write_all_at(&self.file, content, 0).map_err(io_err)?;
        self.file.set_len(content.len() as u64).map_err(io_err)?;
        self.file.sync_all().map_err(io_err)?;
        let path = self.dir_path.join(name);
        // rename(2) replaces a symlink of that name itself, never its target.
        rustix::fs::renameat(&self.dir, self.name.as_str(), &self.dir, name)
            .map_err(|e| MarkerError::Io { path: path.clone(), source: e.into() })?;
        rustix::fs::fsync(&self.dir).map_err(|e| MarkerError::Io { path: self.dir_path.clone(), source: e.into() })?;
        Ok(path)
    }
}

fn write(volume: &Path, name: &str, content: &[u8]) -> Result<PathBuf, MarkerError> {
    let dir_path = volume.join(MARKER_DIR);
    let path = dir_path.join(name);
    let io_err = |path: &Path, e: Errno| MarkerError::Io { path: path.to_path_buf(), source: e.into() };
    let vol = open_volume(volume)?;
    let dir = marker_dir(&vol, &dir_path)?;

    let tmp = format!(".{name}.{}.tmp", std::process::id());
    let tmp_path = dir_path.join(&tmp);
    let create = || {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        rustix::fs::openat(&dir, tmp.as_str(), flags, Mode::from_raw_mode(FILE_MODE))
    };
    let fd = match create() {
        Ok(fd) => fd,
        // Left by an attempt that died here with the same pid (pid 1 in every container).
        Err(Errno::EXIST) => {
            rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty()).map_err(|e| io_err(&tmp_path, e))?;
            create().map_err(|e| io_err(&tmp_path, e))?
        }
        Err(e) => return Err(io_err(&tmp_path, e)),
    };
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(FILE_MODE)).map_err(|e| io_err(&tmp_path, e))?;
    let mut file = std::fs::File::from(fd);
    let written = file.write_all(content).and_then(|()| file.sync_all());
    drop(file);
    if let Err(source) = written {
        let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
        return Err(MarkerError::Io { path: tmp_path, source });
    }
    // rename(2) replaces a symlink of that name itself, never its target.
    if let Err(e) = rustix::fs::renameat(&dir, tmp.as_str(), &dir, name) {
        let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
        return Err(io_err(&path, e));
    }
    // The rename must survive a node crash as well as the content.
    rustix::fs::fsync(&dir).map_err(|e| io_err(&dir_path, e))?;
    Ok(path)
}

/// `.coracle`, created if needed, world-writable.
fn marker_dir(vol: &OwnedFd, dir_path: &Path) -> Result<OwnedFd, MarkerError> {
    let io_err = |e: Errno| MarkerError::Io { path: dir_path.to_path_buf(), source: e.into() };
    match rustix::fs::mkdirat(vol, MARKER_DIR, Mode::from_raw_mode(DIR_MODE)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(io_err(e)),
    }
    let dir = open_marker_dir(vol, dir_path)?;
    // Explicitly, since the umask trimmed it, or the directory came from a snapshot.
    rustix::fs::fchmod(&dir, Mode::from_raw_mode(DIR_MODE)).map_err(io_err)?;
    Ok(dir)
}

/// The volume directory: already resolved and checked by `paths`, so following it is fine.
fn open_volume(volume: &Path) -> Result<OwnedFd, MarkerError> {
    rustix::fs::open(volume, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| MarkerError::Io { path: volume.to_path_buf(), source: e.into() })
}

fn open_marker_dir(volume: &OwnedFd, dir_path: &Path) -> Result<OwnedFd, MarkerError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(volume, MARKER_DIR, flags, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(Errno::LOOP | Errno::NOTDIR) => {
            let symlink = rustix::fs::statat(volume, MARKER_DIR, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink);
            let reason = if symlink { "is a symbolic link" } else { "is not a directory" };
            Err(MarkerError::Unsafe { path: dir_path.to_path_buf(), reason })
        }
        Err(e) => Err(MarkerError::Io { path: dir_path.to_path_buf(), source: e.into() }),
    }
}

/// At most `max` bytes, cut at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};

    const UID: &str = "5b2e7c1a-0000-4000-8000-000000000001";

    #[test]
    fn done_and_failed_markers() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path();
        let failed = write_failed(vol, UID, "restic restore failed").unwrap();
        assert_eq!(failed, vol.join(".coracle").join(format!("{UID}.failed")));
        assert_eq!(fs::read_to_string(&failed).unwrap(), "restic restore failed");
        let done = write_done(vol, UID, "restored\n").unwrap();
        assert_eq!(fs::read_to_string(&done).unwrap(), "restored\n");
        remove_failed(vol, UID).unwrap();
        assert!(!failed.exists());
        remove_failed(vol, UID).unwrap();
        // Only the marker is left: no temporary files.
        let names: Vec<_> = fs::read_dir(vol.join(".coracle")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [UID]);
        assert_eq!(fs::metadata(vol.join(".coracle")).unwrap().permissions().mode() & 0o7777, 0o777);
        assert_eq!(fs::metadata(&done).unwrap().permissions().mode() & 0o777, 0o644);
    }

    #[test]
    fn rewriting_replaces_and_reasons_are_capped() {
        let tmp = tempfile::tempdir().unwrap();
        write_failed(tmp.path(), UID, "first").unwrap();
        let long = "é".repeat(MAX_REASON);
        let path = write_failed(tmp.path(), UID, &long).unwrap();
        let written = fs::read_to_string(path).unwrap();
        assert!(written.len() <= MAX_REASON && written.len() >= MAX_REASON - 1, "{}", written.len());
        // A stale temporary file of an attempt that died is replaced.
        fs::write(tmp.path().join(format!(".coracle/.{UID}.{}.tmp", std::process::id())), "stale").unwrap();
        write_done(tmp.path(), UID, "").unwrap();
    }

    #[test]
    fn a_reservation_becomes_the_marker() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path();
        let reserved = vol.join(format!(".coracle/.{UID}.reserved"));
        let r = reserve(vol, UID).unwrap();
        assert!(fs::metadata(&reserved).unwrap().len() >= RESERVED);
        let failed = r.write_failed("restic restore failed: no space left on device").unwrap();
        assert_eq!(fs::read_to_string(&failed).unwrap(), "restic restore failed: no space left on device");
        assert_eq!(fs::metadata(&failed).unwrap().permissions().mode() & 0o777, 0o644);
        assert!(!reserved.exists());
        let done = reserve(vol, UID).unwrap().write_done("restored\n").unwrap();
        assert_eq!(fs::read_to_string(done).unwrap(), "restored\n");
        assert!(!reserved.exists());
        // Plenty of room left: a retry can reserve anew, so the room is given back.
        assert!(!reserve(vol, UID).unwrap().release());
        assert!(!reserved.exists());
        // An earlier attempt's reservation (with stale bytes) is reused.
        fs::write(&reserved, "x".repeat(MAX_REASON)).unwrap();
        let failed = reserve(vol, UID).unwrap().write_failed("short").unwrap();
        assert_eq!(fs::read_to_string(failed).unwrap(), "short");
    }

    #[test]
    fn a_hostile_reservation_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("shadow");
        fs::write(&target, "keep").unwrap();
        let vol = tmp.path().join("vol");
        fs::create_dir_all(vol.join(".coracle")).unwrap();
        symlink(&target, vol.join(format!(".coracle/.{UID}.reserved"))).unwrap();
        let e = reserve(&vol, UID).unwrap_err();
        assert!(matches!(e, MarkerError::Unsafe { reason: "is a symbolic link", .. }), "{e}");
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
        fs::remove_file(vol.join(format!(".coracle/.{UID}.reserved"))).unwrap();
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            vol.join(format!(".coracle/.{UID}.reserved")),
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        assert!(reserve(&vol, UID).is_err(), "a FIFO must be refused without hanging");
        let other = tmp.path().join("vol2");
        fs::create_dir(&other).unwrap();
        symlink(&target, other.join(".coracle")).unwrap();
        assert!(matches!(reserve(&other, UID).unwrap_err(), MarkerError::Unsafe { .. }));
    }

    #[test]
    fn prepared_before_the_restore() {
        let tmp = tempfile::tempdir().unwrap();
        prepare(tmp.path()).unwrap();
        prepare(tmp.path()).unwrap();
        assert_eq!(fs::metadata(tmp.path().join(".coracle")).unwrap().permissions().mode() & 0o7777, 0o777);
        assert_eq!(fs::read_dir(tmp.path().join(".coracle")).unwrap().count(), 0);
    }

    #[test]
    fn a_symlinked_marker_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("etc");
        fs::create_dir(&outside).unwrap();
        let vol = tmp.path().join("vol");
        fs::create_dir(&vol).unwrap();
        symlink(&outside, vol.join(".coracle")).unwrap();
        let e = write_done(&vol, UID, "").unwrap_err();
        assert!(matches!(e, MarkerError::Unsafe { reason: "is a symbolic link", .. }), "{e}");
        assert!(prepare(&vol).is_err());
        assert!(write_failed(&vol, UID, "x").is_err());
        assert!(remove_failed(&vol, UID).is_err());
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "wrote through the symlink");

        let vol2 = tmp.path().join("vol2");
        fs::create_dir(&vol2).unwrap();
        fs::write(vol2.join(".coracle"), "a file").unwrap();
        let e = write_done(&vol2, UID, "").unwrap_err();
        assert!(matches!(e, MarkerError::Unsafe { reason: "is not a directory", .. }), "{e}");
    }

    #[test]
    fn a_symlink_in_place_of_the_marker_is_replaced_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("shadow");
        fs::write(&target, "keep").unwrap();
        let vol = tmp.path().join("vol");
        fs::create_dir_all(vol.join(".coracle")).unwrap();
        symlink(&target, vol.join(".coracle").join(UID)).unwrap();
        write_done(&vol, UID, "done").unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
        assert!(fs::symlink_metadata(vol.join(".coracle").join(UID)).unwrap().is_file());
    }
}
