//! A minimal OpenAPI v3 description: only what kubectl reads to decide that the server validates fields
//! itself (`fieldValidation` on each type's PATCH operation). With it, `kubectl apply` skips client-side
//! schema validation (which would need the full schemas) and computes strategic merge patches from its
//! built-in types, since the operations declare no request body.

use serde_json::{json, Map, Value};

use super::resources::RESOURCES;

/// Changes whenever the documents change, for kubectl's OpenAPI cache.
const HASH: &str = "coracle-sim-1";

/// `GET /openapi/v3`: one entry per served group-version.
pub fn root() -> Value {
    let mut paths = Map::new();
    for r in RESOURCES {
        let key = r.gv_path().trim_start_matches('/').to_string();
        let url = format!("/openapi/v3{}?hash={HASH}", r.gv_path());
        paths.insert(key, json!({"serverRelativeURL": url}));
    }
    json!({"paths": paths})
}

/// `GET /openapi/v3/api/v1`, `/openapi/v3/apis/<group>/<version>`; `None` when not served.
pub fn group_version(group: &str, version: &str) -> Option<Value> {
    let mut paths = Map::new();
    for r in RESOURCES.iter().filter(|r| r.group == group && r.version == version) {
        let path = if r.namespaced {
            format!("{}/namespaces/{{namespace}}/{}/{{name}}", r.gv_path(), r.plural)
        } else {
            format!("{}/{}/{{name}}", r.gv_path(), r.plural)
        };
        let operation = |verb: &str| {
            json!({
                "operationId": format!("{verb}{}", r.kind),
                "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}}],
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
            })
        };
        paths.insert(path, json!({"patch": operation("patch"), "put": operation("put")}));
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (coracle-sim)", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_every_group_version() {
        let root = root();
        assert_eq!(
            root["paths"]["apis/batch/v1"]["serverRelativeURL"],
            format!("/openapi/v3/apis/batch/v1?hash={HASH}")
        );
        let core = group_version("", "v1").expect("core");
        let pod_patch = &core["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(pod_patch["x-kubernetes-group-version-kind"]["kind"], "Pod");
        assert!(core["paths"]["/api/v1/nodes/{name}"].is_object());
        assert!(group_version("apps", "v9").is_none());
    }
}
