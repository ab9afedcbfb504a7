//! `meshplane`: the server binary.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use meshplane_server::{
    Backend, ServeOptions, bootstrap_admin_token, default_database_url,
    domain::token::{NewToken, TokenKind},
    ready_line, serve_with,
    tls::{ServerTls, TlsFiles},
};

/// jemalloc: tens of thousands of long-lived connections interleaved with
/// short-lived multi-megabyte snapshots fragment glibc's heap badly.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Unused pages go back to the system within a second (a background thread
/// purges them), so memory after a reconnect storm follows what is live; two
/// arenas (instead of four per core) leave fewer partly used pages behind.
/// `_RJEM_MALLOC_CONF` overrides these. Linux only: jemalloc has no
/// background thread on macOS.
#[cfg(target_os = "linux")]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: Option<&'static std::ffi::c_char> = Some(
    // SAFETY: a pointer to the first byte of a static NUL-terminated string.
    unsafe { &*c"background_thread:true,narenas:2,dirty_decay_ms:500,muzzy_decay_ms:0".as_ptr() },
);

/// Warns when the allocator settings above did not take effect.
fn check_allocator() {
    if cfg!(target_os = "linux") && !tikv_jemalloc_ctl::background_thread::read().unwrap_or(false) {
        tracing::warn!(
            "jemalloc runs without its background purge thread; memory freed after snapshot bursts is returned more slowly"
        );
    }
}

/// With `RUST_LOG=meshplane::heap=debug`, logs the allocator's figures every
/// 10 s: bytes the program holds (`allocated`) and bytes of memory the
/// allocator keeps from the system (`resident`).
fn spawn_heap_log() {
    if !tracing::enabled!(target: "meshplane::heap", tracing::Level::DEBUG) {
        return;
    }
    std::thread::spawn(|| {
        loop {
            if tikv_jemalloc_ctl::epoch::advance().is_ok()
                && let (Ok(allocated), Ok(resident)) = (
                    tikv_jemalloc_ctl::stats::allocated::read(),
                    tikv_jemalloc_ctl::stats::resident::read(),
                )
            {
                tracing::debug!(
                    target: "meshplane::heap",
                    allocated_kib = allocated / 1024,
                    resident_kib = resident / 1024,
                    "heap"
                );
            }
            std::thread::sleep(std::time::Duration::from_secs(10));
        }
    });
}

