//! The client: one connection, credentials, deadlines and retries, shared by
//! a typed handle per service.

use std::{fmt, future::Future, time::Duration};

use tokio::time::Instant;
use tonic::{
    Code, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

use crate::{
    error::{Error, Result},
    retry::RetryPolicy,
    services::{Dns, EnrollmentKeys, Events, ExtClients, Gateways, Networks, Nodes, Policies},
};

/// A secret string (a token or a private key): its `Debug` and `Display`
/// never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for writing it where it belongs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

/// TLS settings for an `https://` endpoint.
///
/// Needs the SDK's `tls` cargo feature (on by default: rustls with ring);
/// without it, [`ClientBuilder::connect`] fails with UNIMPLEMENTED naming the
/// feature. Without a CA certificate, the system's CA certificates are
/// trusted (`/etc/ssl/certs` and the like); with one, only it is.
///
/// ```no_run
/// # fn demo() -> meshplane_sdk::Result<()> {
/// use meshplane_sdk::{Client, TlsConfig};
///
/// let client = Client::builder("https://meshplane.example.net:50051")
///     .tls(
///         TlsConfig::new()
///             .ca_certificate_file("/etc/meshplane/ca.pem")?
///             // Only where the server verifies clients (serve --client-ca):
///             .identity_files("/etc/meshplane/agent.pem", "/etc/meshplane/agent.key")?,
///     )
///     .connect_lazy()?;
/// # let _ = client; Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct TlsConfig {
    ca_pem: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
}

impl TlsConfig {
    /// Trust the system's CA certificates.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trust the CA certificates in `pem` instead of the system's.
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Trust the CA certificates in the PEM file at `path` instead of the
    /// system's; fails naming the file when it cannot be read.
    pub fn ca_certificate_file(self, path: impl AsRef<std::path::Path>) -> Result<Self> {
        let pem = read_file("CA file", path.as_ref())?;
        check_certificates(&format!("CA file {}", path.as_ref().display()), &pem)?;
        Ok(self.ca_certificate(pem))
    }

    /// Present this client certificate and key (both PEM).
    pub fn identity(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Present the client certificate and key in these PEM files; fails
    /// naming the file that cannot be read.
    pub fn identity_files(
        self,
        cert: impl AsRef<std::path::Path>,
        key: impl AsRef<std::path::Path>,
    ) -> Result<Self> {
        let (cert_path, key_path) = (cert.as_ref(), key.as_ref());
        let cert = read_file("client certificate", cert_path)?;
        let key = read_file("client key", key_path)?;
        check_certificates(
            &format!("client certificate {}", cert_path.display()),
            &cert,
        )?;
        check_key(&format!("client key {}", key_path.display()), &key)?;
        Ok(self.identity(cert, key))
    }

    /// Expect this name in the server's certificate (default: the
    /// endpoint's host).
    pub fn domain_name(mut self, name: impl Into<String>) -> Self {
        self.domain = Some(name.into());
        self
    }
}

/// Fails unless `pem` holds at least one certificate.
#[cfg(feature = "tls")]
fn check_certificates(what: &str, pem: &[u8]) -> Result<()> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    match CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>() {
        Ok(c) if !c.is_empty() => Ok(()),
        Ok(_) => Err(Error::config(format!(
            "the {what} holds no certificate (expected a -----BEGIN CERTIFICATE----- block)"
        ))),
        Err(e) => Err(Error::config(format!("the {what} is not valid PEM: {e}"))),
    }
}

/// Fails unless `pem` holds a private key.
#[cfg(feature = "tls")]
fn check_key(what: &str, pem: &[u8]) -> Result<()> {
    use rustls::pki_types::{PrivateKeyDer, pem::PemObject};
    PrivateKeyDer::from_pem_slice(pem).map(drop).map_err(|_| {
        Error::config(format!(
            "the {what} holds no private key (expected a -----BEGIN PRIVATE KEY-----, RSA \
             PRIVATE KEY or EC PRIVATE KEY block)"
        ))
    })
}

#[cfg(not(feature = "tls"))]
fn check_certificates(_: &str, _: &[u8]) -> Result<()> {
    Ok(())
}

#[cfg(not(feature = "tls"))]
fn check_key(_: &str, _: &[u8]) -> Result<()> {
    Ok(())
}

