//! Asset routes: the index, content, pins, and delete-if-unreferenced. The
//! rules live in `sidecar::assets`; this maps them to HTTP.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::ApiError;
use crate::sidecar::assets::{AssetError, MAX_SERVE_BYTES};
use crate::sidecar::Service;
use crate::sidecar_api::{DeleteRefusal, ErrorDetail};

type Svc = State<Arc<Service>>;

impl From<AssetError> for ApiError {
    fn from(e: AssetError) -> Self {
        use crate::confined::ConfinedError;
        match e {
            AssetError::InvalidName(_) => ApiError::bad_field("name", "an asset name is <sha256>.<ext>"),
            AssetError::NotFound(_) => ApiError::not_found(e.to_string()),
            AssetError::Unreadable(ConfinedError::TooLarge { .. }) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            AssetError::Unreadable(_) => ApiError::new(StatusCode::FORBIDDEN, "not_served", e.to_string()),
            AssetError::InUse { .. } => ApiError::new(StatusCode::CONFLICT, "in_use", e.to_string()),
            AssetError::Unsure { .. } => ApiError::new(StatusCode::CONFLICT, "unsure", e.to_string()),
            AssetError::Store(s) => s.into(),
            AssetError::Task(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
        }
    }
}

pub async fn list(State(svc): Svc) -> Result<Response, ApiError> {
    Ok(Json(svc.asset_catalog().await?).into_response())
}

pub async fn content(State(svc): Svc, Path(name): Path<String>) -> Result<Response, ApiError> {
    let (bytes, _) = svc.asset_content(&name, MAX_SERVE_BYTES).await?;
    let ext = name.rsplit('.').next().unwrap_or_default();
    let mime = crate::assets::name::mime_for_ext(ext);
    Ok(([(header::CONTENT_TYPE, mime)], Body::from(bytes)).into_response())
}

pub async fn delete(State(svc): Svc, Path(name): Path<String>) -> Result<Response, ApiError> {
    match svc.delete_asset(&name).await {
        Ok(()) => Ok(Json(json!({"deleted": name})).into_response()),
        Err(e @ AssetError::InUse { .. }) | Err(e @ AssetError::Unsure { .. }) => {
            let (referenced_by, pinned, unsure) = match &e {
                AssetError::InUse {
                    referenced_by,
                    pinned,
                    ..
                } => (referenced_by.clone(), *pinned, Vec::new()),
                AssetError::Unsure { unsure, .. } => (Vec::new(), false, unsure.clone()),
                _ => (Vec::new(), false, Vec::new()),
            };
            let code = if unsure.is_empty() { "in_use" } else { "unsure" };
            let body = DeleteRefusal {
                error: ErrorDetail {
                    code: code.into(),
                    message: e.to_string(),
                    field: None,
                },
                referenced_by,
                pinned,
                unsure,
            };
            Ok((StatusCode::CONFLICT, Json(body)).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn pin(State(svc): Svc, Path(name): Path<String>) -> Result<Response, ApiError> {
    svc.pin_asset(&name, true).await?;
    Ok(Json(json!({"name": name, "pinned": true})).into_response())
}

pub async fn unpin(State(svc): Svc, Path(name): Path<String>) -> Result<Response, ApiError> {
    svc.pin_asset(&name, false).await?;
    Ok(Json(json!({"name": name, "pinned": false})).into_response())
}
