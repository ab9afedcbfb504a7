//! Property tests (proptest: a failure shrinks to a minimal sequence of
//! operations and its seed is kept in `server/proptest-regressions/`): over
//! any sequence of changes, the incremental state equals the plain
//! computation, deltas take any earlier config of a node to its current
//! one, and exactly the nodes whose config changed are notified. The
//! seeded [`World::step`] walks random sequences for other tests.

use std::collections::HashMap;

use chrono::Utc;
use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::*;
use crate::domain::{
    config::node_config,
    dns::{DnsEntry, DnsKind},
    event::{Action, Event, Resource},
    ext_client::ExtClient,
    names::DnsLabel,
    network::NetworkInput,
    node::{Egress, Endpoint, Ingress, WgKey},
    policy::Policy,
};

/// The "database": the truth the events describe.
pub(crate) struct World {
    rng: StdRng,
    pub(crate) view: NetworkView,
    revision: u64,
    next_addr: u32,
    next_key: u32,
    next_id: u32,
}

const NAMES: &[&str] = &["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
/// Names of custom DNS entries (never a node's or a client's).
const ENTRIES: &[&str] = &["db", "www", "cache", "db.prod"];
const RANGES: &[&str] = &[
    "10.10.10.0/24",
    "10.20.0.0/16",
    "0.0.0.0/0",
    "::/0",
    "fd10::/64",
    "192.168.1.0/24",
];
const INTERFACES: &[Option<&str>] = &[None, Some("wg0"), Some("wg1"), Some("mp-net")];

/// One change of the network, as an operator or an agent makes it. Every
/// `usize` picks among what exists (modulo its count), so any sequence of
/// operations is valid and shrinking keeps it so.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Registers a node with a free name.
    AddNode { name: usize, endpoint: bool },
    /// Changes one field of a node.
    UpdateNode { node: usize, change: NodeChange },
    /// Makes a node an egress gateway for free ranges (none: stops it
    /// being one).
    SetEgress {
        node: usize,
        ranges: Vec<usize>,
        nat: bool,
    },
    /// Makes a node one of several gateways of a range (with a metric): a
    /// free range, or one only such gateways serve.
    ShareEgress {
        node: usize,
        range: usize,
        metric: u32,
    },
    /// Moves the primary of a range several gateways serve to another of
    /// them (the server's failover).
    Failover { range: usize, to: usize },
    /// Makes a node an ingress gateway, or stops it being one (its
    /// clients go with it).
    SetIngress { node: usize, on: bool },
    /// Deletes a node and its clients.
    DeleteNode { node: usize },
    /// Creates a client on an ingress gateway.
    AddClient { ingress: usize, name: usize },
    /// Changes a client.
    UpdateClient { client: usize, change: ClientChange },
    /// Deletes a client.
    DeleteClient { client: usize },
    /// Changes the network's settings.
    UpdateNetwork(NetworkChange),
    /// Creates a custom DNS entry with a free name.
    AddDnsEntry { name: usize, v6: bool },
    /// Deletes a custom DNS entry.
    DeleteDnsEntry { entry: usize },
    /// Sets the network's policy to one of [`policies`].
    SetPolicy(usize),
}

/// What [`Op::UpdateNode`] changes.
#[derive(Debug, Clone)]
pub(crate) enum NodeChange {
    Rename(usize),
    ListenPort(u16),
    Keepalive(u32),
    Key,
    Endpoint(u8),
    /// The agent reports its interface: a new name, the default one named
    /// explicitly, or none.
    Interface(usize),
    Os,
    /// Sets its tags to one of [`TAG_SETS`].
    Tags(usize),
}

/// What [`Op::UpdateClient`] changes.
#[derive(Debug, Clone)]
pub(crate) enum ClientChange {
    Toggle,
    Rename(usize),
    Dns(u8),
    /// Sets its tags to one of [`TAG_SETS`].
    Tags(usize),
}

/// The tags a node or client may carry in these tests.
const TAG_SETS: [&[&str]; 4] = [&[], &["ops"], &["web"], &["ops", "web"]];

fn tag_set(pick: usize) -> Vec<crate::domain::policy::Tag> {
    TAG_SETS[pick % TAG_SETS.len()]
        .iter()
        .map(|t| crate::domain::policy::Tag::parse("t", t).unwrap())
        .collect()
}

/// What [`Op::UpdateNetwork`] changes.
#[derive(Debug, Clone)]
pub(crate) enum NetworkChange {
    Keepalive(u32),
    Mtu(u32),
    Nameserver(u8),
}

