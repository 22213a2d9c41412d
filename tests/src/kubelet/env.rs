//! A container's environment and the downward API, resolved as the kubelet resolves them: `envFrom` first (in
//! order, with prefixes), then `env` (later names win); `$(VAR)` references to earlier variables expanded
//! (`$$` escapes); `secretKeyRef`/`configMapKeyRef` read through the API, missing ones failing the start
//! (`CreateContainerConfigError`) unless optional; `fieldRef` and `resourceFieldRef` from the pod.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::api::Api;

/// A node's allocatable CPU (millicores) and memory (bytes): what `resourceFieldRef` reports without a limit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Allocatable {
    pub cpu_millis: u64,
    pub memory: u64,
}

/// Reads Secrets and ConfigMaps once per resolution.
pub(crate) struct Objects<'a> {
    client: &'a kube::Client,
    namespace: String,
    secrets: HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
    config_maps: HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
}

impl<'a> Objects<'a> {
    pub(crate) fn new(client: &'a kube::Client, namespace: &str) -> Self {
        Self { client, namespace: namespace.to_string(), secrets: HashMap::new(), config_maps: HashMap::new() }
    }

    /// A Secret's data, `None` when it does not exist.
    pub(crate) async fn secret(&mut self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        if let Some(found) = self.secrets.get(name) {
            return Ok(found.clone());
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let found = api
            .get_opt(name)
            .await
            .map_err(|e| format!("reading secret {:?}: {e}", name))?
            .map(|s| s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect());
        self.secrets.insert(name.to_string(), found.clone());
        Ok(found)
    }

    /// A ConfigMap's `data` and `binaryData`, `None` when it does not exist.
    pub(crate) async fn config_map(&mut self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        if let Some(found) = self.config_maps.get(name) {
            return Ok(found.clone());
        }
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let found = api.get_opt(name).await.map_err(|e| format!("reading configmap {:?}: {e}", name))?.map(|c| {
            let mut data: BTreeMap<String, Vec<u8>> =
                c.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
            data.extend(c.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
            data
        });
        self.config_maps.insert(name.to_string(), found.clone());
        Ok(found)
    }
}

/// `metadata.labels['key']` → `key`.
fn bracket_key<'s>(path: &'s str, prefix: &str) -> Option<&'s str> {
    path.strip_prefix(prefix)?.strip_prefix("['")?.strip_suffix("']")
}

/// Labels or annotations as the downward API volume writes them: sorted `key="value"` lines.
fn key_value_lines(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A `fieldRef` value. `metadata.labels`/`metadata.annotations` (whole maps) are for volumes only.
pub(crate) fn field_value(pod: &Pod, path: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let text = |v: Option<&String>| v.cloned().unwrap_or_default();
    if let Some(key) = bracket_key(path, "metadata.labels") {
        return Ok(meta.labels.as_ref().and_then(|l| l.get(key)).cloned().unwrap_or_default());
    }
    if let Some(key) = bracket_key(path, "metadata.annotations") {
        return Ok(meta.annotations.as_ref().and_then(|a| a.get(key)).cloned().unwrap_or_default());
    }
    Ok(match path {
        "metadata.name" => text(meta.name.as_ref()),
        "metadata.namespace" => text(meta.namespace.as_ref()),
        "metadata.uid" => text(meta.uid.as_ref()),
        "metadata.labels" => key_value_lines(meta.labels.as_ref()),
        "metadata.annotations" => key_value_lines(meta.annotations.as_ref()),
        "spec.nodeName" => text(spec.and_then(|s| s.node_name.as_ref())),
        "spec.serviceAccountName" => {
            spec.and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into())
        }
        "status.hostIP" => text(status.and_then(|s| s.host_ip.as_ref())),
        "status.podIP" => text(status.and_then(|s| s.pod_ip.as_ref())),
        "status.hostIPs" => status
            .and_then(|s| s.host_ips.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|i| i.ip)
            .collect::<Vec<_>>()
            .join(","),
        "status.podIPs" => status
            .and_then(|s| s.pod_ips.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|i| i.ip)
            .collect::<Vec<_>>()
            .join(","),
        other => return Err(format!("unsupported fieldRef fieldPath {other:?}")),
    })
}

/// A Kubernetes quantity (`500m`, `2`, `128Mi`, `1G`, `1e3`) as a number.
pub(crate) fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (suffix, factor) in suffixes {
        if let Some(number) = q.strip_suffix(suffix) {
            // `1E` is the exa suffix, not an exponent without digits.
            if let Ok(n) = number.parse::<f64>() {
                return Some(n * factor);
            }
        }
    }
    q.parse::<f64>().ok()
}

/// A `resourceFieldRef` value: the container's limit or request in units of `divisor` (rounded up), a
/// missing limit reported as the node's allocatable amount, a missing request as the limit or 0.
pub(crate) fn resource_value(
    pod: &Pod,
    container_name: &str,
    resource: &str,
    divisor: Option<&str>,
    node: Allocatable,
) -> Result<String, String> {
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
    let container = containers
        .iter()
        .find(|c| c.name == container_name)
        .ok_or_else(|| format!("resourceFieldRef names no container {container_name:?}"))?;
    let resources = container.resources.as_ref();
    let get = |which: &str, name: &str| {
        let map = if which == "limits" {
            resources.and_then(|r| r.limits.as_ref())
        } else {
            resources.and_then(|r| r.requests.as_ref())
        };
        map.and_then(|m| m.get(name)).and_then(|q| parse_quantity(&q.0))
    };
    let (which, name) = resource.split_once('.').ok_or_else(|| format!("unsupported resource {resource:?}"))?;
    let allocatable = match name {
        "cpu" => node.cpu_millis as f64 / 1000.0,
        "memory" => node.memory as f64,
        "ephemeral-storage" => 0.0,
        other => return Err(format!("unsupported resource {other:?}")),
    };
    let value = match which {
        "limits" => get("limits", name).unwrap_or(allocatable),
        "requests" => get("requests", name).or_else(|| get("limits", name)).unwrap_or(0.0),
        other => return Err(format!("unsupported resource {other}.{name}")),
    };
    let divisor = divisor.and_then(parse_quantity).filter(|d| *d > 0.0).unwrap_or(1.0);
    Ok(format!("{}", (value / divisor).ceil() as i64))
}

