//! record-result's batch path against a real nats-server: the results one fetch returns are
//! merged into their backup records with one compare-and-set per backup. Duplicates (same id,
//! or re-published under a new id), reordered and interleaved results must count once; a
//! malformed event in the middle is dead-lettered with the same reason as on its own while the
//! rest are recorded; a missing record or another uid fails only its own messages; concurrent
//! writers (another drain, another writer of the record) lose nothing.

use anyhow::{bail, ensure, Context as _};
use coracle_events::consume::HandleError;
use coracle_events::publish::Publisher;
use coracle_events::subjects::{self, BACKUP_COMPLETED, DLQ_PREFIX, KV_BACKUPS};
use coracle_events::{
    function_source, BackupCompleted, BackupPhase, BackupPlanned, BackupRef, BackupRequest, BackupStats, CloudEvent,
    DeadLetter, PlannedVolume, VolumeBackupCompleted, VolumeBackupFailed, VolumeSource,
};
use coracle_functions::context::{Context, Nats};
use coracle_functions::handlers::record_result;
use coracle_functions::kv_json::JsonKv;
use coracle_functions::record::{BackupRecord, RecordPhase, VolumeStatus};
use coracle_tests::binaries::workspace_bin;
use coracle_tests::harness::messages;
use coracle_tests::nats::NatsServer;
use serde_json::json;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Longest a draining run may take before it is killed and the test fails.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

fn backup(name: &str) -> BackupRef {
    BackupRef { name: name.into(), uid: format!("uid-{name}") }
}

fn volume(b: &str, i: usize) -> PlannedVolume {
    let pvc_uid = format!("{b}-pvc-{i}");
    PlannedVolume {
        namespace: "team".into(),
        pod: format!("{b}-db-{i}"),
        pod_uid: format!("5c1d2e3f-0000-4000-8000-{i:012x}"),
        volume: "data".into(),
        node: format!("node-{}", i % 3),
        source: VolumeSource::Pvc,
        pvc: Some(format!("data-{b}-{i}")),
        pvc_uid: Some(pvc_uid.clone()),
        pv: Some(format!("pvc-{pvc_uid}")),
        dir: format!("pvc-{pvc_uid}"),
        identity: format!("pvc/{pvc_uid}"),
    }
}

fn snapshot(b: &str, i: usize) -> String {
    format!("snap-{b}-{i}")
}

fn completed(b: &str, i: usize, attempt: u32) -> VolumeBackupCompleted {
    VolumeBackupCompleted {
        backup: backup(b),
        volume: volume(b, i),
        snapshot_id: snapshot(b, i),
        parent_snapshot: None,
        stats: BackupStats { bytes_added: 100 + i as u64, total_bytes: 1000, ..Default::default() },
        warnings: Vec::new(),
        attempt,
    }
}

fn failed(b: &str, i: usize, attempt: u32, is_final: bool) -> VolumeBackupFailed {
    VolumeBackupFailed {
        backup: backup(b),
        volume: volume(b, i),
        reason: format!("restic failed on attempt {attempt}"),
        attempt,
        is_final,
    }
}

fn payload<T: coracle_events::EventData>(id: &str, subject: &str, data: T) -> Vec<u8> {
    let event = CloudEvent::new(id, function_source("tests"), Some(subject.to_string()), data);
    serde_json::to_vec(&event).expect("events serialise")
}

/// A running nats-server with the stream and buckets, and the backup records as plan-backup writes them.
struct Setup {
    nats: NatsServer,
    js: async_nats::jetstream::Context,
    records: JsonKv<BackupRecord>,
    publisher: Publisher,
}

impl Setup {
    async fn start() -> anyhow::Result<Setup> {
        let nats = NatsServer::start()?;
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
        coracle_events::bootstrap::ensure(&js).await?;
        let records = JsonKv::open(&js, KV_BACKUPS, "").await?;
        Ok(Setup { publisher: Publisher::new(js.clone()), nats, js, records })
    }

    async fn plan(&self, name: &str, volumes: usize) -> anyhow::Result<()> {
        let planned = BackupPlanned {
            backup: backup(name),
            request: BackupRequest { name: name.into(), uid: Some(backup(name).uid), ..Default::default() },
            volumes: (0..volumes).map(|i| volume(name, i)).collect(),
            skipped: Vec::new(),
            jobs: vec![format!("coracle-backup-{name}")],
            expires: chrono::Utc::now() + chrono::Duration::days(30),
        };
        self.records.create(name, &BackupRecord::from_plan(&planned, chrono::Utc::now())).await?;
        Ok(())
    }

