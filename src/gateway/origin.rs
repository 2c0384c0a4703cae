//! DNS rebinding and cross-origin protection for every route of the gateway
//! (MCP, the HTTP relay to sidecars, WebSocket upgrades, the probes).
//!
//! **Host.** A request must name the gateway by a host it serves: an IP
//! address (no DNS name, so nothing to rebind: port-forwards, probes by pod
//! IP, a Service's ClusterIP), `localhost`, or an `--allowed-host` (the chart
//! passes the gateway Service's DNS names and the Ingress host). Entries are
//! `name` (any port), `name:port` (that port only), `*.domain` (any name under
//! it) or `*` (any Host: no check). A missing or malformed Host is `400`,
//! another name `403`.
//!
//! **Origin.** A request without `Origin` passes (non-browser clients send
//! none; the bearer token is the credential). A browser's `Origin` must be an
//! `--allowed-origin` (`scheme://host[:port]`, `scheme://host:*` for any port,
//! `*` for any origin) or be same-site with an allowed host name (http or
//! https, any port; loopback included). Otherwise, and for `Origin: null`,
//! `403`. Both refusals come before authentication and carry a JSON body.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Names the gateway always answers to (besides every IP address).
pub const LOOPBACK_NAMES: [&str; 1] = ["localhost"];

/// One `--allowed-host` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRule {
    /// Any Host.
    Any,
    /// Every name under `.domain` (stored with its leading dot).
    Suffix(String),
    /// One name, on any port or on one.
    Name { host: String, port: Option<u16> },
}

/// One `--allowed-origin` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginRule {
    Any,
    /// `port: None`: any port (`:*`).
    Exact {
        scheme: String,
        host: String,
        port: Option<u16>,
    },
}

/// A host name as compared: lower case, no brackets, no trailing dot.
fn normalize_host(h: &str) -> String {
    let h = h.trim().trim_start_matches('[').trim_end_matches(']');
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// `host[:port]` of a Host header or an origin, or None when malformed.
fn split_authority(text: &str) -> Option<(String, Option<u16>)> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some((ip.to_string(), None)); // a bare IPv6 address
    }
    let auth = axum::http::uri::Authority::try_from(text).ok()?;
    if auth.as_str().contains('@') {
        return None;
    }
    // `Authority` takes `name:junk` and reports no port: a port must be a number.
    let after_host = text.rsplit_once(']').map_or(text, |(_, tail)| tail);
    if let Some((_, port)) = after_host.rsplit_once(':') {
        port.parse::<u16>().ok()?;
    }
    let host = normalize_host(auth.host());
    if host.is_empty() {
        return None;
    }
    Some((host, auth.port_u16()))
}

impl HostRule {
    /// Parses one entry (the clap value parser of `--allowed-host`).
    pub fn parse(text: &str) -> Result<HostRule, String> {
        let t = text.trim();
        if t == "*" {
            return Ok(HostRule::Any);
        }
        if let Some(domain) = t.strip_prefix("*.") {
            let (host, port) = split_authority(domain).ok_or_else(|| format!("not a domain: {text:?}"))?;
            if port.is_some() {
                return Err(format!("{text:?}: a wildcard names no port"));
            }
            return Ok(HostRule::Suffix(format!(".{host}")));
        }
        if t.contains('/') || t.contains('*') {
            return Err(format!("not a host name, host:port, *.domain or *: {text:?}"));
        }
        let (host, port) = split_authority(t).ok_or_else(|| format!("not a host name: {text:?}"))?;
        Ok(HostRule::Name { host, port })
    }

    fn matches(&self, host: &str, port: Option<u16>) -> bool {
        match self {
            HostRule::Any => true,
            HostRule::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
            HostRule::Name { host: h, port: p } => h == host && (p.is_none() || *p == port),
        }
    }

    /// Whether an origin on `host` is same-site with this rule (any port).
    fn names(&self, host: &str) -> bool {
        match self {
            HostRule::Any => false,
            HostRule::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
            HostRule::Name { host: h, .. } => h == host,
        }
    }
}

