//! Backup schedules (SPEC §8): when a schedule fires, what it fires, and what a tick must do about
//! it. Pure: no clock, no Kubernetes, no NATS — the tick handler supplies "now", the ConfigMaps and
//! the stored fire state.
//!
//! # Declaring a schedule
//!
//! A schedule is a ConfigMap labelled `coracle.dev/schedule` (any value, `"true"` by convention).
//! Its name is the schedule's name; `coracle schedule create` writes the same ConfigMap into the
//! system namespace, so ConfigMaps are the single source of truth. Data keys:
//!
//! | key        | required | meaning |
//! |------------|----------|---------|
//! | `schedule` | yes      | the expression (below) |
//! | `timezone` | no       | IANA zone the expression is read in (`Europe/Berlin`); default UTC |
//! | `paused`   | no       | `"true"` or `"false"` (default) |
//! | `ttl`      | no       | Go duration kept in each request (`720h`); default: the installation's |
//! | `template` | no       | YAML mapping of the request fields `includedNamespaces`, `excludedNamespaces`, `labelSelector`, `defaultVolumesToBackup`, `volumeTimeout` |
//!
//! Unknown keys (and unknown template fields) are errors: a typo such as `includeNamespaces` must
//! not silently widen a backup to every namespace. A schedule declared outside the system namespace
//! backs up only its own namespace (the default when `includedNamespaces` is empty); naming others
//! is refused, so being allowed to create ConfigMaps in one namespace is not enough to schedule
//! backups of the whole cluster. Backups are named after schedules, so a schedule name must be
//! unique across the cluster: when two namespaces declare the same name, the one in the system
//! namespace wins, otherwise the older one, and the other is reported as a conflict.
//!
//! # Expressions
//!
//! - Standard 5-field crontab `minute hour day-of-month month day-of-week`: `*`, lists, ranges,
//!   steps (`*/15`, `1-30/5`, `5/15` meaning `5-59/15`), month names `JAN`-`DEC`, weekday names
//!   `SUN`-`SAT`, weekdays `0`-`7` with both 0 and 7 meaning Sunday. As in Kubernetes CronJobs,
//!   when both day fields are restricted (neither is `*`), a day matching either one fires.
//! - `@hourly`, `@daily` (= `@midnight`), `@weekly` (Sunday 00:00), `@monthly`, `@yearly` (= `@annually`).
//! - `@every <Go duration>` (`@every 90m`), at least one minute, whole seconds. Fire times are the
//!   multiples of the interval since 1970-01-01T00:00:00Z, so they do not depend on when the schedule
//!   was created or on the time zone (which `@every` ignores): `@every 90m` fires at 00:00, 01:30,
//!   03:00 UTC…
//!
//! The crontab forms are evaluated by the `cron` crate on the zone's wall clock and then placed on
//! the real timeline:
//! - a wall-clock time that does not exist (skipped by a spring-forward change) fires once, at the
//!   first instant after the gap — what ISC cron does for jobs it would otherwise miss — so a daily
//!   02:30 backup in Europe/Berlin runs at 03:00 CEST on the day clocks jump, and several times in
//!   the gap (`*/15`) still fire only once;
//! - a wall-clock time that occurs twice (autumn fall-back) fires once, at its first occurrence;
//!   the repeated hour fires nothing.
//!
//! # Ticks, catch-up and fire state
//!
//! `schedule-tick` evaluates every schedule as of "now" — the tick event's `time` attribute when it
//! has one (a CronJob or EventBridge tick carries the minute it was meant for), the local clock
//! otherwise. Fire state (KV `coracle-schedules`, key = schedule name) records `handledThrough`:
//! every fire time at or before it is done. A tick fires the most recent fire time in
//! `(handledThrough, now]` once and counts the older ones in that interval as missed (after
//! downtime: one backup, not a burst). A brand-new schedule (no fire state) fires nothing from
//! before its ConfigMap's `creationTimestamp` (or, without one, before the tick that first saw it).
//! A paused schedule fires nothing; ticks while it is paused move `handledThrough` on, so
//! unpausing fires only times after the last tick that saw it paused. Changing the expression or
//! zone restarts the count from one minute before the tick that sees the change, so a new
//! expression does not fire its past times.
//!
//! Each fire publishes one `coracle.backup.requested` whose backup name and event id are
//! `<schedule>-<yyyyMMddHHmmss>` (the fire time in UTC), with `origin: schedule/<name>`, the fire
//! time as the CloudEvent `time`, and the extension attributes `schedule`, `scheduledtime` and
//! `missed` (older fire times this catch-up skipped, counted up to `MISSED_COUNT_LIMIT`; times
//! passing while paused are not "missed").
//!
//! Because `handledThrough` only moves forward, ticks that run early or late (a clock a few minutes
//! off, a redelivered tick) never fire a time twice: a fast clock fires a time up to that much early,
//! a slow one that much late, and a tick older than the last handled time does nothing.

