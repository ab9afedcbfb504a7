//! Persistence behind one trait. SQLite is the embedded default; a
//! PostgreSQL implementation of the same trait follows for scale-out.

use std::{path::Path, sync::Arc};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{
    Error, Result,
    config::NetworkView,
    dns::DnsEntry,
    enrollment::EnrollmentKey,
    event::{Action, Event, Resource},
    ext_client::ExtClient,
    ipam::Family,
    network::Network,
    node::{Node, WgKey},
    page::PageRequest,
    policy::NetworkPolicy,
    token::NewToken,
};

pub mod postgres;
pub mod rows;
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

/// An enrollment key with the hash of its secret (the service verifies a
/// presented token against it).
#[derive(Clone)]
pub struct StoredKey {
    /// The key.
    pub key: EnrollmentKey,
    /// SHA-256 of its token.
    pub hash: Vec<u8>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

pub use crate::domain::rules::Owner;

/// What [`Tx::lock_for_registration`] loads.
#[derive(Debug, Clone)]
pub struct RegistrationLoad {
    /// The network, locked until commit.
    pub network: Network,
    /// The enrollment key as it was, with a use taken when it had one left.
    pub key: Option<StoredKey>,
    /// What holds the new node's name in the network's zone.
    pub name_owner: Option<Owner>,
    /// The node or client with the new node's public key.
    pub key_owner: Option<Owner>,
    /// The lowest free IPv4 offset, taken for the new node (when the
    /// network has an IPv4 range).
    pub offset4: Option<u128>,
    /// The same for IPv6.
    pub offset6: Option<u128>,
}

/// [`Tx::lock_for_registration`] one step at a time.
pub async fn lock_for_registration_stepwise(
    tx: &mut (impl Tx + ?Sized),
    network: &str,
    key_id: &str,
    name: &str,
    key: &WgKey,
    owner: &Owner,
) -> Result<Option<RegistrationLoad>> {
    let Some(net) = tx.lock_network(network).await? else {
        return Ok(None);
    };
    let stored = tx.take_enrollment_key(key_id).await?;
    let (name_owner, key_owner) = tx.owners(network, name, key).await?;
    let mut offset4 = None;
    if net.range4.is_some() {
        offset4 = Some(tx.take_lowest_free(network, Family::V4, owner).await?);
    }
    let mut offset6 = None;
    if net.range6.is_some() {
        offset6 = Some(tx.take_lowest_free(network, Family::V6, owner).await?);
    }
    Ok(Some(RegistrationLoad {
        network: net,
        key: stored,
        name_owner,
        key_owner,
        offset4,
        offset6,
    }))
}

/// Which external clients' stored config revision a write moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clients<'a> {
    /// One client, by id.
    One(&'a str),
    /// The clients of one ingress gateway, by node id.
    OfIngress(&'a str),
    /// Every client of a network.
    OfNetwork(&'a str),
}

/// The revisions the event log holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogBounds {
    /// The oldest revision still kept (`latest + 1` when the log is empty).
    pub oldest: u64,
    /// The newest revision ever appended (0 when nothing happened yet);
    /// never goes back, even when pruning emptied the log.
    pub latest: u64,
}

/// How the store's connection pool is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Connections open and waiting to be used.
    pub idle: usize,
    /// Connections open and in use.
    pub in_use: usize,
}

/// Revisions of changes, as other replicas announce them (PostgreSQL's
/// LISTEN/NOTIFY); an item is a hint to read the log, never the change.
pub type Notifications = futures::stream::BoxStream<'static, Result<u64>>;

/// Everything meshplane keeps, behind one trait implemented by every backend
/// with SQL only: the rules (what is unique, what may be removed, whose
/// configs change) are the service layer's and the domain's.
///
/// Reads here run outside any transaction, each one statement (or one
/// consistent snapshot for [`Store::load_all`]). Writes go through a
/// transaction from [`Store::begin`].
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// "sqlite" or "postgres".
    fn backend(&self) -> &'static str;

    /// Begins a write transaction. Writes of one transaction commit all
    /// together or not at all (dropping it uncommitted rolls back).
    /// SQLite takes its single write lock here (BEGIN IMMEDIATE); PostgreSQL
    /// runs READ COMMITTED and serialises with row locks
    /// ([`Tx::lock_network`], [`Tx::enrollment_key`]) and the log append.
    async fn begin(&self) -> Result<Box<dyn Tx>>;

    // Reads.

