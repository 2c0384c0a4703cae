//! Asset routes: the index, content, pins, and delete-if-unreferenced.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::ApiError;
use crate::assets::index::scan_references;
use crate::assets::name::{is_valid, mime_for_ext};
use crate::assets::ASSETS_DIR;
use crate::sidecar::Service;

type Svc = State<Arc<Service>>;

fn checked(name: &str) -> Result<(), ApiError> {
    if is_valid(name) {
        Ok(())
    } else {
        Err(ApiError::bad_field("name", "an asset name is <sha256>.<ext>"))
    }
}

fn path_of(svc: &Service, name: &str) -> std::path::PathBuf {
    svc.cfg.workspace.join(ASSETS_DIR).join(name)
}

/// The asset index: every asset file with size, type, time, references and pin.
pub async fn catalog(svc: &Service) -> Result<Vec<Value>, crate::store::StoreError> {
    let pins = svc.reader.pins().await?;
    let dir = svc.cfg.workspace.join(ASSETS_DIR);
    let mut items = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !is_valid(&name) {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            let created = meta
                .modified()
                .ok()
                .map(|t| crate::util::format_rfc3339(time::OffsetDateTime::from(t)));
            let ext = name.rsplit('.').next().unwrap_or_default();
            items.push(json!({
                "name": name,
                "path": format!("{ASSETS_DIR}/{name}"),
                "size": meta.len(),
                "mime": mime_for_ext(ext).split(';').next().unwrap_or_default(),
                "created_at": created,
                "referenced_by": svc.assets.referenced_by(&name),
                "pinned": pins.contains(&name),
            }));
        }
    }
    items.sort_by(|a, b| a["created_at"].as_str().cmp(&b["created_at"].as_str()));
    Ok(items)
}

pub async fn list(State(svc): Svc) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"assets": catalog(&svc).await?})))
}

pub async fn content(State(svc): Svc, Path(name): Path<String>) -> Result<Response, ApiError> {
    checked(&name)?;
    let bytes = tokio::fs::read(path_of(&svc, &name))
        .await
        .map_err(|_| ApiError::not_found(format!("no asset {name}")))?;
    let ext = name.rsplit('.').next().unwrap_or_default();
    Ok(([(header::CONTENT_TYPE, mime_for_ext(ext))], Body::from(bytes)).into_response())
}

/// Deletes the asset unless a notebook references it or it is pinned. The
/// references are read from disk under the workspace lock, which every
/// notebook write of the sidecar also takes: a save that references the
/// asset either finished before this check (409) or starts after the file is
/// gone.
pub async fn delete(State(svc): Svc, Path(name): Path<String>) -> Result<Response, ApiError> {
    checked(&name)?;
    let _guard = svc.workspace_lock.lock().await;
    let path = path_of(&svc, &name);
    if !path.exists() {
        return Err(ApiError::not_found(format!("no asset {name}")));
    }
    let pinned = svc.reader.pins().await?.contains(&name);
    let workspace = svc.cfg.workspace.clone();
    let n = name.clone();
    let referenced_by = tokio::task::spawn_blocking(move || scan_references(&workspace, &n))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    if pinned || !referenced_by.is_empty() {
        let body = json!({"error": {
            "code": "in_use", "field": null,
            "message": format!("asset {name} is {}", if pinned { "pinned" } else { "referenced" }),
        }, "referenced_by": referenced_by, "pinned": pinned});
        return Ok((StatusCode::CONFLICT, Json(body)).into_response());
    }
    tokio::fs::remove_file(&path)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    tracing::info!(asset = %name, "deleted an unreferenced asset");
    Ok(Json(json!({"deleted": name})).into_response())
}

pub async fn pin(State(svc): Svc, Path(name): Path<String>) -> Result<Response, ApiError> {
    checked(&name)?;
    if !path_of(&svc, &name).exists() {
        return Err(ApiError::not_found(format!("no asset {name}")));
    }
    svc.writer.pin(&name, true).await?;
    Ok(Json(json!({"name": name, "pinned": true})).into_response())
}

pub async fn unpin(State(svc): Svc, Path(name): Path<String>) -> Result<Response, ApiError> {
    checked(&name)?;
    svc.writer.pin(&name, false).await?;
    Ok(Json(json!({"name": name, "pinned": false})).into_response())
}
