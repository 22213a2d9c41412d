//! schedule-tick for real (SPEC §8): the `coracle` binary against a real nats-server and the
//! simulated API server. Each fire time publishes exactly one `coracle.backup.requested` named
//! `<schedule>-<yyyyMMddHHmmss>` (also its event id) — with two tick processes racing, when the same
//! minute is ticked again, after downtime (the most recent missed time, with the missed count), never
//! while paused — and the tick runs the same once from a file, as a draining NATS consumer and under
//! the Lambda Runtime API from an EventBridge scheduled event. "Now" is the tick's `time`, so the
//! first test runs in June 2025 whatever the machine's clock says.

use anyhow::{bail, Context as _};
use async_nats::jetstream;
use chrono::{DateTime, Duration as TimeDelta, DurationRound, Utc};
use coracle_events::{envelope::decode, subjects, BackupRequest, CloudEvent, ScheduleTick};
use coracle_tests::binaries::workspace_bin;
use coracle_tests::harness::{messages, ApiAndNats};
use coracle_tests::lambda::LambdaEmulator;
use coracle_tests::nats::NatsServer;
use coracle_tests::process;
use coracle_tests::sim::SimServer;
use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: coracle-system}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: hourly-shop
  namespace: coracle-system
  creationTimestamp: "2025-06-02T09:30:00Z"
  labels: {coracle.dev/schedule: "true"}
data:
  schedule: "0 * * * *"
  ttl: 72h
  template: |
    includedNamespaces: [shop]
    labelSelector: app=db
    defaultVolumesToBackup: true
    volumeTimeout: 30m
---
# Declared in an application namespace: backs up only that namespace. Midnight in Berlin is 22:00 UTC in June.
apiVersion: v1
kind: ConfigMap
metadata:
  name: shop-daily
  namespace: shop
  creationTimestamp: "2025-06-01T12:00:00Z"
  labels: {coracle.dev/schedule: "true"}
data:
  schedule: "@daily"
  timezone: Europe/Berlin
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: paused-often
  namespace: coracle-system
  creationTimestamp: "2025-01-01T00:00:00Z"
  labels: {coracle.dev/schedule: "true"}
data:
  schedule: "*/5 * * * *"
  paused: "true"
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: broken
  namespace: coracle-system
  creationTimestamp: "2025-01-01T00:00:00Z"
  labels: {coracle.dev/schedule: "true"}
data:
  schedule: "0 25 * * *"
"#;

struct Setup {
    nats: NatsServer,
    sim: SimServer,
    tmp: tempfile::TempDir,
    kubeconfig: PathBuf,
    js: jetstream::Context,
}

async fn setup(name: &str, objects: &str) -> anyhow::Result<Setup> {
    let ApiAndNats { nats, sim, tmp, kubeconfig, js } = ApiAndNats::start(name, objects).await?;
    Ok(Setup { nats, sim, tmp, kubeconfig, js })
}

impl Setup {
    fn spawn(&self, args: &[&str]) -> anyhow::Result<Child> {
        Command::new(workspace_bin("coracle")?)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("CORACLE_SYSTEM_NAMESPACE", "coracle-system")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting coracle")
    }

