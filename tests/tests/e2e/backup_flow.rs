//! The backup path end to end, with real parts: a real nats-server, real restic, the real
//! `coracle` and `coracle-volume-job` binaries, and the simulated Kubernetes API over HTTP.
//!
//! backup.requested → plan-backup (NATS consumer) → Jobs in the API → the simulated cluster runs
//! them: each index a process in its own mount namespace reading the node's pods tree, where the
//! pods' volumes hold real files (CSI PV with `mount/`, emptyDir, NFS PV) → snapshots in
//! per-namespace repositories → progress and completion events → record-result → exactly one
//! backup.completed. Then duplicates, then a re-created pod.

use anyhow::Context as _;
use coracle_events::publish::Publisher;
use coracle_events::{subjects, BackupCompleted, BackupPhase, BackupRequest, VolumeBackupProgress};
use coracle_functions::jobs::backup_job_name;
use coracle_tests::harness::{messages, snapshot_tags, write_file, Harness};
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use std::collections::BTreeMap;

const WEB_UID: &str = "3e9f6a52-5555-4555-8555-000000000001";
const WEB_UID_2: &str = "3e9f6a52-5555-4555-8555-000000000003";
const FILES_UID: &str = "3e9f6a52-5555-4555-8555-000000000002";
const WEB_PV: &str = "pvc-3f1c9b52-web-data";
const WEB_PVC_UID: &str = "7a4b0a11-2222-4222-8222-000000000001";

async fn start() -> anyhow::Result<Harness> {
    let h =
        Harness::start("backup-flow", include_str!("../../fixtures/backup-flow.yaml"), &["node-1", "node-2"]).await?;
    // Real files: in the PVs' storage (mounted into the pods' volume directories on their nodes) and in the
    // web pod's emptyDir.
    let web = h.pv_data_dir(WEB_PV)?;
    write_file(&web.join("index.html"), b"<h1>shop</h1>\n")?;
    write_file(&web.join("assets/app.js"), "console.log(1);\n".repeat(500).as_bytes())?;
    write_file(&h.pv_data_dir("nfs-media-share")?.join("movies/list.txt"), b"heat\nronin\n")?;
    h.wait_running("shop", "web-6d4cf56db6-x7k2p").await?;
    h.wait_running("media", "files-0").await?;
    let share = h.volume_dir("node-2", FILES_UID, "kubernetes.io~nfs", "nfs-media-share")?;
    let seen = std::fs::read_to_string(h.cluster.node_view("node-2", &share.join("movies/list.txt"))?)?;
    assert_eq!(seen, "heat\nronin\n", "node-2 sees the NFS PV's data in the pod's volume directory");
    write_file(
        &h.volume_dir("node-1", WEB_UID, "kubernetes.io~empty-dir", "cache")?.join("entry-1"),
        b"cached page\n",
    )?;
    Ok(h)
}

