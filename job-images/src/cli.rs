//! Command line and environment of the job binary. Every setting can come from a flag or from
//! the environment the Job spec sets. Values are taken as text and checked by the backup or
//! restore itself, so that a bad value still ends in a termination message instead of a usage
//! error.

use crate::keys::{KeyError, MasterKey};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "coracle-volume-job",
    version,
    about = "Backs up or restores one Kubernetes pod volume with restic (one index of a Coracle Job)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Back up the volume at this Job index: resolve it on the node, run restic, publish events
    /// and write the result to the termination message.
    #[command(after_help = BACKUP_AFTER_HELP)]
    Backup(BackupArgs),
    /// Restore the volume at this Job index into the target pod's volume directory, then leave
    /// the marker the pod's restore-wait init container waits for.
    #[command(after_help = RESTORE_AFTER_HELP)]
    Restore(RestoreArgs),
    /// Maintain one namespace's repository: remove locks of Job pods that are gone, forget the
    /// snapshots of expired or deleted backups, prune, check.
    #[command(after_help = MAINTAIN_AFTER_HELP)]
    Maintain(MaintainArgs),
}

const MAINTAIN_AFTER_HELP: &str = "\
Locks: a lock written from this host by a dead pid, or by a Coracle Job pod (hostname coracle-...) that is
not in CORACLE_LIVE_HOSTS and is older than CORACLE_LIVE_HOSTS_AT (minus 2 minutes of clock skew), is removed;
every other lock is kept. Exclusive tasks wait up to 2 minutes for running backups' locks.

Exit codes:
  0  every task done (the result is in the termination message and coracle.maintenance.completed)
  1  a task failed or check found errors
  2  invalid settings";

const BACKUP_AFTER_HELP: &str = "\
Secrets:
  CORACLE_MASTER_KEY      the installation master key (environment only, never a flag); or --master-key-file.
                          Each namespace's restic password is derived from it and passed to restic only in
                          its environment (RESTIC_PASSWORD).
  restic inherits RESTIC_CACHE_DIR and backend credentials (AWS_ACCESS_KEY_ID, ...) from the environment.

Exit codes:
  0  completed, also with warnings (restic exit 3, some files unreadable: reported in the event and the
     termination message, not by failing the pod, because a retry would not read them either)
  1  failed; the Job's backoffLimitPerIndex retries the index
  2  invalid settings or names; retrying cannot help (a podFailurePolicy FailIndex rule may match it)";

const RESTORE_AFTER_HELP: &str = "\
The snapshot's contents are restored into the volume directory (<pod dir>/volumes/*/<dir>, its mount/
subdirectory for CSI volumes). Nothing is deleted: files the volume already holds stay, and files of the same
name are overwritten with the snapshot's version. Then <volume>/.coracle/<restore uid> is written. A failure
that is final (the last attempt, or one a retry cannot fix) writes <volume>/.coracle/<restore uid>.failed
holding the reason instead, so that the pod's restore-wait init container stops waiting and reports it.

Secrets:
  CORACLE_MASTER_KEY      as for backup; the password is derived for the snapshot's source namespace.

Exit codes:
  0  restored and marked
  1  failed; the Job's backoffLimitPerIndex retries the index
  2  invalid settings or names, or an unsafe volume; retrying cannot help (the failure is final at once)";

