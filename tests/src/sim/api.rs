//! HTTP routing of the simulated API server: discovery documents and the REST verbs on resources.

use std::cell::Cell;
use std::collections::HashMap;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::admission::{self, Admission, Attributes, Operation};
use super::errors::ApiError;
use super::openapi;
use super::patch::{self, PatchKind};
use super::requests::{RecordedRequest, RequestLog};
use super::resources::{self, ResourceType};
use super::selectors::{FieldSelector, LabelSelector};
use super::store::Store;
use super::table;
use super::watch::{self as watch_stream, WatchRequest};

/// Largest request body accepted.
const BODY_LIMIT: usize = 64 << 20;
/// Watches without `timeoutSeconds` end after this long, as a real server closes them after 30-60 minutes.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often an update whose object changed while webhooks ran is redone (the API server retries such
/// conflicts inside its storage update too).
const UPDATE_ATTEMPTS: usize = 5;

#[derive(Clone)]
pub(crate) struct AppState {
    pub store: Store,
    pub log: RequestLog,
    pub admission: Admission,
    pub shutdown: watch::Receiver<bool>,
    /// `127.0.0.1:<port>`, for `GET /api`.
    pub address: String,
}

pub(crate) fn router(state: AppState) -> Router {
    // Kubernetes paths overlap (`/api/v1/namespaces/{name}` vs `/api/v1/namespaces/{ns}/{plural}`), so one
    // handler parses them instead of axum's router.
    Router::new().fallback(handle).with_state(state)
}

async fn handle(State(state): State<AppState>, request: Request) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    // Who asked: the bearer token (no authentication here; tests audit each identity's calls).
    let user = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let mut warnings = Vec::new();
    let mut response = dispatch(&state, request, &mut warnings).await.unwrap_or_else(|err| error_response(&err));
    add_warnings(&mut response, &warnings);
    state.log.record(RecordedRequest { method, path, query, status: response.status().as_u16(), user });
    response
}

/// Admission warnings as `Warning: 299 - "<text>"` headers, each text once, as kube-apiserver sends them.
fn add_warnings(response: &mut Response, warnings: &[String]) {
    let mut sent: Vec<&String> = Vec::new();
    for warning in warnings {
        if sent.contains(&warning) {
            continue;
        }
        sent.push(warning);
        let text: String = warning
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>()
            .replace('\\', "\\\\")
            .replace('"', "\\\"");
        if let Ok(value) = HeaderValue::from_bytes(format!("299 - \"{text}\"").as_bytes()) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

fn error_response(err: &ApiError) -> Response {
    json_response(StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &err.to_status())
}

fn ok(value: Value) -> Result<Response, ApiError> {
    Ok(json_response(StatusCode::OK, &value))
}

/// The parsed parts of a request that the resource verbs need.
struct Call {
    method: Method,
    params: HashMap<String, String>,
    content_type: String,
    accept: String,
    body: Bytes,
    /// `request.userInfo` for admission.
    user: Value,
}

impl Call {
    fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    fn flag(&self, name: &str) -> bool {
        self.params.get(name).is_some_and(|v| v.is_empty() || v == "true" || v == "1")
    }

    fn dry_run(&self) -> bool {
        self.param("dryRun") == Some("All")
    }

    /// `request.options` of an AdmissionReview: the Create/UpdateOptions this request carried.
    fn options(&self, operation: Operation) -> Value {
        let mut options = json!({"kind": operation.options_kind(), "apiVersion": "meta.k8s.io/v1"});
        if self.dry_run() {
            options["dryRun"] = json!(["All"]);
        }
        for field in ["fieldManager", "fieldValidation"] {
            if let Some(value) = self.param(field) {
                options[field] = json!(value);
            }
        }
        options
    }

    fn json_body(&self) -> Result<Value, ApiError> {
        if self.content_type.contains("yaml") {
            let yaml: serde_yaml::Value = serde_yaml::from_slice(&self.body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML body: {e}")))?;
            return serde_json::to_value(yaml)
                .map_err(|e| ApiError::bad_request(format!("YAML body is not JSON-compatible: {e}")));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))
    }

    fn table(&self) -> Option<&str> {
        table::wanted(&self.accept).then(|| self.param("includeObject").unwrap_or("Metadata"))
    }

    fn metadata_only(&self) -> bool {
        table::metadata_only(&self.accept)
    }

    fn selectors(&self) -> Result<(LabelSelector, FieldSelector), ApiError> {
        let labels =
            LabelSelector::parse(self.param("labelSelector").unwrap_or_default()).map_err(ApiError::bad_request)?;
        let fields =
            FieldSelector::parse(self.param("fieldSelector").unwrap_or_default()).map_err(ApiError::bad_request)?;
        Ok((labels, fields))
    }
}

async fn dispatch(state: &AppState, request: Request, warnings: &mut Vec<String>) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let params = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?
        .0;
    let segments: Vec<&str> = parts.uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let discovery = match segments.as_slice() {
        ["version"] => Some(Some(resources::version())),
        ["api"] => Some(Some(resources::api_versions(&state.address))),
        ["apis"] => Some(Some(resources::api_group_list())),
        ["apis", group] => Some(resources::api_group_doc(group)),
        ["api", version] => Some(resources::api_resource_list("", version)),
        ["apis", group, version] => Some(resources::api_resource_list(group, version)),
        ["openapi", "v3"] => Some(Some(openapi::root())),
        ["openapi", "v3", "api", version] => Some(openapi::group_version("", version)),
        ["openapi", "v3", "apis", group, version] => Some(openapi::group_version(group, version)),
        ["healthz" | "readyz" | "livez"] => return Ok((StatusCode::OK, "ok").into_response()),
        _ => None,
    };
    if let Some(doc) = discovery {
        if parts.method != Method::GET {
            return Err(ApiError::method_not_allowed(parts.method.as_str()));
        }
        return doc.ok_or_else(ApiError::path_not_found).and_then(ok);
    }
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::path_not_found()),
    };
    let header = |name: header::HeaderName| {
        parts.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
    };
    let body = axum::body::to_bytes(body, BODY_LIMIT)
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
    let mut call = Call {
        method: parts.method.clone(),
        params,
        content_type: header(header::CONTENT_TYPE),
        accept: header(header::ACCEPT),
        body,
        user: admission::user_info(&parts.headers),
    };
    // Legacy `/api/v1/watch/...` paths are the same as `?watch=true`.
    let rest = match rest {
        ["watch", tail @ ..] => {
            call.params.insert("watch".into(), "true".into());
            tail
        }
        _ => rest,
    };
    let target = Target::parse(group, version, rest)?;
    resource_call(state, &target, &call, warnings).await
}

