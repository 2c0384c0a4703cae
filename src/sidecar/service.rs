//! The sidecar's operations, shared by the HTTP routes and the MCP tools.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::completion::{Completion, Completions};
use super::control::{CancelOutcome, Command, ControlError, KernelStatus};
use super::stages::{Stage, Stages, Timeline};
use super::{Activity, Config, OutputStats};
use crate::events::Bus;
use crate::sidecar_api;
use crate::store::{
    EnqueueOutcome, Execution, ListQuery, NewExecution, Page, Reader, State, StoreError, Writer,
};

#[derive(Debug, Clone, Default)]
pub struct SubmitRequest {
    pub code: String,
    pub key: Option<String>,
    pub notebook: Option<String>,
    pub cell_id: Option<String>,
    pub timeout_s: Option<f64>,
    /// A Jupyter client's `execute_request`, when it came over the channels WebSocket.
    pub client_request: Option<crate::store::ClientRequest>,
}

/// What a submit did.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub execution: Execution,
    /// False: the key was used before and this is the first execution with it.
    pub created: bool,
    /// The reused key's first execution ran other code than this request's.
    pub code_differs: bool,
    /// A new execution tied to a notebook cell: the write of its outputs
    /// into that cell, which the notebook sync started at the commit.
    pub written: Option<crate::notebook::sync::Written>,
}

/// Called with each new execution tied to a notebook cell once its row is
/// durable, whoever submitted it (HTTP, MCP): starts the write of its
/// outputs into the cell when it finishes ([`crate::notebook::NotebookSync`]).
pub type NotebookHook = Box<dyn Fn(&Execution) -> Option<crate::notebook::sync::Written> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("the sidecar is shutting down and accepts no new executions")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A new execution's id.
fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Longest wait for an execution to finish, in seconds.
pub const MAX_WAIT_S: f64 = 3600.0;

pub struct Service {
    pub cfg: Config,
    pub writer: Writer,
    pub reader: Reader,
    pub bus: Arc<Bus>,
    pub completions: Arc<Completions>,
    /// Where each open execution's time goes.
    pub stages: Arc<Stages>,
    /// Woken after each enqueue commit that no take was handed.
    pub work: Arc<Notify>,
    pub commands: mpsc::Sender<Command>,
    pub kernel: watch::Receiver<KernelStatus>,
    pub ready: watch::Receiver<bool>,
    /// A warm pod's warmup: its state, set by the kernel actor, and its code.
    pub warmup: Arc<super::warmup::WarmupSlot>,
    /// The workspace, opened once: every file the sidecar serves, deletes
    /// or indexes is reached through it (`confined`).
    pub root: Arc<crate::confined::Root>,
    /// Which notebooks reference which assets.
    pub assets: Arc<crate::assets::AssetIndex>,
    /// Taken by every notebook write the sidecar makes and by asset deletes,
    /// so a delete never races a save that references the asset.
    pub workspace_lock: tokio::sync::Mutex<()>,
    /// Kernel frames dropped for bad signatures or framing.
    pub dropped: Arc<AtomicU64>,
    pub output_stats: Arc<OutputStats>,
    pub activity: Arc<Activity>,
    /// The kernel's messages for the Jupyter clients of `/v1/kernel/channels`.
    pub channels: Arc<super::channels::Hub>,
    /// Set once, by the notebook sync.
    notebook_hook: std::sync::OnceLock<NotebookHook>,
    shutting_down: AtomicBool,
}

