//! The PostgreSQL store, shared by several meshplane replicas.
//!
//! Writes run in READ COMMITTED transactions serialised where it matters
//! by locks: a network's row ([`Tx::lock_network`]), an enrollment key's,
//! a transaction-level advisory lock for network creation, and the
//! one-row head of the event log, which a transaction locks before its
//! first append (group commit's batches: before anything) and keeps locked
//! until commit, so revisions are dense and commit in order (a batch's
//! events are written together at its commit; see `log`). Each committed
//! append is announced with NOTIFY, which the other replicas' followers
//! receive through [`Store::notifications`].
//!
//! Columns use PostgreSQL's own types (`inet`, `cidr`, arrays,
//! `timestamptz`, `bytea`, `jsonb`), decoded for the shared row decoders
//! of [`super::rows`]. Identifiers and names are `COLLATE "C"`, so lists
//! order and page byte-wise, as on SQLite.

use std::{collections::HashMap, str::FromStr, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgExecutor, PgPool, PgPoolOptions, PgRow};

use super::{
    AdminToken, LogBounds, Notifications, Store, StoredKey, Tx, db_err,
    rows::{self, Cols},
};
use crate::domain::{
    Error, Result, config::NetworkView, enrollment::EnrollmentKey, event::Event,
    ext_client::ExtClient, network::Network, node::Node, page::PageRequest, policy::NetworkPolicy,
};

/// The columns [`rows::network`] reads.
macro_rules! network_cols {
    () => {
        "name, range4, range6, keepalive, mtu, listen_port, ext_client_dns, nameservers, \
         create_time, update_time"
    };
}

/// The columns [`rows::node`] reads, from `nodes`; the host report as text.
macro_rules! node_cols {
    () => {
        "id, network, name, public_key, endpoint, listen_port, address, address6, os, \
         keepalive, egress_ranges, egress_interface, egress_nat, egress_ha::text AS egress_ha, \
         ingress, ingress_dns, \
         last_seen, applied_revision, create_time, update_time, wireguard_interface, \
         host_report::text AS host_report, apply_error, failed_revision, tags, \
         (SELECT w.revision FROM networks w WHERE w.name = nodes.network) AS config_revision"
    };
}

/// [`node_cols`] without the host report, for the nodes configs are
/// computed from (which never look at it; it can be large).
macro_rules! view_node_cols {
    () => {
        "id, network, name, public_key, endpoint, listen_port, address, address6, os, \
         keepalive, egress_ranges, egress_interface, egress_nat, egress_ha::text AS egress_ha, \
         ingress, ingress_dns, \
         last_seen, applied_revision, create_time, update_time, wireguard_interface, \
         NULL::text AS host_report, apply_error, failed_revision, tags, \
         (SELECT w.revision FROM networks w WHERE w.name = nodes.network) AS config_revision"
    };
}

/// The columns [`rows::ext_client`] reads.
macro_rules! ext_client_cols {
    () => {
        "id, network, ingress_node_id, name, public_key, sealed_private_key, address, \
         address6, dns, enabled, config_revision, downloaded_revision, create_time, \
         update_time, tags"
    };
}

/// The columns [`rows::policy`] reads.
macro_rules! policy_cols {
    () => {
        "network, policy::text AS policy, revision, update_time"
    };
}

/// The columns [`rows::enrollment_key`] reads, from `enrollment_keys k`,
/// with its networks as a `text[]` named `networks`; `key_cols!()` with
/// the hash, `key_cols!("NULL::bytea")` without (lists do not need it).
macro_rules! key_cols {
    () => {
        key_cols!("k.hash")
    };
    ($hash:literal) => {
        concat!(
            "k.id, ",
            $hash,
            " AS hash, k.description, k.uses_remaining, k.unlimited, k.expire_time, \
             k.create_time, ARRAY(SELECT n.network FROM enrollment_key_networks n \
             WHERE n.key_id = k.id ORDER BY n.network) AS networks"
        )
    };
}

