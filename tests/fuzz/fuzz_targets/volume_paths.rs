//! Volume path resolution on a real tree: a pods root whose pod holds arbitrary plugin
//! directories, volume directories, files and symlinks (to absolute paths outside, to `..`
//! chains, to other pods, to the volumes directory itself), resolved with arbitrary pod uids
//! and directory names, the way a backup Job (whole pods root) and a restore Job (one pod's
//! directory) do. Whatever resolves is a directory inside that pod's own `volumes` directory.
#![no_main]

use coracle_volume_job::names::NameKind;
use coracle_volume_job::paths::{resolve_in_pod_dir, resolve_volume_dir};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const POD: &str = "3e9f6a52-5555-4555-8555-000000000001";
const OTHER_POD: &str = "3e9f6a52-5555-4555-8555-000000000002";
const PLUGINS: [&str; 4] =
    ["kubernetes.io~empty-dir", "kubernetes.io~csi", "kubernetes.io~nfs", "kubernetes.io~local-volume"];

#[derive(Arbitrary, Debug)]
enum Target {
    /// Somewhere outside the pods root (holds a secret).
    Outside,
    /// The other pod's volume.
    OtherPod,
    /// The pod's volumes directory, or its own directory.
    Volumes,
    PodDir,
    /// Any text, taken as the link's target as is (relative or absolute).
    Text(String),
}

#[derive(Arbitrary, Debug)]
enum Kind {
    Dir,
    File,
    Link(Target),
    /// A CSI-style volume whose `mount` is a directory or a link.
    WithMount(Option<Target>),
}

#[derive(Arbitrary, Debug)]
struct Entry {
    plugin: u8,
    plugin_text: Option<String>,
    name: String,
    kind: Kind,
}

#[derive(Arbitrary, Debug)]
struct Input {
    entries: Vec<Entry>,
    /// None: the pod's real uid.
    uid: Option<String>,
    /// An entry's name, or any text.
    dir: Result<u8, String>,
    subdomain: bool,
}

fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::Builder::new().prefix("coracle-fuzz-paths-").tempdir().expect("temp dir")).path()
}

fn target(t: &Target, tree: &Path) -> PathBuf {
    match t {
        Target::Outside => tree.join("outside"),
        Target::OtherPod => tree.join("pods").join(OTHER_POD).join("volumes/kubernetes.io~empty-dir/data"),
        Target::Volumes => tree.join("pods").join(POD).join("volumes"),
        Target::PodDir => tree.join("pods").join(POD),
        Target::Text(s) => PathBuf::from(s),
    }
}

fn check(resolved: &Path, tree: &Path, pod: &str) {
    let volumes = tree.join("pods").join(pod).join("volumes").canonicalize().expect("volumes dir");
    let path = resolved.canonicalize().expect("a resolved path exists");
    assert_eq!(path, resolved, "the result is canonical");
    assert!(path.starts_with(&volumes) && path != volumes, "{} escapes {}", path.display(), volumes.display());
    assert!(path.is_dir(), "{} is not a directory", path.display());
}

fuzz_target!(|input: Input| {
    let tree = tempfile::tempdir_in(scratch()).expect("tree");
    let tree = tree.path();
    let pod = tree.join("pods").join(POD);
    let volumes = pod.join("volumes");
    std::fs::create_dir_all(tree.join("outside/secret")).expect("outside");
    std::fs::create_dir_all(tree.join("pods").join(OTHER_POD).join("volumes/kubernetes.io~empty-dir/data"))
        .expect("other pod");
    std::fs::create_dir_all(&volumes).expect("volumes");
    for e in input.entries.iter().take(8) {
        let plugin = e.plugin_text.clone().unwrap_or_else(|| PLUGINS[e.plugin as usize % PLUGINS.len()].to_string());
        let parent = volumes.join(&plugin);
        // Names the filesystem refuses (`/`, NUL, too long) make no entry, as on a real node.
        if std::fs::create_dir_all(&parent).is_err() || !parent.starts_with(&volumes) {
            continue;
        }
        let path = parent.join(&e.name);
        if !path.starts_with(&parent) || path.parent() != Some(parent.as_path()) {
            continue;
        }
        let _ = match &e.kind {
            Kind::Dir => std::fs::create_dir(&path),
            Kind::File => std::fs::write(&path, b"data"),
            Kind::Link(t) => symlink(target(t, tree), &path),
            Kind::WithMount(None) => std::fs::create_dir_all(path.join("mount")),
            Kind::WithMount(Some(t)) => {
                std::fs::create_dir(&path).and_then(|()| symlink(target(t, tree), path.join("mount")))
            }
        };
    }
    let dir = match &input.dir {
        Ok(i) if !input.entries.is_empty() => input.entries[*i as usize % input.entries.len()].name.clone(),
        Ok(_) => "data".to_string(),
        Err(s) => s.clone(),
    };
    let kind = if input.subdomain { NameKind::Subdomain } else { NameKind::Label };
    let uid = input.uid.clone().unwrap_or_else(|| POD.to_string());
    if let Ok(found) = resolve_volume_dir(&tree.join("pods"), &uid, &dir, kind) {
        assert!(uid == POD || uid == OTHER_POD, "only an existing pod's uid resolves, not {uid:?}");
        check(&found.path, tree, &uid);
    }
    if let Ok(found) = resolve_in_pod_dir(&pod, &dir, kind) {
        check(&found.path, tree, POD);
    }
});
