//! The operator's Prometheus metrics and its `/healthz` + `/metrics` server.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::crd::{NotebookSession, SessionPhase};

/// Label: why a session was suspended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `Idle`, `Suspended` (by spec), `ShutdownTime`.
    pub reason: String,
}

/// Label: outcome of one reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` or `error`.
    pub result: String,
}

/// Label: error category.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabel {
    /// From [`super::error::Error::category`].
    pub category: String,
}

/// Label: session phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    /// A [`SessionPhase`] name, or `Unknown` before the first status.
    pub phase: String,
}

/// Label: what an AssetLease check or release came to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `deleted`, `in_use`, `held`, `missing`, `unreachable`, `released`, `kept`, `removed`.
    pub outcome: String,
}

/// Labels: one NotebookPool.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    /// Namespace of the pool.
    pub namespace: String,
    /// Name of the pool.
    pub pool: String,
}

/// Labels: one request the operator made to the apiserver.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    /// `watch`, `get` (one object or a list), `create`, `patch`, `update`, `delete`.
    pub verb: String,
    /// The resource (plural), with `/status` for the status subresource.
    pub resource: String,
}

impl RequestLabel {
    /// The labels of a request, from its method and path alone.
    pub fn of(method: &axum::http::Method, uri: &axum::http::Uri) -> Self {
        let watch = uri
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
        let verb = match *method {
            axum::http::Method::GET if watch => "watch",
            axum::http::Method::GET => "get",
            axum::http::Method::POST => "create",
            axum::http::Method::PATCH => "patch",
            axum::http::Method::PUT => "update",
            axum::http::Method::DELETE => "delete",
            _ => "other",
        };
        let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
        // /api/v1/... or /apis/<group>/<version>/...
        let rest = match segments.first() {
            Some(&"api") => segments.get(2..),
            Some(&"apis") => segments.get(3..),
            _ => None,
        }
        .unwrap_or_default();
        let rest = match rest {
            ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
            other => other,
        };
        let resource = match rest {
            [kind, _, sub] => format!("{kind}/{sub}"),
            [kind, ..] => (*kind).to_string(),
            [] => "other".into(),
        };
        RequestLabel {
            verb: verb.into(),
            resource,
        }
    }
}

/// A tower layer for the kube client: counts every request it sends.
#[derive(Clone)]
pub struct CountRequests(pub Family<RequestLabel, Counter>);

impl<S> tower::Layer<S> for CountRequests {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            requests: self.0.clone(),
        }
    }
}

/// The service [`CountRequests`] wraps.
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    requests: Family<RequestLabel, Counter>,
}

impl<S, B> tower::Service<axum::http::Request<B>> for Counted<S>
where
    S: tower::Service<axum::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> S::Future {
        self.requests
            .get_or_create(&RequestLabel::of(req.method(), req.uri()))
            .inc();
        self.inner.call(req)
    }
}

