//! The SQL both sides share: column lists matching the decoders in
//! [`crate::store::rows`], loads that run on any connection (the pool's for
//! reads, a write transaction's for [`crate::store::Tx`]), the stored form
//! of values, and the event log append.

use sqlx::{SqliteConnection, sqlite::SqliteRow};

use crate::domain::{
    Error, Result,
    event::{Action, Resource},
    ext_client::ExtClient,
    network::Network,
    node::{Endpoint, Node},
    policy::{NetworkPolicy, Tag},
};
use crate::store::{
    LogBounds, StoredKey, db_err,
    rows::{self, Cols},
    to_micros,
};

/// An IPv4 range's first and last address as stored in `range4_lo` and
/// `range4_hi`.
pub(super) fn bounds4(range: Option<ipnet::Ipv4Net>) -> Option<(i64, i64)> {
    range.map(|r| {
        (
            i64::from(u32::from(r.network())),
            i64::from(u32::from(r.broadcast())),
        )
    })
}

/// An IPv6 range's first and last address as stored in `range6_lo` and
/// `range6_hi` (16 big-endian bytes: SQLite orders BLOBs bytewise).
pub(super) fn bounds6(range: Option<ipnet::Ipv6Net>) -> Option<(Vec<u8>, Vec<u8>)> {
    range.map(|r| {
        (
            r.network().octets().to_vec(),
            r.broadcast().octets().to_vec(),
        )
    })
}

/// Tags as stored: comma-joined ('' when none).
pub(super) fn tags_text(tags: &[Tag]) -> String {
    tags.iter().map(Tag::as_str).collect::<Vec<_>>().join(",")
}

/// Columns [`rows::network`] reads.
macro_rules! network_cols {
    () => {
        "name, range4, range6, keepalive, mtu, listen_port, ext_client_dns, nameservers, \
         create_time, update_time"
    };
}

/// Columns [`rows::node`] reads, but the host report. The config revision
/// is the network's; `nodes.connected` is no longer read (presence is).
macro_rules! node_cols_but_host {
    () => {
        "id, network, name, public_key, endpoint, listen_port, address, address6, os, \
         keepalive, egress_ranges, egress_interface, egress_nat, egress_ha, ingress, ingress_dns, \
         last_seen, applied_revision, create_time, update_time, wireguard_interface, \
         apply_error, failed_revision, tags, \
         (SELECT w.revision FROM networks w WHERE w.name = nodes.network) AS config_revision"
    };
}

/// Columns [`rows::node`] reads, with the host report.
macro_rules! node_cols {
    () => {
        concat!(node_cols_but_host!(), ", host_report")
    };
}

/// Columns [`rows::node`] reads, without the host report: for the nodes
/// configs are computed from, which never look at it (it can be large).
macro_rules! view_node_cols {
    () => {
        concat!(node_cols_but_host!(), ", NULL AS host_report")
    };
}

/// Columns [`rows::ext_client`] reads (and [`crate::store::Tx::insert_ext_client`]
/// writes, in this order).
macro_rules! client_cols {
    () => {
        "id, network, ingress_node_id, name, public_key, sealed_private_key, address, \
         address6, dns, enabled, config_revision, downloaded_revision, create_time, \
         update_time, tags"
    };
}

/// Columns [`rows::enrollment_key`] reads from `enrollment_keys k`, but the
/// hash, with the key's networks comma-joined in `networks`.
macro_rules! key_cols_but_hash {
    () => {
        "k.id, k.description, k.uses_remaining, k.unlimited, k.expire_time, k.create_time, \
         (SELECT group_concat(n.network, ',') FROM enrollment_key_networks n \
          WHERE n.key_id = k.id) AS networks"
    };
}

/// Columns [`rows::dns_entry`] reads.
macro_rules! dns_cols {
    () => {
        "network, name, address, address6, create_time"
    };
}

/// Columns [`rows::policy`] reads.
macro_rules! policy_cols {
    () => {
        "network, policy, revision, update_time"
    };
}

/// Columns [`rows::event`] reads.
macro_rules! event_cols {
    () => {
        "revision, action, payload, event_time"
    };
}

pub(super) use {
    client_cols, dns_cols, event_cols, key_cols_but_hash, network_cols, node_cols,
    node_cols_but_host, view_node_cols,
};

/// Decodes every row with one of the shared decoders.
pub(super) fn decode<T>(rows: &[SqliteRow], f: fn(&dyn Cols) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(|r| f(r)).collect()
}

/// Decodes the row, when there is one.
pub(super) fn decode_one<T>(
    row: Option<SqliteRow>,
    f: fn(&dyn Cols) -> Result<T>,
) -> Result<Option<T>> {
    row.as_ref().map(|r| f(r)).transpose()
}

/// An enrollment key row with its `networks` aggregate.
pub(super) fn key_of(r: &SqliteRow) -> Result<StoredKey> {
    let networks = r
        .opt_text("networks")?
        .unwrap_or_default()
        .split(',')
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    rows::enrollment_key(r, networks)
}

// Loads.

/// One network.
pub(super) async fn network(conn: &mut SqliteConnection, name: &str) -> Result<Option<Network>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        network_cols!(),
        " FROM networks WHERE name = ?"
    ))
    .bind(name)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?;
    decode_one(row, rows::network)
}

