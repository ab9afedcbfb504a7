//! PostgreSQL-only checks of the store, beside the conformance suite that
//! runs on both backends (`tests/tests/conformance.rs`): concurrency of
//! appends, NOTIFY and its reconnects, serialised network creation,
//! concurrent migration. They need `MESHPLANE_TEST_PG_URL`, the admin URL
//! of a PostgreSQL server where they may create (and drop) databases, each
//! test in a database of its own; `tests/run` starts a throwaway server and
//! sets it. Without it they fail saying so, unless
//! `MESHPLANE_SKIP_POSTGRES_TESTS=1` opts out on purpose.

use std::{str::FromStr, time::Duration};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use ipnet::IpNet;
use sqlx::{Connection, postgres::PgConnectOptions};

use super::PgStore;
use crate::domain::{
    Error,
    dns::{DnsEntry, DnsKind},
    enrollment::EnrollmentKey,
    event::{Action, Resource},
    ext_client::ExtClient,
    host::{HostInterface, HostReport},
    ipam::Family,
    names::DnsLabel,
    network::Network,
    node::{Egress, Endpoint, Ingress, Node, WgKey},
    page::PageRequest,
    token::{NewToken, TokenKind},
};
use crate::store::{AdminToken, Clients, Owner, Store, Tx};

/// A fresh database on the test server, dropped again by [`Db::finish`]
/// (left behind when a test fails, for a look).
struct Db {
    admin: PgConnectOptions,
    name: String,
    store: PgStore,
}

impl Db {
    /// None only under `MESHPLANE_SKIP_POSTGRES_TESTS=1` (printed).
    async fn new() -> Option<Db> {
        let Ok(url) = std::env::var("MESHPLANE_TEST_PG_URL") else {
            if std::env::var("MESHPLANE_SKIP_POSTGRES_TESTS").as_deref() == Ok("1") {
                eprintln!("SKIPPED: MESHPLANE_SKIP_POSTGRES_TESTS=1 (this test did not run)");
                return None;
            }
            panic!(
                "this test needs a PostgreSQL server: set MESHPLANE_TEST_PG_URL to an admin URL \
                 where it may create databases (tests/run starts a throwaway server and sets \
                 it; the Debian package postgresql provides initdb and pg_ctl), or set \
                 MESHPLANE_SKIP_POSTGRES_TESTS=1 to skip it on purpose"
            );
        };
        let admin = PgConnectOptions::from_str(&url).expect("test database URL");
        let name = format!("meshplane_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect_with(&admin)
            .await
            .expect("connect to the test server");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create a test database");
        conn.close().await.ok();
        let store = PgStore::connect(admin.clone().database(&name), 4)
            .await
            .expect("open the store");
        Some(Db { admin, name, store })
    }

    async fn finish(self) {
        self.store.pool.close().await;
        let mut conn = sqlx::PgConnection::connect_with(&self.admin)
            .await
            .expect("connect to the test server");
        sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&mut conn)
            .await
            .expect("drop the test database");
    }
}

fn label(s: &str) -> DnsLabel {
    DnsLabel::parse("test", s, DnsLabel::LABEL_MAX).expect("label")
}

fn key(n: u8) -> WgKey {
    use base64::Engine;
    WgKey::parse(
        "test",
        &base64::engine::general_purpose::STANDARD.encode([n; 32]),
    )
    .expect("key")
}

fn time(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + s, 123_456_000).expect("time")
}

fn network(name: &str, range4: &str) -> Network {
    Network {
        name: label(name),
        range4: Some(range4.parse().expect("range")),
        range6: Some("fd00:1::/64".parse().expect("range")),
        keepalive: 25,
        mtu: 1420,
        listen_port: 51820,
        ext_client_dns: vec!["10.1.0.53".parse().expect("ip")],
        nameservers: vec![
            "1.1.1.1".parse().expect("ip"),
            "2606:4700::1111".parse().expect("ip"),
        ],
        create_time: time(0),
        update_time: time(1),
    }
}

fn node(id: &str, network: &str, name: &str, k: u8) -> Node {
    Node {
        id: id.into(),
        network: label(network),
        name: label(name),
        public_key: key(k),
        endpoint: Some(Endpoint::parse("test", "203.0.113.7:51820").expect("endpoint")),
        listen_port: 51820,
        address: Some("10.1.0.1".parse().expect("ip")),
        address6: Some("fd00:1::1".parse().expect("ip")),
        os: "linux".into(),
        keepalive: 0,
        egress: None,
        ingress: None,
        connected: false,
        last_seen: None,
        applied_revision: 0,
        config_revision: 0,
        create_time: time(2),
        update_time: time(2),
        wireguard_interface: None,
        host: None,
        apply_error: None,
        failed_revision: 0,
        tags: vec![],
    }
}