/// What a resource path names.
struct Target {
    res: &'static ResourceType,
    /// From the path; `None` for cluster-scoped types and all-namespace lists.
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

impl Target {
    fn parse(group: &str, version: &str, rest: &[&str]) -> Result<Self, ApiError> {
        let object = |res: &'static ResourceType, namespace: Option<&str>, tail: &[&str]| -> Result<Self, ApiError> {
            let (name, status) = match tail {
                [] => (None, false),
                [name] => (Some(name.to_string()), false),
                [name, "status"] if res.status => (Some(name.to_string()), true),
                _ => return Err(ApiError::path_not_found()),
            };
            Ok(Self { res, namespace: namespace.map(str::to_string), name, status })
        };
        if let ["namespaces", ns, plural, tail @ ..] = rest {
            if let Some(res) = resources::by_path(group, version, plural).filter(|r| r.namespaced) {
                return object(res, Some(ns), tail);
            }
        }
        let [plural, tail @ ..] = rest else { return Err(ApiError::path_not_found()) };
        let res = resources::by_path(group, version, plural).ok_or_else(ApiError::path_not_found)?;
        if res.namespaced && !tail.is_empty() {
            return Err(ApiError::path_not_found());
        }
        object(res, None, tail)
    }

    /// The namespace an object lives in ("" for cluster-scoped types).
    fn object_namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or_default()
    }
}

