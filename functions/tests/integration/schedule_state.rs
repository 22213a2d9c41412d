//! What one tick decides for one schedule from its fire state (SPEC §8), the request event it
//! publishes, and which payloads count as a tick (Coracle's tick, foreign CloudEvents, EventBridge).

use chrono::{DateTime, Duration, Utc};
use coracle_events::envelope::decode;
use coracle_events::{subjects, BackupRequest, CloudEvent, DecodeError, EventData, ScheduleTick};
use coracle_functions::handlers::schedule_tick::{tick_time, TickError, MAX_AHEAD_SECONDS};
use coracle_functions::schedule::{
    evaluate, request_event, BackupTemplate, Evaluation, FireState, Outcome, PendingFire, Schedule, Timing,
};
use serde_json::json;

fn t(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{text}: {e}")).with_timezone(&Utc)
}

fn schedule(expr: &str, created: Option<&str>) -> Schedule {
    Schedule {
        name: "nightly".into(),
        namespace: "coracle-system".into(),
        timing: Timing::new(expr, None).expect("valid"),
        paused: false,
        ttl: Some("168h".into()),
        template: BackupTemplate { included_namespaces: vec!["shop".into()], ..Default::default() },
        created: created.map(t),
    }
}

/// Applies an evaluation as the tick would: write the state, then publish and clear the pending fire.
fn apply(state: &mut Option<FireState>, ev: &Evaluation) -> Option<PendingFire> {
    if let Some(next) = &ev.state {
        *state = Some(next.clone());
    }
    let pending = state.as_mut().and_then(|s| s.pending.take());
    assert_eq!(
        pending.as_ref(),
        match &ev.outcome {
            Outcome::Fire(p) | Outcome::Unconfirmed(p) => Some(p),
            _ => None,
        },
        "a written state holds exactly the fire it announces"
    );
    pending
}

/// Evaluates and applies one tick.
fn tick_at(s: &Schedule, state: &mut Option<FireState>, now: &str) -> Option<PendingFire> {
    let ev = evaluate(s, state.as_ref(), t(now));
    apply(state, &ev)
}

#[test]
fn a_new_schedule_fires_its_first_due_time_and_never_the_same_time_twice() {
    let s = schedule("0 * * * *", Some("2026-01-01T09:30:00Z"));
    let mut state = None;
    let ev = evaluate(&s, state.as_ref(), t("2026-01-01T10:00:20Z"));
    let Outcome::Fire(fire) = &ev.outcome else { panic!("{:?}", ev.outcome) };
    assert_eq!((fire.fire_at, fire.missed), (t("2026-01-01T10:00:00Z"), 0));
    assert_eq!(fire.request.name, "nightly-20260101100000");
    assert_eq!(fire.request.origin.as_deref(), Some("schedule/nightly"));
    assert_eq!(fire.request.included_namespaces, ["shop"]);
    assert_eq!(fire.request.ttl.as_deref(), Some("168h"));
    let written = ev.state.clone().expect("claims the fire in the state");
    assert_eq!(written.handled_through, t("2026-01-01T10:00:00Z"));
    assert_eq!(written.last_backup.as_deref(), Some("nightly-20260101100000"));
    assert_eq!(written.pending.as_ref(), Some(fire));
    assert_eq!(written.expression, "0 * * * *");

    // Until the fire is confirmed published, every tick hands it back instead of deciding anew.
    state = Some(written);
    let again = evaluate(&s, state.as_ref(), t("2026-01-01T11:00:10Z"));
    assert_eq!(again, Evaluation { state: None, outcome: Outcome::Unconfirmed(fire.clone()) });
    apply(&mut state, &again);

    // The same minute again, a tick a few minutes early or late for the next hour: nothing twice.
    for now in ["2026-01-01T10:00:20Z", "2026-01-01T10:59:00Z", "2026-01-01T09:58:00Z"] {
        assert_eq!(evaluate(&s, state.as_ref(), t(now)), Evaluation { state: None, outcome: Outcome::Idle }, "{now}");
    }
    let late = evaluate(&s, state.as_ref(), t("2026-01-01T11:04:00Z"));
    let Some(fire) = apply(&mut state, &late) else { panic!("{late:?}") };
    assert_eq!((fire.fire_at, fire.missed), (t("2026-01-01T11:00:00Z"), 0));
    // A tick that arrives after a later one (redelivered) does nothing.
    assert_eq!(evaluate(&s, state.as_ref(), t("2026-01-01T10:30:00Z")).outcome, Outcome::Idle);
}

