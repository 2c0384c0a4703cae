//! The execution record and its state machine.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

/// Why an execution ended other than by completing. One type for the
/// kernel actor that decides it, the store that keeps it and the clients
/// that read it (serialised as snake_case: `kernel_died`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The code raised (the kernel replied `error`).
    Error,
    /// The kernel aborted it (an earlier cell in the same request failed).
    Aborted,
    /// The kernel went away while it ran.
    KernelDied,
    /// A client restarted the kernel while it ran.
    KernelRestarted,
    /// Interrupted: by a client, or by a sidecar restart that left it behind.
    Interrupted,
    /// Its `timeout_s` passed.
    Timeout,
    /// A client cancelled it.
    Cancelled,
    /// A reason recorded by another version of the sidecar.
    #[serde(other)]
    Unknown,
}

impl EndReason {
    pub const ALL: [EndReason; 8] = [
        EndReason::Error,
        EndReason::Aborted,
        EndReason::KernelDied,
        EndReason::KernelRestarted,
        EndReason::Interrupted,
        EndReason::Timeout,
        EndReason::Cancelled,
        EndReason::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Error => "error",
            EndReason::Aborted => "aborted",
            EndReason::KernelDied => "kernel_died",
            EndReason::KernelRestarted => "kernel_restarted",
            EndReason::Interrupted => "interrupted",
            EndReason::Timeout => "timeout",
            EndReason::Cancelled => "cancelled",
            EndReason::Unknown => "unknown",
        }
    }

    /// The stored text back; text no version of this enum wrote is `Unknown`.
    pub fn parse(s: &str) -> EndReason {
        EndReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .unwrap_or(EndReason::Unknown)
    }
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl State {
    pub const ALL: [State; 5] = [
        State::Queued,
        State::Running,
        State::Completed,
        State::Failed,
        State::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Completed => "completed",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(self, State::Completed | State::Failed | State::Cancelled)
    }

    /// The one place that says which transitions exist:
    /// `queued → running → completed | failed | cancelled`, and a queued
    /// execution may be cancelled, or fail without running (kernel lost while
    /// it was dispatched).
    pub fn can_become(self, to: State) -> bool {
        matches!(
            (self, to),
            (State::Queued, State::Running)
                | (State::Queued, State::Cancelled)
                | (State::Queued, State::Failed)
                | (State::Queued, State::Completed)
                | (State::Running, State::Completed)
                | (State::Running, State::Failed)
                | (State::Running, State::Cancelled)
        )
    }

    /// States from which `to` may be reached.
    pub fn sources_of(to: State) -> Vec<State> {
        State::ALL.into_iter().filter(|s| s.can_become(to)).collect()
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `execute_request` of a Jupyter client (the channels WebSocket): the
/// execution is sent to the kernel with this header, metadata and content,
/// so the kernel's messages carry the client's own `msg_id` as parent.
/// The code is the execution's and is not repeated in `content`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClientRequest {
    pub header: crate::jupyter::Header,
    #[serde(default)]
    pub metadata: Value,
    #[serde(default)]
    pub content: Value,
}

impl ClientRequest {
    /// The client answers the kernel's `input_request`s itself.
    pub fn allows_stdin(&self) -> bool {
        self.content
            .get("allow_stdin")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

/// What a client submits.
#[derive(Debug, Clone, Default)]
pub struct NewExecution {
    pub id: String,
    pub key: Option<String>,
    pub code: String,
    pub notebook: Option<String>,
    pub cell_id: Option<String>,
    pub timeout_s: Option<f64>,
    pub created_at: String,
    pub client_request: Option<ClientRequest>,
}

/// What an output limit left out of an execution: outputs are never cut
/// silently, so a client can tell exactly how much it kept and why.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Truncation {
    /// Output bytes (stream text and rich values) kept.
    pub kept_bytes: u64,
    /// Output bytes the kernel sent that were not kept.
    pub dropped_bytes: u64,
    /// Output messages not kept (whole or in part).
    pub dropped_messages: u64,
    /// The limit that was hit, in bytes.
    pub limit_bytes: u64,
    /// Which limit: `max_output_bytes`.
    pub reason: String,
}

/// Everything written with the final state, in the same commit.
#[derive(Debug, Clone)]
pub struct FinalRecord {
    pub state: State,
    pub reason: Option<EndReason>,
    pub outputs: Vec<Value>,
    pub execution_count: Option<i64>,
    pub error: Option<Value>,
    pub finished_at: String,
    pub truncated: Option<Truncation>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Execution {
    pub id: String,
    pub key: Option<String>,
    pub state: State,
    pub reason: Option<EndReason>,
    pub code: String,
    pub notebook: Option<String>,
    pub cell_id: Option<String>,
    pub outputs: Vec<Value>,
    pub execution_count: Option<i64>,
    pub error: Option<Value>,
    pub timeout_s: Option<f64>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Set when an output limit was hit: what was kept and what was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<Truncation>,
    /// Submitted by a Jupyter client over the channels WebSocket: its request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_request: Option<ClientRequest>,
}

impl Execution {
    /// The `msg_id` its execute_request goes out with: a Jupyter client's
    /// own, else `proposed` (the kernel actor's).
    pub fn request_msg_id<'a>(&'a self, proposed: &'a str) -> &'a str {
        self.client_request
            .as_ref()
            .map_or(proposed, |r| r.header.msg_id.as_str())
    }

    /// A Jupyter client sent it with `allow_stdin` and answers its `input_request`s.
    pub fn client_answers_input(&self) -> bool {
        self.client_request
            .as_ref()
            .is_some_and(ClientRequest::allows_stdin)
    }
}

/// An execution as a list shows it: bounded in size whatever the code and
/// outputs weigh (the code cut to a preview, outputs counted, not copied).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct Summary {
    pub id: String,
    pub key: Option<String>,
    pub state: State,
    pub reason: Option<EndReason>,
    /// The first characters of the code (at most [`PREVIEW_CHARS`]).
    pub code: String,
    pub code_bytes: u64,
    pub notebook: Option<String>,
    pub cell_id: Option<String>,
    pub execution_count: Option<i64>,
    /// How many outputs, and their size as stored.
    pub outputs: u64,
    pub output_bytes: u64,
    pub truncated: bool,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

/// Characters of code a summary keeps.
pub const PREVIEW_CHARS: usize = 200;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_states_are_final() {
        for from in State::ALL.into_iter().filter(|s| s.is_final()) {
            for to in State::ALL {
                assert!(!from.can_become(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn running_cannot_go_back_to_queued() {
        assert!(!State::Running.can_become(State::Queued));
        assert!(State::Queued.can_become(State::Running));
        assert_eq!(State::sources_of(State::Running), vec![State::Queued]);
    }

    #[test]
    fn states_parse_their_names() {
        for s in State::ALL {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert_eq!(State::parse("done"), None);
    }

    #[test]
    fn end_reasons_are_one_text_for_the_store_and_for_clients() {
        for r in EndReason::ALL {
            assert_eq!(EndReason::parse(r.as_str()), r);
            assert_eq!(
                serde_json::to_value(r).expect("json"),
                serde_json::json!(r.as_str())
            );
        }
        assert_eq!(EndReason::parse("meteor_strike"), EndReason::Unknown);
        let read: EndReason = serde_json::from_str("\"meteor_strike\"").expect("lenient");
        assert_eq!(read, EndReason::Unknown);
    }
}
