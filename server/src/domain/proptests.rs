//! Property tests (issue #13, item 5) of every parser and validator of user
//! input, and of the two text renderers: arbitrary input never panics and a
//! refusal names the field; values generated from a grammar round-trip
//! (parse, print, parse gives the same); the firewall's
//! `iptables-restore` text and the external clients' wg-quick files parse
//! back, with small parsers of those formats, into what was rendered.
//!
//! Run with `cargo test -p meshplane-server prop` (256 cases each, 64
//! sequences for the sync property); longer with
//! `PROPTEST_CASES=10000 cargo test -p meshplane-server prop`. A failure
//! shrinks to a minimal case and its seed is saved under
//! `server/proptest-regressions/`, to be committed with the fix: every run
//! replays it first.
//!
//! The rendered firewall is also fed to the real `iptables-restore` in
//! network namespaces by `tests/tests/firewall_netns.rs`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::{prelude::*, test_runner::FileFailurePersistence};

use super::{
    Error,
    config::{host_prefixes, node_interface},
    crypto::PrivateKey,
    dns::parse_relative_name,
    ext_client::{ExtClient, ExtClientPatch},
    firewall::{Family, firewall_for},
    gateway::{EgressInput, parse_interface},
    host::{parse_ifname, parse_rule_ifname},
    names::{DnsLabel, parse_cidr, parse_ips, parse_range4, parse_range6},
    network::{Network, NetworkInput, NetworkPatch},
    node::{Egress, Endpoint, Ingress, Node, NodePatch, NodeUpdateInput, WgKey},
    page::PageRequest,
    token,
    wgquick::{self, ext_client_allowed_ips, ext_client_dns},
};

/// The config of meshplane's property tests: `cases` unless
/// `PROPTEST_CASES` says otherwise, failures persisted in
/// `proptest-regressions/` beside `src/`.
pub(crate) fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

/// Any string, or one made of the characters the parsers care about.
fn junk() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9a-fA-F:./\\[\\], _+-]{0,40}",
        "[ -~]{0,20}",
    ]
}

fn v4() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}

fn v6() -> impl Strategy<Value = Ipv6Addr> {
    any::<u128>().prop_map(Ipv6Addr::from)
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![v4().prop_map(IpAddr::V4), v6().prop_map(IpAddr::V6)]
}

/// Any network range, host bits possibly set.
fn raw_net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (v4(), 0..=32u8).prop_map(|(a, p)| IpNet::V4(Ipv4Net::new(a, p).unwrap())),
        (v6(), 0..=128u8).prop_map(|(a, p)| IpNet::V6(Ipv6Net::new(a, p).unwrap())),
    ]
}

/// A range without host bits.
fn net() -> impl Strategy<Value = IpNet> {
    raw_net().prop_map(|n| n.trunc())
}

/// A DNS label of 1 to 63 characters.
fn label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
}

/// A name a Linux interface may have (1-15 bytes, none of '/', ':', white
/// space, control characters; not "." or "..").
fn ifname() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,6}[0-9]",
        "[!-~]{1,15}".prop_filter("a Linux name", |s| parse_ifname("f", s).is_ok()),
    ]
}

/// A DNS name that is not a malformed IPv4 address.
fn dns_host() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-zA-Z]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?", 1..4)
        .prop_map(|l| l.join("."))
}

fn endpoint() -> impl Strategy<Value = Endpoint> {
    let host = prop_oneof![
        v4().prop_map(|a| a.to_string()),
        v6().prop_map(|a| format!("[{a}]")),
        dns_host(),
    ];
    (host, 1..=65535u16).prop_map(|(h, p)| Endpoint::parse("e", &format!("{h}:{p}")).unwrap())
}

fn key() -> impl Strategy<Value = WgKey> {
    any::<[u8; 32]>().prop_map(WgKey)
}

