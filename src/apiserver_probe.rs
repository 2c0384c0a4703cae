//! `/readyz` of the operator and of the gateway: ready while the apiserver
//! answers them. Asked on each probe (the kubelet's period is the only
//! clock), with a short timeout, by `GET /version`, which every identity
//! may read (`system:public-info-viewer`), so it needs no RBAC of its own.

use std::time::Duration;

use axum::http::StatusCode;

/// How long one probe waits for the apiserver.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the apiserver answers `client` within [`PROBE_TIMEOUT`]; the
/// reason when it does not.
pub async fn apiserver_answers(client: &kube::Client) -> Result<(), String> {
    match tokio::time::timeout(PROBE_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("the apiserver does not answer: {e}")),
        Err(_) => Err(format!("the apiserver did not answer within {PROBE_TIMEOUT:?}")),
    }
}

/// The answer of a `/readyz` route: 200 `ok`, or 503 with the reason.
pub async fn readyz(client: &kube::Client) -> (StatusCode, String) {
    match apiserver_answers(client).await {
        Ok(()) => (StatusCode::OK, "ok\n".into()),
        Err(reason) => {
            tracing::warn!(%reason, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n"))
        }
    }
}
