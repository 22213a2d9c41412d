//! A pod's volumes on its node, laid out exactly where a real kubelet puts them:
//! `<kubelet-root>/pods/<pod-uid>/volumes/<plugin>/<dir>`.
//!
//! | volume | directory | data |
//! |---|---|---|
//! | PVC → CSI PV | `kubernetes.io~csi/<pv>/mount` (+ `vol_data.json` beside it) | the PV's storage, bind-mounted |
//! | PVC → NFS PV | `kubernetes.io~nfs/<pv>` | the PV's storage, bind-mounted |
//! | PVC → local PV | `kubernetes.io~local-volume/<pv>` | the PV's storage, bind-mounted |
//! | PVC → hostPath PV | none | the path on the node |
//! | `emptyDir` | `kubernetes.io~empty-dir/<vol>` | a directory (also for `medium: Memory`) |
//! | `configMap`, `secret`, `projected`, `downwardAPI` | `kubernetes.io~configmap` / `~secret` / `~projected` / `~downward-api` `/<vol>` | files written with the kubelet's atomic-writer layout (`..data` → `..<timestamp>`) |
//! | inline `csi` | `kubernetes.io~csi/<vol>/mount` (+ `vol_data.json`) | a directory |
//! | inline `nfs` | `kubernetes.io~nfs/<vol>` | shared storage for that server and path, bind-mounted |
//! | `hostPath` | none | the path on the node |
//! | `ephemeral` | as its PVC `<pod>-<volume>` (which must exist: no ephemeral-volume controller runs) | |
//!
//! A PV's data lives in one cluster-wide directory (`<cluster>/storage/<pv>`), so it survives pod
//! re-creation and is shared by every pod using the PV on any node (RWX). It is bind-mounted in the node's
//! own mount namespace ([`super::node_namespace`]), never in the host's: seen from the host the `mount`
//! directory stays empty. A node's filesystem for hostPath volumes is `<node>/rootfs`, except that the kubelet
//! root (`/var/lib/kubelet` and the other well-known roots, or any `.../*kubelet*/pods` path) maps onto the
//! node's own kubelet root. ConfigMap and Secret contents are written at set-up and not refreshed.

use std::collections::BTreeMap;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Volume,
};
use kube::api::Api;
use serde_json::json;

use super::env::{self, Allocatable, Objects};
use super::mount_ops::Op;
use super::node_namespace::NodeNamespace;

/// Kubelet roots a hostPath may name (SPEC §4): all map onto the node's kubelet root.
pub const WELL_KNOWN_KUBELET_ROOTS: &[&str] = &[
    "/var/lib/kubelet",
    "/opt/rke/var/lib/kubelet",
    "/var/vcap/data/kubelet",
    "/var/lib/origin/openshift.local.volumes",
];

/// Where a pod volume's data is, for the container's bind mount.
#[derive(Debug, Clone)]
pub(crate) struct PreparedVolume {
    pub host: PathBuf,
    /// The source says read-only (`persistentVolumeClaim.readOnly`, secret/configMap/projected/downwardAPI).
    pub read_only: bool,
}

/// What volume set-up needs from its node.
pub(crate) struct VolumeHost {
    pub client: kube::Client,
    pub node: String,
    pub kubelet_root: PathBuf,
    pub rootfs: PathBuf,
    pub storage: PathBuf,
    pub extra_kubelet_roots: Vec<String>,
    pub ns: Arc<NodeNamespace>,
    pub allocatable: Allocatable,
}

pub(crate) fn pod_dir(kubelet_root: &Path, uid: &str) -> PathBuf {
    kubelet_root.join("pods").join(uid)
}