/// The field of an InvalidArgument's violations.
fn fields(e: &Error) -> Vec<String> {
    match e {
        Error::InvalidArgument(v) => v.iter().map(|f| f.field.clone()).collect(),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

proptest! {
    #![proptest_config(config(256))]

    // ---- CIDRs and IP lists

    #[test]
    fn prop_cidr_parsers_never_panic_and_name_the_field(s in junk()) {
        if let Err(v) = parse_cidr("f", &s) {
            prop_assert_eq!(v.field, "f");
        }
        if let Err(v) = parse_range4("f", &s) {
            prop_assert_eq!(v.field, "f");
        }
        if let Err(v) = parse_range6("f", &s) {
            prop_assert_eq!(v.field, "f");
        }
    }

    #[test]
    fn prop_cidrs_round_trip_and_host_bits_name_the_range(raw in raw_net()) {
        let text = raw.to_string();
        let clean = raw.trunc();
        match parse_cidr("f", &text) {
            Ok(n) => {
                prop_assert_eq!(n, raw);
                prop_assert_eq!(n, clean);
                prop_assert_eq!(parse_cidr("f", &n.to_string()).unwrap(), n);
            }
            Err(v) => {
                prop_assert_ne!(raw, clean);
                prop_assert!(v.description.contains(&format!("the range is {clean}")), "{}", v.description);
            }
        }
        let r4 = parse_range4("f", &clean.to_string());
        prop_assert_eq!(
            r4.is_ok(),
            matches!(clean, IpNet::V4(n) if n.prefix_len() <= 30),
            "{:?}", r4
        );
        let r6 = parse_range6("f", &clean.to_string());
        prop_assert_eq!(
            r6.is_ok(),
            matches!(clean, IpNet::V6(n) if n.prefix_len() <= 126),
            "{:?}", r6
        );
    }

    #[test]
    fn prop_ip_lists_name_the_first_bad_entry(
        list in prop::collection::vec(prop_oneof![ip().prop_map(|a| a.to_string()), junk()], 0..6)
    ) {
        let first_bad = list.iter().position(|s| IpAddr::from_str(s.trim()).is_err());
        match parse_ips("dns", &list) {
            Ok(ips) => {
                prop_assert_eq!(first_bad, None);
                let again: Vec<String> = ips.iter().map(ToString::to_string).collect();
                prop_assert_eq!(parse_ips("dns", &again).unwrap(), ips);
            }
            Err(v) => prop_assert_eq!(v.field, format!("dns[{}]", first_bad.unwrap())),
        }
    }

    #[test]
    fn prop_egress_ranges_are_checked_normalized_and_named(
        ranges in prop::collection::vec(
            prop_oneof![
                net().prop_map(|n| n.to_string()),
                raw_net().prop_map(|n| n.to_string()),
                prop::collection::vec(net(), 1..3).prop_map(|v| {
                    v.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
                }),
                junk(),
            ],
            0..5,
        ),
        interface in prop_oneof![ifname(), junk()],
    ) {
        let network = test_network(Some("10.99.0.0/16"), Some("fd00:99::/64"));
        let node = super::config::tests::node("gw", 1);
        let input = EgressInput { ranges: ranges.clone(), interface: interface.clone(), ..Default::default() };
        match input.validate(&network, &node) {
            Ok(e) => {
                prop_assert!(!e.ranges.is_empty());
                prop_assert!(e.ranges.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates");
                for r in &e.ranges {
                    prop_assert_eq!(r.trunc(), *r);
                    prop_assert!(!network.ranges().any(|own| own.contains(r)));
                }
                prop_assert_eq!(e.interface, interface);
            }
            Err(e) => {
                for f in fields(&e) {
                    let ok = f == "ranges" || f == "interface"
                        || (f.starts_with("ranges[") && f.ends_with(']'));
                    prop_assert!(ok, "{}", f);
                }
            }
        }
    }

    // ---- names

    #[test]
    fn prop_labels_round_trip(s in label()) {
        let l = DnsLabel::parse("name", &s, DnsLabel::LABEL_MAX).unwrap();
        prop_assert_eq!(l.as_str(), s.as_str());
        prop_assert_eq!(DnsLabel::parse("name", &l.to_string(), DnsLabel::LABEL_MAX).unwrap(), l.clone());
        // Network names are shorter.
        prop_assert_eq!(
            DnsLabel::parse("network", &s, DnsLabel::NETWORK_MAX).is_ok(),
            s.len() <= DnsLabel::NETWORK_MAX
        );
    }

    #[test]
    fn prop_bad_labels_name_the_field(
        s in label(),
        at in any::<prop::sample::Index>(),
        bad in prop_oneof![Just('A'), Just('_'), Just('.'), Just(' '), Just('\0'), Just('é')],
    ) {
        let mut chars: Vec<char> = s.chars().collect();
        chars.insert(at.index(chars.len() + 1), bad);
        let bad_label: String = chars.into_iter().collect();
        prop_assert_eq!(DnsLabel::parse("name", &bad_label, 63).unwrap_err().field, "name");
        prop_assert_eq!(DnsLabel::parse("name", &format!("-{s}"), 63).unwrap_err().field, "name");
        prop_assert_eq!(DnsLabel::parse("name", &format!("{s}-"), 63).unwrap_err().field, "name");
    }

    #[test]
    fn prop_labels_never_panic(s in junk()) {
        if let Err(v) = DnsLabel::parse("name", &s, 63) {
            prop_assert_eq!(v.field, "name");
            prop_assert!(v.description.len() < 1000, "{}", v.description);
        }
    }

    #[test]
    fn prop_relative_dns_names_round_trip_within_253(
        labels in prop::collection::vec("[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?", 1..6),
        dot in any::<bool>(),
    ) {
        let name = labels.join(".");
        let sent = if dot { format!("{name}.") } else { name.clone() };
        match parse_relative_name("entry.name", &sent, "corp") {
            Ok(n) => {
                prop_assert_eq!(&n, &name.to_ascii_lowercase());
                prop_assert!(n.len() + 5 <= 253);
                prop_assert_eq!(parse_relative_name("entry.name", &n, "corp").unwrap(), n);
            }
            Err(v) => {
                prop_assert!(name.len() + 5 > 253, "{}", v.description);
                prop_assert_eq!(v.field, "entry.name");
            }
        }
        if labels.len() > 1 {
            let empty = name.replacen('.', "..", 1);
            prop_assert!(parse_relative_name("entry.name", &empty, "corp").is_err());
        }
    }

    #[test]
    fn prop_relative_dns_names_never_panic(s in junk()) {
        if let Err(v) = parse_relative_name("entry.name", &s, "corp") {
            prop_assert_eq!(v.field, "entry.name");
        }
    }

    #[test]
    fn prop_interface_names_follow_linux(s in ifname(), junk in junk()) {
        prop_assert_eq!(parse_ifname("f", &s).unwrap(), s.clone());
        for bad in ['/', ':', ' ', '\t', '\n', '\0'] {
            let mut b = s.clone();
            b.truncate(b.len().min(14));
            b.push(bad);
            prop_assert_eq!(parse_ifname("f", &b).unwrap_err().field, "f");
        }
        let long = format!("{s}{}", "x".repeat(16 - s.len()));
        prop_assert!(parse_ifname("f", &long).is_err());
        match parse_ifname("f", &junk) {
            Ok(n) => prop_assert!(n == junk && (1..=15).contains(&junk.len())),
            Err(v) => prop_assert_eq!(v.field, "f"),
        }
    }

    // ---- keys, endpoints, tokens

    #[test]
    fn prop_wireguard_keys_round_trip(k in key()) {
        prop_assert_eq!(WgKey::parse("public_key", &k.to_string()).unwrap(), k);
    }

    #[test]
    fn prop_keys_of_another_length_say_so(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        use base64::Engine;
        let text = base64::engine::general_purpose::STANDARD.encode(&bytes);
        match WgKey::parse("public_key", &text) {
            Ok(k) => prop_assert_eq!(&k.0[..], &bytes[..]),
            Err(v) => {
                prop_assert_ne!(bytes.len(), 32);
                prop_assert!(v.description.contains(&format!("decodes to {}", bytes.len())), "{}", v.description);
            }
        }
    }

    #[test]
    fn prop_keys_never_panic(s in junk()) {
        if let Err(v) = WgKey::parse("public_key", &s) {
            prop_assert_eq!(v.field, "public_key");
        }
    }

    #[test]
    fn prop_endpoints_round_trip(e in endpoint()) {
        let text = e.to_string();
        let again = Endpoint::parse("endpoint", &text).unwrap();
        prop_assert_eq!(&again, &e);
        prop_assert_eq!(again.to_string(), text);
    }

    #[test]
    fn prop_bad_endpoints_name_the_field(
        a in v6(),
        host in dns_host(),
        port in prop_oneof![Just(0u64), 65536..=u64::from(u32::MAX) + 1],
    ) {
        // IPv6 without brackets, ports out of range, no port at all.
        for s in [format!("{a}:51821"), format!("{host}:{port}"), host.clone()] {
            prop_assert_eq!(Endpoint::parse("endpoint", &s).unwrap_err().field, "endpoint");
        }
    }

    #[test]
    fn prop_endpoints_never_panic(s in junk()) {
        match Endpoint::parse("endpoint", &s) {
            Ok(e) => prop_assert_eq!(Endpoint::parse("endpoint", &e.to_string()).unwrap(), e),
            Err(v) => prop_assert_eq!(v.field, "endpoint"),
        }
    }

    #[test]
    fn prop_tokens_parse_back_and_junk_never_panics(s in junk(), kind in 0..3u8) {
        let kind = [token::TokenKind::Admin, token::TokenKind::Node, token::TokenKind::Enrollment][kind as usize];
        let t = token::NewToken::generate(kind);
        prop_assert_eq!(token::parse(&t.secret), Some((kind, t.id.as_str())));
        let _ = token::parse(&s);
    }

    // ---- update masks and pages

    #[test]
    fn prop_network_masks(
        mask in prop::collection::vec(
            prop_oneof![
                prop::sample::select(vec![
                    "default_keepalive", "default_mtu", "default_listen_port",
                    "default_ext_client_dns", "nameservers", "name", "address_range",
                ]).prop_map(String::from),
                junk(),
            ],
            0..5,
        ),
        (keepalive, mtu, listen_port) in (any::<u32>(), any::<u32>(), any::<u32>()),
        dns in prop::collection::vec(prop_oneof![ip().prop_map(|a| a.to_string()), junk()], 0..3),
    ) {
        let input = NetworkInput {
            keepalive, mtu, listen_port,
            ext_client_dns: dns.clone(),
            nameservers: dns,
            ..Default::default()
        };
        let unknown = mask.iter().any(|p| !super::network::UPDATABLE.contains(&p.as_str()));
        match NetworkPatch::from_request(&input, &mask) {
            Ok(p) => {
                prop_assert!(!unknown);
                if !mask.is_empty() {
                    let has = |f: &str| mask.iter().any(|m| m == f);
                    prop_assert_eq!(p.keepalive.is_some(), has("default_keepalive"));
                    prop_assert_eq!(p.mtu.is_some(), has("default_mtu"));
                    prop_assert_eq!(p.listen_port.is_some(), has("default_listen_port"));
                    prop_assert_eq!(p.ext_client_dns.is_some(), has("default_ext_client_dns"));
                    prop_assert_eq!(p.nameservers.is_some(), has("nameservers"));
                }
            }
            Err(e) => {
                let f = fields(&e);
                prop_assert!(!unknown || f.iter().any(|f| f == "update_mask"), "{:?}", f);
                for f in &f {
                    prop_assert!(
                        f == "update_mask"
                            || f.starts_with("network.default_ext_client_dns[")
                            || f.starts_with("network.nameservers["),
                        "{}", f
                    );
                }
            }
        }
    }

    #[test]
    fn prop_node_masks(
        mask in prop::collection::vec(
            prop_oneof![
                prop::sample::select(super::node::UPDATABLE.to_vec()).prop_map(String::from),
                prop::sample::select(vec!["address", "egress", "id"]).prop_map(String::from),
                junk(),
            ],
            0..5,
        ),
        name in prop_oneof![label(), junk()],
        endpoint in prop_oneof![endpoint().prop_map(|e| e.to_string()), Just(String::new()), junk()],
        (listen_port, keepalive) in (any::<u32>(), any::<u32>()),
        public_key in prop_oneof![key().prop_map(|k| k.to_string()), junk()],
        tags in prop::collection::vec(prop_oneof![label(), junk()], 0..3),
    ) {
        let input = NodeUpdateInput { name, endpoint, listen_port, keepalive, public_key, tags };
        let has = |f: &str| mask.iter().any(|m| m == f);
        let unknown = mask.is_empty()
            || mask.iter().any(|p| !super::node::UPDATABLE.contains(&p.as_str()));
        match NodePatch::from_request(&input, &mask) {
            Ok(p) => {
                prop_assert!(!unknown);
                prop_assert_eq!(p.name.is_some(), has("name"));
                prop_assert_eq!(p.endpoint.is_some(), has("endpoint"));
                prop_assert_eq!(p.listen_port.is_some(), has("listen_port"));
                prop_assert_eq!(p.keepalive.is_some(), has("persistent_keepalive"));
                prop_assert_eq!(p.public_key.is_some(), has("public_key"));
                prop_assert_eq!(p.tags.is_some(), has("tags"));
            }
            Err(e) => {
                let f = fields(&e);
                prop_assert!(!unknown || f.iter().any(|f| f == "update_mask"), "{:?}", f);
                for f in &f {
                    let named = match f.as_str() {
                        "update_mask" => true,
                        "node.name" => has("name"),
                        "node.endpoint" => has("endpoint"),
                        "node.listen_port" => has("listen_port"),
                        "node.persistent_keepalive" => has("persistent_keepalive"),
                        "node.public_key" => has("public_key"),
                        t if t.starts_with("node.tags[") => has("tags"),
                        _ => false,
                    };
                    prop_assert!(named, "{} without it in the mask {:?}", f, mask);
                }
            }
        }
    }

    #[test]
    fn prop_ext_client_masks(
        mask in prop::collection::vec(
            prop_oneof![
                prop::sample::select(vec!["name", "dns", "enabled", "tags", "public_key"]).prop_map(String::from),
                junk(),
            ],
            0..4,
        ),
        name in prop_oneof![label(), junk()],
        dns in prop::collection::vec(prop_oneof![ip().prop_map(|a| a.to_string()), junk()], 0..3),
        enabled in any::<bool>(),
        tags in prop::collection::vec(prop_oneof![label(), junk()], 0..3),
    ) {
        let has = |f: &str| mask.iter().any(|m| m == f);
        let unknown = mask.is_empty()
            || mask.iter().any(|p| !super::ext_client::UPDATABLE.contains(&p.as_str()));
        match ExtClientPatch::from_request(&name, &dns, enabled, &tags, &mask) {
            Ok(p) => {
                prop_assert!(!unknown);
                prop_assert_eq!(p.name.is_some(), has("name"));
                prop_assert_eq!(p.dns.is_some(), has("dns"));
                prop_assert_eq!(p.enabled, has("enabled").then_some(enabled));
                prop_assert_eq!(p.tags.is_some(), has("tags"));
            }
            Err(e) => {
                let f = fields(&e);
                prop_assert!(!unknown || f.iter().any(|f| f == "update_mask"), "{:?}", f);
                for f in &f {
                    let named = f == "update_mask"
                        || (f == "ext_client.name" && has("name"))
                        || (f.starts_with("ext_client.dns[") && has("dns"))
                        || (f.starts_with("ext_client.tags[") && has("tags"));
                    prop_assert!(named, "{}", f);
                }
            }
        }
    }

    #[test]
    fn prop_page_requests(size in any::<i32>(), token in junk(), key in "\\PC{0,30}") {
        match PageRequest::parse(size, &token) {
            Ok(p) => prop_assert!((1..=super::page::MAX_PAGE_SIZE).contains(&p.size)),
            Err(e) => {
                let f = fields(&e);
                prop_assert!(f == ["page_size"] || f == ["page_token"], "{:?}", f);
            }
        }
        // The token a page ends with leads to the page after its key.
        let page = PageRequest::parse(1, "").unwrap();
        let (_, next) = page.finish(vec![key.clone(), "z".into()], Clone::clone);
        prop_assert_eq!(PageRequest::parse(1, &next).unwrap().after, Some(key));
    }
}

// ---- renderers

/// A network with the given ranges.
fn test_network(r4: Option<&str>, r6: Option<&str>) -> Network {
    NetworkInput {
        name: "corp".into(),
        address_range: r4.unwrap_or_default().into(),
        address_range6: r6.unwrap_or_default().into(),
        ..Default::default()
    }
    .validate(chrono::Utc::now())
    .unwrap()
}

/// A network: an IPv4 range, an IPv6 range or both, and its settings.
fn any_network() -> impl Strategy<Value = Network> {
    (
        prop::option::of((v4(), 8..=30u8)),
        prop::option::of((v6(), 8..=126u8)),
        0..=65535u32,
        1280..=9000u32,
        prop::collection::vec(ip(), 0..3),
    )
        .prop_filter("a network has a range", |(a, b, ..)| {
            a.is_some() || b.is_some()
        })
        .prop_map(|(r4, r6, keepalive, mtu, dns)| {
            let mut n = test_network(
                r4.map(|(a, p)| Ipv4Net::new(a, p).unwrap().trunc().to_string())
                    .as_deref(),
                r6.map(|(a, p)| Ipv6Net::new(a, p).unwrap().trunc().to_string())
                    .as_deref(),
            );
            n.keepalive = keepalive;
            n.mtu = mtu;
            n.ext_client_dns = dns;
            n
        })
}

/// A node of the network: maybe an egress gateway (any ranges, any
/// interface name the API accepts, NAT or not), maybe an ingress gateway,
/// maybe with an interface its agent reported.
fn any_node(n: u8) -> impl Strategy<Value = Node> {
    (
        prop::option::of((prop::collection::vec(net(), 1..4), ifname(), any::<bool>())),
        prop::option::of(prop::collection::vec(ip(), 0..3)),
        prop::option::of(ifname()),
        prop::option::of(endpoint()),
        key(),
    )
        .prop_filter("the API accepts the interfaces", |(e, _, wg, ..)| {
            e.as_ref()
                .is_none_or(|(_, i, _)| parse_interface("interface", i).is_ok())
                && wg
                    .as_ref()
                    .is_none_or(|w| parse_rule_ifname("wireguard_interface", w).is_ok())
        })
        .prop_map(move |(egress, ingress, wg, endpoint, key)| {
            let mut node = super::config::tests::node(&format!("n{n}"), n);
            node.egress = egress.map(|(mut ranges, interface, nat)| {
                ranges.sort();
                ranges.dedup();
                Egress {
                    ranges,
                    interface,
                    nat,
                    ..Default::default()
                }
            });
            node.ingress = ingress.map(|ext_client_dns| Ingress { ext_client_dns });
            node.wireguard_interface = wg;
            node.endpoint = endpoint;
            node.public_key = key;
            node
        })
}

/// One `-A` line of `iptables-restore` input: its table, chain and
/// arguments.
#[derive(Debug, PartialEq, Eq)]
struct RestoreRule {
    table: String,
    chain: String,
    args: Vec<String>,
}

/// A small parser of `iptables-restore` input: `*table`, `:CHAIN POLICY
/// [packets:bytes]`, `-A CHAIN args…` and `COMMIT`, tables balanced, rules
/// only in a table and on a chain declared in it. A double quote is
/// refused: iptables-restore reads it as quoting, so a name with one does
/// not come back as written.
fn parse_restore(text: &str) -> Result<Vec<RestoreRule>, String> {
    let mut table: Option<&str> = None;
    let mut chains: Vec<&str> = Vec::new();
    let mut rules = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = |why: &str| format!("line {}: {why}: {line:?}", i + 1);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.contains('"') {
            return Err(at("a double quote"));
        }
        if let Some(t) = line.strip_prefix('*') {
            if table.is_some() {
                return Err(at("a table opened inside another"));
            }
            if !["filter", "nat", "mangle", "raw"].contains(&t) {
                return Err(at("unknown table"));
            }
            table = Some(t);
            chains.clear();
        } else if line == "COMMIT" {
            table.take().ok_or_else(|| at("COMMIT outside a table"))?;
        } else if let Some(decl) = line.strip_prefix(':') {
            table.ok_or_else(|| at("a chain outside a table"))?;
            let parts: Vec<&str> = decl.split(' ').collect();
            let [name, policy, counters] = parts[..] else {
                return Err(at("a chain declaration is NAME POLICY [p:b]"));
            };
            let counted = counters
                .strip_prefix('[')
                .and_then(|c| c.strip_suffix(']'))
                .and_then(|c| c.split_once(':'))
                .is_some_and(|(p, b)| p.parse::<u64>().is_ok() && b.parse::<u64>().is_ok());
            if name.is_empty() || !["-", "ACCEPT", "DROP"].contains(&policy) || !counted {
                return Err(at("a bad chain declaration"));
            }
            chains.push(name);
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let t = table.ok_or_else(|| at("a rule outside a table"))?;
            let mut words = rule.split_ascii_whitespace().map(String::from);
            let chain = words.next().ok_or_else(|| at("-A without a chain"))?;
            if !chains.contains(&chain.as_str()) {
                return Err(at("a rule on a chain not declared in its table"));
            }
            rules.push(RestoreRule {
                table: t.to_owned(),
                chain,
                args: words.collect(),
            });
        } else {
            return Err(at("not an iptables-restore line"));
        }
    }
    match table {
        Some(t) => Err(format!("table {t} is never committed")),
        None => Ok(rules),
    }
}

/// The value after `flag` in a rule's arguments.
fn arg<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// A section of an INI file: its name and its keys with their values.
type Section = (String, Vec<(String, String)>);

/// A small parser of wg-quick files: `[Section]` headers, `Key = value`
/// lines, `#` comments; every line in a section.
fn parse_ini(text: &str) -> Result<Vec<Section>, String> {
    let mut sections: Vec<Section> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            sections.push((name.to_owned(), Vec::new()));
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: not Key = value: {line:?}", i + 1))?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric()) || v.is_empty() {
            return Err(format!("line {}: bad key or empty value: {line:?}", i + 1));
        }
        let (_, keys) = sections
            .last_mut()
            .ok_or_else(|| format!("line {}: outside a section", i + 1))?;
        if keys.iter().any(|(x, _)| x == k) {
            return Err(format!("line {}: {k} twice in a section", i + 1));
        }
        keys.push((k.to_owned(), v.to_owned()));
    }
    Ok(sections)
}

