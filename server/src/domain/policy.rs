//! Access policies (issue #14): who may send what to which nodes, external
//! clients and ranges behind egress gateways.
//!
//! A network has one [`Policy`]: a default [`Action`] and ordered
//! [`Rule`]s. A packet is decided by the first rule whose sources match its
//! sender, whose destinations match its destination address and whose
//! protocols and ports match its traffic; when none does, by the default.
//! [`Policy::default`] (ALLOW, no rules) is what every network had before
//! policies: everything reaches everything.
//!
//! Selectors ([`Selector`], written as in the proto):
//! - `*`: anything. As a source it also matches senders that are no node or
//!   client (hosts behind an egress gateway without NAT).
//! - `tag:NAME`: every node and external client carrying [`Tag`] NAME, by
//!   their overlay IPv4 and IPv6 addresses.
//! - `node:NAME`, `client:NAME`: one node or client by name (a name that
//!   does not exist matches nothing: policies may be written before the
//!   node registers).
//! - a CIDR range (`10.10.10.0/24`, `fd10::/64`, or a bare address for a
//!   host), destinations only: every address in it, overlay addresses and
//!   addresses behind egress gateways alike.
//!
//! Everything here is pure. The pieces:
//! - this module: the types and [`PolicyInput::validate`];
//! - [`traffic`]: what a packet carries ([`traffic::Traffic`]) and sets of
//!   it ([`traffic::TrafficSet`]);
//! - [`eval`]: the policy resolved against a network's nodes and clients
//!   ([`eval::PolicyIndex`]) and [`eval::evaluate`], what `TestAccess` and
//!   `ExplainRoute` answer;
//! - [`prune`]: which peers, ranges and routes a node keeps;
//! - [`diff`]: [`diff::flow_changes`], the preview of `UpdatePolicy` with
//!   `validate_only`;
//! - the firewall rendering is [`super::firewall::firewall_with_policy`].

use std::{collections::BTreeSet, fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::error::{Error, FieldViolation, Result, Violations, shown};
use super::names::{DnsLabel, parse_cidr};

pub mod diff;
pub mod eval;
pub mod prune;
#[cfg(test)]
mod tests;
pub mod traffic;

pub use traffic::{PortRange, Protocol, Traffic, TrafficSet};

/// Longest tag, in characters.
pub const TAG_MAX: usize = 63;
/// Most tags on one node or external client.
pub const MAX_TAGS: usize = 32;
/// Most rules in a policy.
pub const MAX_RULES: usize = 256;
/// Most selectors in a rule's sources, and in its destinations.
pub const MAX_SELECTORS: usize = 64;
/// Most port ranges in a rule.
pub const MAX_PORT_RANGES: usize = 32;
/// Longest rule name, in characters.
pub const RULE_NAME_MAX: usize = 63;

/// A tag on a node or external client: a DNS label of at most [`TAG_MAX`]
/// characters (lowercase a-z, 0-9 and '-', not starting or ending with
/// '-').
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tag(DnsLabel);

impl Tag {
    /// Validates one tag; `field` names it in the violation.
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldViolation> {
        DnsLabel::parse(field, s, TAG_MAX).map(Tag)
    }

    /// The tag.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl TryFrom<String> for Tag {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Tag::parse("tag", &s).map_err(|v| v.description)
    }
}

impl From<Tag> for String {
    fn from(t: Tag) -> String {
        t.0.into()
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Validates a list of tags (`Node.tags`, `ExtClient.tags` and their
/// create and update requests): each a [`Tag`] (the violation names the
/// first bad entry, `field[i]`), at most [`MAX_TAGS`] distinct ones.
/// Returns them sorted without duplicates.
pub fn parse_tags(field: &str, raw: &[String]) -> Result<Vec<Tag>, FieldViolation> {
    let mut tags = BTreeSet::new();
    for (i, s) in raw.iter().enumerate() {
        tags.insert(Tag::parse(&format!("{field}[{i}]"), s)?);
    }
    if tags.len() > MAX_TAGS {
        return Err(FieldViolation::new(
            field,
            format!("{} tags; at most {MAX_TAGS}", tags.len()),
        ));
    }
    Ok(tags.into_iter().collect())
}

/// What a rule, or the default, does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The traffic may pass.
    Allow,
    /// The traffic is dropped.
    Deny,
}

impl Action {
    /// "allows" / "denies", for reasons.
    pub fn verb(self) -> &'static str {
        match self {
            Action::Allow => "allows",
            Action::Deny => "denies",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
        })
    }
}

/// Who sends, or where to (see the module documentation for the syntax).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Selector {
    /// `*`
    Any,
    /// `tag:NAME`
    Tag(Tag),
    /// `node:NAME`
    Node(DnsLabel),
    /// `client:NAME`
    Client(DnsLabel),
    /// A CIDR range (destinations only).
    Cidr(IpNet),
}