/// The host path a hostPath names, on this node.
pub(crate) fn map_host_path(host: &VolumeHost, path: &str) -> PathBuf {
    let clean = path.trim_end_matches('/');
    let roots = WELL_KNOWN_KUBELET_ROOTS.iter().copied().chain(host.extra_kubelet_roots.iter().map(String::as_str));
    for root in roots {
        let root = root.trim_end_matches('/');
        if clean == root {
            return host.kubelet_root.clone();
        }
        if let Some(rest) = clean.strip_prefix(root).and_then(|r| r.strip_prefix('/')) {
            return host.kubelet_root.join(rest);
        }
    }
    // Any other kubelet root: `<...kubelet...>/pods[/rest]`.
    let parts: Vec<&str> = clean.split('/').collect();
    if let Some(at) = parts.iter().position(|p| *p == "pods") {
        if at > 0 && parts[..at].iter().any(|p| p.contains("kubelet")) {
            return host.kubelet_root.join(parts[at..].join("/"));
        }
    }
    host.rootfs.join(clean.trim_start_matches('/'))
}

/// Applies a hostPath `type` check, creating what `*OrCreate` (and the unset type, as runtimes do) asks for.
fn host_path_checked(path: &Path, kind: Option<&str>) -> Result<(), String> {
    let fail = |what: &str| Err(format!("hostPath type check failed: {} is not a {what}", path.display()));
    match kind.unwrap_or("") {
        "" | "DirectoryOrCreate" => {
            if !path.exists() {
                std::fs::create_dir_all(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        "FileOrCreate" => {
            if !path.exists() {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
                }
                std::fs::File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
            }
            Ok(())
        }
        "Directory" if path.is_dir() => Ok(()),
        "Directory" => fail("directory"),
        "File" if path.is_file() => Ok(()),
        "File" => fail("file"),
        "Socket" | "CharDevice" | "BlockDevice" if path.exists() => Ok(()),
        "Socket" | "CharDevice" | "BlockDevice" => {
            Err(format!("hostPath type check failed: {} does not exist", path.display()))
        }
        other => Err(format!("unknown hostPath type {other:?}")),
    }
}

fn mkdir(path: &Path, mode: u32) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

/// Bind-mounts `storage` at `target` in the node's namespace unless something is mounted there already.
fn bind_in_node(host: &VolumeHost, storage: &Path, target: &Path) -> Result<(), String> {
    mkdir(storage, 0o777)?;
    mkdir(target, 0o750)?;
    let mounted = host.ns.mounts_under(target).map_err(|e| format!("{e:#}"))?;
    if mounted.iter().any(|m| m == target) {
        return Ok(());
    }
    let op = Op::bind(storage, target, false).map_err(|e| e.to_string())?;
    host.ns.run(vec![op]).map_err(|e| format!("mounting {} at {}: {e:#}", storage.display(), target.display()))
}

fn write_vol_data(dir: &Path, data: serde_json::Value) -> Result<(), String> {
    let path = dir.join("vol_data.json");
    std::fs::write(&path, data.to_string()).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// The kubelet's atomic writer: files in `..<timestamp>/`, `..data` pointing at it, and a top-level symlink
/// per entry through `..data`.
fn write_atomic(dir: &Path, files: &[(String, Vec<u8>, u32)]) -> Result<(), String> {
    let err = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    mkdir(dir, 0o777)?;
    let stamp = format!("..{}", chrono::Utc::now().format("%Y_%m_%d_%H_%M_%S.%f"));
    let versioned = dir.join(&stamp);
    mkdir(&versioned, 0o755)?;
    for (path, content, mode) in files {
        let file = versioned.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| err("creating", parent, e))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(*mode)
            .open(&file)
            .map_err(|e| err("writing", &file, e))?;
        std::io::Write::write_all(&mut f, content).map_err(|e| err("writing", &file, e))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(*mode)).map_err(|e| err("chmod", &file, e))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp).map_err(|e| err("linking", &tmp, e))?;
    std::fs::rename(&tmp, dir.join("..data")).map_err(|e| err("renaming", &tmp, e))?;
    let mut tops: Vec<&str> = files.iter().filter_map(|(p, _, _)| p.split('/').next()).collect();
    tops.dedup();
    for top in tops {
        let link = dir.join(top);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(top), &link).map_err(|e| err("linking", &link, e))?;
        }
    }
    Ok(())
}

