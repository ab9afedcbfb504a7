//! `fanout`: how fast one change reaches N agents, what it costs them, and
//! what each idle stream costs the server; compared with a bare tonic
//! server broadcasting a message of the same size to N streams.
//!
//! Run (release build; see BENCHMARKS.md):
//!   cargo run --release -p meshplane-tests --bin fanout -- --agents 1000
//!   cargo run --release -p meshplane-tests --bin fanout -- --agents 10000
//!   cargo run --release -p meshplane-tests --bin fanout -- --agents 1000 --mode burst
//!   cargo run --release -p meshplane-tests --bin fanout -- --agents 1000 --mode soak --duration 60
//!   cargo run --release -p meshplane-tests --bin fanout -- --agents 1000 --postgres --replicas 2
//!   cargo run --release -p meshplane-tests --bin fanout -- --agents 100000 --hub-spoke 4 \
//!       --streams-per-connection 50 --no-baseline --cost-samples 0 --one-change endpoint \
//!       --late-registrations 3
//!
//! With `--postgres` the server runs on a throwaway durable PostgreSQL
//! (with pg_stat_statements); `--replicas N` starts N servers on it, agent i
//! streams from replica i mod N and writes go through the first. Mode one
//! then also measures what a change costs (`--cost-samples`): CPU per
//! replica, statements and bytes between the replicas and PostgreSQL, bytes
//! to the agents, and one round of presence.
//!
//! It starts the built `meshplane` binary (next to this one) on loopback,
//! registers N nodes plus a gateway, opens one TCP connection and WatchConfig
//! stream per agent, and measures. Every number is printed; nothing is
//! asserted on timing.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};
use meshplane_proto::{delta::apply_update, v1 as pb};
use meshplane_sdk::Backoff;
use meshplane_tests::{
    pg::PgCluster,
    sys::{self, Statements, short, statement_delta, statements},
};
use prost::Message;
use tokio::sync::{Semaphore, broadcast};
use tonic::{
    Request, Response, Status,
    transport::{Channel, Endpoint, Server},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// One change affecting every agent; latency, bytes and memory, plus
    /// the bare-tonic baseline.
    One,
    /// A burst of changes; every agent must end on the final revision with a
    /// config equal to a fresh snapshot.
    Burst,
    /// The server is killed (SIGKILL) with every agent connected and
    /// restarted on the same address and database: how long
    /// until every agent holds its node's current config again, what the
    /// reconnect storm costs, and how many attempts were refused.
    Restart,
    /// Sustained load: mixed admin writes and reads at a steady rate for
    /// `--duration` seconds while every agent streams and reports its
    /// status; errors by code, latency by call, server memory, and every
    /// agent must end on its node's final revision.
    Soak,
}

/// What mode one changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OneChange {
    Egress,
    Endpoint,
    /// With `--hub-spoke`: a rule denying tcp/7 from anyone to anyone is
    /// put before the hub-and-spoke rule (every node's firewall changes,
    /// nobody's peers).
    Policy,
}

