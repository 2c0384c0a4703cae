//! Pure status: what a session's status should be, from what was observed.
//!
//! [`build_status`] maps (session, observed pod, sidecar answer, now) to the new
//! status. Conditions follow the metav1 rules: `lastTransitionTime` moves only
//! when a condition's status changes. [`lifecycle`] decides whether the session
//! should run, be suspended or be deleted, and when to look again.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use super::builders::{endpoint, mcp_endpoint, pod_name, secret_name, ValidSpec, KERNEL_CONTAINER};
use super::conditions::{self, cond, Cond, Transition};
use super::crd::{NotebookSession, NotebookSessionStatus, QueueStatus, SessionPhase, ShutdownPolicy};
use crate::sidecar_api::KernelState;

/// Condition: the session serves requests.
pub const READY: &str = "Ready";
/// Condition: the kernel answers, as the sidecar reports it.
pub const KERNEL_ALIVE: &str = "KernelAlive";
/// Condition: the kernel pod is bound to a node.
pub const POD_SCHEDULED: &str = "PodScheduled";
/// Condition: the spec can be built.
pub const SPEC_VALID: &str = "SpecValid";
/// Reason of a session suspended because it was idle for `idleTimeout`.
pub const IDLE_TIMEOUT: &str = "IdleTimeout";
/// Annotation the operator sets, in the same patch as `spec.suspend`, when
/// it suspends an idle session (its value says why), and removes once the
/// session runs again. The status cannot carry this: a reconcile may see the
/// new spec before its own status write has come back through the watch.
pub const IDLE_SUSPENDED_ANNOTATION: &str = "notebook.dev/idle-suspended";

/// Waiting reasons of a container that mean "this will not start on its own soon".
const STUCK_REASONS: [&str; 8] = [
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// What the sidecar answers on `GET /v1/status` (one type with the sidecar).
pub use crate::sidecar_api::Status as SidecarStatus;

impl SidecarStatus {
    /// Last activity as a timestamp, when the sidecar sent a readable one.
    pub fn last_activity_time(&self) -> Option<Timestamp> {
        self.last_activity.as_deref().and_then(|t| t.parse().ok())
    }

    /// What the idle timeout needs from this answer.
    pub fn activity(&self) -> Activity {
        Activity {
            last: self.last_activity_time(),
            clients: self.clients,
            busy: self.busy || self.queue.queued + self.queue.running > 0,
        }
    }
}

/// What decides whether a session is idle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// The last execution or client activity.
    pub last: Option<Timestamp>,
    /// Clients connected to the event stream or MCP now.
    pub clients: i64,
    /// An execution is queued or running: never idle, however long it runs.
    pub busy: bool,
}

impl Activity {
    /// When the sidecar could not be asked: what the last status recorded.
    pub fn from_status(status: Option<&NotebookSessionStatus>) -> Self {
        Activity {
            last: status.and_then(|s| s.last_activity_time.as_ref()).map(|t| t.0),
            clients: 0,
            busy: status
                .and_then(|s| s.queue.as_ref())
                .is_some_and(|q| q.queued + q.running > 0),
        }
    }
}

/// What the operator learnt from the sidecar in this reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum SidecarObservation {
    /// Not asked: no ready pod, or no IP yet.
    NotAsked,
    /// The sidecar answered.
    Answered(SidecarStatus),
    /// The sidecar could not be read; why.
    Unreachable(String),
}

/// Why the session should not run now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suspension {
    /// Condition reason: `Suspended`, `ShutdownTime` or `IdleTimeout`.
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

/// Everything observed for one reconcile.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    /// The spec check: resolved spec, or the reasons it cannot run.
    pub valid: Result<&'a ValidSpec, &'a [String]>,
    /// Set when the session should not run.
    pub suspension: Option<Suspension>,
    /// The kernel pod, when it exists.
    pub pod: Option<&'a Pod>,
    /// The sidecar's answer.
    pub sidecar: SidecarObservation,
    /// For a session with `poolRef`: how it got (or cannot get) its pod.
    pub pool: Option<PoolClaim>,
}

/// Condition type of a session with `poolRef`: its pod was a warm one.
pub const POOL_CLAIM: &str = "PoolClaim";

/// How a session of a pool got its pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolClaim {
    /// The pool does not exist: no pod is made until it does.
    NotFound(String),
    /// The pod was a warm pod of the pool.
    Warm(String),
    /// No warm pod was ready: the pod was built cold from the pool's template.
    Cold(String),
    /// The pool exists and the pod is still to come.
    Waiting(String),
}

impl PoolClaim {
    fn condition(&self) -> Cond {
        match self {
            Self::NotFound(pool) => cond(
                POOL_CLAIM,
                "False",
                "PoolNotFound",
                format!("spec.poolRef names the NotebookPool {pool:?}, which does not exist in this namespace; create it, or recreate the session without poolRef"),
            ),
            Self::Warm(pool) => cond(POOL_CLAIM, "True", "Claimed", format!("the session holds a warm pod of the pool {pool}")),
            Self::Cold(pool) => cond(
                POOL_CLAIM,
                "False",
                "ColdStart",
                format!("the pool {pool} had no ready warm pod: the kernel pod was started cold from its template"),
            ),
            Self::Waiting(pool) => cond(POOL_CLAIM, "Unknown", "Claiming", format!("a pod of the pool {pool} is being claimed")),
        }
    }
}

