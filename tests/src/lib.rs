//! Test support for the Coracle workspace: a simulated Kubernetes API server ([`sim`]), a real nats-server
//! with JetStream ([`nats`]), and an AWS Lambda Runtime API emulator ([`lambda`]), and process
//! helpers ([`process`]).

pub mod binaries;
pub mod harness;
pub mod install;
pub mod kubelet;
pub mod lambda;
pub mod nats;
pub mod process;
pub mod sim;
pub mod tls;

mod server_thread;
