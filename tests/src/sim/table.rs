//! Server-side printing (`meta.k8s.io/v1 Table`), which `kubectl get` asks for with
//! `Accept: application/json;as=Table;...`. Columns follow kubectl's for the common types.

use serde_json::{json, Value};

use super::resources::ResourceType;

/// `PartialObjectMetadata`: an object reduced to its metadata (kube's `list_metadata`, `watch_metadata`).
pub fn partial(object: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"]})
}

/// Whether the client asked for metadata only (`Accept: ...;as=PartialObjectMetadata[List];g=meta.k8s.io`).
pub fn metadata_only(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| first.contains("as=PartialObjectMetadata"))
}

/// Whether the client asked for a Table rendering.
pub fn wanted(accept: &str) -> bool {
    accept.split(',').any(|part| part.contains("as=Table"))
}

/// Kubernetes' short human duration (`45s`, `3m12s`, `5h`, `12d`).
fn human_age(created: &str) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(created) else { return "<unknown>".into() };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds().max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    match () {
        _ if secs < 120 => format!("{secs}s"),
        _ if m < 10 => format!("{m}m{}s", secs % 60),
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if d < 8 => format!("{d}d{}h", h % 24),
        _ if d < 730 => format!("{d}d"),
        _ => format!("{}y{}d", d / 365, d % 365),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "<none>".into(),
        Value::String(s) if s.is_empty() => "<none>".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn n(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn joined(v: &Value) -> String {
    match v.as_array() {
        Some(items) if !items.is_empty() => items.iter().map(s).collect::<Vec<_>>().join(","),
        _ => "<none>".into(),
    }
}

/// A column: (header, priority (1: only with `-o wide`), cell).
type Column = (&'static str, u8, fn(&Value) -> Value);

fn columns(res: &ResourceType) -> Vec<Column> {
    match res.plural {
        "pods" => vec![
            ("Ready", 0, |o| {
                let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
                let ready = o["status"]["containerStatuses"]
                    .as_array()
                    .map_or(0, |c| c.iter().filter(|c| c["ready"] == true).count());
                json!(format!("{ready}/{total}"))
            }),
            ("Status", 0, |o| {
                if o["metadata"].get("deletionTimestamp").is_some() {
                    json!("Terminating")
                } else {
                    json!(s(&o["status"]["phase"]))
                }
            }),
            ("Restarts", 0, |o| {
                json!(o["status"]["containerStatuses"]
                    .as_array()
                    .map_or(0, |c| c.iter().map(|c| n(&c["restartCount"])).sum::<i64>()))
            }),
            ("IP", 1, |o| json!(s(&o["status"]["podIP"]))),
            ("Node", 1, |o| json!(s(&o["spec"]["nodeName"]))),
        ],
        "persistentvolumeclaims" => vec![
            ("Status", 0, |o| json!(s(&o["status"]["phase"]))),
            ("Volume", 0, |o| json!(o["spec"]["volumeName"].as_str().unwrap_or_default())),
            ("Capacity", 0, |o| json!(o["status"]["capacity"]["storage"].as_str().unwrap_or_default())),
            ("Access Modes", 0, |o| json!(joined(&o["status"]["accessModes"]))),
            ("StorageClass", 0, |o| json!(s(&o["spec"]["storageClassName"]))),
        ],
        "persistentvolumes" => vec![
            ("Capacity", 0, |o| json!(s(&o["spec"]["capacity"]["storage"]))),
            ("Access Modes", 0, |o| json!(joined(&o["spec"]["accessModes"]))),
            ("Reclaim Policy", 0, |o| json!(s(&o["spec"]["persistentVolumeReclaimPolicy"]))),
            ("Status", 0, |o| json!(s(&o["status"]["phase"]))),
            ("Claim", 0, |o| {
                let claim = &o["spec"]["claimRef"];
                json!(claim["name"].as_str().map_or(String::new(), |n| format!("{}/{n}", s(&claim["namespace"]))))
            }),
            ("StorageClass", 0, |o| json!(s(&o["spec"]["storageClassName"]))),
        ],
        "namespaces" => vec![("Status", 0, |o| json!(s(&o["status"]["phase"])))],
        "nodes" => vec![("Status", 0, |o| {
            let ready = o["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .map(|c| c["status"] == "True");
            json!(match ready {
                Some(true) => "Ready",
                Some(false) => "NotReady",
                None => "Unknown",
            })
        })],
        "deployments" => vec![
            ("Ready", 0, |o| json!(format!("{}/{}", n(&o["status"]["readyReplicas"]), n(&o["spec"]["replicas"])))),
            ("Up-to-date", 0, |o| json!(n(&o["status"]["updatedReplicas"]))),
            ("Available", 0, |o| json!(n(&o["status"]["availableReplicas"]))),
        ],
        "statefulsets" => {
            vec![("Ready", 0, |o| json!(format!("{}/{}", n(&o["status"]["readyReplicas"]), n(&o["spec"]["replicas"]))))]
        }
        "jobs" => vec![
            ("Status", 0, |o| {
                let done = |t: &str| {
                    o["status"]["conditions"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c["type"] == t && c["status"] == "True"))
                };
                json!(if done("Complete") {
                    "Complete"
                } else if done("Failed") {
                    "Failed"
                } else {
                    "Running"
                })
            }),
            ("Completions", 0, |o| {
                json!(format!("{}/{}", n(&o["status"]["succeeded"]), o["spec"]["completions"].as_i64().unwrap_or(1)))
            }),
        ],
        "configmaps" => vec![("Data", 0, |o| json!(o["data"].as_object().map_or(0, |d| d.len())))],
        "secrets" => vec![
            ("Type", 0, |o| json!(s(&o["type"]))),
            ("Data", 0, |o| json!(o["data"].as_object().map_or(0, |d| d.len()))),
        ],
        _ => Vec::new(),
    }
}

/// A Table of `objects`; `with_definitions` is false for watch events after the first, as a real server
/// sends column definitions once per watch. `include_object` is the `includeObject` query parameter.
pub fn render(
    res: &ResourceType,
    objects: &[Value],
    list_meta: Value,
    with_definitions: bool,
    include_object: &str,
) -> Value {
    // kubectl prints columns in definition order: name, the default ones, age, then the `-o wide` ones.
    let (main, wide): (Vec<Column>, Vec<Column>) = columns(res).into_iter().partition(|(_, p, _)| *p == 0);
    let age: Column = ("Age", 0, |o| json!(human_age(o["metadata"]["creationTimestamp"].as_str().unwrap_or_default())));
    let name: Column = ("Name", 0, |o| o["metadata"]["name"].clone());
    let cols: Vec<Column> = [name].into_iter().chain(main).chain([age]).chain(wide).collect();
    let defs: Vec<Value> = cols
        .iter()
        .map(|(h, p, _)| {
            let format = if *h == "Name" { "name" } else { "" };
            json!({"name": h, "type": "string", "format": format, "description": h, "priority": p})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let cells: Vec<Value> = cols.iter().map(|(_, _, f)| f(o)).collect();
            let object = match include_object {
                "None" => Value::Null,
                "Object" => o.clone(),
                _ => {
                    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})
                }
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    let mut table = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "rows": rows});
    if with_definitions {
        table["columnDefinitions"] = json!(defs);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::resources::find;

    #[test]
    fn renders_pod_columns() {
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": chrono::Utc::now().to_rfc3339()},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "containerStatuses": [{"ready": true, "restartCount": 2}, {"ready": false, "restartCount": 1}]}});
        let table = render(find("pods").expect("pods"), &[pod], json!({}), true, "Metadata");
        assert_eq!(table["rows"][0]["cells"], json!(["p", "1/2", "Running", 3, "0s", "<none>", "n1"]));
        assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(table["columnDefinitions"].as_array().map(Vec::len), Some(7));
        assert!(wanted("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"));
        assert!(!wanted("application/json"));
    }

    #[test]
    fn ages() {
        let ago = |secs: i64| human_age(&(chrono::Utc::now() - chrono::Duration::seconds(secs)).to_rfc3339());
        assert_eq!(ago(30), "30s");
        assert_eq!(ago(190), "3m10s");
        assert_eq!(ago(3600 * 5 + 60), "5h1m");
        assert_eq!(ago(86400 * 3), "3d0h");
        assert_eq!(human_age("garbage"), "<unknown>");
    }
}
