//! Mutating admission: on create and update requests the simulated API server calls the webhooks of the
//! stored MutatingWebhookConfigurations before it persists anything, following kube-apiserver's mutating
//! webhook plugin (`k8s.io/apiserver/pkg/admission/plugin/webhook/mutating`):
//! - webhooks in order (configurations by name, then list order); a webhook is called when a rule matches
//!   (operation, group, version, resource/subresource, scope), the namespace's labels match its
//!   `namespaceSelector` (read at each request; 404 when the namespace does not exist) and the object's or old
//!   object's labels match its `objectSelector`;
//! - an `AdmissionReview` (v1, or v1beta1 when that is all the webhook accepts) with a fresh uid, the object
//!   as submitted (for a create: no uid, and no name when `generateName` is used; those are assigned after
//!   admission), `oldObject` on update, `dryRun`, the Create/UpdateOptions and the requesting user;
//! - the response must echo the uid; `allowed: false` rejects with the webhook's Status ("admission webhook
//!   "<name>" denied the request: ..."), a JSONPatch is applied, warnings become `Warning` headers;
//! - a call that fails (no endpoint, connection, TLS against the caBundle, `timeoutSeconds`, malformed
//!   response) follows `failurePolicy`: `Ignore` goes on unpatched, `Fail` answers 500 InternalError
//!   "failed calling webhook "<name>": ...". A patch that does not apply fails the request either way;
//! - dry-run requests reach every webhook with `dryRun: true` (v1 allows only `sideEffects` None and
//!   NoneOnDryRun, so none has to be skipped);
//! - `reinvocationPolicy: IfNeeded`: when a webhook changed the object, the IfNeeded webhooks called before it
//!   are called once more after the first pass.
//!
//! Approximations: the user is `kubernetes-admin` (the sim has no authentication) unless the request carries
//! `Impersonate-User`/`Impersonate-Group` headers (`kubectl --as`, kube's `impersonate`); there is no
//! defaulting of built-in types and no in-tree admission plugin runs (a real pod reaches webhooks with
//! defaults and the service-account token volume already added); `matchConditions` are refused when a
//! configuration is stored; DELETE and CONNECT are not sent to webhooks; objects written through [`Store`]
//! directly (fixtures, the simulated kubelet) skip admission, as writes straight to etcd would.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Uri};
use base64::Engine as _;
use serde_json::{json, Value};

use super::errors::ApiError;
use super::resources::{self, ResourceType};
use super::selectors::LabelSelector;
use super::store::Store;
use super::webhook_client::{self, Target};
use super::webhooks::{self, Hook, REVIEW_VERSIONS};

/// One webhook call, as sent and as answered.
#[derive(Debug, Clone)]
pub struct AdmissionCall {
    pub configuration: String,
    pub webhook: String,
    /// The URL as kube-apiserver names it (`https://<service>.<namespace>.svc:443/<path>?timeout=10s` for a
    /// service reference), or empty when no URL could be formed.
    pub url: String,
    /// 0 for the first pass over the webhooks, 1 for the reinvocation pass.
    pub round: u8,
    /// The AdmissionReview sent.
    pub request: Value,
    /// The AdmissionReview the webhook answered with, when it answered with JSON (the patch still base64).
    pub response: Option<Value>,
    pub outcome: AdmissionOutcome,
    pub duration: Duration,
}

impl AdmissionCall {
    /// `request.uid` of the review sent.
    pub fn uid(&self) -> &str {
        self.request["request"]["uid"].as_str().unwrap_or_default()
    }

    /// `request.object` of the review sent.
    pub fn object(&self) -> &Value {
        &self.request["request"]["object"]
    }

    /// The response's JSON patch, decoded, when there is one.
    pub fn patch(&self) -> Option<Value> {
        let encoded = self.response.as_ref()?["response"]["patch"].as_str()?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// What came of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdmissionOutcome {
    /// Allowed; `changed` when its patch changed the object.
    Allowed { changed: bool },
    /// `allowed: false`; `message` is what the client was told.
    Denied { message: String },
    /// No usable answer (`failed calling webhook "<name>": ...`), or a patch that could not be applied;
    /// `ignored` when `failurePolicy: Ignore` let the request go on.
    Failed { error: String, ignored: bool },
}

#[derive(Default)]
struct State {
    /// (namespace, service, port) → `https://host:port` actually dialled.
    endpoints: HashMap<(String, String, u16), String>,
    calls: Vec<AdmissionCall>,
}

/// Service endpoints and the log of calls; clones share them.
#[derive(Clone, Default)]
pub(crate) struct Admission(Arc<Mutex<State>>);

impl Admission {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_endpoint(&self, namespace: &str, service: &str, port: u16, url: String) {
        self.lock().endpoints.insert((namespace.to_string(), service.to_string(), port), url);
    }

