//! What gets backed up: [`plan_backup`] turns a backup request and a snapshot of the cluster
//! into the list of pod volumes to back up and the list of volumes deliberately left out, each
//! with its reason. Pure: no I/O, deterministic output, never panics on odd objects. Only a
//! request-level problem (a malformed label selector or namespace name) is an error; anything
//! about one pod or volume is reported in `skipped`.
//!
//! # Rules, in the order they apply
//!
//! 1. **Pods**: a pod is considered when its namespace is included (`includedNamespaces` empty
//!    or `*` means all) and not in `excludedNamespaces`, and its labels match `labelSelector`.
//!    Pods are visited in (namespace, name) order.
//! 2. **Which volumes are candidates**
//!    - opt-in (default): the names listed in `coracle.dev/backup-volumes` together with those in
//!      Velero's `backup.velero.io/backup-volumes` (comma lists, blanks and empty entries ignored);
//!    - opt-out (`defaultVolumesToBackup: true`): every pod volume, except the names listed in
//!      `coracle.dev/backup-volumes-excludes` or `backup.velero.io/backup-volumes-excludes`; the
//!      include annotation is ignored.
//!
//!    An annotation entry that is not a DNS-1123 label, or that names a volume the pod does not
//!    have, is reported. In opt-out mode every pod volume appears either in `volumes` or in
//!    `skipped` (excluded ones with the annotation as reason); in opt-in mode only annotated
//!    volumes are mentioned, because a volume nobody asked for is not news.
//! 3. **Pods that cannot be backed up**: a pod that is not `Running`, has no node or has no uid
//!    is reported once, with volume `""`, but only when it would have contributed a volume
//!    (a candidate that passes the checks of rule 4 that depend on the pod alone: kind and
//!    mounted); its PVCs are not examined, the pod-level reason is the one that matters.
//! 4. **Volumes never backed up** (reported): service-account token volumes by name
//!    (`default-token-*`, `kube-api-access-*`, whatever their source); `hostPath`; `secret`,
//!    `configMap`, `projected`, `downwardAPI` and `image` volumes (their content comes from the API
//!    server or an image, not from the pod); PVCs (and generic ephemeral volumes' PVCs, named
//!    `<pod>-<volume>`) that are missing, annotated `coracle.dev/backup: "false"`, block-mode,
//!    not `Bound`, without `spec.volumeName` or uid, or bound to a `hostPath` PV (`local` PVs hold
//!    real data and are backed up); volumes no container, init container or ephemeral container
//!    mounts. A bound PVC whose PV is absent from the snapshot is still planned: its directory
//!    is named by `spec.volumeName`, and only the hostPath check needs the PV.
//! 5. **Shared PVCs** are backed up once, by the first pod in (namespace, name) order that plans
//!    them; later pods report `PVC <claim> is backed up with pod <pod>`.
//!
//! # Identity
//!
//! The identity picks the parent snapshot and becomes a restic tag (no commas, no whitespace):
//! `pvc/<pvc-uid>` for PVC volumes; for pod-scoped volumes (emptyDir, inline CSI, generic
//! ephemeral, other in-tree sources) the controlling workload plus the volume name, so the
//! incremental chain survives pod re-creation: `deployment/<name>/<volume>` (through the
//! ReplicaSet; when the ReplicaSet is not in the snapshot its name minus `-<pod-template-hash>`),
//! `statefulset/<sts>/<pod>/<volume>` (each replica has its own data),
//! `daemonset/<ds>/<node>/<volume>`, `replicaset/<name>/<volume>` for a ReplicaSet without
//! owner, `job/<name>/<volume>`, `<kind>/<name>/<volume>` (kind lowercased) for any other
//! controller — including a ReplicaSet's non-Deployment owner such as an Argo Rollout — and
//! `pod/<pod>/<volume>` for bare pods. The owner reference with `controller: true` wins, else the
//! first. A volume whose identity would not be a safe tag is skipped with the reason.

use crate::selector::{is_dns1123_label, Selector, SelectorError};
use crate::snapshot::ClusterSnapshot;
use coracle_events::{BackupRequest, PlannedVolume, SkippedVolume, VolumeSource};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Pod annotations listing the volumes to back up in opt-in mode (union of both).
pub const INCLUDE_ANNOTATIONS: [&str; 2] = ["coracle.dev/backup-volumes", "backup.velero.io/backup-volumes"];
/// Pod annotations listing the volumes not to back up in opt-out mode (union of both).
pub const EXCLUDE_ANNOTATIONS: [&str; 2] =
    ["coracle.dev/backup-volumes-excludes", "backup.velero.io/backup-volumes-excludes"];
