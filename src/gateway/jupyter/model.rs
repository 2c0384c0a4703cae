//! The Jupyter Server REST models, built from NotebookSessions, NotebookPools
//! and sidecar status answers: pure, no network. Field names and formats are
//! the ones jupyter_server's `GatewayClient` and `@jupyterlab/services`
//! validate (`id`, `name`, `last_activity` as `%Y-%m-%dT%H:%M:%S.%fZ`,
//! `execution_state`, `connections`).

use std::collections::BTreeMap;

use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::operator::crd::{NotebookPool, NotebookSession, SessionPhase};
use crate::sidecar_api::{KernelState, Status};

/// The jupyter_server release whose REST API this one follows (`GET /api`).
pub const JUPYTER_SERVER_VERSION: &str = "2.21.1";
/// The kernel spec of the operator's default image (no pool).
pub const DEFAULT_SPEC: &str = "python3";
/// Annotation holding the kernel spec name a kernel was started with.
pub const KERNEL_NAME: &str = "notebook.dev/jupyter-kernel-name";
/// Annotation holding the Jupyter session ([`JupyterSession`], JSON) of a kernel.
pub const JUPYTER_SESSION: &str = "notebook.dev/jupyter-session";

/// `%Y-%m-%dT%H:%M:%S.%fZ` (microseconds, UTC) of an RFC 3339 time; None
/// when it is not one.
pub fn jupyter_time(rfc3339: &str) -> Option<String> {
    let t =
        time::OffsetDateTime::parse(rfc3339.trim(), &time::format_description::well_known::Rfc3339).ok()?;
    Some(format_utc(t))
}

fn format_utc(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// The kernel spec a session runs: the one it was started with, else its
/// pool, else the default.
pub fn spec_name(s: &NotebookSession) -> String {
    s.annotations()
        .get(KERNEL_NAME)
        .cloned()
        .filter(|n| !n.is_empty())
        .or_else(|| s.spec.pool_ref.as_ref().map(|p| p.name.clone()))
        .unwrap_or_else(|| DEFAULT_SPEC.to_string())
}

/// Jupyter's execution state of a sidecar's kernel state.
pub fn execution_state(state: KernelState) -> &'static str {
    match state {
        KernelState::Starting => "starting",
        KernelState::Idle => "idle",
        KernelState::Busy => "busy",
        KernelState::Restarting => "restarting",
        KernelState::Dead => "dead",
        KernelState::Unknown => "unknown",
    }
}

/// The execution state as the session's status tells it (when the sidecar
/// is not asked, or does not answer).
pub fn execution_state_of_status(s: &NotebookSession) -> &'static str {
    let status = s.status.as_ref();
    match status.and_then(|st| st.phase) {
        Some(SessionPhase::Ready) => {
            let running = status
                .and_then(|st| st.queue.as_ref())
                .is_some_and(|q| q.running > 0);
            if running {
                "busy"
            } else {
                "idle"
            }
        }
        None | Some(SessionPhase::Pending) | Some(SessionPhase::Starting) => "starting",
        Some(SessionPhase::Suspended) | Some(SessionPhase::Failed) | Some(SessionPhase::Terminating) => {
            "dead"
        }
    }
}

/// A Jupyter kernel model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelModel {
    /// The session's `metadata.uid`.
    pub id: String,
    /// The kernel spec name.
    pub name: String,
    pub last_activity: String,
    pub execution_state: String,
    pub connections: i64,
}

