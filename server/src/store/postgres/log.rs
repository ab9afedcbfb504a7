//! The event log on PostgreSQL, gap-safe across replicas.
//!
//! Revisions come from the one row of `log_head`: an append increments it
//! (`UPDATE … RETURNING`) and keeps the row locked until its transaction
//! ends. So appends of concurrent transactions run one at a time; the next
//! one reads the head only after the previous committed (and then sees its
//! number) or rolled back (and then takes the same number again).
//! Revisions are therefore dense and become visible in order: a reader
//! that has seen revision N never later finds one below N, which a
//! sequence could not promise (numbers taken in one order commit in
//! another, and rolled-back ones leave gaps).
//!
//! Each append also queues `NOTIFY meshplane_events '<revision>'`, which
//! PostgreSQL delivers to listening replicas when (and only if) the
//! transaction commits.
//!
//! A transaction that locked the head first ([`crate::store::Tx::lock_log`],
//! as every group-commit batch does) knows the next revisions without
//! asking: its appends are numbered in memory ([`Pending`]) and written
//! together just before the commit ([`flush`]: the events, the head, the
//! networks' config revisions and one notification of the newest, in one
//! statement), so a write costs no round trip for its event. The order and
//! density argument is unchanged: the head stays locked from the first read
//! to the commit.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use sqlx::{
    PgConnection,
    postgres::{PgExecutor, PgListener, PgPool, PgPoolOptions},
    types::Json,
};

use super::{all, signed, unsigned};
use crate::domain::{
    Error, Result,
    event::{Action, Event, Resource},
};
use crate::store::{LogBounds, Notifications, db_err, rows};

/// The NOTIFY channel appends announce their revisions on.
macro_rules! channel {
    () => {
        "meshplane_events"
    };
}
const CHANNEL: &str = channel!();

/// Takes the next revision, writes the event under it, moves the network's
/// config revision when `$7`, and queues the notification: one statement,
/// so the log head stays locked for one round trip plus the commit.
const APPEND: &str = concat!(
    "WITH head AS (\
        UPDATE log_head SET revision = revision + 1 RETURNING revision\
    ), event AS (\
        INSERT INTO events (revision, network, kind, resource_id, action, payload, event_time) \
        SELECT revision, $1, $2, $3, $4, $5, $6 FROM head RETURNING revision\
    ), config AS (\
        UPDATE networks SET revision = event.revision FROM event \
        WHERE $7 AND networks.name = $1\
    ) \
    SELECT event.revision, pg_notify('",
    channel!(),
    "', event.revision::text) FROM event"
);

/// Appends an event in the transaction on `conn` and returns its revision.
pub(super) async fn append(
    conn: &mut PgConnection,
    action: Action,
    resource: &Resource,
    config: bool,
    network_locked: bool,
) -> Result<u64> {
    let network = resource.network();
    let config = config && network.is_some();
    if config && !network_locked {
        // The network's row, in case the caller has not locked it (the
        // service's writes never come here: group commit's batches hold the
        // log head and write their events at commit; see `flush`). This
        // locks the network before the head, the reverse of the service's
        // order, so mixing the two ways can deadlock: the database then
        // aborts one, which is retried.
        sqlx::query("SELECT 1 FROM networks WHERE name = $1 FOR NO KEY UPDATE")
            .bind(&network)
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
    }
    let revision: i64 = sqlx::query_scalar(APPEND)
        .bind(&network)
        .bind(resource.kind())
        .bind(resource.id())
        .bind(action.as_i64())
        .bind(Json(resource))
        .bind(crate::domain::now())
        .bind(config)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err)?;
    unsigned(revision, "revision")
}

/// An event appended in a transaction that holds the log head's lock
/// ([`crate::store::Tx::lock_log`]): its revision is known from the head
/// read under that lock, and it is written with the transaction's other
/// events by [`flush`], just before the commit.
#[derive(Debug)]
pub(super) struct Pending {
    pub revision: u64,
    pub network: Option<String>,
    pub kind: &'static str,
    pub resource_id: String,
    pub action: i64,
    /// The resource as JSON.
    pub payload: String,
    pub time: DateTime<Utc>,
    /// The network's config revision becomes this event's.
    pub config: bool,
}