    /// Publishes raw bytes with `id` as the message id; returns the stream sequence.
    async fn publish(&self, subject: &str, id: &str, bytes: Vec<u8>) -> anyhow::Result<u64> {
        Ok(self.publisher.publish_raw(subject, id, bytes).await?.sequence)
    }

    async fn completed(&self, id: &str, b: &str, i: usize, attempt: u32) -> anyhow::Result<u64> {
        self.publish(subjects::VOLUME_BACKUP_COMPLETED, id, payload(id, b, completed(b, i, attempt))).await
    }

    async fn failed(&self, id: &str, b: &str, i: usize, attempt: u32, is_final: bool) -> anyhow::Result<u64> {
        self.publish(subjects::VOLUME_BACKUP_FAILED, id, payload(id, b, failed(b, i, attempt, is_final))).await
    }

    async fn record(&self, name: &str) -> anyhow::Result<BackupRecord> {
        Ok(self.records.get(name).await?.context("record missing")?.0)
    }

    async fn completions(&self) -> anyhow::Result<Vec<BackupCompleted>> {
        messages(&self.js, BACKUP_COMPLETED)
            .await?
            .iter()
            .map(|m| Ok(coracle_events::envelope::decode::<BackupCompleted>(m)?.data))
            .collect()
    }

    async fn dead_letters(&self) -> anyhow::Result<Vec<DeadLetter>> {
        messages(&self.js, &format!("{DLQ_PREFIX}.>"))
            .await?
            .iter()
            .map(|m| Ok(coracle_events::envelope::decode::<DeadLetter>(m)?.data))
            .collect()
    }

    /// `coracle fn record-result --nats URL --drain` as its own process.
    fn drain(&self) -> anyhow::Result<std::process::Child> {
        Command::new(workspace_bin("coracle")?)
            .args(["fn", "record-result", "--nats", &self.nats.url(), "--drain"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting coracle fn record-result")
    }

    async fn context(&self) -> anyhow::Result<Context> {
        Ok(Context::new(None, Some(Nats::connect(&self.nats.url()).await?), "coracle-system"))
    }
}

/// Waits for a drain started by `Setup::drain`, killing it by pid after `DRAIN_LIMIT`.
fn finish(child: std::process::Child) -> anyhow::Result<Output> {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DRAIN_LIMIT) {
        Ok(out) => {
            let out = out?;
            ensure!(out.status.success(), "record-result failed: {}", String::from_utf8_lossy(&out.stderr));
            Ok(out)
        }
        Err(_) => {
            coracle_tests::process::signal(pid, libc::SIGKILL);
            let _ = rx.recv_timeout(Duration::from_secs(10));
            bail!("record-result --drain did not finish within {DRAIN_LIMIT:?} and was killed")
        }
    }
}

/// `record-result: handled H, retried R, dead-lettered D` from the drain's stderr.
fn stats(out: &Output) -> anyhow::Result<(u64, u64, u64)> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().find(|l| l.starts_with("record-result: handled")).context("no stats line")?;
    let n: Vec<u64> =
        line.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect();
    match n[..] {
        [h, r, d] => Ok((h, r, d)),
        _ => bail!("unexpected stats line {line:?}"),
    }
}

fn completion_of<'a>(all: &'a [BackupCompleted], name: &str) -> Vec<&'a BackupCompleted> {
    all.iter().filter(|c| c.backup.name == name).collect()
}

