//! notebook-operator: a Kubernetes operator and an in-pod sidecar that serve
//! Jupyter kernels to agents and people. See `../shared/DESIGN.md`.
#![forbid(unsafe_code)]

pub mod apiserver_probe;
pub mod assets;
pub mod cli;
pub mod cmd;
pub mod confined;
pub mod events;
pub mod gateway;
pub mod http;
pub mod jupyter;
pub mod kernel;
pub mod mcp;
pub mod notebook;
pub mod operator;
pub mod sidecar;
pub mod sidecar_api;
pub mod store;
pub mod util;

#[cfg(test)]
mod module_graph;
