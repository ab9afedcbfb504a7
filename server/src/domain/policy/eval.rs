//! A policy resolved against a network's nodes and external clients, and
//! the decision it makes for a packet.
//!
//! Sources are matched by identity: a packet's sender is the node or client
//! whose overlay address it comes from (WireGuard accepts a packet from a
//! peer only with a source address in that peer's allowed IPs, so the
//! address names the sender). A destination address is matched by CIDR,
//! and by identity when it is a node's or client's overlay address.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;

use super::super::config::{NetworkView, host_prefixes};
use super::super::error::{Error, Result};
use super::super::ext_client::ExtClient;
use super::super::node::Node;
use super::{Action, Policy, Rule, Selector, Tag, Traffic, TrafficSet};

/// A node or an external client.
#[derive(Debug, Clone, Copy)]
pub enum Party<'a> {
    /// A node.
    Node(&'a Node),
    /// An external client.
    Client(&'a ExtClient),
}

impl<'a> Party<'a> {
    /// Its id.
    pub fn id(&self) -> &'a str {
        match self {
            Party::Node(n) => &n.id,
            Party::Client(c) => &c.id,
        }
    }

    /// Its name.
    pub fn name(&self) -> &'a str {
        match self {
            Party::Node(n) => n.name.as_str(),
            Party::Client(c) => c.name.as_str(),
        }
    }

    /// Its tags.
    pub fn tags(&self) -> &'a [Tag] {
        match self {
            Party::Node(n) => &n.tags,
            Party::Client(c) => &c.tags,
        }
    }

    /// Its overlay addresses.
    pub fn addresses(&self) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
        match self {
            Party::Node(n) => (n.address, n.address6),
            Party::Client(c) => (c.address, c.address6),
        }
    }

    /// Its overlay addresses, IPv4 first.
    pub fn addrs(&self) -> Vec<IpAddr> {
        let (a, b) = self.addresses();
        a.map(IpAddr::V4)
            .into_iter()
            .chain(b.map(IpAddr::V6))
            .collect()
    }

    /// Its overlay addresses as host prefixes (IPv4 first).
    pub fn prefixes(&self) -> Vec<IpNet> {
        let (a, b) = self.addresses();
        host_prefixes(a, b)
    }

    /// "node:NAME" or "client:NAME".
    pub fn label(&self) -> String {
        match self {
            Party::Node(n) => format!("node:{}", n.name),
            Party::Client(c) => format!("client:{}", c.name),
        }
    }

    /// Whether a selector of a rule's sources or destinations names it (by
    /// `*`, a tag or its name; CIDR ranges never: those match addresses).
    pub fn selected_by(&self, s: &Selector) -> bool {
        match (s, self) {
            (Selector::Any, _) => true,
            (Selector::Tag(t), p) => p.tags().contains(t),
            (Selector::Node(n), Party::Node(x)) => x.name == *n,
            (Selector::Client(n), Party::Client(x)) => x.name == *n,
            _ => false,
        }
    }
}

/// Who sends a packet.
#[derive(Debug, Clone, Copy)]
pub enum Sender<'a> {
    /// A node or client of the network.
    Party(Party<'a>),
    /// An address that is no node's or client's (a host behind an egress
    /// gateway without NAT): only `*` sources match it.
    Foreign,
}

/// Where a packet goes, for computing what may reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// One address (a party's overlay address or any other).
    Addr(IpAddr),
    /// Every address of a range that no party's address is in and that no
    /// rule's CIDR splits (each either contains it or misses it; see
    /// [`super::diff`] for how ranges are cut into such pieces).
    Range(IpNet),
}

/// A fixed-size bit set, one bit per rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    pub(crate) fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    pub(crate) fn and(&self, o: &Bits) -> Bits {
        Bits(self.0.iter().zip(&o.0).map(|(a, b)| a & b).collect())
    }
    fn or(&self, o: &Bits) -> Bits {
        Bits(self.0.iter().zip(&o.0).map(|(a, b)| a | b).collect())
    }
}

/// Why a packet is allowed or denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecidedBy {
    /// The rule at this index (from 0), with its name.
    Rule {
        /// Index in the policy's rules.
        index: usize,
        /// Its name, when it has one.
        name: Option<String>,
    },
    /// No rule matched: the default action.
    Default,
}

/// The decision for one packet: what `TestAccess` answers and
/// `ExplainRoute` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Allowed or denied.
    pub action: Action,
    /// By which rule, or by the default.
    pub decided_by: DecidedBy,
    /// In words (names the rule, the traffic, the matching selectors).
    pub reason: String,
    /// The destination address decided for.
    pub address: IpAddr,
}

/// Answers remembered, shareable between threads (configs of one network
/// are computed from one resolution of its policy by several streams at
/// once): each lookup or insert holds the lock for that alone.
#[derive(Debug)]
pub(crate) struct Memo<K, V>(std::sync::Mutex<HashMap<K, V>>);

