//! No secret in anything Coracle emits, and no namespace's key opens another's repository.
//!
//! A full backup and restore on the simulation (real NATS, restic, `coracle`, Jobs, the webhook
//! and the restore-wait helper), with every function logging at debug level, while everything
//! Coracle emits is collected: every process's log, every message on `coracle.>`, the KV
//! records, every Job and Pod object in the API server, every Job's log and termination message,
//! the helper's log, CLI output (human and JSON) and CLI errors, and the nats-server log. It
//! fails if the master key (hex or base64), any namespace's derived repository password, or a
//! repository credential appears in any of it. Then: a namespace's derived password cannot open
//! another namespace's repository (real restic), and the injected helper is restricted-PSS
//! compliant and non-root.

use anyhow::Context as _;
use base64::Engine as _;
use coracle_events::{subjects, BackupCompleted, BackupPhase, BackupRequest, RestoreCompleted, RestoreRequest};
use coracle_tests::binaries::workspace_bin;
use coracle_tests::harness::{messages, write_file, ChildGuard, Harness, SYSTEM_NAMESPACE};
use coracle_tests::nats::tools_path;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use std::process::{Command, Stdio};
use std::time::Duration;

const WEB_PV: &str = "pvc-9b1f3c2a-web-data";
/// A repository credential as an S3 backend would need it, in the Secret every Job gets.
const REPOSITORY_SECRET: &str = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY-7f3a";

/// A function consuming NATS with its log (debug level) kept in a file.
fn spawn_logged(h: &Harness, function: &str) -> anyhow::Result<ChildGuard> {
    let log = std::fs::File::create(h.tmp.path().join(format!("fn-{function}.log")))?;
    let mut cmd = Command::new(workspace_bin("coracle")?);
    cmd.args(["fn", function, "--nats", &h.nats.url()])
        .env("KUBECONFIG", &h.kubeconfig)
        .env("PATH", tools_path())
        .env("CORACLE_MASTER_KEY", &h.master_key)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    coracle_tests::process::die_with_parent(&mut cmd);
    Ok(ChildGuard(cmd.spawn().context("starting a function")?))
}

