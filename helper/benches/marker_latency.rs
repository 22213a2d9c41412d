//! B4: how long a restoring pod waits after its last restore marker lands, measured on the
//! real release `coracle-restore-wait` binary and compared, in the same run, with a
//! one-second polling loop modelled on Velero's restore helper.
//!
//! Each run starts the helper against a fresh restores root (1 volume, then 8), waits until
//! it is watching, writes the marker the way a restore Job does (a temporary file, then a
//! rename) and times from the rename to `wait()` returning. The clock starts just before the
//! `rename` call, so the figure is an upper bound.
//!
//! Readiness: the helper logs `watching N volume(s) with inotify` only after every inotify
//! watch is in place; each run waits for that line on stderr and then checks the kernel's
//! view, counting the `inotify wd:` lines in `/proc/<pid>/fdinfo` (1 for the root, 1 per
//! volume directory, 1 per `.coracle`). No fixed sleep is involved.
//!
//! The poller is Velero's `velero-restore-helper` loop as a shell script: every second,
//! stat `<dir>/.<marker-dir>/<uid>` in every directory under the root; when all exist,
//! remove the marker directories and exit. The marker is written at a uniformly random
//! offset within the second (stratified: run i of n at (i + U[0,1)) / n s after the start,
//! in shuffled order), so its expected latency is ~500 ms.
//!
//! Two more figures explain the helper's number. `detect`: from the rename to the moment the
//! bench reads the helper's `volume ... is restored` line (logged once the last marker is
//! seen, before the helper tears down and exits). `inotify close floor`: closing an inotify
//! instance that holds 3 watches (what the helper's exit does), timed in this process; the
//! kernel waits for an SRCU grace period there, which bounds marker-to-exit from below.
//!
//! `cargo bench -p coracle-restore-wait --bench marker_latency` prints a table and writes
//! `<workspace>/target/bench/restore_wait.json`. Without `--bench` (as `cargo test
//! --all-targets` runs it) it is a quick smoke run: a few helper runs, no poller, no JSON.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const HELPER: &str = env!("CARGO_BIN_EXE_coracle-restore-wait");
const RESTORE_UID: &str = "5b2e7c1a-0000-4000-8000-00000000b004";
const POD_UID: &str = "0f2c7f4e-3c1a-4a8e-9b7d-2f0e1d2c3b4a";
/// The helper's own timeout: a run that misses its marker fails instead of hanging the bench.
const HELPER_TIMEOUT: &str = "30s";
/// How long to wait for the helper's "watching" line.
const READY_LIMIT: Duration = Duration::from_secs(20);
/// The directory in each volume where restore Jobs put their markers.
const MARKER_DIR: &str = ".coracle";
/// Issue 8, B4.
const TARGET_P99_MS: f64 = 20.0;

/// Velero's restore helper (cmd/velero-restore-helper): a 1 s ticker, `done()` stats the marker
/// in every directory under the root, then `removeFolder()` deletes each marker directory.
/// `$1` is the root, `$2` the marker name, `$3` the marker directory.
const POLLER: &str = r#"cd "$1" || exit 1
while sleep 1; do
  done=1
  for d in */; do
    [ -e "$d$3/$2" ] || { done=0; break; }
  done
  [ "$done" = 1 ] && break
done
for d in */; do rm -rf "$d$3"; done
"#;

struct Plan {
    helper_runs: usize,
    warmup: usize,
    poll_runs: usize,
    full: bool,
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let plan = if full {
        Plan { helper_runs: 200, warmup: 5, poll_runs: 30, full }
    } else {
        Plan { helper_runs: 3, warmup: 0, poll_runs: 0, full }
    };
    let mut rng = Rng::new();

    let started = Instant::now();
    let (one, one_detect) = helper_series(1, &plan);
    let (eight, eight_detect) = helper_series(8, &plan);
    let (one, one_detect, eight, eight_detect) =
        (Stats::of(one), Stats::of(one_detect), Stats::of(eight), Stats::of(eight_detect));
    let floor = Stats::of(inotify_close_floor(plan.helper_runs));
    let poll = (plan.poll_runs > 0).then(|| Stats::of(poll_series(plan.poll_runs, &mut rng)));

