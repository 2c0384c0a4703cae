//! notebook-operator: a Kubernetes operator and an in-pod sidecar that serve
//! Jupyter kernels to agents and people. See `../shared/DESIGN.md`.
#![forbid(unsafe_code)]

pub mod cli;
pub mod operator;