/// The hub-and-spoke policy: anyone may reach the hubs and the range
/// behind the first (everything else denied), after `first` rules.
fn hub_spoke_policy(first: Vec<pb::PolicyRule>) -> pb::UpdatePolicyRequest {
    let mut rules = first;
    rules.push(pb::PolicyRule {
        name: "spokes-to-hubs".into(),
        sources: vec!["*".into()],
        destinations: vec!["tag:hub".into(), "192.168.77.0/24".into()],
        action: pb::PolicyAction::Allow as i32,
        ..Default::default()
    });
    pb::UpdatePolicyRequest {
        policy: Some(pb::Policy {
            network: "bench".into(),
            default_action: pb::PolicyAction::Deny as i32,
            rules,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[derive(Parser, Debug)]
#[command(about = "meshplane config fan-out benchmark")]
struct Args {
    /// Number of agents (one node, one TCP connection, one stream each).
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::One)]
    mode: Mode,
    /// Changes in burst mode.
    #[arg(long, default_value_t = 1000)]
    changes: usize,
    /// In burst mode, how many agents keep a full config to compare with a
    /// fresh snapshot (all of them by default; each holds N peers).
    #[arg(long)]
    verify: Option<usize>,
    /// Skip the bare-tonic baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Nodes registered in the network besides the agents (they do not
    /// connect; they make every config larger).
    #[arg(long, default_value_t = 0)]
    extra_nodes: usize,
    /// Agents connecting at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// In restart mode, agents forget what they held (they reconnect with
    /// revision 0, so every one needs a full snapshot at once).
    #[arg(long)]
    cold: bool,
    /// Seconds to keep the idle agents connected after measuring memory
    /// (to inspect the server, e.g. with a heap profiler).
    #[arg(long, default_value_t = 0)]
    hold: u64,
    /// Soak mode: seconds of load.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Soak mode: admin calls per second, in total.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Soak mode: admin calls in flight at most.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Soak mode: seconds of warm-up (memory growth is measured from its end).
    #[arg(long, default_value_t = 15)]
    warmup: u64,
    /// Soak mode: seconds between each agent's ReportStatus.
    #[arg(long, default_value_t = 5)]
    report_every: u64,
    /// The meshplane binary (default: next to this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Run the server(s) on a throwaway PostgreSQL with its durable
    /// defaults (fsync and synchronous_commit on) and pg_stat_statements,
    /// instead of SQLite.
    #[arg(long)]
    postgres: bool,
    /// Replicas sharing the PostgreSQL database (needs --postgres; modes
    /// one and burst): agent i connects to replica i mod N, and every write
    /// goes through the first replica.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// In mode one, further changes (after the latency measurement) whose
    /// cost is measured: server CPU per replica, statements and bytes
    /// between the replicas and PostgreSQL, bytes to the agents (0: none).
    #[arg(long, default_value_t = 5)]
    cost_samples: usize,
    /// Hub and spoke under a policy: this many hub nodes (the gateway of
    /// mode one and N-1 more, tagged `hub`, not streaming) and a
    /// default-DENY policy whose one rule lets anything reach `tag:hub`
    /// and 192.168.77.0/24 (the range mode one then puts behind the
    /// gateway): each agent keeps only the hubs as peers (0: no policy,
    /// a full mesh).
    #[arg(long, default_value_t = 0)]
    hub_spoke: usize,
    /// Mode one's change: `egress` makes the gateway an egress gateway
    /// (every config gains a route); `endpoint` moves the gateway's
    /// endpoint (every config's entry for it changes); `policy` (with
    /// `--hub-spoke`) puts a rule denying tcp/7 from anyone to anyone
    /// first (every config's firewall changes, no peer).
    #[arg(long, value_enum, default_value_t = OneChange::Egress)]
    one_change: OneChange,
    /// Config streams sharing one HTTP/2 connection (agents i*K..i*K+K-1
    /// share one): past ~28,000 agents one process runs out of loopback
    /// ephemeral ports with one connection each. Needs --replicas 1.
    #[arg(long, default_value_t = 1)]
    streams_per_connection: usize,
    /// In mode one, nodes registered one at a time after the change, with
    /// every agent streaming: what each costs the server (CPU until it is
    /// idle again) and how many agents it sends an update.
    #[arg(long, default_value_t = 0)]
    late_registrations: usize,
    /// Internal: run the bare-tonic baseline server on this address.
    #[arg(long, hide = true)]
    baseline_server: Option<String>,
    /// Internal: payload size of the baseline message.
    #[arg(long, hide = true, default_value_t = 0)]
    baseline_bytes: usize,
}

fn raise_nofile() -> u64 {
    meshplane_server::raise_fd_limit()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Spawned {
    child: Child,
    addr: String,
    /// The lines printed before the ready line.
    preamble: Vec<String>,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// The child is owned by the returned Spawned, whose Drop kills and reaps it.
#[allow(clippy::zombie_processes)]
fn spawn_ready(mut cmd: Command, marker: &str) -> Spawned {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn server");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut preamble = Vec::new();
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("server exited before it was ready");
        }
        if let Some(a) = line.trim().strip_prefix(marker) {
            let addr = a.to_owned();
            // Keep draining stdout so the child never blocks on it.
            std::thread::spawn(move || {
                let mut sink = String::new();
                while out.read_line(&mut sink).unwrap_or(0) > 0 {
                    sink.clear();
                }
            });
            return Spawned {
                child,
                addr,
                preamble,
            };
        }
        preamble.push(line.trim().to_owned());
    }
}

async fn channel(addr: &str) -> Channel {
    try_channel(addr).await.expect("connect")
}

async fn try_channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .initial_stream_window_size(Some(64 * 1024))
        .connect_timeout(Duration::from_secs(30))
        .connect()
        .await
}

const READY: &str = "meshplane ready: serving gRPC on ";

/// Why a call failed, starting with the gRPC code's name.
fn reason(e: &Status) -> String {
    format!("{:?}: {}", e.code(), e.message())
}

/// An UpdateNode request changing the one field `path` of `node`.
fn update(node: pb::Node, path: &str) -> pb::UpdateNodeRequest {
    pb::UpdateNodeRequest {
        node: Some(node),
        update_mask: Some(prost_types::FieldMask {
            paths: vec![path.into()],
        }),
    }
}

fn authed<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// What one agent saw.
#[derive(Default)]
struct AgentLog {
    /// (receive instant, revision, encoded bytes) of each update.
    updates: Vec<(Instant, u64, usize)>,
    config: Option<pb::NodeConfig>,
    error: Option<String>,
    /// Why the stream broke, each time it did.
    reconnects: Vec<String>,
    /// Snapshots received (the first message of each full config).
    snapshots: usize,
}

struct Agent {
    node_id: String,
    /// The replica it streams from (index into the replicas).
    replica: usize,
    log: Arc<Mutex<AgentLog>>,
    revision: Arc<AtomicU64>,
    /// Complete updates received (every part of a revision).
    completes: Arc<AtomicU64>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let fds = raise_nofile();
    if let Some(addr) = &args.baseline_server {
        baseline_server(addr, args.baseline_bytes).await;
        return;
    }
    let need = args.agents as u64 + 200;
    if fds < need {
        eprintln!(
            "warning: open-file limit {fds} may be too low for {} agents",
            args.agents
        );
    }
    let bin = args.server_bin.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .join("meshplane")
    });
    assert!(
        bin.exists(),
        "{} missing: cargo build --release -p meshplane-server",
        bin.display()
    );
    assert!(args.replicas >= 1, "--replicas must be at least 1");
    assert!(
        args.replicas == 1 || args.postgres,
        "--replicas {} needs --postgres (replicas share a PostgreSQL database)",
        args.replicas
    );
    assert!(
        args.replicas == 1 || args.mode != Mode::Restart,
        "restart mode runs one replica"
    );
    assert!(
        args.streams_per_connection >= 1
            && (args.streams_per_connection == 1 || args.replicas == 1),
        "--streams-per-connection must be at least 1, and more than 1 needs --replicas 1"
    );
    let dir = tempfile::tempdir().unwrap();
    // The other replicas' data directories; they use the first one's
    // secret key.
    let replica_dirs: Vec<tempfile::TempDir> = (1..args.replicas)
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let pg = args.postgres.then(|| {
        PgCluster::start_durable_with(&[
            "shared_preload_libraries=pg_stat_statements",
            "pg_stat_statements.track=all",
        ])
        .expect("start a durable PostgreSQL")
    });
    let url = match &pg {
        Some(c) => {
            let url = c.create_database("fanout").await.expect("create database");
            use sqlx::{Connection, Executor};
            let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
            conn.execute("CREATE EXTENSION pg_stat_statements")
                .await
                .expect("CREATE EXTENSION pg_stat_statements");
            conn.close().await.ok();
            Some(url)
        }
        None => None,
    };
    let server_cmd = |listen: &str, replica: usize| {
        let mut cmd = Command::new(&bin);
        cmd.args(["serve", "--listen", listen]);
        if args.mode == Mode::Soak {
            cmd.args(["--metrics-listen", "127.0.0.1:0"]);
        }
        cmd.env("RUST_LOG", "warn");
        if replica == 0 {
            cmd.env("MESHPLANE_DATA_DIR", dir.path());
        } else {
            cmd.env("MESHPLANE_DATA_DIR", replica_dirs[replica - 1].path())
                .arg("--secret-key-file")
                .arg(dir.path().join("secret.key"));
        }
        if let Some(url) = &url {
            cmd.args(["--database-url", url]);
        }
        cmd
    };
    let mut server = spawn_ready(server_cmd("127.0.0.1:0", 0), READY);
    let pid = server.child.id();
    // The other replicas, started once the first made the schema and key.
    let others: Vec<Spawned> = (1..args.replicas)
        .map(|r| spawn_ready(server_cmd("127.0.0.1:0", r), READY))
        .collect();
    let addrs: Vec<String> = std::iter::once(server.addr.clone())
        .chain(others.iter().map(|o| o.addr.clone()))
        .collect();
    let pids: Vec<u32> = std::iter::once(pid)
        .chain(others.iter().map(|o| o.child.id()))
        .collect();
    let rss_all = || pids.iter().map(|&p| rss_kib(p)).sum::<u64>();
    let token = std::fs::read_to_string(dir.path().join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    let admin = channel(&server.addr).await;
    println!(
        "# fanout: {} agents, mode {:?}, {} on {}, server pids {pids:?}",
        args.agents,
        args.mode,
        if args.replicas == 1 {
            "one server".to_owned()
        } else {
            format!("{} replicas", args.replicas)
        },
        if args.postgres {
            "PostgreSQL (durable)"
        } else {
            "SQLite"
        }
    );

    // Network, key, gateway, N nodes.
    let key = meshplane_tests::bench_network(admin.clone(), &token, "10.64.0.0/14").await;
    if args.hub_spoke > 0 {
        pb::policy_service_client::PolicyServiceClient::new(admin.clone())
            .update_policy(authed(&token, hub_spoke_policy(vec![])))
            .await
            .expect("set the hub-and-spoke policy");
    }
    // On PostgreSQL, ANALYZE every 2 s while registering: on a fresh
    // database the planner has no statistics until autovacuum's first
    // ANALYZE (up to a minute later), and without them the lowest-free-
    // address query runs as a nested-loop anti join, quadratic in the
    // nodes (112 ms at 1,000). A database in service has statistics.
    let analyzing = url.clone().map(|url| {
        tokio::spawn(async move {
            use sqlx::{Connection, Executor};
            let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let _ = c.execute("ANALYZE").await;
            }
        })
    });
    let t = Instant::now();
    let register = |name: String| {
        let mut agent = pb::agent_service_client::AgentServiceClient::new(admin.clone());
        let key = key.clone();
        async move {
            let pk: [u8; 32] = rand::random();
            use base64::Engine;
            let r = agent
                .register(pb::RegisterRequest {
                    enrollment_key: key,
                    network: "bench".into(),
                    name: name.clone(),
                    public_key: base64::engine::general_purpose::STANDARD.encode(pk),
                    endpoint: format!("{name}.bench.example:51820"),
                    listen_port: None,
                    os: "linux".into(),
                })
                .await
                .expect("register")
                .into_inner();
            let node = r.node.unwrap();
            (node.id, r.node_token, node.address)
        }
    };
    let (gw_id, _, gw_address) = register("gw".into()).await;
    if args.hub_spoke > 0 {
        let mut hubs = vec![gw_id.clone()];
        for h in 1..args.hub_spoke {
            hubs.push(register(format!("hub{h}")).await.0);
        }
        let mut nodes = pb::node_service_client::NodeServiceClient::new(admin.clone());
        for id in hubs {
            nodes
                .update_node(authed(
                    &token,
                    update(
                        pb::Node {
                            id,
                            tags: vec!["hub".into()],
                            ..Default::default()
                        },
                        "tags",
                    ),
                ))
                .await
                .expect("tag a hub");
        }
    }
    let sem = Arc::new(Semaphore::new(16));
    let mut tasks = Vec::new();
    for i in 0..args.agents {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let f = register(format!("n{i}"));
        tasks.push(tokio::spawn(async move {
            let r = f.await;
            drop(permit);
            r
        }));
    }
    for i in 0..args.extra_nodes {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let f = register(format!("x{i}"));
        tasks.push(tokio::spawn(async move {
            let r = f.await;
            drop(permit);
            r
        }));
    }
    let mut nodes = Vec::with_capacity(args.agents);
    for t in tasks {
        nodes.push(t.await.unwrap());
    }
    nodes.truncate(args.agents);
    if let Some(a) = analyzing {
        a.abort();
    }
    let registered = args.agents + args.extra_nodes + args.hub_spoke.max(1);
    println!(
        "registered {registered} nodes in {:.1} s ({:.0}/s{})",
        t.elapsed().as_secs_f64(),
        registered as f64 / t.elapsed().as_secs_f64(),
        if args.hub_spoke > 0 {
            format!(
                ", {} of them hubs, under a hub-and-spoke policy",
                args.hub_spoke
            )
        } else {
            String::new()
        }
    );
    // Shared connections (--streams-per-connection): one lazily connected
    // channel per group of agents; it reconnects by itself.
    let shared: Vec<Channel> = if args.streams_per_connection > 1 {
        (0..args.agents.div_ceil(args.streams_per_connection))
            .map(|_| {
                Endpoint::from_shared(format!("http://{}", addrs[0]))
                    .unwrap()
                    .initial_stream_window_size(Some(64 * 1024))
                    .connect_timeout(Duration::from_secs(30))
                    .connect_lazy()
            })
            .collect()
    } else {
        Vec::new()
    };

    // Connect the agents.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_all();
    let keep = match args.mode {
        Mode::One | Mode::Restart => 0,
        Mode::Burst => args.verify.unwrap_or(args.agents),
        Mode::Soak => args.verify.unwrap_or(100).min(args.agents),
    };
    // Soak mode: every agent reports its revision every few seconds once
    // the load starts (as real agents do), and the calls are counted.
    let stats = Arc::new(Stats::default());
    let reporting = Arc::new(AtomicBool::new(false));
    let report_every =
        (args.mode == Mode::Soak).then(|| Duration::from_secs(args.report_every.max(1)));
    let mut addresses = Vec::with_capacity(args.agents);
    let t = Instant::now();
    let connected = Arc::new(AtomicUsize::new(0));
    let sem = Arc::new(Semaphore::new(args.connect_concurrency));
    let mut agents = Vec::with_capacity(args.agents);
    let mut handles = Vec::with_capacity(args.agents);
    // Bumped in restart mode with --cold: agents drop what they hold once,
    // at their next reconnection.
    let forget = Arc::new(AtomicU64::new(0));
    for (i, (node_id, node_token, address)) in nodes.into_iter().enumerate() {
        addresses.push(address);
        let (stats, reporting) = (stats.clone(), reporting.clone());
        let log = Arc::new(Mutex::new(AgentLog::default()));
        let revision = Arc::new(AtomicU64::new(0));
        let completes = Arc::new(AtomicU64::new(0));
        let replica = i % args.replicas;
        agents.push(Agent {
            node_id,
            replica,
            log: log.clone(),
            revision: revision.clone(),
            completes: completes.clone(),
        });
        let forget = forget.clone();
        let addr = addrs[replica].clone();
        let shared = shared.get(i / args.streams_per_connection).cloned();
        let permit = sem.clone().acquire_owned().await.unwrap();
        let connected = connected.clone();
        let keep_config = i < keep;
        handles.push(tokio::spawn(async move {
            let mut permit = Some(permit);
            // The last complete revision held: a real agent resumes from it
            // after its stream breaks (e.g. when this overloaded benchmark
            // process misses HTTP/2 keepalives).
            let mut last = 0;
            // Failed attempts in a row: the next wait is the SDK agent's
            // schedule, or the server's retry hint when longer (what the
            // SDK's agent does); any message received resets it.
            let mut failures = 0u32;
            let backoff = |failures: u32, hint: Option<Duration>| {
                Backoff::agent()
                    .delay(failures)
                    .max(hint.unwrap_or_default())
            };
            // The restart generation this agent last forgot its state for.
            let mut forgot = 0;
            let hint = |e: &Status| {
                use tonic_types::StatusExt;
                e.get_details_retry_info().and_then(|r| r.retry_delay)
            };
            loop {
                let generation = forget.load(Ordering::Acquire);
                if generation > forgot {
                    forgot = generation;
                    last = 0;
                    log.lock().unwrap().config = None;
                }
                if keep_config {
                    // A revision received only in part is not held: start over.
                    let mut l = log.lock().unwrap();
                    if l.config.as_ref().is_some_and(|c| c.revision != last) {
                        l.config = None;
                        last = 0;
                    }
                }
                let opened_channel = match &shared {
                    Some(ch) => Ok(ch.clone()),
                    None => try_channel(&addr).await,
                };
                let ch = match opened_channel {
                    Ok(ch) => ch,
                    Err(e) => {
                        log.lock().unwrap().reconnects.push(format!("connect: {e}"));
                        tokio::time::sleep(backoff(failures, None)).await;
                        failures += 1;
                        continue;
                    }
                };
                // Ends (aborted) when this connection's stream does.
                let _reporter = report_every.map(|every| {
                    let mut client = pb::agent_service_client::AgentServiceClient::new(ch.clone());
                    let (token, revision) = (node_token.clone(), revision.clone());
                    let (stats, reporting) = (stats.clone(), reporting.clone());
                    AbortOnDrop(tokio::spawn(async move {
                        // Spread the agents' reports over the period.
                        tokio::time::sleep(every.mul_f64(rand::random::<f64>())).await;
                        loop {
                            if reporting.load(Ordering::Acquire) {
                                let applied = revision.load(Ordering::Acquire);
                                let t = Instant::now();
                                let r = client
                                    .report_status(authed(
                                        &token,
                                        pb::ReportStatusRequest {
                                            applied_revision: applied,
                                            wireguard_interface: "wg0".into(),
                                            ..Default::default()
                                        },
                                    ))
                                    .await;
                                stats.record("ReportStatus (agents)", t, r.err(), None);
                            }
                            tokio::time::sleep(every).await;
                        }
                    }))
                });
                let mut client = pb::agent_service_client::AgentServiceClient::new(ch)
                    .max_decoding_message_size(usize::MAX);
                let opened = client
                    .watch_config(authed(
                        &node_token,
                        pb::WatchConfigRequest {
                            last_revision: last,
                        },
                    ))
                    .await;
                let mut stream = match opened {
                    Ok(s) => s.into_inner(),
                    Err(e) => {
                        log.lock().unwrap().reconnects.push(reason(&e));
                        tokio::time::sleep(backoff(failures, hint(&e))).await;
                        failures += 1;
                        continue;
                    }
                };
                loop {
                    match stream.message().await {
                        Ok(Some(u)) => {
                            failures = 0;
                            let now = Instant::now();
                            let bytes = u.encoded_len();
                            {
                                let mut l = log.lock().unwrap();
                                l.updates.push((now, u.revision, bytes));
                                if matches!(u.update, Some(pb::config_update::Update::Snapshot(_)))
                                {
                                    l.snapshots += 1;
                                }
                                if keep_config && let Err(e) = apply_update(&mut l.config, &u) {
                                    l.error = Some(e.to_string());
                                }
                            }
                            if u.partial {
                                continue;
                            }
                            last = u.revision;
                            revision.store(u.revision, Ordering::Release);
                            completes.fetch_add(1, Ordering::Release);
                            if let Some(p) = permit.take() {
                                connected.fetch_add(1, Ordering::Relaxed);
                                drop(p);
                            }
                        }
                        Ok(None) => return,
                        Err(e) => {
                            log.lock().unwrap().reconnects.push(reason(&e));
                            tokio::time::sleep(backoff(failures, hint(&e))).await;
                            failures += 1;
                            break;
                        }
                    }
                }
            }
        }));
    }
    while connected.load(Ordering::Relaxed) < args.agents {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("the server exited while agents were connecting: {status}");
        }
        for o in &others {
            // try_wait needs &mut; a replica that died shows as a zombie.
            if std::fs::read_to_string(format!("/proc/{}/stat", o.child.id()))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
            {
                panic!("a replica exited while agents were connecting");
            }
        }
        let failed = agents
            .iter()
            .filter(|a| a.log.lock().unwrap().error.is_some())
            .count();
        assert!(failed == 0, "{failed} agents failed to connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_secs = t.elapsed().as_secs_f64();
    let (snapshot_bytes, snapshot_parts) = {
        let l = agents[0].log.lock().unwrap();
        (
            l.updates.iter().map(|u| u.2).sum::<usize>(),
            l.updates.len(),
        )
    };
    // Idle streams: give the server a moment to settle after the snapshots.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_after = rss_all();
    let per_stream = (rss_after.saturating_sub(rss_before) as f64) * 1024.0 / args.agents as f64;
    println!(
        "connected {} agents in {connect_secs:.1} s ({} stream(s) per connection; snapshot {snapshot_bytes} B in {snapshot_parts} parts each); server RSS {} MiB -> {} MiB: {:.1} KiB per stream",
        args.agents,
        args.streams_per_connection,
        rss_before / 1024,
        rss_after / 1024,
        per_stream / 1024.0
    );
    if args.hold > 0 {
        println!(
            "holding the idle streams for {} s (server pid {pid})",
            args.hold
        );
        tokio::time::sleep(Duration::from_secs(args.hold)).await;
    }

    let mut gateways = pb::gateway_service_client::GatewayServiceClient::new(admin.clone());
    match args.mode {
        Mode::One => {
            let before: Vec<usize> = agents
                .iter()
                .map(|a| a.log.lock().unwrap().updates.len())
                .collect();
            let sent = Instant::now();
            let target = match args.one_change {
                OneChange::Egress => {
                    gateways
                        .create_egress_gateway(authed(
                            &token,
                            pb::CreateEgressGatewayRequest {
                                node_id: gw_id.clone(),
                                ranges: vec!["192.168.77.0/24".into()],
                                interface: "eth1".into(),
                                nat_enabled: None,
                                ..Default::default()
                            },
                        ))
                        .await
                        .unwrap()
                        .into_inner()
                        .config_revision
                }
                OneChange::Endpoint => {
                    pb::node_service_client::NodeServiceClient::new(admin.clone())
                        .update_node(authed(
                            &token,
                            update(
                                pb::Node {
                                    id: gw_id.clone(),
                                    endpoint: "198.51.100.77:51820".into(),
                                    ..Default::default()
                                },
                                "endpoint",
                            ),
                        ))
                        .await
                        .unwrap()
                        .into_inner()
                        .config_revision
                }
                OneChange::Policy => {
                    assert!(args.hub_spoke > 0, "--one-change policy needs --hub-spoke");
                    pb::policy_service_client::PolicyServiceClient::new(admin.clone())
                        .update_policy(authed(
                            &token,
                            hub_spoke_policy(vec![pb::PolicyRule {
                                name: "no-echo".into(),
                                sources: vec!["*".into()],
                                destinations: vec!["*".into()],
                                protocols: vec![pb::Protocol::Tcp as i32],
                                ports: vec!["7".into()],
                                action: pb::PolicyAction::Deny as i32,
                            }]),
                        ))
                        .await
                        .unwrap()
                        .into_inner()
                        .policy
                        .expect("the policy as stored")
                        .revision
                }
            };
            let ack = Instant::now();
            wait_all(&agents, target, Duration::from_secs(120)).await;
            let mut lat = Vec::with_capacity(agents.len());
            let mut lat_send = Vec::with_capacity(agents.len());
            let mut early = 0;
            let mut bytes = Vec::with_capacity(agents.len());
            let mut by_replica = vec![Vec::new(); args.replicas];
            for (a, b) in agents.iter().zip(before) {
                let l = a.log.lock().unwrap();
                let new = &l.updates[b..];
                let reached = new.iter().rev().find(|u| u.1 >= target).expect("reached");
                if reached.0 < ack {
                    early += 1;
                }
                lat.push(reached.0.saturating_duration_since(ack).as_secs_f64() * 1000.0);
                lat_send.push(reached.0.saturating_duration_since(sent).as_secs_f64() * 1000.0);
                by_replica[a.replica]
                    .push(reached.0.saturating_duration_since(sent).as_secs_f64() * 1000.0);
                bytes.push(
                    new.iter()
                        .filter(|u| u.0 >= sent)
                        .map(|u| u.2)
                        .sum::<usize>(),
                );
            }
            lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
            lat_send.sort_by(|a, b| a.partial_cmp(b).unwrap());
            bytes.sort();
            let (s50, s99) = (percentile(&lat_send, 0.5), percentile(&lat_send, 0.99));
            println!(
                "write acknowledged {:.1} ms after it was sent; from the send: p50 {s50:.1} ms, p99 {s99:.1} ms",
                ack.duration_since(sent).as_secs_f64() * 1000.0
            );
            let (p50, p99, max) = (
                percentile(&lat, 0.5),
                percentile(&lat, 0.99),
                *lat.last().unwrap(),
            );
            let mean_bytes = bytes.iter().sum::<usize>() as f64 / bytes.len() as f64;
            println!(
                "meshplane: one change -> {} agents: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms ({early} before the ack); bytes per agent mean {mean_bytes:.0}, max {}",
                args.agents,
                bytes.last().unwrap()
            );
            if args.replicas > 1 {
                let mut row = Vec::new();
                for (r, l) in by_replica.iter_mut().enumerate() {
                    l.sort_by(|a, b| a.partial_cmp(b).unwrap());
                    let (r50, r99) = (percentile(l, 0.5), percentile(l, 0.99));
                    println!(
                        "  agents on replica {} ({}{}): from the send p50 {r50:.1} ms, p99 {r99:.1} ms, max {:.1} ms",
                        (b'A' + r as u8) as char,
                        l.len(),
                        if r == 0 { ", the write's replica" } else { "" },
                        l.last().copied().unwrap_or(f64::NAN)
                    );
                    row.push(format!("{r50:.1} / {r99:.1} ms"));
                }
                println!(
                    "| {} | {} | ack after {:.1} ms | B - A (p50) {:.1} ms |",
                    args.agents,
                    row.join(" | "),
                    ack.duration_since(sent).as_secs_f64() * 1000.0,
                    percentile(&by_replica[1], 0.5) - percentile(&by_replica[0], 0.5)
                );
            }
            if args.cost_samples > 0 {
                let ports: Vec<u16> = addrs
                    .iter()
                    .map(|a| a.rsplit(':').next().unwrap().parse().unwrap())
                    .collect();
                cost(
                    &agents,
                    &mut gateways,
                    &token,
                    &gw_id,
                    &pids,
                    &ports,
                    pg.as_ref().zip(url.as_deref()),
                    args.cost_samples,
                )
                .await;
            }
            // Each late registration's cost: server CPU over a window
            // after it, less the same window idle just before (the server
            // has periodic work of its own with this many streams:
            // presence rounds every 2 s).
            let window = Duration::from_secs(4);
            for n in 0..args.late_registrations {
                let cpu0 = sys::cpu_secs(pid);
                tokio::time::sleep(window).await;
                let idle = sys::cpu_secs(pid) - cpu0;
                let before: Vec<usize> = agents
                    .iter()
                    .map(|a| a.log.lock().unwrap().updates.len())
                    .collect();
                let cpu1 = sys::cpu_secs(pid);
                let t = Instant::now();
                register(format!("late{n}")).await;
                let ack = t.elapsed();
                tokio::time::sleep(window.saturating_sub(t.elapsed())).await;
                let busy = sys::cpu_secs(pid) - cpu1;
                let woken = agents
                    .iter()
                    .zip(&before)
                    .filter(|(a, b)| a.log.lock().unwrap().updates.len() > **b)
                    .count();
                println!(
                    "late registration {n}: acknowledged in {:.1} ms; server CPU in the {} s after it {:.2} s, idle {:.2} s before: {:.2} s for it; {woken} of {} agents sent an update",
                    ack.as_secs_f64() * 1000.0,
                    window.as_secs(),
                    busy,
                    idle,
                    busy - idle,
                    agents.len()
                );
            }
            // Close meshplane's streams before the baseline opens its own.
            for h in handles {
                h.abort();
            }
            drop(agents);
            if !args.no_baseline {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let size = mean_bytes.round() as usize;
                let (bp50, bp99, bmax) =
                    baseline(args.agents, size, args.connect_concurrency).await;
                println!(
                    "baseline (bare tonic broadcast of {size} B, from the trigger's send): p50 {bp50:.1} ms, p99 {bp99:.1} ms, max {bmax:.1} ms"
                );
                println!(
                    "ratio meshplane/baseline (both from the send): p50 {:.2}x, p99 {:.2}x",
                    s50 / bp50.max(0.001),
                    s99 / bp99.max(0.001)
                );
                println!(
                    "| {} | {p50:.1} | {p99:.1} | {max:.1} | {s99:.1} | {mean_bytes:.0} | {:.1} | {bp99:.1} | {:.2}x |",
                    args.agents,
                    per_stream / 1024.0,
                    s99 / bp99.max(0.001)
                );
            }
        }
        Mode::Burst => {
            let mut nodes_api = pb::node_service_client::NodeServiceClient::new(admin.clone());
            let t = Instant::now();
            let mut last = 0;
            for i in 0..args.changes {
                let node = if i % 2 == 0 {
                    gateways
                        .create_egress_gateway(authed(
                            &token,
                            pb::CreateEgressGatewayRequest {
                                node_id: gw_id.clone(),
                                ranges: vec![format!(
                                    "172.{}.{}.0/24",
                                    16 + (i / 256) % 16,
                                    i % 256
                                )],
                                interface: "eth1".into(),
                                nat_enabled: Some(i % 4 == 0),
                                ..Default::default()
                            },
                        ))
                        .await
                        .unwrap()
                        .into_inner()
                } else {
                    let a = &agents[i % agents.len()];
                    nodes_api
                        .update_node(authed(
                            &token,
                            update(
                                pb::Node {
                                    id: a.node_id.clone(),
                                    endpoint: format!("203.0.113.{}:{}", i % 250 + 1, 50000 + i),
                                    ..Default::default()
                                },
                                "endpoint",
                            ),
                        ))
                        .await
                        .unwrap()
                        .into_inner()
                };
                last = last.max(node.config_revision);
            }
            let write_secs = t.elapsed().as_secs_f64();
            // Every agent's final revision is its node's current one; the
            // agents that keep a config also get a fresh snapshot to compare.
            let mut finals = Vec::with_capacity(agents.len());
            for (i, a) in agents.iter().enumerate() {
                let cfg = if i < keep {
                    Some(
                        nodes_api
                            .get_node_config(authed(
                                &token,
                                pb::GetNodeConfigRequest {
                                    id: a.node_id.clone(),
                                },
                            ))
                            .await
                            .unwrap()
                            .into_inner(),
                    )
                } else {
                    None
                };
                let rev = match &cfg {
                    Some(c) => c.revision,
                    None => {
                        nodes_api
                            .get_node(authed(
                                &token,
                                pb::GetNodeRequest {
                                    id: a.node_id.clone(),
                                },
                            ))
                            .await
                            .unwrap()
                            .into_inner()
                            .config_revision
                    }
                };
                finals.push((rev, cfg));
            }
            let deadline = Instant::now() + Duration::from_secs(300);
            for (a, (rev, _)) in agents.iter().zip(&finals) {
                while a.revision.load(Ordering::Acquire) < *rev {
                    if Instant::now() > deadline {
                        let l = a.log.lock().unwrap();
                        panic!(
                            "agent {} stuck at revision {} (want {rev}); error {:?}; reconnects {:?}",
                            a.node_id,
                            a.revision.load(Ordering::Acquire),
                            l.error,
                            l.reconnects
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let settle = t.elapsed().as_secs_f64();
            let mut equal = 0;
            let mut checked = 0;
            let mut messages = 0;
            let mut bytes = 0usize;
            for (a, (rev, fresh)) in agents.iter().zip(&finals) {
                let l = a.log.lock().unwrap();
                assert!(l.error.is_none(), "agent {}: {:?}", a.node_id, l.error);
                assert_eq!(
                    l.updates.last().unwrap().1,
                    *rev,
                    "agent {} final revision",
                    a.node_id
                );
                let first = l.updates.iter().position(|u| u.1 > 0).unwrap_or(0);
                let snapshot_end = l.updates[first..]
                    .iter()
                    .position(|u| u.1 != l.updates[first].1)
                    .map(|p| p + first)
                    .unwrap_or(l.updates.len());
                messages += l.updates.len() - snapshot_end;
                bytes += l.updates[snapshot_end..].iter().map(|u| u.2).sum::<usize>();
                if let (Some(c), Some(f)) = (&l.config, fresh) {
                    checked += 1;
                    if c == f {
                        equal += 1;
                    }
                }
            }
            let reconnects: usize = agents
                .iter()
                .map(|a| a.log.lock().unwrap().reconnects.len())
                .sum();
            println!("streams that broke and resumed during the run: {reconnects}");
            println!(
                "burst: {} changes written in {write_secs:.1} s; all {} agents on their final revision after {settle:.1} s (last write revision {last}); {equal}/{checked} materialized configs equal a fresh snapshot; {:.1} messages and {:.0} bytes per agent for the burst",
                args.changes,
                agents.len(),
                messages as f64 / agents.len() as f64,
                bytes as f64 / agents.len() as f64
            );
            assert_eq!(equal, checked, "configs differ from fresh snapshots");
        }
        Mode::Soak => {
            let soak = Soak {
                args: &args,
                admin: admin.clone(),
                token: token.clone(),
                gw_id: gw_id.clone(),
                gw_address: gw_address.clone(),
                addresses: &addresses,
                agents: &agents,
                keep,
                stats: stats.clone(),
                reporting: reporting.clone(),
                pid,
                metrics: server
                    .preamble
                    .iter()
                    .find_map(|l| {
                        l.strip_prefix("meshplane metrics: serving Prometheus metrics on http://")
                    })
                    .and_then(|a| a.strip_suffix("/metrics"))
                    .expect("metrics address")
                    .to_owned(),
            };
            soak.run().await;
        }
        Mode::Restart => {
            let held: Vec<(u64, u64, usize, usize, usize)> = agents
                .iter()
                .map(|a| {
                    let l = a.log.lock().unwrap();
                    (
                        a.completes.load(Ordering::Acquire),
                        a.revision.load(Ordering::Acquire),
                        l.snapshots,
                        l.reconnects.len(),
                        l.updates.len(),
                    )
                })
                .collect();
            if args.cold {
                forget.fetch_add(1, Ordering::AcqRel);
            }
            let addr = server.addr.clone();
            let killed = Instant::now();
            // SIGKILL: no graceful shutdown, every stream breaks at once.
            server.child.kill().expect("kill the server");
            let _ = server.child.wait();
            server = spawn_ready(server_cmd(&addr, 0), READY);
            let down = killed.elapsed().as_secs_f64();
            let up = Instant::now();
            let pid = server.child.id();
            // The new process's own starting point (it has loaded the state,
            // no agent is back yet).
            let rss_start = rss_kib(pid);
            let peak = Arc::new(AtomicU64::new(rss_start));
            let sampling = Arc::new(AtomicBool::new(true));
            let sampler = {
                let (peak, sampling) = (peak.clone(), sampling.clone());
                tokio::spawn(async move {
                    while sampling.load(Ordering::Acquire) {
                        peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
            };
            wait_agents(
                &agents,
                Duration::from_secs(900),
                Duration::from_millis(50),
                "did not get their config back after the restart",
                |i, a| {
                    a.completes.load(Ordering::Acquire) > held[i].0
                        && a.revision.load(Ordering::Acquire) >= held[i].1
                },
            )
            .await;
            let storm = up.elapsed().as_secs_f64();
            tokio::time::sleep(Duration::from_secs(5)).await;
            sampling.store(false, Ordering::Release);
            let _ = sampler.await;
            let rss_idle = rss_kib(pid);
            peak.fetch_max(rss_idle, Ordering::Relaxed);
            let (mut snapshots, mut refused, mut unreachable, mut broken, mut bytes) =
                (0, 0, 0, 0, 0usize);
            for (a, h) in agents.iter().zip(&held) {
                let l = a.log.lock().unwrap();
                assert!(l.error.is_none(), "agent {}: {:?}", a.node_id, l.error);
                snapshots += l.snapshots - h.2;
                for r in &l.reconnects[h.3..] {
                    if r.starts_with("ResourceExhausted") {
                        refused += 1;
                    } else if r.starts_with("connect:") {
                        unreachable += 1;
                    } else {
                        broken += 1;
                    }
                }
                bytes += l.updates[h.4..].iter().map(|u| u.2).sum::<usize>();
            }
            let n = agents.len();
            println!(
                "restart ({}): server back {down:.1} s after SIGKILL; all {n} agents hold their current config {storm:.1} s after it was back",
                if args.cold {
                    "cold: agents reconnect from revision 0"
                } else {
                    "warm: agents resume from their revision"
                }
            );
            println!(
                "  snapshots sent {snapshots}; {:.0} bytes per agent; attempts refused with RESOURCE_EXHAUSTED {refused}; connection attempts while down {unreachable}; other stream ends {broken} (the kill ends every stream once)",
                bytes as f64 / n as f64
            );
            println!(
                "  server RSS {} MiB when back, at most {} MiB (sampled every 100 ms), {} MiB 5 s after the last agent: {:.1} KiB per stream",
                rss_start / 1024,
                peak.load(Ordering::Relaxed) / 1024,
                rss_idle / 1024,
                rss_idle.saturating_sub(rss_start) as f64 / n as f64
            );
        }
    }
    drop(others);
    drop(server);
    drop(pg);
}

async fn wait_all(agents: &[Agent], target: u64, limit: Duration) {
    wait_agents(
        agents,
        limit,
        Duration::from_millis(1),
        &format!("never got revision {target}"),
        |_, a| a.revision.load(Ordering::Acquire) >= target,
    )
    .await;
}

/// Polls every `poll` until `done` holds for every agent (by index);
/// panics after `limit`, saying how many agents `what`.
async fn wait_agents(
    agents: &[Agent],
    limit: Duration,
    poll: Duration,
    what: &str,
    done: impl Fn(usize, &Agent) -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        let behind = agents
            .iter()
            .enumerate()
            .filter(|(i, a)| !done(*i, a))
            .count();
        if behind == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{behind} agents {what}");
        tokio::time::sleep(poll).await;
    }
}

/// The baseline: a bare tonic server (a child process) that broadcasts one
/// message of `size` bytes to N streams when a unary call arrives.
async fn baseline(n: usize, size: usize, concurrency: usize) -> (f64, f64, f64) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--baseline-server",
        "127.0.0.1:0",
        "--baseline-bytes",
        &size.to_string(),
    ]);
    let server = spawn_ready(cmd, "baseline ready on ");
    let got = Arc::new(Mutex::new(Vec::<Instant>::with_capacity(n)));
    let ready = Arc::new(AtomicUsize::new(0));
    let sem = Arc::new(Semaphore::new(concurrency));
    let mut handles = Vec::new();
    for _ in 0..n {
        let addr = server.addr.clone();
        let got = got.clone();
        let ready = ready.clone();
        let permit = sem.clone().acquire_owned().await.unwrap();
        handles.push(tokio::spawn(async move {
            let mut c = pb::agent_service_client::AgentServiceClient::new(channel(&addr).await);
            let mut s = c
                .watch_config(pb::WatchConfigRequest { last_revision: 0 })
                .await
                .unwrap()
                .into_inner();
            // The first message says the stream is subscribed.
            s.message().await.unwrap().unwrap();
            ready.fetch_add(1, Ordering::Relaxed);
            drop(permit);
            if s.message().await.unwrap().is_some() {
                got.lock().unwrap().push(Instant::now());
            }
        }));
    }
    while ready.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = pb::agent_service_client::AgentServiceClient::new(channel(&server.addr).await);
    let sent = Instant::now();
    c.report_status(pb::ReportStatusRequest::default())
        .await
        .unwrap();
    for h in handles {
        h.await.unwrap();
    }
    let mut lat: Vec<f64> = got
        .lock()
        .unwrap()
        .iter()
        .map(|t| t.saturating_duration_since(sent).as_secs_f64() * 1000.0)
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        *lat.last().unwrap(),
    )
}

struct Broadcast {
    tx: broadcast::Sender<pb::ConfigUpdate>,
    message: pb::ConfigUpdate,
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for Broadcast {
    async fn register(
        &self,
        _: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    type WatchConfigStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::ConfigUpdate, Status>> + Send>>;

    async fn watch_config(
        &self,
        _: Request<pb::WatchConfigRequest>,
    ) -> Result<Response<Self::WatchConfigStream>, Status> {
        let rx = self.tx.subscribe();
        let hello = pb::ConfigUpdate::default();
        let s = futures::stream::unfold((Some(hello), rx), |(first, mut rx)| async move {
            if let Some(h) = first {
                return Some((Ok(h), (None, rx)));
            }
            match rx.recv().await {
                Ok(m) => Some((Ok(m), (None, rx))),
                Err(_) => None,
            }
        });
        Ok(Response::new(Box::pin(s)))
    }

    async fn report_status(
        &self,
        _: Request<pb::ReportStatusRequest>,
    ) -> Result<Response<()>, Status> {
        let _ = self.tx.send(self.message.clone());
        Ok(Response::new(()))
    }
}

async fn baseline_server(addr: &str, size: usize) {
    let (tx, _) = broadcast::channel(4);
    let mut message = pb::ConfigUpdate {
        revision: 2,
        update: Some(pb::config_update::Update::Delta(pb::ConfigDelta {
            from_revision: 1,
            upsert_peers: vec![pb::Peer::default()],
            ..Default::default()
        })),
        partial: false,
    };
    // Pad to the requested encoded size.
    let base = message.encoded_len();
    if let Some(pb::config_update::Update::Delta(d)) = &mut message.update {
        d.upsert_peers[0].name = "x".repeat(size.saturating_sub(base + 3));
    }
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    println!("baseline ready on {}", listener.local_addr().unwrap());
    Server::builder()
        .add_service(pb::agent_service_server::AgentServiceServer::new(
            Broadcast { tx, message },
        ))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
        .await
        .unwrap();
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One kind of call in soak mode.
#[derive(Default)]
struct KindStats {
    latency_ms: Vec<f64>,
    ok: u64,
    /// Failed with the code the call was meant to fail with.
    expected: u64,
    /// Anything else, by code.
    unexpected: std::collections::BTreeMap<String, u64>,
    /// The first few unexpected errors' messages.
    samples: Vec<String>,
}

#[derive(Default)]
struct Stats(Mutex<std::collections::BTreeMap<&'static str, KindStats>>);

impl Stats {
    /// Records a call started at `started`; `expect` is the code a call
    /// meant to fail fails with (a deliberate repeat).
    fn record(
        &self,
        kind: &'static str,
        started: Instant,
        err: Option<Status>,
        expect: Option<tonic::Code>,
    ) {
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let mut m = self.0.lock().unwrap();
        let k = m.entry(kind).or_default();
        k.latency_ms.push(ms);
        match (err, expect) {
            (None, None) => k.ok += 1,
            (Some(e), Some(c)) if e.code() == c => k.expected += 1,
            (None, Some(c)) => {
                *k.unexpected
                    .entry(format!("Ok (expected {c:?})"))
                    .or_default() += 1;
            }
            (Some(e), _) => {
                *k.unexpected.entry(format!("{:?}", e.code())).or_default() += 1;
                if k.samples.len() < 5 {
                    k.samples.push(reason(&e));
                }
            }
        }
    }
}

/// What soak mode's writers share.
struct Shared {
    token: String,
    gw_id: String,
    node_ids: Vec<String>,
    addresses: Vec<String>,
    dns_address: String,
    seq: AtomicU64,
    networks: Mutex<Vec<String>>,
    ext_clients: Mutex<Vec<String>>,
    dns: Mutex<Vec<String>>,
    /// Whether the gateway node has an egress; held across the call.
    egress: tokio::sync::Mutex<bool>,
    /// The next ListNodes page.
    page: Mutex<String>,
    stats: Arc<Stats>,
}

/// Writes are 40 % of the admin calls, reads 60 %.
async fn soak_call(sh: &Shared, ch: Channel, op: u32) {
    let t = sh.token.as_str();
    let stats = &sh.stats;
    let node = &sh.node_ids[rand::random_range(0..sh.node_ids.len())];
    // Half the time remove a scratch object if there is one, else create one.
    let pop = |pool: &Mutex<Vec<String>>| {
        if rand::random::<bool>() {
            pool.lock().unwrap().pop()
        } else {
            None
        }
    };
    let key = || {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
    };
    match op {
        0..6 => {
            let mut c = pb::network_service_client::NetworkServiceClient::new(ch);
            let started = Instant::now();
            if let Some(name) = pop(&sh.networks) {
                let r = c
                    .delete_network(authed(t, pb::DeleteNetworkRequest { name, force: false }))
                    .await;
                stats.record("DeleteNetwork", started, r.err(), None);
            } else {
                let k = sh.seq.fetch_add(1, Ordering::Relaxed);
                let name = format!("s{k}");
                let r = c
                    .create_network(authed(
                        t,
                        pb::CreateNetworkRequest {
                            network: Some(pb::Network {
                                name: name.clone(),
                                address_range: format!(
                                    "172.{}.{}.0/24",
                                    16 + (k / 256) % 16,
                                    k % 256
                                ),
                                ..Default::default()
                            }),
                        },
                    ))
                    .await;
                if r.is_ok() {
                    sh.networks.lock().unwrap().push(name);
                }
                stats.record("CreateNetwork", started, r.err(), None);
            }
        }
        6..20 => {
            let mut c = pb::node_service_client::NodeServiceClient::new(ch);
            let (n, path) = if rand::random::<bool>() {
                (
                    pb::Node {
                        id: node.clone(),
                        persistent_keepalive: rand::random_range(10..40),
                        ..Default::default()
                    },
                    "persistent_keepalive",
                )
            } else {
                (
                    pb::Node {
                        id: node.clone(),
                        listen_port: rand::random_range(51820..52820),
                        ..Default::default()
                    },
                    "listen_port",
                )
            };
            let started = Instant::now();
            let r = c
                .update_node(authed(
                    t,
                    pb::UpdateNodeRequest {
                        node: Some(n),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec![path.into()],
                        }),
                    },
                ))
                .await;
            stats.record("UpdateNode", started, r.err(), None);
        }
        20..26 => {
            let mut c = pb::gateway_service_client::GatewayServiceClient::new(ch);
            let mut has = sh.egress.lock().await;
            let started = Instant::now();
            if *has {
                let r = c
                    .delete_egress_gateway(authed(
                        t,
                        pb::DeleteEgressGatewayRequest {
                            node_id: sh.gw_id.clone(),
                        },
                    ))
                    .await;
                *has = r.is_err();
                stats.record("DeleteEgressGateway", started, r.err(), None);
            } else {
                let k = sh.seq.fetch_add(1, Ordering::Relaxed);
                let r = c
                    .create_egress_gateway(authed(
                        t,
                        pb::CreateEgressGatewayRequest {
                            node_id: sh.gw_id.clone(),
                            ranges: vec![format!("192.168.{}.0/24", k % 256)],
                            interface: "eth1".into(),
                            nat_enabled: None,
                            ..Default::default()
                        },
                    ))
                    .await;
                *has = r.is_ok();
                stats.record("CreateEgressGateway", started, r.err(), None);
            }
        }
        26..32 => {
            let mut c = pb::ext_client_service_client::ExtClientServiceClient::new(ch);
            let started = Instant::now();
            if let Some(id) = pop(&sh.ext_clients) {
                let r = c
                    .delete_ext_client(authed(t, pb::DeleteExtClientRequest { id }))
                    .await;
                stats.record("DeleteExtClient", started, r.err(), None);
            } else {
                let k = sh.seq.fetch_add(1, Ordering::Relaxed);
                let r = c
                    .create_ext_client(authed(
                        t,
                        pb::CreateExtClientRequest {
                            network: "bench".into(),
                            ingress_node_id: sh.gw_id.clone(),
                            name: format!("c{k}"),
                            public_key: key(),
                            dns: vec![],
                            tags: vec![],
                        },
                    ))
                    .await;
                let r = r.map(|r| r.into_inner().id);
                match r {
                    Ok(id) => {
                        sh.ext_clients.lock().unwrap().push(id);
                        stats.record("CreateExtClient", started, None, None);
                    }
                    Err(e) => stats.record("CreateExtClient", started, Some(e), None),
                }
            }
        }
        32..38 => {
            let mut c = pb::dns_service_client::DnsServiceClient::new(ch);
            let started = Instant::now();
            if let Some(name) = pop(&sh.dns) {
                let r = c
                    .delete_dns_entry(authed(
                        t,
                        pb::DeleteDnsEntryRequest {
                            network: "bench".into(),
                            name,
                        },
                    ))
                    .await;
                stats.record("DeleteDnsEntry", started, r.err(), None);
            } else {
                let name = format!("d{}", sh.seq.fetch_add(1, Ordering::Relaxed));
                let r = c
                    .create_dns_entry(authed(
                        t,
                        pb::CreateDnsEntryRequest {
                            entry: Some(pb::DnsEntry {
                                network: "bench".into(),
                                name: name.clone(),
                                address: sh.dns_address.clone(),
                                ..Default::default()
                            }),
                        },
                    ))
                    .await;
                if r.is_ok() {
                    sh.dns.lock().unwrap().push(name);
                }
                stats.record("CreateDnsEntry", started, r.err(), None);
            }
        }
        38..40 => {
            // A deliberate repeat: this entry exists since the setup.
            let mut c = pb::dns_service_client::DnsServiceClient::new(ch);
            let started = Instant::now();
            let r = c
                .create_dns_entry(authed(
                    t,
                    pb::CreateDnsEntryRequest {
                        entry: Some(pb::DnsEntry {
                            network: "bench".into(),
                            name: "fixed".into(),
                            address: sh.dns_address.clone(),
                            ..Default::default()
                        }),
                    },
                ))
                .await;
            stats.record(
                "CreateDnsEntry (repeat)",
                started,
                r.err(),
                Some(tonic::Code::AlreadyExists),
            );
        }
        40..50 => {
            let mut c = pb::network_service_client::NetworkServiceClient::new(ch);
            let started = Instant::now();
            let r = c
                .get_network(authed(
                    t,
                    pb::GetNetworkRequest {
                        name: "bench".into(),
                    },
                ))
                .await;
            stats.record("GetNetwork", started, r.err(), None);
        }
        50..60 => {
            let mut c = pb::node_service_client::NodeServiceClient::new(ch);
            let page_token = sh.page.lock().unwrap().clone();
            let started = Instant::now();
            let r = c
                .list_nodes(authed(
                    t,
                    pb::ListNodesRequest {
                        network: "bench".into(),
                        page_size: 100,
                        page_token,
                    },
                ))
                .await;
            let r = r.map(|r| r.into_inner().next_page_token);
            match r {
                Ok(next) => {
                    *sh.page.lock().unwrap() = next;
                    stats.record("ListNodes (100)", started, None, None);
                }
                Err(e) => stats.record("ListNodes (100)", started, Some(e), None),
            }
        }
        60..75 => {
            let mut c = pb::node_service_client::NodeServiceClient::new(ch);
            let started = Instant::now();
            let r = c
                .get_node(authed(t, pb::GetNodeRequest { id: node.clone() }))
                .await;
            stats.record("GetNode", started, r.err(), None);
        }
        75..85 => {
            let mut c = pb::node_service_client::NodeServiceClient::new(ch)
                .max_decoding_message_size(usize::MAX);
            let started = Instant::now();
            let r = c
                .get_node_config(authed(t, pb::GetNodeConfigRequest { id: node.clone() }))
                .await;
            stats.record("GetNodeConfig", started, r.err(), None);
        }
        _ => {
            let mut c = pb::gateway_service_client::GatewayServiceClient::new(ch);
            let to = &sh.addresses[rand::random_range(0..sh.addresses.len())];
            let started = Instant::now();
            let r = c
                .explain_route(authed(
                    t,
                    pb::ExplainRouteRequest {
                        network: "bench".into(),
                        from_node_id: node.clone(),
                        destination: to.split('/').next().unwrap_or(to).to_owned(),
                    },
                ))
                .await;
            stats.record("ExplainRoute", started, r.err(), None);
        }
    }
}

/// GET /metrics, as Prometheus text.
async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("metrics");
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// The figures soak mode reports from a scrape.
#[derive(Default, Debug, Clone)]
struct Scraped {
    /// meshplane_requests_total by code.
    by_code: std::collections::BTreeMap<String, f64>,
    /// meshplane_fanout_seconds buckets (upper bound, cumulative count).
    fanout: Vec<(f64, f64)>,
    batches: f64,
    writes: f64,
}

fn parse_metrics(text: &str) -> Scraped {
    let mut s = Scraped::default();
    for line in text.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let label = |key: &str| {
            name.split_once(&format!("{key}=\""))
                .and_then(|(_, r)| r.split_once('"'))
                .map(|(v, _)| v.to_owned())
        };
        if name.starts_with("meshplane_requests_total{") {
            *s.by_code
                .entry(label("code").unwrap_or_default())
                .or_default() += v;
        } else if name.starts_with("meshplane_fanout_seconds_bucket{") {
            let le = label("le").unwrap_or_default();
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            s.fanout.push((le, v));
        } else if name == "meshplane_commit_batches_total" {
            s.batches = v;
        } else if name == "meshplane_commit_writes_total" {
            s.writes = v;
        }
    }
    s
}

/// The bucket bound below which `p` of the events between two scrapes fell.
fn bucket_quantile(start: &[(f64, f64)], end: &[(f64, f64)], p: f64) -> f64 {
    let delta: Vec<(f64, f64)> = end
        .iter()
        .map(|(le, v)| {
            let before = start
                .iter()
                .find(|(l, _)| l == le)
                .map(|x| x.1)
                .unwrap_or(0.0);
            (*le, v - before)
        })
        .collect();
    let total = delta.last().map(|x| x.1).unwrap_or(0.0);
    delta
        .iter()
        .find(|(_, c)| *c >= total * p)
        .map(|x| x.0)
        .unwrap_or(f64::NAN)
}

struct Soak<'a> {
    args: &'a Args,
    admin: Channel,
    token: String,
    gw_id: String,
    gw_address: String,
    addresses: &'a [String],
    agents: &'a [Agent],
    keep: usize,
    stats: Arc<Stats>,
    reporting: Arc<AtomicBool>,
    pid: u32,
    metrics: String,
}

impl Soak<'_> {
    async fn run(self) {
        let args = self.args;
        let token = self.token.as_str();
        let dns_address = self
            .gw_address
            .split('/')
            .next()
            .unwrap_or(&self.gw_address)
            .to_owned();
        // The gateway node takes external clients, and one DNS entry exists
        // for the deliberate repeats.
        pb::gateway_service_client::GatewayServiceClient::new(self.admin.clone())
            .create_ingress_gateway(authed(
                token,
                pb::CreateIngressGatewayRequest {
                    node_id: self.gw_id.clone(),
                    ext_client_dns: vec![],
                },
            ))
            .await
            .expect("ingress");
        pb::dns_service_client::DnsServiceClient::new(self.admin.clone())
            .create_dns_entry(authed(
                token,
                pb::CreateDnsEntryRequest {
                    entry: Some(pb::DnsEntry {
                        network: "bench".into(),
                        name: "fixed".into(),
                        address: dns_address.clone(),
                        ..Default::default()
                    }),
                },
            ))
            .await
            .expect("dns entry");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let shared = Arc::new(Shared {
            token: self.token.clone(),
            gw_id: self.gw_id.clone(),
            node_ids: self.agents.iter().map(|a| a.node_id.clone()).collect(),
            addresses: self.addresses.to_vec(),
            dns_address,
            seq: AtomicU64::new(0),
            networks: Mutex::default(),
            ext_clients: Mutex::default(),
            dns: Mutex::default(),
            egress: tokio::sync::Mutex::new(false),
            page: Mutex::default(),
            stats: self.stats.clone(),
        });
        let m0 = parse_metrics(&scrape(&self.metrics).await);
        let rss_start = rss_kib(self.pid);

        // Memory, every second from the start of the load.
        let pid = self.pid;
        let sampling = Arc::new(AtomicBool::new(true));
        let start = Instant::now();
        let sampler = {
            let sampling = sampling.clone();
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                while sampling.load(Ordering::Acquire) {
                    tick.tick().await;
                    samples.push((start.elapsed().as_secs_f64(), rss_kib(pid)));
                }
                samples
            })
        };

        // The load: one call every 1/rate s, at most `concurrency` in flight.
        self.reporting.store(true, Ordering::Release);
        let sem = Arc::new(Semaphore::new(args.concurrency));
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
        // Keep to the schedule (a tick the dispatcher was late for is sent at
        // once, not dropped): calls arrive at the rate asked for whenever
        // fewer than `concurrency` are in flight, however the dispatcher
        // itself is scheduled on a busy machine.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let end = start + Duration::from_secs(args.duration);
        let mut calls = tokio::task::JoinSet::new();
        let mut sent = 0u64;
        while Instant::now() < end {
            tick.tick().await;
            let permit = sem.clone().acquire_owned().await.unwrap();
            let (sh, ch) = (shared.clone(), self.admin.clone());
            let op = rand::random_range(0..100);
            calls.spawn(async move {
                soak_call(&sh, ch, op).await;
                drop(permit);
            });
            sent += 1;
            while let Some(r) = calls.try_join_next() {
                r.unwrap();
            }
        }
        while let Some(r) = calls.join_next().await {
            r.unwrap();
        }
        let load_secs = start.elapsed().as_secs_f64();
        sampling.store(false, Ordering::Release);
        let samples = sampler.await.unwrap();
        let m1 = parse_metrics(&scrape(&self.metrics).await);

        // Quiet: every agent must end on its node's final revision.
        let quiet = Instant::now();
        let finals: Vec<pb::NodeConfig> = {
            use futures::StreamExt;
            futures::stream::iter(self.agents.iter().map(|a| {
                let mut c = pb::node_service_client::NodeServiceClient::new(self.admin.clone())
                    .max_decoding_message_size(usize::MAX);
                let id = a.node_id.clone();
                async move {
                    c.get_node_config(authed(token, pb::GetNodeConfigRequest { id }))
                        .await
                        .expect("final GetNodeConfig")
                        .into_inner()
                }
            }))
            .buffered(8)
            .collect()
            .await
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        let on_final = |agents: &[Agent]| {
            agents
                .iter()
                .zip(&finals)
                .filter(|(a, f)| a.revision.load(Ordering::Acquire) == f.revision)
                .count()
        };
        while on_final(self.agents) < self.agents.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let settle = quiet.elapsed().as_secs_f64();
        let on_final = on_final(self.agents);
        let ahead = self
            .agents
            .iter()
            .zip(&finals)
            .filter(|(a, f)| a.revision.load(Ordering::Acquire) > f.revision)
            .count();
        let (mut equal, mut checked, mut agent_errors, mut reconnects) = (0, 0, 0, 0);
        for (a, f) in self.agents.iter().zip(&finals).take(self.keep) {
            let l = a.log.lock().unwrap();
            if let Some(c) = &l.config {
                checked += 1;
                if c == f {
                    equal += 1;
                }
            }
        }
        for a in self.agents {
            let l = a.log.lock().unwrap();
            agent_errors += usize::from(l.error.is_some());
            reconnects += l.reconnects.len();
        }
        // Another few seconds of reports after the agents are current.
        tokio::time::sleep(Duration::from_secs(args.report_every)).await;
        self.reporting.store(false, Ordering::Release);
        let rss_quiet = rss_kib(self.pid);

        // Figures.
        println!(
            "soak: {sent} admin calls in {load_secs:.1} s ({:.1}/s, target {}/s, at most {} in flight); {} agents streaming, ReportStatus every {} s",
            sent as f64 / load_secs,
            args.rate,
            args.concurrency,
            self.agents.len(),
            args.report_every
        );
        println!(
            "| call | calls | per s | p50 ms | p99 ms | max ms | expected errors | unexpected errors |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        let mut unexpected_total = 0;
        let mut expected_total = 0;
        {
            let mut m = self.stats.0.lock().unwrap();
            for (kind, k) in m.iter_mut() {
                k.latency_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
                let n = k.latency_ms.len();
                let unexpected: u64 = k.unexpected.values().sum();
                unexpected_total += unexpected;
                expected_total += k.expected;
                let detail = if k.unexpected.is_empty() {
                    String::new()
                } else {
                    format!(" {:?}", k.unexpected)
                };
                println!(
                    "| {kind} | {n} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {unexpected}{detail} |",
                    n as f64 / load_secs,
                    percentile(&k.latency_ms, 0.5),
                    percentile(&k.latency_ms, 0.99),
                    k.latency_ms.last().copied().unwrap_or(f64::NAN),
                    k.expected
                );
                for s in &k.samples {
                    println!("    {kind}: {s}");
                }
            }
        }
        println!(
            "errors: expected {expected_total} (ALREADY_EXISTS of the deliberate repeats), unexpected {unexpected_total}"
        );
        let warm = samples
            .iter()
            .rev()
            .find(|(t, _)| *t <= args.warmup as f64)
            .or(samples.first())
            .map(|x| x.1)
            .unwrap_or(0);
        let max = samples.iter().map(|x| x.1).max().unwrap_or(0);
        let last = samples.last().map(|x| x.1).unwrap_or(0);
        let growth = (last as f64 / warm.max(1) as f64 - 1.0) * 100.0;
        println!(
            "server RSS: {:.1} MiB before the load, {:.1} MiB after {} s of warm-up, max {:.1} MiB, {:.1} MiB at the end: growth {growth:+.1} % after warm-up (target < 10 %: {}); {:.1} MiB once quiet",
            rss_start as f64 / 1024.0,
            warm as f64 / 1024.0,
            args.warmup,
            max as f64 / 1024.0,
            last as f64 / 1024.0,
            if growth < 10.0 { "met" } else { "MISSED" },
            rss_quiet as f64 / 1024.0
        );
        println!(
            "  RSS samples (s, MiB): {}",
            samples
                .iter()
                .step_by(5)
                .map(|(t, k)| format!("{t:.0}:{:.0}", *k as f64 / 1024.0))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let codes: Vec<String> = m1
            .by_code
            .iter()
            .map(|(c, v)| {
                format!(
                    "{c} {:.0}",
                    v - m0.by_code.get(c).copied().unwrap_or_default()
                )
            })
            .collect();
        let (batches, writes) = (m1.batches - m0.batches, m1.writes - m0.writes);
        println!(
            "metrics during the load: requests by code: {}; fan-out p50 <= {} ms, p99 <= {} ms (bucket bounds); group commit {writes:.0} writes in {batches:.0} batches ({:.2} per batch)",
            codes.join(", "),
            bucket_quantile(&m0.fanout, &m1.fanout, 0.5) * 1000.0,
            bucket_quantile(&m0.fanout, &m1.fanout, 0.99) * 1000.0,
            writes / batches.max(1.0)
        );
        println!(
            "agents on their node's final revision: {on_final}/{} after {settle:.1} s from the end of the load ({ahead} ahead of it); materialized configs equal to GetNodeConfig {equal}/{checked}; agent errors {agent_errors}; streams that broke and resumed {reconnects}",
            self.agents.len()
        );
        assert_eq!(
            on_final,
            self.agents.len(),
            "agents not on their final revision"
        );
        assert_eq!(equal, checked, "configs differ from GetNodeConfig");
        assert_eq!(unexpected_total, 0, "unexpected errors");
    }
}

/// What the replicas and PostgreSQL have used so far.
struct Snap {
    /// CPU seconds per replica.
    cpu: Vec<f64>,
    /// CPU seconds of the PostgreSQL cluster's processes.
    pg_cpu: f64,
    statements: Statements,
    /// Bytes between each replica and PostgreSQL.
    pg_bytes: Vec<sys::TcpBytes>,
    /// Bytes between each replica and its agents.
    agent_bytes: Vec<sys::TcpBytes>,
}

/// `owners`: which replica's process holds each local port of a
/// connection to PostgreSQL (`sys::tcp_port_owners`, taken before: `ss -p`
/// is too slow to run inside a measured window with 10,000 sockets).
async fn snap(
    pids: &[u32],
    ports: &[u16],
    pg: Option<(&PgCluster, &mut sqlx::PgConnection)>,
    owners: &HashMap<u16, u32>,
) -> Snap {
    let agent_bytes = ports
        .iter()
        .map(|p| {
            sys::tcp_bytes(&format!("sport = :{p}"), false)
                .values()
                .fold(sys::TcpBytes::default(), |a, b| a + *b)
        })
        .collect();
    let (pg_cpu, statements, pg_bytes) = match pg {
        Some((c, conn)) => {
            let by_port = sys::tcp_bytes_by_port(&format!("dport = :{}", c.port()));
            let mut by_pid: HashMap<u32, sys::TcpBytes> = HashMap::new();
            for (port, b) in by_port {
                if let Some(pid) = owners.get(&port) {
                    let e = by_pid.entry(*pid).or_default();
                    *e = *e + b;
                }
            }
            (
                sys::pg_cpu_secs(&c.data_dir()),
                statements(conn).await,
                pids.iter()
                    .map(|p| by_pid.get(p).copied().unwrap_or_default())
                    .collect(),
            )
        }
        None => (
            0.0,
            HashMap::new(),
            vec![sys::TcpBytes::default(); pids.len()],
        ),
    };
    Snap {
        cpu: pids.iter().map(|&p| sys::cpu_secs(p)).collect(),
        pg_cpu,
        statements,
        pg_bytes,
        agent_bytes,
    }
}

fn is_presence(query: &str) -> bool {
    query.contains("presence")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// The cost model's measurements: `samples` more changes (each a new
/// egress range on the gateway, which changes every agent's config), each
/// measured from just before its send until every agent holds it plus
/// 200 ms; on PostgreSQL a sample during which a replica recorded presence
/// (every 2 s) is discarded and taken again. Then one presence round.
#[allow(clippy::too_many_arguments)]
async fn cost(
    agents: &[Agent],
    gateways: &mut pb::gateway_service_client::GatewayServiceClient<Channel>,
    token: &str,
    gw_id: &str,
    pids: &[u32],
    ports: &[u16],
    pg: Option<(&PgCluster, &str)>,
    samples: usize,
) {
    use sqlx::Connection;
    let mut conn = match pg {
        Some((_, url)) => Some(sqlx::PgConnection::connect(url).await.expect("connect")),
        None => None,
    };
    let n = pids.len();
    let snapshots = || -> usize { agents.iter().map(|a| a.log.lock().unwrap().snapshots).sum() };
    let snapshots_before = snapshots();
    let mut taken: Vec<(f64, Snap, Snap)> = Vec::new();
    let mut discarded = 0;
    let mut i = 0;
    let owners_of = || match pg {
        Some((c, _)) => sys::tcp_port_owners(&format!("dport = :{}", c.port())),
        None => HashMap::new(),
    };
    let mut owners;
    while taken.len() < samples && i < samples * 4 {
        i += 1;
        // The replicas' connections to PostgreSQL (the pool may have opened
        // new ones), outside the measured window.
        owners = owners_of();
        let before = snap(pids, ports, pg.map(|p| p.0).zip(conn.as_mut()), &owners).await;
        let sent = Instant::now();
        let node = gateways
            .create_egress_gateway(authed(
                token,
                pb::CreateEgressGatewayRequest {
                    node_id: gw_id.into(),
                    ranges: vec![format!("172.{}.{}.0/24", 16 + i / 256, i % 256)],
                    interface: "eth1".into(),
                    nat_enabled: None,
                    ..Default::default()
                },
            ))
            .await
            .expect("CreateEgressGateway")
            .into_inner();
        wait_all(agents, node.config_revision, Duration::from_secs(120)).await;
        let window = sent.elapsed().as_secs_f64() * 1000.0;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = snap(pids, ports, pg.map(|p| p.0).zip(conn.as_mut()), &owners).await;
        let presence = statement_delta(&before.statements, &after.statements)
            .iter()
            .any(|s| is_presence(&s.0));
        if presence {
            discarded += 1;
        } else {
            taken.push((window, before, after));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!(
        "cost of one change to {} agents ({} samples, {discarded} discarded because presence was recorded during them; medians):",
        agents.len(),
        taken.len()
    );
    let m =
        |f: &dyn Fn(&Snap, &Snap) -> f64| median(taken.iter().map(|(_, a, b)| f(a, b)).collect());
    println!(
        "  until every agent held it: {:.1} ms (then 200 ms more in the window); {} snapshot(s) among the updates of all {} changes",
        median(taken.iter().map(|t| t.0).collect()),
        snapshots() - snapshots_before,
        i
    );
    for r in 0..n {
        let name = (b'A' + r as u8) as char;
        let agents_here = agents.iter().filter(|a| a.replica == r).count();
        println!(
            "  replica {name} ({agents_here} agents): CPU {:.1} ms; to PostgreSQL {:.0} B sent, {:.0} B received; to its agents {:.0} B sent ({:.0} per agent), {:.0} B received",
            m(&|a, b| (b.cpu[r] - a.cpu[r]) * 1000.0),
            m(&|a, b| (b.pg_bytes[r] - a.pg_bytes[r]).sent as f64),
            m(&|a, b| (b.pg_bytes[r] - a.pg_bytes[r]).received as f64),
            m(&|a, b| (b.agent_bytes[r] - a.agent_bytes[r]).sent as f64),
            m(&|a, b| (b.agent_bytes[r] - a.agent_bytes[r]).sent as f64 / agents_here as f64),
            m(&|a, b| (b.agent_bytes[r] - a.agent_bytes[r]).received as f64),
        );
    }
    if pg.is_some() {
        println!(
            "  PostgreSQL: CPU {:.1} ms (all its processes); statements {:.0}, WAL {:.0} B",
            m(&|a, b| (b.pg_cpu - a.pg_cpu) * 1000.0),
            m(&|a, b| statement_delta(&a.statements, &b.statements)
                .iter()
                .map(|s| s.1)
                .sum::<i64>() as f64),
            m(&|a, b| statement_delta(&a.statements, &b.statements)
                .iter()
                .map(|s| s.4)
                .sum::<i64>() as f64),
        );
        // The statements of the median sample (by count), by query.
        if let Some((_, a, b)) = taken.get(taken.len() / 2) {
            println!("  statements of one sample (calls, rows, ms, WAL bytes):");
            for (q, c, r, t, w) in statement_delta(&a.statements, &b.statements) {
                println!("    {c:>5} {r:>6} {t:>8.2} {w:>7}  {}", short(&q));
            }
        }
        // One presence round of every replica.
        owners = owners_of();
        let before = snap(pids, ports, pg.map(|p| p.0).zip(conn.as_mut()), &owners).await;
        let t = Instant::now();
        loop {
            let now = statements(conn.as_mut().unwrap()).await;
            let rounds: i64 = statement_delta(&before.statements, &now)
                .iter()
                .filter(|s| s.0.contains("INSERT INTO presence"))
                .map(|s| s.1)
                .sum();
            if rounds >= n as i64 || t.elapsed() > Duration::from_secs(6) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = snap(pids, ports, pg.map(|p| p.0).zip(conn.as_mut()), &owners).await;
        let window = t.elapsed().as_secs_f64();
        let d = statement_delta(&before.statements, &after.statements);
        println!(
            "presence (every replica records the streams it holds every 2 s and reads everyone's), one window of {window:.1} s:"
        );
        for (q, c, r, t, w) in d.iter().filter(|s| is_presence(&s.0)) {
            println!("    {c:>5} {r:>6} {t:>8.2} {w:>7}  {}", short(q));
        }
        for r in 0..n {
            println!(
                "  replica {}: CPU {:.1} ms in the window; to PostgreSQL {} B sent, {} B received",
                (b'A' + r as u8) as char,
                (after.cpu[r] - before.cpu[r]) * 1000.0,
                (after.pg_bytes[r] - before.pg_bytes[r]).sent,
                (after.pg_bytes[r] - before.pg_bytes[r]).received,
            );
        }
        println!(
            "  PostgreSQL CPU {:.1} ms in the window",
            (after.pg_cpu - before.pg_cpu) * 1000.0
        );
    }
    if let Some(c) = conn {
        let _ = c.close().await;
    }
}
