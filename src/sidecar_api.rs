//! The sidecar's HTTP contract with the operator and the gateway: the bodies
//! of `GET /v1/status`, `GET /v1/assets`, a refused `DELETE /v1/assets/{name}`
//! and every error. The sidecar serialises these types and its readers
//! deserialise the same ones, so the two sides cannot drift.
//!
//! Readers are lenient: a missing field takes its default, and a kernel state
//! this build does not know reads as [`KernelState::Unknown`], which is never
//! taken for a kernel that answers.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The kernel's state as the sidecar sees it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KernelState {
    /// Not yet connected.
    Starting,
    /// Connected, nothing running.
    Idle,
    /// Connected, running an execution.
    Busy,
    /// A restart the sidecar asked for (by request, or after an interrupt
    /// went unanswered) is under way.
    Restarting,
    /// The kernel went away on its own (killed, exited, silent); the sidecar
    /// waits for it to come back.
    Dead,
    /// A state a newer or older sidecar reported that this build does not
    /// know; never sent by this build.
    #[default]
    #[serde(other)]
    Unknown,
}

impl KernelState {
    /// The kernel is connected and answering (idle or working).
    pub fn answers(self) -> bool {
        matches!(self, KernelState::Idle | KernelState::Busy)
    }
}

/// `GET /v1/status`: what the operator copies into the session status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(default)]
pub struct Status {
    /// Kernel state and restart count.
    pub kernel: KernelSummary,
    /// Executions by state.
    pub queue: QueueCounts,
    /// An execution is queued or running.
    pub busy: bool,
    /// Last execution or client activity, RFC 3339.
    pub last_activity: Option<String>,
    /// Clients connected to the event stream or MCP now.
    pub clients: i64,
    /// Jupyter clients connected to the kernel's channels WebSocket
    /// (`/v1/kernel/channels`) now: a Jupyter kernel model's `connections`.
    pub connections: i64,
    /// The sidecar's own readiness (`/readyz`): the kernel answers.
    pub ready: bool,
    /// The event stream.
    pub events: EventsSummary,
    /// The pool's warmup code in this warm kernel, when it has any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Warmup>,
    /// [`Status::current_revision`] at the time of the answer, for the
    /// next `?revision=`. Readers compute it from the fields instead, so a
    /// sidecar that does not send it is still followed correctly.
    pub revision: String,
}

impl Status {
    /// What the operator copies into a session's status and acts on: the
    /// kernel's state and restarts, the queue counts and readiness, as one
    /// comparable text. Last activity, clients and the event stream are
    /// left out: they move with every request and every output, and the
    /// operator reads them when it looks anyway. `GET /v1/status?revision=R`
    /// answers once the revision is no longer `R`.
    pub fn current_revision(&self) -> String {
        let q = &self.queue;
        format!(
            "{:?}.{}/{}.{}.{}.{}.{}/{}",
            self.kernel.state,
            self.kernel.restarts,
            q.queued,
            q.running,
            q.completed,
            q.failed,
            q.cancelled,
            u8::from(self.ready),
        )
    }
}

/// What became of a warm pod's warmup code (`sidecar --warmup`), run in
/// the kernel before the pod counts as ready and kept out of the session's
/// history.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Warmup {
    /// Not finished yet: the sidecar is not ready.
    Running,
    /// Ran without an error.
    Done,
    /// Raised (or the kernel went away): the sidecar stays not ready.
    Failed {
        /// What went wrong, e.g. `ModuleNotFoundError: No module named 'pandas'`.
        error: String,
    },
}

impl Warmup {
    /// The sidecar may be ready: no warmup is pending or failed.
    pub fn allows_ready(warmup: Option<&Warmup>) -> bool {
        matches!(warmup, None | Some(Warmup::Done))
    }

    /// One line for `/readyz`, logs and the termination message.
    pub fn describe(&self) -> String {
        match self {
            Warmup::Running => "warmup running".into(),
            Warmup::Done => "warmup done".into(),
            Warmup::Failed { error } => format!("{WARMUP_FAILED}: {error}"),
        }
    }
}

