//! Calls a kernel tool on a session's sidecar over MCP's streamable HTTP
//! transport: one MCP session per sidecar, opened on first use and opened
//! again when the sidecar no longer knows it (it restarted). Progress
//! notifications the sidecar sends while a call runs are handed back as
//! they arrive; the answer is read from a JSON body or an SSE stream.
//!
//! Not rmcp's client, weighed for issue 14: with its reqwest transport it
//! adds 32 crates (reqwest, url, idna and the ICU stack, a second tower-http)
//! and, by feature unification, makes 94 crates build again from a warm
//! cache (2 min 13 s on a two-core machine); without reqwest it adds no
//! crate but wants our own `StreamableHttpClient` over hyper (rmcp's own,
//! for Unix sockets, is 600 lines), a `RunningService` per sidecar and a
//! handler that routes each progress notification to its call: more code
//! than this file, for the three messages (`initialize`,
//! `notifications/initialized`, `tools/call`) the gateway sends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use axum::body::Body;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::client::HttpClient;
use super::error::GatewayError;
use super::upstream::Upstream;

/// The handshake version the gateway speaks to sidecars.
pub const PROTOCOL_VERSION: &str = "2025-11-25";
/// Largest single JSON-RPC message accepted from a sidecar.
const MAX_MESSAGE: usize = 64 << 20;
const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";

#[derive(Clone, Debug)]
struct McpSession {
    id: String,
    version: String,
}

type Key = (std::net::SocketAddr, [u8; 32]);

/// Why one exchange failed.
enum Failure {
    /// The sidecar does not know the MCP session (404): open a new one.
    SessionGone,
    Other(GatewayError),
}

impl From<GatewayError> for Failure {
    fn from(e: GatewayError) -> Self {
        Failure::Other(e)
    }
}

pub struct McpForwarder {
    http: HttpClient,
    sessions: Mutex<HashMap<Key, McpSession>>,
    next_id: AtomicU64,
}

impl McpForwarder {
    pub fn new(http: HttpClient) -> McpForwarder {
        McpForwarder {
            http,
            sessions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// `tools/call` on the sidecar; `params` is the whole params object
    /// (`name`, `arguments`, `_meta`). Returns the JSON-RPC `result`, or the
    /// sidecar's JSON-RPC error as `Err(message)` inside `Ok`.
    pub async fn call_tool(
        &self,
        up: &Upstream,
        params: Value,
        on_progress: &(dyn Fn(Value) + Send + Sync),
    ) -> Result<Result<Value, String>, GatewayError> {
        // A sidecar that restarted no longer knows the MCP session: open a
        // new one and try once more.
        for _ in 0..2 {
            let session = self.session(up).await?;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params});
            match self
                .exchange(up, Some(&session), &body, Some(id), on_progress)
                .await
            {
                Ok((_, Some(msg))) => return Ok(answer(msg)),
                Ok((_, None)) => {
                    return Err(GatewayError::Upstream(
                        "the sidecar sent no answer to tools/call".into(),
                    ))
                }
                Err(Failure::SessionGone) => {
                    tracing::info!(sidecar = %up.addr, "the sidecar no longer knows its MCP session; opening a new one");
                    self.drop_session(up, &session.id)
                }
                Err(Failure::Other(e)) => {
                    self.drop_session(up, &session.id);
                    return Err(e);
                }
            }
        }
        Err(GatewayError::Upstream(
            "the sidecar refused a fresh MCP session twice".into(),
        ))
    }