fn client(id: &str, network: &str, ingress: &str, name: &str, k: u8) -> ExtClient {
    ExtClient {
        id: id.into(),
        network: label(network),
        name: label(name),
        ingress_node_id: ingress.into(),
        public_key: key(k),
        sealed_private_key: Some(vec![1, 2, 3]),
        address: Some("10.1.0.9".parse().expect("ip")),
        address6: None,
        dns: vec!["9.9.9.9".parse().expect("ip")],
        enabled: true,
        config_revision: 0,
        downloaded_revision: 0,
        create_time: time(3),
        update_time: time(3),
        tags: vec![],
    }
}

fn page(size: usize, after: Option<&str>) -> PageRequest {
    PageRequest {
        size,
        after: after.map(Into::into),
    }
}

async fn commit(tx: Box<dyn Tx>) {
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn every_write_and_read_round_trips() {
    let Some(db) = Db::new().await else { return };
    let s = &db.store;
    assert_eq!(s.backend(), "postgres");

    // Networks.
    let net = network("net1", "10.1.0.0/24");
    let mut tx = s.begin().await.unwrap();
    assert!(tx.network_conflicts(&net).await.unwrap().is_empty());
    tx.insert_network(&net).await.unwrap();
    let mut other = network("other", "10.2.0.0/24");
    other.range6 = None;
    tx.insert_network(&other).await.unwrap();
    commit(tx).await;
    assert_eq!(s.get_network("net1").await.unwrap(), Some(net.clone()));
    assert_eq!(s.get_network("nope").await.unwrap(), None);
    let names: Vec<_> = s.list_networks(&page(10, None)).await.unwrap();
    assert_eq!(names, vec![net.clone(), other.clone()]);
    assert_eq!(
        s.list_networks(&page(10, Some("net1"))).await.unwrap(),
        vec![other.clone()]
    );
    let mut tx = s.begin().await.unwrap();
    assert_eq!(tx.network_conflicts(&net).await.unwrap(), vec![net.clone()]);
    let mut changed = tx.lock_network("net1").await.unwrap().unwrap();
    changed.mtu = 1380;
    changed.nameservers.clear();
    changed.update_time = time(9);
    tx.update_network(&changed).await.unwrap();
    assert_eq!(tx.lock_network("nope").await.unwrap(), None);
    commit(tx).await;
    assert_eq!(s.get_network("net1").await.unwrap(), Some(changed));

    // Admin tokens.
    let token = AdminToken {
        id: "00000000000000aa".into(),
        name: "ops".into(),
        create_time: time(4),
    };
    let mut tx = s.begin().await.unwrap();
    tx.insert_admin_token(&token, &[7; 32]).await.unwrap();
    commit(tx).await;
    assert_eq!(s.list_admin_tokens().await.unwrap(), vec![token.clone()]);
    assert_eq!(
        s.admin_token_hash(&token.id).await.unwrap(),
        Some(vec![7; 32])
    );
    let mut tx = s.begin().await.unwrap();
    assert!(tx.delete_admin_token(&token.id).await.unwrap());
    assert!(!tx.delete_admin_token(&token.id).await.unwrap());
    commit(tx).await;
    assert_eq!(s.admin_token_hash(&token.id).await.unwrap(), None);

    // Enrollment keys.
    let one_use = EnrollmentKey {
        id: "k1".into(),
        networks: vec![label("net1"), label("other")],
        uses_remaining: 1,
        unlimited: false,
        expire_time: Some(time(100)),
        description: "one use".into(),
        create_time: time(5),
    };
    let unlimited = EnrollmentKey {
        id: "k2".into(),
        networks: vec![label("other")],
        uses_remaining: 0,
        unlimited: true,
        expire_time: None,
        description: String::new(),
        create_time: time(5),
    };
    let mut tx = s.begin().await.unwrap();
    tx.insert_enrollment_key(&one_use, &[1; 32]).await.unwrap();
    tx.insert_enrollment_key(&unlimited, &[2; 32])
        .await
        .unwrap();
    commit(tx).await;
    let stored = s.get_enrollment_key("k1").await.unwrap().unwrap();
    assert_eq!((stored.key, stored.hash), (one_use.clone(), vec![1; 32]));
    assert_eq!(
        s.list_enrollment_keys(None, &page(10, None)).await.unwrap(),
        vec![one_use.clone(), unlimited.clone()]
    );
    assert_eq!(
        s.list_enrollment_keys(Some("net1"), &page(10, None))
            .await
            .unwrap(),
        vec![one_use.clone()]
    );
    assert_eq!(
        s.list_enrollment_keys(None, &page(10, Some("k1")))
            .await
            .unwrap(),
        vec![unlimited.clone()]
    );
    let mut tx = s.begin().await.unwrap();
    let locked = tx.enrollment_key("k1").await.unwrap().unwrap();
    assert_eq!(locked.hash, vec![1; 32]);
    assert!(tx.take_key_use("k1").await.unwrap());
    assert!(!tx.take_key_use("k1").await.unwrap());
    assert!(tx.take_key_use("k2").await.unwrap());
    assert!(tx.take_key_use("k2").await.unwrap());
    assert!(!tx.take_key_use("nope").await.unwrap());
    commit(tx).await;
    let k1 = s.get_enrollment_key("k1").await.unwrap().unwrap();
    assert_eq!(k1.key.uses_remaining, 0);

    // Nodes.
    let mut gw = node("n1", "net1", "gw", 1);
    gw.ingress = Some(Ingress {
        ext_client_dns: vec!["10.1.0.1".parse().unwrap()],
    });
    gw.egress = Some(Egress {
        ranges: vec![
            "192.168.0.0/16".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ],
        interface: "eth0".into(),
        nat: false,
        ..Default::default()
    });
    let mut plain = node("n2", "net1", "a-b", 2);
    plain.endpoint = None;
    plain.address = Some("10.1.0.2".parse().unwrap());
    plain.address6 = None;
    let tok1 = NewToken::generate(TokenKind::Node);
    let tok2 = NewToken::generate(TokenKind::Node);
    let mut tx = s.begin().await.unwrap();
    tx.insert_node(&gw, &tok1).await.unwrap();
    tx.insert_node(&plain, &tok2).await.unwrap();
    commit(tx).await;
    assert_eq!(s.get_node("n1").await.unwrap(), Some(gw.clone()));
    assert_eq!(s.get_node("n2").await.unwrap(), Some(plain.clone()));
    assert_eq!(
        s.node_token(&tok1.id).await.unwrap(),
        Some(("n1".into(), tok1.hash.to_vec()))
    );
    assert_eq!(s.node_token("nope").await.unwrap(), None);
    // Byte-wise order: "a-b" before "gw"; a page of 1 fetches 2.
    let listed = s.list_nodes(None, &page(1, None)).await.unwrap();
    assert_eq!(
        listed.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
        ["n2", "n1"]
    );
    let listed = s
        .list_nodes(Some("net1"), &page(5, Some("net1/a-b")))
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
        ["n1"]
    );
    assert!(
        s.list_nodes(Some("other"), &page(5, None))
            .await
            .unwrap()
            .is_empty()
    );

    let mut tx = s.begin().await.unwrap();
    assert_eq!(
        tx.network_nodes("net1").await.unwrap(),
        vec![plain.clone(), gw.clone()]
    );
    assert_eq!(
        tx.name_owner("net1", "gw").await.unwrap(),
        Some(Owner::Node("n1".into()))
    );
    assert_eq!(tx.name_owner("other", "gw").await.unwrap(), None);
    assert_eq!(
        tx.key_owner("net1", &key(2)).await.unwrap(),
        Some(Owner::Node("n2".into()))
    );
    assert_eq!(tx.key_owner("net1", &key(9)).await.unwrap(), None);
    // Every mutable field, with a host report; then None keeps it.
    let mut upd = tx.node("n2").await.unwrap().unwrap();
    upd.name = label("renamed");
    upd.public_key = key(3);
    upd.endpoint = Some(Endpoint::parse("test", "peer.example.com:4000").unwrap());
    upd.listen_port = 4000;
    upd.keepalive = 15;
    upd.egress = Some(Egress {
        ranges: vec!["172.16.0.0/12".parse().unwrap()],
        interface: "ens3".into(),
        nat: true,
        ..Default::default()
    });
    upd.ingress = Some(Ingress {
        ext_client_dns: vec![],
    });
    upd.last_seen = Some(time(20));
    upd.applied_revision = 5;
    upd.wireguard_interface = Some("wg7".into());
    upd.host = Some(HostReport {
        interfaces: vec![HostInterface {
            name: "eth0".into(),
            addresses: vec!["192.0.2.5/24".parse::<IpNet>().unwrap()],
            up: true,
        }],
        routes: vec![],
        report_time: time(20),
    });
    upd.apply_error = Some("boom".into());
    upd.failed_revision = 6;
    upd.update_time = time(21);
    tx.update_node(&upd).await.unwrap();
    tx.save_report(&upd).await.unwrap();
    commit(tx).await;
    assert_eq!(s.get_node("n2").await.unwrap(), Some(upd.clone()));
    let mut tx = s.begin().await.unwrap();
    let mut again = upd.clone();
    again.host = None;
    again.apply_error = None;
    again.egress = None;
    again.ingress = None;
    tx.update_node(&again).await.unwrap();
    tx.save_report(&again).await.unwrap();
    commit(tx).await;
    let read = s.get_node("n2").await.unwrap().unwrap();
    assert_eq!(read.host, upd.host);
    assert_eq!(
        (read.apply_error, read.egress, read.ingress),
        (None, None, None)
    );
    s.touch_node("n2", time(30)).await.unwrap();
    s.touch_node("n2", time(25)).await.unwrap();
    assert_eq!(
        s.get_node("n2").await.unwrap().unwrap().last_seen,
        Some(time(30))
    );

    // Overlay addresses.
    let mut tx = s.begin().await.unwrap();
    assert_eq!(tx.lowest_free_offset("net1", Family::V4).await.unwrap(), 1);
    tx.insert_allocation("net1", Family::V4, 1, &Owner::Node("n1".into()))
        .await
        .unwrap();
    tx.insert_allocation("net1", Family::V4, 2, &Owner::Node("n2".into()))
        .await
        .unwrap();
    tx.insert_allocation("net1", Family::V4, 4, &Owner::Node("n2".into()))
        .await
        .unwrap();
    tx.insert_allocation("net1", Family::V6, 1, &Owner::Node("n1".into()))
        .await
        .unwrap();
    assert_eq!(tx.lowest_free_offset("net1", Family::V4).await.unwrap(), 3);
    assert_eq!(tx.lowest_free_offset("net1", Family::V6).await.unwrap(), 2);
    assert_eq!(tx.lowest_free_offset("other", Family::V4).await.unwrap(), 1);
    tx.free_addresses("n2").await.unwrap();
    assert_eq!(tx.lowest_free_offset("net1", Family::V4).await.unwrap(), 2);
    commit(tx).await;
    let mut tx = s.begin().await.unwrap();
    let dup = tx
        .insert_allocation("net1", Family::V4, 1, &Owner::ExtClient("c1".into()))
        .await;
    assert!(matches!(dup, Err(Error::Aborted(_))), "{dup:?}");
    drop(tx);
    let mut tx = s.begin().await.unwrap();
    let big = tx
        .insert_allocation("net1", Family::V6, u128::MAX, &Owner::Node("n1".into()))
        .await;
    assert!(matches!(big, Err(Error::Internal(_))), "{big:?}");
    drop(tx);

    // External clients.
    let c1 = client("c1", "net1", "n1", "laptop", 11);
    let mut c2 = client("c2", "net1", "n1", "phone", 12);
    c2.sealed_private_key = None;
    c2.address = None;
    c2.address6 = Some("fd00:1::9".parse().unwrap());
    c2.dns = vec![];
    let mut tx = s.begin().await.unwrap();
    tx.insert_ext_client(&c1).await.unwrap();
    tx.insert_ext_client(&c2).await.unwrap();
    let same_name = tx
        .insert_ext_client(&client("c3", "net1", "n1", "laptop", 13))
        .await;
    assert!(matches!(same_name, Err(Error::Aborted(_))), "{same_name:?}");
    drop(tx);
    let mut tx = s.begin().await.unwrap();
    tx.insert_ext_client(&c1).await.unwrap();
    tx.insert_ext_client(&c2).await.unwrap();
    assert_eq!(tx.ext_client("c1").await.unwrap(), Some(c1.clone()));
    assert_eq!(
        tx.ext_clients_of("n1").await.unwrap(),
        vec![c1.clone(), c2.clone()]
    );
    assert_eq!(
        tx.name_owner("net1", "phone").await.unwrap(),
        Some(Owner::ExtClient("c2".into()))
    );
    assert_eq!(
        tx.key_owner("net1", &key(11)).await.unwrap(),
        Some(Owner::ExtClient("c1".into()))
    );
    let mut c1b = c1.clone();
    c1b.name = label("laptop2");
    c1b.dns = vec![];
    c1b.enabled = false;
    c1b.config_revision = 3;
    c1b.update_time = time(40);
    tx.update_ext_client(&c1b).await.unwrap();
    tx.set_client_revisions(Clients::One("c2"), 4)
        .await
        .unwrap();
    commit(tx).await;
    assert_eq!(s.get_ext_client("c1").await.unwrap(), Some(c1b.clone()));
    assert_eq!(
        s.get_ext_client("c2")
            .await
            .unwrap()
            .unwrap()
            .config_revision,
        4
    );
    let mut tx = s.begin().await.unwrap();
    tx.set_client_revisions(Clients::OfIngress("n1"), 7)
        .await
        .unwrap();
    tx.set_client_revisions(Clients::OfNetwork("other"), 8)
        .await
        .unwrap();
    commit(tx).await;
    // A page of 1 fetches 2 (the second tells that more follow).
    let listed = s
        .list_ext_clients(Some("net1"), Some("n1"), &page(1, None))
        .await
        .unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|c| (c.id.as_str(), c.config_revision))
            .collect::<Vec<_>>(),
        [("c1", 7), ("c2", 7)]
    );
    let listed = s
        .list_ext_clients(None, None, &page(5, Some("net1/laptop2")))
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["c2"]
    );
    assert!(
        s.list_ext_clients(None, Some("n2"), &page(5, None))
            .await
            .unwrap()
            .is_empty()
    );
    s.mark_downloaded("c1", 6).await.unwrap();
    s.mark_downloaded("c1", 5).await.unwrap();
    assert_eq!(
        s.get_ext_client("c1")
            .await
            .unwrap()
            .unwrap()
            .downloaded_revision,
        6
    );

    // Custom DNS entries.
    let entry = DnsEntry {
        network: label("net1"),
        name: "db.prod".into(),
        address: Some("10.1.0.50".parse().unwrap()),
        address6: None,
        kind: DnsKind::Custom,
        create_time: time(50),
    };
    let mut tx = s.begin().await.unwrap();
    tx.insert_dns_entry(&entry).await.unwrap();
    assert_eq!(
        tx.dns_entry("net1", "db.prod").await.unwrap(),
        Some(entry.clone())
    );
    assert_eq!(tx.dns_entry("other", "db.prod").await.unwrap(), None);
    assert_eq!(
        tx.name_owner("net1", "db.prod").await.unwrap(),
        Some(Owner::DnsEntry("db.prod".into()))
    );
    commit(tx).await;

    // Presence (one replica here; see `presence_is_shared`).
    assert_eq!(
        s.presence("r1", &["n1".into(), "gone".into()], time(60), time(0))
            .await
            .unwrap(),
        vec!["n1".to_string()]
    );

    // The snapshot.
    let (latest, views) = s.load_all().await.unwrap();
    assert_eq!(latest, 0);
    assert_eq!(views.len(), 2);
    let v = &views[0];
    assert_eq!(v.network.name.as_str(), "net1");
    assert_eq!(
        v.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
        ["n1", "n2"]
    );
    assert!(
        v.nodes.iter().all(|n| n.host.is_none()),
        "no host reports in views"
    );
    assert_eq!(v.ext_clients.len(), 2);
    assert_eq!(v.dns_entries.len(), 1);
    assert_eq!(v.dns_entries[0].name, "db.prod");
    assert!(views[1].nodes.is_empty());

    // Deletes.
    let mut tx = s.begin().await.unwrap();
    tx.delete_dns_entry("net1", "db.prod").await.unwrap();
    tx.delete_ext_client("c2").await.unwrap();
    tx.delete_node("n2").await.unwrap();
    tx.delete_enrollment_key("k2").await.unwrap();
    commit(tx).await;
    assert_eq!(s.get_node("n2").await.unwrap(), None);
    assert_eq!(s.get_ext_client("c2").await.unwrap(), None);
    assert_eq!(
        s.get_enrollment_key("k2").await.unwrap().map(|k| k.key),
        None
    );
    let mut tx = s.begin().await.unwrap();
    tx.delete_network("net1").await.unwrap();
    commit(tx).await;
    assert_eq!(s.get_node("n1").await.unwrap(), None);
    assert_eq!(s.get_ext_client("c1").await.unwrap(), None);
    assert_eq!(
        s.get_enrollment_key("k1")
            .await
            .unwrap()
            .unwrap()
            .key
            .networks,
        vec![label("other")]
    );
    assert!(
        s.presence("r1", &["n1".into()], time(61), time(0))
            .await
            .unwrap()
            .is_empty()
    );
    let mut tx = s.begin().await.unwrap();
    assert_eq!(tx.lowest_free_offset("net1", Family::V4).await.unwrap(), 1);
    drop(tx);

    db.finish().await;
}

