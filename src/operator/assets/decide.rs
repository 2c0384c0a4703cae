//! Pure lease decisions: what a lease's status is and what to do next, from
//! the lease, the time and what the sidecar said. No I/O here; the controller
//! ([`super::controller`]) fetches the inputs and carries the verdicts out.
//!
//! A lease runs from `max(start, renewTime)` for `duration`, where start is
//! `spec.startTime` (the asset's creation time) or else the object's creation.
//! `expiresAt` is rounded up to a whole second, because that is all that
//! `metav1.Time` can hold: the status shows exactly the instant the
//! controller acts on.
//!
//! ```text
//!            renewTime in the future (any phase)
//!        ┌─────────────────────────────────────────┐
//!        ▼                                         │
//!     Active ──expired, referenced/pinned/held──► Retained ──(one duration later: check again)
//!        │                                         │
//!        └──expired, sidecar deleted it (or 404)──►┴──► Reclaimed ──grace──► object removed
//! ```
//!
//! The sidecar, not this module, has the last word on references: an asset
//! is only ever deleted by its `DELETE /v1/assets/{name}`, which refuses (409)
//! when a notebook saved a moment earlier references it.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use crate::assets::name::is_valid;
use crate::assets::ASSETS_DIR;
use crate::operator::builders::{LABEL_MANAGED_BY, MANAGER};
pub use crate::operator::conditions::floor_second;
use crate::operator::conditions::{self, cond, Transition};
use crate::operator::crd::{parse_duration, AssetLease, AssetLeaseStatus, LeasePhase};
use crate::sidecar_api::AssetEntry;

/// Finalizer that releases the asset when a lease is deleted by hand.
pub const FINALIZER: &str = "notebook.dev/release-asset";

/// Condition: the spec can be enforced (duration parses, path names an asset).
pub const SPEC_VALID: &str = "SpecValid";
/// Condition: the session's sidecar answered at the last check.
pub const SESSION_REACHABLE: &str = "SessionReachable";
/// Condition: at the last check the asset was referenced, pinned or held by another lease.
pub const IN_USE: &str = "InUse";
/// Condition: at the last check the sidecar had no such asset.
pub const ASSET_MISSING: &str = "AssetMissing";

/// Settings of the lease controller that the decisions depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// How long a Reclaimed lease object stays before it is removed.
    pub grace: Duration,
}

/// The terms of a lease, read from its spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terms {
    /// The asset file name, `<sha256>.<ext>`.
    pub asset: String,
    /// `spec.duration`.
    pub duration: Duration,
    /// `max(start, renewTime) + duration`, rounded up to a second.
    pub expires_at: Timestamp,
}

/// The asset name in a lease path: `assets/<sha256>.<ext>` and nothing else.
pub fn asset_name(path: &str) -> Result<&str, String> {
    path.strip_prefix(ASSETS_DIR)
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|name| is_valid(name))
        .ok_or_else(|| format!("path {path:?} is not {ASSETS_DIR}/<sha256>.<ext>"))
}

/// Reads the terms of `lease`, or says why they cannot be enforced.
pub fn terms(lease: &AssetLease) -> Result<Terms, String> {
    let spec = &lease.spec;
    let asset = asset_name(&spec.path)?.to_string();
    let duration = parse_duration(&spec.duration).map_err(|err| format!("duration: {err}"))?;
    let start = spec
        .start_time
        .as_ref()
        .or(lease.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
        .ok_or("neither spec.startTime nor metadata.creationTimestamp is set")?;
    let from = match &spec.renew_time {
        Some(Time(renewed)) => start.max(*renewed),
        None => start,
    };
    let expires_at = add(from, duration).ok_or("the lease ends beyond the year 9999")?;
    Ok(Terms {
        asset,
        duration,
        expires_at: ceil_second(expires_at),
    })
}

/// `t + span`, unless that leaves the range of a timestamp.
pub fn add(t: Timestamp, span: Duration) -> Option<Timestamp> {
    let span = SignedDuration::try_from(span).ok()?;
    t.checked_add(span).ok()
}

/// The first whole second at or after `t`.
pub fn ceil_second(t: Timestamp) -> Timestamp {
    if t.subsec_nanosecond() > 0 {
        Timestamp::from_second(t.as_second() + 1).unwrap_or(t)
    } else {
        t
    }
}

/// What to do with a lease now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The spec cannot be enforced; nothing happens until it changes.
    Invalid,
    /// Nothing to do before this instant.
    WaitUntil(Timestamp),
    /// Expired and due: ask the sidecar now.
    Check,
    /// Reclaimed and the grace period is over: remove the lease object.
    Remove,
}

/// The status to write and the step to take.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Status before any sidecar answer: `expiresAt`, phase, SpecValid.
    pub status: AssetLeaseStatus,
    /// What to do.
    pub step: Step,
}

