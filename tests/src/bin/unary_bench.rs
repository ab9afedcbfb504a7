//! `unary_bench`: unary call throughput and latency of the real `meshplane`
//! server, on SQLite and on a durable throwaway PostgreSQL.
//!
//! Run (release build; see BENCHMARKS.md):
//!   cargo build --release -p meshplane-server --bin meshplane -p meshplane-tests --bin unary_bench
//!   ./target/release/unary_bench                       # both backends, 1 and 64 callers
//!   ./target/release/unary_bench --backend postgres --ops create --callers 64
//!
//! For each backend it starts the built `meshplane serve` binary (next to
//! this one) on loopback — on SQLite in a fresh data directory, or on a
//! fresh database of a throwaway PostgreSQL started with PostgreSQL's
//! durable defaults (fsync and synchronous_commit on) — and runs each
//! operation for `--warmup` + `--duration` seconds with each number of
//! concurrent callers. Every caller has its own tonic channel (its own TCP
//! connection and HTTP/2 session) and issues one call at a time. Only calls
//! that started after the warm-up and before the end are counted.
//!
//! Operations: `health` (`grpc.health.v1.Health/Check`, tonic's own
//! service: no authentication, no store), `get` (`GetNetwork` of one
//! network, admin token), `create` (`CreateNetwork`, a unique name and a
//! unique IPv6 /64 each), `register` (`AgentService.Register` with an
//! unlimited enrollment key, a unique name and a fresh public key each).
//!
//! Alongside, per phase: the CPU the server, PostgreSQL (all its processes)
//! and this process used, as a percentage of one core; on PostgreSQL the
//! commits and WAL syncs the cluster counted; and the server's group-commit
//! batches (from its `batch committed` debug lines): how many, writes per
//! batch, how long a batch was open and how long its commit took.
//!
//! `--kill-check` then checks that nothing is acknowledged before its
//! commit: 64 callers create networks, the server is killed with SIGKILL
//! in the middle, started again on the same database, and every network
//! whose creation was acknowledged must be there.

use std::{
    collections::HashSet,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};
use meshplane_proto::v1 as pb;
use meshplane_tests::{
    pg::PgCluster,
    sys::{self, cpu_secs, self_cpu_secs},
};
use tonic::{
    Request,
    transport::{Channel, Endpoint},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    Sqlite,
    Postgres,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Op {
    /// grpc.health.v1.Health/Check.
    Health,
    /// NetworkService.GetNetwork.
    Get,
    /// NetworkService.CreateNetwork.
    Create,
    /// AgentService.Register.
    Register,
}

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::Health => "Health/Check",
            Op::Get => "GetNetwork",
            Op::Create => "CreateNetwork",
            Op::Register => "Register",
        }
    }
}

#[derive(Parser, Debug)]
#[command(about = "meshplane unary throughput and latency benchmark")]
struct Args {
    /// Which store(s) to run the server on.
    #[arg(long, value_enum, default_value_t = BackendArg::Both)]
    backend: BackendArg,
    /// Operations, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Op::Health, Op::Get, Op::Create, Op::Register])]
    ops: Vec<Op>,
    /// Numbers of concurrent callers (each its own connection).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 64])]
    callers: Vec<usize>,
    /// Seconds measured per phase.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of warm-up before each phase (not counted).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Kill the server in the middle of a write burst and check that every
    /// acknowledged write survived.
    #[arg(long)]
    kill_check: bool,
    /// On PostgreSQL, load pg_stat_statements and print, for each write
    /// phase, the statements per call and their execution times (this
    /// costs some throughput: not for the headline figures).
    #[arg(long)]
    pg_stat_statements: bool,
    /// On PostgreSQL, run ANALYZE every 2 s (as autovacuum would on a
    /// database in service): a fresh database has no planner statistics,
    /// which makes Register's lowest-free-address query quadratic.
    #[arg(long)]
    pg_analyze: bool,
    /// Append the server's log (stderr) to this file.
    #[arg(long)]
    server_log: Option<PathBuf>,
    /// The meshplane binary (default: next to this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
}

const READY: &str = "meshplane ready: serving gRPC on ";

