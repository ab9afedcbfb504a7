//! External clients in SQLite.

use async_trait::async_trait;
use sqlx::{Row, SqliteConnection, sqlite::SqliteRow};

use super::{
    SqliteStore, events,
    networks::fetch_network,
    nodes::{
        allocate_addresses, check_unique, fetch_node, free_addresses, page_key, unique_backstop,
    },
};
use crate::domain::{
    Error, Result,
    event::{Action, Resource},
    ext_client::{ExtClient, ExtClientPatch},
    names::DnsLabel,
    node::WgKey,
    page::PageRequest,
};
use crate::store::{ExtClientStore, db_err, from_micros, join_ips, split_ips, to_micros};

const COLS: &str = "id, network, ingress_node_id, name, public_key, sealed_private_key, \
    address, address6, dns, enabled, config_revision, downloaded_revision, create_time, \
    update_time";

fn client_from_row(r: &SqliteRow) -> Result<ExtClient> {
    let id: String = r.try_get("id").map_err(db_err)?;
    let corrupt = |what: &str| Error::Internal(format!("stored client {id}: bad {what}"));
    let s = |c: &str| r.try_get::<String, _>(c).map_err(db_err);
    let o = |c: &str| r.try_get::<Option<String>, _>(c).map_err(db_err);
    Ok(ExtClient {
        network: DnsLabel::parse("network", &s("network")?, DnsLabel::LABEL_MAX)
            .map_err(|_| corrupt("network"))?,
        ingress_node_id: s("ingress_node_id")?,
        name: DnsLabel::parse("name", &s("name")?, DnsLabel::LABEL_MAX)
            .map_err(|_| corrupt("name"))?,
        public_key: WgKey::parse("public_key", &s("public_key")?)
            .map_err(|_| corrupt("public_key"))?,
        sealed_private_key: r.try_get("sealed_private_key").map_err(db_err)?,
        address: o("address")?
            .map(|a| a.parse())
            .transpose()
            .map_err(|_| corrupt("address"))?,
        address6: o("address6")?
            .map(|a| a.parse())
            .transpose()
            .map_err(|_| corrupt("address6"))?,
        dns: split_ips(&s("dns")?),
        enabled: r.try_get("enabled").map_err(db_err)?,
        config_revision: r.try_get::<i64, _>("config_revision").map_err(db_err)? as u64,
        downloaded_revision: r.try_get::<i64, _>("downloaded_revision").map_err(db_err)? as u64,
        create_time: from_micros(r.try_get("create_time").map_err(db_err)?),
        update_time: from_micros(r.try_get("update_time").map_err(db_err)?),
        id,
    })
}

async fn fetch_client(conn: &mut SqliteConnection, id: &str) -> Result<ExtClient> {
    let row = sqlx::query(&format!("SELECT {COLS} FROM ext_clients WHERE id = ?"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?;
    row.as_ref()
        .map(client_from_row)
        .transpose()?
        .ok_or_else(|| Error::not_found("external client", id))
}

/// All clients of a network, ordered by name.
pub(super) async fn fetch_clients(
    conn: &mut SqliteConnection,
    network: &str,
) -> Result<Vec<ExtClient>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLS} FROM ext_clients WHERE network = ? ORDER BY name"
    ))
    .bind(network)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err)?;
    rows.iter().map(client_from_row).collect()
}

/// Marks the configs of an ingress gateway's clients changed at `rev`.
pub(super) async fn bump_clients_of(
    conn: &mut SqliteConnection,
    ingress: &str,
    rev: u64,
) -> Result<()> {
    sqlx::query("UPDATE ext_clients SET config_revision = ? WHERE ingress_node_id = ?")
        .bind(rev as i64)
        .bind(ingress)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Deletes an ingress gateway's clients, freeing their addresses.
pub(super) async fn delete_clients_of(conn: &mut SqliteConnection, ingress: &str) -> Result<()> {
    let rows = sqlx::query(&format!(
        "SELECT {COLS} FROM ext_clients WHERE ingress_node_id = ?"
    ))
    .bind(ingress)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err)?;
    for c in rows.iter().map(client_from_row) {
        let c = c?;
        free_addresses(conn, &c.id).await?;
        sqlx::query("DELETE FROM ext_clients WHERE id = ?")
            .bind(&c.id)
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
        events::append(
            conn,
            Action::Deleted,
            &Resource::ExtClient(Box::new(c)),
            true,
        )
        .await?;
    }
    Ok(())
}