/// Decides, from the lease and the time alone, whether the sidecar must be
/// asked now, and if not, when to look again.
pub fn plan(lease: &AssetLease, now: Timestamp, settings: Settings) -> Plan {
    let old = lease.status.clone().unwrap_or_default();
    let generation = lease.metadata.generation;
    let mut status = old.clone();
    let terms = match terms(lease) {
        Ok(terms) => terms,
        Err(why) => {
            conditions::set(
                &mut status.conditions,
                generation,
                now,
                cond(SPEC_VALID, "False", "InvalidSpec", why),
            );
            return Plan {
                status,
                step: Step::Invalid,
            };
        }
    };
    conditions::set(
        &mut status.conditions,
        generation,
        now,
        cond(SPEC_VALID, "True", "Valid", "the lease can be enforced"),
    );
    status.expires_at = Some(Time(terms.expires_at));
    if terms.expires_at > now {
        status.phase = Some(LeasePhase::Active);
        return Plan {
            status,
            step: Step::WaitUntil(terms.expires_at),
        };
    }
    let last_check = old.last_check_time.as_ref().map(|t| t.0);
    let step = match (old.phase, last_check) {
        (Some(LeasePhase::Reclaimed), _) => {
            let removal = add(last_check.unwrap_or(terms.expires_at), settings.grace);
            match removal {
                Some(at) if at > now => Step::WaitUntil(at),
                _ => Step::Remove,
            }
        }
        // Checked after this expiry: the next check is one duration later.
        (Some(LeasePhase::Retained), Some(checked)) if checked >= terms.expires_at => {
            match add(checked, terms.duration) {
                Some(next) if next > now => Step::WaitUntil(next),
                _ => Step::Check,
            }
        }
        _ => Step::Check,
    };
    if status.phase.is_none() {
        status.phase = Some(LeasePhase::Active);
    }
    Plan { status, step }
}

/// What was learnt about the asset of an expired lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// A notebook references the asset or it is pinned (the index said so, or
    /// the sidecar refused the delete with 409).
    InUse {
        /// Notebooks that reference it.
        referenced_by: Vec<String>,
        /// Whether it is pinned.
        pinned: bool,
    },
    /// Another lease on the same asset has not expired.
    HeldByLease {
        /// That lease.
        lease: String,
        /// When it expires.
        until: Timestamp,
    },
    /// The sidecar deleted the asset.
    Deleted,
    /// The sidecar has no such asset.
    Missing,
    /// The sidecar could not be asked; the asset stays.
    Unreachable {
        /// Condition reason: SessionNotFound, SessionTerminating, SessionNotReady or SidecarUnreachable.
        reason: &'static str,
        /// For people.
        message: String,
    },
}

/// When to reconcile again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// At this instant.
    At(Timestamp),
    /// After the error backoff (the sidecar could not be asked).
    Backoff,
    /// Only when the lease changes.
    AwaitChange,
}

/// A status and when to look again.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// The new status.
    pub status: AssetLeaseStatus,
    /// When to reconcile again.
    pub next: Next,
}

/// When the sidecar wrote the asset again after an operator-made lease began
/// (the same content produced again), the instant that lease should start
/// from instead: an asset is kept a full duration after its latest creation.
/// The session controller does the same at its next status read; checking
/// here too closes the gap between a rewrite and that read. Leases made by
/// people are theirs to renew.
pub fn restart_at(lease: &AssetLease, index: &[AssetEntry]) -> Option<Timestamp> {
    let made_by_operator = lease.labels().get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGER)
        && lease
            .owner_references()
            .iter()
            .any(|owner| owner.kind == "NotebookSession" && owner.name == lease.spec.session_ref.name);
    if !made_by_operator {
        return None;
    }
    let asset = asset_name(&lease.spec.path).ok()?;
    let created = ceil_second(index.iter().find(|e| e.name == asset)?.created_time()?);
    let start = lease
        .spec
        .start_time
        .as_ref()
        .or(lease.metadata.creation_timestamp.as_ref())?
        .0;
    let began = lease.spec.renew_time.as_ref().map_or(start, |r| start.max(r.0));
    (created > began).then_some(created)
}

/// The index entry's answer for an expired lease, when it settles the matter
/// without a delete: referenced or pinned → in use; not listed → missing.
/// `None`: the index says the asset is unreferenced, so ask the sidecar to
/// delete it (it checks again from disk, under the lock notebook writes take).
pub fn from_index(asset: &str, index: &[AssetEntry]) -> Option<Finding> {
    match index.iter().find(|entry| entry.name == asset) {
        None => Some(Finding::Missing),
        Some(entry) if entry.pinned || !entry.referenced_by.is_empty() => Some(Finding::InUse {
            referenced_by: entry.referenced_by.clone(),
            pinned: entry.pinned,
        }),
        Some(_) => None,
    }
}