/// Any operation (the proptest strategy).
pub(crate) fn op() -> impl Strategy<Value = Op> {
    let pick = any::<usize>;
    let node_change = prop_oneof![
        pick().prop_map(NodeChange::Rename),
        (50000..50010u16).prop_map(NodeChange::ListenPort),
        (0..3u32).prop_map(|k| NodeChange::Keepalive(k * 10)),
        Just(NodeChange::Key),
        (1..9u8).prop_map(NodeChange::Endpoint),
        pick().prop_map(NodeChange::Interface),
        Just(NodeChange::Os),
        pick().prop_map(NodeChange::Tags),
    ];
    let client_change = prop_oneof![
        Just(ClientChange::Toggle),
        pick().prop_map(ClientChange::Rename),
        (1..4u8).prop_map(ClientChange::Dns),
        pick().prop_map(ClientChange::Tags),
    ];
    let network_change = prop_oneof![
        (0..3u32).prop_map(|k| NetworkChange::Keepalive(k * 15)),
        (0..3u32).prop_map(|m| NetworkChange::Mtu(1380 + m * 10)),
        (1..4u8).prop_map(NetworkChange::Nameserver),
    ];
    prop_oneof![
        4 => (pick(), any::<bool>()).prop_map(|(name, endpoint)| Op::AddNode { name, endpoint }),
        4 => (pick(), node_change).prop_map(|(node, change)| Op::UpdateNode { node, change }),
        3 => (pick(), prop::collection::vec(pick(), 0..3), any::<bool>())
            .prop_map(|(node, ranges, nat)| Op::SetEgress { node, ranges, nat }),
        2 => (pick(), any::<bool>()).prop_map(|(node, on)| Op::SetIngress { node, on }),
        2 => (pick(), pick(), 0..3u32)
            .prop_map(|(node, range, metric)| Op::ShareEgress { node, range, metric }),
        2 => (pick(), pick()).prop_map(|(range, to)| Op::Failover { range, to }),
        1 => pick().prop_map(|node| Op::DeleteNode { node }),
        2 => (pick(), pick()).prop_map(|(ingress, name)| Op::AddClient { ingress, name }),
        2 => (pick(), client_change).prop_map(|(client, change)| Op::UpdateClient { client, change }),
        1 => pick().prop_map(|client| Op::DeleteClient { client }),
        1 => network_change.prop_map(Op::UpdateNetwork),
        1 => (pick(), any::<bool>()).prop_map(|(name, v6)| Op::AddDnsEntry { name, v6 }),
        1 => pick().prop_map(|entry| Op::DeleteDnsEntry { entry }),
    ]
}

/// Any operation, or, `weight` times in 30, a change of the policy (the
/// tests of one policy keep to theirs: [`op`]).
pub(crate) fn policy_op(weight: u32) -> impl Strategy<Value = Op> {
    prop_oneof![
        30 - weight => op(),
        weight => any::<usize>().prop_map(Op::SetPolicy),
    ]
}

/// Policies the property tests switch between: restricting ones by names,
/// tags, destination tags, ranges, each with variants one edit apart
/// (a port, the order of two rules, the default, a range cut finer, a
/// source widened), and the unrestricted default.
/// A policy by node names, ranges and `*` (the world's nodes are named
/// from a to j).
fn by_names(default: crate::domain::policy::Action) -> Policy {
    use crate::domain::policy::{Action::*, PolicyInput, Protocol::*};
    PolicyInput {
        default_action: Some(default),
        rules: vec![
            rule(&["node:a"], &["10.10.10.0/25"], vec![], &[], Deny),
            rule(
                &["node:a", "node:c"],
                &["*"],
                vec![Some(Tcp)],
                &["22"],
                Allow,
            ),
            rule(&["*"], &["node:b", "fd10::/64"], vec![], &[], Allow),
            rule(&["node:d"], &["*"], vec![], &[], Deny),
        ],
    }
    .validate()
    .unwrap()
}

/// Default DENY and one rule: `sources` may reach `tag:ops` on tcp/`port`.
fn to_ops(sources: &[&str], port: &str) -> Policy {
    use crate::domain::policy::{Action::*, PolicyInput, Protocol::*};
    PolicyInput {
        default_action: Some(Deny),
        rules: vec![rule(sources, &["tag:ops"], vec![Some(Tcp)], &[port], Allow)],
    }
    .validate()
    .unwrap()
}

/// A policy by tags: a tag-to-tag DENY, `tag:ops` to anything on
/// tcp/`port`, anything to the web tag and `range`, node b to the ops tag
/// and an IPv6 range on udp (`swap`: the first two rules swapped).
fn by_tags(default: crate::domain::policy::Action, port: &str, swap: bool, range: &str) -> Policy {
    use crate::domain::policy::{Action::*, PolicyInput, Protocol::*};
    let mut rules = vec![
        rule(&["tag:web"], &["tag:ops"], vec![], &[], Deny),
        rule(&["tag:ops"], &["*"], vec![Some(Tcp)], &[port], Allow),
        rule(&["*"], &["tag:web", range], vec![], &[], Allow),
        rule(
            &["node:b"],
            &["tag:ops", "fd10::/64"],
            vec![Some(Udp)],
            &[],
            Allow,
        ),
    ];
    if swap {
        rules.swap(0, 1);
    }
    PolicyInput {
        default_action: Some(default),
        rules,
    }
    .validate()
    .unwrap()
}

fn policies() -> Vec<Policy> {
    use crate::domain::policy::{Action::*, PolicyInput, Protocol::*};
    let ranges = PolicyInput {
        default_action: Some(Deny),
        rules: vec![
            rule(
                &["*"],
                &["192.168.1.0/24", "10.20.0.0/17"],
                vec![],
                &[],
                Allow,
            ),
            rule(&["tag:ops"], &["*"], vec![Some(Icmp)], &[], Allow),
        ],
    };
    let one_deny = PolicyInput {
        default_action: Some(Allow),
        rules: vec![rule(&["tag:ops"], &["tag:web"], vec![], &[], Deny)],
    };
    vec![
        by_names(Deny),
        by_names(Allow),
        to_ops(&["tag:web"], "5432"),
        to_ops(&["tag:web"], "5433"),
        to_ops(&["*"], "5432"),
        by_tags(Deny, "22", false, "10.10.10.0/24"),
        by_tags(Deny, "2222", false, "10.10.10.0/24"),
        by_tags(Deny, "22", true, "10.10.10.0/24"),
        by_tags(Allow, "22", false, "10.10.10.0/24"),
        by_tags(Deny, "22", false, "10.10.10.0/25"),
        ranges.validate().unwrap(),
        one_deny.validate().unwrap(),
        Policy::default(),
    ]
}