/// One fetch holding two interleaved backups' results, reordered, with duplicates under the
/// same and under new ids, a retried failure, and two malformed events in the middle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_batch_counts_each_volume_once_and_dead_letters_only_the_malformed() -> anyhow::Result<()> {
    let s = Setup::start().await?;
    s.plan("alpha", 4).await?;
    s.plan("beta", 3).await?;
    s.completed("a2", "alpha", 2, 0).await?;
    s.completed("b0", "beta", 0, 0).await?;
    s.failed("a1-try0", "alpha", 1, 0, false).await?;
    let garbage = b"{\"specversion\": \"1.0\", \"id\": ".to_vec();
    let garbage_seq = s.publish(subjects::VOLUME_BACKUP_COMPLETED, "garbage", garbage.clone()).await?;
    s.completed("a0", "alpha", 0, 0).await?;
    // The Job's index ran again and re-published under a new id: must not count twice.
    s.completed("a2-again", "alpha", 2, 1).await?;
    s.completed("b0-again", "beta", 0, 1).await?;
    let mut future =
        serde_json::to_value(CloudEvent::new("future", function_source("tests"), None, completed("alpha", 3, 0)))?;
    future["type"] = json!("dev.coracle.volume.backup.completed.v9");
    let future = serde_json::to_vec(&future)?;
    let future_seq = s.publish(subjects::VOLUME_BACKUP_COMPLETED, "future", future.clone()).await?;
    s.failed("b2-final", "beta", 2, 2, true).await?;
    s.completed("a1", "alpha", 1, 1).await?;
    // Same id again: dropped by the stream's duplicate window, not even delivered.
    s.completed("a1", "alpha", 1, 1).await?;
    s.completed("b1", "beta", 1, 0).await?;
    // A failure of an attempt that is older than the success, arriving late: ignored.
    s.failed("a1-late", "alpha", 1, 0, true).await?;
    s.completed("a3", "alpha", 3, 0).await?;

    let out = finish(s.drain()?)?;
    assert_eq!(stats(&out)?, (11, 0, 2), "13 delivered: 11 handled, none retried, the 2 malformed dead-lettered");

    let alpha = s.record("alpha").await?;
    assert_eq!(alpha.phase, RecordPhase::Completed);
    for i in 0..4 {
        let v = &alpha.volumes[&volume("alpha", i).key()];
        assert_eq!(v.status, VolumeStatus::Completed, "alpha volume {i}");
        assert_eq!(v.snapshot_id.as_deref(), Some(snapshot("alpha", i).as_str()));
    }
    assert_eq!(alpha.volumes[&volume("alpha", 1).key()].failed_attempts, 1, "the retried attempt is remembered");
    let beta = s.record("beta").await?;
    assert_eq!(beta.phase, RecordPhase::PartiallyFailed);
    assert_eq!(beta.volumes[&volume("beta", 2).key()].status, VolumeStatus::Failed);
    assert!(alpha.completion_published && beta.completion_published);

    let completions = s.completions().await?;
    assert_eq!(completions.len(), 2, "one completion per backup: {completions:?}");
    let a = completion_of(&completions, "alpha")[0];
    assert_eq!((a.phase, a.volumes, a.volumes_completed, a.volumes_failed), (BackupPhase::Completed, 4, 4, 0));
    assert_eq!(a.bytes_added, 100 + 101 + 102 + 103, "each volume's bytes counted once");
    let b = completion_of(&completions, "beta")[0];
    assert_eq!((b.phase, b.volumes_completed, b.volumes_failed), (BackupPhase::PartiallyFailed, 2, 1));
    assert_eq!(b.failures.len(), 1);
    assert_eq!(b.failures[0].reason, "restic failed on attempt 2");

    // The same reasons the one-message path gives, with the original payloads.
    let dead = s.dead_letters().await?;
    assert_eq!(dead.len(), 2, "{dead:?}");
    let reason_alone = |bytes: &[u8]| match record_result::decode(bytes) {
        Err(e) => e.reason().to_string(),
        Ok(d) => panic!("decoded {d:?}"),
    };
    let g = dead.iter().find(|d| d.stream_sequence == Some(garbage_seq)).context("garbage not dead-lettered")?;
    assert_eq!(g.reason, reason_alone(&garbage));
    assert!(g.reason.contains("EOF"), "{}", g.reason);
    assert_eq!(g.payload, json!(String::from_utf8_lossy(&garbage)));
    let f = dead.iter().find(|d| d.stream_sequence == Some(future_seq)).context("v9 not dead-lettered")?;
    assert_eq!(f.reason, reason_alone(&future));
    assert!(f.reason.contains("v9"), "{}", f.reason);
    assert_eq!(f.function, "record-result");

    // Everything redelivered (as after a crash before the acks) changes nothing.
    let ctx = s.context().await?;
    let again = [payload("x1", "alpha", completed("alpha", 0, 3)), payload("x2", "beta", completed("beta", 1, 3))];
    let outcomes = record_result::handle_batch(&ctx, &again.iter().map(Vec::as_slice).collect::<Vec<_>>()).await;
    assert_eq!(outcomes, vec![Ok(()), Ok(())]);
    assert_eq!(s.record("alpha").await?, alpha);
    assert_eq!(s.completions().await?.len(), 2, "no second completion");
    Ok(())
}

