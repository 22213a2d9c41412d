//! The Lambda adapter for real: the `coracle` binary serving `plan-backup` through the AWS Lambda
//! Runtime API (the emulator), with a real nats-server and the simulated API server. A valid request
//! creates the node's backup Job and answers `ok`; malformed events are answered `dead-lettered` with
//! the reason and parked on `coracle.dlq.plan-backup`.

use anyhow::{bail, Context as _};
use async_nats::jetstream;
use coracle_events::{subjects, BackupPlanned, BackupRequest, CloudEvent, DeadLetter, PlannedVolume, VolumeSource};
use coracle_functions::jobs::backup_job_name;
use coracle_tests::binaries::{scratch_dir, workspace_bin};
use coracle_tests::harness::messages;
use coracle_tests::lambda::LambdaEmulator;
use coracle_tests::nats::NatsServer;
use coracle_tests::process;
use coracle_tests::sim::SimServer;
use k8s_openapi::api::batch::v1::Job;
use serde_json::json;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);
const POD_UID: &str = "6a0e4d1c-7777-4777-8777-000000000001";
const BACKUP_UID: &str = "b1a2c3d4-0000-4000-8000-00000000000b";

const OBJECTS: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: coracle-system}
---
apiVersion: v1
kind: Namespace
metadata: {name: apps}
---
apiVersion: v1
kind: Node
metadata: {name: node-a, labels: {kubernetes.io/hostname: node-a}}
---
apiVersion: v1
kind: Pod
metadata:
  name: worker-0
  namespace: apps
  uid: 6a0e4d1c-7777-4777-8777-000000000001
  annotations: {coracle.dev/backup-volumes: scratch}
spec:
  nodeName: node-a
  containers:
  - name: worker
    image: busybox:1.36
    volumeMounts:
    - {name: scratch, mountPath: /scratch}
  volumes:
  - name: scratch
    emptyDir: {}
status: {phase: Running}
";

/// The `coracle` child process, stopped (SIGTERM, then SIGKILL) by pid when dropped.
struct Runner(Child);

impl Drop for Runner {
    fn drop(&mut self) {
        process::stop(&mut self.0, Duration::from_secs(5));
    }
}

fn spawn_lambda(emulator: &LambdaEmulator, nats: &NatsServer, kubeconfig: &Path, log: &Path) -> anyhow::Result<Runner> {
    let child = Command::new(workspace_bin("coracle")?)
        .args(["fn", "plan-backup", "--lambda", "--nats", &nats.url()])
        .env("AWS_LAMBDA_RUNTIME_API", emulator.address())
        .env("AWS_LAMBDA_FUNCTION_NAME", "coracle-plan-backup")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "2025/03/14/[$LATEST]0123456789abcdef")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/coracle-plan-backup")
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("starting coracle fn plan-backup --lambda")?;
    Ok(Runner(child))
}