/// PVC annotation; `"false"` keeps the claim out of every backup.
pub const PVC_BACKUP_ANNOTATION: &str = "coracle.dev/backup";
/// Label the Deployment controller puts on ReplicaSets and their pods.
const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Namespace of an object that names none, as `kubectl apply` would choose.
const DEFAULT_NAMESPACE: &str = "default";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupPlan {
    /// Sorted by namespace, pod, volume.
    pub volumes: Vec<PlannedVolume>,
    /// Sorted by namespace, pod, volume (a whole-pod entry, volume `""`, comes first).
    pub skipped: Vec<SkippedVolume>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Selector(#[from] SelectorError),
    #[error("{field}: {value:?} is not a namespace name (or \"*\" for all)")]
    Namespace { field: &'static str, value: String },
}

/// Plans a backup. See the module documentation for the rules.
pub fn plan_backup(request: &BackupRequest, snapshot: &ClusterSnapshot) -> Result<BackupPlan, PlanError> {
    let filter = PodFilter::new(request)?;
    let mut pods: Vec<&Pod> = snapshot.pods.iter().filter(|p| filter.selects(p)).collect();
    pods.sort_by(|a, b| (namespace_of(a), name_of(a)).cmp(&(namespace_of(b), name_of(b))));

    let mut planner = Planner {
        opt_out: request.default_volumes_to_backup,
        index: Index::new(snapshot),
        covered: HashMap::new(),
        plan: BackupPlan::default(),
    };
    let mut previous: Option<(&str, &str)> = None;
    for pod in pods {
        let key = (namespace_of(pod), name_of(pod));
        if previous == Some(key) {
            // The same object listed twice (e.g. two overlapping dumps): plan it once.
            continue;
        }
        previous = Some(key);
        planner.pod(pod);
    }
    let mut plan = planner.plan;
    plan.volumes.sort_by(|a, b| (&a.namespace, &a.pod, &a.volume).cmp(&(&b.namespace, &b.pod, &b.volume)));
    plan.skipped.sort_by(|a, b| {
        (&a.namespace, &a.pod, &a.volume, &a.reason).cmp(&(&b.namespace, &b.pod, &b.volume, &b.reason))
    });
    Ok(plan)
}

/// Namespace and label-selector filter of the request.
struct PodFilter<'r> {
    all_namespaces: bool,
    included: HashSet<&'r str>,
    excluded: HashSet<&'r str>,
    selector: Selector,
}

impl<'r> PodFilter<'r> {
    fn new(request: &'r BackupRequest) -> Result<Self, PlanError> {
        for (field, names) in
            [("includedNamespaces", &request.included_namespaces), ("excludedNamespaces", &request.excluded_namespaces)]
        {
            if let Some(bad) = names.iter().find(|n| n.as_str() != "*" && !is_dns1123_label(n)) {
                return Err(PlanError::Namespace { field, value: bad.clone() });
            }
        }
        let selector = Selector::parse(request.label_selector.as_deref().unwrap_or(""))?;
        Ok(PodFilter {
            all_namespaces: request.included_namespaces.is_empty()
                || request.included_namespaces.iter().any(|n| n == "*"),
            included: request.included_namespaces.iter().map(String::as_str).collect(),
            excluded: request.excluded_namespaces.iter().map(String::as_str).collect(),
            selector,
        })
    }

    fn selects(&self, pod: &Pod) -> bool {
        let ns = namespace_of(pod);
        if self.excluded.contains(ns) || !(self.all_namespaces || self.included.contains(ns)) {
            return false;
        }
        if self.selector.is_empty() {
            return true;
        }
        let no_labels = BTreeMap::new();
        self.selector.matches(pod.metadata.labels.as_ref().unwrap_or(&no_labels))
    }
}

/// Lookups by key, so planning is O(n log n) in the number of objects (the sort dominates).
struct Index<'s> {
    pvcs: HashMap<(&'s str, &'s str), &'s PersistentVolumeClaim>,
    pvs: HashMap<&'s str, &'s PersistentVolume>,
    replica_sets: HashMap<(&'s str, &'s str), &'s ReplicaSet>,
}

