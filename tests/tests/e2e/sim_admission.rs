//! Mutating admission webhooks in the simulated API server, against a real HTTPS webhook server with its own
//! CA: what the webhook is sent, what its answers do, and the failure policies.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use axum::extract::{Path as UrlPath, State};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use coracle_tests::process::wait_with_timeout;
use coracle_tests::sim::{AdmissionOutcome, SimServer};
use coracle_tests::tls::{test_ca_and_cert, HttpsServer};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::ResourceExt as _;
use serde_json::{json, Value};

const FIXTURES: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: restore-me, labels: {coracle.dev/restore: pending}}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
"#;

/// The names the webhook's certificate carries: the in-cluster service name kube-apiserver verifies, and
/// the address a `url` client config uses.
const SERVICE_HOST: &str = "coracle.coracle-system.svc";
const HOOK: &str = "pods.coracle.dev";
const SLOW: Duration = Duration::from_secs(5);

type Seen = Arc<Mutex<Vec<(String, Value)>>>;

fn allowed(uid: &Value) -> Value {
    json!({"uid": uid, "allowed": true})
}

fn with_patch(mut response: Value, ops: Value) -> Value {
    let patch = base64::engine::general_purpose::STANDARD.encode(ops.to_string());
    response["patchType"] = json!("JSONPatch");
    response["patch"] = json!(patch);
    response
}

/// The test webhook: the last path segment picks the behaviour.
async fn review(
    State(seen): State<Seen>,
    UrlPath(behaviour): UrlPath<String>,
    Json(review): Json<Value>,
) -> Json<Value> {
    seen.lock().expect("seen").push((behaviour.clone(), review.clone()));
    let uid = &review["request"]["uid"];
    let object = &review["request"]["object"];
    let response = match behaviour.as_str() {
        // What Coracle's restore injection does: an init container first, and an annotation.
        "inject" => {
            let mut inits = object["spec"]["initContainers"].as_array().cloned().unwrap_or_default();
            inits.insert(0, json!({"name": "restore-wait", "image": "coracle-restore-wait"}));
            let mut annotations = object["metadata"]["annotations"].as_object().cloned().unwrap_or_default();
            annotations.insert("coracle.dev/restore".into(), json!("r1"));
            let ops = json!([
                {"op": "add", "path": "/spec/initContainers", "value": inits},
                {"op": "add", "path": "/metadata/annotations", "value": annotations},
            ]);
            let mut response = with_patch(allowed(uid), ops);
            response["warnings"] = json!(["coracle: injected \"restore-wait\""]);
            response
        }
        "label" => {
            let ops = json!([{"op": "add", "path": "/metadata/labels/coracle.dev~1seen", "value": "yes"}]);
            with_patch(allowed(uid), ops)
        }
        "deny" => json!({"uid": uid, "allowed": false,
            "status": {"code": 403, "reason": "Forbidden", "message": "restore r1 is not ready"}}),
        "slow" => {
            tokio::time::sleep(SLOW).await;
            allowed(uid)
        }
        "wrong-uid" => allowed(&json!("00000000-0000-0000-0000-000000000000")),
        _ => allowed(uid),
    };
    Json(json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}))
}

/// The simulation, an HTTPS webhook server, and the service endpoint joining them.
struct Cluster {
    sim: SimServer,
    webhooks: HttpsServer,
    ca_pem: String,
    seen: Seen,
}

impl Cluster {
    fn start() -> Result<Self> {
        Self::start_with_cert_hosts(&[SERVICE_HOST, "127.0.0.1"])
    }

    fn start_with_cert_hosts(hosts: &[&str]) -> Result<Self> {
        let sim = SimServer::start_blocking(FIXTURES)?;
        let (ca_pem, cert, key) = test_ca_and_cert(hosts);
        let seen = Seen::default();
        let router = Router::new().route("/{behaviour}", post(review)).with_state(seen.clone());
        let webhooks = HttpsServer::start(router, &cert, &key)?;
        sim.set_service_endpoint("coracle-system", "coracle", 443, webhooks.url());
        Ok(Self { sim, webhooks, ca_pem, seen })
    }

