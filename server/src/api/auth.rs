//! Authentication in one tower layer: every request's path decides which kind
//! of token it needs, and handlers never look at credentials themselves.
//!
//! The layer also throttles guessing: an address whose calls failed
//! authentication (`UNAUTHENTICATED`: a bad, unknown or revoked token, or
//! AgentService.Register's bad enrollment key) `limit` times within a window
//! is refused for a window: every call of meshplane's API from it, good
//! credentials or not, gets `RESOURCE_EXHAUSTED` with a `RetryInfo` saying
//! when it may come back. Throttling by address alone, whatever the call
//! carries, is the simple and safe choice: a guesser learns nothing while
//! throttled. Health and reflection (no credentials) are never throttled.
//! Clients behind one NAT share an address, and so a throttle; IPv6
//! addresses are counted by their /64.
//! With TLS and a client CA (`serve --client-ca`), AgentService calls
//! (`Register` included) also need a client certificate; the handshake has
//! verified it against the CA already, so here it only has to be there.
//! Admin services and health/reflection take one when presented (verified
//! likewise) but do not need it: their callers hold admin tokens.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use tonic::{Status, body::Body};
use tower::{Layer, Service};

use crate::domain::token::{self, TokenKind};
use crate::store::Store;

/// Who is calling, put into the request's extensions by [`AuthLayer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An operator with an admin token (its id).
    Admin(String),
    /// A node's agent (the node id).
    Node(String),
}

/// Admin tokens verified lately, by the SHA-256 of the presented token
/// (never the token): an admin call within [`VERIFIED_TTL`] of the last
/// check of the same token skips the store. A revoked token therefore
/// stops working within that time on every replica; a new one works at
/// once (it is not in the cache).
pub struct Verified {
    seen: std::sync::Mutex<HashMap<[u8; 32], (String, Instant)>>,
}

/// How long a verified admin token is trusted without asking the store.
pub const VERIFIED_TTL: Duration = Duration::from_secs(1);

/// Entries kept at most (then the cache starts over).
const VERIFIED_MAX: usize = 4096;

impl Verified {
    fn new() -> Arc<Self> {
        Arc::new(Verified {
            seen: std::sync::Mutex::new(HashMap::new()),
        })
    }

    fn get(&self, key: &[u8; 32]) -> Option<String> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(key)
            .filter(|(_, at)| at.elapsed() < VERIFIED_TTL)
            .map(|(id, _)| id.clone())
    }

    fn put(&self, key: [u8; 32], id: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= VERIFIED_MAX {
            seen.clear();
        }
        seen.insert(key, (id.to_owned(), Instant::now()));
    }
}

/// What a path requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Health, reflection and AgentService.Register.
    Nothing,
    /// Admin services.
    Admin,
    /// AgentService calls other than Register.
    Node,
}

fn need(path: &str) -> Need {
    let Some(rest) = path.strip_prefix("/meshplane.v1.") else {
        return Need::Nothing;
    };
    match rest.split_once('/') {
        Some(("AgentService", "Register")) => Need::Nothing,
        Some(("AgentService", _)) => Need::Node,
        _ => Need::Admin,
    }
}

/// Addresses tracked at most; past this, addresses seen for the first time
/// are not throttled until old entries expire.
const MAX_TRACKED: usize = 65_536;

/// Counts failed authentications per address (see the module
/// documentation).
pub struct Throttle {
    limit: u32,
    window: Duration,
    peers: Mutex<HashMap<IpAddr, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    since: Instant,
    blocked_until: Option<Instant>,
}

