//! `coracle`: the command-line interface, the function runner and (later) the HTTPS server.

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use coracle_functions::context::{Context, Nats};
use coracle_functions::handlers::Function;
use coracle_functions::{cli, runner};
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "coracle",
    version,
    about = "Back up and restore Kubernetes pod volumes with restic, driven by events"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Plan offline from a dump of cluster objects.
    #[command(subcommand)]
    Plan(PlanCommand),
    /// Prepare infrastructure.
    #[command(subcommand)]
    Setup(SetupCommand),
    /// Run one function: once on an event, as a NATS consumer, or under AWS Lambda.
    Fn(FnArgs),
    /// Inspect backups.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Inspect restores.
    #[command(subcommand)]
    Restore(RestoreCommand),
    /// Answer one AdmissionReview offline.
    #[command(subcommand)]
    Admission(AdmissionCommand),
    /// Serve the admission endpoints over HTTPS.
    Serve(ServeArgs),
    /// Create the webhook's CA and serving certificate Secret and write the caBundles (idempotent).
    Certgen(CertgenArgs),
    /// Backup schedules: create, list, pause, unpause, delete; preview fire times.
    #[command(subcommand)]
    Schedule(coracle_functions::schedule_cli::ScheduleCommand),
    /// Stream Coracle's events as readable lines or JSON.
    Watch(WatchArgs),
    /// Rebuild backup records from the repositories' snapshot tags.
    #[command(subcommand)]
    Catalog(coracle_functions::maintenance_cli::CatalogCommand),
    /// Repository keys: rotate a namespace's key.
    #[command(subcommand)]
    Keys(coracle_functions::maintenance_cli::KeysCommand),
    /// Repository maintenance (forget, prune, check) on demand.
    #[command(subcommand)]
    Maintenance(coracle_functions::maintenance_cli::MaintenanceCommand),
    /// Recover results from Jobs' termination messages and fail volumes whose Job gave up.
    Sweep {
        #[arg(long, env = "CORACLE_NATS_URL")]
        nats: String,
        #[arg(long, env = "CORACLE_SYSTEM_NAMESPACE", default_value = coracle_functions::settings::DEFAULT_SYSTEM_NAMESPACE)]
        system_namespace: String,
    },
}

#[derive(Subcommand)]
enum RestoreCommand {
    /// Request a restore from a backup; with --wait, follow it until every target is restored.
    Create(coracle_functions::create_cli::RestoreCreate),
    /// Show one restore's record: every target with its state, pod and figures.
    Describe {
        name: String,
        #[arg(long, env = "CORACLE_NATS_URL")]
        nats: String,
        #[arg(short = 'o', long, value_enum, default_value_t = cli::Format::Table)]
        output: cli::Format,
    },
}

#[derive(clap::Args)]
struct WatchArgs {
    /// Only these events: `backup.completed`, `volume.backup.*`, `restore.>` or an event type
    /// (`dev.coracle.backup.completed.v1`); repeat or comma-separate.
    #[arg(long = "type", value_delimiter = ',')]
    types: Vec<String>,
    /// Start from the oldest event the stream still holds instead of from now.
    #[arg(long)]
    from_start: bool,
    /// Exit after this many events.
    #[arg(long)]
    count: Option<usize>,
    #[arg(long, env = "CORACLE_NATS_URL")]
    nats: String,
    /// `table` prints one readable line per event; `json` one CloudEvent per line.
    #[arg(short = 'o', long, value_enum, default_value_t = cli::Format::Table)]
    output: cli::Format,
}

