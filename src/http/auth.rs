//! Bearer-token check, in constant time, before any handler runs; and the
//! warm mode of a pool pod, which serves no client until a session claims it.

use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// Routes a warm (unclaimed) pool pod answers, with the pool's token.
pub const WARM_ROUTES: [&str; 2] = ["/v1/status", "/v1/claim"];

/// Who may call, and whether the pod is still warm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// The one accepted bearer token.
    pub token: Arc<String>,
    /// A warm pool pod not claimed yet: only [`WARM_ROUTES`] answer.
    pub warm: bool,
    /// The session that claimed the pod (`namespace`, `name`), once one did.
    pub claimed_by: Option<(String, String)>,
}

/// The accepted token and the warm flag, shared by the middleware and the
/// claim handler: a claim swaps the token for every request after it.
#[derive(Clone, Debug)]
pub struct Token(pub Arc<RwLock<Access>>);

impl Token {
    /// An ordinary sidecar: `token` and every route.
    pub fn new(token: String) -> Self {
        Self::with(Access {
            token: Arc::new(token),
            warm: false,
            claimed_by: None,
        })
    }

    /// From a given state (a warm pod, or one claimed before a restart).
    pub fn with(access: Access) -> Self {
        Token(Arc::new(RwLock::new(access)))
    }

    /// What is accepted now.
    pub fn access(&self) -> Access {
        match self.0.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces what is accepted.
    pub fn set(&self, access: Access) {
        match self.0.write() {
            Ok(mut a) => *a = access,
            Err(poisoned) => *poisoned.into_inner() = access,
        }
    }
}

/// The credentials of an `Authorization: Bearer <token>` value; the scheme
/// is case-insensitive (RFC 9110 section 11.1).
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// Pure: what the middleware does with a request to `path` presenting `presented`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it.
    Pass,
    /// 401: no token or another one.
    Unauthorized,
    /// 503: a warm pod serves this route only after a claim.
    Warm,
}

/// The decision of [`require_token`].
pub fn verdict(access: &Access, presented: Option<&str>, path: &str) -> Verdict {
    match presented {
        Some(p) if crate::util::constant_time_eq(p.as_bytes(), access.token.as_bytes()) => {
            if access.warm && !WARM_ROUTES.contains(&path) {
                Verdict::Warm
            } else {
                Verdict::Pass
            }
        }
        _ => Verdict::Unauthorized,
    }
}

pub async fn require_token(State(token): State<Token>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer);
    match verdict(&token.access(), presented, req.uri().path()) {
        Verdict::Pass => next.run(req).await,
        Verdict::Warm => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "warm",
            "this is a warm pool pod: it serves clients once a NotebookSession claims it",
        )
        .into_response(),
        Verdict::Unauthorized => {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required",
            )
            .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for v in ["Bearer t", "bearer t", "BEARER t", "bEaReR   t "] {
            assert_eq!(bearer(v), Some("t"), "{v}");
        }
        for v in ["Basic t", "Bearer", "Bearer ", "Bearert", "token t"] {
            assert_eq!(bearer(v), None, "{v}");
        }
    }

    #[test]
    fn a_warm_pod_answers_only_status_and_claim_and_only_to_its_token() {
        let warm = Access {
            token: Arc::new("pool".into()),
            warm: true,
            claimed_by: None,
        };
        assert_eq!(verdict(&warm, Some("pool"), "/v1/status"), Verdict::Pass);
        assert_eq!(verdict(&warm, Some("pool"), "/v1/claim"), Verdict::Pass);
        assert_eq!(verdict(&warm, Some("pool"), "/v1/executions"), Verdict::Warm);
        assert_eq!(verdict(&warm, Some("pool"), "/mcp"), Verdict::Warm);
        assert_eq!(verdict(&warm, Some("other"), "/v1/status"), Verdict::Unauthorized);
        let claimed = Access {
            token: Arc::new("session".into()),
            warm: false,
            claimed_by: Some(("ns".into(), "s".into())),
        };
        assert_eq!(
            verdict(&claimed, Some("session"), "/v1/executions"),
            Verdict::Pass
        );
        assert_eq!(
            verdict(&claimed, Some("pool"), "/v1/status"),
            Verdict::Unauthorized
        );
    }
}
