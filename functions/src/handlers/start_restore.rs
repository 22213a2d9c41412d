//! start-restore: a restoring pod's helper announced itself (`coracle.restore.pod.ready`) →
//! one node-affined restore Job for the volumes this pod claimed at admission. Idempotent: the
//! Job name is derived from the restore and pod uids, AlreadyExists is success, and a stale
//! event (pod gone or re-created) does nothing.

use crate::admission::{pod_targets, ANNOTATION_CLAIM, ANNOTATION_OWNED, ANNOTATION_RESTORE_UID};
use crate::context::Context;
use crate::jobs::restore_job;
use crate::kube_cluster;
use crate::plan_restore::pending_key;
use coracle_events::consume::HandleError;
use coracle_events::{RestorePodReady, RestoreTarget, RestoreVolume};

pub const NAME: &str = "start-restore";

pub async fn handle(ctx: &Context, payload: &[u8]) -> Result<(), HandleError> {
    let ready = coracle_events::envelope::decode::<RestorePodReady>(payload).map_err(HandleError::permanent)?.data;
    let nats = ctx.nats.as_ref().ok_or_else(|| HandleError::permanent("start-restore needs NATS (--nats)"))?;
    let kube = ctx.kube()?;
    let Some(pod) = kube_cluster::pod(kube, &ready.namespace, &ready.pod).await? else {
        tracing::info!(pod = %ready.pod, "pod is gone; nothing to restore");
        return Ok(());
    };
    if pod.metadata.uid.as_deref() != Some(ready.pod_uid.as_str()) {
        tracing::info!(pod = %ready.pod, "pod was re-created since; its own helper will announce it");
        return Ok(());
    }
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    if annotations.get(ANNOTATION_RESTORE_UID) != Some(&ready.restore.uid) {
        return Err(HandleError::permanent(format!(
            "pod {}/{} is not part of restore {}",
            ready.namespace, ready.pod, ready.restore.name
        )));
    }
    let claim = annotations.get(ANNOTATION_CLAIM).cloned().unwrap_or_default();
    let owned: Vec<&str> =
        annotations.get(ANNOTATION_OWNED).map(|v| v.split(',').filter(|s| !s.is_empty()).collect()).unwrap_or_default();
    let node =
        pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()).unwrap_or(ready.node.clone());
    if node.is_empty() {
        return Err(HandleError::retryable(format!("pod {}/{} is not scheduled yet", ready.namespace, ready.pod)));
    }

    let mut volumes = Vec::new();
    for (volume, target) in pod_targets(&pod) {
        if !owned.contains(&volume.as_str()) {
            continue;
        }
        let key = pending_key(&ready.namespace, &target);
        let Some((entry, _)) = nats.pending.get(&key).await? else { continue };
        if entry.claim.as_deref() != Some(claim.as_str())
            || entry.pending.restore.uid != ready.restore.uid
            || entry.state.is_terminal()
        {
            continue;
        }
        let dir = match &target {
            RestoreTarget::Pvc { claim } => kube_cluster::claim_volume(kube, &ready.namespace, claim)
                .await?
                .ok_or_else(|| HandleError::retryable(format!("PVC {claim} is not bound yet")))?,
            RestoreTarget::Workload { .. } => volume.clone(),
        };
        volumes.push(RestoreVolume {
            namespace: ready.namespace.clone(),
            pod: ready.pod.clone(),
            pod_uid: ready.pod_uid.clone(),
            volume,
            dir,
            source_namespace: entry.pending.source_namespace.clone(),
            snapshot_id: entry.pending.snapshot_id.clone(),
            entry: key,
        });
    }
    if volumes.is_empty() {
        return Ok(());
    }
    let settings = kube_cluster::settings(kube, &ctx.system_namespace).await?;
    let timeout = crate::duration::parse_duration(&settings.default_volume_timeout)
        .map_err(|e| HandleError::permanent(format!("defaultVolumeTimeout: {e}")))?;
    let job = restore_job(&ready.restore, &ready.pod_uid, &node, &volumes, timeout, &settings);
    kube_cluster::create_job(kube, &job).await?;
    Ok(())
}
