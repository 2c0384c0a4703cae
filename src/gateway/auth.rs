//! The middleware in front of every route but the probes: a bearer token,
//! reviewed by the apiserver, or 401. The reviewed user rides on the
//! request for the handlers (and, through rmcp's request parts, the tools).

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
    let token = match bearer(req.headers()) {
        Some(t) => t.to_string(),
        None => {
            let e = GatewayError::Unauthenticated("send Authorization: Bearer <Kubernetes token>".into());
            return super::forward::refusal(e.into_response(), has_body);
        }
    };
    match gw.reviewer.authenticate(&token).await {
        Ok(user) => {
            req.extensions_mut().insert(user);
            next.run(req).await
        }
        Err(e) => {
            tracing::info!(error = %e, path = %req.uri().path(), "refused");
            super::forward::refusal(e.into_response(), has_body)
        }
    }
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
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
}
