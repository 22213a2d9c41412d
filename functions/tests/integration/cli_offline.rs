//! The offline commands of the CLI contract (SPEC §9), through the real binary:
//! `coracle plan restore --record --request -o json` feeding `coracle admission review --pending`.

use chrono::Utc;
use coracle_events::{
    BackupPlanned, BackupRef, BackupRequest, BackupStats, PlannedVolume, VolumeBackupCompleted, VolumeSource,
};
use coracle_functions::record::BackupRecord;
use serde_json::Value;
use std::process::Command;

fn coracle(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_coracle"))
        .args(args)
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn volume(pod: &str, name: &str, pvc: Option<&str>, identity: &str) -> PlannedVolume {
    PlannedVolume {
        namespace: "shop".into(),
        pod: pod.into(),
        pod_uid: "0b9f3b36-1b8e-4f1a-9a43-5a0c0f9a2a11".into(),
        volume: name.into(),
        node: "node-1".into(),
        source: if pvc.is_some() { VolumeSource::Pvc } else { VolumeSource::EmptyDir },
        pvc: pvc.map(String::from),
        pvc_uid: pvc.map(|_| "c1".into()),
        pv: pvc.map(|_| "pv-1".into()),
        dir: name.into(),
        identity: identity.into(),
    }
}

#[test]
fn plan_restore_then_admission_review_offline() {
    let dir = tempfile::tempdir().expect("tmp");
    let backup = BackupRef { name: "nightly".into(), uid: "b1".into() };
    let vols = vec![
        volume("web-7c9d8f6b5d-h2x9k", "data", Some("web-data"), "pvc/c1"),
        volume("web-7c9d8f6b5d-h2x9k", "cache", None, "deployment/web/cache"),
    ];
    let planned = BackupPlanned {
        backup: backup.clone(),
        request: BackupRequest { name: "nightly".into(), ..Default::default() },
        volumes: vols.clone(),
        skipped: vec![],
        jobs: vec![],
        expires: Utc::now(),
    };
    let mut record = BackupRecord::from_plan(&planned, Utc::now());
    for v in vols {
        record.apply_completed(
            &VolumeBackupCompleted {
                backup: backup.clone(),
                snapshot_id: format!("snap-{}", v.volume),
                volume: v,
                parent_snapshot: None,
                stats: BackupStats::default(),
                warnings: vec![],
                attempt: 0,
            },
            Utc::now(),
        );
    }
    let record_path = dir.path().join("record.json");
    std::fs::write(&record_path, serde_json::to_vec(&record).expect("json")).expect("write");
    let request_path = dir.path().join("restore.yaml");
    std::fs::write(&request_path, "name: shop-restore\nbackup: nightly\n").expect("write");

    let (code, pending, err) = coracle(&[
        "plan",
        "restore",
        "--record",
        record_path.to_str().unwrap_or_default(),
        "--request",
        request_path.to_str().unwrap_or_default(),
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let plan: Value = serde_json::from_str(&pending).expect("plan json");
    assert_eq!(plan["entries"].as_array().map(Vec::len), Some(2), "{plan}");
    let pending_path = dir.path().join("pending.json");
    std::fs::write(&pending_path, &pending).expect("write");

    let review = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/admission/generate-name-pod.json");
    let (code, out, err) =
        coracle(&["admission", "review", "--file", review, "--pending", pending_path.to_str().unwrap_or_default()]);
    assert_eq!(code, 0, "{err}");
    let resp: Value = serde_json::from_str(&out).expect("review json");
    assert_eq!(resp["kind"], "AdmissionReview");
    assert_eq!(resp["response"]["uid"], "6a1d2f0e-1b1c-4f7e-9d0e-000000000001");
    assert_eq!(resp["response"]["patchType"], "JSONPatch");

    // Nothing pending: allowed without a patch. A malformed review: answered, not crashed on.
    let (code, out, _) = coracle(&["admission", "review", "--file", review]);
    assert_eq!(code, 0);
    assert!(serde_json::from_str::<Value>(&out).expect("json")["response"].get("patch").is_none());
    let bad = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/admission/truncated.json");
    let (code, out, _) = coracle(&["admission", "review", "--file", bad]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).expect("json")["response"]["allowed"], true);

    // A request for another backup is refused with a message naming both.
    std::fs::write(&request_path, "name: shop-restore\nbackup: weekly\n").expect("write");
    let (code, _, err) = coracle(&[
        "plan",
        "restore",
        "--record",
        record_path.to_str().unwrap_or_default(),
        "--request",
        request_path.to_str().unwrap_or_default(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("weekly") && err.contains("nightly"), "{err}");
}
