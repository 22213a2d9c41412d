//! Every Coracle event type with its typed data.
//!
//! Field names are camelCase like Kubernetes objects. Unknown fields are tolerated (serde's
//! default), so a newer producer can add data without breaking older consumers; a new
//! incompatible shape gets a new `.vN` type instead.

use crate::envelope::EventData;
use crate::subjects;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

macro_rules! event_type {
    ($t:ty, $ty:literal, $subject:expr) => {
        impl EventData for $t {
            const TYPE: &'static str = $ty;
            const SUBJECT: &'static str = $subject;
        }
    };
}

/// `coracle.backup.requested`: what to back up. Also the `--request` file of `coracle plan backup`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupRequest {
    pub name: String,
    /// Generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Empty means all namespaces.
    #[serde(default)]
    pub included_namespaces: Vec<String>,
    #[serde(default)]
    pub excluded_namespaces: Vec<String>,
    /// A Kubernetes label selector string (`app=web,tier in (a,b),!legacy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
    /// Opt-out mode: back up every eligible volume unless excluded by annotation.
    #[serde(default)]
    pub default_volumes_to_backup: bool,
    /// Go-style duration, default `720h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Go-style duration bounding each volume's Job index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_timeout: Option<String>,
    /// The schedule or trigger that produced this request, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}
event_type!(BackupRequest, "dev.coracle.backup.requested.v1", subjects::BACKUP_REQUESTED);

/// Names one backup everywhere a result refers to it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct BackupRef {
    pub name: String,
    pub uid: String,
}

/// How a pod volume is provided; decides the on-node directory and the identity.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum VolumeSource {
    /// A PersistentVolumeClaim; data dir named after the PV.
    Pvc,
    EmptyDir,
    /// Inline CSI volume (`spec.volumes[].csi`).
    CsiEphemeral,
    /// Generic ephemeral volume (a PVC created per pod).
    Ephemeral,
    /// Any other in-tree source the kubelet mounts under its own plugin directory (NFS, iSCSI…).
    Other,
}

/// One volume a backup covers: the contract between the planner, the Job and the record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PlannedVolume {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub volume: String,
    pub node: String,
    pub source: VolumeSource,
    /// Claim name for PVC-backed volumes (including generic ephemeral ones).
    pub pvc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pv: Option<String>,
    /// Directory name under `<pods-root>/<pod-uid>/volumes/*/`: the PV name or the volume name.
    pub dir: String,
    /// Stable identity that survives pod re-creation; selects the parent snapshot.
    pub identity: String,
}

impl PlannedVolume {
    /// `namespace/pod/volume`, the key of this volume in a backup record.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.pod, self.volume)
    }
}

/// A volume the plan deliberately does not back up, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SkippedVolume {
    pub namespace: String,
    pub pod: String,
    /// Empty when a whole pod is skipped.
    pub volume: String,
    pub reason: String,
}

/// `coracle.backup.planned`: the plan and the Jobs launched for it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupPlanned {
    pub backup: BackupRef,
    pub request: BackupRequest,
    pub volumes: Vec<PlannedVolume>,
    pub skipped: Vec<SkippedVolume>,
    pub jobs: Vec<String>,
    pub expires: DateTime<Utc>,
}
event_type!(BackupPlanned, "dev.coracle.backup.planned.v1", subjects::BACKUP_PLANNED);

/// `coracle.volume.backup.progress`, at most once a second per volume.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeBackupProgress {
    pub backup: BackupRef,
    /// `namespace/pod/volume`.
    pub volume: String,
    /// restic's fraction done, 0.0 to 1.0.
    pub percent_done: f64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub files_done: u64,
    pub files_total: u64,
    pub seconds_elapsed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds_remaining: Option<u64>,
}
event_type!(VolumeBackupProgress, "dev.coracle.volume.backup.progress.v1", subjects::VOLUME_BACKUP_PROGRESS);

/// Figures of one finished `restic backup`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupStats {
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub total_files: u64,
    pub bytes_added: u64,
    pub total_bytes: u64,
    pub duration_seconds: f64,
}

