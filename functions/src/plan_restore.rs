//! What gets restored: a restore request and a backup record → the pending restore entries,
//! each keyed by what a re-created pod can be recognised by at admission time (when it has no
//! uid and often no name yet): the target namespace plus the PVC claim name for PVC volumes,
//! or the owning workload plus the volume name for pod-scoped volumes.
//!
//! Pure: no I/O. Volumes that did not complete in the backup are reported, not restored; two
//! volumes that would restore into the same target (replicas of one Deployment share an
//! emptyDir identity) are restored once, from the first in (namespace, pod, volume) order.

use crate::record::{BackupRecord, VolumeStatus};
use crate::selector::is_dns1123_label;
use coracle_events::{PendingRestore, RestoreRef, RestoreRequest, RestoreTarget, SkippedVolume, VolumeSource};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestorePlan {
    pub restore: RestoreRef,
    pub entries: Vec<PendingRestore>,
    pub skipped: Vec<SkippedVolume>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RestorePlanError {
    #[error("restore {restore} names backup {want} but the record is of backup {got}")]
    WrongBackup { restore: String, want: String, got: String },
    #[error("namespaceMapping {from:?} → {to:?}: {to:?} is not a valid namespace name")]
    BadMapping { from: String, to: String },
}

/// Where a pod-scoped identity's volume lands: `deployment/web/cache` → owner `deployment/web`.
pub fn workload_target(identity: &str) -> Option<RestoreTarget> {
    let (owner, volume) = identity.rsplit_once('/')?;
    (!owner.is_empty() && !volume.is_empty())
        .then(|| RestoreTarget::Workload { owner: owner.to_string(), volume: volume.to_string() })
}

/// The KV key of a pending entry: `<target-ns>.pvc.<claim>` or `<target-ns>.workload.<owner>.<volume>`.
/// Kubernetes names never contain the separators `.`-free tokens would need, so the key is
/// built from validated names only (see `plan_restore`).
pub fn pending_key(namespace: &str, target: &RestoreTarget) -> String {
    match target {
        RestoreTarget::Pvc { claim } => format!("{namespace}.pvc.{claim}"),
        RestoreTarget::Workload { owner, volume } => format!("{namespace}.workload.{owner}.{volume}"),
    }
}

pub fn plan_restore(
    request: &RestoreRequest,
    uid: &str,
    record: &BackupRecord,
) -> Result<RestorePlan, RestorePlanError> {
    if request.backup != record.backup.name {
        return Err(RestorePlanError::WrongBackup {
            restore: request.name.clone(),
            want: request.backup.clone(),
            got: record.backup.name.clone(),
        });
    }
    for (from, to) in &request.namespace_mapping {
        if !is_dns1123_label(to) {
            return Err(RestorePlanError::BadMapping { from: from.clone(), to: to.clone() });
        }
    }
    let restore = RestoreRef { name: request.name.clone(), uid: uid.to_string() };
    let mut plan = RestorePlan { restore: restore.clone(), ..Default::default() };
    let mut taken: BTreeMap<String, String> = BTreeMap::new();
    // The record's volumes are keyed `namespace/pod/volume`, so iteration is already ordered.
    for (key, v) in &record.volumes {
        let vol = &v.volume;
        let skip = |reason: String| SkippedVolume {
            namespace: vol.namespace.clone(),
            pod: vol.pod.clone(),
            volume: vol.volume.clone(),
            reason,
        };
        if !namespace_selected(request, &vol.namespace) || !volume_selected(request, vol) {
            continue;
        }
        let snapshot_id = match (&v.status, &v.snapshot_id) {
            (VolumeStatus::Completed | VolumeStatus::CompletedWithWarnings, Some(id)) => id.clone(),
            (status, _) => {
                plan.skipped.push(skip(format!("volume is {status:?} in backup {}", record.backup.name)));
                continue;
            }
        };
        let target_namespace =
            request.namespace_mapping.get(&vol.namespace).cloned().unwrap_or_else(|| vol.namespace.clone());
        let target = match (vol.source, &vol.pvc) {
            (VolumeSource::Pvc, Some(claim)) => RestoreTarget::Pvc { claim: claim.clone() },
            _ => match workload_target(&vol.identity) {
                Some(t) => t,
                None => {
                    plan.skipped.push(skip(format!("identity {:?} names no workload", vol.identity)));
                    continue;
                }
            },
        };
        let pkey = pending_key(&target_namespace, &target);
        if let Some(first) = taken.get(&pkey) {
            plan.skipped.push(skip(format!("restored from {first}, which has the same target")));
            continue;
        }
        taken.insert(pkey, key.clone());
        plan.entries.push(PendingRestore {
            restore: restore.clone(),
            backup: record.backup.clone(),
            target_namespace,
            target,
            source_namespace: vol.namespace.clone(),
            source_pod: vol.pod.clone(),
            source_volume: vol.volume.clone(),
            snapshot_id,
            identity: vol.identity.clone(),
        });
    }
    Ok(plan)
}

fn namespace_selected(request: &RestoreRequest, namespace: &str) -> bool {
    let included = request.included_namespaces.is_empty()
        || request.included_namespaces.iter().any(|n| n == "*" || n == namespace);
    included && !request.excluded_namespaces.iter().any(|n| n == namespace)
}

/// `volumes` entries: `volume`, `namespace/volume` or `namespace/claim`.
fn volume_selected(request: &RestoreRequest, vol: &coracle_events::PlannedVolume) -> bool {
    request.volumes.is_empty()
        || request.volumes.iter().any(|f| match f.split_once('/') {
            Some((ns, name)) => ns == vol.namespace && (name == vol.volume || vol.pvc.as_deref() == Some(name)),
            None => f == &vol.volume,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::VolumeRecord;
    use chrono::Utc;
    use coracle_events::{BackupRef, BackupRequest, PlannedVolume};

    fn volume(ns: &str, pod: &str, vol: &str, pvc: Option<&str>, identity: &str) -> PlannedVolume {
        PlannedVolume {
            namespace: ns.into(),
            pod: pod.into(),
            pod_uid: "0b9f3b36-1b8e-4f1a-9a43-5a0c0f9a2a11".into(),
            volume: vol.into(),
            node: "n1".into(),
            source: if pvc.is_some() { VolumeSource::Pvc } else { VolumeSource::EmptyDir },
            pvc: pvc.map(String::from),
            pvc_uid: pvc.map(|_| "uid".into()),
            pv: pvc.map(|c| format!("pv-{c}")),
            dir: vol.into(),
            identity: identity.into(),
        }
    }

    fn record(vols: Vec<(PlannedVolume, VolumeStatus)>) -> BackupRecord {
        BackupRecord {
            backup: BackupRef { name: "nightly".into(), uid: "b-uid".into() },
            request: BackupRequest { name: "nightly".into(), ..Default::default() },
            phase: crate::record::RecordPhase::Completed,
            started: Utc::now(),
            finished: None,
            expires: Utc::now(),
            jobs: vec![],
            volumes: vols
                .into_iter()
                .map(|(v, status)| {
                    let snapshot_id = (status != VolumeStatus::Failed).then(|| format!("snap-{}", v.volume));
                    (
                        v.key(),
                        VolumeRecord {
                            volume: v,
                            status,
                            snapshot_id,
                            parent_snapshot: None,
                            stats: None,
                            warnings: vec![],
                            reason: None,
                            failed_attempts: 0,
                        },
                    )
                })
                .collect(),
            skipped: vec![],
            completion_published: false,
            deletion: None,
        }
    }

    fn request() -> RestoreRequest {
        RestoreRequest { name: "r1".into(), backup: "nightly".into(), ..Default::default() }
    }

    #[test]
    fn pvc_and_workload_targets_with_mapping_and_dedupe() {
        let rec = record(vec![
            (volume("shop", "db-0", "data", Some("data-db-0"), "pvc/u1"), VolumeStatus::Completed),
            (volume("shop", "web-a", "cache", None, "deployment/web/cache"), VolumeStatus::CompletedWithWarnings),
            (volume("shop", "web-b", "cache", None, "deployment/web/cache"), VolumeStatus::Completed),
            (volume("shop", "etl-0", "tmp", None, "statefulset/etl/etl-0/tmp"), VolumeStatus::Failed),
        ]);
        let mut req = request();
        req.namespace_mapping.insert("shop".into(), "shop-restored".into());
        let plan = plan_restore(&req, "r-uid", &rec).expect("plan");
        let targets: Vec<(String, RestoreTarget)> =
            plan.entries.iter().map(|e| (e.target_namespace.clone(), e.target.clone())).collect();
        assert_eq!(
            targets,
            vec![
                ("shop-restored".into(), RestoreTarget::Pvc { claim: "data-db-0".into() }),
                (
                    "shop-restored".into(),
                    RestoreTarget::Workload { owner: "deployment/web".into(), volume: "cache".into() }
                ),
            ]
        );
        assert_eq!(plan.entries[1].snapshot_id, "snap-cache");
        assert_eq!(plan.entries[1].source_pod, "web-a");
        let reasons: Vec<&str> = plan.skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(
            reasons,
            ["volume is Failed in backup nightly", "restored from shop/web-a/cache, which has the same target"]
        );
        assert_eq!(pending_key("shop", &plan.entries[1].target), "shop.workload.deployment/web.cache");
    }

    #[test]
    fn filters_and_errors() {
        let rec = record(vec![
            (volume("a", "p", "data", Some("c1"), "pvc/u1"), VolumeStatus::Completed),
            (volume("b", "q", "data", Some("c2"), "pvc/u2"), VolumeStatus::Completed),
        ]);
        let mut req = request();
        req.excluded_namespaces = vec!["a".into()];
        assert_eq!(plan_restore(&req, "u", &rec).expect("plan").entries.len(), 1);
        let mut req = request();
        req.volumes = vec!["a/c1".into()];
        let plan = plan_restore(&req, "u", &rec).expect("plan");
        assert_eq!(plan.entries.iter().map(|e| e.source_namespace.as_str()).collect::<Vec<_>>(), ["a"]);
        let mut req = request();
        req.backup = "other".into();
        assert!(matches!(plan_restore(&req, "u", &rec), Err(RestorePlanError::WrongBackup { .. })));
        let mut req = request();
        req.namespace_mapping.insert("a".into(), "Bad_NS".into());
        assert!(matches!(plan_restore(&req, "u", &rec), Err(RestorePlanError::BadMapping { .. })));
    }
}
