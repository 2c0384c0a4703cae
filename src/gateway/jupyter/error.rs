//! The gateway's refusals in the shape Jupyter clients read:
//! `{"message": ..., "reason": ...}` (jupyter_server's `GatewayClient` shows
//! both; JupyterLab shows `message`), with the same status codes as
//! [`GatewayError`] everywhere else.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::gateway::GatewayError;

/// A [`GatewayError`] answered to a Jupyter client.
#[derive(Debug)]
pub struct JupyterError(pub GatewayError);

impl From<GatewayError> for JupyterError {
    fn from(e: GatewayError) -> Self {
        JupyterError(e)
    }
}

/// The body of a refusal with `status` and `message`.
pub fn body(status: StatusCode, message: &str) -> Value {
    json!({
        "message": message,
        "reason": status.canonical_reason().unwrap_or("Error"),
    })
}

impl IntoResponse for JupyterError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let mut resp = (status, Json(body(status, &self.0.to_string()))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

pub type Result<T> = std::result::Result<T, JupyterError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_message_and_reason() {
        let resp = JupyterError(GatewayError::NotFound("Kernel does not exist: k".into())).into_response();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            body(StatusCode::NOT_FOUND, "Kernel does not exist: k"),
            json!({"message": "Kernel does not exist: k", "reason": "Not Found"})
        );
        let resp401 = JupyterError(GatewayError::Unauthenticated("no token".into())).into_response();
        assert_eq!(resp401.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(resp401.headers()[header::WWW_AUTHENTICATE], "Bearer");
        for (e, code) in [
            (GatewayError::BadRequest("name: must be a string".into()), 400),
            (GatewayError::Timeout("t".into()), 504),
            (GatewayError::SessionFailed("f".into()), 500),
            (GatewayError::Limit("l".into()), 429),
        ] {
            assert_eq!(JupyterError(e).into_response().status().as_u16(), code);
        }
    }
}
