//! The stores a test can run on: SQLite in a temporary directory (always)
//! and PostgreSQL (a fresh database on a throwaway cluster).
//!
//! PostgreSQL databases come from the cluster named by
//! `MESHPLANE_TEST_PG_URL` (an admin URL; `tests/run` starts one cluster for
//! the whole run and sets it), else from this process's own cluster
//! ([`crate::pg::shared`]). A missing PostgreSQL is a test failure saying
//! what to install, unless `MESHPLANE_SKIP_POSTGRES_TESTS=1` opts out.
//!
//! `MESHPLANE_TEST_BACKEND=postgres` makes every [`crate::TestServer`] run
//! on PostgreSQL instead of SQLite (`tests/run` runs the API tests once
//! that way).

use std::{future::Future, sync::Arc};

use meshplane_server::store::Store;

/// Admin URL of a running throwaway cluster to create test databases on.
pub const PG_URL_ENV: &str = "MESHPLANE_TEST_PG_URL";

/// `postgres` runs every `TestServer` on PostgreSQL.
pub const BACKEND_ENV: &str = "MESHPLANE_TEST_BACKEND";

/// One store to run a case on.
pub struct Backend {
    /// "sqlite" or "postgres".
    pub name: &'static str,
    /// Its URL.
    pub url: String,
    /// The store, opened and migrated.
    pub store: Arc<dyn Store>,
    _tmp: Option<tempfile::TempDir>,
}

/// Whether `TestServer`s run on PostgreSQL.
pub fn servers_on_postgres() -> bool {
    std::env::var(BACKEND_ENV).as_deref() == Ok("postgres")
}

/// A fresh, empty PostgreSQL database, as a URL; None (after printing a
/// notice) only under `MESHPLANE_SKIP_POSTGRES_TESTS=1`. Panics with what
/// to install when PostgreSQL is missing.
pub async fn postgres_database() -> Option<String> {
    if let Ok(admin) = std::env::var(PG_URL_ENV) {
        use sqlx::{Connection, Executor};
        let name = format!("t_{}", uuid_like());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("connecting to {PG_URL_ENV}={admin}: {e}"));
        conn.execute(format!("CREATE DATABASE \"{name}\"").as_str())
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let _ = conn.close().await;
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        return Some(format!("{base}/{name}"));
    }
    match crate::pg::database_or_skip().await {
        Ok(url) => url,
        Err(e) => panic!("PostgreSQL for this test: {e}"),
    }
}

fn uuid_like() -> String {
    use rand::Rng;
    let mut r = rand::rng();
    (0..16)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[r.random_range(0..36)]))
        .collect()
}

/// An opened SQLite store in a temporary directory.
pub async fn sqlite() -> Backend {
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = meshplane_server::default_database_url(tmp.path());
    let store = meshplane_server::store::open(&url)
        .await
        .expect("open SQLite");
    Backend {
        name: "sqlite",
        url,
        store,
        _tmp: Some(tmp),
    }
}

/// An opened PostgreSQL store on a fresh database; None under the opt-out.
pub async fn postgres() -> Option<Backend> {
    let url = postgres_database().await?;
    let store = meshplane_server::store::open(&url)
        .await
        .unwrap_or_else(|e| panic!("open PostgreSQL at {url}: {e}"));
    Some(Backend {
        name: "postgres",
        url,
        store,
        _tmp: None,
    })
}

/// Runs `case` on SQLite, then on PostgreSQL, each on a fresh store,
/// saying which one failed.
pub async fn each_backend<F, Fut>(case: &str, f: F)
where
    F: Fn(Backend) -> Fut,
    Fut: Future<Output = ()>,
{
    eprintln!("{case}: on sqlite");
    f(sqlite().await).await;
    match postgres().await {
        Some(b) => {
            eprintln!("{case}: on postgres ({})", b.url);
            f(b).await;
        }
        None => eprintln!("{case}: NOT run on postgres (opted out)"),
    }
}
