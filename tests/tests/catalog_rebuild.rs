//! Losing NATS state loses no backups: after the KV bucket is deleted, `coracle catalog rebuild`
//! reconstructs the record from the snapshot tags (idempotently). Then key rotation: the old
//! password no longer opens the repository, the new generation's does, the data is intact, and the
//! catalogue is still readable through the rotated key.

use anyhow::Context as _;
use coracle_events::BackupRequest;
use coracle_tests::harness::{write_file, Harness};
use coracle_tests::nats::tools_path;
use serde_json::Value;
use std::process::Command;

const WEB_PV: &str = "pvc-3f1c9b52-web-data";

/// What the snapshot tags carry of a record (node, statistics, skipped and empty volumes do not
/// live in restic's tags).
fn durable(record: &Value) -> Value {
    let volumes: serde_json::Map<String, Value> = record["volumes"]
        .as_object()
        .into_iter()
        .flatten()
        // An empty volume completes without a snapshot, so no repository knows of it.
        .filter(|(_, v)| v["snapshotId"].as_str().is_some_and(|id| !id.is_empty()))
        .map(|(k, v)| {
            let vol = &v["volume"];
            (
                k.clone(),
                serde_json::json!({
                    "status": v["status"], "snapshotId": v["snapshotId"], "namespace": vol["namespace"],
                    "pod": vol["pod"], "podUid": vol["podUid"], "volume": vol["volume"], "pvc": vol["pvc"],
                    "pvcUid": vol["pvcUid"], "identity": vol["identity"],
                }),
            )
        })
        .collect();
    serde_json::json!({"backup": record["backup"], "phase": record["phase"], "volumes": volumes})
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
    let h =
        Harness::start("catalog-rebuild", include_str!("../fixtures/backup-flow.yaml"), &["node-1", "node-2"]).await?;
    let nats = h.nats.url();
    h.coracle(&["setup", "nats", "--nats", &nats])?;
    write_file(&h.pv_data_dir(WEB_PV)?.join("index.html"), b"<h1>shop</h1>\n")?;
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

    // NATS state lost.
    let js = h.js().await?;
    js.delete_key_value(coracle_events::subjects::KV_BACKUPS).await?;
    assert!(h.coracle(&["backup", "describe", "nightly", "--nats", &nats]).is_err(), "the record is gone");

    let out = h.coracle(&["catalog", "rebuild", "--nats", &nats])?;
    assert!(out.contains("1 record(s) rebuilt"), "{out}");
    let after = h.describe("nightly")?;
    assert_eq!(durable(&after), durable(&before), "{after:#}\nvs\n{before:#}");
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
