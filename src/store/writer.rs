//! The single writer: one thread owns the write connection and drains a
//! channel of operations into one transaction per batch (group commit), then
//! answers every caller of the batch. A `202` is sent only after this commit.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot, watch};

use super::model::{Execution, FinalRecord, NewExecution, State};
use super::reader::{queue_head, row_by_id, row_to_execution, UNDISPATCHED};
use super::{schema, StoreError};

/// Most operations committed in one transaction.
const MAX_BATCH: usize = 1024;

/// Most ride-along operations held before they get a commit of their own.
const MAX_HELD: usize = 4096;

/// The batch limit; `NBO_WRITER_MAX_BATCH=1` gives one commit per operation,
/// which the enqueue benchmark uses as its baseline.
fn max_batch() -> usize {
    std::env::var("NBO_WRITER_MAX_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(MAX_BATCH)
}

#[derive(Debug, Clone)]
pub enum EnqueueOutcome {
    Created(Execution),
    /// The key was seen before: the first execution with it.
    Existing(Execution),
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Op {
    Enqueue(NewExecution, Reply<Enqueued>),
    /// Executions dispatched for a take and never handed over.
    Undispatch(Vec<String>),
    /// Record the message id before the request goes to the kernel, so a
    /// restarted sidecar knows the row may be running and never re-sends it.
    Dispatch {
        id: String,
        msg_id: String,
        reply: Reply<()>,
    },
    Start {
        id: String,
        at: String,
        reply: Reply<bool>,
    },
    Pin {
        name: String,
        pinned: bool,
        reply: Reply<()>,
    },
    Finish {
        id: String,
        record: FinalRecord,
        /// The final row, or `None` when it was final already.
        reply: Reply<Option<Execution>>,
    },
    SetLastSeq {
        id: String,
        seq: u64,
    },
    SetMeta {
        name: String,
        value: String,
        reply: Reply<()>,
    },
    Prune {
        finished_before: String,
        reply: Reply<usize>,
    },
    /// The next execution to run, dispatched as `msg_id`: the queue's head
    /// now, else the next one enqueued, dispatched in its enqueue's own
    /// transaction (one commit where there were two, and no queue read).
    Take(Take),
    /// Commit what rides along now (a running execution's start, so
    /// readers see it running).
    Flush,
    /// Commit what came before, close the connection, stop.
    Close(oneshot::Sender<()>),
}

/// What an enqueue did, and when it was dispatched in the same commit for
/// the kernel actor waiting on [`Writer::take`], the handoff to it.
pub struct Enqueued {
    pub outcome: EnqueueOutcome,
    pub handoff: Option<Handoff>,
}

/// An execution enqueued and dispatched in one commit, handed to the
/// waiting take by its enqueuer once it has announced it (so the queued
/// event comes before anything the kernel says of it); dropped unsent, it
/// is handed over then.
pub struct Handoff {
    reply: Option<Reply<Execution>>,
    execution: Option<Execution>,
    /// Weak: the writer thread makes handoffs and must not keep its own
    /// channel open.
    tx: mpsc::WeakSender<Op>,
}

impl Handoff {
    pub fn send(mut self) {
        self.hand();
    }

    fn hand(&mut self) {
        if let (Some(reply), Some(e)) = (self.reply.take(), self.execution.take()) {
            if let Err(Ok(e)) = reply.send(Ok(e)) {
                // The take was given up meanwhile: never sent, so queued again.
                undispatch_later(&self.tx, e.id);
            }
        }
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        self.hand();
    }
}

fn undispatch_later(tx: &mpsc::WeakSender<Op>, id: String) {
    let sent = match tx.upgrade() {
        Some(tx) => tx.try_send(Op::Undispatch(vec![id.clone()])).is_ok(),
        None => false,
    };
    if !sent {
        tracing::error!(execution = %id, "could not undo the dispatch of an execution never sent; it fails as unconfirmed after a restart");
    }
}

/// The answer to [`Writer::take`]: the next execution, dispatched.
pub type Taking = oneshot::Receiver<Result<Execution, StoreError>>;

/// A waiting [`Op::Take`].
struct Take {
    msg_id: String,
    reply: Reply<Execution>,
}

impl Op {
    /// Never worth a commit of its own: held until a batch with other work
    /// (or a [`Op::Flush`]) commits it. A crash loses it, which is safe: an
    /// execution's last event is best effort (the final commit clears
    /// `last_seq`, and an unknown one counts as touched), and a start is
    /// covered by the dispatch (recovery follows every dispatched row).
    fn rides_along(&self) -> bool {
        match self {
            Op::SetLastSeq { .. } => true,
            // A detached start; one its caller waits on commits at once.
            Op::Start { reply, .. } => reply.is_closed(),
            _ => false,
        }
    }

    /// Whether the operation moves an execution between states (or removes
    /// finished ones): what changes the queue counts.
    fn moves_states(&self) -> bool {
        matches!(
            self,
            Op::Enqueue(..) | Op::Start { .. } | Op::Finish { .. } | Op::Prune { .. }
        )
    }
}

/// How full the commits are: operations and enqueues per transaction.
pub struct BatchStats {
    pub ops: prometheus_client::metrics::histogram::Histogram,
    /// Only the commits that carried an enqueue.
    pub enqueues: prometheus_client::metrics::histogram::Histogram,
    pub largest: AtomicU64,
}

impl Default for BatchStats {
    fn default() -> Self {
        let buckets = || prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 11);
        BatchStats {
            ops: prometheus_client::metrics::histogram::Histogram::new(buckets()),
            enqueues: prometheus_client::metrics::histogram::Histogram::new(buckets()),
            largest: AtomicU64::new(0),
        }
    }
}

impl BatchStats {
    fn observe(&self, ops: usize, enqueues: usize) {
        self.ops.observe(ops as f64);
        if enqueues > 0 {
            self.enqueues.observe(enqueues as f64);
        }
        self.largest.fetch_max(ops as u64, Ordering::Relaxed);
    }
}

/// Handle to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Op>,
    /// Transactions committed: fewer than operations when they share one.
    commits: Arc<AtomicU64>,
    /// Operations the writer thread has taken from the channel.
    taken: Arc<AtomicU64>,
    /// Bumped after each commit that moved an execution between states.
    states: watch::Receiver<u64>,
    batches: Arc<BatchStats>,
}

