//! Trigger policies (SPEC §8): which Kubernetes changes fire a backup of the workload they touch.
//! Pure: no clock, no Kubernetes, no NATS — `on-k8s-event` supplies the event, the ConfigMaps, the
//! looked-up objects and the stored debounce state.
//!
//! # Declaring a policy
//!
//! A policy is a ConfigMap labelled `coracle.dev/trigger` (any value, `"true"` by convention); its
//! name is the policy's name. Data keys (unknown keys are errors, so a typo cannot widen a policy):
//!
//! | key                      | required | meaning |
//! |--------------------------|----------|---------|
//! | `change`                 | yes      | `rollout` (a Deployment/StatefulSet pod-template change) or `eventReason: <Reason>[, <Reason>…]` (core Events with one of these reasons, e.g. `BackOff`, `Killing`) |
//! | `kinds`                  | no       | comma list of `Deployment`, `StatefulSet` (for `rollout`; default both) or `Event` (for `eventReason`, the default) |
//! | `namespaces`             | no       | comma list of namespaces watched; default: all (policy in the system namespace) or the policy's own namespace |
//! | `selector`               | no       | label selector the workload's labels must match (for Events: the involved object's labels) |
//! | `defaultVolumesToBackup` | no       | `"true"`: back up every eligible volume (opt-out mode); default `"false"` (annotated volumes only) |
//! | `ttl`                    | no       | Go duration kept in each request; default: the installation's |
//! | `debounce`               | no       | Go duration; changes of one workload within it after a fire are dropped; default `10m` |
//!
//! As with schedules, a policy declared outside the system namespace only sees its own namespace.
//! Workloads are `apps/v1` Deployments and StatefulSets; Events are `v1` or `events.k8s.io/v1`.
//!
//! # Event shapes accepted, and what each carries
//!
//! - Argo Events resource event source: a CloudEvent (type `resource`) whose `data` is
//!   `{"type": "ADD"|"UPDATE"|"DELETE", "body": <object>, "oldBody": <object>, "group", "version",
//!   "resource"}` — or that same `{"type", "body", …}` object on its own when a sensor forwards only
//!   the data. `oldBody` is present on UPDATE in current Argo Events releases; older ones send only
//!   `body`. Only UPDATE counts: a new workload has no data yet and a deleted one none left.
//! - Knative ApiServerSource in Resource mode: type `dev.knative.apiserver.resource.update` (`.add`
//!   and `.delete` are ignored as above), `data` = the object after the change, no old object.
//!   Reference mode (`dev.knative.apiserver.ref.*`) carries only a reference, and by the time it is
//!   looked up the controller has usually observed the change, so the change cannot be told: such
//!   events are ignored with a log line telling to use Resource mode.
//! - Coracle's own `dev.coracle.k8s.workload.updated.v1`: `{"old": <object>, "new": <object>}`.
//! - Any other CloudEvent whose `data` is a Kubernetes object (e.g. an Argo sensor forwarding
//!   `body` only) is read like Knative's Resource mode.
//!
//! A rollout is decided from `spec.template` of the old and new object when both are present.
//! With only the new object (Knative, Argo without `oldBody`) it is a spec change the controller has
//! not observed yet: `metadata.generation > status.observedGeneration`. That also counts a change of
//! `replicas` (scaling), since any spec change bumps the generation; only the old object tells the
//! two apart. Core Events name the object they concern (`involvedObject`, or `regarding` in
//! `events.k8s.io/v1`); the handler looks that object up for its labels and pods.
//!
//! # What fires
//!
//! One `coracle.backup.requested` for the workload's namespace whose label selector selects the
//! workload's pods (`spec.selector` of a Deployment/StatefulSet; the labels of a Pod an Event names),
//! named `<policy>-<workload>-<yyyyMMddHHmmss>` (the change's time in UTC; see `backup_name`), with
//! `origin: trigger/<policy>`. The name is also the event id, so the stream drops copies.
//!
//! # Debounce
//!
//! Per (policy, workload) the last fire is kept in KV `coracle-schedules` under `trigger.`; a change
//! within `debounce` after it is dropped. The window starts at the change's time (the CloudEvent's
//! `time`), so a redelivered event computes the same name and is published again (and dropped by the
//! stream) instead of being suppressed by its own earlier fire. Events without a `time` (bare Argo
//! data) use the handler's clock: a redelivery after a failed publish is then debounced, not repeated.