/// The kernel model of `s`, with its sidecar's status when there is one;
/// `now` (RFC 3339) stands in for a session that never had activity nor a
/// creation time.
pub fn kernel_model(s: &NotebookSession, sidecar: Option<&Status>, now: &str) -> KernelModel {
    let activity = sidecar
        .and_then(|st| st.last_activity.as_deref())
        .and_then(jupyter_time)
        .or_else(|| {
            s.status
                .as_ref()
                .and_then(|st| st.last_activity_time.as_ref())
                .and_then(|t| jupyter_time(&t.0.to_string()))
        })
        .or_else(|| {
            s.metadata
                .creation_timestamp
                .as_ref()
                .and_then(|t| jupyter_time(&t.0.to_string()))
        })
        .or_else(|| jupyter_time(now))
        .unwrap_or_else(|| "1970-01-01T00:00:00.000000Z".to_string());
    KernelModel {
        id: s.uid().unwrap_or_default(),
        name: spec_name(s),
        last_activity: activity,
        execution_state: match sidecar {
            Some(st) => execution_state(st.kernel.state),
            None => execution_state_of_status(s),
        }
        .to_string(),
        connections: sidecar.map_or(0, |st| st.connections),
    }
}

/// One kernel spec (`GET /api/kernelspecs/{name}`).
pub fn kernelspec(name: &str, display_name: &str, metadata: Value) -> Value {
    json!({
        "name": name,
        "spec": {
            "argv": [],
            "display_name": display_name,
            "language": "python",
            "interrupt_mode": "signal",
            "env": {},
            "metadata": metadata,
        },
        "resources": {},
    })
}

/// The spec of the operator's default kernel image.
pub fn default_spec() -> Value {
    kernelspec(
        DEFAULT_SPEC,
        "Python 3 (ipykernel)",
        json!({"notebook.dev/pool": null}),
    )
}

/// The spec of a pool's warm kernels.
pub fn pool_spec(p: &NotebookPool) -> Value {
    let name = p.name_any();
    let image = p.spec.template.kernel.image.clone();
    kernelspec(
        &name,
        &format!("Python 3 (pool {name})"),
        json!({"notebook.dev/pool": name, "notebook.dev/image": image}),
    )
}

/// `GET /api/kernelspecs`: the default spec and one per pool (a pool named
/// like the default is left out: the name means the default image). Pools
/// being deleted are left out too.
pub fn kernelspecs(pools: &[NotebookPool]) -> Value {
    let mut specs = Map::new();
    specs.insert(DEFAULT_SPEC.to_string(), default_spec());
    for p in pools {
        let name = p.name_any();
        if name != DEFAULT_SPEC && p.metadata.deletion_timestamp.is_none() {
            specs.insert(name, pool_spec(p));
        }
    }
    json!({"default": DEFAULT_SPEC, "kernelspecs": specs})
}

/// A Jupyter session as kept on its kernel's NotebookSession ([`JUPYTER_SESSION`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JupyterSession {
    pub id: String,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: String,
}

/// The Jupyter session of `s`, when it has a readable one.
pub fn jupyter_session(s: &NotebookSession) -> Option<JupyterSession> {
    serde_json::from_str(s.annotations().get(JUPYTER_SESSION)?).ok()
}

/// The annotation value of a Jupyter session.
pub fn session_annotation(js: &JupyterSession) -> String {
    serde_json::to_string(js).unwrap_or_default()
}

/// The Jupyter session model `{id, path, name, type, kernel}`.
pub fn session_model(js: &JupyterSession, kernel: &KernelModel) -> Value {
    json!({
        "id": js.id,
        "path": js.path,
        "name": js.name,
        "type": js.kind,
        "kernel": kernel,
        "notebook": {"path": js.path, "name": js.name},
    })
}

/// What `POST /api/kernels` asks for.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KernelRequest {
    /// The kernel spec; None: the default.
    pub name: Option<String>,
    pub env: BTreeMap<String, Value>,
}

/// Which kernel `POST /api/sessions` (or a PATCH) wants.
#[derive(Debug, Clone, PartialEq)]
pub enum KernelChoice {
    /// A new kernel of this spec (None: the default).
    New(Option<String>),
    /// An existing kernel by id.
    Existing(String),
}