    /// A webhook on the test server's `path`, reached through the `coracle-system/coracle` service, for pod
    /// creates in namespaces labelled for restore; `extra` overrides fields.
    fn hook(&self, path: &str, extra: Value) -> Value {
        let mut hook = json!({
            "name": HOOK,
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "failurePolicy": "Fail",
            "clientConfig": {
                "service": {"namespace": "coracle-system", "name": "coracle", "port": 443, "path": path},
                "caBundle": base64::engine::general_purpose::STANDARD.encode(&self.ca_pem),
            },
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                       "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {"coracle.dev/restore": "pending"}},
        });
        json_patch::merge(&mut hook, &extra);
        hook
    }

    /// Creates (or replaces) a MutatingWebhookConfiguration through the API.
    async fn configure(&self, name: &str, hooks: Vec<Value>) -> Result<MutatingWebhookConfiguration> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.sim.client()?);
        if api.get_opt(name).await?.is_some() {
            api.delete(name, &DeleteParams::default()).await?;
        }
        let config = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name}, "webhooks": hooks});
        Ok(api.create(&PostParams::default(), &serde_json::from_value(config)?).await?)
    }

    fn pods(&self, namespace: &str) -> Result<Api<Pod>> {
        Ok(Api::namespaced(self.sim.client()?, namespace))
    }

    /// The reviews the webhook server received on a path.
    fn seen(&self, behaviour: &str) -> Vec<Value> {
        self.seen.lock().expect("seen").iter().filter(|(b, _)| b == behaviour).map(|(_, r)| r.clone()).collect()
    }
}

fn pod(generate_name: &str) -> Result<Pod> {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": generate_name, "labels": {"app": "web"}},
        "spec": {
            "initContainers": [{"name": "migrate", "image": "busybox"}],
            "containers": [{"name": "app", "image": "nginx"}],
        },
    }))
    .context("building a pod")
}

fn api_error(result: Result<Pod, kube::Error>) -> Result<(u16, String, String)> {
    match result {
        Err(kube::Error::Api(status)) => Ok((status.code, status.reason.clone(), status.message.clone())),
        Err(other) => bail!("expected an API error, got {other}"),
        Ok(pod) => bail!("expected the create to fail, but {} was created", pod.name_any()),
    }
}

fn init_names(pod: &Pod) -> Vec<String> {
    pod.spec.iter().flat_map(|s| s.init_containers.iter().flatten()).map(|c| c.name.clone()).collect()
}

/// A port nothing listens on.
fn closed_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

