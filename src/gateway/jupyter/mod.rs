//! The Jupyter Server REST API on the gateway (`/api/kernelspecs`,
//! `/api/kernels`, `/api/kernels/{id}/channels`, `/api/sessions`), so that
//! jupyter_server's `--gateway-url`, VS Code's "existing Jupyter server" and
//! nbclient use NotebookSessions with the same queue, replay and RBAC as
//! MCP clients. A kernel is a NotebookSession and its id the session's
//! `metadata.uid`; the routes are in the caller's default namespace, and
//! the same under `/namespaces/{ns}` (`--gateway-url http://gw/namespaces/team-a`).
//!
//! Authentication is the gateway's own ([`super::auth`], which also takes
//! `Authorization: token` and `?token=` as Jupyter clients send them);
//! refusals are in Jupyter's error shape ([`error`]).

pub mod backend;
pub mod error;
pub mod kernels;
pub mod model;
pub mod sessions;
pub mod specs;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, OptionalFromRequestParts, Path};
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::Router;

use super::{Gateway, GatewayError};

/// The routes, at `/api/...` and at `/namespaces/{ns}/api/...`.
pub fn router() -> Router<Arc<Gateway>> {
    let api = || {
        Router::new()
            .route("/api", get(specs::version))
            .route("/api/", get(specs::version))
            .route("/api/kernelspecs", get(specs::list))
            .route("/api/kernelspecs/{name}", get(specs::one))
            .route("/api/kernels", get(kernels::list).post(kernels::start))
            .route("/api/kernels/{id}", get(kernels::get).delete(kernels::delete))
            .route("/api/kernels/{id}/interrupt", post(kernels::interrupt))
            .route("/api/kernels/{id}/restart", post(kernels::restart))
            .route("/api/kernels/{id}/channels", get(kernels::channels))
            .route("/api/sessions", get(sessions::list).post(sessions::create))
            .route(
                "/api/sessions/{id}",
                get(sessions::get).patch(sessions::patch).delete(sessions::delete),
            )
    };
    Router::new().merge(api()).nest("/namespaces/{ns}", api())
}

/// Whether `path` is one of the Jupyter routes (for the error shape of refusals).
pub fn is_jupyter_path(path: &str) -> bool {
    let api = |p: &str| p == "/api" || p.starts_with("/api/");
    if api(path) {
        return true;
    }
    path.strip_prefix("/namespaces/")
        .and_then(|rest| rest.find('/').map(|i| &rest[i..]))
        .is_some_and(api)
}

/// The path parameters of a route (`ns`, `id`, `name`), none on the plain ones.
#[derive(Debug, Default)]
pub struct Params(pub HashMap<String, String>);

impl Params {
    pub fn get(&self, key: &str) -> &str {
        self.0.get(key).map(String::as_str).unwrap_or("")
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = error::JupyterError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match <Path<HashMap<String, String>> as OptionalFromRequestParts<S>>::from_request_parts(parts, state)
            .await
        {
            Ok(Some(Path(m))) => Ok(Params(m)),
            Ok(None) => Ok(Params::default()),
            Err(e) => Err(GatewayError::BadRequest(format!("path: {}", e.body_text())).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routes_build_without_conflicts() {
        // axum refuses overlapping routes when they are added.
        let _ = router();
    }

    #[test]
    fn jupyter_paths_are_known_with_and_without_a_namespace() {
        for p in [
            "/api",
            "/api/kernels",
            "/namespaces/team-a/api",
            "/namespaces/team-a/api/kernels/x/channels",
        ] {
            assert!(is_jupyter_path(p), "{p}");
        }
        for p in [
            "/mcp",
            "/sessions/ns/s1/v1/status",
            "/apis",
            "/namespaces/team-a",
            "/namespaces/x/apix",
            "/",
        ] {
            assert!(!is_jupyter_path(p), "{p}");
        }
    }
}
