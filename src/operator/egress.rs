//! Checks of egress peers (`network.egress`) that the schema cannot make:
//! CIDR notation and namespace names. Pure, shared by validation of
//! sessions and pools and by the operator's `--default-egress` flag.

use std::net::IpAddr;

use super::crd::EgressPeer;
use crate::util::is_dns1123_label;

/// What the schema cannot check of a list of peers, as sentences naming
/// the field (`field` is its path, e.g. `spec.network.egress`).
pub fn validate_egress(field: &str, peers: &[EgressPeer]) -> Vec<String> {
    let mut errors = Vec::new();
    for (i, peer) in peers.iter().enumerate() {
        match (&peer.cidr, peer.namespace.is_some() || peer.pod_labels.is_some()) {
            (Some(cidr), false) => {
                if let Err(err) = parse_cidr(cidr) {
                    errors.push(format!("{field}[{i}].cidr: {err}"));
                }
            }
            (Some(_), true) => errors.push(format!(
                "{field}[{i}]: a peer is either a cidr, or a namespace and/or podLabels, not both"
            )),
            (None, false) => errors.push(format!(
                "{field}[{i}]: name a cidr, or a namespace and/or podLabels"
            )),
            (None, true) => {
                if let Some(ns) = &peer.namespace {
                    if !is_dns1123_label(ns) {
                        errors.push(format!("{field}[{i}].namespace {ns:?} is not a namespace name"));
                    }
                }
            }
        }
    }
    errors
}

/// `a.b.c.d/n` or `x::y/n`, with the address part having no bits past the
/// prefix set (what NetworkPolicy's ipBlock accepts).
pub fn parse_cidr(text: &str) -> Result<(IpAddr, u8), String> {
    let (addr, prefix) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not in CIDR notation (address/prefix, e.g. 10.0.0.0/8)"))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} in {text:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| format!("the prefix of {text:?} must be a number from 0 to {max}"))?;
    Ok((addr, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_peers_are_reported_with_their_field() {
        let peers = vec![
            EgressPeer {
                cidr: Some("10.0.0.0".into()),
                ..EgressPeer::default()
            },
            EgressPeer {
                cidr: Some("10.0.0.0/33".into()),
                ..EgressPeer::default()
            },
            EgressPeer {
                cidr: Some("nope/8".into()),
                ..EgressPeer::default()
            },
            EgressPeer::default(),
            EgressPeer {
                cidr: Some("10.0.0.0/8".into()),
                namespace: Some("x".into()),
                ..EgressPeer::default()
            },
            EgressPeer {
                namespace: Some("Not_A_Name".into()),
                ..EgressPeer::default()
            },
            EgressPeer {
                cidr: Some("2001:db8::/48".into()),
                ..EgressPeer::default()
            },
        ];
        let errors = validate_egress("spec.network.egress", &peers);
        assert_eq!(errors.len(), 6, "{errors:?}");
        assert!(errors[0].starts_with("spec.network.egress[0].cidr"), "{errors:?}");
        assert!(errors[1].contains("0 to 32"), "{errors:?}");
        assert!(errors[5].contains("Not_A_Name"), "{errors:?}");
    }
}
