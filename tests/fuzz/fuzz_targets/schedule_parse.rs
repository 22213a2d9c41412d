//! Cron and schedule parsing: expressions, time zones, `@every` durations and whole schedule
//! ConfigMaps as a user writes them, evaluated at arbitrary instants. Never panics or loops
//! forever; fire times are strictly increasing and inside the window asked for; evaluating a
//! tick twice at the same instant fires nothing the second time.
#![no_main]

use chrono::{DateTime, Utc};
use coracle_functions::schedule::{evaluate, from_configmap, Outcome, Timing};
use k8s_openapi::api::core::v1::ConfigMap;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

#[derive(Arbitrary, Debug)]
struct Input {
    expression: String,
    zone: Option<String>,
    /// Seconds around 2025 (±~68 years), so the instants are valid dates.
    after: i32,
    span: u32,
    extra: Vec<(String, String)>,
}

fuzz_target!(|input: Input| {
    let _ = coracle_events::duration::parse_duration(&input.expression);
    let base = 1_735_689_600_i64; // 2025-01-01T00:00:00Z
    let Some(after) = DateTime::<Utc>::from_timestamp(base + i64::from(input.after), 0) else { return };
    let Some(now) = DateTime::<Utc>::from_timestamp(after.timestamp() + i64::from(input.span % (400 * 86_400)), 0)
    else {
        return;
    };
    if let Ok(timing) = Timing::new(&input.expression, input.zone.as_deref()) {
        let fires = timing.next_fires(after, 5);
        let mut previous = after;
        for f in &fires {
            assert!(*f > previous, "{:?}: {f} after {previous}", input.expression);
            previous = *f;
        }
        let due = timing.due_between(after, now);
        if let Some(at) = due.fire_at {
            assert!(at > after && at <= now, "{:?}: due {at} outside ({after}, {now}]", input.expression);
        }
    }

    let mut data = BTreeMap::from([("schedule".to_string(), input.expression.clone())]);
    if let Some(zone) = &input.zone {
        data.insert("timezone".into(), zone.clone());
    }
    data.extend(input.extra.iter().cloned());
    let mut cm = ConfigMap { data: Some(data), ..Default::default() };
    cm.metadata.name = Some("nightly".into());
    cm.metadata.namespace = Some("coracle-system".into());
    let created = k8s_openapi::jiff::Timestamp::from_second(after.timestamp()).expect("a valid instant");
    cm.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(created));
    let Ok(schedule) = from_configmap(&cm, "coracle-system") else { return };
    let first = evaluate(&schedule, None, now);
    if let Some(mut state) = first.state {
        // As tick_one leaves it once the fire is published.
        state.pending = None;
        let again = evaluate(&schedule, Some(&state), now);
        assert!(!matches!(again.outcome, Outcome::Fire(_)), "{:?} fired twice at {now}", input.expression);
    }
});