/// Group-commit batches the server reported.
#[derive(Default)]
struct Batches {
    batches: AtomicU64,
    writes: AtomicU64,
    open_us: AtomicU64,
    commit_us: AtomicU64,
}

impl Batches {
    fn snapshot(&self) -> [u64; 4] {
        [
            self.batches.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
            self.open_us.load(Ordering::Relaxed),
            self.commit_us.load(Ordering::Relaxed),
        ]
    }

    /// Reads `key=<number>` from a log line.
    fn field(line: &str, key: &str) -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn record(&self, line: &str) {
        if !line.contains("batch committed") {
            return;
        }
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.writes
            .fetch_add(Self::field(line, "writes"), Ordering::Relaxed);
        self.open_us
            .fetch_add(Self::field(line, "open_us"), Ordering::Relaxed);
        self.commit_us
            .fetch_add(Self::field(line, "commit_us"), Ordering::Relaxed);
    }
}

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `meshplane serve` and waits for its ready line; its stderr (the
/// log, with the group-commit debug lines) feeds `batches` and, when
/// given, a log file.
// The child is owned by the returned Server, whose Drop kills and reaps it.
#[allow(clippy::zombie_processes)]
fn start_server(
    bin: &Path,
    data_dir: &Path,
    database_url: Option<&str>,
    listen: &str,
    batches: Arc<Batches>,
    log: Option<&Path>,
) -> Server {
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--listen", listen])
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn,meshplane_server::service::commit=debug")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(url) = database_url {
        cmd.args(["--database-url", url]);
    }
    let mut child = cmd.spawn().expect("spawn meshplane");
    let err = BufReader::new(child.stderr.take().unwrap());
    let mut log = log.map(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .expect("server log file")
    });
    std::thread::spawn(move || {
        use std::io::Write;
        for line in err.lines().map_while(Result::ok) {
            batches.record(&line);
            if let Some(f) = log.as_mut() {
                let _ = writeln!(f, "{line}");
            }
        }
    });
    let mut out = BufReader::new(child.stdout.take().unwrap());
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("the server exited before it was ready");
        }
        if let Some(a) = line.trim().strip_prefix(READY) {
            let addr = a.to_owned();
            std::thread::spawn(move || {
                let mut sink = String::new();
                while out.read_line(&mut sink).unwrap_or(0) > 0 {
                    sink.clear();
                }
            });
            return Server { child, addr };
        }
    }
}

async fn channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("connect")
}

fn authed<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn pg_cpu_secs(pg: &PgCluster) -> f64 {
    sys::pg_cpu_secs(&pg.data_dir())
}