/// Files for a Secret's or ConfigMap's keys, all of them or the listed items.
fn key_files(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: u32,
    what: &str,
    optional: bool,
) -> Result<Vec<(String, Vec<u8>, u32)>, String> {
    match items {
        None => Ok(data.iter().map(|(k, v)| (k.clone(), v.clone(), default_mode)).collect()),
        Some(items) => {
            let mut out = Vec::new();
            for item in items {
                let mode = item.mode.map_or(default_mode, |m| m as u32);
                match data.get(&item.key) {
                    Some(v) => out.push((item.path.clone(), v.clone(), mode)),
                    None if optional => {}
                    None => return Err(format!("configmap references non-existent config key: {} ({what})", item.key)),
                }
            }
            Ok(out)
        }
    }
}

fn downward_files(
    host: &VolumeHost,
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: u32,
) -> Result<Vec<(String, Vec<u8>, u32)>, String> {
    let mut out = Vec::new();
    for item in items {
        let value = if let Some(f) = &item.field_ref {
            env::field_value(pod, &f.field_path)?
        } else if let Some(r) = &item.resource_field_ref {
            let container = r.container_name.clone().unwrap_or_default();
            env::resource_value(
                pod,
                &container,
                &r.resource,
                r.divisor.as_ref().map(|d| d.0.as_str()),
                host.allocatable,
            )?
        } else {
            continue;
        };
        out.push((item.path.clone(), value.into_bytes(), item.mode.map_or(default_mode, |m| m as u32)));
    }
    Ok(out)
}

async fn claim_and_volume(
    host: &VolumeHost,
    namespace: &str,
    claim: &str,
) -> Result<(PersistentVolumeClaim, PersistentVolume), String> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(host.client.clone(), namespace);
    let pvc = pvcs
        .get_opt(claim)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("persistentvolumeclaim {claim:?} not found"))?;
    let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let pv_name = pvc.spec.as_ref().and_then(|s| s.volume_name.clone()).filter(|_| bound);
    let pv_name = pv_name.ok_or_else(|| format!("persistentvolumeclaim {claim:?} is not bound"))?;
    let pvs: Api<PersistentVolume> = Api::all(host.client.clone());
    let pv = pvs
        .get_opt(&pv_name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("persistentvolume {pv_name:?} not found"))?;
    Ok((pvc, pv))
}

/// Sets up one PVC-backed volume.
async fn claim_volume(
    host: &VolumeHost,
    pod: &Pod,
    volumes: &Path,
    claim: &str,
    read_only: bool,
) -> Result<PreparedVolume, String> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let (pvc, pv) = claim_and_volume(host, &namespace, claim).await?;
    if pvc.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block") {
        return Err(format!("persistentvolumeclaim {claim:?} is a block volume: only volumeDevices can use it"));
    }
    let pv_name = pv.metadata.name.clone().unwrap_or_default();
    let spec = pv.spec.clone().unwrap_or_default();
    let storage = host.storage.join(&pv_name);
    if let Some(csi) = &spec.csi {
        let dir = volumes.join("kubernetes.io~csi").join(&pv_name);
        let mount = dir.join("mount");
        mkdir(&dir, 0o750)?;
        write_vol_data(
            &dir,
            json!({"attachmentID": format!("csi-{}", uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("{pv_name}/{}", host.node).as_bytes()).simple()),
                   "driverName": csi.driver, "nodeName": host.node, "specVolID": pv_name,
                   "volumeHandle": csi.volume_handle, "volumeLifecycleMode": "Persistent"}),
        )?;
        bind_in_node(host, &storage, &mount)?;
        return Ok(PreparedVolume { host: mount, read_only });
    }
    let plugin = if spec.nfs.is_some() {
        "kubernetes.io~nfs"
    } else if spec.local.is_some() {
        "kubernetes.io~local-volume"
    } else if let Some(hp) = &spec.host_path {
        let path = map_host_path(host, &hp.path);
        host_path_checked(&path, hp.type_.as_deref())?;
        return Ok(PreparedVolume { host: path, read_only });
    } else {
        return Err(format!(
            "persistentvolume {pv_name:?}: its volume plugin is not simulated (csi, nfs, local, hostPath are)"
        ));
    };
    let dir = volumes.join(plugin).join(&pv_name);
    bind_in_node(host, &storage, &dir)?;
    Ok(PreparedVolume { host: dir, read_only })
}

