//! Durable state in SQLite: one writer thread that group-commits, and
//! read-only connections for everything else.

pub mod model;
pub mod reader;
pub mod schema;
pub mod writer;

pub use model::{ClientRequest, EndReason, Execution, FinalRecord, NewExecution, State, Summary, Truncation};
pub use reader::{ListQuery, Page, Reader};
pub use writer::{EnqueueOutcome, Taking, Writer};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the database is in journal mode {0:?}, need wal")]
    NotWal(String),
    #[error("the database schema is version {found}, newer than this binary understands ({supported}); use a newer notebook-operator")]
    TooNew { found: i64, supported: i64 },
    #[error("the database is unavailable for writing: {0}")]
    Unavailable(String),
    #[error("no execution {0}")]
    NotFound(String),
    #[error("execution {id} is {state}, cannot become {to}")]
    BadTransition { id: String, state: String, to: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
