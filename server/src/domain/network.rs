//! Networks: validation of what operators send and the rules of change.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::error::{Error, Result, Violations, shown};
use super::names::{DnsLabel, parse_ips, parse_range4, parse_range6};

/// Default PersistentKeepalive, seconds.
pub const DEFAULT_KEEPALIVE: u32 = 20;
/// Default interface MTU.
pub const DEFAULT_MTU: u32 = 1420;
/// Default WireGuard listen port.
pub const DEFAULT_LISTEN_PORT: u32 = 51821;
/// Smallest MTU accepted (IPv6's minimum link MTU).
pub const MIN_MTU: u32 = 1280;
/// Largest MTU accepted.
pub const MAX_MTU: u32 = 9000;
/// Largest keepalive WireGuard accepts.
pub const MAX_KEEPALIVE: u32 = 65535;

/// A stored network.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Network {
    /// The id.
    pub name: DnsLabel,
    /// IPv4 range.
    pub range4: Option<Ipv4Net>,
    /// IPv6 range.
    pub range6: Option<Ipv6Net>,
    /// Default PersistentKeepalive, seconds (0 = off).
    pub keepalive: u32,
    /// Default MTU.
    pub mtu: u32,
    /// Default listen port.
    pub listen_port: u32,
    /// Default DNS servers of external clients.
    pub ext_client_dns: Vec<IpAddr>,
    /// Upstream resolvers.
    pub nameservers: Vec<IpAddr>,
    /// Creation time.
    pub create_time: DateTime<Utc>,
    /// Last change.
    pub update_time: DateTime<Utc>,
}

impl Network {
    /// The network's ranges, IPv4 first.
    pub fn ranges(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.range4
            .map(IpNet::V4)
            .into_iter()
            .chain(self.range6.map(IpNet::V6))
    }

    /// The first of this network's ranges that overlaps one of `other`'s.
    pub fn overlap_with(&self, other: &Network) -> Option<(IpNet, IpNet)> {
        self.ranges().find_map(|a| {
            other
                .ranges()
                .find(|b| a.contains(b) || b.contains(&a))
                .map(|b| (a, b))
        })
    }
}

/// The fields of CreateNetwork as sent, before validation.
#[derive(Debug, Clone, Default)]
pub struct NetworkInput {
    /// name
    pub name: String,
    /// address_range
    pub address_range: String,
    /// address_range6
    pub address_range6: String,
    /// default_keepalive (0 = default)
    pub keepalive: u32,
    /// default_mtu (0 = default)
    pub mtu: u32,
    /// default_listen_port (0 = default)
    pub listen_port: u32,
    /// default_ext_client_dns
    pub ext_client_dns: Vec<String>,
    /// nameservers
    pub nameservers: Vec<String>,
}

/// Prefix of field names in violations, as the request nests them.
const F: &str = "network";

impl NetworkInput {
    /// Validates a create request into a network stamped `now`; reports every
    /// bad field at once.
    pub fn validate(self, now: DateTime<Utc>) -> Result<Network> {
        let mut v = Violations::default();
        let name = v.check(DnsLabel::parse(
            &format!("{F}.name"),
            &self.name,
            DnsLabel::NETWORK_MAX,
        ));
        let range4 = (!self.address_range.is_empty())
            .then(|| {
                v.check(parse_range4(
                    &format!("{F}.address_range"),
                    &self.address_range,
                ))
            })
            .flatten();
        let range6 = (!self.address_range6.is_empty())
            .then(|| {
                v.check(parse_range6(
                    &format!("{F}.address_range6"),
                    &self.address_range6,
                ))
            })
            .flatten();
        if self.address_range.is_empty() && self.address_range6.is_empty() {
            v.add(
                format!("{F}.address_range"),
                "at least one of address_range (IPv4) and address_range6 (IPv6) is required",
            );
        }
        let keepalive = if self.keepalive == 0 {
            DEFAULT_KEEPALIVE
        } else {
            self.keepalive
        };
        let mtu = if self.mtu == 0 { DEFAULT_MTU } else { self.mtu };
        let listen_port = if self.listen_port == 0 {
            DEFAULT_LISTEN_PORT
        } else {
            self.listen_port
        };
        check_settings(&mut v, keepalive, mtu, listen_port);
        let ext_client_dns = v.check(parse_ips(
            &format!("{F}.default_ext_client_dns"),
            &self.ext_client_dns,
        ));
        let nameservers = v.check(parse_ips(&format!("{F}.nameservers"), &self.nameservers));
        v.finish()?;
        Ok(Network {
            name: name.expect("checked"),
            range4,
            range6,
            keepalive,
            mtu,
            listen_port,
            ext_client_dns: ext_client_dns.expect("checked"),
            nameservers: nameservers.expect("checked"),
            create_time: now,
            update_time: now,
        })
    }
}

