//! Backup and restore of the SQLite database.
//!
//! A backup is `VACUUM INTO` a new file: one read transaction copies one
//! snapshot of what is committed (a write still in its transaction, or in
//! a group-commit batch not yet committed, is not in it) while writers go
//! on (WAL). A restore copies a backup to a temporary file next to the
//! database, checks it (an SQLite file, `PRAGMA integrity_check`,
//! meshplane's tables), migrates it to this version's schema and only then
//! renames it into place, so a failed restore leaves no database behind.

use std::{
    io::Read,
    path::{Path, PathBuf},
    str::FromStr,
};

use sqlx::{
    ConnectOptions, Connection, SqliteConnection, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
};

use super::{MIGRATOR, queries};
use crate::domain::{Error, Result};

/// The first 16 bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Tables every meshplane database has (since its first migrations).
const MESHPLANE_TABLES: [&str; 5] = [
    "_sqlx_migrations",
    "networks",
    "nodes",
    "events",
    "admin_tokens",
];

fn refused(msg: String) -> Error {
    Error::FailedPrecondition(msg)
}

/// The database file an `sqlite:` URL names.
pub fn database_file(url: &str) -> Result<PathBuf> {
    let opts = SqliteConnectOptions::from_str(url)
        .map_err(|e| Error::Internal(format!("bad database URL: {e}")))?;
    Ok(opts.get_filename().to_path_buf())
}

/// `path` made absolute (its directory resolved), so SQLite never reads it
/// as a URI or relative to another directory.
fn absolute(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| refused(format!("{}: not a file name", path.display())))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = dir.canonicalize().map_err(|e| {
        refused(format!(
            "{}: its directory {} cannot be used: {e}",
            path.display(),
            dir.display()
        ))
    })?;
    Ok(dir.join(name))
}

/// Flushes a file and the directory entry naming it to disk.
fn sync_file_and_dir(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// `VACUUM INTO out`, then the newest revision the copy holds.
pub(super) async fn backup(pool: &SqlitePool, out: &Path) -> Result<u64> {
    let out = absolute(out)?;
    if out.symlink_metadata().is_ok() {
        return Err(refused(format!(
            "{} exists: a backup never overwrites a file; name a new one",
            out.display()
        )));
    }
    let target = out
        .to_str()
        .ok_or_else(|| refused(format!("{}: the path must be UTF-8", out.display())))?;
    // SQLite itself refuses an existing non-empty file too, should one
    // appear since the check above.
    sqlx::query("VACUUM INTO ?")
        .bind(target)
        .execute(pool)
        .await
        .map_err(|e| refused(format!("writing the backup to {target}: {e}")))?;
    sync_file_and_dir(&out)
        .map_err(|e| Error::Internal(format!("flushing the backup {target} to disk: {e}")))?;
    let mut conn = open_file(&out).await?;
    let latest = queries::log_bounds(&mut conn).await?.latest;
    let _ = conn.close().await;
    Ok(latest)
}

/// One connection to an existing database file, never creating one.
async fn open_file(path: &Path) -> Result<SqliteConnection> {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .foreign_keys(true)
        .connect()
        .await
        .map_err(|e| refused(format!("opening {}: {e}", path.display())))
}

/// What [`restore`] installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The database file written.
    pub database: PathBuf,
    /// The newest event revision it holds (the server resumes after it).
    pub revision: u64,
}

