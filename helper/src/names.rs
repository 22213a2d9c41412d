//! Validation of every value that becomes a path component or an event id, done before the
//! filesystem is touched. The rules match `coracle-volume-job`'s (`names.rs` there), which
//! writes the markers this helper reads; they are repeated here to keep this binary free of
//! the job crate's dependencies.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value} is invalid: {reason}")]
pub struct NameError {
    pub what: String,
    /// Quoted and shortened, so a hostile value cannot flood the message.
    pub value: String,
    pub reason: &'static str,
}

impl NameError {
    fn new(what: &str, value: &str, reason: &'static str) -> Self {
        NameError { what: what.to_string(), value: quote(value), reason }
    }
}

/// Debug-quotes a value (escaping control characters) and caps its length.
pub fn quote(value: &str) -> String {
    const MAX: usize = 80;
    let mut short: String = value.chars().take(MAX).collect();
    if short.len() < value.len() {
        short.push('…');
    }
    format!("{short:?}")
}

fn check_label(value: &str) -> Result<(), &'static str> {
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return Err("must not be empty");
    }
    if bytes.len() > 63 {
        return Err("is longer than 63 characters");
    }
    if !bytes.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err("may only contain lower-case letters, digits and '-'");
    }
    if !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

/// An RFC 1123 label: pod volume names and namespaces.
pub fn validate_label(what: &str, value: &str) -> Result<(), NameError> {
    check_label(value).map_err(|reason| NameError::new(what, value, reason))
}

/// An RFC 1123 subdomain: pod and node names.
pub fn validate_subdomain(what: &str, value: &str) -> Result<(), NameError> {
    let result = if value.len() > 253 {
        Err("is longer than 253 characters")
    } else {
        value.split('.').try_for_each(check_label)
    };
    result.map_err(|reason| NameError::new(what, value, reason))
}

/// A UUID in its 8-4-4-4-12 hex form, as Kubernetes writes `metadata.uid`.
pub fn validate_uuid(what: &str, value: &str) -> Result<(), NameError> {
    let bytes = value.as_bytes();
    let ok = bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    if ok {
        Ok(())
    } else {
        Err(NameError::new(what, value, "is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"))
    }
}

/// Longest restore uid accepted; a Kubernetes uid is 36 characters.
pub const MAX_RESTORE_UID: usize = 128;

/// The restore uid names the marker file `.coracle/<uid>`: one plain file name made of
/// `[A-Za-z0-9._-]`, not starting with a dot (the Job's temporary files do) and without `..`.
pub fn validate_restore_uid(value: &str) -> Result<(), NameError> {
    let fail = |reason| Err(NameError::new("restore uid", value, reason));
    if value.is_empty() {
        return fail("must not be empty");
    }
    if value.len() > MAX_RESTORE_UID {
        return fail("is longer than 128 characters");
    }
    if !value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return fail("may only contain letters, digits, '.', '_' and '-'");
    }
    if value.starts_with('.') || value.contains("..") {
        return fail("must not start with '.' or contain '..'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_subdomains() {
        for ok in ["a", "data", "pvc-1", "0abc"] {
            assert_eq!(validate_label("volume", ok), Ok(()), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a/b", "..", ".", "a\0b", "a b", "ü", &"a".repeat(64)] {
            assert!(validate_label("volume", bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_subdomain("node", "ip-10-0-0-1.eu-west-1.compute.internal").is_ok());
        for bad in ["", "a..b", ".a", "a/b", "A"] {
            assert!(validate_subdomain("node", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn uuids() {
        assert!(validate_uuid("pod uid", "0f2c7f4e-3c1a-4a8e-9b7d-2f0e1d2c3b4a").is_ok());
        for bad in ["", "0f2c7f4e3c1a4a8e9b7d2f0e1d2c3b4a", "../../../../etc/passwd/aaaaaaaaaaaaa"] {
            assert!(validate_uuid("pod uid", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn restore_uids() {
        for ok in ["0f2c7f4e-3c1a-4a8e-9b7d-2f0e1d2c3b4a", "r-1", "a.b", "A_b"] {
            assert_eq!(validate_restore_uid(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "a..b", ".hidden", "a b", "a\nb", "ü", &"a".repeat(129)] {
            assert!(validate_restore_uid(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn errors_quote_hostile_values() {
        let e = validate_label("volume", &format!("a\n{}", "x".repeat(500))).unwrap_err().to_string();
        assert!(e.contains("\\n") && e.len() < 200, "{e}");
    }
}
