//! Finding a pod volume's data on the node (SPEC §4).
//!
//! The kubelet keeps a pod's volumes at `<pods-root>/<pod-uid>/volumes/<plugin>/<dir>`, where
//! `<plugin>` is e.g. `kubernetes.io~empty-dir` or `kubernetes.io~csi` and `<dir>` is the PV
//! name (PVC volumes) or the pod volume name. CSI volumes keep their data in `<dir>/mount`.
//! Every input is validated before the filesystem is touched, and the canonical result must
//! stay inside the pod's own `volumes` directory, so neither a crafted name nor a symlink can
//! make a Job back up anything else on the node, or restore into anything else.
//!
//! A backup Job sees the whole pods root ([`resolve_volume_dir`]); a restore Job mounts only
//! its target pod's directory ([`resolve_in_pod_dir`]). Both share the same matching and
//! escape checks.

use crate::names::{self, NameError, NameKind};
use coracle_events::{PlannedVolume, VolumeSource};
use std::io;
use std::path::{Path, PathBuf};

/// The kubelet plugin directory whose volumes keep their data in a `mount` subdirectory.
pub const CSI_PLUGIN: &str = "kubernetes.io~csi";

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("pods root {root} is not usable: {source}")]
    Root { root: PathBuf, source: io::Error },
    #[error("pod directory {path} does not exist: the pod is not on this node or was deleted")]
    NoPod { path: PathBuf },
    #[error("pod directory {path} is not usable: {source}")]
    PodDir { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("no volume directory matches {pattern}")]
    NoMatch { pattern: String },
    #[error("{count} directories match {pattern} ({found}); expected exactly one")]
    Ambiguous { pattern: String, count: usize, found: String },
    #[error("CSI volume {path} has no data: {source}")]
    NoCsiMount { path: PathBuf, source: io::Error },
    #[error("volume path {path} resolves to {target}, outside {allowed}: refusing to follow it")]
    Escape { path: PathBuf, target: PathBuf, allowed: PathBuf },
    #[error("volume path {path} is not a directory")]
    NotADirectory { path: PathBuf },
}

/// A volume directory that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedVolume {
    /// Canonical path of the data (for CSI volumes, the `mount` subdirectory).
    pub path: PathBuf,
    /// The kubelet plugin directory it was found under, e.g. `kubernetes.io~empty-dir`.
    pub plugin: String,
}

/// Naming rule of the directory name: PV names are subdomains, pod volume names labels.
pub fn dir_kind(source: VolumeSource) -> NameKind {
    match source {
        VolumeSource::Pvc | VolumeSource::Ephemeral => NameKind::Subdomain,
        VolumeSource::EmptyDir | VolumeSource::CsiEphemeral | VolumeSource::Other => NameKind::Label,
    }
}

/// Resolves the data directory of a planned volume below `pods_root`.
pub fn resolve_planned(pods_root: &Path, volume: &PlannedVolume) -> Result<ResolvedVolume, PathError> {
    resolve_volume_dir(pods_root, &volume.pod_uid, &volume.dir, dir_kind(volume.source))
}

/// Resolves `<pods_root>/<pod_uid>/volumes/*/<dir>` (plus `mount` under the CSI plugin),
/// requiring exactly one match that canonically stays inside `<pods_root>/<pod_uid>/volumes`.
pub fn resolve_volume_dir(
    pods_root: &Path,
    pod_uid: &str,
    dir: &str,
    dir_kind: NameKind,
) -> Result<ResolvedVolume, PathError> {
    names::validate_uuid("pod uid", pod_uid)?;
    names::validate_name("volume directory name", dir, dir_kind)?;

    let root = pods_root.canonicalize().map_err(|source| PathError::Root { root: pods_root.to_path_buf(), source })?;
    find_volume(&root, &root.join(pod_uid), dir)
}

