//! schedule-tick: one tick → at most one `coracle.backup.requested` per schedule (SPEC §8).
//!
//! A tick is any event on `coracle.schedule.tick` — Coracle's own `dev.coracle.schedule.tick.v1`,
//! or a foreign CloudEvent such as Knative's PingSource or an Argo Events calendar event — or an
//! AWS EventBridge scheduled event (`"source": "aws.events"`, `"detail-type": "Scheduled Event"`)
//! through the Lambda adapter, or `{}` / nothing when run directly. "Now" is the event's `time`
//! (the minute the tick was meant for), else this machine's clock; a tick more than ten minutes
//! ahead of the clock is refused, since it would mark every fire time up to it as done.
//!
//! For each schedule ConfigMap (one paginated LIST across namespaces) the fire state in KV
//! `coracle-schedules` is advanced with compare-and-set FIRST, and only the tick whose write won
//! publishes the request. The claimed request is kept in the state (`pending`) until publishing is
//! confirmed, and any tick that finds it there publishes it again: its id is the backup name, so the
//! stream's duplicate window drops the copy, and a crash between the write and the publish is
//! repaired by the next tick. Two ticks running at once therefore still publish one request.
//!
//! Missed fire times (after downtime) are logged and carried on the request as the CloudEvent
//! extension attribute `missed`. Without NATS (`coracle fn schedule-tick --event FILE` with no
//! `--nats`) there is no fire state: the requests a first tick would publish are printed instead.

use crate::context::Context;
use crate::kube_cluster;
use crate::kv_json::{Created, JsonKv};
use crate::schedule::{self, evaluate, request_event, FireState, Outcome, PendingFire, Schedule, SCHEDULE_LABEL};
use chrono::{DateTime, Utc};
use coracle_events::consume::HandleError;
use coracle_events::subjects::KV_SCHEDULES;
use coracle_events::{CloudEvent, DecodeError, ScheduleTick};
use serde_json::Value;

pub const NAME: &str = schedule::TICK_FUNCTION;

/// How far ahead of the local clock a tick's time may be (clock skew between producer and runner).
pub const MAX_AHEAD_SECONDS: i64 = 10 * 60;
/// Compare-and-set rounds per schedule before the tick gives up (and is retried).
const ATTEMPTS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum TickError {
    #[error("not a schedule tick: {0}")]
    NotATick(String),
    #[error("schedule tick: {0}")]
    Event(#[from] DecodeError),
    #[error(
        "tick time {time} is {ahead_seconds}s ahead of this machine's clock ({clock}); refused, because it would mark every fire time up to it as done"
    )]
    Future { time: DateTime<Utc>, clock: DateTime<Utc>, ahead_seconds: i64 },
}

/// The instant a tick stands for, given this machine's clock.
pub fn tick_time(payload: &[u8], clock: DateTime<Utc>) -> Result<DateTime<Utc>, TickError> {
    let text = String::from_utf8_lossy(payload);
    let text = text.trim_start_matches('\u{feff}').trim();
    let time = if text.is_empty() { None } else { time_of(text)? };
    let time = time.unwrap_or(clock);
    let ahead = (time - clock).num_seconds();
    if ahead > MAX_AHEAD_SECONDS {
        return Err(TickError::Future { time, clock, ahead_seconds: ahead });
    }
    Ok(time)
}

fn time_of(text: &str) -> Result<Option<DateTime<Utc>>, TickError> {
    let value: Value = serde_json::from_str(text).map_err(|e| TickError::NotATick(format!("not JSON: {e}")))?;
    let Value::Object(object) = &value else {
        return Err(TickError::NotATick("expected a JSON object".into()));
    };
    if object.contains_key("specversion") {
        let mut event = CloudEvent::parse(text.as_bytes())?;
        if event.is_coracle() {
            // Producers that send no data mean the same as `{}`.
            if event.data.is_null() {
                event.data = Value::Object(Default::default());
            }
            return Ok(event.into_typed::<ScheduleTick>()?.time);
        }
        // A foreign CloudEvent on the tick subject (Knative PingSource, Argo Events calendar): its time.
        return Ok(event.time);
    }
    if object.get("source").and_then(Value::as_str) == Some("aws.events") {
        let kind = object.get("detail-type").and_then(Value::as_str).unwrap_or_default();
        if kind != "Scheduled Event" {
            return Err(TickError::NotATick(format!(
                "EventBridge event of detail-type {kind:?}, not \"Scheduled Event\""
            )));
        }
        return match object.get("time").and_then(Value::as_str) {
            None => Ok(None),
            Some(t) => DateTime::parse_from_rfc3339(t)
                .map(|t| Some(t.with_timezone(&Utc)))
                .map_err(|e| TickError::NotATick(format!("EventBridge time {t:?}: {e}"))),
        };
    }
    if object.is_empty() {
        return Ok(None);
    }
    Err(TickError::NotATick(
        "expected a CloudEvent, an EventBridge scheduled event, or {} to tick at this machine's time".into(),
    ))
}

/// What one tick did.
#[derive(Debug, Default)]
pub struct TickSummary {
    /// The instant the tick stood for.
    pub now: DateTime<Utc>,
    pub schedules: usize,
    /// (backup name, missed fire times) of every request fired.
    pub fired: Vec<(String, u32)>,
    pub skipped_paused: usize,
    pub rejected: Vec<schedule::Rejected>,
    pub failed: usize,
}

pub async fn handle(ctx: &Context, payload: &[u8]) -> Result<(), HandleError> {
    let now = tick_time(payload, Utc::now()).map_err(HandleError::permanent)?;
    run(ctx, now).await.map(|_| ())
}