#[test]
fn downtime_fires_the_most_recent_time_once_with_the_missed_count() {
    let s = schedule("*/5 * * * *", Some("2026-01-01T00:00:00Z"));
    let mut state = None;
    apply(&mut state, &evaluate(&s, None, t("2026-01-01T10:00:00Z")));
    // Down for 10:05, 10:10 and 10:15; the 10:15 tick is the first to run.
    let ev = evaluate(&s, state.as_ref(), t("2026-01-01T10:15:30Z"));
    let fire = apply(&mut state, &ev).expect("fires");
    assert_eq!((fire.fire_at, fire.missed), (t("2026-01-01T10:15:00Z"), 2));
    let st = state.clone().expect("state");
    assert_eq!((st.last_missed, st.handled_through), (2, t("2026-01-01T10:15:00Z")));
    let event = request_event(&fire);
    assert_eq!(event.extensions.get("missed"), Some(&json!(2)));
}

#[test]
fn paused_schedules_fire_nothing_and_do_not_catch_up_when_unpaused() {
    let mut s = schedule("0 * * * *", Some("2026-01-01T00:00:00Z"));
    let mut state = None;
    apply(&mut state, &evaluate(&s, None, t("2026-01-01T10:00:00Z")));
    s.paused = true;
    for (now, through) in [("2026-01-01T10:30:00Z", None), ("2026-01-01T11:00:00Z", Some("2026-01-01T11:00:00Z"))] {
        let ev = evaluate(&s, state.as_ref(), t(now));
        assert!(apply(&mut state, &ev).is_none(), "{now}: paused fires nothing");
        if let Some(through) = through {
            assert_eq!(ev.outcome, Outcome::SkippedPaused { fire_at: t(through), count: 1 });
        } else {
            assert_eq!(ev.outcome, Outcome::Idle);
        }
    }
    // Ticks stopped for two more hours while paused: both are skipped at the next paused tick.
    let ev = evaluate(&s, state.as_ref(), t("2026-01-01T13:00:00Z"));
    assert_eq!(ev.outcome, Outcome::SkippedPaused { fire_at: t("2026-01-01T13:00:00Z"), count: 2 });
    apply(&mut state, &ev);
    assert_eq!(state.as_ref().map(|s| s.skipped_while_paused), Some(3));
    // Unpaused at 13:20: nothing from the paused hours fires; 14:00 does, with nothing missed.
    s.paused = false;
    assert_eq!(evaluate(&s, state.as_ref(), t("2026-01-01T13:20:00Z")).outcome, Outcome::Idle);
    let fire = tick_at(&s, &mut state, "2026-01-01T14:00:00Z").expect("fires");
    assert_eq!((fire.fire_at, fire.missed), (t("2026-01-01T14:00:00Z"), 0));
}