/// The new status of `session`.
pub fn build_status(
    session: &NotebookSession,
    observed: &Observed<'_>,
    now: Timestamp,
) -> NotebookSessionStatus {
    let old = session.status.clone().unwrap_or_default();
    let name = session.name_any();
    let (phase, mut conds) = phase_and_conditions(session, observed);
    if let Some(pool) = &observed.pool {
        let condition = pool.condition();
        if matches!(pool, PoolClaim::NotFound(_)) && observed.pod.is_none() {
            for c in conds.iter_mut().filter(|c| c.type_ == READY) {
                c.reason = condition.reason.clone();
                c.message = condition.message.clone();
            }
        }
        conds.push(condition);
    }

    let mut status = NotebookSessionStatus {
        phase: Some(phase),
        conditions: conditions::merge(&old.conditions, conds, session.metadata.generation, now),
        pod_name: observed.pod.map(|pod| pod.name_any()),
        endpoint: None,
        mcp_endpoint: None,
        token_secret_name: None,
        queue: old.queue,
        last_activity_time: old.last_activity_time,
        kernel_restarts: old.kernel_restarts,
        observed_generation: session.metadata.generation,
    };
    if observed.valid.is_ok() {
        status.endpoint = Some(endpoint(session));
        status.mcp_endpoint = Some(mcp_endpoint(session));
        status.token_secret_name = Some(secret_name(&name));
    }
    if let SidecarObservation::Answered(sidecar) = &observed.sidecar {
        status.queue = Some(QueueStatus {
            queued: sidecar.queue.queued,
            running: sidecar.queue.running,
            completed: sidecar.queue.completed,
            failed: sidecar.queue.failed,
        });
        if let Some(at) = sidecar.last_activity_time() {
            status.last_activity_time = Some(Time(at));
        }
        status.kernel_restarts = Some(sidecar.kernel.restarts);
    }
    status
}

