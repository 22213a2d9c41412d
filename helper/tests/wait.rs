//! The real `coracle-restore-wait` binary on real directories: markers before and after
//! start, late `.coracle` and volume directories, failure markers, timeouts, many volumes,
//! hostile symlinks, signals, a volume shared by two pods, and the ready event on a real
//! nats-server.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const RESTORE_UID: &str = "5b2e7c1a-0000-4000-8000-000000000001";
const POD_UID: &str = "0f2c7f4e-3c1a-4a8e-9b7d-2f0e1d2c3b4a";
/// Far above any real wait here, far below the helper's own 30 s rescan: a test passing
/// inside it was woken by inotify.
const LIMIT: Duration = Duration::from_secs(20);

struct Dirs {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    termination: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().canonicalize().unwrap();
    let root = base.join("restores");
    std::fs::create_dir(&root).unwrap();
    Dirs { termination: base.join("termination-log"), root, _tmp: tmp }
}

impl Dirs {
    fn volume(&self, name: &str) -> PathBuf {
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn marker(&self, volume: &str) -> PathBuf {
        self.root.join(volume).join(".coracle").join(RESTORE_UID)
    }

    /// What a restore Job does: `.coracle` if needed, a temporary file, then a rename.
    fn write_marker(&self, volume: &str, suffix: &str, content: &str) {
        let dir = self.root.join(volume).join(".coracle");
        std::fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join(format!(".{RESTORE_UID}{suffix}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(tmp, dir.join(format!("{RESTORE_UID}{suffix}"))).unwrap();
    }

    fn start(&self, volumes: &str, extra: &[(&str, &str)]) -> Helper {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_coracle-restore-wait"));
        cmd.env_clear()
            .env("CORACLE_RESTORE_NAME", "restore-1")
            .env("CORACLE_RESTORE_UID", RESTORE_UID)
            .env("CORACLE_POD_NAME", "web-0")
            .env("CORACLE_POD_NAMESPACE", "shop")
            .env("CORACLE_POD_UID", POD_UID)
            .env("CORACLE_NODE_NAME", "node-1")
            .env("CORACLE_VOLUMES", volumes)
            .env("CORACLE_RESTORES_ROOT", &self.root)
            .env("CORACLE_TIMEOUT", "60s")
            .env("CORACLE_TERMINATION_LOG", &self.termination);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Helper::spawn(cmd, self.termination.clone())
    }
}

struct Helper {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Vec<String>,
    termination: PathBuf,
}

struct Exit {
    code: i32,
    stderr: String,
    termination: String,
    /// When the exit was noticed (polled every millisecond).
    exited_at: Instant,
}

impl Helper {
    fn spawn(mut cmd: Command, termination: PathBuf) -> Helper {
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Helper { child, lines, stderr: Vec::new(), termination }
    }

    /// Blocks until the helper logs a line containing `text` (its watches are in place once
    /// it logs "watching").
    fn await_line(&mut self, text: &str) {
        let deadline = Instant::now() + LIMIT;
        while let Ok(line) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            let found = line.contains(text);
            self.stderr.push(line);
            if found {
                return;
            }
        }
        let _ = self.child.kill();
        panic!("the helper never logged {text:?}; stderr:\n{}", self.stderr.join("\n"));
    }

    fn watching(mut self) -> Self {
        self.await_line("watching");
        self
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn finish(mut self) -> Exit {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > LIMIT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.stderr.extend(self.lines.try_iter());
                panic!("the helper did not exit within {LIMIT:?}; stderr:\n{}", self.stderr.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let exited_at = Instant::now();
        // The reader thread ends with the pipe.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stderr.push(line);
        }
        Exit {
            code: status.code().unwrap_or(-1),
            stderr: self.stderr.join("\n"),
            termination: std::fs::read_to_string(&self.termination).unwrap_or_default(),
            exited_at,
        }
    }
}

#[test]
fn markers_present_before_start() {
    let d = dirs();
    for v in ["data", "cache"] {
        d.volume(v);
        d.write_marker(v, "", "");
    }
    let exit = d.start("data,cache", &[]).finish();
    assert_eq!(exit.code, 0, "{}", exit.stderr);
    assert!(exit.termination.contains("all 2 volume(s) restored"), "{}", exit.termination);
    for v in ["data", "cache"] {
        assert!(!d.marker(v).exists());
        assert!(!d.root.join(v).join(".coracle").exists(), "an empty .coracle is removed");
        assert!(d.root.join(v).is_dir());
    }
}

#[test]
fn marker_written_after_start_and_latency() {
    let d = dirs();
    d.volume("data");
    let mut samples = Vec::new();
    for _ in 0..5 {
        let helper = d.start("data", &[]).watching();
        let written = Instant::now();
        d.write_marker("data", "", "restored snapshot abc\n");
        let exit = helper.finish();
        assert_eq!(exit.code, 0, "{}", exit.stderr);
        let latency = exit.exited_at - written;
        assert!(!d.marker("data").exists());
        samples.push(latency);
    }
    samples.sort();
    println!(
        "marker-to-exit latency over {} runs: min {:?}, median {:?}, max {:?}",
        samples.len(),
        samples[0],
        samples[samples.len() / 2],
        samples[samples.len() - 1]
    );
}

#[test]
fn marker_dir_created_late_and_marker_written_in_place() {
    let d = dirs();
    d.volume("data");
    let mut helper = d.start("data", &[]).watching();
    std::fs::create_dir(d.root.join("data/.coracle")).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(helper.is_running());
    // Written directly rather than renamed: the CREATE event alone must be enough.
    std::fs::write(d.marker("data"), "").unwrap();
    let exit = helper.finish();
    assert_eq!(exit.code, 0, "{}", exit.stderr);
    assert!(!d.root.join("data/.coracle").exists());
}

#[test]
fn volume_directory_created_late() {
    let d = dirs();
    d.volume("data");
    let mut helper = d.start("data,late", &[]).watching();
    d.write_marker("data", "", "");
    std::thread::sleep(Duration::from_millis(100));
    assert!(helper.is_running(), "exited before the late volume existed");
    d.volume("late");
    std::thread::sleep(Duration::from_millis(50));
    d.write_marker("late", "", "");
    let exit = helper.finish();
    assert_eq!(exit.code, 0, "{}", exit.stderr);
    assert!(!d.marker("late").exists() && !d.marker("data").exists());
}

#[test]
fn failure_marker_fails_with_volume_and_reason() {
    let d = dirs();
    d.volume("data");
    d.volume("cache");
    d.write_marker("cache", "", "");
    let helper = d.start("cache,data", &[]).watching();
    let reason = "restic restore failed (exit code 1: fatal error): no matching ID found for prefix \"deadbeef\"";
    // In place, as a person or an older Job might: the reason is read once complete.
    let dir = d.root.join("data/.coracle");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join(format!("{RESTORE_UID}.failed")), reason).unwrap();
    let exit = helper.finish();
    assert_eq!(exit.code, 1, "{}", exit.stderr);
    for text in [&exit.termination, &exit.stderr] {
        assert!(text.contains("failed for volume data"), "{text}");
        assert!(text.contains(reason), "{text}");
    }
    // Nothing is removed on failure: the markers explain what happened.
    assert!(d.marker("cache").exists());
}

#[test]
fn an_empty_failure_marker_still_fails() {
    let d = dirs();
    d.volume("data");
    std::fs::create_dir(d.root.join("data/.coracle")).unwrap();
    let helper = d.start("data", &[]).watching();
    std::fs::File::create(d.root.join(format!("data/.coracle/{RESTORE_UID}.failed"))).unwrap();
    let exit = helper.finish();
    assert_eq!(exit.code, 1, "{}", exit.stderr);
    assert!(exit.termination.ends_with("failed for volume data: the restore Job failed without giving a reason"));
}

#[test]
fn failure_marker_present_before_start() {
    let d = dirs();
    d.volume("data");
    d.write_marker("data", ".failed", "repository shop: wrong password\n");
    let exit = d.start("data", &[]).finish();
    assert_eq!(exit.code, 1, "{}", exit.stderr);
    assert!(
        exit.termination.ends_with("failed for volume data: repository shop: wrong password"),
        "{}",
        exit.termination
    );
}

#[test]
fn timeout_names_the_missing_volumes() {
    let d = dirs();
    for v in ["a", "b", "c"] {
        d.volume(v);
    }
    d.write_marker("b", "", "");
    let exit = d.start("a,b,c", &[("CORACLE_TIMEOUT", "300ms")]).finish();
    assert_eq!(exit.code, 2, "{}", exit.stderr);
    assert!(exit.termination.contains("timed out after 300ms"), "{}", exit.termination);
    assert!(exit.termination.contains("volume(s) a, c"), "{}", exit.termination);
    assert!(exit.termination.contains(&format!(".coracle/{RESTORE_UID}")), "{}", exit.termination);
    assert!(d.marker("b").exists(), "markers stay until every volume is restored");
}

#[test]
fn fifty_volumes_with_spurious_events() {
    let d = dirs();
    let names: Vec<String> = (0..50).map(|i| format!("vol-{i}")).collect();
    for (i, v) in names.iter().enumerate() {
        d.volume(v);
        if i % 3 == 0 {
            d.write_marker(v, "", "");
        }
    }
    let mut helper = d.start(&names.join(","), &[]).watching();
    for (i, v) in names.iter().enumerate().rev() {
        // Noise the helper must ignore: other files, other restores' markers, temp files.
        std::fs::write(d.root.join(v).join("app.db"), "x").unwrap();
        std::fs::create_dir_all(d.root.join(v).join(".coracle")).unwrap();
        std::fs::write(d.root.join(v).join(".coracle/other-restore"), "").unwrap();
        std::fs::write(d.root.join(v).join(format!(".coracle/.{RESTORE_UID}.tmp")), "").unwrap();
        if i % 3 != 0 && v != "vol-1" {
            d.write_marker(v, "", "");
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(helper.is_running(), "exited while vol-1 had no marker");
    d.write_marker("vol-1", "", "");
    let exit = helper.finish();
    assert_eq!(exit.code, 0, "{}", exit.stderr);
    assert!(exit.termination.contains("all 50 volume(s) restored"), "{}", exit.termination);
    for v in &names {
        assert!(!d.marker(v).exists(), "{v}");
        // Other files stay, and so does a .coracle that is not empty.
        assert!(d.root.join(v).join(".coracle/other-restore").exists(), "{v}");
        assert!(d.root.join(v).join("app.db").exists(), "{v}");
    }
}

#[test]
fn marker_dir_replaced_while_waiting() {
    let d = dirs();
    d.volume("data");
    std::fs::create_dir(d.root.join("data/.coracle")).unwrap();
    let helper = d.start("data", &[]).watching();
    std::fs::rename(d.root.join("data/.coracle"), d.root.join("data/old")).unwrap();
    std::fs::create_dir(d.root.join("data/.coracle")).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // A marker in the old, moved-away directory does not count.
    std::fs::write(d.root.join("data/old").join(RESTORE_UID), "").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    d.write_marker("data", "", "");
    let exit = helper.finish();
    assert_eq!(exit.code, 0, "{}", exit.stderr);
}

#[test]
fn moved_away_marker_dir_does_not_count() {
    let d = dirs();
    d.volume("data");
    std::fs::create_dir(d.root.join("data/.coracle")).unwrap();
    let mut helper = d.start("data", &[("CORACLE_TIMEOUT", "1s")]).watching();
    std::fs::rename(d.root.join("data/.coracle"), d.root.join("data/old")).unwrap();
    std::fs::write(d.root.join("data/old").join(RESTORE_UID), "").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(helper.is_running());
    let exit = helper.finish();
    assert_eq!(exit.code, 2, "{}", exit.stderr);
}

#[test]
fn symlinked_markers_are_refused_not_followed() {
    let d = dirs();
    let outside = d.root.parent().unwrap().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), "top secret").unwrap();
    d.volume("data");
    std::fs::create_dir(d.root.join("data/.coracle")).unwrap();
    let helper = d.start("data", &[]).watching();
    std::os::unix::fs::symlink(outside.join("secret"), d.root.join("data/.coracle/x")).unwrap();
    std::fs::rename(d.root.join("data/.coracle/x"), d.root.join(format!("data/.coracle/{RESTORE_UID}.failed")))
        .unwrap();
    let exit = helper.finish();
    assert_eq!(exit.code, 1, "{}", exit.stderr);
    assert!(exit.termination.contains("is a symbolic link; refusing to follow it"), "{}", exit.termination);
    assert!(!exit.termination.contains("top secret") && !exit.stderr.contains("top secret"));
    assert_eq!(std::fs::read_to_string(outside.join("secret")).unwrap(), "top secret");

    // A `.coracle` pointing elsewhere, with a marker there, is refused as well.
    let d = dirs();
    std::fs::create_dir_all(outside.join(".coracle")).unwrap();
    std::fs::write(outside.join(".coracle").join(RESTORE_UID), "").unwrap();
    d.volume("data");
    std::os::unix::fs::symlink(outside.join(".coracle"), d.root.join("data/.coracle")).unwrap();
    let exit = d.start("data", &[]).finish();
    assert_eq!(exit.code, 1, "{}", exit.stderr);
    assert!(exit.termination.contains("data/.coracle is a symbolic link"), "{}", exit.termination);
    assert!(outside.join(".coracle").join(RESTORE_UID).exists(), "removed a marker through a symlink");
}

#[test]
fn a_volume_shared_by_two_pods_releases_both() {
    let d = dirs();
    d.volume("shared");
    // Restore Jobs create `.coracle` when they start, long before the marker: both helpers
    // watch it when the marker arrives, and the first one removes it at once.
    std::fs::create_dir(d.root.join("shared/.coracle")).unwrap();
    let first = d.start("shared", &[]).watching();
    let second = d.start("shared", &[]).watching();
    d.write_marker("shared", "", "");
    let (a, b) = (first.finish(), second.finish());
    assert_eq!((a.code, b.code), (0, 0), "{}\n---\n{}", a.stderr, b.stderr);
    assert!(!d.marker("shared").exists());
}

#[test]
fn markers_other_pods_wait_for_are_kept() {
    let d = dirs();
    for v in ["own", "shared"] {
        d.volume(v);
        d.write_marker(v, "", "");
    }
    let exit = d.start("own,shared", &[("CORACLE_KEEP_MARKERS", "shared")]).finish();
    assert_eq!(exit.code, 0, "{}", exit.stderr);
    assert!(!d.marker("own").exists());
    assert!(d.marker("shared").exists(), "another pod's restore marker was removed");
    assert!(exit.stderr.contains("keeping the marker of volume shared"), "{}", exit.stderr);
}

#[test]
fn invalid_configuration_exits_3_without_touching_anything() {
    let d = dirs();
    d.volume("data");
    d.write_marker("data", "", "");
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 6] = [
        ("../data", &[], "CORACLE_VOLUMES entry \"../data\""),
        ("Data", &[], "CORACLE_VOLUMES entry"),
        ("data", &[("CORACLE_RESTORE_UID", "../../etc")], "CORACLE_RESTORE_UID"),
        ("data", &[("CORACLE_TIMEOUT", "four hours")], "CORACLE_TIMEOUT"),
        ("data", &[("CORACLE_POD_UID", "not-a-uid")], "CORACLE_POD_UID"),
        ("data", &[("CORACLE_RESTORES_ROOT", "/nonexistent/restores")], "CORACLE_RESTORES_ROOT"),
    ];
    for (volumes, extra, expected) in cases {
        let exit = d.start(volumes, extra).finish();
        assert_eq!(exit.code, 3, "{volumes} {extra:?}: {}", exit.stderr);
        assert!(exit.termination.starts_with("invalid configuration"), "{}", exit.termination);
        assert!(exit.termination.contains(expected), "{expected} not in {}", exit.termination);
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coracle-restore-wait"));
    cmd.env_clear().env("CORACLE_TERMINATION_LOG", &d.termination);
    let exit = Helper::spawn(cmd, d.termination.clone()).finish();
    assert_eq!(exit.code, 3);
    assert!(exit.termination.contains("CORACLE_RESTORE_UID is not set"), "{}", exit.termination);
    assert!(exit.termination.contains("CORACLE_VOLUMES is not set"), "{}", exit.termination);
    assert!(d.marker("data").exists(), "a rejected configuration must not touch the volumes");
}

#[test]
fn sigterm_ends_the_wait() {
    let d = dirs();
    d.volume("data");
    let helper = d.start("data", &[]).watching();
    let killed = Command::new("kill").args(["-TERM", &helper.child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let exit = helper.finish();
    assert_eq!(exit.code, 143, "{}", exit.stderr);
    assert!(exit.termination.contains("terminated by SIGTERM"), "{}", exit.termination);
}

#[test]
fn unreachable_nats_is_only_a_warning() {
    let d = dirs();
    d.volume("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("nats://user:hunter2@127.0.0.1:{port}");
    let mut helper = d.start("data", &[("CORACLE_NATS_URL", &url)]).watching();
    helper.await_line("publishing the ready event failed");
    d.write_marker("data", "", "");
    let exit = helper.finish();
    assert_eq!(exit.code, 0, "{}", exit.stderr);
    assert!(!exit.stderr.contains("hunter2"), "{}", exit.stderr);
}

fn tools_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin")
}

/// A nats-server with JetStream, killed by pid when dropped.
struct NatsServer {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    fn start(test: &str) -> Option<Self> {
        let bin = tools_bin().join("nats-server");
        if !bin.is_file() {
            println!("SKIPPED {test}: nats-server not in .tools/bin (scripts/install-tools.sh)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = NatsServer { child, url: format!("nats://127.0.0.1:{port}"), _dir: dir };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nats-server did not start on {}", server.url);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn announces_the_pod_on_nats() {
    let Some(server) = NatsServer::start("announces_the_pod_on_nats") else { return };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let js = runtime.block_on(async {
        let client = async_nats::connect(&server.url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        coracle_events::bootstrap::ensure(&js).await.unwrap();
        js
    });

    let d = dirs();
    d.volume("data");
    d.volume("cache");
    for _ in 0..2 {
        // Twice: a restarted helper publishes the same id, which the stream drops.
        let mut helper = d.start("data,cache", &[("CORACLE_NATS_URL", &server.url)]).watching();
        helper.await_line("published coracle.restore.pod.ready");
        for v in ["data", "cache"] {
            d.write_marker(v, "", "");
        }
        let exit = helper.finish();
        assert_eq!(exit.code, 0, "{}", exit.stderr);
    }

    let events = runtime.block_on(async {
        let stream = js.get_stream(coracle_events::subjects::STREAM).await.unwrap();
        let count = stream.cached_info().state.messages;
        let mut events = Vec::new();
        for seq in 1..=count {
            let msg = stream.get_raw_message(seq).await.unwrap();
            events.push(msg);
        }
        events
    });
    assert_eq!(events.len(), 1, "the second announcement must be de-duplicated");
    let event = coracle_events::CloudEvent::parse(&events[0].payload).unwrap();
    assert_eq!(events[0].subject.as_str(), "coracle.restore.pod.ready");
    assert_eq!(event.id, format!("{RESTORE_UID}.{POD_UID}.ready"));
    assert_eq!(event.ty, "dev.coracle.restore.pod.ready.v1");
    assert_eq!(event.source, "/coracle/pods/shop/web-0");
    assert_eq!(event.subject.as_deref(), Some("restore-1"));
    let data: coracle_events::RestorePodReady = serde_json::from_value(event.data).unwrap();
    assert_eq!(data.restore.uid, RESTORE_UID);
    assert_eq!((data.namespace.as_str(), data.pod.as_str(), data.node.as_str()), ("shop", "web-0", "node-1"));
    assert_eq!(data.pod_uid, POD_UID);
    assert_eq!(data.volumes, ["data", "cache"]);
}
