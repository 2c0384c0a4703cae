//! Pure builders of what a pool owns, and of the claim of one of its pods.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::operator::builders::{
    self, BuildConfig, ANNOTATION_SPEC_HASH, LABEL_MANAGED_BY, LABEL_NAME, LABEL_NAME_VALUE, LABEL_SESSION,
    MANAGER, SIDECAR_CONTAINER,
};
use crate::operator::crd::{NotebookPool, NotebookSession, NotebookSessionSpec};

/// Label on every pod a pool made, warm or claimed: the pool's name.
pub const LABEL_POOL: &str = "notebook.dev/pool";
/// Label on a pool pod no session claimed yet.
pub const LABEL_WARM: &str = "notebook.dev/warm";

/// Name of the pool Secret (the warm pods' token and kernel key).
pub fn pool_secret_name(pool: &str) -> String {
    format!("{pool}-pool-token")
}

/// Name of a warm pod of `pool`.
pub fn warm_pod_name(pool: &str, suffix: &str) -> String {
    format!("{pool}-warm-{suffix}")
}

/// A fresh random suffix for a warm pod's name.
pub fn random_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Labels on everything a pool owns.
pub fn pool_labels(pool: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), LABEL_NAME_VALUE.to_string()),
        (LABEL_MANAGED_BY.to_string(), MANAGER.to_string()),
        (LABEL_POOL.to_string(), pool.to_string()),
    ])
}

/// The labels of a pool's warm pods, unclaimed: what the pool's
/// NetworkPolicy selects (a claim takes the warm label away).
pub fn warm_selector(pool: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_POOL.to_string(), pool.to_string()),
        (LABEL_WARM.to_string(), "true".to_string()),
    ])
}

/// The controller owner reference pointing at the pool.
pub fn pool_owner(pool: &NotebookPool) -> Option<OwnerReference> {
    Some(OwnerReference {
        block_owner_deletion: Some(true),
        ..pool.controller_owner_ref(&())?
    })
}

/// The session as its pool's template makes it: the kernel and pod
/// overrides of the template; the idle timeout and each asset setting of
/// the session, or else of the template. What a cold start builds, what
/// validation checks and what the session's asset leases last.
pub fn templated(session: &NotebookSession, pool: &NotebookPool) -> NotebookSession {
    let template = &pool.spec.template;
    let mut out = session.clone();
    out.spec.kernel = template.kernel.clone();
    out.spec.pod_template = template.pod_template.clone();
    if out.spec.idle_timeout.is_none() {
        out.spec.idle_timeout = template.idle_timeout.clone();
    }
    out.spec.assets = session.spec.assets.or(&template.assets);
    if out.spec.network.is_none() {
        out.spec.network = template.network.clone();
    }
    out
}

/// Environment variable of a warm pod's sidecar that carries the pool's
/// warmup code (`sidecar --warmup`). In the pod spec, so the spec hash, and
/// with it which warm pods are outdated, follows the warmup.
pub const WARMUP_ENV: &str = "NOTEBOOK_WARMUP";

/// The pool Secret `<pool>-pool-token`, created once: the token a warm
/// sidecar accepts until its claim, and the kernel key of every warm kernel.
pub fn build_pool_secret(pool: &NotebookPool, token: &str, kernel_key: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(pool_secret_name(&pool.name_any())),
            namespace: pool.namespace(),
            labels: Some(pool_labels(&pool.name_any())),
            owner_references: pool_owner(pool).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(builders::secret_data(token, kernel_key)),
        ..Secret::default()
    }
}

/// A warm pod of `pool`: the session pod [`builders::build_pod`] makes from
/// the pool's template, owned by the pool, labelled warm, mounting the pool
/// Secret and with its sidecar in warm mode. Errors: the template cannot run.
pub fn build_warm_pod(pool: &NotebookPool, suffix: &str, config: &BuildConfig) -> Result<Pod, Vec<String>> {
    let name = pool.name_any();
    let template = &pool.spec.template;
    let mut stand_in = NotebookSession::new(
        &name,
        NotebookSessionSpec {
            kernel: template.kernel.clone(),
            pod_template: template.pod_template.clone(),
            network: template.network.clone(),
            idle_timeout: template.idle_timeout.clone(),
            ..NotebookSessionSpec::default()
        },
    );
    stand_in.metadata.namespace = pool.namespace();
    stand_in.metadata.uid = pool.uid();
    let valid = builders::validate(&stand_in, config).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| format!("spec.template: {e}"))
            .collect::<Vec<_>>()
    })?;
    let mut pod = builders::build_pod(&stand_in, &valid, config);
    let spec = pod.spec.get_or_insert_with(Default::default);
    for volume in spec.volumes.iter_mut().flatten() {
        if let Some(secret) = volume.secret.as_mut() {
            secret.secret_name = Some(pool_secret_name(&name));
        }
    }
    for sidecar in spec.init_containers.iter_mut().flatten() {
        if sidecar.name == SIDECAR_CONTAINER {
            sidecar.args.get_or_insert_with(Vec::new).push("--warm".into());
            if let Some(code) = template.warmup.as_ref().filter(|c| !c.trim().is_empty()) {
                sidecar.env.get_or_insert_with(Vec::new).push(EnvVar {
                    name: WARMUP_ENV.into(),
                    value: Some(code.clone()),
                    value_from: None,
                });
            }
        }
    }
    let hash = builders::spec_hash(spec);
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.remove(LABEL_SESSION);
    labels.extend(pool_labels(&name));
    labels.insert(LABEL_WARM.into(), "true".into());
    pod.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(ANNOTATION_SPEC_HASH.into(), hash);
    pod.metadata.name = Some(warm_pod_name(&name, suffix));
    pod.metadata.owner_references = pool_owner(pool).map(|o| vec![o]);
    Ok(pod)
}