/// meshplane: a control plane for WireGuard overlay networks.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Directory for the embedded database and admin.token.
    #[arg(
        long,
        env = "MESHPLANE_DATA_DIR",
        default_value = "./meshplane-data",
        global = true
    )]
    data_dir: PathBuf,
    /// Database URL; default: an SQLite file in the data directory.
    #[arg(long, env = "MESHPLANE_DATABASE_URL", global = true)]
    database_url: Option<String>,
    /// File with the secret that seals external clients' private keys;
    /// default: secret.key in the data directory (created when missing).
    #[arg(long, env = "MESHPLANE_SECRET_KEY_FILE", global = true)]
    secret_key_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once at start: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Runs the gRPC server.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "MESHPLANE_LISTEN", default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// Also serve DNS (UDP) for the networks' zones on this address
        /// (e.g. 10.101.0.1:53); off by default.
        #[arg(long, env = "MESHPLANE_DNS_LISTEN")]
        dns_listen: Option<SocketAddr>,
        /// Port of the networks' upstream resolvers.
        #[arg(long, env = "MESHPLANE_DNS_UPSTREAM_PORT", default_value_t = 53)]
        dns_upstream_port: u16,
        /// How long the event log keeps events (e.g. 90s, 30m, 12h, 7d; 0
        /// keeps them all). WatchEvents from a pruned revision fails with
        /// OUT_OF_RANGE naming the oldest one kept; agents resuming from one
        /// get a snapshot.
        #[arg(long, env = "MESHPLANE_EVENT_RETENTION", default_value = "7d", value_parser = parse_duration)]
        event_retention: Duration,
        /// How long the primary of an egress range several gateways serve
        /// may be gone (its agent's stream closed on every replica) before
        /// the range moves to the best gateway that is up (e.g. 2s, 30s).
        #[arg(long, env = "MESHPLANE_EGRESS_GRACE", default_value = "2s", value_parser = parse_duration)]
        egress_grace: Duration,
        /// Serve Prometheus metrics (GET /metrics) on this address (e.g.
        /// 127.0.0.1:9090); off by default.
        #[arg(long, env = "MESHPLANE_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
        #[command(flatten)]
        limits: LimitArgs,
        /// Serve TLS only (plaintext clients are refused), with this
        /// certificate chain (PEM, the server's certificate first). Needs
        /// --tls-key. Reloaded for new connections when the file changes
        /// or on SIGHUP; open connections keep theirs.
        #[arg(
            long,
            env = "MESHPLANE_TLS_CERT",
            requires = "tls_key",
            value_name = "FILE"
        )]
        tls_cert: Option<PathBuf>,
        /// The private key (PEM) of --tls-cert.
        #[arg(
            long,
            env = "MESHPLANE_TLS_KEY",
            requires = "tls_cert",
            value_name = "FILE"
        )]
        tls_key: Option<PathBuf>,
        /// CA certificates (PEM) that client certificates are verified
        /// against. AgentService calls then need a certificate signed by
        /// it; other callers may present one (verified the same way) but
        /// need not. Needs --tls-cert.
        #[arg(
            long,
            env = "MESHPLANE_CLIENT_CA",
            requires = "tls_cert",
            value_name = "FILE"
        )]
        client_ca: Option<PathBuf>,
        /// How often the TLS files are checked for changes (e.g. 5s, 1m; 0
        /// reloads on SIGHUP only).
        #[arg(long, env = "MESHPLANE_TLS_RELOAD_INTERVAL", default_value = "5s", value_parser = parse_duration)]
        tls_reload_interval: Duration,
    },
    /// Manages admin tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Writes a consistent copy of the SQLite database to a new file, safe
    /// while the server runs (and writes). Back up secret.key too: external
    /// clients' private keys are sealed with it. PostgreSQL: use pg_dump.
    Backup {
        /// The file to write; it must not exist.
        #[arg(long)]
        out: PathBuf,
    },
    /// Installs a backup as the database of a data directory that has none
    /// yet: checks it (integrity, meshplane's tables), brings it to this
    /// version's schema, then moves it into place. Put the original
    /// secret.key in place before starting the server.
    Restore {
        /// The backup file (written by `meshplane backup`).
        #[arg(long)]
        from: PathBuf,
    },
}

/// Limits on calls; each refusal has its own status code.
#[derive(clap::Args)]
struct LimitArgs {
    /// How long a unary call may run before it ends with
    /// DEADLINE_EXCEEDED (e.g. 500ms, 30s; 0: no limit). Streams
    /// (WatchConfig, WatchEvents) are exempt.
    #[arg(long, env = "MESHPLANE_UNARY_DEADLINE", default_value = "30s", value_parser = parse_duration)]
    unary_deadline: Duration,
    /// The largest request message accepted (e.g. 4MiB, 512KiB, 65536);
    /// a larger one is refused with OUT_OF_RANGE.
    #[arg(long, env = "MESHPLANE_MAX_MESSAGE_SIZE", default_value = "4MiB", value_parser = parse_size)]
    max_message_size: usize,
    /// Unary calls running at once (0: no limit); a call that finds no
    /// slot within --unary-queue-wait gets RESOURCE_EXHAUSTED.
    #[arg(long, env = "MESHPLANE_MAX_CONCURRENT_UNARY", default_value_t = meshplane_server::api::limits::DEFAULT_MAX_CONCURRENT_UNARY)]
    max_concurrent_unary: usize,
    /// How long a unary call waits for a slot.
    #[arg(long, env = "MESHPLANE_UNARY_QUEUE_WAIT", default_value = "1s", value_parser = parse_duration)]
    unary_queue_wait: Duration,
    /// Config streams one node may hold open at once; the next gets
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "MESHPLANE_MAX_STREAMS_PER_NODE", default_value_t = meshplane_server::hub::DEFAULT_STREAMS_PER_NODE, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_streams_per_node: usize,
    /// Failed authentications from one address within
    /// --auth-failure-window after which every call from it gets
    /// RESOURCE_EXHAUSTED for a window (0: never).
    #[arg(long, env = "MESHPLANE_AUTH_FAILURE_LIMIT", default_value_t = meshplane_server::api::limits::DEFAULT_AUTH_FAILURE_LIMIT)]
    auth_failure_limit: u32,
    /// The failed-authentication window, also how long a throttled
    /// address waits.
    #[arg(long, env = "MESHPLANE_AUTH_FAILURE_WINDOW", default_value = "1m", value_parser = parse_duration)]
    auth_failure_window: Duration,
}