#[tokio::test]
async fn generate_name_pod_is_patched_before_it_gets_a_name_and_uid() -> Result<()> {
    let c = Cluster::start()?;
    let config = c.configure("coracle", vec![c.hook("/inject", json!({}))]).await?;
    let stored_hook = &config.webhooks.as_ref().context("webhooks")?[0];
    assert_eq!(stored_hook.timeout_seconds, Some(10), "defaulted like the API server does");
    assert_eq!(stored_hook.reinvocation_policy.as_deref(), Some("Never"));

    // As a ReplicaSet's pods are created: by the controller's service account.
    let mut config = kube::Config::new(c.sim.url().parse()?);
    config.auth_info.impersonate = Some("system:serviceaccount:kube-system:replicaset-controller".into());
    let pods: Api<Pod> = Api::namespaced(kube::Client::try_from(config)?, "restore-me");
    let created = pods.create(&PostParams::default(), &pod("web-")?).await?;

    let name = created.name_any();
    assert!(name.starts_with("web-") && name.len() == "web-".len() + 5, "{name}");
    assert!(created.uid().is_some_and(|u| u.len() == 36), "{:?}", created.uid());
    assert_eq!(init_names(&created), ["restore-wait", "migrate"]);
    assert_eq!(created.annotations().get("coracle.dev/restore").map(String::as_str), Some("r1"));
    let stored: Pod = c.sim.store().get_as("restore-me", &name)?.context("stored")?;
    assert_eq!(init_names(&stored), ["restore-wait", "migrate"]);
    assert_eq!(stored.uid(), created.uid());

    // The review as kube-apiserver sends it: before the name and uid exist.
    let reviews = c.seen("inject");
    assert_eq!(reviews.len(), 1);
    let review = &reviews[0];
    assert_eq!(
        (review["apiVersion"].as_str(), review["kind"].as_str()),
        (Some("admission.k8s.io/v1"), Some("AdmissionReview"))
    );
    let request = &review["request"];
    assert!(uuid::Uuid::parse_str(request["uid"].as_str().context("uid")?).is_ok(), "{request}");
    assert_eq!(request["kind"], json!({"group": "", "version": "v1", "kind": "Pod"}));
    assert_eq!(request["resource"], json!({"group": "", "version": "v1", "resource": "pods"}));
    assert_eq!(request["requestKind"], request["kind"]);
    assert_eq!(request["requestResource"], request["resource"]);
    assert!(request.get("subResource").is_none(), "{request}");
    assert!(request.get("name").is_none(), "an empty name is omitted, as the Go types do: {request}");
    assert_eq!(request["namespace"], "restore-me");
    assert_eq!(request["operation"], "CREATE");
    assert_eq!(request["userInfo"]["username"], "system:serviceaccount:kube-system:replicaset-controller");
    assert!(request["userInfo"]["groups"]
        .as_array()
        .is_some_and(|g| g.contains(&json!("system:serviceaccounts:kube-system"))));
    assert_eq!(request["oldObject"], Value::Null);
    assert_eq!(request["dryRun"], false);
    assert_eq!(request["options"]["kind"], "CreateOptions");
    let meta = &request["object"]["metadata"];
    assert!(meta["uid"].as_str().unwrap_or_default().is_empty(), "{meta}");
    assert!(meta["name"].as_str().unwrap_or_default().is_empty(), "{meta}");
    assert_eq!((meta["generateName"].as_str(), meta["namespace"].as_str()), (Some("web-"), Some("restore-me")));
    assert_eq!(init_names(&serde_json::from_value(request["object"].clone())?), ["migrate"]);

    // The sim's own record of the call.
    let calls = c.sim.admission_calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!((call.configuration.as_str(), call.webhook.as_str(), call.round), ("coracle", HOOK, 0));
    assert_eq!(call.url, "https://coracle.coracle-system.svc:443/inject?timeout=10s");
    assert_eq!(call.outcome, AdmissionOutcome::Allowed { changed: true });
    assert_eq!(call.uid(), request["uid"].as_str().context("uid")?);
    assert_eq!(call.response.as_ref().context("response")?["response"]["uid"], request["uid"]);
    assert_eq!(call.patch().context("patch")?[0]["path"], "/spec/initContainers");

    // Webhook warnings reach the client as Warning headers.
    let body = serde_json::to_vec(&pod("warned-")?)?;
    let request = http::Request::post("/api/v1/namespaces/restore-me/pods")
        .header("content-type", "application/json")
        .body(body)?;
    let response = c.sim.client()?.send(request.map(Into::into)).await?;
    assert_eq!(response.status(), 201);
    let warnings: Vec<&str> = response.headers().get_all("warning").iter().filter_map(|v| v.to_str().ok()).collect();
    assert_eq!(warnings, [r#"299 - "coracle: injected \"restore-wait\"""#]);
    Ok(())
}

#[tokio::test]
async fn namespace_selector_follows_namespace_labels_immediately() -> Result<()> {
    let c = Cluster::start()?;
    c.configure("coracle", vec![c.hook("/inject", json!({}))]).await?;
    let shop = c.pods("shop")?;
    let plain = shop.create(&PostParams::default(), &pod("web-")?).await?;
    assert_eq!(init_names(&plain), ["migrate"]);
    assert!(c.seen("inject").is_empty() && c.sim.admission_calls().is_empty(), "not called outside the selector");

    let namespaces: Api<Namespace> = Api::all(c.sim.client()?);
    let label = json!({"metadata": {"labels": {"coracle.dev/restore": "pending"}}});
    namespaces.patch("shop", &PatchParams::default(), &Patch::Merge(&label)).await?;
    let injected = shop.create(&PostParams::default(), &pod("web-")?).await?;
    assert_eq!(init_names(&injected), ["restore-wait", "migrate"]);
    assert_eq!(c.seen("inject").len(), 1);

    let unlabel = json!({"metadata": {"labels": {"coracle.dev/restore": null}}});
    namespaces.patch("shop", &PatchParams::default(), &Patch::Merge(&unlabel)).await?;
    shop.create(&PostParams::default(), &pod("web-")?).await?;
    assert_eq!(c.seen("inject").len(), 1, "unlabelling stops the calls at once");

    // A selector needs the namespace: a real API server answers 404 when it does not exist.
    let (code, reason, message) = api_error(c.pods("ghost")?.create(&PostParams::default(), &pod("web-")?).await)?;
    assert_eq!((code, reason.as_str(), message.as_str()), (404, "NotFound", "namespaces \"ghost\" not found"));
    Ok(())
}

#[tokio::test]
async fn failure_policy_decides_when_the_webhook_is_unreachable() -> Result<()> {
    let c = Cluster::start()?;
    let port = closed_port()?;
    c.sim.set_service_endpoint("coracle-system", "coracle", 443, format!("https://127.0.0.1:{port}"));
    let pods = c.pods("restore-me")?;

    c.configure("coracle", vec![c.hook("/inject", json!({"failurePolicy": "Ignore"}))]).await?;
    let created = pods.create(&PostParams::default(), &pod("web-")?).await?;
    assert_eq!(init_names(&created), ["migrate"], "created unpatched");
    match &c.sim.admission_calls()[..] {
        [call] => match &call.outcome {
            AdmissionOutcome::Failed { error, ignored: true } => assert!(error.contains("dial tcp"), "{error}"),
            other => bail!("expected an ignored failure, got {other:?}"),
        },
        calls => bail!("expected one call, got {calls:?}"),
    }

    c.configure("coracle", vec![c.hook("/inject", json!({"failurePolicy": "Fail"}))]).await?;
    let (code, reason, message) = api_error(pods.create(&PostParams::default(), &pod("web-")?).await)?;
    assert_eq!((code, reason.as_str()), (500, "InternalError"));
    let expected = format!(
        "Internal error occurred: failed calling webhook \"{HOOK}\": failed to call webhook: \
         Post \"https://coracle.coracle-system.svc:443/inject?timeout=10s\": dial tcp 127.0.0.1:{port}: "
    );
    assert!(message.starts_with(&expected), "{message}");
    assert_eq!(c.sim.store().list("pods", Some("restore-me"))?.len(), 1, "only the pod created under Ignore");

    // A service without an endpoint is a failed call too, and the message says what to set.
    let other = c.hook("/inject", json!({"clientConfig": {"service": {"name": "elsewhere"}}}));
    c.configure("coracle", vec![other]).await?;
    let (code, _, message) = api_error(pods.create(&PostParams::default(), &pod("web-")?).await)?;
    assert_eq!(code, 500);
    assert!(message.contains("set_service_endpoint"), "{message}");
    Ok(())
}

#[tokio::test]
async fn slow_webhook_times_out_without_blocking_the_server() -> Result<()> {
    let c = Cluster::start()?;
    let timeout = json!({"timeoutSeconds": 1, "failurePolicy": "Fail"});
    c.configure("coracle", vec![c.hook("/slow", timeout)]).await?;
    let pods = c.pods("restore-me")?;

    let started = Instant::now();
    let create = {
        let pods = pods.clone();
        tokio::spawn(async move { pods.create(&PostParams::default(), &pod("web-").expect("pod")).await })
    };
    // Other requests are answered while the webhook call is pending.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listed = Instant::now();
    let namespaces: Api<Namespace> = Api::all(c.sim.client()?);
    assert_eq!(namespaces.list(&Default::default()).await?.items.len(), 2);
    assert!(listed.elapsed() < Duration::from_millis(700), "a list took {:?}", listed.elapsed());
    assert!(!create.is_finished(), "the create waits for the webhook");

    let (code, _, message) = api_error(create.await?)?;
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1) && took < SLOW, "the create returned after {took:?}");
    assert_eq!(code, 500);
    assert!(message.contains("?timeout=1s\": context deadline exceeded"), "{message}");

    c.configure("coracle", vec![c.hook("/slow", json!({"timeoutSeconds": 1, "failurePolicy": "Ignore"}))]).await?;
    let started = Instant::now();
    let created = pods.create(&PostParams::default(), &pod("web-")?).await?;
    assert!(started.elapsed() < SLOW, "{:?}", started.elapsed());
    assert_eq!(init_names(&created), ["migrate"]);
    Ok(())
}

