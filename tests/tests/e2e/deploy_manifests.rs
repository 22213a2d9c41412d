//! The manifests in `deploy/`: every kustomization builds; every rendered object validates
//! strictly (unknown fields rejected) against the Kubernetes OpenAPI schemas of every supported
//! version (1.33 on, as bundled by kubernetes-validate); the RBAC equals the table in
//! `coracle_functions::rbac`; Coracle's pods meet the `restricted` Pod Security Standard; the
//! functions' runners, webhooks and settings agree with the code; the images named match the
//! Dockerfiles in `job-images/`.
//! Skipped, with a message, when kustomize or kubernetes-validate is missing (scripts/install-tools.sh
//! installs both, so CI runs them).

use anyhow::{bail, Context as _};
use clap::ValueEnum as _;
use coracle_functions::handlers::Function;
use coracle_functions::rbac::{self, Scope, COMPONENTS};
use coracle_functions::settings::Settings;
use coracle_tests::install::{deploy_dir, find, kustomize_build, to_yaml, tool};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Kubernetes versions validated against: every one kubernetes-validate bundles from 1.33 on.
const VERSIONS: &[&str] = &["1.33.0", "1.34.0", "1.35.0", "1.36.0", "1.37.0"];

/// Kinds without a schema in Kubernetes itself (CRDs, OpenShift's API), which overlays may use.
const FOREIGN_KINDS: &[(&str, &str)] = &[
    ("keda.sh/v1alpha1", "ScaledJob"),
    ("cert-manager.io/v1", "Issuer"),
    ("cert-manager.io/v1", "Certificate"),
    ("security.openshift.io/v1", "SecurityContextConstraints"),
];

/// Coracle's images: repository, Dockerfile, OCI title, and the cargo package and binary built.
const IMAGES: &[(&str, &str, &str, &str, &str)] = &[
    ("ghcr.io/coracle-dev/coracle", "Dockerfile.coracle", "coracle", "coracle-functions", "coracle"),
    (
        "ghcr.io/coracle-dev/coracle-volume-job",
        "Dockerfile.volume-job",
        "coracle-volume-job",
        "coracle-volume-job",
        "coracle-volume-job",
    ),
    (
        "ghcr.io/coracle-dev/coracle-restore-wait",
        "Dockerfile.restore-wait",
        "coracle-restore-wait",
        "coracle-restore-wait",
        "coracle-restore-wait",
    ),
];

fn tools_present() -> bool {
    for t in ["kustomize", "kubernetes-validate"] {
        if tool(t).is_none() {
            eprintln!("skipping: {t} is not installed (run scripts/install-tools.sh)");
            return false;
        }
    }
    true
}

/// Every kustomization under deploy/ (the root, base, overlays, examples).
fn kustomizations() -> anyhow::Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        if dir.join("kustomization.yaml").exists() {
            out.push(dir.to_path_buf());
        }
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(&deploy_dir(), &mut out)?;
    out.sort();
    Ok(out)
}

fn rendered() -> anyhow::Result<BTreeMap<String, Vec<Value>>> {
    let root = deploy_dir();
    let mut out = BTreeMap::new();
    for dir in kustomizations()? {
        let name = dir.strip_prefix(&root)?.display().to_string();
        out.insert(if name.is_empty() { ".".into() } else { name }, kustomize_build(&dir)?);
    }
    Ok(out)
}

/// Runs kubernetes-validate --strict over objects; the ERROR lines and the kinds it had no schema for.
/// (apiVersion, kind).
type Kind = (String, String);

