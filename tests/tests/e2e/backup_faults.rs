//! The backup path under faults, end to end on the simulation with real parts only: a real nats-server,
//! real restic, the real `coracle` and `coracle-volume-job` binaries, and the simulated cluster running
//! every Job as processes on its nodes. Nothing is shortcut in process: requests are events, functions
//! are the `coracle` binary consuming NATS, and the sweep is `coracle sweep`.
//!
//! 1. A volume whose first attempt fails (its namespace's repository has another password) and whose
//!    retry, once the foreign repository is moved aside, succeeds.
//! 2. A node that vanishes while its Job is backing up: its volume ends Failed through the sweep, the
//!    other node's volumes complete, and sweeping again changes nothing.
//! 3. Jobs that cannot reach NATS: their results reach the record only through the termination
//!    messages the sweep reads.

use anyhow::{bail, Context as _};
use coracle_events::envelope::decode;
use coracle_events::{
    function_source, subjects, BackupCompleted, BackupPhase, BackupRequest, VolumeBackupCompleted, VolumeBackupFailed,
};
use coracle_functions::jobs::backup_job_name;
use coracle_tests::harness::{messages, noise, snapshot_tags, write_file, Harness, SYSTEM_NAMESPACE};
use coracle_tests::nats::tools_path;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{WatchEvent, WatchParams};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

const WEB_UID: &str = "fa17c0de-5555-4555-8555-000000000001";
const WEB_PV: &str = "pvc-fa17c0de-web-data";
const MEDIA_PV: &str = "pvc-fa17c0de-media-data";
const WEB_DATA: &str = "shop/web-0/data";
const WEB_CACHE: &str = "shop/web-0/cache";
const MEDIA_DATA: &str = "media/files-0/data";

/// The fault cluster with the Jobs' NATS URL (`__NATS__` for the real server) and `backoffLimitPerIndex`.
async fn start(name: &str, job_nats: &str, backoff_limit_per_index: u32) -> anyhow::Result<Harness> {
    let objects = include_str!("../../fixtures/backup-faults.yaml")
        .replace("__JOB_NATS__", job_nats)
        .replace("__BACKOFF__", &backoff_limit_per_index.to_string());
    let h = Harness::start(name, &objects, &["node-1", "node-2"]).await?;
    h.coracle(&["setup", "nats", "--nats", &h.nats.url()])?;
    Ok(h)
}

/// Known files in every volume: the shop PV, the web pod's emptyDir, and `media_bytes` of
/// incompressible data (plus a small file) in the media PV.
async fn write_data(h: &Harness, media_bytes: usize) -> anyhow::Result<()> {
    let web = h.pv_data_dir(WEB_PV)?;
    write_file(&web.join("index.html"), b"<h1>shop</h1>\n")?;
    write_file(&web.join("assets/app.js"), "console.log(1);\n".repeat(300).as_bytes())?;
    let media = h.pv_data_dir(MEDIA_PV)?;
    write_file(&media.join("movies/list.txt"), b"heat\nronin\n")?;
    if media_bytes > 0 {
        write_file(&media.join("movies/reel.bin"), &noise(media_bytes))?;
    }
    h.wait_running("shop", "web-0").await?;
    h.wait_running("media", "files-0").await?;
    write_file(&h.volume_dir("node-1", WEB_UID, "kubernetes.io~empty-dir", "cache")?.join("entry-1"), b"cached\n")?;
    Ok(())
}

fn request(name: &str, uid: &str, namespaces: &[&str]) -> BackupRequest {
    BackupRequest {
        name: name.into(),
        uid: Some(uid.into()),
        included_namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    }
}

async fn count(h: &Harness, subject: &str) -> anyhow::Result<usize> {
    Ok(messages(&h.js().await?, subject).await?.len())
}

