//! `kubectl` against the simulated API server. Skipped (with a message) when /usr/bin/kubectl is missing.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use coracle_tests::process::{pid_alive, wait_with_timeout};
use coracle_tests::sim::SimServer;
use serde_json::Value;

const KUBECTL: &str = "/usr/bin/kubectl";
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);

const FIXTURES: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, labels: {app: web}}
spec: {nodeName: node-1, containers: [{name: app, image: nginx}]}
status: {phase: Running}
---
apiVersion: v1
kind: Pod
metadata: {name: api-0, namespace: backend, labels: {app: api}}
spec: {nodeName: node-2, containers: [{name: app, image: api}]}
status: {phase: Running}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data, namespace: shop, uid: 0d4c1b7e-2f3a-4b5c-8d9e-1f2a3b4c5d6e}
spec: {volumeName: pv-data, storageClassName: standard, accessModes: [ReadWriteOnce]}
status: {phase: Bound, capacity: {storage: 1Gi}}
"#;

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: app
        image: nginx:1.25
        env: [{name: MODE, value: prod}]
      - name: sidecar
        image: busybox:1.36
"#;

struct Cluster {
    sim: SimServer,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

/// The simulation with the fixtures and a kubeconfig, or `None` when kubectl is not installed.
fn cluster() -> Result<Option<Cluster>> {
    if !Path::new(KUBECTL).exists() {
        eprintln!("skipping: {KUBECTL} is not installed");
        return Ok(None);
    }
    let sim = SimServer::start_blocking(FIXTURES)?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig)?;
    Ok(Some(Cluster { sim, dir, kubeconfig }))
}

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Cluster {
    /// Runs kubectl to completion; a kubectl still running after the timeout is killed by pid.
    fn kubectl(&self, args: &[&str]) -> Result<Output> {
        let out_path = self.dir.path().join("stdout");
        let err_path = self.dir.path().join("stderr");
        let mut child = Command::new(KUBECTL)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path)?)
            .stderr(std::fs::File::create(&err_path)?)
            .spawn()
            .context("starting kubectl")?;
        let status = wait_with_timeout(&mut child, KUBECTL_TIMEOUT).with_context(|| format!("kubectl {args:?}"))?;
        Ok(Output {
            code: status.code(),
            stdout: std::fs::read_to_string(out_path)?,
            stderr: std::fs::read_to_string(err_path)?,
        })
    }

    /// Runs kubectl and requires success.
    fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl(args)?;
        if out.code != Some(0) {
            bail!("kubectl {args:?} exited {:?}: {}{}", out.code, out.stdout, out.stderr);
        }
        Ok(out.stdout)
    }
}

#[test]
fn get_pods_in_all_namespaces() -> Result<()> {
    let Some(c) = cluster()? else { return Ok(()) };
    let table = c.ok(&["get", "pods", "-A"])?;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].split_whitespace().eq(["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]), "{table}");
    assert!(lines[1].starts_with("backend") && lines[1].contains("api-0") && lines[1].contains("Running"), "{table}");
    assert!(lines[2].starts_with("shop") && lines[2].contains("web-0"), "{table}");

    let json: Value = serde_json::from_str(&c.ok(&["get", "po", "-A", "-l", "app in (web,db)", "-o", "json"])?)?;
    let names: Vec<&str> =
        json["items"].as_array().into_iter().flatten().filter_map(|p| p["metadata"]["name"].as_str()).collect();
    assert_eq!(names, ["web-0"]);
    let wide = c.ok(&["get", "pods", "-n", "shop", "-o", "wide", "--field-selector", "spec.nodeName=node-1"])?;
    assert!(
        wide.lines()
            .next()
            .is_some_and(|h| h.split_whitespace().eq(["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"])),
        "{wide}"
    );
    Ok(())
}

#[test]
fn get_pvc_as_json() -> Result<()> {
    let Some(c) = cluster()? else { return Ok(()) };
    let json: Value = serde_json::from_str(&c.ok(&["get", "pvc", "-n", "shop", "-o", "json"])?)?;
    assert_eq!(json["kind"], "List");
    let items = json["items"].as_array().context("items")?;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["metadata"]["uid"], "0d4c1b7e-2f3a-4b5c-8d9e-1f2a3b4c5d6e");
    assert_eq!(items[0]["spec"]["volumeName"], "pv-data");
    let one: Value =
        serde_json::from_str(&c.ok(&["get", "persistentvolumeclaim", "data", "-n", "shop", "-o", "json"])?)?;
    assert_eq!(one["kind"], "PersistentVolumeClaim");
    assert!(c.ok(&["get", "pvc", "-n", "shop"])?.contains("Bound"));
    Ok(())
}