#[tokio::test]
async fn certificates_are_verified_against_the_ca_bundle_and_service_name() -> Result<()> {
    // A certificate for 127.0.0.1 only: good for a `url` client config, not for the service name.
    let c = Cluster::start_with_cert_hosts(&["127.0.0.1"])?;
    let pods = c.pods("restore-me")?;
    c.configure("coracle", vec![c.hook("/inject", json!({}))]).await?;
    let (code, _, message) = api_error(pods.create(&PostParams::default(), &pod("web-")?).await)?;
    assert_eq!(code, 500);
    assert!(message.contains("tls: failed to verify certificate"), "{message}");

    let url = format!("{}/inject", c.webhooks.url());
    let by_url = c.hook("/inject", json!({"clientConfig": {"service": null, "url": url}}));
    c.configure("coracle", vec![by_url.clone()]).await?;
    let created = pods.create(&PostParams::default(), &pod("web-")?).await?;
    assert_eq!(init_names(&created), ["restore-wait", "migrate"]);
    assert_eq!(c.sim.admission_calls().last().context("call")?.url, format!("{url}?timeout=10s"));

    // The same server with another CA's bundle.
    let (other_ca, _, _) = test_ca_and_cert(&["127.0.0.1"]);
    let other_bundle = base64::engine::general_purpose::STANDARD.encode(other_ca);
    let mut wrong_ca = by_url;
    wrong_ca["clientConfig"]["caBundle"] = json!(other_bundle);
    c.configure("coracle", vec![wrong_ca]).await?;
    let (code, reason, message) = api_error(pods.create(&PostParams::default(), &pod("web-")?).await)?;
    assert_eq!((code, reason.as_str()), (500, "InternalError"));
    assert!(
        message.contains(&format!("failed calling webhook \"{HOOK}\"")) && message.contains("UnknownIssuer"),
        "{message}"
    );
    assert_eq!(c.seen("inject").len(), 1, "only the call with the right CA reached the webhook");
    Ok(())
}