    /// The MCP session with this sidecar, opening one if there is none.
    async fn session(&self, up: &Upstream) -> Result<McpSession, GatewayError> {
        if let Some(s) = self.lock().get(&key(up)) {
            return Ok(s.clone());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let init = json!({
            "jsonrpc": "2.0", "id": id, "method": "initialize",
            "params": {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "notebook-operator-gateway", "version": env!("CARGO_PKG_VERSION")},
            }
        });
        let (headers, msg) = match self.exchange(up, None, &init, Some(id), &|_| {}).await {
            Ok(x) => x,
            Err(Failure::SessionGone) => {
                return Err(GatewayError::Upstream("the sidecar has no MCP endpoint".into()))
            }
            Err(Failure::Other(e)) => return Err(e),
        };
        let result = match msg.map(answer) {
            Some(Ok(r)) => r,
            Some(Err(e)) => return Err(GatewayError::Upstream(format!("MCP initialize: {e}"))),
            None => return Err(GatewayError::Upstream("MCP initialize: no answer".into())),
        };
        let session = McpSession {
            id: headers
                .get(SESSION_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            version: result["protocolVersion"]
                .as_str()
                .unwrap_or(PROTOCOL_VERSION)
                .to_string(),
        };
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        match self.exchange(up, Some(&session), &note, None, &|_| {}).await {
            Ok(_) => {}
            Err(Failure::SessionGone) => {
                return Err(GatewayError::Upstream(
                    "the sidecar dropped a new MCP session".into(),
                ))
            }
            Err(Failure::Other(e)) => return Err(e),
        }
        self.lock().insert(key(up), session.clone());
        Ok(session)
    }

    fn drop_session(&self, up: &Upstream, id: &str) {
        let mut map = self.lock();
        if map.get(&key(up)).is_some_and(|s| s.id == id) {
            map.remove(&key(up));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, McpSession>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One POST: returns the response headers and the JSON-RPC message
    /// answering `want` (none for a notification).
    async fn exchange(
        &self,
        up: &Upstream,
        session: Option<&McpSession>,
        body: &Value,
        want: Option<u64>,
        on_progress: &(dyn Fn(Value) + Send + Sync),
    ) -> Result<(hyper::HeaderMap, Option<Value>), Failure> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{}/mcp", up.addr))
            .header(HOST, &up.host)
            .header(AUTHORIZATION, format!("Bearer {}", up.token))
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json, text/event-stream");
        if let Some(s) = session {
            if !s.id.is_empty() {
                req = req.header(SESSION_HEADER, &s.id);
            }
            req = req.header(VERSION_HEADER, &s.version);
        }
        let req = req
            .body(Body::from(body.to_string()))
            .map_err(|e| GatewayError::Upstream(format!("building the MCP request: {e}")))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| GatewayError::Upstream(format!("{}: {e}", up.addr)))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        if status == StatusCode::NOT_FOUND && session.is_some() {
            return Err(Failure::SessionGone);
        }
        if status == StatusCode::ACCEPTED || (want.is_none() && status.is_success()) {
            return Ok((headers, None));
        }
        let is_sse = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let mut body = resp.into_body();
        if !status.is_success() || !is_sse {
            let bytes = http_body_util::Limited::new(body, MAX_MESSAGE)
                .collect()
                .await
                .map_err(|e| GatewayError::Upstream(format!("reading the sidecar's answer: {e}")))?
                .to_bytes();
            if !status.is_success() {
                let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
                return Err(GatewayError::Upstream(format!("the sidecar answered {status}: {text}")).into());
            }
            let msg: Value = serde_json::from_slice(&bytes)
                .map_err(|e| GatewayError::Upstream(format!("the sidecar's answer is not JSON: {e}")))?;
            return Ok((headers, Some(msg)));
        }
        let mut sse = SseParser::default();
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| GatewayError::Upstream(format!("reading the sidecar's stream: {e}")))?;
            let Ok(data) = frame.into_data() else { continue };
            for event in sse.push(&data).map_err(Failure::Other)? {
                let Ok(msg) = serde_json::from_str::<Value>(&event) else {
                    continue;
                };
                if want.is_some() && msg["id"].as_u64() == want && msg.get("method").is_none() {
                    return Ok((headers, Some(msg)));
                }
                if msg["method"] == "notifications/progress" {
                    on_progress(msg["params"].clone());
                }
            }
        }
        Ok((headers, None))
    }
}

fn key(up: &Upstream) -> Key {
    (up.addr, Sha256::digest(up.token.as_bytes()).into())
}

/// A JSON-RPC response: its result, or its error's message.
fn answer(msg: Value) -> Result<Value, String> {
    match msg.get("error") {
        Some(err) => Err(err["message"]
            .as_str()
            .unwrap_or("the sidecar failed the call")
            .to_string()),
        None => Ok(msg.get("result").cloned().unwrap_or(Value::Null)),
    }
}

/// Splits an SSE byte stream into the data of its events.
#[derive(Default)]
pub struct SseParser {
    buf: BytesMut,
}

impl SseParser {
    /// Feeds bytes; returns the data of every event they completed.
    pub fn push(&mut self, bytes: &Bytes) -> Result<Vec<String>, GatewayError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some((end, sep)) = event_end(&self.buf) {
            let event = self.buf.split_to(end);
            self.buf.advance(sep);
            let text = String::from_utf8_lossy(&event);
            let mut data: Option<String> = None;
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix("data:") {
                    let rest = rest.strip_prefix(' ').unwrap_or(rest);
                    match &mut data {
                        Some(d) => {
                            d.push('\n');
                            d.push_str(rest);
                        }
                        None => data = Some(rest.to_string()),
                    }
                }
            }
            out.extend(data.filter(|d| !d.is_empty()));
        }
        if self.buf.len() > MAX_MESSAGE {
            return Err(GatewayError::Upstream(
                "an MCP event from the sidecar is too large".into(),
            ));
        }
        Ok(out)
    }
}

/// Where the first complete event ends, and the length of its separator.
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_cut_wherever_the_bytes_split() {
        let stream =
            "id: 1\ndata: {\"a\":1}\n\n: keep-alive\n\ndata: {\"b\":\ndata: 2}\r\n\r\nretry: 5\ndata: x";
        for cut in 0..stream.len() {
            let mut p = SseParser::default();
            let mut got = p
                .push(&Bytes::copy_from_slice(&stream.as_bytes()[..cut]))
                .unwrap();
            got.extend(
                p.push(&Bytes::copy_from_slice(&stream.as_bytes()[cut..]))
                    .unwrap(),
            );
            assert_eq!(
                got,
                vec!["{\"a\":1}".to_string(), "{\"b\":\n2}".to_string()],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn answers_are_results_or_error_messages() {
        assert_eq!(answer(json!({"id": 1, "result": {"x": 1}})), Ok(json!({"x": 1})));
        assert_eq!(
            answer(json!({"id": 1, "error": {"code": -32602, "message": "bad"}})),
            Err("bad".to_string())
        );
    }
}
