//! The seed's scenarios (egress-gateway.rst) and every gateway rule, through
//! the API.

use meshplane_proto::v1 as pb;
use meshplane_tests::{TestServer, expect_code, expect_field, wg_key, wg_value};
use tonic::Code;

/// Allowed IPs of the peer with `key` in a node's config.
fn peer_ips(cfg: &pb::NodeConfig, key: &str) -> Vec<String> {
    cfg.peers
        .iter()
        .find(|p| p.public_key == key)
        .unwrap_or_else(|| panic!("no peer {key} in {cfg:#?}"))
        .allowed_ips
        .clone()
}

fn iptables(cfg: &pb::NodeConfig) -> &str {
    &cfg.firewall.as_ref().unwrap().iptables_restore
}

#[tokio::test]
async fn remote_access_through_an_office_egress_gateway() {
    let s = TestServer::start().await;
    s.create_network("corp", "10.101.0.0/16", "fd00:101::/64")
        .await;
    let key = s.create_key(&["corp"], None).await.token;
    let server = s
        .node(&key, "corp", "server", Some("203.0.113.1:51821"))
        .await;
    let office = s.node(&key, "corp", "office", None).await;
    let laptop = s
        .node(&key, "corp", "laptop", Some("198.51.100.9:51821"))
        .await;
    s.ingress(&server.id, &[]).await.unwrap();
    let gw = s
        .egress(&office.id, &["10.10.10.0/24"], "eth2", None)
        .await
        .unwrap();
    let eg = gw.egress.as_ref().unwrap();
    assert_eq!(eg.ranges, vec!["10.10.10.0/24"]);
    assert_eq!(eg.interface, "eth2");
    assert!(eg.nat_enabled, "NAT is on unless turned off");
    let phone = s.ext_client("corp", &server.id, "phone").await.unwrap();

    // The client routes the office LAN into the tunnel, towards the server.
    let cfg = s.ext_config(&phone.id).await;
    let allowed = wg_value(&cfg, "AllowedIPs").unwrap();
    assert_eq!(
        allowed, "10.10.10.0/24, 10.101.0.0/16, fd00:101::/64",
        "{cfg}"
    );
    assert_eq!(
        wg_value(&cfg, "PublicKey"),
        Some(server.public_key.as_str())
    );
    assert_eq!(wg_value(&cfg, "Endpoint"), Some("203.0.113.1:51821"));

    // Every other node's peer entry for the office carries its range.
    for other in [&server, &laptop] {
        let c = s.node_config(&other.id).await;
        let ips = peer_ips(&c, &office.public_key);
        assert!(
            ips.contains(&"10.10.10.0/24".to_string()),
            "{}: {ips:?}",
            other.name
        );
        assert!(ips.contains(&format!("{}/32", office.address)));
        let route = c
            .routes
            .iter()
            .find(|r| r.destination == "10.10.10.0/24")
            .expect("route to the office LAN");
        assert_eq!(route.via_peer, office.public_key);
        assert_eq!(route.dev, "mp-corp");
    }
    // The server (ingress) has the phone as a peer, and others reach the
    // phone through the server.
    let sc = s.node_config(&server.id).await;
    assert!(
        sc.peers
            .iter()
            .any(|p| p.public_key == phone.public_key && p.ext_client),
        "{sc:#?}"
    );
    let lc = s.node_config(&laptop.id).await;
    assert!(peer_ips(&lc, &server.public_key).contains(&format!("{}/32", phone.address)));
    let fw = sc.firewall.as_ref().unwrap();
    assert!(fw.ipv4_forwarding);
    assert!(iptables(&sc).contains("-A MESHPLANE-FWD -i mp-corp -o mp-corp -j ACCEPT"));

    // The office masquerades out of eth2 and needs forwarding.
    let oc = s.node_config(&office.id).await;
    assert!(oc.firewall.as_ref().unwrap().ipv4_forwarding);
    assert!(
        iptables(&oc).contains(
            "-A MESHPLANE-POSTROUTING -s 10.101.0.0/16 -o eth2 -d 10.10.10.0/24 -j MASQUERADE"
        ),
        "{}",
        iptables(&oc)
    );
    assert!(
        iptables(&oc).contains("-A MESHPLANE-FWD -i mp-corp -o eth2 -d 10.10.10.0/24 -j ACCEPT")
    );
    assert!(
        oc.routes.is_empty(),
        "a gateway has no overlay route to its own range"
    );

    // ExplainRoute from the phone to a machine in the office.
    let ex = s.explain("corp", &phone.id, "10.10.10.2").await;
    assert!(ex.routable, "{ex:#?}");
    assert_eq!(ex.egress_node_id, office.id);
    assert_eq!(ex.egress_interface, "eth2");
    assert!(ex.nat);
    let ats: Vec<&str> = ex.hops.iter().map(|h| h.at.as_str()).collect();
    assert_eq!(ats, vec!["phone", "server", "office"]);
    assert_eq!(ex.hops[1].matched_prefix, "10.10.10.0/24");
    assert_eq!(ex.hops[1].peer_public_key, office.public_key);

    // And from the laptop (a node) straight to the office.
    let ex = s.explain("corp", &laptop.id, "10.10.10.2").await;
    assert_eq!(ex.hops.len(), 2, "{ex:#?}");
    assert_eq!(ex.egress_node_id, office.id);
    let ex = s.explain("corp", &phone.id, "192.168.7.7").await;
    assert!(!ex.routable);
    assert!(ex.reason.contains("AllowedIPs"), "{}", ex.reason);
}

