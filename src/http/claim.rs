//! `POST /v1/claim`: a NotebookSession takes this warm pool pod. The pool's
//! token stops working and the session's is the only one accepted from the
//! answer on; the claim is written to the sidecar's database first, so a
//! restarted sidecar comes back claimed, never warm again.

use std::sync::Arc;

use std::sync::RwLock;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};

use super::auth::{Access, Token};
use super::ApiError;
use crate::sidecar::Service;
use crate::sidecar_api::{ClaimAnswer, ClaimRequest};

/// Meta key of the claim in the sidecar's database.
pub const CLAIM_META: &str = "pool_claim";

/// Shortest session token accepted (the operator's are 64 hex digits).
const MIN_TOKEN: usize = 16;

#[derive(Clone)]
pub struct ClaimState {
    pub token: Token,
    pub svc: Arc<Service>,
    /// The `/mcp` of a warm pod, made at the claim.
    pub mcp: Option<McpSlot>,
}

/// Makes the `/mcp` router for the given extra host names.
pub type McpFactory = Arc<dyn Fn(Vec<String>) -> Router + Send + Sync>;

/// The `/mcp` route of a warm pod: MCP checks the `Host` of every request
/// against the names of the session's Service, which only the claim brings,
/// so the MCP service is made then; before, `/mcp` is 503 like every
/// client route of a warm pod.
#[derive(Clone)]
pub struct McpSlot {
    router: Arc<RwLock<Option<Router>>>,
    factory: McpFactory,
}

impl McpSlot {
    /// An empty slot that `factory` fills at the claim.
    pub fn new(factory: McpFactory) -> Self {
        Self {
            router: Arc::new(RwLock::new(None)),
            factory,
        }
    }

    /// Makes the MCP service for `hosts` and serves it from now on.
    pub fn install(&self, hosts: Vec<String>) {
        let router = (self.factory)(hosts);
        match self.router.write() {
            Ok(mut slot) => *slot = Some(router),
            Err(poisoned) => *poisoned.into_inner() = Some(router),
        }
    }

    fn current(&self) -> Option<Router> {
        match self.router.read() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// `/mcp` of a warm pod: the MCP service once claimed, else 503.
pub async fn forward_mcp(State(slot): State<McpSlot>, req: Request) -> Response {
    use tower::Service as _;
    match slot.current() {
        Some(mut router) => match router.call(req).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "warm",
            "this is a warm pool pod: it serves clients once a NotebookSession claims it",
        )
        .into_response(),
    }
}

/// What a claim changes, decided from the access before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimStep {
    /// Warm: take it; this is the access from now on.
    Take(Access),
    /// The same session with the same token claimed it before: nothing to do.
    Again,
    /// Someone else has it, or it never was a pool pod.
    Refuse(&'static str),
}

/// Pure: the step of a claim `req` on a sidecar in state `access`.
pub fn claim_step(access: &Access, req: &ClaimRequest) -> ClaimStep {
    let by = (req.namespace.clone(), req.session.clone());
    if access.warm {
        return ClaimStep::Take(Access {
            token: Arc::new(req.token.clone()),
            warm: false,
            claimed_by: Some(by),
        });
    }
    match &access.claimed_by {
        Some(holder)
            if *holder == by
                && crate::util::constant_time_eq(req.token.as_bytes(), access.token.as_bytes()) =>
        {
            ClaimStep::Again
        }
        Some(_) => ClaimStep::Refuse("this pod was claimed by another session"),
        None => ClaimStep::Refuse("this sidecar is not a warm pool pod"),
    }
}

fn check(req: &ClaimRequest) -> Result<(), ApiError> {
    if req.session.trim().is_empty() {
        return Err(ApiError::bad_field("session", "is required"));
    }
    if req.namespace.trim().is_empty() {
        return Err(ApiError::bad_field("namespace", "is required"));
    }
    if req.token.trim().len() < MIN_TOKEN || req.token.trim() != req.token {
        return Err(ApiError::bad_field(
            "token",
            format!("must be at least {MIN_TOKEN} characters without surrounding space"),
        ));
    }
    Ok(())
}

/// The claim as stored: the session and its token (the state volume is the
/// sidecar's own; the kernel does not mount it).
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    session: String,
    namespace: String,
    token: String,
    #[serde(default)]
    allowed_hosts: Vec<String>,
}

