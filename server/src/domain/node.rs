//! Nodes: what an agent registers and what an operator may change.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::error::{FieldViolation, Result, Violations, shown};
use super::host::HostReport;
use super::names::DnsLabel;
use super::policy::{Tag, parse_tags};

/// A WireGuard key (public or private): 32 bytes, written as base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WgKey(pub [u8; 32]);

impl TryFrom<String> for WgKey {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        WgKey::parse("key", &s).map_err(|v| v.description)
    }
}

impl From<WgKey> for String {
    fn from(k: WgKey) -> String {
        k.to_string()
    }
}

impl WgKey {
    /// Parses base64 of exactly 32 bytes.
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldViolation> {
        let bytes = STANDARD.decode(s.trim()).map_err(|_| {
            FieldViolation::new(field, "not a WireGuard key: expected base64 of 32 bytes")
        })?;
        let arr: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            FieldViolation::new(
                field,
                format!(
                    "a WireGuard key is 32 bytes; this one decodes to {}",
                    b.len()
                ),
            )
        })?;
        Ok(WgKey(arr))
    }
}

impl fmt::Display for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for WgKey {
    // Public keys are not secret; private keys never use this type's Debug
    // (they live in `PrivateKey`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgKey({self})")
    }
}

/// `host:port` a peer dials: an IP address (IPv6 in brackets) or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Endpoint {
    /// IP address or DNS name.
    pub host: String,
    /// UDP port.
    pub port: u16,
}

impl Endpoint {
    /// Parses `host:port`.
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldViolation> {
        let bad = |why: &str| FieldViolation::new(field, format!("{}: {why}", shown(s)));
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| bad("expected host:port (IPv6 as [addr]:port)"))?;
        let port: u32 = port.parse().map_err(|_| bad("the port is not a number"))?;
        if !(1..=65535).contains(&port) {
            return Err(bad("the port must be between 1 and 65535"));
        }
        let host = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Ipv6Addr::from_str(inner).map_err(|_| bad("not an IPv6 address in brackets"))?;
            host.to_owned()
        } else if host.contains(':') {
            return Err(bad("write IPv6 endpoints as [addr]:port"));
        } else if Ipv4Addr::from_str(host).is_ok() || is_dns_name(host) {
            host.to_ascii_lowercase()
        } else {
            return Err(bad("the host is neither an IP address nor a DNS name"));
        };
        Ok(Endpoint {
            host,
            port: port as u16,
        })
    }
}

impl TryFrom<String> for Endpoint {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Endpoint::parse("endpoint", &s).map_err(|v| v.description)
    }
}

impl From<Endpoint> for String {
    fn from(e: Endpoint) -> String {
        e.to_string()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A DNS name: dot-separated labels of letters, digits and '-', each 1-63
/// characters not starting or ending with '-', at most 253 in all.
pub fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        // A name made only of digits and dots would be a malformed IPv4.
        && !s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// Parses a port field (1-65535).
pub fn parse_port(field: &str, p: u32) -> Result<u16, FieldViolation> {
    if (1..=65535).contains(&p) {
        Ok(p as u16)
    } else {
        Err(FieldViolation::new(
            field,
            format!("{p} is not a port: it must be between 1 and 65535"),
        ))
    }
}

/// Longest `os` string kept.
pub const OS_MAX: usize = 64;

/// Egress gateway settings of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Egress {
    /// Outside ranges, normalized, de-duplicated and sorted.
    pub ranges: Vec<IpNet>,
    /// Interface that reaches them.
    pub interface: String,
    /// Masquerade out of `interface`.
    pub nat: bool,
    /// Its rank among gateways serving the same range (lower wins); None:
    /// its ranges are its alone (no other gateway may serve one of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
    /// Whether, once healthy for `hold_seconds`, it takes a range back
    /// from a primary with a worse metric.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub preempt: bool,
    /// How long it must have been healthy before it takes a range back.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hold_seconds: u32,
    /// Its ranges another gateway is primary for (set by the server):
    /// it is ready to forward into them (its own rules are in place), but
    /// nobody routes them through it. Sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub standby: Vec<IpNet>,
}

fn yes() -> bool {
    true
}

fn is_yes(b: &bool) -> bool {
    *b
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Default for Egress {
    /// No ranges, no interface, NAT on, no metric (its ranges its alone),
    /// preempting with no hold, standby for nothing.
    fn default() -> Self {
        Egress {
            ranges: Vec::new(),
            interface: String::new(),
            nat: true,
            metric: None,
            preempt: true,
            hold_seconds: 0,
            standby: Vec::new(),
        }
    }
}

impl Egress {
    /// The ranges others route through it: those it is primary for.
    pub fn routed(&self) -> impl Iterator<Item = &IpNet> + '_ {
        self.ranges
            .iter()
            .filter(|r| self.standby.binary_search(r).is_err())
    }
}

/// Ingress gateway settings of a node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Ingress {
    /// DNS for its external clients; overrides the network default.
    pub ext_client_dns: Vec<IpAddr>,
}

