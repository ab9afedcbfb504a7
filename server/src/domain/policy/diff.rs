//! The preview of a policy change (`UpdatePolicy` with `validate_only`):
//! which source → destination flows become allowed or denied, and for
//! which traffic.
//!
//! Flows are from every node and external client to every other node and
//! client (by overlay address), and to every egress range of every gateway
//! but the sender itself. A range is reported in the pieces the two
//! policies' CIDR rules cut it into (see [`super::range_pieces`]), pieces
//! that change alike merged back into prefixes as large as possible.

use std::{collections::HashMap, net::IpAddr};

use ipnet::IpNet;

use super::super::config::NetworkView;
use super::eval::{Bits, Dest, Party, PolicyIndex, Sender};
use super::{Policy, TrafficSet, range_pieces};

/// One flow whose fate changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowChange {
    /// The sender: "node:NAME" or "client:NAME".
    pub source: String,
    /// Its id.
    pub source_id: String,
    /// The receiver: "node:NAME", "client:NAME", or (part of) an egress
    /// range in CIDR form.
    pub destination: String,
    /// The receiver's id; for a range, its egress gateway's.
    pub destination_id: String,
    /// When only one address of a party receiver changes this way.
    pub destination_address: Option<IpAddr>,
    /// Traffic newly allowed.
    pub allowed: TrafficSet,
    /// Traffic newly denied.
    pub denied: TrafficSet,
}

/// What changes from `old` to `new` for traffic from `x` to `to`: (newly
/// allowed, newly denied).
#[cfg(test)]
fn change(
    old: &PolicyIndex<'_>,
    new: &PolicyIndex<'_>,
    x: Party<'_>,
    to: Dest,
) -> (TrafficSet, TrafficSet) {
    let a = old.allowed(Sender::Party(x), to);
    let b = new.allowed(Sender::Party(x), to);
    (b.minus(&a), a.minus(&b))
}

/// Every flow of `view`'s network whose allowed traffic differs between
/// `old` and `new` (the view's own policy is not used), ordered by source
/// label, then destination label and address. Empty exactly when the two
/// policies decide every packet between the network's parties, and from
/// them into its egress ranges, alike.
pub fn flow_changes(view: &NetworkView, old: &Policy, new: &Policy) -> Vec<FlowChange> {
    flow_changes_within(view, old, new, usize::MAX).0
}

/// (newly allowed, newly denied)
type Change = (TrafficSet, TrafficSet);

/// What changes for a sender of class `s` (old bits, new bits) sending to
/// `r` (likewise).
fn class_change(
    old: &PolicyIndex<'_>,
    new: &PolicyIndex<'_>,
    s: &(Bits, Bits),
    r: &(Bits, Bits),
) -> Change {
    let a = old.allowed_by(s.0.and(&r.0));
    let b = new.allowed_by(s.1.and(&r.1));
    (b.minus(&a), a.minus(&b))
}

/// Numbers what it is given, in order of first sight.
struct Numbered<K> {
    at: HashMap<K, usize>,
    all: Vec<K>,
}

impl<K: std::hash::Hash + Eq + Clone> Numbered<K> {
    fn new() -> Self {
        Numbered {
            at: HashMap::new(),
            all: Vec::new(),
        }
    }
    fn of(&mut self, k: K) -> usize {
        if let Some(i) = self.at.get(&k) {
            return *i;
        }
        self.all.push(k.clone());
        self.at.insert(k, self.all.len() - 1);
        self.all.len() - 1
    }
}

/// Every egress range of the network with its gateway's id, cut into
/// pieces fine enough for both policies (by the union of their CIDRs).
fn egress_pieces<'v>(
    view: &'v NetworkView,
    old: &Policy,
    new: &Policy,
) -> Vec<(&'v str, Vec<IpNet>)> {
    let mut both = new.clone();
    both.rules.extend(old.rules.iter().cloned());
    view.nodes
        .iter()
        .filter_map(|g| g.egress.as_ref().map(|e| (g, e)))
        .flat_map(|(g, e)| {
            let both = &both;
            e.routed().map(move |r| {
                (
                    g.id.as_str(),
                    range_pieces(both, &view.network, &view.nodes, *r),
                )
            })
        })
        .collect()
}

