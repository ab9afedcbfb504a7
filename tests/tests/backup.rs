//! `meshplane backup` and `meshplane restore` (issue #13, item 9): a backup
//! taken while the server runs and writes is one consistent snapshot of
//! what was committed, and restoring it into a fresh data directory (with
//! the same secret.key) brings back every resource with its fields and
//! revisions; WatchEvents resumes from the backup's last revision. Both
//! refuse what they must not do.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::{Command, Output},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use meshplane_proto::v1 as pb;
use meshplane_tests::{TestServer, backend, built_binary, expect_code, wg_key, wg_value};
use tonic::Code;

/// Runs `meshplane ARGS` (off the async runtime) and returns its output.
async fn meshplane(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(built_binary("meshplane"))
            .args(&args)
            .env_remove("MESHPLANE_DATABASE_URL")
            .env_remove("MESHPLANE_DATA_DIR")
            .env_remove("MESHPLANE_SECRET_KEY_FILE")
            .output()
            .expect("run meshplane")
    })
    .await
    .expect("join")
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn path(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_owned()
}

async fn sqlite_server(dir: &Path) -> TestServer {
    TestServer::start_replica(&meshplane_server::default_database_url(dir), dir, |_| {}).await
}

/// Everything a server shows of the networks `wanted` selects, in one
/// comparable value: networks, nodes, clients, DNS entries, hosts files,
/// enrollment keys, every node's config and every client's wg-quick file
/// (the private key opened with the server's secret key).
#[derive(Debug, PartialEq)]
struct State {
    networks: Vec<pb::Network>,
    nodes: Vec<pb::Node>,
    clients: Vec<pb::ExtClient>,
    dns: Vec<pb::DnsEntry>,
    hosts: Vec<String>,
    keys: Vec<pb::EnrollmentKey>,
    node_configs: Vec<pb::NodeConfig>,
    client_configs: Vec<(String, u64)>,
}