impl Service {
    pub fn new(
        cfg: Config,
        writer: Writer,
        reader: Reader,
        bus: Arc<Bus>,
        commands: mpsc::Sender<Command>,
        kernel: watch::Receiver<KernelStatus>,
        ready: watch::Receiver<bool>,
    ) -> std::io::Result<Self> {
        let root = Arc::new(crate::confined::Root::open(&cfg.workspace)?);
        Ok(Service {
            assets: crate::assets::AssetIndex::new(root.clone()),
            root,
            workspace_lock: tokio::sync::Mutex::new(()),
            cfg,
            writer,
            reader,
            bus,
            completions: Arc::default(),
            stages: Arc::default(),
            work: Arc::default(),
            commands,
            kernel,
            ready,
            warmup: Arc::default(),
            dropped: Arc::new(AtomicU64::new(0)),
            output_stats: Arc::default(),
            activity: Arc::default(),
            channels: super::channels::Hub::new(super::channels::HubConfig::default()),
            notebook_hook: std::sync::OnceLock::new(),
            shutting_down: AtomicBool::new(false),
        })
    }

    pub fn touch(&self) {
        self.activity.touch();
    }

    pub fn last_activity(&self) -> String {
        self.activity.last()
    }

    /// Sets the hook every new notebook-cell execution goes to; false (and
    /// the first one kept) when one was set before.
    pub fn on_notebook_execution(&self, hook: NotebookHook) -> bool {
        self.notebook_hook.set(hook).is_ok()
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    pub fn validate(&self, req: &SubmitRequest) -> Result<(), SubmitError> {
        if req.code.len() > self.cfg.max_code_bytes {
            return Err(SubmitError::Invalid {
                field: "code",
                message: format!(
                    "{} bytes, over the limit of {}",
                    req.code.len(),
                    self.cfg.max_code_bytes
                ),
            });
        }
        if let Some(k) = &req.key {
            if k.is_empty() || k.len() > 256 {
                return Err(SubmitError::Invalid {
                    field: "key",
                    message: "must be 1 to 256 characters".into(),
                });
            }
        }
        if let Some(t) = req.timeout_s {
            if !(t.is_finite() && t > 0.0) {
                return Err(SubmitError::Invalid {
                    field: "timeout_s",
                    message: "must be a positive number of seconds".into(),
                });
            }
        }
        if let Some(nb) = &req.notebook {
            crate::notebook::path::notebook(nb).map_err(|e| SubmitError::Invalid {
                field: "notebook",
                message: e.to_string(),
            })?;
        }
        if let Some(id) = &req.cell_id {
            if !crate::notebook::model::is_valid_cell_id(id) {
                return Err(SubmitError::Invalid {
                    field: "cell_id",
                    message: "must be 1 to 64 characters of a-z, A-Z, 0-9, - and _ (nbformat 4.5)".into(),
                });
            }
            if req.notebook.is_none() {
                return Err(SubmitError::Invalid {
                    field: "cell_id",
                    message: "needs the notebook it belongs to".into(),
                });
            }
        }
        Ok(())
    }

    /// Enqueues durably. A key used before returns the first execution made
    /// with it, saying so (and whether its code differs from this request's).
    pub async fn submit(&self, req: SubmitRequest) -> Result<Submitted, SubmitError> {
        self.submit_as(new_id(), req).await
    }

    /// Submits, then waits up to `wait` for the execution to be final (the
    /// first execution of a reused key included): one round trip for a
    /// client that wants the result. The wait is registered before the
    /// enqueue, so a finish right after the commit is not missed.
    pub async fn submit_and_wait(
        &self,
        req: SubmitRequest,
        wait: Duration,
    ) -> Result<Submitted, SubmitError> {
        if wait.is_zero() {
            return self.submit(req).await;
        }
        let id = new_id();
        let rx = self.completions.watch(&id);
        let mut done = match self.submit_as(id.clone(), req).await {
            Ok(d) => d,
            Err(e) => {
                self.unwatch(rx);
                return Err(e);
            }
        };
        if !done.created {
            self.unwatch(rx);
            if !done.execution.state.is_final() {
                if let Some(e) = self.wait(&done.execution.id, wait).await? {
                    done.execution = e;
                }
            }
            return Ok(done);
        }
        if let Some(e) = self.wait_watched(&id, rx, wait).await? {
            done.execution = e;
        }
        Ok(done)
    }

    async fn submit_as(&self, id: String, req: SubmitRequest) -> Result<Submitted, SubmitError> {
        let mut timeline = Timeline::default();
        timeline.mark(Stage::Accepted, std::time::Instant::now());
        self.validate(&req)?;
        if self.is_shutting_down() {
            return Err(SubmitError::ShuttingDown);
        }
        let max = self.cfg.max_timeout.as_secs_f64();
        let timeout_s = req
            .timeout_s
            .or(self.cfg.default_timeout.map(|d| d.as_secs_f64()))
            .map(|t| t.min(max));
        let code = req.code.clone();
        let new = NewExecution {
            id,
            key: req.key,
            code: req.code,
            notebook: req.notebook,
            cell_id: req.cell_id,
            timeout_s,
            created_at: crate::util::now_rfc3339(),
            client_request: req.client_request,
        };
        self.touch();
        let enqueued = self.writer.enqueue_for_handoff(new).await?;
        match enqueued.outcome {
            EnqueueOutcome::Created(e) => {
                timeline.mark(Stage::Enqueued, std::time::Instant::now());
                self.stages.open(&e.id, timeline);
                let seq = self.bus.publish(
                    "queued",
                    Some(&e.id),
                    json!({"key": e.key, "notebook": e.notebook, "cell_id": e.cell_id}),
                );
                self.writer.set_last_seq(&e.id, seq);
                // Before the executor is woken: the write-back waits from the start.
                let written = match (&e.notebook, &e.cell_id, self.notebook_hook.get()) {
                    (Some(_), Some(_), Some(hook)) => hook(&e),
                    _ => None,
                };
                // Dispatched in its enqueue's commit for the idle kernel
                // actor: handed over once announced; else the actor is woken.
                match enqueued.handoff {
                    Some(h) => h.send(),
                    None => self.work.notify_one(),
                }
                Ok(Submitted {
                    execution: e,
                    created: true,
                    code_differs: false,
                    written,
                })
            }
            EnqueueOutcome::Existing(e) => {
                let code_differs = e.code != code;
                if code_differs {
                    tracing::warn!(execution = %e.id, "a reused key came with different code; the first execution stands");
                }
                Ok(Submitted {
                    execution: e,
                    created: false,
                    code_differs,
                    written: None,
                })
            }
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<Execution>, StoreError> {
        self.reader.get(id).await
    }

    /// A client's wait in seconds as a duration, capped at [`MAX_WAIT_S`]
    /// (a longer wait should be repeated); one rule for HTTP and MCP.
    pub fn wait_duration(seconds: f64) -> Result<Duration, &'static str> {
        if seconds.is_finite() && seconds >= 0.0 {
            Ok(Duration::from_secs_f64(seconds.min(MAX_WAIT_S)))
        } else {
            Err("must be a non-negative number of seconds")
        }
    }

    /// The execution once final, or as it is after `wait`.
    pub async fn wait(&self, id: &str, wait: Duration) -> Result<Option<Execution>, StoreError> {
        let rx = self.completions.watch(id);
        let first = self.reader.get(id).await?;
        match &first {
            None => {
                self.unwatch(rx);
                return Ok(None);
            }
            Some(e) if e.state.is_final() || wait.is_zero() => return Ok(first),
            Some(_) => {}
        }
        self.wait_watched(id, rx, wait).await
    }

    /// Ends a wait: its registration goes once nobody else watches it.
    fn unwatch(&self, rx: Completion) {
        drop(rx);
        self.completions.forget_unwatched();
    }

    /// Waits on a registered completion; the final row it carried, else
    /// the row as it is then.
    async fn wait_watched(
        &self,
        id: &str,
        mut rx: Completion,
        wait: Duration,
    ) -> Result<Option<Execution>, StoreError> {
        let done = match tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await {
            Ok(Ok(done)) => done.clone(),
            _ => None,
        };
        self.unwatch(rx);
        let e = match done.as_ref().and_then(|d| d.execution.as_deref()) {
            Some(e) => Some(e.clone()),
            None => self.reader.get(id).await?,
        };
        if let Some(d) = done {
            self.stages.answered(d.at);
        }
        Ok(e)
    }

    /// One page of execution summaries, newest first (HTTP and MCP alike).
    pub async fn list(&self, q: ListQuery) -> Result<Page, StoreError> {
        self.reader.summaries(q).await
    }

    async fn command<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, ControlError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| ControlError::Stopped)?;
        rx.await.map_err(|_| ControlError::Stopped)
    }