impl<K, V> Default for Memo<K, V> {
    fn default() -> Self {
        Memo(std::sync::Mutex::new(HashMap::new()))
    }
}

impl<K: std::hash::Hash + Eq, V: Clone> Memo<K, V> {
    /// The answer remembered for `k`.
    pub(crate) fn get(&self, k: &K) -> Option<V> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(k)
            .cloned()
    }

    /// Remembers `v` for `k` (entries are whole answers, so a lock a
    /// panic poisoned still holds only correct ones).
    pub(crate) fn insert(&self, k: K, v: V) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(k, v);
    }
}

/// Aggregated prefixes, shared by the configs that use them.
pub type Prefixes = std::sync::Arc<Vec<IpNet>>;

/// A policy resolved against a network's parties: who carries which tag,
/// which address belongs to whom, which rules each party's packets and
/// each address can match. Build one per computation over a view and ask
/// it many questions; it memoizes what is allowed between kinds of sender
/// and destination (parties that match the same rules are decided alike).
#[derive(Debug)]
pub struct PolicyIndex<'a> {
    policy: &'a Policy,
    parties: Vec<Party<'a>>,
    by_addr: HashMap<IpAddr, usize>,
    by_key: HashMap<&'a str, usize>,
    /// Parties by id alone (a name may equal another party's id).
    by_id: HashMap<&'a str, usize>,
    /// Per party, the rules whose sources select it.
    src: Vec<Bits>,
    /// Per party, the rules whose destinations select it by identity.
    dst: Vec<Bits>,
    /// Rules with `*` among their sources (what a foreign sender matches).
    src_any: Bits,
    /// Rules with `*` among their destinations.
    dst_any: Bits,
    /// Rules' traffic, computed once.
    traffic: Vec<TrafficSet>,
    unrestricted: bool,
    memo: Memo<Bits, TrafficSet>,
    /// See [`PolicyIndex::selected_prefixes`].
    selected: Memo<(usize, bool, bool), Option<Prefixes>>,
}

/// The rules of `policy` for which `f` holds.
fn rule_bits(policy: &Policy, f: impl Fn(&Rule) -> bool) -> Bits {
    let mut b = Bits::new(policy.rules.len());
    for (i, r) in policy.rules.iter().enumerate() {
        if f(r) {
            b.set(i);
        }
    }
    b
}

/// The rules whose sources select `p`.
fn sources_selecting(policy: &Policy, p: Party<'_>) -> Bits {
    rule_bits(policy, |r| r.sources.iter().any(|x| p.selected_by(x)))
}

/// The rules whose destinations select `p` by identity (or `*`).
fn destinations_selecting(policy: &Policy, p: Party<'_>) -> Bits {
    rule_bits(policy, |r| r.destinations.iter().any(|x| p.selected_by(x)))
}

impl<'a> PolicyIndex<'a> {
    /// Resolves `policy` against these nodes and clients.
    pub fn new(
        policy: &'a Policy,
        nodes: impl IntoIterator<Item = &'a Node>,
        clients: impl IntoIterator<Item = &'a ExtClient>,
    ) -> Self {
        let parties: Vec<Party<'a>> = nodes
            .into_iter()
            .map(Party::Node)
            .chain(clients.into_iter().map(Party::Client))
            .collect();
        let n = policy.rules.len();
        let mut by_addr = HashMap::new();
        let mut by_key = HashMap::new();
        let mut by_id = HashMap::new();
        let mut src = Vec::with_capacity(parties.len());
        let mut dst = Vec::with_capacity(parties.len());
        for (i, p) in parties.iter().enumerate() {
            for addr in p.addrs() {
                by_addr.insert(addr, i);
            }
            by_key.insert(p.id(), i);
            by_key.insert(p.name(), i);
            by_id.insert(p.id(), i);
            src.push(sources_selecting(policy, *p));
            dst.push(destinations_selecting(policy, *p));
        }
        let (mut src_any, mut dst_any) = (Bits::new(n), Bits::new(n));
        for (r, rule) in policy.rules.iter().enumerate() {
            if rule.sources.contains(&Selector::Any) {
                src_any.set(r);
            }
            if rule.destinations.contains(&Selector::Any) {
                dst_any.set(r);
            }
        }
        PolicyIndex {
            policy,
            parties,
            by_addr,
            by_key,
            by_id,
            src,
            dst,
            src_any,
            dst_any,
            traffic: policy.rules.iter().map(Rule::traffic).collect(),
            unrestricted: policy.is_unrestricted(),
            memo: Memo::default(),
            selected: Memo::default(),
        }
    }

