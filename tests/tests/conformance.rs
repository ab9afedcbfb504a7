//! The store conformance suite: every `Store` and `Tx` method, on every
//! backend. Each case is written once, over `Arc<dyn Store>`, and run on
//! SQLite (always) and on PostgreSQL (a throwaway cluster; see
//! `meshplane_tests::backend`). The rules themselves (what is unique, what
//! may be removed) live in the service layer and are exercised on both
//! backends by the API tests (`tests/run` runs them once per backend) and by
//! `tests/tests/replicas.rs`.

use std::{net::IpAddr, sync::Arc};

use chrono::{DateTime, Duration, Utc};
use meshplane_server::domain::{
    Error,
    dns::{DnsEntry, DnsKind},
    enrollment::EnrollmentKey,
    event::{Action, Resource},
    ext_client::ExtClient,
    host::{HostInterface, HostReport, HostRoute},
    ipam::Family,
    names::DnsLabel,
    network::Network,
    node::{Egress, Endpoint, Ingress, Node, WgKey},
    page::PageRequest,
    policy::{Action as PolicyAction, NetworkPolicy, Policy, PolicyInput, RuleInput, Tag},
    token::{NewToken, TokenKind},
};
use meshplane_server::store::{AdminToken, Clients, Owner, Store};
use meshplane_tests::backend::{Backend, each_backend};

fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + secs, 123_456_000).unwrap()
}

fn label(s: &str) -> DnsLabel {
    DnsLabel::parse("name", s, DnsLabel::LABEL_MAX).unwrap()
}

fn key(n: u8) -> WgKey {
    WgKey::parse(
        "public_key",
        &base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [n; 32]),
    )
    .unwrap()
}

fn network(name: &str, r4: &str, r6: &str) -> Network {
    Network {
        name: label(name),
        range4: (!r4.is_empty()).then(|| r4.parse().unwrap()),
        range6: (!r6.is_empty()).then(|| r6.parse().unwrap()),
        keepalive: 25,
        mtu: 1420,
        listen_port: 51821,
        ext_client_dns: vec!["10.0.0.53".parse().unwrap(), "fd00::53".parse().unwrap()],
        nameservers: vec!["1.1.1.1".parse().unwrap()],
        create_time: t(0),
        update_time: t(1),
    }
}

fn node(id: &str, net: &str, name: &str, k: u8, a4: Option<&str>, a6: Option<&str>) -> Node {
    Node {
        id: id.into(),
        network: label(net),
        name: label(name),
        public_key: key(k),
        endpoint: Some(Endpoint::parse("endpoint", "203.0.113.7:51821").unwrap()),
        listen_port: 51821,
        address: a4.map(|a| a.parse().unwrap()),
        address6: a6.map(|a| a.parse().unwrap()),
        os: "linux".into(),
        keepalive: 0,
        egress: None,
        ingress: None,
        connected: false,
        last_seen: None,
        applied_revision: 0,
        config_revision: 0,
        create_time: t(10),
        update_time: t(10),
        wireguard_interface: None,
        host: None,
        apply_error: None,
        failed_revision: 0,
        tags: vec![],
    }
}

fn client(id: &str, net: &str, ingress: &str, name: &str, k: u8) -> ExtClient {
    ExtClient {
        id: id.into(),
        network: label(net),
        ingress_node_id: ingress.into(),
        name: label(name),
        public_key: key(k),
        sealed_private_key: Some(vec![1, 2, 3, 0, 255]),
        address: Some("10.1.0.9".parse().unwrap()),
        address6: None,
        dns: vec!["10.1.0.1".parse().unwrap()],
        enabled: true,
        config_revision: 0,
        downloaded_revision: 0,
        create_time: t(20),
        update_time: t(20),
        tags: vec![],
    }
}

fn enrollment_key(id: &str, nets: &[&str], uses: u32, unlimited: bool) -> EnrollmentKey {
    let mut networks: Vec<DnsLabel> = nets.iter().map(|n| label(n)).collect();
    networks.sort();
    EnrollmentKey {
        id: id.into(),
        networks,
        uses_remaining: uses,
        unlimited,
        expire_time: Some(t(3600)),
        description: "ci".into(),
        create_time: t(5),
    }
}

fn aborted<T: std::fmt::Debug>(r: Result<T, Error>) {
    assert!(
        matches!(r, Err(Error::Aborted(_))),
        "expected Aborted, got {r:?}"
    );
}

/// Inserts a network in its own transaction.
async fn with_network(s: &dyn Store, net: &Network) {
    let mut tx = s.begin().await.unwrap();
    tx.insert_network(net).await.unwrap();
    tx.commit().await.unwrap();
}

/// Inserts a node in its own transaction.
async fn with_node(s: &dyn Store, n: &Node) -> NewToken {
    let token = NewToken::generate(TokenKind::Node);
    let mut tx = s.begin().await.unwrap();
    tx.insert_node(n, &token).await.unwrap();
    tx.commit().await.unwrap();
    token
}

