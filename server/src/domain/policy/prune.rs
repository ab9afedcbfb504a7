//! Peer pruning: which peers, which of their allowed IPs and which routes
//! a node keeps under a policy.
//!
//! Traffic between two nodes' "sides" crosses the WireGuard link between
//! them. A node's side is the node itself and, when it is an ingress
//! gateway, its enabled external clients (their traffic enters and leaves
//! the network through it), plus, when it is an egress gateway, its
//! ranges. A node keeps a peer when anything on one side may send anything
//! to the other, in either direction: replies of an allowed flow need the
//! link too. Of a kept peer it keeps the peer's own addresses, the
//! addresses of the peer's clients that its side exchanges traffic with,
//! and the peer's egress ranges its side may send something into (or,
//! without NAT on the peer, whose hosts may send something to its side);
//! its routes are those of the kept ranges.
//!
//! With an unrestricted policy everything is kept, so configs are those of
//! a network without a policy.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use ipnet::IpNet;

use super::super::config::NetworkView;
use super::super::ext_client::ExtClient;
use super::super::network::Network;
use super::super::node::Node;
use super::eval::{Bits, Dest, Memo, Party, PolicyIndex, Sender};
use super::range_pieces;

/// What a node keeps of one peer node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerKeep {
    /// The peer's egress ranges kept in its allowed IPs and routed to it.
    pub ranges: BTreeSet<IpNet>,
    /// Ids of the peer's external clients whose addresses are kept in its
    /// allowed IPs.
    pub clients: BTreeSet<String>,
}

/// What a node keeps of each peer node, by the peer's id; a node not in it
/// is left out of the node's config.
pub type PeerPlan = BTreeMap<String, PeerKeep>;

/// A node's side: the node and its enabled clients (when an ingress
/// gateway).
#[cfg(test)]
fn side<'a>(node: &'a Node, clients: &'a [ExtClient]) -> Vec<Party<'a>> {
    let mut v = vec![Party::Node(node)];
    if node.ingress.is_some() {
        v.extend(
            clients
                .iter()
                .filter(|c| c.enabled && c.ingress_node_id == node.id)
                .map(Party::Client),
        );
    }
    v
}

/// The pieces of every egress range of the network (see
/// [`range_pieces`]).
pub type Pieces = BTreeMap<IpNet, Vec<IpNet>>;

/// Cuts every egress range of `nodes` into its pieces.
pub fn all_pieces(index: &PolicyIndex<'_>, network: &Network, nodes: &[Node]) -> Pieces {
    nodes
        .iter()
        .filter_map(|n| n.egress.as_ref())
        .flat_map(|e| e.ranges.iter().copied())
        .map(|r| (r, range_pieces(index.policy(), network, nodes, r)))
        .collect()
}

/// The three questions pruning asks about parties (by their index in
/// [`PolicyIndex::parties`]).
trait Decide<'a> {
    fn party(&self, i: usize) -> Party<'a>;
    /// Whether `x` and `y` may exchange anything, either way.
    fn exchange(&self, x: usize, y: usize) -> bool;
    /// Whether hosts behind a gateway without NAT may send something to
    /// `y`.
    fn foreign_reaches(&self, y: usize) -> bool;
    /// Whether `x` may send something into some piece of `range`.
    fn reaches_range(&self, x: usize, range: IpNet) -> bool;
}

/// What the node whose side is `mine` (the node first) keeps of the node
/// whose side is `theirs`; None when nothing (see the module
/// documentation).
fn keep_of<'a>(d: &impl Decide<'a>, mine: &[usize], theirs: &[usize]) -> Option<PeerKeep> {
    let (Party::Node(node), Party::Node(m)) = (d.party(mine[0]), d.party(theirs[0])) else {
        return None;
    };
    let my_no_nat = node.egress.as_ref().is_some_and(|e| !e.nat);
    let their_no_nat = m.egress.as_ref().is_some_and(|e| !e.nat);
    let mut keep = PeerKeep::default();
    let mut needed = false;
    // Party to party, either way.
    for (j, &y) in theirs.iter().enumerate() {
        let with_y = mine.iter().any(|&x| d.exchange(x, y))
            // y sends into my ranges, or my ranges' hosts (no NAT) to y.
            || node
                .egress
                .as_ref()
                .is_some_and(|e| e.routed().any(|r| d.reaches_range(y, *r)))
            || (my_no_nat && d.foreign_reaches(y));
        if with_y {
            needed = true;
            if j > 0 {
                keep.clients.insert(d.party(y).id().to_owned());
            }
        }
    }
    // My side into their ranges, or their ranges' hosts (no NAT) to my
    // side.
    if let Some(e) = &m.egress {
        for r in e.routed() {
            let used = mine.iter().any(|&x| d.reaches_range(x, *r))
                || (their_no_nat && mine.iter().any(|&x| d.foreign_reaches(x)));
            if used {
                keep.ranges.insert(*r);
            }
        }
    }
    (needed || !keep.ranges.is_empty()).then_some(keep)
}

