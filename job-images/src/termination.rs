//! The pod's termination message: the outcome JSON (`VolumeOutcome` of a backup,
//! `RestoreOutcome` of a restore), so a sweep can recover a result that could not be published. Kubernetes keeps at most 4096 bytes of it and cuts the rest,
//! which would leave invalid JSON; so it is shrunk here instead, keeping it valid: warnings
//! are dropped from the end (with a note saying how many), then the longest strings (the
//! failure reason first in practice) are shortened. Ids are never shortened.

use serde::Serialize;
use serde_json::Value;
use std::path::Path;

/// Kubernetes' limit for one container's termination message.
pub const TERMINATION_MESSAGE_LIMIT: usize = 4096;
/// Longest single warning kept in the message.
const MAX_WARNING_CHARS: usize = 300;
/// Fields whose values must survive intact: what a sweep keys on.
const PROTECTED: [&str; 8] =
    ["outcome", "snapshotId", "parentSnapshot", "source", "uid", "podUid", "namespace", "sourceNamespace"];

/// Compact JSON of the outcome, at most `limit` bytes.
pub fn encode_outcome<O: Serialize>(outcome: &O, limit: usize) -> String {
    let mut text = serde_json::to_string(outcome).unwrap_or_default();
    if text.len() <= limit {
        return text;
    }
    let Ok(mut value) = serde_json::to_value(outcome) else { return text };
    if let Some(Value::Array(warnings)) = value.get_mut("warnings") {
        for w in warnings.iter_mut() {
            if let Value::String(s) = w {
                truncate_chars(s, MAX_WARNING_CHARS);
            }
        }
        let all = std::mem::take(warnings);
        // Binary search for the most warnings that fit, plus a note about the rest.
        let (mut lo, mut hi) = (0, all.len());
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if with_warnings(&value, &all, mid).to_string().len() <= limit {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        value = with_warnings(&value, &all, lo);
        text = value.to_string();
    }
    while text.len() > limit {
        let overflow = text.len() - limit;
        let Some(longest) = longest_string(&mut value, None) else { break };
        let chars = longest.chars().count();
        if chars <= 1 {
            break;
        }
        // Escaping makes the encoded string longer than the text: shrink in proportion, and
        // leave room for the "…" that marks the cut.
        let encoded = Value::String(longest.clone()).to_string().len();
        let keep = encoded.saturating_sub(overflow + 8) as f64 / encoded as f64;
        truncate_chars(longest, ((chars as f64 * keep) as usize).min(chars - 1));
        text = value.to_string();
    }
    text
}

/// A copy of `value` keeping the first `keep` of `all` warnings and noting the rest.
fn with_warnings(value: &Value, all: &[Value], keep: usize) -> Value {
    let mut v = value.clone();
    let mut kept: Vec<Value> = all.iter().take(keep).cloned().collect();
    if keep < all.len() {
        kept.push(Value::String(format!("… and {} more warnings (see the completed event)", all.len() - keep)));
    }
    if let Some(w) = v.get_mut("warnings") {
        *w = Value::Array(kept);
    }
    v
}

fn longest_string<'a>(value: &'a mut Value, key: Option<&str>) -> Option<&'a mut String> {
    match value {
        Value::String(s) if !key.is_some_and(|k| PROTECTED.contains(&k)) => Some(s),
        Value::Array(items) => items.iter_mut().filter_map(|v| longest_string(v, None)).max_by_key(|s| s.len()),
        Value::Object(map) => map.iter_mut().filter_map(|(k, v)| longest_string(v, Some(k))).max_by_key(|s| s.len()),
        _ => None,
    }
}

fn truncate_chars(s: &mut String, max_chars: usize) {
    if let Some((cut, _)) = s.char_indices().nth(max_chars) {
        s.truncate(cut);
        s.push('…');
    }
}