/// The store's notification stream.
async fn listen(s: &PgStore) -> crate::store::Notifications {
    s.notifications()
        .await
        .unwrap()
        .expect("a notification stream")
}

/// The next revision announced, within 10 s.
async fn next_hint(notes: &mut crate::store::Notifications) -> u64 {
    tokio::time::timeout(Duration::from_secs(10), notes.next())
        .await
        .expect("a notification within 10 s")
        .expect("the stream goes on")
        .expect("a revision")
}

#[tokio::test]
async fn the_log_is_dense_ordered_and_announced() {
    let Some(db) = Db::new().await else { return };
    let s = &db.store;
    let mut notes = listen(s).await;
    assert_eq!(s.log_bounds().await.unwrap().latest, 0);
    assert_eq!(s.log_bounds().await.unwrap().oldest, 1);

    let net = network("net1", "10.1.0.0/24");
    let mut tx = s.begin().await.unwrap();
    tx.insert_network(&net).await.unwrap();
    let r1 = tx
        .append(Action::Created, &Resource::Network(net.clone()), true)
        .await
        .unwrap();
    commit(tx).await;
    assert_eq!(r1, 1);
    assert_eq!(s.get_network("net1").await.unwrap(), Some(net.clone()));

    // A rolled-back append gives its number back.
    let mut tx = s.begin().await.unwrap();
    let lost = tx
        .append(Action::Updated, &Resource::Network(net.clone()), true)
        .await
        .unwrap();
    assert_eq!(lost, 2);
    drop(tx);

    let n = node("n1", "net1", "gw", 1);
    let mut tx = s.begin().await.unwrap();
    tx.insert_node(&n, &NewToken::generate(TokenKind::Node))
        .await
        .unwrap();
    let r2 = tx
        .append(Action::Created, &Resource::Node(Box::new(n.clone())), true)
        .await
        .unwrap();
    let key = EnrollmentKey {
        id: "k".into(),
        networks: vec![label("net1")],
        uses_remaining: 1,
        unlimited: false,
        expire_time: None,
        description: String::new(),
        create_time: time(0),
    };
    let r3 = tx
        .append(Action::Created, &Resource::EnrollmentKey(key), false)
        .await
        .unwrap();
    commit(tx).await;
    assert_eq!((r2, r3), (2, 3));

    // Announced on commit only, in order.
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(next_hint(&mut notes).await);
    }
    assert_eq!(got, [1, 2, 3]);

    // The network's config revision follows config events only.
    assert_eq!(s.get_node("n1").await.unwrap().unwrap().config_revision, 2);
    let events = s.events_after(0, 10).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(events[0].action, Action::Created);
    assert_eq!(events[0].resource, Resource::Network(net.clone()));
    assert_eq!(events[1].resource.id(), "n1");
    assert_eq!(s.events_after(1, 1).await.unwrap()[0].revision, 2);
    assert!(s.events_after(3, 10).await.unwrap().is_empty());
    assert!(s.events_after(u64::MAX, 10).await.unwrap().is_empty());
    assert_eq!(
        s.log_bounds().await.unwrap(),
        crate::store::LogBounds {
            oldest: 1,
            latest: 3
        }
    );

    // Pruning keeps the newest.
    let future = crate::domain::now() + chrono::Duration::hours(1);
    assert_eq!(s.prune_events(future).await.unwrap(), 2);
    assert_eq!(s.prune_events(future).await.unwrap(), 0);
    assert_eq!(
        s.log_bounds().await.unwrap(),
        crate::store::LogBounds {
            oldest: 3,
            latest: 3
        }
    );
    let (latest, views) = s.load_all().await.unwrap();
    assert_eq!((latest, views[0].revision), (3, 2));

    db.finish().await;
}