/// What `POST /api/sessions` and `PATCH /api/sessions/{id}` carry.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SessionRequest {
    pub path: Option<String>,
    pub name: Option<String>,
    pub kind: Option<String>,
    pub kernel: Option<KernelChoice>,
}

/// A JSON object of a request body (empty: `{}`), or the reason it is not one.
fn object(body: &[u8]) -> Result<Map<String, Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("body: must be a JSON object".into()),
        Err(e) => Err(format!("body: not JSON: {e}")),
    }
}

/// A string field; null and absent are None.
fn string(m: &Map<String, Value>, field: &str) -> Result<Option<String>, String> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{field}: must be a string")),
    }
}

/// `{"name"?: string, "env"?: object}`.
pub fn parse_kernel_request(body: &[u8]) -> Result<KernelRequest, String> {
    let m = object(body)?;
    let name = string(&m, "name")?.filter(|n| !n.trim().is_empty());
    let env = match m.get("env") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(e)) => e.clone().into_iter().collect(),
        Some(_) => return Err("env: must be an object".into()),
    };
    Ok(KernelRequest { name, env })
}

/// `{path?, name?, type?, kernel?: {id} | {name}}` (the id wins, as in jupyter_server).
pub fn parse_session_request(body: &[u8]) -> Result<SessionRequest, String> {
    let m = object(body)?;
    let kernel = match m.get("kernel") {
        None | Some(Value::Null) => None,
        Some(Value::Object(k)) => match string(k, "id").map_err(|e| format!("kernel.{e}"))? {
            Some(id) if !id.trim().is_empty() => Some(KernelChoice::Existing(id)),
            _ => Some(KernelChoice::New(
                string(k, "name")
                    .map_err(|e| format!("kernel.{e}"))?
                    .filter(|n| !n.trim().is_empty()),
            )),
        },
        Some(_) => return Err("kernel: must be an object with id or name".into()),
    };
    Ok(SessionRequest {
        path: string(&m, "path")?,
        name: string(&m, "name")?,
        kind: string(&m, "type")?,
        kernel,
    })
}

