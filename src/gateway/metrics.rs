//! The gateway's Prometheus metrics, served on their own address
//! (`--metrics-listen`) so that the public port (behind a Service or an
//! Ingress) never shows them.

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label: which routes a request took and how it was answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `mcp`, `sessions` or `other`.
    pub route: String,
    /// The HTTP status code.
    pub code: String,
}

/// Label: one review and what it came to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    /// `token` (TokenReview) or `access` (SubjectAccessReview).
    pub kind: String,
    /// `allowed`, `denied` or `error`.
    pub outcome: String,
    /// `true` when answered from the cache.
    pub cached: String,
}

/// Label: one MCP tool call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolLabels {
    pub tool: String,
    /// `ok` or `error` (the tool result's isError).
    pub outcome: String,
}

pub struct GatewayMetrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub reviews: Family<ReviewLabels, Counter>,
    pub tool_calls: Family<ToolLabels, Counter>,
    /// Time to the sidecar's response headers on the session routes.
    pub forward_seconds: Histogram,
    /// Time of a kernel tool call forwarded to a sidecar.
    pub tool_seconds: Histogram,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("notebook_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        let reviews = Family::<ReviewLabels, Counter>::default();
        let tool_calls = Family::<ToolLabels, Counter>::default();
        let buckets = [
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
        ];
        let forward_seconds = Histogram::new(buckets);
        let tool_seconds = Histogram::new(buckets);
        registry.register(
            "requests",
            "HTTP requests by route and status code",
            requests.clone(),
        );
        registry.register(
            "reviews",
            "TokenReviews and SubjectAccessReviews by outcome, and whether the cache answered",
            reviews.clone(),
        );
        registry.register(
            "tool_calls",
            "MCP tool calls by tool and outcome",
            tool_calls.clone(),
        );
        registry.register(
            "forward_seconds",
            "Time to a sidecar's response headers on /sessions routes",
            forward_seconds.clone(),
        );
        registry.register(
            "tool_forward_seconds",
            "Time of a kernel tool call forwarded to a sidecar",
            tool_seconds.clone(),
        );
        GatewayMetrics {
            registry,
            requests,
            reviews,
            tool_calls,
            forward_seconds,
            tool_seconds,
        }
    }
}

impl GatewayMetrics {
    pub fn request(&self, path: &str, code: StatusCode) {
        let route = if path == "/mcp" {
            "mcp"
        } else if path.starts_with("/sessions/") {
            "sessions"
        } else {
            "other"
        };
        self.requests
            .get_or_create(&RequestLabels {
                route: route.into(),
                code: code.as_u16().to_string(),
            })
            .inc();
    }

    pub fn review(&self, kind: &str, outcome: &str, cached: bool) {
        self.reviews
            .get_or_create(&ReviewLabels {
                kind: kind.into(),
                outcome: outcome.into(),
                cached: cached.to_string(),
            })
            .inc();
    }

    pub fn tool(&self, tool: &str, error: bool) {
        self.tool_calls
            .get_or_create(&ToolLabels {
                tool: tool.into(),
                outcome: if error { "error" } else { "ok" }.into(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding the metrics");
        }
        out
    }
}

/// `/metrics` and `/healthz` on the metrics address.
pub fn router(metrics: Arc<GatewayMetrics>) -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" })).route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    StatusCode::OK,
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
                    .into_response()
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_reviews_and_tools_are_counted_by_label() {
        let m = GatewayMetrics::default();
        m.request("/mcp", StatusCode::UNAUTHORIZED);
        m.request("/sessions/ns/s1/v1/status", StatusCode::OK);
        m.request("/healthz", StatusCode::OK);
        m.review("access", "denied", true);
        m.tool("execute", false);
        let text = m.encode();
        for line in [
            r#"notebook_gateway_requests_total{route="mcp",code="401"} 1"#,
            r#"notebook_gateway_requests_total{route="sessions",code="200"} 1"#,
            r#"notebook_gateway_requests_total{route="other",code="200"} 1"#,
            r#"notebook_gateway_reviews_total{kind="access",outcome="denied",cached="true"} 1"#,
            r#"notebook_gateway_tool_calls_total{tool="execute",outcome="ok"} 1"#,
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