fn phase_and_conditions(session: &NotebookSession, observed: &Observed<'_>) -> (SessionPhase, Vec<Cond>) {
    let spec_valid = match observed.valid {
        Ok(_) => cond(SPEC_VALID, "True", "Valid", "the spec can be built"),
        Err(errors) => cond(SPEC_VALID, "False", "InvalidSpec", errors.join("; ")),
    };
    let no_pod = |reason: &str, message: &str| {
        vec![
            cond(POD_SCHEDULED, "False", reason, message),
            cond(KERNEL_ALIVE, "Unknown", reason, message),
        ]
    };

    if session.metadata.deletion_timestamp.is_some() {
        let mut conds = vec![
            spec_valid,
            cond(READY, "False", "Terminating", "the session is being deleted"),
        ];
        conds.extend(no_pod("Terminating", "the session is being deleted"));
        return (SessionPhase::Terminating, conds);
    }
    if let Err(errors) = observed.valid {
        let message = format!("the spec cannot run: {}", errors.join("; "));
        let mut conds = vec![spec_valid, cond(READY, "False", "InvalidSpec", &message)];
        conds.extend(no_pod("InvalidSpec", &message));
        return (SessionPhase::Failed, conds);
    }
    if let Some(suspension) = &observed.suspension {
        let mut conds = vec![
            spec_valid,
            cond(READY, "False", suspension.reason, &suspension.message),
        ];
        conds.push(cond(
            POD_SCHEDULED,
            "False",
            suspension.reason,
            &suspension.message,
        ));
        conds.push(cond(
            KERNEL_ALIVE,
            "False",
            suspension.reason,
            "no kernel runs while suspended",
        ));
        return (SessionPhase::Suspended, conds);
    }
    let pod = match observed.pod {
        Some(pod) if pod.metadata.deletion_timestamp.is_none() => pod,
        Some(_) => {
            let message = "the kernel pod is being replaced";
            let mut conds = vec![spec_valid, cond(READY, "False", "PodTerminating", message)];
            conds.extend(no_pod("PodTerminating", message));
            return (SessionPhase::Pending, conds);
        }
        None => {
            let message = format!(
                "the kernel pod {} does not exist yet",
                pod_name(&session.name_any())
            );
            let mut conds = vec![spec_valid, cond(READY, "False", "PodNotCreated", &message)];
            conds.extend(no_pod("PodNotCreated", &message));
            return (SessionPhase::Pending, conds);
        }
    };

    let pod_status = pod.status.clone().unwrap_or_default();
    let pod_condition = |type_: &str| {
        pod_status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_)
            .cloned()
    };
    let scheduled = match pod_condition("PodScheduled") {
        Some(c) if c.status == "True" => cond(
            POD_SCHEDULED,
            "True",
            "Scheduled",
            "the kernel pod is bound to a node",
        ),
        Some(c) => cond(
            POD_SCHEDULED,
            "False",
            c.reason.as_deref().unwrap_or("Unschedulable"),
            c.message.unwrap_or_default(),
        ),
        None => cond(
            POD_SCHEDULED,
            "Unknown",
            "Pending",
            "the kernel pod is not scheduled yet",
        ),
    };
    let is_scheduled = scheduled.status == "True";
    let pod_ready = pod_condition("Ready").is_some_and(|c| c.status == "True");

    // Something that will not fix itself soon: a failed pod or a stuck container.
    let mut stuck: Option<(String, String)> = None;
    if pod_status.phase.as_deref() == Some("Failed") {
        let reason = pod_status.reason.clone().unwrap_or_else(|| "PodFailed".into());
        stuck = Some((
            reason,
            pod_status
                .message
                .clone()
                .unwrap_or_else(|| "the kernel pod failed".into()),
        ));
    }
    let containers = pod_status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(pod_status.container_statuses.iter().flatten());
    for container in containers {
        let waiting = container.state.as_ref().and_then(|s| s.waiting.as_ref());
        if let Some(reason) = waiting.and_then(|w| w.reason.as_deref()) {
            if stuck.is_none() && STUCK_REASONS.contains(&reason) {
                let detail = waiting.and_then(|w| w.message.clone()).unwrap_or_default();
                let mut message = format!("container {}: {reason} {detail}", container.name);
                // The last line the container logged before it exited (the
                // kubelet's termination message, FallbackToLogsOnError).
                let last_line = container
                    .last_state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .and_then(|t| t.message.as_deref())
                    .and_then(|m| m.lines().rev().find(|l| !l.trim().is_empty()));
                if let Some(line) = last_line {
                    message = format!("{}; last log line: {}", message.trim_end(), line.trim());
                }
                stuck = Some((reason.to_string(), message.trim_end().to_string()));
            }
        }
    }

    let kernel = match &observed.sidecar {
        SidecarObservation::Answered(sidecar) => match sidecar.kernel.state {
            KernelState::Idle => cond(
                KERNEL_ALIVE,
                "True",
                "KernelIdle",
                "the kernel answers and is idle",
            ),
            KernelState::Busy => cond(
                KERNEL_ALIVE,
                "True",
                "KernelBusy",
                "the kernel answers and is busy",
            ),
            KernelState::Starting => cond(KERNEL_ALIVE, "False", "KernelStarting", "the kernel is starting"),
            KernelState::Restarting => cond(
                KERNEL_ALIVE,
                "False",
                "KernelRestarting",
                "the kernel is restarting",
            ),
            KernelState::Dead => cond(KERNEL_ALIVE, "False", "KernelDead", "the kernel does not answer"),
            // A state this build does not know is never taken for healthy.
            KernelState::Unknown => cond(
                KERNEL_ALIVE,
                "Unknown",
                "KernelStateUnknown",
                "the sidecar reports a kernel state this operator does not know",
            ),
        },
        SidecarObservation::Unreachable(err) => cond(
            KERNEL_ALIVE,
            "Unknown",
            "SidecarUnreachable",
            format!("cannot read the sidecar status: {err}"),
        ),
        SidecarObservation::NotAsked => cond(
            KERNEL_ALIVE,
            "Unknown",
            "SidecarNotReady",
            "the sidecar is not ready yet",
        ),
    };
    // The sidecar answered and its kernel does not (starting, restarting,
    // dead, or a state the operator does not know: never taken for healthy).
    let kernel_away =
        matches!(&observed.sidecar, SidecarObservation::Answered(s) if !s.kernel.state.answers());

    let (phase, ready) = if let Some((reason, message)) = stuck {
        (SessionPhase::Failed, cond(READY, "False", &reason, message))
    } else if pod_ready && !kernel_away {
        (
            SessionPhase::Ready,
            cond(
                READY,
                "True",
                "KernelReady",
                "the sidecar is ready and the kernel answers",
            ),
        )
    } else if pod_ready || kernel_away {
        // The sidecar says why the kernel does not answer; the kernel
        // container's last exit (OOMKilled, an exit code) says how it went.
        let message = match kernel_last_exit(&pod_status) {
            Some(exit) => format!("{}; {exit}", kernel.message),
            None => kernel.message.clone(),
        };
        (
            SessionPhase::Starting,
            cond(READY, "False", &kernel.reason, message),
        )
    } else if is_scheduled {
        (
            SessionPhase::Starting,
            cond(
                READY,
                "False",
                "ContainersNotReady",
                "the sidecar or the kernel is starting",
            ),
        )
    } else {
        let reason = if scheduled.status == "False" {
            scheduled.reason.clone()
        } else {
            "PodPending".into()
        };
        (
            SessionPhase::Pending,
            cond(READY, "False", &reason, scheduled.message.clone()),
        )
    };
    (phase, vec![spec_valid, ready, scheduled, kernel])
}