#[tokio::test]
async fn one_node_is_both_ingress_and_egress_to_a_vpc() {
    let s = TestServer::start().await;
    s.create_network("cloud", "10.102.0.0/24", "").await;
    let key = s.create_key(&["cloud"], None).await.token;
    let gw = s
        .node(&key, "cloud", "gw", Some("vpn.example.com:51821"))
        .await;
    s.ingress(&gw.id, &[]).await.unwrap();
    let node = s
        .egress(&gw.id, &["172.31.0.0/16"], "ens5", Some(true))
        .await
        .unwrap();
    assert!(node.ingress.is_some() && node.egress.is_some());
    let dev = s.ext_client("cloud", &gw.id, "dev").await.unwrap();
    let cfg = s.ext_config(&dev.id).await;
    assert_eq!(
        wg_value(&cfg, "AllowedIPs"),
        Some("10.102.0.0/24, 172.31.0.0/16")
    );
    assert_eq!(wg_value(&cfg, "Endpoint"), Some("vpn.example.com:51821"));
    let gc = s.node_config(&gw.id).await;
    assert!(
        iptables(&gc).contains("-A MESHPLANE-FWD -i mp-cloud -o ens5 -d 172.31.0.0/16 -j ACCEPT")
    );
    assert!(iptables(&gc).contains("-s 10.102.0.0/24 -o ens5 -d 172.31.0.0/16 -j MASQUERADE"));
    assert!(iptables(&gc).contains("-i mp-cloud -o mp-cloud -j ACCEPT"));
    let ex = s.explain("cloud", &dev.id, "172.31.4.4").await;
    assert!(ex.routable);
    let ats: Vec<&str> = ex.hops.iter().map(|h| h.at.as_str()).collect();
    assert_eq!(ats, vec!["dev", "gw"]);
    assert_eq!(ex.egress_interface, "ens5");
}

