//! Enrollment keys, nodes and overlay addresses in SQLite.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use async_trait::async_trait;
use ipnet::IpNet;
use sqlx::{Row, SqliteConnection, sqlite::SqliteRow};

use super::{
    SqliteStore,
    dns::fetch_entries,
    events,
    ext_clients::{bump_clients_of, delete_clients_of, fetch_clients},
    networks::fetch_network,
};
use crate::domain::{
    Error, Result,
    config::NetworkView,
    enrollment::EnrollmentKey,
    event::{Action, Resource},
    gateway::check_egress_unique,
    host::StatusReport,
    ipam::{self, Family},
    names::DnsLabel,
    network::Network,
    node::{Egress, Endpoint, Ingress, Node, NodePatch, WgKey},
    page::PageRequest,
    token,
};
use crate::store::{
    NodeRegistration, NodeStore, Reported, db_err, from_micros, is_unique_violation, join_ips,
    split_ips, to_micros,
};

const KEY_COLS: &str = "k.id, k.hash, k.description, k.uses_remaining, k.unlimited, \
    k.expire_time, k.create_time, \
    (SELECT group_concat(network, ',') FROM enrollment_key_networks n WHERE n.key_id = k.id) \
    AS networks";

fn key_from_row(r: &SqliteRow) -> Result<(EnrollmentKey, Vec<u8>)> {
    let networks: Option<String> = r.try_get("networks").map_err(db_err)?;
    let mut networks: Vec<DnsLabel> = networks
        .unwrap_or_default()
        .split(',')
        .filter_map(|n| DnsLabel::parse("network", n, DnsLabel::NETWORK_MAX).ok())
        .collect();
    networks.sort();
    let key = EnrollmentKey {
        id: r.try_get("id").map_err(db_err)?,
        networks,
        uses_remaining: r.try_get::<i64, _>("uses_remaining").map_err(db_err)? as u32,
        unlimited: r.try_get("unlimited").map_err(db_err)?,
        expire_time: r
            .try_get::<Option<i64>, _>("expire_time")
            .map_err(db_err)?
            .map(from_micros),
        description: r.try_get("description").map_err(db_err)?,
        create_time: from_micros(r.try_get("create_time").map_err(db_err)?),
    };
    Ok((key, r.try_get("hash").map_err(db_err)?))
}

