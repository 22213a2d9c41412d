//! What the whole-process benchmarks (issue 8) share: running a command while taking its wall
//! time and peak memory from the kernel, sample statistics, and the JSON report each bench
//! leaves in `target/bench/` for `scripts/bench.sh`.

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// True under `cargo bench` (which passes `--bench`); `cargo test --all-targets` runs a bench
/// binary without it, and then every bench does a small smoke run only.
pub fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// An environment variable as a number, or `default`.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

/// One finished process.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub wall: Duration,
    /// `ru_maxrss` from wait4: the process's peak resident set, or that of its largest waited-for
    /// descendant if bigger.
    pub max_rss_kib: u64,
    /// Peak resident set of the process itself (`VmHWM`, sampled every few milliseconds), when asked.
    pub own_hwm_kib: Option<u64>,
}

/// Runs `cmd` to completion (stdout and stderr kept for the error message) and measures it.
/// With `own_memory`, the process's own `VmHWM` is sampled while it runs, which leaves out
/// the children it starts (restic).
pub fn measure(cmd: &mut Command, own_memory: bool) -> anyhow::Result<(Measured, String)> {
    let out_dir = tempfile::tempdir()?;
    let (out_path, err_path) = (out_dir.path().join("out"), out_dir.path().join("err"));
    cmd.stdin(Stdio::null()).stdout(std::fs::File::create(&out_path)?).stderr(std::fs::File::create(&err_path)?);
    let started = Instant::now();
    let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let pid = child.id();
    let hwm = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = own_memory.then(|| {
        let (hwm, done) = (hwm.clone(), done.clone());
        std::thread::spawn(move || {
            let path = format!("/proc/{pid}/status");
            while !done.load(Ordering::Relaxed) {
                if let Some(kib) = std::fs::read_to_string(&path).ok().as_deref().and_then(vm_hwm_kib) {
                    hwm.fetch_max(kib, Ordering::Relaxed);
                }
                // VmHWM only grows, so a coarse sample misses at most the last interval's growth,
                // and a fast one would steal CPU from the process it measures (and from restic).
                std::thread::sleep(Duration::from_millis(25));
            }
        })
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child, not yet reaped; status and usage are valid for writes.
    let reaped = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    done.store(true, Ordering::Relaxed);
    if let Some(s) = sampler {
        let _ = s.join();
    }
    // The child is reaped by wait4; `Child` never waits on drop, so dropping it is harmless.
    drop(child);
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    if reaped != pid as libc::pid_t {
        bail!("wait4 failed for {cmd:?}");
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{cmd:?} failed (wait status {status}):\n{stdout}\n{stderr}");
    }
    let own = hwm.load(Ordering::Relaxed);
    let measured =
        Measured { wall, max_rss_kib: usage.ru_maxrss as u64, own_hwm_kib: (own_memory && own > 0).then_some(own) };
    Ok((measured, stdout))
}

fn vm_hwm_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Median, minimum and maximum of some samples (seconds or any unit).
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(samples: &[f64]) -> Summary {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n == 0 {
            f64::NAN
        } else if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Summary { n, median, min: s.first().copied().unwrap_or(f64::NAN), max: s.last().copied().unwrap_or(f64::NAN) }
    }

    pub fn json(&self) -> Value {
        json!({"n": self.n, "median": round(self.median), "min": round(self.min), "max": round(self.max)})
    }
}

pub fn round(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// `<workspace>/target/bench/<name>.json`.
pub fn write_report(name: &str, report: &Value) -> anyhow::Result<PathBuf> {
    let dir = workspace().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, serde_json::to_string_pretty(report)? + "\n")?;
    println!("wrote {}", file.display());
    Ok(file)
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where generated data goes: `bench/tmp/<name>` (gitignored), or `CORACLE_BENCH_TMP/<name>`.
pub fn data_dir(name: &str) -> anyhow::Result<PathBuf> {
    let base =
        std::env::var_os("CORACLE_BENCH_TMP").map(PathBuf::from).unwrap_or_else(|| workspace().join("bench/tmp"));
    let dir = base.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir.canonicalize()?)
}

/// `.tools/bin/<name>` when installed there, else `name` from PATH.
pub fn tool(name: &str) -> PathBuf {
    let local = workspace().join(".tools/bin").join(name);
    if local.exists() {
        local
    } else {
        PathBuf::from(name)
    }
}
