//! Egress ranges several gateways serve (issue #15): the server moves a
//! range away from a primary whose agent is gone past the grace, and back
//! to a better gateway only once it has been up for its hold time, as
//! every node's config shows.

use std::time::{Duration, Instant};

use meshplane_proto::v1 as pb;
use meshplane_tests::TestServer;
use tonic::Streaming;

const LAN: &str = "10.10.10.0/24";

async fn server() -> TestServer {
    TestServer::start_with_options(|o| {
        o.egress_grace = Duration::from_secs(1);
        o.egress_check = Duration::from_millis(200);
        o.presence_interval = Duration::from_millis(300);
    })
    .await
}

/// A gateway registered with its token.
struct Gw {
    node: pb::Node,
    token: String,
}

async fn gateway(s: &TestServer, key: &str, name: &str, metric: u32, preempt: bool) -> Gw {
    let r = s.register(key, "corp", name).await.unwrap();
    let node = r.node.unwrap();
    s.gateways()
        .await
        .create_egress_gateway(pb::CreateEgressGatewayRequest {
            node_id: node.id.clone(),
            ranges: vec![LAN.into()],
            interface: "eth1".into(),
            metric: Some(metric),
            preempt: Some(preempt),
            hold_seconds: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    Gw {
        node,
        token: r.node_token,
    }
}

async fn stream(s: &TestServer, gw: &Gw) -> Streaming<pb::ConfigUpdate> {
    let mut st = s
        .agent(Some(&gw.token))
        .await
        .watch_config(pb::WatchConfigRequest { last_revision: 0 })
        .await
        .unwrap()
        .into_inner();
    st.message().await.unwrap().expect("a first config");
    st
}

/// The key of the peer the node routes the LAN through.
async fn via(s: &TestServer, node: &str) -> Vec<String> {
    s.node_config(node)
        .await
        .routes
        .iter()
        .filter(|r| r.destination == LAN)
        .map(|r| r.via_peer.clone())
        .collect()
}

/// Waits until the node routes the LAN through `gw`; how long it took.
async fn until_via(s: &TestServer, node: &str, gw: &Gw) -> Duration {
    let t = Instant::now();
    loop {
        if via(s, node).await == vec![gw.node.public_key.clone()] {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "still routed through {:?}, not {}",
            via(s, node).await,
            gw.node.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// For `d`, the node keeps routing the LAN through `gw`.
async fn stays_via(s: &TestServer, node: &str, gw: &Gw, d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        assert_eq!(
            via(s, node).await,
            vec![gw.node.public_key.clone()],
            "moved away from {} after {:?}",
            gw.node.name,
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_gone_primary_hands_its_range_over_and_takes_it_back_once_after_its_hold() {
    let s = server().await;
    s.create_network("corp", "10.109.0.0/16", "").await;
    let key = s.create_key(&["corp"], None).await.token;
    let gw = gateway(&s, &key, "gw", 10, true).await;
    let gw2 = gateway(&s, &key, "gw2", 20, true).await;
    let laptop = s.node(&key, "corp", "laptop", None).await;
    let up = stream(&s, &gw).await;
    let _up2 = stream(&s, &gw2).await;
    until_via(&s, &laptop.id, &gw).await;
    stays_via(&s, &laptop.id, &gw, Duration::from_secs(2)).await;

    // gw's agent goes away: past the grace (1 s), gw2 routes the LAN.
    drop(up);
    let took = until_via(&s, &laptop.id, &gw2).await;
    assert!(
        took >= Duration::from_millis(900),
        "moved within the grace: {took:?}"
    );
    let standby = |n: pb::Node| n.egress.unwrap().standby_ranges;
    assert_eq!(
        standby(s.get_node(&gw.node.id).await),
        vec![LAN.to_string()]
    );
    assert!(standby(s.get_node(&gw2.node.id).await).is_empty());
    // ExplainRoute names the primary and the standby, and why.
    let ex = s.explain("corp", &laptop.id, "10.10.10.7").await;
    assert_eq!(ex.egress_node_id, gw2.node.id);
    let standing: Vec<(&str, bool, &str)> = ex
        .egress_gateways
        .iter()
        .map(|g| (g.name.as_str(), g.primary, g.reason.as_str()))
        .collect();
    assert_eq!(
        standing,
        vec![
            ("gw2", true, "primary (metric 20)"),
            ("gw", false, "standby, down (metric 10)"),
        ],
        "{ex:#?}"
    );

    // Back: gw (the better metric) takes the range again only once it has
    // been up for its hold (2 s), and then stays.
    let _up = stream(&s, &gw).await;
    let back = Instant::now();
    until_via(&s, &laptop.id, &gw).await;
    assert!(
        back.elapsed() >= Duration::from_millis(1800),
        "took the range back before its hold: {:?}",
        back.elapsed()
    );
    stays_via(&s, &laptop.id, &gw, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn without_preemption_the_range_stays_and_with_every_gateway_down_it_stays_too() {
    let s = server().await;
    s.create_network("corp", "10.110.0.0/16", "").await;
    let key = s.create_key(&["corp"], None).await.token;
    let gw = gateway(&s, &key, "gw", 10, false).await;
    let gw2 = gateway(&s, &key, "gw2", 20, true).await;
    let laptop = s.node(&key, "corp", "laptop", None).await;
    let up = stream(&s, &gw).await;
    let up2 = stream(&s, &gw2).await;
    until_via(&s, &laptop.id, &gw).await;
    drop(up);
    until_via(&s, &laptop.id, &gw2).await;
    // gw comes back but does not preempt: gw2 keeps the range.
    let again = stream(&s, &gw).await;
    stays_via(&s, &laptop.id, &gw2, Duration::from_secs(4)).await;
    // gw2's agent goes: gw, up, takes the range; then gw's goes too.
    drop(up2);
    until_via(&s, &laptop.id, &gw).await;
    drop(again);
    // Now none is up: the last primary keeps the range.
    stays_via(&s, &laptop.id, &gw, Duration::from_secs(3)).await;
}