/// `scheme://host[:port]` of an Origin header (or an entry), port defaulted.
fn parse_origin(text: &str) -> Option<(String, String, Option<u16>, bool)> {
    let (scheme, rest) = text.trim().split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return None;
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('?') || rest.contains('#') {
        return None;
    }
    let (rest, any_port) = match rest.strip_suffix(":*") {
        Some(r) => (r, true),
        None => (rest, false),
    };
    let (host, port) = split_authority(rest)?;
    let port = port.or(match scheme.as_str() {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    });
    Some((scheme, host, port, any_port))
}

impl OriginRule {
    /// Parses one entry (the clap value parser of `--allowed-origin`).
    pub fn parse(text: &str) -> Result<OriginRule, String> {
        if text.trim() == "*" {
            return Ok(OriginRule::Any);
        }
        let (scheme, host, port, any_port) = parse_origin(text)
            .ok_or_else(|| format!("not an origin (scheme://host[:port], scheme://host:* or *): {text:?}"))?;
        Ok(OriginRule::Exact {
            scheme,
            host,
            port: if any_port { None } else { port },
        })
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    BadHost(String),
    Host(String),
    Origin(String),
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BadHost(_) => StatusCode::BAD_REQUEST,
            Refusal::Host(_) | Refusal::Origin(_) => StatusCode::FORBIDDEN,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refusal::BadHost(why) => format!("bad request: {why}"),
            Refusal::Host(h) => format!(
                "forbidden: Host {h:?} is not a name this gateway serves (DNS rebinding protection; \
                 add it with --allowed-host, chart value gateway.allowedHosts)"
            ),
            Refusal::Origin(o) => format!(
                "forbidden: Origin {o:?} is not allowed (cross-origin protection; add it with \
                 --allowed-origin, chart value gateway.allowedOrigins)"
            ),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status(), Json(json!({"error": self.message()}))).into_response()
    }
}

/// The allowed hosts and origins.
#[derive(Debug, Clone)]
pub struct Policy {
    hosts: Vec<HostRule>,
    origins: Vec<OriginRule>,
}

impl Policy {
    /// Loopback and `hosts`; `origins`.
    pub fn new(hosts: Vec<HostRule>, origins: Vec<OriginRule>) -> Policy {
        let mut all: Vec<HostRule> = LOOPBACK_NAMES
            .iter()
            .map(|h| HostRule::Name {
                host: h.to_string(),
                port: None,
            })
            .collect();
        for h in hosts {
            if !all.contains(&h) {
                all.push(h);
            }
        }
        Policy { hosts: all, origins }
    }

    /// The decision for one request's `Host` and `Origin` header values
    /// (`host` falls back to the URI's authority, as HTTP/2 sends it).
    pub fn check(&self, host: Option<&str>, origin: Option<&str>) -> Result<(), Refusal> {
        let any_host = self.hosts.contains(&HostRule::Any);
        let Some(host_text) = host else {
            return Err(Refusal::BadHost("no Host header".into()));
        };
        let (name, port) = split_authority(host_text)
            .ok_or_else(|| Refusal::BadHost(format!("malformed Host {host_text:?}")))?;
        let ip = name.parse::<IpAddr>().is_ok();
        if !any_host && !ip && !self.hosts.iter().any(|r| r.matches(&name, port)) {
            return Err(Refusal::Host(host_text.to_string()));
        }
        let Some(origin_text) = origin else {
            return Ok(());
        };
        if self.origins.contains(&OriginRule::Any) {
            return Ok(());
        }
        let refused = || Refusal::Origin(origin_text.to_string());
        let (scheme, ohost, oport, any_port) = parse_origin(origin_text).ok_or_else(refused)?;
        if any_port {
            return Err(refused()); // `:*` is for entries, not for a browser's header
        }
        let listed = self.origins.iter().any(|r| match r {
            OriginRule::Any => true,
            OriginRule::Exact {
                scheme: s,
                host: h,
                port: p,
            } => *s == scheme && *h == ohost && (p.is_none() || *p == oport),
        });
        let loopback_ip = ohost.parse::<IpAddr>().is_ok_and(|a| a.is_loopback());
        let same_site = matches!(scheme.as_str(), "http" | "https")
            && (loopback_ip || self.hosts.iter().any(|r| r.names(&ohost)));
        if listed || same_site {
            Ok(())
        } else {
            Err(refused())
        }
    }
}

