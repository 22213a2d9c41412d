//! Losing NATS state loses no backups: after the KV bucket is deleted, `coracle catalog rebuild`
//! reconstructs the record from the snapshot tags and summaries (idempotently), and `coracle
//! backup describe` shows what it showed before on every field the repository holds. Then key
//! rotation: the old password no longer opens the repository, the new generation's does, the
//! data is intact, and the catalogue is still readable through the rotated key.

use anyhow::Context as _;
use coracle_events::BackupRequest;
use coracle_tests::harness::{write_file, Harness};
use coracle_tests::nats::tools_path;
use serde_json::Value;
use std::process::Command;

const WEB_PV: &str = "pvc-3f1c9b52-web-data";

/// What the repository holds of a record, as `backup describe -o json` prints it. Compared in
/// full: the backup, the request (name and uid: this test's request has nothing else), the
/// phase, the expiry, the Job names, and every volume that has a snapshot with its whole
/// `volume` (node, source, claim, PV, directory, identity...), status, snapshot and parent ids
/// and statistics.
///
/// Not compared, because no repository holds them:
/// - volumes without a snapshot (an empty volume, here the web pod's `cache` emptyDir; failed
///   volumes) and the plan's `skipped` list;
/// - `finished` (when record-result saw the last result, not a restic time);
/// - `started` exactly (the plan's time; the rebuild has the first snapshot's start, which is
///   seconds to minutes later, see [`assert_started_close`]) and `durationSeconds` exactly (restic stores the archiving time,
///   the Job reported it including opening the repository, see [`assert_durations_close`]);
/// - warnings, and any request field beyond name and uid.
fn durable(record: &Value) -> Value {
    let volumes: serde_json::Map<String, Value> = record["volumes"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| v["snapshotId"].as_str().is_some_and(|id| !id.is_empty()))
        .map(|(k, v)| {
            let mut v = v.clone();
            if let Some(stats) = v["stats"].as_object_mut() {
                stats.remove("durationSeconds");
            }
            (k.clone(), v)
        })
        .collect();
    serde_json::json!({
        "backup": record["backup"], "request": record["request"], "phase": record["phase"],
        "expires": record["expires"], "jobs": record["jobs"], "volumes": volumes,
    })
}

fn time(record: &Value, field: &str) -> anyhow::Result<chrono::DateTime<chrono::FixedOffset>> {
    let text = record[field].as_str().with_context(|| format!("{field} in {record:#}"))?;
    Ok(chrono::DateTime::parse_from_rfc3339(text)?)
}

/// The rebuilt start is the first snapshot's: after the plan the original was stamped with
/// (the Jobs start later, seconds here, minutes in a cluster pulling images), before it finished.
fn assert_started_close(after: &Value, before: &Value) -> anyhow::Result<()> {
    let rebuilt = time(after, "started")?;
    assert!(time(before, "started")? <= rebuilt && rebuilt <= time(before, "finished")?, "{after:#}\nvs\n{before:#}");
    Ok(())
}

/// restic's backup_end - backup_start against the Job's total, per volume with a snapshot.
fn assert_durations_close(after: &Value, before: &Value) {
    for (key, v) in after["volumes"].as_object().into_iter().flatten() {
        let rebuilt = v["stats"]["durationSeconds"].as_f64().unwrap_or(-1.0);
        let original = before["volumes"][key]["stats"]["durationSeconds"].as_f64().unwrap_or(-1.0);
        assert!(rebuilt > 0.0 && (rebuilt - original).abs() < 1.0, "{key}: {rebuilt}s rebuilt vs {original}s");
    }
}

