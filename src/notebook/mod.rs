//! Notebooks in the workspace: nbformat v4 files that agents read and change
//! cell by cell, and that executions tied to a cell write their outputs into.
//!
//! - `path`: turning a client's path into a file inside the workspace, or a
//!   refusal (`..`, absolute paths, symlinks that lead out).
//! - `model`: pure edits of the notebook JSON (cell ids kept, v4.5 ids added).
//! - `workspace`: reading, and writing atomically (temp file, fsync, rename)
//!   under one lock, so concurrent edits never lose each other.
//! - `sync`: the sidecar-side task that writes an execution's outputs into its
//!   cell when it finishes, whether or not the client that asked still waits.

pub mod model;
pub mod path;
pub mod sync;
pub mod workspace;

pub use sync::NotebookSync;
pub use workspace::Workspace;

/// Everything that can go wrong with a notebook request; each message is
/// meant to be read by the agent that made the request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NotebookError {
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("path {0:?} leads outside the workspace")]
    Escapes(String),
    #[error("no notebook at {0:?}")]
    NotFound(String),
    #[error("{0:?} already exists")]
    Exists(String),
    #[error("{path:?} is not an nbformat v4 notebook: {reason}")]
    NotANotebook { path: String, reason: String },
    #[error("no cell with id {id:?} in {path:?}")]
    UnknownCell { path: String, id: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("the notebook would reference asset {0}, which was deleted; run the cell again")]
    AssetGone(String),
    #[error("{0}")]
    Io(String),
}

impl NotebookError {
    pub fn io(path: &str, e: std::io::Error) -> Self {
        NotebookError::Io(format!("{path}: {e}"))
    }
}
