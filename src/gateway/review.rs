//! Who is asking, and may they: TokenReview and SubjectAccessReview against
//! the apiserver, each answer kept for a short, bounded while so that a busy
//! agent costs the apiserver one review per TTL, not one per call.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{Api, PostParams};
use kube::Client;
use sha2::{Digest, Sha256};

use super::error::GatewayError;
use super::metrics::GatewayMetrics;
use crate::operator::crd::GROUP;

/// The resource of every review about a session.
pub const SESSIONS: &str = "notebooksessions";
/// The resource of `list_pools`' review.
pub const POOLS: &str = "notebookpools";

/// A user the apiserver vouched for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    /// The namespace of a ServiceAccount user (`system:serviceaccount:NS:NAME`).
    pub fn service_account_namespace(&self) -> Option<&str> {
        let rest = self.username.strip_prefix("system:serviceaccount:")?;
        let (ns, name) = rest.split_once(':')?;
        (!ns.is_empty() && !name.is_empty()).then_some(ns)
    }
}

/// A map whose entries expire after `ttl` and which never holds more than
/// `cap` entries (when full, expired entries go first, then everything).
#[derive(Debug)]
pub struct TtlCache<K, V> {
    map: HashMap<K, (Instant, V)>,
    ttl: Duration,
    cap: usize,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration, cap: usize) -> Self {
        TtlCache {
            map: HashMap::new(),
            ttl,
            cap: cap.max(1),
        }
    }

    pub fn get(&mut self, key: &K, now: Instant) -> Option<V> {
        match self.map.get(key) {
            Some((at, v)) if now.saturating_duration_since(*at) < self.ttl => Some(v.clone()),
            Some(_) => {
                self.map.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&mut self, key: K, value: V, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        if self.map.len() >= self.cap && !self.map.contains_key(&key) {
            let ttl = self.ttl;
            self.map
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
            if self.map.len() >= self.cap {
                self.map.clear();
            }
        }
        self.map.insert(key, (now, value));
    }

    pub fn remove(&mut self, key: &K) {
        self.map.remove(key);
    }

    /// Keeps only the entries `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        self.map.retain(|k, (_, v)| keep(k, v));
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// One question for the SubjectAccessReview: `verb` on `resource` (of
/// group `notebook.dev`) in `namespace`, or on the one object `name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Access {
    pub verb: &'static str,
    pub resource: &'static str,
    pub namespace: String,
    pub name: Option<String>,
}

impl Access {
    /// `verb` on NotebookSessions in `namespace` (on `name` alone when given).
    pub fn sessions(verb: &'static str, namespace: &str, name: Option<&str>) -> Access {
        Access {
            verb,
            resource: SESSIONS,
            namespace: namespace.to_string(),
            name: name.map(str::to_string),
        }
    }

    /// `verb` on NotebookPools in `namespace`.
    pub fn pools(verb: &'static str, namespace: &str) -> Access {
        Access {
            verb,
            resource: POOLS,
            namespace: namespace.to_string(),
            name: None,
        }
    }
}

/// Asks the apiserver, through short-lived caches.
pub struct Reviewer {
    client: Client,
    /// Audiences a token must be meant for; empty: the apiserver's own.
    audiences: Vec<String>,
    metrics: std::sync::Arc<GatewayMetrics>,
    tokens: Mutex<TtlCache<[u8; 32], Option<User>>>,
    decisions: Mutex<TtlCache<(User, Access), Result<(), String>>>,
}

/// Most cached answers of each kind.
const CACHE_ENTRIES: usize = 4096;

impl Reviewer {
    pub fn new(
        client: Client,
        ttl: Duration,
        audiences: Vec<String>,
        metrics: std::sync::Arc<GatewayMetrics>,
    ) -> Reviewer {
        Reviewer {
            client,
            audiences,
            metrics,
            tokens: Mutex::new(TtlCache::new(ttl, CACHE_ENTRIES)),
            decisions: Mutex::new(TtlCache::new(ttl, CACHE_ENTRIES)),
        }
    }

    /// The user behind a bearer token; `Unauthenticated` when the
    /// apiserver does not accept it.
    pub async fn authenticate(&self, token: &str) -> Result<User, GatewayError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = lock(&self.tokens).get(&key, Instant::now());
        let user = match cached.clone() {
            Some(user) => user,
            None => {
                let user = self.token_review(token).await.inspect_err(|_| {
                    self.metrics.review("token", "error", false);
                })?;
                lock(&self.tokens).insert(key, user.clone(), Instant::now());
                user
            }
        };
        let outcome = if user.is_some() { "allowed" } else { "denied" };
        self.metrics.review("token", outcome, cached.is_some());
        user.ok_or_else(|| {
            GatewayError::Unauthenticated("the token was not accepted by the apiserver".into())
        })
    }

    async fn token_review(&self, token: &str) -> Result<Option<User>, GatewayError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|source| GatewayError::Kube {
                step: "TokenReview",
                source,
            })?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true)
            || !meant_for_us(&self.audiences, status.audiences.as_deref().unwrap_or_default())
        {
            return Ok(None);
        }
        let info = status.user.unwrap_or_default();
        let username = info.username.unwrap_or_default();
        if username.is_empty() {
            return Ok(None);
        }
        Ok(Some(User {
            username,
            uid: info.uid.unwrap_or_default(),
            groups: info.groups.unwrap_or_default(),
            extra: info.extra.unwrap_or_default().into_iter().collect(),
        }))
    }

    /// Ok when `user` may `access`; `Forbidden` with the apiserver's reason otherwise.
    pub async fn authorize(&self, user: &User, access: Access) -> Result<(), GatewayError> {
        let key = (user.clone(), access.clone());
        let cached = lock(&self.decisions).get(&key, Instant::now());
        let from_cache = cached.is_some();
        let decision = match cached {
            Some(d) => d,
            None => {
                let d = self.access_review(user, &access).await.inspect_err(|_| {
                    self.metrics.review("access", "error", false);
                })?;
                lock(&self.decisions).insert(key, d.clone(), Instant::now());
                d
            }
        };
        let outcome = if decision.is_ok() { "allowed" } else { "denied" };
        self.metrics.review("access", outcome, from_cache);
        decision.map_err(|reason| forbidden(user, &access, &reason))
    }

    async fn access_review(&self, user: &User, access: &Access) -> Result<Result<(), String>, GatewayError> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.username.clone()),
                uid: (!user.uid.is_empty()).then(|| user.uid.clone()),
                groups: Some(user.groups.clone()),
                extra: (!user.extra.is_empty()).then(|| user.extra.clone().into_iter().collect()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(GROUP.to_string()),
                    resource: Some(access.resource.to_string()),
                    verb: Some(access.verb.to_string()),
                    namespace: Some(access.namespace.clone()),
                    name: access.name.clone(),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|source| GatewayError::Kube {
                step: "SubjectAccessReview",
                source,
            })?;
        let status = answer.status.unwrap_or_default();
        Ok(if status.allowed && status.denied != Some(true) {
            Ok(())
        } else {
            Err(status.reason.unwrap_or_default())
        })
    }
}

