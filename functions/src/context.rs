//! What a function may reach while handling an event: the Kubernetes API, NATS, or neither
//! (offline runs collect the events they would publish instead).

use crate::kv_json::{JsonKv, StoreError};
use crate::parents::NamespaceParents;
use crate::record::BackupRecord;
use crate::restore_state::{PendingEntry, RestoreRecord};
use coracle_events::consume::HandleError;
use coracle_events::publish::Publisher;
use coracle_events::subjects::{KV_BACKUPS, KV_PARENTS, KV_RESTORES};
use coracle_events::{CloudEvent, EventData};
use serde_json::Value;
use std::sync::Mutex;

pub struct Nats {
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub publisher: Publisher,
    pub records: JsonKv<BackupRecord>,
    pub restores: JsonKv<RestoreRecord>,
    /// Pending restore entries, keyed by `plan_restore::pending_key`.
    pub pending: JsonKv<PendingEntry>,
    /// Parent hints, opened on first use: only plan-backup and record-result read them.
    parents: tokio::sync::OnceCell<JsonKv<NamespaceParents>>,
}

impl Nats {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        // The URL may carry the component's NATS user and password: never in an error.
        let shown = coracle_events::redact::redact_url_credentials(url);
        let client = coracle_events::nats_auth::connect_options(url)
            .connect(url)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to NATS at {shown}: {e}"))?;
        let js = async_nats::jetstream::new(client.clone());
        coracle_events::bootstrap::ensure(&js).await?;
        let records = JsonKv::open(&js, KV_BACKUPS, "").await?;
        let restores = JsonKv::open(&js, KV_RESTORES, "record.").await?;
        let pending = JsonKv::open(&js, KV_RESTORES, "pending.").await?;
        Ok(Nats {
            publisher: Publisher::new(js.clone()),
            client,
            js,
            records,
            restores,
            pending,
            parents: tokio::sync::OnceCell::new(),
        })
    }

    /// The parent hints (`crate::parents`), bucket opened once per connection.
    pub async fn parents(&self) -> Result<&JsonKv<NamespaceParents>, StoreError> {
        self.parents.get_or_try_init(|| JsonKv::open(&self.js, KV_PARENTS, "")).await
    }
}

pub struct Context {
    pub kube: Option<kube::Client>,
    pub nats: Option<Nats>,
    /// Namespace of Coracle's ConfigMap, Secret and Jobs.
    pub system_namespace: String,
    emitted: Mutex<Vec<Value>>,
}

impl Context {
    pub fn new(kube: Option<kube::Client>, nats: Option<Nats>, system_namespace: &str) -> Self {
        Context { kube, nats, system_namespace: system_namespace.to_string(), emitted: Mutex::new(Vec::new()) }
    }

    pub fn kube(&self) -> Result<&kube::Client, HandleError> {
        self.kube.as_ref().ok_or_else(|| HandleError::permanent("no Kubernetes API configured (set KUBECONFIG)"))
    }

    pub fn records(&self) -> Option<&JsonKv<BackupRecord>> {
        self.nats.as_ref().map(|n| &n.records)
    }

    /// Publishes an event, or keeps it for printing when running without NATS.
    pub async fn emit<T: EventData>(&self, event: &CloudEvent<T>) -> Result<(), HandleError> {
        match &self.nats {
            Some(n) => n.publisher.publish(event).await.map(|_| ()).map_err(HandleError::retryable),
            None => {
                let value = serde_json::to_value(event).unwrap_or(Value::Null);
                if let Ok(mut v) = self.emitted.lock() {
                    v.push(value);
                }
                Ok(())
            }
        }
    }

    /// Events collected by offline runs since the last call.
    pub fn take_emitted(&self) -> Vec<Value> {
        self.emitted.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default()
    }
}
