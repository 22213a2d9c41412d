//! The shared consume loop against a real nats-server (JetStream): retries with growing nak
//! delays, acks after success, dead letters on permanent errors and once deliveries run out,
//! and `drain` returning only when the consumer is idle.

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy};
use bytes::Bytes;
use coracle_events::consume::{self, ConsumeStats, ConsumerOptions, Delivery, HandleError};
use coracle_events::envelope::decode;
use coracle_events::publish::Publisher;
use coracle_events::{subjects, CloudEvent, DeadLetter, EventData};
use futures::StreamExt;
use serde_json::{json, Value};
use std::io::{BufRead as _, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upper bound for any one `consume::run` in these tests.
const RUN_LIMIT: Duration = Duration::from_secs(60);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `.tools/bin/nats-server`, installed by `scripts/install-tools.sh` when missing.
fn nats_server_binary() -> PathBuf {
    static INSTALL: Mutex<()> = Mutex::new(());
    let binary = workspace_root().join(".tools/bin/nats-server");
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if !binary.is_file() {
        let status = Command::new("bash")
            .arg("scripts/install-tools.sh")
            .current_dir(workspace_root())
            .status()
            .expect("running scripts/install-tools.sh");
        assert!(status.success() && binary.is_file(), "scripts/install-tools.sh did not install nats-server");
    }
    binary
}

/// A nats-server with JetStream on a free port and a temporary store, killed by pid when dropped.
struct Nats {
    child: Child,
    port: u16,
    _store: tempfile::TempDir,
}

impl Nats {
    fn start() -> Nats {
        let store = tempfile::Builder::new().prefix("coracle-events-nats-").tempdir().expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let child = Command::new(nats_server_binary())
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server");
        let mut nats = Nats { child, port, _store: store };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = nats.child.try_wait() {
                panic!("nats-server exited during startup: {status}");
            }
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) {
                stream.set_read_timeout(Some(Duration::from_secs(2))).ok();
                let mut line = String::new();
                if BufReader::new(stream).read_line(&mut line).is_ok() && line.contains("\"jetstream\":true") {
                    return nats;
                }
            }
            assert!(Instant::now() < deadline, "nats-server did not come up on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    async fn js(&self) -> jetstream::Context {
        let client = async_nats::connect(format!("nats://127.0.0.1:{}", self.port)).await.expect("connecting");
        jetstream::new(client)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        // SIGKILL to this child's pid, then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn options(function: &str, subject: &str) -> ConsumerOptions {
    let mut o = ConsumerOptions::new(function, &[subject]);
    o.drain = true;
    o.backoff = Duration::from_millis(200);
    o.max_backoff = Duration::from_secs(2);
    o.fetch_wait = Duration::from_millis(500);
    o
}

async fn publish(js: &jetstream::Context, subject: &str, id: &str, payload: &[u8]) -> u64 {
    Publisher::new(js.clone()).publish_raw(subject, id, payload.to_vec()).await.expect("publish").sequence
}

fn event_bytes(id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "specversion": "1.0", "id": id, "source": "/tests/consume", "type": "dev.coracle.test.happened.v1",
        "data": {"n": 1}
    }))
    .expect("json")
}

/// Every message stored on a subject, in order.
async fn messages(js: &jetstream::Context, subject: &str) -> Vec<Bytes> {
    let stream = js.get_stream(subjects::STREAM).await.expect("stream");
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: subject.to_string(),
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut out = Vec::new();
    loop {
        let mut batch =
            consumer.fetch().max_messages(1000).expires(Duration::from_millis(300)).messages().await.expect("fetch");
        let mut got = 0;
        while let Some(m) = batch.next().await {
            out.push(m.expect("message").payload.clone());
            got += 1;
        }
        if got == 0 {
            return out;
        }
    }
}

