//! The kernel actor: the one task that talks to the kernel. It runs queued
//! executions one at a time in submission order, supervises the kernel
//! (heartbeat, death, restart) and answers control commands. What the
//! running execution's messages and deadlines mean is decided by its
//! [`Cell`] (pure); the actor does the I/O the cell's effects ask for. It
//! waits on events only: the work notification, kernel messages, commands,
//! and deadlines it set itself.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, info_span, warn, Instrument};

use super::cell::{self, Cell, Effect, Finished};
use super::completion::Completions;
use super::control::{CancelOutcome, Command, ControlError, KernelState, KernelStatus};
use super::outputs::Outputs;
use super::stages::Stage;
use super::warmup::{self, Warmup, WarmupSlot};
use super::{Activity, Config, KernelSource, OutputStats};
use crate::events::Bus;
use crate::jupyter::client::Heartbeat;
use crate::jupyter::{Channel, ConnectionInfo, KernelClient, KernelMessage};
use crate::kernel::process::KernelProcess;
use crate::store::{EndReason, Execution, FinalRecord, Reader, State, StoreError, Taking, Writer};

/// The settings of the sidecar the kernel actor reads.
#[derive(Debug, Clone)]
pub struct Settings {
    pub kernel: KernelSource,
    pub data_dir: PathBuf,
    pub kernel_start_timeout: Duration,
    pub shutdown_grace: Duration,
    pub retention: Duration,
    pub input_reply: Option<String>,
    pub asset_threshold: usize,
    /// What the running cell follows (stream window, interrupt grace, output limit).
    pub cell: cell::Limits,
}