#[test]
fn apply_deployment_create_configure_unchanged() -> Result<()> {
    let Some(c) = cluster()? else { return Ok(()) };
    let manifest = c.dir.path().join("deploy.yaml");
    std::fs::write(&manifest, DEPLOYMENT)?;
    let file = manifest.to_str().context("utf-8 path")?;
    assert!(c.ok(&["apply", "-f", file])?.contains("deployment.apps/web created"));
    let created = c.sim.store().get("deployments", "shop", "web")?.context("created")?;
    assert!(created["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"].is_string());

    // Change the image and replicas, drop the sidecar: a strategic merge patch with a `$patch: delete`.
    let changed = DEPLOYMENT.replace("nginx:1.25", "nginx:1.27").replace("replicas: 2", "replicas: 3");
    let changed = changed.replace("      - name: sidecar\n        image: busybox:1.36\n", "");
    std::fs::write(&manifest, changed)?;
    c.sim.clear_requests();
    assert!(c.ok(&["apply", "-f", file])?.contains("deployment.apps/web configured"));
    let patches: Vec<_> = c.sim.requests().into_iter().filter(|r| r.method == "PATCH").collect();
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert_eq!(patches[0].path, "/apis/apps/v1/namespaces/shop/deployments/web");

    let web = c.sim.store().get("deployments", "shop", "web")?.context("still there")?;
    assert_eq!(web["spec"]["replicas"], 3);
    let containers = web["spec"]["template"]["spec"]["containers"].as_array().context("containers")?;
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_eq!(containers[0]["image"], "nginx:1.27");
    assert_eq!(containers[0]["env"][0]["value"], "prod");
    assert_eq!(web["metadata"]["generation"], 2);
    assert_eq!(web["metadata"]["uid"], created["metadata"]["uid"]);

    assert!(c.ok(&["apply", "-f", file])?.contains("deployment.apps/web unchanged"));
    assert!(c.ok(&["get", "deploy", "-n", "shop"])?.contains("0/3"));
    Ok(())
}

#[test]
fn delete_label_and_patch_pods() -> Result<()> {
    let Some(c) = cluster()? else { return Ok(()) };
    assert!(c.ok(&["label", "pod", "web-0", "-n", "shop", "tier=front"])?.contains("labeled"));
    c.ok(&[
        "patch",
        "pod",
        "web-0",
        "-n",
        "shop",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/metadata/annotations","value":{"a":"b"}}]"#,
    ])?;
    let pod = c.sim.store().get("pods", "shop", "web-0")?.context("pod")?;
    assert_eq!(pod["metadata"]["labels"]["tier"], "front");
    assert_eq!(pod["metadata"]["annotations"]["a"], "b");

    assert!(c.ok(&["delete", "pod", "web-0", "-n", "shop"])?.contains("pod \"web-0\" deleted"));
    assert!(c.sim.store().get("pods", "shop", "web-0")?.is_none());
    let missing = c.kubectl(&["get", "pod", "web-0", "-n", "shop"])?;
    assert_eq!(missing.code, Some(1));
    assert!(missing.stderr.contains("Error from server (NotFound): pods \"web-0\" not found"), "{}", missing.stderr);
    Ok(())
}

#[test]
fn get_watch_streams_events_until_killed() -> Result<()> {
    let Some(c) = cluster()? else { return Ok(()) };
    let mut child = Command::new(KUBECTL)
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(["get", "pods", "-n", "shop", "-w", "--output-watch-events"])
        .env("HOME", c.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting kubectl get -w")?;
    let pid = child.id();
    let stdout = child.stdout.take().context("stdout")?;
    let (lines_tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_line = || lines.recv_timeout(Duration::from_secs(20)).context("no watch output");
    let result = (|| -> Result<()> {
        assert!(next_line()?.starts_with("EVENT"));
        assert!(next_line()?.split_whitespace().take(2).eq(["ADDED", "web-0"]));
        c.sim.store().put(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop"},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]},
        }))?;
        let added = next_line()?;
        assert!(added.split_whitespace().take(3).eq(["ADDED", "web-1", "0/1"]), "{added}");
        c.sim.store().delete("pods", "shop", "web-1")?;
        assert!(next_line()?.split_whitespace().take(2).eq(["DELETED", "web-1"]));
        Ok(())
    })();
    child.kill()?;
    child.wait()?;
    let _ = reader.join();
    assert!(!pid_alive(pid), "kubectl {pid} stopped");
    result
}

#[test]
fn wait_for_a_job_to_complete() -> Result<()> {
    let Some(c) = cluster()? else { return Ok(()) };
    c.sim.store().put(serde_json::json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "backup-1", "namespace": "shop"},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "restic"}]}}},
    }))?;
    let mut waiter = Command::new(KUBECTL)
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(["wait", "--for=condition=complete", "job/backup-1", "-n", "shop", "--timeout=30s"])
        .env("HOME", c.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    // What the Job controller would do when the pods succeed.
    c.sim.store().modify("jobs", "shop", "backup-1", |job| {
        job["status"] = serde_json::json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]});
    })?;
    let status = wait_with_timeout(&mut waiter, KUBECTL_TIMEOUT)?;
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut waiter.stdout.take().context("stdout")?, &mut stdout)?;
    assert!(status.success(), "kubectl wait: {status} {stdout}");
    assert!(stdout.contains("job.batch/backup-1 condition met"), "{stdout}");
    assert!(c.ok(&["get", "jobs", "-n", "shop"])?.contains("Complete"));
    Ok(())
}
