//! Pure decisions of pools: which warm pod a session claims, how many warm
//! pods to create or delete, and the pool's status.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::desired::{LABEL_POOL, LABEL_WARM};
use crate::operator::builders::{is_pod_ready, pod_spec_hash, sidecar_ip, SIDECAR_CONTAINER};
use crate::operator::conditions::{self, cond, Transition};
use crate::operator::crd::{NotebookPool, NotebookPoolStatus};
use crate::sidecar_api::WARMUP_FAILED;

/// Condition type of a pool: every replica is warm and ready.
pub const READY: &str = "Ready";
/// Reason of a pool's Ready=False when a warm pod's warmup failed.
pub const WARMUP_FAILED_REASON: &str = "WarmupFailed";

fn is_controlled_by(pod: &Pod, uid: &str) -> bool {
    pod.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed") | Some("Succeeded")
    )
}

/// The warm pods of `pool` among `pods`: labelled warm for it, still owned
/// by it (a claimed pod is never the pool's again), not being deleted.
pub fn warm_pods<'a>(pool: &NotebookPool, pods: impl IntoIterator<Item = &'a Pod>) -> Vec<&'a Pod> {
    let (name, ns, uid) = (pool.name_any(), pool.namespace(), pool.uid().unwrap_or_default());
    pods.into_iter()
        .filter(|p| p.namespace() == ns)
        .filter(|p| p.labels().get(LABEL_POOL) == Some(&name))
        .filter(|p| p.labels().get(LABEL_WARM).map(String::as_str) == Some("true"))
        .filter(|p| is_controlled_by(p, &uid))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// Pods of `pool` that sessions hold now (they keep the pool label).
pub fn claimed_pods<'a>(pool: &NotebookPool, pods: impl IntoIterator<Item = &'a Pod>) -> usize {
    let (name, ns) = (pool.name_any(), pool.namespace());
    pods.into_iter()
        .filter(|p| p.namespace() == ns)
        .filter(|p| p.labels().get(LABEL_POOL) == Some(&name))
        .filter(|p| !p.labels().contains_key(LABEL_WARM))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .count()
}

/// A warm pod a claim can take now: its kernel answers (Ready) and its
/// sidecar can be reached.
pub fn claimable(pod: &Pod) -> bool {
    is_pod_ready(pod) && !is_finished(pod) && sidecar_ip(pod, None).is_ok()
}

/// The order in which `session_uid` tries the claimable `warm` pods: oldest
/// first, rotated by the session's uid so that sessions claiming at the same
/// moment mostly start at different pods (a 409 costs a round trip, never
/// correctness: the resourceVersion precondition is what makes a claim safe).
pub fn claim_order<'a>(warm: &[&'a Pod], session_uid: &str) -> Vec<&'a Pod> {
    let mut ready: Vec<&Pod> = warm.iter().copied().filter(|p| claimable(p)).collect();
    ready.sort_by(|a, b| {
        let age = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        age(a).cmp(&age(b)).then_with(|| a.name_any().cmp(&b.name_any()))
    });
    if ready.is_empty() {
        return ready;
    }
    let spread = session_uid
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(usize::from(b)));
    let start = spread % ready.len();
    ready.rotate_left(start);
    ready
}

/// Why the warmup of a warm pod failed: its sidecar writes it as its
/// termination message and exits once (then, restarted, stays up and not
/// ready), so the kubelet shows it in the sidecar's `state.terminated` until
/// the restart and in `lastState.terminated` after.
pub fn warmup_failure(pod: &Pod) -> Option<String> {
    let sidecar = pod
        .status
        .as_ref()?
        .init_container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == SIDECAR_CONTAINER)?;
    [sidecar.state.as_ref(), sidecar.last_state.as_ref()]
        .into_iter()
        .flatten()
        .find_map(|s| s.terminated.as_ref()?.message.as_deref())
        .map(|m| m.trim().to_string())
        .filter(|m| m.starts_with(WARMUP_FAILED))
}

