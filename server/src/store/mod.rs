//! Persistence behind one trait. SQLite is the embedded default; a
//! PostgreSQL implementation of the same trait follows for scale-out.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{
    Error, Result,
    network::{Network, NetworkPatch},
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

/// Everything meshplane keeps. Every method is atomic: it either commits all
/// of its writes or none.
#[async_trait]
pub trait Store: Send + Sync + 'static {
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
    /// Deletes a network (and, with `force`, everything in it).
    async fn delete_network(&self, name: &str, force: bool) -> Result<()>;

    /// Stores a new admin token's hash.
    async fn create_admin_token(&self, name: &str, token: &NewToken) -> Result<AdminToken>;
    /// All admin tokens, oldest first.
    async fn list_admin_tokens(&self) -> Result<Vec<AdminToken>>;
    /// Deletes an admin token; NOT_FOUND when there is none with that id.
    async fn revoke_admin_token(&self, id: &str) -> Result<()>;
    /// The stored hash of an admin token, when it exists.
    async fn admin_token_hash(&self, id: &str) -> Result<Option<Vec<u8>>>;
    /// The node a presented node token (with record id `id`) belongs to, when
    /// the token is valid.
    async fn node_for_token(&self, id: &str, presented: &str) -> Result<Option<String>>;
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