#[tokio::test]
async fn concurrent_appends_stay_dense() {
    let Some(db) = Db::new().await else { return };
    let store = std::sync::Arc::new(db.store);
    let net = network("net1", "10.1.0.0/24");
    let mut tx = store.begin().await.unwrap();
    tx.insert_network(&net).await.unwrap();
    commit(tx).await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let store = store.clone();
        let net = net.clone();
        tasks.push(tokio::spawn(async move {
            // Mixing both ways of appending can deadlock (a batch holds the
            // head and then moves the network's revision; an immediate
            // append may hold the network and wait for the head): the
            // database aborts one, which runs again, as the service would.
            loop {
                let attempt = async {
                    let mut tx = store.begin().await?;
                    if i % 5 == 1 {
                        // Group commit's way: appends numbered under the
                        // head's lock and written at commit.
                        tx.lock_log().await?;
                    }
                    if i % 4 == 0 {
                        tx.lock_network("net1").await?;
                    }
                    let rev = tx
                        .append(Action::Updated, &Resource::Network(net.clone()), i % 2 == 0)
                        .await?;
                    if i % 3 == 0 {
                        drop(tx);
                        Ok(None)
                    } else {
                        tx.commit().await?;
                        Ok(Some(rev))
                    }
                };
                match attempt.await {
                    Err(Error::Aborted(_)) => continue,
                    other => break other.unwrap(),
                }
            }
        }));
    }
    let mut committed = Vec::new();
    for t in tasks {
        committed.extend(t.await.unwrap());
    }
    committed.sort_unstable();
    let want: Vec<u64> = (1..=16).collect();
    assert_eq!(committed, want);
    let events = store.events_after(0, 100).await.unwrap();
    assert_eq!(events.iter().map(|e| e.revision).collect::<Vec<_>>(), want);
    let db = Db {
        store: std::sync::Arc::into_inner(store).expect("tasks done"),
        ..db
    };
    db.finish().await;
}

