//! What an agent needs: a WireGuard key pair, registration with an enrollment
//! key, and its config as a stream of whole [`NodeConfig`](crate::proto::NodeConfig)s that survives
//! server restarts.
//!
//! ```no_run
//! # async fn demo() -> meshplane_sdk::Result<()> {
//! use futures::StreamExt;
//! use meshplane_sdk::{Client, agent::KeyPair, proto::RegisterRequest};
//!
//! let client = Client::builder("http://127.0.0.1:50051").connect().await?;
//! let keys = KeyPair::generate();
//! let reg = client
//!     .agent()
//!     .register(RegisterRequest {
//!         enrollment_key: "mpk_...".into(),
//!         network: "corp".into(),
//!         name: "office".into(),
//!         public_key: keys.public_key().into(),
//!         ..Default::default()
//!     })
//!     .await?;
//! let agent = client.agent().with_node_token(reg.node_token.clone());
//! let mut configs = agent.watch_config(None);
//! while let Some(cfg) = configs.next().await {
//!     let cfg = cfg?; // only permanent errors arrive here
//!     println!("revision {}: {} peers", cfg.revision, cfg.peers.len());
//!     agent.report_status(cfg.revision, None).await?;
//! }
//! # Ok(()) }
//! ```

use std::{
    fmt,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use base64::Engine;
use futures::Stream;
use meshplane_proto::delta::{ApplyError, apply_update};
use tonic::{Code, Streaming, service::interceptor::InterceptedService, transport::Channel};

use crate::{
    Backoff, RetryPolicy,
    client::{Auth, AuthChannel, CallOptions, Secret},
    error::{Error, Result},
    proto::{self as pb, agent_service_client::AgentServiceClient, config_update::Update},
};

/// A WireGuard key pair (Curve25519), generated locally.
#[derive(Clone)]
pub struct KeyPair {
    private: Secret,
    public: String,
}

impl KeyPair {
    /// A fresh key pair from the OS's random generator; the private key is
    /// clamped as `wg genkey` does.
    pub fn generate() -> Self {
        let mut bytes: [u8; 32] = rand::random();
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        Self::from_bytes(bytes)
    }

    /// The key pair of a base64 private key (as `wg genkey` prints it).
    pub fn from_private_key(private: &str) -> Result<Self> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(private.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| Error::config("a private key is the base64 of 32 bytes"))?;
        Ok(Self::from_bytes(bytes))
    }

    fn from_bytes(bytes: [u8; 32]) -> Self {
        let secret = x25519_dalek::StaticSecret::from(bytes);
        let public = x25519_dalek::PublicKey::from(&secret);
        let b64 = base64::engine::general_purpose::STANDARD;
        KeyPair {
            private: Secret::new(b64.encode(bytes)),
            public: b64.encode(public.as_bytes()),
        }
    }

    /// The private key, base64 (as in a wg-quick `PrivateKey =` line).
    pub fn private_key(&self) -> &Secret {
        &self.private
    }

    /// The public key, base64.
    pub fn public_key(&self) -> &str {
        &self.public
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .field("private", &self.private)
            .finish()
    }
}

/// What [`AgentClient::register`] returns.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The new node, with its overlay addresses.
    pub node: pb::Node,
    /// The node's token: the agent's credential from now on.
    pub node_token: Secret,
}

/// AgentService: registration, the config stream and status reports.
///
/// Made by [`Client::agent`](crate::Client::agent); it sends no admin token.
/// `register` needs no token (the enrollment key is in the request); the
/// other calls need the node token ([`AgentClient::with_node_token`]).
#[derive(Clone)]
pub struct AgentClient {
    channel: Channel,
    token: Option<Secret>,
    opts: CallOptions,
    backoff: Backoff,
}

