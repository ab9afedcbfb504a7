//! Row decoding shared by every backend. A backend implements [`Cols`] for
//! its row type (SQLite: text and integers; PostgreSQL: its native `inet`,
//! `cidr`, arrays, `timestamptz`, `bytea`, `jsonb`); turning columns into
//! domain records, and refusing corrupt ones, is written once here.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;

use crate::domain::{
    Error, Result,
    config::DnsRecord,
    dns::{DnsEntry, DnsKind},
    enrollment::EnrollmentKey,
    ext_client::ExtClient,
    names::DnsLabel,
    network::Network,
    node::{Egress, Endpoint, Ingress, Node, WgKey},
    policy::{NetworkPolicy, Policy, Tag},
};

use super::StoredKey;

/// Typed access to one row's columns by name. Every method fails with a
/// database error when the column is missing or of another type, and with
/// [`Error::Internal`] naming the column when its stored value does not
/// parse.
pub trait Cols {
    /// A text column.
    fn text(&self, col: &str) -> Result<String>;
    /// A nullable text column.
    fn opt_text(&self, col: &str) -> Result<Option<String>>;
    /// An integer column.
    fn int(&self, col: &str) -> Result<i64>;
    /// A nullable integer column.
    fn opt_int(&self, col: &str) -> Result<Option<i64>>;
    /// A boolean column.
    fn flag(&self, col: &str) -> Result<bool>;
    /// A nullable byte column.
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>>;
    /// A timestamp column.
    fn time(&self, col: &str) -> Result<DateTime<Utc>>;
    /// A nullable timestamp column.
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>>;
    /// A nullable address column.
    fn addr(&self, col: &str) -> Result<Option<IpAddr>>;
    /// A list of addresses (empty when none).
    fn addrs(&self, col: &str) -> Result<Vec<IpAddr>>;
    /// A nullable range column.
    fn range(&self, col: &str) -> Result<Option<IpNet>>;
    /// A nullable list of ranges (NULL, not empty, when absent).
    fn ranges(&self, col: &str) -> Result<Option<Vec<IpNet>>>;
    /// A nullable JSON document, as text.
    fn json(&self, col: &str) -> Result<Option<String>>;
    /// A list of strings (tags; empty when none).
    fn texts(&self, col: &str) -> Result<Vec<String>>;
}

/// An error for a stored value that does not parse.
pub fn corrupt(what: &str, id: &str, col: &str) -> Error {
    Error::Internal(format!("stored {what} {id}: bad {col}"))
}

fn label(r: &dyn Cols, what: &str, id: &str, col: &str, max: usize) -> Result<DnsLabel> {
    DnsLabel::parse(col, &r.text(col)?, max).map_err(|_| corrupt(what, id, col))
}

fn u32_of(r: &dyn Cols, what: &str, id: &str, col: &str) -> Result<u32> {
    u32::try_from(r.int(col)?).map_err(|_| corrupt(what, id, col))
}

fn u64_of(r: &dyn Cols, what: &str, id: &str, col: &str) -> Result<u64> {
    u64::try_from(r.int(col)?).map_err(|_| corrupt(what, id, col))
}

fn v4(r: &dyn Cols, what: &str, id: &str, col: &str) -> Result<Option<std::net::Ipv4Addr>> {
    match r.addr(col)? {
        None => Ok(None),
        Some(IpAddr::V4(a)) => Ok(Some(a)),
        Some(IpAddr::V6(_)) => Err(corrupt(what, id, col)),
    }
}

fn v6(r: &dyn Cols, what: &str, id: &str, col: &str) -> Result<Option<std::net::Ipv6Addr>> {
    match r.addr(col)? {
        None => Ok(None),
        Some(IpAddr::V6(a)) => Ok(Some(a)),
        Some(IpAddr::V4(_)) => Err(corrupt(what, id, col)),
    }
}

/// Columns [`network`] reads: name, range4, range6, keepalive, mtu,
/// listen_port, ext_client_dns, nameservers, create_time, update_time.
pub fn network(r: &dyn Cols) -> Result<Network> {
    let name = r.text("name")?;
    let w = "network";
    Ok(Network {
        name: label(r, w, &name, "name", DnsLabel::LABEL_MAX)?,
        range4: match r.range("range4")? {
            Some(IpNet::V4(n)) => Some(n),
            None => None,
            Some(IpNet::V6(_)) => return Err(corrupt(w, &name, "range4")),
        },
        range6: match r.range("range6")? {
            Some(IpNet::V6(n)) => Some(n),
            None => None,
            Some(IpNet::V4(_)) => return Err(corrupt(w, &name, "range6")),
        },
        keepalive: u32_of(r, w, &name, "keepalive")?,
        mtu: u32_of(r, w, &name, "mtu")?,
        listen_port: u32_of(r, w, &name, "listen_port")?,
        ext_client_dns: r.addrs("ext_client_dns")?,
        nameservers: r.addrs("nameservers")?,
        create_time: r.time("create_time")?,
        update_time: r.time("update_time")?,
    })
}

