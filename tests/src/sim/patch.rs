//! The PATCH content types: JSON merge patch, strategic merge patch (approximated), JSON patch, and
//! server-side apply (approximated as a strategic merge without field ownership).

use serde_json::{Map, Value};

use super::errors::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Strategic,
    Json,
    Apply,
}

impl PatchKind {
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let mime = content_type.split(';').next().unwrap_or("").trim();
        match mime {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/json-patch+json" => Some(Self::Json),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// Parses a patch body of this kind (apply patches are YAML, which includes JSON).
pub fn parse_body(kind: PatchKind, body: &[u8]) -> Result<Value, ApiError> {
    match kind {
        PatchKind::Apply => {
            let yaml: serde_yaml::Value = serde_yaml::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding apply patch YAML: {e}")))?;
            serde_json::to_value(yaml)
                .map_err(|e| ApiError::bad_request(format!("apply patch is not a JSON object: {e}")))
        }
        _ => serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}"))),
    }
}

/// Applies a parsed patch to `target` in place.
pub fn apply(kind: PatchKind, target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    match kind {
        PatchKind::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            json_patch::merge(target, patch);
        }
        PatchKind::Strategic | PatchKind::Apply => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("a strategic merge patch must be a JSON object"));
            }
            strategic_merge(target, patch);
        }
        PatchKind::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("error decoding JSON patch: {e}")))?;
            json_patch::patch(target, &ops)
                .map_err(|e| ApiError::new(422, "Invalid", format!("the JSON patch could not be applied: {e}")))?;
        }
    }
    Ok(())
}

/// The key lists of objects are merged by, keyed by the field that holds the list. This approximates the
/// `patchMergeKey` tags of the built-in types; other lists are replaced, as in a merge patch.
fn merge_key(field: &str, element: &Value) -> Option<&'static str> {
    match field {
        "containers" | "initContainers" | "ephemeralContainers" | "volumes" | "env" | "imagePullSecrets" => {
            Some("name")
        }
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        "hostAliases" => Some("ip"),
        // Container ports merge by containerPort, Service ports by port.
        "ports" if element.get("containerPort").is_some() => Some("containerPort"),
        "ports" if element.get("port").is_some() => Some("port"),
        _ => None,
    }
}

/// Lists of strings merged as sets.
fn is_primitive_set(field: &str) -> bool {
    field == "finalizers"
}

/// Removes `$`-directives (`$patch`, `$setElementOrder/..`, `$retainKeys`, ...) from a value being inserted.
fn strip_directives(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), strip_directives(v))).collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// A strategic merge patch: a JSON merge patch, except that lists of objects with a merge key are merged
/// element by element (`$patch: delete` removes one), `finalizers` merge as a set, and directives kubectl
/// sends (`$setElementOrder/..`, `$retainKeys`, `$deleteFromPrimitiveList/..`) are honoured or ignored.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = strip_directives(patch);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target_map) = target else { return };
    for (k, v) in patch_map {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(have)), Value::Array(remove)) = (target_map.get_mut(field), v) {
                have.retain(|item| !remove.contains(item));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        match v {
            Value::Null => {
                target_map.remove(k);
            }
            Value::Array(items) => {
                let key = items.iter().find_map(|e| merge_key(k, e));
                match (key, target_map.get_mut(k)) {
                    (Some(key), Some(Value::Array(have))) => merge_list(have, items, key),
                    (None, Some(Value::Array(have))) if is_primitive_set(k) => {
                        for item in items {
                            if !have.contains(item) {
                                have.push(item.clone());
                            }
                        }
                    }
                    _ => {
                        let kept: Vec<Value> = items
                            .iter()
                            .filter(|e| e.get("$patch").and_then(Value::as_str) != Some("delete"))
                            .map(strip_directives)
                            .collect();
                        target_map.insert(k.clone(), Value::Array(kept));
                    }
                }
            }
            Value::Object(_) => strategic_merge(target_map.entry(k.clone()).or_insert(Value::Null), v),
            other => {
                target_map.insert(k.clone(), other.clone());
            }
        }
    }
    if let Some(Value::Array(retain)) = patch_map.get("$retainKeys") {
        target_map.retain(|k, _| retain.iter().any(|r| r.as_str() == Some(k)));
    }
}

fn merge_list(have: &mut Vec<Value>, patch: &[Value], key: &str) {
    if patch.iter().any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace")) {
        *have = patch.iter().filter(|e| e.get("$patch").is_none()).map(strip_directives).collect();
        return;
    }
    for element in patch {
        let Some(id) = element.get(key) else {
            have.push(strip_directives(element));
            continue;
        };
        let existing = have.iter().position(|h| h.get(key) == Some(id));
        if element.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(i) = existing {
                have.remove(i);
            }
            continue;
        }
        match existing {
            Some(i) => strategic_merge(&mut have[i], element),
            None => have.push(strip_directives(element)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}]},
            {"name": "side", "image": "side:1"}
        ], "tolerations": [{"key": "a"}]}});
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "app"}, {"name": "side"}],
            "containers": [
                {"name": "app", "image": "app:2", "env": [{"name": "B", "value": "2"}]},
                {"name": "side", "$patch": "delete"},
                {"name": "new", "image": "new:1"}
            ],
            "tolerations": [{"key": "b"}]
        }});
        strategic_merge(&mut pod, &patch);
        assert_eq!(
            pod,
            json!({"spec": {"containers": [
                {"name": "app", "image": "app:2", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                {"name": "new", "image": "new:1"}
            ], "tolerations": [{"key": "b"}]}})
        );
    }

    #[test]
    fn strategic_merge_null_deletes_and_finalizers_union() {
        let mut obj = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]}});
        strategic_merge(&mut obj, &json!({"metadata": {"labels": {"a": null, "c": "3"}, "finalizers": ["y", "x"]}}));
        assert_eq!(obj, json!({"metadata": {"labels": {"b": "2", "c": "3"}, "finalizers": ["x", "y"]}}));
        strategic_merge(&mut obj, &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}}));
        assert_eq!(obj["metadata"]["finalizers"], json!(["y"]));
    }

    #[test]
    fn json_patch_and_merge_patch() {
        let mut obj = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 1}});
        apply(PatchKind::Json, &mut obj, &json!([{"op": "replace", "path": "/spec/replicas", "value": 3}]))
            .expect("json patch");
        apply(PatchKind::Merge, &mut obj, &json!({"metadata": {"labels": {"a": null}}})).expect("merge patch");
        assert_eq!(obj, json!({"metadata": {"labels": {}}, "spec": {"replicas": 3}}));
        let failed = apply(PatchKind::Json, &mut obj, &json!([{"op": "remove", "path": "/nope"}]));
        assert_eq!(failed.map_err(|e| e.code), Err(422));
        assert_eq!(apply(PatchKind::Json, &mut obj, &json!({"op": "x"})).map_err(|e| e.code), Err(400));
        assert_eq!(apply(PatchKind::Merge, &mut obj, &json!([1])).map_err(|e| e.code), Err(400));
    }

    #[test]
    fn content_types() {
        assert_eq!(PatchKind::from_content_type("application/merge-patch+json; charset=utf-8"), Some(PatchKind::Merge));
        assert_eq!(PatchKind::from_content_type("application/apply-patch+yaml"), Some(PatchKind::Apply));
        assert_eq!(PatchKind::from_content_type("application/json"), None);
        assert!(parse_body(PatchKind::Apply, b"metadata:\n  name: x\n").is_ok());
        assert!(parse_body(PatchKind::Merge, b"{nope").is_err());
    }
}
