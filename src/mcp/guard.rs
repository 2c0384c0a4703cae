//! JSON-RPC errors for `/mcp` bodies that are not one MCP message, as MCP
//! clients expect them (JSON-RPC 2.0 section 5.1), instead of the transport's
//! plain-text `415`.
//!
//! One axum middleware, used by the sidecar's and the gateway's `/mcp`: a
//! `POST` with `Content-Type: application/json` has its body read (at most
//! the route's body limit) and classified ([`classify`]):
//!
//! - not JSON: `400`, `-32700` Parse error, `id: null`;
//! - an array (a JSON-RPC batch): `400`, `-32600` Invalid Request, `id: null`.
//!   MCP 2025-06-18 removed batching; the versions rmcp serves (2025-06-18
//!   and later) have none;
//! - JSON that is not a JSON-RPC 2.0 message (not an object, `jsonrpc` not
//!   `"2.0"`, neither `method` nor `result`/`error`, an `id` of the wrong
//!   type): `400`, `-32600`, with the request's `id` when it has a usable one;
//! - a message of that shape that rmcp's MCP types still refuse (an `error`
//!   that is not an error object, ...): `400`, `-32600`, with its `id`;
//! - a body over the limit: `413`, `-32600`, the limit named.
//!
//! Everything else goes on to the transport unchanged (the buffered bytes,
//! as they came). Other methods, and bodies of other media types (the
//! transport's `415` is the right answer to those), are not looked at.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::model::ClientJsonRpcMessage;
use serde::Deserialize;
use serde_json::{json, Value};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;

/// Why a body is not one MCP message: the JSON-RPC error to answer with.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub status: StatusCode,
    pub code: i64,
    pub message: String,
    /// The request's id when it has one of the allowed types, else null.
    pub id: Value,
}

impl Rejection {
    fn new(code: i64, message: impl Into<String>, id: Value) -> Rejection {
        Rejection {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
            id,
        }
    }

    /// The JSON-RPC error object.
    pub fn body(&self) -> Value {
        json!({"jsonrpc": "2.0", "id": self.id, "error": {"code": self.code, "message": self.message}})
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let body = self.body().to_string();
        let mut resp = (self.status, body).into_response();
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp
    }
}

/// `Ok` when `body` is one JSON-RPC 2.0 message that rmcp's MCP types take
/// (what the transport goes on to parse), else why not.
pub fn classify(body: &[u8]) -> Result<(), Rejection> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Rejection::new(PARSE_ERROR, format!("Parse error: {e}"), Value::Null))?;
    let obj = match &value {
        Value::Object(o) => o,
        Value::Array(_) => {
            return Err(Rejection::new(
                INVALID_REQUEST,
                "Invalid Request: JSON-RPC batches are not supported by this protocol version \
                 (MCP 2025-06-18 removed batching); send one message per request",
                Value::Null,
            ))
        }
        _ => {
            return Err(Rejection::new(
                INVALID_REQUEST,
                "Invalid Request: a JSON-RPC message is a JSON object",
                Value::Null,
            ))
        }
    };
    let id = match obj.get("id") {
        None | Some(Value::Null) => Value::Null,
        Some(v @ (Value::String(_) | Value::Number(_))) => v.clone(),
        Some(_) => {
            return Err(Rejection::new(
                INVALID_REQUEST,
                "Invalid Request: \"id\" must be a string or a number",
                Value::Null,
            ))
        }
    };
    let invalid = |what: &str| {
        Err(Rejection::new(
            INVALID_REQUEST,
            format!("Invalid Request: {what}"),
            id.clone(),
        ))
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid("\"jsonrpc\" must be \"2.0\"");
    }
    let is_request = match obj.get("method") {
        Some(Value::String(_)) => true,
        Some(_) => return invalid("\"method\" must be a string"),
        None => false,
    };
    if is_request {
        if obj.contains_key("result") || obj.contains_key("error") {
            return invalid("a message has either \"method\" or \"result\"/\"error\", not both");
        }
        if !matches!(obj.get("params"), None | Some(Value::Object(_))) {
            return invalid("\"params\" must be an object");
        }
    } else {
        match (obj.contains_key("result"), obj.contains_key("error")) {
            (false, false) => {
                return invalid(
                    "neither \"method\" (a request or notification) nor \"result\"/\"error\" (a response)",
                )
            }
            (true, true) => return invalid("a response has \"result\" or \"error\", not both"),
            _ if id.is_null() => return invalid("a response needs the \"id\" of the request it answers"),
            _ => {}
        }
    }
    match ClientJsonRpcMessage::deserialize(&value) {
        Ok(_) => Ok(()),
        Err(e) => invalid(&format!("not an MCP message: {e}")),
    }
}