#[derive(Subcommand)]
enum AdmissionCommand {
    /// Read an AdmissionReview v1 and print the AdmissionReview response.
    Review {
        #[arg(long)]
        file: PathBuf,
        /// Pending restores: what `coracle plan restore -o json` prints.
        #[arg(long)]
        pending: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    #[arg(long, default_value = "0.0.0.0:8443", env = "CORACLE_LISTEN")]
    listen: String,
    #[arg(long, env = "CORACLE_TLS_CERT")]
    tls_cert: PathBuf,
    #[arg(long, env = "CORACLE_TLS_KEY")]
    tls_key: PathBuf,
    #[arg(long, env = "CORACLE_NATS_URL")]
    nats: String,
    #[arg(long, env = "CORACLE_SYSTEM_NAMESPACE", default_value = coracle_functions::settings::DEFAULT_SYSTEM_NAMESPACE)]
    system_namespace: String,
}

#[derive(Subcommand)]
enum PlanCommand {
    /// Which volumes a backup request would back up, and which it skips and why.
    Backup {
        /// Multi-document YAML of cluster objects (pods, PVCs, PVs, namespaces, ReplicaSets, coracle-config).
        #[arg(long)]
        objects: PathBuf,
        /// The request (JSON or YAML), bare or as a whole coracle.backup.requested CloudEvent.
        #[arg(long)]
        request: PathBuf,
        #[arg(short = 'o', long, value_enum, default_value_t = PlanOutput::Json)]
        output: PlanOutput,
    },
    /// Which volumes a restore request would restore, keyed as admission will match them.
    Restore {
        /// A backup record: what `coracle backup describe NAME -o json` prints.
        #[arg(long)]
        record: PathBuf,
        /// The request (JSON or YAML), bare or as a whole coracle.restore.requested CloudEvent.
        #[arg(long)]
        request: PathBuf,
        #[arg(short = 'o', long, value_enum, default_value_t = cli::Format::Json)]
        output: cli::Format,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum PlanOutput {
    Json,
    Yaml,
    /// The Jobs, as multi-document YAML ready for `kubectl apply -f -`.
    Jobs,
}

#[derive(Subcommand)]
enum SetupCommand {
    /// Create or update the CORACLE stream and the KV buckets (idempotent).
    Nats {
        #[arg(long, env = "CORACLE_NATS_URL")]
        nats: String,
    },
    /// Create the master-key Secret with a random key unless it exists (never replaces a key).
    MasterKey {
        #[arg(long, env = "CORACLE_SYSTEM_NAMESPACE", default_value = coracle_functions::settings::DEFAULT_SYSTEM_NAMESPACE)]
        system_namespace: String,
        #[arg(long, default_value = coracle_functions::rbac::MASTER_KEY_SECRET)]
        secret: String,
    },
}

#[derive(clap::Args)]
struct CertgenArgs {
    #[arg(long, env = "CORACLE_SYSTEM_NAMESPACE", default_value = coracle_functions::settings::DEFAULT_SYSTEM_NAMESPACE)]
    system_namespace: String,
    /// The Service in front of `coracle serve`; the certificate names `<service>.<namespace>.svc`.
    #[arg(long, default_value = "coracle")]
    service: String,
    #[arg(long, default_value = coracle_functions::rbac::WEBHOOK_TLS_SECRET)]
    secret: String,
    #[arg(long = "mutating-webhook", default_value = coracle_functions::rbac::MUTATING_WEBHOOK)]
    mutating_webhooks: Vec<String>,
    #[arg(long = "validating-webhook", default_value = coracle_functions::rbac::VALIDATING_WEBHOOK)]
    validating_webhooks: Vec<String>,
}

#[derive(clap::Args)]
struct FnArgs {
    #[arg(value_enum)]
    function: Function,
    /// Handle one event from a file (`-` for standard input) and exit.
    #[arg(long, conflicts_with_all = ["drain", "lambda"])]
    event: Option<String>,
    /// NATS server; without --event, consume the function's durable consumer.
    #[arg(long, env = "CORACLE_NATS_URL")]
    nats: Option<String>,
    /// Exit once the consumer is idle (KEDA ScaledJob / CronJob runs).
    #[arg(long)]
    drain: bool,
    /// Serve AWS Lambda invocations (also chosen when AWS_LAMBDA_RUNTIME_API is set).
    #[arg(long)]
    lambda: bool,
    /// Namespace of Coracle's ConfigMap, Secret and Jobs.
    #[arg(long, env = "CORACLE_SYSTEM_NAMESPACE", default_value = coracle_functions::settings::DEFAULT_SYSTEM_NAMESPACE)]
    system_namespace: String,
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Request a backup through NATS; with --wait, follow it with a progress bar per volume.
    Create(coracle_functions::create_cli::BackupCreate),
    /// Plan, create the Jobs, wait for them and print the result, with no NATS (one-shot Job).
    Run(coracle_functions::backup_run::BackupRun),
    /// Delete a backup: forget its snapshots in every repository (data other backups use stays).
    Delete(coracle_functions::maintenance_cli::BackupDelete),
    /// List backups.
    Get {
        #[arg(long, env = "CORACLE_NATS_URL")]
        nats: String,
        #[arg(short = 'o', long, value_enum, default_value_t = cli::Format::Table)]
        output: cli::Format,
    },
    /// Show one backup's record: every volume with its snapshot, bytes, files, duration, warnings.
    Describe {
        name: String,
        #[arg(long, env = "CORACLE_NATS_URL")]
        nats: String,
        #[arg(short = 'o', long, value_enum, default_value_t = cli::Format::Table)]
        output: cli::Format,
    },
}

fn read_input(path: &str) -> anyhow::Result<Vec<u8>> {
    if path == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).context("reading standard input")?;
        Ok(buf)
    } else {
        std::fs::read(path).with_context(|| format!("reading {path}"))
    }
}

async fn kube_client() -> Option<kube::Client> {
    match coracle_functions::kube_cluster::client().await {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::debug!(error = %e, "no Kubernetes client configured");
            None
        }
    }
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn,async_nats=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // A one-shot function run (`fn NAME --event FILE`) handles one event and exits: one thread
    // starts faster and keeps its few requests off cross-thread wake-ups. Everything long-running
    // (consumers, serve, Lambda, CLI waits) gets the multi-thread runtime.
    let one_shot = matches!(&cli.command, Command::Fn(args) if args.event.is_some());
    let runtime = if one_shot {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    match cli.command {
        Command::Plan(PlanCommand::Backup { objects, request, output }) => {
            let snapshot = coracle_functions::objects::load_snapshot(&objects)?;
            let request = coracle_functions::request::parse_backup_request(&read_input(&request.to_string_lossy())?)
                .with_context(|| format!("reading request {}", request.display()))?;
            let out = match output {
                PlanOutput::Json => cli::plan_json(&request, &snapshot)?,
                PlanOutput::Yaml => cli::plan_yaml(&request, &snapshot)?,
                PlanOutput::Jobs => cli::plan_jobs_yaml(&request, &snapshot)?,
            };
            print!("{out}");
        }
        Command::Plan(PlanCommand::Restore { record, request, output }) => {
            let record: coracle_functions::record::BackupRecord =
                serde_json::from_slice(&read_input(&record.to_string_lossy())?).with_context(|| {
                    format!("{} is not a backup record (coracle backup describe NAME -o json)", record.display())
                })?;
            let request = coracle_functions::request::parse_restore_request(&read_input(&request.to_string_lossy())?)
                .with_context(|| format!("reading request {}", request.display()))?;
            print!("{}", cli::restore_plan(&request, &record, output)?);
        }
        Command::Backup(BackupCommand::Create(args)) => {
            return coracle_functions::create_cli::backup_create(args).await
        }
        Command::Backup(BackupCommand::Run(args)) => return coracle_functions::backup_run::run(args).await,
        Command::Restore(RestoreCommand::Create(args)) => {
            return coracle_functions::create_cli::restore_create(args).await
        }
        Command::Watch(args) => watch(args).await?,
        Command::Restore(RestoreCommand::Describe { name, nats, output }) => {
            let n = Nats::connect(&nats).await?;
            let Some((record, _)) = n.restores.get(&name).await? else { bail!("no restore named {name}") };
            print!("{}", cli::restore_describe(&record, output)?);
        }
        Command::Admission(AdmissionCommand::Review { file, pending }) => {
            let store = coracle_functions::handlers::admit::MemoryPending::default();
            if let Some(path) = pending {
                let plan: coracle_functions::plan_restore::RestorePlan =
                    serde_json::from_slice(&read_input(&path.to_string_lossy())?).with_context(|| {
                        format!("{} is not a restore plan (coracle plan restore -o json)", path.display())
                    })?;
                let mut map = store.0.lock().map_err(|_| anyhow::anyhow!("pending entries poisoned"))?;
                for entry in plan.entries {
                    let key = coracle_functions::plan_restore::pending_key(&entry.target_namespace, &entry.target);
                    map.insert(key, coracle_functions::restore_state::PendingEntry::new(entry));
                }
            }
            let settings =
                coracle_functions::admission::HelperSettings::from(&coracle_functions::settings::Settings::default());
            let body = read_input(&file.to_string_lossy())?;
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &coracle_functions::handlers::admit::review(&store, &settings, &body).await
                )?
            );
        }
        Command::Serve(args) => {
            let n = Nats::connect(&args.nats).await?;
            let settings = match kube_client().await {
                Some(client) => coracle_functions::kube_cluster::settings(&client, &args.system_namespace).await?,
                None => coracle_functions::settings::Settings::default(),
            };
            // Pending restores from a watched in-memory copy of the KV bucket: a review needs no
            // round trip to NATS (see handlers::admit::WatchedPending for why that stays correct).
            let pending = coracle_functions::handlers::admit::WatchedPending::start(
                n.client.clone(),
                n.js.clone(),
                n.pending.clone(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("watching pending restores: {e}"))?;
            let app = coracle_functions::serve::router(pending, (&settings).into())
                .merge(coracle_functions::serve::workload_webhook(n.publisher.clone()));
            coracle_functions::serve::serve(&args.listen, &args.tls_cert, &args.tls_key, app).await?;
        }
        Command::Sweep { nats, system_namespace } => {
            let ctx = Context::new(kube_client().await, Some(Nats::connect(&nats).await?), &system_namespace);
            let published = coracle_functions::handlers::sweep::run(&ctx).await?;
            println!("sweep: published {published} recovered result(s)");
        }
        Command::Setup(SetupCommand::MasterKey { system_namespace, secret }) => {
            let client = kube::Client::try_default().await.context("no Kubernetes API configured")?;
            if coracle_functions::master_key::ensure(&client, &system_namespace, &secret).await? {
                println!(
                    "created Secret {system_namespace}/{secret} with a new master key; keep a copy outside the cluster"
                );
            } else {
                println!("Secret {system_namespace}/{secret} already holds the master key; left unchanged");
            }
        }
        Command::Certgen(args) => {
            let client = kube::Client::try_default().await.context("no Kubernetes API configured")?;
            let opts = coracle_functions::certgen::Options {
                namespace: args.system_namespace,
                service: args.service,
                secret: args.secret,
                mutating_webhooks: args.mutating_webhooks,
                validating_webhooks: args.validating_webhooks,
            };
            let outcome = coracle_functions::certgen::run(&client, &opts, chrono::Utc::now()).await?;
            let action = if outcome.issued { "issued a new certificate into" } else { "kept the valid certificate in" };
            println!(
                "certgen: {action} Secret {}/{}; caBundle written to {:?}",
                opts.namespace, opts.secret, outcome.patched
            );
            if !outcome.missing.is_empty() {
                println!("certgen: not installed, skipped: {:?}", outcome.missing);
            }
        }
        Command::Setup(SetupCommand::Nats { nats }) => {
            Nats::connect(&nats).await?;
            println!("stream {} and KV buckets are ready", coracle_events::subjects::STREAM);
        }
        Command::Fn(args) => return run_function(args).await,
        Command::Schedule(command) => return coracle_functions::schedule_cli::run(command).await,
        Command::Catalog(c) => return coracle_functions::maintenance_cli::catalog(c).await,
        Command::Keys(c) => return coracle_functions::maintenance_cli::keys(c).await,
        Command::Maintenance(c) => return coracle_functions::maintenance_cli::maintenance(c).await,
        Command::Backup(BackupCommand::Delete(args)) => {
            return coracle_functions::maintenance_cli::backup_delete(args).await
        }
        Command::Backup(BackupCommand::Get { nats, output }) => {
            let n = Nats::connect(&nats).await?;
            let mut records = n.records.list().await?;
            records.sort_by_key(|r| std::cmp::Reverse(r.started));
            print!("{}", cli::backups_list(&records, output)?);
        }
        Command::Backup(BackupCommand::Describe { name, nats, output }) => {
            let n = Nats::connect(&nats).await?;
            let Some((record, _)) = n.records.get(&name).await? else { bail!("no backup named {name}") };
            print!("{}", cli::backup_describe(&record, output)?);
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    use std::io::Write as _;
    let subjects = coracle_functions::watch::subjects_for(&args.types)?;
    let n = Nats::connect(&args.nats).await?;
    let events = coracle_functions::watch::events(&n.js, subjects, args.from_start).await?;
    let mut events = std::pin::pin!(events.take(args.count.unwrap_or(usize::MAX)));
    let mut out = std::io::stdout().lock();
    while let Some(seen) = events.next().await {
        let seen = seen?;
        let text = match args.output {
            cli::Format::Table => coracle_functions::watch::line(&seen),
            cli::Format::Json | cli::Format::Yaml => match coracle_functions::watch::json_line(&seen.payload) {
                Some(line) => line,
                None => {
                    eprintln!("skipping a non-JSON message on {}", seen.subject);
                    continue;
                }
            },
        };
        // A closed pipe (`coracle watch | head`) ends the watch quietly.
        if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
            break;
        }
    }
    Ok(())
}

async fn run_function(args: FnArgs) -> anyhow::Result<std::process::ExitCode> {
    let nats = match &args.nats {
        Some(url) => Some(Nats::connect(url).await?),
        None => None,
    };
    let ctx = Arc::new(Context::new(kube_client().await, nats, &args.system_namespace));
    if let Some(path) = &args.event {
        let payload = read_input(path)?;
        let emitted = runner::once(&ctx, args.function, &payload).await?;
        for event in emitted {
            println!("{}", serde_json::to_string(&event)?);
        }
    } else if args.lambda || std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        runner::lambda(ctx, args.function).await?;
    } else if ctx.nats.is_some() {
        let stats = runner::nats(ctx, args.function, args.drain).await?;
        eprintln!(
            "{}: handled {}, retried {}, dead-lettered {}",
            args.function.name(),
            stats.handled,
            stats.retried,
            stats.dead_lettered
        );
    } else {
        bail!("give --event FILE, --nats URL or --lambda");
    }
    Ok(std::process::ExitCode::SUCCESS)
}
