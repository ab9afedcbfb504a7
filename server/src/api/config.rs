//! Domain configs as proto messages.

use meshplane_proto::v1 as pb;

use crate::domain::{
    config::{DnsConfig, DnsRecord, Interface, NodeConfig, Peer, Route},
    firewall::Firewall,
};

use super::convert::ips;

/// The interface section.
pub fn interface(i: &Interface) -> pb::InterfaceConfig {
    pb::InterfaceConfig {
        name: i.name.clone(),
        addresses: i.addresses.iter().map(ToString::to_string).collect(),
        listen_port: i.listen_port.into(),
        mtu: i.mtu,
    }
}

/// One peer.
pub fn peer(p: &Peer) -> pb::Peer {
    pb::Peer {
        public_key: p.public_key.to_string(),
        endpoint: p.endpoint.clone().unwrap_or_default(),
        allowed_ips: p.allowed_ips.iter().map(ToString::to_string).collect(),
        persistent_keepalive: p.keepalive,
        name: p.name.clone(),
        ext_client: p.ext_client,
    }
}

/// One route.
pub fn route(r: &Route) -> pb::Route {
    pb::Route {
        destination: r.destination.to_string(),
        via_peer: r.via_peer.to_string(),
        dev: r.dev.clone(),
    }
}

/// The firewall section.
pub fn firewall(f: &Firewall) -> pb::FirewallConfig {
    pb::FirewallConfig {
        ipv4_forwarding: f.ipv4_forwarding,
        ipv6_forwarding: f.ipv6_forwarding,
        rules: f
            .rules
            .iter()
            .map(|r| pb::FirewallRule {
                table: r.table.into(),
                chain: r.chain.into(),
                rule: r.rule.clone(),
                family: r.family.number(),
                hook: r.hook,
            })
            .collect(),
        iptables_restore: f.iptables_restore.clone(),
        ip6tables_restore: f.ip6tables_restore.clone(),
    }
}

/// One DNS record.
pub fn dns_record(r: &DnsRecord) -> pb::DnsRecord {
    pb::DnsRecord {
        name: r.name.clone(),
        address: r.address.map(|a| a.to_string()).unwrap_or_default(),
        address6: r.address6.map(|a| a.to_string()).unwrap_or_default(),
    }
}

/// The DNS section.
pub fn dns(d: &DnsConfig) -> pb::DnsConfig {
    pb::DnsConfig {
        records: d.records.iter().map(dns_record).collect(),
        nameservers: ips(&d.nameservers),
        domain: d.domain.clone(),
    }
}

/// A whole config.
pub fn node_config(c: &NodeConfig) -> pb::NodeConfig {
    pb::NodeConfig {
        revision: c.revision,
        node_id: c.node_id.clone(),
        network: c.network.clone(),
        interface: Some(interface(&c.interface)),
        peers: c.peers.values().map(peer).collect(),
        routes: c.routes.iter().map(route).collect(),
        firewall: Some(firewall(&c.firewall)),
        dns: Some(dns(&c.dns)),
    }
}
