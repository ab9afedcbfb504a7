//! Config streaming: snapshots then deltas, resume by revision, stalled
//! agents, node deletion, shutdown, drift, and the event stream.

use std::time::Duration;

use meshplane_proto::{
    delta::apply_update,
    v1::{self as pb, config_update::Update},
};
use meshplane_tests::{TestServer, expect_code};
use tonic::{Code, Streaming};

const WAIT: Duration = Duration::from_secs(10);

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

/// Reads updates until the config held reaches `rev`.
async fn until(st: &mut Streaming<pb::ConfigUpdate>, held: &mut Option<pb::NodeConfig>, rev: u64) {
    while held.as_ref().is_none_or(|c| c.revision < rev) {
        let u = next(st).await;
        apply_update(held, &u).expect("update applies");
    }
}

/// Asserts nothing arrives for a while.
async fn quiet(st: &mut Streaming<pb::ConfigUpdate>) {
    if let Ok(m) = tokio::time::timeout(Duration::from_millis(400), st.message()).await {
        panic!("unexpected update: {m:?}");
    }
}

fn is_snapshot(u: &pb::ConfigUpdate) -> bool {
    matches!(u.update, Some(Update::Snapshot(_)))
}

struct Net {
    s: TestServer,
    key: String,
}

impl Net {
    async fn new() -> Self {
        let s = TestServer::start().await;
        s.create_network("corp", "10.130.0.0/16", "fd00:130::/64")
            .await;
        let key = s.create_key(&["corp"], None).await.token;
        Net { s, key }
    }

    async fn register(&self, name: &str) -> pb::RegisterResponse {
        self.s.register(&self.key, "corp", name).await.unwrap()
    }
}

#[tokio::test]
async fn snapshot_then_deltas_that_rebuild_the_config() {
    let n = Net::new().await;
    let a = n.register("a").await;
    let b = n.register("b").await;
    let a_id = a.node.as_ref().unwrap().id.clone();
    let mut st = watch(&n.s, &a.node_token, 0).await;
    let first = next(&mut st).await;
    assert!(is_snapshot(&first), "{first:?}");
    let mut held = None;
    apply_update(&mut held, &first).unwrap();
    let snap = held.clone().unwrap();
    assert_eq!(snap.node_id, a_id, "a node only ever sees its own config");
    assert_eq!(snap.peers.len(), 1);
    assert_eq!(
        snap.peers[0].public_key,
        b.node.as_ref().unwrap().public_key
    );

    // A new node: one small delta with one peer.
    let c = n.register("c").await;
    let u = next(&mut st).await;
    let Some(Update::Delta(d)) = &u.update else {
        panic!("expected a delta, got {u:?}")
    };
    assert_eq!(d.from_revision, snap.revision);
    assert_eq!(d.upsert_peers.len(), 1);
    assert_eq!(
        d.upsert_peers[0].public_key,
        c.node.as_ref().unwrap().public_key
    );
    assert!(d.interface.is_none() && d.firewall.is_none() && d.routes.is_none());
    apply_update(&mut held, &u).unwrap();

    // An egress on b: routes and b's peer entry change.
    let b_id = b.node.as_ref().unwrap().id.clone();
    let gw =
        n.s.egress(&b_id, &["10.10.10.0/24"], "eth2", None)
            .await
            .unwrap();
    until(&mut st, &mut held, gw.config_revision).await;
    let fresh = n.s.node_config(&a_id).await;
    assert_eq!(
        held.as_ref(),
        Some(&fresh),
        "snapshot + deltas == fresh snapshot"
    );
    assert_eq!(fresh.routes.len(), 1);

    // Deleting c removes its peer.
    n.s.nodes()
        .await
        .delete_node(pb::DeleteNodeRequest {
            id: c.node.unwrap().id,
        })
        .await
        .unwrap();
    let u = next(&mut st).await;
    let Some(Update::Delta(d)) = &u.update else {
        panic!()
    };
    assert_eq!(d.remove_peers.len(), 1);
    apply_update(&mut held, &u).unwrap();
    assert_eq!(held.as_ref(), Some(&n.s.node_config(&a_id).await));
}

