//! What the Jupyter handlers do against the apiserver and the sidecars:
//! find a kernel (a NotebookSession by `metadata.uid`), start one and wait
//! for Ready, read a sidecar's status, call its kernel routes. Decisions
//! are in [`super::model`]; the handlers only put these together.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use kube::api::{ListParams, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::{json, Value};

use super::model::{self, KernelModel, DEFAULT_SPEC};
use crate::gateway::lifecycle::Settled;
use crate::gateway::review::{Access, User};
use crate::gateway::sessions::{self, NewSession};
use crate::gateway::upstream::Upstream;
use crate::gateway::{Gateway, GatewayError};
use crate::operator::crd::{NotebookPool, NotebookSession};
use crate::sidecar_api::Status;

/// How long a new kernel may take to be Ready when the client says nothing.
pub const DEFAULT_LAUNCH_TIMEOUT_S: u64 = 120;
/// The longest a client may ask to wait (`KERNEL_LAUNCH_TIMEOUT`).
pub const MAX_LAUNCH_TIMEOUT_S: u64 = 600;
/// How long one sidecar status read for a kernel model may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);
/// Prefix of the names of sessions started as Jupyter kernels.
pub const KERNEL_PREFIX: &str = "jupyter-";

/// The namespace of a request: `/namespaces/{ns}/api/...`, else the caller's default.
pub fn namespace(
    gw: &Gateway,
    user: &User,
    params: &HashMap<String, String>,
) -> Result<String, GatewayError> {
    let ns = sessions::namespace_for(
        params.get("ns").map(String::as_str),
        user,
        &gw.cfg.default_namespace,
    );
    if !sessions::is_dns_label(&ns) {
        return Err(GatewayError::BadRequest(format!(
            "{ns:?} is not a namespace name"
        )));
    }
    Ok(ns)
}

pub async fn allow(
    gw: &Gateway,
    user: &User,
    verb: &'static str,
    ns: &str,
    name: Option<&str>,
) -> Result<(), GatewayError> {
    gw.reviewer
        .authorize(user, Access::sessions(verb, ns, name))
        .await
}

/// The NotebookSessions of `ns` that are kernels (every one not being deleted).
pub async fn kernels(gw: &Gateway, ns: &str) -> Result<Vec<NotebookSession>, GatewayError> {
    let list = gw
        .sessions_api(ns)
        .list(&ListParams::default())
        .await
        .map_err(GatewayError::kube("list NotebookSessions"))?;
    Ok(list
        .items
        .into_iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .collect())
}

/// The kernel `id` of `ns`, or NotFound in jupyter_server's words. The
/// caller is authorized for it afterwards, by name.
pub async fn find_kernel(gw: &Gateway, ns: &str, id: &str) -> Result<NotebookSession, GatewayError> {
    kernels(gw, ns)
        .await?
        .into_iter()
        .find(|s| s.uid().as_deref() == Some(id))
        .ok_or_else(|| GatewayError::NotFound(format!("Kernel does not exist: {id}")))
}

/// The kernel `id`, once `user` may `verb` it.
pub async fn authorized_kernel(
    gw: &Gateway,
    user: &User,
    ns: &str,
    id: &str,
    verb: &'static str,
) -> Result<NotebookSession, GatewayError> {
    let s = find_kernel(gw, ns, id).await?;
    allow(gw, user, verb, ns, Some(&s.name_any())).await?;
    Ok(s)
}