/// All operator metrics.
pub struct Metrics {
    registry: Registry,
    /// Reconciles by result.
    pub reconciles: Family<ResultLabel, Counter>,
    /// Reconcile errors by category.
    pub errors: Family<CategoryLabel, Counter>,
    /// Sessions by phase (set when scraped, from the controller's cache).
    pub sessions: Family<PhaseLabel, Gauge>,
    /// Reconcile duration in seconds.
    pub reconcile_duration: Histogram,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
    /// Attempts to take the leader Lease that found another replica holding it.
    pub leader_waits: Counter,
    /// Sidecar status reads that failed.
    pub sidecar_status_failures: Counter,
    /// AssetLease checks at expiry and releases, by outcome.
    pub asset_leases: Family<OutcomeLabel, Counter>,
    /// AssetLeases created or updated for new assets.
    pub asset_leases_applied: Counter,
    /// Seconds from a session's creation to its first Ready.
    pub time_to_ready: Histogram,
    /// Suspensions by reason.
    pub suspends: Family<ReasonLabel, Counter>,
    /// Requests made to the apiserver, by verb and resource.
    pub apiserver_requests: Family<RequestLabel, Counter>,
    /// Sessions of a pool given their pod, by outcome (`warm`, `cold`).
    pub pool_claims: Family<OutcomeLabel, Counter>,
    /// Seconds a warm claim took: the pod patch and the sidecar handoff.
    pub pool_claim_latency: Histogram,
    /// Claim patches refused with 409 (another session took the pod first).
    pub pool_claim_conflicts: Counter,
    /// Warm pods ready, per pool.
    pub pool_ready: Family<PoolLabel, Gauge>,
    /// Pods of a pool held by sessions, per pool.
    pub pool_claimed: Family<PoolLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("notebook_operator");
        let reconciles = Family::<ResultLabel, Counter>::default();
        let errors = Family::<CategoryLabel, Counter>::default();
        let sessions = Family::<PhaseLabel, Gauge>::default();
        let reconcile_duration =
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let leader = Gauge::default();
        let leader_waits = Counter::default();
        let sidecar_status_failures = Counter::default();
        let asset_leases = Family::<OutcomeLabel, Counter>::default();
        let asset_leases_applied = Counter::default();
        let time_to_ready =
            Histogram::new([1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0]);
        let suspends = Family::<ReasonLabel, Counter>::default();
        let apiserver_requests = Family::<RequestLabel, Counter>::default();
        let pool_claims = Family::<OutcomeLabel, Counter>::default();
        let pool_claim_latency = Histogram::new([0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]);
        let pool_claim_conflicts = Counter::default();
        registry.register(
            "pool_claim_conflicts",
            "Claim patches of warm pods refused with 409 Conflict: another session took the pod first",
            pool_claim_conflicts.clone(),
        );
        let pool_ready = Family::<PoolLabel, Gauge>::default();
        let pool_claimed = Family::<PoolLabel, Gauge>::default();
        registry.register(
            "pool_claims",
            "NotebookSessions of a pool given their pod, by outcome (warm, cold)",
            pool_claims.clone(),
        );
        registry.register(
            "pool_claim_latency_seconds",
            "Time a warm claim took: the pod patch and the sidecar handoff",
            pool_claim_latency.clone(),
        );
        registry.register(
            "pool_ready",
            "Warm pods ready, per NotebookPool",
            pool_ready.clone(),
        );
        registry.register(
            "pool_claimed",
            "Pods of a NotebookPool held by sessions",
            pool_claimed.clone(),
        );
        registry.register(
            "apiserver_requests",
            "Requests this operator made to the apiserver, by verb and resource",
            apiserver_requests.clone(),
        );
        registry.register(
            "session_time_to_ready_seconds",
            "Time from a NotebookSession's creation to its first Ready",
            time_to_ready.clone(),
        );
        registry.register(
            "session_suspends",
            "NotebookSession suspensions by reason",
            suspends.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles of NotebookSessions by result",
            reconciles.clone(),
        );
        registry.register("reconcile_errors", "Reconcile errors by category", errors.clone());
        registry.register("sessions", "NotebookSessions by phase", sessions.clone());
        registry.register(
            "reconcile_duration_seconds",
            "Time one NotebookSession reconcile took",
            reconcile_duration.clone(),
        );
        registry.register("leader", "1 while this replica is the leader", leader.clone());
        registry.register(
            "leader_election_waits",
            "Attempts to take the leader Lease that found another replica holding it",
            leader_waits.clone(),
        );
        registry.register(
            "sidecar_status_failures",
            "Reads of a sidecar's /v1/status that failed",
            sidecar_status_failures.clone(),
        );
        registry.register(
            "asset_lease_outcomes",
            "AssetLease checks at expiry and releases, by outcome",
            asset_leases.clone(),
        );
        registry.register(
            "asset_leases_applied",
            "AssetLeases created or updated for assets found in a sidecar's index",
            asset_leases_applied.clone(),
        );
        for phase in SessionPhase::ALL {
            sessions
                .get_or_create(&PhaseLabel {
                    phase: phase.as_str().into(),
                })
                .set(0);
        }
        Self {
            registry,
            reconciles,
            errors,
            sessions,
            reconcile_duration,
            leader,
            leader_waits,
            sidecar_status_failures,
            asset_leases,
            asset_leases_applied,
            time_to_ready,
            suspends,
            apiserver_requests,
            pool_claims,
            pool_claim_latency,
            pool_claim_conflicts,
            pool_ready,
            pool_claimed,
        }
    }
}

impl Metrics {
    /// Counts a reconcile.
    pub fn reconciled(&self, ok: bool, seconds: f64) {
        let result = if ok { "ok" } else { "error" };
        self.reconciles
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
        self.reconcile_duration.observe(seconds);
    }

    /// Counts an error by category.
    pub fn error(&self, category: &str) {
        self.errors
            .get_or_create(&CategoryLabel {
                category: category.into(),
            })
            .inc();
    }

