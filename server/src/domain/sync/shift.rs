//! A change of a restricting policy into another, narrowed: which nodes it
//! can reach, and for each what of its config may change, found from
//! classes of parties rather than by computing every config twice.
//!
//! Pruning ([`crate::domain::policy::prune`]) asks three questions, each
//! only "may anything pass": may a party of sender class `s` send to an
//! address of receiver class `r`; may it send into a piece of a gateway's
//! range; may hosts behind a gateway without NAT send to an address of
//! class `r`. A node's firewall (its INPUT chain) renders the rules whose
//! destinations match its addresses. So parties are keyed by their
//! classes under both policies (the pair of sender classes, and per
//! address the pair of receiver classes), each question is asked once per
//! key, and a change reaches:
//! - the nodes whose side holds a party of a sender key and of a receiver
//!   key whose answer changed (both ends: keeping a peer is mutual), and
//!   each of them sees the other end's nodes and names change;
//! - the nodes whose side holds a sender key whose answer into a range
//!   changed, or a receiver key whose answer from hosts behind gateways
//!   without NAT changed (when one exists): they see the gateways and
//!   their routes change;
//! - the nodes whose own addresses' rules, as their firewall renders
//!   them, differ: they see their firewall change;
//! - every egress and ingress gateway (their filtering of what they
//!   forward follows the whole policy), as a snapshot.
//!
//! The set may be larger than the nodes whose config changes (they get an
//! empty delta), never smaller: the sync property tests change policies
//! among others and compare every node's config after each change with a
//! fresh computation.

use std::collections::{BTreeSet, HashMap};

use ipnet::IpNet;

use super::super::ext_client::ExtClient;
use super::super::network::Network;
use super::super::node::Node;
use super::super::policy::{
    Policy, Rule, Selector,
    eval::{Bits, Dest, Party, PolicyIndex, Sender},
    range_pieces,
};

/// Sender and receiver keys of one node's side.
#[derive(Debug, Clone, Default)]
pub(super) struct Seen {
    send: Vec<u32>,
    recv: Vec<u32>,
    /// Its firewall may differ.
    pub firewall: bool,
    /// What it may send into gateways' ranges, or receive from behind
    /// gateways without NAT, may differ: its entries of the gateways and
    /// its routes.
    pub ranges: bool,
}

/// The parties of one key.
#[derive(Debug, Clone, Default)]
struct Key {
    /// Nodes whose side holds one.
    owners: Vec<String>,
    /// Their names and their owners' (fully qualified).
    names: Vec<String>,
    /// Keys of the other kind whose answer with this one changed.
    partners: Vec<u32>,
}

/// A policy change, narrowed (see the module documentation).
#[derive(Debug, Clone, Default)]
pub(super) struct Shift {
    /// The plain nodes it reaches (gateways get snapshots), with what of
    /// their config may change.
    seen: HashMap<String, Seen>,
    send: Vec<Key>,
    recv: Vec<Key>,
    /// The egress gateways, and their names.
    gateways: Vec<String>,
    gateway_names: Vec<String>,
}

/// The network as a shift sees it.
pub(super) struct Sides<'a> {
    pub network: &'a Network,
    /// Every node, with the enabled clients of its side.
    pub sides: Vec<(&'a Node, Vec<&'a ExtClient>)>,
}

/// What [`Shift::of`] found: the shift, the nodes it reaches, and those of
/// them that need a snapshot (the gateways).
pub(super) struct Reached {
    pub shift: Shift,
    pub nodes: BTreeSet<String>,
    pub snapshots: Vec<String>,
}

fn may(index: &PolicyIndex<'_>, s: &Bits, r: &Bits) -> bool {
    !index.allowed_by(s.and(r)).is_empty()
}

/// What of a rule an INPUT chain renders, besides which of the node's
/// addresses it matches: a rule that differs in none of it renders the
/// same lines (sources name the same parties in one network).
fn rendered(r: &Rule) -> impl PartialEq + '_ {
    (
        &r.sources,
        r.destinations.contains(&Selector::Any),
        &r.protocols,
        &r.ports,
        r.action,
    )
}

