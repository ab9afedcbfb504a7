//! No acknowledged write is lost when `meshplane serve` is killed (issue
//! #13, item 2).
//!
//! The real binary runs as a child process. A load generator of 16
//! concurrent tasks makes writes of every kind — networks, enrollment keys,
//! registrations, node updates, egress and ingress gateways, external
//! clients, DNS entries, deletions — and records each acknowledged result;
//! a watcher records the events streamed. At a random moment (200–1500 ms
//! into the round) the server gets SIGKILL and is started again on the same
//! data. Then every acknowledged create is there with the same fields and
//! addresses, every acknowledged delete is gone, nothing is half there (a
//! node with both addresses and their allocations, a client with its
//! allocations, its ingress and a config that opens its sealed key, an
//! egress whole or absent, a deleted node's clients gone with it), lists
//! agree with gets, addresses are unique per network, the event log is
//! dense, holds every event streamed and every acknowledged write, and no
//! revision went back. A write in flight at the kill may be there or not,
//! but never in part. Five rounds per backend: SQLite (WAL,
//! synchronous=FULL) and PostgreSQL (a cluster of its own with fsync and
//! synchronous_commit on).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    io::{BufRead, BufReader},
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use meshplane_proto::v1 as pb;
use meshplane_tests::{Authed, Bearer, built_binary, pg, wg_key, wg_value};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tonic::{
    Code, Status,
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};

const ROUNDS: usize = 5;
const TASKS: usize = 16;
/// The base networks every task registers into (concurrent allocations in
/// one range).
const BASE: [(&str, &str, &str); 2] = [
    ("corp", "10.100.0.0/16", "fd00:100::/64"),
    ("lab", "10.101.0.0/16", "fd00:101::/64"),
];

// ---------------------------------------------------------------------
// The server process.

/// `meshplane serve` as a child process on a free loopback port.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(data_dir: &Path, url: Option<&str>, log: &Path) -> Server {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("server log");
        let mut cmd = Command::new(built_binary("meshplane"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env_remove("MESHPLANE_DATABASE_URL")
            .env_remove("MESHPLANE_SECRET_KEY_FILE")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        if let Some(url) = url {
            cmd.args(["--database-url", url]);
        }
        let mut child = cmd.spawn().expect("spawn meshplane serve");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(a) = line.strip_prefix("meshplane ready: serving gRPC on ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(a.trim().to_owned());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "meshplane serve did not get ready in 60 s; its log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        };
        Server { child, addr }
    }

    /// SIGKILL, and reaps it.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------
// Clients.

#[derive(Clone)]
struct Api {
    net: pb::network_service_client::NetworkServiceClient<Authed>,
    keys: pb::enrollment_key_service_client::EnrollmentKeyServiceClient<Authed>,
    nodes: pb::node_service_client::NodeServiceClient<Authed>,
    gw: pb::gateway_service_client::GatewayServiceClient<Authed>,
    ext: pb::ext_client_service_client::ExtClientServiceClient<Authed>,
    dns: pb::dns_service_client::DnsServiceClient<Authed>,
    events: pb::event_service_client::EventServiceClient<Authed>,
    /// Register takes no admin token (the enrollment key is the credential).
    agent: pb::agent_service_client::AgentServiceClient<Channel>,
}

impl Api {
    async fn connect(addr: &str, token: &str) -> Api {
        let ch = Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect");
        let authed = InterceptedService::new(ch.clone(), Bearer::new(Some(token)));
        Api {
            net: pb::network_service_client::NetworkServiceClient::new(authed.clone()),
            keys: pb::enrollment_key_service_client::EnrollmentKeyServiceClient::new(
                authed.clone(),
            ),
            nodes: pb::node_service_client::NodeServiceClient::new(authed.clone()),
            gw: pb::gateway_service_client::GatewayServiceClient::new(authed.clone()),
            ext: pb::ext_client_service_client::ExtClientServiceClient::new(authed.clone()),
            dns: pb::dns_service_client::DnsServiceClient::new(authed.clone()),
            events: pb::event_service_client::EventServiceClient::new(authed),
            agent: pb::agent_service_client::AgentServiceClient::new(ch),
        }
    }

    async fn networks(&self) -> Vec<pb::Network> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let r = self
                .net
                .clone()
                .list_networks(pb::ListNetworksRequest {
                    page_size: 1000,
                    page_token: token,
                })
                .await
                .expect("ListNetworks")
                .into_inner();
            out.extend(r.networks);
            if r.next_page_token.is_empty() {
                return out;
            }
            token = r.next_page_token;
        }
    }

    async fn all_nodes(&self) -> Vec<pb::Node> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let r = self
                .nodes
                .clone()
                .list_nodes(pb::ListNodesRequest {
                    network: String::new(),
                    page_size: 1000,
                    page_token: token,
                })
                .await
                .expect("ListNodes")
                .into_inner();
            out.extend(r.nodes);
            if r.next_page_token.is_empty() {
                return out;
            }
            token = r.next_page_token;
        }
    }

    async fn all_clients(&self) -> Vec<pb::ExtClient> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let r = self
                .ext
                .clone()
                .list_ext_clients(pb::ListExtClientsRequest {
                    page_size: 1000,
                    page_token: token,
                    ..Default::default()
                })
                .await
                .expect("ListExtClients")
                .into_inner();
            out.extend(r.ext_clients);
            if r.next_page_token.is_empty() {
                return out;
            }
            token = r.next_page_token;
        }
    }

    async fn dns_entries(&self, network: &str) -> Vec<pb::DnsEntry> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let r = self
                .dns
                .clone()
                .list_dns_entries(pb::ListDnsEntriesRequest {
                    network: network.into(),
                    page_size: 1000,
                    page_token: token,
                })
                .await
                .expect("ListDnsEntries")
                .into_inner();
            out.extend(r.entries);
            if r.next_page_token.is_empty() {
                return out;
            }
            token = r.next_page_token;
        }
    }
}

// ---------------------------------------------------------------------
// What the load generator did, and what it knows was acknowledged.

/// A write, with everything needed to tell its outcome apart.
#[derive(Debug, Clone)]
enum Op {
    CreateNetwork {
        name: String,
        range4: String,
        range6: String,
    },
    CreateKey {
        network: String,
    },
    Register {
        network: String,
        name: String,
        key: String,
        public_key: String,
        endpoint: String,
    },
    UpdateNode {
        before: pb::Node,
        endpoint: String,
        keepalive: u32,
    },
    CreateEgress {
        before: pb::Node,
        range: String,
        nat: bool,
    },
    DeleteEgress {
        before: pb::Node,
    },
    CreateIngress {
        before: pb::Node,
    },
    DeleteNode {
        before: pb::Node,
        clients: Vec<String>,
    },
    CreateClient {
        network: String,
        ingress: String,
        name: String,
    },
    DeleteClient {
        before: pb::ExtClient,
    },
    CreateDns {
        network: String,
        name: String,
        address: String,
    },
    DeleteDns {
        network: String,
        name: String,
    },
}