#[tokio::test]
async fn denial_rejects_with_the_webhooks_status() -> Result<()> {
    let c = Cluster::start()?;
    c.configure("coracle", vec![c.hook("/deny", json!({"failurePolicy": "Ignore"}))]).await?;
    let (code, reason, message) = api_error(c.pods("restore-me")?.create(&PostParams::default(), &pod("web-")?).await)?;
    assert_eq!((code, reason.as_str()), (403, "Forbidden"), "a denial is not a failed call, whatever the policy");
    assert_eq!(message, format!("admission webhook \"{HOOK}\" denied the request: restore r1 is not ready"));
    assert!(c.sim.store().list("pods", Some("restore-me"))?.is_empty());
    assert_eq!(c.sim.admission_calls()[0].outcome, AdmissionOutcome::Denied { message });
    Ok(())
}

#[tokio::test]
async fn response_uid_mismatch_is_a_failed_call() -> Result<()> {
    let c = Cluster::start()?;
    let pods = c.pods("restore-me")?;
    c.configure("coracle", vec![c.hook("/wrong-uid", json!({}))]).await?;
    let (code, _, message) = api_error(pods.create(&PostParams::default(), &pod("web-")?).await)?;
    let uid = c.seen("wrong-uid")[0]["request"]["uid"].as_str().context("uid")?.to_string();
    assert_eq!(code, 500);
    let expected = format!(
        "Internal error occurred: failed calling webhook \"{HOOK}\": received invalid webhook response: \
         expected response.uid=\"{uid}\", got \"00000000-0000-0000-0000-000000000000\""
    );
    assert_eq!(message, expected);

    c.configure("coracle", vec![c.hook("/wrong-uid", json!({"failurePolicy": "Ignore"}))]).await?;
    pods.create(&PostParams::default(), &pod("web-")?).await?;
    Ok(())
}

#[tokio::test]
async fn reinvocation_calls_earlier_if_needed_webhooks_again() -> Result<()> {
    let c = Cluster::start()?;
    // Configurations are called in name order: "a-first" before "b-second", which changes the object.
    let first = c.hook("/allow", json!({"name": "first.coracle.dev", "reinvocationPolicy": "IfNeeded"}));
    let second = c.hook("/label", json!({"name": "second.coracle.dev"}));
    c.configure("b-second", vec![second]).await?;
    c.configure("a-first", vec![first]).await?;
    let created = c.pods("restore-me")?.create(&PostParams::default(), &pod("web-")?).await?;
    assert_eq!(created.labels().get("coracle.dev/seen").map(String::as_str), Some("yes"));

    let calls: Vec<(String, u8)> =
        c.sim.admission_calls().iter().map(|call| (call.webhook.clone(), call.round)).collect();
    let expected = [("first.coracle.dev", 0), ("second.coracle.dev", 0), ("first.coracle.dev", 1)];
    assert_eq!(calls, expected.map(|(w, r)| (w.to_string(), r)));
    let first_calls = c.seen("allow");
    assert_eq!(first_calls.len(), 2);
    assert!(first_calls[0]["request"]["object"]["metadata"]["labels"].get("coracle.dev/seen").is_none());
    assert_eq!(first_calls[1]["request"]["object"]["metadata"]["labels"]["coracle.dev/seen"], "yes");
    assert_ne!(first_calls[0]["request"]["uid"], first_calls[1]["request"]["uid"], "every call has its own uid");

    // With the default policy (Never) it is called once.
    c.sim.clear_admission_calls();
    c.configure("a-first", vec![c.hook("/allow", json!({"name": "first.coracle.dev"}))]).await?;
    c.pods("restore-me")?.create(&PostParams::default(), &pod("web-")?).await?;
    assert_eq!(c.sim.admission_calls().len(), 2);
    assert_eq!(c.seen("allow").len(), 3);
    Ok(())
}

