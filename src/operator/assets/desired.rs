//! Pure: the AssetLeases a Ready session should have, from the sidecar's
//! asset index and the leases that exist.
//!
//! Every asset gets a lease when it has none: named `<session>-<first 16 hex
//! of the sha256>.<ext>`, owned by the session (so the garbage collector
//! removes it with the session), lasting the session's `leaseDuration` from
//! the asset's creation time. An asset that some other lease (a user's)
//! already covers gets none from the operator.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::ResourceExt;

use super::decide::ceil_second;
use crate::assets::name::is_valid;
use crate::assets::ASSETS_DIR;
use crate::operator::builders::{owner_reference, selector_labels, LABEL_MANAGED_BY, MANAGER};
use crate::operator::crd::{AssetLease, AssetLeaseSpec, NotebookSession, SessionRef};
use crate::sidecar_api::AssetEntry;

/// At most this many leases are created or updated in one session reconcile;
/// the rest follow at the next one.
pub const MAX_APPLIES_PER_RECONCILE: usize = 200;

/// The name of the lease the operator keeps for `asset` (`<sha256>.<ext>`) of `session`.
pub fn lease_name(session: &str, asset: &str) -> String {
    let (sha, ext) = asset.split_once('.').unwrap_or((asset, ""));
    let short = &sha[..sha.len().min(16)];
    if ext.is_empty() {
        format!("{session}-{short}")
    } else {
        format!("{session}-{short}.{ext}")
    }
}

/// The lease the operator wants for one asset of the session, or `None` when
/// the index entry does not name a valid asset.
pub fn desired_lease(session: &NotebookSession, asset: &AssetEntry) -> Option<AssetLease> {
    if !is_valid(&asset.name) {
        return None;
    }
    let name = session.name_any();
    let mut labels = selector_labels(&name);
    labels.insert(LABEL_MANAGED_BY.into(), MANAGER.into());
    let mut lease = AssetLease::new(
        &lease_name(&name, &asset.name),
        AssetLeaseSpec {
            session_ref: SessionRef { name: name.clone() },
            path: format!("{ASSETS_DIR}/{}", asset.name),
            duration: session.spec.assets.lease_duration(),
            // Rounded up: a lease never ends before created_at + duration.
            start_time: asset.created_time().map(|t| Time(ceil_second(t))),
            renew_time: None,
            holder: None,
        },
    );
    lease.metadata = ObjectMeta {
        namespace: session.namespace(),
        labels: Some(labels),
        owner_references: owner_reference(session).map(|owner| vec![owner]),
        ..lease.metadata
    };
    Some(lease)
}

