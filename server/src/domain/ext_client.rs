//! External clients: plain WireGuard devices behind an ingress gateway.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::error::{Result, Violations, shown};
use super::names::{DnsLabel, parse_ips};
use super::node::WgKey;
use super::policy::{Tag, parse_tags};

/// A stored external client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtClient {
    /// Id.
    pub id: String,
    /// Its network.
    pub network: DnsLabel,
    /// Name, unique among the network's nodes and clients.
    pub name: DnsLabel,
    /// The ingress gateway it connects to.
    pub ingress_node_id: String,
    /// WireGuard public key.
    pub public_key: WgKey,
    /// The private key sealed by the server's secret (None when the caller
    /// supplied the public key). Never serialized.
    #[serde(skip)]
    pub sealed_private_key: Option<Vec<u8>>,
    /// Overlay IPv4 address.
    pub address: Option<Ipv4Addr>,
    /// Overlay IPv6 address.
    pub address6: Option<Ipv6Addr>,
    /// DNS override.
    pub dns: Vec<IpAddr>,
    /// Whether it is a peer of its ingress gateway.
    pub enabled: bool,
    /// Revision of the last change to its config.
    pub config_revision: u64,
    /// Revision of the config last downloaded (0: never).
    pub downloaded_revision: u64,
    /// Creation time.
    pub create_time: DateTime<Utc>,
    /// Last change.
    pub update_time: DateTime<Utc>,
    /// Tags the access policy selects it by, sorted without duplicates.
    #[serde(default)]
    pub tags: Vec<Tag>,
}

impl ExtClient {
    /// The config changed since it was last downloaded.
    pub fn config_stale(&self) -> bool {
        self.downloaded_revision != 0 && self.downloaded_revision < self.config_revision
    }
}

/// CreateExtClient's fields as sent.
#[derive(Debug, Clone, Default)]
pub struct ExtClientInput {
    /// network
    pub network: String,
    /// ingress_node_id
    pub ingress_node_id: String,
    /// name (empty: generated)
    pub name: String,
    /// public_key (empty: the server generates a key pair)
    pub public_key: String,
    /// dns
    pub dns: Vec<String>,
    /// tags
    pub tags: Vec<String>,
}

/// A validated CreateExtClient.
#[derive(Debug, Clone)]
pub struct NewExtClient {
    /// Network.
    pub network: DnsLabel,
    /// Ingress node id.
    pub ingress_node_id: String,
    /// Name.
    pub name: DnsLabel,
    /// Public key given by the caller.
    pub public_key: Option<WgKey>,
    /// DNS override.
    pub dns: Vec<IpAddr>,
    /// Tags, sorted without duplicates.
    pub tags: Vec<Tag>,
}

impl ExtClientInput {
    /// Validates every field; generates a name when none is given.
    pub fn validate(self) -> Result<NewExtClient> {
        let mut v = Violations::default();
        let network = v.check(DnsLabel::parse(
            "network",
            &self.network,
            DnsLabel::NETWORK_MAX,
        ));
        if self.ingress_node_id.is_empty() {
            v.add("ingress_node_id", "is required");
        }
        let name = if self.name.is_empty() {
            Some(generated_name())
        } else {
            v.check(DnsLabel::parse("name", &self.name, DnsLabel::LABEL_MAX))
        };
        let public_key = if self.public_key.is_empty() {
            Some(None)
        } else {
            v.check(WgKey::parse("public_key", &self.public_key))
                .map(Some)
        };
        let dns = v.check(parse_ips("dns", &self.dns));
        let tags = v.check(parse_tags("tags", &self.tags));
        v.finish()?;
        Ok(NewExtClient {
            network: network.expect("checked"),
            ingress_node_id: self.ingress_node_id,
            name: name.expect("checked"),
            public_key: public_key.expect("checked"),
            dns: dns.expect("checked"),
            tags: tags.expect("checked"),
        })
    }
}

/// A name for a client created without one: `client-` and 6 hex digits.
pub fn generated_name() -> DnsLabel {
    let n: u32 = rand::random::<u32>() & 0xff_ffff;
    DnsLabel::parse("name", &format!("client-{n:06x}"), DnsLabel::LABEL_MAX)
        .expect("generated names are labels")
}

/// Fields UpdateExtClient may change.
pub const UPDATABLE: &[&str] = &["name", "dns", "enabled", "tags"];

/// A validated UpdateExtClient.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtClientPatch {
    /// New name.
    pub name: Option<DnsLabel>,
    /// New DNS override.
    pub dns: Option<Vec<IpAddr>>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// New tags (the whole list).
    pub tags: Option<Vec<Tag>>,
}

impl ExtClientPatch {
    /// Validates the masked fields; the mask is required.
    pub fn from_request(
        name: &str,
        dns: &[String],
        enabled: bool,
        tags: &[String],
        mask: &[String],
    ) -> Result<Self> {
        let mut v = Violations::default();
        let mut p = ExtClientPatch::default();
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
                        "ext_client.name",
                        name,
                        DnsLabel::LABEL_MAX,
                    ))
                }
                "dns" => p.dns = v.check(parse_ips("ext_client.dns", dns)),
                "enabled" => p.enabled = Some(enabled),
                "tags" => p.tags = v.check(parse_tags("ext_client.tags", tags)),
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

    /// Whether applying the patch changes what the client's ingress gateway
    /// or the rest of the network sees (not just the client's own file).
    pub fn changes_network(&self, c: &ExtClient) -> bool {
        self.name.as_ref().is_some_and(|n| *n != c.name)
            || self.enabled.is_some_and(|e| e != c.enabled)
            || self.tags.as_ref().is_some_and(|t| *t != c.tags)
    }

    /// Applies the patch.
    pub fn apply(&self, c: &mut ExtClient, now: DateTime<Utc>) {
        if let Some(n) = &self.name {
            c.name = n.clone();
        }
        if let Some(d) = &self.dns {
            c.dns = d.clone();
        }
        if let Some(e) = self.enabled {
            c.enabled = e;
        }
        if let Some(t) = &self.tags {
            c.tags = t.clone();
        }
        c.update_time = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_generated_and_keys_optional() {
        let c = ExtClientInput {
            network: "corp".into(),
            ingress_node_id: "n".into(),
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert!(c.name.as_str().starts_with("client-"));
        assert!(c.public_key.is_none());
    }

    #[test]
    fn bad_fields_are_named() {
        let r = ExtClientInput {
            network: "corp".into(),
            ingress_node_id: String::new(),
            name: "Bad".into(),
            public_key: "xyz".into(),
            dns: vec!["nope".into()],
            tags: vec!["ops".into(), "Not A Tag".into()],
        }
        .validate();
        let Err(crate::domain::Error::InvalidArgument(v)) = r else {
            panic!()
        };
        let f: Vec<_> = v.iter().map(|x| x.field.as_str()).collect();
        assert_eq!(
            f,
            vec!["ingress_node_id", "name", "public_key", "dns[0]", "tags[1]"]
        );
    }
}