/// The outcome of each message in a batch is its own: a result whose record does not exist yet
/// is retried, one for an older backup of the same name is refused, the rest are recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_in_a_batch_gets_its_own_outcome() -> anyhow::Result<()> {
    let s = Setup::start().await?;
    s.plan("gamma", 2).await?;
    let ctx = s.context().await?;
    let mut stale = completed("gamma", 1, 0);
    stale.backup.uid = "uid-of-an-older-gamma".into();
    let batch = [
        payload("g0", "gamma", completed("gamma", 0, 0)),
        payload("orphan", "delta", completed("delta", 0, 0)),
        payload("stale", "gamma", stale),
        b"not json".to_vec(),
        payload("g1", "gamma", completed("gamma", 1, 0)),
    ];
    let outcomes = record_result::handle_batch(&ctx, &batch.iter().map(Vec::as_slice).collect::<Vec<_>>()).await;
    assert_eq!(outcomes.len(), 5);
    assert_eq!(outcomes[0], Ok(()));
    assert_eq!(outcomes[1], Err(HandleError::retryable("no record for backup delta yet")));
    assert_eq!(
        outcomes[2],
        Err(HandleError::permanent(
            "result for backup gamma uid uid-of-an-older-gamma but the record has uid uid-gamma"
        ))
    );
    assert!(matches!(&outcomes[3], Err(HandleError::Permanent(r)) if r.contains("expected ident")), "{outcomes:?}");
    assert_eq!(outcomes[4], Ok(()));
    // The same messages one at a time give the same outcomes (the stale one changes nothing).
    for (i, p) in batch.iter().enumerate() {
        assert_eq!(record_result::handle(&ctx, p).await, outcomes[i], "message {i} alone");
    }
    let gamma = s.record("gamma").await?;
    assert_eq!(gamma.phase, RecordPhase::Completed);
    assert_eq!(s.completions().await?.len(), 1);
    Ok(())
}

/// Another writer changes the same records while batches are applied: compare-and-set re-applies
/// the batch on the fresh record, so neither the other writer's changes nor any result is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_writer_loses_nothing() -> anyhow::Result<()> {
    let s = Setup::start().await?;
    let names = ["one", "two"];
    let volumes = 60;
    for name in names {
        s.plan(name, volumes).await?;
    }
    let ctx = s.context().await?;
    let mut batches: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 6];
    for i in 0..volumes {
        for (n, name) in names.iter().enumerate() {
            batches[(i + n) % 6].push(payload(&format!("{name}-{i}"), name, completed(name, i, 0)));
        }
    }
    let writer = {
        let records = s.records.clone();
        tokio::spawn(async move {
            for n in 0..40 {
                for name in names {
                    records
                        .modify(name, |r| {
                            r.jobs.push(format!("other-writer-{n}"));
                            true
                        })
                        .await?;
                }
            }
            anyhow::Ok(())
        })
    };
    let ctx = &ctx;
    let applied = futures::future::join_all(batches.iter().map(|batch| async move {
        record_result::handle_batch(ctx, &batch.iter().map(Vec::as_slice).collect::<Vec<_>>()).await
    }))
    .await;
    writer.await??;
    for outcome in applied.into_iter().flatten() {
        assert_eq!(outcome, Ok(()));
    }
    for name in names {
        let r = s.record(name).await?;
        assert_eq!(r.phase, RecordPhase::Completed, "{name}");
        assert!(r.volumes.values().all(|v| v.status == VolumeStatus::Completed), "{name}");
        assert_eq!(r.jobs.len(), 41, "{name}: the other writer's changes survive");
    }
    let completions = s.completions().await?;
    assert_eq!(completions.len(), 2, "{completions:?}");
    assert!(completions.iter().all(|c| c.volumes_completed == volumes as u32));
    Ok(())
}

