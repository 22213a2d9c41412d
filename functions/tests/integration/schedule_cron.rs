//! Cron semantics on a table of cases (SPEC §8): every expression form, month ends, leap years,
//! daylight-saving gaps and overlaps in a named zone, `@every` alignment, weekday numbering, catch-up
//! after downtime, invalid expressions, and `coracle schedule next` as the CLI contract (SPEC §9).

use chrono::{DateTime, SecondsFormat, Utc};
use coracle_functions::schedule::{due, BackupTemplate, Due, Schedule, Timing, MISSED_COUNT_LIMIT};
use std::process::Command;

fn t(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{text}: {e}")).with_timezone(&Utc)
}

fn fmt(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn timing(expr: &str, zone: Option<&str>) -> Timing {
    Timing::new(expr, zone).unwrap_or_else(|e| panic!("{expr} ({zone:?}): {e}"))
}

/// The next fire times in UTC.
fn fires(expr: &str, zone: Option<&str>, after: &str, count: usize) -> Vec<String> {
    timing(expr, zone).next_fires(t(after), count).into_iter().map(fmt).collect()
}

#[test]
fn every_form_fires_when_expected() {
    // (expression, zone, after, expected fire times in UTC)
    let cases: &[(&str, Option<&str>, &str, &[&str])] = &[
        // Steps, lists and ranges in the 5-field crontab.
        (
            "*/15 * * * *",
            None,
            "2026-01-01T00:07:00Z",
            &["2026-01-01T00:15:00Z", "2026-01-01T00:30:00Z", "2026-01-01T00:45:00Z", "2026-01-01T01:00:00Z"],
        ),
        (
            "5,35 9-10 * * *",
            None,
            "2026-01-01T09:10:00Z",
            &["2026-01-01T09:35:00Z", "2026-01-01T10:05:00Z", "2026-01-01T10:35:00Z", "2026-01-02T09:05:00Z"],
        ),
        // `N/step` means N-max/step, as in Kubernetes CronJobs.
        (
            "10/20 0 * * *",
            None,
            "2026-01-01T00:00:00Z",
            &["2026-01-01T00:10:00Z", "2026-01-01T00:30:00Z", "2026-01-01T00:50:00Z", "2026-01-02T00:10:00Z"],
        ),
        // Month names.
        ("0 0 1 JAN,jul *", None, "2026-01-01T00:00:00Z", &["2026-07-01T00:00:00Z", "2027-01-01T00:00:00Z"]),
        // Strictly after: a fire time equal to `after` is not repeated.
        ("0 12 * * *", None, "2026-01-01T12:00:00Z", &["2026-01-02T12:00:00Z"]),
        // Macros.
        ("@hourly", None, "2026-01-01T10:20:00Z", &["2026-01-01T11:00:00Z", "2026-01-01T12:00:00Z"]),
        ("@daily", None, "2026-01-01T10:20:00Z", &["2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"]),
        ("@midnight", None, "2026-01-01T10:20:00Z", &["2026-01-02T00:00:00Z"]),
        // 2026-01-01 is a Thursday: @weekly is Sunday midnight.
        ("@weekly", None, "2026-01-01T10:20:00Z", &["2026-01-04T00:00:00Z", "2026-01-11T00:00:00Z"]),
        ("@monthly", None, "2026-01-01T10:20:00Z", &["2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z"]),
        ("@yearly", None, "2026-01-01T10:20:00Z", &["2027-01-01T00:00:00Z", "2028-01-01T00:00:00Z"]),
        ("@annually", None, "2026-01-01T10:20:00Z", &["2027-01-01T00:00:00Z"]),
        ("@DAILY", None, "2026-01-01T10:20:00Z", &["2026-01-02T00:00:00Z"]),
        // A macro read in a zone: midnight in New York is 05:00 UTC in winter.
        ("@daily", Some("America/New_York"), "2026-01-01T10:20:00Z", &["2026-01-02T05:00:00Z"]),
        // Month ends: the 31st skips the short months.
        (
            "0 0 31 * *",
            None,
            "2026-01-01T00:00:00Z",
            &[
                "2026-01-31T00:00:00Z",
                "2026-03-31T00:00:00Z",
                "2026-05-31T00:00:00Z",
                "2026-07-31T00:00:00Z",
                "2026-08-31T00:00:00Z",
                "2026-10-31T00:00:00Z",
            ],
        ),
        ("0 0 30 * *", None, "2026-01-31T00:00:00Z", &["2026-03-30T00:00:00Z"]),
        // Leap years: February 29th only in leap years; 2100 is not one.
        (
            "0 0 29 2 *",
            None,
            "2026-01-01T00:00:00Z",
            &["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z", "2036-02-29T00:00:00Z"],
        ),
        ("0 0 29 2 *", None, "2095-01-01T00:00:00Z", &["2096-02-29T00:00:00Z"]),
        (
            "0 0 28-29 2 *",
            None,
            "2027-02-28T00:00:00Z",
            &["2028-02-28T00:00:00Z", "2028-02-29T00:00:00Z", "2029-02-28T00:00:00Z"],
        ),
        // Weekdays: 0 and 7 are both Sunday, names work, ranges and steps use crontab numbering.
        ("0 12 * * 0", None, "2026-01-01T00:00:00Z", &["2026-01-04T12:00:00Z", "2026-01-11T12:00:00Z"]),
        ("0 12 * * 7", None, "2026-01-01T00:00:00Z", &["2026-01-04T12:00:00Z", "2026-01-11T12:00:00Z"]),
        ("0 12 * * sun", None, "2026-01-01T00:00:00Z", &["2026-01-04T12:00:00Z"]),
        ("0 12 * * 1", None, "2026-01-01T00:00:00Z", &["2026-01-05T12:00:00Z"]),
        ("0 12 * * 6", None, "2026-01-01T00:00:00Z", &["2026-01-03T12:00:00Z"]),
        (
            "0 12 * * MON-FRI",
            None,
            "2026-01-02T13:00:00Z",
            &[
                "2026-01-05T12:00:00Z",
                "2026-01-06T12:00:00Z",
                "2026-01-07T12:00:00Z",
                "2026-01-08T12:00:00Z",
                "2026-01-09T12:00:00Z",
                "2026-01-12T12:00:00Z",
            ],
        ),
        ("0 12 * * 1-5", None, "2026-01-02T13:00:00Z", &["2026-01-05T12:00:00Z", "2026-01-06T12:00:00Z"]),
        // Friday through Sunday, Sunday given as 7.
        (
            "0 12 * * 5-7",
            None,
            "2026-01-01T13:00:00Z",
            &["2026-01-02T12:00:00Z", "2026-01-03T12:00:00Z", "2026-01-04T12:00:00Z", "2026-01-09T12:00:00Z"],
        ),
        (
            "0 12 * * 1-5/2",
            None,
            "2026-01-04T13:00:00Z",
            &["2026-01-05T12:00:00Z", "2026-01-07T12:00:00Z", "2026-01-09T12:00:00Z", "2026-01-12T12:00:00Z"],
        ),
        // `*/2` on weekdays: Sunday, Tuesday, Thursday, Saturday.
        (
            "0 12 * * */2",
            None,
            "2026-01-01T13:00:00Z",
            &["2026-01-03T12:00:00Z", "2026-01-04T12:00:00Z", "2026-01-06T12:00:00Z", "2026-01-08T12:00:00Z"],
        ),
        // Both day fields restricted: either matches (the 13th, and every Friday).
        (
            "0 0 13 * FRI",
            None,
            "2026-01-01T00:00:00Z",
            &["2026-01-02T00:00:00Z", "2026-01-09T00:00:00Z", "2026-01-13T00:00:00Z", "2026-01-16T00:00:00Z"],
        ),
        // One day field unrestricted: both must match (Mondays in March).
        ("0 0 * 3 MON", None, "2026-01-01T00:00:00Z", &["2026-03-02T00:00:00Z", "2026-03-09T00:00:00Z"]),
        // `@every`: multiples of the interval since the Unix epoch, whatever the zone.
        (
            "@every 90m",
            None,
            "2026-01-01T00:00:00Z",
            &["2026-01-01T01:30:00Z", "2026-01-01T03:00:00Z", "2026-01-01T04:30:00Z"],
        ),
        ("@every 90m", None, "2026-01-01T00:10:00Z", &["2026-01-01T01:30:00Z"]),
        ("@every 90m", Some("Asia/Kolkata"), "2026-01-01T00:10:00Z", &["2026-01-01T01:30:00Z"]),
        ("@every 25m", None, "2026-01-01T00:00:00Z", &["2026-01-01T00:15:00Z", "2026-01-01T00:40:00Z"]),
        (
            "@every 7h",
            None,
            "2026-01-02T00:00:00Z",
            &["2026-01-02T04:00:00Z", "2026-01-02T11:00:00Z", "2026-01-02T18:00:00Z"],
        ),
        ("@every 1h30m", None, "2026-01-01T01:29:59Z", &["2026-01-01T01:30:00Z"]),
    ];
    for (expr, zone, after, expected) in cases {
        let got = fires(expr, *zone, after, expected.len());
        assert_eq!(&got, expected, "{expr} in {zone:?} after {after}");
    }
}

#[test]
fn spring_forward_gap_fires_once_at_the_end_of_the_gap() {
    // Europe/Berlin 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC). 02:30 does not exist.
    let berlin = Some("Europe/Berlin");
    assert_eq!(
        fires("30 2 * * *", berlin, "2026-03-27T12:00:00Z", 3),
        ["2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"],
        "02:30 CET, then 03:00 CEST on the day of the jump (once), then 02:30 CEST"
    );
    // Several times inside the gap, and 03:00 itself, still fire once at the transition.
    assert_eq!(
        fires("*/30 * * * *", berlin, "2026-03-29T00:40:00Z", 3),
        ["2026-03-29T01:00:00Z", "2026-03-29T01:30:00Z", "2026-03-29T02:00:00Z"]
    );
    assert_eq!(
        fires("15 2 29 3 *", berlin, "2026-01-01T00:00:00Z", 2),
        ["2026-03-29T01:00:00Z", "2027-03-29T00:15:00Z"]
    );
    // A time just before the gap is unaffected.
    assert_eq!(
        fires("59 1 * * *", berlin, "2026-03-28T12:00:00Z", 2),
        ["2026-03-29T00:59:00Z", "2026-03-29T23:59:00Z"]
    );
    // New York springs forward at 02:00 EST to 03:00 EDT on 2026-03-08 (07:00 UTC).
    assert_eq!(
        fires("30 2 * * *", Some("America/New_York"), "2026-03-07T12:00:00Z", 3),
        ["2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z", "2026-03-10T06:30:00Z"]
    );
}

#[test]
fn fall_back_overlap_fires_once_at_the_first_occurrence() {
    // Europe/Berlin 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens at 00:30 and 01:30 UTC.
    let berlin = Some("Europe/Berlin");
    assert_eq!(
        fires("30 2 * * *", berlin, "2026-10-24T12:00:00Z", 3),
        ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z", "2026-10-27T01:30:00Z"],
        "02:30 fires at its first occurrence only"
    );
    // Hourly: 02:00 CEST (00:00 UTC), then the repeated hour fires nothing, then 03:00 CET (02:00 UTC).
    assert_eq!(
        fires("0 * * * *", berlin, "2026-10-24T23:30:00Z", 3),
        ["2026-10-25T00:00:00Z", "2026-10-25T02:00:00Z", "2026-10-25T03:00:00Z"]
    );
    // Asked from inside the repeated hour (02:10 CET), nothing fires until 03:00 CET.
    assert_eq!(
        fires("*/20 * * * *", berlin, "2026-10-25T01:10:00Z", 2),
        ["2026-10-25T02:00:00Z", "2026-10-25T02:20:00Z"]
    );
    // From inside the first pass (02:10 CEST), the rest of that pass fires.
    assert_eq!(
        fires("*/20 * * * *", berlin, "2026-10-25T00:10:00Z", 3),
        ["2026-10-25T00:20:00Z", "2026-10-25T00:40:00Z", "2026-10-25T02:00:00Z"]
    );
}

fn schedule(expr: &str, zone: Option<&str>, created: Option<&str>) -> Schedule {
    Schedule {
        name: "nightly".into(),
        namespace: "coracle-system".into(),
        timing: timing(expr, zone),
        paused: false,
        ttl: None,
        template: BackupTemplate::default(),
        created: created.map(t),
    }
}

fn due_at(s: &Schedule, last: Option<&str>, now: &str) -> Due {
    due(s, last.map(t), t(now))
}

#[test]
fn catch_up_fires_the_most_recent_missed_time_once_and_counts_the_rest() {
    let hourly = schedule("0 * * * *", None, Some("2026-01-01T00:00:00Z"));
    // Down from 10:00 until 13:20: 11:00 and 12:00 were missed, 13:00 fires.
    assert_eq!(
        due_at(&hourly, Some("2026-01-01T10:00:00Z"), "2026-01-01T13:20:00Z"),
        Due { fire_at: Some(t("2026-01-01T13:00:00Z")), missed: 2 }
    );
    // On time: nothing missed.
    assert_eq!(
        due_at(&hourly, Some("2026-01-01T12:00:00Z"), "2026-01-01T13:00:00Z"),
        Due { fire_at: Some(t("2026-01-01T13:00:00Z")), missed: 0 }
    );
    // Never a time at or before the last one fired: the same minute again, or an early (skewed) tick.
    assert_eq!(due_at(&hourly, Some("2026-01-01T13:00:00Z"), "2026-01-01T13:00:00Z"), Due { fire_at: None, missed: 0 });
    assert_eq!(due_at(&hourly, Some("2026-01-01T13:00:00Z"), "2026-01-01T13:59:59Z"), Due { fire_at: None, missed: 0 });
    assert_eq!(due_at(&hourly, Some("2026-01-01T13:00:00Z"), "2026-01-01T12:55:00Z"), Due { fire_at: None, missed: 0 });
    // A late tick (5 minutes) still fires its time, once.
    assert_eq!(
        due_at(&hourly, Some("2026-01-01T13:00:00Z"), "2026-01-01T14:05:00Z"),
        Due { fire_at: Some(t("2026-01-01T14:00:00Z")), missed: 0 }
    );

    // A brand-new schedule: nothing from before its creation.
    let new = schedule("0 * * * *", None, Some("2026-01-01T10:01:00Z"));
    assert_eq!(due_at(&new, None, "2026-01-01T10:59:00Z"), Due { fire_at: None, missed: 0 });
    assert_eq!(due_at(&new, None, "2026-01-01T11:00:00Z"), Due { fire_at: Some(t("2026-01-01T11:00:00Z")), missed: 0 });
    assert_eq!(due_at(&new, None, "2026-01-01T13:30:00Z"), Due { fire_at: Some(t("2026-01-01T13:00:00Z")), missed: 2 });
    // Without a creation time or a last fire, a first tick fires nothing.
    let unknown = schedule("* * * * *", None, None);
    assert_eq!(due_at(&unknown, None, "2026-01-01T13:30:00Z"), Due { fire_at: None, missed: 0 });
    // A fire state older than the creation (a re-created schedule) counts from the creation.
    assert_eq!(
        due_at(&new, Some("2025-06-01T00:00:00Z"), "2026-01-01T12:10:00Z"),
        Due { fire_at: Some(t("2026-01-01T12:00:00Z")), missed: 1 }
    );

    // Sparse and dense schedules after long downtimes.
    let daily = schedule("30 2 * * *", Some("Europe/Berlin"), Some("2025-01-01T00:00:00Z"));
    assert_eq!(
        due_at(&daily, Some("2026-03-20T01:30:00Z"), "2026-03-30T12:00:00Z"),
        Due { fire_at: Some(t("2026-03-30T00:30:00Z")), missed: 9 },
        "March 21st to 29th missed, the 29th at the end of the DST gap among them"
    );
    let minutely = schedule("* * * * *", None, Some("2025-01-01T00:00:00Z"));
    assert_eq!(
        due_at(&minutely, Some("2026-01-01T00:00:00Z"), "2026-01-08T00:00:30Z"),
        Due { fire_at: Some(t("2026-01-08T00:00:00Z")), missed: 7 * 1440 - 1 }
    );
    let yearly = schedule("@yearly", None, Some("2020-01-01T00:00:00Z"));
    assert_eq!(
        due_at(&yearly, Some("2021-01-01T00:00:00Z"), "2026-07-01T00:00:00Z"),
        Due { fire_at: Some(t("2026-01-01T00:00:00Z")), missed: 4 }
    );
    // `@every` counts arithmetically.
    let every = schedule("@every 90m", None, Some("2025-01-01T00:00:00Z"));
    assert_eq!(
        due_at(&every, Some("2026-01-01T00:00:00Z"), "2026-01-01T06:10:00Z"),
        Due { fire_at: Some(t("2026-01-01T06:00:00Z")), missed: 3 }
    );
    assert_eq!(due_at(&every, Some("2026-01-01T06:00:00Z"), "2026-01-01T07:29:59Z"), Due { fire_at: None, missed: 0 });
}

#[test]
fn missed_counts_stop_at_the_limit() {
    let minutely = schedule("* * * * *", None, Some("2020-01-01T00:00:00Z"));
    let started = std::time::Instant::now();
    let d = due_at(&minutely, Some("2024-01-01T00:00:00Z"), "2026-01-01T00:00:10Z");
    assert_eq!(d, Due { fire_at: Some(t("2026-01-01T00:00:00Z")), missed: MISSED_COUNT_LIMIT });
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "took {:?}", started.elapsed());
    let every = schedule("@every 1m", None, Some("1990-01-01T00:00:00Z"));
    assert_eq!(due_at(&every, Some("1990-01-01T00:00:00Z"), "2026-01-01T00:00:10Z").missed, MISSED_COUNT_LIMIT);
}

