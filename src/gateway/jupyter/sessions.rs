//! `/api/sessions`: a Jupyter session (a notebook path bound to a kernel)
//! is kept on its kernel's NotebookSession as the annotation
//! [`model::JUPYTER_SESSION`], with a UUID of its own; deleting the
//! session deletes its kernel, as jupyter_server does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use kube::ResourceExt;
use serde_json::Value;

use super::backend::{self, DEFAULT_LAUNCH_TIMEOUT_S};
use super::error::Result;
use super::model::{self, JupyterSession, KernelChoice};
use super::Params;
use crate::gateway::review::User;
use crate::gateway::{Gateway, GatewayError};
use crate::operator::crd::NotebookSession;

/// The kernels of `ns` that carry a Jupyter session, with it.
async fn bound(
    gw: &Gateway,
    ns: &str,
) -> std::result::Result<Vec<(JupyterSession, NotebookSession)>, GatewayError> {
    Ok(backend::kernels(gw, ns)
        .await?
        .into_iter()
        .filter_map(|s| model::jupyter_session(&s).map(|js| (js, s)))
        .collect())
}

/// The Jupyter session `id` of `ns` and its kernel, once `user` may `verb` the kernel.
async fn find(
    gw: &Gateway,
    user: &User,
    ns: &str,
    id: &str,
    verb: &'static str,
) -> std::result::Result<(JupyterSession, NotebookSession), GatewayError> {
    let (js, s) = bound(gw, ns)
        .await?
        .into_iter()
        .find(|(js, _)| js.id == id)
        .ok_or_else(|| GatewayError::NotFound(format!("Session not found: {id}")))?;
    backend::allow(gw, user, verb, ns, Some(&s.name_any())).await?;
    Ok((js, s))
}

async fn answer(gw: &Gateway, status: StatusCode, js: &JupyterSession, s: &NotebookSession) -> Response {
    let kernel = backend::model_of(gw, s).await;
    (status, Json(model::session_model(js, &kernel))).into_response()
}

/// Binds `js` to the existing kernel `id` (which `user` may patch).
async fn attach(
    gw: &Gateway,
    user: &User,
    ns: &str,
    id: &str,
    js: &JupyterSession,
) -> std::result::Result<NotebookSession, GatewayError> {
    let kernel = backend::authorized_kernel(gw, user, ns, id, "patch").await?;
    let value = model::session_annotation(js);
    backend::annotate(gw, ns, &kernel.name_any(), model::JUPYTER_SESSION, Some(&value)).await
}

/// A new kernel of `spec` bound to `js` from the start.
async fn start_for(
    gw: &Gateway,
    user: &User,
    ns: &str,
    spec: Option<&str>,
    js: &JupyterSession,
) -> std::result::Result<NotebookSession, GatewayError> {
    let annotations = BTreeMap::from([(model::JUPYTER_SESSION.to_string(), model::session_annotation(js))]);
    backend::start_kernel(
        gw,
        user,
        ns,
        spec,
        Duration::from_secs(DEFAULT_LAUNCH_TIMEOUT_S),
        annotations,
    )
    .await
}

/// The kernel `js` is bound to: the existing one `choice` names, or a new one.
async fn bind(
    gw: &Gateway,
    user: &User,
    ns: &str,
    choice: KernelChoice,
    js: &JupyterSession,
) -> std::result::Result<NotebookSession, GatewayError> {
    match choice {
        KernelChoice::Existing(id) => attach(gw, user, ns, &id, js).await,
        KernelChoice::New(spec) => start_for(gw, user, ns, spec.as_deref(), js).await,
    }
}

/// `GET /api/sessions`.
pub async fn list(
    State(gw): State<Arc<Gateway>>,
    Extension(user): Extension<User>,
    params: Params,
) -> Result<Response> {
    let ns = backend::namespace(&gw, &user, &params.0)?;
    backend::allow(&gw, &user, "list", &ns, None).await?;
    let bound = bound(&gw, &ns).await?;
    let kernels: Vec<NotebookSession> = bound.iter().map(|(_, s)| s.clone()).collect();
    let models = backend::models_of(&gw, &kernels).await;
    let out: Vec<Value> = bound
        .iter()
        .zip(models.iter())
        .map(|((js, _), k)| model::session_model(js, k))
        .collect();
    Ok(Json(out).into_response())
}

