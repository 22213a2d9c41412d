//! The simulated cluster's Job controller and node loss, with real processes: an Indexed Job whose index fails
//! once and succeeds on retry, parallelism, deadlines, backoff limits, and nodes that stop or vanish mid-Job.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use coracle_tests::binaries::scratch_dir;
use coracle_tests::kubelet::{Cluster, ClusterConfig, JobOutcome, TAINT_UNREACHABLE};
use coracle_tests::process::pid_alive;
use coracle_tests::sim::SimServer;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};

const WAIT: Duration = Duration::from_secs(60);
const OBJECTS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: batch}\n";

struct Sim {
    cluster: Cluster,
    sim: SimServer,
    _dir: tempfile::TempDir,
}

async fn sim(name: &str, nodes: &[&str], tune: impl FnOnce(&mut ClusterConfig)) -> anyhow::Result<Sim> {
    let dir = scratch_dir(name)?;
    let sim = SimServer::start(OBJECTS).await?;
    let mut config = ClusterConfig::new(dir.path().join("cluster"), nodes)?;
    tune(&mut config);
    let cluster = Cluster::start(&sim, config)?;
    Ok(Sim { cluster, sim, _dir: dir })
}

impl Sim {
    fn pods_of(&self, job: &str) -> anyhow::Result<Vec<Pod>> {
        Ok(self
            .sim
            .store()
            .list_as::<Pod>(Some("batch"))?
            .into_iter()
            .filter(|p| p.metadata.labels.as_ref().and_then(|l| l.get("job-name")).map(String::as_str) == Some(job))
            .collect())
    }

    fn job(&self, name: &str) -> anyhow::Result<Job> {
        self.sim.store().get_as::<Job>("batch", name)?.context("job")
    }

    async fn create_job(&self, yaml: &str) -> anyhow::Result<()> {
        let job: Job = serde_yaml::from_str(yaml)?;
        Api::<Job>::namespaced(self.sim.client()?, "batch").create(&PostParams::default(), &job).await?;
        Ok(())
    }

    fn finish(self) {
        let pids = self.cluster.pids();
        self.cluster.shutdown();
        for pid in pids {
            assert!(!pid_alive(pid), "pid {pid} outlived the cluster");
        }
    }
}

/// Every version of every pod in `batch` from now on, as a watch delivers them (pods of finished Jobs are
/// deleted, so their last states are only seen this way).
struct PodHistory {
    seen: std::sync::Arc<std::sync::Mutex<Vec<Pod>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PodHistory {
    async fn start(s: &Sim) -> anyhow::Result<Self> {
        use futures::StreamExt as _;
        let api: Api<Pod> = Api::namespaced(s.sim.client()?, "batch");
        let mut stream = api.watch(&kube::api::WatchParams::default(), "0").await?.boxed();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(event)) = stream.next().await {
                if let kube::api::WatchEvent::Added(p) | kube::api::WatchEvent::Modified(p) = event {
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(p);
                }
            }
        });
        Ok(Self { seen, task })
    }

    /// The versions seen so far of the pods of `job`.
    fn of(&self, job: &str) -> Vec<Pod> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter()
            .filter(|p| p.metadata.labels.as_ref().and_then(|l| l.get("job-name")).map(String::as_str) == Some(job))
            .cloned()
            .collect()
    }
}