fn check_settings(v: &mut Violations, keepalive: u32, mtu: u32, listen_port: u32) {
    if keepalive > MAX_KEEPALIVE {
        v.add(
            format!("{F}.default_keepalive"),
            format!("{keepalive} is more than {MAX_KEEPALIVE} seconds"),
        );
    }
    if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
        v.add(
            format!("{F}.default_mtu"),
            format!("{mtu} is outside {MIN_MTU}..={MAX_MTU}"),
        );
    }
    if !(1..=65535).contains(&listen_port) {
        v.add(
            format!("{F}.default_listen_port"),
            format!("{listen_port} is not a port (1-65535)"),
        );
    }
}

/// Fields UpdateNetwork may change.
pub const UPDATABLE: &[&str] = &[
    "default_keepalive",
    "default_mtu",
    "default_listen_port",
    "default_ext_client_dns",
    "nameservers",
];
const IMMUTABLE: &[&str] = &[
    "name",
    "address_range",
    "address_range6",
    "create_time",
    "update_time",
];

/// A validated UpdateNetwork: the new values of the named fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkPatch {
    /// New default keepalive (0 turns keepalive off).
    pub keepalive: Option<u32>,
    /// New default MTU.
    pub mtu: Option<u32>,
    /// New default listen port.
    pub listen_port: Option<u32>,
    /// New default external-client DNS.
    pub ext_client_dns: Option<Vec<IpAddr>>,
    /// New upstream resolvers.
    pub nameservers: Option<Vec<IpAddr>>,
}

impl NetworkPatch {
    /// Builds a patch from the request's values and mask paths. An empty mask
    /// means every field that is set to a non-default value (AIP-134).
    pub fn from_request(input: &NetworkInput, mask: &[String]) -> Result<Self> {
        let mut v = Violations::default();
        let paths: Vec<&str> = if mask.is_empty() {
            let mut p = Vec::new();
            if input.keepalive != 0 {
                p.push("default_keepalive");
            }
            if input.mtu != 0 {
                p.push("default_mtu");
            }
            if input.listen_port != 0 {
                p.push("default_listen_port");
            }
            if !input.ext_client_dns.is_empty() {
                p.push("default_ext_client_dns");
            }
            if !input.nameservers.is_empty() {
                p.push("nameservers");
            }
            if p.is_empty() {
                v.add(
                    "update_mask",
                    "nothing to update: name the fields to change",
                );
            }
            p
        } else {
            mask.iter().map(String::as_str).collect()
        };
        let mut patch = NetworkPatch::default();
        for path in paths {
            match path {
                "default_keepalive" => patch.keepalive = Some(input.keepalive),
                "default_mtu" => patch.mtu = Some(input.mtu),
                "default_listen_port" => patch.listen_port = Some(input.listen_port),
                "default_ext_client_dns" => {
                    patch.ext_client_dns = v.check(parse_ips(
                        &format!("{F}.default_ext_client_dns"),
                        &input.ext_client_dns,
                    ))
                }
                "nameservers" => {
                    patch.nameservers =
                        v.check(parse_ips(&format!("{F}.nameservers"), &input.nameservers))
                }
                p if IMMUTABLE.contains(&p) => v.add(
                    "update_mask",
                    format!("{p} cannot be changed after creation"),
                ),
                p => v.add(
                    "update_mask",
                    format!(
                        "unknown field {}; updatable fields are {}",
                        shown(p),
                        UPDATABLE.join(", ")
                    ),
                ),
            }
        }
        v.finish()?;
        Ok(patch)
    }