/// The one patch that hands `pod` to `session` (a JSON merge patch): the
/// session's selector labels in place of the warm label, the session as
/// the only (controller) owner, and the pod's `resourceVersion` as a
/// precondition, so that of two concurrent claims one gets 409 Conflict.
/// The pod is marked with the digest of the session Secret it is handed
/// (`secret_hash`), as a cold-built pod is.
pub fn claim_patch(pod: &Pod, session: &NotebookSession, secret_hash: &str) -> Option<serde_json::Value> {
    let resource_version = pod.metadata.resource_version.clone()?;
    let owner = builders::owner_reference(session)?;
    Some(serde_json::json!({
        "metadata": {
            "resourceVersion": resource_version,
            "labels": {
                LABEL_WARM: null,
                LABEL_SESSION: session.name_any(),
                LABEL_NAME: LABEL_NAME_VALUE,
                LABEL_MANAGED_BY: MANAGER,
            },
            "annotations": {builders::ANNOTATION_SECRET_HASH: secret_hash},
            "ownerReferences": [owner],
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::builders::pod_spec_hash;
    use crate::operator::crd::NotebookPoolSpec;

    pub(crate) fn pool() -> NotebookPool {
        let mut pool = NotebookPool::new(
            "warm",
            serde_yaml::from_str::<NotebookPoolSpec>(
                "{replicas: 2, template: {kernel: {image: kern:1, command: [python, k.py]}, idleTimeout: 30m}}",
            )
            .expect("a pool spec"),
        );
        pool.metadata.namespace = Some("ns".into());
        pool.metadata.uid = Some("pool-uid".into());
        pool
    }

    #[test]
    fn a_warm_pod_is_a_session_pod_of_the_template_owned_by_the_pool_in_warm_mode() {
        let pod = build_warm_pod(&pool(), "abc", &BuildConfig::default()).expect("builds");
        assert_eq!(pod.name_any(), "warm-warm-abc");
        let labels = pod.labels();
        assert_eq!(labels.get(LABEL_POOL).map(String::as_str), Some("warm"));
        assert_eq!(labels.get(LABEL_WARM).map(String::as_str), Some("true"));
        assert_eq!(labels.get(LABEL_NAME).map(String::as_str), Some(LABEL_NAME_VALUE));
        assert!(!labels.contains_key(LABEL_SESSION));
        let owner = &pod.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("NotebookPool", "pool-uid", Some(true))
        );
        let spec = pod.spec.as_ref().expect("spec");
        let sidecar = &spec.init_containers.as_ref().expect("sidecar")[0];
        assert_eq!(
            sidecar.args.as_ref().and_then(|a| a.last()).map(String::as_str),
            Some("--warm")
        );
        let secret = spec
            .volumes
            .iter()
            .flatten()
            .find_map(|v| v.secret.as_ref())
            .expect("a secret volume");
        assert_eq!(secret.secret_name.as_deref(), Some("warm-pool-token"));
        assert_eq!(spec.containers[0].image.as_deref(), Some("kern:1"));
        assert_eq!(
            builders::pod_spec_hash(&pod),
            Some(builders::spec_hash(spec).as_str()),
            "the hash is of the warm pod's own spec"
        );
    }

    #[test]
    fn the_claim_patch_moves_labels_and_owner_under_a_resource_version_precondition() {
        let mut pod = build_warm_pod(&pool(), "abc", &BuildConfig::default()).expect("builds");
        let mut session = NotebookSession::new("s1", NotebookSessionSpec::default());
        session.metadata.namespace = Some("ns".into());
        session.metadata.uid = Some("s-uid".into());
        assert!(
            claim_patch(&pod, &session, "h").is_none(),
            "no claim without a resourceVersion"
        );
        pod.metadata.resource_version = Some("42".into());
        let patch = claim_patch(&pod, &session, "h").expect("a patch");
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        assert_eq!(
            patch["metadata"]["annotations"][builders::ANNOTATION_SECRET_HASH],
            "h"
        );
        assert_eq!(patch["metadata"]["labels"][LABEL_WARM], serde_json::Value::Null);
        assert_eq!(patch["metadata"]["labels"][LABEL_SESSION], "s1");
        let owners = patch["metadata"]["ownerReferences"].as_array().expect("a list");
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0]["uid"], "s-uid");
        assert_eq!(owners[0]["kind"], "NotebookSession");
        assert_eq!(owners[0]["controller"], true);
    }

    #[test]
    fn the_warmup_reaches_the_warm_sidecar_and_changing_it_changes_the_pod_template_hash() {
        let config = BuildConfig::default();
        let plain = build_warm_pod(&pool(), "abc", &config).expect("builds");
        let sidecar_env = |pod: &Pod| {
            pod.spec
                .as_ref()
                .expect("spec")
                .init_containers
                .as_ref()
                .expect("sidecar")[0]
                .env
                .clone()
                .unwrap_or_default()
        };
        assert!(sidecar_env(&plain).iter().all(|e| e.name != WARMUP_ENV));
        let mut warmed = pool();
        warmed.spec.template.warmup = Some("import pandas".into());
        let pod = build_warm_pod(&warmed, "abc", &config).expect("builds");
        let env = sidecar_env(&pod);
        let var = env.iter().find(|e| e.name == WARMUP_ENV).expect("the warmup");
        assert_eq!(var.value.as_deref(), Some("import pandas"));
        for pod_env in [sidecar_env(&plain), env.clone()] {
            let ip = pod_env
                .iter()
                .find(|e| e.name == crate::operator::builders::POD_IP_ENV)
                .expect("a warm sidecar knows its pod IP, as a session's does");
            let field = ip.value_from.as_ref().and_then(|v| v.field_ref.as_ref());
            assert_eq!(field.map(|f| f.field_path.as_str()), Some("status.podIP"));
        }
        assert!(
            pod.spec.as_ref().expect("spec").containers[0]
                .env
                .iter()
                .flatten()
                .all(|e| e.name != WARMUP_ENV),
            "the kernel container does not get it"
        );
        assert_ne!(
            pod_spec_hash(&plain),
            pod_spec_hash(&pod),
            "a warmup replaces warm pods"
        );
        let mut other = warmed.clone();
        other.spec.template.warmup = Some("import numpy".into());
        let changed = build_warm_pod(&other, "abc", &config).expect("builds");
        assert_ne!(pod_spec_hash(&pod), pod_spec_hash(&changed), "another warmup too");
        let again = build_warm_pod(&warmed, "xyz", &config).expect("builds");
        assert_eq!(
            pod_spec_hash(&pod),
            pod_spec_hash(&again),
            "the same warmup keeps them"
        );
    }

    #[test]
    fn a_pooled_session_takes_asset_defaults_from_the_template_and_its_own_settings_win() {
        let mut pool = pool();
        pool.spec.template.assets.lease_duration = Some("1h".into());
        let mut session = NotebookSession::new("s1", NotebookSessionSpec::default());
        session.metadata.namespace = Some("ns".into());
        session.metadata.uid = Some("s-uid".into());
        let made = templated(&session, &pool);
        assert_eq!(made.spec.assets.lease_duration(), "1h");
        let mut own = session.clone();
        own.spec.assets.lease_duration = Some("10m".into());
        assert_eq!(templated(&own, &pool).spec.assets.lease_duration(), "10m");
        let bare = templated(&session, &super::tests::pool());
        assert_eq!(bare.spec.assets.lease_duration(), "24h", "neither sets it");
        let valid = builders::validate(&made, &BuildConfig::default());
        assert_eq!(
            valid.map(|v| v.lease_duration),
            Ok(std::time::Duration::from_secs(3600)),
            "what the session's leases last"
        );
    }

    #[test]
    fn a_pooled_session_takes_kernel_and_idle_timeout_from_the_template() {
        let session = NotebookSession::new("s1", NotebookSessionSpec::default());
        let made = templated(&session, &pool());
        assert_eq!(made.spec.kernel.image.as_deref(), Some("kern:1"));
        assert_eq!(made.spec.idle_timeout.as_deref(), Some("30m"));
        let mut own = session.clone();
        own.spec.idle_timeout = Some("5m".into());
        assert_eq!(templated(&own, &pool()).spec.idle_timeout.as_deref(), Some("5m"));
    }

    #[test]
    fn a_pooled_session_takes_the_templates_network_unless_it_sets_its_own() {
        use crate::operator::crd::{EgressPeer, NetworkSpec};
        let mut with_net = pool();
        let peer = EgressPeer {
            cidr: Some("10.3.0.0/16".into()),
            ..EgressPeer::default()
        };
        with_net.spec.template.network = Some(NetworkSpec {
            egress: Some(vec![peer]),
        });
        let session = NotebookSession::new("s1", NotebookSessionSpec::default());
        assert_eq!(
            templated(&session, &with_net).spec.network,
            with_net.spec.template.network
        );
        let mut own = session.clone();
        own.spec.network = Some(NetworkSpec { egress: Some(vec![]) });
        assert_eq!(templated(&own, &with_net).spec.network, own.spec.network);
    }
}
