//! Waiting for an execution while telling the client how it goes: when the
//! request carried a progress token, the execution's events (started,
//! outputs) become MCP progress notifications, at most one per
//! `MIN_INTERVAL`, plus one every `HEARTBEAT` while nothing happens, so a
//! client that resets its timeout on progress keeps waiting. Without a
//! token this is a plain push-based wait.

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{ProgressNotificationParam, ProgressToken};
use rmcp::{Peer, RoleServer};
use serde_json::Value;
use tokio::time::Instant;

use crate::sidecar::Service;
use crate::store::{Execution, StoreError};

pub const MIN_INTERVAL: Duration = Duration::from_millis(250);
pub const HEARTBEAT: Duration = Duration::from_secs(5);
const MESSAGE_BYTES: usize = 200;

/// Where progress goes, when the client asked for it.
pub struct Progress {
    pub peer: Peer<RoleServer>,
    pub token: ProgressToken,
}

#[derive(Default)]
struct Seen {
    state: &'static str,
    outputs: u64,
    last_line: Option<String>,
    count: f64,
}

impl Seen {
    fn message(&self, started: Instant) -> String {
        let secs = started.elapsed().as_secs();
        let mut m = format!("{} for {secs} s, {} outputs", self.state, self.outputs);
        if let Some(l) = &self.last_line {
            m.push_str(": ");
            m.push_str(l);
        }
        m
    }

    fn on_event(&mut self, json: &str) {
        let Ok(v) = serde_json::from_str::<Value>(json) else {
            return;
        };
        match v.get("type").and_then(Value::as_str) {
            Some("started") => self.state = "running",
            Some("output") => {
                self.outputs += 1;
                let o = &v["output"];
                let text = match o.get("output_type").and_then(Value::as_str) {
                    Some("stream") => o.get("text").and_then(Value::as_str).map(String::from),
                    Some("error") => o.get("ename").and_then(Value::as_str).map(String::from),
                    _ => o
                        .pointer("/data/text~1plain")
                        .and_then(Value::as_str)
                        .map(String::from),
                };
                if let Some(line) = text
                    .as_deref()
                    .and_then(|t| t.lines().rev().find(|l| !l.trim().is_empty()))
                {
                    self.last_line = Some(super::content::cap_text(line.trim(), MESSAGE_BYTES, "line"));
                }
            }
            Some("finished") => self.state = "finished",
            _ => {}
        }
    }
}

/// Waits up to `wait` for `id` to be final; returns the execution as it is then.
pub async fn wait(
    svc: &Arc<Service>,
    id: &str,
    wait: Duration,
    progress: Option<Progress>,
) -> Result<Option<Execution>, StoreError> {
    let Some(progress) = progress else {
        return svc.wait(id, wait).await;
    };
    let mut sub = svc.bus.subscribe(None, Some(id.to_string())).ok();
    let started = Instant::now();
    let done = svc.wait(id, wait);
    tokio::pin!(done);
    let mut seen = Seen {
        state: "queued",
        ..Seen::default()
    };
    if let Ok(Some(e)) = svc.get(id).await {
        if e.started_at.is_some() {
            seen.state = "running";
        }
    }
    let mut last_sent: Option<Instant> = None;
    let mut dirty = true;
    loop {
        let next_send = match (dirty, last_sent) {
            (true, None) => Instant::now(),
            (true, Some(t)) => t + MIN_INTERVAL,
            (false, Some(t)) => t + HEARTBEAT,
            (false, None) => Instant::now() + HEARTBEAT,
        };
        tokio::select! {
            r = &mut done => return r,
            ev = next_event(&mut sub) => match ev {
                Some(json) => { seen.on_event(&json); dirty = true; }
                None => sub = None,
            },
            _ = tokio::time::sleep_until(next_send) => {
                seen.count += 1.0;
                let p = ProgressNotificationParam::new(progress.token.clone(), seen.count).with_message(seen.message(started));
                if progress.peer.notify_progress(p).await.is_err() {
                    // The client is gone; the execution goes on, and so does the wait
                    // (the request is cancelled by the transport when it notices).
                    return done.await;
                }
                last_sent = Some(Instant::now());
                dirty = false;
            }
        }
    }
}

async fn next_event(sub: &mut Option<crate::events::Subscription>) -> Option<String> {
    match sub {
        // Subscribed with `since: None`: live events only, nothing to replay.
        Some(s) => s.rx.recv().await.map(|ev| ev.json.clone()),
        None => std::future::pending().await,
    }
}
