//! Issue 8's figures that run the real binaries and servers: B2 (`plan_backup_process`), B3
//! (`admission`), B5-B7 (`volume_job`) and B8 (`record_result`). They share one bench binary so
//! that a fresh clone compiles and links the simulator stack once, not once per figure.
//!
//! `cargo bench -p coracle-tests --bench end_to_end [-- NAME...]` runs the named benches (all
//! when none is named), in the order below; each writes `target/bench/NAME.json`. Without
//! `--bench` (as `cargo test --all-targets` runs it) each does a small smoke run.

mod admission;
mod common;
mod plan_backup_process;
mod record_result;
mod volume_job;

use anyhow::{bail, Context as _};

type Bench = fn() -> anyhow::Result<()>;

const BENCHES: [(&str, Bench); 4] = [
    ("plan_backup_process", plan_backup_process::run),
    ("admission", admission::run),
    ("volume_job", volume_job::run),
    ("record_result", record_result::run),
];

fn main() -> anyhow::Result<()> {
    // Flags (`--bench`, libtest's) are not names.
    let named: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    if let Some(unknown) = named.iter().find(|n| !BENCHES.iter().any(|(name, _)| name == n)) {
        let known: Vec<&str> = BENCHES.iter().map(|(name, _)| *name).collect();
        bail!("no bench named {unknown:?}; there are {}", known.join(", "));
    }
    for (name, run) in BENCHES {
        if named.is_empty() || named.iter().any(|n| n == name) {
            println!("== {name}");
            run().with_context(|| format!("bench {name}"))?;
        }
    }
    Ok(())
}
