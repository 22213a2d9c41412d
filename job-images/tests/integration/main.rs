//! The job binary's integration tests against real restic: one test binary (each file a module) so
//! they link once; nextest still runs every test in its own process.

mod backup_job;
mod common;
mod paths_property;
mod restic_adapter;
mod restore_full_volume;
mod restore_job;