/// `coracle.volume.backup.completed`: a snapshot exists. `warnings` is non-empty when restic
/// exited 3 (some files unreadable): completed with warnings, neither clean success nor failure.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeBackupCompleted {
    pub backup: BackupRef,
    pub volume: PlannedVolume,
    /// Empty when the volume held no files: restic stores no empty snapshot, and restoring the
    /// volume means leaving it empty.
    pub snapshot_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_snapshot: Option<String>,
    pub stats: BackupStats,
    #[serde(default)]
    pub warnings: Vec<String>,
    #[serde(default)]
    pub attempt: u32,
}
event_type!(VolumeBackupCompleted, "dev.coracle.volume.backup.completed.v1", subjects::VOLUME_BACKUP_COMPLETED);

/// `coracle.volume.backup.failed`. `final` is false while the Job will retry this index; only
/// a final failure marks the volume Failed in the record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeBackupFailed {
    pub backup: BackupRef,
    pub volume: PlannedVolume,
    pub reason: String,
    #[serde(default)]
    pub attempt: u32,
    #[serde(rename = "final", default = "yes")]
    pub is_final: bool,
}
event_type!(VolumeBackupFailed, "dev.coracle.volume.backup.failed.v1", subjects::VOLUME_BACKUP_FAILED);

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum BackupPhase {
    Completed,
    PartiallyFailed,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeFailure {
    pub volume: String,
    pub reason: String,
}

/// `coracle.backup.completed`: published exactly once per backup, when every volume is terminal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupCompleted {
    pub backup: BackupRef,
    pub phase: BackupPhase,
    pub volumes: u32,
    pub volumes_completed: u32,
    pub volumes_with_warnings: u32,
    pub volumes_failed: u32,
    pub bytes_added: u64,
    pub total_bytes: u64,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    #[serde(default)]
    pub failures: Vec<VolumeFailure>,
}
event_type!(BackupCompleted, "dev.coracle.backup.completed.v1", subjects::BACKUP_COMPLETED);

/// `coracle.dlq.<function>`: an event a function could not handle, with the reason and the
/// original payload (truncated past `MAX_DLQ_PAYLOAD`; the stream sequence finds the rest).
/// Its subject depends on the function: publish it with `Publisher::publish_to(&subjects::dlq(f), ..)`,
/// never `publish` (whose `SUBJECT` is only the common prefix).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub function: String,
    pub reason: String,
    pub subject: String,
    pub deliveries: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_sequence: Option<u64>,
    /// The original payload: JSON when it parsed as JSON, otherwise a (lossy) string.
    pub payload: Value,
    #[serde(default)]
    pub truncated: bool,
}
event_type!(DeadLetter, "dev.coracle.dlq.deadlettered.v1", subjects::DLQ_PREFIX);

pub const MAX_DLQ_PAYLOAD: usize = 64 * 1024;

/// Where an event came from: `/coracle/functions/<name>`.
pub fn function_source(function: &str) -> String {
    format!("/coracle/functions/{function}")
}

/// Where a Job's event came from: `/coracle/jobs/<job>`.
pub fn job_source(job: &str) -> String {
    format!("/coracle/jobs/{job}")
}

/// What one Job index concludes, written to the pod's termination message so a sweep can
/// recover results that were produced while NATS was unreachable.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "outcome")]
pub enum VolumeOutcome {
    Completed(VolumeBackupCompleted),
    Failed(VolumeBackupFailed),
}

/// Names one restore everywhere a result refers to it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct RestoreRef {
    pub name: String,
    pub uid: String,
}

/// `coracle.restore.requested`: restore (part of) a backup, possibly into other namespaces.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreRequest {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The backup to restore from (its name).
    pub backup: String,
    /// Source namespace → target namespace; unmapped namespaces restore into themselves.
    #[serde(default)]
    pub namespace_mapping: std::collections::BTreeMap<String, String>,
    /// Source namespaces to include (empty: all in the backup).
    #[serde(default)]
    pub included_namespaces: Vec<String>,
    #[serde(default)]
    pub excluded_namespaces: Vec<String>,
    /// Only these volumes: entries `namespace/volume`, `volume`, or `namespace/claim` for PVCs.
    #[serde(default)]
    pub volumes: Vec<String>,
}
event_type!(RestoreRequest, "dev.coracle.restore.requested.v1", subjects::RESTORE_REQUESTED);