fn validate(objects: &[Value], version: &str, dir: &Path) -> anyhow::Result<(Vec<String>, BTreeSet<Kind>)> {
    let file = dir.join(format!("objects-{version}.yaml"));
    std::fs::write(&file, to_yaml(objects)?)?;
    let validator = tool("kubernetes-validate").context("kubernetes-validate")?;
    let out = Command::new(validator)
        .args(["--strict", "--quiet", "-k", version])
        .arg(&file)
        .output()
        .context("running kubernetes-validate")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let errors: Vec<String> = text.lines().filter(|l| l.starts_with("ERROR")).map(str::to_string).collect();
    let mut unknown = BTreeSet::new();
    for line in text.lines().filter(|l| l.contains("Couldn't find schema for kind")) {
        let kind = line.split("for kind ").nth(1).and_then(|r| r.split(' ').next()).unwrap_or_default();
        let api = line.split("api version ").nth(1).and_then(|r| r.split(' ').next()).unwrap_or_default();
        unknown.insert((api.to_string(), kind.to_string()));
    }
    if !out.status.success() && errors.is_empty() {
        bail!("kubernetes-validate failed without an ERROR line:\n{text}");
    }
    Ok((errors, unknown))
}

/// The pod templates of workloads: (where, pod template).
fn pod_templates(objects: &[Value]) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    for o in objects {
        let kind = o["kind"].as_str().unwrap_or_default();
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        let template = match kind {
            "Deployment" | "Job" | "StatefulSet" | "DaemonSet" => &o["spec"]["template"],
            "CronJob" => &o["spec"]["jobTemplate"]["spec"]["template"],
            "ScaledJob" => &o["spec"]["jobTargetRef"]["template"],
            _ => continue,
        };
        out.push((format!("{kind} {name}"), template));
    }
    out
}

fn coracle_image(template: &Value) -> bool {
    template["spec"]["containers"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["image"].as_str().is_some_and(|i| i.starts_with("ghcr.io/coracle-dev/"))))
}

#[test]
fn every_kustomization_builds_and_validates_strictly_for_every_supported_version() -> anyhow::Result<()> {
    if !tools_present() {
        return Ok(());
    }
    let all = rendered()?;
    for expected in
        [".", "base", "overlays/keda", "overlays/cronjob-drain", "overlays/cert-manager", "overlays/examples"]
    {
        assert!(all.contains_key(expected), "deploy/{expected} is missing: {:?}", all.keys());
    }
    for p in ["rancheros", "tkgi", "openshift"] {
        assert!(all.contains_key(&format!("overlays/platforms/{p}")), "platform overlay {p}");
    }
    let mut objects: Vec<Value> = Vec::new();
    for (name, rendered) in &all {
        assert!(!rendered.is_empty(), "deploy/{name} renders nothing");
        objects.extend(rendered.iter().cloned());
        // KEDA's ScaledJob carries a whole JobSpec: validate it as a Job.
        for o in rendered.iter().filter(|o| o["kind"] == "ScaledJob") {
            objects.push(json!({"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": o["metadata"]["name"], "namespace": o["metadata"]["namespace"]},
                "spec": o["spec"]["jobTargetRef"]}));
        }
    }
    // Overlays repeat the base: validate each distinct object once.
    let mut seen = BTreeSet::new();
    objects.retain(|o| seen.insert(o.to_string()));
    let dir = tempfile::tempdir()?;
    // The validator is strict: an unknown field fails (so the checks below can fail).
    let bogus = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "bogus": 1});
    let (errors, _) = validate(&[bogus], VERSIONS[0], dir.path())?;
    assert_eq!(errors.len(), 1, "strict validation rejects unknown fields: {errors:?}");

    let allowed: BTreeSet<Kind> = FOREIGN_KINDS.iter().map(|(a, k)| (a.to_string(), k.to_string())).collect();
    for version in VERSIONS {
        let (errors, unknown) = validate(&objects, version, dir.path())?;
        assert!(errors.is_empty(), "Kubernetes {version}:\n{}", errors.join("\n"));
        let stray: Vec<_> = unknown.difference(&allowed).collect();
        assert!(stray.is_empty(), "kinds without a schema in Kubernetes {version}: {stray:?}");
    }
    Ok(())
}

/// A rule as RBAC renders it: (apiGroups, resources, verbs, resourceNames), each sorted.
type RenderedRule = (Vec<String>, Vec<String>, Vec<String>, Vec<String>);

fn strings(v: &Value) -> Vec<String> {
    let mut out: Vec<String> =
        v.as_array().map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect()).unwrap_or_default();
    out.sort();
    out
}