/// The access a restarted sidecar starts with (claimed, when a claim was
/// stored), and the claimer's host names for MCP.
pub async fn recover(svc: &Service, warm: Access) -> Result<(Access, Vec<String>), crate::store::StoreError> {
    let Some(text) = svc.reader.meta(CLAIM_META).await? else {
        return Ok((warm, Vec::new()));
    };
    match serde_json::from_str::<Stored>(&text) {
        Ok(stored) => Ok((
            Access {
                token: Arc::new(stored.token),
                warm: false,
                claimed_by: Some((stored.namespace, stored.session)),
            },
            stored.allowed_hosts,
        )),
        Err(err) => {
            tracing::warn!(error = %err, "the stored claim does not parse; staying warm");
            Ok((warm, Vec::new()))
        }
    }
}

#[tracing::instrument(skip_all, fields(session = %req.session, namespace = %req.namespace))]
pub async fn claim(
    State(state): State<ClaimState>,
    Json(req): Json<ClaimRequest>,
) -> Result<Json<ClaimAnswer>, ApiError> {
    check(&req)?;
    let answer = |status| ClaimAnswer {
        session: req.session.clone(),
        namespace: req.namespace.clone(),
        status,
    };
    match claim_step(&state.token.access(), &req) {
        ClaimStep::Take(access) => {
            let stored = serde_json::to_string(&Stored {
                session: req.session.clone(),
                namespace: req.namespace.clone(),
                token: req.token.clone(),
                allowed_hosts: req.allowed_hosts.clone(),
            })
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
            state.svc.writer.set_meta(CLAIM_META, stored).await?;
            state.svc.warmup.disarm();
            if let Some(mcp) = &state.mcp {
                mcp.install(req.allowed_hosts.clone());
            }
            state.token.set(access);
            tracing::info!("claimed: the pool token no longer works");
            Ok(Json(answer(state.svc.status().await.ok())))
        }
        ClaimStep::Again => Ok(Json(answer(state.svc.status().await.ok()))),
        ClaimStep::Refuse(why) => Err(ApiError::new(StatusCode::CONFLICT, "claimed", why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(session: &str, token: &str) -> ClaimRequest {
        ClaimRequest {
            session: session.into(),
            namespace: "ns".into(),
            token: token.into(),
            allowed_hosts: Vec::new(),
        }
    }

    #[test]
    fn a_warm_pod_is_taken_once_and_a_repeat_by_the_same_session_is_idempotent() {
        let warm = Access {
            token: Arc::new("pool-token".into()),
            warm: true,
            claimed_by: None,
        };
        let ClaimStep::Take(after) = claim_step(&warm, &req("a", "session-a-token")) else {
            panic!("a warm pod is taken");
        };
        assert_eq!(after.token.as_str(), "session-a-token");
        assert!(!after.warm);
        assert_eq!(claim_step(&after, &req("a", "session-a-token")), ClaimStep::Again);
        assert!(matches!(
            claim_step(&after, &req("a", "another-token-xx")),
            ClaimStep::Refuse(_)
        ));
        assert!(matches!(
            claim_step(&after, &req("b", "session-a-token")),
            ClaimStep::Refuse(_)
        ));
        let ordinary = Access {
            token: Arc::new("t".into()),
            warm: false,
            claimed_by: None,
        };
        assert!(matches!(
            claim_step(&ordinary, &req("a", "session-a-token")),
            ClaimStep::Refuse(_)
        ));
    }

    #[test]
    fn a_claim_needs_a_session_a_namespace_and_a_real_token() {
        assert!(check(&req("a", "0123456789abcdef")).is_ok());
        assert!(check(&req("", "0123456789abcdef")).is_err());
        assert!(check(&req("a", "short")).is_err());
        assert!(check(&req("a", " 0123456789abcdef")).is_err());
    }
}