/// The ids of a backup's snapshots in a namespace's repository (none if the repository was never created).
fn snapshot_ids(h: &Harness, namespace: &str, backup_uid: &str) -> anyhow::Result<BTreeSet<String>> {
    if !h.repos.join(namespace).join("config").exists() {
        return Ok(BTreeSet::new());
    }
    Ok(h.snapshots(namespace)?
        .iter()
        .filter(|s| snapshot_tags(s).get("backup-uid").map(String::as_str) == Some(backup_uid))
        .filter_map(|s| s["id"].as_str().map(str::to_string))
        .collect())
}

fn volume<'a>(record: &'a Value, key: &str) -> &'a Value {
    &record["volumes"][key]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_that_fails_once_completes_on_its_retry() -> anyhow::Result<()> {
    const UID: &str = "fa17c0de-0000-4000-8000-00000000a001";
    let h = start("faults-retry", "__NATS__", 1).await?;
    write_data(&h, 0).await?;
    // The fault: a repository where the media namespace's must go, but made with another password (as
    // after a botched key rotation), so restic refuses it at once ("wrong password or no key found").
    let repository = h.repos.join("media");
    let made = std::process::Command::new("restic")
        .env("PATH", tools_path())
        .env("RESTIC_PASSWORD", "not-the-derived-password")
        .arg("-r")
        .arg(&repository)
        .args(["init", "-q"])
        .output()?;
    assert!(made.status.success(), "restic init: {}", String::from_utf8_lossy(&made.stderr));
    let client = async_nats::connect(h.nats.url()).await?;
    let mut failures = client.subscribe(subjects::VOLUME_BACKUP_FAILED).await?;
    client.flush().await?;
    let _functions =
        ["plan-backup", "record-result"].iter().map(|f| h.spawn_function(f)).collect::<anyhow::Result<Vec<_>>>()?;

    h.request(request("retry", UID, &["media"]), "req-retry").await?;
    // The Job publishes its failure before its pod ends, so the repository is repaired before the Job
    // controller can start the retry.
    let first = tokio::time::timeout(Duration::from_secs(60), failures.next())
        .await
        .context("no coracle.volume.backup.failed within 60 s")?
        .context("the subscription ended")?;
    // The repair: the foreign repository is moved aside (atomically), so the retry creates the right one.
    std::fs::rename(&repository, h.repos.join(".media-foreign"))?;
    let first = decode::<VolumeBackupFailed>(&first.payload)?;
    assert_eq!(first.source, coracle_events::job_source(&backup_job_name(UID, "node-2")));
    let first = first.data;
    assert_eq!((first.volume.key(), first.attempt, first.is_final), (MEDIA_DATA.to_string(), 0, false), "{first:?}");
    assert!(
        first.reason.contains("repository") && first.reason.contains("wrong password"),
        "the reason is restic's: {}",
        first.reason
    );

    let done: BackupCompleted = h.wait_event(subjects::BACKUP_COMPLETED, Duration::from_secs(90)).await?;
    assert_eq!(
        (done.phase, done.volumes, done.volumes_completed, done.volumes_failed),
        (BackupPhase::Completed, 1, 1, 0)
    );

    // The Job retried the index once: two pods, one failed, and the Job Complete.
    let job = h.cluster.wait_job(SYSTEM_NAMESPACE, &backup_job_name(UID, "node-2"), Duration::from_secs(30)).await?;
    assert!(job.complete(), "{}", job.describe());
    let status = job.job.status.clone().unwrap_or_default();
    assert_eq!((status.succeeded, status.failed), (Some(1), Some(1)), "{}", job.describe());
    assert_eq!(status.failed_indexes.as_deref().unwrap_or(""), "");
    let attempts: Vec<usize> = job.indexes.iter().map(|i| i.attempts).collect();
    assert_eq!(attempts, [2], "{}", job.describe());

    // The record: Completed, with the retry counted and the snapshot restic really has.
    let record = h.describe("retry")?;
    assert_eq!(record["phase"], "Completed", "{record:#}");
    let media = volume(&record, MEDIA_DATA);
    assert_eq!(
        (&media["status"], &media["failedAttempts"]),
        (&Value::from("Completed"), &Value::from(1)),
        "{record:#}"
    );
    let snapshot = media["snapshotId"].as_str().context("snapshotId")?;
    assert_eq!(snapshot_ids(&h, "media", UID)?, BTreeSet::from([snapshot.to_string()]));
    assert_eq!(h.restic("media", &["dump", snapshot, "/movies/list.txt"])?, "heat\nronin\n");

    // Its history in the KV bucket: Pending with the failure counted, then Completed.
    let kv = h.js().await?.get_key_value(subjects::KV_BACKUPS).await?;
    let mut history = kv.history("retry").await?;
    let mut versions: Vec<Value> = Vec::new();
    while let Some(entry) = history.next().await {
        versions.push(serde_json::from_slice(&entry?.value)?);
    }
    let retrying = versions
        .iter()
        .position(|r| volume(r, MEDIA_DATA)["status"] == "Pending" && volume(r, MEDIA_DATA)["failedAttempts"] == 1)
        .with_context(|| format!("no version with the failure counted and a retry pending: {versions:#?}"))?;
    let completed =
        versions.iter().position(|r| volume(r, MEDIA_DATA)["status"] == "Completed").context("no completed version")?;
    assert!(retrying < completed, "{versions:#?}");
    assert_eq!(versions[retrying]["phase"], "InProgress");
    assert_eq!(volume(&versions[retrying], MEDIA_DATA)["reason"], Value::from(first.reason.clone()));

    // One failure, one volume result, one completion.
    assert_eq!(count(&h, subjects::VOLUME_BACKUP_FAILED).await?, 1);
    assert_eq!(count(&h, subjects::VOLUME_BACKUP_COMPLETED).await?, 1);
    assert_eq!(count(&h, subjects::BACKUP_COMPLETED).await?, 1);
    drop(h);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_lost_mid_backup_fails_its_volume_and_the_rest_complete() -> anyhow::Result<()> {
    const UID: &str = "fa17c0de-0000-4000-8000-00000000b001";
    // No retries: the lost index fails at once rather than waiting for a node that is gone.
    let h = start("faults-node-lost", "__NATS__", 0).await?;
    // Enough data that the backup on node-2 is still running when the node goes.
    write_data(&h, 48 << 20).await?;
    let _plan = h.spawn_function("plan-backup")?;
    h.request(request("lost", UID, &[]), "req-lost").await?;

    let lost_job = backup_job_name(UID, "node-2");
    let pod = h
        .cluster
        .wait_for("node-2's backup pod to run", Duration::from_secs(60), |store| {
            Ok(store.list_as::<Pod>(Some(SYSTEM_NAMESPACE))?.into_iter().find(|p| {
                p.metadata.labels.as_ref().and_then(|l| l.get("job-name")) == Some(&lost_job)
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            }))
        })
        .await?;
    // Every later change of the pod, through the API server's watch, to see how it ended.
    let lost_pod = pod.metadata.name.clone().unwrap_or_default();
    let since = pod.metadata.resource_version.clone().context("resourceVersion")?;
    let pods: kube::Api<Pod> = kube::Api::namespaced(h.sim.client()?, SYSTEM_NAMESPACE);
    let params = WatchParams::default().labels(&format!("job-name={lost_job}")).timeout(60);
    let mut changes = pods.watch(&params, &since).await?.boxed();
    h.cluster.vanish_node("node-2")?;

    let kept = h.cluster.wait_job(SYSTEM_NAMESPACE, &backup_job_name(UID, "node-1"), Duration::from_secs(60)).await?;
    assert!(kept.complete(), "{}", kept.describe());
    let lost = h.cluster.wait_job(SYSTEM_NAMESPACE, &lost_job, Duration::from_secs(60)).await?;
    assert_eq!(lost.condition(), Some(("Failed".into(), Some("FailedIndexes".into()))), "{}", lost.describe());
    let status = lost.job.status.clone().unwrap_or_default();
    assert_eq!((status.failed, status.failed_indexes.as_deref()), (Some(1), Some("0")), "{}", lost.describe());
    // Its pod was failed by pod GC as NodeLost, then removed.
    let mut ended = None;
    loop {
        let change = tokio::time::timeout(Duration::from_secs(10), changes.try_next())
            .await
            .context("no change of the lost pod within 10 s")??
            .context("the watch ended before the lost pod was deleted")?;
        match change {
            WatchEvent::Modified(p) if p.metadata.name.as_deref() == Some(lost_pod.as_str()) => {
                let status = p.status.unwrap_or_default();
                if status.phase.as_deref() == Some("Failed") {
                    ended.get_or_insert((status.reason, status.message));
                }
            }
            WatchEvent::Deleted(p) if p.metadata.name.as_deref() == Some(lost_pod.as_str()) => break,
            WatchEvent::Error(e) => bail!("watch error: {e:?}"),
            _ => {}
        }
    }
    let (reason, message) = ended.context("the lost pod was deleted without being failed")?;
    assert_eq!(reason.as_deref(), Some("NodeLost"), "{message:?}");
    assert!(message.unwrap_or_default().contains("node-2"));

    // The lost volume never reported: it was caught in flight, and restic stored nothing for it.
    let js = h.js().await?;
    let reported: Vec<String> = messages(&js, subjects::VOLUME_BACKUP_COMPLETED)
        .await?
        .iter()
        .map(|m| decode::<VolumeBackupCompleted>(m).map(|e| e.data.volume.key()))
        .collect::<Result<_, _>>()?;
    assert_eq!(BTreeSet::from_iter(reported.iter().map(String::as_str)), BTreeSet::from([WEB_CACHE, WEB_DATA]));
    assert_eq!(reported.len(), 2);
    assert_eq!(count(&h, subjects::VOLUME_BACKUP_FAILED).await?, 0, "a killed Job reports nothing");
    assert!(snapshot_ids(&h, "media", UID)?.is_empty());

    h.drain("record-result")?;
    let record = h.describe("lost")?;
    assert_eq!(record["phase"], "InProgress", "without the sweep the lost volume stays pending: {record:#}");
    assert_eq!(volume(&record, MEDIA_DATA)["status"], "Pending");

    // The sweep turns the Job's verdict into the volume's final failure.
    assert_eq!(h.sweep()?, 1);
    h.drain("record-result")?;
    let record = h.describe("lost")?;
    assert_eq!(record["phase"], "PartiallyFailed", "{record:#}");
    let shop = snapshot_ids(&h, "shop", UID)?;
    for key in [WEB_DATA, WEB_CACHE] {
        let v = volume(&record, key);
        assert_eq!(v["status"], "Completed", "{key}: {record:#}");
        assert!(shop.contains(v["snapshotId"].as_str().unwrap_or_default()), "{key}'s snapshot is in restic");
    }
    assert_eq!(shop.len(), 2);
    let media = volume(&record, MEDIA_DATA);
    assert_eq!(media["status"], "Failed", "{record:#}");
    let reason = media["reason"].as_str().context("reason")?;
    assert!(reason.contains(&lost_job) && reason.contains("failed"), "the reason names the failed Job: {reason}");
    assert!(media.get("snapshotId").is_none_or(Value::is_null));

    let completions = messages(&js, subjects::BACKUP_COMPLETED).await?;
    assert_eq!(completions.len(), 1);
    let done = decode::<BackupCompleted>(&completions[0])?.data;
    assert_eq!(
        (done.phase, done.volumes, done.volumes_completed, done.volumes_failed),
        (BackupPhase::PartiallyFailed, 3, 2, 1)
    );
    assert_eq!(done.failures.len(), 1);
    assert_eq!((done.failures[0].volume.as_str(), done.failures[0].reason.as_str()), (MEDIA_DATA, reason));
    let failed = messages(&js, subjects::VOLUME_BACKUP_FAILED).await?;
    assert_eq!(failed.len(), 1);
    let failed = decode::<VolumeBackupFailed>(&failed[0])?;
    assert_eq!(failed.source, function_source("sweep"));
    assert!(failed.data.is_final);

    // Sweeping again: nothing to do, nothing published, nothing changed.
    assert_eq!(h.sweep()?, 0);
    h.drain("record-result")?;
    assert_eq!(count(&h, subjects::VOLUME_BACKUP_FAILED).await?, 1);
    assert_eq!(count(&h, subjects::BACKUP_COMPLETED).await?, 1);
    assert_eq!(h.describe("lost")?, record, "the record is unchanged");
    drop(h);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_recovers_results_the_jobs_could_not_publish() -> anyhow::Result<()> {
    const UID: &str = "fa17c0de-0000-4000-8000-00000000c001";
    // The functions use the real server; the Jobs are given one where nothing listens.
    let h = start("faults-offline", "nats://127.0.0.1:1", 1).await?;
    write_data(&h, 0).await?;
    let _plan = h.spawn_function("plan-backup")?;
    h.request(request("offline", UID, &[]), "req-offline").await?;
    for node in ["node-1", "node-2"] {
        let job = h.cluster.wait_job(SYSTEM_NAMESPACE, &backup_job_name(UID, node), Duration::from_secs(60)).await?;
        assert!(job.complete(), "{}", job.describe());
        for index in &job.indexes {
            assert!(index.log.contains("unreachable"), "the Job could not reach NATS:\n{}", job.describe());
            assert!(index.termination_message.contains("snapshotId"), "{}", job.describe());
        }
    }
    for subject in [subjects::VOLUME_BACKUP_PROGRESS, subjects::VOLUME_BACKUP_COMPLETED, subjects::VOLUME_BACKUP_FAILED]
    {
        assert_eq!(count(&h, subject).await?, 0, "no Job event reached NATS on {subject}");
    }
    h.drain("record-result")?;
    assert_eq!(h.describe("offline")?["phase"], "InProgress");

    // Two sweeps before record-result runs: the same results under the same ids, stored once.
    assert_eq!(h.sweep()?, 3);
    assert_eq!(h.sweep()?, 3, "the record is still in progress: the results are offered again");
    let js = h.js().await?;
    let recovered = messages(&js, subjects::VOLUME_BACKUP_COMPLETED).await?;
    assert_eq!(recovered.len(), 3, "de-duplicated by event id");
    for m in &recovered {
        assert_eq!(decode::<VolumeBackupCompleted>(m)?.source, function_source("sweep"));
    }

    h.drain("record-result")?;
    let record = h.describe("offline")?;
    assert_eq!(record["phase"], "Completed", "{record:#}");
    let recorded = |namespace: &str| -> BTreeSet<String> {
        record["volumes"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(key, _)| key.starts_with(&format!("{namespace}/")))
            .filter_map(|(_, v)| v["snapshotId"].as_str().map(str::to_string))
            .collect()
    };
    for (namespace, volumes) in [("shop", 2), ("media", 1)] {
        let in_restic = snapshot_ids(&h, namespace, UID)?;
        assert_eq!(in_restic.len(), volumes, "{namespace}");
        assert_eq!(recorded(namespace), in_restic, "{namespace}: the record names the snapshots restic has");
    }
    let media = volume(&record, MEDIA_DATA)["snapshotId"].as_str().context("snapshotId")?.to_string();
    assert_eq!(h.restic("media", &["dump", &media, "/movies/list.txt"])?, "heat\nronin\n");
    let completions = messages(&js, subjects::BACKUP_COMPLETED).await?;
    assert_eq!(completions.len(), 1);
    let done = decode::<BackupCompleted>(&completions[0])?.data;
    assert_eq!((done.phase, done.volumes_completed), (BackupPhase::Completed, 3));

    // The record is terminal: a later sweep has nothing to recover.
    assert_eq!(h.sweep()?, 0);
    h.drain("record-result")?;
    assert_eq!(count(&h, subjects::VOLUME_BACKUP_COMPLETED).await?, 3);
    assert_eq!(count(&h, subjects::BACKUP_COMPLETED).await?, 1);
    assert_eq!(h.describe("offline")?, record, "the record is unchanged");
    drop(h);
    Ok(())
}