fn header(headers: &HeaderMap, name: axum::http::HeaderName) -> Result<Option<&str>, ()> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| ()),
    }
}

/// The middleware (outside the authentication: refused requests are never reviewed).
pub async fn check(State(policy): State<Arc<Policy>>, req: Request, next: Next) -> Response {
    let host = match header(req.headers(), HOST) {
        Ok(Some(h)) => Some(h.to_string()),
        Ok(None) => req.uri().authority().map(|a| a.to_string()),
        Err(()) => None,
    };
    let decision = match header(req.headers(), ORIGIN) {
        Ok(origin) => policy.check(host.as_deref(), origin),
        Err(()) => Err(Refusal::Origin("(not text)".into())),
    };
    match decision {
        Ok(()) => next.run(req).await,
        Err(refusal) => {
            tracing::info!(host = ?host, origin = ?req.headers().get(ORIGIN), path = %req.uri().path(),
                           reason = %refusal.message(), "refused by the Host/Origin check");
            let has_body = super::forward::has_body(req.headers());
            super::forward::refusal(refusal.into_response(), has_body)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(hosts: &[&str], origins: &[&str]) -> Policy {
        Policy::new(
            hosts
                .iter()
                .map(|h| HostRule::parse(h).expect("host rule"))
                .collect(),
            origins
                .iter()
                .map(|o| OriginRule::parse(o).expect("origin rule"))
                .collect(),
        )
    }

    #[test]
    fn entries_parse_or_say_why_not() {
        assert_eq!(HostRule::parse("*"), Ok(HostRule::Any));
        assert_eq!(
            HostRule::parse("*.Example.COM"),
            Ok(HostRule::Suffix(".example.com".into()))
        );
        assert_eq!(
            HostRule::parse("gw.ns.svc:8080"),
            Ok(HostRule::Name {
                host: "gw.ns.svc".into(),
                port: Some(8080)
            })
        );
        assert_eq!(
            HostRule::parse("[::1]"),
            Ok(HostRule::Name {
                host: "::1".into(),
                port: None
            })
        );
        assert_eq!(
            HostRule::parse("Notebooks.Example.com."),
            Ok(HostRule::Name {
                host: "notebooks.example.com".into(),
                port: None
            })
        );
        for bad in ["", "http://x", "a*b", "*.x:80", "x:y", "u@x"] {
            assert!(HostRule::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(OriginRule::parse("*"), Ok(OriginRule::Any));
        assert_eq!(
            OriginRule::parse("https://app.example.com"),
            Ok(OriginRule::Exact {
                scheme: "https".into(),
                host: "app.example.com".into(),
                port: Some(443)
            })
        );
        assert_eq!(
            OriginRule::parse("HTTP://app.example.com:*"),
            Ok(OriginRule::Exact {
                scheme: "http".into(),
                host: "app.example.com".into(),
                port: None
            })
        );
        for bad in [
            "app.example.com",
            "https://a/b",
            "https://",
            "null",
            "https://a:x",
        ] {
            assert!(OriginRule::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hosts_loopback_and_ip_addresses_pass_by_default_names_do_not() {
        let p = policy(&[], &[]);
        for ok in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:9",
            "[::1]:80",
            "10.1.2.3",
            "LOCALHOST.",
        ] {
            assert_eq!(p.check(Some(ok), None), Ok(()), "{ok}");
        }
        assert_eq!(
            p.check(Some("evil.example.com"), None),
            Err(Refusal::Host("evil.example.com".into()))
        );
        assert_eq!(
            p.check(Some("localhost.evil.com"), None).map_err(|r| r.status()),
            Err(StatusCode::FORBIDDEN)
        );
        for bad in [None, Some(""), Some("a b"), Some("x:notaport")] {
            assert_eq!(
                p.check(bad, None).map_err(|r| r.status()),
                Err(StatusCode::BAD_REQUEST),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn configured_hosts_by_name_port_and_domain_and_star_for_any() {
        let p = policy(
            &[
                "nbo-gateway.nbo.svc",
                "notebooks.example.com",
                "gw.internal:8080",
                "*.corp.example",
            ],
            &[],
        );
        for ok in [
            "nbo-gateway.nbo.svc",
            "nbo-gateway.nbo.svc:80",
            "Notebooks.Example.com",
            "gw.internal:8080",
            "a.corp.example",
            "b.a.corp.example:1",
        ] {
            assert_eq!(p.check(Some(ok), None), Ok(()), "{ok}");
        }
        for bad in [
            "gw.internal",
            "gw.internal:80",
            "corp.example",
            "nbo-gateway",
            "xcorp.example",
        ] {
            assert_eq!(p.check(Some(bad), None), Err(Refusal::Host(bad.into())), "{bad}");
        }
        let any = policy(&["*"], &[]);
        assert_eq!(any.check(Some("anything.example"), None), Ok(()));
        // Any Host does not mean any Origin.
        assert!(any
            .check(Some("anything.example"), Some("https://anything.example"))
            .is_err());
    }

    #[test]
    fn origins_absent_same_site_or_listed_pass_the_rest_is_403() {
        let p = policy(
            &["notebooks.example.com"],
            &["https://app.example.org", "http://dev.example.org:*"],
        );
        let host = Some("notebooks.example.com");
        for ok in [
            None,
            Some("https://notebooks.example.com"),
            Some("http://notebooks.example.com:8443"),
            Some("http://localhost:3000"),
            Some("http://127.0.0.1:6274"),
            Some("http://[::1]:5173"),
            Some("https://app.example.org"),
            Some("https://app.example.org:443"),
            Some("http://dev.example.org:5173"),
        ] {
            assert_eq!(p.check(host, ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "https://evil.example.com",
            "null",
            "https://app.example.org:8443",
            "http://app.example.org",
            "https://dev.example.org",
            "ftp://notebooks.example.com",
            "http://10.0.0.5",
            "https://notebooks.example.com.evil.com",
            "http://localhost:*",
            "garbage",
        ] {
            let got = p.check(host, Some(bad));
            assert_eq!(got, Err(Refusal::Origin(bad.into())), "{bad}");
            assert_eq!(got.map_err(|r| r.status()), Err(StatusCode::FORBIDDEN));
        }
        assert_eq!(
            policy(&[], &["*"]).check(Some("localhost"), Some("https://evil.example.com")),
            Ok(())
        );
    }

    #[test]
    fn the_conformance_suites_rebinding_request_is_refused_and_its_localhost_one_passes() {
        let p = policy(&[], &[]);
        assert!(p
            .check(Some("evil.example.com"), Some("http://evil.example.com"))
            .is_err());
        assert_eq!(
            p.check(Some("localhost:41234"), Some("http://localhost:41234")),
            Ok(())
        );
    }

    #[tokio::test]
    async fn every_route_is_checked_and_refusals_are_json() {
        use axum::body::Body;
        use axum::routing::get;
        use tower::ServiceExt;
        let app = axum::Router::new()
            .route("/{*rest}", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(
                Arc::new(policy(&[], &[])),
                check,
            ));
        let send = |host: &'static str, origin: Option<&'static str>| {
            let mut req = axum::http::Request::get("/sessions/a/b/v1/status").header(HOST, host);
            if let Some(o) = origin {
                req = req.header(ORIGIN, o);
            }
            app.clone().oneshot(req.body(Body::empty()).expect("request"))
        };
        assert_eq!(
            send("127.0.0.1:8080", None).await.expect("answer").status(),
            StatusCode::OK
        );
        let resp = send("127.0.0.1:8080", Some("https://evil.example.com"))
            .await
            .expect("answer");
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            resp.headers()[axum::http::header::CONTENT_TYPE],
            "application/json"
        );
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert!(v["error"].as_str().is_some_and(|e| e.contains("Origin")), "{v}");
        assert_eq!(
            send("evil.example.com", None).await.expect("answer").status(),
            StatusCode::FORBIDDEN
        );
    }
}
