//! The kernel-facing API of the sidecar: the commands the kernel actor
//! ([`super::executor`]) takes, the kernel's state it publishes, and the
//! errors of control operations. The service and the transports use these
//! types; none of them needs the actor itself.

use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

pub use crate::sidecar_api::KernelState;
use crate::store::StoreError;

pub enum Command {
    Cancel {
        id: String,
        reply: oneshot::Sender<Result<CancelOutcome, ControlError>>,
    },
    Interrupt(oneshot::Sender<Result<(), ControlError>>),
    Restart(oneshot::Sender<Result<(), ControlError>>),
    /// Finish the running execution within the grace, then stop.
    Shutdown(oneshot::Sender<()>),
    /// A Jupyter client's message for the kernel, sent as it is (completion,
    /// inspection, comms, stdin replies: everything but executions, which
    /// are queued). The kernel's answers reach the client through the hub.
    Forward(crate::jupyter::Channel, Box<crate::jupyter::Message>),
}

#[derive(Debug, Clone, Serialize)]
pub struct KernelStatus {
    pub state: KernelState,
    pub restarts: u64,
    pub pid: Option<i32>,
    /// Frames dropped because they failed signature checks or decoding.
    pub dropped_messages: u64,
    /// The kernel's `kernel_info_reply` content.
    pub info: Value,
}

impl Default for KernelStatus {
    fn default() -> Self {
        KernelStatus {
            state: KernelState::Starting,
            restarts: 0,
            pid: None,
            dropped_messages: 0,
            info: json!({}),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no execution {0}")]
    NotFound(String),
    #[error("{0}")]
    Failed(String),
    #[error("the kernel actor has stopped")]
    Stopped,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct CancelOutcome {
    pub id: String,
    /// `cancelled` for a queued execution, `interrupting` for the running one,
    /// or the final state it already had.
    pub result: String,
}