    fn endpoint(&self, namespace: &str, service: &str, port: u16) -> Option<String> {
        self.lock().endpoints.get(&(namespace.to_string(), service.to_string(), port)).cloned()
    }

    fn record(&self, call: AdmissionCall) {
        self.lock().calls.push(call);
    }

    pub fn calls(&self) -> Vec<AdmissionCall> {
        self.lock().calls.clone()
    }

    pub fn clear(&self) {
        self.lock().calls.clear();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Create,
    Update,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "CREATE",
            Self::Update => "UPDATE",
        }
    }

    /// The kind of `request.options`.
    pub fn options_kind(self) -> &'static str {
        match self {
            Self::Create => "CreateOptions",
            Self::Update => "UpdateOptions",
        }
    }
}

/// What admission knows about a request besides the object.
pub(crate) struct Attributes<'a> {
    pub res: &'static ResourceType,
    /// "" or "status".
    pub subresource: &'a str,
    pub operation: Operation,
    /// The object's namespace; for a Namespace, its own name; "" for other cluster-scoped objects.
    pub namespace: &'a str,
    /// Empty on a create with `generateName`.
    pub name: &'a str,
    pub old_object: Option<&'a Value>,
    pub dry_run: bool,
    /// `request.options`.
    pub options: Value,
    /// `request.userInfo`.
    pub user: &'a Value,
}

/// The requesting user: the admin a kubeadm kubeconfig names, or whom `Impersonate-*` headers name (with the
/// groups kube-apiserver adds: a service account's, and `system:authenticated`).
pub(crate) fn user_info(headers: &HeaderMap) -> Value {
    let values = |name: &str| -> Vec<String> {
        headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).map(str::to_string).collect()
    };
    let Some(username) = values("impersonate-user").into_iter().next() else {
        return json!({"username": "kubernetes-admin", "groups": ["kubeadm:cluster-admins", "system:authenticated"]});
    };
    let mut groups = values("impersonate-group");
    if groups.is_empty() {
        if let Some(namespace) = username.strip_prefix("system:serviceaccount:").and_then(|r| r.split(':').next()) {
            groups = vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{namespace}")];
        }
    }
    if username != "system:anonymous" && !groups.iter().any(|g| g == "system:authenticated") {
        groups.push("system:authenticated".into());
    }
    let mut user = json!({"username": username, "groups": groups});
    if let Some(uid) = values("impersonate-uid").into_iter().next() {
        user["uid"] = json!(uid);
    }
    user
}

/// Why a call did not give a usable answer.
enum HookError {
    /// kube-apiserver's `ErrCallingWebhook` (full message): subject to `failurePolicy`.
    Call(String),
    /// `allowed: false`: the request fails with the webhook's Status.
    Denied(ApiError),
    /// Fails the request whatever the policy: a patch that does not apply.
    Fatal(ApiError),
}

fn call_failed(hook: &Hook, reason: impl std::fmt::Display) -> HookError {
    HookError::Call(format!("failed calling webhook {:?}: {reason}", hook.name()))
}

/// Whether any webhook's rules match such a request (selectors aside): without one, writes skip admission.
pub(crate) fn may_call(
    store: &Store,
    res: &ResourceType,
    subresource: &str,
    operation: Operation,
    namespace: &str,
) -> Result<bool, ApiError> {
    if webhooks::EXEMPT.contains(&res.plural) {
        return Ok(false);
    }
    let matches = |hooks: Vec<webhooks::Hook>| {
        hooks.iter().any(|h| h.rules_match(res, subresource, operation.as_str(), namespace))
    };
    Ok(matches(webhooks::hooks(store)?) || matches(webhooks::validating_hooks(store)?))
}

