//! The session controller's half: after it read a Ready session's sidecar,
//! it applies a lease for every asset in the sidecar's index that has none
//! (see [`super::desired`]). The existing leases come from the lease
//! controller's cache, so this costs one sidecar read and no apiserver read.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};

use super::desired::leases_to_apply;
use crate::operator::builders::{self, MANAGER};
use crate::operator::cache::Listed;
use crate::operator::crd::{AssetLease, NotebookSession};
use crate::operator::metrics::Metrics;
use crate::operator::sidecar_client::SidecarClient;

/// Lease sync inputs that live as long as the operator.
#[derive(Clone)]
pub struct LeaseSync {
    /// The lease controller's cache of AssetLeases.
    pub store: Store<AssetLease>,
    /// Its first listing.
    pub listed: Listed,
}

impl LeaseSync {
    /// Applies the leases `session` lacks. Returns how many were applied.
    /// Does nothing until the lease cache has been filled once, so that a
    /// fresh operator does not create leases that exist.
    pub async fn sync(
        &self,
        client: &Client,
        sidecar: &SidecarClient,
        metrics: &Metrics,
        session: &NotebookSession,
        pod: &Pod,
        token: &str,
    ) -> Result<usize, String> {
        if !self.listed.is_listed() {
            return Ok(0);
        }
        let (Some(namespace), Ok(ip)) = (session.namespace(), builders::sidecar_ip(pod, None)) else {
            return Ok(0);
        };
        let assets = sidecar.assets(ip, token).await?;
        let name = session.name_any();
        let existing = self.store.state_filter(|lease| {
            lease.spec.session_ref.name == name && lease.namespace().as_deref() == Some(namespace.as_str())
        });
        let wanted = leases_to_apply(session, &assets, &existing);
        let api: Api<AssetLease> = Api::namespaced(client.clone(), &namespace);
        let params = PatchParams::apply(MANAGER).force();
        let mut applied = 0;
        for lease in &wanted {
            api.patch(&lease.name_any(), &params, &Patch::Apply(lease))
                .await
                .map_err(|err| format!("apply AssetLease {}: {err}", lease.name_any()))?;
            applied += 1;
            metrics.asset_leases_applied.inc();
            tracing::info!(
                session = %name,
                namespace = %namespace,
                lease = %lease.name_any(),
                path = %lease.spec.path,
                "applied the lease of an asset"
            );
        }
        Ok(applied)
    }
}
