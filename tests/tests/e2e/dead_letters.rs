//! Dead letters through the real `coracle` binary, a real nats-server and the simulated API server:
//! whatever arrives on `coracle.backup.requested` that plan-backup cannot handle is parked on
//! `coracle.dlq.plan-backup` with the reason and the original payload, and a valid request behind
//! the bad ones is still planned. record-result retries a result whose record is missing, then
//! dead-letters it once deliveries run out.

use anyhow::{bail, Context as _};
use coracle_events::publish::Publisher;
use coracle_events::{
    subjects, BackupCompleted, BackupPhase, BackupPlanned, BackupRef, BackupRequest, BackupStats, CloudEvent,
    DeadLetter, EventData, PlannedVolume, VolumeBackupCompleted, VolumeSource, MAX_DLQ_PAYLOAD,
};
use coracle_tests::binaries::workspace_bin;
use coracle_tests::harness::{messages, ApiAndNats};
use coracle_tests::nats::NatsServer;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const OBJECTS: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: coracle-system}
---
apiVersion: v1
kind: Namespace
metadata: {name: quiet}
";

/// Runs `coracle fn FUNCTION --nats URL --drain` to completion (killed by pid after `limit`).
fn drain(nats: &NatsServer, kubeconfig: &Path, function: &str, limit: Duration) -> anyhow::Result<Output> {
    let child = Command::new(workspace_bin("coracle")?)
        .args(["fn", function, "--nats", &nats.url(), "--drain"])
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting coracle")?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => Ok(out?),
        Err(_) => {
            coracle_tests::process::signal(pid, libc::SIGKILL);
            let _ = rx.recv_timeout(Duration::from_secs(10));
            bail!("coracle fn {function} --drain did not finish within {limit:?} and was killed")
        }
    }
}

