//! TLS on the gRPC port, with certificates made at run time (rcgen):
//! plaintext refused, the SDK, meshctl and grpcurl verifying against a CA
//! file, clients that do not trust the CA told why, certificates reloaded
//! (file change, SIGHUP on the real binary) without dropping open streams,
//! and client certificates required on AgentService with `--client-ca`.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use meshplane_proto::v1 as pb;
use meshplane_sdk::{Client, Code, ErrorKind, TlsConfig};
use meshplane_server::tls::{ServerTls, TlsFiles};
use meshplane_tests::{TestServer, built_binary, grpcurl, register_request};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority made for one test.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for 127.0.0.1 and localhost: (cert PEM, key
    /// PEM, cert DER).
    fn server_cert(&self, cn: &str) -> (String, String, Vec<u8>) {
        self.leaf(
            cn,
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate.
    fn client_cert(&self, cn: &str) -> (String, String, Vec<u8>) {
        self.leaf(cn, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(
        &self,
        cn: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (String, String, Vec<u8>) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

/// A directory with `ca.pem`, `server.pem`, `server.key` (and whatever a
/// test adds).
struct Certs {
    dir: tempfile::TempDir,
    ca: Ca,
    server_der: Vec<u8>,
}

impl Certs {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("meshplane test CA");
        let (cert, key, der) = ca.server_cert("meshplane test server 1");
        std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
        std::fs::write(dir.path().join("server.pem"), cert).unwrap();
        std::fs::write(dir.path().join("server.key"), key).unwrap();
        Certs {
            dir,
            ca,
            server_der: der,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn files(&self, client_ca: Option<&str>) -> TlsFiles {
        TlsFiles {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: client_ca.map(|n| self.path(n)),
        }
    }

    /// Writes a file whole under a temporary name and renames it into
    /// place, as certificate tools do.
    fn replace(&self, name: &str, contents: &str) {
        let tmp = self.path(&format!(".{name}.new"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, self.path(name)).unwrap();
    }

    /// An SDK TLS config trusting this CA.
    fn trust(&self) -> TlsConfig {
        TlsConfig::new().ca_certificate(self.ca.pem.clone())
    }
}

async fn tls_server(certs: &Certs, client_ca: Option<&str>, poll: Duration) -> TestServer {
    let tls = ServerTls::load(certs.files(client_ca)).expect("load TLS");
    TestServer::start_tls(tls, poll).await
}

fn admin(server: &TestServer, tls: TlsConfig) -> Client {
    Client::builder(server.url())
        .token(server.admin_token.clone())
        .tls(tls)
        .timeout(Duration::from_secs(20))
        .connect_lazy()
        .expect("client")
}

/// The certificate a server at `addr` presents, by a handshake that
/// accepts any (the test compares it with the files).
async fn presented_certificate(addr: std::net::SocketAddr) -> Vec<u8> {
    use rustls::{
        DigitallySignedStruct, SignatureScheme,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        pki_types::{CertificateDer, ServerName, UnixTime},
    };
    #[derive(Debug)]
    struct AnyCert;
    impl ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyCert))
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("handshake");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// Waits (up to 15 s) until new connections get the certificate `der`.
async fn wait_for_certificate(addr: std::net::SocketAddr, der: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while presented_certificate(addr).await != der {
        assert!(
            Instant::now() < deadline,
            "the server still presents its old certificate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A network and an enrollment key for it, made through `client`.
async fn network_and_key(client: &Client, name: &str, range: &str) -> String {
    client
        .networks()
        .create(pb::Network {
            name: name.into(),
            address_range: range.into(),
            ..Default::default()
        })
        .await
        .expect("create network");
    client
        .enrollment_keys()
        .create(pb::EnrollmentKey {
            networks: vec![name.into()],
            unlimited: true,
            ..Default::default()
        })
        .await
        .expect("create key")
        .token
}

#[tokio::test]
async fn plaintext_clients_are_refused_on_a_tls_port_with_the_reason() {
    let certs = Certs::new();
    let server = tls_server(&certs, None, Duration::ZERO).await;
    let plain = Client::builder(format!("http://{}", server.addr))
        .token(server.admin_token.clone())
        .timeout(Duration::from_secs(10))
        .connect_lazy()
        .unwrap();
    let started = Instant::now();
    let e = plain.networks().list_all().await.unwrap_err();
    // Every call of a gRPC client without TLS is refused, saying why, with
    // a code that is not retried.
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(e.kind(), ErrorKind::Status, "{e:?}");
    assert!(e.message().contains("serves TLS only"), "{e:?}");
    assert!(e.message().contains("https://"), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "retried: {e:?}");
    // Registering (no token needed) is refused the same way: nothing is
    // served in plaintext.
    let e = plain
        .agent()
        .register(register_request("mpk_x", "corp", "n"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    // The same server, over TLS with its CA, works.
    let nets = admin(&server, certs.trust()).networks().list_all().await;
    assert_eq!(nets.unwrap().len(), 0);
}

#[tokio::test]
async fn the_sdk_verifies_the_server_against_its_ca_and_says_what_failed() {
    let certs = Certs::new();
    let server = tls_server(&certs, None, Duration::ZERO).await;
    // Trusting the CA: works, over https:// on 127.0.0.1 (an IP name).
    let client = admin(&server, certs.trust());
    network_and_key(&client, "corp", "10.1.0.0/24").await;
    assert_eq!(client.networks().list_all().await.unwrap().len(), 1);
    // Not trusting it (the system's CAs): the error names the problem and
    // what to pass, and comes at once (not retried).
    let started = Instant::now();
    let e = admin(&server, TlsConfig::new())
        .networks()
        .list_all()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tls, "{e:?}");
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("unknown issuer"), "{e:?}");
    assert!(e.message().contains("--ca-file"), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "retried: {e:?}");
    // Another CA: the same.
    let other = Ca::new("another CA");
    let e = admin(&server, TlsConfig::new().ca_certificate(other.pem))
        .networks()
        .list_all()
        .await
        .unwrap_err();
    assert!(e.message().contains("unknown issuer"), "{e:?}");
    // The right CA but a name the certificate does not list.
    let e = admin(&server, certs.trust().domain_name("mesh.example.net"))
        .networks()
        .list_all()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tls, "{e:?}");
    assert!(e.message().contains("does not name the host"), "{e:?}");
    assert!(e.message().contains("mesh.example.net"), "{e:?}");
    // connect() (not lazy) says the same.
    let e = Client::builder(server.url())
        .tls(TlsConfig::new())
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tls, "{e:?}");
    assert!(e.message().contains("unknown issuer"), "{e:?}");
    // A CA file that is not one.
    let e = Client::builder(server.url())
        .tls(TlsConfig::new().ca_certificate("nonsense"))
        .connect_lazy()
        .unwrap_err();
    assert!(e.message().contains("holds no certificate"), "{e:?}");
    let e = TlsConfig::new()
        .ca_certificate_file(certs.path("missing.pem"))
        .unwrap_err();
    assert!(e.message().contains("missing.pem"), "{e:?}");
    let e = TlsConfig::new()
        .ca_certificate_file(certs.path("server.key"))
        .unwrap_err();
    assert!(
        e.message().contains("server.key holds no certificate"),
        "{e:?}"
    );
    // A client key that is not the certificate's.
    let (cert, _, _) = certs.ca.client_cert("a");
    let (_, other_key, _) = certs.ca.client_cert("b");
    let e = Client::builder(server.url())
        .tls(certs.trust().identity(cert, other_key))
        .connect_lazy()
        .unwrap_err();
    assert!(
        e.message()
            .contains("does not match the client certificate"),
        "{e:?}"
    );
}

#[tokio::test]
async fn new_connections_get_a_reloaded_certificate_and_open_streams_keep_working() {
    let certs = Certs::new();
    let server = tls_server(&certs, None, Duration::from_millis(200)).await;
    assert_eq!(presented_certificate(server.addr).await, certs.server_der);
    let client = admin(&server, certs.trust());
    let key = network_and_key(&client, "corp", "10.2.0.0/24").await;
    let reg = client
        .agent()
        .register(register_request(&key, "corp", "first"))
        .await
        .unwrap();

    // A raw config stream (no reconnects hidden from the test) over TLS.
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&certs.ca.pem)),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut agent = pb::agent_service_client::AgentServiceClient::new(
        tonic::service::interceptor::InterceptedService::new(
            channel,
            meshplane_tests::Bearer::new(Some(reg.node_token.expose())),
        ),
    );
    let mut stream = agent
        .watch_config(pb::WatchConfigRequest { last_revision: 0 })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("snapshot");

    // A new certificate from the same CA, written over the old files.
    let (cert, key_pem, der) = certs.ca.server_cert("meshplane test server 2");
    assert_ne!(der, certs.server_der);
    certs.replace("server.key", &key_pem);
    certs.replace("server.pem", &cert);
    wait_for_certificate(server.addr, &der).await;
    assert_eq!(server.tls.as_ref().unwrap().fingerprint(), {
        meshplane_server::tls::fingerprint(&der)
    });

    // The stream opened before the reload still delivers: a new node
    // becomes the first node's peer.
    client
        .agent()
        .register(register_request(&key, "corp", "second"))
        .await
        .unwrap();
    let update = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an update within 10 s")
        .expect("the stream is still open")
        .expect("an update");
    assert!(update.revision > first.revision);
    // New clients trusting the CA connect to the new certificate.
    assert_eq!(client.networks().list_all().await.unwrap().len(), 1);

    // A broken pair (the key of another certificate) is refused: the
    // current certificate stays.
    let (_, other_key, _) = certs.ca.server_cert("unused");
    certs.replace("server.key", &other_key);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(presented_certificate(server.addr).await, der);
    let e = server.tls.as_ref().unwrap().reload().unwrap_err();
    assert!(e.to_string().contains("does not match"), "{e}");
    assert_eq!(presented_certificate(server.addr).await, der);
}

#[tokio::test]
async fn client_certificates_are_required_on_agent_service_with_a_client_ca() {
    let certs = Certs::new();
    let agents_ca = Ca::new("meshplane agents CA");
    std::fs::write(certs.path("agents-ca.pem"), &agents_ca.pem).unwrap();
    let server = tls_server(&certs, Some("agents-ca.pem"), Duration::ZERO).await;

    // Admin calls need no client certificate.
    let client = admin(&server, certs.trust());
    let key = network_and_key(&client, "corp", "10.3.0.0/24").await;

    // An agent without one is refused on every AgentService call.
    let e = client
        .agent()
        .register(register_request(&key, "corp", "nocert"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("needs a client certificate"), "{e:?}");
    assert!(e.message().contains("--client-cert"), "{e:?}");

    // With a certificate from the agents' CA it registers and streams.
    let (cert, cert_key, _) = agents_ca.client_cert("agent office");
    let agent = admin(&server, certs.trust().identity(cert, cert_key));
    let reg = agent
        .agent()
        .register(register_request(&key, "corp", "office"))
        .await
        .expect("register with a client certificate");
    let mut configs = agent
        .agent()
        .with_node_token(reg.node_token.clone())
        .watch_config(None);
    let cfg = tokio::time::timeout(Duration::from_secs(10), configs.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(cfg.node_id, reg.node.id);
    // The same node token over a connection without the certificate: refused.
    let e = client
        .agent()
        .with_node_token(reg.node_token.clone())
        .report_status(cfg.revision, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    // A certificate from another CA fails the handshake, saying so.
    let (cert, cert_key, _) = certs.ca.client_cert("not an agent");
    let e = admin(&server, certs.trust().identity(cert, cert_key))
        .networks()
        .list_all()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tls, "{e:?}");
    assert!(
        e.message().contains("refused this client's certificate"),
        "{e:?}"
    );

    // A TLS server with an agent's stream open stops cleanly (within 10 s,
    // without an error).
    server.stop().await;
    drop(configs);
}

/// `meshctl ARGS` with no ambient configuration.
fn meshctl(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(built_binary("meshctl"))
        .current_dir(dir)
        .env_remove("MESHCTL_SERVER")
        .env_remove("MESHCTL_TOKEN")
        .env_remove("MESHCTL_TOKEN_FILE")
        .env_remove("MESHCTL_CA_FILE")
        .env_remove("MESHCTL_CLIENT_CERT")
        .env_remove("MESHCTL_CLIENT_KEY")
        .args(args)
        .output()
        .expect("run meshctl")
}

#[tokio::test]
async fn meshctl_and_its_agent_use_the_ca_file_and_client_certificate() {
    let certs = Certs::new();
    let agents_ca = Ca::new("meshplane agents CA");
    std::fs::write(certs.path("agents-ca.pem"), &agents_ca.pem).unwrap();
    let (cert, key, _) = agents_ca.client_cert("agent");
    std::fs::write(certs.path("agent.pem"), cert).unwrap();
    std::fs::write(certs.path("agent.key"), key).unwrap();
    let server = tls_server(&certs, Some("agents-ca.pem"), Duration::ZERO).await;
    let url = server.url();
    let ca = certs.path("ca.pem").display().to_string();
    let dir = certs.dir.path();
    let token = server.admin_token.clone();
    let run = move |args: Vec<String>| {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            meshctl(&dir, &args)
        })
    };
    let words = |s: &str| -> Vec<String> { s.split_whitespace().map(String::from).collect() };

    // --ca-file.
    let out = run(words(&format!(
        "--server {url} --ca-file {ca} --token {token} network create corp --range 10.4.0.0/24"
    )))
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // MESHCTL_CA_FILE.
    let out = tokio::task::spawn_blocking({
        let (dir, url, ca, token) = (dir.to_path_buf(), url.clone(), ca.clone(), token.clone());
        move || {
            Command::new(built_binary("meshctl"))
                .current_dir(&dir)
                .env("MESHCTL_CA_FILE", &ca)
                .env("MESHCTL_SERVER", &url)
                .env("MESHCTL_TOKEN", &token)
                .args(["network", "list", "-o", "json"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"corp\""));
    // Without it: exit 1, and what to do.
    let out = run(words(&format!(
        "--server {url} --token {token} network list"
    )))
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unknown issuer"), "{stderr}");
    assert!(stderr.contains("MESHCTL_CA_FILE"), "{stderr}");
    // --ca-file with an http:// server is a usage error, not a silent
    // plaintext connection.
    let out = run(words(&format!(
        "--server http://{} --ca-file {ca} --token {token} network list",
        server.addr
    )))
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not https://"), "{stderr}");

    // The agent: refused without a client certificate, runs with one.
    let key = admin(&server, certs.trust())
        .enrollment_keys()
        .create(pb::EnrollmentKey {
            networks: vec!["corp".into()],
            unlimited: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .token;
    let agent = |state: &str, cert: bool| {
        let mut a = words(&format!(
            "--server {url} --ca-file {ca} agent run --dry-run --network corp \
             --enrollment-key {key} --name {state} --interface mptls0 --state-dir {}",
            dir.join(state).display()
        ));
        if cert {
            a.splice(
                4..4,
                words(&format!(
                    "--client-cert {} --client-key {}",
                    certs.path("agent.pem").display(),
                    certs.path("agent.key").display()
                )),
            );
        }
        a
    };
    let out = run(agent("nocert", false)).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("UNAUTHENTICATED"), "{stderr}");
    assert!(stderr.contains("needs a client certificate"), "{stderr}");
    let out = run(agent("withcert", true)).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("plan for node withcert"), "{stdout}");
    // Nothing secret in its log.
    assert!(!stderr.contains(&key), "{stderr}");
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
}

#[tokio::test]
async fn grpcurl_verifies_with_cacert_and_plaintext_is_refused() {
    let certs = Certs::new();
    let server = tls_server(&certs, None, Duration::ZERO).await;
    let addr = server.addr.to_string();
    let auth = format!("authorization: Bearer {}", server.admin_token);
    let ca = certs.path("ca.pem");
    let grpcurl_run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            Command::new(grpcurl())
                .args(&args)
                .output()
                .expect("run grpcurl")
        })
    };
    let ok = grpcurl_run(vec![
        "-cacert".into(),
        ca.display().to_string(),
        "-H".into(),
        auth.clone(),
        "-d".into(),
        r#"{"network": {"name": "corp", "addressRange": "10.5.0.0/24"}}"#.into(),
        addr.clone(),
        "meshplane.v1.NetworkService/CreateNetwork".into(),
    ])
    .await
    .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("10.5.0.0/24"));
    // Without the CA: refused, naming the unknown authority.
    let out = grpcurl_run(vec![addr.clone(), "list".into()])
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("unknown authority"), "{stderr}");
    // -plaintext against the TLS port: refused, saying what to do.
    let out = grpcurl_run(vec![
        "-plaintext".into(),
        "-H".into(),
        auth.clone(),
        "-d".into(),
        "{}".into(),
        addr.clone(),
        "meshplane.v1.NetworkService/ListNetworks".into(),
    ])
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("FailedPrecondition"), "{stderr}");
    assert!(stderr.contains("serves TLS only"), "{stderr}");
}

/// A `meshplane serve` process with TLS.
struct TlsServerProcess {
    child: Child,
    url: String,
}

impl Drop for TlsServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_cmd(data_dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(built_binary("meshplane"));
    c.arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("MESHPLANE_DATA_DIR", data_dir)
        .env_remove("MESHPLANE_DATABASE_URL")
        .env_remove("MESHPLANE_TLS_CERT")
        .env_remove("MESHPLANE_TLS_KEY")
        .env_remove("MESHPLANE_CLIENT_CA")
        .env_remove("MESHPLANE_TLS_RELOAD_INTERVAL")
        .env("RUST_LOG", "warn");
    c
}

#[test]
fn the_real_server_serves_tls_reloads_on_sighup_and_refuses_bad_files() {
    let certs = Certs::new();
    let data = tempfile::tempdir().unwrap();
    let cert = certs.path("server.pem").display().to_string();
    let key = certs.path("server.key").display().to_string();

    // Startup errors say which file and what is wrong.
    let out = serve_cmd(data.path(), &["--tls-cert", &cert])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tls-key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let missing = certs.path("missing.key").display().to_string();
    let out = serve_cmd(data.path(), &["--tls-cert", &cert, "--tls-key", &missing])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("reading the TLS private key {missing}")),
        "{stderr}"
    );
    let (_, other_key, _) = certs.ca.server_cert("other");
    std::fs::write(certs.path("other.key"), other_key).unwrap();
    let other = certs.path("other.key").display().to_string();
    let out = serve_cmd(data.path(), &["--tls-cert", &cert, "--tls-key", &other])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("does not match the certificate"),
        "{stderr}"
    );
    let out = serve_cmd(data.path(), &["--tls-cert", &key, "--tls-key", &key])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds no certificate"), "{stderr}");

    // Served with TLS; the file poll is off, so only SIGHUP reloads.
    let mut child = serve_cmd(
        data.path(),
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-reload-interval",
            "0",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let url = loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "server exited early");
        if let Some(url) = line
            .trim()
            .strip_prefix("meshplane ready: serving gRPC on ")
        {
            break url.to_owned();
        }
    };
    let server = TlsServerProcess { child, url };
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let addr: std::net::SocketAddr = server.url["https://".len()..].parse().unwrap();
    let token = std::fs::read_to_string(data.path().join("admin.token")).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = Client::builder(server.url.clone())
            .token(token.trim())
            .tls(certs.trust())
            .connect()
            .await
            .expect("connect over TLS");
        assert!(client.networks().list_all().await.unwrap().is_empty());
        assert_eq!(presented_certificate(addr).await, certs.server_der);

        let (new_cert, new_key, der) = certs.ca.server_cert("meshplane test server 2");
        certs.replace("server.key", &new_key);
        certs.replace("server.pem", &new_cert);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // No poll: still the old one until SIGHUP.
        assert_eq!(presented_certificate(addr).await, certs.server_der);
        // SAFETY: signalling a child process this test owns.
        assert_eq!(
            unsafe { libc::kill(server.child.id() as i32, libc::SIGHUP) },
            0
        );
        wait_for_certificate(addr, &der).await;
        // The client connected before keeps working; the server lives on.
        assert!(client.networks().list_all().await.unwrap().is_empty());
    });
}
