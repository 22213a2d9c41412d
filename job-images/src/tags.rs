//! The `key=value` tags every snapshot carries (SPEC §5). They are the durable source of truth
//! `coracle catalog rebuild` reads back, so the keys are constants shared with readers.
//!
//! Beyond what restore needs, a snapshot also records where the volume was (node, source kind,
//! PV) and when its backup expires, so a rebuilt record shows what the lost one showed. Older
//! snapshots lack these; readers must treat every one of them as optional.

use crate::names::quote;
use chrono::{DateTime, SecondsFormat, Utc};
use coracle_events::{BackupRef, PlannedVolume, VolumeSource};

pub const BACKUP: &str = "backup";
pub const BACKUP_UID: &str = "backup-uid";
pub const NAMESPACE: &str = "namespace";
pub const POD: &str = "pod";
pub const POD_UID: &str = "pod-uid";
pub const VOLUME: &str = "volume";
pub const PVC: &str = "pvc";
pub const PVC_UID: &str = "pvc-uid";
pub const IDENTITY: &str = "identity";
pub const NODE: &str = "node";
/// The volume's source kind, as `PlannedVolume.source` serialises it (`pvc`, `emptyDir`, ...).
pub const SOURCE: &str = "source";
pub const PV: &str = "pv";
/// The backup's expiry, RFC 3339 in UTC with the record's sub-second precision.
pub const EXPIRES: &str = "expires";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} {value} cannot be a restic tag value: {reason}")]
pub struct TagError {
    pub key: String,
    pub value: String,
    pub reason: &'static str,
}

/// Checks that `value` survives restic's tag handling unchanged: restic splits `--tag` on
/// commas and trims spaces, so either would silently change the tag.
pub fn validate_tag_value(key: &str, value: &str) -> Result<(), TagError> {
    let reason = if value.is_empty() {
        Some("it is empty")
    } else if value.contains(',') {
        Some("it contains a comma, which restic treats as a tag separator")
    } else if value.chars().any(char::is_control) {
        Some("it contains control characters")
    } else if value.trim() != value {
        Some("it has leading or trailing whitespace")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(TagError { key: key.to_string(), value: quote(value), reason }),
        None => Ok(()),
    }
}

/// `key=value`, validated.
pub fn tag(key: &str, value: &str) -> Result<String, TagError> {
    validate_tag_value(key, value)?;
    Ok(format!("{key}={value}"))
}

/// Splits a `key=value` tag; `None` for tags without `=`.
pub fn parse_tag(tag: &str) -> Option<(&str, &str)> {
    tag.split_once('=')
}

/// The `source` tag value of a volume source (its serde name, so the record's JSON and the tag agree).
pub fn source_value(source: VolumeSource) -> String {
    match serde_json::to_value(source) {
        Ok(serde_json::Value::String(s)) => s,
        // A unit enum always serialises to a string; keep a readable fallback regardless.
        _ => format!("{source:?}"),
    }
}

/// The volume source a `source` tag names; `None` for a value this version does not know.
pub fn parse_source(value: &str) -> Option<VolumeSource> {
    serde_json::from_value(serde_json::Value::String(value.to_string())).ok()
}

/// The `expires` tag value: RFC 3339, UTC, as precise as the time itself (no commas, no spaces).
pub fn expires_value(expires: DateTime<Utc>) -> String {
    expires.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The time an `expires` tag holds; `None` when it is not RFC 3339.
pub fn parse_expires(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value).ok().map(|t| t.with_timezone(&Utc))
}

