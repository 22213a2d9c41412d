//! The CLI for people (SPEC §9), end to end against a real nats-server, real restic and the
//! simulated cluster: `coracle backup create --wait` follows a backup to its end and exits 0 only on
//! full success, a second identical command joins the same backup, `coracle watch` streams the
//! stored events once each, `coracle restore create --wait` follows a restore through admission,
//! and `coracle backup run` does a whole backup with no NATS at all. Also: `kubectl coracle` as a
//! kubectl plugin, and clear errors with a failing exit code for bad input.

use anyhow::Context as _;
use coracle_events::subjects;
use coracle_tests::harness::{messages, snapshot_tags, tree_digest, write_file, Harness};
use coracle_tests::process::output_within;
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use std::process::{Output, Stdio};
use std::time::Duration;

const DB0_PV: &str = "pvc-4e7d0b11-data-db-0";
const LIMIT: Duration = Duration::from_secs(120);

async fn start(name: &str) -> anyhow::Result<Harness> {
    let h = Harness::start(name, include_str!("../../fixtures/demo-cluster.yaml"), &["node-1", "node-2"]).await?;
    h.wait_running("shop", "web-7c9d8f6b5d-h2x9k").await?;
    h.wait_running("shop", "db-0").await?;
    h.wait_running("shop", "db-1").await?;
    for i in 0..20 {
        write_file(&h.pv_data_dir(DB0_PV)?.join(format!("base/{i}.dat")), format!("row {i}\n").repeat(400).as_bytes())?;
    }
    Ok(h)
}

