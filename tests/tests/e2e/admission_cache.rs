//! `coracle serve` answers admission from a watched in-memory copy of the pending restores
//! (`WatchedPending`), against a real nats-server. The copy lags the bucket, so these tests
//! write to the bucket from another thread while the copy cannot run, then review at once:
//! what the copy has not seen yet must still be decided on the bucket. Then a NATS restart, and
//! `coracle serve` behind the simulated API server with pods created right after their entry.

use anyhow::{bail, Context as _};
use base64::Engine as _;
use coracle_events::{BackupRef, PendingRestore, RestoreRef, RestoreTarget};
use coracle_functions::admission::{HelperSettings, ANNOTATION_OWNED, ANNOTATION_RESTORE_UID, HELPER_NAME};
use coracle_functions::handlers::admit::{review, WatchedPending};
use coracle_functions::kv_json::JsonKv;
use coracle_functions::plan_restore::pending_key;
use coracle_functions::restore_state::{EntryState, PendingEntry};
use coracle_functions::settings::Settings;
use coracle_tests::harness::ApiAndNats;
use coracle_tests::nats::NatsServer;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const NAMESPACE: &str = "shop";
const RESTORE_UID: &str = "4f0c1d7e-2b8a-4c51-9e0f-6a7b8c9d0e1f";

fn entry(claim: &str, restore_uid: &str) -> PendingEntry {
    PendingEntry::new(PendingRestore {
        restore: RestoreRef { name: format!("restore-{}", &restore_uid[..8]), uid: restore_uid.into() },
        backup: BackupRef { name: "nightly".into(), uid: "b".into() },
        target_namespace: NAMESPACE.into(),
        target: RestoreTarget::Pvc { claim: claim.into() },
        source_namespace: NAMESPACE.into(),
        source_pod: "web-old".into(),
        source_volume: "data".into(),
        snapshot_id: format!("snap-{claim}"),
        identity: format!("pvc/{claim}"),
    })
}

fn key(claim: &str) -> String {
    pending_key(NAMESPACE, &RestoreTarget::Pvc { claim: claim.into() })
}

/// A pod as kube-apiserver sends it at CREATE: generateName, no name, no uid; volume `data`
/// mounts the claim.
fn pod(claim: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-", "namespace": NAMESPACE},
        "spec": {
            "containers": [{"name": "web", "image": "nginx", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]
        }
    })
}

fn admission_review(claim: &str) -> Vec<u8> {
    let body = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": uuid::Uuid::new_v4().to_string(), "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": NAMESPACE, "operation": "CREATE", "object": pod(claim)}
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The patched pod's restore-wait container and annotations, or None when unpatched.
fn injection(response: &Value) -> anyhow::Result<Option<Value>> {
    let Some(patch) = response["response"]["patch"].as_str() else { return Ok(None) };
    let ops: Value = serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(patch)?)?;
    Ok(Some(ops))
}

/// What the injection says about volume `data`: (restore uid, this pod restores it).
fn injected(response: &Value) -> anyhow::Result<Option<(String, bool)>> {
    let Some(ops) = injection(response)? else { return Ok(None) };
    let ops = ops.as_array().context("patch is a list")?;
    let helper = ops.iter().find(|o| o["path"].as_str().is_some_and(|p| p.starts_with("/spec/initContainers")));
    let helper = helper.context("no initContainers op")?;
    let container = if helper["value"].is_array() { &helper["value"][0] } else { &helper["value"] };
    assert_eq!(container["name"], HELPER_NAME);
    let annotations = ops.iter().find(|o| o["path"] == "/metadata/annotations").context("annotations op")?;
    let uid = annotations["value"][ANNOTATION_RESTORE_UID].as_str().context("restore uid")?.to_string();
    let owned = annotations["value"][ANNOTATION_OWNED].as_str().unwrap_or("").split(',').any(|v| v == "data");
    Ok(Some((uid, owned)))
}

/// Runs `op` against the bucket on its own thread, runtime and NATS connection, and waits for
/// it without yielding: the test's own runtime (which runs the watch) cannot see the change
/// until the next await.
fn write_elsewhere<F, Fut>(url: &str, op: F) -> anyhow::Result<()>
where
    F: FnOnce(JsonKv<PendingEntry>, async_nats::jetstream::kv::Store) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let url = url.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let js = async_nats::jetstream::new(async_nats::connect(&url).await?);
            let kv = JsonKv::open(&js, coracle_events::subjects::KV_RESTORES, "pending.").await?;
            let raw = coracle_events::bootstrap::bucket(&js, coracle_events::subjects::KV_RESTORES).await?;
            op(kv, raw).await
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("writer thread panicked"))?
}