async fn networks_roundtrip_page_update_delete(s: Arc<dyn Store>) {
    let a = network("alpha", "10.1.0.0/16", "fd00:1::/64");
    let b = network("beta", "10.2.0.0/24", "");
    let c = network("gamma", "", "fd00:3::/64");
    for n in [&c, &a, &b] {
        with_network(&*s, n).await;
    }
    assert_eq!(s.get_network("alpha").await.unwrap(), Some(a.clone()));
    assert_eq!(s.get_network("nope").await.unwrap(), None);
    let page = |after: Option<&str>, size| PageRequest {
        after: after.map(str::to_owned),
        size,
    };
    let names = |v: Vec<Network>| {
        v.into_iter()
            .map(|n| n.name.to_string())
            .collect::<Vec<_>>()
    };
    // fetch_limit is size + 1: the extra row says whether there is more.
    assert_eq!(
        names(s.list_networks(&page(None, 1)).await.unwrap()),
        ["alpha", "beta"]
    );
    assert_eq!(
        names(s.list_networks(&page(Some("beta"), 5)).await.unwrap()),
        ["gamma"]
    );

    // A duplicate name is refused by the database.
    let mut tx = s.begin().await.unwrap();
    aborted(tx.insert_network(&a).await);
    drop(tx);

    // The networks a new one collides with: by name, and by overlap in
    // either family (containing, contained, equal); neighbours do not.
    let mut tx = s.begin().await.unwrap();
    let conflicts = |name: &str, r4: &str, r6: &str| network(name, r4, r6);
    for (new, want) in [
        (conflicts("delta", "10.3.0.0/24", "fd00:4::/64"), vec![]),
        (conflicts("alpha", "10.3.0.0/24", ""), vec!["alpha"]),
        (conflicts("delta", "10.1.7.0/24", ""), vec!["alpha"]),
        (conflicts("delta", "10.0.0.0/8", ""), vec!["alpha", "beta"]),
        (conflicts("delta", "10.2.0.0/24", ""), vec!["beta"]),
        (conflicts("delta", "10.2.1.0/24", "fd00:2::/64"), vec![]),
        (conflicts("delta", "10.1.255.255/32", ""), vec!["alpha"]),
        (conflicts("delta", "10.0.255.255/32", ""), vec![]),
        (conflicts("delta", "", "fd00:3::8/125"), vec!["gamma"]),
        (conflicts("delta", "", "fd00::/16"), vec!["alpha", "gamma"]),
        (conflicts("beta", "", "fd00:1::/48"), vec!["alpha", "beta"]),
        (conflicts("delta", "", ""), vec![]),
    ] {
        let got = names(tx.network_conflicts(&new).await.unwrap());
        let mut got_sorted = got.clone();
        got_sorted.sort();
        assert_eq!(
            got_sorted,
            want,
            "conflicts of {:?} {:?} {:?}",
            new.name.as_str(),
            new.range4,
            new.range6
        );
    }
    let mut locked = tx.lock_network("alpha").await.unwrap().unwrap();
    assert!(tx.lock_network("nope").await.unwrap().is_none());
    locked.mtu = 1280;
    locked.keepalive = 0;
    locked.listen_port = 40000;
    locked.ext_client_dns = vec![];
    locked.nameservers = vec!["9.9.9.9".parse().unwrap(), "2620:fe::fe".parse().unwrap()];
    locked.update_time = t(99);
    tx.update_network(&locked).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(s.get_network("alpha").await.unwrap(), Some(locked));

    let mut tx = s.begin().await.unwrap();
    tx.delete_network("beta").await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(s.get_network("beta").await.unwrap(), None);
}

async fn deleting_a_network_takes_everything_in_it(s: Arc<dyn Store>) {
    let net = network("corp", "10.1.0.0/24", "fd00:1::/64");
    with_network(&*s, &net).await;
    with_network(&*s, &network("other", "10.9.0.0/24", "")).await;
    let n = node("n1", "corp", "gw", 1, Some("10.1.0.1"), Some("fd00:1::1"));
    let token = with_node(&*s, &n).await;
    let mut tx = s.begin().await.unwrap();
    tx.insert_allocation("corp", Family::V4, 1, &Owner::Node("n1".into()))
        .await
        .unwrap();
    tx.insert_ext_client(&client("c1", "corp", "n1", "phone", 2))
        .await
        .unwrap();
    tx.insert_dns_entry(&DnsEntry {
        network: label("corp"),
        name: "db".into(),
        address: Some("10.1.0.50".parse().unwrap()),
        address6: None,
        kind: DnsKind::Custom,
        create_time: t(30),
    })
    .await
    .unwrap();
    tx.insert_enrollment_key(
        &enrollment_key("k1", &["corp", "other"], 3, false),
        &[7; 32],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let mut tx = s.begin().await.unwrap();
    tx.delete_network("corp").await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(s.get_node("n1").await.unwrap(), None);
    assert_eq!(s.get_ext_client("c1").await.unwrap(), None);
    assert_eq!(s.node_token(&token.id).await.unwrap(), None);
    let key = s.get_enrollment_key("k1").await.unwrap().unwrap();
    assert_eq!(key.key.networks, vec![label("other")]);
    // The name and the address are free again in a new network of that name.
    with_network(&*s, &net).await;
    let mut tx = s.begin().await.unwrap();
    assert_eq!(tx.name_owner("corp", "db").await.unwrap(), None);
    assert_eq!(tx.lowest_free_offset("corp", Family::V4).await.unwrap(), 1);
}

async fn admin_tokens(s: Arc<dyn Store>) {
    let tok = |id: &str, secs| AdminToken {
        id: id.into(),
        name: format!("label-{id}"),
        create_time: t(secs),
    };
    let mut tx = s.begin().await.unwrap();
    tx.insert_admin_token(&tok("b", 2), &[2; 32]).await.unwrap();
    tx.insert_admin_token(&tok("a", 1), &[1; 32]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        s.list_admin_tokens().await.unwrap(),
        vec![tok("a", 1), tok("b", 2)]
    );
    assert_eq!(s.admin_token_hash("b").await.unwrap(), Some(vec![2; 32]));
    assert_eq!(s.admin_token_hash("zz").await.unwrap(), None);
    let mut tx = s.begin().await.unwrap();
    assert!(tx.delete_admin_token("a").await.unwrap());
    assert!(!tx.delete_admin_token("a").await.unwrap());
    tx.commit().await.unwrap();
    assert_eq!(s.list_admin_tokens().await.unwrap(), vec![tok("b", 2)]);
}

async fn enrollment_keys_and_their_uses(s: Arc<dyn Store>) {
    with_network(&*s, &network("a", "10.1.0.0/24", "")).await;
    with_network(&*s, &network("b", "10.2.0.0/24", "")).await;
    let one = enrollment_key("k1", &["a"], 1, false);
    let many = enrollment_key("k2", &["a", "b"], 0, true);
    let mut tx = s.begin().await.unwrap();
    tx.insert_enrollment_key(&one, &[1; 32]).await.unwrap();
    tx.insert_enrollment_key(&many, &[2; 32]).await.unwrap();
    tx.commit().await.unwrap();

    let got = s.get_enrollment_key("k1").await.unwrap().unwrap();
    assert_eq!(got.key, one);
    assert_eq!(got.hash, vec![1; 32]);
    let all = PageRequest {
        after: None,
        size: 10,
    };
    let ids = |v: Vec<EnrollmentKey>| v.into_iter().map(|k| k.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.list_enrollment_keys(None, &all).await.unwrap()),
        ["k1", "k2"]
    );
    assert_eq!(
        ids(s.list_enrollment_keys(Some("b"), &all).await.unwrap()),
        ["k2"]
    );
    let after = PageRequest {
        after: Some("k1".into()),
        size: 10,
    };
    assert_eq!(
        ids(s.list_enrollment_keys(None, &after).await.unwrap()),
        ["k2"]
    );

    let mut tx = s.begin().await.unwrap();
    assert_eq!(tx.enrollment_key("k1").await.unwrap().unwrap().key, one);
    assert!(tx.take_key_use("k1").await.unwrap());
    assert!(!tx.take_key_use("k1").await.unwrap());
    for _ in 0..3 {
        assert!(tx.take_key_use("k2").await.unwrap(), "unlimited");
    }
    assert!(!tx.take_key_use("missing").await.unwrap());
    tx.commit().await.unwrap();
    let k1 = s.get_enrollment_key("k1").await.unwrap().unwrap();
    assert_eq!(k1.key.uses_remaining, 0);

    // Loading and taking a use at once: the key as it was comes back, a
    // use is taken only when one is left, and undoing gives it back.
    let mut tx = s.begin().await.unwrap();
    let three = enrollment_key("k3", &[], 3, false);
    tx.insert_enrollment_key(&three, &[3; 32]).await.unwrap();
    let got = tx.take_enrollment_key("k3").await.unwrap().unwrap();
    assert_eq!((got.key.uses_remaining, got.hash), (3, vec![3; 32]));
    tx.savepoint().await.unwrap();
    assert_eq!(
        tx.take_enrollment_key("k3")
            .await
            .unwrap()
            .unwrap()
            .key
            .uses_remaining,
        2
    );
    tx.rollback_to_savepoint().await.unwrap();
    for left in [2, 1, 0, 0] {
        let k = tx.take_enrollment_key("k3").await.unwrap().unwrap();
        assert_eq!(k.key.uses_remaining, left);
    }
    let k2 = tx.take_enrollment_key("k2").await.unwrap().unwrap();
    assert!(k2.key.unlimited);
    assert!(tx.take_enrollment_key("k1").await.unwrap().is_some());
    assert!(tx.take_enrollment_key("missing").await.unwrap().is_none());
    tx.commit().await.unwrap();
    let k3 = s.get_enrollment_key("k3").await.unwrap().unwrap();
    assert_eq!(k3.key.uses_remaining, 0);
    let k2_after = s.get_enrollment_key("k2").await.unwrap().unwrap();
    assert_eq!(k2_after.key.uses_remaining, k2.key.uses_remaining);

    let mut tx = s.begin().await.unwrap();
    tx.delete_enrollment_key("k1").await.unwrap();
    tx.commit().await.unwrap();
    assert!(s.get_enrollment_key("k1").await.unwrap().is_none());
}

