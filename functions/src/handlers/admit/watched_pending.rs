//! Pending restore entries kept in memory from a NATS KV watch, so that `coracle serve` answers
//! a review of a pod whose entries are pending or claimed with no KV round trip (B3, issue 8).
//!
//! The watch lags the bucket by the time NATS takes to push an update (milliseconds, longer
//! while a connection is being re-established), so the cache is trusted only where being
//! behind cannot hide a restore:
//! - A key the cache does not hold, or holds as finished (Completed/Failed) or deleted, is read
//!   from the bucket directly. A pod created right after plan-restore wrote (or replaced a
//!   finished) entry is therefore still injected. No ordering argument can replace this read:
//!   the namespace label that routes pods here usually stays from an earlier restore, so a pod
//!   can reach the webhook before the watch has delivered a brand-new entry.
//! - Claiming is a write: it is a compare-and-set against the cached revision. A cache that was
//!   behind loses the compare-and-set and the claim falls back to the direct read-modify-write,
//!   so two pods (or two webhook replicas) never both own an entry.
//! - An entry already claimed by another pod makes this one a waiter, answered from the cache.
//!   Being behind here can only mean the restore finished within the lag: the same race a pod
//!   admitted just before that finish runs into anyway.
//! - The cache is used only while the NATS connection is up and the watch was started on that
//!   same connection. After a reconnect (a NATS restart, a network break) the map is dropped and
//!   rebuilt from a new watch with history; until then every key is read directly.
//!
//! Direct reads are bounded by `LOOKUP_WAIT`, so a NATS outage costs a review at most that long
//! and is answered "allowed, unpatched" with a warning — never an error that could fail closed.

use super::PendingStore;
use crate::kv_json::JsonKv;
use crate::restore_state::{claim, PendingEntry, Role};
use async_nats::connection::State;
use async_nats::jetstream::{self, kv};
use coracle_events::subjects::KV_RESTORES;
use futures::StreamExt as _;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The key prefix of pending entries in the restores bucket (records share the bucket).
const PREFIX: &str = "pending.";
/// How long a direct KV lookup may take before the review goes on without it; well inside the
/// webhook's `timeoutSeconds: 5`.
pub const LOOKUP_WAIT: Duration = Duration::from_secs(2);
/// How often the watcher checks whether the connection was re-established under it.
const RECONNECT_CHECK: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One key as last seen: the entry (None once deleted or unreadable) and its stream revision.
struct Seen {
    entry: Option<PendingEntry>,
    revision: u64,
}

#[derive(Default)]
struct Cache {
    map: RwLock<HashMap<String, Seen>>,
    /// The connection (the client's connect count) the current map was built on; 0: no map.
    generation: AtomicU64,
}

impl Cache {
    /// Keeps the newer of what is held and `revision` (the watch and this process's own
    /// compare-and-sets race to fill the map).
    fn record(&self, key: &str, entry: Option<PendingEntry>, revision: u64) {
        if let Ok(mut map) = self.map.write() {
            match map.get_mut(key) {
                Some(seen) if seen.revision >= revision => {}
                Some(seen) => *seen = Seen { entry, revision },
                None => {
                    map.insert(key.to_string(), Seen { entry, revision });
                }
            }
        }
    }

    fn reset(&self, generation: u64) {
        if let Ok(mut map) = self.map.write() {
            map.clear();
        }
        self.generation.store(generation, Ordering::SeqCst);
    }

    fn lookup(&self, key: &str) -> Option<(PendingEntry, u64)> {
        let map = self.map.read().ok()?;
        let seen = map.get(key)?;
        seen.entry.clone().map(|e| (e, seen.revision))
    }
}

