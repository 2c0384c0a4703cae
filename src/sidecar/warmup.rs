//! The warmup of a warm pool pod (`sidecar --warm --warmup CODE`): code the
//! pool's template gives, run once in the kernel before the pod counts as
//! ready (e.g. `import pandas`), straight on the kernel's shell channel and
//! not through the durable queue. It has no execution, publishes no event,
//! and its outputs are dropped, so a session that claims the pod finds the
//! warmup's effects in the kernel and nothing of it in its history.
//!
//! What became of it is kept in the sidecar's database ([`WARMUP_META`]):
//! a restarted sidecar neither runs it twice in the same kernel nor forgets
//! that it failed. This module is the pure part: what to do at start
//! ([`plan`]) and what the kernel's messages mean ([`Progress`]).

use std::sync::Mutex;

use serde_json::Value;
use tokio::sync::watch;

use crate::jupyter::Channel;
pub use crate::sidecar_api::Warmup;

/// Meta key of the warmup's outcome in the sidecar's database.
pub const WARMUP_META: &str = "warmup";

/// The warmup of this sidecar, shared by the kernel actor (which runs it),
/// the claim (which ends the warm time) and the status and readiness.
pub struct WarmupSlot {
    /// The code a kernel (re)connected while the pod is warm runs first:
    /// set at start when the warmup is to run, cleared by the claim, so a
    /// warm kernel that restarts is warmed again and a claimed one is not.
    code: Mutex<Option<String>>,
    state: watch::Sender<Option<Warmup>>,
}

impl Default for WarmupSlot {
    fn default() -> Self {
        Self {
            code: Mutex::new(None),
            state: watch::channel(None).0,
        }
    }
}

impl WarmupSlot {
    /// The warmup's state now (`None`: there is none).
    pub fn state(&self) -> Option<Warmup> {
        self.state.borrow().clone()
    }

    /// Sets the state.
    pub fn set(&self, state: Option<Warmup>) {
        self.state.send_replace(state);
    }

    /// Follows the state.
    pub fn subscribe(&self) -> watch::Receiver<Option<Warmup>> {
        self.state.subscribe()
    }

    /// Every kernel connected from now until the claim runs `code` first.
    pub fn arm(&self, code: String) {
        *self.code.lock().unwrap_or_else(|p| p.into_inner()) = Some(code);
    }