use crate::duration::parse_duration;
use crate::request::{self, RequestError};
use crate::selector::{is_dns1123_label, is_dns1123_subdomain, Selector};
use chrono::{DateTime, Duration, Utc};
use coracle_events::{BackupRequest, CloudEvent, EventData, WorkloadUpdated};
use k8s_openapi::api::core::v1::ConfigMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// The label that makes a ConfigMap a trigger policy.
pub const TRIGGER_LABEL: &str = "coracle.dev/trigger";
pub const KEY_CHANGE: &str = "change";
pub const KEY_KINDS: &str = "kinds";
pub const KEY_NAMESPACES: &str = "namespaces";
pub const KEY_SELECTOR: &str = "selector";
pub const KEY_DEFAULT_VOLUMES: &str = "defaultVolumesToBackup";
pub const KEY_TTL: &str = "ttl";
pub const KEY_DEBOUNCE: &str = "debounce";
const KNOWN_KEYS: [&str; 7] =
    [KEY_CHANGE, KEY_KINDS, KEY_NAMESPACES, KEY_SELECTOR, KEY_DEFAULT_VOLUMES, KEY_TTL, KEY_DEBOUNCE];

/// The function that applies policies; the `source` of the requests it publishes.
pub const FUNCTION: &str = "on-k8s-event";
/// Prefix of debounce state keys in KV `coracle-schedules`.
pub const STATE_PREFIX: &str = "trigger.";
pub const DEFAULT_DEBOUNCE_SECONDS: i64 = 10 * 60;

/// Backup names are label values: at most 63 characters, of which `-yyyyMMddHHmmss` takes 15.
const MAX_NAME: usize = 63;
const STAMP_LEN: usize = 15;

pub const KNATIVE_RESOURCE_PREFIX: &str = "dev.knative.apiserver.resource.";
pub const KNATIVE_REF_PREFIX: &str = "dev.knative.apiserver.ref.";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TriggerError {
    #[error("trigger policy {namespace}/{name}: {reason}")]
    Policy { namespace: String, name: String, reason: String },
    #[error("malformed Kubernetes event ({shape}): {reason}")]
    Malformed { shape: &'static str, reason: String },
}

fn malformed(shape: &'static str, reason: impl Into<String>) -> TriggerError {
    TriggerError::Malformed { shape, reason: reason.into() }
}

/// The kinds a policy can watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WatchedKind {
    Deployment,
    StatefulSet,
    Event,
}

impl WatchedKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WatchedKind::Deployment => "Deployment",
            WatchedKind::StatefulSet => "StatefulSet",
            WatchedKind::Event => "Event",
        }
    }

    /// The kind of an object from its apiVersion and kind; None for anything not watched.
    pub fn of(api_version: &str, kind: &str) -> Option<WatchedKind> {
        match (api_version, kind) {
            ("apps/v1", "Deployment") => Some(WatchedKind::Deployment),
            ("apps/v1", "StatefulSet") => Some(WatchedKind::StatefulSet),
            ("v1" | "events.k8s.io/v1", "Event") => Some(WatchedKind::Event),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Rollout,
    /// Core Event reasons (compared exactly, as Kubernetes spells them).
    EventReason(BTreeSet<String>),
}

/// A policy read from its ConfigMap.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    /// Namespace of its ConfigMap.
    pub namespace: String,
    pub change: Change,
    pub kinds: BTreeSet<WatchedKind>,
    /// Namespaces watched; empty means all.
    pub namespaces: BTreeSet<String>,
    pub selector: Selector,
    pub default_volumes_to_backup: bool,
    pub ttl: Option<String>,
    pub debounce: Duration,
}

