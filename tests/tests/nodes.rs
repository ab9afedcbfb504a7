//! Enrollment keys, registration, address allocation, node tokens.

use std::collections::HashSet;

use meshplane_proto::v1 as pb;
use meshplane_server::domain::{
    enrollment::EnrollmentKey,
    names::DnsLabel,
    token::{NewToken, TokenKind},
};
use meshplane_tests::{TestServer, expect_code, expect_field, register_request, wg_key};
use tonic::Code;

async fn key_uses(s: &TestServer, id: &str) -> u32 {
    let keys = s
        .keys()
        .await
        .list_enrollment_keys(pb::ListEnrollmentKeysRequest::default())
        .await
        .unwrap()
        .into_inner()
        .enrollment_keys;
    keys.iter()
        .find(|k| k.id == id)
        .expect("key listed")
        .uses_remaining
}

async fn node_count(s: &TestServer) -> usize {
    s.nodes()
        .await
        .list_nodes(pb::ListNodesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .nodes
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_registrations_get_distinct_addresses() {
    let s = TestServer::start().await;
    s.create_network("corp", "10.20.0.0/16", "fd00:20::/64")
        .await;
    let key = s.create_key(&["corp"], None).await.token;
    let agent = s.agent(None).await;
    let calls = (0..200).map(|i| {
        let mut a = agent.clone();
        let req = register_request(&key, "corp", &format!("node-{i}"));
        tokio::spawn(async move { a.register(req).await.map(|r| r.into_inner()) })
    });
    let results = futures::future::join_all(calls).await;
    let nodes: Vec<pb::Node> = results
        .into_iter()
        .map(|r| r.unwrap().expect("register").node.unwrap())
        .collect();
    assert_eq!(nodes.len(), 200);
    let v4: HashSet<_> = nodes.iter().map(|n| n.address.clone()).collect();
    let v6: HashSet<_> = nodes.iter().map(|n| n.address6.clone()).collect();
    assert_eq!(v4.len(), 200);
    assert_eq!(v6.len(), 200);
    // Lowest free: exactly .1 to .200 of the range.
    let expected: HashSet<String> = (1..=200u32)
        .map(|i| format!("10.20.{}.{}", i / 256, i % 256))
        .collect();
    assert_eq!(v4, expected);
    let listed = s
        .nodes()
        .await
        .list_nodes(pb::ListNodesRequest {
            network: "corp".into(),
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(listed.len(), 200);
}

#[tokio::test]
async fn a_slash_29_takes_six_nodes_and_reuses_freed_addresses() {
    let s = TestServer::start().await;
    s.create_network("tiny", "10.30.0.0/29", "").await;
    let key = s.create_key(&["tiny"], None).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let r = s
            .register(&key.token, "tiny", &format!("n{i}"))
            .await
            .unwrap();
        let n = r.node.unwrap();
        assert_eq!(n.address, format!("10.30.0.{}", i + 1));
        ids.push(n.id);
    }
    let st = expect_code(
        s.register(&key.token, "tiny", "n6").await,
        Code::ResourceExhausted,
    );
    assert!(st.message().contains("10.30.0.0/29"), "{}", st.message());
    assert_eq!(node_count(&s).await, 6);

    s.nodes()
        .await
        .delete_node(pb::DeleteNodeRequest { id: ids[2].clone() })
        .await
        .unwrap();
    let r = s.register(&key.token, "tiny", "n6").await.unwrap();
    assert_eq!(r.node.unwrap().address, "10.30.0.3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_with_three_uses_registers_exactly_three_of_ten() {
    let s = TestServer::start().await;
    s.create_network("corp", "10.40.0.0/24", "").await;
    let key = s.create_key(&["corp"], Some(3)).await;
    let agent = s.agent(None).await;
    let calls = (0..10).map(|i| {
        let mut a = agent.clone();
        let req = register_request(&key.token, "corp", &format!("n{i}"));
        tokio::spawn(async move { a.register(req).await })
    });
    let results: Vec<_> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 3);
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.code(), Code::Unauthenticated, "{r:?}");
        assert!(r.message().contains("no uses left"), "{}", r.message());
    }
    assert_eq!(key_uses(&s, &key.id).await, 0);
    assert_eq!(node_count(&s).await, 3);
}

#[tokio::test]
async fn token_scope_matrix() {
    let s = TestServer::start().await;
    s.create_network("corp", "10.50.0.0/24", "").await;
    let key = s.create_key(&["corp"], None).await.token;
    let a = s.register(&key, "corp", "a").await.unwrap();
    let b = s.register(&key, "corp", "b").await.unwrap();
    let a_id = a.node.as_ref().unwrap().id.clone();
    let b_id = b.node.as_ref().unwrap().id.clone();

    // A node token on admin services: PERMISSION_DENIED.
    let node_ch = s.authed(Some(&a.node_token)).await;
    let mut nets = pb::network_service_client::NetworkServiceClient::new(node_ch.clone());
    expect_code(
        nets.list_networks(pb::ListNetworksRequest::default()).await,
        Code::PermissionDenied,
    );
    let mut nodes = pb::node_service_client::NodeServiceClient::new(node_ch.clone());
    expect_code(
        nodes
            .get_node(pb::GetNodeRequest { id: a_id.clone() })
            .await,
        Code::PermissionDenied,
    );
    let mut keys = pb::enrollment_key_service_client::EnrollmentKeyServiceClient::new(node_ch);
    expect_code(
        keys.list_enrollment_keys(pb::ListEnrollmentKeysRequest::default())
            .await,
        Code::PermissionDenied,
    );

    // An admin token on the node's RPCs: PERMISSION_DENIED.
    let mut admin_agent = s.agent(Some(&s.admin_token)).await;
    expect_code(
        admin_agent
            .report_status(pb::ReportStatusRequest {
                applied_revision: 1,
                endpoint: String::new(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    expect_code(
        admin_agent
            .watch_config(pb::WatchConfigRequest { last_revision: 0 })
            .await,
        Code::PermissionDenied,
    );
    // No token on the node's RPCs: UNAUTHENTICATED.
    let mut anon = s.agent(None).await;
    expect_code(
        anon.report_status(pb::ReportStatusRequest::default()).await,
        Code::Unauthenticated,
    );
    // An enrollment key is not a bearer credential.
    let mut with_key = s.agent(Some(&key)).await;
    expect_code(
        with_key
            .report_status(pb::ReportStatusRequest::default())
            .await,
        Code::PermissionDenied,
    );

    // The node token acts on its own node only.
    let mut agent_a = s.agent(Some(&a.node_token)).await;
    agent_a
        .report_status(pb::ReportStatusRequest {
            applied_revision: 3,
            endpoint: "203.0.113.5:51821".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut admin_nodes = s.nodes().await;
    let got_a = admin_nodes
        .get_node(pb::GetNodeRequest { id: a_id.clone() })
        .await
        .unwrap()
        .into_inner();
    let got_b = admin_nodes
        .get_node(pb::GetNodeRequest { id: b_id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got_a.applied_revision, 3);
    assert_eq!(got_a.endpoint, "203.0.113.5:51821");
    assert!(got_a.last_seen.is_some());
    assert_eq!(got_b.applied_revision, 0);
    assert!(got_b.last_seen.is_none());
    expect_field(
        agent_a
            .report_status(pb::ReportStatusRequest {
                applied_revision: 8,
                endpoint: "nope".into(),
                ..Default::default()
            })
            .await,
        "endpoint",
    );

    // A deleted node's token: UNAUTHENTICATED.
    admin_nodes
        .delete_node(pb::DeleteNodeRequest { id: a_id })
        .await
        .unwrap();
    expect_code(
        agent_a
            .report_status(pb::ReportStatusRequest::default())
            .await,
        Code::Unauthenticated,
    );
    expect_code(
        agent_a
            .watch_config(pb::WatchConfigRequest { last_revision: 0 })
            .await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn bad_enrollment_keys_are_refused_and_say_why() {
    let s = TestServer::start().await;
    s.create_network("corp", "10.60.0.0/24", "").await;
    s.create_network("lab", "10.61.0.0/24", "").await;

    // Unknown but well-formed, malformed, and missing.
    let forged = NewToken::generate(TokenKind::Enrollment).secret;
    let st = expect_code(
        s.register(&forged, "corp", "a").await,
        Code::Unauthenticated,
    );
    assert!(
        st.message().contains("unknown or revoked"),
        "{}",
        st.message()
    );
    expect_code(
        s.register("garbage", "corp", "a").await,
        Code::Unauthenticated,
    );
    let st = expect_code(s.register("", "corp", "a").await, Code::Unauthenticated);
    assert!(st.message().contains("enrollment_key"), "{}", st.message());

    // Revoked.
    let k = s.create_key(&["corp"], None).await;
    s.keys()
        .await
        .delete_enrollment_key(pb::DeleteEnrollmentKeyRequest { id: k.id.clone() })
        .await
        .unwrap();
    let st = expect_code(
        s.register(&k.token, "corp", "a").await,
        Code::Unauthenticated,
    );
    assert!(st.message().contains("revoked"), "{}", st.message());

    // Expired (stored directly: the API refuses to create one in the past).
    let t = NewToken::generate(TokenKind::Enrollment);
    let now = meshplane_server::domain::now();
    let mut tx = s.store.begin().await.unwrap();
    tx.insert_enrollment_key(
        &EnrollmentKey {
            id: t.id.clone(),
            networks: vec![DnsLabel::parse("n", "corp", 32).unwrap()],
            uses_remaining: 5,
            unlimited: false,
            expire_time: Some(now - chrono_secs(5)),
            description: String::new(),
            create_time: now - chrono_secs(60),
        },
        &t.hash,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let st = expect_code(
        s.register(&t.secret, "corp", "a").await,
        Code::Unauthenticated,
    );
    assert!(st.message().contains("expired"), "{}", st.message());

    // Used up.
    let one = s.create_key(&["corp"], Some(1)).await;
    s.register(&one.token, "corp", "first").await.unwrap();
    let st = expect_code(
        s.register(&one.token, "corp", "second").await,
        Code::Unauthenticated,
    );
    assert!(st.message().contains("no uses left"), "{}", st.message());

    // Valid key, wrong network.
    let corp_only = s.create_key(&["corp"], None).await;
    let st = expect_code(
        s.register(&corp_only.token, "lab", "a").await,
        Code::PermissionDenied,
    );
    assert!(st.message().contains("lab"), "{}", st.message());
    assert_eq!(node_count(&s).await, 1);
}

fn chrono_secs(n: i64) -> chrono::TimeDelta {
    chrono::TimeDelta::seconds(n)
}

#[tokio::test]
async fn bad_registration_fields_name_the_field_and_write_nothing() {
    let s = TestServer::start().await;
    s.create_network("corp", "10.70.0.0/24", "fd00:70::/64")
        .await;
    let key = s.create_key(&["corp"], Some(5)).await;
    let mut agent = s.agent(None).await;
    type Edit = fn(&mut pb::RegisterRequest);
    let cases: Vec<(Edit, &str)> = vec![
        (|r| r.public_key = "not base64!".into(), "public_key"),
        (|r| r.public_key = "AAAA".into(), "public_key"),
        (|r| r.name = "Bad_Name".into(), "name"),
        (|r| r.name = String::new(), "name"),
        (|r| r.name = "x".repeat(64), "name"),
        (|r| r.endpoint = "no-port".into(), "endpoint"),
        (|r| r.endpoint = "1.2.3.4:0".into(), "endpoint"),
        (|r| r.endpoint = "host name:80".into(), "endpoint"),
        (|r| r.listen_port = Some(0), "listen_port"),
        (|r| r.listen_port = Some(65536), "listen_port"),
    ];
    for (edit, field) in cases {
        let mut req = register_request(&key.token, "corp", "good");
        edit(&mut req);
        expect_field(agent.register(req).await, field);
    }
    assert_eq!(
        key_uses(&s, &key.id).await,
        5,
        "a failed Register used the key"
    );
    assert_eq!(node_count(&s).await, 0);

    // Duplicates: ALREADY_EXISTS, no use taken, no address taken.
    let first = agent
        .register(register_request(&key.token, "corp", "alpha"))
        .await
        .unwrap()
        .into_inner()
        .node
        .unwrap();
    assert_eq!(first.address, "10.70.0.1");
    assert_eq!(first.address6, "fd00:70::1");
    assert_eq!(first.listen_port, 51821, "the network's default port");
    let st = expect_code(
        agent
            .register(register_request(&key.token, "corp", "alpha"))
            .await,
        Code::AlreadyExists,
    );
    assert!(st.message().contains("alpha"), "{}", st.message());
    let mut same_key = register_request(&key.token, "corp", "beta");
    same_key.public_key = first.public_key.clone();
    let st = expect_code(agent.register(same_key).await, Code::AlreadyExists);
    assert!(st.message().contains("public key"), "{}", st.message());
    assert_eq!(key_uses(&s, &key.id).await, 4);

    let mut ok = register_request(&key.token, "corp", "beta");
    ok.listen_port = Some(51900);
    ok.endpoint = "[2001:db8::1]:51900".into();
    let second = agent.register(ok).await.unwrap().into_inner().node.unwrap();
    assert_eq!(
        second.address, "10.70.0.2",
        "a failed Register took an address"
    );
    assert_eq!(second.address6, "fd00:70::2");
    assert_eq!(second.listen_port, 51900);
}

#[tokio::test]
async fn enrollment_key_service_validates_and_hides_tokens() {
    let s = TestServer::start().await;
    s.create_network("corp", "10.80.0.0/24", "").await;
    s.create_network("lab", "10.81.0.0/24", "").await;
    let mut keys = s.keys().await;
    let create = |k: pb::EnrollmentKey| pb::CreateEnrollmentKeyRequest {
        enrollment_key: Some(k),
    };
    expect_field(
        keys.create_enrollment_key(create(pb::EnrollmentKey {
            uses_remaining: 1,
            ..Default::default()
        }))
        .await,
        "enrollment_key.networks",
    );
    expect_field(
        keys.create_enrollment_key(create(pb::EnrollmentKey {
            networks: vec!["corp".into()],
            ..Default::default()
        }))
        .await,
        "enrollment_key.uses_remaining",
    );
    expect_field(
        keys.create_enrollment_key(create(pb::EnrollmentKey {
            networks: vec!["corp".into()],
            uses_remaining: 1,
            expire_time: Some(prost_types::Timestamp {
                seconds: 1_000_000,
                nanos: 0,
            }),
            ..Default::default()
        }))
        .await,
        "enrollment_key.expire_time",
    );
    let st = expect_code(
        keys.create_enrollment_key(create(pb::EnrollmentKey {
            networks: vec!["corp".into(), "nope".into()],
            uses_remaining: 1,
            ..Default::default()
        }))
        .await,
        Code::NotFound,
    );
    assert!(st.message().contains("nope"), "{}", st.message());

    let a = s.create_key(&["corp"], Some(2)).await;
    let b = s.create_key(&["corp", "lab"], None).await;
    assert!(a.token.starts_with("mpk_") && a.token.len() > 40);
    let all = keys
        .list_enrollment_keys(pb::ListEnrollmentKeysRequest::default())
        .await
        .unwrap()
        .into_inner()
        .enrollment_keys;
    assert_eq!(all.len(), 2, "rejected creates wrote keys");
    assert!(
        all.iter().all(|k| k.token.is_empty()),
        "list leaked a token"
    );
    let lab = keys
        .list_enrollment_keys(pb::ListEnrollmentKeysRequest {
            network: "lab".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .enrollment_keys;
    assert_eq!(lab.iter().map(|k| &k.id).collect::<Vec<_>>(), vec![&b.id]);
    assert_eq!(lab[0].networks, vec!["corp", "lab"]);

    keys.delete_enrollment_key(pb::DeleteEnrollmentKeyRequest { id: a.id.clone() })
        .await
        .unwrap();
    expect_code(
        keys.delete_enrollment_key(pb::DeleteEnrollmentKeyRequest { id: a.id })
            .await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn node_service_gets_lists_updates_and_deletes() {
    let s = TestServer::start().await;
    s.create_network("corp", "10.90.0.0/24", "").await;
    s.create_network("lab", "10.91.0.0/24", "").await;
    let key = s.create_key(&["corp", "lab"], None).await.token;
    for name in ["c", "a", "b"] {
        s.register(&key, "corp", name).await.unwrap();
    }
    let lab = s.register(&key, "lab", "a").await.unwrap();
    let mut nodes = s.nodes().await;

    // Pages in (network, name) order, filtered by network.
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let r = nodes
            .list_nodes(pb::ListNodesRequest {
                network: String::new(),
                page_size: 3,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        names.extend(r.nodes.iter().map(|n| format!("{}/{}", n.network, n.name)));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(names, vec!["corp/a", "corp/b", "corp/c", "lab/a"]);
    let corp = nodes
        .list_nodes(pb::ListNodesRequest {
            network: "corp".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(corp.len(), 3);
    let a = corp.iter().find(|n| n.name == "a").unwrap().clone();
    let b = corp.iter().find(|n| n.name == "b").unwrap().clone();

    // Update with a mask.
    let new_key = wg_key();
    let upd = nodes
        .update_node(pb::UpdateNodeRequest {
            node: Some(pb::Node {
                id: a.id.clone(),
                name: "alpha".into(),
                endpoint: "198.51.100.7:51999".into(),
                listen_port: 51999,
                persistent_keepalive: 15,
                public_key: new_key.clone(),
                os: "ignored".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![
                    "name".into(),
                    "endpoint".into(),
                    "listen_port".into(),
                    "persistent_keepalive".into(),
                    "public_key".into(),
                ],
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(upd.name, "alpha");
    assert_eq!(upd.endpoint, "198.51.100.7:51999");
    assert_eq!(upd.listen_port, 51999);
    assert_eq!(upd.persistent_keepalive, 15);
    assert_eq!(upd.public_key, new_key);
    assert_eq!(upd.os, "linux");
    assert_eq!(upd.address, a.address);

    let update = |id: &str, node: pb::Node, paths: &[&str]| pb::UpdateNodeRequest {
        node: Some(pb::Node {
            id: id.into(),
            ..node
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
    };
    // Taken name and key in the same network.
    let st = expect_code(
        nodes
            .update_node(update(
                &b.id,
                pb::Node {
                    name: "alpha".into(),
                    ..Default::default()
                },
                &["name"],
            ))
            .await,
        Code::AlreadyExists,
    );
    assert!(st.message().contains("alpha"), "{}", st.message());
    expect_code(
        nodes
            .update_node(update(
                &b.id,
                pb::Node {
                    public_key: new_key.clone(),
                    ..Default::default()
                },
                &["public_key"],
            ))
            .await,
        Code::AlreadyExists,
    );
    // The same name in another network is fine: lab/a exists, corp/a is free.
    nodes
        .update_node(update(
            &b.id,
            pb::Node {
                name: "a".into(),
                ..Default::default()
            },
            &["name"],
        ))
        .await
        .unwrap();
    expect_field(
        nodes
            .update_node(update(&b.id, pb::Node::default(), &["address"]))
            .await,
        "update_mask",
    );
    expect_field(
        nodes
            .update_node(update(&b.id, pb::Node::default(), &[]))
            .await,
        "update_mask",
    );
    expect_field(
        nodes
            .update_node(update(&b.id, pb::Node::default(), &["listen_port"]))
            .await,
        "node.listen_port",
    );
    expect_code(
        nodes
            .update_node(update(
                "no-such-node",
                pb::Node {
                    name: "x".into(),
                    ..Default::default()
                },
                &["name"],
            ))
            .await,
        Code::NotFound,
    );

    // Delete: gone, token revoked.
    let lab_id = lab.node.unwrap().id;
    nodes
        .delete_node(pb::DeleteNodeRequest { id: lab_id.clone() })
        .await
        .unwrap();
    expect_code(
        nodes
            .get_node(pb::GetNodeRequest { id: lab_id.clone() })
            .await,
        Code::NotFound,
    );
    expect_code(
        nodes
            .delete_node(pb::DeleteNodeRequest { id: lab_id })
            .await,
        Code::NotFound,
    );
    expect_code(
        s.agent(Some(&lab.node_token))
            .await
            .report_status(pb::ReportStatusRequest::default())
            .await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn deleting_a_network_with_nodes_needs_force() {
    let s = TestServer::start().await;
    s.create_network("corp", "10.100.0.0/24", "").await;
    let key = s.create_key(&["corp"], None).await;
    let r = s.register(&key.token, "corp", "a").await.unwrap();
    let mut nets = s.networks().await;
    let st = expect_code(
        nets.delete_network(pb::DeleteNetworkRequest {
            name: "corp".into(),
            force: false,
        })
        .await,
        Code::FailedPrecondition,
    );
    assert!(st.message().contains("force"), "{}", st.message());
    assert_eq!(node_count(&s).await, 1);
    nets.delete_network(pb::DeleteNetworkRequest {
        name: "corp".into(),
        force: true,
    })
    .await
    .unwrap();
    assert_eq!(node_count(&s).await, 0);
    expect_code(
        s.agent(Some(&r.node_token))
            .await
            .report_status(pb::ReportStatusRequest::default())
            .await,
        Code::Unauthenticated,
    );
    // The key no longer admits to the deleted network; a new network of the
    // same name starts with a fresh address pool.
    s.create_network("corp", "10.100.0.0/24", "").await;
    expect_code(
        s.register(&key.token, "corp", "a").await,
        Code::PermissionDenied,
    );
    let key2 = s.create_key(&["corp"], None).await;
    let again = s.register(&key2.token, "corp", "a").await.unwrap();
    assert_eq!(again.node.unwrap().address, "10.100.0.1");
}

#[tokio::test]
async fn control_characters_in_free_text_are_refused_not_stored() {
    let s = TestServer::start().await;
    s.create_network("corp", "10.9.0.0/24", "").await;
    // PostgreSQL cannot store NUL in text: it must never reach the store.
    let r = s
        .keys()
        .await
        .create_enrollment_key(pb::CreateEnrollmentKeyRequest {
            enrollment_key: Some(pb::EnrollmentKey {
                networks: vec!["corp".into()],
                unlimited: true,
                description: "bad\0key".into(),
                ..Default::default()
            }),
        })
        .await;
    let why = expect_field(r, "enrollment_key.description");
    assert!(why.contains("control character"), "{why}");
    let key = s.create_key(&["corp"], None).await.token;
    let mut req = register_request(&key, "corp", "n1");
    req.os = "linux\0".into();
    let why = expect_field(s.agent(None).await.register(req).await, "os");
    assert!(why.contains("control character"), "{why}");
    assert_eq!(node_count(&s).await, 0, "nothing half-written");
    // An agent's error text is kept, made storable.
    let reg = s.register(&key, "corp", "n2").await.unwrap();
    s.agent(Some(&reg.node_token))
        .await
        .report_status(pb::ReportStatusRequest {
            applied_revision: 0,
            apply_error: "iptables-restore: line 3\0: bad".into(),
            failed_revision: 1,
            ..Default::default()
        })
        .await
        .expect("report");
    let n = s
        .nodes()
        .await
        .get_node(pb::GetNodeRequest {
            id: reg.node.unwrap().id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(n.apply_error, "iptables-restore: line 3\u{fffd}: bad");
}

#[tokio::test]
async fn a_report_of_a_revision_never_sent_is_refused_and_changes_nothing() {
    let s = TestServer::start().await;
    s.create_network("corp", "10.9.0.0/24", "").await;
    let key = s.create_key(&["corp"], None).await.token;
    let reg = s.register(&key, "corp", "n1").await.unwrap();
    let id = reg.node.unwrap().id;
    let get = async || {
        s.nodes()
            .await
            .get_node(pb::GetNodeRequest { id: id.clone() })
            .await
            .unwrap()
            .into_inner()
    };
    let before = get().await;
    let mut agent = s.agent(Some(&reg.node_token)).await;
    let why = expect_field(
        agent
            .report_status(pb::ReportStatusRequest {
                applied_revision: 999_999,
                ..Default::default()
            })
            .await,
        "applied_revision",
    );
    assert!(
        why.contains(&format!("config is at revision {}", before.config_revision)),
        "{why}"
    );
    let why = expect_field(
        agent
            .report_status(pb::ReportStatusRequest {
                applied_revision: before.config_revision,
                apply_error: "boom".into(),
                failed_revision: 999_999,
                ..Default::default()
            })
            .await,
        "failed_revision",
    );
    assert!(why.contains("never sent"), "{why}");
    let after = get().await;
    assert_eq!(after.applied_revision, before.applied_revision);
    assert_eq!(after.last_seen, before.last_seen, "nothing written");
    assert_eq!(after.apply_error, "");
}