impl Throttle {
    /// Throttles an address for `window` after `limit` failures within
    /// `window` (a limit of 0 never throttles).
    pub fn new(limit: u32, window: Duration) -> Arc<Self> {
        Arc::new(Throttle {
            limit,
            window,
            peers: Mutex::new(HashMap::new()),
        })
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ok, or how long `ip` must still wait.
    fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        if self.limit == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut peers = self.peers();
        let Some(f) = peers.get_mut(&ip) else {
            return Ok(());
        };
        match f.blocked_until {
            Some(until) if until > now => Err(until - now),
            Some(_) => {
                peers.remove(&ip);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Records a failed authentication from `ip`.
    fn failed(&self, ip: IpAddr) {
        if self.limit == 0 {
            return;
        }
        let now = Instant::now();
        let window = self.window;
        let mut peers = self.peers();
        if peers.len() >= MAX_TRACKED && !peers.contains_key(&ip) {
            peers.retain(|_, f| match f.blocked_until {
                Some(until) => until > now,
                None => now.duration_since(f.since) < window,
            });
            if peers.len() >= MAX_TRACKED {
                return;
            }
        }
        let f = peers.entry(ip).or_insert(Failures {
            count: 0,
            since: now,
            blocked_until: None,
        });
        if f.blocked_until.is_some() {
            return;
        }
        if now.duration_since(f.since) >= window {
            *f = Failures {
                count: 0,
                since: now,
                blocked_until: None,
            };
        }
        f.count += 1;
        if f.count >= self.limit {
            tracing::warn!(peer = %ip, failures = f.count, "throttling an address after failed authentications");
            f.blocked_until = Some(now + window);
        }
    }
}

/// The key an address is throttled by: IPv4 as it is (also when mapped
/// into IPv6), IPv6 by its /64 (one host usually has a whole /64).
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].fill(0);
                IpAddr::V6(seg.into())
            }
        },
    }
}
fn is_agent_service(path: &str) -> bool {
    path.starts_with("/meshplane.v1.AgentService/")
}

/// What an agent without a client certificate is told.
pub const CLIENT_CERT_REQUIRED: &str = "AgentService needs a client certificate: this server \
     verifies agents against its --client-ca, and this connection presented none; run the agent \
     with --client-cert and --client-key (a certificate signed by that CA)";

/// The tower layer that authenticates every request.
#[derive(Clone)]
pub struct AuthLayer {
    store: Arc<dyn Store>,
    throttle: Arc<Throttle>,
    verified: Arc<Verified>,
    agent_certs: bool,
}

impl AuthLayer {
    /// A layer checking tokens against `store`, never throttling.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self::with_throttle(store, Throttle::new(0, Duration::ZERO))
    }

    /// A layer checking tokens against `store` and throttling addresses
    /// with `throttle`.
    pub fn with_throttle(store: Arc<dyn Store>, throttle: Arc<Throttle>) -> Self {
        Self {
            store,
            throttle,
            verified: Verified::new(),
            agent_certs: false,
        }
    }

    /// Whether AgentService calls need a (verified) client certificate.
    pub fn require_agent_certificates(mut self, required: bool) -> Self {
        self.agent_certs = required;
        self
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            store: self.store.clone(),
            throttle: self.throttle.clone(),
            verified: self.verified.clone(),
            agent_certs: self.agent_certs,
        }
    }
}

/// The service [`AuthLayer`] wraps around the router.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    store: Arc<dyn Store>,
    throttle: Arc<Throttle>,
    verified: Arc<Verified>,
    agent_certs: bool,
}

impl<S> Service<http::Request<Body>> for Auth<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let path = req.uri().path();
        let need = need(path);
        let api = path.starts_with("/meshplane.v1.");
        // The clone that was polled ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if self.agent_certs && is_agent_service(req.uri().path()) && !has_client_cert(&req) {
            return Box::pin(async {
                Ok(Status::unauthenticated(CLIENT_CERT_REQUIRED).into_http())
            });
        }
        let peer = req
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|i| i.remote_addr())
            .map(|a| peer_key(a.ip()));
        let (Some(peer), true) = (peer, api) else {
            // Health and reflection; or no address to throttle by.
            if need == Need::Nothing {
                return Box::pin(inner.call(req));
            }
            let store = self.store.clone();
            let verified = self.verified.clone();
            return Box::pin(async move {
                match authenticate(&*store, &verified, bearer(&req).as_deref(), need).await {
                    Ok(p) => {
                        req.extensions_mut().insert(p);
                        inner.call(req).await
                    }
                    Err(status) => Ok(status.into_http()),
                }
            });
        };
        if let Err(wait) = self.throttle.check(peer) {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            let status = super::limits::exhausted(
                format!("too many failed authentications from this address; retry in {secs} s"),
                Duration::from_secs(secs),
            );
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let store = self.store.clone();
        let verified = self.verified.clone();
        let throttle = self.throttle.clone();
        Box::pin(async move {
            if need != Need::Nothing {
                match authenticate(&*store, &verified, bearer(&req).as_deref(), need).await {
                    Ok(p) => {
                        req.extensions_mut().insert(p);
                    }
                    Err(status) => {
                        if status.code() == tonic::Code::Unauthenticated {
                            throttle.failed(peer);
                        }
                        return Ok(status.into_http());
                    }
                }
            }
            let response = inner.call(req).await?;
            // Register's bad enrollment key fails in the handler.
            if crate::metrics::grpc_code(response.headers()) == Some(tonic::Code::Unauthenticated) {
                throttle.failed(peer);
            }
            Ok(response)
        })
    }
}

