//! Event retention: pruned events, WatchEvents past them, and a replica that
//! was behind when the events it needed were pruned.

use std::time::Duration;

use meshplane_proto::v1::{self as pb, config_update::Update};
use meshplane_tests::{TestServer, expect_code};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);

/// A server that prunes every event but the newest within ~50 ms.
async fn pruning(url: &str, dir: &std::path::Path) -> TestServer {
    TestServer::start_replica(url, dir, |o| {
        o.event_retention = Some(Duration::from_millis(1));
        o.prune_interval = Duration::from_millis(50);
    })
    .await
}

async fn watch_events(
    s: &TestServer,
    after: u64,
) -> Result<tonic::Streaming<pb::Event>, tonic::Status> {
    pb::event_service_client::EventServiceClient::new(s.admin().await)
        .watch_events(pb::WatchEventsRequest {
            after_revision: after,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn watch_events_from_a_pruned_or_unissued_revision_is_out_of_range_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = meshplane_server::default_database_url(dir.path());
    out_of_range(&url, dir.path()).await;
}

#[tokio::test]
async fn watch_events_from_a_pruned_or_unissued_revision_is_out_of_range_on_postgres() {
    let Some(url) = meshplane_tests::backend::postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    out_of_range(&url, dir.path()).await;
}

async fn out_of_range(url: &str, dir: &std::path::Path) {
    let s = pruning(url, dir).await;
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        s.create_network(name, &format!("10.{i}.0.0/24"), "").await;
    }
    // Revisions 1–3; pruning keeps only 3.
    let deadline = tokio::time::Instant::now() + WAIT;
    let st = loop {
        match watch_events(&s, 1).await {
            Err(st) => break st,
            Ok(_) => {
                assert!(tokio::time::Instant::now() < deadline, "never pruned");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(st.code(), Code::OutOfRange, "{st:?}");
    assert!(
        st.message().contains("oldest revision available is 3"),
        "{}",
        st.message()
    );
    let st = expect_code(watch_events(&s, 99).await, Code::OutOfRange);
    assert!(
        st.message().contains("never issued") && st.message().contains("newest revision is 3"),
        "{}",
        st.message()
    );
    // From just before the oldest kept: the stream starts with it.
    let mut events = watch_events(&s, 2).await.expect("from 2");
    let first = tokio::time::timeout(WAIT, events.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.revision, 3);
    assert_eq!(first.id, "c");
}

#[tokio::test]
async fn a_replica_behind_pruned_events_reloads_and_its_agents_get_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let url = meshplane_server::default_database_url(dir.path());
    let a = pruning(&url, dir.path()).await;
    a.create_network("corp", "10.20.0.0/24", "").await;
    let key = a.create_key(&["corp"], None).await.token;
    let agent = a.register(&key, "corp", "laptop").await.unwrap();
    let (me, token) = (agent.node.unwrap(), agent.node_token);
    // B shares the file but never polls (SQLite has no notifications): it
    // falls behind A until something makes it read the log.
    let b = TestServer::start_replica(&url, dir.path(), |o| {
        o.follow_poll = Duration::from_secs(3600);
        o.event_retention = None;
    })
    .await;
    let mut st = b
        .agent(Some(&token))
        .await
        .watch_config(pb::WatchConfigRequest { last_revision: 0 })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(WAIT, st.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(Update::Snapshot(cfg)) = first.update else {
        panic!("first update is a snapshot")
    };
    assert!(cfg.peers.is_empty());

    // Through A: a peer for the laptop, then enough for the pruning to pass
    // the revision B holds.
    let gw = a.node(&key, "corp", "gw", Some("198.51.100.1:51821")).await;
    a.create_network("other", "10.30.0.0/24", "").await;
    let newest = {
        let st = expect_code(watch_events(&a, 999).await, Code::OutOfRange);
        let m = st.message().to_owned();
        m.rsplit(' ')
            .next()
            .unwrap()
            .trim()
            .parse::<u64>()
            .expect(&m)
    };
    let want = format!("oldest revision available is {newest}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match watch_events(&a, 1).await {
            Err(st) if st.message().contains(&want) => break,
            _ => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never pruned to {newest}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    // B reads the log (GetNode catches up first), finds the gap, reloads,
    // and the laptop's stream gets a snapshot with the new peer.
    let node = b
        .nodes()
        .await
        .get_node(pb::GetNodeRequest { id: me.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(node.name, "laptop");
    let next = tokio::time::timeout(WAIT, st.message())
        .await
        .expect("an update after the reload")
        .unwrap()
        .unwrap();
    let Some(Update::Snapshot(cfg)) = next.update else {
        panic!("after a reload the agent gets a snapshot: {next:?}")
    };
    assert_eq!(cfg.peers.len(), 1, "{cfg:?}");
    assert_eq!(cfg.peers[0].public_key, gw.public_key);
    // And B serves what A wrote.
    let net = b
        .networks()
        .await
        .get_network(pb::GetNetworkRequest {
            name: "other".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(net.name, "other");
}
