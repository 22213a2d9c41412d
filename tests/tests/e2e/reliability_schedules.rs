//! Schedules under clock trouble and overlap, through the real `coracle fn schedule-tick` against a
//! real nats-server and the simulated API server. Ticks carry their producer's clock (`time`); the
//! runner's is this machine's.
//!
//! - A tick producer 5 minutes behind, then one 5 minutes ahead, then a correct one, then the late
//!   one again: each fire time is published once; the one the ahead clock jumped over is reported
//!   missed (not silently lost); nothing fires twice; a tick far ahead (15 min) is refused.
//! - Two schedules backing up the same namespace fire in the same tick: two requests, neither
//!   swallowed by the other.

use anyhow::{bail, Context as _};
use chrono::{DateTime, Duration as ChronoDuration, DurationRound, Utc};
use coracle_events::envelope::decode;
use coracle_events::{subjects, BackupRequest, CloudEvent, ScheduleTick};
use coracle_tests::binaries::workspace_bin;
use coracle_tests::harness::{messages, ApiAndNats};
use coracle_tests::nats::NatsServer;
use coracle_tests::sim::SimServer;
use serde_json::json;
use std::process::{Command, Output};

fn objects(created: DateTime<Utc>) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: coracle-system}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: shop-often
  namespace: coracle-system
  creationTimestamp: "{created}"
  labels: {{coracle.dev/schedule: "true"}}
data:
  schedule: "*/5 * * * *"
  template: |
    includedNamespaces: [shop]
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: shop-also
  namespace: shop
  creationTimestamp: "{created}"
  labels: {{coracle.dev/schedule: "true"}}
data:
  schedule: "*/5 * * * *"
"#,
        created = created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

struct Setup {
    nats: NatsServer,
    _sim: SimServer,
    tmp: tempfile::TempDir,
    kubeconfig: std::path::PathBuf,
}

impl Setup {
    /// `coracle fn schedule-tick` for a tick stamped `at`.
    fn tick(&self, at: DateTime<Utc>) -> anyhow::Result<Output> {
        let mut event = CloudEvent::new(format!("tick-{}", at.timestamp()), "/tests/cron", None, ScheduleTick {});
        event.time = Some(at);
        let file = self.tmp.path().join(format!("tick-{}.json", at.timestamp()));
        std::fs::write(&file, event.to_json())?;
        Ok(Command::new(workspace_bin("coracle")?)
            .args(["fn", "schedule-tick", "--event", &file.to_string_lossy(), "--nats", &self.nats.url()])
            .env("KUBECONFIG", &self.kubeconfig)
            .env("CORACLE_SYSTEM_NAMESPACE", "coracle-system")
            .output()?)
    }

    async fn requests(&self) -> anyhow::Result<Vec<CloudEvent<BackupRequest>>> {
        let js = async_nats::jetstream::new(async_nats::connect(self.nats.url()).await?);
        messages(&js, subjects::BACKUP_REQUESTED).await?.iter().map(|m| Ok(decode::<BackupRequest>(m)?)).collect()
    }
}

/// The `*/5` fire times in `(after, upto]`.
fn fires(after: DateTime<Utc>, upto: DateTime<Utc>) -> anyhow::Result<Vec<DateTime<Utc>>> {
    let five = ChronoDuration::minutes(5);
    let mut t = after.duration_trunc(five)? + five;
    let mut out = Vec::new();
    while t <= upto {
        out.push(t);
        t += five;
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clocks_five_minutes_off_fire_each_time_once_and_overlapping_schedules_both_fire() -> anyhow::Result<()> {
    let now = Utc::now().duration_trunc(ChronoDuration::seconds(1))?;
    let objects = objects(now - ChronoDuration::hours(2));
    let ApiAndNats { nats, sim, tmp, kubeconfig, js: _ } = ApiAndNats::start("rel-schedules", &objects).await?;
    let s = Setup { nats, _sim: sim, tmp, kubeconfig };

    let behind = now - ChronoDuration::minutes(5);
    let ahead = now + ChronoDuration::minutes(5);
    // 1. A producer 5 minutes behind: both schedules fire their latest time before its clock.
    let out = s.tick(behind)?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first = *fires(behind - ChronoDuration::minutes(5), behind)?.last().context("a */5 time")?;
    let requests = s.requests().await?;
    let mut ids: Vec<String> = requests.iter().map(|r| r.id.clone()).collect();
    ids.sort();
    let stamp = |t: DateTime<Utc>| t.format("%Y%m%d%H%M%S").to_string();
    assert_eq!(
        ids,
        [format!("shop-also-{}", stamp(first)), format!("shop-often-{}", stamp(first))],
        "two schedules for one namespace, two requests"
    );
    for r in &requests {
        assert_eq!(r.data.included_namespaces, ["shop"]);
    }

    // 2. A producer 5 minutes ahead: accepted; it fires its latest time, and what it jumped over is
    //    reported missed.
    let out = s.tick(ahead)?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let jumped = fires(behind, ahead)?;
    let second = *jumped.last().context("a */5 time within 10 minutes")?;
    let requests = s.requests().await?;
    assert_eq!(requests.len(), 4, "{:?}", requests.iter().map(|r| &r.id).collect::<Vec<_>>());
    for r in &requests[2..] {
        assert!(r.id.ends_with(&stamp(second)), "{}", r.id);
        assert_eq!(r.extensions.get("missed"), Some(&json!(jumped.len() - 1)), "{}", r.id);
    }

    // 3. The correct clock, then the late producer again: nothing fires twice or goes back.
    for at in [now, behind, now + ChronoDuration::seconds(30)] {
        let out = s.tick(at)?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let requests = s.requests().await?;
    let mut ids: Vec<String> = requests.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    ids.dedup();
    assert_eq!(ids.len(), 4, "no id twice");

    // 4. A producer 15 minutes ahead is refused: it would mark 15 minutes of fire times as done.
    let out = s.tick(now + ChronoDuration::minutes(15))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() && !stderr.contains("ahead") {
        bail!("a tick 15 minutes ahead was accepted: {stderr}");
    }
    assert_eq!(s.requests().await?.len(), 4, "nothing fired by it");
    Ok(())
}
