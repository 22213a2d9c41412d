//! B3 (issue 8), `cargo bench -p coracle-tests --bench end_to_end -- admission`: admission
//! handling time, p50/p99.
//!
//! - in process, pending restores in memory (the function's own cost);
//! - in process, read from a real NATS KV bucket on every review (two KV round trips: how
//!   `coracle serve` answered before it kept a watched copy);
//! - in process, the watched copy `coracle serve` uses (`WatchedPending`): entries answered from
//!   memory, and a pod with nothing cached (another namespace), which reads the bucket;
//! - over HTTPS on loopback with one keep-alive connection to the real server code
//!   (`coracle_functions::serve`), with the watched copy (production) and, side by side, with
//!   the bucket read on every review.
//!
//! Prints a table and writes `target/bench/admission.json` for the bench script to collect.

use crate::common::write_report;
use coracle_events::{BackupRef, PendingRestore, RestoreRef, RestoreTarget};
use coracle_functions::admission::HelperSettings;
use coracle_functions::handlers::admit::{review, MemoryPending, PendingStore, WatchedPending};
use coracle_functions::kv_json::JsonKv;
use coracle_functions::plan_restore::pending_key;
use coracle_functions::restore_state::PendingEntry;
use coracle_functions::settings::Settings;
use coracle_tests::binaries::scratch_dir;
use coracle_tests::nats::NatsServer;
use coracle_tests::tls::{client_config, test_ca_and_cert};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ITERATIONS: usize = 2_000;
const WARMUP: usize = 200;

fn entries() -> Vec<PendingEntry> {
    let pending = |target: RestoreTarget, snap: &str| {
        PendingEntry::new(PendingRestore {
            restore: RestoreRef { name: "shop-restore".into(), uid: "4f0c1d7e-2b8a-4c51-9e0f-6a7b8c9d0e1f".into() },
            backup: BackupRef { name: "nightly".into(), uid: "b".into() },
            target_namespace: "shop".into(),
            target,
            source_namespace: "shop".into(),
            source_pod: "web-old".into(),
            source_volume: "data".into(),
            snapshot_id: snap.into(),
            identity: "pvc/u".into(),
        })
    };
    vec![
        pending(RestoreTarget::Pvc { claim: "web-data".into() }, "s1"),
        pending(RestoreTarget::Workload { owner: "deployment/web".into(), volume: "cache".into() }, "s2"),
    ]
}

fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3;
    (at(0.50), at(0.99))
}

/// Times `ITERATIONS` reviews; `patched` says whether each must come back with the injection.
async fn time_reviews<S: PendingStore>(store: &S, body: &[u8], patched: bool) -> Vec<Duration> {
    let settings = HelperSettings::from(&Settings::default());
    for _ in 0..WARMUP {
        review(store, &settings, body).await;
    }
    let mut out = Vec::with_capacity(ITERATIONS);
    for _ in 0..ITERATIONS {
        let t = Instant::now();
        let resp = review(store, &settings, body).await;
        out.push(t.elapsed());
        assert_eq!(resp["response"]["patchType"] == "JSONPatch", patched, "{resp}");
        assert!(resp["response"].get("warnings").is_none(), "{resp}");
    }
    out
}

/// Reviews over HTTPS on one keep-alive connection to the real server code.
async fn time_https(app: axum::Router, body: &[u8]) -> anyhow::Result<(f64, f64)> {
    let dir = scratch_dir("bench-admission")?;
    let (ca, cert, key) = test_ca_and_cert(&["127.0.0.1"]);
    std::fs::write(dir.path().join("tls.crt"), &cert)?;
    std::fs::write(dir.path().join("tls.key"), &key)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let (crt, k) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let addr = format!("127.0.0.1:{port}");
    let server = tokio::spawn(async move { coracle_functions::serve::serve(&addr, &crt, &k, app).await });
    let tcp = loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(t) => break t,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    tcp.set_nodelay(true)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(ca.as_bytes())?));
    let tls = connector.connect(rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned(), tcp).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let mut samples = Vec::with_capacity(ITERATIONS);
    for i in 0..WARMUP + ITERATIONS {
        let req = hyper::Request::post("/admission/pods")
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_vec())))?;
        // The connection is reused: wait until the previous exchange has released it.
        sender.ready().await?;
        let t = Instant::now();
        let resp = sender.send_request(req).await?;
        let bytes = resp.into_body().collect().await?.to_bytes();
        if i >= WARMUP {
            samples.push(t.elapsed());
        }
        anyhow::ensure!(bytes.windows(9).any(|w| w == b"JSONPatch"), "unexpected answer");
    }
    server.abort();
    Ok(percentiles(samples))
}