impl Op {
    /// A random operation, for tests that walk a seeded sequence.
    fn random(rng: &mut StdRng, nodes: usize) -> Op {
        let pick = |rng: &mut StdRng| rng.random::<u32>() as usize;
        match rng.random_range(0..100) {
            0..=19 => Op::AddNode {
                name: pick(rng),
                endpoint: rng.random_bool(0.5),
            },
            20..=39 => Op::UpdateNode {
                node: pick(rng),
                change: match rng.random_range(0..7) {
                    0 => NodeChange::Rename(pick(rng)),
                    1 => NodeChange::ListenPort(rng.random_range(50000..50010)),
                    2 => NodeChange::Keepalive(rng.random_range(0..3) * 10),
                    3 => NodeChange::Key,
                    4 => NodeChange::Endpoint(rng.random_range(1..9)),
                    5 => NodeChange::Interface(pick(rng)),
                    _ => NodeChange::Os,
                },
            },
            40..=54 => Op::SetEgress {
                node: pick(rng),
                ranges: if rng.random_bool(0.3) {
                    vec![]
                } else {
                    (0..rng.random_range(1..=2)).map(|_| pick(rng)).collect()
                },
                nat: rng.random_bool(0.5),
            },
            55..=64 => Op::SetIngress {
                node: pick(rng),
                on: rng.random_bool(0.5),
            },
            65..=74 if nodes > 1 => Op::DeleteNode { node: pick(rng) },
            75..=84 => Op::AddClient {
                ingress: pick(rng),
                name: pick(rng),
            },
            85..=92 if rng.random_bool(0.3) => Op::DeleteClient { client: pick(rng) },
            85..=92 => Op::UpdateClient {
                client: pick(rng),
                change: match rng.random_range(0..3) {
                    0 => ClientChange::Toggle,
                    1 => ClientChange::Rename(pick(rng)),
                    _ => ClientChange::Dns(rng.random_range(1..4)),
                },
            },
            93..=96 => Op::UpdateNetwork(match rng.random_range(0..3) {
                0 => NetworkChange::Keepalive(rng.random_range(0..3) * 15),
                1 => NetworkChange::Mtu(1380 + rng.random_range(0..3) * 10),
                _ => NetworkChange::Nameserver(rng.random_range(1..4)),
            }),
            97..=98 => Op::AddDnsEntry {
                name: pick(rng),
                v6: rng.random_bool(0.5),
            },
            _ => Op::DeleteDnsEntry { entry: pick(rng) },
        }
    }
}

impl World {
    pub(crate) fn new(seed: u64) -> Self {
        let network = NetworkInput {
            name: "net".into(),
            address_range: "10.99.0.0/16".into(),
            address_range6: "fd00:99::/64".into(),
            ..Default::default()
        }
        .validate(Utc::now())
        .unwrap();
        World {
            rng: StdRng::seed_from_u64(seed),
            view: NetworkView {
                network,
                nodes: vec![],
                ext_clients: vec![],
                dns_entries: vec![],
                revision: 1,
                policy: Default::default(),
            },
            revision: 1,
            next_addr: 1,
            next_key: 1,
            next_id: 1,
        }
    }

    /// A name no node or client has, picked by `pick`.
    fn free_name(&self, pick: usize) -> Option<DnsLabel> {
        let used: Vec<&str> = self
            .view
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .chain(self.view.ext_clients.iter().map(|c| c.name.as_str()))
            .collect();
        let free: Vec<&&str> = NAMES.iter().filter(|n| !used.contains(n)).collect();
        (!free.is_empty()).then(|| DnsLabel::parse("n", free[pick % free.len()], 63).unwrap())
    }

    /// A key no one has had.
    fn key(&mut self) -> WgKey {
        self.next_key += 1;
        let mut k = [7u8; 32];
        k[..4].copy_from_slice(&self.next_key.to_be_bytes());
        WgKey(k)
    }

    fn addr(&mut self) -> (std::net::Ipv4Addr, std::net::Ipv6Addr) {
        self.next_addr += 1;
        let n = self.next_addr;
        (
            std::net::Ipv4Addr::new(10, 99, (n / 256) as u8, (n % 256) as u8),
            format!("fd00:99::{n:x}").parse().unwrap(),
        )
    }

    fn event(&mut self, action: Action, resource: Resource) -> Event {
        self.revision += 1;
        self.view.revision = self.revision;
        Event {
            revision: self.revision,
            action,
            time: Utc::now(),
            resource,
        }
    }

    fn node_event(&mut self, i: usize, action: Action) -> Event {
        let n = self.view.nodes[i].clone();
        self.event(action, Resource::Node(Box::new(n)))
    }

    /// Sets the network's policy (no event when it is the same).
    pub(crate) fn set_policy(&mut self, policy: Policy) -> Vec<Event> {
        if policy == self.view.policy {
            return vec![];
        }
        self.view.policy = policy.clone();
        let network = self.view.network.name.clone();
        vec![self.event(
            Action::Updated,
            Resource::Policy(Box::new(crate::domain::policy::NetworkPolicy {
                network,
                policy,
                revision: 0,
                update_time: None,
            })),
        )]
    }

    /// One random change, as the events the store would log.
    pub(crate) fn step(&mut self) -> Vec<Event> {
        let op = Op::random(&mut self.rng, self.view.nodes.len());
        self.apply(&op)
    }

