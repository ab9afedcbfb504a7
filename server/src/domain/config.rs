//! What each node receives: computed by pure functions from the network's
//! state. Each section has its own function so a change can be turned into
//! an update of just the sections (and peers) it touches.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::ext_client::ExtClient;
use super::firewall::{Firewall, firewall_with_policy};
use super::network::Network;
use super::node::{Node, WgKey};
use super::policy::{
    Policy,
    prune::{PeerKeep, Reach},
};

/// Everything in one network that configs are computed from.
#[derive(Debug, Clone)]
pub struct NetworkView {
    /// The network.
    pub network: Network,
    /// Its nodes.
    pub nodes: Vec<Node>,
    /// Its external clients.
    pub ext_clients: Vec<ExtClient>,
    /// Custom DNS entries (name relative to the zone).
    pub dns_entries: Vec<DnsRecord>,
    /// The network's config revision.
    pub revision: u64,
    /// The network's access policy ([`Policy::default`], allow-all, when it
    /// has none).
    pub policy: Policy,
}

/// The node's own WireGuard interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Overlay addresses with the network's prefix.
    pub addresses: Vec<IpNet>,
    /// Listen port.
    pub listen_port: u16,
    /// MTU.
    pub mtu: u32,
}

/// One WireGuard peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Public key.
    pub public_key: WgKey,
    /// host:port, when known.
    pub endpoint: Option<String>,
    /// Routed ranges, sorted.
    pub allowed_ips: Vec<IpNet>,
    /// PersistentKeepalive seconds (0 = off).
    pub keepalive: u32,
    /// Display name.
    pub name: String,
    /// An external client of this node.
    pub ext_client: bool,
}

/// A route through the overlay.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// Destination range.
    pub destination: IpNet,
    /// The peer that carries it.
    pub via_peer: WgKey,
    /// The overlay interface.
    pub dev: String,
}

/// One name in the zone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DnsRecord {
    /// Fully qualified name without trailing dot.
    pub name: String,
    /// IPv4 address.
    pub address: Option<Ipv4Addr>,
    /// IPv6 address.
    pub address6: Option<Ipv6Addr>,
}

/// The zone's names and upstream resolvers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DnsConfig {
    /// Every record, sorted by name (shared like peers).
    pub records: Vec<Arc<DnsRecord>>,
    /// Upstream resolvers.
    pub nameservers: Vec<IpAddr>,
    /// The zone.
    pub domain: String,
}

/// A node's whole config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Revision.
    pub revision: u64,
    /// The node.
    pub node_id: String,
    /// Its network.
    pub network: String,
    /// Its interface.
    pub interface: Interface,
    /// Its peers by public key. Entries are shared with the hub's state
    /// and with every other node's config: a snapshot of a large network
    /// holds pointers, not copies.
    pub peers: BTreeMap<WgKey, Arc<Peer>>,
    /// Its routes, sorted.
    pub routes: Vec<Route>,
    /// Its firewall.
    pub firewall: Firewall,
    /// Its DNS.
    pub dns: DnsConfig,
}

/// Name of the overlay interface a node creates for `network` (Linux allows
/// 15 bytes: "mp-" and the first 12 characters of the network name).
pub fn interface_name(network: &str) -> String {
    let short: String = network.chars().take(12).collect();
    format!("mp-{}", short.trim_end_matches('-'))
}

/// Name of `node`'s overlay interface: the one its agent reported, else the
/// default for its network.
pub fn node_interface(node: &Node) -> String {
    node.wireguard_interface
        .clone()
        .unwrap_or_else(|| interface_name(node.network.as_str()))
}

/// A node's overlay addresses as host prefixes (/32, /128).
pub fn host_prefixes(v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) -> Vec<IpNet> {
    v4.map(|a| IpNet::V4(Ipv4Net::from(a)))
        .into_iter()
        .chain(v6.map(|a| IpNet::V6(Ipv6Net::from(a))))
        .collect()
}