    /// Counts a suspension.
    pub fn suspended(&self, reason: &str) {
        self.suspends
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts one claim of a pool by outcome (`warm`, `cold`).
    pub fn pool_claim(&self, outcome: &str) {
        self.pool_claims
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Sets the gauges of one pool.
    pub fn set_pool(&self, namespace: &str, pool: &str, ready: i32, claimed: i32) {
        let label = PoolLabel {
            namespace: namespace.into(),
            pool: pool.into(),
        };
        self.pool_ready.get_or_create(&label).set(i64::from(ready));
        self.pool_claimed.get_or_create(&label).set(i64::from(claimed));
    }

    /// Counts one AssetLease outcome.
    pub fn asset_lease(&self, outcome: &str) {
        self.asset_leases
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Sets the per-phase gauge from a snapshot of the sessions.
    pub fn set_sessions<'a>(&self, sessions: impl IntoIterator<Item = &'a NotebookSession>) {
        let mut counts: std::collections::HashMap<&'static str, i64> =
            SessionPhase::ALL.iter().map(|p| (p.as_str(), 0)).collect();
        counts.insert("Unknown", 0);
        for session in sessions {
            let phase = session
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .map_or("Unknown", |p| p.as_str());
            *counts.entry(phase).or_default() += 1;
        }
        for (phase, count) in counts {
            self.sessions
                .get_or_create(&PhaseLabel { phase: phase.into() })
                .set(count);
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Something that can list the sessions the operator knows of, for the gauge.
pub type SessionSnapshot = Arc<dyn Fn() -> Vec<Arc<NotebookSession>> + Send + Sync>;

#[derive(Clone)]
struct ServerState {
    metrics: Arc<Metrics>,
    snapshot: Arc<std::sync::RwLock<Option<SessionSnapshot>>>,
}

/// Handle to install the session snapshot once the controller runs (only the leader has one).
#[derive(Clone, Default)]
pub struct SnapshotSlot(Arc<std::sync::RwLock<Option<SessionSnapshot>>>);

impl SnapshotSlot {
    /// Installs the snapshot function.
    pub fn set(&self, snapshot: SessionSnapshot) {
        if let Ok(mut slot) = self.0.write() {
            *slot = Some(snapshot);
        }
    }
}

/// The router: `/healthz` (the process serves), `/readyz` (and the
/// apiserver answers `client`) and `/metrics`.
pub fn router(metrics: Arc<Metrics>, slot: SnapshotSlot, client: kube::Client) -> Router {
    let state = ServerState {
        metrics,
        snapshot: slot.0,
    };
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move { crate::apiserver_probe::readyz(&client).await }),
        )
        .route("/metrics", get(metrics_handler))
        .with_state(state)
}

async fn metrics_handler(State(state): State<ServerState>) -> impl IntoResponse {
    let snapshot = state.snapshot.read().ok().and_then(|s| s.clone());
    if let Some(snapshot) = snapshot {
        let sessions = snapshot();
        state.metrics.set_sessions(sessions.iter().map(|s| s.as_ref()));
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apiserver_requests_are_labelled_by_verb_and_resource() {
        let of = |m: &str, uri: &str| {
            let l = RequestLabel::of(&m.parse().expect("method"), &uri.parse().expect("uri"));
            (l.verb, l.resource)
        };
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(of("GET", "/api/v1/namespaces/a/pods/x-kernel"), s("get", "pods"));
        assert_eq!(
            of("GET", "/api/v1/namespaces/a/pods?watch=true&labelSelector=x"),
            s("watch", "pods")
        );
        assert_eq!(
            of(
                "PATCH",
                "/apis/notebook.dev/v1alpha1/namespaces/a/notebooksessions/s/status?fieldManager=m"
            ),
            s("patch", "notebooksessions/status")
        );
        assert_eq!(of("POST", "/api/v1/namespaces/a/events"), s("create", "events"));
        assert_eq!(
            of("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/x"),
            s("get", "customresourcedefinitions")
        );
        assert_eq!(of("GET", "/version"), s("get", "other"));
    }
    use crate::operator::fixtures;

    #[test]
    fn exposition_names_reconciles_errors_and_phases() {
        let metrics = Metrics::default();
        metrics.reconciled(true, 0.01);
        metrics.error("conflict");
        let mut ready = fixtures::session("session-minimal.yaml");
        ready.status = Some(crate::operator::crd::NotebookSessionStatus {
            phase: Some(SessionPhase::Ready),
            ..Default::default()
        });
        metrics.set_sessions([&ready, &fixtures::session("session-full.yaml")]);
        let text = metrics.encode();
        assert!(
            text.contains("notebook_operator_reconciles_total{result=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("notebook_operator_reconcile_errors_total{category=\"conflict\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("notebook_operator_sessions{phase=\"Ready\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("notebook_operator_sessions{phase=\"Unknown\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("notebook_operator_sessions{phase=\"Failed\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn exposition_names_time_to_ready_and_suspends_by_reason() {
        let metrics = Metrics::default();
        metrics.time_to_ready.observe(3.5);
        metrics.suspended("Idle");
        metrics.suspended("Idle");
        metrics.suspended("ShutdownTime");
        let text = metrics.encode();
        assert!(
            text.contains("notebook_operator_session_time_to_ready_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("notebook_operator_session_suspends_total{reason=\"Idle\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("notebook_operator_session_suspends_total{reason=\"ShutdownTime\"} 1"),
            "{text}"
        );
    }
}
