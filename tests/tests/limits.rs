//! Limits on calls, each hit and answered with its status: the unary
//! deadline (streams exempt), the maximum message size, the unary
//! concurrency limit, the cap on config streams per node, and the throttle
//! on failed authentication per address.
//!
//! Slow calls are made by holding the database's write lock from the test
//! (the store's own transaction): a write then waits for it.

use std::time::Duration;

use meshplane_proto::v1 as pb;
use meshplane_server::api::limits::RequestLimits;
use meshplane_tests::{TestServer, expect_code, network};
use tonic::{Code, Status, Streaming};
use tonic_types::StatusExt;

const WAIT: Duration = Duration::from_secs(10);

fn limits(f: impl FnOnce(&mut RequestLimits)) -> impl FnOnce(&mut meshplane_server::ServeOptions) {
    move |o| f(&mut o.limits)
}

/// The RetryInfo delay a status carries (panics without one).
#[track_caller]
fn retry_after(s: &Status) -> Duration {
    s.get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .unwrap_or_else(|| panic!("no RetryInfo in {s:?}"))
}

async fn create(s: &TestServer, name: &str, range: &str) -> Result<pb::Network, Status> {
    s.networks()
        .await
        .create_network(pb::CreateNetworkRequest {
            network: Some(network(name, range, "")),
        })
        .await
        .map(|r| r.into_inner())
}

async fn list(s: &TestServer) -> Result<pb::ListNetworksResponse, Status> {
    s.networks()
        .await
        .list_networks(pb::ListNetworksRequest::default())
        .await
        .map(|r| r.into_inner())
}

/// Holds the database's write lock until dropped: writes wait.
async fn hold_writes(s: &TestServer) -> Box<dyn meshplane_server::store::Tx> {
    let mut tx = s.store.begin().await.expect("begin");
    tx.lock_log().await.expect("lock the log");
    tx
}

async fn watch(s: &TestServer, token: &str) -> Result<Streaming<pb::ConfigUpdate>, Status> {
    s.agent(Some(token))
        .await
        .watch_config(pb::WatchConfigRequest { last_revision: 0 })
        .await
        .map(|r| r.into_inner())
}

async fn next(st: &mut Streaming<pb::ConfigUpdate>) -> pb::ConfigUpdate {
    tokio::time::timeout(WAIT, st.message())
        .await
        .expect("an update within 10 s")
        .expect("stream ok")
        .expect("stream open")
}

async fn health(s: &TestServer) -> i32 {
    tonic_health::pb::health_client::HealthClient::new(s.channel().await)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health check")
        .into_inner()
        .status
}

#[tokio::test]
async fn unary_calls_past_the_deadline_end_with_deadline_exceeded_and_streams_are_exempt() {
    let deadline = Duration::from_millis(300);
    let s = TestServer::start_with_options(limits(|l| l.unary_deadline = Some(deadline))).await;
    s.create_network("corp", "10.150.0.0/16", "").await;
    let key = s.create_key(&["corp"], None).await.token;
    let a = s.register(&key, "corp", "a").await.unwrap();
    let mut st = watch(&s, &a.node_token).await.expect("watch");
    let first = next(&mut st).await;

    let lock = hold_writes(&s).await;
    let started = std::time::Instant::now();
    let r = create(&s, "lab", "10.151.0.0/16").await;
    let status = expect_code(r, Code::DeadlineExceeded);
    assert!(status.message().contains("300 ms"), "{}", status.message());
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(lock);

    // The stream has been open longer than the deadline and still works.
    tokio::time::sleep(deadline * 2).await;
    s.register(&key, "corp", "b").await.expect("register");
    let u = next(&mut st).await;
    assert!(u.revision > first.revision);
    // So does the event stream.
    let mut events = pb::event_service_client::EventServiceClient::new(s.admin().await)
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(deadline * 2).await;
    s.register(&key, "corp", "c").await.expect("register");
    let e = tokio::time::timeout(WAIT, events.message())
        .await
        .expect("an event within 10 s")
        .expect("stream ok")
        .expect("stream open");
    assert_eq!(e.kind, "node");
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_refused_with_out_of_range() {
    let s = TestServer::start_with_options(limits(|l| l.max_message_size = 1024)).await;
    let r = s
        .networks()
        .await
        .create_network(pb::CreateNetworkRequest {
            network: Some(network(&"x".repeat(2000), "10.152.0.0/16", "")),
        })
        .await;
    let status = expect_code(r, Code::OutOfRange);
    assert!(status.message().contains("1024"), "{}", status.message());
    create(&s, "corp", "10.152.0.0/16")
        .await
        .expect("a small message passes");
}

#[tokio::test]
async fn unary_calls_past_the_concurrency_limit_get_resource_exhausted_with_retry_info() {
    let s = TestServer::start_with_options(limits(|l| {
        l.max_concurrent_unary = 2;
        l.unary_queue_wait = Duration::from_millis(200);
    }))
    .await;
    let s = std::sync::Arc::new(s);
    let lock = hold_writes(&s).await;
    let slow: Vec<_> = (0..2)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                create(&s, &format!("n{i}"), &format!("10.{}.0.0/16", 160 + i)).await
            })
        })
        .collect();
    // Once both slow calls hold their slots, a third call waits for one and
    // is refused.
    let deadline = std::time::Instant::now() + WAIT;
    let (status, waited) = loop {
        let started = std::time::Instant::now();
        match list(&s).await {
            Ok(_) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the slow calls never held their slots"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => break (e, started.elapsed()),
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        waited >= Duration::from_millis(150),
        "waited for a slot first: {waited:?}"
    );
    assert!(
        status.message().contains("limit of 2"),
        "{}",
        status.message()
    );
    let after = retry_after(&status);
    assert!(after <= Duration::from_secs(2), "{after:?}");
    // Health is exempt.
    assert_eq!(health(&s).await, 1);

    drop(lock);
    for c in slow {
        c.await
            .unwrap()
            .expect("the slow calls finish once writes can go on");
    }
    assert_eq!(
        list(&s).await.expect("slots are free again").networks.len(),
        2
    );
}

