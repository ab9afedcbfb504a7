//! `agent_bench`: the host agent's apply time and memory for an N-peer
//! config (issue #11), with the real `meshplane` server, the real
//! `meshctl agent` and a real `wireguard-go` device.
//!
//! Run as root (release build; see BENCHMARKS.md):
//!   cargo build --release -p meshplane-server -p meshctl -p meshplane-tests \
//!       --bin meshplane --bin meshctl --bin agent_bench
//!   sudo ./target/release/agent_bench --peers 1000 --changes 100 --markdown
//!
//! The agent's state directory and the server's data directory are
//! temporary directories (under $TMPDIR).
//!
//! Everything runs inside a network namespace this program creates (only
//! loopback, no default route: the fake peers' endpoints are unreachable
//! and never contacted). The benchmark process itself joins that namespace
//! before it starts any thread, so the server, the agent and wireguard-go
//! (started by the agent) all live there. On exit, on error and on
//! SIGINT/SIGTERM: the agent and server are killed by pid, then every
//! other process left in the namespace (wireguard-go), the UAPI socket is
//! removed and the namespace deleted.
//!
//! Measured:
//! 1. the first apply: from starting the agent to `GetNode` showing its
//!    node's `applied_revision == config_revision` (registration, the
//!    snapshot, creating the device, N peers, addresses, the report), with
//!    the agent's own logged `elapsed_ms` and a per-step breakdown from its
//!    log;
//! 2. memory: the agent's peak RSS (VmHWM) and idle RSS (VmRSS), and
//!    wireguard-go's RSS;
//! 3. K one-peer changes (a fake node's endpoint), each from the write's
//!    acknowledgement until `GetNode` shows the agent applied the node's new
//!    config revision: p50/p99;
//! 4. N-peer-wide changes (the network's default keepalive, which changes
//!    every peer), the same way.
//!
//! Nothing is asserted on timing; every number is printed.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, Command, ExitCode, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use clap::Parser;
use meshplane_sdk::{Client, agent::KeyPair, proto as pb};
use tokio::sync::Semaphore;

#[derive(Parser, Debug, Clone)]
#[command(about = "meshplane host agent apply-time and memory benchmark (root)")]
struct Args {
    /// Fake nodes registered besides the agent's own: its config's peers.
    #[arg(long, default_value_t = 1000)]
    peers: usize,
    /// One-peer changes measured after the first apply.
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// Network-wide changes (every peer's keepalive) measured after them.
    #[arg(long, default_value_t = 3)]
    wide: usize,
    /// Seconds to let the agent idle after the first apply before reading
    /// its idle RSS.
    #[arg(long, default_value_t = 5)]
    settle: u64,
    /// Also print a markdown table row for BENCHMARKS.md.
    #[arg(long)]
    markdown: bool,
    /// Keep the agent's log (stderr, INFO) in this file.
    #[arg(long)]
    agent_log: Option<PathBuf>,
    /// The meshplane binary (default: next to this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The meshctl binary (default: next to this one).
    #[arg(long)]
    meshctl_bin: Option<PathBuf>,
    /// The userspace WireGuard implementation the agent starts.
    #[arg(long, default_value = "wireguard-go")]
    userspace: String,
}

type Res<T> = Result<T, String>;

const NETWORK: &str = "bench";
const RANGE4: &str = "10.150.0.0/16";
const RANGE6: &str = "fd00:150::/64";
/// Poll interval for GetNode.
const POLL: Duration = Duration::from_millis(5);