#[tokio::test]
async fn resume_with_current_or_known_revision_gets_deltas_only() {
    let n = Net::new().await;
    let a = n.register("a").await;
    n.register("b").await;
    let a_id = a.node.as_ref().unwrap().id.clone();
    let mut held = None;
    let mut st = watch(&n.s, &a.node_token, 0).await;
    apply_update(&mut held, &next(&mut st).await).unwrap();
    let r = held.as_ref().unwrap().revision;
    drop(st);

    // Current revision: an empty delta confirming it.
    let mut st = watch(&n.s, &a.node_token, r).await;
    let u = next(&mut st).await;
    let Some(Update::Delta(d)) = &u.update else {
        panic!("resuming at the current revision must not resend a snapshot: {u:?}")
    };
    assert_eq!((u.revision, d.from_revision), (r, r));
    assert!(d.upsert_peers.is_empty() && d.remove_peers.is_empty());
    drop(st);

    // Changes while away: only what changed.
    n.register("c").await;
    n.register("d").await;
    let mut st = watch(&n.s, &a.node_token, r).await;
    let u = next(&mut st).await;
    let Some(Update::Delta(d)) = &u.update else {
        panic!("expected a delta: {u:?}")
    };
    assert_eq!(d.upsert_peers.len(), 2);
    apply_update(&mut held, &u).unwrap();
    assert_eq!(held.as_ref(), Some(&n.s.node_config(&a_id).await));
}

#[tokio::test]
async fn unknown_or_future_revisions_get_a_snapshot() {
    let n = Net::new().await;
    let a = n.register("a").await;
    for last in [999_999, 1] {
        let mut st = watch(&n.s, &a.node_token, last).await;
        let u = next(&mut st).await;
        assert!(is_snapshot(&u), "last_revision {last}: {u:?}");
    }
}

#[tokio::test]
async fn changes_elsewhere_and_no_op_writes_send_nothing() {
    let n = Net::new().await;
    n.s.create_network("lab", "10.131.0.0/16", "").await;
    let lab_key = n.s.create_key(&["lab"], None).await.token;
    let a = n.register("a").await;
    let mut st = watch(&n.s, &a.node_token, 0).await;
    next(&mut st).await;
    // Another network's changes do not concern a.
    n.s.register(&lab_key, "lab", "x").await.unwrap();
    quiet(&mut st).await;
    // A write that changes nothing a sees: b's keepalive is in others' view
    // of b, and a's own keepalive is not part of a's config.
    let a_id = a.node.as_ref().unwrap().id.clone();
    n.s.nodes()
        .await
        .update_node(pb::UpdateNodeRequest {
            node: Some(pb::Node {
                id: a_id,
                persistent_keepalive: 25,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["persistent_keepalive".into()],
            }),
        })
        .await
        .unwrap();
    quiet(&mut st).await;
}

#[tokio::test]
async fn a_stalled_agent_delays_nobody_and_ends_on_the_latest_config() {
    let n = Net::new().await;
    let slow = n.register("slow").await;
    let fast = n.register("fast").await;
    let gw = n.register("gw").await;
    let gw_id = gw.node.as_ref().unwrap().id.clone();
    let slow_id = slow.node.as_ref().unwrap().id.clone();
    let mut slow_st = watch(&n.s, &slow.node_token, 0).await;
    let mut fast_st = watch(&n.s, &fast.node_token, 0).await;
    let mut fast_held = None;
    apply_update(&mut fast_held, &next(&mut fast_st).await).unwrap();
    // The slow agent does not read while 60 changes happen.
    let mut last = 0;
    for i in 0..60 {
        let r = format!("10.{}.0.0/16", 140 + i);
        let node = n.s.egress(&gw_id, &[&r], "eth0", None).await.unwrap();
        last = node.config_revision;
        // The fast agent keeps up with each change as it happens.
        until(&mut fast_st, &mut fast_held, last).await;
    }
    // Now the slow one reads: it converges on the latest config.
    let mut held = None;
    let mut messages = 0;
    while held
        .as_ref()
        .is_none_or(|c: &pb::NodeConfig| c.revision < last)
    {
        let u = next(&mut slow_st).await;
        apply_update(&mut held, &u).unwrap();
        messages += 1;
    }
    assert_eq!(held.as_ref(), Some(&n.s.node_config(&slow_id).await));
    assert!(messages <= 61, "{messages} messages");
    quiet(&mut slow_st).await;
}

