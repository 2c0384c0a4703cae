//! The MCP tools: the kernel's durable execution queue and the workspace's
//! notebooks. One `Tools` value per MCP session, all sharing the sidecar's
//! `Service` and the notebook write-back.
//!
//! A tool whose answer is one JSON object returns `Result<Json<T>, ToolError>`:
//! rmcp makes `T` the structured content (and its text block) and publishes
//! `T`'s schema as the tool's `outputSchema`. The tools that answer with an
//! execution's outputs (`execute`, `get_execution`, `run_cell`) and
//! `read_asset` return content blocks (text, images) and keep a
//! `CallToolResult`; the first three still publish the schema of their
//! structured content, the [`ExecutionHeader`]. Every failure a caller can
//! cause is a [`ToolError`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::schema_for_output;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{
    CallToolResponse, CallToolResult, CancelTaskParams, ContentBlock, GetTaskParams, GetTaskResult,
    Implementation, RequestMetaObject, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_handler, tool_router, ErrorData, Peer, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::content::{self, Caps};
use super::error::ToolError;
use super::output::*;
use super::progress::{self, Progress};
use super::tasks;
use crate::confined::ConfinedError;
use crate::notebook::model::{self, CellType, Position};
use crate::notebook::{path, sync, NotebookError, NotebookSync, Workspace};
use crate::sidecar::assets::AssetError;
use crate::sidecar::control::{CancelOutcome, ControlError};
use crate::sidecar::{Service, SubmitRequest};
use crate::sidecar_api::Catalog;
use crate::store::{self, Execution};

/// How long `execute` and `run_cell` wait when the caller does not say.
const DEFAULT_WAIT_S: f64 = 30.0;
/// How long a finished `run_cell` waits for its outputs to be in the file.
const WRITE_WAIT: Duration = Duration::from_secs(10);
/// `read_notebook`: text of one source or output, and of the whole answer.
const READ_TEXT_BYTES: usize = 8 << 10;
const READ_TOTAL_BYTES: usize = 256 << 10;

pub(crate) fn wait_for(seconds: Option<f64>, default: f64, field: &str) -> Result<Duration, ToolError> {
    Service::wait_duration(seconds.unwrap_or(default)).map_err(|m| ToolError::new(format!("{field} {m}")))
}