#[test]
fn invalid_expressions_show_the_expression_and_the_problem() {
    let cases: &[(&str, &str)] = &[
        ("", "empty; expected 5 crontab fields"),
        ("   ", "empty"),
        ("61 * * * *", "minute field \"61\": 61 is out of range 0-59"),
        ("0 24 * * *", "hour field \"24\": 24 is out of range 0-23"),
        ("0 0 0 * *", "day-of-month field \"0\": 0 is out of range 1-31"),
        ("0 0 1 13 *", "month field \"13\": 13 is out of range 1-12"),
        ("0 0 * * 8", "day-of-week field \"8\": 8 is out of range 0-7"),
        (
            "0 0 * * FOO",
            "day-of-week field \"FOO\": \"FOO\" is neither a number nor one of SUN MON TUE WED THU FRI SAT",
        ),
        ("0 0 1 JANUARY *", "month field \"JANUARY\": \"JANUARY\" is neither a number nor one of JAN"),
        ("x * * * *", "minute field \"x\": \"x\" is not a number"),
        ("* * * *", "expected 5 fields (minute hour day-of-month month day-of-week), found 4"),
        ("0 0 0 * * *", "found 6 (seconds and years are not supported)"),
        ("*/0 * * * *", "minute field \"*/0\": step \"0\" in \"*/0\" must be a positive number"),
        ("*/x * * * *", "step \"x\""),
        ("5-1 * * * *", "minute field \"5-1\": range \"5-1\" runs backwards (5 > 1)"),
        ("0 0 * * SAT-SUN", "range \"SAT-SUN\" runs backwards (6 > 0)"),
        ("1,,2 * * * *", "minute field \"1,,2\": empty entry in the list"),
        ("1- * * * *", "a value is missing"),
        ("0 0 31 2 *", "it never fires: no calendar date matches"),
        ("0 0 30,31 2 *", "it never fires"),
        ("@every", "@every needs a duration, such as @every 90m"),
        ("@every 30s", "interval 30s is shorter than one minute"),
        ("@every 90", "missing unit after \"90\""),
        ("@every 1d", "unknown unit \"d\""),
        ("@every 90.5s", "interval 90.5s is not a whole number of seconds"),
        ("@reboot", "@reboot is not supported"),
        ("@fortnightly", "unknown macro @fortnightly: expected @hourly, @daily"),
        ("@everyday", "unknown macro @everyday"),
        ("TZ=Europe/Berlin 0 2 * * *", "give the time zone separately"),
        ("CRON_TZ=UTC 0 2 * * *", "give the time zone separately"),
    ];
    for (expr, fragment) in cases {
        let e = Timing::new(expr, None).expect_err(expr).to_string();
        assert!(e.starts_with(&format!("invalid schedule {expr:?}: ")), "{expr:?}: {e}");
        assert!(e.contains(fragment), "{expr:?}: {e}\n  wanted: {fragment}");
    }
    let e = Timing::new("0 2 * * *", Some("Europe/Berln")).expect_err("bad zone").to_string();
    assert_eq!(
        e,
        "unknown time zone \"Europe/Berln\": expected an IANA name such as Europe/Berlin, America/New_York or UTC"
    );
    // Valid zones, and no zone, are fine; blank means none.
    for zone in ["UTC", "Etc/UTC", "Europe/Berlin", "America/Sao_Paulo", "Asia/Kathmandu", " "] {
        Timing::new("0 2 * * *", Some(zone)).unwrap_or_else(|e| panic!("{zone}: {e}"));
    }
}

