//! on-k8s-event for real (SPEC §8): the `coracle` binary against a real nats-server and the simulated
//! API server holding the trigger policies of `deploy/examples/trigger-policy.yaml`. A Deployment
//! rollout reported twice within the debounce window (by Argo Events, then through Coracle's own
//! webhook event) produces one `coracle.backup.requested`; a later one fires again; two handlers
//! racing on one workload fire once; a scale-only change, an unrelated kind and a Reference-mode
//! Knative event fire nothing; a BackOff Event fires a backup of its pod (looked up in the API);
//! a malformed event is dead-lettered with the reason.

use anyhow::{bail, Context as _};
use async_nats::jetstream;
use coracle_events::{envelope::decode, subjects, BackupRequest, CloudEvent, DeadLetter};
use coracle_tests::binaries::workspace_bin;
use coracle_tests::harness::{messages, ApiAndNats};
use coracle_tests::nats::NatsServer;
use coracle_tests::process;
use coracle_tests::sim::SimServer;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

fn repo_file(path: &str) -> anyhow::Result<String> {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&full).with_context(|| format!("reading {}", full.display()))
}

fn fixture(name: &str) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&repo_file(&format!("functions/tests/fixtures/triggers/{name}"))?)?)
}

struct Setup {
    nats: NatsServer,
    _sim: SimServer,
    tmp: tempfile::TempDir,
    kubeconfig: PathBuf,
    js: jetstream::Context,
}

async fn setup() -> anyhow::Result<Setup> {
    let mut objects = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: coracle-system}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n",
    );
    objects.push_str(&repo_file("deploy/examples/trigger-policy.yaml")?);
    // The pod the BackOff Event names (JSON is YAML).
    objects.push_str("\n---\n");
    objects.push_str(&repo_file("functions/tests/fixtures/triggers/pod-web.json")?);
    let ApiAndNats { nats, sim, tmp, kubeconfig, js } = ApiAndNats::start("triggers-flow", &objects).await?;
    Ok(Setup { nats, _sim: sim, tmp, kubeconfig, js })
}

impl Setup {
    fn spawn(&self, args: &[&str]) -> anyhow::Result<Child> {
        Command::new(workspace_bin("coracle")?)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("CORACLE_SYSTEM_NAMESPACE", "coracle-system")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting coracle")
    }

    /// `coracle fn on-k8s-event --nats URL --drain`; its standard error.
    fn drain(&self) -> anyhow::Result<String> {
        let out =
            process::output_within(self.spawn(&["fn", "on-k8s-event", "--nats", &self.nats.url(), "--drain"])?, LIMIT)?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            bail!("coracle fn on-k8s-event --drain failed: {stderr}");
        }
        Ok(stderr)
    }

    /// Publishes an event as a bridge would: on `coracle.k8s.<suffix>`, its id as `Nats-Msg-Id`.
    async fn publish(&self, suffix: &str, event: &Value) -> anyhow::Result<()> {
        let id = event["id"].as_str().map(str::to_string).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        self.js
            .publish_with_headers(format!("coracle.k8s.{suffix}"), headers, serde_json::to_vec(event)?.into())
            .await?
            .await?;
        Ok(())
    }

    async fn requests(&self) -> anyhow::Result<Vec<CloudEvent<BackupRequest>>> {
        messages(&self.js, subjects::BACKUP_REQUESTED).await?.iter().map(|m| Ok(decode::<BackupRequest>(m)?)).collect()
    }

    async fn request_ids(&self) -> anyhow::Result<Vec<String>> {
        Ok(self.requests().await?.into_iter().map(|e| e.id).collect())
    }

    fn event_file(&self, name: &str, event: &Value) -> anyhow::Result<PathBuf> {
        let path = self.tmp.path().join(name);
        std::fs::write(&path, serde_json::to_vec(event)?)?;
        Ok(path)
    }
}

