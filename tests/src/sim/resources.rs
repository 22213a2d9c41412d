//! The resource types the simulated API server knows, and the discovery documents built from them.

use serde_json::{json, Value};

/// One served resource type. Adding a resource to the simulation is one entry in [`RESOURCES`].
#[derive(Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// Lower-case plural used in URLs (`pods`).
    pub plural: &'static str,
    pub namespaced: bool,
    /// Whether the type has a `/status` subresource (its main endpoint then ignores status changes).
    pub status: bool,
    pub short_names: &'static [&'static str],
}

const NS: bool = true;
const CLUSTER: bool = false;
const STATUS: bool = true;
const NO_STATUS: bool = false;

const fn res(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    status: bool,
    short_names: &'static [&'static str],
) -> ResourceType {
    ResourceType { group, version, kind, plural, namespaced, status, short_names }
}

/// Every resource the simulation serves.
pub static RESOURCES: &[ResourceType] = &[
    res("", "v1", "Namespace", "namespaces", CLUSTER, STATUS, &["ns"]),
    res("", "v1", "Node", "nodes", CLUSTER, STATUS, &["no"]),
    res("", "v1", "PersistentVolume", "persistentvolumes", CLUSTER, STATUS, &["pv"]),
    res("", "v1", "Pod", "pods", NS, STATUS, &["po"]),
    res("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", NS, STATUS, &["pvc"]),
    res("", "v1", "Secret", "secrets", NS, NO_STATUS, &[]),
    res("", "v1", "ConfigMap", "configmaps", NS, NO_STATUS, &["cm"]),
    res("", "v1", "Event", "events", NS, NO_STATUS, &["ev"]),
    res("", "v1", "Service", "services", NS, STATUS, &["svc"]),
    res("", "v1", "ServiceAccount", "serviceaccounts", NS, NO_STATUS, &["sa"]),
    res("apps", "v1", "Deployment", "deployments", NS, STATUS, &["deploy"]),
    res("apps", "v1", "StatefulSet", "statefulsets", NS, STATUS, &["sts"]),
    res("apps", "v1", "ReplicaSet", "replicasets", NS, STATUS, &["rs"]),
    res("apps", "v1", "DaemonSet", "daemonsets", NS, STATUS, &["ds"]),
    res("batch", "v1", "Job", "jobs", NS, STATUS, &[]),
    res("batch", "v1", "CronJob", "cronjobs", NS, STATUS, &["cj"]),
    res("coordination.k8s.io", "v1", "Lease", "leases", NS, NO_STATUS, &[]),
    res("storage.k8s.io", "v1", "StorageClass", "storageclasses", CLUSTER, NO_STATUS, &["sc"]),
    res("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", NS, STATUS, &["pdb"]),
    // RBAC objects are stored and served, not enforced (tests audit requests against Coracle's table).
    res("rbac.authorization.k8s.io", "v1", "Role", "roles", NS, NO_STATUS, &[]),
    res("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", NS, NO_STATUS, &[]),
    res("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", CLUSTER, NO_STATUS, &[]),
    res("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", CLUSTER, NO_STATUS, &[]),
    res(
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        CLUSTER,
        NO_STATUS,
        &[],
    ),
    res(
        "admissionregistration.k8s.io",
        "v1",
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
        CLUSTER,
        NO_STATUS,
        &[],
    ),
];

/// Types `kubectl get all` shows.
const CATEGORY_ALL: &[&str] =
    &["pods", "services", "deployments", "statefulsets", "replicasets", "daemonsets", "jobs", "cronjobs"];

impl ResourceType {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// How the API server names the resource in messages: `pods`, `deployments.apps`.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// URL prefix of the group-version: `/api/v1` or `/apis/apps/v1`.
    pub fn gv_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    /// Position in [`RESOURCES`], the store's compact key for the type.
    pub(crate) fn index(&'static self) -> usize {
        RESOURCES.iter().position(|r| std::ptr::eq(r, self)).unwrap_or(usize::MAX)
    }
}

