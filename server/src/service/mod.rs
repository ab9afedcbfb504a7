//! The service layer: one function per use case, between `api/` (decode,
//! encode, map errors) and `store/` (SQL). Each write use case validates
//! through the domain, loads through the store, writes, and wakes the hub —
//! and waking is written once, in [`Service::write`], which every write goes
//! through. `api/` holds no store, so a handler cannot write around it.

use std::{future::Future, sync::Arc};

use crate::domain::{
    Error, Result, config::NetworkView, crypto::Sealer, enrollment::EnrollmentKey, event::Event,
    ext_client::ExtClient, network::Network, node::Node, page::PageRequest,
};
use crate::hub::Hub;
use crate::store::Store;

mod dns;
mod enrollment_key;
mod ext_client;
mod gateway;
mod network;
mod node;

pub use enrollment_key::CreatedKey;
pub use node::Registered;

/// The use cases, over one store, one sealer and one hub.
#[derive(Clone)]
pub struct Service {
    store: Arc<dyn Store>,
    sealer: Arc<Sealer>,
    hub: Arc<Hub>,
}

impl Service {
    /// A service writing to `store` and waking `hub` after every write.
    pub fn new(store: Arc<dyn Store>, sealer: Arc<Sealer>, hub: Arc<Hub>) -> Self {
        Self { store, sealer, hub }
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
        if let Err(e) = self.hub.catch_up().await {
            tracing::warn!(error = %e, "catching up after a write failed; the follower retries");
            self.hub.nudge();
        }
    }

    // Reads: straight through to the store.

    /// One network by name.
    pub async fn get_network(&self, name: &str) -> Result<Network> {
        self.store.get_network(name).await
    }

    /// A page of networks.
    pub async fn list_networks(&self, page: &PageRequest) -> Result<Vec<Network>> {
        self.store.list_networks(page).await
    }

    /// One node.
    pub async fn get_node(&self, id: &str) -> Result<Node> {
        self.store.get_node(id).await
    }

    /// A page of nodes, optionally of one network.
    pub async fn list_nodes(&self, network: Option<&str>, page: &PageRequest) -> Result<Vec<Node>> {
        self.store.list_nodes(network, page).await
    }

    /// One external client.
    pub async fn get_ext_client(&self, id: &str) -> Result<ExtClient> {
        self.store.get_ext_client(id).await
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

    /// The newest event revision.
    pub async fn latest_revision(&self) -> Result<u64> {
        self.store.latest_revision().await
    }

    /// Records that a node's agent was heard from now (no event: nothing to
    /// wake).
    pub async fn touch_node(&self, node_id: &str) -> Result<()> {
        self.store.touch_node(node_id).await
    }
}