impl<'s> Index<'s> {
    fn new(snapshot: &'s ClusterSnapshot) -> Self {
        let namespaced = |meta: &'s k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            (meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE), meta.name.as_deref().unwrap_or(""))
        };
        Index {
            pvcs: snapshot.pvcs.iter().map(|c| (namespaced(&c.metadata), c)).collect(),
            pvs: snapshot.pvs.iter().map(|v| (v.metadata.name.as_deref().unwrap_or(""), v)).collect(),
            replica_sets: snapshot.replica_sets.iter().map(|r| (namespaced(&r.metadata), r)).collect(),
        }
    }
}

/// A candidate volume of one pod, before the eligibility checks.
enum Candidate<'p> {
    Volume(&'p Volume),
    /// Decided already: a bad annotation entry or an excluded volume.
    Skip {
        volume: String,
        reason: String,
    },
}

/// The PVC behind a PVC or generic ephemeral volume, once it passed every check.
struct Claim<'s> {
    name: String,
    uid: &'s str,
    pv: &'s str,
}

struct Planner<'s> {
    opt_out: bool,
    index: Index<'s>,
    /// (namespace, claim) → (pod, volume) that backs it up.
    covered: HashMap<(&'s str, String), (&'s str, &'s str)>,
    plan: BackupPlan,
}

impl<'s> Planner<'s> {
    fn pod(&mut self, pod: &'s Pod) {
        let (ns, name) = (namespace_of(pod), name_of(pod));
        let candidates = self.candidates(pod);
        let mounted = mounted_volumes(pod);
        let skip = |plan: &mut BackupPlan, volume: &str, reason: String| {
            plan.skipped.push(SkippedVolume {
                namespace: ns.to_string(),
                pod: name.to_string(),
                volume: volume.to_string(),
                reason,
            })
        };

        if let Some(reason) = pod_problem(pod) {
            let contributes = candidates.iter().any(|c| match c {
                Candidate::Volume(v) => volume_kind(v).is_ok() && mounted.contains(v.name.as_str()),
                Candidate::Skip { .. } => false,
            });
            if contributes {
                skip(&mut self.plan, "", reason);
            }
            return;
        }

        // Computed on first use and shared by the pod's volumes; an error is the skip reason.
        let mut workload: Option<Result<String, String>> = None;
        for candidate in candidates {
            let volume = match candidate {
                Candidate::Skip { volume, reason } => {
                    skip(&mut self.plan, &volume, reason);
                    continue;
                }
                Candidate::Volume(v) => v,
            };
            match self.volume(pod, volume, &mounted, &mut workload) {
                Ok(planned) => self.plan.volumes.push(planned),
                Err(reason) => skip(&mut self.plan, &volume.name, reason),
            }
        }
    }