fn list(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Reads a policy from its ConfigMap. Outside `system_namespace` a policy watches only its own namespace.
pub fn from_configmap(cm: &ConfigMap, system_namespace: &str) -> Result<Policy, TriggerError> {
    let namespace = cm.metadata.namespace.clone().unwrap_or_default();
    let name = cm.metadata.name.clone().unwrap_or_default();
    let invalid = |reason: String| TriggerError::Policy { namespace: namespace.clone(), name: name.clone(), reason };
    if !is_dns1123_subdomain(&name) {
        return Err(invalid(format!("{name:?} is not a valid policy name")));
    }
    let data = cm.data.clone().unwrap_or_default();
    if let Some(unknown) = data.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
        return Err(invalid(format!("unknown data key {unknown:?} (known: {})", KNOWN_KEYS.join(", "))));
    }
    let text = |key: &str| data.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
    let change_text = text(KEY_CHANGE).ok_or_else(|| invalid(format!("data.{KEY_CHANGE} is missing")))?;
    let change = if change_text == "rollout" {
        Change::Rollout
    } else if let Some(reasons) = change_text.strip_prefix("eventReason:") {
        let reasons: BTreeSet<String> = list(reasons).map(str::to_string).collect();
        if reasons.is_empty() {
            return Err(invalid(format!("data.{KEY_CHANGE}: eventReason needs at least one reason, such as BackOff")));
        }
        Change::EventReason(reasons)
    } else {
        return Err(invalid(format!(
            "data.{KEY_CHANGE} is {change_text:?}; expected \"rollout\" or \"eventReason: <Reason>[, <Reason>...]\""
        )));
    };
    let allowed: &[WatchedKind] = match change {
        Change::Rollout => &[WatchedKind::Deployment, WatchedKind::StatefulSet],
        Change::EventReason(_) => &[WatchedKind::Event],
    };
    let kinds: BTreeSet<WatchedKind> = match text(KEY_KINDS) {
        None => allowed.iter().copied().collect(),
        Some(kinds) => list(kinds)
            .map(|k| {
                allowed.iter().copied().find(|a| a.as_str() == k).ok_or_else(|| {
                    let names: Vec<_> = allowed.iter().map(|a| a.as_str()).collect();
                    invalid(format!(
                        "data.{KEY_KINDS}: {k:?} does not go with change {change_text:?} (use {})",
                        names.join(", ")
                    ))
                })
            })
            .collect::<Result<_, _>>()?,
    };
    if kinds.is_empty() {
        return Err(invalid(format!("data.{KEY_KINDS} names no kind")));
    }
    let mut namespaces: BTreeSet<String> =
        text(KEY_NAMESPACES).map(|n| list(n).map(str::to_string).collect()).unwrap_or_default();
    if let Some(bad) = namespaces.iter().find(|n| !is_dns1123_label(n)) {
        return Err(invalid(format!("data.{KEY_NAMESPACES}: {bad:?} is not a namespace name")));
    }
    if namespace != system_namespace {
        // Being allowed to create ConfigMaps in one namespace must not be enough to back up others.
        if namespaces.iter().any(|n| n != &namespace) {
            return Err(invalid(format!(
                "namespaces {namespaces:?}: a policy in namespace {namespace} watches only {namespace}; declare it in {system_namespace} to watch others"
            )));
        }
        namespaces = BTreeSet::from([namespace.clone()]);
    }
    let selector =
        Selector::parse(text(KEY_SELECTOR).unwrap_or("")).map_err(|e| invalid(format!("data.{KEY_SELECTOR}: {e}")))?;
    let default_volumes_to_backup = match text(KEY_DEFAULT_VOLUMES).map(str::to_ascii_lowercase).as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(invalid(format!("data.{KEY_DEFAULT_VOLUMES} is {other:?}; expected \"true\" or \"false\"")))
        }
    };
    let debounce = match text(KEY_DEBOUNCE) {
        None => Duration::seconds(DEFAULT_DEBOUNCE_SECONDS),
        Some(d) => parse_duration(d)
            .ok()
            .and_then(|d| Duration::from_std(d).ok())
            .ok_or_else(|| invalid(format!("data.{KEY_DEBOUNCE} is {d:?}; expected a Go duration such as 10m")))?,
    };
    let policy = Policy {
        name: name.clone(),
        namespace: namespace.clone(),
        change,
        kinds,
        namespaces,
        selector,
        default_volumes_to_backup,
        ttl: text(KEY_TTL).map(str::to_string),
        debounce,
    };
    // The same checks as any request, on a sample of what this policy will publish.
    let sample =
        Target { namespace: "sample".into(), kind: "Deployment".into(), name: "sample".into(), selector: "a=b".into() };
    request::validate(&policy.request(&sample, DateTime::UNIX_EPOCH)).map_err(|e| match e {
        RequestError::Invalid { field: "ttl", reason } => invalid(format!("data.{KEY_TTL}: {reason}")),
        other => invalid(other.to_string()),
    })?;
    Ok(policy)
}

