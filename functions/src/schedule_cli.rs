//! `coracle schedule …`: schedules for people. They are ConfigMaps (see `crate::schedule`), so
//! `create` writes one into the system namespace and `pause`, `unpause` and `delete` change the
//! ConfigMap wherever it was declared; `kubectl apply` of the same ConfigMap is equivalent.
//! `next` evaluates an expression offline (SPEC §9: one RFC 3339 time per line); `tick` publishes
//! one tick for a `coracle fn schedule-tick --nats` consumer.

use crate::cli::{table, Format};
use crate::kv_json::JsonKv;
use crate::schedule::{
    self, BackupTemplate, FireState, Schedule, ScheduleError, Timing, KEY_PAUSED, KEY_SCHEDULE, KEY_TEMPLATE,
    KEY_TIMEZONE, KEY_TTL, SCHEDULE_LABEL,
};
use crate::settings::DEFAULT_SYSTEM_NAMESPACE;
use anyhow::{bail, Context as _};
use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use coracle_events::publish::Publisher;
use coracle_events::subjects::KV_SCHEDULES;
use coracle_events::{CloudEvent, ScheduleTick};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde::Serialize;
use std::collections::BTreeMap;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum ScheduleCommand {
    /// Create a schedule: a ConfigMap labelled coracle.dev/schedule in the system namespace.
    Create(CreateArgs),
    /// List schedules with their next fire time (and, with --nats, the last backup fired).
    Get {
        /// Only this schedule.
        name: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
        /// Read fire state (last backup fired) from this NATS server.
        #[arg(long, env = "CORACLE_NATS_URL")]
        nats: Option<String>,
        #[arg(long, env = "CORACLE_SYSTEM_NAMESPACE", default_value = DEFAULT_SYSTEM_NAMESPACE)]
        system_namespace: String,
    },
    /// Stop a schedule from firing; times passing while paused are not caught up later.
    Pause { name: String },
    /// Let a paused schedule fire again, from its next fire time on.
    Unpause { name: String },
    /// Delete a schedule's ConfigMap (its backups stay).
    Delete { name: String },
    /// Print the next fire times of an expression, one RFC 3339 time per line.
    Next {
        /// Crontab (5 fields), @hourly/@daily/@weekly/@monthly/@yearly, or @every <duration>.
        #[arg(long)]
        cron: String,
        /// IANA time zone the expression is read in (default UTC); times print with its offset.
        #[arg(long)]
        tz: Option<String>,
        /// Start after this instant (RFC 3339); default now.
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=100_000))]
        count: u32,
        /// Print UTC (`Z`) even with --tz.
        #[arg(long)]
        utc: bool,
    },
    /// Publish one schedule tick (for a CronJob feeding `coracle fn schedule-tick --nats URL`).
    Tick {
        #[arg(long, env = "CORACLE_NATS_URL")]
        nats: String,
        /// The instant the tick stands for (RFC 3339); default this minute.
        #[arg(long)]
        time: Option<String>,
    },
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// Schedule name; backups are named <name>-<yyyyMMddHHmmss>.
    pub name: String,
    /// Crontab (5 fields), @hourly/@daily/@weekly/@monthly/@yearly, or @every <duration>.
    #[arg(long)]
    pub cron: String,
    /// IANA time zone the expression is read in (default UTC).
    #[arg(long)]
    pub tz: Option<String>,
    /// Namespaces to back up (repeat or comma-separate; default all).
    #[arg(long = "namespace", value_name = "NS", num_args = 1.., value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Namespaces never to back up.
    #[arg(long = "exclude-namespace", value_name = "NS", num_args = 1.., value_delimiter = ',')]
    pub exclude_namespaces: Vec<String>,
    /// Label selector for the pods whose volumes are backed up.
    #[arg(long)]
    pub selector: Option<String>,
    /// How long each backup is kept (Go duration, default the installation's).
    #[arg(long)]
    pub ttl: Option<String>,
    /// Time limit per volume (Go duration, default the installation's).
    #[arg(long)]
    pub volume_timeout: Option<String>,
    /// Opt-out mode: back up every eligible volume unless excluded by annotation.
    #[arg(long)]
    pub default_volumes: bool,
    /// Create it paused.
    #[arg(long)]
    pub paused: bool,
    #[arg(long, env = "CORACLE_SYSTEM_NAMESPACE", default_value = DEFAULT_SYSTEM_NAMESPACE)]
    pub system_namespace: String,
}

