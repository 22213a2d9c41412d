//! The restore path end to end on the simulation, with real parts only: back up a namespace's
//! volumes, delete its pods and wipe their data, request a restore, re-create the pods through
//! the API (so through the real admission webhook, `coracle serve`), and watch the injected
//! `coracle-restore-wait` helper hold each app container until the restore Jobs — created by
//! start-restore when the helper announces itself — have put the data back. The data then
//! matches byte for byte, with modes and modification times.

use anyhow::Context as _;
use coracle_events::{subjects, BackupCompleted, BackupPhase, BackupRequest, RestoreCompleted, RestoreRequest};
use coracle_tests::harness::{tree_digest, write_file, Harness};
use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

const WEB_UID: &str = "e1000000-0000-4000-8000-000000000001";
const WEB_PV: &str = "pvc-9b1f3c2a-web-data";
const DB0_PV: &str = "pvc-4e7d0b11-data-db-0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_through_admission_and_the_helper_gives_the_data_back() -> anyhow::Result<()> {
    scenario("restore-flow", false).await
}

/// NATS lost the backup's record: plan-restore rebuilds it from the snapshots' tags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_without_the_backup_record_reads_the_repository_tags() -> anyhow::Result<()> {
    scenario("restore-tags", true).await
}

async fn scenario(name: &str, lose_record: bool) -> anyhow::Result<()> {
    let h = Harness::start(name, include_str!("../../fixtures/demo-cluster.yaml"), &["node-1", "node-2"]).await?;
    h.coracle(&["setup", "nats", "--nats", &h.nats.url()])?;
    let web = h.wait_running("shop", "web-7c9d8f6b5d-h2x9k").await?;
    h.wait_running("shop", "db-0").await?;

    // Known data: a PVC on CSI, an emptyDir, with odd modes and old mtimes.
    let web_data = h.pv_data_dir(WEB_PV)?;
    let db_data = h.pv_data_dir(DB0_PV)?;
    let cache = h.volume_dir("node-1", WEB_UID, "kubernetes.io~empty-dir", "cache")?;
    for (dir, n) in [(&web_data, 30usize), (&db_data, 5), (&cache, 12)] {
        for i in 0..n {
            let path = dir.join(format!("d{}/f{i}.bin", i % 3));
            write_file(&path, format!("{i}:{}", "x".repeat(i * 997)).as_bytes())?;
            std::fs::set_permissions(
                &path,
                std::os::unix::fs::PermissionsExt::from_mode(0o600 + (i as u32 % 2) * 0o44),
            )?;
            let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000 + i as u64 * 3600);
            std::fs::File::options().write(true).open(&path)?.set_modified(old)?;
        }
    }
    let before: BTreeMap<&str, _> =
        [("web-data", tree_digest(&web_data)?), ("db-data", tree_digest(&db_data)?), ("cache", tree_digest(&cache)?)]
            .into();

    let _functions = ["plan-backup", "record-result", "plan-restore", "start-restore"]
        .iter()
        .map(|f| h.spawn_function(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let _webhook = h.install_webhook().await?;

    // 1. Back up the shop namespace.
    let backup =
        BackupRequest { name: "shop-backup".into(), included_namespaces: vec!["shop".into()], ..Default::default() };
    h.request(backup, "shop-backup").await?;
    let done: BackupCompleted = h.wait_event(subjects::BACKUP_COMPLETED, Duration::from_secs(120)).await?;
    assert_eq!((done.phase, done.volumes), (BackupPhase::Completed, 4), "web data+cache, db-0, db-1: {done:?}");

    // 2. Disaster: the pods are deleted and their data is gone.
    let pods: kube::Api<Pod> = kube::Api::namespaced(h.sim.client()?, "shop");
    let db0 = pods.get("db-0").await?;
    for name in ["web-7c9d8f6b5d-h2x9k", "db-0"] {
        pods.delete(name, &Default::default()).await?;
    }
    for dir in [&web_data, &db_data] {
        std::fs::remove_dir_all(dir)?;
        std::fs::create_dir_all(dir)?;
    }
    assert!(tree_digest(&web_data)?.is_empty());

    if lose_record {
        let kv = h.js().await?.get_key_value(coracle_events::subjects::KV_BACKUPS).await?;
        kv.purge("shop-backup").await?;
        assert!(h.coracle(&["backup", "describe", "shop-backup", "--nats", &h.nats.url()]).is_err(), "record gone");
    }

    // 3. Restore, then re-create the workloads' pods as their controllers would.
    // Only what is re-created below: a restore waits for the pods of every entry it plans.
    let volumes = ["shop/web-data", "shop/cache", "shop/data-db-0"].map(String::from).to_vec();
    let restore =
        RestoreRequest { name: "shop-restore".into(), backup: "shop-backup".into(), volumes, ..Default::default() };
    h.request_restore(RestoreRequest { included_namespaces: vec!["shop".into()], ..restore }, "shop-restore").await?;
    h.wait_event::<coracle_events::RestorePlanned>(subjects::RESTORE_PLANNED, Duration::from_secs(30)).await?;
    let new_web = h.recreate_pod(&web, Some("web-7c9d8f6b5d-")).await?;
    let new_db0 = h.recreate_pod(&db0, None).await?;
    let web_name = new_web.metadata.name.clone().context("generated name")?;
    let inits = |p: &Pod| p.spec.as_ref().and_then(|s| s.init_containers.clone()).unwrap_or_default();
    assert_eq!(
        inits(&new_web).first().map(|c| c.name.as_str()),
        Some("coracle-restore-wait"),
        "the webhook injected the helper"
    );
    assert_eq!(inits(&new_db0).first().map(|c| c.name.as_str()), Some("coracle-restore-wait"));

    // 4. The helper holds the app until the data is back; then the pods run.
    let web_running = h.wait_running("shop", &web_name).await?;
    h.wait_running("shop", "db-0").await?;
    let restored: RestoreCompleted = h.wait_event(subjects::RESTORE_COMPLETED, Duration::from_secs(60)).await?;
    assert_eq!((restored.phase, restored.volumes_completed), (BackupPhase::Completed, 3), "{restored:?}");
    let helper = web_running
        .status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == "coracle-restore-wait").cloned())
        .context("helper status")?;
    let helper_done = helper.state.and_then(|s| s.terminated).context("the helper finished")?;
    assert_eq!(helper_done.exit_code, 0);
    let app_started = web_running
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c[0].state.as_ref()?.running.as_ref()?.started_at.clone())
        .context("app started")?;
    let helper_finished = helper_done.finished_at.context("finish time")?;
    assert!(helper_finished.0 <= app_started.0, "the app started only after the helper let it");

    // 5. The data matches, and the markers are gone.
    let new_uid = web_running.metadata.uid.clone().context("uid")?;
    let new_cache: PathBuf = h.volume_dir("node-1", &new_uid, "kubernetes.io~empty-dir", "cache")?;
    let after: BTreeMap<&str, _> = [
        ("web-data", tree_digest(&web_data)?),
        ("db-data", tree_digest(&db_data)?),
        ("cache", tree_digest(&new_cache)?),
    ]
    .into();
    assert_eq!(after, before);
    assert!(!web_data.join(coracle_events::MARKER_DIR).join(&restored.restore.uid).exists(), "marker removed");
    let described = h.coracle(&["restore", "describe", "shop-restore", "--nats", &h.nats.url(), "-o", "json"])?;
    assert!(described.contains("\"phase\": \"Completed\""), "{described}");
    Ok(())
}