impl Drop for PodHistory {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn status_of(job: &Job) -> k8s_openapi::api::batch::v1::JobStatus {
    job.status.clone().unwrap_or_default()
}

fn conditions(job: &Job) -> Vec<(String, String, Option<String>)> {
    status_of(job).conditions.unwrap_or_default().into_iter().map(|c| (c.type_, c.status, c.reason)).collect()
}

fn has_condition(job: &Job, kind: &str, reason: &str) -> bool {
    conditions(job).iter().any(|(k, s, r)| k == kind && s == "True" && r.as_deref() == Some(reason))
}

fn phase(pod: &Pod) -> String {
    pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default()
}

fn annotation(pod: &Pod, key: &str) -> Option<String> {
    pod.metadata.annotations.as_ref()?.get(key).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexed_job_retries_a_failed_index_and_completes() -> anyhow::Result<()> {
    let s = sim("jobs-indexed", &["node-1"], |_| {}).await?;
    let job: Job = serde_yaml::from_str(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: volumes, namespace: batch}
spec:
  completionMode: Indexed
  completions: 3
  parallelism: 2
  backoffLimitPerIndex: 1
  podReplacementPolicy: Failed
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: worker
        image: busybox
        command:
        - sh
        - -c
        - |
          sleep 0.5
          if [ "$JOB_COMPLETION_INDEX" = 1 ] && [ "$FAILURES" = 0 ]; then echo "index 1 fails once" > /dev/termination-log; exit 3; fi
          echo "index $JOB_COMPLETION_INDEX done after $FAILURES failures" > /dev/termination-log
        env:
        - {name: FAILURES, valueFrom: {fieldRef: {fieldPath: "metadata.annotations['batch.kubernetes.io/job-index-failure-count']"}}}
"#,
    )?;
    // Watch the Job while it runs: never more than `parallelism` pods at once.
    let watcher = {
        let store = s.sim.store().clone();
        tokio::spawn(async move {
            let mut most = 0;
            for _ in 0..600 {
                let status = store.get_as::<Job>("batch", "volumes").ok().flatten().and_then(|j| j.status);
                if status.as_ref().is_some_and(|s| s.completion_time.is_some()) {
                    break;
                }
                let active = status.and_then(|s| s.active).unwrap_or(0);
                let running = store
                    .list_as::<Pod>(Some("batch"))
                    .unwrap_or_default()
                    .iter()
                    .filter(|p| matches!(phase(p).as_str(), "Pending" | "Running"))
                    .count();
                most = most.max(active).max(running as i32);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            most
        })
    };
    let outcome: JobOutcome = s.cluster.run_job(&job, WAIT).await?;
    assert!(outcome.complete(), "{}", outcome.describe());
    let status = status_of(&outcome.job);
    assert_eq!((status.succeeded, status.failed), (Some(3), Some(1)), "{status:#?}");
    assert_eq!(status.completed_indexes.as_deref(), Some("0-2"));
    assert_eq!(status.failed_indexes.as_deref(), Some(""));
    assert_eq!(status.active, Some(0));
    assert!(status.start_time.is_some() && status.completion_time.is_some());
    assert!(has_condition(&outcome.job, "SuccessCriteriaMet", "CompletionsReached"));
    assert!(has_condition(&outcome.job, "Complete", "CompletionsReached"));
    let attempts: Vec<(i32, usize, bool)> =
        outcome.indexes.iter().map(|i| (i.index, i.attempts, i.succeeded)).collect();
    assert_eq!(attempts, [(0, 1, true), (1, 2, true), (2, 1, true)]);
    assert_eq!(outcome.indexes[1].termination_message, "index 1 done after 1 failures\n");

    let pods = s.pods_of("volumes")?;
    assert_eq!(pods.len(), 4);
    let uid = outcome.job.metadata.uid.clone().unwrap_or_default();
    for pod in &pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let index = annotation(pod, "batch.kubernetes.io/job-completion-index").context("index annotation")?;
        let prefix = format!("volumes-{index}-");
        assert!(name.starts_with(&prefix) && name.len() == prefix.len() + 5, "{name}");
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        for (key, value) in [
            ("job-name", "volumes"),
            ("batch.kubernetes.io/job-name", "volumes"),
            ("controller-uid", uid.as_str()),
            ("batch.kubernetes.io/controller-uid", uid.as_str()),
            ("batch.kubernetes.io/job-completion-index", index.as_str()),
        ] {
            assert_eq!(labels.get(key).map(String::as_str), Some(value), "{name}: {key}");
        }
        assert!(
            pod.metadata.finalizers.as_ref().is_none_or(|f| f.is_empty()),
            "counted pods lose the tracking finalizer"
        );
    }
    let index_1: BTreeSet<(String, String)> = pods
        .iter()
        .filter(|p| annotation(p, "batch.kubernetes.io/job-completion-index").as_deref() == Some("1"))
        .map(|p| (annotation(p, "batch.kubernetes.io/job-index-failure-count").unwrap_or_default(), phase(p)))
        .collect();
    assert_eq!(index_1, [("0".to_string(), "Failed".to_string()), ("1".to_string(), "Succeeded".to_string())].into());
    let most = watcher.await?;
    assert!((1..=2).contains(&most), "at most parallelism=2 pods at a time, saw {most}");
    s.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_and_backoff_limits_fail_jobs_and_pods() -> anyhow::Result<()> {
    let s = sim("jobs-deadline", &["node-1"], |_| {}).await?;
    let history = PodHistory::start(&s).await?;
    let started = Instant::now();
    s.create_job(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: slow, namespace: batch}
spec:
  activeDeadlineSeconds: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: worker, image: busybox, command: [sleep, "300"]}]
"#,
    )
    .await?;
    s.create_job(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: flaky, namespace: batch}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers: [{name: worker, image: busybox, command: [sh, -c, 'exit 1']}]
