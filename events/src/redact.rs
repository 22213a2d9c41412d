//! Keeping secrets out of logs: URL credentials masked wherever a URL is logged (NATS URLs,
//! restic repository strings such as `rest:https://user:pass@host/`).

/// Replaces the user-info of URLs (`scheme://user:pass@host`) with `***`, so repository
/// strings such as `rest:https://user:pass@host/` can be logged.
pub fn redact_url_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let authority_end = tail.find(|c: char| c == '/' || c.is_whitespace() || c == '"').unwrap_or(tail.len());
        match tail[..authority_end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_user_info_only() {
        assert_eq!(redact_url_credentials("nats://u:p@nats:4222 refused"), "nats://***@nats:4222 refused");
        assert_eq!(redact_url_credentials("rest:https://user:pw@host:8000/ns"), "rest:https://***@host:8000/ns");
        assert_eq!(redact_url_credentials("s3:s3.example.com/bucket"), "s3:s3.example.com/bucket");
        assert_eq!(redact_url_credentials("http://host/a@b"), "http://host/a@b", "an @ in the path is not user-info");
    }
}