/// A policy ConfigMap that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub namespace: String,
    pub name: String,
    pub reason: String,
}

/// Reads every policy ConfigMap: the usable policies and the rejected ones.
pub fn load(configmaps: &[ConfigMap], system_namespace: &str) -> (Vec<Policy>, Vec<Rejected>) {
    let mut policies = Vec::new();
    let mut rejected = Vec::new();
    for cm in configmaps {
        match from_configmap(cm, system_namespace) {
            Ok(p) => policies.push(p),
            Err(e) => rejected.push(Rejected {
                namespace: cm.metadata.namespace.clone().unwrap_or_default(),
                name: cm.metadata.name.clone().unwrap_or_default(),
                reason: e.to_string(),
            }),
        }
    }
    (policies, rejected)
}

/// A Deployment or StatefulSet after (and maybe before) a change.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadChange {
    pub kind: WatchedKind,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub old: Option<Value>,
    pub new: Value,
}

/// The object a core Event concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreEvent {
    pub reason: String,
    pub involved: ObjectRef,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    Workload(WorkloadChange),
    Event(CoreEvent),
    /// Nothing a policy can match (acknowledged, not dead-lettered), and why.
    Ignored(String),
}

/// An incoming event, read.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// Which producer shape it came in (for logs).
    pub shape: &'static str,
    pub id: Option<String>,
    /// When the change happened (the CloudEvent `time`), if the producer said.
    pub time: Option<DateTime<Utc>>,
    pub observed: Observed,
}

/// Reads an event in any accepted shape (see the module doc).
pub fn parse_incoming(payload: &[u8]) -> Result<Incoming, TriggerError> {
    let value: Value = serde_json::from_slice(payload).map_err(|e| malformed("unknown", format!("not JSON: {e}")))?;
    let Value::Object(object) = &value else { return Err(malformed("unknown", "expected a JSON object")) };
    if !object.contains_key("specversion") {
        if object.contains_key("body") && object.contains_key("type") {
            let observed = argo_data(object)?;
            return Ok(Incoming { shape: "argo-events resource data", id: None, time: None, observed });
        }
        return Err(malformed(
            "unknown",
            "expected a CloudEvent (Argo Events, Knative ApiServerSource, Coracle) or Argo Events resource data {\"type\", \"body\"}",
        ));
    }
    let event = CloudEvent::parse(payload).map_err(|e| malformed("cloudevent", e.to_string()))?;
    let (id, time) = (Some(event.id.clone()), event.time);
    let incoming = |shape, observed| Ok(Incoming { shape, id: id.clone(), time, observed });
    if event.ty == WorkloadUpdated::TYPE {
        let shape = "coracle workload.updated";
        let typed = event.into_typed::<WorkloadUpdated>().map_err(|e| malformed(shape, e.to_string()))?;
        return incoming(shape, from_object(shape, &typed.data.new, typed.data.old)?);
    }
    if event.is_coracle() {
        return incoming("coracle", Observed::Ignored(format!("event type {} is not a Kubernetes change", event.ty)));
    }
    if let Some(action) = event.ty.strip_prefix(KNATIVE_REF_PREFIX) {
        return incoming(
            "knative ref",
            Observed::Ignored(format!(
                "Knative ApiServerSource in Reference mode ({action}) carries no object, so the change cannot be told; configure the source with mode: Resource"
            )),
        );
    }
    if let Some(action) = event.ty.strip_prefix(KNATIVE_RESOURCE_PREFIX) {
        let shape = "knative resource";
        // An Event object is itself the news; workloads count only when updated.
        let is_event = event.data.get("kind").and_then(Value::as_str) == Some("Event");
        if action != "update" && !(is_event && action == "add") {
            return incoming(shape, Observed::Ignored(format!("Knative {action} of a resource is not a change")));
        }
        return incoming(shape, from_object(shape, &event.data, None)?);
    }
    match &event.data {
        Value::Object(data) if data.contains_key("body") && data.contains_key("type") => {
            incoming("argo-events resource", argo_data(data)?)
        }
        Value::Object(data) if data.contains_key("apiVersion") && data.contains_key("kind") => {
            incoming("cloudevent with object", from_object("cloudevent with object", &event.data, None)?)
        }
        _ => incoming("cloudevent", Observed::Ignored(format!("event type {} carries no Kubernetes object", event.ty))),
    }
}

