//! Firewall rules of gateway nodes, rendered as `iptables-restore --noflush`
//! input on meshplane's own chains, so applying them never touches anyone
//! else's rules. Pure: same state in, same text out.
//!
//! Under an access policy that restricts anything
//! ([`firewall_with_policy`]), every node also filters: what arrives on its
//! WireGuard interface for itself ([`INPUT_CHAIN`]), what its egress
//! gateway forwards into its ranges, and what its ingress gateway forwards
//! for its external clients (both in [`FORWARD_CHAIN`]). Without one, the
//! output is exactly [`firewall_for`]'s.

use std::sync::Arc;

use ipnet::IpNet;

use super::config::{host_prefixes, node_interface};
use super::network::Network;
use super::node::Node;
use super::policy::{
    Action, Policy, Protocol, Rule as PolicyRule,
    eval::{Party, PolicyIndex},
};

/// meshplane's chain in the filter table, jumped to from FORWARD.
pub const FORWARD_CHAIN: &str = "MESHPLANE-FWD";
/// meshplane's chain in the nat table, jumped to from POSTROUTING.
pub const POSTROUTING_CHAIN: &str = "MESHPLANE-POSTROUTING";
/// meshplane's chain in the filter table, jumped to from INPUT: what the
/// access policy denies the node itself. Present only under a policy that
/// denies this node something.
pub const INPUT_CHAIN: &str = "MESHPLANE-IN";

/// IP family of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    /// iptables
    V4,
    /// ip6tables
    V6,
}

impl Family {
    /// 4 or 6.
    pub fn number(self) -> u32 {
        match self {
            Family::V4 => 4,
            Family::V6 => 6,
        }
    }

    /// The family of an address range.
    pub fn of(net: &IpNet) -> Self {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// "filter" or "nat".
    pub table: &'static str,
    /// Chain.
    pub chain: &'static str,
    /// Arguments after `-A CHAIN`.
    pub rule: String,
    /// Family.
    pub family: Family,
    /// A jump from a built-in chain, installed once by the agent.
    pub hook: bool,
}

/// A node's firewall.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Firewall {
    /// Needs net.ipv4.ip_forward=1.
    pub ipv4_forwarding: bool,
    /// Needs net.ipv6.conf.all.forwarding=1.
    pub ipv6_forwarding: bool,
    /// Every rule, hooks included.
    pub rules: Vec<Rule>,
    /// `iptables-restore --noflush` input.
    pub iptables_restore: String,
    /// `ip6tables-restore --noflush` input.
    pub ip6tables_restore: String,
}

fn rule(table: &'static str, chain: &'static str, family: Family, text: String) -> Rule {
    Rule {
        table,
        chain,
        rule: text,
        family,
        hook: false,
    }
}

