//! How a backup Job looks: one Indexed Job per (backup, node), one index per volume.
//!
//! Pure: builds `batch/v1` Job objects from a plan; creating them is the Kubernetes adapter's job.
//! Names are derived from the backup uid and the node so a duplicated request maps onto the
//! same Job (AlreadyExists is success). No secret value is ever placed in the spec: the master
//! key and repository credentials are referenced by Secret name only.

use crate::settings::Settings;
use coracle_events::{BackupRef, PlannedVolume, RestoreRef, RestoreVolume};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, EmptyDirVolumeSource, EnvFromSource, EnvVar, EnvVarSource, HostPathVolumeSource,
    NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectFieldSelector, PodSecurityContext,
    PodSpec, PodTemplateSpec, ResourceRequirements, SecretEnvSource, SecretKeySelector, SecurityContext, Toleration,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;

/// Where the node's kubelet pods directory is mounted inside a Job's container.
pub const PODS_MOUNT: &str = "/host/pods";
/// Where a restore Job mounts its target pod's own directory.
pub const POD_MOUNT: &str = "/host/pod";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_BACKUP_UID: &str = "coracle.dev/backup-uid";
pub const LABEL_RESTORE_UID: &str = "coracle.dev/restore-uid";
pub const LABEL_OPERATION: &str = "coracle.dev/operation";
pub const ANNOTATION_BACKUP_NAME: &str = "coracle.dev/backup-name";
pub const ANNOTATION_RESTORE_NAME: &str = "coracle.dev/restore-name";
pub const ANNOTATION_NODE: &str = "coracle.dev/node";
/// Set by Kubernetes on pods of Jobs with `backoffLimitPerIndex`; tells the binary its attempt.
const INDEX_FAILURE_COUNT: &str = "metadata.annotations['batch.kubernetes.io/job-index-failure-count']";

/// Deterministic Job name for one backup on one node (a DNS label, ≤ 63 characters).
pub fn backup_job_name(backup_uid: &str, node: &str) -> String {
    let digest = Sha256::digest(format!("{backup_uid}/{node}").as_bytes());
    format!("coracle-backup-{}", &hex::encode(digest)[..20])
}

/// Deterministic Job name for one restore into one pod.
pub fn restore_job_name(restore_uid: &str, pod_uid: &str) -> String {
    let digest = Sha256::digest(format!("restore/{restore_uid}/{pod_uid}").as_bytes());
    format!("coracle-restore-{}", &hex::encode(digest)[..20])
}

/// The Jobs for a plan, one per node, ordered by node name. `expires` (the plan's expiry) is
/// handed to the Job so its snapshots carry it for `coracle catalog rebuild`; `parents` (volume
/// identity → snapshot id, see `crate::parents`) saves each hinted volume a restic run.
pub fn backup_jobs(
    backup: &BackupRef,
    volumes: &[PlannedVolume],
    expires: Option<chrono::DateTime<chrono::Utc>>,
    parents: &BTreeMap<String, String>,
    volume_timeout: Duration,
    settings: &Settings,
) -> Vec<Job> {
    let mut by_node: BTreeMap<&str, Vec<&PlannedVolume>> = BTreeMap::new();
    for v in volumes {
        by_node.entry(v.node.as_str()).or_default().push(v);
    }
    by_node
        .into_iter()
        .map(|(node, vols)| {
            let name = backup_job_name(&backup.uid, node);
            let volumes_json = serde_json::to_string(&vols).unwrap_or_else(|_| "[]".into());
            let mut env = vec![
                env_value("CORACLE_BACKUP_NAME", &backup.name),
                env_value("CORACLE_BACKUP_UID", &backup.uid),
                env_value("CORACLE_JOB_NAME", &name),
                env_value("CORACLE_VOLUMES", &volumes_json),
                env_value("CORACLE_PODS_ROOT", PODS_MOUNT),
            ];
            if let Some(expires) = expires {
                env.push(env_value("CORACLE_BACKUP_EXPIRES", &coracle_volume_job::tags::expires_value(expires)));
            }
            let hints: BTreeMap<&str, &str> = vols
                .iter()
                .filter_map(|v| parents.get(&v.identity).map(|p| (v.identity.as_str(), p.as_str())))
                .collect();
            if !hints.is_empty() {
                env.push(env_value("CORACLE_PARENTS", &serde_json::to_string(&hints).unwrap_or_else(|_| "{}".into())));
            }
            volume_job(
                JobShape {
                    env,
                    name,
                    operation: "backup",
                    uid_label: (LABEL_BACKUP_UID, &backup.uid),
                    annotations: vec![
                        (ANNOTATION_BACKUP_NAME, backup.name.clone()),
                        (ANNOTATION_NODE, node.to_string()),
                    ],
                    node,
                    count: vols.len(),
                    // Backups read the whole pods directory, including mounts made after the Job started.
                    host_path: settings.pods_root(),
                    mount_path: PODS_MOUNT,
                    read_only: true,
                    capabilities: BACKUP_CAPABILITIES,
                },
                volume_timeout,
                settings,
            )
        })
        .collect()
}

