//! Write transactions on PostgreSQL: loads and writes, in READ COMMITTED,
//! serialised where it matters by row locks (see [`Tx`]).

use async_trait::async_trait;
use ipnet::IpNet;
use sqlx::{PgConnection, Postgres, Row, Transaction, postgres::PgPool, types::Json};

use super::{all, cols, fetch_ext_client, fetch_node, key_of, log, one, signed};
use crate::domain::{
    Error, Result,
    dns::DnsEntry,
    enrollment::EnrollmentKey,
    event::{Action, Resource},
    ext_client::ExtClient,
    ipam::Family,
    network::Network,
    node::{Node, WgKey},
    policy::NetworkPolicy,
    token::NewToken,
};
use crate::store::{AdminToken, Clients, Owner, RegistrationLoad, StoredKey, Tx, db_err, rows};

/// Begins every write transaction. READ COMMITTED (named, whatever the
/// server's default): each statement sees what committed before it
/// started, so a transaction that waited for a row lock then reads what
/// the holder wrote.
pub(super) const BEGIN: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";

/// The key of the transaction-level advisory lock that serialises network
/// creation ("mesh" "pnet" in ASCII; sqlx's migration lock is another).
const NETWORK_CREATE_LOCK: i64 = 0x6d65_7368_706e_6574;

/// The `networks` column holding the free-offset hint of `family`.
fn free_from(family: Family) -> &'static str {
    match family {
        Family::V4 => "free_from4",
        Family::V6 => "free_from6",
    }
}

/// The owners [`Tx::owners`] reads, as `name_kind`, `name_id`,
/// `key_kind` and `key_id`, from [`owners_joins`].
macro_rules! owners_cols {
    () => {
        "o_name.kind AS name_kind, o_name.id AS name_id, o_key.kind AS key_kind, \
         o_key.id AS key_id"
    };
}

/// Joins what holds the name `$2` (`o_name`) and the public key `$3`
/// (`o_key`) in network `$1`, onto a query of one row.
macro_rules! owners_joins {
    () => {
        "LEFT JOIN LATERAL (SELECT kind, id FROM (\
             SELECT 1 AS rank, 'node' AS kind, id FROM nodes \
             WHERE network = $1 AND name = $2 \
             UNION ALL SELECT 2, 'ext_client', id FROM ext_clients \
             WHERE network = $1 AND name = $2 \
             UNION ALL SELECT 3, 'dns_entry', name FROM dns_entries \
             WHERE network = $1 AND name = $2) o ORDER BY rank LIMIT 1) o_name ON true \
         LEFT JOIN LATERAL (SELECT kind, id FROM (\
             SELECT 1 AS rank, 'node' AS kind, id FROM nodes \
             WHERE network = $1 AND public_key = $3 \
             UNION ALL SELECT 2, 'ext_client', id FROM ext_clients \
             WHERE network = $1 AND public_key = $3) o ORDER BY rank LIMIT 1) o_key ON true"
    };
}

/// The lowest free offset of family `$fam` in network `$1`, given `$hint`
/// (every offset below it is taken): the hint itself when free, else one
/// past the first taken offset from the hint on whose successor is free.
macro_rules! lowest_free {
    ($fam:literal, $hint:literal) => {
        concat!(
            "CASE WHEN NOT EXISTS (SELECT 1 FROM ip_allocations \
                 WHERE network = $1 AND family = ",
            $fam,
            " AND host_offset = ",
            $hint,
            ") THEN ",
            $hint,
            " ELSE (SELECT a.host_offset + 1 FROM ip_allocations a \
                 WHERE a.network = $1 AND a.family = ",
            $fam,
            " AND a.host_offset >= ",
            $hint,
            " AND NOT EXISTS (SELECT 1 FROM ip_allocations b WHERE b.network = $1 \
                 AND b.family = ",
            $fam,
            " AND b.host_offset = a.host_offset + 1) \
                 ORDER BY a.host_offset LIMIT 1) END"
        )
    };
}

/// One write transaction; dropping it uncommitted rolls it back.
pub(super) struct PgTx {
    tx: Transaction<'static, Postgres>,
    /// See [`Tx::appended`].
    appended: u64,
    /// Networks whose row this transaction holds locked (by
    /// [`Tx::lock_network`] or by inserting it), so [`Tx::append`] need not
    /// lock it again; forgotten on a rollback to the savepoint, which may
    /// have released the lock.
    locked: std::collections::HashSet<String>,
    /// The log head as read under its lock ([`Tx::lock_log`]); from then
    /// on appends are numbered here and held in `pending`, and written
    /// together by [`Tx::commit`]: one statement per batch instead of one
    /// round trip per write.
    head: Option<u64>,
    /// Appends not written yet, revisions `head + 1` onwards.
    pending: Vec<log::Pending>,
    /// `pending.len()` at the savepoint: a rollback to it drops the rest.
    marked: usize,
    /// A savepoint is marked: a rollback to it could release a lock taken
    /// after it, so [`Tx::lock_log`] then leaves appends immediate.
    in_savepoint: bool,
}