    /// The events of `op` (none when it has nothing to act on).
    pub(crate) fn apply(&mut self, op: &Op) -> Vec<Event> {
        let now = Utc::now();
        let nodes = self.view.nodes.len();
        let clients = self.view.ext_clients.len();
        match op.clone() {
            Op::AddNode { name, endpoint } => {
                let Some(name) = self.free_name(name) else {
                    return vec![];
                };
                let (a4, a6) = self.addr();
                self.next_id += 1;
                let mut node = crate::domain::config::tests::node(name.as_str(), 1);
                node.id = format!("n{}", self.next_id);
                node.network = self.view.network.name.clone();
                node.public_key = self.key();
                node.endpoint =
                    endpoint.then(|| Endpoint::parse("e", "198.51.100.1:51821").unwrap());
                node.address = Some(a4);
                node.address6 = Some(a6);
                self.view.nodes.push(node);
                vec![self.node_event(nodes, Action::Created)]
            }
            Op::UpdateNode { node, change } if nodes > 0 => {
                let i = node % nodes;
                match change {
                    NodeChange::Rename(pick) => {
                        if let Some(name) = self.free_name(pick) {
                            self.view.nodes[i].name = name;
                        }
                    }
                    NodeChange::ListenPort(p) => self.view.nodes[i].listen_port = p,
                    NodeChange::Keepalive(k) => self.view.nodes[i].keepalive = k,
                    NodeChange::Key => self.view.nodes[i].public_key = self.key(),
                    NodeChange::Endpoint(host) => {
                        self.view.nodes[i].endpoint =
                            Some(Endpoint::parse("e", &format!("203.0.113.{host}:51821")).unwrap())
                    }
                    NodeChange::Interface(pick) => {
                        self.view.nodes[i].wireguard_interface =
                            INTERFACES[pick % INTERFACES.len()].map(String::from)
                    }
                    NodeChange::Os => self.view.nodes[i].os = "changed".into(),
                    NodeChange::Tags(pick) => self.view.nodes[i].tags = tag_set(pick),
                }
                vec![self.node_event(i, Action::Updated)]
            }
            Op::SetEgress { node, ranges, nat } if nodes > 0 => {
                let i = node % nodes;
                let taken: Vec<String> = self
                    .view
                    .nodes
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .filter_map(|(_, n)| n.egress.as_ref())
                    .flat_map(|e| e.ranges.iter().map(ToString::to_string))
                    .collect();
                let free: Vec<&&str> = RANGES
                    .iter()
                    .filter(|r| !taken.contains(&r.to_string()))
                    .collect();
                let mut chosen: Vec<ipnet::IpNet> = if free.is_empty() {
                    vec![]
                } else {
                    ranges
                        .iter()
                        .map(|p| free[p % free.len()].parse().unwrap())
                        .collect()
                };
                chosen.sort();
                chosen.dedup();
                self.view.nodes[i].egress = (!chosen.is_empty()).then(|| Egress {
                    ranges: chosen,
                    interface: "eth0".into(),
                    nat,
                    ..Default::default()
                });
                let mut out = vec![self.node_event(i, Action::Updated)];
                out.extend(self.fix_primaries());
                out
            }
            Op::SetIngress { node, on } if nodes > 0 => {
                let i = node % nodes;
                let mut out = Vec::new();
                if on {
                    self.view.nodes[i].ingress = Some(Ingress::default());
                } else if self.view.nodes[i].ingress.is_some() {
                    out.extend(self.drop_clients_of(i));
                    self.view.nodes[i].ingress = None;
                }
                out.push(self.node_event(i, Action::Updated));
                out
            }
            Op::DeleteNode { node } if nodes > 0 => {
                let i = node % nodes;
                let mut out = self.drop_clients_of(i);
                let n = self.view.nodes.remove(i);
                out.push(self.event(Action::Deleted, Resource::Node(Box::new(n))));
                out.extend(self.fix_primaries());
                out
            }
            Op::ShareEgress {
                node,
                range,
                metric,
            } if nodes > 0 => {
                let i = node % nodes;
                // Ranges no exclusive gateway (other than this node) serves.
                let shareable: Vec<ipnet::IpNet> = RANGES
                    .iter()
                    .map(|r| r.parse().unwrap())
                    .filter(|r| {
                        self.view.nodes.iter().enumerate().all(|(j, n)| {
                            j == i
                                || n.egress
                                    .as_ref()
                                    .is_none_or(|e| e.metric.is_some() || !e.ranges.contains(r))
                        })
                    })
                    .collect();
                if shareable.is_empty() {
                    return vec![];
                }
                let r = shareable[range % shareable.len()];
                // It joins as a standby when the range has a primary.
                let served = self.view.nodes.iter().enumerate().any(|(j, n)| {
                    j != i
                        && n.egress
                            .as_ref()
                            .is_some_and(|e| e.routed().any(|x| *x == r))
                });
                self.view.nodes[i].egress = Some(Egress {
                    ranges: vec![r],
                    interface: "eth0".into(),
                    nat: metric != 1,
                    metric: Some(metric),
                    standby: if served { vec![r] } else { vec![] },
                    ..Default::default()
                });
                let mut out = vec![self.node_event(i, Action::Updated)];
                out.extend(self.fix_primaries());
                out
            }
            Op::Failover { range, to } => {
                let r: ipnet::IpNet = RANGES[range % RANGES.len()].parse().unwrap();
                let serving = self.serving(r);
                if serving.len() < 2 {
                    return vec![];
                }
                let new = serving[to % serving.len()];
                let Some(old) = serving.iter().copied().find(|&j| {
                    self.view.nodes[j]
                        .egress
                        .as_ref()
                        .is_some_and(|e| e.routed().any(|x| *x == r))
                }) else {
                    return vec![];
                };
                if old == new {
                    return vec![];
                }
                let e = self.view.nodes[old].egress.as_mut().unwrap();
                e.standby.push(r);
                e.standby.sort();
                let e = self.view.nodes[new].egress.as_mut().unwrap();
                e.standby.retain(|x| *x != r);
                vec![
                    self.node_event(old, Action::Updated),
                    self.node_event(new, Action::Updated),
                ]
            }
            Op::AddClient { ingress, name } => {
                let ingresses: Vec<String> = self
                    .view
                    .nodes
                    .iter()
                    .filter(|n| n.ingress.is_some())
                    .map(|n| n.id.clone())
                    .collect();
                if ingresses.is_empty() {
                    return vec![];
                }
                let ing = ingresses[ingress % ingresses.len()].clone();
                let Some(name) = self.free_name(name) else {
                    return vec![];
                };
                let (a4, a6) = self.addr();
                self.next_id += 1;
                let c = ExtClient {
                    id: format!("c{}", self.next_id),
                    network: self.view.network.name.clone(),
                    name,
                    ingress_node_id: ing,
                    public_key: self.key(),
                    sealed_private_key: None,
                    address: Some(a4),
                    address6: Some(a6),
                    dns: vec![],
                    enabled: true,
                    config_revision: 0,
                    downloaded_revision: 0,
                    create_time: now,
                    update_time: now,
                    tags: vec![],
                };
                self.view.ext_clients.push(c.clone());
                vec![self.event(Action::Created, Resource::ExtClient(Box::new(c)))]
            }
            Op::UpdateClient { client, change } if clients > 0 => {
                let i = client % clients;
                match change {
                    ClientChange::Toggle => self.view.ext_clients[i].enabled ^= true,
                    ClientChange::Rename(pick) => {
                        if let Some(name) = self.free_name(pick) {
                            self.view.ext_clients[i].name = name;
                        }
                    }
                    ClientChange::Dns(d) => {
                        self.view.ext_clients[i].dns = vec![format!("1.1.1.{d}").parse().unwrap()]
                    }
                    ClientChange::Tags(pick) => self.view.ext_clients[i].tags = tag_set(pick),
                }
                let c = self.view.ext_clients[i].clone();
                vec![self.event(Action::Updated, Resource::ExtClient(Box::new(c)))]
            }
            Op::DeleteClient { client } if clients > 0 => {
                let c = self.view.ext_clients.remove(client % clients);
                vec![self.event(Action::Deleted, Resource::ExtClient(Box::new(c)))]
            }
            Op::UpdateNetwork(change) => {
                match change {
                    NetworkChange::Keepalive(k) => self.view.network.keepalive = k,
                    NetworkChange::Mtu(m) => self.view.network.mtu = m,
                    NetworkChange::Nameserver(n) => {
                        self.view.network.nameservers = vec![format!("9.9.9.{n}").parse().unwrap()]
                    }
                }
                let n = self.view.network.clone();
                vec![self.event(Action::Updated, Resource::Network(n))]
            }
            Op::AddDnsEntry { name, v6 } => {
                let free: Vec<&&str> = ENTRIES
                    .iter()
                    .filter(|e| !self.view.dns_entries.iter().any(|d| d.name == **e))
                    .collect();
                if free.is_empty() {
                    return vec![];
                }
                let (a4, a6) = self.addr();
                let entry = DnsEntry {
                    network: self.view.network.name.clone(),
                    name: free[name % free.len()].to_string(),
                    address: Some(a4),
                    address6: v6.then_some(a6),
                    kind: DnsKind::Custom,
                    create_time: now,
                };
                self.view.dns_entries.push(DnsRecord {
                    name: entry.name.clone(),
                    address: entry.address,
                    address6: entry.address6,
                });
                vec![self.event(Action::Created, Resource::DnsEntry(entry))]
            }
            Op::DeleteDnsEntry { entry } if !self.view.dns_entries.is_empty() => {
                let r = self
                    .view
                    .dns_entries
                    .remove(entry % self.view.dns_entries.len());
                let entry = DnsEntry {
                    network: self.view.network.name.clone(),
                    name: r.name,
                    address: r.address,
                    address6: r.address6,
                    kind: DnsKind::Custom,
                    create_time: now,
                };
                vec![self.event(Action::Deleted, Resource::DnsEntry(entry))]
            }
            Op::SetPolicy(pick) => {
                let all = policies();
                self.set_policy(all[pick % all.len()].clone())
            }
            _ => vec![],
        }
    }

