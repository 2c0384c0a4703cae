//! `GET /v1/kernel/channels`: the kernel's channels for Jupyter clients, as
//! Jupyter Server's `/api/kernels/{id}/channels` WebSocket carries them
//! (legacy JSON or the `v1.kernel.websocket.jupyter.org` subprotocol).
//!
//! An `execute_request` does not go to the kernel directly: it becomes a
//! queued execution (durable before the kernel sees it, at most once by its
//! `msg_id`, in order with HTTP and MCP work), sent with the client's own
//! header so every message of it names the client's request as parent.
//! Interrupts and restarts go through the kernel actor as the HTTP routes'
//! do; everything else (completion, inspection, history, kernel info,
//! comms, stdin replies) is passed to the kernel unchanged. What the kernel
//! sends comes back through the hub ([`crate::sidecar::channels`]): all of
//! iopub, and the replies to this client's requests.
//!
//! A frame that is not a Jupyter message closes the connection with code
//! 1007 and the reason; nothing of it reaches the kernel.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use serde_json::{json, Value};
use tracing::{debug, info_span, warn, Instrument};

use super::ApiError;
use crate::jupyter::ws::{self, Frame, Protocol, V1_PROTOCOL};
use crate::jupyter::{Channel, Message};
use crate::sidecar::channels::{delivers, Sent};
use crate::sidecar::{Service, SubmitRequest};
use crate::store::ClientRequest;

/// Longest `session_id` taken.
const MAX_SESSION_ID: usize = 256;
/// Close code for a frame that is not a Jupyter message (invalid payload).
const CLOSE_NOT_A_MESSAGE: u16 = 1007;

pub async fn channels(
    State(svc): State<Arc<Service>>,
    Query(q): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let session = match q.get("session_id").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) if s.len() <= MAX_SESSION_ID && s.chars().all(|c| c.is_ascii_graphic()) => {
            Some(s.to_string())
        }
        Some(_) => {
            return Err(ApiError::bad_field(
                "session_id",
                format!("must be 1 to {MAX_SESSION_ID} printable ASCII characters"),
            ))
        }
    };
    let limit = super::body_limit(&svc.cfg);
    Ok(upgrade
        .protocols([V1_PROTOCOL])
        .max_message_size(limit)
        .on_upgrade(move |socket| {
            let protocol = match socket.protocol().and_then(|p| p.to_str().ok()) {
                Some(V1_PROTOCOL) => Protocol::V1,
                _ => Protocol::Legacy,
            };
            let span = info_span!(
                "channels",
                client_session = session.as_deref().unwrap_or(""),
                ?protocol
            );
            Connection {
                svc,
                socket,
                protocol,
                session,
                sent: Sent::default(),
            }
            .run()
            .instrument(span)
        }))
}

struct Connection {
    svc: Arc<Service>,
    socket: WebSocket,
    protocol: Protocol,
    session: Option<String>,
    sent: Sent,
}

/// Why a connection ends.
enum End {
    /// The client closed or went away.
    Gone,
    /// It sent something that is not a Jupyter message.
    Refused(String),
}