/// What a selector list says in words, for violations.
const SELECTOR_SYNTAX: &str = "expected \"*\", \"tag:NAME\", \"node:NAME\", \"client:NAME\" or (destinations only) a \
     CIDR range such as 10.10.10.0/24";

impl Selector {
    /// Parses a selector; CIDR ranges only when `destination`.
    pub fn parse(field: &str, s: &str, destination: bool) -> Result<Self, FieldViolation> {
        let s = s.trim();
        if s == "*" {
            return Ok(Selector::Any);
        }
        if let Some((kind, name)) = s.split_once(':')
            && matches!(kind, "tag" | "node" | "client")
        {
            return match kind {
                "tag" => Tag::parse(field, name).map(Selector::Tag),
                "node" => DnsLabel::parse(field, name, DnsLabel::LABEL_MAX).map(Selector::Node),
                _ => DnsLabel::parse(field, name, DnsLabel::LABEL_MAX).map(Selector::Client),
            };
        }
        let net = if s.contains('/') {
            Some(parse_cidr(field, s)?)
        } else {
            IpAddr::from_str(s).ok().map(IpNet::from)
        };
        match net {
            Some(n) if destination => Ok(Selector::Cidr(n)),
            Some(n) => Err(FieldViolation::new(
                field,
                format!(
                    "{n} is a range: ranges are destinations only; select senders by \
                     \"tag:NAME\", \"node:NAME\", \"client:NAME\" or \"*\""
                ),
            )),
            None => Err(FieldViolation::new(
                field,
                format!("{}: {SELECTOR_SYNTAX}", shown(s)),
            )),
        }
    }
}

impl TryFrom<String> for Selector {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Selector::parse("selector", &s, true).map_err(|v| v.description)
    }
}

impl From<Selector> for String {
    fn from(s: Selector) -> String {
        s.to_string()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Any => f.write_str("*"),
            Selector::Tag(t) => write!(f, "tag:{t}"),
            Selector::Node(n) => write!(f, "node:{n}"),
            Selector::Client(n) => write!(f, "client:{n}"),
            Selector::Cidr(n) => write!(f, "{n}"),
        }
    }
}

/// One rule of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Optional name, unique in the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<DnsLabel>,
    /// Who sends (never a CIDR).
    pub sources: Vec<Selector>,
    /// Where to.
    pub destinations: Vec<Selector>,
    /// Protocols, sorted without duplicates; empty: every protocol.
    #[serde(default)]
    pub protocols: Vec<Protocol>,
    /// Destination ports (TCP and UDP only), sorted; empty: every port.
    #[serde(default)]
    pub ports: Vec<PortRange>,
    /// What happens to matching traffic.
    pub action: Action,
}

impl Rule {
    /// The traffic this rule matches (protocols and ports; who and where
    /// aside).
    pub fn traffic(&self) -> TrafficSet {
        TrafficSet::of_rule(&self.protocols, &self.ports)
    }

    /// "rule 3 (web)" or "rule 3": how reasons and previews name the rule
    /// at `index`.
    pub fn label(&self, index: usize) -> String {
        match &self.name {
            Some(n) => format!("rule {index} ({n})"),
            None => format!("rule {index}"),
        }
    }
}

/// A network's access policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// What happens to traffic no rule matches.
    pub default_action: Action,
    /// The rules, in the order they are tried.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

impl Default for Policy {
    /// ALLOW and no rules: the behaviour of a network without a policy.
    fn default() -> Self {
        Policy {
            default_action: Action::Allow,
            rules: Vec::new(),
        }
    }
}

impl Policy {
    /// Whether every packet is allowed, whoever sends it where: the default
    /// is ALLOW and no rule denies. Configs of such a policy are exactly
    /// those of a network without one (no filtering, no pruning).
    pub fn is_unrestricted(&self) -> bool {
        self.default_action == Action::Allow && self.rules.iter().all(|r| r.action == Action::Allow)
    }
}

/// A network's policy as stored: what `GetPolicy` answers and a policy
/// event carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    /// The network.
    pub network: DnsLabel,
    /// The policy.
    pub policy: Policy,
    /// The network's config revision at which the policy last changed; 0
    /// when it never did. In a policy event's payload it is the previous
    /// one: the change's own revision is the event's.
    #[serde(default)]
    pub revision: u64,
    /// When the policy last changed; None when it never did.
    #[serde(default)]
    pub update_time: Option<chrono::DateTime<chrono::Utc>>,
}