/// Two `--drain` processes share the durable consumer and write the same records at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_drains_at_once_count_every_result_once() -> anyhow::Result<()> {
    let s = Setup::start().await?;
    let (backups, volumes) = (6, 400);
    let names: Vec<String> = (0..backups).map(|b| format!("wide-{b}")).collect();
    for name in &names {
        s.plan(name, volumes).await?;
    }
    // More than one fetch's worth, so both processes get batches for every record; every tenth
    // result also re-published under a new id.
    let js = &s.js;
    let mut acks = Vec::new();
    for i in 0..volumes {
        for name in &names {
            let mut ids = vec![(format!("{name}-{i}"), 0)];
            if i % 10 == 0 {
                ids.push((format!("{name}-{i}-again"), 1));
            }
            for (id, attempt) in ids {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", id.as_str());
                let bytes = payload(&id, name, completed(name, i, attempt));
                acks.push(js.publish_with_headers(subjects::VOLUME_BACKUP_COMPLETED, headers, bytes.into()).await?);
            }
        }
    }
    for ack in acks {
        ack.await?;
    }
    let (first, second) = (s.drain()?, s.drain()?);
    let (first, second) = (stats(&finish(first)?)?, stats(&finish(second)?)?);
    let total = backups * volumes + backups * volumes / 10;
    assert_eq!(first.0 + second.0, total as u64, "every message handled once: {first:?} {second:?}");
    assert_eq!((first.2, second.2), (0, 0), "nothing dead-lettered");
    for (b, name) in names.iter().enumerate() {
        let r = s.record(name).await?;
        assert_eq!(r.phase, RecordPhase::Completed, "{name}");
        for i in 0..volumes {
            let v = &r.volumes[&volume(name, i).key()];
            assert_eq!(v.snapshot_id.as_deref(), Some(snapshot(name, i).as_str()), "backup {b} volume {i}");
        }
    }
    let completions = s.completions().await?;
    assert_eq!(completions.len(), backups, "exactly one completion per backup");
    for name in &names {
        let c = completion_of(&completions, name);
        assert_eq!(c.len(), 1, "{name}");
        assert_eq!(c[0].volumes_completed, volumes as u32);
        assert_eq!(c[0].bytes_added, (0..volumes as u64).map(|i| 100 + i).sum::<u64>(), "{name}: counted once");
    }
    assert!(s.dead_letters().await?.is_empty());
    Ok(())
}

/// A fetch that completes several backups of one namespace stores all their parent hints (one
/// write of the namespace's document for the lot), and each backup is announced once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_completing_many_backups_stores_every_parent_hint() -> anyhow::Result<()> {
    let s = Setup::start().await?;
    let names = ["a", "b", "c", "d"];
    let volumes = 5;
    for name in names {
        s.plan(name, volumes).await?;
    }
    let full_id = |n: usize, i: usize| format!("{:060x}{n:02x}{i:02x}", 7);
    let mut batch = Vec::new();
    for (n, name) in names.iter().enumerate() {
        for i in 0..volumes {
            let mut done = completed(name, i, 0);
            done.snapshot_id = full_id(n, i);
            batch.push(payload(&format!("{name}-{i}"), name, done));
        }
    }
    let ctx = s.context().await?;
    let outcomes = record_result::handle_batch(&ctx, &batch.iter().map(Vec::as_slice).collect::<Vec<_>>()).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let hints: JsonKv<coracle_functions::parents::NamespaceParents> =
        JsonKv::open(&s.js, subjects::KV_PARENTS, "").await?;
    let (doc, _) = hints.get("team").await?.context("no hints for the namespace")?;
    for (n, name) in names.iter().enumerate() {
        for i in 0..volumes {
            let hint = doc.parents.get(&volume(name, i).identity).with_context(|| format!("{name}/{i} has no hint"))?;
            assert_eq!(hint.snapshot_id, full_id(n, i));
        }
    }
    let completions = s.completions().await?;
    for name in names {
        assert_eq!(completion_of(&completions, name).len(), 1, "{name}: {completions:?}");
        assert!(s.record(name).await?.completion_published, "{name}");
    }
    Ok(())
}

/// `modify_from` with a revision someone else has since written past re-reads and applies the
/// change to the newer document: neither write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_known_revision_falls_back_to_reading() -> anyhow::Result<()> {
    let s = Setup::start().await?;
    s.plan("stale", 1).await?;
    let known = s.records.get("stale").await?.context("record missing")?;
    s.records
        .modify("stale", |r| {
            r.jobs.push("other".into());
            true
        })
        .await?;
    let (stored, revision) = s
        .records
        .modify_from("stale", Some(known.clone()), |r| {
            r.jobs.push("mine".into());
            true
        })
        .await?
        .context("record missing")?;
    assert!(revision > known.1 + 1, "written after the other writer");
    assert!(stored.jobs.ends_with(&["other".to_string(), "mine".to_string()]), "{:?}", stored.jobs);
    assert_eq!(s.record("stale").await?.jobs, stored.jobs);
    Ok(())
}