#[async_trait]
impl ExtClientStore for SqliteStore {
    async fn create_ext_client(&self, client: &ExtClient) -> Result<ExtClient> {
        let (_w, mut tx) = self.write_tx().await?;
        let network = client.network.as_str();
        let net = fetch_network(&mut *tx, network)
            .await?
            .ok_or_else(|| Error::not_found("network", network))?;
        let ingress = fetch_node(&mut tx, &client.ingress_node_id).await?;
        if ingress.network != client.network {
            return Err(Error::invalid(
                "ingress_node_id",
                format!(
                    "node {} is in network {:?}, not {network:?}",
                    ingress.id,
                    ingress.network.as_str()
                ),
            ));
        }
        if ingress.ingress.is_none() {
            return Err(Error::FailedPrecondition(format!(
                "node {:?} is not an ingress gateway; make it one with CreateIngressGateway first",
                ingress.name.as_str()
            )));
        }
        check_unique(
            &mut tx,
            network,
            "",
            Some(("name", &client.name)),
            Some(("public_key", &client.public_key)),
        )
        .await?;
        let mut c = client.clone();
        (c.address, c.address6) = allocate_addresses(&mut tx, &net, "ext_client", &c.id).await?;
        sqlx::query(&format!(
            "INSERT INTO ext_clients ({COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&c.id)
        .bind(network)
        .bind(&c.ingress_node_id)
        .bind(c.name.as_str())
        .bind(c.public_key.to_string())
        .bind(&c.sealed_private_key)
        .bind(c.address.map(|a| a.to_string()))
        .bind(c.address6.map(|a| a.to_string()))
        .bind(join_ips(&c.dns))
        .bind(c.enabled)
        .bind(0i64)
        .bind(0i64)
        .bind(to_micros(c.create_time))
        .bind(to_micros(c.update_time))
        .execute(&mut *tx)
        .await
        .map_err(unique_backstop)?;
        let rev = events::append(
            &mut tx,
            Action::Created,
            &Resource::ExtClient(Box::new(c.clone())),
            true,
        )
        .await?;
        sqlx::query("UPDATE ext_clients SET config_revision = ? WHERE id = ?")
            .bind(rev as i64)
            .bind(&c.id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        c.config_revision = rev;
        tx.commit().await.map_err(db_err)?;
        Ok(c)
    }

    async fn get_ext_client(&self, id: &str) -> Result<ExtClient> {
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        fetch_client(&mut conn, id).await
    }

    async fn list_ext_clients(
        &self,
        network: Option<&str>,
        ingress_node_id: Option<&str>,
        page: &PageRequest,
    ) -> Result<Vec<ExtClient>> {
        let (after_net, after_name) = page_key(page.after.as_deref());
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM ext_clients WHERE (network, name) > (?1, ?2) \
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
        rows.iter().map(client_from_row).collect()
    }

    async fn update_ext_client(&self, id: &str, patch: &ExtClientPatch) -> Result<ExtClient> {
        let (_w, mut tx) = self.write_tx().await?;
        let mut c = fetch_client(&mut tx, id).await?;
        check_unique(
            &mut tx,
            c.network.as_str(),
            id,
            patch.name.as_ref().map(|n| ("ext_client.name", n)),
            None,
        )
        .await?;
        let network_sees = patch.changes_network(&c);
        patch.apply(&mut c, crate::domain::now());
        sqlx::query(
            "UPDATE ext_clients SET name = ?, dns = ?, enabled = ?, update_time = ? WHERE id = ?",
        )
        .bind(c.name.as_str())
        .bind(join_ips(&c.dns))
        .bind(c.enabled)
        .bind(to_micros(c.update_time))
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(unique_backstop)?;
        let rev = events::append(
            &mut tx,
            Action::Updated,
            &Resource::ExtClient(Box::new(c.clone())),
            network_sees,
        )
        .await?;
        sqlx::query("UPDATE ext_clients SET config_revision = ? WHERE id = ?")
            .bind(rev as i64)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        c.config_revision = rev;
        tx.commit().await.map_err(db_err)?;
        Ok(c)
    }

    async fn delete_ext_client(&self, id: &str) -> Result<ExtClient> {
        let (_w, mut tx) = self.write_tx().await?;
        let c = fetch_client(&mut tx, id).await?;
        free_addresses(&mut tx, id).await?;
        sqlx::query("DELETE FROM ext_clients WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        events::commit(
            tx,
            Action::Deleted,
            &Resource::ExtClient(Box::new(c.clone())),
            true,
        )
        .await?;
        Ok(c)
    }

    async fn mark_downloaded(&self, id: &str, revision: u64) -> Result<()> {
        let (_w, mut tx) = self.write_tx().await?;
        sqlx::query(
            "UPDATE ext_clients SET downloaded_revision = MAX(downloaded_revision, ?) WHERE id = ?",
        )
        .bind(revision as i64)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }
}
