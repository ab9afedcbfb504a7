//! Firewall rules of gateway nodes, rendered as `iptables-restore --noflush`
//! input on meshplane's own chains, so applying them never touches anyone
//! else's rules. Pure: same state in, same text out.

use ipnet::IpNet;

use super::config::node_interface;
use super::network::Network;
use super::node::Node;

/// meshplane's chain in the filter table, jumped to from FORWARD.
pub const FORWARD_CHAIN: &str = "MESHPLANE-FWD";
/// meshplane's chain in the nat table, jumped to from POSTROUTING.
pub const POSTROUTING_CHAIN: &str = "MESHPLANE-POSTROUTING";

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

    fn of(net: &IpNet) -> Self {
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
                for r in &ranges {
                    rules.push(rule(
                        "nat",
                        POSTROUTING_CHAIN,
                        f,
                        format!("-s {src} -o {iface} -d {r} -j MASQUERADE"),
                    ));
                }
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

    let forwards = |f: Family| rules.iter().any(|r| r.family == f);
    let ipv4_forwarding = forwards(Family::V4);
    let ipv6_forwarding = forwards(Family::V6);
    let mut hooks = Vec::new();
    for f in [Family::V4, Family::V6] {
        if rules.iter().any(|r| r.family == f && r.table == "filter") {
            hooks.push(Rule {
                hook: true,
                ..rule("filter", "FORWARD", f, format!("-j {FORWARD_CHAIN}"))
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

/// `iptables-restore --noflush` input for one family: both of meshplane's
/// chains are always declared (which flushes them), then filled.
pub fn render(rules: &[Rule], family: Family) -> String {
    let mut out = String::new();
    for (table, chain) in [("filter", FORWARD_CHAIN), ("nat", POSTROUTING_CHAIN)] {
        out.push_str(&format!("*{table}\n:{chain} - [0:0]\n"));
        for r in rules
            .iter()
            .filter(|r| r.family == family && r.table == table && !r.hook)
        {
            out.push_str(&format!("-A {} {}\n", r.chain, r.rule));
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