async fn resource_call(
    state: &AppState,
    target: &Target,
    call: &Call,
    warnings: &mut Vec<String>,
) -> Result<Response, ApiError> {
    let res = target.res;
    let store = &state.store;
    let Some(name) = target.name.as_deref() else {
        return match call.method {
            Method::GET if call.flag("watch") => watch(state, target, call),
            Method::GET => list(store, target, call),
            Method::POST if res.namespaced && target.namespace.is_none() => Err(ApiError::method_not_allowed("POST")),
            Method::POST => {
                let created = create(state, target, call, call.json_body()?, warnings).await?;
                Ok(json_response(StatusCode::CREATED, &created))
            }
            Method::DELETE => delete_collection(store, target, call),
            _ => Err(ApiError::method_not_allowed(call.method.as_str())),
        };
    };
    let ns = target.object_namespace();
    match call.method {
        Method::GET => {
            let object = store.get_object(res, ns, name)?;
            match call.table() {
                Some(include) => {
                    let meta = json!({"resourceVersion": object["metadata"]["resourceVersion"]});
                    ok(table::render(res, std::slice::from_ref(&object), meta, true, include))
                }
                None if call.metadata_only() => ok(table::partial(&object)),
                None => ok(object),
            }
        }
        Method::PUT => {
            let body = call.json_body()?;
            ok(update(state, target, name, call, warnings, |_| Ok(body.clone())).await?)
        }
        Method::PATCH => patch(state, target, name, call, warnings).await,
        Method::DELETE if !target.status => {
            let options = if call.body.iter().all(u8::is_ascii_whitespace) { json!({}) } else { call.json_body()? };
            let precondition = |field: &str| options["preconditions"][field].as_str();
            let dry_run = call.dry_run() || options["dryRun"].as_array().is_some_and(|d| d.iter().any(|v| v == "All"));
            ok(store.delete_object(res, ns, name, precondition("uid"), precondition("resourceVersion"), dry_run)?)
        }
        _ => Err(ApiError::method_not_allowed(call.method.as_str())),
    }
}

fn list(store: &Store, target: &Target, call: &Call) -> Result<Response, ApiError> {
    let res = target.res;
    let (labels, fields) = call.selectors()?;
    let limit = match call.param("limit") {
        Some(l) => Some(l.parse::<usize>().map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?),
        None => None,
    };
    let page = store.list_page(res, target.namespace.as_deref(), &labels, &fields, limit, call.param("continue"))?;
    let mut meta = json!({"resourceVersion": page.resource_version.to_string()});
    if let Some(token) = page.continue_token {
        meta["continue"] = json!(token);
    }
    if let Some(remaining) = page.remaining {
        meta["remainingItemCount"] = json!(remaining);
    }
    if let Some(include) = call.table() {
        return ok(table::render(res, &page.items, meta, true, include));
    }
    if call.metadata_only() {
        let items: Vec<Value> = page.items.iter().map(table::partial).collect();
        let kind = "PartialObjectMetadataList";
        return ok(json!({"kind": kind, "apiVersion": "meta.k8s.io/v1", "metadata": meta, "items": items}));
    }
    let kind = format!("{}List", res.kind);
    ok(json!({"kind": kind, "apiVersion": res.api_version(), "metadata": meta, "items": page.items}))
}

