//! The consume loop every NATS-driven function shares: a durable pull consumer, explicit ack
//! after success, nak with backoff on retryable errors, and a dead letter (with the reason and
//! the original payload) on permanent errors or once deliveries run out.

use crate::envelope::CloudEvent;
use crate::publish::Publisher;
use crate::subjects;
use crate::types::{function_source, DeadLetter, MAX_DLQ_PAYLOAD};
use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use std::future::Future;
use std::time::Duration;

/// How a handler failed: worth another delivery, or never going to work.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HandleError {
    #[error("retryable: {0}")]
    Retryable(String),
    #[error("permanent: {0}")]
    Permanent(String),
}

impl HandleError {
    pub fn retryable(e: impl std::fmt::Display) -> Self {
        HandleError::Retryable(e.to_string())
    }
    pub fn permanent(e: impl std::fmt::Display) -> Self {
        HandleError::Permanent(e.to_string())
    }
    pub fn reason(&self) -> &str {
        match self {
            HandleError::Retryable(r) | HandleError::Permanent(r) => r,
        }
    }
}

/// One message as a handler sees it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub subject: String,
    pub payload: Bytes,
    /// 1 on first delivery.
    pub deliveries: u64,
    pub stream_sequence: u64,
}

#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// Function name: the durable consumer's name and the dead-letter subject's last token.
    pub function: String,
    pub filter_subjects: Vec<String>,
    pub max_deliver: i64,
    pub ack_wait: Duration,
    /// First nak delay; doubles with each delivery up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Exit once the consumer has nothing pending or awaiting ack (KEDA / CronJob runs).
    pub drain: bool,
    /// How long one fetch waits for messages.
    pub fetch_wait: Duration,
    pub batch: usize,
}

impl ConsumerOptions {
    pub fn new(function: &str, filter_subjects: &[&str]) -> Self {
        ConsumerOptions {
            function: function.to_string(),
            filter_subjects: filter_subjects.iter().map(|s| s.to_string()).collect(),
            max_deliver: 5,
            ack_wait: Duration::from_secs(120),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            drain: false,
            fetch_wait: Duration::from_secs(2),
            batch: 64,
        }
    }

    fn nak_delay(&self, deliveries: u64) -> Duration {
        let factor = 1u32 << deliveries.saturating_sub(1).min(16);
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConsumeStats {
    pub handled: u64,
    pub retried: u64,
    pub dead_lettered: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("setting up consumer {function}: {reason}")]
    Setup { function: String, reason: String },
    #[error("consumer {function}: {reason}")]
    Fetch { function: String, reason: String },
}

/// Runs `handler` over the function's durable consumer until drained (or forever), one
/// message at a time: each is acked (or nakked, or dead-lettered) before the next is handled.
pub async fn run<H, Fut>(
    js: &jetstream::Context,
    opts: &ConsumerOptions,
    handler: H,
) -> Result<ConsumeStats, ConsumeError>
where
    H: Fn(Delivery) -> Fut,
    Fut: Future<Output = Result<(), HandleError>>,
{
    let consumer = durable_consumer(js, opts).await?;
    let publisher = Publisher::new(js.clone());
    let mut stats = ConsumeStats::default();
    loop {
        let mut batch = fetch(&consumer, opts).await?;
        let mut got = 0usize;
        while let Some(next) = batch.next().await {
            let msg = match next {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(function = %opts.function, error = %e, "fetch error");
                    break;
                }
            };
            got += 1;
            let delivery = delivery_of(&msg);
            let outcome = handler(delivery.clone()).await;
            settle(&publisher, opts, &mut stats, &msg, &delivery, outcome).await;
        }
        if got == 0 && opts.drain && idle(&consumer, opts).await? {
            return Ok(stats);
        }
    }
}