/// The leases to apply (create, or update) for a session whose sidecar
/// listed `assets`; `existing` holds the session's leases (any name).
///
/// An operator-made lease is updated when the session's `leaseDuration`
/// changed, or when the asset is newer than the lease's start (the file was
/// written again after it had been deleted, or re-used), so that its lease
/// starts again. A lease that is being deleted is left alone.
pub fn leases_to_apply(
    session: &NotebookSession,
    assets: &[AssetEntry],
    existing: &[Arc<AssetLease>],
) -> Vec<AssetLease> {
    let mut out = Vec::new();
    for asset in assets {
        if out.len() >= MAX_APPLIES_PER_RECONCILE {
            break;
        }
        let Some(desired) = desired_lease(session, asset) else {
            continue;
        };
        let ours = existing.iter().find(|l| l.name_any() == desired.name_any());
        match ours {
            Some(lease) if lease.spec.path != desired.spec.path => {
                // A 64-bit prefix collision, or a user's lease under our name: leave it.
                continue;
            }
            Some(lease) if lease.metadata.deletion_timestamp.is_some() => continue,
            Some(lease) => {
                let newer = match (&desired.spec.start_time, &lease.spec.start_time) {
                    (Some(want), Some(have)) => want.0 > have.0,
                    (Some(_), None) => false,
                    (None, _) => false,
                };
                if newer || lease.spec.duration != desired.spec.duration {
                    out.push(desired);
                }
            }
            None => {
                let covered = existing
                    .iter()
                    .any(|l| l.spec.path == desired.spec.path && l.metadata.deletion_timestamp.is_none());
                if !covered {
                    out.push(desired);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::fixtures;
    use k8s_openapi::jiff::Timestamp;

    const SHA: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
    const SHA2: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    fn session() -> NotebookSession {
        let mut session = fixtures::session("session-minimal.yaml");
        session.spec.assets.lease_duration = Some("10m".into());
        session
    }

    fn asset(sha: &str, created_at: &str) -> AssetEntry {
        AssetEntry {
            name: format!("{sha}.png"),
            path: format!("assets/{sha}.png"),
            size: 1 << 20,
            mime: "image/png".into(),
            created_at: created_at.into(),
            ..AssetEntry::default()
        }
    }

    fn at(text: &str) -> Timestamp {
        text.parse().expect("a timestamp")
    }

    #[test]
    fn lease_names_are_the_session_and_the_short_hash() {
        assert_eq!(
            lease_name("scratch", &format!("{SHA}.png")),
            "scratch-0a1b2c3d4e5f6071.png"
        );
    }

    #[test]
    fn a_new_asset_gets_a_lease_owned_by_its_session_from_its_creation_time() {
        let session = session();
        let lease = desired_lease(&session, &asset(SHA, "2026-11-28T10:00:00.250Z")).expect("a lease");
        assert_eq!(
            lease.metadata.name.as_deref(),
            Some("scratch-0a1b2c3d4e5f6071.png")
        );
        assert_eq!(lease.metadata.namespace.as_deref(), Some("agents"));
        let owner = &lease.metadata.owner_references.as_ref().expect("owned")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("NotebookSession", "scratch")
        );
        assert_eq!(owner.uid, "7c1d2b9e-0f4e-4c55-8a53-5f1b2f0e9a10");
        let labels = lease.metadata.labels.as_ref().expect("labels");
        assert_eq!(
            labels.get("notebook.dev/session").map(String::as_str),
            Some("scratch")
        );
        assert_eq!(lease.spec.session_ref.name, "scratch");
        assert_eq!(lease.spec.path, format!("assets/{SHA}.png"));
        assert_eq!(lease.spec.duration, "10m");
        // Rounded up, so that the lease never ends before created_at + duration.
        assert_eq!(lease.spec.start_time, Some(Time(at("2026-11-28T10:00:01Z"))));
        assert!(lease.spec.renew_time.is_none() && lease.spec.holder.is_none());

        let mut traversal = asset(SHA, "2026-11-28T10:00:00Z");
        traversal.name = "../../etc/passwd".into();
        assert!(desired_lease(&session, &traversal).is_none());
    }

    #[test]
    fn only_assets_without_a_lease_get_one() {
        let session = session();
        let ours = Arc::new(desired_lease(&session, &asset(SHA, "2026-11-28T10:00:00Z")).expect("lease"));
        let assets = [
            asset(SHA, "2026-11-28T10:00:00Z"),
            asset(SHA2, "2026-11-28T10:05:00Z"),
        ];
        let wanted = leases_to_apply(&session, &assets, std::slice::from_ref(&ours));
        assert_eq!(wanted.len(), 1);
        assert_eq!(wanted[0].spec.path, format!("assets/{SHA2}.png"));

        // A user's lease on the second asset covers it.
        let mut users = (*ours).clone();
        users.metadata.name = Some("keep-the-plot".into());
        users.spec.path = format!("assets/{SHA2}.png");
        let wanted = leases_to_apply(&session, &assets, &[ours.clone(), Arc::new(users)]);
        assert!(wanted.is_empty(), "{wanted:?}");
    }

    #[test]
    fn a_lease_starts_again_when_its_asset_is_written_again() {
        let session = session();
        let ours = Arc::new(desired_lease(&session, &asset(SHA, "2026-11-28T10:00:00Z")).expect("lease"));
        let rewritten = [asset(SHA, "2026-11-28T12:00:00Z")];
        let wanted = leases_to_apply(&session, &rewritten, std::slice::from_ref(&ours));
        assert_eq!(wanted.len(), 1);
        assert_eq!(wanted[0].spec.start_time, Some(Time(at("2026-11-28T12:00:00Z"))));
        // An older creation time never moves a lease back.
        let older = [asset(SHA, "2026-11-28T09:00:00Z")];
        assert!(leases_to_apply(&session, &older, std::slice::from_ref(&ours)).is_empty());
    }

    #[test]
    fn a_changed_lease_duration_reaches_the_operators_leases() {
        let mut session = session();
        let ours = Arc::new(desired_lease(&session, &asset(SHA, "2026-11-28T10:00:00Z")).expect("lease"));
        session.spec.assets.lease_duration = Some("1h".into());
        let wanted = leases_to_apply(&session, &[asset(SHA, "2026-11-28T10:00:00Z")], &[ours]);
        assert_eq!(wanted.len(), 1);
        assert_eq!(wanted[0].spec.duration, "1h");
    }

    #[test]
    fn a_lease_being_deleted_is_left_alone() {
        let session = session();
        let mut ours = desired_lease(&session, &asset(SHA, "2026-11-28T10:00:00Z")).expect("lease");
        ours.metadata.deletion_timestamp = Some(Time(at("2026-11-28T10:01:00Z")));
        let rewritten = [asset(SHA, "2026-11-28T12:00:00Z")];
        assert!(leases_to_apply(&session, &rewritten, &[Arc::new(ours)]).is_empty());
    }

    #[test]
    fn one_reconcile_applies_a_bounded_number_of_leases() {
        let session = session();
        let many: Vec<AssetEntry> = (0..MAX_APPLIES_PER_RECONCILE + 50)
            .map(|i| asset(&format!("{i:016x}{:048x}", 0), "2026-11-28T10:00:00Z"))
            .collect();
        assert_eq!(
            leases_to_apply(&session, &many, &[]).len(),
            MAX_APPLIES_PER_RECONCILE
        );
    }
}
