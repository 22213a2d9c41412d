//! A list-then-watch cache of one resource type over the API (what client-go's informers are to real
//! controllers): LIST once, WATCH from the list's resourceVersion, resume after a watch ends, re-LIST after
//! `410 Gone` or an error. Every change wakes the controllers that asked to be notified.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt as _;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::{Resource, ResourceExt as _};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

/// How long one watch request lasts before it is renewed.
const WATCH_SECONDS: u32 = 60;
const RETRY: Duration = Duration::from_millis(200);

type Key = (String, String);

/// The cache; clones share it.
pub(crate) struct Informer<K> {
    objects: Arc<RwLock<BTreeMap<Key, K>>>,
    synced: Arc<AtomicBool>,
}

impl<K> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Self { objects: self.objects.clone(), synced: self.synced.clone() }
    }
}

impl<K> Informer<K>
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    /// Starts the list/watch loop on the current runtime; it runs until its task is aborted.
    pub(crate) fn start(
        api: Api<K>,
        label_selector: Option<String>,
        field_selector: Option<String>,
        notify: Vec<Arc<Notify>>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let informer = Self { objects: Arc::default(), synced: Arc::default() };
        let task = tokio::spawn(informer.clone().run(api, label_selector, field_selector, notify));
        (informer, task)
    }

    async fn run(
        self,
        api: Api<K>,
        label_selector: Option<String>,
        field_selector: Option<String>,
        notify: Vec<Arc<Notify>>,
    ) {
        let wake = || notify.iter().for_each(|n| n.notify_one());
        let mut lp = ListParams::default();
        let mut wp = WatchParams::default().timeout(WATCH_SECONDS);
        if let Some(l) = &label_selector {
            lp = lp.labels(l);
            wp = wp.labels(l);
        }
        if let Some(f) = &field_selector {
            lp = lp.fields(f);
            wp = wp.fields(f);
        }
        loop {
            let list = match api.list(&lp).await {
                Ok(list) => list,
                Err(e) => {
                    tracing::debug!("informer list failed: {e}");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            let mut rv = list.metadata.resource_version.clone().unwrap_or_default();
            {
                let mut objects = self.objects.write().unwrap_or_else(|e| e.into_inner());
                objects.clear();
                for item in list.items {
                    objects.insert(key(&item), item);
                }
            }
            self.synced.store(true, Ordering::SeqCst);
            wake();
            // Watch until the history is gone (re-list) or the request fails (re-list after a pause).
            'watch: loop {
                let mut stream = match api.watch(&wp, &rv).await {
                    Ok(s) => s.boxed(),
                    Err(e) => {
                        tracing::debug!("informer watch failed: {e}");
                        tokio::time::sleep(RETRY).await;
                        break 'watch;
                    }
                };
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(WatchEvent::Added(o)) | Ok(WatchEvent::Modified(o)) => {
                            rv = o.resource_version().unwrap_or(rv);
                            self.objects.write().unwrap_or_else(|e| e.into_inner()).insert(key(&o), o);
                            wake();
                        }
                        Ok(WatchEvent::Deleted(o)) => {
                            rv = o.resource_version().unwrap_or(rv);
                            self.objects.write().unwrap_or_else(|e| e.into_inner()).remove(&key(&o));
                            wake();
                        }
                        Ok(WatchEvent::Bookmark(b)) => rv = b.metadata.resource_version,
                        Ok(WatchEvent::Error(status)) => {
                            tracing::debug!("informer watch error: {status:?}");
                            break 'watch;
                        }
                        Err(e) => {
                            tracing::debug!("informer watch stream failed: {e}");
                            tokio::time::sleep(RETRY).await;
                            break 'watch;
                        }
                    }
                }
            }
        }
    }

    /// Whether the first LIST has landed (before that, "not in the cache" means nothing).
    pub(crate) fn synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    pub(crate) fn list(&self) -> Vec<K> {
        self.objects.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    pub(crate) fn get(&self, namespace: &str, name: &str) -> Option<K> {
        self.objects.read().unwrap_or_else(|e| e.into_inner()).get(&(namespace.to_string(), name.to_string())).cloned()
    }
}

fn key<K: Resource>(o: &K) -> Key {
    (o.namespace().unwrap_or_default(), o.name_any())
}
