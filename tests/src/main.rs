//! `coracle-sim`: runs the simulated Kubernetes API server as a process, for the demo and kubectl.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use coracle_tests::sim::SimServer;

#[derive(Parser)]
#[command(name = "coracle-sim", about = "A simulated Kubernetes API server for Coracle's tests and demo")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the simulated API server until SIGTERM or Ctrl-C.
    Serve {
        /// Multi-document YAML of objects to load (repeatable; `kind: List` documents are unpacked).
        #[arg(long = "objects", value_name = "FILE")]
        objects: Vec<PathBuf>,
        /// Port on 127.0.0.1 (0: a free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Where to write a kubeconfig pointing at the server (context `coracle-sim`).
        #[arg(long, value_name = "FILE")]
        kubeconfig_out: PathBuf,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let Command::Serve { objects, port, kubeconfig_out } = Cli::parse().command;
    let mut yaml = String::new();
    for file in &objects {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        // Each file's documents stay separate documents.
        yaml.push_str("\n---\n");
        yaml.push_str(&text);
    }
    let sim = SimServer::start_on(port, &yaml)?;
    sim.write_kubeconfig(&kubeconfig_out)?;
    let counts: Vec<String> = sim.store().counts().iter().map(|(r, n)| format!("{r}: {n}")).collect();
    println!("coracle-sim serving {} (kubeconfig {})", sim.url(), kubeconfig_out.display());
    if !counts.is_empty() {
        println!("loaded {}", counts.join(", "));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    sim.shutdown();
    Ok(())
}
