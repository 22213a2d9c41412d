//! `coracle-demo`: the README's main job. Starts a real nats-server and a simulated two-node
//! cluster with a sample application, writes known data into its volumes, runs Coracle's
//! functions as NATS consumers while the simulated cluster runs the Jobs they create, publishes a
//! backup request, prints the result events as they arrive, waits for
//! `coracle.backup.completed`, and prints the summary and restic's own snapshot list.

use anyhow::{bail, Context as _};
use clap::Parser;
use coracle_events::{subjects, BackupCompleted, BackupPhase, BackupRequest, CloudEvent};
use coracle_tests::harness::{write_file, Harness};
use futures::StreamExt;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

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

fn describe_event(subject: &str, payload: &[u8]) -> String {
    let Ok(ev) = CloudEvent::parse(payload) else { return format!("{subject}  (unparsable)") };
    let d = &ev.data;
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let detail = match subject {
        subjects::BACKUP_REQUESTED => format!("backup {}", s(&d["name"])),
        subjects::BACKUP_PLANNED => format!(
            "{} volumes on {} Job(s), {} skipped",
            d["volumes"].as_array().map_or(0, Vec::len),
            d["jobs"].as_array().map_or(0, Vec::len),
            d["skipped"].as_array().map_or(0, Vec::len)
        ),
        subjects::VOLUME_BACKUP_PROGRESS => format!(
            "{}  {:>5.1}%  {} / {} bytes",
            s(&d["volume"]),
            d["percentDone"].as_f64().unwrap_or(0.0) * 100.0,
            d["bytesDone"],
            d["bytesTotal"]
        ),
        subjects::VOLUME_BACKUP_COMPLETED => format!(
            "{}/{}/{}  snapshot {}",
            s(&d["volume"]["namespace"]),
            s(&d["volume"]["pod"]),
            s(&d["volume"]["volume"]),
            s(&d["snapshotId"]).chars().take(8).collect::<String>()
        ),
        subjects::VOLUME_BACKUP_FAILED => format!("{}  {}", s(&d["volume"]["volume"]), s(&d["reason"])),
        subjects::BACKUP_COMPLETED => format!("{} phase {}", s(&d["backup"]["name"]), s(&d["phase"])),
        _ => ev.ty.clone(),
    };
    format!("{:<34} {detail}", subject)
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
    let h =
        Arc::new(Harness::start("demo", include_str!("../fixtures/demo-cluster.yaml"), &["node-1", "node-2"]).await?);
    println!("   nats {}  api {}", h.nats.url(), h.sim.url());
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
    h.coracle(&["setup", "nats", "--nats", &h.nats.url()])?;

    // Functions as long-running consumers, as KEDA would keep them while messages flow.
    let functions = vec![h.spawn_function("plan-backup")?, h.spawn_function("record-result")?];
    let outcome = drive(&h, &args).await;
    drop(functions);
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
    let name = format!("demo-{}", chrono::Utc::now().format("%Y%m%d%H%M%S"));

    // The simulated cluster runs every Job the functions create, as a real cluster would.
    println!("\n== Publishing coracle.backup.requested for {name}\n");
    let request = BackupRequest { name: name.clone(), origin: Some("coracle-demo".into()), ..Default::default() };
    h.request(request, &name).await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    let completed = loop {
        let next = tokio::time::timeout_at(deadline, events.next()).await;
        let Ok(Some(msg)) = next else {
            bail!("no coracle.backup.completed within {} s", args.timeout);
        };
        let subject = msg.subject.to_string();
        println!("  +{:>5.1}s  {}", started.elapsed().as_secs_f64(), describe_event(&subject, &msg.payload));
        if subject == subjects::BACKUP_COMPLETED {
            let ev = coracle_events::envelope::decode::<BackupCompleted>(&msg.payload)?;
            if ev.data.backup.name == name {
                break ev.data;
            }
        }
    };

    println!("\n== Backup {name}: {:?} in {:.1}s\n", completed.phase, started.elapsed().as_secs_f64());
    print!("{}", h.coracle(&["backup", "describe", &name, "--nats", &h.nats.url()])?);
    for namespace in ["shop", "media"] {
        println!("\n== restic snapshots in the {namespace} repository ({})", h.repos.join(namespace).display());
        print!("{}", h.restic(namespace, &["snapshots", "--compact"]).context("listing snapshots")?);
    }
    Ok(completed.phase == BackupPhase::Completed)
}
