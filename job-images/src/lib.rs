//! `coracle-volume-job`: the binary each Coracle backup Job index runs. It resolves one pod
//! volume on the node (through the kubelet's pods directory mounted read-only), backs it up
//! with restic into the namespace's repository, publishes progress and the result to NATS
//! when configured, and always writes the result to the termination message.
//!
//! The [`restic`] adapter, [`keys`] and [`paths`] are meant for reuse by the restore path.

pub mod backup;
pub mod cli;
pub mod keys;
pub mod names;
pub mod notify;
pub mod paths;
pub mod progress;
pub mod restic;
pub mod scrub;
pub mod tags;
pub mod termination;

pub use keys::namespace_password;