/// A stored node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Id.
    pub id: String,
    /// Its network.
    pub network: DnsLabel,
    /// Name, unique in the network.
    pub name: DnsLabel,
    /// WireGuard public key, unique in the network.
    pub public_key: WgKey,
    /// Where peers dial it; None behind NAT.
    pub endpoint: Option<Endpoint>,
    /// WireGuard listen port.
    pub listen_port: u16,
    /// Overlay IPv4 address.
    pub address: Option<Ipv4Addr>,
    /// Overlay IPv6 address.
    pub address6: Option<Ipv6Addr>,
    /// Reported OS.
    pub os: String,
    /// Keepalive others use towards it (0 = network default).
    pub keepalive: u32,
    /// Egress gateway, when it is one.
    pub egress: Option<Egress>,
    /// Ingress gateway, when it is one.
    pub ingress: Option<Ingress>,
    /// Agent holds a stream open.
    pub connected: bool,
    /// Last time the agent was heard from.
    pub last_seen: Option<DateTime<Utc>>,
    /// Revision the agent reported applied.
    pub applied_revision: u64,
    /// Revision of the node's current config.
    #[serde(default)]
    pub config_revision: u64,
    /// Registration time.
    pub create_time: DateTime<Utc>,
    /// Last change.
    pub update_time: DateTime<Utc>,
    /// The WireGuard interface the agent reported; None until it does
    /// (configs then name the default, see `config::interface_name`).
    #[serde(default)]
    pub wireguard_interface: Option<String>,
    /// The host's interfaces and routes as the agent last reported them.
    /// Not in the event log: reports change without events (they change no
    /// config) and can be large.
    #[serde(skip)]
    pub host: Option<HostReport>,
    /// Why the agent's last apply failed; None when it succeeded.
    #[serde(default)]
    pub apply_error: Option<String>,
    /// The revision whose apply failed; 0 when none.
    #[serde(default)]
    pub failed_revision: u64,
    /// Tags the access policy selects it by, sorted without duplicates.
    #[serde(default)]
    pub tags: Vec<Tag>,
}

/// A validated registration, before addresses are allocated.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Network to join.
    pub network: DnsLabel,
    /// Node name.
    pub name: DnsLabel,
    /// Public key.
    pub public_key: WgKey,
    /// Endpoint, if any.
    pub endpoint: Option<Endpoint>,
    /// Listen port; None = the network's default.
    pub listen_port: Option<u16>,
    /// Reported OS.
    pub os: String,
}

/// The fields of AgentService.Register as sent.
#[derive(Debug, Clone, Default)]
pub struct RegistrationInput {
    /// network
    pub network: String,
    /// name
    pub name: String,
    /// public_key
    pub public_key: String,
    /// endpoint
    pub endpoint: String,
    /// listen_port (None when unset)
    pub listen_port: Option<u32>,
    /// os
    pub os: String,
}

