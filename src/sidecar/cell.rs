//! The running cell as a pure state machine. The kernel's messages, the
//! commands that touch the running execution and its deadlines go in;
//! effects come out, for the kernel actor ([`super::executor`]) to carry
//! out: store writes, events, kernel requests. No I/O and no clock of its
//! own (`now` is an argument), so scripted messages test it.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::outputs::{Change, Outputs};
use crate::jupyter::{Channel, Header, KernelMessage};
use crate::store::{EndReason, State};

/// After the reply, how long the kernel's idle status may take before the
/// end-of-output witness is asked for.
pub const IDLE_AFTER_REPLY: Duration = Duration::from_secs(2);
/// How long the end-of-output witness may take before the outputs are
/// recorded as unconfirmed (said in `truncated`, never silently).
pub const END_PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pending stream text this long goes out at once, whatever the window.
pub const STREAM_FLUSH_BYTES: usize = 64 * 1024;

/// The settings a cell follows.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Stream output published in one event per this window.
    pub coalesce_window: Duration,
    /// After an interrupt, how long the kernel gets before it is restarted.
    pub interrupt_grace: Duration,
    /// Most output bytes kept; the rest is counted.
    pub max_output_bytes: u64,
}

/// What the kernel actor does for the cell, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// The kernel began the execution: record `started_at`, announce `started`.
    Started,
    /// Announce output: the fields of an `output` event.
    Output(Value),
    /// Answer the kernel's `input_request`, whose header this is.
    AnswerInput(Header),
    /// Interrupt the kernel: the execution ran past its timeout.
    Interrupt,
    /// Ask the kernel for the end-of-output witness (a `kernel_info_request`
    /// on shell); then [`Cell::probing_end`] with its id, or
    /// [`Cell::end_unconfirmed`] when it could not be sent.
    ProbeEnd,
    /// The execution is over: commit this. The cell does nothing more.
    Finish(Finished),
    /// The kernel did not answer an interrupt: restart it.
    RestartKernel,
}

/// How an execution ended, to be committed.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub state: State,
    pub reason: Option<EndReason>,
    pub outputs: Outputs,
    pub execution_count: Option<i64>,
    /// The kernel's error (`ename`, `evalue`, `traceback`) when it replied with one.
    pub error: Option<Value>,
}

/// Stream text not yet published, coalesced.
#[derive(Debug)]
struct Pending {
    name: String,
    text: String,
    flush_at: Instant,
}

impl Pending {
    fn event(self) -> Effect {
        Effect::Output(json!({"output": {"output_type": "stream", "name": self.name, "text": self.text}}))
    }
}

/// The execution the kernel is working on.
#[derive(Debug)]
pub struct Cell {
    id: String,
    /// The `execute_request` whose replies and output are ours.
    msg_id: String,
    limits: Limits,
    started: bool,
    reply: Option<Value>,
    idle: bool,
    outputs: Outputs,
    pending_stream: Option<Pending>,
    /// When stream text of this execution was last published: text that
    /// comes after a quiet window goes out at once, a flood is coalesced.
    last_stream_flush: Option<Instant>,
    deadline: Option<Instant>,
    /// Why the kernel was interrupted, if it was: decides the final state.
    interrupted_for: Option<EndReason>,
    /// Recovered from a previous sidecar process: `probe` is a kernel_info
    /// request; if its reply comes before ours, the kernel no longer runs it.
    probe: Option<String>,
    /// After the reply, when to stop waiting for the idle status quietly.
    idle_deadline: Option<Instant>,
    /// The idle status is late: a kernel_info request sent after the reply.
    /// The kernel publishes on iopub in order, so its status for this
    /// request comes after every output of ours: the witness that all of
    /// them arrived. A timer alone once cut a 100 MB output short.
    end_probe: Option<String>,
    /// Finished: every input is ignored.
    done: bool,
}

impl Cell {
    /// An execution just sent as `msg_id`, with its timeout from `now`.
    pub fn dispatched(
        id: String,
        msg_id: String,
        timeout: Option<Duration>,
        now: Instant,
        limits: Limits,
    ) -> Cell {
        let mut cell = Cell::new(id, msg_id, limits);
        cell.deadline = timeout.map(|t| now + t);
        cell
    }

    /// An execution a previous sidecar sent as `msg_id`, followed without
    /// re-sending it: `probe` is the kernel_info request sent just now.
    pub fn recovered(id: String, msg_id: String, started: bool, probe: String, limits: Limits) -> Cell {
        let mut cell = Cell::new(id, msg_id, limits);
        cell.started = started;
        cell.probe = Some(probe);
        cell
    }

