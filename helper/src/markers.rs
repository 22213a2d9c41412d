//! Reading and removing the markers restore Jobs leave in a volume: `.coracle/<restore-uid>`
//! when its data is in place, `.coracle/<restore-uid>.failed` (holding the reason) when the
//! restore failed for good.
//!
//! Volumes hold user data, and a restored snapshot or another pod sharing the volume could
//! plant symlinks where markers are expected. Every step therefore goes through directory
//! descriptors with `O_NOFOLLOW` (`openat`/`statat`/`unlinkat`): a symlinked volume
//! directory, `.coracle` or marker is reported, never followed, so nothing outside the volume
//! is read or removed.

use coracle_events::{FAILED_MARKER_SUFFIX, MARKER_DIR};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Longest failure reason read; the Job writes at most 4 KiB.
pub const MAX_REASON: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum MarkerError {
    #[error("{path} is a symbolic link; refusing to follow it")]
    Symlink { path: PathBuf },
    #[error("{path} is not a {expected}")]
    WrongType { path: PathBuf, expected: &'static str },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Where one volume stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeState {
    /// `<root>/<volume>` does not exist (yet).
    NoVolume,
    /// The volume exists but has no `.coracle` directory (yet).
    NoMarkerDir,
    /// `.coracle` exists without a marker of this restore.
    Waiting,
    Restored,
    /// The failure marker, with its (cleaned) reason: empty when the file is, which may mean
    /// it is still being written.
    Failed(String),
}

/// The restores root, opened once: every lookup is relative to this descriptor.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

impl Root {
    /// Opens the root (following symlinks: it is configuration, not volume content).
    pub fn open(path: &Path) -> Result<Root, MarkerError> {
        let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| MarkerError::Io { path: path.to_path_buf(), source: e.into() })?;
        Ok(Root { fd, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn volume_path(&self, volume: &str) -> PathBuf {
        self.path.join(volume)
    }

    pub fn marker_dir_path(&self, volume: &str) -> PathBuf {
        self.path.join(volume).join(MARKER_DIR)
    }

    /// Looks at one volume's markers. `volume` and `uid` must have been validated.
    pub fn inspect(&self, volume: &str, uid: &str) -> Result<VolumeState, MarkerError> {
        let vol_path = self.volume_path(volume);
        let Some(vol) = open_dir(&self.fd, volume, &vol_path)? else { return Ok(VolumeState::NoVolume) };
        let dir_path = vol_path.join(MARKER_DIR);
        let Some(dir) = open_dir(&vol, MARKER_DIR, &dir_path)? else { return Ok(VolumeState::NoMarkerDir) };

        let done_path = dir_path.join(uid);
        match rustix::fs::statat(&dir, uid, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                return match FileType::from_raw_mode(st.st_mode) {
                    FileType::RegularFile => Ok(VolumeState::Restored),
                    FileType::Symlink => Err(MarkerError::Symlink { path: done_path }),
                    _ => Err(MarkerError::WrongType { path: done_path, expected: "regular file" }),
                }
            }
            Err(Errno::NOENT) => {}
            Err(e) => return Err(MarkerError::Io { path: done_path, source: e.into() }),
        }

        let failed = format!("{uid}{FAILED_MARKER_SUFFIX}");
        let failed_path = dir_path.join(&failed);
        // NONBLOCK: a FIFO planted under the marker's name must not hang the open.
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&dir, failed.as_str(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(VolumeState::Waiting),
            Err(Errno::LOOP) => return Err(MarkerError::Symlink { path: failed_path }),
            Err(e) => return Err(MarkerError::Io { path: failed_path, source: e.into() }),
        };
        let io_err = |source: std::io::Error| MarkerError::Io { path: failed_path.clone(), source };
        let st = rustix::fs::fstat(&fd).map_err(|e| io_err(e.into()))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(MarkerError::WrongType { path: failed_path, expected: "regular file" });
        }
        let mut raw = Vec::new();
        std::fs::File::from(fd).take(MAX_REASON as u64 + 1).read_to_end(&mut raw).map_err(io_err)?;
        Ok(VolumeState::Failed(clean_reason(&raw)))
    }

    /// Removes this restore's markers from a volume, and `.coracle` when that leaves it empty.
    /// Markers already gone (another pod sharing the volume removed them) are fine.
    pub fn remove(&self, volume: &str, uid: &str) -> Result<(), MarkerError> {
        let vol_path = self.volume_path(volume);
        let Some(vol) = open_dir(&self.fd, volume, &vol_path)? else { return Ok(()) };
        let dir_path = vol_path.join(MARKER_DIR);
        let Some(dir) = open_dir(&vol, MARKER_DIR, &dir_path)? else { return Ok(()) };
        for name in [uid.to_string(), format!("{uid}{FAILED_MARKER_SUFFIX}")] {
            // unlinkat removes a symlink itself, never its target.
            match rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(MarkerError::Io { path: dir_path.join(name), source: e.into() }),
            }
        }
        drop(dir);
        match rustix::fs::unlinkat(&vol, MARKER_DIR, AtFlags::REMOVEDIR) {
            // Not empty: other restores' markers or the user's own files stay.
            Ok(()) | Err(Errno::NOENT | Errno::NOTEMPTY | Errno::EXIST) => Ok(()),
            Err(e) => Err(MarkerError::Io { path: dir_path, source: e.into() }),
        }
    }
}

