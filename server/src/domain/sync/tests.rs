//! Property tests: over random sequences of changes, the incremental state
//! equals the plain computation, deltas take any earlier config of a node to
//! its current one, and exactly the nodes whose config changed are notified.

use std::collections::HashMap;

use chrono::Utc;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};

use super::*;
use crate::domain::{
    config::node_config,
    event::{Action, Event, Resource},
    ext_client::ExtClient,
    names::DnsLabel,
    network::NetworkInput,
    node::{Egress, Endpoint, Ingress, WgKey},
};

/// The "database": the truth the events describe.
pub(crate) struct World {
    rng: StdRng,
    pub(crate) view: NetworkView,
    revision: u64,
    next_addr: u32,
    next_key: u8,
    next_id: u32,
}

const NAMES: &[&str] = &["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
const RANGES: &[&str] = &[
    "10.10.10.0/24",
    "10.20.0.0/16",
    "0.0.0.0/0",
    "::/0",
    "fd10::/64",
    "192.168.1.0/24",
];

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
            },
            revision: 1,
            next_addr: 1,
            next_key: 1,
            next_id: 1,
        }
    }

    fn free_name(&mut self) -> Option<DnsLabel> {
        let used: Vec<String> = self
            .view
            .nodes
            .iter()
            .map(|n| n.name.to_string())
            .chain(self.view.ext_clients.iter().map(|c| c.name.to_string()))
            .collect();
        let free: Vec<&&str> = NAMES
            .iter()
            .filter(|n| !used.contains(&n.to_string()))
            .collect();
        free.choose(&mut self.rng)
            .map(|n| DnsLabel::parse("n", n, 63).unwrap())
    }

    fn key(&mut self) -> WgKey {
        self.next_key = self.next_key.wrapping_add(1).max(1);
        let mut k = [self.next_key; 32];
        k[0] = self.rng.random();
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

    /// One random change, as the events the store would log.
    pub(crate) fn step(&mut self) -> Vec<Event> {
        let now = Utc::now();
        let choice = self.rng.random_range(0..100);
        let nodes = self.view.nodes.len();
        match choice {
            0..=19 => {
                let Some(name) = self.free_name() else {
                    return vec![];
                };
                let (a4, a6) = self.addr();
                self.next_id += 1;
                let mut node = crate::domain::config::tests::node(name.as_str(), 1);
                node.id = format!("n{}", self.next_id);
                node.network = self.view.network.name.clone();
                node.public_key = self.key();
                node.endpoint = self
                    .rng
                    .random_bool(0.5)
                    .then(|| Endpoint::parse("e", "198.51.100.1:51821").unwrap());
                node.address = Some(a4);
                node.address6 = Some(a6);
                self.view.nodes.push(node);
                vec![self.node_event(nodes, Action::Created)]
            }
            20..=39 if nodes > 0 => {
                let i = self.rng.random_range(0..nodes);
                match self.rng.random_range(0..7) {
                    0 => {
                        if let Some(name) = self.free_name() {
                            self.view.nodes[i].name = name;
                        }
                    }
                    1 => self.view.nodes[i].listen_port = self.rng.random_range(50000..50010),
                    2 => self.view.nodes[i].keepalive = self.rng.random_range(0..3) * 10,
                    3 => self.view.nodes[i].public_key = self.key(),
                    4 => {
                        self.view.nodes[i].endpoint = Some(
                            Endpoint::parse(
                                "e",
                                &format!("203.0.113.{}:51821", self.rng.random_range(1..9)),
                            )
                            .unwrap(),
                        )
                    }
                    5 => {
                        // The agent reports its interface: a new name, the
                        // default one named explicitly, or none.
                        self.view.nodes[i].wireguard_interface =
                            [None, Some("wg0"), Some("wg1"), Some("mp-net")]
                                .choose(&mut self.rng)
                                .expect("non-empty")
                                .map(String::from)
                    }
                    _ => self.view.nodes[i].os = "changed".into(),
                }
                vec![self.node_event(i, Action::Updated)]
            }
            40..=54 if nodes > 0 => {
                let i = self.rng.random_range(0..nodes);
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
                self.view.nodes[i].egress = if self.rng.random_bool(0.3) || free.is_empty() {
                    None
                } else {
                    let n = self.rng.random_range(1..=free.len().min(2));
                    let mut ranges: Vec<ipnet::IpNet> = free
                        .choose_multiple(&mut self.rng, n)
                        .map(|r| r.parse().unwrap())
                        .collect();
                    ranges.sort();
                    assert!(!ranges.is_empty());
                    Some(Egress {
                        ranges,
                        interface: "eth0".into(),
                        nat: self.rng.random_bool(0.5),
                    })
                };
                vec![self.node_event(i, Action::Updated)]
            }
            55..=64 if nodes > 0 => {
                let i = self.rng.random_range(0..nodes);
                let mut out = Vec::new();
                if self.view.nodes[i].ingress.is_some() && self.rng.random_bool(0.5) {
                    out.extend(self.drop_clients_of(i));
                    self.view.nodes[i].ingress = None;
                } else {
                    self.view.nodes[i].ingress = Some(Ingress::default());
                }
                out.push(self.node_event(i, Action::Updated));
                out
            }
            65..=74 if nodes > 1 => {
                let i = self.rng.random_range(0..nodes);
                let mut out = self.drop_clients_of(i);
                let n = self.view.nodes.remove(i);
                out.push(self.event(Action::Deleted, Resource::Node(Box::new(n))));
                out
            }
            75..=84 => {
                let ingresses: Vec<String> = self
                    .view
                    .nodes
                    .iter()
                    .filter(|n| n.ingress.is_some())
                    .map(|n| n.id.clone())
                    .collect();
                let Some(ing) = ingresses.choose(&mut self.rng).cloned() else {
                    return vec![];
                };
                let Some(name) = self.free_name() else {
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
                };
                self.view.ext_clients.push(c.clone());
                vec![self.event(Action::Created, Resource::ExtClient(Box::new(c)))]
            }
            85..=92 if !self.view.ext_clients.is_empty() => {
                let i = self.rng.random_range(0..self.view.ext_clients.len());
                if self.rng.random_bool(0.3) {
                    let c = self.view.ext_clients.remove(i);
                    return vec![self.event(Action::Deleted, Resource::ExtClient(Box::new(c)))];
                }
                match self.rng.random_range(0..3) {
                    0 => self.view.ext_clients[i].enabled ^= true,
                    1 => {
                        if let Some(name) = self.free_name() {
                            self.view.ext_clients[i].name = name;
                        }
                    }
                    _ => self.view.ext_clients[i].dns = vec!["1.1.1.1".parse().unwrap()],
                }
                let c = self.view.ext_clients[i].clone();
                vec![self.event(Action::Updated, Resource::ExtClient(Box::new(c)))]
            }
            93..=99 => {
                match self.rng.random_range(0..3) {
                    0 => self.view.network.keepalive = self.rng.random_range(0..3) * 15,
                    1 => self.view.network.mtu = 1380 + self.rng.random_range(0..3) * 10,
                    _ => {
                        self.view.network.nameservers = vec![
                            format!("9.9.9.{}", self.rng.random_range(1..4))
                                .parse()
                                .unwrap(),
                        ]
                    }
                }
                let n = self.view.network.clone();
                vec![self.event(Action::Updated, Resource::Network(n))]
            }
            _ => vec![],
        }
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

fn run(seed: u64, steps: usize, capacity: usize) {
    let mut w = World::new(seed);
    let mut state = NetworkState::from_view(w.view.clone()).with_capacity(capacity);
    // Configs agents hold: node id -> (revision, config), from earlier points.
    let mut held: HashMap<String, Vec<NodeConfig>> = HashMap::new();
    for step in 0..steps {
        let before: HashMap<String, NodeConfig> = state
            .node_ids()
            .map(|id| (id.clone(), state.snapshot(id).unwrap()))
            .collect();
        let events = w.step();
        for ev in &events {
            state.apply(ev);
            // Replaying the same event changes nothing.
            assert_eq!(state.apply(ev), Affected::Nobody);
        }
        // Incremental == plain computation, for every node.
        for n in &w.view.nodes {
            let inc = state.snapshot(&n.id).expect("node in state");
            let plain = node_config(&w.view, &n.id).unwrap();
            assert_eq!(
                without_revision(inc.clone()),
                without_revision(plain),
                "seed {seed} step {step}: node {}",
                n.id
            );
            // Exactly the changed nodes moved to a new revision.
            if let Some(b) = before.get(&n.id) {
                let changed = without_revision(b.clone()) != without_revision(inc.clone());
                let moved = inc.revision != b.revision;
                assert_eq!(
                    changed, moved,
                    "seed {seed} step {step}: node {} changed={changed} notified={moved}\n{events:#?}",
                    n.id
                );
            }
            // Every config an agent held becomes the current one via a delta
            // (or needs a snapshot, when it fell out of the log).
            for old in held.get(&n.id).into_iter().flatten() {
                match state.delta(&n.id, old.revision) {
                    Some(d) => {
                        let mut c = old.clone();
                        d.apply_to(&mut c);
                        assert_eq!(
                            c, inc,
                            "seed {seed} step {step}: delta from {}",
                            old.revision
                        );
                    }
                    None => assert!(
                        old.revision < state.floor || old.revision == 0,
                        "seed {seed}: revision {} refused inside the log window",
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
}

#[test]
fn deltas_and_snapshots_agree_over_random_changes() {
    for seed in 0..40 {
        run(seed, 150, LOG_CAPACITY);
    }
}

#[test]
fn a_small_log_falls_back_to_snapshots() {
    for seed in 100..110 {
        run(seed, 150, 5);
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
