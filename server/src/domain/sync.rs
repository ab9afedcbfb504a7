//! A network's config state kept incrementally, so that one change costs work
//! proportional to the nodes it affects, and any node's update since an
//! earlier revision is a small delta.
//!
//! The state is a fold over the event log ([`NetworkState::apply`]); it keeps
//! each node's shared peer entry once (every other node sees the same entry)
//! and a bounded log of what each change touched. A node's delta since
//! revision `r` is read off the log entries after `r` and filled in from the
//! current state; a snapshot is assembled from the same pieces.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::IpAddr,
    sync::Arc,
};

use super::config::{
    DnsConfig, DnsRecord, Interface, NetworkView, NodeConfig, Peer, Route, Zone, ext_client_peer,
    interface_for, node_config_with, node_interface, node_peer, routes_for,
};
use super::event::{Action, Event, Resource};
use super::ext_client::ExtClient;
use super::firewall::{Firewall, firewall_for};
use super::network::Network;
use super::node::{Node, WgKey};
use super::policy::{
    Policy,
    eval::{Party, PolicyIndex},
    prune::Reach,
};
use narrow::{Classes, Membership, Scope, reached_by};
use shift::{Shift, Sides};

/// Changes kept per network for computing deltas.
pub const LOG_CAPACITY: usize = 4096;

/// Policy changes in the log that keep what each node they reached may
/// see change (each holds its network's parties by class); across an
/// older one, the nodes it reached get snapshots.
const SHIFTS_KEPT: usize = 8;

/// Which nodes a change affects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Affected {
    /// None.
    #[default]
    Nobody,
    /// Every node.
    All,
    /// Every node but one.
    AllExcept(String),
    /// These nodes.
    Some(BTreeSet<String>),
}

impl Affected {
    /// Whether `node` is affected.
    pub fn contains(&self, node: &str) -> bool {
        match self {
            Affected::Nobody => false,
            Affected::All => true,
            Affected::AllExcept(x) => x != node,
            Affected::Some(s) => s.contains(node),
        }
    }

    fn add(&mut self, other: Affected) {
        use Affected::*;
        let merged = match (std::mem::take(self), other) {
            (Nobody, x) | (x, Nobody) => x,
            (All, _) | (_, All) => All,
            (AllExcept(a), AllExcept(b)) => {
                if a == b {
                    AllExcept(a)
                } else {
                    All
                }
            }
            (AllExcept(a), Some(s)) | (Some(s), AllExcept(a)) => {
                if s.contains(&a) {
                    All
                } else {
                    AllExcept(a)
                }
            }
            (Some(mut a), Some(b)) => {
                a.extend(b);
                Some(a)
            }
        };
        *self = merged;
    }

    fn one(node: &str) -> Self {
        Affected::Some(BTreeSet::from([node.to_owned()]))
    }
}

/// What one change touched.
#[derive(Debug, Clone, Default)]
struct Change {
    revision: u64,
    affected: Affected,
    /// Nodes whose shared peer entry changed (or that are gone).
    peers: Vec<String>,
    /// Public keys no longer used by those nodes.
    removed_keys: Vec<WgKey>,
    /// External clients whose peer entry on their ingress changed:
    /// (ingress node, client id, key it no longer uses).
    clients: Vec<(String, String, Option<WgKey>)>,
    /// DNS names changed.
    dns: Vec<String>,
    routes: bool,
    /// Nodes whose own routes changed (not through others' gateways: the
    /// name of their overlay interface, which every route of theirs names).
    routes_of: Vec<String>,
    nameservers: bool,
    interface_all: bool,
    interface_of: Vec<String>,
    firewall_of: Vec<String>,
    /// Made under a restricting policy: configs are computed whole (see
    /// [`NetworkState::snapshot`]), so no delta crosses this change.
    full: bool,
    /// Nodes for which no delta crosses this change (under a restricting
    /// policy, the node whose side changed: anyone's peers may change).
    full_for: Vec<String>,
    /// Under a restricting policy: every affected node's routes and
    /// firewall are sent again (taken from its config now).
    firewall_all: bool,
    /// A change of a restricting policy into another: per node reached,
    /// what of its config may change (see [`shift`]).
    shift: Option<Arc<Shift>>,
}

impl Change {
    fn is_empty(&self) -> bool {
        self.affected == Affected::Nobody
    }
}

/// The changes a node needs to go from one revision to another.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Delta {
    /// Revision the delta applies to.
    pub from_revision: u64,
    /// Revision after it.
    pub revision: u64,
    /// Peers added or changed (shared with the network's state).
    pub upsert_peers: Vec<Arc<Peer>>,
    /// Keys of peers removed (applied before the upserts).
    pub remove_peers: Vec<WgKey>,
    /// New interface.
    pub interface: Option<Interface>,
    /// New routes.
    pub routes: Option<Vec<Route>>,
    /// New firewall.
    pub firewall: Option<Firewall>,
    /// DNS records added or changed.
    pub upsert_dns: Vec<Arc<DnsRecord>>,
    /// DNS names removed.
    pub remove_dns: Vec<String>,
    /// New upstream resolvers.
    pub nameservers: Option<Vec<IpAddr>>,
}