/// Under the log head's lock (group commit's batches), appends are
/// numbered at once and written together at commit: a rollback to the
/// savepoint drops those after the mark and gives their numbers back; in
/// the transaction, nodes read show their network's new config revision;
/// after the commit the log, the config revision and the notification are
/// what immediate appends would have left.
#[tokio::test]
async fn batched_appends_are_written_at_commit() {
    let Some(db) = Db::new().await else { return };
    let s = &db.store;
    let mut notes = listen(s).await;
    let net = network("net1", "10.1.0.0/24");
    let other = network("net2", "10.2.0.0/24");
    let n = node("n1", "net1", "gw", 1);
    let mut tx = s.begin().await.unwrap();
    tx.insert_network(&net).await.unwrap();
    tx.insert_network(&other).await.unwrap();
    tx.insert_node(&n, &NewToken::generate(TokenKind::Node))
        .await
        .unwrap();
    assert_eq!(
        tx.append(Action::Created, &Resource::Network(net.clone()), true)
            .await
            .unwrap(),
        1
    );
    commit(tx).await;
    assert_eq!(next_hint(&mut notes).await, 1);

    let mut tx = s.begin().await.unwrap();
    tx.lock_log().await.unwrap();
    tx.savepoint().await.unwrap();
    let node_event = Resource::Node(Box::new(n.clone()));
    assert_eq!(
        tx.append(Action::Updated, &node_event, true).await.unwrap(),
        2
    );
    assert_eq!(
        tx.append(Action::Created, &Resource::Network(other.clone()), true)
            .await
            .unwrap(),
        3
    );
    // Not written yet: another connection sees the log as it was.
    assert_eq!(s.log_bounds().await.unwrap().latest, 1);
    assert_eq!(tx.node("n1").await.unwrap().unwrap().config_revision, 2);
    tx.keep_and_mark().await.unwrap();
    assert_eq!(
        tx.append(Action::Updated, &node_event, true).await.unwrap(),
        4
    );
    tx.rollback_to_savepoint().await.unwrap();
    assert_eq!(tx.node("n1").await.unwrap().unwrap().config_revision, 2);
    assert_eq!(
        tx.append(Action::Deleted, &node_event, false)
            .await
            .unwrap(),
        4,
        "a rolled-back number is taken again"
    );
    commit(tx).await;

    let events = s.events_after(0, 10).await.unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.revision, e.action, e.resource.id()))
            .collect::<Vec<_>>(),
        [
            (1, Action::Created, "net1".to_owned()),
            (2, Action::Updated, "n1".to_owned()),
            (3, Action::Created, "net2".to_owned()),
            (4, Action::Deleted, "n1".to_owned()),
        ]
    );
    assert_eq!(events[1].resource, node_event);
    assert_eq!(s.log_bounds().await.unwrap().latest, 4);
    // Config events moved their networks; the last event was not one.
    assert_eq!(s.get_node("n1").await.unwrap().unwrap().config_revision, 2);
    let (_, views) = s.load_all().await.unwrap();
    let revs: Vec<_> = views
        .iter()
        .map(|v| (v.network.name.to_string(), v.revision))
        .collect();
    assert_eq!(revs, [("net1".to_owned(), 2), ("net2".to_owned(), 3)]);
    assert_eq!(
        next_hint(&mut notes).await,
        4,
        "one notification, of the newest revision"
    );

    // A batch that appended nothing writes nothing.
    let mut tx = s.begin().await.unwrap();
    tx.lock_log().await.unwrap();
    commit(tx).await;
    assert_eq!(s.log_bounds().await.unwrap().latest, 4);
    db.finish().await;
}

