//! JSON documents in a JetStream KV bucket, changed only by compare-and-set so concurrent
//! function runs never lose an update. Backup records, restore records and pending restore
//! entries are all kept this way.

use async_nats::jetstream::{self, kv};
use coracle_events::bootstrap;
use futures::TryStreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("KV {bucket}: {reason}")]
    Unavailable { bucket: String, reason: String },
    #[error("KV {bucket} key {key} does not hold a valid document: {reason}")]
    Corrupt { bucket: String, key: String, reason: String },
}

pub enum Created<T> {
    Created,
    /// A document with this key exists already (returned as stored).
    Exists(Box<T>),
}

/// How many times a compare-and-set is retried against concurrent writers before giving up.
const CAS_ATTEMPTS: usize = 64;

/// Documents of type `T` under `<prefix><key>` in one bucket.
pub struct JsonKv<T> {
    kv: kv::Store,
    bucket: &'static str,
    prefix: &'static str,
    _doc: PhantomData<fn() -> T>,
}

impl<T> Clone for JsonKv<T> {
    fn clone(&self) -> Self {
        JsonKv { kv: self.kv.clone(), bucket: self.bucket, prefix: self.prefix, _doc: PhantomData }
    }
}

impl<T: Serialize + DeserializeOwned> JsonKv<T> {
    pub async fn open(js: &jetstream::Context, bucket: &'static str, prefix: &'static str) -> Result<Self, StoreError> {
        let kv = bootstrap::bucket(js, bucket)
            .await
            .map_err(|e| StoreError::Unavailable { bucket: bucket.to_string(), reason: e.to_string() })?;
        Ok(JsonKv { kv, bucket, prefix, _doc: PhantomData })
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable { bucket: self.bucket.to_string(), reason: e.to_string() }
    }

    fn encode(value: &T) -> bytes::Bytes {
        // Serialising plain data structures cannot fail.
        serde_json::to_vec(value).unwrap_or_default().into()
    }

    pub async fn get(&self, key: &str) -> Result<Option<(T, u64)>, StoreError> {
        let full = format!("{}{key}", self.prefix);
        let entry = self.kv.entry(full.as_str()).await.map_err(|e| self.unavailable(e))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let doc = serde_json::from_slice(&e.value).map_err(|err| StoreError::Corrupt {
                    bucket: self.bucket.to_string(),
                    key: full,
                    reason: err.to_string(),
                })?;
                Ok(Some((doc, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Creates the document unless one exists (after a delete, creating again is allowed).
    pub async fn create(&self, key: &str, value: &T) -> Result<Created<T>, StoreError> {
        let full = format!("{}{key}", self.prefix);
        match self.kv.create(full.as_str(), Self::encode(value)).await {
            Ok(_) => Ok(Created::Created),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => match self.get(key).await? {
                Some((existing, _)) => Ok(Created::Exists(Box::new(existing))),
                None => Err(self.unavailable(format!("{full} exists but cannot be read"))),
            },
            Err(e) => Err(self.unavailable(e)),
        }
    }

    /// Applies `change` with compare-and-set, retrying on concurrent updates. `change` returns
    /// whether it changed anything; an unchanged document is not written. Returns the document
    /// as stored afterwards, or None when there is none.
    pub async fn modify<F>(&self, key: &str, change: F) -> Result<Option<T>, StoreError>
    where
        F: FnMut(&mut T) -> bool,
    {
        Ok(self.modify_from(key, None, change).await?.map(|(doc, _)| doc))
    }

    /// [`Self::modify`] starting from a document and revision already in hand (the one this
    /// process just wrote, say), which saves the read while nobody else has written since; a
    /// conflict falls back to reading. Returns the document as stored and its revision.
    pub async fn modify_from<F>(
        &self,
        key: &str,
        mut known: Option<(T, u64)>,
        mut change: F,
    ) -> Result<Option<(T, u64)>, StoreError>
    where
        F: FnMut(&mut T) -> bool,
    {
        let full = format!("{}{key}", self.prefix);
        for _ in 0..CAS_ATTEMPTS {
            let current = match known.take() {
                Some(doc) => Some(doc),
                None => self.get(key).await?,
            };
            let Some((mut doc, revision)) = current else { return Ok(None) };
            if !change(&mut doc) {
                return Ok(Some((doc, revision)));
            }
            match self.kv.update(full.as_str(), Self::encode(&doc), revision).await {
                Ok(written) => return Ok(Some((doc, written))),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(self.unavailable(e)),
            }
        }
        Err(self.unavailable(format!("{full}: too many concurrent updates")))
    }

    /// Every document under this prefix.
    pub async fn list(&self) -> Result<Vec<T>, StoreError> {
        let keys: Vec<String> = match self.kv.keys().await {
            Ok(k) => k.try_collect().await.map_err(|e| self.unavailable(e))?,
            Err(e) => return Err(self.unavailable(e)),
        };
        let mut out = Vec::with_capacity(keys.len());
        for key in keys.iter().filter_map(|k| k.strip_prefix(self.prefix)) {
            if let Some((doc, _)) = self.get(key).await? {
                out.push(doc);
            }
        }
        Ok(out)
    }
}