/// `coracle ARGS`: stdout and stderr together, whatever the exit status.
fn cli(h: &Harness, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(workspace_bin("coracle")?)
        .args(args)
        .env("KUBECONFIG", &h.kubeconfig)
        .env("PATH", tools_path())
        .env("CORACLE_MASTER_KEY", &h.master_key)
        .output()?;
    Ok(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_emitted_during_a_backup_and_restore_holds_a_secret() -> anyhow::Result<()> {
    let h = Harness::start("security-secrets", include_str!("../../fixtures/demo-cluster.yaml"), &["node-1", "node-2"])
        .await?;
    h.coracle(&["setup", "nats", "--nats", &h.nats.url()])?;
    // Repository credentials every Job gets (by reference) from this Secret.
    h.sim.store().put(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "coracle-repository-credentials", "namespace": SYSTEM_NAMESPACE},
        "type": "Opaque",
        "data": {"AWS_SECRET_ACCESS_KEY": base64::engine::general_purpose::STANDARD.encode(REPOSITORY_SECRET)},
    }))?;
    let web = h.wait_running("shop", "web-7c9d8f6b5d-h2x9k").await?;
    h.wait_running("shop", "db-0").await?;
    let web_data = h.pv_data_dir(WEB_PV)?;
    write_file(&web_data.join("index.html"), b"<h1>shop</h1>\n")?;

    let functions = ["plan-backup", "record-result", "plan-restore", "start-restore"]
        .iter()
        .map(|f| spawn_logged(&h, f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let webhook = h.install_webhook().await?;

    // A backup of the shop namespace, then a restore of its web pod's data into a new pod.
    let backup = BackupRequest { name: "sec".into(), included_namespaces: vec!["shop".into()], ..Default::default() };
    h.request(backup, "sec").await?;
    let done: BackupCompleted = h.wait_event(subjects::BACKUP_COMPLETED, Duration::from_secs(120)).await?;
    assert_eq!(done.phase, BackupPhase::Completed, "{done:?}");
    let pods: kube::Api<Pod> = kube::Api::namespaced(h.sim.client()?, "shop");
    pods.delete("web-7c9d8f6b5d-h2x9k", &Default::default()).await?;
    std::fs::remove_dir_all(&web_data)?;
    std::fs::create_dir_all(&web_data)?;
    let restore = RestoreRequest {
        name: "sec-restore".into(),
        backup: "sec".into(),
        included_namespaces: vec!["shop".into()],
        volumes: vec!["shop/web-data".into()],
        ..Default::default()
    };
    h.request_restore(restore, "sec-restore").await?;
    h.wait_event::<coracle_events::RestorePlanned>(subjects::RESTORE_PLANNED, Duration::from_secs(30)).await?;
    let new_web = h.recreate_pod(&web, Some("web-7c9d8f6b5d-")).await?;
    let web_name = new_web.metadata.name.clone().context("generated name")?;
    h.wait_running("shop", &web_name).await?;
    let restored: RestoreCompleted = h.wait_event(subjects::RESTORE_COMPLETED, Duration::from_secs(60)).await?;
    assert_eq!(restored.phase, BackupPhase::Completed, "{restored:?}");
    assert_eq!(std::fs::read_to_string(web_data.join("index.html"))?, "<h1>shop</h1>\n");

    // Everything emitted, as (where, text).
    let mut emitted: Vec<(String, String)> = Vec::new();
    let js = h.js().await?;
    for m in messages(&js, "coracle.>").await? {
        emitted.push(("a NATS message".into(), String::from_utf8_lossy(&m).into_owned()));
    }
    for bucket in subjects::KV_BUCKETS {
        for m in messages(&js, &format!("$KV.{bucket}.>")).await.unwrap_or_default() {
            emitted.push((format!("KV {bucket}"), String::from_utf8_lossy(&m).into_owned()));
        }
    }
    let store = h.sim.store();
    let jobs = store.list_as::<Job>(None)?;
    assert!(jobs.len() >= 2, "backup and restore Jobs: {}", jobs.len());
    for job in &jobs {
        let name = job.metadata.name.clone().unwrap_or_default();
        emitted.push((format!("Job {name}"), serde_json::to_string(job)?));
        let outcome = h.cluster.wait_job(SYSTEM_NAMESPACE, &name, Duration::from_secs(60)).await?;
        assert!(outcome.complete(), "{}", outcome.describe());
        for index in &outcome.indexes {
            emitted.push((format!("Job {name} log"), index.log.clone()));
            emitted.push((format!("Job {name} termination message"), index.termination_message.clone()));
        }
    }
    for pod in store.list_as::<Pod>(None)? {
        emitted.push((format!("Pod {:?}", pod.metadata.name), serde_json::to_string(&pod)?));
    }
    let helper_log = h.cluster.container_log("shop", &web_name, "coracle-restore-wait")?;
    assert!(helper_log.contains("restored"), "the helper's log: {helper_log}");
    emitted.push(("the helper's log".into(), helper_log));
    let url = h.nats.url();
    for args in [
        vec!["backup", "get", "--nats", &url],
        vec!["backup", "get", "--nats", &url, "-o", "json"],
        vec!["backup", "describe", "sec", "--nats", &url],
        vec!["backup", "describe", "sec", "--nats", &url, "-o", "json"],
        vec!["restore", "describe", "sec-restore", "--nats", &url, "-o", "json"],
        vec!["backup", "describe", "no-such-backup", "--nats", &url],
        vec!["backup", "describe", "sec", "--nats", "nats://coracle:hunter2-not-a-secret@127.0.0.1:1"],
        vec!["catalog", "rebuild", "--nats", &url],
    ] {
        emitted.push((format!("coracle {}", args.join(" ")), cli(&h, &args)?));
    }
    drop(webhook);
    drop(functions);
    for function in ["plan-backup", "record-result", "plan-restore", "start-restore"] {
        let log = std::fs::read_to_string(h.tmp.path().join(format!("fn-{function}.log")))?;
        assert!(log.contains("DEBUG") || log.contains("INFO"), "{function} logged: {log}");
        emitted.push((format!("{function}'s log"), log));
    }
    emitted.push(("nats-server's log".into(), std::fs::read_to_string(h.nats.log_path()).unwrap_or_default()));

    // The secrets: the master key as given and as stored, every namespace's derived password,
    // the repository credential.
    let mut secrets = vec![
        ("the master key".to_string(), h.master_key.clone()),
        ("the master key (base64)".to_string(), base64::engine::general_purpose::STANDARD.encode(&h.master_key)),
        ("a repository credential".to_string(), REPOSITORY_SECRET.to_string()),
    ];
    for namespace in ["shop", "media", "coracle-system", "default"] {
        for generation in 1..=3 {
            let password = coracle_volume_job::namespace_password(h.master_key.as_bytes(), namespace, generation);
            secrets.push((format!("{namespace}'s repository password (generation {generation})"), password));
        }
    }
    let total: usize = emitted.iter().map(|(_, t)| t.len()).sum();
    assert!(total > 100_000, "collected too little to mean anything: {total} bytes");
    for (what, text) in &emitted {
        for (secret, value) in &secrets {
            assert!(!text.contains(value.as_str()), "{secret} appears in {what}");
        }
    }
    // The deliberately bad CLI URL's password is masked too.
    let bad = emitted.iter().find(|(w, _)| w.contains("hunter2")).map(|(_, t)| t.clone()).unwrap_or_default();
    assert!(!bad.contains("hunter2-not-a-secret"), "a NATS password in a CLI error: {bad}");

    // One namespace's derived password does not open another namespace's repository.
    h.restic("media", &["init"])?;
    for (repo, other) in [("shop", "media"), ("media", "shop")] {
        let password = coracle_volume_job::namespace_password(h.master_key.as_bytes(), other, 1);
        let out = Command::new("restic")
            .env("PATH", tools_path())
            .env("RESTIC_PASSWORD", &password)
            .arg("-r")
            .arg(h.repos.join(repo))
            .args(["snapshots", "--json"])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{other}'s password opened {repo}'s repository");
        assert!(stderr.contains("wrong password"), "{stderr}");
        h.restic(repo, &["snapshots", "--json"]).with_context(|| format!("{repo}'s own password"))?;
    }

    // The injected helper runs as non-root, restricted-PSS compliant.
    let spec = new_web.spec.clone().context("spec")?;
    let helper = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "coracle-restore-wait")
        .context("the helper was injected")?;
    let sc = helper.security_context.clone().context("securityContext")?;
    assert_eq!(sc.run_as_non_root, Some(true));
    assert!(sc.run_as_user.is_some_and(|u| u != 0), "{sc:?}");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert!(!sc.privileged.unwrap_or(false), "not privileged");
    let caps = sc.capabilities.clone().context("capabilities")?;
    assert_eq!(caps.drop.unwrap_or_default(), ["ALL"]);
    assert!(caps.add.unwrap_or_default().is_empty());
    let seccomp = sc.seccomp_profile.clone().context("seccompProfile")?;
    assert!(["RuntimeDefault", "Localhost"].contains(&seccomp.type_.as_str()), "{seccomp:?}");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert!(helper.ports.is_none(), "no host ports");
    for mount in helper.volume_mounts.iter().flatten() {
        let volume = spec.volumes.iter().flatten().find(|v| v.name == mount.name).context("mounted volume")?;
        assert!(volume.host_path.is_none(), "the helper mounts no hostPath: {}", mount.name);
    }
    Ok(())
}