impl Connection {
    async fn run(mut self) {
        let hub = self.svc.channels.clone();
        let _counted = hub.connect();
        let mut newest = hub.watch();
        let resumed = self.session.as_deref().and_then(|s| hub.position(s));
        let mut pos = resumed.unwrap_or_else(|| hub.newest());
        debug!(
            resumed = resumed.is_some(),
            from = pos,
            "a Jupyter client connected"
        );
        let end = loop {
            newest.borrow_and_update();
            let batch = hub.since(pos);
            if batch.missed > 0 {
                warn!(
                    missed = batch.missed,
                    "the client missed kernel messages the hub no longer holds"
                );
                if self
                    .send(Channel::Iopub, &resync_notice(batch.missed))
                    .await
                    .is_err()
                {
                    break End::Gone;
                }
            }
            let mut gone = false;
            for (seq, m) in batch.messages {
                if delivers(&m, &self.sent, self.session.as_deref())
                    && self.send(m.channel, &m.msg).await.is_err()
                {
                    gone = true;
                    break;
                }
                pos = seq;
            }
            if let Some(s) = &self.session {
                hub.remember(s, pos);
            }
            if gone {
                break End::Gone;
            }
            tokio::select! {
                changed = newest.changed() => if changed.is_err() { break End::Gone },
                incoming = self.socket.recv() => match incoming {
                    None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => break End::Gone,
                    Some(Ok(WsMessage::Text(t))) => {
                        if let Err(e) = self.on_frame(Frame::Text(t.to_string())).await { break e }
                    }
                    Some(Ok(WsMessage::Binary(b))) => {
                        if let Err(e) = self.on_frame(Frame::Binary(b)).await { break e }
                    }
                    Some(Ok(_)) => {}
                },
            }
        };
        match end {
            End::Refused(reason) => {
                warn!(%reason, "closing: the client sent a frame that is not a Jupyter message");
                let reason: String = reason.chars().take(120).collect();
                let _ = self
                    .socket
                    .send(WsMessage::Close(Some(CloseFrame {
                        code: CLOSE_NOT_A_MESSAGE,
                        reason: reason.into(),
                    })))
                    .await;
            }
            // Answers a client's close (the reply is queued, this sends it).
            End::Gone => {
                let _ = futures::SinkExt::close(&mut self.socket).await;
            }
        }
        debug!("the Jupyter client left");
        self.svc.touch();
    }

    async fn send(&mut self, channel: Channel, m: &Message) -> Result<(), axum::Error> {
        let frame = match ws::encode(channel, m, self.protocol) {
            Frame::Text(t) => WsMessage::Text(t.into()),
            Frame::Binary(b) => WsMessage::Binary(b),
        };
        self.socket.send(frame).await
    }

    async fn on_frame(&mut self, frame: Frame) -> Result<(), End> {
        let (channel, msg) = ws::decode(&frame, self.protocol)
            .map_err(|e| End::Refused(format!("not a Jupyter message: {e}")))?;
        let msg_type = msg.header.msg_type.clone();
        debug!(?channel, %msg_type, msg_id = %msg.header.msg_id, "from the client");
        let answers = match (channel, msg_type.as_str()) {
            (Channel::Shell, "execute_request") => self.execute(msg).await,
            (Channel::Control, "interrupt_request") => {
                let r = self.svc.interrupt().await;
                vec![(
                    Channel::Control,
                    reply(&msg, "interrupt_reply", outcome(r.map_err(|e| e.to_string()))),
                )]
            }
            (Channel::Control, "shutdown_request") => self.shutdown(msg).await,
            (Channel::Iopub, _) => {
                warn!(%msg_type, "a client sent on iopub, which only the kernel sends on; ignored");
                Vec::new()
            }
            _ => {
                self.sent.add(&msg.header.msg_id);
                let refused = self.svc.forward(channel, msg.clone()).await.err();
                refused
                    .map(|e| {
                        vec![(
                            channel,
                            reply(
                                &msg,
                                &reply_type(&msg_type),
                                error_content("KernelUnavailable", &e.to_string()),
                            ),
                        )]
                    })
                    .unwrap_or_default()
            }
        };
        for (channel, m) in answers {
            if self.send(channel, &m).await.is_err() {
                return Err(End::Gone);
            }
        }
        Ok(())
    }

    /// Queues the client's execution; a refusal is answered as the kernel
    /// would answer a failed one (an `error` on iopub and an error reply).
    async fn execute(&mut self, msg: Message) -> Vec<(Channel, Message)> {
        self.sent.add(&msg.header.msg_id);
        let mut content = match &msg.content {
            Value::Object(o) => o.clone(),
            _ => serde_json::Map::new(),
        };
        let code = match content.remove("code") {
            Some(Value::String(c)) => c,
            _ => {
                return refused_execution(
                    &msg,
                    "BadRequest",
                    "execute_request: content.code must be a string",
                )
            }
        };
        let key: String = format!("jupyter:{}:{}", msg.header.session, msg.header.msg_id)
            .chars()
            .take(256)
            .collect();
        let req = SubmitRequest {
            code,
            key: Some(key),
            client_request: Some(ClientRequest {
                header: msg.header.clone(),
                metadata: msg.metadata.clone(),
                content: Value::Object(content),
            }),
            ..Default::default()
        };
        match self.svc.submit(req).await {
            Ok(done) => {
                if !done.created {
                    debug!(execution = %done.execution.id, "a request sent again; it is queued or ran once already");
                }
                debug!(execution = %done.execution.id, msg_id = %msg.header.msg_id, "queued for a Jupyter client");
                Vec::new()
            }
            Err(e) => refused_execution(&msg, "ExecutionRefused", &e.to_string()),
        }
    }