#[tokio::test]
async fn deleting_a_node_ends_its_stream() {
    let n = Net::new().await;
    let a = n.register("a").await;
    let mut st = watch(&n.s, &a.node_token, 0).await;
    next(&mut st).await;
    n.s.nodes()
        .await
        .delete_node(pb::DeleteNodeRequest {
            id: a.node.unwrap().id,
        })
        .await
        .unwrap();
    let end = tokio::time::timeout(WAIT, st.message())
        .await
        .expect("stream ends");
    let status = end.expect_err("ends with a status");
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("deleted"), "{}", status.message());
    // And the token no longer opens one.
    let r =
        n.s.agent(Some(&a.node_token))
            .await
            .watch_config(pb::WatchConfigRequest { last_revision: 0 })
            .await;
    expect_code(r, Code::Unauthenticated);
}

#[tokio::test]
async fn shutdown_ends_streams_cleanly() {
    let n = Net::new().await;
    let a = n.register("a").await;
    let mut st = watch(&n.s, &a.node_token, 0).await;
    next(&mut st).await;
    let Net { s, .. } = n;
    let stopping = tokio::spawn(s.stop());
    let end = tokio::time::timeout(WAIT, st.message())
        .await
        .expect("stream ends");
    assert!(matches!(end, Ok(None)), "clean end of stream, got {end:?}");
    stopping.await.unwrap();
}

