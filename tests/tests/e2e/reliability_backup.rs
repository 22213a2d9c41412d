//! The backup path under the faults of RELIABILITY.md, with real parts only (nats-server, restic,
//! the `coracle` and `coracle-volume-job` binaries, Jobs run by the simulated cluster):
//!
//! 1. nats-server crashes (SIGKILL) while the Jobs run and comes back only after they ended: the
//!    results they could not publish come back through the sweep, and the backup ends with one
//!    correct `coracle.backup.completed`.
//! 2. A Job pod killed mid-backup (every process of its container, SIGKILL): the Job's retry
//!    makes a complete snapshot, nothing partial is recorded, and the lock the killed restic left
//!    blocks neither the retry nor the next backup.
//! 3. Every event of a backup delivered three times, out of order (results before their plan,
//!    the completion before the progress), before record-result runs: one record, one completion.

use anyhow::{bail, Context as _};
use coracle_events::envelope::decode;
use coracle_events::publish::Publisher;
use coracle_events::{subjects, BackupCompleted, BackupPhase, BackupRequest};
use coracle_functions::jobs::backup_job_name;
use coracle_tests::harness::{messages, noise, snapshot_tags, write_file, Harness, SYSTEM_NAMESPACE};
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

const WEB_UID: &str = "fa17c0de-5555-4555-8555-000000000001";
const WEB_PV: &str = "pvc-fa17c0de-web-data";
const MEDIA_PV: &str = "pvc-fa17c0de-media-data";
const MEDIA_DATA: &str = "media/files-0/data";
const REEL: usize = 48 << 20;

async fn start(name: &str, backoff_limit_per_index: u32) -> anyhow::Result<Harness> {
    let objects = include_str!("../../fixtures/backup-faults.yaml")
        .replace("__JOB_NATS__", "__NATS__")
        .replace("__BACKOFF__", &backoff_limit_per_index.to_string());
    let h = Harness::start(name, &objects, &["node-1", "node-2"]).await?;
    h.coracle(&["setup", "nats", "--nats", &h.nats.url()])?;
    let web = h.pv_data_dir(WEB_PV)?;
    write_file(&web.join("index.html"), b"<h1>shop</h1>\n")?;
    let media = h.pv_data_dir(MEDIA_PV)?;
    write_file(&media.join("movies/list.txt"), b"heat\nronin\n")?;
    // Enough incompressible data that the media backup is still running when the fault strikes.
    write_file(&media.join("movies/reel.bin"), &noise(REEL))?;
    h.wait_running("shop", "web-0").await?;
    h.wait_running("media", "files-0").await?;
    write_file(&h.volume_dir("node-1", WEB_UID, "kubernetes.io~empty-dir", "cache")?.join("entry-1"), b"cached\n")?;
    Ok(h)
}

fn request(name: &str, uid: &str) -> BackupRequest {
    BackupRequest { name: name.into(), uid: Some(uid.into()), ..Default::default() }
}

/// Waits until the Job's pod on node-2 runs; returns it.
async fn running_pod(h: &Harness, job: &str) -> anyhow::Result<Pod> {
    h.cluster
        .wait_for("node-2's backup pod to run", Duration::from_secs(60), |store| {
            Ok(store.list_as::<Pod>(Some(SYSTEM_NAMESPACE))?.into_iter().find(|p| {
                p.metadata.labels.as_ref().and_then(|l| l.get("job-name")).map(String::as_str) == Some(job)
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            }))
        })
        .await
}

/// The snapshots of one backup in a namespace's repository.
fn snapshots_of(h: &Harness, namespace: &str, backup_uid: &str) -> anyhow::Result<Vec<Value>> {
    Ok(h.snapshots(namespace)?
        .into_iter()
        .filter(|s| snapshot_tags(s).get("backup-uid").map(String::as_str) == Some(backup_uid))
        .collect())
}

/// Checks a completed record against restic: every volume Completed with the snapshot restic has,
/// and the media snapshot whole.
fn assert_complete(h: &Harness, name: &str, uid: &str) -> anyhow::Result<Value> {
    let record = h.describe(name)?;
    assert_eq!(record["phase"], "Completed", "{record:#}");
    let volumes = record["volumes"].as_object().context("volumes")?;
    assert_eq!(volumes.len(), 3, "{record:#}");
    for (namespace, count) in [("shop", 2), ("media", 1)] {
        let in_restic: BTreeSet<String> =
            snapshots_of(h, namespace, uid)?.iter().filter_map(|s| s["id"].as_str().map(str::to_string)).collect();
        assert_eq!(in_restic.len(), count, "{namespace}: one snapshot per volume, none partial");
        let recorded: BTreeSet<String> = volumes
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{namespace}/")))
            .filter_map(|(_, v)| v["snapshotId"].as_str().map(str::to_string))
            .collect();
        assert_eq!(recorded, in_restic, "{namespace}: the record names what restic has");
    }
    let media = record["volumes"][MEDIA_DATA]["snapshotId"].as_str().context("media snapshot")?.to_string();
    let stats = h.restic("media", &["stats", "--json", &media])?;
    let stats: Value = serde_json::from_str(&stats)?;
    assert_eq!(stats["total_size"].as_u64(), Some((REEL + "heat\nronin\n".len()) as u64), "the snapshot is whole");
    Ok(record)
}