async fn nodes_every_field_roundtrips(s: Arc<dyn Store>) {
    with_network(&*s, &network("corp", "10.1.0.0/24", "fd00:1::/64")).await;
    let mut n = node("n1", "corp", "gw", 1, Some("10.1.0.1"), Some("fd00:1::1"));
    let token = with_node(&*s, &n).await;
    assert_eq!(
        s.node_token(&token.id).await.unwrap(),
        Some(("n1".to_owned(), token.hash.to_vec()))
    );
    assert_eq!(s.get_node("n1").await.unwrap(), Some(n.clone()));

    // Every mutable field, then back.
    n.name = label("gateway");
    n.public_key = key(9);
    n.endpoint = Some(Endpoint::parse("endpoint", "[2001:db8::1]:4000").unwrap());
    n.listen_port = 4000;
    n.keepalive = 25;
    n.egress = Some(Egress {
        ranges: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
        interface: "eth1".into(),
        nat: false,
        metric: Some(20),
        preempt: false,
        hold_seconds: 30,
        standby: vec!["::/0".parse().unwrap()],
    });
    n.ingress = Some(Ingress {
        ext_client_dns: vec!["10.1.0.1".parse().unwrap(), "fd00:1::1".parse().unwrap()],
    });
    n.last_seen = Some(t(40));
    n.applied_revision = 17;
    n.wireguard_interface = Some("wg-corp".into());
    n.host = Some(HostReport {
        interfaces: vec![HostInterface {
            name: "eth1".into(),
            addresses: vec!["192.168.7.2/24".parse().unwrap()],
            up: true,
        }],
        routes: vec![HostRoute {
            destination: "0.0.0.0/0".parse().unwrap(),
            interface: "eth1".into(),
            gateway: Some("192.168.7.1".parse::<IpAddr>().unwrap()),
        }],
        report_time: t(41),
    });
    n.apply_error = Some("iptables-restore: exit 1".into());
    n.failed_revision = 18;
    n.update_time = t(42);
    let mut tx = s.begin().await.unwrap();
    tx.update_node(&n).await.unwrap();
    // update_node writes what operators own, not what agents report.
    let half = tx.node("n1").await.unwrap().unwrap();
    assert_eq!((half.name.as_str(), half.applied_revision), ("gateway", 0));
    assert_eq!((half.host.clone(), half.last_seen), (None, None));
    tx.save_report(&n).await.unwrap();
    assert_eq!(tx.node("n1").await.unwrap(), Some(n.clone()));
    tx.commit().await.unwrap();
    assert_eq!(s.get_node("n1").await.unwrap(), Some(n.clone()));

    // Reports never move last_seen back; a report with no host report
    // keeps the stored one.
    let mut older = n.clone();
    older.last_seen = Some(t(1));
    older.host = None;
    older.applied_revision = 19;
    s.save_report(&older).await.unwrap();
    let got = s.get_node("n1").await.unwrap().unwrap();
    assert_eq!((got.last_seen, got.applied_revision), (Some(t(40)), 19));
    assert_eq!(got.host, n.host);
    s.touch_node("n1", t(2)).await.unwrap();
    assert_eq!(
        s.get_node("n1").await.unwrap().unwrap().last_seen,
        Some(t(40))
    );
    s.save_report(&n).await.unwrap();

    // A write without a host report keeps the stored one.
    let mut without = n.clone();
    without.host = None;
    without.egress = None;
    without.ingress = None;
    without.apply_error = None;
    without.failed_revision = 0;
    let mut tx = s.begin().await.unwrap();
    tx.update_node(&without).await.unwrap();
    tx.save_report(&without).await.unwrap();
    tx.commit().await.unwrap();
    let got = s.get_node("n1").await.unwrap().unwrap();
    assert_eq!(got.host, n.host);
    assert_eq!(got.egress, None);
    assert_eq!(got.ingress, None);
    assert_eq!(got.apply_error, None);

    // Views never carry host reports.
    let (_, views) = s.load_all().await.unwrap();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].nodes.len(), 1);
    assert_eq!(views[0].nodes[0].host, None);
    assert_eq!(views[0].nodes[0].name, label("gateway"));

    // Duplicates of (network, name) and (network, key) are refused by the
    // database even when a caller forgot to check.
    let mut tx = s.begin().await.unwrap();
    let token = NewToken::generate(TokenKind::Node);
    aborted(
        tx.insert_node(&node("n2", "corp", "gateway", 2, None, None), &token)
            .await,
    );
    drop(tx);
    let mut tx = s.begin().await.unwrap();
    let token = NewToken::generate(TokenKind::Node);
    aborted(
        tx.insert_node(&node("n3", "corp", "other", 9, None, None), &token)
            .await,
    );
    drop(tx);

    let mut tx = s.begin().await.unwrap();
    tx.delete_node("n1").await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(s.get_node("n1").await.unwrap(), None);
}