use crate::duration::parse_duration;
use crate::request::{self, RequestError};
use crate::selector::is_dns1123_subdomain;
use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use coracle_events::{function_source, BackupRequest, CloudEvent};
use k8s_openapi::api::core::v1::ConfigMap;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// The label that makes a ConfigMap a schedule.
pub const SCHEDULE_LABEL: &str = "coracle.dev/schedule";
pub const KEY_SCHEDULE: &str = "schedule";
pub const KEY_TIMEZONE: &str = "timezone";
pub const KEY_PAUSED: &str = "paused";
pub const KEY_TTL: &str = "ttl";
pub const KEY_TEMPLATE: &str = "template";
const KNOWN_KEYS: [&str; 5] = [KEY_SCHEDULE, KEY_TIMEZONE, KEY_PAUSED, KEY_TTL, KEY_TEMPLATE];

/// The function that fires schedules; the `source` of the requests it publishes.
pub const TICK_FUNCTION: &str = "schedule-tick";

/// Shortest `@every` interval: the tick runs once a minute, so anything shorter could only ever be missed.
const MIN_EVERY_SECONDS: i64 = 60;
/// Backup names are label values: at most 63 characters, of which `-yyyyMMddHHmmss` takes 15.
const MAX_NAME: usize = 63;
const STAMP_LEN: usize = 15;
/// Missed fire times are counted one by one up to here (a minutely schedule down for ten weeks);
/// beyond it the count stays at this value.
pub const MISSED_COUNT_LIMIT: u32 = 100_000;
/// How far a changed expression looks back on the tick that first sees it.
const REBASELINE_LOOKBACK_SECONDS: i64 = 60;
/// Longest wall-clock gap searched for its end (the longest on record skipped a whole day).
const MAX_GAP_MINUTES: i64 = 2 * 24 * 60;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("invalid schedule {expression:?}: {reason}")]
    Expression { expression: String, reason: String },
    #[error("unknown time zone {zone:?}: expected an IANA name such as Europe/Berlin, America/New_York or UTC")]
    TimeZone { zone: String },
    #[error("schedule {namespace}/{name}: {reason}")]
    Invalid { namespace: String, name: String, reason: String },
}

fn expression_error(expression: &str, reason: impl Into<String>) -> ScheduleError {
    ScheduleError::Expression { expression: expression.to_string(), reason: reason.into() }
}

/// A parsed schedule expression (crontab, macro or `@every`).
#[derive(Debug, Clone)]
pub struct CronExpr {
    source: String,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    /// Interval in seconds, aligned to the Unix epoch.
    Every(i64),
    /// One schedule, or two whose union is meant (both day fields restricted).
    Cron(Vec<cron::Schedule>),
}