#[tokio::test]
async fn presence_is_shared() {
    let Some(db) = Db::new().await else { return };
    let s = &db.store;
    let mut tx = s.begin().await.unwrap();
    tx.insert_network(&network("net1", "10.1.0.0/24"))
        .await
        .unwrap();
    for (i, id) in ["n1", "n2", "n3"].into_iter().enumerate() {
        let mut n = node(id, "net1", id, i as u8);
        n.address = None;
        tx.insert_node(&n, &NewToken::generate(TokenKind::Node))
            .await
            .unwrap();
    }
    commit(tx).await;
    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        s.presence("a", &ids(&["n1", "n2"]), time(10), time(0))
            .await
            .unwrap(),
        ids(&["n1", "n2"])
    );
    assert_eq!(
        s.presence("b", &ids(&["n2", "n3"]), time(11), time(0))
            .await
            .unwrap(),
        ids(&["n1", "n2", "n3"])
    );
    // "a" drops n1; n2 stays through "b".
    assert_eq!(
        s.presence("a", &ids(&[]), time(12), time(0)).await.unwrap(),
        ids(&["n2", "n3"])
    );
    // "b" stopped refreshing: its rows expire.
    assert_eq!(
        s.presence("a", &ids(&["n1"]), time(30), time(20))
            .await
            .unwrap(),
        ids(&["n1"])
    );
    db.finish().await;
}

