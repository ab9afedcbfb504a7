//! The SDK's agent: `watch_config` yields whole configs equal to what
//! GetNodeConfig says, survives a killed and restarted server by resuming
//! from its revision (a delta, no second snapshot), resumes from a config
//! kept across agent restarts, and ends only on permanent errors.

#[path = "cli_support/mod.rs"]
mod support;

use std::time::Duration;

use futures::StreamExt;
use meshplane_sdk::{
    Client, Code,
    agent::{AgentClient, ConfigStream, KeyPair},
    proto as pb,
};
use meshplane_tests::TestServer;

const WAIT: Duration = Duration::from_secs(20);

async fn next_config(st: &mut ConfigStream) -> pb::NodeConfig {
    tokio::time::timeout(WAIT, st.next())
        .await
        .expect("a config within 20 s")
        .expect("stream open")
        .expect("config")
}

/// Reads configs until one with a revision above `rev` arrives.
async fn config_after(st: &mut ConfigStream, rev: u64) -> pb::NodeConfig {
    loop {
        let c = next_config(st).await;
        if c.revision > rev {
            return c;
        }
    }
}

struct Mesh {
    admin: Client,
    key: String,
}

impl Mesh {
    async fn new(url: &str, token: &str) -> Self {
        let admin = Client::builder(url).token(token).connect().await.unwrap();
        admin
            .networks()
            .create(pb::Network {
                name: "corp".into(),
                address_range: "10.180.0.0/16".into(),
                address_range6: "fd00:180::/64".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let key = admin
            .enrollment_keys()
            .create(pb::EnrollmentKey {
                networks: vec!["corp".into()],
                unlimited: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .token;
        Mesh { admin, key }
    }

    /// Registers `name` and returns (node id, an agent with its token).
    async fn register(&self, name: &str) -> (String, AgentClient) {
        let keys = KeyPair::generate();
        let reg = self
            .admin
            .agent()
            .register(pb::RegisterRequest {
                enrollment_key: self.key.clone(),
                network: "corp".into(),
                name: name.into(),
                public_key: keys.public_key().into(),
                endpoint: format!("{name}.example.net:51821"),
                os: "linux".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(reg.node.public_key, keys.public_key());
        (
            reg.node.id,
            self.admin.agent().with_node_token(reg.node_token),
        )
    }

    async fn config(&self, id: &str) -> pb::NodeConfig {
        self.admin.nodes().config(id).await.unwrap()
    }
}

#[tokio::test]
async fn watch_config_survives_a_killed_server_and_resumes_by_revision() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = support::Server::start(dir.path(), support::free_port());
    let mesh = Mesh::new(&server.url(), &server.admin_token()).await;
    let (a, agent) = mesh.register("a").await;
    mesh.register("b").await;

    let mut st = agent.watch_config(None);
    let first = next_config(&mut st).await;
    assert_eq!(first, mesh.config(&a).await);
    assert_eq!(first.peers.len(), 1);
    let s = st.stats();
    assert_eq!((s.connects, s.snapshots, s.configs), (1, 1, 1), "{s:?}");
    agent.report_status(first.revision, None).await.unwrap();

    // A change arrives as a delta and is applied locally.
    mesh.register("c").await;
    let second = config_after(&mut st, first.revision).await;
    assert_eq!(second, mesh.config(&a).await);
    assert_eq!(second.peers.len(), 2);
    assert_eq!(st.stats().snapshots, 1);

    // The server dies: the stream yields nothing and keeps the config.
    server.kill();
    let quiet = tokio::time::timeout(Duration::from_secs(2), st.next()).await;
    assert!(
        quiet.is_err(),
        "nothing while the server is away: {quiet:?}"
    );
    assert_eq!(st.last_config().as_ref(), Some(&second));
    assert!(!st.stats().connected);

    // It comes back on the same address; a change made there reaches the
    // agent as a delta from the revision it held: no second snapshot.
    server.restart();
    let g = mesh
        .admin
        .gateways()
        .create_egress(pb::CreateEgressGatewayRequest {
            node_id: mesh.admin.nodes().list_all(Some("corp")).await.unwrap()[1]
                .id
                .clone(),
            ranges: vec!["10.10.10.0/24".into()],
            interface: "eth2".into(),
            nat_enabled: None,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(g.name, "b");
    let third = config_after(&mut st, second.revision).await;
    let s = st.stats();
    assert!(s.connects >= 2, "{s:?}");
    assert_eq!(s.snapshots, 1, "resumed without a snapshot: {s:?}");
    assert!(s.resumed >= 1, "{s:?}");
    assert_eq!(third, mesh.config(&a).await);
    assert!(
        third
            .peers
            .iter()
            .any(|p| p.allowed_ips.iter().any(|ip| ip == "10.10.10.0/24")),
        "{third:?}"
    );
}

#[tokio::test]
async fn an_agent_restarted_with_its_kept_config_resumes_with_a_delta() {
    let s = TestServer::start().await;
    let mesh = Mesh::new(&s.url(), &s.admin_token).await;
    let (a, agent) = mesh.register("a").await;
    let mut st = agent.watch_config(None);
    let kept = next_config(&mut st).await;
    drop(st);

    mesh.register("b").await;
    let mut st = agent.watch_config(Some(kept.clone()));
    assert_eq!(st.last_config(), Some(kept.clone()));
    let now = config_after(&mut st, kept.revision).await;
    assert_eq!(now, mesh.config(&a).await);
    assert_eq!(now.peers.len(), 1);
    let stats = st.stats();
    assert_eq!((stats.snapshots, stats.deltas), (0, 1), "{stats:?}");
}

#[tokio::test]
async fn deleting_the_node_or_a_bad_token_ends_the_stream_with_its_code() {
    let s = TestServer::start().await;
    let mesh = Mesh::new(&s.url(), &s.admin_token).await;
    let (a, agent) = mesh.register("a").await;
    let mut st = agent.watch_config(None);
    next_config(&mut st).await;
    mesh.admin.nodes().delete(&a).await.unwrap();
    let end = tokio::time::timeout(WAIT, st.next())
        .await
        .expect("an answer")
        .expect("an item");
    assert_eq!(end.unwrap_err().code(), Code::NotFound);
    assert!(st.next().await.is_none(), "the stream ended");

    let stranger = mesh.admin.agent().with_node_token("mpn_not-a-token");
    let mut st = stranger.watch_config(None);
    let end = tokio::time::timeout(WAIT, st.next())
        .await
        .expect("an answer")
        .expect("an item");
    assert_eq!(end.unwrap_err().code(), Code::Unauthenticated);
    assert!(st.next().await.is_none());
}