impl LimitArgs {
    fn request_limits(&self) -> meshplane_server::api::limits::RequestLimits {
        meshplane_server::api::limits::RequestLimits {
            unary_deadline: (!self.unary_deadline.is_zero()).then_some(self.unary_deadline),
            max_message_size: self.max_message_size,
            max_concurrent_unary: self.max_concurrent_unary,
            unary_queue_wait: self.unary_queue_wait,
            auth_failure_limit: self.auth_failure_limit,
            auth_failure_window: self.auth_failure_window,
        }
    }
}

/// Parses a size in bytes: a number, optionally with B, KiB or MiB.
fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: usize = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number of bytes, e.g. 4MiB or 65536"))?;
    let scale = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        _ => return Err(format!("{s:?}: the unit must be B, KiB or MiB")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Creates an admin token and prints it (only this once).
    Create {
        /// A label for the token.
        #[arg(long, default_value = "admin")]
        name: String,
    },
    /// Lists admin tokens (ids and labels, never secrets).
    List,
    /// Revokes an admin token by id.
    Revoke {
        /// The token's id (see `token list`).
        id: String,
    },
}

/// Parses a duration: a number with a unit of ms, s, m, h or d (a bare 0
/// is zero).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with a unit, e.g. 30m or 7d"))?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{s:?}: the unit must be ms, s, m, h or d")),
    };
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

