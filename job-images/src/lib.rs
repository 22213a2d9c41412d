//! `coracle-volume-job`: the binary each Coracle backup or restore Job index runs.
//!
//! `backup` resolves one pod volume on the node (through the kubelet's pods directory mounted
//! read-only), backs it up with restic into the namespace's repository, publishes progress and
//! the result to NATS when configured, and always writes the result to the termination message.
//!
//! `restore` resolves one volume of the target pod (through that pod's directory mounted
//! read-write), restores a snapshot into it and leaves the marker the pod's restore-wait init
//! container waits for, reporting the same way. Both share [`job`], [`restic`], [`keys`],
//! [`paths`], [`notify`] and [`termination`].

pub mod backup;
pub mod cli;
pub mod job;
pub mod keys;
pub mod maintenance;
pub mod markers;
pub use coracle_events::names;
pub mod notify;
pub mod paths;
pub mod progress;
pub mod restic;
pub mod restore;
pub mod scrub;
pub mod tags;
pub mod termination;

pub use keys::namespace_password;
