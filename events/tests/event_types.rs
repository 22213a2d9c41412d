//! The event contract (SPEC §2): every Coracle event type round-trips through a whole structured
//! CloudEvent, carries its versioned `type` and its subject, tolerates unknown data fields, keeps
//! unknown extension attributes, and refuses other versions, other types and broken envelopes with
//! errors that say what is wrong. Events as Argo Events and Knative deliver them are accepted.

use base64::Engine;
use chrono::{TimeZone, Utc};
use coracle_events::envelope::decode;
use coracle_events::{
    function_source, job_source, subjects, BackupCompleted, BackupDeleted, BackupPhase, BackupPlanned, BackupRef,
    BackupRequest, BackupStats, CloudEvent, DeadLetter, DecodeError, EventData, MaintenanceCompleted, PendingRestore,
    PlannedVolume, RestoreCompleted, RestoreOutcome, RestorePlanned, RestorePodReady, RestoreRef, RestoreRequest,
    RestoreStats, RestoreTarget, RestoreVolume, ScheduleTick, SkippedVolume, VolumeBackupCompleted, VolumeBackupFailed,
    VolumeBackupProgress, VolumeFailure, VolumeOutcome, VolumeRestoreCompleted, VolumeRestoreFailed, VolumeSource,
    WorkloadUpdated,
};
use serde_json::{json, Value};
use std::fmt::Debug;

const BACKUP_UID: &str = "5e1c0a52-8f0e-4d55-9d0c-3b1f4f3c7d10";

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn backup() -> BackupRef {
    BackupRef { name: "nightly".into(), uid: BACKUP_UID.into() }
}

fn full_request() -> BackupRequest {
    BackupRequest {
        name: "nightly".into(),
        uid: Some(BACKUP_UID.into()),
        included_namespaces: vec!["shop".into(), "media".into()],
        excluded_namespaces: vec!["kube-system".into()],
        label_selector: Some("app in (web,db),!legacy".into()),
        default_volumes_to_backup: true,
        ttl: Some("168h".into()),
        volume_timeout: Some("4h30m".into()),
        origin: Some("schedule/nightly".into()),
    }
}

fn pvc_volume() -> PlannedVolume {
    PlannedVolume {
        namespace: "shop".into(),
        pod: "web-6d4cf56db6-x7k2p".into(),
        pod_uid: "3e9f6a52-5555-4555-8555-000000000001".into(),
        volume: "data".into(),
        node: "node-1".into(),
        source: VolumeSource::Pvc,
        pvc: Some("web-data".into()),
        pvc_uid: Some("7a4b0a11-2222-4222-8222-000000000001".into()),
        pv: Some("pvc-3f1c9b52-web-data".into()),
        dir: "pvc-3f1c9b52-web-data".into(),
        identity: "pvc/7a4b0a11-2222-4222-8222-000000000001".into(),
    }
}

fn empty_dir_volume() -> PlannedVolume {
    PlannedVolume {
        source: VolumeSource::EmptyDir,
        volume: "cache".into(),
        pvc: None,
        pvc_uid: None,
        pv: None,
        dir: "cache".into(),
        identity: "Deployment/web/cache".into(),
        ..pvc_volume()
    }
}

fn stats() -> BackupStats {
    BackupStats {
        files_new: 3,
        files_changed: 1,
        files_unmodified: 40,
        total_files: 44,
        bytes_added: 8_192,
        total_bytes: 1_048_576,
        duration_seconds: 1.25,
    }
}

fn completed_volume() -> VolumeBackupCompleted {
    VolumeBackupCompleted {
        backup: backup(),
        volume: pvc_volume(),
        snapshot_id: "4f1c0b9e2a7d4f6e8b5c9d0e1f2a3b4c4f1c0b9e2a7d4f6e8b5c9d0e1f2a3b4c".into(),
        parent_snapshot: Some("9d0e1f2a".into()),
        stats: stats(),
        warnings: vec!["error: open /data/locked: permission denied".into()],
        attempt: 1,
    }
}

fn failed_volume() -> VolumeBackupFailed {
    VolumeBackupFailed {
        backup: backup(),
        volume: empty_dir_volume(),
        reason: "volume directory not found under the pods root".into(),
        attempt: 2,
        is_final: false,
    }
}

/// `dev.coracle.<noun>.<verb>.v1`: lowercase dot-separated words after the prefix, at least a
/// noun and a verb, and the version last.
fn assert_type_shape(ty: &str) {
    let rest = ty.strip_prefix("dev.coracle.").unwrap_or_else(|| panic!("{ty} is not under dev.coracle."));
    let words: Vec<&str> = rest.split('.').collect();
    assert!(words.len() >= 3, "{ty}: needs a noun, a verb and a version");
    assert_eq!(words.last(), Some(&"v1"), "{ty}: version 1");
    for w in &words[..words.len() - 1] {
        let starts_with_letter = w.chars().next().is_some_and(|c| c.is_ascii_lowercase());
        assert!(
            starts_with_letter && w.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
            "{ty}: word {w:?}"
        );
    }
}

