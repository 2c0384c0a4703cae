//! `GET /api`, `GET /api/kernelspecs`, `GET /api/kernelspecs/{name}`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

use super::backend;
use super::error::Result;
use super::model;
use super::Params;
use crate::gateway::review::User;
use crate::gateway::{Gateway, GatewayError};

/// `GET /api`: the version of jupyter_server this API follows.
pub async fn version() -> Response {
    Json(json!({"version": model::JUPYTER_SERVER_VERSION})).into_response()
}

/// `GET /api/kernelspecs`: the default spec, and one per pool the caller may list.
pub async fn list(
    State(gw): State<Arc<Gateway>>,
    Extension(user): Extension<User>,
    params: Params,
) -> Result<Response> {
    let ns = backend::namespace(&gw, &user, &params.0)?;
    let pools = backend::visible_pools(&gw, &user, &ns).await?;
    Ok(Json(model::kernelspecs(&pools)).into_response())
}

/// `GET /api/kernelspecs/{name}`.
pub async fn one(
    State(gw): State<Arc<Gateway>>,
    Extension(user): Extension<User>,
    params: Params,
) -> Result<Response> {
    let ns = backend::namespace(&gw, &user, &params.0)?;
    let name = params.get("name");
    let pools = if name == model::DEFAULT_SPEC {
        Vec::new()
    } else {
        backend::visible_pools(&gw, &user, &ns).await?
    };
    let specs = model::kernelspecs(&pools);
    match specs["kernelspecs"].get(name) {
        Some(spec) => Ok(Json(spec.clone()).into_response()),
        None => Err(GatewayError::NotFound(format!("Kernel spec {name} not found")).into()),
    }
}
