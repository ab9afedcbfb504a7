//! ExplainRoute: the path a packet from a node or external client to an
//! address takes, as WireGuard and the rendered routes decide it.

use std::net::IpAddr;

use ipnet::IpNet;

use super::config::NetworkView;
use super::config::{host_prefixes, node_config};
use super::error::{Error, Result};
use super::ext_client::ExtClient;
use super::node::{Node, WgKey};
use super::policy::{
    TrafficSet,
    eval::{Dest, Party, PolicyIndex, Sender},
};
use super::wgquick::ext_client_allowed_ips;

/// One step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// Where the packet is (a node's or client's name).
    pub at: String,
    /// What happens there.
    pub action: String,
    /// The allowed-IPs entry or route that matched.
    pub matched_prefix: Option<IpNet>,
    /// The WireGuard peer chosen.
    pub peer: Option<WgKey>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Explanation {
    /// A route exists.
    pub routable: bool,
    /// The steps.
    pub hops: Vec<Hop>,
    /// Egress gateway that carries the packet out.
    pub egress_node_id: Option<String>,
    /// Its interface.
    pub egress_interface: Option<String>,
    /// Whether it masquerades.
    pub nat: bool,
    /// Why not, when not routable.
    pub reason: String,
    /// What the network's access policy lets the sender send to the
    /// destination, in words (see [`policy_verdict`]).
    pub policy: String,
}

impl Explanation {
    fn hop(&mut self, at: &str, action: String, matched: Option<IpNet>, peer: Option<WgKey>) {
        self.hops.push(Hop {
            at: at.to_owned(),
            action,
            matched_prefix: matched,
            peer,
        });
    }

    fn no_route(mut self, reason: String) -> Self {
        self.routable = false;
        self.reason = reason;
        self
    }

    fn done(mut self) -> Self {
        self.routable = true;
        self
    }
}

fn longest<'a>(
    candidates: impl IntoIterator<Item = (&'a IpNet, WgKey)>,
    dest: IpAddr,
) -> Option<(IpNet, WgKey)> {
    candidates
        .into_iter()
        .filter(|(n, _)| n.contains(&dest))
        .max_by_key(|(n, _)| n.prefix_len())
        .map(|(n, k)| (*n, k))
}

/// Explains the path from node or client `from_id` to `dest`; NOT_FOUND
/// when neither exists in the view's network.
pub fn explain(view: &NetworkView, from_id: &str, dest: IpAddr) -> Result<Explanation> {
    let (mut ex, from) = if let Some(node) = view.nodes.iter().find(|n| n.id == from_id) {
        (
            from_node(view, node, dest, Explanation::default()),
            Party::Node(node),
        )
    } else if let Some(client) = view.ext_clients.iter().find(|c| c.id == from_id) {
        (from_client(view, client, dest), Party::Client(client))
    } else {
        return Err(Error::not_found("node or external client", from_id));
    };
    let index = PolicyIndex::of_view(view);
    let allowed = index.allowed(Sender::Party(from), Dest::Addr(dest));
    ex.policy = policy_verdict(&index, from, dest, &allowed);
    if !ex.routable && allowed.is_empty() {
        // The policy pruned the path: say so rather than only that no
        // peer covers the address.
        ex.reason = format!("{}; {}", ex.policy, ex.reason);
    }
    Ok(ex)
}

/// What the policy lets `from` send to `dest`, in words: "the policy
/// allows all traffic from node:a to 10.1.0.3", "… allows only tcp/443,
/// icmp …", or "… denies all traffic …" (then the path is left out of the
/// configs: no peer or route carries it).
pub fn policy_verdict(
    index: &PolicyIndex<'_>,
    from: Party<'_>,
    dest: IpAddr,
    allowed: &TrafficSet,
) -> String {
    let to = match index.owner(dest) {
        Some(p) => format!("{} ({dest})", p.label()),
        None => dest.to_string(),
    };
    let what = if index.is_unrestricted() {
        return format!(
            "the network's policy restricts nothing: all traffic from {} to {to} is allowed",
            from.label()
        );
    } else if allowed.is_all() {
        "allows all traffic".to_owned()
    } else if allowed.is_empty() {
        "denies all traffic".to_owned()
    } else {
        format!("allows only {}", allowed.describe().join(", "))
    };
    format!("the network's policy {what} from {} to {to}", from.label())
}