/// The refusal of `access` to `user`, with the apiserver's reason (if any):
/// it names the verb and the resource, so the caller knows which permission
/// is missing.
fn forbidden(user: &User, access: &Access, reason: &str) -> GatewayError {
    GatewayError::Forbidden {
        user: user.username.clone(),
        action: format!("{} {}", access.verb, access.resource),
        what: access
            .name
            .as_ref()
            .map(|n| format!(" {n:?}"))
            .unwrap_or_default(),
        namespace: access.namespace.clone(),
        reason: if reason.is_empty() {
            String::new()
        } else {
            format!(": {reason}")
        },
    }
}

/// With audiences required, the apiserver must name one of them as an
/// audience the token is valid for (an authenticator that ignores
/// audiences answers with none, and is not trusted for them).
pub fn meant_for_us(required: &[String], valid_for: &[String]) -> bool {
    required.is_empty() || valid_for.iter().any(|a| required.contains(a))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_the_ttl() {
        let mut c = TtlCache::new(Duration::from_secs(10), 8);
        let t0 = Instant::now();
        c.insert("a", 1, t0);
        assert_eq!(c.get(&"a", t0 + Duration::from_secs(9)), Some(1));
        assert_eq!(c.get(&"a", t0 + Duration::from_secs(10)), None);
        assert!(c.is_empty(), "an expired entry is dropped when read");
    }

    #[test]
    fn the_cache_never_grows_past_its_cap() {
        let mut c = TtlCache::new(Duration::from_secs(10), 3);
        let t0 = Instant::now();
        for i in 0..3 {
            c.insert(i, i, t0);
        }
        // Full of live entries: everything goes, then the new one.
        c.insert(3, 3, t0 + Duration::from_secs(1));
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(&3, t0 + Duration::from_secs(1)), Some(3));
        // Full with one expired entry: only that one goes.
        c.insert(4, 4, t0 + Duration::from_secs(2));
        c.insert(5, 5, t0 + Duration::from_secs(2));
        c.insert(6, 6, t0 + Duration::from_millis(11_500));
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&3, t0 + Duration::from_millis(11_500)), None);
        assert_eq!(c.get(&4, t0 + Duration::from_millis(11_500)), Some(4));
        for i in 0..10_000 {
            c.insert(i, i, t0);
            assert!(c.len() <= 3);
        }
    }

    #[test]
    fn a_required_audience_must_be_confirmed_by_the_apiserver() {
        let ours = vec!["nbo-gateway".to_string()];
        assert!(meant_for_us(&[], &[]));
        assert!(meant_for_us(&ours, &["nbo-gateway".into()]));
        assert!(meant_for_us(&ours, &["api".into(), "nbo-gateway".into()]));
        assert!(!meant_for_us(&ours, &[]));
        assert!(!meant_for_us(&ours, &["https://kubernetes.default.svc".into()]));
    }

    #[test]
    fn a_refusal_names_the_verb_the_resource_and_the_namespace() {
        let u = User {
            username: "system:serviceaccount:agents:bot".into(),
            uid: String::new(),
            groups: vec![],
            extra: BTreeMap::new(),
        };
        let pools = forbidden(&u, &Access::pools("list", "agents"), "");
        assert_eq!(
            pools.to_string(),
            "forbidden: system:serviceaccount:agents:bot cannot list notebookpools in namespace agents"
        );
        assert_eq!(pools.status(), axum::http::StatusCode::FORBIDDEN);
        let one = forbidden(&u, &Access::sessions("get", "other", Some("s1")), "no RBAC rule");
        assert_eq!(
            one.to_string(),
            "forbidden: system:serviceaccount:agents:bot cannot get notebooksessions \"s1\" in namespace other: no RBAC rule"
        );
        assert_eq!(Access::sessions("list", "ns", None).resource, SESSIONS);
        assert_eq!(Access::pools("list", "ns").name, None);
    }

    #[test]
    fn a_zero_ttl_caches_nothing() {
        let mut c = TtlCache::new(Duration::ZERO, 3);
        c.insert(1, 1, Instant::now());
        assert!(c.is_empty());
    }

    #[test]
    fn service_account_users_name_their_namespace() {
        let user = |name: &str| User {
            username: name.into(),
            uid: String::new(),
            groups: vec![],
            extra: BTreeMap::new(),
        };
        assert_eq!(
            user("system:serviceaccount:agents:bot").service_account_namespace(),
            Some("agents")
        );
        assert_eq!(user("alice").service_account_namespace(), None);
        assert_eq!(
            user("system:serviceaccount::bot").service_account_namespace(),
            None
        );
        assert_eq!(
            user("system:serviceaccount:agents").service_account_namespace(),
            None
        );
    }
}
