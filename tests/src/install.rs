//! Installing Coracle from the rendered manifests in `deploy/`, as an operator would, into a
//! [`Harness`]: `kustomize build` of an overlay plus the operator's own patch (NATS URL and
//! repository prefix), `kubectl apply` of everything into the simulated API server, and then what
//! the cluster would run, run from the rendered objects themselves: the one-shot Jobs
//! (`setup master-key`, `setup nats`, `certgen`), the admission server Deployment behind its
//! Service, and the functions' CronJobs. Each runs the workspace's `coracle` binary with the
//! container's own args and env (fieldRef, configMapKeyRef, secretKeyRef and envFrom resolved
//! through the API), its secret volumes written out as files, and — only when the pod spec
//! mounts a token — a kubeconfig whose bearer token names the pod's ServiceAccount, so
//! [`Installation::audit`] can check every request each ServiceAccount made against
//! `coracle_functions::rbac`.
//!
//! Where it differs from a cluster: the one-shot Jobs, the Deployment and the CronJobs run as
//! host processes rather than pods (the simulated API server speaks plain HTTP, so no in-cluster
//! client could reach it); the backup and restore Jobs the functions create run in the simulated
//! kubelets as in every other end-to-end test.

use crate::binaries::workspace_bin;
use crate::harness::{ChildGuard, Harness};
use crate::nats::{tools_bin, tools_path};
use crate::sim::RecordedRequest;
use anyhow::{bail, Context as _};
use base64::Engine as _;
use coracle_functions::rbac::{self, Access};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `<workspace>/deploy`.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// A tool from `.tools/bin` (scripts/install-tools.sh), else from `PATH`.
pub fn tool(name: &str) -> Option<PathBuf> {
    let local = tools_bin().join(name);
    if local.exists() {
        return Some(local);
    }
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()))
}

