//! `coracle backup create` and `coracle restore create`: publish a request, and with `--wait`
//! follow it to the end and print the record. The event id is derived from the name, and the uid
//! from the event id, so running the same command twice joins the same backup instead of starting
//! a second one (the stream drops the duplicate; plan-backup resumes the record).

use crate::cli::{backup_describe, restore_describe, Format};
use crate::context::Nats;
use crate::handlers::event_uid;
use crate::record::RecordPhase;
use crate::request::{validate, validate_restore};
use anyhow::{bail, Context as _};
use coracle_events::{BackupRequest, CloudEvent, RestoreRequest};
use std::process::ExitCode;
use std::time::Duration;

const SOURCE: &str = "/coracle/cli";

/// What to back up: shared by `backup create` (through NATS) and `backup run` (no NATS).
#[derive(clap::Args, Debug, Clone)]
pub struct BackupSpec {
    /// The backup's name (a Kubernetes name).
    pub name: String,
    /// Namespaces to back up (repeat or comma-separate); none: every namespace.
    #[arg(long = "namespace", short = 'n', value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Namespaces to leave out.
    #[arg(long = "exclude-namespace", value_delimiter = ',')]
    pub exclude_namespaces: Vec<String>,
    /// Only pods matching this label selector (`app=web,tier in (a,b)`).
    #[arg(long, short = 'l')]
    pub selector: Option<String>,
    /// Opt-out mode: every eligible volume unless excluded by annotation.
    #[arg(long)]
    pub default_volumes_to_backup: bool,
    /// How long the backup is kept (Go duration; default 720h).
    #[arg(long)]
    pub ttl: Option<String>,
    /// Time limit for each volume (Go duration; default from Coracle's ConfigMap).
    #[arg(long)]
    pub volume_timeout: Option<String>,
}

impl BackupSpec {
    /// The validated request; `uid` as given.
    pub fn request(&self, uid: Option<String>, origin: &str) -> anyhow::Result<BackupRequest> {
        let request = BackupRequest {
            name: self.name.clone(),
            uid,
            included_namespaces: self.namespaces.clone(),
            excluded_namespaces: self.exclude_namespaces.clone(),
            label_selector: self.selector.clone(),
            default_volumes_to_backup: self.default_volumes_to_backup,
            ttl: self.ttl.clone(),
            volume_timeout: self.volume_timeout.clone(),
            origin: Some(origin.to_string()),
        };
        validate(&request)?;
        Ok(request)
    }
}

/// `--wait` and how long to wait.
#[derive(clap::Args, Debug, Clone)]
pub struct WaitArgs {
    /// Follow it to the end: live progress, then the final table; exit 0 only on full success.
    #[arg(long)]
    pub wait: bool,
    /// With --wait, give up waiting after this long (Go duration); the work itself goes on.
    #[arg(long, default_value = "1h")]
    pub timeout: String,
}

impl WaitArgs {
    fn limit(&self) -> anyhow::Result<Duration> {
        crate::duration::parse_duration(&self.timeout).with_context(|| format!("--timeout {:?}", self.timeout))
    }
}

