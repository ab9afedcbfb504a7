//! meshplane's server: a control plane for WireGuard overlay networks.
//!
//! Layers: [`domain`] (pure types, validation, config computation),
//! [`store`] (persistence behind one trait), [`service`] (one function per
//! use case; every write wakes the hub), [`api`] (gRPC services), and the
//! wiring here.

use std::{future::Future, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use meshplane_proto::{SERVICE_NAMES, v1 as pb};
use tokio::{net::TcpListener, sync::watch};
use tonic::transport::{Server, server::TcpIncoming};

pub mod api;
pub mod dns;
pub mod domain;
pub mod failover;
pub mod hub;
pub mod metrics;
pub mod service;
pub mod store;
pub mod tls;

use api::{
    AppState,
    auth::{AuthLayer, Throttle},
    limits::{DeadlineLayer, RequestLimits, UnaryLimitLayer},
};
use domain::{
    crypto::Sealer,
    token::{NewToken, TokenKind},
};
use store::Store;

/// What the server runs on.
#[derive(Clone)]
pub struct Backend {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Seals external clients' private keys.
    pub sealer: Arc<Sealer>,
    /// Admission limits of config streams.
    pub limits: hub::Limits,
}

impl Backend {
    /// Opens the store at `database_url` and the secret key at
    /// `secret_key_file` (created when missing).
    pub async fn open(database_url: &str, secret_key_file: &Path) -> domain::Result<Self> {
        let secret = load_or_create_secret(secret_key_file).map_err(|e| {
            domain::Error::Internal(format!(
                "secret key file {}: {e}",
                secret_key_file.display()
            ))
        })?;
        Self::open_with_secret(database_url, secret).await
    }

    /// [`Backend::open`] with the secret key given (e.g. from the
    /// environment) instead of read from a file.
    pub async fn open_with_secret(database_url: &str, secret: [u8; 32]) -> domain::Result<Self> {
        let store = store::open(database_url).await?;
        Ok(Self {
            store,
            sealer: Arc::new(Sealer::new(&secret)),
            limits: hub::Limits::default(),
        })
    }
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Loading the config state failed.
    #[error("loading state: {0}")]
    Load(#[from] domain::Error),
    /// The transport failed.
    #[error("serving: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The DNS socket could not be used.
    #[error("DNS socket: {0}")]
    Dns(std::io::Error),
    /// The metrics listener could not be used.
    #[error("metrics listener: {0}")]
    Metrics(std::io::Error),
}

/// Optional parts of a running server.
pub struct ServeOptions {
    /// Serve DNS on this pre-bound UDP socket.
    pub dns: Option<(std::net::UdpSocket, dns::DnsOptions)>,
    /// Serve Prometheus metrics (`GET /metrics`) on this pre-bound TCP
    /// listener.
    pub metrics: Option<std::net::TcpListener>,
    /// Limits on calls (deadline, message size, concurrency, failed
    /// authentication).
    pub limits: RequestLimits,
    /// How often the hub polls the event log for writes it was not woken
    /// for (other processes' writes); this process's own writes wake it, and
    /// on PostgreSQL other replicas' writes do too (LISTEN/NOTIFY), which
    /// makes this a fallback polled 10 times less often.
    pub follow_poll: Duration,
    /// How often this replica records the config streams it holds in the
    /// shared presence table (and reads everyone's).
    pub presence_interval: Duration,
    /// How long a replica's presence entry counts without being renewed
    /// (a replica that died stops counting after this).
    pub presence_expiry: Duration,
    /// Events older than this are pruned (None keeps them all).
    pub event_retention: Option<Duration>,
    /// How often pruning runs.
    pub prune_interval: Duration,
    /// Serve TLS only, with this certificate (and client CA); `None`
    /// serves plaintext.
    pub tls: Option<tls::ServerTls>,
    /// How often the TLS files are checked for changes (zero: never; then
    /// only [`tls::ServerTls::reload`] reloads them).
    pub tls_poll: Duration,
    /// How long the primary gateway of a range several gateways serve may
    /// be gone (no config stream on any replica) before the range moves to
    /// another (see [`failover`]).
    pub egress_grace: Duration,
    /// How often those ranges' primaries are chosen again.
    pub egress_check: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            dns: None,
            metrics: None,
            limits: RequestLimits::default(),
            follow_poll: Duration::from_secs(1),
            presence_interval: Duration::from_secs(2),
            presence_expiry: Duration::from_secs(10),
            event_retention: Some(DEFAULT_EVENT_RETENTION),
            prune_interval: Duration::from_secs(600),
            tls: None,
            tls_poll: tls::DEFAULT_POLL_INTERVAL,
            egress_grace: Duration::from_secs(2),
            egress_check: Duration::from_millis(500),
        }
    }
}