    /// Resolves the view's policy against the view's nodes and clients.
    pub fn of_view(view: &'a NetworkView) -> Self {
        PolicyIndex::new(&view.policy, &view.nodes, &view.ext_clients)
    }

    /// The policy.
    pub fn policy(&self) -> &'a Policy {
        self.policy
    }

    /// Whether the policy allows everything (see
    /// [`Policy::is_unrestricted`]).
    pub fn is_unrestricted(&self) -> bool {
        self.unrestricted
    }

    /// Every party, nodes first, in the order given.
    pub fn parties(&self) -> &[Party<'a>] {
        &self.parties
    }

    /// The prefixes rule `rule`'s sources (or, without `sources`, its
    /// destinations) select, of IPv6 or IPv4 (`v6`): CIDR selectors as
    /// written, parties by their overlay addresses, aggregated; None when
    /// `*` is among them (any address). Computed once per index.
    pub fn selected_prefixes(&self, rule: usize, sources: bool, v6: bool) -> Option<Prefixes> {
        let key = (rule, sources, v6);
        if let Some(v) = self.selected.get(&key) {
            return v;
        }
        let r = &self.policy.rules[rule];
        let sels = if sources { &r.sources } else { &r.destinations };
        let v = if sels.contains(&Selector::Any) {
            None
        } else {
            let mut nets: Vec<IpNet> = Vec::new();
            for s in sels {
                match s {
                    Selector::Cidr(c) => nets.push(*c),
                    s => {
                        for p in self.parties.iter().filter(|p| p.selected_by(s)) {
                            nets.extend(p.prefixes());
                        }
                    }
                }
            }
            nets.retain(|n| matches!(n, IpNet::V6(_)) == v6);
            Some(std::sync::Arc::new(IpNet::aggregate(&nets)))
        };
        self.selected.insert(key, v.clone());
        v
    }

    /// The node or client with this id or name.
    pub fn party(&self, id_or_name: &str) -> Option<Party<'a>> {
        self.by_id
            .get(id_or_name)
            .or_else(|| self.by_key.get(id_or_name))
            .map(|i| self.parties[*i])
    }

    /// The node or client an overlay address belongs to.
    pub fn owner(&self, addr: IpAddr) -> Option<Party<'a>> {
        self.by_addr.get(&addr).map(|i| self.parties[*i])
    }

    /// The rules whose sources match `s`.
    pub(crate) fn src_bits(&self, s: Sender<'_>) -> Bits {
        match s {
            Sender::Party(p) => match self.by_id.get(p.id()) {
                Some(i) => self.src[*i].clone(),
                None => self.rule_bits(|r| r.sources.iter().any(|x| p.selected_by(x))),
            },
            Sender::Foreign => self.src_any.clone(),
        }
    }

    fn rule_bits(&self, f: impl Fn(&Rule) -> bool) -> Bits {
        rule_bits(self.policy, f)
    }

    /// The sender class of `p` ([`PolicyIndex::src_bits`]), from the party
    /// alone: it need not be one of the index's.
    pub(crate) fn send_bits_of(&self, p: Party<'_>) -> Bits {
        sources_selecting(self.policy, p)
    }

    /// The receiver class of `p`'s address `a` ([`PolicyIndex::dst_bits`]
    /// of it), from the party alone: it need not be one of the index's.
    pub(crate) fn recv_bits_of(&self, p: Party<'_>, a: IpAddr) -> Bits {
        self.cidr_bits(|c| c.contains(&a))
            .or(&destinations_selecting(self.policy, p))
    }

    fn cidr_bits(&self, hit: impl Fn(&IpNet) -> bool) -> Bits {
        self.rule_bits(|r| {
            r.destinations
                .iter()
                .any(|d| matches!(d, Selector::Cidr(c) if hit(c)))
        })
    }

    /// The rules whose destinations match every address of `d`.
    pub(crate) fn dst_bits(&self, d: Dest) -> Bits {
        match d {
            Dest::Addr(a) => {
                let cidr = self.cidr_bits(|c| c.contains(&a));
                let id = match self.by_addr.get(&a) {
                    Some(i) => self.dst[*i].clone(),
                    None => self.dst_any.clone(),
                };
                cidr.or(&id)
            }
            Dest::Range(r) => self.cidr_bits(|c| c.contains(&r)).or(&self.dst_any),
        }
    }

    /// The rules that can match a packet from `from` to `to` (sources and
    /// destinations both match).
    pub(crate) fn matching(&self, from: Sender<'_>, to: Dest) -> Bits {
        self.src_bits(from).and(&self.dst_bits(to))
    }

    /// Everything the policy lets `from` send to `to` (every address of
    /// it): the first-match walk over the rules, on sets of traffic.
    pub fn allowed(&self, from: Sender<'_>, to: Dest) -> TrafficSet {
        if self.unrestricted {
            return TrafficSet::all();
        }
        self.allowed_by(self.matching(from, to))
    }

    /// [`PolicyIndex::allowed`] for a packet that exactly the rules in
    /// `key` can match (see [`PolicyIndex::matching`]).
    pub(crate) fn allowed_by(&self, key: Bits) -> TrafficSet {
        if self.unrestricted {
            return TrafficSet::all();
        }
        if let Some(t) = self.memo.get(&key) {
            return t;
        }
        let mut remaining = TrafficSet::all();
        let mut allowed = TrafficSet::none();
        for (i, rule) in self.policy.rules.iter().enumerate() {
            if !key.get(i) {
                continue;
            }
            if rule.action == Action::Allow {
                allowed = allowed.union(&remaining.intersect(&self.traffic[i]));
            }
            remaining = remaining.minus(&self.traffic[i]);
            if remaining.is_empty() {
                break;
            }
        }
        if self.policy.default_action == Action::Allow {
            allowed = allowed.union(&remaining);
        }
        self.memo.insert(key, allowed.clone());
        allowed
    }

    /// Whether `from` may send anything at all to `to`.
    pub fn may_send(&self, from: Sender<'_>, to: Dest) -> bool {
        self.unrestricted || !self.allowed(from, to).is_empty()
    }

    /// The decision for one packet from `from` to `to` carrying `traffic`.
    pub fn evaluate(&self, from: Sender<'_>, to: IpAddr, traffic: Traffic) -> Verdict {
        let sender = match from {
            Sender::Party(p) => p.label(),
            Sender::Foreign => "a sender that is no node or client".to_owned(),
        };
        let receiver = match self.owner(to) {
            Some(p) => format!("{} ({to})", p.label()),
            None => to.to_string(),
        };
        let key = self.matching(from, Dest::Addr(to));
        for (i, rule) in self.policy.rules.iter().enumerate() {
            if !key.get(i) || !self.traffic[i].contains(traffic) {
                continue;
            }
            let src = rule
                .sources
                .iter()
                .find(|s| match from {
                    Sender::Party(p) => p.selected_by(s),
                    Sender::Foreign => **s == Selector::Any,
                })
                .map(ToString::to_string)
                .unwrap_or_default();
            let owner = self.owner(to);
            let dst = rule
                .destinations
                .iter()
                .find(|d| match d {
                    Selector::Cidr(c) => c.contains(&to),
                    other => {
                        owner.is_some_and(|p| p.selected_by(other)) || **other == Selector::Any
                    }
                })
                .map(ToString::to_string)
                .unwrap_or_default();
            return Verdict {
                action: rule.action,
                decided_by: DecidedBy::Rule {
                    index: i,
                    name: rule.name.as_ref().map(ToString::to_string),
                },
                reason: format!(
                    "{} {} {traffic} from {sender} (matches source {src}) to {receiver} \
                     (matches destination {dst})",
                    rule.label(i),
                    rule.action.verb(),
                ),
                address: to,
            };
        }
        let action = self.policy.default_action;
        Verdict {
            action,
            decided_by: DecidedBy::Default,
            reason: format!(
                "no rule matches {traffic} from {sender} to {receiver}; the default action \
                 {} it",
                action.verb()
            ),
            address: to,
        }
    }
}

