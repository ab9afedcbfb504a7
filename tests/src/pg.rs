//! A throwaway PostgreSQL server for tests: never a system one.
//!
//! [`PgCluster::start`] runs `initdb` into a fresh temporary directory and
//! starts the server with `pg_ctl` on a free port of 127.0.0.1 (Unix socket
//! in that directory too), with trust authentication for the user
//! `postgres` and without fsync. Each test then makes its own database on it
//! ([`PgCluster::create_database`], [`PgCluster::fresh_database`]).
//! [`shared`] is one cluster per test process (cargo-nextest runs each test
//! in its own process, so there it is one per test).
//!
//! ```no_run
//! # async fn t() -> meshplane_tests::pg::Result<()> {
//! use meshplane_tests::pg;
//! let Some(url) = pg::database_or_skip().await? else { return Ok(()) };
//! // url = postgres://postgres@127.0.0.1:PORT/test_N, a database of its own
//! # Ok(()) }
//! ```
//!
//! The server binaries come from `pg_config --bindir`, else the newest
//! `/usr/lib/postgresql/*/bin` (where Debian's package `postgresql` puts
//! them, off PATH), else `initdb` and `pg_ctl` on PATH. Without them a test
//! fails saying what to install, unless `MESHPLANE_SKIP_POSTGRES_TESTS=1`
//! skips it on purpose: [`PgCluster::start`] then returns
//! [`PgError::Skipped`], which the `*_or_skip` functions turn into `None`
//! after printing `SKIPPED <test>`. CI never sets it.
//!
//! PostgreSQL refuses to run as root: as root, the directory belongs to the
//! user `postgres` (created with `useradd --system` when missing) and
//! `initdb`, `pg_ctl` and the server run as that user.
//!
//! No server outlives its test process. Dropping a [`PgCluster`] (also on a
//! panic's unwind) stops it with `pg_ctl stop -m immediate` and removes the
//! directory; the shared cluster, never dropped, is stopped the same way by
//! an `atexit` handler. For a process that dies without either (SIGKILL, a
//! timeout), every cluster has a watchdog: a `sh` in its own process group
//! whose stdin is a pipe only the test process holds. When the pipe closes
//! without the word `done` (sent after a clean stop), it stops the server
//! and removes the directory.

use std::{
    ffi::CString,
    fmt,
    io::Write,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

/// The opt-out: `MESHPLANE_SKIP_POSTGRES_TESTS=1` skips PostgreSQL tests on
/// purpose. CI never sets it.
pub const SKIP_ENV: &str = "MESHPLANE_SKIP_POSTGRES_TESTS";

/// The user the server runs as when the tests run as root.
pub const SERVER_USER: &str = "postgres";

const INSTALL_HINT: &str = "install the Debian package postgresql (`apt-get install -y \
     postgresql`; tests/run does this), or set MESHPLANE_SKIP_POSTGRES_TESTS=1 to skip the \
     PostgreSQL tests on purpose";

/// Why there is no cluster.
#[derive(Clone, PartialEq, Eq)]
pub enum PgError {
    /// `MESHPLANE_SKIP_POSTGRES_TESTS=1`: skipped on purpose, not a failure.
    Skipped,
    /// Something failed; the message says what (and what to install).
    Failed(String),
}

impl PgError {
    /// Whether this is the opt-out rather than a failure.
    pub fn is_skipped(&self) -> bool {
        matches!(self, PgError::Skipped)
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgError::Skipped => write!(f, "PostgreSQL tests skipped on purpose: {SKIP_ENV}=1"),
            PgError::Failed(m) => f.write_str(m),
        }
    }
}

// Debug is the message as written: a test returning `Result<()>` prints
// `Error: {e:?}`, and the server log's tail should read as lines.
impl fmt::Debug for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for PgError {}

impl From<sqlx::Error> for PgError {
    fn from(e: sqlx::Error) -> Self {
        PgError::Failed(format!("sqlx: {e}"))
    }
}

/// `Result` with [`PgError`].
pub type Result<T, E = PgError> = std::result::Result<T, E>;

fn failed(msg: impl Into<String>) -> PgError {
    PgError::Failed(msg.into())
}