/// Opens a subdirectory without following a symlink; `None` when it does not exist.
fn open_dir(parent: &OwnedFd, name: &str, path: &Path) -> Result<Option<OwnedFd>, MarkerError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(parent, name, flags, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT) => Ok(None),
        // O_NOFOLLOW|O_DIRECTORY on a symlink fails with ELOOP or ENOTDIR; tell which it was.
        Err(Errno::LOOP | Errno::NOTDIR) => match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                Err(MarkerError::Symlink { path: path.to_path_buf() })
            }
            Err(Errno::NOENT) => Ok(None),
            _ => Err(MarkerError::WrongType { path: path.to_path_buf(), expected: "directory" }),
        },
        Err(e) => Err(MarkerError::Io { path: path.to_path_buf(), source: e.into() }),
    }
}

/// The reason as one printable line of at most [`MAX_REASON`] bytes: control characters
/// (escape sequences in `kubectl describe`) become spaces. Blank text gives an empty string.
pub fn clean_reason(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len().min(MAX_REASON));
    for c in text.trim().chars().map(|c| if c.is_control() { ' ' } else { c }) {
        if out.len() + c.len_utf8() > MAX_REASON {
            break;
        }
        out.push(c);
    }
    out.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    const UID: &str = "r-uid-1";

    fn root() -> (tempfile::TempDir, Root) {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::open(tmp.path()).unwrap();
        (tmp, root)
    }

    #[test]
    fn states_in_order() {
        let (tmp, r) = root();
        assert_eq!(r.inspect("data", UID).unwrap(), VolumeState::NoVolume);
        fs::create_dir(tmp.path().join("data")).unwrap();
        assert_eq!(r.inspect("data", UID).unwrap(), VolumeState::NoMarkerDir);
        fs::create_dir(tmp.path().join("data/.coracle")).unwrap();
        fs::write(tmp.path().join("data/.coracle/other-uid"), "").unwrap();
        assert_eq!(r.inspect("data", UID).unwrap(), VolumeState::Waiting);
        fs::write(tmp.path().join("data/.coracle/r-uid-1.failed"), "restic: \x1b[31mboom\x1b[0m\n").unwrap();
        assert_eq!(r.inspect("data", UID).unwrap(), VolumeState::Failed("restic:  [31mboom [0m".into()));
        // Success wins over a stale failure marker of the same restore.
        fs::write(tmp.path().join("data/.coracle/r-uid-1"), "").unwrap();
        assert_eq!(r.inspect("data", UID).unwrap(), VolumeState::Restored);
        r.remove("data", UID).unwrap();
        let left: Vec<_> =
            fs::read_dir(tmp.path().join("data/.coracle")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["other-uid"], "both markers of this restore go, nothing else");
        fs::remove_file(tmp.path().join("data/.coracle/other-uid")).unwrap();
        fs::write(tmp.path().join("data/.coracle/r-uid-1"), "").unwrap();
        r.remove("data", UID).unwrap();
        assert!(!tmp.path().join("data/.coracle").exists(), "an empty .coracle goes too");
        assert!(tmp.path().join("data").is_dir());
    }

    #[test]
    fn removal_keeps_other_files() {
        let (tmp, r) = root();
        fs::create_dir_all(tmp.path().join("data/.coracle")).unwrap();
        fs::write(tmp.path().join("data/.coracle/r-uid-1"), "").unwrap();
        fs::write(tmp.path().join("data/.coracle/other"), "").unwrap();
        r.remove("data", UID).unwrap();
        assert!(!tmp.path().join("data/.coracle/r-uid-1").exists());
        assert!(tmp.path().join("data/.coracle/other").exists());
        // Removing again (another replica did it first) is fine.
        r.remove("data", UID).unwrap();
        r.remove("missing", UID).unwrap();
    }

    #[test]
    fn symlinks_are_never_followed() {
        let (tmp, r) = root();
        let outside = tmp.path().join("outside");
        fs::create_dir_all(outside.join(".coracle")).unwrap();
        fs::write(outside.join(".coracle/r-uid-1"), "").unwrap();
        fs::write(outside.join("secret"), "do not read").unwrap();

        symlink(&outside, tmp.path().join("linked")).unwrap();
        assert!(matches!(r.inspect("linked", UID), Err(MarkerError::Symlink { .. })));

        fs::create_dir(tmp.path().join("data")).unwrap();
        symlink(outside.join(".coracle"), tmp.path().join("data/.coracle")).unwrap();
        let e = r.inspect("data", UID).unwrap_err();
        assert!(matches!(e, MarkerError::Symlink { .. }), "{e}");
        assert!(e.to_string().contains("data/.coracle is a symbolic link"), "{e}");
        r.remove("data", UID).unwrap_err();
        assert!(outside.join(".coracle/r-uid-1").exists(), "followed a symlink when removing");

        fs::create_dir_all(tmp.path().join("v2/.coracle")).unwrap();
        symlink(outside.join("secret"), tmp.path().join("v2/.coracle/r-uid-1.failed")).unwrap();
        assert!(matches!(r.inspect("v2", UID), Err(MarkerError::Symlink { .. })));
        symlink(outside.join("secret"), tmp.path().join("v2/.coracle/r-uid-1")).unwrap();
        assert!(matches!(r.inspect("v2", UID), Err(MarkerError::Symlink { .. })));
        // Removal unlinks the links themselves.
        r.remove("v2", UID).unwrap();
        assert_eq!(fs::read_to_string(outside.join("secret")).unwrap(), "do not read");
        assert!(!tmp.path().join("v2/.coracle").exists());
    }

    #[test]
    fn wrong_types_are_reported() {
        let (tmp, r) = root();
        fs::write(tmp.path().join("file"), "").unwrap();
        assert!(matches!(r.inspect("file", UID), Err(MarkerError::WrongType { expected: "directory", .. })));
        fs::create_dir_all(tmp.path().join("data/.coracle/r-uid-1")).unwrap();
        assert!(matches!(r.inspect("data", UID), Err(MarkerError::WrongType { .. })));
        fs::create_dir_all(tmp.path().join("fifo/.coracle")).unwrap();
        let fifo = tmp.path().join("fifo/.coracle/r-uid-1.failed");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        assert!(matches!(r.inspect("fifo", UID), Err(MarkerError::WrongType { .. })));
    }

    #[test]
    fn reasons_are_bounded_and_printable() {
        assert_eq!(clean_reason(b"  \n"), "");
        assert_eq!(clean_reason(b"line1\nline2\t!"), "line1 line2 !");
        let long = "é".repeat(5000);
        let cleaned = clean_reason(long.as_bytes());
        assert!(cleaned.len() <= MAX_REASON && cleaned.len() > MAX_REASON - 2, "{}", cleaned.len());
        assert_eq!(clean_reason(&[0xff, b'x']), "\u{fffd}x");
    }
}
