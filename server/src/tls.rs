//! TLS on the gRPC port: the certificate and key come from PEM files and are
//! loaded again, for new connections only, when the files change (polled)
//! or when [`ServerTls::reload`] is called (the binary does on SIGHUP);
//! connections already open keep the session they have, streams included.
//! A new pair that does not load is logged and the old one stays.
//!
//! With a client CA, a client certificate is optional at the handshake but
//! verified against that CA when presented (an unverifiable one fails the
//! handshake); [`crate::api::auth`] then requires one on AgentService.
//!
//! The server runs its own acceptor over the listener instead of tonic's
//! static `ServerTlsConfig`: each connection's handshake uses the
//! configuration current when it arrives, runs in a task of its own
//! (bounded by [`HANDSHAKE_TIMEOUT`]), and a plaintext gRPC client has its
//! calls refused with FAILED_PRECONDITION and words saying the port needs
//! TLS.

use std::{
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime},
};

use futures::{Stream, StreamExt};
use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use sha2::{Digest, Sha256};
use tokio::{net::TcpStream, sync::watch, task::JoinSet};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tonic::transport::server::TcpIncoming;

/// How long a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the certificate files are checked for changes by default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// The files TLS is configured from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain (PEM), the server's own certificate first.
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates are verified
    /// against; `None` asks for no client certificate.
    pub client_ca: Option<PathBuf>,
}

/// Why a certificate, key or client CA could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading the {what} {path}: {source}")]
    Read {
        /// Which file (e.g. "TLS certificate").
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file held no PEM block of the kind expected, or a broken one.
    #[error("the {what} {path}: {detail}")]
    Pem {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The key is not the certificate's.
    #[error(
        "the private key in {key} does not match the certificate in {cert} \
         (the first certificate in the file must be the one the key was made for)"
    )]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the certificate, key or CA.
    #[error("{context}: {source}")]
    Rustls {
        /// What was being set up.
        context: String,
        /// Why it failed.
        source: rustls::Error,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// The certificates in a PEM file; at least one.
fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_owned(),
            detail: format!("not valid PEM ({e})"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            path: path.to_owned(),
            detail: "holds no certificate (expected a -----BEGIN CERTIFICATE----- block)".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    const WHAT: &str = "TLS private key";
    let pem = read(WHAT, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        what: WHAT,
        path: path.to_owned(),
        detail: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "holds no private key (expected a \
                 -----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY block)"
                .into(),
            e => format!("not valid PEM ({e})"),
        },
    })
}

/// The server configuration `files` describe, and the SHA-256 fingerprint
/// of its certificate.
fn load(files: &TlsFiles) -> Result<(Arc<ServerConfig>, String), TlsError> {
    let chain = read_certs("TLS certificate", &files.cert)?;
    let key = read_key(&files.key)?;
    let fingerprint = fingerprint(&chain[0]);
    let provider = provider();
    let rustls_err = |context: String| move |source| TlsError::Rustls { context, source };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(rustls_err("TLS protocol versions".into()))?;
    let builder = match &files.client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs("client CA", path)? {
                roots.add(cert).map_err(rustls_err(format!(
                    "the client CA {}: a certificate in it",
                    path.display()
                )))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                // Optional at the handshake, verified when presented; the
                // auth layer requires one where it must.
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Pem {
                    what: "client CA",
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        },
        source => TlsError::Rustls {
            context: format!(
                "the TLS certificate {} with the key {}",
                files.cert.display(),
                files.key.display()
            ),
            source,
        },
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(config), fingerprint))
}

/// The SHA-256 of a certificate's DER, in hex (as `openssl x509
/// -fingerprint -sha256` prints it, without the colons).
pub fn fingerprint(cert: &[u8]) -> String {
    Sha256::digest(cert)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a file looked like when it was last loaded: a change of any of
/// these (a rewrite, or a rename over it) means load it again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<(SystemTime, u64, u64)>);

impl Stamp {
    fn of(path: &Path) -> Self {
        use std::os::unix::fs::MetadataExt;
        Stamp(
            std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len(), m.ino()))),
        )
    }
}

fn stamps(files: &TlsFiles) -> Vec<Stamp> {
    let mut v = vec![Stamp::of(&files.cert), Stamp::of(&files.key)];
    if let Some(ca) = &files.client_ca {
        v.push(Stamp::of(ca));
    }
    v
}

/// The server's TLS: the current configuration, swapped whole when the
/// files change. Cheap to clone.
#[derive(Clone)]
pub struct ServerTls(Arc<Inner>);

struct Inner {
    files: TlsFiles,
    current: RwLock<(Arc<ServerConfig>, String)>,
    /// The files' stamps when a load was last tried.
    seen: Mutex<Vec<Stamp>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.0.files)
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

