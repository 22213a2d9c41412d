//! CloudEvents 1.0 structured-mode JSON envelope.
//!
//! Events from Argo Events and Knative arrive in the same structured shape, sometimes with
//! `data_base64` instead of `data`; both are accepted. Unknown attributes are kept as
//! extensions so a re-published event loses nothing.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const SPEC_VERSION: &str = "1.0";
const TYPE_PREFIX: &str = "dev.coracle.";

/// Data of one Coracle event type: its versioned CloudEvent `type` and its NATS subject.
pub trait EventData: Serialize + DeserializeOwned {
    const TYPE: &'static str;
    const SUBJECT: &'static str;
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CloudEvent<T = Value> {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataschema: Option<String>,
    pub data: T,
    /// Extension attributes (and anything else a producer added), preserved verbatim.
    #[serde(flatten)]
    pub extensions: Map<String, Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a structured CloudEvent: {0}")]
    Malformed(String),
    #[error("unsupported CloudEvents specversion {0:?} (want \"1.0\")")]
    SpecVersion(String),
    #[error("event type {got:?} is not {want:?}")]
    WrongType { got: String, want: &'static str },
    #[error("unsupported version of event type {got:?} (this build understands {want:?})")]
    UnknownVersion { got: String, want: &'static str },
    #[error("data of {ty} is invalid: {reason}")]
    BadData { ty: String, reason: String },
}

impl<T: EventData> CloudEvent<T> {
    /// A new event of this type with the given deterministic id. Ids are chosen by the caller
    /// so that re-publishing the same fact yields the same `Nats-Msg-Id` and is de-duplicated.
    pub fn new(id: impl Into<String>, source: impl Into<String>, subject: Option<String>, data: T) -> Self {
        CloudEvent {
            specversion: SPEC_VERSION.into(),
            id: id.into(),
            source: source.into(),
            ty: T::TYPE.into(),
            subject,
            time: Some(Utc::now()),
            datacontenttype: Some("application/json".into()),
            dataschema: None,
            data,
            extensions: Map::new(),
        }
    }
}

impl<T: Serialize> CloudEvent<T> {
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain data structures cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl CloudEvent<Value> {
    /// Parses any structured CloudEvent, resolving `data_base64` into `data`.
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut obj: Map<String, Value> = match serde_json::from_slice(bytes) {
            Ok(Value::Object(o)) => o,
            Ok(_) => return Err(DecodeError::Malformed("not a JSON object".into())),
            Err(e) => return Err(DecodeError::Malformed(e.to_string())),
        };
        if !obj.contains_key("data") {
            match obj.remove("data_base64") {
                Some(Value::String(b64)) => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(b64.as_bytes())
                        .map_err(|e| DecodeError::Malformed(format!("data_base64: {e}")))?;
                    let data =
                        serde_json::from_slice(&raw).unwrap_or(Value::String(String::from_utf8_lossy(&raw).into()));
                    obj.insert("data".into(), data);
                }
                Some(_) => return Err(DecodeError::Malformed("data_base64 is not a string".into())),
                None => {
                    obj.insert("data".into(), Value::Null);
                }
            }
        }
        let ev: CloudEvent<Value> =
            serde_json::from_value(Value::Object(obj)).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if ev.specversion != SPEC_VERSION {
            return Err(DecodeError::SpecVersion(ev.specversion));
        }
        if ev.id.is_empty() || ev.source.is_empty() || ev.ty.is_empty() {
            return Err(DecodeError::Malformed("id, source and type must not be empty".into()));
        }
        Ok(ev)
    }

    /// Checks the type (and its version) and decodes the data.
    pub fn into_typed<T: EventData>(self) -> Result<CloudEvent<T>, DecodeError> {
        if self.ty != T::TYPE {
            let same_family = strip_version(&self.ty).is_some_and(|f| Some(f) == strip_version(T::TYPE));
            return Err(if same_family {
                DecodeError::UnknownVersion { got: self.ty, want: T::TYPE }
            } else {
                DecodeError::WrongType { got: self.ty, want: T::TYPE }
            });
        }
        let data = serde_json::from_value(self.data)
            .map_err(|e| DecodeError::BadData { ty: self.ty.clone(), reason: e.to_string() })?;
        Ok(CloudEvent {
            specversion: self.specversion,
            id: self.id,
            source: self.source,
            ty: self.ty,
            subject: self.subject,
            time: self.time,
            datacontenttype: self.datacontenttype,
            dataschema: self.dataschema,
            data,
            extensions: self.extensions,
        })
    }

    /// True for Coracle's own event types (`dev.coracle.…`).
    pub fn is_coracle(&self) -> bool {
        self.ty.starts_with(TYPE_PREFIX)
    }
}

/// Parses and type-checks in one step.
pub fn decode<T: EventData>(bytes: &[u8]) -> Result<CloudEvent<T>, DecodeError> {
    CloudEvent::parse(bytes)?.into_typed()
}

/// `dev.coracle.backup.requested.v1` → `dev.coracle.backup.requested`.
fn strip_version(ty: &str) -> Option<&str> {
    let (family, version) = ty.rsplit_once('.')?;
    let digits = version.strip_prefix('v')?;
    (!digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())).then_some(family)
}