/// The rules an INPUT chain of family `v6` renders under `p`, with which
/// of the node's addresses each matches (`second`: by the second bits of
/// `addrs`).
fn input_lines<'p>(
    p: &'p Policy,
    addrs: &[(bool, Bits, Bits)],
    v6: bool,
    second: bool,
) -> Vec<(impl PartialEq + 'p, Vec<bool>)> {
    p.rules
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let hits: Vec<bool> = addrs
                .iter()
                .filter(|a| a.0 == v6)
                .map(|a| if second { a.2.get(i) } else { a.1.get(i) })
                .collect();
            // `*` is rendered in every family, addresses or not.
            (r.destinations.contains(&Selector::Any) || hits.contains(&true))
                .then(|| (rendered(r), hits))
        })
        .collect()
}

/// Whether a node's INPUT chain may differ between `p0` and `p1`, from its
/// addresses' receiver classes under each (`(v6, bits0, bits1)`).
fn input_changes(p0: &Policy, p1: &Policy, addrs: &[(bool, Bits, Bits)]) -> bool {
    p0.default_action != p1.default_action
        || [false, true]
            .into_iter()
            .any(|v6| input_lines(p0, addrs, v6, false) != input_lines(p1, addrs, v6, true))
}

/// Numbers keys as they come.
#[derive(Default)]
struct Keys {
    at: HashMap<(Bits, Bits), u32>,
    all: Vec<(Bits, Bits)>,
    info: Vec<Key>,
}

impl Keys {
    fn of(&mut self, k: (Bits, Bits)) -> u32 {
        if let Some(i) = self.at.get(&k) {
            return *i;
        }
        let i = self.all.len() as u32;
        self.at.insert(k.clone(), i);
        self.all.push(k);
        self.info.push(Key::default());
        i
    }

    fn note(&mut self, k: u32, owner: &str, names: [&str; 2], zone: &str) {
        let info = &mut self.info[k as usize];
        if info.owners.last().is_none_or(|o| o != owner) {
            info.owners.push(owner.to_owned());
        }
        for (i, n) in names.into_iter().enumerate() {
            if i == 0 || n != names[0] {
                info.names.push(format!("{n}.{zone}"));
            }
        }
    }
}