/// How a failed warmup begins its message everywhere (`/readyz`, the
/// sidecar's termination message, the pool's condition), so a reader can
/// tell it from any other failure.
pub const WARMUP_FAILED: &str = "warmup failed";

/// Kernel part of [`Status`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(default)]
pub struct KernelSummary {
    /// The kernel's state.
    pub state: KernelState,
    /// Restarts since the sidecar started on this state.
    pub restarts: i64,
}

/// Executions by state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(default)]
pub struct QueueCounts {
    /// Waiting.
    pub queued: i64,
    /// Running.
    pub running: i64,
    /// Completed.
    pub completed: i64,
    /// Failed.
    pub failed: i64,
    /// Cancelled.
    pub cancelled: i64,
}

/// Event-stream part of [`Status`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(default)]
pub struct EventsSummary {
    /// Sequence number of the newest event.
    pub newest_seq: u64,
}

/// One entry of `GET /v1/assets`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(default)]
pub struct AssetEntry {
    /// `<sha256>.<ext>`.
    pub name: String,
    /// Relative to the workspace: `assets/<name>`.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Content type.
    pub mime: String,
    /// When the file was written, RFC 3339.
    pub created_at: String,
    /// Notebooks whose outputs name the asset, per the sidecar's index.
    pub referenced_by: Vec<String>,
    /// Pinned assets are never deleted.
    pub pinned: bool,
}

/// A notebook the reference index could not read.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(default)]
pub struct IndexProblem {
    /// Workspace-relative path.
    pub notebook: String,
    /// Why it could not be read.
    pub reason: String,
}

/// `GET /v1/assets`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(default)]
pub struct Catalog {
    /// The assets, oldest first.
    pub assets: Vec<AssetEntry>,
    /// Assets left out past the listing's limit.
    pub truncated: usize,
    /// Notebooks the reference index could not read: `referenced_by` may
    /// miss them (a delete re-checks from disk and refuses when unsure).
    pub index_problems: Vec<IndexProblem>,
}

/// Every error body: `{"error": {code, message, field}}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(default)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(default)]
pub struct ErrorDetail {
    /// A stable code: `not_found`, `invalid`, `in_use`, `unsure`, ...
    pub code: String,
    /// For people.
    pub message: String,
    /// The request field at fault, if one is.
    pub field: Option<String>,
}

/// 409 of `DELETE /v1/assets/{name}`: the asset stays.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(default)]
pub struct DeleteRefusal {
    /// `in_use` or `unsure`.
    pub error: ErrorDetail,
    /// The notebooks that reference it, read from disk under the lock.
    pub referenced_by: Vec<String>,
    /// Whether it is pinned.
    pub pinned: bool,
    /// Why the sidecar cannot be sure nothing references it.
    pub unsure: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(value: T) {
        let text = serde_json::to_string(&value).expect("serialises");
        let back: T = serde_json::from_str(&text).expect("reads back");
        assert_eq!(back, value, "{text}");
    }

    #[test]
    fn the_revision_moves_with_what_the_operator_copies_and_not_with_activity() {
        let base = Status::default();
        let mut same = base.clone();
        same.last_activity = Some("2026-12-01T12:00:00Z".into());
        same.clients = 3;
        same.events.newest_seq = 99;
        assert_eq!(same.current_revision(), base.current_revision());
        let mut changes = Vec::new();
        let mut s = base.clone();
        s.queue.queued = 1;
        changes.push(s);
        let mut s = base.clone();
        s.queue.completed = 1;
        changes.push(s);
        let mut s = base.clone();
        s.kernel.state = KernelState::Idle;
        changes.push(s);
        let mut s = base.clone();
        s.kernel.restarts = 1;
        changes.push(s);
        let mut s = base.clone();
        s.ready = true;
        changes.push(s);
        for changed in changes {
            assert_ne!(changed.current_revision(), base.current_revision(), "{changed:?}");
        }
    }