/// Whether the connection presented a client certificate (which the TLS
/// handshake verified against the client CA).
fn has_client_cert(req: &http::Request<Body>) -> bool {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    req.extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.peer_certs())
        .is_some_and(|c| !c.is_empty())
}

fn bearer(req: &http::Request<Body>) -> Option<String> {
    let v = req
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

async fn authenticate(
    store: &dyn Store,
    verified: &Verified,
    bearer: Option<&str>,
    need: Need,
) -> Result<Principal, Status> {
    let Some(presented) = bearer else {
        return Err(Status::unauthenticated(
            "missing credentials: send metadata 'authorization: Bearer <token>'",
        ));
    };
    let invalid = || Status::unauthenticated("invalid or revoked token");
    let (kind, id) = token::parse(presented).ok_or_else(invalid)?;
    let principal = match kind {
        TokenKind::Admin => {
            let key = token::hash(presented);
            match verified.get(&key) {
                Some(id) => Principal::Admin(id),
                None => {
                    let hash = store
                        .admin_token_hash(id)
                        .await
                        .map_err(super::error::to_status)?
                        .ok_or_else(invalid)?;
                    if !token::verify(presented, &hash) {
                        return Err(invalid());
                    }
                    verified.put(key, id);
                    Principal::Admin(id.to_owned())
                }
            }
        }
        TokenKind::Node => {
            let (node, hash) = store
                .node_token(id)
                .await
                .map_err(super::error::to_status)?
                .ok_or_else(invalid)?;
            if !token::verify(presented, &hash) {
                return Err(invalid());
            }
            Principal::Node(node)
        }
        TokenKind::Enrollment => {
            return Err(Status::permission_denied(
                "an enrollment key only works in AgentService.Register's enrollment_key field",
            ));
        }
    };
    match (need, &principal) {
        (Need::Admin, Principal::Admin(_)) | (Need::Node, Principal::Node(_)) => Ok(principal),
        (Need::Admin, Principal::Node(_)) => Err(Status::permission_denied(
            "a node token may only call AgentService; admin services need an admin token",
        )),
        (Need::Node, Principal::Admin(_)) => Err(Status::permission_denied(
            "AgentService needs the node's own token, not an admin token",
        )),
        (Need::Nothing, _) => Ok(principal),
    }
}

/// The caller's principal, as the layer stored it.
pub fn principal<T>(req: &tonic::Request<T>) -> Result<&Principal, Status> {
    req.extensions()
        .get::<Principal>()
        .ok_or_else(|| Status::unauthenticated("request was not authenticated"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_throttled_after_its_limit_for_a_window() {
        let t = Throttle::new(3, Duration::from_millis(200));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..2 {
            t.failed(a);
        }
        assert!(t.check(a).is_ok());
        t.failed(a);
        let wait = t.check(a).unwrap_err();
        assert!(wait <= Duration::from_millis(200));
        assert!(t.check(b).is_ok(), "other addresses are not throttled");
        std::thread::sleep(Duration::from_millis(250));
        assert!(t.check(a).is_ok(), "the throttle cools down");
    }

    #[test]
    fn ipv6_peers_are_counted_by_their_64() {
        let a = peer_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = peer_key("2001:db8:1:2:bbbb::9".parse().unwrap());
        assert_eq!(a, b);
        assert_eq!(
            peer_key("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn paths_map_to_needs() {
        assert_eq!(
            need("/meshplane.v1.NetworkService/CreateNetwork"),
            Need::Admin
        );
        assert_eq!(need("/meshplane.v1.AgentService/Register"), Need::Nothing);
        assert_eq!(need("/meshplane.v1.AgentService/WatchConfig"), Need::Node);
        assert_eq!(need("/grpc.health.v1.Health/Check"), Need::Nothing);
        assert!(is_agent_service("/meshplane.v1.AgentService/Register"));
        assert!(!is_agent_service("/meshplane.v1.NodeService/GetNode"));
        assert_eq!(
            need("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Need::Nothing
        );
    }
}