fn dead_letters(raw: &[Vec<u8>]) -> anyhow::Result<Vec<DeadLetter>> {
    raw.iter().map(|b| Ok(coracle_events::envelope::decode::<DeadLetter>(b)?.data)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_backup_under_the_lambda_runtime() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let sim = SimServer::start(OBJECTS).await?;
    let emulator = LambdaEmulator::start()?;
    let tmp = scratch_dir("lambda-runner")?;
    let kubeconfig = tmp.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig)?;
    let log = tmp.path().join("coracle.log");
    let runner = spawn_lambda(&emulator, &nats, &kubeconfig, &log)?;
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let js = jetstream::new(async_nats::connect(nats.url()).await?);

    // 1. A valid request: the plan, the Job for the pod's node, `ok`.
    let request = BackupRequest {
        name: "lambda-nightly".into(),
        uid: Some(BACKUP_UID.into()),
        included_namespaces: vec!["apps".into()],
        ..Default::default()
    };
    let event = CloudEvent::new("req-lambda-1", "/tests/lambda", Some("lambda-nightly".into()), request);
    let answer = emulator.invoke_and_wait(serde_json::to_value(&event)?, WAIT).await;
    let answer = answer.with_context(|| format!("coracle's log:\n{}", log_text()))?;
    let response = match answer {
        Ok(response) => response,
        Err(error) => bail!("plan-backup failed under Lambda: {error}\n{}", log_text()),
    };
    assert_eq!(response["status"], "ok", "{response}");
    assert_eq!(response["emitted"], json!([]), "with NATS configured, events are published, not returned");

    let job_name = backup_job_name(BACKUP_UID, "node-a");
    let job = sim.store().get_as::<Job>("coracle-system", &job_name)?;
    let job = job.with_context(|| format!("Job coracle-system/{job_name} was not created\n{}", log_text()))?;
    assert_eq!(sim.store().list_as::<Job>(None)?.len(), 1, "one Job for the one node");
    let pod_spec = job.spec.as_ref().and_then(|s| s.template.spec.clone()).context("pod spec")?;
    let env = pod_spec.containers[0].env.clone().unwrap_or_default();
    let volumes_env = env.iter().find(|e| e.name == "CORACLE_VOLUMES").and_then(|e| e.value.clone());
    let volumes: Vec<PlannedVolume> = serde_json::from_str(&volumes_env.context("CORACLE_VOLUMES")?)?;
    assert_eq!(volumes.len(), 1);
    assert_eq!(
        (volumes[0].pod.as_str(), volumes[0].pod_uid.as_str(), volumes[0].volume.as_str(), volumes[0].source),
        ("worker-0", POD_UID, "scratch", VolumeSource::EmptyDir)
    );
    let planned = messages(&js, subjects::BACKUP_PLANNED).await?;
    assert_eq!(planned.len(), 1);
    let planned = coracle_events::envelope::decode::<BackupPlanned>(&planned[0])?;
    assert_eq!(planned.data.backup.uid, BACKUP_UID);
    assert_eq!(planned.data.jobs, std::slice::from_ref(&job_name));
    assert!(messages(&js, &subjects::dlq("plan-backup")).await?.is_empty());

    // 2. A malformed event (no id): answered, not failed, and dead-lettered with the reason.
    let malformed = json!({
        "specversion": "1.0",
        "source": "/tests/lambda",
        "type": "dev.coracle.backup.requested.v1",
        "data": {"name": "no-id"},
    });
    let response = match emulator.invoke_and_wait(malformed.clone(), WAIT).await? {
        Ok(response) => response,
        Err(error) => bail!("a malformed event must be answered, not failed: {error}"),
    };
    assert_eq!(response["status"], "dead-lettered", "{response}");
    let reason = response["reason"].as_str().context("reason")?.to_string();
    assert!(reason.contains("not a structured CloudEvent") && reason.contains("`id`"), "{reason}");

    // 3. Another malformed one: a name that is not a Kubernetes name.
    let bad_name = json!({
        "specversion": "1.0",
        "id": "req-lambda-bad-name",
        "source": "/tests/lambda",
        "type": "dev.coracle.backup.requested.v1",
        "data": {"name": "Not_A_Name"},
    });
    let response = match emulator.invoke_and_wait(bad_name.clone(), WAIT).await? {
        Ok(response) => response,
        Err(error) => bail!("an invalid request must be answered, not failed: {error}"),
    };
    assert_eq!(response["status"], "dead-lettered", "{response}");
    let bad_name_reason = response["reason"].as_str().context("reason")?.to_string();
    assert!(bad_name_reason.contains("Not_A_Name"), "{bad_name_reason}");

    // Both are on the dead-letter subject, each with its reason and the original event.
    let dlq = dead_letters(&messages(&js, &subjects::dlq("plan-backup")).await?)?;
    assert_eq!(dlq.len(), 2, "one dead letter per malformed invocation: {dlq:#?}");
    for (dead, (reason, payload)) in dlq.iter().zip([(&reason, &malformed), (&bad_name_reason, &bad_name)]) {
        assert_eq!(dead.function, "plan-backup");
        assert_eq!(&dead.reason, reason);
        assert_eq!(&dead.payload, payload);
        assert_eq!(dead.subject, "lambda.plan-backup");
        assert_eq!((dead.deliveries, dead.stream_sequence, dead.truncated), (1, None, false));
    }
    assert_eq!(sim.store().list_as::<Job>(None)?.len(), 1, "no Job for a malformed event");

    // 4. The same valid request again (Lambda may deliver twice): still `ok`, still one Job.
    let again = emulator.invoke_and_wait(serde_json::to_value(&event)?, WAIT).await?;
    assert_eq!(again.map_err(|e| anyhow::anyhow!("{e}"))?["status"], "ok");
    assert_eq!(sim.store().list_as::<Job>(None)?.len(), 1);
    assert_eq!(messages(&js, subjects::BACKUP_PLANNED).await?.len(), 1, "the planned event is de-duplicated");

    assert!(emulator.init_error().is_none());
    let pid = runner.0.id();
    assert!(process::pid_alive(pid), "the runtime keeps serving between invocations");
    drop(runner);
    assert!(!process::pid_alive(pid), "stopped by pid");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_dead_letters_a_non_object_payload_and_fails_on_retryable_errors() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let sim = SimServer::start(OBJECTS).await?;
    let emulator = LambdaEmulator::start()?;
    let tmp = scratch_dir("lambda-runner-scalar")?;
    let kubeconfig = tmp.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig)?;
    let log = tmp.path().join("coracle.log");
    let runner = spawn_lambda(&emulator, &nats, &kubeconfig, &log)?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);

    let answer = emulator.invoke_and_wait(json!(["not", "an", "event"]), WAIT).await;
    let answer = answer.with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
    let response = answer.map_err(|e| anyhow::anyhow!("answered with an error: {e}"))?;
    assert_eq!(response["status"], "dead-lettered", "{response}");
    assert!(response["reason"].as_str().is_some_and(|r| r.contains("not a JSON object")), "{response}");
    let dlq = dead_letters(&messages(&js, &subjects::dlq("plan-backup")).await?)?;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].payload, json!(["not", "an", "event"]));
    assert!(sim.store().list_as::<Job>(None)?.is_empty());

    // A retryable failure (the API server is gone) is returned as a function error, so Lambda's own
    // retry policy applies; nothing is dead-lettered.
    sim.shutdown();
    let request = BackupRequest { name: "while-api-down".into(), ..Default::default() };
    let event = CloudEvent::new("req-api-down", "/tests/lambda", None, request);
    let answer = emulator.invoke_and_wait(serde_json::to_value(&event)?, WAIT).await?;
    let error = match answer {
        Err(error) => error,
        Ok(response) => bail!("expected a function error while the API server is down, got {response}"),
    };
    let message = error["errorMessage"].as_str().context("errorMessage")?;
    assert!(message.contains("coracle-config"), "the error says what failed: {error}");
    assert_eq!(messages(&js, &subjects::dlq("plan-backup")).await?.len(), 1, "retryable errors are not parked");
    assert!(messages(&js, subjects::BACKUP_PLANNED).await?.is_empty());
    drop(runner);
    Ok(())
}