/// One crontab field: its name for errors, its range and its names.
struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: FieldSpec = FieldSpec { name: "minute", min: 0, max: 59, names: &[] };
const HOUR: FieldSpec = FieldSpec { name: "hour", min: 0, max: 23, names: &[] };
const DAY_OF_MONTH: FieldSpec = FieldSpec { name: "day-of-month", min: 1, max: 31, names: &[] };
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"],
};
/// 0-7 with 0 and 7 both Sunday; names map to 0-6.
const DAY_OF_WEEK: FieldSpec =
    FieldSpec { name: "day-of-week", min: 0, max: 7, names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"] };
/// The `cron` crate numbers weekdays 1 (Sunday) to 7; names avoid the off-by-one entirely.
const CRATE_WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

struct Field {
    /// `*` or `?` (or `*/1`): unrestricted, which decides how the two day fields combine.
    star: bool,
    values: BTreeSet<u32>,
}

fn parse_value(spec: &FieldSpec, text: &str) -> Result<u32, String> {
    if let Some(i) = spec.names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
        // Month names start at 1, weekday names at 0.
        return Ok(i as u32 + if spec.min == 1 { 1 } else { 0 });
    }
    if text.is_empty() {
        return Err("a value is missing".into());
    }
    let value: u32 = text.parse().map_err(|_| {
        if spec.names.is_empty() {
            format!("{text:?} is not a number")
        } else {
            format!("{text:?} is neither a number nor one of {}", spec.names.join(" "))
        }
    })?;
    if value < spec.min || value > spec.max {
        return Err(format!("{value} is out of range {}-{}", spec.min, spec.max));
    }
    Ok(value)
}

fn parse_field(spec: &FieldSpec, text: &str) -> Result<Field, String> {
    let wrap = |reason: String| format!("{} field {text:?}: {reason}", spec.name);
    let star = matches!(text, "*" | "?" | "*/1");
    let mut values = BTreeSet::new();
    for item in text.split(',') {
        if item.is_empty() {
            return Err(wrap("empty entry in the list".into()));
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| wrap(format!("step {step:?} in {item:?} must be a positive number")))?;
                (range, Some(step))
            }
            None => (item, None),
        };
        let (low, high) = if range == "*" || range == "?" {
            if range == "?" && step.is_some() {
                return Err(wrap("'?' takes no step".into()));
            }
            (spec.min, spec.max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (parse_value(spec, a).map_err(&wrap)?, parse_value(spec, b).map_err(&wrap)?);
            if a > b {
                return Err(wrap(format!("range {range:?} runs backwards ({a} > {b})")));
            }
            (a, b)
        } else {
            let a = parse_value(spec, range).map_err(&wrap)?;
            // `5/15` means `5-max/15`, as in Kubernetes CronJobs.
            (a, if step.is_some() { spec.max } else { a })
        };
        values.extend((low..=high).step_by(step.unwrap_or(1) as usize));
    }
    Ok(Field { star, values })
}

fn crate_list(field: &Field, spec: &FieldSpec) -> String {
    if (spec.min..=spec.max).all(|v| field.values.contains(&v)) {
        return "*".into();
    }
    field.values.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// Weekdays as crate names, Sunday given as 0 or 7.
fn crate_weekdays(field: &Field) -> String {
    let days: BTreeSet<usize> = field.values.iter().map(|d| (*d % 7) as usize).collect();
    if days.len() == 7 {
        return "*".into();
    }
    days.iter().map(|d| CRATE_WEEKDAYS[*d]).collect::<Vec<_>>().join(",")
}

fn macro_expansion(word: &str) -> Option<&'static str> {
    Some(match word {
        "@hourly" => "0 * * * *",
        "@daily" | "@midnight" => "0 0 * * *",
        "@weekly" => "0 0 * * 0",
        "@monthly" => "0 0 1 * *",
        "@yearly" | "@annually" => "0 0 1 1 *",
        _ => return None,
    })
}

