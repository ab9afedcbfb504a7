//! Authentication in one tower layer: every request's path decides which kind
//! of token it needs, and handlers never look at credentials themselves.
//!
//! With TLS and a client CA (`serve --client-ca`), AgentService calls
//! (`Register` included) also need a client certificate; the handshake has
//! verified it against the CA already, so here it only has to be there.
//! Admin services and health/reflection take one when presented (verified
//! likewise) but do not need it: their callers hold admin tokens.

use std::{
    sync::Arc,
    task::{Context, Poll},
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
    agent_certs: bool,
}

impl AuthLayer {
    /// A layer checking tokens against `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
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
            agent_certs: self.agent_certs,
        }
    }
}

/// The service [`AuthLayer`] wraps around the router.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    store: Arc<dyn Store>,
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
        let need = need(req.uri().path());
        // The clone that was polled ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if self.agent_certs && is_agent_service(req.uri().path()) && !has_client_cert(&req) {
            return Box::pin(async {
                Ok(Status::unauthenticated(CLIENT_CERT_REQUIRED).into_http())
            });
        }
        if need == Need::Nothing {
            return Box::pin(inner.call(req));
        }
        let store = self.store.clone();
        Box::pin(async move {
            let bearer = bearer(&req);
            match authenticate(&*store, bearer.as_deref(), need).await {
                Ok(p) => {
                    req.extensions_mut().insert(p);
                    inner.call(req).await
                }
                Err(status) => Ok(status.into_http()),
            }
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
            let hash = store
                .admin_token_hash(id)
                .await
                .map_err(super::error::to_status)?
                .ok_or_else(invalid)?;
            if !token::verify(presented, &hash) {
                return Err(invalid());
            }
            Principal::Admin(id.to_owned())
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