/// The pieces whose fate changes (`change` of each), those that change
/// alike merged into prefixes as large as possible.
fn merged_changes(
    pieces: &[IpNet],
    mut change: impl FnMut(IpNet) -> Change,
) -> Vec<(IpNet, Change)> {
    let mut groups: Vec<(Change, Vec<IpNet>)> = Vec::new();
    for p in pieces {
        let c = change(*p);
        if c.0.is_empty() && c.1.is_empty() {
            continue;
        }
        match groups.iter_mut().find(|(k, _)| *k == c) {
            Some((_, v)) => v.push(*p),
            None => groups.push((c, vec![*p])),
        }
    }
    groups
        .into_iter()
        .flat_map(|(c, nets)| {
            IpNet::aggregate(&nets)
                .into_iter()
                .map(move |n| (n, c.clone()))
        })
        .collect()
}

/// [`flow_changes`], the first `limit` of them (in its order), and how many
/// there are in all. Parties the two policies cannot tell apart are
/// grouped (senders by the rules that can match them under each policy;
/// receivers by those that can match each of their addresses), each pair
/// of groups is decided once, and flows are listed only up to `limit`: the
/// time grows with the parties, their groups and the flows listed, not
/// with the pairs of parties (a preview of 100,000 nodes lists its first
/// thousand flows and counts the rest).
pub fn flow_changes_within(
    view: &NetworkView,
    old: &Policy,
    new: &Policy,
    limit: usize,
) -> (Vec<FlowChange>, usize) {
    let oi = PolicyIndex::new(old, &view.nodes, &view.ext_clients);
    let ni = PolicyIndex::new(new, &view.nodes, &view.ext_clients);
    if old == new || (oi.is_unrestricted() && ni.is_unrestricted()) {
        return (Vec::new(), 0);
    }
    let parties = oi.parties();
    // Sender classes, and receivers by the classes of their addresses.
    let (mut senders, mut addrs, mut receivers) = (
        Numbered::new(),
        Numbered::new(),
        Numbered::<Vec<usize>>::new(),
    );
    let mut send_of = Vec::with_capacity(parties.len());
    let mut recv_of = Vec::with_capacity(parties.len());
    let mut members: Vec<Vec<usize>> = Vec::new();
    for (i, p) in parties.iter().enumerate() {
        let x = Sender::Party(*p);
        send_of.push(senders.of((oi.src_bits(x), ni.src_bits(x))));
        let key: Vec<usize> = p
            .addrs()
            .into_iter()
            .map(|a| addrs.of((oi.dst_bits(Dest::Addr(a)), ni.dst_bits(Dest::Addr(a)))))
            .collect();
        let y = receivers.of(key);
        if y == members.len() {
            members.push(Vec::new());
        }
        members[y].push(i);
        recv_of.push(y);
    }
    // Per pair of classes, the flows' entries: one for the party when
    // every address changes alike (None), else one per address that
    // changes (its position among the party's addresses).
    let mut memo: HashMap<(usize, usize), Change> = HashMap::new();
    let mut change = |s: usize, r: usize| {
        memo.entry((s, r))
            .or_insert_with(|| class_change(&oi, &ni, &senders.all[s], &addrs.all[r]))
            .clone()
    };
    type Entries = Vec<(Option<usize>, Change)>;
    let entries: Vec<Vec<Entries>> = (0..senders.all.len())
        .map(|s| {
            receivers
                .all
                .iter()
                .map(|key| {
                    let per: Vec<Change> = key.iter().map(|&r| change(s, r)).collect();
                    let same = per.windows(2).all(|w| w[0] == w[1]);
                    let mut out = Vec::new();
                    for (i, c) in per.into_iter().enumerate() {
                        if c.0.is_empty() && c.1.is_empty() {
                            continue;
                        }
                        out.push(((!same).then_some(i), c));
                        if same {
                            break;
                        }
                    }
                    out
                })
                .collect()
        })
        .collect();
    // Into the ranges: per sender class, each range's changed pieces,
    // merged where they change alike.
    let ranges = egress_pieces(view, old, new);
    let into_ranges: Vec<Vec<(&str, IpNet, Change)>> = senders
        .all
        .iter()
        .map(|s| {
            ranges
                .iter()
                .flat_map(|(gateway, pieces)| {
                    merged_changes(pieces, |p| {
                        let to = (oi.dst_bits(Dest::Range(p)), ni.dst_bits(Dest::Range(p)));
                        class_change(&oi, &ni, s, &to)
                    })
                    .into_iter()
                    .map(move |(n, c)| (*gateway, n, c))
                })
                .collect()
        })
        .collect();
    // How many flows a sender of each class has (itself counted, when it
    // is a receiver or a gateway of its class's flows: taken off below).
    let counts: Vec<usize> = (0..senders.all.len())
        .map(|s| {
            entries[s]
                .iter()
                .zip(&members)
                .map(|(e, m)| e.len() * m.len())
                .sum::<usize>()
                + into_ranges[s].len()
        })
        .collect();
    let labels: Vec<String> = parties.iter().map(Party::label).collect();
    let mut order: Vec<usize> = (0..parties.len()).collect();
    order.sort_by(|&a, &b| (&labels[a], parties[a].id()).cmp(&(&labels[b], parties[b].id())));
    let (mut out, mut total) = (Vec::new(), 0usize);
    for x in order {
        let (s, id) = (send_of[x], parties[x].id());
        let own =
            entries[s][recv_of[x]].len() + into_ranges[s].iter().filter(|(g, ..)| *g == id).count();
        total += counts[s] - own;
        if out.len() >= limit {
            continue;
        }
        let mut mine = Vec::new();
        for (key, e) in entries[s].iter().enumerate() {
            if e.is_empty() {
                continue;
            }
            for &y in members[key].iter().filter(|&&y| y != x) {
                let to = parties[y];
                let at = to.addrs();
                for (i, (allowed, denied)) in e {
                    mine.push(FlowChange {
                        source: labels[x].clone(),
                        source_id: id.to_owned(),
                        destination: labels[y].clone(),
                        destination_id: to.id().to_owned(),
                        destination_address: i.map(|i| at[i]),
                        allowed: allowed.clone(),
                        denied: denied.clone(),
                    });
                }
            }
        }
        for (gateway, net, (allowed, denied)) in into_ranges[s].iter().filter(|(g, ..)| *g != id) {
            mine.push(FlowChange {
                source: labels[x].clone(),
                source_id: id.to_owned(),
                destination: net.to_string(),
                destination_id: (*gateway).to_owned(),
                destination_address: None,
                allowed: allowed.clone(),
                denied: denied.clone(),
            });
        }
        mine.sort_by(|a, b| {
            (&a.destination, a.destination_address).cmp(&(&b.destination, b.destination_address))
        });
        out.extend(mine);
    }
    out.truncate(limit);
    (out, total)
}