/// Expands `$(NAME)` from `vars`; `$$` is a literal `$`; unknown references stay as written.
pub(crate) fn expand(input: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Environment variable names the kubelet accepts from `envFrom` (C identifiers, plus `.` and `-`).
fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// The container's environment, in Kubernetes' order.
pub(crate) async fn container_env(
    objects: &mut Objects<'_>,
    pod: &Pod,
    container: &Container,
    node: Allocatable,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut env: Vec<(String, Vec<u8>)> = Vec::new();
    let set = |env: &mut Vec<(String, Vec<u8>)>, name: String, value: Vec<u8>| {
        env.retain(|(n, _)| *n != name);
        env.push((name, value));
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(r) = &from.config_map_ref {
            match objects.config_map(&r.name).await? {
                Some(d) => d,
                None if r.optional == Some(true) => continue,
                None => return Err(format!("configmap {:?} not found", r.name)),
            }
        } else if let Some(r) = &from.secret_ref {
            match objects.secret(&r.name).await? {
                Some(d) => d,
                None if r.optional == Some(true) => continue,
                None => return Err(format!("secret {:?} not found", r.name)),
            }
        } else {
            continue;
        };
        for (k, v) in data {
            let name = format!("{prefix}{k}");
            if valid_env_name(&name) {
                set(&mut env, name, v);
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value: Option<Vec<u8>> = match &var.value_from {
            None => {
                let known: BTreeMap<String, String> =
                    env.iter().map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned())).collect();
                Some(expand(var.value.as_deref().unwrap_or_default(), &known).into_bytes())
            }
            Some(from) => {
                if let Some(f) = &from.field_ref {
                    Some(field_value(pod, &f.field_path)?.into_bytes())
                } else if let Some(r) = &from.resource_field_ref {
                    let target = r.container_name.clone().unwrap_or_else(|| container.name.clone());
                    Some(
                        resource_value(pod, &target, &r.resource, r.divisor.as_ref().map(|d| d.0.as_str()), node)?
                            .into_bytes(),
                    )
                } else if let Some(r) = &from.secret_key_ref {
                    let optional = r.optional == Some(true);
                    match objects.secret(&r.name).await? {
                        Some(d) => match d.get(&r.key) {
                            Some(v) => Some(v.clone()),
                            None if optional => None,
                            None => {
                                return Err(format!(
                                    "couldn't find key {} in Secret {}/{}",
                                    r.key, objects.namespace, r.name
                                ))
                            }
                        },
                        None if optional => None,
                        None => return Err(format!("secret {:?} not found", r.name)),
                    }
                } else if let Some(r) = &from.config_map_key_ref {
                    let optional = r.optional == Some(true);
                    match objects.config_map(&r.name).await? {
                        Some(d) => match d.get(&r.key) {
                            Some(v) => Some(v.clone()),
                            None if optional => None,
                            None => {
                                return Err(format!(
                                    "couldn't find key {} in ConfigMap {}/{}",
                                    r.key, objects.namespace, r.name
                                ))
                            }
                        },
                        None if optional => None,
                        None => return Err(format!("configmap {:?} not found", r.name)),
                    }
                } else {
                    return Err(format!("env {} has an unsupported valueFrom", var.name));
                }
            }
        };
        if let Some(value) = value {
            set(&mut env, var.name.clone(), value);
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion() {
        let vars = BTreeMap::from([("A".to_string(), "x".to_string())]);
        assert_eq!(expand("$(A)/$(B)/$$(A)/$", &vars), "x/$(B)/$(A)/$");
        assert_eq!(expand("plain", &vars), "plain");
        assert_eq!(expand("$(A", &vars), "$(A");
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("128Mi"), Some(134_217_728.0));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("1G"), Some(1e9));
        assert_eq!(parse_quantity("x"), None);
    }

    #[test]
    fn downward_fields() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "web"},
                         "annotations": {"batch.kubernetes.io/job-index-failure-count": "1"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "resources": {"limits": {"memory": "64Mi"}}}]},
            "status": {"podIP": "10.244.1.2"}
        }))
        .expect("pod");
        assert_eq!(
            field_value(&pod, "metadata.annotations['batch.kubernetes.io/job-index-failure-count']").as_deref(),
            Ok("1")
        );
        assert_eq!(field_value(&pod, "metadata.labels['app']").as_deref(), Ok("web"));
        assert_eq!(field_value(&pod, "metadata.labels").as_deref(), Ok("app=\"web\""));
        assert_eq!(field_value(&pod, "spec.nodeName").as_deref(), Ok("node-1"));
        assert_eq!(field_value(&pod, "status.podIP").as_deref(), Ok("10.244.1.2"));
        assert!(field_value(&pod, "spec.bogus").is_err());
        let node = Allocatable { cpu_millis: 2000, memory: 1 << 30 };
        assert_eq!(resource_value(&pod, "c", "limits.memory", Some("1Mi"), node).as_deref(), Ok("64"));
        assert_eq!(resource_value(&pod, "c", "limits.cpu", None, node).as_deref(), Ok("2"));
        assert_eq!(resource_value(&pod, "c", "requests.memory", None, node).as_deref(), Ok("67108864"));
    }
}