fn from_client(view: &NetworkView, c: &ExtClient, dest: IpAddr) -> Explanation {
    let mut ex = Explanation::default();
    let name = c.name.as_str();
    if !c.enabled {
        return ex.no_route(format!(
            "external client {name:?} is disabled: its ingress gateway does not accept it"
        ));
    }
    if host_prefixes(c.address, c.address6)
        .iter()
        .any(|p| p.contains(&dest))
    {
        ex.hop(
            name,
            "the destination is the client itself".into(),
            None,
            None,
        );
        return ex.done();
    }
    let allowed = ext_client_allowed_ips(&view.network, &view.nodes);
    let Some(m) = allowed
        .iter()
        .filter(|n| n.contains(&dest))
        .max_by_key(|n| n.prefix_len())
    else {
        return ex.no_route(format!(
            "{dest} is outside the client's AllowedIPs ({}): its traffic to {dest} does not \
             enter the tunnel; add an egress gateway for a range containing it",
            allowed
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let Some(ingress) = view.nodes.iter().find(|n| n.id == c.ingress_node_id) else {
        return ex.no_route(format!(
            "the client's ingress node {} is gone",
            c.ingress_node_id
        ));
    };
    ex.hop(
        name,
        format!(
            "sends it through WireGuard to its ingress gateway {:?}",
            ingress.name.as_str()
        ),
        Some(*m),
        Some(ingress.public_key),
    );
    from_node(view, ingress, dest, ex)
}

fn from_node(view: &NetworkView, node: &Node, dest: IpAddr, mut ex: Explanation) -> Explanation {
    let name = node.name.as_str();
    if host_prefixes(node.address, node.address6)
        .iter()
        .any(|p| p.contains(&dest))
    {
        ex.hop(
            name,
            "the destination is this node itself".into(),
            None,
            None,
        );
        return ex.done();
    }
    let cfg = node_config(view, &node.id).expect("node is in the view");
    let best_peer = longest(
        cfg.peers
            .values()
            .flat_map(|p| p.allowed_ips.iter().map(move |n| (n, p.public_key))),
        dest,
    );
    let own_egress = node.egress.as_ref().and_then(|e| {
        e.ranges
            .iter()
            .filter(|r| r.contains(&dest))
            .max_by_key(|r| r.prefix_len())
            .map(|r| (*r, e))
    });
    match (best_peer, own_egress) {
        (peer, Some((r, e))) if peer.is_none_or(|(p, _)| r.prefix_len() > p.prefix_len()) => {
            egress_out(&mut ex, node, r, e);
            ex.done()
        }
        (Some((prefix, key)), _) => {
            let peer = &cfg.peers[&key];
            if peer.ext_client {
                ex.hop(
                    name,
                    format!(
                        "sends it through WireGuard to its external client {:?}",
                        peer.name
                    ),
                    Some(prefix),
                    Some(key),
                );
                return ex.done();
            }
            let next = view
                .nodes
                .iter()
                .find(|m| m.public_key == key)
                .expect("peer is a node of the view");
            ex.hop(
                name,
                format!("sends it through WireGuard to {:?}", next.name.as_str()),
                Some(prefix),
                Some(key),
            );
            at_peer(view, next, prefix, dest, ex)
        }
        (None, _) => {
            let inside = view.network.ranges().any(|r| r.contains(&dest));
            ex.no_route(if inside {
                format!(
                    "no node or external client of network {:?} has address {dest}",
                    view.network.name.as_str()
                )
            } else {
                format!(
                    "no egress gateway of network {:?} serves a range containing {dest}",
                    view.network.name.as_str()
                )
            })
        }
    }
}

fn egress_out(ex: &mut Explanation, gw: &Node, range: IpNet, e: &super::node::Egress) {
    let nat = if e.nat {
        "masquerading the source as its own address there".to_owned()
    } else {
        "keeping the source address (NAT is off: the destination network needs a return \
         route to the overlay via this node)"
            .to_owned()
    };
    ex.hop(
        gw.name.as_str(),
        format!("egress gateway: forwards it out of {}, {nat}", e.interface),
        Some(range),
        None,
    );
    ex.egress_node_id = Some(gw.id.clone());
    ex.egress_interface = Some(e.interface.clone());
    ex.nat = e.nat;
}

fn at_peer(
    view: &NetworkView,
    m: &Node,
    prefix: IpNet,
    dest: IpAddr,
    mut ex: Explanation,
) -> Explanation {
    if host_prefixes(m.address, m.address6)
        .iter()
        .any(|p| p.contains(&dest))
    {
        ex.hop(
            m.name.as_str(),
            "delivers it: the destination is this node".into(),
            None,
            None,
        );
        return ex.done();
    }
    if let Some(e) = m.egress.as_ref().filter(|e| e.ranges.contains(&prefix)) {
        egress_out(&mut ex, m, prefix, e);
        return ex.done();
    }
    if let Some(c) = view.ext_clients.iter().find(|c| {
        c.ingress_node_id == m.id && host_prefixes(c.address, c.address6).contains(&prefix)
    }) {
        ex.hop(
            m.name.as_str(),
            format!(
                "ingress gateway: forwards it to its external client {:?}",
                c.name.as_str()
            ),
            Some(prefix),
            Some(c.public_key),
        );
        return ex.done();
    }
    ex.no_route(format!(
        "{:?} has no route onward for {dest}",
        m.name.as_str()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::config::tests::{client, network, node};
    use crate::domain::node::{Egress, Endpoint, Ingress};

    fn view() -> (NetworkView, Node, Node, ExtClient) {
        let mut server = node("server", 1);
        server.ingress = Some(Ingress::default());
        server.endpoint = Some(Endpoint::parse("e", "1.2.3.4:51821").unwrap());
        let mut office = node("office", 2);
        office.egress = Some(Egress {
            ranges: vec!["10.10.10.0/24".parse().unwrap()],
            interface: "eth2".into(),
            nat: true,
            ..Default::default()
        });
        let phone = client("phone", &server, 9);
        let v = NetworkView {
            network: network(),
            nodes: vec![server.clone(), office.clone()],
            ext_clients: vec![phone.clone()],
            dns_entries: vec![],
            revision: 1,
            policy: Default::default(),
        };
        (v, server, office, phone)
    }

    #[test]
    fn client_to_office_lan_goes_through_ingress_then_egress() {
        let (v, _server, office, phone) = view();
        let ex = explain(&v, &phone.id, "10.10.10.2".parse().unwrap()).unwrap();
        assert!(ex.routable, "{ex:?}");
        assert_eq!(ex.hops.len(), 3, "{ex:#?}");
        assert_eq!(ex.hops[0].at, "phone");
        assert_eq!(ex.hops[1].at, "server");
        assert_eq!(ex.hops[1].peer, Some(office.public_key));
        assert_eq!(ex.egress_node_id.as_deref(), Some(office.id.as_str()));
        assert_eq!(ex.egress_interface.as_deref(), Some("eth2"));
        assert!(ex.nat);
    }

    #[test]
    fn unreachable_destinations_say_why() {
        let (v, server, _, phone) = view();
        let ex = explain(&v, &phone.id, "192.168.1.1".parse().unwrap()).unwrap();
        assert!(!ex.routable);
        assert!(ex.reason.contains("AllowedIPs"), "{}", ex.reason);
        let ex = explain(&v, &server.id, "192.168.1.1".parse().unwrap()).unwrap();
        assert!(ex.reason.contains("no egress gateway"), "{}", ex.reason);
        let ex = explain(&v, &server.id, "10.101.7.7".parse().unwrap()).unwrap();
        assert!(
            ex.reason.contains("no node or external client"),
            "{}",
            ex.reason
        );
        assert!(explain(&v, "nobody", "10.0.0.1".parse().unwrap()).is_err());
    }

    #[test]
    fn node_to_client_and_gateway_to_own_range() {
        let (v, _, office, phone) = view();
        let ex = explain(&v, &office.id, phone.address.unwrap().into()).unwrap();
        assert!(ex.routable);
        assert_eq!(ex.hops.last().unwrap().peer, Some(phone.public_key));
        let ex = explain(&v, &office.id, "10.10.10.9".parse().unwrap()).unwrap();
        assert_eq!(ex.hops.len(), 1);
        assert_eq!(ex.egress_node_id.as_deref(), Some(office.id.as_str()));
    }
}
