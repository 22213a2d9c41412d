//! The `key=value` tags every snapshot carries (SPEC §5). They are the durable source of truth
//! `coracle catalog rebuild` reads back, so the keys are constants shared with readers.

use crate::names::quote;
use coracle_events::{BackupRef, PlannedVolume};

pub const BACKUP: &str = "backup";
pub const BACKUP_UID: &str = "backup-uid";
pub const NAMESPACE: &str = "namespace";
pub const POD: &str = "pod";
pub const POD_UID: &str = "pod-uid";
pub const VOLUME: &str = "volume";
pub const PVC: &str = "pvc";
pub const PVC_UID: &str = "pvc-uid";
pub const IDENTITY: &str = "identity";

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

/// Every tag of a volume's snapshot, in a stable order.
pub fn snapshot_tags(backup: &BackupRef, volume: &PlannedVolume) -> Result<Vec<String>, TagError> {
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

    #[test]
    fn pvc_volume_tags() {
        assert_eq!(
            snapshot_tags(&backup(), &volume(true)).unwrap(),
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
            ]
        );
    }

    #[test]
    fn pod_scoped_volume_has_no_pvc_tags() {
        let tags = snapshot_tags(&backup(), &volume(false)).unwrap();
        assert!(!tags.iter().any(|t| t.starts_with("pvc")), "{tags:?}");
        assert_eq!(tags.last().map(String::as_str), Some("identity=Deployment/web/data"));
    }

    #[test]
    fn commas_and_other_mangled_values_are_refused() {
        let mut v = volume(true);
        v.identity = "a,b".into();
        let e = snapshot_tags(&backup(), &v).unwrap_err();
        assert_eq!(e.key, "identity");
        assert!(e.to_string().contains("comma"), "{e}");
        for bad in ["", " a", "a ", "a\nb", "a\0b"] {
            assert!(validate_tag_value("backup", bad).is_err(), "{bad:?}");
        }
        let mut b = backup();
        b.uid = "x,y".into();
        assert!(snapshot_tags(&b, &volume(false)).is_err());
    }

    #[test]
    fn parse_round_trip() {
        assert_eq!(parse_tag("identity=pvc:a=b"), Some(("identity", "pvc:a=b")));
        assert_eq!(parse_tag("plain"), None);
    }
}
