//! Domain configs as proto messages.

use std::sync::Arc;

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
        records: d.records.iter().map(|r| dns_record(r)).collect(),
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
        peers: sorted_peers(c.peers.values().map(|p| peer(p)).collect()),
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
        upsert_peers: sorted_peers(d.upsert_peers.iter().map(|p| peer(p)).collect()),
        remove_peers: d.remove_peers.iter().map(ToString::to_string).collect(),
        interface: d.interface.as_ref().map(interface),
        routes: d.routes.as_ref().map(|r| pb::RouteSet {
            routes: r.iter().map(route).collect(),
        }),
        firewall: d.firewall.as_ref().map(firewall),
        upsert_dns_records: d.upsert_dns.iter().map(|r| dns_record(r)).collect(),
        remove_dns_records: d.remove_dns.clone(),
        nameservers: d.nameservers.as_ref().map(|n| pb::NameserverSet {
            nameservers: ips(n),
        }),
    }
}

/// One message of WatchConfig, whole (tests and small configs).
pub fn update(u: &Update) -> pb::ConfigUpdate {
    match u {
        Update::Snapshot(s) => pb::ConfigUpdate {
            revision: s.revision,
            update: Some(pb::config_update::Update::Snapshot(node_config(s))),
            partial: false,
        },
        Update::Delta(d) => pb::ConfigUpdate {
            revision: d.revision,
            update: Some(pb::config_update::Update::Delta(delta(d))),
            partial: false,
        },
    }
}

/// Peers per part.
const PEERS_PER_PART: usize = 48;
/// DNS records per part.
const RECORDS_PER_PART: usize = 96;

/// An update cut into parts of a few KiB, produced one at a time: the head
/// (the snapshot or delta with its sections and first peers and records),
/// then deltas from the same revision carrying the rest. Small parts keep
/// each stream's encode buffer small however large the network is.
pub struct Parts {
    revision: u64,
    head: Option<pb::ConfigUpdate>,
    peers: std::vec::IntoIter<Arc<Peer>>,
    records: std::vec::IntoIter<Arc<DnsRecord>>,
}

impl Parts {
    /// Cuts `u` into parts.
    pub fn new(u: Update) -> Self {
        let revision = u.revision();
        let (head, peers, records) = match u {
            Update::Snapshot(mut s) => {
                let peers: Vec<Arc<Peer>> = std::mem::take(&mut s.peers).into_values().collect();
                let records = std::mem::take(&mut s.dns.records);
                (
                    pb::config_update::Update::Snapshot(node_config(&s)),
                    peers,
                    records,
                )
            }
            Update::Delta(mut d) => {
                let peers = std::mem::take(&mut d.upsert_peers);
                let records = std::mem::take(&mut d.upsert_dns);
                (pb::config_update::Update::Delta(delta(&d)), peers, records)
            }
        };
        let mut parts = Parts {
            revision,
            head: None,
            peers: peers.into_iter(),
            records: records.into_iter(),
        };
        let mut head = pb::ConfigUpdate {
            revision,
            update: Some(head),
            partial: false,
        };
        let (p, r) = parts.next_chunk();
        match &mut head.update {
            Some(pb::config_update::Update::Snapshot(s)) => {
                s.peers = p;
                s.dns.get_or_insert_with(Default::default).records = r;
            }
            Some(pb::config_update::Update::Delta(d)) => {
                d.upsert_peers = p;
                d.upsert_dns_records = r;
            }
            None => {}
        }
        head.partial = parts.more();
        parts.head = Some(head);
        parts
    }

    fn next_chunk(&mut self) -> (Vec<pb::Peer>, Vec<pb::DnsRecord>) {
        let p = sorted_peers(
            self.peers
                .by_ref()
                .take(PEERS_PER_PART)
                .map(|p| peer(&p))
                .collect(),
        );
        let r = self
            .records
            .by_ref()
            .take(RECORDS_PER_PART)
            .map(|r| dns_record(&r))
            .collect();
        (p, r)
    }

    fn more(&self) -> bool {
        self.peers.len() > 0 || self.records.len() > 0
    }
}

impl Iterator for Parts {
    type Item = pb::ConfigUpdate;

    fn next(&mut self) -> Option<pb::ConfigUpdate> {
        if let Some(h) = self.head.take() {
            return Some(h);
        }
        if !self.more() {
            return None;
        }
        let (upsert_peers, upsert_dns_records) = self.next_chunk();
        Some(pb::ConfigUpdate {
            revision: self.revision,
            update: Some(pb::config_update::Update::Delta(pb::ConfigDelta {
                from_revision: self.revision,
                upsert_peers,
                upsert_dns_records,
                ..Default::default()
            })),
            partial: self.more(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use meshplane_proto::delta::apply_update;

    use super::*;
    use crate::domain::sync::{NetworkState, tests::World};

    /// A large snapshot arrives in small parts that rebuild it exactly.
    #[test]
    fn parts_rebuild_large_updates() {
        let mut w = World::new(3);
        let mut state = NetworkState::from_view(w.view.clone());
        for _ in 0..300 {
            for ev in w.step() {
                state.apply(&ev);
            }
        }
        for id in state.node_ids().cloned().collect::<Vec<_>>() {
            let snap = state.snapshot(&id).unwrap();
            let whole = update(&Update::Snapshot(snap.clone()));
            let mut held = None;
            let parts: Vec<_> = Parts::new(Update::Snapshot(snap)).collect();
            for (i, p) in parts.iter().enumerate() {
                assert_eq!(p.partial, i + 1 < parts.len());
                apply_update(&mut held, p).unwrap();
            }
            let mut want = None;
            apply_update(&mut want, &whole).unwrap();
            assert_eq!(held, want);
        }
    }

    #[test]
    fn many_peers_make_many_small_parts() {
        let mut w = World::new(5);
        let mut state = NetworkState::from_view(w.view.clone());
        for _ in 0..60 {
            for ev in w.step() {
                state.apply(&ev);
            }
        }
        let id = state.node_ids().next().cloned().unwrap();
        let mut snap = state.snapshot(&id).unwrap();
        let template = snap.peers.values().next().cloned().unwrap();
        for i in 0..500u32 {
            let mut p = Peer::clone(&template);
            p.public_key.0[..4].copy_from_slice(&i.to_be_bytes());
            snap.peers.insert(p.public_key, Arc::new(p));
        }
        let parts: Vec<_> = Parts::new(Update::Snapshot(snap)).collect();
        assert!(parts.len() > 500 / PEERS_PER_PART);
        use prost::Message;
        assert!(parts.iter().all(|p| p.encoded_len() < 16 * 1024));
    }

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
