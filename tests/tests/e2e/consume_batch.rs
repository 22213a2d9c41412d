//! `consume::run_batch` against a real nats-server: the handler gets what one fetch returned, in
//! stream order and at most `batch` at a time, and each message is then settled on its own
//! (acked, nakked and redelivered, or dead-lettered) exactly as `consume::run` does; a message
//! the handler gave no outcome for is retried, never dropped.

use anyhow::Context as _;
use coracle_events::consume::{self, ConsumerOptions, Delivery, HandleError};
use coracle_events::publish::Publisher;
use coracle_events::{subjects, DeadLetter};
use coracle_tests::harness::messages;
use coracle_tests::nats::NatsServer;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn options(function: &str, subject: &str) -> ConsumerOptions {
    let mut o = ConsumerOptions::new(function, &[subject]);
    o.drain = true;
    o.max_deliver = 2;
    o.backoff = Duration::from_millis(100);
    o.fetch_wait = Duration::from_millis(500);
    o.batch = 3;
    o
}

async fn start() -> anyhow::Result<(NatsServer, async_nats::jetstream::Context)> {
    let nats = NatsServer::start()?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    coracle_events::bootstrap::ensure(&js).await?;
    Ok((nats, js))
}

async fn dead_letters(js: &async_nats::jetstream::Context, function: &str) -> anyhow::Result<Vec<DeadLetter>> {
    messages(js, &subjects::dlq(function))
        .await?
        .iter()
        .map(|m| Ok(coracle_events::envelope::decode::<DeadLetter>(m)?.data))
        .collect()
}

/// What the handler saw in one call: each payload and its delivery count.
type Batch = Vec<(String, u64)>;

fn text(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.payload).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_of_a_batch_is_settled_on_its_own() -> anyhow::Result<()> {
    let (_nats, js) = start().await?;
    let subject = "coracle.test.batch";
    let publisher = Publisher::new(js.clone());
    for n in 0..5 {
        publisher.publish_raw(subject, &format!("m{n}"), format!("m{n}").into_bytes()).await?;
    }
    let calls: Arc<Mutex<Vec<Batch>>> = Arc::default();
    let opts = options("batcher", subject);
    let run = consume::run_batch(&js, &opts, |batch: Vec<Delivery>| {
        let calls = calls.clone();
        async move {
            let seen = batch.iter().map(|d| (text(d), d.deliveries)).collect();
            calls.lock().map(|mut c| c.push(seen)).ok();
            batch
                .iter()
                .map(|d| match text(d).as_str() {
                    "m1" => Err(HandleError::retryable("busy")),
                    "m2" => Err(HandleError::permanent("bad")),
                    _ => Ok(()),
                })
                .collect()
        }
    });
    let stats = tokio::time::timeout(Duration::from_secs(60), run).await.context("drain did not end")??;
    assert_eq!((stats.handled, stats.retried, stats.dead_lettered), (3, 1, 2));
    let calls = calls.lock().map(|c| c.clone()).unwrap_or_default();
    let first: Vec<&str> = calls[0].iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(first, ["m0", "m1", "m2"], "one fetch's worth, in stream order");
    let second: Vec<&str> = calls[1].iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(second, ["m3", "m4"]);
    let redelivered: Vec<(String, u64)> = calls[2..].iter().flatten().cloned().collect();
    assert_eq!(redelivered, vec![("m1".to_string(), 2)], "only the retried message comes back");
    let mut dead: Vec<(String, String, u64)> = dead_letters(&js, "batcher")
        .await?
        .into_iter()
        .map(|d| (d.payload.as_str().unwrap_or_default().to_string(), d.reason, d.deliveries))
        .collect();
    dead.sort();
    assert_eq!(
        dead,
        vec![
            ("m1".to_string(), "gave up after 2 deliveries: busy".to_string(), 2),
            ("m2".to_string(), "bad".to_string(), 1),
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_without_an_outcome_is_retried_not_dropped() -> anyhow::Result<()> {
    let (_nats, js) = start().await?;
    let subject = "coracle.test.forgotten";
    Publisher::new(js.clone()).publish_raw(subject, "lost?", b"lost?".to_vec()).await?;
    let deliveries: Arc<Mutex<Vec<u64>>> = Arc::default();
    let opts = options("forgetful", subject);
    let run = consume::run_batch(&js, &opts, |batch: Vec<Delivery>| {
        let deliveries = deliveries.clone();
        async move {
            deliveries.lock().map(|mut d| d.extend(batch.iter().map(|m| m.deliveries))).ok();
            Vec::new()
        }
    });
    let stats = tokio::time::timeout(Duration::from_secs(60), run).await.context("drain did not end")??;
    assert_eq!((stats.handled, stats.retried, stats.dead_lettered), (0, 1, 1));
    assert_eq!(deliveries.lock().map(|d| d.clone()).unwrap_or_default(), vec![1, 2]);
    let dead = dead_letters(&js, "forgetful").await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "gave up after 2 deliveries: the batch handler gave no outcome");
    Ok(())
}
