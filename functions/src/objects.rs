//! A [`ClusterSnapshot`] from YAML: the `--objects` file of `coracle plan backup`.
//!
//! Takes what people actually have at hand: multi-document YAML (`---`), `kind: List` with
//! `items` (exactly what `kubectl get pods,pvc,pv,ns,rs -A -o yaml` prints), and typed lists
//! such as `PodList` whose items carry no `kind` (what the API server returns). It keeps Pods,
//! PersistentVolumeClaims, PersistentVolumes, Namespaces, ReplicaSets and Coracle's ConfigMap
//! `coracle-config`; every other kind (and a known kind from another API group) is ignored, so
//! a whole-cluster dump works. Errors name the document (1-based, in file order), the list item
//! and the object, because a dump can hold thousands of objects.

use crate::settings::{Settings, SettingsError, CONFIGMAP_NAME};
use crate::snapshot::ClusterSnapshot;
use k8s_openapi::api::core::v1::ConfigMap;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    InFile { path: PathBuf, source: Box<ObjectsError> },
    #[error("document {document}: invalid YAML: {source}")]
    Yaml { document: usize, source: serde_yaml::Error },
    #[error("{location} ({what}): {reason}")]
    Object { location: Location, what: String, reason: String },
    #[error("{location} (ConfigMap {namespace}/{CONFIGMAP_NAME}): {source}")]
    Settings { location: Location, namespace: String, source: SettingsError },
}

/// Where an object sits in the input: `document 3` or `document 1, items[41]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// 1-based document number.
    pub document: usize,
    /// Path of list indexes inside the document (lists may nest).
    pub items: Vec<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        for i in &self.items {
            write!(f, ", items[{i}]")?;
        }
        Ok(())
    }
}

/// Reads a snapshot from a file; errors are prefixed with the path.
pub fn load_snapshot(path: &Path) -> Result<ClusterSnapshot, ObjectsError> {
    let text = std::fs::read_to_string(path).map_err(|source| ObjectsError::Io { path: path.to_path_buf(), source })?;
    snapshot_from_yaml(&text).map_err(|e| ObjectsError::InFile { path: path.to_path_buf(), source: Box::new(e) })
}

/// Builds a snapshot from (multi-document) YAML of cluster objects. Without a `coracle-config`
/// ConfigMap the settings are the defaults.
pub fn snapshot_from_yaml(text: &str) -> Result<ClusterSnapshot, ObjectsError> {
    let mut collector = Collector::default();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let number = i + 1;
        let mut value =
            Value::deserialize(document).map_err(|source| ObjectsError::Yaml { document: number, source })?;
        value.apply_merge().map_err(|source| ObjectsError::Yaml { document: number, source })?;
        collector.add(value, Location { document: number, items: vec![] }, None)?;
    }
    collector.finish()
}

#[derive(Default)]
struct Collector {
    snapshot: ClusterSnapshot,
    /// Every `coracle-config` seen: (namespace, its data read as settings, where it was).
    configmaps: Vec<(String, Result<Settings, SettingsError>, Location)>,
}

impl Collector {
    /// `item_kind` is the kind implied by a typed list (`PodList` → `Pod`) for items without one.
    fn add(&mut self, value: Value, location: Location, item_kind: Option<&str>) -> Result<(), ObjectsError> {
        let object_error =
            |what: String, reason: String| ObjectsError::Object { location: location.clone(), what, reason };
        let map = match &value {
            Value::Null => return Ok(()), // an empty document, e.g. a trailing `---`
            Value::Mapping(map) => map,
            other => {
                return Err(object_error(
                    "not an object".into(),
                    format!("expected a mapping, found {}", yaml_kind(other)),
                ))
            }
        };
        let text = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_string);
        let Some(kind) = text("kind").or_else(|| item_kind.map(str::to_string)) else {
            return Err(object_error(describe(map, "object"), "has no kind".into()));
        };
        // A known kind from another API group is someone else's resource; a missing apiVersion
        // is tolerated for hand-written files.
        let api_version = text("apiVersion");
        let core = api_version.as_deref().is_none_or(|v| v == "v1");
        let apps = api_version.as_deref().is_none_or(|v| v == "apps/v1");

