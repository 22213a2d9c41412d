//! The functions: each turns one event into effects (KV records, Jobs, published events).
//! Every runner (once, NATS, Lambda) calls `Function::handle` the same way.

pub mod admit;
pub mod maintenance;
pub mod on_k8s_event;
pub mod plan_backup;
pub mod plan_restore;
pub mod record_result;
pub mod schedule_tick;
pub mod start_restore;
pub mod sweep;

use crate::context::Context;
use crate::kv_json::StoreError;
use coracle_events::consume::HandleError;
use coracle_events::subjects;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Function {
    PlanBackup,
    RecordResult,
    PlanRestore,
    StartRestore,
    ScheduleTick,
    OnK8sEvent,
    Maintenance,
}

/// A stable uid for a request without one: the same event id always yields the same uid, so a
/// redelivered request names the same backup or restore.
pub fn event_uid(kind: &str, event_id: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, format!("coracle:{kind}:{event_id}").as_bytes()).to_string()
}

impl Function {
    pub fn name(self) -> &'static str {
        match self {
            Function::PlanBackup => "plan-backup",
            Function::RecordResult => "record-result",
            Function::PlanRestore => "plan-restore",
            Function::StartRestore => "start-restore",
            Function::ScheduleTick => schedule_tick::NAME,
            Function::OnK8sEvent => on_k8s_event::NAME,
            Function::Maintenance => maintenance::NAME,
        }
    }

    /// The subjects its durable consumer reads.
    pub fn subjects(self) -> &'static [&'static str] {
        match self {
            Function::PlanBackup => &[subjects::BACKUP_REQUESTED],
            Function::RecordResult => &[
                subjects::VOLUME_BACKUP_COMPLETED,
                subjects::VOLUME_BACKUP_FAILED,
                subjects::VOLUME_RESTORE_COMPLETED,
                subjects::VOLUME_RESTORE_FAILED,
            ],
            Function::PlanRestore => &[subjects::RESTORE_REQUESTED],
            Function::StartRestore => &[subjects::RESTORE_POD_READY],
            Function::ScheduleTick => &[subjects::SCHEDULE_TICK],
            Function::OnK8sEvent => &[subjects::K8S_ALL],
            Function::Maintenance => &[subjects::SCHEDULE_TICK, subjects::MAINTENANCE_COMPLETED],
        }
    }

    pub async fn handle(self, ctx: &Context, payload: &[u8]) -> Result<(), HandleError> {
        match self {
            Function::PlanBackup => plan_backup::handle(ctx, payload).await,
            Function::RecordResult => record_result::handle(ctx, payload).await,
            Function::PlanRestore => plan_restore::handle(ctx, payload).await,
            Function::StartRestore => start_restore::handle(ctx, payload).await,
            Function::ScheduleTick => schedule_tick::handle(ctx, payload).await,
            Function::OnK8sEvent => on_k8s_event::handle(ctx, payload).await,
            Function::Maintenance => maintenance::handle(ctx, payload).await,
        }
    }
}

impl From<StoreError> for HandleError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable { .. } => HandleError::retryable(e),
            StoreError::Corrupt { .. } => HandleError::permanent(e),
        }
    }
}

impl From<crate::kube_cluster::KubeError> for HandleError {
    fn from(e: crate::kube_cluster::KubeError) -> Self {
        if e.is_retryable() {
            HandleError::retryable(e)
        } else {
            HandleError::permanent(e)
        }
    }
}