impl NetworkPolicy {
    /// What a network without a stored policy has: [`Policy::default`].
    pub fn none(network: DnsLabel) -> Self {
        NetworkPolicy {
            network,
            policy: Policy::default(),
            revision: 0,
            update_time: None,
        }
    }
}

/// Fields `UpdatePolicy`'s mask may name.
pub const UPDATABLE: &[&str] = &["default_action", "rules"];

/// `UpdatePolicy`: the policy `sent` with `mask` applied over `stored`
/// (fields the mask names come from `sent`, the others from `stored`; an
/// empty mask names both), validated. Field violations are named as sent
/// (`policy.rules[0].sources[1]`, `update_mask`).
pub fn apply_mask(stored: &Policy, sent: PolicyInput, mask: &[String]) -> Result<Policy> {
    let (mut action, mut rules) = (false, false);
    let mut v = Violations::default();
    for path in mask {
        match path.as_str() {
            "default_action" => action = true,
            "rules" => rules = true,
            other => v.add(
                "update_mask",
                format!(
                    "{} cannot be updated; updatable fields are {}",
                    shown(other),
                    UPDATABLE.join(", ")
                ),
            ),
        }
    }
    v.finish()?;
    if mask.is_empty() {
        (action, rules) = (true, true);
    }
    PolicyInput {
        default_action: if action {
            sent.default_action
        } else {
            Some(stored.default_action)
        },
        rules: if rules {
            sent.rules
        } else {
            stored.rules.iter().map(RuleInput::from).collect()
        },
    }
    .validate()
}

impl From<&Rule> for RuleInput {
    /// A stored rule written as sent (validating it again gives it back).
    fn from(r: &Rule) -> Self {
        RuleInput {
            name: r.name.as_ref().map(ToString::to_string).unwrap_or_default(),
            sources: r.sources.iter().map(ToString::to_string).collect(),
            destinations: r.destinations.iter().map(ToString::to_string).collect(),
            protocols: r.protocols.iter().copied().map(Some).collect(),
            ports: r.ports.iter().map(ToString::to_string).collect(),
            action: Some(r.action),
        }
    }
}

/// One rule as sent (`PolicyRule`).
#[derive(Debug, Clone, Default)]
pub struct RuleInput {
    /// name (empty: none)
    pub name: String,
    /// sources
    pub sources: Vec<String>,
    /// destinations
    pub destinations: Vec<String>,
    /// protocols; None for PROTOCOL_UNSPECIFIED or a number the API does
    /// not know
    pub protocols: Vec<Option<Protocol>>,
    /// ports ("443", "8000-8999")
    pub ports: Vec<String>,
    /// action; None for POLICY_ACTION_UNSPECIFIED or an unknown number
    pub action: Option<Action>,
}

/// A policy as sent (`Policy` of `UpdatePolicyRequest`, the mask already
/// applied by the caller: fields not in the mask are the stored ones).
#[derive(Debug, Clone, Default)]
pub struct PolicyInput {
    /// default_action; None (unspecified) means ALLOW
    pub default_action: Option<Action>,
    /// rules
    pub rules: Vec<RuleInput>,
}

/// Prefix of field names in violations, as `UpdatePolicyRequest` nests
/// them.
const F: &str = "policy";

impl PolicyInput {
    /// Validates every rule, reporting every bad field at once with its
    /// path (`policy.rules[3].destinations[1]`).
    pub fn validate(self) -> Result<Policy> {
        if self.rules.len() > MAX_RULES {
            return Err(Error::invalid(
                format!("{F}.rules"),
                format!("{} rules; at most {MAX_RULES}", self.rules.len()),
            ));
        }
        let mut v = Violations::default();
        let mut rules = Vec::with_capacity(self.rules.len());
        let mut names: BTreeSet<DnsLabel> = BTreeSet::new();
        for (i, r) in self.rules.into_iter().enumerate() {
            let at = format!("{F}.rules[{i}]");
            if let Some(rule) = validate_rule(&at, r, &mut names, &mut v) {
                rules.push(rule);
            }
        }
        v.finish()?;
        Ok(Policy {
            default_action: self.default_action.unwrap_or(Action::Allow),
            rules,
        })
    }
}

fn selectors(
    at: &str,
    what: &str,
    raw: &[String],
    destination: bool,
    v: &mut Violations,
) -> Option<Vec<Selector>> {
    let field = format!("{at}.{what}");
    if raw.is_empty() {
        v.add(
            field,
            format!("at least one is required (\"*\" for any); {SELECTOR_SYNTAX}"),
        );
        return None;
    }
    if raw.len() > MAX_SELECTORS {
        v.add(
            field,
            format!("{} selectors; at most {MAX_SELECTORS}", raw.len()),
        );
        return None;
    }
    let before = v.count();
    let mut out: Vec<Selector> = Vec::with_capacity(raw.len());
    for (j, s) in raw.iter().enumerate() {
        if let Some(sel) = v.check(Selector::parse(&format!("{field}[{j}]"), s, destination))
            && !out.contains(&sel)
        {
            out.push(sel);
        }
    }
    (v.count() == before).then_some(out)
}