    /// The indices of the gateways serving `r`.
    fn serving(&self, r: ipnet::IpNet) -> Vec<usize> {
        (0..self.view.nodes.len())
            .filter(|&j| {
                self.view.nodes[j]
                    .egress
                    .as_ref()
                    .is_some_and(|e| e.ranges.contains(&r))
            })
            .collect()
    }

    /// What the server keeps true: every range several gateways serve is
    /// routed through exactly one of them (the lowest metric, then id, when
    /// none or several are); the events of the gateways it changes.
    fn fix_primaries(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        for r in RANGES.iter().map(|r| r.parse::<ipnet::IpNet>().unwrap()) {
            let mut serving = self.serving(r);
            serving.sort_by_key(|&j| {
                let n = &self.view.nodes[j];
                (n.egress.as_ref().unwrap().metric, n.id.clone())
            });
            let routed: Vec<usize> = serving
                .iter()
                .copied()
                .filter(|&j| {
                    self.view.nodes[j]
                        .egress
                        .as_ref()
                        .unwrap()
                        .routed()
                        .any(|x| *x == r)
                })
                .collect();
            let keep = routed.first().or(serving.first()).copied();
            for &j in &serving {
                let e = self.view.nodes[j].egress.as_mut().unwrap();
                let was = e.standby.clone();
                if Some(j) == keep {
                    e.standby.retain(|x| *x != r);
                } else if !e.standby.contains(&r) {
                    e.standby.push(r);
                    e.standby.sort();
                }
                if e.standby != was {
                    out.push(self.node_event(j, Action::Updated));
                }
            }
        }
        out
    }