/// Runs the loop with a recording handler that answers delivery `n` (1-based, per message) with `answer(n)`.
async fn run_recording(
    js: &jetstream::Context,
    opts: &ConsumerOptions,
    answer: impl Fn(&Delivery) -> Result<(), HandleError>,
) -> (ConsumeStats, Vec<(Delivery, Instant)>) {
    let seen: Arc<Mutex<Vec<(Delivery, Instant)>>> = Arc::default();
    let answer = &answer;
    let run = consume::run(js, opts, |d: Delivery| {
        let seen = seen.clone();
        async move {
            seen.lock().expect("lock").push((d.clone(), Instant::now()));
            answer(&d)
        }
    });
    let stats = tokio::time::timeout(RUN_LIMIT, run).await.expect("a draining run ends").expect("run");
    let seen = seen.lock().expect("lock").clone();
    (stats, seen)
}

fn dead_letters(raw: &[Bytes]) -> Vec<CloudEvent<DeadLetter>> {
    raw.iter().map(|b| decode::<DeadLetter>(b).expect("a DeadLetter CloudEvent")).collect()
}

#[tokio::test]
async fn retryable_twice_then_ok_is_delivered_three_times_with_growing_delays_and_acked() {
    let nats = Nats::start();
    let js = nats.js().await;
    let opts = options("retry-then-ok", "coracle.test.work");
    coracle_events::bootstrap::ensure(&js).await.expect("bootstrap");
    let seq = publish(&js, "coracle.test.work", "work-1", &event_bytes("work-1")).await;
    // Not this consumer's subject: never delivered to it.
    publish(&js, "coracle.test.other", "other-1", &event_bytes("other-1")).await;

    let (stats, seen) = run_recording(&js, &opts, |d| {
        if d.deliveries < 3 {
            Err(HandleError::retryable("store unavailable"))
        } else {
            Ok(())
        }
    })
    .await;
    assert_eq!(stats, ConsumeStats { handled: 1, retried: 2, dead_lettered: 0 });
    let deliveries: Vec<(u64, u64, &str)> =
        seen.iter().map(|(d, _)| (d.deliveries, d.stream_sequence, d.subject.as_str())).collect();
    assert_eq!(
        deliveries,
        [(1, seq, "coracle.test.work"), (2, seq, "coracle.test.work"), (3, seq, "coracle.test.work")]
    );
    assert!(seen.iter().all(|(d, _)| d.payload.as_ref() == event_bytes("work-1").as_slice()));
    // The nak delay starts at `backoff` and doubles.
    let first_gap = seen[1].1 - seen[0].1;
    let second_gap = seen[2].1 - seen[1].1;
    assert!(first_gap >= Duration::from_millis(180), "first retry after {first_gap:?}, backoff 200ms");
    assert!(second_gap >= Duration::from_millis(380), "second retry after {second_gap:?}, backoff doubled to 400ms");

    // Acked: nothing pending, nothing redelivered to a second run, nothing dead-lettered.
    let mut consumer: jetstream::consumer::PullConsumer =
        js.get_stream(subjects::STREAM).await.expect("stream").get_consumer("retry-then-ok").await.expect("durable");
    let info = consumer.info().await.expect("info");
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
    let (again, seen_again) = run_recording(&js, &opts, |_| Ok(())).await;
    assert_eq!(again, ConsumeStats::default());
    assert!(seen_again.is_empty(), "an acked message is not redelivered");
    assert!(messages(&js, &subjects::dlq("retry-then-ok")).await.is_empty());
}

