//! The SDK's admin client against an in-process server: every handle, the
//! decoded errors, and retries while the server is not up yet.

use std::time::{Duration, Instant};

use futures::StreamExt;
use meshplane_sdk::{
    Backoff, Client, Code, ErrorKind, RetryPolicy,
    proto::{self as pb},
};
use meshplane_tests::{TestServer, wg_key};

async fn client(s: &TestServer) -> Client {
    Client::builder(s.url())
        .token(s.admin_token.clone())
        .connect()
        .await
        .expect("connect")
}

fn net(name: &str, r4: &str, r6: &str) -> pb::Network {
    pb::Network {
        name: name.into(),
        address_range: r4.into(),
        address_range6: r6.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn field_violations_already_exists_and_not_found_are_decoded() {
    let s = TestServer::start().await;
    let c = client(&s).await;

    let e = c
        .networks()
        .create(net("lab", "10.0.0.1/24", ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.kind(), ErrorKind::Status);
    let d = e.violation("network.address_range").expect("violation");
    assert!(d.contains("10.0.0.0/24"), "{d}");

    // Several wrong fields at once, each named.
    let e = c
        .networks()
        .create(net("Bad_Name", "10.0.0.0/33", "nope"))
        .await
        .unwrap_err();
    let fields: Vec<&str> = e
        .field_violations()
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    for f in [
        "network.name",
        "network.address_range",
        "network.address_range6",
    ] {
        assert!(fields.contains(&f), "{f} missing from {fields:?}");
    }

    c.networks()
        .create(net("corp", "10.150.0.0/16", ""))
        .await
        .unwrap();
    let e = c
        .networks()
        .create(net("corp", "10.151.0.0/16", ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(e.violation("network.name").is_some(), "{e:?}");

    let e = c.nodes().get("no-such-node").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let r = e.resource().expect("resource info");
    assert_eq!(
        (r.resource_type.as_str(), r.resource_name.as_str()),
        ("node", "no-such-node")
    );

    // No token: UNAUTHENTICATED, not retried, no details.
    let anon = Client::builder(s.url()).connect().await.unwrap();
    let e = anon.networks().list_all().await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.field_violations().is_empty());
}

#[tokio::test]
async fn every_handle_reaches_its_service() {
    let s = TestServer::start().await;
    let c = client(&s).await;

    // Networks.
    let n = c
        .networks()
        .create(net("corp", "10.160.0.0/16", "fd00:160::/64"))
        .await
        .unwrap();
    assert_eq!(n.default_listen_port, 51821);
    assert_eq!(c.networks().get("corp").await.unwrap().name, "corp");
    let mut changed = n.clone();
    changed.default_mtu = 1380;
    let n2 = c
        .networks()
        .update(changed, &["default_mtu"])
        .await
        .unwrap();
    assert_eq!(n2.default_mtu, 1380);
    c.networks()
        .create(net("other", "10.161.0.0/24", ""))
        .await
        .unwrap();
    let names: Vec<String> = c
        .networks()
        .list_all()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["corp", "other"]);
    c.networks().delete("other", false).await.unwrap();

    // Enrollment keys.
    let key = c
        .enrollment_keys()
        .create(pb::EnrollmentKey {
            networks: vec!["corp".into()],
            uses_remaining: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(key.token.starts_with("mpk_"));
    let listed = c.enrollment_keys().list_all(Some("corp")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].token.is_empty(), "tokens are never listed");

    // Agent registration on the same connection, then nodes.
    let agent = c.agent();
    let mut ids = Vec::new();
    for (name, ep) in [
        ("server", "203.0.113.1:51821"),
        ("office", "198.51.100.7:51821"),
    ] {
        let reg = agent
            .register(pb::RegisterRequest {
                enrollment_key: key.token.clone(),
                network: "corp".into(),
                name: name.into(),
                public_key: wg_key(),
                endpoint: ep.into(),
                os: "linux".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(!format!("{reg:?}").contains(reg.node_token.expose()));
        ids.push(reg.node.id);
    }
    let (server, office) = (ids[0].clone(), ids[1].clone());
    assert_eq!(c.nodes().list_all(Some("corp")).await.unwrap().len(), 2);
    let mut o = c.nodes().get(&office).await.unwrap();
    o.persistent_keepalive = 25;
    assert_eq!(
        c.nodes()
            .update(o, &["persistent_keepalive"])
            .await
            .unwrap()
            .persistent_keepalive,
        25
    );

    // Gateways.
    let g = c
        .gateways()
        .create_egress(pb::CreateEgressGatewayRequest {
            node_id: office.clone(),
            ranges: vec!["10.10.10.0/24".into()],
            interface: "eth2".into(),
            nat_enabled: None,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(g.egress.unwrap().nat_enabled, "NAT is on unless turned off");
    c.gateways()
        .create_ingress(pb::CreateIngressGatewayRequest {
            node_id: server.clone(),
            ext_client_dns: vec![],
        })
        .await
        .unwrap();

    // External clients.
    let phone = c
        .ext_clients()
        .create(pb::CreateExtClientRequest {
            network: "corp".into(),
            ingress_node_id: server.clone(),
            name: "phone".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(c.ext_clients().get(&phone.id).await.unwrap().name, "phone");
    let conf = c.ext_clients().config(&phone.id).await.unwrap().config;
    assert!(conf.contains("10.10.10.0/24"), "{conf}");
    let mut p = phone.clone();
    p.enabled = false;
    assert!(
        !c.ext_clients()
            .update(p, &["enabled"])
            .await
            .unwrap()
            .enabled
    );
    assert_eq!(
        c.ext_clients()
            .list_all(Some("corp"), Some(&server))
            .await
            .unwrap()
            .len(),
        1
    );

    let route = c
        .gateways()
        .explain_route("corp", &server, "10.10.10.2")
        .await
        .unwrap();
    assert!(route.routable, "{route:?}");
    assert_eq!(route.egress_node_id, office);
    assert_eq!(route.egress_interface, "eth2");

    // Events: a stream that shows the next change.
    let mut events = c
        .events()
        .watch(pb::WatchEventsRequest::default())
        .await
        .unwrap();
    c.ext_clients().delete(&phone.id).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("an event within 10 s")
        .expect("stream open")
        .expect("event");
    assert_eq!(
        (e.kind.as_str(), e.id.as_str()),
        ("ext_client", phone.id.as_str())
    );
    assert_eq!(e.action, pb::EventAction::Deleted as i32);

    c.gateways().delete_ingress(&server, false).await.unwrap();
    c.gateways().delete_egress(&office).await.unwrap();
    assert!(c.nodes().get(&office).await.unwrap().egress.is_none());
    let cfg = c.nodes().config(&office).await.unwrap();
    assert_eq!(cfg.node_id, office);
    c.nodes().delete(&office).await.unwrap();
    c.enrollment_keys().delete(&key.id).await.unwrap();

    // DNS answers whatever the server answers, as an Error with its code.
    match c.dns().list_all("corp").await {
        Ok(entries) => assert!(entries.iter().all(|e| e.network == "corp")),
        Err(e) => assert_eq!(e.code(), Code::Unimplemented, "{e}"),
    }
}

/// Opens a server's backend (creating its admin token) without serving yet.
async fn backend(dir: &std::path::Path) -> (meshplane_server::Backend, String) {
    let url = meshplane_server::default_database_url(dir);
    let b = meshplane_server::Backend::open(&url, &dir.join("secret.key"))
        .await
        .unwrap();
    meshplane_server::bootstrap_admin_token(&*b.store, dir)
        .await
        .unwrap();
    let token = std::fs::read_to_string(dir.join("admin.token")).unwrap();
    (b, token.trim().to_owned())
}

#[tokio::test]
async fn reads_are_retried_until_a_late_server_starts_and_writes_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, token) = backend(dir.path()).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = Client::builder(format!("http://127.0.0.1:{port}"))
        .token(token)
        .connect_lazy()
        .unwrap();

    // A write while nobody listens fails at once with UNAVAILABLE: with a
    // 2 s backoff, a retry would show in the time taken.
    let slow = RetryPolicy {
        max_attempts: 5,
        backoff: Backoff {
            initial: Duration::from_secs(2),
            jitter: 0.0,
            ..Backoff::calls()
        },
    };
    let t = Instant::now();
    let e = client
        .networks()
        .with_retry(slow)
        .create(net("late", "10.170.0.0/24", ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

    // A read started before the server comes up succeeds once it is up.
    let t = Instant::now();
    let read = tokio::spawn({
        let c = client.clone();
        async move { c.networks().list_all().await }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!read.is_finished(), "the read waits for the server");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(meshplane_server::serve(listener, backend, async {
        let _ = stopped.await;
    }));
    let nets = tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .expect("the read finishes after the server starts")
        .unwrap()
        .expect("the read succeeds");
    assert!(nets.is_empty());
    assert!(t.elapsed() >= Duration::from_millis(700));

    // And writes work now.
    client
        .networks()
        .create(net("late", "10.170.0.0/24", ""))
        .await
        .unwrap();
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_per_call_deadline_bounds_retries() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = Client::builder(format!("http://127.0.0.1:{port}"))
        .timeout(Duration::from_millis(600))
        .connect_lazy()
        .unwrap();
    let t = Instant::now();
    let e = client.nodes().list_all(None).await.unwrap_err();
    // Retried on UNAVAILABLE until the next wait would pass the deadline.
    assert!(
        matches!(e.code(), Code::Unavailable | Code::DeadlineExceeded),
        "{e}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert!(
        t.elapsed() >= Duration::from_millis(50),
        "it retried: {:?}",
        t.elapsed()
    );

    // connect() retries too, and gives up with UNAVAILABLE (or at the
    // deadline).
    let e = Client::builder(format!("http://127.0.0.1:{port}"))
        .timeout(Duration::from_millis(300))
        .connect()
        .await
        .unwrap_err();
    match e.kind() {
        ErrorKind::Transport => assert_eq!(e.code(), Code::Unavailable, "{e}"),
        ErrorKind::Deadline => assert_eq!(e.code(), Code::DeadlineExceeded, "{e}"),
        other => panic!("{other:?}: {e}"),
    }
}