#[tokio::test]
async fn vpn_gateway_routes_everything_and_sets_client_dns() {
    let s = TestServer::start().await;
    s.create_network("vpn", "10.103.0.0/24", "fd00:103::/64")
        .await;
    let key = s.create_key(&["vpn"], None).await.token;
    let server = s
        .node(&key, "vpn", "server", Some("203.0.113.7:51821"))
        .await;
    s.ingress(&server.id, &[&server.address]).await.unwrap();
    // The seed's comma-separated form, in one entry.
    let n = s
        .egress(&server.id, &["0.0.0.0/0,::/0"], "eth0", None)
        .await
        .unwrap();
    assert_eq!(n.egress.unwrap().ranges, vec!["0.0.0.0/0", "::/0"]);
    let c = s.ext_client("vpn", &server.id, "").await.unwrap();
    assert!(c.name.starts_with("client-"), "generated name: {}", c.name);
    let cfg = s.ext_config(&c.id).await;
    assert_eq!(
        wg_value(&cfg, "AllowedIPs"),
        Some("0.0.0.0/0, ::/0"),
        "{cfg}"
    );
    assert_eq!(wg_value(&cfg, "DNS"), Some(server.address.as_str()));
    let sc = s.node_config(&server.id).await;
    let fw = sc.firewall.unwrap();
    assert!(
        fw.iptables_restore
            .contains("-s 10.103.0.0/24 -o eth0 -d 0.0.0.0/0 -j MASQUERADE")
    );
    assert!(
        fw.ip6tables_restore
            .contains("-s fd00:103::/64 -o eth0 -d ::/0 -j MASQUERADE")
    );
    assert!(fw.ipv4_forwarding && fw.ipv6_forwarding);

    // The seed's other way: the network's default ext-client DNS.
    s.gateways()
        .await
        .create_ingress_gateway(pb::CreateIngressGatewayRequest {
            node_id: server.id.clone(),
            ext_client_dns: vec![],
        })
        .await
        .unwrap();
    let mut net = meshplane_tests::network("vpn", "", "");
    net.default_ext_client_dns = vec![server.address.clone()];
    s.networks()
        .await
        .update_network(pb::UpdateNetworkRequest {
            network: Some(net),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["default_ext_client_dns".into()],
            }),
        })
        .await
        .unwrap();
    let cfg = s.ext_config(&c.id).await;
    assert_eq!(wg_value(&cfg, "DNS"), Some(server.address.as_str()));
}

#[tokio::test]
async fn nat_toggles_the_masquerade_rule() {
    let s = TestServer::start().await;
    s.create_network("corp", "10.104.0.0/24", "").await;
    let key = s.create_key(&["corp"], None).await.token;
    let office = s.node(&key, "corp", "office", None).await;
    let masq = "-s 10.104.0.0/24 -o eth2 -d 10.10.10.0/24 -j MASQUERADE";
    s.egress(&office.id, &["10.10.10.0/24"], "eth2", Some(true))
        .await
        .unwrap();
    assert!(iptables(&s.node_config(&office.id).await).contains(masq));
    let n = s
        .egress(&office.id, &["10.10.10.0/24"], "eth2", Some(false))
        .await
        .unwrap();
    assert!(!n.egress.unwrap().nat_enabled);
    let off = s.node_config(&office.id).await;
    assert!(!iptables(&off).contains("MASQUERADE"), "{}", iptables(&off));
    assert!(
        iptables(&off).contains("-d 10.10.10.0/24 -j ACCEPT"),
        "forwarding stays"
    );
    s.egress(&office.id, &["10.10.10.0/24"], "eth2", None)
        .await
        .unwrap();
    assert!(iptables(&s.node_config(&office.id).await).contains(masq));

    // Deleting the egress leaves empty chains (so applying clears the rules).
    s.gateways()
        .await
        .delete_egress_gateway(pb::DeleteEgressGatewayRequest {
            node_id: office.id.clone(),
        })
        .await
        .unwrap();
    let none = s.node_config(&office.id).await;
    assert!(!iptables(&none).contains("-A "));
    assert!(!none.firewall.unwrap().ipv4_forwarding);
    assert!(
        s.nodes()
            .await
            .get_node(pb::GetNodeRequest {
                id: office.id.clone()
            })
            .await
            .unwrap()
            .into_inner()
            .egress
            .is_none()
    );
    expect_code(
        s.gateways()
            .await
            .delete_egress_gateway(pb::DeleteEgressGatewayRequest { node_id: office.id })
            .await,
        Code::FailedPrecondition,
    );
}

