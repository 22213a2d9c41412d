//! on-k8s-event: a Kubernetes change (from Argo Events, Knative ApiServerSource or Coracle's own
//! `coracle.k8s.workload.updated`) → at most one `coracle.backup.requested` per matching trigger
//! policy and workload per debounce window (SPEC §8; the rules are in `crate::triggers`).
//!
//! Unrelated events (other kinds, adds and deletes, Reference-mode Knative events) are acknowledged
//! with a log line; malformed ones are dead-lettered with the reason. The debounce state is claimed
//! with compare-and-set BEFORE publishing, so of two handlers seeing changes of one workload at once
//! only the one whose write won publishes; a redelivered event re-publishes its own request (same id,
//! dropped by the stream), so a crash between the write and the publish loses nothing. Without NATS
//! there is no debounce state: the requests are printed.

use crate::context::Context;
use crate::kube_cluster::{self, KubeError};
use crate::kv_json::{Created, JsonKv};
use crate::triggers::{self, CoreEvent, Debounce, Observed, Policy, Target, TriggerState, STATE_PREFIX, TRIGGER_LABEL};
use chrono::{DateTime, Utc};
use coracle_events::consume::HandleError;
use coracle_events::subjects::KV_SCHEDULES;
use coracle_events::{function_source, BackupRequest, CloudEvent};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use serde_json::{json, Value};

pub const NAME: &str = triggers::FUNCTION;
/// Compare-and-set rounds per policy before the event is retried.
const ATTEMPTS: usize = 16;

pub async fn handle(ctx: &Context, payload: &[u8]) -> Result<(), HandleError> {
    let incoming = triggers::parse_incoming(payload).map_err(HandleError::permanent)?;
    let at = incoming.time.unwrap_or_else(Utc::now);
    let id = incoming.id.as_deref().unwrap_or("-");
    match &incoming.observed {
        Observed::Ignored(why) => {
            tracing::info!(shape = incoming.shape, id, "ignored: {why}");
            Ok(())
        }
        Observed::Workload(w) => {
            let policies = policies(ctx).await?;
            let mut fired = 0;
            for p in &policies {
                if let Err(why) = p.matches_workload(w) {
                    tracing::debug!(policy = %p.name, "{}/{}: {why}", w.namespace, w.name);
                    continue;
                }
                let target = triggers::workload_target(w).map_err(|e| {
                    HandleError::permanent(format!("{} {}/{}: {e}", w.kind.as_str(), w.namespace, w.name))
                })?;
                fired += usize::from(fire(ctx, p, &target, at).await?);
            }
            tracing::info!(
                shape = incoming.shape,
                id,
                "{} {}/{}: {fired} backup(s) requested",
                w.kind.as_str(),
                w.namespace,
                w.name
            );
            Ok(())
        }
        Observed::Event(e) => {
            let policies = policies(ctx).await?;
            let matching: Vec<&Policy> = policies.iter().filter(|p| p.matches_event(e).is_ok()).collect();
            if matching.is_empty() {
                tracing::info!(shape = incoming.shape, id, reason = %e.reason, "Event matches no trigger policy");
                return Ok(());
            }
            let Some(object) = involved_object(ctx, e).await? else { return Ok(()) };
            for p in matching {
                match triggers::target_of(p, &object) {
                    Ok(target) => {
                        fire(ctx, p, &target, at).await?;
                    }
                    Err(why) => tracing::info!(policy = %p.name, "Event {}: {why}", e.reason),
                }
            }
            Ok(())
        }
    }
}

async fn policies(ctx: &Context) -> Result<Vec<Policy>, HandleError> {
    let configmaps = kube_cluster::labelled_configmaps(ctx.kube()?, TRIGGER_LABEL).await?;
    let (policies, rejected) = triggers::load(&configmaps, &ctx.system_namespace);
    for r in &rejected {
        tracing::warn!(namespace = %r.namespace, name = %r.name, "trigger policy ignored: {}", r.reason);
    }
    Ok(policies)
}