/// The Argo rollout fixture as a new change of the same Deployment at `time` (another image).
fn argo_rollout(id: &str, time: &str, image: &str) -> anyhow::Result<Value> {
    let mut event = fixture("argo-deployment-rollout.json")?;
    event["id"] = json!(id);
    event["time"] = json!(time);
    event["data"]["body"]["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image);
    Ok(event)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_reported_twice_in_the_window_backs_up_once() -> anyhow::Result<()> {
    let s = setup().await?;

    // Argo Events reports the rollout; a moment later Coracle's webhook reports it too; then a
    // second rollout 5 minutes later (inside the 15m debounce), a scale, a ConfigMap and a
    // Reference-mode Knative event: all one backup.
    s.publish("argo.workloads", &fixture("argo-deployment-rollout.json")?).await?;
    let mut own = fixture("coracle-workload-updated.json")?;
    own["time"] = json!("2025-06-02T10:15:31Z");
    s.publish("workload.updated", &own).await?;
    s.publish("argo.workloads", &argo_rollout("second-rollout", "2025-06-02T10:20:30Z", "nginx:1.27.2")?).await?;
    let mut scale = fixture("argo-deployment-scale.json")?;
    scale["time"] = json!("2025-06-02T11:00:00Z");
    s.publish("argo.workloads", &scale).await?;
    s.publish("argo.configmaps", &fixture("argo-configmap-update.json")?).await?;
    s.publish("knative.ref", &fixture("knative-ref-update.json")?).await?;
    let stderr = s.drain()?;
    assert!(stderr.contains("on-k8s-event: handled 6, retried 0, dead-lettered 0"), "{stderr}");
    assert!(stderr.contains("debounced"), "{stderr}");
    assert!(stderr.contains("Reference mode"), "{stderr}");
    let requests = s.requests().await?;
    assert_eq!(requests.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["backup-on-rollout-web-20250602101530"]);
    let r = &requests[0];
    assert_eq!(r.source, "/coracle/functions/on-k8s-event");
    assert_eq!(r.data.included_namespaces, ["shop"]);
    assert_eq!(r.data.label_selector.as_deref(), Some("app=web"));
    assert!(r.data.default_volumes_to_backup);
    assert_eq!(r.data.ttl.as_deref(), Some("168h"));
    assert_eq!(r.data.origin.as_deref(), Some("trigger/backup-on-rollout"));

    // Past the window (10:15:30 + 15m): the next rollout fires again.
    s.publish("argo.workloads", &argo_rollout("third-rollout", "2025-06-02T10:31:00Z", "nginx:1.27.3")?).await?;
    s.drain()?;
    assert_eq!(
        s.request_ids().await?,
        ["backup-on-rollout-web-20250602101530", "backup-on-rollout-web-20250602103100"]
    );

    // Two handlers racing on two changes of one workload, both inside a new window: one fires.
    let a = s.event_file("a.json", &argo_rollout("race-a", "2025-06-02T12:00:00Z", "nginx:1.28.0")?)?;
    let b = s.event_file("b.json", &argo_rollout("race-b", "2025-06-02T12:00:01Z", "nginx:1.28.1")?)?;
    let url = s.nats.url();
    let (pa, pb) = (
        s.spawn(&["fn", "on-k8s-event", "--event", &a.to_string_lossy(), "--nats", &url])?,
        s.spawn(&["fn", "on-k8s-event", "--event", &b.to_string_lossy(), "--nats", &url])?,
    );
    let (oa, ob) = (process::output_within(pa, LIMIT)?, process::output_within(pb, LIMIT)?);
    assert!(
        oa.status.success() && ob.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&oa.stderr),
        String::from_utf8_lossy(&ob.stderr)
    );
    let ids = s.request_ids().await?;
    let racing: Vec<&String> = ids.iter().filter(|i| i.contains("-2025060212000")).collect();
    assert_eq!(racing.len(), 1, "{ids:?}");
    // The winner's event redelivered: same id, dropped by the stream.
    for file in [&a, &b] {
        let out = process::output_within(
            s.spawn(&["fn", "on-k8s-event", "--event", &file.to_string_lossy(), "--nats", &url])?,
            LIMIT,
        )?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(s.request_ids().await?.len(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backoff_event_backs_up_its_pod_and_malformed_events_are_dead_lettered() -> anyhow::Result<()> {
    let s = setup().await?;
    s.publish("knative.events", &fixture("knative-event-backoff.json")?).await?;
    let mut pulled = fixture("knative-event-backoff.json")?;
    pulled["id"] = json!("another-reason");
    pulled["data"]["reason"] = json!("Pulled");
    s.publish("knative.events", &pulled).await?;
    s.publish(
        "argo.workloads",
        &json!({"id": "broken", "type": "UPDATE", "body": {"apiVersion": "apps/v1", "kind": "Deployment"}}),
    )
    .await?;
    let stderr = s.drain()?;
    assert!(stderr.contains("on-k8s-event: handled 2, retried 0, dead-lettered 1"), "{stderr}");
    let requests = s.requests().await?;
    assert_eq!(
        requests.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["backup-before-trouble-web-6d4cf56db6-x7k2p-20250602103000"]
    );
    let r = &requests[0].data;
    // The pod's labels, looked up in the API, without the per-revision hash.
    assert_eq!(r.label_selector.as_deref(), Some("app=web,tier=frontend"));
    assert_eq!(r.included_namespaces, ["shop"]);
    assert_eq!(r.origin.as_deref(), Some("trigger/backup-before-trouble"));

    let dead = messages(&s.js, &subjects::dlq("on-k8s-event")).await?;
    assert_eq!(dead.len(), 1);
    let dead = decode::<DeadLetter>(&dead[0])?.data;
    assert!(dead.reason.contains("Deployment without metadata.name"), "{}", dead.reason);
    assert_eq!(dead.subject, "coracle.k8s.argo.workloads");
    Ok(())
}