/// What the pool controller does to the warm pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scale {
    /// New warm pods to create.
    pub create: usize,
    /// Warm pods to delete, by name: finished, of an older template, or too many.
    pub delete: Vec<String>,
}

/// From `warm` (see [`warm_pods`]), `pending` creations the cache does not
/// show yet and the template's spec hash: reach `replicas` warm pods of the
/// current template. Excess goes not-ready first, then newest first.
pub fn scale(replicas: i32, warm: &[&Pod], pending: usize, template_hash: &str) -> Scale {
    let replicas = usize::try_from(replicas.max(0)).unwrap_or(0);
    let mut delete = Vec::new();
    let mut keep: Vec<&Pod> = Vec::new();
    for pod in warm {
        if is_finished(pod) || pod_spec_hash(pod) != Some(template_hash) {
            delete.push(pod.name_any());
        } else {
            keep.push(pod);
        }
    }
    let alive = keep.len() + pending;
    if alive < replicas {
        return Scale {
            create: replicas - alive,
            delete,
        };
    }
    let mut excess = alive - replicas;
    keep.sort_by(|a, b| {
        let age = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        is_pod_ready(a)
            .cmp(&is_pod_ready(b))
            .then_with(|| age(b).cmp(&age(a)))
    });
    for pod in keep {
        if excess == 0 {
            break;
        }
        delete.push(pod.name_any());
        excess -= 1;
    }
    Scale { create: 0, delete }
}

/// The pool's status from its warm pods and the pods sessions hold.
pub fn pool_status(
    pool: &NotebookPool,
    warm: &[&Pod],
    claimed: usize,
    invalid: Option<&[String]>,
    now: Timestamp,
) -> NotebookPoolStatus {
    let old = pool.status.clone().unwrap_or_default();
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let ready = warm.iter().filter(|p| claimable(p)).count();
    let replicas = usize::try_from(pool.spec.replicas.max(0)).unwrap_or(0);
    let mut failed: Vec<(String, String)> = warm
        .iter()
        .filter(|p| !claimable(p))
        .filter_map(|p| Some((p.name_any(), warmup_failure(p)?)))
        .collect();
    failed.sort();
    let condition = match invalid {
        Some(errors) => cond(READY, "False", "InvalidTemplate", errors.join("; ")),
        None if ready >= replicas => cond(
            READY,
            "True",
            "Warm",
            format!("{ready} of {replicas} warm pods are ready"),
        ),
        None if !failed.is_empty() => {
            let (pod, why) = &failed[0];
            cond(
                READY,
                "False",
                WARMUP_FAILED_REASON,
                format!(
                    "{why} (pod {pod}; {} of {} warm pods failed it, {ready} of {replicas} are ready); \
                     sessions meanwhile start cold; a changed spec.template.warmup replaces the warm pods",
                    failed.len(),
                    warm.len()
                ),
            )
        }
        None => cond(
            READY,
            "False",
            "Filling",
            format!("{ready} of {replicas} warm pods are ready; sessions meanwhile start cold"),
        ),
    };
    NotebookPoolStatus {
        ready: count(ready),
        warm: count(warm.len()),
        claimed: count(claimed),
        conditions: conditions::merge(&old.conditions, vec![condition], pool.metadata.generation, now),
        observed_generation: pool.metadata.generation,
    }
}