    /// One network by name.
    async fn get_network(&self, name: &str) -> Result<Option<Network>>;
    /// Networks ordered by name, after `page.after`, at most
    /// `page.fetch_limit()`.
    async fn list_networks(&self, page: &PageRequest) -> Result<Vec<Network>>;
    /// One node (with its host report).
    async fn get_node(&self, id: &str) -> Result<Option<Node>>;
    /// Nodes ordered by (network, name) after the `network/name` key in
    /// `page.after`, optionally of one network.
    async fn list_nodes(&self, network: Option<&str>, page: &PageRequest) -> Result<Vec<Node>>;
    /// One external client.
    async fn get_ext_client(&self, id: &str) -> Result<Option<ExtClient>>;
    /// Clients ordered by (network, name) after the `network/name` key in
    /// `page.after`, optionally of one network and/or one ingress node.
    async fn list_ext_clients(
        &self,
        network: Option<&str>,
        ingress_node_id: Option<&str>,
        page: &PageRequest,
    ) -> Result<Vec<ExtClient>>;
    /// A network's stored policy; None when it has none (or no such
    /// network).
    async fn get_policy(&self, network: &str) -> Result<Option<NetworkPolicy>>;
    /// One enrollment key with its hash.
    async fn get_enrollment_key(&self, id: &str) -> Result<Option<StoredKey>>;
    /// Keys ordered by id after `page.after`, optionally only those valid
    /// for `network`.
    async fn list_enrollment_keys(
        &self,
        network: Option<&str>,
        page: &PageRequest,
    ) -> Result<Vec<EnrollmentKey>>;
    /// All admin tokens, oldest first.
    async fn list_admin_tokens(&self) -> Result<Vec<AdminToken>>;
    /// The stored hash of an admin token.
    async fn admin_token_hash(&self, id: &str) -> Result<Option<Vec<u8>>>;
    /// The node a node token's record id belongs to, with the token's hash.
    async fn node_token(&self, token_id: &str) -> Result<Option<(String, Vec<u8>)>>;
    /// Every network's view (nodes without host reports) and the newest
    /// revision, read in one consistent snapshot (the hub starts from it and
    /// follows the log).
    async fn load_all(&self) -> Result<(u64, Vec<NetworkView>)>;

    /// Every node heard from (`last_seen` set) with the revision its agent
    /// last reported applied, in no particular order (the drift gauge).
    async fn applied_revisions(&self) -> Result<Vec<(String, u64)>>;
    /// The connection pool's use now.
    fn pool_stats(&self) -> PoolStats;

    // The event log.

    /// Events with revision greater than `after`, oldest first, at most
    /// `limit`. Revisions are dense (each append takes the next one and an
    /// append that rolls back gives its number back) and commit in order, so
    /// a reader that has seen revision N never later finds one below N.
    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>>;
    /// The oldest revision kept and the newest appended.
    async fn log_bounds(&self) -> Result<LogBounds>;
    /// Deletes the events up to (and including) the newest one older than
    /// `before` — a prefix of the log, even when event times are out of
    /// revision order — never the newest event; returns how many went.
    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64>;
    /// Other replicas' appends as they commit; None when the backend has no
    /// such channel (SQLite: one process; the follower polls).
    async fn notifications(&self) -> Result<Option<Notifications>>;

    // Small writes outside the rules (no event).

    /// Records that a node's agent was heard from at `now` (never moves
    /// last_seen back).
    async fn touch_node(&self, node_id: &str, now: DateTime<Utc>) -> Result<()>;
    /// [`Tx::save_report`] in one statement of its own: a report that
    /// changes no config takes no lock but the node row's (what it writes
    /// no other write does).
    async fn save_report(&self, node: &Node) -> Result<()>;
    /// Records that a client's config at `revision` was downloaded (never
    /// moves the recorded revision back).
    async fn mark_downloaded(&self, id: &str, revision: u64) -> Result<()>;
    /// The time by the database's clock (SQLite: this host's): shared
    /// presence stamps and expires entries by one clock for every replica.
    async fn clock(&self) -> Result<DateTime<Utc>>;
    /// Shared presence: in one transaction, records that `replica` holds a
    /// config stream of each node in `streaming` as of `now` (and of no
    /// other node), forgets every replica's entries older than
    /// `expire_before`, and returns the ids of nodes streaming from any
    /// replica.
    async fn presence(
        &self,
        replica: &str,
        streaming: &[String],
        now: DateTime<Utc>,
        expire_before: DateTime<Utc>,
    ) -> Result<Vec<String>>;

    // Backup.