/// Whether a `Content-Type` names JSON (the only type `/mcp` takes in a POST).
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    content_type.and_then(|v| v.to_str().ok()).is_some_and(|v| {
        let essence = v.split_once(';').map_or(v, |(e, _)| e);
        essence.trim().eq_ignore_ascii_case("application/json")
    })
}

fn too_large(limit: usize) -> Rejection {
    Rejection {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: INVALID_REQUEST,
        message: format!("Invalid Request: the request body exceeds the limit of {limit} bytes"),
        id: Value::Null,
    }
}

/// The middleware; its state is the largest body taken, in bytes. Layer it on
/// the `/mcp` route (inside the authentication, so a caller without a token
/// learns nothing).
pub async fn guard(State(limit): State<usize>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST || !is_json(req.headers().get(CONTENT_TYPE)) {
        return next.run(req).await;
    }
    let announced = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        // Refused before the body is read: the connection will not be reused.
        let mut resp = too_large(limit).into_response();
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    let (parts, body) = req.into_parts();
    let bytes: Bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(e) => {
            let over =
                std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            let rejection = if over {
                too_large(limit)
            } else {
                Rejection::new(
                    PARSE_ERROR,
                    format!("Parse error: reading the request body: {e}"),
                    Value::Null,
                )
            };
            let mut resp = rejection.into_response();
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
    };
    if let Err(rejection) = classify(&bytes) {
        tracing::debug!(code = rejection.code, message = %rejection.message, "refused an MCP body");
        return rejection.into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(body: &str) -> Option<(i64, Value)> {
        classify(body.as_bytes()).err().map(|r| {
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
            (r.code, r.id)
        })
    }

    #[test]
    fn one_mcp_message_passes() {
        for ok in [
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
            r#"{"jsonrpc":"2.0","id":"a","method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"some/extension","params":{"x":1}}"#,
            r#"{"jsonrpc":"2.0","id":4,"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":5,"error":{"code":-1,"message":"no"}}"#,
            " \n{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"ping\"}\n",
        ] {
            assert_eq!(classify(ok.as_bytes()), Ok(()), "{ok}");
        }
    }

    #[test]
    fn not_json_is_a_parse_error_with_a_null_id() {
        for bad in [
            "",
            "not json",
            "{\"jsonrpc\":\"2.0\",",
            "{\"a\":1} trailing",
            "\u{feff}{}",
            "{'a':1}",
        ] {
            assert_eq!(code(bad), Some((PARSE_ERROR, Value::Null)), "{bad:?}");
        }
        let r = classify(b"\xff\xfe").unwrap_err();
        assert!(r.message.starts_with("Parse error"), "{}", r.message);
        assert_eq!(
            r.body(),
            json!({"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":r.message}})
        );
    }

    #[test]
    fn a_batch_is_an_invalid_request_that_says_why() {
        for batch in ["[]", r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#, "[1,2]"] {
            assert_eq!(code(batch), Some((INVALID_REQUEST, Value::Null)), "{batch}");
        }
        let r = classify(br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#).unwrap_err();
        assert!(r.message.contains("batches are not supported"), "{}", r.message);
    }

    #[test]
    fn json_that_is_not_json_rpc_is_an_invalid_request_with_its_id() {
        let cases: [(&str, Value); 13] = [
            ("42", Value::Null),
            ("\"ping\"", Value::Null),
            ("null", Value::Null),
            ("{}", Value::Null),
            (r#"{"id":1,"method":"ping"}"#, json!(1)),
            (r#"{"jsonrpc":"1.0","id":"x","method":"ping"}"#, json!("x")),
            (r#"{"jsonrpc":2.0,"id":7,"method":"ping"}"#, json!(7)),
            (r#"{"jsonrpc":"2.0","id":8}"#, json!(8)),
            (r#"{"jsonrpc":"2.0","id":9,"method":5}"#, json!(9)),
            (r#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#, Value::Null),
            (
                r#"{"jsonrpc":"2.0","id":10,"method":"ping","params":[1]}"#,
                json!(10),
            ),
            (r#"{"jsonrpc":"2.0","result":{}}"#, Value::Null),
            (
                r#"{"jsonrpc":"2.0","id":11,"result":{},"error":{"code":1,"message":"x"}}"#,
                json!(11),
            ),
        ];
        for (body, id) in cases {
            assert_eq!(code(body), Some((INVALID_REQUEST, id)), "{body}");
        }
    }

    #[test]
    fn what_rmcp_refuses_past_the_shape_is_an_invalid_request_with_the_id() {
        let r = classify(br#"{"jsonrpc":"2.0","id":12,"error":5}"#).unwrap_err();
        assert_eq!((r.code, r.id.clone()), (INVALID_REQUEST, json!(12)));
        assert!(r.message.contains("not an MCP message"), "{}", r.message);
        // Unknown methods and odd params are rmcp's (and the tools') to answer.
        assert_eq!(
            classify(br#"{"jsonrpc":"2.0","id":13,"method":"tools/call","params":{"name":5}}"#),
            Ok(())
        );
    }

    #[test]
    fn only_json_bodies_are_looked_at() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert!(is_json(Some(&v("application/json"))));
        assert!(is_json(Some(&v("Application/JSON; charset=utf-8"))));
        assert!(!is_json(Some(&v("text/plain"))));
        assert!(!is_json(None));
    }

    #[tokio::test]
    async fn the_middleware_answers_json_and_passes_the_bytes_on_unchanged() {
        use axum::routing::post;
        use tower::ServiceExt;
        let app = axum::Router::new()
            .route("/mcp", post(|body: Bytes| async move { body }))
            .layer(axum::middleware::from_fn_with_state(64usize, guard));
        let send = |body: String, ct: &'static str| {
            let req = axum::http::Request::post("/mcp")
                .header(CONTENT_TYPE, ct)
                .body(Body::from(body))
                .expect("request");
            app.clone().oneshot(req)
        };
        let ok = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        let resp = send(ok.into(), "application/json").await.expect("answer");
        assert_eq!(resp.status(), StatusCode::OK);
        let got = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .expect("body");
        assert_eq!(&got[..], ok.as_bytes());

        let resp = send("nope".into(), "application/json").await.expect("answer");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        let got = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .expect("body");
        let v: Value = serde_json::from_slice(&got).expect("json");
        assert_eq!(v["error"]["code"], PARSE_ERROR);
        assert_eq!(v["id"], Value::Null);

        // Another media type goes on unread.
        let resp = send("nope".into(), "text/plain").await.expect("answer");
        assert_eq!(resp.status(), StatusCode::OK);

        let big = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"{}\"}}",
            "x".repeat(80)
        );
        let resp = send(big, "application/json").await.expect("answer");
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        let got = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .expect("body");
        let v: Value = serde_json::from_slice(&got).expect("json");
        assert_eq!(v["error"]["code"], INVALID_REQUEST);
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("64 bytes")),
            "{v}"
        );
    }
}
