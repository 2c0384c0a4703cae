//! notebook-operator: a Kubernetes operator and an in-pod sidecar that serve
//! Jupyter kernels to agents and people. See `../shared/DESIGN.md`.
#![forbid(unsafe_code)]

pub mod cli;
pub mod jupyter;
pub mod util;
pub mod store;
pub mod events;
pub mod kernel;
pub mod sidecar;
pub mod http;
pub mod notebook;
pub mod mcp;
pub mod cmd;