fn is_namespace(res: &ResourceType) -> bool {
    res.group.is_empty() && res.plural == "namespaces"
}

/// `namespaceSelector` and `objectSelector`, given that the rules match.
fn selectors_match(store: &Store, hook: &Hook, attrs: &Attributes<'_>, object: &Value) -> Result<bool, ApiError> {
    let invalid = |e: String| ApiError::internal(format!("webhook {:?}: {e}", hook.name()));
    let namespaces = LabelSelector::from_meta(hook.spec.namespace_selector.as_ref()).map_err(invalid)?;
    let cluster_scoped = attrs.namespace.is_empty() && !is_namespace(attrs.res);
    if !cluster_scoped && !namespaces.is_empty() {
        // A Namespace being written is matched on its new labels, anything else on its namespace's current ones.
        let matches = if is_namespace(attrs.res) && attrs.subresource.is_empty() {
            namespaces.matches(object)
        } else {
            let res = resources::find("namespaces").ok_or_else(|| ApiError::internal("namespaces are not served"))?;
            namespaces.matches(&store.get_object(res, "", attrs.namespace)?)
        };
        if !matches {
            return Ok(false);
        }
    }
    let objects = LabelSelector::from_meta(hook.spec.object_selector.as_ref()).map_err(invalid)?;
    Ok(objects.is_empty() || objects.matches(object) || attrs.old_object.is_some_and(|old| objects.matches(old)))
}

/// Runs mutating admission: the object to persist, or the error to answer with. Warnings from webhooks are
/// appended to `warnings`, also when the request fails.
pub(crate) async fn admit(
    store: &Store,
    admission: &Admission,
    attrs: &Attributes<'_>,
    mut object: Value,
    warnings: &mut Vec<String>,
) -> Result<Value, ApiError> {
    if webhooks::EXEMPT.contains(&attrs.res.plural) {
        return Ok(object);
    }
    let hooks = webhooks::hooks(store)?;
    let operation = attrs.operation.as_str();
    // kube-apiserver's webhookReinvokeContext.
    let mut reinvoke: HashSet<String> = HashSet::new();
    let mut invoked_reinvocable: HashSet<String> = HashSet::new();
    let mut changed_any = false;
    for round in 0..2u8 {
        if round == 1 && !changed_any {
            break;
        }
        for hook in &hooks {
            if !hook.rules_match(attrs.res, attrs.subresource, operation, attrs.namespace)
                || !selectors_match(store, hook, attrs, &object)?
            {
                continue;
            }
            // The reinvocation pass calls only IfNeeded webhooks that a later change made stale.
            if round == 1 && !reinvoke.contains(&hook.uid()) {
                continue;
            }
            let result = call(admission, hook, attrs, &object, round, warnings).await;
            if let Ok(Some(patched)) = &result {
                object = patched.clone();
                reinvoke.extend(invoked_reinvocable.drain());
                changed_any = true;
            }
            if hook.reinvocable() {
                invoked_reinvocable.insert(hook.uid());
            }
            match result {
                Ok(_) => {}
                Err(HookError::Call(_)) if hook.ignores_failures() => {}
                Err(HookError::Call(message)) => return Err(ApiError::internal(message)),
                Err(HookError::Denied(err) | HookError::Fatal(err)) => return Err(err),
            }
        }
    }
    Ok(object)
}

/// Runs validating admission on the object about to be persisted, after mutation: any denial fails the
/// request; a webhook that cannot be called fails it unless its failurePolicy is Ignore.
pub(crate) async fn validate(
    store: &Store,
    admission: &Admission,
    attrs: &Attributes<'_>,
    object: &Value,
    warnings: &mut Vec<String>,
) -> Result<(), ApiError> {
    if webhooks::EXEMPT.contains(&attrs.res.plural) {
        return Ok(());
    }
    for hook in webhooks::validating_hooks(store)? {
        if !hook.rules_match(attrs.res, attrs.subresource, attrs.operation.as_str(), attrs.namespace)
            || !selectors_match(store, &hook, attrs, object)?
        {
            continue;
        }
        match call(admission, &hook, attrs, object, 0, warnings).await {
            Ok(_) => {}
            Err(HookError::Call(_)) if hook.ignores_failures() => {}
            Err(HookError::Call(message)) => return Err(ApiError::internal(message)),
            Err(HookError::Denied(err) | HookError::Fatal(err)) => return Err(err),
        }
    }
    Ok(())
}

