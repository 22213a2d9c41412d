//! The real `kube` client against the simulated API server.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use coracle_tests::sim::SimServer;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::ResourceExt as _;
use serde_json::json;

fn pod(name: &str, labels: serde_json::Value, node: &str, phase: &str) -> Result<Pod> {
    let value = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "busybox"}]},
        "status": {"phase": phase},
    });
    serde_json::from_value(value).context("building a pod")
}

/// A JSON patch (RFC 6902) request; kube's `Patch::Json` needs its `jsonpatch` feature, which the workspace
/// does not enable.
fn json_patch_request(path: &str, ops: &serde_json::Value) -> Result<http::Request<Vec<u8>>> {
    let body = serde_json::to_vec(ops)?;
    Ok(http::Request::patch(path).header("content-type", "application/json-patch+json").body(body)?)
}

fn api_error(err: kube::Error) -> Result<(u16, String)> {
    match err {
        kube::Error::Api(status) => Ok((status.code, status.reason.clone())),
        other => bail!("expected an API error, got {other}"),
    }
}

fn names(pods: &[Pod]) -> Vec<String> {
    pods.iter().map(|p| p.name_any()).collect()
}

async fn shop_with_pods(sim: &SimServer) -> Result<Api<Pod>> {
    let pods: Api<Pod> = Api::namespaced(sim.client()?, "shop");
    let fixtures = [
        ("web-0", json!({"app": "web"}), "node-1", "Running"),
        ("web-1", json!({"app": "web", "canary": "true"}), "node-2", "Running"),
        ("db-0", json!({"app": "db"}), "node-1", "Running"),
        ("job-x", json!({"app": "batch"}), "node-2", "Succeeded"),
        ("pending", json!({}), "", "Pending"),
    ];
    for (name, labels, node, phase) in fixtures {
        pods.create(&PostParams::default(), &pod(name, labels, node, phase)?).await?;
    }
    Ok(pods)
}

#[tokio::test]
async fn create_get_and_list_with_selectors() -> Result<()> {
    let sim = SimServer::start("").await?;
    let pods = shop_with_pods(&sim).await?;

    let web0 = pods.get("web-0").await?;
    assert_eq!(web0.namespace().as_deref(), Some("shop"));
    let uid = web0.uid().context("uid assigned")?;
    assert!(uuid::Uuid::parse_str(&uid).is_ok(), "{uid}");
    assert!(web0.resource_version().is_some());
    assert!(web0.creation_timestamp().is_some());

    let cases: [(ListParams, &[&str]); 8] = [
        (ListParams::default().labels("app=web"), &["web-0", "web-1"]),
        (ListParams::default().labels("app in (web,db),!canary"), &["db-0", "web-0"]),
        (ListParams::default().labels("app notin (web),app"), &["db-0", "job-x"]),
        (ListParams::default().labels("canary==true"), &["web-1"]),
        (ListParams::default().fields("spec.nodeName=node-1"), &["db-0", "web-0"]),
        (ListParams::default().fields("status.phase=Running,spec.nodeName!=node-1"), &["web-1"]),
        (ListParams::default().fields("metadata.name=pending"), &["pending"]),
        (ListParams::default().fields("metadata.namespace=elsewhere"), &[]),
    ];
    for (params, want) in cases {
        let got = pods.list(&params).await?;
        assert_eq!(names(&got.items), want, "{params:?}");
    }

    let all: Api<Pod> = Api::all(sim.client()?);
    assert_eq!(all.list(&ListParams::default()).await?.items.len(), 5);
    let list = pods.list(&ListParams::default()).await?;
    assert!(list.metadata.resource_version.is_some_and(|rv| !rv.is_empty()));

    let err = pods.list(&ListParams::default().labels("app in (web")).await.expect_err("bad selector");
    assert_eq!(api_error(err)?, (400, "BadRequest".to_string()));
    let err = pods.get("nope").await.expect_err("missing");
    assert_eq!(api_error(err)?, (404, "NotFound".to_string()));
    Ok(())
}

