//! `admissionregistration.k8s.io/v1` MutatingWebhookConfigurations: the defaults and validation the API
//! server applies when storing them, and their webhooks in the order kube-apiserver calls them, with the
//! rule matching of `k8s.io/apiserver/pkg/admission/plugin/webhook/predicates/rules`.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ValidatingWebhookConfiguration,
    WebhookClientConfig,
};
use serde_json::{json, Value};

use super::errors::ApiError;
use super::resources::{self, ResourceType};
use super::selectors::LabelSelector;
use super::store::Store;
use super::validation::dns1123_subdomain;

pub(crate) const PLURAL: &str = "mutatingwebhookconfigurations";
pub(crate) const VALIDATING_PLURAL: &str = "validatingwebhookconfigurations";

/// Requests on these are never sent to webhooks, so a broken webhook cannot lock its own configuration.
pub(crate) const EXEMPT: &[&str] = &[PLURAL, VALIDATING_PLURAL];

const OPERATIONS: &[&str] = &["*", "CREATE", "UPDATE", "DELETE", "CONNECT"];
/// The AdmissionReview versions the simulation can send, in kube-apiserver's order of preference.
pub(crate) const REVIEW_VERSIONS: &[&str] = &["v1", "v1beta1"];

/// The API server's defaults for v1 webhooks, filled in when a configuration is stored.
pub(crate) fn set_defaults(object: &mut Value) {
    let Some(hooks) = object.get_mut("webhooks").and_then(Value::as_array_mut) else { return };
    for hook in hooks.iter_mut().filter_map(Value::as_object_mut) {
        let defaults = [
            ("failurePolicy", json!("Fail")),
            ("matchPolicy", json!("Equivalent")),
            ("namespaceSelector", json!({})),
            ("objectSelector", json!({})),
            ("timeoutSeconds", json!(10)),
            ("reinvocationPolicy", json!("Never")),
        ];
        for (field, value) in defaults {
            if hook.get(field).is_none_or(Value::is_null) {
                hook.insert(field.into(), value);
            }
        }
        for rule in hook.get_mut("rules").and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(rule) = rule.as_object_mut().filter(|r| r.get("scope").is_none_or(Value::is_null)) {
                rule.insert("scope".into(), json!("*"));
            }
        }
        let service = hook.get_mut("clientConfig").and_then(|c| c.get_mut("service")).and_then(Value::as_object_mut);
        if let Some(service) = service.filter(|s| s.get("port").is_none_or(Value::is_null)) {
            service.insert("port".into(), json!(443));
        }
    }
}

fn check_one_of(field: &str, value: Option<&str>, allowed: &[&str]) -> Result<(), String> {
    match value {
        Some(v) if !allowed.contains(&v) => {
            let allowed: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
            Err(format!("{field}: Unsupported value: {v:?}: supported values: {}", allowed.join(", ")))
        }
        _ => Ok(()),
    }
}

fn validate_client_config(field: &str, config: &WebhookClientConfig) -> Result<(), String> {
    match (&config.url, &config.service) {
        (Some(url), None) => {
            let uri: axum::http::Uri = url.parse().map_err(|e| format!("{field}.url: Invalid value: {url:?}: {e}"))?;
            match uri.scheme_str() {
                Some("https") => {}
                Some(other) => {
                    return Err(format!(
                        "{field}.url: Invalid value: {other:?}: 'https' is the only allowed URL scheme"
                    ))
                }
                None => return Err(format!("{field}.url: Invalid value: {url:?}: the URL needs a scheme and a host")),
            }
            if uri.host().is_none_or(str::is_empty) {
                return Err(format!("{field}.url: Invalid value: {url:?}: host must be specified"));
            }
            if uri.query().is_some() || url.contains('#') {
                return Err(format!(
                    "{field}.url: Invalid value: {url:?}: query parameters and fragments are not allowed"
                ));
            }
            if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
                return Err(format!("{field}.url: Invalid value: {url:?}: user information is not allowed"));
            }
        }
        (None, Some(service)) => {
            if service.name.is_empty() {
                return Err(format!("{field}.service.name: Required value: service name is required"));
            }
            if service.namespace.is_empty() {
                return Err(format!("{field}.service.namespace: Required value: service namespace is required"));
            }
            if let Some(port) = service.port.filter(|p| !(1..=65535).contains(p)) {
                return Err(format!("{field}.service.port: Invalid value: {port}: port is not valid"));
            }
            if let Some(path) = service.path.as_deref().filter(|p| !p.starts_with('/')) {
                return Err(format!("{field}.service.path: Invalid value: {path:?}: must start with a '/'"));
            }
        }
        _ => return Err(format!("{field}: Required value: exactly one of url or service is required")),
    }
    Ok(())
}

