//! The simulated cluster's object store: JSON objects keyed by resource type, namespace and name, one global
//! resourceVersion counter, and a bounded history of changes that watches replay from.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{anyhow, bail, Context as _};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use super::errors::ApiError;
use super::resources::{self, ResourceType, RESOURCES};
use super::selectors::{FieldSelector, LabelSelector};
use super::validation::validate_metadata;
use super::webhooks;

/// How many changes watches can resume from; older resourceVersions get 410 Expired, as after etcd compaction.
const HISTORY_LIMIT: usize = 10_000;

/// (index of the type in [`RESOURCES`], namespace or "" for cluster-scoped, name).
type Key = (usize, String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    Added,
    Modified,
    Deleted,
}

impl ChangeType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One committed write, as watches see it.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub resource: usize,
    pub namespace: String,
    pub change: ChangeType,
    pub object: Value,
    /// The object before a modification; a watch with a selector turns "stopped matching" into DELETED.
    pub previous: Option<Value>,
}

/// One page of a list.
pub struct ListPage {
    pub items: Vec<Value>,
    pub resource_version: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<usize>,
}

/// Whether a create comes from an API client (server-owned fields are reset, metadata validated) or from
/// a test fixture (given uids, timestamps and status are kept as they are).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Api,
    Fixture,
}

#[derive(Default)]
struct Inner {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    history: VecDeque<Arc<Change>>,
    /// Every change with a resourceVersion above this one is still in `history`.
    trimmed_through: u64,
}

/// Thread-safe handle to the store; clones share it.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
    latest: Arc<watch::Sender<u64>>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn meta_str<'a>(object: &'a Value, field: &str) -> &'a str {
    object["metadata"][field].as_str().unwrap_or_default()
}

/// Same random suffix alphabet as the API server's `generateName` (no vowels, no look-alikes).
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4().as_bytes()[..5].iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

fn encode_continue(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}").bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(token: &str) -> Result<(String, String), ApiError> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
    if !token.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes: Vec<u8> = (0..token.len())
        .step_by(2)
        .map(|i| token.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (ns, name) = text.split_once('/').ok_or_else(bad)?;
    Ok((ns.to_string(), name.to_string()))
}

/// Without metadata and status: what a change to must bump `metadata.generation`.
fn spec_part(object: &Value) -> Value {
    let mut v = object.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    v
}

/// The API server stores a Secret's `stringData` base64-encoded in `data` (overriding the same keys).
fn fold_string_data(res: &ResourceType, object: &mut Value) -> Result<(), ApiError> {
    use base64::Engine as _;
    if res.plural != "secrets" {
        return Ok(());
    }
    let Some(map) = object.as_object_mut() else { return Ok(()) };
    let Some(string_data) = map.remove("stringData") else { return Ok(()) };
    let Value::Object(entries) = string_data else {
        return Err(ApiError::bad_request("stringData must be an object of strings"));
    };
    let data = map.entry("data").or_insert_with(|| json!({}));
    let Some(data) = data.as_object_mut() else {
        return Err(ApiError::bad_request("data must be an object of base64 strings"));
    };
    for (key, value) in entries {
        let Some(text) = value.as_str() else {
            return Err(ApiError::bad_request(format!("stringData.{key} must be a string")));
        };
        data.insert(key, json!(base64::engine::general_purpose::STANDARD.encode(text)));
    }
    Ok(())
}

fn resource_arg(resource: &str) -> anyhow::Result<&'static ResourceType> {
    resources::find(resource).ok_or_else(|| anyhow!("the simulation does not serve resource {resource:?}"))
}

fn typed_resource<K: k8s_openapi::Resource>() -> anyhow::Result<&'static ResourceType> {
    resources::by_kind(K::API_VERSION, K::KIND)
        .ok_or_else(|| anyhow!("the simulation does not serve {} {}", K::API_VERSION, K::KIND))
}

