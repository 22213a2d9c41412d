//! Coracle installed from the rendered manifests (`kustomize build deploy/overlays/cronjob-drain`,
//! what `kubectl apply -k deploy/` applies) into the simulation, then a backup and a restore run by
//! the rendered workloads: the setup Jobs create the master key and the NATS stream, certgen
//! issues the webhook certificate and writes the caBundles, the functions run from their CronJobs'
//! pod templates under their own ServiceAccounts, the admission server from its Deployment behind
//! its Service and webhook configuration. Every API request each ServiceAccount made is then
//! checked against `coracle_functions::rbac` (what the rendered Roles grant).
//! Skipped, with a message, when kustomize or kubectl is missing (scripts/install-tools.sh).

use anyhow::Context as _;
use coracle_events::{subjects, BackupCompleted, BackupPhase, BackupRequest, RestoreCompleted, RestoreRequest};
use coracle_tests::harness::{tree_digest, write_file, Harness};
use coracle_tests::install::{deploy_dir, install_rendered, tool};
use k8s_openapi::api::core::v1::Pod;
use std::time::Duration;

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Node
metadata: {name: node-1, labels: {kubernetes.io/hostname: node-1}}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pvc-51d0-orders}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: csi-hostpath
  volumeMode: Filesystem
  claimRef: {kind: PersistentVolumeClaim, namespace: shop, name: orders, uid: 51d00000-2222-4222-8222-000000000001}
  csi: {driver: hostpath.csi.k8s.io, volumeHandle: orders}
status: {phase: Bound}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: orders, namespace: shop, uid: 51d00000-2222-4222-8222-000000000001}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
  storageClassName: csi-hostpath
  volumeMode: Filesystem
  volumeName: pvc-51d0-orders
status: {phase: Bound, accessModes: [ReadWriteOnce], capacity: {storage: 1Gi}}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: shop
  uid: 51d00000-5555-4555-8555-000000000001
  labels: {app: web}
  annotations: {coracle.dev/backup-volumes: "orders,cache"}
spec:
  nodeName: node-1
  containers:
  - name: web
    image: nginx:1.27
    volumeMounts:
    - {name: orders, mountPath: /data}
    - {name: cache, mountPath: /cache}
  volumes:
  - name: orders
    persistentVolumeClaim: {claimName: orders}
  - name: cache
    emptyDir: {}
