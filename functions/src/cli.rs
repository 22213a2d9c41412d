//! What the CLI prints: plans, backup lists and backup records, as tables for people and as
//! JSON/YAML for machines.

use crate::jobs::backup_jobs;
use crate::plan_backup::plan_backup;
use crate::record::{BackupRecord, VolumeStatus};
use crate::snapshot::ClusterSnapshot;
use coracle_events::{BackupRef, BackupRequest};
use serde::Serialize;
use std::fmt::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Plan(#[from] crate::plan_backup::PlanError),
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("rendering output: {0}")]
    Render(String),
}

/// What `coracle plan backup -o json|yaml` prints.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PlanOutput {
    backup: BackupRef,
    volumes: Vec<coracle_events::PlannedVolume>,
    skipped: Vec<coracle_events::SkippedVolume>,
    jobs: Vec<String>,
}

fn offline_plan(
    request: &BackupRequest,
    snapshot: &ClusterSnapshot,
) -> Result<(PlanOutput, Vec<k8s_openapi::api::batch::v1::Job>), CliError> {
    let plan = plan_backup(request, snapshot)?;
    let backup = BackupRef {
        name: request.name.clone(),
        uid: request.uid.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
    };
    let timeout_text =
        request.volume_timeout.clone().unwrap_or_else(|| snapshot.settings.default_volume_timeout.clone());
    let timeout = crate::duration::parse_duration(&timeout_text)
        .map_err(|e| CliError::Invalid { what: format!("volumeTimeout {timeout_text:?}"), reason: e.to_string() })?;
    let ttl_text = request.ttl.clone().unwrap_or_else(|| snapshot.settings.default_ttl.clone());
    let ttl = crate::duration::parse_duration(&ttl_text)
        .map_err(|e| CliError::Invalid { what: format!("ttl {ttl_text:?}"), reason: e.to_string() })?;
    // The snapshots' `expires` tag, counted from now as plan-backup counts it from planning.
    let expires = chrono::Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::days(30));
    let jobs = backup_jobs(&backup, &plan.volumes, Some(expires), &Default::default(), timeout, &snapshot.settings);
    let names = jobs.iter().filter_map(|j| j.metadata.name.clone()).collect();
    Ok((PlanOutput { backup, volumes: plan.volumes, skipped: plan.skipped, jobs: names }, jobs))
}

pub fn plan_json(request: &BackupRequest, snapshot: &ClusterSnapshot) -> Result<String, CliError> {
    let (out, _) = offline_plan(request, snapshot)?;
    serde_json::to_string_pretty(&out).map(|s| s + "\n").map_err(|e| CliError::Render(e.to_string()))
}

pub fn plan_yaml(request: &BackupRequest, snapshot: &ClusterSnapshot) -> Result<String, CliError> {
    let (out, _) = offline_plan(request, snapshot)?;
    serde_yaml::to_string(&out).map_err(|e| CliError::Render(e.to_string()))
}

/// The Jobs as multi-document YAML for `kubectl apply -f -`.
pub fn plan_jobs_yaml(request: &BackupRequest, snapshot: &ClusterSnapshot) -> Result<String, CliError> {
    let (_, jobs) = offline_plan(request, snapshot)?;
    let mut out = String::new();
    for job in jobs {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&job).map_err(|e| CliError::Render(e.to_string()))?);
    }
    Ok(out)
}

fn render<T: Serialize>(value: &T, format: Format) -> Result<String, CliError> {
    match format {
        Format::Json => {
            serde_json::to_string_pretty(value).map(|s| s + "\n").map_err(|e| CliError::Render(e.to_string()))
        }
        Format::Yaml => serde_yaml::to_string(value).map_err(|e| CliError::Render(e.to_string())),
        Format::Table => Err(CliError::Render("no table form".into())),
    }
}

pub fn backups_list(records: &[BackupRecord], format: Format) -> Result<String, CliError> {
    if format != Format::Table {
        return render(&records, format);
    }
    let rows = records
        .iter()
        .map(|r| {
            let done = r.volumes.values().filter(|v| v.status.is_terminal()).count();
            vec![
                r.backup.name.clone(),
                format!("{:?}", r.phase),
                format!("{done}/{}", r.volumes.len()),
                r.started.format("%Y-%m-%d %H:%M:%S").to_string(),
                r.expires.format("%Y-%m-%d").to_string(),
            ]
        })
        .collect::<Vec<_>>();
    Ok(table(&["NAME", "PHASE", "VOLUMES", "STARTED", "EXPIRES"], &rows))
}

