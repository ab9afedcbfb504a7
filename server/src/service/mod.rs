//! The service layer: one function per use case, between `api/` (decode,
//! encode, map errors) and `store/` (SQL). Each write use case validates
//! through the domain, loads through the store, writes, and wakes the hub —
//! and waking is written once, in [`Service::write`], which every write goes
//! through. `api/` holds no store, so a handler cannot write around it.

use std::{future::Future, sync::Arc, time::Duration};

use crate::domain::{
    Error, Result, config::NetworkView, crypto::Sealer, enrollment::EnrollmentKey, event::Event,
    ext_client::ExtClient, network::Network, node::Node, page::PageRequest,
};
use crate::hub::Hub;
use crate::store::Store;

mod admin_token;
pub mod commit;
mod dns;
mod enrollment_key;
mod ext_client;
mod gateway;
mod network;
mod node;
mod policy;

pub use admin_token::{create_admin_token, revoke_admin_token};
pub use enrollment_key::CreatedKey;
pub use node::{Registered, Reported};
pub use policy::{MAX_CHANGES, PolicyUpdate};

/// How often a write transaction is tried when the database reports a
/// conflict a retry resolves (see [`Error::Aborted`]).
const ATTEMPTS: u32 = 10;

/// Runs `$body` (which uses the transaction `$tx`, a `&mut dyn Tx`, and
/// may return early with `?`) as one write of `$committer`'s group commit
/// (see [`commit`]): it is acknowledged once its batch committed. On
/// [`Error::Aborted`] (a conflict the database reported, or its batch
/// failed) its writes are undone and the whole body runs again, up to
/// [`ATTEMPTS`] times with a short random backoff. Evaluates to the body's
/// `Result`.
macro_rules! txn {
    ($committer:expr, |$tx:ident| $body:block) => {{
        let mut attempt = 1u32;
        loop {
            let out: $crate::domain::Result<_> = async {
                let mut turn = $committer.turn().await?;
                let result = $crate::service::typed(async {
                    let $tx: &mut dyn $crate::store::Tx = turn.tx();
                    $body
                })
                .await;
                turn.finish(result).await
            }
            .await;
            match out {
                Err($crate::domain::Error::Aborted(m)) if attempt < $crate::service::ATTEMPTS => {
                    tracing::debug!(attempt, reason = %m, "write conflicted; retrying");
                    $crate::service::backoff(attempt).await;
                    attempt += 1;
                }
                other => break other,
            }
        }
    }};
}
pub(crate) use txn;

/// Pins a transaction body's error type to the domain's (so `?` inside it
/// infers).
pub(crate) async fn typed<T>(body: impl Future<Output = Result<T>>) -> Result<T> {
    body.await
}