impl Delta {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.upsert_peers.is_empty()
            && self.remove_peers.is_empty()
            && self.interface.is_none()
            && self.routes.is_none()
            && self.firewall.is_none()
            && self.upsert_dns.is_empty()
            && self.remove_dns.is_empty()
            && self.nameservers.is_none()
    }

    /// Applies it to a config (removals first, then upserts).
    pub fn apply_to(&self, c: &mut NodeConfig) {
        for k in &self.remove_peers {
            c.peers.remove(k);
        }
        for p in &self.upsert_peers {
            c.peers.insert(p.public_key, p.clone());
        }
        if let Some(i) = &self.interface {
            c.interface = i.clone();
        }
        if let Some(r) = &self.routes {
            c.routes = r.clone();
        }
        if let Some(f) = &self.firewall {
            c.firewall = f.clone();
        }
        c.dns.records.retain(|r| !self.remove_dns.contains(&r.name));
        for r in &self.upsert_dns {
            match c.dns.records.binary_search_by(|x| x.name.cmp(&r.name)) {
                Ok(i) => c.dns.records[i] = r.clone(),
                Err(i) => c.dns.records.insert(i, r.clone()),
            }
        }
        if let Some(n) = &self.nameservers {
            c.dns.nameservers = n.clone();
        }
        c.revision = self.revision;
    }
}

/// One network's config state.
#[derive(Debug, Clone)]
pub struct NetworkState {
    network: Network,
    nodes: BTreeMap<String, Node>,
    clients: BTreeMap<String, ExtClient>,
    peers: HashMap<String, Arc<Peer>>,
    gateways: BTreeSet<String>,
    dns: BTreeMap<String, Arc<DnsRecord>>,
    custom_dns: BTreeMap<String, DnsRecord>,
    /// The access policy. The shared peer entries below are exact for
    /// unrestricted policies only; under a restricting one, configs are
    /// computed by [`super::config::node_config_with`], a change of one
    /// node or client reaches the nodes [`narrow`] finds (as deltas cut
    /// from their configs now; the node whose side changed gets a
    /// snapshot), a change of the policy the nodes [`shift`] finds (as
    /// deltas; gateways get snapshots), and any other change (a gateway's
    /// role, the network's settings, a policy becoming or ceasing to be
    /// unrestricted) every node, as snapshots.
    policy: Policy,
    revision: u64,
    /// Per node, what its config revision is made of (see [`NodeRev`]).
    node_rev: HashMap<String, NodeRev>,
    /// Revision of the last change that affected every node (all but one,
    /// for [`Affected::AllExcept`]: that one is exempt). Kept once here
    /// rather than in every node's entry, so a change to everyone costs the
    /// same in a network of ten nodes or of ten thousand.
    all_rev: u64,
    /// Revision at which each node appeared in this state (no config of it
    /// existed before).
    node_since: HashMap<String, u64>,
    log: VecDeque<Change>,
    floor: u64,
    capacity: usize,
    /// Under a restricting policy: the policy resolved and grouped, and the
    /// zone, for the current revision (made by the first snapshot after a
    /// change, shared by the rest).
    computed: Computed,
    /// Ingress gateways.
    ingresses: BTreeSet<String>,
    /// Under a restricting policy, the classes of the nodes' sides (see
    /// [`narrow`]), kept as parties change; None until first needed, and
    /// again after a change it does not follow.
    membership: Option<Membership>,
}

/// A change of one party, as [`NetworkState::narrow_before`] saw it and
/// [`NetworkState::narrow_after`] completes it.
struct Narrowing {
    /// The nodes it can reach, so far.
    reached: BTreeSet<String>,
    /// Every node.
    all: bool,
    /// The nodes whose side it is in, before and after.
    owners: Vec<String>,
    /// Names (in the zone) whose presence in a pruned zone may change.
    names: Vec<String>,
    /// What rules select it by changes (or it comes or goes).
    selection: bool,
}

/// What configs under a restricting policy are computed from, made once
/// per revision: a copy of the network, its policy resolved against it and
/// grouped ([`Reach`]), and the zone.
struct Computing {
    view: NetworkView,
    zone: Zone,
}

self_cell::self_cell!(
    /// [`Computing`] and the [`Reach`] that borrows its view.
    struct Resolved {
        owner: Computing,
        #[not_covariant]
        dependent: Reach,
    }
);

/// The per-revision cache of [`NetworkState`]; a copy of the state starts
/// empty. Shared by snapshots computed at once on several threads (what it
/// memoises as it answers is behind locks of its own, held per lookup).
#[derive(Default)]
struct Computed(std::sync::OnceLock<Resolved>);

impl Clone for Computed {
    fn clone(&self) -> Self {
        Computed::default()
    }
}

impl std::fmt::Debug for Computed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Computed(ready)"
        } else {
            "Computed(empty)"
        })
    }
}

/// A node's part of its config revision: its effective revision is `own`,
/// or the network's `all_rev` when that is newer — unless the node was the
/// one left out of that change (`exempt == all_rev`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct NodeRev {
    /// Revision of the last change that affected it alone or among a few
    /// (or its effective revision when it was exempted from an all-change).
    own: u64,
    /// The all-change it was left out of.
    exempt: u64,
    /// Its effective revision just before the change at `own` (0: not
    /// known): no change in between affected it, so an agent holding it
    /// can get a delta while that change is in the log, however old
    /// `prev` is (a spoke's last change may be thousands of changes back).
    prev: u64,
}

/// What of a node's egress its own firewall renders: its ranges, their
/// interface and NAT (not its metric nor which ranges it is standby for:
/// a standby forwards as a primary does).
fn forwarding(n: &Node) -> Option<(&[ipnet::IpNet], &str, bool)> {
    n.egress
        .as_ref()
        .map(|e| (&e.ranges[..], e.interface.as_str(), e.nat))
}

