//! The operator: custom resources, pure builders of the objects a session owns,
//! and the controllers that apply them.

pub mod assets;
pub mod backoff;
pub mod builders;
pub mod cache;
pub mod conditions;
pub mod controller;
pub mod converge;
pub mod crd;
pub mod egress;
pub mod error;
pub mod events;
pub mod leader;
pub mod metrics;
pub mod network;
pub mod pools;
pub mod run;
pub mod sidecar_client;
pub mod sidecar_watch;
pub mod status;
pub mod writes;

pub use run::{run_blocking, RunArgs};

#[cfg(test)]
mod fixtures;