/// The verdict on an expired lease, from what was found at `now`.
pub fn verdict(lease: &AssetLease, now: Timestamp, settings: Settings, finding: Finding) -> Verdict {
    let Plan { mut status, step } = plan(lease, now, settings);
    let Ok(terms) = terms(lease) else {
        return Verdict {
            status,
            next: Next::AwaitChange,
        };
    };
    match step {
        Step::Check => {}
        // Not due (renewed meanwhile, or reclaimed): the answer does not apply.
        Step::WaitUntil(at) => {
            return Verdict {
                status,
                next: Next::At(at),
            }
        }
        Step::Remove => {
            return Verdict {
                status,
                next: Next::At(now),
            }
        }
        Step::Invalid => {
            return Verdict {
                status,
                next: Next::AwaitChange,
            }
        }
    }
    let generation = lease.metadata.generation;
    let checked = floor_second(now);
    let mut conditions = std::mem::take(&mut status.conditions);
    let mut set = |(type_, status, reason, message): (&'static str, &'static str, &str, String)| {
        conditions::set(
            &mut conditions,
            generation,
            now,
            cond(type_, status, reason, message),
        );
    };
    let asset = &terms.asset;
    // Every finding but another lease's hold comes from the sidecar.
    let answered = !matches!(finding, Finding::HeldByLease { .. });
    let (phase, next) = match finding {
        Finding::Unreachable { reason, message } => {
            set((
                SESSION_REACHABLE,
                "False",
                reason,
                format!("{message}; the asset is kept"),
            ));
            status.conditions = conditions;
            return Verdict {
                status,
                next: Next::Backoff,
            };
        }
        Finding::InUse {
            referenced_by,
            pinned,
        } => {
            let (reason, message) = match (pinned, referenced_by.is_empty()) {
                (true, true) => ("Pinned", format!("{asset} is pinned")),
                (true, false) => (
                    "PinnedAndReferenced",
                    format!("{asset} is pinned and referenced by {}", referenced_by.join(", ")),
                ),
                (false, _) => (
                    "Referenced",
                    format!("{asset} is referenced by {}", referenced_by.join(", ")),
                ),
            };
            set((IN_USE, "True", reason, message));
            set((
                ASSET_MISSING,
                "False",
                "Present",
                format!("the sidecar has {asset}"),
            ));
            status.referenced_by = referenced_by;
            (LeasePhase::Retained, add(checked, terms.duration))
        }
        Finding::HeldByLease { lease: other, until } => {
            set((
                IN_USE,
                "True",
                "HeldByLease",
                format!("lease {other} holds {asset} until {until}"),
            ));
            status.referenced_by.clear();
            (LeasePhase::Retained, add(checked, terms.duration))
        }
        Finding::Deleted => {
            set((
                IN_USE,
                "False",
                "Unreferenced",
                format!("no notebook referenced {asset} and it was not pinned; the sidecar deleted it"),
            ));
            set((
                ASSET_MISSING,
                "False",
                "Deleted",
                format!("{asset} was deleted by this lease"),
            ));
            status.referenced_by.clear();
            (LeasePhase::Reclaimed, add(checked, settings.grace))
        }
        Finding::Missing => {
            set((
                ASSET_MISSING,
                "True",
                "NotFound",
                format!("the session's sidecar has no asset {asset}"),
            ));
            set((
                IN_USE,
                "False",
                "NotFound",
                format!("there is no {asset} to hold"),
            ));
            status.referenced_by.clear();
            (LeasePhase::Reclaimed, add(checked, settings.grace))
        }
    };
    if answered {
        set((
            SESSION_REACHABLE,
            "True",
            "SidecarAnswered",
            format!("the sidecar of session {} answered", lease.spec.session_ref.name),
        ));
    }
    status.conditions = conditions;
    status.phase = Some(phase);
    status.last_check_time = Some(Time(checked));
    Verdict {
        status,
        next: next.map_or(Next::AwaitChange, Next::At),
    }
}

/// Another lease that still holds the same asset of the same session: not
/// being deleted and not expired at `now`. The one that holds it longest.
pub fn holder<'a>(
    lease: &AssetLease,
    others: impl IntoIterator<Item = &'a AssetLease>,
    now: Timestamp,
) -> Option<(String, Timestamp)> {
    others
        .into_iter()
        .filter(|other| {
            other.name_any() != lease.name_any()
                && other.namespace() == lease.namespace()
                && other.spec.session_ref == lease.spec.session_ref
                && other.spec.path == lease.spec.path
                && other.metadata.deletion_timestamp.is_none()
        })
        .filter_map(|other| {
            let until = terms(other).ok()?.expires_at;
            (until > now).then(|| (other.name_any(), until))
        })
        .max_by_key(|(_, until)| *until)
}