impl CronExpr {
    pub fn parse(expression: &str) -> Result<CronExpr, ScheduleError> {
        let fail = |reason: String| expression_error(expression, reason);
        let text = expression.trim();
        if text.is_empty() {
            return Err(fail("empty; expected 5 crontab fields, a macro such as @daily, or @every <duration>".into()));
        }
        if text.starts_with("TZ=") || text.starts_with("CRON_TZ=") {
            return Err(fail(
                "give the time zone separately (the timezone key, or --tz), not in the expression".into(),
            ));
        }
        let lower = text.to_ascii_lowercase();
        let every =
            lower.strip_prefix("@every").filter(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace));
        if let Some(rest) = every {
            let interval = rest.trim();
            if interval.is_empty() {
                return Err(fail("@every needs a duration, such as @every 90m".into()));
            }
            let d = parse_duration(interval).map_err(|e| fail(e.to_string()))?;
            if d.subsec_nanos() != 0 {
                return Err(fail(format!("interval {interval} is not a whole number of seconds")));
            }
            let secs = i64::try_from(d.as_secs()).map_err(|_| fail(format!("interval {interval} is too long")))?;
            if secs < MIN_EVERY_SECONDS {
                return Err(fail(format!("interval {interval} is shorter than one minute, the tick's resolution")));
            }
            return Ok(CronExpr { source: expression.trim().to_string(), kind: Kind::Every(secs) });
        }
        let crontab = if lower.starts_with('@') {
            if lower == "@reboot" {
                return Err(fail("@reboot is not supported: a schedule has no boot to run at".into()));
            }
            macro_expansion(&lower).ok_or_else(|| {
                fail(format!(
                    "unknown macro {text}: expected @hourly, @daily, @midnight, @weekly, @monthly, @yearly, @annually or @every <duration>"
                ))
            })?
        } else {
            text
        };
        let fields: Vec<&str> = crontab.split_whitespace().collect();
        if fields.len() != 5 {
            let hint = if fields.len() == 6 { " (seconds and years are not supported)" } else { "" };
            return Err(fail(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {}{hint}",
                fields.len()
            )));
        }
        let minute = parse_field(&MINUTE, fields[0]).map_err(&fail)?;
        let hour = parse_field(&HOUR, fields[1]).map_err(&fail)?;
        let dom = parse_field(&DAY_OF_MONTH, fields[2]).map_err(&fail)?;
        let month = parse_field(&MONTH, fields[3]).map_err(&fail)?;
        let dow = parse_field(&DAY_OF_WEEK, fields[4]).map_err(&fail)?;
        let (minutes, hours, months) =
            (crate_list(&minute, &MINUTE), crate_list(&hour, &HOUR), crate_list(&month, &MONTH));
        let build = |dom: &str, dow: &str| {
            let six = format!("0 {minutes} {hours} {dom} {months} {dow}");
            cron::Schedule::from_str(&six).map_err(|e| fail(format!("the cron crate refused {six:?}: {e}")))
        };
        let schedules = if dom.star || dow.star {
            // Either unrestricted: both must match (the crate's own rule).
            vec![build(&crate_list(&dom, &DAY_OF_MONTH), &crate_weekdays(&dow))?]
        } else {
            // Both restricted: a day matching either fires, as in cron and Kubernetes CronJobs.
            vec![build(&crate_list(&dom, &DAY_OF_MONTH), "*")?, build("*", &crate_weekdays(&dow))?]
        };
        let parsed = CronExpr { source: expression.trim().to_string(), kind: Kind::Cron(schedules) };
        let epoch = NaiveDateTime::default();
        if parsed.next_local(epoch).is_none() {
            return Err(fail("it never fires: no calendar date matches its day-of-month and month".into()));
        }
        Ok(parsed)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The next wall-clock time strictly after `after`, on the zone-less local timeline.
    fn next_local(&self, after: NaiveDateTime) -> Option<NaiveDateTime> {
        let Kind::Cron(schedules) = &self.kind else { return None };
        let from = Utc.from_utc_datetime(&after);
        schedules.iter().filter_map(|s| s.after(&from).next()).min().map(|t| t.naive_utc())
    }
}

impl fmt::Display for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl FromStr for CronExpr {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CronExpr::parse(s)
    }
}

/// Parses an IANA time zone name.
pub fn parse_zone(zone: &str) -> Result<Tz, ScheduleError> {
    zone.trim().parse::<Tz>().map_err(|_| ScheduleError::TimeZone { zone: zone.to_string() })
}

/// When a schedule fires: its expression read in its zone (UTC when none).
#[derive(Debug, Clone)]
pub struct Timing {
    pub expr: CronExpr,
    pub zone: Option<Tz>,
}

/// Fire times due at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The most recent fire time not yet handled, if any: the one to fire.
    pub fire_at: Option<DateTime<Utc>>,
    /// Older unhandled fire times, skipped (saturates at `MISSED_COUNT_LIMIT`).
    pub missed: u32,
}

