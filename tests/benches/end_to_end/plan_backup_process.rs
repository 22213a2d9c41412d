//! B2 (issue 8): `coracle fn plan-backup --event FILE` as a whole process, the way a one-shot
//! Job or a test runs it: read the CloudEvent, list the cluster through the Kubernetes API
//! (KUBECONFIG → the simulated API server, real HTTP, in this process), plan, create the Jobs
//! and print the events it would publish (no NATS). The cluster is the planner's fixture
//! (`functions/tests/fixtures/cluster.yaml`: 4 namespaces, the shop's pods, PVCs and PVs).
//!
//! Each run is timed from spawn to exit (median, min, max); peak memory is `ru_maxrss` from
//! `wait4`. The first run creates the Jobs; later ones meet AlreadyExists, which the function
//! treats as created, exactly as a redelivered request would.
//!
//! `cargo bench -p coracle-tests --bench end_to_end -- plan_backup_process` writes
//! `target/bench/plan_backup_process.json`.

use crate::common::{full_run, measure, round, secs, write_report, Summary};
use anyhow::ensure;
use coracle_events::{function_source, BackupRequest, CloudEvent};
use coracle_tests::binaries::{scratch_dir, workspace_bin};
use coracle_tests::sim::SimServer;
use serde_json::json;
use std::process::Command;

const TARGET_MS: f64 = 20.0;
const TARGET_MB: f64 = 20.0;

pub fn run() -> anyhow::Result<()> {
    let (warmup, runs) = if full_run() { (3, 40) } else { (1, 2) };
    let fixture =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../functions/tests/fixtures/cluster.yaml"))?;
    let sim = SimServer::start_blocking(&fixture)?;
    let dir = scratch_dir("bench-plan-backup")?;
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig)?;
    let request = BackupRequest {
        name: "bench-nightly".into(),
        uid: Some("2f8e1c4d-0000-4000-8000-00000000b002".into()),
        ..Default::default()
    };
    let event = CloudEvent::new("bench-b2", function_source("bench"), Some(request.name.clone()), request);
    let event_file = dir.path().join("event.json");
    std::fs::write(&event_file, serde_json::to_vec(&event)?)?;
    let coracle = workspace_bin("coracle")?;

    let mut walls = Vec::new();
    let mut rss = Vec::new();
    for run in 0..warmup + runs {
        let mut cmd = Command::new(&coracle);
        cmd.args(["fn", "plan-backup", "--event"])
            .arg(&event_file)
            .env_clear()
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", dir.path())
            .env("RUST_LOG", "warn");
        let (m, stdout) = measure(&mut cmd, false)?;
        // The function did its work: the plan was printed with the fixture's volumes.
        ensure!(
            stdout.contains("dev.coracle.backup.planned.v1") && stdout.contains("\"identity\""),
            "unexpected output: {stdout}"
        );
        if run >= warmup {
            walls.push(secs(m.wall) * 1e3);
            rss.push(m.max_rss_kib as f64 / 1024.0);
        }
    }
    let jobs = sim.store().counts().into_iter().find(|(r, _)| r.contains("jobs")).map(|(_, n)| n).unwrap_or(0);
    ensure!(jobs > 0, "no Job was created in the simulation");
    let (wall, mem) = (Summary::of(&walls), Summary::of(&rss));
    println!(
        "B2 coracle fn plan-backup --event FILE, {runs} runs: wall ms {wall:?}, peak RSS MB {mem:?}, {jobs} Job(s)"
    );
    if full_run() {
        write_report(
            "plan_backup_process",
            &json!({
                "runs": runs, "wall_ms": wall.json(), "peak_rss_mb": mem.json(), "jobs_created": jobs,
                "target_ms": TARGET_MS, "target_mb": TARGET_MB,
                "met_wall": wall.median <= TARGET_MS, "met_memory": mem.max <= TARGET_MB,
                "peak_rss_mb_max": round(mem.max),
            }),
        )?;
    }
    sim.shutdown();
    Ok(())
}