/// Calls one webhook and records the call: `Some(object)` when its patch changed the object.
async fn call(
    admission: &Admission,
    hook: &Hook,
    attrs: &Attributes<'_>,
    object: &Value,
    round: u8,
    warnings: &mut Vec<String>,
) -> Result<Option<Value>, HookError> {
    let version = hook
        .spec
        .admission_review_versions
        .iter()
        .find(|v| REVIEW_VERSIONS.contains(&v.as_str()))
        .map_or("v1", String::as_str);
    let uid = uuid::Uuid::new_v4().to_string();
    let review = review_request(version, attrs, object, &uid);
    let started = Instant::now();
    let mut url = String::new();
    let mut response = None;
    let result = match target(admission, hook) {
        Err(reason) => Err(call_failed(hook, format!("failed to call webhook: {reason}"))),
        Ok(target) => {
            url = target.url.clone();
            match webhook_client::post_json(&target, review.to_string().into_bytes(), hook.timeout()).await {
                Err(reason) => Err(call_failed(hook, format!("failed to call webhook: {reason}"))),
                Ok((status, body)) => {
                    let (parsed, result) = interpret(hook, version, &uid, status, &body, object, warnings);
                    response = parsed;
                    result
                }
            }
        }
    };
    let outcome = match &result {
        Ok(patched) => AdmissionOutcome::Allowed { changed: patched.is_some() },
        Err(HookError::Call(error)) => {
            AdmissionOutcome::Failed { error: error.clone(), ignored: hook.ignores_failures() }
        }
        Err(HookError::Fatal(err)) => AdmissionOutcome::Failed { error: err.message.clone(), ignored: false },
        Err(HookError::Denied(err)) => AdmissionOutcome::Denied { message: err.message.clone() },
    };
    admission.record(AdmissionCall {
        configuration: hook.configuration.clone(),
        webhook: hook.name().to_string(),
        url,
        round,
        request: review,
        response,
        outcome,
        duration: started.elapsed(),
    });
    result
}

/// The AdmissionReview kube-apiserver sends (its Go types omit an empty name, namespace and subresource).
fn review_request(version: &str, attrs: &Attributes<'_>, object: &Value, uid: &str) -> Value {
    let res = attrs.res;
    let kind = json!({"group": res.group, "version": res.version, "kind": res.kind});
    let resource = json!({"group": res.group, "version": res.version, "resource": res.plural});
    let mut request = json!({
        "uid": uid,
        "kind": kind,
        "resource": resource,
        "requestKind": kind,
        "requestResource": resource,
        "operation": attrs.operation.as_str(),
        "userInfo": attrs.user,
        "object": object,
        "oldObject": attrs.old_object,
        "dryRun": attrs.dry_run,
        "options": attrs.options,
    });
    for (field, value) in [
        ("subResource", attrs.subresource),
        ("requestSubResource", attrs.subresource),
        ("name", attrs.name),
        ("namespace", attrs.namespace),
    ] {
        if !value.is_empty() {
            request[field] = json!(value);
        }
    }
    json!({"kind": "AdmissionReview", "apiVersion": format!("admission.k8s.io/{version}"), "request": request})
}