/// The ConfigMap `coracle schedule create` writes, validated exactly as the tick will read it.
pub fn configmap_for(args: &CreateArgs) -> Result<ConfigMap, ScheduleError> {
    let template = BackupTemplate {
        included_namespaces: args.namespaces.clone(),
        excluded_namespaces: args.exclude_namespaces.clone(),
        label_selector: args.selector.clone(),
        default_volumes_to_backup: args.default_volumes,
        volume_timeout: args.volume_timeout.clone(),
    };
    let mut data = BTreeMap::from([
        (KEY_SCHEDULE.to_string(), args.cron.clone()),
        (KEY_PAUSED.to_string(), args.paused.to_string()),
    ]);
    if let Some(tz) = &args.tz {
        data.insert(KEY_TIMEZONE.into(), tz.clone());
    }
    if let Some(ttl) = &args.ttl {
        data.insert(KEY_TTL.into(), ttl.clone());
    }
    if template != BackupTemplate::default() {
        // Serialising a plain struct cannot fail.
        data.insert(KEY_TEMPLATE.into(), serde_yaml::to_string(&template).unwrap_or_default());
    }
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(args.name.clone()),
            namespace: Some(args.system_namespace.clone()),
            labels: Some(BTreeMap::from([
                (SCHEDULE_LABEL.to_string(), "true".to_string()),
                ("app.kubernetes.io/managed-by".to_string(), "coracle".to_string()),
            ])),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    schedule::from_configmap(&cm, &args.system_namespace)?;
    Ok(cm)
}

fn rfc3339(t: DateTime<Utc>, timing: Option<&Timing>, utc: bool) -> String {
    match timing.and_then(|t| t.zone).filter(|_| !utc) {
        Some(zone) => t.with_timezone(&zone).to_rfc3339_opts(SecondsFormat::Secs, true),
        None => t.to_rfc3339_opts(SecondsFormat::Secs, true),
    }
}

/// What `coracle schedule next` prints: one RFC 3339 time per line, in the zone's offset (UTC
/// `Z` without a zone or with `utc`).
pub fn next_lines(
    cron: &str,
    tz: Option<&str>,
    after: DateTime<Utc>,
    count: usize,
    utc: bool,
) -> Result<String, ScheduleError> {
    let timing = Timing::new(cron, tz)?;
    Ok(timing.next_fires(after, count).into_iter().map(|t| rfc3339(t, Some(&timing), utc) + "\n").collect())
}

fn parse_time(flag: &str, text: &str) -> anyhow::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&Utc))
        .with_context(|| format!("{flag} {text:?} is not an RFC 3339 time such as 2026-03-29T00:00:00Z"))
}

/// One row of `coracle schedule get`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleView {
    pub name: String,
    pub namespace: String,
    pub schedule: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    pub paused: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    pub template: BackupTemplate,
    /// Next fire time (none while paused or invalid).
    pub next: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_fired: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_missed: Option<u32>,
    /// Why the tick ignores this ConfigMap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ScheduleView {
    fn of(s: &Schedule, now: DateTime<Utc>, state: Option<&FireState>) -> Self {
        ScheduleView {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            schedule: s.timing.expr.source().to_string(),
            timezone: s.timing.zone_name().map(str::to_string),
            paused: s.paused,
            ttl: s.ttl.clone(),
            template: s.template.clone(),
            next: if s.paused { None } else { s.timing.next_after(now) },
            last_fired: state.and_then(|st| st.last_fired),
            last_backup: state.and_then(|st| st.last_backup.clone()),
            last_missed: state.filter(|st| st.last_backup.is_some()).map(|st| st.last_missed),
            error: None,
        }
    }

    fn rejected(cm: Option<&ConfigMap>, r: &schedule::Rejected) -> Self {
        let data = cm.and_then(|c| c.data.clone()).unwrap_or_default();
        ScheduleView {
            name: r.name.clone(),
            namespace: r.namespace.clone(),
            schedule: data.get(KEY_SCHEDULE).cloned().unwrap_or_default(),
            timezone: data.get(KEY_TIMEZONE).cloned(),
            paused: data.get(KEY_PAUSED).is_some_and(|p| p.trim().eq_ignore_ascii_case("true")),
            ttl: data.get(KEY_TTL).cloned(),
            template: BackupTemplate::default(),
            next: None,
            last_fired: None,
            last_backup: None,
            last_missed: None,
            error: Some(r.reason.clone()),
        }
    }
}