fn list(v: &str) -> Vec<&str> {
    v.split(',').map(str::trim).collect()
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn prop_firewalls_render_valid_iptables_restore_input(
        network in any_network(),
        node in any_node(1),
    ) {
        let fw = firewall_for(&network, &node);
        let ovl = node_interface(&node);
        for family in [Family::V4, Family::V6] {
            let text = match family {
                Family::V4 => &fw.iptables_restore,
                Family::V6 => &fw.ip6tables_restore,
            };
            let parsed = parse_restore(text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            // The text is exactly the structured rules of its family,
            // hooks excluded, table by table.
            let want: Vec<RestoreRule> = ["filter", "nat"]
                .iter()
                .flat_map(|t| fw.rules.iter().filter(move |r| r.table == *t))
                .filter(|r| r.family == family && !r.hook)
                .map(|r| RestoreRule {
                    table: r.table.to_owned(),
                    chain: r.chain.to_owned(),
                    args: r.rule.split_ascii_whitespace().map(String::from).collect(),
                })
                .collect();
            prop_assert_eq!(&parsed, &want);
            for r in &parsed {
                if let Some(i) = arg(&r.args, "-i") {
                    prop_assert!(i == ovl || node.egress.as_ref().is_some_and(|e| e.interface == i), "{}", i);
                }
                if let Some(o) = arg(&r.args, "-o") {
                    prop_assert!(o == ovl || node.egress.as_ref().is_some_and(|e| e.interface == o), "{}", o);
                }
                for flag in ["-s", "-d"] {
                    if let Some(n) = arg(&r.args, flag) {
                        let n = parse_cidr("r", n).map_err(|v| TestCaseError::fail(v.description))?;
                        prop_assert_eq!(matches!(n, IpNet::V4(_)), family == Family::V4);
                    }
                }
                let target = arg(&r.args, "-j");
                prop_assert!(matches!(target, Some("ACCEPT" | "MASQUERADE")), "{:?}", target);
            }
            // Every table with rules is hooked from its built-in chain.
            for table in ["filter", "nat"] {
                let used = parsed.iter().any(|r| r.table == table);
                let hooked = fw.rules.iter().any(|r| r.hook && r.family == family && r.table == table);
                prop_assert_eq!(used, hooked);
            }
        }
    }

    #[test]
    fn prop_client_configs_render_valid_wg_quick_files(
        network in any_network(),
        ingress in any_node(1),
        others in prop::collection::vec(any_node(2), 0..3),
        (a4, a6) in (v4(), v6()),
        dns in prop::collection::vec(ip(), 0..3),
        private in any::<bool>(),
    ) {
        let mut ingress = ingress;
        ingress.ingress.get_or_insert_with(Ingress::default);
        let mut nodes = vec![ingress.clone()];
        for (i, mut n) in others.into_iter().enumerate() {
            n.id = format!("other-{i}");
            nodes.push(n);
        }
        let mut client: ExtClient = super::config::tests::client("phone", &ingress, 9);
        client.address = network.range4.map(|_| a4);
        client.address6 = network.range6.map(|_| a6);
        client.dns = dns;
        let private_key = private.then(PrivateKey::generate);
        let text = match wgquick::render(&network, &nodes, &client, private_key.as_ref()) {
            Ok(t) => t,
            Err(Error::FailedPrecondition(_)) => {
                prop_assert!(ingress.endpoint.is_none());
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(format!("{e:?}"))),
        };
        let ini = parse_ini(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let names: Vec<&str> = ini.iter().map(|(s, _)| s.as_str()).collect();
        prop_assert_eq!(names, vec!["Interface", "Peer"]);
        let get = |s: usize, k: &str| ini[s].1.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
        for (s, allowed) in [(0, &["Address", "PrivateKey", "DNS", "MTU"][..]),
                              (1, &["PublicKey", "Endpoint", "AllowedIPs", "PersistentKeepalive"][..])] {
            for (k, _) in &ini[s].1 {
                prop_assert!(allowed.contains(&k.as_str()), "unknown key {}", k);
            }
        }
        // [Interface]
        let addresses: Vec<IpNet> = list(get(0, "Address").unwrap())
            .into_iter()
            .map(|a| IpNet::from_str(a).unwrap())
            .collect();
        prop_assert_eq!(addresses, host_prefixes(client.address, client.address6));
        match &private_key {
            Some(k) => prop_assert_eq!(
                WgKey::parse("k", get(0, "PrivateKey").unwrap()).unwrap().to_string(),
                k.to_base64()
            ),
            None => prop_assert_eq!(get(0, "PrivateKey"), Some("<paste your private key>")),
        }
        let want_dns = ext_client_dns(&network, &ingress, &client);
        match get(0, "DNS") {
            Some(d) => {
                let d: Vec<String> = list(d).into_iter().map(String::from).collect();
                prop_assert_eq!(parse_ips("dns", &d).unwrap(), want_dns.to_vec());
            }
            None => prop_assert!(want_dns.is_empty()),
        }
        prop_assert_eq!(get(0, "MTU").unwrap().parse::<u32>().unwrap(), network.mtu);
        // [Peer]
        prop_assert_eq!(WgKey::parse("k", get(1, "PublicKey").unwrap()).unwrap(), ingress.public_key);
        prop_assert_eq!(
            Endpoint::parse("e", get(1, "Endpoint").unwrap()).unwrap(),
            ingress.endpoint.clone().unwrap()
        );
        let allowed: Vec<IpNet> = list(get(1, "AllowedIPs").unwrap())
            .into_iter()
            .map(|a| parse_cidr("a", a).unwrap())
            .collect();
        prop_assert_eq!(allowed, ext_client_allowed_ips(&network, &nodes));
        match get(1, "PersistentKeepalive") {
            Some(k) => prop_assert_eq!(k.parse::<u32>().unwrap(), network.keepalive),
            None => prop_assert_eq!(network.keepalive, 0),
        }
    }
}