/// The status of the sidecar of `s`, when it answers within a short while.
pub async fn sidecar_status(gw: &Gateway, s: &NotebookSession) -> Option<Status> {
    let ns = s.namespace().unwrap_or_default();
    let name = s.name_any();
    let read = async {
        let up = gw.upstreams.resolve(&ns, &name).await?;
        let v = call(gw, &up, &ns, &name, Method::GET, "v1/status").await?;
        serde_json::from_value::<Status>(v).map_err(|e| GatewayError::Upstream(format!("status: {e}")))
    };
    match tokio::time::timeout(STATUS_TIMEOUT, read).await {
        Ok(Ok(st)) => Some(st),
        Ok(Err(e)) => {
            tracing::debug!(session = %format!("{ns}/{name}"), error = %e, "no sidecar status for the kernel model");
            None
        }
        Err(_) => None,
    }
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The kernel model of `s`, from its sidecar when it answers.
pub async fn model_of(gw: &Gateway, s: &NotebookSession) -> KernelModel {
    let status = sidecar_status(gw, s).await;
    model::kernel_model(s, status.as_ref(), &now())
}

/// The kernel models of many sessions, their sidecars asked side by side.
pub async fn models_of(gw: &Gateway, list: &[NotebookSession]) -> Vec<KernelModel> {
    futures::future::join_all(list.iter().map(|s| model_of(gw, s))).await
}

/// `method path` on the sidecar `up` of `ns/name` with the session's token:
/// its JSON answer (null when empty), or Upstream/NotReady with its words.
pub async fn call(
    gw: &Gateway,
    up: &Upstream,
    ns: &str,
    name: &str,
    method: Method,
    path: &str,
) -> Result<Value, GatewayError> {
    let req = axum::http::Request::builder()
        .method(method)
        .uri(format!("http://{}/{path}", up.addr))
        .header(
            header::HOST,
            HeaderValue::from_str(&up.host).map_err(|e| GatewayError::Upstream(e.to_string()))?,
        )
        .header(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {}", up.token))
                .map_err(|_| GatewayError::Upstream("the session token is not a header value".into()))?,
        )
        .body(Body::empty())
        .map_err(|e| GatewayError::Upstream(format!("building the request: {e}")))?;
    let resp = match gw.http.request(req).await {
        Ok(r) => r,
        Err(e) => {
            gw.upstreams.forget(ns, name);
            return Err(GatewayError::Upstream(format!("{}: {e}", up.addr)));
        }
    };
    let status = resp.status();
    if status == StatusCode::UNAUTHORIZED {
        gw.upstreams.forget(ns, name);
    }
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| GatewayError::Upstream(format!("reading the answer: {e}")))?
        .to_bytes();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&bytes)
            .chars()
            .take(500)
            .collect::<String>();
        let msg = format!("{path} answered {status}: {text}");
        return Err(if status == StatusCode::SERVICE_UNAVAILABLE {
            GatewayError::NotReady(msg)
        } else {
            GatewayError::Upstream(msg)
        });
    }
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| GatewayError::Upstream(format!("{path}: not JSON: {e}")))
}

/// `POST path` on the sidecar of kernel `s`, for a user who may `get` it.
pub async fn kernel_action(
    gw: &Gateway,
    user: &User,
    s: &NotebookSession,
    path: &str,
) -> Result<Value, GatewayError> {
    let ns = s.namespace().unwrap_or_default();
    let name = s.name_any();
    let up = gw.session_upstream(user, &ns, &name).await?;
    call(gw, &up, &ns, &name, Method::POST, path).await
}

/// The pool a kernel spec name means: None for the default spec; NotFound
/// when no NotebookPool of `ns` has that name.
pub async fn pool_of_spec(
    gw: &Gateway,
    ns: &str,
    spec: Option<&str>,
) -> Result<Option<String>, GatewayError> {
    let spec = match spec.map(str::trim) {
        None | Some("") | Some(DEFAULT_SPEC) => return Ok(None),
        Some(s) => s,
    };
    let pools = all_pools(gw, ns).await?;
    if pools.iter().any(|p| p.name_any() == spec) {
        Ok(Some(spec.to_string()))
    } else {
        Err(GatewayError::NotFound(format!("No such kernel spec: {spec}")))
    }
}