/// One node, with its host report.
pub(super) async fn node(conn: &mut SqliteConnection, id: &str) -> Result<Option<Node>> {
    let row = sqlx::query(concat!("SELECT ", node_cols!(), " FROM nodes WHERE id = ?"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?;
    decode_one(row, rows::node)
}

/// One external client.
pub(super) async fn ext_client(conn: &mut SqliteConnection, id: &str) -> Result<Option<ExtClient>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        client_cols!(),
        " FROM ext_clients WHERE id = ?"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?;
    decode_one(row, rows::ext_client)
}

/// A network's stored policy.
pub(super) async fn policy(
    conn: &mut SqliteConnection,
    network: &str,
) -> Result<Option<NetworkPolicy>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        policy_cols!(),
        " FROM network_policies WHERE network = ?"
    ))
    .bind(network)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?;
    decode_one(row, rows::policy)
}

/// One enrollment key with its hash.
pub(super) async fn enrollment_key(
    conn: &mut SqliteConnection,
    id: &str,
) -> Result<Option<StoredKey>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        key_cols_but_hash!(),
        ", k.hash FROM enrollment_keys k WHERE k.id = ?"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?;
    row.as_ref().map(key_of).transpose()
}

/// The oldest revision the log keeps and the newest ever appended. The
/// newest comes from `sqlite_sequence`, which AUTOINCREMENT keeps past
/// deleted rows, so it never goes back when pruning empties the log (the
/// MAX over the rows only guards against a sequence row gone missing).
/// One statement: one snapshot.
pub(super) async fn log_bounds(conn: &mut SqliteConnection) -> Result<LogBounds> {
    let (latest, oldest): (i64, Option<i64>) = sqlx::query_as(
        "SELECT MAX(\
             COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0), \
             COALESCE((SELECT MAX(revision) FROM events), 0)), \
         (SELECT MIN(revision) FROM events)",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(db_err)?;
    let corrupt = || Error::Internal("stored event log: bad revision".into());
    let latest = u64::try_from(latest).map_err(|_| corrupt())?;
    let oldest = match oldest {
        Some(r) => u64::try_from(r).map_err(|_| corrupt())?,
        None => latest.saturating_add(1),
    };
    Ok(LogBounds { oldest, latest })
}

// The event log.

/// Appends an event and returns its revision (the next of the
/// AUTOINCREMENT sequence, given back when the transaction rolls back).
/// With `config` and a network, the network's config revision becomes it.
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
    if let (true, Some(n)) = (config, &network) {
        sqlx::query("UPDATE networks SET revision = ? WHERE name = ?")
            .bind(rev)
            .bind(n)
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
    }
    u64::try_from(rev).map_err(|_| Error::Internal("stored event log: bad revision".into()))
}

// Stored forms.

/// A count or revision as SQLite's signed integer.
pub(super) fn int(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::Internal(format!("{what} {v} is too large to store")))
}

/// An endpoint's stored text (empty for none).
pub(super) fn endpoint_text(e: &Option<Endpoint>) -> String {
    e.as_ref().map(ToString::to_string).unwrap_or_default()
}

/// A node's gateway columns: egress_ranges (NULL when not an egress
/// gateway), egress_interface, egress_nat, ingress, ingress_dns.
pub(super) fn gateway_cols(node: &Node) -> (Option<String>, String, bool, bool, String) {
    let e = node.egress.as_ref();
    (
        e.map(|e| {
            e.ranges
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        }),
        e.map(|e| e.interface.clone()).unwrap_or_default(),
        e.is_none_or(|e| e.nat),
        node.ingress.is_some(),
        node.ingress
            .as_ref()
            .map(|i| crate::store::join_ips(&i.ext_client_dns))
            .unwrap_or_default(),
    )
}

/// A node's host report as stored JSON (None when it has none).
pub(super) fn host_json(node: &Node) -> Result<Option<String>> {
    node.host
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| Error::Internal(format!("encoding host report of node {}: {e}", node.id)))
}

/// The `network/name` key of a page of nodes or clients, split (empty
/// before the first page).
pub(super) fn page_key(after: Option<&str>) -> (String, String) {
    match after.and_then(|a| a.split_once('/')) {
        Some((n, m)) => (n.to_owned(), m.to_owned()),
        None => (String::new(), String::new()),
    }
}

/// [`crate::store::Tx::save_report`]: the columns an agent's reports own;
/// last_seen never moves back.
pub(super) async fn save_report<'e, E>(ex: E, node: &Node) -> Result<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    sqlx::query(
        "UPDATE nodes SET applied_revision = ?, wireguard_interface = ?, \
         host_report = COALESCE(?, host_report), apply_error = ?, failed_revision = ?, \
         last_seen = COALESCE(MAX(COALESCE(last_seen, 0), ?), last_seen) WHERE id = ?",
    )
    .bind(int(node.applied_revision, "applied revision")?)
    .bind(node.wireguard_interface.as_deref())
    .bind(host_json(node)?)
    .bind(node.apply_error.as_deref().unwrap_or_default())
    .bind(int(node.failed_revision, "failed revision")?)
    .bind(node.last_seen.map(crate::store::to_micros))
    .bind(&node.id)
    .execute(ex)
    .await
    .map_err(crate::store::db_err)?;
    Ok(())
}