#[tokio::test]
async fn pagination_returns_every_pod_once() -> Result<()> {
    let sim = SimServer::start("").await?;
    let pods = shop_with_pods(&sim).await?;
    sim.clear_requests();

    let mut seen = Vec::new();
    let mut params = ListParams::default().limit(2);
    let mut pages = 0;
    loop {
        let page = pods.list(&params).await?;
        pages += 1;
        seen.extend(names(&page.items));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 5);
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 5, "{seen:?}");

    let requests = sim.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert!(requests.iter().all(|r| r.is_list_of("pods") && r.param("limit").as_deref() == Some("2")));
    assert_eq!(requests.iter().filter(|r| r.param("continue").is_some()).count(), 2);
    assert!(!requests.iter().any(|r| r.is_get_of("pods")));
    Ok(())
}

#[tokio::test]
async fn conflicts_and_already_exists() -> Result<()> {
    let sim = SimServer::start("").await?;
    let pods: Api<Pod> = Api::namespaced(sim.client()?, "shop");
    let created = pods.create(&PostParams::default(), &pod("p", json!({}), "node-1", "Running")?).await?;

    let again = pods.create(&PostParams::default(), &pod("p", json!({}), "node-1", "Running")?).await;
    assert_eq!(api_error(again.expect_err("duplicate"))?, (409, "AlreadyExists".to_string()));

    let mut fresh = created.clone();
    fresh.labels_mut().insert("step".into(), "1".into());
    let updated = pods.replace("p", &PostParams::default(), &fresh).await?;
    assert_eq!(updated.labels().get("step").map(String::as_str), Some("1"));
    assert_ne!(updated.resource_version(), created.resource_version());

    // `created` still carries the old resourceVersion.
    let mut stale = created.clone();
    stale.labels_mut().insert("step".into(), "2".into());
    let err = pods.replace("p", &PostParams::default(), &stale).await.expect_err("stale");
    assert_eq!(api_error(err)?, (409, "Conflict".to_string()));

    let long_name = "x".repeat(64);
    let jobs: Api<Job> = Api::namespaced(sim.client()?, "shop");
    let job: Job = serde_json::from_value(
        json!({"metadata": {"name": long_name}, "spec": {"template": {"spec": {"containers": []}}}}),
    )?;
    let err = jobs.create(&PostParams::default(), &job).await.expect_err("name too long for a Job");
    assert_eq!(api_error(err)?, (422, "Invalid".to_string()));
    Ok(())
}