impl Timing {
    pub fn new(expression: &str, zone: Option<&str>) -> Result<Timing, ScheduleError> {
        let expr = CronExpr::parse(expression)?;
        let zone = zone.map(str::trim).filter(|z| !z.is_empty()).map(parse_zone).transpose()?;
        Ok(Timing { expr, zone })
    }

    pub fn zone_name(&self) -> Option<&'static str> {
        self.zone.map(|z| z.name())
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.expr.kind {
            Kind::Every(secs) => {
                let k = after.timestamp().div_euclid(*secs).checked_add(1)?;
                DateTime::from_timestamp(k.checked_mul(*secs)?, 0)
            }
            Kind::Cron(_) => {
                let mut cursor = self.local(after);
                loop {
                    let local = self.expr.next_local(cursor)?;
                    let at = self.resolve(local)?;
                    // In a repeated (fall-back) hour the wall clock runs behind instants already passed.
                    if at > after {
                        return Some(at);
                    }
                    cursor = local;
                }
            }
        }
    }

    /// The next `count` fire times after `after`.
    pub fn next_fires(&self, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(count.min(1024));
        let mut t = after;
        while out.len() < count {
            match self.next_after(t) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }

    /// The fire times in `(since, now]`: the latest to fire, the others counted as missed.
    pub fn due_between(&self, since: DateTime<Utc>, now: DateTime<Utc>) -> Due {
        let none = Due { fire_at: None, missed: 0 };
        if now <= since {
            return none;
        }
        if let Kind::Every(secs) = self.expr.kind {
            let first = since.timestamp().div_euclid(secs) + 1;
            let last = now.timestamp().div_euclid(secs);
            if last < first {
                return none;
            }
            let missed = u32::try_from(last - first).unwrap_or(u32::MAX).min(MISSED_COUNT_LIMIT);
            return Due { fire_at: last.checked_mul(secs).and_then(|t| DateTime::from_timestamp(t, 0)), missed };
        }
        let Some(fire_at) = self.latest_in(since, now) else { return none };
        let mut missed = 0;
        let mut t = since;
        while missed < MISSED_COUNT_LIMIT {
            match self.next_after(t) {
                Some(next) if next < fire_at => {
                    missed += 1;
                    t = next;
                }
                _ => break,
            }
        }
        Due { fire_at: Some(fire_at), missed }
    }

    /// The latest fire time in `(since, now]`, searching back from `now` in doubling windows so
    /// that a long downtime does not mean walking every fire time since.
    fn latest_in(&self, since: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut window = Duration::hours(1);
        loop {
            let start = now.checked_sub_signed(window).filter(|s| *s > since).unwrap_or(since);
            let mut latest = None;
            let mut t = start;
            while let Some(next) = self.next_after(t).filter(|n| *n <= now) {
                latest = Some(next);
                t = next;
            }
            if latest.is_some() || start == since {
                return latest;
            }
            window = window.checked_mul(2)?;
        }
    }

    fn local(&self, at: DateTime<Utc>) -> NaiveDateTime {
        match self.zone {
            Some(zone) => at.with_timezone(&zone).naive_local(),
            None => at.naive_utc(),
        }
    }

    /// Places a wall-clock time on the real timeline: a repeated time at its first occurrence, a
    /// skipped one at the end of the gap (the first wall-clock minute that exists again).
    fn resolve(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        let Some(zone) = self.zone else { return Some(Utc.from_utc_datetime(&local)) };
        match zone.from_local_datetime(&local) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Some(t.with_timezone(&Utc)),
            LocalResult::None => (1..=MAX_GAP_MINUTES).find_map(|m| {
                zone.from_local_datetime(&(local + Duration::minutes(m))).earliest().map(|t| t.with_timezone(&Utc))
            }),
        }
    }
}

/// The request fields a schedule copies into every backup it fires.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackupTemplate {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
    #[serde(default)]
    pub default_volumes_to_backup: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_timeout: Option<String>,
}

/// A schedule read from its ConfigMap.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    /// Namespace of its ConfigMap.
    pub namespace: String,
    pub timing: Timing,
    pub paused: bool,
    pub ttl: Option<String>,
    pub template: BackupTemplate,
    /// The ConfigMap's creationTimestamp: nothing before it fires.
    pub created: Option<DateTime<Utc>>,
}