async fn wait_cached(watched: &WatchedPending, key: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !watched.cached_keys().iter().any(|k| k == key) {
        if Instant::now() > deadline {
            bail!("the watch did not deliver {key} within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

// A current-thread runtime: while a writer thread runs, nothing here (the watch included) runs.
#[tokio::test]
async fn the_watched_copy_never_hides_a_new_changed_or_removed_entry() -> anyhow::Result<()> {
    let mut nats = NatsServer::start()?;
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client.clone());
    coracle_events::bootstrap::ensure(&js).await?;
    let kv: JsonKv<PendingEntry> = JsonKv::open(&js, coracle_events::subjects::KV_RESTORES, "pending.").await?;
    kv.create(&key("seed"), &entry("seed", RESTORE_UID)).await?;
    let watched = WatchedPending::start(client.clone(), js.clone(), kv.clone()).await.map_err(anyhow::Error::msg)?;
    wait_cached(&watched, &key("seed"), Duration::from_secs(10)).await?;
    let settings = HelperSettings::from(&Settings::default());
    let url = nats.url();

    // 1. Written, then the pod reviewed at once: not in the copy yet, read from the bucket.
    write_elsewhere(&url, |kv, _| async move {
        kv.create(&key("fresh"), &entry("fresh", RESTORE_UID)).await?;
        Ok(())
    })?;
    assert!(!watched.cached_keys().contains(&key("fresh")), "the race this test is about did not happen");
    let answer = review(&watched, &settings, &admission_review("fresh")).await;
    assert_eq!(injected(&answer)?, Some((RESTORE_UID.to_string(), true)), "{answer}");
    let stored = kv.get(&key("fresh")).await?.context("fresh entry")?.0;
    assert_eq!(stored.state, EntryState::Claimed, "the claim reached the bucket");

    // 2. Served from the copy: a claimed entry makes a second pod a waiter, with no write.
    wait_cached(&watched, &key("fresh"), Duration::from_secs(10)).await?;
    let (_, revision) = kv.get(&key("fresh")).await?.context("fresh entry")?;
    let answer = review(&watched, &settings, &admission_review("fresh")).await;
    assert_eq!(injected(&answer)?, Some((RESTORE_UID.to_string(), false)), "{answer}");
    assert_eq!(kv.get(&key("fresh")).await?.context("fresh")?.1, revision, "a waiter writes nothing");

    // 3. Claimed by another pod behind the copy's back: the compare-and-set on the copy's
    //    revision loses, the bucket decides, and the other pod's claim stands.
    kv.create(&key("contended"), &entry("contended", RESTORE_UID)).await?;
    wait_cached(&watched, &key("contended"), Duration::from_secs(10)).await?;
    write_elsewhere(&url, |kv, _| async move {
        kv.modify(&key("contended"), |e| coracle_functions::restore_state::claim(e, "other-pod").1).await?;
        Ok(())
    })?;
    let answer = review(&watched, &settings, &admission_review("contended")).await;
    assert_eq!(injected(&answer)?, Some((RESTORE_UID.to_string(), false)), "{answer}");
    let stored = kv.get(&key("contended")).await?.context("contended")?.0;
    assert_eq!(stored.claim.as_deref(), Some("other-pod"), "the earlier claim was not overwritten");

    // 4. Finished, or deleted, behind the copy's back while still pending in it: not injected.
    for (claim, delete) in [("finished", false), ("deleted", true)] {
        kv.create(&key(claim), &entry(claim, RESTORE_UID)).await?;
        wait_cached(&watched, &key(claim), Duration::from_secs(10)).await?;
        write_elsewhere(&url, move |kv, raw| async move {
            if delete {
                raw.delete(format!("pending.{}", key(claim))).await?;
            } else {
                kv.modify(&key(claim), |e| {
                    e.state = EntryState::Completed;
                    true
                })
                .await?;
            }
            Ok(())
        })?;
        let answer = review(&watched, &settings, &admission_review(claim)).await;
        assert_eq!(injected(&answer)?, None, "{claim}: {answer}");
        assert!(answer["response"].get("warnings").is_none(), "{claim}: {answer}");
    }

    // 5. A finished entry replaced by a new restore's (plan-restore does this): the copy holds
    //    the finished one, the bucket the new one, and the new one wins.
    let newer = "9a8b7c6d-0000-4000-8000-000000000005";
    write_elsewhere(&url, move |kv, _| async move {
        kv.modify(&key("finished"), |e| {
            *e = entry("finished", newer);
            true
        })
        .await?;
        Ok(())
    })?;
    let answer = review(&watched, &settings, &admission_review("finished")).await;
    assert_eq!(injected(&answer)?, Some((newer.to_string(), true)), "{answer}");

    // 6. NATS away: answered within the lookup bound, allowed, with a warning; never an error.
    nats.stop();
    let started = Instant::now();
    let answer = review(&watched, &settings, &admission_review("seed")).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());
    assert!(answer["response"]["warnings"].to_string().contains("lookup failed"), "{answer}");

    // 7. NATS back: the watch starts again on the new connection and sees new entries.
    nats.start_again()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.connection_state() != async_nats::connection::State::Connected {
        if Instant::now() > deadline {
            bail!("the client did not reconnect");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    kv.create(&key("after-restart"), &entry("after-restart", RESTORE_UID)).await?;
    wait_cached(&watched, &key("after-restart"), Duration::from_secs(20)).await?;
    assert!(watched.cached_keys().contains(&key("seed")), "the copy was rebuilt with what was there before");
    let answer = review(&watched, &settings, &admission_review("after-restart")).await;
    assert_eq!(injected(&answer)?, Some((RESTORE_UID.to_string(), true)), "{answer}");
    Ok(())
}

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {coracle.dev/restore: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: coracle-system}
"#;

/// `coracle serve` as a process behind the simulated API server's admission, the way
/// `Harness::install_webhook` installs it.
async fn install_serve(env: &ApiAndNats) -> anyhow::Result<coracle_tests::harness::ChildGuard> {
    let command = |args: &[&str]| -> anyhow::Result<std::process::Command> {
        let mut cmd = std::process::Command::new(coracle_tests::binaries::workspace_bin("coracle")?);
        cmd.args(args).env("KUBECONFIG", &env.kubeconfig).env("RUST_LOG", "warn");
        Ok(cmd)
    };
    let (guard, _ca) =
        coracle_tests::harness::install_restore_webhook(&env.sim, env.tmp.path(), &env.nats.url(), command).await?;
    Ok(guard)
}

async fn create_pod(pods: &Api<Pod>, claim: &str) -> anyhow::Result<Pod> {
    Ok(pods.create(&PostParams::default(), &serde_json::from_value(pod(claim))?).await?)
}

fn helper_first(pod: &Pod) -> bool {
    let inits = pod.spec.as_ref().and_then(|s| s.init_containers.as_ref());
    inits.and_then(|c| c.first()).is_some_and(|c| c.name == HELPER_NAME)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_injects_pods_created_right_after_their_entry_and_after_a_nats_restart() -> anyhow::Result<()> {
    let mut env = ApiAndNats::start("admission-cache", OBJECTS).await?;
    let kv: JsonKv<PendingEntry> = JsonKv::open(&env.js, coracle_events::subjects::KV_RESTORES, "pending.").await?;
    let _serve = install_serve(&env).await?;
    let pods: Api<Pod> = Api::namespaced(env.sim.client()?, NAMESPACE);

    // Entry written, pod created at once (plan-restore, then a controller), several times over.
    for i in 0..8 {
        let claim = format!("data-{i}");
        kv.create(&key(&claim), &entry(&claim, RESTORE_UID)).await?;
        let created = create_pod(&pods, &claim).await?;
        assert!(helper_first(&created), "pod {i} created right after its entry was not injected");
        let owned = created.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION_OWNED)).cloned();
        assert_eq!(owned.as_deref(), Some("data"), "pod {i} restores its volume");
    }
    // Nothing pending for the claim: not injected.
    assert!(!helper_first(&create_pod(&pods, "never-restored").await?));

    // A pending entry finished at once, and a claimed one finished a while ago: not injected.
    kv.create(&key("short-lived"), &entry("short-lived", RESTORE_UID)).await?;
    for claim in ["short-lived", "data-0"] {
        kv.modify(&key(claim), |e| {
            e.state = EntryState::Completed;
            true
        })
        .await?;
    }
    assert!(!helper_first(&create_pod(&pods, "short-lived").await?), "a finished pending entry injected");
    // The claimed entry's change reaches the copy within the watch's lag (milliseconds).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!helper_first(&create_pod(&pods, "data-0").await?), "a finished claimed entry injected");

    // NATS restarted: entries written afterwards are still seen, right away and later.
    env.nats.restart()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    loop {
        i += 1;
        let claim = format!("after-restart-{i}");
        let written = kv.create(&key(&claim), &entry(&claim, RESTORE_UID)).await;
        if written.is_err() && Instant::now() < deadline {
            // The test's own connection is still reconnecting.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        written?;
        assert!(helper_first(&create_pod(&pods, &claim).await?), "{claim} not injected after the restart");
        if i >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}

/// The watch works under the NATS user `coracle serve` runs as (deploy/nats/accounts.conf): its
/// consumer delivers to an inbox, the only thing that user may subscribe to.
#[tokio::test]
async fn the_watch_runs_as_the_functions_nats_user() -> anyhow::Result<()> {
    let nats = NatsServer::start_with_accounts()?;
    let url = nats.url_as("coracle-functions")?;
    let client = coracle_events::nats_auth::connect_options(&url).connect(&url).await?;
    let js = async_nats::jetstream::new(client.clone());
    coracle_events::bootstrap::ensure(&js).await?;
    let kv: JsonKv<PendingEntry> = JsonKv::open(&js, coracle_events::subjects::KV_RESTORES, "pending.").await?;
    let watched = WatchedPending::start(client, js, kv.clone()).await.map_err(anyhow::Error::msg)?;
    kv.create(&key("data"), &entry("data", RESTORE_UID)).await?;
    wait_cached(&watched, &key("data"), Duration::from_secs(10)).await?;
    let answer = review(&watched, &HelperSettings::from(&Settings::default()), &admission_review("data")).await;
    assert_eq!(injected(&answer)?, Some((RESTORE_UID.to_string(), true)), "{answer}");
    Ok(())
}
