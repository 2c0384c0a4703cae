//! The NetworkPolicy of a kernel pod, computed from its session (or pool)
//! and the operator's settings. Pure: the controllers apply what this returns.
//!
//! A kernel runs code nobody has read, so its pod may connect to nothing
//! but DNS and the peers its `network.egress` names; only the operator, the
//! gateway and the peers the operator is told to admit (`--policy-ingress-from`)
//! reach its sidecar. Policies only add up in Kubernetes, so this one policy
//! is the pod's whole allowance as long as nothing else selects it.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::builders::{self, SIDECAR_PORT};
use super::crd::{EgressPeer, NotebookPool, NotebookSession};
use super::egress::validate_egress;

/// The label Kubernetes puts on every namespace, naming it.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// DNS, the one egress every kernel pod keeps.
const DNS_PORT: i32 = 53;

/// The operator's network settings.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PolicyConfig {
    /// Give every session (and every pool's warm pods) a NetworkPolicy.
    pub enabled: bool,
    /// Egress of sessions and pools that name none.
    pub default_egress: Vec<EgressPeer>,
    /// Who may reach a sidecar's port: the operator, the gateway and whatever
    /// the chart adds (NetworkPolicy peers, as the chart renders them).
    pub ingress_from: Vec<NetworkPolicyPeer>,
}

impl PolicyConfig {
    /// Enabled, admitting to the sidecars every pod of `namespace` (the
    /// operator's own): the default when the chart passes no peers.
    pub fn for_namespace(namespace: &str) -> Self {
        Self {
            enabled: true,
            default_egress: Vec::new(),
            ingress_from: vec![namespace_peer(namespace, None)],
        }
    }
}

/// The egress peers in force for `session`: its own (after its pool's
/// template was applied, see `pools::desired::templated`), else the operator's.
pub fn egress_of<'a>(session: &'a NotebookSession, config: &'a PolicyConfig) -> &'a [EgressPeer] {
    session
        .spec
        .network
        .as_ref()
        .and_then(|n| n.egress.as_deref())
        .unwrap_or(&config.default_egress)
}

/// The name of a session's policy: the session's own (like its Service).
pub fn policy_name(session: &str) -> String {
    session.to_string()
}

/// The name of the policy of a pool's warm pods.
pub fn pool_policy_name(pool: &str) -> String {
    format!("{pool}-warm")
}

/// The NetworkPolicy of `session`'s pod.
pub fn build_session_policy(session: &NotebookSession, config: &PolicyConfig) -> NetworkPolicy {
    let name = session.name_any();
    build(
        builders::owned_meta(session, policy_name(&name)),
        builders::selector_labels(&name),
        egress_of(session, config),
        config,
    )
}

/// The NetworkPolicy of a pool's warm pods (a claimed pod leaves its
/// selector and comes under its session's policy).
pub fn build_pool_policy(pool: &NotebookPool, config: &PolicyConfig) -> NetworkPolicy {
    let name = pool.name_any();
    let egress = pool
        .spec
        .template
        .network
        .as_ref()
        .and_then(|n| n.egress.as_deref())
        .unwrap_or(&config.default_egress);
    let meta = ObjectMeta {
        name: Some(pool_policy_name(&name)),
        namespace: pool.namespace(),
        labels: Some(super::pools::desired::pool_labels(&name)),
        owner_references: super::pools::desired::pool_owner(pool).map(|o| vec![o]),
        ..ObjectMeta::default()
    };
    build(meta, super::pools::desired::warm_selector(&name), egress, config)
}

fn build(
    metadata: ObjectMeta,
    selector: BTreeMap<String, String>,
    egress: &[EgressPeer],
    config: &PolicyConfig,
) -> NetworkPolicy {
    let dns = NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector::default()),
            pod_selector: Some(LabelSelector::default()),
            ip_block: None,
        }]),
        ports: Some(vec![port(DNS_PORT, "UDP"), port(DNS_PORT, "TCP")]),
    };
    let mut egress_rules = vec![dns];
    egress_rules.extend(egress.iter().map(egress_rule));
    let ingress = NetworkPolicyIngressRule {
        from: Some(config.ingress_from.clone()),
        ports: Some(vec![port(i32::from(SIDECAR_PORT), "TCP")]),
    };
    NetworkPolicy {
        metadata,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            // No peers: nobody (an empty `from` would mean everybody).
            ingress: (!config.ingress_from.is_empty()).then(|| vec![ingress]),
            egress: Some(egress_rules),
        }),
    }
}

fn port(number: i32, protocol: &str) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(number)),
        protocol: Some(protocol.into()),
        end_port: None,
    }
}