/// [`flow_changes`] asking about every pair of parties: the definition,
/// for tests. Every flow of `view`'s network whose allowed traffic differs between
/// `old` and `new` (the view's own policy is not used), ordered by source
/// label, then destination label and address. Empty exactly when the two
/// policies decide every packet between the network's parties, and from
/// them into its egress ranges, alike.
#[cfg(test)]
pub(crate) fn flow_changes_pairwise(
    view: &NetworkView,
    old: &Policy,
    new: &Policy,
) -> Vec<FlowChange> {
    let oi = PolicyIndex::new(old, &view.nodes, &view.ext_clients);
    let ni = PolicyIndex::new(new, &view.nodes, &view.ext_clients);
    if old == new || (oi.is_unrestricted() && ni.is_unrestricted()) {
        return Vec::new();
    }
    let ranges = egress_pieces(view, old, new);
    let mut out = Vec::new();
    for x in oi.parties() {
        for y in oi.parties() {
            if y.id() == x.id() {
                continue;
            }
            let per: Vec<(IpAddr, (TrafficSet, TrafficSet))> = y
                .addrs()
                .into_iter()
                .map(|a| (a, change(&oi, &ni, *x, Dest::Addr(a))))
                .collect();
            let same = per.windows(2).all(|w| w[0].1 == w[1].1);
            for (a, (allowed, denied)) in &per {
                if allowed.is_empty() && denied.is_empty() {
                    continue;
                }
                out.push(FlowChange {
                    source: x.label(),
                    source_id: x.id().to_owned(),
                    destination: y.label(),
                    destination_id: y.id().to_owned(),
                    destination_address: (!same).then_some(*a),
                    allowed: allowed.clone(),
                    denied: denied.clone(),
                });
                if same {
                    break;
                }
            }
        }
        for (gateway, pieces) in &ranges {
            if x.id() == *gateway {
                continue;
            }
            for (n, (allowed, denied)) in
                merged_changes(pieces, |p| change(&oi, &ni, *x, Dest::Range(p)))
            {
                out.push(FlowChange {
                    source: x.label(),
                    source_id: x.id().to_owned(),
                    destination: n.to_string(),
                    destination_id: (*gateway).to_owned(),
                    destination_address: None,
                    allowed,
                    denied,
                });
            }
        }
    }
    out.sort_by(|a, b| {
        (
            &a.source,
            &a.source_id,
            &a.destination,
            a.destination_address,
        )
            .cmp(&(
                &b.source,
                &b.source_id,
                &b.destination,
                b.destination_address,
            ))
    });
    out
}