/// What a node keeps of every peer under an unrestricted policy: all.
fn keep_all(m: &Node, their_clients: impl Iterator<Item = String>) -> PeerKeep {
    PeerKeep {
        ranges: m.egress.iter().flat_map(|e| e.routed().copied()).collect(),
        clients: their_clients.collect(),
    }
}

/// The questions asked of the index one packet kind at a time: the
/// definition [`Reach`] is checked against.
#[cfg(test)]
struct ByIndex<'i, 'a> {
    index: &'i PolicyIndex<'a>,
    pieces: &'i Pieces,
}

#[cfg(test)]
impl<'a> Decide<'a> for ByIndex<'_, 'a> {
    fn party(&self, i: usize) -> Party<'a> {
        self.index.parties()[i]
    }
    fn exchange(&self, x: usize, y: usize) -> bool {
        let (x, y) = (self.party(x), self.party(y));
        y.addrs()
            .into_iter()
            .any(|a| self.index.may_send(Sender::Party(x), Dest::Addr(a)))
            || x.addrs()
                .into_iter()
                .any(|a| self.index.may_send(Sender::Party(y), Dest::Addr(a)))
    }
    fn foreign_reaches(&self, y: usize) -> bool {
        self.party(y)
            .addrs()
            .into_iter()
            .any(|a| self.index.may_send(Sender::Foreign, Dest::Addr(a)))
    }
    fn reaches_range(&self, x: usize, range: IpNet) -> bool {
        let x = self.party(x);
        self.pieces.get(&range).is_some_and(|ps| {
            ps.iter()
                .any(|p| self.index.may_send(Sender::Party(x), Dest::Range(*p)))
        })
    }
}

/// What `node` keeps of every other node under `index`'s policy, asking
/// about every pair of parties: the definition, for tests. `nodes` and
/// `clients` are the network's (those `index` was made of); `pieces` is
/// [`all_pieces`] of them.
#[cfg(test)]
pub fn peer_plan(
    index: &PolicyIndex<'_>,
    pieces: &Pieces,
    nodes: &[Node],
    clients: &[ExtClient],
    node: &Node,
) -> PeerPlan {
    let d = ByIndex { index, pieces };
    let at = |id: &str| {
        index
            .parties()
            .iter()
            .position(|p| p.id() == id)
            .expect("a party of the index")
    };
    let side_of =
        |n: &Node| -> Vec<usize> { side(n, clients).iter().map(|p| at(p.id())).collect() };
    let mine = side_of(node);
    let mut plan = PeerPlan::new();
    for m in nodes.iter().filter(|m| m.id != node.id) {
        let theirs = side_of(m);
        let keep = if index.is_unrestricted() {
            Some(keep_all(
                m,
                theirs[1..].iter().map(|&c| d.party(c).id().to_owned()),
            ))
        } else {
            keep_of(&d, &mine, &theirs)
        };
        if let Some(k) = keep {
            plan.insert(m.id.clone(), k);
        }
    }
    plan
}

/// Pruning in time that grows with the answer, not with the network.
///
/// Parties the policy cannot tell apart are grouped: senders by the rules
/// their packets can match (the "sender class"), addresses by the rules
/// that can match packets sent to them (the "receiver class"), and
/// whether anything may pass is decided once per pair of classes. For a
/// node, only the nodes whose side holds a party of a class its own side
/// may exchange with (either way), the egress gateways, and for a
/// gateway the senders into its ranges, are candidates; each candidate is
/// then decided exactly as [`peer_plan`] decides every node. A network of
/// 100,000 spokes that may reach 4 hubs asks a few questions per class
/// pair and 4 per spoke, not 100,000.
#[derive(Debug)]
pub struct Reach<'a> {
    index: PolicyIndex<'a>,
    pieces: Pieces,
    /// Per party, its sender class.
    send: Vec<u32>,
    /// Per party, the receiver class of each of its addresses.
    recv: Vec<Vec<u32>>,
    /// The sender class of a host behind a gateway without NAT.
    foreign: u32,
    send_bits: Vec<Bits>,
    recv_bits: Vec<Bits>,
    may: Memo<(u32, u32), bool>,
    into_range: Memo<(u32, IpNet), bool>,
    /// Node id → the node's party index.
    node_at: HashMap<&'a str, usize>,
    /// Per node party index, its side (the node first).
    sides: HashMap<usize, Vec<usize>>,
    /// Per sender class, the nodes (party indices) whose side holds a
    /// party of it.
    senders: Vec<Vec<usize>>,
    /// Per receiver class, likewise.
    receivers: Vec<Vec<usize>>,
    /// Egress gateways (party indices).
    gateways: Vec<usize>,
}