fn main() -> ExitCode {
    // Before any thread exists: read the secret key from the environment
    // and remove it, so nothing else (a child process, a crash report)
    // sees it.
    let secret_from_env = std::env::var("MESHPLANE_SECRET_KEY").ok();
    // SAFETY: no other thread exists yet.
    unsafe { std::env::remove_var("MESHPLANE_SECRET_KEY") };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: not in files, journald or CI logs.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    check_allocator();
    spawn_heap_log();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cli, secret_from_env)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshplane: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, secret_from_env: Option<String>) -> Result<(), String> {
    std::fs::create_dir_all(&cli.data_dir)
        .map_err(|e| format!("creating data dir {}: {e}", cli.data_dir.display()))?;
    let url = cli
        .database_url
        .clone()
        .unwrap_or_else(|| default_database_url(&cli.data_dir));
    let secret = cli
        .secret_key_file
        .clone()
        .unwrap_or_else(|| cli.data_dir.join("secret.key"));
    match &cli.command {
        Command::Restore { from } => return restore(from, &url, &secret).await,
        Command::Backup { out } => return backup(out, &url, &secret).await,
        _ => {}
    }
    // The secret key from the environment (a secret manager's injection)
    // wins over the file; it is read once and removed from the
    // environment, so child processes do not inherit it.
    let mut backend = match secret_from_env {
        Some(text) => {
            let key = meshplane_server::decode_secret(&text)
                .map_err(|e| format!("MESHPLANE_SECRET_KEY: {e}"))?;
            Backend::open_with_secret(&url, key).await
        }
        None => Backend::open(&url, &secret).await,
    }
    .map_err(|e| e.to_string())?;
    if let Command::Serve { limits, .. } = &cli.command {
        backend.limits.max_streams_per_node = limits.max_streams_per_node;
    }
    let store = backend.store.clone();
    match cli.command {
        Command::Serve {
            listen,
            dns_listen,
            dns_upstream_port,
            event_retention,
            egress_grace,
            metrics_listen,
            limits,
            tls_cert,
            tls_key,
            client_ca,
            tls_reload_interval,
        } => {
            // Checked before anything else: a bad certificate is a
            // startup error, not a server that refuses every client.
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => Some(
                    ServerTls::load(TlsFiles {
                        cert,
                        key,
                        client_ca,
                    })
                    .map_err(|e| e.to_string())?,
                ),
                _ => None,
            };
            let fds = meshplane_server::raise_fd_limit();
            tracing::debug!(fds, "open-file limit");
            // The token itself never goes to the output (a service manager
            // keeps that in its journal): only where to read it.
            if bootstrap_admin_token(&*store, &cli.data_dir)
                .await
                .map_err(|e| e.to_string())?
                .is_some()
            {
                println!(
                    "created the first admin token in {} (mode 0600; read it from there)",
                    cli.data_dir.join("admin.token").display()
                );
            }
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("binding {listen}: {e}"))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            spawn_sighup(tls.clone());
            let mut options = ServeOptions {
                event_retention: (!event_retention.is_zero()).then_some(event_retention),
                limits: limits.request_limits(),
                tls: tls.clone(),
                tls_poll: tls_reload_interval,
                egress_grace,
                ..ServeOptions::default()
            };
            if let Some(m) = metrics_listen {
                let listener = std::net::TcpListener::bind(m)
                    .map_err(|e| format!("binding metrics on {m}: {e}"))?;
                let bound = listener.local_addr().map_err(|e| e.to_string())?;
                println!("meshplane metrics: serving Prometheus metrics on http://{bound}/metrics");
                options.metrics = Some(listener);
            }
            if let Some(d) = dns_listen {
                let socket =
                    std::net::UdpSocket::bind(d).map_err(|e| format!("binding DNS on {d}: {e}"))?;
                let bound = socket.local_addr().map_err(|e| e.to_string())?;
                println!("meshplane DNS: serving the networks' zones on {bound} (udp)");
                options.dns = Some((
                    socket,
                    meshplane_server::dns::DnsOptions {
                        upstream_port: dns_upstream_port,
                    },
                ));
            }
            println!("{}", ready_line(addr, tls.is_some()));
            serve_with(listener, backend, options, shutdown_signal())
                .await
                .map_err(|e| format!("serving: {e}"))?;
            tracing::info!("stopped");
            Ok(())
        }
        Command::Backup { .. } | Command::Restore { .. } => unreachable!("handled above"),
        Command::Token { command } => match command {
            TokenCommand::Create { name } => {
                let token = NewToken::generate(TokenKind::Admin);
                meshplane_server::service::create_admin_token(&*store, &name, &token)
                    .await
                    .map_err(|e| e.to_string())?;
                println!("{}", token.secret);
                Ok(())
            }
            TokenCommand::List => {
                let tokens = store.list_admin_tokens().await.map_err(|e| e.to_string())?;
                println!("{:<18} {:<26} NAME", "ID", "CREATED");
                for t in tokens {
                    println!(
                        "{:<18} {:<26} {}",
                        t.id,
                        t.create_time.format("%Y-%m-%dT%H:%M:%SZ"),
                        t.name
                    );
                }
                Ok(())
            }
            TokenCommand::Revoke { id } => {
                meshplane_server::service::revoke_admin_token(&*store, &id)
                    .await
                    .map_err(|e| e.to_string())?;
                println!("revoked {id}");
                Ok(())
            }
        },
    }
}