/// TestAccess: the decision for `traffic` from the node or client `from`
/// (name or id) to `to` (a node's or client's name or id, or an IP
/// address). A party destination is decided for its IPv4 address, else its
/// IPv6 one; when both exist and fare differently, the reason says so.
/// NOT_FOUND when `from` or a named `to` is no node or client of the view.
pub fn test_access(view: &NetworkView, from: &str, to: &str, traffic: Traffic) -> Result<Verdict> {
    let index = PolicyIndex::of_view(view);
    let sender = index
        .party(from)
        .ok_or_else(|| Error::not_found("node or external client", from))?;
    if let Ok(addr) = to.trim().parse::<IpAddr>() {
        return Ok(index.evaluate(Sender::Party(sender), addr, traffic));
    }
    let receiver = index
        .party(to)
        .ok_or_else(|| Error::not_found("node or external client", to))?;
    let (a, b) = receiver.addresses();
    let addrs: Vec<IpAddr> = a
        .map(IpAddr::V4)
        .into_iter()
        .chain(b.map(IpAddr::V6))
        .collect();
    let Some(first) = addrs.first() else {
        return Err(Error::FailedPrecondition(format!(
            "{} has no overlay address",
            receiver.label()
        )));
    };
    let mut v = index.evaluate(Sender::Party(sender), *first, traffic);
    if let Some(second) = addrs.get(1) {
        let w = index.evaluate(Sender::Party(sender), *second, traffic);
        if w.action != v.action || w.decided_by != v.decided_by {
            v.reason = format!("{}; to its address {second}: {}", v.reason, w.reason);
        }
    }
    Ok(v)
}