    /// The volumes the annotations and the mode ask for, in annotation or pod-spec order.
    fn candidates(&self, pod: &'s Pod) -> Vec<Candidate<'s>> {
        let volumes: &[Volume] = pod.spec.as_ref().and_then(|s| s.volumes.as_deref()).unwrap_or(&[]);
        let find = |name: &str| volumes.iter().find(|v| v.name == name);
        let keys = if self.opt_out { &EXCLUDE_ANNOTATIONS } else { &INCLUDE_ANNOTATIONS };
        let mut out = Vec::new();
        let mut excluded: HashMap<String, &'static str> = HashMap::new();
        for (name, key) in annotation_names(pod, keys) {
            if !is_dns1123_label(&name) {
                let reason = format!(
                    "invalid volume name {name:?} in annotation {key}: must be a DNS-1123 label (lowercase letters, digits and '-', at most 63 characters)"
                );
                out.push(Candidate::Skip { volume: name, reason });
            } else {
                match find(&name) {
                    None => {
                        let reason = format!("volume named in annotation {key} does not exist in the pod");
                        out.push(Candidate::Skip { volume: name, reason });
                    }
                    Some(_) if self.opt_out => {
                        excluded.insert(name, key);
                    }
                    Some(volume) => out.push(Candidate::Volume(volume)),
                }
            }
        }
        if self.opt_out {
            let mut seen = HashSet::new();
            for volume in volumes.iter().filter(|v| seen.insert(v.name.as_str())) {
                match excluded.get(&volume.name) {
                    Some(key) => out.push(Candidate::Skip {
                        volume: volume.name.clone(),
                        reason: format!("excluded by annotation {key}"),
                    }),
                    None => out.push(Candidate::Volume(volume)),
                }
            }
        }
        out
    }

    /// Every check for one volume of a running pod, then the planned volume.
    fn volume(
        &mut self,
        pod: &'s Pod,
        volume: &'s Volume,
        mounted: &HashSet<&str>,
        workload: &mut Option<Result<String, String>>,
    ) -> Result<PlannedVolume, String> {
        let (ns, pod_name) = (namespace_of(pod), name_of(pod));
        if !is_dns1123_label(&volume.name) {
            return Err(format!("volume name {:?} is not a DNS-1123 label", volume.name));
        }
        let source = volume_kind(volume)?;
        let claim = match source {
            VolumeSource::Pvc => {
                let name = volume.persistent_volume_claim.as_ref().map_or("", |c| c.claim_name.as_str());
                Some(self.claim(ns, name)?)
            }
            // Kubernetes names a generic ephemeral volume's PVC `<pod>-<volume>`.
            VolumeSource::Ephemeral => Some(self.claim(ns, &format!("{pod_name}-{}", volume.name))?),
            _ => None,
        };
        if !mounted.contains(volume.name.as_str()) {
            return Err("no container mounts this volume".into());
        }
        let identity = match (&claim, source) {
            (Some(claim), VolumeSource::Pvc) => format!("pvc/{}", claim.uid),
            _ => {
                let prefix = workload.get_or_insert_with(|| self.workload(pod)).clone()?;
                format!("{prefix}/{}", volume.name)
            }
        };
        if source == VolumeSource::Pvc {
            if let Some(claim) = &claim {
                let key = (ns, claim.name.clone());
                if let Some((other_pod, other_volume)) = self.covered.get(&key) {
                    return Err(if *other_pod == pod_name {
                        format!("PVC {} is backed up with volume {other_volume} of this pod", claim.name)
                    } else {
                        format!("PVC {} is backed up with pod {other_pod}", claim.name)
                    });
                }
                self.covered.insert(key, (pod_name, volume.name.as_str()));
            }
        }
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        Ok(PlannedVolume {
            namespace: ns.to_string(),
            pod: pod_name.to_string(),
            pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
            volume: volume.name.clone(),
            node,
            source,
            pvc: claim.as_ref().map(|c| c.name.clone()),
            pvc_uid: claim.as_ref().map(|c| c.uid.to_string()),
            pv: claim.as_ref().map(|c| c.pv.to_string()),
            dir: claim.as_ref().map_or_else(|| volume.name.clone(), |c| c.pv.to_string()),
            identity,
        })
    }

    /// Looks up a claim and checks it can be backed up.
    fn claim(&self, namespace: &str, claim: &str) -> Result<Claim<'s>, String> {
        let Some(pvc) = self.index.pvcs.get(&(namespace, claim)).copied() else {
            return Err(format!("PVC {claim} not found"));
        };
        let opted_out = pvc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PVC_BACKUP_ANNOTATION))
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("false"));
        if opted_out {
            return Err(format!("PVC {claim} is annotated {PVC_BACKUP_ANNOTATION}: \"false\""));
        }
        let spec = pvc.spec.as_ref();
        if spec.and_then(|s| s.volume_mode.as_deref()) == Some("Block") {
            return Err(format!("PVC {claim} has volumeMode Block (a raw block device has no files to back up)"));
        }
        match pvc.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Bound") => {}
            Some(phase) => return Err(format!("PVC {claim} is {phase}, not Bound")),
            None => return Err(format!("PVC {claim} has no status.phase, not Bound")),
        }
        let Some(pv_name) = spec.and_then(|s| s.volume_name.as_deref()).filter(|n| !n.is_empty()) else {
            return Err(format!("PVC {claim} is Bound but has no spec.volumeName"));
        };
        let Some(uid) = pvc.metadata.uid.as_deref().filter(|u| tag_safe(u)) else {
            return Err(format!("PVC {claim} has no usable metadata.uid"));
        };
        if let Some(pv) = self.index.pvs.get(pv_name) {
            let pv_spec = pv.spec.as_ref();
            if pv_spec.is_some_and(|s| s.host_path.is_some()) {
                return Err(format!("PVC {claim} is bound to hostPath PV {pv_name}, which is never backed up"));
            }
            if pv_spec.and_then(|s| s.volume_mode.as_deref()) == Some("Block") {
                return Err(format!("PVC {claim} is bound to block-mode PV {pv_name} (no files to back up)"));
            }
        }
        Ok(Claim { name: claim.to_string(), uid, pv: pv_name })
    }

    /// `<kind>/<name>` (plus the pod or node where replicas differ) of the pod's controller.
    fn workload(&self, pod: &Pod) -> Result<String, String> {
        let rs = controller_of(pod.metadata.owner_references.as_deref())
            .filter(|o| o.kind == "ReplicaSet")
            .map(|o| self.index.replica_sets.get(&(namespace_of(pod), o.name.as_str())));
        let rs_owner = match rs {
            Some(Some(rs)) => ReplicaSetOwner::Known(controller_of(rs.metadata.owner_references.as_deref())),
            _ => ReplicaSetOwner::Unknown,
        };
        workload_of(pod, rs_owner)
    }
}