    /// The claim: the kernel is the session's, a restart of it gets no warmup.
    pub fn disarm(&self) {
        *self.code.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The code a kernel connected now runs first, while the pod is warm.
    pub fn armed(&self) -> Option<String> {
        self.code.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What the sidecar does about the warmup when it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// No warmup: none was given, or the pod was claimed before any ran.
    Nothing,
    /// Run this code before the sidecar is ready.
    Run(String),
    /// It ran in this kernel before this sidecar started: keep the outcome.
    Known(Warmup),
}

impl Plan {
    /// The warmup state the sidecar starts with.
    pub fn initial(&self) -> Option<Warmup> {
        match self {
            Plan::Nothing => None,
            Plan::Run(_) => Some(Warmup::Running),
            Plan::Known(w) => Some(w.clone()),
        }
    }
}

/// Pure: the plan from the `code` given, the outcome `stored` by an earlier
/// sidecar on this state (its text), and whether the pod is still warm.
/// A stored `running` means the earlier sidecar stopped during the warmup:
/// it runs again (the kernel may have finished it, or never got it).
pub fn plan(code: Option<&str>, stored: Option<&str>, warm: bool) -> Plan {
    let code = code.filter(|c| !c.trim().is_empty());
    match stored.and_then(|s| serde_json::from_str::<Warmup>(s).ok()) {
        Some(Warmup::Running) | None => match code {
            Some(code) if warm => Plan::Run(code.to_string()),
            _ => Plan::Nothing,
        },
        Some(known) if code.is_some() => Plan::Known(known),
        Some(_) => Plan::Nothing,
    }
}

/// Follows the kernel's messages for the warmup's `execute_request`: it is
/// over once both its `execute_reply` and the `idle` status that ends its
/// outputs came, so no output of it is left for the first execution.
#[derive(Clone, Debug)]
pub struct Progress {
    msg_id: String,
    reply: Option<Result<(), String>>,
    idle: bool,
}

impl Progress {
    /// For the request `msg_id`.
    pub fn new(msg_id: String) -> Self {
        Self {
            msg_id,
            reply: None,
            idle: false,
        }
    }

    /// One kernel message; the outcome once the warmup is over.
    pub fn on_message(
        &mut self,
        channel: Channel,
        msg_type: &str,
        parent: Option<&str>,
        content: &Value,
    ) -> Option<Warmup> {
        if parent != Some(self.msg_id.as_str()) {
            return None;
        }
        match (channel, msg_type) {
            (Channel::Shell, "execute_reply") => self.reply = Some(reply_outcome(content)),
            (Channel::Iopub, "status")
                if content.get("execution_state").and_then(Value::as_str) == Some("idle") =>
            {
                self.idle = true
            }
            _ => {}
        }
        match (&self.reply, self.idle) {
            (Some(Ok(())), true) => Some(Warmup::Done),
            (Some(Err(error)), true) => Some(Warmup::Failed { error: error.clone() }),
            _ => None,
        }
    }
}

/// Pure: an `execute_reply`'s content as success, or the error's name and
/// value (`NameError: name 'x' is not defined`).
pub fn reply_outcome(content: &Value) -> Result<(), String> {
    let text = |key: &str| content.get(key).and_then(Value::as_str).unwrap_or_default();
    match text("status") {
        "ok" => Ok(()),
        "error" => {
            let (name, value) = (text("ename"), text("evalue"));
            Err(match (name.is_empty(), value.is_empty()) {
                (true, _) => "the kernel reported an error without a name".to_string(),
                (false, true) => name.to_string(),
                (false, false) => format!("{name}: {value}"),
            })
        }
        "aborted" => Err("the kernel aborted it".into()),
        other => Err(format!("the kernel answered with status {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_warmup_runs_once_in_a_warm_kernel_and_a_stored_outcome_is_kept() {
        assert_eq!(plan(Some("import os"), None, true), Plan::Run("import os".into()));
        assert_eq!(plan(None, None, true), Plan::Nothing);
        assert_eq!(plan(Some("  \n"), None, true), Plan::Nothing);
        assert_eq!(
            plan(Some("import os"), None, false),
            Plan::Nothing,
            "claimed: no warmup"
        );
        let done = serde_json::to_string(&Warmup::Done).expect("json");
        assert_eq!(
            plan(Some("import os"), Some(&done), true),
            Plan::Known(Warmup::Done)
        );
        let failed = serde_json::to_string(&Warmup::Failed { error: "E: x".into() }).expect("json");
        assert_eq!(
            plan(Some("import os"), Some(&failed), false),
            Plan::Known(Warmup::Failed { error: "E: x".into() })
        );
        let running = serde_json::to_string(&Warmup::Running).expect("json");
        assert_eq!(
            plan(Some("import os"), Some(&running), true),
            Plan::Run("import os".into()),
            "a sidecar stopped during the warmup runs it again"
        );
        assert_eq!(
            plan(Some("import os"), Some("not json"), true),
            Plan::Run("import os".into())
        );
        assert_eq!(Plan::Run("x".into()).initial(), Some(Warmup::Running));
        assert_eq!(Plan::Nothing.initial(), None);
    }

    #[test]
    fn a_warm_kernel_is_warmed_until_the_claim_and_not_after() {
        let slot = WarmupSlot::default();
        assert_eq!((slot.armed(), slot.state()), (None, None));
        slot.arm("import os".into());
        slot.set(Some(Warmup::Done));
        assert_eq!(
            slot.armed().as_deref(),
            Some("import os"),
            "a warm kernel that restarts runs it again"
        );
        slot.disarm();
        assert_eq!(slot.armed(), None, "a claimed kernel that restarts does not");
        assert_eq!(slot.state(), Some(Warmup::Done));
    }

    #[test]
    fn the_warmup_is_over_with_its_reply_and_its_idle_status_and_an_error_is_named() {
        let mut p = Progress::new("w1".into());
        let idle = json!({"execution_state": "idle"});
        assert_eq!(p.on_message(Channel::Iopub, "status", Some("other"), &idle), None);
        assert_eq!(
            p.on_message(Channel::Iopub, "stream", Some("w1"), &json!({"text": "hi"})),
            None
        );
        assert_eq!(
            p.on_message(
                Channel::Shell,
                "execute_reply",
                Some("w1"),
                &json!({"status": "ok"})
            ),
            None,
            "outputs may still come until idle"
        );
        assert_eq!(
            p.on_message(Channel::Iopub, "status", Some("w1"), &idle),
            Some(Warmup::Done)
        );

        let mut p = Progress::new("w2".into());
        assert_eq!(p.on_message(Channel::Iopub, "status", Some("w2"), &idle), None);
        let error = json!({"status": "error", "ename": "ModuleNotFoundError",
                           "evalue": "No module named 'nope'", "traceback": []});
        assert_eq!(
            p.on_message(Channel::Shell, "execute_reply", Some("w2"), &error),
            Some(Warmup::Failed {
                error: "ModuleNotFoundError: No module named 'nope'".into()
            })
        );
        assert_eq!(
            reply_outcome(&json!({"status": "error", "ename": "KeyboardInterrupt", "evalue": ""})),
            Err("KeyboardInterrupt".into())
        );
        assert!(reply_outcome(&json!({"status": "aborted"})).is_err());
        assert!(reply_outcome(&json!({})).is_err());
    }

    #[test]
    fn a_failed_warmup_says_so_in_one_line_and_keeps_the_sidecar_not_ready() {
        let failed = Warmup::Failed {
            error: "ZeroDivisionError: division by zero".into(),
        };
        assert_eq!(
            failed.describe(),
            "warmup failed: ZeroDivisionError: division by zero"
        );
        assert!(!Warmup::allows_ready(Some(&failed)));
        assert!(!Warmup::allows_ready(Some(&Warmup::Running)));
        assert!(Warmup::allows_ready(Some(&Warmup::Done)));
        assert!(Warmup::allows_ready(None));
        assert_eq!(
            serde_json::to_value(&failed).expect("json"),
            json!({"state": "failed", "error": "ZeroDivisionError: division by zero"})
        );
    }
}