#[tokio::main]
pub async fn run() -> anyhow::Result<()> {
    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../functions/tests/fixtures/admission/generate-name-pod.json"
    ))?;

    // The same pod in a namespace with nothing pending: what every other pod created in a
    // namespace labelled for restore costs.
    let mut elsewhere: serde_json::Value = serde_json::from_slice(&body)?;
    elsewhere["request"]["namespace"] = json!("elsewhere");
    elsewhere["request"]["object"]["metadata"]["namespace"] = json!("elsewhere");
    let elsewhere = serde_json::to_vec(&elsewhere)?;

    let memory = MemoryPending::default();
    if let Ok(mut map) = memory.0.lock() {
        for e in entries() {
            map.insert(pending_key("shop", &e.pending.target), e);
        }
    }
    let in_memory = percentiles(time_reviews(&memory, &body, true).await);

    let nats = NatsServer::start()?;
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client.clone());
    coracle_events::bootstrap::ensure(&js).await?;
    let kv: JsonKv<PendingEntry> = JsonKv::open(&js, coracle_events::subjects::KV_RESTORES, "pending.").await?;
    for e in entries() {
        kv.create(&pending_key("shop", &e.pending.target), &e).await?;
    }
    let in_kv = percentiles(time_reviews(&kv, &body, true).await);

    let watched = WatchedPending::start(client.clone(), js.clone(), kv.clone()).await.map_err(anyhow::Error::msg)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while watched.cached_keys().len() < entries().len() {
        anyhow::ensure!(Instant::now() < deadline, "the watch never delivered the pending entries");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let in_cache = percentiles(time_reviews(&watched, &body, true).await);
    let cache_miss = percentiles(time_reviews(&watched, &elsewhere, false).await);

    let settings = || HelperSettings::from(&Settings::default());
    let https_direct = time_https(coracle_functions::serve::router(kv.clone(), settings()), &body).await?;
    let https = time_https(coracle_functions::serve::router(watched, settings()), &body).await?;

    println!("admission review (generate-name pod, 2 pending volumes), {ITERATIONS} reviews each");
    println!("{:<52} {:>9} {:>9}", "", "p50 ms", "p99 ms");
    for (name, (p50, p99)) in [
        ("in process, entries in memory", in_memory),
        ("in process, NATS KV read per review (before)", in_kv),
        ("in process, watched copy (coracle serve)", in_cache),
        ("in process, watched copy, nothing cached -> KV read", cache_miss),
        ("HTTPS keep-alive, NATS KV read per review (before)", https_direct),
        ("HTTPS keep-alive, watched copy (coracle serve)", https),
    ] {
        println!("{name:<52} {p50:>9.3} {p99:>9.3}");
    }
    let report = json!({
        "iterations": ITERATIONS,
        "in_process_memory": {"p50_ms": in_memory.0, "p99_ms": in_memory.1},
        // Read from the bucket on every review (two round trips): how serve answered before.
        "in_process_kv": {"p50_ms": in_kv.0, "p99_ms": in_kv.1},
        // What `coracle serve` does: the watched copy of the bucket.
        "in_process_cache": {"p50_ms": in_cache.0, "p99_ms": in_cache.1},
        "in_process_cache_miss": {"p50_ms": cache_miss.0, "p99_ms": cache_miss.1},
        // Production path over HTTPS (the watched copy), and the per-review KV read side by side.
        "https_kv": {"p50_ms": https.0, "p99_ms": https.1},
        "https_kv_direct": {"p50_ms": https_direct.0, "p99_ms": https_direct.1},
    });
    write_report("admission", &report)?;
    Ok(())
}
