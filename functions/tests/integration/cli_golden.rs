//! Golden tests for what people and scripts read: the tables and JSON/YAML of `backup get`,
//! `backup describe` and `restore describe` over fixed records (`fixtures/cli/`). A change to the
//! output shows up as a diff against `fixtures/cli/*.golden`; after checking it is intended,
//! `CORACLE_UPDATE_GOLDEN=1 cargo test -p coracle-functions --test integration cli_golden` rewrites them.

use coracle_functions::cli::{backup_describe, backups_list, restore_describe, Format};
use coracle_functions::record::BackupRecord;
use coracle_functions::restore_state::RestoreRecord;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cli").join(name)
}

fn record() -> BackupRecord {
    let text = std::fs::read_to_string(fixture("record.json")).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("fixtures/cli/record.json: {e}"))
}

fn restore_record() -> RestoreRecord {
    let text = std::fs::read_to_string(fixture("restore-record.json")).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("fixtures/cli/restore-record.json: {e}"))
}

fn golden(name: &str, actual: &str) {
    let path = fixture(name);
    if std::env::var_os("CORACLE_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        expected == actual,
        "{name} differs from its golden file.\n--- expected\n{expected}\n--- actual\n{actual}\n\
         (CORACLE_UPDATE_GOLDEN=1 rewrites it once the change is intended)"
    );
}

#[test]
fn backup_describe_table() {
    golden("backup-describe.golden", &backup_describe(&record(), Format::Table).unwrap_or_default());
}

#[test]
fn backup_describe_json_is_the_record_and_reads_back() {
    let json = backup_describe(&record(), Format::Json).unwrap_or_default();
    golden("backup-describe-json.golden", &json);
    let back: BackupRecord = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, record(), "`-o json` is what `plan restore --record` reads");
}

#[test]
fn backup_describe_yaml() {
    let yaml = backup_describe(&record(), Format::Yaml).unwrap_or_default();
    let back: BackupRecord = serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, record());
}

#[test]
fn backup_list_table() {
    let mut second = record();
    second.backup.name = "hourly-20261121100000".into();
    second.phase = coracle_functions::record::RecordPhase::InProgress;
    golden("backup-get.golden", &backups_list(&[record(), second], Format::Table).unwrap_or_default());
}

#[test]
fn restore_describe_table_and_json() {
    golden("restore-describe.golden", &restore_describe(&restore_record(), Format::Table).unwrap_or_default());
    let json = restore_describe(&restore_record(), Format::Json).unwrap_or_default();
    let back: RestoreRecord = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, restore_record());
}