/// Writes the outcome to the termination log; returns what was written.
pub fn write_outcome<O: Serialize>(path: &Path, outcome: &O) -> std::io::Result<String> {
    let text = encode_outcome(outcome, TERMINATION_MESSAGE_LIMIT);
    std::fs::write(path, &text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use coracle_events::{
        BackupRef, BackupStats, PlannedVolume, RestoreOutcome, RestoreRef, RestoreVolume, VolumeBackupCompleted,
        VolumeBackupFailed, VolumeOutcome, VolumeRestoreFailed, VolumeSource,
    };

    fn volume() -> PlannedVolume {
        PlannedVolume {
            namespace: "shop".into(),
            pod: "db-0".into(),
            pod_uid: "0f2c7f4e-3c1a-4a8e-9b7d-2f0e1d2c3b4a".into(),
            volume: "data".into(),
            node: "node-1".into(),
            source: VolumeSource::Pvc,
            pvc: Some("data-db-0".into()),
            pvc_uid: Some("7d9e0c52-1111-2222-3333-444455556666".into()),
            pv: Some("pvc-7d9e0c52".into()),
            dir: "pvc-7d9e0c52".into(),
            identity: "pvc:7d9e0c52-1111-2222-3333-444455556666".into(),
        }
    }

    fn backup() -> BackupRef {
        BackupRef { name: "nightly".into(), uid: "b0a5e7d2-0000-1111-2222-333344445555".into() }
    }

    fn completed(warnings: Vec<String>) -> VolumeOutcome {
        VolumeOutcome::Completed(VolumeBackupCompleted {
            backup: backup(),
            volume: volume(),
            snapshot_id: "a".repeat(64),
            parent_snapshot: Some("b".repeat(64)),
            stats: BackupStats::default(),
            warnings,
            attempt: 0,
        })
    }

    fn failed(reason: String) -> VolumeOutcome {
        VolumeOutcome::Failed(VolumeBackupFailed {
            backup: backup(),
            volume: volume(),
            reason,
            attempt: 1,
            is_final: true,
        })
    }

    #[test]
    fn small_outcomes_are_unchanged() {
        let o = completed(vec!["unreadable: /x: permission denied".into()]);
        let text = encode_outcome(&o, TERMINATION_MESSAGE_LIMIT);
        assert_eq!(serde_json::from_str::<VolumeOutcome>(&text).unwrap(), o);
        assert!(text.starts_with("{\"outcome\":\"Completed\""), "{text}");
    }

    #[test]
    fn many_warnings_are_cut_with_a_note() {
        let warnings: Vec<String> =
            (0..5000).map(|i| format!("unreadable: /dir/file-{i}: open: permission denied")).collect();
        let text = encode_outcome(&completed(warnings), TERMINATION_MESSAGE_LIMIT);
        assert!(text.len() <= TERMINATION_MESSAGE_LIMIT, "{}", text.len());
        let VolumeOutcome::Completed(c) = serde_json::from_str(&text).unwrap() else { panic!() };
        assert_eq!(c.snapshot_id, "a".repeat(64));
        assert!(c.warnings.len() > 10, "{}", c.warnings.len());
        assert_eq!(c.warnings[0], "unreadable: /dir/file-0: open: permission denied");
        let note = c.warnings.last().unwrap();
        assert!(note.contains(&format!("and {} more", 5000 - (c.warnings.len() - 1))), "{note}");
    }

    #[test]
    fn a_long_reason_is_shortened() {
        let reason = format!("restic failed: {}", "é\"\\\n".repeat(3000));
        let text = encode_outcome(&failed(reason), TERMINATION_MESSAGE_LIMIT);
        assert!(text.len() <= TERMINATION_MESSAGE_LIMIT, "{}", text.len());
        let VolumeOutcome::Failed(f) = serde_json::from_str(&text).unwrap() else { panic!() };
        assert!(f.reason.starts_with("restic failed: é"), "{}", f.reason);
        assert!(f.reason.ends_with('…'));
        assert!(f.is_final);
        assert_eq!(f.volume.pod_uid, volume().pod_uid);
    }

    #[test]
    fn huge_warnings_and_identity_still_fit() {
        let mut o = completed(vec!["x".repeat(100_000)]);
        if let VolumeOutcome::Completed(c) = &mut o {
            c.volume.identity = "i".repeat(10_000);
        }
        let text = encode_outcome(&o, TERMINATION_MESSAGE_LIMIT);
        assert!(text.len() <= TERMINATION_MESSAGE_LIMIT, "{}", text.len());
        let VolumeOutcome::Completed(c) = serde_json::from_str(&text).unwrap() else { panic!() };
        assert_eq!(c.snapshot_id.len(), 64);
    }

    #[test]
    fn writes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("termination-log");
        let written = write_outcome(&path, &failed("boom".into())).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), written);
    }

    #[test]
    fn restore_outcomes_fit_too() {
        let outcome = RestoreOutcome::Failed(VolumeRestoreFailed {
            restore: RestoreRef { name: "r".into(), uid: "5b2e7c1a-0000-4000-8000-000000000001".into() },
            volume: RestoreVolume {
                namespace: "shop".into(),
                pod: "db-0".into(),
                pod_uid: "0f2c7f4e-3c1a-4a8e-9b7d-2f0e1d2c3b4a".into(),
                volume: "data".into(),
                dir: "pv-1".into(),
                source_namespace: "shop".into(),
                snapshot_id: "a".repeat(64),
                entry: String::new(),
            },
            reason: "x".repeat(10_000),
            attempt: 0,
            is_final: true,
        });
        let text = encode_outcome(&outcome, TERMINATION_MESSAGE_LIMIT);
        assert!(text.len() <= TERMINATION_MESSAGE_LIMIT, "{}", text.len());
        let RestoreOutcome::Failed(f) = serde_json::from_str(&text).unwrap() else { panic!() };
        assert_eq!(f.volume.snapshot_id, "a".repeat(64));
        assert!(f.reason.ends_with('…'));
        assert!(text.contains("\"outcome\":\"Failed\""), "{text}");
    }
}