/// What releasing a lease that is being deleted means for its asset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Release {
    /// Leave the asset alone, for this reason.
    Keep(String),
    /// Ask the sidecar to delete this asset (it refuses when referenced or pinned).
    DeleteAsset(String),
}

/// Decides what deleting `lease` does to its asset; `holder` is another lease
/// that still holds the asset, from [`holder`].
pub fn release(lease: &AssetLease, holder: Option<(String, Timestamp)>) -> Release {
    let asset = match asset_name(&lease.spec.path) {
        Ok(asset) => asset.to_string(),
        Err(why) => return Release::Keep(why),
    };
    // A Reclaimed lease has nothing left to release, unless it was renewed
    // after the check that reclaimed it (the asset came back and the lease with it).
    let status = lease.status.clone().unwrap_or_default();
    if status.phase == Some(LeasePhase::Reclaimed) {
        let expires_at = terms(lease).ok().map(|t| t.expires_at);
        let checked = status.last_check_time.map(|t| t.0);
        let renewed_since = matches!((expires_at, checked), (Some(e), Some(c)) if e > c);
        if !renewed_since {
            return Release::Keep(format!("{asset} was already reclaimed"));
        }
    }
    if let Some((other, until)) = holder {
        return Release::Keep(format!("lease {other} holds {asset} until {until}"));
    }
    Release::DeleteAsset(asset)
}

/// The condition of a type in a lease status.
pub fn condition<'a>(status: &'a AssetLeaseStatus, type_: &str) -> Option<&'a Condition> {
    conditions::find(&status.conditions, type_)
}

