//! Execution and kernel routes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::ApiError;
use crate::sidecar::{Service, SubmitRequest};
use crate::store;

type Svc = State<Arc<Service>>;

fn opt_string(
    body: &serde_json::Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_field(field, "must be a string")),
    }
}

/// Parses the submit body by hand, so every error names its field.
pub fn parse_submit(body: &[u8]) -> Result<SubmitRequest, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_field("body", format!("not valid JSON: {e}")))?;
    let Value::Object(obj) = v else {
        return Err(ApiError::bad_field("body", "must be a JSON object"));
    };
    let code = match obj.get("code") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ApiError::bad_field("code", "must be a string")),
        None => return Err(ApiError::bad_field("code", "is required")),
    };
    let timeout_s = match obj.get("timeout_s") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_f64(),
        Some(_) => return Err(ApiError::bad_field("timeout_s", "must be a number of seconds")),
    };
    Ok(SubmitRequest {
        code,
        key: opt_string(&obj, "key")?,
        notebook: opt_string(&obj, "notebook")?,
        cell_id: opt_string(&obj, "cell_id")?,
        timeout_s,
        client_request: None,
    })
}

/// The `wait` query parameter in seconds (absent: zero).
fn wait_param(q: &HashMap<String, String>) -> Result<Duration, ApiError> {
    match q.get("wait") {
        None => Ok(Duration::ZERO),
        Some(w) => w
            .parse::<f64>()
            .map_err(|_| "must be a number of seconds")
            .and_then(Service::wait_duration)
            .map_err(|m| ApiError::bad_field("wait", m)),
    }
}

/// `POST /v1/executions[?wait=S]`: `202` once the execution is durably
/// queued; with `wait`, the final execution (`200`) when it ends within S
/// seconds, else the `202` as without it. A reused key answers `200` with
/// the first execution and `replayed`.
pub async fn submit(
    State(svc): Svc,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let wait = wait_param(&q)?;
    let req = parse_submit(&body)?;
    // In its own task: a client that goes away mid-commit does not cut off
    // what follows the commit (the queued event, waking the executor, the
    // notebook write-back of a cell's execution).
    let done = tokio::spawn(async move { svc.submit_and_wait(req, wait).await })
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("the submission failed: {e}"),
            )
        })??;
    if done.created {
        let status = if done.execution.state.is_final() {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        };
        return Ok((status, Json(done.execution)).into_response());
    }
    // A reused key: the first execution, and a word that it is a replay.
    let mut body = serde_json::to_value(&done.execution).unwrap_or_default();
    if let Some(o) = body.as_object_mut() {
        o.insert("replayed".into(), json!(true));
        o.insert("code_differs".into(), json!(done.code_differs));
    }
    Ok((StatusCode::OK, Json(body)).into_response())
}

pub async fn get(
    State(svc): Svc,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let wait = wait_param(&q)?;
    let exec = svc.wait(&id, wait).await?;
    match exec {
        Some(e) => Ok(Json(e).into_response()),
        None => Err(ApiError::not_found(format!("no execution {id}"))),
    }
}

pub async fn list(State(svc): Svc, Query(q): Query<HashMap<String, String>>) -> Result<Response, ApiError> {
    let limit = match q.get("limit") {
        None => None,
        Some(l) => Some(l.parse::<u32>().map_err(|_| {
            ApiError::bad_field(
                "limit",
                format!("must be an integer from 1 to {}", store::reader::MAX_PAGE_ROWS),
            )
        })?),
    };
    let query = store::ListQuery::parse(
        q.get("state").map(String::as_str),
        limit,
        q.get("cursor").map(String::as_str),
    )
    .map_err(|(field, message)| ApiError::bad_field(field, message))?;
    Ok(Json(svc.list(query).await?).into_response())
}

pub async fn cancel(State(svc): Svc, Path(id): Path<String>) -> Result<Response, ApiError> {
    let out = svc.cancel(&id).await?;
    Ok(Json(out).into_response())
}

pub async fn kernel(State(svc): Svc) -> Json<Value> {
    Json(serde_json::to_value(svc.kernel_status()).unwrap_or_default())
}

pub async fn interrupt(State(svc): Svc) -> Result<Response, ApiError> {
    svc.interrupt().await?;
    Ok(Json(json!({"interrupted": true})).into_response())
}

pub async fn restart(State(svc): Svc) -> Result<Response, ApiError> {
    svc.restart().await?;
    Ok(Json(serde_json::to_value(svc.kernel_status()).unwrap_or_default()).into_response())
}

/// `GET /v1/status`, and with `?revision=R&wait_s=S` a long poll: the answer
/// comes once the status's revision is no longer `R` (an execution queued,
/// started or finished, the kernel's state, readiness), or after `S`
/// seconds with the status as it is. This is how the operator learns of a
/// change without reading every sidecar on a clock.
pub async fn status(
    State(svc): Svc,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<crate::sidecar_api::Status>, ApiError> {
    let Some(known) = q.get("revision").filter(|r| !r.is_empty()) else {
        return Ok(Json(svc.status().await?));
    };
    let wait_s = match q.get("wait_s") {
        None => 0.0,
        Some(text) => text
            .parse::<f64>()
            .map_err(|_| ApiError::bad_field("wait_s", "must be a number of seconds"))?,
    };
    let wait = Service::wait_duration(wait_s).map_err(|m| ApiError::bad_field("wait_s", m))?;
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribed before the first read, so a change between the read and
    // the wait still wakes it; the store's signal fires after its commit,
    // so the read it wakes sees the new counts.
    let mut states = svc.writer.state_changes();
    let mut kernel = svc.kernel.clone();
    let mut ready = svc.ready.clone();
    loop {
        states.borrow_and_update();
        kernel.borrow_and_update();
        ready.borrow_and_update();
        let status = svc.status().await?;
        if status.current_revision() != *known || tokio::time::Instant::now() >= deadline {
            return Ok(Json(status));
        }
        tokio::select! {
            changed = states.changed() => if changed.is_err() { return Ok(Json(status)) },
            changed = kernel.changed() => if changed.is_err() { return Ok(Json(status)) },
            changed = ready.changed() => if changed.is_err() { return Ok(Json(status)) },
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

pub async fn readyz(State(svc): Svc) -> Response {
    if svc.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}", svc.not_ready_reason()),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submit_errors_name_the_field() {
        assert_eq!(parse_submit(b"{").unwrap_err().field, Some("body"));
        assert_eq!(parse_submit(b"[]").unwrap_err().field, Some("body"));
        assert_eq!(parse_submit(b"{}").unwrap_err().field, Some("code"));
        assert_eq!(parse_submit(br#"{"code": 1}"#).unwrap_err().field, Some("code"));
        assert_eq!(
            parse_submit(br#"{"code": "x", "key": 2}"#).unwrap_err().field,
            Some("key")
        );
        assert_eq!(
            parse_submit(br#"{"code": "x", "timeout_s": "5"}"#)
                .unwrap_err()
                .field,
            Some("timeout_s")
        );
        let ok = parse_submit(br#"{"code": "1+1", "key": "k", "timeout_s": 2.5}"#).unwrap();
        assert_eq!(
            (ok.code.as_str(), ok.key.as_deref(), ok.timeout_s),
            ("1+1", Some("k"), Some(2.5))
        );
    }
}