fn progress_of(meta: &RequestMetaObject, peer: Peer<RoleServer>) -> Option<Progress> {
    meta.get_progress_token().map(|token| Progress { peer, token })
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ExecuteParams {
    /// The code to run in the kernel.
    pub code: String,
    /// Seconds to wait for the result (default 30, at most 3600). If the
    /// execution is not finished by then, the call returns its id and state
    /// (not an error): it keeps running, and get_execution fetches it later.
    #[serde(default)]
    pub timeout_s: Option<f64>,
    /// Idempotency key: a repeated key returns the first execution made
    /// with it instead of running the code again.
    #[serde(default)]
    pub key: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SubmitParams {
    /// The code to run in the kernel.
    pub code: String,
    /// Idempotency key: a repeated key returns the first execution made with it.
    #[serde(default)]
    pub key: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct GetExecutionParams {
    /// The execution id returned by execute, submit or run_cell.
    pub id: String,
    /// Seconds to wait for the execution to finish (default 0: answer at once).
    #[serde(default)]
    pub wait_s: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ListExecutionsParams {
    /// Only executions in this state: queued, running, completed, failed or cancelled.
    #[serde(default)]
    pub state: Option<String>,
    /// Most executions to return, newest first (1 to 1000, default 100);
    /// a page also stops at 256 KiB of summaries.
    #[serde(default)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page, for the next (older) one.
    #[serde(default)]
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct IdParams {
    /// The execution id.
    pub id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct AssetParams {
    /// The asset's file name, `<sha256>.<ext>` (as in `assets/<name>`).
    pub name: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct PathParams {
    /// Notebook path relative to the workspace, ending in .ipynb.
    pub path: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct InsertCellParams {
    /// Notebook path relative to the workspace, ending in .ipynb.
    pub path: String,
    /// The cell's source.
    pub source: String,
    /// code (default), markdown or raw.
    #[serde(default)]
    pub cell_type: CellKind,
    /// Insert before the cell now at this 0-based index (the cell count appends).
    #[serde(default)]
    pub index: Option<usize>,
    /// Insert right after the cell with this id. Give index or after_id, not
    /// both; with neither the cell is appended.
    #[serde(default)]
    pub after_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct EditCellParams {
    /// Notebook path relative to the workspace, ending in .ipynb.
    pub path: String,
    /// The id of the cell to change (ids are listed by read_notebook).
    pub cell_id: String,
    /// The new source, replacing the old one.
    pub source: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CellParams {
    /// Notebook path relative to the workspace, ending in .ipynb.
    pub path: String,
    /// The cell's id.
    pub cell_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RunCellParams {
    /// Notebook path relative to the workspace, ending in .ipynb.
    pub path: String,
    /// The id of the code cell to run.
    pub cell_id: String,
    /// Seconds to wait for the result (default 30). The outputs are written
    /// into the notebook when the execution finishes, even after this call
    /// has returned or the client has gone.
    #[serde(default)]
    pub timeout_s: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RunAllParams {
    /// Notebook path relative to the workspace, ending in .ipynb.
    pub path: String,
    /// Seconds to wait for the last cell (default 30); cells still queued or
    /// running then go on, and their outputs still land in the notebook.
    #[serde(default)]
    pub timeout_s: Option<f64>,
}

/// The MCP server of one session.
#[derive(Clone)]
pub struct Tools {
    svc: Arc<Service>,
    sync: Arc<NotebookSync>,
    caps: Caps,
    tool_router: ToolRouter<Tools>,
}

impl Tools {
    pub fn new(svc: Arc<Service>, sync: Arc<NotebookSync>) -> Tools {
        Tools {
            svc,
            sync,
            caps: Caps::default(),
            tool_router: Self::tool_router(),
        }
    }

    /// The definitions (name, description, input schema) of every tool, as
    /// `tools/list` shows them; the gateway offers the same tools per session.
    pub fn definitions() -> Vec<rmcp::model::Tool> {
        Self::tool_router().list_all()
    }

    /// Tasks are executions, kept for the retention period.
    fn task_ttl_ms(&self) -> u64 {
        u64::try_from(self.svc.cfg.retention.as_millis()).unwrap_or(u64::MAX)
    }

    fn ws(&self) -> &Arc<Workspace> {
        self.sync.workspace()
    }

    /// The tool result of `e`, waited for since `t0`.
    fn result_of(&self, e: &Execution, t0: Instant) -> CallToolResult {
        let waited = (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0;
        content::execution_result(e, waited, &self.caps)
    }

    async fn wait_result(
        &self,
        id: &str,
        wait: Duration,
        progress: Option<Progress>,
    ) -> Result<(CallToolResult, Execution), ToolError> {
        let t0 = Instant::now();
        match progress::wait(&self.svc, id, wait, progress).await {
            Ok(Some(e)) => Ok((self.result_of(&e, t0), e)),
            Ok(None) => Err(ToolError::new(format!("no execution {id}"))),
            Err(e) => Err(ToolError::new(format!("reading execution {id}: {e}"))),
        }
    }

    async fn set_pin(&self, name: String, pinned: bool) -> Result<Json<Pinned>, ToolError> {
        self.svc.pin_asset(&name, pinned).await?;
        Ok(Json(Pinned { name, pinned }))
    }

    async fn submit_code(&self, req: SubmitRequest) -> Result<Execution, ToolError> {
        Ok(self.svc.submit(req).await?.execution)
    }

    /// Submits an execution tied to a notebook cell: it, and the write of its
    /// outputs into the cell that the service started at the commit (the
    /// same write an HTTP submission gets; tracked here only when none was).
    async fn submit_cell(&self, req: SubmitRequest) -> Result<(Execution, sync::Written), ToolError> {
        let s = self.svc.submit(req).await?;
        let written = s.written.unwrap_or_else(|| self.sync.track(&s.execution.id));
        Ok((s.execution, written))
    }

    /// The code cell `cell_id` of `path`: its normalised path and source.
    async fn code_cell(&self, path_in: &str, cell_id: &str) -> Result<(String, String), NotebookError> {
        let rel = path::display(&path::notebook(path_in)?);
        let (p, id) = (path_in.to_string(), cell_id.to_string());
        let source = self
            .ws()
            .run(move |ws| {
                let nb = ws.read(&p)?;
                let cell = model::cell(&nb, &id).ok_or_else(|| NotebookError::UnknownCell {
                    path: p.clone(),
                    id: id.clone(),
                })?;
                if model::cell_type(cell) != "code" {
                    return Err(NotebookError::BadRequest(format!(
                        "cell {id} is a {} cell; only code cells run",
                        model::cell_type(cell)
                    )));
                }
                Ok(model::source(cell))
            })
            .await?;
        Ok((rel, source))
    }

    fn kernel_info(&self) -> KernelInfo {
        let k = self.svc.kernel_status();
        let field = |name: &str| k.info.get(name).cloned().unwrap_or(Value::Null);
        KernelInfo {
            state: k.state,
            restarts: k.restarts,
            pid: k.pid,
            language_info: field("language_info"),
            implementation: field("implementation"),
            queue: None,
        }
    }
}

#[tool_router]
impl Tools {
    /// Runs code in the kernel and returns its outputs.
    #[tool(
        description = "Run code in the Jupyter kernel and return its outputs: text for printed output, results and errors (with traceback), images for PNG/JPEG. The execution is queued durably and runs in submission order. If it is not finished within timeout_s (default 30 s), the call returns its id and state instead of an error (a task handle, for clients that declared the MCP tasks extension); the execution continues and get_execution returns its result later. Sends progress notifications while waiting when the request has a progress token.",
        output_schema = schema_for_output::<ExecutionHeader>()
    )]
    async fn execute(
        &self,
        Parameters(p): Parameters<ExecuteParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ToolError> {
        let wants_task = ctx.client_capabilities().is_some_and(|c| c.supports_tasks());
        let wait = wait_for(p.timeout_s, DEFAULT_WAIT_S, "timeout_s")?;
        let req = SubmitRequest {
            code: p.code,
            key: p.key,
            ..Default::default()
        };
        let (result, e) = match progress_of(&ctx.meta, ctx.peer.clone()) {
            // No progress to send: submit and wait in one step.
            None => {
                let t0 = Instant::now();
                let e = self.svc.submit_and_wait(req, wait).await?.execution;
                (self.result_of(&e, t0), e)
            }
            Some(progress) => {
                let e = self.submit_code(req).await?;
                self.wait_result(&e.id, wait, Some(progress)).await?
            }
        };
        // Not finished in time, and the client takes tasks: a task handle.
        Ok(if wants_task && !e.state.is_final() {
            tasks::created(&e, self.task_ttl_ms())
        } else {
            result.into()
        })
    }

    #[tool(
        description = "Queue code for the kernel without waiting; returns the execution id and state at once. Fetch the result with get_execution."
    )]
    async fn submit(&self, Parameters(p): Parameters<SubmitParams>) -> Result<Json<Submission>, ToolError> {
        let s = self
            .svc
            .submit(SubmitRequest {
                code: p.code,
                key: p.key,
                ..Default::default()
            })
            .await?;
        let e = s.execution;
        let replayed = !s.created;
        Ok(Json(Submission {
            id: e.id,
            state: e.state,
            created_at: e.created_at,
            replayed: replayed.then_some(true),
            code_differs: replayed.then_some(s.code_differs),
        }))
    }

    #[tool(
        description = "An execution's state and outputs by id, optionally waiting up to wait_s seconds for it to finish (push-based: returns as soon as it does).",
        output_schema = schema_for_output::<ExecutionHeader>()
    )]
    async fn get_execution(
        &self,
        Parameters(p): Parameters<GetExecutionParams>,
    ) -> Result<CallToolResult, ToolError> {
        let wait = wait_for(p.wait_s, 0.0, "wait_s")?;
        Ok(self.wait_result(&p.id, wait, None).await?.0)
    }

    #[tool(
        description = "Recent executions, newest first, as summaries (code preview, output counts; get_execution has the whole of one), optionally only those in one state (queued, running, completed, failed, cancelled). A page holds up to `limit` rows and 256 KiB; `next_cursor` fetches the next."
    )]
    async fn list_executions(
        &self,
        Parameters(p): Parameters<ListExecutionsParams>,
    ) -> Result<Json<store::Page>, ToolError> {
        let q = store::ListQuery::parse(p.state.as_deref(), p.limit, p.cursor.as_deref())
            .map_err(|(field, message)| ToolError::new(format!("{field}: {message}")))?;
        let page = self
            .svc
            .list(q)
            .await
            .map_err(|e| ToolError::new(format!("listing executions: {e}")))?;
        Ok(Json(page))
    }

    #[tool(description = "Cancel an execution: a queued one is cancelled, the running one is interrupted.")]
    async fn cancel_execution(
        &self,
        Parameters(p): Parameters<IdParams>,
    ) -> Result<Json<CancelOutcome>, ToolError> {
        Ok(Json(self.svc.cancel(&p.id).await?))
    }

    #[tool(
        description = "Interrupt the kernel (like Ctrl-C): the running execution stops with KeyboardInterrupt; queued ones then run."
    )]
    async fn interrupt_kernel(&self) -> Result<Json<Interrupted>, ToolError> {
        self.svc.interrupt().await?;
        Ok(Json(Interrupted { interrupted: true }))
    }

    #[tool(
        description = "Restart the kernel: all variables are lost; the running execution fails with reason kernel_restarted, queued ones run on the new kernel."
    )]
    async fn restart_kernel(&self) -> Result<Json<KernelInfo>, ToolError> {
        self.svc.restart().await?;
        Ok(Json(self.kernel_info()))
    }

    #[tool(
        description = "The kernel's state (starting, idle, busy, restarting, dead), restart count, language, and the queue's counts."
    )]
    async fn kernel_status(&self) -> Result<Json<KernelInfo>, ToolError> {
        Ok(Json(KernelInfo {
            queue: self.svc.queue().await.ok(),
            ..self.kernel_info()
        }))
    }

    #[tool(description = "The notebooks (.ipynb) in the workspace, with size and modification time.")]
    async fn list_notebooks(&self) -> Result<Json<NotebookList>, ToolError> {
        let (notebooks, truncated) = self.ws().run(|ws| ws.list()).await?;
        Ok(Json(NotebookList { notebooks, truncated }))
    }

    #[tool(
        description = "Create an empty notebook (nbformat 4.5) at a path relative to the workspace; missing directories are made. Fails if the file exists."
    )]
    async fn create_notebook(
        &self,
        Parameters(p): Parameters<PathParams>,
    ) -> Result<Json<CreatedNotebook>, ToolError> {
        let nb = model::new_notebook(&self.svc.kernel_status().info);
        let path = self.sync.edit(move |ws| ws.create(&p.path, &nb)).await?;
        Ok(Json(CreatedNotebook { path, cells: 0 }))
    }

    #[tool(
        description = "A notebook's cells in order: id, type, source, execution_count and a summary of each output (text capped; images named with their size)."
    )]
    async fn read_notebook(
        &self,
        Parameters(p): Parameters<PathParams>,
    ) -> Result<Json<NotebookSummary>, ToolError> {
        let path_in = p.path.clone();
        let nb = self.ws().run(move |ws| ws.read(&path_in)).await?;
        Ok(Json(notebook_summary(p.path, &nb)))
    }

    #[tool(
        description = "Insert a cell into a notebook, at index or after the cell after_id (appended when neither is given); returns the new cell's id."
    )]
    async fn insert_cell(
        &self,
        Parameters(p): Parameters<InsertCellParams>,
    ) -> Result<Json<InsertedCell>, ToolError> {
        let at = match (p.index, p.after_id) {
            (Some(_), Some(_)) => return Err(ToolError::new("give index or after_id, not both")),
            (Some(i), None) => Position::Index(i),
            (None, Some(id)) => Position::After(id),
            (None, None) => Position::End,
        };
        let kind: CellType = p.cell_type.into();
        let path_in = p.path.clone();
        let source = p.source;
        let (cell_id, index) = self
            .sync
            .edit(move |ws| ws.update(&path_in, |nb| model::insert(nb, at, kind, &source)))
            .await?;
        Ok(Json(InsertedCell {
            path: p.path,
            cell_id,
            index,
            cell_type: p.cell_type,
        }))
    }

    #[tool(
        description = "Replace the source of a cell, found by its id. A code cell's outputs stay until it runs again."
    )]
    async fn edit_cell(
        &self,
        Parameters(p): Parameters<EditCellParams>,
    ) -> Result<Json<EditedCell>, ToolError> {
        let (path_in, id, source) = (p.path.clone(), p.cell_id.clone(), p.source);
        self.sync
            .edit(move |ws| ws.update(&path_in, |nb| model::edit(nb, &id, &source)))
            .await?;
        Ok(Json(EditedCell {
            path: p.path,
            cell_id: p.cell_id,
        }))
    }

    #[tool(description = "Delete a cell, found by its id.")]
    async fn delete_cell(
        &self,
        Parameters(p): Parameters<CellParams>,
    ) -> Result<Json<DeletedCell>, ToolError> {
        let (path_in, id) = (p.path.clone(), p.cell_id.clone());
        self.sync
            .edit(move |ws| ws.update(&path_in, |nb| model::delete(nb, &id)))
            .await?;
        Ok(Json(DeletedCell {
            path: p.path,
            deleted: p.cell_id,
        }))
    }

    #[tool(
        description = "Run one code cell of a notebook in the kernel and return its outputs. The outputs and execution_count are written into the notebook when the execution finishes, even if this call has returned (timeout_s, default 30 s) or the client disconnected. Sends progress notifications while waiting when the request has a progress token.",
        output_schema = schema_for_output::<ExecutionHeader>()
    )]
    async fn run_cell(
        &self,
        Parameters(p): Parameters<RunCellParams>,
        meta: RequestMetaObject,
        peer: Peer<RoleServer>,
    ) -> Result<CallToolResult, ToolError> {
        let wait = wait_for(p.timeout_s, DEFAULT_WAIT_S, "timeout_s")?;
        let (rel, source) = self.code_cell(&p.path, &p.cell_id).await?;
        let req = SubmitRequest {
            code: source,
            notebook: Some(rel),
            cell_id: Some(p.cell_id.clone()),
            ..Default::default()
        };
        let (e, written) = self.submit_cell(req).await?;
        let (mut result, e) = self.wait_result(&e.id, wait, progress_of(&meta, peer)).await?;
        if e.state.is_final() {
            match sync::written(written, WRITE_WAIT).await {
                Some(Ok(())) => {}
                Some(Err(msg)) => result.content.push(ContentBlock::text(format!(
                    "The outputs could not be written into the notebook: {msg}"
                ))),
                None => result.content.push(ContentBlock::text(
                    "The outputs are not yet written into the notebook; they will be.",
                )),
            }
        }
        Ok(result)
    }

    #[tool(
        description = "Run every code cell of a notebook in order (each one an execution tied to its cell, queued at once; an error does not stop the later cells). Waits up to timeout_s (default 30 s) for the last one and returns each cell's execution id, state and count; outputs are written into the notebook as each finishes."
    )]
    async fn run_all(&self, Parameters(p): Parameters<RunAllParams>) -> Result<Json<NotebookRun>, ToolError> {
        let wait = wait_for(p.timeout_s, DEFAULT_WAIT_S, "timeout_s")?;
        let rel = path::display(&path::notebook(&p.path)?);
        let path_in = p.path.clone();
        let nb = self.ws().run(move |ws| ws.read(&path_in)).await?;
        let cells: Vec<(String, String)> = nb["cells"]
            .as_array()
            .map(|cells| {
                cells
                    .iter()
                    .filter(|c| model::cell_type(c) == "code" && !model::source(c).trim().is_empty())
                    .filter_map(|c| Some((model::cell_id(c)?.to_string(), model::source(c))))
                    .collect()
            })
            .unwrap_or_default();
        let mut runs = Vec::with_capacity(cells.len());
        for (cell_id, code) in cells {
            let req = SubmitRequest {
                code,
                notebook: Some(rel.clone()),
                cell_id: Some(cell_id.clone()),
                ..Default::default()
            };
            let (e, written) = self.submit_cell(req).await?;
            runs.push((cell_id, e.id, written));
        }
        if let Some((_, last, _)) = runs.last() {
            let _ = self.svc.wait(last, wait).await;
        }
        let mut cells = Vec::with_capacity(runs.len());
        let mut first_error = None;
        for (cell_id, id, written) in runs {
            let e = self.svc.get(&id).await.ok().flatten();
            if let Some(e) = &e {
                if e.state.is_final() {
                    let _ = sync::written(written, WRITE_WAIT).await;
                }
                if first_error.is_none() && e.state == store::State::Failed {
                    let err = e
                        .outputs
                        .iter()
                        .find(|o| o["output_type"] == "error")
                        .or(e.error.as_ref());
                    first_error = err.map(|o| CellError {
                        cell_id: cell_id.clone(),
                        error: content::cap_text(&content::error_text(o), READ_TEXT_BYTES, "traceback"),
                    });
                }
            }
            cells.push(CellRun {
                cell_id,
                id,
                state: e.as_ref().map(|e| e.state),
                execution_count: e.as_ref().and_then(|e| e.execution_count),
            });
        }
        Ok(Json(NotebookRun {
            path: rel,
            cells,
            first_error,
        }))
    }

    #[tool(
        description = "The asset files of the workspace (large outputs moved to assets/<sha256>.<ext>): name, size, mime type, creation time, the notebooks that reference each, and whether it is pinned."
    )]
    async fn list_assets(&self) -> Result<Json<Catalog>, ToolError> {
        Ok(Json(self.svc.asset_catalog().await?))
    }

    /// Images and text are content blocks, so no output schema: only an
    /// asset shown neither way is an [`AssetRef`].
    #[tool(
        description = "Read one asset file by name (<sha256>.<ext>): images come back as image content (up to 1 MiB), text types as text, anything else as its size and URL."
    )]
    async fn read_asset(&self, Parameters(p): Parameters<AssetParams>) -> Result<CallToolResult, ToolError> {
        let url = format!("/v1/assets/{}", p.name);
        let reference = |mime: String, size: u64, name: String| {
            serde_json::to_value(AssetRef {
                name,
                mime,
                size,
                url,
            })
            .map(CallToolResult::structured)
            .map_err(|e| ToolError::new(format!("asset {}: {e}", p.name)))
        };
        // Larger than any answer would carry: its size and URL only.
        let (bytes, mime) = match self.svc.asset_content(&p.name, 8 << 20).await {
            Ok(b) => b,
            Err(AssetError::Unreadable(ConfinedError::TooLarge { size, .. })) => {
                let mime = crate::sidecar::assets::mime_of(&p.name);
                return reference(mime.to_string(), size, p.name.clone());
            }
            Err(e) => return Err(e.into()),
        };
        if mime.starts_with("image/") && mime != "image/svg+xml" && bytes.len() <= 1 << 20 {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
            Ok(CallToolResult::success(vec![ContentBlock::image(b64, mime)]))
        } else if mime.starts_with("text/") || mime == "application/json" || mime == "image/svg+xml" {
            let text = String::from_utf8_lossy(&bytes);
            Ok(CallToolResult::success(vec![ContentBlock::text(
                content::cap_text(&text, 256 << 10, &p.name),
            )]))
        } else {
            reference(mime, bytes.len() as u64, p.name.clone())
        }
    }

    #[tool(description = "Pin an asset: it is never deleted while pinned, whatever its lease says.")]
    async fn pin_asset(&self, Parameters(p): Parameters<AssetParams>) -> Result<Json<Pinned>, ToolError> {
        self.set_pin(p.name, true).await
    }

    #[tool(
        description = "Unpin an asset: it may be deleted again once its lease expired and no notebook references it."
    )]
    async fn unpin_asset(&self, Parameters(p): Parameters<AssetParams>) -> Result<Json<Pinned>, ToolError> {
        self.set_pin(p.name, false).await
    }
}