/// A different Coracle type than `T`'s, for the wrong-type case.
fn other_type<T: EventData>() -> &'static str {
    if T::TYPE == BackupRequest::TYPE {
        BackupCompleted::TYPE
    } else {
        BackupRequest::TYPE
    }
}

/// The whole contract for one event type.
fn contract<T: EventData + Clone + PartialEq + Debug>(data: T, ty: &str, subject: &str) {
    assert_eq!(T::TYPE, ty);
    assert_eq!(T::SUBJECT, subject);
    assert_type_shape(ty);
    assert!(subject.starts_with("coracle."), "{subject} is under the stream's coracle.>");

    // Round trip through the full structured JSON, with an extension attribute.
    let mut event = CloudEvent::new("evt-1", function_source("plan-backup"), Some("nightly".into()), data.clone());
    event.extensions.insert("traceparent".into(), json!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
    let bytes = event.to_json();
    let wire: Value = serde_json::from_slice(&bytes).expect("the event serialises to JSON");
    assert_eq!(wire["specversion"], "1.0");
    assert_eq!(wire["type"], ty);
    assert_eq!(wire["id"], "evt-1");
    assert_eq!(wire["source"], "/coracle/functions/plan-backup");
    assert_eq!(wire["subject"], "nightly");
    assert_eq!(wire["datacontenttype"], "application/json");
    assert!(wire["time"].is_string(), "time is an RFC 3339 string: {wire}");
    assert_eq!(wire["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    assert!(wire.get("dataschema").is_none() && wire.get("ty").is_none(), "no empty or internal attributes: {wire}");
    let parsed = CloudEvent::parse(&bytes).expect("parses");
    assert_eq!(parsed.ty, ty);
    assert!(parsed.is_coracle());
    let typed: CloudEvent<T> = parsed.into_typed().expect("decodes as its own type");
    assert_eq!(typed, event);
    assert_eq!(decode::<T>(&bytes).expect("decode"), event);

    // Unknown data fields are tolerated; unknown extension attributes are kept and re-published.
    let mut newer = wire.clone();
    newer["data"]
        .as_object_mut()
        .expect("data is a JSON object")
        .insert("fieldFromTheFuture".into(), json!({"nested": [1, 2]}));
    newer["coraclecluster"] = json!("eu-west-1");
    newer["sequence"] = json!(42);
    let newer_bytes = serde_json::to_vec(&newer).expect("json");
    let untyped = CloudEvent::parse(&newer_bytes).expect("parses with unknown fields");
    assert_eq!(untyped.data["fieldFromTheFuture"], json!({"nested": [1, 2]}), "untyped data keeps everything");
    assert_eq!(serde_json::to_value(&untyped).expect("json"), newer, "an untyped relay changes nothing");
    let typed = decode::<T>(&newer_bytes).expect("unknown fields are tolerated");
    assert_eq!(typed.data, data);
    assert_eq!(typed.extensions.get("coraclecluster"), Some(&json!("eu-west-1")));
    assert_eq!(typed.extensions.get("sequence"), Some(&json!(42)));
    let republished: Value = serde_json::from_slice(&typed.to_json()).expect("json");
    assert_eq!(republished["coraclecluster"], "eu-west-1");
    assert_eq!(republished["sequence"], 42);
    assert_eq!(republished["traceparent"], wire["traceparent"]);
    assert!(republished["data"].get("fieldFromTheFuture").is_none(), "typed data holds only known fields");

    // Another version of the same type: UnknownVersion, naming both types.
    let v2 = ty.replace(".v1", ".v2");
    let mut future = wire.clone();
    future["type"] = json!(v2);
    let err = decode::<T>(&serde_json::to_vec(&future).expect("json")).expect_err("v2 is refused");
    assert!(matches!(&err, DecodeError::UnknownVersion { got, want } if got == &v2 && *want == ty), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&v2) && msg.contains(ty) && msg.contains("unsupported version"), "{msg}");

    // Another type altogether: WrongType.
    let mut wrong = wire.clone();
    wrong["type"] = json!(other_type::<T>());
    let err = decode::<T>(&serde_json::to_vec(&wrong).expect("json")).expect_err("wrong type is refused");
    assert!(matches!(&err, DecodeError::WrongType { got, want } if got == other_type::<T>() && *want == ty), "{err:?}");
    assert!(err.to_string().contains(other_type::<T>()), "{err}");

    // The right type with data of the wrong shape: BadData naming the type.
    let mut bad = wire;
    bad["data"] = json!("not an object");
    let err = decode::<T>(&serde_json::to_vec(&bad).expect("json")).expect_err("bad data is refused");
    assert!(matches!(&err, DecodeError::BadData { ty: t, .. } if t == ty), "{err:?}");
    assert!(err.to_string().contains(ty), "{err}");
}

#[test]
fn backup_requested() {
    contract(full_request(), "dev.coracle.backup.requested.v1", subjects::BACKUP_REQUESTED);
    // The request's field names are the CLI contract (SPEC §9).
    let wire = serde_json::to_value(full_request()).expect("json");
    for field in
        ["name", "uid", "includedNamespaces", "excludedNamespaces", "labelSelector", "defaultVolumesToBackup", "ttl"]
    {
        assert!(wire.get(field).is_some(), "{field} in {wire}");
    }
    assert_eq!(wire["volumeTimeout"], "4h30m");
    // Only the name is required; everything else has its documented default.
    let minimal: BackupRequest = serde_json::from_value(json!({"name": "nightly"})).expect("minimal request");
    assert_eq!(minimal, BackupRequest { name: "nightly".into(), ..Default::default() });
    assert!(!minimal.default_volumes_to_backup, "opt-in by default");
    let err = serde_json::from_value::<BackupRequest>(json!({"uid": "x"})).expect_err("name is required");
    assert!(err.to_string().contains("name"), "{err}");
}

#[test]
fn backup_planned() {
    let planned = BackupPlanned {
        backup: backup(),
        request: full_request(),
        volumes: vec![pvc_volume(), empty_dir_volume()],
        skipped: vec![SkippedVolume {
            namespace: "shop".into(),
            pod: "web-6d4cf56db6-x7k2p".into(),
            volume: "kube-api-access-8xk2q".into(),
            reason: "service account token".into(),
        }],
        jobs: vec!["coracle-backup-0123456789abcdef0123".into()],
        expires: Utc.with_ymd_and_hms(2025, 4, 13, 2, 0, 0).single().expect("date"),
    };
    contract(planned.clone(), "dev.coracle.backup.planned.v1", subjects::BACKUP_PLANNED);
    let wire = serde_json::to_value(&planned).expect("json");
    assert_eq!(wire["volumes"][0]["podUid"], "3e9f6a52-5555-4555-8555-000000000001");
    assert_eq!(wire["volumes"][0]["source"], "pvc");
    assert_eq!(wire["volumes"][1]["source"], "emptyDir");
    assert_eq!(wire["volumes"][1]["pvc"], Value::Null, "pvc is always present, null for pod-scoped volumes");
    assert!(wire["volumes"][1].get("pvcUid").is_none());
    assert_eq!(wire["expires"], "2025-04-13T02:00:00Z");
    assert_eq!(planned.volumes[0].key(), "shop/web-6d4cf56db6-x7k2p/data");
    // Every volume source has a stable camelCase spelling.
    for (source, spelled) in [
        (VolumeSource::Pvc, "pvc"),
        (VolumeSource::EmptyDir, "emptyDir"),
        (VolumeSource::CsiEphemeral, "csiEphemeral"),
        (VolumeSource::Ephemeral, "ephemeral"),
        (VolumeSource::Other, "other"),
    ] {
        assert_eq!(serde_json::to_value(source).expect("json"), json!(spelled));
        assert_eq!(serde_json::from_value::<VolumeSource>(json!(spelled)).expect("parse"), source);
    }
}

#[test]
fn volume_backup_progress() {
    let progress = VolumeBackupProgress {
        backup: backup(),
        volume: "shop/web-6d4cf56db6-x7k2p/data".into(),
        percent_done: 0.4375,
        bytes_done: 458_752,
        bytes_total: 1_048_576,
        files_done: 19,
        files_total: 44,
        seconds_elapsed: 3,
        seconds_remaining: Some(4),
    };
    contract(progress.clone(), "dev.coracle.volume.backup.progress.v1", subjects::VOLUME_BACKUP_PROGRESS);
    let wire = serde_json::to_value(&progress).expect("json");
    assert_eq!(wire["percentDone"], 0.4375);
    assert_eq!(wire["secondsRemaining"], 4);
}

#[test]
fn volume_backup_completed() {
    contract(completed_volume(), "dev.coracle.volume.backup.completed.v1", subjects::VOLUME_BACKUP_COMPLETED);
    let wire = serde_json::to_value(completed_volume()).expect("json");
    assert_eq!(wire["snapshotId"], completed_volume().snapshot_id);
    assert_eq!(wire["stats"]["bytesAdded"], 8_192);
    // Older producers send neither warnings nor attempt.
    let mut old = wire;
    let obj = old.as_object_mut().expect("object");
    obj.remove("warnings");
    obj.remove("attempt");
    let parsed: VolumeBackupCompleted = serde_json::from_value(old).expect("defaults");
    assert!(parsed.warnings.is_empty());
    assert_eq!(parsed.attempt, 0);
}

#[test]
fn volume_backup_failed() {
    contract(failed_volume(), "dev.coracle.volume.backup.failed.v1", subjects::VOLUME_BACKUP_FAILED);
    let wire = serde_json::to_value(failed_volume()).expect("json");
    assert_eq!(wire["final"], false, "the flag is spelled `final` on the wire");
    assert!(wire.get("isFinal").is_none());
    // Without the flag a failure is final.
    let mut old = wire;
    old.as_object_mut().expect("object").remove("final");
    let parsed: VolumeBackupFailed = serde_json::from_value(old).expect("default");
    assert!(parsed.is_final);
}

#[test]
fn backup_completed() {
    for phase in [BackupPhase::Completed, BackupPhase::PartiallyFailed, BackupPhase::Failed] {
        let completed = BackupCompleted {
            backup: backup(),
            phase,
            volumes: 3,
            volumes_completed: 2,
            volumes_with_warnings: 1,
            volumes_failed: 1,
            bytes_added: 8_192,
            total_bytes: 2_097_152,
            started: Utc.with_ymd_and_hms(2025, 3, 14, 2, 0, 0).single().expect("date"),
            finished: Utc.with_ymd_and_hms(2025, 3, 14, 2, 3, 10).single().expect("date"),
            failures: vec![VolumeFailure {
                volume: "shop/web-6d4cf56db6-x7k2p/cache".into(),
                reason: "restic exited 1".into(),
            }],
        };
        contract(completed.clone(), "dev.coracle.backup.completed.v1", subjects::BACKUP_COMPLETED);
        // SPEC §2: the phase is spelled Completed | PartiallyFailed | Failed.
        let spelled = serde_json::to_value(&completed).expect("json")["phase"].clone();
        assert_eq!(spelled, json!(format!("{phase:?}")));
    }
    let err = serde_json::from_value::<BackupPhase>(json!("Succeeded")).expect_err("unknown phase");
    assert!(err.to_string().contains("Succeeded"), "{err}");
}

#[test]
fn dead_letter() {
    let dead = DeadLetter {
        function: "plan-backup".into(),
        reason: "backup request field name: \"Not_A_Name\" is not a valid Kubernetes name".into(),
        subject: subjects::BACKUP_REQUESTED.into(),
        deliveries: 1,
        stream_sequence: Some(17),
        payload: json!({"specversion": "1.0", "data": {"name": "Not_A_Name"}}),
        truncated: false,
    };
    contract(dead.clone(), "dev.coracle.dlq.deadlettered.v1", subjects::DLQ_PREFIX);
    // Dead letters travel on coracle.dlq.<function>, below the type's subject prefix.
    assert_eq!(subjects::dlq("plan-backup"), "coracle.dlq.plan-backup");
    assert!(subjects::dlq("plan-backup").starts_with(&format!("{}.", DeadLetter::SUBJECT)));
    let wire = serde_json::to_value(&dead).expect("json");
    assert_eq!(wire["streamSequence"], 17);
    let mut no_seq = wire;
    let obj = no_seq.as_object_mut().expect("object");
    obj.remove("streamSequence");
    obj.remove("truncated");
    let parsed: DeadLetter = serde_json::from_value(no_seq).expect("optional fields");
    assert_eq!((parsed.stream_sequence, parsed.truncated), (None, false));
    // A non-JSON payload is kept as a string.
    let raw = DeadLetter { payload: json!("\u{fffd}garbage"), truncated: true, ..dead };
    contract(raw, "dev.coracle.dlq.deadlettered.v1", subjects::DLQ_PREFIX);
}

#[test]
fn volume_outcome_termination_message() {
    // Not a CloudEvent: the JSON a Job writes to its termination message, tagged by `outcome`.
    for (outcome, tag) in [
        (VolumeOutcome::Completed(completed_volume()), "Completed"),
        (VolumeOutcome::Failed(failed_volume()), "Failed"),
    ] {
        let text = serde_json::to_string(&outcome).expect("json");
        let wire: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(wire["outcome"], tag);
        assert_eq!(wire["backup"]["uid"], BACKUP_UID, "the data is flattened next to the tag: {wire}");
        assert_eq!(serde_json::from_str::<VolumeOutcome>(&text).expect("parses"), outcome);
        // Unknown fields are tolerated here too.
        let mut newer = wire.clone();
        newer["restic"] = json!("0.18.0");
        assert_eq!(serde_json::from_value::<VolumeOutcome>(newer).expect("tolerated"), outcome);
    }
    let err = serde_json::from_value::<VolumeOutcome>(json!({"outcome": "Exploded"})).expect_err("unknown outcome");
    assert!(err.to_string().contains("Exploded"), "{err}");
    let err = serde_json::from_value::<VolumeOutcome>(json!({"backup": {}})).expect_err("no tag");
    assert!(err.to_string().contains("outcome"), "{err}");
}

#[test]
fn sources_name_the_producer() {
    assert_eq!(function_source("record-result"), "/coracle/functions/record-result");
    assert_eq!(job_source("coracle-backup-0123"), "/coracle/jobs/coracle-backup-0123");
}

fn minimal_event() -> Value {
    json!({
        "specversion": "1.0",
        "id": "e-1",
        "source": "/tests",
        "type": "dev.coracle.backup.requested.v1",
        "data": {"name": "nightly"},
    })
}

fn parse_value(v: &Value) -> Result<CloudEvent, DecodeError> {
    CloudEvent::parse(&serde_json::to_vec(v).expect("json"))
}

#[test]
fn broken_envelopes_give_clear_errors() {
    let ok = parse_value(&minimal_event()).expect("the minimal event parses");
    assert_eq!((ok.subject, ok.time, ok.datacontenttype), (None, None, None), "optional attributes stay absent");
    assert!(ok.extensions.is_empty());

    for missing in ["id", "source", "type", "specversion"] {
        let mut ev = minimal_event();
        ev.as_object_mut().expect("object").remove(missing);
        let err = parse_value(&ev).expect_err(missing);
        assert!(matches!(err, DecodeError::Malformed(_)), "{missing}: {err:?}");
        assert!(err.to_string().contains(&format!("`{missing}`")), "{missing}: {err}");
    }
    for empty in ["id", "source", "type"] {
        let mut ev = minimal_event();
        ev[empty] = json!("");
        let err = parse_value(&ev).expect_err(empty);
        assert!(matches!(err, DecodeError::Malformed(_)) && err.to_string().contains("must not be empty"), "{err}");
    }

    let mut old = minimal_event();
    old["specversion"] = json!("0.3");
    let err = parse_value(&old).expect_err("0.3");
    assert!(matches!(&err, DecodeError::SpecVersion(v) if v == "0.3"), "{err:?}");
    assert!(err.to_string().contains("\"0.3\"") && err.to_string().contains("1.0"), "{err}");

    for not_object in [json!([minimal_event()]), json!("dev.coracle.backup.requested.v1"), json!(1.0), json!(null)] {
        let err = parse_value(&not_object).expect_err("not an object");
        assert!(matches!(err, DecodeError::Malformed(_)), "{err:?}");
        assert!(err.to_string().contains("not a JSON object"), "{err}");
    }

    let whole = serde_json::to_vec(&minimal_event()).expect("json");
    for cut in [1, whole.len() / 2, whole.len() - 1] {
        let err = CloudEvent::parse(&whole[..cut]).expect_err("truncated");
        assert!(matches!(err, DecodeError::Malformed(_)), "{err:?}");
        assert!(err.to_string().starts_with("not a structured CloudEvent: EOF while parsing"), "{cut}: {err}");
    }
    let err = CloudEvent::parse(b"\xff\xfe\x00garbage").expect_err("garbage");
    assert!(err.to_string().starts_with("not a structured CloudEvent:"), "{err}");
    let err = CloudEvent::parse(b"").expect_err("empty");
    assert!(err.to_string().contains("EOF"), "{err}");

    let mut bad_time = minimal_event();
    bad_time["time"] = json!("yesterday");
    let err = parse_value(&bad_time).expect_err("bad time");
    assert!(matches!(err, DecodeError::Malformed(_)), "{err:?}");

    let mut numeric_id = minimal_event();
    numeric_id["id"] = json!(42);
    let err = parse_value(&numeric_id).expect_err("numeric id");
    assert!(err.to_string().contains("invalid type"), "{err}");

    // No data at all is accepted by the envelope; the typed decode names the type.
    let mut no_data = minimal_event();
    no_data.as_object_mut().expect("object").remove("data");
    let ev = parse_value(&no_data).expect("data is optional in the envelope");
    assert_eq!(ev.data, Value::Null);
    let err = ev.into_typed::<BackupRequest>().expect_err("no request");
    assert!(matches!(err, DecodeError::BadData { .. }) && err.to_string().contains(BackupRequest::TYPE), "{err}");
}

#[test]
fn versions_are_told_apart_from_other_types() {
    let with_type = |ty: &str| {
        let mut ev = minimal_event();
        ev["type"] = json!(ty);
        parse_value(&ev).expect("parses").into_typed::<BackupRequest>()
    };
    for newer in ["dev.coracle.backup.requested.v2", "dev.coracle.backup.requested.v10"] {
        let err = with_type(newer).expect_err(newer);
        assert!(matches!(err, DecodeError::UnknownVersion { .. }), "{newer}: {err:?}");
        assert!(err.to_string().contains(newer), "{err}");
    }
    for other in [
        "dev.coracle.backup.requested",
        "dev.coracle.backup.requested.V1",
        "dev.coracle.restore.requested.v1",
        "com.example.backup.requested.v1",
        "dev.coracle.backup.requested.v1.extra",
    ] {
        let err = with_type(other).expect_err(other);
        assert!(matches!(err, DecodeError::WrongType { .. }), "{other}: {err:?}");
        assert!(err.to_string().contains(other) && err.to_string().contains(BackupRequest::TYPE), "{err}");
    }
    let mut foreign = minimal_event();
    foreign["type"] = json!("dev.knative.apiserver.resource.add");
    assert!(!parse_value(&foreign).expect("parses").is_coracle());
}

#[test]
fn data_base64_is_decoded() {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut ev = minimal_event();
    let obj = ev.as_object_mut().expect("object");
    obj.remove("data");
    obj.insert("data_base64".into(), json!(b64(br#"{"name":"from-knative","includedNamespaces":["shop"]}"#)));
    let parsed = parse_value(&ev).expect("parses");
    assert!(parsed.extensions.get("data_base64").is_none(), "resolved into data, not kept as an extension");
    let typed = parsed.into_typed::<BackupRequest>().expect("typed");
    assert_eq!(typed.data.name, "from-knative");
    assert_eq!(typed.data.included_namespaces, ["shop"]);
    let republished: Value = serde_json::from_slice(&typed.to_json()).expect("json");
    assert_eq!(republished["data"]["name"], "from-knative", "re-published in structured mode with data");
    assert!(republished.get("data_base64").is_none());

    // Binary data that is not JSON stays a string.
    let mut text = minimal_event();
    let obj = text.as_object_mut().expect("object");
    obj.remove("data");
    obj.insert("data_base64".into(), json!(b64(b"plain text")));
    assert_eq!(parse_value(&text).expect("parses").data, json!("plain text"));

    let mut broken = minimal_event();
    let obj = broken.as_object_mut().expect("object");
    obj.remove("data");
    obj.insert("data_base64".into(), json!("%%% not base64 %%%"));
    let err = parse_value(&broken).expect_err("bad base64");
    assert!(matches!(err, DecodeError::Malformed(_)) && err.to_string().contains("data_base64"), "{err}");

    let mut wrong_kind = minimal_event();
    let obj = wrong_kind.as_object_mut().expect("object");
    obj.remove("data");
    obj.insert("data_base64".into(), json!(12));
    let err = parse_value(&wrong_kind).expect_err("data_base64 number");
    assert!(err.to_string().contains("data_base64 is not a string"), "{err}");
}

#[test]
fn argo_events_request_is_accepted_as_it_comes() {
    let bytes = fixture("argo-events-backup-requested.json");
    let ev = decode::<BackupRequest>(&bytes).expect("the Argo Events request decodes");
    assert_eq!(ev.id, "a3f9c2e4-6b1d-4e0f-9c8b-2d7e5f1a0b93");
    assert_eq!(ev.source, "coracle-triggers");
    assert_eq!(ev.subject.as_deref(), Some("nightly-shop"));
    assert_eq!(
        ev.time.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)).as_deref(),
        Some("2025-03-14T02:00:00.000118306Z")
    );
    assert_eq!(
        ev.data,
        BackupRequest {
            name: "nightly-shop-20250314020000".into(),
            uid: None,
            included_namespaces: vec!["shop".into()],
            excluded_namespaces: vec![],
            label_selector: Some("app in (web,db),!legacy".into()),
            default_volumes_to_backup: false,
            ttl: Some("168h".into()),
            volume_timeout: Some("2h".into()),
            origin: Some("argo-events/calendar/nightly-shop".into()),
        }
    );
    let mut ext: Vec<&str> = ev.extensions.keys().map(String::as_str).collect();
    ext.sort_unstable();
    assert_eq!(ext, ["partitionkey", "traceparent", "tracestate"]);
    // Re-published, every attribute survives.
    let original: Value = serde_json::from_slice(&bytes).expect("json");
    let republished: Value = serde_json::from_slice(&ev.to_json()).expect("json");
    for attr in ["id", "source", "type", "subject", "datacontenttype", "traceparent", "tracestate", "partitionkey"] {
        assert_eq!(republished[attr], original[attr], "{attr}");
    }
}

#[test]
fn knative_broker_request_is_accepted_as_it_comes() {
    let bytes = fixture("knative-broker-backup-requested.json");
    let ev = decode::<BackupRequest>(&bytes).expect("the Knative request decodes");
    assert_eq!(ev.source, "/apis/v1/namespaces/shop/pingsources/coracle-nightly");
    assert_eq!(ev.data.name, "nightly-20250314");
    assert_eq!(ev.data.included_namespaces, ["shop"]);
    assert!(ev.data.default_volumes_to_backup);
    assert_eq!(ev.data.ttl.as_deref(), Some("720h"));
    assert_eq!(ev.extensions.get("knativearrivaltime"), Some(&json!("2025-03-14T02:00:00.183746291Z")));
    assert!(ev.extensions.contains_key("traceparent"));
    assert!(!ev.extensions.contains_key("data_base64"));
}

#[test]
fn knative_apiserversource_event_parses_and_is_not_a_request() {
    let bytes = fixture("knative-apiserversource-deployment-update.json");
    let ev = CloudEvent::parse(&bytes).expect("an ApiServerSource event is a valid CloudEvent");
    assert!(!ev.is_coracle());
    assert_eq!(ev.subject.as_deref(), Some("/apis/apps/v1/namespaces/shop/deployments/web"));
    for (ext, value) in [("kind", "Deployment"), ("name", "web"), ("namespace", "shop")] {
        assert_eq!(ev.extensions.get(ext), Some(&json!(value)), "{ext}");
    }
    assert_eq!(ev.data["metadata"]["generation"], 7);
    let relayed: Value = serde_json::to_value(&ev).expect("json");
    assert_eq!(relayed, serde_json::from_slice::<Value>(&bytes).expect("json"), "bridged into NATS unchanged");
    let err = ev.into_typed::<BackupRequest>().expect_err("not a backup request");
    assert!(matches!(err, DecodeError::WrongType { .. }), "{err:?}");
    assert!(err.to_string().contains("dev.knative.apiserver.resource.update"), "{err}");
}

const RESTORE_UID: &str = "c0ffee00-1111-4111-8111-000000000001";

fn restore() -> RestoreRef {
    RestoreRef { name: "shop-to-staging".into(), uid: RESTORE_UID.into() }
}

fn restore_request() -> RestoreRequest {
    RestoreRequest {
        name: "shop-to-staging".into(),
        uid: Some(RESTORE_UID.into()),
        backup: "nightly".into(),
        namespace_mapping: [("shop".to_string(), "shop-staging".to_string())].into_iter().collect(),
        included_namespaces: vec!["shop".into()],
        excluded_namespaces: vec!["kube-system".into()],
        volumes: vec!["shop/web-data".into(), "cache".into()],
    }
}

fn restore_volume() -> RestoreVolume {
    RestoreVolume {
        namespace: "shop-staging".into(),
        pod: "web-7f9c8d6b5-abcde".into(),
        pod_uid: "9a8b7c6d-0000-4000-8000-000000000001".into(),
        volume: "data".into(),
        dir: "pvc-11112222-web-data".into(),
        source_namespace: "shop".into(),
        snapshot_id: "4f1c0b9e".into(),
        entry: String::new(),
    }
}

fn volume_restore_failed() -> VolumeRestoreFailed {
    VolumeRestoreFailed {
        restore: restore(),
        volume: restore_volume(),
        reason: "restic restore exited 1: repository not found".into(),
        attempt: 1,
        is_final: false,
    }
}

fn volume_restore_completed() -> VolumeRestoreCompleted {
    VolumeRestoreCompleted {
        restore: restore(),
        volume: restore_volume(),
        stats: RestoreStats { files: 44, bytes: 1_048_576, duration_seconds: 0.75 },
        attempt: 0,
    }
}

#[test]
fn restore_requested() {
    contract(restore_request(), "dev.coracle.restore.requested.v1", subjects::RESTORE_REQUESTED);
    let wire = serde_json::to_value(restore_request()).expect("json");
    assert_eq!(wire["namespaceMapping"], json!({"shop": "shop-staging"}));
    let minimal: RestoreRequest =
        serde_json::from_value(json!({"name": "r", "backup": "nightly"})).expect("minimal restore request");
    assert_eq!(minimal, RestoreRequest { name: "r".into(), backup: "nightly".into(), ..Default::default() });
    let err = serde_json::from_value::<RestoreRequest>(json!({"name": "r"})).expect_err("backup is required");
    assert!(err.to_string().contains("backup"), "{err}");
}

#[test]
fn restore_planned() {
    let pending = |target: RestoreTarget| PendingRestore {
        restore: restore(),
        backup: backup(),
        target_namespace: "shop-staging".into(),
        target,
        source_namespace: "shop".into(),
        source_pod: "web-6d4cf56db6-x7k2p".into(),
        source_volume: "data".into(),
        snapshot_id: "4f1c0b9e".into(),
        identity: "pvc/7a4b0a11-2222-4222-8222-000000000001".into(),
    };
    let planned = RestorePlanned {
        restore: restore(),
        request: restore_request(),
        backup: backup(),
        entries: vec![
            pending(RestoreTarget::Pvc { claim: "web-data".into() }),
            pending(RestoreTarget::Workload { owner: "deployment/web".into(), volume: "cache".into() }),
        ],
        skipped: vec![],
    };
    contract(planned.clone(), "dev.coracle.restore.planned.v1", subjects::RESTORE_PLANNED);
    let wire = serde_json::to_value(&planned).expect("json");
    assert_eq!(wire["entries"][0]["target"], json!({"kind": "pvc", "claim": "web-data"}));
    assert_eq!(wire["entries"][1]["target"], json!({"kind": "workload", "owner": "deployment/web", "volume": "cache"}));
    assert_eq!(wire["entries"][0]["targetNamespace"], "shop-staging");
    let err = serde_json::from_value::<RestoreTarget>(json!({"kind": "node", "name": "n"})).expect_err("unknown kind");
    assert!(err.to_string().contains("node"), "{err}");
}

#[test]
fn restore_pod_ready() {
    let ready = RestorePodReady {
        restore: restore(),
        namespace: "shop-staging".into(),
        pod: "web-7f9c8d6b5-abcde".into(),
        pod_uid: "9a8b7c6d-0000-4000-8000-000000000001".into(),
        node: "node-2".into(),
        volumes: vec!["data".into(), "cache".into()],
    };
    contract(ready, "dev.coracle.restore.pod.ready.v1", subjects::RESTORE_POD_READY);
}

#[test]
fn volume_restore_results() {
    contract(volume_restore_completed(), "dev.coracle.volume.restore.completed.v1", subjects::VOLUME_RESTORE_COMPLETED);
    contract(volume_restore_failed(), "dev.coracle.volume.restore.failed.v1", subjects::VOLUME_RESTORE_FAILED);
    assert_eq!(restore_volume().key(), "shop-staging/web-7f9c8d6b5-abcde/data");
    let mut wire = serde_json::to_value(volume_restore_failed()).expect("json");
    assert_eq!(wire["final"], false);
    wire.as_object_mut().expect("object").remove("final");
    assert!(serde_json::from_value::<VolumeRestoreFailed>(wire).expect("default").is_final, "final unless said");
    for (outcome, tag) in [
        (RestoreOutcome::Completed(volume_restore_completed()), "Completed"),
        (RestoreOutcome::Failed(volume_restore_failed()), "Failed"),
    ] {
        let wire = serde_json::to_value(&outcome).expect("json");
        assert_eq!(wire["outcome"], tag);
        assert_eq!(serde_json::from_value::<RestoreOutcome>(wire).expect("parses"), outcome);
    }
    assert_eq!(coracle_events::MARKER_DIR, ".coracle");
    assert_eq!(coracle_events::FAILED_MARKER_SUFFIX, ".failed");
}

#[test]
fn restore_completed() {
    for phase in [BackupPhase::Completed, BackupPhase::PartiallyFailed, BackupPhase::Failed] {
        let completed = RestoreCompleted {
            restore: restore(),
            phase,
            volumes: 2,
            volumes_completed: 1,
            volumes_failed: 1,
            failures: vec![VolumeFailure {
                volume: "shop-staging/web-7f9c8d6b5-abcde/cache".into(),
                reason: "x".into(),
            }],
        };
        contract(completed, "dev.coracle.restore.completed.v1", subjects::RESTORE_COMPLETED);
    }
}

#[test]
fn schedule_tick() {
    contract(ScheduleTick {}, "dev.coracle.schedule.tick.v1", subjects::SCHEDULE_TICK);
}

#[test]
fn workload_updated() {
    let template = |image: &str| json!({"spec": {"containers": [{"name": "web", "image": image}]}});
    let data = WorkloadUpdated {
        old: Some(json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"template": template("web:1")}})),
        new: json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"template": template("web:2")}}),
    };
    contract(data, "dev.coracle.k8s.workload.updated.v1", "coracle.k8s.workload.updated");
}