/// The firewall of `node`: forwarding (and masquerading) for its egress
/// ranges, and forwarding between its external clients and the network when
/// it is an ingress gateway. A node that is neither gets empty chains, so
/// applying its config also clears rules it had as a gateway.
pub fn firewall_for(network: &Network, node: &Node) -> Firewall {
    let ovl = node_interface(node);
    let mut rules = Vec::new();
    let source = |f: Family| -> Option<IpNet> {
        match f {
            Family::V4 => network.range4.map(IpNet::V4),
            Family::V6 => network.range6.map(IpNet::V6),
        }
    };

    if let Some(e) = &node.egress {
        let iface = &e.interface;
        for f in [Family::V4, Family::V6] {
            let ranges: Vec<&IpNet> = e.ranges.iter().filter(|r| Family::of(r) == f).collect();
            if ranges.is_empty() {
                continue;
            }
            for r in &ranges {
                rules.push(rule(
                    "filter",
                    FORWARD_CHAIN,
                    f,
                    format!("-i {ovl} -o {iface} -d {r} -j ACCEPT"),
                ));
            }
            rules.push(rule(
                "filter",
                FORWARD_CHAIN,
                f,
                format!("-i {iface} -o {ovl} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
            ));
            if let (true, Some(src)) = (e.nat, source(f)) {
                masquerade(&mut rules, f, src, iface, ranges.iter().copied());
            }
        }
    }
    if node.ingress.is_some() {
        for f in [Family::V4, Family::V6] {
            if source(f).is_some() {
                rules.push(rule(
                    "filter",
                    FORWARD_CHAIN,
                    f,
                    format!("-i {ovl} -o {ovl} -j ACCEPT"),
                ));
            }
        }
    }

    finish(rules)
}

/// The firewall of these rules: hooks for every chain used, forwarding
/// where anything is forwarded, the restore texts.
fn finish(mut rules: Vec<Rule>) -> Firewall {
    let forwards = |f: Family| {
        rules
            .iter()
            .any(|r| r.family == f && r.chain != INPUT_CHAIN)
    };
    let ipv4_forwarding = forwards(Family::V4);
    let ipv6_forwarding = forwards(Family::V6);
    let mut hooks = Vec::new();
    for f in [Family::V4, Family::V6] {
        if rules
            .iter()
            .any(|r| r.family == f && r.chain == FORWARD_CHAIN)
        {
            hooks.push(Rule {
                hook: true,
                ..rule("filter", "FORWARD", f, format!("-j {FORWARD_CHAIN}"))
            });
        }
        if rules
            .iter()
            .any(|r| r.family == f && r.chain == INPUT_CHAIN)
        {
            hooks.push(Rule {
                hook: true,
                ..rule("filter", "INPUT", f, format!("-j {INPUT_CHAIN}"))
            });
        }
        if rules.iter().any(|r| r.family == f && r.table == "nat") {
            hooks.push(Rule {
                hook: true,
                ..rule("nat", "POSTROUTING", f, format!("-j {POSTROUTING_CHAIN}"))
            });
        }
    }
    let iptables_restore = render(&rules, Family::V4);
    let ip6tables_restore = render(&rules, Family::V6);
    rules.extend(hooks);
    Firewall {
        ipv4_forwarding,
        ipv6_forwarding,
        rules,
        iptables_restore,
        ip6tables_restore,
    }
}

/// A rule's sources and destinations resolved into address prefixes of one
/// family (None: `*`, any address), aggregated.
#[derive(Debug, Clone)]
struct Resolved {
    src: Option<Arc<Vec<IpNet>>>,
    dst: Option<Arc<Vec<IpNet>>>,
}

impl Resolved {
    /// The rule with its destinations clipped to `relevant` (see
    /// [`clip_to`]); None when none is left.
    fn clipped(&self, relevant: &[IpNet]) -> Option<Resolved> {
        let dst = clip_to(&self.dst, relevant)?;
        Some(Resolved {
            src: self.src.clone(),
            dst,
        })
    }
}

/// NAT of the overlay range `src` onto `iface` for traffic into `ranges`.
fn masquerade<'r>(
    rules: &mut Vec<Rule>,
    f: Family,
    src: IpNet,
    iface: &str,
    ranges: impl IntoIterator<Item = &'r IpNet>,
) {
    for r in ranges {
        rules.push(rule(
            "nat",
            POSTROUTING_CHAIN,
            f,
            format!("-s {src} -o {iface} -d {r} -j MASQUERADE"),
        ));
    }
}