"#,
    )
    .await?;
    let pod_deadline: Pod = serde_yaml::from_str(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: bounded, namespace: batch}\nspec:\n  activeDeadlineSeconds: 1\n  \
         restartPolicy: Never\n  containers: [{name: app, image: busybox, command: [sleep, '300']}]\n",
    )?;
    Api::<Pod>::namespaced(s.sim.client()?, "batch").create(&PostParams::default(), &pod_deadline).await?;

    let slow = s.cluster.wait_job("batch", "slow", WAIT).await?;
    assert!(started.elapsed() < Duration::from_secs(20), "the deadline, not the sleep, ended it");
    assert!(has_condition(&slow.job, "FailureTarget", "DeadlineExceeded"), "{:?}", conditions(&slow.job));
    assert!(has_condition(&slow.job, "Failed", "DeadlineExceeded"), "{:?}", conditions(&slow.job));
    // The running pod was stopped (SIGTERM) and, counted as failed, deleted with the Job's failure.
    let versions = history.of("slow");
    let last = versions.iter().rev().find(|p| phase(p) == "Failed").context("the pod's Failed state")?;
    let exit = last.status.as_ref().and_then(|s| s.container_statuses.clone()).unwrap_or_default()[0]
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .map(|t| t.exit_code);
    assert_eq!(exit, Some(128 + 15), "stopped by SIGTERM");
    assert!(last.metadata.deletion_timestamp.is_some(), "deleted by the Job controller");
    assert!(s.pods_of("slow")?.is_empty());
    assert_eq!(status_of(&slow.job).failed, Some(1));

    let flaky = s.cluster.wait_job("batch", "flaky", WAIT).await?;
    assert!(has_condition(&flaky.job, "Failed", "BackoffLimitExceeded"), "{:?}", conditions(&flaky.job));
    assert_eq!(status_of(&flaky.job).failed, Some(2), "the first try and one retry");
    assert_eq!(flaky.indexes.len(), 1);
    assert_eq!((flaky.indexes[0].index, flaky.indexes[0].attempts), (-1, 2));

    let bounded = s.cluster.wait_pod("batch", "bounded", WAIT, |p| phase(p) == "Failed").await?;
    let status = bounded.status.context("status")?;
    assert_eq!(status.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(status.message.as_deref(), Some("Pod was active on the node longer than the specified deadline"));
    assert_eq!(s.cluster.pids().len(), 1, "only the node's namespace holder is left running");
    s.finish();
    Ok(())
}

/// A Job pinned to `node` (as Coracle's are, by required node affinity on the hostname, tolerating every
/// taint), whose two indexes run until killed.
fn pinned_job(name: &str, node: &str, per_index: i32, deadline: i64) -> String {
    format!(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {{name: {name}, namespace: batch}}
spec:
  completionMode: Indexed
  completions: 2
  parallelism: 2
  backoffLimitPerIndex: {per_index}
  activeDeadlineSeconds: {deadline}
  podReplacementPolicy: Failed
  template:
    spec:
      restartPolicy: Never
      tolerations: [{{operator: Exists}}]
      affinity: {{nodeAffinity: {{requiredDuringSchedulingIgnoredDuringExecution: {{nodeSelectorTerms: [{{matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [{node}]}}]}}]}}}}}}
      containers: [{{name: worker, image: busybox, command: [sleep, "300"]}}]