impl RegistrationInput {
    /// Validates every field, reporting all violations at once.
    pub fn validate(self) -> Result<Registration> {
        let mut v = Violations::default();
        let network = v.check(DnsLabel::parse(
            "network",
            &self.network,
            DnsLabel::NETWORK_MAX,
        ));
        let name = v.check(DnsLabel::parse("name", &self.name, DnsLabel::LABEL_MAX));
        let public_key = v.check(WgKey::parse("public_key", &self.public_key));
        let endpoint = if self.endpoint.is_empty() {
            Some(None)
        } else {
            v.check(Endpoint::parse("endpoint", &self.endpoint))
                .map(Some)
        };
        let listen_port = match self.listen_port {
            None => Some(None),
            Some(p) => v.check(parse_port("listen_port", p)).map(Some),
        };
        if self.os.chars().count() > OS_MAX {
            v.add("os", format!("at most {OS_MAX} characters"));
        }
        v.check(crate::domain::names::check_plain_text("os", &self.os));
        v.finish()?;
        Ok(Registration {
            network: network.expect("checked"),
            name: name.expect("checked"),
            public_key: public_key.expect("checked"),
            endpoint: endpoint.expect("checked"),
            listen_port: listen_port.expect("checked"),
            os: self.os,
        })
    }
}

/// Fields UpdateNode may change.
pub const UPDATABLE: &[&str] = &[
    "name",
    "endpoint",
    "listen_port",
    "persistent_keepalive",
    "public_key",
    "tags",
];

/// A validated UpdateNode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePatch {
    /// New name.
    pub name: Option<DnsLabel>,
    /// New endpoint (Some(None) clears it).
    pub endpoint: Option<Option<Endpoint>>,
    /// New listen port.
    pub listen_port: Option<u16>,
    /// New keepalive.
    pub keepalive: Option<u32>,
    /// New public key (rotation).
    pub public_key: Option<WgKey>,
    /// New tags (the whole list).
    pub tags: Option<Vec<Tag>>,
}

/// The node fields of UpdateNode as sent.
#[derive(Debug, Clone, Default)]
pub struct NodeUpdateInput {
    /// name
    pub name: String,
    /// endpoint
    pub endpoint: String,
    /// listen_port
    pub listen_port: u32,
    /// persistent_keepalive
    pub keepalive: u32,
    /// public_key
    pub public_key: String,
    /// tags
    pub tags: Vec<String>,
}

impl NodePatch {
    /// Validates the masked fields; the mask is required.
    pub fn from_request(input: &NodeUpdateInput, mask: &[String]) -> Result<Self> {
        let mut v = Violations::default();
        let mut p = NodePatch::default();
        if mask.is_empty() {
            v.add(
                "update_mask",
                format!(
                    "required: name the fields to change ({})",
                    UPDATABLE.join(", ")
                ),
            );
        }
        for path in mask {
            match path.as_str() {
                "name" => {
                    p.name = v.check(DnsLabel::parse(
                        "node.name",
                        &input.name,
                        DnsLabel::LABEL_MAX,
                    ))
                }
                "endpoint" => {
                    p.endpoint = if input.endpoint.is_empty() {
                        Some(None)
                    } else {
                        v.check(Endpoint::parse("node.endpoint", &input.endpoint))
                            .map(Some)
                    }
                }
                "listen_port" => {
                    p.listen_port = v.check(parse_port("node.listen_port", input.listen_port))
                }
                "persistent_keepalive" => {
                    if input.keepalive > 65535 {
                        v.add("node.persistent_keepalive", "at most 65535 seconds");
                    } else {
                        p.keepalive = Some(input.keepalive);
                    }
                }
                "public_key" => {
                    p.public_key = v.check(WgKey::parse("node.public_key", &input.public_key))
                }
                "tags" => p.tags = v.check(parse_tags("node.tags", &input.tags)),
                other => v.add(
                    "update_mask",
                    format!(
                        "{} cannot be updated; updatable fields are {}",
                        shown(other),
                        UPDATABLE.join(", ")
                    ),
                ),
            }
        }
        v.finish()?;
        Ok(p)
    }