#[tokio::test]
async fn patches_status_delete_and_generate_name() -> Result<()> {
    let sim = SimServer::start("").await?;
    let client = sim.client()?;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "coracle");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "settings"}, "data": {"a": "1", "b": "2"}}))?;
    maps.create(&PostParams::default(), &cm).await?;

    let merged =
        maps.patch("settings", &PatchParams::default(), &Patch::Merge(json!({"data": {"a": null, "c": "3"}}))).await?;
    assert_eq!(
        merged.data.clone().unwrap_or_default().into_iter().collect::<Vec<_>>(),
        [("b".into(), "2".into()), ("c".into(), "3".into())]
    );
    let ops = json!([{"op": "add", "path": "/data/d", "value": "4"}, {"op": "remove", "path": "/data/b"}]);
    let patched: ConfigMap =
        client.request(json_patch_request("/api/v1/namespaces/coracle/configmaps/settings", &ops)?).await?;
    let keys: Vec<String> = patched.data.unwrap_or_default().into_keys().collect();
    assert_eq!(keys, ["c", "d"]);
    let bad = json!([{"op": "remove", "path": "/data/zzz"}]);
    let err =
        client.request::<ConfigMap>(json_patch_request("/api/v1/namespaces/coracle/configmaps/settings", &bad)?).await;
    assert_eq!(api_error(err.expect_err("bad path"))?.0, 422);
    let garbage = http::Request::patch("/api/v1/namespaces/coracle/configmaps/settings")
        .header("content-type", "application/json-patch+json")
        .body(b"{not json".to_vec())?;
    assert_eq!(api_error(client.request::<ConfigMap>(garbage).await.expect_err("malformed"))?.0, 400);

    let jobs: Api<Job> = Api::namespaced(client.clone(), "coracle");
    let job: Job = serde_json::from_value(json!({
        "metadata": {"generateName": "coracle-backup-"},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "restic", "image": "restic"}]}}}
    }))?;
    let job = jobs.create(&PostParams::default(), &job).await?;
    let name = job.name_any();
    assert!(name.starts_with("coracle-backup-") && name.len() == "coracle-backup-".len() + 5, "{name}");

    // Status goes through /status; on the main endpoint it is ignored, as on a real server.
    let ignored = jobs.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"status": {"failed": 1}}))).await?;
    assert!(ignored.status.and_then(|s| s.failed).is_none());
    let status = json!({"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}});
    let done = jobs.patch_status(&name, &PatchParams::default(), &Patch::Merge(status)).await?;
    assert_eq!(done.status.as_ref().and_then(|s| s.succeeded), Some(1));
    let read = jobs.get_status(&name).await?;
    assert_eq!(read.status.and_then(|s| s.conditions).map(|c| c.len()), Some(1));

    let strategic = json!({"spec": {"template": {"spec": {"containers": [{"name": "restic", "image": "restic:0.18"}, {"name": "helper", "image": "h"}]}}}});
    let job = jobs.patch(&name, &PatchParams::default(), &Patch::Strategic(strategic)).await?;
    let images: Vec<String> = job
        .spec
        .and_then(|s| s.template.spec)
        .map(|s| s.containers.into_iter().filter_map(|c| c.image).collect())
        .unwrap_or_default();
    assert_eq!(images, ["restic:0.18", "h"]);

    let deleted = jobs.delete(&name, &DeleteParams::background()).await?;
    assert!(deleted.is_left(), "the deleted object comes back");
    let err = jobs.get(&name).await.expect_err("gone");
    assert_eq!(api_error(err)?.0, 404);
    let err = jobs.delete(&name, &DeleteParams::default()).await.expect_err("already gone");
    assert_eq!(api_error(err)?, (404, "NotFound".to_string()));

    // Server-side apply (approximated) creates, then merges.
    let nodes: Api<Node> = Api::all(client);
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "labels": {"zone": "a"}}});
    nodes.patch("node-1", &PatchParams::apply("coracle-test"), &Patch::Apply(&node)).await?;
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "labels": {"rack": "7"}}});
    let node = nodes.patch("node-1", &PatchParams::apply("coracle-test"), &Patch::Apply(&node)).await?;
    assert_eq!(node.labels().len(), 2);
    Ok(())
}

#[tokio::test]
async fn watch_sees_added_modified_deleted() -> Result<()> {
    let sim = SimServer::start("").await?;
    let pods: Api<Pod> = Api::namespaced(sim.client()?, "shop");
    pods.create(&PostParams::default(), &pod("before", json!({"app": "web"}), "node-1", "Running")?).await?;
    let start = pods.list(&ListParams::default()).await?.metadata.resource_version.context("list resourceVersion")?;

    // From the list's resourceVersion: only later changes, filtered by the label selector.
    let params = WatchParams::default().labels("app=web").timeout(20);
    let mut events = pods.watch(&params, &start).await?.boxed();
    pods.create(&PostParams::default(), &pod("p", json!({"app": "web"}), "node-1", "Running")?).await?;
    pods.create(&PostParams::default(), &pod("other", json!({"app": "db"}), "node-1", "Running")?).await?;
    pods.patch("p", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"x": "y"}}}))).await?;
    pods.patch("p", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "gone"}}}))).await?;
    pods.delete("before", &DeleteParams::default()).await?;

    let mut seen = Vec::new();
    while seen.len() < 4 {
        let event = tokio::time::timeout(Duration::from_secs(10), events.try_next())
            .await
            .context("watch event timed out")??;
        match event.context("watch ended early")? {
            WatchEvent::Added(p) => seen.push(format!("ADDED {}", p.name_any())),
            WatchEvent::Modified(p) => seen.push(format!("MODIFIED {}", p.name_any())),
            WatchEvent::Deleted(p) => seen.push(format!("DELETED {}", p.name_any())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => bail!("watch error: {e:?}"),
        }
    }
    // Relabelling `p` out of the selector shows up as its deletion.
    assert_eq!(seen, ["ADDED p", "MODIFIED p", "DELETED p", "DELETED before"]);

    // From "0": the current objects first, as synthetic ADDED events; the timeout ends the stream.
    let replay: Vec<_> = pods.watch(&WatchParams::default().timeout(1), "0").await?.try_collect().await?;
    let added: Vec<String> = replay
        .into_iter()
        .filter_map(|e| match e {
            WatchEvent::Added(p) => Some(p.name_any()),
            _ => None,
        })
        .collect();
    assert_eq!(added, ["other", "p"]);
    assert!(sim.requests().iter().filter(|r| r.is_watch()).count() >= 2);
    Ok(())
}

