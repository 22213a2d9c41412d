//! Property: no pod uid, volume name, PV name or symlink on disk makes a Job read or write outside
//! the pod's own volume directory (SPEC §4), on a real tree.
//!
//! Each case lays out a kubelet pods root on disk — the pod's plugin directories holding
//! directories, files and symlinks (absolute ones to a directory outside the root, `..` chains,
//! links to another pod's volume, to the pod's own `volumes` or pod directory), possibly with the
//! pod directory, its `volumes` directory or a plugin directory itself a link, and a `.coracle`
//! inside a volume that is a link or a file — then resolves a generated (uid, directory name) the
//! way a backup Job does (whole pods root) and a restore Job does (the pod's own directory), and
//! writes the restore markers into whatever resolved. Whatever resolves must be a directory
//! strictly inside `<pods>/<uid>/volumes` (canonically), and nothing outside the pod's volumes —
//! the outside directory, the other pod — may change.

use coracle_volume_job::markers;
use coracle_volume_job::names::NameKind;
use coracle_volume_job::paths::{resolve_in_pod_dir, resolve_volume_dir};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

const POD: &str = "3e9f6a52-5555-4555-8555-000000000001";
const OTHER: &str = "3e9f6a52-5555-4555-8555-000000000002";
const RESTORE_UID: &str = "9b0c7a1e-1111-4111-8111-000000000001";

#[derive(Debug, Clone)]
enum Target {
    Outside,
    OutsideFile,
    OtherPod,
    OwnVolumes,
    OwnPod,
    PodsRoot,
    Root,
    Dots(usize),
    Relative(String),
}

#[derive(Debug, Clone)]
enum Kind {
    Dir,
    File,
    Link(Target),
    /// A CSI volume directory whose `mount` is a directory (None) or a link.
    Csi(Option<Target>),
    /// A directory whose `.coracle` is a link (Some) or a plain file (None).
    Coracle(Option<Target>),
}

#[derive(Debug, Clone)]
struct Layout {
    entries: Vec<(String, String, Kind)>,
    pod_dir_link: bool,
    volumes_link: bool,
    plugin_link: Option<String>,
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        Just(Target::Outside),
        Just(Target::OutsideFile),
        Just(Target::OtherPod),
        Just(Target::OwnVolumes),
        Just(Target::OwnPod),
        Just(Target::PodsRoot),
        Just(Target::Root),
        (1usize..8).prop_map(Target::Dots),
        "[a-z./~-]{0,24}".prop_map(Target::Relative),
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Dir),
        Just(Kind::File),
        target().prop_map(Kind::Link),
        proptest::option::of(target()).prop_map(Kind::Csi),
        proptest::option::of(target()).prop_map(Kind::Coracle),
    ]
}

/// Names as they come: valid labels and PV names, and hostile ones.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("data".to_string()),
        Just("pvc-3f1c9b52-web-data".to_string()),
        "[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?",
        Just("..".to_string()),
        Just(".".to_string()),
        Just("../../outside".to_string()),
        Just("data/../../../outside".to_string()),
        Just("/outside".to_string()),
        Just("%2e%2e".to_string()),
        Just("data\n".to_string()),
        Just(".coracle".to_string()),
        "[ -~]{0,30}",
    ]
}

fn plugin() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("kubernetes.io~empty-dir".to_string()),
        Just("kubernetes.io~csi".to_string()),
        Just("kubernetes.io~nfs".to_string()),
        Just("..".to_string()),
        "[a-z.~]{1,12}",
    ]
}

fn uid() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(POD.to_string()),
        1 => Just(OTHER.to_string()),
        1 => Just(POD.to_uppercase()),
        1 => Just(format!("../{POD}")),
        1 => Just(format!("{POD}/..")),
        1 => Just("../../../../../../../../../../../../etc/x".to_string()),
        1 => Just("3e9f6a52-5555-4555-8555-00000000000/".to_string()),
        1 => "[0-9a-f./-]{36}",
        1 => "[ -~]{0,40}",
    ]
}

fn layout() -> impl Strategy<Value = Layout> {
    (
        proptest::collection::vec((plugin(), name(), kind()), 0..6),
        proptest::bool::weighted(0.1),
        proptest::bool::weighted(0.1),
        proptest::option::weighted(0.15, plugin()),
    )
        .prop_map(|(entries, pod_dir_link, volumes_link, plugin_link)| Layout {
            entries,
            pod_dir_link,
            volumes_link,
            plugin_link,
        })
}

struct Tree {
    _tmp: tempfile::TempDir,
    base: PathBuf,
}

