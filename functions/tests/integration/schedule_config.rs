//! Schedules as declared (SPEC §8): ConfigMaps labelled `coracle.dev/schedule` and what
//! `coracle schedule create` writes, the namespace rule, same-name conflicts, backup names, and the
//! `coracle schedule get` output.

use chrono::{DateTime, Utc};
use clap::Parser;
use coracle_functions::cli::Format;
use coracle_functions::schedule::{backup_name, from_configmap, load, BackupTemplate, FireState, Schedule};
use coracle_functions::schedule_cli::{configmap_for, render_views, views, ScheduleCommand};
use k8s_openapi::api::core::v1::ConfigMap;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

const SYSTEM: &str = "coracle-system";

fn t(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{text}: {e}")).with_timezone(&Utc)
}

fn configmaps(path: &str) -> Vec<ConfigMap> {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| ConfigMap::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", full.display())))
        .collect()
}

fn by_name(cms: &[ConfigMap], name: &str) -> Schedule {
    let cm = cms.iter().find(|c| c.metadata.name.as_deref() == Some(name)).unwrap_or_else(|| panic!("no {name}"));
    from_configmap(cm, SYSTEM).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn valid_schedule_configmaps() {
    let cms = configmaps("tests/fixtures/schedules/valid.yaml");
    let nightly = by_name(&cms, "nightly");
    assert_eq!((nightly.name.as_str(), nightly.namespace.as_str()), ("nightly", SYSTEM));
    assert_eq!(nightly.timing.expr.source(), "30 2 * * *");
    assert_eq!(nightly.timing.zone_name(), Some("Europe/Berlin"));
    assert!(!nightly.paused);
    assert_eq!(nightly.ttl.as_deref(), Some("168h"));
    assert_eq!(nightly.created, Some(t("2026-01-01T00:00:00Z")));
    assert_eq!(
        nightly.template,
        BackupTemplate {
            included_namespaces: vec!["shop".into(), "media".into()],
            excluded_namespaces: vec!["kube-system".into()],
            label_selector: Some("tier in (web,db),!ephemeral".into()),
            default_volumes_to_backup: true,
            volume_timeout: Some("2h".into()),
        }
    );
    // The request a fire sends: the template, the TTL, the name, a uid derived from the name, the origin.
    let request = nightly.request(t("2026-03-29T01:00:00Z"));
    assert_eq!(request.name, "nightly-20260329010000");
    assert_eq!(
        request.uid.as_deref(),
        Some(coracle_functions::handlers::event_uid("backup", "nightly-20260329010000").as_str())
    );
    assert_eq!(request.origin.as_deref(), Some("schedule/nightly"));
    assert_eq!(request.included_namespaces, ["shop", "media"]);
    assert_eq!(request.excluded_namespaces, ["kube-system"]);
    assert_eq!(request.label_selector.as_deref(), Some("tier in (web,db),!ephemeral"));
    assert!(request.default_volumes_to_backup);
    assert_eq!((request.ttl.as_deref(), request.volume_timeout.as_deref()), (Some("168h"), Some("2h")));
    coracle_functions::request::validate(&request).expect("a fired request is valid");

    // Outside the system namespace: only that namespace, whether implicit or named.
    let shop = by_name(&cms, "shop-hourly");
    assert_eq!(shop.template.included_namespaces, ["shop"]);
    assert_eq!(shop.timing.zone, None);
    assert_eq!(shop.request(t("2026-02-01T11:00:00Z")).included_namespaces, ["shop"]);
    let media = by_name(&cms, "media-every-90m");
    assert!(media.paused, "paused: \"TRUE\"");
    assert_eq!(media.template.included_namespaces, ["media"]);
    assert_eq!(media.created, None);

    // The documented example is valid too.
    let example = configmaps("../deploy/examples/schedule.yaml");
    assert_eq!(example.len(), 1);
    let s = from_configmap(&example[0], SYSTEM).expect("deploy/examples/schedule.yaml");
    assert_eq!(
        (s.name.as_str(), s.timing.expr.source(), s.timing.zone_name()),
        ("nightly", "30 2 * * *", Some("Europe/Berlin"))
    );
    assert_eq!(
        s.timing.next_fires(t("2026-03-28T12:00:00Z"), 2),
        [t("2026-03-29T01:00:00Z"), t("2026-03-30T00:30:00Z")]
    );
}

#[test]
fn invalid_schedule_configmaps_say_what_is_wrong() {
    let cms = configmaps("tests/fixtures/schedules/invalid.yaml");
    assert!(cms.len() >= 12);
    for cm in &cms {
        let name = cm.metadata.name.clone().unwrap_or_default();
        let expect =
            cm.metadata.annotations.as_ref().and_then(|a| a.get("expect")).cloned().expect("expect annotation");
        let e = from_configmap(cm, SYSTEM).expect_err(&name).to_string();
        assert!(e.contains(&expect), "{name}: {e}\n  wanted: {expect}");
        let namespace = cm.metadata.namespace.clone().unwrap_or_default();
        assert!(e.starts_with(&format!("schedule {namespace}/{name}: ")), "{e}");
    }
    // `load` keeps going past them and reports each.
    let (schedules, rejected) = load(&cms, SYSTEM);
    assert!(schedules.is_empty());
    assert_eq!(rejected.len(), cms.len());
}

#[test]
fn same_named_schedules_conflict_and_one_wins() {
    let cms = configmaps("tests/fixtures/schedules/conflicts.yaml");
    let (schedules, rejected) = load(&cms, SYSTEM);
    let winners: Vec<(String, String)> = schedules.iter().map(|s| (s.name.clone(), s.namespace.clone())).collect();
    assert_eq!(winners, [("daily".to_string(), SYSTEM.to_string()), ("weekly".to_string(), "shop".to_string())]);
    let losers: BTreeMap<String, String> =
        rejected.iter().map(|r| (format!("{}/{}", r.namespace, r.name), r.reason.clone())).collect();
    assert_eq!(losers.len(), 2);
    assert!(losers["shop/daily"].contains("conflicts with coracle-system/daily"), "{losers:?}");
    assert!(losers["media/weekly"].contains("conflicts with shop/weekly"), "{losers:?}");
    assert!(losers["media/weekly"].contains("schedule names must be unique across namespaces"));
}

#[test]
fn backup_names_are_valid_kubernetes_names_of_at_most_63_characters() {
    let at = t("2026-03-29T01:00:00Z");
    assert_eq!(backup_name("nightly", at), "nightly-20260329010000");
    // Second resolution, UTC whatever the schedule's zone.
    assert_eq!(backup_name("db.hourly", t("2026-12-31T23:59:07+00:00")), "db.hourly-20261231235907");
    assert_eq!(backup_name("Nightly", at), "nightly-20260329010000");
    // Exactly 48 characters of schedule name still fit whole.
    let fits = "a".repeat(48);
    assert_eq!(backup_name(&fits, at), format!("{fits}-20260329010000"));
    assert_eq!(backup_name(&fits, at).len(), 63);
    // Longer: cut, with a hash of the whole name, deterministically.
    let long = "a-very-long-schedule-name-for-the-production-database-cluster-nightly";
    assert_eq!(backup_name(long, at), "a-very-long-schedule-name-for-the-produ-f4c48fa8-20260329010000");
    assert_eq!(backup_name(long, at), backup_name(long, at));
    let sibling = "a-very-long-schedule-name-for-the-production-database-cluster-weekly";
    assert_ne!(backup_name(long, at), backup_name(sibling, at), "long names sharing a prefix stay distinct");
    // A cut that would end in '-' or '.' drops it.
    let dashed = format!("{}-{}", "b".repeat(38), "c".repeat(30));
    let name = backup_name(&dashed, at);
    assert!(name.starts_with(&format!("{}-", "b".repeat(38))) && !name.contains("--"), "{name}");
    for name in [backup_name(long, at), backup_name(&dashed, at), backup_name(&"x.y".repeat(80), at)] {
        assert!(name.len() <= 63, "{name}");
        assert!(coracle_functions::selector::is_dns1123_subdomain(&name), "{name}");
        assert!(name.ends_with("-20260329010000"), "{name}");
    }
}

fn create_args(args: &[&str]) -> coracle_functions::schedule_cli::CreateArgs {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: ScheduleCommand,
    }
    let argv = ["coracle-schedule", "create"].iter().chain(args).copied();
    match Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{args:?}: {e}")).command {
        ScheduleCommand::Create(c) => c,
        _ => panic!("not create"),
    }
}

