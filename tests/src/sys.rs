//! What the benchmarks read about processes and sockets: CPU seconds from
//! `/proc`, a PostgreSQL cluster's processes, and TCP byte counters per
//! process from `ss` (iproute2).

use std::{collections::HashMap, path::Path, process::Command};

/// CPU seconds a process has used: the time its live threads ran
/// (`/proc/PID/task/*/schedstat`, nanoseconds), else user + system time
/// from `/proc/PID/stat` (10 ms ticks); 0 when it is gone. Threads that
/// exited no longer count: measure long-lived processes.
pub fn cpu_secs(pid: u32) -> f64 {
    let mut ns = 0u64;
    let mut found = false;
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Some(v) = std::fs::read_to_string(e.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        {
            ns += v;
            found = true;
        }
    }
    if found {
        return ns as f64 / 1e9;
    }
    let Some(f) = stat_fields(pid) else {
        return 0.0;
    };
    // utime and stime: fields 14 and 15 of /proc/PID/stat, counted from
    // the state (field 3) here.
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

/// The fields of /proc/PID/stat after the command name.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The parent of a process.
pub fn ppid(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// The postmaster's pid of the cluster whose data directory is `data_dir`.
pub fn postmaster_pid(data_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// CPU seconds of a PostgreSQL cluster: its postmaster and the children
/// alive now (a backend that exited no longer counts, so measure over
/// connections that stay open).
pub fn pg_cpu_secs(data_dir: &Path) -> f64 {
    let Some(pm) = postmaster_pid(data_dir) else {
        return 0.0;
    };
    let mut total = cpu_secs(pm);
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>()
            && ppid(pid) == Some(pm)
        {
            total += cpu_secs(pid);
        }
    }
    total
}

/// CPU seconds this process has used.
pub fn self_cpu_secs() -> f64 {
    // SAFETY: getrusage fills the zeroed struct.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Bytes a process's TCP sockets sent (acknowledged by the peer) and
/// received.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TcpBytes {
    /// `bytes_acked`: sent and acknowledged.
    pub sent: u64,
    /// `bytes_received`.
    pub received: u64,
    /// Sockets counted.
    pub sockets: u64,
}

impl std::ops::Add for TcpBytes {
    type Output = TcpBytes;
    fn add(self, o: TcpBytes) -> TcpBytes {
        TcpBytes {
            sent: self.sent + o.sent,
            received: self.received + o.received,
            sockets: self.sockets + o.sockets,
        }
    }
}

impl std::ops::Sub for TcpBytes {
    type Output = TcpBytes;
    fn sub(self, o: TcpBytes) -> TcpBytes {
        TcpBytes {
            sent: self.sent.saturating_sub(o.sent),
            received: self.received.saturating_sub(o.received),
            sockets: self.sockets,
        }
    }
}

/// The bytes of the established TCP sockets matching the `ss` filter
/// `filter` (e.g. `dport = :5432` or `sport = :50051`): per process (pid)
/// with `pids` (slower: `ss -p` reads every process's descriptors; needs
/// root to see other users' processes), else all under pid 0. Empty when
/// `ss` fails. A socket closed in between is no longer counted.
pub fn tcp_bytes(filter: &str, pids: bool) -> HashMap<u32, TcpBytes> {
    let out = Command::new("ss")
        .arg(if pids { "-tinpH" } else { "-tinH" })
        .args(["state", "established"])
        .arg(filter)
        .output();
    let mut by_pid: HashMap<u32, TcpBytes> = HashMap::new();
    let Ok(out) = out else { return by_pid };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut pid = None;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            // A socket line: `... users:(("meshplane",pid=123,fd=9))`.
            pid = if pids {
                line.split("pid=")
                    .nth(1)
                    .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|p| p.parse().ok())
            } else {
                Some(0)
            };
            // Some versions print the info on the same line.
            if !line.contains("bytes_") {
                continue;
            }
        }
        let Some(p) = pid else { continue };
        let e = by_pid.entry(p).or_default();
        e.sent += field(line, "bytes_acked:");
        e.received += field(line, "bytes_received:");
        e.sockets += 1;
    }
    by_pid
}

