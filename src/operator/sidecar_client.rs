//! Talks to a sidecar by pod IP with the session's bearer token: `GET
//! /v1/status`, `GET /v1/assets` and `DELETE /v1/assets/{name}`.
//!
//! Plain HTTP/1.1 over the hyper client that kube already builds; every read
//! has a deadline and a size cap, and a failure is a value, never a panic.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::jiff::Timestamp;

use super::builders::SIDECAR_PORT;
use super::status::SidecarStatus;
use crate::sidecar_api::{AssetEntry, Catalog, ClaimAnswer, ClaimRequest, DeleteRefusal};

/// Largest status or delete answer accepted.
const MAX_BODY: usize = 64 * 1024;
/// Largest asset index accepted (some 20 000 assets).
const MAX_INDEX_BODY: usize = 8 * 1024 * 1024;

/// A small client for the sidecar routes the operator uses.
#[derive(Clone)]
pub struct SidecarClient {
    client: Client<HttpConnector, Full<Bytes>>,
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
    pub async fn status(&self, pod_ip: IpAddr, token: &str) -> Result<SidecarStatus, String> {
        self.read_status(pod_ip, token, "/v1/status".into(), self.timeout)
            .await
    }

    /// `GET /v1/status?revision=R&wait_s=S`: the status once its revision
    /// is no longer `revision`, or after `wait` as it is then.
    pub async fn status_after(
        &self,
        pod_ip: IpAddr,
        token: &str,
        revision: &str,
        wait: Duration,
    ) -> Result<SidecarStatus, String> {
        let path = format!(
            "/v1/status?revision={}&wait_s={}",
            url_escape(revision),
            wait.as_secs_f64()
        );
        self.read_status(pod_ip, token, path, wait + self.timeout).await
    }

    async fn read_status(
        &self,
        pod_ip: IpAddr,
        token: &str,
        path: String,
        deadline: Duration,
    ) -> Result<SidecarStatus, String> {
        let (authority, code, body) = self
            .call(hyper::Method::GET, pod_ip, token, &path, MAX_BODY, deadline)
            .await?;
        if !code.is_success() {
            return Err(refusal(&authority, code, &body));
        }
        serde_json::from_slice::<SidecarStatus>(&body)
            .map_err(|err| format!("{authority}: not a status: {err}"))
    }

    /// `GET /v1/assets`: the sidecar's asset index.
    pub async fn assets(&self, pod_ip: IpAddr, token: &str) -> Result<Vec<AssetEntry>, String> {
        let (authority, code, body) = self
            .call(
                hyper::Method::GET,
                pod_ip,
                token,
                "/v1/assets",
                MAX_INDEX_BODY,
                self.timeout,
            )
            .await?;
        if !code.is_success() {
            return Err(refusal(&authority, code, &body));
        }
        serde_json::from_slice::<Catalog>(&body)
            .map(|index| index.assets)
            .map_err(|err| format!("{authority}: not an asset index: {err}"))
    }

    /// `DELETE /v1/assets/{name}`: the sidecar deletes the asset unless a
    /// notebook references it or it is pinned, checked under its own lock.
    pub async fn delete_asset(
        &self,
        pod_ip: IpAddr,
        token: &str,
        name: &str,
    ) -> Result<AssetDeletion, String> {
        // Asset names are `<sha256>.<ext>`; anything else never reaches the URL.
        if !crate::assets::name::is_valid(name) {
            return Err(format!("{name:?} is not an asset name"));
        }
        let path = format!("/v1/assets/{name}");
        let (authority, code, body) = self
            .call(
                hyper::Method::DELETE,
                pod_ip,
                token,
                &path,
                MAX_BODY,
                self.timeout,
            )
            .await?;
        match code.as_u16() {
            200 | 204 => Ok(AssetDeletion::Deleted),
            404 => Ok(AssetDeletion::Missing),
            409 => {
                let refusal: DeleteRefusal = serde_json::from_slice(&body)
                    .map_err(|err| format!("{authority}: a 409 that is not an in-use answer: {err}"))?;
                Ok(AssetDeletion::InUse {
                    referenced_by: refusal.referenced_by,
                    pinned: refusal.pinned,
                })
            }
            _ => Err(refusal(&authority, code, &body)),
        }
    }

    /// One request with the bearer token, answered within `deadline`; the
    /// body is read whole up to `limit` bytes.
    /// `POST /v1/claim` with the pool's token: the sidecar of a warm pod
    /// takes the session's token and forgets the pool's.
    pub async fn claim(
        &self,
        pod_ip: IpAddr,
        pool_token: &str,
        request: &ClaimRequest,
    ) -> Result<ClaimAnswer, ClaimRefusal> {
        let body = serde_json::to_vec(request).map_err(|e| ClaimRefusal::Other(e.to_string()))?;
        let (authority, code, answer) = self
            .send(
                hyper::Method::POST,
                pod_ip,
                pool_token,
                "/v1/claim",
                Bytes::from(body),
                MAX_BODY,
                self.timeout,
            )
            .await
            .map_err(ClaimRefusal::Other)?;
        if code == hyper::StatusCode::UNAUTHORIZED {
            return Err(ClaimRefusal::Unauthorized);
        }
        if !code.is_success() {
            return Err(ClaimRefusal::Other(refusal(&authority, code, &answer)));
        }
        serde_json::from_slice::<ClaimAnswer>(&answer)
            .map_err(|err| ClaimRefusal::Other(format!("{authority}: not a claim answer: {err}")))
    }

