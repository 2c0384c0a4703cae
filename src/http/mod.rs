//! The sidecar's HTTP API (see the route table in DESIGN.md).

pub mod assets;
pub mod auth;
pub mod channels;
pub mod claim;
pub mod error;
pub mod events;
pub mod executions;
pub mod metrics;
pub mod server;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::sidecar::Service;

pub use error::ApiError;

/// Largest request body, in bytes: room for the largest code, JSON-escaped.
pub fn body_limit(cfg: &crate::sidecar::Config) -> usize {
    cfg.max_code_bytes.saturating_mul(6).saturating_add(1 << 20)
}

/// The routes that need the bearer token.
pub fn api_routes(svc: Arc<Service>) -> Router {
    Router::new()
        .route("/v1/executions", post(executions::submit).get(executions::list))
        .route("/v1/executions/{id}", get(executions::get))
        .route("/v1/executions/{id}/cancel", post(executions::cancel))
        .route("/v1/kernel", get(executions::kernel))
        .route("/v1/kernel/interrupt", post(executions::interrupt))
        .route("/v1/kernel/restart", post(executions::restart))
        .route("/v1/kernel/channels", get(channels::channels))
        .route("/v1/status", get(executions::status))
        .route("/v1/assets", get(assets::list))
        .route("/v1/assets/{name}", get(assets::content).delete(assets::delete))
        .route("/v1/assets/{name}/pin", post(assets::pin).delete(assets::unpin))
        .route("/v1/events", get(events::sse))
        .route("/v1/events/ws", get(events::ws))
        .layer(DefaultBodyLimit::max(body_limit(&svc.cfg)))
        .with_state(svc)
}

/// Routes without a token: liveness, readiness and metrics.
pub fn open_routes(svc: Arc<Service>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(executions::readyz))
        .route("/metrics", get(metrics::render))
        .with_state(svc)
}

pub use server::serve;
