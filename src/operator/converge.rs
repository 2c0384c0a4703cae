//! Pure: what to do with a session's kernel pod, from the pod the session
//! should have and the one it has. The controller carries the step out.

use k8s_openapi::api::core::v1::Pod;

use super::builders::{pod_secret_hash, pod_spec_hash};

/// One step towards the desired pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodStep {
    /// There is none and there should be one: create it.
    Create,
    /// Nothing to do: the pod is as it should be, or there is none and
    /// there should be none.
    Keep,
    /// The pod is being deleted: wait for it to go (its deletion event
    /// brings the session back).
    AwaitDeletion,
    /// Delete this pod (a new one follows, unless the session is suspended).
    Delete {
        /// Event reason.
        reason: &'static str,
        /// Event note.
        note: &'static str,
    },
}

/// A pod a session claimed from a pool: built from the pool's template (its
/// own Secret volume, a warm sidecar), so its hash never equals the cold-built
/// pod's, and it is kept whatever the hash says: replacing it would throw
/// away the warm kernel the session was given.
fn is_pool_pod(pod: &Pod) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(super::pools::desired::LABEL_POOL))
}

/// Whether `existing` was started (or claimed) with other Secret values than
/// `desired` carries: the Secret was recreated or changed under it, so its
/// sidecar holds a token nobody else does. A pod without the mark (made
/// before it existed) is not judged by it.
fn secret_changed(existing: &Pod, desired: &Pod) -> bool {
    matches!((pod_secret_hash(existing), pod_secret_hash(desired)), (Some(had), Some(has)) if had != has)
}

/// The step from `existing` towards `desired`; `suspended` sessions keep no pod.
pub fn pod_step(existing: Option<&Pod>, desired: &Pod, suspended: bool) -> PodStep {
    let Some(existing) = existing else {
        return if suspended { PodStep::Keep } else { PodStep::Create };
    };
    if existing.metadata.deletion_timestamp.is_some() {
        return PodStep::AwaitDeletion;
    }
    let finished = matches!(
        existing.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed") | Some("Succeeded")
    );
    if suspended {
        PodStep::Delete {
            reason: "Suspended",
            note: "the session is suspended; removing the kernel pod",
        }
    } else if finished {
        PodStep::Delete {
            reason: "PodFinished",
            note: "the kernel pod stopped; replacing it",
        }
    } else if secret_changed(existing, desired) {
        PodStep::Delete {
            reason: "SecretChanged",
            note: "the session Secret was recreated or changed; replacing the kernel pod so it serves the new token",
        }
    } else if !is_pool_pod(existing) && pod_spec_hash(existing) != pod_spec_hash(desired) {
        PodStep::Delete {
            reason: "SpecChanged",
            note: "the spec changed; replacing the kernel pod",
        }
    } else {
        PodStep::Keep
    }
}

/// Why the kubelet ended a pod, when it says: `Evicted` (a kernel past
/// its ephemeral-storage limit, a node short of memory or disk) with its
/// message, e.g. "Container kernel exceeded its local ephemeral storage
/// limit \"64Mi\". ".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEnd {
    /// The pod's `status.reason`.
    pub reason: String,
    /// The pod's `status.message`, trimmed.
    pub message: String,
}