/// The rows of `coracle schedule get`, sorted by name then namespace.
pub fn views(
    configmaps: &[ConfigMap],
    system_namespace: &str,
    states: &BTreeMap<String, FireState>,
    now: DateTime<Utc>,
) -> Vec<ScheduleView> {
    let (schedules, rejected) = schedule::load(configmaps, system_namespace);
    let mut rows: Vec<ScheduleView> = schedules.iter().map(|s| ScheduleView::of(s, now, states.get(&s.name))).collect();
    for r in &rejected {
        let cm = configmaps.iter().find(|c| {
            c.metadata.name.as_deref() == Some(r.name.as_str())
                && c.metadata.namespace.as_deref() == Some(r.namespace.as_str())
        });
        rows.push(ScheduleView::rejected(cm, r));
    }
    rows.sort_by(|a, b| (&a.name, &a.namespace).cmp(&(&b.name, &b.namespace)));
    rows
}

/// `coracle schedule get` output.
pub fn render_views(rows: &[ScheduleView], format: Format, with_state: bool) -> anyhow::Result<String> {
    match format {
        Format::Json => Ok(serde_json::to_string_pretty(rows)? + "\n"),
        Format::Yaml => Ok(serde_yaml::to_string(rows)?),
        Format::Table => {
            let mut headers = vec!["NAME", "NAMESPACE", "SCHEDULE", "TIMEZONE", "NEXT"];
            if with_state {
                headers.push("LAST BACKUP");
            }
            headers.push("STATUS");
            let cells = rows
                .iter()
                .map(|v| {
                    let zone = v.timezone.as_deref().and_then(|z| Timing::new("@daily", Some(z)).ok());
                    let mut row = vec![
                        v.name.clone(),
                        v.namespace.clone(),
                        v.schedule.clone(),
                        v.timezone.clone().unwrap_or_else(|| "UTC".into()),
                        v.next.map(|t| rfc3339(t, zone.as_ref(), false)).unwrap_or_else(|| "-".into()),
                    ];
                    if with_state {
                        row.push(match (&v.last_backup, v.last_missed) {
                            (Some(b), Some(m)) if m > 0 => format!("{b} ({m} missed)"),
                            (Some(b), _) => b.clone(),
                            (None, _) => "-".into(),
                        });
                    }
                    row.push(match (&v.error, v.paused) {
                        (Some(e), _) => format!("Invalid: {e}"),
                        (None, true) => "Paused".into(),
                        (None, false) => "Active".into(),
                    });
                    row
                })
                .collect::<Vec<_>>();
            Ok(table(&headers, &cells))
        }
    }
}

async fn kube_client() -> anyhow::Result<kube::Client> {
    kube::Client::try_default().await.context("no Kubernetes API configured (set KUBECONFIG)")
}

async fn schedule_configmaps(client: &kube::Client) -> anyhow::Result<Vec<ConfigMap>> {
    Ok(crate::kube_cluster::labelled_configmaps(client, SCHEDULE_LABEL).await?)
}

/// The one schedule ConfigMap with this name, in whichever namespace declares it.
async fn find(client: &kube::Client, name: &str) -> anyhow::Result<(String, ConfigMap)> {
    let mut found: Vec<ConfigMap> =
        schedule_configmaps(client).await?.into_iter().filter(|c| c.metadata.name.as_deref() == Some(name)).collect();
    match found.len() {
        0 => bail!("no schedule named {name} (no ConfigMap {name} labelled {SCHEDULE_LABEL})"),
        1 => {
            let cm = found.remove(0);
            Ok((cm.metadata.namespace.clone().unwrap_or_default(), cm))
        }
        _ => {
            let namespaces: Vec<String> = found.iter().filter_map(|c| c.metadata.namespace.clone()).collect();
            bail!(
                "schedule {name} is declared in several namespaces ({}); change it with kubectl",
                namespaces.join(", ")
            )
        }
    }
}

