//! DNS: custom entries, automatic names, the hosts file, names in agents'
//! configs, and the built-in resolver queried with a real DNS client.

use std::{net::SocketAddr, process::Command, time::Duration};

use meshplane_proto::v1 as pb;
use meshplane_tests::{TestServer, expect_code, expect_field};
use tonic::Code;

fn entry(network: &str, name: &str, a: &str, a6: &str) -> pb::CreateDnsEntryRequest {
    pb::CreateDnsEntryRequest {
        entry: Some(pb::DnsEntry {
            network: network.into(),
            name: name.into(),
            address: a.into(),
            address6: a6.into(),
            kind: 0,
        }),
    }
}

/// Sets a network's upstream resolvers.
async fn set_nameservers(s: &TestServer, network: &str, nameservers: &[&str]) {
    let mut net = meshplane_tests::network(network, "", "");
    net.nameservers = nameservers.iter().map(|n| n.to_string()).collect();
    s.networks()
        .await
        .update_network(pb::UpdateNetworkRequest {
            network: Some(net),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["nameservers".into()],
            }),
        })
        .await
        .unwrap();
}

async fn list(s: &TestServer, network: &str) -> Vec<(String, i32, String)> {
    s.dns()
        .await
        .list_dns_entries(pb::ListDnsEntriesRequest {
            network: network.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .map(|e| (e.name, e.kind, e.address))
        .collect()
}

const CUSTOM: i32 = pb::DnsEntryKind::Custom as i32;
const NODE: i32 = pb::DnsEntryKind::Node as i32;
const CLIENT: i32 = pb::DnsEntryKind::ExtClient as i32;

#[tokio::test]
async fn entries_automatic_names_and_collisions() {
    let s = TestServer::start().await;
    s.create_network("corp", "10.150.0.0/24", "fd00:150::/64")
        .await;
    let key = s.create_key(&["corp"], None).await.token;
    let server = s
        .node(&key, "corp", "server", Some("203.0.113.1:51821"))
        .await;
    s.ingress(&server.id, &[]).await.unwrap();
    let phone = s.ext_client("corp", &server.id, "phone").await.unwrap();
    let mut dns = s.dns().await;
    let db = dns
        .create_dns_entry(entry("corp", "DB.Prod", "10.9.9.9", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(db.name, "db.prod", "names are stored lowercase");
    assert_eq!(db.kind, CUSTOM);
    assert_eq!(
        list(&s, "corp").await,
        vec![
            ("db.prod".into(), CUSTOM, "10.9.9.9".into()),
            ("phone".into(), CLIENT, phone.address.clone()),
            ("server".into(), NODE, server.address.clone()),
        ]
    );

    // Collisions both ways.
    let st = expect_code(
        dns.create_dns_entry(entry("corp", "server", "10.1.1.1", ""))
            .await,
        Code::AlreadyExists,
    );
    assert!(st.message().contains("node"), "{}", st.message());
    expect_code(
        dns.create_dns_entry(entry("corp", "db.prod", "10.1.1.1", ""))
            .await,
        Code::AlreadyExists,
    );
    dns.create_dns_entry(entry("corp", "nas", "", "fd00::99"))
        .await
        .unwrap();
    let st = expect_code(s.register(&key, "corp", "nas").await, Code::AlreadyExists);
    assert!(st.message().contains("DNS entry"), "{}", st.message());

    // Automatic entries cannot be deleted; custom ones can; unknown: not found.
    let del = |name: &str| pb::DeleteDnsEntryRequest {
        network: "corp".into(),
        name: name.into(),
    };
    let st = expect_code(
        dns.delete_dns_entry(del("server")).await,
        Code::FailedPrecondition,
    );
    assert!(
        st.message().contains("rename or delete the node"),
        "{}",
        st.message()
    );
    expect_code(
        dns.delete_dns_entry(del("phone")).await,
        Code::FailedPrecondition,
    );
    expect_code(dns.delete_dns_entry(del("ghost")).await, Code::NotFound);
    dns.delete_dns_entry(del("nas")).await.unwrap();
    s.register(&key, "corp", "nas").await.unwrap();

    // Renaming and deleting nodes and clients update their entries.
    s.nodes()
        .await
        .update_node(pb::UpdateNodeRequest {
            node: Some(pb::Node {
                id: server.id.clone(),
                name: "gateway".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["name".into()],
            }),
        })
        .await
        .unwrap();
    s.ext_clients()
        .await
        .delete_ext_client(pb::DeleteExtClientRequest { id: phone.id })
        .await
        .unwrap();
    let names: Vec<String> = list(&s, "corp").await.into_iter().map(|e| e.0).collect();
    assert_eq!(names, vec!["db.prod", "gateway", "nas"]);

    // The hosts file has every address.
    let hosts = dns
        .get_hosts_file(pb::GetHostsFileRequest {
            network: "corp".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .content;
    assert!(
        hosts.contains(&format!("{}\tgateway.corp\n", server.address)),
        "{hosts}"
    );
    assert!(
        hosts.contains(&format!("{}\tgateway.corp\n", server.address6)),
        "{hosts}"
    );
    assert!(hosts.contains("10.9.9.9\tdb.prod.corp\n"), "{hosts}");
    assert!(!hosts.contains("server.corp"), "{hosts}");
}

#[tokio::test]
async fn bad_dns_input_names_the_field() {
    let s = TestServer::start().await;
    s.create_network("corp", "10.151.0.0/24", "").await;
    let mut dns = s.dns().await;
    for (name, a, a6, field) in [
        ("a..b", "10.0.0.1", "", "entry.name"),
        ("", "10.0.0.1", "", "entry.name"),
        (&"x".repeat(64) as &str, "10.0.0.1", "", "entry.name"),
        (
            &vec!["a".repeat(60); 5].join(".") as &str,
            "10.0.0.1",
            "",
            "entry.name",
        ),
        ("under_score", "10.0.0.1", "", "entry.name"),
        ("db", "", "", "entry.address"),
        ("db", "300.1.1.1", "", "entry.address"),
        ("db", "fd00::1", "", "entry.address"),
        ("db", "", "10.0.0.1", "entry.address6"),
    ] {
        let d = expect_field(
            dns.create_dns_entry(entry("corp", name, a, a6)).await,
            field,
        );
        assert!(!d.is_empty());
    }
    expect_field(
        dns.create_dns_entry(entry("Bad Net", "db", "10.0.0.1", ""))
            .await,
        "entry.network",
    );
    expect_code(
        dns.create_dns_entry(entry("nope", "db", "10.0.0.1", ""))
            .await,
        Code::NotFound,
    );
    expect_code(
        dns.get_hosts_file(pb::GetHostsFileRequest {
            network: "nope".into(),
        })
        .await,
        Code::NotFound,
    );
    expect_field(
        dns.list_dns_entries(pb::ListDnsEntriesRequest::default())
            .await,
        "network",
    );
    assert!(
        list(&s, "corp").await.is_empty(),
        "rejected entries were written"
    );
}

#[tokio::test]
async fn names_and_nameservers_reach_agents() {
    let s = TestServer::start().await;
    s.create_network("corp", "10.152.0.0/24", "").await;
    let key = s.create_key(&["corp"], None).await.token;
    let a = s.register(&key, "corp", "a").await.unwrap();
    let mut st = s
        .agent(Some(&a.node_token))
        .await
        .watch_config(pb::WatchConfigRequest { last_revision: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut held = None;
    let first = st.message().await.unwrap().unwrap();
    meshplane_proto::delta::apply_update(&mut held, &first).unwrap();
    s.dns()
        .await
        .create_dns_entry(entry("corp", "db", "10.9.9.9", ""))
        .await
        .unwrap();
    let u = tokio::time::timeout(Duration::from_secs(10), st.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(pb::config_update::Update::Delta(d)) = &u.update else {
        panic!("{u:?}")
    };
    assert_eq!(d.upsert_dns_records.len(), 1);
    assert_eq!(d.upsert_dns_records[0].name, "db.corp");
    meshplane_proto::delta::apply_update(&mut held, &u).unwrap();
    set_nameservers(&s, "corp", &["9.9.9.9"]).await;
    let u = tokio::time::timeout(Duration::from_secs(10), st.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    meshplane_proto::delta::apply_update(&mut held, &u).unwrap();
    let cfg = held.unwrap();
    assert_eq!(cfg.dns.as_ref().unwrap().nameservers, vec!["9.9.9.9"]);
    assert_eq!(Some(&cfg), Some(&s.node_config(&a.node.unwrap().id).await));
}

/// A stand-in upstream resolver on loopback: answers every A query with
/// 192.0.2.53 and counts the queries.
async fn upstream() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let q = &buf[..n];
            // Header: flags = response, recursion available; one answer.
            let mut r = q.to_vec();
            r[2] = 0x81;
            r[3] = 0x80;
            r[6] = 0;
            r[7] = 1;
            r[8..12].copy_from_slice(&[0, 0, 0, 0]);
            // Keep header + question only (drop any EDNS record).
            let mut end = 12;
            while q[end] != 0 {
                end += q[end] as usize + 1;
            }
            end += 5;
            r.truncate(end);
            r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 53]);
            let _ = sock.send_to(&r, from).await;
        }
    });
    (addr, count)
}

/// Runs `dig` against the server: (status, answers).
fn dig(server: SocketAddr, name: &str, qtype: &str) -> (String, Vec<String>) {
    let out = Command::new("dig")
        .args([
            &format!("@{}", server.ip()),
            "-p",
            &server.port().to_string(),
            "+tries=1",
            "+time=3",
            "+noall",
            "+comments",
            "+answer",
            name,
            qtype,
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!("dig not found ({e}): install the Debian package bind9-dnsutils (tests/run does this)")
        });
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no status in dig output:\n{text}"))
        .to_owned();
    let answers = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .collect();
    (status, answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_resolver_answers_zones_and_forwards_the_rest() {
    let (up, queries) = upstream().await;
    let s = TestServer::start_with_dns(up.port()).await;
    let dns_addr = s.dns_addr.unwrap();
    s.create_network("corp", "10.153.0.0/24", "fd00:153::/64")
        .await;
    let key = s.create_key(&["corp"], None).await.token;
    let server = s.node(&key, "corp", "server", None).await;
    s.dns()
        .await
        .create_dns_entry(entry("corp", "db", "10.9.9.9", ""))
        .await
        .unwrap();

    let q = |name: &str, t: &str| {
        let name = name.to_owned();
        let t = t.to_owned();
        tokio::task::spawn_blocking(move || dig(dns_addr, &name, &t))
    };
    assert_eq!(
        q("server.corp", "A").await.unwrap(),
        ("NOERROR".into(), vec![server.address.clone()])
    );
    assert_eq!(
        q("SERVER.corp.", "AAAA").await.unwrap(),
        ("NOERROR".into(), vec![server.address6.clone()])
    );
    assert_eq!(
        q("db.corp", "A").await.unwrap(),
        ("NOERROR".into(), vec!["10.9.9.9".to_string()])
    );
    assert_eq!(
        q("db.corp", "AAAA").await.unwrap(),
        ("NOERROR".into(), vec![]),
        "no IPv6: empty answer"
    );
    assert_eq!(q("nobody.corp", "A").await.unwrap().0, "NXDOMAIN");

    // No upstream configured: refused, and nothing was sent upstream.
    assert_eq!(q("example.com", "A").await.unwrap().0, "REFUSED");
    assert_eq!(queries.load(std::sync::atomic::Ordering::Relaxed), 0);
    // With the network's nameserver set, outside names are forwarded.
    set_nameservers(&s, "corp", &[&up.ip().to_string()]).await;
    let mut forwarded = None;
    for _ in 0..50 {
        let r = q("example.com", "A").await.unwrap();
        if r.0 == "NOERROR" {
            forwarded = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        forwarded,
        Some(("NOERROR".into(), vec!["192.0.2.53".to_string()]))
    );
    assert!(queries.load(std::sync::atomic::Ordering::Relaxed) >= 1);

    // A node added after start resolves, without a restart.
    let late = s.node(&key, "corp", "late", None).await;
    let mut got = None;
    for _ in 0..50 {
        let r = q("late.corp", "A").await.unwrap();
        if r.0 == "NOERROR" {
            got = Some(r.1);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got, Some(vec![late.address]));
}