/// SIGHUP reloads the TLS certificate and key (and client CA); without TLS
/// it is ignored (it used to stop the server, as every unhandled SIGHUP
/// does).
fn spawn_sighup(tls: Option<ServerTls>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot handle SIGHUP; TLS files are still reloaded when they change");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match &tls {
                Some(t) => {
                    tracing::info!("SIGHUP: reloading the TLS certificate and key");
                    t.reload_logged();
                }
                None => tracing::info!("SIGHUP: nothing to reload (no TLS)"),
            }
        }
    });
}

/// `meshplane backup`: VACUUM INTO a new file (SQLite), and where the
/// secret key is, which the backup does not hold.
async fn backup(out: &Path, url: &str, secret: &Path) -> Result<(), String> {
    if url.starts_with("postgres") {
        // Refused before connecting (opening a store migrates it).
        return Err(meshplane_server::store::postgres::POSTGRES_BACKUP.into());
    }
    if !url.starts_with("sqlite:") {
        return Err(format!(
            "unsupported database URL {url:?}: backups are of sqlite:PATH databases"
        ));
    }
    let db = meshplane_server::store::sqlite::database_file(url).map_err(|e| e.to_string())?;
    if !db.exists() {
        return Err(format!(
            "no database at {}: nothing to back up",
            db.display()
        ));
    }
    let store = meshplane_server::store::open(url)
        .await
        .map_err(|e| e.to_string())?;
    let revision = store.backup(out).await.map_err(|e| e.to_string())?;
    println!(
        "wrote a backup of revision {revision} to {}\n\
         it does not hold the secret key, {}: back that file up too (once is enough; it \
         never changes), or the external clients' server-generated private keys cannot be \
         opened after a restore",
        out.display(),
        secret.display()
    );
    Ok(())
}

/// `meshplane restore`: installs a backup into a data directory without a
/// database.
async fn restore(from: &Path, url: &str, secret: &Path) -> Result<(), String> {
    if url.starts_with("postgres") {
        return Err(meshplane_server::store::postgres::POSTGRES_BACKUP.into());
    }
    if !url.starts_with("sqlite:") {
        return Err(format!(
            "unsupported database URL {url:?}: restore fills sqlite:PATH databases"
        ));
    }
    let done = meshplane_server::store::sqlite::restore(from, url)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "restored {} (revision {}) into {}",
        from.display(),
        done.revision,
        done.database.display()
    );
    if secret.exists() {
        println!(
            "the server will use the secret key {}: it must be the original server's, or \
             external clients' server-generated private keys cannot be opened",
            secret.display()
        );
    } else {
        println!(
            "no secret key at {} yet: copy the original server's secret.key there (mode 0600) \
             before `meshplane serve` or any other command on this data directory, which would \
             otherwise create a new one that cannot open the external clients' server-generated \
             private keys",
            secret.display()
        );
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse_with_their_units() {
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert!(parse_size("4GB").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5w").is_err());
    }

    #[test]
    fn serve_flags_parse_with_their_defaults() {
        let cli = Cli::try_parse_from(["meshplane", "serve"]).unwrap();
        let Command::Serve {
            limits,
            metrics_listen,
            ..
        } = cli.command
        else {
            panic!("serve");
        };
        assert_eq!(metrics_listen, None);
        let l = limits.request_limits();
        assert_eq!(l.unary_deadline, Some(Duration::from_secs(30)));
        assert_eq!(l.max_message_size, 4 << 20);
        assert_eq!(limits.max_streams_per_node, 2);
        assert!(
            Cli::try_parse_from(["meshplane", "serve", "--max-streams-per-node", "0"]).is_err()
        );
        let cli = Cli::try_parse_from(["meshplane", "serve", "--unary-deadline", "0"]).unwrap();
        let Command::Serve { limits, .. } = cli.command else {
            panic!("serve");
        };
        assert_eq!(limits.request_limits().unary_deadline, None);
    }
}
