//! Under a restricting policy, which nodes a change of one party (a node or
//! an external client) can reach, found without resolving the policy over
//! the whole network.
//!
//! Pruning ([`crate::domain::policy::prune`]) keeps a peer when anything on
//! one node's side may exchange anything with the other's, or send into
//! the other's egress ranges. Parties the policy cannot tell apart are in
//! one class ([`Classes`]: the rules their packets can match as senders,
//! and those that can match packets sent to each of their addresses), and
//! [`Membership`] counts, per class, the nodes whose side holds a party of
//! it, kept current as parties come, go and change. A party's change can
//! then only reach:
//! - the node whose side it is in (itself, or a client's ingress gateway),
//!   before and after;
//! - the nodes whose side holds a party of a class that may exchange
//!   anything with its classes, either way, before or after (and, for a
//!   node, with its clients: its peer entry carries their addresses);
//! - every egress gateway (what it keeps may hang on what may reach its
//!   ranges), and, when the node is one, the senders into its ranges;
//! - when it is selected by name or tag among a rule's sources or
//!   destinations, the nodes whose firewall lists its addresses: those
//!   whose addresses the rule's destinations match, and every gateway
//!   (every node when the rule's destinations hold `*`).
//!
//! The set may be larger than the nodes whose config changes (they get
//! an empty delta), never smaller: the sync property tests compare every
//! node's config after each change with a fresh computation.

use std::collections::{BTreeSet, HashMap};

use ipnet::IpNet;

use super::super::policy::{
    Policy, Selector,
    eval::{Bits, Dest, Party, PolicyIndex, Sender},
    range_pieces,
};

/// A party's classes: its sender class and the receiver class of each of
/// its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Classes {
    send: Bits,
    recv: Vec<Bits>,
}

impl Classes {
    pub(super) fn of(index: &PolicyIndex<'_>, p: Party<'_>) -> Self {
        let mut recv: Vec<Bits> = p
            .addrs()
            .into_iter()
            .map(|a| index.recv_bits_of(p, a))
            .collect();
        recv.dedup();
        Classes {
            send: index.send_bits_of(p),
            recv,
        }
    }
}

/// Per class, the nodes whose side holds a party of it, with how many.
#[derive(Debug, Clone, Default)]
pub(super) struct Membership {
    send: HashMap<Bits, HashMap<String, u32>>,
    recv: HashMap<Bits, HashMap<String, u32>>,
}

fn bump(m: &mut HashMap<Bits, HashMap<String, u32>>, class: &Bits, owner: &str, add: bool) {
    if add {
        *m.entry(class.clone())
            .or_default()
            .entry(owner.to_owned())
            .or_insert(0) += 1;
        return;
    }
    if let Some(owners) = m.get_mut(class) {
        if let Some(n) = owners.get_mut(owner) {
            *n -= 1;
            if *n == 0 {
                owners.remove(owner);
            }
        }
        if owners.is_empty() {
            m.remove(class);
        }
    }
}

/// Whether a sender of class `s` may send anything to an address of class
/// `r`.
fn may(index: &PolicyIndex<'_>, s: &Bits, r: &Bits) -> bool {
    !index.allowed_by(s.and(r)).is_empty()
}

impl Membership {
    /// Counts a party of classes `c` into (`add`) or out of `owner`'s side.
    pub(super) fn count(&mut self, c: &Classes, owner: &str, add: bool) {
        bump(&mut self.send, &c.send, owner, add);
        for r in &c.recv {
            bump(&mut self.recv, r, owner, add);
        }
    }

    /// Adds the nodes whose side holds a party that may exchange anything
    /// with a party of classes `c`, either way.
    pub(super) fn exchanging(
        &self,
        index: &PolicyIndex<'_>,
        c: &Classes,
        out: &mut BTreeSet<String>,
    ) {
        for (r, owners) in &self.recv {
            if may(index, &c.send, r) {
                out.extend(owners.keys().cloned());
            }
        }
        for (s, owners) in &self.send {
            if c.recv.iter().any(|r| may(index, s, r)) {
                out.extend(owners.keys().cloned());
            }
        }
    }

