//! The event stream over Server-Sent Events and WebSocket.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::ApiError;
use crate::events::stream::{frames, Frame};
use crate::events::SubscribeError;
use crate::sidecar::Service;

/// `since` from the query, else `Last-Event-ID`; absent: live events only.
pub fn parse_since(q: &HashMap<String, String>, headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let raw = q.get("since").cloned().or_else(|| {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    });
    match raw {
        None => Ok(None),
        Some(s) => s
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ApiError::bad_field("since", "must be a non-negative integer sequence number")),
    }
}

fn subscribe(
    svc: &Arc<Service>,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<impl futures::Stream<Item = Frame> + Send + use<>, ApiError> {
    let since = parse_since(q, headers)?;
    let execution = q.get("execution").filter(|e| !e.is_empty()).cloned();
    let sub = svc.bus.subscribe(since, execution).map_err(|e| match e {
        SubscribeError::Future { .. } => ApiError::bad_field("since", e.to_string()),
    })?;
    svc.touch();
    let start = since.unwrap_or_else(|| svc.bus.newest());
    // A client leaving is activity too: idle time counts from its departure,
    // not from its arrival.
    let on_leave = LeaveGuard(svc.clone());
    Ok(frames(sub, svc.reader.clone(), start).map(move |f| {
        let _keep = &on_leave;
        f
    }))
}

/// Marks activity when the stream it lives in is dropped (the client left).
struct LeaveGuard(Arc<Service>);

impl Drop for LeaveGuard {
    fn drop(&mut self) {
        self.0.touch();
    }
}

pub async fn sse(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let stream = subscribe(&svc, &q, &headers)?.map(|f| {
        let ev = SseEvent::default().data(f.json);
        Ok::<_, Infallible>(match f.id {
            Some(id) => ev.id(id.to_string()),
            None => ev,
        })
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

pub async fn ws(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let stream = subscribe(&svc, &q, &headers)?;
    Ok(upgrade.on_upgrade(move |socket| pump(socket, stream)))
}

async fn pump(mut socket: WebSocket, stream: impl futures::Stream<Item = Frame> + Send) {
    let mut stream = std::pin::pin!(stream);
    loop {
        tokio::select! {
            f = stream.next() => match f {
                Some(f) => {
                    if socket.send(Message::Text(f.json.into())).await.is_err() {
                        return;
                    }
                }
                None => {
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