/// Sets up one volume of the pod.
async fn set_up_volume(
    host: &VolumeHost,
    objects: &mut Objects<'_>,
    pod: &Pod,
    volumes: &Path,
    v: &Volume,
) -> Result<PreparedVolume, String> {
    let dir = |plugin: &str| volumes.join(plugin).join(&v.name);
    let rw = |host: PathBuf| PreparedVolume { host, read_only: false };
    let ro = |host: PathBuf| PreparedVolume { host, read_only: true };
    if let Some(claim) = &v.persistent_volume_claim {
        return claim_volume(host, pod, volumes, &claim.claim_name, claim.read_only == Some(true)).await;
    }
    if v.ephemeral.is_some() {
        let claim = format!("{}-{}", pod.metadata.name.clone().unwrap_or_default(), v.name);
        return claim_volume(host, pod, volumes, &claim, false).await;
    }
    if v.empty_dir.is_some() {
        let d = dir("kubernetes.io~empty-dir");
        mkdir(&d, 0o777)?;
        return Ok(rw(d));
    }
    if let Some(hp) = &v.host_path {
        let path = map_host_path(host, &hp.path);
        host_path_checked(&path, hp.type_.as_deref())?;
        return Ok(rw(path));
    }
    if let Some(cm) = &v.config_map {
        let mode = cm.default_mode.map_or(0o644, |m| m as u32);
        let optional = cm.optional == Some(true);
        let data = match objects.config_map(&cm.name).await? {
            Some(d) => d,
            None if optional => BTreeMap::new(),
            None => return Err(format!("configmap {:?} not found", cm.name)),
        };
        let d = dir("kubernetes.io~configmap");
        write_atomic(&d, &key_files(&data, cm.items.as_ref(), mode, &cm.name, optional)?)?;
        return Ok(ro(d));
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let mode = s.default_mode.map_or(0o644, |m| m as u32);
        let optional = s.optional == Some(true);
        let data = match objects.secret(&name).await? {
            Some(d) => d,
            None if optional => BTreeMap::new(),
            None => return Err(format!("secret {name:?} not found")),
        };
        let d = dir("kubernetes.io~secret");
        write_atomic(&d, &key_files(&data, s.items.as_ref(), mode, &name, optional)?)?;
        return Ok(ro(d));
    }
    if let Some(p) = &v.downward_api {
        let mode = p.default_mode.map_or(0o644, |m| m as u32);
        let d = dir("kubernetes.io~downward-api");
        write_atomic(&d, &downward_files(host, pod, p.items.as_deref().unwrap_or_default(), mode)?)?;
        return Ok(ro(d));
    }
    if let Some(p) = &v.projected {
        let mode = p.default_mode.map_or(0o644, |m| m as u32);
        let mut files = Vec::new();
        for source in p.sources.iter().flatten() {
            if let Some(s) = &source.secret {
                let optional = s.optional == Some(true);
                match objects.secret(&s.name).await? {
                    Some(d) => files.extend(key_files(&d, s.items.as_ref(), mode, &s.name, optional)?),
                    None if optional => {}
                    None => return Err(format!("secret {:?} not found", s.name)),
                }
            } else if let Some(c) = &source.config_map {
                let optional = c.optional == Some(true);
                match objects.config_map(&c.name).await? {
                    Some(d) => files.extend(key_files(&d, c.items.as_ref(), mode, &c.name, optional)?),
                    None if optional => {}
                    None => return Err(format!("configmap {:?} not found", c.name)),
                }
            } else if let Some(d) = &source.downward_api {
                files.extend(downward_files(host, pod, d.items.as_deref().unwrap_or_default(), mode)?);
            } else if let Some(t) = &source.service_account_token {
                // The simulated API server does not authenticate; the token only has to be there.
                let sa =
                    pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
                let token = format!("sim-token.{}.{sa}", pod.metadata.namespace.clone().unwrap_or_default());
                files.push((t.path.clone(), token.into_bytes(), mode));
            } else {
                return Err(format!("volume {:?}: a projected source is not simulated", v.name));
            }
        }
        let d = dir("kubernetes.io~projected");
        write_atomic(&d, &files)?;
        return Ok(ro(d));
    }
    if let Some(csi) = &v.csi {
        let d = dir("kubernetes.io~csi");
        let mount = d.join("mount");
        mkdir(&d, 0o750)?;
        mkdir(&mount, 0o777)?;
        let handle = format!(
            "csi-{}",
            uuid::Uuid::new_v5(
                &uuid::Uuid::NAMESPACE_OID,
                format!("{}/{}", pod.metadata.uid.clone().unwrap_or_default(), v.name).as_bytes()
            )
            .simple()
        );
        write_vol_data(
            &d,
            json!({"driverName": csi.driver, "nodeName": host.node, "specVolID": v.name,
                   "volumeHandle": handle, "volumeLifecycleMode": "Ephemeral"}),
        )?;
        return Ok(PreparedVolume { host: mount, read_only: csi.read_only == Some(true) });
    }
    if let Some(nfs) = &v.nfs {
        let key: String = format!("{}{}", nfs.server, nfs.path)
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let d = dir("kubernetes.io~nfs");
        bind_in_node(host, &host.storage.join("nfs").join(key), &d)?;
        return Ok(PreparedVolume { host: d, read_only: nfs.read_only == Some(true) });
    }
    Err(format!("volume {:?}: its volume plugin is not simulated", v.name))
}

