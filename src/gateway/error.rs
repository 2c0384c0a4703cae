//! The gateway's one error type: every refusal an agent can meet, with the
//! HTTP status it maps to. The message names what to change.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No bearer token, or one the apiserver does not accept.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The reviewed user may not do this (SubjectAccessReview said no).
    #[error("forbidden: {user} cannot {action}{what} in namespace {namespace}{reason}")]
    Forbidden {
        user: String,
        /// Verb and resource, e.g. `list notebookpools`.
        action: String,
        what: String,
        namespace: String,
        reason: String,
    },
    /// The per-user cap on live sessions is reached.
    #[error("{0}")]
    Limit(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// The session exists but its sidecar cannot take requests yet.
    #[error("{0}")]
    NotReady(String),
    /// The apiserver failed or refused for another reason.
    #[error("{step}: {source}")]
    Kube {
        step: &'static str,
        #[source]
        source: kube::Error,
    },
    /// A session did not become Ready in the time allowed.
    #[error("{0}")]
    Timeout(String),
    /// A session that was asked for cannot run (phase Failed, or deleted while starting).
    #[error("{0}")]
    SessionFailed(String),
    /// Watching an object failed.
    #[error("{0}")]
    Watch(String),
    /// The sidecar could not be reached or answered nonsense.
    #[error("sidecar: {0}")]
    Upstream(String),
}

impl GatewayError {
    pub fn kube(step: &'static str) -> impl FnOnce(kube::Error) -> GatewayError {
        move |source| match &source {
            kube::Error::Api(s) if s.code == 404 => GatewayError::NotFound(format!("{step}: {}", s.message)),
            kube::Error::Api(s) if s.code == 400 || s.code == 422 || s.code == 409 => {
                GatewayError::BadRequest(format!("{step}: {}", s.message))
            }
            _ => GatewayError::Kube { step, source },
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            GatewayError::Forbidden { .. } => StatusCode::FORBIDDEN,
            GatewayError::Limit(_) => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::NotFound(_) => StatusCode::NOT_FOUND,
            GatewayError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::SessionFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::Kube { .. } | GatewayError::Upstream(_) | GatewayError::Watch(_) => {
                StatusCode::BAD_GATEWAY
            }
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = (status, Json(json!({"error": self.to_string()}))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}
