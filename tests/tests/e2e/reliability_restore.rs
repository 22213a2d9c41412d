//! A restore whose Job fails, end to end: the backup's pod is gone (deleted with its data), the
//! snapshot to restore was forgotten and pruned from the repository behind Coracle's back, and
//! the pod is re-created through the real webhook. The restore Job fails for good, leaves its
//! failure marker; the injected `coracle-restore-wait` exits non-zero with a message that says
//! what failed; the application container never starts on the half-restored (here: empty)
//! volume; and `coracle.restore.completed` reports the failure with the reason.

use anyhow::Context as _;
use coracle_events::{subjects, BackupCompleted, BackupPhase, BackupRequest, RestoreCompleted, RestoreRequest};
use coracle_tests::harness::{snapshot_tags, write_file, Harness};
use k8s_openapi::api::core::v1::Pod;
use std::time::Duration;

const WEB_PV: &str = "pvc-9b1f3c2a-web-data";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_restore_job_stops_the_pod_with_the_reason() -> anyhow::Result<()> {
    let h =
        Harness::start("rel-restore-fails", include_str!("../../fixtures/demo-cluster.yaml"), &["node-1", "node-2"])
            .await?;
    h.coracle(&["setup", "nats", "--nats", &h.nats.url()])?;
    let web = h.wait_running("shop", "web-7c9d8f6b5d-h2x9k").await?;
    h.wait_running("shop", "db-0").await?;
    let web_data = h.pv_data_dir(WEB_PV)?;
    write_file(&web_data.join("index.html"), b"<h1>shop</h1>\n")?;
    let _functions = ["plan-backup", "record-result", "plan-restore", "start-restore"]
        .iter()
        .map(|f| h.spawn_function(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let _webhook = h.install_webhook().await?;

    let backup =
        BackupRequest { name: "doomed".into(), included_namespaces: vec!["shop".into()], ..Default::default() };
    h.request(backup, "doomed").await?;
    let done: BackupCompleted = h.wait_event(subjects::BACKUP_COMPLETED, Duration::from_secs(120)).await?;
    assert_eq!(done.phase, BackupPhase::Completed, "{done:?}");

    // The backup's pod no longer exists, its data is gone, and so is the snapshot.
    let pods: kube::Api<Pod> = kube::Api::namespaced(h.sim.client()?, "shop");
    pods.delete("web-7c9d8f6b5d-h2x9k", &Default::default()).await?;
    std::fs::remove_dir_all(&web_data)?;
    std::fs::create_dir_all(&web_data)?;
    let snapshot = h
        .snapshots("shop")?
        .into_iter()
        .find(|s| snapshot_tags(s).get("pvc").map(String::as_str) == Some("web-data"))
        .and_then(|s| s["id"].as_str().map(str::to_string))
        .context("the web-data snapshot")?;
    h.restic("shop", &["forget", &snapshot, "--prune"])?;

    let restore = RestoreRequest {
        name: "doomed-restore".into(),
        backup: "doomed".into(),
        included_namespaces: vec!["shop".into()],
        volumes: vec!["shop/web-data".into()],
        ..Default::default()
    };
    h.request_restore(restore, "doomed-restore").await?;
    h.wait_event::<coracle_events::RestorePlanned>(subjects::RESTORE_PLANNED, Duration::from_secs(30)).await?;
    let new_web = h.recreate_pod(&web, Some("web-7c9d8f6b5d-")).await?;
    let name = new_web.metadata.name.clone().context("generated name")?;

    // The helper fails with the reason; the app never runs.
    let failed = h
        .cluster
        .wait_pod("shop", &name, Duration::from_secs(90), |p| {
            p.status
                .as_ref()
                .and_then(|s| s.init_container_statuses.as_ref())
                .and_then(|c| c.iter().find(|c| c.name == "coracle-restore-wait"))
                .and_then(|c| {
                    c.last_state.as_ref().and_then(|s| s.terminated.as_ref()).or(c.state.as_ref()?.terminated.as_ref())
                })
                .is_some_and(|t| t.exit_code != 0)
        })
        .await?;
    let status = failed.status.clone().unwrap_or_default();
    let helper = status
        .init_container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == "coracle-restore-wait")
        .context("helper status")?;
    let ended = helper
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .or_else(|| helper.state.as_ref().and_then(|s| s.terminated.clone()))
        .context("the helper ended")?;
    let message = ended.message.clone().unwrap_or_default();
    assert!(message.contains("web-data") || message.contains("data"), "names the volume: {message}");
    assert!(message.contains("failed"), "says it failed: {message}");
    assert!(message.contains(&snapshot[..8]) || message.contains("snapshot"), "says why: {message}");
    for c in status.container_statuses.iter().flatten() {
        assert!(
            c.state.as_ref().and_then(|s| s.running.as_ref()).is_none() && c.last_state.is_none(),
            "the app container never started: {c:?}"
        );
    }
    assert_ne!(status.phase.as_deref(), Some("Running"));

    let restored: RestoreCompleted = h.wait_event(subjects::RESTORE_COMPLETED, Duration::from_secs(60)).await?;
    assert_eq!((restored.phase, restored.volumes_failed), (BackupPhase::Failed, 1), "{restored:?}");
    assert!(restored.failures.iter().any(|f| f.reason.contains("snapshot")), "{restored:?}");
    assert!(!web_data.join("index.html").exists(), "nothing was restored");
    Ok(())
}