fn validate_rule(
    at: &str,
    r: RuleInput,
    names: &mut BTreeSet<DnsLabel>,
    v: &mut Violations,
) -> Option<Rule> {
    let before = v.count();
    let name = if r.name.is_empty() {
        None
    } else {
        let field = format!("{at}.name");
        match v.check(DnsLabel::parse(&field, &r.name, RULE_NAME_MAX)) {
            Some(n) if !names.insert(n.clone()) => {
                v.add(field, format!("another rule is already named {n:?}"));
                None
            }
            n => n,
        }
    };
    let sources = selectors(at, "sources", &r.sources, false, v);
    let destinations = selectors(at, "destinations", &r.destinations, true, v);
    let mut protocols = BTreeSet::new();
    let bad_protocol = r.protocols.iter().any(Option::is_none);
    for (j, p) in r.protocols.iter().enumerate() {
        match p {
            Some(p) => {
                protocols.insert(*p);
            }
            None => v.add(
                format!("{at}.protocols[{j}]"),
                "must be TCP, UDP or ICMP (leave protocols empty for every protocol)",
            ),
        }
    }
    let mut ports = Vec::new();
    if r.ports.len() > MAX_PORT_RANGES {
        v.add(
            format!("{at}.ports"),
            format!("{} port ranges; at most {MAX_PORT_RANGES}", r.ports.len()),
        );
    } else {
        for (j, p) in r.ports.iter().enumerate() {
            if let Some(p) = v.check(PortRange::parse(&format!("{at}.ports[{j}]"), p)) {
                ports.push(p);
            }
        }
    }
    // (With a protocol already refused, what it should have been is
    // unknown: no second violation about the ports.)
    if !r.ports.is_empty()
        && !bad_protocol
        && (protocols.is_empty() || protocols.iter().any(|p| !p.has_ports()))
    {
        v.add(
            format!("{at}.ports"),
            "ports need protocols TCP and/or UDP only (ICMP has no ports; an empty protocol \
             list means every protocol)",
        );
    }
    if r.action.is_none() {
        v.add(format!("{at}.action"), "is required: ALLOW or DENY");
    }
    if v.count() != before {
        return None;
    }
    Some(Rule {
        name,
        sources: sources?,
        destinations: destinations?,
        protocols: protocols.into_iter().collect(),
        ports: traffic::normalize_ports(ports),
        action: r.action?,
    })
}

/// The pieces an egress range is cut into for deciding what may reach it:
/// every rule CIDR of the policy either contains a piece or misses it, and
/// what the range does not carry is left out: the network's own ranges
/// (their addresses are parties', reached directly) and the more specific
/// egress ranges of any gateway (longest prefix wins: WireGuard sends those
/// elsewhere). Sorted; empty when nothing of the range is left.
pub fn range_pieces(
    policy: &Policy,
    network: &super::network::Network,
    nodes: &[super::node::Node],
    range: IpNet,
) -> Vec<IpNet> {
    let strictly_inside = |outer: &IpNet, inner: &IpNet| {
        outer.contains(inner) && inner.prefix_len() > outer.prefix_len()
    };
    let carve: Vec<IpNet> = network
        .ranges()
        .chain(
            nodes
                .iter()
                .filter_map(|n| n.egress.as_ref())
                .flat_map(|e| e.ranges.iter().copied())
                .filter(|c| strictly_inside(&range, c)),
        )
        .collect();
    let bounds: Vec<IpNet> = policy
        .rules
        .iter()
        .flat_map(|r| &r.destinations)
        .filter_map(|d| match d {
            Selector::Cidr(c) => Some(*c),
            _ => None,
        })
        .chain(carve.iter().copied())
        .filter(|b| strictly_inside(&range, b))
        .collect();
    fn split(p: IpNet, bounds: &[IpNet], carve: &[IpNet], out: &mut Vec<IpNet>) {
        if carve.iter().any(|c| c.contains(&p)) {
            return;
        }
        let inner: Vec<IpNet> = bounds
            .iter()
            .filter(|b| p.contains(*b) && b.prefix_len() > p.prefix_len())
            .copied()
            .collect();
        if inner.is_empty() {
            out.push(p);
            return;
        }
        for half in p.subnets(p.prefix_len() + 1).expect("longer prefix") {
            split(half, &inner, carve, out);
        }
    }
    let mut out = Vec::new();
    split(range, &bounds, &carve, &mut out);
    out.sort();
    out
}
