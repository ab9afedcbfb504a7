//! Tests of the policy core: validation, evaluation, the rendered
//! firewall (walked by a small simulator of iptables' first-match
//! evaluation), peer pruning and the flow preview; unit tests of the
//! issue's cases, then property tests over random small networks and
//! policies.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use proptest::prelude::*;

use super::super::config::tests::{client, network, node};
use super::super::config::{DnsRecord, NetworkView, NodeConfig, node_config};
use super::super::error::Error;
use super::super::ext_client::ExtClient;
use super::super::firewall::{FORWARD_CHAIN, Family, INPUT_CHAIN, firewall_for};
use super::super::node::{Egress, Ingress, Node};
use super::diff::flow_changes;
use super::eval::{DecidedBy, Dest, Party, PolicyIndex, Sender, test_access};
use super::prune::{Reach, all_pieces, peer_plan};
use super::*;

// ---- building blocks

fn tags(t: &[&str]) -> Vec<Tag> {
    t.iter().map(|t| Tag::parse("t", t).unwrap()).collect()
}

/// A rule from its parts as an operator writes them.
fn r(
    src: &[&str],
    dst: &[&str],
    protocols: &[Protocol],
    ports: &[&str],
    action: Action,
) -> RuleInput {
    RuleInput {
        name: String::new(),
        sources: src.iter().map(|s| s.to_string()).collect(),
        destinations: dst.iter().map(|s| s.to_string()).collect(),
        protocols: protocols.iter().copied().map(Some).collect(),
        ports: ports.iter().map(|s| s.to_string()).collect(),
        action: Some(action),
    }
}

fn policy(default: Action, rules: Vec<RuleInput>) -> Policy {
    PolicyInput {
        default_action: Some(default),
        rules,
    }
    .validate()
    .unwrap()
}

/// The issue's end-to-end policy: default DENY and "tag ops →
/// 10.10.10.0/24 tcp/8080".
fn ops_reach_the_lan() -> Policy {
    policy(
        Action::Deny,
        vec![r(
            &["tag:ops"],
            &["10.10.10.0/24"],
            &[Protocol::Tcp],
            &["8080"],
            Action::Allow,
        )],
    )
}

fn egress(ranges: &[&str], nat: bool) -> Option<Egress> {
    Some(Egress {
        ranges: ranges.iter().map(|r| r.parse().unwrap()).collect(),
        interface: "eth2".into(),
        nat,
        ..Default::default()
    })
}