/// Sleeps a little before retry `attempt` (random, growing).
pub(crate) async fn backoff(attempt: u32) {
    let max_ms = 2u64.saturating_mul(u64::from(attempt)).min(50);
    let ms = 1 + rand::random::<u64>() % max_ms.max(1);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// The use cases, over one store, one sealer and one hub.
#[derive(Clone)]
pub struct Service {
    store: Arc<dyn Store>,
    committer: Arc<commit::Committer>,
    sealer: Arc<Sealer>,
    hub: Arc<Hub>,
}

impl Service {
    /// A service writing to `store` and waking `hub` after every write.
    pub fn new(store: Arc<dyn Store>, sealer: Arc<Sealer>, hub: Arc<Hub>) -> Self {
        Self {
            committer: Arc::new(commit::Committer::new(store.clone())),
            store,
            sealer,
            hub,
        }
    }

    /// The store (for the auth layer's token lookups and for tests).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Group commit's batches committed so far and the writes they
    /// acknowledged.
    pub fn commit_stats(&self) -> (u64, u64) {
        self.committer.stats()
    }

    /// Runs a write; when it committed, wakes the hub. Every write use case
    /// goes through here (or [`Service::write_if`]).
    async fn write<T>(&self, write: impl Future<Output = Result<T>>) -> Result<T> {
        self.write_if(write, |_| true).await
    }

    /// [`Service::write`] for a write that appends an event only sometimes:
    /// `appended` says from its result whether it did.
    async fn write_if<T>(
        &self,
        write: impl Future<Output = Result<T>>,
        appended: impl FnOnce(&T) -> bool,
    ) -> Result<T> {
        let out = write.await?;
        if appended(&out) {
            self.wake().await;
        }
        Ok(out)
    }

    /// After a write committed: brings the hub up to date, so the response
    /// and every read after it see the write (config revisions included) and
    /// the affected agents' streams are woken. If that fails, the follower
    /// catches up on its next round; the write itself stands.
    async fn wake(&self) {
        if let Err(e) = self.hub.catch_up_to(self.committer.committed()).await {
            tracing::warn!(error = %e, "catching up after a write failed; the follower retries");
            self.hub.nudge();
        }
    }

    // Reads: straight through to the store.

    /// One network by name, from the hub's memory: it holds every write
    /// this replica acknowledged (a write answers only after the hub applied
    /// it); when another replica announced a write the hub has not applied
    /// yet, it catches up first. A name the hub does not know yet is looked
    /// for again after catching up, so a network created through another
    /// replica a moment ago is found, not NOT_FOUND. (A write another
    /// replica committed whose announcement is still in flight, a matter of
    /// milliseconds, may not be seen yet.)
    pub async fn get_network(&self, name: &str) -> Result<Network> {
        if self.hub.behind() {
            self.hub.catch_up().await?;
        }
        if let Some(n) = self.hub.network(name) {
            return Ok(n);
        }
        self.hub.catch_up().await?;
        self.hub
            .network(name)
            .ok_or_else(|| Error::not_found("network", name))
    }

    /// A page of networks.
    pub async fn list_networks(&self, page: &PageRequest) -> Result<Vec<Network>> {
        self.store.list_networks(page).await
    }

    /// One node.
    pub async fn get_node(&self, id: &str) -> Result<Node> {
        self.store
            .get_node(id)
            .await?
            .ok_or_else(|| Error::not_found("node", id))
    }

    /// A page of nodes, optionally of one network.
    pub async fn list_nodes(&self, network: Option<&str>, page: &PageRequest) -> Result<Vec<Node>> {
        self.store.list_nodes(network, page).await
    }

    /// One external client.
    pub async fn get_ext_client(&self, id: &str) -> Result<ExtClient> {
        self.store
            .get_ext_client(id)
            .await?
            .ok_or_else(|| Error::not_found("external client", id))
    }

    /// A page of external clients.
    pub async fn list_ext_clients(
        &self,
        network: Option<&str>,
        ingress_node_id: Option<&str>,
        page: &PageRequest,
    ) -> Result<Vec<ExtClient>> {
        self.store
            .list_ext_clients(network, ingress_node_id, page)
            .await
    }

    /// A page of enrollment keys, optionally only those valid for `network`.
    pub async fn list_enrollment_keys(
        &self,
        network: Option<&str>,
        page: &PageRequest,
    ) -> Result<Vec<EnrollmentKey>> {
        self.store.list_enrollment_keys(network, page).await
    }

    /// Everything a network's configs are computed from, as the hub holds
    /// it: caught up first, so it includes every acknowledged write, without
    /// reloading the network from the store.
    pub async fn network_view(&self, network: &str) -> Result<NetworkView> {
        self.hub.catch_up().await?;
        self.hub
            .network_view(network)
            .ok_or_else(|| Error::not_found("network", network))
    }

    /// Events after `after`, oldest first.
    pub async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        self.store.events_after(after, limit).await
    }

    /// The oldest revision the event log keeps and the newest.
    pub async fn log_bounds(&self) -> Result<crate::store::LogBounds> {
        self.store.log_bounds().await
    }

    /// The newest event revision.
    pub async fn latest_revision(&self) -> Result<u64> {
        Ok(self.store.log_bounds().await?.latest)
    }

    /// Records that a node's agent was heard from now (no event: nothing to
    /// wake).
    pub async fn touch_node(&self, node_id: &str) -> Result<()> {
        self.store.touch_node(node_id, crate::domain::now()).await
    }
}