#[test]
fn a_changed_expression_does_not_fire_its_past_times() {
    let daily = schedule("@daily", Some("2026-01-01T00:00:00Z"));
    let mut state = None;
    apply(&mut state, &evaluate(&daily, None, t("2026-01-02T00:00:00Z")));
    // Changed to hourly at 10:30: 01:00 … 10:00 are not "missed", counting restarts now.
    let hourly = schedule("0 * * * *", Some("2026-01-01T00:00:00Z"));
    let ev = evaluate(&hourly, state.as_ref(), t("2026-01-02T10:30:00Z"));
    assert_eq!(ev.outcome, Outcome::Rebaselined);
    apply(&mut state, &ev);
    let st = state.clone().expect("state");
    assert_eq!((st.expression.as_str(), st.handled_through), ("0 * * * *", t("2026-01-02T10:29:00Z")));
    let fire = tick_at(&hourly, &mut state, "2026-01-02T11:00:00Z").expect("fires");
    assert_eq!((fire.fire_at, fire.missed), (t("2026-01-02T11:00:00Z"), 0));
    // A change seen by the very tick of a new fire time still fires it.
    let every = schedule("*/30 * * * *", Some("2026-01-01T00:00:00Z"));
    let ev = evaluate(&every, state.as_ref(), t("2026-01-02T11:30:05Z"));
    let Outcome::Fire(fire) = ev.outcome else { panic!("{:?}", ev.outcome) };
    assert_eq!((fire.fire_at, fire.missed), (t("2026-01-02T11:30:00Z"), 0));
}

#[test]
fn without_a_creation_time_the_first_tick_only_starts_the_count() {
    let s = schedule("*/10 * * * *", None);
    let ev = evaluate(&s, None, t("2026-01-01T10:05:00Z"));
    assert_eq!(ev.outcome, Outcome::Started);
    let mut state = None;
    apply(&mut state, &ev);
    assert_eq!(state.as_ref().map(|s| s.handled_through), Some(t("2026-01-01T10:05:00Z")));
    let fire = tick_at(&s, &mut state, "2026-01-01T10:10:00Z").expect("fires");
    assert_eq!(fire.fire_at, t("2026-01-01T10:10:00Z"));
}

#[test]
fn the_request_event_is_deterministic() {
    let s = schedule("0 * * * *", Some("2026-03-29T00:30:00Z"));
    let Outcome::Fire(fire) = evaluate(&s, None, t("2026-03-29T01:00:30Z")).outcome else { panic!("fires") };
    let event = request_event(&fire);
    assert_eq!(event.id, "nightly-20260329010000", "event id = backup name");
    assert_eq!(event.ty, BackupRequest::TYPE);
    assert_eq!(event.source, "/coracle/functions/schedule-tick");
    assert_eq!(event.subject.as_deref(), Some("nightly-20260329010000"));
    assert_eq!(event.time, Some(t("2026-03-29T01:00:00Z")), "time = the fire time, not when it was sent");
    assert_eq!(event.extensions.get("schedule"), Some(&json!("nightly")));
    assert_eq!(event.extensions.get("scheduledtime"), Some(&json!("2026-03-29T01:00:00Z")));
    assert_eq!(event.extensions.get("missed"), Some(&json!(0)));
    assert_eq!(request_event(&fire).to_json(), event.to_json(), "re-publishing sends the same bytes");
    let parsed = decode::<BackupRequest>(&event.to_json()).expect("a valid request event");
    assert_eq!(parsed.data, fire.request);
    let request = coracle_functions::request::parse_backup_request(&event.to_json()).expect("plan-backup accepts it");
    assert_eq!(request.name, "nightly-20260329010000");
}

#[test]
fn the_tick_event_type_round_trips() {
    assert_eq!(ScheduleTick::TYPE, "dev.coracle.schedule.tick.v1");
    assert_eq!(ScheduleTick::SUBJECT, subjects::SCHEDULE_TICK);
    let mut event = CloudEvent::new("tick-20260329010000", "/coracle/cli", None, ScheduleTick {});
    event.time = Some(t("2026-03-29T01:00:00Z"));
    let bytes = event.to_json();
    assert_eq!(decode::<ScheduleTick>(&bytes).expect("decodes"), event);
    let mut newer: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    newer["data"]["fromTheFuture"] = json!(1);
    assert!(decode::<ScheduleTick>(&serde_json::to_vec(&newer).expect("json")).is_ok(), "unknown fields tolerated");
}