impl Writer {
    /// Opens (and migrates) the database and starts the writer thread.
    pub fn open(path: &Path) -> Result<(Writer, std::thread::JoinHandle<()>), StoreError> {
        let conn = schema::open_writer(path)?;
        let (tx, rx) = mpsc::channel(8192);
        let commits = Arc::new(AtomicU64::new(0));
        let taken = Arc::new(AtomicU64::new(0));
        let (moved, states) = watch::channel(0);
        let batches = Arc::new(BatchStats::default());
        let counters = Counters {
            commits: commits.clone(),
            taken: taken.clone(),
            batches: batches.clone(),
        };
        let weak = tx.downgrade();
        let handle = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(conn, rx, max_batch(), &counters, &moved, weak))?;
        Ok((
            Writer {
                tx,
                commits,
                taken,
                states,
                batches,
            },
            handle,
        ))
    }

    /// Changes after every commit that moved an execution between states
    /// (queued, running, finished, pruned): a change of the queue counts is
    /// in the database when this fires.
    pub fn state_changes(&self) -> watch::Receiver<u64> {
        self.states.clone()
    }

    /// Transactions committed so far (`notebook_store_commits_total`).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Operations and enqueues per commit.
    pub fn batches(&self) -> &BatchStats {
        &self.batches
    }

    /// Operations sent and not yet taken by the writer thread.
    pub fn waiting(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Operations the writer thread has taken so far.
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?
    }

    /// Enqueues durably; an execution dispatched in the same commit is
    /// handed to its taker at once.
    pub async fn enqueue(&self, new: NewExecution) -> Result<EnqueueOutcome, StoreError> {
        let done = self.enqueue_for_handoff(new).await?;
        if let Some(h) = done.handoff {
            h.send();
        }
        Ok(done.outcome)
    }

    /// Enqueues durably; the caller hands a dispatched execution over.
    pub async fn enqueue_for_handoff(&self, new: NewExecution) -> Result<Enqueued, StoreError> {
        self.call(|r| Op::Enqueue(new, r)).await
    }

    /// Asks for the next execution to run, dispatched as `msg_id` before it
    /// is handed over: the queue's head, or else the next execution
    /// enqueued, dispatched in the transaction that enqueues it. The
    /// answer comes once that is committed. Dropping the receiver gives
    /// the request up; an execution handed to a dropped receiver is made
    /// undispatched again (it was never sent), so it runs next.
    pub fn take(&self, msg_id: String) -> Taking {
        let (reply, rx) = oneshot::channel();
        let op = Op::Take(Take { msg_id, reply });
        match self.tx.try_send(op) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(op)) => {
                let tx = self.tx.clone();
                tokio::spawn(async move { tx.send(op).await });
            }
            // The writer stopped: the receiver answers closed.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
        rx
    }

    /// Undoes the dispatch of an execution taken and never sent to the
    /// kernel, so it runs next; ordered after everything sent before it.
    pub fn undispatch(&self, id: String) {
        undispatch_later(&self.tx.downgrade(), id);
    }

    pub async fn dispatch(&self, id: &str, msg_id: &str) -> Result<(), StoreError> {
        let (id, msg_id) = (id.to_string(), msg_id.to_string());
        self.call(|reply| Op::Dispatch { id, msg_id, reply }).await
    }

    /// `queued → running`; false when the row was no longer queued.
    pub async fn start(&self, id: &str, at: String) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.call(|reply| Op::Start { id, at, reply }).await
    }

    /// `queued → running` without waiting for the commit: the dispatch was
    /// already durable, and the channel keeps this ahead of the final state.
    pub async fn start_detached(&self, id: &str, at: String) {
        let (reply, _) = oneshot::channel();
        let op = Op::Start {
            id: id.to_string(),
            at,
            reply,
        };
        if let Err(mpsc::error::TrySendError::Full(op)) = self.tx.try_send(op) {
            let _ = self.tx.send(op).await;
        }
    }

    /// Commits the held starts and last events now.
    pub fn flush(&self) {
        let _ = self.tx.try_send(Op::Flush);
    }

    /// Writes the final state with outputs, count, error and time; false when
    /// the row was already final.
    pub async fn finish(&self, id: &str, record: FinalRecord) -> Result<bool, StoreError> {
        Ok(self.finish_returning(id, record).await?.is_some())
    }

    /// [`Writer::finish`], answering with the final row as committed (what
    /// the waiters are answered with, without reading it again).
    pub async fn finish_returning(
        &self,
        id: &str,
        record: FinalRecord,
    ) -> Result<Option<Execution>, StoreError> {
        let id = id.to_string();
        self.call(|reply| Op::Finish { id, record, reply }).await
    }

    /// Best effort: which event sequence number last touched this execution.
    pub fn set_last_seq(&self, id: &str, seq: u64) {
        let _ = self.tx.try_send(Op::SetLastSeq {
            id: id.to_string(),
            seq,
        });
    }

    pub async fn set_meta(&self, name: &str, value: String) -> Result<(), StoreError> {
        let name = name.to_string();
        self.call(|reply| Op::SetMeta { name, value, reply }).await
    }

    pub async fn pin(&self, name: &str, pinned: bool) -> Result<(), StoreError> {
        let name = name.to_string();
        self.call(|reply| Op::Pin { name, pinned, reply }).await
    }

    pub async fn prune(&self, finished_before: String) -> Result<usize, StoreError> {
        self.call(|reply| Op::Prune {
            finished_before,
            reply,
        })
        .await
    }

    /// Stops the writer once every operation sent so far is committed, and
    /// closes the database cleanly.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Op::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// What the writer thread counts for `/metrics`.