fn envelope(id: &str, ty: &str, data: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "specversion": "1.0",
        "id": id,
        "source": "/tests/dead-letters",
        "type": ty,
        "datacontenttype": "application/json",
        "data": data,
    }))
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_backup_dead_letters_what_it_cannot_handle_and_still_plans_the_valid_request() -> anyhow::Result<()> {
    let ApiAndNats { nats, sim, tmp: _tmp, kubeconfig, js } = ApiAndNats::start("dead-letters", OBJECTS).await?;
    let publisher = Publisher::new(js.clone());

    let garbage = b"\xff\xfe\x00 garbage \x01\x02 not an event".to_vec();
    let not_an_event = serde_json::to_vec(&json!({"name": "nightly", "includedNamespaces": ["quiet"]}))?;
    let v9 = envelope("req-v9", "dev.coracle.backup.requested.v9", json!({"name": "from-the-future"}));
    let bad_name = envelope("req-bad-name", BackupRequest::TYPE, json!({"name": "Not_A_Name"}));
    let huge = envelope("req-huge", BackupRequest::TYPE, json!("x".repeat(900 * 1024)));
    let valid = CloudEvent::new(
        "req-valid",
        "/tests/dead-letters",
        Some("after-the-garbage".into()),
        BackupRequest {
            name: "after-the-garbage".into(),
            included_namespaces: vec!["quiet".into()],
            ..Default::default()
        },
    )
    .to_json();
    let mut sequences = BTreeMap::new();
    for (what, payload) in [
        ("garbage", &garbage),
        ("not-an-event", &not_an_event),
        ("v9", &v9),
        ("bad-name", &bad_name),
        ("huge", &huge),
        ("valid", &valid),
    ] {
        let published =
            publisher.publish_raw(subjects::BACKUP_REQUESTED, &format!("msg-{what}"), payload.clone()).await?;
        assert!(!published.duplicate, "{what}");
        sequences.insert(published.sequence, what);
    }
    assert!(huge.len() > 900 * 1024);

    let out = drain(&nats, &kubeconfig, "plan-backup", Duration::from_secs(90))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "plan-backup --drain failed: {stderr}");
    assert!(stderr.contains("plan-backup: handled 1, retried 0, dead-lettered 5"), "{stderr}");

    // Exactly five dead letters, one per bad message, each saying what was wrong.
    let raw = messages(&js, &subjects::dlq("plan-backup")).await?;
    assert_eq!(
        raw.len(),
        5,
        "{:?}",
        raw.iter().map(|r| String::from_utf8_lossy(&r[..r.len().min(300)])).collect::<Vec<_>>()
    );
    let mut by_what = BTreeMap::new();
    for bytes in &raw {
        assert!(
            bytes.len() < MAX_DLQ_PAYLOAD + 16 * 1024,
            "a dead letter stays small ({} bytes): {}",
            bytes.len(),
            String::from_utf8_lossy(&bytes[..bytes.len().min(400)])
        );
        let dead = coracle_events::envelope::decode::<DeadLetter>(bytes)?;
        assert_eq!(dead.source, "/coracle/functions/plan-backup");
        assert_eq!(dead.subject.as_deref(), Some(subjects::BACKUP_REQUESTED));
        let d = dead.data;
        assert_eq!(d.function, "plan-backup");
        assert_eq!(d.subject, subjects::BACKUP_REQUESTED);
        assert_eq!(d.deliveries, 1, "permanent errors are not retried: {}", d.reason);
        let seq = d.stream_sequence.context("stream sequence")?;
        let what = *sequences.get(&seq).with_context(|| format!("dead letter for unknown sequence {seq}"))?;
        assert!(by_what.insert(what, d).is_none(), "two dead letters for {what}");
    }
    assert!(!by_what.contains_key("valid"), "the valid request was not dead-lettered");

    let reason = |what: &str| by_what[what].reason.clone();
    assert!(reason("garbage").starts_with("not a structured CloudEvent:"), "{}", reason("garbage"));
    assert_eq!(by_what["garbage"].payload, json!(String::from_utf8_lossy(&garbage)), "non-JSON kept as a string");

    assert!(reason("not-an-event").contains("specversion"), "{}", reason("not-an-event"));
    assert_eq!(by_what["not-an-event"].payload, serde_json::from_slice::<Value>(&not_an_event)?);

    let r = reason("v9");
    assert!(r.contains("unsupported version") && r.contains("dev.coracle.backup.requested.v9"), "{r}");
    assert!(r.contains(BackupRequest::TYPE), "names the version this build understands: {r}");
    assert_eq!(by_what["v9"].payload, serde_json::from_slice::<Value>(&v9)?);

    let r = reason("bad-name");
    assert!(r.contains("name") && r.contains("Not_A_Name") && r.contains("not a valid Kubernetes name"), "{r}");
    assert_eq!(by_what["bad-name"].payload["data"]["name"], "Not_A_Name");
    assert!(!by_what["bad-name"].truncated);

    let h = &by_what["huge"];
    assert!(h.truncated, "the huge payload is truncated");
    let kept = h.payload.as_str().context("a truncated payload is kept as a string")?;
    assert_eq!(kept.len(), MAX_DLQ_PAYLOAD);
    assert!(huge.starts_with(kept.as_bytes()), "the start of the original is kept");
    assert!(h.reason.contains(BackupRequest::TYPE) && h.reason.contains("invalid"), "{}", h.reason);
    assert!(h.reason.len() < 8 * 1024, "the reason does not carry the payload ({} bytes)", h.reason.len());

    // The valid request behind them was planned and, with no pods in its namespace, completed at once.
    let planned = messages(&js, subjects::BACKUP_PLANNED).await?;
    assert_eq!(planned.len(), 1);
    let planned = coracle_events::envelope::decode::<BackupPlanned>(&planned[0])?;
    assert_eq!(planned.data.backup.name, "after-the-garbage");
    assert!(planned.data.volumes.is_empty() && planned.data.jobs.is_empty());
    let completed = messages(&js, subjects::BACKUP_COMPLETED).await?;
    assert_eq!(completed.len(), 1);
    let completed = coracle_events::envelope::decode::<BackupCompleted>(&completed[0])?;
    assert_eq!(completed.data.backup, planned.data.backup);
    assert_eq!(completed.data.phase, BackupPhase::Completed);
    assert_eq!((completed.data.volumes, completed.data.volumes_completed, completed.data.volumes_failed), (0, 0, 0));
    assert!(sim.store().list_as::<k8s_openapi::api::batch::v1::Job>(None)?.is_empty(), "no Job for an empty plan");

    // Everything was acked or terminated: a second drain finds nothing.
    let out = drain(&nats, &kubeconfig, "plan-backup", Duration::from_secs(60))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("handled 0, retried 0, dead-lettered 0"), "{stderr}");
    assert_eq!(messages(&js, &subjects::dlq("plan-backup")).await?.len(), 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_result_retries_a_result_without_a_record_then_dead_letters_it() -> anyhow::Result<()> {
    let ApiAndNats { nats, sim: _sim, tmp: _tmp, kubeconfig, js } =
        ApiAndNats::start("dead-letters-record", OBJECTS).await?;

    let backup = BackupRef { name: "never-planned".into(), uid: "0f8fad5b-d9cb-469f-a165-70867728950e".into() };
    let result = VolumeBackupCompleted {
        backup: backup.clone(),
        volume: PlannedVolume {
            namespace: "quiet".into(),
            pod: "db-0".into(),
            pod_uid: "3e9f6a52-5555-4555-8555-0000000000aa".into(),
            volume: "data".into(),
            node: "node-1".into(),
            source: VolumeSource::EmptyDir,
            pvc: None,
            pvc_uid: None,
            pv: None,
            dir: "data".into(),
            identity: "StatefulSet/db/data".into(),
        },
        snapshot_id: "4f1c0b9e".into(),
        parent_snapshot: None,
        stats: BackupStats::default(),
        warnings: vec![],
        attempt: 0,
    };
    let event = CloudEvent::new(
        "0f8fad5b-d9cb-469f-a165-70867728950e.quiet.db-0.data.completed",
        "/coracle/jobs/coracle-backup-test",
        Some(backup.name.clone()),
        result,
    );
    let published = Publisher::new(js.clone()).publish(&event).await?;

    // Defaults: 5 deliveries, naks after 1s, 2s, 4s and 8s.
    let started = Instant::now();
    let out = drain(&nats, &kubeconfig, "record-result", Duration::from_secs(90))?;
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "record-result --drain failed: {stderr}");
    assert!(stderr.contains("record-result: handled 0, retried 4, dead-lettered 1"), "{stderr}");
    assert!(took >= Duration::from_secs(15), "the nak delays add up to 15s, took {took:?}");

    let raw = messages(&js, &subjects::dlq("record-result")).await?;
    assert_eq!(raw.len(), 1);
    let dead = coracle_events::envelope::decode::<DeadLetter>(&raw[0])?;
    assert_eq!(dead.data.reason, "gave up after 5 deliveries: no record for backup never-planned yet");
    assert_eq!(dead.data.deliveries, 5);
    assert_eq!(dead.data.function, "record-result");
    assert_eq!(dead.data.subject, VolumeBackupCompleted::SUBJECT);
    assert_eq!(dead.data.stream_sequence, Some(published.sequence));
    assert_eq!(dead.data.payload, serde_json::to_value(&event)?, "the original result, whole");
    assert!(messages(&js, subjects::BACKUP_COMPLETED).await?.is_empty());
    Ok(())
}
