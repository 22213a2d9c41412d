//! B8 (issue 8): 10,000 volume results through `coracle fn record-result --nats URL --drain`
//! (the release binary, one process) against a real nats-server.
//!
//! Set-up, not timed: 100 backups of 100 volumes each are planned (their records written to
//! the `coracle-backups` KV bucket as plan-backup does), then every volume's
//! `coracle.volume.backup.completed` is published, plus 1,000 re-publications under new event
//! ids (a Job index that published, crashed and ran again: must not count twice) and 500
//! under ids already used (dropped by the stream's duplicate window).
//!
//! Timed: from starting the process to the 100th `coracle.backup.completed` arriving on a
//! core NATS subscription. Results per second = 10,000 / that time. Then checked: every
//! record is Completed with each volume's snapshot id as published, exactly 100
//! `coracle.backup.completed` events are in the stream (one per backup), nothing was
//! dead-lettered.
//!
//! Also reported, to show what bounds it: CPU seconds used by the function process and by
//! nats-server over the timed window, and how many record writes (KV revisions) it took.
//!
//! `cargo bench -p coracle-tests --bench end_to_end -- record_result` writes
//! `target/bench/record_result.json`.
//! `CORACLE_BENCH_B8_BIN=/path/to/coracle` runs another build of the binary instead (to compare
//! two builds side by side in one sitting).

use crate::common::{env_num, full_run, round, write_report};
use anyhow::{ensure, Context as _};
use coracle_events::subjects::{BACKUP_COMPLETED, DLQ_PREFIX, KV_BACKUPS};
use coracle_events::{
    function_source, BackupPlanned, BackupRef, BackupRequest, BackupStats, CloudEvent, PlannedVolume,
    VolumeBackupCompleted, VolumeSource,
};
use coracle_functions::kv_json::JsonKv;
use coracle_functions::record::{BackupRecord, RecordPhase, VolumeStatus};
use coracle_tests::binaries::workspace_bin;
use coracle_tests::harness::messages;
use coracle_tests::nats::NatsServer;
use futures::StreamExt;
use serde_json::json;
use std::time::{Duration, Instant};

const TARGET_PER_S: f64 = 2_000.0;

fn volume(backup: usize, i: usize) -> PlannedVolume {
    let pvc_uid = format!("7a3e0c1b-{backup:04x}-4000-8000-{i:012x}");
    PlannedVolume {
        namespace: format!("team-{:02}", backup % 50),
        pod: format!("db-{i}"),
        pod_uid: format!("5c1d2e3f-{backup:04x}-4000-8000-{i:012x}"),
        volume: "data".into(),
        node: format!("node-{:03}", i % 100),
        source: VolumeSource::Pvc,
        pvc: Some(format!("data-db-{i}")),
        pvc_uid: Some(pvc_uid.clone()),
        pv: Some(format!("pvc-{pvc_uid}")),
        dir: format!("pvc-{pvc_uid}"),
        identity: format!("pvc/{pvc_uid}"),
    }
}

fn snapshot_id(backup: usize, i: usize) -> String {
    format!("{:064x}", (backup as u128) << 32 | i as u128)
}

fn completed(backup: &BackupRef, b: usize, i: usize, attempt: u32) -> VolumeBackupCompleted {
    VolumeBackupCompleted {
        backup: backup.clone(),
        volume: volume(b, i),
        snapshot_id: snapshot_id(b, i),
        parent_snapshot: None,
        stats: BackupStats {
            files_new: 10,
            total_files: 10,
            bytes_added: 4096,
            total_bytes: 4096,
            ..Default::default()
        },
        warnings: Vec::new(),
        attempt,
    }
}