/// Events are kept this long by default (7 days).
pub const DEFAULT_EVENT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Keeps this replica's entries in the shared presence table current and
/// hands the hub the set of nodes streaming from any replica; on stop,
/// removes this replica's entries.
async fn run_presence(
    store: Arc<dyn Store>,
    hub: Arc<hub::Hub>,
    replica: String,
    every: Duration,
    expiry: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let expiry = chrono::Duration::from_std(expiry).unwrap_or(chrono::Duration::seconds(10));
    let mut last_ok = std::time::Instant::now();
    loop {
        // The database's clock: one clock for every replica's entries.
        let here = hub.streaming_here();
        let renewed = match store.clock().await {
            Ok(now) => store.presence(&replica, &here, now, now - expiry).await,
            Err(e) => Err(e),
        };
        match renewed {
            Ok(nodes) => {
                hub.set_present(nodes, &here);
                last_ok = std::time::Instant::now();
            }
            Err(e) => {
                tracing::warn!(error = %e, "recording presence failed; retrying");
                // What other replicas said is stale by now: forget it.
                if last_ok.elapsed() > expiry.to_std().unwrap_or_default() {
                    hub.set_present(Vec::new(), &[]);
                }
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    let now = store.clock().await.unwrap_or_else(|_| domain::now());
    if let Err(e) = store.presence(&replica, &[], now, now - expiry).await {
        tracing::debug!(error = %e, "clearing presence on shutdown failed");
    }
}

/// Prunes events older than `retention` every `every`.
async fn run_pruning(
    store: Arc<dyn Store>,
    retention: Duration,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    loop {
        if let Some(before) = domain::now().checked_sub_signed(retention) {
            match store.prune_events(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(pruned = n, "pruned old events"),
                Err(e) => tracing::warn!(error = %e, "pruning events failed"),
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Runs the gRPC server on a pre-bound listener until `shutdown` resolves;
/// then open streams end and in-flight calls drain.
pub async fn serve(
    listener: TcpListener,
    backend: Backend,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_with(listener, backend, ServeOptions::default(), shutdown).await
}

/// [`serve`] with optional parts (the DNS server).
pub async fn serve_with(
    listener: TcpListener,
    backend: Backend,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (drain_tx, drain) = watch::channel(false);
    let store = backend.store.clone();
    let hub = hub::Hub::load(store.clone(), backend.limits).await?;
    let methods = api::methods::Methods::load();
    let metrics = options
        .metrics
        .is_some()
        .then(|| metrics::Metrics::new(methods.clone()));
    if let Some(m) = &metrics {
        hub.measure_fanout(m.fanout());
    }
    let follower = hub.spawn_follower(options.follow_poll, drain.clone());
    let replica = uuid::Uuid::new_v4().to_string();
    tracing::info!(%replica, backend = store.backend(), "replica starting");
    let presence = tokio::spawn(run_presence(
        store.clone(),
        hub.clone(),
        replica,
        options.presence_interval,
        options.presence_expiry,
        drain.clone(),
    ));
    let pruning = options.event_retention.map(|r| {
        tokio::spawn(run_pruning(
            store.clone(),
            r,
            options.prune_interval,
            drain.clone(),
        ))
    });
    let dns = match options.dns {
        Some((socket, opts)) => {
            socket.set_nonblocking(true).map_err(ServeError::Dns)?;
            let socket = tokio::net::UdpSocket::from_std(socket).map_err(ServeError::Dns)?;
            Some(tokio::spawn(dns::serve(
                socket,
                hub.clone(),
                opts,
                drain.clone(),
            )))
        }
        None => None,
    };
    let state = AppState {
        service: service::Service::new(backend.store, backend.sealer, hub.clone()),
        hub,
        drain,
    };
    let failover = tokio::spawn(failover::run(
        state.service.clone(),
        state.hub.clone(),
        options.egress_grace,
        options.egress_check,
        state.drain.clone(),
    ));
    let metrics_server = match (options.metrics, &metrics) {
        (Some(listener), Some(m)) => {
            listener
                .set_nonblocking(true)
                .map_err(ServeError::Metrics)?;
            let listener = TcpListener::from_std(listener).map_err(ServeError::Metrics)?;
            let registry = m.registry(metrics::Live {
                hub: state.hub.clone(),
                service: state.service.clone(),
            });
            let scrape = Arc::new(metrics::Scrape {
                registry,
                metrics: m.clone(),
                hub: state.hub.clone(),
                store: store.clone(),
            });
            Some(tokio::spawn(metrics::serve(
                listener,
                scrape,
                state.drain.clone(),
            )))
        }
        _ => None,
    };
    let limits = options.limits;
    let max_message = limits.max_message_size;

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

    let tls_watch = options.tls.clone().and_then(|t| {
        tracing::info!(cert = %t.files().cert.display(), sha256 = %t.fingerprint(),
            client_ca = ?t.files().client_ca, "serving TLS only");
        (!options.tls_poll.is_zero())
            .then(|| tokio::spawn(t.watch(options.tls_poll, state.drain.clone())))
    });
    let require_agent_certs = options.tls.as_ref().is_some_and(|t| t.verifies_clients());

    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));

    let (stopping_tx, stopping) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: ending streams and draining calls");
        let _ = drain_tx.send(true);
        let _ = stopping_tx.send(());
    };
    // Draining waits for clients to close their connections; one that
    // never does (an idle client that ignores GOAWAY) must not hold the
    // process. Every acknowledged write is committed already.
    let deadline = async move {
        if stopping.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };

    let router = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // Outermost first: every call is counted (refusals too), the
        // deadline covers authentication and the wait for a slot, and a
        // throttled or unauthenticated call takes no slot.
        .layer(metrics::MetricsLayer::new(metrics))
        .layer(DeadlineLayer::new(methods.clone(), limits.unary_deadline))
        .layer(
            AuthLayer::with_throttle(
                store,
                Throttle::new(limits.auth_failure_limit, limits.auth_failure_window),
            )
            .require_agent_certificates(require_agent_certs),
        )
        .layer(UnaryLimitLayer::new(
            methods,
            limits.max_concurrent_unary,
            limits.unary_queue_wait,
        ))
        .add_service(health_svc)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            pb::network_service_server::NetworkServiceServer::new(api::network::Networks(
                state.clone(),
            ))
            .max_decoding_message_size(max_message),
        )
        .add_service(
            pb::enrollment_key_service_server::EnrollmentKeyServiceServer::new(
                api::enrollment_key::EnrollmentKeys(state.clone()),
            )
            .max_decoding_message_size(max_message),
        )
        .add_service(
            pb::node_service_server::NodeServiceServer::new(api::node::Nodes(state.clone()))
                .max_decoding_message_size(max_message),
        )
        .add_service(
            pb::gateway_service_server::GatewayServiceServer::new(api::gateway::Gateways(
                state.clone(),
            ))
            .max_decoding_message_size(max_message),
        )
        .add_service(
            pb::ext_client_service_server::ExtClientServiceServer::new(
                api::ext_client::ExtClients(state.clone()),
            )
            .max_decoding_message_size(max_message),
        )
        .add_service(
            pb::dns_service_server::DnsServiceServer::new(api::dns::Dns(state.clone()))
                .max_decoding_message_size(max_message),
        )
        .add_service(
            pb::agent_service_server::AgentServiceServer::new(api::agent::Agents(state.clone()))
                .max_decoding_message_size(max_message),
        )
        .add_service(
            pb::event_service_server::EventServiceServer::new(api::event::Events(state.clone()))
                .max_decoding_message_size(max_message),
        )
        .add_service(
            pb::policy_service_server::PolicyServiceServer::new(api::policy::Policies(
                state.clone(),
            ))
            .max_decoding_message_size(max_message),
        );
    let server: futures::future::BoxFuture<'static, Result<(), tonic::transport::Error>> =
        match options.tls {
            Some(t) => {
                Box::pin(router.serve_with_incoming_shutdown(tls::incoming(incoming, t), signal))
            }
            None => Box::pin(router.serve_with_incoming_shutdown(incoming, signal)),
        };
    tokio::select! {
        r = server => r?,
        () = deadline => tracing::warn!(
            grace_s = SHUTDOWN_GRACE.as_secs(),
            "connections still open after the grace period; stopping anyway"
        ),
    }
    follower.abort();
    failover.abort();
    if let Some(t) = tls_watch {
        t.abort();
    }
    if let Some(p) = pruning {
        p.abort();
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), presence).await;
    if let Some(d) = dns {
        let _ = tokio::time::timeout(Duration::from_secs(5), d).await;
    }
    if let Some(m) = metrics_server {
        let _ = tokio::time::timeout(Duration::from_secs(2), m).await;
    }
    Ok(())
}

/// How long a stopping server waits for clients to close their
/// connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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
    service::create_admin_token(store, "initial", &token).await?;
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

/// Reads the server's 32-byte secret (base64) from `path`, creating it
/// (mode 0600) when missing. It seals external clients' private keys: every
/// replica sharing a database needs the same file.
pub fn load_or_create_secret(path: &Path) -> std::io::Result<[u8; 32]> {
    match std::fs::read_to_string(path) {
        Ok(text) => decode_secret(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_secret(path),
        Err(e) => Err(e),
    }
}

/// Decodes a secret key: base64 of 32 bytes (surrounding white space
/// ignored).
pub fn decode_secret(text: &str) -> std::io::Result<[u8; 32]> {
    use base64::{Engine, engine::general_purpose::STANDARD};
    STANDARD
        .decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "expected base64 of 32 bytes",
            )
        })
}

fn create_secret(path: &Path) -> std::io::Result<[u8; 32]> {
    use base64::{Engine, engine::general_purpose::STANDARD};
    let key: [u8; 32] = rand::random();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_secret_file(path, &STANDARD.encode(key))?;
    Ok(key)
}

/// Raises this process's open-file limit to its hard limit (each agent
/// stream is a connection); returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
        lim.rlim_cur
    }
}

/// Where a running server listens, for the ready line: the address, or
/// with TLS the `https://` URL to give clients.
pub fn ready_line(addr: SocketAddr, tls: bool) -> String {
    if tls {
        format!("meshplane ready: serving gRPC on https://{addr}")
    } else {
        format!("meshplane ready: serving gRPC on {addr}")
    }
}