/// What a restored pod is matched by at admission time, when it has no name or uid yet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum RestoreTarget {
    /// Any pod in the target namespace that mounts this claim.
    Pvc { claim: String },
    /// A pod of this workload (`deployment/web`, `statefulset/db/db-0`, `pod/name`) with this volume.
    Workload { owner: String, volume: String },
}

/// One volume waiting to be restored: the KV entry under the target namespace and the target.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PendingRestore {
    pub restore: RestoreRef,
    pub backup: BackupRef,
    pub target_namespace: String,
    pub target: RestoreTarget,
    /// The namespace whose repository holds the snapshot.
    pub source_namespace: String,
    pub source_pod: String,
    pub source_volume: String,
    pub snapshot_id: String,
    pub identity: String,
}

/// `coracle.restore.planned`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestorePlanned {
    pub restore: RestoreRef,
    pub request: RestoreRequest,
    pub backup: BackupRef,
    pub entries: Vec<PendingRestore>,
    pub skipped: Vec<SkippedVolume>,
}
event_type!(RestorePlanned, "dev.coracle.restore.planned.v1", subjects::RESTORE_PLANNED);

/// `coracle.restore.pod.ready`: the restore-wait helper of a restoring pod is up and waiting.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestorePodReady {
    pub restore: RestoreRef,
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub node: String,
    /// Pod volume names the helper waits for.
    pub volumes: Vec<String>,
}
event_type!(RestorePodReady, "dev.coracle.restore.pod.ready.v1", subjects::RESTORE_POD_READY);

/// One volume a restore Job writes: the contract between start-restore and the Job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreVolume {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    /// Pod volume name (the helper's `/restores/<volume>`).
    pub volume: String,
    /// Directory under `<pod dir>/volumes/*/`: the PV name for PVCs, the volume name otherwise.
    pub dir: String,
    pub source_namespace: String,
    /// Empty for a volume that was empty when backed up: the restore only writes the marker.
    pub snapshot_id: String,
    /// The pending entry this volume restores (`plan_restore::pending_key`), echoed in results.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub entry: String,
}

impl RestoreVolume {
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.pod, self.volume)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStats {
    pub files: u64,
    pub bytes: u64,
    pub duration_seconds: f64,
}

/// `coracle.volume.restore.completed`: data restored and the marker written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRestoreCompleted {
    pub restore: RestoreRef,
    pub volume: RestoreVolume,
    pub stats: RestoreStats,
    #[serde(default)]
    pub attempt: u32,
}
event_type!(VolumeRestoreCompleted, "dev.coracle.volume.restore.completed.v1", subjects::VOLUME_RESTORE_COMPLETED);

/// `coracle.volume.restore.failed`; a final failure also leaves a failure marker for the helper.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRestoreFailed {
    pub restore: RestoreRef,
    pub volume: RestoreVolume,
    pub reason: String,
    #[serde(default)]
    pub attempt: u32,
    #[serde(rename = "final", default = "yes")]
    pub is_final: bool,
}
event_type!(VolumeRestoreFailed, "dev.coracle.volume.restore.failed.v1", subjects::VOLUME_RESTORE_FAILED);

/// `coracle.restore.completed`, once every volume of the restore is terminal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreCompleted {
    pub restore: RestoreRef,
    pub phase: BackupPhase,
    pub volumes: u32,
    pub volumes_completed: u32,
    pub volumes_failed: u32,
    #[serde(default)]
    pub failures: Vec<VolumeFailure>,
}
event_type!(RestoreCompleted, "dev.coracle.restore.completed.v1", subjects::RESTORE_COMPLETED);

/// What a restore Job index concludes, written to its termination message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "outcome")]
pub enum RestoreOutcome {
    Completed(VolumeRestoreCompleted),
    Failed(VolumeRestoreFailed),
}