/// What is known about the controller of a pod's ReplicaSet.
pub enum ReplicaSetOwner<'a> {
    /// The ReplicaSet object was seen: its controller, if any.
    Known(Option<&'a OwnerReference>),
    /// Not seen (admission time, or a partial dump): inferred from the pod-template-hash.
    Unknown,
}

/// The stable workload part of a pod-scoped volume's identity: `deployment/<name>`,
/// `statefulset/<sts>/<pod>`, `daemonset/<ds>/<node>`, `<kind>/<name>` or `pod/<name>`. Shared by
/// backup planning and restore admission, so a re-created pod finds its data.
pub fn workload_of(pod: &Pod, rs_owner: ReplicaSetOwner<'_>) -> Result<String, String> {
    let pod_name = name_of(pod);
    let Some(owner) = controller_of(pod.metadata.owner_references.as_deref()) else {
        return Ok(format!("pod/{}", part("pod name", pod_name)?));
    };
    let owner_name = part("owner name", &owner.name)?;
    Ok(match owner.kind.as_str() {
        "ReplicaSet" => match rs_owner {
            ReplicaSetOwner::Known(Some(up)) => {
                format!("{}/{}", part("owner kind", &up.kind.to_lowercase())?, part("owner name", &up.name)?)
            }
            ReplicaSetOwner::Known(None) => format!("replicaset/{owner_name}"),
            ReplicaSetOwner::Unknown => {
                // Without the ReplicaSet object, the Deployment controller's naming gives it away:
                // `<deployment>-<pod-template-hash>`.
                let hash = pod.metadata.labels.as_ref().and_then(|l| l.get(POD_TEMPLATE_HASH));
                match hash.and_then(|h| owner_name.strip_suffix(h.as_str())?.strip_suffix('-')) {
                    Some(deployment) if !deployment.is_empty() => format!("deployment/{deployment}"),
                    _ => format!("replicaset/{owner_name}"),
                }
            }
        },
        "StatefulSet" => format!("statefulset/{owner_name}/{}", part("pod name", pod_name)?),
        "DaemonSet" => format!("daemonset/{owner_name}/{}", part("node name", &node_of(pod))?),
        kind => format!("{}/{owner_name}", part("owner kind", &kind.to_lowercase())?),
    })
}

/// The pod's node: `spec.nodeName`, or before scheduling the node a DaemonSet pins it to with
/// `matchFields metadata.name In [node]`.
fn node_of(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    if let Some(node) = spec.and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()) {
        return node;
    }
    spec.and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref())
        .and_then(|r| {
            r.node_selector_terms
                .iter()
                .flat_map(|t| t.match_fields.iter().flatten())
                .find(|f| f.key == "metadata.name" && f.operator == "In")
        })
        .and_then(|f| f.values.as_ref()?.first().cloned())
        .unwrap_or_default()
}

/// Why a pod as a whole cannot be backed up now, if it cannot.
fn pod_problem(pod: &Pod) -> Option<String> {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Running") => {}
        Some(phase) => return Some(format!("pod is {phase}, not Running")),
        None => return Some("pod has no status.phase, not Running".into()),
    }
    if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_none_or(str::is_empty) {
        return Some("pod has no node".into());
    }
    if pod.metadata.uid.as_deref().is_none_or(str::is_empty) {
        return Some("pod has no metadata.uid".into());
    }
    None
}

