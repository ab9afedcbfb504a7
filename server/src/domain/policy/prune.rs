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

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::super::ext_client::ExtClient;
use super::super::network::Network;
use super::super::node::Node;
use super::eval::{Dest, Party, PolicyIndex, Sender};
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

fn addrs(p: &Party<'_>) -> Vec<IpAddr> {
    let (a, b) = p.addresses();
    a.map(IpAddr::V4)
        .into_iter()
        .chain(b.map(IpAddr::V6))
        .collect()
}

/// Whether `x` and `y` may exchange anything, either way.
fn exchange(index: &PolicyIndex<'_>, x: &Party<'_>, y: &Party<'_>) -> bool {
    addrs(y)
        .into_iter()
        .any(|a| index.may_send(Sender::Party(*x), Dest::Addr(a)))
        || addrs(x)
            .into_iter()
            .any(|a| index.may_send(Sender::Party(*y), Dest::Addr(a)))
}

/// Whether hosts behind a gateway without NAT may send something to `y`.
fn foreign_reaches(index: &PolicyIndex<'_>, y: &Party<'_>) -> bool {
    addrs(y)
        .into_iter()
        .any(|a| index.may_send(Sender::Foreign, Dest::Addr(a)))
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

/// Whether `x` may send something into some piece of `range`.
fn reaches_range(index: &PolicyIndex<'_>, pieces: &Pieces, x: &Party<'_>, range: IpNet) -> bool {
    pieces.get(&range).is_some_and(|ps| {
        ps.iter()
            .any(|p| index.may_send(Sender::Party(*x), Dest::Range(*p)))
    })
}

/// What `node` keeps of every other node under `index`'s policy (see the
/// module documentation). `nodes` and `clients` are the network's;
/// `pieces` is [`all_pieces`] of them (computed once for all nodes).
pub fn peer_plan(
    index: &PolicyIndex<'_>,
    pieces: &Pieces,
    nodes: &[Node],
    clients: &[ExtClient],
    node: &Node,
) -> PeerPlan {
    let mut plan = PeerPlan::new();
    let mine = side(node, clients);
    let my_no_nat = node.egress.as_ref().is_some_and(|e| !e.nat);
    for m in nodes.iter().filter(|m| m.id != node.id) {
        if index.is_unrestricted() {
            plan.insert(
                m.id.clone(),
                PeerKeep {
                    ranges: m
                        .egress
                        .iter()
                        .flat_map(|e| e.ranges.iter().copied())
                        .collect(),
                    clients: side(m, clients)
                        .iter()
                        .skip(1)
                        .map(|c| c.id().to_owned())
                        .collect(),
                },
            );
            continue;
        }
        let theirs = side(m, clients);
        let their_no_nat = m.egress.as_ref().is_some_and(|e| !e.nat);
        let mut keep = PeerKeep::default();
        let mut needed = false;
        // Party to party, either way.
        for (j, y) in theirs.iter().enumerate() {
            let with_y = mine.iter().any(|x| exchange(index, x, y))
                // y sends into my ranges, or my ranges' hosts (no NAT) to y.
                || node.egress.as_ref().is_some_and(|e| {
                    e.ranges
                        .iter()
                        .any(|r| reaches_range(index, pieces, y, *r))
                })
                || (my_no_nat && foreign_reaches(index, y));
            if with_y {
                needed = true;
                if j > 0 {
                    keep.clients.insert(y.id().to_owned());
                }
            }
        }
        // My side into their ranges, or their ranges' hosts (no NAT) to my
        // side.
        if let Some(e) = &m.egress {
            for r in &e.ranges {
                let used = mine.iter().any(|x| reaches_range(index, pieces, x, *r))
                    || (their_no_nat && mine.iter().any(|x| foreign_reaches(index, x)));
                if used {
                    keep.ranges.insert(*r);
                }
            }
        }
        if needed || !keep.ranges.is_empty() {
            plan.insert(m.id.clone(), keep);
        }
    }
    plan
}