    fn new(id: String, msg_id: String, limits: Limits) -> Cell {
        Cell {
            id,
            msg_id,
            limits,
            started: false,
            reply: None,
            idle: false,
            outputs: Outputs::with_limit(limits.max_output_bytes),
            pending_stream: None,
            last_stream_flush: None,
            deadline: None,
            interrupted_for: None,
            probe: None,
            idle_deadline: None,
            end_probe: None,
            done: false,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// When [`Cell::on_deadline`] is next due: the timeout, the wait for
    /// the idle status, or the pending stream's flush.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        [
            self.deadline,
            self.idle_deadline,
            self.pending_stream.as_ref().map(|p| p.flush_at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// A rich output of ours, whose large values the actor moves into asset
    /// files before it hands the message on.
    pub fn is_rich_output(&self, m: &KernelMessage) -> bool {
        !self.done
            && m.channel == Channel::Iopub
            && m.msg.parent_msg_id() == Some(self.msg_id.as_str())
            && matches!(
                m.msg.msg_type(),
                "display_data" | "execute_result" | "update_display_data"
            )
    }

    /// One kernel message, on any channel.
    pub fn on_message(&mut self, m: &KernelMessage, now: Instant) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.done {
            return fx;
        }
        let msg_type = m.msg.msg_type();
        let parent = m.msg.parent_msg_id();
        // A recovered execution: the probe answered first, so the kernel no
        // longer runs ours.
        if self.probe.is_some()
            && parent == self.probe.as_deref()
            && msg_type == "kernel_info_reply"
            && self.reply.is_none()
        {
            return self.finish(State::Failed, Some(EndReason::Interrupted));
        }
        // The end-of-output witness: every iopub message of ours came before it.
        if m.channel == Channel::Iopub && self.end_probe.is_some() && parent == self.end_probe.as_deref() {
            return self.finish_from_reply();
        }
        if parent != Some(self.msg_id.as_str()) {
            return fx;
        }
        // Output still arriving after the reply: the idle status is behind it,
        // so the quiet deadline moves with every message (under load iopub
        // can lag the shell reply by seconds).
        if self.reply.is_some() {
            let quiet = if self.end_probe.is_some() {
                END_PROBE_TIMEOUT
            } else {
                IDLE_AFTER_REPLY
            };
            self.idle_deadline = Some(now + quiet);
        }
        match (m.channel, msg_type) {
            (Channel::Iopub, "status") => {
                match m.msg.content.get("execution_state").and_then(Value::as_str) {
                    Some("busy") => self.mark_started(&mut fx),
                    Some("idle") => self.idle = true,
                    _ => {}
                }
            }
            (Channel::Iopub, "execute_input") => self.mark_started(&mut fx),
            (Channel::Iopub, _) => {
                self.mark_started(&mut fx);
                self.on_output(msg_type, &m.msg.content, now, &mut fx);
            }
            (Channel::Shell, "execute_reply") => {
                self.reply = Some(m.msg.content.clone());
                self.idle_deadline = Some(now + IDLE_AFTER_REPLY);
            }
            (Channel::Stdin, "input_request") => fx.push(Effect::AnswerInput(m.msg.header.clone())),
            _ => {}
        }
        if self.reply.is_some() && (self.idle || self.probe.is_some()) {
            fx.extend(self.finish_from_reply());
        }
        fx
    }

    /// Whatever of [`Cell::next_deadline`] is due at `now`.
    pub fn on_deadline(&mut self, now: Instant) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.done {
            return fx;
        }
        if self.pending_stream.as_ref().is_some_and(|p| p.flush_at <= now) {
            self.flush_stream(now, &mut fx);
        }
        if self.idle_deadline.is_some_and(|d| d <= now) && self.reply.is_some() {
            if self.end_probe.is_none() {
                // The reply came but the idle status did not (yet): ask for
                // the witness that every output has arrived.
                fx.push(Effect::ProbeEnd);
            } else {
                fx.extend(self.end_unconfirmed());
            }
            return fx;
        }
        if self.deadline.is_none_or(|d| d > now) {
            return fx;
        }
        match self.interrupted_for {
            None => {
                self.interrupted_for = Some(EndReason::Timeout);
                self.deadline = Some(now + self.limits.interrupt_grace);
                fx.push(Effect::Interrupt);
            }
            // Interrupted and still not done: the kernel is stuck; restart it.
            Some(why) => {
                fx.extend(self.finish(state_for(why), Some(why)));
                fx.push(Effect::RestartKernel);
            }
        }
        fx
    }

    /// The end-of-output witness was sent as `msg_id` at `now`.
    pub fn probing_end(&mut self, msg_id: String, now: Instant) {
        tracing::debug!(execution = %self.id, "idle status late; probing for the end of output");
        self.end_probe = Some(msg_id);
        self.idle_deadline = Some(now + END_PROBE_TIMEOUT);
    }

    /// No witness either: finish, saying the outputs may be incomplete.
    pub fn end_unconfirmed(&mut self) -> Vec<Effect> {
        if self.done {
            return Vec::new();
        }
        tracing::warn!(execution = %self.id, "the kernel's idle status never came; outputs recorded as unconfirmed");
        self.outputs.mark_unconfirmed();
        self.finish_from_reply()
    }

    /// The kernel was interrupted on request: unless it was for a reason
    /// already (a timeout, a cancel), the execution ends `interrupted`.
    pub fn interrupted(&mut self) {
        self.interrupted_for.get_or_insert(EndReason::Interrupted);
    }

    /// The kernel was interrupted to cancel this execution at `now`; it gets
    /// the interrupt grace to stop.
    pub fn cancelling(&mut self, now: Instant) {
        self.interrupted_for = Some(EndReason::Cancelled);
        self.deadline = Some(now + self.limits.interrupt_grace);
    }

    /// Ends the execution whatever the kernel does (it died, was restarted,
    /// the sidecar stops), keeping the output so far.
    pub fn end(&mut self, state: State, reason: EndReason) -> Vec<Effect> {
        if self.done {
            return Vec::new();
        }
        self.finish(state, Some(reason))
    }

    fn mark_started(&mut self, fx: &mut Vec<Effect>) {
        if !self.started {
            self.started = true;
            fx.push(Effect::Started);
        }
    }

    fn on_output(&mut self, msg_type: &str, content: &Value, now: Instant, fx: &mut Vec<Effect>) {
        let window = self.limits.coalesce_window;
        match self.outputs.apply(msg_type, content) {
            Change::None => {}
            Change::Output(o) if o["output_type"] == "stream" => {
                let name = o["name"].as_str().unwrap_or("stdout").to_string();
                let text = o["text"].as_str().unwrap_or("");
                if self.pending_stream.as_ref().is_some_and(|p| p.name != name) {
                    self.flush_stream(now, fx);
                }
                let quiet = self.last_stream_flush.is_none_or(|t| now >= t + window);
                let flush_at = self.last_stream_flush.map_or(now, |t| t + window).max(now);
                let p = self.pending_stream.get_or_insert_with(|| Pending {
                    name,
                    text: String::new(),
                    flush_at,
                });
                p.text.push_str(text);
                if quiet || p.text.len() >= STREAM_FLUSH_BYTES {
                    self.flush_stream(now, fx);
                }
            }
            other => {
                self.flush_stream(now, fx);
                fx.push(Effect::Output(match other {
                    Change::Output(o) => json!({"output": o}),
                    Change::Update { display_id, output } => {
                        json!({"output": output, "update_display_id": display_id})
                    }
                    Change::Cleared => json!({"clear_output": true}),
                    Change::None => return,
                }));
            }
        }
    }

    fn flush_stream(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if let Some(p) = self.pending_stream.take() {
            self.last_stream_flush = Some(now);
            fx.push(p.event());
        }
    }

    /// The final state the reply (and any interrupt) decide.
    fn finish_from_reply(&mut self) -> Vec<Effect> {
        let status = self
            .reply
            .as_ref()
            .and_then(|r| r.get("status"))
            .and_then(Value::as_str)
            .unwrap_or("error");
        let (state, reason) = match (status, self.interrupted_for) {
            ("ok", _) => (State::Completed, None),
            (_, Some(why)) => (state_for(why), Some(why)),
            ("aborted", None) => (State::Failed, Some(EndReason::Aborted)),
            _ => (State::Failed, Some(EndReason::Error)),
        };
        self.finish(state, reason)
    }

    /// The pending stream text goes out, then the end.
    fn finish(&mut self, state: State, reason: Option<EndReason>) -> Vec<Effect> {
        self.done = true;
        let mut fx: Vec<Effect> = self
            .pending_stream
            .take()
            .map(Pending::event)
            .into_iter()
            .collect();
        let reply = self.reply.take().unwrap_or_default();
        let error = (reply.get("status").and_then(Value::as_str) == Some("error")).then(|| {
            json!({
                "ename": reply.get("ename").cloned().unwrap_or(json!("")),
                "evalue": reply.get("evalue").cloned().unwrap_or(json!("")),
                "traceback": reply.get("traceback").cloned().unwrap_or(json!([])),
            })
        });
        fx.push(Effect::Finish(Finished {
            state,
            reason,
            outputs: std::mem::take(&mut self.outputs),
            execution_count: reply.get("execution_count").and_then(Value::as_i64),
            error,
        }));
        fx
    }
}

/// A cancel ends `cancelled`; any other interrupt ends `failed`.
fn state_for(why: EndReason) -> State {
    if why == EndReason::Cancelled {
        State::Cancelled
    } else {
        State::Failed
    }
}
