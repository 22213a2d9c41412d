//! `coracle backup run`: a whole backup with no NATS at all, for a one-shot Kubernetes Job
//! (`kubectl apply -f deploy/examples/backup-run-job.yaml`) or a person at a terminal. It plans
//! exactly as plan-backup does, creates the same Jobs, watches them, reads each volume's result
//! from its pod's termination message (the sweep's pure reader), keeps the record in memory and
//! prints it. The uid is derived from the name, so re-running after the Job's own pod was
//! restarted joins the Jobs already created instead of starting over.

use crate::cli::{backup_describe, Format};
use crate::create_cli::{exit_code, BackupSpec};
use crate::handlers::event_uid;
use crate::handlers::plan_backup::planned;
use crate::jobs::{backup_jobs, LABEL_BACKUP_UID};
use crate::kube_cluster;
use crate::record::BackupRecord;
use crate::sweep::backup_sweep;
use anyhow::Context as _;
use chrono::Utc;
use coracle_events::{BackupRef, VolumeOutcome};
use std::process::ExitCode;
use std::time::Duration;

/// How long one watch of the Jobs lasts before the results are read again anyway.
const RECHECK: Duration = Duration::from_secs(5);

#[derive(clap::Args, Debug)]
pub struct BackupRun {
    #[command(flatten)]
    pub spec: BackupSpec,
    /// Give up after this long (Go duration); the Jobs are left to finish on their own.
    #[arg(long, default_value = "4h")]
    pub timeout: String,
    #[arg(long, env = "CORACLE_SYSTEM_NAMESPACE", default_value = crate::settings::DEFAULT_SYSTEM_NAMESPACE)]
    pub system_namespace: String,
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

pub async fn run(args: BackupRun) -> anyhow::Result<ExitCode> {
    let limit =
        crate::duration::parse_duration(&args.timeout).with_context(|| format!("--timeout {:?}", args.timeout))?;
    let uid = event_uid("backup", &format!("run-{}", args.spec.name));
    let request = args.spec.request(Some(uid.clone()), "backup-run")?;
    let client = kube::Client::try_default()
        .await
        .context("backup run needs the Kubernetes API: run it in a pod or set KUBECONFIG")?;
    let mut settings = kube_cluster::settings(&client, &args.system_namespace).await?;
    // No NATS: the Jobs report through their termination messages only.
    settings.nats_url.clear();
    let snapshot = kube_cluster::backup_snapshot(
        &client,
        settings,
        &request.included_namespaces,
        request.label_selector.as_deref(),
    )
    .await?;
    let backup = BackupRef { name: request.name.clone(), uid: uid.clone() };
    let now = Utc::now();
    let (planned, volume_timeout) =
        planned(request, &snapshot, backup, now).map_err(|e| anyhow::anyhow!("planning: {}", e.reason()))?;
    let mut record = BackupRecord::from_plan(&planned, now);
    for skip in &planned.skipped {
        eprintln!("skipped {}/{}/{}: {}", skip.namespace, skip.pod, skip.volume, skip.reason);
    }
    let jobs =
        // No NATS, no parent hints: each Job looks its parent up in the repository.
        backup_jobs(&planned.backup, &planned.volumes, Some(planned.expires), &Default::default(), volume_timeout, &snapshot.settings);
    for (job, created) in jobs.iter().zip(kube_cluster::create_jobs(&client, &jobs).await?) {
        let name = job.metadata.name.as_deref().unwrap_or_default();
        eprintln!("Job {name}: {}", if created { "created" } else { "already exists, joining it" });
    }
    let deadline = tokio::time::Instant::now() + limit;
    let namespace = &snapshot.settings.system_namespace;
    let selector = format!("{LABEL_BACKUP_UID}={uid}");
    while !record.is_terminal() {
        let (jobs, pods) = kube_cluster::jobs_and_pods(&client, namespace, &selector).await?;
        for outcome in backup_sweep(&record, &jobs, &pods) {
            let changed = match &outcome {
                VolumeOutcome::Completed(c) => record.apply_completed(c, Utc::now()),
                VolumeOutcome::Failed(f) => record.apply_failed(f, Utc::now()),
            };
            if changed {
                eprintln!("{}", outcome_line(&outcome));
            }
        }
        if record.is_terminal() {
            break;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            print!("{}", backup_describe(&record, args.output)?);
            anyhow::bail!("backup {} did not finish within {}; its Jobs go on", record.backup.name, args.timeout);
        }
        kube_cluster::wait_for_job_change(&client, namespace, &selector, left.min(RECHECK)).await?;
    }
    print!("{}", backup_describe(&record, args.output)?);
    Ok(exit_code(record.phase))
}

fn outcome_line(outcome: &VolumeOutcome) -> String {
    match outcome {
        VolumeOutcome::Completed(c) if c.snapshot_id.is_empty() => {
            format!("{}: Completed (empty volume)", c.volume.key())
        }
        VolumeOutcome::Completed(c) if !c.warnings.is_empty() => {
            format!("{}: Completed with {} warning(s)", c.volume.key(), c.warnings.len())
        }
        VolumeOutcome::Completed(c) => {
            format!("{}: Completed (snapshot {})", c.volume.key(), c.snapshot_id.chars().take(8).collect::<String>())
        }
        VolumeOutcome::Failed(f) => format!("{}: Failed: {}", f.volume.key(), f.reason),
    }
}