/// An egress gateway's settings for sharing its ranges with other
/// gateways, as the `egress_ha` column stores them (JSON; NULL when none
/// is set).
#[derive(serde::Serialize, serde::Deserialize)]
struct EgressHa {
    #[serde(default)]
    metric: Option<u32>,
    #[serde(default = "yes")]
    preempt: bool,
    #[serde(default)]
    hold_seconds: u32,
    #[serde(default)]
    standby: Vec<ipnet::IpNet>,
}

fn yes() -> bool {
    true
}

impl Default for EgressHa {
    fn default() -> Self {
        EgressHa {
            metric: None,
            preempt: true,
            hold_seconds: 0,
            standby: Vec::new(),
        }
    }
}

/// The `egress_ha` column of a node: None when it is no egress gateway or
/// sets none of it.
pub fn egress_ha(node: &Node) -> Option<String> {
    let e = node.egress.as_ref()?;
    let ha = EgressHa {
        metric: e.metric,
        preempt: e.preempt,
        hold_seconds: e.hold_seconds,
        standby: e.standby.clone(),
    };
    let unset = ha.metric.is_none() && ha.preempt && ha.hold_seconds == 0 && ha.standby.is_empty();
    (!unset).then(|| serde_json::to_string(&ha).expect("plain data serializes"))
}

/// Columns [`node`] reads: id, network, name, public_key, endpoint
/// (nullable; empty text counts as none), listen_port, address, address6,
/// os, keepalive, egress_ranges (NULL when not a gateway),
/// egress_interface, egress_nat, ingress, ingress_dns, last_seen,
/// applied_revision, config_revision (the network's revision; nullable),
/// create_time, update_time, wireguard_interface, host_report (nullable
/// JSON), apply_error (empty text counts as none), failed_revision.
/// `connected` is not stored: it comes from presence.
pub fn node(r: &dyn Cols) -> Result<Node> {
    let id = r.text("id")?;
    let w = "node";
    let endpoint = r.opt_text("endpoint")?.unwrap_or_default();
    let egress = match r.ranges("egress_ranges")? {
        None => None,
        Some(ranges) => {
            let ha: EgressHa = match r.json("egress_ha")? {
                None => EgressHa::default(),
                Some(j) => serde_json::from_str(&j).map_err(|_| corrupt(w, &id, "egress_ha"))?,
            };
            Some(Egress {
                ranges,
                interface: r.text("egress_interface")?,
                nat: r.flag("egress_nat")?,
                metric: ha.metric,
                preempt: ha.preempt,
                hold_seconds: ha.hold_seconds,
                standby: ha.standby,
            })
        }
    };
    let ingress = if r.flag("ingress")? {
        Some(Ingress {
            ext_client_dns: r.addrs("ingress_dns")?,
        })
    } else {
        None
    };
    // The host report is a cache of what the agent last said: one that no
    // longer decodes (an older layout) is dropped, not an error that would
    // make the node unreadable until the agent reports again.
    let host = r.json("host_report")?.and_then(|h| {
        serde_json::from_str(&h)
            .inspect_err(
                |e| tracing::warn!(node = %id, error = %e, "stored host report unreadable; ignored"),
            )
            .ok()
    });
    Ok(Node {
        network: label(r, w, &id, "network", DnsLabel::LABEL_MAX)?,
        name: label(r, w, &id, "name", DnsLabel::LABEL_MAX)?,
        public_key: WgKey::parse("public_key", &r.text("public_key")?)
            .map_err(|_| corrupt(w, &id, "public_key"))?,
        endpoint: (!endpoint.is_empty())
            .then(|| Endpoint::parse("endpoint", &endpoint))
            .transpose()
            .map_err(|_| corrupt(w, &id, "endpoint"))?,
        listen_port: u16::try_from(r.int("listen_port")?)
            .map_err(|_| corrupt(w, &id, "listen_port"))?,
        address: v4(r, w, &id, "address")?,
        address6: v6(r, w, &id, "address6")?,
        os: r.text("os")?,
        keepalive: u32_of(r, w, &id, "keepalive")?,
        egress,
        ingress,
        connected: false,
        last_seen: r.opt_time("last_seen")?,
        applied_revision: u64_of(r, w, &id, "applied_revision")?,
        config_revision: r.opt_int("config_revision")?.unwrap_or(0).max(0) as u64,
        create_time: r.time("create_time")?,
        update_time: r.time("update_time")?,
        wireguard_interface: r.opt_text("wireguard_interface")?,
        host,
        apply_error: r.opt_text("apply_error")?.filter(|e| !e.is_empty()),
        failed_revision: u64_of(r, w, &id, "failed_revision")?,
        tags: tags(r, w, &id)?,
        id,
    })
}

/// The `tags` column of a node or client, each a valid [`Tag`].
fn tags(r: &dyn Cols, what: &str, id: &str) -> Result<Vec<Tag>> {
    r.texts("tags")?
        .iter()
        .map(|t| Tag::parse("tags", t).map_err(|_| corrupt(what, id, "tags")))
        .collect()
}