fn read_file(what: &str, path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::config(format!("reading the {what} {}: {e}", path.display())))
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_certificate", &self.ca_pem.is_some())
            .field("identity", &self.identity.as_ref().map(|_| "<redacted>"))
            .field("domain_name", &self.domain)
            .finish()
    }
}

/// Builds a [`Client`]; see [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    endpoint: String,
    token: Option<Secret>,
    tls: Option<TlsConfig>,
    timeout: Option<Duration>,
    connect_timeout: Duration,
    retry: RetryPolicy,
}

impl ClientBuilder {
    /// The admin token, sent as `authorization: Bearer <token>`.
    pub fn token(mut self, token: impl Into<Secret>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// TLS settings (needs the `tls` feature; see [`TlsConfig`]).
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The deadline of each call, retries included (default 30 s); also sent
    /// to the server as `grpc-timeout`. Handles can override it with
    /// `with_timeout`. Streams are bounded only while they open.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// No deadline on calls.
    pub fn no_timeout(mut self) -> Self {
        self.timeout = None;
        self
    }

    /// How long one TCP (and TLS) connection attempt may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How idempotent calls are retried (default: [`RetryPolicy::default`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    fn endpoint(&self) -> Result<Endpoint> {
        let ep = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| Error::config(format!("endpoint {:?}: {e}", self.endpoint)))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            // Find a dead server on an idle stream within about 30 s.
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let https = ep.uri().scheme_str() == Some("https");
        match (https, &self.tls) {
            (false, None) => Ok(ep),
            (false, Some(_)) => Err(Error::config(format!(
                "TLS settings given but the endpoint {:?} is not https://",
                self.endpoint
            ))),
            (true, tls) => tls_endpoint(ep, tls.clone().unwrap_or_default()),
        }
    }

    fn auth(&self) -> Result<Auth> {
        Auth::new(self.token.as_ref())
    }

    fn build(self, channel: Channel) -> Result<Client> {
        Ok(Client {
            channel: channel.clone(),
            inner: InterceptedService::new(channel, self.auth()?),
            opts: CallOptions {
                timeout: self.timeout,
                retry: self.retry,
            },
        })
    }

    /// Connects now, retrying on failure as the retry policy says (within
    /// the deadline).
    pub async fn connect(self) -> Result<Client> {
        let ep = self.endpoint()?;
        let opts = CallOptions {
            timeout: self.timeout,
            retry: self.retry,
        };
        let channel = opts
            .run(true, |_| {
                let ep = ep.clone();
                async move {
                    ep.connect().await.map(tonic::Response::new).map_err(|e| {
                        // The source lets a TLS failure be told apart (and
                        // not retried).
                        let mut s = Status::unavailable(crate::error::chain(&e));
                        s.set_source(std::sync::Arc::new(e));
                        s
                    })
                }
            })
            .await
            .map_err(|e| match e.kind() {
                crate::ErrorKind::Tls => e,
                // Every attempt failed to connect.
                crate::ErrorKind::Status => {
                    Error::client(crate::ErrorKind::Transport, Code::Unavailable, e.message())
                }
                _ => e,
            })?;
        self.build(channel)
    }

    /// Returns at once; connects on the first call (and reconnects after
    /// failures). A call made while the server is away fails with
    /// UNAVAILABLE and is retried if it is idempotent.
    pub fn connect_lazy(self) -> Result<Client> {
        let channel = self.endpoint()?.connect_lazy();
        self.build(channel)
    }
}

#[cfg(feature = "tls")]
fn tls_endpoint(ep: Endpoint, tls: TlsConfig) -> Result<Endpoint> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut cfg = ClientTlsConfig::new();
    cfg = match tls.ca_pem {
        Some(pem) => {
            check_certificates("CA PEM", &pem)?;
            cfg.ca_certificate(Certificate::from_pem(pem))
        }
        None => cfg.with_native_roots(),
    };
    if let Some((cert, key)) = tls.identity {
        check_certificates("client certificate PEM", &cert)?;
        check_key("client key PEM", &key)?;
        cfg = cfg.identity(Identity::from_pem(cert, key));
    }
    if let Some(d) = tls.domain {
        cfg = cfg.domain_name(d);
    }
    ep.tls_config(cfg).map_err(|e| {
        let detail = crate::error::chain(&e);
        if detail.contains("no native certs found") {
            Error::config(
                "no CA certificates found on this system to verify the server with: pass the \
                 CA that signed the server's certificate (--ca-file, MESHCTL_CA_FILE; SDK: \
                 TlsConfig::ca_certificate_file) or install the system's CA certificates \
                 (Debian: ca-certificates)",
            )
        } else if detail.contains("KeyMismatch") {
            Error::config(
                "the client key does not match the client certificate (the first certificate \
                 in the file must be the one the key was made for)",
            )
        } else {
            Error::config(format!("TLS settings: {detail}"))
        }
    })
}