impl Shift {
    /// The change from `p0` to `p1` (both restricting) over `net`.
    pub(super) fn of(net: &Sides<'_>, p0: &Policy, p1: &Policy) -> Reached {
        let (i0, i1) = (PolicyIndex::new(p0, [], []), PolicyIndex::new(p1, [], []));
        let zone = net.network.name.as_str();
        let (mut send, mut recv) = (Keys::default(), Keys::default());
        let mut seen: Vec<(&Node, Seen)> = Vec::new();
        let gateways: Vec<&Node> = net
            .sides
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| n.egress.is_some())
            .collect();
        let mut reached = BTreeSet::new();
        let mut snapshots = Vec::new();
        // Whether the firewall changes, per node's addresses' classes.
        let mut firewalls: HashMap<Vec<(bool, Bits, Bits)>, bool> = HashMap::new();
        for (node, clients) in &net.sides {
            let mut s = Seen::default();
            let parties =
                std::iter::once(Party::Node(node)).chain(clients.iter().map(|c| Party::Client(c)));
            for p in parties {
                let names = [p.name(), node.name.as_str()];
                let k = send.of((i0.send_bits_of(p), i1.send_bits_of(p)));
                send.note(k, &node.id, names, zone);
                s.send.push(k);
                for a in p.addrs() {
                    let k = recv.of((i0.recv_bits_of(p, a), i1.recv_bits_of(p, a)));
                    recv.note(k, &node.id, names, zone);
                    s.recv.push(k);
                }
            }
            s.send.sort_unstable();
            s.send.dedup();
            s.recv.sort_unstable();
            s.recv.dedup();
            if node.egress.is_some() || node.ingress.is_some() {
                reached.insert(node.id.clone());
                snapshots.push(node.id.clone());
                continue;
            }
            let addrs: Vec<(bool, Bits, Bits)> = Party::Node(node)
                .addrs()
                .into_iter()
                .map(|a| {
                    let p = Party::Node(node);
                    (a.is_ipv6(), i0.recv_bits_of(p, a), i1.recv_bits_of(p, a))
                })
                .collect();
            s.firewall = *firewalls
                .entry(addrs)
                .or_insert_with_key(|addrs| input_changes(p0, p1, addrs));
            seen.push((node, s));
        }
        // Party to party.
        for (si, (s0, s1)) in send.all.iter().enumerate() {
            for (ri, (r0, r1)) in recv.all.iter().enumerate() {
                if may(&i0, s0, r0) != may(&i1, s1, r1) {
                    send.info[si].partners.push(ri as u32);
                    recv.info[ri].partners.push(si as u32);
                }
            }
        }
        // Only keys with partners are read later: let the others go (a
        // shift stays in the log while the network changes on).
        for k in send.info.iter_mut().chain(recv.info.iter_mut()) {
            if k.partners.is_empty() {
                *k = Key::default();
            } else {
                k.names.sort_unstable();
                k.names.dedup();
            }
        }
        // Into gateways' ranges, and from behind those without NAT.
        let pieces = |p: &Policy| -> Vec<Vec<IpNet>> {
            let all: Vec<Node> = gateways.iter().map(|g| (*g).clone()).collect();
            gateways
                .iter()
                .flat_map(|g| g.egress.iter().flat_map(|e| e.routed()))
                .map(|r| range_pieces(p, net.network, &all, *r))
                .collect()
        };
        let (pieces0, pieces1) = (pieces(p0), pieces(p1));
        let into = |i: &PolicyIndex<'_>, s: &Bits, pieces: &[IpNet]| {
            pieces
                .iter()
                .any(|p| may(i, s, &i.dst_bits(Dest::Range(*p))))
        };
        let send_ranges: Vec<bool> = send
            .all
            .iter()
            .map(|(s0, s1)| {
                pieces0
                    .iter()
                    .zip(&pieces1)
                    .any(|(a, b)| into(&i0, s0, a) != into(&i1, s1, b))
            })
            .collect();
        let no_nat = gateways
            .iter()
            .any(|g| g.egress.as_ref().is_some_and(|e| !e.nat));
        let (f0, f1) = (i0.src_bits(Sender::Foreign), i1.src_bits(Sender::Foreign));
        let recv_foreign: Vec<bool> = recv
            .all
            .iter()
            .map(|(r0, r1)| no_nat && may(&i0, &f0, r0) != may(&i1, &f1, r1))
            .collect();
        let mut kept = HashMap::new();
        for (node, mut s) in seen {
            s.ranges = s.send.iter().any(|&k| send_ranges[k as usize])
                || s.recv.iter().any(|&k| recv_foreign[k as usize]);
            let pairs = s
                .send
                .iter()
                .any(|&k| !send.info[k as usize].partners.is_empty())
                || s.recv
                    .iter()
                    .any(|&k| !recv.info[k as usize].partners.is_empty());
            if pairs || s.ranges || s.firewall {
                reached.insert(node.id.clone());
                kept.insert(node.id.clone(), s);
            }
        }
        Reached {
            shift: Shift {
                seen: kept,
                send: send.info,
                recv: recv.info,
                gateways: gateways.iter().map(|g| g.id.clone()).collect(),
                gateway_names: gateways
                    .iter()
                    .map(|g| format!("{}.{zone}", g.name))
                    .collect(),
            },
            nodes: reached,
            snapshots,
        }
    }

    /// What of `node`'s config may change (None: nothing, or it gets a
    /// snapshot).
    pub(super) fn seen(&self, node: &str) -> Option<&Seen> {
        self.seen.get(node)
    }

    /// The nodes whose entries in the config of a node that saw `s` may
    /// change, and the names in its zone that may.
    pub(super) fn partners<'s>(
        &'s self,
        s: &'s Seen,
    ) -> (
        impl Iterator<Item = &'s String> + 's,
        impl Iterator<Item = &'s String> + 's,
    ) {
        let keys = || {
            s.send
                .iter()
                .flat_map(|&k| &self.send[k as usize].partners)
                .map(|&r| &self.recv[r as usize])
                .chain(
                    s.recv
                        .iter()
                        .flat_map(|&k| &self.recv[k as usize].partners)
                        .map(|&x| &self.send[x as usize]),
                )
        };
        let gateways = if s.ranges { &self.gateways[..] } else { &[] };
        let names = if s.ranges {
            &self.gateway_names[..]
        } else {
            &[]
        };
        (
            keys().flat_map(|k| &k.owners).chain(gateways),
            keys().flat_map(|k| &k.names).chain(names),
        )
    }
}