fn restic_with(h: &Harness, generation: u32, args: &[&str]) -> std::process::Output {
    let password = coracle_volume_job::namespace_password(h.master_key.as_bytes(), "shop", generation);
    Command::new("restic")
        .env("PATH", tools_path())
        .env("RESTIC_PASSWORD", password)
        .arg("-r")
        .arg(h.repos.join("shop"))
        .args(args)
        .output()
        .expect("restic runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_after_losing_kv_then_rotate_the_key() -> anyhow::Result<()> {
    let h = Harness::start("catalog-rebuild", include_str!("../../fixtures/backup-flow.yaml"), &["node-1", "node-2"])
        .await?;
    let nats = h.nats.url();
    h.coracle(&["setup", "nats", "--nats", &nats])?;
    write_file(&h.pv_data_dir(WEB_PV)?.join("index.html"), b"<h1>shop</h1>\n")?;
    // The media volume (NFS PV, on node-2) has data too, so both nodes and namespaces have snapshots.
    write_file(&h.pv_data_dir("nfs-media-share")?.join("movies/list.txt"), b"heat\nronin\n")?;
    h.wait_running("shop", "web-6d4cf56db6-x7k2p").await?;
    h.wait_running("media", "files-0").await?;
    h.request(BackupRequest { name: "nightly".into(), ..Default::default() }, "req-nightly").await?;
    h.drain("plan-backup")?;
    let before = h.describe("nightly")?;
    let uid = before["backup"]["uid"].as_str().context("uid")?.to_string();
    h.run_jobs_of(&uid).await?;
    h.drain("record-result")?;
    let before = h.describe("nightly")?;
    assert_eq!(before["phase"], "Completed");
    let with_snapshots = durable(&before)["volumes"].as_object().map(|v| v.len());
    assert_eq!(with_snapshots, Some(2), "web data and media share; the empty cache has none: {before:#}");

    // NATS state lost.
    let js = h.js().await?;
    js.delete_key_value(coracle_events::subjects::KV_BACKUPS).await?;
    assert!(h.coracle(&["backup", "describe", "nightly", "--nats", &nats]).is_err(), "the record is gone");

    let out = h.coracle(&["catalog", "rebuild", "--nats", &nats])?;
    assert!(out.contains("1 record(s) rebuilt"), "{out}");
    let after = h.describe("nightly")?;
    assert_eq!(durable(&after), durable(&before), "{after:#}\nvs\n{before:#}");
    assert_started_close(&after, &before)?;
    assert_durations_close(&after, &before);
    assert!(after["volumes"].get("shop/web-6d4cf56db6-x7k2p/cache").is_none(), "no snapshot, not rebuilt");
    let again = h.coracle(&["catalog", "rebuild", "--nats", &nats, "--namespace", "shop", "--namespace", "media"])?;
    assert!(again.contains("0 record(s) rebuilt, 1 already present"), "{again}");
    assert_eq!(h.describe("nightly")?, after, "idempotent");

    // Key rotation.
    let snapshot_id = h
        .snapshots("shop")?
        .iter()
        .find(|s| coracle_tests::harness::snapshot_tags(s).get("volume").map(String::as_str) == Some("data"))
        .and_then(|s| s["id"].as_str().map(String::from))
        .context("data snapshot")?;
    let out = h.coracle(&["keys", "rotate", "--namespace", "shop"])?;
    assert!(out.contains("generation 1 -> 2"), "{out}");
    assert!(!out.contains(&h.master_key));
    let old = restic_with(&h, 1, &["snapshots", "--json"]);
    assert!(!old.status.success(), "the old password no longer opens the repository");
    let new = restic_with(&h, 2, &["dump", &snapshot_id, "/index.html"]);
    assert!(new.status.success(), "{}", String::from_utf8_lossy(&new.stderr));
    assert_eq!(new.stdout, b"<h1>shop</h1>\n", "data intact");
    let check = restic_with(&h, 2, &["check", "--read-data"]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let keys: Vec<Value> = serde_json::from_slice(&restic_with(&h, 2, &["key", "list", "--json"]).stdout)?;
    assert_eq!(keys.len(), 1, "only the new key is left");

    // The catalogue reads the rotated repository with the generation recorded in the ConfigMap.
    js.delete_key_value(coracle_events::subjects::KV_BACKUPS).await?;
    let out = h.coracle(&["catalog", "rebuild", "--nats", &nats])?;
    assert!(out.contains("1 record(s) rebuilt"), "{out}");
    assert_eq!(durable(&h.describe("nightly")?), durable(&before));
    Ok(())
}