/// How the kernel container last ended, when it restarted: "the kernel
/// container was OOMKilled (exit code 137)".
fn kernel_last_exit(pod_status: &k8s_openapi::api::core::v1::PodStatus) -> Option<String> {
    let kernel = pod_status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == KERNEL_CONTAINER)?;
    let ended = kernel.last_state.as_ref()?.terminated.as_ref()?;
    let how = ended.reason.as_deref().unwrap_or("terminated");
    Some(format!(
        "the kernel container was {how} (exit code {}, restarts {})",
        ended.exit_code, kernel.restart_count
    ))
}

/// The condition of a type in a status.
pub fn condition<'a>(status: &'a NotebookSessionStatus, type_: &str) -> Option<&'a Condition> {
    conditions::find(&status.conditions, type_)
}

/// What the session should do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// Keep a pod running.
    Run,
    /// Keep no pod; storage, Secret and Service stay.
    Suspend(Suspension),
    /// The idle timeout passed: set `spec.suspend` (so a user resumes by clearing it).
    SuspendForIdle(Suspension),
    /// `shutdownTime` passed with policy `Delete`: delete the session.
    Delete,
}

/// Decides from the spec, the pod and the activity whether the session
/// runs, and when to look again (the next deadline), if ever.
///
/// Idle means: no execution queued or running, no client connected, and no
/// activity for `idleTimeout` since the later of the pod's creation and the
/// last activity. While the session is active, the earliest it can become
/// idle is one `idleTimeout` from now, so that is when to look again; at that
/// look the last activity (say, the end of a long cell) gives the exact
/// deadline. A session suspended for idleness keeps that reason while
/// `spec.suspend` stays true.
pub fn lifecycle(
    session: &NotebookSession,
    valid: &ValidSpec,
    pod: Option<&Pod>,
    activity: Activity,
    now: Timestamp,
) -> (Lifecycle, Option<Timestamp>) {
    let spec = &session.spec;
    let mut next: Option<Timestamp> = None;
    fn sooner(at: Timestamp, next: &mut Option<Timestamp>) {
        *next = Some(next.map_or(at, |n| n.min(at)));
    }
    if let Some(Time(at)) = &spec.shutdown_time {
        if *at <= now {
            return match spec.shutdown_policy {
                ShutdownPolicy::Delete => (Lifecycle::Delete, None),
                ShutdownPolicy::Suspend => (
                    Lifecycle::Suspend(Suspension {
                        reason: "ShutdownTime",
                        message: format!("shutdownTime {at} has passed; remove or move it to resume"),
                    }),
                    None,
                ),
            };
        }
        sooner(*at, &mut next);
    }
    if spec.suspend {
        let old = session.status.as_ref();
        let idle_before = old
            .filter(|s| s.phase == Some(SessionPhase::Suspended))
            .and_then(|s| {
                condition(s, READY)
                    .filter(|c| c.reason == IDLE_TIMEOUT)
                    .map(|c| c.message.clone())
            });
        let marked = session.annotations().get(IDLE_SUSPENDED_ANNOTATION).cloned();
        let suspension = match marked.or(idle_before) {
            Some(message) => Suspension {
                reason: IDLE_TIMEOUT,
                message,
            },
            None => Suspension {
                reason: "Suspended",
                message: "spec.suspend is true".into(),
            },
        };
        return (Lifecycle::Suspend(suspension), next);
    }
    if let (Some(idle), Some(pod)) = (valid.idle_timeout, pod) {
        let idle = SignedDuration::try_from(idle).unwrap_or(SignedDuration::MAX);
        if activity.busy || activity.clients > 0 {
            if let Ok(at) = now.checked_add(idle) {
                sooner(at, &mut next);
            }
            return (Lifecycle::Run, next);
        }
        let started = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let reference = match (started, activity.last) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if let Some(deadline) = reference.and_then(|r| r.checked_add(idle).ok()) {
            if deadline <= now {
                let message = format!(
                    "no activity since {}; idleTimeout {} passed",
                    reference.map(|r| r.to_string()).unwrap_or_default(),
                    spec.idle_timeout.clone().unwrap_or_default()
                );
                return (
                    Lifecycle::SuspendForIdle(Suspension {
                        reason: IDLE_TIMEOUT,
                        message,
                    }),
                    next,
                );
            }
            sooner(deadline, &mut next);
        }
    }
    (Lifecycle::Run, next)
}