impl From<&Config> for Settings {
    fn from(cfg: &Config) -> Self {
        Settings {
            kernel: cfg.kernel.clone(),
            data_dir: cfg.data_dir.clone(),
            kernel_start_timeout: cfg.kernel_start_timeout,
            shutdown_grace: cfg.shutdown_grace,
            retention: cfg.retention,
            input_reply: cfg.input_reply.clone(),
            asset_threshold: cfg.asset_threshold,
            cell: cell::Limits {
                coalesce_window: cfg.coalesce_window,
                interrupt_grace: cfg.interrupt_grace,
                max_output_bytes: cfg.max_output_bytes,
            },
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
    /// Where each open execution's time goes.
    pub stages: Arc<super::stages::Stages>,
    /// Notified after each enqueue commit that no take was handed.
    pub work: Arc<Notify>,
    pub activity: Arc<Activity>,
    pub output_stats: Arc<OutputStats>,
    /// Kernel frames dropped for bad signatures or framing.
    pub dropped: Arc<AtomicU64>,
    /// The workspace, where large outputs become asset files.
    pub root: Arc<crate::confined::Root>,
    /// Every kernel message, for the Jupyter clients of the channels WebSocket.
    pub channels: Arc<super::channels::Hub>,
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
    /// The running execution.
    current: Option<Cell>,
    /// A Jupyter client's cell answered `error` with `stop_on_error`: its
    /// id and the executions of that client queued when the reply went
    /// out, the only ones its end aborts (a cell the client sent after it
    /// saw the error is a new request, not one the error stops).
    abortable: Option<(String, Vec<String>)>,
    shutdown: Option<(Instant, Vec<oneshot::Sender<()>>)>,
    last_prune: Option<Instant>,
    /// A warm pod's warmup: run in each kernel connected while it is armed
    /// (warm), before anything else, and where its outcome goes.
    warmup: Option<Arc<WarmupSlot>>,
    /// Run it in the kernel found at start too.
    warmup_at_start: bool,
    /// Messages that came while connecting and were not the connection's
    /// own: a kernel still running an execution the previous sidecar sent
    /// answers it before it answers kernel_info, so its reply and its
    /// last outputs are among these. Handled once recovery has said what
    /// the kernel runs.
    early: Vec<KernelMessage>,
    /// Asked of the store: the next execution, dispatched as this msg_id.
    take: Option<(String, Taking)>,
    /// The last take failed: no new one before the next submission.
    take_failed: bool,
    /// When the running execution's start, held by the store, is committed.
    start_flush: Option<Instant>,
}

/// A running execution's start is committed this long after the kernel
/// said busy, unless the final commit took it along before: a reader
/// sees a longer cell running, a short one costs no commit of its own.
const START_VISIBLE_AFTER: Duration = Duration::from_millis(20);

/// Most messages kept while connecting (an execution that prints without
/// end while the sidecar reconnects loses what is beyond).
const EARLY_KEPT: usize = 10_000;

const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
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
            abortable: None,
            shutdown: None,
            last_prune: None,
            warmup: None,
            warmup_at_start: false,
            early: Vec::new(),
            take: None,
            take_failed: false,
            start_flush: None,
        }
    }

    /// Runs the armed warmup code of `slot` in each kernel it connects to
    /// while the pod is warm, before the sidecar is ready and before any
    /// execution ([`super::warmup`]); in the kernel it finds at start only
    /// when `at_start` (a restarted sidecar's kernel may have run it).
    pub fn with_warmup(mut self, slot: Arc<WarmupSlot>, at_start: bool) -> Self {
        self.warmup = Some(slot);
        self.warmup_at_start = at_start;
        self
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
        let mut early = Vec::new();
        let mut asked: Vec<String> = Vec::new();
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
            asked.push(req.header.msg_id.clone());
            let until = Instant::now() + Duration::from_millis(1000);
            let mut iopub_seen = false;
            while let Ok(Some(m)) = tokio::time::timeout_at(until, rx.recv()).await {
                if m.msg.parent_msg_id() != Some(req.header.msg_id.as_str()) {
                    let answers_an_earlier_attempt = m
                        .msg
                        .parent_msg_id()
                        .is_some_and(|p| asked.iter().any(|a| a == p));
                    if !answers_an_earlier_attempt && early.len() < EARLY_KEPT {
                        early.push(m);
                    }
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
        self.early = early;
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
            if self.warmup_at_start {
                self.warm_up_if_armed().await;
            }
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

    /// The warmup in the kernel just connected, if the pod is warm and has
    /// one: start to end, stored as running before and with its outcome
    /// after (so a restarted sidecar neither repeats a finished one in the
    /// same kernel nor trusts an unfinished one), and logged.
    async fn warm_up_if_armed(&mut self) {
        let Some(slot) = self.warmup.clone() else { return };
        let Some(code) = slot.armed() else { return };
        if self.conn.is_none() || self.shutdown.is_some() {
            return;
        }
        let span = info_span!("warmup", bytes = code.len());
        async move {
            let started = Instant::now();
            slot.set(Some(Warmup::Running));
            self.store_warmup(&Warmup::Running).await;
            let Some(outcome) = self.warm_up(&code).await else {
                return;
            };
            self.store_warmup(&outcome).await;
            match &outcome {
                Warmup::Failed { error } => {
                    warn!(%error, "warmup failed: this warm pod will not become ready")
                }
                _ => info!(elapsed = ?started.elapsed(), "warmup done"),
            }
            slot.set(Some(outcome));
        }
        .instrument(span)
        .await
    }

    async fn store_warmup(&self, state: &Warmup) {
        match serde_json::to_string(state) {
            Ok(text) => {
                if let Err(e) = self.deps.writer.set_meta(warmup::WARMUP_META, text).await {
                    warn!(error = %e, "could not store the warmup's state");
                }
            }
            Err(e) => warn!(error = %e, "could not encode the warmup's state"),
        }
    }

    /// Sends the warmup straight to the kernel and waits for its end,
    /// dropping every message of it: none reaches the event log or a store.
    /// `None`: the sidecar is stopping, and the warmup's end does not matter.
    async fn warm_up(&mut self, code: &str) -> Option<Warmup> {
        let failed = |error: &str| {
            Some(Warmup::Failed {
                error: error.to_string(),
            })
        };
        let Some(conn) = self.conn.as_mut() else {
            return failed("the kernel was not reachable");
        };
        let req = conn.client.request(
            "execute_request",
            json!({
                "code": code, "silent": false, "store_history": false,
                "user_expressions": {}, "allow_stdin": false, "stop_on_error": true,
            }),
        );
        if let Err(e) = conn.client.send(Channel::Shell, &req).await {
            return failed(&format!("sending it to the kernel: {e}"));
        }
        let mut progress = warmup::Progress::new(req.header.msg_id);
        let process_exit = self.process.as_ref().map(|p| p.exited.clone());
        let mut process_exit = std::pin::pin!(exited(process_exit));
        loop {
            tokio::select! {
                m = conn.rx.recv() => match m {
                    Some(m) => {
                        let over = progress.on_message(m.channel, m.msg.msg_type(), m.msg.parent_msg_id(), &m.msg.content);
                        if over.is_some() {
                            return over;
                        }
                    }
                    None => return failed("the kernel connection closed during the warmup"),
                },
                _ = conn.dead.recv() => return failed("the kernel stopped answering its heartbeat during the warmup"),
                _ = disconnected(&mut conn.gone) => return failed("the kernel connection closed during the warmup"),
                _ = &mut process_exit => return failed("the kernel process exited during the warmup"),
                cmd = self.commands.recv(), if self.commands_open => match cmd {
                    Some(Command::Shutdown(done)) => {
                        self.shutdown = Some((Instant::now() + self.deps.cfg.shutdown_grace, vec![done]));
                        return None;
                    }
                    Some(other) => refuse_during_warmup(other),
                    None => {
                        self.commands_closed(Instant::now());
                        return None;
                    }
                },
            }
        }
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
                    let client_input = f.execution.client_answers_input();
                    self.current = Some(
                        Cell::recovered(
                            f.execution.id,
                            msg_id,
                            f.execution.state == State::Running,
                            probe,
                            self.deps.cfg.cell,
                        )
                        .with_client_input(client_input),
                    );
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
            Command::Forward(_, msg) => {
                warn!(msg_type = %msg.header.msg_type, "a client's message came while the kernel is away; dropped")
            }
            Command::Shutdown(_) => {}
        }
    }

    /// The messages kept while connecting, now that the running execution
    /// (if any) is known.
    async fn handle_early(&mut self) {
        for m in std::mem::take(&mut self.early) {
            self.on_kernel_message(m).await;
        }
    }

    async fn main_loop(&mut self) {
        loop {
            if self.conn.is_none() {
                // Nothing is handed over while the kernel is away: what is
                // queued stays queued (and runs after a sidecar restart too).
                self.give_up_take();
                self.reconnect().await;
                // A warm pod's kernel that came back is warmed again.
                self.warm_up_if_armed().await;
            }
            if !self.early.is_empty() {
                self.handle_early().await;
            }
            if self.current.is_none() {
                if self.shutdown.is_some() {
                    return;
                }
                if self.conn.is_some() {
                    self.want_next().await;
                }
            }
            if self.shutdown.is_some() {
                // Nothing new starts once the sidecar stops.
                self.give_up_take();
            }
            let work = self.deps.work.clone();
            let cell_at = self
                .current
                .as_ref()
                .and_then(Cell::next_deadline)
                .map(Instant::from_std);
            let shutdown_at = self.shutdown.as_ref().map(|s| s.0);
            let idle = self.current.is_none();
            let process_exit = self.process.as_ref().map(|p| p.exited.clone());
            let taking = idle && self.take.is_some();
            let start_flush = self.start_flush;
            tokio::select! {
                taken = next_taken(&mut self.take), if taking => self.on_taken(taken).await,
                _ = work.notified(), if idle => self.take_failed = false,
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
                _ = sleep_until(cell_at) => self.on_cell_deadline().await,
                _ = sleep_until(shutdown_at) => self.on_shutdown_deadline().await,
                _ = sleep_until(start_flush) => {
                    self.start_flush = None;
                    self.deps.writer.flush();
                }
            }
        }
    }

    /// Idle and connected: asks the store for the next execution, the
    /// queue's head or the next one enqueued, dispatched before it comes.
    async fn want_next(&mut self) {
        if self.take.is_some() || self.take_failed {
            return;
        }
        self.prune_when_idle().await;
        let msg_id = uuid::Uuid::new_v4().to_string();
        self.take = Some((msg_id.clone(), self.deps.writer.take(msg_id)));
    }

    /// Sends what the store handed over (its dispatch durable already).
    async fn on_taken(&mut self, taken: Taken) {
        let Some((msg_id, _)) = self.take.take() else {
            return;
        };
        let exec = match taken {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => {
                warn!(error = %e, "could not take the next execution; waiting for the next submission");
                self.take_failed = true;
                return;
            }
            Err(_) => {
                warn!("the store stopped handing out executions");
                self.take_failed = true;
                return;
            }
        };
        let Some(conn) = &self.conn else {
            // Gone since the take was sent: never sent, so it runs after the reconnect.
            self.deps.writer.undispatch(exec.id);
            return;
        };
        let mut req = execute_request(&conn.client, &exec, self.deps.cfg.input_reply.is_some());
        req.header.msg_id = exec.request_msg_id(&msg_id).to_string();
        if let Err(e) = conn.client.send(Channel::Shell, &req).await {
            warn!(execution = %exec.id, error = %e, "sending execute_request");
            self.finish_unrun(&exec, State::Failed, EndReason::KernelDied)
                .await;
            return;
        }
        self.deps.stages.mark(&exec.id, Stage::Dispatched);
        tracing::debug!(execution = %exec.id, "dispatched");
        let client_input = exec.client_answers_input();
        self.current = Some(
            Cell::dispatched(
                exec.id,
                req.header.msg_id,
                exec.timeout_s.map(Duration::from_secs_f64),
                std::time::Instant::now(),
                self.deps.cfg.cell,
            )
            .with_client_input(client_input),
        );
    }

    /// Gives the outstanding take up: an execution handed to it meanwhile
    /// is made undispatched again by the store.
    fn give_up_take(&mut self) {
        if let Some((_, mut rx)) = self.take.take() {
            rx.close();
            // Handed over before the close: never sent, so queued again.
            if let Ok(Ok(e)) = rx.try_recv() {
                self.deps.writer.undispatch(e.id);
            }
        }
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
                let now = self
                    .current
                    .as_mut()
                    .is_none_or(|c| c.interrupt_now(std::time::Instant::now()));
                let r = if now {
                    self.interrupt_kernel().await.map_err(ControlError::Failed)
                } else {
                    Ok(())
                };
                if r.is_ok() {
                    if let Some(c) = &mut self.current {
                        c.interrupted();
                    }
                }
                let _ = reply.send(r);
            }
            Command::Restart(reply) => {
                self.end_current(State::Failed, EndReason::KernelRestarted).await;
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
            Command::Forward(channel, msg) => match &self.conn {
                Some(conn) => {
                    if let Err(e) = conn.client.send(channel, &msg).await {
                        warn!(error = %e, msg_type = %msg.header.msg_type, "forwarding a client's message to the kernel");
                    }
                }
                None => {
                    warn!(msg_type = %msg.header.msg_type, "a client's message came while the kernel is away; dropped")
                }
            },
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
        if self.current.as_ref().is_some_and(|c| c.id() == id) {
            if self
                .current
                .as_mut()
                .is_some_and(|c| c.interrupt_now(std::time::Instant::now()))
            {
                self.interrupt_kernel().await.map_err(ControlError::Failed)?;
            }
            if let Some(c) = &mut self.current {
                c.cancelling(std::time::Instant::now());
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
        // It may be on its way to this actor, dispatched for its take.
        self.give_up_take();
        self.finish_unrun(&exec, State::Cancelled, EndReason::Cancelled)
            .await;
        Ok(CancelOutcome {
            id: id.to_string(),
            result: "cancelled".into(),
        })
    }

    async fn on_kernel_message(&mut self, mut m: KernelMessage) {
        if m.channel == Channel::Shell
            && m.msg.msg_type() == "execute_reply"
            && m.msg.content.get("status").and_then(Value::as_str) == Some("error")
        {
            // Before any client can see the error: what it stops.
            self.abortable = self.queued_behind_error(&m).await;
        }
        self.deps.channels.publish(&m);
        if m.channel == Channel::Iopub && m.msg.msg_type() == "status" {
            match m.msg.content.get("execution_state").and_then(Value::as_str) {
                Some("busy") => self.set_kernel(KernelState::Busy),
                Some("idle") => self.set_kernel(KernelState::Idle),
                _ => {}
            }
        }
        let Some(cell) = &self.current else { return };
        if m.msg.parent_msg_id() == Some(cell.msg_id()) {
            let state = m.msg.content.get("execution_state").and_then(Value::as_str);
            if let Some(stage) = Stage::of_message(m.channel, m.msg.msg_type(), state) {
                self.deps.stages.mark(cell.id(), stage);
            }
        }
        if cell.is_rich_output(&m) {
            let content = std::mem::take(&mut m.msg.content);
            m.msg.content = self.offload(content).await;
        }
        let Some(cell) = &mut self.current else { return };
        let effects = cell.on_message(&m, std::time::Instant::now());
        self.apply(effects).await;
    }

    async fn on_cell_deadline(&mut self) {
        let Some(cell) = &mut self.current else { return };
        let effects = cell.on_deadline(std::time::Instant::now());
        self.apply(effects).await;
    }

    /// Ends the running execution, if any, whatever the kernel does.
    async fn end_current(&mut self, state: State, reason: EndReason) {
        let Some(cell) = &mut self.current else { return };
        let effects = cell.end(state, reason);
        self.apply(effects).await;
    }

    /// Carries out what the running cell asked for, in order.
    async fn apply(&mut self, effects: Vec<Effect>) {
        let Some(id) = self.current.as_ref().map(|c| c.id().to_string()) else {
            return;
        };
        let mut effects = VecDeque::from(effects);
        while let Some(effect) = effects.pop_front() {
            match effect {
                Effect::Started => {
                    // Rides along with the final commit of a short cell; a
                    // longer one has it committed at `START_VISIBLE_AFTER`.
                    self.deps
                        .writer
                        .start_detached(&id, crate::util::now_rfc3339())
                        .await;
                    self.start_flush = Some(Instant::now() + START_VISIBLE_AFTER);
                    let seq = self.deps.bus.publish("started", Some(&id), json!({}));
                    self.deps.writer.set_last_seq(&id, seq);
                }
                Effect::Output(fields) => {
                    self.deps.bus.publish("output", Some(&id), fields);
                }
                Effect::AnswerInput(parent) => {
                    let value = self.deps.cfg.input_reply.clone().unwrap_or_default();
                    if let Some(conn) = &self.conn {
                        let mut reply = conn.client.request("input_reply", json!({"value": value}));
                        reply.parent_header = serde_json::to_value(&parent).unwrap_or_default();
                        let _ = conn.client.send(Channel::Stdin, &reply).await;
                    }
                }
                Effect::Interrupt => {
                    if let Err(e) = self.interrupt_kernel().await {
                        warn!(execution = %id, error = %e, "interrupting the kernel failed");
                    }
                }
                Effect::ProbeEnd => {
                    let sent = match &self.conn {
                        Some(conn) => {
                            let req = conn.client.request("kernel_info_request", json!({}));
                            let ok = conn.client.send(Channel::Shell, &req).await.is_ok();
                            ok.then_some(req.header.msg_id)
                        }
                        None => None,
                    };
                    if let Some(cell) = &mut self.current {
                        match sent {
                            Some(msg_id) => cell.probing_end(msg_id, std::time::Instant::now()),
                            None => effects.extend(cell.end_unconfirmed()),
                        }
                    }
                }
                Effect::Finish(f) => {
                    self.current = None;
                    self.start_flush = None;
                    let raised = f.reason == Some(EndReason::Error);
                    self.finish_row(&id, f).await;
                    if raised {
                        self.abort_after_error(&id).await;
                    }
                }
                Effect::RestartKernel => {
                    let _ = self.restart_kernel("did not answer an interrupt").await;
                }
            }
        }
    }

    /// When `reply` (an `error` execute_reply) answers the running cell and
    /// that cell is a Jupyter client's with `stop_on_error`: the cell's id
    /// and the ids of that client's executions queued now.
    async fn queued_behind_error(&self, reply: &KernelMessage) -> Option<(String, Vec<String>)> {
        let id = self.current.as_ref()?.id().to_string();
        let failed = self.deps.reader.get(&id).await.ok()??;
        let request = failed.client_request.as_ref()?;
        let stops = request
            .content
            .get("stop_on_error")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if !stops || reply.msg.parent_msg_id() != Some(request.header.msg_id.as_str()) {
            return None;
        }
        let queued = match self.deps.reader.queued().await {
            Ok(q) => q,
            Err(e) => {
                warn!(execution = %id, error = %e, "reading the queue to abort after an error");
                return None;
            }
        };
        let behind = queued
            .into_iter()
            .filter(|e| {
                e.client_request
                    .as_ref()
                    .is_some_and(|r| r.header.session == request.header.session)
            })
            .map(|e| e.id)
            .collect();
        Some((id, behind))
    }

    /// A Jupyter client's cell that raised with `stop_on_error` (what a
    /// notebook's "run all" sends) aborts the cells that client had queued
    /// behind it when the error was answered, as the kernel aborts the
    /// requests waiting in its own queue: each ends `aborted`, and the
    /// client hears so as the kernel would say it (busy, an `aborted`
    /// execute_reply, idle). Other clients' work, HTTP and MCP executions,
    /// and what the client sent after it saw the error run on.
    async fn abort_after_error(&mut self, id: &str) {
        let behind = match self.abortable.take() {
            Some((failed, behind)) if failed == id => behind,
            _ => return,
        };
        let queued = match self.deps.reader.queued().await {
            Ok(q) => q,
            Err(e) => {
                warn!(error = %e, "reading the queue to abort after an error");
                return;
            }
        };
        for exec in queued {
            if !behind.contains(&exec.id) {
                continue;
            }
            let Some(request) = exec.client_request.clone() else {
                continue;
            };
            info!(execution = %exec.id, after = %id, "aborted: an earlier cell of the same client raised");
            self.finish_unrun(&exec, State::Failed, EndReason::Aborted).await;
            for m in aborted_reply(&request, &self.session) {
                self.deps.channels.publish(&m);
            }
        }
    }

    /// Moves large rich values into asset files (written before any client
    /// sees the stub that points at them).
    async fn offload(&self, content: Value) -> Value {
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

    /// Ends an execution the kernel is not running: no outputs, no reply.
    async fn finish_unrun(&self, exec: &Execution, state: State, reason: EndReason) {
        let end = Finished {
            state,
            reason: Some(reason),
            outputs: Outputs::default(),
            execution_count: None,
            error: None,
        };
        self.finish_row(&exec.id, end).await;
    }

    /// Commits the final state, then announces it and wakes waiters.
    async fn finish_row(&self, id: &str, end: Finished) {
        let Finished {
            state,
            reason,
            mut outputs,
            execution_count: count,
            error,
        } = end;
        let error = error.or_else(|| {
            reason
                .filter(|_| state == State::Failed)
                .map(|r| json!({"ename": "ExecutionFailed", "evalue": r.as_str(), "traceback": []}))
        });
        let truncated = outputs.truncation();
        if let Some(t) = &truncated {
            let note = super::outputs::truncation_note(t);
            self.deps.bus.publish("output", Some(id), json!({"output": note}));
            outputs.push_note(note);
            self.deps.output_stats.note(t);
            warn!(execution = %id, kept = t.kept_bytes, dropped = t.dropped_bytes, reason = %t.reason, "outputs truncated");
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
        let mut committed = None;
        match self.deps.writer.finish_returning(id, record).await {
            Ok(Some(row)) => {
                committed = Some(Arc::new(row));
                let timeline = self.deps.stages.committed(id);
                let seq = self.deps.bus.publish(
                    "finished",
                    Some(id),
                    json!({"state": state, "reason": reason, "execution_count": count, "error": error}),
                );
                self.deps.writer.set_last_seq(id, seq);
                let steps_us = timeline
                    .as_ref()
                    .map(super::stages::Timeline::describe)
                    .unwrap_or_default();
                info!(execution = %id, %state, reason = reason.map_or("", EndReason::as_str), steps_us, "finished");
            }
            Ok(None) => {}
            Err(e) => warn!(execution = %id, error = %e, "recording the final state"),
        }
        self.deps.activity.touch();
        self.deps.completions.finished(
            id,
            super::completion::Done {
                at: std::time::Instant::now(),
                execution: committed,
            },
        );
    }

    async fn on_kernel_death(&mut self, why: &str) {
        warn!(why, "kernel died");
        self.set_kernel(KernelState::Dead);
        self.end_current(State::Failed, EndReason::KernelDied).await;
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

    async fn on_shutdown_deadline(&mut self) {
        if self.current.is_some() {
            let _ = self.interrupt_kernel().await;
            self.end_current(State::Failed, EndReason::Interrupted).await;
        }
    }
}

/// Answers a command that came while the warmup runs (a claim taken
/// before it ended): the kernel is not the session's yet.
fn refuse_during_warmup(cmd: Command) {
    let err = || ControlError::Failed("the pool's warmup is still running in this kernel".into());
    match cmd {
        Command::Cancel { reply, .. } => drop(reply.send(Err(err()))),
        Command::Interrupt(reply) | Command::Restart(reply) => drop(reply.send(Err(err()))),
        Command::Forward(_, msg) => {
            warn!(msg_type = %msg.header.msg_type, "a client's message came during the warmup; dropped")
        }
        Command::Shutdown(_) => {}
    }
}

/// The `execute_request` for a queued execution: the sidecar's own, or the
/// one a Jupyter client sent, with its header (so the kernel's messages
/// name the client's `msg_id` as parent), metadata and options.
fn execute_request(
    client: &KernelClient,
    exec: &Execution,
    sidecar_answers_input: bool,
) -> crate::jupyter::Message {
    match &exec.client_request {
        None => client.request(
            "execute_request",
            json!({
                "code": exec.code, "silent": false, "store_history": true,
                "user_expressions": {}, "allow_stdin": sidecar_answers_input, "stop_on_error": false,
            }),
        ),
        Some(r) => {
            let mut msg = client.request("execute_request", json!({}));
            msg.header = r.header.clone();
            msg.header.msg_type = "execute_request".into();
            msg.metadata = if r.metadata.is_object() {
                r.metadata.clone()
            } else {
                json!({})
            };
            let mut content = match &r.content {
                Value::Object(o) => o.clone(),
                _ => serde_json::Map::new(),
            };
            content.insert("code".into(), json!(exec.code));
            msg.content = Value::Object(content);
            msg
        }
    }
}

/// What the kernel says of a request it aborts: busy, an `aborted` reply, idle.
fn aborted_reply(request: &crate::store::ClientRequest, session: &str) -> Vec<KernelMessage> {
    let parent = serde_json::to_value(&request.header).unwrap_or_else(|_| json!({}));
    let message = |channel, msg_type: &str, content: Value| {
        let mut msg = crate::jupyter::Message::new(msg_type, content, session);
        msg.parent_header = parent.clone();
        KernelMessage { channel, msg }
    };
    let mut reply = message(Channel::Shell, "execute_reply", json!({"status": "aborted"}));
    reply.msg.metadata = json!({"status": "aborted"});
    vec![
        message(Channel::Iopub, "status", json!({"execution_state": "busy"})),
        reply,
        message(Channel::Iopub, "status", json!({"execution_state": "idle"})),
    ]
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

type Taken = Result<Result<Execution, StoreError>, oneshot::error::RecvError>;

async fn next_taken(take: &mut Option<(String, Taking)>) -> Taken {
    match take {
        Some((_, rx)) => rx.await,
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
            stages: Arc::default(),
            work: Arc::default(),
            activity: Arc::default(),
            output_stats: Arc::default(),
            dropped: Arc::default(),
            root: Arc::new(crate::confined::Root::open(&cfg.workspace).unwrap()),
            channels: crate::sidecar::channels::Hub::new(Default::default()),
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
