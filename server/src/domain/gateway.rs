//! Egress and ingress gateways: validation and the rules between gateways.

use ipnet::IpNet;

use super::config::node_interface;
use super::error::{Error, FieldViolation, Result, Violations};
use super::host::{HostReport, parse_rule_ifname};
use super::names::{parse_cidr, parse_ips};
use super::network::Network;
use super::node::{Egress, Ingress, Node};

/// CreateEgressGateway's fields as sent.
#[derive(Debug, Clone, Default)]
pub struct EgressInput {
    /// ranges (each entry may be a comma-separated list)
    pub ranges: Vec<String>,
    /// interface
    pub interface: String,
    /// nat_enabled (None = on)
    pub nat: Option<bool>,
    /// metric
    pub metric: Option<u32>,
    /// preempt (None = on)
    pub preempt: Option<bool>,
    /// hold_seconds
    pub hold_seconds: u32,
}

/// Validates the egress interface's name (see [`parse_rule_ifname`]);
/// required.
pub fn parse_interface(field: &str, s: &str) -> Result<String, FieldViolation> {
    if s.is_empty() {
        return Err(FieldViolation::new(
            field,
            "is required: the node's interface that reaches the ranges (e.g. eth0)",
        ));
    }
    parse_rule_ifname(field, s)
}

impl EgressInput {
    /// Validates against the gateway node and its network: ranges parsed,
    /// normalized (host bits must be clear), de-duplicated and sorted, none
    /// inside the network's own ranges. Once the node's agent has reported
    /// its host, the interface is checked against the host's (or picked from
    /// its routing table when empty, see [`egress_interface`]); before that
    /// it is required.
    pub fn validate(self, network: &Network, node: &Node) -> Result<Egress> {
        let mut v = Violations::default();
        let mut ranges: Vec<IpNet> = Vec::new();
        let mut i = 0;
        for entry in &self.ranges {
            for part in entry.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let field = format!("ranges[{i}]");
                i += 1;
                let Some(r) = v.check(parse_cidr(&field, part)) else {
                    continue;
                };
                if let Some(own) = network.ranges().find(|own| own.contains(&r)) {
                    v.add(
                        field,
                        format!(
                            "{r} is inside the network's own range {own}; egress ranges are \
                             outside destinations"
                        ),
                    );
                    continue;
                }
                if !ranges.contains(&r) {
                    ranges.push(r);
                }
            }
        }
        if i == 0 {
            v.add(
                "ranges",
                "at least one range is required (e.g. 10.10.10.0/24 or 0.0.0.0/0)",
            );
        }
        let interface = match (&node.host, self.interface.as_str()) {
            (Some(_), "") => Some(None),
            _ => v
                .check(parse_interface("interface", &self.interface))
                .map(Some),
        };
        v.finish()?;
        ranges.sort();
        let interface = match (&node.host, interface.expect("checked")) {
            (Some(host), requested) => egress_interface(node, host, &ranges, requested)?,
            (None, requested) => requested.expect("required without a host report"),
        };
        Ok(Egress {
            ranges,
            interface,
            nat: self.nat.unwrap_or(true),
            metric: self.metric,
            preempt: self.preempt.unwrap_or(true),
            hold_seconds: self.hold_seconds,
            ..Default::default()
        })
    }
}