/// The restore Job for one pod: it mounts only that pod's directory, read-write.
pub fn restore_job(
    restore: &RestoreRef,
    pod_uid: &str,
    node: &str,
    volumes: &[RestoreVolume],
    volume_timeout: Duration,
    settings: &Settings,
) -> Job {
    let name = restore_job_name(&restore.uid, pod_uid);
    let volumes_json = serde_json::to_string(volumes).unwrap_or_else(|_| "[]".into());
    volume_job(
        JobShape {
            env: vec![
                env_value("CORACLE_RESTORE_NAME", &restore.name),
                env_value("CORACLE_RESTORE_UID", &restore.uid),
                env_value("CORACLE_JOB_NAME", &name),
                env_value("CORACLE_RESTORE_VOLUMES", &volumes_json),
                env_value("CORACLE_POD_DIR", POD_MOUNT),
            ],
            name,
            operation: "restore",
            uid_label: (LABEL_RESTORE_UID, &restore.uid),
            annotations: vec![(ANNOTATION_RESTORE_NAME, restore.name.clone()), (ANNOTATION_NODE, node.to_string())],
            node,
            count: volumes.len(),
            host_path: format!("{}/{pod_uid}", settings.pods_root()),
            mount_path: POD_MOUNT,
            read_only: false,
            capabilities: RESTORE_CAPABILITIES,
        },
        volume_timeout,
        settings,
    )
}

/// What differs between a backup Job and a restore Job.
struct JobShape<'a> {
    name: String,
    operation: &'static str,
    uid_label: (&'static str, &'a str),
    annotations: Vec<(&'static str, String)>,
    node: &'a str,
    count: usize,
    env: Vec<EnvVar>,
    host_path: String,
    mount_path: &'static str,
    read_only: bool,
    /// Capabilities beyond dropping ALL: reading needs DAC_READ_SEARCH; writing files of any
    /// owner back with their owner and mode needs more.
    capabilities: &'static [&'static str],
}

const BACKUP_CAPABILITIES: &[&str] = &["DAC_READ_SEARCH"];
const RESTORE_CAPABILITIES: &[&str] = &["DAC_READ_SEARCH", "DAC_OVERRIDE", "CHOWN", "FOWNER", "FSETID"];