    fn drop_clients_of(&mut self, i: usize) -> Vec<Event> {
        let id = self.view.nodes[i].id.clone();
        let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.view.ext_clients)
            .into_iter()
            .partition(|c| c.ingress_node_id == id);
        self.view.ext_clients = keep;
        gone.into_iter()
            .map(|c| self.event(Action::Deleted, Resource::ExtClient(Box::new(c))))
            .collect()
    }
}

fn without_revision(mut c: NodeConfig) -> NodeConfig {
    c.revision = 0;
    c
}

/// Applies `ops` to the world and, as events, to the incremental state,
/// checking after each: incremental == plain computation for every node,
/// exactly the nodes whose config changed moved to a new revision, and
/// every config an agent held earlier becomes the current one through a
/// delta (or needs a snapshot, when it fell out of the log).
fn run(ops: &[Op], capacity: usize) -> Result<(), TestCaseError> {
    run_under(ops, capacity, Policy::default())
}

/// [`run`] in a network with `policy`. Under a restricting one the state
/// computes configs whole and notifies every node of every node, client
/// and network change (see [`NetworkState`]'s `policy`): incremental ==
/// plain still holds, every changed node is notified (maybe more), and a
/// delta, when one is given, is exact.
fn run_under(ops: &[Op], capacity: usize, policy: Policy) -> Result<(), TestCaseError> {
    // Exact notification and deltas everywhere only while no policy
    // restricts (a change into or out of one sends snapshots).
    let strict = policy.is_unrestricted() && !ops.iter().any(|o| matches!(o, Op::SetPolicy(_)));
    let mut w = World::new(0);
    w.view.policy = policy;
    let mut state = NetworkState::from_view(w.view.clone()).with_capacity(capacity);
    // Configs agents hold: node id -> (revision, config), from earlier points.
    let mut held: HashMap<String, Vec<NodeConfig>> = HashMap::new();
    for (step, op) in ops.iter().enumerate() {
        let before: HashMap<String, NodeConfig> = state
            .node_ids()
            .map(|id| (id.clone(), state.snapshot(id).unwrap()))
            .collect();
        let events = w.apply(op);
        for ev in &events {
            state.apply(ev);
            // Replaying the same event changes nothing.
            prop_assert_eq!(state.apply(ev), Affected::Nobody);
        }
        // Incremental == plain computation, for every node.
        for n in &w.view.nodes {
            let inc = state.snapshot(&n.id).expect("node in state");
            let plain = node_config(&w.view, &n.id).unwrap();
            prop_assert_eq!(
                without_revision(inc.clone()),
                without_revision(plain),
                "step {} ({:?}): node {}",
                step,
                op,
                n.id
            );
            // Exactly the changed nodes moved to a new revision.
            if let Some(b) = before.get(&n.id) {
                let changed = without_revision(b.clone()) != without_revision(inc.clone());
                let moved = inc.revision != b.revision;
                prop_assert!(
                    changed == moved || (!strict && moved),
                    "step {} ({:?}): node {} changed={} notified={}\n{:#?}",
                    step,
                    op,
                    n.id,
                    changed,
                    moved,
                    events
                );
            }
            // Every config an agent held becomes the current one via a delta
            // (or needs a snapshot, when it fell out of the log).
            for old in held.get(&n.id).into_iter().flatten() {
                match state.delta(&n.id, old.revision) {
                    Some(d) => {
                        let mut c = old.clone();
                        d.apply_to(&mut c);
                        prop_assert_eq!(
                            &c,
                            &inc,
                            "step {} ({:?}): delta from {}",
                            step,
                            op,
                            old.revision
                        );
                    }
                    None => prop_assert!(
                        !strict || old.revision < state.floor || old.revision == 0,
                        "step {}: revision {} refused inside the log window",
                        step,
                        old.revision
                    ),
                }
            }
            let h = held.entry(n.id.clone()).or_default();
            if h.last().is_none_or(|c| c.revision != inc.revision) {
                h.push(inc);
            }
            if h.len() > 8 {
                h.remove(0);
            }
        }
    }
    Ok(())
}

/// A policy rule from its parts as an operator writes them.
fn rule(
    src: &[&str],
    dst: &[&str],
    protocols: Vec<Option<crate::domain::policy::Protocol>>,
    ports: &[&str],
    action: crate::domain::policy::Action,
) -> crate::domain::policy::RuleInput {
    crate::domain::policy::RuleInput {
        name: String::new(),
        sources: src.iter().map(|s| s.to_string()).collect(),
        destinations: dst.iter().map(|s| s.to_string()).collect(),
        protocols,
        ports: ports.iter().map(|s| s.to_string()).collect(),
        action: Some(action),
    }
}

