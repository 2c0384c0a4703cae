//! MCP (Model Context Protocol) at `/mcp`: the streamable HTTP transport of
//! the official Rust SDK, served on the sidecar's port behind the same
//! bearer-token middleware as the HTTP API (so a wrong token is a 401 before
//! any MCP processing). The transport checks `Host` against `allowed_hosts`
//! (DNS rebinding) and a browser's `Origin` against the same host names.

pub mod content;
pub mod error;
pub mod guard;
pub mod output;
pub mod progress;
pub mod tasks;
pub mod tools;

use std::sync::Arc;

use axum::Router;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::notebook::NotebookSync;
use crate::sidecar::Service;

pub use error::ToolError;
pub use tools::Tools;

/// Host names the sidecar always answers to, besides the configured ones.
pub const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// How long an MCP session may stay idle before it is closed.
pub const SESSION_IDLE: std::time::Duration = std::time::Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct McpOptions {
    /// Host names (optionally `host:port`) clients may address the sidecar by.
    pub allowed_hosts: Vec<String>,
}

impl McpOptions {
    /// The loopback names (so `kubectl port-forward` and in-pod clients
    /// work) and `hosts`.
    pub fn new(hosts: Vec<String>) -> McpOptions {
        let mut allowed: Vec<String> = LOOPBACK_HOSTS.iter().map(|h| h.to_string()).collect();
        for h in hosts
            .into_iter()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
        {
            if !allowed.contains(&h) {
                allowed.push(h);
            }
        }
        McpOptions {
            allowed_hosts: allowed,
        }
    }

    /// Browser origins allowed: the same host names, over http or https, on
    /// any port. Requests without `Origin` (every non-browser client) pass.
    pub fn allowed_origins(&self) -> Vec<String> {
        let mut out = Vec::new();
        for h in &self.allowed_hosts {
            let host = match h.parse::<std::net::Ipv6Addr>() {
                Ok(_) => format!("[{h}]"),
                Err(_) => match h.rsplit_once(':') {
                    // `host:port` entries: the origin names the host alone.
                    Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) && !name.contains(':') => {
                        name.to_string()
                    }
                    _ => h.clone(),
                },
            };
            for scheme in ["http", "https"] {
                out.push(format!("{scheme}://{host}:*"));
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// The `/mcp` route. Merge it into the routes behind the token middleware.
pub fn router(
    svc: Arc<Service>,
    sync: Arc<NotebookSync>,
    opts: &McpOptions,
    shutdown: CancellationToken,
) -> Router {
    let body_limit = svc.cfg.max_code_bytes.saturating_mul(6).saturating_add(1 << 20);
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(opts.allowed_hosts.clone())
        .with_allowed_origins(opts.allowed_origins())
        .enforce_origin_validation()
        .with_max_request_body_bytes(body_limit)
        .with_cancellation_token(shutdown);
    let proto = Tools::new(svc, sync);
    // An agent may think for a long while between calls: keep its session
    // an hour (rmcp's default is five minutes) before it must initialize again.
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(SESSION_IDLE);
    let service = StreamableHttpService::new(move || Ok(proto.clone()), Arc::new(sessions), config);
    Router::new()
        .route_service("/mcp", service)
        .layer(axum::middleware::from_fn_with_state(body_limit, guard::guard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_by_default_and_origins_follow_hosts() {
        let o = McpOptions::new(vec![]);
        assert_eq!(o.allowed_hosts, vec!["localhost", "127.0.0.1", "::1"]);
        let origins = o.allowed_origins();
        assert!(origins.contains(&"http://[::1]:*".to_string()));
        assert!(origins.contains(&"https://localhost:*".to_string()));
        let o = McpOptions::new(vec!["nb.agents.svc:8888".into(), " ".into(), "localhost".into()]);
        assert_eq!(
            o.allowed_hosts,
            vec!["localhost", "127.0.0.1", "::1", "nb.agents.svc:8888"]
        );
        let origins = o.allowed_origins();
        assert!(origins.contains(&"http://nb.agents.svc:*".to_string()));
        assert!(origins.contains(&"https://nb.agents.svc:*".to_string()));
        assert!(!origins.iter().any(|o| o.contains("8888")));
    }
}