/// Commits in the database and WAL syncs/writes of the cluster.
async fn pg_counters(url: &str) -> [i64; 3] {
    use sqlx::Connection;
    let Ok(mut c) = sqlx::PgConnection::connect(url).await else {
        return [0; 3];
    };
    let r: Result<(i64, i64, i64), _> = sqlx::query_as(
        "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()), \
         (SELECT wal_sync FROM pg_stat_wal), (SELECT wal_write FROM pg_stat_wal)",
    )
    .fetch_one(&mut c)
    .await;
    let _ = c.close().await;
    r.map(|(a, b, c)| [a, b, c]).unwrap_or([0; 3])
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Unique names and ranges across the whole run.
static SEQ: AtomicU64 = AtomicU64::new(0);

struct Ctx {
    addr: String,
    token: String,
    key: String,
}

/// One caller's clients.
struct Caller {
    health: tonic_health::pb::health_client::HealthClient<Channel>,
    nets: pb::network_service_client::NetworkServiceClient<Channel>,
    agent: pb::agent_service_client::AgentServiceClient<Channel>,
}

impl Caller {
    async fn new(addr: &str) -> Self {
        let ch = channel(addr).await;
        Caller {
            health: tonic_health::pb::health_client::HealthClient::new(ch.clone()),
            nets: pb::network_service_client::NetworkServiceClient::new(ch.clone()),
            agent: pb::agent_service_client::AgentServiceClient::new(ch),
        }
    }

    /// One call; the error's code name when it failed.
    async fn call(&mut self, op: Op, ctx: &Ctx) -> Result<(), String> {
        let code = |e: tonic::Status| format!("{:?}: {}", e.code(), e.message());
        match op {
            Op::Health => self
                .health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(drop)
                .map_err(code),
            Op::Get => self
                .nets
                .get_network(authed(
                    &ctx.token,
                    pb::GetNetworkRequest {
                        name: "bench".into(),
                    },
                ))
                .await
                .map(drop)
                .map_err(code),
            Op::Create => create(&mut self.nets, &ctx.token, "c").await.map(drop),
            Op::Register => {
                let i = SEQ.fetch_add(1, Ordering::Relaxed);
                self.agent
                    .register(pb::RegisterRequest {
                        enrollment_key: ctx.key.clone(),
                        network: "bench".into(),
                        name: format!("r{i}"),
                        public_key: meshplane_tests::wg_key(),
                        endpoint: format!("203.0.113.{}:51820", i % 250 + 1),
                        listen_port: None,
                        os: "linux".into(),
                    })
                    .await
                    .map(drop)
                    .map_err(code)
            }
        }
    }
}

/// Creates a network named `<prefix><n>` with the IPv6 range fd42:…/64 of
/// a fresh `n`; returns its name.
async fn create(
    nets: &mut pb::network_service_client::NetworkServiceClient<Channel>,
    token: &str,
    prefix: &str,
) -> Result<String, String> {
    let i = SEQ.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{i}");
    nets.create_network(authed(
        token,
        pb::CreateNetworkRequest {
            network: Some(pb::Network {
                name: name.clone(),
                address_range6: format!("fd42:{:x}:{:x}::/64", (i >> 16) & 0xffff, i & 0xffff),
                ..Default::default()
            }),
        },
    ))
    .await
    .map(|_| name)
    .map_err(|e| format!("{:?}: {}", e.code(), e.message()))
}

/// What one phase measured.
struct Phase {
    backend: &'static str,
    op: Op,
    callers: usize,
    calls: usize,
    rate: f64,
    p50: f64,
    p99: f64,
    errors: usize,
    first_error: Option<String>,
    server_cpu: f64,
    pg_cpu: Option<f64>,
    bench_cpu: f64,
    /// (batches, writes, open µs, commit µs) reported by the server.
    batches: [u64; 4],
    /// PostgreSQL commits and WAL syncs during the phase.
    pg: Option<[i64; 3]>,
    /// Calls per second in the first and the last second measured.
    first_last: (usize, usize),
}

#[allow(clippy::too_many_arguments)]
async fn run_phase(
    backend: &'static str,
    op: Op,
    callers: usize,
    args: &Args,
    ctx: &Arc<Ctx>,
    server_pid: u32,
    pg: Option<(&PgCluster, &str)>,
    batches: &Batches,
) -> Phase {
    let mut clients = Vec::with_capacity(callers);
    for _ in 0..callers {
        clients.push(Caller::new(&ctx.addr).await);
    }
    let start = Instant::now();
    let warm = start + Duration::from_secs_f64(args.warmup);
    let end = warm + Duration::from_secs_f64(args.duration);
    let mut tasks = Vec::with_capacity(callers);
    for mut c in clients {
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            let mut done = Vec::with_capacity(1 << 16);
            let mut errors = 0usize;
            let mut first_error = None;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let r = c.call(op, &ctx).await;
                if t0 < warm {
                    continue;
                }
                match r {
                    Ok(()) => {
                        lat.push(t0.elapsed().as_micros() as u64);
                        done.push(t0.duration_since(warm).as_secs() as usize);
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (lat, done, errors, first_error)
        }));
    }
    // The counters when the warm-up ends.
    tokio::time::sleep_until(warm.into()).await;
    let server0 = cpu_secs(server_pid);
    let bench0 = self_cpu_secs();
    let pg_cpu0 = pg.map(|(c, _)| pg_cpu_secs(c));
    let b0 = batches.snapshot();
    let pg0 = match pg {
        Some((_, u)) => Some(pg_counters(u).await),
        None => None,
    };
    let statements = |u: Option<String>| async move {
        use sqlx::Connection;
        let u = u?;
        let mut c = sqlx::PgConnection::connect(&u).await.ok()?;
        let s = sys::statements(&mut c).await;
        let _ = c.close().await;
        Some(s)
    };
    let stats_url = pg
        .filter(|_| args.pg_stat_statements && matches!(op, Op::Create | Op::Register))
        .map(|(_, u)| u.to_owned());
    let st0 = statements(stats_url.clone()).await;
    let mut lat = Vec::new();
    let mut per_sec = vec![0usize; args.duration.ceil() as usize + 1];
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        let (l, d, e, f) = t.await.unwrap();
        lat.extend(l);
        for s in d {
            let last = per_sec.len() - 1;
            per_sec[s.min(last)] += 1;
        }
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
    }
    let elapsed = end.saturating_duration_since(warm).as_secs_f64();
    let server_cpu = (cpu_secs(server_pid) - server0) / elapsed * 100.0;
    let bench_cpu = (self_cpu_secs() - bench0) / elapsed * 100.0;
    let pg_cpu = pg
        .zip(pg_cpu0)
        .map(|((c, _), c0)| (pg_cpu_secs(c) - c0) / elapsed * 100.0);
    let b1 = batches.snapshot();
    let pg_delta = match (pg, pg0) {
        (Some((_, url)), Some(p0)) => {
            let p1 = pg_counters(url).await;
            Some([p1[0] - p0[0], p1[1] - p0[1], p1[2] - p0[2]])
        }
        _ => None,
    };
    if let (Some(st0), Some(st1)) = (st0, statements(stats_url).await) {
        let n = lat.len().max(1) as f64;
        let d = sys::statement_delta(&st0, &st1);
        let total: f64 = d.iter().map(|s| s.3).sum();
        println!(
            "  statements per {} ({:.1} in all, {:.2} ms of execution), by time: calls per write, mean ms, rows per call",
            op.label(),
            d.iter().map(|s| s.1).sum::<i64>() as f64 / n,
            total / n
        );
        let mut d = d;
        d.sort_by(|a, b| b.3.partial_cmp(&a.3).unwrap());
        for (q, c, r, t, _) in d.iter().take(12) {
            println!(
                "    {:>5.2} {:>8.3} {:>8.1}  {}",
                *c as f64 / n,
                t / *c as f64,
                *r as f64 / *c as f64,
                sys::short(q)
            );
        }
    }
    lat.sort_unstable();
    let full_secs = args.duration.floor() as usize;
    Phase {
        backend,
        op,
        callers,
        calls: lat.len(),
        rate: lat.len() as f64 / elapsed,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        errors,
        first_error,
        server_cpu,
        pg_cpu,
        bench_cpu,
        batches: [b1[0] - b0[0], b1[1] - b0[1], b1[2] - b0[2], b1[3] - b0[3]],
        pg: pg_delta,
        first_last: (
            per_sec[0],
            per_sec[full_secs.saturating_sub(1).min(per_sec.len() - 1)],
        ),
    }
}

