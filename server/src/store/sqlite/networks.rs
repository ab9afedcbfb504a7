//! Networks in SQLite.

use async_trait::async_trait;
use sqlx::{Row, sqlite::SqliteRow};

use super::SqliteStore;
use super::events;
use crate::domain::{
    Error, Result,
    event::{Action, Resource},
    names::DnsLabel,
    network::{Network, NetworkPatch, check_no_overlap},
    page::PageRequest,
};
use crate::store::{NetworkStore, db_err, from_micros, join_ips, split_ips, to_micros};

const NETWORK_COLS: &str = "name, range4, range6, keepalive, mtu, listen_port, \
    ext_client_dns, nameservers, create_time, update_time";

fn network_from_row(r: &SqliteRow) -> Result<Network> {
    let name: String = r.try_get("name").map_err(db_err)?;
    let range4: Option<String> = r.try_get("range4").map_err(db_err)?;
    let range6: Option<String> = r.try_get("range6").map_err(db_err)?;
    let corrupt = |what: &str| Error::Internal(format!("stored network {name}: bad {what}"));
    Ok(Network {
        name: DnsLabel::parse("name", &name, DnsLabel::LABEL_MAX).map_err(|_| corrupt("name"))?,
        range4: range4
            .map(|s| s.parse())
            .transpose()
            .map_err(|_| corrupt("range4"))?,
        range6: range6
            .map(|s| s.parse())
            .transpose()
            .map_err(|_| corrupt("range6"))?,
        keepalive: r.try_get::<i64, _>("keepalive").map_err(db_err)? as u32,
        mtu: r.try_get::<i64, _>("mtu").map_err(db_err)? as u32,
        listen_port: r.try_get::<i64, _>("listen_port").map_err(db_err)? as u32,
        ext_client_dns: split_ips(&r.try_get::<String, _>("ext_client_dns").map_err(db_err)?),
        nameservers: split_ips(&r.try_get::<String, _>("nameservers").map_err(db_err)?),
        create_time: from_micros(r.try_get("create_time").map_err(db_err)?),
        update_time: from_micros(r.try_get("update_time").map_err(db_err)?),
    })
}

/// One network, inside or outside a transaction.
pub(super) async fn fetch_network<'e, E>(ex: E, name: &str) -> Result<Option<Network>>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    sqlx::query(&format!(
        "SELECT {NETWORK_COLS} FROM networks WHERE name = ?"
    ))
    .bind(name)
    .fetch_optional(ex)
    .await
    .map_err(db_err)?
    .as_ref()
    .map(network_from_row)
    .transpose()
}

#[async_trait]
impl NetworkStore for SqliteStore {
    async fn create_network(&self, net: &Network) -> Result<Network> {
        let (_w, mut tx) = self.write_tx().await?;
        if fetch_network(&mut *tx, net.name.as_str()).await?.is_some() {
            return Err(Error::already_exists(
                "network.name",
                format!("network {:?} already exists", net.name.as_str()),
            ));
        }
        let rows = sqlx::query(&format!("SELECT {NETWORK_COLS} FROM networks"))
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
        let existing = rows
            .iter()
            .map(network_from_row)
            .collect::<Result<Vec<_>>>()?;
        check_no_overlap(net, &existing)?;
        sqlx::query(&format!(
            "INSERT INTO networks ({NETWORK_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(net.name.as_str())
        .bind(net.range4.map(|r| r.to_string()))
        .bind(net.range6.map(|r| r.to_string()))
        .bind(net.keepalive as i64)
        .bind(net.mtu as i64)
        .bind(net.listen_port as i64)
        .bind(join_ips(&net.ext_client_dns))
        .bind(join_ips(&net.nameservers))
        .bind(to_micros(net.create_time))
        .bind(to_micros(net.update_time))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        events::commit(tx, Action::Created, &Resource::Network(net.clone()), true).await?;
        Ok(net.clone())
    }

    async fn get_network(&self, name: &str) -> Result<Network> {
        fetch_network(&self.pool, name)
            .await?
            .ok_or_else(|| Error::not_found("network", name))
    }

    async fn list_networks(&self, page: &PageRequest) -> Result<Vec<Network>> {
        let rows = sqlx::query(&format!(
            "SELECT {NETWORK_COLS} FROM networks WHERE name > ? ORDER BY name LIMIT ?"
        ))
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(network_from_row).collect()
    }

    async fn update_network(&self, name: &str, patch: &NetworkPatch) -> Result<Network> {
        let (_w, mut tx) = self.write_tx().await?;
        let mut net = fetch_network(&mut *tx, name)
            .await?
            .ok_or_else(|| Error::not_found("network", name))?;
        patch.apply(&mut net, crate::domain::now())?;
        sqlx::query(
            "UPDATE networks SET keepalive = ?, mtu = ?, listen_port = ?, \
             ext_client_dns = ?, nameservers = ?, update_time = ? WHERE name = ?",
        )
        .bind(net.keepalive as i64)
        .bind(net.mtu as i64)
        .bind(net.listen_port as i64)
        .bind(join_ips(&net.ext_client_dns))
        .bind(join_ips(&net.nameservers))
        .bind(to_micros(net.update_time))
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        let rev = events::append(
            &mut tx,
            Action::Updated,
            &Resource::Network(net.clone()),
            true,
        )
        .await?;
        // MTU, keepalive and DNS defaults are in every client's file.
        sqlx::query("UPDATE ext_clients SET config_revision = ? WHERE network = ?")
            .bind(rev as i64)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(net)
    }

    async fn delete_network(&self, name: &str, force: bool) -> Result<()> {
        let (_w, mut tx) = self.write_tx().await?;
        let Some(net) = fetch_network(&mut *tx, name).await? else {
            return Err(Error::not_found("network", name));
        };
        let nodes: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM nodes WHERE network = ?")
            .bind(name)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        if nodes > 0 && !force {
            return Err(Error::FailedPrecondition(format!(
                "network {name:?} has {nodes} node(s); delete them first or set force"
            )));
        }
        // Nodes, clients, addresses and key memberships go with it (ON DELETE
        // CASCADE).
        sqlx::query("DELETE FROM networks WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        events::commit(tx, Action::Deleted, &Resource::Network(net), false).await?;
        Ok(())
    }
}
