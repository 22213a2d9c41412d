//! restic's `--json` message stream, for restic 0.14 (Debian 12) through 0.18+.
//!
//! Lines of `restic backup` are parsed one by one into [`Message`], lines of `restic restore`
//! into [`RestoreMessage`] (the two commands share message type names with different fields). Every field may be missing (0.14 omits
//! zero-valued status fields, 0.17 added `backup_start`/`backup_end`/`data_added_packed`),
//! numbers are accepted as integers or floats, unknown fields and message types are ignored
//! and anything that is not a JSON object (restic prints some warnings as plain text) becomes
//! [`Message::Text`]. Nothing here panics on any input.
//!
//! Differences handled:
//! * `error`: 0.14 marshals Go's error value, usually `{}` or `{"Op":"open","Path":…,"Err":13}`;
//!   0.17+ writes `{"message":"…"}`. Both go to stderr, as does 0.17+'s `exit_error`.
//! * `summary.snapshot_id`: 0.14 prints the short (8 hex digit) id, 0.17+ the full id.
//! * `restore`: 0.16+ prints `status` and `summary` messages; 0.14 prints no JSON at all, only
//!   text (`restoring <Snapshot …>`, `ignoring error for /path: …`).

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Status(Status),
    Summary(Summary),
    Error(ItemError),
    VerboseStatus(VerboseStatus),
    /// 0.17+: the fatal error or warning restic exits with.
    ExitError(ExitError),
    /// A JSON message of a type this parser does not use (e.g. `initialized`).
    Other {
        message_type: String,
    },
    /// A line that is not a JSON object.
    Text(String),
}

/// `message_type: status`: progress of a running backup.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    /// Fraction done, 0.0 to 1.0.
    pub percent_done: f64,
    pub total_files: Option<u64>,
    pub files_done: Option<u64>,
    pub total_bytes: Option<u64>,
    pub bytes_done: Option<u64>,
    pub seconds_elapsed: Option<u64>,
    pub seconds_remaining: Option<u64>,
    pub error_count: Option<u64>,
    pub current_files: Vec<String>,
}

/// `message_type: summary`: the result of a finished backup.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub dirs_new: u64,
    pub dirs_changed: u64,
    pub dirs_unmodified: u64,
    pub data_blobs: u64,
    pub tree_blobs: u64,
    pub data_added: u64,
    /// 0.17+.
    pub data_added_packed: Option<u64>,
    pub total_files_processed: u64,
    pub total_bytes_processed: u64,
    pub total_duration: f64,
    /// Full id (0.17+) or short id (0.14); absent for dry runs.
    pub snapshot_id: Option<String>,
    /// 0.17+, RFC 3339.
    pub backup_start: Option<String>,
    pub backup_end: Option<String>,
}

/// `message_type: error`: an item restic could not back up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItemError {
    /// Readable error text; `None` when restic gave no detail (0.14's `"error":{}`).
    pub message: Option<String>,
    /// Phase, e.g. `scan`, `archival`.
    pub during: String,
    pub item: String,
}

/// `message_type: verbose_status` (only with `--verbose`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerboseStatus {
    pub action: String,
    pub item: String,
    pub duration: f64,
    pub data_size: u64,
}

/// `message_type: exit_error` (0.17+).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExitError {
    pub code: Option<i32>,
    pub message: String,
}

/// The JSON object on a line, or the line itself as text when it is not one; `None` for
/// blank lines.
fn object(line: &str) -> Option<Result<Map<String, Value>, String>> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return None;
    }
    Some(match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(obj)) => Ok(obj),
        _ => Err(line.to_string()),
    })
}

fn item_error(obj: &Map<String, Value>) -> ItemError {
    ItemError {
        message: obj.get("error").and_then(describe_error),
        during: text(obj, "during").unwrap_or_default(),
        item: text(obj, "item").unwrap_or_default(),
    }
}

fn exit_error(obj: &Map<String, Value>) -> ExitError {
    ExitError {
        code: obj.get("code").and_then(Value::as_i64).and_then(|c| i32::try_from(c).ok()),
        message: text(obj, "message").unwrap_or_default(),
    }
}