/// `kustomize build DIR`, as objects.
pub fn kustomize_build(dir: &Path) -> anyhow::Result<Vec<Value>> {
    let kustomize = tool("kustomize").context("kustomize is not installed (run scripts/install-tools.sh)")?;
    let out = Command::new(&kustomize).arg("build").arg(dir).output().context("running kustomize")?;
    if !out.status.success() {
        bail!("kustomize build {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    }
    parse_documents(&String::from_utf8_lossy(&out.stdout))
}

/// The objects of a multi-document YAML stream (empty documents skipped).
pub fn parse_documents(yaml: &str) -> anyhow::Result<Vec<Value>> {
    let mut objects = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value: Value = serde::Deserialize::deserialize(doc).context("parsing rendered YAML")?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

/// Objects as one multi-document YAML stream.
pub fn to_yaml(objects: &[Value]) -> anyhow::Result<String> {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(o)?);
    }
    Ok(out)
}

/// The object of a kind and name.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects.iter().find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

/// The bearer token standing for a ServiceAccount in the simulation.
pub fn service_account_token(namespace: &str, service_account: &str) -> String {
    format!("system:serviceaccount:{namespace}:{service_account}")
}

/// An installation made by [`install_rendered`].
pub struct Installation {
    /// What was rendered (and applied, Jobs included).
    pub objects: Vec<Value>,
    pub namespace: String,
    dir: PathBuf,
    sim_url: String,
    /// `coracle serve`, from the rendered Deployment; stops when the installation drops.
    pub server: Option<ChildGuard>,
}

/// Renders `overlay` (a directory under `deploy/`) with the operator's patch for this harness,
/// applies it with kubectl, runs its one-shot Jobs, and starts the admission server. The harness's
/// `master_key` becomes the key `coracle setup master-key` generated (or found).
pub async fn install_rendered(h: &mut Harness, overlay: &Path) -> anyhow::Result<Installation> {
    let dir = h.tmp.path().join("install");
    std::fs::create_dir_all(&dir)?;
    // The operator's own kustomization on top of Coracle's: the two settings every installation sets.
    // kustomize takes only relative paths to other kustomizations.
    let overlay = std::fs::canonicalize(overlay).with_context(|| format!("{}", overlay.display()))?;
    let overlay = relative(&std::fs::canonicalize(&dir)?, &overlay);
    let kustomization = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- {}\npatches:\n\
         - target: {{kind: ConfigMap, name: coracle-config}}\n  patch: |-\n    - op: replace\n      path: /data/natsUrl\n      value: {}\n\
         \x20   - op: replace\n      path: /data/repositoryPrefix\n      value: {}\n",
        overlay.display(),
        h.nats.url(),
        h.repos.display()
    );
    std::fs::write(dir.join("kustomization.yaml"), kustomization)?;
    let objects = kustomize_build(&dir)?;
    let namespace = objects
        .iter()
        .find(|o| o["kind"] == "Namespace")
        .and_then(|o| o["metadata"]["name"].as_str())
        .context("the rendered installation has no Namespace")?
        .to_string();
    // Jobs are not applied: the simulated kubelets would run them as pods, which cannot reach the
    // plain-HTTP API server in-cluster; they run below as host processes instead.
    let applied: Vec<Value> = objects.iter().filter(|o| o["kind"] != "Job").cloned().collect();
    let manifest = dir.join("rendered.yaml");
    std::fs::write(&manifest, to_yaml(&applied)?)?;
    let kubectl = tool("kubectl").context("kubectl is not installed (run scripts/install-tools.sh)")?;
    let out = Command::new(&kubectl)
        .env("KUBECONFIG", &h.kubeconfig)
        .args(["apply", "--request-timeout=30s", "-f"])
        .arg(&manifest)
        .output()
        .context("running kubectl apply")?;
    if !out.status.success() {
        bail!("kubectl apply: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    let mut install = Installation { objects, namespace, dir, sim_url: h.sim.url().to_string(), server: None };
    for job in ["coracle-setup-master-key", "coracle-setup-nats", "coracle-certgen"] {
        install.run_job(h, job).with_context(|| format!("Job {job}"))?;
    }
    let secret = h.sim.store().get("secrets", &install.namespace, rbac::MASTER_KEY_SECRET)?;
    let key = secret.as_ref().and_then(|s| s["data"]["key"].as_str()).context("no master key Secret")?;
    h.master_key = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(key)?)?;
    install.server = Some(install.start_server(h).await?);
    Ok(install)
}

impl Installation {
    /// The kubeconfig a pod of `service_account` gets: the simulation with that account's token.
    pub fn kubeconfig(&self, service_account: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(format!("kubeconfig-{service_account}"));
        if !path.exists() {
            let token = service_account_token(&self.namespace, service_account);
            let text = format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: {url}\n\
                 users:\n- name: {service_account}\n  user:\n    token: \"{token}\"\ncontexts:\n- name: sim\n  context:\n    \
                 cluster: sim\n    user: {service_account}\n    namespace: {ns}\ncurrent-context: sim\n",
                url = self.sim_url,
                ns = self.namespace
            );
            std::fs::write(&path, text)?;
        }
        Ok(path)
    }

    /// The pod template of a rendered Job, CronJob or Deployment.
    pub fn pod_template(&self, kind: &str, name: &str) -> anyhow::Result<&Value> {
        let o = find(&self.objects, kind, name).with_context(|| format!("no {kind} {name} was rendered"))?;
        let template = match kind {
            "CronJob" => &o["spec"]["jobTemplate"]["spec"]["template"],
            _ => &o["spec"]["template"],
        };
        if template.is_null() {
            bail!("{kind} {name} has no pod template");
        }
        Ok(template)
    }

    /// The host process a pod template's first container stands for (see the module comment).
    pub fn command(&self, h: &Harness, template: &Value, name: &str) -> anyhow::Result<Command> {
        let spec = &template["spec"];
        let container = &spec["containers"][0];
        let image = container["image"].as_str().context("container without image")?;
        let short = image.rsplit('/').next().unwrap_or(image).split(['@', ':']).next().unwrap_or(image);
        if !container["command"].is_null() {
            bail!("{name}: a command override is not expected in Coracle's own pods");
        }
        let mut cmd = Command::new(workspace_bin(short)?);
        let mounts = self.mount_volumes(h, spec, container, name)?;
        let args: Vec<String> = container["args"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).map(|s| rewrite_path(s, &mounts)).collect())
            .unwrap_or_default();
        cmd.args(&args).env_clear().env("PATH", tools_path()).env("HOME", &self.dir);
        for (k, v) in self.environment(h, container)? {
            cmd.env(k, v);
        }
        // Only a pod that mounts a token can reach the API; the others get a kubeconfig that does not exist.
        let sa = spec["serviceAccountName"].as_str().unwrap_or("default");
        if spec["automountServiceAccountToken"] == Value::Bool(true) {
            cmd.env("KUBECONFIG", self.kubeconfig(sa)?);
        } else {
            cmd.env("KUBECONFIG", self.dir.join("no-token"));
        }
        Ok(cmd)
    }

    fn environment(&self, h: &Harness, container: &Value) -> anyhow::Result<Vec<(String, String)>> {
        let store = h.sim.store();
        let data = |plural: &str, name: &str| -> anyhow::Result<Option<BTreeMap<String, String>>> {
            let Some(o) = store.get(plural, &self.namespace, name)? else { return Ok(None) };
            let decode = plural == "secrets";
            let map = o["data"].as_object().cloned().unwrap_or_default();
            let mut out = BTreeMap::new();
            for (k, v) in map {
                let text = v.as_str().unwrap_or_default();
                let value = if decode {
                    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(text)?)?
                } else {
                    text.to_string()
                };
                out.insert(k, value);
            }
            Ok(Some(out))
        };
        let mut env = Vec::new();
        for from in container["envFrom"].as_array().into_iter().flatten() {
            let r = &from["secretRef"];
            let name = r["name"].as_str().context("envFrom without secretRef name")?;
            match data("secrets", name)? {
                Some(map) => env.extend(map),
                None if r["optional"] == Value::Bool(true) => {}
                None => bail!("Secret {name} is missing"),
            }
        }
        for var in container["env"].as_array().into_iter().flatten() {
            let name = var["name"].as_str().context("env without name")?.to_string();
            let from = &var["valueFrom"];
            let value = if let Some(v) = var["value"].as_str() {
                Some(v.to_string())
            } else if let Some(path) = from["fieldRef"]["fieldPath"].as_str() {
                match path {
                    "metadata.namespace" => Some(self.namespace.clone()),
                    other => bail!("{name}: fieldRef {other} is not emulated"),
                }
            } else {
                let (plural, r) = if from["configMapKeyRef"].is_object() {
                    ("configmaps", &from["configMapKeyRef"])
                } else {
                    ("secrets", &from["secretKeyRef"])
                };
                let object = r["name"].as_str().context("key reference without name")?;
                let key = r["key"].as_str().context("key reference without key")?;
                let found = data(plural, object)?.and_then(|m| m.get(key).cloned());
                if found.is_none() && r["optional"] != Value::Bool(true) {
                    bail!("{name}: {plural} {object} has no key {key}");
                }
                found
            };
            if let Some(v) = value {
                env.push((name, v));
            }
        }
        Ok(env)
    }

    /// Secret volumes as files in a directory per pod; returns (mountPath, host directory).
    fn mount_volumes(
        &self,
        h: &Harness,
        spec: &Value,
        container: &Value,
        name: &str,
    ) -> anyhow::Result<Vec<(String, PathBuf)>> {
        let mut mounts = Vec::new();
        for m in container["volumeMounts"].as_array().into_iter().flatten() {
            let volume_name = m["name"].as_str().unwrap_or_default();
            let mount_path = m["mountPath"].as_str().unwrap_or_default().to_string();
            let volume = spec["volumes"]
                .as_array()
                .and_then(|v| v.iter().find(|v| v["name"] == volume_name))
                .with_context(|| format!("{name}: volume {volume_name} is not declared"))?;
            let Some(secret) = volume["secret"]["secretName"].as_str() else { continue };
            let dir = self.dir.join("volumes").join(name).join(volume_name);
            std::fs::create_dir_all(&dir)?;
            let object = h
                .sim
                .store()
                .get("secrets", &self.namespace, secret)?
                .with_context(|| format!("{name}: Secret {secret} does not exist"))?;
            for (k, v) in object["data"].as_object().cloned().unwrap_or_default() {
                let bytes = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default())?;
                std::fs::write(dir.join(k), bytes)?;
            }
            mounts.push((mount_path, dir));
        }
        Ok(mounts)
    }

    /// Runs a rendered Job's pod once to completion; its standard output.
    pub fn run_job(&self, h: &Harness, name: &str) -> anyhow::Result<String> {
        let template = self.pod_template("Job", name)?;
        run_to_end(self.command(h, template, name)?, name)
    }

    /// Runs one firing of a rendered CronJob to completion (e.g. `coracle-plan-backup` drains
    /// plan-backup's consumer once); its standard output.
    pub fn run_cronjob(&self, h: &Harness, name: &str) -> anyhow::Result<String> {
        let template = self.pod_template("CronJob", name)?;
        run_to_end(self.command(h, template, name)?, name)
    }

    /// A rendered function CronJob's container as a long-running consumer (its args without
    /// `--drain`), for demos that keep functions running; stopped when the guard drops.
    pub fn spawn_function(&self, h: &Harness, cronjob: &str) -> anyhow::Result<ChildGuard> {
        let mut template = self.pod_template("CronJob", cronjob)?.clone();
        if let Some(args) = template["spec"]["containers"][0]["args"].as_array_mut() {
            args.retain(|a| a != "--drain");
        }
        let mut cmd = self.command(h, &template, cronjob)?;
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        crate::process::die_with_parent(&mut cmd);
        Ok(ChildGuard(cmd.spawn().with_context(|| format!("starting {cronjob}"))?))
    }

    /// `coracle serve` from the rendered Deployment, reached through the rendered Service.
    async fn start_server(&self, h: &Harness) -> anyhow::Result<ChildGuard> {
        let mut template = self.pod_template("Deployment", "coracle-serve")?.clone();
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let container = &mut template["spec"]["containers"][0];
        let container_port = container["ports"][0]["containerPort"].as_u64().context("serve has no port")?;
        if let Some(args) = container["args"].as_array_mut() {
            let at = args.iter().position(|a| a == "--listen").context("serve has no --listen")?;
            let listen = args.get(at + 1).and_then(Value::as_str).unwrap_or_default().to_string();
            if !listen.ends_with(&format!(":{container_port}")) {
                bail!("serve listens on {listen}, its containerPort is {container_port}");
            }
            args[at + 1] = Value::String(format!("127.0.0.1:{port}"));
        }
        let cmd = self.command(h, &template, "coracle-serve")?;
        let guard = crate::process::spawn_listening(cmd, port, "coracle serve").await?;
        let service = find(&self.objects, "Service", "coracle").context("no Service coracle")?;
        let service_port = service["spec"]["ports"][0]["port"].as_u64().context("Service without port")?;
        let service_port = u16::try_from(service_port)?;
        h.sim.set_service_endpoint(&self.namespace, "coracle", service_port, format!("https://127.0.0.1:{port}"));
        Ok(guard)
    }

    /// Every request a Coracle ServiceAccount made that its rules in `coracle_functions::rbac`
    /// do not grant (discovery and version requests excepted, as RBAC's `system:discovery` does).
    pub fn audit(&self, requests: &[RecordedRequest]) -> Vec<String> {
        let prefix = format!("system:serviceaccount:{}:", self.namespace);
        let mut denied = Vec::new();
        for r in requests {
            let Some(sa) = r.user.as_deref().and_then(|u| u.strip_prefix(&prefix)) else { continue };
            let Some(access) = access_of(r) else { continue };
            match rbac::component(sa) {
                Some(c) if c.allows(&access, &self.namespace) => {}
                Some(_) => denied.push(format!("{sa}: {r} ({access:?})")),
                None => denied.push(format!("{sa} is not a Coracle ServiceAccount: {r}")),
            }
        }
        denied
    }

    /// The ServiceAccounts that made at least one resource request.
    pub fn callers(&self, requests: &[RecordedRequest]) -> std::collections::BTreeSet<String> {
        let prefix = format!("system:serviceaccount:{}:", self.namespace);
        requests
            .iter()
            .filter(|r| access_of(r).is_some())
            .filter_map(|r| r.user.as_deref().and_then(|u| u.strip_prefix(&prefix)).map(str::to_string))
            .collect()
    }
}