/// Events between two statuses of a lease: phase changes, and the sidecar
/// becoming unreachable.
pub fn transitions(old: Option<&AssetLeaseStatus>, new: &AssetLeaseStatus) -> Vec<Transition> {
    let mut out = Vec::new();
    let message = |status: &AssetLeaseStatus, type_: &str| {
        condition(status, type_)
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };
    let old_phase = old.and_then(|s| s.phase);
    if old_phase != new.phase {
        match new.phase {
            Some(LeasePhase::Retained) => out.push(Transition {
                warning: false,
                reason: "Retained".into(),
                note: format!("expired but kept: {}", message(new, IN_USE)),
            }),
            Some(LeasePhase::Reclaimed) => {
                let missing = condition(new, ASSET_MISSING).is_some_and(|c| c.status == "True");
                out.push(Transition {
                    warning: missing,
                    reason: if missing { "AssetMissing" } else { "Reclaimed" }.into(),
                    note: if missing {
                        message(new, ASSET_MISSING)
                    } else {
                        message(new, IN_USE)
                    },
                });
            }
            Some(LeasePhase::Active) if old_phase.is_some() => out.push(Transition {
                warning: false,
                reason: "Renewed".into(),
                note: "the lease was renewed and is active again".into(),
            }),
            _ => {}
        }
    }
    let was_unreachable = old
        .and_then(|s| condition(s, SESSION_REACHABLE))
        .is_some_and(|c| c.status == "False");
    if let Some(now) = condition(new, SESSION_REACHABLE) {
        if now.status == "False" && !was_unreachable {
            out.push(Transition {
                warning: true,
                reason: now.reason.clone(),
                note: now.message.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
    const GRACE: Settings = Settings {
        grace: Duration::from_secs(300),
    };

    fn at(text: &str) -> Timestamp {
        text.parse().expect("a timestamp")
    }

    /// A lease of session `analysis` on `assets/<SHA>.png`, created at 10:00:00,
    /// starting at 10:00:00 and lasting 10 minutes, with `extra` YAML merged into its spec.
    fn lease(extra: &str) -> AssetLease {
        let yaml = format!(
            r#"
apiVersion: notebook.dev/v1alpha1
kind: AssetLease
metadata:
  name: analysis-0a1b2c3d4e5f6071.png
  namespace: agents
  uid: 5e0c7a51-9d7f-4c1e-b1a4-3c3f6a1f0b11
  generation: 1
  creationTimestamp: "2026-11-28T10:00:00Z"
spec:
  sessionRef: {{name: analysis}}
  path: assets/{SHA}.png
  duration: 10m
  startTime: "2026-11-28T10:00:00Z"
{extra}
"#
        );
        serde_yaml::from_str(&yaml).expect("a lease")
    }

    fn with_status(mut lease: AssetLease, status: AssetLeaseStatus) -> AssetLease {
        lease.status = Some(status);
        lease
    }

    fn cond<'a>(status: &'a AssetLeaseStatus, type_: &str) -> &'a Condition {
        condition(status, type_).unwrap_or_else(|| panic!("no {type_} condition in {status:?}"))
    }

    fn entry(referenced_by: &[&str], pinned: bool) -> AssetEntry {
        AssetEntry {
            name: format!("{SHA}.png"),
            path: format!("assets/{SHA}.png"),
            referenced_by: referenced_by.iter().map(|s| s.to_string()).collect(),
            pinned,
            ..AssetEntry::default()
        }
    }

    #[test]
    fn expiry_is_the_later_of_start_and_renewal_plus_duration() {
        assert_eq!(
            terms(&lease("")).map(|t| t.expires_at),
            Ok(at("2026-11-28T10:10:00Z"))
        );
        let renewed = lease(r#"  renewTime: "2026-11-28T10:05:00Z""#);
        assert_eq!(
            terms(&renewed).map(|t| t.expires_at),
            Ok(at("2026-11-28T10:15:00Z"))
        );
        // A renewal before the start does not shorten the lease.
        let early = lease(r#"  renewTime: "2026-11-28T09:00:00Z""#);
        assert_eq!(
            terms(&early).map(|t| t.expires_at),
            Ok(at("2026-11-28T10:10:00Z"))
        );
        // Without startTime the lease starts when the object was created.
        let mut created = lease("");
        created.spec.start_time = None;
        created.metadata.creation_timestamp = Some(Time(at("2026-11-28T11:00:00Z")));
        assert_eq!(
            terms(&created).map(|t| t.expires_at),
            Ok(at("2026-11-28T11:10:00Z"))
        );
    }

    #[test]
    fn expiry_is_rounded_up_to_the_second_a_status_can_hold() {
        let mut short = lease("");
        short.spec.duration = "1500ms".into();
        assert_eq!(
            terms(&short).map(|t| t.expires_at),
            Ok(at("2026-11-28T10:00:02Z"))
        );
        assert_eq!(
            ceil_second(at("2026-11-28T10:00:00.001Z")),
            at("2026-11-28T10:00:01Z")
        );
        assert_eq!(
            floor_second(at("2026-11-28T10:00:00.999Z")),
            at("2026-11-28T10:00:00Z")
        );
        assert_eq!(
            ceil_second(at("2026-11-28T10:00:00Z")),
            at("2026-11-28T10:00:00Z")
        );
    }

    #[test]
    fn only_asset_paths_and_durations_are_enforced() {
        assert_eq!(
            asset_name(&format!("assets/{SHA}.png")),
            Ok(format!("{SHA}.png").as_str())
        );
        for bad in [
            "assets/../x",
            "assets/%2e%2e/x",
            "notebook.ipynb",
            "/assets/x.png",
            &format!("assets/sub/{SHA}.png"),
        ] {
            assert!(asset_name(bad).is_err(), "{bad}");
        }
        let mut bad_path = lease("");
        bad_path.spec.path = "assets/../../etc/passwd".into();
        let plan = plan(&bad_path, at("2026-11-28T12:00:00Z"), GRACE);
        assert_eq!(plan.step, Step::Invalid);
        let spec_valid = cond(&plan.status, SPEC_VALID);
        assert_eq!(
            (spec_valid.status.as_str(), spec_valid.reason.as_str()),
            ("False", "InvalidSpec")
        );

        let mut bad_duration = lease("");
        bad_duration.spec.duration = "1d".into();
        assert_eq!(plan_step(&bad_duration, "2026-11-28T12:00:00Z"), Step::Invalid);
    }

    fn plan_step(lease: &AssetLease, now: &str) -> Step {
        plan(lease, at(now), GRACE).step
    }

    #[test]
    fn guarantee_6_an_active_lease_is_never_checked_before_its_expiry() {
        let lease = lease("");
        for now in ["2026-11-28T10:00:00Z", "2026-11-28T10:09:59.999Z"] {
            let plan = plan(&lease, at(now), GRACE);
            assert_eq!(plan.step, Step::WaitUntil(at("2026-11-28T10:10:00Z")), "{now}");
            assert_eq!(plan.status.phase, Some(LeasePhase::Active));
            assert_eq!(plan.status.expires_at, Some(Time(at("2026-11-28T10:10:00Z"))));
        }
        // Exactly at expiresAt, not a moment later, the sidecar is asked.
        assert_eq!(plan_step(&lease, "2026-11-28T10:10:00Z"), Step::Check);
        // And an answer that arrives for a lease renewed meanwhile changes nothing.
        let renewed = super::tests::lease(r#"  renewTime: "2026-11-28T10:09:00Z""#);
        let verdict = verdict(&renewed, at("2026-11-28T10:10:00Z"), GRACE, Finding::Deleted);
        assert_eq!(verdict.next, Next::At(at("2026-11-28T10:19:00Z")));
        assert_eq!(verdict.status.phase, Some(LeasePhase::Active));
    }

    #[test]
    fn guarantee_6_a_refused_delete_retains_the_lease_with_the_notebooks_that_won() {
        // The seed's race: the index still said "unreferenced", but a notebook
        // was saved a moment before the delete, and the sidecar refused it.
        let lease = lease("");
        assert_eq!(from_index(&format!("{SHA}.png"), &[entry(&[], false)]), None);
        let now = at("2026-11-28T10:10:00.400Z");
        let verdict = verdict(
            &lease,
            now,
            GRACE,
            Finding::InUse {
                referenced_by: vec!["report.ipynb".into()],
                pinned: false,
            },
        );
        assert_eq!(verdict.status.phase, Some(LeasePhase::Retained));
        assert_eq!(verdict.status.referenced_by, ["report.ipynb"]);
        assert_eq!(
            verdict.status.last_check_time,
            Some(Time(at("2026-11-28T10:10:00Z")))
        );
        // Checked again one duration later, counted from the check.
        assert_eq!(verdict.next, Next::At(at("2026-11-28T10:20:00Z")));
        let in_use = cond(&verdict.status, IN_USE);
        assert_eq!(
            (in_use.status.as_str(), in_use.reason.as_str()),
            ("True", "Referenced")
        );
        assert!(in_use.message.contains("report.ipynb"), "{}", in_use.message);
        assert_eq!(cond(&verdict.status, SESSION_REACHABLE).status, "True");
    }

    #[test]
    fn a_retained_lease_is_checked_again_one_duration_after_the_last_check() {
        let retained = with_status(
            lease(""),
            AssetLeaseStatus {
                phase: Some(LeasePhase::Retained),
                last_check_time: Some(Time(at("2026-11-28T10:10:00Z"))),
                ..Default::default()
            },
        );
        assert_eq!(
            plan_step(&retained, "2026-11-28T10:15:00Z"),
            Step::WaitUntil(at("2026-11-28T10:20:00Z"))
        );
        assert_eq!(plan_step(&retained, "2026-11-28T10:20:00Z"), Step::Check);
        // Renewed into the future: Active again, until the new expiry.
        let mut renewed = retained.clone();
        renewed.spec.renew_time = Some(Time(at("2026-11-28T10:18:00Z")));
        let plan = plan(&renewed, at("2026-11-28T10:19:00Z"), GRACE);
        assert_eq!(plan.status.phase, Some(LeasePhase::Active));
        assert_eq!(plan.step, Step::WaitUntil(at("2026-11-28T10:28:00Z")));
        // Renewed after the last check but expired again: check at once.
        assert_eq!(plan_step(&renewed, "2026-11-28T10:28:00Z"), Step::Check);
    }

    #[test]
    fn a_pinned_asset_is_retained_and_says_so() {
        let finding = from_index(&format!("{SHA}.png"), &[entry(&[], true)]);
        assert_eq!(
            finding,
            Some(Finding::InUse {
                referenced_by: vec![],
                pinned: true
            })
        );
        let verdict = verdict(
            &lease(""),
            at("2026-11-28T10:10:00Z"),
            GRACE,
            finding.expect("in use"),
        );
        assert_eq!(verdict.status.phase, Some(LeasePhase::Retained));
        assert_eq!(cond(&verdict.status, IN_USE).reason, "Pinned");
    }

    #[test]
    fn a_deleted_asset_reclaims_the_lease_which_goes_after_the_grace() {
        let verdict = verdict(
            &lease(""),
            at("2026-11-28T10:10:00.200Z"),
            GRACE,
            Finding::Deleted,
        );
        assert_eq!(verdict.status.phase, Some(LeasePhase::Reclaimed));
        assert_eq!(verdict.next, Next::At(at("2026-11-28T10:15:00Z")));
        assert_eq!(cond(&verdict.status, IN_USE).status, "False");
        assert_eq!(cond(&verdict.status, ASSET_MISSING).status, "False");

        let reclaimed = with_status(lease(""), verdict.status);
        assert_eq!(
            plan_step(&reclaimed, "2026-11-28T10:14:59Z"),
            Step::WaitUntil(at("2026-11-28T10:15:00Z"))
        );
        assert_eq!(plan_step(&reclaimed, "2026-11-28T10:15:00Z"), Step::Remove);
        // Reclaimed never goes back to a check by itself.
        assert_eq!(plan_step(&reclaimed, "2026-11-29T10:15:00Z"), Step::Remove);
        // A grace of zero removes it at once.
        let now = plan(
            &reclaimed,
            at("2026-11-28T10:10:01Z"),
            Settings {
                grace: Duration::ZERO,
            },
        );
        assert_eq!(now.step, Step::Remove);
    }

    #[test]
    fn an_asset_that_came_back_makes_its_reclaimed_lease_active_again() {
        let reclaimed = with_status(
            lease(""),
            AssetLeaseStatus {
                phase: Some(LeasePhase::Reclaimed),
                last_check_time: Some(Time(at("2026-11-28T10:10:00Z"))),
                ..Default::default()
            },
        );
        let mut restarted = reclaimed.clone();
        restarted.spec.start_time = Some(Time(at("2026-11-28T10:12:00Z")));
        let plan = plan(&restarted, at("2026-11-28T10:13:00Z"), GRACE);
        assert_eq!(plan.status.phase, Some(LeasePhase::Active));
        assert_eq!(plan.step, Step::WaitUntil(at("2026-11-28T10:22:00Z")));
    }

    #[test]
    fn an_asset_written_again_restarts_the_operators_lease() {
        let mut ours = lease("");
        ours.metadata.labels = Some([(LABEL_MANAGED_BY.to_string(), MANAGER.to_string())].into());
        ours.spec.session_ref.name = "analysis".into();
        ours.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "notebook.dev/v1alpha1".into(),
                kind: "NotebookSession".into(),
                name: "analysis".into(),
                uid: "u".into(),
                ..Default::default()
            },
        ]);
        let mut rewritten = entry(&[], false);
        rewritten.created_at = "2026-11-28T10:09:59.500Z".into();
        assert_eq!(
            restart_at(&ours, std::slice::from_ref(&rewritten)),
            Some(at("2026-11-28T10:10:00Z"))
        );
        // Not newer than the start: nothing to restart.
        let mut same = entry(&[], false);
        same.created_at = "2026-11-28T10:00:00Z".into();
        assert_eq!(restart_at(&ours, &[same]), None);
        // Renewed after the rewrite: the renewal already covers it.
        let mut renewed = ours.clone();
        renewed.spec.renew_time = Some(Time(at("2026-11-28T10:10:00Z")));
        assert_eq!(restart_at(&renewed, std::slice::from_ref(&rewritten)), None);
        assert_eq!(restart_at(&ours, &[]), None);
        // A person's lease is theirs to renew.
        assert_eq!(restart_at(&lease(""), &[rewritten]), None);
    }

    #[test]
    fn a_missing_asset_gets_the_asset_missing_condition() {
        assert_eq!(from_index(&format!("{SHA}.png"), &[]), Some(Finding::Missing));
        let verdict = verdict(&lease(""), at("2026-11-28T10:10:00Z"), GRACE, Finding::Missing);
        let missing = cond(&verdict.status, ASSET_MISSING);
        assert_eq!(
            (missing.status.as_str(), missing.reason.as_str()),
            ("True", "NotFound")
        );
        assert_eq!(verdict.status.phase, Some(LeasePhase::Reclaimed));
        let events = transitions(lease("").status.as_ref(), &verdict.status);
        assert_eq!(events.len(), 1);
        assert!(events[0].warning);
        assert_eq!(events[0].reason, "AssetMissing");
    }

    #[test]
    fn an_unreachable_session_keeps_the_asset_and_backs_off() {
        let before = with_status(
            lease(""),
            AssetLeaseStatus {
                phase: Some(LeasePhase::Active),
                ..Default::default()
            },
        );
        let verdict = verdict(
            &before,
            at("2026-11-28T10:10:00Z"),
            GRACE,
            Finding::Unreachable {
                reason: "SessionNotReady",
                message: "the pod analysis-kernel of session analysis is not ready".into(),
            },
        );
        assert_eq!(verdict.next, Next::Backoff);
        assert_eq!(verdict.status.phase, Some(LeasePhase::Active));
        assert_eq!(verdict.status.last_check_time, None);
        let reachable = cond(&verdict.status, SESSION_REACHABLE);
        assert_eq!(
            (reachable.status.as_str(), reachable.reason.as_str()),
            ("False", "SessionNotReady")
        );
        assert!(reachable.message.contains("kept"), "{}", reachable.message);
        // The next plan asks again: an unanswered check is still due.
        let still = with_status(before, verdict.status);
        assert_eq!(plan_step(&still, "2026-11-28T10:10:05Z"), Step::Check);
        let events = transitions(None, &still.status.clone().unwrap_or_default());
        assert!(events.iter().any(|e| e.warning && e.reason == "SessionNotReady"));
    }

    #[test]
    fn another_unexpired_lease_on_the_same_asset_holds_it() {
        let mine = lease("");
        let mut users = lease(r#"  renewTime: "2026-11-28T10:30:00Z""#);
        users.metadata.name = Some("keep-the-plot".into());
        let mut other_session = users.clone();
        other_session.metadata.name = Some("elsewhere".into());
        other_session.spec.session_ref.name = "other".into();
        let mut expired = lease("");
        expired.metadata.name = Some("old".into());
        let mut deleting = users.clone();
        deleting.metadata.name = Some("going".into());
        deleting.spec.renew_time = Some(Time(at("2026-11-28T11:30:00Z")));
        deleting.metadata.deletion_timestamp = Some(Time(at("2026-11-28T10:09:00Z")));
        let now = at("2026-11-28T10:10:00Z");
        let all = [mine.clone(), users, other_session, expired, deleting];
        assert_eq!(
            holder(&mine, &all, now),
            Some(("keep-the-plot".to_string(), at("2026-11-28T10:40:00Z")))
        );
        assert_eq!(holder(&mine, &all[..1], now), None);

        let verdict = verdict(
            &mine,
            now,
            GRACE,
            Finding::HeldByLease {
                lease: "keep-the-plot".into(),
                until: at("2026-11-28T10:40:00Z"),
            },
        );
        assert_eq!(verdict.status.phase, Some(LeasePhase::Retained));
        assert_eq!(cond(&verdict.status, IN_USE).reason, "HeldByLease");
        // The sidecar was not asked, so nothing is said about it.
        assert!(condition(&verdict.status, SESSION_REACHABLE).is_none());
    }

    #[test]
    fn deleting_a_lease_releases_its_asset_unless_there_is_nothing_to_release() {
        let active = lease("");
        assert_eq!(release(&active, None), Release::DeleteAsset(format!("{SHA}.png")));
        let held = release(&active, Some(("keep".into(), at("2026-11-28T10:40:00Z"))));
        assert!(matches!(held, Release::Keep(why) if why.contains("keep")));

        let reclaimed = with_status(
            lease(""),
            AssetLeaseStatus {
                phase: Some(LeasePhase::Reclaimed),
                last_check_time: Some(Time(at("2026-11-28T10:10:00Z"))),
                ..Default::default()
            },
        );
        assert!(matches!(release(&reclaimed, None), Release::Keep(_)));
        // Restarted after it was reclaimed (the asset came back): release it.
        let mut restarted = reclaimed.clone();
        restarted.spec.start_time = Some(Time(at("2026-11-28T10:12:00Z")));
        assert_eq!(
            release(&restarted, None),
            Release::DeleteAsset(format!("{SHA}.png"))
        );

        let mut bad = lease("");
        bad.spec.path = "../x".into();
        assert!(matches!(release(&bad, None), Release::Keep(_)));
    }

    #[test]
    fn conditions_move_their_transition_time_only_when_their_status_changes() {
        let first = verdict(&lease(""), at("2026-11-28T10:10:00Z"), GRACE, Finding::Missing);
        // Same finding later: same transition times, so the same status.
        let retained = with_status(
            lease(""),
            AssetLeaseStatus {
                phase: Some(LeasePhase::Retained),
                ..first.status.clone()
            },
        );
        let second = verdict(&retained, at("2026-11-28T10:30:00Z"), GRACE, Finding::Missing);
        let (a, b) = (
            cond(&first.status, ASSET_MISSING),
            cond(&second.status, ASSET_MISSING),
        );
        assert_eq!(a.last_transition_time, b.last_transition_time);
        // A changed status moves it.
        let third = verdict(
            &retained,
            at("2026-11-28T10:30:00Z"),
            GRACE,
            Finding::InUse {
                referenced_by: vec!["a.ipynb".into()],
                pinned: false,
            },
        );
        let c = cond(&third.status, ASSET_MISSING);
        assert_eq!(c.status, "False");
        assert_eq!(c.last_transition_time, Time(at("2026-11-28T10:30:00Z")));
        assert_eq!(c.observed_generation, Some(1));
        // Types keep their order, so an unchanged status compares equal.
        let types: Vec<_> = third.status.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [SPEC_VALID, ASSET_MISSING, IN_USE, SESSION_REACHABLE]);
    }

    #[test]
    fn a_status_written_and_read_back_plans_the_same() {
        // metav1.Time keeps whole seconds: a status built at 10:10:00.400 must
        // equal itself once read back, or every reconcile would write again.
        let verdict = verdict(
            &lease(""),
            at("2026-11-28T10:10:00.400Z"),
            GRACE,
            Finding::Deleted,
        );
        let json = serde_json::to_string(&verdict.status).expect("serializes");
        let read: AssetLeaseStatus = serde_json::from_str(&json).expect("reads back");
        assert_eq!(read, verdict.status);
        let again = with_status(lease(""), read.clone());
        assert_eq!(plan(&again, at("2026-11-28T10:11:00.700Z"), GRACE).status, read);
    }

    #[test]
    fn phase_changes_make_events() {
        let active = AssetLeaseStatus {
            phase: Some(LeasePhase::Active),
            ..Default::default()
        };
        let deleted = verdict(&lease(""), at("2026-11-28T10:10:00Z"), GRACE, Finding::Deleted);
        let events = transitions(Some(&active), &deleted.status);
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].reason.as_str(), events[0].warning),
            ("Reclaimed", false)
        );
        assert!(transitions(Some(&deleted.status), &deleted.status).is_empty());
        let renewed = transitions(
            Some(&AssetLeaseStatus {
                phase: Some(LeasePhase::Retained),
                ..Default::default()
            }),
            &active,
        );
        assert_eq!(renewed[0].reason, "Renewed");
    }
}
