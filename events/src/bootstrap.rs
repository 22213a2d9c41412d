//! Idempotent creation of the `CORACLE` stream and the KV buckets (`coracle setup nats`).

use crate::subjects;
use async_nats::jetstream::{self, kv, stream};
use std::time::Duration;

/// Window within which a re-published event (same `Nats-Msg-Id`) is dropped by the stream.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);
/// How long events stay in the stream; results live on in KV and in restic's tags.
pub const EVENT_RETENTION: Duration = Duration::from_secs(14 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("creating or updating stream {STREAM}: {0}", STREAM = subjects::STREAM)]
    Stream(String),
    #[error("creating KV bucket {bucket}: {reason}")]
    Bucket { bucket: String, reason: String },
}

pub fn stream_config() -> stream::Config {
    stream::Config {
        name: subjects::STREAM.to_string(),
        subjects: vec![subjects::ALL.to_string()],
        duplicate_window: DUPLICATE_WINDOW,
        max_age: EVENT_RETENTION,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// Creates (or brings up to date) the stream and every KV bucket. Safe to run any number of times.
pub async fn ensure(js: &jetstream::Context) -> Result<(), BootstrapError> {
    js.create_or_update_stream(stream_config()).await.map_err(|e| BootstrapError::Stream(e.to_string()))?;
    for bucket in subjects::KV_BUCKETS {
        ensure_bucket(js, bucket).await?;
    }
    Ok(())
}

async fn ensure_bucket(js: &jetstream::Context, bucket: &str) -> Result<kv::Store, BootstrapError> {
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok(store);
    }
    let created = js
        .create_key_value(kv::Config {
            bucket: bucket.to_string(),
            history: 5,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        // Another bootstrap won the race: the bucket exists now.
        Err(e) => js
            .get_key_value(bucket)
            .await
            .map_err(|_| BootstrapError::Bucket { bucket: bucket.to_string(), reason: e.to_string() }),
    }
}

/// Opens a KV bucket, creating the whole layout first if it is missing.
pub async fn bucket(js: &jetstream::Context, bucket: &str) -> Result<kv::Store, BootstrapError> {
    match js.get_key_value(bucket).await {
        Ok(store) => Ok(store),
        Err(_) => {
            ensure(js).await?;
            ensure_bucket(js, bucket).await
        }
    }
}