impl fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentClient")
            .field("token", &self.token)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl AgentClient {
    pub(crate) fn new(channel: Channel, opts: CallOptions) -> Self {
        AgentClient {
            channel,
            token: None,
            opts,
            backoff: Backoff::agent(),
        }
    }

    /// The same client, authenticating as the node with `token`.
    pub fn with_node_token(mut self, token: impl Into<Secret>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The same client, reconnecting its config stream with `backoff`
    /// (default [`Backoff::agent`]).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    fn stub(&self) -> Result<AgentServiceClient<AuthChannel>> {
        Ok(AgentServiceClient::new(InterceptedService::new(
            self.channel.clone(),
            Auth::new(self.token.as_ref())?,
        )))
    }

    /// Register: enrolls this host as a node with the enrollment key in
    /// `req`. Not retried (a retry could use the key twice).
    pub async fn register(&self, req: pb::RegisterRequest) -> Result<Registration> {
        let stub = AgentServiceClient::new(InterceptedService::new(
            self.channel.clone(),
            Auth::new(None)?,
        ));
        let r = self
            .opts
            .unary(
                &stub,
                false,
                req,
                |mut c, r| async move { c.register(r).await },
            )
            .await?;
        Ok(Registration {
            node: r.node.ok_or_else(|| {
                Error::client(
                    crate::ErrorKind::Status,
                    Code::Internal,
                    "no node in the answer",
                )
            })?,
            node_token: Secret::new(r.node_token),
        })
    }

    /// ReportStatus: the revision applied and, when given, the endpoint the
    /// agent observes for itself. Retried on UNAVAILABLE (reporting twice is
    /// harmless).
    pub async fn report_status(&self, applied_revision: u64, endpoint: Option<&str>) -> Result<()> {
        self.report(pb::ReportStatusRequest {
            applied_revision,
            endpoint: endpoint.unwrap_or_default().into(),
            ..Default::default()
        })
        .await
    }

    /// ReportStatus with every field: the revision applied, the WireGuard
    /// interface the agent manages, its host's interfaces and routes, and
    /// why an apply failed. Retried on UNAVAILABLE.
    pub async fn report(&self, msg: pb::ReportStatusRequest) -> Result<()> {
        self.opts
            .unary(&self.stub()?, true, msg, |mut c, r| async move {
                c.report_status(r).await
            })
            .await
    }

    /// WatchConfig as a stream of whole configs.
    ///
    /// `held` is a config the agent kept from before (its revision is
    /// resumed from), or `None` to start from a snapshot. The stream:
    /// - applies snapshots and deltas locally and yields the config only
    ///   once every part of a revision has arrived (`partial` unset), and
    ///   only when it changed;
    /// - when the connection breaks or the server goes away, yields nothing,
    ///   keeps the last good config ([`ConfigStream::last_config`]) and
    ///   reconnects with jittered exponential backoff (at least what the
    ///   server asks for in `RetryInfo`), resuming from the last good
    ///   revision, so the server answers with a delta;
    /// - when a delta does not fit the config held, reconnects at once from
    ///   revision 0 for a fresh snapshot;
    /// - ends after yielding an error only when retrying cannot help:
    ///   UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND (node deleted),
    ///   INVALID_ARGUMENT, FAILED_PRECONDITION, UNIMPLEMENTED.
    pub fn watch_config(&self, held: Option<pb::NodeConfig>) -> ConfigStream {
        let shared = Arc::new(Mutex::new(Shared {
            last: held.clone(),
            stats: WatchStats::default(),
        }));
        let watcher = Watcher {
            agent: self.clone(),
            stream: None,
            state: Materializer::new(held),
            failures: 0,
            hint: None,
            shared: shared.clone(),
            done: false,
        };
        let inner = futures::stream::unfold(watcher, |mut w| async move {
            let item = w.next().await?;
            Some((item, w))
        });
        ConfigStream {
            inner: Box::pin(inner),
            shared,
        }
    }
}

/// Counters of a [`ConfigStream`], for monitoring and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Streams opened.
    pub connects: u64,
    /// Streams opened after the first whose first update was a delta: the
    /// server continued from the revision held.
    pub resumed: u64,
    /// Snapshot messages received.
    pub snapshots: u64,
    /// Delta messages received.
    pub deltas: u64,
    /// Configs yielded.
    pub configs: u64,
    /// Times a delta did not fit and a fresh snapshot was asked for.
    pub resyncs: u64,
    /// A stream is open now.
    pub connected: bool,
}

