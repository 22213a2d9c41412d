use anyhow::Context;
use clap::Parser;
use coracle_volume_job::cli::{Cli, Command};
use serde::Serialize;
use std::io::{IsTerminal, Write};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(EnvFilter::try_from_env("CORACLE_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (outcome, exit_code) = match cli.command {
        Command::Backup(args) => {
            let result = runtime.block_on(coracle_volume_job::backup::run(&args));
            (to_json(&result.outcome), result.exit_code)
        }
        Command::Restore(args) => {
            let result = runtime.block_on(coracle_volume_job::restore::run(&args));
            (to_json(&result.outcome), result.exit_code)
        }
        Command::Maintain(args) => {
            let result = runtime.block_on(coracle_volume_job::maintenance::run(&args));
            (to_json(&result.outcome), result.exit_code)
        }
    };
    // The outcome on stdout too, for `kubectl logs` and one-shot runs.
    if let Some(json) = outcome {
        let _ = writeln!(std::io::stdout(), "{json}");
    }
    drop(runtime);
    std::process::exit(exit_code);
}

fn to_json(outcome: &impl Serialize) -> Option<String> {
    serde_json::to_string(outcome).ok()
}