async fn state(s: &TestServer, wanted: impl Fn(&str) -> bool) -> State {
    let networks: Vec<pb::Network> = s
        .networks()
        .await
        .list_networks(pb::ListNetworksRequest {
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .expect("ListNetworks")
        .into_inner()
        .networks;
    let mut st = State {
        networks: vec![],
        nodes: vec![],
        clients: vec![],
        dns: vec![],
        hosts: vec![],
        keys: s
            .keys()
            .await
            .list_enrollment_keys(pb::ListEnrollmentKeysRequest {
                page_size: 1000,
                ..Default::default()
            })
            .await
            .expect("ListEnrollmentKeys")
            .into_inner()
            .enrollment_keys,
        node_configs: vec![],
        client_configs: vec![],
    };
    for n in networks.into_iter().filter(|n| wanted(&n.name)) {
        let nodes = s
            .nodes()
            .await
            .list_nodes(pb::ListNodesRequest {
                network: n.name.clone(),
                page_size: 1000,
                page_token: String::new(),
            })
            .await
            .expect("ListNodes")
            .into_inner()
            .nodes;
        let clients = s
            .ext_clients()
            .await
            .list_ext_clients(pb::ListExtClientsRequest {
                network: n.name.clone(),
                page_size: 1000,
                ..Default::default()
            })
            .await
            .expect("ListExtClients")
            .into_inner()
            .ext_clients;
        st.dns.extend(
            s.dns()
                .await
                .list_dns_entries(pb::ListDnsEntriesRequest {
                    network: n.name.clone(),
                    page_size: 1000,
                    page_token: String::new(),
                })
                .await
                .expect("ListDnsEntries")
                .into_inner()
                .entries,
        );
        st.hosts.push(
            s.dns()
                .await
                .get_hosts_file(pb::GetHostsFileRequest {
                    network: n.name.clone(),
                })
                .await
                .expect("GetHostsFile")
                .into_inner()
                .content,
        );
        for node in &nodes {
            st.node_configs.push(s.node_config(&node.id).await);
        }
        st.nodes.extend(nodes);
        st.clients.extend(clients);
        st.networks.push(n);
    }
    // Downloads are recorded (config_stale): the lists above come first.
    for c in &st.clients {
        let r = s
            .ext_clients()
            .await
            .get_ext_client_config(pb::GetExtClientConfigRequest { id: c.id.clone() })
            .await
            .expect("GetExtClientConfig")
            .into_inner();
        st.client_configs.push((r.config, r.revision));
    }
    st
}

/// The events after revision 1 up to and including `last`, with what an
/// event shows of the present (a node's current config revision and
/// connection) left out.
async fn events_through(s: &TestServer, last: u64) -> Vec<pb::Event> {
    let mut stream = pb::event_service_client::EventServiceClient::new(s.admin().await)
        .watch_events(pb::WatchEventsRequest {
            after_revision: 1,
            networks: vec![],
        })
        .await
        .expect("WatchEvents")
        .into_inner();
    let mut out = Vec::new();
    while out.last().is_none_or(|e: &pb::Event| e.revision < last) {
        let e = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("events up to the backup's revision in 30 s")
            .expect("the stream goes on")
            .expect("an event");
        out.push(past(e));
    }
    out
}

fn past(mut e: pb::Event) -> pb::Event {
    if let Some(pb::event::Resource::Node(n)) = &mut e.resource {
        n.config_revision = 0;
        n.connected = false;
        n.drifted = false;
    }
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_while_writing_restores_every_resource_and_revision() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src_dir = tmp.path().join("src");
    std::fs::create_dir_all(&src_dir).unwrap();
    let src = sqlite_server(&src_dir).await;

    // Every kind of resource, changed and deleted along the way.
    src.create_network("corp", "10.101.0.0/16", "fd00:101::/64")
        .await;
    src.create_network("lab", "10.102.0.0/24", "").await;
    src.create_network("bg", "10.103.0.0/16", "fd00:103::/64")
        .await;
    src.networks()
        .await
        .update_network(pb::UpdateNetworkRequest {
            network: Some(pb::Network {
                name: "lab".into(),
                default_keepalive: 33,
                nameservers: vec!["192.0.2.53".into()],
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["default_keepalive".into(), "nameservers".into()],
            }),
        })
        .await
        .expect("UpdateNetwork");
    let key = src.create_key(&["corp", "lab", "bg"], None).await.token;
    let three_uses = src.create_key(&["corp"], Some(3)).await.token;
    let server = src
        .node(&key, "corp", "server", Some("203.0.113.1:51821"))
        .await;
    let office = src.node(&three_uses, "corp", "office", None).await;
    let laptop = src.node(&three_uses, "corp", "laptop", None).await;
    let gone = src.node(&three_uses, "corp", "gone", None).await;
    let lab1 = src
        .node(&key, "lab", "lab1", Some("203.0.113.2:51821"))
        .await;
    src.node(&key, "lab", "lab2", None).await;
    src.ingress(&server.id, &["10.101.0.1"])
        .await
        .expect("ingress");
    src.ingress(&lab1.id, &[]).await.expect("ingress");
    src.egress(&office.id, &["10.10.10.0/24"], "eth2", Some(false))
        .await
        .expect("egress");
    src.egress(&lab1.id, &["0.0.0.0/0"], "eth0", None)
        .await
        .expect("egress");
    src.nodes()
        .await
        .update_node(pb::UpdateNodeRequest {
            node: Some(pb::Node {
                id: laptop.id.clone(),
                endpoint: "198.51.100.7:40000".into(),
                persistent_keepalive: 15,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["endpoint".into(), "persistent_keepalive".into()],
            }),
        })
        .await
        .expect("UpdateNode");
    src.nodes()
        .await
        .delete_node(pb::DeleteNodeRequest {
            id: gone.id.clone(),
        })
        .await
        .expect("DeleteNode");
    let phone = src.ext_client("corp", &server.id, "phone").await.unwrap();
    let tablet = src.ext_client("corp", &server.id, "tablet").await.unwrap();
    src.ext_client("lab", &lab1.id, "kiosk").await.unwrap();
    src.ext_clients()
        .await
        .create_ext_client(pb::CreateExtClientRequest {
            network: "corp".into(),
            ingress_node_id: server.id.clone(),
            name: "byo".into(),
            public_key: wg_key(),
            dns: vec!["192.0.2.1".into()],
            tags: vec![],
        })
        .await
        .expect("a client with its own key");
    src.ext_clients()
        .await
        .delete_ext_client(pb::DeleteExtClientRequest {
            id: tablet.id.clone(),
        })
        .await
        .expect("DeleteExtClient");
    for (net, name, addr) in [("corp", "db", "10.1.2.3"), ("lab", "printer", "192.0.2.9")] {
        src.dns()
            .await
            .create_dns_entry(pb::CreateDnsEntryRequest {
                entry: Some(pb::DnsEntry {
                    network: net.into(),
                    name: name.into(),
                    address: addr.into(),
                    ..Default::default()
                }),
            })
            .await
            .expect("CreateDnsEntry");
    }
    // Downloaded once: config_stale is stored state too.
    src.ext_config(&phone.id).await;

    // Writes go on in "bg" while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let writer = {
        let stop = stop.clone();
        let acks = acks.clone();
        let agent = src.agent(None).await;
        let dns = src.dns().await;
        let key = key.clone();
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                agent
                    .clone()
                    .register(meshplane_tests::register_request(
                        &key,
                        "bg",
                        &format!("bg{i}"),
                    ))
                    .await
                    .expect("a registration in bg");
                acks.lock().unwrap().push(Instant::now());
                if i % 3 == 0 {
                    dns.clone()
                        .create_dns_entry(pb::CreateDnsEntryRequest {
                            entry: Some(pb::DnsEntry {
                                network: "bg".into(),
                                name: format!("bgd{i}"),
                                address: "192.0.2.77".into(),
                                ..Default::default()
                            }),
                        })
                        .await
                        .expect("a DNS entry in bg");
                    acks.lock().unwrap().push(Instant::now());
                }
            }
            i
        })
    };
    while acks.lock().unwrap().len() < 10 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let backup = tmp.path().join("meshplane.backup");
    let started = Instant::now();
    let out = meshplane(vec![
        "--data-dir".into(),
        path(&src_dir),
        "backup".into(),
        "--out".into(),
        path(&backup),
    ])
    .await;
    let ended = Instant::now();
    assert!(out.status.success(), "backup failed: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let revision: u64 = stdout
        .split("backup of revision ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision in the backup's output: {stdout}"));
    assert!(
        stdout.contains(&path(&src_dir.join("secret.key"))),
        "the backup does not say where the secret key is: {stdout}"
    );
    // Some more writes after it, then the writer stops.
    let at_end = acks.lock().unwrap().len();
    while acks.lock().unwrap().len() < at_end + 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let registered = writer.await.expect("writer");
    let during = acks
        .lock()
        .unwrap()
        .iter()
        .filter(|t| **t >= started && **t <= ended)
        .count();
    eprintln!(
        "backup of revision {revision} taken in {} ms while {during} writes were \
         acknowledged; {registered} registrations in bg in all",
        (ended - started).as_millis()
    );

    // It never overwrites a file.
    let again = meshplane(vec![
        "--data-dir".into(),
        path(&src_dir),
        "backup".into(),
        "--out".into(),
        path(&backup),
    ])
    .await;
    assert!(
        !again.status.success() && String::from_utf8_lossy(&again.stderr).contains("exists"),
        "a second backup to the same file: {}",
        text(&again)
    );

    // Restore into a fresh data directory, with the original secret key
    // (and the admin token file the test helper reads).
    let dst_dir = tmp.path().join("dst");
    let out = meshplane(vec![
        "--data-dir".into(),
        path(&dst_dir),
        "restore".into(),
        "--from".into(),
        path(&backup),
    ])
    .await;
    assert!(out.status.success(), "restore failed: {}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("(revision {revision})")) && said.contains("no secret key at"),
        "restore's output: {said}"
    );
    for f in ["secret.key", "admin.token"] {
        std::fs::copy(src_dir.join(f), dst_dir.join(f)).expect("copy");
    }
    // A data directory with a database is refused.
    let twice = meshplane(vec![
        "--data-dir".into(),
        path(&dst_dir),
        "restore".into(),
        "--from".into(),
        path(&backup),
    ])
    .await;
    assert!(
        !twice.status.success() && String::from_utf8_lossy(&twice.stderr).contains("exists"),
        "a restore over a database: {}",
        text(&twice)
    );

    // Both servers as they start on their databases (config revisions are
    // computed when a server loads its state).
    src.stop().await;
    let src = sqlite_server(&src_dir).await;
    let dst = sqlite_server(&dst_dir).await;

    // Every resource outside "bg" as it was, revisions included.
    let quiet = |n: &str| n != "bg";
    let before = state(&src, quiet).await;
    let after = state(&dst, quiet).await;
    assert_eq!(before.networks.len(), 2);
    assert_eq!(before.nodes.len(), 5);
    assert_eq!(before.clients.len(), 3);
    assert_eq!(
        before, after,
        "the restored server differs from the original"
    );
    // The sealed private keys opened with the copied secret key.
    assert!(
        after
            .client_configs
            .iter()
            .filter(|(c, _)| wg_value(c, "PrivateKey").is_some_and(|k| k.len() == 44))
            .count()
            >= 2,
        "server-generated keys are in the restored configs"
    );

    // The log up to the backup's revision, the same on both.
    let log = events_through(&src, revision).await;
    assert_eq!(log.last().map(|e| e.revision), Some(revision));
    assert_eq!(events_through(&dst, revision).await, log);

    // In "bg": exactly what was committed up to that revision, nothing of
    // what came after.
    let created = |kind: &str| -> BTreeSet<String> {
        log.iter()
            .filter(|e| e.kind == kind && e.action == pb::EventAction::Created as i32)
            .filter(|e| match &e.resource {
                Some(pb::event::Resource::Node(n)) => n.network == "bg",
                Some(pb::event::Resource::DnsEntry(d)) => d.network == "bg",
                _ => false,
            })
            .map(|e| e.id.clone())
            .collect()
    };
    let bg = |s: &State| -> (BTreeMap<String, pb::Node>, BTreeSet<String>) {
        (
            s.nodes
                .iter()
                .map(|n| {
                    (
                        n.id.clone(),
                        pb::Node {
                            config_revision: 0,
                            ..n.clone()
                        },
                    )
                })
                .collect(),
            s.dns
                .iter()
                .filter(|d| d.kind == pb::DnsEntryKind::Custom as i32)
                .map(|d| format!("{}.bg", d.name))
                .collect(),
        )
    };
    let only_bg = |n: &str| n == "bg";
    let (src_nodes, src_dns) = bg(&state(&src, only_bg).await);
    let (dst_nodes, dst_dns) = bg(&state(&dst, only_bg).await);
    assert_eq!(
        dst_nodes.keys().cloned().collect::<BTreeSet<_>>(),
        created("node"),
        "the restored bg nodes are not exactly those committed up to revision {revision}"
    );
    assert_eq!(dst_dns, created("dns_entry"));
    assert!(
        src_nodes.len() > dst_nodes.len() && src_dns.len() >= dst_dns.len(),
        "writes after the backup are not in it"
    );
    for (id, n) in &dst_nodes {
        assert_eq!(Some(n), src_nodes.get(id), "bg node {id} differs");
    }

    // WatchEvents resumes from the backup's last revision: nothing after it
    // yet, then the restored server's first write is revision + 1.
    expect_code(
        pb::event_service_client::EventServiceClient::new(dst.admin().await)
            .watch_events(pb::WatchEventsRequest {
                after_revision: revision + 1,
                networks: vec![],
            })
            .await,
        Code::OutOfRange,
    );
    let mut resumed = pb::event_service_client::EventServiceClient::new(dst.admin().await)
        .watch_events(pb::WatchEventsRequest {
            after_revision: revision,
            networks: vec![],
        })
        .await
        .expect("WatchEvents from the backup's revision")
        .into_inner();
    dst.dns()
        .await
        .create_dns_entry(pb::CreateDnsEntryRequest {
            entry: Some(pb::DnsEntry {
                network: "corp".into(),
                name: "after-restore".into(),
                address: "10.1.2.4".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("a write on the restored server");
    let next = tokio::time::timeout(Duration::from_secs(10), resumed.next())
        .await
        .expect("an event in 10 s")
        .expect("the stream goes on")
        .expect("an event");
    assert_eq!(
        (next.revision, next.id.as_str()),
        (revision + 1, "after-restore.corp")
    );

    // The restored server keeps the admin tokens and key uses: the
    // three-use key has none left, the original admin token works (the
    // calls above used it).
    let r = dst
        .register(&three_uses, "corp", "fourth")
        .await
        .expect_err("the key's uses went with the backup");
    assert_eq!(r.code(), Code::Unauthenticated, "{r:?}");
    dst.stop().await;
    src.stop().await;
}

#[tokio::test]
async fn restore_refuses_what_is_not_a_meshplane_backup() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let restore = |from: &Path, dir: &Path| {
        vec![
            "--data-dir".into(),
            path(dir),
            "restore".into(),
            "--from".into(),
            path(from),
        ]
    };

    let junk = tmp.path().join("junk");
    std::fs::write(&junk, "not a database at all").unwrap();
    let out = meshplane(restore(&junk, &tmp.path().join("a"))).await;
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("is not an SQLite database"),
        "{}",
        text(&out)
    );
    assert!(!tmp.path().join("a/meshplane.db").exists());

    // An SQLite file, but not meshplane's.
    let other = tmp.path().join("other.db");
    {
        use sqlx::{ConnectOptions, Connection};
        let mut c = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&other)
            .create_if_missing(true)
            .connect()
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (x)")
            .execute(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
    }
    let out = meshplane(restore(&other, &tmp.path().join("b"))).await;
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not meshplane's"),
        "{}",
        text(&out)
    );
    assert!(!tmp.path().join("b/meshplane.db").exists());
    assert!(!tmp.path().join("b/meshplane.db.restoring").exists());

    // A live database (with its write-ahead log) is not a backup.
    let live = tmp.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    let s = sqlite_server(&live).await;
    s.create_network("corp", "10.101.0.0/16", "").await;
    let out = meshplane(restore(&live.join("meshplane.db"), &tmp.path().join("c"))).await;
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("live database"),
        "{}",
        text(&out)
    );
    s.stop().await;

    // A damaged one fails the integrity check.
    let backup = tmp.path().join("good.backup");
    let out = meshplane(vec![
        "--data-dir".into(),
        path(&live),
        "backup".into(),
        "--out".into(),
        path(&backup),
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let mut bytes = std::fs::read(&backup).unwrap();
    let page = 4096;
    assert!(bytes.len() > 4 * page);
    // Scribble over the b-tree pages after the first (keep the header).
    for b in &mut bytes[page + 8..3 * page] {
        *b = 0x5a;
    }
    let damaged = tmp.path().join("damaged.backup");
    std::fs::write(&damaged, bytes).unwrap();
    let out = meshplane(restore(&damaged, &tmp.path().join("d"))).await;
    assert!(
        !out.status.success(),
        "a damaged backup was restored: {}",
        text(&out)
    );
    assert!(!tmp.path().join("d/meshplane.db").exists());

    // No database to back up.
    let out = meshplane(vec![
        "--data-dir".into(),
        path(&tmp.path().join("empty")),
        "backup".into(),
        "--out".into(),
        path(&tmp.path().join("x.backup")),
    ])
    .await;
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no database"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn backup_and_restore_point_to_pg_dump_on_postgres() {
    let Some(url) = backend::postgres_database().await else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = meshplane(vec![
        "--data-dir".into(),
        path(tmp.path()),
        "--database-url".into(),
        url.clone(),
        "backup".into(),
        "--out".into(),
        path(&tmp.path().join("x.backup")),
    ])
    .await;
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("pg_dump"),
        "{}",
        text(&out)
    );
    assert!(!tmp.path().join("x.backup").exists());
    let out = meshplane(vec![
        "--data-dir".into(),
        path(tmp.path()),
        "--database-url".into(),
        url,
        "restore".into(),
        "--from".into(),
        path(&tmp.path().join("x.backup")),
    ])
    .await;
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("pg_restore"),
        "{}",
        text(&out)
    );
}