/// The node's own interface.
pub fn interface_for(network: &Network, node: &Node) -> Interface {
    let mut addresses = Vec::new();
    if let (Some(a), Some(r)) = (node.address, network.range4) {
        addresses.push(IpNet::V4(
            Ipv4Net::new(a, r.prefix_len()).expect("valid prefix"),
        ));
    }
    if let (Some(a), Some(r)) = (node.address6, network.range6) {
        addresses.push(IpNet::V6(
            Ipv6Net::new(a, r.prefix_len()).expect("valid prefix"),
        ));
    }
    Interface {
        name: node_interface(node),
        addresses,
        listen_port: node.listen_port,
        mtu: network.mtu,
    }
}

/// The peer entry every other node of the network has for `node`: its
/// overlay addresses, its egress ranges when it is an egress gateway, and the
/// addresses of its enabled external clients when it is an ingress gateway.
pub fn node_peer<'a>(
    network: &Network,
    node: &Node,
    clients: impl IntoIterator<Item = &'a ExtClient>,
) -> Peer {
    node_peer_kept(network, node, clients, None)
}

/// [`node_peer`] with only what a policy lets the observing node keep of
/// it (see [`super::policy::prune`]): its own addresses, the kept egress
/// ranges and the kept clients' addresses. `keep` None keeps everything.
pub fn node_peer_kept<'a>(
    network: &Network,
    node: &Node,
    clients: impl IntoIterator<Item = &'a ExtClient>,
    keep: Option<&PeerKeep>,
) -> Peer {
    let mut allowed = host_prefixes(node.address, node.address6);
    if let Some(e) = &node.egress {
        allowed.extend(
            e.routed()
                .filter(|r| keep.is_none_or(|k| k.ranges.contains(r)))
                .copied(),
        );
    }
    if node.ingress.is_some() {
        for c in clients {
            if c.enabled
                && c.ingress_node_id == node.id
                && keep.is_none_or(|k| k.clients.contains(&c.id))
            {
                allowed.extend(host_prefixes(c.address, c.address6));
            }
        }
    }
    allowed.sort();
    allowed.dedup();
    Peer {
        public_key: node.public_key,
        endpoint: node.endpoint.as_ref().map(ToString::to_string),
        allowed_ips: allowed,
        keepalive: if node.keepalive == 0 {
            network.keepalive
        } else {
            node.keepalive
        },
        name: node.name.to_string(),
        ext_client: false,
    }
}

/// The peer entry an ingress gateway has for one of its external clients.
pub fn ext_client_peer(client: &ExtClient) -> Peer {
    Peer {
        public_key: client.public_key,
        endpoint: None,
        allowed_ips: host_prefixes(client.address, client.address6),
        keepalive: 0,
        name: client.name.to_string(),
        ext_client: true,
    }
}

/// Routes `node` installs: every egress range of every other gateway, via
/// that gateway.
pub fn routes_for<'a>(node: &Node, nodes: impl IntoIterator<Item = &'a Node>) -> Vec<Route> {
    let dev = node_interface(node);
    let mut routes: Vec<Route> = nodes
        .into_iter()
        .filter(|m| m.id != node.id)
        .filter_map(|m| m.egress.as_ref().map(|e| (m, e)))
        .flat_map(|(m, e)| {
            // Through the primary of each range; none to a range the node
            // serves itself (it reaches it out of its own interface).
            e.routed()
                .filter(|r| {
                    node.egress
                        .as_ref()
                        .is_none_or(|own| !own.ranges.contains(r))
                })
                .map(|r| Route {
                    destination: *r,
                    via_peer: m.public_key,
                    dev: dev.clone(),
                })
        })
        .collect();
    routes.sort();
    routes
}

/// The automatic DNS records: `<name>.<network>` for every node and client.
pub fn automatic_records(view: &NetworkView) -> Vec<DnsRecord> {
    let zone = view.network.name.as_str();
    let nodes = view.nodes.iter().map(|n| DnsRecord {
        name: format!("{}.{zone}", n.name),
        address: n.address,
        address6: n.address6,
    });
    let clients = view.ext_clients.iter().map(|c| DnsRecord {
        name: format!("{}.{zone}", c.name),
        address: c.address,
        address6: c.address6,
    });
    nodes.chain(clients).collect()
}