fn watch(state: &AppState, target: &Target, call: &Call) -> Result<Response, ApiError> {
    let (labels, fields) = call.selectors()?;
    let since = match call.param("resourceVersion") {
        Some(rv) => {
            Some(rv.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?)
        }
        None => None,
    };
    let timeout = match call.param("timeoutSeconds") {
        Some(t) => {
            Duration::from_secs(t.parse().map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?)
        }
        None => DEFAULT_WATCH_TIMEOUT,
    };
    let request = WatchRequest {
        res: target.res,
        namespace: target.namespace.clone(),
        labels,
        fields,
        since,
        timeout,
        table: call.table().map(str::to_string),
        metadata_only: call.metadata_only(),
        initial_events_end: call.flag("sendInitialEvents"),
    };
    let body: Body = watch_stream::stream(state.store.clone(), request, state.shutdown.clone())?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// A create through mutating admission: the webhooks see the object before it has a uid (or, with
/// `generateName`, a name); the store assigns those after.
async fn create(
    state: &AppState,
    target: &Target,
    call: &Call,
    body: Value,
    warnings: &mut Vec<String>,
) -> Result<Value, ApiError> {
    let res = target.res;
    let mut object = Store::prepare_create(res, target.namespace.as_deref(), body)?;
    if object["metadata"].get("creationTimestamp").is_none() {
        // Go serializes the zero time this way, and the timestamp is set only after admission.
        object["metadata"]["creationTimestamp"] = Value::Null;
    }
    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let namespace = if res.namespaced {
        object["metadata"]["namespace"].as_str().unwrap_or_default().to_string()
    } else if res.group.is_empty() && res.plural == "namespaces" {
        name.clone()
    } else {
        String::new()
    };
    let attrs = Attributes {
        res,
        subresource: "",
        operation: Operation::Create,
        namespace: &namespace,
        name: &name,
        old_object: None,
        dry_run: call.dry_run(),
        options: call.options(Operation::Create),
        user: &call.user,
    };
    let object = admission::admit(&state.store, &state.admission, &attrs, object, warnings).await?;
    admission::validate(&state.store, &state.admission, &attrs, &object, warnings).await?;
    state.store.create(res, target.namespace.as_deref(), object, call.dry_run())
}

/// An update (PUT, PATCH, either on `/status` too) through mutating admission. `proposed` maps the current
/// object to the requested one. Without a webhook whose rules match, it is one locked read-modify-write;
/// with one, the webhooks run unlocked on a snapshot, and the write is redone if the object changed
/// meanwhile.
async fn update(
    state: &AppState,
    target: &Target,
    name: &str,
    call: &Call,
    warnings: &mut Vec<String>,
    proposed: impl Fn(&Value) -> Result<Value, ApiError>,
) -> Result<Value, ApiError> {
    let (res, store) = (target.res, &state.store);
    let ns = target.object_namespace();
    let subresource = if target.status { "status" } else { "" };
    let request_namespace = if res.group.is_empty() && res.plural == "namespaces" { name } else { ns };
    if !admission::may_call(store, res, subresource, Operation::Update, request_namespace)? {
        return store.update(res, ns, name, target.status, call.dry_run(), proposed);
    }
    for _ in 0..UPDATE_ATTEMPTS {
        let current = store.get_object(res, ns, name)?;
        let object = Store::prepare_update(res, ns, name, proposed(&current)?)?;
        let attrs = Attributes {
            res,
            subresource,
            operation: Operation::Update,
            namespace: request_namespace,
            name,
            old_object: Some(&current),
            dry_run: call.dry_run(),
            options: call.options(Operation::Update),
            user: &call.user,
        };
        let admitted = admission::admit(store, &state.admission, &attrs, object, warnings).await?;
        admission::validate(store, &state.admission, &attrs, &admitted, warnings).await?;
        let raced = Cell::new(false);
        let seen = &current["metadata"]["resourceVersion"];
        let result = store.update(res, ns, name, target.status, call.dry_run(), |now| {
            if now["metadata"]["resourceVersion"] != *seen {
                raced.set(true);
                return Err(ApiError::stale(res, name));
            }
            Ok(admitted.clone())
        });
        if !raced.get() {
            return result;
        }
    }
    Err(ApiError::stale(res, name))
}

async fn patch(
    state: &AppState,
    target: &Target,
    name: &str,
    call: &Call,
    warnings: &mut Vec<String>,
) -> Result<Response, ApiError> {
    let (res, store) = (target.res, &state.store);
    let ns = target.object_namespace();
    let kind = PatchKind::from_content_type(&call.content_type)
        .ok_or_else(|| ApiError::unsupported_media_type(&call.content_type))?;
    let patch = patch::parse_body(kind, &call.body)?;
    // Server-side apply creates what does not exist yet.
    if kind == PatchKind::Apply && !target.status && store.get_object(res, ns, name).is_err() {
        let mut body = patch;
        let Some(meta) = body.as_object_mut().map(|m| m.entry("metadata").or_insert_with(|| json!({}))) else {
            return Err(ApiError::bad_request("an apply patch must be an object"));
        };
        let Some(meta) = meta.as_object_mut() else {
            return Err(ApiError::bad_request("metadata must be an object"));
        };
        meta.insert("name".into(), json!(name));
        let created = create(state, target, call, body, warnings).await?;
        return Ok(json_response(StatusCode::CREATED, &created));
    }
    let patched = update(state, target, name, call, warnings, |current| {
        let mut doc = current.clone();
        patch::apply(kind, &mut doc, &patch)?;
        Ok(doc)
    })
    .await?;
    ok(patched)
}

fn delete_collection(store: &Store, target: &Target, call: &Call) -> Result<Response, ApiError> {
    let res = target.res;
    let (labels, fields) = call.selectors()?;
    let page = store.list_page(res, target.namespace.as_deref(), &labels, &fields, None, None)?;
    let mut deleted = Vec::new();
    for object in page.items {
        let ns = object["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        match store.delete_object(res, ns, name, None, None, call.dry_run()) {
            Ok(gone) => deleted.push(gone),
            // Deleted concurrently since the list: nothing left to do for it.
            Err(err) if err.code == 404 => {}
            Err(err) => return Err(err),
        }
    }
    let meta = json!({"resourceVersion": store.resource_version().to_string()});
    ok(
        json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(), "metadata": meta, "items": deleted}),
    )
}