/// Installs the backup `from` as the database `url` names, which must not
/// exist yet: checks that `from` is a sound meshplane database, migrates
/// it to this version's schema and renames it into place.
pub async fn restore(from: &Path, url: &str) -> Result<Restored> {
    let target = absolute(&database_file(url)?)?;
    for suffix in ["", "-wal", "-journal"] {
        let p = PathBuf::from(format!("{}{suffix}", target.display()));
        if p.symlink_metadata().is_ok() {
            return Err(refused(format!(
                "{} exists: restore only fills a data directory without a database; \
                 point --data-dir (or --database-url) at a new directory, or move the \
                 database away first",
                p.display()
            )));
        }
    }
    check_header(from)?;
    let wal = PathBuf::from(format!("{}-wal", from.display()));
    if wal.metadata().is_ok_and(|m| m.len() > 0) {
        return Err(refused(format!(
            "{} has a write-ahead log ({}): it is a live database, not a backup; take one \
             with `meshplane backup --out FILE`",
            from.display(),
            wal.display()
        )));
    }
    let tmp = PathBuf::from(format!("{}.restoring", target.display()));
    let restored = async {
        // A leftover of an interrupted restore.
        remove_with_journals(&tmp);
        std::fs::copy(from, &tmp).map_err(|e| {
            refused(format!(
                "copying {} to {}: {e}",
                from.display(),
                tmp.display()
            ))
        })?;
        let revision = check_and_migrate(&tmp, from).await?;
        sync_file_and_dir(&tmp)
            .map_err(|e| Error::Internal(format!("flushing {}: {e}", tmp.display())))?;
        if target.symlink_metadata().is_ok() {
            return Err(refused(format!(
                "{} appeared while restoring; left it alone",
                target.display()
            )));
        }
        std::fs::rename(&tmp, &target).map_err(|e| {
            Error::Internal(format!(
                "renaming {} to {}: {e}",
                tmp.display(),
                target.display()
            ))
        })?;
        sync_file_and_dir(&target)
            .map_err(|e| Error::Internal(format!("flushing {}: {e}", target.display())))?;
        Ok(revision)
    }
    .await;
    match restored {
        Ok(revision) => Ok(Restored {
            database: target,
            revision,
        }),
        Err(e) => {
            remove_with_journals(&tmp);
            Err(e)
        }
    }
}

fn remove_with_journals(db: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

/// Refuses a file that is not an SQLite database at all.
fn check_header(from: &Path) -> Result<()> {
    let mut header = [0u8; 16];
    let mut f = std::fs::File::open(from)
        .map_err(|e| refused(format!("reading {}: {e}", from.display())))?;
    let meta = f
        .metadata()
        .map_err(|e| refused(format!("reading {}: {e}", from.display())))?;
    if !meta.is_file() {
        return Err(refused(format!("{} is not a file", from.display())));
    }
    if f.read_exact(&mut header).is_err() || &header != SQLITE_HEADER {
        return Err(refused(format!(
            "{} is not an SQLite database (a meshplane backup is one)",
            from.display()
        )));
    }
    Ok(())
}

/// Checks the copy at `tmp` (of `from`, named in messages), migrates it,
/// and returns its newest revision. The copy is left in rollback-journal
/// mode with nothing pending: one self-contained file (the server turns
/// WAL on when it opens it).
async fn check_and_migrate(tmp: &Path, from: &Path) -> Result<u64> {
    let mut conn = SqliteConnectOptions::new()
        .filename(tmp)
        .create_if_missing(false)
        .foreign_keys(true)
        .journal_mode(SqliteJournalMode::Delete)
        .synchronous(SqliteSynchronous::Full)
        .connect()
        .await
        .map_err(|e| refused(format!("opening a copy of {}: {e}", from.display())))?;
    let checked = async {
        let problems: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_all(&mut conn)
            .await
            .map_err(|e| {
                refused(format!(
                    "{} is not a readable SQLite database: {e}",
                    from.display()
                ))
            })?;
        if problems != ["ok"] {
            return Err(refused(format!(
                "{} fails SQLite's integrity check: {}",
                from.display(),
                problems
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        let tables: Vec<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
                .fetch_all(&mut conn)
                .await
                .map_err(|e| refused(format!("reading {}: {e}", from.display())))?;
        let missing: Vec<&str> = MESHPLANE_TABLES
            .into_iter()
            .filter(|t| !tables.iter().any(|have| have == t))
            .collect();
        if !missing.is_empty() {
            return Err(refused(format!(
                "{} is an SQLite database but not meshplane's (no table {})",
                from.display(),
                missing.join(", ")
            )));
        }
        MIGRATOR.run(&mut conn).await.map_err(|e| {
            refused(format!(
                "migrating {} to this version's schema: {e} (a backup of a newer meshplane \
                 needs that version)",
                from.display()
            ))
        })?;
        Ok(queries::log_bounds(&mut conn).await?.latest)
    }
    .await;
    let closed = conn.close().await;
    let revision = checked?;
    closed.map_err(|e| Error::Internal(format!("closing {}: {e}", tmp.display())))?;
    Ok(revision)
}