struct Shared {
    last: Option<pb::NodeConfig>,
    stats: WatchStats,
}

/// The stream [`AgentClient::watch_config`] returns: yields whole configs,
/// and ends only after a permanent error.
pub struct ConfigStream {
    inner: Pin<Box<dyn Stream<Item = Result<pb::NodeConfig>> + Send>>,
    shared: Arc<Mutex<Shared>>,
}

impl ConfigStream {
    /// The last complete config (yielded, or handed in at the start), kept
    /// while the server is away.
    pub fn last_config(&self) -> Option<pb::NodeConfig> {
        self.shared.lock().expect("lock").last.clone()
    }

    /// Counters so far.
    pub fn stats(&self) -> WatchStats {
        self.shared.lock().expect("lock").stats
    }
}

impl fmt::Debug for ConfigStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigStream")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Stream for ConfigStream {
    type Item = Result<pb::NodeConfig>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// What one update did to the config held.
#[derive(Debug, PartialEq)]
enum Step {
    /// A part of a revision; more follow.
    Partial,
    /// The revision is complete and differs from the last good config,
    /// which it now is.
    Changed,
    /// The revision is complete and equal to the last good config.
    Unchanged,
}

/// Applies updates as agents must: snapshots replace, deltas continue from
/// the revision held, and a revision counts only once its last part came.
#[derive(Debug, Default)]
struct Materializer {
    /// The config being built (may be half-way through a partial revision).
    held: Option<pb::NodeConfig>,
    /// The last complete config.
    good: Option<pb::NodeConfig>,
    /// Ask for a snapshot on the next connection.
    fresh: bool,
}

impl Materializer {
    fn new(good: Option<pb::NodeConfig>) -> Self {
        Materializer {
            held: good.clone(),
            good,
            fresh: false,
        }
    }

    fn apply(&mut self, u: &pb::ConfigUpdate) -> Result<Step, ApplyError> {
        if let Err(e) = apply_update(&mut self.held, u) {
            self.held = None;
            self.fresh = true;
            return Err(e);
        }
        if u.partial {
            return Ok(Step::Partial);
        }
        let cfg = self.held.clone().ok_or(ApplyError::NoBase)?;
        if self.good.as_ref() == Some(&cfg) {
            return Ok(Step::Unchanged);
        }
        self.good = Some(cfg);
        Ok(Step::Changed)
    }

    /// Starts a new connection: drops the parts of an unfinished revision
    /// and says which revision to resume from.
    fn reconnect(&mut self) -> u64 {
        if self.fresh {
            self.held = None;
            self.fresh = false;
            return 0;
        }
        self.held = self.good.clone();
        self.good.as_ref().map_or(0, |c| c.revision)
    }
}

/// Codes after which reconnecting cannot help.
fn permanent(code: Code) -> bool {
    matches!(
        code,
        Code::Unauthenticated
            | Code::PermissionDenied
            | Code::NotFound
            | Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::Unimplemented
    )
}

struct Watcher {
    agent: AgentClient,
    stream: Option<(Streaming<pb::ConfigUpdate>, bool)>,
    state: Materializer,
    /// Failures in a row since the last healthy stream.
    failures: u32,
    /// The delay the server asked for last.
    hint: Option<Duration>,
    shared: Arc<Mutex<Shared>>,
    done: bool,
}

impl Watcher {
    fn stats(&self, f: impl FnOnce(&mut WatchStats)) {
        f(&mut self.shared.lock().expect("lock").stats);
    }

    /// Counts a failure and drops the stream; the next loop waits and
    /// reconnects.
    fn broke(&mut self, why: &dyn fmt::Display) {
        self.stream = None;
        self.failures = self.failures.saturating_add(1);
        self.stats(|s| s.connected = false);
        tracing::info!(error = %why, failures = self.failures, "config stream lost; reconnecting");
    }

