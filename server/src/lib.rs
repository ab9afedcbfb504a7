//! meshplane's server: a control plane for WireGuard overlay networks.
//!
//! Layers: [`domain`] (pure types, validation, config computation),
//! [`store`] (persistence behind one trait), [`api`] (gRPC services), and the
//! wiring here.

use std::{future::Future, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use meshplane_proto::{SERVICE_NAMES, v1 as pb};
use tokio::{net::TcpListener, sync::watch};
use tonic::transport::{Server, server::TcpIncoming};

pub mod api;
pub mod domain;
pub mod store;

use api::{AppState, auth::AuthLayer, pending::*};
use domain::token::{NewToken, TokenKind};
use store::Store;

/// Runs the gRPC server on a pre-bound listener until `shutdown` resolves;
/// then open streams end and in-flight calls drain.
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (drain_tx, drain) = watch::channel(false);
    let state = AppState {
        store: store.clone(),
        drain,
    };

    let (health, health_svc) = tonic_health::server::health_reporter();
    for name in SERVICE_NAMES {
        health
            .set_service_status(*name, tonic_health::ServingStatus::Serving)
            .await;
    }
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(meshplane_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .expect("meshplane's descriptor set is valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("meshplane's descriptor set is valid");

    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));

    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: ending streams and draining calls");
        let _ = drain_tx.send(true);
    };

    Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(AuthLayer::new(store))
        .add_service(health_svc)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(pb::network_service_server::NetworkServiceServer::new(
            api::network::Networks(state.clone()),
        ))
        .add_service(
            pb::enrollment_key_service_server::EnrollmentKeyServiceServer::new(
                api::enrollment_key::EnrollmentKeys(state.clone()),
            ),
        )
        .add_service(pb::node_service_server::NodeServiceServer::new(
            api::node::Nodes(state.clone()),
        ))
        .add_service(pb::gateway_service_server::GatewayServiceServer::new(
            PendingGatewayService,
        ))
        .add_service(pb::ext_client_service_server::ExtClientServiceServer::new(
            PendingExtClientService,
        ))
        .add_service(pb::dns_service_server::DnsServiceServer::new(
            PendingDnsService,
        ))
        .add_service(pb::agent_service_server::AgentServiceServer::new(
            api::agent::Agents(state.clone()),
        ))
        .add_service(pb::event_service_server::EventServiceServer::new(
            PendingEventService,
        ))
        .serve_with_incoming_shutdown(incoming, signal)
        .await
}

/// The default SQLite URL for a data directory.
pub fn default_database_url(data_dir: &Path) -> String {
    format!("sqlite://{}/meshplane.db", data_dir.display())
}

/// Creates the first admin token when none exists: stores only its hash,
/// writes it to `<data_dir>/admin.token` (mode 0600) and returns it so the
/// caller can print it once.
pub async fn bootstrap_admin_token(
    store: &dyn Store,
    data_dir: &Path,
) -> domain::Result<Option<String>> {
    if !store.list_admin_tokens().await?.is_empty() {
        return Ok(None);
    }
    let token = NewToken::generate(TokenKind::Admin);
    write_secret_file(&data_dir.join("admin.token"), &token.secret)
        .map_err(|e| domain::Error::Internal(format!("writing admin.token: {e}")))?;
    store.create_admin_token("initial", &token).await?;
    Ok(Some(token.secret))
}

/// Writes `secret` to `path`, readable by the owner only.
pub fn write_secret_file(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(secret.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

/// Where a running server listens, for the ready line.
pub fn ready_line(addr: SocketAddr) -> String {
    format!("meshplane ready: serving gRPC on {addr}")
}
