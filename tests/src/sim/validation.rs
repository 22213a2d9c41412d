//! The object-metadata validation a real API server applies on writes, so code under test that builds
//! names or labels a cluster would refuse (a 64-character Job name, a label value with `/`) fails here too.

use serde_json::Value;

use super::errors::ApiError;
use super::resources::ResourceType;

const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

fn dns_label_chars(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 label: at most 63 lower-case alphanumerics or `-`, alphanumeric at both ends.
pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    if !dns_label_chars(s) {
        return Err("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.len() > 253 {
        return Err("must be no more than 253 characters".into());
    }
    if !s.split('.').all(dns_label_chars) {
        return Err("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

/// The name part of a label key, and a label value when not empty: at most 63 of `[A-Za-z0-9-_.]`,
/// alphanumeric at both ends.
fn qualified_segment(s: &str) -> bool {
    s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// A label or annotation key: `[prefix/]name` with a DNS subdomain prefix.
pub fn qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        dns1123_subdomain(prefix).map_err(|e| format!("prefix part {e}"))?;
    }
    if !qualified_segment(name) {
        return Err("name part must consist of alphanumeric characters, '-', '_' or '.', at most 63 characters, and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

pub fn label_value(v: &str) -> Result<(), String> {
    if v.is_empty() || qualified_segment(v) {
        Ok(())
    } else {
        Err("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', at most 63 characters, and must start and end with an alphanumeric character".into())
    }
}

/// Validates name, labels and annotations of an object about to be written.
pub fn validate_metadata(res: &ResourceType, object: &Value) -> Result<(), ApiError> {
    let meta = &object["metadata"];
    let name = meta["name"].as_str().unwrap_or_default();
    let invalid = |field: &str, value: &str, why: String| {
        ApiError::invalid(res, name, &format!("{field}: Invalid value: {value:?}: {why}"))
    };
    let name_check = match res.plural {
        "namespaces" | "services" => dns1123_label(name),
        // The Job controller copies the name into the 63-character `batch.kubernetes.io/job-name` label.
        "jobs" if name.len() > 63 => Err("must be no more than 63 characters".to_string()),
        _ => dns1123_subdomain(name),
    };
    name_check.map_err(|why| invalid("metadata.name", name, why))?;
    if let Some(labels) = meta["labels"].as_object() {
        for (k, v) in labels {
            qualified_name(k).map_err(|why| invalid("metadata.labels", k, why))?;
            let v = v.as_str().ok_or_else(|| invalid("metadata.labels", k, "label values must be strings".into()))?;
            label_value(v).map_err(|why| invalid("metadata.labels", v, why))?;
        }
    }
    if let Some(annotations) = meta["annotations"].as_object() {
        let mut total = 0;
        for (k, v) in annotations {
            qualified_name(k).map_err(|why| invalid("metadata.annotations", k, why))?;
            let v = v
                .as_str()
                .ok_or_else(|| invalid("metadata.annotations", k, "annotation values must be strings".into()))?;
            total += k.len() + v.len();
        }
        if total > MAX_ANNOTATIONS_BYTES {
            return Err(ApiError::invalid(res, name, "metadata.annotations: Too long: must have at most 262144 bytes"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::resources::find;
    use serde_json::json;

    #[test]
    fn names_and_labels() {
        assert!(dns1123_subdomain("coracle-backup.abc-1").is_ok());
        assert!(dns1123_subdomain("Upper").is_err());
        assert!(dns1123_label("a.b").is_err());
        assert!(qualified_name("coracle.dev/backup-volumes").is_ok());
        assert!(qualified_name("bad/prefix/x").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("a/b").is_err());
        assert!(label_value(&"x".repeat(64)).is_err());
    }

    #[test]
    fn job_names_are_limited_to_63_characters() {
        let jobs = find("jobs").expect("jobs");
        let ok = json!({"metadata": {"name": "x".repeat(63)}});
        let long = json!({"metadata": {"name": "x".repeat(64)}});
        assert!(validate_metadata(jobs, &ok).is_ok());
        let err = validate_metadata(jobs, &long).expect_err("too long");
        assert_eq!((err.code, err.reason), (422, "Invalid"));
        let pods = find("pods").expect("pods");
        assert!(validate_metadata(pods, &long).is_ok());
        assert!(validate_metadata(pods, &json!({"metadata": {"name": "p", "labels": {"a": "b/c"}}})).is_err());
    }
}
