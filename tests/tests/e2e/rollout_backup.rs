//! A rollout backs up the workload's volumes with no event bridge (SPEC §8, issue 5's "done when"):
//! the simulated API server calls `coracle serve`'s validating webhook on the Deployment UPDATE, the
//! webhook publishes `coracle.k8s.workload.updated`, on-k8s-event matches the example trigger policy
//! (`deploy/examples/trigger-policy.yaml`) and requests a backup, which completes with real restic.
//! A scale-only change, a dry run and a second rollout inside the debounce window request nothing.

use anyhow::bail;
use coracle_events::{envelope::decode, subjects, BackupCompleted, BackupPhase, BackupRequest};
use coracle_tests::harness::{messages, write_file, Harness};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_through_the_validating_webhook_backs_up_the_workload_once() -> anyhow::Result<()> {
    let h = Harness::start("rollout-backup", include_str!("../../fixtures/demo-cluster.yaml"), &["node-1", "node-2"])
        .await?;
    h.wait_running("shop", "web-7c9d8f6b5d-h2x9k").await?;
    write_file(&h.pv_data_dir("pvc-9b1f3c2a-web-data")?.join("index.html"), b"<h1>shop</h1>\n")?;
    h.coracle(&["setup", "nats", "--nats", &h.nats.url()])?;
    for doc in serde_yaml::Deserializer::from_str(include_str!("../../../deploy/examples/trigger-policy.yaml")) {
        let policy: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        h.sim.store().put(policy)?;
    }
    let _functions = ["on-k8s-event", "plan-backup", "record-result"]
        .iter()
        .map(|f| h.spawn_function(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let _webhooks = h.install_webhook().await?;
    let deployments: kube::Api<Deployment> = kube::Api::namespaced(h.sim.client()?, "shop");
    let js = h.js().await?;

    // Not rollouts: scaling, and a dry run of a template change.
    deployments.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 2}}))).await?;
    let restart = |at: &str| json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": at}}}}});
    let dry = PatchParams { dry_run: true, ..Default::default() };
    deployments.patch("web", &dry, &Patch::Merge(restart("2026-11-21T10:00:00Z"))).await?;

    // The rollout.
    deployments.patch("web", &PatchParams::default(), &Patch::Merge(restart("2026-11-21T10:01:00Z"))).await?;
    let completed: BackupCompleted = h.wait_event(subjects::BACKUP_COMPLETED, Duration::from_secs(90)).await?;
    assert!(completed.backup.name.starts_with("backup-on-rollout-web-"), "{completed:?}");
    assert_eq!((completed.phase, completed.volumes), (BackupPhase::Completed, 2), "web data + cache: {completed:?}");

    // Another rollout inside the 15-minute debounce window: nothing more is requested.
    deployments.patch("web", &PatchParams::default(), &Patch::Merge(restart("2026-11-21T10:02:00Z"))).await?;
    let updates = |n: usize| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let seen = messages(&js, "coracle.k8s.workload.updated").await?.len();
            if seen >= n {
                return anyhow::Ok(seen);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{seen} workload updates published, expected {n}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert_eq!(updates(2).await?, 2, "the webhook published both rollouts (not the scale, not the dry run)");
    h.drain("on-k8s-event")?;
    let requests = messages(&h.js().await?, subjects::BACKUP_REQUESTED).await?;
    let requests: Vec<BackupRequest> =
        requests.iter().map(|r| decode::<BackupRequest>(r).map(|e| e.data)).collect::<Result<_, _>>()?;
    assert_eq!(requests.len(), 1, "debounced: {requests:?}");
    assert_eq!(requests[0].origin.as_deref(), Some("trigger/backup-on-rollout"));
    Ok(())
}