fn coracle(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_coracle")).args(args).output().expect("running coracle")
}

#[test]
fn schedule_next_prints_one_rfc3339_time_per_line() {
    let out =
        coracle(&["schedule", "next", "--cron", "0 3 * * MON-FRI", "--after", "2026-01-02T12:00:00Z", "--count", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2026-01-05T03:00:00Z\n2026-01-06T03:00:00Z\n2026-01-07T03:00:00Z\n"
    );

    // With a zone: the zone's offsets, across the spring-forward change.
    let out = coracle(&[
        "schedule",
        "next",
        "--cron",
        "30 2 * * *",
        "--tz",
        "Europe/Berlin",
        "--after",
        "2026-03-28T00:00:00+01:00",
        "--count",
        "3",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(stdout, "2026-03-28T02:30:00+01:00\n2026-03-29T03:00:00+02:00\n2026-03-30T02:30:00+02:00\n");
    for line in stdout.lines() {
        DateTime::parse_from_rfc3339(line).unwrap_or_else(|e| panic!("{line:?} is not RFC 3339: {e}"));
    }
    // `--utc` prints the same instants in UTC.
    let out = coracle(&[
        "schedule",
        "next",
        "--cron",
        "30 2 * * *",
        "--tz",
        "Europe/Berlin",
        "--after",
        "2026-03-28T00:00:00+01:00",
        "--count",
        "3",
        "--utc",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2026-03-28T01:30:00Z\n2026-03-29T01:00:00Z\n2026-03-30T00:30:00Z\n"
    );

    let out = coracle(&["schedule", "next", "--cron", "@every 90m", "--after", "2026-01-01T00:00:00Z", "--count", "2"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2026-01-01T01:30:00Z\n2026-01-01T03:00:00Z\n");

    // Errors go to stderr with the expression and the problem, and the exit code says so.
    let out = coracle(&["schedule", "next", "--cron", "0 0 31 2 *", "--after", "2026-01-01T00:00:00Z", "--count", "2"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid schedule \"0 0 31 2 *\": it never fires"), "{stderr}");
    let out = coracle(&["schedule", "next", "--cron", "@daily", "--after", "yesterday", "--count", "2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--after \"yesterday\" is not an RFC 3339 time"));
    let out = coracle(&[
        "schedule",
        "next",
        "--cron",
        "@daily",
        "--tz",
        "Mars/Olympus",
        "--after",
        "2026-01-01T00:00:00Z",
        "--count",
        "1",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown time zone \"Mars/Olympus\""));
}