        if let Some(element_kind) = kind.strip_suffix("List") {
            let Some(items) = map.get("items") else {
                // A kind that merely ends in "List" without items is not a list; ignore it.
                return Ok(());
            };
            let Value::Sequence(items) = items else {
                return Err(object_error(kind.clone(), format!("items must be a list, found {}", yaml_kind(items))));
            };
            let implied = (!element_kind.is_empty()).then_some(element_kind);
            for (i, item) in items.iter().enumerate() {
                let mut item_location = location.clone();
                item_location.items.push(i);
                self.add(item.clone(), item_location, implied)?;
            }
            return Ok(());
        }

        match kind.as_str() {
            "Pod" if core => self.snapshot.pods.push(typed(value, &location, &kind)?),
            "PersistentVolumeClaim" if core => self.snapshot.pvcs.push(typed(value, &location, &kind)?),
            "PersistentVolume" if core => self.snapshot.pvs.push(typed(value, &location, &kind)?),
            "Namespace" if core => self.snapshot.namespaces.push(typed(value, &location, &kind)?),
            "ReplicaSet" if apps => self.snapshot.replica_sets.push(typed(value, &location, &kind)?),
            "ConfigMap" if core => {
                let configmap: ConfigMap = typed(value, &location, &kind)?;
                if configmap.metadata.name.as_deref() == Some(CONFIGMAP_NAME) {
                    let namespace = configmap.metadata.namespace.clone().unwrap_or_default();
                    let settings = Settings::from_configmap_data(&configmap.data.unwrap_or_default());
                    self.configmaps.push((namespace, settings, location));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Picks the ConfigMap in the namespace it itself names as Coracle's system namespace (a
    /// copy elsewhere, e.g. a leftover from an old install, loses), else the first one.
    fn finish(mut self) -> Result<ClusterSnapshot, ObjectsError> {
        let preferred = self
            .configmaps
            .iter()
            .position(|(ns, settings, _)| settings.as_ref().is_ok_and(|s| &s.system_namespace == ns));
        if let Some(index) = preferred.or(if self.configmaps.is_empty() { None } else { Some(0) }) {
            let (namespace, settings, location) = self.configmaps.swap_remove(index);
            self.snapshot.settings =
                settings.map_err(|source| ObjectsError::Settings { location, namespace, source })?;
        }
        Ok(self.snapshot)
    }
}

fn typed<T: DeserializeOwned>(value: Value, location: &Location, kind: &str) -> Result<T, ObjectsError> {
    let what = match &value {
        Value::Mapping(map) => describe(map, kind),
        _ => kind.to_string(),
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let reason = if path == "." { e.inner().to_string() } else { format!("{path}: {}", e.inner()) };
        ObjectsError::Object { location: location.clone(), what, reason }
    })
}

/// `Pod shop/web-0`, `PersistentVolume pv-1`, or just the kind when the object has no name.
fn describe(map: &serde_yaml::Mapping, kind: &str) -> String {
    let metadata = map.get("metadata");
    let field = |key: &str| metadata.and_then(|m| m.get(key)).and_then(Value::as_str);
    match (field("namespace"), field("name")) {
        (Some(ns), Some(name)) => format!("{kind} {ns}/{name}"),
        (None, Some(name)) => format!("{kind} {name}"),
        _ => format!("{kind} without a name"),
    }
}

fn yaml_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-0\n  namespace: shop\n  uid: 6f1c2b9e-1f3a-4c1e-9d7a-2b8f0e4a5c11\nspec:\n  containers: []\n";

    #[test]
    fn reads_documents_lists_and_typed_lists() {
        let text = format!(
            "{POD}---\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {{name: shop}}\n- apiVersion: v1\n  kind: Service\n  metadata: {{name: web}}\n---\napiVersion: v1\nkind: PersistentVolumeClaimList\nitems:\n- metadata: {{name: data, namespace: shop}}\n---\napiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {{name: web-5d4f, namespace: shop}}\n---\napiVersion: example.com/v1\nkind: Pod\nmetadata: {{name: not-core}}\n"
        );
        let s = snapshot_from_yaml(&text).expect("valid");
        assert_eq!(s.pods.len(), 1);
        assert_eq!(s.pods[0].metadata.uid.as_deref(), Some("6f1c2b9e-1f3a-4c1e-9d7a-2b8f0e4a5c11"));
        assert_eq!(s.namespaces.len(), 1);
        assert_eq!(s.pvcs[0].metadata.name.as_deref(), Some("data"));
        assert_eq!(s.replica_sets.len(), 1);
        assert_eq!(s.settings, Settings::default());
    }

    #[test]
    fn prefers_the_configmap_in_its_own_system_namespace() {
        let cm = |ns: &str, root: &str| {
            format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: coracle-config, namespace: {ns}}}\ndata:\n  kubeletRoot: {root}\n")
        };
        let text = format!("{}{}", cm("old", "/old"), cm("coracle-system", "/var/lib/k"));
        assert_eq!(snapshot_from_yaml(&text).expect("valid").settings.kubelet_root, "/var/lib/k");
        let only_other = cm("elsewhere", "/opt/k");
        assert_eq!(snapshot_from_yaml(&only_other).expect("valid").settings.kubelet_root, "/opt/k");
        let e = snapshot_from_yaml(&cm("coracle-system", "relative")).expect_err("bad settings");
        assert_eq!(
            e.to_string(),
            "document 1 (ConfigMap coracle-system/coracle-config): ConfigMap coracle-config: key kubeletRoot: must be an absolute path"
        );
    }

    #[test]
    fn errors_name_the_document_and_object() {
        let e =
            snapshot_from_yaml(&format!("{POD}---\nkind: Pod\nmetadata: {{name: broken, namespace: shop}}\nspec: 7\n"))
                .expect_err("bad pod");
        let text = e.to_string();
        assert_eq!(text, "document 2 (Pod shop/broken): spec: invalid type: integer `7`, expected PodSpec");
        let nested = "kind: Pod\nmetadata: {name: p, namespace: n}\nspec: {containers: [{name: c, volumeMounts: [{name: [x]}]}]}\n";
        assert_eq!(
            snapshot_from_yaml(nested).expect_err("bad mount").to_string(),
            "document 1 (Pod n/p): spec.containers[0].volumeMounts[0].name: invalid type: sequence, expected a string"
        );
        let e = snapshot_from_yaml("kind: List\nitems:\n- kind: Pod\n- metadata: {name: x}\n").expect_err("no kind");
        assert_eq!(e.to_string(), "document 1, items[1] (object x): has no kind");
        let e = snapshot_from_yaml("a: [1\n").expect_err("syntax");
        assert!(e.to_string().starts_with("document 1: invalid YAML"), "{e}");
        let e = snapshot_from_yaml("- just\n- a list\n").expect_err("not a mapping");
        assert_eq!(e.to_string(), "document 1 (not an object): expected a mapping, found a list");
    }

    #[test]
    fn load_snapshot_prefixes_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("objects.yaml");
        std::fs::write(&path, "kind: Pod\nspec: 1\n").expect("write");
        let e = load_snapshot(&path).expect_err("bad");
        assert!(e.to_string().starts_with(&format!("{}: document 1 (Pod without a name)", path.display())), "{e}");
        let e = load_snapshot(&dir.path().join("missing.yaml")).expect_err("missing");
        assert!(e.to_string().starts_with("cannot read "), "{e}");
    }
}
