//! The three ways to run a function: once from a file, as a (draining) NATS consumer, and
//! under AWS Lambda. All call the same `Function::handle`.

use crate::context::Context;
use crate::handlers::{record_result, Function};
use coracle_events::consume::{self, ConsumeStats, ConsumerOptions, HandleError};
use coracle_events::publish::Publisher;
use coracle_events::subjects;
use serde_json::{json, Value};
use std::sync::Arc;

/// Handles one event; returns the events it would have published when NATS is not configured.
pub async fn once(ctx: &Context, function: Function, payload: &[u8]) -> Result<Vec<Value>, HandleError> {
    function.handle(ctx, payload).await?;
    Ok(ctx.take_emitted())
}

/// Messages record-result takes per fetch. Results of one backup arrive interleaved with other
/// backups' (Jobs on many nodes finish at once), so a large batch is what lets it merge several
/// results into one write of a record; it stays under the consumer's default 1,000 unacked.
pub const RECORD_RESULT_BATCH: usize = 1000;

/// Pulls from the function's durable consumer; with `drain`, returns once it is idle.
pub async fn nats(ctx: Arc<Context>, function: Function, drain: bool) -> anyhow::Result<ConsumeStats> {
    let Some(n) = ctx.nats.as_ref() else { anyhow::bail!("{} needs --nats", function.name()) };
    let mut opts = ConsumerOptions::new(function.name(), function.subjects());
    opts.drain = drain;
    let js = n.js.clone();
    let stats = if function == Function::RecordResult {
        opts.batch = RECORD_RESULT_BATCH;
        consume::run_batch(&js, &opts, |deliveries| {
            let ctx = ctx.clone();
            async move {
                let payloads: Vec<&[u8]> = deliveries.iter().map(|d| d.payload.as_ref()).collect();
                record_result::handle_batch(&ctx, &payloads).await
            }
        })
        .await?
    } else {
        consume::run(&js, &opts, |delivery| {
            let ctx = ctx.clone();
            async move { function.handle(&ctx, &delivery.payload).await }
        })
        .await?
    };
    Ok(stats)
}

/// Serves Lambda invocations through the Runtime API. The payload is the CloudEvent. A
/// retryable failure is returned as an error so Lambda's own retry policy applies; a
/// permanent one is dead-lettered on NATS (when configured) and answered, since retrying
/// cannot help.
pub async fn lambda(ctx: Arc<Context>, function: Function) -> anyhow::Result<()> {
    let handler = lambda_runtime::service_fn(move |event: lambda_runtime::LambdaEvent<Value>| {
        let ctx = ctx.clone();
        async move {
            let payload = serde_json::to_vec(&event.payload).unwrap_or_default();
            match function.handle(&ctx, &payload).await {
                Ok(()) => Ok::<Value, lambda_runtime::Error>(json!({"status": "ok", "emitted": ctx.take_emitted()})),
                Err(HandleError::Retryable(reason)) => Err(reason.into()),
                Err(HandleError::Permanent(reason)) => {
                    let delivery = consume::Delivery {
                        subject: format!("lambda.{}", function.name()),
                        payload: payload.into(),
                        deliveries: 1,
                        stream_sequence: 0,
                    };
                    // Built first so the answer carries the same bounded reason as the dead letter.
                    let dead = consume::dead_letter_event(function.name(), &delivery, &reason);
                    if let Some(n) = &ctx.nats {
                        let publisher: &Publisher = &n.publisher;
                        publisher.publish_to(&subjects::dlq(function.name()), &dead).await?;
                    }
                    Ok(json!({"status": "dead-lettered", "reason": dead.data.reason}))
                }
            }
        }
    });
    lambda_runtime::run(handler).await.map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
}