/// The class of `bits`, made when new.
fn class_of(classes: &mut HashMap<Bits, u32>, all: &mut Vec<Bits>, bits: Bits) -> u32 {
    if let Some(c) = classes.get(&bits) {
        return *c;
    }
    let c = all.len() as u32;
    classes.insert(bits.clone(), c);
    all.push(bits);
    c
}

impl<'a> Reach<'a> {
    /// The view's policy resolved against its parties and grouped.
    pub fn of_view(view: &'a NetworkView) -> Self {
        let index = PolicyIndex::of_view(view);
        let pieces = if index.is_unrestricted() {
            Pieces::new()
        } else {
            all_pieces(&index, &view.network, &view.nodes)
        };
        Reach::new(index, pieces)
    }

    /// Groups the index's parties; `pieces` is [`all_pieces`] of the
    /// network.
    pub fn new(index: PolicyIndex<'a>, pieces: Pieces) -> Self {
        let parties = index.parties();
        let (mut send_classes, mut recv_classes) = (HashMap::new(), HashMap::new());
        let (mut send_bits, mut recv_bits) = (Vec::new(), Vec::new());
        let mut send = Vec::with_capacity(parties.len());
        let mut recv = Vec::with_capacity(parties.len());
        let mut node_at = HashMap::new();
        for (i, p) in parties.iter().enumerate() {
            send.push(class_of(
                &mut send_classes,
                &mut send_bits,
                index.src_bits(Sender::Party(*p)),
            ));
            recv.push(
                p.addrs()
                    .into_iter()
                    .map(|a| {
                        class_of(
                            &mut recv_classes,
                            &mut recv_bits,
                            index.dst_bits(Dest::Addr(a)),
                        )
                    })
                    .collect::<Vec<_>>(),
            );
            if let Party::Node(n) = p {
                node_at.insert(n.id.as_str(), i);
            }
        }
        let foreign = class_of(
            &mut send_classes,
            &mut send_bits,
            index.src_bits(Sender::Foreign),
        );
        let mut sides: HashMap<usize, Vec<usize>> =
            node_at.values().map(|&i| (i, vec![i])).collect();
        for (i, p) in parties.iter().enumerate() {
            if let Party::Client(c) = p
                && c.enabled
                && let Some(&n) = node_at.get(c.ingress_node_id.as_str())
                && matches!(parties[n], Party::Node(g) if g.ingress.is_some())
            {
                sides.get_mut(&n).expect("every node has a side").push(i);
            }
        }
        let mut senders = vec![Vec::new(); send_bits.len()];
        let mut receivers = vec![Vec::new(); recv_bits.len()];
        let mut gateways = Vec::new();
        let mut owners: Vec<_> = sides.iter().collect();
        owners.sort_unstable_by_key(|(n, _)| **n);
        for (&n, side) in owners {
            let mut s: Vec<u32> = side.iter().map(|&x| send[x]).collect();
            s.sort_unstable();
            s.dedup();
            for c in s {
                senders[c as usize].push(n);
            }
            let mut r: Vec<u32> = side.iter().flat_map(|&x| recv[x].iter().copied()).collect();
            r.sort_unstable();
            r.dedup();
            for c in r {
                receivers[c as usize].push(n);
            }
            if matches!(parties[n], Party::Node(g) if g.egress.is_some()) {
                gateways.push(n);
            }
        }
        Reach {
            index,
            pieces,
            send,
            recv,
            foreign,
            send_bits,
            recv_bits,
            may: Memo::default(),
            into_range: Memo::default(),
            node_at,
            sides,
            senders,
            receivers,
            gateways,
        }
    }