fn payload(value: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&value).expect("json")
}

#[test]
fn what_counts_as_a_tick_and_its_time() {
    let clock = t("2026-03-29T01:00:07Z");
    let at = |payload: &[u8]| tick_time(payload, clock);
    // Coracle's own tick: its time.
    let ours = json!({"specversion": "1.0", "id": "tick-1", "source": "/coracle/cli", "type": ScheduleTick::TYPE,
        "time": "2026-03-29T01:00:00Z", "data": {}});
    assert_eq!(at(&payload(ours.clone())).expect("tick"), t("2026-03-29T01:00:00Z"));
    // Without a time or data: the clock.
    let bare = json!({"specversion": "1.0", "id": "tick-2", "source": "/cron", "type": ScheduleTick::TYPE});
    assert_eq!(at(&payload(bare)).expect("tick"), clock);
    // Knative PingSource, as it arrives.
    let ping = json!({"specversion": "1.0", "id": "5f7c8e6a-1d4b-4c1a-9c57-1b2f2f0c0a11",
        "source": "/apis/v1/namespaces/coracle-system/pingsources/coracle-tick", "type": "dev.knative.sources.ping",
        "time": "2026-03-29T01:00:00.000313Z", "datacontenttype": "application/json", "data": {"tick": true}});
    assert_eq!(at(&payload(ping)).expect("ping"), t("2026-03-29T01:00:00.000313Z"));
    // An EventBridge scheduled rule through the Lambda adapter.
    let eventbridge = json!({"version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa", "detail-type": "Scheduled Event",
        "source": "aws.events", "account": "123456789012", "time": "2026-03-29T01:00:00Z", "region": "eu-west-1",
        "resources": ["arn:aws:events:eu-west-1:123456789012:rule/coracle-schedule-tick"], "detail": {}});
    assert_eq!(at(&payload(eventbridge)).expect("eventbridge"), t("2026-03-29T01:00:00Z"));
    // Run directly.
    assert_eq!(at(b"").expect("empty"), clock);
    assert_eq!(at(b"{}\n").expect("{}"), clock);

    // A clock a few minutes off is fine; far ahead is refused, since it would mark times as done.
    let soon = json!({"specversion": "1.0", "id": "t", "source": "/s", "type": ScheduleTick::TYPE, "time": "2026-03-29T01:05:00Z"});
    assert!(at(&payload(soon)).is_ok());
    let future = clock + Duration::seconds(MAX_AHEAD_SECONDS + 60);
    let far = json!({"specversion": "1.0", "id": "t", "source": "/s", "type": ScheduleTick::TYPE, "time": future});
    let e = at(&payload(far)).expect_err("far future");
    assert!(matches!(e, TickError::Future { .. }), "{e}");
    assert!(e.to_string().contains("660s ahead of this machine's clock"), "{e}");

    // Not ticks.
    let v2 = {
        let mut v = ours.clone();
        v["type"] = json!("dev.coracle.schedule.tick.v2");
        v
    };
    let e = at(&payload(v2)).expect_err("v2");
    assert!(matches!(e, TickError::Event(DecodeError::UnknownVersion { .. })), "{e}");
    let other = {
        let mut v = ours;
        v["type"] = json!(BackupRequest::TYPE);
        v
    };
    assert!(matches!(at(&payload(other)).expect_err("wrong type"), TickError::Event(DecodeError::WrongType { .. })));
    let e = at(&payload(json!({"source": "aws.events", "detail-type": "EC2 Instance State-change Notification"})))
        .expect_err("other EventBridge event");
    assert!(e.to_string().contains("not \"Scheduled Event\""), "{e}");
    let e = at(&payload(json!({"name": "nightly"}))).expect_err("a request is not a tick");
    assert!(e.to_string().starts_with("not a schedule tick: expected a CloudEvent"), "{e}");
    assert!(at(b"\xff garbage").expect_err("garbage").to_string().contains("not JSON"));
}