/// The bytes of the established TCP sockets matching `filter`, by local
/// port (cheap: no `-p`).
pub fn tcp_bytes_by_port(filter: &str) -> HashMap<u16, TcpBytes> {
    let out = Command::new("ss")
        .args(["-tinH", "state", "established"])
        .arg(filter)
        .output();
    let mut by_port: HashMap<u16, TcpBytes> = HashMap::new();
    let Ok(out) = out else { return by_port };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut port = None;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            // `recv-q send-q local:port peer:port` (state left out).
            port = line
                .split_whitespace()
                .nth(2)
                .and_then(|l| l.rsplit(':').next())
                .and_then(|p| p.parse().ok());
            if !line.contains("bytes_") {
                continue;
            }
        }
        let Some(p) = port else { continue };
        let e = by_port.entry(p).or_default();
        e.sent += field(line, "bytes_acked:");
        e.received += field(line, "bytes_received:");
        e.sockets += 1;
    }
    by_port
}

/// Which process owns each local port of the established TCP sockets
/// matching `filter` (`ss -p`: slow with many sockets; needs root for other
/// users' processes).
pub fn tcp_port_owners(filter: &str) -> HashMap<u16, u32> {
    let out = Command::new("ss")
        .args(["-tnpH", "state", "established"])
        .arg(filter)
        .output();
    let mut owners = HashMap::new();
    let Ok(out) = out else { return owners };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let port = line
            .split_whitespace()
            .nth(2)
            .and_then(|l| l.rsplit(':').next())
            .and_then(|p| p.parse::<u16>().ok());
        let pid = line
            .split("pid=")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse::<u32>().ok());
        if let (Some(port), Some(pid)) = (port, pid) {
            owners.insert(port, pid);
        }
    }
    owners
}

fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Statement statistics of pg_stat_statements, by query id: (query text,
/// calls, rows, execution ms, WAL bytes).
pub type Statements = HashMap<i64, (String, i64, i64, f64, i64)>;

/// pg_stat_statements of the connection's database (leaving out queries
/// of pg_stat_statements itself), by query id.
pub async fn statements(conn: &mut sqlx::PgConnection) -> Statements {
    let rows: Vec<(i64, String, i64, i64, f64, i64)> = sqlx::query_as(
        "SELECT queryid, query, calls, rows, total_exec_time + total_plan_time, wal_bytes::bigint \
         FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database \
         WHERE datname = current_database()) AND query NOT LIKE '%pg_stat_statements%'",
    )
    .fetch_all(conn)
    .await
    .expect("read pg_stat_statements");
    rows.into_iter()
        .map(|(id, q, c, r, t, w)| (id, (q, c, r, t, w)))
        .collect()
}

/// Per query: calls, rows, ms and WAL bytes between two snapshots.
pub fn statement_delta(a: &Statements, b: &Statements) -> Vec<(String, i64, i64, f64, i64)> {
    let mut out: Vec<_> = b
        .iter()
        .filter_map(|(id, (q, c, r, t, w))| {
            let (c0, r0, t0, w0) = a
                .get(id)
                .map(|x| (x.1, x.2, x.3, x.4))
                .unwrap_or((0, 0, 0.0, 0));
            (c > &c0).then(|| (q.clone(), c - c0, r - r0, t - t0, w - w0))
        })
        .collect();
    out.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
    out
}

/// A query on one line, cut at 90 characters.
pub fn short(query: &str) -> String {
    let q: String = query.split_whitespace().collect::<Vec<_>>().join(" ");
    if q.len() > 90 {
        format!(
            "{}…",
            &q[..q.char_indices().nth(90).map(|(i, _)| i).unwrap_or(q.len())]
        )
    } else {
        q
    }
}
