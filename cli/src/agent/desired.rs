//! From the node's config (as the server sends it) to what the host should
//! have. Pure but for the endpoint resolver it is handed.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use ipnet::IpNet;
use meshplane_sdk::proto as pb;

use super::plan::{Desired, Family, FirewallSpec, Hook, PeerSpec};

/// The config, turned into a [`Desired`]; `notes` says what could not be
/// used (an unparsable range, an endpoint that does not resolve).
pub fn desired(
    cfg: &pb::NodeConfig,
    public_key: &str,
    control: &[IpAddr],
    resolve: &dyn Fn(&str) -> Option<SocketAddr>,
) -> (Desired, Vec<String>) {
    let mut notes = Vec::new();
    let nets = |notes: &mut Vec<String>, what: &str, list: &[String]| -> Vec<IpNet> {
        list.iter()
            .filter_map(|s| match s.parse::<IpNet>() {
                Ok(n) => Some(n.trunc()),
                Err(_) => {
                    notes.push(format!("{what}: {s:?} is not a range; left out"));
                    None
                }
            })
            .collect()
    };
    let iface = cfg.interface.clone().unwrap_or_default();
    // Addresses keep their host part (10.101.0.3/16).
    let addresses: BTreeSet<IpNet> = iface
        .addresses
        .iter()
        .filter_map(|s| s.parse::<IpNet>().ok())
        .collect();
    let mut peers = BTreeMap::new();
    for p in &cfg.peers {
        let mut allowed = nets(&mut notes, "peer allowed_ips", &p.allowed_ips);
        allowed.sort();
        allowed.dedup();
        let endpoint = if p.endpoint.is_empty() {
            None
        } else {
            let r = p
                .endpoint
                .parse::<SocketAddr>()
                .ok()
                .or_else(|| resolve(&p.endpoint));
            if r.is_none() {
                notes.push(format!(
                    "peer {}: endpoint {:?} does not resolve; left to the peer to reach us",
                    p.name, p.endpoint
                ));
            }
            r
        };
        peers.insert(
            p.public_key.clone(),
            PeerSpec {
                endpoint,
                allowed_ips: allowed,
                keepalive: u16::try_from(p.persistent_keepalive).unwrap_or(u16::MAX),
            },
        );
    }
    let mut routes = BTreeSet::new();
    let mut full_tunnel = BTreeSet::new();
    for r in nets(
        &mut notes,
        "route",
        &cfg.routes
            .iter()
            .map(|r| r.destination.clone())
            .collect::<Vec<_>>(),
    ) {
        if r.prefix_len() == 0 {
            full_tunnel.insert(Family::of(&r));
        } else {
            routes.insert(r);
        }
    }
    let fw = cfg.firewall.clone().unwrap_or_default();
    let mut forwarding = BTreeSet::new();
    if fw.ipv4_forwarding {
        forwarding.insert(Family::V4);
    }
    if fw.ipv6_forwarding {
        forwarding.insert(Family::V6);
    }
    let mut firewall = BTreeMap::new();
    for (f, text) in [
        (Family::V4, &fw.iptables_restore),
        (Family::V6, &fw.ip6tables_restore),
    ] {
        let hooks: BTreeSet<Hook> = fw
            .rules
            .iter()
            .filter(|r| r.hook && Family::from_number(r.family) == Some(f))
            .map(|r| Hook {
                family: f,
                table: r.table.clone(),
                chain: r.chain.clone(),
                rule: r.rule.clone(),
            })
            .collect();
        // A family without rules needs no chains at all on this host.
        if hooks.is_empty() && !text.lines().any(|l| l.starts_with("-A ")) {
            continue;
        }
        firewall.insert(
            f,
            FirewallSpec {
                restore: text.clone(),
                hooks,
            },
        );
    }
    (
        Desired {
            public_key: public_key.to_owned(),
            listen_port: u16::try_from(iface.listen_port).unwrap_or(0),
            mtu: iface.mtu,
            addresses,
            peers,
            routes,
            full_tunnel,
            forwarding,
            firewall,
            control: control.to_vec(),
        },
        notes,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> pb::NodeConfig {
        pb::NodeConfig {
            revision: 3,
            interface: Some(pb::InterfaceConfig {
                name: "wg0".into(),
                addresses: vec!["10.101.0.3/16".into(), "fd00:101::3/64".into()],
                listen_port: 51821,
                mtu: 1420,
            }),
            peers: vec![
                pb::Peer {
                    public_key: "GW".into(),
                    endpoint: "10.200.0.2:51821".into(),
                    allowed_ips: vec![
                        "10.101.0.2/32".into(),
                        "0.0.0.0/0".into(),
                        "10.10.10.0/24".into(),
                    ],
                    persistent_keepalive: 20,
                    name: "gw".into(),
                    ext_client: false,
                },
                pb::Peer {
                    public_key: "NAT".into(),
                    endpoint: "gw.example:51821".into(),
                    allowed_ips: vec!["10.101.0.4/32".into()],
                    ..Default::default()
                },
            ],
            routes: vec![
                pb::Route {
                    destination: "10.10.10.0/24".into(),
                    via_peer: "GW".into(),
                    dev: "wg0".into(),
                },
                pb::Route {
                    destination: "0.0.0.0/0".into(),
                    via_peer: "GW".into(),
                    dev: "wg0".into(),
                },
            ],
            firewall: Some(pb::FirewallConfig {
                iptables_restore: "*filter\n:MESHPLANE-FWD - [0:0]\nCOMMIT\n".into(),
                ip6tables_restore: "*filter\n:MESHPLANE-FWD - [0:0]\nCOMMIT\n".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_config_becomes_what_the_host_should_have() {
        let resolve =
            |s: &str| (s == "gw.example:51821").then(|| "192.0.2.4:51821".parse().unwrap());
        let (d, notes) = desired(&config(), "ME", &[], &resolve);
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(d.listen_port, 51821);
        assert_eq!(d.addresses.len(), 2);
        assert!(d.addresses.contains(&"10.101.0.3/16".parse().unwrap()));
        assert_eq!(
            d.peers["GW"].allowed_ips.first().unwrap().to_string(),
            "0.0.0.0/0",
            "sorted"
        );
        assert_eq!(
            d.peers["NAT"].endpoint,
            Some("192.0.2.4:51821".parse().unwrap())
        );
        // The default route is a full tunnel, not a main-table route.
        assert_eq!(d.routes.len(), 1);
        assert!(d.full_tunnel.contains(&Family::V4));
        // Empty chains on a plain node: no firewall at all.
        assert!(d.firewall.is_empty());
        assert!(d.forwarding.is_empty());
    }

    #[test]
    fn what_cannot_be_used_is_noted() {
        let mut c = config();
        c.peers[0].allowed_ips.push("nonsense".into());
        let (d, notes) = desired(&c, "ME", &[], &|_| None);
        assert_eq!(d.peers["NAT"].endpoint, None);
        assert_eq!(notes.len(), 2, "{notes:?}");
    }

    #[test]
    fn gateway_rules_and_hooks_are_kept_per_family() {
        let mut c = config();
        let fw = c.firewall.as_mut().unwrap();
        fw.ipv4_forwarding = true;
        fw.iptables_restore =
            "*filter\n:MESHPLANE-FWD - [0:0]\n-A MESHPLANE-FWD -i wg0 -o eth1 -j ACCEPT\nCOMMIT\n"
                .into();
        fw.rules.push(pb::FirewallRule {
            table: "filter".into(),
            chain: "FORWARD".into(),
            rule: "-j MESHPLANE-FWD".into(),
            family: 4,
            hook: true,
        });
        let (d, _) = desired(&c, "ME", &[], &|_| None);
        assert_eq!(d.firewall.len(), 1);
        assert_eq!(d.firewall[&Family::V4].hooks.len(), 1);
        assert!(d.forwarding.contains(&Family::V4));
    }
}