#[tokio::test]
async fn a_second_open_finds_the_schema() {
    let Some(db) = Db::new().await else { return };
    let again = PgStore::connect(db.admin.clone().database(&db.name), 2)
        .await
        .unwrap();
    assert_eq!(again.log_bounds().await.unwrap().latest, 0);
    again.pool.close().await;
    db.finish().await;
}

#[tokio::test]
async fn notifications_survive_a_lost_connection() {
    let Some(db) = Db::new().await else { return };
    let s = &db.store;
    let mut notes = listen(s).await;
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(20), notes.next())
            .await
            .expect("a hint within 20 s")
            .expect("the stream goes on")
            .unwrap()
    };
    // Cut every connection to the test database (the listener's too).
    let mut admin = sqlx::PgConnection::connect_with(&db.admin).await.unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&db.name)
    .execute(&mut admin)
    .await
    .unwrap();
    // Listening again: a hint to read the log.
    assert_eq!(next().await, 0);
    let net = network("net1", "10.1.0.0/24");
    let mut tx = s.begin().await.unwrap();
    tx.insert_network(&net).await.unwrap();
    tx.append(Action::Created, &Resource::Network(net), true)
        .await
        .unwrap();
    commit(tx).await;
    assert_eq!(next().await, 1);
    db.finish().await;
}