    /// Writes a consistent copy of every committed write to the new file
    /// `out` (never overwriting one) and returns the newest event revision
    /// it holds. Safe while the server runs: SQLite copies one read
    /// snapshot (`VACUUM INTO`) while writers go on. PostgreSQL refuses
    /// ([`Error::FailedPrecondition`]): back it up with its own tools
    /// (`pg_dump`).
    async fn backup(&self, out: &Path) -> Result<u64>;
}

/// One write transaction: loads and writes, nothing else. Every method that
/// inserts or updates maps a unique-constraint violation, a serialization
/// failure or a detected deadlock to [`Error::Aborted`], which makes the
/// service retry the whole transaction.
#[async_trait]
pub trait Tx: Send {
    /// Commits every write of the transaction.
    async fn commit(self: Box<Self>) -> Result<()>;
    /// Takes the event log's append lock now, before any other lock
    /// (PostgreSQL: the log head's row; SQLite: nothing more, the
    /// transaction holds the database's write lock already). Group commit
    /// calls it first in every batch, so write transactions lock in one
    /// order: log, network, rows. Every transaction that writes networks,
    /// nodes, external clients, DNS entries, addresses or enrollment keys
    /// must take it first: PostgreSQL's one-statement loads
    /// ([`Tx::lock_for_registration`]) rely on it (the small writes of
    /// [`Store`], reports, presence and tokens, touch none of them).
    async fn lock_log(&mut self) -> Result<()>;
    /// Marks a point the transaction can go back to (`SAVEPOINT`). Group
    /// commit marks one when a batch begins; each write of the batch then
    /// ends with [`Tx::keep_and_mark`] or [`Tx::rollback_to_savepoint`],
    /// either of which leaves a mark for the next write, in one round trip.
    async fn savepoint(&mut self) -> Result<()>;
    /// Keeps the writes since the mark and marks anew (`RELEASE SAVEPOINT`
    /// and `SAVEPOINT`, sent together).
    async fn keep_and_mark(&mut self) -> Result<()>;
    /// Undoes the writes since the mark, which stays (`ROLLBACK TO
    /// SAVEPOINT`); the transaction stays usable, also after a failed
    /// statement on PostgreSQL.
    async fn rollback_to_savepoint(&mut self) -> Result<()>;

    // Networks.

    /// A network, locked until commit (PostgreSQL: `FOR UPDATE`): every
    /// write that changes who or what is in a network takes this first, so
    /// names, keys, addresses and egress ranges are checked and written by
    /// one transaction at a time per network, across replicas.
    async fn lock_network(&mut self, name: &str) -> Result<Option<Network>>;
    /// The networks a new network `net` collides with: the one of its name
    /// and those whose ranges overlap its ranges — found by index, at a cost
    /// that does not grow with the number of networks. Locked against
    /// concurrent network creation (PostgreSQL: a transaction-level advisory
    /// lock).
    async fn network_conflicts(&mut self, net: &Network) -> Result<Vec<Network>>;
    /// Inserts a network with config revision 0.
    async fn insert_network(&mut self, net: &Network) -> Result<()>;
    /// Writes a network's mutable fields (keepalive, mtu, listen_port,
    /// ext_client_dns, nameservers, update_time).
    async fn update_network(&mut self, net: &Network) -> Result<()>;
    /// Deletes a network and everything in it (nodes, clients, addresses,
    /// DNS entries, key memberships, presence).
    async fn delete_network(&mut self, name: &str) -> Result<()>;

    // Admin tokens.

    /// Stores an admin token's record and hash.
    async fn insert_admin_token(&mut self, token: &AdminToken, hash: &[u8]) -> Result<()>;
    /// Deletes an admin token; false when there was none.
    async fn delete_admin_token(&mut self, id: &str) -> Result<bool>;

    // Enrollment keys.

    /// A key with its hash, locked until commit.
    async fn enrollment_key(&mut self, id: &str) -> Result<Option<StoredKey>>;
    /// Stores a key, its hash and its networks.
    async fn insert_enrollment_key(&mut self, key: &EnrollmentKey, hash: &[u8]) -> Result<()>;
    /// Deletes a key.
    async fn delete_enrollment_key(&mut self, id: &str) -> Result<()>;
    /// Takes one use of a key when it has one left (or is unlimited), in
    /// one conditional update; false when none was left.
    async fn take_key_use(&mut self, id: &str) -> Result<bool>;
    /// [`Tx::enrollment_key`] and [`Tx::take_key_use`] together: the key as
    /// it was, locked until commit, with one use taken when it had one left.
    /// The caller's checks on the returned key (usable, admits the network)
    /// decide; when they refuse, undoing the write gives the use back.
    /// PostgreSQL does it in one round trip.
    async fn take_enrollment_key(&mut self, id: &str) -> Result<Option<StoredKey>> {
        let mut key = self.enrollment_key(id).await?;
        if let Some(k) = &mut key
            && !self.take_key_use(id).await?
            && !k.key.unlimited
        {
            // No use was left to take (whatever the load said): the key the
            // caller checks says so.
            k.key.uses_remaining = 0;
        }
        Ok(key)
    }