#[tokio::test]
async fn a_third_config_stream_of_one_node_is_refused() {
    let s = TestServer::start().await;
    s.create_network("corp", "10.153.0.0/16", "").await;
    let key = s.create_key(&["corp"], None).await.token;
    let a = s.register(&key, "corp", "a").await.unwrap();
    let b = s.register(&key, "corp", "b").await.unwrap();
    let mut one = watch(&s, &a.node_token).await.expect("first stream");
    next(&mut one).await;
    let mut two = watch(&s, &a.node_token).await.expect("second stream");
    next(&mut two).await;
    let status = match watch(&s, &a.node_token).await {
        Ok(mut st) => expect_code(st.message().await, Code::ResourceExhausted),
        Err(e) => e,
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("the most one node may hold at once (2)"),
        "{}",
        status.message()
    );
    retry_after(&status);
    // Another node is not affected.
    let mut other = watch(&s, &b.node_token)
        .await
        .expect("another node's stream");
    next(&mut other).await;
    // Once one closes, the node may open another.
    drop(one);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match watch(&s, &a.node_token).await {
            Ok(mut st) => match tokio::time::timeout(WAIT, st.message()).await {
                Ok(Ok(Some(_))) => break,
                Ok(Err(e)) if e.code() == Code::ResourceExhausted => {}
                other => panic!("unexpected {other:?}"),
            },
            Err(e) if e.code() == Code::ResourceExhausted => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed stream was released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(two);
}

#[tokio::test]
async fn failed_authentication_throttles_the_address_for_every_call_until_it_cools_down() {
    let window = Duration::from_secs(3);
    let s = TestServer::start_with_options(limits(|l| {
        l.auth_failure_limit = 5;
        l.auth_failure_window = window;
    }))
    .await;
    s.create_network("corp", "10.154.0.0/16", "").await;
    let bad = pb::network_service_client::NetworkServiceClient::new(
        s.authed(Some("mpa_nosuchtoken_0123456789abcdef")).await,
    );
    let mut codes = Vec::new();
    let mut throttled = None;
    for _ in 0..20 {
        match bad
            .clone()
            .list_networks(pb::ListNetworksRequest::default())
            .await
        {
            Ok(_) => panic!("a bad token was accepted"),
            Err(e) => {
                codes.push(e.code());
                if e.code() == Code::ResourceExhausted {
                    throttled = Some(e);
                }
            }
        }
    }
    assert_eq!(codes[..5], [Code::Unauthenticated; 5]);
    assert_eq!(codes[5..], [Code::ResourceExhausted; 15]);
    let status = throttled.unwrap();
    assert!(
        status.message().contains("too many failed authentications"),
        "{}",
        status.message()
    );
    let after = retry_after(&status);
    assert!(
        after >= Duration::from_secs(1) && after <= window,
        "{after:?}"
    );

    // The address is throttled for everything, good credentials too.
    let good = expect_code(list(&s).await, Code::ResourceExhausted);
    retry_after(&good);
    // Health is never throttled.
    assert_eq!(health(&s).await, 1);

    // After the cool-down, good credentials work again.
    tokio::time::sleep(window + Duration::from_millis(200)).await;
    assert_eq!(list(&s).await.expect("cooled down").networks.len(), 1);
}

#[tokio::test]
async fn bad_enrollment_keys_count_as_failed_authentication() {
    let s = TestServer::start_with_options(limits(|l| {
        l.auth_failure_limit = 3;
        l.auth_failure_window = Duration::from_secs(60);
    }))
    .await;
    s.create_network("corp", "10.155.0.0/16", "").await;
    let key = s.create_key(&["corp"], None).await.token;
    for _ in 0..3 {
        let r = s
            .register("mpk_nosuchkey_0123456789abcdef", "corp", "x")
            .await;
        expect_code(r, Code::Unauthenticated);
    }
    let r = s.register(&key, "corp", "x").await;
    retry_after(&expect_code(r, Code::ResourceExhausted));
}
