//! `restic snapshots --json`: the snapshot list (same shape in 0.14 and 0.18, which adds
//! `summary` and `program_version`) and the filters Coracle selects snapshots by.

use crate::tags;
use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: String,
    #[serde(default)]
    pub short_id: Option<String>,
    /// restic writes local time with an offset; kept as written.
    pub time: DateTime<FixedOffset>,
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub tree: Option<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub program_version: Option<String>,
    /// The backup's figures, stored with the snapshot since restic 0.17; `None` before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<SnapshotSummary>,
}

/// The `summary` restic 0.17+ keeps in each snapshot: the same figures `backup --json` printed
/// at the end of the run, so a lost backup record can get its statistics back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotSummary {
    #[serde(default)]
    pub backup_start: Option<DateTime<FixedOffset>>,
    #[serde(default)]
    pub backup_end: Option<DateTime<FixedOffset>>,
    #[serde(default)]
    pub files_new: u64,
    #[serde(default)]
    pub files_changed: u64,
    #[serde(default)]
    pub files_unmodified: u64,
    #[serde(default)]
    pub total_files_processed: u64,
    #[serde(default)]
    pub data_added: u64,
    #[serde(default)]
    pub total_bytes_processed: u64,
}

impl SnapshotSummary {
    /// Seconds from `backup_start` to `backup_end`, when both are known.
    pub fn duration_seconds(&self) -> Option<f64> {
        let (start, end) = (self.backup_start?, self.backup_end?);
        (end - start).to_std().ok().map(|d| d.as_secs_f64())
    }
}

impl Snapshot {
    /// Value of a `key=value` tag.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.iter().filter_map(|t| tags::parse_tag(t)).find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

/// Which snapshots to list. All given tags must be present (one `--tag a,b` argument).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotFilter {
    pub host: Option<String>,
    pub tags: Vec<String>,
    /// Snapshot ids or id prefixes; empty lists all matching snapshots.
    pub ids: Vec<String>,
}

impl SnapshotFilter {
    pub fn new() -> Self {
        SnapshotFilter::default()
    }

    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Requires a `key=value` tag; the value is validated like every snapshot tag.
    pub fn tag(mut self, key: &str, value: &str) -> Result<Self, tags::TagError> {
        self.tags.push(tags::tag(key, value)?);
        Ok(self)
    }

    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.ids.push(id.into());
        self
    }

    /// Arguments after `snapshots --json`.
    pub fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(host) = &self.host {
            args.extend(["--host".to_string(), host.clone()]);
        }
        if !self.tags.is_empty() {
            args.extend(["--tag".to_string(), self.tags.join(",")]);
        }
        if !self.ids.is_empty() {
            // `--` so an id can never be read as a flag.
            args.push("--".to_string());
            args.extend(self.ids.iter().cloned());
        }
        args
    }
}

/// A full restic snapshot id: 64 hex digits (never a prefix, never anything restic could read as a flag).
pub fn is_snapshot_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parses `restic snapshots --json` output (`null` from old versions means none).
pub fn parse_snapshots(stdout: &str) -> Result<Vec<Snapshot>, serde_json::Error> {
    let list: Option<Vec<Snapshot>> = serde_json::from_str(stdout.trim())?;
    Ok(list.unwrap_or_default())
}

