//! Pure decisions about sessions made through the gateway: which namespace
//! and name a request means, the object a `create_session` asks for, the
//! label naming who asked, whether a session counts against the per-user
//! cap, and the summary an agent reads back.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;
use kube::ResourceExt;
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::review::User;
use crate::operator::crd::{self, KernelSpec, NotebookSession, NotebookSessionSpec, StorageSpec};

/// Label and annotation naming who asked for a session: the label holds a
/// label-safe form of the username (selectable), the annotation the username itself.
pub const REQUESTED_BY: &str = "notebook.dev/requested-by";
/// Prefix of generated session names.
pub const GENERATED_PREFIX: &str = "nb-";

/// A label value (at most 63 characters of `[A-Za-z0-9._-]`, alphanumeric at
/// both ends) naming `username`. A username that is not one already is
/// rewritten readably and given a hash suffix, so two users never share a value.
pub fn requested_by_label(username: &str) -> String {
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
    };
    if valid(username) {
        return username.to_string();
    }
    let readable: String = username
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '.'
            }
        })
        .take(54)
        .collect();
    let readable = readable.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let hash = hex::encode(&Sha256::digest(username.as_bytes())[..4]);
    if readable.is_empty() {
        format!("u-{hash}")
    } else {
        format!("{readable}-{hash}")
    }
}

/// The namespace a request means: the one it names, else the user's own
/// ServiceAccount namespace, else the gateway's default.
pub fn namespace_for(asked: Option<&str>, user: &User, default: &str) -> String {
    match asked.map(str::trim).filter(|s| !s.is_empty()) {
        Some(ns) => ns.to_string(),
        None => user.service_account_namespace().unwrap_or(default).to_string(),
    }
}

/// A DNS-1123 label, as namespaces and session names are.
pub use crate::util::is_dns1123_label as is_dns_label;

/// `(namespace, name)` of `session` (`name` or `namespace/name`), with
/// `namespace` as a separate, optional argument that must agree.
pub fn session_ref(
    session: &str,
    namespace: Option<&str>,
    user: &User,
    default: &str,
) -> Result<(String, String), String> {
    let session = session.trim();
    let (ns, name) = match session.split_once('/') {
        Some((ns, name)) => {
            if let Some(other) = namespace.map(str::trim).filter(|s| !s.is_empty() && *s != ns) {
                return Err(format!(
                    "session {session:?} names namespace {ns:?} but namespace is {other:?}"
                ));
            }
            (ns.to_string(), name.to_string())
        }
        None => (namespace_for(namespace, user, default), session.to_string()),
    };
    check_names(&ns, &name)?;
    Ok((ns, name))
}

pub fn check_names(ns: &str, name: &str) -> Result<(), String> {
    if !is_dns_label(ns) {
        return Err(format!("{ns:?} is not a namespace name"));
    }
    if !is_dns_label(name) {
        return Err(format!(
            "{name:?} is not a session name (lowercase letters, digits and '-', at most 63)"
        ));
    }
    Ok(())
}

/// What `create_session` was asked for.
#[derive(Debug, Default, Clone)]
pub struct NewSession {
    pub name: Option<String>,
    pub image: Option<String>,
    pub idle_timeout: Option<String>,
    pub storage: Option<String>,
    /// A NotebookPool to take a warm kernel from.
    pub pool: Option<String>,
    /// Prefix of the generated name when `name` is absent (default [`GENERATED_PREFIX`]).
    pub generate_prefix: Option<&'static str>,
    /// Annotations of the new object besides [`REQUESTED_BY`] (which always names the caller).
    pub annotations: BTreeMap<String, String>,
}

