//! The [`Tx`] and [`Store`] primitives of the SQLite store, on a temporary
//! database.

use std::{net::IpAddr, time::Duration};

use chrono::TimeDelta;

use super::SqliteStore;
use crate::domain::{
    Error,
    dns::{DnsEntry, DnsKind},
    enrollment::EnrollmentKey,
    event::{Action, Resource},
    ext_client::ExtClient,
    host::HostReport,
    ipam::Family,
    names::DnsLabel,
    network::Network,
    node::{Egress, Ingress, Node, WgKey},
    now,
    page::PageRequest,
    token::{NewToken, TokenKind},
};
use crate::store::{Clients, LogBounds, Owner, Store, Tx};

/// A migrated store in a fresh directory (kept alive by the returned guard).
async fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("meshplane.db").display());
    let store = SqliteStore::open(&url).await.unwrap();
    (dir, store)
}

fn label(s: &str) -> DnsLabel {
    DnsLabel::parse("name", s, DnsLabel::LABEL_MAX).unwrap()
}

fn network(name: &str) -> Network {
    let t = now();
    Network {
        name: label(name),
        range4: Some("10.1.0.0/24".parse().unwrap()),
        range6: Some("fd00:1::/64".parse().unwrap()),
        keepalive: 25,
        mtu: 1420,
        listen_port: 51820,
        ext_client_dns: vec!["10.1.0.53".parse().unwrap()],
        nameservers: vec!["9.9.9.9".parse().unwrap(), "2620:fe::fe".parse().unwrap()],
        create_time: t,
        update_time: t,
    }
}

fn node(network: &str, name: &str, n: u8) -> Node {
    let t = now();
    Node {
        id: format!("node-{name}"),
        network: label(network),
        name: label(name),
        public_key: WgKey([n; 32]),
        endpoint: None,
        listen_port: 51820,
        address: Some(format!("10.1.0.{n}").parse().unwrap()),
        address6: Some(format!("fd00:1::{n}").parse().unwrap()),
        os: "linux".into(),
        keepalive: 0,
        egress: None,
        ingress: None,
        connected: false,
        last_seen: None,
        applied_revision: 0,
        config_revision: 0,
        create_time: t,
        update_time: t,
        wireguard_interface: None,
        host: None,
        apply_error: None,
        failed_revision: 0,
        tags: vec![],
    }
}

fn client(ingress: &Node, name: &str, n: u8) -> ExtClient {
    let t = now();
    ExtClient {
        id: format!("client-{name}"),
        network: ingress.network.clone(),
        name: label(name),
        ingress_node_id: ingress.id.clone(),
        public_key: WgKey([100 + n; 32]),
        sealed_private_key: Some(vec![1, 2, 3]),
        address: Some(format!("10.1.0.{}", 100 + n).parse().unwrap()),
        address6: None,
        dns: vec!["1.1.1.1".parse().unwrap()],
        enabled: true,
        config_revision: 0,
        downloaded_revision: 0,
        create_time: t,
        update_time: t,
        tags: vec![],
    }
}

fn key(id: &str, network: &str, uses: u32, unlimited: bool) -> EnrollmentKey {
    EnrollmentKey {
        id: id.into(),
        networks: vec![DnsLabel::parse("network", network, DnsLabel::NETWORK_MAX).unwrap()],
        uses_remaining: uses,
        unlimited,
        expire_time: None,
        description: "test".into(),
        create_time: now(),
    }
}

/// A store holding network "corp" (committed).
async fn store_with_network() -> (tempfile::TempDir, SqliteStore, Network) {
    let (dir, s) = store().await;
    let net = network("corp");
    let mut tx = s.begin().await.unwrap();
    tx.insert_network(&net).await.unwrap();
    tx.commit().await.unwrap();
    (dir, s, net)
}