impl ServerTls {
    /// Loads the certificate, key and client CA; fails with what is wrong
    /// with which file.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let seen = stamps(&files);
        let current = load(&files)?;
        Ok(ServerTls(Arc::new(Inner {
            files,
            current: RwLock::new(current),
            seen: Mutex::new(seen),
        })))
    }

    /// The files.
    pub fn files(&self) -> &TlsFiles {
        &self.0.files
    }

    /// Whether client certificates are verified (a client CA is set).
    pub fn verifies_clients(&self) -> bool {
        self.0.files.client_ca.is_some()
    }

    /// The SHA-256 fingerprint of the certificate new connections get.
    pub fn fingerprint(&self) -> String {
        self.0.current.read().expect("tls lock").1.clone()
    }

    fn config(&self) -> Arc<ServerConfig> {
        self.0.current.read().expect("tls lock").0.clone()
    }

    /// Loads the files again; on success new connections get the new
    /// certificate (connections already open keep theirs). On failure
    /// the current configuration stays, and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let seen = stamps(&self.0.files);
        let result = load(&self.0.files);
        *self.0.seen.lock().expect("tls lock") = seen;
        let (config, fingerprint) = result?;
        let mut current = self.0.current.write().expect("tls lock");
        if current.1 != fingerprint {
            tracing::info!(
                cert = %self.0.files.cert.display(),
                sha256 = %fingerprint,
                previous = %current.1,
                "tls certificate reloaded; new connections get it"
            );
        } else {
            tracing::info!(cert = %self.0.files.cert.display(), sha256 = %fingerprint,
                "tls files reloaded; the certificate is the same");
        }
        *current = (config, fingerprint);
        Ok(())
    }

    /// [`reload`](Self::reload), logging a failure (the old certificate
    /// stays).
    pub fn reload_logged(&self) {
        if let Err(e) = self.reload() {
            tracing::warn!(error = %e, sha256 = %self.fingerprint(),
                "tls reload failed; new connections keep getting the current certificate");
        }
    }

    /// Whether a file changed since the last load was tried.
    fn changed(&self) -> bool {
        *self.0.seen.lock().expect("tls lock") != stamps(&self.0.files)
    }

    /// Checks the files every `every` and reloads when one changed, until
    /// `stop` turns true.
    pub(crate) async fn watch(self, every: Duration, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(every) => {}
            }
            if self.changed() {
                self.reload_logged();
            }
        }
    }
}

/// The connections of `tcp` after their TLS handshake, each with the
/// configuration current when it arrived. Handshakes run concurrently;
/// failed ones are logged (at debug: scanners and health checks that only
/// open the port are common) and dropped.
pub(crate) fn incoming(
    tcp: TcpIncoming,
    tls: ServerTls,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, io::Error>> + Send + 'static {
    let handshakes: JoinSet<Option<TlsStream<TcpStream>>> = JoinSet::new();
    futures::stream::unfold(
        (tcp, handshakes, tls),
        |(mut tcp, mut handshakes, tls)| async move {
            loop {
                tokio::select! {
                    conn = tcp.next() => match conn {
                        Some(Ok(stream)) => {
                            handshakes.spawn(handshake(stream, tls.config()));
                        }
                        Some(Err(e)) => {
                            // Out of file descriptors and the like: wait a
                            // moment instead of spinning or stopping.
                            tracing::warn!(error = %e, "accepting a connection failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        None => return None,
                    },
                    Some(done) = handshakes.join_next(), if !handshakes.is_empty() => {
                        if let Ok(Some(stream)) = done {
                            return Some((Ok(stream), (tcp, handshakes, tls)));
                        }
                    }
                }
            }
        },
    )
}

/// What a plaintext gRPC client is told, with FAILED_PRECONDITION.
pub const PLAINTEXT_REFUSED: &str = "this meshplane port serves TLS only: connect with https:// \
     (meshctl --server, the SDK) and trust the server's CA (--ca-file); grpcurl: -cacert FILE \
     instead of -plaintext";

async fn handshake(tcp: TcpStream, config: Arc<ServerConfig>) -> Option<TlsStream<TcpStream>> {
    let peer = tcp.peer_addr().ok();
    let work = async {
        // A TLS connection starts with a handshake record (0x16).
        let mut first = [0u8; 1];
        if tcp.peek(&mut first).await? == 1 && first[0] != 0x16 {
            tracing::info!(?peer, "refusing a plaintext connection on the TLS port");
            refuse_plaintext(tcp).await;
            return Ok(None);
        }
        TlsAcceptor::from(config).accept(tcp).await.map(Some)
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, work).await {
        Ok(Ok(Some(stream))) => Some(stream),
        Ok(Ok(None)) => None,
        Ok(Err(e)) => {
            tracing::debug!(?peer, error = %e, "tls handshake failed");
            None
        }
        // Also where a refused plaintext client's connection ends.
        Err(_) => {
            tracing::debug!(?peer, "tls handshake timed out");
            None
        }
    }
}

/// Tells a plaintext gRPC client why it is refused: every call it makes
/// (until [`HANDSHAKE_TIMEOUT`] ends the connection) fails with
/// FAILED_PRECONDITION and [`PLAINTEXT_REFUSED`]; nothing is served. Other
/// clients (HTTP/1, garbage) are just disconnected.
async fn refuse_plaintext(tcp: TcpStream) {
    let mut first = [0u8; 4];
    if !matches!(tcp.peek(&mut first).await, Ok(4)) || &first != b"PRI " {
        return;
    }
    let Ok(mut conn) = h2::server::handshake(tcp).await else {
        return;
    };
    while let Some(Ok((_, mut respond))) = conn.accept().await {
        let refusal = http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .header("grpc-status", "9")
            .header("grpc-message", PLAINTEXT_REFUSED)
            .body(())
            .expect("a valid response");
        let _ = respond.send_response(refusal, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_are_named() {
        let e = ServerTls::load(TlsFiles {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
            client_ca: None,
        })
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("reading the TLS certificate /nonexistent/cert.pem: "),
            "{e}"
        );
    }

    #[test]
    fn a_file_without_pem_blocks_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, "not a certificate\n").unwrap();
        let e = read_certs("TLS certificate", &cert).unwrap_err();
        assert!(e.to_string().contains("holds no certificate"), "{e}");
        let e = read_key(&cert).unwrap_err();
        assert!(e.to_string().contains("holds no private key"), "{e}");
    }
}