struct Counters {
    commits: Arc<AtomicU64>,
    taken: Arc<AtomicU64>,
    batches: Arc<BatchStats>,
}

fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Op>,
    max_batch: usize,
    counters: &Counters,
    moved: &watch::Sender<u64>,
    weak: mpsc::WeakSender<Op>,
) {
    let Counters {
        commits,
        taken,
        batches,
    } = counters;
    let mut batch = Vec::with_capacity(max_batch);
    let mut closed = None;
    let mut waiting: Option<Take> = None;
    // Ops that ride along with the next real commit, oldest first.
    let mut held: Vec<Op> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        batch.append(&mut held);
        while let Some(op) = next.take() {
            taken.fetch_add(1, Ordering::Relaxed);
            if let Op::Close(done) = op {
                closed = Some(done);
                break;
            }
            batch.push(op);
            if batch.len() < max_batch {
                next = rx.try_recv().ok();
            }
        }
        // A take with nothing queued only waits: it needs no commit.
        if batch
            .iter()
            .all(|op| op.rides_along() || matches!(op, Op::Take(_)))
        {
            let mut rest = Vec::with_capacity(batch.len());
            for op in batch.drain(..) {
                match op {
                    Op::Take(t) if !has_head(&conn) => waiting = Some(t),
                    op => rest.push(op),
                }
            }
            batch = rest;
        }
        if closed.is_none() && batch.len() < MAX_HELD && batch.iter().all(Op::rides_along) {
            held.append(&mut batch);
            continue;
        }
        let moves_states = batch.iter().any(Op::moves_states);
        let ops = batch.len();
        let enqueues = batch.iter().filter(|op| matches!(op, Op::Enqueue(..))).count();
        if commit_batch(&mut conn, &mut batch, &mut waiting, &weak) {
            commits.fetch_add(1, Ordering::Relaxed);
            batches.observe(ops, enqueues);
            if moves_states {
                moved.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
        if closed.is_some() {
            break;
        }
    }
    if !held.is_empty() && commit_batch(&mut conn, &mut held, &mut waiting, &weak) {
        commits.fetch_add(1, Ordering::Relaxed);
    }
    rx.close();
    if let Err((_, e)) = conn.close() {
        tracing::error!(error = %e, "closing the database");
    }
    if let Some(done) = closed {
        let _ = done.send(());
    }
}

/// Answers deferred until the transaction commits.
#[allow(clippy::large_enum_variant)] // short-lived, one per operation in a batch
enum Pending {
    /// With the waiting take the new execution was dispatched for, if any.
    Enqueue(Reply<Enqueued>, Result<EnqueueOutcome, StoreError>, Option<Take>),
    Unit(Reply<()>, Result<(), StoreError>),
    Bool(Reply<bool>, Result<bool, StoreError>),
    Count(Reply<usize>, Result<usize, StoreError>),
    Row(Reply<Option<Execution>>, Result<Option<Execution>, StoreError>),
    /// A take served: the execution, dispatched.
    Taken(Reply<Execution>, Execution),
}

/// Commits the batch in one transaction; false when it failed (or was empty).
fn commit_batch(
    conn: &mut Connection,
    batch: &mut Vec<Op>,
    waiting: &mut Option<Take>,
    tx: &mpsc::WeakSender<Op>,
) -> bool {
    if batch.is_empty() {
        return false;
    }
    let mut pending = Vec::with_capacity(batch.len());
    let outcome = (|| -> Result<(), rusqlite::Error> {
        let mut txn = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for op in batch.drain(..) {
            // A savepoint per operation: one failing op does not undo the others.
            let sp = txn.savepoint()?;
            let p = match op {
                Op::Take(take) => take_next(&sp, take, waiting),
                Op::Enqueue(new, reply) => {
                    let r = enqueue(&sp, &new);
                    let take = match &r {
                        Ok(EnqueueOutcome::Created(e)) => hand_over(&sp, e, waiting),
                        _ => None,
                    };
                    Some(Pending::Enqueue(reply, r, take))
                }
                Op::Undispatch(ids) => {
                    undispatch(&sp, &ids);
                    // A take that waits meanwhile gets the head, which may be one of these.
                    waiting.take().and_then(|t| take_next(&sp, t, waiting))
                }
                op => apply(&sp, op),
            };
            let ok = match &p {
                Some(Pending::Enqueue(_, r, _)) => r.is_ok(),
                Some(Pending::Unit(_, r)) => r.is_ok(),
                Some(Pending::Bool(_, r)) => r.is_ok(),
                Some(Pending::Count(_, r)) => r.is_ok(),
                Some(Pending::Row(_, r)) => r.is_ok(),
                Some(Pending::Taken(..)) | None => true,
            };
            if ok {
                sp.commit()?;
            } else {
                drop(sp); // rolls back
            }
            pending.extend(p);
        }
        txn.commit()
    })();
    match outcome {
        Ok(()) => {
            let mut unsent = Vec::new();
            for p in pending {
                match p {
                    Pending::Enqueue(r, v, take) => {
                        let v = v.map(|outcome| {
                            let handoff = match (&outcome, take) {
                                (EnqueueOutcome::Created(e), Some(t)) => Some(Handoff {
                                    reply: Some(t.reply),
                                    execution: Some(e.clone()),
                                    tx: tx.clone(),
                                }),
                                _ => None,
                            };
                            Enqueued { outcome, handoff }
                        });
                        // An enqueuer that went away hands over nonetheless
                        // (its dropped answer drops the handoff).
                        drop(r.send(v));
                    }
                    Pending::Unit(r, v) => drop(r.send(v)),
                    Pending::Bool(r, v) => drop(r.send(v)),
                    Pending::Count(r, v) => drop(r.send(v)),
                    Pending::Row(r, v) => drop(r.send(v)),
                    Pending::Taken(r, e) => {
                        if let Err(Ok(e)) = r.send(Ok(e)) {
                            unsent.push(e.id);
                        }
                    }
                }
            }
            for id in unsent {
                undispatch_later(tx, id);
            }
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "commit failed; the batch is not acknowledged");
            let err = || StoreError::Unavailable(e.to_string());
            for p in pending {
                match p {
                    Pending::Enqueue(r, _, take) => {
                        drop(r.send(Err(err())));
                        if let Some(t) = take {
                            drop(t.reply.send(Err(err())));
                        }
                    }
                    Pending::Unit(r, _) => drop(r.send(Err(err()))),
                    Pending::Bool(r, _) => drop(r.send(Err(err()))),
                    Pending::Count(r, _) => drop(r.send(Err(err()))),
                    Pending::Row(r, _) => drop(r.send(Err(err()))),
                    Pending::Taken(r, _) => drop(r.send(Err(err()))),
                }
            }
            batch.clear();
            false
        }
    }
}

