//! NATS subjects. Every Coracle subject lives under `coracle.` so one stream captures them all.

pub const STREAM: &str = "CORACLE";
pub const ALL: &str = "coracle.>";

pub const BACKUP_REQUESTED: &str = "coracle.backup.requested";
pub const BACKUP_PLANNED: &str = "coracle.backup.planned";
pub const VOLUME_BACKUP_PROGRESS: &str = "coracle.volume.backup.progress";
pub const VOLUME_BACKUP_COMPLETED: &str = "coracle.volume.backup.completed";
pub const VOLUME_BACKUP_FAILED: &str = "coracle.volume.backup.failed";
pub const BACKUP_COMPLETED: &str = "coracle.backup.completed";
pub const RESTORE_REQUESTED: &str = "coracle.restore.requested";
pub const RESTORE_PLANNED: &str = "coracle.restore.planned";
pub const RESTORE_POD_READY: &str = "coracle.restore.pod.ready";
pub const VOLUME_RESTORE_COMPLETED: &str = "coracle.volume.restore.completed";
pub const VOLUME_RESTORE_FAILED: &str = "coracle.volume.restore.failed";
pub const RESTORE_COMPLETED: &str = "coracle.restore.completed";
pub const SCHEDULE_TICK: &str = "coracle.schedule.tick";
pub const BACKUP_DELETED: &str = "coracle.backup.deleted";
pub const MAINTENANCE_COMPLETED: &str = "coracle.maintenance.completed";
pub const K8S_ALL: &str = "coracle.k8s.>";
pub const DLQ_PREFIX: &str = "coracle.dlq";

/// Dead-letter subject of one function: `coracle.dlq.<function>`.
pub fn dlq(function: &str) -> String {
    format!("{DLQ_PREFIX}.{function}")
}

/// KV bucket holding backup records (per-volume status), keyed by backup name.
pub const KV_BACKUPS: &str = "coracle-backups";
/// KV bucket holding pending restores.
pub const KV_RESTORES: &str = "coracle-restores";
/// KV bucket holding schedule fire state.
pub const KV_SCHEDULES: &str = "coracle-schedules";
/// KV bucket holding parent hints: the newest snapshot of each volume identity, per namespace.
pub const KV_PARENTS: &str = "coracle-parents";
pub const KV_BUCKETS: [&str; 4] = [KV_BACKUPS, KV_RESTORES, KV_SCHEDULES, KV_PARENTS];