fn volume_job(shape: JobShape<'_>, timeout: Duration, s: &Settings) -> Job {
    let count = i32::try_from(shape.count).unwrap_or(i32::MAX);
    let parallelism = s.per_node_concurrency.clamp(1, count.max(1));
    let per_volume = i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX).max(60);
    // The Job as a whole may take as many rounds as the parallelism needs, each possibly retried.
    let rounds = i64::from((count + parallelism - 1) / parallelism);
    let job_deadline = per_volume.saturating_mul(rounds).saturating_mul(i64::from(s.backoff_limit_per_index) + 1);

    let labels = BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), "coracle".to_string()),
        (shape.uid_label.0.to_string(), shape.uid_label.1.to_string()),
        (LABEL_OPERATION.to_string(), shape.operation.to_string()),
    ]);
    let annotations: BTreeMap<String, String> =
        shape.annotations.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let mut env = shape.env;
    env.extend([
        env_value("CORACLE_REPOSITORY_PREFIX", &s.repository_prefix),
        env_value("CORACLE_BACKOFF_LIMIT_PER_INDEX", &s.backoff_limit_per_index.to_string()),
        env_value("RESTIC_CACHE_DIR", "/cache"),
        EnvVar {
            name: "CORACLE_ATTEMPT".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector { field_path: INDEX_FAILURE_COUNT.into(), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        },
        master_key_env(s),
    ]);
    if !s.nats_url.is_empty() {
        env.push(env_value("CORACLE_NATS_URL", &s.nats_url));
    }
    if !s.key_generations.is_empty() {
        env.push(env_value("CORACLE_KEY_GENERATIONS", &s.key_generations));
    }
    let pods = VolumeMount {
        name: "pods".into(),
        mount_path: shape.mount_path.into(),
        read_only: Some(shape.read_only),
        mount_propagation: Some("HostToContainer".into()),
        ..Default::default()
    };
    // Root with only the capabilities the operation needs (see `JobShape::capabilities`).
    let container = job_container(shape.operation, env, shape.capabilities, vec![pods], s);
    let pod_spec = PodSpec {
        restart_policy: Some("Never".into()),
        service_account_name: Some(s.service_account.clone()),
        // The Job talks to restic and NATS, never to the API server.
        automount_service_account_token: Some(false),
        active_deadline_seconds: Some(per_volume),
        affinity: Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: "kubernetes.io/hostname".into(),
                            operator: "In".into(),
                            values: Some(vec![shape.node.to_string()]),
                        }]),
                        ..Default::default()
                    }],
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        // The volume's pod runs on this node whatever its taints; the Job must too.
        tolerations: Some(vec![Toleration { operator: Some("Exists".into()), ..Default::default() }]),
        security_context: Some(PodSecurityContext {
            seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        containers: vec![container],
        volumes: Some(vec![
            Volume {
                name: "pods".into(),
                host_path: Some(HostPathVolumeSource { path: shape.host_path, type_: Some("Directory".into()) }),
                ..Default::default()
            },
            Volume { name: "cache".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() },
            Volume { name: "tmp".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() },
        ]),
        ..Default::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(shape.name),
            namespace: Some(s.system_namespace.clone()),
            labels: Some(labels.clone()),
            annotations: Some(annotations.clone()),
            ..Default::default()
        },
        spec: Some(JobSpec {
            completion_mode: Some("Indexed".into()),
            completions: Some(count),
            parallelism: Some(parallelism),
            backoff_limit_per_index: Some(s.backoff_limit_per_index),
            active_deadline_seconds: Some(job_deadline),
            ttl_seconds_after_finished: Some(s.ttl_seconds_after_finished),
            // A replacement pod starts only once the failed one is gone: never two writers.
            pod_replacement_policy: Some("Failed".into()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(pod_spec),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// The master key, by reference to its Secret: never a value in the spec.
fn master_key_env(s: &Settings) -> EnvVar {
    EnvVar {
        name: "CORACLE_MASTER_KEY".into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: s.master_key_secret.clone(),
                key: "key".into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The repository backend's credentials (S3, Azure, GCS…) as restic's environment.
fn credentials_env_from(s: &Settings) -> Option<Vec<EnvFromSource>> {
    (!s.repository_credentials_secret.is_empty()).then(|| {
        vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource { name: s.repository_credentials_secret.clone(), optional: Some(true) }),
            ..Default::default()
        }]
    })
}

pub const LABEL_REPOSITORY: &str = "coracle.dev/repository";
/// The `coracle.dev/operation` of repository-maintenance Jobs.
pub const OPERATION_MAINTAIN: &str = "maintain";

/// What one repository-maintenance Job is asked to do (see `crate::retention`).
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct MaintenanceTasks {
    pub namespace: String,
    pub forget: Vec<BackupRef>,
    pub prune: bool,
    pub check: bool,
}

/// Deterministic Job name for one set of tasks on one repository: the same tasks claimed twice
/// map to the same Job (AlreadyExists is success). `claim` tells periodic runs apart.
pub fn maintenance_job_name(tasks: &MaintenanceTasks, claim: &str) -> String {
    let mut uids: Vec<&str> = tasks.forget.iter().map(|b| b.uid.as_str()).collect();
    uids.sort_unstable();
    let key = format!("maintain/{}/{}/{}/{}/{claim}", tasks.namespace, uids.join(","), tasks.prune, tasks.check);
    format!("coracle-maintain-{}", &hex::encode(Sha256::digest(key.as_bytes()))[..20])
}

/// The Job maintaining one namespace's repository: no node affinity and no host mount, only the
/// repository. `live_hosts` are the hostnames of Coracle's Job pods alive at `listed_at`, so the
/// Job can tell a dead pod's lock from a live one.
pub fn maintenance_job(
    tasks: &MaintenanceTasks,
    name: &str,
    live_hosts: &[String],
    listed_at: chrono::DateTime<chrono::Utc>,
    s: &Settings,
) -> Job {
    let labels = BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), "coracle".to_string()),
        (LABEL_OPERATION.to_string(), OPERATION_MAINTAIN.to_string()),
        (LABEL_REPOSITORY.to_string(), tasks.namespace.clone()),
    ]);
    let mut env = vec![
        env_value("CORACLE_JOB_NAME", name),
        env_value("CORACLE_MAINTENANCE_NAMESPACE", &tasks.namespace),
        env_value("CORACLE_FORGET", &serde_json::to_string(&tasks.forget).unwrap_or_else(|_| "[]".into())),
        env_value("CORACLE_PRUNE", &tasks.prune.to_string()),
        env_value("CORACLE_CHECK", &tasks.check.to_string()),
        env_value("CORACLE_CHECK_READ_DATA_SUBSET", &s.check_read_data_subset),
        env_value("CORACLE_LIVE_HOSTS", &live_hosts.join(",")),
        env_value("CORACLE_LIVE_HOSTS_AT", &listed_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        env_value("CORACLE_REPOSITORY_PREFIX", &s.repository_prefix),
        env_value("CORACLE_KEY_GENERATION", &s.key_generation(&tasks.namespace).to_string()),
        env_value("RESTIC_CACHE_DIR", "/cache"),
        master_key_env(s),
    ];
    if !s.nats_url.is_empty() {
        env.push(env_value("CORACLE_NATS_URL", &s.nats_url));
    }
    // Nothing of the node is read: no capabilities at all.
    let container = job_container(OPERATION_MAINTAIN, env, &[], Vec::new(), s);
    let pod_spec = PodSpec {
        restart_policy: Some("Never".into()),
        service_account_name: Some(s.service_account.clone()),
        automount_service_account_token: Some(false),
        security_context: Some(PodSecurityContext {
            seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        containers: vec![container],
        volumes: Some(vec![
            Volume { name: "cache".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() },
            Volume { name: "tmp".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() },
        ]),
        ..Default::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(s.system_namespace.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(JobSpec {
            completions: Some(1),
            parallelism: Some(1),
            // A failed prune or check is reported, not retried blindly; the next period retries.
            backoff_limit: Some(0),
            ttl_seconds_after_finished: Some(s.ttl_seconds_after_finished),
            pod_replacement_policy: Some("Failed".into()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                spec: Some(pod_spec),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// The container every Coracle Job runs: `coracle-volume-job OPERATION` as root with every
/// capability dropped but `capabilities`, a read-only root filesystem with writable `/cache`
/// (restic's) and `/tmp`, the configured resources, repository credentials from their Secret, and
/// the result in the termination message.
fn job_container(
    operation: &str,
    env: Vec<EnvVar>,
    capabilities: &[&str],
    mut mounts: Vec<VolumeMount>,
    s: &Settings,
) -> Container {
    let quantity = |q: &str| Quantity(q.to_string());
    mounts.extend([
        VolumeMount { name: "cache".into(), mount_path: "/cache".into(), ..Default::default() },
        VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..Default::default() },
    ]);
    Container {
        name: operation.into(),
        image: Some(s.job_image.clone()),
        image_pull_policy: Some(s.image_pull_policy.clone()),
        command: Some(vec!["coracle-volume-job".into(), operation.into()]),
        env: Some(env),
        env_from: credentials_env_from(s),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), quantity(&s.job_cpu_request)),
                ("memory".to_string(), quantity(&s.job_memory_request)),
            ])),
            limits: Some(BTreeMap::from([
                ("cpu".to_string(), quantity(&s.job_cpu_limit)),
                ("memory".to_string(), quantity(&s.job_memory_limit)),
            ])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: (!capabilities.is_empty()).then(|| capabilities.iter().map(|c| c.to_string()).collect()),
            }),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        termination_message_path: Some("/dev/termination-log".into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

fn env_value(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(pod: &str, node: &str) -> PlannedVolume {
        crate::test_support::empty_dir("shop", pod, node)
    }

    fn backup() -> BackupRef {
        BackupRef { name: "nightly".into(), uid: "5e1c0a52-8f0e-4d55-9d0c-3b1f4f3c7d10".into() }
    }

    #[test]
    fn one_indexed_job_per_node_with_deterministic_names() {
        let vols = [volume("a", "node-1"), volume("b", "node-2"), volume("c", "node-1")];
        let s = Settings::default();
        let expires =
            chrono::DateTime::parse_from_rfc3339("2026-12-21T00:00:00.25Z").expect("time").with_timezone(&chrono::Utc);
        let jobs = backup_jobs(&backup(), &vols, Some(expires), &BTreeMap::new(), Duration::from_secs(3600), &s);
        assert_eq!(jobs.len(), 2);
        let again = backup_jobs(&backup(), &vols, Some(expires), &BTreeMap::new(), Duration::from_secs(3600), &s);
        assert_eq!(jobs, again);
        let names = |jobs: &[Job]| jobs.iter().map(|j| j.metadata.name.clone()).collect::<Vec<_>>();
        let later = backup_jobs(
            &backup(),
            &vols,
            Some(expires + chrono::Duration::hours(1)),
            &BTreeMap::new(),
            Duration::from_secs(60),
            &s,
        );
        assert_eq!(names(&later), names(&jobs), "names depend on the backup uid and node only");
        let j1 = &jobs[0];
        assert_eq!(j1.metadata.name.as_deref(), Some(backup_job_name(&backup().uid, "node-1").as_str()));
        assert!(j1.metadata.name.as_deref().is_some_and(|n| n.len() <= 63));
        let spec = j1.spec.as_ref().expect("spec");
        assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
        assert_eq!(spec.completions, Some(2));
        assert_eq!(spec.parallelism, Some(2));
        assert_eq!(spec.backoff_limit_per_index, Some(2));
        // Two volumes at concurrency 2 is one round, three attempts.
        assert_eq!(spec.active_deadline_seconds, Some(3600 * 3));
        let pod = spec.template.spec.as_ref().expect("pod spec");
        assert_eq!(pod.active_deadline_seconds, Some(3600));
        let term = &pod.affinity.as_ref().and_then(|a| a.node_affinity.as_ref()).expect("affinity");
        let values =
            &term.required_during_scheduling_ignored_during_execution.as_ref().expect("required").node_selector_terms
                [0]
            .match_expressions
            .as_ref()
            .expect("expr")[0];
        assert_eq!(values.key, "kubernetes.io/hostname");
        assert_eq!(values.values.as_deref(), Some(&["node-1".to_string()][..]));
        let host = pod.volumes.as_ref().expect("volumes")[0].host_path.as_ref().expect("hostPath");
        assert_eq!(host.path, "/var/lib/kubelet/pods");
        let mount = &pod.containers[0].volume_mounts.as_ref().expect("mounts")[0];
        assert_eq!(mount.read_only, Some(true));
        assert_eq!(mount.mount_propagation.as_deref(), Some("HostToContainer"));
        let env = pod.containers[0].env.as_ref().expect("env");
        let vols_env = env.iter().find(|e| e.name == "CORACLE_VOLUMES").and_then(|e| e.value.as_deref());
        let parsed: Vec<PlannedVolume> = serde_json::from_str(vols_env.expect("volumes env")).expect("json");
        assert_eq!(parsed.iter().map(|v| v.pod.as_str()).collect::<Vec<_>>(), ["a", "c"]);
        let expires_env = env.iter().find(|e| e.name == "CORACLE_BACKUP_EXPIRES").and_then(|e| e.value.as_deref());
        assert_eq!(expires_env, Some("2026-12-21T00:00:00.250Z"), "the snapshots' expires tag");
    }

    #[test]
    fn each_job_gets_the_parent_hints_of_its_own_volumes() {
        let vols = [volume("a", "node-1"), volume("b", "node-2"), volume("c", "node-1")];
        let id = |c: char| c.to_string().repeat(64);
        let parents = BTreeMap::from([
            (vols[0].identity.clone(), id('a')),
            (vols[1].identity.clone(), id('b')),
            ("pvc/not-planned".to_string(), id('f')),
        ]);
        let jobs = backup_jobs(&backup(), &vols, None, &parents, Duration::from_secs(60), &Settings::default());
        let hints = |job: &Job| -> Option<BTreeMap<String, String>> {
            let pod = job.spec.as_ref()?.template.spec.as_ref()?;
            let env = pod.containers[0].env.as_ref()?;
            let value = env.iter().find(|e| e.name == "CORACLE_PARENTS")?.value.as_deref()?;
            Some(serde_json::from_str(value).expect("a JSON object"))
        };
        assert_eq!(hints(&jobs[0]), Some(BTreeMap::from([(vols[0].identity.clone(), id('a'))])), "c has none");
        assert_eq!(hints(&jobs[1]), Some(BTreeMap::from([(vols[1].identity.clone(), id('b'))])));
        let none = backup_jobs(&backup(), &vols, None, &BTreeMap::new(), Duration::from_secs(60), &Settings::default());
        assert_eq!(hints(&none[0]), None, "no hints, no variable");
    }

    #[test]
    fn no_secret_value_in_the_spec_and_concurrency_is_capped_by_volume_count() {
        let s = Settings { per_node_concurrency: 4, ..Settings::default() };
        let jobs = backup_jobs(&backup(), &[volume("a", "n")], None, &BTreeMap::new(), Duration::from_secs(60), &s);
        let spec = jobs[0].spec.as_ref().expect("spec");
        assert_eq!(spec.parallelism, Some(1));
        let env = spec.template.spec.as_ref().expect("pod").containers[0].env.as_ref().expect("env");
        assert!(!env.iter().any(|e| e.name == "CORACLE_BACKUP_EXPIRES"), "no expiry known, none set");
        let key = env.iter().find(|e| e.name == "CORACLE_MASTER_KEY").expect("master key env");
        assert!(key.value.is_none(), "the master key must be referenced, never inlined");
        assert_eq!(
            key.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()).map(|r| r.name.as_str()),
            Some("coracle-master-key")
        );
    }

    #[test]
    fn a_maintenance_job_references_the_key_and_is_named_by_its_tasks() {
        let tasks = MaintenanceTasks { namespace: "shop".into(), forget: vec![backup()], prune: true, check: false };
        let name = maintenance_job_name(&tasks, "");
        assert_eq!(name, maintenance_job_name(&tasks, ""), "deterministic");
        assert_ne!(name, maintenance_job_name(&tasks, "2026-11-21T00:00:00Z"));
        assert_ne!(name, maintenance_job_name(&MaintenanceTasks { prune: false, ..tasks.clone() }, ""));
        assert!(name.len() <= 63);
        let s = Settings { key_generations: "shop=2".into(), ..Settings::default() };
        let job = maintenance_job(&tasks, &name, &["coracle-backup-x-0".into()], chrono::Utc::now(), &s);
        let labels = job.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get(LABEL_REPOSITORY).map(String::as_str), Some("shop"));
        let pod = job.spec.and_then(|s| s.template.spec).expect("pod spec");
        assert!(pod.affinity.is_none() && pod.volumes.iter().flatten().all(|v| v.host_path.is_none()));
        let env = pod.containers[0].env.clone().unwrap_or_default();
        let value = |n: &str| env.iter().find(|e| e.name == n).and_then(|e| e.value.clone());
        assert_eq!(value("CORACLE_KEY_GENERATION").as_deref(), Some("2"));
        assert_eq!(value("CORACLE_LIVE_HOSTS").as_deref(), Some("coracle-backup-x-0"));
        assert!(value("CORACLE_FORGET").is_some_and(|f| f.contains(&backup().uid)));
        let key = env.iter().find(|e| e.name == "CORACLE_MASTER_KEY").expect("key");
        assert!(key.value.is_none() && key.value_from.is_some(), "referenced, never inlined");
    }

    #[test]
    fn a_restore_job_mounts_only_its_pod_directory_read_write() {
        let restore = RestoreRef { name: "r1".into(), uid: "9d1e0c52-8f0e-4d55-9d0c-3b1f4f3c7d10".into() };
        let pod_uid = "0b9f3b36-1b8e-4f1a-9a43-5a0c0f9a2a11";
        let vol = RestoreVolume {
            namespace: "shop".into(),
            pod: "web-x".into(),
            pod_uid: pod_uid.into(),
            volume: "data".into(),
            dir: "pv-1".into(),
            source_namespace: "shop".into(),
            snapshot_id: "abc".into(),
            entry: String::new(),
        };
        let job = restore_job(&restore, pod_uid, "node-2", &[vol], Duration::from_secs(600), &Settings::default());
        assert_eq!(job.metadata.name, Some(restore_job_name(&restore.uid, pod_uid)));
        let pod = job.spec.and_then(|s| s.template.spec).expect("pod spec");
        let host = pod.volumes.as_ref().expect("volumes")[0].host_path.as_ref().expect("hostPath");
        assert_eq!(host.path, format!("/var/lib/kubelet/pods/{pod_uid}"));
        let c = &pod.containers[0];
        assert_eq!(c.command.as_deref(), Some(&["coracle-volume-job".to_string(), "restore".to_string()][..]));
        let mount = &c.volume_mounts.as_ref().expect("mounts")[0];
        assert_eq!((mount.mount_path.as_str(), mount.read_only), (POD_MOUNT, Some(false)));
        let env = c.env.as_ref().expect("env");
        assert!(env
            .iter()
            .any(|e| e.name == "CORACLE_RESTORE_VOLUMES" && e.value.as_deref().is_some_and(|v| v.contains("pv-1"))));
    }
}