/// The NotebookSession a request asks for, labelled with who asked.
pub fn desired(new: &NewSession, namespace: &str, user: &User) -> Result<NotebookSession, String> {
    let name = new.name.as_deref().map(str::trim).filter(|s| !s.is_empty());
    if let Some(name) = name {
        check_names(namespace, name)?;
    } else if !is_dns_label(namespace) {
        return Err(format!("{namespace:?} is not a namespace name"));
    }
    let idle_timeout = match new
        .idle_timeout
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        Some(t) => {
            crd::parse_duration(t).map_err(|e| format!("idle_timeout: {e}"))?;
            Some(t.to_string())
        }
        None => None,
    };
    let storage = new
        .storage
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|size| StorageSpec {
            size: Quantity(size.to_string()),
            storage_class_name: None,
        });
    let image = new.image.clone().filter(|s| !s.trim().is_empty());
    let pool = new.pool.as_deref().map(str::trim).filter(|s| !s.is_empty());
    if let Some(pool) = pool {
        if !is_dns_label(pool) {
            return Err(format!("pool: {pool:?} is not a NotebookPool name"));
        }
        // The pool's template decides the kernel and the pods are made
        // ahead, so neither can be chosen here (the CRD refuses them too).
        if image.is_some() || storage.is_some() {
            return Err("pool: a session from a pool takes its image from the pool's template and cannot have storage; leave image and storage out".into());
        }
    }
    let spec = NotebookSessionSpec {
        kernel: KernelSpec {
            image,
            ..KernelSpec::default()
        },
        storage,
        idle_timeout,
        pool_ref: pool.map(|name| crd::PoolRef {
            name: name.to_string(),
        }),
        ..serde_json::from_value(json!({})).map_err(|e| format!("an empty spec does not parse: {e}"))?
    };
    let mut session = NotebookSession::new("", spec);
    session.metadata = ObjectMeta {
        name: name.map(str::to_string),
        generate_name: name
            .is_none()
            .then(|| new.generate_prefix.unwrap_or(GENERATED_PREFIX).to_string()),
        namespace: Some(namespace.to_string()),
        labels: Some(BTreeMap::from([(
            REQUESTED_BY.to_string(),
            requested_by_label(&user.username),
        )])),
        annotations: Some({
            let mut a = new.annotations.clone();
            a.insert(REQUESTED_BY.to_string(), user.username.clone());
            a
        }),
        ..ObjectMeta::default()
    };
    Ok(session)
}

/// Whether `s` counts against its requester's cap: it exists, is not being
/// deleted and is not suspended.
pub fn is_live(s: &NotebookSession) -> bool {
    s.metadata.deletion_timestamp.is_none() && !s.spec.suspend
}

/// Sessions `username` asked for that count against the cap.
pub fn live_sessions_of<'a>(
    sessions: impl IntoIterator<Item = &'a NotebookSession>,
    username: &str,
) -> usize {
    sessions
        .into_iter()
        .filter(|s| s.annotations().get(REQUESTED_BY).map(String::as_str) == Some(username))
        .filter(|s| is_live(s))
        .count()
}

/// Refusal text when one more live session would pass the cap (0: no cap).
pub fn over_cap(live: usize, cap: usize, username: &str) -> Option<String> {
    (cap > 0 && live >= cap).then(|| {
        format!(
            "{username} already has {live} live session(s), the most this gateway allows per user \
             ({cap}); delete or suspend one first"
        )
    })
}