/// The type served at `<group>/<version>/<plural>`.
pub fn by_path(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The type of an object with this `apiVersion` and `kind`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|r| r.kind == kind && r.api_version() == api_version)
}

/// A type named the way kubectl accepts it: plural, singular, kind, short name, or `plural.group`
/// (case-insensitive).
pub fn find(name: &str) -> Option<&'static ResourceType> {
    let lower = name.to_ascii_lowercase();
    RESOURCES.iter().find(|r| {
        r.plural == lower
            || r.kind.eq_ignore_ascii_case(&lower)
            || r.short_names.contains(&lower.as_str())
            || (!r.group.is_empty() && r.qualified_plural() == lower)
    })
}

/// Group-versions in table order, core first.
fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&'static str, &'static str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// `GET /api`.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn api_group(group: &str) -> Value {
    let versions: Vec<Value> = group_versions()
        .into_iter()
        .filter(|(g, _)| *g == group)
        .map(|(g, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first().cloned().unwrap_or(Value::Null);
    json!({"name": group, "versions": versions, "preferredVersion": preferred})
}

/// `GET /apis`.
pub fn api_group_list() -> Value {
    let mut groups: Vec<&str> = Vec::new();
    for (g, _) in group_versions() {
        if !g.is_empty() && !groups.contains(&g) {
            groups.push(g);
        }
    }
    let groups: Vec<Value> = groups.into_iter().map(api_group).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/<group>`, or `None` when the group is not served.
pub fn api_group_doc(group: &str) -> Option<Value> {
    if group.is_empty() || !RESOURCES.iter().any(|r| r.group == group) {
        return None;
    }
    let mut doc = api_group(group);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

/// `GET /api/v1` or `/apis/<group>/<version>`, or `None` when the group-version is not served.
pub fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    let types: Vec<&ResourceType> = RESOURCES.iter().filter(|r| r.group == group && r.version == version).collect();
    let first = types.first()?;
    let verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];
    let mut resources = Vec::new();
    for r in &types {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.kind.to_ascii_lowercase(),
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": verbs,
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if CATEGORY_ALL.contains(&r.plural) {
            entry["categories"] = json!(["all"]);
        }
        resources.push(entry);
        if r.status {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": first.api_version(), "resources": resources}),
    )
}

/// `GET /version`: the Kubernetes version k8s-openapi's `v1_33` feature targets.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-coracle-sim",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_types_by_every_name_kubectl_accepts() {
        for name in ["pods", "pod", "Pod", "po", "deploy", "deployments.apps", "pvc", "ns"] {
            assert!(find(name).is_some(), "{name}");
        }
        assert_eq!(find("sts").map(|r| r.kind), Some("StatefulSet"));
        assert!(find("widgets").is_none());
        assert_eq!(by_kind("batch/v1", "Job").map(|r| r.plural), Some("jobs"));
        assert!(by_kind("v1", "Job").is_none());
    }

    #[test]
    fn indexes_match_table_positions() {
        for (i, r) in RESOURCES.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn discovery_lists_status_subresources_and_groups() {
        let core = api_resource_list("", "v1").expect("core group");
        let names: Vec<&str> =
            core["resources"].as_array().into_iter().flatten().filter_map(|r| r["name"].as_str()).collect();
        assert!(names.contains(&"pods/status"));
        assert!(!names.contains(&"secrets/status"));
        let groups = api_group_list();
        let group_names: Vec<&str> =
            groups["groups"].as_array().into_iter().flatten().filter_map(|g| g["name"].as_str()).collect();
        assert_eq!(
            group_names,
            [
                "apps",
                "batch",
                "coordination.k8s.io",
                "storage.k8s.io",
                "policy",
                "rbac.authorization.k8s.io",
                "admissionregistration.k8s.io"
            ]
        );
        assert!(api_resource_list("apps", "v2").is_none());
    }
}
