//! [`Tx`] for SQLite: one `BEGIN IMMEDIATE` transaction, loads and writes
//! in SQL only.

use async_trait::async_trait;
use sqlx::{Sqlite, Transaction};
use tokio::sync::OwnedMutexGuard;

use super::queries::{
    self, client_cols, decode, decode_one, dns_cols, endpoint_text, gateway_cols, host_json, int,
    network_cols, node_cols, node_cols_but_host, tags_text,
};
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
use crate::store::{AdminToken, Clients, Owner, StoredKey, Tx, db_err, join_ips, rows, to_micros};

/// The lowest host offset no owner holds in a network's range of one family
/// (?1 network, ?2 family), searched from the network's `free_from` hint
/// (every offset below it is taken, so the result is the lowest overall):
/// the hint itself when it is free, else the first held offset at or above
/// it whose successor is free. With an accurate hint (the usual case: it
/// moves up with every address taken) this is two index lookups, whatever
/// the number of addresses. Returns the hint too.
const LOWEST_FREE: &str = "SELECT f, CASE \
    WHEN NOT EXISTS (SELECT 1 FROM ip_allocations \
        WHERE network = ?1 AND family = ?2 AND host_offset = f) THEN f \
    ELSE (SELECT a.host_offset + 1 FROM ip_allocations a \
        WHERE a.network = ?1 AND a.family = ?2 AND a.host_offset >= f AND NOT EXISTS (\
            SELECT 1 FROM ip_allocations b WHERE b.network = ?1 AND b.family = ?2 \
            AND b.host_offset = a.host_offset + 1) \
        ORDER BY a.host_offset LIMIT 1) \
    END FROM (SELECT COALESCE((SELECT CASE ?2 WHEN 4 THEN free_from4 ELSE free_from6 END \
        FROM networks WHERE name = ?1), 1) AS f)";

/// The `networks` column holding the free-offset hint of `family`.
fn free_from(family: Family) -> &'static str {
    match family {
        Family::V4 => "free_from4",
        Family::V6 => "free_from6",
    }
}

/// One write transaction on SQLite.
///
/// It was begun with `BEGIN IMMEDIATE`, so it holds the database's single
/// write lock from the start: no other writer, in this process or another,
/// interleaves with it, and its reads see what it will write over. That is
/// why [`Tx::lock_network`] and [`Tx::enrollment_key`] are plain SELECTs
/// here.
pub struct SqliteTx {
    // Field order matters: the transaction drops (queuing its rollback)
    // before the queue lets the next writer in.
    /// The transaction; dropping it uncommitted rolls back.
    tx: Transaction<'static, Sqlite>,
    /// See [`Tx::appended`].
    appended: u64,
    /// This writer's turn in [`super::SqliteStore`]'s queue, held until
    /// commit or drop.
    _turn: OwnedMutexGuard<()>,
}

impl SqliteTx {
    /// Wraps a transaction begun with `BEGIN IMMEDIATE` while holding `turn`.
    pub(super) fn new(tx: Transaction<'static, Sqlite>, turn: OwnedMutexGuard<()>) -> Self {
        Self {
            tx,
            appended: 0,
            _turn: turn,
        }
    }
}

#[async_trait]
impl Tx for SqliteTx {
    async fn commit(self: Box<Self>) -> Result<()> {
        let SqliteTx { tx, _turn, .. } = *self;
        tx.commit().await.map_err(db_err)
    }

    async fn lock_log(&mut self) -> Result<()> {
        // BEGIN IMMEDIATE took the write lock: appends are serialised.
        Ok(())
    }

