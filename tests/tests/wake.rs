//! Every write wakes the hub itself: its change reaches open config and
//! event streams at once, not at the hub's next poll of the event log. The
//! servers here poll once an hour, so only the write's own wake-up can
//! deliver anything.

use std::time::Duration;

use meshplane_proto::{delta::apply_update, v1 as pb};
use meshplane_tests::TestServer;
use tonic::{Code, Streaming};

/// How long a change may take to reach a stream after its write answered:
/// well under the default 1 s poll, and the poll here is an hour.
const AT_ONCE: Duration = Duration::from_millis(500);
const WAIT: Duration = Duration::from_secs(10);

async fn watch(s: &TestServer, token: &str) -> Streaming<pb::ConfigUpdate> {
    s.agent(Some(token))
        .await
        .watch_config(pb::WatchConfigRequest { last_revision: 0 })
        .await
        .expect("watch config")
        .into_inner()
}

/// Reads the first config of a stream (a snapshot, maybe in parts).
async fn first(st: &mut Streaming<pb::ConfigUpdate>, rev: u64) -> Option<pb::NodeConfig> {
    let mut held = None;
    while held
        .as_ref()
        .is_none_or(|c: &pb::NodeConfig| c.revision < rev)
    {
        let u = tokio::time::timeout(WAIT, st.message())
            .await
            .expect("the first config within 10 s")
            .expect("stream ok")
            .expect("stream open");
        apply_update(&mut held, &u).expect("update applies");
    }
    held
}

/// WatchEvents from now on.
async fn events(s: &TestServer) -> Streaming<pb::Event> {
    pb::event_service_client::EventServiceClient::new(s.admin().await)
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .expect("watch events")
        .into_inner()
}

async fn next_event(ev: &mut Streaming<pb::Event>) -> pb::Event {
    tokio::time::timeout(AT_ONCE, ev.message())
        .await
        .expect("the write's event at once, not at the next poll")
        .expect("event stream ok")
        .expect("event stream open")
}

#[tokio::test]
async fn deleting_a_network_ends_its_config_streams_at_once() {
    let s = TestServer::start_without_polling().await;
    s.create_network("corp", "10.140.0.0/16", "").await;
    let key = s.create_key(&["corp"], None).await.token;
    let a = s.register(&key, "corp", "a").await.expect("register");
    let node = a.node.expect("node");
    let mut st = watch(&s, &a.node_token).await;
    first(&mut st, node.config_revision).await;
    let mut ev = events(&s).await;

    s.networks()
        .await
        .delete_network(pb::DeleteNetworkRequest {
            name: "corp".into(),
            force: true,
        })
        .await
        .expect("delete network");

    let end = tokio::time::timeout(AT_ONCE, st.message())
        .await
        .expect("the stream ends at once, not at the next poll");
    match end {
        Err(status) => assert_eq!(status.code(), Code::NotFound, "{status:?}"),
        Ok(m) => panic!("expected NOT_FOUND, got {m:?}"),
    }
    let e = next_event(&mut ev).await;
    assert_eq!((e.kind.as_str(), e.id.as_str()), ("network", "corp"));
    assert_eq!(e.action, pb::EventAction::Deleted as i32);
}

#[tokio::test]
async fn updating_an_ext_client_reaches_the_ingress_stream_at_once() {
    let s = TestServer::start_without_polling().await;
    s.create_network("corp", "10.141.0.0/16", "").await;
    let key = s.create_key(&["corp"], None).await.token;
    let gw = s.register(&key, "corp", "gw").await.expect("register");
    let gw_id = gw.node.expect("node").id;
    s.ingress(&gw_id, &[]).await.expect("ingress");
    let client = s.ext_client("corp", &gw_id, "phone").await.expect("client");
    let rev = s
        .nodes()
        .await
        .get_node(pb::GetNodeRequest { id: gw_id.clone() })
        .await
        .expect("get node")
        .into_inner()
        .config_revision;
    let mut st = watch(&s, &gw.node_token).await;
    let mut held = first(&mut st, rev).await;
    let peers = |c: &Option<pb::NodeConfig>| {
        c.as_ref()
            .expect("config")
            .peers
            .iter()
            .filter(|p| p.ext_client)
            .count()
    };
    assert_eq!(peers(&held), 1, "the client is the gateway's peer");
    let mut ev = events(&s).await;

    s.ext_clients()
        .await
        .update_ext_client(pb::UpdateExtClientRequest {
            ext_client: Some(pb::ExtClient {
                id: client.id.clone(),
                enabled: false,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["enabled".into()],
            }),
        })
        .await
        .expect("disable the client");

    let u = tokio::time::timeout(AT_ONCE, st.message())
        .await
        .expect("the update arrives at once, not at the next poll")
        .expect("stream ok")
        .expect("stream open");
    apply_update(&mut held, &u).expect("update applies");
    assert_eq!(peers(&held), 0, "a disabled client is no peer");
    let e = next_event(&mut ev).await;
    assert_eq!(
        (e.kind.as_str(), e.id.as_str()),
        ("ext_client", client.id.as_str())
    );
    assert_eq!(e.action, pb::EventAction::Updated as i32);
}
