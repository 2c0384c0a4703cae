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
/// After an interrupt, how long an idle status may wait for its reply
/// before the execution ends without one (the shell and iopub sockets are
/// not ordered against each other, so the reply may still be on its way).
pub const REPLY_AFTER_IDLE: Duration = Duration::from_millis(500);
/// An interrupt the kernel has not answered (no reply, not idle) is sent
/// again this often, at most [`INTERRUPT_RESENDS`] times: ipykernel swallows
/// one that lands while it prepares the cell, after `execute_input`.
pub const INTERRUPT_RESEND: Duration = Duration::from_millis(500);
pub const INTERRUPT_RESENDS: u8 = 3;
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
    /// Interrupt the kernel: the execution ran past its timeout, or an
    /// interrupt held until the code ran is due.
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
    /// The kernel runs our code (it announced `execute_input`, or output
    /// came): an interrupt now reaches the code.
    running_code: bool,
    /// An interrupt asked for before the code ran, sent once it does.
    interrupt_held: bool,
    /// Interrupted, and the kernel went idle with no reply: ipykernel drops
    /// the reply when the interrupt lands between `execute_input` and the
    /// code (its handler catches the KeyboardInterrupt). Ends it then.
    reply_deadline: Option<Instant>,
    /// When to send an unanswered interrupt again, and how many more times.
    resend_at: Option<Instant>,
    resends_left: u8,
    /// Finished: every input is ignored.
    done: bool,
    /// A Jupyter client sent it with `allow_stdin` and answers the kernel's
    /// `input_request`s itself; the sidecar does not.
    client_answers_input: bool,
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
        // Whatever it does now, it may be running the code already.
        cell.running_code = started;
        cell.probe = Some(probe);
        cell
    }

    /// The client that sent it answers its `input_request`s.
    pub fn with_client_input(mut self, client_answers: bool) -> Cell {
        self.client_answers_input = client_answers;
        self
    }

    fn new(id: String, msg_id: String, limits: Limits) -> Cell {
        Cell {
            client_answers_input: false,
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
            running_code: false,
            interrupt_held: false,
            reply_deadline: None,
            resend_at: None,
            resends_left: 0,
            done: false,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The `msg_id` of the execute_request the kernel answers.
    pub fn msg_id(&self) -> &str {
        &self.msg_id
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
            self.reply_deadline,
            self.resend_at,
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
                    Some("idle") => {
                        self.idle = true;
                        self.resend_at = None;
                        if self.reply.is_none() && self.interrupted_for.is_some() {
                            self.reply_deadline = Some(now + REPLY_AFTER_IDLE);
                        }
                    }
                    _ => {}
                }
            }
            (Channel::Iopub, "execute_input") => {
                self.mark_started(&mut fx);
                self.runs_code(now, &mut fx);
            }
            (Channel::Iopub, _) => {
                self.mark_started(&mut fx);
                self.runs_code(now, &mut fx);
                self.on_output(msg_type, &m.msg.content, now, &mut fx);
            }
            (Channel::Shell, "execute_reply") => {
                // The code is over: a held or unanswered interrupt has
                // nothing left to stop.
                self.interrupt_held = false;
                self.resend_at = None;
                self.reply = Some(m.msg.content.clone());
                self.idle_deadline = Some(now + IDLE_AFTER_REPLY);
            }
            (Channel::Stdin, "input_request") if !self.client_answers_input => {
                fx.push(Effect::AnswerInput(m.msg.header.clone()))
            }
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
        if let (Some(why), true, None) = (
            self.interrupted_for,
            self.reply_deadline.is_some_and(|d| d <= now),
            &self.reply,
        ) {
            // Interrupted, idle, and no reply came: nothing runs any more.
            fx.extend(self.finish(state_for(why), Some(why)));
            return fx;
        }
        if self.resend_at.is_some_and(|at| at <= now) {
            self.resends_left = self.resends_left.saturating_sub(1);
            self.resend_at = (self.resends_left > 0).then(|| now + INTERRUPT_RESEND);
            fx.push(Effect::Interrupt);
        }
        if self.deadline.is_none_or(|d| d > now) {
            return fx;
        }
        match self.interrupted_for {
            None => {
                self.interrupted_for = Some(EndReason::Timeout);
                self.deadline = Some(now + self.limits.interrupt_grace);
                self.arm_resend(now);
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

    /// Asked to interrupt this execution: whether to send the interrupt
    /// now. Not before the kernel runs the code: a kernel says `busy` before
    /// it can take an interrupt (ipykernel installs its SIGINT handler after
    /// publishing busy and before `execute_input`), and one sent in between
    /// is lost. Held until then, it goes out as [`Effect::Interrupt`].
    pub fn interrupt_now(&mut self, now: Instant) -> bool {
        if self.running_code {
            self.arm_resend(now);
            return true;
        }
        self.interrupt_held = true;
        false
    }

    fn runs_code(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        self.running_code = true;
        if std::mem::take(&mut self.interrupt_held) {
            self.arm_resend(now);
            fx.push(Effect::Interrupt);
        }
    }

    /// An interrupt goes out now: until the kernel answers, it is sent again.
    fn arm_resend(&mut self, now: Instant) {
        self.resend_at = Some(now + INTERRUPT_RESEND);
        self.resends_left = INTERRUPT_RESENDS;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jupyter::Message;

    /// The `execute_request` the cell follows.
    const OURS: &str = "request-1";
    const WINDOW: Duration = Duration::from_millis(5);
    const GRACE: Duration = Duration::from_secs(5);

    fn limits() -> Limits {
        Limits {
            coalesce_window: WINDOW,
            interrupt_grace: GRACE,
            max_output_bytes: 1 << 20,
        }
    }

    fn cell(timeout: Option<Duration>, now: Instant) -> Cell {
        Cell::dispatched("exec-1".into(), OURS.into(), timeout, now, limits())
    }

    fn msg(channel: Channel, msg_type: &str, parent: &str, content: Value) -> KernelMessage {
        let mut msg = Message::new(msg_type, content, "kernel-session");
        msg.parent_header = json!({"msg_id": parent});
        KernelMessage { channel, msg }
    }

    fn status(parent: &str, state: &str) -> KernelMessage {
        msg(
            Channel::Iopub,
            "status",
            parent,
            json!({"execution_state": state}),
        )
    }

    fn stream(name: &str, text: &str) -> KernelMessage {
        msg(
            Channel::Iopub,
            "stream",
            OURS,
            json!({"name": name, "text": text}),
        )
    }

    fn reply(content: Value) -> KernelMessage {
        msg(Channel::Shell, "execute_reply", OURS, content)
    }

    fn stream_event(name: &str, text: &str) -> Effect {
        Effect::Output(json!({"output": {"output_type": "stream", "name": name, "text": text}}))
    }

    /// The one effect of `fx`, which must be the end.
    fn finished(mut fx: Vec<Effect>) -> Finished {
        assert_eq!(fx.len(), 1, "{fx:?}");
        match fx.remove(0) {
            Effect::Finish(f) => f,
            other => panic!("not the end: {other:?}"),
        }
    }

    #[test]
    fn a_normal_execution_starts_announces_output_and_completes_on_idle() {
        let t0 = Instant::now();
        let mut c = cell(None, t0);
        assert_eq!(c.on_message(&status(OURS, "busy"), t0), vec![Effect::Started]);
        let input = msg(
            Channel::Iopub,
            "execute_input",
            OURS,
            json!({"code": "print(1); 2"}),
        );
        assert_eq!(c.on_message(&input, t0), vec![]);
        assert_eq!(
            c.on_message(&stream("stdout", "1\n"), t0),
            vec![stream_event("stdout", "1\n")]
        );
        let result = msg(
            Channel::Iopub,
            "execute_result",
            OURS,
            json!({"execution_count": 3, "data": {"text/plain": "2"}, "metadata": {}}),
        );
        let result_event = json!({"output": {"output_type": "execute_result", "execution_count": 3,
            "data": {"text/plain": "2"}, "metadata": {}}});
        assert_eq!(c.on_message(&result, t0), vec![Effect::Output(result_event)]);
        // The reply alone does not end it: output may still be on its way.
        assert_eq!(
            c.on_message(&reply(json!({"status": "ok", "execution_count": 3})), t0),
            vec![]
        );
        assert_eq!(c.next_deadline(), Some(t0 + IDLE_AFTER_REPLY));
        let end = finished(c.on_message(&status(OURS, "idle"), t0));
        assert_eq!(
            (end.state, end.reason, end.execution_count, end.error),
            (State::Completed, None, Some(3), None)
        );
        let kinds: Vec<_> = end
            .outputs
            .as_slice()
            .iter()
            .map(|o| o["output_type"].clone())
            .collect();
        assert_eq!(kinds, vec![json!("stream"), json!("execute_result")]);
        assert_eq!(end.outputs.truncation(), None);
        // Over: nothing more comes out of it.
        assert_eq!(c.on_message(&status(OURS, "idle"), t0), vec![]);
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn an_error_reply_fails_with_reason_error_and_the_kernels_error() {
        let t0 = Instant::now();
        let mut c = cell(None, t0);
        c.on_message(&status(OURS, "busy"), t0);
        let error = json!({"status": "error", "execution_count": 1, "ename": "ZeroDivisionError",
            "evalue": "division by zero", "traceback": ["tb"]});
        assert_eq!(c.on_message(&reply(error), t0), vec![]);
        let end = finished(c.on_message(&status(OURS, "idle"), t0));
        assert_eq!((end.state, end.reason), (State::Failed, Some(EndReason::Error)));
        assert_eq!(
            end.error,
            Some(json!({"ename": "ZeroDivisionError", "evalue": "division by zero", "traceback": ["tb"]}))
        );
    }

    #[test]
    fn an_aborted_reply_fails_with_reason_aborted() {
        let t0 = Instant::now();
        let mut c = cell(None, t0);
        c.on_message(&reply(json!({"status": "aborted"})), t0);
        let end = finished(c.on_message(&status(OURS, "idle"), t0));
        assert_eq!(
            (end.state, end.reason, end.error),
            (State::Failed, Some(EndReason::Aborted), None)
        );
    }

    #[test]
    fn past_its_timeout_the_kernel_is_interrupted_and_after_the_grace_restarted() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(10);
        let mut c = cell(Some(timeout), t0);
        c.on_message(&status(OURS, "busy"), t0);
        assert_eq!(c.next_deadline(), Some(t0 + timeout));
        assert_eq!(c.on_deadline(t0 + timeout / 2), vec![]);
        assert_eq!(c.on_deadline(t0 + timeout), vec![Effect::Interrupt]);
        // Unanswered, the interrupt goes out again a few times.
        let mut at = t0 + timeout;
        for _ in 0..INTERRUPT_RESENDS {
            at += INTERRUPT_RESEND;
            assert_eq!(c.next_deadline(), Some(at));
            assert_eq!(c.on_deadline(at), vec![Effect::Interrupt]);
        }
        assert_eq!(c.next_deadline(), Some(t0 + timeout + GRACE));
        let mut fx = c.on_deadline(t0 + timeout + GRACE);
        assert_eq!(fx.pop(), Some(Effect::RestartKernel));
        let end = finished(fx);
        assert_eq!((end.state, end.reason), (State::Failed, Some(EndReason::Timeout)));
    }

    #[test]
    fn a_timed_out_execution_that_the_interrupt_stops_fails_with_timeout() {
        let t0 = Instant::now();
        let mut c = cell(Some(Duration::from_secs(1)), t0);
        c.on_message(&status(OURS, "busy"), t0);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(c.on_deadline(t1), vec![Effect::Interrupt]);
        let interrupted =
            json!({"status": "error", "ename": "KeyboardInterrupt", "evalue": "", "traceback": []});
        c.on_message(&reply(interrupted), t1);
        let end = finished(c.on_message(&status(OURS, "idle"), t1));
        assert_eq!((end.state, end.reason), (State::Failed, Some(EndReason::Timeout)));
        assert_eq!(
            end.error.as_ref().map(|e| e["ename"].clone()),
            Some(json!("KeyboardInterrupt"))
        );
    }

    #[test]
    fn a_cancelled_running_execution_ends_cancelled_even_when_the_kernel_is_stuck() {
        let t0 = Instant::now();
        let mut stops = cell(None, t0);
        stops.cancelling(t0);
        stops.on_message(
            &reply(json!({"status": "error", "ename": "KeyboardInterrupt"})),
            t0,
        );
        let end = finished(stops.on_message(&status(OURS, "idle"), t0));
        assert_eq!(
            (end.state, end.reason),
            (State::Cancelled, Some(EndReason::Cancelled))
        );

        let mut stuck = cell(None, t0);
        stuck.cancelling(t0);
        assert_eq!(stuck.next_deadline(), Some(t0 + GRACE));
        let mut fx = stuck.on_deadline(t0 + GRACE);
        assert_eq!(fx.pop(), Some(Effect::RestartKernel));
        let end = finished(fx);
        assert_eq!(
            (end.state, end.reason),
            (State::Cancelled, Some(EndReason::Cancelled))
        );
    }

    #[test]
    fn an_interrupt_request_ends_it_interrupted_but_does_not_override_a_timeout() {
        let t0 = Instant::now();
        let mut c = cell(None, t0);
        c.interrupted();
        c.on_message(&reply(json!({"status": "error"})), t0);
        let end = finished(c.on_message(&status(OURS, "idle"), t0));
        assert_eq!(end.reason, Some(EndReason::Interrupted));

        let mut timed_out = cell(Some(Duration::ZERO), t0);
        assert_eq!(timed_out.on_deadline(t0), vec![Effect::Interrupt]);
        timed_out.interrupted();
        timed_out.on_message(&reply(json!({"status": "error"})), t0);
        let end = finished(timed_out.on_message(&status(OURS, "idle"), t0));
        assert_eq!(end.reason, Some(EndReason::Timeout));
    }

    #[test]
    fn kernel_death_mid_cell_ends_it_with_kernel_died_keeping_its_output() {
        let t0 = Instant::now();
        let mut c = cell(None, t0);
        c.on_message(&status(OURS, "busy"), t0);
        c.on_message(&stream("stdout", "a"), t0);
        // Held for the window, then announced before the end.
        assert_eq!(c.on_message(&stream("stdout", "b"), t0), vec![]);
        let mut fx = c.end(State::Failed, EndReason::KernelDied);
        assert_eq!(fx.remove(0), stream_event("stdout", "b"));
        let end = finished(fx);
        assert_eq!(
            (end.state, end.reason, end.error),
            (State::Failed, Some(EndReason::KernelDied), None)
        );
        assert_eq!(end.outputs.as_slice()[0]["text"], json!("ab"));
        assert_eq!(c.end(State::Failed, EndReason::KernelDied), vec![]);
    }

    #[test]
    fn an_interrupt_before_the_kernel_runs_the_code_is_held_until_execute_input() {
        let t0 = Instant::now();
        let mut c = cell(None, t0);
        assert_eq!(c.on_message(&status(OURS, "busy"), t0), vec![Effect::Started]);
        // Busy, but the code has not begun: sending it now would be lost.
        assert!(!c.interrupt_now(t0));
        c.interrupted();
        let input = msg(
            Channel::Iopub,
            "execute_input",
            OURS,
            json!({"code": "sleep(100)"}),
        );
        assert_eq!(c.on_message(&input, t0), vec![Effect::Interrupt]);
        // Once the code runs, an interrupt goes at once and nothing is held;
        // output is no answer to it, so it is sent again until one comes.
        assert!(c.interrupt_now(t0));
        assert_eq!(c.on_deadline(t0 + INTERRUPT_RESEND), vec![Effect::Interrupt]);
        assert_eq!(
            c.on_message(&stream("stdout", "x"), t0),
            vec![stream_event("stdout", "x")]
        );
        c.on_message(
            &reply(json!({"status": "error", "ename": "KeyboardInterrupt"})),
            t0,
        );
        let end = finished(c.on_message(&status(OURS, "idle"), t0));
        assert_eq!(
            (end.state, end.reason),
            (State::Failed, Some(EndReason::Interrupted))
        );
    }

    #[test]
    fn interrupted_and_idle_with_no_reply_ends_interrupted_after_a_short_wait() {
        let t0 = Instant::now();
        let mut c = cell(None, t0);
        c.on_message(&status(OURS, "busy"), t0);
        let input = msg(
            Channel::Iopub,
            "execute_input",
            OURS,
            json!({"code": "sleep(100)"}),
        );
        c.on_message(&input, t0);
        assert!(c.interrupt_now(t0));
        c.interrupted();
        assert_eq!(c.on_message(&status(OURS, "idle"), t0), vec![]);
        assert_eq!(c.next_deadline(), Some(t0 + REPLY_AFTER_IDLE));
        assert_eq!(c.on_deadline(t0 + REPLY_AFTER_IDLE / 2), vec![]);
        let end = finished(c.on_deadline(t0 + REPLY_AFTER_IDLE));
        assert_eq!(
            (end.state, end.reason),
            (State::Failed, Some(EndReason::Interrupted))
        );
    }

    #[test]
    fn idle_with_no_reply_and_no_interrupt_keeps_waiting_for_the_reply() {
        let t0 = Instant::now();
        let mut c = cell(None, t0);
        c.on_message(&status(OURS, "busy"), t0);
        assert_eq!(c.on_message(&status(OURS, "idle"), t0), vec![]);
        assert_eq!(c.next_deadline(), None);
        let end = finished(c.on_message(&reply(json!({"status": "ok"})), t0));
        assert_eq!(end.state, State::Completed);
    }

    #[test]
    fn a_held_interrupt_is_dropped_when_the_code_ends_without_running() {
        let t0 = Instant::now();
        let mut c = cell(None, t0);
        c.on_message(&status(OURS, "busy"), t0);
        assert!(!c.interrupt_now(t0));
        c.on_message(&reply(json!({"status": "ok"})), t0);
        // A late execute_input (never before the reply in practice) sends nothing.
        let input = msg(Channel::Iopub, "execute_input", OURS, json!({"code": "1"}));
        assert_eq!(c.on_message(&input, t0), vec![]);
    }

    #[test]
    fn messages_of_other_requests_are_ignored() {
        let t0 = Instant::now();
        let mut c = cell(None, t0);
        let other = "someone-else";
        assert_eq!(c.on_message(&status(other, "busy"), t0), vec![]);
        let out = msg(
            Channel::Iopub,
            "stream",
            other,
            json!({"name": "stdout", "text": "x"}),
        );
        assert_eq!(c.on_message(&out, t0), vec![]);
        let theirs = msg(Channel::Shell, "execute_reply", other, json!({"status": "ok"}));
        assert_eq!(c.on_message(&theirs, t0), vec![]);
        assert_eq!(c.on_message(&status(other, "idle"), t0), vec![]);
        let mut orphan = status("", "idle");
        orphan.msg.parent_header = json!({});
        assert_eq!(c.on_message(&orphan, t0), vec![]);
        assert_eq!(c.next_deadline(), None);
        // Still ours to finish, with none of their output.
        c.on_message(&reply(json!({"status": "ok"})), t0);
        let end = finished(c.on_message(&status(OURS, "idle"), t0));
        assert!(end.outputs.as_slice().is_empty());
    }

    #[test]
    fn stream_text_goes_out_at_once_after_a_quiet_window_and_coalesced_in_a_flood() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = cell(None, t0);
        assert_eq!(
            c.on_message(&stream("stdout", "a"), t0),
            vec![Effect::Started, stream_event("stdout", "a")]
        );
        assert_eq!(c.on_message(&stream("stdout", "b"), t0 + ms(1)), vec![]);
        assert_eq!(c.on_message(&stream("stdout", "c"), t0 + ms(2)), vec![]);
        assert_eq!(c.next_deadline(), Some(t0 + WINDOW));
        assert_eq!(c.on_deadline(t0 + ms(4)), vec![]);
        assert_eq!(c.on_deadline(t0 + WINDOW), vec![stream_event("stdout", "bc")]);
        assert_eq!(c.next_deadline(), None);
        // Another name: what is pending goes out first, the new text waits
        // for the window from that flush.
        let t1 = t0 + WINDOW + ms(1);
        assert_eq!(c.on_message(&stream("stdout", "d"), t1), vec![]);
        assert_eq!(
            c.on_message(&stream("stderr", "e"), t1),
            vec![stream_event("stdout", "d")]
        );
        assert_eq!(c.next_deadline(), Some(t1 + WINDOW));
        // Any other output flushes the stream before it.
        let display = msg(
            Channel::Iopub,
            "display_data",
            OURS,
            json!({"data": {"text/plain": "x"}, "metadata": {}}),
        );
        let fx = c.on_message(&display, t1 + ms(1));
        assert_eq!(fx.len(), 2, "{fx:?}");
        assert_eq!(fx[0], stream_event("stderr", "e"));
        // A flood past the byte threshold goes out without waiting.
        let big = "x".repeat(STREAM_FLUSH_BYTES);
        assert_eq!(
            c.on_message(&stream("stdout", &big), t1 + ms(2)),
            vec![stream_event("stdout", &big)]
        );
        c.on_message(&reply(json!({"status": "ok"})), t1 + ms(2));
        let end = finished(c.on_message(&status(OURS, "idle"), t1 + ms(2)));
        let texts: Vec<_> = end.outputs.as_slice().iter().map(|o| o["text"].clone()).collect();
        assert_eq!(texts, vec![json!("abcd"), json!("e"), Value::Null, json!(big)]);
    }

    #[test]
    fn a_late_idle_status_is_waited_for_through_the_end_of_output_witness() {
        let t0 = Instant::now();
        let mut c = cell(None, t0);
        c.on_message(&status(OURS, "busy"), t0);
        c.on_message(&reply(json!({"status": "ok", "execution_count": 1})), t0);
        // Output after the reply moves the quiet deadline.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            c.on_message(&stream("stdout", "late"), t1),
            vec![stream_event("stdout", "late")]
        );
        assert_eq!(c.next_deadline(), Some(t1 + IDLE_AFTER_REPLY));
        assert_eq!(c.on_deadline(t1 + IDLE_AFTER_REPLY), vec![Effect::ProbeEnd]);
        let t2 = t1 + IDLE_AFTER_REPLY;
        c.probing_end("witness".into(), t2);
        assert_eq!(c.next_deadline(), Some(t2 + END_PROBE_TIMEOUT));
        // The witness's own reply on shell is not the witness; its iopub status is.
        let info = msg(
            Channel::Shell,
            "kernel_info_reply",
            "witness",
            json!({"status": "ok"}),
        );
        assert_eq!(c.on_message(&info, t2), vec![]);
        let end = finished(c.on_message(&status("witness", "busy"), t2));
        assert_eq!((end.state, end.execution_count), (State::Completed, Some(1)));
        assert_eq!(end.outputs.truncation(), None);
        assert_eq!(end.outputs.as_slice().len(), 1);
    }

    #[test]
    fn without_the_witness_the_outputs_are_recorded_as_unconfirmed() {
        let t0 = Instant::now();
        let mut c = cell(None, t0);
        c.on_message(&reply(json!({"status": "ok"})), t0);
        let t1 = t0 + IDLE_AFTER_REPLY;
        assert_eq!(c.on_deadline(t1), vec![Effect::ProbeEnd]);
        c.probing_end("witness".into(), t1);
        assert_eq!(c.on_deadline(t1 + END_PROBE_TIMEOUT / 2), vec![]);
        let end = finished(c.on_deadline(t1 + END_PROBE_TIMEOUT));
        assert_eq!(end.state, State::Completed);
        let why = end.outputs.truncation().map(|t| t.reason);
        assert_eq!(why.as_deref(), Some("end_of_output_unconfirmed"));

        // The witness could not even be sent: the same, at once.
        let mut unsent = cell(None, t0);
        unsent.on_message(&reply(json!({"status": "ok"})), t0);
        assert_eq!(unsent.on_deadline(t1), vec![Effect::ProbeEnd]);
        let end = finished(unsent.end_unconfirmed());
        assert!(end.outputs.truncation().is_some());
    }

    #[test]
    fn a_recovered_execution_ends_interrupted_when_the_probe_answers_first() {
        let t0 = Instant::now();
        let mut gone = Cell::recovered("exec-1".into(), OURS.into(), true, "probe".into(), limits());
        assert_eq!(gone.next_deadline(), None);
        let info = msg(
            Channel::Shell,
            "kernel_info_reply",
            "probe",
            json!({"status": "ok"}),
        );
        let end = finished(gone.on_message(&info, t0));
        assert_eq!(
            (end.state, end.reason),
            (State::Failed, Some(EndReason::Interrupted))
        );

        // Still running in the kernel: its reply completes it, without the
        // idle status, and it was started already.
        let mut alive = Cell::recovered("exec-1".into(), OURS.into(), true, "probe".into(), limits());
        assert_eq!(alive.on_message(&status(OURS, "busy"), t0), vec![]);
        let end = finished(alive.on_message(&reply(json!({"status": "ok", "execution_count": 7})), t0));
        assert_eq!((end.state, end.execution_count), (State::Completed, Some(7)));
        assert_eq!(alive.on_message(&info, t0), vec![]);
    }

    #[test]
    fn an_input_request_of_ours_is_answered_and_rich_output_is_recognised() {
        let t0 = Instant::now();
        let mut c = cell(None, t0);
        let ask = msg(Channel::Stdin, "input_request", OURS, json!({"prompt": "? "}));
        assert_eq!(
            c.on_message(&ask, t0),
            vec![Effect::AnswerInput(ask.msg.header.clone())]
        );
        let display = msg(Channel::Iopub, "display_data", OURS, json!({"data": {}}));
        assert!(c.is_rich_output(&display));
        assert!(!c.is_rich_output(&stream("stdout", "x")));
        let theirs = msg(
            Channel::Iopub,
            "display_data",
            "someone-else",
            json!({"data": {}}),
        );
        assert!(!c.is_rich_output(&theirs));
    }

    #[test]
    fn an_input_request_is_left_to_a_client_that_answers_it() {
        let t0 = Instant::now();
        let mut c = cell(None, t0).with_client_input(true);
        let ask = msg(Channel::Stdin, "input_request", OURS, json!({"prompt": "? "}));
        assert_eq!(c.on_message(&ask, t0), vec![]);
    }
}
