//! The embedded SQLite store (WAL, foreign keys on, synchronous=FULL so an
//! acknowledged write survives a crash). SQL only: the rules are the
//! service layer's.
//!
//! Write transactions begin with `BEGIN IMMEDIATE`, which takes SQLite's
//! single write lock up front: the database itself serialises writers (of
//! this process and any other), and a transaction's reads see exactly what
//! it writes over. Reads outside transactions run concurrently on the pool
//! (WAL readers never wait for the writer).

use std::{str::FromStr, sync::Arc, time::Duration};

use sqlx::{
    Sqlite, Transaction,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
    },
};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::db_err;
use crate::domain::{Error, Result};

mod backup;
mod cols;
mod queries;
mod store;
mod tx;

#[cfg(test)]
mod tests;

pub use backup::{Restored, database_file, restore};
pub use tx::SqliteTx;

/// The schema's migrations (run at every open, and by a restore).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// SQLite-backed [`super::Store`].
pub struct SqliteStore {
    pool: SqlitePool,
    /// A fair (FIFO) queue in front of `BEGIN IMMEDIATE` and the small
    /// writes outside transactions. Correctness does not rest on it, the
    /// database's write lock does: it only makes this process's writers
    /// wait their turn here, in order, instead of spinning in SQLite's busy
    /// handler (and failing after `busy_timeout`). A [`SqliteTx`] holds its
    /// turn until commit or drop, so code holding one must not call a
    /// small write of the same store.
    queue: Arc<Mutex<()>>,
}

/// Fills `range4_lo` … `range6_hi` of networks written before those columns
/// existed (migration 0007), which SQL alone cannot compute from the CIDR
/// text. A no-op once done.
async fn fill_range_bounds(pool: &SqlitePool) -> Result<()> {
    let rows: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT name, range4, range6 FROM networks \
         WHERE (range4 IS NOT NULL AND range4_lo IS NULL) \
         OR (range6 IS NOT NULL AND range6_lo IS NULL)",
    )
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    for (name, range4, range6) in rows {
        let bad = |what: &str| {
            Error::Internal(format!("stored {what} of network {name:?} is not a range"))
        };
        let range4 = range4
            .map(|r| r.parse::<ipnet::Ipv4Net>().map_err(|_| bad("range4")))
            .transpose()?;
        let range6 = range6
            .map(|r| r.parse::<ipnet::Ipv6Net>().map_err(|_| bad("range6")))
            .transpose()?;
        let (lo4, hi4) = queries::bounds4(range4).unzip();
        let (lo6, hi6) = queries::bounds6(range6).unzip();
        sqlx::query(
            "UPDATE networks SET range4_lo = ?, range4_hi = ?, range6_lo = ?, range6_hi = ? \
             WHERE name = ?",
        )
        .bind(lo4)
        .bind(hi4)
        .bind(lo6)
        .bind(hi6)
        .bind(&name)
        .execute(pool)
        .await
        .map_err(db_err)?;
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` and migrates it.
    pub async fn open(url: &str) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::Internal(format!("bad database URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(db_err)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| Error::Internal(format!("migrating the database: {e}")))?;
        fill_range_bounds(&pool).await?;
        Ok(Self {
            pool,
            queue: Arc::new(Mutex::new(())),
        })
    }

    /// Waits for this writer's turn in the queue, then begins a write
    /// transaction holding SQLite's write lock (`BEGIN IMMEDIATE`; a
    /// writer of another process makes it wait up to `busy_timeout`, then
    /// fail as [`Error::Aborted`]).
    async fn begin_immediate(&self) -> Result<(OwnedMutexGuard<()>, Transaction<'static, Sqlite>)> {
        let turn = Arc::clone(&self.queue).lock_owned().await;
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)?;
        Ok((turn, tx))
    }
}