/// Like [`run`], but hands the handler every message one fetch returned (up to `opts.batch`),
/// in stream order, so it can merge work on the same record into one write. The handler
/// returns one outcome per delivery, in the same order; each message is then acked, nakked or
/// dead-lettered exactly as [`run`] would. A message the handler gave no outcome for is
/// retried, never dropped.
pub async fn run_batch<H, Fut>(
    js: &jetstream::Context,
    opts: &ConsumerOptions,
    handler: H,
) -> Result<ConsumeStats, ConsumeError>
where
    H: Fn(Vec<Delivery>) -> Fut,
    Fut: Future<Output = Vec<Result<(), HandleError>>>,
{
    let consumer = durable_consumer(js, opts).await?;
    let publisher = Publisher::new(js.clone());
    let mut stats = ConsumeStats::default();
    loop {
        let mut batch = fetch(&consumer, opts).await?;
        let mut msgs = Vec::with_capacity(opts.batch);
        while let Some(next) = batch.next().await {
            match next {
                Ok(m) => msgs.push(m),
                Err(e) => {
                    tracing::warn!(function = %opts.function, error = %e, "fetch error");
                    break;
                }
            }
        }
        if msgs.is_empty() {
            if opts.drain && idle(&consumer, opts).await? {
                return Ok(stats);
            }
            continue;
        }
        let deliveries: Vec<Delivery> = msgs.iter().map(delivery_of).collect();
        let mut outcomes = handler(deliveries.clone()).await.into_iter();
        for (msg, delivery) in msgs.iter().zip(&deliveries) {
            let outcome =
                outcomes.next().unwrap_or_else(|| Err(HandleError::retryable("the batch handler gave no outcome")));
            settle(&publisher, opts, &mut stats, msg, delivery, outcome).await;
        }
    }
}

/// Creates (or binds to) the function's durable pull consumer.
async fn durable_consumer(
    js: &jetstream::Context,
    opts: &ConsumerOptions,
) -> Result<jetstream::consumer::Consumer<pull::Config>, ConsumeError> {
    let setup = |reason: String| ConsumeError::Setup { function: opts.function.clone(), reason };
    crate::bootstrap::ensure(js).await.map_err(|e| setup(e.to_string()))?;
    let stream = js.get_stream(subjects::STREAM).await.map_err(|e| setup(e.to_string()))?;
    stream
        .create_consumer(pull::Config {
            durable_name: Some(opts.function.clone()),
            filter_subjects: opts.filter_subjects.clone(),
            ack_policy: AckPolicy::Explicit,
            max_deliver: opts.max_deliver,
            ack_wait: opts.ack_wait,
            ..Default::default()
        })
        .await
        .map_err(|e| setup(e.to_string()))
}

fn fetch_error(opts: &ConsumerOptions, e: impl std::fmt::Display) -> ConsumeError {
    ConsumeError::Fetch { function: opts.function.clone(), reason: e.to_string() }
}

/// One pull: what is available now, up to `opts.batch` messages.
async fn fetch(
    consumer: &jetstream::consumer::Consumer<pull::Config>,
    opts: &ConsumerOptions,
) -> Result<pull::Batch, ConsumeError> {
    consumer
        .fetch()
        .max_messages(opts.batch)
        .expires(opts.fetch_wait)
        .messages()
        .await
        .map_err(|e| fetch_error(opts, e))
}

/// True once the consumer has nothing pending and nothing awaiting an ack (`--drain` exits then).
async fn idle(
    consumer: &jetstream::consumer::Consumer<pull::Config>,
    opts: &ConsumerOptions,
) -> Result<bool, ConsumeError> {
    let mut consumer = consumer.clone();
    let info = consumer.info().await.map_err(|e| fetch_error(opts, e))?;
    Ok(info.num_pending == 0 && info.num_ack_pending == 0)
}

fn delivery_of(msg: &jetstream::Message) -> Delivery {
    let (deliveries, stream_sequence) = match msg.info() {
        Ok(i) => (i.delivered.max(1) as u64, i.stream_sequence),
        Err(_) => (1, 0),
    };
    Delivery { subject: msg.subject.to_string(), payload: msg.payload.clone(), deliveries, stream_sequence }
}

/// Acks a handled message, naks a retryable failure with backoff while deliveries remain, and
/// otherwise dead-letters it and terminates its delivery.
async fn settle(
    publisher: &Publisher,
    opts: &ConsumerOptions,
    stats: &mut ConsumeStats,
    msg: &jetstream::Message,
    delivery: &Delivery,
    outcome: Result<(), HandleError>,
) {
    let deliveries = delivery.deliveries;
    let ack = match outcome {
        Ok(()) => {
            stats.handled += 1;
            AckKind::Ack
        }
        Err(HandleError::Retryable(reason)) if (deliveries as i64) < opts.max_deliver => {
            tracing::warn!(function = %opts.function, subject = %delivery.subject, deliveries, %reason, "will retry");
            stats.retried += 1;
            AckKind::Nak(Some(opts.nak_delay(deliveries)))
        }
        Err(e) => {
            let reason = match &e {
                HandleError::Retryable(r) => format!("gave up after {deliveries} deliveries: {r}"),
                HandleError::Permanent(r) => r.clone(),
            };
            match dead_letter(publisher, &opts.function, delivery, &reason).await {
                Ok(()) => {
                    stats.dead_lettered += 1;
                    AckKind::Term
                }
                // Never drop a message we could not park: let it come back.
                Err(pe) => {
                    tracing::error!(function = %opts.function, error = %pe, "dead-lettering failed");
                    AckKind::Nak(Some(opts.nak_delay(deliveries)))
                }
            }
        }
    };
    // A plain ack (one publish, no reply awaited): a lost ack means a redelivery, which every
    // handler tolerates.
    if let Err(e) = msg.ack_with(ack).await {
        tracing::warn!(function = %opts.function, error = %e, "ack failed; the message will be redelivered");
    }
}