impl PgTx {
    /// Begins a transaction on a connection of `pool`.
    pub(super) async fn begin(pool: &PgPool) -> Result<Self> {
        Ok(Self {
            tx: pool.begin_with(BEGIN).await.map_err(db_err)?,
            appended: 0,
            locked: std::collections::HashSet::new(),
            head: None,
            pending: Vec::new(),
            marked: 0,
            in_savepoint: false,
        })
    }

    /// The config revision of `network` an unwritten append gave it.
    fn pending_config(&self, network: &str) -> Option<u64> {
        self.pending
            .iter()
            .rev()
            .find(|e| e.config && e.network.as_deref() == Some(network))
            .map(|e| e.revision)
    }

    /// `node` as it will be after the commit: its config revision is its
    /// network's, which an unwritten append may have moved.
    fn current(&self, mut node: Node) -> Node {
        if let Some(r) = self.pending_config(node.network.as_str()) {
            node.config_revision = node.config_revision.max(r);
        }
        node
    }

    fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

/// The owner a `kind`, `id` row names.
fn owner_of(row: Option<sqlx::postgres::PgRow>) -> Result<Option<Owner>> {
    match row {
        Some(r) => owner_in(&r, "kind", "id"),
        None => Ok(None),
    }
}

/// The owner the columns `kind` and `id` of `r` name (none when NULL).
fn owner_in(r: &sqlx::postgres::PgRow, kind: &str, id: &str) -> Result<Option<Owner>> {
    let kind: Option<String> = r.try_get(kind).map_err(db_err)?;
    let id: Option<String> = r.try_get(id).map_err(db_err)?;
    let (Some(kind), Some(id)) = (kind, id) else {
        return Ok(None);
    };
    Ok(Some(match kind.as_str() {
        "node" => Owner::Node(id),
        "ext_client" => Owner::ExtClient(id),
        "dns_entry" => Owner::DnsEntry(id),
        _ => return Err(Error::Internal(format!("unknown owner kind {kind:?}"))),
    }))
}

#[async_trait]
impl Tx for PgTx {
    async fn commit(mut self: Box<Self>) -> Result<()> {
        if let Some(head) = self.head {
            let pending = std::mem::take(&mut self.pending);
            // COMMIT is not sent when this fails: nothing is durable, and
            // the batch's writes may run again.
            log::flush(self.conn(), head, &pending)
                .await
                .map_err(|e| match e {
                    Error::Unavailable(m) => Error::Aborted(m),
                    e => e,
                })?;
        }
        self.tx.commit().await.map_err(db_err)
    }

    async fn lock_log(&mut self) -> Result<()> {
        let head: i64 = sqlx::query_scalar("SELECT revision FROM log_head FOR UPDATE")
            .fetch_one(&mut *self.tx)
            .await
            .map_err(db_err)?;
        // Numbered here only when the lock is for the whole transaction
        // (no savepoint marked that a rollback could take it back with).
        if self.head.is_none() && self.pending.is_empty() && !self.in_savepoint {
            self.head = Some(super::unsigned(head, "revision")?);
        }
        Ok(())
    }

    async fn savepoint(&mut self) -> Result<()> {
        sqlx::query("SAVEPOINT mp_write")
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
        self.marked = self.pending.len();
        self.in_savepoint = true;
        Ok(())
    }

    async fn keep_and_mark(&mut self) -> Result<()> {
        release_and_mark(&mut self.tx).await?;
        self.marked = self.pending.len();
        Ok(())
    }