// ---------------------------------------------------------------- helpers

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of a process, seconds.
fn cpu_s(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name (which is in parentheses).
    let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else {
        return f64::NAN;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let ticks: u64 = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks as f64 / if hz > 0 { hz as f64 } else { 100.0 }
}

fn mib(kib: Option<u64>) -> String {
    match kib {
        Some(k) => format!("{:.1} MiB", k as f64 / 1024.0),
        None => "?".into(),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

fn run_cmd(args: &[&str]) -> Res<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn kill(pid: u32, sig: i32) {
    // SAFETY: plain kill(2) on a pid this program started or found in its
    // own namespace.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

fn alive(pid: u32) -> bool {
    // A zombie still has /proc/PID; its state is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Pids of processes in our network namespace (ours excluded): the same
/// as `ip netns pids NS`, found through /proc.
fn pids_in_our_netns() -> Vec<u32> {
    let Ok(me) = std::fs::read_link("/proc/self/ns/net") else {
        return Vec::new();
    };
    let self_pid = std::process::id();
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == self_pid {
                continue;
            }
            if std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .ok()
                .as_ref()
                == Some(&me)
            {
                out.push(pid);
            }
        }
    }
    out
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

// ------------------------------------------------------- the environment

/// The namespace, the processes in it and the UAPI socket; torn down on
/// drop (also when unwinding from a panic).
struct Env {
    ns: String,
    ifname: String,
    server: Option<Child>,
    agent: Option<Child>,
    /// This process is inside `ns` (setns succeeded).
    entered: bool,
}

impl Env {
    /// Creates the namespace and moves this process (still single
    /// threaded) into it; brings loopback up.
    fn enter(ns: String, ifname: String) -> Res<Env> {
        run_cmd(&["ip", "netns", "add", &ns])?;
        let mut env = Env {
            ns,
            ifname,
            server: None,
            agent: None,
            entered: false,
        };
        let path = format!("/run/netns/{}", env.ns);
        let f = std::fs::File::open(&path).map_err(|e| format!("opening {path}: {e}"))?;
        use std::os::fd::AsRawFd;
        // SAFETY: setns(2) on an fd we own; this process has no other
        // thread yet, so all of it (and every child) is in the namespace.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        if r != 0 {
            return Err(format!(
                "setns into {}: {}",
                env.ns,
                std::io::Error::last_os_error()
            ));
        }
        // From here on, "our namespace" is the benchmark's, not the host's.
        env.entered = true;
        run_cmd(&["ip", "link", "set", "lo", "up"])?;
        for fam in ["-4", "-6"] {
            let d = run_cmd(&["ip", fam, "route", "show", "default"])?;
            if !d.trim().is_empty() {
                return Err(format!("namespace {} has a default route: {d}", env.ns));
            }
        }
        Ok(env)
    }

    fn stop_child(c: &mut Child, name: &str) {
        let pid = c.id();
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        kill(pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{name} (pid {pid}) ignored SIGTERM for 5 s: SIGKILL");
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            Self::stop_child(&mut c, "agent");
        }
        if let Some(mut c) = self.server.take() {
            Self::stop_child(&mut c, "server");
        }
        // What is left in the namespace (wireguard-go, daemonized by the
        // agent): `ip netns pids`, killed by pid, bounded.
        for round in 0..50 {
            let mut pids: Vec<u32> = run_cmd(&["ip", "netns", "pids", &self.ns])
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            // Only once inside: before setns, "our" namespace is the host's.
            if self.entered {
                pids.extend(pids_in_our_netns());
            }
            pids.sort();
            pids.dedup();
            pids.retain(|p| *p != std::process::id() && alive(*p));
            if pids.is_empty() {
                break;
            }
            for p in &pids {
                if round == 0 {
                    eprintln!("teardown: killing pid {p} ({}) in {}", comm(*p), self.ns);
                }
                kill(
                    *p,
                    if round < 10 {
                        libc::SIGTERM
                    } else {
                        libc::SIGKILL
                    },
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.ifname));
        if let Err(e) = run_cmd(&["ip", "netns", "del", &self.ns]) {
            eprintln!("teardown: {e}");
        }
    }
}

// -------------------------------------------------------------- agent log

/// Lines of the agent's stderr with the instant each was read.
#[derive(Clone, Default)]
struct AgentLog(Arc<Mutex<Vec<(Instant, String)>>>);

impl AgentLog {
    fn follow(&self, child: &mut Child, keep: Option<PathBuf>) {
        let err = child.stderr.take().expect("piped stderr");
        let lines = self.0.clone();
        std::thread::spawn(move || {
            let mut file = keep.and_then(|p| std::fs::File::create(p).ok());
            let mut r = BufReader::new(err);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                let now = Instant::now();
                if let Some(f) = file.as_mut() {
                    let _ = f.write_all(line.as_bytes());
                }
                lines
                    .lock()
                    .unwrap()
                    .push((now, line.trim_end().to_owned()));
                line.clear();
            }
        });
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn since(&self, from: usize) -> Vec<(Instant, String)> {
        self.0.lock().unwrap()[from..].to_vec()
    }

    fn find(&self, what: &str) -> Option<(Instant, String)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|(_, l)| l.contains(what))
            .cloned()
    }

    fn errors(&self, from: usize) -> Vec<String> {
        self.since(from)
            .into_iter()
            .filter(|(_, l)| l.contains(" ERROR ") || l.contains(" WARN "))
            .map(|(_, l)| l)
            .collect()
    }
}

/// `key=value` in a tracing line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!(" {key}=");
    let i = line.find(&pat)? + pat.len();
    line[i..].split_whitespace().next()
}

/// An `applied revision=R steps=S elapsed_ms=E` line.
#[derive(Debug, Clone, Copy)]
struct Applied {
    revision: u64,
    steps: u64,
    elapsed_ms: u64,
}

fn applied_lines(lines: &[(Instant, String)]) -> Vec<Applied> {
    lines
        .iter()
        .filter(|(_, l)| l.contains(" applied ") || l.ends_with(" applied"))
        .filter_map(|(_, l)| {
            Some(Applied {
                revision: field(l, "revision")?.parse().ok()?,
                steps: field(l, "steps")?.parse().ok()?,
                elapsed_ms: field(l, "elapsed_ms")?.parse().ok()?,
            })
        })
        .collect()
}

/// Step kind of an `applying step=...` line.
fn step_kind(line: &str) -> Option<String> {
    let s = &line[line.find(" step=")? + 6..];
    Some(if s.contains("set private key") {
        "wireguard: configure device (all peers)".into()
    } else if s.starts_with("wireguard: set peer") {
        "wireguard: set peer".into()
    } else if s.starts_with("create WireGuard interface") {
        "create interface (start userspace)".into()
    } else {
        // "address: add 10.150.0.1/16" -> "address: add"
        let mut w = s.split_whitespace();
        match (w.next(), w.next()) {
            (Some(a), Some(b)) => format!("{a} {b}"),
            (Some(a), None) => a.to_owned(),
            _ => s.to_owned(),
        }
    })
}

/// Time per step kind between `applying` lines (each step lasts until the
/// next line), for the lines in `lines`.
fn step_breakdown(lines: &[(Instant, String)]) -> Vec<(String, usize, f64)> {
    let mut by: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for (i, (at, l)) in lines.iter().enumerate() {
        if !l.contains(" applying ") {
            continue;
        }
        let Some(kind) = step_kind(l) else { continue };
        let Some((next, _)) = lines.get(i + 1) else {
            continue;
        };
        let e = by.entry(kind).or_default();
        e.0 += 1;
        e.1 += next.saturating_duration_since(*at).as_secs_f64() * 1000.0;
    }
    let mut v: Vec<_> = by.into_iter().map(|(k, (n, ms))| (k, n, ms)).collect();
    v.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap());
    v
}

