//! Writing an execution's outputs into the notebook cell it was run for.
//!
//! The write belongs to the sidecar, not to the request that submitted the
//! execution: the service calls `track` for every new execution that names a
//! notebook cell, once its row is durable (HTTP and MCP submissions alike, so
//! one task per execution writes it, once). `track` starts a task that waits (push-based, through the
//! completion registry) for the execution to finish and then writes its
//! outputs and execution count into the cell, whether or not the agent is
//! still connected. A request that does wait can learn the write's result
//! through the receiver `track` returns. On start-up, notebook executions
//! still queued or running (they resume after a restart) are tracked again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::{model, NotebookError, Workspace};
use crate::sidecar::Service;
use crate::store::{Execution, State};

/// The result of one write-back: `None` until it is done.
pub type Written = watch::Receiver<Option<Result<(), String>>>;

/// How long one wait on the completion registry lasts before it is renewed.
const WAIT_SLICE: Duration = Duration::from_secs(3600);
/// Stream text of one output written into a notebook, at most (head and tail).
const NOTEBOOK_STREAM_BYTES: usize = 256 << 10;
/// Cells whose newest written execution is remembered, at most.
const REMEMBERED_CELLS: usize = 10_000;

pub struct NotebookSync {
    svc: Arc<Service>,
    ws: Arc<Workspace>,
    /// Executions being tracked, so a second `track` shares the first task.
    tracked: Mutex<HashMap<String, Written>>,
    /// (notebook, cell id) → `created_at` of the newest execution written
    /// there: an older execution that finishes late never overwrites it.
    newest: Mutex<HashMap<(String, String), String>>,
}

impl NotebookSync {
    /// The sync of `svc`'s notebooks: every new execution tied to a cell,
    /// submitted over HTTP or MCP, is tracked from its commit (the service's
    /// hook, holding the sync weakly so neither keeps the other alive).
    pub fn new(svc: Arc<Service>, ws: Arc<Workspace>) -> Arc<NotebookSync> {
        let sync = Arc::new(NotebookSync {
            svc: svc.clone(),
            ws,
            tracked: Mutex::new(HashMap::new()),
            newest: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&sync);
        if !svc.on_notebook_execution(Box::new(move |e| weak.upgrade().map(|sync| sync.track(&e.id)))) {
            tracing::warn!("the service's notebook executions are tracked by an earlier notebook sync");
        }
        sync
    }

    pub fn workspace(&self) -> &Arc<Workspace> {
        &self.ws
    }

    /// Runs a notebook write under the sidecar's workspace lock, which asset
    /// deletes also take: a delete never races a save that references the
    /// asset. The write runs in its own task, so a caller that goes away
    /// mid-write neither cancels it nor releases the lock early.
    pub async fn edit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Workspace) -> Result<T, NotebookError> + Send + 'static,
    ) -> Result<T, NotebookError> {
        let (svc, ws) = (self.svc.clone(), self.ws.clone());
        tokio::spawn(async move {
            let _guard = svc.workspace_lock.lock().await;
            ws.run(f).await
        })
        .await
        .unwrap_or_else(|e| Err(NotebookError::Io(format!("the notebook write failed: {e}"))))
    }

    /// Tracks notebook executions left queued or running by a previous
    /// sidecar process: they resume, and their outputs must still land.
    pub async fn recover(self: &Arc<Self>) {
        for state in [State::Running, State::Queued] {
            let mut cursor: Option<String> = None;
            let mut found = Vec::new();
            loop {
                let q = crate::store::ListQuery::parse(Some(state.as_str()), Some(1000), cursor.as_deref());
                let Ok(q) = q else { break };
                match self.svc.list(q).await {
                    Ok(page) => {
                        found.extend(
                            page.executions
                                .into_iter()
                                .filter(|e| e.notebook.is_some() && e.cell_id.is_some())
                                .map(|e| e.id),
                        );
                        match page.next_cursor {
                            Some(c) => cursor = Some(c),
                            None => break,
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "listing notebook executions to track");
                        break;
                    }
                }
            }
            for id in found.iter().rev() {
                self.track(id);
            }
        }
    }

    /// Starts (once per execution) the task that writes `id`'s outputs into
    /// its cell when it finishes.
    pub fn track(self: &Arc<Self>, id: &str) -> Written {
        let mut tracked = self.tracked.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = tracked.get(id) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        tracked.insert(id.to_string(), rx.clone());
        drop(tracked);
        let this = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let result = this.wait_and_write(&id).await;
            if let Err(e) = &result {
                tracing::warn!(execution = %id, error = %e, "writing outputs into the notebook");
            }
            let _ = tx.send(Some(result));
            this.tracked.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        });
        rx
    }

    async fn wait_and_write(&self, id: &str) -> Result<(), String> {
        loop {
            match self.svc.wait(id, WAIT_SLICE).await {
                Ok(Some(e)) if e.state.is_final() => return self.write(&e).await,
                Ok(Some(_)) => continue,
                Ok(None) => return Err(format!("execution {id} no longer exists")),
                Err(e) => return Err(format!("reading execution {id}: {e}")),
            }
        }
    }

    /// Writes a finished execution's outputs into its cell.
    pub async fn write(&self, e: &Execution) -> Result<(), String> {
        let (Some(nb), Some(cell)) = (e.notebook.clone(), e.cell_id.clone()) else {
            return Ok(());
        };
        {
            let newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
            if newest
                .get(&(nb.clone(), cell.clone()))
                .is_some_and(|n| n.as_str() > e.created_at.as_str())
            {
                return Ok(());
            }
        }
        let outputs = crate::sidecar::outputs::for_notebook(&e.outputs, NOTEBOOK_STREAM_BYTES, &e.id);
        let count = e.execution_count;
        let (nb2, cell2) = (nb.clone(), cell.clone());
        self.edit(move |ws| ws.update(&nb2, |doc| model::set_outputs(doc, &cell2, &outputs, count)))
            .await
            .map_err(|err| err.to_string())?;
        let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        if newest.len() >= REMEMBERED_CELLS {
            newest.clear();
        }
        newest.insert((nb, cell), e.created_at.clone());
        Ok(())
    }
}

/// Waits up to `wait` for a tracked write to be done.
pub async fn written(mut rx: Written, wait: Duration) -> Option<Result<(), String>> {
    let r = tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await;
    match r {
        Ok(Ok(v)) => v.clone(),
        _ => None,
    }
}