impl Store {
    pub fn new() -> Self {
        let (latest, _) = watch::channel(0);
        Self { inner: Arc::new(Mutex::new(Inner::default())), latest: Arc::new(latest) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-written entry (writes are single inserts).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Notified with the latest resourceVersion after every commit.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// Bumps the resourceVersion, stores (or removes) the object and records the change.
    fn commit(
        &self,
        inner: &mut Inner,
        key: Key,
        change: ChangeType,
        mut object: Value,
        previous: Option<Value>,
    ) -> Value {
        inner.rv += 1;
        let rv = inner.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        match change {
            ChangeType::Deleted => {
                inner.objects.remove(&key);
            }
            _ => {
                inner.objects.insert(key.clone(), object.clone());
            }
        }
        let (resource, namespace, _) = key;
        inner.history.push_back(Arc::new(Change { rv, resource, namespace, change, object: object.clone(), previous }));
        while inner.history.len() > HISTORY_LIMIT {
            if let Some(old) = inner.history.pop_front() {
                inner.trimmed_through = old.rv;
            }
        }
        self.latest.send_replace(rv);
        object
    }

    /// A new object as admission sees it: apiVersion/kind checked against the type and filled in, the
    /// namespace checked against the URL and filled in, `stringData` folded into `data`, webhook
    /// configurations defaulted and validated; no uid, timestamps or generated name yet.
    pub(crate) fn prepare_create(
        res: &'static ResourceType,
        url_namespace: Option<&str>,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        fold_string_data(res, &mut object)?;
        let Some(map) = object.as_object_mut() else {
            return Err(ApiError::bad_request("the request body must be a JSON object"));
        };
        check_type(res, map)?;
        let meta = map.entry("metadata").or_insert_with(|| json!({}));
        let Some(meta) = meta.as_object_mut() else {
            return Err(ApiError::bad_request("metadata must be an object"));
        };
        let body_ns = meta.get("namespace").and_then(Value::as_str).unwrap_or_default().to_string();
        if res.namespaced {
            let ns = match url_namespace {
                Some(url_ns) if !body_ns.is_empty() && body_ns != url_ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
                Some(url_ns) => url_ns.to_string(),
                None if body_ns.is_empty() => "default".to_string(),
                None => body_ns,
            };
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        if res.plural == webhooks::PLURAL {
            webhooks::set_defaults(&mut object);
            webhooks::validate(res, &object)?;
        }
        Ok(object)
    }

    /// An update as admission sees it: apiVersion/kind checked and filled in, name and namespace from the URL
    /// (400 when the body names others).
    pub(crate) fn prepare_update(
        res: &'static ResourceType,
        namespace: &str,
        name: &str,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        let Some(map) = object.as_object_mut() else {
            return Err(ApiError::bad_request("the request body must be a JSON object"));
        };
        check_type(res, map)?;
        set_identity(res, namespace, name, map)?;
        Ok(object)
    }

    /// Checks apiVersion/kind/namespace against the type and the URL and fills server-owned metadata.
    fn normalize_new(
        res: &'static ResourceType,
        url_namespace: Option<&str>,
        object: Value,
        origin: Origin,
    ) -> Result<Value, ApiError> {
        let mut object = Self::prepare_create(res, url_namespace, object)?;
        let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
            return Err(ApiError::bad_request("metadata must be an object"));
        };
        let has_uid = meta.get("uid").and_then(Value::as_str).is_some_and(|u| !u.is_empty());
        if origin == Origin::Api || !has_uid {
            meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        }
        if origin == Origin::Api || !meta.contains_key("creationTimestamp") {
            meta.insert("creationTimestamp".into(), json!(now()));
        }
        if origin == Origin::Api || !meta.contains_key("generation") {
            meta.insert("generation".into(), json!(1));
        }
        if origin == Origin::Api {
            meta.remove("deletionTimestamp");
            meta.remove("deletionGracePeriodSeconds");
        }
        // The phase a new object starts in, unless a fixture says otherwise.
        let initial_phase = match res.plural {
            "namespaces" => Some("Active"),
            "pods" | "persistentvolumeclaims" | "persistentvolumes" => Some("Pending"),
            _ => None,
        };
        if let Some(phase) = initial_phase.filter(|_| object.pointer("/status/phase").is_none()) {
            object["status"]["phase"] = json!(phase);
        }
        Ok(object)
    }

    /// Creates an object as `POST` does: server-assigned uid, timestamps and resourceVersion, name from
    /// `generateName`, 409 AlreadyExists when the name is taken. Namespaces need not exist (the simulation
    /// is lenient there so fixtures and tests need not create them first).
    pub(crate) fn create(
        &self,
        res: &'static ResourceType,
        url_namespace: Option<&str>,
        body: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        if body.pointer("/metadata/resourceVersion").and_then(Value::as_str).is_some_and(|rv| !rv.is_empty()) {
            return Err(ApiError::bad_request("resourceVersion should not be set on objects to be created"));
        }
        let mut object = Self::normalize_new(res, url_namespace, body, Origin::Api)?;
        let mut inner = self.lock();
        let ns = meta_str(&object, "namespace").to_string();
        if meta_str(&object, "name").is_empty() {
            let prefix = meta_str(&object, "generateName").to_string();
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    res,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
            let name = loop {
                let candidate = format!("{prefix}{}", random_suffix());
                if !inner.objects.contains_key(&(res.index(), ns.clone(), candidate.clone())) {
                    break candidate;
                }
            };
            object["metadata"]["name"] = json!(name);
        }
        validate_metadata(res, &object)?;
        let name = meta_str(&object, "name").to_string();
        let key = (res.index(), ns, name.clone());
        if inner.objects.contains_key(&key) {
            return Err(ApiError::already_exists(res, &name));
        }
        if dry_run {
            return Ok(object);
        }
        Ok(self.commit(&mut inner, key, ChangeType::Added, object, None))
    }

    pub(crate) fn get_object(
        &self,
        res: &'static ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.lock()
            .objects
            .get(&(res.index(), namespace.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(res, name))
    }

    /// One page of the objects of a type (in one namespace, or all), in (namespace, name) order.
    pub(crate) fn list_page(
        &self,
        res: &'static ResourceType,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        let after = continue_token.filter(|t| !t.is_empty()).map(decode_continue).transpose()?;
        let inner = self.lock();
        let idx = res.index();
        let start = (idx, namespace.unwrap_or_default().to_string(), String::new());
        let mut matching = inner
            .objects
            .range(start..)
            .take_while(|((i, ns, _), _)| *i == idx && namespace.is_none_or(|want| want == ns))
            .filter(|((_, ns, name), _)| after.as_ref().is_none_or(|(a_ns, a_name)| (ns, name) > (a_ns, a_name)))
            .filter(|(_, obj)| labels.matches(obj) && fields.matches(obj));
        let limit = limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut last = None;
        for ((_, ns, name), obj) in matching.by_ref() {
            items.push(obj.clone());
            last = Some((ns, name));
            if items.len() == limit {
                break;
            }
        }
        let rest = matching.count();
        let (continue_token, remaining) = match last {
            Some((ns, name)) if rest > 0 => {
                let remaining = (labels.is_empty() && fields.is_empty()).then_some(rest);
                (Some(encode_continue(ns, name)), remaining)
            }
            _ => (None, None),
        };
        Ok(ListPage { items, resource_version: inner.rv, continue_token, remaining })
    }

    /// Read-modify-write of one object under the store lock. `proposed` maps the current object to the
    /// requested one; a non-empty `metadata.resourceVersion` in it must equal the current one (409 Conflict
    /// otherwise). Server-owned fields are restored, status changes are ignored on the main endpoint of types
    /// with a status subresource, and only status is taken through it. A no-op write keeps the
    /// resourceVersion; clearing the last finalizer of an object being deleted deletes it.
    pub(crate) fn update(
        &self,
        res: &'static ResourceType,
        namespace: &str,
        name: &str,
        status_only: bool,
        dry_run: bool,
        proposed: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = (res.index(), namespace.to_string(), name.to_string());
        let current = inner.objects.get(&key).cloned().ok_or_else(|| ApiError::not_found(res, name))?;
        let mut next = proposed(&current)?;
        let Some(map) = next.as_object_mut() else {
            return Err(ApiError::bad_request("the request body must be a JSON object"));
        };
        let current_rv = meta_str(&current, "resourceVersion");
        let wanted_rv = map.get("metadata").and_then(|m| m.get("resourceVersion")).and_then(Value::as_str);
        if wanted_rv.is_some_and(|rv| !rv.is_empty() && rv != current_rv) {
            return Err(ApiError::stale(res, name));
        }
        let mut next = if status_only {
            let mut updated = current.clone();
            match map.get("status") {
                Some(status) => updated["status"] = status.clone(),
                None => {
                    if let Some(m) = updated.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            updated
        } else {
            check_type(res, map)?;
            let meta = set_identity(res, namespace, name, map)?;
            for server_owned in
                ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"]
            {
                match current["metadata"].get(server_owned) {
                    Some(v) => meta.insert(server_owned.into(), v.clone()),
                    None => meta.remove(server_owned),
                };
            }
            if res.status {
                match current.get("status") {
                    Some(status) => map.insert("status".into(), status.clone()),
                    None => map.remove("status"),
                };
            }
            fold_string_data(res, &mut next)?;
            if res.plural == webhooks::PLURAL {
                webhooks::set_defaults(&mut next);
                webhooks::validate(res, &next)?;
            }
            if spec_part(&next) != spec_part(&current) {
                let generation = current["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
                next["metadata"]["generation"] = json!(generation);
            }
            validate_metadata(res, &next)?;
            next
        };
        next["metadata"]["resourceVersion"] = json!(current_rv);
        let finalized = next["metadata"].get("deletionTimestamp").is_some()
            && next["metadata"]["finalizers"].as_array().is_none_or(Vec::is_empty);
        if next == current && !finalized {
            return Ok(current);
        }
        if dry_run {
            return Ok(next);
        }
        let change = if finalized { ChangeType::Deleted } else { ChangeType::Modified };
        Ok(self.commit(&mut inner, key, change, next, Some(current)))
    }

    /// Deletes an object: objects with finalizers get a deletionTimestamp and stay until an update clears
    /// them; deleting a namespace deletes everything in it. `uid`/`resource_version` are DeleteOptions
    /// preconditions.
    pub(crate) fn delete_object(
        &self,
        res: &'static ResourceType,
        namespace: &str,
        name: &str,
        uid: Option<&str>,
        resource_version: Option<&str>,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = (res.index(), namespace.to_string(), name.to_string());
        let current = inner.objects.get(&key).cloned().ok_or_else(|| ApiError::not_found(res, name))?;
        for (field, want) in [("uid", uid), ("resourceVersion", resource_version)] {
            let have = meta_str(&current, field);
            if let Some(want) = want.filter(|w| *w != have) {
                let why =
                    format!("Precondition failed: {field} in precondition: {want}, {field} in object meta: {have}");
                return Err(ApiError::conflict(res, name, &why));
            }
        }
        if dry_run {
            return Ok(current);
        }
        let has_finalizers = current["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if current["metadata"].get("deletionTimestamp").is_some() {
                return Ok(current);
            }
            let mut marked = current.clone();
            marked["metadata"]["deletionTimestamp"] = json!(now());
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            return Ok(self.commit(&mut inner, key, ChangeType::Modified, marked, Some(current)));
        }
        if res.plural == "namespaces" {
            let contained: Vec<(Key, Value)> = inner
                .objects
                .iter()
                .filter(|((_, ns, _), _)| ns == name)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (k, obj) in contained {
                self.commit(&mut inner, k, ChangeType::Deleted, obj, None);
            }
        }
        Ok(self.commit(&mut inner, key, ChangeType::Deleted, current, None))
    }

    /// Where a watch starts: without a resourceVersion (or "0") the current matching objects as synthetic
    /// ADDED events and the current resourceVersion; with one, no objects and that version (410 Expired
    /// when history no longer reaches back to it).
    pub(crate) fn watch_start(
        &self,
        res: &'static ResourceType,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        since: Option<u64>,
    ) -> Result<(Vec<Value>, u64), ApiError> {
        let inner = self.lock();
        match since {
            None | Some(0) => {
                let idx = res.index();
                let objects = inner
                    .objects
                    .iter()
                    .filter(|((i, ns, _), obj)| {
                        *i == idx
                            && namespace.is_none_or(|want| want == ns)
                            && labels.matches(obj)
                            && fields.matches(obj)
                    })
                    .map(|(_, obj)| obj.clone())
                    .collect();
                Ok((objects, inner.rv))
            }
            Some(rv) if rv < inner.trimmed_through => Err(too_old(rv)),
            Some(rv) => Ok((Vec::new(), rv)),
        }
    }

    /// Every change after `cursor`, oldest first.
    pub(crate) fn changes_after(&self, cursor: u64) -> Result<Vec<Arc<Change>>, ApiError> {
        let inner = self.lock();
        if cursor < inner.trimmed_through {
            return Err(too_old(cursor));
        }
        let first = inner.history.partition_point(|c| c.rv <= cursor);
        Ok(inner.history.range(first..).cloned().collect())
    }

    // ----- The API for tests: fixtures in, objects out, without HTTP. -----

    /// Loads multi-document YAML (documents may be `kind: List` with `items`, as `kubectl get -o yaml`
    /// prints) with [`Store::put`]. Returns how many objects were stored.
    pub fn load_yaml(&self, yaml: &str) -> anyhow::Result<usize> {
        let mut count = 0;
        for (i, document) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
            let doc = serde_yaml::Value::deserialize(document).with_context(|| format!("YAML document {}", i + 1))?;
            if doc.is_null() {
                continue;
            }
            let doc: Value = serde_json::to_value(doc).with_context(|| format!("YAML document {} as JSON", i + 1))?;
            let is_list = doc["kind"].as_str().is_some_and(|k| k.ends_with("List")) && doc["items"].is_array();
            let objects = if is_list { doc["items"].as_array().cloned().unwrap_or_default() } else { vec![doc] };
            for object in objects {
                self.put(object).with_context(|| format!("YAML document {}", i + 1))?;
                count += 1;
            }
        }
        Ok(count)
    }

    /// Creates or replaces an object as a fixture: `apiVersion` and `kind` pick the type, `metadata.uid`,
    /// `creationTimestamp` and `status` are kept when given (uid and timestamp are filled in otherwise), the
    /// namespace defaults to `default`, and the resourceVersion always comes from the store's counter.
    /// Watches see ADDED or MODIFIED.
    pub fn put(&self, object: Value) -> anyhow::Result<Value> {
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default();
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let res = resources::by_kind(api_version, kind).ok_or_else(|| {
            anyhow!(
                "the simulation does not serve {api_version:?} {kind:?} (object {name:?}); add it to RESOURCES in tests/src/sim/resources.rs"
            )
        })?;
        if name.is_empty() {
            bail!("{kind} without metadata.name");
        }
        let object = Self::normalize_new(res, None, object, Origin::Fixture).map_err(anyhow::Error::from)?;
        let ns = meta_str(&object, "namespace").to_string();
        let key = (res.index(), ns, name);
        let mut inner = self.lock();
        let previous = inner.objects.get(&key).cloned();
        let change = if previous.is_some() { ChangeType::Modified } else { ChangeType::Added };
        Ok(self.commit(&mut inner, key, change, object, previous))
    }

    /// An object by resource (plural, kind or short name: `pods`, `Pod`, `po`), namespace ("" for
    /// cluster-scoped types) and name.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> anyhow::Result<Option<Value>> {
        let res = resource_arg(resource)?;
        Ok(self.lock().objects.get(&(res.index(), namespace.to_string(), name.to_string())).cloned())
    }

    /// All objects of a resource, in one namespace or all, sorted by namespace and name.
    pub fn list(&self, resource: &str, namespace: Option<&str>) -> anyhow::Result<Vec<Value>> {
        let res = resource_arg(resource)?;
        let page = self.list_page(res, namespace, &LabelSelector::default(), &FieldSelector::default(), None, None)?;
        Ok(page.items)
    }

    /// Removes an object at once (finalizers are not honoured here); watches see DELETED.
    pub fn delete(&self, resource: &str, namespace: &str, name: &str) -> anyhow::Result<Option<Value>> {
        let res = resource_arg(resource)?;
        let key = (res.index(), namespace.to_string(), name.to_string());
        let mut inner = self.lock();
        let Some(current) = inner.objects.get(&key).cloned() else { return Ok(None) };
        Ok(Some(self.commit(&mut inner, key, ChangeType::Deleted, current, None)))
    }

    /// Changes an object in place, status included (as a controller or the kubelet would, e.g. to mark a Job
    /// complete); bumps its resourceVersion and watches see MODIFIED.
    pub fn modify(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> anyhow::Result<Value> {
        let res = resource_arg(resource)?;
        let key = (res.index(), namespace.to_string(), name.to_string());
        let mut inner = self.lock();
        let current =
            inner.objects.get(&key).cloned().ok_or_else(|| anyhow!("{} {namespace}/{name} not found", res.plural))?;
        let mut next = current.clone();
        f(&mut next);
        if !next["metadata"].is_object() {
            bail!("{} {namespace}/{name}: metadata must stay an object", res.plural);
        }
        Ok(self.commit(&mut inner, key, ChangeType::Modified, next, Some(current)))
    }

    /// Typed [`Store::get`]: `store.get_as::<Pod>("ns", "name")`.
    pub fn get_as<K: k8s_openapi::Resource + DeserializeOwned>(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<Option<K>> {
        let res = typed_resource::<K>()?;
        let object = self.lock().objects.get(&(res.index(), namespace.to_string(), name.to_string())).cloned();
        object
            .map(|o| serde_json::from_value(o).with_context(|| format!("decoding {} {namespace}/{name}", K::KIND)))
            .transpose()
    }

    /// Typed [`Store::list`].
    pub fn list_as<K: k8s_openapi::Resource + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
    ) -> anyhow::Result<Vec<K>> {
        let res = typed_resource::<K>()?;
        let page = self.list_page(res, namespace, &LabelSelector::default(), &FieldSelector::default(), None, None)?;
        page.items
            .into_iter()
            .map(|o| serde_json::from_value(o).with_context(|| format!("decoding a {}", K::KIND)))
            .collect()
    }

    /// Typed [`Store::put`].
    pub fn put_as<K: k8s_openapi::Resource + Serialize + DeserializeOwned>(&self, object: &K) -> anyhow::Result<K> {
        let value = serde_json::to_value(object).with_context(|| format!("encoding a {}", K::KIND))?;
        let stored = self.put(value)?;
        serde_json::from_value(stored).with_context(|| format!("decoding a {}", K::KIND))
    }

    /// How many objects of each resource type are stored, for summaries (`pods: 3`).
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        let inner = self.lock();
        RESOURCES
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    r.plural,
                    inner
                        .objects
                        .range((i, String::new(), String::new())..)
                        .take_while(|((j, _, _), _)| *j == i)
                        .count(),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

fn too_old(rv: u64) -> ApiError {
    ApiError::expired(format!("too old resource version: {rv}"))
}

/// The name and namespace of a written object come from the URL; a body naming others is refused.
fn set_identity<'m>(
    res: &ResourceType,
    namespace: &str,
    name: &str,
    map: &'m mut Map<String, Value>,
) -> Result<&'m mut Map<String, Value>, ApiError> {
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else {
        return Err(ApiError::bad_request("metadata must be an object"));
    };
    let body_name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let body_ns = meta.get("namespace").and_then(Value::as_str).unwrap_or_default();
    if res.namespaced && !body_ns.is_empty() && body_ns != namespace {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    meta.insert("name".into(), json!(name));
    if res.namespaced {
        meta.insert("namespace".into(), json!(namespace));
    } else {
        meta.remove("namespace");
    }
    Ok(meta)
}

/// `apiVersion` and `kind` in a body must name the type of the URL; missing ones are filled in.
fn check_type(res: &ResourceType, map: &mut Map<String, Value>) -> Result<(), ApiError> {
    let api_version = res.api_version();
    match map.get("apiVersion").and_then(Value::as_str) {
        Some(v) if !v.is_empty() && v != api_version => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )))
        }
        _ => map.insert("apiVersion".into(), json!(api_version)),
    };
    match map.get("kind").and_then(Value::as_str) {
        Some(k) if !k.is_empty() && k != res.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                res.kind
            )))
        }
        _ => map.insert("kind".into(), json!(res.kind)),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn pods() -> &'static ResourceType {
        resources::find("pods").expect("pods")
    }

    fn pod(ns: &str, name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns}, "spec": {"containers": []}})
    }

    #[test]
    fn yaml_fixtures_keep_uids_and_unpack_lists() {
        let store = Store::new();
        let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: ns1, uid: 11111111-1111-4111-8111-111111111111, resourceVersion: "999"}