fn validate_rule(field: &str, rule: &RuleWithOperations) -> Result<(), String> {
    let lists = [
        ("operations", &rule.operations),
        ("apiGroups", &rule.api_groups),
        ("apiVersions", &rule.api_versions),
        ("resources", &rule.resources),
    ];
    for (name, list) in lists {
        if list.as_ref().is_none_or(Vec::is_empty) {
            return Err(format!("{field}.{name}: Required value"));
        }
    }
    for op in rule.operations.iter().flatten() {
        check_one_of(&format!("{field}.operations"), Some(op), OPERATIONS)?;
    }
    check_one_of(&format!("{field}.scope"), rule.scope.as_deref(), &["*", "Cluster", "Namespaced"])
}

fn validate_webhook(field: &str, hook: &MutatingWebhook) -> Result<(), String> {
    let name = &hook.name;
    dns1123_subdomain(name).map_err(|why| format!("{field}.name: Invalid value: {name:?}: {why}"))?;
    if name.split('.').count() < 3 {
        return Err(format!(
            "{field}.name: Invalid value: {name:?}: should be a domain with at least three segments separated by dots"
        ));
    }
    let versions = &hook.admission_review_versions;
    if versions.is_empty() {
        return Err(format!("{field}.admissionReviewVersions: Required value: must specify one of v1, v1beta1"));
    }
    if !versions.iter().any(|v| REVIEW_VERSIONS.contains(&v.as_str())) {
        return Err(format!(
            "{field}.admissionReviewVersions: Invalid value: {versions:?}: must include at least one of v1, v1beta1"
        ));
    }
    check_one_of(&format!("{field}.sideEffects"), Some(&hook.side_effects), &["None", "NoneOnDryRun"])?;
    check_one_of(&format!("{field}.failurePolicy"), hook.failure_policy.as_deref(), &["Ignore", "Fail"])?;
    check_one_of(&format!("{field}.matchPolicy"), hook.match_policy.as_deref(), &["Exact", "Equivalent"])?;
    check_one_of(&format!("{field}.reinvocationPolicy"), hook.reinvocation_policy.as_deref(), &["Never", "IfNeeded"])?;
    if let Some(t) = hook.timeout_seconds.filter(|t| !(1..=30).contains(t)) {
        return Err(format!(
            "{field}.timeoutSeconds: Invalid value: {t}: the timeout value must be between 1 and 30 seconds"
        ));
    }
    validate_client_config(&format!("{field}.clientConfig"), &hook.client_config)?;
    for (i, rule) in hook.rules.iter().flatten().enumerate() {
        validate_rule(&format!("{field}.rules[{i}]"), rule)?;
    }
    LabelSelector::from_meta(hook.namespace_selector.as_ref()).map_err(|e| format!("{field}.namespaceSelector.{e}"))?;
    LabelSelector::from_meta(hook.object_selector.as_ref()).map_err(|e| format!("{field}.objectSelector.{e}"))?;
    if hook.match_conditions.as_ref().is_some_and(|c| !c.is_empty()) {
        // CEL cannot be evaluated here; refusing the configuration beats calling the webhook when it should not be.
        return Err(format!(
            "{field}.matchConditions: Forbidden: the simulated API server cannot evaluate CEL match conditions"
        ));
    }
    Ok(())
}

/// Validates a configuration about to be stored (defaults already applied), as a 422 Invalid.
pub(crate) fn validate(res: &ResourceType, object: &Value) -> Result<(), ApiError> {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let config: MutatingWebhookConfiguration = serde_json::from_value(object.clone())
        .map_err(|e| ApiError::invalid(res, name, &format!("webhooks: Invalid value: {e}")))?;
    let mut seen = Vec::new();
    for (i, hook) in config.webhooks.iter().flatten().enumerate() {
        let field = format!("webhooks[{i}]");
        validate_webhook(&field, hook).map_err(|e| ApiError::invalid(res, name, &e))?;
        if seen.contains(&&hook.name) {
            return Err(ApiError::invalid(res, name, &format!("{field}.name: Duplicate value: {:?}", hook.name)));
        }
        seen.push(&hook.name);
    }
    Ok(())
}