    /// A restart goes through the kernel actor; a shutdown of the kernel
    /// alone is not something a client can ask here: the session's
    /// lifecycle is its NotebookSession's.
    async fn shutdown(&mut self, msg: Message) -> Vec<(Channel, Message)> {
        let restart = msg
            .content
            .get("restart")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let content = if restart {
            match self.svc.restart().await {
                Ok(()) => json!({"status": "ok", "restart": true}),
                Err(e) => error_content("RestartFailed", &e.to_string()),
            }
        } else {
            error_content(
                "NotSupported",
                "this kernel is a NotebookSession: delete the session (DELETE /api/kernels/{id}) to shut it down",
            )
        };
        vec![(Channel::Control, reply(&msg, "shutdown_reply", content))]
    }
}

/// `foo_request` → `foo_reply`.
fn reply_type(request: &str) -> String {
    match request.strip_suffix("_request") {
        Some(stem) => format!("{stem}_reply"),
        None => format!("{request}_reply"),
    }
}

fn reply(parent: &Message, msg_type: &str, content: Value) -> Message {
    Message::reply_to(parent, msg_type, content, &parent.header.session)
}

fn outcome(r: Result<(), String>) -> Value {
    match r {
        Ok(()) => json!({"status": "ok"}),
        Err(e) => error_content("Failed", &e),
    }
}

fn error_content(ename: &str, evalue: &str) -> Value {
    json!({"status": "error", "ename": ename, "evalue": evalue, "traceback": [format!("{ename}: {evalue}")]})
}

/// What a client sees of an execution the sidecar did not queue.
fn refused_execution(msg: &Message, ename: &str, evalue: &str) -> Vec<(Channel, Message)> {
    let mut error = error_content(ename, evalue);
    if let Some(o) = error.as_object_mut() {
        o.remove("status");
    }
    vec![
        (Channel::Iopub, reply(msg, "error", error)),
        (
            Channel::Shell,
            reply(msg, "execute_reply", {
                let mut c = error_content(ename, evalue);
                c["execution_count"] = Value::Null;
                c
            }),
        ),
        (
            Channel::Iopub,
            reply(msg, "status", json!({"execution_state": "idle"})),
        ),
    ]
}

/// Told to a client that reconnected after the hub dropped messages it had
/// not seen: what it shows of cells that ran meanwhile may be incomplete.
fn resync_notice(missed: u64) -> Message {
    Message::new(
        "stream",
        json!({
            "name": "stderr",
            "text": format!(
                "notebook-operator: {missed} kernel messages sent while this client was away are no longer held; \
                 the outputs of cells that ran meanwhile are in the session's execution history (GET /v1/executions)\n"
            ),
        }),
        "notebook-operator",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_named_for_their_request() {
        assert_eq!(reply_type("complete_request"), "complete_reply");
        assert_eq!(reply_type("comm_info_request"), "comm_info_reply");
        assert_eq!(reply_type("odd"), "odd_reply");
    }

    #[test]
    fn a_refused_execution_answers_like_a_failed_one() {
        let req = Message::new("execute_request", json!({"code": 1}), "client-1");
        let out = refused_execution(&req, "BadRequest", "no code");
        let types: Vec<_> = out.iter().map(|(c, m)| (*c, m.msg_type().to_string())).collect();
        assert_eq!(
            types,
            vec![
                (Channel::Iopub, "error".into()),
                (Channel::Shell, "execute_reply".into()),
                (Channel::Iopub, "status".into())
            ]
        );
        for (_, m) in &out {
            assert_eq!(m.parent_msg_id(), Some(req.header.msg_id.as_str()));
        }
        assert_eq!(out[1].1.content["status"], "error");
    }
}