    println!();
    println!("B4 restore-wait: marker rename -> process exit, ms (nearest-rank percentiles)");
    println!("{:<46} {:>4} {:>9} {:>9} {:>9}", "series", "n", "p50", "p99", "max");
    let row = |name: &str, s: &Stats| {
        println!("{name:<46} {:>4} {:>9.3} {:>9.3} {:>9.3}", s.n, s.p50_ms, s.p99_ms, s.max_ms);
    };
    row("coracle-restore-wait (inotify), 1 volume", &one);
    row("coracle-restore-wait (inotify), 8 volumes", &eight);
    row("  detect: marker -> \"is restored\" logged, 1 vol", &one_detect);
    row("  detect: marker -> \"is restored\" logged, 8 vol", &eight_detect);
    row("  inotify close floor (3 watches, in process)", &floor);
    if let Some(poll) = &poll {
        row("1 s polling loop (Velero's helper), 1 volume", poll);
    }
    for (name, s) in [("1 volume", &one), ("8 volumes", &eight)] {
        let verdict = if s.p99_ms <= TARGET_P99_MS { "meets" } else { "MISSES" };
        println!("helper p99, {name}: {:.3} ms {verdict} the target of <= {TARGET_P99_MS} ms", s.p99_ms);
    }
    if let Some(poll) = &poll {
        let (ratio_p50, ratio_p99) = (poll.p50_ms / one.p50_ms, poll.p99_ms / one.p99_ms);
        println!("ratio poller / helper (1 volume): p50 {ratio_p50:.0}x, p99 {ratio_p99:.0}x");
        if plan.full {
            let json = serde_json::json!({
                "helper": { "volumes_1": one.json(), "volumes_8": eight.json() },
                "helper_detect": { "volumes_1": one_detect.json(), "volumes_8": eight_detect.json() },
                "inotify_close_floor": floor.json(),
                "poll_1s": poll.json(),
                "ratio_p50": round3(ratio_p50),
                "ratio_p99": round3(ratio_p99),
            });
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").join("target/bench");
            std::fs::create_dir_all(&dir).expect("creating target/bench");
            let file = dir.join("restore_wait.json");
            let text = serde_json::to_string_pretty(&json).expect("JSON") + "\n";
            std::fs::write(&file, text).unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
            println!("wrote {}", file.display());
        }
    }
    if !plan.full {
        println!("smoke run only (no --bench argument): use `cargo bench` for the figures");
    }
    println!("total {:.1} s", started.elapsed().as_secs_f64());
}

/// `runs` timed runs of the helper over `volumes` volumes, after `warmup` untimed ones:
/// marker-to-exit and marker-to-detection samples.
fn helper_series(volumes: usize, plan: &Plan) -> (Vec<Duration>, Vec<Duration>) {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let base = tmp.path().canonicalize().expect("canonical temporary directory");
    let root = base.join("restores");
    let names: Vec<String> = (0..volumes).map(|i| format!("vol-{i}")).collect();
    for name in &names {
        std::fs::create_dir_all(root.join(name)).expect("creating a volume directory");
    }
    let termination = base.join("termination-log");
    let expected_watches = 1 + 2 * volumes;

    let mut samples = Vec::with_capacity(plan.helper_runs);
    let mut detections = Vec::with_capacity(plan.helper_runs);
    for run in 0..plan.warmup + plan.helper_runs {
        // A restore Job creates `.coracle` when it starts, long before its marker; the helper
        // removes it again once it is empty.
        for name in &names {
            std::fs::create_dir_all(root.join(name).join(MARKER_DIR)).expect("creating .coracle");
        }
        let mut command = Command::new(HELPER);
        command
            .env_clear()
            .env("CORACLE_RESTORE_NAME", "bench")
            .env("CORACLE_RESTORE_UID", RESTORE_UID)
            .env("CORACLE_POD_NAME", "web-0")
            .env("CORACLE_POD_NAMESPACE", "shop")
            .env("CORACLE_POD_UID", POD_UID)
            .env("CORACLE_NODE_NAME", "node-1")
            .env("CORACLE_VOLUMES", names.join(","))
            .env("CORACLE_RESTORES_ROOT", &root)
            .env("CORACLE_TIMEOUT", HELPER_TIMEOUT)
            .env("CORACLE_TERMINATION_LOG", &termination);
        let mut helper = Proc::spawn(command, Output::Capture);
        helper.await_line("watching");
        let watches = inotify_watches(helper.child.id());
        if watches < expected_watches {
            helper.fail(&format!("logged \"watching\" with {watches} inotify watches, not {expected_watches}"));
        }

        let mut renamed_at = Instant::now();
        for name in &names {
            renamed_at = write_marker(&root.join(name).join(MARKER_DIR));
        }
        let status = helper.wait();
        let exited_at = Instant::now();
        if !status.success() {
            helper.fail(&format!("exited with {status}"));
        }
        if let Some(name) = names.iter().find(|n| root.join(n).join(MARKER_DIR).join(RESTORE_UID).exists()) {
            helper.fail(&format!("exited 0 but left the marker of {name}"));
        }
        let Some(detected_at) =
            helper.drain().into_iter().filter(|(_, l)| l.contains(" is restored")).map(|(t, _)| t).max()
        else {
            helper.fail("never logged that a volume is restored");
        };
        if run >= plan.warmup {
            samples.push(exited_at - renamed_at);
            detections.push(detected_at.saturating_duration_since(renamed_at));
        }
    }
    (samples, detections)
}