/// The interface an egress gateway forwards `ranges` out of, given its
/// host's report: `requested` when the host has it, else (when None) the
/// interface the host's routing table uses for the ranges. For each range
/// the most specific route containing all of it wins (so 0.0.0.0/0 takes the
/// default route); routes through the node's own WireGuard interface are
/// ignored, and among equally specific routes the first reported wins.
/// FAILED_PRECONDITION when the host has no such interface, when a range has
/// no route, or when the ranges leave through different interfaces.
pub fn egress_interface(
    node: &Node,
    host: &HostReport,
    ranges: &[IpNet],
    requested: Option<String>,
) -> Result<String> {
    let name = node.name.as_str();
    let known = || {
        let names = host.interface_names();
        if names.is_empty() {
            "none reported".to_owned()
        } else {
            names.join(", ")
        }
    };
    if let Some(r) = requested {
        if host.has_interface(&r) {
            return Ok(r);
        }
        return Err(Error::FailedPrecondition(format!(
            "node {name} has no interface {r:?}; its interfaces: {}",
            known()
        )));
    }
    let own = node_interface(node);
    let mut picked: Vec<(IpNet, &str)> = Vec::with_capacity(ranges.len());
    for range in ranges {
        let best = host
            .routes
            .iter()
            .filter(|r| r.interface != own && covers(&r.destination, range))
            .fold(
                None,
                |best: Option<&super::host::HostRoute>, r| match best {
                    Some(b) if b.destination.prefix_len() >= r.destination.prefix_len() => Some(b),
                    _ => Some(r),
                },
            );
        match best {
            Some(r) => {
                // Part of the range may leave elsewhere (a LAN /24 inside a
                // /8 the default route covers): one interface would then
                // carry only some of it, silently. Not for a default range,
                // which is "everything else" by design.
                if range.prefix_len() > 0
                    && let Some(inner) = host.routes.iter().find(|i| {
                        i.interface != own
                            && i.interface != r.interface
                            && i.destination.prefix_len() > range.prefix_len()
                            && covers(range, &i.destination)
                    })
                {
                    return Err(Error::FailedPrecondition(format!(
                        "node {name} routes part of {range} elsewhere ({} -> {}) than the rest                          ({range} -> {}): name the interface, or give the parts as separate                          ranges",
                        inner.destination, inner.interface, r.interface
                    )));
                }
                picked.push((*range, r.interface.as_str()))
            }
            None => {
                return Err(Error::FailedPrecondition(format!(
                    "node {name}'s routing table has no route for {range}, so the interface \
                     that reaches it cannot be picked; name it (its interfaces: {})",
                    known()
                )));
            }
        }
    }
    let first = picked
        .first()
        .map(|(_, i)| *i)
        .ok_or_else(|| Error::Internal("egress_interface called without ranges".into()))?;
    if let Err(v) = parse_rule_ifname("interface", first) {
        return Err(Error::FailedPrecondition(format!(
            "node {name}'s routing table sends the ranges out of {first:?}, but {}; name \
             another interface",
            v.description
        )));
    }
    if picked.iter().any(|(_, i)| *i != first) {
        let list: Vec<String> = picked.iter().map(|(r, i)| format!("{r} -> {i}")).collect();
        return Err(Error::FailedPrecondition(format!(
            "node {name} reaches the ranges through different interfaces ({}); an egress \
             gateway forwards out of one: name it, or give only ranges it reaches through one \
             interface",
            list.join(", ")
        )));
    }
    Ok(first.to_owned())
}

/// Whether route destination `route` contains all of `range`.
fn covers(route: &IpNet, range: &IpNet) -> bool {
    match (route, range) {
        (IpNet::V4(a), IpNet::V4(b)) => {
            a.prefix_len() <= b.prefix_len() && a.contains(&b.network())
        }
        (IpNet::V6(a), IpNet::V6(b)) => {
            a.prefix_len() <= b.prefix_len() && a.contains(&b.network())
        }
        _ => false,
    }
}

/// The gateway `node_id` of `nodes` (its network's nodes, itself among
/// them) comes to serve `new` (None: stops being an egress gateway): the
/// egress it gets, with the ranges it is standby for set, and the other
/// gateways whose standby ranges change.
///
/// A range another gateway serves may be shared only when both give a
/// metric (ALREADY_EXISTS otherwise, as for a range served alone). A
/// gateway joins a range that has a primary as a standby (the server moves
/// a range only on health; see [`super::failover`]); it stays primary of
/// ranges it was primary of. A range it leaves while primary goes to the
/// best of the others (lowest metric, then name).
pub fn share_ranges(
    nodes: &[Node],
    node_id: &str,
    new: Option<Egress>,
) -> Result<(Option<Egress>, Vec<Node>)> {
    let me = nodes.iter().find(|n| n.id == node_id);
    let old = me.and_then(|n| n.egress.as_ref());
    let others: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.id != node_id && n.egress.is_some())
        .collect();
    let serving = |r: IpNet| {
        others
            .iter()
            .copied()
            .filter(move |n| n.egress.as_ref().is_some_and(|e| e.ranges.contains(&r)))
    };
    let new = match new {
        None => None,
        Some(mut e) => {
            e.standby.clear();
            for r in &e.ranges {
                let mut them = serving(*r).peekable();
                let Some(first) = them.peek().copied() else {
                    continue;
                };
                if let Some(alone) = std::iter::once(first)
                    .chain(serving(*r))
                    .find(|n| n.egress.as_ref().is_some_and(|x| x.metric.is_none()))
                    .or_else(|| e.metric.is_none().then_some(first))
                {
                    return Err(Error::already_exists(
                        "ranges",
                        format!(
                            "range {r} is already served by egress gateway {:?} ({}); several \
                             gateways may serve a range only when each has a metric",
                            alone.name.as_str(),
                            alone.id
                        ),
                    ));
                }
                let routed_elsewhere = serving(*r).any(|n| {
                    n.egress
                        .as_ref()
                        .is_some_and(|x| x.routed().any(|y| y == r))
                });
                let mine_before = old.is_some_and(|o| o.routed().any(|y| y == r));
                if routed_elsewhere && !mine_before {
                    e.standby.push(*r);
                }
            }
            e.standby.sort();
            Some(e)
        }
    };
    // Ranges it was primary of and no longer is: the best other takes each.
    let mut changed: Vec<Node> = Vec::new();
    for r in old.iter().flat_map(|o| o.routed()) {
        if new.as_ref().is_some_and(|e| e.routed().any(|y| y == r)) {
            continue;
        }
        let best = serving(*r).min_by_key(|n| {
            let e = n.egress.as_ref().expect("serving");
            (e.metric, n.name.as_str(), n.id.as_str())
        });
        if let Some(b) = best {
            let mut b = match changed.iter().position(|c| c.id == b.id) {
                Some(i) => changed.remove(i),
                None => b.clone(),
            };
            if let Some(e) = b.egress.as_mut() {
                e.standby.retain(|y| y != r);
            }
            changed.push(b);
        }
    }
    Ok((new, changed))
}