#[tokio::test]
async fn updates_and_dry_runs_are_admitted_too() -> Result<()> {
    let c = Cluster::start()?;
    let rules = json!({"rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": [""], "apiVersions": ["v1"],
        "resources": ["pods"]}]});
    c.configure("coracle", vec![c.hook("/label", rules)]).await?;
    let pods = c.pods("restore-me")?;

    let dry = pods.create(&PostParams { dry_run: true, ..Default::default() }, &pod("web-")?).await?;
    assert_eq!(dry.labels().get("coracle.dev/seen").map(String::as_str), Some("yes"));
    assert!(c.sim.store().list("pods", Some("restore-me"))?.is_empty(), "a dry run stores nothing");
    assert_eq!(c.seen("label")[0]["request"]["dryRun"], true);

    let created = pods.create(&PostParams::default(), &pod("web-")?).await?;
    let name = created.name_any();
    let change = json!({"metadata": {"labels": {"coracle.dev/seen": "no", "tier": "front"}}});
    let updated = pods.patch(&name, &PatchParams::default(), &Patch::Merge(&change)).await?;
    assert_eq!(
        updated.labels().get("coracle.dev/seen").map(String::as_str),
        Some("yes"),
        "the webhook had the last word"
    );
    assert_eq!(updated.labels().get("tier").map(String::as_str), Some("front"));
    let update = c.seen("label").pop().context("update review")?;
    let request = &update["request"];
    assert_eq!((request["operation"].as_str(), request["name"].as_str()), (Some("UPDATE"), Some(name.as_str())));
    assert_eq!(request["options"]["kind"], "UpdateOptions");
    assert_eq!(request["oldObject"]["metadata"]["labels"]["tier"], Value::Null);
    assert_eq!(request["object"]["metadata"]["labels"]["tier"], "front");

    // v1 allows only webhooks without side effects on dry runs, so every one is called with `dryRun: true`.
    c.configure("coracle", vec![c.hook("/label", json!({"sideEffects": "NoneOnDryRun"}))]).await?;
    pods.create(&PostParams { dry_run: true, ..Default::default() }, &pod("web-")?).await?;
    assert_eq!(c.seen("label").pop().context("dry run review")?["request"]["dryRun"], true);
    let stored = c.sim.store().get("mutatingwebhookconfigurations", "", "coracle")?.context("stored")?;
    let mut edited = stored.clone();
    edited["webhooks"][0]["sideEffects"] = json!("Unknown");
    let api: Api<MutatingWebhookConfiguration> = Api::all(c.sim.client()?);
    let err = api.replace("coracle", &PostParams::default(), &serde_json::from_value(edited)?).await;
    assert!(
        matches!(err, Err(kube::Error::Api(ref s)) if s.code == 422),
        "v1 allows only None and NoneOnDryRun: {err:?}"
    );
    Ok(())
}