/// Argo Events resource event source data: `{"type", "body", "oldBody"?, "group", "version", "resource"}`.
fn argo_data(data: &Map<String, Value>) -> Result<Observed, TriggerError> {
    let shape = "argo-events resource";
    let ty = data.get("type").and_then(Value::as_str).ok_or_else(|| malformed(shape, "\"type\" is not a string"))?;
    // Argo base64-encodes nothing here, but a sensor may forward the body as a JSON string.
    let decode = |v: &Value| -> Result<Value, TriggerError> {
        match v {
            Value::String(s) => {
                serde_json::from_str(s).map_err(|e| malformed(shape, format!("body is a string but not JSON: {e}")))
            }
            other => Ok(other.clone()),
        }
    };
    let body = decode(data.get("body").unwrap_or(&Value::Null))?;
    let is_event = body.get("kind").and_then(Value::as_str) == Some("Event");
    match ty.to_ascii_uppercase().as_str() {
        "UPDATE" => {}
        "ADD" if is_event => {}
        "ADD" | "DELETE" => return Ok(Observed::Ignored(format!("Argo Events {ty} of a resource is not a change"))),
        other => return Err(malformed(shape, format!("unknown type {other:?} (expected ADD, UPDATE or DELETE)"))),
    }
    let old = match data.get("oldBody") {
        None | Some(Value::Null) => None,
        Some(v) => Some(decode(v)?),
    };
    from_object(shape, &body, old)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_str)
}

/// Reads a Kubernetes object (and the one before it, if known).
pub fn from_object(shape: &'static str, obj: &Value, old: Option<Value>) -> Result<Observed, TriggerError> {
    if !obj.is_object() {
        return Err(malformed(shape, "the object is not a JSON object"));
    }
    let api_version = str_at(obj, &["apiVersion"]).ok_or_else(|| malformed(shape, "object without apiVersion"))?;
    let kind = str_at(obj, &["kind"]).ok_or_else(|| malformed(shape, "object without kind"))?;
    let Some(watched) = WatchedKind::of(api_version, kind) else {
        return Ok(Observed::Ignored(format!("{api_version} {kind} is not a kind trigger policies watch")));
    };
    let name =
        str_at(obj, &["metadata", "name"]).ok_or_else(|| malformed(shape, format!("{kind} without metadata.name")))?;
    let namespace = str_at(obj, &["metadata", "namespace"]).unwrap_or_default();
    if watched == WatchedKind::Event {
        let reason = str_at(obj, &["reason"]).unwrap_or_default().to_string();
        // core/v1 names the object `involvedObject`; events.k8s.io/v1 `regarding`.
        let target = obj.get("involvedObject").or_else(|| obj.get("regarding")).ok_or_else(|| {
            malformed(shape, format!("Event {namespace}/{name} names no involvedObject or regarding"))
        })?;
        let field = |k: &str| str_at(target, &[k]).unwrap_or_default().to_string();
        let involved = ObjectRef {
            api_version: field("apiVersion"),
            kind: field("kind"),
            namespace: Some(field("namespace")).filter(|n| !n.is_empty()).unwrap_or_else(|| namespace.to_string()),
            name: field("name"),
        };
        if involved.kind.is_empty() || involved.name.is_empty() {
            return Err(malformed(
                shape,
                format!("Event {namespace}/{name}: the object it concerns has no kind or name"),
            ));
        }
        return Ok(Observed::Event(CoreEvent { reason, involved }));
    }
    if namespace.is_empty() {
        return Err(malformed(shape, format!("{kind} {name} without metadata.namespace")));
    }
    Ok(Observed::Workload(WorkloadChange {
        kind: watched,
        namespace: namespace.to_string(),
        name: name.to_string(),
        labels: labels_of(obj),
        old,
        new: obj.clone(),
    }))
}