/// The newest snapshot (by time, ties broken by id for determinism).
pub fn newest(snapshots: Vec<Snapshot>) -> Option<Snapshot> {
    snapshots.into_iter().max_by(|a, b| a.time.cmp(&b.time).then_with(|| a.id.cmp(&b.id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real output of restic 0.18.0 (first entry) and 0.14.0 (second entry, no summary).
    const LIST: &str = r#"[{"time":"2026-11-21T08:41:04.894178886Z","tree":"cfaeb70a9592d20360d440bfa0271bbb3b0f2f6a8fc8a844ef5e2b30f0deec98","paths":["/tmp/rs/data"],"hostname":"ns1","username":"root","tags":["a=b","c=d"],"program_version":"restic 0.18.0","summary":{"backup_start":"2026-11-21T08:41:04.894178886Z","backup_end":"2026-11-21T08:41:05.516862801Z","files_new":4,"files_changed":0,"files_unmodified":0,"dirs_new":1,"dirs_changed":0,"dirs_unmodified":0,"data_blobs":4,"tree_blobs":2,"data_added":601739,"data_added_packed":601143,"total_files_processed":4,"total_bytes_processed":600003},"id":"38deac329419ed8e794ea924795ea948df667cb05e941a4522ee1e885ff54b95","short_id":"38deac32"},
        {"time":"2026-11-21T09:41:19.70018039+01:00","parent":"05ae74ee53a024fe5606c58ccbc9d3bd93f35c61c29fe6febaf455789e87f41d","tree":"cfaeb70a9592d20360d440bfa0271bbb3b0f2f6a8fc8a844ef5e2b30f0deec98","paths":["/tmp/rs/data"],"hostname":"ns1","username":"root","tags":["a=b"],"id":"d2d86cb6e25ec7a3440c6f46cf7ed0f417bc9e017a16d6c0d51817f10cdbaeec","short_id":"d2d86cb6"}]"#;

    #[test]
    fn parses_both_versions_and_picks_newest() {
        let list = parse_snapshots(LIST).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].tag("c"), Some("d"));
        assert_eq!(list[0].tag("x"), None);
        assert_eq!(list[1].parent.as_deref().map(str::len), Some(64));
        // The summary is 0.17+'s alone.
        let summary = list[0].summary.as_ref().expect("0.18 stores a summary");
        assert_eq!(
            (summary.files_new, summary.files_changed, summary.files_unmodified, summary.total_files_processed),
            (4, 0, 0, 4)
        );
        assert_eq!((summary.data_added, summary.total_bytes_processed), (601_739, 600_003));
        let duration = summary.duration_seconds().expect("start and end");
        assert!((duration - 0.622_683_915).abs() < 1e-6, "{duration}");
        assert_eq!(list[1].summary, None);
        // 09:41:19+01:00 is 08:41:19Z, after 08:41:04Z.
        assert_eq!(newest(list).map(|s| s.short_id), Some(Some("d2d86cb6".into())));
    }

    #[test]
    fn a_partial_summary_has_no_duration() {
        let list = parse_snapshots(
            r#"[{"id":"x","time":"2026-11-21T08:41:04Z","summary":{"backup_start":"2026-11-21T08:41:04Z","files_new":2,"some_future_field":1}}]"#,
        )
        .unwrap();
        let summary = list[0].summary.as_ref().expect("summary");
        assert_eq!((summary.files_new, summary.data_added), (2, 0));
        assert_eq!(summary.duration_seconds(), None);
    }

    #[test]
    fn empty_lists() {
        assert!(parse_snapshots("[]").unwrap().is_empty());
        assert!(parse_snapshots("null\n").unwrap().is_empty());
        assert!(parse_snapshots("Fatal: nope").is_err());
        assert_eq!(newest(Vec::new()), None);
    }

    #[test]
    fn snapshot_ids() {
        let full = "f".repeat(64);
        assert!(is_snapshot_id(&full));
        assert!(!is_snapshot_id("abc"));
        assert!(!is_snapshot_id(&format!("-{}", &full[1..])));
    }

    #[test]
    fn filter_args() {
        let f = SnapshotFilter::new().host("shop").tag("identity", "pvc:1").unwrap().tag("backup", "b").unwrap();
        assert_eq!(f.args(), ["--host", "shop", "--tag", "identity=pvc:1,backup=b"]);
        assert_eq!(SnapshotFilter::new().id("-rf").args(), ["--", "-rf"]);
        assert!(SnapshotFilter::new().tag("identity", "a,b").is_err());
    }
}
