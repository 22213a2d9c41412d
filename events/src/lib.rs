//! Coracle's event contract: the CloudEvents envelope, every event type with typed data, the
//! NATS subjects they travel on, the JetStream stream/KV bootstrap, publishing with
//! de-duplication, and the consume loop every function runner shares.

pub mod bootstrap;
pub mod consume;
pub mod duration;
pub mod envelope;
pub mod names;
pub mod nats_auth;
pub mod publish;
pub mod redact;
pub mod subjects;
pub mod types;

pub use envelope::{CloudEvent, DecodeError, EventData};
pub use types::*;