/// Appends an update of `net` that changes its configs.
async fn append_network(tx: &mut Box<dyn Tx>, net: &Network, config: bool) -> u64 {
    tx.append(Action::Updated, &Resource::Network(net.clone()), config)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_inserted_network_is_what_lock_network_returns() {
    let (_dir, s) = store().await;
    let net = network("corp");
    let mut tx = s.begin().await.unwrap();
    assert_eq!(tx.lock_network("corp").await.unwrap(), None);
    tx.insert_network(&net).await.unwrap();
    assert_eq!(tx.lock_network("corp").await.unwrap(), Some(net.clone()));
    assert_eq!(tx.network_conflicts(&net).await.unwrap(), vec![net.clone()]);
    // The same name twice is a conflict the service retries.
    let again = tx.insert_network(&net).await.unwrap_err();
    assert!(matches!(again, Error::Aborted(_)), "{again:?}");
    tx.commit().await.unwrap();

    assert_eq!(s.get_network("corp").await.unwrap(), Some(net.clone()));
    let page = PageRequest {
        size: 10,
        after: None,
    };
    assert_eq!(s.list_networks(&page).await.unwrap(), vec![net.clone()]);

    let mut changed = net.clone();
    changed.mtu = 1380;
    changed.nameservers = vec![];
    changed.update_time = now();
    let mut tx = s.begin().await.unwrap();
    tx.update_network(&changed).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(s.get_network("corp").await.unwrap(), Some(changed));
}

#[tokio::test]
async fn nodes_and_allocations_and_a_taken_offset_aborts() {
    let (_dir, s, _net) = store_with_network().await;
    let a = node("corp", "alpha", 1);
    let token = NewToken::generate(TokenKind::Node);
    let mut tx = s.begin().await.unwrap();
    assert_eq!(tx.lowest_free_offset("corp", Family::V4).await.unwrap(), 1);
    tx.insert_node(&a, &token).await.unwrap();
    tx.insert_allocation("corp", Family::V4, 1, &Owner::Node(a.id.clone()))
        .await
        .unwrap();
    tx.insert_allocation("corp", Family::V6, 1, &Owner::Node(a.id.clone()))
        .await
        .unwrap();
    assert_eq!(tx.lowest_free_offset("corp", Family::V4).await.unwrap(), 2);
    assert_eq!(tx.lowest_free_offset("corp", Family::V6).await.unwrap(), 2);
    assert_eq!(tx.lowest_free_offset("other", Family::V4).await.unwrap(), 1);

    // Another owner of the same (network, family, offset) is refused.
    let taken = tx
        .insert_allocation("corp", Family::V4, 1, &Owner::Node("node-beta".into()))
        .await
        .unwrap_err();
    assert!(matches!(taken, Error::Aborted(_)), "{taken:?}");

    // A gap is found: 1 and 3 held, 2 free.
    tx.insert_allocation("corp", Family::V4, 3, &Owner::ExtClient("c".into()))
        .await
        .unwrap();
    assert_eq!(tx.lowest_free_offset("corp", Family::V4).await.unwrap(), 2);
    tx.free_addresses("c").await.unwrap();

    // Same name (or key) in the network: a conflict as well.
    let twin = Node {
        id: "node-twin".into(),
        public_key: WgKey([9; 32]),
        ..a.clone()
    };
    let dup = tx
        .insert_node(&twin, &NewToken::generate(TokenKind::Node))
        .await
        .unwrap_err();
    assert!(matches!(dup, Error::Aborted(_)), "{dup:?}");

    assert_eq!(tx.node(&a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(tx.network_nodes("corp").await.unwrap(), vec![a.clone()]);
    assert_eq!(
        tx.name_owner("corp", "alpha").await.unwrap(),
        Some(Owner::Node(a.id.clone()))
    );
    assert_eq!(
        tx.key_owner("corp", &a.public_key).await.unwrap(),
        Some(Owner::Node(a.id.clone()))
    );
    assert_eq!(tx.name_owner("corp", "nobody").await.unwrap(), None);
    assert_eq!(tx.key_owner("corp", &WgKey([7; 32])).await.unwrap(), None);
    tx.commit().await.unwrap();

    assert_eq!(s.get_node(&a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(
        s.node_token(&token.id).await.unwrap(),
        Some((a.id.clone(), token.hash.to_vec()))
    );

    // Freeing the node's addresses gives offset 1 back.
    let mut tx = s.begin().await.unwrap();
    tx.free_addresses(&a.id).await.unwrap();
    tx.delete_node(&a.id).await.unwrap();
    assert_eq!(tx.lowest_free_offset("corp", Family::V4).await.unwrap(), 1);
    assert_eq!(tx.node(&a.id).await.unwrap(), None);
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn update_node_writes_every_field_and_keeps_the_host_report_when_none() {
    let (_dir, s, _net) = store_with_network().await;
    let mut a = node("corp", "alpha", 1);
    let mut tx = s.begin().await.unwrap();
    tx.insert_node(&a, &NewToken::generate(TokenKind::Node))
        .await
        .unwrap();

    let report = HostReport {
        interfaces: vec![],
        routes: vec![],
        report_time: now(),
    };
    a.name = label("renamed");
    a.public_key = WgKey([42; 32]);
    a.listen_port = 51999;
    a.keepalive = 15;
    a.egress = Some(Egress {
        ranges: vec![
            "192.168.0.0/24".parse().unwrap(),
            "fd10::/64".parse().unwrap(),
        ],
        interface: "eth1".into(),
        nat: false,
        ..Default::default()
    });
    a.ingress = Some(Ingress {
        ext_client_dns: vec!["10.1.0.53".parse::<IpAddr>().unwrap()],
    });
    a.last_seen = Some(now());
    a.applied_revision = 7;
    a.wireguard_interface = Some("wg-corp".into());
    a.host = Some(report.clone());
    a.apply_error = Some("boom".into());
    a.failed_revision = 6;
    a.update_time = now();
    tx.update_node(&a).await.unwrap();
    tx.save_report(&a).await.unwrap();
    assert_eq!(tx.node(&a.id).await.unwrap(), Some(a.clone()));

    // None keeps the stored report; egress and ingress can be removed.
    let mut b = a.clone();
    b.host = None;
    b.egress = None;
    b.ingress = None;
    b.apply_error = None;
    tx.update_node(&b).await.unwrap();
    tx.save_report(&b).await.unwrap();
    let stored = tx.node(&a.id).await.unwrap().unwrap();
    assert_eq!(stored.host, Some(report));
    assert_eq!(stored.egress, None);
    assert_eq!(stored.ingress, None);
    assert_eq!(stored.apply_error, None);
    tx.commit().await.unwrap();

    // Configs are computed without host reports.
    let (_, views) = s.load_all().await.unwrap();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].nodes.len(), 1);
    assert_eq!(views[0].nodes[0].host, None);
    assert_eq!(views[0].nodes[0].name, label("renamed"));
}

#[tokio::test]
async fn a_one_use_key_is_taken_once_and_unlimited_keys_always() {
    let (_dir, s, _net) = store_with_network().await;
    let once = key("k-once", "corp", 1, false);
    let always = key("k-always", "corp", 0, true);
    let mut tx = s.begin().await.unwrap();
    tx.insert_enrollment_key(&once, b"hash-once").await.unwrap();
    tx.insert_enrollment_key(&always, b"hash-always")
        .await
        .unwrap();
    assert!(tx.take_key_use("k-once").await.unwrap());
    assert!(!tx.take_key_use("k-once").await.unwrap());
    assert!(tx.take_key_use("k-always").await.unwrap());
    assert!(tx.take_key_use("k-always").await.unwrap());
    assert!(!tx.take_key_use("k-missing").await.unwrap());

    let stored = tx.enrollment_key("k-once").await.unwrap().unwrap();
    assert_eq!(stored.hash, b"hash-once".to_vec());
    assert_eq!(
        stored.key,
        EnrollmentKey {
            uses_remaining: 0,
            ..once.clone()
        }
    );
    // Still readable after uses were taken.
    let stored = tx.enrollment_key("k-always").await.unwrap().unwrap();
    assert_eq!(stored.key, always);
    tx.commit().await.unwrap();

    let page = PageRequest {
        size: 10,
        after: None,
    };
    let listed = s.list_enrollment_keys(Some("corp"), &page).await.unwrap();
    assert_eq!(
        listed.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        ["k-always", "k-once"]
    );
    assert!(
        s.list_enrollment_keys(Some("other"), &page)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.get_enrollment_key("k-always")
            .await
            .unwrap()
            .unwrap()
            .hash,
        b"hash-always".to_vec()
    );

    let mut tx = s.begin().await.unwrap();
    tx.delete_enrollment_key("k-once").await.unwrap();
    tx.commit().await.unwrap();
    assert!(s.get_enrollment_key("k-once").await.unwrap().is_none());
}

#[tokio::test]
async fn appends_take_dense_revisions_and_move_the_network_revision() {
    let (_dir, s, net) = store_with_network().await;
    assert_eq!(
        s.log_bounds().await.unwrap(),
        LogBounds {
            oldest: 1,
            latest: 0
        }
    );

    let mut tx = s.begin().await.unwrap();
    let r1 = append_network(&mut tx, &net, true).await;
    let r2 = append_network(&mut tx, &net, true).await;
    // Without `config` the network's revision stays.
    let r3 = append_network(&mut tx, &net, false).await;
    // A key has no network: nothing to move.
    let r4 = tx
        .append(
            Action::Created,
            &Resource::EnrollmentKey(key("k", "corp", 1, false)),
            true,
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!((r1, r2, r3, r4), (1, 2, 3, 4));

    // A rolled-back append gives its number back.
    let mut tx = s.begin().await.unwrap();
    assert_eq!(append_network(&mut tx, &net, true).await, 5);
    drop(tx);
    let mut tx = s.begin().await.unwrap();
    assert_eq!(append_network(&mut tx, &net, false).await, 5);
    tx.commit().await.unwrap();

    let events = s.events_after(0, 100).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(events[0].resource, Resource::Network(net.clone()));
    assert_eq!(events[0].action, Action::Updated);
    assert_eq!(
        s.events_after(3, 1)
            .await
            .unwrap()
            .iter()
            .map(|e| e.revision)
            .collect::<Vec<_>>(),
        [4]
    );

    let (cursor, views) = s.load_all().await.unwrap();
    assert_eq!(cursor, 5);
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].network, net);
    assert_eq!(views[0].revision, r2);
    assert_eq!(
        s.log_bounds().await.unwrap(),
        LogBounds {
            oldest: 1,
            latest: 5
        }
    );
}

#[tokio::test]
async fn pruning_keeps_the_newest_and_latest_never_goes_back() {
    let (_dir, s, net) = store_with_network().await;
    let mut tx = s.begin().await.unwrap();
    for _ in 0..3 {
        append_network(&mut tx, &net, true).await;
    }
    tx.commit().await.unwrap();

    // Nothing is old enough.
    assert_eq!(
        s.prune_events(now() - TimeDelta::hours(1)).await.unwrap(),
        0
    );
    // Everything is, but the newest stays.
    assert_eq!(
        s.prune_events(now() + TimeDelta::hours(1)).await.unwrap(),
        2
    );
    assert_eq!(
        s.prune_events(now() + TimeDelta::hours(1)).await.unwrap(),
        0
    );
    assert_eq!(
        s.log_bounds().await.unwrap(),
        LogBounds {
            oldest: 3,
            latest: 3
        }
    );
    assert_eq!(s.events_after(0, 10).await.unwrap().len(), 1);

    // Even an emptied log remembers the newest revision, and the next append
    // follows it.
    sqlx::query("DELETE FROM events")
        .execute(&s.pool)
        .await
        .unwrap();
    assert_eq!(
        s.log_bounds().await.unwrap(),
        LogBounds {
            oldest: 4,
            latest: 3
        }
    );
    assert_eq!(s.load_all().await.unwrap().0, 3);
    let mut tx = s.begin().await.unwrap();
    assert_eq!(append_network(&mut tx, &net, true).await, 4);
    tx.commit().await.unwrap();
    assert_eq!(
        s.log_bounds().await.unwrap(),
        LogBounds {
            oldest: 4,
            latest: 4
        }
    );
}

#[tokio::test]
async fn presence_is_per_replica_and_expires() {
    let (_dir, s, _net) = store_with_network().await;
    let a = node("corp", "alpha", 1);
    let b = node("corp", "beta", 2);
    let mut tx = s.begin().await.unwrap();
    for n in [&a, &b] {
        tx.insert_node(n, &NewToken::generate(TokenKind::Node))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let ids = |v: &[&Node]| v.iter().map(|n| n.id.clone()).collect::<Vec<_>>();
    let t0 = now();
    let minute = TimeDelta::seconds(60);

    // Unknown nodes are ignored.
    let mut streaming = ids(&[&a, &b]);
    streaming.push("node-gone".into());
    let present = s.presence("r1", &streaming, t0, t0 - minute).await.unwrap();
    assert_eq!(present, ids(&[&a, &b]));
    let present = s
        .presence("r2", &ids(&[&b]), t0, t0 - minute)
        .await
        .unwrap();
    assert_eq!(present, ids(&[&a, &b]));

    // r1 stops streaming beta: r2 still does.
    let t1 = t0 + TimeDelta::seconds(10);
    let present = s
        .presence("r1", &ids(&[&a]), t1, t1 - minute)
        .await
        .unwrap();
    assert_eq!(present, ids(&[&a, &b]));
    let r1_rows: Vec<String> =
        sqlx::query_scalar("SELECT node_id FROM presence WHERE replica = 'r1' ORDER BY node_id")
            .fetch_all(&s.pool)
            .await
            .unwrap();
    assert_eq!(r1_rows, ids(&[&a]));

    // r2 went silent: its entry (seen at t0) expires.
    let t2 = t0 + TimeDelta::seconds(90);
    let present = s
        .presence("r1", &ids(&[&a]), t2, t2 - minute)
        .await
        .unwrap();
    assert_eq!(present, ids(&[&a]));

    // r1 streams nothing.
    let present = s.presence("r1", &[], t2, t2 - minute).await.unwrap();
    assert!(present.is_empty());

    // A deleted node's presence goes with it.
    s.presence("r1", &ids(&[&a, &b]), t2, t2 - minute)
        .await
        .unwrap();
    let mut tx = s.begin().await.unwrap();
    tx.delete_node(&b.id).await.unwrap();
    tx.commit().await.unwrap();
    let present = s.presence("r2", &[], t2, t2 - minute).await.unwrap();
    assert_eq!(present, ids(&[&a]));
}

#[tokio::test]
async fn clients_and_their_revisions() {
    let (_dir, s, _net) = store_with_network().await;
    let mut gw = node("corp", "gw", 1);
    gw.ingress = Some(Ingress::default());
    let other = node("corp", "other", 2);
    let c1 = client(&gw, "phone", 1);
    let c2 = client(&other, "laptop", 2);
    let mut tx = s.begin().await.unwrap();
    for n in [&gw, &other] {
        tx.insert_node(n, &NewToken::generate(TokenKind::Node))
            .await
            .unwrap();
    }
    tx.insert_ext_client(&c1).await.unwrap();
    tx.insert_ext_client(&c2).await.unwrap();
    assert_eq!(tx.ext_client(&c1.id).await.unwrap(), Some(c1.clone()));
    assert_eq!(tx.ext_clients_of(&gw.id).await.unwrap(), vec![c1.clone()]);
    assert_eq!(
        tx.name_owner("corp", "phone").await.unwrap(),
        Some(Owner::ExtClient(c1.id.clone()))
    );
    assert_eq!(
        tx.key_owner("corp", &c2.public_key).await.unwrap(),
        Some(Owner::ExtClient(c2.id.clone()))
    );

    tx.set_client_revisions(Clients::One(&c1.id), 3)
        .await
        .unwrap();
    assert_eq!(
        tx.ext_client(&c1.id)
            .await
            .unwrap()
            .unwrap()
            .config_revision,
        3
    );
    tx.set_client_revisions(Clients::OfIngress(&other.id), 4)
        .await
        .unwrap();
    assert_eq!(
        tx.ext_client(&c1.id)
            .await
            .unwrap()
            .unwrap()
            .config_revision,
        3
    );
    assert_eq!(
        tx.ext_client(&c2.id)
            .await
            .unwrap()
            .unwrap()
            .config_revision,
        4
    );
    tx.set_client_revisions(Clients::OfNetwork("corp"), 5)
        .await
        .unwrap();
    for c in [&c1, &c2] {
        assert_eq!(
            tx.ext_client(&c.id).await.unwrap().unwrap().config_revision,
            5
        );
    }

    let mut changed = tx.ext_client(&c1.id).await.unwrap().unwrap();
    changed.name = label("tablet");
    changed.enabled = false;
    changed.dns = vec![];
    changed.config_revision = 6;
    changed.update_time = now();
    tx.update_ext_client(&changed).await.unwrap();
    assert_eq!(tx.ext_client(&c1.id).await.unwrap(), Some(changed.clone()));
    tx.commit().await.unwrap();

    // Downloads never move the recorded revision back.
    s.mark_downloaded(&c1.id, 6).await.unwrap();
    s.mark_downloaded(&c1.id, 2).await.unwrap();
    assert_eq!(
        s.get_ext_client(&c1.id)
            .await
            .unwrap()
            .unwrap()
            .downloaded_revision,
        6
    );
    let page = PageRequest {
        size: 10,
        after: None,
    };
    let listed = s
        .list_ext_clients(Some("corp"), Some(&gw.id), &page)
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        [c1.id.as_str()]
    );

    let mut tx = s.begin().await.unwrap();
    tx.delete_ext_client(&c2.id).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(s.get_ext_client(&c2.id).await.unwrap(), None);
}

#[tokio::test]
async fn dns_entries_and_deleting_a_network_takes_everything_with_it() {
    let (_dir, s, net) = store_with_network().await;
    let entry = DnsEntry {
        network: net.name.clone(),
        name: "db".into(),
        address: Some("10.1.0.200".parse().unwrap()),
        address6: None,
        kind: DnsKind::Custom,
        create_time: now(),
    };
    let a = node("corp", "alpha", 1);
    let mut tx = s.begin().await.unwrap();
    tx.insert_dns_entry(&entry).await.unwrap();
    assert_eq!(
        tx.dns_entry("corp", "db").await.unwrap(),
        Some(entry.clone())
    );
    assert_eq!(
        tx.name_owner("corp", "db").await.unwrap(),
        Some(Owner::DnsEntry("db".into()))
    );
    tx.insert_node(&a, &NewToken::generate(TokenKind::Node))
        .await
        .unwrap();
    tx.insert_allocation("corp", Family::V4, 1, &Owner::Node(a.id.clone()))
        .await
        .unwrap();
    tx.insert_enrollment_key(&key("k", "corp", 1, false), b"h")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    s.presence(
        "r1",
        std::slice::from_ref(&a.id),
        now(),
        now() - TimeDelta::seconds(60),
    )
    .await
    .unwrap();

    let (_, views) = s.load_all().await.unwrap();
    assert_eq!(views[0].dns_entries.len(), 1);
    assert_eq!(views[0].dns_entries[0].name, "db");

    let mut tx = s.begin().await.unwrap();
    tx.delete_dns_entry("corp", "db").await.unwrap();
    assert_eq!(tx.dns_entry("corp", "db").await.unwrap(), None);
    tx.delete_network("corp").await.unwrap();
    tx.commit().await.unwrap();

    assert_eq!(s.get_network("corp").await.unwrap(), None);
    assert_eq!(s.get_node(&a.id).await.unwrap(), None);
    for table in [
        "nodes",
        "ip_allocations",
        "enrollment_key_networks",
        "presence",
    ] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&s.pool)
            .await
            .unwrap();
        assert_eq!(n, 0, "{table}");
    }
    assert!(s.load_all().await.unwrap().1.is_empty());
}

#[tokio::test]
async fn admin_tokens() {
    let (_dir, s) = store().await;
    let t1 = crate::store::AdminToken {
        id: "t1".into(),
        name: "first".into(),
        create_time: now(),
    };
    let t2 = crate::store::AdminToken {
        id: "t2".into(),
        name: "second".into(),
        create_time: now() + TimeDelta::seconds(1),
    };
    let mut tx = s.begin().await.unwrap();
    tx.insert_admin_token(&t2, b"h2").await.unwrap();
    tx.insert_admin_token(&t1, b"h1").await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(s.list_admin_tokens().await.unwrap(), vec![t1.clone(), t2]);
    assert_eq!(
        s.admin_token_hash("t1").await.unwrap(),
        Some(b"h1".to_vec())
    );
    assert_eq!(s.admin_token_hash("t3").await.unwrap(), None);

    let mut tx = s.begin().await.unwrap();
    assert!(tx.delete_admin_token("t2").await.unwrap());
    assert!(!tx.delete_admin_token("t2").await.unwrap());
    tx.commit().await.unwrap();
    assert_eq!(s.list_admin_tokens().await.unwrap(), vec![t1]);
}

#[tokio::test]
async fn a_dropped_tx_leaves_nothing_and_frees_the_queue() {
    let (_dir, s) = store().await;
    let net = network("corp");
    let a = node("corp", "alpha", 1);
    let mut tx = s.begin().await.unwrap();
    tx.insert_network(&net).await.unwrap();
    tx.insert_node(&a, &NewToken::generate(TokenKind::Node))
        .await
        .unwrap();
    tx.insert_allocation("corp", Family::V4, 1, &Owner::Node(a.id.clone()))
        .await
        .unwrap();
    append_network(&mut tx, &net, true).await;
    drop(tx);

    // The next writer gets its turn (and the database's write lock).
    let mut tx = tokio::time::timeout(Duration::from_secs(5), s.begin())
        .await
        .expect("the dropped transaction still holds the queue")
        .unwrap();
    assert_eq!(tx.lock_network("corp").await.unwrap(), None);
    assert_eq!(tx.lowest_free_offset("corp", Family::V4).await.unwrap(), 1);
    drop(tx);

    assert_eq!(s.get_network("corp").await.unwrap(), None);
    assert_eq!(s.get_node(&a.id).await.unwrap(), None);
    assert!(s.events_after(0, 10).await.unwrap().is_empty());
    assert_eq!(
        s.log_bounds().await.unwrap(),
        LogBounds {
            oldest: 1,
            latest: 0
        }
    );
    // Small writes take the queue too; nothing holds it now.
    tokio::time::timeout(Duration::from_secs(5), s.touch_node(&a.id, now()))
        .await
        .expect("the queue is free")
        .unwrap();
}

#[tokio::test]
async fn touch_node_records_last_seen() {
    let (_dir, s, _net) = store_with_network().await;
    let a = node("corp", "alpha", 1);
    let mut tx = s.begin().await.unwrap();
    tx.insert_node(&a, &NewToken::generate(TokenKind::Node))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let t = now();
    s.touch_node(&a.id, t).await.unwrap();
    assert_eq!(s.get_node(&a.id).await.unwrap().unwrap().last_seen, Some(t));
    let page = PageRequest {
        size: 10,
        after: Some("corp/alpha".into()),
    };
    assert!(s.list_nodes(Some("corp"), &page).await.unwrap().is_empty());
    let page = PageRequest {
        size: 10,
        after: None,
    };
    assert_eq!(s.list_nodes(None, &page).await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_database_serialises_writers_of_separate_stores() {
    // Two stores on one file stand for two processes: no shared queue, only
    // SQLite's write lock.
    let (dir, s1) = store().await;
    let url = format!("sqlite:{}", dir.path().join("meshplane.db").display());
    let s2 = std::sync::Arc::new(SqliteStore::open(&url).await.unwrap());
    let net = network("corp");
    let mut tx = s1.begin().await.unwrap();
    tx.insert_network(&net).await.unwrap();

    let other = std::sync::Arc::clone(&s2);
    let second = tokio::spawn(async move {
        let mut tx = other.begin().await?;
        let seen = tx.lock_network("corp").await?;
        tx.commit().await?;
        Ok::<_, Error>(seen)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !second.is_finished(),
        "a second writer began beside the first"
    );
    tx.commit().await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the second writer never got the lock")
        .unwrap()
        .unwrap();
    assert_eq!(seen, Some(net));
}
