//! Admin authentication: one layer in front of every admin service.

use meshplane_proto::v1 as pb;
use meshplane_tests::{TestServer, expect_code, network};
use tonic::Code;

#[tokio::test]
async fn admin_services_need_a_valid_admin_token() {
    let s = TestServer::start().await;
    let list = pb::ListNetworksRequest::default;
    let mut none = pb::network_service_client::NetworkServiceClient::new(s.authed(None).await);
    let st = expect_code(none.list_networks(list()).await, Code::Unauthenticated);
    assert!(st.message().contains("authorization"), "{}", st.message());

    let wrong = format!("{}x", s.admin_token);
    let mut bad =
        pb::network_service_client::NetworkServiceClient::new(s.authed(Some(&wrong)).await);
    expect_code(bad.list_networks(list()).await, Code::Unauthenticated);
    let mut garbage =
        pb::network_service_client::NetworkServiceClient::new(s.authed(Some("hunter2")).await);
    expect_code(garbage.list_networks(list()).await, Code::Unauthenticated);
    // A well-formed token whose record does not exist.
    let forged = meshplane_server::domain::token::NewToken::generate(
        meshplane_server::domain::token::TokenKind::Admin,
    );
    let mut forged_c =
        pb::network_service_client::NetworkServiceClient::new(s.authed(Some(&forged.secret)).await);
    expect_code(forged_c.list_networks(list()).await, Code::Unauthenticated);
    // Nothing was created by the rejected calls.
    expect_code(
        none.create_network(pb::CreateNetworkRequest {
            network: Some(network("corp", "10.0.0.0/16", "")),
        })
        .await,
        Code::Unauthenticated,
    );

    let mut good = s.networks().await;
    assert!(
        good.list_networks(list())
            .await
            .unwrap()
            .into_inner()
            .networks
            .is_empty()
    );
}

#[tokio::test]
async fn new_tokens_work_at_once_and_revoked_ones_stop_within_a_second() {
    let s = TestServer::start().await;
    let t = meshplane_server::domain::token::NewToken::generate(
        meshplane_server::domain::token::TokenKind::Admin,
    );
    let rec = meshplane_server::service::create_admin_token(&*s.store, "ci", &t)
        .await
        .unwrap();
    let mut c =
        pb::network_service_client::NetworkServiceClient::new(s.authed(Some(&t.secret)).await);
    c.list_networks(pb::ListNetworksRequest::default())
        .await
        .unwrap();
    meshplane_server::service::revoke_admin_token(&*s.store, &rec.id)
        .await
        .unwrap();
    // A verified token is trusted for VERIFIED_TTL without asking the store.
    let revoked = std::time::Instant::now();
    loop {
        match c.list_networks(pb::ListNetworksRequest::default()).await {
            Err(st) => {
                assert_eq!(st.code(), Code::Unauthenticated, "{st:?}");
                break;
            }
            Ok(_) => {
                assert!(
                    revoked.elapsed() < meshplane_server::api::auth::VERIFIED_TTL * 2,
                    "a revoked token still works after {:?}",
                    revoked.elapsed()
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    // And it stays refused.
    expect_code(
        c.list_networks(pb::ListNetworksRequest::default()).await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn health_and_reflection_need_no_token() {
    let s = TestServer::start().await;
    let mut h = tonic_health::pb::health_client::HealthClient::new(s.channel().await);
    for svc in [
        "",
        "meshplane.v1.NetworkService",
        "meshplane.v1.AgentService",
    ] {
        let r = h
            .check(tonic_health::pb::HealthCheckRequest {
                service: svc.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{svc}"
        );
    }
}