/// The zone as a node sees it.
pub fn dns_for(view: &NetworkView) -> DnsConfig {
    let zone = view.network.name.as_str();
    let mut records = automatic_records(view);
    records.extend(view.dns_entries.iter().map(|e| DnsRecord {
        name: format!("{}.{zone}", e.name),
        ..e.clone()
    }));
    records.sort();
    DnsConfig {
        records: records.into_iter().map(Arc::new).collect(),
        nameservers: view.network.nameservers.clone(),
        domain: zone.to_owned(),
    }
}

/// The zone made once for computing many configs ([`node_config_with`]):
/// every record ([`dns_for`]), and where each name's record is.
#[derive(Debug, Clone)]
pub struct Zone {
    dns: DnsConfig,
    /// Name relative to the zone → index in `dns.records`.
    at: std::collections::HashMap<String, usize>,
}

impl Zone {
    /// The view's zone.
    pub fn of(view: &NetworkView) -> Zone {
        let dns = dns_for(view);
        let suffix = format!(".{}", dns.domain);
        let at = dns
            .records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let name = r.name.strip_suffix(&suffix).unwrap_or(&r.name);
                (name.to_owned(), i)
            })
            .collect();
        Zone { dns, at }
    }

    /// The record of a name relative to the zone.
    fn record(&self, name: &str) -> Option<&Arc<DnsRecord>> {
        self.at.get(name).map(|&i| &self.dns.records[i])
    }
}

/// The whole config of one node, or None when the node is not in the view.
/// Under a restricting policy, peers, allowed IPs, routes and the zone's
/// names are pruned to what the policy lets the node's side exchange (see
/// [`super::policy::prune`], [`pruned_dns`]) and the firewall filters (see
/// [`firewall_with_policy`]); under an unrestricted one (the default) the
/// config is the same as without a policy.
pub fn node_config(view: &NetworkView, node_id: &str) -> Option<NodeConfig> {
    node_config_with(view, &Reach::of_view(view), &Zone::of(view), node_id)
}

/// [`node_config`] with the policy resolved and grouped once ([`Reach`]
/// over the view's `PolicyIndex` and the pieces of its egress ranges) and the zone
/// ([`Zone::of`]) computed once, for computing many nodes' configs: under a
/// restricting policy each costs about its own size.
pub fn node_config_with(
    view: &NetworkView,
    reach: &Reach<'_>,
    zone: &Zone,
    node_id: &str,
) -> Option<NodeConfig> {
    let index = reach.index();
    let net = &view.network;
    let (node, plan) = if index.is_unrestricted() {
        (view.nodes.iter().find(|n| n.id == node_id)?, None)
    } else {
        (reach.node(node_id)?, Some(reach.plan(node_id)?))
    };
    let mut peers: BTreeMap<WgKey, Arc<Peer>> = match &plan {
        None => view
            .nodes
            .iter()
            .filter(|m| m.id != node.id)
            .map(|m| {
                (
                    m.public_key,
                    Arc::new(node_peer_kept(net, m, &view.ext_clients, None)),
                )
            })
            .collect(),
        Some(p) => p
            .iter()
            .filter_map(|(id, keep)| {
                let m = reach.node(id)?;
                Some((
                    m.public_key,
                    Arc::new(node_peer_kept(net, m, reach.clients_of(id), Some(keep))),
                ))
            })
            .collect(),
    };
    if node.ingress.is_some() {
        if plan.is_some() {
            for c in reach.clients_of(&node.id) {
                peers.insert(c.public_key, Arc::new(ext_client_peer(c)));
            }
        } else {
            for c in view
                .ext_clients
                .iter()
                .filter(|c| c.enabled && c.ingress_node_id == node.id)
            {
                peers.insert(c.public_key, Arc::new(ext_client_peer(c)));
            }
        }
    }
    Some(NodeConfig {
        revision: view.revision,
        node_id: node.id.clone(),
        network: net.name.to_string(),
        interface: interface_for(net, node),
        peers,
        routes: match &plan {
            None => routes_for(node, &view.nodes),
            Some(p) => {
                // Only gateways have routes: through those the node keeps,
                // to the ranges it keeps of them.
                let kept: Vec<(&Node, &PeerKeep)> = p
                    .iter()
                    .filter(|(_, k)| !k.ranges.is_empty())
                    .filter_map(|(id, k)| Some((reach.node(id)?, k)))
                    .collect();
                routes_for(node, kept.iter().map(|(m, _)| *m))
                    .into_iter()
                    .filter(|r| {
                        kept.iter().any(|(m, k)| {
                            m.public_key == r.via_peer && k.ranges.contains(&r.destination)
                        })
                    })
                    .collect()
            }
        },
        firewall: firewall_with_policy(net, node, index),
        dns: match &plan {
            None => zone.dns.clone(),
            Some(p) => pruned_dns(view, reach, zone, node, p),
        },
    })
}