async fn set_paused(name: &str, paused: bool) -> anyhow::Result<()> {
    let client = kube_client().await?;
    let (namespace, _) = find(&client, name).await?;
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let patch = serde_json::json!({"data": {KEY_PAUSED: paused.to_string()}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("updating ConfigMap {namespace}/{name}"))?;
    Ok(())
}

pub async fn run(command: ScheduleCommand) -> anyhow::Result<ExitCode> {
    match command {
        ScheduleCommand::Next { cron, tz, after, count, utc } => {
            let after = match after {
                Some(text) => parse_time("--after", &text)?,
                None => Utc::now(),
            };
            print!("{}", next_lines(&cron, tz.as_deref(), after, count as usize, utc)?);
        }
        ScheduleCommand::Create(args) => {
            let cm = configmap_for(&args)?;
            let client = kube_client().await?;
            if let Some(other) =
                schedule_configmaps(&client).await?.iter().find(|c| c.metadata.name.as_deref() == Some(&args.name))
            {
                bail!(
                    "a schedule named {} exists already in namespace {}",
                    args.name,
                    other.metadata.namespace.as_deref().unwrap_or_default()
                );
            }
            let api: Api<ConfigMap> = Api::namespaced(client, &args.system_namespace);
            match api.create(&PostParams::default(), &cm).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    bail!("ConfigMap {}/{} exists already", args.system_namespace, args.name)
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("creating ConfigMap {}/{}", args.system_namespace, args.name))
                }
            }
            let timing = Timing::new(&args.cron, args.tz.as_deref())?;
            let next = if args.paused { None } else { timing.next_after(Utc::now()) };
            match next {
                Some(t) => println!(
                    "schedule {} created in {}; next backup at {}",
                    args.name,
                    args.system_namespace,
                    rfc3339(t, Some(&timing), false)
                ),
                None => println!("schedule {} created in {} (paused)", args.name, args.system_namespace),
            }
        }
        ScheduleCommand::Get { name, output, nats, system_namespace } => {
            let client = kube_client().await?;
            let mut configmaps = schedule_configmaps(&client).await?;
            if let Some(name) = &name {
                configmaps.retain(|c| c.metadata.name.as_deref() == Some(name.as_str()));
                if configmaps.is_empty() {
                    bail!("no schedule named {name}");
                }
            }
            let mut states = BTreeMap::new();
            if let Some(url) = &nats {
                let client = coracle_events::nats_auth::connect_options(url).connect(url).await.with_context(|| {
                    format!("connecting to NATS at {}", coracle_events::redact::redact_url_credentials(url))
                })?;
                let kv = JsonKv::<FireState>::open(&async_nats::jetstream::new(client), KV_SCHEDULES, "").await?;
                for cm in &configmaps {
                    let Some(n) = cm.metadata.name.as_deref() else { continue };
                    if let Some((state, _)) = kv.get(n).await? {
                        states.insert(n.to_string(), state);
                    }
                }
            }
            let rows = views(&configmaps, &system_namespace, &states, Utc::now());
            print!("{}", render_views(&rows, output, nats.is_some())?);
        }
        ScheduleCommand::Pause { name } => {
            set_paused(&name, true).await?;
            println!("schedule {name} paused");
        }
        ScheduleCommand::Unpause { name } => {
            set_paused(&name, false).await?;
            println!("schedule {name} unpaused");
        }
        ScheduleCommand::Delete { name } => {
            let client = kube_client().await?;
            let (namespace, _) = find(&client, &name).await?;
            let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
            api.delete(&name, &DeleteParams::default())
                .await
                .with_context(|| format!("deleting ConfigMap {namespace}/{name}"))?;
            println!("schedule {name} deleted (its backups stay)");
        }
        ScheduleCommand::Tick { nats, time } => {
            let at = match time {
                Some(text) => parse_time("--time", &text)?,
                // A CronJob runs a little after the minute it stands for; the tick names that minute.
                None => Utc::now().with_second(0).and_then(|t| t.with_nanosecond(0)).unwrap_or_else(Utc::now),
            };
            let id = format!("tick-{}", at.format("%Y%m%d%H%M%S"));
            let mut event = CloudEvent::new(id.clone(), "/coracle/cli", None, ScheduleTick {});
            event.time = Some(at);
            let client = coracle_events::nats_auth::connect_options(&nats).connect(&nats).await.with_context(|| {
                format!("connecting to NATS at {}", coracle_events::redact::redact_url_credentials(&nats))
            })?;
            let js = async_nats::jetstream::new(client);
            coracle_events::bootstrap::ensure(&js).await?;
            let published = Publisher::new(js).publish(&event).await?;
            let note = if published.duplicate { " (already published: dropped as a duplicate)" } else { "" };
            println!("published tick {id}{note}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
