//! Where a session's sidecar is and how to speak for it: the pod IP of the
//! session's kernel pod (which must be owned by the session) and the bearer
//! token from the session Secret. Answers are cached briefly and dropped as
//! soon as the sidecar refuses or cannot be reached, so a replaced pod or a
//! new token is picked up at once, and as soon as their session is deleted
//! (a watch of session metadata, [`Upstreams::evict_gone`]): the cache never
//! serves a session that is gone, after an apiserver outage too.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};

use super::error::GatewayError;
use super::review::TtlCache;
use crate::operator::builders::{secret_name, service_host, session_pod_name, session_token, sidecar_ip};
use crate::operator::crd::NotebookSession;

/// How long a resolved sidecar address and token are reused.
const TTL: Duration = Duration::from_secs(30);

/// A session's sidecar, ready to be called.
#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Pod IP and sidecar port.
    pub addr: SocketAddr,
    /// The name the sidecar answers to (its Service host), sent as `Host`.
    pub host: String,
    /// The session's bearer token.
    pub token: String,
    /// The session object it was resolved for (a session deleted and made
    /// again under its name is another one).
    pub session_uid: String,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// Resolves sessions to sidecars, with a short cache.
pub struct Upstreams {
    client: Client,
    port: u16,
    cache: Mutex<TtlCache<(String, String), Upstream>>,
}

impl Upstreams {
    pub fn new(client: Client, port: u16) -> Upstreams {
        Upstreams {
            client,
            port,
            cache: Mutex::new(TtlCache::new(TTL, 4096)),
        }
    }

