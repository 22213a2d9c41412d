//! `coracle watch`: Coracle's events as they are stored in the stream, as one readable line each
//! or as JSON. Reading through an ordered JetStream consumer (not a plain subscription) shows each
//! event once even when a producer re-published it: the stream has already dropped the duplicate.

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use chrono::{DateTime, Utc};
use coracle_events::{subjects, CloudEvent};
use futures::{Stream, StreamExt};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("--type {given:?}: {reason} (examples: backup.completed, volume.backup.*, restore.>)")]
    BadType { given: String, reason: String },
    #[error("reading the {stream} stream: {reason}")]
    Stream { stream: &'static str, reason: String },
}

/// The subjects `--type` values name: `backup.completed`, `volume.*.failed`, `coracle.restore.>`,
/// or an event type such as `dev.coracle.backup.completed.v1`. None given: every Coracle event.
pub fn subjects_for(types: &[String]) -> Result<Vec<String>, WatchError> {
    if types.is_empty() {
        return Ok(vec![subjects::ALL.to_string()]);
    }
    types.iter().map(|t| subject_for(t)).collect()
}

fn subject_for(given: &str) -> Result<String, WatchError> {
    let bad = |reason: &str| WatchError::BadType { given: given.to_string(), reason: reason.to_string() };
    let trimmed = given.trim();
    let body = if let Some(rest) = trimmed.strip_prefix("dev.coracle.") {
        // An event type: `dev.coracle.<noun>.<verb>.v1` is published on `coracle.<noun>.<verb>`.
        match rest.rsplit_once('.') {
            Some((noun_verb, version)) if version.starts_with('v') => noun_verb,
            _ => return Err(bad("an event type ends in its version, like .v1")),
        }
    } else {
        trimmed.strip_prefix("coracle.").unwrap_or(trimmed)
    };
    let tokens: Vec<&str> = body.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(bad("empty part between dots"));
        }
        if token.chars().any(|c| c.is_whitespace()) {
            return Err(bad("subjects have no spaces"));
        }
        if *token == ">" && i + 1 != tokens.len() {
            return Err(bad("`>` matches the rest and must come last"));
        }
        if token.len() > 1 && token.contains(['*', '>']) {
            return Err(bad("wildcards stand alone between dots"));
        }
    }
    Ok(format!("coracle.{body}"))
}

/// One event from the stream.
pub struct Seen {
    pub subject: String,
    pub payload: bytes::Bytes,
    /// When the stream stored it.
    pub stored: DateTime<Utc>,
}

/// Events on `subjects` stored from now on (or from the stream's start with `from_start`).
pub async fn events(
    js: &jetstream::Context,
    subjects: Vec<String>,
    from_start: bool,
) -> Result<impl Stream<Item = Result<Seen, WatchError>>, WatchError> {
    let err = |e: &dyn std::fmt::Display| WatchError::Stream { stream: subjects::STREAM, reason: e.to_string() };
    let stream = js.get_stream(subjects::STREAM).await.map_err(|e| err(&e))?;
    let config = jetstream::consumer::pull::OrderedConfig {
        filter_subjects: subjects,
        deliver_policy: if from_start { DeliverPolicy::All } else { DeliverPolicy::New },
        ..Default::default()
    };
    let consumer = stream.create_consumer(config).await.map_err(|e| err(&e))?;
    let messages = consumer.messages().await.map_err(|e| err(&e))?;
    Ok(messages.map(move |m| {
        let m = m.map_err(|e| WatchError::Stream { stream: subjects::STREAM, reason: e.to_string() })?;
        let stored = m
            .info()
            .ok()
            .and_then(|i| DateTime::from_timestamp(i.published.unix_timestamp(), i.published.nanosecond()))
            .unwrap_or_else(Utc::now);
        Ok(Seen { subject: m.subject.to_string(), payload: m.payload.clone(), stored })
    }))
}

/// The event as one compact JSON line, or `None` when it is not JSON.
pub fn json_line(payload: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(payload).ok().map(|v| v.to_string())
}

/// A readable line: time, subject, and what the event says.
pub fn line(seen: &Seen) -> String {
    format!("{}  {}", seen.stored.format("%H:%M:%S%.3f"), describe(&seen.subject, &seen.payload))
}

