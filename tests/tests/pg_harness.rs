//! The throwaway PostgreSQL harness (`meshplane_tests::pg`): databases on
//! one cluster are separate, the opt-out skips with a notice, and no server
//! outlives its test, whether the cluster is dropped, the test panics or its
//! process is killed.

use std::{
    io::{BufRead, BufReader},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use meshplane_tests::pg::{self, PgCluster, Result, SKIP_ENV};
use sqlx::{Connection, PgConnection};

fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_secs(1),
    )
    .is_ok()
}

/// Waits up to `within` for the server on `port` to be gone and its
/// directory removed.
#[track_caller]
fn expect_gone(port: u16, dir: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    while (accepts(port) || dir.exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !accepts(port),
        "port {port} still accepts connections {within:?} later"
    );
    assert!(!dir.exists(), "{} still exists", dir.display());
}

async fn has_table(c: &mut PgConnection, table: &str) -> Result<bool> {
    Ok(sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(c)
        .await?)
}

#[tokio::test]
async fn two_databases_are_distinct_and_drop_stops_the_server() -> Result<()> {
    let Some(pg) = PgCluster::start_or_skip()? else {
        return Ok(());
    };
    let (port, dir) = (pg.port(), pg.dir().to_path_buf());
    assert!(accepts(port));

    let a_url = pg.create_database("alpha").await?;
    let b_url = pg.create_database("beta").await?;
    assert_eq!(a_url, format!("postgres://postgres@127.0.0.1:{port}/alpha"));
    assert_eq!(b_url, pg.url("beta"));
    let again = pg.create_database("alpha").await;
    assert!(
        again
            .as_ref()
            .is_err_and(|e| e.to_string().contains("exists")),
        "{again:?}"
    );

    let mut a = PgConnection::connect(&a_url).await?;
    let mut b = PgConnection::connect(&b_url).await?;
    for (c, name) in [(&mut a, "alpha"), (&mut b, "beta")] {
        let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *c).await?;
        assert_eq!(one, 1);
        let db: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&mut *c)
            .await?;
        assert_eq!(db, name);
        // The test settings: no fsync.
        let fsync: String = sqlx::query_scalar("SHOW fsync").fetch_one(&mut *c).await?;
        assert_eq!(fsync, "off");
    }
    sqlx::query("CREATE TABLE only_in_alpha (id int PRIMARY KEY)")
        .execute(&mut a)
        .await?;
    assert!(has_table(&mut a, "only_in_alpha").await?);
    assert!(!has_table(&mut b, "only_in_alpha").await?);
    a.close().await?;
    b.close().await?;

    drop(pg);
    // Drop waits for pg_ctl stop: gone at once.
    assert!(!accepts(port), "port {port} still accepts after drop");
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
    Ok(())
}

#[tokio::test]
async fn shared_cluster_hands_out_fresh_databases() -> Result<()> {
    let Some(pg) = pg::cluster_or_skip()? else {
        return Ok(());
    };
    assert!(std::ptr::eq(pg, pg::shared()?), "one cluster per process");
    let (x, y) = (pg.fresh_database().await?, pg.fresh_database().await?);
    assert_ne!(x, y);
    let Some(z) = pg::database_or_skip().await? else {
        unreachable!("not skipped above")
    };
    for url in [&x, &y, &z] {
        let mut c = PgConnection::connect(url).await?;
        let db: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&mut c)
            .await?;
        assert!(url.ends_with(&format!("/{db}")), "{url} is {db}");
        c.close().await?;
    }
    Ok(())
}

#[tokio::test]
async fn durable_cluster_keeps_fsync_on() -> Result<()> {
    let Some(pg) = pg::or_skip(PgCluster::start_durable())? else {
        return Ok(());
    };
    assert!(pg.is_durable());
    let mut c = PgConnection::connect(&pg.url("postgres")).await?;
    for setting in ["fsync", "synchronous_commit", "full_page_writes"] {
        let v: String = sqlx::query_scalar(&format!("SHOW {setting}"))
            .fetch_one(&mut c)
            .await?;
        assert_eq!(v, "on", "{setting}");
    }
    let max: String = sqlx::query_scalar("SHOW max_connections")
        .fetch_one(&mut c)
        .await?;
    assert_eq!(max, "300");
    c.close().await?;
    Ok(())
}

/// Runs a test of this binary in a child process (libtest arguments work
/// under cargo test and cargo-nextest alike).
fn this_binary(test: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("current exe"));
    c.args(["--exact", test, "--nocapture", "--test-threads", "1"]);
    c.stdin(Stdio::null());
    c
}

#[test]
fn the_opt_out_skips_with_a_notice() {
    let out = this_binary("two_databases_are_distinct_and_drop_stops_the_server")
        .env(SKIP_ENV, "1")
        // The opt-out is refused under CI=true; this child checks the opt-out.
        .env_remove("CI")
        .output()
        .expect("run the test binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "SKIPPED two_databases_are_distinct_and_drop_stops_the_server: {SKIP_ENV}=1"
        )),
        "{text}"
    );
    assert!(
        text.contains("1 passed"),
        "the test itself did not run: {text}"
    );
}

/// The opt-out, for the tests that start clusters only in a child.
fn skipped(test: &str) -> bool {
    let skip = std::env::var(SKIP_ENV).as_deref() == Ok("1");
    if skip {
        eprintln!("SKIPPED {test}: {SKIP_ENV}=1 (this test did not run)");
    }
    skip
}

/// Kills the child when dropped.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the helper; returns it and the (port, dir) of both clusters.
fn start_helper(mode: &str) -> (Reap, Vec<(u16, PathBuf)>) {
    let child = Command::new(meshplane_tests::built_binary("pg_hold"))
        .arg(mode)
        .env_remove(SKIP_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the helper");
    let mut child = Reap(child);
    let stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut seen = String::new();
    for line in stdout.lines() {
        let line = line.expect("helper stdout");
        if let Some((_, rest)) = line.split_once("CLUSTERS ") {
            let f: Vec<&str> = rest.split(' ').collect();
            let clusters = vec![
                (f[0].parse().unwrap(), PathBuf::from(f[1])),
                (f[2].parse().unwrap(), PathBuf::from(f[3])),
            ];
            for (port, dir) in &clusters {
                assert!(accepts(*port), "cluster on {port} ({})", dir.display());
            }
            return (child, clusters);
        }
        seen.push_str(&line);
        seen.push('\n');
    }
    let mut err = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    panic!("the helper started no clusters:\n{seen}{err}");
}

#[test]
fn a_panicking_test_leaves_no_server() {
    if skipped("a_panicking_test_leaves_no_server") {
        return;
    }
    let (mut child, clusters) = start_helper("panic");
    let status = child.0.wait().expect("wait for the helper");
    assert!(!status.success(), "the helper panics");
    // Drop on unwind (owned) and atexit (shared) stop both before the
    // process has exited.
    for (port, dir) in &clusters {
        expect_gone(*port, dir, Duration::ZERO);
    }
}

#[test]
fn a_killed_test_leaves_no_server() {
    if skipped("a_killed_test_leaves_no_server") {
        return;
    }
    let (mut child, clusters) = start_helper("kill");
    child.0.kill().expect("SIGKILL the helper");
    child.0.wait().expect("wait for the helper");
    // No Drop, no atexit: the watchdogs stop both.
    for (port, dir) in &clusters {
        expect_gone(*port, dir, Duration::from_secs(15));
    }
}
