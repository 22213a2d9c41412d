//! Backup records in the `coracle-backups` KV bucket, changed only by compare-and-set so
//! concurrent record-result runs never lose an update.

use crate::record::BackupRecord;
use async_nats::jetstream::{self, kv};
use coracle_events::bootstrap;
use coracle_events::subjects::KV_BACKUPS;
use futures::TryStreamExt;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("backup records: {0}")]
    Unavailable(String),
    #[error("backup record {key} is not valid JSON: {reason}")]
    Corrupt { key: String, reason: String },
}

pub enum Created {
    Created,
    /// A record with this name exists already (returned as stored).
    Exists(Box<BackupRecord>),
}

#[derive(Clone)]
pub struct RecordStore {
    kv: kv::Store,
}

/// How many times a compare-and-set is retried against concurrent writers before giving up.
const CAS_ATTEMPTS: usize = 64;

impl RecordStore {
    pub async fn open(js: &jetstream::Context) -> Result<Self, StoreError> {
        let kv = bootstrap::bucket(js, KV_BACKUPS).await.map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(RecordStore { kv })
    }

    pub async fn get(&self, name: &str) -> Result<Option<(BackupRecord, u64)>, StoreError> {
        let entry = self.kv.entry(name).await.map_err(|e| StoreError::Unavailable(e.to_string()))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let record = serde_json::from_slice(&e.value)
                    .map_err(|err| StoreError::Corrupt { key: name.to_string(), reason: err.to_string() })?;
                Ok(Some((record, e.revision)))
            }
            _ => Ok(None),
        }
    }

    pub async fn create(&self, record: &BackupRecord) -> Result<Created, StoreError> {
        let key = record.backup.name.as_str();
        match self.kv.create(key, serde_json::to_vec(record).unwrap_or_default().into()).await {
            Ok(_) => Ok(Created::Created),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => match self.get(key).await? {
                Some((existing, _)) => Ok(Created::Exists(Box::new(existing))),
                None => Err(StoreError::Unavailable(format!("record {key} exists but cannot be read"))),
            },
            Err(e) => Err(StoreError::Unavailable(e.to_string())),
        }
    }

    /// Applies `change` with compare-and-set, retrying on concurrent updates. `change` returns
    /// whether it changed anything; an unchanged record is not written. Returns the record as
    /// stored afterwards, or None when there is no such record.
    pub async fn modify<F>(&self, name: &str, mut change: F) -> Result<Option<BackupRecord>, StoreError>
    where
        F: FnMut(&mut BackupRecord) -> bool,
    {
        for _ in 0..CAS_ATTEMPTS {
            let Some((mut record, revision)) = self.get(name).await? else { return Ok(None) };
            if !change(&mut record) {
                return Ok(Some(record));
            }
            let body = serde_json::to_vec(&record).unwrap_or_default();
            match self.kv.update(name, body.into(), revision).await {
                Ok(_) => return Ok(Some(record)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(StoreError::Unavailable(e.to_string())),
            }
        }
        Err(StoreError::Unavailable(format!("record {name}: too many concurrent updates")))
    }

    pub async fn list(&self) -> Result<Vec<BackupRecord>, StoreError> {
        let keys: Vec<String> = match self.kv.keys().await {
            Ok(k) => k.try_collect().await.map_err(|e| StoreError::Unavailable(e.to_string()))?,
            Err(e) => return Err(StoreError::Unavailable(e.to_string())),
        };
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some((r, _)) = self.get(&key).await? {
                out.push(r);
            }
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.started));
        Ok(out)
    }
}
