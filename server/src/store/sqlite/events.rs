//! The event log in SQLite: appended inside every write transaction.

use async_trait::async_trait;
use sqlx::{Row, SqliteConnection};

use super::{
    SqliteStore, dns::fetch_entries, ext_clients::fetch_clients, networks::fetch_network,
    nodes::network_nodes,
};
use crate::domain::{
    Error, Result,
    config::NetworkView,
    event::{Action, Event, Resource},
};
use crate::store::{EventStore, db_err, from_micros, to_micros};

/// Appends the event of a write and commits the write with it.
pub(super) async fn commit(
    mut tx: sqlx::Transaction<'_, sqlx::Sqlite>,
    action: Action,
    resource: &Resource,
    config: bool,
) -> Result<()> {
    append(&mut tx, action, resource, config).await?;
    tx.commit().await.map_err(db_err)
}

/// Appends an event and returns its revision. When `config` is set the
/// event changes node configs in its network, whose revision follows it.
pub(super) async fn append(
    conn: &mut SqliteConnection,
    action: Action,
    resource: &Resource,
    config: bool,
) -> Result<u64> {
    let payload = serde_json::to_string(resource)
        .map_err(|e| Error::Internal(format!("encoding event: {e}")))?;
    let network = resource.network();
    let rev: i64 = sqlx::query_scalar(
        "INSERT INTO events (network, kind, resource_id, action, payload, event_time) \
         VALUES (?, ?, ?, ?, ?, ?) RETURNING revision",
    )
    .bind(&network)
    .bind(resource.kind())
    .bind(resource.id())
    .bind(action.as_i64())
    .bind(payload)
    .bind(to_micros(crate::domain::now()))
    .fetch_one(&mut *conn)
    .await
    .map_err(db_err)?;
    if let (true, Some(n)) = (config, network) {
        sqlx::query("UPDATE networks SET revision = ? WHERE name = ?")
            .bind(rev)
            .bind(n)
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
    }
    Ok(rev as u64)
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        let rows = sqlx::query(
            "SELECT revision, action, payload, event_time FROM events WHERE revision > ? \
             ORDER BY revision LIMIT ?",
        )
        .bind(after as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let revision: i64 = r.try_get("revision").map_err(db_err)?;
                let payload: String = r.try_get("payload").map_err(db_err)?;
                let resource: Resource = serde_json::from_str(&payload).map_err(|e| {
                    Error::Internal(format!("stored event {revision} is unreadable: {e}"))
                })?;
                Ok(Event {
                    revision: revision as u64,
                    action: Action::from_i64(r.try_get("action").map_err(db_err)?)
                        .ok_or_else(|| Error::Internal(format!("event {revision}: bad action")))?,
                    time: from_micros(r.try_get("event_time").map_err(db_err)?),
                    resource,
                })
            })
            .collect()
    }

    async fn latest_revision(&self) -> Result<u64> {
        let r: Option<i64> = sqlx::query_scalar("SELECT MAX(revision) FROM events")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(r.unwrap_or(0) as u64)
    }

    async fn load_all(&self) -> Result<(u64, Vec<NetworkView>)> {
        // One read transaction: under WAL, a consistent snapshot.
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let cursor: Option<i64> = sqlx::query_scalar("SELECT MAX(revision) FROM events")
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        let names: Vec<(String, i64)> =
            sqlx::query_as("SELECT name, revision FROM networks ORDER BY name")
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err)?;
        let mut views = Vec::with_capacity(names.len());
        for (name, revision) in names {
            let network = fetch_network(&mut *tx, &name)
                .await?
                .ok_or_else(|| Error::Internal(format!("network {name} vanished")))?;
            views.push(NetworkView {
                network,
                nodes: network_nodes(&mut tx, &name).await?,
                ext_clients: fetch_clients(&mut tx, &name).await?,
                dns_entries: fetch_entries(&mut tx, &name).await?,
                revision: revision as u64,
            });
        }
        tx.commit().await.map_err(db_err)?;
        Ok((cursor.unwrap_or(0) as u64, views))
    }

    async fn touch_node(&self, node_id: &str) -> Result<()> {
        let _w = self.write.lock().await;
        sqlx::query("UPDATE nodes SET last_seen = ? WHERE id = ?")
            .bind(to_micros(crate::domain::now()))
            .bind(node_id)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }
}
