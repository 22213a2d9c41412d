//! Coracle's functions: pure planners over a snapshot of cluster objects, and the thin
//! adapters (Kubernetes, NATS, Lambda) that feed them and carry out their plans.

pub mod settings;
pub mod snapshot;