/// Cells with ids, capped sources and output summaries, within READ_TOTAL_BYTES.
fn notebook_summary(path: String, nb: &Value) -> NotebookSummary {
    let cells = nb["cells"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let mut out = Vec::with_capacity(cells.len());
    let mut used = 0usize;
    let mut truncated = false;
    for (i, c) in cells.iter().enumerate() {
        let code = (model::cell_type(c) == "code").then(|| CodeCellSummary {
            execution_count: c.get("execution_count").and_then(Value::as_i64),
            outputs: c["outputs"]
                .as_array()
                .map(|o| {
                    o.iter()
                        .map(|o| content::summarise_output(o, READ_TEXT_BYTES))
                        .collect()
                })
                .unwrap_or_default(),
        });
        let cell = CellSummary {
            index: i,
            id: model::cell_id(c).map(str::to_string),
            cell_type: model::cell_type(c).to_string(),
            source: content::cap_text(&model::source(c), READ_TEXT_BYTES, "source"),
            code,
        };
        let size = serde_json::to_string(&cell).map_or(0, |s| s.len());
        if used + size > READ_TOTAL_BYTES {
            truncated = true;
            break;
        }
        used += size;
        out.push(cell);
    }
    NotebookSummary {
        path,
        cell_count: cells.len(),
        cells: out,
        truncated,
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    /// `tasks/get`: the execution with this id, as a task.
    async fn get_task(
        &self,
        request: GetTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        match self.svc.get(&request.task_id).await {
            Ok(Some(e)) => Ok(GetTaskResult::new(tasks::detailed(
                &e,
                &self.caps,
                self.task_ttl_ms(),
            ))),
            Ok(None) => Err(ErrorData::invalid_params(
                format!("no task {}", request.task_id),
                None,
            )),
            Err(e) => Err(ErrorData::internal_error(
                format!("reading task {}: {e}", request.task_id),
                None,
            )),
        }
    }

    /// `tasks/cancel`: cancels the execution (a queued one at once, the
    /// running one by interrupting the kernel).
    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        match self.svc.cancel(&request.task_id).await {
            Ok(_) => Ok(()),
            Err(ControlError::NotFound(id)) => Err(ErrorData::invalid_params(format!("no task {id}"), None)),
            Err(e) => Err(ErrorData::internal_error(e.to_string(), None)),
        }
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tasks()
                .build(),
        )
        .with_server_info(Implementation::new(
            "notebook-operator",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_instructions(
            "A Jupyter kernel with a durable execution queue and the notebooks of its workspace. \
                 Use execute to run code and get its outputs; long work returns an execution id that \
                 get_execution fetches later, so nothing is lost to a timeout. Build notebooks with \
                 create_notebook, insert_cell and run_cell: outputs are saved into the file.",
        )
    }
}

#[cfg(test)]
mod tests {
    use serde::Serialize;
    use serde_json::{json, Map};

    use super::*;
    use crate::store::State;

    /// Every `$ref` in `v` names a definition of `root`.
    fn refs_resolve(v: &Value, root: &Map<String, Value>, tool: &str) {
        match v {
            Value::Object(o) => {
                if let Some(r) = o.get("$ref").and_then(Value::as_str) {
                    let name = r
                        .strip_prefix("#/$defs/")
                        .unwrap_or_else(|| panic!("{tool}: {r}"));
                    assert!(root["$defs"].get(name).is_some(), "{tool}: {r} does not resolve");
                }
                o.values().for_each(|v| refs_resolve(v, root, tool));
            }
            Value::Array(a) => a.iter().for_each(|v| refs_resolve(v, root, tool)),
            _ => {}
        }
    }

    #[test]
    fn every_tool_but_read_asset_publishes_an_object_output_schema() {
        for t in Tools::definitions() {
            let Some(schema) = &t.output_schema else {
                // An image or a text is no JSON object to describe.
                assert_eq!(t.name, "read_asset", "{} publishes no outputSchema", t.name);
                continue;
            };
            assert_ne!(t.name, "read_asset");
            assert_eq!(schema.get("type"), Some(&json!("object")), "{}", t.name);
            assert!(
                schema.get("properties").is_some_and(Value::is_object),
                "{}",
                t.name
            );
            refs_resolve(&Value::Object((**schema).clone()), schema, &t.name);
        }
    }

    /// `value` has every field `schema` requires and none it does not name.
    fn fits(value: &impl Serialize, schema: &Map<String, Value>) -> Result<(), String> {
        let value = serde_json::to_value(value).map_err(|e| e.to_string())?;
        let fields = value.as_object().ok_or("not an object")?;
        let props = schema["properties"].as_object().ok_or("no properties")?;
        let required = schema
            .get("required")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for r in required.iter().filter_map(Value::as_str) {
            if !fields.contains_key(r) {
                return Err(format!("{r} is required and missing from {value}"));
            }
        }
        match fields.keys().find(|k| !props.contains_key(*k)) {
            Some(k) => Err(format!("{k} is not in the schema")),
            None => Ok(()),
        }
    }

    #[test]
    fn answers_have_the_fields_their_schemas_name() {
        let schema = |name: &str| {
            let t = Tools::definitions().into_iter().find(|t| t.name == name).unwrap();
            (*t.output_schema.unwrap()).clone()
        };
        let fresh = Submission {
            id: "e1".into(),
            state: State::Queued,
            created_at: "t".into(),
            replayed: None,
            code_differs: None,
        };
        fits(&fresh, &schema("submit")).unwrap();
        let replay = Submission {
            replayed: Some(true),
            code_differs: Some(false),
            ..fresh
        };
        fits(&replay, &schema("submit")).unwrap();
        let header = ExecutionHeader {
            id: "e1".into(),
            state: State::Running,
            execution_count: None,
            reason: None,
            notebook: Some("a.ipynb".into()),
            cell_id: Some("c1".into()),
            waited_s: Some(0.5),
        };
        for tool in ["execute", "get_execution", "run_cell"] {
            fits(&header, &schema(tool)).unwrap();
        }
        let nb = json!({"cells": [
            {"id": "m", "cell_type": "markdown", "source": "# x", "metadata": {}},
            {"id": "c", "cell_type": "code", "source": "1", "metadata": {}, "execution_count": 1,
             "outputs": [{"output_type": "execute_result", "data": {"text/plain": "1"}, "metadata": {}, "execution_count": 1}]}]});
        let summary = notebook_summary("a.ipynb".into(), &nb);
        fits(&summary, &schema("read_notebook")).unwrap();
        let cells = serde_json::to_value(&summary).unwrap()["cells"].clone();
        assert!(cells[0].get("outputs").is_none() && cells[0].get("execution_count").is_none());
        assert_eq!(cells[1]["execution_count"], 1);
        assert_eq!(cells[1]["outputs"][0]["text"], "1");
    }
}
