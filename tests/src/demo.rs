//! `coracle-demo`: the README's main job. Starts a real nats-server and a simulated two-node
//! cluster with a sample application, writes known data into its volumes, runs Coracle's
//! functions as NATS consumers while the simulated cluster runs the Jobs they create, publishes a
//! backup request, prints the result events as they arrive, waits for
//! `coracle.backup.completed`, and prints the summary and restic's own snapshot list. Then it
//! restores the shop namespace after a disaster, and shows a Deployment rollout backing up its
//! volumes through a trigger policy.

use anyhow::{bail, Context as _};
use clap::Parser;
use coracle_events::{subjects, BackupCompleted, BackupPhase, RestoreCompleted, RestorePlanned, RestoreRequest};
use coracle_tests::harness::{tree_digest, write_file, Harness};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;

use chrono::Timelike;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const WEB_POD: &str = "web-7c9d8f6b5d-h2x9k";

#[derive(Parser)]
#[command(about = "Run Coracle end to end on an embedded NATS and a simulated cluster with real restic")]
struct Args {
    /// Give up waiting for the backup after this many seconds.
    #[arg(long, default_value_t = 180)]
    timeout: u64,
    /// Keep the repositories and the simulated nodes' files (printed at the end).
    #[arg(long)]
    keep: bool,
}