proptest! {
    #![proptest_config(crate::domain::proptests::config(64))]

    /// The property of the hub: over any sequence of changes, the
    /// incremental state equals the plain computation (see [`run`]).
    #[test]
    fn prop_deltas_and_snapshots_agree_over_any_changes(
        ops in prop::collection::vec(op(), 0..150)
    ) {
        run(&ops, LOG_CAPACITY)?;
    }

    /// The same with a log of 5 changes: agents that fell behind it need
    /// snapshots, and get them.
    #[test]
    fn prop_a_small_log_falls_back_to_snapshots(ops in prop::collection::vec(op(), 0..150)) {
        run(&ops, 5)?;
    }

    /// The same under a restricting policy (by node names, ranges and
    /// `*`; the world's nodes are named from a to j).
    #[test]
    fn prop_incremental_equals_fresh_under_a_policy(
        ops in prop::collection::vec(op(), 0..100),
        deny in any::<bool>(),
    ) {
        use crate::domain::policy::Action;
        let policy = by_names(if deny { Action::Deny } else { Action::Allow });
        run_under(&ops, 16, policy)?;
    }

    /// The same while the policy itself changes often, among restricting
    /// ones one edit apart and the unrestricted default: a change
    /// between restricting policies reaches the nodes [`shift`] finds,
    /// as deltas that must bring each to its fresh config.
    #[test]
    fn prop_incremental_equals_fresh_as_the_policy_changes(
        ops in prop::collection::vec(policy_op(6), 0..100),
        first in any::<usize>(),
    ) {
        let all = policies();
        run_under(&ops, 16, all[first % all.len()].clone())?;
    }

    /// The same under default DENY with a tag picked only as a
    /// destination (a node's firewall names only its own addresses of a
    /// destination list, so a neighbour joining the tag changes nothing
    /// of it).
    #[test]
    fn prop_incremental_equals_fresh_under_a_policy_by_destination_tags(
        ops in prop::collection::vec(op(), 0..100),
    ) {
        let policy = to_ops(&["tag:web"], "5432");
        run_under(&ops, 16, policy)?;
    }

    /// The same under a policy by tags (nodes and clients change tags),
    /// with a tag-to-tag DENY (firewalls listing tagged addresses) and
    /// anything reaching the web tag and a range behind gateways.
    #[test]
    fn prop_incremental_equals_fresh_under_a_policy_by_tags(
        ops in prop::collection::vec(op(), 0..100),
        deny in any::<bool>(),
    ) {
        use crate::domain::policy::Action;
        let policy = by_tags(if deny { Action::Deny } else { Action::Allow }, "22", false, "10.10.10.0/24");
        run_under(&ops, 16, policy)?;
    }
}

#[test]
fn unknown_and_future_revisions_need_a_snapshot() {
    let mut w = World::new(7);
    let mut state = NetworkState::from_view(w.view.clone());
    while w.view.nodes.len() < 3 {
        for ev in w.step() {
            state.apply(&ev);
        }
    }
    let id = w.view.nodes[0].id.clone();
    let current = state.node_revision(&id).unwrap();
    assert!(state.delta(&id, current).unwrap().is_empty());
    assert!(state.delta(&id, current + 1).is_none());
    assert!(state.delta(&id, 0).is_none());
    // A revision from before the node existed.
    assert!(state.delta(&id, 1).is_none());
    assert!(state.delta("nobody", current).is_none());
}

/// A node joining a tag that a rule picks only as a destination changes
/// nothing of its neighbour's firewall (which names only its own addresses
/// of the list), so reaching the sources' nodes is enough.
#[test]
fn a_neighbour_joining_a_destination_tag_leaves_a_firewall_as_it_was() {
    let policy = to_ops(&["tag:web"], "5432");
    let add = || Op::AddNode {
        name: 0,
        endpoint: false,
    };
    let tag = |node, set| Op::UpdateNode {
        node,
        change: NodeChange::Tags(set),
    };
    // a (10.99.0.2) and b (10.99.0.3) share a /31; c is the web node.
    let ops = [add(), add(), add(), tag(2, 2), tag(0, 1), tag(1, 1)];
    run_under(&ops, 16, policy).unwrap();
}

/// A spoke whose last change is far older than the log (every spoke that
/// joined after it reached only the hub) still gets a delta for the
/// hub's next change, and the delta brings it to its config.
#[test]
fn a_spoke_resumes_from_a_revision_older_than_the_log() {
    use crate::domain::policy::{Action, PolicyInput};
    let mut w = World::new(0);
    w.view.policy = PolicyInput {
        default_action: Some(Action::Deny),
        rules: vec![rule(&["*"], &["tag:ops"], vec![], &[], Action::Allow)],
    }
    .validate()
    .unwrap();
    let mut state = NetworkState::from_view(w.view.clone()).with_capacity(3);
    let apply = |w: &mut World, state: &mut NetworkState, op: Op| {
        for ev in w.apply(&op) {
            state.apply(&ev);
        }
    };
    let add = || Op::AddNode {
        name: 0,
        endpoint: true,
    };
    apply(&mut w, &mut state, add());
    apply(
        &mut w,
        &mut state,
        Op::UpdateNode {
            node: 0,
            change: NodeChange::Tags(1),
        },
    );
    apply(&mut w, &mut state, add());
    let spoke = w.view.nodes[1].id.clone();
    let held = state.snapshot(&spoke).unwrap();
    assert_eq!(held.peers.len(), 1, "the spoke keeps the hub");
    for _ in 0..6 {
        apply(&mut w, &mut state, add());
    }
    assert_eq!(
        state.node_revision(&spoke),
        Some(held.revision),
        "spokes joining do not reach it"
    );
    assert!(held.revision < state.floor, "its revision has left the log");
    apply(
        &mut w,
        &mut state,
        Op::UpdateNode {
            node: 0,
            change: NodeChange::Endpoint(7),
        },
    );
    let d = state
        .delta(&spoke, held.revision)
        .expect("a delta from the revision before the hub's change");
    let mut c = held.clone();
    d.apply_to(&mut c);
    assert_eq!(c, state.snapshot(&spoke).unwrap());
    assert_ne!(c, held);
}

