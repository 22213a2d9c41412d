//! Publishing events to JetStream with `Nats-Msg-Id` = CloudEvent id, so the stream's
//! duplicate window drops re-publications of the same fact.

use crate::envelope::{CloudEvent, EventData};
use async_nats::jetstream;
use async_nats::HeaderMap;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
#[error("publishing {id} to {subject}: {reason}")]
pub struct PublishError {
    pub subject: String,
    pub id: String,
    pub reason: String,
}

/// Outcome of one publish: whether the stream already had an event with this id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub duplicate: bool,
    pub sequence: u64,
}

#[derive(Clone)]
pub struct Publisher {
    js: jetstream::Context,
}

impl Publisher {
    pub fn new(js: jetstream::Context) -> Self {
        Publisher { js }
    }

    pub fn context(&self) -> &jetstream::Context {
        &self.js
    }

    /// Publishes a typed event on its own subject.
    pub async fn publish<T: EventData>(&self, event: &CloudEvent<T>) -> Result<Published, PublishError> {
        self.publish_to(T::SUBJECT, event).await
    }

    /// Publishes an event on an explicit subject (dead letters, bridged Kubernetes events).
    pub async fn publish_to<T: Serialize>(
        &self,
        subject: &str,
        event: &CloudEvent<T>,
    ) -> Result<Published, PublishError> {
        self.publish_raw(subject, &event.id, event.to_json()).await
    }

    pub async fn publish_raw(&self, subject: &str, id: &str, payload: Vec<u8>) -> Result<Published, PublishError> {
        let err = |reason: String| PublishError { subject: subject.to_string(), id: id.to_string(), reason };
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        let ack = self
            .js
            .publish_with_headers(subject.to_string(), headers, payload.into())
            .await
            .map_err(|e| err(e.to_string()))?
            .await
            .map_err(|e| err(e.to_string()))?;
        Ok(Published { duplicate: ack.duplicate, sequence: ack.sequence })
    }
}