/// Where sample data goes: a PersistentVolume's storage (seen by every pod that mounts it) or a pod-scoped
/// volume's directory on its node (node, pod uid, plugin directory, volume directory).
enum Target {
    Pv(&'static str),
    PodVolume(&'static str, &'static str, &'static str, &'static str),
}

/// Files (relative path, content) to write into a target.
type Files = Vec<(String, Vec<u8>)>;

fn sample_data() -> Vec<(Target, Files)> {
    let text = |s: &str| s.as_bytes().to_vec();
    // Deterministic pseudo-random content, so every run writes the same bytes.
    let noise = |seed: u64, len: usize| {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x & 0xff) as u8
            })
            .collect::<Vec<u8>>()
    };
    let many = |prefix: &str, count: usize, size: usize, seed: u64| {
        (0..count).map(|i| (format!("{prefix}/{i:04}.bin"), noise(seed + i as u64, size))).collect::<Vec<_>>()
    };
    vec![
        (
            Target::Pv("pvc-9b1f3c2a-web-data"),
            [vec![("index.html".into(), text("<h1>Coracle shop</h1>\n"))], many("assets", 40, 16 * 1024, 1)].concat(),
        ),
        (
            Target::PodVolume("node-1", "e1000000-0000-4000-8000-000000000001", "kubernetes.io~empty-dir", "cache"),
            many("pages", 25, 4 * 1024, 100),
        ),
        (Target::Pv("pvc-4e7d0b11-data-db-0"), many("base", 8, 512 * 1024, 200)),
        (Target::Pv("pvc-4e7d0b12-data-db-1"), many("base", 8, 512 * 1024, 300)),
        (
            Target::Pv("nfs-media-library"),
            [many("photos", 30, 64 * 1024, 400), vec![("README.txt".into(), text("shared media library\n"))]].concat(),
        ),
    ]
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    println!("== Starting NATS JetStream and a simulated two-node cluster");
    let mut h = Harness::start("demo", include_str!("../fixtures/demo-cluster.yaml"), &["node-1", "node-2"]).await?;
    println!("   nats {}  api {}", h.nats.url(), h.sim.url());
    // Coracle itself, as an operator installs it: `kubectl apply -k deploy/` (the cronjob-drain
    // overlay of deploy/base) with the NATS URL and repository prefix patched in; the one-shot
    // Jobs (master key, NATS stream and buckets, webhook certificate) run, and the admission
    // server runs from its rendered Deployment behind its Service.
    let overlay = coracle_tests::install::deploy_dir().join("overlays/cronjob-drain");
    let install = coracle_tests::install::install_rendered(&mut h, &overlay).await?;
    println!(
        "   installed from the rendered manifests: {} objects in {} (kubectl apply -k deploy/)",
        install.objects.len(),
        install.namespace
    );
    let h = Arc::new(h);
    let mut files = 0usize;
    let mut bytes = 0usize;
    for (target, data) in sample_data() {
        let base = match target {
            Target::Pv(pv) => h.pv_data_dir(pv)?,
            Target::PodVolume(node, uid, plugin, dir) => h.volume_dir(node, uid, plugin, dir)?,
        };
        for (path, content) in data {
            files += 1;
            bytes += content.len();
            write_file(&base.join(path), &content)?;
        }
    }
    println!("   wrote {files} files ({bytes} bytes) into the sample application's volumes");
    // Functions as long-running consumers, as KEDA would keep them while messages flow: each from
    // its rendered CronJob's pod template, under its own ServiceAccount.
    let functions = ["schedule-tick", "plan-backup", "record-result", "plan-restore", "start-restore", "on-k8s-event"]
        .iter()
        .map(|f| install.spawn_function(&h, &format!("coracle-{f}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let outcome = drive(&h, &args).await;
    drop(functions);
    drop(install);
    let ok = outcome?;
    if args.keep {
        let kept = h.tmp.path().to_path_buf();
        println!("\nkept {} (repositories under repos/, master key in the simulated Secret)", kept.display());
        if let Ok(h) = Arc::try_unwrap(h) {
            let _ = h.tmp.keep();
        }
    }
    Ok(ok)
}

async fn drive(h: &Arc<Harness>, args: &Args) -> anyhow::Result<bool> {
    let client = async_nats::connect(h.nats.url()).await?;
    let mut events = client.subscribe("coracle.>").await?;
    let started = std::time::Instant::now();
    // The schedule `demo-every-minute` fires at the next minute boundary: a tick for that minute,
    // as the every-minute CronJob publishes it, makes schedule-tick request exactly one backup.
    let now = chrono::Utc::now();
    let fire = now + chrono::Duration::seconds(60 - i64::from(now.second()));
    let fire = fire.with_nanosecond(0).unwrap_or(fire);
    let name = format!("demo-every-minute-{}", fire.format("%Y%m%d%H%M%S"));
    println!(
        "\n== Publishing the schedule tick for {} (schedule demo-every-minute, \"* * * * *\")\n",
        fire.to_rfc3339()
    );
    h.coracle(&["schedule", "tick", "--nats", &h.nats.url(), "--time", &fire.to_rfc3339()])?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    let completed: BackupCompleted =
        follow(&mut events, started, deadline, subjects::BACKUP_COMPLETED, |c: &BackupCompleted| c.backup.name == name)
            .await?;

    println!("\n== Backup {name}: {:?} in {:.1}s\n", completed.phase, started.elapsed().as_secs_f64());
    print!("{}", h.coracle(&["backup", "describe", &name, "--nats", &h.nats.url()])?);
    for namespace in ["shop", "media"] {
        println!("\n== restic snapshots in the {namespace} repository ({})", h.repos.join(namespace).display());
        print!("{}", h.restic(namespace, &["snapshots", "--compact"]).context("listing snapshots")?);
    }
    if completed.phase != BackupPhase::Completed {
        return Ok(false);
    }
    if !restore(h, &mut events, &name, deadline).await? {
        return Ok(false);
    }
    rollout(h, &mut events, deadline).await
}

/// Act three: `kubectl rollout restart deployment/web` backs the web volumes up through the example
/// trigger policy, with no event bridge: the API server calls Coracle's validating webhook, which
/// publishes coracle.k8s.workload.updated; on-k8s-event matches the policy and requests the backup.
async fn rollout(
    h: &Arc<Harness>,
    events: &mut async_nats::Subscriber,
    deadline: tokio::time::Instant,
) -> anyhow::Result<bool> {
    let started = std::time::Instant::now();
    let policies = include_str!("../../deploy/examples/trigger-policy.yaml");
    for doc in serde_yaml::Deserializer::from_str(policies) {
        let policy: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        h.sim.store().put(policy)?;
    }
    // The rollout webhook is opt-in per namespace, as deploy/base configures it.
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(h.sim.client()?);
    let label = serde_json::json!({"metadata": {"labels": {"coracle.dev/workload-triggers": "enabled"}}});
    namespaces.patch("shop", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(label)).await?;
    println!(
        "\n== A rollout: the trigger policy backup-on-rollout (deploy/examples/trigger-policy.yaml) is installed,"
    );
    println!("   the shop namespace is labelled coracle.dev/workload-triggers=enabled, and");
    println!("   `kubectl rollout restart deployment/web -n shop` changes the pod template\n");
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> = kube::Api::namespaced(h.sim.client()?, "shop");
    let restarted = chrono::Utc::now().to_rfc3339();
    let patch = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": restarted}}}}});
    deployments.patch("web", &kube::api::PatchParams::default(), &kube::api::Patch::Strategic(patch)).await?;
    let completed: BackupCompleted =
        follow(events, started, deadline, subjects::BACKUP_COMPLETED, |c: &BackupCompleted| {
            c.backup.name.starts_with("backup-on-rollout-web-")
        })
        .await?;
    let name = completed.backup.name.clone();
    println!(
        "\n== Backup {name} (fired by the rollout): {:?} in {:.1}s\n",
        completed.phase,
        started.elapsed().as_secs_f64()
    );
    print!("{}", h.coracle(&["backup", "describe", &name, "--nats", &h.nats.url()])?);
    Ok(completed.phase == BackupPhase::Completed)
}

/// Prints every event until the first `T` on `subject` that `wanted` accepts.
async fn follow<T: coracle_events::EventData>(
    events: &mut async_nats::Subscriber,
    started: std::time::Instant,
    deadline: tokio::time::Instant,
    subject: &str,
    wanted: impl Fn(&T) -> bool,
) -> anyhow::Result<T> {
    loop {
        let Ok(Some(msg)) = tokio::time::timeout_at(deadline, events.next()).await else {
            bail!("no {subject} before the demo's timeout");
        };
        let got = msg.subject.to_string();
        println!(
            "  +{:>5.1}s  {}",
            started.elapsed().as_secs_f64(),
            coracle_functions::watch::describe(&got, &msg.payload)
        );
        if got == subject {
            let ev = coracle_events::envelope::decode::<T>(&msg.payload)?;
            if wanted(&ev.data) {
                return Ok(ev.data);
            }
        }
    }
}

/// Act two: the shop namespace loses its pods and data, and gets both back.
async fn restore(
    h: &Arc<Harness>,
    events: &mut async_nats::Subscriber,
    backup: &str,
    deadline: tokio::time::Instant,
) -> anyhow::Result<bool> {
    let started = std::time::Instant::now();
    let pods: kube::Api<Pod> = kube::Api::namespaced(h.sim.client()?, "shop");
    let originals = [pods.get(WEB_POD).await?, pods.get("db-0").await?, pods.get("db-1").await?];
    let web_uid = originals[0].metadata.uid.clone().unwrap_or_default();
    let mut volumes: Vec<(&str, PathBuf)> =
        vec![("web/cache", h.volume_dir("node-1", &web_uid, "kubernetes.io~empty-dir", "cache")?)];
    for (label, pv) in [
        ("web/data", "pvc-9b1f3c2a-web-data"),
        ("db-0/data", "pvc-4e7d0b11-data-db-0"),
        ("db-1/data", "pvc-4e7d0b12-data-db-1"),
    ] {
        volumes.push((label, h.pv_data_dir(pv)?));
    }
    let mut before = Vec::new();
    for (_, dir) in &volumes {
        before.push(tree_digest(dir)?);
    }

    println!("\n== Disaster: the shop namespace's pods are deleted and their volumes wiped");
    for pod in &originals {
        pods.delete(pod.metadata.name.as_deref().unwrap_or_default(), &Default::default()).await?;
    }
    for (_, dir) in volumes.iter().skip(1) {
        std::fs::remove_dir_all(dir)?;
        std::fs::create_dir_all(dir)?;
    }

    let name = format!("{backup}-restore");
    println!("== Publishing coracle.restore.requested for {name}, then re-creating the pods\n");
    let request = RestoreRequest {
        name: name.clone(),
        backup: backup.into(),
        included_namespaces: vec!["shop".into()],
        ..Default::default()
    };
    h.request_restore(request, &name).await?;
    follow(events, started, deadline, subjects::RESTORE_PLANNED, |p: &RestorePlanned| p.restore.name == name).await?;
    let web = h.recreate_pod(&originals[0], Some("web-7c9d8f6b5d-")).await?;
    for pod in &originals[1..] {
        h.recreate_pod(pod, None).await?;
    }
    let web_name = web.metadata.name.clone().unwrap_or_default();
    println!("  (the webhook injected coracle-restore-wait into {web_name}, db-0 and db-1; their apps wait)");
    let done: RestoreCompleted =
        follow(events, started, deadline, subjects::RESTORE_COMPLETED, |c: &RestoreCompleted| c.restore.name == name)
            .await?;
    let web = h.wait_running("shop", &web_name).await?;
    h.wait_running("shop", "db-0").await?;
    h.wait_running("shop", "db-1").await?;
    volumes[0].1 =
        h.volume_dir("node-1", web.metadata.uid.as_deref().unwrap_or_default(), "kubernetes.io~empty-dir", "cache")?;

    println!(
        "\n== Restore {name}: {:?} in {:.1}s; every pod is Running again\n",
        done.phase,
        started.elapsed().as_secs_f64()
    );
    print!("{}", h.coracle(&["restore", "describe", &name, "--nats", &h.nats.url()])?);
    println!(
        "\n== Checksums (SHA-256 of every file, with mode and mtime), before the disaster and after the restore\n"
    );
    let mut all_match = done.phase == BackupPhase::Completed;
    let mut rows = Vec::new();
    for ((label, dir), expected) in volumes.iter().zip(&before) {
        let actual = tree_digest(dir)?;
        let same = &actual == expected;
        all_match &= same;
        rows.push(vec![
            label.to_string(),
            expected.len().to_string(),
            actual.len().to_string(),
            if same { "identical".into() } else { "DIFFERENT".into() },
        ]);
    }
    print!("{}", coracle_functions::cli::table(&["VOLUME", "FILES BEFORE", "FILES AFTER", "CONTENT"], &rows));
    Ok(all_match)
}