/// The object a core Event concerns, as it is now; None (logged) when it is gone or of a kind
/// whose pods cannot be told.
async fn involved_object(ctx: &Context, e: &CoreEvent) -> Result<Option<Value>, HandleError> {
    let client = ctx.kube()?.clone();
    let r = &e.involved;
    let action = format!("reading {} {}/{}", r.kind, r.namespace, r.name);
    let err = |source| HandleError::from(KubeError::Api { action: action.clone(), source });
    let object = match (r.api_version.as_str(), r.kind.as_str()) {
        ("v1" | "", "Pod") => {
            Api::<Pod>::namespaced(client, &r.namespace).get_opt(&r.name).await.map_err(err)?.map(to_value)
        }
        ("apps/v1", "Deployment") => {
            Api::<Deployment>::namespaced(client, &r.namespace).get_opt(&r.name).await.map_err(err)?.map(to_value)
        }
        ("apps/v1", "StatefulSet") => {
            Api::<StatefulSet>::namespaced(client, &r.namespace).get_opt(&r.name).await.map_err(err)?.map(to_value)
        }
        (api_version, kind) => {
            tracing::info!("Event {} concerns {api_version} {kind} {}: only Pods, Deployments and StatefulSets have pods to back up", e.reason, r.name);
            return Ok(None);
        }
    };
    if object.is_none() {
        tracing::info!("Event {}: {} {}/{} no longer exists", e.reason, r.kind, r.namespace, r.name);
    }
    Ok(object)
}

fn to_value<T: serde::Serialize>(object: T) -> Value {
    // Typed Kubernetes objects always serialise (k8s-openapi writes apiVersion and kind too).
    serde_json::to_value(object).unwrap_or(Value::Null)
}

/// Debounces and publishes one policy's request for one workload; true when it published.
async fn fire(ctx: &Context, p: &Policy, target: &Target, at: DateTime<Utc>) -> Result<bool, HandleError> {
    let request = p.request(target, at);
    let Some(nats) = &ctx.nats else {
        ctx.emit(&request_event(p, target, at)).await?;
        return Ok(true);
    };
    let kv = JsonKv::<TriggerState>::open(&nats.js, KV_SCHEDULES, STATE_PREFIX).await?;
    let key = p.state_key(target);
    for _ in 0..ATTEMPTS {
        let decision = match kv.get(&key).await? {
            None => match kv.create(&key, &TriggerState::new(p, target, at, &request.name)).await? {
                Created::Created => Debounce::Fire,
                // A concurrent handler claimed it first: decide again from what it wrote.
                Created::Exists(_) => continue,
            },
            Some(_) => {
                let mut decided = Debounce::Fire;
                // `modify` re-reads and calls this again whenever another handler wrote in between,
                // so the decision kept is the one whose write won.
                let stored = kv
                    .modify(&key, |state| {
                        decided = triggers::debounce(Some(state), at, p.debounce);
                        match decided {
                            Debounce::Fire => *state = TriggerState::new(p, target, at, &request.name),
                            Debounce::Suppressed { .. } => state.suppressed += 1,
                            Debounce::Repeat => return false,
                        }
                        true
                    })
                    .await?;
                if stored.is_none() {
                    continue;
                }
                decided
            }
        };
        return match decision {
            Debounce::Suppressed { until } => {
                tracing::info!(policy = %p.name, workload = %target.name, %until, "debounced: a backup fired for this workload recently");
                Ok(false)
            }
            Debounce::Fire | Debounce::Repeat => {
                tracing::info!(policy = %p.name, workload = %target.name, backup = %request.name, "backup requested");
                ctx.emit(&request_event(p, target, at)).await?;
                Ok(true)
            }
        };
    }
    Err(HandleError::retryable(format!("trigger {key}: debounce state kept changing under concurrent handlers")))
}

/// The `coracle.backup.requested` event of a fire: id = backup name, `time` = the change's time,
/// extension attributes `trigger` (the policy) and `workload` (`<namespace>/<kind>/<name>`).
pub fn request_event(p: &Policy, target: &Target, at: DateTime<Utc>) -> CloudEvent<BackupRequest> {
    let request = p.request(target, at);
    let name = request.name.clone();
    let mut event = CloudEvent::new(name.clone(), function_source(NAME), Some(name), request);
    event.time = Some(at);
    event.extensions.insert("trigger".into(), json!(p.name));
    event.extensions.insert("workload".into(), json!(format!("{}/{}/{}", target.namespace, target.kind, target.name)));
    event
}
