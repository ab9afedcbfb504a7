//! Prometheus metrics: a scrape before and after some calls (one failing,
//! one unauthenticated), agent streams and a write that fans out to them;
//! every figure moves as it should, with the right labels.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use meshplane_proto::v1 as pb;
use meshplane_tests::{TestServer, expect_code, network};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, Streaming};

const WAIT: Duration = Duration::from_secs(10);

/// GET /metrics over a plain HTTP/1.1 connection; the body.
async fn scrape(addr: SocketAddr) -> String {
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    tokio::time::timeout(WAIT, c.read_to_string(&mut raw))
        .await
        .expect("scraped within 10 s")
        .expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    body.to_owned()
}

/// One sample line: name, labels, value.
fn parse(line: &str) -> Option<(String, HashMap<String, String>, f64)> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((n, rest)) => (n, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    let labels = labels
        .split("\",")
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.split_once("=\"")?;
            Some((k.to_owned(), v.trim_end_matches('"').to_owned()))
        })
        .collect();
    Some((name.to_owned(), labels, value))
}

/// The value of the sample `name` whose labels include `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter_map(parse).find_map(|(n, l, v)| {
        (n == name
            && labels
                .iter()
                .all(|(k, want)| l.get(*k).is_some_and(|got| got == want)))
        .then_some(v)
    })
}

#[track_caller]
fn get(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(text, name, labels).unwrap_or_else(|| panic!("no sample {name} {labels:?} in:\n{text}"))
}