    async fn rollback_to_savepoint(&mut self) -> Result<()> {
        self.locked.clear();
        self.pending.truncate(self.marked);
        sqlx::query("ROLLBACK TO SAVEPOINT mp_write")
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    // Networks.

    async fn lock_network(&mut self, name: &str) -> Result<Option<Network>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            network_cols!(),
            " FROM networks WHERE name = $1 FOR UPDATE"
        ))
        .bind(name)
        .fetch_optional(self.conn())
        .await
        .map_err(db_err)?;
        let net = one(row, rows::network)?;
        if net.is_some() {
            self.locked.insert(name.to_owned());
        }
        Ok(net)
    }

    /// The network named like `net` and those its ranges overlap (`&&`,
    /// by the GiST indexes), under a lock that serialises network creation.
    async fn network_conflicts(&mut self, net: &Network) -> Result<Vec<Network>> {
        // Held until the transaction ends; the read below starts after it
        // is granted, so it sees every network created before.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(NETWORK_CREATE_LOCK)
            .execute(self.conn())
            .await
            .map_err(db_err)?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            network_cols!(),
            " FROM networks WHERE name = $1 OR range4 && $2::cidr OR range6 && $3::cidr \
             ORDER BY name"
        ))
        .bind(net.name.as_str())
        .bind(net.range4.map(|r| r.to_string()))
        .bind(net.range6.map(|r| r.to_string()))
        .fetch_all(self.conn())
        .await
        .map_err(db_err)?;
        all(&rows, rows::network)
    }

    async fn insert_network(&mut self, net: &Network) -> Result<()> {
        sqlx::query(
            "INSERT INTO networks (name, range4, range6, keepalive, mtu, listen_port, \
             ext_client_dns, nameservers, create_time, update_time, revision) \
             VALUES ($1, $2::cidr, $3::cidr, $4, $5, $6, $7, $8, $9, $10, 0)",
        )
        .bind(net.name.as_str())
        .bind(net.range4.map(IpNet::V4))
        .bind(net.range6.map(IpNet::V6))
        .bind(i64::from(net.keepalive))
        .bind(i64::from(net.mtu))
        .bind(i64::from(net.listen_port))
        .bind(&net.ext_client_dns)
        .bind(&net.nameservers)
        .bind(net.create_time)
        .bind(net.update_time)
        .execute(self.conn())
        .await
        .map_err(db_err)?;
        // Inserting the row holds its lock.
        self.locked.insert(net.name.to_string());
        Ok(())
    }

    async fn update_network(&mut self, net: &Network) -> Result<()> {
        sqlx::query(
            "UPDATE networks SET keepalive = $2, mtu = $3, listen_port = $4, \
             ext_client_dns = $5, nameservers = $6, update_time = $7 WHERE name = $1",
        )
        .bind(net.name.as_str())
        .bind(i64::from(net.keepalive))
        .bind(i64::from(net.mtu))
        .bind(i64::from(net.listen_port))
        .bind(&net.ext_client_dns)
        .bind(&net.nameservers)
        .bind(net.update_time)
        .execute(self.conn())
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn delete_network(&mut self, name: &str) -> Result<()> {
        // Nodes (and their presence), clients, addresses, DNS entries and
        // key memberships go with it: ON DELETE CASCADE.
        sqlx::query("DELETE FROM networks WHERE name = $1")
            .bind(name)
            .execute(self.conn())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    // Admin tokens.

    async fn insert_admin_token(&mut self, token: &AdminToken, hash: &[u8]) -> Result<()> {
        sqlx::query(
            "INSERT INTO admin_tokens (id, name, hash, create_time) VALUES ($1, $2, $3, $4)",
        )
        .bind(&token.id)
        .bind(&token.name)
        .bind(hash)
        .bind(token.create_time)
        .execute(self.conn())
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn delete_admin_token(&mut self, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM admin_tokens WHERE id = $1")
            .bind(id)
            .execute(self.conn())
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }

    // Enrollment keys.

    async fn enrollment_key(&mut self, id: &str) -> Result<Option<StoredKey>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            key_cols!(),
            " FROM enrollment_keys k WHERE k.id = $1 FOR UPDATE OF k"
        ))
        .bind(id)
        .fetch_optional(self.conn())
        .await
        .map_err(db_err)?;
        row.as_ref().map(key_of).transpose()
    }

    async fn insert_enrollment_key(&mut self, key: &EnrollmentKey, hash: &[u8]) -> Result<()> {
        sqlx::query(
            "INSERT INTO enrollment_keys (id, hash, description, uses_remaining, unlimited, \
             expire_time, create_time) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&key.id)
        .bind(hash)
        .bind(&key.description)
        .bind(i64::from(key.uses_remaining))
        .bind(key.unlimited)
        .bind(key.expire_time)
        .bind(key.create_time)
        .execute(self.conn())
        .await
        .map_err(db_err)?;
        let networks: Vec<&str> = key.networks.iter().map(|n| n.as_str()).collect();
        // A network named twice is one membership, not a conflict to retry.
        sqlx::query(
            "INSERT INTO enrollment_key_networks (key_id, network) \
             SELECT $1, n FROM unnest($2::text[]) AS n ON CONFLICT DO NOTHING",
        )
        .bind(&key.id)
        .bind(networks)
        .execute(self.conn())
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn delete_enrollment_key(&mut self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM enrollment_keys WHERE id = $1")
            .bind(id)
            .execute(self.conn())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn take_key_use(&mut self, id: &str) -> Result<bool> {
        // An unlimited key keeps its count (which may be 0: the CHECK
        // forbids going below).
        let done = sqlx::query(
            "UPDATE enrollment_keys SET uses_remaining = CASE WHEN unlimited \
             THEN uses_remaining ELSE uses_remaining - 1 END \
             WHERE id = $1 AND (unlimited OR uses_remaining > 0)",
        )
        .bind(id)
        .execute(self.conn())
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }

    /// One statement: the key as it was, locked, and its use taken.
    async fn take_enrollment_key(&mut self, id: &str) -> Result<Option<StoredKey>> {
        let row = sqlx::query(concat!(
            "WITH k AS (SELECT ",
            key_cols!(),
            " FROM enrollment_keys k WHERE k.id = $1 FOR UPDATE OF k), \
             took AS (UPDATE enrollment_keys e SET uses_remaining = e.uses_remaining - 1 \
                 FROM k WHERE e.id = k.id AND NOT k.unlimited AND k.uses_remaining > 0) \
             SELECT * FROM k"
        ))
        .bind(id)
        .fetch_optional(self.conn())
        .await
        .map_err(db_err)?;
        row.as_ref().map(key_of).transpose()
    }

    // Nodes.

    async fn node(&mut self, id: &str) -> Result<Option<Node>> {
        let node = fetch_node(self.conn(), id).await?;
        Ok(node.map(|n| self.current(n)))
    }

    async fn network_nodes(&mut self, network: &str) -> Result<Vec<Node>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            node_cols!(),
            " FROM nodes WHERE network = $1 ORDER BY name"
        ))
        .bind(network)
        .fetch_all(self.conn())
        .await
        .map_err(db_err)?;
        let nodes = all(&rows, rows::node)?;
        Ok(nodes.into_iter().map(|n| self.current(n)).collect())
    }

    async fn name_owner(&mut self, network: &str, name: &str) -> Result<Option<Owner>> {
        let row = sqlx::query(
            "SELECT kind, id FROM (\
             SELECT 1 AS rank, 'node' AS kind, id FROM nodes WHERE network = $1 AND name = $2 \
             UNION ALL SELECT 2, 'ext_client', id FROM ext_clients \
             WHERE network = $1 AND name = $2 \
             UNION ALL SELECT 3, 'dns_entry', name FROM dns_entries \
             WHERE network = $1 AND name = $2) o ORDER BY rank LIMIT 1",
        )
        .bind(network)
        .bind(name)
        .fetch_optional(self.conn())
        .await
        .map_err(db_err)?;
        owner_of(row)
    }

    async fn key_owner(&mut self, network: &str, key: &WgKey) -> Result<Option<Owner>> {
        let row = sqlx::query(
            "SELECT kind, id FROM (\
             SELECT 1 AS rank, 'node' AS kind, id FROM nodes \
             WHERE network = $1 AND public_key = $2 \
             UNION ALL SELECT 2, 'ext_client', id FROM ext_clients \
             WHERE network = $1 AND public_key = $2) o ORDER BY rank LIMIT 1",
        )
        .bind(network)
        .bind(key.to_string())
        .fetch_optional(self.conn())
        .await
        .map_err(db_err)?;
        owner_of(row)
    }

    /// One statement.
    async fn owners(
        &mut self,
        network: &str,
        name: &str,
        key: &WgKey,
    ) -> Result<(Option<Owner>, Option<Owner>)> {
        let row = sqlx::query(concat!(
            "SELECT ",
            owners_cols!(),
            " FROM (SELECT 1) one ",
            owners_joins!()
        ))
        .bind(network)
        .bind(name)
        .bind(key.to_string())
        .fetch_one(self.conn())
        .await
        .map_err(db_err)?;
        Ok((
            owner_in(&row, "name_kind", "name_id")?,
            owner_in(&row, "key_kind", "key_id")?,
        ))
    }

    /// One statement when the transaction holds the log lock (every
    /// group-commit batch does): the network locked first (the key's lookup
    /// waits for it), then the key's use, the owners and the addresses.
    /// One statement reads with one snapshot, taken before its locks are
    /// granted; under the log lock that is safe because every transaction
    /// that writes networks, nodes, clients, DNS entries, addresses or
    /// enrollment keys holds the log lock too (see [`Tx::lock_log`]), so
    /// each one that could change what this reads committed before the
    /// lock was granted. Without it, one step at a time.
    async fn lock_for_registration(
        &mut self,
        network: &str,
        key_id: &str,
        name: &str,
        key: &WgKey,
        owner: &Owner,
    ) -> Result<Option<RegistrationLoad>> {
        if self.head.is_none() {
            return crate::store::lock_for_registration_stepwise(
                self, network, key_id, name, key, owner,
            )
            .await;
        }
        let row = sqlx::query(concat!(
            "WITH net AS (SELECT ",
            network_cols!(),
            ", free_from4, free_from6 FROM networks WHERE name = $1 FOR UPDATE), \
             k AS (SELECT ",
            key_cols!(),
            " FROM enrollment_keys k WHERE k.id = $4 AND EXISTS (SELECT 1 FROM net) \
                 FOR UPDATE OF k), \
             took AS (UPDATE enrollment_keys e SET uses_remaining = e.uses_remaining - 1 \
                 FROM k WHERE e.id = k.id AND NOT k.unlimited AND k.uses_remaining > 0), \
             pick AS (SELECT 4 AS family, (",
            lowest_free!("4", "net.free_from4"),
            ") AS off FROM net WHERE net.range4 IS NOT NULL \
                 UNION ALL SELECT 6, (",
            lowest_free!("6", "net.free_from6"),
            ") FROM net WHERE net.range6 IS NOT NULL), \
             ins AS (INSERT INTO ip_allocations \
                 (network, family, host_offset, owner_kind, owner_id) \
                 SELECT $1, family, off, $5, $6 FROM pick RETURNING family, host_offset), \
             moved AS (UPDATE networks w SET \
                 free_from4 = COALESCE((SELECT i.host_offset + 1 FROM ins i \
                     WHERE i.family = 4 AND i.host_offset < 9223372036854775807), w.free_from4), \
                 free_from6 = COALESCE((SELECT i.host_offset + 1 FROM ins i \
                     WHERE i.family = 6 AND i.host_offset < 9223372036854775807), w.free_from6) \
                 WHERE w.name = $1 AND EXISTS (SELECT 1 FROM ins)) \
             SELECT net.*, k.id IS NOT NULL AS key_found, k.id AS k_id, k.hash AS k_hash, \
                 k.description AS k_description, k.uses_remaining AS k_uses_remaining, \
                 k.unlimited AS k_unlimited, k.expire_time AS k_expire_time, \
                 k.create_time AS k_create_time, k.networks AS k_networks, \
                 (SELECT host_offset FROM ins WHERE family = 4) AS offset4, \
                 (SELECT host_offset FROM ins WHERE family = 6) AS offset6, ",
            owners_cols!(),
            " FROM net LEFT JOIN k ON true ",
            owners_joins!()
        ))
        .bind(network)
        .bind(name)
        .bind(key.to_string())
        .bind(key_id)
        .bind(owner.kind())
        .bind(owner.id())
        .fetch_optional(self.conn())
        .await
        .map_err(db_err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let net = rows::network(&row)?;
        self.locked.insert(net.name.to_string());
        let stored = if cols::get::<bool>(&row, "key_found")? {
            let prefixed = cols::Prefixed {
                row: &row,
                prefix: "k_",
            };
            Some(rows::enrollment_key(
                &prefixed,
                cols::get(&row, "k_networks")?,
            )?)
        } else {
            None
        };
        let offset = |col: &str| -> Result<Option<u128>> {
            cols::get::<Option<i64>>(&row, col)?
                .map(|o| {
                    u128::try_from(o)
                        .map_err(|_| Error::Internal(format!("stored offset {o} is negative")))
                })
                .transpose()
        };
        let (offset4, offset6) = (offset("offset4")?, offset("offset6")?);
        if offset4.is_some() != net.range4.is_some() || offset6.is_some() != net.range6.is_some() {
            return Err(Error::Internal(format!(
                "network {network:?}: no free offset found for one of its ranges"
            )));
        }
        Ok(Some(RegistrationLoad {
            network: net,
            key: stored,
            name_owner: owner_in(&row, "name_kind", "name_id")?,
            key_owner: owner_in(&row, "key_kind", "key_id")?,
            offset4,
            offset6,
        }))
    }

    async fn insert_node(&mut self, node: &Node, token: &NewToken) -> Result<()> {
        let egress = node.egress.as_ref();
        let ingress = node.ingress.as_ref();
        sqlx::query(
            "INSERT INTO nodes (id, network, name, public_key, endpoint, listen_port, address, \
             address6, os, keepalive, egress_ranges, egress_interface, egress_nat, ingress, \
             ingress_dns, token_id, token_hash, last_seen, applied_revision, create_time, \
             update_time, wireguard_interface, host_report, apply_error, failed_revision, tags, \
             egress_ha) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::cidr[], $12, $13, $14, $15, \
             $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27::jsonb)",
        )
        .bind(&node.id)
        .bind(node.network.as_str())
        .bind(node.name.as_str())
        .bind(node.public_key.to_string())
        .bind(node.endpoint.as_ref().map(ToString::to_string))
        .bind(i64::from(node.listen_port))
        .bind(node.address.map(std::net::IpAddr::V4))
        .bind(node.address6.map(std::net::IpAddr::V6))
        .bind(&node.os)
        .bind(i64::from(node.keepalive))
        .bind(egress.map(|e| e.ranges.clone()))
        .bind(egress.map(|e| e.interface.as_str()).unwrap_or_default())
        .bind(egress.is_none_or(|e| e.nat))
        .bind(ingress.is_some())
        .bind(
            ingress
                .map(|i| i.ext_client_dns.clone())
                .unwrap_or_default(),
        )
        .bind(&token.id)
        .bind(&token.hash[..])
        .bind(node.last_seen)
        .bind(signed(node.applied_revision, "applied revision")?)
        .bind(node.create_time)
        .bind(node.update_time)
        .bind(node.wireguard_interface.as_deref())
        .bind(node.host.as_ref().map(Json))
        .bind(node.apply_error.as_deref())
        .bind(signed(node.failed_revision, "failed revision")?)
        .bind(tag_strings(&node.tags))
        .bind(crate::store::rows::egress_ha(node))
        .execute(self.conn())
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn update_node(&mut self, node: &Node) -> Result<()> {
        let egress = node.egress.as_ref();
        let ingress = node.ingress.as_ref();
        sqlx::query(
            "UPDATE nodes SET name = $2, public_key = $3, endpoint = $4, listen_port = $5, \
             keepalive = $6, egress_ranges = $7::cidr[], egress_interface = $8, \
             egress_nat = $9, ingress = $10, ingress_dns = $11, update_time = $12, \
             tags = $13, egress_ha = $14::jsonb WHERE id = $1",
        )
        .bind(&node.id)
        .bind(node.name.as_str())
        .bind(node.public_key.to_string())
        .bind(node.endpoint.as_ref().map(ToString::to_string))
        .bind(i64::from(node.listen_port))
        .bind(i64::from(node.keepalive))
        .bind(egress.map(|e| e.ranges.clone()))
        .bind(egress.map(|e| e.interface.as_str()).unwrap_or_default())
        .bind(egress.is_none_or(|e| e.nat))
        .bind(ingress.is_some())
        .bind(
            ingress
                .map(|i| i.ext_client_dns.clone())
                .unwrap_or_default(),
        )
        .bind(node.update_time)
        .bind(tag_strings(&node.tags))
        .bind(crate::store::rows::egress_ha(node))
        .execute(self.conn())
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn save_report(&mut self, node: &Node) -> Result<()> {
        super::save_report(self.conn(), node).await
    }

    async fn delete_node(&mut self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM nodes WHERE id = $1")
            .bind(id)
            .execute(self.conn())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    // Overlay addresses.

    /// Searched from the network's `free_from` hint (every offset below it
    /// is taken): the hint when free, else the first held offset at or
    /// above it whose successor is free; two index lookups with an accurate
    /// hint, whatever the number of addresses. When the result lies above
    /// the hint it becomes the hint.
    async fn lowest_free_offset(&mut self, network: &str, family: Family) -> Result<u128> {
        let col = free_from(family);
        let row: (i64, Option<i64>) = sqlx::query_as(
            "SELECT h.f, CASE WHEN NOT EXISTS (SELECT 1 FROM ip_allocations \
                 WHERE network = $1 AND family = $2 AND host_offset = h.f) THEN h.f \
             ELSE (SELECT a.host_offset + 1 FROM ip_allocations a \
                 WHERE a.network = $1 AND a.family = $2 AND a.host_offset >= h.f AND NOT EXISTS (\
                     SELECT 1 FROM ip_allocations b WHERE b.network = $1 AND b.family = $2 \
                     AND b.host_offset = a.host_offset + 1) \
                 ORDER BY a.host_offset LIMIT 1) \
             END \
             FROM (SELECT COALESCE((SELECT CASE WHEN $2 = 4 THEN free_from4 ELSE free_from6 END \
                 FROM networks WHERE name = $1), 1)::bigint AS f) h",
        )
        .bind(network)
        .bind(family.as_i64())
        .fetch_one(self.conn())
        .await
        .map_err(db_err)?;
        let (hint, next) = row;
        let next = next.filter(|&n| n >= 1).ok_or_else(|| {
            Error::Internal(format!(
                "bad free host offset {next:?} in network {network:?}"
            ))
        })?;
        if next != hint {
            sqlx::query(&format!(
                "UPDATE networks SET {col} = $1 WHERE name = $2 AND {col} < $1"
            ))
            .bind(next)
            .bind(network)
            .execute(self.conn())
            .await
            .map_err(db_err)?;
        }
        u128::try_from(next).map_err(|_| {
            Error::Internal(format!(
                "bad free host offset {next} in network {network:?}"
            ))
        })
    }

    /// One statement: the lowest free offset from the hint (as in
    /// [`Tx::lowest_free_offset`]), taken, and the hint moved past it (all
    /// below it are taken).
    async fn take_lowest_free(
        &mut self,
        network: &str,
        family: Family,
        owner: &Owner,
    ) -> Result<u128> {
        let col = free_from(family);
        let offset: Option<i64> = sqlx::query_scalar(&format!(
            concat!(
                "WITH h AS (SELECT {col} AS f FROM networks WHERE name = $1), \
                 pick AS (SELECT (",
                lowest_free!("$2", "h.f"),
                ") AS off FROM h), \
                 ins AS (INSERT INTO ip_allocations \
                     (network, family, host_offset, owner_kind, owner_id) \
                     SELECT $1, $2, off, $3, $4 FROM pick RETURNING host_offset), \
                 moved AS (UPDATE networks SET {col} = ins.host_offset + 1 FROM ins \
                     WHERE name = $1 AND ins.host_offset < 9223372036854775807) \
                 SELECT host_offset FROM ins"
            ),
            col = col
        ))
        .bind(network)
        .bind(family.as_i64())
        .bind(owner.kind())
        .bind(owner.id())
        .fetch_optional(self.conn())
        .await
        .map_err(db_err)?;
        offset
            .and_then(|o| u128::try_from(o).ok())
            .ok_or_else(|| Error::Internal(format!("network {network:?} is gone")))
    }

    /// Moves the network's hint past `offset` when it named it (one
    /// statement).
    async fn insert_allocation(
        &mut self,
        network: &str,
        family: Family,
        offset: u128,
        owner: &Owner,
    ) -> Result<()> {
        let offset = i64::try_from(offset).map_err(|_| {
            Error::Internal(format!(
                "host offset {offset} is beyond what the store keeps"
            ))
        })?;
        let col = free_from(family);
        sqlx::query(&format!(
            "WITH ins AS (INSERT INTO ip_allocations \
                 (network, family, host_offset, owner_kind, owner_id) \
                 VALUES ($1, $2, $3, $4, $5) RETURNING host_offset) \
             UPDATE networks SET {col} = ins.host_offset + 1 FROM ins \
             WHERE name = $1 AND {col} = ins.host_offset \
             AND ins.host_offset < 9223372036854775807"
        ))
        .bind(network)
        .bind(family.as_i64())
        .bind(offset)
        .bind(owner.kind())
        .bind(owner.id())
        .execute(self.conn())
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Lowers each affected network's hints to the lowest offset freed (one
    /// statement).
    async fn free_addresses(&mut self, owner_id: &str) -> Result<()> {
        sqlx::query(
            "WITH gone AS (DELETE FROM ip_allocations WHERE owner_id = $1 \
                 RETURNING network, family, host_offset), \
             low AS (SELECT network, \
                 MIN(host_offset) FILTER (WHERE family = 4) AS m4, \
                 MIN(host_offset) FILTER (WHERE family = 6) AS m6 \
                 FROM gone GROUP BY network) \
             UPDATE networks n SET \
                 free_from4 = LEAST(n.free_from4, COALESCE(low.m4, n.free_from4)), \
                 free_from6 = LEAST(n.free_from6, COALESCE(low.m6, n.free_from6)) \
             FROM low WHERE n.name = low.network",
        )
        .bind(owner_id)
        .execute(self.conn())
        .await
        .map_err(db_err)?;
        Ok(())
    }

    // External clients.

    async fn ext_client(&mut self, id: &str) -> Result<Option<ExtClient>> {
        fetch_ext_client(self.conn(), id).await
    }

    async fn ext_clients_of(&mut self, ingress_node_id: &str) -> Result<Vec<ExtClient>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            ext_client_cols!(),
            " FROM ext_clients WHERE ingress_node_id = $1 ORDER BY name"
        ))
        .bind(ingress_node_id)
        .fetch_all(self.conn())
        .await
        .map_err(db_err)?;
        all(&rows, rows::ext_client)
    }

    async fn insert_ext_client(&mut self, client: &ExtClient) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO ext_clients (",
            ext_client_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        ))
        .bind(&client.id)
        .bind(client.network.as_str())
        .bind(&client.ingress_node_id)
        .bind(client.name.as_str())
        .bind(client.public_key.to_string())
        .bind(client.sealed_private_key.as_deref())
        .bind(client.address.map(std::net::IpAddr::V4))
        .bind(client.address6.map(std::net::IpAddr::V6))
        .bind(&client.dns)
        .bind(client.enabled)
        .bind(signed(client.config_revision, "config revision")?)
        .bind(signed(client.downloaded_revision, "downloaded revision")?)
        .bind(client.create_time)
        .bind(client.update_time)
        .bind(tag_strings(&client.tags))
        .execute(self.conn())
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn update_ext_client(&mut self, client: &ExtClient) -> Result<()> {
        sqlx::query(
            "UPDATE ext_clients SET name = $2, dns = $3, enabled = $4, config_revision = $5, \
             update_time = $6, tags = $7 WHERE id = $1",
        )
        .bind(&client.id)
        .bind(client.name.as_str())
        .bind(&client.dns)
        .bind(client.enabled)
        .bind(signed(client.config_revision, "config revision")?)
        .bind(client.update_time)
        .bind(tag_strings(&client.tags))
        .execute(self.conn())
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn delete_ext_client(&mut self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM ext_clients WHERE id = $1")
            .bind(id)
            .execute(self.conn())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn set_client_revisions(&mut self, which: Clients<'_>, revision: u64) -> Result<()> {
        let (sql, key) = match which {
            Clients::One(id) => (
                "UPDATE ext_clients SET config_revision = $1 WHERE id = $2",
                id,
            ),
            Clients::OfIngress(node) => (
                "UPDATE ext_clients SET config_revision = $1 WHERE ingress_node_id = $2",
                node,
            ),
            Clients::OfNetwork(network) => (
                "UPDATE ext_clients SET config_revision = $1 WHERE network = $2",
                network,
            ),
        };
        sqlx::query(sql)
            .bind(signed(revision, "config revision")?)
            .bind(key)
            .execute(self.conn())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    // Access policies.

    async fn policy(&mut self, network: &str) -> Result<Option<NetworkPolicy>> {
        super::fetch_policy(self.conn(), network).await
    }

    async fn save_policy(&mut self, p: &NetworkPolicy) -> Result<()> {
        sqlx::query(
            "INSERT INTO network_policies (network, policy, revision, update_time) \
             VALUES ($1, $2::jsonb, $3, $4) ON CONFLICT (network) DO UPDATE SET \
             policy = EXCLUDED.policy, revision = EXCLUDED.revision, \
             update_time = EXCLUDED.update_time",
        )
        .bind(p.network.as_str())
        .bind(rows::policy_to_json(&p.policy)?)
        .bind(signed(p.revision, "policy revision")?)
        .bind(p.update_time.unwrap_or_else(crate::domain::now))
        .execute(self.conn())
        .await
        .map_err(db_err)?;
        Ok(())
    }

    // Custom DNS entries.

    async fn dns_entry(&mut self, network: &str, name: &str) -> Result<Option<DnsEntry>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            dns_cols!(),
            " FROM dns_entries WHERE network = $1 AND name = $2"
        ))
        .bind(network)
        .bind(name)
        .fetch_optional(self.conn())
        .await
        .map_err(db_err)?;
        one(row, rows::dns_entry)
    }

    async fn insert_dns_entry(&mut self, entry: &DnsEntry) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO dns_entries (",
            dns_cols!(),
            ") VALUES ($1, $2, $3, $4, $5)"
        ))
        .bind(entry.network.as_str())
        .bind(&entry.name)
        .bind(entry.address.map(std::net::IpAddr::V4))
        .bind(entry.address6.map(std::net::IpAddr::V6))
        .bind(entry.create_time)
        .execute(self.conn())
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn delete_dns_entry(&mut self, network: &str, name: &str) -> Result<()> {
        sqlx::query("DELETE FROM dns_entries WHERE network = $1 AND name = $2")
            .bind(network)
            .bind(name)
            .execute(self.conn())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    // The event log.

    async fn append(&mut self, action: Action, resource: &Resource, config: bool) -> Result<u64> {
        let revision = if let Some(head) = self.head {
            // Holding the log head: the next revision is known here, and
            // the event is written at commit with the others.
            let revision = head + self.pending.len() as u64 + 1;
            self.pending
                .push(log::Pending::new(revision, action, resource, config)?);
            revision
        } else {
            let locked = resource.network().is_some_and(|n| self.locked.contains(&n));
            log::append(self.conn(), action, resource, config, locked).await?
        };
        self.appended = self.appended.max(revision);
        Ok(revision)
    }

    fn appended(&self) -> u64 {
        self.appended
    }
}

/// `RELEASE SAVEPOINT` and a new `SAVEPOINT`, in one round trip (a plain
/// multi-statement query).
async fn release_and_mark(conn: &mut sqlx::PgConnection) -> Result<()> {
    // A query text without arguments runs unprepared, which allows two
    // statements in it.
    sqlx::Executor::execute(conn, "RELEASE SAVEPOINT mp_write; SAVEPOINT mp_write")
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Tags as a `text[]`.
fn tag_strings(tags: &[crate::domain::policy::Tag]) -> Vec<String> {
    tags.iter().map(ToString::to_string).collect()
}