/// Whether an execution waits to be dispatched (a read, outside any write).
fn has_head(conn: &Connection) -> bool {
    conn.prepare_cached(&format!("SELECT 1 FROM executions WHERE {UNDISPATCHED} LIMIT 1"))
        .and_then(|mut st| st.exists([]))
        // Unknown: the take goes through the batch, which reports the error.
        .unwrap_or(true)
}

/// A take: the queue's head, dispatched now; with none queued, the take
/// waits for the next enqueue (a newer take replaces an older one).
fn take_next(conn: &Connection, take: Take, waiting: &mut Option<Take>) -> Option<Pending> {
    if take.reply.is_closed() {
        return None;
    }
    match queue_head(conn) {
        Ok(Some(e)) => match dispatch(conn, &e.id, e.request_msg_id(&take.msg_id)) {
            Ok(()) => Some(Pending::Taken(take.reply, e)),
            Err(err) => {
                drop(take.reply.send(Err(err)));
                None
            }
        },
        Ok(None) => {
            *waiting = Some(take);
            None
        }
        Err(err) => {
            drop(take.reply.send(Err(err.into())));
            None
        }
    }
}

/// A new execution is dispatched for the waiting take, if one still waits;
/// the enqueuer hands it over ([`Handoff`]).
fn hand_over(conn: &Connection, e: &Execution, waiting: &mut Option<Take>) -> Option<Take> {
    let take = waiting.take().filter(|t| !t.reply.is_closed())?;
    match dispatch(conn, &e.id, e.request_msg_id(&take.msg_id)) {
        Ok(()) => Some(take),
        Err(err) => {
            drop(take.reply.send(Err(err)));
            None
        }
    }
}