fn rendered_rules(role: &Value) -> BTreeSet<RenderedRule> {
    role["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (strings(&r["apiGroups"]), strings(&r["resources"]), strings(&r["verbs"]), strings(&r["resourceNames"]))
        })
        .collect()
}

fn table_rules(rules: &[rbac::Rule], scope: Scope) -> BTreeSet<RenderedRule> {
    let s = |v: &[&str]| {
        let mut v: Vec<String> = v.iter().map(|x| x.to_string()).collect();
        v.sort();
        v
    };
    rules
        .iter()
        .filter(|r| r.scope == scope)
        .map(|r| (vec![r.group.to_string()], vec![r.resource.to_string()], s(r.verbs), s(r.names)))
        .collect()
}

#[test]
fn rbac_equals_the_table_in_the_code() -> anyhow::Result<()> {
    if !tools_present() {
        return Ok(());
    }
    let base = kustomize_build(&deploy_dir().join("base"))?;
    let ns = rbac::BASE_NAMESPACE;
    let mut expected_roles = BTreeSet::new();
    for c in COMPONENTS {
        let sa = find(&base, "ServiceAccount", c.service_account).with_context(|| c.service_account)?;
        assert_eq!(sa["automountServiceAccountToken"], false, "{}: no token unless a pod opts in", c.service_account);
        for (scope, kind, binding) in
            [(Scope::System, "Role", "RoleBinding"), (Scope::Cluster, "ClusterRole", "ClusterRoleBinding")]
        {
            let want = table_rules(c.rules, scope);
            let name = rbac::role_name(c);
            let role = find(&base, kind, &name);
            if want.is_empty() {
                assert!(role.is_none(), "{kind} {name} exists but {} needs no such rule", c.name);
                continue;
            }
            let role = role.with_context(|| format!("{kind} {name} for {}", c.name))?;
            assert_eq!(rendered_rules(role), want, "{kind} {name} differs from rbac::COMPONENTS");
            if scope == Scope::System {
                assert_eq!(role["metadata"]["namespace"], ns);
            }
            let b = find(&base, binding, &name).with_context(|| format!("{binding} {name}"))?;
            assert_eq!(b["roleRef"], json!({"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}));
            assert_eq!(b["subjects"], json!([{"kind": "ServiceAccount", "name": c.service_account, "namespace": ns}]));
            expected_roles.insert((kind.to_string(), name));
        }
    }
    let rendered_roles: BTreeSet<(String, String)> = base
        .iter()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
        .map(|o| {
            (
                o["kind"].as_str().unwrap_or_default().to_string(),
                o["metadata"]["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(rendered_roles, expected_roles, "Roles the table does not hold");
    let accounts: BTreeSet<&str> =
        base.iter().filter(|o| o["kind"] == "ServiceAccount").filter_map(|o| o["metadata"]["name"].as_str()).collect();
    assert_eq!(accounts, COMPONENTS.iter().map(|c| c.service_account).collect(), "ServiceAccounts");

    // Overlays keep the base's grants; the only additions are OpenShift SCC `use` grants.
    for (name, objects) in rendered()? {
        for o in objects.iter().filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole") {
            let role_name = o["metadata"]["name"].as_str().unwrap_or_default();
            let kind = o["kind"].as_str().unwrap_or_default();
            if let Some(b) = find(&base, kind, role_name) {
                assert_eq!(rendered_rules(o), rendered_rules(b), "deploy/{name} changes {kind} {role_name}");
            } else {
                assert!(role_name.starts_with("coracle-scc-"), "deploy/{name} adds {kind} {role_name}");
                for (groups, resources, verbs, names) in rendered_rules(o) {
                    assert_eq!(
                        (groups, resources, verbs),
                        (
                            vec!["security.openshift.io".to_string()],
                            vec!["securitycontextconstraints".to_string()],
                            vec!["use".to_string()]
                        )
                    );
                    assert_eq!(names.len(), 1, "one named SCC");
                }
            }
        }
    }
    Ok(())
}

#[test]
fn coracle_pods_are_restricted_and_use_their_own_service_accounts() -> anyhow::Result<()> {
    if !tools_present() {
        return Ok(());
    }
    let all = rendered()?;
    let base = &all["base"];
    let namespace = find(base, "Namespace", rbac::BASE_NAMESPACE).context("namespace")?;
    // The hostPath Jobs need `privileged`; audit and warn stay at `restricted`.
    let labels = &namespace["metadata"]["labels"];
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "privileged");
    assert_eq!(labels["pod-security.kubernetes.io/audit"], "restricted");
    assert_eq!(labels["pod-security.kubernetes.io/warn"], "restricted");
    let mut checked = 0;
    for (overlay, objects) in &all {
        for (what, template) in pod_templates(objects).into_iter().filter(|(_, t)| coracle_image(t)) {
            let spec = &template["spec"];
            let sa =
                spec["serviceAccountName"].as_str().with_context(|| format!("{overlay}: {what}: no ServiceAccount"))?;
            let component =
                rbac::component(sa).with_context(|| format!("{overlay}: {what}: {sa} is not in the table"))?;
            assert_ne!(component.name, "volume-job", "{what}: only Jobs the functions create use the Jobs' account");
            // A token only where the code calls the API (setup nats, record-result, tick: none).
            let token = spec["automountServiceAccountToken"] == Value::Bool(true);
            assert!(!token || !component.rules.is_empty(), "{overlay}: {what}: a token, but {sa} has no API rules");
            assert!(!spec["automountServiceAccountToken"].is_null(), "{overlay}: {what}: set automountServiceAccountToken explicitly (Coracle's ServiceAccounts mount no token by default: a pod that calls the API needs `true`)");
            let psc = &spec["securityContext"];
            assert_eq!(psc["runAsNonRoot"], true, "{overlay}: {what}");
            assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{overlay}: {what}");
            assert!(psc["runAsUser"].as_u64().is_some_and(|u| u > 0), "{overlay}: {what}");
            for c in spec["containers"].as_array().into_iter().flatten() {
                let sc = &c["securityContext"];
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{overlay}: {what}");
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{overlay}: {what}");
                assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{overlay}: {what}");
                assert!(sc["capabilities"]["add"].is_null(), "{overlay}: {what}");
                assert!(c["resources"]["limits"]["memory"].is_string(), "{overlay}: {what}: memory limit");
                assert!(c["resources"]["requests"]["cpu"].is_string(), "{overlay}: {what}: cpu request");
            }
            for v in spec["volumes"].as_array().into_iter().flatten() {
                assert!(v["hostPath"].is_null(), "{overlay}: {what}: no hostPath outside the volume Jobs");
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} pod templates checked");
    Ok(())
}

#[test]
fn runners_webhooks_and_settings_agree_with_the_code() -> anyhow::Result<()> {
    if !tools_present() {
        return Ok(());
    }
    let all = rendered()?;
    let base = &all["base"];
    // Every function has a runner in both runner overlays, with its own account; the base's
    // coracle-tick CronJob publishes the ticks schedule-tick and maintenance consume.
    let event_driven: Vec<Function> = Function::value_variants().to_vec();
    for f in &event_driven {
        let name = format!("coracle-{}", f.name());
        let keda = find(&all["overlays/keda"], "ScaledJob", &name).with_context(|| format!("ScaledJob {name}"))?;
        let trigger = &keda["spec"]["triggers"][0];
        assert_eq!(trigger["type"], "nats-jetstream");
        assert_eq!(trigger["metadata"]["stream"], coracle_events::subjects::STREAM);
        assert_eq!(trigger["metadata"]["consumer"], f.name(), "the durable consumer is named after the function");
        let cron = find(&all["overlays/cronjob-drain"], "CronJob", &name).with_context(|| format!("CronJob {name}"))?;
        for template in [&keda["spec"]["jobTargetRef"]["template"], &cron["spec"]["jobTemplate"]["spec"]["template"]] {
            assert_eq!(template["spec"]["serviceAccountName"], name);
            assert_eq!(template["spec"]["containers"][0]["args"], json!(["fn", f.name(), "--drain"]));
        }
    }
    let keda_count = all["overlays/keda"].iter().filter(|o| o["kind"] == "ScaledJob").count();
    assert_eq!(keda_count, event_driven.len());
    let tick = find(base, "CronJob", "coracle-tick").context("coracle-tick")?;
    let args = &tick["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"];
    assert_eq!(args, &json!(["schedule", "tick"]));
    for f in [Function::ScheduleTick, Function::Maintenance] {
        assert!(f.subjects().contains(&coracle_events::subjects::SCHEDULE_TICK), "{} reads the ticks", f.name());
    }

    // The webhooks reach the server through its Service, select what the code labels, never block.
    let service = find(base, "Service", "coracle").context("Service")?;
    let deployment = find(base, "Deployment", "coracle-serve").context("Deployment")?;
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pdb = find(base, "PodDisruptionBudget", "coracle-serve").context("PDB")?;
    assert_eq!(pdb["spec"]["selector"], deployment["spec"]["selector"]);
    assert_eq!(service["spec"]["selector"], deployment["spec"]["selector"]["matchLabels"]);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(service["spec"]["ports"][0]["targetPort"], container["ports"][0]["name"]);
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let mutating = find(base, "MutatingWebhookConfiguration", rbac::MUTATING_WEBHOOK).context("mutating")?;
    let hook = &mutating["webhooks"][0];
    assert_eq!(hook["clientConfig"]["service"]["name"], "coracle");
    assert_eq!(hook["clientConfig"]["service"]["namespace"], rbac::BASE_NAMESPACE);
    assert_eq!(hook["clientConfig"]["service"]["port"], service["spec"]["ports"][0]["port"]);
    assert_eq!(hook["clientConfig"]["service"]["path"], "/admission/pods");
    assert_eq!(hook["rules"][0]["operations"], json!(["CREATE"]));
    assert_eq!(hook["rules"][0]["resources"], json!(["pods"]));
    assert_eq!(
        hook["namespaceSelector"]["matchLabels"],
        json!({coracle_functions::admission::NAMESPACE_LABEL: "enabled"}),
        "the label plan-restore sets"
    );
    assert_eq!(
        (&hook["failurePolicy"], &hook["sideEffects"], &hook["timeoutSeconds"], &hook["reinvocationPolicy"]),
        (&json!("Ignore"), &json!("None"), &json!(5), &json!("IfNeeded"))
    );
    assert!(hook["clientConfig"]["caBundle"].is_null(), "certgen writes the caBundle; apply must not reset it");
    let validating = find(base, "ValidatingWebhookConfiguration", rbac::VALIDATING_WEBHOOK).context("validating")?;
    let hook = &validating["webhooks"][0];
    assert_eq!(hook["clientConfig"]["service"]["path"], "/validate/workloads");
    assert_eq!((&hook["failurePolicy"], &hook["sideEffects"]), (&json!("Ignore"), &json!("NoneOnDryRun")));

    // The ConfigMap holds only keys the settings know, and parses.
    let cm = find(base, "ConfigMap", coracle_functions::settings::CONFIGMAP_NAME).context("ConfigMap")?;
    let data: BTreeMap<String, String> = serde_json::from_value(cm["data"].clone())?;
    let known: BTreeSet<String> =
        serde_json::to_value(Settings::default())?.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    for key in data.keys() {
        assert!(known.contains(key), "coracle-config key {key} is not a setting");
    }
    let settings = Settings::from_configmap_data(&data)?;
    let defaults = Settings::default();
    assert_eq!(settings.job_image, defaults.job_image, "the ConfigMap names the default Job image");
    assert_eq!(settings.helper_image, defaults.helper_image);
    assert_eq!(settings.service_account, "coracle-volume-job");
    assert_eq!(settings.master_key_secret, rbac::MASTER_KEY_SECRET);
    // No Secret with key material ships: the master key is generated at install.
    for (overlay, objects) in &all {
        assert!(
            !objects.iter().any(|o| o["kind"] == "Secret"),
            "deploy/{overlay} ships a Secret; keys are generated at install"
        );
    }
    // The platform overlays set their kubelet roots.
    for (overlay, root) in [
        ("overlays/platforms/rancheros", "/opt/rke/var/lib/kubelet"),
        ("overlays/platforms/tkgi", "/var/vcap/data/kubelet"),
        ("overlays/platforms/openshift", "/var/lib/kubelet"),
    ] {
        let cm = find(&all[overlay], "ConfigMap", "coracle-config").context("ConfigMap")?;
        assert_eq!(cm["data"]["kubeletRoot"], root, "{overlay}");
    }
    Ok(())
}

#[test]
fn images_named_in_manifests_match_the_dockerfiles() -> anyhow::Result<()> {
    if !tools_present() {
        return Ok(());
    }
    let images_dir = deploy_dir().join("../job-images");
    let version = env!("CARGO_PKG_VERSION");
    let mut named: BTreeSet<String> = BTreeSet::new();
    for (overlay, objects) in rendered()? {
        for (what, template) in pod_templates(&objects) {
            for c in template["spec"]["containers"].as_array().into_iter().flatten() {
                let image = c["image"].as_str().unwrap_or_default();
                let examples = overlay == "examples" || overlay == "overlays/examples";
                if !examples || image.starts_with("ghcr.io/coracle-dev/") {
                    assert!(image.starts_with("ghcr.io/coracle-dev/"), "deploy/{overlay}: {what}: {image}");
                    named.insert(image.to_string());
                }
            }
        }
        if let Some(cm) = find(&objects, "ConfigMap", "coracle-config") {
            for key in ["jobImage", "helperImage"] {
                named.insert(cm["data"][key].as_str().with_context(|| key.to_string())?.to_string());
            }
        }
    }
    let mut repos_named = BTreeSet::new();
    for image in &named {
        let (repo, tag) = image.rsplit_once(':').with_context(|| format!("{image} has no tag"))?;
        assert_eq!(tag, version, "{image}: images are tagged with the release version");
        assert!(IMAGES.iter().any(|i| i.0 == repo), "{image} is built by no Dockerfile in job-images/");
        repos_named.insert(repo.to_string());
    }
    assert_eq!(repos_named.len(), IMAGES.len(), "every image is used: {repos_named:?}");
    for (repo, dockerfile, title, package, binary) in IMAGES {
        let text = std::fs::read_to_string(images_dir.join(dockerfile)).with_context(|| dockerfile.to_string())?;
        assert!(text.contains(&format!("org.opencontainers.image.title=\"{title}\"")), "{dockerfile}: OCI title");
        for label in ["source", "licenses", "version", "revision", "description"] {
            assert!(text.contains(&format!("org.opencontainers.image.{label}=")), "{dockerfile}: OCI {label}");
        }
        assert!(text.contains(&format!("-p {package}")), "{dockerfile} builds {package}");
        assert!(
            text.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{binary}\"]"))
                || text.contains(&format!("ENTRYPOINT [\"/{binary}\"]")),
            "{dockerfile} runs {binary} ({repo})"
        );
        assert!(repo.ends_with(&format!("/{title}")), "{repo} is named after its title {title}");
    }
    // No Dockerfile outside the table.
    for entry in std::fs::read_dir(&images_dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("Dockerfile") {
            assert!(IMAGES.iter().any(|i| i.1 == name), "{name} is not in the image table");
        }
    }
    // restic in the images is pinned and at least 0.17.
    for dockerfile in ["Dockerfile.volume-job", "Dockerfile.coracle"] {
        let text = std::fs::read_to_string(images_dir.join(dockerfile))?;
        let pinned = text
            .lines()
            .find_map(|l| l.strip_prefix("ARG RESTIC_DEB_VERSION="))
            .with_context(|| format!("{dockerfile} pins restic"))?;
        let minor: u32 = pinned.split('.').nth(1).and_then(|m| m.parse().ok()).context("restic version")?;
        assert!(pinned.starts_with("0.") && minor >= 17, "{dockerfile}: restic {pinned}");
        // The Job image tells its Jobs that version, so that none runs `restic version`.
        if dockerfile == "Dockerfile.volume-job" {
            assert!(
                text.contains("CORACLE_RESTIC_VERSION=${RESTIC_DEB_VERSION}"),
                "{dockerfile} stamps restic's version"
            );
        }
    }
    Ok(())
}
