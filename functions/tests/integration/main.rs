//! The functions crate's integration tests: one test binary (each file a module) so they link once;
//! nextest still runs every test in its own process.

mod admission_reviews;
mod cli_golden;
mod cli_offline;
mod plan_backup_rules;
mod schedule_config;
mod schedule_cron;
mod schedule_state;
mod triggers;