#[tokio::test]
async fn always_retryable_is_dead_lettered_after_max_deliver() {
    let nats = Nats::start();
    let js = nats.js().await;
    let mut opts = options("always-retry", "coracle.test.flaky");
    opts.max_deliver = 3;
    opts.backoff = Duration::from_millis(100);
    coracle_events::bootstrap::ensure(&js).await.expect("bootstrap");
    let payload = event_bytes("flaky-1");
    let seq = publish(&js, "coracle.test.flaky", "flaky-1", &payload).await;

    let (stats, seen) = run_recording(&js, &opts, |_| Err(HandleError::retryable("no record for backup x yet"))).await;
    assert_eq!(stats, ConsumeStats { handled: 0, retried: 2, dead_lettered: 1 });
    assert_eq!(seen.iter().map(|(d, _)| d.deliveries).collect::<Vec<_>>(), [1, 2, 3], "exactly max_deliver deliveries");

    let dlq = dead_letters(&messages(&js, "coracle.dlq.always-retry").await);
    assert_eq!(dlq.len(), 1);
    let dead = &dlq[0];
    assert_eq!(dead.ty, DeadLetter::TYPE);
    assert_eq!(dead.source, "/coracle/functions/always-retry");
    assert_eq!(dead.subject.as_deref(), Some("coracle.test.flaky"));
    assert_eq!(dead.data.reason, "gave up after 3 deliveries: no record for backup x yet");
    assert_eq!(dead.data.function, "always-retry");
    assert_eq!(dead.data.subject, "coracle.test.flaky");
    assert_eq!(dead.data.deliveries, 3);
    assert_eq!(dead.data.stream_sequence, Some(seq));
    assert_eq!(dead.data.payload, serde_json::from_slice::<Value>(&payload).expect("json"));
    assert!(!dead.data.truncated);

    // Terminated: not delivered again.
    let (again, seen_again) = run_recording(&js, &opts, |_| Ok(())).await;
    assert_eq!((again, seen_again.len()), (ConsumeStats::default(), 0));
}

#[tokio::test]
async fn permanent_errors_go_straight_to_the_dead_letter_subject() {
    let nats = Nats::start();
    let js = nats.js().await;
    let opts = options("strict", "coracle.test.input");
    coracle_events::bootstrap::ensure(&js).await.expect("bootstrap");
    let garbage = b"\xff\xfenot json at all".to_vec();
    let bad_seq = publish(&js, "coracle.test.input", "bad-1", &garbage).await;
    let good_seq = publish(&js, "coracle.test.input", "good-1", &event_bytes("good-1")).await;

    let (stats, seen) = run_recording(&js, &opts, |d| {
        if d.payload.starts_with(b"{") {
            Ok(())
        } else {
            Err(HandleError::permanent("not a structured CloudEvent: expected value at line 1 column 1"))
        }
    })
    .await;
    assert_eq!(stats, ConsumeStats { handled: 1, retried: 0, dead_lettered: 1 });
    let seen: Vec<(u64, u64)> = seen.iter().map(|(d, _)| (d.stream_sequence, d.deliveries)).collect();
    assert_eq!(seen, [(bad_seq, 1), (good_seq, 1)], "one delivery each, the bad one never retried");

    let dlq = dead_letters(&messages(&js, "coracle.dlq.strict").await);
    assert_eq!(dlq.len(), 1);
    let dead = &dlq[0].data;
    assert_eq!(dead.reason, "not a structured CloudEvent: expected value at line 1 column 1");
    assert_eq!((dead.deliveries, dead.stream_sequence), (1, Some(bad_seq)));
    assert_eq!(dead.payload, json!(String::from_utf8_lossy(&garbage)), "non-JSON is kept as a lossy string");
    assert!(dead.payload.as_str().is_some_and(|p| p.ends_with("not json at all")));
}

