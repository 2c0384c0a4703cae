//! The middleware in front of every route but the probes: a Kubernetes
//! token, reviewed by the apiserver, or 401. The token comes as
//! `Authorization: Bearer <t>`, or as Jupyter clients send it:
//! `Authorization: token <t>` or a `?token=<t>` query parameter (never
//! passed on to a sidecar, [`super::forward::without_token`]). The reviewed
//! user rides on the request for the handlers (and, through rmcp's request
//! parts, the tools). Refusals of the Jupyter routes are in Jupyter's error
//! shape ([`super::jupyter::error`]).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::GatewayError;
use super::Gateway;

pub async fn authenticate(State(gw): State<Arc<Gateway>>, mut req: Request, next: Next) -> Response {
    let has_body = super::forward::has_body(req.headers());
    let jupyter = super::jupyter::is_jupyter_path(req.uri().path());
    let answer = move |e: GatewayError| {
        let resp = if jupyter {
            super::jupyter::error::JupyterError(e).into_response()
        } else {
            e.into_response()
        };
        super::forward::refusal(resp, has_body)
    };
    let token =
        match credential(req.headers(), req.uri().query()) {
            Some(t) => t,
            None => return answer(GatewayError::Unauthenticated(
                "send Authorization: Bearer <Kubernetes token> (or `token <Kubernetes token>`, or ?token=)"
                    .into(),
            )),
        };
    match gw.reviewer.authenticate(&token).await {
        Ok(user) => {
            req.extensions_mut().insert(user);
            next.run(req).await
        }
        Err(e) => {
            tracing::info!(error = %e, path = %req.uri().path(), "refused");
            answer(e)
        }
    }
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    authorization(headers, "bearer")
}

/// The token of `Authorization: <scheme> <token>` (scheme case-insensitive).
fn authorization<'a>(headers: &'a HeaderMap, want: &str) -> Option<&'a str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case(want) && !token.is_empty()).then_some(token)
}

/// The caller's token: `Authorization: Bearer <t>` or `Authorization: token
/// <t>` (jupyter_server's GatewayClient, Jupyter's REST clients), else the
/// first non-empty `token` query parameter (browsers' WebSockets, URLs
/// pasted into VS Code), percent-decoded. An Authorization header of
/// another scheme is no token, whatever the query says.
pub fn credential(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if headers.contains_key(AUTHORIZATION) {
        return authorization(headers, "bearer")
            .or_else(|| authorization(headers, "token"))
            .map(str::to_string);
    }
    let uri: axum::http::Uri = format!("/?{}", query?).parse().ok()?;
    let axum::extract::Query(pairs) =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri).ok()?;
    pairs
        .into_iter()
        .find(|(k, v)| k == "token" && !v.trim().is_empty())
        .map(|(_, v)| v.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn only_a_bearer_token_counts() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, HeaderValue::from_static(v));
            h
        };
        assert_eq!(bearer(&with("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&with("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&with("Basic abc")), None);
        assert_eq!(bearer(&with("Bearer ")), None);
        assert_eq!(bearer(&with("abc")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn jupyter_clients_send_the_token_their_own_ways() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, HeaderValue::from_static(v));
            h
        };
        let none = HeaderMap::new();
        assert_eq!(credential(&with("Bearer abc"), None).as_deref(), Some("abc"));
        assert_eq!(credential(&with("token abc"), None).as_deref(), Some("abc"));
        assert_eq!(credential(&with("Token  abc "), None).as_deref(), Some("abc"));
        assert_eq!(credential(&with("Basic abc"), Some("token=q")), None);
        assert_eq!(credential(&with("token "), None), None);
        assert_eq!(
            credential(&with("Bearer h"), Some("token=q")).as_deref(),
            Some("h")
        );
        assert_eq!(credential(&none, Some("token=q")).as_deref(), Some("q"));
        assert_eq!(
            credential(&none, Some("session_id=s&token=a%2Bb.c")).as_deref(),
            Some("a+b.c")
        );
        assert_eq!(
            credential(&none, Some("token=&token=two")).as_deref(),
            Some("two")
        );
        assert_eq!(credential(&none, Some("tokens=q")), None);
        assert_eq!(credential(&none, Some("")), None);
        assert_eq!(credential(&none, None), None);
    }
}