async fn load_key(conn: &mut SqliteConnection, id: &str, presented: &str) -> Result<EnrollmentKey> {
    let row = sqlx::query(&format!(
        "SELECT {KEY_COLS} FROM enrollment_keys k WHERE k.id = ?"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?;
    match row.as_ref().map(key_from_row).transpose()? {
        Some((key, hash)) if token::verify(presented, &hash) => Ok(key),
        _ => Err(Error::Unauthenticated(
            "unknown or revoked enrollment key".into(),
        )),
    }
}

pub(super) const NODE_COLS: &str = "id, network, name, public_key, endpoint, listen_port, \
    address, address6, os, keepalive, egress_ranges, egress_interface, egress_nat, ingress, \
    ingress_dns, connected, last_seen, applied_revision, create_time, update_time, \
    wireguard_interface, host_report, apply_error, failed_revision, \
    (SELECT w.revision FROM networks w WHERE w.name = nodes.network) AS config_revision";

/// [`NODE_COLS`] without the host report, for the nodes configs are computed
/// from (which never look at it; it can be large).
const VIEW_NODE_COLS: &str = "id, network, name, public_key, endpoint, listen_port, \
    address, address6, os, keepalive, egress_ranges, egress_interface, egress_nat, ingress, \
    ingress_dns, connected, last_seen, applied_revision, create_time, update_time, \
    wireguard_interface, NULL AS host_report, apply_error, failed_revision, \
    (SELECT w.revision FROM networks w WHERE w.name = nodes.network) AS config_revision";

pub(super) fn node_from_row(r: &SqliteRow) -> Result<Node> {
    let id: String = r.try_get("id").map_err(db_err)?;
    let corrupt = |what: &str| Error::Internal(format!("stored node {id}: bad {what}"));
    let s = |c: &str| r.try_get::<String, _>(c).map_err(db_err);
    let o = |c: &str| r.try_get::<Option<String>, _>(c).map_err(db_err);
    let endpoint = s("endpoint")?;
    let egress = match o("egress_ranges")? {
        None => None,
        Some(ranges) => Some(Egress {
            ranges: ranges
                .split(',')
                .filter(|x| !x.is_empty())
                .map(|x| x.parse::<IpNet>())
                .collect::<Result<_, _>>()
                .map_err(|_| corrupt("egress_ranges"))?,
            interface: s("egress_interface")?,
            nat: r.try_get("egress_nat").map_err(db_err)?,
        }),
    };
    let ingress = r
        .try_get::<bool, _>("ingress")
        .map_err(db_err)?
        .then(|| -> Result<Ingress> {
            Ok(Ingress {
                ext_client_dns: split_ips(&s("ingress_dns")?),
            })
        })
        .transpose()?;
    Ok(Node {
        network: DnsLabel::parse("network", &s("network")?, DnsLabel::LABEL_MAX)
            .map_err(|_| corrupt("network"))?,
        name: DnsLabel::parse("name", &s("name")?, DnsLabel::LABEL_MAX)
            .map_err(|_| corrupt("name"))?,
        public_key: WgKey::parse("public_key", &s("public_key")?)
            .map_err(|_| corrupt("public_key"))?,
        endpoint: (!endpoint.is_empty())
            .then(|| Endpoint::parse("endpoint", &endpoint))
            .transpose()
            .map_err(|_| corrupt("endpoint"))?,
        listen_port: r.try_get::<i64, _>("listen_port").map_err(db_err)? as u16,
        address: o("address")?
            .map(|a| a.parse())
            .transpose()
            .map_err(|_| corrupt("address"))?,
        address6: o("address6")?
            .map(|a| a.parse())
            .transpose()
            .map_err(|_| corrupt("address6"))?,
        os: s("os")?,
        keepalive: r.try_get::<i64, _>("keepalive").map_err(db_err)? as u32,
        egress,
        ingress,
        connected: r.try_get("connected").map_err(db_err)?,
        last_seen: r
            .try_get::<Option<i64>, _>("last_seen")
            .map_err(db_err)?
            .map(from_micros),
        applied_revision: r.try_get::<i64, _>("applied_revision").map_err(db_err)? as u64,
        config_revision: r
            .try_get::<Option<i64>, _>("config_revision")
            .map_err(db_err)?
            .unwrap_or(0) as u64,
        create_time: from_micros(r.try_get("create_time").map_err(db_err)?),
        update_time: from_micros(r.try_get("update_time").map_err(db_err)?),
        wireguard_interface: o("wireguard_interface")?,
        // The host report is a cache of what the agent last said: one that
        // no longer decodes (an older layout) is dropped, not an error that
        // would make the node unreadable until the agent reports again.
        host: o("host_report")?.and_then(|h| match serde_json::from_str(&h) {
            Ok(report) => Some(report),
            Err(e) => {
                tracing::warn!(node = %id, error = %e, "stored host report unreadable; ignored");
                None
            }
        }),
        apply_error: Some(s("apply_error")?).filter(|e| !e.is_empty()),
        failed_revision: r.try_get::<i64, _>("failed_revision").map_err(db_err)? as u64,
        id,
    })
}

pub(super) async fn fetch_node(conn: &mut SqliteConnection, id: &str) -> Result<Node> {
    let row = sqlx::query(&format!("SELECT {NODE_COLS} FROM nodes WHERE id = ?"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?;
    row.as_ref()
        .map(node_from_row)
        .transpose()?
        .ok_or_else(|| Error::not_found("node", id))
}

/// ALREADY_EXISTS when `name` or `public_key` is taken in `network` by a
/// node or external client other than `except` (names share the network's
/// DNS zone; keys share its ingress gateways' peer lists).
pub(super) async fn check_unique(
    conn: &mut SqliteConnection,
    network: &str,
    except: &str,
    name: Option<(&str, &DnsLabel)>,
    public_key: Option<(&str, &WgKey)>,
) -> Result<()> {
    const KEY_OWNER: &str = "SELECT 'node ' || id FROM nodes \
        WHERE network = ?1 AND public_key = ?2 AND id <> ?3 \
        UNION ALL SELECT 'external client ' || id FROM ext_clients \
        WHERE network = ?1 AND public_key = ?2 AND id <> ?3 LIMIT 1";
    const NAME_OWNER: &str = "SELECT 'node ' || id FROM nodes WHERE network = ?1 AND name = ?2 AND id <> ?3 \
        UNION ALL SELECT 'external client ' || id FROM ext_clients \
        WHERE network = ?1 AND name = ?2 AND id <> ?3 \
        UNION ALL SELECT 'DNS entry ' || name || '.' || network FROM dns_entries \
        WHERE network = ?1 AND name = ?2 LIMIT 1";
    let mut owner = async |sql: &str, value: String| -> Result<Option<String>> {
        sqlx::query_scalar(sql)
            .bind(network)
            .bind(value)
            .bind(except)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)
    };
    if let Some((field, name)) = name
        && let Some(other) = owner(NAME_OWNER, name.to_string()).await?
    {
        return Err(Error::already_exists(
            field,
            format!(
                "{other} in network {network:?} is already named {:?}",
                name.as_str()
            ),
        ));
    }
    if let Some((field, key)) = public_key
        && let Some(other) = owner(KEY_OWNER, key.to_string()).await?
    {
        return Err(Error::already_exists(
            field,
            format!("{other} in network {network:?} already has public key {key}"),
        ));
    }
    Ok(())
}

/// Logs a change of `node` (which changes configs in its network) and
/// returns the event's revision.
async fn node_event(conn: &mut SqliteConnection, action: Action, node: &Node) -> Result<u64> {
    events::append(conn, action, &Resource::Node(Box::new(node.clone())), true).await
}

/// All nodes of a network, ordered by name, without their host reports
/// (what configs are computed from).
pub(super) async fn network_nodes(conn: &mut SqliteConnection, network: &str) -> Result<Vec<Node>> {
    let rows = sqlx::query(&format!(
        "SELECT {VIEW_NODE_COLS} FROM nodes WHERE network = ? ORDER BY name"
    ))
    .bind(network)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err)?;
    rows.iter().map(node_from_row).collect()
}

/// The lowest free host offset of a family in a network.
const LOWEST_FREE: &str = "SELECT CASE \
    WHEN NOT EXISTS (SELECT 1 FROM ip_allocations \
        WHERE network = ?1 AND family = ?2 AND host_offset = 1) THEN 1 \
    ELSE (SELECT MIN(a.host_offset) + 1 FROM ip_allocations a \
        WHERE a.network = ?1 AND a.family = ?2 AND NOT EXISTS (\
            SELECT 1 FROM ip_allocations b WHERE b.network = ?1 AND b.family = ?2 \
            AND b.host_offset = a.host_offset + 1)) \
    END";

/// Takes the lowest free address of `range` for an owner.
async fn allocate(
    conn: &mut SqliteConnection,
    network: &str,
    range: IpNet,
    owner_kind: &str,
    owner_id: &str,
) -> Result<IpAddr> {
    let family = match range {
        IpNet::V4(_) => Family::V4,
        IpNet::V6(_) => Family::V6,
    };
    let next: i64 = sqlx::query_scalar(LOWEST_FREE)
        .bind(network)
        .bind(family.as_i64())
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err)?;
    if next < 0 || !ipam::usable(range, next as u128) {
        return Err(Error::ResourceExhausted(format!(
            "address range {range} of network {network:?} is exhausted: all {} addresses are in use",
            ipam::capacity(range)
        )));
    }
    sqlx::query(
        "INSERT INTO ip_allocations (network, family, host_offset, owner_kind, owner_id) \
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(network)
    .bind(family.as_i64())
    .bind(next)
    .bind(owner_kind)
    .bind(owner_id)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    Ok(match range {
        IpNet::V4(r) => IpAddr::V4(ipam::v4_at(r, next as u128)),
        IpNet::V6(r) => IpAddr::V6(ipam::v6_at(r, next as u128)),
    })
}

/// Takes the lowest free IPv4 and IPv6 addresses (for the ranges the
/// network has) for an owner.
pub(super) async fn allocate_addresses(
    conn: &mut SqliteConnection,
    net: &Network,
    owner_kind: &str,
    owner_id: &str,
) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>)> {
    let network = net.name.as_str();
    let mut v4 = None;
    let mut v6 = None;
    for range in net.ranges() {
        match allocate(conn, network, range, owner_kind, owner_id).await? {
            IpAddr::V4(a) => v4 = Some(a),
            IpAddr::V6(a) => v6 = Some(a),
        }
    }
    Ok((v4, v6))
}

/// Frees every address an owner holds.
pub(super) async fn free_addresses(conn: &mut SqliteConnection, owner_id: &str) -> Result<()> {
    sqlx::query("DELETE FROM ip_allocations WHERE owner_id = ?")
        .bind(owner_id)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    Ok(())
}

pub(super) fn unique_backstop(e: sqlx::Error) -> Error {
    // The explicit checks above give precise messages; a unique violation here
    // means a concurrent writer won a race the checks could not see.
    if is_unique_violation(&e) {
        Error::already_exists("name", "a node with this name or public key already exists")
    } else {
        db_err(e)
    }
}

pub(super) fn endpoint_text(e: &Option<Endpoint>) -> String {
    e.as_ref().map(ToString::to_string).unwrap_or_default()
}

pub(super) fn page_key(after: Option<&str>) -> (String, String) {
    match after.and_then(|a| a.split_once('/')) {
        Some((n, m)) => (n.to_owned(), m.to_owned()),
        None => (String::new(), String::new()),
    }
}

#[async_trait]
impl NodeStore for SqliteStore {
    async fn create_enrollment_key(&self, key: &EnrollmentKey, hash: &[u8; 32]) -> Result<()> {
        let (_w, mut tx) = self.write_tx().await?;
        for n in &key.networks {
            if fetch_network(&mut *tx, n.as_str()).await?.is_none() {
                return Err(Error::not_found("network", n));
            }
        }
        sqlx::query(
            "INSERT INTO enrollment_keys (id, hash, description, uses_remaining, unlimited, \
             expire_time, create_time) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&key.id)
        .bind(&hash[..])
        .bind(&key.description)
        .bind(key.uses_remaining as i64)
        .bind(key.unlimited)
        .bind(key.expire_time.map(to_micros))
        .bind(to_micros(key.create_time))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        for n in &key.networks {
            sqlx::query("INSERT INTO enrollment_key_networks (key_id, network) VALUES (?, ?)")
                .bind(&key.id)
                .bind(n.as_str())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        events::commit(
            tx,
            Action::Created,
            &Resource::EnrollmentKey(key.clone()),
            false,
        )
        .await
    }

    async fn list_enrollment_keys(
        &self,
        network: Option<&str>,
        page: &PageRequest,
    ) -> Result<Vec<EnrollmentKey>> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLS} FROM enrollment_keys k WHERE k.id > ?1 AND (?2 IS NULL OR \
             EXISTS (SELECT 1 FROM enrollment_key_networks n WHERE n.key_id = k.id AND n.network = ?2)) \
             ORDER BY k.id LIMIT ?3"
        ))
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(network)
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| key_from_row(r).map(|(k, _)| k))
            .collect()
    }

    async fn delete_enrollment_key(&self, id: &str) -> Result<()> {
        let (_w, mut tx) = self.write_tx().await?;
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLS} FROM enrollment_keys k WHERE k.id = ?"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let Some((key, _)) = row.as_ref().map(key_from_row).transpose()? else {
            return Err(Error::not_found("enrollment key", id));
        };
        sqlx::query("DELETE FROM enrollment_keys WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        events::commit(tx, Action::Deleted, &Resource::EnrollmentKey(key), false).await
    }

    async fn enrollment_key(&self, id: &str, presented: &str) -> Result<EnrollmentKey> {
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        load_key(&mut conn, id, presented).await
    }

    async fn register_node(&self, r: &NodeRegistration<'_>) -> Result<Node> {
        let reg = r.registration;
        let now = crate::domain::now();
        let (_w, mut tx) = self.write_tx().await?;
        let key = load_key(&mut tx, r.key_id, r.key_token).await?;
        key.admit(&reg.network, now)?;
        let network = reg.network.as_str();
        let net = fetch_network(&mut *tx, network)
            .await?
            .ok_or_else(|| Error::not_found("network", network))?;
        check_unique(
            &mut tx,
            network,
            "",
            Some(("name", &reg.name)),
            Some(("public_key", &reg.public_key)),
        )
        .await?;
        let (address, address6) = allocate_addresses(&mut tx, &net, "node", &r.node_id).await?;
        let node = Node {
            id: r.node_id.clone(),
            network: reg.network.clone(),
            name: reg.name.clone(),
            public_key: reg.public_key,
            endpoint: reg.endpoint.clone(),
            listen_port: reg.listen_port.unwrap_or(net.listen_port as u16),
            address,
            address6,
            os: reg.os.clone(),
            keepalive: 0,
            egress: None,
            ingress: None,
            connected: false,
            last_seen: None,
            applied_revision: 0,
            config_revision: 0,
            create_time: now,
            update_time: now,
            wireguard_interface: None,
            host: None,
            apply_error: None,
            failed_revision: 0,
        };
        sqlx::query(
            "INSERT INTO nodes (id, network, name, public_key, endpoint, listen_port, address, \
             address6, os, token_id, token_hash, create_time, update_time) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&node.id)
        .bind(network)
        .bind(node.name.as_str())
        .bind(node.public_key.to_string())
        .bind(endpoint_text(&node.endpoint))
        .bind(node.listen_port as i64)
        .bind(node.address.map(|a| a.to_string()))
        .bind(node.address6.map(|a| a.to_string()))
        .bind(&node.os)
        .bind(&r.token.id)
        .bind(&r.token.hash[..])
        .bind(to_micros(now))
        .bind(to_micros(now))
        .execute(&mut *tx)
        .await
        .map_err(unique_backstop)?;
        // Take one use; the WHERE makes it impossible to go below zero.
        let took = sqlx::query(
            "UPDATE enrollment_keys SET uses_remaining = uses_remaining - 1 \
             WHERE id = ? AND (unlimited OR uses_remaining > 0)",
        )
        .bind(&key.id)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if took.rows_affected() == 0 {
            return Err(Error::Unauthenticated(
                "enrollment key has no uses left".into(),
            ));
        }
        let mut node = node;
        node.config_revision = node_event(&mut tx, Action::Created, &node).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(node)
    }

    async fn get_node(&self, id: &str) -> Result<Node> {
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        fetch_node(&mut conn, id).await
    }

    async fn list_nodes(&self, network: Option<&str>, page: &PageRequest) -> Result<Vec<Node>> {
        let (after_net, after_name) = page_key(page.after.as_deref());
        let rows = sqlx::query(&format!(
            "SELECT {NODE_COLS} FROM nodes WHERE (network, name) > (?1, ?2) \
             AND (?3 IS NULL OR network = ?3) ORDER BY network, name LIMIT ?4"
        ))
        .bind(after_net)
        .bind(after_name)
        .bind(network)
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(node_from_row).collect()
    }

    async fn network_nodes(&self, network: &str) -> Result<Vec<Node>> {
        let rows = sqlx::query(&format!(
            "SELECT {NODE_COLS} FROM nodes WHERE network = ? ORDER BY name"
        ))
        .bind(network)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(node_from_row).collect()
    }

    async fn update_node(&self, id: &str, patch: &NodePatch) -> Result<Node> {
        let (_w, mut tx) = self.write_tx().await?;
        let mut node = fetch_node(&mut tx, id).await?;
        check_unique(
            &mut tx,
            node.network.as_str(),
            id,
            patch.name.as_ref().map(|n| ("node.name", n)),
            patch.public_key.as_ref().map(|k| ("node.public_key", k)),
        )
        .await?;
        let before = node.clone();
        patch.apply(&mut node, crate::domain::now());
        sqlx::query(
            "UPDATE nodes SET name = ?, public_key = ?, endpoint = ?, listen_port = ?, \
             keepalive = ?, update_time = ? WHERE id = ?",
        )
        .bind(node.name.as_str())
        .bind(node.public_key.to_string())
        .bind(endpoint_text(&node.endpoint))
        .bind(node.listen_port as i64)
        .bind(node.keepalive as i64)
        .bind(to_micros(node.update_time))
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(unique_backstop)?;
        node.config_revision = node_event(&mut tx, Action::Updated, &node).await?;
        // The ingress gateway's key and endpoint are in its clients' files.
        if node.ingress.is_some()
            && (before.public_key != node.public_key
                || before.endpoint != node.endpoint
                || before.listen_port != node.listen_port)
        {
            bump_clients_of(&mut tx, id, node.config_revision).await?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(node)
    }

    async fn delete_node(&self, id: &str) -> Result<Node> {
        let (_w, mut tx) = self.write_tx().await?;
        let node = fetch_node(&mut tx, id).await?;
        // Its external clients go with it.
        delete_clients_of(&mut tx, id).await?;
        free_addresses(&mut tx, id).await?;
        sqlx::query("DELETE FROM nodes WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        node_event(&mut tx, Action::Deleted, &node).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(node)
    }

    async fn node_for_token(&self, id: &str, presented: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT id, token_hash FROM nodes WHERE token_id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(row.and_then(|r| {
            let hash: Vec<u8> = r.try_get("token_hash").ok()?;
            token::verify(presented, &hash)
                .then(|| r.try_get("id").ok())
                .flatten()
        }))
    }

    async fn set_egress(&self, node_id: &str, egress: Option<&Egress>) -> Result<Node> {
        let (_w, mut tx) = self.write_tx().await?;
        let mut node = fetch_node(&mut tx, node_id).await?;
        if let Some(e) = egress {
            let rows = sqlx::query(&format!(
                "SELECT {NODE_COLS} FROM nodes WHERE network = ? AND egress_ranges IS NOT NULL"
            ))
            .bind(node.network.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
            let gateways = rows.iter().map(node_from_row).collect::<Result<Vec<_>>>()?;
            check_egress_unique(&gateways, node_id, e)?;
        } else if node.egress.is_none() {
            return Err(Error::FailedPrecondition(format!(
                "node {:?} is not an egress gateway",
                node.name.as_str()
            )));
        }
        node.egress = egress.cloned();
        node.update_time = crate::domain::now();
        sqlx::query(
            "UPDATE nodes SET egress_ranges = ?, egress_interface = ?, egress_nat = ?, \
             update_time = ? WHERE id = ?",
        )
        .bind(egress.map(|e| {
            e.ranges
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        }))
        .bind(egress.map(|e| e.interface.clone()).unwrap_or_default())
        .bind(egress.is_none_or(|e| e.nat))
        .bind(to_micros(node.update_time))
        .bind(node_id)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        node.config_revision = node_event(&mut tx, Action::Updated, &node).await?;
        // Egress ranges are in every client's AllowedIPs.
        sqlx::query("UPDATE ext_clients SET config_revision = ? WHERE network = ?")
            .bind(node.config_revision as i64)
            .bind(node.network.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(node)
    }

    async fn set_ingress(
        &self,
        node_id: &str,
        ingress: Option<&Ingress>,
        force: bool,
    ) -> Result<Node> {
        let (_w, mut tx) = self.write_tx().await?;
        let mut node = fetch_node(&mut tx, node_id).await?;
        if ingress.is_none() {
            if node.ingress.is_none() {
                return Err(Error::FailedPrecondition(format!(
                    "node {:?} is not an ingress gateway",
                    node.name.as_str()
                )));
            }
            let clients: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM ext_clients WHERE ingress_node_id = ?")
                    .bind(node_id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_err)?;
            if clients > 0 && !force {
                return Err(Error::FailedPrecondition(format!(
                    "ingress gateway {:?} has {clients} external client(s); delete them first \
                     or set force to delete them with it",
                    node.name.as_str()
                )));
            }
            delete_clients_of(&mut tx, node_id).await?;
        }
        node.ingress = ingress.cloned();
        node.update_time = crate::domain::now();
        sqlx::query("UPDATE nodes SET ingress = ?, ingress_dns = ?, update_time = ? WHERE id = ?")
            .bind(ingress.is_some())
            .bind(
                ingress
                    .map(|i| join_ips(&i.ext_client_dns))
                    .unwrap_or_default(),
            )
            .bind(to_micros(node.update_time))
            .bind(node_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        node.config_revision = node_event(&mut tx, Action::Updated, &node).await?;
        // The gateway's DNS is in its clients' files.
        bump_clients_of(&mut tx, node_id, node.config_revision).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(node)
    }

    async fn network_view(&self, network: &str) -> Result<NetworkView> {
        // One read transaction: a consistent snapshot under WAL.
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let net = fetch_network(&mut *tx, network)
            .await?
            .ok_or_else(|| Error::not_found("network", network))?;
        let revision: i64 = sqlx::query_scalar("SELECT revision FROM networks WHERE name = ?")
            .bind(network)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        let nodes = network_nodes(&mut tx, network).await?;
        let ext_clients = fetch_clients(&mut tx, network).await?;
        let dns_entries = fetch_entries(&mut tx, network).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(NetworkView {
            network: net,
            nodes,
            ext_clients,
            dns_entries,
            revision: revision as u64,
        })
    }

    async fn report_status(&self, node_id: &str, report: &StatusReport) -> Result<Reported> {
        let (_w, mut tx) = self.write_tx().await?;
        let mut node = fetch_node(&mut tx, node_id).await?;
        let before = node.clone();
        let config_changed = report.apply(&mut node);
        let now = crate::domain::now();
        node.last_seen = Some(now);
        if config_changed {
            node.update_time = now;
        }
        let host = report
            .host
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| Error::Internal(format!("encoding host report: {e}")))?;
        sqlx::query(
            "UPDATE nodes SET applied_revision = ?, last_seen = ?, endpoint = ?, \
             wireguard_interface = ?, host_report = COALESCE(?, host_report), \
             apply_error = ?, failed_revision = ?, update_time = ? WHERE id = ?",
        )
        .bind(node.applied_revision as i64)
        .bind(node.last_seen.map(to_micros))
        .bind(endpoint_text(&node.endpoint))
        .bind(node.wireguard_interface.as_deref())
        .bind(host)
        .bind(node.apply_error.as_deref().unwrap_or_default())
        .bind(node.failed_revision as i64)
        .bind(to_micros(node.update_time))
        .bind(node_id)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if config_changed {
            // Its own config (the interface name) or its peers' (the
            // endpoint) changed: a write like UpdateNode's.
            node.config_revision = node_event(&mut tx, Action::Updated, &node).await?;
            // The ingress gateway's endpoint is in its clients' files.
            if node.ingress.is_some() && before.endpoint != node.endpoint {
                bump_clients_of(&mut tx, node_id, node.config_revision).await?;
            }
        }
        tx.commit().await.map_err(db_err)?;
        Ok(Reported {
            node,
            config_changed,
        })
    }
}
