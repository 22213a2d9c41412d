//! Trigger policies (SPEC §8) on real-shaped payloads: Argo Events' resource event source, Knative's
//! ApiServerSource (Resource and Reference mode), Coracle's own `workload.updated`, and a core Event.
//! Rollouts fire, scaling and unrelated kinds do not; namespace and label filters; debounce; names.

use chrono::{DateTime, Duration, Utc};
use coracle_functions::handlers::on_k8s_event::request_event;
use coracle_functions::request;
use coracle_functions::triggers::{
    backup_name, debounce, from_configmap, is_rollout, load, parse_incoming, pod_selector, review_workload, target_of,
    workload_target, Change, CoreEvent, Debounce, Incoming, Observed, Policy, TriggerState, WatchedKind,
    WorkloadChange,
};
use k8s_openapi::api::core::v1::ConfigMap;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::Path;

const SYSTEM: &str = "coracle-system";

fn t(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{text}: {e}")).with_timezone(&Utc)
}

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn fixture(name: &str) -> Vec<u8> {
    read(&format!("tests/fixtures/triggers/{name}")).into_bytes()
}

fn configmaps(path: &str) -> Vec<ConfigMap> {
    let text = read(path);
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| ConfigMap::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

/// The two policies of `deploy/examples/trigger-policy.yaml`: the example users copy is the one tested.
fn example_policies() -> (Policy, Policy) {
    let (policies, rejected) = load(&configmaps("../deploy/examples/trigger-policy.yaml"), SYSTEM);
    assert!(rejected.is_empty(), "{rejected:?}");
    let find = |n: &str| policies.iter().find(|p| p.name == n).cloned().unwrap_or_else(|| panic!("no policy {n}"));
    (find("backup-on-rollout"), find("backup-before-trouble"))
}

fn parse(name: &str) -> Incoming {
    parse_incoming(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn workload(incoming: &Incoming) -> &WorkloadChange {
    match &incoming.observed {
        Observed::Workload(w) => w,
        other => panic!("expected a workload change, got {other:?}"),
    }
}

fn core_event(incoming: &Incoming) -> &CoreEvent {
    match &incoming.observed {
        Observed::Event(e) => e,
        other => panic!("expected a core Event, got {other:?}"),
    }
}

fn ignored(incoming: &Incoming) -> &str {
    match &incoming.observed {
        Observed::Ignored(why) => why,
        other => panic!("expected the event to be ignored, got {other:?}"),
    }
}

#[test]
fn example_policies_read_as_documented() {
    let (rollout, trouble) = example_policies();
    assert_eq!(rollout.change, Change::Rollout);
    assert_eq!(rollout.kinds.iter().copied().collect::<Vec<_>>(), [WatchedKind::Deployment, WatchedKind::StatefulSet]);
    assert_eq!(rollout.namespaces.iter().map(String::as_str).collect::<Vec<_>>(), ["media", "shop"]);
    assert_eq!(rollout.selector.to_string(), "tier in (frontend,backend),!ephemeral");
    assert!(rollout.default_volumes_to_backup);
    assert_eq!(rollout.ttl.as_deref(), Some("168h"));
    assert_eq!(rollout.debounce, Duration::minutes(15));

    assert_eq!(trouble.change, Change::EventReason(["BackOff".to_string(), "Killing".to_string()].into()));
    assert_eq!(trouble.kinds.iter().copied().collect::<Vec<_>>(), [WatchedKind::Event]);
    // Declared in shop: watches only shop.
    assert_eq!(trouble.namespaces.iter().map(String::as_str).collect::<Vec<_>>(), ["shop"]);
    assert!(!trouble.default_volumes_to_backup);
    assert_eq!(trouble.debounce, Duration::hours(1));
}

#[test]
fn policy_defaults() {
    let cm: ConfigMap = serde_yaml::from_str(
        "metadata: {name: plain, namespace: coracle-system, labels: {coracle.dev/trigger: 'true'}}\ndata: {change: rollout}",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let p = from_configmap(&cm, SYSTEM).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.debounce, Duration::minutes(10));
    assert!(p.namespaces.is_empty(), "the system namespace's policy watches all namespaces");
    assert!(p.selector.is_empty());
    assert!(!p.default_volumes_to_backup);
    assert_eq!(p.ttl, None);
}

#[test]
fn invalid_policies_are_rejected_with_their_reason() {
    let cms = configmaps("tests/fixtures/triggers/invalid-policies.yaml");
    assert_eq!(cms.len(), 8);
    for cm in &cms {
        let name = cm.metadata.name.clone().unwrap_or_default();
        let want = cm.metadata.annotations.as_ref().and_then(|a| a.get("reason")).cloned().unwrap_or_default();
        match from_configmap(cm, SYSTEM) {
            Ok(p) => panic!("{name} was accepted: {p:?}"),
            Err(e) => assert!(e.to_string().contains(&want), "{name}: {e} (wanted {want:?})"),
        }
    }
    let (policies, rejected) = load(&cms, SYSTEM);
    assert!(policies.is_empty());
    assert_eq!(rejected.len(), 8);
}

#[test]
fn argo_deployment_rollout_fires() {
    let (rollout, _) = example_policies();
    let incoming = parse("argo-deployment-rollout.json");
    assert_eq!(incoming.shape, "argo-events resource");
    assert_eq!(incoming.time, Some(t("2025-06-02T10:15:30.123456789Z")));
    let w = workload(&incoming);
    assert_eq!((w.kind, w.namespace.as_str(), w.name.as_str()), (WatchedKind::Deployment, "shop", "web"));
    assert!(w.old.is_some(), "Argo's oldBody is the object before the change");
    assert_eq!(rollout.matches_workload(w), Ok(()));

    let target = workload_target(w).unwrap_or_else(|e| panic!("{e}"));
    let at = incoming.time.unwrap_or_else(|| panic!("no time"));
    let event = request_event(&rollout, &target, at);
    let r = &event.data;
    assert_eq!(r.name, "backup-on-rollout-web-20250602101530");
    assert_eq!(event.id, r.name, "the event id is the backup name, so the stream drops copies");
    assert_eq!(event.ty, "dev.coracle.backup.requested.v1");
    assert_eq!(event.source, "/coracle/functions/on-k8s-event");
    assert_eq!(event.time, Some(at));
    assert_eq!(r.included_namespaces, ["shop"]);
    assert_eq!(r.label_selector.as_deref(), Some("app=web"));
    assert!(r.default_volumes_to_backup);
    assert_eq!(r.ttl.as_deref(), Some("168h"));
    assert_eq!(r.origin.as_deref(), Some("trigger/backup-on-rollout"));
    assert_eq!(r.uid.as_deref(), Some(coracle_functions::handlers::event_uid("backup", &r.name).as_str()));
    assert_eq!(event.extensions.get("workload"), Some(&json!("shop/Deployment/web")));
    request::validate(r).unwrap_or_else(|e| panic!("{e}"));

    // The same change through Coracle's own webhook event fires the same backup.
    let own = parse("coracle-workload-updated.json");
    assert_eq!(own.shape, "coracle workload.updated");
    assert_eq!(rollout.matches_workload(workload(&own)), Ok(()));
}

#[test]
fn argo_scale_only_is_not_a_rollout() {
    let (rollout, _) = example_policies();
    let incoming = parse("argo-deployment-scale.json");
    let w = workload(&incoming);
    // The generation moved (replicas is spec), but the pod template did not.
    assert_eq!(w.new.pointer("/metadata/generation"), Some(&json!(4)));
    assert!(!is_rollout(w.old.as_ref(), &w.new));
    assert_eq!(rollout.matches_workload(w), Err("the pod template did not change".to_string()));
}

#[test]
fn knative_statefulset_rollout_fires_once_observed_it_does_not() {
    let (rollout, _) = example_policies();
    let incoming = parse("knative-statefulset-update.json");
    assert_eq!(incoming.shape, "knative resource");
    let w = workload(&incoming);
    assert_eq!((w.kind, w.name.as_str()), (WatchedKind::StatefulSet, "db"));
    assert!(w.old.is_none(), "Knative sends only the object after the change");
    // generation 5 > observedGeneration 4: a spec change the controller has not acted on yet.
    assert_eq!(rollout.matches_workload(w), Ok(()));
    let target = workload_target(w).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(target.selector, "app=db,tier in (backend)");
    let r = rollout.request(&target, t("2025-06-02T10:20:00.402Z"));
    assert_eq!(r.name, "backup-on-rollout-db-20250602102000");

    // The status update that follows (observedGeneration caught up) is not another rollout.
    let status = parse("knative-statefulset-status.json");
    assert_eq!(rollout.matches_workload(workload(&status)), Err("the pod template did not change".to_string()));
}

#[test]
fn knative_reference_mode_and_unrelated_events_are_ignored() {
    let why = ignored(&parse("knative-ref-update.json")).to_string();
    assert!(why.contains("Reference mode") && why.contains("mode: Resource"), "{why}");
    let why = ignored(&parse("argo-configmap-update.json")).to_string();
    assert!(why.contains("v1 ConfigMap is not a kind"), "{why}");

    // Adds and deletes of workloads are not changes of running data.
    let mut add: Value = serde_json::from_slice(&fixture("argo-deployment-rollout.json")).unwrap_or_default();
    add["data"]["type"] = json!("ADD");
    let incoming = parse_incoming(&serde_json::to_vec(&add).unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
    assert!(ignored(&incoming).contains("ADD"));
    let mut delete: Value = serde_json::from_slice(&fixture("knative-statefulset-update.json")).unwrap_or_default();
    delete["type"] = json!("dev.knative.apiserver.resource.delete");
    let incoming = parse_incoming(&serde_json::to_vec(&delete).unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
    assert!(ignored(&incoming).contains("delete"));

    // Other CloudEvents (a Coracle result, a PingSource tick) are not Kubernetes changes.
    let tick = json!({"specversion": "1.0", "id": "1", "source": "/apis/v1/namespaces/x/pingsources/p",
        "type": "dev.knative.sources.ping", "data": {"hello": "world"}});
    assert!(ignored(&parse_incoming(&serde_json::to_vec(&tick).unwrap_or_default()).unwrap_or_else(|e| panic!("{e}")))
        .contains("carries no Kubernetes object"));
}

#[test]
fn argo_data_forwarded_bare_is_accepted() {
    let event: Value = serde_json::from_slice(&fixture("argo-deployment-rollout.json")).unwrap_or_default();
    let bare = serde_json::to_vec(&event["data"]).unwrap_or_default();
    let incoming = parse_incoming(&bare).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(incoming.shape, "argo-events resource data");
    assert_eq!(incoming.time, None, "no CloudEvent, no time: the handler uses its clock");
    assert!(is_rollout(workload(&incoming).old.as_ref(), &workload(&incoming).new));
}

#[test]
fn malformed_events_are_errors() {
    let cases: [(&str, &str); 6] = [
        ("not json", "not JSON"),
        ("[1,2]", "expected a JSON object"),
        (r#"{"hello": "world"}"#, "expected a CloudEvent"),
        (r#"{"specversion": "1.0", "id": "", "source": "s", "type": "t"}"#, "must not be empty"),
        (
            r#"{"type": "UPDATE", "body": {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"namespace": "shop"}}}"#,
            "without metadata.name",
        ),
        (r#"{"type": "PATCH", "body": {}}"#, "unknown type \"PATCH\""),
    ];
    for (payload, want) in cases {
        match parse_incoming(payload.as_bytes()) {
            Ok(i) => panic!("{payload}: accepted as {i:?}"),
            Err(e) => assert!(e.to_string().contains(want), "{payload}: {e} (wanted {want:?})"),
        }
    }
    let bad_type = json!({"specversion": "1.0", "id": "1", "source": "/x", "type": "dev.coracle.k8s.workload.updated.v1",
        "data": {"old": null}});
    let e = parse_incoming(&serde_json::to_vec(&bad_type).unwrap_or_default()).err().map(|e| e.to_string());
    assert!(e.as_deref().is_some_and(|e| e.contains("coracle workload.updated")), "{e:?}");
}

#[test]
fn namespace_and_label_filters() {
    let (rollout, _) = example_policies();
    let incoming = parse("argo-deployment-rollout.json");
    let base = workload(&incoming).clone();

    let mut elsewhere = base.clone();
    elsewhere.namespace = "kube-system".into();
    assert_eq!(rollout.matches_workload(&elsewhere), Err("does not watch namespace kube-system".to_string()));

    let mut unlabelled = base.clone();
    unlabelled.labels.insert("ephemeral".into(), "yes".into());
    assert!(rollout.matches_workload(&unlabelled).is_err_and(|e| e.contains("does not match shop/web")));

    let mut other_tier = base.clone();
    other_tier.labels.insert("tier".into(), "batch".into());
    assert!(rollout.matches_workload(&other_tier).is_err());

    // A rollout policy limited to StatefulSets ignores Deployments; an Event policy ignores rollouts.
    let cm: ConfigMap = serde_yaml::from_str(
        "metadata: {name: sts-only, namespace: coracle-system}\ndata: {change: rollout, kinds: StatefulSet}",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let sts_only = from_configmap(&cm, SYSTEM).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sts_only.matches_workload(&base), Err("does not watch Deployments".to_string()));
    let (_, trouble) = example_policies();
    assert!(trouble.matches_workload(&base).is_err());
}

#[test]
fn core_event_with_a_matching_reason_fires_for_its_pod() {
    let (rollout, trouble) = example_policies();
    let incoming = parse("knative-event-backoff.json");
    let e = core_event(&incoming);
    assert_eq!(e.reason, "BackOff");
    assert_eq!((e.involved.kind.as_str(), e.involved.namespace.as_str()), ("Pod", "shop"));
    assert_eq!(e.involved.name, "web-6d4cf56db6-x7k2p");
    assert_eq!(trouble.matches_event(e), Ok(()));
    assert!(rollout.matches_event(e).is_err(), "a rollout policy does not watch Events");

    // The Pod as the handler looks it up: its labels (without the per-revision hash) select it.
    let pod: Value = serde_json::from_slice(&fixture("pod-web.json")).unwrap_or_default();
    let target = target_of(&trouble, &pod).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((target.kind.as_str(), target.name.as_str()), ("Pod", "web-6d4cf56db6-x7k2p"));
    assert_eq!(target.selector, "app=web,tier=frontend");
    let r = trouble.request(&target, t("2025-06-02T10:30:00.120Z"));
    assert_eq!(r.name, "backup-before-trouble-web-6d4cf56db6-x7k2p-20250602103000");
    assert!(r.name.len() <= 63);
    assert_eq!(r.origin.as_deref(), Some("trigger/backup-before-trouble"));
    assert_eq!(r.included_namespaces, ["shop"]);

    // The policy's selector is checked on the looked-up object.
    let mut other = pod.clone();
    other["metadata"]["labels"]["app"] = json!("api");
    assert!(target_of(&trouble, &other).is_err_and(|e| e.contains("does not match")));

    // The bare core Event (as Argo Events' resource source would carry in `body`) reads the same.
    let bare = json!({"type": "ADD", "body": serde_json::from_slice::<Value>(&fixture("core-event-backoff.json")).unwrap_or_default()});
    let from_argo = parse_incoming(&serde_json::to_vec(&bare).unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(core_event(&from_argo), e);
}

#[test]
fn core_event_with_another_reason_does_not_fire() {
    let (_, trouble) = example_policies();
    let mut event: Value = serde_json::from_slice(&fixture("knative-event-backoff.json")).unwrap_or_default();
    event["data"]["reason"] = json!("Pulled");
    let incoming = parse_incoming(&serde_json::to_vec(&event).unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
    let e = core_event(&incoming);
    assert!(trouble.matches_event(e).is_err_and(|why| why.contains("\"Pulled\"")));

    // events.k8s.io/v1 names the object `regarding`; outside the policy's namespace it is ignored.
    let v1 = json!({"type": "ADD", "body": {"apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "x.1", "namespace": "media"}, "reason": "Killing",
        "regarding": {"apiVersion": "v1", "kind": "Pod", "namespace": "media", "name": "x"}}});
    let incoming = parse_incoming(&serde_json::to_vec(&v1).unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
    let e = core_event(&incoming);
    assert_eq!(e.reason, "Killing");
    assert_eq!(trouble.matches_event(e), Err("does not watch namespace media".to_string()));
}

#[test]
fn pod_selectors_from_workload_selectors() {
    let sel = |s: Value| pod_selector(&json!({"spec": {"selector": s}}));
    assert_eq!(sel(json!({"matchLabels": {"app": "web", "tier": "fe"}})), Ok("app=web,tier=fe".to_string()));
    assert_eq!(
        sel(json!({"matchExpressions": [
            {"key": "app", "operator": "In", "values": ["a", "b"]},
            {"key": "env", "operator": "NotIn", "values": ["dev"]},
            {"key": "release", "operator": "Exists"},
            {"key": "legacy", "operator": "DoesNotExist"}]})),
        Ok("app in (a,b),env notin (dev),release,!legacy".to_string())
    );
    // An empty selector would back up the whole namespace.
    assert!(sel(json!({})).is_err());
    assert!(pod_selector(&json!({"spec": {}})).is_err());
    assert!(sel(json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]})).is_err());
}

#[test]
fn debounce_window() {
    let (rollout, _) = example_policies();
    let incoming = parse("argo-deployment-rollout.json");
    let target = workload_target(workload(&incoming)).unwrap_or_else(|e| panic!("{e}"));
    let start = t("2025-06-02T10:15:30Z");
    let window = Duration::minutes(10);
    assert_eq!(debounce(None, start, window), Debounce::Fire);

    let state = TriggerState::new(&rollout, &target, start, "backup-on-rollout-web-20250602101530");
    // The change that opened the window, redelivered: publish the same request again.
    assert_eq!(debounce(Some(&state), start, window), Debounce::Repeat);
    let until = t("2025-06-02T10:25:30Z");
    assert_eq!(debounce(Some(&state), t("2025-06-02T10:15:31Z"), window), Debounce::Suppressed { until });
    assert_eq!(debounce(Some(&state), t("2025-06-02T10:25:29Z"), window), Debounce::Suppressed { until });
    // A change older than the last fire, delivered late, is covered by that fire.
    assert_eq!(debounce(Some(&state), t("2025-06-02T10:00:00Z"), window), Debounce::Suppressed { until });
    assert_eq!(debounce(Some(&state), until, window), Debounce::Fire);
    assert_eq!(debounce(Some(&state), t("2025-06-02T11:00:00Z"), window), Debounce::Fire);

    // State keys are per policy and workload, valid KV key characters.
    let key = rollout.state_key(&target);
    assert_eq!(key, "coracle-system.backup-on-rollout.shop.Deployment.web");
    assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || "-_=./".contains(c)));
}

#[test]
fn backup_name_rules() {
    let at = t("2026-03-29T01:00:00Z");
    assert_eq!(backup_name("on-deploy", "web", at), "on-deploy-web-20260329010000");
    assert_eq!(backup_name("On-Deploy", "Web", at), "on-deploy-web-20260329010000");
    let long = backup_name("a-rather-long-trigger-policy-name", "an-equally-long-deployment-name-here", at);
    assert!(long.len() <= 63, "{long} ({})", long.len());
    assert!(long.ends_with("-20260329010000"));
    assert!(long.starts_with("a-rather-long-trigger-policy-name-an-eq"));
    // Deterministic, and distinct for names that share the kept prefix.
    assert_eq!(long, backup_name("a-rather-long-trigger-policy-name", "an-equally-long-deployment-name-here", at));
    let other = backup_name("a-rather-long-trigger-policy-name", "an-equally-long-deployment-name-there", at);
    assert_ne!(long, other);
    assert_eq!(long.len(), other.len());
    // Exactly at the limit nothing is cut.
    let fits = backup_name(&"p".repeat(20), &"w".repeat(27), at);
    assert_eq!(fits.len(), 63);
    assert!(fits.starts_with(&format!("{}-{}", "p".repeat(20), "w".repeat(27))));
    // A cut never leaves "-" or "." before the hash.
    let dotted = backup_name(&"p".repeat(38), &"w".repeat(20), at);
    assert!(dotted.starts_with(&format!("{}-", "p".repeat(38))) && !dotted.contains("--"), "{dotted}");
    assert_eq!(dotted.len(), 38 + 1 + 8 + 15);
    for name in [long, other, fits, dotted] {
        let r = coracle_events::BackupRequest { name: name.clone(), ..Default::default() };
        request::validate(&r).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn workload_webhook_allows_and_publishes_only_template_changes() {
    let (rollout, _) = example_policies();
    let now = t("2025-06-02T10:15:30Z");
    let body = fixture("admission-deployment-update.json");
    let review = review_workload(&body, now);
    assert_eq!(review.response["response"], json!({"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true}));
    assert_eq!(review.response["kind"], "AdmissionReview");
    let event = review.updated.clone().unwrap_or_else(|| panic!("no event: {:?}", review.skipped));
    assert_eq!(event.ty, "dev.coracle.k8s.workload.updated.v1");
    assert_eq!(event.subject.as_deref(), Some("shop/Deployment/web"));
    assert!(event.id.starts_with("shop.Deployment.web."));
    assert_eq!(event.time, Some(now));
    // The same review again (an API server retry) publishes the same id.
    assert_eq!(review_workload(&body, now).updated.map(|e| e.id), Some(event.id.clone()));

    // What it publishes is what on-k8s-event reads, and fires the rollout policy.
    let incoming = parse_incoming(&event.to_json()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(incoming.shape, "coracle workload.updated");
    assert_eq!(rollout.matches_workload(workload(&incoming)), Ok(()));

    let mut v: Value = serde_json::from_slice(&body).unwrap_or_default();
    let old_template = v["request"]["oldObject"]["spec"]["template"].clone();
    // Scaling: allowed, nothing published.
    let mut scaled = v.clone();
    scaled["request"]["object"]["spec"]["template"] = old_template;
    scaled["request"]["object"]["spec"]["replicas"] = json!(7);
    let r = review_workload(&serde_json::to_vec(&scaled).unwrap_or_default(), now);
    assert_eq!((r.response["response"]["allowed"].clone(), r.updated), (json!(true), None));
    assert_eq!(r.skipped.as_deref(), Some("the pod template did not change"));
    // Dry runs and other operations or kinds publish nothing.
    v["request"]["dryRun"] = json!(true);
    assert_eq!(review_workload(&serde_json::to_vec(&v).unwrap_or_default(), now).skipped.as_deref(), Some("dry run"));
    v["request"]["dryRun"] = json!(false);
    v["request"]["operation"] = json!("CREATE");
    assert!(review_workload(&serde_json::to_vec(&v).unwrap_or_default(), now).updated.is_none());
    v["request"]["operation"] = json!("UPDATE");
    v["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "ConfigMap"});
    assert!(review_workload(&serde_json::to_vec(&v).unwrap_or_default(), now).updated.is_none());
    // A malformed review is answered (allowed), never crashed on.
    for bad in [&b"not json"[..], br#"{"request": {"kind": "x"}}"#, br#"{"request": {"uid": "u", "kind": {"group": "apps", "version": "v1", "kind": "Deployment"}, "operation": "UPDATE", "object": {"metadata": "x", "spec": {"template": 1}}, "oldObject": {}}}"#] {
        let r = review_workload(bad, now);
        assert_eq!(r.response["response"]["allowed"], json!(true));
        assert!(r.updated.is_none() && r.skipped.is_some());
    }
}