/// Where to send a webhook's calls: its URL, or its service through the endpoints set with
/// [`crate::sim::SimServer::set_service_endpoint`] (dialled there, but verified as `<service>.<namespace>.svc`
/// like in a cluster).
fn target(admission: &Admission, hook: &Hook) -> Result<Target, String> {
    let timeout = format!("timeout={}s", hook.timeout().as_secs());
    let config = &hook.spec.client_config;
    let ca_bundle = config.ca_bundle.as_ref().map(|b| b.0.clone()).unwrap_or_default();
    if let Some(url) = &config.url {
        let uri: Uri = url.parse().map_err(|e| format!("parsing {url:?}: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!("{url:?}: only https webhooks are called"));
        }
        let authority = uri.authority().ok_or_else(|| format!("{url:?} has no host"))?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        return Ok(Target {
            url: format!("{url}?{timeout}"),
            connect_host: host.clone(),
            connect_port: authority.port_u16().unwrap_or(443),
            server_name: host,
            authority: authority.to_string(),
            path_and_query: format!("{}?{timeout}", uri.path()),
            ca_bundle,
        });
    }
    let service = config.service.as_ref().ok_or("clientConfig has neither url nor service")?;
    let port = u16::try_from(service.port.unwrap_or(443)).map_err(|_| "service port out of range".to_string())?;
    let host = format!("{}.{}.svc", service.name, service.namespace);
    let path = service.path.as_deref().unwrap_or("/");
    let url = format!("https://{host}:{port}{path}?{timeout}");
    let endpoint = admission.endpoint(&service.namespace, &service.name, port).ok_or_else(|| {
        format!(
            "Post \"{url}\": dial tcp: lookup {host}: no such host (no endpoint for service {}/{} port {port}: \
             use SimServer::set_service_endpoint)",
            service.namespace, service.name
        )
    })?;
    let endpoint_uri: Uri = endpoint.parse().map_err(|e| format!("endpoint {endpoint:?}: {e}"))?;
    if endpoint_uri.scheme_str().is_some_and(|s| s != "https") {
        return Err(format!("endpoint {endpoint:?}: webhooks are only called over https"));
    }
    let endpoint_authority = endpoint_uri.authority().ok_or_else(|| format!("endpoint {endpoint:?} has no host"))?;
    Ok(Target {
        url,
        connect_host: endpoint_authority.host().trim_start_matches('[').trim_end_matches(']').to_string(),
        connect_port: endpoint_authority.port_u16().unwrap_or(443),
        server_name: host.clone(),
        authority: format!("{host}:{port}"),
        path_and_query: format!("{path}?{timeout}"),
        ca_bundle,
    })
}

/// client-go's wording for a non-2xx answer.
fn http_error(status: u16, body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        if let Some(message) = value["message"].as_str().filter(|m| value["kind"] == "Status" && !m.is_empty()) {
            return message.to_string();
        }
    }
    match status {
        404 => "the server could not find the requested resource".to_string(),
        500.. => {
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            format!("an error on the server ({text:?}) has prevented the request from succeeding")
        }
        _ => format!("the server responded with the status code {status} but did not return more information"),
    }
}

/// The Status a denial is answered with (`webhookerrors.ToStatusErr`).
fn denial_status(hook: &Hook, status: Option<&Value>) -> Value {
    let mut status = status.filter(|s| s.is_object()).cloned().unwrap_or_else(|| json!({}));
    let code = status["code"].as_u64().unwrap_or(0);
    if code < 400 {
        status["code"] = json!(400);
    }
    if matches!(status["status"].as_str(), None | Some("") | Some("Success")) {
        status["status"] = json!("Failure");
    }
    let denied_by = format!("admission webhook {:?} denied the request", hook.name());
    let message = status["message"].as_str().filter(|m| !m.is_empty()).map(str::to_string);
    let reason = status["reason"].as_str().filter(|r| !r.is_empty()).map(str::to_string);
    status["message"] = json!(match message.or(reason) {
        Some(why) => format!("{denied_by}: {why}"),
        None => format!("{denied_by} without explanation"),
    });
    status["kind"] = json!("Status");
    status["apiVersion"] = json!("v1");
    if !status["metadata"].is_object() {
        status["metadata"] = json!({});
    }
    status
}

/// Reads a webhook's answer as kube-apiserver does (`VerifyAdmissionResponse`, then the patch): the parsed
/// review (for the log) and the outcome.
fn interpret(
    hook: &Hook,
    version: &str,
    uid: &str,
    status: u16,
    body: &[u8],
    object: &Value,
    warnings: &mut Vec<String>,
) -> (Option<Value>, Result<Option<Value>, HookError>) {
    if !(200..300).contains(&status) {
        return (None, Err(call_failed(hook, format!("failed to call webhook: {}", http_error(status, body)))));
    }
    let review: Value = match serde_json::from_slice(body) {
        Ok(review) => review,
        Err(e) => return (None, Err(call_failed(hook, format!("failed to call webhook: {e}")))),
    };
    let result = read_review(hook, version, uid, &review, object, warnings);
    (Some(review), result)
}

