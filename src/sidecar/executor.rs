//! The kernel actor: the one task that talks to the kernel. It runs queued
//! executions one at a time in submission order, follows the kernel's replies
//! and iopub output, supervises the kernel (heartbeat, death, restart) and
//! answers control commands. It waits on events only: the work notification,
//! kernel messages, commands, and deadlines it set itself.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, info_span, warn, Instrument};

use super::completion::Completions;
use super::control::{CancelOutcome, Command, ControlError, KernelState, KernelStatus};
use super::outputs::{Change, Outputs};
use super::{Activity, Config, KernelSource, OutputStats};
use crate::events::Bus;
use crate::jupyter::client::Heartbeat;
use crate::jupyter::{Channel, ConnectionInfo, KernelClient, KernelMessage};
use crate::kernel::process::KernelProcess;
use crate::store::{EndReason, Execution, FinalRecord, Reader, State, Writer};

/// The settings of the sidecar the kernel actor reads.
#[derive(Debug, Clone)]
pub struct Settings {
    pub kernel: KernelSource,
    pub data_dir: PathBuf,
    pub kernel_start_timeout: Duration,
    pub shutdown_grace: Duration,
    pub interrupt_grace: Duration,
    pub retention: Duration,
    pub input_reply: Option<String>,
    pub coalesce_window: Duration,
    pub asset_threshold: usize,
    pub max_output_bytes: u64,
}

impl From<&Config> for Settings {
    fn from(cfg: &Config) -> Self {
        Settings {
            kernel: cfg.kernel.clone(),
            data_dir: cfg.data_dir.clone(),
            kernel_start_timeout: cfg.kernel_start_timeout,
            shutdown_grace: cfg.shutdown_grace,
            interrupt_grace: cfg.interrupt_grace,
            retention: cfg.retention,
            input_reply: cfg.input_reply.clone(),
            coalesce_window: cfg.coalesce_window,
            asset_threshold: cfg.asset_threshold,
            max_output_bytes: cfg.max_output_bytes,
        }
    }
}

/// What the kernel actor uses of the sidecar, and nothing more. It holds no
/// sender of its own command channel: when the last handle that can send
/// (the service's) goes, the channel closes and the actor stops.
pub struct Deps {
    pub cfg: Settings,
    pub writer: Writer,
    pub reader: Reader,
    pub bus: Arc<Bus>,
    /// Waiters woken after a final state is committed.
    pub completions: Arc<Completions>,
    /// Notified after each enqueue commit.
    pub work: Arc<Notify>,
    pub activity: Arc<Activity>,
    pub output_stats: Arc<OutputStats>,
    /// Kernel frames dropped for bad signatures or framing.
    pub dropped: Arc<AtomicU64>,
    /// The workspace, where large outputs become asset files.
    pub root: Arc<crate::confined::Root>,
}

/// The execution the kernel is working on.
struct Current {
    exec: Execution,
    msg_id: String,
    started: bool,
    reply: Option<Value>,
    idle: bool,
    outputs: Outputs,
    /// Stream text not yet published, coalesced: (name, text, flush at).
    pending_stream: Option<(String, String, Instant)>,
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
}