fn record(
    zone: &str,
    name: &str,
    v4: Option<std::net::Ipv4Addr>,
    v6: Option<std::net::Ipv6Addr>,
) -> DnsRecord {
    DnsRecord {
        name: format!("{name}.{zone}"),
        address: v4,
        address6: v6,
    }
}

impl NetworkState {
    /// State equal to `view`, with every node at the view's revision (deltas
    /// can be computed from that revision on).
    pub fn from_view(view: NetworkView) -> Self {
        let mut s = NetworkState {
            network: view.network,
            nodes: BTreeMap::new(),
            clients: BTreeMap::new(),
            peers: HashMap::new(),
            gateways: BTreeSet::new(),
            dns: BTreeMap::new(),
            custom_dns: BTreeMap::new(),
            policy: view.policy,
            revision: view.revision,
            node_rev: HashMap::new(),
            all_rev: 0,
            node_since: HashMap::new(),
            log: VecDeque::new(),
            floor: view.revision,
            capacity: LOG_CAPACITY,
            computed: Computed::default(),
            ingresses: BTreeSet::new(),
            membership: None,
        };
        for c in view.ext_clients {
            s.clients.insert(c.id.clone(), c);
        }
        for mut n in view.nodes {
            // Configs do not depend on the host report: keep it out of the
            // hub's memory.
            n.host = None;
            s.node_rev.insert(
                n.id.clone(),
                NodeRev {
                    own: view.revision,
                    exempt: 0,
                    prev: 0,
                },
            );
            s.node_since.insert(n.id.clone(), view.revision);
            s.nodes.insert(n.id.clone(), n);
        }
        for e in view.dns_entries {
            let r = DnsRecord {
                name: format!("{}.{}", e.name, s.zone()),
                ..e
            };
            s.custom_dns.insert(r.name.clone(), r);
        }
        let ids: Vec<String> = s.nodes.keys().cloned().collect();
        for id in ids {
            let p = s.peer_of(&id).expect("node exists");
            s.peers.insert(id.clone(), p);
            if s.nodes[&id].ingress.is_some() {
                s.ingresses.insert(id.clone());
            }
            if s.nodes[&id].egress.is_some() {
                s.gateways.insert(id);
            }
        }
        s.dns = s
            .all_records()
            .into_iter()
            .map(|(k, r)| (k, Arc::new(r)))
            .collect();
        s
    }

    /// Keeps at most `n` changes (tests use small logs).
    pub fn with_capacity(mut self, n: usize) -> Self {
        self.capacity = n.max(1);
        self
    }

    fn zone(&self) -> &str {
        self.network.name.as_str()
    }

    /// The network.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Revision of the last event applied.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Ids of the nodes.
    pub fn node_ids(&self) -> impl Iterator<Item = &String> {
        self.nodes.keys()
    }