    // Nodes.

    /// One node (with its host report).
    async fn node(&mut self, id: &str) -> Result<Option<Node>>;
    /// A network's nodes ordered by name (with host reports).
    async fn network_nodes(&mut self, network: &str) -> Result<Vec<Node>>;
    /// What holds `name` in a network's zone: a node, a client or a custom
    /// DNS entry.
    async fn name_owner(&mut self, network: &str, name: &str) -> Result<Option<Owner>>;
    /// The node or client of a network with this public key.
    async fn key_owner(&mut self, network: &str, key: &WgKey) -> Result<Option<Owner>>;
    /// [`Tx::name_owner`] and [`Tx::key_owner`] together (PostgreSQL: in
    /// one round trip).
    async fn owners(
        &mut self,
        network: &str,
        name: &str,
        key: &WgKey,
    ) -> Result<(Option<Owner>, Option<Owner>)> {
        Ok((
            self.name_owner(network, name).await?,
            self.key_owner(network, key).await?,
        ))
    }
    /// Register's loads and takes, in the order every write locks: the
    /// network (locked, as [`Tx::lock_network`]; None when there is none,
    /// and then nothing else is loaded or taken), then the enrollment key
    /// `key_id` with a use taken (as [`Tx::take_enrollment_key`]), the
    /// owners of `name` and `key` in the network (as [`Tx::owners`]) and
    /// the lowest free offset of each of the network's ranges, taken for
    /// `owner` (as [`Tx::take_lowest_free`]). The caller decides from what
    /// it loaded; a refusal undoes the takes with the rest of the write.
    /// PostgreSQL does it in one round trip when the transaction holds the
    /// log lock.
    async fn lock_for_registration(
        &mut self,
        network: &str,
        key_id: &str,
        name: &str,
        key: &WgKey,
        owner: &Owner,
    ) -> Result<Option<RegistrationLoad>> {
        lock_for_registration_stepwise(self, network, key_id, name, key, owner).await
    }
    /// Inserts a node with its token's record id and hash.
    async fn insert_node(&mut self, node: &Node, token: &NewToken) -> Result<()>;
    /// Writes a node's fields that operators and configs own: name,
    /// public_key, endpoint, listen_port, keepalive, egress, ingress, tags,
    /// update_time. (What its agent reports is [`Tx::save_report`]'s.)
    async fn update_node(&mut self, node: &Node) -> Result<()>;
    /// Writes a node's fields that its agent reports: applied_revision,
    /// wireguard_interface, host (None keeps the stored report),
    /// apply_error, failed_revision, and last_seen (never moved back).
    async fn save_report(&mut self, node: &Node) -> Result<()>;
    /// Deletes a node row (its addresses are freed separately).
    async fn delete_node(&mut self, id: &str) -> Result<()>;

    // Overlay addresses.

    /// The lowest host offset (from 1) no owner holds in a network's range
    /// of `family`. Its cost does not grow with the network's addresses: the
    /// store keeps, per network and family, an offset below which all are
    /// taken (raised by [`Tx::insert_allocation`], lowered by
    /// [`Tx::free_addresses`]) and searches from there.
    async fn lowest_free_offset(&mut self, network: &str, family: Family) -> Result<u128>;
    /// Records that `owner` holds host offset `offset`; the primary key
    /// (network, family, offset) refuses a second owner.
    async fn insert_allocation(
        &mut self,
        network: &str,
        family: Family,
        offset: u128,
        owner: &Owner,
    ) -> Result<()>;
    /// [`Tx::lowest_free_offset`] and [`Tx::insert_allocation`] together:
    /// `owner` takes the lowest free offset of `family`, which is returned
    /// (PostgreSQL: in one round trip).
    async fn take_lowest_free(
        &mut self,
        network: &str,
        family: Family,
        owner: &Owner,
    ) -> Result<u128> {
        let offset = self.lowest_free_offset(network, family).await?;
        self.insert_allocation(network, family, offset, owner)
            .await?;
        Ok(offset)
    }
    /// Frees every address an owner holds.
    async fn free_addresses(&mut self, owner_id: &str) -> Result<()>;