fn skip_requested() -> bool {
    let skip = std::env::var(SKIP_ENV).as_deref() == Ok("1");
    // CI never skips: an opt-out that leaked into CI's environment is a
    // failure, not a quietly shorter run.
    assert!(
        !(skip && std::env::var("CI").as_deref() == Ok("true")),
        "{SKIP_ENV}=1 is set under CI=true: CI must run the PostgreSQL tests"
    );
    skip
}

/// The name of the running test (libtest names each test's thread after it).
fn test_name() -> String {
    std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("this test")
        .to_owned()
}

/// Turns [`PgError::Skipped`] into `Ok(None)`, printing that the test did
/// not run.
pub fn or_skip<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(PgError::Skipped) => {
            eprintln!(
                "SKIPPED {}: {SKIP_ENV}=1 (this test did not run)",
                test_name()
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Where the server binaries are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bins {
    /// The directory they were found in.
    pub dir: PathBuf,
    /// `initdb`.
    pub initdb: PathBuf,
    /// `pg_ctl`.
    pub pg_ctl: PathBuf,
}

fn executable(p: &Path) -> bool {
    // metadata follows symlinks: a dangling one is not a binary.
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn bins_in(dir: &Path) -> Option<Bins> {
    let (initdb, pg_ctl) = (dir.join("initdb"), dir.join("pg_ctl"));
    (executable(&initdb) && executable(&pg_ctl)).then(|| Bins {
        dir: dir.to_path_buf(),
        initdb,
        pg_ctl,
    })
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| executable(p))
}

/// Finds `initdb` and `pg_ctl`: `pg_config --bindir` when it names a
/// directory holding them, else the newest `/usr/lib/postgresql/*/bin`,
/// else PATH. Fails with the install hint when there are none.
pub fn find_bins() -> Result<Bins> {
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .and_then(|d| bins_in(&d));
    if let Some(b) = from_pg_config {
        return Ok(b);
    }
    // Debian: /usr/lib/postgresql/<major>/bin; the newest version first.
    let mut versions: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version: Option<Vec<u64>> = name.split('.').map(|p| p.parse().ok()).collect();
            Some((version?, e.path().join("bin")))
        })
        .collect();
    versions.sort();
    if let Some(b) = versions.iter().rev().find_map(|(_, d)| bins_in(d)) {
        return Ok(b);
    }
    if let Some(initdb) = on_path("initdb") {
        // Resolve a symlink (/usr/local/bin/initdb -> /usr/lib/postgresql/
        // 15/bin/initdb): its pg_ctl is the one of the same version.
        let real = std::fs::canonicalize(&initdb).unwrap_or_else(|_| initdb.clone());
        let dir = real.parent().unwrap_or(Path::new("/")).to_path_buf();
        if let Some(b) = bins_in(&dir) {
            return Ok(b);
        }
        if let Some(pg_ctl) = on_path("pg_ctl") {
            return Ok(Bins {
                dir,
                initdb: real,
                pg_ctl,
            });
        }
    }
    Err(failed(format!(
        "the PostgreSQL server binaries (initdb, pg_ctl) are missing: looked at \
         `pg_config --bindir`, /usr/lib/postgresql/*/bin and PATH; {INSTALL_HINT}"
    )))
}

/// The uid and gid to run the server as (as root: `postgres`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RunAs {
    uid: u32,
    gid: u32,
}

fn lookup_user(name: &str) -> Option<RunAs> {
    let cname = CString::new(name).ok()?;
    // SAFETY: a zeroed passwd is a valid out-parameter; getpwnam_r writes
    // the strings into `buf`, which outlives the call, and we copy out only
    // the ids.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        (rc == 0 && !result.is_null()).then_some(RunAs {
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        })
    }
}

