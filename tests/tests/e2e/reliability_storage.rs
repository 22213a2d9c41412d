//! A repository whose disk is full: the media namespace's repository lives on a 4 MiB tmpfs
//! while its volume holds 24 MiB of incompressible data. Its volume fails with restic's own
//! clear reason (no space left on device), no snapshot is recorded for it, and the shop
//! namespace — another repository — is unaffected. Needs root (mount, nsenter); skipped otherwise.

use anyhow::Context as _;
use coracle_events::{subjects, BackupCompleted, BackupPhase, BackupRequest};
use coracle_tests::harness::{messages, noise, write_file, Harness};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const WEB_UID: &str = "fa17c0de-5555-4555-8555-000000000001";

/// Mounts a tmpfs of `size` at `path` inside `node`'s mount namespace (entered through the
/// process holding it), where that node's containers see it; it goes with the node. None (and the
/// test is skipped) where mounting is not allowed.
fn mount_on_node(h: &Harness, node: &str, path: &Path, size: &str) -> anyhow::Result<Option<()>> {
    let root = h.cluster.node_view(node, Path::new("/"))?;
    let holder = root
        .strip_prefix("/proc")
        .ok()
        .and_then(|r| r.iter().next())
        .and_then(|p| p.to_str()?.parse::<u32>().ok())
        .with_context(|| format!("node view {} is not /proc/<pid>/root", root.display()))?;
    std::fs::create_dir_all(path)?;
    let out = Command::new("nsenter")
        .arg(format!("--mount=/proc/{holder}/ns/mnt"))
        .args(["mount", "-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(path)
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(Some(())),
        Ok(o) => {
            eprintln!("cannot mount a tmpfs on {node} ({}): skipped", String::from_utf8_lossy(&o.stderr).trim());
            Ok(None)
        }
        Err(e) => {
            eprintln!("no nsenter ({e}): skipped");
            Ok(None)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_repository_disk_fails_only_its_namespace_with_a_clear_reason() -> anyhow::Result<()> {
    let objects = include_str!("../../fixtures/backup-faults.yaml")
        .replace("__JOB_NATS__", "__NATS__")
        .replace("__BACKOFF__", "0");
    let h = Harness::start("rel-disk-full", &objects, &["node-1", "node-2"]).await?;
    let media_repository = h.repos.join("media");
    if mount_on_node(&h, "node-2", &media_repository, "4m")?.is_none() {
        return Ok(());
    }
    h.coracle(&["setup", "nats", "--nats", &h.nats.url()])?;
    write_file(&h.pv_data_dir("pvc-fa17c0de-web-data")?.join("index.html"), b"<h1>shop</h1>\n")?;
    write_file(&h.pv_data_dir("pvc-fa17c0de-media-data")?.join("movies/reel.bin"), &noise(24 << 20))?;
    h.wait_running("shop", "web-0").await?;
    h.wait_running("media", "files-0").await?;
    write_file(&h.volume_dir("node-1", WEB_UID, "kubernetes.io~empty-dir", "cache")?.join("entry-1"), b"cached\n")?;

    let _functions =
        ["plan-backup", "record-result"].iter().map(|f| h.spawn_function(f)).collect::<anyhow::Result<Vec<_>>>()?;
    let request = BackupRequest { name: "full".into(), ..Default::default() };
    h.request(request, "req-full").await?;
    let done: BackupCompleted = h.wait_event(subjects::BACKUP_COMPLETED, Duration::from_secs(90)).await?;
    assert_eq!(
        (done.phase, done.volumes, done.volumes_completed, done.volumes_failed),
        (BackupPhase::PartiallyFailed, 3, 2, 1),
        "{done:?}"
    );
    assert_eq!(done.failures.len(), 1);
    let failure = &done.failures[0];
    assert_eq!(failure.volume, "media/files-0/data");
    assert!(failure.reason.contains("no space left on device"), "a clear reason: {}", failure.reason);

    let record = h.describe("full")?;
    let media = &record["volumes"]["media/files-0/data"];
    assert_eq!(media["status"], "Failed", "{record:#}");
    assert!(media.get("snapshotId").is_none_or(serde_json::Value::is_null), "nothing partial recorded");
    for key in ["shop/web-0/data", "shop/web-0/cache"] {
        assert_eq!(record["volumes"][key]["status"], "Completed", "{key}: {record:#}");
    }
    // The other namespace's repository is whole and readable.
    let shop = h.snapshots("shop")?;
    assert_eq!(shop.len(), 2);
    let data = record["volumes"]["shop/web-0/data"]["snapshotId"].as_str().context("snapshot")?;
    assert_eq!(h.restic("shop", &["dump", data, "/index.html"])?, "<h1>shop</h1>\n");
    // And the full one, as node-2 sees it, has no snapshot.
    let full = h.cluster.node_view("node-2", &media_repository)?;
    let out = Command::new("restic")
        .env("PATH", coracle_tests::nats::tools_path())
        .env("RESTIC_PASSWORD", coracle_volume_job::namespace_password(h.master_key.as_bytes(), "media", 1))
        .arg("-r")
        .arg(&full)
        .args(["snapshots", "--json"])
        .output()?;
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the full repository is still readable: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!listed.contains("\"id\""), "no snapshot in the full repository: {listed}");
    assert_eq!(messages(&h.js().await?, subjects::BACKUP_COMPLETED).await?.len(), 1);
    drop(_functions);
    drop(h);
    Ok(())
}

/// The media repository unreachable (its mount replaced by an empty read-only file system) on
/// every attempt: the Job retries the volume (backoffLimitPerIndex 1), then it ends Failed with
/// restic's reason; the shop namespace is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_repository_is_retried_then_fails_with_the_reason() -> anyhow::Result<()> {
    let objects = include_str!("../../fixtures/backup-faults.yaml")
        .replace("__JOB_NATS__", "__NATS__")
        .replace("__BACKOFF__", "1");
    let h = Harness::start("rel-unreachable", &objects, &["node-1", "node-2"]).await?;
    let media_repository = h.repos.join("media");
    if mount_on_node(&h, "node-2", &media_repository, "1m,ro")?.is_none() {
        return Ok(());
    }
    h.coracle(&["setup", "nats", "--nats", &h.nats.url()])?;
    write_file(&h.pv_data_dir("pvc-fa17c0de-web-data")?.join("index.html"), b"<h1>shop</h1>\n")?;
    write_file(&h.pv_data_dir("pvc-fa17c0de-media-data")?.join("movies/list.txt"), b"heat\n")?;
    h.wait_running("shop", "web-0").await?;
    h.wait_running("media", "files-0").await?;

    let _functions =
        ["plan-backup", "record-result"].iter().map(|f| h.spawn_function(f)).collect::<anyhow::Result<Vec<_>>>()?;
    h.request(BackupRequest { name: "unreachable".into(), ..Default::default() }, "req-unreachable").await?;
    let done: BackupCompleted = h.wait_event(subjects::BACKUP_COMPLETED, Duration::from_secs(90)).await?;
    assert_eq!((done.phase, done.volumes_completed, done.volumes_failed), (BackupPhase::PartiallyFailed, 2, 1));
    let reason = &done.failures.first().context("a failure")?.reason;
    assert!(reason.contains("read-only file system"), "restic's reason: {reason}");
    let record = h.describe("unreachable")?;
    let media = &record["volumes"]["media/files-0/data"];
    assert_eq!((&media["status"], &media["failedAttempts"]), (&"Failed".into(), &2.into()), "{record:#}");
    let uid = record["backup"]["uid"].as_str().context("uid")?;
    let job = coracle_functions::jobs::backup_job_name(uid, "node-2");
    let outcome = h.cluster.wait_job(coracle_tests::harness::SYSTEM_NAMESPACE, &job, Duration::from_secs(30)).await?;
    let attempts: Vec<usize> = outcome.indexes.iter().map(|i| i.attempts).collect();
    assert_eq!(attempts, [2], "tried, then retried once: {}", outcome.describe());
    Ok(())
}