/// One webhook of a configuration.
pub(crate) struct Hook {
    pub configuration: String,
    pub index: usize,
    pub spec: MutatingWebhook,
}

impl Hook {
    /// What kube-apiserver's reinvocation bookkeeping identifies a webhook by.
    pub fn uid(&self) -> String {
        format!("{}/{}/{}", self.configuration, self.spec.name, self.index)
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.spec.timeout_seconds.unwrap_or(10).clamp(1, 30) as u64)
    }

    pub fn ignores_failures(&self) -> bool {
        self.spec.failure_policy.as_deref() == Some("Ignore")
    }

    pub fn reinvocable(&self) -> bool {
        self.spec.reinvocation_policy.as_deref() == Some("IfNeeded")
    }

    /// Whether a create/update of this resource and subresource in this scope matches any rule (selectors
    /// aside). `namespace` is the request's: the object's namespace, or the name of a Namespace object.
    pub fn rules_match(&self, res: &ResourceType, subresource: &str, operation: &str, namespace: &str) -> bool {
        self.spec.rules.iter().flatten().any(|rule| rule_matches(rule, res, subresource, operation, namespace))
    }
}

fn listed(list: &Option<Vec<String>>, value: &str) -> bool {
    list.iter().flatten().any(|v| v == "*" || v == value)
}

fn rule_matches(
    rule: &RuleWithOperations,
    res: &ResourceType,
    subresource: &str,
    operation: &str,
    namespace: &str,
) -> bool {
    let is_namespace = res.group.is_empty() && res.plural == "namespaces";
    let scope = match rule.scope.as_deref().unwrap_or("*") {
        "*" => true,
        "Namespaced" => !is_namespace && !namespace.is_empty(),
        "Cluster" => is_namespace || namespace.is_empty(),
        _ => false,
    };
    // `pods` matches the main resource only, `pods/*` its subresources, `*/status` every status subresource.
    let resource = rule.resources.iter().flatten().any(|r| {
        let (r_res, r_sub) = r.split_once('/').unwrap_or((r, ""));
        (r_res == "*" || r_res == res.plural) && (r_sub == "*" || r_sub == subresource)
    });
    scope
        && resource
        && listed(&rule.operations, operation)
        && listed(&rule.api_groups, res.group)
        && listed(&rule.api_versions, res.version)
}

/// Every stored configuration of one kind, by name.
fn configurations<T: serde::de::DeserializeOwned>(store: &Store, plural: &str) -> Result<Vec<(String, T)>, ApiError> {
    let res = resources::by_path("admissionregistration.k8s.io", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("the simulation does not serve {plural}")))?;
    let page = store.list_page(res, None, &LabelSelector::default(), &Default::default(), None, None)?;
    let mut out = Vec::new();
    for object in page.items {
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        // Only `Store::modify` can store a configuration the API would refuse; fail loudly then.
        let config: T = serde_json::from_value(object)
            .map_err(|e| ApiError::internal(format!("reading {} {name:?}: {e}", res.kind)))?;
        out.push((name, config));
    }
    Ok(out)
}

/// Every mutating webhook of every configuration: configurations by name, webhooks in their order.
pub(crate) fn hooks(store: &Store) -> Result<Vec<Hook>, ApiError> {
    let mut hooks = Vec::new();
    for (name, config) in configurations::<MutatingWebhookConfiguration>(store, PLURAL)? {
        for (index, spec) in config.webhooks.into_iter().flatten().enumerate() {
            hooks.push(Hook { configuration: name.clone(), index, spec });
        }
    }
    Ok(hooks)
}

