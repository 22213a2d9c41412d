//! Removing secrets from text that leaves the process (restic's stderr in failure reasons,
//! events, the termination message, logs).

const REDACTED: &str = "[redacted]";
/// Environment variables whose names contain one of these carry credentials restic inherits
/// (AWS_SECRET_ACCESS_KEY, AZURE_ACCOUNT_KEY, B2_ACCOUNT_KEY, OS_PASSWORD, …).
const SECRET_NAME_PARTS: [&str; 5] = ["SECRET", "PASSWORD", "TOKEN", "KEY", "CREDENTIAL"];
/// Shorter values are not redacted: they would mangle ordinary words and are no secrets worth
/// the name anyway.
const MIN_SECRET_LEN: usize = 6;

#[derive(Debug, Clone, Default)]
pub struct Scrubber {
    secrets: Vec<String>,
}

impl Scrubber {
    pub fn new() -> Self {
        Scrubber::default()
    }

    /// A scrubber that also knows the values of credential-like variables in this process's
    /// environment.
    pub fn from_env() -> Self {
        let mut s = Scrubber::new();
        for (name, value) in std::env::vars_os() {
            let name = name.to_string_lossy().to_ascii_uppercase();
            // `*_FILE` variables name where a secret is, not the secret.
            if SECRET_NAME_PARTS.iter().any(|part| name.contains(part)) && !name.ends_with("_FILE") {
                s.add(&value.to_string_lossy());
            }
        }
        s
    }

    pub fn add(&mut self, secret: &str) {
        let secret = secret.trim();
        if secret.len() >= MIN_SECRET_LEN && !self.secrets.iter().any(|s| s == secret) {
            self.secrets.push(secret.to_string());
            // Longest first, so a secret containing another is replaced whole.
            self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    pub fn scrub(&self, text: &str) -> String {
        let mut out = redact_url_credentials(text);
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
        out
    }
}

/// Replaces the user-info of URLs (`scheme://user:pass@host`) with `***`.
pub use coracle_events::redact::redact_url_credentials;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_secrets_longest_first() {
        let mut s = Scrubber::new();
        s.add("abcdef");
        s.add("abcdef-longer");
        s.add("xy"); // too short to be treated as a secret
        assert_eq!(s.scrub("pw abcdef-longer and abcdef, xy"), "pw [redacted] and [redacted], xy");
    }

    #[test]
    fn url_credentials() {
        assert_eq!(
            redact_url_credentials("rest:https://user:p%40ss@host:8000/repo failed"),
            "rest:https://***@host:8000/repo failed"
        );
        assert_eq!(redact_url_credentials("s3:https://s3.example.com/bucket"), "s3:https://s3.example.com/bucket");
        assert_eq!(redact_url_credentials("a://u@h b://c"), "a://***@h b://c");
        assert_eq!(redact_url_credentials("no urls, user@host"), "no urls, user@host");
    }
}
