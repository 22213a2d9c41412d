//! CloudEvent decoding: whatever bytes arrive on a subject. Decoding never panics; whatever
//! decodes re-encodes to an event that decodes the same; a request that validates stays valid;
//! and the dead letter built for any payload stays bounded and serialisable.
#![no_main]

use coracle_events::consume::{dead_letter_event, Delivery, MAX_DLQ_REASON};
use coracle_events::envelope::decode;
use coracle_events::*;
use libfuzzer_sys::fuzz_target;

/// Decodes as `T`; when it decodes, encoding and decoding again gives the same event.
fn round_trip<T: EventData + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Option<String> {
    match decode::<T>(bytes) {
        Ok(event) => {
            let again = decode::<T>(&event.to_json()).expect("a decoded event re-encodes to a valid one");
            assert_eq!(again, event, "round trip of {}", T::TYPE);
            None
        }
        Err(e) => Some(e.to_string()),
    }
}

fuzz_target!(|bytes: &[u8]| {
    let reasons = [
        round_trip::<BackupRequest>(bytes),
        round_trip::<BackupPlanned>(bytes),
        round_trip::<VolumeBackupProgress>(bytes),
        round_trip::<VolumeBackupCompleted>(bytes),
        round_trip::<VolumeBackupFailed>(bytes),
        round_trip::<BackupCompleted>(bytes),
        round_trip::<DeadLetter>(bytes),
        round_trip::<RestoreRequest>(bytes),
        round_trip::<RestorePlanned>(bytes),
        round_trip::<RestorePodReady>(bytes),
        round_trip::<VolumeRestoreCompleted>(bytes),
        round_trip::<VolumeRestoreFailed>(bytes),
        round_trip::<RestoreCompleted>(bytes),
        round_trip::<ScheduleTick>(bytes),
        round_trip::<WorkloadUpdated>(bytes),
    ];
    // The handlers' request readers (JSON or YAML, bare or enveloped) and their validation.
    if let Ok(request) = coracle_functions::request::parse_backup_request(bytes) {
        coracle_functions::request::validate(&request).expect("a parsed request is valid");
    }
    let _ = coracle_functions::request::parse_restore_request(bytes);

    // What the consume loop parks on coracle.dlq.<function> for this payload and its reason.
    let reason = reasons.iter().flatten().next().cloned().unwrap_or_default();
    let delivery = Delivery {
        subject: "coracle.backup.requested".into(),
        payload: bytes::Bytes::copy_from_slice(bytes),
        deliveries: 1,
        stream_sequence: bytes.len() as u64 % 3,
    };
    let dead = dead_letter_event("plan-backup", &delivery, &reason);
    assert!(dead.data.reason.len() <= MAX_DLQ_REASON + 64, "reason bounded");
    assert_eq!(dead.data.truncated, bytes.len() > MAX_DLQ_PAYLOAD);
    let json = dead.to_json();
    assert!(json.len() < 8 * MAX_DLQ_PAYLOAD + 64 * 1024, "dead letter bounded: {} bytes", json.len());
    decode::<DeadLetter>(&json).expect("the dead letter decodes");
});
