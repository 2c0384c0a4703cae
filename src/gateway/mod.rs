//! `notebook-operator gateway`: one authenticated endpoint for agents.
//!
//! MCP at `/mcp` (sessions are created, listed, suspended and deleted as
//! NotebookSession objects; the NotebookPools to claim from are listed;
//! kernel tools are forwarded to a session's sidecar) and HTTP at
//! `/sessions/{namespace}/{name}/...` (the sidecar's routes, streams
//! included). Who is asking is settled by a TokenReview of the bearer token,
//! and what they may do by SubjectAccessReviews on `notebooksessions` (and
//! `notebookpools` for `list_pools`), so the cluster's own RBAC decides.
//! The Jupyter Server REST API (`/api/...`, [`jupyter`]) serves the same
//! sessions as Jupyter kernels.

pub mod auth;
pub mod cap;
pub mod client;
pub mod error;
pub mod forward;
pub mod jupyter;
pub mod lifecycle;
pub mod mcp_client;
pub mod metrics;
pub mod origin;
pub mod pools;
pub mod review;
pub mod sessions;
pub mod tools;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{any, get};
use axum::{middleware, Router};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::cmd::local::anyhow_like;
use crate::operator::builders::SIDECAR_PORT;
use crate::operator::crd;

pub use error::GatewayError;

/// Flags of `notebook-operator gateway`.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// Address to serve MCP and the session routes on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Port the session sidecars listen on (reached by pod IP).
    #[arg(long, default_value_t = SIDECAR_PORT)]
    pub sidecar_port: u16,
    /// Most live (not suspended, not deleting) sessions one user may have
    /// made through the gateway; 0: no cap.
    #[arg(long, env = "GATEWAY_MAX_SESSIONS_PER_USER", default_value_t = 0)]
    pub max_sessions_per_user: usize,
    /// Namespace of the per-user cap ledgers, shared by every replica: the
    /// gateway's own namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "notebook-operator-system")]
    pub cap_namespace: String,
    /// Name prefix of the cap ledgers: Leases `<prefix>-0` … `<prefix>-15`
    /// (the chart's Role names each one).
    #[arg(
        long,
        env = "GATEWAY_CAP_LEDGER",
        default_value = "notebook-operator-gateway-cap"
    )]
    pub cap_ledger: String,
    /// How long a TokenReview or SubjectAccessReview answer is reused (0s: never).
    #[arg(long, env = "GATEWAY_REVIEW_TTL", default_value = "10s", value_parser = parse_ttl)]
    pub review_ttl: Duration,
    /// Accept only tokens meant for this audience (repeatable; e.g. from
    /// `kubectl create token --audience`). Default: whatever the apiserver accepts.
    #[arg(
        long = "token-audience",
        env = "GATEWAY_TOKEN_AUDIENCES",
        value_delimiter = ','
    )]
    pub token_audiences: Vec<String>,
    /// Address of `/metrics` (Prometheus), apart from the public port.
    #[arg(long, env = "GATEWAY_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,
    /// Namespace of requests that name none, for users that are not ServiceAccounts
    /// (a ServiceAccount's default is its own namespace).
    #[arg(long, env = "GATEWAY_DEFAULT_NAMESPACE", default_value = "default")]
    pub default_namespace: String,
    /// A name clients address the gateway by (repeatable): `name` (any
    /// port), `name:port`, `*.domain`, or `*` (any Host). Besides these, only
    /// IP addresses and `localhost` are taken; another Host is 403 (DNS rebinding).
    #[arg(
        long = "allowed-host",
        env = "GATEWAY_ALLOWED_HOSTS",
        value_delimiter = ',',
        value_parser = origin::HostRule::parse
    )]
    pub allowed_hosts: Vec<origin::HostRule>,
    /// A browser origin that may call the gateway (repeatable):
    /// `scheme://host[:port]`, `scheme://host:*` (any port) or `*`. Requests
    /// without Origin, and origins on an allowed host or loopback, need none;
    /// any other Origin is 403.
    #[arg(
        long = "allowed-origin",
        env = "GATEWAY_ALLOWED_ORIGINS",
        value_delimiter = ',',
        value_parser = origin::OriginRule::parse
    )]
    pub allowed_origins: Vec<origin::OriginRule>,
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    match text.trim() {
        "0" | "0s" => Ok(Duration::ZERO),
        other => crd::parse_duration(other),
    }
}

/// What the gateway decides with.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub default_namespace: String,
    pub max_sessions_per_user: usize,
}

/// Shared by every request.
pub struct Gateway {
    pub kube: kube::Client,
    pub reviewer: review::Reviewer,
    pub upstreams: upstream::Upstreams,
    pub http: client::HttpClient,
    pub mcp: mcp_client::McpForwarder,
    pub cfg: GatewayConfig,
    /// Which Host and Origin headers every route takes.
    pub origins: Arc<origin::Policy>,
    pub metrics: Arc<metrics::GatewayMetrics>,
    /// The per-user cap, held by the apiserver across replicas ([`cap`]).
    pub cap: cap::CapLedger,
}