    /// Adds the nodes whose side holds an address rule `rule`'s
    /// destinations match.
    fn matched_by(&self, rule: usize, out: &mut BTreeSet<String>) {
        for (r, owners) in &self.recv {
            if r.get(rule) {
                out.extend(owners.keys().cloned());
            }
        }
    }

    /// Adds the nodes whose side may send something into one of `pieces`
    /// (of a gateway's ranges), and, for a gateway without NAT, those
    /// whose side its ranges' hosts may send something to.
    fn reaching_ranges(
        &self,
        index: &PolicyIndex<'_>,
        pieces: &[IpNet],
        no_nat: bool,
        out: &mut BTreeSet<String>,
    ) {
        let into: Vec<Bits> = pieces
            .iter()
            .map(|p| index.dst_bits(Dest::Range(*p)))
            .collect();
        for (s, owners) in &self.send {
            if into.iter().any(|d| may(index, s, d)) {
                out.extend(owners.keys().cloned());
            }
        }
        if no_nat {
            let foreign = index.src_bits(Sender::Foreign);
            for (r, owners) in &self.recv {
                if may(index, &foreign, r) {
                    out.extend(owners.keys().cloned());
                }
            }
        }
    }
}

/// What the network looks like to [`reached_by`]: its policy (resolved
/// against no party: classes are computed per party), its nodes by id, its
/// gateways.
pub(super) struct Scope<'a> {
    pub index: &'a PolicyIndex<'a>,
    pub policy: &'a Policy,
    pub network: &'a super::super::network::Network,
    pub nodes: &'a std::collections::BTreeMap<String, super::super::node::Node>,
    pub gateways: &'a BTreeSet<String>,
    pub ingresses: &'a BTreeSet<String>,
}

/// Adds to `out` the nodes a change of party `p`, in the side of `owner`
/// (None: in no side, a disabled client), can reach (see the module
/// documentation); `side` is the rest of the side when `p` is the node
/// (its clients), and `selection` says whether what rules select it by
/// (its existence, name, tags, addresses) changes. True when that is
/// every node.
pub(super) fn reached_by<'p>(
    s: &Scope<'_>,
    m: &Membership,
    p: Party<'p>,
    owner: Option<&str>,
    side: impl IntoIterator<Item = Party<'p>>,
    selection: bool,
    out: &mut BTreeSet<String>,
) -> bool {
    if let Some(owner) = owner {
        out.insert(owner.to_owned());
        m.exchanging(s.index, &Classes::of(s.index, p), out);
        for q in side {
            m.exchanging(s.index, &Classes::of(s.index, q), out);
        }
        out.extend(s.gateways.iter().cloned());
    }
    if let Some(e) = owner
        .and_then(|o| s.nodes.get(o))
        .and_then(|n| n.egress.as_ref())
    {
        let gateways: Vec<super::super::node::Node> = s
            .gateways
            .iter()
            .filter_map(|g| s.nodes.get(g).cloned())
            .collect();
        let pieces: Vec<IpNet> = e
            .routed()
            .flat_map(|r| range_pieces(s.policy, s.network, &gateways, *r))
            .collect();
        m.reaching_ranges(s.index, &pieces, !e.nat, out);
    }
    if !selection {
        return false;
    }
    // Firewalls listing its addresses, in a side or not (a selector list
    // holding `*` is rendered as any address, so it lists none).
    let named =
        |sels: &[Selector]| !sels.contains(&Selector::Any) && sels.iter().any(|x| p.selected_by(x));
    for (i, rule) in s.policy.rules.iter().enumerate() {
        let (src, dst) = (named(&rule.sources), named(&rule.destinations));
        if src {
            if rule.destinations.contains(&Selector::Any) {
                return true;
            }
            m.matched_by(i, out);
        }
        if src || dst {
            out.extend(s.gateways.iter().cloned());
            out.extend(s.ingresses.iter().cloned());
        }
    }
    false
}