/// Validates CreateIngressGateway's DNS list.
pub fn ingress(ext_client_dns: &[String]) -> Result<Ingress> {
    let mut v = Violations::default();
    let dns = v.check(parse_ips("ext_client_dns", ext_client_dns));
    v.finish()?;
    Ok(Ingress {
        ext_client_dns: dns.expect("checked"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::config::tests::node;
    use crate::domain::host::{HostInterface, HostRoute};
    use crate::domain::network::NetworkInput;

    fn net() -> Network {
        NetworkInput {
            name: "corp".into(),
            address_range: "10.101.0.0/16".into(),
            address_range6: "fd00:101::/64".into(),
            ..Default::default()
        }
        .validate(chrono::Utc::now())
        .unwrap()
    }

    fn egress(ranges: &[&str], iface: &str) -> Result<Egress> {
        egress_on(&node("gw", 1), ranges, iface)
    }

    fn egress_on(n: &Node, ranges: &[&str], iface: &str) -> Result<Egress> {
        EgressInput {
            ranges: ranges.iter().map(|s| s.to_string()).collect(),
            interface: iface.into(),
            ..Default::default()
        }
        .validate(&net(), n)
    }

    /// A gateway whose host has `eth0` (default route, 192.0.2.0/24), `eth1`
    /// (10.10.10.0/24, IPv6 default route) and `lo`, and whose agent
    /// manages `wg0` (with a stray route to 10.0.0.0/8 through it).
    fn reported() -> Node {
        let mut n = node("gw", 1);
        n.wireguard_interface = Some("wg0".into());
        let iface = |name: &str| HostInterface {
            name: name.into(),
            addresses: vec![],
            up: true,
        };
        let route = |d: &str, dev: &str| HostRoute {
            destination: d.parse().unwrap(),
            interface: dev.into(),
            gateway: None,
        };
        n.host = Some(HostReport {
            interfaces: vec![iface("lo"), iface("eth1"), iface("eth0")],
            routes: vec![
                route("0.0.0.0/0", "eth0"),
                route("192.0.2.0/24", "eth0"),
                route("10.10.10.0/24", "eth1"),
                route("10.0.0.0/8", "wg0"),
                route("::/0", "eth1"),
            ],
            report_time: chrono::Utc::now(),
        });
        n
    }

    fn precondition(r: Result<Egress>) -> String {
        match r {
            Err(Error::FailedPrecondition(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_interface_is_picked_from_the_routing_table() {
        let gw = reported();
        // A LAN /24 (and a part of it) leaves through eth1, not the default.
        assert_eq!(
            egress_on(&gw, &["10.10.10.0/24"], "").unwrap().interface,
            "eth1"
        );
        assert_eq!(
            egress_on(&gw, &["10.10.10.128/25"], "").unwrap().interface,
            "eth1"
        );
        // The whole internet takes the default route.
        assert_eq!(
            egress_on(&gw, &["0.0.0.0/0"], "").unwrap().interface,
            "eth0"
        );
        // Ranges the default route alone covers, routes through the node's own
        // WireGuard interface ignored.
        assert_eq!(
            egress_on(&gw, &["10.20.0.0/16", "198.51.100.0/24"], "")
                .unwrap()
                .interface,
            "eth0"
        );
        assert_eq!(egress_on(&gw, &["::/0"], "").unwrap().interface, "eth1");
    }

    #[test]
    fn ranges_through_different_interfaces_are_refused() {
        let m = precondition(egress_on(&reported(), &["0.0.0.0/0", "::/0"], ""));
        assert!(m.contains("0.0.0.0/0 -> eth0, ::/0 -> eth1"), "{m}");
        let m = precondition(egress_on(
            &reported(),
            &["10.10.10.0/24", "10.20.0.0/16"],
            "",
        ));
        assert!(
            m.contains("10.10.10.0/24 -> eth1, 10.20.0.0/16 -> eth0"),
            "{m}"
        );
        // Naming one is fine.
        assert_eq!(
            egress_on(&reported(), &["0.0.0.0/0", "::/0"], "eth0")
                .unwrap()
                .interface,
            "eth0"
        );
    }

    #[test]
    fn a_range_part_of_which_leaves_elsewhere_is_refused() {
        // 10.0.0.0/8 would take the default route (eth0), but 10.10.10.0/24
        // inside it leaves through eth1.
        let m = precondition(egress_on(&reported(), &["10.0.0.0/8"], ""));
        assert!(
            m.contains("part of 10.0.0.0/8 elsewhere (10.10.10.0/24 -> eth1)"),
            "{m}"
        );
        // A narrower route through the same interface is fine.
        let mut gw = reported();
        gw.host.as_mut().unwrap().routes.push(HostRoute {
            destination: "192.0.2.128/25".parse().unwrap(),
            interface: "eth0".into(),
            gateway: None,
        });
        assert_eq!(
            egress_on(&gw, &["192.0.2.0/24"], "").unwrap().interface,
            "eth0"
        );
    }

    #[test]
    fn a_range_without_a_route_asks_for_the_interface() {
        let mut gw = reported();
        gw.host
            .as_mut()
            .unwrap()
            .routes
            .retain(|r| r.destination.prefix_len() > 0);
        let m = precondition(egress_on(&gw, &["172.16.0.0/12"], ""));
        assert!(m.contains("no route for 172.16.0.0/12"), "{m}");
        assert!(m.contains("name it"), "{m}");
        // A route through the node's own WireGuard interface does not count.
        let m = precondition(egress_on(&gw, &["10.50.0.0/16"], ""));
        assert!(m.contains("no route for 10.50.0.0/16"), "{m}");
    }

    #[test]
    fn an_interface_the_host_lacks_is_refused_naming_those_it_has() {
        let m = precondition(egress_on(&reported(), &["10.10.10.0/24"], "eht1"));
        assert_eq!(
            m,
            "node gw has no interface \"eht1\"; its interfaces: eth0, eth1, lo"
        );
        assert_eq!(
            egress_on(&reported(), &["10.10.10.0/24"], "eth0")
                .unwrap()
                .interface,
            "eth0"
        );
        // A malformed name is still a bad argument.
        assert!(matches!(
            egress_on(&reported(), &["10.10.10.0/24"], "eth 0"),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn an_interface_firewall_rules_cannot_name_is_not_picked() {
        // Found by prop_firewalls_render_valid_iptables_restore_input: a
        // '"' in the egress interface made the rendered rules unparsable.
        let mut gw = reported();
        let host = gw.host.as_mut().unwrap();
        host.interfaces.push(HostInterface {
            name: "lan\"1".into(),
            addresses: vec![],
            up: true,
        });
        host.routes.push(HostRoute {
            destination: "172.16.0.0/12".parse().unwrap(),
            interface: "lan\"1".into(),
            gateway: None,
        });
        let m = precondition(egress_on(&gw, &["172.16.0.0/12"], ""));
        assert!(
            m.contains("iptables-restore") && m.contains("name another"),
            "{m}"
        );
    }

    #[test]
    fn without_a_host_report_the_interface_is_required() {
        let v = match egress(&["10.10.10.0/24"], "") {
            Err(Error::InvalidArgument(v)) => v,
            other => panic!("{other:?}"),
        };
        assert_eq!(v[0].field, "interface");
        assert!(v[0].description.starts_with("is required"));
    }

    #[test]
    fn ranges_are_split_normalized_and_deduplicated() {
        let e = egress(
            &["0.0.0.0/0,::/0", "10.10.10.0/24", " 10.10.10.0/24 "],
            "eth0",
        )
        .unwrap();
        let r: Vec<String> = e.ranges.iter().map(ToString::to_string).collect();
        assert_eq!(r, vec!["0.0.0.0/0", "10.10.10.0/24", "::/0"]);
        assert!(e.nat, "NAT defaults to on");
    }

    #[test]
    fn bad_ranges_and_interfaces_name_their_field() {
        let field = |r: Result<Egress>| match r {
            Err(Error::InvalidArgument(v)) => v[0].field.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(field(egress(&["10.10.10.1/24"], "eth0")), "ranges[0]");
        assert_eq!(
            field(egress(&["10.0.0.0/8", "10.101.4.0/24"], "eth0")),
            "ranges[1]"
        );
        assert_eq!(field(egress(&["fd00:101::/80"], "eth0")), "ranges[0]");
        assert_eq!(field(egress(&[], "eth0")), "ranges");
        assert_eq!(field(egress(&["bogus"], "eth0")), "ranges[0]");
        for bad in [
            "",
            "eth 0",
            "a/b",
            "a:b",
            "sixteen-chars-xx",
            "..",
            "eth\"0",
        ] {
            assert_eq!(
                field(egress(&["10.10.10.0/24"], bad)),
                "interface",
                "{bad:?}"
            );
        }
        assert!(egress(&["10.10.10.0/24"], "fifteen-chars-x").is_ok());
    }

    fn gateway(name: &str, n: u8, ranges: &[&str], metric: Option<u32>) -> Node {
        let mut g = node(name, n);
        g.id = format!("id-{name}");
        g.egress = Some(Egress {
            ranges: ranges.iter().map(|r| r.parse().unwrap()).collect(),
            interface: "eth1".into(),
            metric,
            ..Default::default()
        });
        g
    }

    fn range(r: &str) -> IpNet {
        r.parse().unwrap()
    }

    #[test]
    fn a_range_is_shared_only_when_every_gateway_of_it_has_a_metric() {
        let lan = "10.10.10.0/24";
        let alone = gateway("gw", 1, &[lan], None);
        let want = |metric| gateway("gw2", 2, &[lan], metric).egress;
        for (first, second) in [(None, None), (None, Some(20)), (Some(10), None)] {
            let mut a = alone.clone();
            a.egress.as_mut().unwrap().metric = first;
            let err = share_ranges(&[a, node("gw2", 2)], "id-gw2", want(second)).unwrap_err();
            assert!(
                err.to_string().contains("already served by egress gateway"),
                "{first:?} {second:?}: {err}"
            );
        }
        let a = gateway("gw", 1, &[lan], Some(10));
        let (e, changed) = share_ranges(&[a, node("gw2", 2)], "id-gw2", want(Some(5))).unwrap();
        assert_eq!(
            e.unwrap().standby,
            vec![range(lan)],
            "joins as a standby, even with a better metric"
        );
        assert!(changed.is_empty());
        // Another range of its own is routed through it.
        let a = gateway("gw", 1, &[lan], Some(10));
        let mine = gateway("gw2", 2, &[lan, "10.20.0.0/16"], Some(5)).egress;
        let (e, _) = share_ranges(&[a, node("gw2", 2)], "id-gw2", mine).unwrap();
        let e = e.unwrap();
        assert_eq!(
            e.routed().copied().collect::<Vec<_>>(),
            vec![range("10.20.0.0/16")]
        );
    }

    #[test]
    fn a_primary_that_leaves_hands_its_ranges_to_the_best_other() {
        let lan = "10.10.10.0/24";
        let primary = gateway("gw", 1, &[lan], Some(10));
        let mut b = gateway("gw2", 2, &[lan], Some(30));
        let mut c = gateway("gw3", 3, &[lan], Some(20));
        b.egress.as_mut().unwrap().standby = vec![range(lan)];
        c.egress.as_mut().unwrap().standby = vec![range(lan)];
        let all = [primary.clone(), b.clone(), c.clone()];
        // Re-created with the range, it stays primary.
        let (e, changed) = share_ranges(&all, "id-gw", primary.egress.clone()).unwrap();
        assert!(e.unwrap().standby.is_empty() && changed.is_empty());
        // Gone: gw3 (metric 20) takes it.
        let (e, changed) = share_ranges(&all, "id-gw", None).unwrap();
        assert!(e.is_none());
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].id, "id-gw3");
        assert!(changed[0].egress.as_ref().unwrap().standby.is_empty());
        // A standby leaving changes nobody.
        let (_, changed) = share_ranges(&all, "id-gw2", None).unwrap();
        assert!(changed.is_empty());
    }
}