/// Longest reason a dead letter carries: decode errors can quote the whole offending input.
pub const MAX_DLQ_REASON: usize = 4 * 1024;

/// The reason cut to `MAX_DLQ_REASON` bytes (on a character boundary), saying how long it was.
fn bounded_reason(reason: &str) -> String {
    if reason.len() <= MAX_DLQ_REASON {
        return reason.to_string();
    }
    let mut end = MAX_DLQ_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &reason[..end], reason.len())
}

/// Builds the dead letter for a delivery: the reason and as much of the payload as fits.
pub fn dead_letter_event(function: &str, delivery: &Delivery, reason: &str) -> CloudEvent<DeadLetter> {
    let reason = &bounded_reason(reason);
    let truncated = delivery.payload.len() > MAX_DLQ_PAYLOAD;
    let kept = &delivery.payload[..delivery.payload.len().min(MAX_DLQ_PAYLOAD)];
    let payload = if truncated {
        Value::String(String::from_utf8_lossy(kept).into_owned())
    } else {
        serde_json::from_slice(kept).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(kept).into_owned()))
    };
    // From the stream: its sequence and delivery count. Otherwise (Lambda, HTTP) there is no sequence, so
    // the content names it: a repeat of the same failure is de-duplicated, a different one is not.
    let id = if delivery.stream_sequence > 0 {
        format!("dlq-{function}-{}-{}", delivery.stream_sequence, delivery.deliveries)
    } else {
        let mut content = format!("{function}\n{}\n{reason}\n", delivery.subject).into_bytes();
        content.extend_from_slice(&delivery.payload);
        format!("dlq-{function}-{}", uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &content))
    };
    CloudEvent::new(
        id,
        function_source(function),
        Some(delivery.subject.clone()),
        DeadLetter {
            function: function.to_string(),
            reason: reason.to_string(),
            subject: delivery.subject.clone(),
            deliveries: delivery.deliveries,
            stream_sequence: (delivery.stream_sequence > 0).then_some(delivery.stream_sequence),
            payload,
            truncated,
        },
    )
}

async fn dead_letter(
    publisher: &Publisher,
    function: &str,
    delivery: &Delivery,
    reason: &str,
) -> Result<(), crate::publish::PublishError> {
    let event = dead_letter_event(function, delivery, reason);
    tracing::warn!(%function, subject = %delivery.subject, reason = %event.data.reason, "dead-lettering");
    publisher.publish_to(&subjects::dlq(function), &event).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nak_delay_doubles_and_caps() {
        let o = ConsumerOptions::new("f", &["coracle.x"]);
        assert_eq!(o.nak_delay(1), Duration::from_secs(1));
        assert_eq!(o.nak_delay(2), Duration::from_secs(2));
        assert_eq!(o.nak_delay(4), Duration::from_secs(8));
        assert_eq!(o.nak_delay(40), Duration::from_secs(60));
    }

    #[test]
    fn dead_letter_keeps_json_payload_and_truncates_huge_ones() {
        let d = Delivery {
            subject: "coracle.backup.requested".into(),
            payload: Bytes::from_static(b"{\"a\":1}"),
            deliveries: 2,
            stream_sequence: 7,
        };
        let ev = dead_letter_event("plan-backup", &d, "bad");
        assert_eq!(ev.data.payload, serde_json::json!({"a": 1}));
        assert!(!ev.data.truncated);
        assert_eq!(ev.data.stream_sequence, Some(7));
        let big = Delivery { payload: Bytes::from(vec![b'x'; MAX_DLQ_PAYLOAD + 10]), ..d };
        let ev = dead_letter_event("plan-backup", &big, "too big");
        assert!(ev.data.truncated);
        assert_eq!(ev.data.payload.as_str().map(str::len), Some(MAX_DLQ_PAYLOAD));
    }
}