/// Evaluates every schedule as of `now`. One schedule's failure does not stop the others; the
/// first failure is returned afterwards so the tick is retried (which is idempotent).
pub async fn run(ctx: &Context, now: DateTime<Utc>) -> Result<TickSummary, HandleError> {
    let kube = ctx.kube()?;
    let configmaps = kube_cluster::labelled_configmaps(kube, SCHEDULE_LABEL).await?;
    let (schedules, rejected) = schedule::load(&configmaps, &ctx.system_namespace);
    for r in &rejected {
        tracing::warn!(namespace = %r.namespace, name = %r.name, "schedule ignored: {}", r.reason);
    }
    let states = match &ctx.nats {
        Some(n) => Some(JsonKv::<FireState>::open(&n.js, KV_SCHEDULES, "").await?),
        None => None,
    };
    let mut summary = TickSummary { now, schedules: schedules.len(), rejected, ..Default::default() };
    let mut first_error = None;
    for s in &schedules {
        let result = match &states {
            Some(kv) => tick_one(ctx, kv, s, now).await,
            None => offline(ctx, s, now).await,
        };
        match result {
            Ok(outcome) => record(&mut summary, s, &outcome),
            Err(e) => {
                tracing::error!(schedule = %s.name, "schedule tick failed: {e}");
                summary.failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    tracing::info!(
        "{NAME} at {}: {} schedule(s), fired {}, skipped while paused {}, ignored {}, failed {}",
        now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        summary.schedules,
        summary.fired.len(),
        summary.skipped_paused,
        summary.rejected.len(),
        summary.failed
    );
    match first_error {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

fn record(summary: &mut TickSummary, s: &Schedule, outcome: &Outcome) {
    match outcome {
        Outcome::Fire(p) => {
            let backup = &p.request.name;
            if p.missed > 0 {
                tracing::warn!(schedule = %s.name, %backup, missed = p.missed,
                    "fired the most recent of {} due fire times; {} older one(s) missed (no tick ran then)",
                    p.missed + 1, p.missed);
            } else {
                tracing::info!(schedule = %s.name, %backup, fire_at = %p.fire_at, "fired");
            }
            summary.fired.push((backup.clone(), p.missed));
        }
        Outcome::SkippedPaused { fire_at, count } => {
            tracing::info!(schedule = %s.name, %fire_at, count, "paused: fire time(s) skipped");
            summary.skipped_paused += 1;
        }
        Outcome::Started => tracing::info!(schedule = %s.name, "new schedule: fire times count from now"),
        Outcome::Rebaselined => {
            tracing::info!(schedule = %s.name, expression = %s.timing.expr, "expression changed: fire times count from now")
        }
        Outcome::Idle | Outcome::Unconfirmed(_) => {}
    }
}

/// Decides and records one schedule's tick with compare-and-set; publishes only what its own write
/// claimed, plus any earlier claim still waiting for confirmation.
async fn tick_one(
    ctx: &Context,
    kv: &JsonKv<FireState>,
    s: &Schedule,
    now: DateTime<Utc>,
) -> Result<Outcome, HandleError> {
    for _ in 0..ATTEMPTS {
        let outcome = match kv.get(&s.name).await? {
            None => {
                let ev = evaluate(s, None, now);
                let Some(state) = ev.state else { return Ok(ev.outcome) };
                match kv.create(&s.name, &state).await? {
                    Created::Created => ev.outcome,
                    // Another tick created it first: decide again from what it wrote.
                    Created::Exists(_) => continue,
                }
            }
            Some(_) => {
                let mut decided = Outcome::Idle;
                // `modify` re-reads and calls this again whenever a concurrent tick wrote in between,
                // so the outcome kept is the one whose write won (or that needed none).
                let stored = kv
                    .modify(&s.name, |doc| {
                        let ev = evaluate(s, Some(doc), now);
                        decided = ev.outcome;
                        match ev.state {
                            Some(next) => {
                                *doc = next;
                                true
                            }
                            None => false,
                        }
                    })
                    .await?;
                if stored.is_none() {
                    continue;
                }
                decided
            }
        };
        match &outcome {
            Outcome::Unconfirmed(pending) => {
                tracing::info!(schedule = %s.name, backup = %pending.request.name, "publishing an unconfirmed earlier fire");
                publish_and_confirm(ctx, kv, &s.name, pending).await?;
            }
            Outcome::Fire(pending) => {
                publish_and_confirm(ctx, kv, &s.name, pending).await?;
                return Ok(outcome);
            }
            _ => return Ok(outcome),
        }
    }
    Err(HandleError::retryable(format!("schedule {}: fire state kept changing under concurrent ticks", s.name)))
}

async fn publish_and_confirm(
    ctx: &Context,
    kv: &JsonKv<FireState>,
    key: &str,
    pending: &PendingFire,
) -> Result<(), HandleError> {
    ctx.emit(&request_event(pending)).await?;
    let backup = &pending.request.name;
    kv.modify(key, |doc| {
        let mine = doc.pending.as_ref().is_some_and(|p| &p.request.name == backup);
        if mine {
            doc.pending = None;
        }
        mine
    })
    .await?;
    Ok(())
}

/// Without NATS: no fire state, so this is what a first tick would publish; the events are
/// collected for printing.
async fn offline(ctx: &Context, s: &Schedule, now: DateTime<Utc>) -> Result<Outcome, HandleError> {
    let outcome = evaluate(s, None, now).outcome;
    if let Outcome::Fire(pending) = &outcome {
        ctx.emit(&request_event(pending)).await?;
    }
    Ok(outcome)
}