/// The volume's source kind, or why volumes of this kind are never backed up.
pub fn volume_kind(volume: &Volume) -> Result<VolumeSource, String> {
    // By name first: token volumes have looked different across Kubernetes versions (secret,
    // then projected), their names have not.
    if volume.name.starts_with("default-token-") || volume.name.starts_with("kube-api-access-") {
        return Err("service-account token volume is never backed up".into());
    }
    let never = |kind: &str, why: &str| Err(format!("{kind} volume is never backed up ({why})"));
    let from_api = "its content comes from the API server";
    if volume.host_path.is_some() {
        return never("hostPath", "node data, not pod data");
    }
    if volume.secret.is_some() {
        return never("secret", from_api);
    }
    if volume.config_map.is_some() {
        return never("configMap", from_api);
    }
    if volume.projected.is_some() {
        return never("projected", from_api);
    }
    if volume.downward_api.is_some() {
        return never("downwardAPI", from_api);
    }
    if volume.image.is_some() {
        return never("image", "its content comes from an OCI image");
    }
    Ok(if volume.persistent_volume_claim.is_some() {
        VolumeSource::Pvc
    } else if volume.ephemeral.is_some() {
        VolumeSource::Ephemeral
    } else if volume.csi.is_some() {
        VolumeSource::CsiEphemeral
    } else if has_other_source(volume) {
        VolumeSource::Other
    } else {
        // emptyDir, or no source at all, which the API server defaults to emptyDir.
        VolumeSource::EmptyDir
    })
}

/// In-tree sources the kubelet mounts under its own plugin directory.
fn has_other_source(v: &Volume) -> bool {
    v.nfs.is_some()
        || v.iscsi.is_some()
        || v.rbd.is_some()
        || v.cephfs.is_some()
        || v.glusterfs.is_some()
        || v.fc.is_some()
        || v.flex_volume.is_some()
        || v.flocker.is_some()
        || v.cinder.is_some()
        || v.azure_disk.is_some()
        || v.azure_file.is_some()
        || v.aws_elastic_block_store.is_some()
        || v.gce_persistent_disk.is_some()
        || v.git_repo.is_some()
        || v.photon_persistent_disk.is_some()
        || v.portworx_volume.is_some()
        || v.quobyte.is_some()
        || v.scale_io.is_some()
        || v.storageos.is_some()
        || v.vsphere_volume.is_some()
}

/// Names of volumes some container mounts (volumeDevices are raw block, not mounts).
fn mounted_volumes(pod: &Pod) -> HashSet<&str> {
    let Some(spec) = pod.spec.as_ref() else { return HashSet::new() };
    let mounts = spec.containers.iter().flat_map(|c| c.volume_mounts.iter().flatten());
    let init = spec.init_containers.iter().flatten().flat_map(|c| c.volume_mounts.iter().flatten());
    let ephemeral = spec.ephemeral_containers.iter().flatten().flat_map(|c| c.volume_mounts.iter().flatten());
    mounts.chain(init).chain(ephemeral).map(|m| m.name.as_str()).collect()
}

/// The names listed in the given annotations, first occurrence wins, with the key naming them.
fn annotation_names(pod: &Pod, keys: &[&'static str]) -> Vec<(String, &'static str)> {
    let Some(annotations) = pod.metadata.annotations.as_ref() else { return Vec::new() };
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for key in keys {
        let Some(list) = annotations.get(*key) else { continue };
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if seen.insert(name) {
                out.push((name.to_string(), *key));
            }
        }
    }
    out
}

/// The owner reference marked `controller: true`, else the first.
fn controller_of(owners: Option<&[OwnerReference]>) -> Option<&OwnerReference> {
    let owners = owners?;
    owners.iter().find(|o| o.controller == Some(true)).or_else(|| owners.first())
}

/// One component of an identity: it ends up in a restic tag, so no separators, commas or blanks.
fn part<'a>(what: &str, value: &'a str) -> Result<&'a str, String> {
    if tag_safe(value) && !value.contains('/') {
        Ok(value)
    } else {
        Err(format!("cannot form a stable identity: {what} {value:?} is empty or contains '/', ',' or whitespace"))
    }
}

fn tag_safe(value: &str) -> bool {
    !value.is_empty() && !value.chars().any(|c| c == ',' || c.is_whitespace())
}

fn namespace_of(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
}

fn name_of(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or("")
}