impl Op {
    fn kind(&self) -> &'static str {
        match self {
            Op::CreateNetwork { .. } => "CreateNetwork",
            Op::CreateKey { .. } => "CreateEnrollmentKey",
            Op::Register { .. } => "Register",
            Op::UpdateNode { .. } => "UpdateNode",
            Op::CreateEgress { .. } => "CreateEgressGateway",
            Op::DeleteEgress { .. } => "DeleteEgressGateway",
            Op::CreateIngress { .. } => "CreateIngressGateway",
            Op::DeleteNode { .. } => "DeleteNode",
            Op::CreateClient { .. } => "CreateExtClient",
            Op::DeleteClient { .. } => "DeleteExtClient",
            Op::CreateDns { .. } => "CreateDnsEntry",
            Op::DeleteDns { .. } => "DeleteDnsEntry",
        }
    }

    /// The node a change of one node would leave (its update time aside).
    fn node_after(&self) -> Option<pb::Node> {
        let mut n = match self {
            Op::UpdateNode { before, .. }
            | Op::CreateEgress { before, .. }
            | Op::DeleteEgress { before }
            | Op::CreateIngress { before } => before.clone(),
            _ => return None,
        };
        match self {
            Op::UpdateNode {
                endpoint,
                keepalive,
                ..
            } => {
                n.endpoint = endpoint.clone();
                n.persistent_keepalive = *keepalive;
            }
            Op::CreateEgress { range, nat, .. } => {
                n.egress = Some(pb::EgressGateway {
                    ranges: vec![range.clone()],
                    interface: "eth1".into(),
                    nat_enabled: *nat,
                    preempt: true,
                    ..Default::default()
                });
            }
            Op::DeleteEgress { .. } => n.egress = None,
            Op::CreateIngress { .. } => {
                n.ingress = Some(pb::IngressGateway {
                    ext_client_dns: vec![],
                })
            }
            _ => unreachable!(),
        }
        Some(n)
    }
}

/// An acknowledged answer.
enum Outcome {
    Network(pb::Network),
    Key(String),
    Node(Box<pb::Node>),
    Client(pb::ExtClient),
    Dns(pb::DnsEntry),
    Done,
}

fn node_outcome(n: pb::Node) -> Outcome {
    Outcome::Node(Box::new(n))
}

/// (kind, id, action) of an event.
type EventSig = (String, String, i32);

/// What one task owns (only it changes these, one write at a time).
#[derive(Default)]
struct Task {
    next: u32,
    networks: Vec<String>,
    nodes: Vec<String>,
    clients: Vec<String>,
    dns: Vec<(String, String)>,
}

#[derive(Default)]
struct Model {
    networks: BTreeMap<String, pb::Network>,
    /// Enrollment tokens by network (the setup's covers the base networks).
    keys: BTreeMap<String, String>,
    nodes: BTreeMap<String, pb::Node>,
    clients: BTreeMap<String, pb::ExtClient>,
    dns: BTreeMap<(String, String), pb::DnsEntry>,
    deleted_nodes: BTreeSet<String>,
    deleted_clients: BTreeSet<String>,
    deleted_dns: BTreeSet<(String, String)>,
    /// Per node: the newest config revision an acknowledged answer about
    /// it carried; its config revision must not be behind it after a
    /// restart.
    node_revision: BTreeMap<String, u64>,
    /// Per client: the config revision its creation answered, and which
    /// write's answer set it.
    client_revision: BTreeMap<String, (u64, String)>,
    /// Events every acknowledged create and delete must have left.
    expected_events: Vec<EventSig>,
    /// The event log as read so far: revision → event.
    log: BTreeMap<u64, EventSig>,
    /// Writes whose answer never came (at most one per task per round).
    doubts: Vec<(usize, Op)>,
    tasks: Vec<Task>,
    /// Acknowledged writes of the round, by RPC.
    acked: BTreeMap<&'static str, u32>,
    /// Counters of unique ranges.
    next_network: u32,
    next_egress: u32,
}

/// A node or client as compared: without what the server computes at read
/// time or what agents report.
fn node_view(n: &pb::Node) -> pb::Node {
    pb::Node {
        connected: false,
        last_seen: None,
        applied_revision: 0,
        config_revision: 0,
        drifted: false,
        host: None,
        wireguard_interface: String::new(),
        apply_error: String::new(),
        failed_revision: 0,
        ..n.clone()
    }
}

fn client_view(c: &pb::ExtClient) -> pb::ExtClient {
    pb::ExtClient {
        config_revision: 0,
        config_stale: false,
        ..c.clone()
    }
}

fn same_but_update_time(a: &pb::Node, b: &pb::Node) -> bool {
    pb::Node {
        update_time: None,
        ..a.clone()
    } == pb::Node {
        update_time: None,
        ..b.clone()
    }
}

impl Model {
    fn bump_node(&mut self, id: &str, revision: u64) {
        let r = self.node_revision.entry(id.into()).or_default();
        *r = (*r).max(revision);
    }