#[test]
fn backup_deleted() {
    let data = BackupDeleted {
        backup: backup(),
        reason: "expired".into(),
        namespaces: vec!["media".into(), "shop".into()],
        deleted: Utc.with_ymd_and_hms(2025, 4, 13, 2, 1, 0).single().expect("date"),
    };
    contract(data, "dev.coracle.backup.deleted.v1", subjects::BACKUP_DELETED);
}

#[test]
fn maintenance_completed() {
    let data = MaintenanceCompleted {
        namespace: "shop".into(),
        job: "coracle-maintain-0123456789abcdef0123".into(),
        forgotten: vec![backup()],
        snapshots_removed: 2,
        pruned: true,
        check_passed: Some(true),
        stale_locks_removed: 1,
        failure: None,
        started: Utc.with_ymd_and_hms(2025, 4, 13, 2, 0, 0).single().expect("date"),
        finished: Utc.with_ymd_and_hms(2025, 4, 13, 2, 1, 0).single().expect("date"),
    };
    contract(data.clone(), "dev.coracle.maintenance.completed.v1", subjects::MAINTENANCE_COMPLETED);
    // Optional fields are optional on the wire: an older producer's minimal event decodes.
    let minimal: MaintenanceCompleted = serde_json::from_value(json!({
        "namespace": "shop", "job": "j", "started": "2025-04-13T02:00:00Z", "finished": "2025-04-13T02:01:00Z"
    }))
    .expect("minimal");
    assert_eq!((minimal.pruned, minimal.check_passed, minimal.forgotten.len()), (false, None, 0));
}