impl Schedule {
    /// The request fired for `fire_at`.
    pub fn request(&self, fire_at: DateTime<Utc>) -> BackupRequest {
        let name = backup_name(&self.name, fire_at);
        BackupRequest {
            uid: Some(crate::handlers::event_uid("backup", &name)),
            name,
            included_namespaces: self.template.included_namespaces.clone(),
            excluded_namespaces: self.template.excluded_namespaces.clone(),
            label_selector: self.template.label_selector.clone(),
            default_volumes_to_backup: self.template.default_volumes_to_backup,
            ttl: self.ttl.clone(),
            volume_timeout: self.template.volume_timeout.clone(),
            origin: Some(format!("schedule/{}", self.name)),
        }
    }
}

/// Fire times due for a schedule whose fire times up to `last_fired` are handled (None: never
/// fired). Nothing before the schedule's creation fires; with neither a last fire time nor a
/// creation time, nothing fires now (the tick records that moment as the schedule's start).
pub fn due(schedule: &Schedule, last_fired: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Due {
    let since = match (last_fired, schedule.created) {
        (Some(a), Some(b)) => a.max(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => now,
    };
    schedule.timing.due_between(since, now)
}

/// The next `count` fire times of a schedule strictly after `after`.
pub fn next_fires(schedule: &Schedule, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
    schedule.timing.next_fires(after, count)
}

/// `<schedule>-<yyyyMMddHHmmss>` (UTC): the backup name and event id of one fire time. The
/// schedule part is lowercased and, past 48 characters, cut to 39 plus `-` and 8 hex digits of
/// its SHA-256, so the whole is a valid label value (≤ 63) and long names stay distinct.
pub fn backup_name(schedule: &str, fire_at: DateTime<Utc>) -> String {
    let schedule = schedule.to_ascii_lowercase();
    let room = MAX_NAME - STAMP_LEN;
    let prefix = if schedule.len() <= room {
        schedule
    } else {
        let digest = hex::encode(Sha256::digest(schedule.as_bytes()));
        let cut: String = schedule.chars().take(room - 9).collect();
        format!("{}-{}", cut.trim_end_matches(['-', '.']), &digest[..8])
    };
    format!("{prefix}-{}", fire_at.format("%Y%m%d%H%M%S"))
}

fn cm_meta(cm: &ConfigMap) -> (String, String) {
    (cm.metadata.namespace.clone().unwrap_or_default(), cm.metadata.name.clone().unwrap_or_default())
}

/// Reads a schedule from its ConfigMap. Outside `system_namespace` a schedule backs up only its
/// own namespace.
pub fn from_configmap(cm: &ConfigMap, system_namespace: &str) -> Result<Schedule, ScheduleError> {
    let (namespace, name) = cm_meta(cm);
    let invalid = |reason: String| ScheduleError::Invalid { namespace: namespace.clone(), name: name.clone(), reason };
    if !is_dns1123_subdomain(&name) {
        return Err(invalid(format!("{name:?} is not a valid schedule name")));
    }
    let data = cm.data.clone().unwrap_or_default();
    if let Some(unknown) = data.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
        return Err(invalid(format!("unknown data key {unknown:?} (known: {})", KNOWN_KEYS.join(", "))));
    }
    let text = |key: &str| data.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
    let expression = text(KEY_SCHEDULE).ok_or_else(|| invalid(format!("data.{KEY_SCHEDULE} is missing")))?;
    let timing = Timing::new(expression, text(KEY_TIMEZONE)).map_err(|e| invalid(e.to_string()))?;
    let paused = match text(KEY_PAUSED).map(str::to_ascii_lowercase).as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(invalid(format!("data.{KEY_PAUSED} is {other:?}; expected \"true\" or \"false\""))),
    };
    let ttl = text(KEY_TTL).map(str::to_string);
    let mut template: BackupTemplate = match text(KEY_TEMPLATE) {
        None => BackupTemplate::default(),
        Some(yaml) => serde_yaml::from_str::<Option<BackupTemplate>>(yaml)
            .map_err(|e| invalid(format!("data.{KEY_TEMPLATE}: {e}")))?
            .unwrap_or_default(),
    };
    if namespace != system_namespace {
        let own = std::slice::from_ref(&namespace);
        if template.included_namespaces.is_empty() {
            template.included_namespaces = own.to_vec();
        } else if template.included_namespaces != own {
            return Err(invalid(format!(
                "includedNamespaces {:?}: a schedule in namespace {namespace} backs up only {namespace}; declare it in {system_namespace} to back up other namespaces",
                template.included_namespaces
            )));
        }
    }
    let schedule = Schedule {
        created: cm.metadata.creation_timestamp.as_ref().and_then(|t| {
            DateTime::from_timestamp(t.0.as_second(), u32::try_from(t.0.subsec_nanosecond()).unwrap_or(0))
        }),
        name: name.clone(),
        namespace: namespace.clone(),
        timing,
        paused,
        ttl,
        template,
    };
    // The same checks as any request, on a sample of what this schedule will publish.
    let sample = schedule.request(DateTime::UNIX_EPOCH);
    request::validate(&sample).map_err(|e| match e {
        RequestError::Invalid { field: "ttl", reason } => invalid(format!("data.{KEY_TTL}: {reason}")),
        RequestError::Invalid { field, reason } => invalid(format!("data.{KEY_TEMPLATE}: {field}: {reason}")),
        other => invalid(other.to_string()),
    })?;
    Ok(schedule)
}

