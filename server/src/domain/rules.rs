//! The decisions a write makes inside its transaction, on what it loaded:
//! who holds a name or a key, whether an address is left, whether a
//! gateway may be removed, whose configs change. Pure functions; the
//! service layer loads, asks here, and writes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chrono::{DateTime, Utc};
use ipnet::IpNet;

use super::{
    Error, Result,
    ext_client::ExtClient,
    ipam,
    names::DnsLabel,
    network::Network,
    node::{Node, Registration, WgKey},
};

/// What holds a name (or a public key, or an address) in a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A node, by id.
    Node(String),
    /// An external client, by id.
    ExtClient(String),
    /// A custom DNS entry, by its name relative to the zone.
    DnsEntry(String),
}

impl Owner {
    /// Stored kind ("node", "ext_client", "dns_entry").
    pub fn kind(&self) -> &'static str {
        match self {
            Owner::Node(_) => "node",
            Owner::ExtClient(_) => "ext_client",
            Owner::DnsEntry(_) => "dns_entry",
        }
    }

    /// The owner's id.
    pub fn id(&self) -> &str {
        match self {
            Owner::Node(id) | Owner::ExtClient(id) | Owner::DnsEntry(id) => id,
        }
    }

    /// The owner from its stored kind and id.
    pub fn from_kind(kind: &str, id: String) -> Option<Owner> {
        match kind {
            "node" => Some(Owner::Node(id)),
            "ext_client" => Some(Owner::ExtClient(id)),
            "dns_entry" => Some(Owner::DnsEntry(id)),
            _ => None,
        }
    }

    fn describe(&self, network: &str) -> String {
        match self {
            Owner::Node(id) => format!("node {id}"),
            Owner::ExtClient(id) => format!("external client {id}"),
            Owner::DnsEntry(name) => format!("DNS entry {name}.{network}"),
        }
    }
}