/// Admin token, network `bench` (a /8 for many registrations) and an
/// unlimited enrollment key for it.
async fn setup(server: &Server, data_dir: &Path) -> Ctx {
    let token = std::fs::read_to_string(data_dir.join("admin.token"))
        .expect("admin.token")
        .trim()
        .to_owned();
    let key =
        meshplane_tests::bench_network(channel(&server.addr).await, &token, "10.0.0.0/8").await;
    Ctx {
        addr: server.addr.clone(),
        token,
        key,
    }
}

/// Every network's name (ListNetworks, all pages).
async fn all_networks(addr: &str, token: &str) -> HashSet<String> {
    let mut nets = pb::network_service_client::NetworkServiceClient::new(channel(addr).await);
    let mut names = HashSet::new();
    let mut page_token = String::new();
    loop {
        let r = nets
            .list_networks(authed(
                token,
                pb::ListNetworksRequest {
                    page_size: 1000,
                    page_token: page_token.clone(),
                },
            ))
            .await
            .expect("ListNetworks")
            .into_inner();
        names.extend(r.networks.into_iter().map(|n| n.name));
        if r.next_page_token.is_empty() {
            return names;
        }
        page_token = r.next_page_token;
    }
}

/// SIGKILL in the middle of 64 callers' writes; every acknowledged write
/// must be there after a restart. Returns (acknowledged, found, missing,
/// committed but unacknowledged).
async fn kill_check(
    bin: &Path,
    data_dir: &Path,
    url: Option<&str>,
    server: Server,
    ctx: &Ctx,
    log: Option<&Path>,
) -> (usize, usize, usize, usize) {
    let addr = server.addr.clone();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let tried = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..64 {
        let mut nets = pb::network_service_client::NetworkServiceClient::new(channel(&addr).await);
        let (acked, stop, tried, token) = (
            acked.clone(),
            stop.clone(),
            tried.clone(),
            ctx.token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let i = SEQ.load(Ordering::Relaxed);
                tried.lock().unwrap().push(i);
                match create(&mut nets, &token, "k").await {
                    Ok(name) => acked.lock().unwrap().push(name),
                    Err(_) => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut server = server;
    server.child.kill().expect("SIGKILL the server");
    let _ = server.child.wait();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    drop(server);
    let acked: Vec<String> = acked.lock().unwrap().clone();
    let restarted = start_server(
        bin,
        data_dir,
        url,
        "127.0.0.1:0",
        Arc::new(Batches::default()),
        log,
    );
    let names = all_networks(&restarted.addr, &ctx.token).await;
    drop(restarted);
    let found = acked.iter().filter(|n| names.contains(*n)).count();
    let acked_set: HashSet<&String> = acked.iter().collect();
    let extra = names
        .iter()
        .filter(|n| n.starts_with('k') && !acked_set.contains(n))
        .count();
    (acked.len(), found, acked.len() - found, extra)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    meshplane_server::raise_fd_limit();
    let bin = args.server_bin.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .join("meshplane")
    });
    assert!(
        bin.exists(),
        "{} missing: cargo build --release -p meshplane-server --bin meshplane",
        bin.display()
    );
    let backends: &[&'static str] = match args.backend {
        BackendArg::Sqlite => &["sqlite"],
        BackendArg::Postgres => &["postgres"],
        BackendArg::Both => &["sqlite", "postgres"],
    };
    let mut phases = Vec::new();
    let mut kills = Vec::new();
    for &backend in backends {
        let dir = tempfile::tempdir().unwrap();
        let pg = (backend == "postgres").then(|| {
            if args.pg_stat_statements {
                PgCluster::start_durable_with(&[
                    "shared_preload_libraries=pg_stat_statements",
                    "pg_stat_statements.track_planning=on",
                ])
            } else {
                PgCluster::start_durable()
            }
            .expect("start a durable PostgreSQL")
        });
        let url = match &pg {
            Some(c) => {
                let url = c.create_database("bench").await.expect("create database");
                if args.pg_stat_statements {
                    use sqlx::{Connection, Executor};
                    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
                    conn.execute("CREATE EXTENSION pg_stat_statements")
                        .await
                        .expect("CREATE EXTENSION pg_stat_statements");
                    let _ = conn.close().await;
                }
                Some(url)
            }
            None => None,
        };
        let analyzing = url.clone().filter(|_| args.pg_analyze).map(|url| {
            tokio::spawn(async move {
                use sqlx::{Connection, Executor};
                let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let _ = c.execute("ANALYZE").await;
                }
            })
        });
        let batches = Arc::new(Batches::default());
        let server = start_server(
            &bin,
            dir.path(),
            url.as_deref(),
            "127.0.0.1:0",
            batches.clone(),
            args.server_log.as_deref(),
        );
        let pid = server.child.id();
        let ctx = Arc::new(setup(&server, dir.path()).await);
        println!(
            "# {backend}: server pid {pid} on {}{}",
            server.addr,
            match &pg {
                Some(c) => format!(
                    ", PostgreSQL on port {} (fsync and synchronous_commit on)",
                    c.port()
                ),
                None => ", data dir on ".to_owned() + &dir.path().display().to_string(),
            }
        );
        for &op in &args.ops {
            for &n in &args.callers {
                let p = run_phase(
                    backend,
                    op,
                    n,
                    &args,
                    &ctx,
                    pid,
                    pg.as_ref().zip(url.as_deref()),
                    &batches,
                )
                .await;
                print_phase(&p);
                phases.push(p);
            }
        }
        if args.kill_check {
            let r = kill_check(
                &bin,
                dir.path(),
                url.as_deref(),
                server,
                &ctx,
                args.server_log.as_deref(),
            )
            .await;
            println!(
                "kill check ({backend}): {} creations acknowledged before SIGKILL, {} found after the restart, {} missing; {} committed without an acknowledgement (in flight)",
                r.0, r.1, r.2, r.3
            );
            kills.push((backend, r));
        } else {
            drop(server);
        }
        if let Some(a) = analyzing {
            a.abort();
        }
        drop(pg);
    }
    println!();
    println!(
        "| backend | call | callers | calls/s | p50 ms | p99 ms | errors | % of health | server CPU | PostgreSQL CPU | bench CPU |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for p in &phases {
        let health = phases
            .iter()
            .find(|h| h.backend == p.backend && h.op == Op::Health && h.callers == p.callers)
            .map(|h| h.rate);
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {} | {:.0} % | {} | {:.0} % |",
            p.backend,
            p.op.label(),
            p.callers,
            p.rate,
            p.p50,
            p.p99,
            p.errors,
            health
                .map(|h| format!("{:.0} %", p.rate / h * 100.0))
                .unwrap_or_else(|| "–".into()),
            p.server_cpu,
            p.pg_cpu
                .map(|c| format!("{c:.0} %"))
                .unwrap_or_else(|| "–".into()),
            p.bench_cpu,
        );
    }
    println!();
    println!(
        "| backend | call | callers | batches/s | writes per batch | batch open ms | commit ms | PG commits/s | PG WAL syncs/s | calls/s first → last second |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for p in phases
        .iter()
        .filter(|p| matches!(p.op, Op::Create | Op::Register))
    {
        let [b, w, o, c] = p.batches;
        let per = |x: u64| {
            if b == 0 {
                f64::NAN
            } else {
                x as f64 / b as f64
            }
        };
        println!(
            "| {} | {} | {} | {:.0} | {:.1} | {:.2} | {:.2} | {} | {} | {} → {} |",
            p.backend,
            p.op.label(),
            p.callers,
            b as f64 / args.duration,
            per(w),
            per(o) / 1000.0,
            per(c) / 1000.0,
            p.pg.map(|g| format!("{:.0}", g[0] as f64 / args.duration))
                .unwrap_or_else(|| "–".into()),
            p.pg.map(|g| format!("{:.0}", g[1] as f64 / args.duration))
                .unwrap_or_else(|| "–".into()),
            p.first_last.0,
            p.first_last.1,
        );
    }
    for (backend, r) in kills {
        println!(
            "kill check ({backend}): acknowledged {}, found {}, missing {}, committed unacknowledged {}",
            r.0, r.1, r.2, r.3
        );
    }
    let errors: usize = phases.iter().map(|p| p.errors).sum();
    if errors > 0 {
        eprintln!("{errors} calls failed");
        std::process::exit(1);
    }
}

fn print_phase(p: &Phase) {
    let [b, w, o, c] = p.batches;
    println!(
        "{} {} x{}: {} calls, {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, errors {}{}; CPU server {:.0} %{} bench {:.0} %; batches {b} ({} writes, open {:.1} ms, commit {:.1} ms mean){}",
        p.backend,
        p.op.label(),
        p.callers,
        p.calls,
        p.rate,
        p.p50,
        p.p99,
        p.errors,
        p.first_error
            .as_ref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default(),
        p.server_cpu,
        p.pg_cpu
            .map(|c| format!(" postgres {c:.0} %"))
            .unwrap_or_default(),
        p.bench_cpu,
        w,
        o as f64 / b.max(1) as f64 / 1000.0,
        c as f64 / b.max(1) as f64 / 1000.0,
        p.pg.map(|g| format!(
            "; PG commits {} WAL syncs {} WAL writes {}",
            g[0], g[1], g[2]
        ))
        .unwrap_or_default(),
    );
}
