//! Plain stderr logging (`<time> <LEVEL> <message>`): `kubectl logs` is the only reader, and
//! a logging framework would cost more binary size than this helper's own code.

use std::io::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

pub fn log(level: Level, message: &str) {
    let level = match level {
        Level::Info => "INFO",
        Level::Warn => "WARN",
        Level::Error => "ERROR",
    };
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
    // A closed stderr is no reason to fail the pod.
    let _ = writeln!(std::io::stderr().lock(), "{now} {level} {message}");
}

pub fn info(message: &str) {
    log(Level::Info, message);
}

pub fn warn(message: &str) {
    log(Level::Warn, message);
}

pub fn error(message: &str) {
    log(Level::Error, message);
}

/// Masks URL credentials (`nats://user:pass@host` → `nats://***@host`) in text that is logged.
pub use coracle_events::redact::redact_url_credentials;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_credentials_are_masked() {
        assert_eq!(redact_url_credentials("nats://u:p@nats:4222 refused"), "nats://***@nats:4222 refused");
        assert_eq!(redact_url_credentials("tls://nats:4222, nats://t0ken@n2"), "tls://nats:4222, nats://***@n2");
        assert_eq!(redact_url_credentials("no url"), "no url");
    }
}
