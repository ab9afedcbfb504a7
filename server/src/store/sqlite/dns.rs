//! Custom DNS entries in SQLite.

use async_trait::async_trait;
use sqlx::{Row, SqliteConnection};

use super::{SqliteStore, events, networks::fetch_network};
use crate::domain::{
    Error, Result,
    config::DnsRecord,
    dns::{DnsEntry, DnsKind},
    event::{Action, Resource},
    names::DnsLabel,
};
use crate::store::{DnsStore, db_err, from_micros, to_micros};

/// A network's custom entries as records relative to its zone.
pub(super) async fn fetch_entries(
    conn: &mut SqliteConnection,
    network: &str,
) -> Result<Vec<DnsRecord>> {
    let rows = sqlx::query(
        "SELECT name, address, address6 FROM dns_entries WHERE network = ? ORDER BY name",
    )
    .bind(network)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err)?;
    rows.iter()
        .map(|r| {
            let name: String = r.try_get("name").map_err(db_err)?;
            let corrupt = || Error::Internal(format!("stored DNS entry {name}: bad address"));
            Ok(DnsRecord {
                address: r
                    .try_get::<Option<String>, _>("address")
                    .map_err(db_err)?
                    .map(|a| a.parse())
                    .transpose()
                    .map_err(|_| corrupt())?,
                address6: r
                    .try_get::<Option<String>, _>("address6")
                    .map_err(db_err)?
                    .map(|a| a.parse())
                    .transpose()
                    .map_err(|_| corrupt())?,
                name,
            })
        })
        .collect()
}

/// What owns a name in a network: "node <id>", "external client <id>" or
/// "DNS entry".
pub(super) async fn name_owner(
    conn: &mut SqliteConnection,
    network: &str,
    name: &str,
) -> Result<Option<(DnsKind, String)>> {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT 'node', id FROM nodes WHERE network = ?1 AND name = ?2 \
         UNION ALL SELECT 'ext_client', id FROM ext_clients WHERE network = ?1 AND name = ?2 \
         UNION ALL SELECT 'custom', name FROM dns_entries WHERE network = ?1 AND name = ?2 \
         LIMIT 1",
    )
    .bind(network)
    .bind(name)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?;
    Ok(row.map(|(kind, id)| {
        let kind = match kind.as_str() {
            "node" => DnsKind::Node,
            "ext_client" => DnsKind::ExtClient,
            _ => DnsKind::Custom,
        };
        (kind, id)
    }))
}

#[async_trait]
impl DnsStore for SqliteStore {
    async fn create_dns_entry(&self, entry: &DnsEntry) -> Result<DnsEntry> {
        let (_w, mut tx) = self.write_tx().await?;
        let network = entry.network.as_str();
        if fetch_network(&mut *tx, network).await?.is_none() {
            return Err(Error::not_found("network", network));
        }
        if let Some((kind, id)) = name_owner(&mut tx, network, &entry.name).await? {
            let what = match kind {
                DnsKind::Node => format!("the automatic name of node {id}"),
                DnsKind::ExtClient => format!("the automatic name of external client {id}"),
                DnsKind::Custom => "a custom entry".to_owned(),
            };
            return Err(Error::already_exists(
                "entry.name",
                format!("{}.{network} is already {what}", entry.name),
            ));
        }
        sqlx::query(
            "INSERT INTO dns_entries (network, name, address, address6, create_time) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(network)
        .bind(&entry.name)
        .bind(entry.address.map(|a| a.to_string()))
        .bind(entry.address6.map(|a| a.to_string()))
        .bind(to_micros(entry.create_time))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        events::commit(
            tx,
            Action::Created,
            &Resource::DnsEntry(entry.clone()),
            true,
        )
        .await?;
        Ok(entry.clone())
    }

    async fn delete_dns_entry(&self, network: &str, name: &str) -> Result<DnsEntry> {
        let (_w, mut tx) = self.write_tx().await?;
        if fetch_network(&mut *tx, network).await?.is_none() {
            return Err(Error::not_found("network", network));
        }
        match name_owner(&mut tx, network, name).await? {
            None => return Err(Error::not_found("DNS entry", format!("{name}.{network}"))),
            Some((DnsKind::Node, id)) => {
                return Err(Error::FailedPrecondition(format!(
                    "{name}.{network} is the automatic name of node {id}: rename or delete the node"
                )));
            }
            Some((DnsKind::ExtClient, id)) => {
                return Err(Error::FailedPrecondition(format!(
                    "{name}.{network} is the automatic name of external client {id}: rename or \
                     delete the client"
                )));
            }
            Some((DnsKind::Custom, _)) => {}
        }
        let row = sqlx::query(
            "SELECT address, address6, create_time FROM dns_entries WHERE network = ? AND name = ?",
        )
        .bind(network)
        .bind(name)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        let entry = DnsEntry {
            network: DnsLabel::parse("network", network, DnsLabel::LABEL_MAX)
                .map_err(|v| Error::Internal(v.description))?,
            name: name.to_owned(),
            address: row
                .try_get::<Option<String>, _>("address")
                .map_err(db_err)?
                .and_then(|a| a.parse().ok()),
            address6: row
                .try_get::<Option<String>, _>("address6")
                .map_err(db_err)?
                .and_then(|a| a.parse().ok()),
            kind: DnsKind::Custom,
            create_time: from_micros(row.try_get("create_time").map_err(db_err)?),
        };
        sqlx::query("DELETE FROM dns_entries WHERE network = ? AND name = ?")
            .bind(network)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        events::commit(
            tx,
            Action::Deleted,
            &Resource::DnsEntry(entry.clone()),
            true,
        )
        .await?;
        Ok(entry)
    }
}
