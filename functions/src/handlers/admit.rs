//! The admission function's adapter: looks up and claims pending restores for a Pod CREATE
//! review, then answers with the injection patch from `admission`. Never fails a review: any
//! problem allows the pod unpatched, with a warning. `coracle serve` looks entries up in
//! `WatchedPending` (a watched in-memory copy of the KV bucket); tests and the offline command
//! use the bucket or memory directly.

mod watched_pending;
pub use watched_pending::WatchedPending;

use crate::admission::{self, already_injected, injection_patch, pod_targets, HelperSettings, Injection, Review};
use crate::kv_json::JsonKv;
use crate::plan_restore::pending_key;
use crate::restore_state::{claim, PendingEntry, Role};
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;

/// Where pending restores are looked up and claimed.
pub trait PendingStore {
    /// Claims the entry under `key` for `token` if it is pending; None when there is nothing to
    /// restore there (no entry, or it is already restored).
    fn claim(
        &self,
        key: &str,
        token: &str,
    ) -> impl Future<Output = Result<Option<(PendingEntry, Role)>, String>> + Send;
}

impl PendingStore for JsonKv<PendingEntry> {
    async fn claim(&self, key: &str, token: &str) -> Result<Option<(PendingEntry, Role)>, String> {
        let mut role = Role::Waiter;
        let entry = self
            .modify(key, |e| {
                if e.state.is_terminal() {
                    return false;
                }
                let (r, changed) = claim(e, token);
                role = r;
                changed
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(entry.filter(|e| !e.state.is_terminal()).map(|e| (e, role)))
    }
}

/// Pending entries held in memory: `coracle admission review --pending FILE`.
#[derive(Default)]
pub struct MemoryPending(pub Mutex<BTreeMap<String, PendingEntry>>);

impl PendingStore for MemoryPending {
    async fn claim(&self, key: &str, token: &str) -> Result<Option<(PendingEntry, Role)>, String> {
        let mut map = self.0.lock().map_err(|_| "pending entries poisoned".to_string())?;
        Ok(map.get_mut(key).filter(|e| !e.state.is_terminal()).map(|e| {
            let (role, _) = claim(e, token);
            (e.clone(), role)
        }))
    }
}

/// Answers one AdmissionReview body.
pub async fn review<S: PendingStore>(store: &S, settings: &HelperSettings, body: &[u8]) -> Value {
    let (uid, namespace, pod) = match admission::parse_review(body) {
        Ok(Review::Pod(r)) => (r.uid, r.namespace, r.pod),
        Ok(Review::Other { uid }) => return admission::response(&uid, None, &[]),
        Err((uid, reason)) => {
            tracing::warn!(%reason, "malformed admission review; allowing");
            return admission::response(&uid, None, &[format!("coracle: ignored a malformed review: {reason}")]);
        }
    };
    if already_injected(&pod) {
        return admission::response(&uid, None, &[]);
    }
    // One claim token per admitted pod: it has no uid yet, and the token ties its entries to it.
    let token = uuid::Uuid::new_v4().to_string();
    let targets = pod_targets(&pod);
    // Looked up together: a store that has to ask NATS pays one round trip, not one per volume.
    let claims = futures::future::join_all(targets.iter().map(|(_, target)| {
        let key = pending_key(&namespace, target);
        let token = &token;
        async move { store.claim(&key, token).await }
    }))
    .await;
    let mut injection: Option<Injection> = None;
    let mut warnings = Vec::new();
    for ((volume, _), claimed) in targets.into_iter().zip(claims) {
        let (entry, role) = match claimed {
            Ok(Some(found)) => found,
            Ok(None) => continue,
            Err(e) => {
                warnings.push(format!("coracle: pending restore lookup failed for volume {volume}: {e}"));
                continue;
            }
        };
        let inj = injection.get_or_insert_with(|| Injection {
            restore: entry.pending.restore.clone(),
            claim: token.clone(),
            owned: Vec::new(),
            waiting: Vec::new(),
        });
        if inj.restore.uid != entry.pending.restore.uid {
            warnings.push(format!(
                "coracle: volume {volume} belongs to another restore ({}); not waiting for it",
                entry.pending.restore.name
            ));
            continue;
        }
        match role {
            Role::Owner => inj.owned.push(volume),
            Role::Waiter => inj.waiting.push(volume),
        }
    }
    match injection {
        Some(inj) => {
            let patch = injection_patch(&pod, &inj, settings);
            admission::response(&uid, Some(&patch), &warnings)
        }
        None => admission::response(&uid, None, &warnings),
    }
}
