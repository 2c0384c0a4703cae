//! The MCP Tasks extension (SEP-2663, `io.modelcontextprotocol/tasks`) over
//! the durable queue: a task is an execution, its id the execution id. When
//! a client that declared the extension calls `execute` and the execution
//! is not finished within `timeout_s`, the call answers with a task handle
//! instead of an id in text; `tasks/get` reports the execution (and, once
//! it is final, the same tool result `execute` would have given), and
//! `tasks/cancel` cancels it. Tasks live as long as their execution record,
//! so they survive a restart of the sidecar.

use rmcp::model::{CallToolResponse, CreateTaskResult, DetailedTask, Task, TaskPayload, TaskStatus};
use serde_json::Value;

use super::content::{self, Caps};
use crate::store::{Execution, State};

/// How often a client should ask `tasks/get` (a hint; the answer is cheap).
pub const POLL_INTERVAL_MS: u64 = 1000;

/// `ttl_ms`: how long the record is kept after it finishes (the retention).
fn base(e: &Execution, ttl_ms: u64) -> Task {
    let updated = e
        .finished_at
        .clone()
        .or_else(|| e.started_at.clone())
        .unwrap_or_else(|| e.created_at.clone());
    Task::new(e.id.clone(), TaskStatus::Working, e.created_at.clone(), updated)
        .with_status_message(e.state.to_string())
        .with_poll_interval_ms(POLL_INTERVAL_MS)
        .with_ttl_ms(ttl_ms)
}

/// The handle `execute` returns for an execution still queued or running.
pub fn created(e: &Execution, ttl_ms: u64) -> CallToolResponse {
    CallToolResponse::Task(CreateTaskResult::new(base(e, ttl_ms)))
}

/// The task state of an execution, with its tool result once final (a failed
/// execution is a completed tool call whose result has `isError: true`).
pub fn detailed(e: &Execution, caps: &Caps, ttl_ms: u64) -> DetailedTask {
    let payload = match e.state {
        State::Queued | State::Running => TaskPayload::Working,
        State::Cancelled => TaskPayload::Cancelled,
        State::Completed | State::Failed => {
            let result = content::execution_result(e, 0.0, caps);
            match serde_json::to_value(result) {
                Ok(Value::Object(result)) => TaskPayload::Completed { result },
                _ => TaskPayload::Working,
            }
        }
    };
    DetailedTask::new(base(e, ttl_ms), payload)
}