    /// Applies the patch.
    pub fn apply(&self, node: &mut Node, now: DateTime<Utc>) {
        if let Some(n) = &self.name {
            node.name = n.clone();
        }
        if let Some(e) = &self.endpoint {
            node.endpoint = e.clone();
        }
        if let Some(p) = self.listen_port {
            node.listen_port = p;
        }
        if let Some(k) = self.keepalive {
            node.keepalive = k;
        }
        if let Some(k) = self.public_key {
            node.public_key = k;
        }
        if let Some(t) = &self.tags {
            node.tags = t.clone();
        }
        node.update_time = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

    #[test]
    fn wg_keys_must_be_32_bytes_of_base64() {
        assert_eq!(WgKey::parse("k", KEY).unwrap().to_string(), KEY);
        assert!(WgKey::parse("k", "abc").is_err());
        assert!(WgKey::parse("k", "AAAA").is_err());
        assert!(WgKey::parse("k", "").is_err());
    }

    #[test]
    fn endpoints() {
        for ok in [
            "1.2.3.4:51821",
            "[fd00::1]:1",
            "vpn.example.com:65535",
            "Host-1:5",
        ] {
            assert!(Endpoint::parse("e", ok).is_ok(), "{ok}");
        }
        for bad in [
            "1.2.3.4",
            "1.2.3.4:0",
            "1.2.3.4:65536",
            "fd00::1:80",
            "[nope]:80",
            "bad host:80",
            "-a.com:80",
            "300.1.1.1:80",
            ":80",
        ] {
            assert!(Endpoint::parse("e", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn registration_reports_every_bad_field() {
        let r = RegistrationInput {
            network: "corp".into(),
            name: "Bad Name".into(),
            public_key: "nope".into(),
            endpoint: "x".into(),
            listen_port: Some(0),
            os: "linux".into(),
        }
        .validate();
        let Err(super::super::Error::InvalidArgument(v)) = r else {
            panic!("{r:?}")
        };
        let f: Vec<_> = v.iter().map(|x| x.field.as_str()).collect();
        assert_eq!(f, vec!["name", "public_key", "endpoint", "listen_port"]);
    }

    #[test]
    fn os_is_counted_in_characters_and_long_values_are_not_echoed_whole() {
        let reg = |os: String, endpoint: String| {
            RegistrationInput {
                network: "corp".into(),
                name: "n".into(),
                public_key: KEY.into(),
                endpoint,
                listen_port: None,
                os,
            }
            .validate()
        };
        assert!(reg("ü".repeat(OS_MAX), String::new()).is_ok());
        let Err(super::super::Error::InvalidArgument(v)) =
            reg("ü".repeat(OS_MAX + 1), format!("{}:1", "h".repeat(100_000)))
        else {
            panic!()
        };
        assert_eq!(v[0].field, "endpoint");
        assert!(v[0].description.len() < 200, "{}", v[0].description);
        assert!(
            v[0].description.contains("(100002 bytes)"),
            "{}",
            v[0].description
        );
        assert_eq!(v[1].field, "os");
    }

    #[test]
    fn patch_needs_a_mask_and_known_fields() {
        let i = NodeUpdateInput {
            name: "b".into(),
            ..Default::default()
        };
        assert!(NodePatch::from_request(&i, &[]).is_err());
        assert!(NodePatch::from_request(&i, &["address".into()]).is_err());
        let p = NodePatch::from_request(&i, &["name".into(), "endpoint".into()]).unwrap();
        assert_eq!(p.name.unwrap().as_str(), "b");
        assert_eq!(p.endpoint, Some(None));
        assert!(NodePatch::from_request(&i, &["listen_port".into()]).is_err());
    }
}