#[tokio::test]
async fn network_creation_is_serialised() {
    let Some(db) = Db::new().await else { return };
    let store = std::sync::Arc::new(db.store);
    // Eight creators of overlapping networks: the advisory lock lets one
    // at a time read the others, so exactly one gets in.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut tx = store.begin().await.unwrap();
            let net = network(&format!("net{i}"), "10.1.0.0/24");
            let existing = tx.network_conflicts(&net).await.unwrap();
            if existing.iter().any(|n| n.range4 == net.range4) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.insert_network(&net).await.unwrap();
            tx.append(Action::Created, &Resource::Network(net), true)
                .await
                .unwrap();
            commit(tx).await;
            true
        }));
    }
    let mut created = 0;
    for t in tasks {
        created += usize::from(t.await.unwrap());
    }
    assert_eq!(created, 1);
    assert_eq!(store.log_bounds().await.unwrap().latest, 1);
    let db = Db {
        store: std::sync::Arc::into_inner(store).expect("tasks done"),
        ..db
    };
    db.finish().await;
}

#[tokio::test]
async fn replicas_migrate_at_once() {
    let Some(db) = Db::new().await else { return };
    // A second, empty database that three replicas open together.
    let name = format!("{}_b", db.name);
    let mut admin = sqlx::PgConnection::connect_with(&db.admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let opts = db.admin.clone().database(&name);
    let (a, b, c) = tokio::join!(
        PgStore::connect(opts.clone(), 2),
        PgStore::connect(opts.clone(), 2),
        PgStore::connect(opts.clone(), 2),
    );
    for s in [a.unwrap(), b.unwrap(), c.unwrap()] {
        assert_eq!(s.log_bounds().await.unwrap().latest, 0);
        s.pool.close().await;
    }
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
    db.finish().await;
}