#[derive(clap::Args, Debug)]
pub struct BackupCreate {
    #[command(flatten)]
    pub spec: BackupSpec,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[arg(long, env = "CORACLE_NATS_URL")]
    pub nats: String,
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

pub async fn backup_create(args: BackupCreate) -> anyhow::Result<ExitCode> {
    let id = format!("cli-backup-{}", args.spec.name);
    let uid = event_uid("backup", &id);
    let request = args.spec.request(None, "cli")?;
    let limit = args.wait.limit()?;
    let nats = Nats::connect(&args.nats).await?;
    if let Some((existing, _)) = nats.records.get(&request.name).await? {
        if existing.backup.uid != uid {
            bail!(
                "a backup named {} already exists (uid {}, not created by this command); choose another name",
                request.name,
                existing.backup.uid
            );
        }
    }
    // Subscribed before publishing, so no progress of a fast volume is missed.
    let progress = if args.wait.wait { Some(crate::wait::backup_progress(&nats).await?) } else { None };
    let event = CloudEvent::new(id, SOURCE, Some(request.name.clone()), request);
    let published = nats.publisher.publish(&event).await?;
    let Some(progress) = progress else {
        return print_request(&event, published.duplicate, "backup", &uid, args.output);
    };
    let record = crate::wait::backup(&nats, &event.data.name, progress, limit).await?;
    print!("{}", backup_describe(&record, args.output)?);
    Ok(exit_code(record.phase))
}

#[derive(clap::Args, Debug)]
pub struct RestoreCreate {
    /// The restore's name (a Kubernetes name).
    pub name: String,
    /// The backup to restore from.
    #[arg(long)]
    pub from_backup: String,
    /// Restore namespace SRC into DST (`SRC:DST`, repeat or comma-separate).
    #[arg(long = "namespace-mapping", value_delimiter = ',')]
    pub namespace_mappings: Vec<String>,
    /// Source namespaces to restore (none: all in the backup).
    #[arg(long = "namespace", short = 'n', value_delimiter = ',')]
    pub namespaces: Vec<String>,
    #[arg(long = "exclude-namespace", value_delimiter = ',')]
    pub exclude_namespaces: Vec<String>,
    /// Only these volumes: `namespace/volume`, `volume` or `namespace/claim`.
    #[arg(long = "volume", value_delimiter = ',')]
    pub volumes: Vec<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[arg(long, env = "CORACLE_NATS_URL")]
    pub nats: String,
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

impl RestoreCreate {
    fn request(&self) -> anyhow::Result<RestoreRequest> {
        let mut mapping = std::collections::BTreeMap::new();
        for pair in &self.namespace_mappings {
            let Some((from, to)) = pair.split_once(':') else {
                bail!("--namespace-mapping {pair:?}: expected SRC:DST");
            };
            if mapping.insert(from.to_string(), to.to_string()).is_some() {
                bail!("--namespace-mapping: {from} is mapped twice");
            }
        }
        let request = RestoreRequest {
            name: self.name.clone(),
            uid: None,
            backup: self.from_backup.clone(),
            namespace_mapping: mapping,
            included_namespaces: self.namespaces.clone(),
            excluded_namespaces: self.exclude_namespaces.clone(),
            volumes: self.volumes.clone(),
        };
        validate_restore(&request)?;
        Ok(request)
    }
}

pub async fn restore_create(args: RestoreCreate) -> anyhow::Result<ExitCode> {
    let request = args.request()?;
    let limit = args.wait.limit()?;
    let id = format!("cli-restore-{}", request.name);
    let uid = event_uid("restore", &id);
    let nats = Nats::connect(&args.nats).await?;
    if nats.records.get(&request.backup).await?.is_none() {
        // plan-restore can still rebuild it from the repository's tags; say so rather than fail.
        eprintln!(
            "note: no record of backup {} in NATS; plan-restore will look for it in the repository",
            request.backup
        );
    }
    let event = CloudEvent::new(id, SOURCE, Some(request.name.clone()), request);
    let published = nats.publisher.publish(&event).await?;
    if !args.wait.wait {
        return print_request(&event, published.duplicate, "restore", &uid, args.output);
    }
    let record = crate::wait::restore(&nats, &event.data.name, limit).await?;
    print!("{}", restore_describe(&record, args.output)?);
    Ok(exit_code(record.phase))
}

fn print_request<T: serde::Serialize>(
    event: &CloudEvent<T>,
    duplicate: bool,
    what: &str,
    uid: &str,
    output: Format,
) -> anyhow::Result<ExitCode> {
    let name = event.subject.clone().unwrap_or_default();
    match output {
        Format::Table => {
            let again = if duplicate { " (already requested: this is the same one)" } else { "" };
            println!("{what} {name} requested, uid {uid}{again}");
            println!("follow it: coracle {what} describe {name}   or   coracle watch");
        }
        Format::Json => println!("{}", serde_json::to_string_pretty(event)?),
        Format::Yaml => print!("{}", serde_yaml::to_string(event)?),
    }
    Ok(ExitCode::SUCCESS)
}

/// 0 only on full success.
pub fn exit_code(phase: RecordPhase) -> ExitCode {
    if phase == RecordPhase::Completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
