//! Reads a sidecar's `GET /v1/status` by pod IP with the session's bearer token.
//!
//! Plain HTTP/1.1 over the hyper client that kube already builds; every read
//! has a deadline and a size cap, and a failure is a value, never a panic.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::builders::SIDECAR_PORT;
use super::status::SidecarStatus;

/// Largest status body accepted.
const MAX_BODY: usize = 64 * 1024;

/// A small client for sidecar status reads.
#[derive(Clone)]
pub struct SidecarClient {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
    port: u16,
}

impl SidecarClient {
    /// A client whose reads give up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1)
            .build(connector);
        Self {
            client,
            timeout,
            port: SIDECAR_PORT,
        }
    }

    /// The same client against another port (tests run sidecars on free ports).
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// `GET http://<ip>:<port>/v1/status` with `Authorization: Bearer <token>`.
    pub async fn status(&self, pod_ip: &str, token: &str) -> Result<SidecarStatus, String> {
        let ip: IpAddr = pod_ip
            .parse()
            .map_err(|_| format!("pod IP {pod_ip:?} is not an IP address"))?;
        let authority = match ip {
            IpAddr::V4(v4) => format!("{v4}:{}", self.port),
            IpAddr::V6(v6) => format!("[{v6}]:{}", self.port),
        };
        let request = hyper::Request::get(format!("http://{authority}/v1/status"))
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|err| format!("cannot build the request: {err}"))?;
        let read = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|err| format!("{authority}: {err}"))?;
            let code = response.status();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|err| format!("{authority}: reading the body: {err}"))?
                .to_bytes();
            if !code.is_success() {
                let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                return Err(format!("{authority} answered {code}: {text}"));
            }
            serde_json::from_slice::<SidecarStatus>(&body)
                .map_err(|err| format!("{authority}: not a status: {err}"))
        };
        match tokio::time::timeout(self.timeout, read).await {
            Ok(result) => result,
            Err(_) => Err(format!("{authority}: no answer within {:?}", self.timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;
    use axum::routing::get;

    async fn serve(router: axum::Router) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move { axum::serve(listener, router).await });
        port
    }

    #[tokio::test]
    async fn reads_the_status_with_the_bearer_token() {
        let router = axum::Router::new().route(
            "/v1/status",
            get(|headers: HeaderMap| async move {
                if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer s3cret") {
                    return (axum::http::StatusCode::UNAUTHORIZED, String::from("no"));
                }
                (
                    axum::http::StatusCode::OK,
                    String::from(
                        r#"{"kernel":{"state":"idle","restarts":0},"queue":{"queued":0,"running":0,"completed":3,"failed":0,"cancelled":0},"last_activity":"2026-11-28T15:00:00Z","clients":0,"ready":true}"#,
                    ),
                )
            }),
        );
        let port = serve(router).await;
        let client = SidecarClient::new(Duration::from_secs(2)).with_port(port);
        let status = client.status("127.0.0.1", "s3cret").await.expect("status");
        assert_eq!(status.kernel.state, "idle");
        assert_eq!(status.queue.completed, 3);
        assert!(status.last_activity_time().is_some());

        let denied = client.status("127.0.0.1", "wrong").await.expect_err("401");
        assert!(denied.contains("401"), "{denied}");
    }

    #[tokio::test]
    async fn failures_are_values() {
        // Nothing listens on this port once the listener is dropped.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let client = SidecarClient::new(Duration::from_millis(500)).with_port(port);
        assert!(client.status("127.0.0.1", "t").await.is_err());
        assert!(client.status("not-an-ip", "t").await.is_err());
    }
}
