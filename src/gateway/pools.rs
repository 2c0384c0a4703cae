//! What an agent reads about the NotebookPools it may claim from
//! (`list_pools`): pure, from the pool object the operator keeps up to date.

use kube::ResourceExt;
use schemars::JsonSchema;
use serde::Serialize;

use crate::operator::crd::NotebookPool;
use crate::operator::pools::decide::READY;

/// One pool, as `list_pools` answers it.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct PoolSummary {
    pub namespace: String,
    /// What `create_session` takes as `pool`.
    pub name: String,
    /// Kernel image of every warm pod; none: the operator's default kernel image.
    pub image: Option<String>,
    /// Warm pods the pool keeps.
    pub replicas: i32,
    /// Warm pods whose kernel answers: while above 0, a session from this
    /// pool gets a warm kernel; at 0 it starts cold from the template.
    pub ready: i32,
    /// Warm pods, ready or still starting.
    pub warm: i32,
    /// Pods of this pool that sessions hold now.
    pub claimed: i32,
    /// The pool's Ready condition (every replica warm and ready), once the
    /// operator has written one.
    pub condition: Option<PoolCondition>,
    /// The counts are of an older spec than the pool's current one (the
    /// operator has not caught up yet, e.g. right after a change of replicas).
    pub stale: bool,
    pub deleting: bool,
    pub created_at: Option<String>,
}

/// A pool's Ready condition.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct PoolCondition {
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
}

pub fn summary(p: &NotebookPool) -> PoolSummary {
    let status = p.status.clone().unwrap_or_default();
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map(|c| PoolCondition {
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
        });
    let stale = match (status.observed_generation, p.metadata.generation) {
        (Some(seen), Some(now)) => seen < now,
        (None, _) => true,
        (Some(_), None) => false,
    };
    PoolSummary {
        namespace: p.namespace().unwrap_or_default(),
        name: p.name_any(),
        image: p.spec.template.kernel.image.clone(),
        replicas: p.spec.replicas,
        ready: status.ready,
        warm: status.warm,
        claimed: status.claimed,
        condition,
        stale,
        deleting: p.metadata.deletion_timestamp.is_some(),
        created_at: p.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pool(v: serde_json::Value) -> NotebookPool {
        serde_json::from_value(v).expect("a NotebookPool")
    }

    #[test]
    fn the_summary_has_the_counts_and_the_ready_condition() {
        let p = pool(json!({
            "apiVersion": "notebook.dev/v1alpha1", "kind": "NotebookPool",
            "metadata": {"name": "warm", "namespace": "agents", "generation": 2,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"replicas": 3, "template": {"kernel": {"image": "img:1"}}},
            "status": {"ready": 2, "warm": 3, "claimed": 4, "observedGeneration": 2, "conditions": [
                {"type": "Other", "status": "True", "reason": "X", "message": "",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "Ready", "status": "False", "reason": "Filling", "message": "2 of 3 warm pods are ready",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }));
        let s = summary(&p);
        assert_eq!((s.namespace.as_str(), s.name.as_str()), ("agents", "warm"));
        assert_eq!(s.image.as_deref(), Some("img:1"));
        assert_eq!((s.replicas, s.ready, s.warm, s.claimed), (3, 2, 3, 4));
        assert_eq!(
            s.condition,
            Some(PoolCondition {
                status: "False".into(),
                reason: "Filling".into(),
                message: "2 of 3 warm pods are ready".into()
            })
        );
        assert!(!s.stale && !s.deleting);
        assert_eq!(s.created_at.as_deref(), Some("2026-01-01T00:00:00Z"));
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["condition"]["status"], "False");
        assert_eq!(v["ready"], 2);
    }

    #[test]
    fn a_pool_the_operator_has_not_seen_yet_has_zero_counts_and_says_stale() {
        let p = pool(json!({
            "apiVersion": "notebook.dev/v1alpha1", "kind": "NotebookPool",
            "metadata": {"name": "new", "namespace": "agents", "generation": 1},
            "spec": {"replicas": 2}
        }));
        let s = summary(&p);
        assert_eq!((s.replicas, s.ready, s.warm, s.claimed), (2, 0, 0, 0));
        assert_eq!(s.image, None, "the operator's default kernel image");
        assert_eq!(s.condition, None);
        assert!(s.stale);
        let mut seen = p.clone();
        seen.status = Some(serde_json::from_value(json!({"observedGeneration": 1})).unwrap());
        assert!(!summary(&seen).stale);
        seen.metadata.generation = Some(2);
        assert!(
            summary(&seen).stale,
            "replicas changed since the status was written"
        );
    }
}
