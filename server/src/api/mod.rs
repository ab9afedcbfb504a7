//! The gRPC edge: one thin file per service (decode, call the service layer,
//! encode), the auth layer and the one error mapping.

use std::sync::Arc;

use futures::Stream;
use tokio::sync::watch;

use crate::hub::Hub;
use crate::service::Service;

pub mod agent;
pub mod auth;
pub mod config;
pub mod convert;
pub mod dns;
pub mod enrollment_key;
pub mod error;
pub mod event;
pub mod ext_client;
pub mod gateway;
pub mod limits;
pub mod methods;
pub mod network;
pub mod node;
pub mod policy;

/// A boxed server stream.
pub type BoxStream<T> =
    std::pin::Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;

/// What every service shares.
#[derive(Clone)]
pub struct AppState {
    /// The use cases; every read and write goes through it (handlers hold
    /// no store).
    pub service: Service,
    /// Config state and per-node cells.
    pub hub: Arc<Hub>,
    /// Flips to true when the server shuts down; streaming responses end when
    /// it does.
    pub drain: watch::Receiver<bool>,
}

/// An optional network filter: empty is none; anything else must be a
/// network name (INVALID_ARGUMENT on `field` otherwise, rather than a
/// filter that silently matches nothing).
pub(crate) fn network_filter(field: &str, s: &str) -> Result<Option<String>, tonic::Status> {
    if s.is_empty() {
        return Ok(None);
    }
    crate::domain::names::DnsLabel::parse(field, s, crate::domain::names::DnsLabel::NETWORK_MAX)
        .map(|l| Some(l.to_string()))
        .map_err(|v| error::to_status(crate::domain::Error::InvalidArgument(vec![v])))
}
