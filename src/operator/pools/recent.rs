//! The claims this replica made lately, by session uid: the pod cache lags a
//! claim by a few milliseconds, and a reconcile that fails after its claim
//! (a handoff or a status write that did not get through) and runs again
//! within that lag would find no pod and claim a second one. With this, it
//! reads the pod it claimed from the apiserver instead. It is a memory of
//! this replica's own writes, not a lock: which session holds a pod is
//! decided by the apiserver alone (the claim's resourceVersion), and a new
//! leader starts from a fresh listing that shows every claim.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a claim is remembered: far beyond any cache lag.
const REMEMBER: Duration = Duration::from_secs(60);

/// Session uid to the pod claimed for it, and when.
#[derive(Default)]
pub struct RecentClaims(Mutex<HashMap<String, (String, Instant)>>);

impl RecentClaims {
    /// Remembers that `pod` was claimed for the session with `uid`.
    pub fn remember(&self, uid: &str, pod: &str) {
        self.remember_at(uid, pod, Instant::now());
    }

    /// The pod claimed lately for the session with `uid`, if any.
    pub fn get(&self, uid: &str) -> Option<String> {
        self.get_at(uid, Instant::now())
    }

    fn remember_at(&self, uid: &str, pod: &str, now: Instant) {
        let mut all = self.lock();
        all.retain(|_, (_, at)| now.duration_since(*at) < REMEMBER);
        all.insert(uid.to_string(), (pod.to_string(), now));
    }

    fn get_at(&self, uid: &str, now: Instant) -> Option<String> {
        let all = self.lock();
        all.get(uid)
            .filter(|(_, at)| now.duration_since(*at) < REMEMBER)
            .map(|(pod, _)| pod.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        match self.0.lock() {
            Ok(all) => all,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_is_remembered_for_its_session_until_it_is_old() {
        let recent = RecentClaims::default();
        let t0 = Instant::now();
        recent.remember_at("uid-a", "pool-warm-1", t0);
        assert_eq!(
            recent.get_at("uid-a", t0 + Duration::from_secs(1)).as_deref(),
            Some("pool-warm-1")
        );
        assert_eq!(
            recent.get_at("uid-b", t0),
            None,
            "only for the session that claimed"
        );
        assert_eq!(
            recent.get_at("uid-a", t0 + REMEMBER),
            None,
            "forgotten after REMEMBER"
        );
        // Old entries go when new ones come.
        recent.remember_at("uid-b", "pool-warm-2", t0 + REMEMBER);
        assert_eq!(recent.lock().len(), 1);
    }
}