/// Parses one line of `restic backup` output; `None` for blank lines.
pub fn parse_line(line: &str) -> Option<Message> {
    let obj = match object(line)? {
        Ok(obj) => obj,
        Err(text) => return Some(Message::Text(text)),
    };
    let message_type = text(&obj, "message_type").unwrap_or_default();
    Some(match message_type.as_str() {
        "status" => Message::Status(Status {
            percent_done: float(&obj, "percent_done").unwrap_or(0.0).clamp(0.0, 1.0),
            total_files: uint(&obj, "total_files"),
            files_done: uint(&obj, "files_done"),
            total_bytes: uint(&obj, "total_bytes"),
            bytes_done: uint(&obj, "bytes_done"),
            seconds_elapsed: uint(&obj, "seconds_elapsed"),
            seconds_remaining: uint(&obj, "seconds_remaining"),
            error_count: uint(&obj, "error_count"),
            current_files: strings(&obj, "current_files"),
        }),
        "summary" => Message::Summary(Summary {
            files_new: uint(&obj, "files_new").unwrap_or(0),
            files_changed: uint(&obj, "files_changed").unwrap_or(0),
            files_unmodified: uint(&obj, "files_unmodified").unwrap_or(0),
            dirs_new: uint(&obj, "dirs_new").unwrap_or(0),
            dirs_changed: uint(&obj, "dirs_changed").unwrap_or(0),
            dirs_unmodified: uint(&obj, "dirs_unmodified").unwrap_or(0),
            data_blobs: uint(&obj, "data_blobs").unwrap_or(0),
            tree_blobs: uint(&obj, "tree_blobs").unwrap_or(0),
            data_added: uint(&obj, "data_added").unwrap_or(0),
            data_added_packed: uint(&obj, "data_added_packed"),
            total_files_processed: uint(&obj, "total_files_processed").unwrap_or(0),
            total_bytes_processed: uint(&obj, "total_bytes_processed").unwrap_or(0),
            total_duration: float(&obj, "total_duration").unwrap_or(0.0),
            snapshot_id: text(&obj, "snapshot_id").filter(|s| !s.is_empty()),
            backup_start: text(&obj, "backup_start"),
            backup_end: text(&obj, "backup_end"),
        }),
        "error" => Message::Error(item_error(&obj)),
        "verbose_status" => Message::VerboseStatus(VerboseStatus {
            action: text(&obj, "action").unwrap_or_default(),
            item: text(&obj, "item").unwrap_or_default(),
            duration: float(&obj, "duration").unwrap_or(0.0),
            data_size: uint(&obj, "data_size").unwrap_or(0),
        }),
        "exit_error" => Message::ExitError(exit_error(&obj)),
        _ => Message::Other { message_type },
    })
}

/// One line of `restic restore --json`.
#[derive(Debug, Clone, PartialEq)]
pub enum RestoreMessage {
    Status(RestoreStatus),
    Summary(RestoreSummary),
    /// A file or directory restic could not restore.
    Error(ItemError),
    ExitError(ExitError),
    Other {
        message_type: String,
    },
    Text(String),
}

/// `message_type: status` of a running restore (0.16+); fields missing when zero.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RestoreStatus {
    pub percent_done: f64,
    pub total_files: Option<u64>,
    pub files_restored: Option<u64>,
    pub files_skipped: Option<u64>,
    pub total_bytes: Option<u64>,
    pub bytes_restored: Option<u64>,
    pub bytes_skipped: Option<u64>,
    pub seconds_elapsed: Option<u64>,
}

/// `message_type: summary` of a finished restore (0.16+). "Files" counts every node restic
/// handled: files, directories and symlinks. Skipped ones were already identical on disk.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RestoreSummary {
    pub total_files: u64,
    pub files_restored: u64,
    pub files_skipped: u64,
    pub files_deleted: u64,
    pub total_bytes: u64,
    pub bytes_restored: u64,
    pub bytes_skipped: u64,
    pub seconds_elapsed: Option<u64>,
}

