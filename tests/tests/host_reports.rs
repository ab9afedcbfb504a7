//! What agents report about their hosts (ReportStatus): the WireGuard
//! interface configs then name, the host's interfaces and routes that
//! CreateEgressGateway checks and picks from, and apply errors.

use std::time::Duration;

use meshplane_proto::{delta::apply_update, v1 as pb};
use meshplane_tests::{TestServer, expect_code, expect_field};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);

struct Net {
    s: TestServer,
    key: String,
}

impl Net {
    async fn new() -> Self {
        let s = TestServer::start().await;
        s.create_network("corp", "10.140.0.0/16", "fd00:140::/64")
            .await;
        let key = s.create_key(&["corp"], None).await.token;
        Net { s, key }
    }

    /// Registers a node; returns (id, token).
    async fn register(&self, name: &str) -> (String, String) {
        let r = self.s.register(&self.key, "corp", name).await.unwrap();
        (r.node.unwrap().id, r.node_token)
    }

    async fn report(&self, token: &str, req: pb::ReportStatusRequest) -> Result<(), tonic::Status> {
        self.s
            .agent(Some(token))
            .await
            .report_status(req)
            .await
            .map(|_| ())
    }

    async fn get(&self, id: &str) -> pb::Node {
        self.s
            .nodes()
            .await
            .get_node(pb::GetNodeRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner()
    }
}

fn iface(name: &str, addrs: &[&str]) -> pb::HostInterface {
    pb::HostInterface {
        name: name.into(),
        addresses: addrs.iter().map(|a| a.to_string()).collect(),
        up: true,
    }
}

fn route(dest: &str, dev: &str, gw: &str) -> pb::HostRoute {
    pb::HostRoute {
        destination: dest.into(),
        interface: dev.into(),
        gateway: gw.into(),
    }
}

/// A host with a default route out of eth0, an office LAN on eth1, and
/// loopback.
fn host() -> pb::HostReport {
    pb::HostReport {
        interfaces: vec![
            iface("lo", &["127.0.0.1/8", "::1/128"]),
            iface("eth0", &["198.51.100.7/24"]),
            iface("eth1", &["10.10.10.2/24"]),
        ],
        routes: vec![
            route("0.0.0.0/0", "eth0", "198.51.100.1"),
            route("198.51.100.0/24", "eth0", ""),
            route("10.10.10.0/24", "eth1", ""),
        ],
        report_time: None,
    }
}

fn report(iface: &str, host: Option<pb::HostReport>) -> pb::ReportStatusRequest {
    pb::ReportStatusRequest {
        applied_revision: 1,
        wireguard_interface: iface.into(),
        host,
        ..Default::default()
    }
}

#[tokio::test]
async fn reported_interface_names_the_nodes_config_and_reaches_its_stream() {
    let n = Net::new().await;
    let (gw, gw_token) = n.register("gw").await;
    let (laptop, laptop_token) = n.register("laptop").await;
    n.s.egress(&gw, &["10.10.10.0/24"], "eth1", Some(true))
        .await
        .unwrap();
    let before = n.s.node_config(&laptop).await;
    assert_eq!(before.interface.as_ref().unwrap().name, "mp-corp");
    assert_eq!(before.routes[0].dev, "mp-corp");
    let gw_before = n.s.node_config(&gw).await;

    let mut st =
        n.s.agent(Some(&laptop_token))
            .await
            .watch_config(pb::WatchConfigRequest {
                last_revision: before.revision,
            })
            .await
            .unwrap()
            .into_inner();
    let mut held = Some(before.clone());

    n.report(&laptop_token, report("wg0", Some(host())))
        .await
        .unwrap();

    // GetNode shows what was reported.
    let got = n.get(&laptop).await;
    assert_eq!(got.wireguard_interface, "wg0");
    let h = got.host.expect("host report");
    assert!(h.report_time.is_some());
    assert_eq!(h.interfaces.len(), 3);
    assert_eq!(h.interfaces[1].addresses, vec!["198.51.100.7/24"]);
    assert_eq!(h.routes[0].gateway, "198.51.100.1");
    assert_eq!(h.routes[2].destination, "10.10.10.0/24");

    // Its config names the interface: a new revision of its config only.
    let cfg = n.s.node_config(&laptop).await;
    assert!(cfg.revision > before.revision);
    assert_eq!(cfg.interface.as_ref().unwrap().name, "wg0");
    assert!(
        cfg.routes.iter().all(|r| r.dev == "wg0"),
        "{:?}",
        cfg.routes
    );
    assert_eq!(got.config_revision, cfg.revision);
    assert_eq!(n.s.node_config(&gw).await, gw_before);

    // The open stream gets it as a new revision.
    tokio::time::timeout(WAIT, async {
        while held.as_ref().unwrap().revision < cfg.revision {
            let u = st.message().await.unwrap().expect("stream open");
            apply_update(&mut held, &u).unwrap();
        }
    })
    .await
    .expect("the change within 10 s");
    assert_eq!(held.as_ref(), Some(&cfg));

    // The gateway's firewall rules name its own reported interface.
    n.report(&gw_token, report("wg-gw", None)).await.unwrap();
    let g = n.s.node_config(&gw).await;
    assert!(g.revision > gw_before.revision);
    let fw = g.firewall.unwrap();
    assert!(
        fw.iptables_restore
            .contains("-A MESHPLANE-FWD -i wg-gw -o eth1 -d 10.10.10.0/24 -j ACCEPT"),
        "{}",
        fw.iptables_restore
    );
    assert!(!fw.iptables_restore.contains("mp-corp"));
    assert!(fw.rules.iter().any(|r| r.rule.contains("-i eth1 -o wg-gw")));
    assert_eq!(n.s.node_config(&laptop).await, cfg);
}

#[tokio::test]
async fn a_repeated_report_moves_no_revision() {
    let n = Net::new().await;
    let (a, token) = n.register("a").await;
    n.report(&token, report("wg0", Some(host()))).await.unwrap();
    let first = n.get(&a).await;
    let mut st =
        n.s.agent(Some(&token))
            .await
            .watch_config(pb::WatchConfigRequest {
                last_revision: first.config_revision,
            })
            .await
            .unwrap()
            .into_inner();
    // The stream opens with an (empty) update at the current revision.
    let opened = tokio::time::timeout(WAIT, st.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(opened.revision, first.config_revision);
    // The same interface again, no interface, a new host report, a failure:
    // none of them is a config change.
    n.report(&token, report("wg0", Some(host()))).await.unwrap();
    n.report(&token, report("", None)).await.unwrap();
    let mut other = host();
    other.routes.pop();
    n.report(&token, report("", Some(other))).await.unwrap();
    n.report(
        &token,
        pb::ReportStatusRequest {
            apply_error: "boom".into(),
            failed_revision: first.config_revision,
            ..report("wg0", None)
        },
    )
    .await
    .unwrap();
    let now = n.get(&a).await;
    assert_eq!(now.config_revision, first.config_revision);
    assert_eq!(now.update_time, first.update_time);
    assert_eq!(now.wireguard_interface, "wg0");
    assert_eq!(now.host.unwrap().routes.len(), 2, "the last report stands");
    assert_eq!(n.s.node_config(&a).await.revision, first.config_revision);
    if let Ok(m) = tokio::time::timeout(Duration::from_millis(400), st.message()).await {
        panic!("unexpected update: {m:?}");
    }
}

#[tokio::test]
async fn invalid_reports_name_the_field_and_store_nothing() {
    let n = Net::new().await;
    let (a, token) = n.register("a").await;
    let d = expect_field(
        n.report(&token, report("wg 0", None)).await,
        "wireguard_interface",
    );
    assert!(d.contains("wg 0"), "{d}");
    expect_field(
        n.report(&token, report("wireguard-interface0", None)).await,
        "wireguard_interface",
    );
    let mut bad = host();
    bad.routes.push(route("10.0.0.0/33", "eth0", ""));
    bad.interfaces[1].addresses.push("nope".into());
    let r = n.report(&token, report("wg0", Some(bad))).await;
    let s = expect_code(r, Code::InvalidArgument);
    let fields: Vec<String> = meshplane_tests::field_violations(&s)
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    assert_eq!(
        fields,
        vec![
            "host.interfaces[1].addresses[1]",
            "host.routes[3].destination"
        ]
    );
    let got = n.get(&a).await;
    assert_eq!(got.wireguard_interface, "");
    assert!(got.host.is_none());
    assert_eq!(got.applied_revision, 0);
    assert!(got.last_seen.is_none());
    assert_eq!(n.s.node_config(&a).await.interface.unwrap().name, "mp-corp");
}

#[tokio::test]
async fn apply_errors_show_until_an_apply_succeeds() {
    let n = Net::new().await;
    let (a, token) = n.register("a").await;
    n.report(
        &token,
        pb::ReportStatusRequest {
            applied_revision: 1,
            apply_error: "routes: RTNETLINK answers: File exists".into(),
            failed_revision: 2,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let got = n.get(&a).await;
    assert_eq!(got.apply_error, "routes: RTNETLINK answers: File exists");
    assert_eq!(got.failed_revision, 2);
    assert_eq!(got.applied_revision, 1);

    // A long error is cut, not refused.
    n.report(
        &token,
        pb::ReportStatusRequest {
            applied_revision: 1,
            apply_error: "x".repeat(10_000),
            failed_revision: 3,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let got = n.get(&a).await;
    assert_eq!(got.apply_error.len(), 2048);
    assert_eq!(got.failed_revision, 3);

    // An empty error clears the failure.
    n.report(
        &token,
        pb::ReportStatusRequest {
            applied_revision: 3,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let got = n.get(&a).await;
    assert_eq!(got.apply_error, "");
    assert_eq!(got.failed_revision, 0);
    assert_eq!(got.applied_revision, 3);
}

#[tokio::test]
async fn an_egress_interface_the_host_lacks_is_refused_and_nothing_is_written() {
    let n = Net::new().await;
    let (gw, token) = n.register("gw").await;
    let (laptop, _) = n.register("laptop").await;
    n.report(&token, report("wg0", Some(host()))).await.unwrap();
    let before = n.s.node_config(&laptop).await;
    let s = expect_code(
        n.s.egress(&gw, &["10.10.10.0/24"], "eht1", None).await,
        Code::FailedPrecondition,
    );
    assert_eq!(
        s.message(),
        "node gw has no interface \"eht1\"; its interfaces: eth0, eth1, lo"
    );
    assert!(n.get(&gw).await.egress.is_none());
    assert_eq!(n.s.node_config(&laptop).await, before);

    // A name it has is taken as given.
    let node =
        n.s.egress(&gw, &["10.10.10.0/24"], "eth0", None)
            .await
            .unwrap();
    assert_eq!(node.egress.unwrap().interface, "eth0");
}

#[tokio::test]
async fn an_empty_egress_interface_is_picked_from_the_hosts_routes() {
    let n = Net::new().await;
    let (gw, token) = n.register("gw").await;
    let (vpn, vpn_token) = n.register("vpn").await;
    n.report(&token, report("wg0", Some(host()))).await.unwrap();
    let mut vpn_host = host();
    // A route through its own WireGuard interface does not count.
    vpn_host.routes.insert(0, route("10.0.0.0/8", "wg-vpn", ""));
    n.report(&vpn_token, report("wg-vpn", Some(vpn_host)))
        .await
        .unwrap();

    // The office LAN: the /24 on eth1, not the default route.
    let node = n.s.egress(&gw, &["10.10.10.0/24"], "", None).await.unwrap();
    assert_eq!(node.egress.unwrap().interface, "eth1");
    assert_eq!(n.get(&gw).await.egress.unwrap().interface, "eth1");
    let fw = n.s.node_config(&gw).await.firewall.unwrap();
    assert!(
        fw.iptables_restore
            .contains("-i wg0 -o eth1 -d 10.10.10.0/24"),
        "{}",
        fw.iptables_restore
    );

    // The internet: the default route's interface.
    let node =
        n.s.egress(&vpn, &["0.0.0.0/0", "10.20.0.0/16"], "", None)
            .await
            .unwrap();
    assert_eq!(node.egress.unwrap().interface, "eth0");

    // No route for a range: the operator must name the interface.
    let s = expect_code(
        n.s.egress(&gw, &["::/0"], "", None).await,
        Code::FailedPrecondition,
    );
    assert!(s.message().contains("no route for ::/0"), "{}", s.message());
    assert!(s.message().contains("name it"), "{}", s.message());
    // Ranges through different interfaces: named with their interfaces.
    let s = expect_code(
        n.s.egress(&gw, &["10.10.10.0/24", "192.0.2.0/24"], "", None)
            .await,
        Code::FailedPrecondition,
    );
    assert!(
        s.message()
            .contains("10.10.10.0/24 -> eth1, 192.0.2.0/24 -> eth0"),
        "{}",
        s.message()
    );
    // Refusals wrote nothing.
    assert_eq!(
        n.get(&gw).await.egress.unwrap().ranges,
        vec!["10.10.10.0/24"]
    );
}

#[tokio::test]
async fn without_a_host_report_the_egress_interface_is_still_required() {
    let n = Net::new().await;
    let (gw, _) = n.register("gw").await;
    let d = expect_field(
        n.s.egress(&gw, &["10.10.10.0/24"], "", None).await,
        "interface",
    );
    assert!(d.starts_with("is required"), "{d}");
    assert!(n.get(&gw).await.egress.is_none());
}

#[tokio::test]
async fn a_reported_endpoint_reaches_the_peers_configs() {
    let n = Net::new().await;
    let (a, a_token) = n.register("a").await;
    let (b, _) = n.register("b").await;
    let before = n.s.node_config(&b).await;
    n.report(
        &a_token,
        pb::ReportStatusRequest {
            applied_revision: 1,
            endpoint: "203.0.113.9:51821".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(n.get(&a).await.endpoint, "203.0.113.9:51821");
    let after = n.s.node_config(&b).await;
    assert!(after.revision > before.revision);
    assert_eq!(after.peers[0].endpoint, "203.0.113.9:51821");
}
