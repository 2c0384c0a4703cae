//! The execution record and its state machine.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
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
}

/// Everything written with the final state, in the same commit.
#[derive(Debug, Clone)]
pub struct FinalRecord {
    pub state: State,
    pub reason: Option<String>,
    pub outputs: Vec<Value>,
    pub execution_count: Option<i64>,
    pub error: Option<Value>,
    pub finished_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Execution {
    pub id: String,
    pub key: Option<String>,
    pub state: State,
    pub reason: Option<String>,
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
}

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
}