/// `metadata.labels` of an object (string values only).
pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default()
}

/// Whether a workload's pod template changed: `spec.template` compared when the old object is
/// known, otherwise an unobserved spec change (`generation > observedGeneration`, see module doc).
pub fn is_rollout(old: Option<&Value>, new: &Value) -> bool {
    if let Some(old) = old {
        return old.pointer("/spec/template") != new.pointer("/spec/template");
    }
    let generation = new.pointer("/metadata/generation").and_then(Value::as_i64);
    let observed = new.pointer("/status/observedGeneration").and_then(Value::as_i64);
    match (generation, observed) {
        (Some(g), Some(o)) => g > o,
        // Never observed yet but past its first generation: changed since creation.
        (Some(g), None) => g > 1,
        _ => false,
    }
}

impl Policy {
    fn watches_namespace(&self, namespace: &str) -> bool {
        self.namespaces.is_empty() || self.namespaces.contains(namespace)
    }

    /// Whether a workload change fires this policy; Err says why not (for logs).
    pub fn matches_workload(&self, w: &WorkloadChange) -> Result<(), String> {
        if self.change != Change::Rollout || !self.kinds.contains(&w.kind) {
            return Err(format!("does not watch {}s", w.kind.as_str()));
        }
        if !self.watches_namespace(&w.namespace) {
            return Err(format!("does not watch namespace {}", w.namespace));
        }
        if !self.selector.matches(&w.labels) {
            return Err(format!("selector {} does not match {}/{}", self.selector, w.namespace, w.name));
        }
        if !is_rollout(w.old.as_ref(), &w.new) {
            return Err("the pod template did not change".into());
        }
        Ok(())
    }

    /// Whether a core Event fires this policy, before its object is looked up (the selector is
    /// checked on that object by `target_of`).
    pub fn matches_event(&self, e: &CoreEvent) -> Result<(), String> {
        let Change::EventReason(reasons) = &self.change else { return Err("does not watch Events".into()) };
        if !self.kinds.contains(&WatchedKind::Event) {
            return Err("does not watch Events".into());
        }
        if !reasons.contains(&e.reason) {
            return Err(format!("reason {:?} is not one of {reasons:?}", e.reason));
        }
        if !self.watches_namespace(&e.involved.namespace) {
            return Err(format!("does not watch namespace {}", e.involved.namespace));
        }
        Ok(())
    }

    /// The request fired for `target` at `at`.
    pub fn request(&self, target: &Target, at: DateTime<Utc>) -> BackupRequest {
        let name = backup_name(&self.name, &target.name, at);
        BackupRequest {
            uid: Some(crate::handlers::event_uid("backup", &name)),
            name,
            included_namespaces: vec![target.namespace.clone()],
            excluded_namespaces: Vec::new(),
            label_selector: Some(target.selector.clone()),
            default_volumes_to_backup: self.default_volumes_to_backup,
            ttl: self.ttl.clone(),
            volume_timeout: None,
            origin: Some(format!("trigger/{}", self.name)),
        }
    }

    /// The KV key (under `STATE_PREFIX`) of this policy's debounce state for a workload.
    pub fn state_key(&self, target: &Target) -> String {
        format!("{}.{}.{}.{}.{}", self.namespace, self.name, target.namespace, target.kind, target.name)
    }
}

/// What a fire backs up: the pods of one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub kind: String,
    pub name: String,
    /// Label selector (string form) selecting the workload's pods.
    pub selector: String,
}

/// The pods of a Deployment or StatefulSet, from `spec.selector` (matchLabels and matchExpressions).
pub fn pod_selector(obj: &Value) -> Result<String, String> {
    let sel = obj.pointer("/spec/selector").ok_or("no spec.selector")?;
    let mut parts = Vec::new();
    if let Some(labels) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in labels {
            parts.push(format!("{k}={}", v.as_str().ok_or_else(|| format!("matchLabels.{k} is not a string"))?));
        }
    }
    for expr in sel.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
        let key = str_at(expr, &["key"]).ok_or("a matchExpression without key")?;
        let values: Vec<&str> =
            expr.get("values").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        parts.push(match str_at(expr, &["operator"]) {
            Some("In") => format!("{key} in ({})", values.join(",")),
            Some("NotIn") => format!("{key} notin ({})", values.join(",")),
            Some("Exists") => key.to_string(),
            Some("DoesNotExist") => format!("!{key}"),
            other => return Err(format!("matchExpressions operator {other:?} for {key}")),
        });
    }
    if parts.is_empty() {
        // An empty selector would select every pod of the namespace.
        return Err("spec.selector selects nothing specific".into());
    }
    let text = parts.join(",");
    Selector::parse(&text).map_err(|e| e.to_string())?;
    Ok(text)
}

