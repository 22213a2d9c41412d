//! Retention and maintenance from the command line: `coracle backup delete`, `coracle maintenance
//! run`, `coracle catalog rebuild` and `coracle keys rotate`. Thin: the decisions live in
//! `crate::retention`, `crate::catalog` and the maintenance function.

use crate::catalog::record_from_snapshots;
use crate::context::{Context, Nats};
use crate::handlers::maintenance::{self, Only};
use crate::jobs::LABEL_MANAGED_BY;
use crate::kube_cluster;
use crate::kv_json::Created;
use crate::retention::{self, REASON_REQUESTED};
use crate::settings::{Settings, CONFIGMAP_NAME};
use anyhow::{bail, Context as _};
use chrono::Utc;
use coracle_volume_job::keys::MasterKey;
use coracle_volume_job::restic::{Repository, Restic, SnapshotFilter};
use coracle_volume_job::tags;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, PostParams};
use std::collections::{BTreeMap, BTreeSet};

/// The installation master key, from `CORACLE_MASTER_KEY_FILE` or `CORACLE_MASTER_KEY` (never a flag,
/// where `ps` would show it).
pub fn master_key() -> anyhow::Result<MasterKey> {
    if let Ok(path) = std::env::var("CORACLE_MASTER_KEY_FILE") {
        return MasterKey::from_file(std::path::Path::new(&path)).map_err(|e| anyhow::anyhow!("{e}"));
    }
    let raw = std::env::var("CORACLE_MASTER_KEY").map_err(|_| {
        anyhow::anyhow!(
            "CORACLE_MASTER_KEY (or CORACLE_MASTER_KEY_FILE) is not set; read it from the master-key Secret"
        )
    })?;
    MasterKey::new(raw.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))
}

fn restic_program() -> String {
    std::env::var("CORACLE_RESTIC").unwrap_or_else(|_| "restic".into())
}

/// restic on a namespace's repository with the password of `generation`.
pub fn namespace_restic(settings: &Settings, master: &MasterKey, ns: &str, generation: u32) -> anyhow::Result<Restic> {
    let repository = Repository::for_namespace(&settings.repository_prefix, ns)?;
    let mut restic = Restic::new(restic_program(), repository, master.namespace_password(ns, generation));
    restic.add_secret(&String::from_utf8_lossy(master.expose()));
    Ok(restic)
}

async fn context(nats: &str, system_namespace: &str) -> anyhow::Result<Context> {
    let kube = kube::Client::try_default().await.context("connecting to Kubernetes (KUBECONFIG)")?;
    Ok(Context::new(Some(kube), Some(Nats::connect(nats).await?), system_namespace))
}

/// `coracle backup delete NAME`: marks the backup for deletion and launches the Jobs forgetting its
/// snapshots (one per namespace repository; a repository in use is done by the next tick).
pub async fn delete_backup(name: &str, nats: &str, system_namespace: &str) -> anyhow::Result<String> {
    let ctx = context(nats, system_namespace).await?;
    let n = ctx.nats.as_ref().context("NATS")?;
    let now = Utc::now();
    let Some(record) = n.records.modify(name, |r| retention::mark_for_deletion(r, REASON_REQUESTED, now)).await? else {
        bail!("no backup named {name}");
    };
    let namespaces = retention::namespaces_of(&record);
    let only = Only { namespaces: namespaces.clone(), prune: false, check: false };
    let summary = if namespaces.is_empty() {
        maintenance::RunSummary::default()
    } else {
        maintenance::run(&ctx, now, Some(&only)).await.map_err(|e| anyhow::anyhow!("{e}"))?
    };
    let mut out = format!("backup {name} marked for deletion\n");
    for job in &summary.launched {
        out.push_str(&format!("job/{job} created\n"));
    }
    for ns in &summary.busy {
        out.push_str(&format!("repository {ns} is in use; the next maintenance run forgets the backup there\n"));
    }
    Ok(out)
}

