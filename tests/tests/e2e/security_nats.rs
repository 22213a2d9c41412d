//! NATS permissions per component (deploy/nats/accounts.conf), on a real nats-server started with
//! that file: each component does its work with its own user, and nothing more. The functions
//! plan a backup (durable consumer, KV record, events); a trigger may only request; a Job may
//! only report results; the restore-wait helper — the real binary, which runs inside application
//! pods — may publish only its ready event, and can read neither events nor records.

use anyhow::{bail, Context as _};
use async_nats::jetstream;
use coracle_events::publish::Publisher;
use coracle_events::{
    subjects, BackupRef, BackupRequest, CloudEvent, RestorePodReady, RestoreRef, VolumeBackupProgress,
};
use coracle_tests::binaries::{scratch_dir, workspace_bin};
use coracle_tests::harness::messages;
use coracle_tests::nats::NatsServer;
use coracle_tests::sim::SimServer;
use futures::StreamExt;
use std::process::Command;
use std::time::Duration;

const OBJECTS: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: coracle-system}
---
apiVersion: v1
kind: Namespace
metadata: {name: quiet}
";

async fn js_as(nats: &NatsServer, user: &str) -> anyhow::Result<jetstream::Context> {
    let url = nats.url_as(user)?;
    let client = coracle_events::nats_auth::connect_options(&url)
        .connection_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
        .with_context(|| format!("connecting as {user}"))?;
    let mut js = jetstream::new(client);
    // A denied publish gets no acknowledgement: fail fast rather than after the default 5 s.
    js.set_timeout(Duration::from_secs(2));
    Ok(js)
}

/// Publishes an event as `user`: Ok(()) when JetStream stored it.
async fn publish_as<T: coracle_events::EventData>(
    nats: &NatsServer,
    user: &str,
    event: &CloudEvent<T>,
) -> anyhow::Result<()> {
    Publisher::new(js_as(nats, user).await?).publish(event).await?;
    Ok(())
}

fn ready(id: &str) -> CloudEvent<RestorePodReady> {
    CloudEvent::new(
        id,
        "/coracle/pods/quiet/db-0",
        Some("r".into()),
        RestorePodReady {
            restore: RestoreRef { name: "r".into(), uid: "9b0c7a1e-1111-4111-8111-000000000001".into() },
            namespace: "quiet".into(),
            pod: "db-0".into(),
            ..Default::default()
        },
    )
}