fn run_to_end(mut cmd: Command, name: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {name}"))?;
    if !out.status.success() {
        bail!("{name} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `to` relative to the directory `from` (both absolute and canonical).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let (f, t): (Vec<_>, Vec<_>) = (from.components().collect(), to.components().collect());
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    out
}

/// A path under a mount point, rewritten to the host directory standing for it.
fn rewrite_path(arg: &str, mounts: &[(String, PathBuf)]) -> String {
    for (mount, dir) in mounts {
        if let Some(rest) = arg.strip_prefix(&format!("{}/", mount.trim_end_matches('/'))) {
            return dir.join(rest).display().to_string();
        }
    }
    arg.to_string()
}

/// The authorization attributes of a resource request; None for discovery (`/api`, `/apis`,
/// `/version`, `/openapi`).
pub fn access_of(r: &RecordedRequest) -> Option<Access<'_>> {
    let segments: Vec<&str> = r.path.trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        // `/api/v1/namespaces/NAME` is the namespace object itself.
        ["namespaces", ns, plural, tail @ ..] => (Some(*ns), [&[*plural][..], tail].concat()),
        other => (None, other.to_vec()),
    };
    let (resource, name) = match rest.as_slice() {
        [] => return None,
        [plural] => (*plural, None),
        [plural, name, ..] => (*plural, Some(*name)),
    };
    let verb = match (r.method.as_str(), name) {
        ("GET", _) if r.is_watch() => "watch",
        ("GET", Some(_)) => "get",
        ("GET", None) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", Some(_)) => "delete",
        ("DELETE", None) => "deletecollection",
        _ => return None,
    };
    Some(Access { verb, group, resource, namespace, name })
}