#[tokio::test]
async fn drain_returns_once_idle_and_only_then() {
    let nats = Nats::start();
    let js = nats.js().await;
    let mut opts = options("idle", "coracle.test.idle");

    // Nothing to do: a draining run sets everything up and returns.
    let started = Instant::now();
    let (stats, seen) = run_recording(&js, &opts, |_| Ok(())).await;
    assert_eq!((stats, seen.len()), (ConsumeStats::default(), 0));
    assert!(started.elapsed() < Duration::from_secs(10), "returned after {:?}", started.elapsed());
    js.get_stream(subjects::STREAM).await.expect("the run bootstrapped the stream");

    // A message that is still being retried keeps a draining run going until it is done.
    publish(&js, "coracle.test.idle", "idle-1", &event_bytes("idle-1")).await;
    opts.backoff = Duration::from_millis(1500);
    opts.fetch_wait = Duration::from_millis(200);
    let (stats, seen) =
        run_recording(&js, &opts, |d| if d.deliveries == 1 { Err(HandleError::retryable("later")) } else { Ok(()) })
            .await;
    assert_eq!(stats, ConsumeStats { handled: 1, retried: 1, dead_lettered: 0 }, "{seen:?}");

    // Without drain the loop keeps waiting for work.
    opts.drain = false;
    let forever = consume::run(&js, &opts, |_| async { Ok::<(), HandleError>(()) });
    assert!(tokio::time::timeout(Duration::from_secs(2), forever).await.is_err(), "a non-draining run keeps going");
}

#[test]
fn dead_letter_event_for_a_typed_event_keeps_it_whole() {
    // The dead letter's own shape, for a real Coracle event, without a server.
    let request = coracle_events::BackupRequest { name: "nightly".into(), ..Default::default() };
    let original = CloudEvent::new("req-1", "/tests", Some("nightly".into()), request);
    let delivery = Delivery {
        subject: subjects::BACKUP_REQUESTED.into(),
        payload: Bytes::from(original.to_json()),
        deliveries: 2,
        stream_sequence: 9,
    };
    let dead = consume::dead_letter_event("plan-backup", &delivery, "backup nightly already exists");
    assert_eq!(dead.ty, DeadLetter::TYPE);
    assert_eq!(dead.id, "dlq-plan-backup-9-2", "deterministic: a re-published dead letter is de-duplicated");
    let back: CloudEvent<coracle_events::BackupRequest> =
        serde_json::from_value(dead.data.payload.clone()).expect("the payload is the original event");
    assert_eq!(back.data, original.data);
    assert_eq!(back.id, "req-1");

    // Error messages can quote the whole input (serde does for a string where a struct belongs):
    // the reason is bounded too, on a character boundary, and says how long it was.
    let long_reason = format!("invalid type: string \"{}\"", "é".repeat(500_000));
    let dead = consume::dead_letter_event("plan-backup", &delivery, &long_reason);
    let kept = &dead.data.reason;
    assert!(kept.len() <= consume::MAX_DLQ_REASON + 64, "{} bytes", kept.len());
    assert!(kept.starts_with("invalid type: string \"éé"));
    assert!(kept.ends_with(&format!("… ({} bytes in all)", long_reason.len())), "{}", &kept[kept.len() - 40..]);
    let short = consume::dead_letter_event("plan-backup", &delivery, "short and clear");
    assert_eq!(short.data.reason, "short and clear", "short reasons are kept as they are");

    // Without a stream sequence (Lambda, HTTP) the id comes from the content: two different failures
    // get two ids (the stream would drop the second as a duplicate otherwise), a repeat gets the same.
    let lambda = |payload: &'static [u8]| Delivery {
        subject: "lambda.plan-backup".into(),
        payload: Bytes::from_static(payload),
        deliveries: 1,
        stream_sequence: 0,
    };
    let a = consume::dead_letter_event("plan-backup", &lambda(b"{\"a\":1}"), "bad");
    let b = consume::dead_letter_event("plan-backup", &lambda(b"{\"b\":2}"), "bad");
    let a_again = consume::dead_letter_event("plan-backup", &lambda(b"{\"a\":1}"), "bad");
    let a_other_reason = consume::dead_letter_event("plan-backup", &lambda(b"{\"a\":1}"), "worse");
    assert_ne!(a.id, b.id);
    assert_ne!(a.id, a_other_reason.id);
    assert_eq!(a.id, a_again.id);
    assert!(a.id.starts_with("dlq-plan-backup-"), "{}", a.id);
    assert_eq!(a.data.stream_sequence, None);
}
