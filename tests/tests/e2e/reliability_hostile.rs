//! Hostile events beyond those of dead_letters.rs, on a real nats-server through the real
//! `coracle` binary: an event of another type on the subject, envelopes and data with required
//! fields missing, `data: null`, a payload just under NATS's maximum and one beyond it. Each one
//! that reaches the stream is dead-lettered once with a reason; the one beyond the maximum never
//! gets in (the publisher is told); the consumer keeps going and plans the valid request behind them.

use anyhow::Context as _;
use coracle_events::publish::Publisher;
use coracle_events::{subjects, BackupPlanned, BackupRequest, CloudEvent, DeadLetter, EventData, RestoreRequest};
use coracle_tests::binaries::workspace_bin;
use coracle_tests::harness::{messages, ApiAndNats};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::Command;

const OBJECTS: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: coracle-system}
---
apiVersion: v1
kind: Namespace
metadata: {name: quiet}
";

/// NATS's default max_payload.
const MAX_PAYLOAD: usize = 1024 * 1024;

fn envelope(fields: Value) -> Vec<u8> {
    let mut base = json!({"specversion": "1.0", "id": "x", "source": "/tests/hostile", "type": BackupRequest::TYPE,
        "datacontenttype": "application/json"});
    if let (Some(base), Some(fields)) = (base.as_object_mut(), fields.as_object()) {
        for (k, v) in fields {
            if v.is_null() && k != "data" {
                base.remove(k);
            } else {
                base.insert(k.clone(), v.clone());
            }
        }
    }
    serde_json::to_vec(&base).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_events_are_dead_lettered_with_a_reason_and_the_consumer_keeps_going() -> anyhow::Result<()> {
    let ApiAndNats { nats, sim: _sim, tmp: _tmp, kubeconfig, js } = ApiAndNats::start("rel-hostile", OBJECTS).await?;
    let publisher = Publisher::new(js.clone());

    let restore = RestoreRequest { name: "r".into(), backup: "b".into(), ..Default::default() };
    let wrong_type = CloudEvent::new("wrong-type", "/tests/hostile", None, restore).to_json();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("wrong-type", wrong_type),
        ("no-id", envelope(json!({"id": null, "data": {"name": "a"}}))),
        ("no-source", envelope(json!({"source": null, "data": {"name": "a"}}))),
        ("no-type", envelope(json!({"type": null, "data": {"name": "a"}}))),
        ("no-name", envelope(json!({"data": {"includedNamespaces": ["quiet"]}}))),
        ("null-data", envelope(json!({"data": null}))),
        ("wrong-field-type", envelope(json!({"data": {"name": "a", "includedNamespaces": "quiet"}}))),
        ("just-under-max", envelope(json!({"data": {"name": "big", "labelSelector": "x".repeat(MAX_PAYLOAD - 2048)}}))),
    ];
    let mut sequences = BTreeMap::new();
    for (what, payload) in &cases {
        let published =
            publisher.publish_raw(subjects::BACKUP_REQUESTED, &format!("msg-{what}"), payload.clone()).await?;
        sequences.insert(published.sequence, *what);
    }
    assert!(cases.last().is_some_and(|(_, p)| p.len() < MAX_PAYLOAD && p.len() > MAX_PAYLOAD - 4096));
    // Beyond the maximum: refused at publish, with an error the publisher sees; nothing stored.
    let beyond = envelope(json!({"data": {"name": "huge", "labelSelector": "x".repeat(MAX_PAYLOAD + 1024)}}));
    let refused = publisher.publish_raw(subjects::BACKUP_REQUESTED, "msg-beyond-max", beyond).await;
    let error = refused.err().context("a payload beyond max_payload was accepted")?;
    assert!(error.to_string().to_lowercase().contains("payload"), "{error}");
    let valid = CloudEvent::new(
        "req-valid",
        "/tests/hostile",
        Some("survivor".into()),
        BackupRequest { name: "survivor".into(), included_namespaces: vec!["quiet".into()], ..Default::default() },
    );
    publisher.publish(&valid).await?;

    let out = Command::new(workspace_bin("coracle")?)
        .args(["fn", "plan-backup", "--nats", &nats.url(), "--drain"])
        .env("KUBECONFIG", &kubeconfig)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("handled 1, retried 0, dead-lettered {}", cases.len())), "{stderr}");

    let mut reasons = BTreeMap::new();
    for m in messages(&js, &subjects::dlq("plan-backup")).await? {
        let d = coracle_events::envelope::decode::<DeadLetter>(&m)?.data;
        let what = sequences.get(&d.stream_sequence.context("sequence")?).context("an unknown sequence")?;
        assert_eq!(d.deliveries, 1, "{what}: not retried");
        assert!(reasons.insert(*what, d.reason.clone()).is_none(), "{what} dead-lettered twice");
        assert!(m.len() < 80 * 1024, "{what}: the dead letter stays small ({} bytes)", m.len());
    }
    assert_eq!(reasons.len(), cases.len(), "{reasons:#?}");
    let r = |what: &str| reasons[what].clone();
    assert!(r("wrong-type").contains(RestoreRequest::TYPE) && r("wrong-type").contains(BackupRequest::TYPE));
    for what in ["no-id", "no-source", "no-type"] {
        assert!(!r(what).is_empty() && r(what).len() < 8192, "{what}: {}", r(what));
    }
    assert!(r("no-name").contains("name"), "{}", r("no-name"));
    // serde's words (the field is not named: see RELIABILITY.md).
    assert!(r("wrong-field-type").contains("expected a sequence"), "{}", r("wrong-field-type"));
    assert!(r("just-under-max").len() <= 8192, "the reason does not carry the payload");
    let planned = messages(&js, subjects::BACKUP_PLANNED).await?;
    assert_eq!(planned.len(), 1);
    assert_eq!(coracle_events::envelope::decode::<BackupPlanned>(&planned[0])?.data.backup.name, "survivor");
    Ok(())
}
