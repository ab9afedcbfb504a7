//! The gRPC edge: one thin file per service (decode, call domain and store,
//! encode), the auth layer and the one error mapping.

use std::sync::Arc;

use futures::Stream;
use tokio::sync::watch;

use crate::domain::crypto::Sealer;
use crate::hub::Hub;
use crate::store::Store;

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
pub mod network;
pub mod node;

/// A boxed server stream.
pub type BoxStream<T> =
    std::pin::Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;

/// What every service shares.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Seals external clients' private keys.
    pub sealer: Arc<Sealer>,
    /// Config state and per-node cells.
    pub hub: Arc<Hub>,
    /// Flips to true when the server shuts down; streaming responses end when
    /// it does.
    pub drain: watch::Receiver<bool>,
}

impl AppState {
    /// After a write committed: brings the hub up to date, so the response
    /// and every read after it see the write (config revisions included) and
    /// the affected agents' streams are woken. If that fails, the follower
    /// catches up on its next round; the write itself stands.
    pub async fn changed(&self) {
        if let Err(e) = self.hub.catch_up().await {
            tracing::warn!(error = %e, "catching up after a write failed; the follower retries");
            self.hub.nudge();
        }
    }
}
