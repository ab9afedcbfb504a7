//! Domain configs as proto messages.

use meshplane_proto::v1 as pb;

use crate::domain::{
    config::{DnsConfig, DnsRecord, Interface, NodeConfig, Peer, Route},
    firewall::Firewall,
    sync::Delta,
};
use crate::hub::Update;

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
        peers: sorted_peers(c.peers.values().map(peer).collect()),
        routes: c.routes.iter().map(route).collect(),
        firewall: Some(firewall(&c.firewall)),
        dns: Some(dns(&c.dns)),
    }
}

/// Peers in the wire order: by public key as written (base64).
fn sorted_peers(mut v: Vec<pb::Peer>) -> Vec<pb::Peer> {
    v.sort_by(|a, b| a.public_key.cmp(&b.public_key));
    v
}

/// A delta.
pub fn delta(d: &Delta) -> pb::ConfigDelta {
    pb::ConfigDelta {
        from_revision: d.from_revision,
        upsert_peers: sorted_peers(d.upsert_peers.iter().map(peer).collect()),
        remove_peers: d.remove_peers.iter().map(ToString::to_string).collect(),
        interface: d.interface.as_ref().map(interface),
        routes: d.routes.as_ref().map(|r| pb::RouteSet {
            routes: r.iter().map(route).collect(),
        }),
        firewall: d.firewall.as_ref().map(firewall),
        upsert_dns_records: d.upsert_dns.iter().map(dns_record).collect(),
        remove_dns_records: d.remove_dns.clone(),
        nameservers: d.nameservers.as_ref().map(|n| pb::NameserverSet {
            nameservers: ips(n),
        }),
    }
}

/// One message of WatchConfig.
pub fn update(u: &Update) -> pb::ConfigUpdate {
    match u {
        Update::Snapshot(s) => pb::ConfigUpdate {
            revision: s.revision,
            update: Some(pb::config_update::Update::Snapshot(node_config(s))),
        },
        Update::Delta(d) => pb::ConfigUpdate {
            revision: d.revision,
            update: Some(pb::config_update::Update::Delta(delta(d))),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use meshplane_proto::delta::apply_update;

    use super::*;
    use crate::domain::sync::{NetworkState, tests::World};

    /// The wire form agrees with the domain: a proto snapshot plus the proto
    /// delta, applied as agents apply it, equals the proto snapshot after.
    #[test]
    fn wire_deltas_rebuild_wire_snapshots() {
        for seed in 0..20 {
            let mut w = World::new(seed);
            let mut state = NetworkState::from_view(w.view.clone());
            let mut held: HashMap<String, pb::NodeConfig> = HashMap::new();
            for _ in 0..120 {
                for ev in w.step() {
                    state.apply(&ev);
                }
                let ids: Vec<String> = state.node_ids().cloned().collect();
                for id in ids {
                    let now = update(&Update::Snapshot(state.snapshot(&id).unwrap()));
                    let mut mine = held.remove(&id);
                    if let Some(from) = mine.as_ref().map(|c| c.revision) {
                        let d = state.delta(&id, from).expect("inside the log");
                        apply_update(&mut mine, &update(&Update::Delta(d))).unwrap();
                    } else {
                        apply_update(&mut mine, &now).unwrap();
                    }
                    let mut want = None;
                    apply_update(&mut want, &now).unwrap();
                    assert_eq!(mine, want, "seed {seed} node {id}");
                    held.insert(id, mine.unwrap());
                }
            }
        }
    }
}