#[test]
fn cli_create_writes_the_configmap_the_tick_reads() {
    let args = create_args(&[
        "weekly-db",
        "--cron",
        "0 3 * * SUN",
        "--tz",
        "America/New_York",
        "--namespace",
        "shop",
        "--namespace",
        "media,billing",
        "--selector",
        "app=db",
        "--ttl",
        "2160h",
        "--volume-timeout",
        "1h",
        "--default-volumes",
        "--paused",
    ]);
    let cm = configmap_for(&args).expect("valid");
    assert_eq!(cm.metadata.namespace.as_deref(), Some(SYSTEM));
    assert_eq!(
        cm.metadata.labels.as_ref().and_then(|l| l.get("coracle.dev/schedule")).map(String::as_str),
        Some("true")
    );
    let data = cm.data.clone().unwrap_or_default();
    assert_eq!(data["schedule"], "0 3 * * SUN");
    assert_eq!(data["timezone"], "America/New_York");
    assert_eq!(data["paused"], "true");
    assert_eq!(data["ttl"], "2160h");
    let s = from_configmap(&cm, SYSTEM).expect("reads back");
    assert!(s.paused);
    assert_eq!(s.template.included_namespaces, ["shop", "media", "billing"]);
    assert_eq!(s.template.label_selector.as_deref(), Some("app=db"));
    assert!(s.template.default_volumes_to_backup);
    assert_eq!(s.template.volume_timeout.as_deref(), Some("1h"));

    // Minimal: no template key at all, not paused.
    let cm = configmap_for(&create_args(&["hourly", "--cron", "@hourly"])).expect("valid");
    let data = cm.data.unwrap_or_default();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["paused", "schedule"]);
    assert_eq!(data["paused"], "false");

    // Refused before anything is written, with the reason.
    for (args, fragment) in [
        (
            vec!["bad", "--cron", "0 0 * * 9"],
            "invalid schedule \"0 0 * * 9\": day-of-week field \"9\": 9 is out of range 0-7",
        ),
        (vec!["bad", "--cron", "@daily", "--tz", "Moon/Base"], "unknown time zone \"Moon/Base\""),
        (vec!["Bad_Name", "--cron", "@daily"], "\"Bad_Name\" is not a valid schedule name"),
        (vec!["bad", "--cron", "@daily", "--selector", "a in (b"], "labelSelector: invalid label selector"),
        (
            vec!["bad", "--cron", "@daily", "--namespace", "Shop"],
            "includedNamespaces: \"Shop\" is not a namespace name",
        ),
        (vec!["bad", "--cron", "@daily", "--ttl", "1y"], "data.ttl: invalid duration \"1y\""),
    ] {
        let e = configmap_for(&create_args(&args)).expect_err(&format!("{args:?}")).to_string();
        assert!(e.contains(fragment), "{args:?}: {e}");
    }
}