fn namespace_peer(namespace: &str, labels: Option<&BTreeMap<String, String>>) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                NAMESPACE_NAME_LABEL.to_string(),
                namespace.to_string(),
            )])),
            match_expressions: None,
        }),
        pod_selector: labels.map(|l| LabelSelector {
            match_labels: Some(l.clone()),
            match_expressions: None,
        }),
        ip_block: None,
    }
}

fn egress_rule(peer: &EgressPeer) -> NetworkPolicyEgressRule {
    let to = match (&peer.cidr, &peer.namespace) {
        (Some(cidr), _) => NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: cidr.clone(),
                except: None,
            }),
            ..NetworkPolicyPeer::default()
        },
        (None, Some(ns)) => namespace_peer(ns, peer.pod_labels.as_ref()),
        // Pods of the session's own namespace.
        (None, None) => NetworkPolicyPeer {
            pod_selector: Some(LabelSelector {
                match_labels: Some(peer.pod_labels.clone().unwrap_or_default()),
                match_expressions: None,
            }),
            ..NetworkPolicyPeer::default()
        },
    };
    NetworkPolicyEgressRule {
        to: Some(vec![to]),
        ports: peer
            .ports
            .as_ref()
            .map(|ports| ports.iter().map(|p| port(p.port, p.protocol.as_str())).collect()),
    }
}

/// `existing` already is what [`build_session_policy`] or
/// [`build_pool_policy`] applies: applying it again would change nothing.
pub fn policy_matches(existing: &NetworkPolicy, desired: &NetworkPolicy) -> bool {
    builders::meta_matches(&existing.metadata, &desired.metadata) && existing.spec == desired.spec
}

/// Parses the `--policy-ingress-from` flag: a JSON list of NetworkPolicy peers.
pub fn parse_peers(text: &str) -> Result<Vec<NetworkPolicyPeer>, String> {
    serde_json::from_str(text).map_err(|err| format!("a JSON list of NetworkPolicy peers: {err}"))
}

