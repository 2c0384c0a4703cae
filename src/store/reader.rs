//! Read-only connections, used from blocking tasks so that readers never wait
//! for the writer (WAL lets them read the last commit).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::model::{Execution, State, Summary, PREVIEW_CHARS};
use super::{schema, StoreError};

pub(crate) const COLUMNS: &str = "id, key, state, reason, code, notebook, cell_id, outputs, execution_count, error, timeout_s, created_at, started_at, finished_at, truncated, client_request";

/// Executions queued and not yet dispatched to the kernel.
pub(crate) const UNDISPATCHED: &str = "state = 'queued' AND msg_id IS NULL";

/// One execution by id, on any connection (the reader's, or the writer's
/// inside its transaction).
pub(crate) fn row_by_id(c: &Connection, id: &str) -> rusqlite::Result<Option<Execution>> {
    c.prepare_cached(&format!("SELECT {COLUMNS} FROM executions WHERE id = ?1"))?
        .query_row([id], row_to_execution)
        .optional()
}

/// The queue's head: the oldest execution not yet dispatched.
pub(crate) fn queue_head(c: &Connection) -> rusqlite::Result<Option<Execution>> {
    c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM executions WHERE {UNDISPATCHED} ORDER BY n LIMIT 1"
    ))?
    .query_row([], row_to_execution)
    .optional()
}

pub(crate) fn row_to_execution(r: &Row<'_>) -> rusqlite::Result<Execution> {
    let state: String = r.get(2)?;
    let outputs: String = r.get(7)?;
    let error: Option<String> = r.get(9)?;
    Ok(Execution {
        id: r.get(0)?,
        key: r.get(1)?,
        state: State::parse(&state).unwrap_or(State::Failed),
        reason: r
            .get::<_, Option<String>>(3)?
            .map(|s| super::EndReason::parse(&s)),
        code: r.get(4)?,
        notebook: r.get(5)?,
        cell_id: r.get(6)?,
        outputs: serde_json::from_str(&outputs).unwrap_or_default(),
        execution_count: r.get(8)?,
        error: error.and_then(|e| serde_json::from_str(&e).ok()),
        timeout_s: r.get(10)?,
        created_at: r.get(11)?,
        started_at: r.get(12)?,
        finished_at: r.get(13)?,
        truncated: r
            .get::<_, Option<String>>(14)?
            .and_then(|t| serde_json::from_str(&t).ok()),
        client_request: r
            .get::<_, Option<String>>(15)?
            .and_then(|t| serde_json::from_str(&t).ok()),
    })
}

/// Largest page of summaries, in bytes of JSON: an answer stays well under
/// what clients accept in one message (the MCP Python SDK: 1 MiB).
pub const MAX_PAGE_BYTES: usize = 256 << 10;
/// Most rows one page holds.
pub const MAX_PAGE_ROWS: u32 = 1000;
/// Rows a page holds when the client does not say.
pub const DEFAULT_PAGE_ROWS: u32 = 100;

/// Which executions a list asks for: HTTP and MCP parse into this one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListQuery {
    pub state: Option<State>,
    pub limit: u32,
    /// A cursor from the previous page: rows older than it.
    pub before: Option<i64>,
}

impl ListQuery {
    /// Checks a client's values; each error names the field.
    pub fn parse(
        state: Option<&str>,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<ListQuery, (&'static str, String)> {
        let state = match state.filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(State::parse(s).ok_or((
                "state",
                format!("{s:?} is not one of queued, running, completed, failed, cancelled"),
            ))?),
        };
        let limit = limit.unwrap_or(DEFAULT_PAGE_ROWS);
        if !(1..=MAX_PAGE_ROWS).contains(&limit) {
            return Err(("limit", format!("must be an integer from 1 to {MAX_PAGE_ROWS}")));
        }
        let before = match cursor.filter(|c| !c.is_empty()) {
            None => None,
            Some(c) => Some(
                c.parse::<i64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or(("cursor", "is not a cursor this sidecar gave".to_string()))?,
            ),
        };
        Ok(ListQuery { state, limit, before })
    }
}