/// None when not root; as root the `postgres` user, created when missing.
fn server_user() -> Result<Option<RunAs>> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    if let Some(u) = lookup_user(SERVER_USER) {
        return Ok(Some(u));
    }
    // The Debian package makes this user; binaries from elsewhere may not
    // have. Like the package: a system user and group, home
    // /var/lib/postgresql. Parallel test processes take turns (two
    // useradds at once can both fail or leave a uid that no longer
    // exists): an flock on /etc/passwd, held until this one is done.
    let passwd = std::fs::File::open("/etc/passwd");
    if let Ok(f) = &passwd {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on an open fd; released when `passwd` is dropped.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    }
    if let Some(u) = lookup_user(SERVER_USER) {
        return Ok(Some(u));
    }
    let out = Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/var/lib/postgresql",
            "--shell",
            "/bin/bash",
            "--comment",
            "PostgreSQL administrator",
            SERVER_USER,
        ])
        .stdin(Stdio::null())
        .output();
    lookup_user(SERVER_USER).map(Some).ok_or_else(|| {
        failed(format!(
            "the tests run as root, which PostgreSQL refuses, and there is no user \
             {SERVER_USER} to run it as; creating it with `useradd --system {SERVER_USER}` \
             failed ({}): create that user, or {INSTALL_HINT}",
            match out {
                Ok(o) => format!(
                    "{}: {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => e.to_string(),
            }
        ))
    })
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| failed(format!("binding a free port on 127.0.0.1: {e}")))?;
    Ok(l.local_addr().map_err(|e| failed(e.to_string()))?.port())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn describe(o: &Output) -> String {
    format!(
        "{}\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The watchdog's script: `$1` pg_ctl, `$2` data directory, `$3` the
/// cluster's directory. stdin is the pipe the test process holds.
const WATCHDOG: &str = r#"
IFS= read -r msg || :
[ "$msg" = done ] && exit 0
# The test process ended without stopping its server: stop it here. Again
# after a moment, in case it was still starting.
"$1" stop -D "$2" -m immediate -w -t 30 >/dev/null 2>&1
sleep 2
"$1" stop -D "$2" -m immediate -w -t 30 >/dev/null 2>&1
rm -rf -- "$3"
"#;

/// A PostgreSQL server of its own, in a temporary directory, listening on
/// 127.0.0.1:[`port`](Self::port). Dropping it stops the server and removes
/// the directory.
pub struct PgCluster {
    bins: Bins,
    user: Option<RunAs>,
    dir: PathBuf,
    port: u16,
    durable: bool,
    /// Extra `-c name=value` settings.
    settings: Vec<String>,
    stopped: AtomicBool,
    next_db: AtomicU32,
    watchdog: Mutex<Option<Child>>,
    _tmp: tempfile::TempDir,
}

impl fmt::Debug for PgCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgCluster")
            .field("port", &self.port)
            .field("dir", &self.dir)
            .field("bin_dir", &self.bins.dir)
            .field("durable", &self.durable)
            .finish()
    }
}

impl PgCluster {
    /// Starts a server tuned for tests: fsync, synchronous_commit and
    /// full_page_writes off, max_connections 300.
    /// [`PgError::Skipped`] when `MESHPLANE_SKIP_POSTGRES_TESTS=1`.
    pub fn start() -> Result<Self> {
        Self::start_with(false)
    }

    /// Like [`start`](Self::start) but with PostgreSQL's durable defaults
    /// (fsync, synchronous_commit and full_page_writes on): for benchmarks
    /// of durable writes.
    pub fn start_durable() -> Result<Self> {
        Self::start_with(true)
    }

    /// [`start_durable`](Self::start_durable) with extra server settings
    /// (`name=value`, passed as `-c name=value`), e.g.
    /// `shared_preload_libraries=pg_stat_statements`.
    pub fn start_durable_with(settings: &[&str]) -> Result<Self> {
        Self::start_full(true, settings)
    }

    /// [`start`](Self::start), with the opt-out as `Ok(None)` (after
    /// printing `SKIPPED <test>`).
    pub fn start_or_skip() -> Result<Option<Self>> {
        or_skip(Self::start())
    }

    fn start_with(durable: bool) -> Result<Self> {
        Self::start_full(durable, &[])
    }

    fn start_full(durable: bool, settings: &[&str]) -> Result<Self> {
        if skip_requested() {
            return Err(PgError::Skipped);
        }
        let bins = find_bins()?;
        let user = server_user()?;
        let tmp = tempfile::Builder::new()
            .prefix("meshplane-pg-")
            .tempdir()
            .map_err(|e| failed(format!("creating a temporary directory: {e}")))?;
        let dir = tmp.path().to_path_buf();
        if let Some(u) = user {
            std::os::unix::fs::chown(&dir, Some(u.uid), Some(u.gid))
                .map_err(|e| failed(format!("chown {} to {SERVER_USER}: {e}", dir.display())))?;
        }
        // From here on, Drop cleans up whatever a failure leaves.
        let mut c = PgCluster {
            bins,
            user,
            dir,
            port: 0,
            durable,
            settings: settings.iter().map(|s| s.to_string()).collect(),
            stopped: AtomicBool::new(false),
            next_db: AtomicU32::new(0),
            watchdog: Mutex::new(None),
            _tmp: tmp,
        };
        c.spawn_watchdog()?;
        c.initdb()?;
        c.run_server()?;
        Ok(c)
    }