/// Every tag of a volume's snapshot, in a stable order. `expires` is the backup's expiry when the
/// Job was told it; an empty node or missing PV adds no tag.
pub fn snapshot_tags(
    backup: &BackupRef,
    volume: &PlannedVolume,
    expires: Option<DateTime<Utc>>,
) -> Result<Vec<String>, TagError> {
    let mut tags = vec![
        tag(BACKUP, &backup.name)?,
        tag(BACKUP_UID, &backup.uid)?,
        tag(NAMESPACE, &volume.namespace)?,
        tag(POD, &volume.pod)?,
        tag(POD_UID, &volume.pod_uid)?,
        tag(VOLUME, &volume.volume)?,
    ];
    if let Some(pvc) = &volume.pvc {
        tags.push(tag(PVC, pvc)?);
    }
    if let Some(uid) = &volume.pvc_uid {
        tags.push(tag(PVC_UID, uid)?);
    }
    tags.push(tag(IDENTITY, &volume.identity)?);
    if !volume.node.is_empty() {
        tags.push(tag(NODE, &volume.node)?);
    }
    tags.push(tag(SOURCE, &source_value(volume.source))?);
    if let Some(pv) = &volume.pv {
        tags.push(tag(PV, pv)?);
    }
    if let Some(expires) = expires {
        tags.push(tag(EXPIRES, &expires_value(expires))?);
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use coracle_events::VolumeSource;

    fn volume(pvc: bool) -> PlannedVolume {
        PlannedVolume {
            namespace: "shop".into(),
            pod: "db-0".into(),
            pod_uid: "0f2c7f4e-3c1a-4a8e-9b7d-2f0e1d2c3b4a".into(),
            volume: "data".into(),
            node: "node-1".into(),
            source: if pvc { VolumeSource::Pvc } else { VolumeSource::EmptyDir },
            pvc: pvc.then(|| "data-db-0".into()),
            pvc_uid: pvc.then(|| "7d9e0c52-1111-2222-3333-444455556666".into()),
            pv: pvc.then(|| "pvc-7d9e0c52".into()),
            dir: if pvc { "pvc-7d9e0c52".into() } else { "data".into() },
            identity: if pvc {
                "pvc:7d9e0c52-1111-2222-3333-444455556666".into()
            } else {
                "Deployment/web/data".into()
            },
        }
    }

    fn backup() -> BackupRef {
        BackupRef { name: "nightly-20250101000000".into(), uid: "b-uid-1".into() }
    }

    fn expires() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-21T01:00:00.123456789+01:00").unwrap().with_timezone(&Utc)
    }

    #[test]
    fn pvc_volume_tags() {
        assert_eq!(
            snapshot_tags(&backup(), &volume(true), Some(expires())).unwrap(),
            vec![
                "backup=nightly-20250101000000",
                "backup-uid=b-uid-1",
                "namespace=shop",
                "pod=db-0",
                "pod-uid=0f2c7f4e-3c1a-4a8e-9b7d-2f0e1d2c3b4a",
                "volume=data",
                "pvc=data-db-0",
                "pvc-uid=7d9e0c52-1111-2222-3333-444455556666",
                "identity=pvc:7d9e0c52-1111-2222-3333-444455556666",
                "node=node-1",
                "source=pvc",
                "pv=pvc-7d9e0c52",
                "expires=2026-12-21T00:00:00.123456789Z",
            ]
        );
    }

    #[test]
    fn pod_scoped_volume_has_no_pvc_tags() {
        let tags = snapshot_tags(&backup(), &volume(false), None).unwrap();
        assert!(!tags.iter().any(|t| t.starts_with("pvc") || t.starts_with("pv=")), "{tags:?}");
        assert!(!tags.iter().any(|t| t.starts_with("expires=")), "no expiry given, none tagged: {tags:?}");
        assert_eq!(&tags[tags.len() - 3..], ["identity=Deployment/web/data", "node=node-1", "source=emptyDir"]);
        let mut nowhere = volume(false);
        nowhere.node = String::new();
        let tags = snapshot_tags(&backup(), &nowhere, None).unwrap();
        assert!(!tags.iter().any(|t| t.starts_with("node=")), "an unknown node is left out: {tags:?}");
    }

    #[test]
    fn sources_and_expiry_round_trip() {
        for source in [
            VolumeSource::Pvc,
            VolumeSource::EmptyDir,
            VolumeSource::CsiEphemeral,
            VolumeSource::Ephemeral,
            VolumeSource::Other,
        ] {
            let value = source_value(source);
            assert!(validate_tag_value(SOURCE, &value).is_ok(), "{value}");
            assert_eq!(parse_source(&value), Some(source), "{value}");
        }
        assert_eq!(source_value(VolumeSource::CsiEphemeral), "csiEphemeral");
        assert_eq!(parse_source("hostPath"), None);
        assert_eq!(parse_expires(&expires_value(expires())), Some(expires()), "nanoseconds survive");
        assert_eq!(parse_expires("next tuesday"), None);
    }

    #[test]
    fn commas_and_other_mangled_values_are_refused() {
        let mut v = volume(true);
        v.identity = "a,b".into();
        let e = snapshot_tags(&backup(), &v, None).unwrap_err();
        assert_eq!(e.key, "identity");
        assert!(e.to_string().contains("comma"), "{e}");
        for bad in ["", " a", "a ", "a\nb", "a\0b"] {
            assert!(validate_tag_value("backup", bad).is_err(), "{bad:?}");
        }
        let mut b = backup();
        b.uid = "x,y".into();
        assert!(snapshot_tags(&b, &volume(false), None).is_err());
    }

    #[test]
    fn parse_round_trip() {
        assert_eq!(parse_tag("identity=pvc:a=b"), Some(("identity", "pvc:a=b")));
        assert_eq!(parse_tag("plain"), None);
    }
}