impl Tree {
    fn pods(&self) -> PathBuf {
        self.base.join("pods")
    }
    fn pod(&self) -> PathBuf {
        self.pods().join(POD)
    }
    fn resolve_target(&self, t: &Target) -> PathBuf {
        match t {
            Target::Outside => self.base.join("outside"),
            Target::OutsideFile => self.base.join("outside/secret.txt"),
            Target::OtherPod => self.pods().join(OTHER).join("volumes/kubernetes.io~empty-dir/data"),
            Target::OwnVolumes => self.pod().join("volumes"),
            Target::OwnPod => self.pod(),
            Target::PodsRoot => self.pods(),
            Target::Root => PathBuf::from("/"),
            Target::Dots(n) => PathBuf::from(vec![".."; *n].join("/")),
            Target::Relative(s) => PathBuf::from(s),
        }
    }
}

/// Lays the tree out; entries the filesystem refuses (bad names) are simply absent, as on a node.
fn build(layout: &Layout) -> Tree {
    let tmp = tempfile::tempdir().expect("temp dir");
    let base = tmp.path().canonicalize().expect("canonical temp dir");
    let tree = Tree { _tmp: tmp, base };
    let outside = tree.base.join("outside");
    std::fs::create_dir_all(outside.join("nested")).expect("outside");
    std::fs::write(outside.join("secret.txt"), b"node secret\n").expect("secret");
    let other = tree.pods().join(OTHER).join("volumes/kubernetes.io~empty-dir/data");
    std::fs::create_dir_all(&other).expect("other pod");
    std::fs::write(other.join("theirs.txt"), b"another pod's data\n").expect("other data");
    std::fs::create_dir_all(tree.pods()).expect("pods");

    if layout.pod_dir_link {
        // The pod directory itself is a link to somewhere outside.
        std::fs::create_dir_all(outside.join("fake-pod/volumes/kubernetes.io~empty-dir/data")).expect("fake pod");
        symlink(outside.join("fake-pod"), tree.pod()).expect("pod link");
    } else if layout.volumes_link {
        std::fs::create_dir_all(tree.pod()).expect("pod");
        std::fs::create_dir_all(outside.join("fake-volumes/kubernetes.io~empty-dir/data")).expect("fake volumes");
        symlink(outside.join("fake-volumes"), tree.pod().join("volumes")).expect("volumes link");
    } else {
        std::fs::create_dir_all(tree.pod().join("volumes")).expect("volumes");
    }
    let volumes = tree.pod().join("volumes");
    if let Some(plugin) = &layout.plugin_link {
        std::fs::create_dir_all(outside.join("fake-plugin/data/mount")).expect("fake plugin");
        let _ = symlink(outside.join("fake-plugin"), volumes.join(plugin));
    }
    for (plugin, name, kind) in &layout.entries {
        let parent = volumes.join(plugin);
        if std::fs::create_dir_all(&parent).is_err() {
            continue;
        }
        let path = parent.join(name);
        let _ = match kind {
            Kind::Dir => std::fs::create_dir_all(&path),
            Kind::File => std::fs::write(&path, b"x"),
            Kind::Link(t) => symlink(tree.resolve_target(t), &path),
            Kind::Csi(None) => std::fs::create_dir_all(path.join("mount")),
            Kind::Csi(Some(t)) => {
                std::fs::create_dir_all(&path).and_then(|()| symlink(tree.resolve_target(t), path.join("mount")))
            }
            Kind::Coracle(None) => {
                std::fs::create_dir_all(&path).and_then(|()| std::fs::write(path.join(".coracle"), b"not a dir"))
            }
            Kind::Coracle(Some(t)) => {
                std::fs::create_dir_all(&path).and_then(|()| symlink(tree.resolve_target(t), path.join(".coracle")))
            }
        };
    }
    tree
}

/// Every file, directory and link below `dir` (not following links) with its content or target.
fn digest(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            let what = if meta.file_type().is_symlink() {
                format!("link {:?}", std::fs::read_link(&path).ok())
            } else if meta.is_dir() {
                stack.push(path.clone());
                "dir".to_string()
            } else {
                format!("file {:?}", std::fs::read(&path).ok())
            };
            out.insert(path, what);
        }
    }
    out
}

/// Everything but the pod's own volume directories: the outside, the other pod, the pods root.
fn everything_else(tree: &Tree) -> BTreeMap<PathBuf, String> {
    let own = tree.pod().join("volumes");
    digest(&tree.base).into_iter().filter(|(p, _)| !p.starts_with(&own)).collect()
}