fn request(name: &str) -> BackupRequest {
    BackupRequest { name: name.into(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_flow_end_to_end_with_duplicates_and_a_recreated_pod() -> anyhow::Result<()> {
    let flow = start().await?;
    flow.coracle(&["setup", "nats", "--nats", &flow.nats.url()])?;
    let js = flow.js().await?;

    // 1. The request, planned by the NATS-driven function.
    flow.request(request("nightly"), "req-nightly").await?;
    flow.sim.clear_requests();
    flow.drain("plan-backup")?;
    let jobs = flow.jobs()?;
    assert_eq!(jobs.len(), 2, "one Job per node");
    let planned = messages(&js, subjects::BACKUP_PLANNED).await?;
    assert_eq!(planned.len(), 1);
    let planned: Value = serde_json::from_slice(&planned[0])?;
    let uid = planned["data"]["backup"]["uid"].as_str().context("uid")?.to_string();
    assert_eq!(planned["data"]["volumes"].as_array().map(Vec::len), Some(3));
    let names: Vec<String> = jobs.iter().filter_map(|j| j.metadata.name.clone()).collect();
    assert!(names.contains(&backup_job_name(&uid, "node-1")) && names.contains(&backup_job_name(&uid, "node-2")));
    // Pods were listed per namespace, never fetched one by one.
    let requests = flow.sim.requests();
    assert!(requests.iter().any(|r| r.is_list_of("pods")));
    assert!(!requests.iter().any(|r| r.is_get_of("pods")), "no GET per pod");
    let node1 = jobs.iter().find(|j| j.metadata.name.as_deref() == Some(backup_job_name(&uid, "node-1").as_str()));
    let spec = node1.and_then(|j| j.spec.clone()).context("node-1 job spec")?;
    assert_eq!((spec.completions, spec.parallelism, spec.backoff_limit_per_index), (Some(2), Some(2), Some(1)));
    let spec_text = serde_json::to_string(&spec)?;
    assert!(!spec_text.contains(&flow.master_key), "the master key never appears in a Job spec");

    // 2. The Jobs run on their nodes; results are recorded.
    flow.run_jobs_of(&uid).await?;
    flow.drain("record-result")?;
    let record = flow.describe("nightly")?;
    assert_eq!(record["phase"], "Completed", "{record:#}");
    let vols = record["volumes"].as_object().context("volumes")?;
    assert_eq!(vols.len(), 3);
    assert!(vols.values().all(|v| v["status"] == "Completed" && v["snapshotId"].is_string()), "{record:#}");

    // Snapshots with Coracle's tags, in per-namespace repositories, holding the files at their root.
    let shop = flow.snapshots("shop")?;
    let media = flow.snapshots("media")?;
    assert_eq!((shop.len(), media.len()), (2, 1));
    let data_snap =
        shop.iter().find(|s| snapshot_tags(s).get("volume").map(String::as_str) == Some("data")).context("data")?;
    let t = snapshot_tags(data_snap);
    assert_eq!(t.get("backup").map(String::as_str), Some("nightly"));
    assert_eq!(t.get("backup-uid"), Some(&uid));
    assert_eq!(t.get("pvc").map(String::as_str), Some("web-data"));
    assert_eq!(t.get("identity").cloned(), Some(format!("pvc/{WEB_PVC_UID}")));
    assert_eq!(data_snap["hostname"], "shop");
    let data_id = data_snap["id"].as_str().context("id")?.to_string();
    // The completed backup's snapshots are the parent hints of the next one.
    let hints = parent_hints(&js, "shop").await?;
    assert_eq!(hints.get(&format!("pvc/{WEB_PVC_UID}")).map(String::as_str), Some(data_id.as_str()), "{hints:?}");
    assert_eq!(hints.len(), 2, "both shop volumes: {hints:?}");
    assert_eq!(flow.restic("shop", &["dump", &data_id, "/index.html"])?, "<h1>shop</h1>\n");
    let listing = flow.restic("shop", &["ls", &data_id])?;
    assert!(!listing.contains("vol_data.json"), "only the CSI mount directory is backed up:\n{listing}");
    let cache_id = shop
        .iter()
        .find(|s| snapshot_tags(s).get("volume").map(String::as_str) == Some("cache"))
        .and_then(|s| s["id"].as_str())
        .context("cache")?
        .to_string();
    assert_eq!(
        flow.restic("media", &["dump", media[0]["id"].as_str().context("id")?, "/movies/list.txt"])?,
        "heat\nronin\n"
    );

    // Progress and exactly one completion.
    let progress = messages(&js, subjects::VOLUME_BACKUP_PROGRESS).await?;
    let progress_volumes: std::collections::BTreeSet<String> = progress
        .iter()
        .filter_map(|p| coracle_events::envelope::decode::<VolumeBackupProgress>(p).ok())
        .map(|e| e.data.volume)
        .collect();
    assert_eq!(progress_volumes.len(), 3, "progress for every volume");
    assert_eq!(messages(&js, subjects::VOLUME_BACKUP_COMPLETED).await?.len(), 3);
    let completed = messages(&js, subjects::BACKUP_COMPLETED).await?;
    assert_eq!(completed.len(), 1);
    let completed = coracle_events::envelope::decode::<BackupCompleted>(&completed[0])?;
    assert_eq!((completed.data.phase, completed.data.volumes_completed), (BackupPhase::Completed, 3));

    // 3. Every event again, twice, as redeliveries (new message ids, same CloudEvents).
    let publisher = Publisher::new(js.clone());
    for subject in [subjects::BACKUP_REQUESTED, subjects::VOLUME_BACKUP_COMPLETED] {
        for (i, payload) in messages(&js, subject).await?.into_iter().enumerate() {
            for round in 0..2 {
                publisher.publish_raw(subject, &format!("redelivery-{subject}-{i}-{round}"), payload.clone()).await?;
            }
        }
    }
    flow.drain("plan-backup")?;
    flow.drain("record-result")?;
    assert_eq!(flow.jobs()?.len(), 2, "no second Job");
    assert_eq!(messages(&js, subjects::BACKUP_PLANNED).await?.len(), 1);
    assert_eq!(messages(&js, subjects::BACKUP_COMPLETED).await?.len(), 1, "still exactly one completion");
    assert_eq!(flow.describe("nightly")?, record, "the record is unchanged");
    assert_eq!(flow.snapshots("shop")?.len(), 2);

    // 4. The web pod is re-created with a new uid; the PV keeps its data, the emptyDir is new.
    let pods = flow.sim.client()?;
    let api: kube::Api<Pod> = kube::Api::namespaced(pods, "shop");
    let mut pod = api.get("web-6d4cf56db6-x7k2p").await?;
    api.delete("web-6d4cf56db6-x7k2p", &Default::default()).await?;
    pod.metadata.name = Some("web-6d4cf56db6-q9w8e".into());
    pod.metadata.uid = Some(WEB_UID_2.into());
    pod.metadata.resource_version = None;
    pod.status = None;
    flow.sim.store().put_as(&pod)?;
    flow.wait_running("shop", "web-6d4cf56db6-q9w8e").await?;
    let new_csi = flow.volume_dir("node-1", WEB_UID_2, "kubernetes.io~csi", WEB_PV)?;
    let seen = std::fs::read_to_string(flow.cluster.node_view("node-1", &new_csi.join("mount/index.html"))?)?;
    assert_eq!(seen, "<h1>shop</h1>\n", "the new pod's volume holds the PV's data");
    let new_cache = flow.volume_dir("node-1", WEB_UID_2, "kubernetes.io~empty-dir", "cache")?;
    assert!(new_cache.is_dir() && std::fs::read_dir(&new_cache)?.next().is_none(), "a new, empty emptyDir");
    write_file(&new_cache.join("entry-1"), b"cached page\n")?;
    write_file(&flow.pv_data_dir(WEB_PV)?.join("new.txt"), b"added later\n")?;
    let old = flow.cluster.pods_root("node-1")?.join(WEB_UID);
    flow.cluster
        .wait_for("the deleted pod's directory to go", std::time::Duration::from_secs(20), |_| {
            Ok((!old.exists()).then_some(()))
        })
        .await?;

    flow.request(request("nightly-2"), "req-nightly-2").await?;
    flow.drain("plan-backup")?;
    let second_uid = flow.describe("nightly-2")?["backup"]["uid"].as_str().context("uid")?.to_string();
    // plan-backup handed the Job on node-1 the first backup's snapshot as the PVC's parent.
    let job = flow.jobs()?.into_iter().find(|j| j.metadata.name == Some(backup_job_name(&second_uid, "node-1")));
    let env = job.and_then(|j| j.spec?.template.spec?.containers.first()?.env.clone()).context("job env")?;
    let given = env.iter().find(|e| e.name == "CORACLE_PARENTS").and_then(|e| e.value.clone()).context("hints")?;
    let given: BTreeMap<String, String> = serde_json::from_str(&given)?;
    assert_eq!(given.get(&format!("pvc/{WEB_PVC_UID}")), Some(&data_id), "{given:?}");
    flow.run_jobs_of(&second_uid).await?;
    flow.drain("record-result")?;
    assert_eq!(flow.describe("nightly-2")?["phase"], "Completed");
    let shop = flow.snapshots("shop")?;
    let second = |volume: &str| {
        shop.iter()
            .find(|s| {
                snapshot_tags(s).get("backup").map(String::as_str) == Some("nightly-2")
                    && snapshot_tags(s).get("volume").map(String::as_str) == Some(volume)
            })
            .cloned()
            .context("second snapshot")
    };
    let data2 = second("data")?;
    assert_eq!(snapshot_tags(&data2).get("pod-uid").map(String::as_str), Some(WEB_UID_2));
    assert_eq!(data2["parent"].as_str(), Some(data_id.as_str()), "the PVC's chain survives pod re-creation");
    assert_eq!(second("cache")?["parent"].as_str(), Some(cache_id.as_str()), "so does the emptyDir's");
    assert_eq!(flow.restic("shop", &["dump", data2["id"].as_str().context("id")?, "/new.txt"])?, "added later\n");
    let hints = parent_hints(&js, "shop").await?;
    assert_eq!(hints.get(&format!("pvc/{WEB_PVC_UID}")).map(String::as_str), data2["id"].as_str(), "the newer wins");
    drop(flow);
    Ok(())
}

/// The parent hints plan-backup reads for a namespace (identity → snapshot id).
async fn parent_hints(
    js: &async_nats::jetstream::Context,
    namespace: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let kv = js.get_key_value(subjects::KV_PARENTS).await?;
    let doc: Value = serde_json::from_slice(&kv.get(namespace).await?.context("no hints")?)?;
    let parents = doc["parents"].as_object().context("parents")?;
    Ok(parents.iter().filter_map(|(k, v)| Some((k.clone(), v["snapshotId"].as_str()?.to_string()))).collect())
}
