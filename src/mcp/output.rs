//! What the sidecar's tools answer, as types: each is the tool's structured
//! content (and, serialised, its text block), and its JSON Schema is the
//! tool's published `outputSchema`. Records the HTTP API serves too (the
//! execution list, the asset catalog, queue counts) are the same types here.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::notebook::model::CellType;
use crate::notebook::workspace::Entry;
use crate::sidecar_api::{KernelState, QueueCounts};
use crate::store::{EndReason, State};

/// What every tool that waited for an execution answers first (its
/// structured content): the execution's id, state and count.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ExecutionHeader {
    pub id: String,
    pub state: State,
    pub execution_count: Option<i64>,
    /// Why it ended, when not by completing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<EndReason>,
    /// The notebook and cell it runs for (run_cell, run_all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notebook: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cell_id: Option<String>,
    /// Seconds the call waited, when the execution is not finished yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waited_s: Option<f64>,
}

/// `submit`: the execution queued (or, for a repeated key, the first one).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Submission {
    pub id: String,
    pub state: State,
    pub created_at: String,
    /// The key was used before: this is the first execution made with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed: Option<bool>,
    /// With `replayed`: the first execution ran other code than this request's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code_differs: Option<bool>,
}

/// `interrupt_kernel`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Interrupted {
    pub interrupted: bool,
}

/// `kernel_status` and `restart_kernel`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct KernelInfo {
    pub state: KernelState,
    pub restarts: u64,
    pub pid: Option<i32>,
    /// The kernel's `language_info` (name, version, ...), as it reported it.
    pub language_info: Value,
    /// The kernel's implementation name.
    pub implementation: Value,
    /// Executions by state (`kernel_status` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueCounts>,
}

/// `list_notebooks`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct NotebookList {
    pub notebooks: Vec<Entry>,
    /// The walk stopped at its limit: there may be more.
    pub truncated: bool,
}

/// `create_notebook`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CreatedNotebook {
    pub path: String,
    pub cells: usize,
}

/// `read_notebook`: cells with ids, capped sources and output summaries.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct NotebookSummary {
    pub path: String,
    pub cell_count: usize,
    pub cells: Vec<CellSummary>,
    /// Cells past the size limit of one answer are left out.
    pub truncated: bool,
}

/// One cell of [`NotebookSummary`].
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CellSummary {
    pub index: usize,
    pub id: Option<String>,
    pub cell_type: String,
    pub source: String,
    /// Code cells only.
    #[serde(flatten)]
    pub code: Option<CodeCellSummary>,
}

/// What a code cell adds to its [`CellSummary`].
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CodeCellSummary {
    pub execution_count: Option<i64>,
    /// Per output: its type, and its text capped or its data named with sizes.
    pub outputs: Vec<Value>,
}

/// A cell's type, as `insert_cell` takes it and answers it.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CellKind {
    #[default]
    Code,
    Markdown,
    Raw,
}

impl From<CellKind> for CellType {
    fn from(k: CellKind) -> Self {
        match k {
            CellKind::Code => CellType::Code,
            CellKind::Markdown => CellType::Markdown,
            CellKind::Raw => CellType::Raw,
        }
    }
}

/// `insert_cell`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct InsertedCell {
    pub path: String,
    pub cell_id: String,
    pub index: usize,
    pub cell_type: CellKind,
}

/// `edit_cell`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EditedCell {
    pub path: String,
    pub cell_id: String,
}

/// `delete_cell`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DeletedCell {
    pub path: String,
    /// The id of the cell deleted.
    pub deleted: String,
}

/// `run_all`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct NotebookRun {
    pub path: String,
    pub cells: Vec<CellRun>,
    /// The first cell that failed, with its error and traceback.
    pub first_error: Option<CellError>,
}

/// One cell's execution in [`NotebookRun`].
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CellRun {
    pub cell_id: String,
    /// The execution id.
    pub id: String,
    /// Absent (null) when the execution could not be read back.
    pub state: Option<State>,
    pub execution_count: Option<i64>,
}

/// [`NotebookRun::first_error`].
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CellError {
    pub cell_id: String,
    pub error: String,
}

/// `read_asset` of an asset that is not shown as content: where to fetch it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AssetRef {
    pub name: String,
    pub mime: String,
    pub size: u64,
    /// The HTTP path of its content.
    pub url: String,
}

/// `pin_asset` and `unpin_asset`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Pinned {
    pub name: String,
    pub pinned: bool,
}