/// Every `event_type!` in `src/types.rs` is covered by a `contract` test in this file: a new event
/// type without a round-trip test fails here.
#[test]
fn every_event_type_has_a_round_trip_test() {
    let source = include_str!("../src/types.rs");
    let mut declared: Vec<String> = source
        .split("event_type!(")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(args, _)| args))
        .filter_map(|args| args.split(',').nth(1).map(|ty| ty.trim().trim_matches('"').to_string()))
        .filter(|ty| ty.starts_with("dev.coracle."))
        .collect();
    declared.sort();
    let mut tested: Vec<&str> = vec![
        BackupRequest::TYPE,
        BackupPlanned::TYPE,
        VolumeBackupProgress::TYPE,
        VolumeBackupCompleted::TYPE,
        VolumeBackupFailed::TYPE,
        BackupCompleted::TYPE,
        DeadLetter::TYPE,
        RestoreRequest::TYPE,
        RestorePlanned::TYPE,
        RestorePodReady::TYPE,
        VolumeRestoreCompleted::TYPE,
        VolumeRestoreFailed::TYPE,
        RestoreCompleted::TYPE,
        ScheduleTick::TYPE,
        WorkloadUpdated::TYPE,
        BackupDeleted::TYPE,
        MaintenanceCompleted::TYPE,
    ];
    tested.sort_unstable();
    assert_eq!(declared, tested, "event types in src/types.rs vs. those with a contract test here");
}