#[test]
fn schedule_get_table_and_json() {
    let mut cms = configmaps("tests/fixtures/schedules/valid.yaml");
    cms.extend(
        configmaps("tests/fixtures/schedules/invalid.yaml")
            .into_iter()
            .filter(|c| c.metadata.name.as_deref() == Some("bad-minute")),
    );
    let now = t("2026-03-28T12:00:00Z");
    let mut states = BTreeMap::new();
    states.insert(
        "nightly".to_string(),
        FireState {
            schedule: "nightly".into(),
            namespace: SYSTEM.into(),
            expression: "30 2 * * *".into(),
            timezone: Some("Europe/Berlin".into()),
            handled_through: t("2026-03-28T01:30:00Z"),
            last_fired: Some(t("2026-03-28T01:30:00Z")),
            last_backup: Some("nightly-20260328013000".into()),
            last_missed: 2,
            skipped_while_paused: 0,
            pending: None,
            updated: t("2026-03-28T01:30:05Z"),
        },
    );
    let rows = views(&cms, SYSTEM, &states, now);
    let table = render_views(&rows, Format::Table, true).expect("table");
    let expected = "\
NAME             NAMESPACE       SCHEDULE    TIMEZONE       NEXT                       LAST BACKUP                        STATUS
bad-minute       coracle-system  61 2 * * *  UTC            -                          -                                  Invalid: schedule coracle-system/bad-minute: invalid schedule \"61 2 * * *\": minute field \"61\": 61 is out of range 0-59
media-every-90m  media           @every 90m  UTC            -                          -                                  Paused
nightly          coracle-system  30 2 * * *  Europe/Berlin  2026-03-29T03:00:00+02:00  nightly-20260328013000 (2 missed)  Active
shop-hourly      shop            @hourly     UTC            2026-03-28T13:00:00Z       -                                  Active
";
    assert_eq!(table, expected, "\n{table}");

    let json: serde_json::Value =
        serde_json::from_str(&render_views(&rows, Format::Json, true).expect("json")).expect("valid JSON");
    let nightly =
        json.as_array().and_then(|a| a.iter().find(|r| r["name"] == "nightly")).cloned().expect("nightly row");
    assert_eq!(
        nightly,
        serde_json::json!({
            "name": "nightly",
            "namespace": "coracle-system",
            "schedule": "30 2 * * *",
            "timezone": "Europe/Berlin",
            "paused": false,
            "ttl": "168h",
            "template": {
                "includedNamespaces": ["shop", "media"],
                "excludedNamespaces": ["kube-system"],
                "labelSelector": "tier in (web,db),!ephemeral",
                "defaultVolumesToBackup": true,
                "volumeTimeout": "2h"
            },
            "next": "2026-03-29T01:00:00Z",
            "lastFired": "2026-03-28T01:30:00Z",
            "lastBackup": "nightly-20260328013000",
            "lastMissed": 2
        })
    );
    let bad = json.as_array().and_then(|a| a.iter().find(|r| r["name"] == "bad-minute")).cloned().expect("bad row");
    assert!(bad["error"].as_str().is_some_and(|e| e.contains("61 is out of range")), "{bad}");
    assert_eq!(bad["next"], serde_json::Value::Null);
    // Without fire state the table has no LAST BACKUP column.
    let table = render_views(&views(&cms, SYSTEM, &BTreeMap::new(), now), Format::Table, false).expect("table");
    assert!(
        table.starts_with(
            "NAME             NAMESPACE       SCHEDULE    TIMEZONE       NEXT                       STATUS\n"
        ),
        "{table}"
    );
}