async fn node_lists_page_by_network_then_name(s: Arc<dyn Store>) {
    with_network(&*s, &network("a", "10.1.0.0/24", "")).await;
    with_network(&*s, &network("b", "10.2.0.0/24", "")).await;
    for (i, (id, net, name)) in [
        ("1", "b", "x"),
        ("2", "a", "z"),
        ("3", "a", "y"),
        ("4", "b", "a-1"),
        ("5", "a", "a-2"),
    ]
    .into_iter()
    .enumerate()
    {
        with_node(&*s, &node(id, net, name, i as u8 + 1, None, None)).await;
    }
    let list = |net: Option<&'static str>, after: Option<&'static str>, size| {
        let s = s.clone();
        async move {
            s.list_nodes(
                net,
                &PageRequest {
                    after: after.map(str::to_owned),
                    size,
                },
            )
            .await
            .unwrap()
            .into_iter()
            .map(|n| format!("{}/{}", n.network, n.name))
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(None, None, 10).await,
        ["a/a-2", "a/y", "a/z", "b/a-1", "b/x"]
    );
    assert_eq!(list(None, Some("a/z"), 1).await, ["b/a-1", "b/x"]);
    assert_eq!(list(Some("b"), None, 10).await, ["b/a-1", "b/x"]);
    let mut tx = s.begin().await.unwrap();
    let names: Vec<String> = tx
        .network_nodes("a")
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name.to_string())
        .collect();
    assert_eq!(names, ["a-2", "y", "z"]);
}

async fn names_and_keys_have_one_owner_per_network(s: Arc<dyn Store>) {
    with_network(&*s, &network("corp", "10.1.0.0/24", "")).await;
    with_network(&*s, &network("lab", "10.2.0.0/24", "")).await;
    with_node(&*s, &node("n1", "corp", "gw", 1, None, None)).await;
    let mut tx = s.begin().await.unwrap();
    // As group commit does (on PostgreSQL, Register's loads are then one
    // statement).
    tx.lock_log().await.unwrap();
    tx.insert_ext_client(&client("c1", "corp", "n1", "phone", 2))
        .await
        .unwrap();
    tx.insert_dns_entry(&DnsEntry {
        network: label("corp"),
        name: "db.prod".into(),
        address: None,
        address6: Some("fd00::5".parse().unwrap()),
        kind: DnsKind::Custom,
        create_time: t(30),
    })
    .await
    .unwrap();
    assert_eq!(
        tx.name_owner("corp", "gw").await.unwrap(),
        Some(Owner::Node("n1".into()))
    );
    assert_eq!(
        tx.name_owner("corp", "phone").await.unwrap(),
        Some(Owner::ExtClient("c1".into()))
    );
    assert_eq!(
        tx.name_owner("corp", "db.prod").await.unwrap(),
        Some(Owner::DnsEntry("db.prod".into()))
    );
    assert_eq!(tx.name_owner("lab", "gw").await.unwrap(), None);
    assert_eq!(tx.name_owner("corp", "nobody").await.unwrap(), None);
    assert_eq!(
        tx.key_owner("corp", &key(1)).await.unwrap(),
        Some(Owner::Node("n1".into()))
    );
    assert_eq!(
        tx.key_owner("corp", &key(2)).await.unwrap(),
        Some(Owner::ExtClient("c1".into()))
    );
    assert_eq!(tx.key_owner("lab", &key(1)).await.unwrap(), None);
    // Both in one read agree with each alone.
    for (net, name, k) in [
        ("corp", "gw", key(2)),
        ("corp", "db.prod", key(1)),
        ("corp", "phone", key(9)),
        ("corp", "nobody", key(9)),
        ("lab", "gw", key(1)),
    ] {
        assert_eq!(
            tx.owners(net, name, &k).await.unwrap(),
            (
                tx.name_owner(net, name).await.unwrap(),
                tx.key_owner(net, &k).await.unwrap()
            ),
            "{net} {name}"
        );
    }
    // Register's loads at once agree with each alone: the network, the key
    // with a use taken, the owners; nothing at all without the network.
    tx.insert_enrollment_key(&enrollment_key("kr", &["corp"], 2, false), &[7; 32])
        .await
        .unwrap();
    let owner = |i: usize| Owner::Node(format!("new{i}"));
    assert!(
        tx.lock_for_registration("nonet", "kr", "gw", &key(1), &owner(0))
            .await
            .unwrap()
            .is_none()
    );
    let corp = tx.lock_network("corp").await.unwrap().unwrap();
    for (i, (name, k, uses_before)) in [
        ("gw", key(2), 2),
        ("phone", key(1), 1),
        ("nobody", key(9), 0),
    ]
    .into_iter()
    .enumerate()
    {
        let load = tx
            .lock_for_registration("corp", "kr", name, &k, &owner(i))
            .await
            .unwrap()
            .expect("the network exists");
        assert_eq!(load.network, corp);
        // Each takes the lowest free address of the network's one range.
        assert_eq!((load.offset4, load.offset6), (Some(i as u128 + 1), None));
        let stored = load.key.expect("the key exists");
        assert_eq!(
            (stored.key.uses_remaining, stored.hash),
            (uses_before, vec![7; 32]),
            "{name}"
        );
        assert_eq!(
            (load.name_owner, load.key_owner),
            tx.owners("corp", name, &k).await.unwrap(),
            "{name}"
        );
    }
    let load = tx
        .lock_for_registration("corp", "missing", "gw", &key(1), &owner(3))
        .await
        .unwrap()
        .unwrap();
    assert!(load.key.is_none());
    assert_eq!(load.offset4, Some(4));
    assert_eq!(tx.lowest_free_offset("corp", Family::V4).await.unwrap(), 5);
    assert_eq!(load.name_owner, Some(Owner::Node("n1".into())));
    let e = tx.dns_entry("corp", "db.prod").await.unwrap().unwrap();
    assert_eq!(e.address6, Some("fd00::5".parse().unwrap()));
    assert_eq!(e.create_time, t(30));
    tx.delete_dns_entry("corp", "db.prod").await.unwrap();
    assert_eq!(tx.dns_entry("corp", "db.prod").await.unwrap(), None);
    tx.commit().await.unwrap();
}

