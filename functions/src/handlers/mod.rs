//! The functions: each turns one event into effects (KV records, Jobs, published events).
//! Every runner (once, NATS, Lambda) calls `Function::handle` the same way.

pub mod plan_backup;
pub mod record_result;

use crate::context::Context;
use crate::record_store::StoreError;
use coracle_events::consume::HandleError;
use coracle_events::subjects;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Function {
    PlanBackup,
    RecordResult,
}

impl Function {
    pub fn name(self) -> &'static str {
        match self {
            Function::PlanBackup => "plan-backup",
            Function::RecordResult => "record-result",
        }
    }

    /// The subjects its durable consumer reads.
    pub fn subjects(self) -> &'static [&'static str] {
        match self {
            Function::PlanBackup => &[subjects::BACKUP_REQUESTED],
            Function::RecordResult => &[subjects::VOLUME_BACKUP_COMPLETED, subjects::VOLUME_BACKUP_FAILED],
        }
    }

    pub async fn handle(self, ctx: &Context, payload: &[u8]) -> Result<(), HandleError> {
        match self {
            Function::PlanBackup => plan_backup::handle(ctx, payload).await,
            Function::RecordResult => record_result::handle(ctx, payload).await,
        }
    }
}

impl From<StoreError> for HandleError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => HandleError::retryable(e),
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