/// Settings every Job index has, backup or restore.
#[derive(Debug, Clone, Default, Args)]
pub struct JobArgs {
    /// Index into the volume list (set by Kubernetes for Indexed Jobs).
    #[arg(long, env = "JOB_COMPLETION_INDEX")]
    pub index: Option<String>,
    /// This Job's name; events come from /coracle/jobs/<job>.
    #[arg(long, env = "CORACLE_JOB_NAME")]
    pub job_name: Option<String>,
    /// A namespace's repository is <prefix>/<namespace> (any restic backend).
    #[arg(long, env = "CORACLE_REPOSITORY_PREFIX", hide_env_values = true)]
    pub repository_prefix: Option<String>,
    /// File holding the master key (a mounted Secret), instead of CORACLE_MASTER_KEY.
    #[arg(long, env = "CORACLE_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Generation of the derived repository passwords (key rotation); default 1.
    #[arg(long, env = "CORACLE_KEY_GENERATION")]
    pub key_generation: Option<String>,
    /// Per-namespace generations, `ns=2,other=3`; a namespace not listed uses --key-generation.
    #[arg(long, env = "CORACLE_KEY_GENERATIONS")]
    pub key_generations: Option<String>,
    /// NATS URL; when set and not empty, events are published to JetStream.
    #[arg(long, env = "CORACLE_NATS_URL", hide_env_values = true)]
    pub nats_url: Option<String>,
    /// How many times this index already failed (downward API
    /// batch.kubernetes.io/job-index-failure-count); empty means 0.
    #[arg(long, env = "CORACLE_ATTEMPT")]
    pub attempt: Option<String>,
    /// The Job's backoffLimitPerIndex; a failure is final when attempt >= this. Default 0.
    #[arg(long, env = "CORACLE_BACKOFF_LIMIT_PER_INDEX")]
    pub backoff_limit_per_index: Option<String>,
    #[arg(long, env = "CORACLE_TERMINATION_LOG", default_value = "/dev/termination-log")]
    pub termination_log: PathBuf,
    /// The restic binary.
    #[arg(long, env = "CORACLE_RESTIC", default_value = "restic")]
    pub restic: PathBuf,
    /// The version of that restic (e.g. 0.18.0), stamped by the image build, which pins it. Saves
    /// a `restic version` run per Job; unset or not a version, restic is asked.
    #[arg(long, env = "CORACLE_RESTIC_VERSION")]
    pub restic_version: Option<String>,
}

impl JobArgs {
    /// The master key from --master-key-file or CORACLE_MASTER_KEY. Read here rather than by
    /// clap so that it can never be given on the command line, where `ps` would show it.
    pub fn master_key(&self) -> Result<MasterKey, KeyError> {
        if let Some(path) = &self.master_key_file {
            return MasterKey::from_file(path);
        }
        match std::env::var_os("CORACLE_MASTER_KEY") {
            Some(raw) => MasterKey::new(std::os::unix::ffi::OsStrExt::as_bytes(raw.as_os_str())),
            None => Err(KeyError::Missing),
        }
    }

    /// The password generation of `namespace`: its entry in `CORACLE_KEY_GENERATIONS`, else
    /// `CORACLE_KEY_GENERATION`, else 1.
    pub fn generation(&self, namespace: &str) -> Result<u32, String> {
        let listed = self.key_generations.as_deref().unwrap_or_default().split(',').find_map(|entry| {
            let (ns, generation) = entry.split_once('=')?;
            (ns.trim() == namespace).then(|| generation.trim().to_string())
        });
        match listed {
            Some(g) => parse_count("CORACLE_KEY_GENERATIONS", Some(&g), 1),
            None => parse_count("CORACLE_KEY_GENERATION", self.key_generation.as_deref(), 1),
        }
    }

    /// The Job's name for event sources; `unknown` when not set.
    pub fn job(&self) -> &str {
        self.job_name.as_deref().filter(|j| !j.is_empty()).unwrap_or("unknown")
    }
}

