//! `/sessions/{namespace}/{name}/...`: the sidecar's HTTP routes through the
//! gateway. The caller needs `get` on the session; the request goes to the
//! sidecar with the session's token instead of the caller's, and the answer
//! (SSE included) is streamed back as it comes. WebSocket upgrades are
//! joined end to end.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use hyper_util::rt::TokioIo;
use tracing::Instrument;

use super::error::GatewayError;
use super::review::User;
use super::sessions::check_names;
use super::upstream::Upstream;
use super::Gateway;

/// `/sessions/{ns}/{name}` (the sidecar's `/`).
pub async fn session_root(
    State(gw): State<Arc<Gateway>>,
    Extension(user): Extension<User>,
    Path((ns, name)): Path<(String, String)>,
    req: Request,
) -> Response {
    forward(gw, user, ns, name, String::new(), req).await
}

/// `/sessions/{ns}/{name}/{*rest}`.
pub async fn session_path(
    State(gw): State<Arc<Gateway>>,
    Extension(user): Extension<User>,
    Path((ns, name, rest)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    forward(gw, user, ns, name, rest, req).await
}

async fn forward(
    gw: Arc<Gateway>,
    user: User,
    ns: String,
    name: String,
    rest: String,
    req: Request,
) -> Response {
    let span = tracing::info_span!("forward", session = %format!("{ns}/{name}"), user = %user.username,
                                   method = %req.method(), path = %rest);
    let has_body = has_body(req.headers());
    match forward_inner(&gw, &user, &ns, &name, &rest, req)
        .instrument(span)
        .await
    {
        Ok(resp) => resp,
        Err(e) => refusal(e.into_response(), has_body),
    }
}

/// Whether a request announces a body.
pub fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// A refusal sent before the request body was read: the server will not
/// read it either and closes the connection, so it says so (a client that
/// reused the connection would otherwise find it closed under its next request).
pub fn refusal(mut resp: Response, request_had_body: bool) -> Response {
    if request_had_body {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

async fn forward_inner(
    gw: &Gateway,
    user: &User,
    ns: &str,
    name: &str,
    rest: &str,
    req: Request,
) -> Result<Response, GatewayError> {
    check_names(ns, name).map_err(GatewayError::BadRequest)?;
    let up = gw.session_upstream(user, ns, name).await?;
    relay(gw, &up, ns, name, rest, req).await
}

/// `req` to the sidecar `up` of session `ns/name` at path `rest` (its query
/// kept, but for a `token` parameter: the caller's credential), with the
/// session's token; the answer streamed back, and a WebSocket upgrade joined
/// end to end. The caller has been authorized for the session.
pub async fn relay(
    gw: &Gateway,
    up: &Upstream,
    ns: &str,
    name: &str,
    rest: &str,
    mut req: Request,
) -> Result<Response, GatewayError> {
    let uri = upstream_uri(&up.addr.to_string(), rest, req.uri())?;
    let upgrade = is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut out = hyper::Request::builder().method(parts.method).uri(uri);
    if let Some(headers) = out.headers_mut() {
        copy_headers(&parts.headers, headers, upgrade);
        headers.insert(
            header::HOST,
            HeaderValue::from_str(&up.host).map_err(|e| GatewayError::Upstream(e.to_string()))?,
        );
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {}", up.token))
                .map_err(|_| GatewayError::Upstream("the session token is not a header value".into()))?,
        );
    }
    let out = out
        .body(body)
        .map_err(|e| GatewayError::Upstream(format!("building the request: {e}")))?;
    let t0 = std::time::Instant::now();
    let sent = gw.http.request(out).await;
    gw.metrics.forward_seconds.observe(t0.elapsed().as_secs_f64());
    let mut resp = match sent {
        Ok(r) => r,
        Err(e) => {
            gw.upstreams.forget(ns, name);
            return Err(GatewayError::Upstream(format!("{}: {e}", up.addr)));
        }
    };
    if resp.status() == StatusCode::UNAUTHORIZED {
        // The session token changed: read it again next time.
        gw.upstreams.forget(ns, name);
    }
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(GatewayError::Upstream(
                "the sidecar switched protocols unasked".into(),
            ));
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(
            async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, upstream)) => {
                        let (mut c, mut u) = (TokioIo::new(client), TokioIo::new(upstream));
                        if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                            tracing::debug!(error = %e, "websocket relay ended");
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
                }
            }
            .in_current_span(),
        );
        let (parts, _) = resp.into_parts();
        let mut back = Response::builder().status(parts.status);
        if let Some(h) = back.headers_mut() {
            copy_headers(&parts.headers, h, true);
        }
        return back
            .body(Body::empty())
            .map_err(|e| GatewayError::Upstream(e.to_string()));
    }
    let (parts, body) = resp.into_parts();
    let mut back = Response::builder().status(parts.status);
    if let Some(h) = back.headers_mut() {
        copy_headers(&parts.headers, h, false);
    }
    back.body(Body::new(body))
        .map_err(|e| GatewayError::Upstream(e.to_string()))
}