/// Resolves `<pod_dir>/volumes/*/<dir>` (plus `mount` under the CSI plugin), where `pod_dir`
/// is one pod's own directory, `<kubelet>/pods/<pod-uid>`, as a restore Job mounts it.
/// The match must canonically stay inside `<pod_dir>/volumes`.
pub fn resolve_in_pod_dir(pod_dir: &Path, dir: &str, dir_kind: NameKind) -> Result<ResolvedVolume, PathError> {
    names::validate_name("volume directory name", dir, dir_kind)?;
    let pod = pod_dir.canonicalize().map_err(|source| PathError::PodDir { path: pod_dir.to_path_buf(), source })?;
    find_volume(&pod, &pod, dir)
}

/// The one match of `<pod>/volumes/*/<dir>`, which must canonically stay inside both
/// `boundary` and `<pod>/volumes`.
fn find_volume(boundary: &Path, pod: &Path, dir: &str) -> Result<ResolvedVolume, PathError> {
    let volumes = pod.join("volumes");
    let pattern = format!("{}/*/{dir}", volumes.display());
    let entries = match std::fs::read_dir(&volumes) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(if pod.exists() {
                PathError::NoMatch { pattern }
            } else {
                PathError::NoPod { path: pod.into() }
            })
        }
        Err(source) => return Err(PathError::Read { path: volumes, source }),
    };

    let mut matches = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| PathError::Read { path: volumes.clone(), source })?;
        let candidate = entry.path().join(dir);
        // symlink_metadata: only notes that the name exists; whether a link may be followed is
        // decided below on the canonical path.
        if candidate.symlink_metadata().is_ok() {
            matches.push((entry.file_name().to_string_lossy().into_owned(), candidate));
        }
    }
    matches.sort();
    let (plugin, candidate) = match matches.len() {
        1 => matches.remove(0),
        0 => return Err(PathError::NoMatch { pattern }),
        count => {
            let found = matches.iter().map(|(_, p)| p.display().to_string()).collect::<Vec<_>>().join(", ");
            return Err(PathError::Ambiguous { pattern, count, found });
        }
    };

    let data = if plugin == CSI_PLUGIN { candidate.join("mount") } else { candidate };
    // The pod's own volumes directory, canonical, is the only place data may come from.
    let allowed = volumes.canonicalize().map_err(|source| PathError::Read { path: volumes.clone(), source })?;
    let canonical = match data.canonicalize() {
        Ok(p) => p,
        Err(source) if plugin == CSI_PLUGIN && data.symlink_metadata().is_err() => {
            return Err(PathError::NoCsiMount { path: data, source })
        }
        Err(source) => return Err(PathError::Read { path: data, source }),
    };
    if !allowed.starts_with(boundary) || !canonical.starts_with(&allowed) || canonical == allowed {
        return Err(PathError::Escape { path: data, target: canonical, allowed });
    }
    if !canonical.is_dir() {
        return Err(PathError::NotADirectory { path: data });
    }
    Ok(ResolvedVolume { path: canonical, plugin })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    const UID: &str = "0f2c7f4e-3c1a-4a8e-9b7d-2f0e1d2c3b4a";

    struct Tree {
        _tmp: tempfile::TempDir,
        base: PathBuf,
        pods: PathBuf,
    }

    fn tree() -> Tree {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let pods = base.join("pods");
        fs::create_dir_all(pods.join(UID).join("volumes")).unwrap();
        Tree { _tmp: tmp, base, pods }
    }

    fn mkdir(t: &Tree, plugin: &str, dir: &str) -> PathBuf {
        let p = t.pods.join(UID).join("volumes").join(plugin).join(dir);
        fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn empty_dir_volume() {
        let t = tree();
        let p = mkdir(&t, "kubernetes.io~empty-dir", "cache");
        fs::write(p.join("f"), "x").unwrap();
        let r = resolve_volume_dir(&t.pods, UID, "cache", NameKind::Label).unwrap();
        assert_eq!(r.path, p);
        assert_eq!(r.plugin, "kubernetes.io~empty-dir");
    }

    #[test]
    fn csi_volume_uses_mount_subdirectory() {
        let t = tree();
        let p = mkdir(&t, CSI_PLUGIN, "pvc-1234.a");
        fs::create_dir(p.join("mount")).unwrap();
        fs::write(p.join("vol_data.json"), "{}").unwrap();
        let r = resolve_volume_dir(&t.pods, UID, "pvc-1234.a", NameKind::Subdomain).unwrap();
        assert_eq!(r.path, p.join("mount"));
    }

    #[test]
    fn csi_volume_without_mount_is_refused() {
        let t = tree();
        mkdir(&t, CSI_PLUGIN, "pv-1");
        let e = resolve_volume_dir(&t.pods, UID, "pv-1", NameKind::Subdomain).unwrap_err();
        assert!(matches!(e, PathError::NoCsiMount { .. }), "{e}");
        assert!(e.to_string().contains("pv-1/mount"), "{e}");
    }

    #[test]
    fn pods_root_given_through_a_symlink_is_fine() {
        let t = tree();
        let p = mkdir(&t, "kubernetes.io~empty-dir", "data");
        symlink(&t.pods, t.base.join("pods-link")).unwrap();
        let r = resolve_volume_dir(&t.base.join("pods-link"), UID, "data", NameKind::Label).unwrap();
        assert_eq!(r.path, p);
    }

    #[test]
    fn no_match_names_the_pattern() {
        let t = tree();
        mkdir(&t, "kubernetes.io~empty-dir", "other");
        let e = resolve_volume_dir(&t.pods, UID, "data", NameKind::Label).unwrap_err();
        assert!(matches!(e, PathError::NoMatch { .. }), "{e}");
        assert!(e.to_string().contains(&format!("{UID}/volumes/*/data")), "{e}");
    }

    #[test]
    fn missing_pod_directory() {
        let t = tree();
        let other = "11111111-2222-3333-4444-555555555555";
        let e = resolve_volume_dir(&t.pods, other, "data", NameKind::Label).unwrap_err();
        assert!(matches!(e, PathError::NoPod { .. }), "{e}");
        assert!(e.to_string().contains(other), "{e}");
    }

    #[test]
    fn missing_pods_root() {
        let t = tree();
        let e = resolve_volume_dir(&t.base.join("nope"), UID, "data", NameKind::Label).unwrap_err();
        assert!(matches!(e, PathError::Root { .. }), "{e}");
    }

    #[test]
    fn two_matches_are_ambiguous() {
        let t = tree();
        mkdir(&t, "kubernetes.io~empty-dir", "data");
        mkdir(&t, "kubernetes.io~nfs", "data");
        let e = resolve_volume_dir(&t.pods, UID, "data", NameKind::Label).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, PathError::Ambiguous { count: 2, .. }), "{text}");
        assert!(text.contains("kubernetes.io~empty-dir/data") && text.contains("kubernetes.io~nfs/data"), "{text}");
    }

    #[test]
    fn symlink_pointing_outside_is_refused() {
        let t = tree();
        let outside = t.base.join("secret");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("shadow"), "x").unwrap();
        fs::create_dir_all(t.pods.join(UID).join("volumes").join("kubernetes.io~empty-dir")).unwrap();
        symlink(&outside, t.pods.join(UID).join("volumes/kubernetes.io~empty-dir/data")).unwrap();
        let e = resolve_volume_dir(&t.pods, UID, "data", NameKind::Label).unwrap_err();
        assert!(matches!(e, PathError::Escape { .. }), "{e}");
        assert!(e.to_string().contains("refusing"), "{e}");
    }

    #[test]
    fn csi_mount_symlink_outside_is_refused() {
        let t = tree();
        let p = mkdir(&t, CSI_PLUGIN, "pv-1");
        symlink("/etc", p.join("mount")).unwrap();
        let e = resolve_volume_dir(&t.pods, UID, "pv-1", NameKind::Subdomain).unwrap_err();
        assert!(matches!(e, PathError::Escape { .. }), "{e}");
    }

    #[test]
    fn symlinked_plugin_directory_outside_is_refused() {
        let t = tree();
        let outside = t.base.join("elsewhere");
        fs::create_dir_all(outside.join("data")).unwrap();
        symlink(&outside, t.pods.join(UID).join("volumes/kubernetes.io~evil")).unwrap();
        let e = resolve_volume_dir(&t.pods, UID, "data", NameKind::Label).unwrap_err();
        assert!(matches!(e, PathError::Escape { .. }), "{e}");
    }

    #[test]
    fn symlink_into_another_pod_is_refused() {
        let t = tree();
        let other = t.pods.join("11111111-2222-3333-4444-555555555555/volumes/kubernetes.io~empty-dir/data");
        fs::create_dir_all(&other).unwrap();
        fs::create_dir_all(t.pods.join(UID).join("volumes/kubernetes.io~empty-dir")).unwrap();
        symlink(&other, t.pods.join(UID).join("volumes/kubernetes.io~empty-dir/data")).unwrap();
        let e = resolve_volume_dir(&t.pods, UID, "data", NameKind::Label).unwrap_err();
        assert!(matches!(e, PathError::Escape { .. }), "{e}");
    }

    #[test]
    fn symlink_to_the_volumes_directory_itself_is_refused() {
        let t = tree();
        fs::create_dir_all(t.pods.join(UID).join("volumes/kubernetes.io~empty-dir")).unwrap();
        symlink("..", t.pods.join(UID).join("volumes/kubernetes.io~empty-dir/data")).unwrap();
        let e = resolve_volume_dir(&t.pods, UID, "data", NameKind::Label).unwrap_err();
        assert!(matches!(e, PathError::Escape { .. }), "{e}");
    }

    #[test]
    fn symlink_staying_inside_the_pod_is_followed() {
        let t = tree();
        let real = mkdir(&t, "kubernetes.io~csi", "pv-real");
        fs::create_dir(real.join("mount")).unwrap();
        fs::create_dir_all(t.pods.join(UID).join("volumes/kubernetes.io~local-volume")).unwrap();
        symlink(real.join("mount"), t.pods.join(UID).join("volumes/kubernetes.io~local-volume/pv-link")).unwrap();
        let r = resolve_volume_dir(&t.pods, UID, "pv-link", NameKind::Subdomain).unwrap();
        assert_eq!(r.path, real.join("mount"));
    }

    #[test]
    fn a_file_is_not_a_volume() {
        let t = tree();
        fs::create_dir_all(t.pods.join(UID).join("volumes/kubernetes.io~empty-dir")).unwrap();
        fs::write(t.pods.join(UID).join("volumes/kubernetes.io~empty-dir/data"), "x").unwrap();
        let e = resolve_volume_dir(&t.pods, UID, "data", NameKind::Label).unwrap_err();
        assert!(matches!(e, PathError::NotADirectory { .. }), "{e}");
    }

    #[test]
    fn hostile_names_are_refused_before_touching_the_filesystem() {
        // A pods root that does not exist: only validation can produce these errors.
        let nowhere = Path::new("/nonexistent/pods");
        for dir in ["..", ".", "../../etc", "a/b", "a\0b", "", "A"] {
            let e = resolve_volume_dir(nowhere, UID, dir, NameKind::Subdomain).unwrap_err();
            assert!(matches!(e, PathError::Name(_)), "{dir:?}: {e}");
        }
        for uid in ["..", "not-a-uuid", "../0f2c7f4e-3c1a-4a8e-9b7d-2f0e1d2c3b4", ""] {
            let e = resolve_volume_dir(nowhere, uid, "data", NameKind::Label).unwrap_err();
            assert!(matches!(e, PathError::Name(_)), "{uid:?}: {e}");
            assert!(e.to_string().contains("pod uid"), "{e}");
        }
        // Dots are fine in PV names but not in pod volume names.
        let e = resolve_volume_dir(nowhere, UID, "a.b", NameKind::Label).unwrap_err();
        assert!(matches!(e, PathError::Name(_)), "{e}");
        let e = resolve_volume_dir(nowhere, UID, "a.b", NameKind::Subdomain).unwrap_err();
        assert!(matches!(e, PathError::Root { .. }), "{e}");
    }

    #[test]
    fn a_pod_directory_mounted_alone() {
        let t = tree();
        let p = mkdir(&t, CSI_PLUGIN, "pv-1");
        fs::create_dir(p.join("mount")).unwrap();
        let pod_dir = t.pods.join(UID);
        let r = resolve_in_pod_dir(&pod_dir, "pv-1", NameKind::Subdomain).unwrap();
        assert_eq!(r.path, p.join("mount"));
        let e = resolve_in_pod_dir(&pod_dir, "other", NameKind::Label).unwrap_err();
        assert!(matches!(e, PathError::NoMatch { .. }), "{e}");
        let e = resolve_in_pod_dir(&t.base.join("nope"), "pv-1", NameKind::Subdomain).unwrap_err();
        assert!(matches!(e, PathError::PodDir { .. }), "{e}");
        let e = resolve_in_pod_dir(Path::new("/nonexistent"), "../x", NameKind::Subdomain).unwrap_err();
        assert!(matches!(e, PathError::Name(_)), "{e}");
        // A pod directory without volumes/ at all has nothing to restore into.
        let empty = t.base.join("empty-pod");
        fs::create_dir(&empty).unwrap();
        let e = resolve_in_pod_dir(&empty, "pv-1", NameKind::Subdomain).unwrap_err();
        assert!(matches!(e, PathError::NoMatch { .. }), "{e}");
    }

    #[test]
    fn escapes_from_a_pod_directory_are_refused() {
        let t = tree();
        let outside = t.base.join("outside");
        fs::create_dir_all(outside.join("data")).unwrap();
        let pod_dir = t.pods.join(UID);
        // Into another pod: inside the pods root, but outside this pod's directory.
        let other = t.pods.join("11111111-2222-3333-4444-555555555555/volumes/kubernetes.io~empty-dir/data");
        fs::create_dir_all(&other).unwrap();
        fs::create_dir_all(pod_dir.join("volumes/kubernetes.io~empty-dir")).unwrap();
        symlink(&other, pod_dir.join("volumes/kubernetes.io~empty-dir/data")).unwrap();
        let e = resolve_in_pod_dir(&pod_dir, "data", NameKind::Label).unwrap_err();
        assert!(matches!(e, PathError::Escape { .. }), "{e}");
        // A `volumes` directory that is itself a symlink out of the pod.
        let pod2 = t.base.join("pod2");
        fs::create_dir(&pod2).unwrap();
        fs::create_dir_all(outside.join("vols/kubernetes.io~empty-dir/data")).unwrap();
        symlink(outside.join("vols"), pod2.join("volumes")).unwrap();
        let e = resolve_in_pod_dir(&pod2, "data", NameKind::Label).unwrap_err();
        assert!(matches!(e, PathError::Escape { .. }), "{e}");
    }

    #[test]
    fn dir_kinds_follow_the_source() {
        assert_eq!(dir_kind(VolumeSource::Pvc), NameKind::Subdomain);
        assert_eq!(dir_kind(VolumeSource::Ephemeral), NameKind::Subdomain);
        assert_eq!(dir_kind(VolumeSource::EmptyDir), NameKind::Label);
        assert_eq!(dir_kind(VolumeSource::CsiEphemeral), NameKind::Label);
    }
}