/// One page of a list.
#[derive(Debug, Clone, Default, serde::Serialize, schemars::JsonSchema)]
pub struct Page {
    pub executions: Vec<Summary>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    #[serde(skip)]
    last_n: Option<i64>,
}

/// A small pool of read-only connections.
#[derive(Clone)]
pub struct Reader {
    path: PathBuf,
    pool: Arc<Mutex<Vec<Connection>>>,
}

/// An execution the kernel may have received: dispatched or running.
#[derive(Debug, Clone)]
pub struct InFlight {
    pub execution: Execution,
    pub msg_id: Option<String>,
}

impl Reader {
    pub fn new(path: &Path) -> Reader {
        Reader {
            path: path.to_path_buf(),
            pool: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, StoreError>> {
        let this = self.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let conn = this.pool.lock().ok().and_then(|mut p| p.pop());
                let conn = match conn {
                    Some(c) => c,
                    None => schema::open_reader(&this.path)?,
                };
                let out = f(&conn);
                if let Ok(mut p) = this.pool.lock() {
                    if p.len() < 8 {
                        p.push(conn);
                    }
                }
                out
            })
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<Execution>, StoreError> {
        let id = id.to_string();
        self.with(move |c| Ok(row_by_id(c, &id)?)).await
    }

    /// Newest first, as summaries: one page of at most `q.limit` rows and
    /// [`MAX_PAGE_BYTES`], with the cursor of the next page when there is more.
    pub async fn summaries(&self, q: ListQuery) -> Result<Page, StoreError> {
        self.with(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT n, id, key, state, reason, substr(code, 1, {PREVIEW_CHARS}), length(CAST(code AS BLOB)),
                        notebook, cell_id, execution_count, json_array_length(outputs),
                        length(CAST(outputs AS BLOB)), truncated IS NOT NULL, created_at, started_at, finished_at
                 FROM executions
                 WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR n < ?2)
                 ORDER BY n DESC LIMIT ?3"
            ))?;
            let state = q.state.map(|s| s.as_str());
            // One more than asked: tells whether a next page exists.
            let rows = st.query_map(params![state, q.before, q.limit as i64 + 1], |r| {
                let state: String = r.get(3)?;
                Ok((
                    r.get::<_, i64>(0)?,
                    Summary {
                        id: r.get(1)?,
                        key: r.get(2)?,
                        state: State::parse(&state).unwrap_or(State::Failed),
                        reason: r.get::<_, Option<String>>(4)?.map(|s| super::EndReason::parse(&s)),
                        code: r.get(5)?,
                        code_bytes: r.get::<_, i64>(6)?.max(0) as u64,
                        notebook: r.get(7)?,
                        cell_id: r.get(8)?,
                        execution_count: r.get(9)?,
                        outputs: r.get::<_, Option<i64>>(10)?.unwrap_or(0).max(0) as u64,
                        output_bytes: r.get::<_, i64>(11)?.max(0) as u64,
                        truncated: r.get(12)?,
                        created_at: r.get(13)?,
                        started_at: r.get(14)?,
                        finished_at: r.get(15)?,
                    },
                ))
            })?;
            let mut page = Page::default();
            let mut bytes = 0usize;
            for row in rows {
                let (n, summary) = row?;
                let size = serde_json::to_vec(&summary).map(|v| v.len()).unwrap_or(0) + 1;
                let full = page.executions.len() >= q.limit as usize || bytes + size > MAX_PAGE_BYTES;
                if full {
                    page.next_cursor = page.last_n.map(|n| n.to_string());
                    break;
                }
                bytes += size;
                page.last_n = Some(n);
                page.executions.push(summary);
            }
            Ok(page)
        })
        .await
    }

    pub async fn next_queued(&self) -> Result<Option<Execution>, StoreError> {
        self.with(|c| Ok(queue_head(c)?)).await
    }

    /// Every queued execution not yet sent to the kernel, in order.
    pub async fn queued(&self) -> Result<Vec<Execution>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {COLUMNS} FROM executions WHERE {UNDISPATCHED} ORDER BY n"
            ))?;
            let rows = st.query_map([], row_to_execution)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Executions the kernel may have received before the last stop, in order.
    pub async fn in_flight(&self) -> Result<Vec<InFlight>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {COLUMNS}, msg_id FROM executions
                 WHERE state = 'running' OR (state = 'queued' AND msg_id IS NOT NULL) ORDER BY n"
            ))?;
            let rows = st.query_map([], |r| {
                Ok(InFlight {
                    execution: row_to_execution(r)?,
                    msg_id: r.get("msg_id")?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub async fn counts(&self) -> Result<HashMap<State, u64>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare_cached("SELECT state, COUNT(*) FROM executions GROUP BY state")?;
            let mut out: HashMap<State, u64> = State::ALL.into_iter().map(|s| (s, 0)).collect();
            for r in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                let (s, n) = r?;
                if let Some(s) = State::parse(&s) {
                    out.insert(s, n as u64);
                }
            }
            Ok(out)
        })
        .await
    }

    pub async fn meta(&self, name: &str) -> Result<Option<String>, StoreError> {
        let name = name.to_string();
        self.with(move |c| {
            Ok(
                c.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| r.get(0))
                    .optional()?,
            )
        })
        .await
    }

    pub async fn pins(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare_cached("SELECT name FROM asset_pins")?;
            let names = st.query_map([], |r| r.get(0))?;
            Ok(names.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Executions that may have had events after `since`: everything not
    /// final, and everything whose last event is newer (or unknown). Newest
    /// first, at most `limit`.
    pub async fn touched_since(&self, since: u64, limit: u32) -> Result<Vec<String>, StoreError> {
        self.with(move |c| {
            let mut st = c.prepare_cached(
                "SELECT id FROM executions WHERE state IN ('queued','running')
                 OR last_seq IS NULL OR last_seq > ?1 ORDER BY n DESC LIMIT ?2",
            )?;
            let ids = st.query_map(params![since as i64, limit], |r| r.get(0))?;
            Ok(ids.collect::<Result<Vec<String>, _>>()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::{FinalRecord, NewExecution};
    use super::super::writer::{EnqueueOutcome, Writer};
    use super::*;

    /// A new database of this test process, and its writer.
    fn fresh_store(tag: &str) -> (std::path::PathBuf, Writer) {
        let dir = std::env::temp_dir().join(format!("nbo-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = schema::db_path(&dir);
        let (w, _thread) = Writer::open(&path).unwrap();
        (path, w)
    }

    fn new_exec(id: &str, key: Option<&str>) -> NewExecution {
        NewExecution {
            id: id.into(),
            key: key.map(String::from),
            code: "1+1".into(),
            created_at: crate::util::now_rfc3339(),
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn guarantee_1_concurrent_submissions_share_one_commit() {
        let (path, w) = fresh_store("group");
        w.set_meta("warm", "1".into()).await.unwrap();
        let (before, taken_before) = (w.commits(), w.taken());
        // Another connection holds the write lock: the writer thread takes
        // what has arrived and waits for the lock (busy timeout 5 s) while
        // the rest queue up behind it.
        let holder = rusqlite::Connection::open(&path).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let w = w.clone();
                tokio::spawn(async move { w.enqueue(new_exec(&format!("e{i}"), None)).await })
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(4);
        // The witness that all 50 were sent before the lock goes: each is
        // either taken by the writer thread or waiting in its channel.
        let sent = || w.waiting() as u64 + (w.taken() - taken_before);
        while sent() < 50 {
            assert!(std::time::Instant::now() < deadline, "only {} sent", sent());
            tokio::task::yield_now().await;
        }
        holder.execute_batch("ROLLBACK").unwrap();
        for t in tasks {
            assert!(matches!(t.await.unwrap().unwrap(), EnqueueOutcome::Created(_)));
        }
        let commits = w.commits() - before;
        assert!(commits <= 2, "50 concurrent submissions took {commits} commits");
        assert_eq!(Reader::new(&path).counts().await.unwrap()[&State::Queued], 50);
    }

    #[tokio::test]
    async fn a_state_change_is_signalled_after_its_commit_and_other_writes_are_not() {
        let (path, w) = fresh_store("states");
        let r = Reader::new(&path);
        let mut states = w.state_changes();
        states.borrow_and_update();
        w.set_meta("m", "1".into()).await.unwrap();
        w.pin("x.png", true).await.unwrap();
        assert!(
            !states.has_changed().unwrap(),
            "a write that moves no execution is not a change"
        );
        w.enqueue(new_exec("a", None)).await.unwrap();
        // The signal comes after the commit: a read it wakes sees the row.
        states.changed().await.unwrap();
        assert_eq!(r.counts().await.unwrap()[&State::Queued], 1);
        w.start("a", crate::util::now_rfc3339()).await.unwrap();
        states.changed().await.unwrap();
        assert_eq!(r.counts().await.unwrap()[&State::Running], 1);
    }

    /// A Jupyter client's execute_request, as the channels route keeps it.
    fn client_request(
        session: &str,
        metadata: serde_json::Value,
        content: serde_json::Value,
    ) -> super::super::model::ClientRequest {
        super::super::model::ClientRequest {
            header: crate::jupyter::Message::new("execute_request", serde_json::json!({}), session).header,
            metadata,
            content,
        }
    }

    /// What a restarted sidecar follows: the dispatched execution's msg_id
    /// (read by column name: the column list grew twice under it), and a
    /// Jupyter client's request kept whole.
    #[tokio::test]
    async fn in_flight_executions_keep_their_msg_id_and_client_request() {
        let (path, w) = fresh_store("inflight");
        let r = Reader::new(&path);
        let request = client_request(
            "client-9",
            serde_json::json!({"cellId": "c1"}),
            serde_json::json!({"allow_stdin": true}),
        );
        let mut new = new_exec("a", None);
        new.client_request = Some(request.clone());
        w.enqueue(new).await.unwrap();
        w.enqueue(new_exec("b", None)).await.unwrap();
        assert_eq!(r.queued().await.unwrap().len(), 2);
        w.dispatch("a", "msg-a").await.unwrap();
        assert_eq!(
            r.queued()
                .await
                .unwrap()
                .iter()
                .map(|e| e.id.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        let flying = r.in_flight().await.unwrap();
        assert_eq!(flying.len(), 1);
        assert_eq!(flying[0].msg_id.as_deref(), Some("msg-a"));
        assert_eq!(flying[0].execution.client_request.as_ref(), Some(&request));
        assert!(flying[0]
            .execution
            .client_request
            .as_ref()
            .unwrap()
            .allows_stdin());
    }

    #[tokio::test]
    async fn enqueue_is_idempotent_by_key_and_fifo() {
        let (path, w) = fresh_store("fifo");
        let r = Reader::new(&path);
        assert!(matches!(
            w.enqueue(new_exec("a", Some("k1"))).await.unwrap(),
            EnqueueOutcome::Created(_)
        ));
        assert!(matches!(
            w.enqueue(new_exec("b", None)).await.unwrap(),
            EnqueueOutcome::Created(_)
        ));
        match w.enqueue(new_exec("c", Some("k1"))).await.unwrap() {
            EnqueueOutcome::Existing(e) => assert_eq!(e.id, "a"),
            other => panic!("{other:?}"),
        }
        assert_eq!(r.next_queued().await.unwrap().unwrap().id, "a");
        w.dispatch("a", "m1").await.unwrap();
        assert_eq!(r.next_queued().await.unwrap().unwrap().id, "b");
        assert!(w.start("a", crate::util::now_rfc3339()).await.unwrap());
        let fin = FinalRecord {
            state: State::Completed,
            reason: None,
            outputs: vec![serde_json::json!({"output_type": "stream", "name": "stdout", "text": "x"})],
            execution_count: Some(1),
            error: None,
            finished_at: crate::util::now_rfc3339(),
            truncated: None,
        };
        assert!(w.finish("a", fin.clone()).await.unwrap());
        // A final row stays final.
        assert!(!w.finish("a", fin).await.unwrap());
        let a = r.get("a").await.unwrap().unwrap();
        assert_eq!(a.state, State::Completed);
        assert_eq!(a.outputs.len(), 1);
        assert_eq!(r.counts().await.unwrap()[&State::Queued], 1);
        let q = ListQuery::parse(None, Some(1), None).unwrap();
        let page = r.summaries(q).await.unwrap();
        assert_eq!(page.executions[0].id, "b", "newest first");
        let next = ListQuery::parse(None, Some(10), page.next_cursor.as_deref()).unwrap();
        let rest = r.summaries(next).await.unwrap();
        assert_eq!(
            rest.executions.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            vec!["a"]
        );
        assert!(rest.next_cursor.is_none());
    }

    fn flying_ids(flying: &[super::InFlight]) -> Vec<(String, Option<String>)> {
        flying
            .iter()
            .map(|f| (f.execution.id.clone(), f.msg_id.clone()))
            .collect()
    }

    /// The idle kernel actor's take: the next execution enqueued is
    /// dispatched in its own enqueue's commit (one commit, no queue read)
    /// and handed over by its enqueuer.
    #[tokio::test]
    async fn a_waiting_take_gets_the_next_enqueue_dispatched_in_the_same_commit() {
        let (path, w) = fresh_store("take-wait");
        let r = Reader::new(&path);
        let mut rx = w.take("m-1".into());
        let done = w.enqueue_for_handoff(new_exec("a", None)).await.unwrap();
        // No other write was sent: the enqueue's own commit dispatched it.
        assert_eq!(
            flying_ids(&r.in_flight().await.unwrap()),
            [("a".into(), Some("m-1".into()))]
        );
        assert!(
            rx.try_recv().is_err(),
            "nothing is handed over before its enqueuer says so"
        );
        done.handoff.expect("the take waited").send();
        assert_eq!(rx.await.unwrap().unwrap().id, "a");
    }

    #[tokio::test]
    async fn a_take_gets_the_queue_head_in_order_and_a_jupyter_clients_own_msg_id() {
        let (path, w) = fresh_store("take-head");
        let r = Reader::new(&path);
        let request = client_request("client-1", serde_json::json!({}), serde_json::json!({}));
        let client_msg_id = request.header.msg_id.clone();
        let mut a = new_exec("a", None);
        a.client_request = Some(request);
        w.enqueue(a).await.unwrap();
        w.enqueue(new_exec("b", None)).await.unwrap();
        assert_eq!(w.take("m-1".into()).await.unwrap().unwrap().id, "a");
        assert_eq!(w.take("m-2".into()).await.unwrap().unwrap().id, "b");
        assert_eq!(
            flying_ids(&r.in_flight().await.unwrap()),
            [
                ("a".into(), Some(client_msg_id)),
                ("b".into(), Some("m-2".into()))
            ]
        );
    }

    /// A take given up (the kernel went away) gets nothing, and what was
    /// handed to it after it went is queued and undispatched again.
    #[tokio::test]
    async fn what_a_given_up_take_was_handed_runs_next() {
        let (path, w) = fresh_store("take-gone");
        let r = Reader::new(&path);
        drop(w.take("m-1".into()));
        let done = w.enqueue_for_handoff(new_exec("a", None)).await.unwrap();
        assert!(done.handoff.is_none(), "a closed take is not served");
        assert_eq!(r.next_queued().await.unwrap().unwrap().id, "a");

        assert_eq!(w.take("m-2".into()).await.unwrap().unwrap().id, "a");

        let mut rx = w.take("m-3".into());
        let done = w.enqueue_for_handoff(new_exec("b", None)).await.unwrap();
        rx.close();
        done.handoff.expect("the take was open at the commit").send();
        // The undo is ordered before the next take, which gets b back.
        assert_eq!(w.take("m-4".into()).await.unwrap().unwrap().id, "b");
        assert_eq!(
            flying_ids(&r.in_flight().await.unwrap()),
            [("a".into(), Some("m-2".into())), ("b".into(), Some("m-4".into()))]
        );
    }

    /// A handoff its enqueuer dropped (a cancelled request) still reaches the
    /// take: the execution is durable and must run.
    #[tokio::test]
    async fn a_dropped_handoff_still_hands_over() {
        let (_path, w) = fresh_store("take-drop");
        let rx = w.take("m-1".into());
        let done = w.enqueue_for_handoff(new_exec("a", None)).await.unwrap();
        drop(done);
        assert_eq!(rx.await.unwrap().unwrap().id, "a");
    }

    #[tokio::test]
    async fn the_final_commit_answers_with_the_final_row() {
        let (_path, w) = fresh_store("finish-row");
        w.enqueue(new_exec("a", None)).await.unwrap();
        let fin = FinalRecord {
            state: State::Completed,
            reason: None,
            outputs: vec![serde_json::json!({"output_type": "stream", "name": "stdout", "text": "x"})],
            execution_count: Some(3),
            error: None,
            finished_at: crate::util::now_rfc3339(),
            truncated: None,
        };
        let row = w
            .finish_returning("a", fin.clone())
            .await
            .unwrap()
            .expect("moved");
        assert_eq!(
            (row.state, row.execution_count, row.outputs.len()),
            (State::Completed, Some(3), 1)
        );
        assert!(
            w.finish_returning("a", fin).await.unwrap().is_none(),
            "final already"
        );
    }

    /// Waits (bounded) until `f` holds of the writer's counters.
    async fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !f() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// A detached start costs no commit of its own: it is committed with
    /// the next write, or by a flush; one its caller waits on commits at once.
    #[tokio::test]
    async fn a_detached_start_rides_along_until_a_flush_or_the_next_commit() {
        let (path, w) = fresh_store("ride");
        let r = Reader::new(&path);
        w.enqueue(new_exec("a", None)).await.unwrap();
        w.enqueue(new_exec("b", None)).await.unwrap();
        // The counter moves just after the answers: both enqueues counted.
        until("the enqueues' commits to be counted", || w.commits() == 2).await;
        let (taken, commits) = (w.taken(), w.commits());
        w.start_detached("a", crate::util::now_rfc3339()).await;
        until("the writer to take the start", || w.taken() > taken).await;
        assert_eq!(w.commits(), commits, "no commit for the start alone");
        assert_eq!(r.get("a").await.unwrap().unwrap().state, State::Queued);
        w.flush();
        until("the flush to commit", || w.commits() > commits).await;
        assert_eq!(r.get("a").await.unwrap().unwrap().state, State::Running);

        w.start_detached("b", crate::util::now_rfc3339()).await;
        w.set_meta("m", "1".into()).await.unwrap();
        assert_eq!(
            r.get("b").await.unwrap().unwrap().state,
            State::Running,
            "rode along"
        );
        let (path, w) = fresh_store("ride-awaited");
        let r = Reader::new(&path);
        w.enqueue(new_exec("c", None)).await.unwrap();
        assert!(w.start("c", crate::util::now_rfc3339()).await.unwrap());
        assert_eq!(r.get("c").await.unwrap().unwrap().state, State::Running);
    }
}