/// `coracle maintenance run`: launches maintenance now for some or all repositories.
pub async fn run_now(
    namespaces: &[String],
    prune: bool,
    check: bool,
    nats: &str,
    system_namespace: &str,
) -> anyhow::Result<String> {
    let ctx = context(nats, system_namespace).await?;
    let only = Only { namespaces: namespaces.iter().cloned().collect(), prune, check };
    let summary = maintenance::run(&ctx, Utc::now(), Some(&only)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = String::new();
    for job in &summary.launched {
        out.push_str(&format!("job/{job} created\n"));
    }
    for ns in &summary.busy {
        out.push_str(&format!("repository {ns} is in use by a running Job; nothing launched there\n"));
    }
    Ok(out)
}

/// The namespaces to search: those named, else every namespace in the cluster.
async fn namespaces(kube: &kube::Client, named: &[String]) -> anyhow::Result<Vec<String>> {
    if !named.is_empty() {
        return Ok(named.to_vec());
    }
    let api: Api<Namespace> = Api::all(kube.clone());
    let list = api.list(&ListParams::default()).await.context("listing namespaces")?;
    Ok(list.items.into_iter().filter_map(|n| n.metadata.name).collect())
}

/// `coracle catalog rebuild`: the backup records, from the snapshot tags of every namespace
/// repository, written to KV where missing. Records that exist are left as they are, so running
/// it again (or while functions write records) changes nothing.
pub async fn catalog_rebuild(named: &[String], nats: &str, system_namespace: &str) -> anyhow::Result<String> {
    let ctx = context(nats, system_namespace).await?;
    let kube = ctx.kube().map_err(|e| anyhow::anyhow!("{e}"))?;
    let settings = kube_cluster::settings(kube, system_namespace).await?;
    let master = master_key()?;
    let mut snapshots = Vec::new();
    let mut searched = 0;
    for ns in namespaces(kube, named).await? {
        let restic = namespace_restic(&settings, &master, &ns, settings.key_generation(&ns))?;
        match restic.snapshots(&SnapshotFilter::new()).await {
            Ok(found) => {
                searched += 1;
                snapshots.extend(found);
            }
            // Most namespaces never had a backup, so have no repository.
            Err(e) => tracing::debug!(namespace = %ns, "no snapshots read: {e}"),
        }
    }
    let names: BTreeSet<String> = snapshots.iter().filter_map(|s| s.tag(tags::BACKUP).map(String::from)).collect();
    let n = ctx.nats.as_ref().context("NATS")?;
    let (mut created, mut kept) = (0, 0);
    for name in &names {
        let Some(record) = record_from_snapshots(name, &snapshots) else { continue };
        match n.records.create(name, &record).await? {
            Created::Created => created += 1,
            Created::Exists(_) => kept += 1,
        }
    }
    Ok(format!(
        "catalog: {} snapshot(s) in {searched} repositories, {} backup(s): {created} record(s) rebuilt, {kept} already present\n",
        snapshots.len(),
        names.len()
    ))
}

/// `coracle keys rotate --namespace NS`: adds the key of the next password generation, checks
/// that it opens the repository and sees the same snapshots, records the generation in the
/// ConfigMap (`keyGenerations`), then removes the old key.
pub async fn rotate_key(namespace: &str, force: bool, system_namespace: &str) -> anyhow::Result<String> {
    let kube = kube::Client::try_default().await.context("connecting to Kubernetes (KUBECONFIG)")?;
    let settings = kube_cluster::settings(&kube, system_namespace).await?;
    if !force {
        let (jobs, _) =
            kube_cluster::jobs_and_pods(&kube, system_namespace, &format!("{LABEL_MANAGED_BY}=coracle")).await?;
        if retention::busy_namespaces(&jobs).contains(namespace) {
            bail!("a Coracle Job is using the repository of {namespace}; rotate once it finished (or --force)");
        }
    }
    let master = master_key()?;
    let old_generation = settings.key_generation(namespace);
    let new_generation = old_generation + 1;
    let old = namespace_restic(&settings, &master, namespace, old_generation)?;
    let old_keys =
        old.keys().await.with_context(|| format!("opening {} with generation {old_generation}", old.repository()))?;
    let old_ids: Vec<String> = old_keys.iter().filter(|k| k.current).map(|k| k.id.clone()).collect();
    let before = old.snapshots(&SnapshotFilter::new()).await?.len();
    old.add_key(&master.namespace_password(namespace, new_generation)).await.context("adding the new key")?;
    let new = namespace_restic(&settings, &master, namespace, new_generation)?;
    let after = new.snapshots(&SnapshotFilter::new()).await.context("opening the repository with the new key")?.len();
    if after != before {
        bail!("the new key sees {after} snapshot(s), the old one {before}: the old key is kept");
    }
    set_generation(&kube, system_namespace, namespace, new_generation).await?;
    for id in &old_ids {
        new.remove_key(id).await.with_context(|| format!("removing the old key {id}"))?;
    }
    Ok(format!(
        "repository {}: key generation {old_generation} -> {new_generation}; {after} snapshot(s) readable; old key removed\n",
        new.repository()
    ))
}

/// Writes `keyGenerations` in the ConfigMap by compare-and-set (resourceVersion), creating the
/// ConfigMap when there is none.
async fn set_generation(kube: &kube::Client, system_namespace: &str, ns: &str, generation: u32) -> anyhow::Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(kube.clone(), system_namespace);
    for _ in 0..8 {
        let existing = api.get_opt(CONFIGMAP_NAME).await.context("reading the ConfigMap")?;
        let mut cm = existing.clone().unwrap_or_else(|| ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(CONFIGMAP_NAME.into()),
                namespace: Some(system_namespace.into()),
                ..Default::default()
            },
            ..Default::default()
        });
        let data = cm.data.get_or_insert_with(BTreeMap::new);
        let current = data.get("keyGenerations").cloned().unwrap_or_default();
        data.insert("keyGenerations".into(), with_generation(&current, ns, generation));
        let result = match existing {
            Some(_) => api.replace(CONFIGMAP_NAME, &PostParams::default(), &cm).await,
            None => api.create(&PostParams::default(), &cm).await,
        };
        match result {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e).context("writing keyGenerations to the ConfigMap"),
        }
    }
    bail!("the ConfigMap kept changing; keyGenerations not written")
}

