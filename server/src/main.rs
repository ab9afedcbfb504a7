//! `meshplane`: the server binary.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

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

/// Parses a duration: a number with a unit of s, m, h or d (a bare 0 is
/// zero).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with a unit, e.g. 30m or 7d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

fn main() -> ExitCode {
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
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshplane: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
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
    let backend = Backend::open(&url, &secret)
        .await
        .map_err(|e| e.to_string())?;
    let store = backend.store.clone();
    match cli.command {
        Command::Serve {
            listen,
            dns_listen,
            dns_upstream_port,
            event_retention,
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
            if let Some(token) = bootstrap_admin_token(&*store, &cli.data_dir)
                .await
                .map_err(|e| e.to_string())?
            {
                println!(
                    "created the first admin token (shown once; also in {}):\n{token}",
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
                tls: tls.clone(),
                tls_poll: tls_reload_interval,
                ..ServeOptions::default()
            };
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

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