/// Kills every process of the Job's pod (the job binary and its restic, which carry the pod's
/// hostname, `<job>-<index>`), as a container runtime does when a pod is killed.
fn kill_job_processes(job: &str) -> anyhow::Result<usize> {
    let hostname = format!("HOSTNAME={job}-0");
    let mut victims = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if String::from_utf8_lossy(&environ).split('\0').any(|e| e == hostname) {
            victims.push(pid);
        }
    }
    for pid in &victims {
        coracle_tests::process::signal(*pid, libc::SIGKILL);
    }
    Ok(victims.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_crashing_mid_backup_loses_nothing() -> anyhow::Result<()> {
    const UID: &str = "7e11ab1e-0000-4000-8000-00000000a001";
    let mut h = start("rel-nats-restart", 1).await?;
    {
        let _plan = h.spawn_function("plan-backup")?;
        h.request(request("crash", UID), "req-crash").await?;
        running_pod(&h, &backup_job_name(UID, "node-2")).await?;
    }
    // The crash, mid-backup; it stays down until every Job has ended.
    h.nats.kill();
    for node in ["node-1", "node-2"] {
        let job = h.cluster.wait_job(SYSTEM_NAMESPACE, &backup_job_name(UID, node), Duration::from_secs(90)).await?;
        assert!(job.complete(), "{}", job.describe());
    }
    h.nats.start_again()?;

    // What the Jobs published before the crash is in the stream; the rest comes from the sweep.
    let published_before = messages(&h.js().await?, subjects::VOLUME_BACKUP_COMPLETED).await?.len();
    assert!(published_before < 3, "the media Job ended while NATS was down: {published_before}");
    h.drain("record-result")?;
    assert_eq!(h.describe("crash")?["phase"], "InProgress");
    let recovered = h.sweep()?;
    assert_eq!(recovered, 3 - published_before, "the sweep offers the results NATS never got");
    h.drain("record-result")?;
    let record = assert_complete(&h, "crash", UID)?;

    let js = h.js().await?;
    let completions = messages(&js, subjects::BACKUP_COMPLETED).await?;
    assert_eq!(completions.len(), 1, "one completion");
    let done = decode::<BackupCompleted>(&completions[0])?.data;
    assert_eq!((done.phase, done.volumes, done.volumes_completed), (BackupPhase::Completed, 3, 3));
    assert_eq!(h.sweep()?, 0, "nothing left to recover");
    h.drain("record-result")?;
    assert_eq!(messages(&js, subjects::BACKUP_COMPLETED).await?.len(), 1);
    assert_eq!(h.describe("crash")?, record);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_pod_killed_mid_backup_is_retried_to_a_complete_snapshot() -> anyhow::Result<()> {
    const UID: &str = "7e11ab1e-0000-4000-8000-00000000b001";
    const NEXT: &str = "7e11ab1e-0000-4000-8000-00000000b002";
    let h = start("rel-pod-killed", 1).await?;
    let _functions =
        ["plan-backup", "record-result"].iter().map(|f| h.spawn_function(f)).collect::<anyhow::Result<Vec<_>>>()?;
    h.request(request("killed", UID), "req-killed").await?;
    let job = backup_job_name(UID, "node-2");
    running_pod(&h, &job).await?;
    // Until restic has written its lock: the kill then leaves a stale one behind.
    let locks = h.repos.join("media/locks");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(&locks).map(|d| d.count()).unwrap_or(0) == 0 {
        if std::time::Instant::now() > deadline {
            bail!("restic never locked the media repository");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed = kill_job_processes(&job)?;
    assert!(killed >= 2, "the job binary and its restic: {killed}");

    let outcome = h.cluster.wait_job(SYSTEM_NAMESPACE, &job, Duration::from_secs(90)).await?;
    assert!(outcome.complete(), "{}", outcome.describe());
    let attempts: Vec<usize> = outcome.indexes.iter().map(|i| i.attempts).collect();
    assert_eq!(attempts, [2], "the killed attempt and its retry: {}", outcome.describe());
    let done = h.wait_event::<BackupCompleted>(subjects::BACKUP_COMPLETED, Duration::from_secs(60)).await?;
    assert_eq!((done.phase, done.volumes_completed), (BackupPhase::Completed, 3), "{done:?}");
    assert_complete(&h, "killed", UID)?;

    // The next backup runs through whatever lock the killed restic left.
    h.request(request("after-kill", NEXT), "req-after-kill").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let done = messages(&h.js().await?, subjects::BACKUP_COMPLETED).await?;
        if done.len() == 2 {
            let second = decode::<BackupCompleted>(&done[1])?.data;
            assert_eq!((second.backup.name.as_str(), second.phase), ("after-kill", BackupPhase::Completed));
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the next backup did not complete");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_complete(&h, "after-kill", NEXT)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_three_times_out_of_order_is_recorded_once() -> anyhow::Result<()> {
    const UID: &str = "7e11ab1e-0000-4000-8000-00000000c001";
    let h = start("rel-triplicates", 1).await?;
    h.request(request("thrice", UID), "req-thrice").await?;
    h.drain("plan-backup")?;
    h.run_jobs_of(UID).await?;
    let js = h.js().await?;

    // Every event so far, again twice (new message ids, so the stream keeps them), in reverse
    // order: Job results before their plan, completions before progress.
    let mut all = Vec::new();
    for subject in [
        subjects::BACKUP_REQUESTED,
        subjects::BACKUP_PLANNED,
        subjects::VOLUME_BACKUP_PROGRESS,
        subjects::VOLUME_BACKUP_COMPLETED,
    ] {
        for payload in messages(&js, subject).await? {
            all.push((subject, payload));
        }
    }
    let publisher = Publisher::new(js.clone());
    for round in 0..2 {
        for (i, (subject, payload)) in all.iter().enumerate().rev() {
            publisher.publish_raw(subject, &format!("again-{round}-{i}"), payload.clone()).await?;
        }
    }
    // plan-backup sees its request three times; record-result sees each result three times.
    h.drain("record-result")?;
    h.drain("plan-backup")?;
    h.drain("record-result")?;
    let record = assert_complete(&h, "thrice", UID)?;
    assert_eq!(h.jobs()?.len(), 2, "no second Job");
    assert_eq!(messages(&js, subjects::BACKUP_COMPLETED).await?.len(), 1, "one completion");
    assert_eq!(messages(&js, subjects::BACKUP_PLANNED).await?.len(), 3, "the plan, as re-delivered");
    let counted = record["volumes"].as_object().context("volumes")?;
    assert!(counted.values().all(|v| v["failedAttempts"].as_u64().unwrap_or(0) == 0), "{record:#}");
    assert_eq!(snapshots_of(&h, "shop", UID)?.len() + snapshots_of(&h, "media", UID)?.len(), 3);
    Ok(())
}

/// Two schedules backing up the same namespace at once: two requests in the same instant, before
/// its repository exists (so their Jobs also race to create it). Both complete, each with its own
/// snapshots, and neither's record mentions the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_backups_of_one_namespace_at_once_both_complete() -> anyhow::Result<()> {
    const A: &str = "7e11ab1e-0000-4000-8000-00000000d001";
    const B: &str = "7e11ab1e-0000-4000-8000-00000000d002";
    let h = start("rel-overlap", 1).await?;
    let _functions =
        ["plan-backup", "record-result"].iter().map(|f| h.spawn_function(f)).collect::<anyhow::Result<Vec<_>>>()?;
    let shop = |name: &str, uid: &str| BackupRequest {
        name: name.into(),
        uid: Some(uid.into()),
        included_namespaces: vec!["shop".into()],
        ..Default::default()
    };
    let (a, b) = tokio::join!(h.request(shop("often-a", A), "often-a"), h.request(shop("often-b", B), "often-b"));
    a?;
    b?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut completed = Vec::new();
    while completed.len() < 2 {
        if tokio::time::Instant::now() > deadline {
            bail!("only {} of the two backups completed", completed.len());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        completed = messages(&h.js().await?, subjects::BACKUP_COMPLETED).await?;
    }
    for (name, uid) in [("often-a", A), ("often-b", B)] {
        let record = h.describe(name)?;
        assert_eq!(record["phase"], "Completed", "{record:#}");
        let snapshots = snapshots_of(&h, "shop", uid)?;
        assert_eq!(snapshots.len(), 2, "{name}: data and cache");
        let ids: BTreeSet<String> = snapshots.iter().filter_map(|s| s["id"].as_str().map(str::to_string)).collect();
        let recorded: BTreeSet<String> = record["volumes"]
            .as_object()
            .context("volumes")?
            .values()
            .filter_map(|v| v["snapshotId"].as_str().map(str::to_string))
            .collect();
        assert_eq!(recorded, ids, "{name} records its own snapshots");
    }
    assert_eq!(h.snapshots("shop")?.len(), 4);
    for m in &completed {
        assert_eq!(decode::<BackupCompleted>(m)?.data.phase, BackupPhase::Completed);
    }
    Ok(())
}