/// A schedule ConfigMap that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejected {
    pub namespace: String,
    pub name: String,
    pub reason: String,
}

/// Reads every schedule ConfigMap: the usable schedules (by name) and the rejected ones. Same-named
/// schedules would publish the same backup names: the system namespace's wins, then the oldest.
pub fn load(configmaps: &[ConfigMap], system_namespace: &str) -> (Vec<Schedule>, Vec<Rejected>) {
    let mut rejected = Vec::new();
    let mut by_name: BTreeMap<String, Vec<Schedule>> = BTreeMap::new();
    for cm in configmaps {
        match from_configmap(cm, system_namespace) {
            Ok(s) => by_name.entry(s.name.clone()).or_default().push(s),
            Err(e) => {
                let (namespace, name) = cm_meta(cm);
                rejected.push(Rejected { namespace, name, reason: e.to_string() });
            }
        }
    }
    let mut schedules = Vec::new();
    for (_, mut same) in by_name {
        same.sort_by_key(|s| (s.namespace != system_namespace, s.created, s.namespace.clone()));
        let mut same = same.into_iter();
        let Some(winner) = same.next() else { continue };
        for loser in same {
            rejected.push(Rejected {
                reason: format!(
                    "schedule {}/{} conflicts with {}/{}: backups are named after schedules, so schedule names must be unique across namespaces",
                    loser.namespace, loser.name, winner.namespace, winner.name
                ),
                namespace: loser.namespace,
                name: loser.name,
            });
        }
        schedules.push(winner);
    }
    (schedules, rejected)
}

/// A fire claimed in the fire state and not yet confirmed published: re-published with the same
/// id (so JetStream drops the copy) until a tick confirms it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingFire {
    pub fire_at: DateTime<Utc>,
    pub missed: u32,
    pub request: BackupRequest,
}

/// A schedule's fire state, the document in KV `coracle-schedules` under the schedule's name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FireState {
    pub schedule: String,
    pub namespace: String,
    /// The expression and zone the marks below were computed with.
    pub expression: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Every fire time at or before this instant is done: fired, missed, or skipped while paused.
    pub handled_through: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fired: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<String>,
    /// Fire times skipped as missed when `last_backup` fired.
    #[serde(default)]
    pub last_missed: u32,
    /// Fire times that passed while the schedule was paused (all time).
    #[serde(default)]
    pub skipped_while_paused: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingFire>,
    pub updated: DateTime<Utc>,
}