pub fn backup_describe(record: &BackupRecord, format: Format) -> Result<String, CliError> {
    if format != Format::Table {
        return render(record, format);
    }
    let mut out = String::new();
    let _ = writeln!(out, "Name:     {}", record.backup.name);
    let _ = writeln!(out, "UID:      {}", record.backup.uid);
    let _ = writeln!(out, "Phase:    {:?}", record.phase);
    let _ = writeln!(out, "Started:  {}", record.started.to_rfc3339());
    if let Some(f) = record.finished {
        let _ = writeln!(out, "Finished: {} ({}s)", f.to_rfc3339(), (f - record.started).num_seconds());
    }
    let _ = writeln!(out, "Expires:  {}", record.expires.to_rfc3339());
    let _ = writeln!(out, "Jobs:     {}\n", record.jobs.join(", "));
    let rows = record
        .volumes
        .iter()
        .map(|(key, v)| {
            let stats = v.stats.clone().unwrap_or_default();
            let note = match v.status {
                VolumeStatus::Failed => v.reason.clone().unwrap_or_default(),
                _ if !v.warnings.is_empty() => format!("{} warning(s): {}", v.warnings.len(), v.warnings.join("; ")),
                VolumeStatus::Pending if v.failed_attempts > 0 => {
                    format!("retrying after {} failure(s): {}", v.failed_attempts, v.reason.clone().unwrap_or_default())
                }
                _ => String::new(),
            };
            vec![
                key.clone(),
                v.volume.node.clone(),
                format!("{:?}", v.status),
                match v.snapshot_id.as_deref() {
                    Some("") => "(empty)".into(),
                    Some(id) => id.chars().take(8).collect(),
                    None => "-".into(),
                },
                stats.total_files.to_string(),
                human_bytes(stats.total_bytes),
                human_bytes(stats.bytes_added),
                format!("{:.1}s", stats.duration_seconds),
                note,
            ]
        })
        .collect::<Vec<_>>();
    out.push_str(&table(
        &["VOLUME", "NODE", "STATUS", "SNAPSHOT", "FILES", "SIZE", "ADDED", "DURATION", "NOTES"],
        &rows,
    ));
    if !record.skipped.is_empty() {
        out.push_str("\nSkipped:\n");
        let rows = record
            .skipped
            .iter()
            .map(|s| vec![format!("{}/{}/{}", s.namespace, s.pod, s.volume), s.reason.clone()])
            .collect::<Vec<_>>();
        out.push_str(&table(&["VOLUME", "REASON"], &rows));
    }
    Ok(out)
}

/// `coracle plan restore`: the pending entries and skips, as admission will match them.
pub fn restore_plan(
    request: &coracle_events::RestoreRequest,
    record: &BackupRecord,
    format: Format,
) -> Result<String, CliError> {
    let uid = request.uid.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let plan = crate::plan_restore::plan_restore(request, &uid, record)
        .map_err(|e| CliError::Invalid { what: format!("restore {}", request.name), reason: e.to_string() })?;
    if format != Format::Table {
        return render(&plan, format);
    }
    let rows = plan
        .entries
        .iter()
        .map(|e| {
            let target = match &e.target {
                coracle_events::RestoreTarget::Pvc { claim } => format!("pvc {claim}"),
                coracle_events::RestoreTarget::Workload { owner, volume } => format!("{owner} volume {volume}"),
            };
            vec![
                e.target_namespace.clone(),
                target,
                format!("{}/{}/{}", e.source_namespace, e.source_pod, e.source_volume),
                e.snapshot_id.chars().take(8).collect(),
            ]
        })
        .collect::<Vec<_>>();
    Ok(table(&["NAMESPACE", "TARGET", "FROM", "SNAPSHOT"], &rows))
}

pub fn restore_describe(record: &crate::restore_state::RestoreRecord, format: Format) -> Result<String, CliError> {
    if format != Format::Table {
        return render(record, format);
    }
    let mut out = String::new();
    let _ = writeln!(out, "Name:     {}", record.restore.name);
    let _ = writeln!(out, "UID:      {}", record.restore.uid);
    let _ = writeln!(out, "Backup:   {}", record.backup.name);
    let _ = writeln!(out, "Phase:    {:?}\n", record.phase);
    let rows = record
        .entries
        .iter()
        .map(|(key, e)| {
            let stats = e.stats.clone().unwrap_or_default();
            vec![
                key.clone(),
                format!("{:?}", e.state),
                e.pod.clone().unwrap_or_else(|| "-".into()),
                stats.files.to_string(),
                human_bytes(stats.bytes),
                e.reason.clone().unwrap_or_default(),
            ]
        })
        .collect::<Vec<_>>();
    out.push_str(&table(&["TARGET", "STATE", "POD", "FILES", "SIZE", "NOTES"], &rows));
    Ok(out)
}

/// A left-aligned text table with two spaces between columns, like kubectl's.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                let _ = write!(s, "{cell:<w$}  ", w = widths[i]);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_bytes_read_well() {
        let t = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()], vec!["q".into(), "22".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\nq    22\n");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