/// A resolved path must be a directory strictly inside the canonical `<pods>/<uid>/volumes`, which
/// itself lies inside the canonical pods root.
fn assert_inside(tree: &Tree, uid: &str, resolved: &Path) -> Result<(), TestCaseError> {
    let root = tree.pods().canonicalize().expect("pods root");
    let volumes = tree.pods().join(uid).join("volumes").canonicalize().expect("a resolved pod's volumes exist");
    let path = resolved.canonicalize().expect("a resolved path exists");
    prop_assert_eq!(&path, resolved, "the result is canonical");
    prop_assert!(volumes.starts_with(&root), "{} is outside the pods root", volumes.display());
    prop_assert!(path.starts_with(&volumes) && path != volumes, "{} escapes {}", path.display(), volumes.display());
    prop_assert!(!path.starts_with(tree.base.join("outside")));
    prop_assert!(path.is_dir());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn nothing_resolves_or_is_written_outside_the_pods_own_volumes(
        layout in layout(),
        uid in uid(),
        dir in name(),
        subdomain in any::<bool>(),
    ) {
        let tree = build(&layout);
        let before = everything_else(&tree);
        let kind = if subdomain { NameKind::Subdomain } else { NameKind::Label };

        // The backup Job: the whole pods root, any uid.
        if let Ok(found) = resolve_volume_dir(&tree.pods(), &uid, &dir, kind) {
            prop_assert!(uid == POD || uid == OTHER, "resolved for uid {uid:?}");
            assert_inside(&tree, &uid, &found.path)?;
            prop_assert!(!layout.pod_dir_link || uid == OTHER, "followed a linked pod directory");
        }
        // The restore Job: its own pod's directory, then the markers the helper waits for. That
        // directory is the hostPath mount the kubelet made (a pod cannot replace it), so it is the
        // boundary even when the node has it as a link: nothing below it may lead out of it.
        if let Ok(found) = resolve_in_pod_dir(&tree.pod(), &dir, kind) {
            // (`build` makes the volumes link only when the pod directory itself is not a link.)
            prop_assert!(!layout.volumes_link || layout.pod_dir_link, "followed a linked volumes directory");
            if layout.pod_dir_link {
                let volumes = tree.base.join("outside/fake-pod/volumes");
                prop_assert!(found.path.starts_with(&volumes) && found.path != volumes, "{}", found.path.display());
                return Ok(());
            }
            assert_inside(&tree, POD, &found.path)?;
            let _ = markers::prepare(&found.path);
            let _ = markers::write_failed(&found.path, RESTORE_UID, "restic failed");
            let _ = markers::remove_failed(&found.path, RESTORE_UID);
            let _ = markers::write_done(&found.path, RESTORE_UID, "done");
        }
        let after = everything_else(&tree);
        prop_assert_eq!(before, after, "something outside the pod's volumes changed");
    }
}

/// The generator reaches the interesting cases: valid volumes resolve, and links pointing out are
/// met and refused (so the property above is not vacuous).
#[test]
fn the_layouts_cover_resolving_and_refusing() {
    let layout = Layout {
        entries: vec![
            ("kubernetes.io~empty-dir".into(), "data".into(), Kind::Coracle(Some(Target::Outside))),
            ("kubernetes.io~empty-dir".into(), "escape".into(), Kind::Link(Target::Outside)),
            ("kubernetes.io~csi".into(), "pvc-3f1c9b52-web-data".into(), Kind::Csi(Some(Target::Dots(3)))),
        ],
        pod_dir_link: false,
        volumes_link: false,
        plugin_link: None,
    };
    let tree = build(&layout);
    let before = everything_else(&tree);
    let data = resolve_volume_dir(&tree.pods(), POD, "data", NameKind::Label).expect("data resolves");
    assert_eq!(data.path, tree.pod().join("volumes/kubernetes.io~empty-dir/data"));
    let e = resolve_volume_dir(&tree.pods(), POD, "escape", NameKind::Label).expect_err("escape is refused");
    assert!(e.to_string().contains("outside"), "{e}");
    let e = resolve_in_pod_dir(&tree.pod(), "pvc-3f1c9b52-web-data", NameKind::Subdomain).expect_err("CSI escape");
    assert!(e.to_string().contains("outside"), "{e}");
    let e = markers::write_done(&data.path, RESTORE_UID, "done").expect_err(".coracle link refused");
    assert!(e.to_string().contains("refusing"), "{e}");
    assert_eq!(everything_else(&tree), before);
    assert!(resolve_volume_dir(&tree.pods(), &format!("../{POD}"), "data", NameKind::Label).is_err());
}