struct Conn {
    client: KernelClient,
    rx: mpsc::Receiver<KernelMessage>,
    heartbeat: JoinHandle<()>,
    dead: mpsc::Receiver<()>,
    /// The kernel's end of the connection closed.
    gone: watch::Receiver<bool>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

pub struct Executor {
    deps: Deps,
    commands: mpsc::Receiver<Command>,
    /// False once every sender has gone: `recv` would answer `None` at once.
    commands_open: bool,
    status: watch::Sender<KernelStatus>,
    ready: watch::Sender<bool>,
    info: ConnectionInfo,
    identity: Vec<u8>,
    session: String,
    process: Option<KernelProcess>,
    conn: Option<Conn>,
    current: Option<Current>,
    shutdown: Option<(Instant, Vec<oneshot::Sender<()>>)>,
    last_prune: Option<Instant>,
}

const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
const IDLE_AFTER_REPLY: Duration = Duration::from_secs(2);
/// How long the end-of-output witness may take before the outputs are
/// recorded as unconfirmed (said in `truncated`, never silently).
const END_PROBE_TIMEOUT: Duration = Duration::from_secs(30);
const STREAM_FLUSH_BYTES: usize = 64 * 1024;
/// How long a pod's kernel may take to exit after a shutdown request.
const KERNEL_EXIT_WAIT: Duration = Duration::from_secs(10);

impl Executor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        deps: Deps,
        commands: mpsc::Receiver<Command>,
        status: watch::Sender<KernelStatus>,
        ready: watch::Sender<bool>,
        info: ConnectionInfo,
        identity: Vec<u8>,
        process: Option<KernelProcess>,
    ) -> Self {
        let session = hex::encode(&identity);
        Executor {
            deps,
            commands,
            commands_open: true,
            status,
            ready,
            info,
            identity,
            session,
            process,
            conn: None,
            current: None,
            shutdown: None,
            last_prune: None,
        }
    }

    fn set_kernel(&self, state: KernelState) {
        let changed = self.status.send_if_modified(|s| {
            let changed = s.state != state;
            s.state = state;
            s.pid = self.process.as_ref().map(|p| p.pid);
            changed
        });
        if changed && !matches!(state, KernelState::Busy | KernelState::Idle) {
            let restarts = self.status.borrow().restarts;
            self.deps
                .bus
                .publish("kernel", None, json!({"state": state, "restarts": restarts}));
        }
    }

    /// Connects to the kernel and waits until it answers kernel_info and its
    /// iopub messages reach us (so no output of the first execution is lost).
    /// The kernel state says why it is not connected (starting, restarting,
    /// dead) until this succeeds; then it is idle.
    async fn connect(&mut self) -> Result<(), String> {
        self.conn = None;
        let deadline = Instant::now() + self.deps.cfg.kernel_start_timeout;
        let mut hb = Heartbeat::new(&self.info);
        while !hb.ping(Duration::from_secs(1)).await {
            if Instant::now() > deadline {
                return Err("the kernel's heartbeat never answered".into());
            }
            if let Some(p) = &self.process {
                if *p.exited.borrow() {
                    return Err("the kernel process exited at start; see kernel.log in the data dir".into());
                }
            }
        }
        let (tx, mut rx) = mpsc::channel(4096);
        let client = KernelClient::connect(
            &self.info,
            &self.identity,
            &self.session,
            tx,
            self.deps.dropped.clone(),
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut info_content = None;
        'attempts: for _ in 0..20 {
            let req = client.request("kernel_info_request", json!({}));
            client
                .send(Channel::Shell, &req)
                .await
                .map_err(|e| e.to_string())?;
            let until = Instant::now() + Duration::from_millis(1000);
            let mut iopub_seen = false;
            while let Ok(Some(m)) = tokio::time::timeout_at(until, rx.recv()).await {
                if m.msg.parent_msg_id() != Some(req.header.msg_id.as_str()) {
                    continue;
                }
                match m.channel {
                    Channel::Iopub => iopub_seen = true,
                    Channel::Shell if m.msg.msg_type() == "kernel_info_reply" => {
                        info_content = Some(m.msg.content.clone())
                    }
                    _ => {}
                }
                if iopub_seen && info_content.is_some() {
                    break 'attempts;
                }
            }
            if Instant::now() > deadline {
                break;
            }
        }
        let Some(info) = info_content else {
            return Err("the kernel did not answer kernel_info".into());
        };
        let (dead_tx, dead) = mpsc::channel(1);
        let hb_info = self.info.clone();
        let heartbeat = tokio::spawn(async move {
            let mut hb = Heartbeat::new(&hb_info);
            loop {
                tokio::time::sleep(HEARTBEAT_EVERY).await;
                if !hb.ping(HEARTBEAT_TIMEOUT).await && !hb.ping(Duration::from_millis(500)).await {
                    let _ = dead_tx.send(()).await;
                    return;
                }
            }
        });
        self.status.send_modify(|s| {
            s.info = info;
        });
        self.conn = Some(Conn {
            gone: client.disconnected(),
            client,
            rx,
            heartbeat,
            dead,
        });
        self.set_kernel(KernelState::Idle);
        Ok(())
    }

    /// Starts a new kernel process (local mode), or in a pod asks the kernel
    /// to shut down so its container restarts; then reconnects.
    async fn restart_kernel(&mut self, reason: &str) -> Result<(), String> {
        info!(reason, "restarting the kernel");
        self.set_kernel(KernelState::Restarting);
        match &self.deps.cfg.kernel {
            KernelSource::Spawn(launcher) => {
                if let Some(mut p) = self.process.take() {
                    p.kill().await;
                }
                self.conn = None;
                self.process = Some(
                    launcher
                        .spawn()
                        .map_err(|e| format!("starting the kernel: {e}"))?,
                );
            }
            KernelSource::External => {
                if let Some(mut c) = self.conn.take() {
                    let req = c.client.request("shutdown_request", json!({"restart": true}));
                    if c.client.send(Channel::Control, &req).await.is_ok() {
                        // Connect again only once the old kernel has gone, so
                        // the new connection reaches the one that replaces it.
                        let gone = tokio::time::timeout(KERNEL_EXIT_WAIT, disconnected(&mut c.gone)).await;
                        if gone.is_err() {
                            warn!("the kernel did not exit after a shutdown request");
                        }
                    }
                }
            }
        }
        self.status.send_modify(|s| s.restarts += 1);
        let mut result = self.connect().await;
        // A kernel that cannot come back in local mode gets one more fresh start.
        if result.is_err() {
            if let KernelSource::Spawn(launcher) = &self.deps.cfg.kernel {
                if let Some(mut p) = self.process.take() {
                    p.kill().await;
                }
                self.process = Some(
                    launcher
                        .spawn()
                        .map_err(|e| format!("starting the kernel: {e}"))?,
                );
                result = self.connect().await;
            }
        }
        if let Err(e) = &result {
            warn!(error = %e, "the kernel did not come back");
            self.set_kernel(KernelState::Dead);
        }
        result
    }

    async fn interrupt_kernel(&mut self) -> Result<(), String> {
        if let (KernelSource::Spawn(_), Some(p)) = (&self.deps.cfg.kernel, &self.process) {
            let mode = self
                .status
                .borrow()
                .info
                .get("interrupt_mode")
                .and_then(Value::as_str)
                .map(String::from);
            if mode.as_deref() != Some("message") && p.signal(nix::sys::signal::Signal::SIGINT) {
                return Ok(());
            }
        }
        let Some(c) = &self.conn else {
            return Err("the kernel is not connected".into());
        };
        let req = c.client.request("interrupt_request", json!({}));
        c.client
            .send(Channel::Control, &req)
            .await
            .map_err(|e| e.to_string())
    }

    pub async fn run(mut self) {
        let span = info_span!("executor");
        async move {
            if let Err(e) = self.connect().await {
                warn!(error = %e, "the kernel is not reachable at start");
                self.set_kernel(KernelState::Dead);
                self.reconnect().await;
            }
            self.recover().await;
            let _ = self.ready.send(true);
            self.main_loop().await;
            let _ = self.ready.send(false);
            if let (KernelSource::Spawn(_), Some(mut p)) = (&self.deps.cfg.kernel, self.process.take()) {
                p.kill().await;
                let _ = std::fs::remove_file(crate::kernel::process::pid_file(&self.deps.cfg.data_dir));
            }
            if let Some((_, waiters)) = self.shutdown.take() {
                for w in waiters {
                    let _ = w.send(());
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Executions that were dispatched or running when the previous sidecar
    /// stopped are never re-sent. The first is followed: if the kernel still
    /// runs it, its reply completes it; a kernel_info probe answered first
    /// means the kernel no longer runs it (`interrupted`).
    async fn recover(&mut self) {
        let in_flight = match self.deps.reader.in_flight().await {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "reading in-flight executions");
                return;
            }
        };
        for f in in_flight {
            let probe = match (&self.conn, &self.current, &f.msg_id) {
                (Some(c), None, Some(_)) => {
                    let req = c.client.request("kernel_info_request", json!({}));
                    c.client
                        .send(Channel::Shell, &req)
                        .await
                        .ok()
                        .map(|_| req.header.msg_id)
                }
                _ => None,
            };
            match (probe, f.msg_id) {
                (Some(probe), Some(msg_id)) => {
                    info!(execution = %f.execution.id, "following an execution the previous sidecar started");
                    self.current = Some(Current {
                        started: f.execution.state == State::Running,
                        exec: f.execution,
                        msg_id,
                        reply: None,
                        idle: false,
                        outputs: Outputs::with_limit(self.deps.cfg.max_output_bytes),
                        pending_stream: None,
                        last_stream_flush: None,
                        deadline: None,
                        interrupted_for: None,
                        probe: Some(probe),
                        idle_deadline: None,
                        end_probe: None,
                    });
                }
                _ => {
                    let e = f.execution;
                    self.finish_unrun(&e, State::Failed, EndReason::Interrupted).await;
                }
            }
        }
    }

    /// Until the kernel answers again (or shutdown): in local mode a fresh
    /// kernel each attempt, in a pod the kernel container coming back. Failed
    /// attempts back off from 1 s to 30 s.
    async fn reconnect(&mut self) {
        let mut backoff = Duration::from_secs(1);
        while self.conn.is_none() && self.shutdown.is_none() {
            let result = match &self.deps.cfg.kernel {
                KernelSource::Spawn(_) => self.restart_kernel("the kernel is gone").await,
                KernelSource::External => self.connect().await,
            };
            if let Err(e) = result {
                warn!(error = %e, retry_in = ?backoff, "the kernel is still not reachable");
                self.set_kernel(KernelState::Dead);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    cmd = self.commands.recv(), if self.commands_open => match cmd {
                        Some(Command::Shutdown(done)) => self.shutdown = Some((Instant::now(), vec![done])),
                        Some(other) => self.refuse(other),
                        // Nobody can ask for anything any more, and there is
                        // no kernel to finish with: stop now.
                        None => self.commands_closed(Instant::now()),
                    },
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }

    /// The command channel closed: no sender is left, so no shutdown request
    /// can come either. Stops as if one had come, by `deadline`.
    fn commands_closed(&mut self, deadline: Instant) {
        info!("every service handle has gone; stopping");
        self.commands_open = false;
        self.shutdown.get_or_insert((deadline, Vec::new()));
    }

    /// Answers a command that cannot run while the kernel is away.
    fn refuse(&self, cmd: Command) {
        let err = || ControlError::Failed("the kernel is not reachable".into());
        match cmd {
            Command::Cancel { reply, .. } => drop(reply.send(Err(err()))),
            Command::Interrupt(reply) | Command::Restart(reply) => drop(reply.send(Err(err()))),
            Command::Shutdown(_) => {}
        }
    }

    async fn main_loop(&mut self) {
        loop {
            if self.conn.is_none() {
                self.reconnect().await;
            }
            if self.current.is_none() {
                if self.shutdown.is_some() {
                    return;
                }
                if self.conn.is_some() {
                    self.start_next().await;
                }
            }
            let work = self.deps.work.clone();
            let cur_deadline = self
                .current
                .as_ref()
                .and_then(|c| match (c.deadline, c.idle_deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                });
            let flush_at = self
                .current
                .as_ref()
                .and_then(|c| c.pending_stream.as_ref().map(|p| p.2));
            let shutdown_at = self.shutdown.as_ref().map(|s| s.0);
            let idle = self.current.is_none();
            let process_exit = self.process.as_ref().map(|p| p.exited.clone());
            tokio::select! {
                _ = work.notified(), if idle => {}
                cmd = self.commands.recv(), if self.commands_open => match cmd {
                    Some(cmd) => self.on_command(cmd).await,
                    // Every service handle has gone: stop as on a shutdown
                    // request, the running execution getting the grace.
                    None => self.commands_closed(Instant::now() + self.deps.cfg.shutdown_grace),
                },
                ev = kernel_event(&mut self.conn) => match ev {
                    KernelEvent::Message(m) => self.on_kernel_message(*m).await,
                    KernelEvent::Closed => self.on_kernel_death("the kernel connection closed").await,
                    KernelEvent::Dead => self.on_kernel_death("the kernel stopped answering its heartbeat").await,
                },
                _ = exited(process_exit) => self.on_kernel_death("the kernel process exited").await,
                _ = sleep_until(cur_deadline) => self.on_deadline().await,
                _ = sleep_until(flush_at) => self.flush_stream(),
                _ = sleep_until(shutdown_at) => self.on_shutdown_deadline().await,
            }
        }
    }

    async fn start_next(&mut self) {
        let next = match self.deps.reader.next_queued().await {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "reading the queue");
                return;
            }
        };
        let Some(exec) = next else {
            self.prune_when_idle().await;
            return;
        };
        let Some(conn) = &self.conn else { return };
        let allow_stdin = self.deps.cfg.input_reply.is_some();
        let req = conn.client.request(
            "execute_request",
            json!({
                "code": exec.code, "silent": false, "store_history": true,
                "user_expressions": {}, "allow_stdin": allow_stdin, "stop_on_error": false,
            }),
        );
        // Durable before it is sent: a restarted sidecar never sends it again.
        if let Err(e) = self.deps.writer.dispatch(&exec.id, &req.header.msg_id).await {
            warn!(execution = %exec.id, error = %e, "could not record the dispatch; not sending");
            return;
        }
        if let Err(e) = conn.client.send(Channel::Shell, &req).await {
            warn!(execution = %exec.id, error = %e, "sending execute_request");
            self.finish_unrun(&exec, State::Failed, EndReason::KernelDied)
                .await;
            return;
        }
        tracing::debug!(execution = %exec.id, "dispatched");
        let timeout = exec.timeout_s.map(Duration::from_secs_f64);
        self.current = Some(Current {
            msg_id: req.header.msg_id,
            started: false,
            reply: None,
            idle: false,
            outputs: Outputs::with_limit(self.deps.cfg.max_output_bytes),
            pending_stream: None,
            last_stream_flush: None,
            deadline: timeout.map(|t| Instant::now() + t),
            interrupted_for: None,
            probe: None,
            idle_deadline: None,
            end_probe: None,
            exec,
        });
    }

    async fn prune_when_idle(&mut self) {
        if self
            .last_prune
            .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        self.last_prune = Some(Instant::now());
        let cutoff = time::OffsetDateTime::now_utc() - self.deps.cfg.retention;
        match self.deps.writer.prune(crate::util::format_rfc3339(cutoff)).await {
            Ok(0) => {}
            Ok(n) => info!(pruned = n, "pruned finished executions past retention"),
            Err(e) => warn!(error = %e, "pruning"),
        }
    }

    async fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Interrupt(reply) => {
                let r = self.interrupt_kernel().await.map_err(ControlError::Failed);
                if r.is_ok() {
                    if let Some(c) = &mut self.current {
                        c.interrupted_for.get_or_insert(EndReason::Interrupted);
                    }
                }
                let _ = reply.send(r);
            }
            Command::Restart(reply) => {
                if let Some(c) = self.current.take() {
                    self.finish_current(c, State::Failed, Some(EndReason::KernelRestarted))
                        .await;
                }
                let r = self
                    .restart_kernel("requested")
                    .await
                    .map_err(ControlError::Failed);
                let _ = reply.send(r);
            }
            Command::Cancel { id, reply } => {
                let r = self.cancel(&id).await;
                let _ = reply.send(r);
            }
            Command::Shutdown(done) => {
                let deadline = Instant::now() + self.deps.cfg.shutdown_grace;
                match &mut self.shutdown {
                    Some((_, waiters)) => waiters.push(done),
                    None => self.shutdown = Some((deadline, vec![done])),
                }
            }
        }
    }

    async fn cancel(&mut self, id: &str) -> Result<CancelOutcome, ControlError> {
        if self.current.as_ref().is_some_and(|c| c.exec.id == id) {
            self.interrupt_kernel().await.map_err(ControlError::Failed)?;
            if let Some(c) = &mut self.current {
                c.interrupted_for = Some(EndReason::Cancelled);
                c.deadline = Some(Instant::now() + self.deps.cfg.interrupt_grace);
            }
            return Ok(CancelOutcome {
                id: id.to_string(),
                result: "interrupting".into(),
            });
        }
        let exec = self
            .deps
            .reader
            .get(id)
            .await?
            .ok_or_else(|| ControlError::NotFound(id.to_string()))?;
        if exec.state.is_final() {
            return Ok(CancelOutcome {
                id: id.to_string(),
                result: exec.state.to_string(),
            });
        }
        self.finish_unrun(&exec, State::Cancelled, EndReason::Cancelled)
            .await;
        Ok(CancelOutcome {
            id: id.to_string(),
            result: "cancelled".into(),
        })
    }

    async fn on_kernel_message(&mut self, m: KernelMessage) {
        let msg_type = m.msg.msg_type().to_string();
        let parent = m.msg.parent_msg_id().map(String::from);
        if m.channel == Channel::Iopub && msg_type == "status" {
            match m.msg.content.get("execution_state").and_then(Value::as_str) {
                Some("busy") => self.set_kernel(KernelState::Busy),
                Some("idle") => self.set_kernel(KernelState::Idle),
                _ => {}
            }
        }
        let Some(cur) = &mut self.current else { return };
        // A recovered execution: the probe answered first, so the kernel no
        // longer runs ours.
        if cur.probe.is_some()
            && parent == cur.probe
            && msg_type == "kernel_info_reply"
            && cur.reply.is_none()
        {
            if let Some(c) = self.current.take() {
                self.finish_current(c, State::Failed, Some(EndReason::Interrupted))
                    .await;
            }
            return;
        }
        // The end-of-output witness: every iopub message of ours came before it.
        if m.channel == Channel::Iopub && cur.end_probe.is_some() && parent == cur.end_probe {
            if let Some(c) = self.current.take() {
                self.finish_from_reply(c).await;
            }
            return;
        }
        if parent.as_deref() != Some(cur.msg_id.as_str()) {
            return;
        }
        // Output still arriving after the reply: the idle status is behind it,
        // so the quiet deadline moves with every message (under load iopub
        // can lag the shell reply by seconds).
        if cur.reply.is_some() {
            let quiet = if cur.end_probe.is_some() {
                END_PROBE_TIMEOUT
            } else {
                IDLE_AFTER_REPLY
            };
            cur.idle_deadline = Some(Instant::now() + quiet);
        }
        match (m.channel, msg_type.as_str()) {
            (Channel::Iopub, "status") => {
                let state = m.msg.content.get("execution_state").and_then(Value::as_str);
                if state == Some("busy") {
                    self.mark_started().await;
                } else if state == Some("idle") {
                    cur.idle = true;
                }
            }
            (Channel::Iopub, "execute_input") => self.mark_started().await,
            (Channel::Iopub, _) => {
                self.mark_started().await;
                let content = self.offload(&msg_type, m.msg.content).await;
                self.on_output(&msg_type, &content);
            }
            (Channel::Shell, "execute_reply") => {
                cur.reply = Some(m.msg.content.clone());
                cur.idle_deadline = Some(Instant::now() + IDLE_AFTER_REPLY);
            }
            (Channel::Stdin, "input_request") => {
                let value = self.deps.cfg.input_reply.clone().unwrap_or_default();
                if let Some(conn) = &self.conn {
                    let mut reply = conn.client.request("input_reply", json!({"value": value}));
                    reply.parent_header = serde_json::to_value(&m.msg.header).unwrap_or_default();
                    let _ = conn.client.send(Channel::Stdin, &reply).await;
                }
            }
            _ => {}
        }
        let done = self
            .current
            .as_ref()
            .is_some_and(|c| c.reply.is_some() && (c.idle || c.probe.is_some()));
        if done {
            if let Some(c) = self.current.take() {
                self.finish_from_reply(c).await;
            }
        }
    }

    async fn mark_started(&mut self) {
        let Some(cur) = &mut self.current else { return };
        if cur.started {
            return;
        }
        cur.started = true;
        let id = cur.exec.id.clone();
        self.deps
            .writer
            .start_detached(&id, crate::util::now_rfc3339())
            .await;
        let seq = self.deps.bus.publish("started", Some(&id), json!({}));
        self.deps.writer.set_last_seq(&id, seq);
    }

    /// Moves large rich values into asset files (written before any client
    /// sees the stub that points at them).
    async fn offload(&self, msg_type: &str, content: Value) -> Value {
        if !matches!(
            msg_type,
            "display_data" | "execute_result" | "update_display_data"
        ) {
            return content;
        }
        let as_output = json!({
            "output_type": "display_data",
            "data": content.get("data").cloned().unwrap_or(Value::Null),
            "metadata": content.get("metadata").cloned().unwrap_or_else(|| json!({})),
        });
        let (out, assets) = crate::assets::offload(&as_output, self.deps.cfg.asset_threshold);
        if assets.is_empty() {
            return content;
        }
        let root = self.deps.root.clone();
        let stored = tokio::task::spawn_blocking(move || {
            for a in &assets {
                crate::assets::offload::store(&root, a)?;
            }
            Ok::<_, crate::confined::ConfinedError>(assets.len())
        })
        .await;
        match stored {
            Ok(Ok(n)) => {
                tracing::debug!(assets = n, "offloaded rich output");
                let mut content = content;
                content["data"] = out["data"].clone();
                content["metadata"] = out["metadata"].clone();
                content
            }
            other => {
                warn!(?other, "could not write assets; keeping the output inline");
                content
            }
        }
    }

    fn on_output(&mut self, msg_type: &str, content: &Value) {
        let window = self.deps.cfg.coalesce_window;
        let Some(cur) = &mut self.current else { return };
        let change = cur.outputs.apply(msg_type, content);
        match change {
            Change::None => {}
            Change::Output(o) if o["output_type"] == "stream" => {
                let name = o["name"].as_str().unwrap_or("stdout").to_string();
                let text = o["text"].as_str().unwrap_or("");
                let same = cur.pending_stream.as_ref().is_some_and(|p| p.0 == name);
                if !same {
                    self.flush_stream();
                }
                let Some(cur) = &mut self.current else { return };
                let now = Instant::now();
                let quiet = cur.last_stream_flush.is_none_or(|t| now >= t + window);
                let flush_at = cur.last_stream_flush.map_or(now, |t| t + window).max(now);
                let p = cur
                    .pending_stream
                    .get_or_insert_with(|| (name, String::new(), flush_at));
                p.1.push_str(text);
                if quiet || p.1.len() >= STREAM_FLUSH_BYTES {
                    self.flush_stream();
                }
            }
            other => {
                self.flush_stream();
                let Some(cur) = &self.current else { return };
                let id = cur.exec.id.clone();
                let fields = match other {
                    Change::Output(o) => json!({"output": o}),
                    Change::Update { display_id, output } => {
                        json!({"output": output, "update_display_id": display_id})
                    }
                    Change::Cleared => json!({"clear_output": true}),
                    Change::None => return,
                };
                self.deps.bus.publish("output", Some(&id), fields);
            }
        }
    }

    fn flush_stream(&mut self) {
        let Some(cur) = &mut self.current else { return };
        if let Some((name, text, _)) = cur.pending_stream.take() {
            cur.last_stream_flush = Some(Instant::now());
            let id = cur.exec.id.clone();
            self.deps.bus.publish(
                "output",
                Some(&id),
                json!({"output": {"output_type": "stream", "name": name, "text": text}}),
            );
        }
    }

    async fn finish_from_reply(&mut self, cur: Current) {
        let reply = cur.reply.clone().unwrap_or_default();
        let status = reply.get("status").and_then(Value::as_str).unwrap_or("error");
        match (status, cur.interrupted_for) {
            ("ok", _) => self.finish_current(cur, State::Completed, None).await,
            (_, Some(EndReason::Cancelled)) => {
                self.finish_current(cur, State::Cancelled, Some(EndReason::Cancelled))
                    .await
            }
            (_, Some(why)) => self.finish_current(cur, State::Failed, Some(why)).await,
            ("aborted", None) => {
                self.finish_current(cur, State::Failed, Some(EndReason::Aborted))
                    .await
            }
            _ => {
                self.finish_current(cur, State::Failed, Some(EndReason::Error))
                    .await
            }
        }
    }

    async fn finish_current(&mut self, mut cur: Current, state: State, reason: Option<EndReason>) {
        if let Some((name, text, _)) = cur.pending_stream.take() {
            self.deps.bus.publish(
                "output",
                Some(&cur.exec.id),
                json!({"output": {"output_type": "stream", "name": name, "text": text}}),
            );
        }
        let reply = cur.reply.take().unwrap_or_default();
        let count = reply.get("execution_count").and_then(Value::as_i64);
        let error = (reply.get("status").and_then(Value::as_str) == Some("error")).then(|| {
            json!({
                "ename": reply.get("ename").cloned().unwrap_or(json!("")),
                "evalue": reply.get("evalue").cloned().unwrap_or(json!("")),
                "traceback": reply.get("traceback").cloned().unwrap_or(json!([])),
            })
        });
        self.finish_row(&cur.exec, state, reason, cur.outputs, count, error)
            .await;
    }

    /// Ends an execution the kernel is not running: no outputs, no reply.
    async fn finish_unrun(&self, exec: &Execution, state: State, reason: EndReason) {
        self.finish_row(exec, state, Some(reason), Outputs::default(), None, None)
            .await;
    }

    /// Commits the final state, then announces it and wakes waiters.
    async fn finish_row(
        &self,
        exec: &Execution,
        state: State,
        reason: Option<EndReason>,
        outputs: Outputs,
        count: Option<i64>,
        error: Option<Value>,
    ) {
        let error = error.or_else(|| {
            reason
                .filter(|_| state == State::Failed)
                .map(|r| json!({"ename": "ExecutionFailed", "evalue": r.as_str(), "traceback": []}))
        });
        let mut outputs = outputs;
        let truncated = outputs.truncation();
        if let Some(t) = &truncated {
            let note = super::outputs::truncation_note(t);
            self.deps
                .bus
                .publish("output", Some(&exec.id), json!({"output": note}));
            outputs.push_note(note);
            self.deps.output_stats.note(t);
            warn!(execution = %exec.id, kept = t.kept_bytes, dropped = t.dropped_bytes, reason = %t.reason, "outputs truncated");
        }
        let record = FinalRecord {
            state,
            reason,
            outputs: outputs.into_vec(),
            execution_count: count,
            error: error.clone(),
            finished_at: crate::util::now_rfc3339(),
            truncated,
        };
        match self.deps.writer.finish(&exec.id, record).await {
            Ok(true) => {
                let seq = self.deps.bus.publish(
                    "finished",
                    Some(&exec.id),
                    json!({"state": state, "reason": reason, "execution_count": count, "error": error}),
                );
                self.deps.writer.set_last_seq(&exec.id, seq);
                info!(execution = %exec.id, %state, reason = reason.map_or("", EndReason::as_str), "finished");
            }
            Ok(false) => {}
            Err(e) => warn!(execution = %exec.id, error = %e, "recording the final state"),
        }
        self.deps.activity.touch();
        self.deps.completions.finished(&exec.id);
    }

    async fn on_kernel_death(&mut self, why: &str) {
        warn!(why, "kernel died");
        self.set_kernel(KernelState::Dead);
        if let Some(c) = self.current.take() {
            self.finish_current(c, State::Failed, Some(EndReason::KernelDied))
                .await;
        }
        if self.shutdown.is_some() {
            // Stopping anyway (a pod being deleted takes the kernel with it):
            // no restart, so the sidecar exits at once.
            self.conn = None;
            return;
        }
        match &self.deps.cfg.kernel {
            KernelSource::Spawn(_) => {
                if let Err(e) = self.restart_kernel(why).await {
                    warn!(error = %e, "kernel restart failed");
                }
            }
            // In a pod the kubelet restarts the kernel container; a shutdown
            // request now could reach the kernel that already replaced it.
            // The state stays `dead` until the new kernel answers.
            KernelSource::External => {
                self.conn = None;
                self.status.send_modify(|s| s.restarts += 1);
            }
        }
    }

    async fn on_deadline(&mut self) {
        let Some(cur) = &mut self.current else { return };
        let now = Instant::now();
        if cur.idle_deadline.is_some_and(|d| d <= now) && cur.reply.is_some() {
            if cur.end_probe.is_none() {
                // The reply came but the idle status did not (yet): ask for
                // the witness that every output has arrived.
                if let Some(conn) = &self.conn {
                    let req = conn.client.request("kernel_info_request", json!({}));
                    if conn.client.send(Channel::Shell, &req).await.is_ok() {
                        tracing::debug!(execution = %cur.exec.id, "idle status late; probing for the end of output");
                        cur.end_probe = Some(req.header.msg_id);
                        cur.idle_deadline = Some(now + END_PROBE_TIMEOUT);
                        return;
                    }
                }
            }
            // No witness either: finish, saying the outputs may be incomplete.
            warn!(execution = %cur.exec.id, "the kernel's idle status never came; outputs recorded as unconfirmed");
            cur.outputs.mark_unconfirmed();
            if let Some(c) = self.current.take() {
                self.finish_from_reply(c).await;
            }
            return;
        }
        if cur.deadline.is_none_or(|d| d > now) {
            return;
        }
        if cur.interrupted_for.is_none() {
            cur.interrupted_for = Some(EndReason::Timeout);
            cur.deadline = Some(now + self.deps.cfg.interrupt_grace);
            if let Err(e) = self.interrupt_kernel().await {
                warn!(error = %e, "interrupt for timeout failed");
            }
            return;
        }
        // Interrupted and still not done: the kernel is stuck; restart it.
        let why = cur.interrupted_for.unwrap_or(EndReason::Interrupted);
        if let Some(c) = self.current.take() {
            let state = if why == EndReason::Cancelled {
                State::Cancelled
            } else {
                State::Failed
            };
            self.finish_current(c, state, Some(why)).await;
        }
        let _ = self.restart_kernel("did not answer an interrupt").await;
    }

    async fn on_shutdown_deadline(&mut self) {
        if self.current.is_some() {
            let _ = self.interrupt_kernel().await;
            if let Some(c) = self.current.take() {
                self.finish_current(c, State::Failed, Some(EndReason::Interrupted))
                    .await;
            }
        }
    }
}

