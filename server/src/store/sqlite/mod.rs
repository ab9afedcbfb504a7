//! The embedded SQLite store (WAL, foreign keys on, synchronous=FULL so an
//! acknowledged write survives a crash).

use std::{str::FromStr, time::Duration};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::{Mutex, MutexGuard};

use super::db_err;
use crate::domain::{Error, Result};

mod dns;
mod events;
mod ext_clients;
mod networks;
mod nodes;
mod tokens;

/// SQLite-backed [`super::Store`].
pub struct SqliteStore {
    pool: SqlitePool,
    /// SQLite has one writer; taking this before every write transaction
    /// makes writers queue here instead of failing with SQLITE_BUSY.
    write: Mutex<()>,
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
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| Error::Internal(format!("migrating the database: {e}")))?;
        Ok(Self {
            pool,
            write: Mutex::new(()),
        })
    }

    /// Begins a write transaction behind the writer lock.
    async fn write_tx(&self) -> Result<(MutexGuard<'_, ()>, sqlx::Transaction<'_, sqlx::Sqlite>)> {
        let guard = self.write.lock().await;
        let tx = self.pool.begin().await.map_err(db_err)?;
        Ok((guard, tx))
    }
}