/// The target of a workload change.
pub fn workload_target(w: &WorkloadChange) -> Result<Target, String> {
    Ok(Target {
        namespace: w.namespace.clone(),
        kind: w.kind.as_str().to_string(),
        name: w.name.clone(),
        selector: pod_selector(&w.new)?,
    })
}

/// Labels the controllers add per revision or per pod: dropped so a Pod's labels select its
/// workload's current pods, not only the pod of one revision.
const PER_REVISION_LABELS: [&str; 2] = ["pod-template-hash", "controller-revision-hash"];

/// The target of a core Event, given the object it concerns as looked up (a Pod, Deployment or
/// StatefulSet), after checking the policy's selector on that object's labels.
pub fn target_of(policy: &Policy, obj: &Value) -> Result<Target, String> {
    let labels = labels_of(obj);
    let name = str_at(obj, &["metadata", "name"]).ok_or("object without metadata.name")?.to_string();
    let namespace = str_at(obj, &["metadata", "namespace"]).ok_or("object without metadata.namespace")?.to_string();
    if !policy.selector.matches(&labels) {
        return Err(format!("selector {} does not match {namespace}/{name}", policy.selector));
    }
    let kind = str_at(obj, &["kind"]).unwrap_or("Pod").to_string();
    let selector = if kind == "Pod" {
        let parts: Vec<String> = labels
            .iter()
            .filter(|(k, _)| !PER_REVISION_LABELS.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if parts.is_empty() {
            return Err(format!("pod {namespace}/{name} has no labels to select it by"));
        }
        parts.join(",")
    } else {
        pod_selector(obj)?
    };
    Ok(Target { namespace, kind, name, selector })
}

/// `<policy>-<workload>-<yyyyMMddHHmmss>` (UTC): backup name and event id of one fire. The
/// `<policy>-<workload>` part is lowercased and, past 48 characters, cut to 39 plus `-` and 8 hex
/// digits of its SHA-256, so the whole is a valid label value (≤ 63) and long names stay distinct.
pub fn backup_name(policy: &str, workload: &str, at: DateTime<Utc>) -> String {
    let prefix = format!("{policy}-{workload}").to_ascii_lowercase();
    let room = MAX_NAME - STAMP_LEN;
    let prefix = if prefix.len() <= room {
        prefix
    } else {
        let digest = hex::encode(Sha256::digest(prefix.as_bytes()));
        let cut: String = prefix.chars().take(room - 9).collect();
        format!("{}-{}", cut.trim_end_matches(['-', '.']), &digest[..8])
    };
    format!("{prefix}-{}", at.format("%Y%m%d%H%M%S"))
}

/// Debounce state of one (policy, workload), in KV `coracle-schedules` under `trigger.<state_key>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerState {
    pub policy: String,
    pub namespace: String,
    pub kind: String,
    pub workload: String,
    /// The change that last fired; changes within the debounce after it are dropped.
    pub window_start: DateTime<Utc>,
    pub last_backup: String,
    /// Changes dropped since the last fire.
    #[serde(default)]
    pub suppressed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Debounce {
    /// Fire: a new window starts at this change.
    Fire,
    /// The very change that opened the current window (a redelivery): publish its request again,
    /// which the stream drops if the first publish got through.
    Repeat,
    /// Inside the window of an earlier fire: drop.
    Suppressed { until: DateTime<Utc> },
}

/// Decides a change at `at` for a workload whose last fire state is `state`.
pub fn debounce(state: Option<&TriggerState>, at: DateTime<Utc>, window: Duration) -> Debounce {
    let Some(state) = state else { return Debounce::Fire };
    if at == state.window_start {
        return Debounce::Repeat;
    }
    let until = state.window_start + window;
    // A change older than the last fire (delivered late) is covered by that fire's backup.
    if at < until {
        return Debounce::Suppressed { until };
    }
    Debounce::Fire
}

impl TriggerState {
    pub fn new(policy: &Policy, target: &Target, at: DateTime<Utc>, backup: &str) -> Self {
        TriggerState {
            policy: policy.name.clone(),
            namespace: target.namespace.clone(),
            kind: target.kind.clone(),
            workload: target.name.clone(),
            window_start: at,
            last_backup: backup.to_string(),
            suppressed: 0,
        }
    }
}

/// What the workload validating webhook (`POST /validate/workloads`) answers, and what it publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadReview {
    /// The AdmissionReview v1 response: always allowed, since a backup trigger must never block a deploy.
    pub response: Value,
    /// `coracle.k8s.workload.updated` when the review is an UPDATE of an `apps/v1` Deployment or
    /// StatefulSet whose pod template changed (not for dry runs).
    pub updated: Option<CloudEvent<WorkloadUpdated>>,
    /// Why nothing is published (for logs); None when `updated` is set.
    pub skipped: Option<String>,
}