    async fn call(
        &self,
        method: hyper::Method,
        ip: IpAddr,
        token: &str,
        path: &str,
        limit: usize,
        deadline: Duration,
    ) -> Result<(String, hyper::StatusCode, Bytes), String> {
        self.send(method, ip, token, path, Bytes::new(), limit, deadline)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        method: hyper::Method,
        ip: IpAddr,
        token: &str,
        path: &str,
        body: Bytes,
        limit: usize,
        deadline: Duration,
    ) -> Result<(String, hyper::StatusCode, Bytes), String> {
        let authority = match ip {
            IpAddr::V4(v4) => format!("{v4}:{}", self.port),
            IpAddr::V6(v6) => format!("[{v6}]:{}", self.port),
        };
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{authority}{path}"))
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|err| format!("cannot build the request: {err}"))?;
        let read = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|err| format!("{authority}: {err}"))?;
            let code = response.status();
            let body = Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|err| format!("{authority}: reading the body: {err}"))?
                .to_bytes();
            Ok((code, body))
        };
        match tokio::time::timeout(deadline, read).await {
            Ok(Ok((code, body))) => Ok((authority, code, body)),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(format!("{authority}: no answer within {deadline:?}")),
        }
    }
}

/// A query value with everything but unreserved characters percent-encoded.
fn url_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn refusal(authority: &str, code: hyper::StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    format!("{authority} answered {code}: {text}")
}

impl AssetEntry {
    /// Creation time as a timestamp, when the sidecar sent a readable one.
    pub fn created_time(&self) -> Option<Timestamp> {
        self.created_at.parse().ok()
    }
}

/// Why `POST /v1/claim` did not answer 200.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimRefusal {
    /// 401: the token sent is not (or no longer) the one the sidecar takes.
    Unauthorized,
    /// Anything else: transport, timeout, 409, a body that does not parse.
    Other(String),
}

/// What `DELETE /v1/assets/{name}` answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AssetDeletion {
    /// 200: the file is gone.
    Deleted,
    /// 409: a notebook references the asset or it is pinned; it stays.
    InUse {
        /// The notebooks that reference it, as the sidecar read them from disk.
        referenced_by: Vec<String>,
        /// Whether it is pinned.
        pinned: bool,
    },
    /// 404: there is no such asset.
    Missing,
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;
    use axum::routing::get;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

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
        let status = client.status(LOCAL, "s3cret").await.expect("status");
        assert_eq!(status.kernel.state, crate::sidecar_api::KernelState::Idle);
        assert_eq!(status.queue.completed, 3);
        assert!(status.last_activity_time().is_some());

        let denied = client.status(LOCAL, "wrong").await.expect_err("401");
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
        assert!(client.status(LOCAL, "t").await.is_err());
    }

    const SHA: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";

    #[tokio::test]
    async fn reads_the_asset_index_and_the_three_answers_of_delete() {
        use axum::extract::Path;
        use axum::http::StatusCode;
        let router = axum::Router::new()
            .route(
                "/v1/assets",
                get(|| async {
                    axum::Json(serde_json::json!({"assets": [{
                        "name": format!("{SHA}.png"), "path": format!("assets/{SHA}.png"), "size": 1048576,
                        "mime": "image/png", "created_at": "2026-11-28T15:00:00.25Z",
                        "referenced_by": ["a.ipynb"], "pinned": false
                    }]}))
                }),
            )
            .route(
                "/v1/assets/{name}",
                axum::routing::delete(|Path(name): Path<String>| async move {
                    match name.split('.').nth(1) {
                        Some("png") => (StatusCode::OK, format!(r#"{{"deleted":"{name}"}}"#)),
                        Some("svg") => (
                            StatusCode::CONFLICT,
                            r#"{"error":{"code":"in_use"},"referenced_by":["b.ipynb"],"pinned":true}"#.into(),
                        ),
                        Some("gif") => (StatusCode::INTERNAL_SERVER_ERROR, "disk on fire".into()),
                        _ => (StatusCode::NOT_FOUND, r#"{"error":{"code":"not_found"}}"#.into()),
                    }
                }),
            );
        let port = serve(router).await;
        let client = SidecarClient::new(Duration::from_secs(2)).with_port(port);

        let assets = client.assets(LOCAL, "t").await.expect("index");
        assert_eq!(assets.len(), 1);
        assert_eq!(assets[0].path, format!("assets/{SHA}.png"));
        assert_eq!(assets[0].referenced_by, ["a.ipynb"]);
        assert_eq!(
            assets[0].created_time().map(|t| t.as_millisecond()),
            Some(
                "2026-11-28T15:00:00.25Z"
                    .parse::<Timestamp>()
                    .expect("time")
                    .as_millisecond()
            )
        );

        let deleted = client.delete_asset(LOCAL, "t", &format!("{SHA}.png")).await;
        assert_eq!(deleted, Ok(AssetDeletion::Deleted));
        let in_use = client.delete_asset(LOCAL, "t", &format!("{SHA}.svg")).await;
        assert_eq!(
            in_use,
            Ok(AssetDeletion::InUse {
                referenced_by: vec!["b.ipynb".into()],
                pinned: true
            })
        );
        let missing = client.delete_asset(LOCAL, "t", &format!("{SHA}.pdf")).await;
        assert_eq!(missing, Ok(AssetDeletion::Missing));
        let broken = client.delete_asset(LOCAL, "t", &format!("{SHA}.gif")).await;
        assert!(broken.expect_err("500").contains("500"));
        let traversal = client.delete_asset(LOCAL, "t", "../x").await;
        assert!(traversal.is_err());
    }
}
