//! NetworkService through the generated client against an in-process server.

use meshplane_proto::v1 as pb;
use meshplane_tests::{TestServer, expect_code, expect_field, network};
use tonic::Code;

fn create(n: pb::Network) -> pb::CreateNetworkRequest {
    pb::CreateNetworkRequest { network: Some(n) }
}

async fn count(s: &TestServer) -> usize {
    s.networks()
        .await
        .list_networks(pb::ListNetworksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .networks
        .len()
}

#[tokio::test]
async fn create_applies_defaults_and_get_returns_it() {
    let s = TestServer::start().await;
    let mut c = s.networks().await;
    let n = c
        .create_network(create(network("corp", "10.101.0.0/16", "fd00:101::/64")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(n.default_keepalive, 20);
    assert_eq!(n.default_mtu, 1420);
    assert_eq!(n.default_listen_port, 51821);
    assert!(n.create_time.is_some() && n.update_time.is_some());
    let got = c
        .get_network(pb::GetNetworkRequest {
            name: "corp".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, n);
}

#[tokio::test]
async fn each_invalid_field_is_named_and_nothing_is_written() {
    let s = TestServer::start().await;
    let mut c = s.networks().await;
    let mut cases: Vec<(pb::Network, &str)> = vec![
        (network("", "10.0.0.0/24", ""), "network.name"),
        (network("Corp", "10.0.0.0/24", ""), "network.name"),
        (network("-corp", "10.0.0.0/24", ""), "network.name"),
        (network("corp-", "10.0.0.0/24", ""), "network.name"),
        (network("co_rp", "10.0.0.0/24", ""), "network.name"),
        (network(&"x".repeat(33), "10.0.0.0/24", ""), "network.name"),
        (network("corp", "", ""), "network.address_range"),
        (network("corp", "10.0.0.0/31", ""), "network.address_range"),
        (network("corp", "not-a-cidr", ""), "network.address_range"),
        (network("corp", "fd00::/64", ""), "network.address_range"),
        (network("corp", "", "fd00::/127"), "network.address_range6"),
        (network("corp", "", "10.0.0.0/8"), "network.address_range6"),
    ];
    let mut bad_dns = network("corp", "10.0.0.0/24", "");
    bad_dns.default_ext_client_dns = vec!["1.1.1.1".into(), "dns.example".into()];
    cases.push((bad_dns, "network.default_ext_client_dns[1]"));
    let mut bad_ns = network("corp", "10.0.0.0/24", "");
    bad_ns.nameservers = vec!["300.1.1.1".into()];
    cases.push((bad_ns, "network.nameservers[0]"));
    let mut bad_mtu = network("corp", "10.0.0.0/24", "");
    bad_mtu.default_mtu = 100;
    cases.push((bad_mtu, "network.default_mtu"));
    let mut bad_port = network("corp", "10.0.0.0/24", "");
    bad_port.default_listen_port = 70000;
    cases.push((bad_port, "network.default_listen_port"));
    for (n, field) in cases {
        let what = format!("{n:?}");
        let r = c.create_network(create(n)).await;
        let desc = expect_field(r, field);
        assert!(!desc.is_empty(), "{what}");
    }
    assert_eq!(count(&s).await, 0, "a rejected create wrote something");
}

#[tokio::test]
async fn host_bits_are_rejected_with_the_normalized_range() {
    let s = TestServer::start().await;
    let mut c = s.networks().await;
    let d = expect_field(
        c.create_network(create(network("corp", "10.101.3.7/16", "")))
            .await,
        "network.address_range",
    );
    assert!(d.contains("10.101.0.0/16"), "{d}");
    let d = expect_field(
        c.create_network(create(network("corp", "", "fd00:101::1/64")))
            .await,
        "network.address_range6",
    );
    assert!(d.contains("fd00:101::/64"), "{d}");
    assert_eq!(count(&s).await, 0);
}

#[tokio::test]
async fn overlapping_range_names_the_other_network() {
    let s = TestServer::start().await;
    let mut c = s.networks().await;
    c.create_network(create(network("office", "10.10.0.0/16", "fd00:10::/64")))
        .await
        .unwrap();
    for n in [
        network("lab", "10.10.5.0/24", ""),
        network("lab", "10.0.0.0/8", ""),
        network("lab", "", "fd00:10::/80"),
    ] {
        let st = expect_code(c.create_network(create(n)).await, Code::FailedPrecondition);
        assert!(st.message().contains("\"office\""), "{}", st.message());
    }
    c.create_network(create(network("lab", "10.11.0.0/16", "fd00:11::/64")))
        .await
        .unwrap();
    assert_eq!(count(&s).await, 2);
}

#[tokio::test]
async fn duplicate_name_is_already_exists() {
    let s = TestServer::start().await;
    let mut c = s.networks().await;
    c.create_network(create(network("corp", "10.1.0.0/16", "")))
        .await
        .unwrap();
    let st = expect_code(
        c.create_network(create(network("corp", "10.2.0.0/16", "")))
            .await,
        Code::AlreadyExists,
    );
    assert!(st.message().contains("corp"), "{}", st.message());
    let got = c
        .get_network(pb::GetNetworkRequest {
            name: "corp".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got.address_range, "10.1.0.0/16",
        "the original was overwritten"
    );
}

#[tokio::test]
async fn unknown_network_is_not_found() {
    let s = TestServer::start().await;
    let mut c = s.networks().await;
    expect_code(
        c.get_network(pb::GetNetworkRequest {
            name: "nope".into(),
        })
        .await,
        Code::NotFound,
    );
    expect_code(
        c.delete_network(pb::DeleteNetworkRequest {
            name: "nope".into(),
            force: false,
        })
        .await,
        Code::NotFound,
    );
    let mut n = network("nope", "", "");
    n.default_mtu = 1400;
    expect_code(
        c.update_network(pb::UpdateNetworkRequest {
            network: Some(n),
            update_mask: None,
        })
        .await,
        Code::NotFound,
    );
    expect_field(
        c.get_network(pb::GetNetworkRequest { name: "".into() })
            .await,
        "name",
    );
    expect_field(
        c.create_network(pb::CreateNetworkRequest { network: None })
            .await,
        "network",
    );
}

#[tokio::test]
async fn list_pages_through_every_network_once() {
    let s = TestServer::start().await;
    let mut c = s.networks().await;
    for i in 0..5 {
        c.create_network(create(network(
            &format!("net{i}"),
            &format!("10.{i}.0.0/16"),
            "",
        )))
        .await
        .unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = c
            .list_networks(pb::ListNetworksRequest {
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(r.networks.len() <= 2);
        seen.extend(r.networks.into_iter().map(|n| n.name));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, vec!["net0", "net1", "net2", "net3", "net4"]);
    expect_field(
        c.list_networks(pb::ListNetworksRequest {
            page_size: 2,
            page_token: "garbage!".into(),
        })
        .await,
        "page_token",
    );
    expect_field(
        c.list_networks(pb::ListNetworksRequest {
            page_size: -1,
            page_token: String::new(),
        })
        .await,
        "page_size",
    );
}

#[tokio::test]
async fn update_changes_only_masked_fields() {
    let s = TestServer::start().await;
    let mut c = s.networks().await;
    let before = c
        .create_network(create(network("corp", "10.1.0.0/16", "")))
        .await
        .unwrap()
        .into_inner();
    let mut n = network("corp", "", "");
    n.default_mtu = 1380;
    n.default_keepalive = 25;
    n.default_ext_client_dns = vec!["10.1.0.1".into()];
    let after = c
        .update_network(pb::UpdateNetworkRequest {
            network: Some(n.clone()),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["default_mtu".into(), "default_ext_client_dns".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.default_mtu, 1380);
    assert_eq!(after.default_ext_client_dns, vec!["10.1.0.1"]);
    assert_eq!(after.default_keepalive, before.default_keepalive);
    assert_eq!(after.address_range, "10.1.0.0/16");
    assert_eq!(after.create_time, before.create_time);

    // Immutable and unknown paths, and bad values, change nothing.
    for paths in [vec!["address_range"], vec!["colour"]] {
        expect_field(
            c.update_network(pb::UpdateNetworkRequest {
                network: Some(n.clone()),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.into_iter().map(String::from).collect(),
                }),
            })
            .await,
            "update_mask",
        );
    }
    let mut bad = network("corp", "", "");
    bad.nameservers = vec!["nope".into()];
    expect_field(
        c.update_network(pb::UpdateNetworkRequest {
            network: Some(bad),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["nameservers".into()],
            }),
        })
        .await,
        "network.nameservers[0]",
    );
    let mut zero_mtu = network("corp", "", "");
    zero_mtu.default_mtu = 0;
    expect_field(
        c.update_network(pb::UpdateNetworkRequest {
            network: Some(zero_mtu),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["default_mtu".into()],
            }),
        })
        .await,
        "network.default_mtu",
    );
    let now = c
        .get_network(pb::GetNetworkRequest {
            name: "corp".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now, after);
}

#[tokio::test]
async fn delete_removes_the_network() {
    let s = TestServer::start().await;
    let mut c = s.networks().await;
    c.create_network(create(network("corp", "10.1.0.0/16", "")))
        .await
        .unwrap();
    c.delete_network(pb::DeleteNetworkRequest {
        name: "corp".into(),
        force: false,
    })
    .await
    .unwrap();
    expect_code(
        c.get_network(pb::GetNetworkRequest {
            name: "corp".into(),
        })
        .await,
        Code::NotFound,
    );
    // Its range is free again.
    c.create_network(create(network("corp2", "10.1.0.0/16", "")))
        .await
        .unwrap();
}

#[tokio::test]
async fn data_survives_a_restart_on_the_same_file() {
    let s = TestServer::start().await;
    let token = s.admin_token.clone();
    s.networks()
        .await
        .create_network(create(network("corp", "10.1.0.0/16", "fd00:1::/64")))
        .await
        .unwrap();
    let tmp = s.stop().await.expect("tempdir");
    let s = TestServer::start_in(tmp.path()).await;
    assert_eq!(
        s.admin_token, token,
        "a second start must not mint a new token"
    );
    let n = s
        .networks()
        .await
        .get_network(pb::GetNetworkRequest {
            name: "corp".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(n.address_range6, "fd00:1::/64");
    drop(s);
    drop(tmp);
}
