//! Persistence behind one trait. SQLite is the embedded default; a
//! PostgreSQL implementation of the same trait follows for scale-out.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{
    Error, Result,
    config::NetworkView,
    dns::DnsEntry,
    enrollment::EnrollmentKey,
    event::Event,
    ext_client::{ExtClient, ExtClientPatch},
    host::StatusReport,
    network::{Network, NetworkPatch},
    node::{Egress, Ingress, Node, NodePatch, Registration},
    page::PageRequest,
    token::NewToken,
};

pub mod sqlite;

/// An admin token's record (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminToken {
    /// Record id (the middle part of the token).
    pub id: String,
    /// Operator's label.
    pub name: String,
    /// When it was created.
    pub create_time: DateTime<Utc>,
}

/// Everything meshplane keeps: one trait made of one part per resource, each
/// implemented by every backend. Every method is atomic: it commits all of its
/// writes or none.
pub trait Store:
    NetworkStore + TokenStore + NodeStore + ExtClientStore + DnsStore + EventStore
{
}

impl<T: NetworkStore + TokenStore + NodeStore + ExtClientStore + DnsStore + EventStore> Store
    for T
{
}

/// Networks.
#[async_trait]
pub trait NetworkStore: Send + Sync + 'static {
    /// Inserts a validated network; ALREADY_EXISTS on a taken name,
    /// FAILED_PRECONDITION when a range overlaps another network's.
    async fn create_network(&self, net: &Network) -> Result<Network>;
    /// One network by name.
    async fn get_network(&self, name: &str) -> Result<Network>;
    /// Networks ordered by name, after `page.after`, at most
    /// `page.fetch_limit()`.
    async fn list_networks(&self, page: &PageRequest) -> Result<Vec<Network>>;
    /// Applies a validated patch.
    async fn update_network(&self, name: &str, patch: &NetworkPatch) -> Result<Network>;
    /// Deletes a network; FAILED_PRECONDITION while it has nodes unless
    /// `force`, which deletes them (and everything else in it) too.
    async fn delete_network(&self, name: &str, force: bool) -> Result<()>;
}

/// Admin tokens.
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// Stores a new admin token's hash.
    async fn create_admin_token(&self, name: &str, token: &NewToken) -> Result<AdminToken>;
    /// All admin tokens, oldest first.
    async fn list_admin_tokens(&self) -> Result<Vec<AdminToken>>;
    /// Deletes an admin token; NOT_FOUND when there is none with that id.
    async fn revoke_admin_token(&self, id: &str) -> Result<()>;
    /// The stored hash of an admin token, when it exists.
    async fn admin_token_hash(&self, id: &str) -> Result<Option<Vec<u8>>>;
}

/// Enrollment keys and nodes.
#[async_trait]
pub trait NodeStore: Send + Sync + 'static {
    /// Stores a validated key with its token's hash; NOT_FOUND naming a
    /// network that does not exist.
    async fn create_enrollment_key(&self, key: &EnrollmentKey, hash: &[u8; 32]) -> Result<()>;
    /// Keys ordered by id, optionally only those valid for `network`.
    async fn list_enrollment_keys(
        &self,
        network: Option<&str>,
        page: &PageRequest,
    ) -> Result<Vec<EnrollmentKey>>;
    /// Revokes a key.
    async fn delete_enrollment_key(&self, id: &str) -> Result<()>;
    /// The key a presented enrollment token (with record id `id`) opens;
    /// UNAUTHENTICATED when there is none or the secret is wrong.
    async fn enrollment_key(&self, id: &str, presented: &str) -> Result<EnrollmentKey>;

    /// Registers a node in one transaction: re-checks the key, checks name and
    /// key uniqueness, allocates the lowest free addresses, stores the node
    /// and its token hash, and takes one use of the key. On any error nothing
    /// is written.
    async fn register_node(&self, reg: &NodeRegistration<'_>) -> Result<Node>;
    /// One node.
    async fn get_node(&self, id: &str) -> Result<Node>;
    /// Nodes ordered by (network, name), optionally of one network.
    async fn list_nodes(&self, network: Option<&str>, page: &PageRequest) -> Result<Vec<Node>>;
    /// All nodes of a network, ordered by name.
    async fn network_nodes(&self, network: &str) -> Result<Vec<Node>>;
    /// Applies a validated patch; ALREADY_EXISTS when the new name or key is
    /// taken in the network.
    async fn update_node(&self, id: &str, patch: &NodePatch) -> Result<Node>;
    /// Deletes a node, frees its addresses, revokes its token.
    async fn delete_node(&self, id: &str) -> Result<Node>;
    /// The node a presented node token (with record id `id`) belongs to.
    async fn node_for_token(&self, id: &str, presented: &str) -> Result<Option<String>>;
    /// Makes a node an egress gateway (replacing its egress) or, with None,
    /// stops it being one; ALREADY_EXISTS when another gateway of the network
    /// serves one of the same ranges.
    async fn set_egress(&self, node_id: &str, egress: Option<&Egress>) -> Result<Node>;
    /// Makes a node an ingress gateway or, with None, stops it being one:
    /// FAILED_PRECONDITION while external clients use it, unless `force`,
    /// which deletes them.
    async fn set_ingress(
        &self,
        node_id: &str,
        ingress: Option<&Ingress>,
        force: bool,
    ) -> Result<Node>;
    /// Everything configs in a network are computed from, read consistently.
    async fn network_view(&self, network: &str) -> Result<NetworkView>;
    /// Records what an agent reported (and that it was heard from now). When
    /// the report changes a config (the node's interface name, its endpoint;
    /// see [`StatusReport::apply`]) the write appends an event like any other;
    /// otherwise it appends none and no revision moves.
    async fn report_status(&self, node_id: &str, report: &StatusReport) -> Result<Reported>;
}