/// Parses one line of `restic restore` output; `None` for blank lines.
pub fn parse_restore_line(line: &str) -> Option<RestoreMessage> {
    let obj = match object(line)? {
        Ok(obj) => obj,
        Err(text) => return Some(RestoreMessage::Text(text)),
    };
    let message_type = text(&obj, "message_type").unwrap_or_default();
    Some(match message_type.as_str() {
        "status" => RestoreMessage::Status(RestoreStatus {
            percent_done: float(&obj, "percent_done").unwrap_or(0.0).clamp(0.0, 1.0),
            total_files: uint(&obj, "total_files"),
            files_restored: uint(&obj, "files_restored"),
            files_skipped: uint(&obj, "files_skipped"),
            total_bytes: uint(&obj, "total_bytes"),
            bytes_restored: uint(&obj, "bytes_restored"),
            bytes_skipped: uint(&obj, "bytes_skipped"),
            seconds_elapsed: uint(&obj, "seconds_elapsed"),
        }),
        "summary" => RestoreMessage::Summary(RestoreSummary {
            total_files: uint(&obj, "total_files").unwrap_or(0),
            files_restored: uint(&obj, "files_restored").unwrap_or(0),
            files_skipped: uint(&obj, "files_skipped").unwrap_or(0),
            files_deleted: uint(&obj, "files_deleted").unwrap_or(0),
            total_bytes: uint(&obj, "total_bytes").unwrap_or(0),
            bytes_restored: uint(&obj, "bytes_restored").unwrap_or(0),
            bytes_skipped: uint(&obj, "bytes_skipped").unwrap_or(0),
            seconds_elapsed: uint(&obj, "seconds_elapsed"),
        }),
        "error" => RestoreMessage::Error(item_error(&obj)),
        "exit_error" => RestoreMessage::ExitError(exit_error(&obj)),
        _ => RestoreMessage::Other { message_type },
    })
}

fn text(obj: &Map<String, Value>, key: &str) -> Option<String> {
    obj.get(key).and_then(Value::as_str).map(str::to_string)
}

fn uint(obj: &Map<String, Value>, key: &str) -> Option<u64> {
    let v = obj.get(key)?;
    v.as_u64().or_else(|| v.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64))
}

fn float(obj: &Map<String, Value>, key: &str) -> Option<f64> {
    obj.get(key).and_then(Value::as_f64).filter(|f| f.is_finite())
}