status: {phase: Running}
---
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: ns1}}
- {apiVersion: v1, kind: PersistentVolumeClaim, metadata: {name: data}}
"#;
        assert_eq!(store.load_yaml(yaml).expect("loads"), 3);
        let a = store.get_as::<Pod>("ns1", "a").expect("decodes").expect("exists");
        assert_eq!(a.metadata.uid.as_deref(), Some("11111111-1111-4111-8111-111111111111"));
        assert_eq!(a.metadata.resource_version.as_deref(), Some("1"));
        assert_eq!(a.status.and_then(|s| s.phase).as_deref(), Some("Running"));
        assert!(store.get("pvc", "default", "data").expect("known type").is_some());
        assert!(store.get("namespaces", "", "ns1").expect("known type").is_some());
        assert_eq!(store.resource_version(), 3);
        let err = store
            .load_yaml("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n")
            .expect_err("unknown kind");
        assert!(format!("{err:#}").contains("Widget"), "{err:#}");
        assert!(store.get("widgets", "", "w").is_err());
    }

    #[test]
    fn pagination_visits_every_object_once() {
        let store = Store::new();
        for ns in ["a", "b"] {
            for name in ["p1", "p2", "p3"] {
                store.put(pod(ns, name)).expect("put");
            }
        }
        let (none_l, none_f) = (LabelSelector::default(), FieldSelector::default());
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = store.list_page(pods(), None, &none_l, &none_f, Some(4), token.as_deref()).expect("page");
            pages += 1;
            seen.extend(page.items.iter().map(|o| format!("{}/{}", meta_str(o, "namespace"), meta_str(o, "name"))));
            if pages == 1 {
                assert_eq!(page.remaining, Some(2));
            }
            match page.continue_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        assert_eq!(pages, 2);
        assert_eq!(seen, ["a/p1", "a/p2", "a/p3", "b/p1", "b/p2", "b/p3"]);
        let in_b = store.list_page(pods(), Some("b"), &none_l, &none_f, None, None).expect("list");
        assert_eq!(in_b.items.len(), 3);
        assert!(store.list_page(pods(), None, &none_l, &none_f, Some(1), Some("zz")).is_err());
    }

    #[test]
    fn update_rules() {
        let store = Store::new();
        let created = store.create(pods(), Some("ns"), pod("", "p"), false).expect("create");
        let rv = meta_str(&created, "resourceVersion").to_string();
        // Status is not writable through the main endpoint of a type with a status subresource.
        let mut body = created.clone();
        body["status"] = json!({"phase": "Running"});
        body["metadata"]["labels"] = json!({"a": "b"});
        let updated = store.update(pods(), "ns", "p", false, false, |_| Ok(body.clone())).expect("update");
        assert_eq!(updated["status"], json!({"phase": "Pending"}), "the initial phase stays");
        assert_eq!(updated["metadata"]["labels"]["a"], "b");
        assert_eq!(updated["metadata"]["generation"], 1, "metadata changes keep the generation");
        // The same body again carries the old resourceVersion: conflict.
        let err = store.update(pods(), "ns", "p", false, false, |_| Ok(body.clone())).expect_err("stale");
        assert_eq!((err.code, err.reason), (409, "Conflict"));
        assert_ne!(meta_str(&updated, "resourceVersion"), rv);
        // No-op writes keep the resourceVersion.
        let same = store.update(pods(), "ns", "p", false, false, |cur| Ok(cur.clone())).expect("no-op");
        assert_eq!(meta_str(&same, "resourceVersion"), meta_str(&updated, "resourceVersion"));
        let status = store
            .update(pods(), "ns", "p", true, false, |_| Ok(json!({"status": {"phase": "Running"}})))
            .expect("status");
        assert_eq!(status["status"]["phase"], "Running");
        assert_eq!(status["metadata"]["labels"]["a"], "b");
    }

    #[test]
    fn finalizers_delay_deletion_until_cleared() {
        let store = Store::new();
        let mut body = pod("ns", "p");
        body["metadata"]["finalizers"] = json!(["coracle.dev/hold"]);
        store.create(pods(), Some("ns"), body, false).expect("create");
        let marked = store.delete_object(pods(), "ns", "p", None, None, false).expect("delete");
        assert!(marked["metadata"]["deletionTimestamp"].is_string());
        assert!(store.get("pods", "ns", "p").expect("type").is_some());
        let cleared = |cur: &Value| {
            let mut next = cur.clone();
            next["metadata"]["finalizers"] = json!([]);
            Ok(next)
        };
        store.update(pods(), "ns", "p", false, false, cleared).expect("clear finalizers");
        assert!(store.get("pods", "ns", "p").expect("type").is_none());
    }

    #[test]
    fn deleting_a_namespace_deletes_its_objects() {
        let store = Store::new();
        store.put(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}})).expect("ns");
        store.put(pod("ns", "p")).expect("pod");
        store.put(pod("other", "p")).expect("pod");
        let ns = resources::find("ns").expect("namespaces");
        store.delete_object(ns, "", "ns", None, None, false).expect("delete");
        assert_eq!(store.list("pods", None).expect("list").len(), 1);
        let changes = store.changes_after(3).expect("history");
        let kinds: Vec<_> = changes.iter().map(|c| (c.change, c.namespace.as_str())).collect();
        assert_eq!(kinds, [(ChangeType::Deleted, "ns"), (ChangeType::Deleted, "")]);
    }

    #[test]
    fn secret_string_data_is_stored_base64_encoded() {
        let store = Store::new();
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "key", "namespace": "coracle"},
            "data": {"a": "eA==", "b": "eA=="}, "stringData": {"b": "master-key"}});
        let stored = store.put(secret).expect("put");
        assert_eq!(stored["data"], json!({"a": "eA==", "b": "bWFzdGVyLWtleQ=="}));
        assert!(stored.get("stringData").is_none());
        let secrets = resources::find("secrets").expect("secrets");
        let bad = json!({"metadata": {"name": "bad"}, "stringData": {"k": 1}});
        assert_eq!(store.create(secrets, Some("coracle"), bad, false).map_err(|e| e.code), Err(400));
        let updated = store
            .update(secrets, "coracle", "key", false, false, |cur| {
                let mut next = cur.clone();
                next["stringData"] = json!({"a": "y"});
                Ok(next)
            })
            .expect("update");
        assert_eq!(updated["data"]["a"], "eQ==");
    }

    #[test]
    fn generate_name_and_errors() {
        let store = Store::new();
        let body = json!({"metadata": {"generateName": "backup-"}});
        let created = store.create(pods(), Some("ns"), body, false).expect("create");
        let name = meta_str(&created, "name");
        assert!(name.starts_with("backup-") && name.len() == 12, "{name}");
        let err = store.create(pods(), Some("ns"), created.clone(), false).expect_err("rv set");
        assert_eq!(err.code, 400);
        let err = store.create(pods(), Some("ns"), pod("ns", name), false).expect_err("exists");
        assert_eq!((err.code, err.reason), (409, "AlreadyExists"));
        let err = store.create(pods(), Some("ns"), pod("other", "x"), false).expect_err("namespace mismatch");
        assert_eq!(err.code, 400);
        let err = store.create(pods(), Some("ns"), json!({"metadata": {}}), false).expect_err("no name");
        assert_eq!(err.code, 422);
        assert_eq!(decode_continue(&encode_continue("ns", "n")).expect("round trip"), ("ns".into(), "n".into()));
    }
}