/// The subject and the gist of an event's data.
pub fn describe(subject: &str, payload: &[u8]) -> String {
    let Ok(ev) = CloudEvent::parse(payload) else { return format!("{subject:<34} (not a CloudEvent)") };
    let d = &ev.data;
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let volume = |v: &Value| format!("{}/{}/{}", s(&v["namespace"]), s(&v["pod"]), s(&v["volume"]));
    let detail = match subject {
        subjects::BACKUP_REQUESTED => format!("backup {} ({})", s(&d["name"]), s(&d["origin"])),
        subjects::SCHEDULE_TICK => format!("tick for {}", ev.time.map(|t| t.to_rfc3339()).unwrap_or_default()),
        subjects::BACKUP_PLANNED => format!(
            "{}: {} volumes on {} Job(s), {} skipped",
            s(&d["backup"]["name"]),
            d["volumes"].as_array().map_or(0, Vec::len),
            d["jobs"].as_array().map_or(0, Vec::len),
            d["skipped"].as_array().map_or(0, Vec::len)
        ),
        subjects::VOLUME_BACKUP_PROGRESS => format!(
            "{}  {:>5.1}%  {} / {} bytes",
            s(&d["volume"]),
            d["percentDone"].as_f64().unwrap_or(0.0) * 100.0,
            d["bytesDone"],
            d["bytesTotal"]
        ),
        subjects::VOLUME_BACKUP_COMPLETED => {
            format!("{}  snapshot {}", volume(&d["volume"]), s(&d["snapshotId"]).chars().take(8).collect::<String>())
        }
        subjects::VOLUME_BACKUP_FAILED | subjects::VOLUME_RESTORE_FAILED => {
            format!("{}  {}", volume(&d["volume"]), s(&d["reason"]))
        }
        subjects::BACKUP_COMPLETED => format!("{} phase {}", s(&d["backup"]["name"]), s(&d["phase"])),
        subjects::RESTORE_REQUESTED => format!("restore {} from backup {}", s(&d["name"]), s(&d["backup"])),
        subjects::RESTORE_PLANNED => format!(
            "{}: {} volumes pending restore",
            s(&d["restore"]["name"]),
            d["entries"].as_array().map_or(0, Vec::len)
        ),
        subjects::RESTORE_POD_READY => format!("{}/{} waiting for {}", s(&d["namespace"]), s(&d["pod"]), d["volumes"]),
        subjects::VOLUME_RESTORE_COMPLETED => format!("{}  {} files", volume(&d["volume"]), d["stats"]["files"]),
        subjects::RESTORE_COMPLETED => format!("{} phase {}", s(&d["restore"]["name"]), s(&d["phase"])),
        subjects::BACKUP_DELETED => format!("{} ({})", s(&d["backup"]["name"]), s(&d["reason"])),
        subjects::MAINTENANCE_COMPLETED => {
            format!(
                "{}: {} snapshot(s) forgotten{}{}",
                s(&d["namespace"]),
                d["snapshotsRemoved"].as_u64().unwrap_or(0),
                if d["pruned"] == true { ", pruned" } else { "" },
                match d["checkPassed"].as_bool() {
                    Some(true) => ", check passed",
                    Some(false) => ", CHECK FOUND ERRORS",
                    None => "",
                }
            ) + &d["failure"].as_str().map(|f| format!("; failed: {f}")).unwrap_or_default()
        }
        "coracle.k8s.workload.updated" => format!(
            "{} {}/{} changed",
            s(&d["new"]["kind"]),
            s(&d["new"]["metadata"]["namespace"]),
            s(&d["new"]["metadata"]["name"])
        ),
        _ if subject.starts_with(subjects::DLQ_PREFIX) => format!("dead letter: {}", s(&d["reason"])),
        _ => ev.ty.clone(),
    };
    format!("{subject:<34} {detail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_name_subjects_and_bad_ones_say_why() {
        assert_eq!(subjects_for(&[]).ok(), Some(vec!["coracle.>".to_string()]));
        let given = ["backup.completed", "coracle.volume.*.failed", "dev.coracle.restore.completed.v1", "restore.>"];
        let got = subjects_for(&given.map(String::from)).ok();
        assert_eq!(
            got,
            Some(
                [
                    "coracle.backup.completed",
                    "coracle.volume.*.failed",
                    "coracle.restore.completed",
                    "coracle.restore.>"
                ]
                .map(String::from)
                .to_vec()
            )
        );
        for (bad, why) in [
            ("backup..completed", "empty part"),
            ("backup.>.x", "must come last"),
            ("back*.completed", "stand alone"),
            ("dev.coracle.backup.completed", "version"),
            ("backup completed", "no spaces"),
        ] {
            let e = subjects_for(&[bad.to_string()]).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn lines_carry_the_gist_of_each_event() {
        let payload = serde_json::json!({
            "specversion": "1.0", "id": "x", "source": "/coracle/cli", "type": "dev.coracle.backup.completed.v1",
            "data": {"backup": {"name": "nightly", "uid": "u"}, "phase": "Completed"}
        });
        let text = describe(subjects::BACKUP_COMPLETED, payload.to_string().as_bytes());
        assert_eq!(text, format!("{:<34} nightly phase Completed", subjects::BACKUP_COMPLETED));
        assert!(describe("coracle.backup.completed", b"{").contains("not a CloudEvent"));
        assert_eq!(json_line(b"{ \"a\" : 1 }").as_deref(), Some("{\"a\":1}"));
    }
}