/// Executions dispatched for a take that never got them: queued and
/// undispatched again (they were never sent to the kernel).
fn undispatch(conn: &Connection, ids: &[String]) {
    for id in ids {
        if let Err(e) = exec(
            conn,
            "UPDATE executions SET msg_id = NULL WHERE id = ?1 AND state = 'queued'",
            [id],
        ) {
            tracing::error!(execution = %id, error = %e, "undoing a dispatch never sent");
        }
    }
}

fn dispatch(conn: &Connection, id: &str, msg_id: &str) -> Result<(), StoreError> {
    exec(
        conn,
        "UPDATE executions SET msg_id = ?2 WHERE id = ?1 AND state = 'queued'",
        params![id, msg_id],
    )
    .map(drop)
    .map_err(StoreError::from)
}

fn apply(conn: &Connection, op: Op) -> Option<Pending> {
    match op {
        Op::Dispatch { id, msg_id, reply } => Some(Pending::Unit(reply, dispatch(conn, &id, &msg_id))),
        Op::Start { id, at, reply } => Some(Pending::Bool(
            reply,
            transition(conn, &id, State::Running, |c| {
                exec(
                    c,
                    "UPDATE executions SET state = 'running', started_at = ?2 WHERE id = ?1 AND state = 'queued'",
                    params![id, at],
                )
            }),
        )),
        Op::Finish { id, record, reply } => {
            let sources: Vec<&str> = State::sources_of(record.state)
                .iter()
                .map(|s| s.as_str())
                .collect();
            let outputs = serde_json::to_string(&record.outputs).unwrap_or_else(|_| "[]".into());
            let error = record.error.as_ref().map(|e| e.to_string());
            let truncated = record
                .truncated
                .as_ref()
                .and_then(|t| serde_json::to_string(t).ok());
            let sql = format!(
                "UPDATE executions SET state = ?2, reason = ?3, outputs = ?4, execution_count = ?5,
                 error = ?6, finished_at = ?7, started_at = COALESCE(started_at, ?7), truncated = ?8,
                 last_seq = NULL
                 WHERE id = ?1 AND state IN ({})",
                sources
                    .iter()
                    .map(|s| format!("'{s}'"))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let r = transition(conn, &id, record.state, |c| {
                exec(
                    c,
                    &sql,
                    params![
                        id,
                        record.state.as_str(),
                        record.reason.map(super::EndReason::as_str),
                        outputs,
                        record.execution_count,
                        error,
                        record.finished_at,
                        truncated
                    ],
                )
            });
            let r = r.and_then(|moved| {
                if !moved {
                    return Ok(None);
                }
                Ok(row_by_id(conn, &id)?)
            });
            Some(Pending::Row(reply, r))
        }
        Op::SetLastSeq { id, seq } => {
            let _ = exec(
                conn,
                "UPDATE executions SET last_seq = MAX(COALESCE(last_seq, 0), ?2) WHERE id = ?1",
                params![id, seq as i64],
            );
            None
        }
        Op::SetMeta { name, value, reply } => {
            let r = conn
                .execute(
                    "INSERT INTO meta(name, value) VALUES (?1, ?2)
                     ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                    params![name, value],
                )
                .map(drop)
                .map_err(StoreError::from);
            Some(Pending::Unit(reply, r))
        }
        Op::Close(_) | Op::Flush => None,
        // Taken apart by the batch, which holds the waiting take.
        Op::Take(take) => {
            drop(
                take.reply
                    .send(Err(StoreError::Unavailable("a take outside a batch".into()))),
            );
            None
        }
        Op::Enqueue(new, reply) => Some(Pending::Enqueue(reply, enqueue(conn, &new), None)),
        Op::Undispatch(ids) => {
            undispatch(conn, &ids);
            None
        }
        Op::Pin { name, pinned, reply } => {
            let r = if pinned {
                conn.execute(
                    "INSERT OR IGNORE INTO asset_pins(name, pinned_at) VALUES (?1, ?2)",
                    params![name, crate::util::now_rfc3339()],
                )
            } else {
                conn.execute("DELETE FROM asset_pins WHERE name = ?1", params![name])
            };
            Some(Pending::Unit(reply, r.map(drop).map_err(StoreError::from)))
        }
        Op::Prune {
            finished_before,
            reply,
        } => {
            let r = conn
                .execute(
                    "DELETE FROM executions WHERE state IN ('completed','failed','cancelled')
                     AND finished_at < ?1",
                    params![finished_before],
                )
                .map_err(StoreError::from);
            Some(Pending::Count(reply, r))
        }
    }
}

/// One statement, prepared once per connection (the hot path runs the
/// same few statements for every execution).
fn exec(conn: &Connection, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(p)
}

/// Runs an update guarded by the allowed source states; `Ok(false)` when the
/// row exists but was in no state that may become `to`.
fn transition(
    conn: &Connection,
    id: &str,
    to: State,
    update: impl FnOnce(&Connection) -> rusqlite::Result<usize>,
) -> Result<bool, StoreError> {
    if update(conn)? == 1 {
        return Ok(true);
    }
    let state: Option<String> = conn
        .query_row("SELECT state FROM executions WHERE id = ?1", [id], |r| r.get(0))
        .optional()?;
    match state {
        None => Err(StoreError::NotFound(id.to_string())),
        Some(s) if State::parse(&s).is_some_and(State::is_final) => Ok(false),
        Some(s) => Err(StoreError::BadTransition {
            id: id.to_string(),
            state: s,
            to: to.to_string(),
        }),
    }
}

fn enqueue(conn: &Connection, new: &NewExecution) -> Result<EnqueueOutcome, StoreError> {
    if let Some(key) = &new.key {
        let existing = conn
            .prepare_cached(&format!(
                "SELECT {} FROM executions WHERE key = ?1",
                super::reader::COLUMNS
            ))?
            .query_row([key], row_to_execution)
            .optional()?;
        if let Some(e) = existing {
            return Ok(EnqueueOutcome::Existing(e));
        }
    }
    exec(
        conn,
        "INSERT INTO executions(id, key, code, notebook, cell_id, state, timeout_s, created_at, client_request)
         VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?7, ?8)",
        params![
            new.id,
            new.key,
            new.code,
            new.notebook,
            new.cell_id,
            new.timeout_s,
            new.created_at,
            new.client_request
                .as_ref()
                .and_then(|r| serde_json::to_string(r).ok()),
        ],
    )?;
    Ok(EnqueueOutcome::Created(Execution {
        id: new.id.clone(),
        key: new.key.clone(),
        state: State::Queued,
        reason: None,
        code: new.code.clone(),
        notebook: new.notebook.clone(),
        cell_id: new.cell_id.clone(),
        outputs: Vec::new(),
        execution_count: None,
        error: None,
        timeout_s: new.timeout_s,
        created_at: new.created_at.clone(),
        started_at: None,
        finished_at: None,
        truncated: None,
        client_request: new.client_request.clone(),
    }))
}