/// The columns [`rows::dns_entry`] reads.
macro_rules! dns_cols {
    () => {
        "network, name, address, address6, create_time"
    };
}

mod cols;
mod log;
mod tx;

#[cfg(test)]
mod tests;

/// Connections a store opens at most unless told otherwise.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 16;

/// How long a caller waits for a free connection before the store reports
/// itself unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// PostgreSQL-backed [`Store`].
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://…` or
    /// `postgresql://…`) with at most [`DEFAULT_MAX_CONNECTIONS`]
    /// connections and migrates it.
    pub async fn open(url: &str) -> Result<Self> {
        Self::open_with(url, DEFAULT_MAX_CONNECTIONS).await
    }

    /// [`PgStore::open`] with at most `max_connections` connections (and
    /// one more for each [`Store::notifications`] stream, which keeps its
    /// own).
    ///
    /// Replicas starting at once are safe: sqlx's migrator holds a
    /// session-level advisory lock (keyed by the database name) while it
    /// checks and applies migrations, so one replica migrates and the
    /// others then find the migrations applied.
    pub async fn open_with(url: &str, max_connections: u32) -> Result<Self> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| Error::Internal(format!("bad database URL: {e}")))?;
        Self::connect(opts, max_connections).await
    }

    /// [`PgStore::open_with`] from parsed options.
    pub(crate) async fn connect(mut opts: PgConnectOptions, max_connections: u32) -> Result<Self> {
        if opts.get_application_name().is_none() {
            opts = opts.application_name("meshplane");
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(opts)
            .await
            .map_err(db_err)?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| Error::Internal(format!("migrating the database: {e}")))?;
        Ok(Self { pool })
    }
}

/// Decodes one optional row.
fn one<T>(row: Option<PgRow>, decode: fn(&dyn Cols) -> Result<T>) -> Result<Option<T>> {
    row.as_ref().map(|r| decode(r)).transpose()
}

/// Decodes rows.
fn all<T>(rows: &[PgRow], decode: fn(&dyn Cols) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(|r| decode(r)).collect()
}

/// A key row with its networks.
fn key_of(r: &PgRow) -> Result<StoredKey> {
    rows::enrollment_key(r, cols::get(r, "networks")?)
}

/// A stored count or revision, which is never negative.
fn unsigned(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::Internal(format!("stored {what} is negative: {v}")))
}

/// A count or revision as stored (`bigint`).
/// [`crate::store::Tx::save_report`]: the columns an agent's reports own;
/// last_seen never moves back (GREATEST skips NULL).
async fn save_report<'c>(ex: impl PgExecutor<'c>, node: &crate::domain::node::Node) -> Result<()> {
    sqlx::query(
        "UPDATE nodes SET applied_revision = $2, wireguard_interface = $3, \
         host_report = COALESCE($4, host_report), apply_error = $5, failed_revision = $6, \
         last_seen = GREATEST(last_seen, $7) WHERE id = $1",
    )
    .bind(&node.id)
    .bind(signed(node.applied_revision, "applied revision")?)
    .bind(node.wireguard_interface.as_deref())
    .bind(node.host.as_ref().map(sqlx::types::Json))
    .bind(node.apply_error.as_deref())
    .bind(signed(node.failed_revision, "failed revision")?)
    .bind(node.last_seen)
    .execute(ex)
    .await
    .map_err(db_err)?;
    Ok(())
}

fn signed(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v)
        .map_err(|_| Error::Internal(format!("{what} {v} is beyond what the store keeps")))
}

/// Splits a `network/name` page key (both empty from the start, as on
/// SQLite).
fn page_key(after: Option<&str>) -> (&str, &str) {
    after.and_then(|a| a.split_once('/')).unwrap_or(("", ""))
}