#[test]
fn kubectl_create_passes_admission() -> Result<()> {
    const KUBECTL: &str = "/usr/bin/kubectl";
    if !Path::new(KUBECTL).exists() {
        eprintln!("skipping: {KUBECTL} is not installed");
        return Ok(());
    }
    let c = Cluster::start()?;
    let hook = c.hook("/inject", json!({}));
    let config = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "coracle"}, "webhooks": [hook]});
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    c.sim.write_kubeconfig(&kubeconfig)?;
    let manifest = dir.path().join("objects.yaml");
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {generateName: web-, namespace: restore-me}\n\
               spec: {containers: [{name: app, image: nginx}]}\n";
    std::fs::write(&manifest, format!("{}\n---\n{pod}", serde_json::to_string(&config)?))?;

    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(KUBECTL)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["create", "-f"])
        .arg(&manifest)
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?)
        .spawn()
        .context("starting kubectl")?;
    let status = wait_with_timeout(&mut child, Duration::from_secs(60))?;
    let (stdout, stderr) = (std::fs::read_to_string(out_path)?, std::fs::read_to_string(err_path)?);
    assert!(status.success(), "kubectl create: {stdout}{stderr}");
    assert!(stdout.contains("mutatingwebhookconfiguration.admissionregistration.k8s.io/coracle created"), "{stdout}");
    let name = stdout
        .lines()
        .find_map(|l| l.strip_prefix("pod/").and_then(|rest| rest.strip_suffix(" created")))
        .with_context(|| format!("no pod in {stdout}"))?;
    assert!(stderr.contains(r#"Warning: coracle: injected "restore-wait""#), "{stderr}");

    let stored: Pod = c.sim.store().get_as("restore-me", name)?.context("stored")?;
    assert_eq!(init_names(&stored), ["restore-wait"]);
    let calls = c.sim.admission_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].request["request"]["options"]["fieldManager"], "kubectl-create");
    Ok(())
}

#[tokio::test]
async fn validating_webhooks_see_the_mutated_object_and_can_only_deny() -> Result<()> {
    let c = Cluster::start()?;
    // A mutating webhook adds a label; the validating one runs after it and sees the label.
    c.configure("coracle", vec![c.hook("/label", json!({}))]).await?;
    let validating: Api<k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration> =
        Api::all(c.sim.client()?);
    let configure = |path: &str, policy: &str| {
        let mut hook = c.hook(path, json!({"name": "check.coracle.dev", "failurePolicy": policy}));
        if let Some(h) = hook.as_object_mut() {
            h.remove("reinvocationPolicy");
        }
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "check"}, "webhooks": [hook]})
    };
    validating.create(&PostParams::default(), &serde_json::from_value(configure("/allow", "Fail"))?).await?;
    let created = c.pods("restore-me")?.create(&PostParams::default(), &pod("web-")?).await?;
    assert_eq!(created.labels().get("coracle.dev/seen").map(String::as_str), Some("yes"));
    let checked = c.seen("allow");
    assert_eq!(checked.len(), 1, "the validating webhook was called once");
    assert_eq!(checked[0]["request"]["object"]["metadata"]["labels"]["coracle.dev/seen"], "yes", "after mutation");

    // A denial rejects the request and nothing is stored.
    validating.delete("check", &DeleteParams::default()).await?;
    validating.create(&PostParams::default(), &serde_json::from_value(configure("/deny", "Ignore"))?).await?;
    let before = c.sim.store().list("pods", Some("restore-me"))?.len();
    let (code, _, message) = api_error(c.pods("restore-me")?.create(&PostParams::default(), &pod("web-")?).await)?;
    assert_eq!(code, 403);
    assert!(message.contains("\"check.coracle.dev\" denied the request"), "{message}");
    assert_eq!(c.sim.store().list("pods", Some("restore-me"))?.len(), before);

    // Unreachable with failurePolicy Ignore: allowed; with Fail: refused.
    validating.delete("check", &DeleteParams::default()).await?;
    let mut unreachable = configure("/allow", "Ignore");
    let port = closed_port()?;
    unreachable["webhooks"][0]["clientConfig"] = json!({"url": format!("https://127.0.0.1:{port}/allow"),
        "caBundle": base64::engine::general_purpose::STANDARD.encode(&c.ca_pem)});
    validating.create(&PostParams::default(), &serde_json::from_value(unreachable.clone())?).await?;
    c.pods("restore-me")?.create(&PostParams::default(), &pod("web-")?).await?;
    validating.delete("check", &DeleteParams::default()).await?;
    unreachable["webhooks"][0]["failurePolicy"] = json!("Fail");
    validating.create(&PostParams::default(), &serde_json::from_value(unreachable)?).await?;
    let (code, _, _) = api_error(c.pods("restore-me")?.create(&PostParams::default(), &pod("web-")?).await)?;
    assert_eq!(code, 500);
    Ok(())
}
