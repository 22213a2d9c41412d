//! TTL expiry end to end with real restic: two backups share data; the expired one's snapshots are
//! forgotten by one maintenance Job (launched by the maintenance function on a tick), prune reclaims
//! what only it held, the kept backup still restores byte for byte, and the record is deleted with
//! exactly one `coracle.backup.deleted`. A second tick launches nothing.

use anyhow::Context as _;
use coracle_events::{subjects, BackupDeleted, BackupRequest};
use coracle_tests::harness::{messages, snapshot_tags, tree_digest, write_file, Harness, SYSTEM_NAMESPACE};
use std::time::Duration;

const WEB_PV: &str = "pvc-3f1c9b52-web-data";

fn dir_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn random(len: usize) -> Vec<u8> {
    (0..len.div_ceil(16)).flat_map(|_| *uuid::Uuid::new_v4().as_bytes()).take(len).collect()
}

async fn backup(h: &Harness, name: &str, ttl: &str) -> anyhow::Result<String> {
    let request = BackupRequest {
        name: name.into(),
        included_namespaces: vec!["shop".into()],
        ttl: Some(ttl.into()),
        ..Default::default()
    };
    h.request(request, &format!("req-{name}")).await?;
    h.drain("plan-backup")?;
    let uid = h.describe(name)?["backup"]["uid"].as_str().context("uid")?.to_string();
    h.run_jobs_of(&uid).await?;
    h.drain("record-result")?;
    assert_eq!(h.describe(name)?["phase"], "Completed");
    Ok(uid)
}

fn maintenance_jobs(h: &Harness) -> anyhow::Result<Vec<String>> {
    Ok(h.jobs()?
        .into_iter()
        .filter(|j| {
            j.metadata.labels.as_ref().and_then(|l| l.get("coracle.dev/operation")).map(String::as_str)
                == Some("maintain")
        })
        .filter_map(|j| j.metadata.name)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_backups_are_forgotten_pruned_and_the_kept_one_restores() -> anyhow::Result<()> {
    let h = Harness::start("retention", include_str!("../../fixtures/backup-flow.yaml"), &["node-1", "node-2"]).await?;
    h.coracle(&["setup", "nats", "--nats", &h.nats.url()])?;
    let data = h.pv_data_dir(WEB_PV)?;
    write_file(&data.join("shared.bin"), &random(1 << 20))?;
    write_file(&data.join("old-only.bin"), &random(3 << 20))?;
    h.wait_running("shop", "web-6d4cf56db6-x7k2p").await?;
    let old_uid = backup(&h, "old", "1s").await?;
    std::fs::remove_file(data.join("old-only.bin"))?;
    write_file(&data.join("keep.txt"), b"kept\n")?;
    let keep_uid = backup(&h, "keep", "720h").await?;
    let kept_digest = tree_digest(&data)?;
    let repo = h.repos.join("shop");
    let size_before = dir_size(&repo);
    // The data volume of each backup (the empty cache volume leaves no snapshot).
    assert_eq!(h.snapshots("shop")?.len(), 2);

    // A tick: the maintenance function marks "old" expired and launches one Job for the repository.
    let tick = h.tmp.path().join("tick.json");
    std::fs::write(&tick, "{}")?;
    let tick = tick.display().to_string();
    h.coracle(&["fn", "maintenance", "--nats", &h.nats.url(), "--event", &tick])?;
    let jobs = maintenance_jobs(&h)?;
    assert_eq!(jobs.len(), 1, "one Job per repository: {jobs:?}");
    let outcome = h.cluster.wait_job(SYSTEM_NAMESPACE, &jobs[0], Duration::from_secs(60)).await?;
    assert!(outcome.complete(), "{}", outcome.describe());
    h.drain("maintenance")?;

    // Exactly the expired backup's snapshots are gone; prune gave its data back.
    let left = h.snapshots("shop")?;
    assert_eq!(left.len(), 1, "{left:#?}");
    assert!(left.iter().all(|s| snapshot_tags(s).get("backup-uid") == Some(&keep_uid)));
    let size_after = dir_size(&repo);
    assert!(size_after + (2 << 20) < size_before, "prune reclaimed old-only.bin: {size_before} -> {size_after}");

    // The kept backup restores byte for byte (the data it shares with the deleted one is intact).
    let data_snap =
        left.iter().find(|s| snapshot_tags(s).get("volume").map(String::as_str) == Some("data")).context("data")?;
    let target = h.tmp.path().join("restored");
    h.restic("shop", &["restore", data_snap["id"].as_str().context("id")?, "--target", &target.display().to_string()])?;
    assert_eq!(tree_digest(&target)?, kept_digest);
    h.restic("shop", &["check", "--read-data"])?;

    // The record is deleted, the kept one untouched, and the event published once.
    let old = h.describe("old")?;
    assert_eq!(old["deletion"]["reason"], "expired", "{old:#}");
    assert!(old["deletion"]["deleted"].is_string(), "{old:#}");
    assert!(h.describe("keep")?.get("deletion").is_none());
    let js = h.js().await?;
    let deleted = messages(&js, subjects::BACKUP_DELETED).await?;
    assert_eq!(deleted.len(), 1);
    let deleted = coracle_events::envelope::decode::<BackupDeleted>(&deleted[0])?;
    assert_eq!(
        (deleted.data.backup.uid.as_str(), deleted.data.namespaces.clone()),
        (old_uid.as_str(), vec!["shop".to_string()])
    );

    // Another tick: prune and check are not due again and nothing is left to forget.
    h.coracle(&["fn", "maintenance", "--nats", &h.nats.url(), "--event", &tick])?;
    assert_eq!(maintenance_jobs(&h)?.len(), 1, "no second Job");

    // On demand: `coracle backup delete` forgets the other one too.
    let out = h.coracle(&["backup", "delete", "keep", "--nats", &h.nats.url()])?;
    let jobs = maintenance_jobs(&h)?;
    assert_eq!(jobs.len(), 2, "{out}");
    for j in &jobs {
        assert!(h.cluster.wait_job(SYSTEM_NAMESPACE, j, Duration::from_secs(60)).await?.complete());
    }
    h.drain("maintenance")?;
    assert!(h.snapshots("shop")?.is_empty());
    assert!(h.describe("keep")?["deletion"]["deleted"].is_string());
    assert_eq!(messages(&js, subjects::BACKUP_DELETED).await?.len(), 2);
    Ok(())
}