/// What one tick decided for one schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Nothing due and nothing to record.
    Idle,
    /// First sight of a schedule without a creation time: this tick is its start.
    Started,
    /// The expression or zone changed: counting restarts.
    Rebaselined,
    /// Fire times passed while paused: recorded as handled, nothing published.
    SkippedPaused { fire_at: DateTime<Utc>, count: u64 },
    /// Fire this request (the most recent due time; `missed` older ones skipped).
    Fire(PendingFire),
    /// An earlier fire is claimed but not confirmed published: publish it (same id) and clear it
    /// before deciding anything else.
    Unconfirmed(PendingFire),
}

/// The state to write (None: leave it) and what it means.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub state: Option<FireState>,
    pub outcome: Outcome,
}

/// Decides one tick for one schedule from its stored state (None: never seen). The caller writes
/// `state` with compare-and-set and publishes only if its write won. A pending fire is never
/// replaced: it comes back as `Unconfirmed` until the caller has published and cleared it.
pub fn evaluate(schedule: &Schedule, state: Option<&FireState>, now: DateTime<Utc>) -> Evaluation {
    if let Some(pending) = state.and_then(|s| s.pending.clone()) {
        return Evaluation { state: None, outcome: Outcome::Unconfirmed(pending) };
    }
    let zone = schedule.timing.zone_name().map(str::to_string);
    let expression = schedule.timing.expr.source().to_string();
    let changed = state.is_some_and(|s| s.expression != expression || s.timezone != zone);
    let lookback = now - Duration::seconds(REBASELINE_LOOKBACK_SECONDS);
    let since = state.map(|s| if changed { s.handled_through.max(lookback) } else { s.handled_through });
    let d = due(schedule, since, now);
    let base = || FireState {
        schedule: schedule.name.clone(),
        namespace: schedule.namespace.clone(),
        expression: expression.clone(),
        timezone: zone.clone(),
        handled_through: since.unwrap_or(now),
        last_fired: None,
        last_backup: None,
        last_missed: 0,
        skipped_while_paused: 0,
        pending: None,
        updated: now,
    };
    let mut next = state.cloned().map_or_else(base, |mut s| {
        s.namespace = schedule.namespace.clone();
        s.expression = expression.clone();
        s.timezone = zone.clone();
        s.handled_through = since.unwrap_or(now);
        s.updated = now;
        s
    });
    let Some(fire_at) = d.fire_at else {
        return match state {
            None if schedule.created.is_none() => Evaluation { state: Some(next), outcome: Outcome::Started },
            Some(_) if changed => Evaluation { state: Some(next), outcome: Outcome::Rebaselined },
            _ => Evaluation { state: None, outcome: Outcome::Idle },
        };
    };
    next.handled_through = fire_at;
    if schedule.paused {
        let count = u64::from(d.missed) + 1;
        next.skipped_while_paused = next.skipped_while_paused.saturating_add(count);
        return Evaluation { state: Some(next), outcome: Outcome::SkippedPaused { fire_at, count } };
    }
    let pending = PendingFire { fire_at, missed: d.missed, request: schedule.request(fire_at) };
    next.last_fired = Some(fire_at);
    next.last_backup = Some(pending.request.name.clone());
    next.last_missed = d.missed;
    next.pending = Some(pending.clone());
    Evaluation { state: Some(next), outcome: Outcome::Fire(pending) }
}

/// The `coracle.backup.requested` event of a fire: id = backup name (so a re-publication is
/// dropped by the stream), `time` = the fire time, `origin` = `schedule/<name>`, and extension
/// attributes `schedule`, `scheduledtime` and `missed` (older fire times skipped by this catch-up).
pub fn request_event(fire: &PendingFire) -> CloudEvent<BackupRequest> {
    let name = fire.request.name.clone();
    let mut event = CloudEvent::new(name.clone(), function_source(TICK_FUNCTION), Some(name), fire.request.clone());
    event.time = Some(fire.fire_at);
    let schedule = fire.request.origin.as_deref().and_then(|o| o.strip_prefix("schedule/")).unwrap_or_default();
    event.extensions.insert("schedule".into(), json!(schedule));
    event
        .extensions
        .insert("scheduledtime".into(), json!(fire.fire_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
    event.extensions.insert("missed".into(), json!(fire.missed));
    event
}