    /// A command run as the server's user, in the cluster's directory.
    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.current_dir(&self.dir).stdin(Stdio::null());
        if let Some(u) = self.user {
            c.uid(u.uid).gid(u.gid);
        }
        c
    }

    fn output(&self, mut c: Command, what: &str) -> Result<Output> {
        c.output().map_err(|e| {
            let reach = if self.user.is_some() {
                format!(
                    " (as user {SERVER_USER}, which must be able to reach {}: set TMPDIR to \
                     a directory it can, such as /tmp)",
                    self.dir.display()
                )
            } else {
                String::new()
            };
            failed(format!("running {what}: {e}{reach}"))
        })
    }

    fn spawn_watchdog(&mut self) -> Result<()> {
        let mut c = self.command(Path::new("/bin/sh"));
        c.arg("-c")
            .arg(WATCHDOG)
            .arg("meshplane-pg-watchdog")
            .arg(&self.bins.pg_ctl)
            .arg(self.data_dir())
            .arg(&self.dir)
            .stdin(Stdio::piped())
            // Not the test's stdout/stderr: nextest waits for those to close.
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Not the test's process group: a Ctrl-C or a timeout that ends
            // the group does not end the watchdog.
            .process_group(0);
        let child = c
            .spawn()
            .map_err(|e| failed(format!("starting the cluster's watchdog (/bin/sh): {e}")))?;
        *self.watchdog.get_mut().unwrap_or_else(|e| e.into_inner()) = Some(child);
        Ok(())
    }

    fn initdb(&self) -> Result<()> {
        let mut c = self.command(&self.bins.initdb);
        c.arg("-D")
            .arg(self.data_dir())
            .args([
                "--auth=trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .env("LC_ALL", "C");
        let o = self.output(c, "initdb")?;
        if !o.status.success() {
            return Err(failed(format!(
                "{} -D {} failed: {}",
                self.bins.initdb.display(),
                self.data_dir().display(),
                describe(&o)
            )));
        }
        Ok(())
    }

    fn server_options(&self, port: u16) -> String {
        let mut o = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300",
            shell_quote(&self.dir.to_string_lossy())
        );
        if !self.durable {
            o.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        for s in &self.settings {
            o.push_str(" -c ");
            o.push_str(&shell_quote(s));
        }
        o
    }

    /// Starts the server on a free port (another when a race took it) and
    /// waits until it accepts TCP connections.
    fn run_server(&mut self) -> Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port()?;
            let mut c = self.command(&self.bins.pg_ctl);
            c.args(["start", "-w", "-t", "60", "-D"])
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.log_path())
                .arg("-o")
                .arg(self.server_options(port));
            let o = self.output(c, "pg_ctl start")?;
            if o.status.success() {
                self.port = port;
                return self.wait_accepting();
            }
            let log = self.log();
            if attempt < 5 && log.contains("Address already in use") {
                // Someone bound the port between our probe and the server.
                let _ = self.stop_server();
                continue;
            }
            return Err(failed(format!(
                "pg_ctl start (port {port}) failed: {}\n--- tail of the server log {} ---\n{}",
                describe(&o),
                self.log_path().display(),
                tail(&log, 40)
            )));
        }
    }

    fn wait_accepting(&self) -> Result<()> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(failed(format!(
                        "the server does not accept connections on {addr} 30 s after \
                         pg_ctl start: {e}\n--- tail of the server log {} ---\n{}",
                        self.log_path().display(),
                        tail(&self.log(), 40)
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// `pg_ctl stop -m immediate -w` when the server runs; Ok when it no
    /// longer does.
    fn stop_server(&self) -> Result<()> {
        if !self.data_dir().join("postmaster.pid").exists() {
            return Ok(());
        }
        let mut c = self.command(&self.bins.pg_ctl);
        c.args(["stop", "-m", "immediate", "-w", "-t", "60", "-D"])
            .arg(self.data_dir());
        let o = self.output(c, "pg_ctl stop")?;
        if o.status.success() || !self.data_dir().join("postmaster.pid").exists() {
            Ok(())
        } else {
            Err(failed(format!("pg_ctl stop failed: {}", describe(&o))))
        }
    }

    /// Stops the server and removes the directory, once; then tells the
    /// watchdog it has nothing to do. Runs from Drop and at exit.
    fn shutdown(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Err(e) = self.stop_server() {
            // Leave the directory: the watchdog stops it when this process
            // ends.
            eprintln!("meshplane-tests pg: {e}");
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let mut w = self.watchdog.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stdin) = w.as_mut().and_then(|c| c.stdin.as_mut()) {
            let _ = stdin.write_all(b"done\n");
        }
        if let Some(c) = w.as_mut() {
            drop(c.stdin.take());
        }
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The temporary directory (data directory, log, Unix socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The data directory (`<dir>/data`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The server's log file (`<dir>/log`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The binaries it runs.
    pub fn bins(&self) -> &Bins {
        &self.bins
    }

    /// Whether it runs with fsync and synchronous_commit on
    /// ([`start_durable`](Self::start_durable)).
    pub fn is_durable(&self) -> bool {
        self.durable
    }

    /// Creates the database `name` (lowercase letters, digits and `_`, not
    /// starting with a digit, at most 63 bytes) and returns its URL. Fails
    /// when it exists.
    pub async fn create_database(&self, name: &str) -> Result<String> {
        use sqlx::{Connection, Executor};
        let valid = !name.is_empty()
            && name.len() <= 63
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(failed(format!(
                "database name {name:?}: use lowercase letters, digits and _ (at most 63, \
                 not starting with a digit)"
            )));
        }
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres")).await?;
        admin
            .execute(format!("CREATE DATABASE \"{name}\"").as_str())
            .await
            .map_err(|e| failed(format!("CREATE DATABASE {name}: {e}")))?;
        admin.close().await?;
        Ok(self.url(name))
    }

    /// Creates a database with a name no other call on this cluster got
    /// (`test_1`, `test_2`, …) and returns its URL.
    pub async fn fresh_database(&self) -> Result<String> {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed) + 1;
        self.create_database(&format!("test_{n}")).await
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.shutdown();
        // After "done" (or, when the stop failed, after its own attempt)
        // the watchdog exits: reap it.
        let w = self.watchdog.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(mut c) = w.take() {
            drop(c.stdin.take());
            let _ = c.wait();
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

static SHARED: OnceLock<Result<PgCluster>> = OnceLock::new();

extern "C" fn stop_shared_at_exit() {
    if let Some(Ok(c)) = SHARED.get() {
        c.shutdown();
    }
}

/// The process's shared cluster, started on first use ([`PgCluster::start`]);
/// an `atexit` handler stops it when the process exits. Every later call
/// returns the same cluster, or the same error.
pub fn shared() -> Result<&'static PgCluster> {
    SHARED
        .get_or_init(|| {
            let c = PgCluster::start()?;
            // SAFETY: registering a plain extern "C" fn; it only reads the
            // static, which is initialised by then.
            if unsafe { libc::atexit(stop_shared_at_exit) } != 0 {
                eprintln!(
                    "meshplane-tests pg: atexit failed; the watchdog stops the shared \
                     cluster when this process ends"
                );
            }
            Ok(c)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// [`shared`], with the opt-out as `Ok(None)` (after printing
/// `SKIPPED <test>`):
/// `let Some(pg) = pg::cluster_or_skip()? else { return Ok(()) };`
pub fn cluster_or_skip() -> Result<Option<&'static PgCluster>> {
    or_skip(shared())
}

/// A fresh database on the shared cluster, as a URL; `Ok(None)` (after
/// printing `SKIPPED <test>`) under the opt-out.
pub async fn database_or_skip() -> Result<Option<String>> {
    match cluster_or_skip()? {
        Some(pg) => pg.fresh_database().await.map(Some),
        None => Ok(None),
    }
}