/// Scrapes until `ok` holds (figures recorded by other tasks settle).
async fn scrape_until(addr: SocketAddr, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = scrape(addr).await;
        if ok(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within 10 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn watch(s: &TestServer, token: &str) -> Streaming<pb::ConfigUpdate> {
    s.agent(Some(token))
        .await
        .watch_config(pb::WatchConfigRequest { last_revision: 0 })
        .await
        .expect("watch config")
        .into_inner()
}

/// Reads updates until one at `rev` (or later) has arrived whole.
async fn until(st: &mut Streaming<pb::ConfigUpdate>, rev: u64) -> u64 {
    loop {
        let u = tokio::time::timeout(WAIT, st.message())
            .await
            .expect("an update within 10 s")
            .expect("stream ok")
            .expect("stream open");
        if !u.partial && u.revision >= rev {
            return u.revision;
        }
    }
}

const CREATE: &str = "meshplane.v1.NetworkService/CreateNetwork";
const WATCH: &str = "meshplane.v1.AgentService/WatchConfig";

#[tokio::test]
async fn metrics_move_with_calls_streams_and_fanout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let m = listener.local_addr().unwrap();
    let s = TestServer::start_with_options(|o| o.metrics = Some(listener)).await;

    let before = scrape(m).await;
    assert_eq!(get(&before, "meshplane_connected_agents", &[]), 0.0);
    assert_eq!(get(&before, "meshplane_config_streams_open", &[]), 0.0);
    assert_eq!(get(&before, "meshplane_agents_drifted", &[]), 0.0);
    assert_eq!(get(&before, "meshplane_fanout_seconds_count", &[]), 0.0);
    let rev0 = get(&before, "meshplane_event_revision", &[]);
    get(
        &before,
        "meshplane_db_pool_connections",
        &[("state", "idle")],
    );
    get(
        &before,
        "meshplane_db_pool_connections",
        &[("state", "in_use")],
    );
    let batches0 = get(&before, "meshplane_commit_batches_total", &[]);
    let writes0 = get(&before, "meshplane_commit_writes_total", &[]);
    assert_eq!(
        value(&before, "meshplane_requests_total", &[("method", CREATE)]),
        None
    );

    // A call that succeeds, one refused by the service, one refused by
    // the auth layer.
    s.create_network("corp", "10.140.0.0/16", "").await;
    let bad = s
        .networks()
        .await
        .create_network(pb::CreateNetworkRequest {
            network: Some(network("lab", "10.0.0.1/24", "")),
        })
        .await;
    expect_code(bad, Code::InvalidArgument);
    let anon = pb::network_service_client::NetworkServiceClient::new(s.authed(None).await)
        .list_networks(pb::ListNetworksRequest::default())
        .await;
    expect_code(anon, Code::Unauthenticated);

    // Two agents streaming, then a write that changes both configs.
    let key = s.create_key(&["corp"], None).await.token;
    let a = s.register(&key, "corp", "a").await.unwrap();
    let b = s.register(&key, "corp", "b").await.unwrap();
    let mut sa = watch(&s, &a.node_token).await;
    let mut sb = watch(&s, &b.node_token).await;
    until(&mut sa, 1).await;
    until(&mut sb, 1).await;
    let c = s.register(&key, "corp", "c").await.unwrap();
    let rev = c.node.unwrap().config_revision;
    until(&mut sa, rev).await;
    until(&mut sb, rev).await;
    // b says it applied the latest config; a never reports: drifted.
    s.agent(Some(&b.node_token))
        .await
        .report_status(pb::ReportStatusRequest {
            applied_revision: rev,
            ..Default::default()
        })
        .await
        .expect("report status");

    let after = scrape_until(m, "both streams counted and fan-out observed", |t| {
        value(t, "meshplane_connected_agents", &[]) == Some(2.0)
            && value(t, "meshplane_fanout_seconds_count", &[]).is_some_and(|n| n >= 1.0)
            && value(t, "meshplane_agents_drifted", &[]) == Some(1.0)
    })
    .await;
    let calls = |code: &str| {
        value(
            &after,
            "meshplane_requests_total",
            &[("method", CREATE), ("code", code)],
        )
    };
    assert_eq!(calls("OK"), Some(1.0));
    assert_eq!(calls("INVALID_ARGUMENT"), Some(1.0));
    assert_eq!(
        get(
            &after,
            "meshplane_requests_total",
            &[
                ("method", "meshplane.v1.NetworkService/ListNetworks"),
                ("code", "UNAUTHENTICATED")
            ]
        ),
        1.0
    );
    assert_eq!(
        get(
            &after,
            "meshplane_requests_total",
            &[
                ("method", "meshplane.v1.AgentService/Register"),
                ("code", "OK")
            ]
        ),
        3.0
    );
    assert_eq!(
        get(
            &after,
            "meshplane_request_duration_seconds_count",
            &[("method", CREATE)]
        ),
        2.0
    );
    assert!(
        get(
            &after,
            "meshplane_request_duration_seconds_sum",
            &[("method", CREATE)]
        ) > 0.0
    );
    assert_eq!(
        value(
            &after,
            "meshplane_request_duration_seconds_count",
            &[("method", WATCH)]
        ),
        None,
        "streams are not timed"
    );
    assert_eq!(
        value(&after, "meshplane_requests_total", &[("method", WATCH)]),
        None,
        "open streams are counted when they end"
    );
    assert_eq!(get(&after, "meshplane_config_streams_open", &[]), 2.0);
    assert!(get(&after, "meshplane_event_revision", &[]) >= rev as f64);
    assert!(get(&after, "meshplane_event_revision", &[]) > rev0);
    let fanout = get(&after, "meshplane_fanout_seconds_sum", &[]);
    assert!(fanout > 0.0 && fanout < 10.0, "{fanout}");
    assert!(get(&after, "meshplane_commit_batches_total", &[]) > batches0);
    // network, key, three nodes, at least.
    assert!(get(&after, "meshplane_commit_writes_total", &[]) >= writes0 + 5.0);

    // A stream whose agent goes away is counted when it ends.
    drop(sa);
    let gone = scrape_until(m, "the closed stream counted", |t| {
        value(t, "meshplane_connected_agents", &[]) == Some(1.0)
            && value(t, "meshplane_requests_total", &[("method", WATCH)]).is_some()
    })
    .await;
    assert_eq!(
        get(
            &gone,
            "meshplane_requests_total",
            &[("method", WATCH), ("code", "CANCELLED")]
        ),
        1.0
    );
    assert_eq!(get(&gone, "meshplane_config_streams_open", &[]), 1.0);
    drop(sb);
}

#[tokio::test]
async fn metrics_are_off_by_default_and_unknown_paths_are_404() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let m = listener.local_addr().unwrap();
    let _s = TestServer::start_with_options(|o| o.metrics = Some(listener)).await;
    let mut c = tokio::net::TcpStream::connect(m).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    c.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 404"), "{raw}");
    assert!(
        meshplane_server::ServeOptions::default().metrics.is_none(),
        "off by default"
    );
}