/// Closing an inotify instance that watches 3 directories (a root, a volume, its `.coracle`),
/// as the helper's exit does for 1 volume: the floor under its marker-to-exit time.
fn inotify_close_floor(runs: usize) -> Vec<Duration> {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dirs = [tmp.path().to_path_buf(), tmp.path().join("vol-0"), tmp.path().join("vol-0").join(MARKER_DIR)];
    std::fs::create_dir_all(&dirs[2]).expect("creating .coracle");
    let mask = inotify::WatchMask::CREATE | inotify::WatchMask::MOVED_TO;
    (0..runs)
        .map(|_| {
            let inotify = inotify::Inotify::init().expect("an inotify instance");
            for dir in &dirs {
                inotify.watches().add(dir, mask).expect("an inotify watch");
            }
            let started = Instant::now();
            drop(inotify);
            started.elapsed()
        })
        .collect()
}

/// `runs` runs of the one-second poller over 1 volume, each marker at a random offset in the second.
fn poll_series(runs: usize, rng: &mut Rng) -> Vec<Duration> {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let root = tmp.path().canonicalize().expect("canonical temporary directory").join("restores");
    let marker_dir = root.join("vol-0").join(MARKER_DIR);
    let mut offsets: Vec<f64> = (0..runs).map(|i| (i as f64 + rng.unit()) / runs as f64).collect();
    for i in (1..offsets.len()).rev() {
        offsets.swap(i, rng.below(i + 1));
    }

    let mut samples = Vec::with_capacity(runs);
    for offset in offsets {
        std::fs::create_dir_all(&marker_dir).expect("creating .coracle");
        let mut command = Command::new("sh");
        command.args(["-c", POLLER, "velero-restore-helper"]).arg(&root).args([RESTORE_UID, MARKER_DIR]);
        let mut poller = Proc::spawn(command, Output::Discard);
        let started = Instant::now();
        std::thread::sleep((started + Duration::from_secs_f64(offset)).saturating_duration_since(Instant::now()));
        let renamed_at = write_marker(&marker_dir);
        let status = poller.wait();
        let exited_at = Instant::now();
        if !status.success() {
            poller.fail(&format!("exited with {status}"));
        }
        if marker_dir.exists() {
            poller.fail("exited 0 but left the marker directory");
        }
        samples.push(exited_at - renamed_at);
    }
    samples
}

/// What a restore Job does: a temporary file, then a rename. Returns the instant just before
/// the rename.
fn write_marker(dir: &Path) -> Instant {
    let tmp = dir.join(format!(".{RESTORE_UID}.tmp"));
    std::fs::write(&tmp, "restored snapshot 4f3c2a1b\n").expect("writing the temporary marker");
    let at = Instant::now();
    std::fs::rename(&tmp, dir.join(RESTORE_UID)).expect("renaming the marker into place");
    at
}