/// The view of `network` in `views` (by `index`, network name to
/// position).
fn view_of<'v>(
    views: &'v mut [NetworkView],
    index: &HashMap<String, usize>,
    network: &str,
) -> Result<&'v mut NetworkView> {
    index
        .get(network)
        .and_then(|&i| views.get_mut(i))
        .ok_or_else(|| Error::Internal(format!("stored row of unknown network {network:?}")))
}

/// One node, inside or outside a transaction.
async fn fetch_node<'c>(ex: impl PgExecutor<'c>, id: &str) -> Result<Option<Node>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        node_cols!(),
        " FROM nodes WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(ex)
    .await
    .map_err(db_err)?;
    one(row, rows::node)
}

/// A network's stored policy, inside or outside a transaction.
async fn fetch_policy<'c>(ex: impl PgExecutor<'c>, network: &str) -> Result<Option<NetworkPolicy>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        policy_cols!(),
        " FROM network_policies WHERE network = $1"
    ))
    .bind(network)
    .fetch_optional(ex)
    .await
    .map_err(db_err)?;
    one(row, rows::policy)
}

/// One external client, inside or outside a transaction.
async fn fetch_ext_client<'c>(ex: impl PgExecutor<'c>, id: &str) -> Result<Option<ExtClient>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        ext_client_cols!(),
        " FROM ext_clients WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(ex)
    .await
    .map_err(db_err)?;
    one(row, rows::ext_client)
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn begin(&self) -> Result<Box<dyn Tx>> {
        Ok(Box::new(tx::PgTx::begin(&self.pool).await?))
    }

    async fn get_network(&self, name: &str) -> Result<Option<Network>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            network_cols!(),
            " FROM networks WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        one(row, rows::network)
    }

    async fn list_networks(&self, page: &PageRequest) -> Result<Vec<Network>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            network_cols!(),
            " FROM networks WHERE name > $1 ORDER BY name LIMIT $2"
        ))
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        all(&rows, rows::network)
    }

    async fn get_node(&self, id: &str) -> Result<Option<Node>> {
        fetch_node(&self.pool, id).await
    }

    async fn list_nodes(&self, network: Option<&str>, page: &PageRequest) -> Result<Vec<Node>> {
        let (after_net, after_name) = page_key(page.after.as_deref());
        let rows = sqlx::query(concat!(
            "SELECT ",
            node_cols!(),
            " FROM nodes WHERE (network, name) > ($1, $2) \
             AND ($3::text IS NULL OR network = $3) ORDER BY network, name LIMIT $4"
        ))
        .bind(after_net)
        .bind(after_name)
        .bind(network)
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        all(&rows, rows::node)
    }

    async fn get_ext_client(&self, id: &str) -> Result<Option<ExtClient>> {
        fetch_ext_client(&self.pool, id).await
    }

    async fn list_ext_clients(
        &self,
        network: Option<&str>,
        ingress_node_id: Option<&str>,
        page: &PageRequest,
    ) -> Result<Vec<ExtClient>> {
        // No stored id holds a NUL (PostgreSQL could not take one as a
        // parameter): such a filter matches nothing.
        if ingress_node_id.is_some_and(|i| i.contains('\0')) {
            return Ok(Vec::new());
        }
        let (after_net, after_name) = page_key(page.after.as_deref());
        let rows = sqlx::query(concat!(
            "SELECT ",
            ext_client_cols!(),
            " FROM ext_clients WHERE (network, name) > ($1, $2) \
             AND ($3::text IS NULL OR network = $3) \
             AND ($4::text IS NULL OR ingress_node_id = $4) \
             ORDER BY network, name LIMIT $5"
        ))
        .bind(after_net)
        .bind(after_name)
        .bind(network)
        .bind(ingress_node_id)
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        all(&rows, rows::ext_client)
    }

    async fn get_policy(&self, network: &str) -> Result<Option<NetworkPolicy>> {
        fetch_policy(&self.pool, network).await
    }

    async fn get_enrollment_key(&self, id: &str) -> Result<Option<StoredKey>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            key_cols!(),
            " FROM enrollment_keys k WHERE k.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.as_ref().map(key_of).transpose()
    }

    async fn list_enrollment_keys(
        &self,
        network: Option<&str>,
        page: &PageRequest,
    ) -> Result<Vec<EnrollmentKey>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            key_cols!("NULL::bytea"),
            " FROM enrollment_keys k WHERE k.id > $1 AND ($2::text IS NULL OR EXISTS \
             (SELECT 1 FROM enrollment_key_networks n WHERE n.key_id = k.id AND n.network = $2)) \
             ORDER BY k.id LIMIT $3"
        ))
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(network)
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(|r| key_of(r).map(|k| k.key)).collect()
    }

    async fn list_admin_tokens(&self) -> Result<Vec<AdminToken>> {
        let rows =
            sqlx::query("SELECT id, name, create_time FROM admin_tokens ORDER BY create_time, id")
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(AdminToken {
                    id: r.text("id")?,
                    name: r.text("name")?,
                    create_time: r.time("create_time")?,
                })
            })
            .collect()
    }

    async fn admin_token_hash(&self, id: &str) -> Result<Option<Vec<u8>>> {
        sqlx::query_scalar("SELECT hash FROM admin_tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)
    }

    async fn node_token(&self, token_id: &str) -> Result<Option<(String, Vec<u8>)>> {
        sqlx::query_as("SELECT id, token_hash FROM nodes WHERE token_id = $1")
            .bind(token_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)
    }

    async fn load_all(&self) -> Result<(u64, Vec<NetworkView>)> {
        // One snapshot for everything: the log head and the rows it
        // describes were committed together.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(db_err)?;
        let latest: i64 = sqlx::query_scalar("SELECT revision FROM log_head")
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        let nets = sqlx::query(concat!(
            "SELECT ",
            network_cols!(),
            ", revision, (SELECT p.policy::text FROM network_policies p \
             WHERE p.network = networks.name) AS policy FROM networks ORDER BY name"
        ))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let nodes = sqlx::query(concat!(
            "SELECT ",
            view_node_cols!(),
            " FROM nodes ORDER BY network, name"
        ))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let clients = sqlx::query(concat!(
            "SELECT ",
            ext_client_cols!(),
            " FROM ext_clients ORDER BY network, name"
        ))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let entries = sqlx::query(concat!(
            "SELECT ",
            dns_cols!(),
            " FROM dns_entries ORDER BY network, name"
        ))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;

        let mut views = Vec::with_capacity(nets.len());
        let mut index = HashMap::with_capacity(nets.len());
        for r in &nets {
            let network = rows::network(r)?;
            index.insert(network.name.to_string(), views.len());
            let policy = match r.json("policy")? {
                Some(json) => rows::policy_json(network.name.as_str(), &json)?,
                None => Default::default(),
            };
            views.push(NetworkView {
                network,
                nodes: Vec::new(),
                ext_clients: Vec::new(),
                dns_entries: Vec::new(),
                revision: unsigned(r.int("revision")?, "network revision")?,
                policy,
            });
        }
        for r in &nodes {
            let node = rows::node(r)?;
            view_of(&mut views, &index, node.network.as_str())?
                .nodes
                .push(node);
        }
        for r in &clients {
            let client = rows::ext_client(r)?;
            view_of(&mut views, &index, client.network.as_str())?
                .ext_clients
                .push(client);
        }
        for r in &entries {
            let entry = rows::dns_entry(r)?;
            view_of(&mut views, &index, entry.network.as_str())?
                .dns_entries
                .push(rows::dns_record(entry));
        }
        Ok((unsigned(latest, "log head")?, views))
    }

    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        log::events_after(&self.pool, after, limit).await
    }

    async fn log_bounds(&self) -> Result<LogBounds> {
        log::bounds(&self.pool).await
    }

    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64> {
        log::prune(&self.pool, before).await
    }

    async fn notifications(&self) -> Result<Option<Notifications>> {
        log::notifications(&self.pool).await.map(Some)
    }

    async fn touch_node(&self, node_id: &str, now: DateTime<Utc>) -> Result<()> {
        // GREATEST (which skips NULL): replicas hearing from the same agent
        // never move it back.
        sqlx::query("UPDATE nodes SET last_seen = GREATEST(last_seen, $2) WHERE id = $1")
            .bind(node_id)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn save_report(&self, node: &crate::domain::node::Node) -> Result<()> {
        save_report(&self.pool, node).await
    }

    async fn mark_downloaded(&self, id: &str, revision: u64) -> Result<()> {
        sqlx::query(
            "UPDATE ext_clients SET downloaded_revision = GREATEST(downloaded_revision, $2) \
             WHERE id = $1",
        )
        .bind(id)
        .bind(signed(revision, "revision")?)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn applied_revisions(&self) -> Result<Vec<(String, u64)>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT id, applied_revision FROM nodes WHERE last_seen IS NOT NULL")
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
        Ok(rows
            .into_iter()
            .map(|(id, r)| (id, u64::try_from(r).unwrap_or(0)))
            .collect())
    }

    fn pool_stats(&self) -> super::PoolStats {
        let size = self.pool.size() as usize;
        let idle = self.pool.num_idle().min(size);
        super::PoolStats {
            idle,
            in_use: size - idle,
        }
    }

    async fn clock(&self) -> Result<DateTime<Utc>> {
        let t: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t))
    }

    async fn presence(
        &self,
        replica: &str,
        streaming: &[String],
        now: DateTime<Utc>,
        expire_before: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        let mut tx = self.pool.begin_with(tx::BEGIN).await.map_err(db_err)?;
        // This replica's rows: refreshed for the nodes it streams, gone
        // for the others. Only nodes that still exist: FOR KEY SHARE waits
        // for a concurrent delete and then skips the deleted row (instead
        // of failing the foreign key check), in id order so replicas lock
        // node rows in one order.
        sqlx::query(
            "INSERT INTO presence (node_id, replica, seen_time) \
             SELECT id, $2, $3 FROM nodes WHERE id = ANY($1) ORDER BY id FOR KEY SHARE \
             ON CONFLICT (node_id, replica) DO UPDATE SET seen_time = EXCLUDED.seen_time",
        )
        .bind(streaming)
        .bind(replica)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        sqlx::query("DELETE FROM presence WHERE replica = $1 AND NOT (node_id = ANY($2))")
            .bind(replica)
            .bind(streaming)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        // Every replica's expired rows. A row another transaction holds
        // is being refreshed by its replica or expired by another one:
        // skipping it keeps two replicas expiring each other's rows from
        // deadlocking, and the read below leaves it out if it is stale.
        sqlx::query(
            "DELETE FROM presence WHERE (node_id, replica) IN (SELECT node_id, replica \
             FROM presence WHERE seen_time < $1 FOR UPDATE SKIP LOCKED)",
        )
        .bind(expire_before)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        let ids = sqlx::query_scalar(
            "SELECT DISTINCT node_id FROM presence WHERE seen_time >= $1 ORDER BY node_id",
        )
        .bind(expire_before)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(ids)
    }

    /// Not here: a consistent copy of a PostgreSQL database is
    /// `pg_dump`'s job (it reads one snapshot while the replicas write).
    async fn backup(&self, _out: &std::path::Path) -> Result<u64> {
        Err(Error::FailedPrecondition(POSTGRES_BACKUP.into()))
    }
}

/// Why `meshplane backup` and `restore` refuse PostgreSQL, and what to use.
pub const POSTGRES_BACKUP: &str = "meshplane backup and restore copy the embedded SQLite \
     database; on PostgreSQL use its own tools: `pg_dump --format=custom --file=FILE URL` \
     takes a consistent copy while the replicas run, `pg_restore --dbname=URL FILE` \
     restores it into an empty database (see README, Backup and restore)";