/// The pending store `coracle serve` uses: the watched cache in front of the KV bucket.
pub struct WatchedPending {
    direct: JsonKv<PendingEntry>,
    store: kv::Store,
    client: async_nats::Client,
    cache: Arc<Cache>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for WatchedPending {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl WatchedPending {
    /// Starts watching the restores bucket; lookups go to the bucket directly until the watch runs.
    pub async fn start(
        client: async_nats::Client,
        js: jetstream::Context,
        direct: JsonKv<PendingEntry>,
    ) -> Result<Self, String> {
        let store = coracle_events::bootstrap::bucket(&js, KV_RESTORES).await.map_err(|e| e.to_string())?;
        let cache = Arc::new(Cache::default());
        let watcher = tokio::spawn(watch_forever(js, client.clone(), cache.clone()));
        Ok(WatchedPending { direct, store, client, cache, watcher })
    }

    /// True while the map reflects the bucket up to the watch's lag.
    fn cache_usable(&self) -> bool {
        let generation = self.cache.generation.load(Ordering::SeqCst);
        generation != 0
            && generation == self.client.statistics().connects.load(Ordering::SeqCst)
            && self.client.connection_state() == State::Connected
    }

    /// Keys the cache holds an entry for (what a test waits on to know the watch is running).
    pub fn cached_keys(&self) -> Vec<String> {
        if !self.cache_usable() {
            return Vec::new();
        }
        let map = self.cache.map.read();
        map.map(|m| m.iter().filter(|(_, s)| s.entry.is_some()).map(|(k, _)| k.clone()).collect()).unwrap_or_default()
    }

    async fn claim_direct(&self, key: &str, token: &str) -> Result<Option<(PendingEntry, Role)>, String> {
        match tokio::time::timeout(LOOKUP_WAIT, self.direct.claim(key, token)).await {
            Ok(result) => result,
            Err(_) => Err(format!("NATS KV did not answer within {LOOKUP_WAIT:?}")),
        }
    }
}

/// What the cached copy of one key allows a review to do.
#[derive(Debug, PartialEq)]
enum FromCache {
    /// Decided without NATS: the entry is claimed already (by this pod's token or another's).
    Answer(PendingEntry, Role),
    /// This pod claims the entry: compare-and-set against the revision the cache holds.
    Claim(PendingEntry, u64),
    /// Nothing the cache can vouch for: not held, deleted, or finished (a newer restore may
    /// have replaced it within the lag). Read the bucket.
    ReadBucket,
}

fn from_cache(cached: Option<(PendingEntry, u64)>, token: &str) -> FromCache {
    let Some((mut entry, revision)) = cached.filter(|(e, _)| !e.state.is_terminal()) else {
        return FromCache::ReadBucket;
    };
    match claim(&mut entry, token) {
        (role, false) => FromCache::Answer(entry, role),
        (_, true) => FromCache::Claim(entry, revision),
    }
}

impl PendingStore for WatchedPending {
    async fn claim(&self, key: &str, token: &str) -> Result<Option<(PendingEntry, Role)>, String> {
        let cached = if self.cache_usable() { self.cache.lookup(key) } else { None };
        let (entry, revision) = match from_cache(cached, token) {
            FromCache::Answer(entry, role) => return Ok(Some((entry, role))),
            FromCache::ReadBucket => return self.claim_direct(key, token).await,
            FromCache::Claim(entry, revision) => (entry, revision),
        };
        let body: bytes::Bytes = serde_json::to_vec(&entry).map_err(|e| e.to_string())?.into();
        let write = self.store.update(format!("{PREFIX}{key}"), body, revision);
        match tokio::time::timeout(LOOKUP_WAIT, write).await {
            Ok(Ok(new_revision)) => {
                self.cache.record(key, Some(entry.clone()), new_revision);
                Ok(Some((entry, Role::Owner)))
            }
            // The cache was behind (another pod claimed it, or the entry changed): decide on
            // the bucket's current document.
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => self.claim_direct(key, token).await,
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("NATS KV did not answer within {LOOKUP_WAIT:?}")),
        }
    }
}

/// Keeps a watch running for as long as the process lives, restarting it after errors and
/// after every reconnect.
async fn watch_forever(js: jetstream::Context, client: async_nats::Client, cache: Arc<Cache>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let generation = client.statistics().connects.load(Ordering::SeqCst);
        match watch_once(&js, &client, &cache, generation).await {
            Ok(()) => {
                tracing::info!("NATS reconnected; rebuilding the pending-restore cache");
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                tracing::warn!(error = %e, "pending-restore watch stopped; reading NATS KV directly meanwhile");
                cache.reset(0);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
        cache.reset(0);
    }
}

/// One watch, from each key's latest value on; returns Ok when the connection was re-established
/// (the map must be rebuilt), Err when the watch failed.
async fn watch_once(
    js: &jetstream::Context,
    client: &async_nats::Client,
    cache: &Cache,
    generation: u64,
) -> Result<(), String> {
    if client.connection_state() != State::Connected {
        return Err("not connected to NATS".into());
    }
    // Opened anew each time: after a NATS restart that lost its storage, this recreates the bucket.
    let store = coracle_events::bootstrap::bucket(js, KV_RESTORES).await.map_err(|e| e.to_string())?;
    let mut watch = store.watch_with_history(format!("{PREFIX}>")).await.map_err(|e| e.to_string())?;
    cache.reset(generation);
    let mut check = tokio::time::interval(RECONNECT_CHECK);
    loop {
        tokio::select! {
            next = watch.next() => match next {
                Some(Ok(seen)) => {
                    let Some(key) = seen.key.strip_prefix(PREFIX) else { continue };
                    let entry = match seen.operation {
                        kv::Operation::Put => match serde_json::from_slice::<PendingEntry>(&seen.value) {
                            Ok(e) => Some(e),
                            // Left to the direct read, which reports it.
                            Err(e) => {
                                tracing::warn!(key, error = %e, "unreadable pending restore entry");
                                None
                            }
                        },
                        kv::Operation::Delete | kv::Operation::Purge => None,
                    };
                    cache.record(key, entry, seen.revision);
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("the watch ended".into()),
            },
            _ = check.tick() => {
                if client.statistics().connects.load(Ordering::SeqCst) != generation {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore_state::EntryState;
    use coracle_events::{BackupRef, PendingRestore, RestoreRef, RestoreTarget};

    fn entry(state: EntryState, claim: Option<&str>) -> PendingEntry {
        let mut e = PendingEntry::new(PendingRestore {
            restore: RestoreRef { name: "r".into(), uid: "u".into() },
            backup: BackupRef { name: "b".into(), uid: "bu".into() },
            target_namespace: "shop".into(),
            target: RestoreTarget::Pvc { claim: "data".into() },
            source_namespace: "shop".into(),
            source_pod: "web-0".into(),
            source_volume: "data".into(),
            snapshot_id: "s".into(),
            identity: "pvc/x".into(),
        });
        e.state = state;
        e.claim = claim.map(str::to_string);
        e
    }

    #[test]
    fn only_live_entries_are_answered_from_the_cache() {
        // Not held: a brand-new entry may not have arrived yet.
        assert_eq!(from_cache(None, "me"), FromCache::ReadBucket);
        // Finished: a new restore may have replaced it within the lag.
        for state in [EntryState::Completed, EntryState::Failed] {
            assert_eq!(from_cache(Some((entry(state, Some("other")), 7)), "me"), FromCache::ReadBucket);
        }
    }

    #[test]
    fn a_pending_entry_is_claimed_by_compare_and_set_on_the_cached_revision() {
        match from_cache(Some((entry(EntryState::Pending, None), 7)), "me") {
            FromCache::Claim(e, 7) => assert_eq!((e.state, e.claim.as_deref()), (EntryState::Claimed, Some("me"))),
            other => panic!("expected a claim at revision 7, got {other:?}"),
        }
    }

    #[test]
    fn a_claimed_entry_is_answered_without_nats() {
        let claimed = entry(EntryState::Claimed, Some("other"));
        assert_eq!(from_cache(Some((claimed.clone(), 7)), "me"), FromCache::Answer(claimed.clone(), Role::Waiter));
        // A reinvocation with the same token keeps the pod the owner.
        assert_eq!(from_cache(Some((claimed.clone(), 7)), "other"), FromCache::Answer(claimed, Role::Owner));
    }

    #[test]
    fn the_newer_revision_wins_whichever_arrives_first() {
        let cache = Cache::default();
        cache.record("k", Some(entry(EntryState::Claimed, Some("a"))), 9);
        // The watch delivering the older write after this process's own compare-and-set.
        cache.record("k", Some(entry(EntryState::Pending, None)), 8);
        assert_eq!(cache.lookup("k").map(|(e, r)| (e.state, r)), Some((EntryState::Claimed, 9)));
        cache.record("k", None, 10);
        assert!(cache.lookup("k").is_none(), "a deleted key is not answered from the cache");
    }
}
