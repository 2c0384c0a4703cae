//! The sidecar's HTTP API (see the route table in DESIGN.md).

pub mod assets;
pub mod auth;
pub mod error;
pub mod events;
pub mod executions;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::sidecar::Service;

pub use error::ApiError;

/// The routes that need the bearer token.
pub fn api_routes(svc: Arc<Service>) -> Router {
    Router::new()
        .route("/v1/executions", post(executions::submit).get(executions::list))
        .route("/v1/executions/{id}", get(executions::get))
        .route("/v1/executions/{id}/cancel", post(executions::cancel))
        .route("/v1/kernel", get(executions::kernel))
        .route("/v1/kernel/interrupt", post(executions::interrupt))
        .route("/v1/kernel/restart", post(executions::restart))
        .route("/v1/status", get(executions::status))
        .route("/v1/assets", get(assets::list))
        .route("/v1/assets/{name}", get(assets::content).delete(assets::delete))
        .route("/v1/assets/{name}/pin", post(assets::pin).delete(assets::unpin))
        .route("/v1/events", get(events::sse))
        .route("/v1/events/ws", get(events::ws))
        .layer(DefaultBodyLimit::max(
            svc.cfg.max_code_bytes.saturating_mul(6).saturating_add(1 << 20),
        ))
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

/// Kernel send buffer per connection. Fixed rather than autotuned (up to 4 MiB
/// on Linux), so that a client that stops reading holds little memory in the
/// kernel and falls behind its event queue, where the bus cuts it off.
const SEND_BUFFER: usize = 256 * 1024;

/// Binds and serves until `shutdown` resolves. Accepted connections get
/// TCP_NODELAY: without it Nagle's algorithm adds ~40 ms to small replies.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        if let Err(e) = socket2::SockRef::from(&*tcp).set_send_buffer_size(SEND_BUFFER) {
            tracing::debug!(error = %e, "SO_SNDBUF");
        }
    });
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}