/// Every NotebookPool of `ns` (the gateway's own read).
pub async fn all_pools(gw: &Gateway, ns: &str) -> Result<Vec<NotebookPool>, GatewayError> {
    let api: kube::Api<NotebookPool> = kube::Api::namespaced(gw.kube.clone(), ns);
    Ok(api
        .list(&ListParams::default())
        .await
        .map_err(GatewayError::kube("list NotebookPools"))?
        .items)
}

/// The pools `user` may see as kernel specs: all of `ns` when they may
/// `list notebookpools`, none otherwise.
pub async fn visible_pools(gw: &Gateway, user: &User, ns: &str) -> Result<Vec<NotebookPool>, GatewayError> {
    match gw.reviewer.authorize(user, Access::pools("list", ns)).await {
        Ok(()) => all_pools(gw, ns).await,
        Err(GatewayError::Forbidden { .. }) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Starts a kernel of `spec` in `ns` for `user`: a NotebookSession made as
/// MCP's `create_session` makes one (requester, cap, `poolRef` for a pool),
/// waited for until Ready within `wait`. One that fails or is not Ready in
/// time is deleted again (the client has no id to clean it up with) and the
/// answer says why.
pub async fn start_kernel(
    gw: &Gateway,
    user: &User,
    ns: &str,
    spec: Option<&str>,
    wait: Duration,
    annotations: BTreeMap<String, String>,
) -> Result<NotebookSession, GatewayError> {
    let pool = pool_of_spec(gw, ns, spec).await?;
    let spec_name = pool.clone().unwrap_or_else(|| DEFAULT_SPEC.to_string());
    let mut annotations = annotations;
    annotations.insert(model::KERNEL_NAME.to_string(), spec_name.clone());
    let new = NewSession {
        pool,
        generate_prefix: Some(KERNEL_PREFIX),
        annotations,
        ..NewSession::default()
    };
    let created = gw.create_session(user, ns, &new).await?;
    let name = created.name_any();
    let failed = match gw.wait_settled(ns, &name, wait).await {
        Ok(Settled::Ready(s)) => return Ok(*s),
        Ok(Settled::Deleted) => {
            return Err(GatewayError::SessionFailed(format!(
                "kernel {spec_name}: session {ns}/{name} was deleted while starting"
            )))
        }
        Ok(Settled::Failed(s)) => GatewayError::SessionFailed(format!(
            "kernel {spec_name}: session {ns}/{name} failed: {}; it was deleted",
            ready_message(&s)
        )),
        Ok(Settled::TimedOut(s)) => GatewayError::Timeout(format!(
            "kernel {spec_name}: session {ns}/{name} was not Ready within {}s ({}); it was deleted",
            wait.as_secs(),
            s.as_deref()
                .map(ready_message)
                .unwrap_or_else(|| "no status".into())
        )),
        Err(e) => e,
    };
    if let Err(e) = gw.delete_session(user, ns, &name, Duration::ZERO).await {
        tracing::warn!(session = %format!("{ns}/{name}"), error = %e, "could not delete a kernel that did not start");
    }
    Err(failed)
}

/// The phase and Ready condition message of a session, for error texts.
fn ready_message(s: &NotebookSession) -> String {
    let status = s.status.as_ref();
    let phase = status
        .and_then(|st| st.phase)
        .map(|p| format!("{p:?}"))
        .unwrap_or_else(|| "no phase".into());
    let msg = status
        .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.message.clone())
        .filter(|m| !m.is_empty());
    match msg {
        Some(m) => format!("phase {phase}: {m}"),
        None => format!("phase {phase}"),
    }
}

/// Sets (Some) or removes (None) annotation `key` of session `ns/name`.
pub async fn annotate(
    gw: &Gateway,
    ns: &str,
    name: &str,
    key: &str,
    value: Option<&str>,
) -> Result<NotebookSession, GatewayError> {
    let patch = json!({"metadata": {"annotations": {key: value}}});
    gw.sessions_api(ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(GatewayError::kube("annotate the NotebookSession"))
}
