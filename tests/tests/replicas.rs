//! Several replicas on one PostgreSQL database: the database, not a process,
//! keeps addresses, key uses and egress ranges unique; a replica sees
//! another's writes at once (LISTEN/NOTIFY) and agents move between
//! replicas by revision; presence is shared; a restart of every replica
//! loses nothing.

use std::{collections::HashSet, time::Duration};

use futures::future::join_all;
use meshplane_proto::{
    delta::apply_update,
    v1::{self as pb, config_update::Update},
};
use meshplane_tests::{TestServer, backend::postgres_database};
use tonic::{Code, Streaming};

const WAIT: Duration = Duration::from_secs(10);

/// `n` replicas on one fresh PostgreSQL database, sharing one data
/// directory (so one secret key and one admin token); presence renewed
/// every 200 ms. None under the documented opt-out.
async fn replicas(n: usize) -> Option<(tempfile::TempDir, String, Vec<TestServer>)> {
    let url = postgres_database().await?;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(start(&url, dir.path()).await);
    }
    Some((dir, url, out))
}

async fn start(url: &str, dir: &std::path::Path) -> TestServer {
    TestServer::start_replica(url, dir, |o| {
        o.presence_interval = Duration::from_millis(200);
        o.presence_expiry = Duration::from_secs(2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_registrations_over_two_replicas_get_distinct_addresses() {
    let Some((_dir, _url, rs)) = replicas(2).await else {
        return;
    };
    rs[0]
        .create_network("corp", "10.20.0.0/16", "fd00:20::/64")
        .await;
    let key = rs[1].create_key(&["corp"], None).await.token;
    let calls = (0..200).map(|i| {
        let (s, key) = (&rs[i % 2], key.clone());
        async move { s.register(&key, "corp", &format!("n{i}")).await }
    });
    let nodes: Vec<pb::Node> = join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("every registration succeeds").node.expect("node"))
        .collect();
    let v4: HashSet<_> = nodes.iter().map(|n| n.address.clone()).collect();
    let v6: HashSet<_> = nodes.iter().map(|n| n.address6.clone()).collect();
    assert_eq!(v4.len(), 200, "distinct IPv4 addresses");
    assert_eq!(v6.len(), 200, "distinct IPv6 addresses");
    assert!(
        nodes
            .iter()
            .all(|n| !n.address.is_empty() && !n.address6.is_empty())
    );
    // The lowest free ones: .1 to .200, no holes.
    let mut last: Vec<u32> = nodes
        .iter()
        .map(|n| {
            let a: std::net::Ipv4Addr = n.address.parse().unwrap();
            u32::from(a) & 0xffff
        })
        .collect();
    last.sort();
    assert_eq!(last, (1..=200).collect::<Vec<u32>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_use_key_tried_ten_times_across_replicas_admits_exactly_three() {
    let Some((_dir, _url, rs)) = replicas(2).await else {
        return;
    };
    rs[0].create_network("corp", "10.20.0.0/16", "").await;
    let key = rs[0].create_key(&["corp"], Some(3)).await.token;
    let calls = (0..10).map(|i| {
        let (s, key) = (&rs[i % 2], key.clone());
        async move { s.register(&key, "corp", &format!("n{i}")).await }
    });
    let results = join_all(calls).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 3, "{results:#?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.code(), Code::Unauthenticated, "{r:?}");
        assert!(r.message().contains("no uses left"), "{}", r.message());
    }
    for s in &rs {
        let nodes = s
            .nodes()
            .await
            .list_nodes(pb::ListNodesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .nodes;
        assert_eq!(nodes.len(), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_egress_range_at_once_through_both_replicas_goes_to_exactly_one() {
    let Some((_dir, _url, rs)) = replicas(2).await else {
        return;
    };
    rs[0].create_network("corp", "10.20.0.0/16", "").await;
    let key = rs[0].create_key(&["corp"], None).await.token;
    let a = rs[0].node(&key, "corp", "a", None).await;
    let b = rs[1].node(&key, "corp", "b", None).await;
    for round in 0..10 {
        let range = format!("192.168.{round}.0/24");
        let ranges = [range.as_str()];
        let (ra, rb) = tokio::join!(
            rs[0].egress(&a.id, &ranges, "eth0", None),
            rs[1].egress(&b.id, &ranges, "eth0", None),
        );
        let won = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {ra:?} / {rb:?}");
        let lost = if ra.is_ok() { rb } else { ra };
        let st = lost.unwrap_err();
        assert_eq!(st.code(), Code::AlreadyExists, "{st:?}");
        assert!(st.message().contains(&range), "{}", st.message());
        // Free the range for the next round: the winner stops serving it.
        let winner = if round % 2 == 0 { &rs[0] } else { &rs[1] };
        let nodes = winner
            .nodes()
            .await
            .list_nodes(pb::ListNodesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .nodes;
        for n in nodes.iter().filter(|n| n.egress.is_some()) {
            winner
                .gateways()
                .await
                .delete_egress_gateway(pb::DeleteEgressGatewayRequest {
                    node_id: n.id.clone(),
                })
                .await
                .unwrap();
        }
    }
}

async fn watch(s: &TestServer, token: &str, last: u64) -> Streaming<pb::ConfigUpdate> {
    s.agent(Some(token))
        .await
        .watch_config(pb::WatchConfigRequest {
            last_revision: last,
        })
        .await
        .expect("watch config")
        .into_inner()
}

async fn next(st: &mut Streaming<pb::ConfigUpdate>) -> pb::ConfigUpdate {
    tokio::time::timeout(WAIT, st.message())
        .await
        .expect("an update within 10 s")
        .expect("stream ok")
        .expect("stream open")
}

/// Reads (whole) updates until the config held reaches `rev`; returns
/// whether any of them was a snapshot.
async fn until(
    st: &mut Streaming<pb::ConfigUpdate>,
    held: &mut Option<pb::NodeConfig>,
    rev: u64,
) -> bool {
    let mut snapshot = false;
    loop {
        let u = next(st).await;
        snapshot |= matches!(u.update, Some(Update::Snapshot(_)));
        apply_update(held, &u).expect("update applies");
        if !u.partial && held.as_ref().is_some_and(|c| c.revision >= rev) {
            return snapshot;
        }
    }
}

async fn connected(s: &TestServer, id: &str) -> bool {
    s.nodes()
        .await
        .get_node(pb::GetNodeRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
        .connected
}

/// Polls until `GetNode` on `s` says `want`.
async fn wait_connected(s: &TestServer, id: &str, want: bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while connected(s, id).await != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "GetNode never showed connected={want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_follows_writes_of_another_replica_and_moves_replicas_by_revision() {
    let Some((_dir, _url, mut rs)) = replicas(2).await else {
        return;
    };
    let a = rs.remove(0);
    let b = rs.remove(0);
    a.create_network("corp", "10.20.0.0/16", "").await;
    let key = a.create_key(&["corp"], None).await.token;
    let agent = a.register(&key, "corp", "laptop").await.expect("register");
    let (me, token) = (agent.node.unwrap(), agent.node_token);
    let gw = a.node(&key, "corp", "gw", Some("198.51.100.1:51821")).await;

    // The agent streams from B.
    let mut st = watch(&b, &token, 0).await;
    let mut held = None;
    until(&mut st, &mut held, 1).await;
    wait_connected(&b, &me.id, true).await;
    wait_connected(&a, &me.id, true).await;

    // An egress created through A reaches it through B, at once: B is woken
    // by A's NOTIFY, not by its poll (a second).
    let start = std::time::Instant::now();
    let created = a
        .egress(&gw.id, &["192.168.50.0/24"], "eth0", None)
        .await
        .expect("egress");
    let rev = a.node_config(&me.id).await.revision;
    until(&mut st, &mut held, rev).await;
    let took = start.elapsed();
    eprintln!("egress created through A reached the agent on B after {took:?}");
    let cfg = held.clone().unwrap();
    assert!(
        cfg.routes
            .iter()
            .any(|r| r.destination == "192.168.50.0/24"),
        "route through {} missing: {cfg:?}",
        created.name
    );

    // B stops; the agent moves to A and resumes from its revision: a delta
    // (or nothing new), never a snapshot.
    drop(st);
    b.stop().await;
    a.egress(
        &gw.id,
        &["192.168.50.0/24", "192.168.51.0/24"],
        "eth0",
        None,
    )
    .await
    .expect("egress changed");
    let rev = a.node_config(&me.id).await.revision;
    let held_rev = held.as_ref().unwrap().revision;
    let mut st = watch(&a, &token, held_rev).await;
    let snapshot = until(&mut st, &mut held, rev).await;
    assert!(!snapshot, "resumed from {held_rev} with a snapshot");
    assert_eq!(held.as_ref().unwrap().revision, rev);
    wait_connected(&a, &me.id, true).await;
    drop(st);
    wait_connected(&a, &me.id, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarting_every_replica_loses_nothing_and_agents_end_current() {
    let Some((dir, url, rs)) = replicas(2).await else {
        return;
    };
    rs[0]
        .create_network("corp", "10.20.0.0/16", "fd00:20::/64")
        .await;
    let key = rs[1].create_key(&["corp"], None).await.token;
    let mut agents = Vec::new();
    for i in 0..6 {
        let r = rs[i % 2]
            .register(&key, "corp", &format!("n{i}"))
            .await
            .unwrap();
        agents.push((r.node.unwrap(), r.node_token));
    }
    rs[0]
        .egress(&agents[0].0.id, &["192.168.7.0/24"], "eth0", None)
        .await
        .unwrap();
    let before: Vec<pb::NodeConfig> =
        join_all(agents.iter().map(|(n, _)| rs[1].node_config(&n.id))).await;
    for r in rs {
        r.stop().await;
    }

    let rs = [start(&url, dir.path()).await, start(&url, dir.path()).await];
    for (i, (n, token)) in agents.iter().enumerate() {
        let s = &rs[i % 2];
        let got = s.node_config(&n.id).await;
        assert_eq!(got, before[i], "node {} config after the restart", n.name);
        // An agent resuming from its revision ends on the current one.
        let mut st = watch(s, token, before[i].revision).await;
        let mut held = Some(before[i].clone());
        rs[(i + 1) % 2]
            .nodes()
            .await
            .update_node(pb::UpdateNodeRequest {
                node: Some(pb::Node {
                    id: n.id.clone(),
                    listen_port: 40000 + i as u32,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["listen_port".into()],
                }),
            })
            .await
            .unwrap();
        let current = s.node_config(&n.id).await.revision;
        until(&mut st, &mut held, current).await;
        assert_eq!(held.unwrap(), s.node_config(&n.id).await);
    }
}