    async fn open(&mut self) -> Result<Streaming<pb::ConfigUpdate>> {
        let last_revision = self.state.reconnect();
        let stub = self.agent.stub()?;
        // One attempt, bounded by the call deadline (30 s when there is
        // none): the agent's own backoff schedules the next.
        let opts = CallOptions {
            timeout: Some(self.agent.opts.timeout.unwrap_or(Duration::from_secs(30))),
            retry: RetryPolicy::none(),
        };
        opts.open_stream(
            &stub,
            pb::WatchConfigRequest { last_revision },
            |mut c, r| async move { c.watch_config(r).await },
        )
        .await
    }

    async fn next(&mut self) -> Option<Result<pb::NodeConfig>> {
        if self.done {
            return None;
        }
        loop {
            let Some((stream, first)) = self.stream.as_mut() else {
                if self.failures > 0 {
                    let wait = self
                        .agent
                        .backoff
                        .delay(self.failures - 1)
                        .max(self.hint.take().unwrap_or_default());
                    tracing::debug!(
                        wait_ms = wait.as_millis() as u64,
                        "waiting before reconnecting"
                    );
                    tokio::time::sleep(wait).await;
                }
                match self.open().await {
                    Ok(s) => {
                        self.stats(|st| {
                            st.connects += 1;
                            st.connected = true;
                        });
                        self.stream = Some((s, true));
                    }
                    Err(e) if permanent(e.code()) => return Some(Err(self.end(e))),
                    Err(e) => {
                        self.hint = e.retry_delay();
                        self.broke(&e);
                    }
                }
                continue;
            };
            let msg = match stream.message().await {
                Ok(Some(u)) => u,
                Ok(None) => {
                    self.broke(&"the server ended the stream");
                    continue;
                }
                Err(s) => {
                    let e = Error::from(s);
                    if permanent(e.code()) {
                        return Some(Err(self.end(e)));
                    }
                    self.hint = e.retry_delay();
                    self.broke(&e);
                    continue;
                }
            };
            let was_first = std::mem::replace(first, false);
            let snapshot = matches!(msg.update, Some(Update::Snapshot(_)));
            self.stats(|s| {
                if snapshot {
                    s.snapshots += 1;
                } else {
                    s.deltas += 1;
                }
                if was_first && !snapshot && s.connects > 1 {
                    s.resumed += 1;
                }
            });
            // The stream works: the next failure starts the backoff anew.
            self.failures = 0;
            match self.state.apply(&msg) {
                Ok(Step::Partial | Step::Unchanged) => {}
                Ok(Step::Changed) => {
                    let cfg = self.state.good.clone().expect("a changed config is held");
                    let mut sh = self.shared.lock().expect("lock");
                    sh.last = Some(cfg.clone());
                    sh.stats.configs += 1;
                    return Some(Ok(cfg));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "config update does not apply; asking for a snapshot");
                    self.stats(|s| s.resyncs += 1);
                    self.stream = None;
                    self.stats(|s| s.connected = false);
                }
            }
        }
    }

    fn end(&mut self, e: Error) -> Error {
        tracing::warn!(error = %e, "config stream ended for good");
        self.done = true;
        self.stream = None;
        self.stats(|s| s.connected = false);
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::{ConfigDelta, ConfigUpdate, NodeConfig, Peer};

    fn peer(k: &str) -> Peer {
        Peer {
            public_key: k.into(),
            ..Default::default()
        }
    }

    fn snapshot(rev: u64, peers: &[&str], partial: bool) -> ConfigUpdate {
        ConfigUpdate {
            revision: rev,
            update: Some(Update::Snapshot(NodeConfig {
                peers: peers.iter().map(|k| peer(k)).collect(),
                ..Default::default()
            })),
            partial,
        }
    }

    fn delta(from: u64, rev: u64, peers: &[&str], partial: bool) -> ConfigUpdate {
        ConfigUpdate {
            revision: rev,
            update: Some(Update::Delta(ConfigDelta {
                from_revision: from,
                upsert_peers: peers.iter().map(|k| peer(k)).collect(),
                ..Default::default()
            })),
            partial,
        }
    }

    fn keys(c: &NodeConfig) -> Vec<&str> {
        c.peers.iter().map(|p| p.public_key.as_str()).collect()
    }

    #[test]
    fn a_revision_in_parts_is_yielded_once_complete() {
        let mut m = Materializer::new(None);
        assert_eq!(m.reconnect(), 0);
        assert_eq!(m.apply(&snapshot(3, &["a"], true)), Ok(Step::Partial));
        assert_eq!(m.apply(&delta(3, 3, &["b"], true)), Ok(Step::Partial));
        assert_eq!(
            m.apply(&delta(3, 3, &["c"], false)),
            Ok(Step::Changed),
            "complete"
        );
        let c = m.good.clone().unwrap();
        assert_eq!((c.revision, keys(&c)), (3, vec!["a", "b", "c"]));
        // A plain delta on top; then an empty delta changes nothing.
        assert_eq!(
            m.apply(&delta(3, 4, &["d"], false)),
            Ok(Step::Changed),
            "delta"
        );
        let c = m.good.clone().unwrap();
        assert_eq!((c.revision, keys(&c).len()), (4, 4));
        assert_eq!(m.reconnect(), 4);
        assert_eq!(m.apply(&delta(4, 4, &[], false)), Ok(Step::Unchanged));
    }

    #[test]
    fn a_broken_partial_revision_is_dropped_on_reconnect() {
        let mut m = Materializer::new(None);
        m.apply(&snapshot(2, &["a"], false)).unwrap();
        assert_eq!(m.apply(&delta(2, 5, &["b"], true)), Ok(Step::Partial));
        // The stream breaks here: resume from the last complete revision,
        // without the half-applied part.
        assert_eq!(m.reconnect(), 2);
        assert_eq!(keys(m.held.as_ref().unwrap()), vec!["a"]);
        assert_eq!(
            m.apply(&delta(2, 5, &["b", "c"], false)),
            Ok(Step::Changed),
            "resumed"
        );
        let c = m.good.clone().unwrap();
        assert_eq!(keys(&c), vec!["a", "b", "c"]);
    }

    #[test]
    fn a_delta_that_does_not_fit_asks_for_a_snapshot_and_keeps_the_good_config() {
        let mut m = Materializer::new(None);
        m.apply(&snapshot(2, &["a"], false)).unwrap();
        assert_eq!(
            m.apply(&delta(7, 8, &["x"], false)),
            Err(ApplyError::RevisionMismatch { held: 2, from: 7 })
        );
        assert_eq!(m.good.as_ref().unwrap().revision, 2);
        assert_eq!(m.reconnect(), 0, "fresh snapshot");
        assert_eq!(
            m.apply(&snapshot(9, &["z"], false)),
            Ok(Step::Changed),
            "snapshot"
        );
        let c = m.good.clone().unwrap();
        assert_eq!((c.revision, keys(&c)), (9, vec!["z"]));
    }

    #[test]
    fn generated_keys_are_clamped_and_round_trip() {
        let k = KeyPair::generate();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(k.private_key().expose())
            .unwrap();
        assert_eq!(raw[0] & 7, 0);
        assert_eq!(raw[31] & 0xc0, 0x40);
        let again = KeyPair::from_private_key(k.private_key().expose()).unwrap();
        assert_eq!(again.public_key(), k.public_key());
        assert_ne!(KeyPair::generate().public_key(), k.public_key());
        assert!(!format!("{k:?}").contains(k.private_key().expose()));
        // RFC 7748 test vector (Alice).
        let alice =
            KeyPair::from_private_key("dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=").unwrap();
        assert_eq!(
            alice.public_key(),
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
        );
    }

    #[test]
    fn only_hopeless_codes_end_the_stream() {
        for c in [
            Code::Unavailable,
            Code::ResourceExhausted,
            Code::Unknown,
            Code::Internal,
            Code::Cancelled,
            Code::DeadlineExceeded,
        ] {
            assert!(!permanent(c), "{c:?}");
        }
        for c in [
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::NotFound,
        ] {
            assert!(permanent(c), "{c:?}");
        }
    }
}