    /// Runs `coracle ARGS` to completion; fails unless it exits 0.
    fn coracle(&self, args: &[&str]) -> anyhow::Result<Output> {
        let out = process::output_within(self.spawn(args)?, LIMIT)?;
        if !out.status.success() {
            bail!("coracle {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(out)
    }

    /// A tick CloudEvent meant for `time`, written to a file for `--event`.
    fn tick_file(&self, time: &str) -> anyhow::Result<PathBuf> {
        let at: DateTime<Utc> = time.parse()?;
        let mut event =
            CloudEvent::new(format!("tick-{}", at.format("%Y%m%d%H%M%S")), "/tests/cron", None, ScheduleTick {});
        event.time = Some(at);
        let path = self.tmp.path().join(format!("tick-{}.json", at.timestamp()));
        std::fs::write(&path, event.to_json())?;
        Ok(path)
    }

    /// `coracle fn schedule-tick --event <tick at time> --nats URL`; its standard error.
    fn tick(&self, time: &str) -> anyhow::Result<String> {
        let file = self.tick_file(time)?;
        let out =
            self.coracle(&["fn", "schedule-tick", "--event", &file.to_string_lossy(), "--nats", &self.nats.url()])?;
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Every backup request on the stream: (event id, event).
    async fn requests(&self) -> anyhow::Result<Vec<CloudEvent<BackupRequest>>> {
        messages(&self.js, subjects::BACKUP_REQUESTED).await?.iter().map(|m| Ok(decode::<BackupRequest>(m)?)).collect()
    }

    async fn request_ids(&self) -> anyhow::Result<Vec<String>> {
        Ok(self.requests().await?.into_iter().map(|e| e.id).collect())
    }
}

fn summary_fired(stderr: &str) -> Option<u32> {
    let line = stderr.lines().find(|l| l.contains("schedule-tick at "))?;
    line.split("fired ").nth(1)?.split(',').next()?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fire_time_publishes_exactly_one_request() -> anyhow::Result<()> {
    let s = setup("schedule-tick", OBJECTS).await?;

    // 0. Without NATS there is no fire state: the requests a first tick would publish are printed.
    let file = s.tick_file("2025-06-02T10:00:30Z")?;
    let out = s.coracle(&["fn", "schedule-tick", "--event", &file.to_string_lossy()])?;
    let mut printed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| Ok(decode::<BackupRequest>(l.as_bytes())?.id))
        .collect::<anyhow::Result<_>>()?;
    printed.sort();
    assert_eq!(printed, ["hourly-shop-20250602100000", "shop-daily-20250601220000"]);
    assert!(s.requests().await?.is_empty(), "nothing published");

    // 1. Due now: hourly-shop's 10:00 and shop-daily's midnight (Berlin) since its creation.
    let stderr = s.tick("2025-06-02T10:00:30Z")?;
    assert_eq!(summary_fired(&stderr), Some(2), "{stderr}");
    assert!(stderr.contains("schedule ignored") && stderr.contains("hour field \"25\""), "{stderr}");
    let requests = s.requests().await?;
    let ids: Vec<&str> = requests.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    let hourly = requests.iter().find(|e| e.id == "hourly-shop-20250602100000").context("hourly-shop fired")?;
    assert_eq!(hourly.source, "/coracle/functions/schedule-tick");
    assert_eq!(hourly.subject.as_deref(), Some("hourly-shop-20250602100000"));
    assert_eq!(hourly.time, Some("2025-06-02T10:00:00Z".parse()?), "the fire time");
    assert_eq!(hourly.extensions.get("missed"), Some(&json!(0)));
    assert_eq!(hourly.extensions.get("schedule"), Some(&json!("hourly-shop")));
    let r = &hourly.data;
    assert_eq!(r.name, "hourly-shop-20250602100000", "backup name = event id");
    assert_eq!(r.uid.as_deref(), Some(coracle_functions::handlers::event_uid("backup", &r.name).as_str()));
    assert_eq!(r.origin.as_deref(), Some("schedule/hourly-shop"));
    assert_eq!(r.included_namespaces, ["shop"]);
    assert!(r.excluded_namespaces.is_empty());
    assert_eq!(r.label_selector.as_deref(), Some("app=db"));
    assert!(r.default_volumes_to_backup);
    assert_eq!((r.ttl.as_deref(), r.volume_timeout.as_deref()), (Some("72h"), Some("30m")));
    let daily = requests.iter().find(|e| e.id == "shop-daily-20250601220000").context("shop-daily fired")?;
    assert_eq!(daily.data.included_namespaces, ["shop"], "an application namespace's schedule covers only it");
    assert_eq!(daily.data.origin.as_deref(), Some("schedule/shop-daily"));
    assert_eq!(daily.extensions.get("missed"), Some(&json!(0)));

    // 2. The same minute again: nothing new.
    let stderr = s.tick("2025-06-02T10:00:30Z")?;
    assert_eq!(summary_fired(&stderr), Some(0), "{stderr}");
    assert_eq!(s.requests().await?.len(), 2);

    // 3. Two tick processes at once, three hours running: one request per hour, fired by one of them.
    for hour in ["11", "12", "13"] {
        let file = s.tick_file(&format!("2025-06-02T{hour}:00:20Z"))?;
        let args = ["fn", "schedule-tick", "--event", &file.to_string_lossy(), "--nats", &s.nats.url()];
        let (a, b) = (s.spawn(&args)?, s.spawn(&args)?);
        let (a, b) = (process::output_within(a, LIMIT)?, process::output_within(b, LIMIT)?);
        let stderr = [String::from_utf8_lossy(&a.stderr).into_owned(), String::from_utf8_lossy(&b.stderr).into_owned()];
        assert!(a.status.success() && b.status.success(), "{stderr:?}");
        let fired: Vec<Option<u32>> = stderr.iter().map(|e| summary_fired(e)).collect();
        let mut sorted = fired.clone();
        sorted.sort();
        assert_eq!(sorted, [Some(0), Some(1)], "exactly one of the racing ticks claims the fire: {stderr:?}");
        let ids = s.request_ids().await?;
        assert_eq!(ids.iter().filter(|i| **i == format!("hourly-shop-20250602{hour}0000")).count(), 1, "{ids:?}");
    }
    assert_eq!(s.requests().await?.len(), 5);

    // 4. Down for 14:00, 15:00 and 16:00: one request for 16:00, two reported missed.
    let stderr = s.tick("2025-06-02T16:00:10Z")?;
    assert_eq!(summary_fired(&stderr), Some(1), "{stderr}");
    assert!(stderr.contains("2 older one(s) missed"), "{stderr}");
    let requests = s.requests().await?;
    assert_eq!(requests.len(), 6);
    let catch_up = requests.last().context("a request")?;
    assert_eq!(catch_up.id, "hourly-shop-20250602160000");
    assert_eq!(catch_up.extensions.get("missed"), Some(&json!(2)));

    // 5. Paused from the CLI: 17:00 fires nothing, and is not caught up after unpausing.
    let out = s.coracle(&["schedule", "pause", "hourly-shop"])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "schedule hourly-shop paused\n");
    let cm = s.sim.store().get_as::<ConfigMap>("coracle-system", "hourly-shop")?.context("ConfigMap")?;
    assert_eq!(cm.data.unwrap_or_default().get("paused").map(String::as_str), Some("true"));
    let stderr = s.tick("2025-06-02T17:00:10Z")?;
    assert_eq!(summary_fired(&stderr), Some(0), "{stderr}");
    // hourly-shop's 17:00, and paused-often's times since the last tick.
    assert!(stderr.contains("skipped while paused 2"), "{stderr}");
    s.coracle(&["schedule", "unpause", "hourly-shop"])?;
    assert_eq!(summary_fired(&s.tick("2025-06-02T17:30:00Z")?), Some(0));
    let stderr = s.tick("2025-06-02T18:00:10Z")?;
    assert_eq!(summary_fired(&stderr), Some(1), "{stderr}");
    let requests = s.requests().await?;
    let last = requests.last().context("a request")?;
    assert_eq!(last.id, "hourly-shop-20250602180000");
    assert_eq!(last.extensions.get("missed"), Some(&json!(0)), "times skipped while paused are not missed");

    // The schedule paused all along never fired, the broken one neither.
    let expected = [
        "hourly-shop-20250602100000",
        "shop-daily-20250601220000",
        "hourly-shop-20250602110000",
        "hourly-shop-20250602120000",
        "hourly-shop-20250602130000",
        "hourly-shop-20250602160000",
        "hourly-shop-20250602180000",
    ];
    let ids = s.request_ids().await?;
    let mut first_two = ids[..2].to_vec();
    first_two.sort();
    assert_eq!(first_two, [expected[0], expected[1]], "{ids:?}");
    assert_eq!(ids[2..], expected[2..], "{ids:?}");

    // `coracle schedule get` shows the fire state and why a ConfigMap is ignored.
    let out = s.coracle(&["schedule", "get", "-o", "json", "--nats", &s.nats.url()])?;
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    let row = |name: &str| rows.iter().find(|r| r["name"] == name).cloned().unwrap_or_default();
    assert_eq!(row("hourly-shop")["lastBackup"], "hourly-shop-20250602180000");
    assert_eq!(row("hourly-shop")["lastMissed"], 0);
    assert_eq!(row("paused-often")["paused"], true);
    assert_eq!(row("paused-often")["next"], Value::Null);
    assert!(row("broken")["error"].as_str().is_some_and(|e| e.contains("hour field \"25\"")), "{rows:?}");
    Ok(())
}

/// The top of the next minute of this machine's clock: a tick time the runner accepts (not far
/// ahead) and after any ConfigMap created now.
fn next_minute(plus: i64) -> anyhow::Result<DateTime<Utc>> {
    Ok(Utc::now().duration_trunc(TimeDelta::minutes(1))? + TimeDelta::minutes(1 + plus))
}

fn spawn_lambda(s: &Setup, emulator: &LambdaEmulator, log: &Path) -> anyhow::Result<Child> {
    Command::new(workspace_bin("coracle")?)
        .args(["fn", "schedule-tick", "--lambda", "--nats", &s.nats.url()])
        .env("AWS_LAMBDA_RUNTIME_API", emulator.address())
        .env("AWS_LAMBDA_FUNCTION_NAME", "coracle-schedule-tick")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "2025/06/02/[$LATEST]0123456789abcdef")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/coracle-schedule-tick")
        .env("KUBECONFIG", &s.kubeconfig)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("starting coracle fn schedule-tick --lambda")
}

/// A child stopped by pid when dropped.
struct Stop(Child);

impl Drop for Stop {
    fn drop(&mut self) {
        process::stop(&mut self.0, Duration::from_secs(5));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_schedules_tick_from_nats_and_from_eventbridge_under_lambda() -> anyhow::Result<()> {
    let objects = "apiVersion: v1\nkind: Namespace\nmetadata: {name: coracle-system}\n";
    let s = setup("schedule-tick-runners", objects).await?;

    // Created from the CLI: a ConfigMap in the system namespace, created now.
    let out = s.coracle(&[
        "schedule",
        "create",
        "every-minute",
        "--cron",
        "@every 1m",
        "--namespace",
        "shop",
        "--ttl",
        "24h",
    ])?;
    assert!(String::from_utf8_lossy(&out.stdout)
        .starts_with("schedule every-minute created in coracle-system; next backup at "));
    let cm = s.sim.store().get_as::<ConfigMap>("coracle-system", "every-minute")?.context("ConfigMap created")?;
    assert_eq!(cm.metadata.labels.unwrap_or_default().get("coracle.dev/schedule").map(String::as_str), Some("true"));
    // A second one with the same name, or an invalid one, is refused and writes nothing.
    let dup = process::output_within(s.spawn(&["schedule", "create", "every-minute", "--cron", "@daily"])?, LIMIT)?;
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr)
        .contains("a schedule named every-minute exists already in namespace coracle-system"));
    let bad = process::output_within(s.spawn(&["schedule", "create", "bad", "--cron", "0 0 * * 8"])?, LIMIT)?;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid schedule \"0 0 * * 8\": day-of-week field \"8\""));
    assert!(s.sim.store().get_as::<ConfigMap>("coracle-system", "bad")?.is_none());

    // NATS: a CronJob publishes a tick (twice in the same minute: one kept), a draining consumer fires.
    let first = next_minute(0)?;
    let stamp = first.format("%Y%m%d%H%M%S").to_string();
    for expected in ["", " (already published: dropped as a duplicate)"] {
        let out = s.coracle(&["schedule", "tick", "--nats", &s.nats.url(), "--time", &first.to_rfc3339()])?;
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("published tick tick-{stamp}{expected}\n"));
    }
    let out = s.coracle(&["fn", "schedule-tick", "--nats", &s.nats.url(), "--drain"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("schedule-tick: handled 1, retried 0, dead-lettered 0"), "{stderr}");
    assert_eq!(s.request_ids().await?, [format!("every-minute-{stamp}")]);
    let request = s.requests().await?.remove(0).data;
    assert_eq!((request.included_namespaces, request.ttl), (vec!["shop".to_string()], Some("24h".to_string())));

    // Lambda: an EventBridge scheduled rule's event is a tick for its time.
    let emulator = LambdaEmulator::start()?;
    let log = s.tmp.path().join("lambda.log");
    let _runner = Stop(spawn_lambda(&s, &emulator, &log)?);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let second = first + TimeDelta::minutes(1);
    let eventbridge = |time: DateTime<Utc>| {
        json!({
            "version": "0",
            "id": uuid::Uuid::new_v4().to_string(),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": "123456789012",
            "time": time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "region": "eu-west-1",
            "resources": ["arn:aws:events:eu-west-1:123456789012:rule/coracle-schedule-tick"],
            "detail": {}
        })
    };
    for _ in 0..2 {
        // Delivered twice (EventBridge is at-least-once): one request.
        let answer = emulator.invoke_and_wait(eventbridge(second), LIMIT).await?;
        let response = answer.map_err(|e| anyhow::anyhow!("schedule-tick failed under Lambda: {e}\n{}", log_text()))?;
        assert_eq!(response["status"], "ok", "{response}");
    }
    let second_id = format!("every-minute-{}", second.format("%Y%m%d%H%M%S"));
    assert_eq!(s.request_ids().await?, [format!("every-minute-{stamp}"), second_id.clone()]);
    // A tick an hour ahead of the clock is refused (answered and dead-lettered), firing nothing.
    let answer = emulator.invoke_and_wait(eventbridge(first + TimeDelta::hours(1)), LIMIT).await?;
    let response = answer.map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(response["status"], "dead-lettered", "{response}");
    assert!(response["reason"].as_str().is_some_and(|r| r.contains("ahead of this machine's clock")), "{response}");
    assert_eq!(s.request_ids().await?.len(), 2);

    // `schedule get` and `delete`: once deleted, ticks fire nothing for it.
    let out = s.coracle(&["schedule", "get", "--nats", &s.nats.url()])?;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.starts_with("NAME") && table.contains("every-minute") && table.contains(&second_id), "{table}");
    let out = s.coracle(&["schedule", "delete", "every-minute"])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "schedule every-minute deleted (its backups stay)\n");
    assert!(s.sim.store().get_as::<ConfigMap>("coracle-system", "every-minute")?.is_none());
    let answer = emulator.invoke_and_wait(eventbridge(second + TimeDelta::minutes(1)), LIMIT).await?;
    assert_eq!(answer.map_err(|e| anyhow::anyhow!("{e}"))?["status"], "ok");
    assert_eq!(s.request_ids().await?.len(), 2);
    let missing = process::output_within(s.spawn(&["schedule", "pause", "every-minute"])?, LIMIT)?;
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no schedule named every-minute"));
    Ok(())
}