/// The end of a pod that the kubelet failed with a reason.
pub fn pod_end(pod: &Pod) -> Option<PodEnd> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Failed") {
        return None;
    }
    let reason = status.reason.clone().filter(|r| !r.is_empty())?;
    let message = status.message.as_deref().unwrap_or("").trim().to_string();
    Some(PodEnd { reason, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(hash: &str, phase: &str, deleting: bool) -> Pod {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s-kernel", "annotations": {super::super::builders::ANNOTATION_SPEC_HASH: hash}},
            "status": {"phase": phase},
        }))
        .expect("a pod");
        if deleting {
            pod.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        }
        pod
    }

    fn reason(step: PodStep) -> &'static str {
        match step {
            PodStep::Delete { reason, .. } => reason,
            other => panic!("not a deletion: {other:?}"),
        }
    }

    #[test]
    fn a_missing_pod_is_created_unless_the_session_is_suspended() {
        let desired = pod("h1", "", false);
        assert_eq!(pod_step(None, &desired, false), PodStep::Create);
        assert_eq!(pod_step(None, &desired, true), PodStep::Keep);
    }

    #[test]
    fn a_running_pod_of_the_same_spec_is_kept_and_one_being_deleted_is_waited_for() {
        let desired = pod("h1", "", false);
        assert_eq!(
            pod_step(Some(&pod("h1", "Running", false)), &desired, false),
            PodStep::Keep
        );
        assert_eq!(
            pod_step(Some(&pod("h2", "Running", true)), &desired, true),
            PodStep::AwaitDeletion
        );
    }

    #[test]
    fn a_pod_is_deleted_when_suspended_finished_or_of_another_spec_in_that_order() {
        let desired = pod("h1", "", false);
        assert_eq!(
            reason(pod_step(Some(&pod("h2", "Failed", false)), &desired, true)),
            "Suspended"
        );
        assert_eq!(
            reason(pod_step(Some(&pod("h2", "Succeeded", false)), &desired, false)),
            "PodFinished"
        );
        assert_eq!(
            reason(pod_step(Some(&pod("h1", "Failed", false)), &desired, false)),
            "PodFinished"
        );
        assert_eq!(
            reason(pod_step(Some(&pod("h2", "Running", false)), &desired, false)),
            "SpecChanged"
        );
    }

    #[test]
    fn a_pod_started_with_other_secret_values_is_replaced_and_an_unmarked_one_kept() {
        let mut desired = pod("h1", "", false);
        super::super::builders::set_secret_hash(&mut desired, "new");
        let mut old = pod("h1", "Running", false);
        super::super::builders::set_secret_hash(&mut old, "old");
        assert_eq!(reason(pod_step(Some(&old), &desired, false)), "SecretChanged");
        let mut same = pod("h1", "Running", false);
        super::super::builders::set_secret_hash(&mut same, "new");
        assert_eq!(pod_step(Some(&same), &desired, false), PodStep::Keep);
        assert_eq!(
            pod_step(Some(&pod("h1", "Running", false)), &desired, false),
            PodStep::Keep
        );
        // A claimed pool pod too: its sidecar was handed the old token.
        old.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(super::super::pools::desired::LABEL_POOL.into(), "p".into());
        assert_eq!(reason(pod_step(Some(&old), &desired, false)), "SecretChanged");
    }

    #[test]
    fn a_claimed_pool_pod_is_kept_although_its_hash_differs_but_not_when_it_finished() {
        let desired = pod("h1", "", false);
        let mut claimed = pod("pool-template-hash", "Running", false);
        claimed
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(super::super::pools::desired::LABEL_POOL.into(), "p".into());
        assert_eq!(pod_step(Some(&claimed), &desired, false), PodStep::Keep);
        let mut finished = claimed.clone();
        finished.status.get_or_insert_with(Default::default).phase = Some("Failed".into());
        assert_eq!(reason(pod_step(Some(&finished), &desired, false)), "PodFinished");
        assert_eq!(reason(pod_step(Some(&claimed), &desired, true)), "Suspended");
    }

    #[test]
    fn an_evicted_pod_says_why_and_a_running_one_says_nothing() {
        let mut evicted = pod("h1", "Failed", false);
        if let Some(status) = evicted.status.as_mut() {
            status.reason = Some("Evicted".into());
            status.message =
                Some("Container kernel exceeded its local ephemeral storage limit \"64Mi\". ".into());
        }
        let end = pod_end(&evicted).expect("an end");
        assert_eq!(end.reason, "Evicted");
        assert!(end.message.ends_with("limit \"64Mi\"."), "{end:?}");
        assert_eq!(pod_end(&pod("h1", "Running", false)), None);
        assert_eq!(
            pod_end(&pod("h1", "Failed", false)),
            None,
            "no reason given: nothing to add"
        );
    }
}