impl Gateway {
    pub fn new(kube: kube::Client, args: &GatewayArgs) -> Gateway {
        let http = client::http_client();
        let metrics = Arc::new(metrics::GatewayMetrics::default());
        Gateway {
            reviewer: review::Reviewer::new(
                kube.clone(),
                args.review_ttl,
                args.token_audiences.clone(),
                metrics.clone(),
            ),
            metrics,
            origins: Arc::new(origin::Policy::new(
                args.allowed_hosts.clone(),
                args.allowed_origins.clone(),
            )),
            upstreams: upstream::Upstreams::new(kube.clone(), args.sidecar_port),
            mcp: mcp_client::McpForwarder::new(http.clone()),
            http,
            cap: cap::CapLedger::new(
                kube.clone(),
                &args.cap_namespace,
                &args.cap_ledger,
                args.max_sessions_per_user,
            ),
            kube,
            cfg: GatewayConfig {
                default_namespace: args.default_namespace.clone(),
                max_sessions_per_user: args.max_sessions_per_user,
            },
        }
    }

    /// The sidecar of session `ns/name`, for a user who may `get` that
    /// session (kernel access, over HTTP or MCP): Forbidden before anything
    /// about the session is read.
    pub async fn session_upstream(
        &self,
        user: &review::User,
        ns: &str,
        name: &str,
    ) -> Result<upstream::Upstream, GatewayError> {
        self.reviewer
            .authorize(user, review::Access::sessions("get", ns, Some(name)))
            .await?;
        self.upstreams.resolve(ns, name).await
    }
}

/// How long an agent's MCP session may stay idle.
const MCP_SESSION_IDLE: Duration = Duration::from_secs(3600);
/// Largest MCP request body (code and cell sources are at most 1 MiB on the sidecar).
const MCP_BODY_LIMIT: usize = 8 << 20;

/// Every route; all but the probes behind the token review, all behind the
/// Host and Origin check ([`origin`]).
pub fn router(gw: Arc<Gateway>, shutdown: CancellationToken) -> Router {
    // rmcp's own Host and Origin checks are off: `origin::check` makes the
    // same decision for every route (the HTTP relay and WebSockets too),
    // with the names the gateway is configured to serve.
    let config = StreamableHttpServerConfig::default()
        .disable_allowed_hosts()
        .disable_allowed_origins()
        .with_max_request_body_bytes(MCP_BODY_LIMIT)
        .with_cancellation_token(shutdown);
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(MCP_SESSION_IDLE);
    let tools = tools::GatewayTools::new(gw.clone());
    let mcp = StreamableHttpService::new(move || Ok(tools.clone()), Arc::new(sessions), config);
    let mcp = Router::new()
        .route_service("/mcp", mcp)
        .layer(middleware::from_fn_with_state(
            MCP_BODY_LIMIT,
            crate::mcp::guard::guard,
        ));
    let authenticated = Router::new()
        .merge(mcp)
        .route("/sessions/{ns}/{name}", any(forward::session_root))
        .route("/sessions/{ns}/{name}/{*rest}", any(forward::session_path))
        .merge(jupyter::router())
        .layer(middleware::from_fn_with_state(gw.clone(), auth::authenticate))
        .with_state(gw.clone());
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get({
                let kube = gw.kube.clone();
                move || async move { crate::apiserver_probe::readyz(&kube).await }
            }),
        )
        .merge(authenticated)
        .layer(middleware::from_fn_with_state(gw.origins.clone(), origin::check))
        .layer(middleware::from_fn_with_state(gw, count))
}

/// Counts every answer by route and status code.
async fn count(
    axum::extract::State(gw): axum::extract::State<Arc<Gateway>>,
    req: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    gw.metrics.request(&path, resp.status());
    resp
}

/// Entry point of the subcommand.
pub async fn run(args: GatewayArgs) -> anyhow_like::Result {
    let kube = kube::Client::try_default()
        .await
        .map_err(|e| format!("no Kubernetes client configuration (KUBECONFIG or in-cluster): {e}"))?;
    let gw = Arc::new(Gateway::new(kube, &args));
    let shutdown = CancellationToken::new();
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .map_err(|e| format!("listening on {} for metrics: {e}", args.metrics_listen))?;
    let metrics_app = metrics::router(gw.metrics.clone());
    let metrics_stop = shutdown.clone();
    tokio::spawn(async move {
        let served = axum::serve(metrics_listener, metrics_app)
            .with_graceful_shutdown(async move { metrics_stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the metrics server stopped");
        }
    });
    tokio::spawn({
        let gw = gw.clone();
        async move { gw.upstreams.evict_gone().await }
    });
    let app = router(gw, shutdown.clone());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("listening on {}: {e}", args.listen))?;
    tracing::info!(listen = %args.listen, metrics = %args.metrics_listen, sidecar_port = args.sidecar_port,
                   max_sessions_per_user = args.max_sessions_per_user, "gateway serving");
    let stop = shutdown.clone();
    crate::http::serve(listener, app, async move {
        crate::util::shutdown_signal().await;
        tracing::info!("shutting down");
        stop.cancel();
    })
    .await?;
    Ok(())
}