    /// One node.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.get(id)
    }

    /// The revision of a node's current config.
    pub fn node_revision(&self, id: &str) -> Option<u64> {
        self.node_rev.get(id).map(|r| self.effective(*r))
    }

    fn effective(&self, r: NodeRev) -> u64 {
        if r.exempt == self.all_rev {
            r.own
        } else {
            r.own.max(self.all_rev)
        }
    }

    fn peer_of(&self, id: &str) -> Option<Arc<Peer>> {
        let n = self.nodes.get(id)?;
        Some(Arc::new(node_peer(&self.network, n, self.clients.values())))
    }

    fn all_records(&self) -> BTreeMap<String, DnsRecord> {
        let zone = self.zone();
        let mut m: BTreeMap<String, DnsRecord> = self.custom_dns.clone();
        for n in self.nodes.values() {
            let r = record(zone, n.name.as_str(), n.address, n.address6);
            m.insert(r.name.clone(), r);
        }
        for c in self.clients.values() {
            let r = record(zone, c.name.as_str(), c.address, c.address6);
            m.insert(r.name.clone(), r);
        }
        m
    }

    /// Refreshes the shared peer entry of `id`, noting a change.
    fn refresh_peer(&mut self, id: &str, ch: &mut Change) {
        let new = self.peer_of(id);
        let old = match &new {
            Some(p) => self.peers.insert(id.to_owned(), p.clone()),
            None => self.peers.remove(id),
        };
        if old != new {
            ch.peers.push(id.to_owned());
            if let Some(o) = &old
                && new.as_ref().is_none_or(|n| n.public_key != o.public_key)
            {
                ch.removed_keys.push(o.public_key);
            }
            ch.affected.add(Affected::AllExcept(id.to_owned()));
        }
    }

    /// Replaces the DNS record `old_name` with `new` (either may be absent).
    fn refresh_dns(&mut self, old: Option<DnsRecord>, new: Option<DnsRecord>, ch: &mut Change) {
        if old == new {
            return;
        }
        if let Some(o) = &old {
            self.dns.remove(&o.name);
            ch.dns.push(o.name.clone());
        }
        if let Some(n) = new {
            ch.dns.push(n.name.clone());
            self.dns.insert(n.name.clone(), Arc::new(n));
        }
        ch.affected.add(Affected::All);
    }

    /// Applies one event of this network; returns the nodes whose config it
    /// changed (empty when none did). Applying an event whose state is
    /// already held changes nothing, so replays are harmless.
    pub fn apply(&mut self, ev: &Event) -> Affected {
        if ev.revision <= self.revision {
            return Affected::Nobody;
        }
        self.computed = Computed::default();
        let restricted = !self.policy.is_unrestricted();
        let client_alike = restricted && self.client_alike(ev);
        let narrowing = if restricted && !client_alike {
            self.narrow_before(ev)
        } else {
            None
        };
        let mut ch = Change {
            revision: ev.revision,
            ..Default::default()
        };
        match (&ev.resource, ev.action) {
            (Resource::Network(n), Action::Updated | Action::Created) => {
                let old = std::mem::replace(&mut self.network, n.clone());
                if old.keepalive != n.keepalive {
                    let ids: Vec<String> = self.nodes.keys().cloned().collect();
                    for id in ids {
                        self.refresh_peer(&id, &mut ch);
                    }
                }
                if old.mtu != n.mtu {
                    ch.interface_all = true;
                    ch.affected.add(Affected::All);
                }
                if old.nameservers != n.nameservers {
                    ch.nameservers = true;
                    ch.affected.add(Affected::All);
                }
            }
            (Resource::Network(_), Action::Deleted) => {}
            (Resource::Node(n), Action::Created | Action::Updated) => self.upsert_node(n, &mut ch),
            (Resource::Node(n), Action::Deleted) => self.remove_node(&n.id, &mut ch),
            (Resource::ExtClient(c), Action::Created | Action::Updated) => {
                self.upsert_client(Some(c), &c.id, &mut ch)
            }
            (Resource::ExtClient(c), Action::Deleted) => self.upsert_client(None, &c.id, &mut ch),
            (Resource::EnrollmentKey(_), _) => {}
            (Resource::Policy(p), _) => {
                // Who may reach whom: between two restricting policies,
                // the nodes whose classes' answers or firewall lines
                // differ, as deltas (the gateways as snapshots; see
                // [`shift`]); into or out of an unrestricted one (pruning
                // done or undone) every node, as snapshots.
                if p.policy != self.policy {
                    let old = std::mem::replace(&mut self.policy, p.policy.clone());
                    self.membership = None;
                    if old.is_unrestricted() || self.policy.is_unrestricted() {
                        ch.full = true;
                        ch.affected = Affected::All;
                    } else {
                        let r = Shift::of(&self.sides(), &old, &self.policy);
                        ch.full_for = r.snapshots;
                        ch.shift = Some(Arc::new(r.shift));
                        if !r.nodes.is_empty() {
                            ch.affected = Affected::Some(r.nodes);
                        }
                    }
                }
            }
            (Resource::DnsEntry(e), action) => {
                let r = e.record();
                let old = self.custom_dns.remove(&r.name);
                let new = (action != Action::Deleted).then_some(r);
                if let Some(n) = &new {
                    self.custom_dns.insert(n.name.clone(), n.clone());
                }
                self.refresh_dns(old, new, &mut ch);
            }
        }
        self.revision = ev.revision;
        if self.policy.is_unrestricted() {
            self.membership = None;
        } else if matches!(
            ev.resource,
            Resource::Network(_) | Resource::Node(_) | Resource::ExtClient(_)
        ) {
            if client_alike {
                // Nothing any node's pruning or firewall looks at moved: the
                // change stands as computed (the client's own file, its
                // ingress gateway's entry for it).
            } else if let Some(n) = narrowing.and_then(|n| self.narrow_after(ev, n)) {
                // One party changed: only the nodes it can reach see it,
                // as deltas cut from their configs now, for its side's
                // node, whose whole plan may change, as a snapshot.
                for o in &n.owners {
                    if !ch.peers.contains(o) {
                        ch.peers.push(o.clone());
                    }
                }
                ch.dns.extend(n.names);
                if n.selection {
                    ch.full_for = n.owners;
                    ch.routes = true;
                    ch.firewall_all = true;
                }
                ch.affected = if n.all {
                    Affected::All
                } else if n.reached.is_empty() {
                    Affected::Nobody
                } else {
                    Affected::Some(n.reached)
                };
            } else {
                // A gateway's role, the network's settings: served as
                // snapshots to every node.
                self.membership = None;
                ch.full = true;
                ch.affected = Affected::All;
            }
        }
        if ch.is_empty() {
            return Affected::Nobody;
        }
        match &ch.affected {
            Affected::Nobody => {}
            Affected::All => self.all_rev = ev.revision,
            Affected::AllExcept(x) => {
                if let Some(r) = self.node_rev.get(x).copied() {
                    let own = self.effective(r);
                    self.node_rev.insert(
                        x.clone(),
                        NodeRev {
                            own,
                            exempt: ev.revision,
                            prev: 0,
                        },
                    );
                }
                self.all_rev = ev.revision;
            }
            Affected::Some(ids) => {
                for id in ids {
                    if let Some(r) = self.node_rev.get(id).copied() {
                        let prev = self.effective(r);
                        self.node_rev.insert(
                            id.clone(),
                            NodeRev {
                                own: ev.revision,
                                prev,
                                ..r
                            },
                        );
                    }
                }
            }
        }
        let affected = ch.affected.clone();
        if ch.shift.is_some() {
            // Keep the newest few in detail; nodes resuming across an
            // older one get a snapshot.
            let mut kept = 1;
            for old in self.log.iter_mut().rev() {
                if old.shift.is_some() {
                    kept += 1;
                    if kept > SHIFTS_KEPT {
                        old.shift = None;
                        old.full = true;
                    }
                }
            }
        }
        self.log.push_back(ch);
        while self.log.len() > self.capacity {
            if let Some(old) = self.log.pop_front() {
                self.floor = old.revision;
            }
        }
        affected
    }

    fn upsert_node(&mut self, n: &Node, ch: &mut Change) {
        let zone = self.zone().to_owned();
        let mut kept = n.clone();
        kept.host = None;
        // Its own routes leave out the ranges it serves itself.
        let old_routes = self.nodes.get(&n.id).map(|o| self.routes(o));
        let old = self.nodes.insert(n.id.clone(), kept);
        if old.is_none() {
            // A new node: its own config is new too.
            self.node_rev.insert(n.id.clone(), NodeRev::default());
            self.node_since.insert(n.id.clone(), ch.revision);
            ch.affected.add(Affected::one(&n.id));
        }
        self.refresh_peer(&n.id, ch);
        self.refresh_dns(
            old.as_ref()
                .map(|o| record(&zone, o.name.as_str(), o.address, o.address6)),
            Some(record(&zone, n.name.as_str(), n.address, n.address6)),
            ch,
        );
        // Others route a gateway's ranges via its key: only those two matter
        // to them (NAT and interface are the gateway's own business).
        let ranges = |x: Option<&Node>| {
            x.and_then(|x| x.egress.as_ref())
                .map(|e| e.routed().copied().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        let (old_ranges, new_ranges) = (ranges(old.as_ref()), ranges(Some(n)));
        let old_key = old.as_ref().map(|o| o.public_key);
        if old_ranges != new_ranges || (!new_ranges.is_empty() && old_key != Some(n.public_key)) {
            // Everyone's routes but its own (a gateway has no overlay route to
            // its own ranges).
            ch.routes = true;
            ch.affected.add(Affected::AllExcept(n.id.clone()));
        }
        if old_routes.is_some_and(|r| r != self.routes(n)) {
            ch.routes_of.push(n.id.clone());
            ch.affected.add(Affected::one(&n.id));
        }
        if n.egress.is_some() {
            self.gateways.insert(n.id.clone());
        } else {
            self.gateways.remove(&n.id);
        }
        if n.ingress.is_some() {
            self.ingresses.insert(n.id.clone());
        } else {
            self.ingresses.remove(&n.id);
        }
        if old
            .as_ref()
            .is_none_or(|o| forwarding(o) != forwarding(n) || o.ingress != n.ingress)
        {
            ch.firewall_of.push(n.id.clone());
            ch.affected.add(Affected::one(&n.id));
        }
        if old.as_ref().is_none_or(|o| {
            o.listen_port != n.listen_port || o.address != n.address || o.address6 != n.address6
        }) {
            ch.interface_of.push(n.id.clone());
            ch.affected.add(Affected::one(&n.id));
        }
        // The overlay interface's name is in the node's own interface, routes
        // and firewall rules, and in nobody else's config.
        if let Some(o) = &old
            && node_interface(o) != node_interface(n)
        {
            ch.interface_of.push(n.id.clone());
            ch.routes_of.push(n.id.clone());
            ch.firewall_of.push(n.id.clone());
            ch.affected.add(Affected::one(&n.id));
        }
    }

    fn remove_node(&mut self, id: &str, ch: &mut Change) {
        let Some(old) = self.nodes.remove(id) else {
            return;
        };
        self.node_rev.remove(id);
        self.node_since.remove(id);
        self.refresh_peer(id, ch);
        let zone = self.zone().to_owned();
        self.refresh_dns(
            Some(record(&zone, old.name.as_str(), old.address, old.address6)),
            None,
            ch,
        );
        self.ingresses.remove(id);
        if self.gateways.remove(id) {
            ch.routes = true;
            ch.affected.add(Affected::AllExcept(id.to_owned()));
        }
        // Its clients' events came before this one; drop any left over.
        let orphans: Vec<String> = self
            .clients
            .values()
            .filter(|c| c.ingress_node_id == id)
            .map(|c| c.id.clone())
            .collect();
        for c in orphans {
            self.upsert_client(None, &c, ch);
        }
    }

    fn upsert_client(&mut self, new: Option<&ExtClient>, id: &str, ch: &mut Change) {
        let zone = self.zone().to_owned();
        let old = match new {
            Some(c) => self.clients.insert(id.to_owned(), c.clone()),
            None => self.clients.remove(id),
        };
        if old.is_none() && new.is_none() {
            return;
        }
        // Its peer entry on its ingress gateway.
        let peer_on = |c: Option<&ExtClient>| {
            c.filter(|c| c.enabled)
                .map(|c| (c.ingress_node_id.clone(), ext_client_peer(c)))
        };
        let (old_peer, new_peer) = (peer_on(old.as_ref()), peer_on(new));
        if old_peer != new_peer {
            if let Some((ing, p)) = &old_peer {
                let gone = new_peer
                    .as_ref()
                    .is_none_or(|(i, n)| i != ing || n.public_key != p.public_key);
                ch.clients
                    .push((ing.clone(), id.to_owned(), gone.then_some(p.public_key)));
                ch.affected.add(Affected::one(ing));
            }
            if let Some((ing, _)) = &new_peer {
                ch.clients.push((ing.clone(), id.to_owned(), None));
                ch.affected.add(Affected::one(ing));
            }
        }
        // The ingress gateways' shared entries carry the client's addresses.
        let mut ingresses: Vec<String> = old
            .iter()
            .chain(new)
            .map(|c| c.ingress_node_id.clone())
            .collect();
        ingresses.dedup();
        for ing in ingresses {
            if self.nodes.contains_key(&ing) {
                self.refresh_peer(&ing, ch);
            }
        }
        self.refresh_dns(
            old.as_ref()
                .map(|c| record(&zone, c.name.as_str(), c.address, c.address6)),
            new.map(|c| record(&zone, c.name.as_str(), c.address, c.address6)),
            ch,
        );
    }

    /// The party `ev` changes, when it is one whose reach [`narrow`] can
    /// follow: a node whose gateway roles stay as they are (and that is no
    /// gateway when it comes or goes), or an external client. Takes its
    /// old classes out of the membership and notes what the old party can
    /// reach; None for any other change.
    fn narrow_before(&mut self, ev: &Event) -> Option<Narrowing> {
        let plain = |n: &Node| n.egress.is_none() && n.ingress.is_none();
        let (party_id, client) = match (&ev.resource, ev.action) {
            (Resource::Node(n), Action::Created | Action::Updated) => {
                match self.nodes.get(&n.id) {
                    Some(o) if o.egress != n.egress || o.ingress != n.ingress => return None,
                    None if !plain(n) => return None,
                    _ => {}
                }
                (n.id.clone(), false)
            }
            (Resource::Node(n), Action::Deleted) => {
                // (A client left pointing at it goes with it, untracked:
                // the store deletes clients first, so only a log out of
                // that order has one.)
                if !self.nodes.get(&n.id).is_none_or(plain)
                    || self.clients.values().any(|c| c.ingress_node_id == n.id)
                {
                    return None;
                }
                (n.id.clone(), false)
            }
            (Resource::ExtClient(c), _) => (c.id.clone(), true),
            _ => return None,
        };
        let mut n = Narrowing {
            reached: BTreeSet::new(),
            all: false,
            owners: Vec::new(),
            names: Vec::new(),
            selection: true,
        };
        if self.membership.is_none() {
            self.membership = Some(self.build_membership());
        }
        // What rules select it by: for a node's update, whether it moves.
        n.selection = match (&ev.resource, ev.action) {
            (Resource::Node(new), Action::Updated) => self.nodes.get(&new.id).is_none_or(|o| {
                o.name != new.name
                    || o.tags != new.tags
                    || o.address != new.address
                    || o.address6 != new.address6
            }),
            _ => true,
        };
        let mut m = self.membership.take().expect("just made");
        self.reach_of(&party_id, client, &mut m, false, &mut n);
        self.membership = Some(m);
        Some(n)
    }

    /// Completes [`NetworkState::narrow_before`] once the change is
    /// applied: counts the new party in, notes what it can reach.
    fn narrow_after(&mut self, ev: &Event, mut n: Narrowing) -> Option<Narrowing> {
        let (party_id, client) = match &ev.resource {
            Resource::Node(x) => (x.id.clone(), false),
            Resource::ExtClient(c) => (c.id.clone(), true),
            _ => return None,
        };
        let mut m = self.membership.take()?;
        self.reach_of(&party_id, client, &mut m, true, &mut n);
        self.membership = Some(m);
        n.owners.sort();
        n.owners.dedup();
        n.names.sort();
        n.names.dedup();
        Some(n)
    }

    /// The node whose side the client is in: its ingress gateway, when it
    /// is enabled and that node is an ingress gateway.
    fn side_owner<'c>(&self, c: &'c ExtClient) -> Option<&'c str> {
        (c.enabled
            && self
                .nodes
                .get(&c.ingress_node_id)
                .is_some_and(|n| n.ingress.is_some()))
        .then_some(c.ingress_node_id.as_str())
    }

    /// Every node with the enabled clients of its side.
    fn sides(&self) -> Sides<'_> {
        let mut clients: HashMap<&str, Vec<&ExtClient>> = HashMap::new();
        for c in self.clients.values() {
            if let Some(owner) = self.side_owner(c) {
                clients.entry(owner).or_default().push(c);
            }
        }
        Sides {
            network: &self.network,
            sides: self
                .nodes
                .values()
                .map(|n| (n, clients.remove(n.id.as_str()).unwrap_or_default()))
                .collect(),
        }
    }

    /// Every side's classes, counted afresh.
    fn build_membership(&self) -> Membership {
        let index = PolicyIndex::new(&self.policy, [], []);
        let mut m = Membership::default();
        for n in self.nodes.values() {
            m.count(&Classes::of(&index, Party::Node(n)), &n.id, true);
        }
        for c in self.clients.values() {
            if let Some(owner) = self.side_owner(c) {
                m.count(&Classes::of(&index, Party::Client(c)), owner, true);
            }
        }
        m
    }

    /// Notes in `n` what the party `id` (a client when `client`) as it is
    /// now can reach, its owner and names, and counts it out of `m`
    /// (before the change) or into it (`add`, after).
    fn reach_of(&self, id: &str, client: bool, m: &mut Membership, add: bool, n: &mut Narrowing) {
        let index = PolicyIndex::new(&self.policy, [], []);
        let (party, owner, node) = if client {
            let Some(c) = self.clients.get(id) else {
                return;
            };
            let owner = self.side_owner(c).map(str::to_owned);
            n.names.push(format!("{}.{}", c.name, self.zone()));
            (Party::Client(c), owner, None)
        } else {
            let Some(x) = self.nodes.get(id) else { return };
            (Party::Node(x), Some(x.id.clone()), Some(x))
        };
        if let Some(o) = owner.as_ref().and_then(|o| self.nodes.get(o)) {
            n.names.push(format!("{}.{}", o.name, self.zone()));
        }
        let classes = Classes::of(&index, party);
        if add && let Some(owner) = &owner {
            m.count(&classes, owner, true);
        }
        let side: Vec<Party<'_>> = match node {
            Some(x) if x.ingress.is_some() => self
                .clients
                .values()
                .filter(|c| self.side_owner(c) == Some(x.id.as_str()))
                .map(Party::Client)
                .collect(),
            _ => Vec::new(),
        };
        let scope = Scope {
            index: &index,
            policy: &self.policy,
            network: &self.network,
            nodes: &self.nodes,
            gateways: &self.gateways,
            ingresses: &self.ingresses,
        };
        n.all |= reached_by(
            &scope,
            m,
            party,
            owner.as_deref(),
            side,
            n.selection,
            &mut n.reached,
        );
        if let Some(owner) = owner {
            if !add {
                m.count(&classes, &owner, false);
            }
            n.owners.push(owner);
        }
    }

    /// Whether `ev` updates an external client without changing what a
    /// policy or anyone's pruning looks at: its name, tags, addresses,
    /// whether it is enabled, its ingress gateway (its DNS servers or its
    /// key may change).
    fn client_alike(&self, ev: &Event) -> bool {
        let (Resource::ExtClient(c), Action::Updated) = (&ev.resource, ev.action) else {
            return false;
        };
        self.clients.get(&c.id).is_some_and(|o| {
            o.name == c.name
                && o.tags == c.tags
                && o.address == c.address
                && o.address6 == c.address6
                && o.enabled == c.enabled
                && o.ingress_node_id == c.ingress_node_id
        })
    }

    /// The policy resolved for the current revision (made on first use).
    fn resolved(&self) -> &Resolved {
        self.computed.0.get_or_init(|| {
            let view = self.view();
            let zone = Zone::of(&view);
            Resolved::new(Computing { view, zone }, |c| Reach::of_view(&c.view))
        })
    }

    /// A node's whole config now.
    pub fn snapshot(&self, node_id: &str) -> Option<NodeConfig> {
        let node = self.nodes.get(node_id)?;
        if !self.policy.is_unrestricted() {
            let mut c = self
                .resolved()
                .with_dependent(|c, reach| node_config_with(&c.view, reach, &c.zone, node_id))?;
            c.revision = self.node_revision(node_id).unwrap_or(self.revision);
            return Some(c);
        }
        let mut peers: BTreeMap<WgKey, Arc<Peer>> = self
            .peers
            .iter()
            .filter(|(id, _)| id.as_str() != node_id)
            .map(|(_, p)| (p.public_key, p.clone()))
            .collect();
        if node.ingress.is_some() {
            for c in self
                .clients
                .values()
                .filter(|c| c.enabled && c.ingress_node_id == node_id)
            {
                peers.insert(c.public_key, Arc::new(ext_client_peer(c)));
            }
        }
        Some(NodeConfig {
            revision: self.node_revision(node_id).unwrap_or(self.revision),
            node_id: node.id.clone(),
            network: self.network.name.to_string(),
            interface: interface_for(&self.network, node),
            peers,
            routes: self.routes(node),
            firewall: firewall_for(&self.network, node),
            dns: DnsConfig {
                records: self.dns.values().cloned().collect(),
                nameservers: self.network.nameservers.clone(),
                domain: self.zone().to_owned(),
            },
        })
    }

    fn routes(&self, node: &Node) -> Vec<Route> {
        routes_for(node, self.gateways.iter().filter_map(|g| self.nodes.get(g)))
    }

    /// Whether a delta can be computed for `node` from revision `from`: the
    /// revision is one this node had (its current one, the start of the log
    /// window, or a logged change that affected it).
    pub fn can_continue(&self, node_id: &str, from: u64) -> bool {
        let Some(current) = self.node_revision(node_id) else {
            return false;
        };
        if from == 0 || from > current {
            return false;
        }
        if from == current {
            return true;
        }
        let r = self.node_rev.get(node_id).copied().unwrap_or_default();
        let resumable = from == r.prev && r.own > self.floor;
        if (from < self.floor && !resumable)
            || self.node_since.get(node_id).is_none_or(|s| from < *s)
        {
            return false;
        }
        let after = self.log_from(node_id, from);
        if self.log.iter().skip(after).any(|c| {
            (c.full && c.affected.contains(node_id)) || c.full_for.iter().any(|x| x == node_id)
        }) {
            return false;
        }
        if from == self.floor || resumable {
            return true;
        }
        let i = self.log.partition_point(|c| c.revision < from);
        self.log
            .get(i)
            .is_some_and(|c| c.revision == from && c.affected.contains(node_id))
    }

    /// Where in the log the changes a node at revision `from` has not seen
    /// begin. Held at its revision before its last change, nothing in
    /// between affected it, so they begin at that change (for a spoke that
    /// joined long ago, one entry rather than the whole log).
    fn log_from(&self, node_id: &str, from: u64) -> usize {
        let r = self.node_rev.get(node_id).copied().unwrap_or_default();
        let from = if from == r.prev && r.own > from {
            r.own - 1
        } else {
            from
        };
        self.log.partition_point(|c| c.revision <= from)
    }

    /// What `node` needs to go from `from` to its current config; None when
    /// it must get a snapshot instead (see [`NetworkState::can_continue`]).
    pub fn delta(&self, node_id: &str, from: u64) -> Option<Delta> {
        if !self.can_continue(node_id, from) {
            return None;
        }
        let node = self.nodes.get(node_id)?;
        let mut peers = BTreeSet::new();
        let mut removed = BTreeSet::new();
        let mut clients = BTreeSet::new();
        let mut dns = BTreeSet::new();
        let (mut routes, mut nameservers, mut interface, mut firewall) =
            (false, false, false, false);
        let start = self.log_from(node_id, from);
        // Keys given up since `from` in changes that did not reach the
        // node: under a restricting policy a peer it held then may have
        // left its config at one change and changed its key at a later
        // one; removed below when not in its config now.
        let mut given_up = BTreeSet::new();
        for ch in self.log.iter().skip(start) {
            if !ch.affected.contains(node_id) {
                given_up.extend(ch.removed_keys.iter().copied());
                continue;
            }
            peers.extend(ch.peers.iter().filter(|p| p.as_str() != node_id));
            removed.extend(ch.removed_keys.iter().copied());
            for (ing, cid, gone) in &ch.clients {
                if ing == node_id {
                    clients.insert(cid);
                    removed.extend(gone.iter().copied());
                }
            }
            dns.extend(ch.dns.iter());
            if let Some(seen) = ch.shift.as_ref().and_then(|s| Some((s, s.seen(node_id)?))) {
                let (nodes, names) = seen.0.partners(seen.1);
                peers.extend(nodes.filter(|p| p.as_str() != node_id));
                dns.extend(names);
                routes |= seen.1.ranges;
                firewall |= seen.1.firewall;
            }
            routes |= ch.routes || ch.routes_of.iter().any(|n| n == node_id);
            nameservers |= ch.nameservers;
            interface |= ch.interface_all || ch.interface_of.iter().any(|n| n == node_id);
            firewall |= ch.firewall_all || ch.firewall_of.iter().any(|n| n == node_id);
        }
        // Under a restricting policy, a peer's entry is the viewer's own
        // (pruned allowed IPs), and so are its routes and firewall: taken
        // from its config now.
        let pruned = (!self.policy.is_unrestricted())
            .then(|| self.snapshot(node_id))
            .flatten();
        let mut upsert: Vec<Arc<Peer>> = match &pruned {
            None => peers
                .iter()
                .filter_map(|id| self.peers.get(id.as_str()).cloned())
                .collect(),
            Some(cfg) => peers
                .iter()
                .filter_map(|id| self.nodes.get(id.as_str()))
                .filter_map(|m| match cfg.peers.get(&m.public_key) {
                    Some(p) => Some(p.clone()),
                    None => {
                        removed.insert(m.public_key);
                        None
                    }
                })
                .collect(),
        };
        if let Some(cfg) = &pruned {
            removed.extend(given_up.into_iter().filter(|k| !cfg.peers.contains_key(k)));
        }
        upsert.extend(
            clients
                .iter()
                .filter_map(|cid| self.clients.get(cid.as_str()))
                .filter(|c| c.enabled && c.ingress_node_id == node_id && node.ingress.is_some())
                .map(|c| Arc::new(ext_client_peer(c))),
        );
        upsert.sort_by_key(|p| p.public_key);
        // Likewise its zone (pruned to the names of what it keeps).
        let record = |n: &str| match &pruned {
            Some(cfg) => cfg
                .dns
                .records
                .binary_search_by(|r| r.name.as_str().cmp(n))
                .ok()
                .map(|i| cfg.dns.records[i].clone()),
            None => self.dns.get(n).cloned(),
        };
        let (upsert_dns, remove_dns): (Vec<_>, Vec<_>) = dns
            .into_iter()
            .map(|n| (n, record(n)))
            .partition(|(_, r)| r.is_some());
        Some(Delta {
            from_revision: from,
            revision: self.node_revision(node_id)?,
            upsert_peers: upsert,
            remove_peers: removed.into_iter().collect(),
            interface: interface.then(|| interface_for(&self.network, node)),
            routes: routes.then(|| match &pruned {
                Some(cfg) => cfg.routes.clone(),
                None => self.routes(node),
            }),
            firewall: firewall.then(|| match &pruned {
                Some(cfg) => cfg.firewall.clone(),
                None => firewall_for(&self.network, node),
            }),
            upsert_dns: upsert_dns.into_iter().filter_map(|(_, r)| r).collect(),
            remove_dns: remove_dns.into_iter().map(|(n, _)| n.clone()).collect(),
            nameservers: nameservers.then(|| self.network.nameservers.clone()),
        })
    }

    /// Every egress range several gateways serve, with those gateways.
    pub fn shared_ranges(&self) -> Vec<(ipnet::IpNet, Vec<&Node>)> {
        let mut by_range: BTreeMap<ipnet::IpNet, Vec<&Node>> = BTreeMap::new();
        for g in self.gateways.iter().filter_map(|g| self.nodes.get(g)) {
            for r in g.egress.iter().flat_map(|e| e.ranges.iter()) {
                by_range.entry(*r).or_default().push(g);
            }
        }
        by_range.into_iter().filter(|(_, g)| g.len() > 1).collect()
    }

    /// The record of a fully qualified name (without trailing dot) in this
    /// zone.
    pub fn dns_record(&self, fqdn: &str) -> Option<&DnsRecord> {
        self.dns.get(fqdn).map(|r| &**r)
    }

    /// Every record of the zone, by name.
    pub fn dns_records(&self) -> impl Iterator<Item = &DnsRecord> {
        self.dns.values().map(|r| &**r)
    }

    /// The current state as a plain view: what reads computed from a whole
    /// network use (ExplainRoute, the DNS listings), and what tests check
    /// against the non-incremental computation.
    pub fn view(&self) -> NetworkView {
        NetworkView {
            network: self.network.clone(),
            nodes: self.nodes.values().cloned().collect(),
            ext_clients: self.clients.values().cloned().collect(),
            dns_entries: self
                .custom_dns
                .values()
                .map(|r| DnsRecord {
                    name: r
                        .name
                        .strip_suffix(&format!(".{}", self.zone()))
                        .unwrap_or(&r.name)
                        .to_owned(),
                    ..r.clone()
                })
                .collect(),
            revision: self.revision,
            policy: self.policy.clone(),
        }
    }
}

mod narrow;
mod shift;
#[cfg(test)]
pub(crate) mod tests;
