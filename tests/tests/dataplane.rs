//! End-to-end dataplane test (issue #11): real packets through WireGuard
//! (`wireguard-go` userspace devices) and iptables, in network namespaces
//! the test builds and deletes (topology in `meshplane_tests::netns`).
//!
//! - `dataplane_harness_reaches_lan_through_hand_made_wireguard` checks the
//!   harness itself: WireGuard configured by hand, client -> gw -> lan.
//! - `dataplane_agents_apply_what_the_api_says` drives `meshctl agent run`
//!   in gw, client and relay against the real `meshplane serve`, and checks
//!   every scenario of the issue with packets.
//!
//! Needs root: `apt-get install -y iproute2 iptables wireguard-tools
//! wireguard-go iputils-ping` (tests/run does this), and the binaries built
//! (`cargo build -p meshplane-server -p meshctl --bins`).

use std::time::Duration;

use meshplane_tests::{
    netns::{
        self, CLIENT_IP, GW_IP, GW_LAN4, LAN_IF, LAN_RANGE4, LAN4, Topology, echo_at, expect_echo,
        leftovers, wg_genkey,
    },
    skip_privileged,
};

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn dataplane_harness_reaches_lan_through_hand_made_wireguard() {
    if skip_privileged("dataplane_harness_reaches_lan_through_hand_made_wireguard") {
        return;
    }
    let t = Topology::build();
    let (names, wg_names) = (t.names(), t.wg_names());

    // Two userspace devices, configured by hand the way an agent would.
    let gw_dev = t.wireguard_go(&t.gw, &t.wg_gw);
    let client_dev = t.wireguard_go(&t.client, &t.wg_client);
    let (gk, ck) = (wg_genkey(), wg_genkey());
    let (gkf, ckf) = (t.path("gw.key"), t.path("client.key"));
    std::fs::write(&gkf, &gk.private).unwrap();
    std::fs::write(&ckf, &ck.private).unwrap();
    t.gw.must(&[
        "wg",
        "set",
        &t.wg_gw,
        "private-key",
        gkf.to_str().unwrap(),
        "listen-port",
        "51820",
        "peer",
        &ck.public,
        "allowed-ips",
        "10.99.0.3/32",
    ]);
    t.gw.ip(&["addr", "add", "10.99.0.2/24", "dev", &t.wg_gw]);
    t.gw.ip(&["link", "set", &t.wg_gw, "up"]);
    t.gw.sysctl("net.ipv4.ip_forward=1");
    t.gw.must(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "10.99.0.0/24",
        "-o",
        LAN_IF,
        "-j",
        "MASQUERADE",
    ]);
    t.client.must(&[
        "wg",
        "set",
        &t.wg_client,
        "private-key",
        ckf.to_str().unwrap(),
        "listen-port",
        "51820",
        "peer",
        &gk.public,
        "endpoint",
        &format!("{GW_IP}:51820"),
        "allowed-ips",
        &format!("10.99.0.2/32,{LAN_RANGE4}"),
        "persistent-keepalive",
        "5",
    ]);
    t.client
        .ip(&["addr", "add", "10.99.0.3/24", "dev", &t.wg_client]);
    t.client.ip(&["link", "set", &t.wg_client, "up"]);

    // Before the route: the LAN is unreachable from client.
    assert!(
        netns::ask(&t.client, "udp", &echo_at(LAN4), Duration::from_millis(300)).is_err(),
        "client reached the LAN without a route"
    );
    t.client
        .ip(&["route", "add", LAN_RANGE4, "dev", &t.wg_client]);

    // Masqueraded: the echo sees gw's LAN address, over UDP and TCP.
    let (first, took) =
        netns::first_answer(&t.client, "udp", &echo_at(LAN4), WAIT).unwrap_or_else(|e| {
            t.dump_logs();
            panic!("{e}")
        });
    eprintln!(
        "e2e: harness: route added -> first echo through hand-made WireGuard: {} ms",
        took.as_millis()
    );
    assert_eq!(first, GW_LAN4);
    expect_echo(&t.client, "udp", &echo_at(LAN4), GW_LAN4, WAIT);
    expect_echo(&t.client, "tcp", &echo_at(LAN4), GW_LAN4, WAIT);
    let (ok, out) = t.client.run(&["ping", "-c", "1", "-W", "2", LAN4]);
    assert!(ok, "ping through the tunnel: {out}");
    // The handshake really happened on the underlay.
    let shown = t.gw.must(&["wg", "show", &t.wg_gw, "endpoints"]);
    assert!(shown.contains(CLIENT_IP), "gw's peer endpoint: {shown}");

    // NAT off plus a return route on lan: the echo sees client's overlay
    // address.
    t.gw.must(&["iptables", "-t", "nat", "-F", "POSTROUTING"]);
    t.lan.ip(&["route", "add", "10.99.0.0/24", "via", GW_LAN4]);
    expect_echo(&t.client, "udp", &echo_at(LAN4), "10.99.0.3", WAIT);
    expect_echo(&t.client, "tcp", &echo_at(LAN4), "10.99.0.3", WAIT);

    // The internet namespace is not reachable from client.
    assert!(
        netns::ask(
            &t.client,
            "udp",
            &echo_at(netns::INTERNET),
            Duration::from_millis(300)
        )
        .is_err()
    );

    // Teardown leaves nothing behind.
    let mut pids = t.pids();
    pids.push(gw_dev.pid());
    pids.push(client_dev.pid());
    assert!(pids.len() >= 4, "echo x2 and wireguard-go x2 run: {pids:?}");
    drop(gw_dev);
    drop(client_dev);
    drop(t);
    let left = leftovers(&names, &pids, &wg_names);
    assert!(left.is_empty(), "teardown left: {left:?}");
}