    /// Applies the patch to `net`, checking the resulting settings.
    pub fn apply(&self, net: &mut Network, now: DateTime<Utc>) -> Result<()> {
        let mut next = net.clone();
        if let Some(k) = self.keepalive {
            next.keepalive = k;
        }
        if let Some(m) = self.mtu {
            next.mtu = m;
        }
        if let Some(p) = self.listen_port {
            next.listen_port = p;
        }
        if let Some(d) = &self.ext_client_dns {
            next.ext_client_dns = d.clone();
        }
        if let Some(n) = &self.nameservers {
            next.nameservers = n.clone();
        }
        let mut v = Violations::default();
        check_settings(&mut v, next.keepalive, next.mtu, next.listen_port);
        v.finish()?;
        next.update_time = now;
        *net = next;
        Ok(())
    }
}

/// FAILED_PRECONDITION when `new` overlaps a network of `existing`.
pub fn check_no_overlap<'a>(
    new: &Network,
    existing: impl IntoIterator<Item = &'a Network>,
) -> Result<()> {
    for other in existing {
        if other.name == new.name {
            continue;
        }
        if let Some((a, b)) = new.overlap_with(other) {
            return Err(Error::FailedPrecondition(format!(
                "range {a} overlaps range {b} of network {:?}",
                other.name.as_str()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, r4: &str, r6: &str) -> NetworkInput {
        NetworkInput {
            name: name.into(),
            address_range: r4.into(),
            address_range6: r6.into(),
            ..Default::default()
        }
    }

    fn fields(e: Error) -> Vec<String> {
        match e {
            Error::InvalidArgument(v) => v.into_iter().map(|f| f.field).collect(),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn defaults_apply_on_create() {
        let n = input("corp", "10.101.0.0/16", "")
            .validate(Utc::now())
            .unwrap();
        assert_eq!(
            (n.keepalive, n.mtu, n.listen_port),
            (DEFAULT_KEEPALIVE, DEFAULT_MTU, DEFAULT_LISTEN_PORT)
        );
        assert!(n.range6.is_none());
    }

    #[test]
    fn every_bad_field_is_reported() {
        let mut i = input("Bad_Name", "10.0.0.1/24", "fd00::/127");
        i.mtu = 100;
        i.nameservers = vec!["not-an-ip".into()];
        let f = fields(i.validate(Utc::now()).unwrap_err());
        assert_eq!(
            f,
            vec![
                "network.name",
                "network.address_range",
                "network.address_range6",
                "network.default_mtu",
                "network.nameservers[0]"
            ]
        );
    }

    #[test]
    fn a_range_is_required() {
        let f = fields(input("a", "", "").validate(Utc::now()).unwrap_err());
        assert_eq!(f, vec!["network.address_range"]);
    }

    #[test]
    fn overlap_names_the_other_network() {
        let a = input("a", "10.0.0.0/16", "").validate(Utc::now()).unwrap();
        let b = input("b", "10.0.5.0/24", "").validate(Utc::now()).unwrap();
        let c = input("c", "10.1.0.0/16", "fd00::/64")
            .validate(Utc::now())
            .unwrap();
        match check_no_overlap(&b, [&a, &c]) {
            Err(Error::FailedPrecondition(m)) => assert!(m.contains("\"a\""), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(check_no_overlap(&c, [&a]).is_ok());
    }

    #[test]
    fn patch_from_mask_and_implicit_mask() {
        let mut i = input("a", "", "");
        i.mtu = 1380;
        let p = NetworkPatch::from_request(&i, &[]).unwrap();
        assert_eq!(p.mtu, Some(1380));
        assert_eq!(p.keepalive, None);
        let p = NetworkPatch::from_request(&i, &["default_keepalive".into()]).unwrap();
        assert_eq!(p.keepalive, Some(0));
        assert!(NetworkPatch::from_request(&i, &["address_range".into()]).is_err());
        assert!(NetworkPatch::from_request(&i, &["bogus".into()]).is_err());
        assert!(NetworkPatch::from_request(&input("a", "", ""), &[]).is_err());
    }

    #[test]
    fn patch_checks_resulting_settings() {
        let mut n = input("a", "10.0.0.0/24", "").validate(Utc::now()).unwrap();
        let before = n.clone();
        let p = NetworkPatch {
            mtu: Some(0),
            ..Default::default()
        };
        assert!(p.apply(&mut n, Utc::now()).is_err());
        assert_eq!(n, before);
    }
}