impl Pending {
    /// The event [`append`] would write for `resource` at `revision`.
    pub fn new(revision: u64, action: Action, resource: &Resource, config: bool) -> Result<Self> {
        let network = resource.network();
        Ok(Self {
            revision,
            config: config && network.is_some(),
            network,
            kind: resource.kind(),
            resource_id: resource.id(),
            action: action.as_i64(),
            payload: serde_json::to_string(resource)
                .map_err(|e| Error::Internal(format!("encoding an event: {e}")))?,
            time: crate::domain::now(),
        })
    }
}

/// Writes `events` (revisions `head + 1` onwards, dense) in one statement:
/// the events, the log head moved to the last one (which must still be at
/// `head`: the transaction holds its lock), each network's config revision
/// moved to its newest config event, and one notification of the newest
/// revision (delivered on commit).
pub(super) async fn flush(conn: &mut PgConnection, head: u64, events: &[Pending]) -> Result<()> {
    let Some(last) = events.last() else {
        return Ok(());
    };
    let mut configs: Vec<(String, i64)> = Vec::new();
    for e in events.iter().filter(|e| e.config) {
        let (Some(network), Ok(rev)) = (&e.network, i64::try_from(e.revision)) else {
            continue;
        };
        match configs.iter_mut().find(|(n, _)| n == network) {
            Some((_, r)) => *r = (*r).max(rev),
            None => configs.push((network.clone(), rev)),
        }
    }
    let (nets, revs): (Vec<String>, Vec<i64>) = configs.into_iter().unzip();
    let revisions = events
        .iter()
        .map(|e| signed(e.revision, "revision"))
        .collect::<Result<Vec<_>>>()?;
    let (written, moved): (i64, i64) = sqlx::query_as(concat!(
        "WITH ev AS (\
            INSERT INTO events (revision, network, kind, resource_id, action, payload, event_time) \
            SELECT r, n, k, i, a::smallint, p::jsonb, t FROM UNNEST($1::bigint[], $2::text[], \
                $3::text[], $4::text[], $5::bigint[], $6::text[], $7::timestamptz[]) \
                AS u(r, n, k, i, a, p, t) \
            RETURNING 1\
        ), head AS (\
            UPDATE log_head SET revision = $8 WHERE revision = $9 RETURNING 1\
        ), config AS (\
            UPDATE networks w SET revision = c.rev \
            FROM UNNEST($10::text[], $11::bigint[]) AS c(name, rev) WHERE w.name = c.name\
        ) \
        SELECT (SELECT count(*) FROM ev), (SELECT count(*) FROM head) \
        FROM (SELECT pg_notify('",
        channel!(),
        "', $8::text)) notified"
    ))
    .bind(revisions)
    .bind(events.iter().map(|e| e.network.clone()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.kind).collect::<Vec<_>>())
    .bind(
        events
            .iter()
            .map(|e| e.resource_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(events.iter().map(|e| e.action).collect::<Vec<_>>())
    .bind(
        events
            .iter()
            .map(|e| e.payload.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(events.iter().map(|e| e.time).collect::<Vec<_>>())
    .bind(signed(last.revision, "revision")?)
    .bind(signed(head, "revision")?)
    .bind(nets)
    .bind(revs)
    .fetch_one(&mut *conn)
    .await
    .map_err(db_err)?;
    if usize::try_from(written).ok() != Some(events.len()) || moved != 1 {
        return Err(Error::Internal(format!(
            "the event log moved while locked: {written} of {} events written, head at {head} \
             moved {moved} times",
            events.len()
        )));
    }
    Ok(())
}

/// Events after `after`, oldest first, at most `limit`.
pub(super) async fn events_after<'c>(
    ex: impl PgExecutor<'c>,
    after: u64,
    limit: usize,
) -> Result<Vec<Event>> {
    let Ok(after) = i64::try_from(after) else {
        return Ok(Vec::new());
    };
    let rows = sqlx::query(
        "SELECT revision, action, payload::text AS payload, event_time FROM events \
         WHERE revision > $1 ORDER BY revision LIMIT $2",
    )
    .bind(after)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(ex)
    .await
    .map_err(db_err)?;
    all(&rows, rows::event)
}

/// The oldest revision kept and the newest appended, in one snapshot.
pub(super) async fn bounds<'c>(ex: impl PgExecutor<'c>) -> Result<LogBounds> {
    let (latest, oldest): (i64, i64) = sqlx::query_as(
        "SELECT h.revision, COALESCE((SELECT MIN(e.revision) FROM events e), h.revision + 1) \
         FROM log_head h",
    )
    .fetch_one(ex)
    .await
    .map_err(db_err)?;
    Ok(LogBounds {
        oldest: unsigned(oldest, "revision")?,
        latest: unsigned(latest, "revision")?,
    })
}

/// Deletes the events up to the newest one older than `before`, except
/// the newest event: always a prefix of the log, even when event times are
/// not in revision order (clocks of replicas differ), so the log has no
/// holes.
pub(super) async fn prune<'c>(ex: impl PgExecutor<'c>, before: DateTime<Utc>) -> Result<u64> {
    let done = sqlx::query(
        "DELETE FROM events WHERE \
         revision <= (SELECT MAX(revision) FROM events WHERE event_time < $1) \
         AND revision < (SELECT MAX(revision) FROM events)",
    )
    .bind(before)
    .execute(ex)
    .await
    .map_err(db_err)?;
    Ok(done.rows_affected())
}

/// Waits this long after a failure of the notification connection before
/// trying again, doubling up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Listens on [`CHANNEL`] on a connection of its own, opened with the
/// store pool's options (not one of the pool's: it is held for as long as
/// the stream lives).
async fn listen(pool: &PgPool) -> Result<PgListener> {
    let own = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(super::ACQUIRE_TIMEOUT)
        .connect_with((*pool.connect_options()).clone())
        .await
        .map_err(db_err)?;
    let mut listener = PgListener::connect_with(&own).await.map_err(db_err)?;
    listener.ignore_pool_close_event(true);
    listener.listen(CHANNEL).await.map_err(db_err)?;
    Ok(listener)
}

/// What the notification stream holds between items.
struct Follow {
    /// The store's pool, whose options a new listener connects with.
    pool: PgPool,
    /// The listener; None after it failed, until it is opened again.
    listener: Option<PgListener>,
    /// The wait before the next attempt to open it.
    backoff: Duration,
}

/// The revisions other transactions commit, as a stream that never ends
/// (until dropped). An item is a hint to read the log: `Ok(revision)` for a
/// notification, and `Ok(0)` whenever notifications may have been lost
/// (the connection dropped and was established again; a payload that is
/// not a revision), so the reader catches up from the log. Failures to
/// reconnect are logged and retried with backoff.
pub(super) async fn notifications(pool: &PgPool) -> Result<Notifications> {
    let state = Follow {
        pool: pool.clone(),
        listener: Some(listen(pool).await?),
        backoff: MIN_BACKOFF,
    };
    Ok(futures::stream::unfold(state, |mut s| async move {
        let hint = next(&mut s).await;
        Some((Ok(hint), s))
    })
    .boxed())
}

/// The next hint of [`notifications`].
async fn next(s: &mut Follow) -> u64 {
    loop {
        let Some(listener) = s.listener.as_mut() else {
            match listen(&s.pool).await {
                Ok(l) => {
                    tracing::info!("listening for other replicas' changes again");
                    s.listener = Some(l);
                    s.backoff = MIN_BACKOFF;
                    // Listening again: whatever was announced meanwhile is
                    // in the log.
                    return 0;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?s.backoff, "cannot listen for other replicas' changes");
                    tokio::time::sleep(s.backoff).await;
                    s.backoff = (s.backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
        };
        match listener.try_recv().await {
            Ok(Some(n)) => match n.payload().parse::<u64>() {
                Ok(revision) => return revision,
                Err(_) => {
                    tracing::warn!(
                        payload = n.payload(),
                        "unexpected notification; reading the log"
                    );
                    return 0;
                }
            },
            // The connection was lost and is established again (with its
            // LISTEN): notifications may have been missed.
            Ok(None) => {
                tracing::info!("notification connection re-established; reading the log");
                return 0;
            }
            Err(e) => {
                let e: Error = db_err(e);
                tracing::warn!(error = %e, retry_in = ?s.backoff, "notification connection failed");
                s.listener = None;
                tokio::time::sleep(s.backoff).await;
                s.backoff = (s.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