/// Every validating webhook, in the same shape: a validating webhook is a mutating one that is never
/// reinvoked and whose answer can only allow or deny.
pub(crate) fn validating_hooks(store: &Store) -> Result<Vec<Hook>, ApiError> {
    let mut hooks = Vec::new();
    for (name, config) in configurations::<ValidatingWebhookConfiguration>(store, VALIDATING_PLURAL)? {
        for (index, w) in config.webhooks.into_iter().flatten().enumerate() {
            let spec = MutatingWebhook {
                admission_review_versions: w.admission_review_versions,
                client_config: w.client_config,
                failure_policy: w.failure_policy,
                match_conditions: w.match_conditions,
                match_policy: w.match_policy,
                name: w.name,
                namespace_selector: w.namespace_selector,
                object_selector: w.object_selector,
                reinvocation_policy: None,
                rules: w.rules,
                side_effects: w.side_effects,
                timeout_seconds: w.timeout_seconds,
            };
            hooks.push(Hook { configuration: name.clone(), index, spec });
        }
    }
    Ok(hooks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mwc() -> &'static ResourceType {
        resources::find(PLURAL).expect("served")
    }

    fn config(hook: Value) -> Value {
        let mut object = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "c"}, "webhooks": [hook]});
        set_defaults(&mut object);
        object
    }

    fn hook() -> Value {
        json!({"name": "pods.coracle.dev", "sideEffects": "None", "admissionReviewVersions": ["v1"],
            "clientConfig": {"service": {"namespace": "coracle-system", "name": "coracle", "path": "/admission/pods"}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}]})
    }

    #[test]
    fn defaults_then_validation() {
        let object = config(hook());
        let h = &object["webhooks"][0];
        assert_eq!(h["failurePolicy"], "Fail");
        assert_eq!(h["timeoutSeconds"], 10);
        assert_eq!(h["rules"][0]["scope"], "*");
        assert_eq!(h["clientConfig"]["service"]["port"], 443);
        validate(mwc(), &object).expect("valid");

        let broken = |edit: &dyn Fn(&mut Value), want: &str| {
            let mut h = hook();
            edit(&mut h);
            let err = validate(mwc(), &config(h)).expect_err(want);
            assert_eq!(err.code, 422);
            assert!(err.message.contains(want), "{} lacks {want}", err.message);
        };
        broken(&|h| h["name"] = json!("pods"), "at least three segments");
        broken(&|h| h["sideEffects"] = json!("Some"), "sideEffects: Unsupported value");
        broken(&|h| h["admissionReviewVersions"] = json!(["v2"]), "must include at least one of v1");
        broken(&|h| h["timeoutSeconds"] = json!(31), "between 1 and 30");
        broken(
            &|h| h["clientConfig"] = json!({"url": "http://127.0.0.1:1/x"}),
            "'https' is the only allowed URL scheme",
        );
        broken(&|h| h["clientConfig"] = json!({}), "exactly one of url or service");
        broken(&|h| h["rules"][0]["operations"] = json!(["CREATE", "PATCH"]), "operations: Unsupported value");
        broken(&|h| h["namespaceSelector"] = json!({"matchExpressions": [{"key": "a", "operator": "In"}]}), "values");
        broken(&|h| h["matchConditions"] = json!([{"name": "x", "expression": "true"}]), "matchConditions");
        let mut twice = config(hook());
        twice["webhooks"] = json!([hook(), hook()]);
        set_defaults(&mut twice);
        assert!(validate(mwc(), &twice).expect_err("duplicate").message.contains("Duplicate value"));
    }

    #[test]
    fn rules_match_like_kube_apiserver() {
        let spec: MutatingWebhook = serde_json::from_value(config(hook())["webhooks"][0].clone()).expect("typed");
        let pods = resources::find("pods").expect("pods");
        let namespaces = resources::find("namespaces").expect("namespaces");
        let h = Hook { configuration: "c".into(), index: 0, spec };
        assert_eq!(h.uid(), "c/pods.coracle.dev/0");
        assert!(h.rules_match(pods, "", "CREATE", "shop"));
        assert!(!h.rules_match(pods, "", "UPDATE", "shop"));
        assert!(!h.rules_match(pods, "status", "CREATE", "shop"), "subresources need pods/*");
        assert!(!h.rules_match(namespaces, "", "CREATE", "shop"));

        let rule = |resources: Value, scope: &str| -> RuleWithOperations {
            serde_json::from_value(json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"],
                "resources": resources, "scope": scope}))
            .expect("rule")
        };
        assert!(rule_matches(&rule(json!(["*/status"]), "*"), pods, "status", "UPDATE", "shop"));
        assert!(!rule_matches(&rule(json!(["*"]), "*"), pods, "status", "UPDATE", "shop"));
        assert!(rule_matches(&rule(json!(["*"]), "Namespaced"), pods, "", "CREATE", "shop"));
        assert!(!rule_matches(&rule(json!(["*"]), "Namespaced"), namespaces, "", "CREATE", "shop"));
        assert!(rule_matches(&rule(json!(["*"]), "Cluster"), namespaces, "", "CREATE", "shop"));
        assert!(!rule_matches(&rule(json!(["*"]), "Cluster"), pods, "", "CREATE", "shop"));
    }
}