    async fn savepoint(&mut self) -> Result<()> {
        sqlx::query("SAVEPOINT mp_write")
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn keep_and_mark(&mut self) -> Result<()> {
        release_and_mark(&mut self.tx).await
    }

    async fn rollback_to_savepoint(&mut self) -> Result<()> {
        sqlx::query("ROLLBACK TO SAVEPOINT mp_write")
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    // Networks.

    /// A plain SELECT: the IMMEDIATE transaction already holds the write
    /// lock.
    async fn lock_network(&mut self, name: &str) -> Result<Option<Network>> {
        queries::network(&mut self.tx, name).await
    }

    /// The network named like `net` and those its ranges overlap, by index:
    /// those starting inside the new range, and, of a family's ranges
    /// (pairwise disjoint, which creation enforces), the one starting last
    /// before it when it reaches into it. The write lock already keeps
    /// concurrent creations out.
    async fn network_conflicts(&mut self, net: &Network) -> Result<Vec<Network>> {
        let (lo4, hi4) = queries::bounds4(net.range4).unzip();
        let (lo6, hi6) = queries::bounds6(net.range6).unzip();
        let rows = sqlx::query(concat!(
            "SELECT ",
            network_cols!(),
            " FROM networks WHERE name = ?1 \
             OR range4_lo BETWEEN ?2 AND ?3 \
             OR name = (SELECT name FROM networks WHERE range4_lo < ?2 \
                 ORDER BY range4_lo DESC LIMIT 1) AND range4_hi >= ?2 \
             OR range6_lo BETWEEN ?4 AND ?5 \
             OR name = (SELECT name FROM networks WHERE range6_lo < ?4 \
                 ORDER BY range6_lo DESC LIMIT 1) AND range6_hi >= ?4 \
             ORDER BY name"
        ))
        .bind(net.name.as_str())
        .bind(lo4)
        .bind(hi4)
        .bind(lo6)
        .bind(hi6)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db_err)?;
        decode(&rows, rows::network)
    }

    async fn insert_network(&mut self, net: &Network) -> Result<()> {
        let (lo4, hi4) = queries::bounds4(net.range4).unzip();
        let (lo6, hi6) = queries::bounds6(net.range6).unzip();
        sqlx::query(concat!(
            "INSERT INTO networks (",
            network_cols!(),
            ", revision, range4_lo, range4_hi, range6_lo, range6_hi) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)"
        ))
        .bind(net.name.as_str())
        .bind(net.range4.map(|r| r.to_string()))
        .bind(net.range6.map(|r| r.to_string()))
        .bind(i64::from(net.keepalive))
        .bind(i64::from(net.mtu))
        .bind(i64::from(net.listen_port))
        .bind(join_ips(&net.ext_client_dns))
        .bind(join_ips(&net.nameservers))
        .bind(to_micros(net.create_time))
        .bind(to_micros(net.update_time))
        .bind(lo4)
        .bind(hi4)
        .bind(lo6)
        .bind(hi6)
        .execute(&mut *self.tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn update_network(&mut self, net: &Network) -> Result<()> {
        sqlx::query(
            "UPDATE networks SET keepalive = ?, mtu = ?, listen_port = ?, ext_client_dns = ?, \
             nameservers = ?, update_time = ? WHERE name = ?",
        )
        .bind(i64::from(net.keepalive))
        .bind(i64::from(net.mtu))
        .bind(i64::from(net.listen_port))
        .bind(join_ips(&net.ext_client_dns))
        .bind(join_ips(&net.nameservers))
        .bind(to_micros(net.update_time))
        .bind(net.name.as_str())
        .execute(&mut *self.tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Deletes the network row; its nodes (and with them their clients and
    /// presence), clients, addresses, DNS entries and key memberships go
    /// with it (ON DELETE CASCADE). The event log keeps its history.
    async fn delete_network(&mut self, name: &str) -> Result<()> {
        sqlx::query("DELETE FROM networks WHERE name = ?")
            .bind(name)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    // Admin tokens.

    async fn insert_admin_token(&mut self, token: &AdminToken, hash: &[u8]) -> Result<()> {
        sqlx::query("INSERT INTO admin_tokens (id, name, hash, create_time) VALUES (?, ?, ?, ?)")
            .bind(&token.id)
            .bind(&token.name)
            .bind(hash)
            .bind(to_micros(token.create_time))
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn delete_admin_token(&mut self, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM admin_tokens WHERE id = ?")
            .bind(id)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }

    // Enrollment keys.

    /// A plain SELECT, as for [`Tx::lock_network`].
    async fn enrollment_key(&mut self, id: &str) -> Result<Option<StoredKey>> {
        queries::enrollment_key(&mut self.tx, id).await
    }

    async fn insert_enrollment_key(&mut self, key: &EnrollmentKey, hash: &[u8]) -> Result<()> {
        sqlx::query(
            "INSERT INTO enrollment_keys (id, hash, description, uses_remaining, unlimited, \
             expire_time, create_time) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&key.id)
        .bind(hash)
        .bind(&key.description)
        .bind(i64::from(key.uses_remaining))
        .bind(key.unlimited)
        .bind(key.expire_time.map(to_micros))
        .bind(to_micros(key.create_time))
        .execute(&mut *self.tx)
        .await
        .map_err(db_err)?;
        for n in &key.networks {
            sqlx::query("INSERT INTO enrollment_key_networks (key_id, network) VALUES (?, ?)")
                .bind(&key.id)
                .bind(n.as_str())
                .execute(&mut *self.tx)
                .await
                .map_err(db_err)?;
        }
        Ok(())
    }

    /// Deletes the key; its network memberships go with it (ON DELETE
    /// CASCADE).
    async fn delete_enrollment_key(&mut self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM enrollment_keys WHERE id = ?")
            .bind(id)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// An unlimited key's count is left alone (it is 0 and ignored): taking
    /// one below zero would make the key unreadable.
    async fn take_key_use(&mut self, id: &str) -> Result<bool> {
        let took = sqlx::query(
            "UPDATE enrollment_keys \
             SET uses_remaining = CASE WHEN unlimited THEN uses_remaining \
                 ELSE uses_remaining - 1 END \
             WHERE id = ? AND (unlimited OR uses_remaining > 0)",
        )
        .bind(id)
        .execute(&mut *self.tx)
        .await
        .map_err(db_err)?;
        Ok(took.rows_affected() > 0)
    }

    // Nodes.

    async fn node(&mut self, id: &str) -> Result<Option<Node>> {
        queries::node(&mut self.tx, id).await
    }

    async fn network_nodes(&mut self, network: &str) -> Result<Vec<Node>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            node_cols!(),
            " FROM nodes WHERE network = ? ORDER BY name"
        ))
        .bind(network)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db_err)?;
        decode(&rows, rows::node)
    }

    async fn name_owner(&mut self, network: &str, name: &str) -> Result<Option<Owner>> {
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT 'node', id FROM nodes WHERE network = ?1 AND name = ?2 \
             UNION ALL SELECT 'ext_client', id FROM ext_clients \
             WHERE network = ?1 AND name = ?2 \
             UNION ALL SELECT 'dns_entry', name FROM dns_entries \
             WHERE network = ?1 AND name = ?2 \
             LIMIT 1",
        )
        .bind(network)
        .bind(name)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(db_err)?;
        row.map(owner).transpose()
    }

    async fn key_owner(&mut self, network: &str, key: &WgKey) -> Result<Option<Owner>> {
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT 'node', id FROM nodes WHERE network = ?1 AND public_key = ?2 \
             UNION ALL SELECT 'ext_client', id FROM ext_clients \
             WHERE network = ?1 AND public_key = ?2 \
             LIMIT 1",
        )
        .bind(network)
        .bind(key.to_string())
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(db_err)?;
        row.map(owner).transpose()
    }

    /// Inserts every stored field of the node (its config revision is the
    /// network's; `connected` comes from presence).
    async fn insert_node(&mut self, node: &Node, token: &NewToken) -> Result<()> {
        let (egress_ranges, egress_interface, egress_nat, ingress, ingress_dns) =
            gateway_cols(node);
        sqlx::query(
            "INSERT INTO nodes (id, network, name, public_key, endpoint, listen_port, address, \
             address6, os, keepalive, egress_ranges, egress_interface, egress_nat, ingress, \
             ingress_dns, token_id, token_hash, last_seen, applied_revision, create_time, \
             update_time, wireguard_interface, host_report, apply_error, failed_revision, tags, \
             egress_ha) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&node.id)
        .bind(node.network.as_str())
        .bind(node.name.as_str())
        .bind(node.public_key.to_string())
        .bind(endpoint_text(&node.endpoint))
        .bind(i64::from(node.listen_port))
        .bind(node.address.map(|a| a.to_string()))
        .bind(node.address6.map(|a| a.to_string()))
        .bind(&node.os)
        .bind(i64::from(node.keepalive))
        .bind(egress_ranges)
        .bind(egress_interface)
        .bind(egress_nat)
        .bind(ingress)
        .bind(ingress_dns)
        .bind(&token.id)
        .bind(&token.hash[..])
        .bind(node.last_seen.map(to_micros))
        .bind(int(node.applied_revision, "applied revision")?)
        .bind(to_micros(node.create_time))
        .bind(to_micros(node.update_time))
        .bind(node.wireguard_interface.as_deref())
        .bind(host_json(node)?)
        .bind(node.apply_error.as_deref().unwrap_or_default())
        .bind(int(node.failed_revision, "failed revision")?)
        .bind(tags_text(&node.tags))
        .bind(crate::store::rows::egress_ha(node))
        .execute(&mut *self.tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn update_node(&mut self, node: &Node) -> Result<()> {
        let (egress_ranges, egress_interface, egress_nat, ingress, ingress_dns) =
            gateway_cols(node);
        sqlx::query(
            "UPDATE nodes SET name = ?, public_key = ?, endpoint = ?, listen_port = ?, \
             keepalive = ?, egress_ranges = ?, egress_interface = ?, egress_nat = ?, \
             ingress = ?, ingress_dns = ?, update_time = ?, tags = ?, egress_ha = ? WHERE id = ?",
        )
        .bind(node.name.as_str())
        .bind(node.public_key.to_string())
        .bind(endpoint_text(&node.endpoint))
        .bind(i64::from(node.listen_port))
        .bind(i64::from(node.keepalive))
        .bind(egress_ranges)
        .bind(egress_interface)
        .bind(egress_nat)
        .bind(ingress)
        .bind(ingress_dns)
        .bind(to_micros(node.update_time))
        .bind(tags_text(&node.tags))
        .bind(crate::store::rows::egress_ha(node))
        .bind(&node.id)
        .execute(&mut *self.tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn save_report(&mut self, node: &Node) -> Result<()> {
        queries::save_report(&mut *self.tx, node).await
    }

    /// Deletes the node row; its presence goes with it, and so would its
    /// clients (ON DELETE CASCADE), whose addresses the caller frees first.
    async fn delete_node(&mut self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM nodes WHERE id = ?")
            .bind(id)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    // Overlay addresses.

    /// Also lowers the work of the next search: when the lowest free offset
    /// lies above the hint, everything below it is taken, so it becomes the
    /// hint.
    async fn lowest_free_offset(&mut self, network: &str, family: Family) -> Result<u128> {
        let (hint, next): (i64, i64) = sqlx::query_as(LOWEST_FREE)
            .bind(network)
            .bind(family.as_i64())
            .fetch_one(&mut *self.tx)
            .await
            .map_err(db_err)?;
        if next != hint {
            sqlx::query(&format!(
                "UPDATE networks SET {col} = ?1 WHERE name = ?2 AND {col} < ?1",
                col = free_from(family)
            ))
            .bind(next)
            .bind(network)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
        }
        u128::try_from(next).map_err(|_| {
            Error::Internal(format!(
                "stored addresses of network {network}: bad host_offset"
            ))
        })
    }

    /// Moves the network's hint past `offset` when it named it.
    async fn insert_allocation(
        &mut self,
        network: &str,
        family: Family,
        offset: u128,
        owner: &Owner,
    ) -> Result<()> {
        let offset = i64::try_from(offset)
            .map_err(|_| Error::Internal(format!("host offset {offset} is too large to store")))?;
        sqlx::query(
            "INSERT INTO ip_allocations (network, family, host_offset, owner_kind, owner_id) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(network)
        .bind(family.as_i64())
        .bind(offset)
        .bind(owner.kind())
        .bind(owner.id())
        .execute(&mut *self.tx)
        .await
        .map_err(db_err)?;
        if let Some(next) = offset.checked_add(1) {
            sqlx::query(&format!(
                "UPDATE networks SET {col} = ?1 WHERE name = ?2 AND {col} = ?3",
                col = free_from(family)
            ))
            .bind(next)
            .bind(network)
            .bind(offset)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
        }
        Ok(())
    }

    /// Lowers each affected network's hints to the lowest offset freed.
    async fn free_addresses(&mut self, owner_id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE networks SET \
             free_from4 = MIN(free_from4, COALESCE((SELECT MIN(host_offset) FROM ip_allocations \
                 WHERE owner_id = ?1 AND network = networks.name AND family = 4), free_from4)), \
             free_from6 = MIN(free_from6, COALESCE((SELECT MIN(host_offset) FROM ip_allocations \
                 WHERE owner_id = ?1 AND network = networks.name AND family = 6), free_from6)) \
             WHERE name IN (SELECT network FROM ip_allocations WHERE owner_id = ?1)",
        )
        .bind(owner_id)
        .execute(&mut *self.tx)
        .await
        .map_err(db_err)?;
        sqlx::query("DELETE FROM ip_allocations WHERE owner_id = ?")
            .bind(owner_id)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    // External clients.

    async fn ext_client(&mut self, id: &str) -> Result<Option<ExtClient>> {
        queries::ext_client(&mut self.tx, id).await
    }

    async fn ext_clients_of(&mut self, ingress_node_id: &str) -> Result<Vec<ExtClient>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            client_cols!(),
            " FROM ext_clients WHERE ingress_node_id = ? ORDER BY name"
        ))
        .bind(ingress_node_id)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db_err)?;
        decode(&rows, rows::ext_client)
    }

    async fn insert_ext_client(&mut self, c: &ExtClient) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO ext_clients (",
            client_cols!(),
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&c.id)
        .bind(c.network.as_str())
        .bind(&c.ingress_node_id)
        .bind(c.name.as_str())
        .bind(c.public_key.to_string())
        .bind(c.sealed_private_key.as_deref())
        .bind(c.address.map(|a| a.to_string()))
        .bind(c.address6.map(|a| a.to_string()))
        .bind(join_ips(&c.dns))
        .bind(c.enabled)
        .bind(int(c.config_revision, "config revision")?)
        .bind(int(c.downloaded_revision, "downloaded revision")?)
        .bind(to_micros(c.create_time))
        .bind(to_micros(c.update_time))
        .bind(tags_text(&c.tags))
        .execute(&mut *self.tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn update_ext_client(&mut self, c: &ExtClient) -> Result<()> {
        sqlx::query(
            "UPDATE ext_clients SET name = ?, dns = ?, enabled = ?, config_revision = ?, \
             update_time = ?, tags = ? WHERE id = ?",
        )
        .bind(c.name.as_str())
        .bind(join_ips(&c.dns))
        .bind(c.enabled)
        .bind(int(c.config_revision, "config revision")?)
        .bind(to_micros(c.update_time))
        .bind(tags_text(&c.tags))
        .bind(&c.id)
        .execute(&mut *self.tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn delete_ext_client(&mut self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM ext_clients WHERE id = ?")
            .bind(id)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn set_client_revisions(&mut self, which: Clients<'_>, revision: u64) -> Result<()> {
        let (sql, key) = match which {
            Clients::One(id) => (
                "UPDATE ext_clients SET config_revision = ? WHERE id = ?",
                id,
            ),
            Clients::OfIngress(node_id) => (
                "UPDATE ext_clients SET config_revision = ? WHERE ingress_node_id = ?",
                node_id,
            ),
            Clients::OfNetwork(network) => (
                "UPDATE ext_clients SET config_revision = ? WHERE network = ?",
                network,
            ),
        };
        sqlx::query(sql)
            .bind(int(revision, "config revision")?)
            .bind(key)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    // Access policies.

    async fn policy(&mut self, network: &str) -> Result<Option<NetworkPolicy>> {
        queries::policy(&mut self.tx, network).await
    }

    async fn save_policy(&mut self, p: &NetworkPolicy) -> Result<()> {
        sqlx::query(
            "INSERT INTO network_policies (network, policy, revision, update_time) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (network) DO UPDATE SET \
             policy = ?2, revision = ?3, update_time = ?4",
        )
        .bind(p.network.as_str())
        .bind(rows::policy_to_json(&p.policy)?)
        .bind(int(p.revision, "policy revision")?)
        .bind(to_micros(p.update_time.unwrap_or_else(crate::domain::now)))
        .execute(&mut *self.tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    // Custom DNS entries.

    async fn dns_entry(&mut self, network: &str, name: &str) -> Result<Option<DnsEntry>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            dns_cols!(),
            " FROM dns_entries WHERE network = ? AND name = ?"
        ))
        .bind(network)
        .bind(name)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(db_err)?;
        decode_one(row, rows::dns_entry)
    }

    async fn insert_dns_entry(&mut self, entry: &DnsEntry) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO dns_entries (",
            dns_cols!(),
            ") VALUES (?, ?, ?, ?, ?)"
        ))
        .bind(entry.network.as_str())
        .bind(&entry.name)
        .bind(entry.address.map(|a| a.to_string()))
        .bind(entry.address6.map(|a| a.to_string()))
        .bind(to_micros(entry.create_time))
        .execute(&mut *self.tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn delete_dns_entry(&mut self, network: &str, name: &str) -> Result<()> {
        sqlx::query("DELETE FROM dns_entries WHERE network = ? AND name = ?")
            .bind(network)
            .bind(name)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    // The event log.

    /// SQLite's single writer serialises appends: the transaction holds the
    /// write lock from its BEGIN IMMEDIATE.
    async fn append(&mut self, action: Action, resource: &Resource, config: bool) -> Result<u64> {
        let revision = queries::append(&mut self.tx, action, resource, config).await?;
        self.appended = self.appended.max(revision);
        Ok(revision)
    }

    fn appended(&self) -> u64 {
        self.appended
    }
}

/// The [`Owner`] a `(kind, id)` row of `name_owner`/`key_owner` names.
fn owner((kind, id): (String, String)) -> Result<Owner> {
    match kind.as_str() {
        "node" => Ok(Owner::Node(id)),
        "ext_client" => Ok(Owner::ExtClient(id)),
        "dns_entry" => Ok(Owner::DnsEntry(id)),
        _ => Err(Error::Internal(format!("unknown owner kind {kind:?}"))),
    }
}

/// `RELEASE SAVEPOINT` and a new `SAVEPOINT`, in one round trip (a plain
/// multi-statement query).
async fn release_and_mark(conn: &mut sqlx::SqliteConnection) -> Result<()> {
    // A query text without arguments runs unprepared, which allows two
    // statements in it.
    sqlx::Executor::execute(conn, "RELEASE SAVEPOINT mp_write; SAVEPOINT mp_write")
        .await
        .map_err(db_err)?;
    Ok(())
}