fn strings(obj: &Map<String, Value>, key: &str) -> Vec<String> {
    match obj.get(key) {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

/// Readable text of restic's `error` field in any version's shape.
fn describe_error(err: &Value) -> Option<String> {
    match err {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(obj) if obj.is_empty() => None,
        Value::Object(obj) => {
            if let Some(message) = text(obj, "message").filter(|m| !m.is_empty()) {
                return Some(message);
            }
            // Go's *fs.PathError / *os.SyscallError, as 0.14 marshals them.
            let op = text(obj, "Op").or_else(|| text(obj, "Syscall"));
            let path = text(obj, "Path");
            let cause = obj.get("Err").and_then(|e| match e {
                Value::Number(n) => n.as_i64().map(errno_text),
                other => describe_error(other),
            });
            if op.is_some() || cause.is_some() {
                let head = [op, path].into_iter().flatten().collect::<Vec<_>>().join(" ");
                return Some(match (head.is_empty(), cause) {
                    (false, Some(c)) => format!("{head}: {c}"),
                    (true, Some(c)) => c,
                    (_, None) => head,
                });
            }
            let compact = Value::Object(obj.clone()).to_string();
            Some(compact.chars().take(200).collect())
        }
        _ => None,
    }
}

/// Linux errno text for the codes restic reports on unreadable files.
fn errno_text(code: i64) -> String {
    let text = match code {
        1 => "operation not permitted",
        2 => "no such file or directory",
        5 => "input/output error",
        13 => "permission denied",
        20 => "not a directory",
        21 => "is a directory",
        24 => "too many open files",
        36 => "file name too long",
        40 => "too many levels of symbolic links",
        61 => "no data available",
        95 => "operation not supported",
        116 => "stale file handle",
        _ => return format!("errno {code}"),
    };
    text.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real lines, captured from `restic 0.18.0 backup --json` (stdout and stderr).
    const V018_STATUS: &str = r#"{"message_type":"status","percent_done":0.6666633333499999,"total_files":4,"files_done":1,"total_bytes":600003,"bytes_done":400000,"current_files":["/f3","/sub/g"]}"#;
    const V018_SUMMARY: &str = r#"{"message_type":"summary","files_new":4,"files_changed":0,"files_unmodified":0,"dirs_new":1,"dirs_changed":0,"dirs_unmodified":0,"data_blobs":4,"tree_blobs":2,"data_added":601739,"data_added_packed":601143,"total_files_processed":4,"total_bytes_processed":600003,"total_duration":0.622683895,"backup_start":"2026-11-21T08:41:04.894178886Z","backup_end":"2026-11-21T08:41:05.516862801Z","snapshot_id":"38deac329419ed8e794ea924795ea948df667cb05e941a4522ee1e885ff54b95"}"#;
    const V018_ERROR_FILE: &str = r#"{"message_type":"error","error":{"message":"/tmp/rs/data/locked: open locked: permission denied"},"during":"archival","item":"/tmp/rs/data/locked"}"#;
    const V018_ERROR_DIR: &str = r#"{"message_type":"error","error":{"message":"openfile for readdirnames failed: open lockeddir: permission denied"},"during":"archival","item":"lockeddir"}"#;
    const V018_EXIT_3: &str =
        r#"{"message_type":"exit_error","code":3,"message":"Warning: at least one source file could not be read"}"#;
    const V018_EXIT_12: &str =
        r#"{"message_type":"exit_error","code":12,"message":"Fatal: wrong password or no key found"}"#;

    // Real lines, captured from `restic 0.14.0 backup --json` (Debian 12), matching its
    // documented format: zero fields omitted, short snapshot id, Go error values.
    const V014_STATUS_FIRST: &str =
        r#"{"message_type":"status","percent_done":0,"total_files":1,"total_bytes":200000}"#;
    const V014_STATUS_SPARSE: &str = r#"{"message_type":"status","percent_done":0,"files_done":1}"#;
    const V014_SUMMARY: &str = r#"{"message_type":"summary","files_new":4,"files_changed":0,"files_unmodified":0,"dirs_new":1,"dirs_changed":0,"dirs_unmodified":0,"data_blobs":4,"tree_blobs":2,"data_added":601739,"total_files_processed":4,"total_bytes_processed":600003,"total_duration":0.22289274,"snapshot_id":"05ae74ee"}"#;
    const V014_ERROR_PATH: &str = r#"{"message_type":"error","error":{"Op":"open","Path":"locked","Err":13},"during":"archival","item":"/tmp/rs/data/locked"}"#;
    const V014_ERROR_EMPTY: &str =
        r#"{"message_type":"error","error":{},"during":"scan","item":"/tmp/rs/data/lockeddir"}"#;
    const V014_WARNING_TEXT: &str = "Warning: at least one source file could not be read";

    #[test]
    fn status_018() {
        let Some(Message::Status(s)) = parse_line(V018_STATUS) else { panic!() };
        assert!((s.percent_done - 0.6667).abs() < 1e-3);
        assert_eq!(
            (s.total_files, s.files_done, s.total_bytes, s.bytes_done),
            (Some(4), Some(1), Some(600003), Some(400000))
        );
        assert_eq!(s.seconds_elapsed, None);
        assert_eq!(s.current_files, vec!["/f3", "/sub/g"]);
    }

    #[test]
    fn status_with_every_field() {
        let line = r#"{"message_type":"status","seconds_elapsed":12,"seconds_remaining":30,"percent_done":0.25,"total_files":100,"files_done":25,"total_bytes":4000,"bytes_done":1000,"error_count":2,"current_files":["/a"],"future_field":{"x":1}}"#;
        let Some(Message::Status(s)) = parse_line(line) else { panic!() };
        assert_eq!((s.seconds_elapsed, s.seconds_remaining, s.error_count), (Some(12), Some(30), Some(2)));
    }

    #[test]
    fn status_014_with_missing_fields() {
        let Some(Message::Status(s)) = parse_line(V014_STATUS_FIRST) else { panic!() };
        assert_eq!(s.percent_done, 0.0);
        assert_eq!((s.total_files, s.files_done, s.bytes_done), (Some(1), None, None));
        let Some(Message::Status(s)) = parse_line(V014_STATUS_SPARSE) else { panic!() };
        assert_eq!((s.total_files, s.files_done), (None, Some(1)));
    }

    #[test]
    fn summary_018() {
        let Some(Message::Summary(s)) = parse_line(V018_SUMMARY) else { panic!() };
        assert_eq!((s.files_new, s.total_files_processed, s.data_added), (4, 4, 601739));
        assert_eq!(s.data_added_packed, Some(601143));
        assert_eq!(s.total_bytes_processed, 600003);
        assert_eq!(s.snapshot_id.as_deref().map(str::len), Some(64));
        assert_eq!(s.backup_start.as_deref(), Some("2026-11-21T08:41:04.894178886Z"));
    }

    #[test]
    fn summary_014_short_id_no_new_fields() {
        let Some(Message::Summary(s)) = parse_line(V014_SUMMARY) else { panic!() };
        assert_eq!(s.snapshot_id.as_deref(), Some("05ae74ee"));
        assert_eq!((s.data_added_packed, s.backup_start), (None, None));
        assert!((s.total_duration - 0.2229).abs() < 1e-3);
    }

    #[test]
    fn errors_of_both_versions() {
        let Some(Message::Error(e)) = parse_line(V018_ERROR_FILE) else { panic!() };
        assert_eq!(e.message.as_deref(), Some("/tmp/rs/data/locked: open locked: permission denied"));
        assert_eq!((e.during.as_str(), e.item.as_str()), ("archival", "/tmp/rs/data/locked"));
        let Some(Message::Error(e)) = parse_line(V018_ERROR_DIR) else { panic!() };
        assert_eq!(e.item, "lockeddir");
        let Some(Message::Error(e)) = parse_line(V014_ERROR_PATH) else { panic!() };
        assert_eq!(e.message.as_deref(), Some("open locked: permission denied"));
        let Some(Message::Error(e)) = parse_line(V014_ERROR_EMPTY) else { panic!() };
        assert_eq!(e.message, None);
        assert_eq!((e.during.as_str(), e.item.as_str()), ("scan", "/tmp/rs/data/lockeddir"));
    }

    #[test]
    fn odd_error_shapes() {
        let e = |line: &str| match parse_line(line) {
            Some(Message::Error(e)) => e.message,
            other => panic!("{other:?}"),
        };
        assert_eq!(e(r#"{"message_type":"error","error":"plain","item":"x"}"#).as_deref(), Some("plain"));
        assert_eq!(
            e(r#"{"message_type":"error","error":{"Syscall":"lstat","Err":2}}"#).as_deref(),
            Some("lstat: no such file or directory")
        );
        assert_eq!(
            e(r#"{"message_type":"error","error":{"Op":"read","Path":"/x","Err":999}}"#).as_deref(),
            Some("read /x: errno 999")
        );
        assert_eq!(e(r#"{"message_type":"error","error":{"weird":[1]}}"#).as_deref(), Some(r#"{"weird":[1]}"#));
        assert_eq!(e(r#"{"message_type":"error","error":null}"#), None);
        assert_eq!(e(r#"{"message_type":"error"}"#), None);
    }

    #[test]
    fn exit_errors() {
        assert_eq!(
            parse_line(V018_EXIT_3),
            Some(Message::ExitError(ExitError {
                code: Some(3),
                message: "Warning: at least one source file could not be read".into()
            }))
        );
        let Some(Message::ExitError(e)) = parse_line(V018_EXIT_12) else { panic!() };
        assert_eq!(e.code, Some(12));
    }

    #[test]
    fn verbose_status() {
        let line = r#"{"message_type":"verbose_status","action":"new","item":"/f1","duration":0.01,"data_size":200000,"metadata_size":0,"total_files":1}"#;
        let Some(Message::VerboseStatus(v)) = parse_line(line) else { panic!() };
        assert_eq!((v.action.as_str(), v.item.as_str(), v.data_size), ("new", "/f1", 200000));
    }

    #[test]
    fn text_unknown_and_garbage() {
        assert_eq!(parse_line(V014_WARNING_TEXT), Some(Message::Text(V014_WARNING_TEXT.into())));
        assert_eq!(parse_line(""), None);
        assert_eq!(parse_line("  \r\n"), None);
        assert_eq!(
            parse_line(r#"{"message_type":"initialized","id":"55869f35","repository":"j"}"#),
            Some(Message::Other { message_type: "initialized".into() })
        );
        for junk in [
            "[1,2]",
            "{",
            "null",
            "{\"message_type\":5}",
            "{\"message_type\":\"status\",\"percent_done\":\"x\",\"total_files\":-3,\"files_done\":1e300}",
            "{\"message_type\":\"summary\",\"snapshot_id\":7,\"total_duration\":\"NaN\"}",
            "\u{0}\u{1}",
        ] {
            let _ = parse_line(junk);
        }
        let Some(Message::Status(s)) =
            parse_line(r#"{"message_type":"status","percent_done":7,"total_files":-3,"files_done":2.9}"#)
        else {
            panic!()
        };
        assert_eq!((s.percent_done, s.total_files, s.files_done), (1.0, None, Some(2)));
    }

    // Real lines of `restic 0.18.0 restore --json`: a first restore, a second one into the same
    // directory (identical files skipped), a status line, and the errors of a restore over a
    // non-empty directory of the same name.
    const V018_RESTORE_SUMMARY: &str =
        r#"{"message_type":"summary","total_files":5,"files_restored":5,"total_bytes":100003,"bytes_restored":100003}"#;
    const V018_RESTORE_AGAIN: &str =
        r#"{"message_type":"summary","total_files":3,"files_restored":3,"files_skipped":2,"bytes_skipped":100003}"#;
    const V018_RESTORE_STATUS: &str = r#"{"message_type":"status","percent_done":0.465682725,"total_files":1,"total_bytes":200000000,"bytes_restored":93136545}"#;
    const V018_RESTORE_ERROR: &str = r#"{"message_type":"error","error":{"message":"remove /tmp/rt/t3/a: directory not empty"},"during":"restore","item":"/a"}"#;
    const V018_RESTORE_EXIT: &str =
        r#"{"message_type":"exit_error","code":1,"message":"Fatal: There were 1 errors\n"}"#;

    #[test]
    fn restore_lines_018() {
        let Some(RestoreMessage::Summary(s)) = parse_restore_line(V018_RESTORE_SUMMARY) else { panic!() };
        assert_eq!((s.total_files, s.files_restored, s.files_skipped), (5, 5, 0));
        assert_eq!((s.total_bytes, s.bytes_restored, s.bytes_skipped), (100003, 100003, 0));
        let Some(RestoreMessage::Summary(s)) = parse_restore_line(V018_RESTORE_AGAIN) else { panic!() };
        assert_eq!((s.files_restored, s.files_skipped, s.bytes_restored, s.bytes_skipped), (3, 2, 0, 100003));
        let Some(RestoreMessage::Status(st)) = parse_restore_line(V018_RESTORE_STATUS) else { panic!() };
        assert_eq!((st.total_bytes, st.bytes_restored, st.files_restored), (Some(200000000), Some(93136545), None));
        assert!((st.percent_done - 0.4657).abs() < 1e-3);
        let Some(RestoreMessage::Error(e)) = parse_restore_line(V018_RESTORE_ERROR) else { panic!() };
        assert_eq!((e.item.as_str(), e.during.as_str()), ("/a", "restore"));
        assert_eq!(e.message.as_deref(), Some("remove /tmp/rt/t3/a: directory not empty"));
        let Some(RestoreMessage::ExitError(x)) = parse_restore_line(V018_RESTORE_EXIT) else { panic!() };
        assert_eq!(x.code, Some(1));
    }

    #[test]
    fn restore_lines_014_are_text() {
        let line = "restoring <Snapshot e3b9fd97 of [/tmp/rt/src] at 2026-11-21 09:07:23 +0000 UTC by root@vm> to /t";
        assert_eq!(parse_restore_line(line), Some(RestoreMessage::Text(line.into())));
        assert_eq!(parse_restore_line("\n"), None);
        // A backup summary line is not mistaken for anything but a (restore) summary with no counts.
        let Some(RestoreMessage::Summary(s)) = parse_restore_line(r#"{"message_type":"summary","files_new":4}"#) else {
            panic!()
        };
        assert_eq!(s, RestoreSummary::default());
    }
}