/// The marker a restore Job leaves in a volume when its data is in place:
/// `<volume>/.coracle/<restore-uid>`; a failed restore leaves `<restore-uid>.failed` holding
/// the reason. The restore-wait helper waits for these and removes them.
pub const MARKER_DIR: &str = ".coracle";
pub const FAILED_MARKER_SUFFIX: &str = ".failed";

fn volume_event_prefix(uid: &str, namespace: &str, pod: &str, volume: &str) -> String {
    format!("{uid}.{namespace}.{pod}.{volume}")
}

impl VolumeBackupCompleted {
    /// Deterministic: the Job and a sweep that recovers the same result publish the same id.
    pub fn event_id(&self) -> String {
        let v = &self.volume;
        format!("{}.completed", volume_event_prefix(&self.backup.uid, &v.namespace, &v.pod, &v.volume))
    }
}

impl VolumeBackupFailed {
    /// One id per failed attempt, so each retry's failure is recorded once.
    pub fn event_id(&self) -> String {
        let v = &self.volume;
        format!("{}.failed.{}", volume_event_prefix(&self.backup.uid, &v.namespace, &v.pod, &v.volume), self.attempt)
    }
}

impl VolumeRestoreCompleted {
    pub fn event_id(&self) -> String {
        let v = &self.volume;
        format!("{}.restore-completed", volume_event_prefix(&self.restore.uid, &v.namespace, &v.pod, &v.volume))
    }
}

impl VolumeRestoreFailed {
    pub fn event_id(&self) -> String {
        let v = &self.volume;
        format!(
            "{}.restore-failed.{}",
            volume_event_prefix(&self.restore.uid, &v.namespace, &v.pod, &v.volume),
            self.attempt
        )
    }
}

/// `coracle.schedule.tick`: evaluate every schedule as of the event's `time` attribute (the
/// minute the tick was meant for; the receiver's clock when absent). Carries no data of its own.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScheduleTick {}
event_type!(ScheduleTick, "dev.coracle.schedule.tick.v1", subjects::SCHEDULE_TICK);

/// `coracle.k8s.workload.updated`: a Deployment or StatefulSet was updated; `old` and `new` are the
/// whole objects before and after (as a validating webhook sees them). Read by `on-k8s-event`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkloadUpdated {
    /// Absent when the producer only saw the object after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<Value>,
    pub new: Value,
}
event_type!(WorkloadUpdated, "dev.coracle.k8s.workload.updated.v1", "coracle.k8s.workload.updated");

/// `coracle.backup.deleted`: a backup's snapshots were forgotten in every repository that held
/// them (TTL expiry or `coracle backup delete`); its record is marked deleted. Data other backups
/// still reference stays until restic's `prune` finds it unreferenced.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupDeleted {
    pub backup: BackupRef,
    /// `expired` (TTL) or `requested` (`coracle backup delete`).
    pub reason: String,
    /// The namespaces whose repositories no longer hold its snapshots.
    pub namespaces: Vec<String>,
    pub deleted: DateTime<Utc>,
}
event_type!(BackupDeleted, "dev.coracle.backup.deleted.v1", subjects::BACKUP_DELETED);

/// `coracle.maintenance.completed`: what one repository-maintenance Job did to one namespace's
/// repository. `failure` is set when a task failed (the tasks before it stay done).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceCompleted {
    pub namespace: String,
    pub job: String,
    /// Backups whose snapshots `restic forget` removed (or found already gone).
    #[serde(default)]
    pub forgotten: Vec<BackupRef>,
    /// Snapshots removed by those forgets.
    #[serde(default)]
    pub snapshots_removed: u32,
    #[serde(default)]
    pub pruned: bool,
    /// `Some(true)` when `restic check` passed, `Some(false)` when it found errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_passed: Option<bool>,
    /// Locks left by Job pods that are gone, removed before the tasks ran.
    #[serde(default)]
    pub stale_locks_removed: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
}
event_type!(MaintenanceCompleted, "dev.coracle.maintenance.completed.v1", subjects::MAINTENANCE_COMPLETED);