/// web (tag web), db, office (egress 10.10.10.0/24 and fd10::/64), server
/// (ingress) with clients laptop (tag ops) and phone.
fn corp(p: Policy) -> NetworkView {
    let mut web = node("web", 1);
    web.tags = tags(&["web"]);
    let db = node("db", 2);
    let mut office = node("office", 3);
    office.egress = egress(&["10.10.10.0/24", "fd10::/64"], true);
    let mut server = node("server", 4);
    server.ingress = Some(Ingress::default());
    let mut laptop = client("laptop", &server, 9);
    laptop.tags = tags(&["ops"]);
    let phone = client("phone", &server, 10);
    NetworkView {
        network: network(),
        nodes: vec![web, db, office, server],
        ext_clients: vec![laptop, phone],
        dns_entries: vec![],
        revision: 7,
        policy: p,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn verdict(view: &NetworkView, from: &str, to: &str, t: Traffic) -> Action {
    test_access(view, from, to, t).unwrap().action
}

fn fields(e: Error) -> Vec<String> {
    match e {
        Error::InvalidArgument(v) => v.into_iter().map(|f| f.field).collect(),
        other => panic!("{other:?}"),
    }
}

// ---- validation

#[test]
fn violations_point_at_the_rule_and_field() {
    let mut bad = r(
        &["*"],
        &["tag:ops"],
        &[Protocol::Tcp],
        &["443"],
        Action::Allow,
    );
    bad.destinations.push("tag:Ops".into());
    let e = PolicyInput {
        default_action: None,
        rules: vec![
            r(&["*"], &["*"], &[], &[], Action::Allow),
            r(&["10.0.0.0/8"], &["*"], &[], &[], Action::Allow),
            r(&["*"], &["*"], &[Protocol::Icmp], &["80"], Action::Deny),
            bad,
            RuleInput {
                action: None,
                protocols: vec![None],
                ..r(
                    &[],
                    &["nobody:x", "10.0.0.1/8"],
                    &[],
                    &["70000"],
                    Action::Allow,
                )
            },
        ],
    }
    .validate()
    .unwrap_err();
    assert_eq!(
        fields(e),
        vec![
            "policy.rules[1].sources[0]",
            "policy.rules[2].ports",
            "policy.rules[3].destinations[1]",
            "policy.rules[4].sources",
            "policy.rules[4].destinations[0]",
            "policy.rules[4].destinations[1]",
            "policy.rules[4].protocols[0]",
            "policy.rules[4].ports[0]",
            // No "ports need TCP and/or UDP" on top of a refused protocol.
            "policy.rules[4].action",
        ]
    );
}

#[test]
fn rule_names_are_labels_and_unique() {
    let named = |n: &str| RuleInput {
        name: n.into(),
        ..r(&["*"], &["*"], &[], &[], Action::Allow)
    };
    let e = PolicyInput {
        default_action: None,
        rules: vec![named("web"), named("web"), named("Web")],
    }
    .validate()
    .unwrap_err();
    assert_eq!(
        fields(e),
        vec!["policy.rules[1].name", "policy.rules[2].name"]
    );
    let too_many = PolicyInput {
        default_action: None,
        rules: vec![r(&["*"], &["*"], &[], &[], Action::Allow); MAX_RULES + 1],
    };
    assert_eq!(
        fields(too_many.validate().unwrap_err()),
        vec!["policy.rules"]
    );
}

#[test]
fn selectors_round_trip_and_normalize() {
    let p = policy(
        Action::Deny,
        vec![r(
            &["tag:ops", "node:web", "client:phone", "*", "tag:ops"],
            &["10.10.10.0/24", "10.10.10.7", "fd10::/64", "client:phone"],
            &[Protocol::Udp, Protocol::Tcp, Protocol::Tcp],
            &["8000-8999", "53", "8500"],
            Action::Allow,
        )],
    );
    let rule = &p.rules[0];
    let shown: Vec<String> = rule.sources.iter().map(ToString::to_string).collect();
    assert_eq!(shown, vec!["tag:ops", "node:web", "client:phone", "*"]);
    assert_eq!(rule.destinations[1].to_string(), "10.10.10.7/32");
    assert_eq!(rule.protocols, vec![Protocol::Tcp, Protocol::Udp]);
    assert_eq!(
        rule.ports
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec!["53", "8000-8999"]
    );
    for s in shown {
        assert_eq!(Selector::parse("s", &s, false).unwrap().to_string(), s);
    }
    // Stored as JSON and read back.
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(serde_json::from_str::<Policy>(&json).unwrap(), p);
    assert!(Selector::parse("s", "10.0.0.1/8", true).is_err());
}

#[test]
fn tags_are_labels_sorted_deduplicated_and_bounded() {
    let raw: Vec<String> = ["ops", "db", "ops"].iter().map(|s| s.to_string()).collect();
    let t = parse_tags("node.tags", &raw).unwrap();
    assert_eq!(t, tags(&["db", "ops"]));
    let bad: Vec<String> = ["ops", "Bad"].iter().map(|s| s.to_string()).collect();
    assert_eq!(
        parse_tags("node.tags", &bad).unwrap_err().field,
        "node.tags[1]"
    );
    let many: Vec<String> = (0..=MAX_TAGS).map(|i| format!("t{i}")).collect();
    assert_eq!(
        parse_tags("node.tags", &many).unwrap_err().field,
        "node.tags"
    );
    assert!(Tag::parse("t", &"a".repeat(TAG_MAX + 1)).is_err());
}

// ---- evaluation

#[test]
fn default_deny_without_rules_blocks_everything() {
    let view = corp(policy(Action::Deny, vec![]));
    let index = PolicyIndex::of_view(&view);
    for x in index.parties() {
        for y in index.parties() {
            for a in y.prefixes() {
                assert!(
                    !index.may_send(Sender::Party(*x), Dest::Addr(a.addr())),
                    "{} -> {a}",
                    x.label()
                );
            }
        }
        assert!(!index.may_send(
            Sender::Party(*x),
            Dest::Range("10.10.10.0/24".parse().unwrap())
        ));
    }
    let v = test_access(&view, "web", "db", Traffic::Tcp(22)).unwrap();
    assert_eq!(v.decided_by, DecidedBy::Default);
    assert!(v.reason.contains("no rule matches tcp/22"), "{}", v.reason);
    // Nobody keeps a peer or a route; every node drops what arrives on its
    // interface (the control stream and WireGuard's own packets travel
    // outside it).
    for n in &view.nodes {
        let c = node_config(&view, &n.id).unwrap();
        assert!(
            c.peers.values().all(|p| p.ext_client),
            "{}: {:?}",
            n.name,
            c.peers
        );
        assert!(c.routes.is_empty());
        assert!(
            c.firewall
                .iptables_restore
                .contains("-A MESHPLANE-IN -i mp-corp -j DROP"),
            "{}",
            c.firewall.iptables_restore
        );
        assert!(
            c.firewall
                .ip6tables_restore
                .contains("-A MESHPLANE-IN -i mp-corp -j DROP")
        );
        assert!(
            c.firewall
                .rules
                .iter()
                .any(|r| r.hook && r.rule == "-j MESHPLANE-IN")
        );
    }
}

#[test]
fn the_first_matching_rule_decides() {
    let view = corp(policy(
        Action::Deny,
        vec![
            r(
                &["tag:ops"],
                &["node:db"],
                &[Protocol::Tcp],
                &["22"],
                Action::Deny,
            ),
            r(&["tag:ops"], &["*"], &[], &[], Action::Allow),
            r(
                &["*"],
                &["node:db"],
                &[Protocol::Tcp],
                &["5432"],
                Action::Allow,
            ),
        ],
    ));
    assert_eq!(
        verdict(&view, "laptop", "db", Traffic::Tcp(22)),
        Action::Deny
    );
    assert_eq!(
        verdict(&view, "laptop", "db", Traffic::Tcp(23)),
        Action::Allow
    );
    assert_eq!(verdict(&view, "laptop", "db", Traffic::Icmp), Action::Allow);
    assert_eq!(
        verdict(&view, "web", "db", Traffic::Tcp(5432)),
        Action::Allow
    );
    assert_eq!(
        verdict(&view, "web", "db", Traffic::Udp(5432)),
        Action::Deny
    );
    assert_eq!(
        verdict(&view, "phone", "db", Traffic::Tcp(22)),
        Action::Deny
    );
    let v = test_access(&view, "c-laptop", "10.101.0.2", Traffic::Tcp(22)).unwrap();
    assert_eq!(
        v.decided_by,
        DecidedBy::Rule {
            index: 0,
            name: None
        }
    );
    assert!(
        v.reason.starts_with("rule 0 denies tcp/22 from client:laptop (matches source tag:ops) to node:db (10.101.0.2)"),
        "{}",
        v.reason
    );
    assert!(matches!(
        test_access(&view, "nobody", "db", Traffic::Icmp),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn overlapping_cidrs_split_a_range() {
    let view = corp(policy(
        Action::Allow,
        vec![
            r(&["*"], &["10.10.10.128/25"], &[], &[], Action::Deny),
            r(
                &["*"],
                &["10.10.10.0/24"],
                &[Protocol::Tcp],
                &["8080"],
                Action::Deny,
            ),
        ],
    ));
    assert_eq!(
        verdict(&view, "web", "10.10.10.200", Traffic::Icmp),
        Action::Deny
    );
    assert_eq!(
        verdict(&view, "web", "10.10.10.5", Traffic::Icmp),
        Action::Allow
    );
    assert_eq!(
        verdict(&view, "web", "10.10.10.5", Traffic::Tcp(8080)),
        Action::Deny
    );
    // Ranges are previewed in the pieces the rules cut them into.
    let changes = flow_changes(&view, &Policy::default(), &view.policy);
    let web: Vec<(String, Vec<String>)> = changes
        .iter()
        .filter(|c| c.source == "node:web")
        .map(|c| (c.destination.clone(), c.denied.describe()))
        .collect();
    assert_eq!(
        web,
        vec![
            ("10.10.10.0/25".to_owned(), vec!["tcp/8080".to_owned()]),
            ("10.10.10.128/25".to_owned(), vec!["all".to_owned()]),
        ]
    );
    // The gateway renders both, in order, before accepting its range.
    let office = node_config(&view, "id-office").unwrap();
    let fwd: Vec<&str> = office
        .firewall
        .rules
        .iter()
        .filter(|r| r.family == Family::V4 && r.chain == FORWARD_CHAIN)
        .map(|r| r.rule.as_str())
        .collect();
    assert_eq!(
        fwd,
        vec![
            "-i eth2 -o mp-corp -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-i mp-corp -o eth2 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-i mp-corp -o eth2 -d 10.10.10.128/25 -j DROP",
            "-i mp-corp -o eth2 -d 10.10.10.0/24 -p tcp --dport 8080 -j DROP",
            "-i mp-corp -o eth2 -d 10.10.10.0/24 -j ACCEPT",
        ]
    );
}

#[test]
fn ipv6_is_filtered_by_ip6tables_with_icmpv6() {
    let view = corp(policy(
        Action::Deny,
        vec![
            r(
                &["node:web"],
                &["node:db"],
                &[Protocol::Icmp],
                &[],
                Action::Allow,
            ),
            r(
                &["node:web"],
                &["fd10::/64"],
                &[Protocol::Tcp],
                &["443"],
                Action::Allow,
            ),
        ],
    ));
    assert_eq!(
        verdict(&view, "web", "fd00:101::2", Traffic::Icmp),
        Action::Allow
    );
    assert_eq!(
        verdict(&view, "web", "fd10::8", Traffic::Tcp(443)),
        Action::Allow
    );
    assert_eq!(
        verdict(&view, "web", "fd10::8", Traffic::Tcp(80)),
        Action::Deny
    );
    let db = node_config(&view, "id-db").unwrap();
    assert!(
        db.firewall
            .ip6tables_restore
            .contains("-A MESHPLANE-IN -i mp-corp -s fd00:101::1/128 -d fd00:101::2/128 -p ipv6-icmp -j RETURN"),
        "{}",
        db.firewall.ip6tables_restore
    );
    assert!(db.firewall.iptables_restore.contains(
        "-A MESHPLANE-IN -i mp-corp -s 10.101.0.1/32 -d 10.101.0.2/32 -p icmp -j RETURN"
    ));
    let office = node_config(&view, "id-office").unwrap();
    assert!(
        office
            .firewall
            .ip6tables_restore
            .contains("-A MESHPLANE-FWD -i mp-corp -o eth2 -s fd00:101::1/128 -d fd10::/64 -p tcp --dport 443 -j ACCEPT"),
        "{}",
        office.firewall.ip6tables_restore
    );
    // web keeps office for fd10::/64 only, and db; db keeps web.
    let web = node_config(&view, "id-web").unwrap();
    let office_peer = web.peers.values().find(|p| p.name == "office").unwrap();
    let allowed: Vec<String> = office_peer
        .allowed_ips
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        allowed,
        vec!["10.101.0.3/32", "fd00:101::3/128", "fd10::/64"]
    );
    assert_eq!(web.routes.len(), 1);
    assert_eq!(web.routes[0].destination.to_string(), "fd10::/64");
    let names = |c: &NodeConfig| c.peers.values().map(|p| p.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&web), vec!["db", "office"]);
    assert_eq!(names(&db), vec!["web"]);
}

#[test]
fn tags_select_nodes_and_clients_by_their_addresses() {
    let view = corp(policy(
        Action::Deny,
        vec![r(
            &["tag:ops"],
            &["tag:web"],
            &[Protocol::Tcp],
            &["443"],
            Action::Allow,
        )],
    ));
    assert_eq!(
        verdict(&view, "laptop", "web", Traffic::Tcp(443)),
        Action::Allow
    );
    assert_eq!(
        verdict(&view, "laptop", "fd00:101::1", Traffic::Tcp(443)),
        Action::Allow
    );
    assert_eq!(
        verdict(&view, "phone", "web", Traffic::Tcp(443)),
        Action::Deny
    );
    let web = node_config(&view, "id-web").unwrap();
    assert!(
        web.firewall
            .iptables_restore
            .contains("-A MESHPLANE-IN -i mp-corp -s 10.101.1.9/32 -d 10.101.0.1/32 -p tcp --dport 443 -j RETURN"),
        "{}",
        web.firewall.iptables_restore
    );
    // The ingress filters its clients' traffic too; it keeps web (for
    // laptop) and web keeps it with laptop's address only.
    let server = node_config(&view, "id-server").unwrap();
    assert!(
        server
            .firewall
            .iptables_restore
            .contains("-A MESHPLANE-FWD -i mp-corp -o mp-corp -s 10.101.1.9/32 -d 10.101.0.1/32 -p tcp --dport 443 -j ACCEPT")
    );
    assert!(
        server
            .firewall
            .iptables_restore
            .contains("-A MESHPLANE-FWD -i mp-corp -o mp-corp -j DROP")
    );
    let names: Vec<&str> = server.peers.values().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["web", "laptop", "phone"]);
    let to_server = web.peers.values().find(|p| p.name == "server").unwrap();
    let allowed: Vec<String> = to_server
        .allowed_ips
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        allowed,
        vec!["10.101.0.4/32", "10.101.1.9/32", "fd00:101::4/128"]
    );
}

#[test]
fn aggregated_sources_stay_exact() {
    let mut view = corp(policy(
        Action::Deny,
        vec![r(&["tag:ops"], &["node:db"], &[], &[], Action::Allow)],
    ));
    for n in view.nodes.iter_mut() {
        n.tags = tags(&["ops"]);
    }
    let db = node_config(&view, "id-db").unwrap();
    // web .1, office .3, server .4 and the laptop: .1 and .3-.4 are not
    // one prefix, .2 (db) is not tagged... db is: .1-.4 make /30 (0 not).
    assert!(
        db.firewall.iptables_restore.contains(
            "-s 10.101.0.1/32,10.101.0.2/31,10.101.0.4/32,10.101.1.9/32 -d 10.101.0.2/32 -j RETURN"
        ),
        "{}",
        db.firewall.iptables_restore
    );
}

#[test]
fn an_unrestricted_policy_changes_no_config() {
    let plain = corp(Policy::default());
    let allow_rules = corp(policy(
        Action::Allow,
        vec![r(
            &["tag:ops"],
            &["10.10.10.0/24"],
            &[Protocol::Tcp],
            &["22"],
            Action::Allow,
        )],
    ));
    for n in &plain.nodes {
        let a = node_config(&plain, &n.id).unwrap();
        assert_eq!(a.firewall, firewall_for(&plain.network, n));
        assert_eq!(node_config(&allow_rules, &n.id).unwrap(), a);
    }
    assert!(flow_changes(&plain, &Policy::default(), &allow_rules.policy).is_empty());
}

/// The issue's end-to-end case: default DENY and "tag ops →
/// 10.10.10.0/24 tcp/8080".
#[test]
fn ops_reach_the_lan_on_8080_only() {
    let view = corp(ops_reach_the_lan());
    assert_eq!(
        verdict(&view, "laptop", "10.10.10.5", Traffic::Tcp(8080)),
        Action::Allow
    );
    assert_eq!(
        verdict(&view, "laptop", "10.10.10.5", Traffic::Tcp(8081)),
        Action::Deny
    );
    assert_eq!(
        verdict(&view, "web", "10.10.10.5", Traffic::Tcp(8080)),
        Action::Deny
    );
    let office = node_config(&view, "id-office").unwrap();
    assert!(office.firewall.iptables_restore.contains(
        "-A MESHPLANE-FWD -i mp-corp -o eth2 -s 10.101.1.9/32 -d 10.10.10.0/24 -p tcp --dport 8080 -j ACCEPT\n\
         -A MESHPLANE-FWD -i mp-corp -o eth2 -j DROP\n"
    ));
    // Only the laptop's ingress and the gateway keep each other.
    let names = |id: &str| {
        node_config(&view, id)
            .unwrap()
            .peers
            .values()
            .map(|p| p.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names("id-server"), vec!["office", "laptop", "phone"]);
    assert_eq!(names("id-office"), vec!["server"]);
    assert!(names("id-web").is_empty());
    let server = node_config(&view, "id-server").unwrap();
    let routes: Vec<String> = server
        .routes
        .iter()
        .map(|r| r.destination.to_string())
        .collect();
    assert_eq!(routes, vec!["10.10.10.0/24"]);
    // What cutting it again previews: exactly the laptop's flow.
    let cut = flow_changes(&view, &view.policy, &policy(Action::Deny, vec![]));
    assert_eq!(cut.len(), 1);
    assert_eq!(cut[0].source, "client:laptop");
    assert_eq!(cut[0].destination, "10.10.10.0/24");
    assert_eq!(cut[0].destination_id, "id-office");
    assert_eq!(cut[0].denied.describe(), vec!["tcp/8080"]);
    assert!(cut[0].allowed.is_empty());
}

/// Under a restricting policy a node's zone holds the custom entries, its
/// own name and the names of what it keeps, nothing else.
#[test]
fn the_zone_a_node_sees_holds_what_it_keeps() {
    let mut view = corp(ops_reach_the_lan());
    view.dns_entries = vec![DnsRecord {
        name: "nas".into(),
        address: Some(Ipv4Addr::new(10, 10, 10, 20)),
        address6: None,
    }];
    let names = |view: &NetworkView, id: &str| {
        node_config(view, id)
            .unwrap()
            .dns
            .records
            .iter()
            .map(|r| r.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&view, "id-web"), vec!["nas.corp", "web.corp"]);
    // The gateway keeps the ingress and, of its clients, the laptop only.
    assert_eq!(
        names(&view, "id-office"),
        vec!["laptop.corp", "nas.corp", "office.corp", "server.corp"]
    );
    // The ingress: its own clients, and the gateway it keeps.
    assert_eq!(
        names(&view, "id-server"),
        vec![
            "laptop.corp",
            "nas.corp",
            "office.corp",
            "phone.corp",
            "server.corp"
        ]
    );
    // An unrestricted policy: every name, as without one.
    view.policy = Policy::default();
    assert_eq!(names(&view, "id-web").len(), 7);
}

#[test]
fn a_narrowing_change_previews_exactly_the_flows_cut() {
    let before = policy(Action::Allow, vec![]);
    let after = policy(
        Action::Allow,
        vec![r(
            &["client:phone"],
            &["node:db"],
            &[Protocol::Tcp],
            &["5432"],
            Action::Deny,
        )],
    );
    let view = corp(before.clone());
    let changes = flow_changes(&view, &before, &after);
    assert_eq!(changes.len(), 1, "{changes:?}");
    let c = &changes[0];
    assert_eq!(
        (
            c.source.as_str(),
            c.destination.as_str(),
            c.destination_address
        ),
        ("client:phone", "node:db", None)
    );
    assert_eq!(c.denied.describe(), vec!["tcp/5432"]);
    let back = flow_changes(&view, &after, &before);
    assert_eq!(back[0].allowed.describe(), vec!["tcp/5432"]);
}

// ---- the simulator

/// A packet as a chain sees it.
#[derive(Debug, Clone, Copy)]
struct Packet<'a> {
    in_if: &'a str,
    out_if: Option<&'a str>,
    src: IpAddr,
    dst: IpAddr,
    traffic: Traffic,
}

fn list_contains(list: &str, a: IpAddr) -> bool {
    list.split(',')
        .any(|n| n.parse::<IpNet>().is_ok_and(|n| n.contains(&a)))
}

/// Walks `chain`'s rules of the family in order for a new connection's
/// packet; the target of the first that matches, None when none does.
fn walk(c: &NodeConfig, chain: &str, p: Packet<'_>) -> Option<String> {
    let family = match p.dst {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    };
    'rules: for r in c
        .firewall
        .rules
        .iter()
        .filter(|r| !r.hook && r.table == "filter" && r.chain == chain && r.family == family)
    {
        let w: Vec<&str> = r.rule.split_ascii_whitespace().collect();
        let mut i = 0;
        let mut target = None;
        while i < w.len() {
            let v = w.get(i + 1).copied().unwrap_or_default();
            let ok = match w[i] {
                "-i" => v == p.in_if,
                "-o" => Some(v) == p.out_if,
                "-s" => list_contains(v, p.src),
                "-d" => list_contains(v, p.dst),
                "-p" => {
                    matches!(
                        (v, p.traffic),
                        ("tcp", Traffic::Tcp(_))
                            | ("udp", Traffic::Udp(_))
                            | ("icmp", Traffic::Icmp)
                            | ("ipv6-icmp", Traffic::Icmp)
                    ) && !(v == "icmp" && family == Family::V6)
                        && !(v == "ipv6-icmp" && family == Family::V4)
                }
                "--dport" => {
                    let port = match p.traffic {
                        Traffic::Tcp(x) | Traffic::Udp(x) => x,
                        _ => unreachable!("--dport without -p tcp/udp"),
                    };
                    let (a, b) = v.split_once(':').unwrap_or((v, v));
                    a.parse::<u16>().unwrap() <= port && port <= b.parse::<u16>().unwrap()
                }
                // A new connection is neither established nor related.
                "-m" if v == "conntrack" => {
                    assert_eq!(w[i + 2], "--ctstate");
                    i += 2;
                    false
                }
                "-j" => {
                    target = Some(v.to_owned());
                    true
                }
                other => panic!("unknown match {other} in {}", r.rule),
            };
            if !ok {
                continue 'rules;
            }
            i += 2;
        }
        return target;
    }
    None
}

fn party_addr(p: &Party<'_>, family_of: IpAddr) -> Option<IpAddr> {
    let (a, b) = p.addresses();
    match family_of {
        IpAddr::V4(_) => a.map(IpAddr::V4),
        IpAddr::V6(_) => b.map(IpAddr::V6),
    }
}

/// The node a party's packets enter the overlay at (None: a disabled
/// client, which is nobody's peer).
fn host<'a>(view: &'a NetworkView, p: &Party<'a>) -> Option<&'a Node> {
    match p {
        Party::Node(n) => Some(n),
        Party::Client(c) => {
            let ingress = view.nodes.iter().find(|n| n.id == c.ingress_node_id)?;
            (c.enabled && ingress.ingress.is_some()).then_some(ingress)
        }
    }
}

/// Traffic worth trying: around every port a rule names, and the rest.
fn samples(p: &Policy) -> Vec<Traffic> {
    let mut ports = vec![1u16, 22, 443, 65535];
    for r in &p.rules {
        for pr in &r.ports {
            ports.extend([
                pr.first.saturating_sub(1),
                pr.first,
                pr.last,
                pr.last.saturating_add(1),
            ]);
        }
    }
    ports.sort();
    ports.dedup();
    let mut t: Vec<Traffic> = ports
        .iter()
        .flat_map(|p| [Traffic::Tcp(*p), Traffic::Udp(*p)])
        .collect();
    t.extend([Traffic::Icmp, Traffic::Other(47)]);
    t
}

/// Addresses to try inside a range: its first and last, and the first of
/// every piece the policy cuts it into.
fn range_samples(view: &NetworkView, range: IpNet) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = range_pieces(&view.policy, &view.network, &view.nodes, range)
        .into_iter()
        .flat_map(|p| [p.network(), p.broadcast()])
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Every node's rendered chains decide every packet routed to or through
/// it as [`PolicyIndex::evaluate`] does. Returns what disagrees.
fn disagreements(view: &NetworkView) -> Vec<String> {
    let index = PolicyIndex::of_view(view);
    let traffic = samples(&view.policy);
    let mut bad = Vec::new();
    let parties = index.parties().to_vec();
    for n in &view.nodes {
        let c = node_config(view, &n.id).unwrap();
        let ovl = c.interface.name.clone();
        let mut check = |what: &str,
                         x: &Party<'_>,
                         dst: IpAddr,
                         decide: &dyn Fn(Packet<'_>) -> Option<Action>| {
            let Some(src) = party_addr(x, dst) else {
                return;
            };
            for t in &traffic {
                let want = index.evaluate(Sender::Party(*x), dst, *t).action;
                let p = Packet {
                    in_if: &ovl,
                    out_if: None,
                    src,
                    dst,
                    traffic: *t,
                };
                let got = decide(p);
                if got != Some(want) {
                    bad.push(format!(
                        "{what} on {}: {} -> {dst} {t}: chain {got:?}, evaluate {want:?}",
                        n.name,
                        x.label()
                    ));
                }
            }
        };
        let input = |p: Packet<'_>| match walk(&c, INPUT_CHAIN, p).as_deref() {
            Some("DROP") => Some(Action::Deny),
            Some("RETURN") | None => Some(Action::Allow),
            other => panic!("{other:?}"),
        };
        let forward = |out: &str| {
            let c = &c;
            let out = out.to_owned();
            move |p: Packet<'_>| match walk(
                c,
                FORWARD_CHAIN,
                Packet {
                    out_if: Some(&out),
                    ..p
                },
            )
            .as_deref()
            {
                Some("DROP") => Some(Action::Deny),
                Some("ACCEPT") => Some(Action::Allow),
                None => None,
                other => panic!("{other:?}"),
            }
        };
        let ranges: Vec<IpNet> = n.egress.iter().flat_map(|e| e.ranges.clone()).collect();
        for x in parties.iter().filter(|x| x.id() != n.id) {
            // To the node itself.
            for a in Party::Node(n).prefixes() {
                check("input", x, a.addr(), &input);
            }
            // Into its ranges: forwarded, or (its own address there) input.
            if let Some(e) = &n.egress {
                for r in &ranges {
                    for a in range_samples(view, *r) {
                        if index.owner(a).is_some() {
                            continue;
                        }
                        check("egress", x, a, &forward(&e.interface));
                        check("input", x, a, &input);
                    }
                }
            }
        }
        // Between its clients and everyone.
        if n.ingress.is_some() {
            let mine: Vec<&Party<'_>> = parties
                .iter()
                .filter(|p| matches!(p, Party::Client(c) if c.enabled && c.ingress_node_id == n.id))
                .collect();
            for x in &parties {
                for y in &parties {
                    if x.id() == y.id()
                        || !(mine.iter().any(|m| m.id() == x.id())
                            || mine.iter().any(|m| m.id() == y.id()))
                    {
                        continue;
                    }
                    if y.id() == n.id {
                        continue;
                    }
                    for a in y.prefixes() {
                        check("ingress", x, a.addr(), &forward(&ovl));
                    }
                }
                if mine.iter().any(|m| m.id() == x.id()) {
                    for g in view.nodes.iter().filter(|g| g.id != n.id) {
                        for r in g.egress.iter().flat_map(|e| e.ranges.clone()) {
                            for a in range_samples(view, r) {
                                if index.owner(a).is_none() {
                                    check("ingress", x, a, &forward(&ovl));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    bad
}

#[test]
fn rendered_chains_agree_with_evaluation_on_the_corp_network() {
    for p in [
        Policy::default(),
        policy(Action::Deny, vec![]),
        policy(
            Action::Deny,
            vec![
                r(
                    &["tag:ops"],
                    &["10.10.10.0/24"],
                    &[Protocol::Tcp],
                    &["8080"],
                    Action::Allow,
                ),
                r(
                    &["*"],
                    &["node:db"],
                    &[Protocol::Tcp, Protocol::Udp],
                    &["53", "5000-6000"],
                    Action::Allow,
                ),
                r(
                    &["client:phone"],
                    &["*"],
                    &[Protocol::Icmp],
                    &[],
                    Action::Allow,
                ),
            ],
        ),
        policy(
            Action::Allow,
            vec![
                r(
                    &["node:web"],
                    &["10.10.10.128/25", "fd10::/65"],
                    &[],
                    &[],
                    Action::Deny,
                ),
                r(
                    &["tag:ops"],
                    &["*"],
                    &[Protocol::Tcp],
                    &["22"],
                    Action::Deny,
                ),
            ],
        ),
    ] {
        let view = corp(p);
        let bad = disagreements(&view);
        assert!(bad.is_empty(), "{:#?}", &bad[..bad.len().min(10)]);
    }
}

/// Every flow the policy allows has its WireGuard path in the configs:
/// the sender's entry node keeps the receiver's (or the range's gateway's)
/// peer with the destination in its allowed IPs (and a route to a range),
/// and the receiver's node keeps the sender's for the replies.
fn missing_paths(view: &NetworkView) -> Vec<String> {
    let index = PolicyIndex::of_view(view);
    let configs: std::collections::HashMap<&str, NodeConfig> = view
        .nodes
        .iter()
        .map(|n| (n.id.as_str(), node_config(view, &n.id).unwrap()))
        .collect();
    let has = |from: &Node, to: &Node, a: IpNet| {
        configs[from.id.as_str()]
            .peers
            .get(&to.public_key)
            .is_some_and(|p| p.allowed_ips.iter().any(|n| n.contains(&a)))
    };
    let mut bad = Vec::new();
    for x in index.parties() {
        let Some(hx) = host(view, x) else { continue };
        for y in index.parties() {
            let Some(hy) = host(view, y) else { continue };
            if hx.id == hy.id || x.id() == y.id() {
                continue;
            }
            for a in y.prefixes() {
                if !index.may_send(Sender::Party(*x), Dest::Addr(a.addr())) {
                    continue;
                }
                if !has(hx, hy, a) {
                    bad.push(format!(
                        "{} lacks {} for {} -> {a}",
                        hx.name,
                        hy.name,
                        x.label()
                    ));
                }
                for b in x
                    .prefixes()
                    .into_iter()
                    .filter(|b| Family::of(b) == Family::of(&a))
                {
                    if !has(hy, hx, b) {
                        bad.push(format!(
                            "{} lacks {} for replies to {}",
                            hy.name,
                            hx.name,
                            x.label()
                        ));
                    }
                }
            }
        }
        for g in view.nodes.iter().filter(|g| g.id != hx.id) {
            for r in g.egress.iter().flat_map(|e| e.ranges.clone()) {
                let pieces = range_pieces(&view.policy, &view.network, &view.nodes, r);
                if !pieces
                    .iter()
                    .any(|p| index.may_send(Sender::Party(*x), Dest::Range(*p)))
                {
                    continue;
                }
                if !has(hx, g, r) {
                    bad.push(format!(
                        "{} lacks {} for {} -> {r}",
                        hx.name,
                        g.name,
                        x.label()
                    ));
                }
                if !configs[hx.id.as_str()]
                    .routes
                    .iter()
                    .any(|rt| rt.destination == r && rt.via_peer == g.public_key)
                {
                    bad.push(format!("{} has no route to {r}", hx.name));
                }
                for b in x
                    .prefixes()
                    .into_iter()
                    .filter(|b| Family::of(b) == Family::of(&r))
                {
                    if !has(g, hx, b) {
                        bad.push(format!("{} lacks {} for replies from {r}", g.name, hx.name));
                    }
                }
            }
        }
    }
    bad
}

#[test]
fn pruning_keeps_every_path_of_the_corp_network() {
    for p in [
        policy(Action::Deny, vec![]),
        ops_reach_the_lan(),
        policy(
            Action::Deny,
            vec![r(&["node:db"], &["client:phone"], &[], &[], Action::Allow)],
        ),
    ] {
        let view = corp(p);
        assert_eq!(missing_paths(&view), Vec::<String>::new());
    }
}

// ---- property tests

const TAGS: &[&str] = &["a", "b", "c"];
const SOURCES: &[&str] = &["*", "tag:a", "tag:b", "node:n1", "node:n2", "client:c1"];
const DESTS: &[&str] = &[
    "*",
    "tag:a",
    "tag:c",
    "node:n2",
    "client:c1",
    "client:c2",
    "10.10.10.0/25",
    "10.10.0.0/16",
    "10.10.10.7",
    "fd10::/64",
    "10.101.0.0/30",
    "fd00:101::/120",
    "0.0.0.0/1",
];
const RANGES: &[&str] = &[
    "10.10.10.0/24",
    "10.10.0.0/16",
    "192.168.1.0/24",
    "fd10::/64",
    "0.0.0.0/0",
];
const PORTS: &[&str] = &["22", "80-443", "443", "8000-8999", "53"];

fn any_tags() -> impl Strategy<Value = Vec<Tag>> {
    prop::sample::subsequence(TAGS, 0..=2).prop_map(|t| tags(&t))
}

fn any_rule() -> impl Strategy<Value = RuleInput> {
    (
        prop::sample::subsequence(SOURCES, 1..=2),
        prop::sample::subsequence(DESTS, 1..=3),
        prop::sample::subsequence(&[Protocol::Tcp, Protocol::Udp, Protocol::Icmp][..], 0..=2),
        prop::sample::subsequence(PORTS, 0..=2),
        any::<bool>(),
    )
        .prop_map(|(s, d, mut protocols, mut ports, allow)| {
            if protocols.contains(&Protocol::Icmp) || protocols.is_empty() {
                ports.clear();
            }
            protocols.sort();
            r(
                &s,
                &d,
                &protocols,
                &ports,
                if allow { Action::Allow } else { Action::Deny },
            )
        })
}

fn any_policy() -> impl Strategy<Value = Policy> {
    (any::<bool>(), prop::collection::vec(any_rule(), 0..5))
        .prop_map(|(allow, rules)| policy(if allow { Action::Allow } else { Action::Deny }, rules))
}

/// 2 to 5 nodes (tags, maybe an egress gateway for distinct ranges, maybe
/// an ingress gateway, maybe without IPv6) and up to 3 clients.
fn any_view() -> impl Strategy<Value = NetworkView> {
    let any_node = (
        any_tags(),
        prop::option::of((prop::sample::subsequence(RANGES, 1..=2), any::<bool>())),
        any::<bool>(),
        any::<bool>(),
    );
    (
        prop::collection::vec(any_node, 2..=5),
        prop::collection::vec(
            (any_tags(), any::<usize>(), any::<bool>(), any::<bool>()),
            0..=3,
        ),
        any_policy(),
    )
        .prop_map(|(nodes, clients, policy)| {
            let mut used: Vec<&str> = Vec::new();
            let mut out: Vec<Node> = Vec::new();
            for (i, (t, eg, ing, v6)) in nodes.into_iter().enumerate() {
                let mut n = node(&format!("n{}", i + 1), i as u8 + 1);
                n.tags = t;
                if let Some((ranges, nat)) = eg {
                    let free: Vec<&str> =
                        ranges.into_iter().filter(|r| !used.contains(r)).collect();
                    if !free.is_empty() {
                        used.extend(&free);
                        n.egress = egress(&free, nat);
                    }
                }
                if ing {
                    n.ingress = Some(Ingress::default());
                }
                if !v6 {
                    n.address6 = None;
                }
                out.push(n);
            }
            let ingresses: Vec<Node> = out
                .iter()
                .filter(|n| n.ingress.is_some())
                .cloned()
                .collect();
            let mut cl: Vec<ExtClient> = Vec::new();
            if !ingresses.is_empty() {
                for (i, (t, pick, enabled, v6)) in clients.into_iter().enumerate() {
                    let mut c = client(
                        &format!("c{}", i + 1),
                        &ingresses[pick % ingresses.len()],
                        i as u8 + 1,
                    );
                    c.tags = t;
                    c.enabled = enabled;
                    if v6 {
                        c.address6 =
                            Some(Ipv6Addr::new(0xfd00, 0x101, 0, 0, 0, 0, 1, i as u16 + 1));
                    }
                    cl.push(c);
                }
            }
            NetworkView {
                network: network(),
                nodes: out,
                ext_clients: cl,
                dns_entries: vec![],
                revision: 1,
                policy,
            }
        })
}

proptest! {
    #![proptest_config(crate::domain::proptests::config(64))]

    /// A small simulator of iptables walks every node's rendered chains for
    /// packets routed to and through it and gets evaluate's verdict.
    #[test]
    fn prop_rendered_chains_agree_with_evaluation(view in any_view()) {
        let bad = disagreements(&view);
        prop_assert!(bad.is_empty(), "{:#?}\n{:#?}", &bad[..bad.len().min(8)], view.policy);
    }

    /// Grouped pruning ([`Reach`]) keeps exactly what asking about every
    /// pair of parties keeps ([`peer_plan`]), for every node.
    #[test]
    fn prop_grouped_pruning_equals_pairwise(view in any_view()) {
        let reach = Reach::new(
            PolicyIndex::of_view(&view),
            all_pieces(&PolicyIndex::of_view(&view), &view.network, &view.nodes),
        );
        for n in &view.nodes {
            let pairwise =
                peer_plan(reach.index(), reach.pieces(), &view.nodes, &view.ext_clients, n);
            prop_assert_eq!(reach.plan(&n.id), Some(pairwise), "{}\n{:#?}", n.id, view.policy);
        }
        prop_assert_eq!(reach.plan("no-such-node"), None);
    }

    /// A node's zone holds exactly the custom entries, its own name, its
    /// peers' names and the names of the clients it keeps (as the pairwise
    /// definition of pruning decides).
    #[test]
    fn prop_a_zone_names_what_the_node_keeps(mut view in any_view()) {
        view.dns_entries = vec![DnsRecord {
            name: "nas".into(),
            address: Some(Ipv4Addr::new(10, 10, 10, 20)),
            address6: None,
        }];
        let index = PolicyIndex::of_view(&view);
        let pieces = all_pieces(&index, &view.network, &view.nodes);
        let name_of = |id: &str| index.party(id).unwrap().name().to_owned();
        for n in &view.nodes {
            let c = node_config(&view, &n.id).unwrap();
            let mut want: Vec<String> = vec!["nas".into(), n.name.to_string()];
            if view.policy.is_unrestricted() {
                want.extend(index.parties().iter().map(|p| p.name().to_owned()));
            } else {
                want.extend(c.peers.values().map(|p| p.name.clone()));
                let plan = peer_plan(&index, &pieces, &view.nodes, &view.ext_clients, n);
                want.extend(plan.values().flat_map(|k| k.clients.iter().map(|id| name_of(id))));
            }
            let mut want: Vec<String> = want.into_iter().map(|w| format!("{w}.corp")).collect();
            want.sort();
            want.dedup();
            let got: Vec<String> = c.dns.records.iter().map(|r| r.name.clone()).collect();
            prop_assert_eq!(got, want, "{}\n{:#?}", n.id, view.policy);
        }
    }

    /// Pruning never removes a peer, an allowed IP or a route an allowed
    /// flow (or its replies) needs.
    #[test]
    fn prop_pruning_keeps_every_allowed_path(view in any_view()) {
        let bad = missing_paths(&view);
        prop_assert!(bad.is_empty(), "{:#?}\n{:#?}", bad, view.policy);
    }

    /// The grouped preview lists exactly the flows the pairwise definition
    /// does, in its order; cut to a limit, it lists their first ones and
    /// counts them all.
    #[test]
    fn prop_grouped_flow_changes_equal_pairwise(
        view in any_view(),
        other in any_policy(),
        limit in 0usize..6,
    ) {
        let all = super::diff::flow_changes_pairwise(&view, &view.policy, &other);
        prop_assert_eq!(&flow_changes(&view, &view.policy, &other), &all);
        let (first, total) =
            super::diff::flow_changes_within(&view, &view.policy, &other, limit);
        prop_assert_eq!(total, all.len());
        prop_assert_eq!(&first[..], &all[..limit.min(all.len())]);
    }

    /// The preview is empty exactly when the two policies decide every
    /// sampled packet alike, and every packet decided differently is in a
    /// change of its flow, on the right side.
    #[test]
    fn prop_flow_changes_list_exactly_what_changes(view in any_view(), other in any_policy()) {
        let changes = flow_changes(&view, &view.policy, &other);
        let old = PolicyIndex::of_view(&view);
        let new = PolicyIndex::new(&other, &view.nodes, &view.ext_clients);
        let mut traffic = samples(&view.policy);
        traffic.extend(samples(&other));
        let mut differs = false;
        for x in old.parties() {
            let mut dsts: Vec<(IpAddr, String)> = old
                .parties()
                .iter()
                .filter(|y| y.id() != x.id())
                .flat_map(|y| y.prefixes().into_iter().map(move |a| (a.addr(), y.label())))
                .collect();
            for g in view.nodes.iter().filter(|g| g.id != x.id()) {
                for r in g.egress.iter().flat_map(|e| e.ranges.clone()) {
                    let mut both = other.clone();
                    both.rules.extend(view.policy.rules.iter().cloned());
                    for p in range_pieces(&both, &view.network, &view.nodes, r) {
                        dsts.push((p.network(), g.id.clone()));
                    }
                }
            }
            for (a, label) in dsts {
                for t in &traffic {
                    let before = old.evaluate(Sender::Party(*x), a, *t).action;
                    let after = new.evaluate(Sender::Party(*x), a, *t).action;
                    if before == after {
                        continue;
                    }
                    differs = true;
                    let found = changes.iter().any(|c| {
                        c.source == x.label()
                            && (c.destination == label || c.destination_id == label)
                            && c.destination_address.is_none_or(|d| d == a)
                            && (c.destination.parse::<IpNet>().map_or(true, |n| n.contains(&a)))
                            && if after == Action::Allow { c.allowed.contains(*t) } else { c.denied.contains(*t) }
                    });
                    prop_assert!(found, "{} -> {a} {t}: {before:?} -> {after:?} not in {changes:#?}", x.label());
                }
            }
        }
        prop_assert_eq!(differs, !changes.is_empty(), "{:#?}", changes);
    }
}

/// A client whose name is another party's id takes nothing of that
/// party: not its rule bits as a sender, not its lookup by id.
#[test]
fn a_name_equal_to_another_partys_id_takes_nothing_of_it() {
    let p = policy(
        Action::Deny,
        vec![r(&["tag:web"], &["node:db"], &[], &[], Action::Allow)],
    );
    let plain = corp(p.clone());
    let mut twisted = corp(p);
    let web_id = twisted.nodes[0].id.clone();
    twisted.ext_clients[1].name = DnsLabel::parse("name", &web_id, DnsLabel::LABEL_MAX).unwrap();
    let index = PolicyIndex::of_view(&twisted);
    assert_eq!(index.party(&web_id).map(|p| p.id()), Some(web_id.as_str()));
    let web = Sender::Party(Party::Node(&twisted.nodes[0]));
    let db = ip("10.101.0.2");
    assert_eq!(
        index.evaluate(web, db, Traffic::Tcp(80)).action,
        Action::Allow
    );
    for n in &plain.nodes {
        assert_eq!(
            node_config(&twisted, &n.id).unwrap().peers.len(),
            node_config(&plain, &n.id).unwrap().peers.len(),
            "{}",
            n.name
        );
    }
}

#[test]
fn foreign_senders_match_only_any() {
    let view = corp(policy(
        Action::Deny,
        vec![
            r(&["tag:ops"], &["*"], &[], &[], Action::Allow),
            r(
                &["*"],
                &["node:db"],
                &[Protocol::Tcp],
                &["80"],
                Action::Allow,
            ),
        ],
    ));
    let index = PolicyIndex::of_view(&view);
    let db = ip("10.101.0.2");
    assert_eq!(
        index.evaluate(Sender::Foreign, db, Traffic::Tcp(80)).action,
        Action::Allow
    );
    assert_eq!(
        index.evaluate(Sender::Foreign, db, Traffic::Tcp(81)).action,
        Action::Deny
    );
    let _ = Ipv4Addr::LOCALHOST;
}