#[tokio::test]
async fn store_api_and_fixture_yaml() -> Result<()> {
    let yaml = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: app-0, namespace: shop, uid: 6b1f5c3e-8d7a-4f4e-9a55-0e7f3c1d2b10}
  spec: {nodeName: node-1, containers: [{name: app, image: busybox}]}
  status: {phase: Running}
"#;
    let sim = SimServer::start(yaml).await?;
    let pods: Api<Pod> = Api::namespaced(sim.client()?, "shop");
    let fetched = pods.get("app-0").await?;
    assert_eq!(fetched.uid().as_deref(), Some("6b1f5c3e-8d7a-4f4e-9a55-0e7f3c1d2b10"));

    // A change made through the store (as a kubelet would) is visible to clients.
    sim.store().modify("pods", "shop", "app-0", |p| p["status"]["phase"] = json!("Succeeded"))?;
    let phase = pods.get("app-0").await?.status.and_then(|s| s.phase);
    assert_eq!(phase.as_deref(), Some("Succeeded"));
    let typed = sim.store().get_as::<Pod>("shop", "app-0")?.context("stored")?;
    assert_eq!(typed.resource_version(), pods.get("app-0").await?.resource_version());
    assert_eq!(sim.store().list_as::<Pod>(None)?.len(), 1);
    assert!(sim.store().delete("pods", "shop", "app-0")?.is_some());
    assert_eq!(api_error(pods.get("app-0").await.expect_err("deleted"))?.0, 404);

    let version = sim.client()?.apiserver_version().await?;
    assert_eq!((version.major.as_str(), version.minor.as_str()), ("1", "33"));
    Ok(())
}

#[tokio::test]
async fn shutdown_releases_the_port_and_ends_watches() -> Result<()> {
    let sim = SimServer::start("").await?;
    let port = sim.port();
    let pods: Api<Pod> = Api::namespaced(sim.client()?, "shop");
    let mut events = pods.watch(&WatchParams::default().timeout(60), "0").await?.boxed();
    sim.shutdown();
    let end = tokio::time::timeout(Duration::from_secs(10), events.next()).await.context("the watch did not end")?;
    assert!(end.is_none_or(|e| e.is_err()), "no events after shutdown");
    std::net::TcpListener::bind(("127.0.0.1", port)).context("port released")?;
    Ok(())
}

#[tokio::test]
async fn metadata_only_list_get_and_watch() -> Result<()> {
    let sim = SimServer::start("").await?;
    let pods = shop_with_pods(&sim).await?;
    let list = pods.list_metadata(&ListParams::default().labels("app=web")).await?;
    let names: Vec<String> = list.items.iter().map(|p| p.name_any()).collect();
    assert_eq!(names, ["web-0", "web-1"]);
    assert!(list.items[0].metadata.uid.is_some());
    let one = pods.get_metadata("db-0").await?;
    assert_eq!(one.labels().get("app").map(String::as_str), Some("db"));
    let events: Vec<_> =
        pods.watch_metadata(&WatchParams::default().labels("app=db").timeout(1), "0").await?.try_collect().await?;
    assert!(matches!(events.as_slice(), [WatchEvent::Added(p)] if p.name_any() == "db-0"), "{events:?}");

    let accept = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json";
    let raw = http::Request::get("/api/v1/namespaces/shop/pods/db-0").header("accept", accept).body(Vec::new())?;
    let raw: serde_json::Value = sim.client()?.request(raw).await?;
    assert_eq!(raw["kind"], "PartialObjectMetadata");
    assert!(raw.get("spec").is_none(), "{raw}");

    let requests = sim.requests();
    let metadata_list =
        requests.iter().find(|r| r.is_list_of("pods") && r.param("labelSelector").as_deref() == Some("app=web"));
    assert!(metadata_list.is_some_and(|r| r.status == 200));
    Ok(())
}