/// Runs `coracle ARGS` to the end (bounded); its output, whatever the exit code.
fn run(h: &Harness, args: &[&str]) -> anyhow::Result<Output> {
    let child = h.command(args)?.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    output_within(child, LIMIT).with_context(|| format!("coracle {args:?}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_create_wait_watch_and_restore_create_wait() -> anyhow::Result<()> {
    let h = start("cli-flow").await?;
    let nats = h.nats.url();
    h.coracle(&["setup", "nats", "--nats", &nats])?;
    let _functions = ["plan-backup", "record-result", "plan-restore", "start-restore"]
        .iter()
        .map(|f| h.spawn_function(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let _webhook = h.install_webhook().await?;

    // A watcher started before the backup sees its completion once, as JSON.
    let watcher = h
        .command(&["watch", "--type", "backup.completed", "--count", "1", "-o", "json", "--nats", &nats])?
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 1. backup create --wait: exit 0, the record as JSON on stdout, one line per volume on stderr.
    let out = run(&h, &["backup", "create", "cli-shop", "-n", "shop", "--wait", "-o", "json", "--nats", &nats])?;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "backup create --wait failed: {stderr}");
    let record: Value = serde_json::from_str(&stdout).with_context(|| format!("record JSON: {stdout}"))?;
    assert_eq!(record["phase"], "Completed", "{stdout}");
    let volumes = record["volumes"].as_object().context("volumes")?;
    assert_eq!(volumes.len(), 4, "web data+cache, db-0, db-1: {stdout}");
    for key in volumes.keys() {
        assert!(stderr.contains(&format!("{key}: planned on node-")), "{key} announced: {stderr}");
        assert!(stderr.contains(&format!("{key}: Completed")), "{key} finished: {stderr}");
    }
    let uid = record["backup"]["uid"].as_str().context("uid")?.to_string();
    let jobs_before = h.jobs()?.len();

    let watched = output_within(watcher, LIMIT)?;
    let line = text(&watched.stdout);
    let event: Value = serde_json::from_str(line.trim()).with_context(|| format!("watch -o json: {line:?}"))?;
    assert_eq!(event["type"], "dev.coracle.backup.completed.v1");
    assert_eq!((&event["data"]["backup"]["name"], &event["data"]["phase"]), (&"cli-shop".into(), &"Completed".into()));
    assert_eq!(line.lines().count(), 1, "--count 1: {line}");

    // 2. The same command again joins the same backup: same uid, no new Job, no second request stored.
    let again = run(&h, &["backup", "create", "cli-shop", "-n", "shop", "--wait", "--nats", &nats])?;
    assert!(again.status.success(), "{}", text(&again.stderr));
    let table = text(&again.stdout);
    assert!(table.contains("Phase:    Completed") && table.contains(&uid), "{table}");
    assert_eq!(h.jobs()?.len(), jobs_before, "no second Job");
    let js = h.js().await?;
    assert_eq!(messages(&js, subjects::BACKUP_REQUESTED).await?.len(), 1, "the duplicate request was dropped");
    assert_eq!(messages(&js, subjects::BACKUP_COMPLETED).await?.len(), 1, "one completion");

    // 3. watch from the start: one readable line per stored event.
    let types = "backup.requested,backup.planned,backup.completed";
    let out = run(&h, &["watch", "--from-start", "--count", "3", "--type", types, "--nats", &nats])?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let history = text(&out.stdout);
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 3, "{history}");
    assert!(lines[0].contains("coracle.backup.requested") && lines[0].contains("backup cli-shop (cli)"), "{history}");
    assert!(lines[1].contains("cli-shop: 4 volumes on 2 Job(s)"), "{history}");
    assert!(lines[2].contains("cli-shop phase Completed"), "{history}");

    // 4. restore create --wait: db-0 loses its pod and data, the command waits until the re-created
    //    pod's helper has been given the data back.
    let pods: kube::Api<Pod> = kube::Api::namespaced(h.sim.client()?, "shop");
    let db0 = pods.get("db-0").await?;
    let data = h.pv_data_dir(DB0_PV)?;
    let before = tree_digest(&data)?;
    pods.delete("db-0", &Default::default()).await?;
    std::fs::remove_dir_all(&data)?;
    std::fs::create_dir_all(&data)?;
    let restore = h
        .command(&[
            "restore",
            "create",
            "cli-shop-restore",
            "--from-backup",
            "cli-shop",
            "--volume",
            "shop/data-db-0",
            "--wait",
            "--timeout",
            "2m",
            "-o",
            "json",
            "--nats",
            &nats,
        ])?
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    h.wait_event::<coracle_events::RestorePlanned>(subjects::RESTORE_PLANNED, Duration::from_secs(30)).await?;
    h.recreate_pod(&db0, None).await?;
    let out = output_within(restore, LIMIT)?;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "restore create --wait failed: {stderr}\n{stdout}");
    let record: Value = serde_json::from_str(&stdout).with_context(|| format!("restore record: {stdout}"))?;
    assert_eq!(record["phase"], "Completed", "{stdout}");
    assert!(stderr.contains("shop.pvc.data-db-0: Completed"), "{stderr}");
    h.wait_running("shop", "db-0").await?;
    assert_eq!(tree_digest(&data)?, before, "db-0's data is back byte for byte");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_run_needs_no_nats_and_joins_its_own_jobs_when_run_again() -> anyhow::Result<()> {
    let h = start("cli-backup-run").await?;
    // No functions, no `setup nats`: only the API and the Jobs. The command is the one the example
    // one-shot Job runs (deploy/examples/backup-run-job.yaml), run here with the cluster's kubeconfig.
    let job: k8s_openapi::api::batch::v1::Job =
        serde_yaml::from_str(include_str!("../../../deploy/examples/backup-run-job.yaml"))?;
    let args = job.spec.and_then(|s| s.template.spec).and_then(|p| p.containers.first()?.args.clone());
    let args = args.context("the example Job's container args")?;
    assert_eq!(args[..3], ["backup", "run", "shop-manual-1"], "the example runs `coracle backup run`");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&h, &args)?;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "backup run failed: {stderr}\n{stdout}");
    assert!(stdout.contains("Name:     shop-manual-1") && stdout.contains("Phase:    Completed"), "{stdout}");
    assert_eq!(stderr.matches(": created").count(), 2, "one Job per node: {stderr}");
    assert_eq!(stderr.matches(": Completed").count(), 4, "one line per volume: {stderr}");
    assert!(stderr.contains("skipped shop/web-7c9d8f6b5d-h2x9k/config"), "skips are listed: {stderr}");

    // The snapshots are real and tagged; nothing reached NATS (the Jobs were given no NATS URL).
    let snapshots = h.snapshots("shop")?;
    let ours = snapshots.iter().filter(|s| snapshot_tags(s).get("backup").map(String::as_str) == Some("shop-manual-1"));
    let pods: Vec<String> = ours.filter_map(|s| snapshot_tags(s).get("pod").cloned()).collect();
    assert_eq!(pods, ["db-0"], "only db-0's volume holds files: {snapshots:?}");
    assert_eq!(stderr.matches(": Completed (empty volume)").count(), 3, "the other three are empty: {stderr}");
    let js = h.js().await?;
    let stream = js.get_stream(subjects::STREAM).await;
    let stored = match stream {
        Ok(mut s) => s.info().await?.state.messages,
        Err(_) => 0,
    };
    assert_eq!(stored, 0, "backup run publishes nothing");
    for job in h.jobs()? {
        let env = job.spec.and_then(|s| s.template.spec).map(|p| p.containers[0].env.clone().unwrap_or_default());
        let nats_url = env.iter().flatten().find(|e| e.name == "CORACLE_NATS_URL").and_then(|e| e.value.clone());
        assert!(nats_url.unwrap_or_default().is_empty(), "the Jobs have no NATS URL");
    }

    // Run again (a one-shot Job's pod restarted): the same Jobs are joined, the same result printed.
    let jobs = h.jobs()?.len();
    let again = run(&h, &[&args[..], &["-o", "json"]].concat())?;
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(text(&again.stderr).matches("already exists, joining it").count(), 2, "{}", text(&again.stderr));
    let record: Value = serde_json::from_str(&text(&again.stdout))?;
    assert_eq!(record["phase"], "Completed");
    assert_eq!(h.jobs()?.len(), jobs, "no new Job");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_clearly_and_kubectl_runs_coracle_as_a_plugin() -> anyhow::Result<()> {
    let h = start("cli-errors").await?;
    let nats = h.nats.url();
    let cases: [(&[&str], &str); 4] = [
        (&["backup", "create", "Not_A_Name", "--nats", &nats], "is not a valid Kubernetes name"),
        (&["backup", "create", "ok", "--selector", "app in (", "--nats", &nats], "labelSelector"),
        (&["restore", "create", "r", "--from-backup", "b", "--namespace-mapping", "shop", "--nats", &nats], "SRC:DST"),
        (&["watch", "--type", "backup..completed", "--nats", &nats], "empty part between dots"),
    ];
    for (args, expected) in cases {
        let out = run(&h, args)?;
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // A backup that has a record of another uid (not made by this command) is refused by name.
    h.coracle(&["setup", "nats", "--nats", &nats])?;
    let kv = h.js().await?.get_key_value(subjects::KV_BACKUPS).await?;
    let mut other: Value = serde_json::from_str(include_str!("../../../functions/tests/fixtures/cli/record.json"))?;
    other["backup"]["name"] = "taken".into();
    kv.put("taken", serde_json::to_vec(&other)?.into()).await?;
    let out = run(&h, &["backup", "create", "taken", "--nats", &nats])?;
    assert!(!out.status.success() && text(&out.stderr).contains("already exists"), "{}", text(&out.stderr));

    // kubectl finds `kubectl-coracle` on PATH and passes the arguments through.
    let kubectl = ["kubectl"].iter().find_map(|k| which(k));
    let Some(kubectl) = kubectl else {
        eprintln!("skipping the kubectl plugin check: no kubectl on PATH");
        return Ok(());
    };
    let dir = h.tmp.path().join("plugins");
    std::fs::create_dir_all(&dir)?;
    std::os::unix::fs::symlink(coracle_tests::binaries::workspace_bin("coracle")?, dir.join("kubectl-coracle"))?;
    let path = format!("{}:{}", dir.display(), coracle_tests::nats::tools_path());
    let out = std::process::Command::new(kubectl)
        .args(["coracle", "schedule", "next", "--cron", "@daily", "--after", "2026-03-01T10:00:00Z", "--count", "2"])
        .env("PATH", path)
        .env("KUBECONFIG", &h.kubeconfig)
        .output()?;
    assert!(out.status.success(), "kubectl coracle: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "2026-03-02T00:00:00Z\n2026-03-03T00:00:00Z\n");
    Ok(())
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&coracle_tests::nats::tools_path()).map(|d| d.join(name)).find(|p| p.is_file())
}