/// Columns [`policy`] reads: network, policy (JSON), revision,
/// update_time.
pub fn policy(r: &dyn Cols) -> Result<NetworkPolicy> {
    let network = r.text("network")?;
    let w = "policy of network";
    let json = r.json("policy")?.unwrap_or_default();
    Ok(NetworkPolicy {
        policy: policy_json(&network, &json)?,
        revision: u64_of(r, w, &network, "revision")?,
        update_time: Some(r.time("update_time")?),
        network: label(r, w, &network, "network", DnsLabel::NETWORK_MAX)?,
    })
}

/// A stored policy's JSON. One that does not decode is an error, never
/// the default: a policy that restricts must not silently open up.
pub fn policy_json(network: &str, json: &str) -> Result<Policy> {
    serde_json::from_str(json).map_err(|e| {
        tracing::error!(network, error = %e, "stored policy unreadable");
        corrupt("policy of network", network, "policy")
    })
}

/// A policy as stored.
pub fn policy_to_json(p: &Policy) -> Result<String> {
    serde_json::to_string(p).map_err(|e| Error::Internal(format!("encoding a policy: {e}")))
}

/// Columns [`ext_client`] reads: id, network, ingress_node_id, name,
/// public_key, sealed_private_key, address, address6, dns, enabled,
/// config_revision, downloaded_revision, create_time, update_time, tags.
pub fn ext_client(r: &dyn Cols) -> Result<ExtClient> {
    let id = r.text("id")?;
    let w = "external client";
    Ok(ExtClient {
        network: label(r, w, &id, "network", DnsLabel::LABEL_MAX)?,
        ingress_node_id: r.text("ingress_node_id")?,
        name: label(r, w, &id, "name", DnsLabel::LABEL_MAX)?,
        public_key: WgKey::parse("public_key", &r.text("public_key")?)
            .map_err(|_| corrupt(w, &id, "public_key"))?,
        sealed_private_key: r.opt_bytes("sealed_private_key")?,
        address: v4(r, w, &id, "address")?,
        address6: v6(r, w, &id, "address6")?,
        dns: r.addrs("dns")?,
        enabled: r.flag("enabled")?,
        config_revision: u64_of(r, w, &id, "config_revision")?,
        downloaded_revision: u64_of(r, w, &id, "downloaded_revision")?,
        create_time: r.time("create_time")?,
        update_time: r.time("update_time")?,
        tags: tags(r, w, &id)?,
        id,
    })
}

/// Columns [`enrollment_key`] reads: id, hash (nullable only for lists,
/// which do not need it), description, uses_remaining, unlimited,
/// expire_time, create_time; `networks` is the key's networks, read by
/// the backend (one query or an aggregate).
pub fn enrollment_key(r: &dyn Cols, networks: Vec<String>) -> Result<StoredKey> {
    let id = r.text("id")?;
    let w = "enrollment key";
    let mut nets = networks
        .iter()
        .map(|n| DnsLabel::parse("network", n, DnsLabel::NETWORK_MAX))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| corrupt(w, &id, "networks"))?;
    nets.sort();
    nets.dedup();
    Ok(StoredKey {
        key: EnrollmentKey {
            networks: nets,
            uses_remaining: u32_of(r, w, &id, "uses_remaining")?,
            unlimited: r.flag("unlimited")?,
            expire_time: r.opt_time("expire_time")?,
            description: r.text("description")?,
            create_time: r.time("create_time")?,
            id,
        },
        hash: r.opt_bytes("hash")?.unwrap_or_default(),
    })
}

/// Columns [`dns_entry`] reads: network, name, address, address6,
/// create_time.
pub fn dns_entry(r: &dyn Cols) -> Result<DnsEntry> {
    let name = r.text("name")?;
    let w = "DNS entry";
    Ok(DnsEntry {
        network: label(r, w, &name, "network", DnsLabel::LABEL_MAX)?,
        address: v4(r, w, &name, "address")?,
        address6: v6(r, w, &name, "address6")?,
        kind: DnsKind::Custom,
        create_time: r.time("create_time")?,
        name,
    })
}

/// A custom entry as configs hold it.
pub fn dns_record(e: DnsEntry) -> DnsRecord {
    DnsRecord {
        name: e.name,
        address: e.address,
        address6: e.address6,
    }
}

/// Columns [`event`] reads: revision, action, payload (JSON), event_time.
pub fn event(r: &dyn Cols) -> Result<crate::domain::event::Event> {
    use crate::domain::event::{Action, Event, Resource};
    let revision = r.int("revision")?;
    let id = revision.to_string();
    let payload = r.json("payload")?.unwrap_or_default();
    let resource: Resource =
        serde_json::from_str(&payload).map_err(|_| corrupt("event", &id, "payload"))?;
    Ok(Event {
        revision: u64::try_from(revision).map_err(|_| corrupt("event", &id, "revision"))?,
        action: Action::from_i64(r.int("action")?)
            .ok_or_else(|| corrupt("event", &id, "action"))?,
        time: r.time("event_time")?,
        resource,
    })
}
