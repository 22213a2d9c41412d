//! Reading a backup request: the `--request` file of `coracle plan backup` and the data of a
//! `coracle.backup.requested` event. Accepts JSON or YAML, either the bare request or a whole
//! structured CloudEvent (recognised by its `specversion` attribute), and validates it so a
//! bad request fails here, with the field named, rather than half-way through a backup.
//!
//! The uid is not generated here: the caller derives it (from the event id, or randomly for
//! the CLI) so that a redelivered event maps to the same backup.

use crate::duration::parse_duration;
use crate::selector::{is_dns1123_label, is_dns1123_subdomain, Selector};
use coracle_events::{BackupRequest, CloudEvent, DecodeError, EventData, RestoreRequest};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request is empty")]
    Empty,
    #[error("request is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("request is not valid YAML: {0}")]
    Yaml(#[source] serde_yaml::Error),
    #[error("request event: {0}")]
    Event(#[from] DecodeError),
    #[error("request: {0}")]
    Shape(String),
    #[error("request field {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Parses and validates a backup request (bare or wrapped in a CloudEvent, JSON or YAML).
pub fn parse_backup_request(bytes: &[u8]) -> Result<BackupRequest, RequestError> {
    let request = parse_request::<BackupRequest>(bytes)?;
    validate(&request)?;
    Ok(request)
}

/// Parses and validates a restore request, in the same forms as a backup request.
pub fn parse_restore_request(bytes: &[u8]) -> Result<RestoreRequest, RequestError> {
    let request = parse_request::<RestoreRequest>(bytes)?;
    validate_restore(&request)?;
    Ok(request)
}

/// Checks the names a restore request carries.
pub fn validate_restore(request: &RestoreRequest) -> Result<(), RequestError> {
    if !is_dns1123_subdomain(&request.name) {
        return Err(RequestError::Invalid {
            field: "name",
            reason: format!("{:?} is not a valid Kubernetes name", request.name),
        });
    }
    if !is_dns1123_subdomain(&request.backup) {
        return Err(RequestError::Invalid {
            field: "backup",
            reason: format!("{:?} is not a valid backup name", request.backup),
        });
    }
    for (field, names) in
        [("includedNamespaces", &request.included_namespaces), ("excludedNamespaces", &request.excluded_namespaces)]
    {
        if let Some(bad) = names.iter().find(|n| *n != "*" && !is_dns1123_label(n)) {
            return Err(RequestError::Invalid { field, reason: format!("{bad:?} is not a valid namespace name") });
        }
    }
    Ok(())
}

/// A request of type `T`, bare or wrapped in a CloudEvent, JSON or YAML.
fn parse_request<T: EventData>(bytes: &[u8]) -> Result<T, RequestError> {
    let text = String::from_utf8_lossy(bytes);
    let trimmed = text.trim_start_matches('\u{feff}').trim();
    if trimmed.is_empty() {
        return Err(RequestError::Empty);
    }
    // JSON gets JSON's error messages; anything else is read as YAML (a superset of JSON).
    let (value, is_json): (Value, bool) = if trimmed.starts_with('{') {
        (serde_json::from_str(trimmed).map_err(RequestError::Json)?, true)
    } else {
        (serde_yaml::from_str(trimmed).map_err(RequestError::Yaml)?, false)
    };
    let Value::Object(mut object) = value else {
        return Err(RequestError::Shape(format!("expected a mapping of request fields, found {}", kind_of(&value))));
    };
    if !is_json {
        // `specversion: 1.0` unquoted is a YAML float; CloudEvents wants the string "1.0".
        if let Some(Value::Number(n)) = object.get("specversion") {
            let version = n.to_string();
            object.insert("specversion".into(), Value::String(version));
        }
    }
    let request = if object.contains_key("specversion") {
        // The envelope code owns CloudEvents rules (data_base64, version checks); YAML events are
        // re-encoded as JSON so they get exactly the same treatment.
        let json = if is_json {
            trimmed.as_bytes().to_vec()
        } else {
            serde_json::to_vec(&Value::Object(object)).map_err(RequestError::Json)?
        };
        CloudEvent::parse(&json)?.into_typed::<T>()?.data
    } else {
        serde_json::from_value::<T>(Value::Object(object)).map_err(|e| RequestError::Shape(e.to_string()))?
    };
    Ok(request)
}

/// Checks every field the planner and the Jobs rely on.
pub fn validate(request: &BackupRequest) -> Result<(), RequestError> {
    let invalid = |field, reason: String| RequestError::Invalid { field, reason };
    if request.name.is_empty() {
        return Err(invalid("name", "must not be empty".into()));
    }
    if !is_dns1123_subdomain(&request.name) {
        return Err(invalid(
            "name",
            format!(
                "{:?} is not a valid Kubernetes name (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters)",
                request.name
            ),
        ));
    }
    if let Some(uid) = &request.uid {
        // The uid becomes a restic tag: commas split tags, whitespace breaks command lines.
        if uid.is_empty() || uid.chars().any(|c| c == ',' || c.is_whitespace()) {
            return Err(invalid("uid", format!("{uid:?} must be non-empty without commas or whitespace")));
        }
    }
    for (field, names) in
        [("includedNamespaces", &request.included_namespaces), ("excludedNamespaces", &request.excluded_namespaces)]
    {
        if let Some(bad) = names.iter().find(|n| n.as_str() != "*" && !is_dns1123_label(n)) {
            return Err(invalid(field, format!("{bad:?} is not a namespace name (or \"*\" for all)")));
        }
    }
    if let Some(selector) = &request.label_selector {
        Selector::parse(selector).map_err(|e| invalid("labelSelector", e.to_string()))?;
    }
    if let Some(ttl) = &request.ttl {
        parse_duration(ttl).map_err(|e| invalid("ttl", e.to_string()))?;
    }
    if let Some(timeout) = &request.volume_timeout {
        let d = parse_duration(timeout).map_err(|e| invalid("volumeTimeout", e.to_string()))?;
        if d.is_zero() {
            return Err(invalid("volumeTimeout", format!("{timeout:?} must be longer than zero")));
        }
    }
    Ok(())
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_json_and_yaml_requests() {
        let json = br#"{"name":"nightly","includedNamespaces":["shop"],"labelSelector":"app in (web,db)","ttl":"72h","volumeTimeout":"4h30m","extra":1}"#;
        let r = parse_backup_request(json).expect("json");
        assert_eq!(r.name, "nightly");
        assert_eq!(r.included_namespaces, vec!["shop"]);
        assert_eq!(r.uid, None, "the uid is the caller's to generate");
        let yaml = b"name: nightly\nincludedNamespaces: [shop]\nlabelSelector: app in (web,db)\nttl: 72h\nvolumeTimeout: 4h30m\n";
        let y = parse_backup_request(yaml).expect("yaml");
        assert_eq!(y, r);
        let opt_out = parse_backup_request(b"name: all\ndefaultVolumesToBackup: true\n").expect("yaml");
        assert!(opt_out.default_volumes_to_backup);
    }

    #[test]
    fn cloudevent_requests_in_json_and_yaml() {
        let json = br#"{"specversion":"1.0","id":"e1","source":"/argo","type":"dev.coracle.backup.requested.v1",
            "data":{"name":"from-event","uid":"0f8fad5b-d9cb-469f-a165-70867728950e","excludedNamespaces":["kube-system"]}}"#;
        let r = parse_backup_request(json).expect("event");
        assert_eq!(r.name, "from-event");
        assert_eq!(r.uid.as_deref(), Some("0f8fad5b-d9cb-469f-a165-70867728950e"));
        assert_eq!(r.excluded_namespaces, vec!["kube-system"]);
        let yaml = b"specversion: 1.0\nid: e2\nsource: /cli\ntype: dev.coracle.backup.requested.v1\ndata:\n  name: yaml-event\n";
        assert_eq!(parse_backup_request(yaml).expect("yaml event").name, "yaml-event");
        let wrong =
            br#"{"specversion":"1.0","id":"e","source":"/s","type":"dev.coracle.restore.requested.v1","data":{}}"#;
        let e = parse_backup_request(wrong).expect_err("wrong type");
        assert!(matches!(e, RequestError::Event(DecodeError::WrongType { .. })), "{e}");
        let future = br#"{"specversion":"1.0","id":"e","source":"/s","type":"dev.coracle.backup.requested.v2","data":{"name":"x"}}"#;
        let e = parse_backup_request(future).expect_err("unknown version");
        assert!(e.to_string().contains("unsupported version"), "{e}");
    }

    #[test]
    fn invalid_requests_name_the_field() {
        let cases: [(&[u8], &str); 12] = [
            (b"", "request is empty"),
            (b"   \n", "request is empty"),
            (b"{\"name\":", "not valid JSON"),
            (b"name: [unclosed", "not valid YAML"),
            (b"- name: x", "expected a mapping of request fields, found a list"),
            (b"ttl: 1h", "missing field `name`"),
            (b"name: ''", "field name: must not be empty"),
            (b"name: Nightly_Backup", "field name: \"Nightly_Backup\" is not a valid Kubernetes name"),
            (b"name: b\nttl: 30d", "field ttl: invalid duration \"30d\": unknown unit \"d\""),
            (b"name: b\nvolumeTimeout: 0s", "field volumeTimeout: \"0s\" must be longer than zero"),
            (b"name: b\nlabelSelector: 'app in (a'", "field labelSelector: invalid label selector \"app in (a\""),
            (b"name: b\nincludedNamespaces: ['Shop']", "field includedNamespaces: \"Shop\" is not a namespace name"),
        ];
        for (input, fragment) in cases {
            let e = parse_backup_request(input).expect_err(&String::from_utf8_lossy(input));
            assert!(e.to_string().contains(fragment), "{:?}: {e}", String::from_utf8_lossy(input));
        }
        let e = parse_backup_request(b"name: b\nuid: 'a,b'").expect_err("comma uid");
        assert!(e.to_string().contains("field uid"), "{e}");
    }
}