/// The inotify watches the process holds, as the kernel lists them in `/proc/<pid>/fdinfo`.
fn inotify_watches(pid: u32) -> usize {
    let dir = PathBuf::from(format!("/proc/{pid}/fdinfo"));
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    entries
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
        .map(|info| info.lines().filter(|line| line.starts_with("inotify wd:")).count())
        .sum()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Output {
    /// stderr is read line by line (the helper's readiness line).
    Capture,
    /// Its own process group as well, so the `sleep` it forks is killed with it.
    Discard,
}

/// A child process that is killed (by pid, or its process group) if it is still running when
/// dropped: on every error path, including panics.
struct Proc {
    child: Child,
    output: Output,
    lines: Option<mpsc::Receiver<(Instant, String)>>,
    reader: Option<JoinHandle<()>>,
    /// stderr lines read so far, each with the instant it was read.
    stderr: Vec<(Instant, String)>,
}

impl Proc {
    fn spawn(mut command: Command, output: Output) -> Proc {
        command.stdin(Stdio::null()).stdout(Stdio::null());
        match output {
            Output::Capture => command.stderr(Stdio::piped()),
            Output::Discard => command.stderr(Stdio::null()).process_group(0),
        };
        let mut child = command.spawn().unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        let (mut lines, mut reader) = (None, None);
        if let Some(stderr) = child.stderr.take() {
            let (tx, rx) = mpsc::channel();
            reader = Some(std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if tx.send((Instant::now(), line)).is_err() {
                        return;
                    }
                }
            }));
            lines = Some(rx);
        }
        Proc { child, output, lines, reader, stderr: Vec::new() }
    }

    /// Blocks until a stderr line contains `text`.
    fn await_line(&mut self, text: &str) {
        let deadline = Instant::now() + READY_LIMIT;
        if let Some(lines) = &self.lines {
            while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                let found = line.1.contains(text);
                self.stderr.push(line);
                if found {
                    return;
                }
            }
        }
        self.fail(&format!("never logged {text:?}"));
    }

    fn wait(&mut self) -> ExitStatus {
        match self.child.wait() {
            Ok(status) => status,
            Err(e) => self.fail(&format!("cannot wait for it: {e}")),
        }
    }

    /// Every stderr line, once the process has exited (the pipe closes with it).
    fn drain(&mut self) -> Vec<(Instant, String)> {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        if let Some(lines) = &self.lines {
            self.stderr.extend(lines.try_iter());
        }
        self.stderr.clone()
    }

    /// Kills the process if it still runs and panics with what it logged.
    fn fail(&mut self, what: &str) -> ! {
        self.stop();
        let stderr: Vec<String> = self.drain().into_iter().map(|(_, line)| line).collect();
        panic!("process {} {what}; stderr:\n{}", self.child.id(), stderr.join("\n"));
    }

    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if self.output == Output::Discard {
                let group = format!("-{}", self.child.id());
                let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Stats {
    n: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Stats {
    fn of(mut samples: Vec<Duration>) -> Stats {
        assert!(!samples.is_empty(), "no samples");
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        // Nearest rank: the smallest sample with at least p of the samples at or below it.
        let rank = |p: f64| ms(samples[((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1]);
        Stats { n: samples.len(), p50_ms: rank(0.50), p99_ms: rank(0.99), max_ms: ms(samples[samples.len() - 1]) }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "p50_ms": round3(self.p50_ms),
            "p99_ms": round3(self.p99_ms),
            "max_ms": round3(self.max_ms),
            "n": self.n,
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// xorshift64*, seeded from the standard library's per-process random hasher keys: enough for
/// random offsets, without a dependency.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u128(std::time::SystemTime::UNIX_EPOCH.elapsed().map(|d| d.as_nanos()).unwrap_or_default());
        Rng(hasher.finish() | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n.
    fn below(&mut self, n: usize) -> usize {
        ((self.unit() * n as f64) as usize).min(n - 1)
    }
}
