//! [`Store`] for SQLite: reads outside transactions, the event log,
//! presence and the small writes.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::SqliteConnection;

use super::{
    SqliteStore,
    queries::{
        self, client_cols, decode, dns_cols, event_cols, int, key_cols_but_hash, key_of,
        network_cols, node_cols, node_cols_but_host, page_key, view_node_cols,
    },
    tx::SqliteTx,
};
use crate::domain::{
    Result, config::NetworkView, enrollment::EnrollmentKey, event::Event, ext_client::ExtClient,
    network::Network, node::Node, page::PageRequest, policy::NetworkPolicy,
};
use crate::store::{
    AdminToken, LogBounds, Notifications, PoolStats, Store, StoredKey, Tx, db_err,
    rows::{self, Cols},
    to_micros,
};

impl SqliteStore {
    /// A pooled connection for a read.
    async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Sqlite>> {
        self.pool.acquire().await.map_err(db_err)
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    /// Takes this writer's turn in the queue, then `BEGIN IMMEDIATE`.
    async fn begin(&self) -> Result<Box<dyn Tx>> {
        let (turn, tx) = self.begin_immediate().await?;
        Ok(Box::new(SqliteTx::new(tx, turn)))
    }

    // Reads.

    async fn get_network(&self, name: &str) -> Result<Option<Network>> {
        queries::network(&mut *self.conn().await?, name).await
    }

    async fn list_networks(&self, page: &PageRequest) -> Result<Vec<Network>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            network_cols!(),
            " FROM networks WHERE name > ? ORDER BY name LIMIT ?"
        ))
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        decode(&rows, rows::network)
    }

    async fn get_node(&self, id: &str) -> Result<Option<Node>> {
        queries::node(&mut *self.conn().await?, id).await
    }

    async fn list_nodes(&self, network: Option<&str>, page: &PageRequest) -> Result<Vec<Node>> {
        let (after_net, after_name) = page_key(page.after.as_deref());
        let rows = sqlx::query(concat!(
            "SELECT ",
            node_cols!(),
            " FROM nodes WHERE (network, name) > (?1, ?2) \
             AND (?3 IS NULL OR network = ?3) ORDER BY network, name LIMIT ?4"
        ))
        .bind(after_net)
        .bind(after_name)
        .bind(network)
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        decode(&rows, rows::node)
    }

    async fn get_ext_client(&self, id: &str) -> Result<Option<ExtClient>> {
        queries::ext_client(&mut *self.conn().await?, id).await
    }

    async fn list_ext_clients(
        &self,
        network: Option<&str>,
        ingress_node_id: Option<&str>,
        page: &PageRequest,
    ) -> Result<Vec<ExtClient>> {
        let (after_net, after_name) = page_key(page.after.as_deref());
        let rows = sqlx::query(concat!(
            "SELECT ",
            client_cols!(),
            " FROM ext_clients WHERE (network, name) > (?1, ?2) \
             AND (?3 IS NULL OR network = ?3) AND (?4 IS NULL OR ingress_node_id = ?4) \
             ORDER BY network, name LIMIT ?5"
        ))
        .bind(after_net)
        .bind(after_name)
        .bind(network)
        .bind(ingress_node_id)
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        decode(&rows, rows::ext_client)
    }

    async fn get_policy(&self, network: &str) -> Result<Option<NetworkPolicy>> {
        queries::policy(&mut *self.conn().await?, network).await
    }

    async fn get_enrollment_key(&self, id: &str) -> Result<Option<StoredKey>> {
        queries::enrollment_key(&mut *self.conn().await?, id).await
    }

    /// Lists never read the hashes.
    async fn list_enrollment_keys(
        &self,
        network: Option<&str>,
        page: &PageRequest,
    ) -> Result<Vec<EnrollmentKey>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            key_cols_but_hash!(),
            ", NULL AS hash FROM enrollment_keys k WHERE k.id > ?1 AND (?2 IS NULL OR \
             EXISTS (SELECT 1 FROM enrollment_key_networks n \
             WHERE n.key_id = k.id AND n.network = ?2)) ORDER BY k.id LIMIT ?3"
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
        sqlx::query_scalar("SELECT hash FROM admin_tokens WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)
    }

    async fn node_token(&self, token_id: &str) -> Result<Option<(String, Vec<u8>)>> {
        sqlx::query_as("SELECT id, token_hash FROM nodes WHERE token_id = ?")
            .bind(token_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)
    }

    /// One read transaction: under WAL, every statement in it reads the
    /// same snapshot, so the cursor and the views agree.
    async fn load_all(&self) -> Result<(u64, Vec<NetworkView>)> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let loaded = load_views(&mut tx).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(loaded)
    }

    // The event log.

    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            event_cols!(),
            " FROM events WHERE revision > ? ORDER BY revision LIMIT ?"
        ))
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        decode(&rows, rows::event)
    }

    async fn log_bounds(&self) -> Result<LogBounds> {
        queries::log_bounds(&mut *self.conn().await?).await
    }

    /// Keeps the newest event, as the trait promises, though
    /// [`Store::log_bounds`] does not depend on it (`sqlite_sequence`
    /// remembers the newest revision).
    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64> {
        let _turn = self.queue.lock().await;
        let done = sqlx::query(
            "DELETE FROM events WHERE \
             revision <= (SELECT MAX(revision) FROM events WHERE event_time < ?) \
             AND revision < (SELECT MAX(revision) FROM events)",
        )
        .bind(to_micros(before))
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected())
    }

    /// One process: the follower polls the log.
    async fn notifications(&self) -> Result<Option<Notifications>> {
        Ok(None)
    }

    // Small writes.

    async fn touch_node(&self, node_id: &str, now: DateTime<Utc>) -> Result<()> {
        let _turn = self.queue.lock().await;
        sqlx::query("UPDATE nodes SET last_seen = MAX(COALESCE(last_seen, 0), ?) WHERE id = ?")
            .bind(to_micros(now))
            .bind(node_id)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn save_report(&self, node: &Node) -> Result<()> {
        let _turn = self.queue.lock().await;
        queries::save_report(&self.pool, node).await
    }

    async fn mark_downloaded(&self, id: &str, revision: u64) -> Result<()> {
        let _turn = self.queue.lock().await;
        sqlx::query(
            "UPDATE ext_clients SET downloaded_revision = MAX(downloaded_revision, ?) WHERE id = ?",
        )
        .bind(int(revision, "downloaded revision")?)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// The node ids travel as one JSON array (`json_each`), so any number of
    /// them takes one statement and no bind-parameter limit applies. Ids of
    /// nodes that no longer exist are skipped.
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

    fn pool_stats(&self) -> PoolStats {
        let size = self.pool.size() as usize;
        let idle = self.pool.num_idle().min(size);
        PoolStats {
            idle,
            in_use: size - idle,
        }
    }

    async fn clock(&self) -> Result<DateTime<Utc>> {
        Ok(crate::domain::now())
    }

    async fn presence(
        &self,
        replica: &str,
        streaming: &[String],
        now: DateTime<Utc>,
        expire_before: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        let ids = serde_json::to_string(streaming)
            .map_err(|e| crate::domain::Error::Internal(format!("encoding node ids: {e}")))?;
        let (_turn, mut tx) = self.begin_immediate().await?;
        sqlx::query(
            "INSERT INTO presence (node_id, replica, seen_time) \
             SELECT id, ?1, ?2 FROM nodes WHERE id IN (SELECT value FROM json_each(?3)) \
             ON CONFLICT (node_id, replica) DO UPDATE SET seen_time = excluded.seen_time",
        )
        .bind(replica)
        .bind(to_micros(now))
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        sqlx::query(
            "DELETE FROM presence WHERE replica = ?1 \
             AND node_id NOT IN (SELECT value FROM json_each(?2))",
        )
        .bind(replica)
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        sqlx::query("DELETE FROM presence WHERE seen_time < ?")
            .bind(to_micros(expire_before))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let present: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT node_id FROM presence ORDER BY node_id")
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(present)
    }
    async fn backup(&self, out: &std::path::Path) -> Result<u64> {
        super::backup::backup(&self.pool, out).await
    }
}

/// The cursor and every network's view, read on one connection inside a
/// read transaction: four statements for all networks, grouped here.
async fn load_views(conn: &mut SqliteConnection) -> Result<(u64, Vec<NetworkView>)> {
    let cursor = queries::log_bounds(&mut *conn).await?.latest;
    let net_rows = sqlx::query(concat!(
        "SELECT ",
        network_cols!(),
        ", revision, (SELECT p.policy FROM network_policies p WHERE p.network = networks.name) \
         AS policy FROM networks ORDER BY name"
    ))
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err)?;
    let node_rows = sqlx::query(concat!(
        "SELECT ",
        view_node_cols!(),
        " FROM nodes ORDER BY network, name"
    ))
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err)?;
    let client_rows = sqlx::query(concat!(
        "SELECT ",
        client_cols!(),
        " FROM ext_clients ORDER BY network, name"
    ))
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err)?;
    let dns_rows = sqlx::query(concat!(
        "SELECT ",
        dns_cols!(),
        " FROM dns_entries ORDER BY network, name"
    ))
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err)?;

    let mut nodes: HashMap<String, Vec<Node>> = HashMap::new();
    for n in decode(&node_rows, rows::node)? {
        nodes.entry(n.network.to_string()).or_default().push(n);
    }
    let mut clients: HashMap<String, Vec<ExtClient>> = HashMap::new();
    for c in decode(&client_rows, rows::ext_client)? {
        clients.entry(c.network.to_string()).or_default().push(c);
    }
    let mut dns: HashMap<String, Vec<_>> = HashMap::new();
    for e in decode(&dns_rows, rows::dns_entry)? {
        dns.entry(e.network.to_string())
            .or_default()
            .push(rows::dns_record(e));
    }

    let mut views = Vec::with_capacity(net_rows.len());
    for r in &net_rows {
        let network = rows::network(r)?;
        let name = network.name.to_string();
        let revision = u64::try_from(r.int("revision")?)
            .map_err(|_| rows::corrupt("network", &name, "revision"))?;
        views.push(NetworkView {
            nodes: nodes.remove(&name).unwrap_or_default(),
            ext_clients: clients.remove(&name).unwrap_or_default(),
            dns_entries: dns.remove(&name).unwrap_or_default(),
            network,
            revision,
            policy: match r.json("policy")? {
                Some(json) => rows::policy_json(&name, &json)?,
                None => Default::default(),
            },
        });
    }
    Ok((cursor, views))
}
