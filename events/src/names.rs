//! Validation of the names and uids that end up in filesystem paths and restic tags.
//!
//! The planner's output arrives through the environment, so it is checked here before any of
//! it is joined into a path: a name that Kubernetes itself would reject is refused, never
//! "cleaned up".

/// Which Kubernetes naming rule a value must follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// RFC 1123 label: at most 63 of `[a-z0-9-]`, starting and ending alphanumeric
    /// (namespaces, pod volume names).
    Label,
    /// RFC 1123 subdomain: at most 253 characters, dot-separated labels (pods, PVCs, PVs).
    Subdomain,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value}: {reason}")]
pub struct NameError {
    pub what: String,
    /// The offending value, quoted and shortened so a hostile value cannot flood the message.
    pub value: String,
    pub reason: &'static str,
}

impl NameError {
    pub(crate) fn new(what: &str, value: &str, reason: &'static str) -> Self {
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

fn is_label_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
}

fn check_label(value: &str, max: usize) -> Result<(), &'static str> {
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return Err("must not be empty");
    }
    if bytes.len() > max {
        return Err("is too long");
    }
    if !bytes.iter().all(|&b| is_label_char(b)) {
        return Err("may only contain lower-case letters, digits and '-'");
    }
    if !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

/// RFC 1123 label (namespaces, pod volume names, label-style names).
pub fn is_dns1123_label(value: &str) -> bool {
    check_label(value, 63).is_ok()
}

/// RFC 1123 subdomain (pods, PVCs, PVs, most object names).
pub fn is_dns1123_subdomain(value: &str) -> bool {
    validate_name("", value, NameKind::Subdomain).is_ok()
}

/// Checks `value` against a Kubernetes naming rule; `what` names it in the error.
pub fn validate_name(what: &str, value: &str, kind: NameKind) -> Result<(), NameError> {
    let result = match kind {
        NameKind::Label => check_label(value, 63),
        NameKind::Subdomain => {
            if value.len() > 253 {
                Err("is longer than 253 characters")
            } else {
                value.split('.').try_for_each(|part| check_label(part, 63))
            }
        }
    };
    result.map_err(|reason| NameError::new(what, value, reason))
}

/// Checks that `value` is a UUID in its canonical 8-4-4-4-12 hex form (what Kubernetes uses
/// for `metadata.uid`).
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

/// The restore uid names the marker file `<volume>/.coracle/<uid>`: one plain file name made
/// of `[A-Za-z0-9._-]`, not starting with a dot (temporary files do) and without `..`. The
/// restore-wait helper (`helper/src/names.rs`) checks the same rule.
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

/// A restic snapshot id: 8 to 64 lower-case hex digits (a full id or a unique prefix). Checked
/// because it is a restic argument: nothing else may pass as an id or an option.
pub fn validate_snapshot_id(value: &str) -> Result<(), NameError> {
    let ok = (8..=64).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(NameError::new("snapshot id", value, "is not 8 to 64 lower-case hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in ["a", "data", "pvc-1", "0abc", &"a".repeat(63)] {
            assert_eq!(validate_name("volume", ok, NameKind::Label), Ok(()), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a/b", "..", ".", "a\0b", "a b", "ü", &"a".repeat(64)] {
            assert!(validate_name("volume", bad, NameKind::Label).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn subdomains() {
        for ok in ["pvc-0a1b", "a.b.c", "my-pv.example", &format!("{}.{}", "a".repeat(63), "b".repeat(63))] {
            assert_eq!(validate_name("pv", ok, NameKind::Subdomain), Ok(()), "{ok}");
        }
        for bad in ["", ".", "..", "a..b", ".a", "a.", "../etc", "a/b", "a\0", "A.b", &"a.".repeat(127)] {
            assert!(validate_name("pv", bad, NameKind::Subdomain).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn uuids() {
        assert!(validate_uuid("pod uid", "0f2c7f4e-3c1a-4a8e-9b7d-2f0e1d2c3b4a").is_ok());
        assert!(validate_uuid("pod uid", "0F2C7F4E-3C1A-4A8E-9B7D-2F0E1D2C3B4A").is_ok());
        for bad in [
            "",
            "0f2c7f4e3c1a4a8e9b7d2f0e1d2c3b4a",
            "0f2c7f4e-3c1a-4a8e-9b7d-2f0e1d2c3b4",
            "0f2c7f4e-3c1a-4a8e-9b7d-2f0e1d2c3b4g",
            "../../../../etc/passwd/aaaaaaaaaaaaa",
            "0f2c7f4e-3c1a-4a8e-9b7d/2f0e1d2c3b4a",
        ] {
            assert!(validate_uuid("pod uid", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn error_quotes_and_shortens() {
        let e = validate_name("volume", &format!("a\n{}", "x".repeat(500)), NameKind::Label).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("\\n"), "{text}");
        assert!(text.len() < 200, "{text}");
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
    fn snapshot_ids() {
        assert!(validate_snapshot_id(&"ab12".repeat(16)).is_ok());
        assert!(validate_snapshot_id("05ae74ee").is_ok());
        for bad in ["", "05ae74e", "latest", "--delete", "05AE74EE", &"a".repeat(65), "05ae74ee "] {
            assert!(validate_snapshot_id(bad).is_err(), "{bad:?} accepted");
        }
    }
}