/// `http://<addr>/<rest>?<query>`, without the caller's `token` parameter.
fn upstream_uri(authority: &str, rest: &str, original: &Uri) -> Result<Uri, GatewayError> {
    let query = original
        .query()
        .and_then(without_token)
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    format!("http://{authority}/{}{query}", rest.trim_start_matches('/'))
        .parse()
        .map_err(|e| GatewayError::BadRequest(format!("not a path: {e}")))
}

/// `query` without its `token` parameters (a Jupyter client's credential
/// for the gateway, never the sidecar's business); None when nothing is left.
pub fn without_token(query: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && p.split('=').next() != Some("token"))
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade && headers.contains_key(header::UPGRADE)
}

/// Hop-by-hop headers are the connection's own and do not travel on.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Copies end-to-end headers (not the caller's credentials, not `Host`, not
/// `Origin`: the gateway checked it, and the sidecar is addressed by the
/// gateway under a name of its own, so the sidecar's own Origin check would
/// refuse an origin the gateway allows); for an upgrade, `Connection:
/// upgrade` and `Upgrade` travel too.
fn copy_headers(from: &HeaderMap, to: &mut HeaderMap, upgrade: bool) {
    let named_by_connection: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in from {
        let hop = HOP_BY_HOP.contains(name)
            || *name == header::UPGRADE
            || named_by_connection.iter().any(|n| n == name.as_str());
        if hop
            || *name == header::AUTHORIZATION
            || *name == header::HOST
            || *name == header::COOKIE
            || *name == header::ORIGIN
        {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
    if upgrade {
        to.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(u) = from.get(header::UPGRADE) {
            to.insert(header::UPGRADE, u.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_and_query_go_to_the_sidecar() {
        let uri: Uri = "/sessions/ns/s1/v1/events?since=5&execution=x".parse().unwrap();
        assert_eq!(
            upstream_uri("10.0.0.1:8888", "v1/events", &uri)
                .unwrap()
                .to_string(),
            "http://10.0.0.1:8888/v1/events?since=5&execution=x"
        );
        let uri: Uri = "/sessions/ns/s1".parse().unwrap();
        assert_eq!(
            upstream_uri("10.0.0.1:8888", "", &uri).unwrap().to_string(),
            "http://10.0.0.1:8888/"
        );
        let uri: Uri = "/api/kernels/k/channels?session_id=s&token=agent-secret"
            .parse()
            .unwrap();
        assert_eq!(
            upstream_uri("10.0.0.1:8888", "v1/kernel/channels", &uri)
                .unwrap()
                .to_string(),
            "http://10.0.0.1:8888/v1/kernel/channels?session_id=s"
        );
    }

    #[test]
    fn the_callers_token_parameter_never_reaches_the_sidecar() {
        assert_eq!(without_token("token=x"), None);
        assert_eq!(without_token("a=1&token=x&b=2").as_deref(), Some("a=1&b=2"));
        assert_eq!(without_token("token").as_deref(), None);
        assert_eq!(without_token("tokens=1").as_deref(), Some("tokens=1"));
        assert_eq!(without_token("since=5").as_deref(), Some("since=5"));
    }

    #[test]
    fn credentials_and_hop_by_hop_headers_stay_behind() {
        let mut from = HeaderMap::new();
        from.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer agent"));
        from.insert(header::COOKIE, HeaderValue::from_static("a=b"));
        from.insert(header::HOST, HeaderValue::from_static("gateway"));
        from.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://notebooks.example.com"),
        );
        from.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        from.insert("x-private", HeaderValue::from_static("1"));
        from.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        from.insert(header::ACCEPT, HeaderValue::from_static("text/event-stream"));
        from.insert("last-event-id", HeaderValue::from_static("42"));
        let mut to = HeaderMap::new();
        copy_headers(&from, &mut to, false);
        let names: Vec<&str> = to.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(to[header::ACCEPT], "text/event-stream");
        assert_eq!(to["last-event-id"], "42");
    }

    #[test]
    fn a_refusal_of_a_request_with_a_body_says_the_connection_closes() {
        let mut h = HeaderMap::new();
        assert!(!has_body(&h));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert!(!has_body(&h));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert!(has_body(&h));
        let mut chunked = HeaderMap::new();
        chunked.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert!(has_body(&chunked));
        let resp = refusal(GatewayError::NotFound("x".into()).into_response(), true);
        assert_eq!(resp.headers()[header::CONNECTION], "close");
        let resp = refusal(GatewayError::NotFound("x".into()).into_response(), false);
        assert!(resp.headers().get(header::CONNECTION).is_none());
    }

    #[test]
    fn an_upgrade_keeps_its_headers() {
        let mut from = HeaderMap::new();
        from.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        from.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        from.insert("sec-websocket-key", HeaderValue::from_static("k"));
        assert!(is_upgrade(&from));
        let mut to = HeaderMap::new();
        copy_headers(&from, &mut to, true);
        assert_eq!(to[header::CONNECTION], "upgrade");
        assert_eq!(to[header::UPGRADE], "websocket");
        assert_eq!(to["sec-websocket-key"], "k");
        from.remove(header::UPGRADE);
        assert!(!is_upgrade(&from));
    }
}