#[tokio::test]
async fn connected_drift_and_revisions_across_a_restart() {
    let n = Net::new().await;
    let a = n.register("a").await;
    n.register("b").await;
    let a_id = a.node.as_ref().unwrap().id.clone();
    let mut st = watch(&n.s, &a.node_token, 0).await;
    let mut held = None;
    apply_update(&mut held, &next(&mut st).await).unwrap();
    let r = held.as_ref().unwrap().revision;
    let node = n.s.get_node(&a_id).await;
    assert!(node.connected);
    assert_eq!(node.config_revision, r);

    let mut agent = n.s.agent(Some(&a.node_token)).await;
    agent
        .report_status(pb::ReportStatusRequest {
            applied_revision: r - 1,
            endpoint: String::new(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        n.s.get_node(&a_id).await.drifted,
        "behind its config: drifted"
    );
    agent
        .report_status(pb::ReportStatusRequest {
            applied_revision: r,
            endpoint: String::new(),
            ..Default::default()
        })
        .await
        .unwrap();
    let node = n.s.get_node(&a_id).await;
    assert!(!node.drifted);
    assert_eq!(node.applied_revision, r);
    drop(st);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!n.s.get_node(&a_id).await.connected);

    // Restart on the same database: the revision is still good to resume.
    let Net { s, key } = n;
    let tmp = s.stop().await.unwrap();
    let s = TestServer::start_in(tmp.path()).await;
    let mut st = watch(&s, &a.node_token, r).await;
    let u = next(&mut st).await;
    assert!(!is_snapshot(&u), "resume after restart: {u:?}");
    assert_eq!(u.revision, r);
    s.register(&key, "corp", "c").await.unwrap();
    let u = next(&mut st).await;
    assert!(u.revision > r, "revisions keep increasing across restarts");
    apply_update(&mut held, &u).unwrap();
    assert_eq!(held.as_ref(), Some(&s.node_config(&a_id).await));
    drop(st);
    drop(s);
    drop(tmp);
}

#[tokio::test]
async fn admission_limit_says_retry_later() {
    use meshplane_server::hub::Limits;
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(
        tmp.path(),
        Limits {
            max_streams: 1,
            ..Default::default()
        },
    )
    .await;
    s.create_network("corp", "10.132.0.0/16", "").await;
    let key = s.create_key(&["corp"], None).await.token;
    let a = s.register(&key, "corp", "a").await.unwrap();
    let b = s.register(&key, "corp", "b").await.unwrap();
    let mut first = watch(&s, &a.node_token, 0).await;
    next(&mut first).await;
    let r = s
        .agent(Some(&b.node_token))
        .await
        .watch_config(pb::WatchConfigRequest { last_revision: 0 })
        .await;
    let st = expect_code(r, Code::ResourceExhausted);
    assert!(st.message().contains("retry"), "{}", st.message());
    use tonic_types::StatusExt;
    assert!(
        st.get_details_retry_info().is_some(),
        "carries a retry hint"
    );
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = watch(&s, &b.node_token, 0).await;
    next(&mut again).await;
}

#[tokio::test]
async fn event_stream_follows_and_resumes() {
    let n = Net::new().await;
    let mut ev = pb::event_service_client::EventServiceClient::new(n.s.admin().await);
    let mut live = ev
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let a = n.register("a").await;
    let e = tokio::time::timeout(WAIT, live.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(e.kind, "node");
    assert_eq!(e.action, pb::EventAction::Created as i32);
    assert_eq!(e.id, a.node.as_ref().unwrap().id);
    assert!(matches!(e.resource, Some(pb::event::Resource::Node(_))));

    // Resume from the start: the network, the key and the node, in order.
    let mut replay = ev
        .watch_events(pb::WatchEventsRequest {
            after_revision: 1,
            networks: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut kinds = Vec::new();
    let mut revs = Vec::new();
    while kinds.len() < 2 {
        let e = tokio::time::timeout(WAIT, replay.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        kinds.push(e.kind.clone());
        revs.push(e.revision);
    }
    assert_eq!(kinds, vec!["enrollment_key", "node"]);
    assert!(revs.windows(2).all(|w| w[0] < w[1]));
    // No token: refused.
    let mut anon = pb::event_service_client::EventServiceClient::new(n.s.authed(None).await);
    expect_code(
        anon.watch_events(pb::WatchEventsRequest::default()).await,
        Code::Unauthenticated,
    );
    // Filtered by network.
    n.s.create_network("lab", "10.133.0.0/16", "").await;
    let mut only_lab = ev
        .watch_events(pb::WatchEventsRequest {
            after_revision: 1,
            networks: vec!["lab".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let e = tokio::time::timeout(WAIT, only_lab.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((e.kind.as_str(), e.id.as_str()), ("network", "lab"));
}

#[tokio::test]
async fn config_revision_is_the_revision_the_agent_ends_on() {
    // Regression: a node's own endpoint is not in its own config, so an
    // endpoint change moves every other node's revision but not its own.
    let n = Net::new().await;
    let a = n.register("a").await;
    let b = n.register("b").await;
    let a_id = a.node.as_ref().unwrap().id.clone();
    let b_id = b.node.as_ref().unwrap().id.clone();
    let mut st_a = watch(&n.s, &a.node_token, 0).await;
    let mut st_b = watch(&n.s, &b.node_token, 0).await;
    let (mut held_a, mut held_b) = (None, None);
    apply_update(&mut held_a, &next(&mut st_a).await).unwrap();
    apply_update(&mut held_b, &next(&mut st_b).await).unwrap();
    let before_a = held_a.as_ref().unwrap().revision;
    let updated =
        n.s.nodes()
            .await
            .update_node(pb::UpdateNodeRequest {
                node: Some(pb::Node {
                    id: a_id.clone(),
                    endpoint: "198.51.100.77:51821".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["endpoint".into()],
                }),
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(
        updated.config_revision, before_a,
        "a's own config did not change"
    );
    let b_rev = n.s.get_node(&b_id).await.config_revision;
    until(&mut st_b, &mut held_b, b_rev).await;
    assert!(b_rev > before_a);
    assert_eq!(held_b.as_ref(), Some(&n.s.node_config(&b_id).await));
    quiet(&mut st_a).await;
    assert_eq!(n.s.get_node(&a_id).await.config_revision, before_a);
}
