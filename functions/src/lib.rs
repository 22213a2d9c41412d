//! Coracle's functions: pure planners over a snapshot of cluster objects, and the thin
//! adapters (Kubernetes, NATS, Lambda) that feed them and carry out their plans.

pub mod admission;
pub mod backup_run;
pub mod catalog;
pub mod certgen;
pub mod cli;
pub mod context;
pub mod create_cli;
pub use coracle_events::duration;
pub mod follow;
pub mod handlers;
pub mod jobs;
pub mod kube_cluster;
pub mod kv_json;
pub mod maintenance_cli;
pub mod master_key;
pub mod objects;
pub mod parents;
pub mod plan_backup;
pub mod plan_restore;
pub mod rbac;
pub mod record;
pub mod request;
pub mod restore_state;
pub mod retention;
pub mod runner;
pub mod schedule;
pub mod schedule_cli;
pub mod selector;
pub mod serve;
pub mod settings;
pub mod snapshot;
pub mod sweep;
#[cfg(test)]
mod test_support;
pub mod triggers;
pub mod wait;
pub mod watch;