async fn addresses_lowest_free_unique_and_freed(s: Arc<dyn Store>) {
    with_network(&*s, &network("corp", "10.1.0.0/24", "fd00:1::/64")).await;
    with_network(&*s, &network("lab", "10.2.0.0/24", "")).await;
    let mut tx = s.begin().await.unwrap();
    assert_eq!(tx.lowest_free_offset("corp", Family::V4).await.unwrap(), 1);
    for (off, owner) in [(1, "a"), (2, "b"), (3, "c")] {
        tx.insert_allocation("corp", Family::V4, off, &Owner::Node(owner.into()))
            .await
            .unwrap();
    }
    // Each family and network counts on its own.
    assert_eq!(tx.lowest_free_offset("corp", Family::V6).await.unwrap(), 1);
    assert_eq!(tx.lowest_free_offset("lab", Family::V4).await.unwrap(), 1);
    assert_eq!(tx.lowest_free_offset("corp", Family::V4).await.unwrap(), 4);
    tx.free_addresses("b").await.unwrap();
    assert_eq!(tx.lowest_free_offset("corp", Family::V4).await.unwrap(), 2);
    tx.commit().await.unwrap();
    // A second owner of one address is refused by the database.
    let mut tx = s.begin().await.unwrap();
    aborted(
        tx.insert_allocation("corp", Family::V4, 3, &Owner::ExtClient("x".into()))
            .await,
    );
    drop(tx);
    // Large IPv6 offsets survive the round trip.
    let mut tx = s.begin().await.unwrap();
    let big: u128 = (1 << 62) + 5;
    tx.insert_allocation("corp", Family::V6, 1, &Owner::Node("a".into()))
        .await
        .unwrap();
    tx.insert_allocation("corp", Family::V6, big, &Owner::Node("d".into()))
        .await
        .unwrap();
    assert_eq!(tx.lowest_free_offset("corp", Family::V6).await.unwrap(), 2);
    tx.commit().await.unwrap();
    // Register's loads take the lowest free offset of each range at once;
    // undoing the write gives them back. Without the log lock (one step at
    // a time, rolled back) and with it (on PostgreSQL one statement, kept).
    let take = |owner: &'static str| Owner::Node(owner.into());
    for log_lock in [false, true] {
        let mut tx = s.begin().await.unwrap();
        if log_lock {
            tx.lock_log().await.unwrap();
        }
        tx.savepoint().await.unwrap();
        let load = tx
            .lock_for_registration("corp", "nokey", "new", &key(5), &take("e"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((load.offset4, load.offset6), (Some(2), Some(2)));
        tx.rollback_to_savepoint().await.unwrap();
        let load = tx
            .lock_for_registration("corp", "nokey", "new", &key(5), &take("f"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((load.offset4, load.offset6), (Some(2), Some(2)));
        assert_eq!(tx.lowest_free_offset("corp", Family::V4).await.unwrap(), 4);
        assert_eq!(tx.lowest_free_offset("corp", Family::V6).await.unwrap(), 3);
        let load = tx
            .lock_for_registration("lab", "nokey", "new", &key(5), &take("g"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((load.offset4, load.offset6), (Some(1), None));
        tx.keep_and_mark().await.unwrap();
        if log_lock {
            tx.commit().await.unwrap();
        } else {
            drop(tx);
        }
    }
    let mut tx = s.begin().await.unwrap();
    // Taken for good: the owners hold them.
    aborted(
        tx.insert_allocation("corp", Family::V6, 2, &take("x"))
            .await,
    );
    drop(tx);
}

/// Random takes and frees, each followed by the lowest free offset, checked
/// against a model: the store's free-offset hint never hides a free offset
/// and never returns a taken one, across transactions and rollbacks.
async fn lowest_free_follows_takes_and_frees(s: Arc<dyn Store>) {
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;
    with_network(&*s, &network("corp", "10.1.0.0/16", "fd00:1::/64")).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    // offset -> owner, per family; owners hold one offset per family.
    let mut held: [BTreeMap<u128, String>; 2] = [BTreeMap::new(), BTreeMap::new()];
    let fams = [Family::V4, Family::V6];
    let mut next_owner = 0u32;
    for round in 0..40 {
        let mut tx = s.begin().await.unwrap();
        let mut trial = held.clone();
        for _ in 0..rng.random_range(1..12) {
            let f = rng.random_range(0..2usize);
            let lowest = tx.lowest_free_offset("corp", fams[f]).await.unwrap();
            let want = (1u128..).find(|o| !trial[f].contains_key(o)).unwrap();
            assert_eq!(
                lowest,
                want,
                "round {round}, {:?}, held {:?}",
                fams[f],
                trial[f].keys()
            );
            match rng.random_range(0..10) {
                // Take the lowest free offset, in two steps or as
                // registration does, in one.
                0..=5 => {
                    next_owner += 1;
                    let owner = format!("o{next_owner}");
                    let o = Owner::Node(owner.clone());
                    if next_owner.is_multiple_of(2) {
                        tx.insert_allocation("corp", fams[f], lowest, &o)
                            .await
                            .unwrap();
                    } else {
                        let took = tx.take_lowest_free("corp", fams[f], &o).await.unwrap();
                        assert_eq!(took, lowest);
                    }
                    trial[f].insert(lowest, owner);
                }
                // Take some higher free offset.
                6 => {
                    let off = lowest + rng.random_range(1..4u128);
                    if !trial[f].contains_key(&off) {
                        next_owner += 1;
                        let owner = format!("o{next_owner}");
                        tx.insert_allocation("corp", fams[f], off, &Owner::Node(owner.clone()))
                            .await
                            .unwrap();
                        trial[f].insert(off, owner);
                    }
                }
                // Free a random owner's offsets.
                _ => {
                    if let Some((_, owner)) = trial[f]
                        .iter()
                        .nth(rng.random_range(0..trial[f].len().max(1)))
                        .map(|(o, w)| (*o, w.clone()))
                    {
                        tx.free_addresses(&owner).await.unwrap();
                        for h in trial.iter_mut() {
                            h.retain(|_, w| *w != owner);
                        }
                    }
                }
            }
        }
        if rng.random_range(0..4) == 0 {
            drop(tx); // rolled back: the hint must be too
        } else {
            tx.commit().await.unwrap();
            held = trial;
        }
    }
    let mut tx = s.begin().await.unwrap();
    for (f, fam) in fams.iter().enumerate() {
        let want = (1u128..).find(|o| !held[f].contains_key(o)).unwrap();
        assert_eq!(tx.lowest_free_offset("corp", *fam).await.unwrap(), want);
    }
}

async fn ext_clients_roundtrip_and_revisions(s: Arc<dyn Store>) {
    with_network(&*s, &network("corp", "10.1.0.0/24", "")).await;
    with_network(&*s, &network("lab", "10.2.0.0/24", "")).await;
    with_node(&*s, &node("g1", "corp", "g1", 1, None, None)).await;
    with_node(&*s, &node("g2", "corp", "g2", 2, None, None)).await;
    with_node(&*s, &node("g3", "lab", "g3", 3, None, None)).await;
    let mut a = client("a", "corp", "g1", "alice", 10);
    let b = client("b", "corp", "g1", "bob", 11);
    let mut c = client("c", "corp", "g2", "carol", 12);
    c.sealed_private_key = None;
    c.address6 = Some("fd00::7".parse().unwrap());
    let d = client("d", "lab", "g3", "dave", 13);
    let mut tx = s.begin().await.unwrap();
    for x in [&a, &b, &c, &d] {
        tx.insert_ext_client(x).await.unwrap();
    }
    aborted(
        tx.insert_ext_client(&client("e", "corp", "g2", "alice", 14))
            .await,
    );
    drop(tx);
    let mut tx = s.begin().await.unwrap();
    for x in [&a, &b, &c, &d] {
        tx.insert_ext_client(x).await.unwrap();
    }
    tx.commit().await.unwrap();
    assert_eq!(s.get_ext_client("c").await.unwrap(), Some(c.clone()));

    let all = PageRequest {
        after: None,
        size: 10,
    };
    let names = |v: Vec<ExtClient>| {
        v.into_iter()
            .map(|c| c.name.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(s.list_ext_clients(None, None, &all).await.unwrap()),
        ["alice", "bob", "carol", "dave"]
    );
    assert_eq!(
        names(
            s.list_ext_clients(Some("corp"), Some("g1"), &all)
                .await
                .unwrap()
        ),
        ["alice", "bob"]
    );
    let after = PageRequest {
        after: Some("corp/bob".into()),
        size: 10,
    };
    assert_eq!(
        names(s.list_ext_clients(None, None, &after).await.unwrap()),
        ["carol", "dave"]
    );

    let mut tx = s.begin().await.unwrap();
    a.name = label("alicia");
    a.dns = vec![];
    a.enabled = false;
    a.config_revision = 5;
    a.update_time = t(50);
    tx.update_ext_client(&a).await.unwrap();
    tx.set_client_revisions(Clients::OfIngress("g1"), 7)
        .await
        .unwrap();
    tx.set_client_revisions(Clients::One("c"), 8).await.unwrap();
    tx.commit().await.unwrap();
    let rev = |id: &'static str| {
        let s = s.clone();
        async move { s.get_ext_client(id).await.unwrap().unwrap().config_revision }
    };
    assert_eq!(
        (
            rev("a").await,
            rev("b").await,
            rev("c").await,
            rev("d").await
        ),
        (7, 7, 8, 0)
    );
    let got = s.get_ext_client("a").await.unwrap().unwrap();
    assert_eq!(
        (got.name, got.dns, got.enabled),
        (label("alicia"), vec![], false)
    );
    let mut tx = s.begin().await.unwrap();
    tx.set_client_revisions(Clients::OfNetwork("corp"), 9)
        .await
        .unwrap();
    assert_eq!(tx.ext_clients_of("g1").await.unwrap().len(), 2);
    tx.commit().await.unwrap();
    assert_eq!((rev("a").await, rev("c").await, rev("d").await), (9, 9, 0));

    s.mark_downloaded("a", 9).await.unwrap();
    s.mark_downloaded("a", 3).await.unwrap();
    assert_eq!(
        s.get_ext_client("a")
            .await
            .unwrap()
            .unwrap()
            .downloaded_revision,
        9,
        "never moves back"
    );
    let mut tx = s.begin().await.unwrap();
    tx.delete_ext_client("a").await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(s.get_ext_client("a").await.unwrap(), None);
}

async fn event_log_dense_ordered_pruned(s: Arc<dyn Store>) {
    assert_eq!(s.log_bounds().await.unwrap().latest, 0);
    let net = network("corp", "10.1.0.0/24", "");
    with_network(&*s, &net).await;
    let mut tx = s.begin().await.unwrap();
    let r1 = tx
        .append(Action::Created, &Resource::Network(net.clone()), true)
        .await
        .unwrap();
    let r2 = tx
        .append(
            Action::Created,
            &Resource::EnrollmentKey(enrollment_key("k", &["corp"], 1, false)),
            false,
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!((r1, r2), (1, 2));
    // A rolled-back append gives its revision back: revisions stay dense.
    let mut tx = s.begin().await.unwrap();
    assert_eq!(
        tx.append(Action::Updated, &Resource::Network(net.clone()), true)
            .await
            .unwrap(),
        3
    );
    drop(tx);
    let mut tx = s.begin().await.unwrap();
    let r3 = tx
        .append(Action::Updated, &Resource::Network(net.clone()), true)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(r3, 3);
    let events = s.events_after(0, 10).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(events[1].action, Action::Created);
    assert!(matches!(events[0].resource, Resource::Network(ref n) if *n == net));
    assert_eq!(s.events_after(1, 1).await.unwrap()[0].revision, 2);
    // The network's config revision follows config events only.
    let (cursor, views) = s.load_all().await.unwrap();
    assert_eq!((cursor, views[0].revision), (3, 3));
    assert_eq!(
        s.log_bounds().await.unwrap(),
        meshplane_server::store::LogBounds {
            oldest: 1,
            latest: 3
        }
    );

    // Pruning never takes the newest event; the latest revision never goes
    // back, and appends go on after it.
    let far_future = Utc::now() + Duration::days(1);
    assert_eq!(s.prune_events(far_future).await.unwrap(), 2);
    assert_eq!(
        s.log_bounds().await.unwrap(),
        meshplane_server::store::LogBounds {
            oldest: 3,
            latest: 3
        }
    );
    assert_eq!(s.prune_events(far_future).await.unwrap(), 0);
    assert_eq!(s.events_after(0, 10).await.unwrap().len(), 1);
    let mut tx = s.begin().await.unwrap();
    assert_eq!(
        tx.append(Action::Updated, &Resource::Network(net), false)
            .await
            .unwrap(),
        4
    );
    tx.commit().await.unwrap();
    let past = Utc::now() - Duration::days(1);
    assert_eq!(s.prune_events(past).await.unwrap(), 0, "nothing that old");
}

async fn presence_per_replica_with_expiry(s: Arc<dyn Store>) {
    with_network(&*s, &network("corp", "10.1.0.0/24", "")).await;
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        with_node(&*s, &node(id, "corp", id, i as u8 + 1, None, None)).await;
    }
    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let now = Utc::now();
    let long_ago = now - Duration::hours(1);
    assert_eq!(
        sorted(
            s.presence("r1", &ids(&["a", "b", "ghost"]), now, long_ago)
                .await
                .unwrap()
        ),
        ids(&["a", "b"]),
        "unknown nodes are ignored"
    );
    assert_eq!(
        sorted(s.presence("r2", &ids(&["c"]), now, long_ago).await.unwrap()),
        ids(&["a", "b", "c"])
    );
    // r1 now streams only b: its entry for a goes.
    assert_eq!(
        sorted(s.presence("r1", &ids(&["b"]), now, long_ago).await.unwrap()),
        ids(&["b", "c"])
    );
    // r2 stopped renewing: its entries expire.
    let later = now + Duration::seconds(30);
    assert_eq!(
        sorted(
            s.presence("r1", &ids(&["b"]), later, later - Duration::seconds(10))
                .await
                .unwrap()
        ),
        ids(&["b"])
    );
    // A deleted node leaves presence with it.
    let mut tx = s.begin().await.unwrap();
    tx.delete_node("b").await.unwrap();
    tx.commit().await.unwrap();
    assert!(
        s.presence("r3", &[], later, later - Duration::seconds(10))
            .await
            .unwrap()
            .is_empty()
    );
    s.touch_node("a", t(77)).await.unwrap();
    assert_eq!(
        s.get_node("a").await.unwrap().unwrap().last_seen,
        Some(t(77))
    );
}

async fn savepoints_and_rollback(s: Arc<dyn Store>) {
    let mut tx = s.begin().await.unwrap();
    tx.insert_network(&network("kept", "10.1.0.0/24", ""))
        .await
        .unwrap();
    tx.savepoint().await.unwrap();
    tx.insert_network(&network("undone", "10.2.0.0/24", ""))
        .await
        .unwrap();
    tx.rollback_to_savepoint().await.unwrap();
    // After a failed statement too, the transaction goes on; the mark
    // stays after a rollback to it.
    aborted(tx.insert_network(&network("kept", "10.3.0.0/24", "")).await);
    tx.rollback_to_savepoint().await.unwrap();
    tx.insert_network(&network("also", "10.4.0.0/24", ""))
        .await
        .unwrap();
    tx.keep_and_mark().await.unwrap();
    // Kept writes survive a rollback to the new mark.
    tx.insert_network(&network("later", "10.6.0.0/24", ""))
        .await
        .unwrap();
    tx.rollback_to_savepoint().await.unwrap();
    tx.commit().await.unwrap();
    let names: Vec<String> = s
        .list_networks(&PageRequest {
            after: None,
            size: 10,
        })
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name.to_string())
        .collect();
    assert_eq!(names, ["also", "kept"]);
    // An append undone with its savepoint gives its revision back.
    let mut tx = s.begin().await.unwrap();
    tx.savepoint().await.unwrap();
    let key = Resource::EnrollmentKey(enrollment_key("k", &[], 1, false));
    let undone = tx.append(Action::Created, &key, false).await.unwrap();
    tx.rollback_to_savepoint().await.unwrap();
    let kept = tx.append(Action::Created, &key, false).await.unwrap();
    tx.keep_and_mark().await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(undone, kept);
    assert_eq!(s.log_bounds().await.unwrap().latest, kept);
    // A transaction dropped without commit leaves nothing.
    let mut tx = s.begin().await.unwrap();
    tx.insert_network(&network("dropped", "10.5.0.0/24", ""))
        .await
        .unwrap();
    drop(tx);
    assert_eq!(s.get_network("dropped").await.unwrap(), None);
}

async fn applied_revisions_of_nodes_heard_from_and_pool_use(s: Arc<dyn Store>) {
    with_network(&*s, &network("corp", "10.1.0.0/16", "")).await;
    with_node(
        &*s,
        &node("quiet", "corp", "quiet", 1, Some("10.1.0.1"), None),
    )
    .await;
    with_node(
        &*s,
        &node("heard", "corp", "heard", 2, Some("10.1.0.2"), None),
    )
    .await;
    let mut reported = node("reported", "corp", "reported", 3, Some("10.1.0.3"), None);
    with_node(&*s, &reported).await;
    assert_eq!(s.applied_revisions().await.unwrap(), vec![]);
    s.touch_node("heard", t(5)).await.unwrap();
    reported.applied_revision = 7;
    reported.last_seen = Some(t(6));
    s.save_report(&reported).await.unwrap();
    let mut got = s.applied_revisions().await.unwrap();
    got.sort();
    assert_eq!(got, vec![("heard".into(), 0), ("reported".into(), 7)]);

    // A transaction holds a connection of the pool.
    let tx = s.begin().await.unwrap();
    let during = s.pool_stats();
    assert!(during.in_use >= 1, "{during:?}");
    drop(tx);
}

/// SQLite: a backup holds what was committed, not a transaction still
/// open, with the newest revision, and never overwrites a file.
/// PostgreSQL: refused, pointing to pg_dump.
async fn backup_holds_what_was_committed(s: Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("copy.db");
    if s.backend() == "postgres" {
        match s.backup(&out).await {
            Err(Error::FailedPrecondition(m)) => assert!(m.contains("pg_dump"), "{m}"),
            other => panic!("PostgreSQL backup: {other:?}"),
        }
        assert!(!out.exists());
        return;
    }
    let net = network("corp", "10.1.0.0/24", "");
    let mut tx = s.begin().await.unwrap();
    tx.insert_network(&net).await.unwrap();
    let rev = tx
        .append(Action::Created, &Resource::Network(net.clone()), true)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // Still open while the copy is taken.
    let mut open = s.begin().await.unwrap();
    open.insert_network(&network("pending", "10.2.0.0/24", ""))
        .await
        .unwrap();
    assert_eq!(s.backup(&out).await.unwrap(), rev);
    drop(open);
    match s.backup(&out).await {
        Err(Error::FailedPrecondition(m)) => assert!(m.contains("exists"), "{m}"),
        other => panic!("a backup over an existing file: {other:?}"),
    }
    let copy = meshplane_server::store::open(&format!("sqlite://{}", out.display()))
        .await
        .unwrap();
    assert_eq!(copy.get_network("corp").await.unwrap(), Some(net));
    assert_eq!(copy.get_network("pending").await.unwrap(), None);
    assert_eq!(copy.log_bounds().await.unwrap().latest, rev);
}

fn tags(v: &[&str]) -> Vec<Tag> {
    v.iter().map(|t| Tag::parse("tags", t).unwrap()).collect()
}

/// A restricting policy: default DENY, tag ops to a range on tcp/443 and
/// 8000-8999, a named rule denying node db to everyone.
fn restricting_policy() -> Policy {
    PolicyInput {
        default_action: Some(PolicyAction::Deny),
        rules: vec![
            RuleInput {
                name: "no-db".into(),
                sources: vec!["node:db".into()],
                destinations: vec!["*".into()],
                action: Some(PolicyAction::Deny),
                ..Default::default()
            },
            RuleInput {
                sources: vec!["tag:ops".into(), "client:alice".into()],
                destinations: vec!["10.10.10.0/24".into(), "fd10::/64".into(), "tag:web".into()],
                protocols: vec![Some(meshplane_server::domain::policy::Protocol::Tcp)],
                ports: vec!["443".into(), "8000-8999".into()],
                action: Some(PolicyAction::Allow),
                ..Default::default()
            },
        ],
    }
    .validate()
    .unwrap()
}

async fn tags_and_policies_roundtrip(s: Arc<dyn Store>) {
    with_network(&*s, &network("corp", "10.1.0.0/24", "fd00::/64")).await;
    with_network(&*s, &network("lab", "10.2.0.0/24", "")).await;
    // Tags on insert and on update, for nodes and clients.
    let mut n = node("n1", "corp", "n1", 1, Some("10.1.0.1"), None);
    n.tags = tags(&["ops", "web"]);
    with_node(&*s, &n).await;
    let bare = node("n2", "corp", "n2", 2, Some("10.1.0.2"), None);
    with_node(&*s, &bare).await;
    let mut c = client("c1", "corp", "n1", "alice", 10);
    c.tags = tags(&["laptops"]);
    let mut tx = s.begin().await.unwrap();
    tx.insert_ext_client(&c).await.unwrap();
    tx.commit().await.unwrap();
    let got = s.get_node("n1").await.unwrap().unwrap();
    assert_eq!(got.tags, tags(&["ops", "web"]));
    assert_eq!(s.get_node("n2").await.unwrap().unwrap().tags, vec![]);
    assert_eq!(
        s.get_ext_client("c1").await.unwrap().unwrap().tags,
        tags(&["laptops"])
    );

    let mut tx = s.begin().await.unwrap();
    let mut n = tx.node("n1").await.unwrap().unwrap();
    assert_eq!(n.tags, tags(&["ops", "web"]));
    n.tags = tags(&["db"]);
    tx.update_node(&n).await.unwrap();
    c.tags = vec![];
    tx.update_ext_client(&c).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(s.get_node("n1").await.unwrap().unwrap().tags, tags(&["db"]));
    assert_eq!(s.get_ext_client("c1").await.unwrap().unwrap().tags, vec![]);
    let listed = s
        .list_nodes(Some("corp"), &PageRequest::parse(10, "").unwrap())
        .await
        .unwrap();
    assert_eq!(listed[0].tags, tags(&["db"]));

    // No policy stored: none read, and the views carry the default.
    assert_eq!(s.get_policy("corp").await.unwrap(), None);
    let (_, views) = s.load_all().await.unwrap();
    assert!(views.iter().all(|v| v.policy == Policy::default()));
    let corp_view = views
        .iter()
        .find(|v| v.network.name.as_str() == "corp")
        .unwrap();
    assert_eq!(
        corp_view.nodes.iter().find(|x| x.id == "n1").unwrap().tags,
        tags(&["db"])
    );

    // Saved, read back in and out of a transaction and in the views.
    let p = NetworkPolicy {
        network: label("corp"),
        policy: restricting_policy(),
        revision: 7,
        update_time: Some(t(30)),
    };
    let mut tx = s.begin().await.unwrap();
    assert_eq!(tx.policy("corp").await.unwrap(), None);
    tx.save_policy(&p).await.unwrap();
    assert_eq!(tx.policy("corp").await.unwrap().as_ref(), Some(&p));
    tx.commit().await.unwrap();
    assert_eq!(s.get_policy("corp").await.unwrap().as_ref(), Some(&p));
    assert_eq!(s.get_policy("lab").await.unwrap(), None);
    let (_, views) = s.load_all().await.unwrap();
    for v in &views {
        let want = if v.network.name.as_str() == "corp" {
            p.policy.clone()
        } else {
            Policy::default()
        };
        assert_eq!(v.policy, want, "{}", v.network.name);
    }

    // Replaced; a rollback keeps the one committed.
    let p2 = NetworkPolicy {
        policy: Policy::default(),
        revision: 9,
        update_time: Some(t(40)),
        ..p.clone()
    };
    let mut tx = s.begin().await.unwrap();
    tx.save_policy(&p2).await.unwrap();
    drop(tx);
    assert_eq!(s.get_policy("corp").await.unwrap().as_ref(), Some(&p));
    let mut tx = s.begin().await.unwrap();
    tx.save_policy(&p2).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(s.get_policy("corp").await.unwrap().as_ref(), Some(&p2));

    // A policy event round-trips through the log.
    let mut tx = s.begin().await.unwrap();
    tx.lock_network("corp").await.unwrap().unwrap();
    let rev = tx
        .append(
            Action::Updated,
            &Resource::Policy(Box::new(p.clone())),
            true,
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let ev = s.events_after(rev - 1, 10).await.unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].resource, Resource::Policy(Box::new(p.clone())));
    assert_eq!(ev[0].resource.network().as_deref(), Some("corp"));

    // The policy goes with its network.
    let mut tx = s.begin().await.unwrap();
    tx.delete_network("corp").await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(s.get_policy("corp").await.unwrap(), None);
    with_network(&*s, &network("corp", "10.1.0.0/24", "fd00::/64")).await;
    assert_eq!(s.get_policy("corp").await.unwrap(), None);
}

/// Generates one test per backend for each case.
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                each_backend(stringify!($case), |b: Backend| async move {
                    // `b` lives to the end: it owns SQLite's directory.
                    super::$case(b.store.clone()).await;
                    drop(b);
                })
                .await;
            }
        )*
    };
}

mod on_each_backend {
    use super::*;
    cases!(
        networks_roundtrip_page_update_delete,
        deleting_a_network_takes_everything_in_it,
        admin_tokens,
        enrollment_keys_and_their_uses,
        nodes_every_field_roundtrips,
        node_lists_page_by_network_then_name,
        names_and_keys_have_one_owner_per_network,
        addresses_lowest_free_unique_and_freed,
        lowest_free_follows_takes_and_frees,
        ext_clients_roundtrip_and_revisions,
        event_log_dense_ordered_pruned,
        presence_per_replica_with_expiry,
        savepoints_and_rollback,
        applied_revisions_of_nodes_heard_from_and_pool_use,
        backup_holds_what_was_committed,
        tags_and_policies_roundtrip,
    );
}
