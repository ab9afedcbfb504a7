//! Egress and ingress gateways: validation and the rules between gateways.

use ipnet::IpNet;

use super::error::{Error, FieldViolation, Result, Violations};
use super::names::{parse_cidr, parse_ips};
use super::network::Network;
use super::node::{Egress, Ingress, Node};

/// CreateEgressGateway's fields as sent.
#[derive(Debug, Clone, Default)]
pub struct EgressInput {
    /// ranges (each entry may be a comma-separated list)
    pub ranges: Vec<String>,
    /// interface
    pub interface: String,
    /// nat_enabled (None = on)
    pub nat: Option<bool>,
}

/// Validates a Linux interface name: 1-15 bytes, no '/', ':' or white space,
/// not "." or "..".
pub fn parse_interface(field: &str, s: &str) -> Result<String, FieldViolation> {
    let bad = |why: String| Err(FieldViolation::new(field, why));
    if s.is_empty() {
        return bad("is required: the node's interface that reaches the ranges (e.g. eth0)".into());
    }
    if s.len() > 15 {
        return bad(format!(
            "{s:?} is {} bytes; Linux allows at most 15",
            s.len()
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return bad(format!(
            "{s:?} contains {c:?}, which an interface name cannot"
        ));
    }
    if s == "." || s == ".." {
        return bad(format!("{s:?} is not an interface name"));
    }
    Ok(s.to_owned())
}

impl EgressInput {
    /// Validates against the gateway's network: ranges parsed, normalized
    /// (host bits must be clear), de-duplicated and sorted, none inside the
    /// network's own ranges.
    pub fn validate(self, network: &Network) -> Result<Egress> {
        let mut v = Violations::default();
        let mut ranges: Vec<IpNet> = Vec::new();
        let mut i = 0;
        for entry in &self.ranges {
            for part in entry.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let field = format!("ranges[{i}]");
                i += 1;
                let Some(r) = v.check(parse_cidr(&field, part)) else {
                    continue;
                };
                if let Some(own) = network.ranges().find(|own| own.contains(&r)) {
                    v.add(
                        field,
                        format!(
                            "{r} is inside the network's own range {own}; egress ranges are \
                             outside destinations"
                        ),
                    );
                    continue;
                }
                if !ranges.contains(&r) {
                    ranges.push(r);
                }
            }
        }
        if i == 0 {
            v.add(
                "ranges",
                "at least one range is required (e.g. 10.10.10.0/24 or 0.0.0.0/0)",
            );
        }
        let interface = v.check(parse_interface("interface", &self.interface));
        v.finish()?;
        ranges.sort();
        Ok(Egress {
            ranges,
            interface: interface.expect("checked"),
            nat: self.nat.unwrap_or(true),
        })
    }
}

/// ALREADY_EXISTS when another gateway of the network already serves one of
/// the exact same ranges (overlapping, different ranges are fine: WireGuard
/// routes by longest prefix).
pub fn check_egress_unique<'a>(
    others: impl IntoIterator<Item = &'a Node>,
    node_id: &str,
    egress: &Egress,
) -> Result<()> {
    for other in others {
        if other.id == node_id {
            continue;
        }
        let Some(e) = &other.egress else { continue };
        if let Some(r) = egress.ranges.iter().find(|r| e.ranges.contains(r)) {
            return Err(Error::already_exists(
                "ranges",
                format!(
                    "range {r} is already served by egress gateway {:?} ({})",
                    other.name.as_str(),
                    other.id
                ),
            ));
        }
    }
    Ok(())
}

/// Validates CreateIngressGateway's DNS list.
pub fn ingress(ext_client_dns: &[String]) -> Result<Ingress> {
    let mut v = Violations::default();
    let dns = v.check(parse_ips("ext_client_dns", ext_client_dns));
    v.finish()?;
    Ok(Ingress {
        ext_client_dns: dns.expect("checked"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::network::NetworkInput;

    fn net() -> Network {
        NetworkInput {
            name: "corp".into(),
            address_range: "10.101.0.0/16".into(),
            address_range6: "fd00:101::/64".into(),
            ..Default::default()
        }
        .validate(chrono::Utc::now())
        .unwrap()
    }

    fn egress(ranges: &[&str], iface: &str) -> Result<Egress> {
        EgressInput {
            ranges: ranges.iter().map(|s| s.to_string()).collect(),
            interface: iface.into(),
            nat: None,
        }
        .validate(&net())
    }

    #[test]
    fn ranges_are_split_normalized_and_deduplicated() {
        let e = egress(
            &["0.0.0.0/0,::/0", "10.10.10.0/24", " 10.10.10.0/24 "],
            "eth0",
        )
        .unwrap();
        let r: Vec<String> = e.ranges.iter().map(ToString::to_string).collect();
        assert_eq!(r, vec!["0.0.0.0/0", "10.10.10.0/24", "::/0"]);
        assert!(e.nat, "NAT defaults to on");
    }

    #[test]
    fn bad_ranges_and_interfaces_name_their_field() {
        let field = |r: Result<Egress>| match r {
            Err(Error::InvalidArgument(v)) => v[0].field.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(field(egress(&["10.10.10.1/24"], "eth0")), "ranges[0]");
        assert_eq!(
            field(egress(&["10.0.0.0/8", "10.101.4.0/24"], "eth0")),
            "ranges[1]"
        );
        assert_eq!(field(egress(&["fd00:101::/80"], "eth0")), "ranges[0]");
        assert_eq!(field(egress(&[], "eth0")), "ranges");
        assert_eq!(field(egress(&["bogus"], "eth0")), "ranges[0]");
        for bad in ["", "eth 0", "a/b", "a:b", "sixteen-chars-xx", ".."] {
            assert_eq!(
                field(egress(&["10.10.10.0/24"], bad)),
                "interface",
                "{bad:?}"
            );
        }
        assert!(egress(&["10.10.10.0/24"], "fifteen-chars-x").is_ok());
    }
}