    /// The index it groups.
    pub fn index(&self) -> &PolicyIndex<'a> {
        &self.index
    }

    /// The pieces of the network's egress ranges.
    pub fn pieces(&self) -> &Pieces {
        &self.pieces
    }

    /// The enabled external clients of the ingress gateway `id` (none
    /// when it is no ingress gateway): its side after itself.
    pub fn clients_of(&self, id: &str) -> impl Iterator<Item = &'a ExtClient> + '_ {
        let parties = self.index.parties();
        self.node_at
            .get(id)
            .and_then(|i| self.sides.get(i))
            .into_iter()
            .flat_map(|side| side[1..].iter())
            .filter_map(move |&c| match parties[c] {
                Party::Client(c) => Some(c),
                Party::Node(_) => None,
            })
    }

    /// The node with this id.
    pub fn node(&self, id: &str) -> Option<&'a Node> {
        match self.index.parties()[*self.node_at.get(id)?] {
            Party::Node(n) => Some(n),
            Party::Client(_) => None,
        }
    }

    /// Whether a sender of class `s` may send anything to an address of
    /// class `r`.
    fn may(&self, s: u32, r: u32) -> bool {
        if let Some(v) = self.may.get(&(s, r)) {
            return v;
        }
        let key = self.send_bits[s as usize].and(&self.recv_bits[r as usize]);
        let v = !self.index.allowed_by(key).is_empty();
        self.may.insert((s, r), v);
        v
    }

    /// Whether a sender of class `s` may send something into some piece of
    /// `range`.
    fn class_reaches_range(&self, s: u32, range: IpNet) -> bool {
        if let Some(v) = self.into_range.get(&(s, range)) {
            return v;
        }
        let v = self.pieces.get(&range).is_some_and(|ps| {
            ps.iter().any(|p| {
                let key = self.send_bits[s as usize].and(&self.index.dst_bits(Dest::Range(*p)));
                !self.index.allowed_by(key).is_empty()
            })
        });
        self.into_range.insert((s, range), v);
        v
    }

    /// What the node `node_id` keeps of every other node (see
    /// [`peer_plan`]); None when it is not a node of the index.
    pub fn plan(&self, node_id: &str) -> Option<PeerPlan> {
        let me = *self.node_at.get(node_id)?;
        let mine = &self.sides[&me];
        let parties = self.index.parties();
        let mut plan = PeerPlan::new();
        if self.index.is_unrestricted() {
            for (&m, theirs) in &self.sides {
                if m == me {
                    continue;
                }
                let Party::Node(node) = parties[m] else {
                    continue;
                };
                let clients = theirs[1..].iter().map(|&c| parties[c].id().to_owned());
                plan.insert(node.id.clone(), keep_all(node, clients));
            }
            return Some(plan);
        }
        let mut candidates: HashSet<usize> = self.gateways.iter().copied().collect();
        let Party::Node(node) = parties[me] else {
            return None;
        };
        let (recv_classes, send_classes) = (self.recv_bits.len(), self.send_bits.len());
        for &x in mine {
            // x sends to them.
            for r in 0..recv_classes as u32 {
                if self.may(self.send[x], r) {
                    candidates.extend(&self.receivers[r as usize]);
                }
            }
            // They send to x.
            for &r in &self.recv[x] {
                for s in 0..send_classes as u32 {
                    if self.may(s, r) {
                        candidates.extend(&self.senders[s as usize]);
                    }
                }
            }
        }
        if let Some(e) = &node.egress {
            // They send into my ranges.
            for range in e.routed() {
                for s in 0..send_classes as u32 {
                    if self.class_reaches_range(s, *range) {
                        candidates.extend(&self.senders[s as usize]);
                    }
                }
            }
            // My ranges' hosts (no NAT) send to them.
            if !e.nat {
                for r in 0..recv_classes as u32 {
                    if self.may(self.foreign, r) {
                        candidates.extend(&self.receivers[r as usize]);
                    }
                }
            }
        }
        candidates.remove(&me);
        for m in candidates {
            if let Some(k) = keep_of(self, mine, &self.sides[&m]) {
                plan.insert(parties[m].id().to_owned(), k);
            }
        }
        Some(plan)
    }
}

impl<'a> Decide<'a> for Reach<'a> {
    fn party(&self, i: usize) -> Party<'a> {
        self.index.parties()[i]
    }
    fn exchange(&self, x: usize, y: usize) -> bool {
        self.recv[y].iter().any(|&r| self.may(self.send[x], r))
            || self.recv[x].iter().any(|&r| self.may(self.send[y], r))
    }
    fn foreign_reaches(&self, y: usize) -> bool {
        self.recv[y].iter().any(|&r| self.may(self.foreign, r))
    }
    fn reaches_range(&self, x: usize, range: IpNet) -> bool {
        self.class_reaches_range(self.send[x], range)
    }
}