/// Events to record between the old and the new status: phase changes, with
/// the Ready reason for context.
pub fn transitions(old: Option<&NotebookSessionStatus>, new: &NotebookSessionStatus) -> Vec<Transition> {
    let old_phase = old.and_then(|s| s.phase);
    let mut out = Vec::new();
    if old_phase != new.phase {
        if let Some(phase) = new.phase {
            let ready = condition(new, READY);
            let note = match ready {
                Some(c) if !c.message.is_empty() => format!("{}: {}", phase.as_str(), c.message),
                _ => phase.as_str().to_string(),
            };
            let reason = match (phase, ready) {
                (SessionPhase::Failed, Some(c)) => c.reason.clone(),
                (SessionPhase::Suspended, Some(c)) => c.reason.clone(),
                _ => phase.as_str().to_string(),
            };
            out.push(Transition {
                warning: phase == SessionPhase::Failed,
                reason,
                note,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::builders::{validate, BuildConfig};
    use crate::operator::fixtures;

    fn now() -> Timestamp {
        "2026-11-28T15:00:00Z".parse().expect("timestamp")
    }

    fn at(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    fn sidecar(state: &str) -> SidecarObservation {
        let json = format!(
            r#"{{"kernel":{{"state":"{state}","restarts":2}},"queue":{{"queued":1,"running":1,"completed":3,"failed":0,"cancelled":4}},"last_activity":"2026-11-28T14:59:00Z","clients":0,"ready":true}}"#
        );
        SidecarObservation::Answered(serde_json::from_str(&json).expect("sidecar status parses"))
    }

    fn status_with(
        session: &NotebookSession,
        pod: Option<&Pod>,
        sidecar: SidecarObservation,
        now: Timestamp,
    ) -> NotebookSessionStatus {
        let valid = validate(session, &BuildConfig::default()).expect("valid");
        let observed = Observed {
            valid: Ok(&valid),
            suspension: None,
            pod,
            sidecar,
            pool: None,
        };
        build_status(session, &observed, now)
    }

    fn message_of(status: &NotebookSessionStatus, type_: &str) -> String {
        condition(status, type_)
            .map(|c| c.message.clone())
            .unwrap_or_default()
    }

    fn reason(status: &NotebookSessionStatus, type_: &str) -> (String, String) {
        let c = condition(status, type_).unwrap_or_else(|| panic!("no {type_} condition"));
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn a_ready_pod_and_an_idle_kernel_make_a_ready_session() {
        let session = fixtures::session("session-full.yaml");
        let pod: Pod = fixtures::object("pod-status-ready.yaml");
        let status = status_with(&session, Some(&pod), sidecar("idle"), now());
        assert_eq!(status.phase, Some(SessionPhase::Ready));
        assert_eq!(reason(&status, READY), ("True".into(), "KernelReady".into()));
        assert_eq!(
            reason(&status, KERNEL_ALIVE),
            ("True".into(), "KernelIdle".into())
        );
        assert_eq!(
            reason(&status, POD_SCHEDULED),
            ("True".into(), "Scheduled".into())
        );
        assert_eq!(
            status.queue,
            Some(QueueStatus {
                queued: 1,
                running: 1,
                completed: 3,
                failed: 0
            })
        );
        assert_eq!(status.kernel_restarts, Some(2));
        assert_eq!(status.last_activity_time, Some(Time(at("2026-11-28T14:59:00Z"))));
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.pod_name.as_deref(), Some("analysis-kernel"));
        assert_eq!(
            status.endpoint.as_deref(),
            Some("http://analysis.agents.svc:8888")
        );
        assert_eq!(
            status.mcp_endpoint.as_deref(),
            Some("http://analysis.agents.svc:8888/mcp")
        );
        assert_eq!(status.token_secret_name.as_deref(), Some("analysis-token"));
        assert!(status.conditions.iter().all(|c| c.observed_generation == Some(3)));
    }

    #[test]
    fn transition_time_moves_only_when_a_condition_status_changes() {
        let mut session = fixtures::session("session-full.yaml");
        let pod: Pod = fixtures::object("pod-status-ready.yaml");
        let first = status_with(&session, Some(&pod), sidecar("idle"), now());
        session.status = Some(first.clone());

        // Same observation, later: nothing moves.
        let later = at("2026-11-28T15:05:00Z");
        let second = status_with(&session, Some(&pod), sidecar("idle"), later);
        assert_eq!(first.conditions, second.conditions);

        // Reason changes (idle -> busy) but status stays True: time stays.
        session.status = Some(second.clone());
        let third = status_with(&session, Some(&pod), sidecar("busy"), later);
        let kernel = condition(&third, KERNEL_ALIVE).expect("KernelAlive");
        assert_eq!(kernel.reason, "KernelBusy");
        assert_eq!(kernel.last_transition_time, Time(now()));

        // Kernel dies: KernelAlive and Ready move, PodScheduled does not.
        session.status = Some(third.clone());
        let fourth = status_with(&session, Some(&pod), sidecar("dead"), later);
        assert_eq!(fourth.phase, Some(SessionPhase::Starting));
        assert_eq!(
            condition(&fourth, KERNEL_ALIVE).map(|c| c.last_transition_time.clone()),
            Some(Time(later))
        );
        assert_eq!(
            condition(&fourth, READY).map(|c| c.last_transition_time.clone()),
            Some(Time(later))
        );
        assert_eq!(
            condition(&fourth, POD_SCHEDULED).map(|c| c.last_transition_time.clone()),
            Some(Time(now()))
        );
    }

    #[test]
    fn a_restarting_or_unknown_kernel_is_not_ready() {
        let session = fixtures::session("session-full.yaml");
        let pod: Pod = fixtures::object("pod-status-ready.yaml");
        for (state, reason) in [
            ("restarting", "KernelRestarting"),
            ("rebooting", "KernelStateUnknown"),
        ] {
            let status = status_with(&session, Some(&pod), sidecar(state), now());
            let ready = condition(&status, READY).expect("Ready");
            assert_eq!(ready.status, "False", "{state}");
            assert_eq!(ready.reason, reason, "{state}");
            assert_ne!(status.phase, Some(SessionPhase::Ready), "{state}");
        }
    }

    #[test]
    fn a_kernel_that_is_away_makes_the_session_not_ready_with_the_sidecars_reason() {
        // The kubelet took the pod out of Ready (the sidecar's /readyz
        // failed) and the sidecar, still running, says why.
        let session = fixtures::session("session-full.yaml");
        let mut pod: Pod = fixtures::object("pod-status-ready.yaml");
        let st = pod.status.as_mut().expect("status");
        for c in st.conditions.iter_mut().flatten() {
            if c.type_ == "Ready" || c.type_ == "ContainersReady" {
                c.status = "False".into();
            }
        }
        let kernel = st
            .container_statuses
            .iter_mut()
            .flatten()
            .find(|c| c.name == KERNEL_CONTAINER)
            .expect("kernel container");
        kernel.restart_count = 1;
        kernel.last_state = Some(k8s_openapi::api::core::v1::ContainerState {
            terminated: Some(k8s_openapi::api::core::v1::ContainerStateTerminated {
                exit_code: 137,
                reason: Some("OOMKilled".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let killed = status_with(&session, Some(&pod), sidecar("dead"), now());
        assert_eq!(reason(&killed, READY), ("False".into(), "KernelDead".into()));
        let message = message_of(&killed, READY);
        assert!(message.contains("OOMKilled (exit code 137"), "{message}");
        let restarting = status_with(&session, Some(&pod), sidecar("restarting"), now());
        assert_eq!(
            reason(&restarting, READY),
            ("False".into(), "KernelRestarting".into())
        );
        assert_ne!(restarting.phase, Some(SessionPhase::Ready));
        // The sidecar already answers again but the kubelet has not probed
        // yet: still not Ready, and not blamed on the kernel.
        let lagging = status_with(&session, Some(&pod), sidecar("idle"), now());
        assert_eq!(
            reason(&lagging, READY),
            ("False".into(), "ContainersNotReady".into())
        );
    }

    #[test]
    fn image_pull_errors_and_crash_loops_surface_with_their_reason() {
        let session = fixtures::session("session-full.yaml");
        let pod: Pod = fixtures::object("pod-status-imagepull.yaml");
        let status = status_with(&session, Some(&pod), SidecarObservation::NotAsked, now());
        assert_eq!(status.phase, Some(SessionPhase::Failed));
        assert_eq!(
            reason(&status, READY),
            ("False".into(), "ImagePullBackOff".into())
        );
        let message = message_of(&status, READY);
        assert!(
            message.starts_with("container kernel: ImagePullBackOff"),
            "{message}"
        );

        let pod: Pod = fixtures::object("pod-status-crashloop.yaml");
        let status = status_with(&session, Some(&pod), SidecarObservation::NotAsked, now());
        assert_eq!(status.phase, Some(SessionPhase::Failed));
        assert_eq!(
            reason(&status, READY),
            ("False".into(), "CrashLoopBackOff".into())
        );
        // The kernel's last log line (its termination message) says why.
        let message = message_of(&status, READY);
        assert!(
            message.ends_with("; last log line: ModuleNotFoundError: No module named 'ipykernel'"),
            "{message}"
        );
    }

    #[test]
    fn an_unschedulable_pod_is_pending_with_the_scheduler_message() {
        let session = fixtures::session("session-full.yaml");
        let pod: Pod = fixtures::object("pod-status-unschedulable.yaml");
        let status = status_with(&session, Some(&pod), SidecarObservation::NotAsked, now());
        assert_eq!(status.phase, Some(SessionPhase::Pending));
        assert_eq!(
            reason(&status, POD_SCHEDULED),
            ("False".into(), "Unschedulable".into())
        );
        assert_eq!(reason(&status, READY), ("False".into(), "Unschedulable".into()));
        assert!(condition(&status, READY).is_some_and(|c| c.message.contains("Insufficient cpu")));
    }

    #[test]
    fn no_pod_is_pending_and_a_scheduled_pod_is_starting() {
        let session = fixtures::session("session-minimal.yaml");
        let status = status_with(&session, None, SidecarObservation::NotAsked, now());
        assert_eq!(status.phase, Some(SessionPhase::Pending));
        assert_eq!(reason(&status, READY), ("False".into(), "PodNotCreated".into()));
        assert!(status.pod_name.is_none());

        let mut pod: Pod = fixtures::object("pod-status-ready.yaml");
        if let Some(conditions) = pod.status.as_mut().and_then(|s| s.conditions.as_mut()) {
            conditions.retain(|c| c.type_ == "PodScheduled");
        }
        let status = status_with(&session, Some(&pod), SidecarObservation::NotAsked, now());
        assert_eq!(status.phase, Some(SessionPhase::Starting));
    }

    #[test]
    fn an_unreachable_sidecar_is_a_condition_and_keeps_the_last_counts() {
        let mut session = fixtures::session("session-full.yaml");
        let pod: Pod = fixtures::object("pod-status-ready.yaml");
        session.status = Some(status_with(&session, Some(&pod), sidecar("idle"), now()));
        let status = status_with(
            &session,
            Some(&pod),
            SidecarObservation::Unreachable("connection refused".into()),
            now(),
        );
        assert_eq!(status.phase, Some(SessionPhase::Ready));
        assert_eq!(
            reason(&status, KERNEL_ALIVE),
            ("Unknown".into(), "SidecarUnreachable".into())
        );
        assert_eq!(status.queue.map(|q| q.completed), Some(3));
        assert_eq!(status.kernel_restarts, Some(2));
    }

    #[test]
    fn invalid_specs_fail_with_the_reasons() {
        let session = fixtures::session("session-minimal.yaml");
        let errors = vec!["spec.idleTimeout: \"soon\" is not a duration".to_string()];
        let observed = Observed {
            valid: Err(&errors),
            suspension: None,
            pod: None,
            sidecar: SidecarObservation::NotAsked,
            pool: None,
        };
        let status = build_status(&session, &observed, now());
        assert_eq!(status.phase, Some(SessionPhase::Failed));
        assert_eq!(
            reason(&status, SPEC_VALID),
            ("False".into(), "InvalidSpec".into())
        );
        assert_eq!(reason(&status, READY), ("False".into(), "InvalidSpec".into()));
        assert!(status.endpoint.is_none());
    }

    #[test]
    fn suspended_and_terminating_sessions() {
        let mut session = fixtures::session("session-minimal.yaml");
        let valid = validate(&session, &BuildConfig::default()).expect("valid");
        let observed = Observed {
            valid: Ok(&valid),
            suspension: Some(Suspension {
                reason: "Suspended",
                message: "spec.suspend is true".into(),
            }),
            pod: None,
            sidecar: SidecarObservation::NotAsked,
            pool: None,
        };
        let status = build_status(&session, &observed, now());
        assert_eq!(status.phase, Some(SessionPhase::Suspended));
        assert_eq!(reason(&status, READY), ("False".into(), "Suspended".into()));

        session.metadata.deletion_timestamp = Some(Time(now()));
        let status = build_status(&session, &observed, now());
        assert_eq!(status.phase, Some(SessionPhase::Terminating));
    }

    fn active(last: Option<&str>, clients: i64, busy: bool) -> Activity {
        Activity {
            last: last.map(at),
            clients,
            busy,
        }
    }

    #[test]
    fn lifecycle_follows_suspend_shutdown_time_and_idle_timeout() {
        let config = BuildConfig::default();
        let pod: Pod = fixtures::object("pod-status-ready.yaml"); // created 14:00
        let mut session = fixtures::session("session-full.yaml"); // idle 30m, shutdown Dec 1, Suspend
        let valid = validate(&session, &config).expect("valid");
        let idle = Activity::default();

        // Active 14:59, idle 30m: runs, next look at 15:29.
        let activity = active(Some("2026-11-28T14:59:00Z"), 0, false);
        let (decision, next) = lifecycle(&session, &valid, Some(&pod), activity, now());
        assert_eq!(decision, Lifecycle::Run);
        assert_eq!(next, Some(at("2026-11-28T15:29:00Z")));

        // A connected client keeps it alive; it cannot be idle before 15:30.
        let activity = active(Some("2026-11-28T14:00:00Z"), 1, false);
        let (decision, next) = lifecycle(&session, &valid, Some(&pod), activity, now());
        assert_eq!(decision, Lifecycle::Run);
        assert_eq!(next, Some(at("2026-11-28T15:30:00Z")));

        // Idle since 14:00 (pod creation), no clients: suspend for idle.
        let (decision, _) = lifecycle(&session, &valid, Some(&pod), idle, now());
        assert!(
            matches!(decision, Lifecycle::SuspendForIdle(ref s) if s.reason == "IdleTimeout"),
            "{decision:?}"
        );

        // Shutdown time passed: Suspend policy suspends, Delete policy deletes.
        let december = at("2026-12-02T00:00:00Z");
        let (decision, _) = lifecycle(&session, &valid, Some(&pod), idle, december);
        assert!(matches!(decision, Lifecycle::Suspend(ref s) if s.reason == "ShutdownTime"));
        session.spec.shutdown_policy = ShutdownPolicy::Delete;
        assert_eq!(
            lifecycle(&session, &valid, Some(&pod), idle, december).0,
            Lifecycle::Delete
        );

        // spec.suspend.
        session.spec.suspend = true;
        let (decision, _) = lifecycle(&session, &valid, Some(&pod), idle, now());
        assert!(matches!(decision, Lifecycle::Suspend(ref s) if s.reason == "Suspended"));
    }

    #[test]
    fn a_running_cell_is_never_idle_and_idleness_counts_from_its_end() {
        let pod: Pod = fixtures::object("pod-status-ready.yaml"); // created 14:00
        let session = fixtures::session("session-full.yaml"); // idle 30m
        let valid = validate(&session, &BuildConfig::default()).expect("valid");

        // Last activity 14:00, a cell still running at 15:00: runs, and the
        // next look is one idleTimeout from now, the earliest it can be idle.
        let (decision, next) = lifecycle(
            &session,
            &valid,
            Some(&pod),
            active(Some("2026-11-28T14:00:00Z"), 0, true),
            now(),
        );
        assert_eq!(decision, Lifecycle::Run);
        assert_eq!(next, Some(at("2026-11-28T15:30:00Z")));

        // At that look the cell had finished at 15:10: idle at 15:40 exactly.
        let later = at("2026-11-28T15:30:00Z");
        let (decision, next) = lifecycle(
            &session,
            &valid,
            Some(&pod),
            active(Some("2026-11-28T15:10:00Z"), 0, false),
            later,
        );
        assert_eq!(decision, Lifecycle::Run);
        assert_eq!(next, Some(at("2026-11-28T15:40:00Z")));

        // The sidecar's queue counts say busy even without the flag.
        let answer: SidecarStatus = serde_json::from_str(
            r#"{"kernel":{"state":"busy","restarts":0},"queue":{"queued":0,"running":1,"completed":0,"failed":0,"cancelled":0},"last_activity":"2026-11-28T14:00:00Z","clients":0,"ready":true}"#,
        )
        .expect("status");
        assert!(answer.activity().busy);
        // The last status stands in when the sidecar cannot be asked.
        let status = NotebookSessionStatus {
            queue: Some(QueueStatus {
                queued: 2,
                running: 0,
                completed: 0,
                failed: 0,
            }),
            ..NotebookSessionStatus::default()
        };
        assert!(Activity::from_status(Some(&status)).busy);
        assert!(!Activity::from_status(None).busy);
    }

    /// A Ready session past its idle timeout, and the idle suspend decided for it.
    fn idle_session() -> (NotebookSession, ValidSpec, Pod, Suspension) {
        let pod: Pod = fixtures::object("pod-status-ready.yaml");
        let session = fixtures::session("session-full.yaml");
        let valid = validate(&session, &BuildConfig::default()).expect("valid");
        let (decision, _) = lifecycle(&session, &valid, Some(&pod), Activity::default(), now());
        let Lifecycle::SuspendForIdle(suspension) = decision else {
            panic!("expected an idle suspend, got {decision:?}");
        };
        (session, valid, pod, suspension)
    }

    #[test]
    fn an_idle_suspend_keeps_its_reason_while_suspended() {
        let (mut session, valid, _, suspension) = idle_session();
        // The controller sets spec.suspend and writes the Suspended status.
        session.spec.suspend = true;
        let observed = Observed {
            valid: Ok(&valid),
            suspension: Some(suspension.clone()),
            pod: None,
            sidecar: SidecarObservation::NotAsked,
            pool: None,
        };
        session.status = Some(build_status(&session, &observed, now()));
        // Later reconciles see spec.suspend, and still say why.
        let (decision, _) = lifecycle(&session, &valid, None, Activity::default(), now());
        assert_eq!(decision, Lifecycle::Suspend(suspension));
    }

    #[test]
    fn an_idle_suspend_keeps_its_reason_when_the_status_seen_is_older_than_the_spec() {
        let (mut session, valid, pod, suspension) = idle_session();
        // The next reconcile sees the controller's spec patch (suspend and
        // the annotation) before its status write: the status is still Ready.
        session.spec.suspend = true;
        session
            .annotations_mut()
            .insert(IDLE_SUSPENDED_ANNOTATION.into(), suspension.message.clone());
        let (decision, _) = lifecycle(&session, &valid, Some(&pod), Activity::default(), now());
        assert_eq!(decision, Lifecycle::Suspend(suspension));
        // Without the annotation (a manual suspend), the reason says so.
        session.annotations_mut().remove(IDLE_SUSPENDED_ANNOTATION);
        let (decision, _) = lifecycle(&session, &valid, Some(&pod), Activity::default(), now());
        assert!(
            matches!(decision, Lifecycle::Suspend(ref s) if s.reason == "Suspended"),
            "{decision:?}"
        );
    }

    #[test]
    fn phase_changes_become_events() {
        let session = fixtures::session("session-full.yaml");
        let pod: Pod = fixtures::object("pod-status-imagepull.yaml");
        let failed = status_with(&session, Some(&pod), SidecarObservation::NotAsked, now());
        let events = transitions(None, &failed);
        assert_eq!(events.len(), 1);
        assert!(events[0].warning);
        assert_eq!(events[0].reason, "ImagePullBackOff");
        assert!(transitions(Some(&failed), &failed).is_empty());
    }
}