/// The match of `-s`/`-d`: nothing for any address, else the prefixes
/// comma-separated (iptables adds one rule per address).
fn addr_match(flag: &str, nets: &Option<Arc<Vec<IpNet>>>) -> String {
    match nets {
        None => String::new(),
        Some(v) => format!(
            " {flag} {}",
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// The protocol and port matches of a rule: one entry per rendered line
/// ("" for every protocol).
fn traffic_matches(rule: &PolicyRule, f: Family) -> Vec<String> {
    if rule.protocols.is_empty() {
        return vec![String::new()];
    }
    let mut out = Vec::new();
    for p in &rule.protocols {
        let name = match (p, f) {
            (Protocol::Icmp, Family::V6) => "ipv6-icmp",
            (p, _) => p.as_str(),
        };
        if rule.ports.is_empty() || !p.has_ports() {
            out.push(format!(" -p {name}"));
            continue;
        }
        for r in &rule.ports {
            if r.first == r.last {
                out.push(format!(" -p {name} --dport {}", r.first));
            } else {
                out.push(format!(" -p {name} --dport {}:{}", r.first, r.last));
            }
        }
    }
    out
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

/// Keeps only what of the prefixes lies in `relevant` (a prefix holding a
/// relevant one is cut down to it, so a chain names only addresses it
/// sees: its text does not change with parties elsewhere that the same
/// selector picks); None when nothing is left (the rule can match nothing
/// there); `*` stays `*`.
fn clip_to(nets: &Option<Arc<Vec<IpNet>>>, relevant: &[IpNet]) -> Option<Option<Arc<Vec<IpNet>>>> {
    match nets {
        None => Some(None),
        Some(v) => {
            // `v` is aggregated (sorted, no prefix inside another), so the
            // prefixes overlapping `r` are one run, found by bisection: a
            // node's own address against a tag's thousands of prefixes
            // costs a few comparisons.
            let mut kept: Vec<IpNet> = Vec::new();
            for r in relevant {
                let from = v.partition_point(|n| n.broadcast() < r.network());
                kept.extend(
                    v[from..]
                        .iter()
                        .take_while(|n| n.network() <= r.broadcast())
                        .filter(|n| overlaps(n, r))
                        .map(|n| if n.contains(r) { *r } else { *n }),
                );
            }
            kept.sort();
            kept.dedup();
            let kept = IpNet::aggregate(&kept);
            (!kept.is_empty()).then_some(Some(Arc::new(kept)))
        }
    }
}

/// Where [`policy_lines`] writes: a chain of one family, each line starting
/// with `head` (the interface matches), allowed traffic going to `allow`
/// (ACCEPT or RETURN) and denied traffic to DROP.
struct Target {
    chain: &'static str,
    family: Family,
    head: String,
    allow: &'static str,
}

/// Appends the policy's rules to `to`, in order. `keep` decides, from a
/// rule's resolved sources and destinations, what of it is rendered there
/// (None: nothing, the rule cannot match a packet of that chain).
fn policy_lines(
    rules: &mut Vec<Rule>,
    policy: &Policy,
    resolved: &[Resolved],
    to: &Target,
    keep: impl Fn(&Resolved) -> Option<Resolved>,
) {
    for (r, res) in policy.rules.iter().zip(resolved) {
        let Some(res) = keep(res) else { continue };
        if res.src.as_ref().is_some_and(|v| v.is_empty())
            || res.dst.as_ref().is_some_and(|v| v.is_empty())
        {
            continue;
        }
        let target = match r.action {
            Action::Allow => to.allow,
            Action::Deny => "DROP",
        };
        for t in traffic_matches(r, to.family) {
            rules.push(rule(
                "filter",
                to.chain,
                to.family,
                format!(
                    "{}{}{}{t} -j {target}",
                    to.head,
                    addr_match("-s", &res.src),
                    addr_match("-d", &res.dst)
                ),
            ));
        }
    }
}

/// The firewall of `node` under `index`'s policy. Unrestricted (see
/// [`Policy::is_unrestricted`]): exactly [`firewall_for`]. Otherwise, per
/// family of the network, stateful (established and related traffic
/// first), the rules in the policy's order, the default last:
/// - [`INPUT_CHAIN`], for what arrives on the WireGuard interface for the
///   node itself (its overlay addresses, and its own addresses inside its
///   egress ranges): a denied packet is dropped; an allowed one returns to
///   the host's own INPUT rules (meshplane only takes away there). Left
///   out when nothing is dropped.
/// - an egress gateway's forwarding into its ranges: allowed traffic is
///   accepted, denied dropped; with default ALLOW the ranges are accepted
///   as without a policy.
/// - an ingress gateway's forwarding between the overlay and its external
///   clients (both ways): accepted or dropped likewise.
///
/// Each chain carries only the rules that can match a packet routed
/// through it (a destination prefix outside what the chain sees is left
/// out, a rule with none left too). Sources and destinations are
/// aggregated into as few prefixes as the addresses allow. For every
/// packet the overlay routes to or through this node, the chain decides as
/// [`PolicyIndex::evaluate`] does.
pub fn firewall_with_policy(network: &Network, node: &Node, index: &PolicyIndex<'_>) -> Firewall {
    let policy = index.policy();
    if index.is_unrestricted() {
        return firewall_for(network, node);
    }
    let ovl = node_interface(node);
    let mut rules = Vec::new();
    let families: Vec<Family> = network.ranges().map(|r| Family::of(&r)).collect();
    let default_deny = policy.default_action == Action::Deny;
    for &f in &families {
        let resolved: Vec<Resolved> = (0..policy.rules.len())
            .map(|i| Resolved {
                src: index.selected_prefixes(i, true, f == Family::V6),
                dst: index.selected_prefixes(i, false, f == Family::V6),
            })
            .collect();
        let ranges: Vec<IpNet> = node
            .egress
            .iter()
            .flat_map(|e| e.ranges.iter().copied())
            .filter(|r| Family::of(r) == f)
            .collect();

        // Egress: what is forwarded into the ranges.
        if let (Some(e), false) = (&node.egress, ranges.is_empty()) {
            let iface = &e.interface;
            rules.push(rule(
                "filter",
                FORWARD_CHAIN,
                f,
                format!("-i {iface} -o {ovl} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
            ));
            rules.push(rule(
                "filter",
                FORWARD_CHAIN,
                f,
                format!("-i {ovl} -o {iface} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
            ));
            policy_lines(
                &mut rules,
                policy,
                &resolved,
                &Target {
                    chain: FORWARD_CHAIN,
                    family: f,
                    head: format!("-i {ovl} -o {iface}"),
                    allow: "ACCEPT",
                },
                |res| res.clipped(&ranges),
            );
            if default_deny {
                rules.push(rule(
                    "filter",
                    FORWARD_CHAIN,
                    f,
                    format!("-i {ovl} -o {iface} -j DROP"),
                ));
            } else {
                for r in &ranges {
                    rules.push(rule(
                        "filter",
                        FORWARD_CHAIN,
                        f,
                        format!("-i {ovl} -o {iface} -d {r} -j ACCEPT"),
                    ));
                }
            }
            if e.nat
                && let Some(src) = network.ranges().find(|r| Family::of(r) == f)
            {
                masquerade(&mut rules, f, src, iface, &ranges);
            }
        }

        // Ingress: between the overlay and the node's external clients.
        if node.ingress.is_some() {
            let clients: Vec<IpNet> = index
                .parties()
                .iter()
                .filter(
                    |p| matches!(p, Party::Client(c) if c.enabled && c.ingress_node_id == node.id),
                )
                .flat_map(|p| p.prefixes())
                .filter(|n| Family::of(n) == f)
                .collect();
            rules.push(rule(
                "filter",
                FORWARD_CHAIN,
                f,
                format!("-i {ovl} -o {ovl} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
            ));
            policy_lines(
                &mut rules,
                policy,
                &resolved,
                &Target {
                    chain: FORWARD_CHAIN,
                    family: f,
                    head: format!("-i {ovl} -o {ovl}"),
                    allow: "ACCEPT",
                },
                |res| {
                    let touches = |n: &Option<Arc<Vec<IpNet>>>| {
                        n.as_ref().is_none_or(|v| {
                            v.iter().any(|a| clients.iter().any(|c| overlaps(a, c)))
                        })
                    };
                    (touches(&res.src) || touches(&res.dst)).then(|| res.clone())
                },
            );
            rules.push(rule(
                "filter",
                FORWARD_CHAIN,
                f,
                format!(
                    "-i {ovl} -o {ovl} -j {}",
                    if default_deny { "DROP" } else { "ACCEPT" }
                ),
            ));
        }

        // Input: what arrives for the node itself.
        let mut local: Vec<IpNet> = host_prefixes(node.address, node.address6)
            .into_iter()
            .filter(|n| Family::of(n) == f)
            .collect();
        local.extend(ranges.iter().copied());
        let mut input = vec![rule(
            "filter",
            INPUT_CHAIN,
            f,
            format!("-i {ovl} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"),
        )];
        policy_lines(
            &mut input,
            policy,
            &resolved,
            &Target {
                chain: INPUT_CHAIN,
                family: f,
                head: format!("-i {ovl}"),
                allow: "RETURN",
            },
            |res| res.clipped(&local),
        );
        if default_deny {
            input.push(rule("filter", INPUT_CHAIN, f, format!("-i {ovl} -j DROP")));
        }
        if input.iter().any(|r| r.rule.ends_with("-j DROP")) {
            rules.extend(input);
        }
    }
    finish(rules)
}

/// `iptables-restore --noflush` input for one family: both of meshplane's
/// gateway chains are always declared (which flushes them), and
/// [`INPUT_CHAIN`] when it has rules; then they are filled.
pub fn render(rules: &[Rule], family: Family) -> String {
    let mut out = String::new();
    let input = rules
        .iter()
        .any(|r| r.family == family && r.chain == INPUT_CHAIN && !r.hook);
    for (table, chains) in [
        ("filter", &[FORWARD_CHAIN, INPUT_CHAIN][..]),
        ("nat", &[POSTROUTING_CHAIN][..]),
    ] {
        out.push_str(&format!("*{table}\n"));
        for chain in chains {
            if *chain != INPUT_CHAIN || input {
                out.push_str(&format!(":{chain} - [0:0]\n"));
            }
        }
        for chain in chains {
            for r in rules
                .iter()
                .filter(|r| r.family == family && r.chain == *chain && !r.hook)
            {
                out.push_str(&format!("-A {} {}\n", r.chain, r.rule));
            }
        }
        out.push_str("COMMIT\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::config::tests::{network, node};
    use crate::domain::node::{Egress, Ingress};

    fn egress(ranges: &[&str], nat: bool) -> Egress {
        Egress {
            ranges: ranges.iter().map(|r| r.parse().unwrap()).collect(),
            interface: "eth2".into(),
            nat,
            ..Default::default()
        }
    }

    #[test]
    fn egress_with_nat_forwards_and_masquerades() {
        let mut n = node("office", 2);
        n.egress = Some(egress(&["10.10.10.0/24"], true));
        let fw = firewall_for(&network(), &n);
        assert_eq!(
            fw.iptables_restore,
            "*filter\n:MESHPLANE-FWD - [0:0]\n\
             -A MESHPLANE-FWD -i mp-corp -o eth2 -d 10.10.10.0/24 -j ACCEPT\n\
             -A MESHPLANE-FWD -i eth2 -o mp-corp -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
             COMMIT\n\
             *nat\n:MESHPLANE-POSTROUTING - [0:0]\n\
             -A MESHPLANE-POSTROUTING -s 10.101.0.0/16 -o eth2 -d 10.10.10.0/24 -j MASQUERADE\n\
             COMMIT\n"
        );
        assert!(fw.ipv4_forwarding && !fw.ipv6_forwarding);
        assert!(!fw.ip6tables_restore.contains("-A "));
        let hooks: Vec<_> = fw.rules.iter().filter(|r| r.hook).collect();
        assert_eq!(hooks.len(), 2);
    }

    #[test]
    fn nat_off_has_no_masquerade_but_keeps_the_chain_declared() {
        let mut n = node("office", 2);
        n.egress = Some(egress(&["10.10.10.0/24", "fd10::/64"], false));
        let fw = firewall_for(&network(), &n);
        assert!(!fw.iptables_restore.contains("MASQUERADE"));
        assert!(
            fw.iptables_restore
                .contains(":MESHPLANE-POSTROUTING - [0:0]")
        );
        assert!(fw.ip6tables_restore.contains("-d fd10::/64 -j ACCEPT"));
        assert!(fw.ipv6_forwarding);
    }

    #[test]
    fn vpn_gateway_and_ingress() {
        let mut n = node("server", 1);
        n.egress = Some(egress(&["0.0.0.0/0", "::/0"], true));
        n.ingress = Some(Ingress::default());
        let fw = firewall_for(&network(), &n);
        assert!(
            fw.iptables_restore
                .contains("-s 10.101.0.0/16 -o eth2 -d 0.0.0.0/0 -j MASQUERADE")
        );
        assert!(
            fw.ip6tables_restore
                .contains("-s fd00:101::/64 -o eth2 -d ::/0 -j MASQUERADE")
        );
        assert!(
            fw.iptables_restore
                .contains("-A MESHPLANE-FWD -i mp-corp -o mp-corp -j ACCEPT")
        );
    }

    #[test]
    fn plain_nodes_get_empty_chains() {
        let fw = firewall_for(&network(), &node("laptop", 3));
        assert!(fw.rules.is_empty());
        assert!(!fw.ipv4_forwarding);
        assert_eq!(
            fw.iptables_restore,
            "*filter\n:MESHPLANE-FWD - [0:0]\nCOMMIT\n*nat\n:MESHPLANE-POSTROUTING - [0:0]\nCOMMIT\n"
        );
    }
}