/// ALREADY_EXISTS on `field` when `owner` (not the one being written,
/// `this`) holds `name` in the network's zone.
pub fn name_free(
    field: &str,
    network: &str,
    name: &DnsLabel,
    owner: Option<Owner>,
    this: Option<&str>,
) -> Result<()> {
    match owner {
        Some(o) if Some(o.id()) != this || matches!(o, Owner::DnsEntry(_)) => {
            Err(Error::already_exists(
                field,
                format!(
                    "{} in network {network:?} is already named {:?}",
                    o.describe(network),
                    name.as_str()
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// ALREADY_EXISTS on `field` when another node or client of the network
/// has `key` (keys share its ingress gateways' peer lists).
pub fn key_free(
    field: &str,
    network: &str,
    key: &WgKey,
    owner: Option<Owner>,
    this: Option<&str>,
) -> Result<()> {
    match owner {
        Some(o) if Some(o.id()) != this => Err(Error::already_exists(
            field,
            format!(
                "{} in network {network:?} already has public key {key}",
                o.describe(network)
            ),
        )),
        _ => Ok(()),
    }
}

/// The address at the lowest free `offset` of `range`, or
/// RESOURCE_EXHAUSTED when the range has no usable address left.
pub fn address_at(network: &str, range: IpNet, offset: u128) -> Result<IpAddr> {
    if !ipam::usable(range, offset) {
        return Err(Error::ResourceExhausted(format!(
            "address range {range} of network {network:?} is exhausted: all {} addresses are in use",
            ipam::capacity(range)
        )));
    }
    Ok(match range {
        IpNet::V4(r) => IpAddr::V4(ipam::v4_at(r, offset)),
        IpNet::V6(r) => IpAddr::V6(ipam::v6_at(r, offset)),
    })
}

/// A newly registered node's record.
pub fn new_node(
    id: String,
    reg: &Registration,
    net: &Network,
    address: Option<Ipv4Addr>,
    address6: Option<Ipv6Addr>,
    now: DateTime<Utc>,
) -> Node {
    Node {
        id,
        network: reg.network.clone(),
        name: reg.name.clone(),
        public_key: reg.public_key,
        endpoint: reg.endpoint.clone(),
        listen_port: reg.listen_port.unwrap_or(net.listen_port as u16),
        address,
        address6,
        os: reg.os.clone(),
        keepalive: 0,
        egress: None,
        ingress: None,
        connected: false,
        last_seen: None,
        applied_revision: 0,
        config_revision: 0,
        create_time: now,
        update_time: now,
        wireguard_interface: None,
        host: None,
        apply_error: None,
        failed_revision: 0,
        tags: Vec::new(),
    }
}

/// FAILED_PRECONDITION while a network has nodes, unless `force`.
pub fn network_deletable(name: &str, nodes: usize, force: bool) -> Result<()> {
    if nodes > 0 && !force {
        return Err(Error::FailedPrecondition(format!(
            "network {name:?} has {nodes} node(s); delete them first or set force"
        )));
    }
    Ok(())
}

/// FAILED_PRECONDITION unless `node` is an egress gateway (to stop being
/// one).
pub fn is_egress(node: &Node) -> Result<()> {
    if node.egress.is_none() {
        return Err(Error::FailedPrecondition(format!(
            "node {:?} is not an egress gateway",
            node.name.as_str()
        )));
    }
    Ok(())
}

/// Whether an ingress gateway may stop being one: it must be one, and
/// without `force` it may not have external clients (with `force` they go
/// with it).
pub fn ingress_removable(node: &Node, clients: usize, force: bool) -> Result<()> {
    if node.ingress.is_none() {
        return Err(Error::FailedPrecondition(format!(
            "node {:?} is not an ingress gateway",
            node.name.as_str()
        )));
    }
    if clients > 0 && !force {
        return Err(Error::FailedPrecondition(format!(
            "ingress gateway {:?} has {clients} external client(s); delete them first \
             or set force to delete them with it",
            node.name.as_str()
        )));
    }
    Ok(())
}

/// Whether an external client may use `ingress`: in the same network and
/// an ingress gateway.
pub fn ingress_usable(client: &ExtClient, ingress: &Node) -> Result<()> {
    if ingress.network != client.network {
        return Err(Error::invalid(
            "ingress_node_id",
            format!(
                "node {} is in network {:?}, not {:?}",
                ingress.id,
                ingress.network.as_str(),
                client.network.as_str()
            ),
        ));
    }
    if ingress.ingress.is_none() {
        return Err(Error::FailedPrecondition(format!(
            "node {:?} is not an ingress gateway; make it one with CreateIngressGateway first",
            ingress.name.as_str()
        )));
    }
    Ok(())
}

/// Whether a change of a node changes its external clients' files: an
/// ingress gateway's key, endpoint and port are in them, and its DNS.
pub fn client_files_change(before: &Node, after: &Node) -> bool {
    (before.ingress.is_some() || after.ingress.is_some())
        && (before.public_key != after.public_key
            || before.endpoint != after.endpoint
            || before.listen_port != after.listen_port
            || before.ingress != after.ingress)
}

/// INVALID_ARGUMENT when a report names a revision the node was never
/// sent: its config is at `config_revision` (the newest revision of its
/// network), so nothing above it can have been applied or have failed.
pub fn report_revisions_sent(
    config_revision: u64,
    applied_revision: u64,
    failed_revision: Option<u64>,
) -> Result<()> {
    let mut bad = Vec::new();
    if applied_revision > config_revision {
        bad.push(crate::domain::FieldViolation::new(
            "applied_revision",
            format!(
                "revision {applied_revision} was never sent to this node: its config is at \
                 revision {config_revision}"
            ),
        ));
    }
    if let Some(f) = failed_revision.filter(|f| *f > config_revision) {
        bad.push(crate::domain::FieldViolation::new(
            "failed_revision",
            format!(
                "revision {f} was never sent to this node: its config is at revision \
                 {config_revision}"
            ),
        ));
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(bad))
    }
}

/// FAILED_PRECONDITION when a DNS name is a node's or client's automatic
/// name (those go with their owner), NOT_FOUND when nobody holds it.
pub fn custom_entry_deletable(network: &str, name: &str, owner: Option<Owner>) -> Result<()> {
    match owner {
        None => Err(Error::not_found("DNS entry", format!("{name}.{network}"))),
        Some(Owner::Node(id)) => Err(Error::FailedPrecondition(format!(
            "{name}.{network} is the automatic name of node {id}: rename or delete the node"
        ))),
        Some(Owner::ExtClient(id)) => Err(Error::FailedPrecondition(format!(
            "{name}.{network} is the automatic name of external client {id}: rename or \
             delete the client"
        ))),
        Some(Owner::DnsEntry(_)) => Ok(()),
    }
}

/// ALREADY_EXISTS when a new custom entry's name is held.
pub fn custom_entry_free(network: &str, name: &str, owner: Option<Owner>) -> Result<()> {
    let Some(o) = owner else { return Ok(()) };
    let what = match o {
        Owner::Node(id) => format!("the automatic name of node {id}"),
        Owner::ExtClient(id) => format!("the automatic name of external client {id}"),
        Owner::DnsEntry(_) => "a custom entry".to_owned(),
    };
    Err(Error::already_exists(
        "entry.name",
        format!("{name}.{network} is already {what}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhausted_range_is_resource_exhausted() {
        let r: IpNet = "10.0.0.0/30".parse().unwrap();
        assert_eq!(
            address_at("n", r, 1).unwrap(),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            address_at("n", r, 2).unwrap(),
            "10.0.0.2".parse::<IpAddr>().unwrap()
        );
        assert!(matches!(
            address_at("n", r, 3),
            Err(Error::ResourceExhausted(_))
        ));
    }

    #[test]
    fn own_name_is_free_but_another_owners_is_not() {
        let name = DnsLabel::parse("name", "web", DnsLabel::LABEL_MAX).unwrap();
        assert!(name_free("name", "n", &name, Some(Owner::Node("a".into())), Some("a")).is_ok());
        assert!(matches!(
            name_free("name", "n", &name, Some(Owner::Node("b".into())), Some("a")),
            Err(Error::AlreadyExists { .. })
        ));
        // A custom entry's name is never the node's own, even with the same
        // text as its id.
        assert!(
            name_free(
                "name",
                "n",
                &name,
                Some(Owner::DnsEntry("a".into())),
                Some("a")
            )
            .is_err()
        );
        assert!(name_free("name", "n", &name, None, None).is_ok());
    }
}