/// `POST /api/sessions` `{path, name, type, kernel: {name} | {id}}`: the
/// session of that path if there is one, else a new session on a new
/// kernel (or on the existing kernel `id`). 201 either way, as jupyter_server.
pub async fn create(
    State(gw): State<Arc<Gateway>>,
    Extension(user): Extension<User>,
    params: Params,
    body: Bytes,
) -> Result<Response> {
    let ns = backend::namespace(&gw, &user, &params.0)?;
    let asked = model::parse_session_request(&body).map_err(GatewayError::BadRequest)?;
    let path = asked
        .path
        .clone()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| GatewayError::BadRequest("path: required".into()))?;
    if let Some((js, s)) = bound(&gw, &ns).await?.into_iter().find(|(js, _)| js.path == path) {
        backend::allow(&gw, &user, "get", &ns, Some(&s.name_any())).await?;
        return Ok(answer(&gw, StatusCode::CREATED, &js, &s).await);
    }
    let js = JupyterSession {
        id: uuid::Uuid::new_v4().to_string(),
        path,
        name: asked.name.unwrap_or_default(),
        kind: asked.kind.unwrap_or_else(|| "notebook".into()),
    };
    let s = bind(
        &gw,
        &user,
        &ns,
        asked.kernel.unwrap_or(KernelChoice::New(None)),
        &js,
    )
    .await?;
    tracing::info!(namespace = %ns, session = %s.name_any(), jupyter_session = %js.id, user = %user.username,
                   "jupyter session created");
    Ok(answer(&gw, StatusCode::CREATED, &js, &s).await)
}

/// `GET /api/sessions/{id}`.
pub async fn get(
    State(gw): State<Arc<Gateway>>,
    Extension(user): Extension<User>,
    params: Params,
) -> Result<Response> {
    let ns = backend::namespace(&gw, &user, &params.0)?;
    let (js, s) = find(&gw, &user, &ns, params.get("id"), "get").await?;
    Ok(answer(&gw, StatusCode::OK, &js, &s).await)
}

/// `PATCH /api/sessions/{id}`: new path, name or type; a new kernel (by
/// name) or another kernel (by id), after which the old kernel is deleted,
/// as jupyter_server shuts it down.
pub async fn patch(
    State(gw): State<Arc<Gateway>>,
    Extension(user): Extension<User>,
    params: Params,
    body: Bytes,
) -> Result<Response> {
    let ns = backend::namespace(&gw, &user, &params.0)?;
    let asked = model::parse_session_request(&body).map_err(GatewayError::BadRequest)?;
    let (mut js, old) = find(&gw, &user, &ns, params.get("id"), "patch").await?;
    if let Some(p) = asked.path.filter(|p| !p.is_empty()) {
        js.path = p;
    }
    if let Some(n) = asked.name {
        js.name = n;
    }
    if let Some(t) = asked.kind {
        js.kind = t;
    }
    let old_id = old.uid().unwrap_or_default();
    // Another kernel replaces the old one, which is then deleted; the same
    // kernel (or none asked) keeps it and takes the new fields.
    let replacement = asked
        .kernel
        .filter(|k| !matches!(k, KernelChoice::Existing(id) if *id == old_id));
    let s = match replacement {
        Some(choice) => {
            backend::allow(&gw, &user, "delete", &ns, Some(&old.name_any())).await?;
            let s = bind(&gw, &user, &ns, choice, &js).await?;
            gw.delete_session(&user, &ns, &old.name_any(), Duration::ZERO)
                .await?;
            s
        }
        None => {
            let value = model::session_annotation(&js);
            backend::annotate(&gw, &ns, &old.name_any(), model::JUPYTER_SESSION, Some(&value)).await?
        }
    };
    Ok(answer(&gw, StatusCode::OK, &js, &s).await)
}

/// `DELETE /api/sessions/{id}`: its kernel's NotebookSession goes (204).
pub async fn delete(
    State(gw): State<Arc<Gateway>>,
    Extension(user): Extension<User>,
    params: Params,
) -> Result<Response> {
    let ns = backend::namespace(&gw, &user, &params.0)?;
    let (_, s) = find(&gw, &user, &ns, params.get("id"), "delete").await?;
    gw.delete_session(&user, &ns, &s.name_any(), Duration::ZERO)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