/// Parses the `--default-egress` flag: a JSON list of egress peers, checked.
pub fn parse_egress(text: &str) -> Result<Vec<EgressPeer>, String> {
    let peers: Vec<EgressPeer> = serde_json::from_str(text).map_err(|err| {
        format!("a JSON list of egress peers ({{\"cidr\": ...}} or {{\"namespace\": ..., \"podLabels\": ...}}): {err}")
    })?;
    let errors = validate_egress("--default-egress", &peers);
    if errors.is_empty() {
        Ok(peers)
    } else {
        Err(errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::{EgressPort, NetworkSpec, PortProtocol};
    use crate::operator::fixtures;

    fn config() -> PolicyConfig {
        PolicyConfig {
            enabled: true,
            default_egress: vec![EgressPeer {
                cidr: Some("10.9.0.0/16".into()),
                ..EgressPeer::default()
            }],
            ingress_from: vec![namespace_peer(
                "nbo-system",
                Some(&BTreeMap::from([("app".to_string(), "op".to_string())])),
            )],
        }
    }

    fn spec(policy: &NetworkPolicy) -> &NetworkPolicySpec {
        policy.spec.as_ref().expect("spec")
    }

    #[test]
    fn a_session_policy_denies_egress_but_dns_and_admits_only_the_peers_to_the_sidecar() {
        let session = fixtures::session("session-minimal.yaml");
        let policy = build_session_policy(
            &session,
            &PolicyConfig {
                default_egress: vec![],
                ..config()
            },
        );
        let spec = spec(&policy);
        assert_eq!(
            spec.policy_types.as_deref(),
            Some(&["Ingress".to_string(), "Egress".to_string()][..])
        );
        assert_eq!(
            spec.pod_selector.as_ref().and_then(|s| s.match_labels.clone()),
            Some(builders::selector_labels(&session.name_any()))
        );
        let egress = spec.egress.as_ref().expect("egress rules");
        assert_eq!(egress.len(), 1, "DNS only: {egress:?}");
        let ports: Vec<_> = egress[0]
            .ports
            .iter()
            .flatten()
            .map(|p| (p.port.clone(), p.protocol.clone()))
            .collect();
        assert_eq!(
            ports,
            vec![
                (Some(IntOrString::Int(53)), Some("UDP".into())),
                (Some(IntOrString::Int(53)), Some("TCP".into()))
            ]
        );
        let ingress = spec.ingress.as_ref().expect("ingress");
        assert_eq!(ingress.len(), 1);
        assert_eq!(ingress[0].from.as_ref(), Some(&config().ingress_from));
        assert_eq!(
            ingress[0].ports.as_ref().map(|p| p[0].port.clone()),
            Some(Some(IntOrString::Int(i32::from(SIDECAR_PORT))))
        );
        assert_eq!(
            policy.metadata.owner_references,
            builders::owner_reference(&session).map(|o| vec![o])
        );
    }

    #[test]
    fn no_ingress_peers_means_no_ingress_rule_not_an_open_one() {
        let policy = build_session_policy(
            &fixtures::session("session-minimal.yaml"),
            &PolicyConfig::default(),
        );
        assert_eq!(
            spec(&policy).ingress,
            None,
            "an empty `from` would admit everybody"
        );
    }

    #[test]
    fn the_sessions_own_egress_wins_over_the_default_and_an_empty_list_is_dns_only() {
        let mut session = fixtures::session("session-minimal.yaml");
        assert_eq!(egress_of(&session, &config()), &config().default_egress[..]);
        session.spec.network = Some(NetworkSpec { egress: Some(vec![]) });
        assert!(egress_of(&session, &config()).is_empty());
        session.spec.network = Some(NetworkSpec {
            egress: Some(vec![EgressPeer {
                namespace: Some("data".into()),
                pod_labels: Some(BTreeMap::from([("app".to_string(), "db".to_string())])),
                ports: Some(vec![EgressPort {
                    port: 5432,
                    protocol: PortProtocol::Tcp,
                }]),
                ..EgressPeer::default()
            }]),
        });
        let policy = build_session_policy(&session, &config());
        let egress = spec(&policy).egress.as_ref().expect("egress");
        assert_eq!(egress.len(), 2);
        let to = &egress[1].to.as_ref().expect("to")[0];
        assert_eq!(
            to.namespace_selector
                .as_ref()
                .and_then(|s| s.match_labels.clone()),
            Some(BTreeMap::from([(
                NAMESPACE_NAME_LABEL.to_string(),
                "data".to_string()
            )]))
        );
        assert_eq!(
            to.pod_selector.as_ref().and_then(|s| s.match_labels.clone()),
            Some(BTreeMap::from([("app".to_string(), "db".to_string())]))
        );
        assert_eq!(egress[1].ports.as_ref().map(Vec::len), Some(1));
    }

    #[test]
    fn flags_parse_or_say_what_they_want() {
        assert_eq!(parse_egress("[]"), Ok(vec![]));
        assert!(parse_egress(r#"[{"cidr": "300.0.0.0/8"}]"#).is_err());
        assert!(parse_egress("{").unwrap_err().contains("JSON list"));
        let peers = parse_peers(r#"[{"namespaceSelector": {"matchLabels": {"a": "b"}}}]"#).expect("peers");
        assert_eq!(peers.len(), 1);
    }

    #[test]
    fn a_policy_matches_itself_and_not_another_egress() {
        let session = fixtures::session("session-minimal.yaml");
        let a = build_session_policy(&session, &config());
        assert!(policy_matches(&a, &a));
        let b = build_session_policy(
            &session,
            &PolicyConfig {
                default_egress: vec![],
                ..config()
            },
        );
        assert!(!policy_matches(&a, &b));
    }

    #[test]
    fn a_pools_policy_selects_its_unclaimed_warm_pods_with_the_pools_egress() {
        use crate::operator::crd::NotebookPoolSpec;
        use crate::operator::pools::desired::{LABEL_POOL, LABEL_WARM};
        let mut pool = NotebookPool::new("warm", NotebookPoolSpec::default());
        pool.metadata.namespace = Some("agents".into());
        pool.metadata.uid = Some("pool-uid".into());
        let policy = build_pool_policy(&pool, &config());
        assert_eq!(policy.metadata.name.as_deref(), Some("warm-warm"));
        assert_eq!(
            policy
                .metadata
                .owner_references
                .as_ref()
                .map(|o| o[0].uid.as_str()),
            Some("pool-uid")
        );
        let selector = spec(&policy)
            .pod_selector
            .as_ref()
            .and_then(|s| s.match_labels.clone())
            .expect("labels");
        assert_eq!(selector.get(LABEL_POOL).map(String::as_str), Some("warm"));
        assert_eq!(
            selector.get(LABEL_WARM).map(String::as_str),
            Some("true"),
            "a claimed pod leaves it"
        );
        assert_eq!(
            spec(&policy).egress.as_ref().map(Vec::len),
            Some(2),
            "DNS and the default peer"
        );
        pool.spec.template.network = Some(NetworkSpec { egress: Some(vec![]) });
        assert_eq!(
            spec(&build_pool_policy(&pool, &config()))
                .egress
                .as_ref()
                .map(Vec::len),
            Some(1)
        );
    }
}