/// `shop=2,media=3` with `ns` set to `generation`, sorted.
pub fn with_generation(current: &str, ns: &str, generation: u32) -> String {
    let mut map: BTreeMap<String, String> = current
        .split(',')
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .collect();
    map.insert(ns.to_string(), generation.to_string());
    map.into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_are_merged() {
        assert_eq!(with_generation("", "shop", 2), "shop=2");
        assert_eq!(with_generation("shop=2, media=3", "shop", 3), "media=3,shop=3");
        let s = Settings { key_generations: with_generation("media=3", "shop", 4), ..Settings::default() };
        assert_eq!((s.key_generation("shop"), s.key_generation("media")), (4, 3));
    }
}

/// `coracle backup delete`.
#[derive(Debug, clap::Args)]
pub struct BackupDelete {
    pub name: String,
    #[arg(long, env = "CORACLE_NATS_URL")]
    pub nats: String,
    #[arg(long, env = "CORACLE_SYSTEM_NAMESPACE", default_value = crate::settings::DEFAULT_SYSTEM_NAMESPACE)]
    pub system_namespace: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum CatalogCommand {
    /// Rebuild backup records in NATS KV from the snapshot tags in the namespace repositories
    /// (after NATS state was lost); existing records are kept. Needs the master key
    /// (CORACLE_MASTER_KEY or CORACLE_MASTER_KEY_FILE).
    Rebuild {
        /// Only these namespaces' repositories (default: every namespace in the cluster).
        #[arg(long = "namespace")]
        namespaces: Vec<String>,
        #[arg(long, env = "CORACLE_NATS_URL")]
        nats: String,
        #[arg(long, env = "CORACLE_SYSTEM_NAMESPACE", default_value = crate::settings::DEFAULT_SYSTEM_NAMESPACE)]
        system_namespace: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Replace a namespace repository's restic key by the next password generation derived from
    /// the master key (CORACLE_MASTER_KEY or CORACLE_MASTER_KEY_FILE).
    Rotate {
        #[arg(long)]
        namespace: String,
        /// Rotate even while a Coracle Job uses the repository (it may fail and be retried).
        #[arg(long)]
        force: bool,
        #[arg(long, env = "CORACLE_SYSTEM_NAMESPACE", default_value = crate::settings::DEFAULT_SYSTEM_NAMESPACE)]
        system_namespace: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum MaintenanceCommand {
    /// Launch maintenance now: forget deleted/expired backups and, when asked, prune and check.
    Run {
        /// Only these namespaces' repositories (default: every repository the records know).
        #[arg(long = "namespace")]
        namespaces: Vec<String>,
        #[arg(long)]
        prune: bool,
        #[arg(long)]
        check: bool,
        #[arg(long, env = "CORACLE_NATS_URL")]
        nats: String,
        #[arg(long, env = "CORACLE_SYSTEM_NAMESPACE", default_value = crate::settings::DEFAULT_SYSTEM_NAMESPACE)]
        system_namespace: String,
    },
}

pub async fn backup_delete(args: BackupDelete) -> anyhow::Result<std::process::ExitCode> {
    print!("{}", delete_backup(&args.name, &args.nats, &args.system_namespace).await?);
    Ok(std::process::ExitCode::SUCCESS)
}

pub async fn catalog(command: CatalogCommand) -> anyhow::Result<std::process::ExitCode> {
    let CatalogCommand::Rebuild { namespaces, nats, system_namespace } = command;
    print!("{}", catalog_rebuild(&namespaces, &nats, &system_namespace).await?);
    Ok(std::process::ExitCode::SUCCESS)
}

pub async fn keys(command: KeysCommand) -> anyhow::Result<std::process::ExitCode> {
    let KeysCommand::Rotate { namespace, force, system_namespace } = command;
    print!("{}", rotate_key(&namespace, force, &system_namespace).await?);
    Ok(std::process::ExitCode::SUCCESS)
}

pub async fn maintenance(command: MaintenanceCommand) -> anyhow::Result<std::process::ExitCode> {
    let MaintenanceCommand::Run { namespaces, prune, check, nats, system_namespace } = command;
    print!("{}", run_now(&namespaces, prune, check, &nats, &system_namespace).await?);
    Ok(std::process::ExitCode::SUCCESS)
}