/// Ready condition is True.
pub fn is_ready(s: &NotebookSession) -> bool {
    s.status.as_ref().is_some_and(|st| {
        st.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// Failed: the session cannot run as specified (waiting for Ready is futile).
pub fn is_failed(s: &NotebookSession) -> bool {
    s.status
        .as_ref()
        .and_then(|st| st.phase)
        .is_some_and(|p| p == crd::SessionPhase::Failed)
}

/// What an agent reads about a session: the answer of the gateway's session tools.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct SessionSummary {
    pub namespace: String,
    pub name: String,
    /// `namespace/name`, as the kernel tools' `session` argument takes it.
    pub session: String,
    pub phase: Option<crd::SessionPhase>,
    pub ready: bool,
    /// The Ready condition's message, when it has one.
    pub message: Option<String>,
    pub suspended: bool,
    pub deleting: bool,
    /// The user who asked the gateway for it.
    pub requested_by: Option<String>,
    pub image: Option<String>,
    pub idle_timeout: Option<String>,
    pub created_at: Option<String>,
    pub last_activity_time: Option<String>,
    pub queue: Option<crd::QueueStatus>,
    pub kernel_restarts: Option<i64>,
    /// The gateway path of the session's sidecar routes.
    pub url: String,
}

pub fn summary(s: &NotebookSession) -> SessionSummary {
    let ns = s.namespace().unwrap_or_default();
    let name = s.name_any();
    let status = s.status.as_ref();
    let ready = status.and_then(|st| st.conditions.iter().find(|c| c.type_ == "Ready"));
    SessionSummary {
        session: format!("{ns}/{name}"),
        url: format!("/sessions/{ns}/{name}"),
        phase: status.and_then(|st| st.phase),
        ready: is_ready(s),
        message: ready.map(|c| c.message.clone()).filter(|m| !m.is_empty()),
        suspended: s.spec.suspend,
        deleting: s.metadata.deletion_timestamp.is_some(),
        requested_by: s.annotations().get(REQUESTED_BY).cloned(),
        image: s.spec.kernel.image.clone(),
        idle_timeout: s.spec.idle_timeout.clone(),
        created_at: s.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()),
        last_activity_time: status
            .and_then(|st| st.last_activity_time.as_ref())
            .map(|t| t.0.to_string()),
        queue: status.and_then(|st| st.queue.clone()),
        kernel_restarts: status.and_then(|st| st.kernel_restarts),
        namespace: ns,
        name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> User {
        User {
            username: name.into(),
            uid: "u1".into(),
            groups: vec![],
            extra: BTreeMap::new(),
        }
    }

    #[test]
    fn labels_name_the_user_and_never_collide() {
        assert_eq!(requested_by_label("alice"), "alice");
        let sa = requested_by_label("system:serviceaccount:agents-a:agent");
        assert!(sa.starts_with("system.serviceaccount.agents-a.agent-"), "{sa}");
        assert_ne!(sa, requested_by_label("system.serviceaccount.agents-a.agent"));
        assert_ne!(requested_by_label("a:b"), requested_by_label("a;b"));
        let long = requested_by_label(&"x".repeat(200));
        assert!(long.len() <= 63, "{long}");
        assert!(requested_by_label("::").starts_with("u-"));
        for name in ["alice@example.com", "-x-", "ü", "a b", &"y".repeat(64)] {
            let l = requested_by_label(name);
            assert!(
                l.len() <= 63 && l.as_bytes()[0].is_ascii_alphanumeric(),
                "{name} -> {l}"
            );
            assert!(l.as_bytes()[l.len() - 1].is_ascii_alphanumeric(), "{name} -> {l}");
        }
    }

    #[test]
    fn a_service_account_defaults_to_its_own_namespace() {
        let sa = user("system:serviceaccount:agents:bot");
        assert_eq!(namespace_for(None, &sa, "default"), "agents");
        assert_eq!(namespace_for(Some(" "), &sa, "default"), "agents");
        assert_eq!(namespace_for(Some("other"), &sa, "default"), "other");
        assert_eq!(namespace_for(None, &user("alice"), "default"), "default");
    }

    #[test]
    fn session_refs_take_both_forms_and_refuse_disagreement() {
        let u = user("alice");
        assert_eq!(session_ref("s1", None, &u, "d"), Ok(("d".into(), "s1".into())));
        assert_eq!(
            session_ref("ns/s1", None, &u, "d"),
            Ok(("ns".into(), "s1".into()))
        );
        assert_eq!(
            session_ref("ns/s1", Some("ns"), &u, "d"),
            Ok(("ns".into(), "s1".into()))
        );
        assert_eq!(
            session_ref("s1", Some("ns"), &u, "d"),
            Ok(("ns".into(), "s1".into()))
        );
        assert!(session_ref("ns/s1", Some("other"), &u, "d").is_err());
        assert!(session_ref("../x", None, &u, "d").is_err());
        assert!(session_ref("a/b/c", None, &u, "d").is_err());
        assert!(session_ref("", None, &u, "d").is_err());
        assert!(session_ref("S1", None, &u, "d").is_err());
    }

    #[test]
    fn the_desired_session_is_labelled_with_who_asked() {
        let u = user("system:serviceaccount:agents:bot");
        let new = NewSession {
            name: None,
            image: Some("img:1".into()),
            idle_timeout: Some("30m".into()),
            storage: Some("1Gi".into()),
            pool: None,
            generate_prefix: None,
            annotations: BTreeMap::from([
                (REQUESTED_BY.to_string(), "forged".to_string()),
                ("x/y".into(), "z".into()),
            ]),
        };
        let s = desired(&new, "agents", &u).unwrap();
        assert_eq!(s.metadata.name, None);
        assert_eq!(s.metadata.generate_name.as_deref(), Some("nb-"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("agents"));
        assert_eq!(
            s.annotations()[REQUESTED_BY],
            u.username,
            "the caller, whatever was asked"
        );
        assert_eq!(s.annotations()["x/y"], "z");
        assert_eq!(s.labels()[REQUESTED_BY], requested_by_label(&u.username));
        assert_eq!(s.spec.kernel.image.as_deref(), Some("img:1"));
        assert_eq!(s.spec.idle_timeout.as_deref(), Some("30m"));
        assert_eq!(s.spec.storage.as_ref().map(|st| st.size.0.as_str()), Some("1Gi"));
        assert!(!s.spec.suspend);

        let named = NewSession {
            name: Some("mine".into()),
            ..NewSession::default()
        };
        let s = desired(&named, "agents", &u).unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some("mine"));
        assert_eq!(s.metadata.generate_name, None);
        assert!(s.spec.storage.is_none());
        let prefixed = NewSession {
            generate_prefix: Some("jupyter-"),
            ..NewSession::default()
        };
        let s = desired(&prefixed, "agents", &u).unwrap();
        assert_eq!(s.metadata.generate_name.as_deref(), Some("jupyter-"));

        let pooled = NewSession {
            pool: Some("warm".into()),
            idle_timeout: Some("30m".into()),
            ..NewSession::default()
        };
        let s = desired(&pooled, "agents", &u).unwrap();
        assert_eq!(s.spec.pool_ref.as_ref().map(|p| p.name.as_str()), Some("warm"));
        assert_eq!(s.spec.kernel.image, None);
        for clash in [
            NewSession {
                pool: Some("warm".into()),
                image: Some("img:1".into()),
                ..NewSession::default()
            },
            NewSession {
                pool: Some("warm".into()),
                storage: Some("1Gi".into()),
                ..NewSession::default()
            },
            NewSession {
                pool: Some("Not A Pool".into()),
                ..NewSession::default()
            },
        ] {
            assert!(
                desired(&clash, "agents", &u).unwrap_err().starts_with("pool: "),
                "{clash:?}"
            );
        }

        let bad = NewSession {
            idle_timeout: Some("soon".into()),
            ..NewSession::default()
        };
        assert!(desired(&bad, "agents", &u).unwrap_err().contains("idle_timeout"));
        let bad = NewSession {
            name: Some("Bad_Name".into()),
            ..NewSession::default()
        };
        assert!(desired(&bad, "agents", &u).is_err());
    }

    #[test]
    fn only_live_sessions_of_the_user_count() {
        let u = user("alice");
        let mk = |who: &str, suspend: bool, deleting: bool| {
            let mut s = desired(&NewSession::default(), "ns", &user(who)).unwrap();
            s.spec.suspend = suspend;
            if deleting {
                s.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ));
            }
            s
        };
        let all = [
            mk("alice", false, false),
            mk("alice", true, false),
            mk("alice", false, true),
            mk("bob", false, false),
            mk("alice", false, false),
        ];
        assert_eq!(live_sessions_of(&all, &u.username), 2);
        assert!(over_cap(2, 2, "alice").unwrap().contains("(2)"));
        assert_eq!(over_cap(1, 2, "alice"), None);
        assert_eq!(over_cap(100, 0, "alice"), None);
    }

    #[test]
    fn the_summary_points_at_the_gateway_routes() {
        let mut s = desired(
            &NewSession {
                name: Some("s1".into()),
                ..NewSession::default()
            },
            "ns",
            &user("alice"),
        )
        .unwrap();
        let v = summary(&s);
        assert_eq!(v.url, "/sessions/ns/s1");
        assert_eq!(v.session, "ns/s1");
        assert!(!v.ready);
        assert_eq!(v.requested_by.as_deref(), Some("alice"));
        s.status = Some(
            serde_json::from_value(json!({
                "phase": "Ready",
                "conditions": [{"type": "Ready", "status": "True", "reason": "KernelIdle", "message": "",
                                "lastTransitionTime": "2026-01-01T00:00:00Z"}]
            }))
            .unwrap(),
        );
        assert!(is_ready(&s));
        assert_eq!(summary(&s).phase, Some(crd::SessionPhase::Ready));
        let v = serde_json::to_value(summary(&s)).unwrap();
        assert_eq!(v["phase"], "Ready");
        assert_eq!(v["queue"], serde_json::Value::Null);
    }
}
