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

    /// These options and the names the pod's own IP is addressed by
    /// ([`pod_ip_hosts`]), for in-cluster clients that reach the sidecar by
    /// pod IP rather than through its Service.
    pub fn with_pod_ip(mut self, ip: std::net::IpAddr, port: u16) -> McpOptions {
        for h in pod_ip_hosts(ip, port) {
            if !self.allowed_hosts.contains(&h) {
                self.allowed_hosts.push(h);
            }
        }
        self
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

/// The `Host` values a pod IP is addressed by: the bare address and
/// `address:port` (`[address]:port` for IPv6). rmcp takes a bare entry for
/// any port; the explicit one keeps `ip:port` working should it stop to.
pub fn pod_ip_hosts(ip: std::net::IpAddr, port: u16) -> Vec<String> {
    let with_port = match ip {
        std::net::IpAddr::V4(v4) => format!("{v4}:{port}"),
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    };
    vec![ip.to_string(), with_port]
}

/// The transport's settings: the Host and Origin checks from `opts`.
fn transport_config(
    opts: &McpOptions,
    body_limit: usize,
    shutdown: CancellationToken,
) -> StreamableHttpServerConfig {
    StreamableHttpServerConfig::default()
        .with_allowed_hosts(opts.allowed_hosts.clone())
        .with_allowed_origins(opts.allowed_origins())
        .enforce_origin_validation()
        .with_max_request_body_bytes(body_limit)
        .with_cancellation_token(shutdown)
}

/// The `/mcp` route. Merge it into the routes behind the token middleware.
pub fn router(
    svc: Arc<Service>,
    sync: Arc<NotebookSync>,
    opts: &McpOptions,
    shutdown: CancellationToken,
) -> Router {
    let body_limit = svc.cfg.max_code_bytes.saturating_mul(6).saturating_add(1 << 20);
    let config = transport_config(opts, body_limit, shutdown);
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

    #[test]
    fn a_pod_ip_is_allowed_bare_and_with_its_port() {
        let v4: std::net::IpAddr = "10.244.1.7".parse().unwrap();
        assert_eq!(pod_ip_hosts(v4, 8888), vec!["10.244.1.7", "10.244.1.7:8888"]);
        let v6: std::net::IpAddr = "fd00::7".parse().unwrap();
        assert_eq!(pod_ip_hosts(v6, 8888), vec!["fd00::7", "[fd00::7]:8888"]);
        let o = McpOptions::new(vec!["nb.agents.svc".into()])
            .with_pod_ip(v4, 8888)
            .with_pod_ip(v4, 8888);
        assert_eq!(
            o.allowed_hosts,
            vec![
                "localhost",
                "127.0.0.1",
                "::1",
                "nb.agents.svc",
                "10.244.1.7",
                "10.244.1.7:8888"
            ]
        );
        assert!(o.allowed_origins().contains(&"http://10.244.1.7:*".to_string()));
    }

    /// The decision itself is rmcp's: ask its transport, configured as the
    /// sidecar configures it, what it makes of each `Host`.
    async fn host_status(opts: &McpOptions, host: &str) -> axum::http::StatusCode {
        use rmcp::ServerHandler;
        use tower::Service as _;
        #[derive(Clone)]
        struct Bare;
        impl ServerHandler for Bare {}
        let service = StreamableHttpService::new(
            || Ok(Bare),
            Arc::new(LocalSessionManager::default()),
            transport_config(opts, 1 << 20, CancellationToken::new()),
        );
        let mut app = Router::new().route_service("/mcp", service);
        let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#;
        let req = axum::http::Request::post("/mcp")
            .header("host", host)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(axum::body::Body::from(init))
            .expect("a request");
        match app.call(req).await {
            Ok(resp) => resp.status(),
            Err(never) => match never {},
        }
    }

    #[tokio::test]
    async fn the_transport_serves_the_pod_ip_and_refuses_foreign_hosts() {
        use axum::http::StatusCode;
        let v4: std::net::IpAddr = "10.244.1.7".parse().unwrap();
        let v6: std::net::IpAddr = "fd00::7".parse().unwrap();
        let o = McpOptions::new(vec!["nb.agents.svc".into()])
            .with_pod_ip(v4, 8888)
            .with_pod_ip(v6, 8888);
        for host in [
            "10.244.1.7:8888",
            "10.244.1.7",
            "[fd00::7]:8888",
            "nb.agents.svc:8888",
            "localhost:8888",
        ] {
            assert_eq!(host_status(&o, host).await, StatusCode::OK, "Host {host}");
        }
        for host in [
            "evil.example",
            "evil.example:8888",
            "10.244.1.8:8888",
            "[fd00::8]:8888",
        ] {
            assert_eq!(host_status(&o, host).await, StatusCode::FORBIDDEN, "Host {host}");
        }
        // Without the pod IP (the sidecar before this change) it is refused.
        let before = McpOptions::new(vec!["nb.agents.svc".into()]);
        assert_eq!(
            host_status(&before, "10.244.1.7:8888").await,
            StatusCode::FORBIDDEN
        );
    }
}