/// External clients.
#[async_trait]
pub trait ExtClientStore: Send + Sync + 'static {
    /// Stores a new client (id, keys, name, DNS set; addresses are allocated
    /// here from the pool nodes use): NOT_FOUND for an unknown ingress node,
    /// FAILED_PRECONDITION when it is not an ingress gateway, INVALID_ARGUMENT
    /// when it is in another network, ALREADY_EXISTS for a taken name or key.
    async fn create_ext_client(&self, client: &ExtClient) -> Result<ExtClient>;
    /// One client.
    async fn get_ext_client(&self, id: &str) -> Result<ExtClient>;
    /// Clients ordered by (network, name).
    async fn list_ext_clients(
        &self,
        network: Option<&str>,
        ingress_node_id: Option<&str>,
        page: &PageRequest,
    ) -> Result<Vec<ExtClient>>;
    /// Applies a validated patch.
    async fn update_ext_client(&self, id: &str, patch: &ExtClientPatch) -> Result<ExtClient>;
    /// Deletes a client and frees its addresses.
    async fn delete_ext_client(&self, id: &str) -> Result<ExtClient>;
    /// Records that the config at `revision` was downloaded.
    async fn mark_downloaded(&self, id: &str, revision: u64) -> Result<()>;
}

/// Custom DNS entries.
#[async_trait]
pub trait DnsStore: Send + Sync + 'static {
    /// Stores a custom entry: NOT_FOUND for an unknown network,
    /// ALREADY_EXISTS when the name is a node's, a client's or another
    /// entry's.
    async fn create_dns_entry(&self, entry: &DnsEntry) -> Result<DnsEntry>;
    /// Deletes a custom entry: FAILED_PRECONDITION for a node's or client's
    /// automatic name, NOT_FOUND when there is no such name.
    async fn delete_dns_entry(&self, network: &str, name: &str) -> Result<DnsEntry>;
}

/// The event log.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Events with revision greater than `after`, oldest first, at most
    /// `limit`.
    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>>;
    /// The newest revision (0 when nothing happened yet).
    async fn latest_revision(&self) -> Result<u64>;
    /// Every network's view and the newest event revision, read in one
    /// consistent snapshot (the hub starts from it and follows the log).
    async fn load_all(&self) -> Result<(u64, Vec<NetworkView>)>;
    /// Records that a node's agent was heard from now.
    async fn touch_node(&self, node_id: &str) -> Result<()>;
}

/// What [`NodeStore::report_status`] did.
#[derive(Debug, Clone)]
pub struct Reported {
    /// The node after the report.
    pub node: Node,
    /// The report changed a config: the hub has an event to follow.
    pub config_changed: bool,
}

/// What [`NodeStore::register_node`] needs.
#[derive(Debug)]
pub struct NodeRegistration<'a> {
    /// Record id of the enrollment key.
    pub key_id: &'a str,
    /// The enrollment token as presented.
    pub key_token: &'a str,
    /// The validated request.
    pub registration: &'a Registration,
    /// Id for the new node.
    pub node_id: String,
    /// The node's new token (only its hash is stored).
    pub token: &'a NewToken,
}

/// Opens the store a database URL names and runs its migrations.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url).await?))
    } else {
        Err(Error::Internal(format!(
            "unsupported database URL scheme in {:?}: only sqlite: is supported so far",
            url.split(':').next().unwrap_or_default()
        )))
    }
}

/// Microseconds since the epoch, the stored form of times.
pub(crate) fn to_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The inverse of [`to_micros`].
pub(crate) fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// Maps a database failure to a domain error, keeping SQL and driver text out
/// of what callers see (it is logged).
pub(crate) fn db_err(e: sqlx::Error) -> Error {
    match &e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            tracing::warn!(error = %e, "database unavailable");
            Error::Unavailable("the database is busy; retry".into())
        }
        _ => {
            tracing::error!(error = %e, "database error");
            Error::Internal(e.to_string())
        }
    }
}

/// Joins IP lists for storage.
pub(crate) fn join_ips(ips: &[std::net::IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Splits a stored IP list.
pub(crate) fn split_ips(s: &str) -> Vec<std::net::IpAddr> {
    s.split(',').filter_map(|p| p.parse().ok()).collect()
}

/// Whether a database error is a uniqueness violation (same code on SQLite
/// and PostgreSQL through sqlx's classification).
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}