fn read_review(
    hook: &Hook,
    version: &str,
    uid: &str,
    review: &Value,
    object: &Value,
    warnings: &mut Vec<String>,
) -> Result<Option<Value>, HookError> {
    let invalid = |why: String| Err(call_failed(hook, format!("received invalid webhook response: {why}")));
    let response = &review["response"];
    // `patch` is a byte array, base64 in JSON: a bad one fails decoding, before any verification.
    let patch = match response.get("patch") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| call_failed(hook, format!("failed to call webhook: illegal base64 data: {e}")))?,
        Some(other) => {
            return Err(call_failed(hook, format!("failed to call webhook: response.patch is not a string: {other}")))
        }
    };
    if !response.is_object() {
        return invalid("webhook response was absent".into());
    }
    if version == "v1" {
        // v1beta1 responses were never checked for uid and kind; v1 ones are.
        let got = response["uid"].as_str().unwrap_or_default();
        if got != uid {
            return invalid(format!("expected response.uid={uid:?}, got {got:?}"));
        }
        let api_version = review["apiVersion"].as_str().unwrap_or_default();
        let kind = review["kind"].as_str().unwrap_or_default();
        if (api_version, kind) != ("admission.k8s.io/v1", "AdmissionReview") {
            return invalid(format!(
                "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got {api_version}, Kind={kind}"
            ));
        }
    }
    let patch_type = response["patchType"].as_str().unwrap_or_default();
    if !patch.is_empty() && patch_type.is_empty() {
        return invalid("webhook returned response.patch but not response.patchType".into());
    }
    if !patch_type.is_empty() && patch.is_empty() {
        return invalid("webhook returned response.patchType but not response.patch".into());
    }
    warnings
        .extend(response["warnings"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string));
    if response["allowed"].as_bool() != Some(true) {
        return Err(HookError::Denied(ApiError::from_status(denial_status(hook, response.get("status")))));
    }
    if patch.is_empty() {
        return Ok(None);
    }
    let ops: json_patch::Patch =
        serde_json::from_slice(&patch).map_err(|e| HookError::Fatal(ApiError::internal(e.to_string())))?;
    if ops.0.is_empty() {
        return Ok(None);
    }
    if patch_type != "JSONPatch" {
        return Err(call_failed(hook, format!("unsupported patch type {patch_type:?}")));
    }
    let mut patched = object.clone();
    json_patch::patch(&mut patched, &ops).map_err(|e| HookError::Fatal(ApiError::internal(e.to_string())))?;
    Ok((patched != *object).then_some(patched))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn users_from_impersonation_headers() {
        assert_eq!(user_info(&HeaderMap::new())["username"], "kubernetes-admin");
        let mut headers = HeaderMap::new();
        headers.insert(
            "impersonate-user",
            HeaderValue::from_static("system:serviceaccount:kube-system:replicaset-controller"),
        );
        let user = user_info(&headers);
        assert_eq!(user["username"], "system:serviceaccount:kube-system:replicaset-controller");
        assert_eq!(
            user["groups"],
            json!(["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"])
        );
        headers.append("impersonate-group", HeaderValue::from_static("ops"));
        headers.insert("impersonate-uid", HeaderValue::from_static("u-1"));
        let user = user_info(&headers);
        assert_eq!(
            (user["groups"].clone(), user["uid"].clone()),
            (json!(["ops", "system:authenticated"]), json!("u-1"))
        );
    }

    fn hook() -> Hook {
        let spec = serde_json::from_value(json!({"name": "pods.coracle.dev", "sideEffects": "None",
            "admissionReviewVersions": ["v1"], "clientConfig": {"url": "https://127.0.0.1:1/x"}}))
        .expect("webhook");
        Hook { configuration: "c".into(), index: 0, spec }
    }

    #[test]
    fn denials_keep_the_webhooks_status() {
        let status = denial_status(&hook(), Some(&json!({"code": 403, "reason": "Forbidden", "message": "no"})));
        assert_eq!(status["message"], "admission webhook \"pods.coracle.dev\" denied the request: no");
        assert_eq!((status["code"].clone(), status["status"].clone()), (json!(403), json!("Failure")));
        let status = denial_status(&hook(), Some(&json!({"code": 200})));
        assert_eq!(status["code"], 400);
        assert_eq!(status["message"], "admission webhook \"pods.coracle.dev\" denied the request without explanation");
    }

    #[test]
    fn responses_are_verified_before_use() {
        let object = json!({"metadata": {"name": "p"}});
        let mut warnings = Vec::new();
        let patch = base64::engine::general_purpose::STANDARD
            .encode(r#"[{"op":"add","path":"/metadata/labels","value":{"a":"b"}}]"#);
        fn review(response: Value) -> Value {
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
        }
        let read =
            |review: Value, warnings: &mut Vec<String>| read_review(&hook(), "v1", "u1", &review, &object, warnings);
        let call_error = |result: Result<Option<Value>, HookError>| match result {
            Err(HookError::Call(message)) => message,
            Err(HookError::Denied(e) | HookError::Fatal(e)) => panic!("request error {e}"),
            Ok(v) => panic!("accepted: {v:?}"),
        };

        let ok = read(
            review(json!({"uid": "u1", "allowed": true, "patchType": "JSONPatch", "patch": patch, "warnings": ["w"]})),
            &mut warnings,
        );
        assert_eq!(ok.ok().flatten().expect("patched")["metadata"]["labels"]["a"], "b");
        assert_eq!(warnings, ["w"]);
        let wrong_uid = call_error(read(review(json!({"uid": "u2", "allowed": true})), &mut warnings));
        let expected = "failed calling webhook \"pods.coracle.dev\": received invalid webhook response: \
                        expected response.uid=\"u1\", got \"u2\"";
        assert_eq!(wrong_uid, expected);
        let no_kind = call_error(read(json!({"response": {"uid": "u1", "allowed": true}}), &mut warnings));
        assert!(
            no_kind.contains("expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview"),
            "{no_kind}"
        );
        let no_type = call_error(read(review(json!({"uid": "u1", "allowed": true, "patch": patch})), &mut warnings));
        assert!(no_type.ends_with("webhook returned response.patch but not response.patchType"), "{no_type}");
        let bad_type = call_error(read(
            review(json!({"uid": "u1", "allowed": true, "patchType": "Merge", "patch": patch})),
            &mut warnings,
        ));
        assert!(bad_type.ends_with("unsupported patch type \"Merge\""), "{bad_type}");
        let absent = call_error(read(review(Value::Null), &mut warnings));
        assert!(absent.ends_with("webhook response was absent"), "{absent}");

        let bad_path =
            base64::engine::general_purpose::STANDARD.encode(r#"[{"op":"replace","path":"/spec/x","value":1}]"#);
        match read(
            review(json!({"uid": "u1", "allowed": true, "patchType": "JSONPatch", "patch": bad_path})),
            &mut warnings,
        ) {
            Err(HookError::Fatal(e)) => assert_eq!((e.code, e.reason), (500, "InternalError")),
            _ => panic!("a patch that does not apply fails the request"),
        }
        let unchanged =
            base64::engine::general_purpose::STANDARD.encode(r#"[{"op":"add","path":"/metadata/name","value":"p"}]"#);
        let same = read(
            review(json!({"uid": "u1", "allowed": true, "patchType": "JSONPatch", "patch": unchanged})),
            &mut warnings,
        );
        assert!(matches!(same, Ok(None)), "a patch that changes nothing is no change");
    }

    #[test]
    fn reviews_omit_empty_names_like_the_go_types() {
        let pods = resources::find("pods").expect("pods");
        let user = json!({"username": "u"});
        let attrs = Attributes {
            res: pods,
            subresource: "",
            operation: Operation::Create,
            namespace: "shop",
            name: "",
            old_object: None,
            dry_run: false,
            options: json!({"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}),
            user: &user,
        };
        let review = review_request("v1", &attrs, &json!({"metadata": {"generateName": "web-"}}), "u1");
        let request = &review["request"];
        assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
        assert!(request.get("name").is_none() && request.get("subResource").is_none());
        assert_eq!(request["namespace"], "shop");
        assert_eq!(request["resource"], json!({"group": "", "version": "v1", "resource": "pods"}));
        assert_eq!((request["oldObject"].clone(), request["dryRun"].clone()), (Value::Null, json!(false)));
    }
}