status: {phase: Running}
"#;
const WEB_UID: &str = "51d00000-5555-4555-8555-000000000001";
const PV: &str = "pvc-51d0-orders";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_installation_backs_up_and_restores() -> anyhow::Result<()> {
    if tool("kustomize").is_none() || tool("kubectl").is_none() {
        eprintln!("skipping: kustomize or kubectl is not installed (run scripts/install-tools.sh)");
        return Ok(());
    }
    let mut h = Harness::start("deploy-install", CLUSTER, &["node-1"]).await?;
    let install = install_rendered(&mut h, &deploy_dir().join("overlays/cronjob-drain")).await?;
    let ns = install.namespace.clone();
    assert_eq!(ns, "coracle-system");

    // What the one-shot Jobs left: a random master key (64 hex characters, immutable), the webhook
    // certificate, and its CA in both webhook configurations.
    assert_eq!(h.master_key.len(), 64, "a generated key");
    assert!(h.master_key.chars().all(|c| c.is_ascii_hexdigit()));
    let store = h.sim.store();
    let key_secret = store.get("secrets", &ns, "coracle-master-key")?.context("master key Secret")?;
    assert_eq!(key_secret["immutable"], true);
    let tls = store.get("secrets", &ns, "coracle-webhook-tls")?.context("webhook TLS Secret")?;
    let ca = tls["data"]["ca.crt"].as_str().context("ca.crt")?.to_string();
    for (plural, name) in
        [("mutatingwebhookconfigurations", "coracle-restore"), ("validatingwebhookconfigurations", "coracle-workloads")]
    {
        let config = store.get(plural, "", name)?.with_context(|| name.to_string())?;
        assert_eq!(config["webhooks"][0]["clientConfig"]["caBundle"], ca.as_str(), "{name} trusts the new CA");
    }
    // Running setup and certgen again changes nothing: the same key, the same certificate.
    for job in ["coracle-setup-master-key", "coracle-certgen"] {
        install.run_job(&h, job)?;
    }
    let again = store.get("secrets", &ns, "coracle-webhook-tls")?.context("TLS Secret")?;
    assert_eq!(again["data"], tls["data"], "certgen keeps a valid certificate");
    let key_again = store.get("secrets", &ns, "coracle-master-key")?.context("key")?;
    assert_eq!(key_again["data"], key_secret["data"]);

    // Data to back up.
    h.wait_running("shop", "web-0").await?;
    let orders = h.pv_data_dir(PV)?;
    let cache = h.volume_dir("node-1", WEB_UID, "kubernetes.io~empty-dir", "cache")?;
    for i in 0..20 {
        write_file(&orders.join(format!("2026/order-{i}.json")), format!("{{\"n\":{i}}}").repeat(i + 1).as_bytes())?;
    }
    write_file(&cache.join("last"), b"warm\n")?;
    let before = (tree_digest(&orders)?, tree_digest(&cache)?);

    // The functions, from the rendered CronJobs' pod templates, each under its ServiceAccount.
    let _functions = ["coracle-plan-backup", "coracle-record-result", "coracle-plan-restore", "coracle-start-restore"]
        .iter()
        .map(|f| install.spawn_function(&h, f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    h.request(
        BackupRequest { name: "shop-1".into(), included_namespaces: vec!["shop".into()], ..Default::default() },
        "shop-1",
    )
    .await?;
    let done: BackupCompleted = h.wait_event(subjects::BACKUP_COMPLETED, Duration::from_secs(120)).await?;
    assert_eq!((done.phase, done.volumes), (BackupPhase::Completed, 2), "{done:?}");
    assert_eq!(h.snapshots("shop")?.len(), 2, "snapshots under the generated key's namespace password");
    // The backup Jobs run under the ServiceAccount without API access, and mount no token.
    let jobs = h.jobs()?;
    assert!(!jobs.is_empty());
    for job in &jobs {
        let spec = job.spec.as_ref().and_then(|s| s.template.spec.as_ref()).context("job pod spec")?;
        assert_eq!(spec.service_account_name.as_deref(), Some("coracle-volume-job"));
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert!(!serde_json::to_string(job)?.contains(&h.master_key), "no key in a Job spec");
    }

    // Lose the data and the pod; restore through the rendered webhook (with certgen's CA).
    let pods: kube::Api<Pod> = kube::Api::namespaced(h.sim.client()?, "shop");
    let web = pods.get("web-0").await?;
    pods.delete("web-0", &Default::default()).await?;
    std::fs::remove_dir_all(&orders)?;
    std::fs::create_dir_all(&orders)?;
    let restore = RestoreRequest {
        name: "shop-1-restore".into(),
        backup: "shop-1".into(),
        included_namespaces: vec!["shop".into()],
        ..Default::default()
    };
    h.request_restore(restore, "shop-1-restore").await?;
    h.wait_event::<coracle_events::RestorePlanned>(subjects::RESTORE_PLANNED, Duration::from_secs(60)).await?;
    let labels = store.get("namespaces", "", "shop")?.context("shop")?["metadata"]["labels"].clone();
    assert_eq!(labels["coracle.dev/restore"], "enabled", "plan-restore labelled the namespace for the webhook");
    let recreated = h.recreate_pod(&web, None).await?;
    let inits = recreated.spec.as_ref().and_then(|s| s.init_containers.clone()).unwrap_or_default();
    assert_eq!(inits.first().map(|c| c.name.as_str()), Some("coracle-restore-wait"), "the webhook injected the helper");
    let restored: RestoreCompleted = h.wait_event(subjects::RESTORE_COMPLETED, Duration::from_secs(120)).await?;
    assert_eq!((restored.phase, restored.volumes_completed), (BackupPhase::Completed, 2), "{restored:?}");
    h.wait_running("shop", "web-0").await?;
    let new_uid = pods.get("web-0").await?.metadata.uid.context("uid")?;
    let new_cache = h.volume_dir("node-1", &new_uid, "kubernetes.io~empty-dir", "cache")?;
    assert_eq!((tree_digest(&orders)?, tree_digest(&new_cache)?), before, "every file back, with mode and mtime");

    // A tick as the base's CronJob publishes it, drained by schedule-tick and maintenance as
    // their CronJobs run them; one sweep.
    install.run_cronjob(&h, "coracle-tick")?;
    for cronjob in ["coracle-schedule-tick", "coracle-maintenance", "coracle-sweep"] {
        install.run_cronjob(&h, cronjob)?;
    }

    // Least privilege held: every request of every ServiceAccount is one its rules grant.
    let requests = h.sim.requests();
    let denied = install.audit(&requests);
    assert!(denied.is_empty(), "requests the rendered RBAC would refuse:\n{}", denied.join("\n"));
    let callers = install.callers(&requests);
    for sa in
        ["coracle-setup", "coracle-certgen", "coracle-plan-backup", "coracle-plan-restore", "coracle-start-restore"]
    {
        assert!(callers.contains(sa), "{sa} made API requests (audited): {callers:?}");
    }
    assert!(!callers.contains("coracle-record-result"), "record-result has no token");
    assert!(!callers.contains("coracle-tick"), "the tick has no token");
    assert!(!callers.contains("coracle-volume-job"), "the Jobs have no token");
    Ok(())
}

/// `coracle certgen` against the API: it fails (so its Job retries) until the restore webhook
/// exists, then issues; a rerun keeps a valid certificate; one near expiry is renewed with the
/// previous CA still in the caBundle.
#[test]
fn certgen_waits_for_the_webhook_keeps_a_valid_certificate_and_renews_an_old_one() -> anyhow::Result<()> {
    use coracle_tests::sim::SimServer;
    let sim = SimServer::start_blocking("apiVersion: v1\nkind: Namespace\nmetadata: {name: coracle-system}\n")?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig)?;
    let certgen = || -> anyhow::Result<std::process::Output> {
        Ok(std::process::Command::new(coracle_tests::binaries::workspace_bin("coracle")?)
            .arg("certgen")
            .env("KUBECONFIG", &kubeconfig)
            .output()?)
    };
    let first = certgen()?;
    assert!(!first.status.success(), "no webhook yet");
    assert!(String::from_utf8_lossy(&first.stderr).contains("coracle-restore"), "{first:?}");

    let webhook = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "coracle-restore"},
        "webhooks": [{"name": "restore.coracle.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "clientConfig": {"service": {"namespace": "coracle-system", "name": "coracle", "path": "/admission/pods"}}}]
    });
    sim.store().put(webhook)?;
    let issued = certgen()?;
    assert!(issued.status.success(), "{issued:?}");
    // The failed first run already wrote the Secret; this one keeps it and writes the caBundle.
    assert!(
        String::from_utf8_lossy(&issued.stdout).contains("caBundle written to [\"coracle-restore\"]"),
        "{issued:?}"
    );
    let store = sim.store();
    let secret = store.get("secrets", "coracle-system", "coracle-webhook-tls")?.context("Secret")?;
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let bundle = |s: &serde_json::Value| s["data"]["ca.crt"].as_str().unwrap_or_default().to_string();
    let hook_bundle = || -> anyhow::Result<String> {
        let config = store.get("mutatingwebhookconfigurations", "", "coracle-restore")?.context("webhook")?;
        Ok(config["webhooks"][0]["clientConfig"]["caBundle"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(hook_bundle()?, bundle(&secret));

    let kept = certgen()?;
    assert!(String::from_utf8_lossy(&kept.stdout).contains("kept the valid certificate"), "{kept:?}");
    assert_eq!(
        store.get("secrets", "coracle-system", "coracle-webhook-tls")?.context("Secret")?["data"],
        secret["data"]
    );

    // Ten days left: renewed, and the caBundle trusts both the new and the previous CA.
    let soon = (chrono::Utc::now() + chrono::Duration::days(10)).to_rfc3339();
    let mut old = secret.clone();
    old["metadata"]["annotations"]["coracle.dev/not-after"] = serde_json::Value::String(soon);
    store.put(old)?;
    let renewed = certgen()?;
    assert!(String::from_utf8_lossy(&renewed.stdout).contains("issued a new certificate"), "{renewed:?}");
    let after = store.get("secrets", "coracle-system", "coracle-webhook-tls")?.context("Secret")?;
    assert_ne!(after["data"]["tls.crt"], secret["data"]["tls.crt"]);
    let pem = String::from_utf8(base64::Engine::decode(&base64::engine::general_purpose::STANDARD, bundle(&after))?)?;
    let previous =
        String::from_utf8(base64::Engine::decode(&base64::engine::general_purpose::STANDARD, bundle(&secret))?)?;
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2, "new CA and previous CA");
    assert!(pem.contains(previous.trim()), "the previous CA is still trusted");
    assert_eq!(hook_bundle()?, bundle(&after));
    Ok(())
}