fn coracle(args: &[&str], kubeconfig: &std::path::Path) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(workspace_bin("coracle")?).args(args).env("KUBECONFIG", kubeconfig).output()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_component_works_with_its_own_user_and_can_do_nothing_else() -> anyhow::Result<()> {
    let nats = NatsServer::start_with_accounts()?;
    let sim = SimServer::start(OBJECTS).await?;
    let tmp = scratch_dir("security-nats")?;
    let kubeconfig = tmp.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig)?;

    // No credentials, or wrong ones: refused.
    assert!(async_nats::connect(nats.url()).await.is_err(), "anonymous clients are refused");
    let wrong = nats.url_as("coracle-jobs")?.replace("coracle-jobs:", "coracle-jobs:x");
    assert!(coracle_events::nats_auth::connect_options(&wrong).connect(&wrong).await.is_err(), "a wrong password");

    // The operator sets up the stream and buckets.
    let out = coracle(&["setup", "nats", "--nats", &nats.url_as("coracle-admin")?], &kubeconfig)?;
    assert!(out.status.success(), "setup as coracle-admin: {}", String::from_utf8_lossy(&out.stderr));
    let admin = js_as(&nats, "coracle-admin").await?;

    // A trigger requests a backup; it may not fake a result.
    let request =
        BackupRequest { name: "perm".into(), included_namespaces: vec!["quiet".into()], ..Default::default() };
    publish_as(&nats, "coracle-triggers", &CloudEvent::new("req-perm", "/tests", Some("perm".into()), request)).await?;
    let fake = CloudEvent::new("fake-progress", "/tests", None, VolumeBackupProgress::default());
    assert!(publish_as(&nats, "coracle-triggers", &fake).await.is_err(), "a trigger cannot publish Job results");

    // The functions plan it with their user: durable consumer, record in KV, events.
    let out = coracle(&["fn", "plan-backup", "--nats", &nats.url_as("coracle-functions")?, "--drain"], &kubeconfig)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("handled 1, retried 0, dead-lettered 0"), "{stderr}");
    assert_eq!(messages(&admin, subjects::BACKUP_PLANNED).await?.len(), 1);
    assert_eq!(messages(&admin, subjects::BACKUP_COMPLETED).await?.len(), 1, "an empty plan completes at once");
    let out = coracle(
        &["backup", "describe", "perm", "--nats", &nats.url_as("coracle-functions")?, "-o", "json"],
        &kubeconfig,
    )?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for password in nats.passwords() {
        assert!(!stderr.contains(&password), "a NATS password in the function's log");
    }

    // A Job reports results, and only results.
    let progress = VolumeBackupProgress {
        backup: BackupRef { name: "perm".into(), uid: "0f8fad5b-d9cb-469f-a165-70867728950e".into() },
        ..Default::default()
    };
    publish_as(&nats, "coracle-jobs", &CloudEvent::new("job-progress", "/coracle/jobs/j", None, progress)).await?;
    let request = BackupRequest { name: "from-a-job".into(), ..Default::default() };
    let sneaky = CloudEvent::new("req-from-job", "/coracle/jobs/j", None, request);
    assert!(publish_as(&nats, "coracle-jobs", &sneaky).await.is_err(), "a Job cannot request backups");
    let jobs = js_as(&nats, "coracle-jobs").await?;
    assert!(jobs.get_key_value(subjects::KV_BACKUPS).await.is_err(), "a Job cannot open the records");

    // The helper, the real binary, announces itself with its user, then its marker arrives.
    let root = tmp.path().join("restores");
    let uid = "9b0c7a1e-1111-4111-8111-000000000001";
    let markers = root.join("data").join(coracle_events::MARKER_DIR);
    std::fs::create_dir_all(&markers)?;
    let mut helper_cmd = Command::new(workspace_bin("coracle-restore-wait")?);
    helper_cmd
        .env("CORACLE_RESTORE_NAME", "r")
        .env("CORACLE_RESTORE_UID", uid)
        .env("CORACLE_POD_NAME", "db-0")
        .env("CORACLE_POD_NAMESPACE", "quiet")
        .env("CORACLE_POD_UID", "3e9f6a52-5555-4555-8555-0000000000aa")
        .env("CORACLE_NODE_NAME", "node-1")
        .env("CORACLE_VOLUMES", "data")
        .env("CORACLE_RESTORES_ROOT", &root)
        .env("CORACLE_TIMEOUT", "30s")
        .env("CORACLE_NATS_URL", nats.url_as("coracle-restore-wait")?)
        .env("CORACLE_TERMINATION_LOG", tmp.path().join("helper-termination"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    coracle_tests::process::die_with_parent(&mut helper_cmd);
    let helper_child = helper_cmd.spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while messages(&admin, subjects::RESTORE_POD_READY).await?.is_empty() {
        if std::time::Instant::now() > deadline {
            coracle_tests::process::signal(helper_child.id(), libc::SIGKILL);
            bail!("the helper never announced itself");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::write(markers.join(uid), b"done")?;
    let out = helper_child.wait_with_output()?;
    let log = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("published coracle.restore.pod.ready"), "{log}");
    for password in nats.passwords() {
        assert!(!log.contains(&password), "a NATS password in the helper's log: {log}");
    }
    let announced = messages(&admin, subjects::RESTORE_POD_READY).await?;
    assert_eq!(announced.len(), 1);
    assert_eq!(coracle_events::envelope::decode::<RestorePodReady>(&announced[0])?.data.pod, "db-0");

    // The helper may publish its ready subject and nothing else.
    let helper_js = js_as(&nats, "coracle-restore-wait").await?;
    publish_as(&nats, "coracle-restore-wait", &ready("ready-2")).await?;
    let forged = Publisher::new(helper_js.clone())
        .publish_raw(subjects::VOLUME_RESTORE_COMPLETED, "forged", ready("forged").to_json())
        .await;
    assert!(forged.is_err(), "the helper cannot claim a restore completed");
    let request = BackupRequest { name: "from-a-pod".into(), ..Default::default() };
    let from_pod = CloudEvent::new("req-from-pod", "/coracle/pods/quiet/db-0", None, request);
    assert!(publish_as(&nats, "coracle-restore-wait", &from_pod).await.is_err(), "the helper cannot request");
    let helper = helper_js;
    assert!(helper.get_key_value(subjects::KV_RESTORES).await.is_err(), "the helper cannot read pending restores");
    assert!(helper.get_stream(subjects::STREAM).await.is_err(), "the helper cannot read the stream");
    // A plain subscription to the events gets nothing: the server refuses it.
    let url = nats.url_as("coracle-restore-wait")?;
    let client = coracle_events::nats_auth::connect_options(&url).connect(&url).await?;
    let mut sub = client.subscribe(subjects::ALL).await?;
    client.flush().await?;
    let admin_client = admin.client().clone();
    admin_client.publish(subjects::BACKUP_COMPLETED, "secret-ish".into()).await?;
    admin_client.flush().await?;
    if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(1500), sub.next()).await {
        bail!("the helper received {} on {}", String::from_utf8_lossy(&m.payload), m.subject);
    }

    // What reached the stream: exactly what was allowed.
    assert_eq!(messages(&admin, subjects::RESTORE_POD_READY).await?.len(), 2);
    assert_eq!(messages(&admin, subjects::VOLUME_RESTORE_COMPLETED).await?.len(), 0);
    let requests = messages(&admin, subjects::BACKUP_REQUESTED).await?;
    assert_eq!(requests.len(), 1, "only the trigger's request");
    assert_eq!(messages(&admin, subjects::VOLUME_BACKUP_PROGRESS).await?.len(), 1, "only the Job's progress");
    drop(nats);
    Ok(())
}