/// Sets up every volume of a pod (idempotent: a retry after a failure redoes only what is missing).
pub(crate) async fn set_up(host: &VolumeHost, pod: &Pod) -> Result<BTreeMap<String, PreparedVolume>, String> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let volumes = pod_dir(&host.kubelet_root, &uid).join("volumes");
    mkdir(&volumes, 0o750)?;
    let mut objects = Objects::new(&host.client, &namespace);
    let mut out = BTreeMap::new();
    for v in pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).into_iter().flatten() {
        let prepared = set_up_volume(host, &mut objects, pod, &volumes, v)
            .await
            .map_err(|e| format!("MountVolume.SetUp failed for volume {:?} : {e}", v.name))?;
        out.insert(v.name.clone(), prepared);
    }
    Ok(out)
}

/// Unmounts a pod's volumes in the node's namespace and removes their directories (a terminated pod's
/// volumes are torn down; the PV data stays in its storage).
pub(crate) fn tear_down(host: &VolumeHost, uid: &str) -> anyhow::Result<()> {
    let dir = pod_dir(&host.kubelet_root, uid);
    unmount_under(host, &dir)?;
    let volumes = dir.join("volumes");
    if volumes.exists() {
        std::fs::remove_dir_all(&volumes)?;
    }
    Ok(())
}

/// Removes everything the kubelet kept for a deleted pod.
pub(crate) fn remove_pod_dir(host: &VolumeHost, uid: &str) -> anyhow::Result<()> {
    let dir = pod_dir(&host.kubelet_root, uid);
    unmount_under(host, &dir)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

fn unmount_under(host: &VolumeHost, dir: &Path) -> anyhow::Result<()> {
    let mounts = host.ns.mounts_under(dir)?;
    if mounts.is_empty() {
        return Ok(());
    }
    let ops = mounts.iter().map(|m| Op::unmount(m)).collect::<std::io::Result<Vec<_>>>()?;
    host.ns.run(ops)?;
    // Host-side removal below never reaches into PV storage, mounted or not: those mounts exist only in the
    // node's namespace. Checked anyway, so a failed unmount is an error rather than a surprise.
    let left = host.ns.mounts_under(dir)?;
    anyhow::ensure!(left.is_empty(), "still mounted in the node's namespace: {left:?}");
    Ok(())
}