#[cfg(not(feature = "tls"))]
fn tls_endpoint(_: Endpoint, _: TlsConfig) -> Result<Endpoint> {
    Err(Error::client(
        crate::ErrorKind::Config,
        Code::Unimplemented,
        "TLS needs the `tls` feature of meshplane-sdk (this build has no TLS); \
         use an http:// endpoint or rebuild with --features tls",
    ))
}

/// Adds `authorization: Bearer <token>` to every call (marked sensitive so
/// it is never logged).
#[derive(Clone)]
pub(crate) struct Auth(Option<MetadataValue<Ascii>>);

impl Auth {
    pub(crate) fn new(token: Option<&Secret>) -> Result<Self> {
        token
            .map(|t| {
                let mut v: MetadataValue<Ascii> = format!("Bearer {}", t.expose().trim())
                    .parse()
                    .map_err(|_| {
                    Error::config("the token has characters not allowed in metadata")
                })?;
                v.set_sensitive(true);
                Ok(v)
            })
            .transpose()
            .map(Auth)
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The channel every handle calls through.
pub(crate) type AuthChannel = InterceptedService<Channel, Auth>;

/// Deadline and retry policy of calls.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallOptions {
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: RetryPolicy,
}

impl CallOptions {
    /// Runs `attempt` (given the time left before the deadline) until it
    /// succeeds, fails for good, or the deadline passes. Only `idempotent`
    /// calls are retried, and only on UNAVAILABLE.
    pub(crate) async fn run<T, F, Fut>(&self, idempotent: bool, mut attempt: F) -> Result<T>
    where
        F: FnMut(Option<Duration>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let mut n = 0u32;
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let result = match deadline {
                Some(d) => match tokio::time::timeout_at(d, attempt(left)).await {
                    Ok(r) => r,
                    Err(_) => return Err(Error::deadline(self.timeout.unwrap_or_default())),
                },
                None => attempt(left).await,
            };
            let err = match result {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) => Error::from(s),
            };
            n += 1;
            if !idempotent
                || err.code() != Code::Unavailable
                || err.kind() == crate::ErrorKind::Tls
                || n >= self.retry.max_attempts
            {
                return Err(err);
            }
            let wait = self
                .retry
                .backoff
                .delay(n - 1)
                .max(err.retry_delay().unwrap_or_default());
            if deadline.is_some_and(|d| Instant::now() + wait >= d) {
                return Err(err);
            }
            tracing::debug!(attempt = n, wait_ms = wait.as_millis() as u64, error = %err, "retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// Calls a unary RPC: `rpc(client, request)` with `msg`, carrying the
    /// time left as `grpc-timeout`, retried when `idempotent`.
    pub(crate) async fn unary<C, M, T, F, Fut>(
        &self,
        client: &C,
        idempotent: bool,
        msg: M,
        rpc: F,
    ) -> Result<T>
    where
        C: Clone,
        M: Clone,
        F: Fn(C, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.run(idempotent, |left| {
            let mut r = tonic::Request::new(msg.clone());
            if let Some(t) = left {
                r.set_timeout(t);
            }
            rpc(client.clone(), r)
        })
        .await
    }

    /// Opens a server stream: retried on UNAVAILABLE, bounded by the
    /// deadline only while it opens (no `grpc-timeout`, which would end the
    /// stream).
    pub(crate) async fn open_stream<C, M, T, F, Fut>(&self, client: &C, msg: M, rpc: F) -> Result<T>
    where
        C: Clone,
        M: Clone,
        F: Fn(C, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.run(true, |_| {
            rpc(client.clone(), tonic::Request::new(msg.clone()))
        })
        .await
    }
}

/// A connection to a meshplane server with a typed handle per service.
///
/// ```no_run
/// # async fn demo() -> meshplane_sdk::Result<()> {
/// use std::time::Duration;
/// use meshplane_sdk::Client;
///
/// let client = Client::builder("http://127.0.0.1:50051")
///     .token(std::fs::read_to_string("meshplane-data/admin.token").unwrap().trim())
///     .timeout(Duration::from_secs(10))
///     .connect()
///     .await?;
/// for n in client.networks().list_all().await? {
///     println!("{} {}", n.name, n.address_range);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    inner: AuthChannel,
    opts: CallOptions,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("timeout", &self.opts.timeout)
            .field("retry", &self.opts.retry)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Starts building a client for `endpoint` (e.g. `http://127.0.0.1:50051`).
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            endpoint: endpoint.into(),
            token: None,
            tls: None,
            timeout: Some(Duration::from_secs(30)),
            connect_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
        }
    }

    /// NetworkService.
    pub fn networks(&self) -> Networks {
        Networks::new(self.inner.clone(), self.opts)
    }

    /// NodeService.
    pub fn nodes(&self) -> Nodes {
        Nodes::new(self.inner.clone(), self.opts)
    }

    /// GatewayService (egress, ingress, ExplainRoute).
    pub fn gateways(&self) -> Gateways {
        Gateways::new(self.inner.clone(), self.opts)
    }

    /// ExtClientService.
    pub fn ext_clients(&self) -> ExtClients {
        ExtClients::new(self.inner.clone(), self.opts)
    }

    /// DnsService.
    pub fn dns(&self) -> Dns {
        Dns::new(self.inner.clone(), self.opts)
    }

    /// EnrollmentKeyService.
    pub fn enrollment_keys(&self) -> EnrollmentKeys {
        EnrollmentKeys::new(self.inner.clone(), self.opts)
    }

    /// EventService.
    pub fn events(&self) -> Events {
        Events::new(self.inner.clone(), self.opts)
    }

    /// PolicyService.
    pub fn policies(&self) -> Policies {
        Policies::new(self.inner.clone(), self.opts)
    }

    /// An agent client on the same connection, sending no admin token (see
    /// [`AgentClient`](crate::agent::AgentClient)).
    pub fn agent(&self) -> crate::agent::AgentClient {
        crate::agent::AgentClient::new(self.channel.clone(), self.opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Backoff;

    #[test]
    fn secrets_are_hidden() {
        let s = Secret::new("mpa_topsecret");
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        let b = Client::builder("http://x").token("mpa_topsecret");
        assert!(!format!("{b:?}").contains("topsecret"));
    }

    #[tokio::test]
    async fn writes_are_not_retried_and_reads_are() {
        let opts = CallOptions {
            timeout: Some(Duration::from_secs(5)),
            retry: RetryPolicy {
                max_attempts: 3,
                backoff: Backoff {
                    initial: Duration::from_millis(1),
                    ..Backoff::calls()
                },
            },
        };
        for (idempotent, want) in [(false, 1), (true, 3)] {
            let mut calls = 0;
            let r: Result<()> = opts
                .run(idempotent, |_| {
                    calls += 1;
                    async { Err(Status::unavailable("down")) }
                })
                .await;
            assert_eq!(r.unwrap_err().code(), Code::Unavailable);
            assert_eq!(calls, want, "idempotent={idempotent}");
        }
        // Other codes are never retried.
        let mut calls = 0;
        let r: Result<()> = opts
            .run(true, |_| {
                calls += 1;
                async { Err(Status::not_found("x")) }
            })
            .await;
        assert_eq!(r.unwrap_err().code(), Code::NotFound);
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn the_deadline_bounds_all_attempts() {
        let opts = CallOptions {
            timeout: Some(Duration::from_millis(100)),
            retry: RetryPolicy::default(),
        };
        let r: Result<()> = opts
            .run(true, |_| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(tonic::Response::new(()))
            })
            .await;
        let e = r.unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded);
        assert_eq!(e.kind(), crate::ErrorKind::Deadline);
    }

    #[test]
    fn tls_without_the_feature_or_https_is_refused_clearly() {
        let e = Client::builder("http://127.0.0.1:1")
            .tls(TlsConfig::new())
            .connect_lazy()
            .unwrap_err();
        assert!(e.message().contains("not https://"), "{e}");
        #[cfg(not(feature = "tls"))]
        {
            let e = Client::builder("https://127.0.0.1:1")
                .connect_lazy()
                .unwrap_err();
            assert_eq!(e.code(), Code::Unimplemented);
            assert!(e.message().contains("`tls` feature"), "{e}");
        }
    }
}
