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

/// Reads events until one of `kind` with `action` for `id`, all within
/// [`AT_ONCE`] (a write may append more than one event).
async fn expect_event(
    ev: &mut Streaming<pb::Event>,
    kind: &str,
    action: pb::EventAction,
    id: &str,
) {
    let deadline = tokio::time::Instant::now() + AT_ONCE;
    loop {
        let e = tokio::time::timeout_at(deadline, ev.message())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {kind} {action:?} event for {id:?} at once (the write did not wake the hub)"
                )
            })
            .expect("event stream ok")
            .expect("event stream open");
        if e.kind == kind && e.action == action as i32 && e.id == id {
            return;
        }
    }
}

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

#[tokio::test]
async fn every_write_reaches_the_event_stream_at_once() {
    use pb::EventAction::{Created, Deleted, Updated};
    let s = TestServer::start_without_polling().await;
    let mut ev = events(&s).await;

    s.create_network("corp", "10.142.0.0/16", "").await;
    expect_event(&mut ev, "network", Created, "corp").await;
    s.networks()
        .await
        .update_network(pb::UpdateNetworkRequest {
            network: Some(pb::Network {
                name: "corp".into(),
                default_mtu: 1380,
                ..Default::default()
            }),
            update_mask: mask(&["default_mtu"]),
        })
        .await
        .expect("update network");
    expect_event(&mut ev, "network", Updated, "corp").await;

    let key = s.create_key(&["corp"], None).await;
    expect_event(&mut ev, "enrollment_key", Created, &key.id).await;
    let a = s
        .register(&key.token, "corp", "a")
        .await
        .expect("register a");
    let a_id = a.node.expect("node").id;
    expect_event(&mut ev, "node", Created, &a_id).await;
    let gw = s
        .register(&key.token, "corp", "gw")
        .await
        .expect("register gw");
    let gw_id = gw.node.expect("node").id;
    expect_event(&mut ev, "node", Created, &gw_id).await;

    s.nodes()
        .await
        .update_node(pb::UpdateNodeRequest {
            node: Some(pb::Node {
                id: a_id.clone(),
                name: "a2".into(),
                ..Default::default()
            }),
            update_mask: mask(&["name"]),
        })
        .await
        .expect("update node");
    expect_event(&mut ev, "node", Updated, &a_id).await;
    s.agent(Some(&a.node_token))
        .await
        .report_status(pb::ReportStatusRequest {
            applied_revision: 1,
            wireguard_interface: "wg-a".into(),
            ..Default::default()
        })
        .await
        .expect("report status");
    expect_event(&mut ev, "node", Updated, &a_id).await;

    s.egress(&a_id, &["192.168.50.0/24"], "eth0", None)
        .await
        .expect("egress");
    expect_event(&mut ev, "node", Updated, &a_id).await;
    s.gateways()
        .await
        .delete_egress_gateway(pb::DeleteEgressGatewayRequest {
            node_id: a_id.clone(),
        })
        .await
        .expect("delete egress");
    expect_event(&mut ev, "node", Updated, &a_id).await;

    s.ingress(&gw_id, &[]).await.expect("ingress");
    expect_event(&mut ev, "node", Updated, &gw_id).await;
    let client = s.ext_client("corp", &gw_id, "phone").await.expect("client");
    expect_event(&mut ev, "ext_client", Created, &client.id).await;
    s.ext_clients()
        .await
        .update_ext_client(pb::UpdateExtClientRequest {
            ext_client: Some(pb::ExtClient {
                id: client.id.clone(),
                name: "tablet".into(),
                ..Default::default()
            }),
            update_mask: mask(&["name"]),
        })
        .await
        .expect("update client");
    expect_event(&mut ev, "ext_client", Updated, &client.id).await;
    s.ext_clients()
        .await
        .delete_ext_client(pb::DeleteExtClientRequest {
            id: client.id.clone(),
        })
        .await
        .expect("delete client");
    expect_event(&mut ev, "ext_client", Deleted, &client.id).await;

    let entry = s
        .dns()
        .await
        .create_dns_entry(pb::CreateDnsEntryRequest {
            entry: Some(pb::DnsEntry {
                network: "corp".into(),
                name: "db".into(),
                address: "10.142.9.9".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("create DNS entry")
        .into_inner();
    let entry_created = tokio::time::timeout(AT_ONCE, ev.message())
        .await
        .expect("the DNS entry's event at once")
        .expect("event stream ok")
        .expect("event stream open");
    assert_eq!(
        (entry_created.kind.as_str(), entry_created.action),
        ("dns_entry", Created as i32),
        "{entry:?}"
    );
    s.dns()
        .await
        .delete_dns_entry(pb::DeleteDnsEntryRequest {
            network: "corp".into(),
            name: "db".into(),
        })
        .await
        .expect("delete DNS entry");
    expect_event(&mut ev, "dns_entry", Deleted, &entry_created.id).await;

    s.gateways()
        .await
        .delete_ingress_gateway(pb::DeleteIngressGatewayRequest {
            node_id: gw_id.clone(),
            force: false,
        })
        .await
        .expect("delete ingress");
    expect_event(&mut ev, "node", Updated, &gw_id).await;
    s.nodes()
        .await
        .delete_node(pb::DeleteNodeRequest { id: a_id.clone() })
        .await
        .expect("delete node");
    expect_event(&mut ev, "node", Deleted, &a_id).await;
    s.keys()
        .await
        .delete_enrollment_key(pb::DeleteEnrollmentKeyRequest { id: key.id.clone() })
        .await
        .expect("delete key");
    expect_event(&mut ev, "enrollment_key", Deleted, &key.id).await;
    s.networks()
        .await
        .delete_network(pb::DeleteNetworkRequest {
            name: "corp".into(),
            force: true,
        })
        .await
        .expect("delete network");
    expect_event(&mut ev, "network", Deleted, "corp").await;
}