"#
    )
}

fn fast_node_loss(config: &mut ClusterConfig) {
    config.timing.heartbeat = Duration::from_millis(200);
    config.timing.node_monitor_grace = Duration::from_secs(2);
    config.timing.pod_gc_quarantine = Duration::from_millis(300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_vanishing_mid_job_fails_its_pods_with_node_lost() -> anyhow::Result<()> {
    let s = sim("jobs-vanish", &["node-1", "node-2"], fast_node_loss).await?;
    let history = PodHistory::start(&s).await?;
    s.create_job(&pinned_job("on-two", "node-2", 1, 6)).await?;
    s.create_job(&pinned_job("on-one", "node-1", 0, 300)).await?;
    let running = |job: &'static str| {
        let pods = &s;
        move |_: &coracle_tests::sim::Store| {
            let n = pods.pods_of(job)?.iter().filter(|p| phase(p) == "Running").count();
            Ok((n == 2).then_some(()))
        }
    };
    s.cluster.wait_for("both pods of on-two running", WAIT, running("on-two")).await?;
    s.cluster.wait_for("both pods of on-one running", WAIT, running("on-one")).await?;
    let node2_pids: Vec<u32> = s.cluster.pids();
    s.cluster.vanish_node("node-2")?;

    // Its processes are gone at once; its pods end Failed, NodeLost, with a DisruptionTarget condition.
    let left: Vec<u32> = s.cluster.pids();
    assert!(left.len() < node2_pids.len(), "node-2's processes were killed");
    let lost = s
        .cluster
        .wait_for("node-2's pods to fail", WAIT, |_| {
            let failed: Vec<Pod> = history.of("on-two").into_iter().filter(|p| phase(p) == "Failed").collect();
            let names: BTreeSet<String> = failed.iter().filter_map(|p| p.metadata.name.clone()).collect();
            Ok((names.len() >= 2).then_some(failed))
        })
        .await?;
    for pod in &lost {
        let status = pod.status.clone().context("status")?;
        assert_eq!(status.reason.as_deref(), Some("NodeLost"));
        let message = status.message.unwrap_or_default();
        assert!(
            message.starts_with("Node node-2 which was running pod ") && message.ends_with(" is unresponsive"),
            "{message}"
        );
        let disruption = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "DisruptionTarget")
            .context("DisruptionTarget")?;
        assert_eq!((disruption.status.as_str(), disruption.reason.as_deref()), ("True", Some("DeletionByPodGC")));
    }

    // Each index is retried once (backoffLimitPerIndex 1), but nothing can run on node-2 any more: the
    // replacements stay Pending, unschedulable, until the Job's deadline fails it.
    let replacements = s
        .cluster
        .wait_for("unschedulable replacements", WAIT, |_| {
            let pods = s.pods_of("on-two")?;
            let waiting: Vec<Pod> = pods
                .into_iter()
                .filter(|p| annotation(p, "batch.kubernetes.io/job-index-failure-count").as_deref() == Some("1"))
                .filter(|p| {
                    let conditions = p.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
                    conditions.iter().any(|c| c.type_ == "PodScheduled" && c.status == "False")
                })
                .collect();
            Ok((waiting.len() == 2).then_some(waiting))
        })
        .await?;
    let indexes: BTreeSet<String> =
        replacements.iter().filter_map(|p| annotation(p, "batch.kubernetes.io/job-completion-index")).collect();
    assert_eq!(indexes, ["0".to_string(), "1".to_string()].into(), "one replacement per index");
    for pod in &replacements {
        assert_eq!(phase(pod), "Pending");
        let scheduled = pod.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
        let scheduled = scheduled.iter().find(|c| c.type_ == "PodScheduled").context("PodScheduled")?;
        assert_eq!(scheduled.reason.as_deref(), Some("Unschedulable"));
        assert_eq!(
            scheduled.message.as_deref(),
            Some("0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.")
        );
    }
    let outcome = s.cluster.wait_job("batch", "on-two", WAIT).await?;
    assert!(has_condition(&outcome.job, "Failed", "DeadlineExceeded"), "{}", outcome.describe());
    let status = status_of(&outcome.job);
    assert_eq!((status.failed, status.succeeded, status.completed_indexes.as_deref()), (Some(4), Some(0), Some("")));
    assert_eq!(status.failed_indexes.as_deref(), Some(""), "the indexes did not exhaust their retries");

    // The other node's Job is untouched.
    let other = s.pods_of("on-one")?;
    assert!(other.iter().all(|p| phase(p) == "Running"), "node-1's pods keep running");
    assert!(s.job("on-one")?.status.and_then(|s| s.conditions).unwrap_or_default().is_empty());
    s.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_goes_unknown_and_its_job_waits_for_the_node_to_go() -> anyhow::Result<()> {
    let s = sim("jobs-stop", &["node-1", "node-2"], fast_node_loss).await?;
    s.create_job(&pinned_job("stuck", "node-2", 0, 3)).await?;
    // A pod that tolerates the unreachable taint for one second only: the taint manager evicts it.
    let evictable: Pod = serde_yaml::from_str(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: short-tolerance, namespace: batch}\nspec:\n  nodeName: node-2\n  \
         tolerations: [{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 1}]\n  \
         containers: [{name: app, image: busybox, command: [sleep, '300']}]\n",
    )?;
    Api::<Pod>::namespaced(s.sim.client()?, "batch").create(&PostParams::default(), &evictable).await?;
    s.cluster
        .wait_for("the pods on node-2 to run", WAIT, |store| {
            let pods = store.list_as::<Pod>(Some("batch"))?;
            Ok((pods.iter().filter(|p| phase(p) == "Running").count() == 3).then_some(()))
        })
        .await?;
    s.cluster.stop_node("node-2")?;

    let node = s
        .cluster
        .wait_for("node-2 to become Unknown", WAIT, |store| {
            let node = store.get_as::<Node>("", "node-2")?.context("node-2")?;
            let ready = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready").cloned());
            Ok(ready.filter(|r| r.status == "Unknown").map(|_| node))
        })
        .await?;
    let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
    let effects: BTreeSet<String> =
        taints.iter().filter(|t| t.key == TAINT_UNREACHABLE).map(|t| t.effect.clone()).collect();
    assert_eq!(effects, ["NoExecute".to_string(), "NoSchedule".to_string()].into());
    let node1 = s.sim.store().get_as::<Node>("", "node-1")?.context("node-1")?;
    assert!(node1.spec.and_then(|s| s.taints).unwrap_or_default().is_empty(), "node-1 keeps posting its status");

    s.cluster
        .wait_for("the taint manager to evict the short-tolerance pod", WAIT, |store| {
            Ok(store.get_as::<Pod>("batch", "short-tolerance")?.is_none().then_some(()))
        })
        .await?;

    // The Job's deadline passes: it wants its pods gone, but nothing on node-2 can terminate them.
    let target = s
        .cluster
        .wait_for("the Job's FailureTarget", WAIT, |store| {
            let job = store.get_as::<Job>("batch", "stuck")?.context("job")?;
            Ok(has_condition(&job, "FailureTarget", "DeadlineExceeded").then_some(job))
        })
        .await?;
    assert!(!has_condition(&target, "Failed", "DeadlineExceeded"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pods = s.pods_of("stuck")?;
    assert_eq!(pods.len(), 2);
    assert!(
        pods.iter().all(|p| p.metadata.deletion_timestamp.is_some() && phase(p) == "Running"),
        "terminating, never terminated"
    );
    assert!(!has_condition(&s.job("stuck")?, "Failed", "DeadlineExceeded"), "no Failed while pods may still run");

    // The machine is then deleted from the cloud: pod GC fails the pods and the Job completes its failure.
    s.sim.store().delete("nodes", "", "node-2")?;
    let outcome = s.cluster.wait_job("batch", "stuck", WAIT).await?;
    assert!(has_condition(&outcome.job, "Failed", "DeadlineExceeded"), "{}", outcome.describe());
    assert!(outcome.indexes.iter().all(|i| i.reason.as_deref() == Some("NodeLost")), "{}", outcome.describe());
    s.finish();
    Ok(())
}
