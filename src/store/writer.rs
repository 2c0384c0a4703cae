//! The single writer: one thread owns the write connection and drains a
//! channel of operations into one transaction per batch (group commit), then
//! answers every caller of the batch. A `202` is sent only after this commit.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot, watch};

use super::model::{Execution, FinalRecord, NewExecution, State};
use super::reader::row_to_execution;
use super::{schema, StoreError};

/// Most operations committed in one transaction.
const MAX_BATCH: usize = 1024;

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
    Enqueue(NewExecution, Reply<EnqueueOutcome>),
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
        reply: Reply<bool>,
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
    /// Commit what came before, close the connection, stop.
    Close(oneshot::Sender<()>),
}

impl Op {
    /// Whether the operation moves an execution between states (or removes
    /// finished ones): what changes the queue counts.
    fn moves_states(&self) -> bool {
        matches!(
            self,
            Op::Enqueue(..) | Op::Start { .. } | Op::Finish { .. } | Op::Prune { .. }
        )
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
}

impl Writer {
    /// Opens (and migrates) the database and starts the writer thread.
    pub fn open(path: &Path) -> Result<(Writer, std::thread::JoinHandle<()>), StoreError> {
        let conn = schema::open_writer(path)?;
        let (tx, rx) = mpsc::channel(8192);
        let commits = Arc::new(AtomicU64::new(0));
        let taken = Arc::new(AtomicU64::new(0));
        let (moved, states) = watch::channel(0);
        let counters = (commits.clone(), taken.clone());
        let handle = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(conn, rx, max_batch(), &counters.0, &counters.1, &moved))?;
        Ok((
            Writer {
                tx,
                commits,
                taken,
                states,
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

    pub async fn enqueue(&self, new: NewExecution) -> Result<EnqueueOutcome, StoreError> {
        self.call(|r| Op::Enqueue(new, r)).await
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

    /// Writes the final state with outputs, count, error and time; false when
    /// the row was already final.
    pub async fn finish(&self, id: &str, record: FinalRecord) -> Result<bool, StoreError> {
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

fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Op>,
    max_batch: usize,
    commits: &AtomicU64,
    taken: &AtomicU64,
    moved: &watch::Sender<u64>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut closed = None;
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
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
        let moves_states = batch.iter().any(Op::moves_states);
        if commit_batch(&mut conn, &mut batch) {
            commits.fetch_add(1, Ordering::Relaxed);
            if moves_states {
                moved.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
        if closed.is_some() {
            break;
        }
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
    Enqueue(Reply<EnqueueOutcome>, Result<EnqueueOutcome, StoreError>),
    Unit(Reply<()>, Result<(), StoreError>),
    Bool(Reply<bool>, Result<bool, StoreError>),
    Count(Reply<usize>, Result<usize, StoreError>),
}

/// Commits the batch in one transaction; false when it failed (or was empty).
fn commit_batch(conn: &mut Connection, batch: &mut Vec<Op>) -> bool {
    if batch.is_empty() {
        return false;
    }
    let mut pending = Vec::with_capacity(batch.len());
    let outcome = (|| -> Result<(), rusqlite::Error> {
        let mut tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for op in batch.drain(..) {
            // A savepoint per operation: one failing op does not undo the others.
            let sp = tx.savepoint()?;
            let p = apply(&sp, op);
            let ok = match &p {
                Some(Pending::Enqueue(_, r)) => r.is_ok(),
                Some(Pending::Unit(_, r)) => r.is_ok(),
                Some(Pending::Bool(_, r)) => r.is_ok(),
                Some(Pending::Count(_, r)) => r.is_ok(),
                None => true,
            };
            if ok {
                sp.commit()?;
            } else {
                drop(sp); // rolls back
            }
            pending.extend(p);
        }
        tx.commit()
    })();
    match outcome {
        Ok(()) => {
            for p in pending {
                match p {
                    Pending::Enqueue(r, v) => drop(r.send(v)),
                    Pending::Unit(r, v) => drop(r.send(v)),
                    Pending::Bool(r, v) => drop(r.send(v)),
                    Pending::Count(r, v) => drop(r.send(v)),
                }
            }
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "commit failed; the batch is not acknowledged");
            let err = || StoreError::Unavailable(e.to_string());
            for p in pending {
                match p {
                    Pending::Enqueue(r, _) => drop(r.send(Err(err()))),
                    Pending::Unit(r, _) => drop(r.send(Err(err()))),
                    Pending::Bool(r, _) => drop(r.send(Err(err()))),
                    Pending::Count(r, _) => drop(r.send(Err(err()))),
                }
            }
            batch.clear();
            false
        }
    }
}

fn apply(conn: &Connection, op: Op) -> Option<Pending> {
    match op {
        Op::Enqueue(new, reply) => Some(Pending::Enqueue(reply, enqueue(conn, &new))),
        Op::Dispatch { id, msg_id, reply } => {
            let r = conn
                .execute(
                    "UPDATE executions SET msg_id = ?2 WHERE id = ?1 AND state = 'queued'",
                    params![id, msg_id],
                )
                .map(drop)
                .map_err(StoreError::from);
            Some(Pending::Unit(reply, r))
        }
        Op::Start { id, at, reply } => Some(Pending::Bool(
            reply,
            transition(conn, &id, State::Running, |c| {
                c.execute(
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
                 error = ?6, finished_at = ?7, started_at = COALESCE(started_at, ?7), truncated = ?8
                 WHERE id = ?1 AND state IN ({})",
                sources
                    .iter()
                    .map(|s| format!("'{s}'"))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let r = transition(conn, &id, record.state, |c| {
                c.execute(
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
            Some(Pending::Bool(reply, r))
        }
        Op::SetLastSeq { id, seq } => {
            let _ = conn.execute(
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
        Op::Close(_) => None,
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
            .query_row(
                &format!("SELECT {} FROM executions WHERE key = ?1", super::reader::COLUMNS),
                [key],
                row_to_execution,
            )
            .optional()?;
        if let Some(e) = existing {
            return Ok(EnqueueOutcome::Existing(e));
        }
    }
    conn.execute(
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