    /// The sidecar of session `ns/name`: NotFound when there is no such
    /// session, NotReady while it has no running pod.
    pub async fn resolve(&self, ns: &str, name: &str) -> Result<Upstream, GatewayError> {
        let key = (ns.to_string(), name.to_string());
        if let Some(up) = self.lock().get(&key, Instant::now()) {
            return Ok(up);
        }
        // The session and its Secret side by side (the Secret's name is the
        // session's); the pod's name is in the session's status.
        let sessions: Api<NotebookSession> = Api::namespaced(self.client.clone(), ns);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let secret_name = secret_name(name);
        let (session, secret) = futures::join!(sessions.get_opt(name), secrets.get_opt(&secret_name));
        let session = session
            .map_err(GatewayError::kube("read the NotebookSession"))?
            .ok_or_else(|| GatewayError::NotFound(format!("no NotebookSession {ns}/{name}")))?;
        if session.spec.suspend {
            return Err(GatewayError::NotReady(format!(
                "session {ns}/{name} is suspended; resume it first"
            )));
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let pod = pods
            .get_opt(&session_pod_name(&session))
            .await
            .map_err(GatewayError::kube("read the kernel pod"))?
            .ok_or_else(|| GatewayError::NotReady(format!("session {ns}/{name} has no kernel pod yet")))?;
        let ip = pod_ip_of(&pod, &session).map_err(GatewayError::NotReady)?;
        let secret = secret
            .map_err(GatewayError::kube("read the session Secret"))?
            .ok_or_else(|| GatewayError::NotReady(format!("session {ns}/{name} has no token Secret yet")))?;
        let token = session_token(&secret).ok_or_else(|| {
            GatewayError::NotReady(format!("the Secret of session {ns}/{name} holds no token"))
        })?;
        let up = Upstream {
            addr: SocketAddr::new(ip, self.port),
            host: service_host(&session),
            token,
            session_uid: session.uid().unwrap_or_default(),
        };
        self.lock().insert(key, up.clone(), Instant::now());
        Ok(up)
    }

    /// Drops what is cached of sessions as they are deleted: a watch of
    /// NotebookSession metadata in every namespace (the gateway may list and
    /// watch them). When the watch was broken (an apiserver outage) it lists
    /// again, and entries whose session is gone, or is another object by
    /// now, are dropped. Runs until the process ends; the watch resumes
    /// with backoff.
    pub async fn evict_gone(&self) {
        let api: Api<PartialObjectMeta<NotebookSession>> = Api::all(self.client.clone());
        let events = watcher::watcher(api, watcher::Config::default()).default_backoff();
        let mut events = std::pin::pin!(events);
        let mut listing: HashMap<(String, String), String> = HashMap::new();
        while let Some(event) = events.next().await {
            let key =
                |m: &PartialObjectMeta<NotebookSession>| (m.namespace().unwrap_or_default(), m.name_any());
            match event {
                Ok(watcher::Event::Delete(m)) => self.forget(&key(&m).0, &key(&m).1),
                Ok(watcher::Event::Init) => listing.clear(),
                Ok(watcher::Event::InitApply(m)) => {
                    listing.insert(key(&m), m.uid().unwrap_or_default());
                }
                Ok(watcher::Event::InitDone) => {
                    self.lock().retain(|k, up| still_there(&listing, k, up));
                    listing.clear();
                }
                Ok(watcher::Event::Apply(_)) => {}
                Err(e) => tracing::warn!(error = %e, "watching sessions for the upstream cache; retrying"),
            }
        }
    }

    /// Forget what is known of `ns/name` (the sidecar refused or vanished).
    pub fn forget(&self, ns: &str, name: &str) {
        self.lock().remove(&(ns.to_string(), name.to_string()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TtlCache<(String, String), Upstream>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether a cached upstream still stands for a session in `listing`
/// (namespace and name to uid, from a fresh list).
fn still_there(listing: &HashMap<(String, String), String>, key: &(String, String), up: &Upstream) -> bool {
    listing.get(key) == Some(&up.session_uid)
}

/// The IP of the kernel pod's sidecar, when the pod belongs to `session`
/// (the operator's rule, [`sidecar_ip`]).
pub fn pod_ip_of(pod: &Pod, session: &NotebookSession) -> Result<IpAddr, String> {
    sidecar_ip(pod, Some(session.uid().unwrap_or_default().as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn session() -> NotebookSession {
        serde_json::from_value(json!({
            "apiVersion": "notebook.dev/v1alpha1", "kind": "NotebookSession",
            "metadata": {"name": "s1", "namespace": "ns", "uid": "uid-1"},
            "spec": {}
        }))
        .unwrap()
    }

    fn pod(owner_uid: &str, phase: &str, ip: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "s1-kernel", "namespace": "ns", "ownerReferences": [{
                "apiVersion": "notebook.dev/v1alpha1", "kind": "NotebookSession", "name": "s1",
                "uid": owner_uid, "controller": true}]},
            "status": {"phase": phase, "podIP": ip,
                       "initContainerStatuses": [{"name": "sidecar", "started": phase == "Running", "ready": false,
                                                  "restartCount": 0, "image": "i", "imageID": ""}]}
        }))
        .unwrap()
    }

    #[test]
    fn only_a_running_pod_owned_by_the_session_is_used() {
        let s = session();
        assert_eq!(
            pod_ip_of(&pod("uid-1", "Running", Some("10.0.0.7")), &s),
            Ok("10.0.0.7".parse().unwrap())
        );
        assert!(pod_ip_of(&pod("uid-2", "Running", Some("10.0.0.7")), &s)
            .unwrap_err()
            .contains("not the kernel pod"));
        assert!(pod_ip_of(&pod("uid-1", "Pending", None), &s)
            .unwrap_err()
            .contains("not started"));
        assert!(pod_ip_of(&pod("uid-1", "Running", None), &s)
            .unwrap_err()
            .contains("no IP"));
        assert!(pod_ip_of(&pod("uid-1", "Running", Some("nonsense")), &s).is_err());
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let up = Upstream {
            addr: "127.0.0.1:8888".parse().unwrap(),
            host: "s1.ns.svc".into(),
            token: "secret-token".into(),
            session_uid: "uid-1".into(),
        };
        assert!(!format!("{up:?}").contains("secret-token"));
    }

    #[test]
    fn after_a_relist_only_upstreams_of_sessions_still_there_are_kept() {
        let up = Upstream {
            addr: "127.0.0.1:8888".parse().unwrap(),
            host: "s1.ns.svc".into(),
            token: "t".into(),
            session_uid: "uid-1".into(),
        };
        let key = ("ns".to_string(), "s1".to_string());
        let listed = |uid: &str| HashMap::from([(key.clone(), uid.to_string())]);
        assert!(still_there(&listed("uid-1"), &key, &up));
        assert!(
            !still_there(&listed("uid-2"), &key, &up),
            "made again under the same name"
        );
        assert!(
            !still_there(&HashMap::new(), &key, &up),
            "deleted during the outage"
        );
    }
}