    /// Picks the next write of task `t`.
    fn choose(&mut self, t: usize, rng: &mut StdRng) -> Op {
        let k = {
            let task = &mut self.tasks[t];
            task.next += 1;
            task.next
        };
        let task = &self.tasks[t];
        // A network of the task's without a key gets one first.
        if let Some(n) = task.networks.iter().find(|n| !self.keys.contains_key(*n)) {
            return Op::CreateKey { network: n.clone() };
        }
        let pick = |v: &Vec<String>, rng: &mut StdRng| -> Option<String> {
            (!v.is_empty()).then(|| v[rng.random_range(0..v.len())].clone())
        };
        let own_nodes: Vec<&pb::Node> = task.nodes.iter().map(|id| &self.nodes[id]).collect();
        let roll = rng.random_range(0..100);
        match roll {
            0..4 => {
                let g = self.next_network;
                self.next_network += 1;
                return Op::CreateNetwork {
                    name: format!("t{t}net{k}"),
                    range4: format!("10.{}.{}.0/24", 128 + g / 256, g % 256),
                    // Written as the server writes it back (fd02::/64 for
                    // 0), so a request in doubt compares with what is there.
                    range6: format!(
                        "{}/64",
                        std::net::Ipv6Addr::new(0xfd02, 0, 0, g as u16, 0, 0, 0, 0)
                    ),
                };
            }
            4..14 if !own_nodes.is_empty() => {
                let n = own_nodes[rng.random_range(0..own_nodes.len())];
                return Op::UpdateNode {
                    before: n.clone(),
                    endpoint: format!(
                        "203.0.113.{}:{}",
                        rng.random_range(1..255),
                        rng.random_range(20000..60000)
                    ),
                    keepalive: rng.random_range(10..60),
                };
            }
            14..22 => {
                let free: Vec<&&pb::Node> =
                    own_nodes.iter().filter(|n| n.egress.is_none()).collect();
                if !free.is_empty() {
                    let n = free[rng.random_range(0..free.len())];
                    let e = self.next_egress;
                    self.next_egress += 1;
                    return Op::CreateEgress {
                        before: (*n).clone(),
                        range: format!("172.{}.{}.0/24", 16 + e / 256, e % 256),
                        nat: rng.random_bool(0.5),
                    };
                }
            }
            22..26 => {
                let gws: Vec<&&pb::Node> =
                    own_nodes.iter().filter(|n| n.egress.is_some()).collect();
                if !gws.is_empty() {
                    let n = gws[rng.random_range(0..gws.len())];
                    return Op::DeleteEgress {
                        before: (*n).clone(),
                    };
                }
            }
            26..32 => {
                let plain: Vec<&&pb::Node> =
                    own_nodes.iter().filter(|n| n.ingress.is_none()).collect();
                if !plain.is_empty() {
                    let n = plain[rng.random_range(0..plain.len())];
                    return Op::CreateIngress {
                        before: (*n).clone(),
                    };
                }
            }
            32..46 => {
                let ingresses: Vec<&&pb::Node> =
                    own_nodes.iter().filter(|n| n.ingress.is_some()).collect();
                if !ingresses.is_empty() {
                    let n = ingresses[rng.random_range(0..ingresses.len())];
                    return Op::CreateClient {
                        network: n.network.clone(),
                        ingress: n.id.clone(),
                        name: format!("t{t}c{k}"),
                    };
                }
            }
            46..50 => {
                if let Some(id) = pick(&task.clients, rng) {
                    return Op::DeleteClient {
                        before: self.clients[&id].clone(),
                    };
                }
            }
            50..58 => {
                let network = match pick(&task.networks, rng) {
                    Some(n) if rng.random_bool(0.3) => n,
                    _ => BASE[rng.random_range(0..BASE.len())].0.to_owned(),
                };
                return Op::CreateDns {
                    network,
                    name: format!("t{t}d{k}"),
                    address: format!("192.0.2.{}", 1 + k % 250),
                };
            }
            58..61 if !task.dns.is_empty() => {
                let (network, name) = task.dns[rng.random_range(0..task.dns.len())].clone();
                return Op::DeleteDns { network, name };
            }
            61..64 if !own_nodes.is_empty() => {
                let n = own_nodes[rng.random_range(0..own_nodes.len())];
                let clients = task
                    .clients
                    .iter()
                    .filter(|c| self.clients[*c].ingress_node_id == n.id)
                    .cloned()
                    .collect();
                return Op::DeleteNode {
                    before: n.clone(),
                    clients,
                };
            }
            _ => {}
        }
        // Otherwise (and most often) a registration: mostly into a shared
        // base network, sometimes into one of the task's own.
        let network = match pick(&task.networks, rng) {
            Some(n) if rng.random_bool(0.2) => n,
            _ => BASE[rng.random_range(0..BASE.len())].0.to_owned(),
        };
        Op::Register {
            key: self.keys[&network].clone(),
            network,
            name: format!("t{t}n{k}"),
            public_key: wg_key(),
            endpoint: format!("198.51.100.{}:51821", 1 + k % 250),
        }
    }

    /// Records an acknowledged write.
    fn ack(&mut self, t: usize, op: Op, out: Outcome) {
        *self.acked.entry(op.kind()).or_default() += 1;
        match (op, out) {
            (Op::CreateNetwork { name, .. }, Outcome::Network(n)) => {
                self.expected_events
                    .push(("network".into(), name.clone(), created()));
                self.networks.insert(name.clone(), n);
                self.tasks[t].networks.push(name);
            }
            (Op::CreateKey { network }, Outcome::Key(token)) => {
                self.keys.insert(network, token);
            }
            (Op::Register { .. }, Outcome::Node(n)) => {
                self.expected_events
                    .push(("node".into(), n.id.clone(), created()));
                self.bump_node(&n.id, n.config_revision);
                self.tasks[t].nodes.push(n.id.clone());
                self.nodes.insert(n.id.clone(), node_view(&n));
            }
            (
                op @ (Op::UpdateNode { .. }
                | Op::CreateEgress { .. }
                | Op::DeleteEgress { .. }
                | Op::CreateIngress { .. }),
                Outcome::Node(n),
            ) => {
                let expected = op.node_after().expect("a node change");
                assert!(
                    same_but_update_time(&node_view(&n), &expected),
                    "{} answered {n:?}, expected {expected:?}",
                    op.kind()
                );
                // The answer's config revision is the node's as the server
                // answered (not behind this write's); the clients' files
                // this write changed got the write's own revision, which
                // the answer does not tell.
                self.bump_node(&n.id, n.config_revision);
                self.nodes.insert(n.id.clone(), node_view(&n));
            }
            (Op::DeleteNode { before, clients }, Outcome::Done) => {
                self.remove_node(t, &before.id, &clients);
            }
            (Op::CreateClient { .. }, Outcome::Client(c)) => {
                self.expected_events
                    .push(("ext_client".into(), c.id.clone(), created()));
                self.client_revision
                    .insert(c.id.clone(), (c.config_revision, "CreateExtClient".into()));
                self.tasks[t].clients.push(c.id.clone());
                self.clients.insert(c.id.clone(), client_view(&c));
            }
            (Op::DeleteClient { before }, Outcome::Done) => {
                self.remove_client(t, &before.id);
            }
            (Op::CreateDns { network, name, .. }, Outcome::Dns(e)) => {
                self.expected_events.push((
                    "dns_entry".into(),
                    format!("{name}.{network}"),
                    created(),
                ));
                self.tasks[t].dns.push((network.clone(), name.clone()));
                self.dns.insert((network, name), e);
            }
            (Op::DeleteDns { network, name }, Outcome::Done) => {
                self.remove_dns(t, &network, &name);
            }
            (op, _) => panic!("unexpected answer to {}", op.kind()),
        }
    }

    fn remove_node(&mut self, t: usize, id: &str, clients: &[String]) {
        self.expected_events
            .push(("node".into(), id.into(), deleted()));
        self.nodes.remove(id);
        self.node_revision.remove(id);
        self.deleted_nodes.insert(id.into());
        self.tasks[t].nodes.retain(|n| n != id);
        for c in clients {
            self.remove_client(t, c);
        }
    }

    fn remove_client(&mut self, t: usize, id: &str) {
        self.expected_events
            .push(("ext_client".into(), id.into(), deleted()));
        self.clients.remove(id);
        self.client_revision.remove(id);
        self.deleted_clients.insert(id.into());
        self.tasks[t].clients.retain(|c| c != id);
    }