/// A policy change reaches only the nodes whose config it may change: a
/// port of a rule, the nodes the rule's destinations pick (their
/// firewall, no peer); a source added, that source and the destinations
/// (peers on both sides). Each gets a delta that brings it to its fresh
/// config; the others keep their revision.
#[test]
fn a_policy_change_reaches_only_the_nodes_whose_config_it_changes() {
    let policy = to_ops;
    let mut w = World::new(0);
    w.view.policy = policy(&["tag:web"], "5432");
    let mut state = NetworkState::from_view(w.view.clone());
    let apply = |_: &mut World, state: &mut NetworkState, evs: Vec<Event>| {
        for ev in evs {
            state.apply(&ev);
        }
    };
    // a, b: ops; c, d: web; e: untagged.
    for _ in 0..5 {
        let evs = w.apply(&Op::AddNode {
            name: 0,
            endpoint: true,
        });
        apply(&mut w, &mut state, evs);
    }
    for (node, set) in [(0, 1), (1, 1), (2, 2), (3, 2)] {
        let evs = w.apply(&Op::UpdateNode {
            node,
            change: NodeChange::Tags(set),
        });
        apply(&mut w, &mut state, evs);
    }
    let ids: Vec<String> = w.view.nodes.iter().map(|n| n.id.clone()).collect();
    let held: Vec<NodeConfig> = ids.iter().map(|id| state.snapshot(id).unwrap()).collect();
    assert_eq!(held[0].peers.len(), 2, "a keeps the web nodes");
    assert!(held[4].peers.is_empty(), "e keeps nobody");
    let check =
        |view: &NetworkView, state: &NetworkState, held: &[NodeConfig], reached: &[usize]| {
            for (i, id) in ids.iter().enumerate() {
                let now = state.snapshot(id).unwrap();
                assert_eq!(
                    without_revision(now.clone()),
                    without_revision(node_config(view, id).unwrap())
                );
                if !reached.contains(&i) {
                    assert_eq!(now.revision, held[i].revision, "node {i} not reached");
                    continue;
                }
                assert_ne!(now.revision, held[i].revision, "node {i} reached");
                let d = state.delta(id, held[i].revision).expect("a delta");
                let mut c = held[i].clone();
                d.apply_to(&mut c);
                assert_eq!(c, now, "node {i}'s delta");
            }
        };
    // A port: the ops nodes' firewalls, nothing of anyone's peers.
    let evs = w.set_policy(policy(&["tag:web"], "5433"));
    apply(&mut w, &mut state, evs);
    check(&w.view, &state, &held, &[0, 1]);
    let d = state.delta(&ids[0], held[0].revision).unwrap();
    assert!(d.firewall.is_some() && d.upsert_peers.is_empty() && d.remove_peers.is_empty());
    // A source added: e and the ops nodes keep each other now.
    let held: Vec<NodeConfig> = ids.iter().map(|id| state.snapshot(id).unwrap()).collect();
    let evs = w.set_policy(policy(&["tag:web", "node:e"], "5433"));
    apply(&mut w, &mut state, evs);
    check(&w.view, &state, &held, &[0, 1, 4]);
    let d = state.delta(&ids[4], held[4].revision).unwrap();
    assert_eq!(d.upsert_peers.len(), 2, "e gets a and b");
    assert_eq!(state.snapshot(&ids[4]).unwrap().dns.records.len(), 3);
}

/// Past [`SHIFTS_KEPT`] policy changes, a node reached by the oldest gets
/// a snapshot when it resumes from before it (that shift's detail is
/// dropped); from after it, still a delta that brings it to its config.
#[test]
fn a_node_resuming_across_a_dropped_policy_change_gets_a_snapshot() {
    let policy = |port: u16| to_ops(&["tag:web"], &port.to_string());
    let mut w = World::new(0);
    w.view.policy = policy(1000);
    let mut state = NetworkState::from_view(w.view.clone());
    let run = |w: &mut World, state: &mut NetworkState, op: Op| {
        for ev in w.apply(&op) {
            state.apply(&ev);
        }
    };
    for _ in 0..2 {
        run(
            &mut w,
            &mut state,
            Op::AddNode {
                name: 0,
                endpoint: true,
            },
        );
    }
    run(
        &mut w,
        &mut state,
        Op::UpdateNode {
            node: 0,
            change: NodeChange::Tags(1),
        },
    );
    run(
        &mut w,
        &mut state,
        Op::UpdateNode {
            node: 1,
            change: NodeChange::Tags(2),
        },
    );
    let ops = w.view.nodes[0].id.clone();
    let mut held = vec![state.snapshot(&ops).unwrap()];
    for port in 1001..1001 + SHIFTS_KEPT as u16 + 1 {
        for ev in w.set_policy(policy(port)) {
            state.apply(&ev);
        }
        held.push(state.snapshot(&ops).unwrap());
    }
    // Every change reached the ops node (its firewall names the port).
    for pair in held.windows(2) {
        assert!(pair[0].revision < pair[1].revision);
    }
    let now = held.last().unwrap().clone();
    assert!(
        state.delta(&ops, held[0].revision).is_none(),
        "across the oldest shift, whose detail is gone: a snapshot"
    );
    for old in &held[1..] {
        let d = state.delta(&ops, old.revision).expect("a delta");
        let mut c = old.clone();
        d.apply_to(&mut c);
        assert_eq!(c, now);
    }
}