    pub async fn cancel(&self, id: &str) -> Result<CancelOutcome, ControlError> {
        let id = id.to_string();
        self.touch();
        self.command(|reply| Command::Cancel { id, reply }).await?
    }

    pub async fn interrupt(&self) -> Result<(), ControlError> {
        self.touch();
        self.command(Command::Interrupt).await?
    }

    /// Sends a Jupyter client's message to the kernel as it is.
    pub async fn forward(
        &self,
        channel: crate::jupyter::Channel,
        msg: crate::jupyter::Message,
    ) -> Result<(), ControlError> {
        self.touch();
        self.commands
            .send(Command::Forward(channel, Box::new(msg)))
            .await
            .map_err(|_| ControlError::Stopped)
    }

    pub async fn restart(&self) -> Result<(), ControlError> {
        self.touch();
        self.command(Command::Restart).await?
    }

    pub fn kernel_status(&self) -> KernelStatus {
        let mut k = self.kernel.borrow().clone();
        k.dropped_messages = self.dropped.load(Ordering::Relaxed);
        k
    }

    /// Ready means the kernel answers: not while it starts, restarts or is
    /// dead (the kubelet takes the pod out of its Service and the operator
    /// says why), nor while the sidecar stops, nor before a warm pod's
    /// warmup finished or after it failed.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
            && !self.is_shutting_down()
            && self.kernel.borrow().state.answers()
            && sidecar_api::Warmup::allows_ready(self.warmup.state().as_ref())
    }

    /// Why the sidecar is not ready, in a few words (the body of a 503 `/readyz`).
    pub fn not_ready_reason(&self) -> String {
        if self.is_shutting_down() {
            return "shutting down".into();
        }
        if let Some(w) = self.warmup.state() {
            if !sidecar_api::Warmup::allows_ready(Some(&w)) {
                return w.describe();
            }
        }
        if !*self.ready.borrow() {
            return "starting".into();
        }
        format!("kernel {:?}", self.kernel.borrow().state).to_lowercase()
    }

    /// Executions by state.
    pub async fn queue(&self) -> Result<sidecar_api::QueueCounts, StoreError> {
        let counts = self.reader.counts().await?;
        let count = |s: State| {
            counts
                .get(&s)
                .map_or(0, |n| i64::try_from(*n).unwrap_or(i64::MAX))
        };
        Ok(sidecar_api::QueueCounts {
            queued: count(State::Queued),
            running: count(State::Running),
            completed: count(State::Completed),
            failed: count(State::Failed),
            cancelled: count(State::Cancelled),
        })
    }

    /// What the operator copies into the session status.
    pub async fn status(&self) -> Result<sidecar_api::Status, StoreError> {
        let queue = self.queue().await?;
        let k = self.kernel_status();
        let mut status = sidecar_api::Status {
            kernel: sidecar_api::KernelSummary {
                state: k.state,
                restarts: i64::try_from(k.restarts).unwrap_or(i64::MAX),
            },
            busy: queue.queued + queue.running > 0,
            queue,
            last_activity: Some(self.last_activity()),
            clients: i64::try_from(self.bus.clients()).unwrap_or(i64::MAX),
            connections: self.channels.connections(),
            ready: self.is_ready(),
            events: sidecar_api::EventsSummary {
                newest_seq: self.bus.newest(),
            },
            warmup: self.warmup.state(),
            revision: String::new(),
        };
        status.revision = status.current_revision();
        Ok(status)
    }
}