    #[test]
    fn every_body_reads_back_as_written() {
        for state in [
            KernelState::Starting,
            KernelState::Idle,
            KernelState::Busy,
            KernelState::Restarting,
            KernelState::Dead,
        ] {
            round_trip(Status {
                kernel: KernelSummary { state, restarts: 2 },
                queue: QueueCounts {
                    queued: 1,
                    running: 1,
                    completed: 3,
                    failed: 4,
                    cancelled: 5,
                },
                busy: true,
                last_activity: Some("2026-12-01T12:00:00Z".into()),
                clients: 2,
                connections: 1,
                ready: state.answers(),
                events: EventsSummary { newest_seq: 9 },
                warmup: None,
                revision: "Idle.2/1.1.3.4.5/1".into(),
            });
        }
        for warmup in [
            Warmup::Running,
            Warmup::Done,
            Warmup::Failed {
                error: "NameError: x".into(),
            },
        ] {
            round_trip(Status {
                warmup: Some(warmup),
                ..Status::default()
            });
        }
        round_trip(Catalog {
            assets: vec![AssetEntry {
                name: "a.png".into(),
                path: "assets/a.png".into(),
                size: 3,
                mime: "image/png".into(),
                created_at: "2026-12-01T12:00:00Z".into(),
                referenced_by: vec!["n.ipynb".into()],
                pinned: true,
            }],
            truncated: 1,
            index_problems: vec![IndexProblem {
                notebook: "bad.ipynb".into(),
                reason: "not JSON".into(),
            }],
        });
        round_trip(DeleteRefusal {
            error: ErrorDetail {
                code: "unsure".into(),
                message: "m".into(),
                field: None,
            },
            referenced_by: vec![],
            pinned: false,
            unsure: vec!["a link".into()],
        });
        round_trip(ErrorBody {
            error: ErrorDetail {
                code: "invalid".into(),
                message: "code: required".into(),
                field: Some("code".into()),
            },
        });
    }

    #[test]
    fn an_unknown_kernel_state_is_unknown_and_never_answers() {
        let status: Status =
            serde_json::from_str(r#"{"kernel": {"state": "hibernating", "restarts": 1}}"#).expect("lenient");
        assert_eq!(status.kernel.state, KernelState::Unknown);
        assert!(!status.kernel.state.answers());
        let missing: Status = serde_json::from_str("{}").expect("lenient");
        assert_eq!(missing.kernel.state, KernelState::Unknown);
        assert_eq!(
            serde_json::to_string(&KernelState::Restarting).expect("json"),
            "\"restarting\""
        );
    }
}

/// `POST /v1/claim`: a NotebookSession takes a warm pool pod. Sent by the
/// operator with the pool's token; from then on only `token` is accepted.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Default)]
#[serde(default)]
pub struct ClaimRequest {
    /// Name of the claiming NotebookSession.
    pub session: String,
    /// Its namespace.
    pub namespace: String,
    /// The session's own client token (from its Secret), never the pool's.
    pub token: String,
    /// Host names MCP clients reach the session by (its Service's names):
    /// a warm pod was started before anyone knew them.
    pub allowed_hosts: Vec<String>,
}

impl std::fmt::Debug for ClaimRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimRequest")
            .field("session", &self.session)
            .field("namespace", &self.namespace)
            .field("token", &"<redacted>")
            .field("allowed_hosts", &self.allowed_hosts)
            .finish()
    }
}

/// 200 of `POST /v1/claim`: who holds the pod now.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(default)]
pub struct ClaimAnswer {
    /// Name of the session that holds the pod.
    pub session: String,
    /// Its namespace.
    pub namespace: String,
    /// The sidecar's status right after the claim, as `GET /v1/status`
    /// would answer it (the claimer need not ask again); absent when it
    /// could not be read.
    pub status: Option<Status>,
}