/// How long `POST /api/kernels` waits for Ready: the client's
/// `KERNEL_LAUNCH_TIMEOUT` (jupyter_server sends it in `env` and waits that
/// long plus a pad), bounded to `[1, max]` seconds, else `default`.
pub fn launch_timeout(env: &BTreeMap<String, Value>, default: u64, max: u64) -> u64 {
    let asked = match env.get("KERNEL_LAUNCH_TIMEOUT") {
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(Value::Number(n)) => n.as_f64(),
        _ => None,
    };
    match asked {
        Some(s) if s.is_finite() && s >= 1.0 => (s as u64).min(max),
        _ => default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(v: Value) -> NotebookSession {
        let mut base = json!({
            "apiVersion": "notebook.dev/v1alpha1", "kind": "NotebookSession",
            "metadata": {"name": "jupyter-abc", "namespace": "ns", "uid": "0b9e4c5e-8f3a-4a0e-9a51-1c7d2e6f9a10",
                         "creationTimestamp": "2026-03-01T10:00:00Z"},
            "spec": {}
        });
        if let (Some(b), Value::Object(extra)) = (base.as_object_mut(), v) {
            for (k, val) in extra {
                b.insert(k, val);
            }
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn times_have_microseconds_and_a_z() {
        assert_eq!(
            jupyter_time("2026-03-01T10:00:00Z").as_deref(),
            Some("2026-03-01T10:00:00.000000Z")
        );
        assert_eq!(
            jupyter_time("2026-03-01T10:00:00.123456789+02:00").as_deref(),
            Some("2026-03-01T08:00:00.123456Z")
        );
        assert_eq!(jupyter_time("yesterday"), None);
    }

    #[test]
    fn the_kernel_model_comes_from_the_sidecar_when_it_answers() {
        let s = session(json!({"status": {"phase": "Ready", "lastActivityTime": "2026-03-01T11:00:00Z"}}));
        let from_status = kernel_model(&s, None, "2026-03-02T00:00:00Z");
        assert_eq!(
            from_status,
            KernelModel {
                id: "0b9e4c5e-8f3a-4a0e-9a51-1c7d2e6f9a10".into(),
                name: "python3".into(),
                last_activity: "2026-03-01T11:00:00.000000Z".into(),
                execution_state: "idle".into(),
                connections: 0,
            }
        );
        let mut st = Status::default();
        st.kernel.state = KernelState::Busy;
        st.connections = 2;
        st.last_activity = Some("2026-03-01T12:00:00.5Z".into());
        let live = kernel_model(&s, Some(&st), "2026-03-02T00:00:00Z");
        assert_eq!(live.execution_state, "busy");
        assert_eq!(live.connections, 2);
        assert_eq!(live.last_activity, "2026-03-01T12:00:00.500000Z");
        let v = serde_json::to_value(&live).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 5, "exactly the fields Jupyter clients read: {keys:?}");
        // No activity yet: the creation time.
        let new = session(json!({}));
        assert_eq!(
            kernel_model(&new, None, "2026-03-02T00:00:00Z").last_activity,
            "2026-03-01T10:00:00.000000Z"
        );
        assert_eq!(kernel_model(&new, None, "x").execution_state, "starting");
    }

    #[test]
    fn execution_states_are_jupyters() {
        let states = [
            (KernelState::Starting, "starting"),
            (KernelState::Idle, "idle"),
            (KernelState::Busy, "busy"),
            (KernelState::Restarting, "restarting"),
            (KernelState::Dead, "dead"),
            (KernelState::Unknown, "unknown"),
        ];
        for (k, j) in states {
            assert_eq!(execution_state(k), j);
        }
        let busy = session(
            json!({"status": {"phase": "Ready", "queue": {"queued": 0, "running": 1, "completed": 0, "failed": 0}}}),
        );
        assert_eq!(execution_state_of_status(&busy), "busy");
        for (phase, want) in [
            ("Pending", "starting"),
            ("Starting", "starting"),
            ("Suspended", "dead"),
            ("Failed", "dead"),
            ("Terminating", "dead"),
        ] {
            assert_eq!(
                execution_state_of_status(&session(json!({"status": {"phase": phase}}))),
                want,
                "{phase}"
            );
        }
    }

    #[test]
    fn the_spec_name_is_the_one_asked_for_else_the_pool_else_the_default() {
        assert_eq!(spec_name(&session(json!({}))), "python3");
        let pooled = session(json!({"spec": {"poolRef": {"name": "warm"}}}));
        assert_eq!(spec_name(&pooled), "warm");
        let mut named = pooled.clone();
        named
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(KERNEL_NAME.into(), "other".into());
        assert_eq!(spec_name(&named), "other");
    }

    #[test]
    fn kernelspecs_are_the_default_and_one_per_pool() {
        let pool = |name: &str| -> NotebookPool {
            serde_json::from_value(json!({
                "apiVersion": "notebook.dev/v1alpha1", "kind": "NotebookPool",
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"replicas": 1, "template": {"kernel": {"image": "img:1"}}}
            }))
            .unwrap()
        };
        let v = kernelspecs(&[pool("warm"), pool("python3")]);
        assert_eq!(v["default"], "python3");
        let specs = v["kernelspecs"].as_object().unwrap();
        assert_eq!(specs.keys().collect::<Vec<_>>(), ["python3", "warm"]);
        let warm = &specs["warm"];
        assert_eq!(warm["name"], "warm");
        assert_eq!(warm["spec"]["language"], "python");
        assert_eq!(warm["spec"]["interrupt_mode"], "signal");
        assert_eq!(warm["spec"]["argv"], json!([]));
        assert_eq!(warm["spec"]["env"], json!({}));
        assert_eq!(warm["spec"]["metadata"]["notebook.dev/image"], "img:1");
        assert_eq!(warm["resources"], json!({}));
        assert!(warm["spec"]["display_name"].as_str().unwrap().contains("warm"));
        assert_eq!(specs["python3"], default_spec());
        assert_eq!(kernelspecs(&[])["kernelspecs"].as_object().unwrap().len(), 1);
    }

    #[test]
    fn jupyter_sessions_round_trip_through_the_annotation() {
        let js = JupyterSession {
            id: "5d1b7e8a-1111-4222-8333-944445555666".into(),
            path: "work/a.ipynb".into(),
            name: "a.ipynb".into(),
            kind: "notebook".into(),
        };
        let mut s = session(json!({}));
        assert_eq!(jupyter_session(&s), None);
        s.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(JUPYTER_SESSION.into(), session_annotation(&js));
        assert_eq!(jupyter_session(&s), Some(js.clone()));
        let k = kernel_model(&s, None, "2026-03-02T00:00:00Z");
        let m = session_model(&js, &k);
        assert_eq!(m["type"], "notebook");
        assert_eq!(m["kernel"]["id"], k.id);
        assert_eq!(m["path"], "work/a.ipynb");
        s.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(JUPYTER_SESSION.into(), "not json".into());
        assert_eq!(jupyter_session(&s), None);
    }

    #[test]
    fn bad_bodies_name_the_field() {
        assert_eq!(parse_kernel_request(b"").unwrap(), KernelRequest::default());
        let r = parse_kernel_request(br#"{"name": "warm", "env": {"KERNEL_LAUNCH_TIMEOUT": "40"}}"#).unwrap();
        assert_eq!(r.name.as_deref(), Some("warm"));
        assert_eq!(launch_timeout(&r.env, 120, 600), 40);
        assert!(parse_kernel_request(b"{").unwrap_err().starts_with("body:"));
        assert!(parse_kernel_request(b"[]").unwrap_err().starts_with("body:"));
        assert!(parse_kernel_request(br#"{"name": 3}"#)
            .unwrap_err()
            .starts_with("name:"));
        assert!(parse_kernel_request(br#"{"env": "x"}"#)
            .unwrap_err()
            .starts_with("env:"));

        let s = parse_session_request(
            br#"{"path": "a.ipynb", "type": "notebook", "name": "", "kernel": {"name": "python3"}}"#,
        )
        .unwrap();
        assert_eq!(s.kernel, Some(KernelChoice::New(Some("python3".into()))));
        assert_eq!(s.path.as_deref(), Some("a.ipynb"));
        let s = parse_session_request(br#"{"kernel": {"id": "k1", "name": "python3"}}"#).unwrap();
        assert_eq!(s.kernel, Some(KernelChoice::Existing("k1".into())));
        assert!(parse_session_request(br#"{"kernel": "python3"}"#)
            .unwrap_err()
            .starts_with("kernel:"));
        assert!(parse_session_request(br#"{"kernel": {"id": 1}}"#)
            .unwrap_err()
            .starts_with("kernel.id:"));
        assert!(parse_session_request(br#"{"path": 1}"#)
            .unwrap_err()
            .starts_with("path:"));
    }

    #[test]
    fn the_launch_timeout_is_the_clients_within_bounds() {
        let env = |v: Value| BTreeMap::from([("KERNEL_LAUNCH_TIMEOUT".to_string(), v)]);
        assert_eq!(launch_timeout(&BTreeMap::new(), 120, 600), 120);
        assert_eq!(launch_timeout(&env(json!("90")), 120, 600), 90);
        assert_eq!(launch_timeout(&env(json!(9000)), 120, 600), 600);
        assert_eq!(launch_timeout(&env(json!("0")), 120, 600), 120);
        assert_eq!(launch_timeout(&env(json!("soon")), 120, 600), 120);
    }
}