// -------------------------------------------------------------- measuring

/// Polls GetNode(id) until `applied_revision == config_revision` and
/// `config_revision > after`; returns the node. Fails on an apply error or
/// after `limit`.
async fn wait_applied(client: &Client, id: &str, after: u64, limit: Duration) -> Res<pb::Node> {
    let deadline = Instant::now() + limit;
    loop {
        let n = client
            .nodes()
            .get(id)
            .await
            .map_err(|e| format!("GetNode: {e}"))?;
        if !n.apply_error.is_empty() {
            return Err(format!(
                "the agent reported an apply error (failed revision {}): {}",
                n.failed_revision, n.apply_error
            ));
        }
        if n.config_revision > after && n.applied_revision == n.config_revision {
            return Ok(n);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "node {id} not applied within {limit:?}: config_revision {}, applied_revision {}",
                n.config_revision, n.applied_revision
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits for a log line containing `what`, bounded.
async fn wait_log(log: &AgentLog, agent: &mut Child, what: &str, limit: Duration) -> Res<String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some((_, l)) = log.find(what) {
            return Ok(l);
        }
        if let Ok(Some(st)) = agent.try_wait() {
            return Err(format!(
                "the agent exited ({st}) before logging {what:?}; its last lines:\n{}",
                log.since(log.len().saturating_sub(20))
                    .into_iter()
                    .map(|(_, l)| l)
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
        if Instant::now() > deadline {
            return Err(format!("the agent did not log {what:?} within {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn wireguard_go_pid(ifname: &str) -> Option<u32> {
    pids_in_our_netns().into_iter().find(|p| {
        std::fs::read(format!("/proc/{p}/cmdline"))
            .map(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                args.contains(&ifname.as_bytes()) && comm(*p).starts_with("wireguard")
            })
            .unwrap_or(false)
    })
}

struct Change {
    /// Write acknowledged → GetNode shows the agent applied it, ms.
    ack_to_applied: f64,
    /// The agent's own elapsed_ms for that revision (0 when not logged).
    agent_ms: f64,
    steps: u64,
    /// Sending the write → its acknowledgement, ms.
    write_ms: f64,
    /// Acknowledgement → the agent logs its first step (the update
    /// delivered, the device read, the plan made), ms; 0 when the agent
    /// started before the acknowledgement arrived.
    to_first_step: f64,
    /// The same from sending the write.
    to_first_step_from_send: f64,
    /// The agent logs `applied` → GetNode shows it (the report, the poll).
    logged_to_seen: f64,
}

async fn measure_change<F, Fut>(
    client: &Client,
    log: &AgentLog,
    agent_id: &str,
    limit: Duration,
    write: F,
) -> Res<Change>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Res<()>>,
{
    let before = client
        .nodes()
        .get(agent_id)
        .await
        .map_err(|e| format!("GetNode: {e}"))?
        .config_revision;
    let from = log.len();
    let sent = Instant::now();
    write().await?;
    let acked = Instant::now();
    let n = wait_applied(client, agent_id, before, limit).await?;
    let seen = Instant::now();
    let ack_to_applied = seen.duration_since(acked).as_secs_f64() * 1000.0;
    // The applied line is logged before the report; it is there by now,
    // but the reader thread may lag a little.
    let mut lines = Vec::new();
    let mut a = None;
    for _ in 0..100 {
        lines = log.since(from);
        a = lines.iter().find_map(|(at, l)| {
            let x = applied_lines(std::slice::from_ref(&(*at, l.clone())))
                .pop()
                .filter(|x| x.revision == n.applied_revision)?;
            Some((*at, x))
        });
        if a.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first_step = lines
        .iter()
        .find(|(_, l)| l.contains(" applying "))
        .map(|(at, _)| *at);
    let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1000.0;
    Ok(Change {
        ack_to_applied,
        write_ms: ms(sent, acked),
        to_first_step: first_step.map_or(f64::NAN, |f| ms(acked, f)),
        to_first_step_from_send: first_step.map_or(f64::NAN, |f| ms(sent, f)),
        logged_to_seen: a.map_or(f64::NAN, |(at, _)| ms(at, seen)),
        agent_ms: a.map_or(f64::NAN, |(_, a)| a.elapsed_ms as f64),
        steps: a.map_or(0, |(_, a)| a.steps),
    })
}

#[derive(Default)]
struct Report {
    peers: usize,
    register_s: f64,
    first_total_ms: f64,
    first_phases: Vec<(String, f64)>,
    first_agent_ms: u64,
    first_steps: u64,
    first_applies: usize,
    /// (first revision applied, revision GetNode showed applied)
    first_revisions: (u64, u64),
    first_breakdown: Vec<(String, usize, f64)>,
    agent_cpu_first_s: f64,
    agent_hwm_first: Option<u64>,
    agent_idle: Option<u64>,
    wg_idle: Option<u64>,
    wg_cpu_idle_s: f64,
    wg_rss_after_one: Option<u64>,
    wg_rss_after_wide: Option<u64>,
    /// The all-peer change as one UAPI transaction, ms.
    uapi_one_ms: f64,
    /// The same as one UAPI connection per peer, ms.
    uapi_each_ms: f64,
    /// Median time of `wg show IF dump` (a full UAPI read of the device).
    wg_dump_ms: f64,
    one: Vec<Change>,
    wide: Vec<Change>,
    wide_breakdown: Vec<(String, usize, f64)>,
    agent_cpu_wide_s: f64,
    agent_hwm_end: Option<u64>,
    agent_rss_end: Option<u64>,
    wg_rss_end: Option<u64>,
    warnings: Vec<String>,
}

async fn bench(args: &Args, env: &mut Env, report: &mut Report) -> Res<()> {
    let here = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .parent()
        .ok_or("no exe dir")?
        .to_path_buf();
    let server_bin = args
        .server_bin
        .clone()
        .unwrap_or_else(|| here.join("meshplane"));
    let meshctl_bin = args
        .meshctl_bin
        .clone()
        .unwrap_or_else(|| here.join("meshctl"));
    for b in [&server_bin, &meshctl_bin] {
        if !b.exists() {
            return Err(format!(
                "{} missing: cargo build --release -p meshplane-server -p meshctl --bin meshplane --bin meshctl",
                b.display()
            ));
        }
    }
    let userspace_prog = args.userspace.split_whitespace().next().unwrap_or_default();
    if run_cmd(&["sh", "-c", &format!("command -v {userspace_prog}")]).is_err() {
        return Err(format!(
            "{userspace_prog} not found: apt-get install wireguard-go wireguard-tools"
        ));
    }
    report.peers = args.peers;

    // The server, on loopback inside the namespace.
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&server_bin);
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .env("MESHPLANE_DATA_DIR", dir.path())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut server = cmd
        .spawn()
        .map_err(|e| format!("starting the server: {e}"))?;
    let out = server.stdout.take().expect("piped");
    env.server = Some(server);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut line = String::new();
        let mut sent = false;
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            if !sent
                && let Some(a) = line
                    .trim()
                    .strip_prefix("meshplane ready: serving gRPC on ")
            {
                let _ = tx.send(a.to_owned());
                sent = true;
            }
            line.clear();
        }
    });
    let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|_| "the server was not ready within 30 s".to_string())?;
    let url = format!("http://{addr}");
    let token = std::fs::read_to_string(dir.path().join("admin.token"))
        .map_err(|e| format!("admin.token: {e}"))?
        .trim()
        .to_owned();
    let client = Client::builder(url.clone())
        .token(token)
        .timeout(Duration::from_secs(60))
        .connect()
        .await
        .map_err(|e| format!("connecting to {url}: {e}"))?;
    println!(
        "# agent_bench: {} peers, namespace {}, interface {}, server {url}",
        args.peers, env.ns, env.ifname
    );

    // Network, enrollment key, N fake nodes.
    client
        .networks()
        .create(pb::Network {
            name: NETWORK.into(),
            address_range: RANGE4.into(),
            address_range6: RANGE6.into(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("CreateNetwork: {e}"))?;
    let key = client
        .enrollment_keys()
        .create(pb::EnrollmentKey {
            networks: vec![NETWORK.into()],
            unlimited: true,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("CreateEnrollmentKey: {e}"))?
        .token;
    let t = Instant::now();
    let sem = Arc::new(Semaphore::new(16));
    let mut tasks = Vec::with_capacity(args.peers);
    for i in 0..args.peers {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let agent = client.agent();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let keys = KeyPair::generate();
            let r = agent
                .register(pb::RegisterRequest {
                    enrollment_key: key,
                    network: NETWORK.into(),
                    name: format!("peer{i}"),
                    public_key: keys.public_key().to_owned(),
                    endpoint: fake_endpoint(i, 51820),
                    listen_port: None,
                    os: "linux".into(),
                })
                .await;
            drop(permit);
            r.map(|r| r.node.id).map_err(|e| format!("Register: {e}"))
        }));
    }
    let mut fake = Vec::with_capacity(args.peers);
    for t in tasks {
        fake.push(t.await.map_err(|e| e.to_string())??);
    }
    report.register_s = t.elapsed().as_secs_f64();
    println!(
        "registered {} fake nodes in {:.1} s",
        args.peers, report.register_s
    );

    // The agent.
    let state = tempfile::tempdir().map_err(|e| e.to_string())?;
    let log = AgentLog::default();
    let started = Instant::now();
    let mut agent = Command::new(&meshctl_bin)
        .args(["--server", &url, "agent", "run"])
        .args(["--network", NETWORK, "--enrollment-key", &key])
        .args(["--name", "agent", "--interface", &env.ifname])
        .args(["--endpoint", "198.51.100.1:51820"])
        .arg("--state-dir")
        .arg(state.path())
        .args(["--userspace", &args.userspace])
        .env("MESHCTL_LOG", "info,defguard_wireguard_rs=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the agent: {e}"))?;
    log.follow(&mut agent, args.agent_log.clone());
    let agent_pid = agent.id();
    env.agent = Some(agent);
    let agent_child = env.agent.as_mut().expect("just set");
    let reg = wait_log(&log, agent_child, " registered ", Duration::from_secs(60)).await?;
    let agent_id = field(&reg, "node")
        .ok_or_else(|| format!("no node id in {reg:?}"))?
        .to_owned();
    let limit = Duration::from_secs(120 + args.peers as u64 / 10);
    let first = tokio::select! {
        r = wait_applied(&client, &agent_id, 0, limit) => r?,
        r = wait_log(&log, agent_child, "\u{0}never", limit) => return Err(r.unwrap_err()),
    };
    let done = Instant::now();
    report.first_total_ms = done.duration_since(started).as_secs_f64() * 1000.0;
    report.agent_cpu_first_s = cpu_s(agent_pid);
    report.agent_hwm_first = proc_status_kib(agent_pid, "VmHWM:");
    let lines = log.since(0);
    let applies = applied_lines(&lines);
    report.first_applies = applies.len();
    // The first config can be followed by a revision that changes nothing
    // on the host (e.g. rendered again for the interface the agent
    // reported): the agent logs no apply for it.
    report.first_revisions = (
        applies.first().map_or(0, |a| a.revision),
        first.applied_revision,
    );
    if let Some(a) = applies
        .iter()
        .rev()
        .find(|a| a.revision <= first.applied_revision)
    {
        report.first_agent_ms = a.elapsed_ms;
        report.first_steps = a.steps;
    }
    let mark = |what: &str| {
        lines
            .iter()
            .find(|(_, l)| l.contains(what))
            .map(|(at, _)| at.saturating_duration_since(started).as_secs_f64() * 1000.0)
    };
    for (name, what) in [
        ("registered", " registered "),
        ("agent started (first host report sent)", " agent started "),
        ("first step", " applying "),
        ("applied (logged)", " applied "),
    ] {
        if let Some(ms) = mark(what) {
            report.first_phases.push((name.into(), ms));
        }
    }
    report
        .first_phases
        .push(("GetNode shows it applied".into(), report.first_total_ms));
    let first_end = lines
        .iter()
        .position(|(_, l)| l.contains(" applied "))
        .map_or(lines.len(), |i| i + 1);
    report.first_breakdown = step_breakdown(&lines[..first_end]);
    report.warnings.extend(log.errors(0));
    println!(
        "first apply: {:.0} ms from start to applied (revision {}), agent elapsed_ms {}",
        report.first_total_ms, first.applied_revision, report.first_agent_ms
    );

    // Idle.
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let wg_pid = wireguard_go_pid(&env.ifname);
    report.agent_idle = proc_status_kib(agent_pid, "VmRSS:");
    report.wg_idle = wg_pid.and_then(|p| proc_status_kib(p, "VmRSS:"));
    report.wg_cpu_idle_s = wg_pid.map_or(f64::NAN, cpu_s);
    let check = client
        .nodes()
        .config(&agent_id)
        .await
        .map_err(|e| format!("GetNodeConfig: {e}"))?;
    if check.peers.len() != args.peers {
        report.warnings.push(format!(
            "the agent's config has {} peers, not {}",
            check.peers.len(),
            args.peers
        ));
    }
    // What one full read of the device costs (the agent reads it through
    // the same UAPI socket before planning each apply).
    let mut reads = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        if run_cmd(&["wg", "show", &env.ifname, "dump"]).is_ok() {
            reads.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    report.wg_dump_ms = percentile(&sorted(reads), 0.5);
    if let Ok(dump) = run_cmd(&["wg", "show", &env.ifname, "peers"]) {
        let n = dump.lines().count();
        if n != args.peers {
            report.warnings.push(format!(
                "`wg show peers` lists {n} peers, not {}",
                args.peers
            ));
        }
    }

    // One-peer changes: a fake node's endpoint.
    for k in 0..args.changes {
        let node = fake[k % fake.len().max(1)].clone();
        let i = k % args.peers.max(1);
        let endpoint = fake_endpoint(i, 52000 + (k % 10000) as u16);
        let c = measure_change(
            &client,
            &log,
            &agent_id,
            Duration::from_secs(60),
            || async {
                client
                    .nodes()
                    .update(
                        pb::Node {
                            id: node,
                            endpoint,
                            ..Default::default()
                        },
                        &["endpoint"],
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("UpdateNode: {e}"))
            },
        )
        .await?;
        report.one.push(c);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    report.wg_rss_after_one = wg_pid.and_then(|p| proc_status_kib(p, "VmRSS:"));

    // Network-wide changes: every peer's keepalive.
    let cpu_before = cpu_s(agent_pid);
    let wide_from = log.len();
    for w in 0..args.wide {
        let keepalive = if w % 2 == 0 { 25 } else { 20 };
        let c = measure_change(
            &client,
            &log,
            &agent_id,
            Duration::from_secs(300 + args.peers as u64 / 10),
            || async {
                client
                    .networks()
                    .update(
                        pb::Network {
                            name: NETWORK.into(),
                            default_keepalive: keepalive,
                            ..Default::default()
                        },
                        &["default_keepalive"],
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("UpdateNetwork: {e}"))
            },
        )
        .await?;
        report.wide.push(c);
    }
    report.agent_cpu_wide_s = cpu_s(agent_pid) - cpu_before;
    let wide_lines = log.since(wide_from);
    let wide_end = wide_lines
        .iter()
        .position(|(_, l)| l.contains(" applied "))
        .map_or(wide_lines.len(), |i| i + 1);
    report.wide_breakdown = step_breakdown(&wide_lines[..wide_end]);
    report.wg_rss_after_wide = wg_pid.and_then(|p| proc_status_kib(p, "VmRSS:"));

    // Baseline: the same all-peer change written straight to the UAPI
    // socket (each peer's current keepalive again, so the agent sees no
    // drift): in one transaction, and in one connection per peer.
    let cfg = client
        .nodes()
        .config(&agent_id)
        .await
        .map_err(|e| format!("GetNodeConfig: {e}"))?;
    let entries: Vec<String> = cfg
        .peers
        .iter()
        .map(|p| {
            Ok(format!(
                "public_key={}\npersistent_keepalive_interval={}\n",
                b64_to_hex(&p.public_key)?,
                p.persistent_keepalive
            ))
        })
        .collect::<Res<_>>()?;
    let sock = PathBuf::from(format!("/var/run/wireguard/{}.sock", env.ifname));
    let (one, each) = tokio::task::spawn_blocking(move || -> Res<(f64, f64)> {
        let t = Instant::now();
        uapi_set(&sock, &entries.concat())?;
        let one = t.elapsed().as_secs_f64() * 1000.0;
        let t = Instant::now();
        for e in &entries {
            uapi_set(&sock, e)?;
        }
        Ok((one, t.elapsed().as_secs_f64() * 1000.0))
    })
    .await
    .map_err(|e| e.to_string())??;
    report.uapi_one_ms = one;
    report.uapi_each_ms = each;
    report.agent_hwm_end = proc_status_kib(agent_pid, "VmHWM:");
    report.agent_rss_end = proc_status_kib(agent_pid, "VmRSS:");
    report.wg_rss_end = wg_pid.and_then(|p| proc_status_kib(p, "VmRSS:"));
    report.warnings.extend(log.errors(first_end.min(log.len())));
    report.warnings.sort();
    report.warnings.dedup();
    Ok(())
}

fn b64_to_hex(key: &str) -> Res<String> {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|e| format!("key {key:?}: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// One UAPI `set` transaction on `sock`; fails unless it answers errno=0.
fn uapi_set(sock: &std::path::Path, body: &str) -> Res<()> {
    use std::io::Read;
    let mut s = std::os::unix::net::UnixStream::connect(sock)
        .map_err(|e| format!("{}: {e}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("set=1\n{body}\n").as_bytes())
        .map_err(|e| format!("UAPI write: {e}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(b"\n\n") {
        let n = s.read(&mut buf).map_err(|e| format!("UAPI read: {e}"))?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    if text.trim() != "errno=0" {
        return Err(format!("UAPI set answered {:?}", text.trim()));
    }
    Ok(())
}

/// 10.151.x.y:port, outside the overlay and routed nowhere.
fn fake_endpoint(i: usize, port: u16) -> String {
    format!("10.151.{}.{}:{port}", i / 250, i % 250 + 1)
}

fn stats(v: &[Change], f: impl Fn(&Change) -> f64) -> (f64, f64, f64) {
    let s = sorted(v.iter().map(f).filter(|x| !x.is_nan()).collect());
    (
        percentile(&s, 0.5),
        percentile(&s, 0.99),
        s.last().copied().unwrap_or(f64::NAN),
    )
}

fn print(r: &Report, args: &Args) {
    println!();
    println!("== agent_bench summary: {} peers ==", r.peers);
    println!("registering {} fake nodes: {:.1} s", r.peers, r.register_s);
    println!(
        "first apply: {:.0} ms from starting the agent to GetNode applied_revision == config_revision",
        r.first_total_ms
    );
    for (name, ms) in &r.first_phases {
        println!("  {ms:>8.0} ms  {name}");
    }
    println!(
        "  agent's logged apply: elapsed_ms={} steps={} (applies logged until then: {}; first applied revision {}, GetNode showed {})",
        r.first_agent_ms, r.first_steps, r.first_applies, r.first_revisions.0, r.first_revisions.1
    );
    println!("  steps of the first apply (from the agent's log):");
    for (k, n, ms) in &r.first_breakdown {
        println!("    {ms:>8.1} ms  {n:>5} x {k}");
    }
    println!("  agent CPU until then: {:.2} s", r.agent_cpu_first_s);
    println!(
        "memory: agent peak RSS (VmHWM) {} after the first apply, {} at the end; idle RSS {} ({} s after), {} at the end",
        mib(r.agent_hwm_first),
        mib(r.agent_hwm_end),
        mib(r.agent_idle),
        args.settle,
        mib(r.agent_rss_end)
    );
    println!(
        "        wireguard-go RSS {} idle, {} after the one-peer changes, {} after the wide changes, {} at the end (CPU {:.2} s when idle)",
        mib(r.wg_idle),
        mib(r.wg_rss_after_one),
        mib(r.wg_rss_after_wide),
        mib(r.wg_rss_end),
        r.wg_cpu_idle_s
    );
    println!(
        "`wg show {{if}} dump` (one full UAPI read of the device): median {:.1} ms",
        r.wg_dump_ms
    );
    let (p50, p99, max) = stats(&r.one, |c| c.ack_to_applied);
    let (a50, a99, amax) = stats(&r.one, |c| c.agent_ms);
    println!(
        "one-peer changes ({}): ack -> applied p50 {p50:.1} / p99 {p99:.1} / max {max:.1} ms; agent elapsed_ms p50 {a50:.0} / p99 {a99:.0} / max {amax:.0}; steps {:?}",
        r.one.len(),
        {
            let mut s: Vec<u64> = r.one.iter().map(|c| c.steps).collect();
            s.sort();
            s.dedup();
            s
        }
    );
    let (w50, _, _) = stats(&r.one, |c| c.write_ms);
    let (f50, f99, _) = stats(&r.one, |c| c.to_first_step);
    let (s50, _, _) = stats(&r.one, |c| c.to_first_step_from_send);
    let (l50, l99, _) = stats(&r.one, |c| c.logged_to_seen);
    println!(
        "  split (p50 / p99): write sent -> ack {w50:.1} ms; ack -> agent's first step {f50:.1} / {f99:.1} ms (from send {s50:.1}); agent's steps {a50:.0} / {a99:.0} ms; agent logs applied -> GetNode shows it {l50:.1} / {l99:.1} ms"
    );
    for (i, c) in r.wide.iter().enumerate() {
        println!(
            "{}-peer change #{}: ack -> applied {:.0} ms; agent elapsed_ms {:.0}, steps {}; write {:.0} ms, ack -> first step {:.0} ms, applied logged -> GetNode {:.0} ms",
            r.peers,
            i + 1,
            c.ack_to_applied,
            c.agent_ms,
            c.steps,
            c.write_ms,
            c.to_first_step,
            c.logged_to_seen
        );
    }
    println!(
        "  agent CPU for the wide changes: {:.2} s",
        r.agent_cpu_wide_s
    );
    println!(
        "  baseline, the same change written to the UAPI socket directly: {:.0} ms as one transaction, {:.0} ms as one connection per peer",
        r.uapi_one_ms, r.uapi_each_ms
    );
    println!("  steps of the first wide change (from the agent's log):");
    for (k, n, ms) in &r.wide_breakdown {
        println!("    {ms:>8.1} ms  {n:>5} x {k}");
    }
    if !r.warnings.is_empty() {
        println!("agent warnings/errors ({}):", r.warnings.len());
        for w in r.warnings.iter().take(20) {
            println!("  {w}");
        }
    }
    if args.markdown {
        let (p50, p99, _) = stats(&r.one, |c| c.ack_to_applied);
        let (a50, a99, _) = stats(&r.one, |c| c.agent_ms);
        let (w50, _, wmax) = stats(&r.wide, |c| c.ack_to_applied);
        let (wa50, _, _) = stats(&r.wide, |c| c.agent_ms);
        println!();
        println!(
            "| peers | first apply: start → applied (agent's elapsed_ms) | agent peak RSS | agent idle RSS | wireguard-go RSS | one-peer change p50 / p99 (agent's p50 / p99) | all-peer change median / max (agent's median) |"
        );
        println!("|---|---|---|---|---|---|---|");
        println!(
            "| {} | {:.0} ms ({} ms) | {} | {} | {} | {:.1} / {:.1} ms ({:.0} / {:.0} ms) | {:.0} / {:.0} ms ({:.0} ms) |",
            thousands(r.peers),
            r.first_total_ms,
            r.first_agent_ms,
            mib(r.agent_hwm_end.or(r.agent_hwm_first)),
            mib(r.agent_idle),
            mib(r.wg_idle),
            p50,
            p99,
            a50,
            a99,
            w50,
            wmax,
            wa50
        );
    }
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn main() -> ExitCode {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("agent_bench needs root (network namespaces, a WireGuard device)");
        return ExitCode::from(2);
    }
    let tag = std::process::id();
    let ns = format!("mp-agentbench-{tag}");
    // Interface names are global to /var/run/wireguard: unique per run.
    let ifname = format!("mpb{}", tag % 1_000_000_000);
    // Before any thread exists: the whole process joins the namespace.
    let mut env = match Env::enter(ns, ifname) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("agent_bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agent_bench: tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut report = Report::default();
    let result = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        tokio::select! {
            r = bench(&args, &mut env, &mut report) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted (SIGINT)".to_string()),
            _ = term.recv() => Err("terminated (SIGTERM)".to_string()),
        }
    });
    let code = match result {
        Ok(()) => {
            print(&report, &args);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("agent_bench: {e}");
            ExitCode::FAILURE
        }
    };
    drop(env);
    rt.shutdown_timeout(Duration::from_secs(2));
    code
}