#[derive(Debug, Clone, Default, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// JSON array of planned volumes (camelCase PlannedVolume).
    #[arg(long, env = "CORACLE_VOLUMES", hide_env_values = true)]
    pub volumes: Option<String>,
    #[arg(long, env = "CORACLE_BACKUP_NAME")]
    pub backup_name: Option<String>,
    #[arg(long, env = "CORACLE_BACKUP_UID")]
    pub backup_uid: Option<String>,
    /// The backup's expiry (RFC 3339), kept as a snapshot tag for `coracle catalog rebuild`.
    #[arg(long, env = "CORACLE_BACKUP_EXPIRES")]
    pub backup_expires: Option<String>,
    /// Where the node's kubelet pods directory is mounted.
    #[arg(long, env = "CORACLE_PODS_ROOT", default_value = "/host/pods")]
    pub pods_root: PathBuf,
    /// JSON object: volume identity → the snapshot to use as restic's parent (the planner's hints;
    /// without one the Job looks the parent up in the repository).
    #[arg(long, env = "CORACLE_PARENTS")]
    pub parents: Option<String>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// JSON array of the target pod's volumes to restore (camelCase RestoreVolume).
    #[arg(long = "volumes", env = "CORACLE_RESTORE_VOLUMES", hide_env_values = true)]
    pub volumes: Option<String>,
    #[arg(long, env = "CORACLE_RESTORE_NAME")]
    pub restore_name: Option<String>,
    /// Names the marker files (<volume>/.coracle/<restore uid>).
    #[arg(long, env = "CORACLE_RESTORE_UID")]
    pub restore_uid: Option<String>,
    /// Where the target pod's own directory (<kubelet>/pods/<pod uid>) is mounted read-write.
    #[arg(long, env = "CORACLE_POD_DIR", default_value = "/host/pod")]
    pub pod_dir: PathBuf,
}

#[derive(Debug, Clone, Default, Args)]
pub struct MaintainArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// The namespace whose repository (<prefix>/<namespace>) is maintained.
    #[arg(long, env = "CORACLE_MAINTENANCE_NAMESPACE")]
    pub namespace: Option<String>,
    /// JSON array of backups (`{"name","uid"}`) whose snapshots to forget.
    #[arg(long, env = "CORACLE_FORGET")]
    pub forget: Option<String>,
    /// `true` to run `restic prune`.
    #[arg(long, env = "CORACLE_PRUNE")]
    pub prune: Option<String>,
    /// `true` to run `restic check`.
    #[arg(long, env = "CORACLE_CHECK")]
    pub check: Option<String>,
    /// `restic check --read-data-subset` (e.g. `5%`, `1/10`, `500M`); empty reads no pack data.
    #[arg(long, env = "CORACLE_CHECK_READ_DATA_SUBSET")]
    pub check_read_data_subset: Option<String>,
    /// Hostnames of Coracle's Job pods alive when this Job was created (comma list).
    #[arg(long, env = "CORACLE_LIVE_HOSTS")]
    pub live_hosts: Option<String>,
    /// When those were listed (RFC 3339).
    #[arg(long, env = "CORACLE_LIVE_HOSTS_AT")]
    pub live_hosts_at: Option<String>,
}

/// Parses an optional count where empty or missing means `default`.
pub fn parse_count(name: &str, value: Option<&str>, default: u32) -> Result<u32, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(default),
        Some(v) => v.parse().map_err(|_| format!("{name} must be a non-negative integer, not {v:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        assert_eq!(parse_count("CORACLE_ATTEMPT", None, 0), Ok(0));
        assert_eq!(parse_count("CORACLE_ATTEMPT", Some(""), 0), Ok(0));
        assert_eq!(parse_count("CORACLE_ATTEMPT", Some(" 2 "), 0), Ok(2));
        assert_eq!(parse_count("CORACLE_KEY_GENERATION", None, 1), Ok(1));
        assert!(parse_count("CORACLE_ATTEMPT", Some("-1"), 0).unwrap_err().contains("CORACLE_ATTEMPT"));
    }

    #[test]
    fn generations_per_namespace() {
        let args = JobArgs {
            key_generations: Some("shop=3, media = 2".into()),
            key_generation: Some("1".into()),
            ..Default::default()
        };
        assert_eq!(args.generation("shop"), Ok(3));
        assert_eq!(args.generation("media"), Ok(2));
        assert_eq!(args.generation("other"), Ok(1));
        assert_eq!(JobArgs::default().generation("shop"), Ok(1));
        let bad = JobArgs { key_generations: Some("shop=x".into()), ..Default::default() };
        assert!(bad.generation("shop").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
