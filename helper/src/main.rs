use coracle_restore_wait::config::{self, Config};
use coracle_restore_wait::markers::Root;
use coracle_restore_wait::watch::{self, Outcome};
use coracle_restore_wait::{announce, exit, log};
use std::path::Path;
use std::time::Instant;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Kubernetes keeps at most this much of a termination message.
const TERMINATION_MESSAGE_LIMIT: usize = 4096;

fn main() {
    std::process::exit(run());
}

fn run() -> i32 {
    let config = match Config::from_lookup(|name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(e) => {
            let log_path = std::env::var(config::TERMINATION_LOG)
                .ok()
                .filter(|p| !p.trim().is_empty())
                .unwrap_or_else(|| config::DEFAULT_TERMINATION_LOG.into());
            finish(Path::new(&log_path), log::Level::Error, &e.to_string());
            return exit::BAD_CONFIG;
        }
    };
    for warning in &config.warnings {
        log::warn(warning);
    }
    let root = match Root::open(&config.root) {
        Ok(root) => root,
        Err(e) => {
            let message = format!("invalid configuration: {}: {e}", config::RESTORES_ROOT);
            finish(&config.termination_log, log::Level::Error, &message);
            return exit::BAD_CONFIG;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            finish(&config.termination_log, log::Level::Error, &format!("cannot start the async runtime: {e}"));
            return exit::FAILED;
        }
    };
    runtime.block_on(wait(&config, &root))
}

async fn wait(config: &Config, root: &Root) -> i32 {
    let restore = describe_restore(config);
    log::info(&format!(
        "{restore}: waiting up to {:?} for {} volume(s) under {}: {}",
        config.timeout,
        config.volumes.len(),
        root.path().display(),
        config.volumes.join(", ")
    ));
    let started = Instant::now();
    // Handlers first: a SIGTERM arriving once the wait has begun must not kill PID 1 outright.
    let signals = Signals::install();
    // Announced concurrently: the wait below starts with a scan, so markers written by a
    // restore Job that is faster than this event are found all the same.
    let announcing = match (&config.nats_url, &config.pod) {
        (Some(url), Some(pod)) => {
            Some(tokio::spawn(announce::announce(url.clone(), announce::ready_event(config, pod))))
        }
        (None, _) => {
            log::info("CORACLE_NATS_URL is not set: not announcing the pod");
            None
        }
        (Some(_), None) => None,
    };
    let outcome = tokio::select! {
        outcome = watch::wait(root, config.marker_name(), &config.volumes, config.timeout) => Ok(outcome),
        signal = signals.terminated() => Err(signal),
    };
    if let Some(task) = announcing {
        if !task.is_finished() {
            log::info("stopped announcing the pod: waiting is over");
        }
        task.abort();
    }

    let elapsed = started.elapsed();
    let (level, message, code) = match outcome {
        Ok(Outcome::Restored) => {
            for volume in &config.volumes {
                if config.keep_markers.contains(volume) {
                    log::info(&format!("keeping the marker of volume {volume}: other pods wait for it too"));
                    continue;
                }
                if let Err(e) = root.remove(volume, config.marker_name()) {
                    // The data is in place; a leftover marker only costs a stray file.
                    log::warn(&format!("cannot remove the marker of volume {volume}: {e}"));
                }
            }
            let message = format!(
                "{restore}: all {} volume(s) restored after {:.3}s: {}",
                config.volumes.len(),
                elapsed.as_secs_f64(),
                config.volumes.join(", ")
            );
            (log::Level::Info, message, exit::RESTORED)
        }
        Ok(Outcome::Failed { volume, reason }) => {
            (log::Level::Error, format!("{restore} failed for volume {volume}: {reason}"), exit::FAILED)
        }
        Ok(Outcome::TimedOut { missing }) => {
            let message = format!(
                "{restore} timed out after {:?} ({}): no marker {}/{} in volume(s) {}",
                config.timeout,
                config::TIMEOUT,
                coracle_events::MARKER_DIR,
                config.restore.uid,
                missing.join(", ")
            );
            (log::Level::Error, message, exit::TIMED_OUT)
        }
        Err(signal) => {
            let code = if signal == "SIGINT" { exit::SIGINT } else { exit::SIGTERM };
            (log::Level::Warn, format!("{restore}: terminated by {signal} while waiting"), code)
        }
    };
    finish(&config.termination_log, level, &message);
    code
}

fn describe_restore(config: &Config) -> String {
    if config.restore.name.is_empty() {
        format!("restore {}", config.restore.uid)
    } else {
        format!("restore {} ({})", config.restore.name, config.restore.uid)
    }
}

/// Logs the final message and writes it to the termination log, where `kubectl describe pod`
/// shows it.
fn finish(termination_log: &Path, level: log::Level, message: &str) {
    log::log(level, message);
    let mut end = message.len().min(TERMINATION_MESSAGE_LIMIT);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    if let Err(e) = std::fs::write(termination_log, &message[..end]) {
        log::warn(&format!("cannot write the termination log {}: {e}", termination_log.display()));
    }
}

/// SIGTERM (pod deleted) and SIGINT. As PID 1 the helper would otherwise ignore SIGTERM and
/// hold up the pod's deletion for its whole grace period.
struct Signals {
    term: Option<Signal>,
    int: Option<Signal>,
}

impl Signals {
    fn install() -> Self {
        let install = |kind| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn(&format!("cannot handle signal {kind:?}: {e}"));
                None
            }
        };
        Signals { term: install(SignalKind::terminate()), int: install(SignalKind::interrupt()) }
    }

    async fn terminated(mut self) -> &'static str {
        async fn next(signal: &mut Option<Signal>) {
            match signal {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = next(&mut self.term) => "SIGTERM",
            _ = next(&mut self.int) => "SIGINT",
        }
    }
}