/// Events between two statuses of a pool: a Warning when a warmup failure
/// makes it not ready (`kubectl describe nbp` and the namespace's events
/// say why without reading the condition).
pub fn transitions(old: Option<&NotebookPoolStatus>, new: &NotebookPoolStatus) -> Vec<Transition> {
    let reason = |s: &NotebookPoolStatus| conditions::find(&s.conditions, READY).map(|c| c.reason.clone());
    match conditions::find(&new.conditions, READY) {
        Some(c)
            if c.reason == WARMUP_FAILED_REASON
                && old.and_then(reason).as_deref() != Some(WARMUP_FAILED_REASON) =>
        {
            vec![Transition {
                warning: true,
                reason: WARMUP_FAILED_REASON.into(),
                note: c.message.clone(),
            }]
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::builders::ANNOTATION_SPEC_HASH;

    fn pool(replicas: i32) -> NotebookPool {
        let mut pool = NotebookPool::new("p", Default::default());
        pool.spec.replicas = replicas;
        pool.metadata.namespace = Some("ns".into());
        pool.metadata.uid = Some("pool-uid".into());
        pool
    }

    fn pod(name: &str, created: i64, ready: bool, warm: bool, owner: &str, hash: &str) -> Pod {
        let mut labels = serde_json::json!({LABEL_POOL: "p"});
        if warm {
            labels[LABEL_WARM] = "true".into();
        }
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "namespace": "ns", "labels": labels,
                "creationTimestamp": Timestamp::from_second(created).expect("a time").to_string(),
                "annotations": {ANNOTATION_SPEC_HASH: hash},
                "ownerReferences": [{"apiVersion": "notebook.dev/v1alpha1", "kind": "NotebookPool",
                                     "name": "p", "uid": owner, "controller": true}],
            },
            "status": {
                "phase": "Running", "podIP": "127.0.0.9",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "initContainerStatuses": [{"name": "sidecar", "started": true, "ready": ready,
                                           "restartCount": 0, "image": "i", "imageID": ""}],
            }
        }))
        .expect("a pod")
    }

    #[test]
    fn only_ready_warm_pods_of_the_pool_are_claimed_oldest_first_rotated_per_session() {
        let pods = [
            pod("c", 30, true, true, "pool-uid", "h"),
            pod("a", 10, true, true, "pool-uid", "h"),
            pod("b", 20, false, true, "pool-uid", "h"),
            pod("claimed", 5, true, false, "pool-uid", "h"),
            pod("foreign", 1, true, true, "other-uid", "h"),
        ];
        let warm = warm_pods(&pool(3), &pods);
        let names = |v: Vec<&Pod>| v.into_iter().map(|p| p.name_any()).collect::<Vec<_>>();
        assert_eq!(names(warm.clone()), ["c", "a", "b"]);
        let orders: Vec<_> = ["s1", "s2", "s3", "s4"]
            .iter()
            .map(|s| names(claim_order(&warm, s)))
            .collect();
        for order in &orders {
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, ["a", "c"], "every ready warm pod, once: {order:?}");
        }
        assert!(
            orders.iter().any(|o| o[0] == "a") && orders.iter().any(|o| o[0] == "c"),
            "{orders:?}"
        );
        assert_eq!(claimed_pods(&pool(3), &pods), 1);
    }

    #[test]
    fn scale_creates_the_missing_counting_pending_and_deletes_outdated_finished_and_excess() {
        let pods = [
            pod("old", 10, true, true, "pool-uid", "h"),
            pod("new", 20, true, true, "pool-uid", "h"),
            pod("starting", 30, false, true, "pool-uid", "h"),
            pod("outdated", 5, true, true, "pool-uid", "h0"),
        ];
        let warm: Vec<&Pod> = pods.iter().collect();
        assert_eq!(
            scale(5, &warm, 1, "h"),
            Scale {
                create: 1,
                delete: vec!["outdated".into()]
            }
        );
        assert_eq!(
            scale(3, &warm, 0, "h"),
            Scale {
                create: 0,
                delete: vec!["outdated".into()]
            }
        );
        assert_eq!(
            scale(1, &warm, 0, "h"),
            Scale {
                create: 0,
                delete: vec!["outdated".into(), "starting".into(), "new".into()]
            }
        );
        assert_eq!(scale(0, &[], 0, "h"), Scale::default());
        assert_eq!(scale(2, &[], 2, "h"), Scale::default(), "pending creations count");
    }

    #[test]
    fn the_status_counts_ready_warm_and_claimed_pods() {
        let pods = [
            pod("a", 10, true, true, "pool-uid", "h"),
            pod("b", 20, false, true, "pool-uid", "h"),
        ];
        let warm: Vec<&Pod> = pods.iter().collect();
        let now = Timestamp::from_second(1000).expect("a time");
        let status = pool_status(&pool(2), &warm, 3, None, now);
        assert_eq!((status.ready, status.warm, status.claimed), (1, 2, 3));
        assert_eq!(status.conditions[0].status, "False");
        assert_eq!(status.conditions[0].reason, "Filling");
        let status = pool_status(&pool(1), &warm, 0, None, now);
        assert_eq!(status.conditions[0].reason, "Warm");
        let status = pool_status(&pool(1), &warm, 0, Some(&["bad".into()]), now);
        assert_eq!(status.conditions[0].reason, "InvalidTemplate");
    }

    #[test]
    fn a_failed_warmup_makes_the_pool_not_ready_with_the_error_in_its_condition() {
        let mut failed = pod("b", 20, false, true, "pool-uid", "h");
        let why = "warmup failed: ModuleNotFoundError: No module named 'pandas'";
        if let Some(sidecar) = failed
            .status
            .as_mut()
            .and_then(|s| s.init_container_statuses.as_mut())
            .and_then(|c| c.first_mut())
        {
            sidecar.restart_count = 1;
            sidecar.last_state = Some(
                serde_json::from_value(serde_json::json!(
                    {"terminated": {"exitCode": 1, "reason": "Error", "message": format!("{why}\n")}}
                ))
                .expect("a state"),
            );
        }
        assert_eq!(warmup_failure(&failed).as_deref(), Some(why));
        let plain = pod("a", 10, true, true, "pool-uid", "h");
        assert_eq!(warmup_failure(&plain), None);
        let warm = [&plain, &failed];
        let now = Timestamp::from_second(1000).expect("a time");
        let status = pool_status(&pool(2), &warm, 0, None, now);
        let ready = &status.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "WarmupFailed")
        );
        assert!(ready.message.starts_with(why), "{}", ready.message);
        assert!(ready.message.contains("pod b"), "{}", ready.message);
        let events = transitions(None, &status);
        assert_eq!(events.len(), 1);
        assert!(events[0].warning && events[0].reason == "WarmupFailed" && events[0].note.starts_with(why));
        assert!(
            transitions(Some(&status), &status).is_empty(),
            "once, at the transition"
        );
        assert_eq!(status.ready, 1);
        assert_eq!(
            scale(2, &warm, 0, "h"),
            Scale::default(),
            "a failed pod is kept, not replaced in a loop: it would fail again"
        );
        // Another termination of the sidecar is not a warmup failure.
        let mut crashed = failed.clone();
        if let Some(c) = crashed
            .status
            .as_mut()
            .and_then(|s| s.init_container_statuses.as_mut())
        {
            c[0].last_state = Some(
                serde_json::from_value(serde_json::json!(
                    {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
                ))
                .expect("a state"),
            );
        }
        assert_eq!(warmup_failure(&crashed), None);
        let mut exited = crashed.clone();
        if let Some(c) = exited
            .status
            .as_mut()
            .and_then(|s| s.init_container_statuses.as_mut())
        {
            c[0].state = Some(
                serde_json::from_value(serde_json::json!(
                    {"terminated": {"exitCode": 1, "reason": "Error", "message": why}}
                ))
                .expect("a state"),
            );
        }
        assert_eq!(
            warmup_failure(&exited).as_deref(),
            Some(why),
            "before the restart too"
        );
        assert_eq!(
            pool_status(&pool(2), &[&plain, &crashed], 0, None, now).conditions[0].reason,
            "Filling"
        );
    }
}