enum KernelEvent {
    Message(Box<KernelMessage>),
    Closed,
    Dead,
}

async fn kernel_event(conn: &mut Option<Conn>) -> KernelEvent {
    let Some(c) = conn else {
        return std::future::pending().await;
    };
    tokio::select! {
        m = c.rx.recv() => m.map(|m| KernelEvent::Message(Box::new(m))).unwrap_or(KernelEvent::Closed),
        _ = c.dead.recv() => KernelEvent::Dead,
        _ = disconnected(&mut c.gone) => KernelEvent::Closed,
    }
}

/// Resolves when the kernel's end of the connection closed.
async fn disconnected(gone: &mut watch::Receiver<bool>) {
    if gone.wait_for(|g| *g).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn exited(rx: Option<watch::Receiver<bool>>) {
    match rx {
        Some(mut rx) => {
            if rx.wait_for(|e| *e).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The actor's dependencies over a fresh database and workspace, with a
    /// kernel that is never there.
    fn unreachable_kernel(tag: &str) -> (Deps, ConnectionInfo) {
        let dir = std::env::temp_dir().join(format!("nbo-executor-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = crate::store::schema::db_path(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (writer, _thread) = Writer::open(&db).unwrap();
        let mut cfg = Config::new(
            dir.clone(),
            dir.join("ws"),
            dir.join("kernel.json"),
            KernelSource::External,
        );
        cfg.kernel_start_timeout = Duration::ZERO;
        let deps = Deps {
            cfg: Settings::from(&cfg),
            writer,
            reader: Reader::new(&db),
            bus: Bus::new(cfg.bus.clone(), 1, Box::new(|_| {})),
            completions: Arc::default(),
            work: Arc::default(),
            activity: Arc::default(),
            output_stats: Arc::default(),
            dropped: Arc::default(),
            root: Arc::new(crate::confined::Root::open(&cfg.workspace).unwrap()),
        };
        let info = ConnectionInfo::with_free_ports("127.0.0.1", "key".into()).unwrap();
        (deps, info)
    }

    /// The actor holds no sender of its own command channel, so dropping
    /// the last one (the service's) stops it: the closed channel is a
    /// shutdown, not a wait that never ends.
    #[tokio::test]
    async fn the_actor_stops_when_the_last_command_sender_goes() {
        let (deps, info) = unreachable_kernel("closed");
        let (tx, rx) = mpsc::channel(1);
        let (status, _status_rx) = watch::channel(KernelStatus::default());
        let (ready, _ready_rx) = watch::channel(false);
        let actor = Executor::new(deps, rx, status, ready, info, b"test".to_vec(), None);
        let run = tokio::spawn(actor.run());
        drop(tx);
        tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("the actor stopped")
            .unwrap();
    }
}