/// The zone as a node sees it under a restricting policy: the custom
/// entries, its own name, and the names of the parties it keeps (its kept
/// peers, the clients of theirs it keeps, its own clients). A name it can
/// never exchange a packet with stays out, so a config's size follows the
/// node's reach, not the network's (the server's resolver still answers
/// for every name). Built by lookups in `dns` (sorted by name), in time
/// that grows with the answer.
fn pruned_dns(
    view: &NetworkView,
    reach: &Reach<'_>,
    zone: &Zone,
    node: &Node,
    plan: &super::policy::prune::PeerPlan,
) -> DnsConfig {
    let mut names: Vec<&str> = view.dns_entries.iter().map(|e| e.name.as_str()).collect();
    names.push(node.name.as_str());
    names.extend(reach.clients_of(&node.id).map(|c| c.name.as_str()));
    for (id, keep) in plan {
        if let Some(m) = reach.node(id) {
            names.push(m.name.as_str());
        }
        names.extend(
            reach
                .clients_of(id)
                .filter(|c| keep.clients.contains(&c.id))
                .map(|c| c.name.as_str()),
        );
    }
    let mut records: Vec<Arc<DnsRecord>> = names
        .into_iter()
        .filter_map(|n| zone.record(n).cloned())
        .collect();
    records.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    records.dedup_by(|a, b| a.name == b.name);
    DnsConfig {
        records,
        nameservers: zone.dns.nameservers.clone(),
        domain: zone.dns.domain.clone(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::{
        names::DnsLabel,
        network::NetworkInput,
        node::{Egress, Ingress},
    };

    pub fn network() -> Network {
        NetworkInput {
            name: "corp".into(),
            address_range: "10.101.0.0/16".into(),
            address_range6: "fd00:101::/64".into(),
            ..Default::default()
        }
        .validate(chrono::Utc::now())
        .unwrap()
    }

    pub fn node(name: &str, n: u8) -> Node {
        let now = chrono::Utc::now();
        Node {
            id: format!("id-{name}"),
            network: DnsLabel::parse("n", "corp", 32).unwrap(),
            name: DnsLabel::parse("n", name, 63).unwrap(),
            public_key: WgKey([n; 32]),
            endpoint: None,
            listen_port: 51821,
            address: Some(Ipv4Addr::new(10, 101, 0, n)),
            address6: Some(format!("fd00:101::{n}").parse().unwrap()),
            os: String::new(),
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
            tags: vec![],
        }
    }

    pub fn client(name: &str, ingress: &Node, n: u8) -> ExtClient {
        let now = chrono::Utc::now();
        ExtClient {
            id: format!("c-{name}"),
            network: ingress.network.clone(),
            name: DnsLabel::parse("n", name, 63).unwrap(),
            ingress_node_id: ingress.id.clone(),
            public_key: WgKey([200 + n; 32]),
            sealed_private_key: None,
            address: Some(Ipv4Addr::new(10, 101, 1, n)),
            address6: None,
            dns: vec![],
            enabled: true,
            config_revision: 0,
            downloaded_revision: 0,
            create_time: now,
            update_time: now,
            tags: vec![],
        }
    }

    fn strings(v: &[IpNet]) -> Vec<String> {
        v.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn peers_carry_egress_ranges_and_ingress_clients() {
        let mut server = node("server", 1);
        server.ingress = Some(Ingress::default());
        let mut office = node("office", 2);
        office.egress = Some(Egress {
            ranges: vec!["10.10.10.0/24".parse().unwrap()],
            interface: "eth2".into(),
            nat: true,
            ..Default::default()
        });
        let laptop = node("laptop", 3);
        let phone = client("phone", &server, 9);
        let view = NetworkView {
            network: network(),
            nodes: vec![server.clone(), office.clone(), laptop.clone()],
            ext_clients: vec![phone.clone()],
            dns_entries: vec![],
            revision: 4,
            policy: Default::default(),
        };
        let cfg = node_config(&view, &laptop.id).unwrap();
        assert_eq!(cfg.peers.len(), 2);
        assert_eq!(
            strings(&cfg.peers[&office.public_key].allowed_ips),
            vec!["10.10.10.0/24", "10.101.0.2/32", "fd00:101::2/128"]
        );
        assert_eq!(
            strings(&cfg.peers[&server.public_key].allowed_ips),
            vec!["10.101.0.1/32", "10.101.1.9/32", "fd00:101::1/128"]
        );
        assert_eq!(cfg.routes.len(), 1);
        assert_eq!(cfg.routes[0].via_peer, office.public_key);
        assert_eq!(cfg.interface.addresses[0].to_string(), "10.101.0.3/16");
        assert_eq!(cfg.peers[&office.public_key].keepalive, 20);

        // The ingress node has its client as a peer; the gateway has no route
        // to its own range.
        let s = node_config(&view, &server.id).unwrap();
        assert!(s.peers[&phone.public_key].ext_client);
        let o = node_config(&view, &office.id).unwrap();
        assert!(o.routes.is_empty());
        assert!(!o.peers.contains_key(&office.public_key));

        // A disabled client is nobody's peer and in nobody's allowed IPs.
        let mut view2 = view.clone();
        view2.ext_clients[0].enabled = false;
        let s = node_config(&view2, &server.id).unwrap();
        assert!(!s.peers.contains_key(&phone.public_key));
        let l = node_config(&view2, &laptop.id).unwrap();
        assert_eq!(l.peers[&server.public_key].allowed_ips.len(), 2);
        assert_eq!(l.dns.records.len(), 4);
        assert_eq!(l.dns.records[0].name, "laptop.corp");
    }

    #[test]
    fn the_reported_interface_names_the_nodes_own_config_only() {
        let mut office = node("office", 2);
        office.egress = Some(Egress {
            ranges: vec!["10.10.10.0/24".parse().unwrap()],
            interface: "eth2".into(),
            nat: true,
            ..Default::default()
        });
        let mut laptop = node("laptop", 3);
        laptop.wireguard_interface = Some("wg0".into());
        let view = NetworkView {
            network: network(),
            nodes: vec![office.clone(), laptop.clone()],
            ext_clients: vec![],
            dns_entries: vec![],
            revision: 4,
            policy: Default::default(),
        };
        let l = node_config(&view, &laptop.id).unwrap();
        assert_eq!(l.interface.name, "wg0");
        assert_eq!(l.routes[0].dev, "wg0");
        let o = node_config(&view, &office.id).unwrap();
        assert_eq!(o.interface.name, "mp-corp");
        assert!(o.firewall.iptables_restore.contains("-i mp-corp -o eth2"));
        let mut view2 = view.clone();
        view2.nodes[0].wireguard_interface = Some("wg-office".into());
        let o2 = node_config(&view2, &office.id).unwrap();
        assert!(
            o2.firewall
                .iptables_restore
                .contains("-i wg-office -o eth2")
        );
        assert!(!o2.firewall.iptables_restore.contains("mp-corp"));
        // Others' configs do not mention it.
        assert_eq!(node_config(&view2, &laptop.id).unwrap(), l);
    }

    #[test]
    fn interface_names_fit_linux() {
        assert_eq!(interface_name("corp"), "mp-corp");
        assert!(interface_name(&"a".repeat(32)).len() <= 15);
        assert_eq!(interface_name("abcdefghijk-xyz"), "mp-abcdefghijk");
    }
}