    // External clients.

    /// One client.
    async fn ext_client(&mut self, id: &str) -> Result<Option<ExtClient>>;
    /// The clients of an ingress gateway, ordered by name.
    async fn ext_clients_of(&mut self, ingress_node_id: &str) -> Result<Vec<ExtClient>>;
    /// Inserts a client (every field as given).
    async fn insert_ext_client(&mut self, client: &ExtClient) -> Result<()>;
    /// Writes a client's mutable fields: name, dns, enabled, tags,
    /// config_revision, update_time.
    async fn update_ext_client(&mut self, client: &ExtClient) -> Result<()>;
    /// Deletes a client row (its addresses are freed separately).
    async fn delete_ext_client(&mut self, id: &str) -> Result<()>;
    /// Sets the stored config revision of some clients.
    async fn set_client_revisions(&mut self, which: Clients<'_>, revision: u64) -> Result<()>;

    // Access policies.

    /// A network's stored policy; None when it has none.
    async fn policy(&mut self, network: &str) -> Result<Option<NetworkPolicy>>;
    /// Stores a network's policy (inserted, or replacing the one stored).
    async fn save_policy(&mut self, policy: &NetworkPolicy) -> Result<()>;

    // Custom DNS entries.

    /// One custom entry.
    async fn dns_entry(&mut self, network: &str, name: &str) -> Result<Option<DnsEntry>>;
    /// Inserts a custom entry.
    async fn insert_dns_entry(&mut self, entry: &DnsEntry) -> Result<()>;
    /// Deletes a custom entry.
    async fn delete_dns_entry(&mut self, network: &str, name: &str) -> Result<()>;

    // The event log.

    /// Appends an event and returns its revision; with `config` (and a
    /// network) the network's config revision becomes it. Appends are
    /// serialised until commit (SQLite: its one writer; PostgreSQL: a row
    /// lock on the log head), so revisions commit in order, and PostgreSQL
    /// announces the revision on commit (NOTIFY). Call it after the other
    /// writes of the transaction, so the serialised part stays short.
    /// PostgreSQL, after [`Tx::lock_log`]: numbered at once, written with
    /// the transaction's other events at commit (reads in the transaction
    /// see a node's new config revision all the same).
    async fn append(&mut self, action: Action, resource: &Resource, config: bool) -> Result<u64>;
    /// The highest revision [`Tx::append`] returned in this transaction (0
    /// when none); it may name an append a rollback to a savepoint undid.
    fn appended(&self) -> u64;
}

/// Opens the store a database URL names and runs its migrations:
/// `sqlite:PATH` (the embedded default) or `postgres://…`.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::open(url).await?))
    } else {
        Err(Error::Internal(format!(
            "unsupported database URL scheme in {:?}: use sqlite:PATH or postgres://…",
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
/// of what callers see (it is logged). Conflicts a retry resolves (unique
/// violations, serialization failures, deadlocks) become [`Error::Aborted`].
pub(crate) fn db_err(e: sqlx::Error) -> Error {
    // PostgreSQL refuses NUL in text (22021) before looking: no stored id
    // or name can hold one (the domain refuses them in what it stores), so
    // whatever was looked up with it does not exist. SQLite answers the
    // same lookups NOT_FOUND by not finding them.
    if let sqlx::Error::Database(d) = &e
        && d.code().as_deref() == Some("22021")
    {
        return Error::NotFound {
            kind: "resource",
            id: "(a value with a NUL character)".into(),
        };
    }
    if is_conflict(&e) {
        tracing::debug!(error = %e, "write conflict; the transaction is retried");
        return Error::Aborted("a concurrent change conflicted with this one; retry".into());
    }
    match &e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            tracing::warn!(error = %e, "database unavailable");
            Error::Unavailable("the database is busy or unreachable; retry".into())
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

/// Whether a database error is a conflict a retry resolves: a uniqueness
/// violation (same classification on SQLite and PostgreSQL), a
/// serialization failure (40001), a detected deadlock (40P01), or SQLite's
/// busy/locked codes, or a foreign key whose row a concurrent write just
/// deleted (23503; SQLite's 787): the retry then sees the deletion and
/// answers NOT_FOUND.
pub(crate) fn is_conflict(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(d) = e else {
        return false;
    };
    d.is_unique_violation()
        || matches!(
            d.code().as_deref(),
            Some("40001" | "40P01" | "23503" | "5" | "6" | "517" | "262" | "787")
        )
}
