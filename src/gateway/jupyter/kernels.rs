//! `/api/kernels`: a kernel is a NotebookSession, its id the session's
//! `metadata.uid`. Listing needs `list` on notebooksessions, reading a
//! kernel, interrupting, restarting and its channels `get`, starting one
//! `create`, stopping one `delete`, each checked by SubjectAccessReview.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use kube::ResourceExt;
use tracing::Instrument;

use super::backend::{self, DEFAULT_LAUNCH_TIMEOUT_S, MAX_LAUNCH_TIMEOUT_S};
use super::error::Result;
use super::model;
use super::Params;
use crate::gateway::review::User;
use crate::gateway::{forward, Gateway, GatewayError};

/// `GET /api/kernels`.
pub async fn list(
    State(gw): State<Arc<Gateway>>,
    Extension(user): Extension<User>,
    params: Params,
) -> Result<Response> {
    let ns = backend::namespace(&gw, &user, &params.0)?;
    backend::allow(&gw, &user, "list", &ns, None).await?;
    let kernels = backend::kernels(&gw, &ns).await?;
    Ok(Json(backend::models_of(&gw, &kernels).await).into_response())
}

/// `POST /api/kernels` `{"name": spec, "env": {...}}`: a new NotebookSession,
/// answered (201) once it is Ready, so the client's WebSocket finds a kernel.
pub async fn start(
    State(gw): State<Arc<Gateway>>,
    Extension(user): Extension<User>,
    params: Params,
    body: Bytes,
) -> Result<Response> {
    let ns = backend::namespace(&gw, &user, &params.0)?;
    let asked = model::parse_kernel_request(&body).map_err(GatewayError::BadRequest)?;
    let wait = model::launch_timeout(&asked.env, DEFAULT_LAUNCH_TIMEOUT_S, MAX_LAUNCH_TIMEOUT_S);
    let span = tracing::info_span!("jupyter_start_kernel", namespace = %ns, user = %user.username,
                                   spec = %asked.name.as_deref().unwrap_or(model::DEFAULT_SPEC));
    async move {
        // The environment is the client's (KERNEL_* variables); the kernel's
        // own comes from the session or pool template.
        tracing::debug!(env = ?asked.env.keys().collect::<Vec<_>>(), wait_s = wait, "starting a kernel");
        let s = backend::start_kernel(
            &gw,
            &user,
            &ns,
            asked.name.as_deref(),
            Duration::from_secs(wait),
            Default::default(),
        )
        .await?;
        let m = backend::model_of(&gw, &s).await;
        let location = match params.0.get("ns") {
            Some(ns) => format!("/namespaces/{ns}/api/kernels/{}", m.id),
            None => format!("/api/kernels/{}", m.id),
        };
        tracing::info!(session = %s.name_any(), kernel = %m.id, "kernel started");
        Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(m)).into_response())
    }
    .instrument(span)
    .await
}

/// `GET /api/kernels/{id}`.
pub async fn get(
    State(gw): State<Arc<Gateway>>,
    Extension(user): Extension<User>,
    params: Params,
) -> Result<Response> {
    let ns = backend::namespace(&gw, &user, &params.0)?;
    let s = backend::authorized_kernel(&gw, &user, &ns, params.get("id"), "get").await?;
    Ok(Json(backend::model_of(&gw, &s).await).into_response())
}

/// `DELETE /api/kernels/{id}`: the session goes (204 at once; it leaves the
/// kernel list as soon as its deletion starts).
pub async fn delete(
    State(gw): State<Arc<Gateway>>,
    Extension(user): Extension<User>,
    params: Params,
) -> Result<Response> {
    let ns = backend::namespace(&gw, &user, &params.0)?;
    let s = backend::authorized_kernel(&gw, &user, &ns, params.get("id"), "delete").await?;
    gw.delete_session(&user, &ns, &s.name_any(), Duration::ZERO)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/kernels/{id}/interrupt`: the sidecar interrupts the kernel (204).
pub async fn interrupt(
    State(gw): State<Arc<Gateway>>,
    Extension(user): Extension<User>,
    params: Params,
) -> Result<Response> {
    let ns = backend::namespace(&gw, &user, &params.0)?;
    let s = backend::authorized_kernel(&gw, &user, &ns, params.get("id"), "get").await?;
    backend::kernel_action(&gw, &user, &s, "v1/kernel/interrupt").await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/kernels/{id}/restart`: the sidecar restarts the kernel; the
/// answer is the kernel model after it.
pub async fn restart(
    State(gw): State<Arc<Gateway>>,
    Extension(user): Extension<User>,
    params: Params,
) -> Result<Response> {
    let ns = backend::namespace(&gw, &user, &params.0)?;
    let s = backend::authorized_kernel(&gw, &user, &ns, params.get("id"), "get").await?;
    backend::kernel_action(&gw, &user, &s, "v1/kernel/restart").await?;
    Ok(Json(backend::model_of(&gw, &s).await).into_response())
}

/// `GET /api/kernels/{id}/channels`: the WebSocket upgrade goes to the
/// sidecar's `/v1/kernel/channels` (query and `Sec-WebSocket-Protocol`
/// kept, the caller's token not), joined end to end.
pub async fn channels(
    State(gw): State<Arc<Gateway>>,
    Extension(user): Extension<User>,
    params: Params,
    req: Request,
) -> Result<Response> {
    let ns = backend::namespace(&gw, &user, &params.0)?;
    let s = backend::find_kernel(&gw, &ns, params.get("id")).await?;
    let name = s.name_any();
    let span =
        tracing::info_span!("jupyter_channels", session = %format!("{ns}/{name}"), user = %user.username);
    async move {
        let up = gw.session_upstream(&user, &ns, &name).await?;
        Ok(forward::relay(&gw, &up, &ns, &name, "v1/kernel/channels", req).await?)
    }
    .instrument(span)
    .await
}