/// Reviews an AdmissionReview v1 for the workload webhook. The event id hashes the workload and
/// both pod templates, so the API server retrying the same review publishes one event.
pub fn review_workload(body: &[u8], now: DateTime<Utc>) -> WorkloadReview {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let req = &v["request"];
    let uid = req["uid"].as_str().unwrap_or_default();
    let answer = |skipped: String| WorkloadReview {
        response: crate::admission::response(uid, None, &[]),
        updated: None,
        skipped: Some(skipped),
    };
    if v.is_null() {
        return answer("the body is not a JSON AdmissionReview".into());
    }
    if uid.is_empty() {
        return answer("AdmissionReview has no request.uid".into());
    }
    let (group, version, kind) = (
        req["kind"]["group"].as_str().unwrap_or_default(),
        req["kind"]["version"].as_str().unwrap_or_default(),
        req["kind"]["kind"].as_str().unwrap_or_default(),
    );
    if (group, version) != ("apps", "v1") || !matches!(kind, "Deployment" | "StatefulSet") {
        return answer(format!("{group}/{version} {kind} is not a Deployment or StatefulSet"));
    }
    if req["operation"] != "UPDATE" {
        return answer(format!("operation {} is not UPDATE", req["operation"]));
    }
    if req["dryRun"] == Value::Bool(true) {
        return answer("dry run".into());
    }
    let (old, new) = (&req["oldObject"], &req["object"]);
    if !old.is_object() || !new.is_object() {
        return answer("the review lacks object or oldObject".into());
    }
    if !is_rollout(Some(old), new) {
        return answer("the pod template did not change".into());
    }
    let namespace = req["namespace"].as_str().or_else(|| str_at(new, &["metadata", "namespace"])).unwrap_or_default();
    let name = req["name"].as_str().or_else(|| str_at(new, &["metadata", "name"])).unwrap_or_default();
    let mut hash = Sha256::new();
    for part in [namespace, kind, name] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hash.update(serde_json::to_vec(&old["spec"]["template"]).unwrap_or_default());
    hash.update([0]);
    hash.update(serde_json::to_vec(&new["spec"]["template"]).unwrap_or_default());
    let id = format!("{namespace}.{kind}.{name}.{}", &hex::encode(hash.finalize())[..16]);
    // Admission sees the object as sent; the API server fills these in before storing it, and
    // `from_object` needs them.
    let mut new = new.clone();
    new["apiVersion"] = Value::String("apps/v1".into());
    new["kind"] = Value::String(kind.into());
    if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.entry("namespace").or_insert_with(|| Value::String(namespace.into()));
    }
    // Never publish what on-k8s-event would only dead-letter.
    if let Err(e) = from_object("admission review", &new, None) {
        return answer(e.to_string());
    }
    let mut event = CloudEvent::new(
        id,
        "/coracle/serve/validate/workloads",
        Some(format!("{namespace}/{kind}/{name}")),
        WorkloadUpdated { old: Some(old.clone()), new },
    );
    event.time = Some(now);
    WorkloadReview { response: crate::admission::response(uid, None, &[]), updated: Some(event), skipped: None }
}