#[tokio::main]
pub async fn run() -> anyhow::Result<()> {
    let (backups, per_backup) = if full_run() {
        (env_num("CORACLE_BENCH_B8_BACKUPS", 100) as usize, env_num("CORACLE_BENCH_B8_VOLUMES", 100) as usize)
    } else {
        (4, 10)
    };
    let results = backups * per_backup;
    let nats = NatsServer::start()?;
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client.clone());
    coracle_events::bootstrap::ensure(&js).await?;
    let records: JsonKv<BackupRecord> = JsonKv::open(&js, KV_BACKUPS, "").await?;

    let refs: Vec<BackupRef> = (0..backups)
        .map(|b| BackupRef { name: format!("nightly-{b:03}"), uid: format!("9e8d7c6b-0000-4000-8000-{b:012x}") })
        .collect();
    for (b, backup) in refs.iter().enumerate() {
        let planned = BackupPlanned {
            backup: backup.clone(),
            request: BackupRequest { name: backup.name.clone(), uid: Some(backup.uid.clone()), ..Default::default() },
            volumes: (0..per_backup).map(|i| volume(b, i)).collect(),
            skipped: Vec::new(),
            jobs: vec![format!("coracle-backup-{b}")],
            expires: chrono::Utc::now() + chrono::Duration::days(30),
        };
        records.create(&backup.name, &BackupRecord::from_plan(&planned, chrono::Utc::now())).await?;
    }
    // Results arrive interleaved across backups, as Jobs on many nodes finish.
    let started = Instant::now();
    let (duplicates, same_id) = (results / 10, results / 20);
    let mut acks = Vec::with_capacity(results + duplicates + same_id);
    for n in 0..results + duplicates + same_id {
        let k = if n < results { n } else { (n * 7919) % results };
        let (b, i) = (k % backups, k / backups);
        let attempt = u32::from(n >= results && n < results + duplicates);
        let id = if n < results + duplicates { format!("bench-{n}") } else { format!("bench-{k}") };
        let event = CloudEvent::new(
            id,
            function_source("bench"),
            Some(refs[b].name.clone()),
            completed(&refs[b], b, i, attempt),
        );
        let payload = serde_json::to_vec(&event)?;
        // The id as the JetStream message id, as the job binary publishes (duplicate window).
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.id.as_str());
        let ack =
            js.publish_with_headers(coracle_events::subjects::VOLUME_BACKUP_COMPLETED, headers, payload.into()).await?;
        acks.push(ack);
        if acks.len() >= 512 {
            for a in acks.drain(..) {
                a.await?;
            }
        }
    }
    for a in acks.drain(..) {
        a.await?;
    }
    println!(
        "B8: {backups} backups x {per_backup} volumes: published {results} results + {duplicates} re-publications + {same_id} same-id duplicates in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut completions = client.subscribe(BACKUP_COMPLETED).await?;
    let coracle = match std::env::var_os("CORACLE_BENCH_B8_BIN") {
        Some(bin) => std::path::PathBuf::from(bin),
        None => workspace_bin("coracle")?,
    };
    let kv_stream = format!("KV_{KV_BACKUPS}");
    let writes_before = js.get_stream(&kv_stream).await?.info().await?.state.last_sequence;
    let server_cpu_before = nats.pid().map(cpu_seconds).unwrap_or(0.0);
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&coracle)
        .args(["fn", "record-result", "--drain", "--nats", &nats.url()])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting coracle fn record-result")?;
    let mut seen = 0usize;
    let limit = Duration::from_secs(600);
    while seen < backups {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), completions.next()).await {
            Ok(Some(_)) => seen += 1,
            _ => anyhow::bail!("only {seen} of {backups} backups completed"),
        }
    }
    let last_completion = started.elapsed();
    let server_cpu = nats.pid().map(cpu_seconds).unwrap_or(0.0) - server_cpu_before;
    let function_cpu = child.id().map(cpu_seconds).unwrap_or(0.0);
    let record_writes = js.get_stream(&kv_stream).await?.info().await?.state.last_sequence - writes_before;
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await??;
    let process = started.elapsed();
    ensure!(status.success(), "record-result exited with {status}");

    // Nothing lost, nothing counted twice.
    let mut volumes_completed = 0usize;
    for (b, backup) in refs.iter().enumerate() {
        let (record, _) = records.get(&backup.name).await?.context("record missing")?;
        ensure!(record.phase == RecordPhase::Completed, "{} is {:?}", backup.name, record.phase);
        ensure!(record.completion_published, "{}: completion not marked published", backup.name);
        ensure!(record.volumes.len() == per_backup, "{}: {} volumes", backup.name, record.volumes.len());
        for i in 0..per_backup {
            let v = &record.volumes[&volume(b, i).key()];
            ensure!(v.status == VolumeStatus::Completed, "{} volume {i}: {:?}", backup.name, v.status);
            ensure!(
                v.snapshot_id.as_deref() == Some(snapshot_id(b, i).as_str()),
                "{} volume {i}: wrong snapshot",
                backup.name
            );
            volumes_completed += 1;
        }
    }
    let completed_events = messages(&js, BACKUP_COMPLETED).await?.len();
    let dead_letters = messages(&js, &format!("{DLQ_PREFIX}.>")).await?.len();
    ensure!(completed_events == backups, "{completed_events} coracle.backup.completed events for {backups} backups");
    ensure!(dead_letters == 0, "{dead_letters} dead letters");
    let per_s = results as f64 / last_completion.as_secs_f64();
    println!(
        "B8: {results} results recorded in {:.2} s ({per_s:.0}/s); process exited after {:.2} s (idle drain included); \
         {volumes_completed} volumes completed, {completed_events} completion events, {dead_letters} dead letters",
        last_completion.as_secs_f64(),
        process.as_secs_f64()
    );
    println!(
        "B8: CPU over the timed window: record-result {function_cpu:.2} s, nats-server {server_cpu:.2} s; \
         {record_writes} record writes ({:.2} per result)",
        record_writes as f64 / results as f64
    );
    if full_run() {
        write_report(
            "record_result",
            &json!({
                "backups": backups, "volumes_per_backup": per_backup, "results": results,
                "republished_new_ids": duplicates, "republished_same_ids": same_id,
                "seconds_to_last_completion": round(last_completion.as_secs_f64()),
                "process_seconds": round(process.as_secs_f64()),
                "results_per_s": round(per_s), "target_per_s": TARGET_PER_S,
                "volumes_completed": volumes_completed, "completion_events": completed_events, "dead_letters": dead_letters,
                "function_cpu_seconds": round(function_cpu), "nats_server_cpu_seconds": round(server_cpu),
                "record_writes": record_writes,
            }),
        )?;
    }
    Ok(())
}

/// User plus system CPU time a process has used so far (`/proc/<pid>/stat`), 0 if unreadable.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let Some((_, rest)) = stat.rsplit_once(") ") else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11..13).map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    // SAFETY: sysconf has no preconditions.
    let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / per_s as f64
}