#[tokio::test]
async fn a_client_created_before_the_egress_sees_it_and_is_marked_stale() {
    let s = TestServer::start().await;
    s.create_network("corp", "10.105.0.0/24", "").await;
    let key = s.create_key(&["corp"], None).await.token;
    let server = s
        .node(&key, "corp", "server", Some("203.0.113.2:51821"))
        .await;
    let office = s.node(&key, "corp", "office", None).await;
    s.ingress(&server.id, &[]).await.unwrap();
    let early = s.ext_client("corp", &server.id, "early").await.unwrap();
    assert!(!early.config_stale, "never downloaded: nothing to be stale");
    let before = s.ext_config(&early.id).await;
    assert_eq!(wg_value(&before, "AllowedIPs"), Some("10.105.0.0/24"));

    s.egress(&office.id, &["10.10.10.0/24"], "eth2", None)
        .await
        .unwrap();
    let mut clients = s.ext_clients().await;
    let got = clients
        .get_ext_client(pb::GetExtClientRequest {
            id: early.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        got.config_stale,
        "the downloaded config lacks the new range"
    );
    assert!(got.config_revision > early.config_revision);

    let r = clients
        .get_ext_client_config(pb::GetExtClientConfigRequest {
            id: early.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.revision, got.config_revision);
    assert_eq!(
        wg_value(&r.config, "AllowedIPs"),
        Some("10.10.10.0/24, 10.105.0.0/24")
    );
    let fresh = clients
        .get_ext_client(pb::GetExtClientRequest {
            id: early.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!fresh.config_stale);
    // The private key is stable across downloads.
    assert_eq!(
        wg_value(&before, "PrivateKey"),
        wg_value(&r.config, "PrivateKey")
    );
}

#[tokio::test]
async fn bad_egress_requests_name_the_field_and_change_nothing() {
    let s = TestServer::start().await;
    s.create_network("corp", "10.106.0.0/16", "").await;
    s.create_network("lab", "10.107.0.0/16", "").await;
    let key = s.create_key(&["corp", "lab"], None).await.token;
    let a = s.node(&key, "corp", "a", None).await;
    let b = s.node(&key, "corp", "b", None).await;
    let other = s.node(&key, "lab", "other", None).await;
    s.egress(&a.id, &["10.10.10.0/24"], "eth2", None)
        .await
        .unwrap();

    expect_field(
        s.egress(&b.id, &["10.10.10.300/24"], "eth0", None).await,
        "ranges[0]",
    );
    expect_field(
        s.egress(&b.id, &["10.10.10.1/24"], "eth0", None).await,
        "ranges[0]",
    );
    let d = expect_field(
        s.egress(&b.id, &["10.106.3.0/24"], "eth0", None).await,
        "ranges[0]",
    );
    assert!(d.contains("10.106.0.0/16"), "{d}");
    expect_field(s.egress(&b.id, &[], "eth0", None).await, "ranges");
    for bad in ["", "eth 0", "a/b", "sixteen-chars-xx"] {
        expect_field(
            s.egress(&b.id, &["10.20.0.0/16"], bad, None).await,
            "interface",
        );
    }
    let st = expect_code(
        s.egress(&b.id, &["192.168.0.0/16", "10.10.10.0/24"], "eth0", None)
            .await,
        Code::AlreadyExists,
    );
    assert!(
        st.message().contains("10.10.10.0/24") && st.message().contains("\"a\""),
        "{}",
        st.message()
    );
    // Overlapping but different ranges are fine, and so is the same range in
    // another network.
    s.egress(&b.id, &["10.10.0.0/16"], "eth0", None)
        .await
        .unwrap();
    s.egress(&other.id, &["10.10.10.0/24"], "eth0", None)
        .await
        .unwrap();
    expect_code(
        s.egress("no-such-node", &["10.20.0.0/16"], "eth0", None)
            .await,
        Code::NotFound,
    );
    expect_field(
        s.egress("", &["10.20.0.0/16"], "eth0", None).await,
        "node_id",
    );

    // Nothing half-written: b still has exactly its last egress.
    let got = s
        .nodes()
        .await
        .get_node(pb::GetNodeRequest { id: b.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.egress.unwrap().ranges, vec!["10.10.0.0/16"]);
}

#[tokio::test]
async fn ext_client_rules_and_lifecycle() {
    let s = TestServer::start().await;
    s.create_network("corp", "10.108.0.0/24", "fd00:108::/64")
        .await;
    s.create_network("lab", "10.109.0.0/24", "").await;
    let key = s.create_key(&["corp", "lab"], None).await.token;
    let server = s
        .node(&key, "corp", "server", Some("203.0.113.3:51821"))
        .await;
    let plain = s.node(&key, "corp", "plain", None).await;
    let lab = s
        .node(&key, "lab", "labgw", Some("203.0.113.4:51821"))
        .await;
    s.ingress(&lab.id, &[]).await.unwrap();

    // Not an ingress gateway; no endpoint; another network; bad key.
    let st = expect_code(
        s.ext_client("corp", &server.id, "x").await,
        Code::FailedPrecondition,
    );
    assert!(
        st.message().contains("not an ingress gateway"),
        "{}",
        st.message()
    );
    let st = expect_code(s.ingress(&plain.id, &[]).await, Code::FailedPrecondition);
    assert!(st.message().contains("endpoint"), "{}", st.message());
    expect_field(
        s.ingress(&server.id, &["not-an-ip"]).await,
        "ext_client_dns[0]",
    );
    s.ingress(&server.id, &["10.108.0.1"]).await.unwrap();
    expect_field(s.ext_client("corp", &lab.id, "x").await, "ingress_node_id");
    expect_code(
        s.ext_client("corp", "no-such-node", "x").await,
        Code::NotFound,
    );
    let mut clients = s.ext_clients().await;
    expect_field(
        clients
            .create_ext_client(pb::CreateExtClientRequest {
                network: "corp".into(),
                ingress_node_id: server.id.clone(),
                name: "x".into(),
                public_key: "bm90IGEga2V5".into(),
                dns: vec![],
                tags: vec![],
            })
            .await,
        "public_key",
    );
    // A name a node already has.
    let st = expect_code(
        s.ext_client("corp", &server.id, "plain").await,
        Code::AlreadyExists,
    );
    assert!(st.message().contains("node"), "{}", st.message());

    // Caller-supplied key: placeholder instead of a private key.
    let own_key = wg_key();
    let byo = clients
        .create_ext_client(pb::CreateExtClientRequest {
            network: "corp".into(),
            ingress_node_id: server.id.clone(),
            name: "byo".into(),
            public_key: own_key.clone(),
            dns: vec!["9.9.9.9".into()],
            tags: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(byo.public_key, own_key);
    let cfg = s.ext_config(&byo.id).await;
    assert_eq!(
        wg_value(&cfg, "PrivateKey"),
        Some("<paste your private key>")
    );
    assert_eq!(
        wg_value(&cfg, "DNS"),
        Some("9.9.9.9"),
        "client DNS overrides the gateway's"
    );
    // Same key again: taken.
    expect_code(
        clients
            .create_ext_client(pb::CreateExtClientRequest {
                network: "corp".into(),
                ingress_node_id: server.id.clone(),
                name: "byo2".into(),
                public_key: own_key,
                dns: vec![],
                tags: vec![],
            })
            .await,
        Code::AlreadyExists,
    );

    // Addresses come from the node pool, never shared.
    let phone = s.ext_client("corp", &server.id, "phone").await.unwrap();
    let mut taken = vec![
        server.address.clone(),
        plain.address.clone(),
        byo.address.clone(),
    ];
    assert!(!taken.contains(&phone.address));
    taken.push(phone.address.clone());
    let cfg = s.ext_config(&phone.id).await;
    assert_eq!(wg_value(&cfg, "DNS"), Some("10.108.0.1"), "gateway DNS");
    assert_eq!(
        wg_value(&cfg, "Address"),
        Some(format!("{}/32, {}/128", phone.address, phone.address6).as_str())
    );
    let node_after = s.node(&key, "corp", "later", None).await;
    assert!(!taken.contains(&node_after.address));

    // Disable: gone from the ingress node's peers and others' allowed IPs.
    let disabled = clients
        .update_ext_client(pb::UpdateExtClientRequest {
            ext_client: Some(pb::ExtClient {
                id: phone.id.clone(),
                enabled: false,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["enabled".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!disabled.enabled);
    let sc = s.node_config(&server.id).await;
    assert!(!sc.peers.iter().any(|p| p.public_key == phone.public_key));
    let pc = s.node_config(&plain.id).await;
    assert!(!peer_ips(&pc, &server.public_key).contains(&format!("{}/32", phone.address)));
    // Rename; bad mask.
    let renamed = clients
        .update_ext_client(pb::UpdateExtClientRequest {
            ext_client: Some(pb::ExtClient {
                id: phone.id.clone(),
                name: "phone2".into(),
                enabled: true,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["name".into(), "enabled".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renamed.name, "phone2");
    assert!(renamed.enabled);
    expect_field(
        clients
            .update_ext_client(pb::UpdateExtClientRequest {
                ext_client: Some(pb::ExtClient {
                    id: phone.id.clone(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["address".into()],
                }),
            })
            .await,
        "update_mask",
    );
    let listed = clients
        .list_ext_clients(pb::ListExtClientsRequest {
            ingress_node_id: server.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .ext_clients;
    assert_eq!(
        listed.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        vec!["byo", "phone2"]
    );

    // Deleting the ingress refuses while clients use it, unless forced.
    let st = expect_code(
        s.gateways()
            .await
            .delete_ingress_gateway(pb::DeleteIngressGatewayRequest {
                node_id: server.id.clone(),
                force: false,
            })
            .await,
        Code::FailedPrecondition,
    );
    assert!(
        st.message().contains("2 external client"),
        "{}",
        st.message()
    );
    assert_eq!(
        clients
            .list_ext_clients(pb::ListExtClientsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .ext_clients
            .len(),
        2
    );
    s.gateways()
        .await
        .delete_ingress_gateway(pb::DeleteIngressGatewayRequest {
            node_id: server.id.clone(),
            force: true,
        })
        .await
        .unwrap();
    expect_code(
        clients
            .get_ext_client(pb::GetExtClientRequest {
                id: phone.id.clone(),
            })
            .await,
        Code::NotFound,
    );
    // Their addresses are free again: the next node takes the lowest.
    let reuse = s.node(&key, "corp", "reuse", None).await;
    assert_eq!(reuse.address, byo.address);
}

#[tokio::test]
async fn private_keys_are_sealed_at_rest() {
    use base64::Engine;
    let s = TestServer::start().await;
    s.create_network("corp", "10.110.0.0/24", "").await;
    let key = s.create_key(&["corp"], None).await.token;
    let server = s
        .node(&key, "corp", "server", Some("203.0.113.5:51821"))
        .await;
    s.ingress(&server.id, &[]).await.unwrap();
    let c = s.ext_client("corp", &server.id, "phone").await.unwrap();
    let cfg = s.ext_config(&c.id).await;
    let private = wg_value(&cfg, "PrivateKey").unwrap().to_owned();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&private)
        .unwrap();
    assert_eq!(raw.len(), 32);
    // Not in the database files, neither raw nor as text.
    let mut found = false;
    for entry in std::fs::read_dir(s.data_dir()).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("meshplane.db")
        {
            let bytes = std::fs::read(&p).unwrap();
            found |= bytes.windows(32).any(|w| w == raw.as_slice());
            found |= bytes
                .windows(private.len())
                .any(|w| w == private.as_bytes());
        }
    }
    assert!(!found, "the private key is stored in clear");
    // And the public key in the API matches the private key in the file.
    let pub_of_priv = {
        let sk: [u8; 32] = raw.try_into().unwrap();
        meshplane_server::domain::crypto::PrivateKey::from_bytes(sk)
            .public_key()
            .to_string()
    };
    assert_eq!(pub_of_priv, c.public_key);
}

#[tokio::test]
async fn explain_route_rejects_bad_requests() {
    let s = TestServer::start().await;
    s.create_network("corp", "10.111.0.0/24", "").await;
    let key = s.create_key(&["corp"], None).await.token;
    let a = s.node(&key, "corp", "a", None).await;
    let mut g = s.gateways().await;
    let req = |network: &str, from: &str, dest: &str| pb::ExplainRouteRequest {
        network: network.into(),
        from_node_id: from.into(),
        destination: dest.into(),
    };
    expect_field(
        g.explain_route(req("corp", &a.id, "10.111.0.300")).await,
        "destination",
    );
    expect_field(
        g.explain_route(req("", &a.id, "10.111.0.1")).await,
        "network",
    );
    expect_field(
        g.explain_route(req("corp", "", "10.111.0.1")).await,
        "from_node_id",
    );
    expect_code(
        g.explain_route(req("nope", &a.id, "10.111.0.1")).await,
        Code::NotFound,
    );
    expect_code(
        g.explain_route(req("corp", "ghost", "10.111.0.1")).await,
        Code::NotFound,
    );
    let ex = s.explain("corp", &a.id, &a.address).await;
    assert!(ex.routable);
    assert_eq!(ex.hops.len(), 1);
}

/// Several gateways serve one range when each has a metric: the second
/// joins as a standby (nobody routes the range through it), and when the
/// primary stops serving it the best other takes it, and every node's
/// config follows.
#[tokio::test]
async fn a_range_shared_by_metric_is_handed_over_when_its_primary_leaves() {
    let s = TestServer::start().await;
    s.create_network("corp", "10.108.0.0/16", "").await;
    let key = s.create_key(&["corp"], None).await.token;
    let gw = s.node(&key, "corp", "gw", None).await;
    let gw2 = s.node(&key, "corp", "gw2", None).await;
    let gw3 = s.node(&key, "corp", "gw3", None).await;
    let laptop = s.node(&key, "corp", "laptop", None).await;
    let lan = "10.10.10.0/24";
    let share = |node: String, metric: Option<u32>| {
        let s = &s;
        async move {
            s.gateways()
                .await
                .create_egress_gateway(pb::CreateEgressGatewayRequest {
                    node_id: node,
                    ranges: vec![lan.into()],
                    interface: "eth1".into(),
                    metric,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner())
        }
    };
    share(gw.id.clone(), Some(10)).await.unwrap();
    // Without a metric on both sides: refused, as a range served alone.
    let st = expect_code(share(gw2.id.clone(), None).await, Code::AlreadyExists);
    assert!(st.message().contains("metric"), "{}", st.message());
    let n2 = share(gw2.id.clone(), Some(5)).await.unwrap();
    let e2 = n2.egress.unwrap();
    assert_eq!(
        (e2.metric, e2.standby_ranges),
        (Some(5), vec![lan.to_string()]),
        "a gateway joins a range that has a primary as a standby"
    );
    share(gw3.id.clone(), Some(20)).await.unwrap();
    let via = |c: &pb::NodeConfig| {
        c.routes
            .iter()
            .filter(|r| r.destination == lan)
            .map(|r| r.via_peer.clone())
            .collect::<Vec<_>>()
    };
    let c = s.node_config(&laptop.id).await;
    assert_eq!(via(&c), vec![gw.public_key.clone()]);
    assert!(peer_ips(&c, &gw.public_key).contains(&lan.to_string()));
    assert!(!peer_ips(&c, &gw2.public_key).contains(&lan.to_string()));
    // A standby has no route to its own range.
    assert!(via(&s.node_config(&gw2.id).await).is_empty());

    // The primary stops: gw2 (metric 5) takes the range, in every config.
    s.gateways()
        .await
        .delete_egress_gateway(pb::DeleteEgressGatewayRequest {
            node_id: gw.id.clone(),
        })
        .await
        .unwrap();
    assert!(
        s.get_node(&gw2.id)
            .await
            .egress
            .unwrap()
            .standby_ranges
            .is_empty()
    );
    assert_eq!(
        s.get_node(&gw3.id).await.egress.unwrap().standby_ranges,
        vec![lan.to_string()]
    );
    let c = s.node_config(&laptop.id).await;
    assert_eq!(via(&c), vec![gw2.public_key.clone()]);
    assert!(peer_ips(&c, &gw2.public_key).contains(&lan.to_string()));
    assert_eq!(
        via(&s.node_config(&gw.id).await),
        vec![gw2.public_key.clone()]
    );

    // Its node deleted, gw3 takes it.
    s.nodes()
        .await
        .delete_node(pb::DeleteNodeRequest { id: gw2.id.clone() })
        .await
        .unwrap();
    assert!(
        s.get_node(&gw3.id)
            .await
            .egress
            .unwrap()
            .standby_ranges
            .is_empty()
    );
    assert_eq!(
        via(&s.node_config(&laptop.id).await),
        vec![gw3.public_key.clone()]
    );
}