    fn remove_dns(&mut self, t: usize, network: &str, name: &str) {
        self.expected_events
            .push(("dns_entry".into(), format!("{name}.{network}"), deleted()));
        let key = (network.to_owned(), name.to_owned());
        self.dns.remove(&key);
        self.tasks[t].dns.retain(|d| *d != key);
        self.deleted_dns.insert(key);
    }
}

fn created() -> i32 {
    pb::EventAction::Created as i32
}

fn deleted() -> i32 {
    pb::EventAction::Deleted as i32
}

// ---------------------------------------------------------------------
// The load.

async fn execute(api: &Api, op: &Op) -> Result<Outcome, Status> {
    Ok(match op {
        Op::CreateNetwork {
            name,
            range4,
            range6,
        } => Outcome::Network(
            api.net
                .clone()
                .create_network(pb::CreateNetworkRequest {
                    network: Some(meshplane_tests::network(name, range4, range6)),
                })
                .await?
                .into_inner(),
        ),
        Op::CreateKey { network } => Outcome::Key(
            api.keys
                .clone()
                .create_enrollment_key(pb::CreateEnrollmentKeyRequest {
                    enrollment_key: Some(pb::EnrollmentKey {
                        networks: vec![network.clone()],
                        unlimited: true,
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner()
                .token,
        ),
        Op::Register {
            network,
            name,
            key,
            public_key,
            endpoint,
        } => node_outcome(
            api.agent
                .clone()
                .register(pb::RegisterRequest {
                    enrollment_key: key.clone(),
                    network: network.clone(),
                    name: name.clone(),
                    public_key: public_key.clone(),
                    endpoint: endpoint.clone(),
                    listen_port: None,
                    os: "linux".into(),
                })
                .await?
                .into_inner()
                .node
                .expect("node"),
        ),
        Op::UpdateNode {
            before,
            endpoint,
            keepalive,
        } => node_outcome(
            api.nodes
                .clone()
                .update_node(pb::UpdateNodeRequest {
                    node: Some(pb::Node {
                        id: before.id.clone(),
                        endpoint: endpoint.clone(),
                        persistent_keepalive: *keepalive,
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["endpoint".into(), "persistent_keepalive".into()],
                    }),
                })
                .await?
                .into_inner(),
        ),
        Op::CreateEgress { before, range, nat } => node_outcome(
            api.gw
                .clone()
                .create_egress_gateway(pb::CreateEgressGatewayRequest {
                    node_id: before.id.clone(),
                    ranges: vec![range.clone()],
                    interface: "eth1".into(),
                    nat_enabled: Some(*nat),
                    ..Default::default()
                })
                .await?
                .into_inner(),
        ),
        Op::DeleteEgress { before } => {
            api.gw
                .clone()
                .delete_egress_gateway(pb::DeleteEgressGatewayRequest {
                    node_id: before.id.clone(),
                })
                .await?;
            // Its answer is empty: what it left is read back (nobody else
            // changes this node).
            node_outcome(
                api.nodes
                    .clone()
                    .get_node(pb::GetNodeRequest {
                        id: before.id.clone(),
                    })
                    .await?
                    .into_inner(),
            )
        }
        Op::CreateIngress { before } => node_outcome(
            api.gw
                .clone()
                .create_ingress_gateway(pb::CreateIngressGatewayRequest {
                    node_id: before.id.clone(),
                    ext_client_dns: vec![],
                })
                .await?
                .into_inner(),
        ),
        Op::DeleteNode { before, .. } => {
            api.nodes
                .clone()
                .delete_node(pb::DeleteNodeRequest {
                    id: before.id.clone(),
                })
                .await?;
            Outcome::Done
        }
        Op::CreateClient {
            network,
            ingress,
            name,
        } => Outcome::Client(
            api.ext
                .clone()
                .create_ext_client(pb::CreateExtClientRequest {
                    network: network.clone(),
                    ingress_node_id: ingress.clone(),
                    name: name.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner(),
        ),
        Op::DeleteClient { before } => {
            api.ext
                .clone()
                .delete_ext_client(pb::DeleteExtClientRequest {
                    id: before.id.clone(),
                })
                .await?;
            Outcome::Done
        }
        Op::CreateDns {
            network,
            name,
            address,
        } => Outcome::Dns(
            api.dns
                .clone()
                .create_dns_entry(pb::CreateDnsEntryRequest {
                    entry: Some(pb::DnsEntry {
                        network: network.clone(),
                        name: name.clone(),
                        address: address.clone(),
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner(),
        ),
        Op::DeleteDns { network, name } => {
            api.dns
                .clone()
                .delete_dns_entry(pb::DeleteDnsEntryRequest {
                    network: network.clone(),
                    name: name.clone(),
                })
                .await?;
            Outcome::Done
        }
    })
}

/// One task of the load: writes until a write fails (the kill), recording
/// each answer. A failure before the kill is a bug, unless it is one a
/// client is told to retry (ABORTED, UNAVAILABLE); either way that write's
/// outcome is unknown.
async fn worker(
    t: usize,
    api: Api,
    model: Arc<Mutex<Model>>,
    killed: Arc<AtomicBool>,
    seed: u64,
) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    loop {
        let op = model.lock().unwrap().choose(t, &mut rng);
        let answer = tokio::time::timeout(Duration::from_secs(20), execute(&api, &op)).await;
        match answer {
            Ok(Ok(out)) => model.lock().unwrap().ack(t, op, out),
            Ok(Err(s)) => {
                let before_kill = !killed.load(Ordering::SeqCst);
                model.lock().unwrap().doubts.push((t, op.clone()));
                if before_kill && !matches!(s.code(), Code::Aborted | Code::Unavailable) {
                    return Err(format!(
                        "task {t}: {} failed before the kill: {s:?}",
                        op.kind()
                    ));
                }
                return Ok(());
            }
            Err(_) => {
                model.lock().unwrap().doubts.push((t, op.clone()));
                return Err(format!("task {t}: {} got no answer in 20 s", op.kind()));
            }
        }
    }
}

/// Opens a WatchEvents stream from `after` (the server has placed its
/// cursor when this returns), then records what it streams into `seen`
/// until it breaks.
async fn watch(
    api: &Api,
    after: u64,
    seen: Arc<Mutex<Vec<(u64, EventSig)>>>,
) -> tokio::task::JoinHandle<()> {
    let mut stream = api
        .events
        .clone()
        .watch_events(pb::WatchEventsRequest {
            after_revision: after,
            networks: vec![],
        })
        .await
        .expect("WatchEvents")
        .into_inner();
    tokio::spawn(async move {
        while let Some(Ok(e)) = stream.next().await {
            seen.lock()
                .unwrap()
                .push((e.revision, (e.kind, e.id, e.action)));
        }
    })
}

// ---------------------------------------------------------------------
// Checks after a restart.

/// The database, read directly for what the API does not show: every
/// address's allocation row.
enum Db {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Db {
    /// Waits until the killed server's transactions are settled. SQLite's
    /// live in its process. A PostgreSQL backend outlives its client until
    /// it reads from the closed connection: a COMMIT it had received still
    /// completes (the write is whole either way), so the check must not
    /// run before every backend of the killed server is gone.
    async fn settle(&self) {
        let Db::Postgres(url) = self else { return };
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(url)
            .await
            .expect("connect to PostgreSQL");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let others: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .fetch_one(&mut c)
            .await
            .expect("pg_stat_activity");
            if others == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{others} connections of the killed server still open after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = c.close().await;
    }

    /// (owner_kind, owner_id, network, family, host_offset) of every
    /// allocation.
    async fn allocations(&self) -> Vec<(String, String, String, i32, i64)> {
        const Q: &str = "SELECT owner_kind, owner_id, network, CAST(family AS INTEGER), \
                         CAST(host_offset AS BIGINT) FROM ip_allocations";
        match self {
            Db::Sqlite(file) => {
                use sqlx::{ConnectOptions, Connection};
                let mut c = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(file)
                    .create_if_missing(false)
                    .connect()
                    .await
                    .expect("open the SQLite database");
                let rows = sqlx::query_as(Q)
                    .fetch_all(&mut c)
                    .await
                    .expect("allocations");
                let _ = c.close().await;
                rows
            }
            Db::Postgres(url) => {
                use sqlx::Connection;
                let mut c = sqlx::PgConnection::connect(url)
                    .await
                    .expect("connect to PostgreSQL");
                let rows = sqlx::query_as(Q)
                    .fetch_all(&mut c)
                    .await
                    .expect("allocations");
                let _ = c.close().await;
                rows
            }
        }
    }
}

/// Host offset of `addr` in `range` (address − network address).
fn offset(range: &str, addr: &str) -> i64 {
    let (base, _) = range.split_once('/').expect("a CIDR");
    let base: IpAddr = base.parse().expect("range address");
    let addr: IpAddr = addr
        .parse()
        .unwrap_or_else(|_| panic!("bad address {addr:?}"));
    let d = match (base, addr) {
        (IpAddr::V4(b), IpAddr::V4(a)) => u128::from(u32::from(a)) - u128::from(u32::from(b)),
        (IpAddr::V6(b), IpAddr::V6(a)) => u128::from(a) - u128::from(b),
        _ => panic!("{addr} is not of {range}'s family"),
    };
    i64::try_from(d).expect("small offset")
}

fn in_range(range: &str, addr: &str) -> bool {
    let (base, len) = range.split_once('/').expect("a CIDR");
    let len: u32 = len.parse().expect("prefix length");
    match (base.parse::<IpAddr>(), addr.parse::<IpAddr>()) {
        (Ok(IpAddr::V4(b)), Ok(IpAddr::V4(a))) => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(a) & mask == u32::from(b)
        }
        (Ok(IpAddr::V6(b)), Ok(IpAddr::V6(a))) => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(a) & mask == u128::from(b)
        }
        _ => false,
    }
}

/// Round summary.
struct Checked {
    networks: usize,
    nodes: usize,
    clients: usize,
    dns: usize,
    latest: u64,
    doubts: usize,
    present_doubts: usize,
}

/// Everything the model knows is acknowledged is there, whole; the writes
/// in doubt are there whole or not at all (and are taken into the model as
/// they are); the log is dense and kept everything; then a marker write
/// shows revisions go on growing.
async fn verify(
    api: &Api,
    model: &mut Model,
    db: &Db,
    round: usize,
    live: &[(u64, EventSig)],
) -> Checked {
    let doubts = std::mem::take(&mut model.doubts);
    let n_doubts = doubts.len();
    let mut present_doubts = 0;

    // Networks.
    let networks: BTreeMap<String, pb::Network> = api
        .networks()
        .await
        .into_iter()
        .map(|n| (n.name.clone(), n))
        .collect();
    let mut nets_in_doubt = HashMap::new();
    for (t, op) in &doubts {
        if let Op::CreateNetwork { name, .. } = op {
            nets_in_doubt.insert(name.clone(), (*t, op.clone()));
        }
    }
    for (name, n) in &networks {
        match model.networks.get(name) {
            Some(want) => assert_eq!(n, want, "network {name} changed across the kill"),
            None => {
                let Some((t, Op::CreateNetwork { range4, range6, .. })) = nets_in_doubt.get(name)
                else {
                    panic!("network {name} exists, but no write created it: {n:?}");
                };
                assert_eq!(
                    (&n.address_range, &n.address_range6),
                    (range4, range6),
                    "network {name} in doubt is there, but not as requested"
                );
                present_doubts += 1;
                model.networks.insert(name.clone(), n.clone());
                model.tasks[*t].networks.push(name.clone());
            }
        }
    }
    for name in model.networks.keys() {
        assert!(
            networks.contains_key(name),
            "acknowledged network {name} is gone after the kill"
        );
    }

    // Nodes: lists agree with gets; the acknowledged ones are as answered.
    let listed = api.all_nodes().await;
    let mut nodes: BTreeMap<String, pb::Node> = BTreeMap::new();
    for n in listed {
        assert!(
            nodes.insert(n.id.clone(), n.clone()).is_none(),
            "ListNodes lists {} twice",
            n.id
        );
    }
    for (id, n) in &nodes {
        let got = api
            .nodes
            .clone()
            .get_node(pb::GetNodeRequest { id: id.clone() })
            .await
            .expect("GetNode of a listed node")
            .into_inner();
        assert_eq!(
            node_view(&got),
            node_view(n),
            "GetNode and ListNodes disagree on {id}"
        );
        assert_eq!(got.config_revision, n.config_revision);
        let net = networks
            .get(&n.network)
            .unwrap_or_else(|| panic!("node {id} in a network that does not exist: {n:?}"));
        assert!(
            in_range(&net.address_range, &n.address) && in_range(&net.address_range6, &n.address6),
            "node {id} has no whole pair of addresses in its network's ranges: {n:?}"
        );
        if let Some(e) = &n.egress {
            assert!(
                !e.ranges.is_empty() && e.interface == "eth1",
                "node {id}'s egress is half there: {e:?}"
            );
        }
        if let Some(min) = model.node_revision.get(id) {
            assert!(
                n.config_revision >= *min,
                "node {id}'s config revision {} is behind an acknowledged {min}",
                n.config_revision
            );
        }
    }

    // The writes in doubt that touched nodes: whole one way or the other.
    let mut explained_nodes: HashSet<String> = HashSet::new();
    let mut explained_clients: HashSet<String> = HashSet::new();
    for (t, op) in &doubts {
        match op {
            Op::Register {
                network,
                name,
                public_key,
                endpoint,
                ..
            } => {
                if let Some(n) = nodes
                    .values()
                    .find(|n| n.network == *network && n.name == *name)
                {
                    assert_eq!(
                        (&n.public_key, &n.endpoint),
                        (public_key, endpoint),
                        "registration in doubt is there, but not as requested: {n:?}"
                    );
                    present_doubts += 1;
                    explained_nodes.insert(n.id.clone());
                    model.tasks[*t].nodes.push(n.id.clone());
                    model.nodes.insert(n.id.clone(), node_view(n));
                }
            }
            Op::UpdateNode { before, .. }
            | Op::CreateEgress { before, .. }
            | Op::DeleteEgress { before }
            | Op::CreateIngress { before } => {
                let now = nodes.get(&before.id).unwrap_or_else(|| {
                    panic!("node {} is gone after a {} in doubt", before.id, op.kind())
                });
                let now = node_view(now);
                let after = op.node_after().expect("a node change");
                if now != *before {
                    assert!(
                        same_but_update_time(&now, &after),
                        "{} in doubt left node {} half changed:\nbefore {before:?}\nafter  \
                         {after:?}\nnow    {now:?}",
                        op.kind(),
                        before.id
                    );
                    present_doubts += 1;
                }
                model.nodes.insert(before.id.clone(), now);
            }
            Op::DeleteNode { before, clients } => {
                let gone = !nodes.contains_key(&before.id);
                if gone {
                    present_doubts += 1;
                    model.remove_node(*t, &before.id, clients);
                    // The delete may be there: its events are not expected
                    // (nor forbidden).
                    model.expected_events.retain(|(_, id, a)| {
                        !(*a == deleted() && (id == &before.id || clients.contains(id)))
                    });
                }
            }
            _ => {}
        }
    }
    for (id, want) in &model.nodes {
        let n = nodes
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged node {id} is gone after the kill: {want:?}"));
        assert_eq!(
            &node_view(n),
            want,
            "node {id} differs from its acknowledged state"
        );
    }
    for id in nodes.keys() {
        assert!(
            model.nodes.contains_key(id) || explained_nodes.contains(id),
            "node {id} exists, but no write made it: {:?}",
            nodes[id]
        );
        assert!(
            !model.deleted_nodes.contains(id),
            "deleted node {id} is back"
        );
    }

    // External clients.
    let listed = api.all_clients().await;
    let mut clients: BTreeMap<String, pb::ExtClient> = BTreeMap::new();
    for c in listed {
        assert!(
            clients.insert(c.id.clone(), c.clone()).is_none(),
            "ListExtClients lists {} twice",
            c.id
        );
    }
    for (t, op) in &doubts {
        match op {
            Op::CreateClient {
                network,
                ingress,
                name,
            } => {
                if let Some(c) = clients
                    .values()
                    .find(|c| c.network == *network && c.name == *name)
                {
                    assert_eq!(&c.ingress_node_id, ingress, "client in doubt: {c:?}");
                    present_doubts += 1;
                    explained_clients.insert(c.id.clone());
                    model.tasks[*t].clients.push(c.id.clone());
                    model
                        .client_revision
                        .insert(c.id.clone(), (c.config_revision, "read back".into()));
                    model.clients.insert(c.id.clone(), client_view(c));
                }
            }
            Op::DeleteClient { before } if !clients.contains_key(&before.id) => {
                present_doubts += 1;
                model.remove_client(*t, &before.id);
                model
                    .expected_events
                    .retain(|(_, id, a)| !(*a == deleted() && *id == before.id));
            }
            Op::DeleteNode {
                before,
                clients: of,
            } if nodes.contains_key(&before.id) => {
                for c in of {
                    assert!(
                        clients.contains_key(c),
                        "node {} is there but its client {c} went: a delete half done",
                        before.id
                    );
                }
            }
            _ => {}
        }
    }
    for (id, c) in &clients {
        let got = api
            .ext
            .clone()
            .get_ext_client(pb::GetExtClientRequest { id: id.clone() })
            .await
            .expect("GetExtClient of a listed client")
            .into_inner();
        assert_eq!(got, *c, "GetExtClient and ListExtClients disagree on {id}");
        let ingress = nodes
            .get(&c.ingress_node_id)
            .unwrap_or_else(|| panic!("client {id}'s ingress node is gone: {c:?}"));
        assert!(
            ingress.ingress.is_some(),
            "client {id}'s ingress is no ingress gateway"
        );
        let net = &networks[&c.network];
        assert!(
            in_range(&net.address_range, &c.address) && in_range(&net.address_range6, &c.address6),
            "client {id} has no whole pair of addresses: {c:?}"
        );
        if let Some((min, why)) = model.client_revision.get(id) {
            assert!(
                c.config_revision >= *min,
                "client {id}'s config revision {} is behind {min}, acknowledged by {why}",
                c.config_revision
            );
        }
        assert!(
            model.clients.contains_key(id) || explained_clients.contains(id),
            "client {id} exists, but no write made it: {c:?}"
        );
        assert!(
            !model.deleted_clients.contains(id),
            "deleted client {id} is back"
        );
        // Its file: the sealed key opens, the addresses and the ingress
        // are its own.
        let conf = api
            .ext
            .clone()
            .get_ext_client_config(pb::GetExtClientConfigRequest { id: id.clone() })
            .await
            .unwrap_or_else(|s| panic!("GetExtClientConfig of {id}: {s:?}"))
            .into_inner()
            .config;
        assert!(
            wg_value(&conf, "PrivateKey").is_some_and(|k| k.len() == 44),
            "client {id}'s config has no private key:\n{conf}"
        );
        let addrs = wg_value(&conf, "Address").unwrap_or_default();
        assert!(
            addrs.contains(&c.address) && addrs.contains(&c.address6),
            "client {id}'s config names other addresses ({addrs}) than {c:?}"
        );
        assert_eq!(
            wg_value(&conf, "PublicKey"),
            Some(ingress.public_key.as_str()),
            "client {id}'s peer is not its ingress"
        );
    }
    for (id, want) in &model.clients {
        let c = clients
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged client {id} is gone after the kill: {want:?}"));
        assert_eq!(
            &client_view(c),
            want,
            "client {id} differs from its acknowledged state"
        );
    }

    // DNS: the custom entries as acknowledged, and an automatic one for
    // every node and client with its addresses.
    let mut custom: BTreeMap<(String, String), pb::DnsEntry> = BTreeMap::new();
    for net in networks.keys() {
        let entries = api.dns_entries(net).await;
        let mut automatic: BTreeMap<String, (String, String)> = BTreeMap::new();
        for e in entries {
            if e.kind == pb::DnsEntryKind::Custom as i32 {
                custom.insert((net.clone(), e.name.clone()), e);
            } else {
                automatic.insert(e.name.clone(), (e.address.clone(), e.address6.clone()));
            }
        }
        let mut want: BTreeMap<String, (String, String)> = BTreeMap::new();
        for n in nodes.values().filter(|n| n.network == *net) {
            want.insert(n.name.clone(), (n.address.clone(), n.address6.clone()));
        }
        for c in clients.values().filter(|c| c.network == *net) {
            want.insert(c.name.clone(), (c.address.clone(), c.address6.clone()));
        }
        assert_eq!(
            automatic, want,
            "the automatic DNS names of {net} disagree with its nodes and clients"
        );
    }
    let mut explained_dns: HashSet<(String, String)> = HashSet::new();
    for (t, op) in &doubts {
        match op {
            Op::CreateDns {
                network,
                name,
                address,
            } => {
                let key = (network.clone(), name.clone());
                if let Some(e) = custom.get(&key) {
                    assert_eq!(&e.address, address, "DNS entry in doubt: {e:?}");
                    present_doubts += 1;
                    explained_dns.insert(key.clone());
                    model.tasks[*t].dns.push(key.clone());
                    model.dns.insert(key, e.clone());
                }
            }
            Op::DeleteDns { network, name }
                if !custom.contains_key(&(network.clone(), name.clone())) =>
            {
                present_doubts += 1;
                model.remove_dns(*t, network, name);
                let id = format!("{name}.{network}");
                model
                    .expected_events
                    .retain(|(_, i, a)| !(*a == deleted() && *i == id));
            }
            _ => {}
        }
    }
    for (key, want) in &model.dns {
        assert_eq!(
            custom.get(key),
            Some(want),
            "acknowledged DNS entry {key:?} is not there as acknowledged"
        );
    }
    for key in custom.keys() {
        assert!(
            model.dns.contains_key(key) || explained_dns.contains(key),
            "DNS entry {key:?} exists, but no write made it"
        );
        assert!(
            !model.deleted_dns.contains(key),
            "deleted DNS entry {key:?} is back"
        );
    }

    // Addresses unique per network, and each held by exactly its
    // allocation rows.
    let mut seen: HashMap<(String, String), String> = HashMap::new();
    let holders = nodes
        .values()
        .map(|n| (n.id.as_str(), n.network.as_str(), &n.address, &n.address6))
        .chain(
            clients
                .values()
                .map(|c| (c.id.as_str(), c.network.as_str(), &c.address, &c.address6)),
        );
    let mut want_allocs: BTreeSet<(String, String, i32, i64)> = BTreeSet::new();
    for (id, net, a4, a6) in holders {
        for a in [a4, a6] {
            if let Some(other) = seen.insert((net.to_owned(), a.clone()), id.to_owned()) {
                panic!("{a} in {net} is held by both {other} and {id}");
            }
        }
        let n = &networks[net];
        want_allocs.insert((id.into(), net.into(), 4, offset(&n.address_range, a4)));
        want_allocs.insert((id.into(), net.into(), 6, offset(&n.address_range6, a6)));
    }
    let have_allocs: BTreeSet<(String, String, i32, i64)> = db
        .allocations()
        .await
        .into_iter()
        .filter(|(kind, ..)| kind == "node" || kind == "ext_client")
        .map(|(_, id, net, fam, off)| (id, net, fam, off))
        .collect();
    let missing: Vec<_> = want_allocs.difference(&have_allocs).take(5).collect();
    let stray: Vec<_> = have_allocs.difference(&want_allocs).take(5).collect();
    assert!(
        missing.is_empty() && stray.is_empty(),
        "addresses and allocation rows disagree: without a row {missing:?}; rows of no \
         holder {stray:?}"
    );

    // Configs computed after the restart agree: a node of each network
    // has every other node as a peer, egress ranges included.
    for net in networks.keys() {
        let members: Vec<&pb::Node> = nodes.values().filter(|n| n.network == *net).collect();
        let Some(first) = members.first() else {
            continue;
        };
        let config = api
            .nodes
            .clone()
            .get_node_config(pb::GetNodeConfigRequest {
                id: first.id.clone(),
            })
            .await
            .expect("GetNodeConfig")
            .into_inner();
        let peers: HashMap<&str, &pb::Peer> = config
            .peers
            .iter()
            .map(|p| (p.public_key.as_str(), p))
            .collect();
        for other in &members[1..] {
            let p = peers
                .get(other.public_key.as_str())
                .unwrap_or_else(|| panic!("{}'s config lacks peer {}", first.id, other.id));
            assert!(
                p.allowed_ips
                    .iter()
                    .any(|a| a.starts_with(&format!("{}/", other.address))),
                "peer {} without its address: {p:?}",
                other.id
            );
            for r in other.egress.iter().flat_map(|e| &e.ranges) {
                assert!(
                    p.allowed_ips.contains(r),
                    "peer {} without egress {r}: {p:?}",
                    other.id
                );
            }
        }
    }

    // The event log: a marker write, then everything up to it, dense,
    // holding every event streamed before the kill unchanged and every
    // acknowledged create and delete.
    let marker = format!("mark{round}");
    api.dns
        .clone()
        .create_dns_entry(pb::CreateDnsEntryRequest {
            entry: Some(pb::DnsEntry {
                network: BASE[0].0.into(),
                name: marker.clone(),
                address: "192.0.2.254".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("the marker write after the restart");
    let marker_id = format!("{marker}.{}", BASE[0].0);
    let mut stream = api
        .events
        .clone()
        .watch_events(pb::WatchEventsRequest {
            after_revision: 1,
            networks: vec![],
        })
        .await
        .expect("WatchEvents from revision 1")
        .into_inner();
    let mut log: Vec<(u64, EventSig)> = Vec::new();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("the log up to the marker within 30 s")
            .expect("the stream goes on")
            .expect("an event");
        let done = e.kind == "dns_entry" && e.id == marker_id;
        log.push((e.revision, (e.kind, e.id, e.action)));
        if done {
            break;
        }
    }
    let latest = log.last().expect("a log").0;
    for (i, (rev, _)) in log.iter().enumerate() {
        assert_eq!(
            *rev,
            i as u64 + 2,
            "the event log is not dense: {rev} after {}",
            i + 1
        );
    }
    let prior_max = model.log.keys().last().copied().unwrap_or(0);
    let acked_max = model
        .node_revision
        .values()
        .copied()
        .chain(model.client_revision.values().map(|(r, _)| *r))
        .chain(live.iter().map(|(r, _)| *r))
        .max()
        .unwrap_or(0);
    assert!(
        latest > prior_max && latest > acked_max,
        "revisions went back: the marker got {latest}, but {} was seen before",
        prior_max.max(acked_max)
    );
    let read: BTreeMap<u64, EventSig> = log.into_iter().collect();
    for (rev, sig) in model.log.iter().chain(live.iter().map(|(r, s)| (r, s))) {
        if *rev == 1 {
            continue;
        }
        assert_eq!(
            read.get(rev),
            Some(sig),
            "event {rev} streamed (or read) before the kill is not the same after it"
        );
    }
    // Revision 1 (before any `after_revision` but 0, which means "new
    // events only") is known from the first round's watcher.
    for (rev, sig) in live {
        if *rev == 1 {
            model.log.insert(1, sig.clone());
        }
    }
    assert!(
        model.log.contains_key(&1),
        "the first event was never streamed"
    );
    model.log.extend(read);
    let kept: HashSet<&EventSig> = model.log.values().collect();
    for sig in &model.expected_events {
        assert!(
            kept.contains(sig),
            "no event of the acknowledged write {sig:?}"
        );
    }
    model
        .dns
        .insert((BASE[0].0.into(), marker.clone()), custom_entry(&marker));
    model
        .expected_events
        .push(("dns_entry".into(), marker_id, created()));

    Checked {
        networks: networks.len(),
        nodes: nodes.len(),
        clients: clients.len(),
        dns: custom.len() + 1,
        latest,
        doubts: n_doubts,
        present_doubts,
    }
}

fn custom_entry(name: &str) -> pb::DnsEntry {
    pb::DnsEntry {
        network: BASE[0].0.into(),
        name: name.into(),
        address: "192.0.2.254".into(),
        address6: String::new(),
        kind: pb::DnsEntryKind::Custom as i32,
    }
}

// ---------------------------------------------------------------------
// The rounds.

async fn kill_rounds(backend: &str, url: Option<String>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let log = tmp.path().join("server.log");
    let db = match &url {
        Some(u) => Db::Postgres(u.clone()),
        None => Db::Sqlite(data.join("meshplane.db")),
    };
    let started = Instant::now();
    let mut server = Server::start(&data, url.as_deref(), &log);
    let token = std::fs::read_to_string(data.join("admin.token"))
        .expect("admin.token")
        .trim()
        .to_owned();
    let mut api = Api::connect(&server.addr, &token).await;

    let model = Arc::new(Mutex::new(Model {
        tasks: (0..TASKS).map(|_| Task::default()).collect(),
        ..Model::default()
    }));
    // The first round's watcher starts on the empty log: it sees event 1.
    let live: Arc<Mutex<Vec<(u64, EventSig)>>> = Arc::default();
    let mut watcher = watch(&api, 0, live.clone()).await;
    for (name, r4, r6) in BASE {
        let n = api
            .net
            .clone()
            .create_network(pb::CreateNetworkRequest {
                network: Some(meshplane_tests::network(name, r4, r6)),
            })
            .await
            .expect("base network")
            .into_inner();
        let mut m = model.lock().unwrap();
        m.expected_events
            .push(("network".into(), name.into(), created()));
        m.networks.insert(name.into(), n);
    }
    let key = api
        .keys
        .clone()
        .create_enrollment_key(pb::CreateEnrollmentKeyRequest {
            enrollment_key: Some(pb::EnrollmentKey {
                networks: BASE.iter().map(|b| b.0.to_string()).collect(),
                unlimited: true,
                ..Default::default()
            }),
        })
        .await
        .expect("enrollment key")
        .into_inner()
        .token;
    for (name, ..) in BASE {
        model.lock().unwrap().keys.insert(name.into(), key.clone());
    }

    let seed: u64 = rand::random();
    let mut all_acked = 0;
    for round in 1..=ROUNDS {
        model.lock().unwrap().acked.clear();
        let killed = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            tasks.push(tokio::spawn(worker(
                t,
                Api::connect(&server.addr, &token).await,
                model.clone(),
                killed.clone(),
                seed ^ ((round as u64) << 32) ^ t as u64,
            )));
        }
        // The round starts with its first acknowledged write (connection
        // setup aside, on a busy machine that can take a while).
        let first = Instant::now();
        while model.lock().unwrap().acked.is_empty() {
            assert!(
                first.elapsed() < Duration::from_secs(60),
                "{backend} round {round}: no write acknowledged in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let at = Duration::from_millis(rand::rng().random_range(200..=1500));
        tokio::time::sleep(at).await;
        killed.store(true, Ordering::SeqCst);
        server.kill();
        let mut failures = Vec::new();
        for t in tasks {
            if let Err(e) = t.await.expect("a load task panicked") {
                failures.push(e);
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut watcher).await;
        assert!(
            failures.is_empty(),
            "{backend} round {round}: writes failed before the kill:\n{}\n--- server log ---\n{}",
            failures.join("\n"),
            std::fs::read_to_string(&log).unwrap_or_default()
        );

        db.settle().await;
        server = Server::start(&data, url.as_deref(), &log);
        api = Api::connect(&server.addr, &token).await;
        let streamed = std::mem::take(&mut *live.lock().unwrap());
        let (acked, summary) = {
            let mut m = std::mem::take(&mut *model.lock().unwrap());
            let summary = verify(&api, &mut m, &db, round, &streamed).await;
            let acked: Vec<String> = m.acked.iter().map(|(k, v)| format!("{k} {v}")).collect();
            *model.lock().unwrap() = m;
            (acked, summary)
        };
        let total: u32 = model.lock().unwrap().acked.values().sum();
        eprintln!(
            "{backend} round {round}: killed {} ms in, {total} writes acknowledged ({}), \
             {} in flight ({} of them there after the restart), {} events streamed; \
             after the restart: {} networks, {} nodes, {} clients, {} custom DNS entries, \
             revision {}: all checks passed",
            at.as_millis(),
            acked.join(", "),
            summary.doubts,
            summary.present_doubts,
            streamed.len(),
            summary.networks,
            summary.nodes,
            summary.clients,
            summary.dns,
            summary.latest
        );
        assert!(
            total > 0,
            "{backend} round {round}: no write acknowledged; the load did not run"
        );
        all_acked += total;
        let after = model
            .lock()
            .unwrap()
            .log
            .keys()
            .last()
            .copied()
            .unwrap_or(0);
        watcher = watch(&api, after, live.clone()).await;
    }
    watcher.abort();
    drop(server);
    assert!(
        all_acked >= 5 * ROUNDS as u32,
        "{backend}: only {all_acked} writes acknowledged in {ROUNDS} rounds; too little load"
    );
    eprintln!(
        "{backend}: {ROUNDS} rounds of SIGKILL, {all_acked} acknowledged writes, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_keeps_every_acknowledged_write_across_sigkill() {
    kill_rounds("sqlite", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_keeps_every_acknowledged_write_across_sigkill() {
    // A cluster of its own with PostgreSQL's durable defaults (fsync and
    // synchronous_commit on), not the shared one tuned for speed.
    let Some(cluster) = pg::or_skip(pg::PgCluster::start_durable()).expect("PostgreSQL") else {
        return;
    };
    let url = cluster.fresh_database().await.expect("a database");
    kill_rounds("postgres", Some(url)).await;
    drop(cluster);
}
