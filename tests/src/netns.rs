//! The dataplane test's world: network namespaces joined by veth pairs,
//! processes run inside them and ended by pid, WireGuard devices made by
//! `wireguard-go`, and the echo service that tells which source address a
//! packet arrived with.
//!
//! ```text
//!             underlay 10.200.0.0/24: bridge br0 in `hub` (.254: the test's own gRPC client)
//!    +-------------+-------------+--------------+--------------+
//!    |             |             |              |              |
//!  srv .1        gw .2        client .3      relay .4       phone .5
//!  meshplane     agent        agent          agent          wireguard-go + wg setconf
//!  serve         |    \                      (ingress)      from GetExtClientConfig
//!                |     \ wan0 192.0.2.1/30    | wan0         (no agent)
//!   lan0         |      \                     | 192.0.2.5/30
//!   10.10.10.1/24|       +---- internet ------+
//!   fd10:10::1/64|             198.51.100.7 (on lo), echo :7007
//!                |
//!               lan  10.10.10.2/24, fd10:10::2/64, echo :7007
//!
//!  overlay (network "e2e"): 10.99.0.0/24, fd00:99::/64; WireGuard port 51820
//! ```
//!
//! Every address exists only inside the test's namespaces; nothing is routed
//! or translated onto the host's own network. The only default routes are
//! `gw`'s and `relay`'s, which point at the `internet` namespace, and the
//! full-tunnel ones the scenarios make (client's through gw or relay, the
//! phone's through relay), which end there too.
//!
//! `Topology::build_with(ServerPlacement::BehindRouter)` moves the server
//! off the underlay, onto its own subnet behind a `router` namespace:
//!
//! ```text
//!   underlay 10.200.0.0/24 ... router .6 --- srv0 10.210.0.254/24 --- srv 10.210.0.1/24
//! ```
//!
//! There hub, gw and relay reach 10.210.0.0/24 by a route via the router,
//! and client only by a default route via it (no more specific route: a
//! full tunnel on client needs the agent's bypass route to the server).
//! The router forwards between those two subnets and has no other route;
//! from gw's link it forwards only gw's own address (so a packet of client's
//! that went through the tunnel to gw does not reach the server).

use std::{
    fs::File,
    io::Write,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// The environment variable `wireguard-go` needs before it runs at all.
pub const WG_USERSPACE_ENV: (&str, &str) = ("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1");

/// Port of the echo service.
pub const ECHO_PORT: u16 = 7007;
/// The server's underlay address.
pub const SERVER_IP: &str = "10.200.0.1";
/// The underlay's range.
pub const UNDERLAY: &str = "10.200.0.0/24";
/// The server's address when it sits behind `router`
/// (`ServerPlacement::BehindRouter`).
pub const ROUTED_SERVER_IP: &str = "10.210.0.1";
/// The server's subnet behind `router`.
pub const SERVER_NET: &str = "10.210.0.0/24";
/// router's underlay address.
pub const ROUTER_IP: &str = "10.200.0.6";
/// router's address on the server's subnet.
pub const ROUTER_SRV_IP: &str = "10.210.0.254";
/// The port the server listens on.
pub const SERVER_PORT: u16 = 50051;
/// gw's underlay address.
pub const GW_IP: &str = "10.200.0.2";
/// client's underlay address.
pub const CLIENT_IP: &str = "10.200.0.3";
/// relay's underlay address.
pub const RELAY_IP: &str = "10.200.0.4";
/// phone's underlay address.
pub const PHONE_IP: &str = "10.200.0.5";
/// The hub's own address on the underlay bridge (the test's control
/// thread talks to the server from there).
pub const HUB_IP: &str = "10.200.0.254";
/// gw's address on the LAN.
pub const GW_LAN4: &str = "10.10.10.1";
/// gw's IPv6 address on the LAN.
pub const GW_LAN6: &str = "fd10:10::1";
/// relay's address on the LAN, once linked to it
/// ([`Topology::link_relay_to_lan`]).
pub const RELAY_LAN4: &str = "10.10.10.3";
/// relay's IPv6 address on the LAN, likewise.
pub const RELAY_LAN6: &str = "fd10:10::3";
/// relay's LAN interface, likewise.
pub const RELAY_LAN_IF: &str = "lan1";
/// The LAN host.
pub const LAN4: &str = "10.10.10.2";
/// The LAN host's IPv6 address.
pub const LAN6: &str = "fd10:10::2";
/// The LAN's IPv4 range.
pub const LAN_RANGE4: &str = "10.10.10.0/24";
/// The LAN's IPv6 range.
pub const LAN_RANGE6: &str = "fd10:10::/64";
/// gw's address on its link to `internet`.
pub const GW_WAN: &str = "192.0.2.1";
/// relay's address on its link to `internet`.
pub const RELAY_WAN: &str = "192.0.2.5";
/// The internet host.
pub const INTERNET: &str = "198.51.100.7";
/// gw's LAN interface.
pub const LAN_IF: &str = "lan0";
/// gw's and relay's interface towards `internet`.
pub const WAN_IF: &str = "wan0";

/// Panics with what to install when a tool the dataplane test runs is
/// missing.
pub fn require_tools() {
    let tools = [
        ("ip", "iproute2"),
        ("iptables-restore", "iptables"),
        ("ip6tables-restore", "iptables"),
        ("iptables-save", "iptables"),
        ("wireguard-go", "wireguard-go"),
        ("wg", "wireguard-tools"),
        ("ping", "iputils-ping"),
    ];
    let missing: Vec<String> = tools
        .iter()
        .filter(|(tool, _)| !have(tool))
        .map(|(tool, pkg)| format!("{tool} (Debian package {pkg})"))
        .collect();
    assert!(
        missing.is_empty(),
        "the dataplane test needs {}: install them with `apt-get install -y iproute2 iptables \
         wireguard-tools wireguard-go iputils-ping` (tests/run does this), or set \
         MESHPLANE_SKIP_PRIVILEGED_TESTS=1 to skip on purpose",
        missing.join(", ")
    );
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Runs a command; returns (success, stdout+stderr).
pub fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Runs a command and panics with its output when it fails.
#[track_caller]
pub fn must(args: &[&str]) -> String {
    let (ok, out) = run(args);
    assert!(ok, "{} failed:\n{out}", args.join(" "));
    out
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique suffix for this process: `<n>-<pid>`.
pub fn unique() -> String {
    format!(
        "{}-{}",
        SEQ.fetch_add(1, Ordering::Relaxed),
        std::process::id()
    )
}

/// A network namespace. Dropping it ends every process inside it (by pid:
/// SIGTERM, then SIGKILL) and deletes it.
pub struct Ns {
    /// Its name (`mpe-<role>-<n>-<pid>`).
    pub name: String,
    deleted: bool,
}

impl Ns {
    /// Creates a namespace for `role` with loopback up.
    pub fn new(role: &str) -> Self {
        let name = format!("mpe-{role}-{}", unique());
        let (ok, out) = run(&["ip", "netns", "add", &name]);
        assert!(
            ok,
            "cannot create network namespace {name} (needs root and CAP_SYS_ADMIN): {out}"
        );
        let ns = Ns {
            name,
            deleted: false,
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ARGS`, panicking on failure.
    #[track_caller]
    pub fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        must(&v)
    }

    /// Runs `args` inside the namespace; (success, stdout+stderr).
    pub fn run(&self, args: &[&str]) -> (bool, String) {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        run(&v)
    }

    /// Runs `args` inside the namespace, panicking on failure.
    #[track_caller]
    pub fn must(&self, args: &[&str]) -> String {
        let (ok, out) = self.run(args);
        assert!(ok, "in {}: {} failed:\n{out}", self.name, args.join(" "));
        out
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key_value: &str) {
        self.must(&["sysctl", "-q", "-w", key_value]);
    }

    /// Starts `args` inside the namespace as a long-lived process whose
    /// stdout and stderr go to `log`.
    pub fn spawn(&self, label: &str, args: &[&str], env: &[(&str, &str)], log: &Path) -> Proc {
        let file = File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {args:?} in {}: {e}", self.name));
        Proc {
            label: label.to_owned(),
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    /// The pids of the processes inside the namespace (this test process
    /// excluded, in case a thread of it joined the namespace).
    pub fn pids(&self) -> Vec<i32> {
        let (_, out) = run(&["ip", "netns", "pids", &self.name]);
        let me = std::process::id() as i32;
        out.split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|p| *p != me)
            .collect()
    }

    /// Ends every process inside the namespace: SIGTERM, then SIGKILL to
    /// whatever still runs after 2 s.
    pub fn kill_all(&self) {
        let pids = self.pids();
        for p in &pids {
            unsafe { libc::kill(*p, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && pids.iter().any(|p| alive(*p)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        for _ in 0..3 {
            let left = self.pids();
            if left.is_empty() {
                break;
            }
            for p in &left {
                unsafe { libc::kill(*p, libc::SIGKILL) };
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline && left.iter().any(|p| alive(*p)) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Ends its processes and deletes it (idempotent).
    pub fn delete(&mut self) {
        if self.deleted {
            return;
        }
        self.kill_all();
        let _ = run(&["ip", "netns", "del", &self.name]);
        self.deleted = true;
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Whether a process runs (a zombie counts as ended).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
    }
}

/// Pids of running processes whose command line mentions `needle`.
pub fn pids_mentioning(needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me || !alive(pid) {
            continue;
        }
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.split_whitespace().any(|w| w == needle) {
                found.push(pid);
            }
        }
    }
    found
}

/// A process the test started; dropping it ends it (SIGTERM, then SIGKILL
/// after 2 s) and reaps it.
pub struct Proc {
    /// What it is, for messages.
    pub label: String,
    child: Option<Child>,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

impl Proc {
    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Sends `sig` (e.g. `libc::SIGTERM`).
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Its exit status, if it has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_status() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What it wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `timeout` for `needle` in its output; panics with the
    /// output when it does not appear or the process exits first.
    pub fn wait_output(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.output().contains(needle) {
                return;
            }
            if let Some(st) = self.try_status() {
                panic!(
                    "{} exited ({st}) before printing {needle:?}:\n{}",
                    self.label,
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not print {needle:?} within {timeout:?}:\n{}",
                self.label,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ends it: SIGTERM, SIGKILL after `grace`; returns how it exited.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// The calling thread's network namespace is `ns` until this is dropped,
/// which moves the thread back. Sockets the thread (or a current-thread
/// tokio runtime on it) opens meanwhile live in `ns`.
pub struct InNetns {
    orig: File,
}

/// Moves the calling thread into `ns`.
pub fn enter(ns: &Ns) -> InNetns {
    let orig = File::open("/proc/thread-self/ns/net").expect("open own netns");
    let target = File::open(format!("/var/run/netns/{}", ns.name))
        .unwrap_or_else(|e| panic!("open netns {}: {e}", ns.name));
    let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns into {}: {}",
        ns.name,
        std::io::Error::last_os_error()
    );
    InNetns { orig }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        unsafe { libc::setns(self.orig.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// The test's namespaces. Dropping it ends every process in them and
/// deletes them (on success and on panic alike; on panic it first prints
/// the tail of every process's log).
pub struct Topology {
    /// Holds the bridge of the underlay.
    pub hub: Ns,
    /// Runs `meshplane serve`.
    pub srv: Ns,
    /// The LAN and internet gateway.
    pub gw: Ns,
    /// The LAN behind gw.
    pub lan: Ns,
    /// A node that reaches the LAN and the internet through gateways.
    pub client: Ns,
    /// The ingress gateway (and VPN exit).
    pub relay: Ns,
    /// The external client.
    pub phone: Ns,
    /// The internet host, behind gw and relay.
    pub internet: Ns,
    /// Between the underlay and the server's own subnet
    /// (`ServerPlacement::BehindRouter` only).
    pub router: Option<Ns>,
    /// The address the server listens on.
    pub server_ip: &'static str,
    /// WireGuard interface names, unique across the namespaces (the
    /// userspace devices' UAPI sockets share /var/run/wireguard/).
    pub wg_gw: String,
    /// client's WireGuard interface.
    pub wg_client: String,
    /// relay's WireGuard interface.
    pub wg_relay: String,
    /// phone's WireGuard interface.
    pub wg_phone: String,
    /// Logs, keys and state directories.
    pub dir: tempfile::TempDir,
    echoes: Vec<Proc>,
}

/// Where `Topology` puts the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ServerPlacement {
    /// On the underlay, at SERVER_IP: every node's connected /24.
    #[default]
    Underlay,
    /// At ROUTED_SERVER_IP, on its own subnet behind `router`; client
    /// reaches it only through its default route via `router`.
    BehindRouter,
}

impl Topology {
    /// Builds every namespace, link, address and route, and starts the echo
    /// services in `lan` and `internet`.
    pub fn build() -> Self {
        Self::build_with(ServerPlacement::Underlay)
    }

    /// `build`, with the server where `placement` says.
    pub fn build_with(placement: ServerPlacement) -> Self {
        require_tools();
        let routed = placement == ServerPlacement::BehindRouter;
        let pid = std::process::id();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        // At most 2+1+2+1+7 = 13 bytes.
        let wg = |role: char| format!("wg{role}{n}-{pid}");
        let mut t = Topology {
            hub: Ns::new("hub"),
            srv: Ns::new("srv"),
            gw: Ns::new("gw"),
            lan: Ns::new("lan"),
            client: Ns::new("client"),
            relay: Ns::new("relay"),
            phone: Ns::new("phone"),
            internet: Ns::new("internet"),
            router: routed.then(|| Ns::new("router")),
            server_ip: if routed { ROUTED_SERVER_IP } else { SERVER_IP },
            wg_gw: wg('g'),
            wg_client: wg('c'),
            wg_relay: wg('r'),
            wg_phone: wg('p'),
            dir: tempfile::Builder::new()
                .prefix("meshplane-dataplane-")
                .tempdir()
                .expect("tempdir"),
            echoes: Vec::new(),
        };
        for ns in t.all() {
            // Fast, quiet IPv6: no duplicate address detection delays.
            ns.sysctl("net.ipv6.conf.all.accept_dad=0");
            ns.sysctl("net.ipv6.conf.default.accept_dad=0");
        }

        // The underlay: a bridge in hub, one veth from each namespace.
        let hub = &t.hub;
        hub.ip(&["link", "add", "br0", "type", "bridge"]);
        hub.ip(&["addr", "add", &format!("{HUB_IP}/24"), "dev", "br0"]);
        hub.ip(&["link", "set", "br0", "up"]);
        let mut on_underlay = vec![
            (&t.gw, GW_IP),
            (&t.client, CLIENT_IP),
            (&t.relay, RELAY_IP),
            (&t.phone, PHONE_IP),
        ];
        match &t.router {
            None => on_underlay.insert(0, (&t.srv, SERVER_IP)),
            Some(router) => on_underlay.push((router, ROUTER_IP)),
        }
        for (ns, ip) in on_underlay {
            let port = format!("u-{}", ns.name.split('-').nth(1).unwrap_or("x"));
            veth(hub, &port, ns, "eth0");
            hub.ip(&["link", "set", &port, "master", "br0", "up"]);
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            ns.ip(&["link", "set", "eth0", "up"]);
        }

        // gw <-> lan, on a bridge in lan (a second gateway may join it:
        // `link_relay_to_lan`).
        veth(&t.gw, LAN_IF, &t.lan, "eth0");
        t.gw.ip(&["addr", "add", &format!("{GW_LAN4}/24"), "dev", LAN_IF]);
        t.gw.ip(&["addr", "add", &format!("{GW_LAN6}/64"), "dev", LAN_IF]);
        t.gw.ip(&["link", "set", LAN_IF, "up"]);
        t.lan.ip(&["link", "add", "br-lan", "type", "bridge"]);
        t.lan.ip(&["link", "set", "eth0", "master", "br-lan", "up"]);
        t.lan
            .ip(&["addr", "add", &format!("{LAN4}/24"), "dev", "br-lan"]);
        t.lan
            .ip(&["addr", "add", &format!("{LAN6}/64"), "dev", "br-lan"]);
        t.lan.ip(&["link", "set", "br-lan", "up"]);

        // gw and relay <-> internet, each on its own /30; their default
        // routes point at internet, which holds 198.51.100.7.
        for (ns, mine, theirs, port) in [
            (&t.gw, GW_WAN, "192.0.2.2", "gw0"),
            (&t.relay, RELAY_WAN, "192.0.2.6", "relay0"),
        ] {
            veth(ns, WAN_IF, &t.internet, port);
            ns.ip(&["addr", "add", &format!("{mine}/30"), "dev", WAN_IF]);
            ns.ip(&["link", "set", WAN_IF, "up"]);
            t.internet
                .ip(&["addr", "add", &format!("{theirs}/30"), "dev", port]);
            t.internet.ip(&["link", "set", port, "up"]);
            ns.ip(&["route", "add", "default", "via", theirs, "dev", WAN_IF]);
        }
        t.internet
            .ip(&["addr", "add", &format!("{INTERNET}/32"), "dev", "lo"]);

        // The server behind router: srv <-> router on the server's subnet;
        // hub, gw and relay route that subnet via router, client has only a
        // default route via router (which routes nowhere else).
        if let Some(router) = &t.router {
            veth(router, "srv0", &t.srv, "eth0");
            router.ip(&["addr", "add", &format!("{ROUTER_SRV_IP}/24"), "dev", "srv0"]);
            router.ip(&["link", "set", "srv0", "up"]);
            router.sysctl("net.ipv4.ip_forward=1");
            t.srv.ip(&[
                "addr",
                "add",
                &format!("{ROUTED_SERVER_IP}/24"),
                "dev",
                "eth0",
            ]);
            t.srv.ip(&["link", "set", "eth0", "up"]);
            t.srv.ip(&[
                "route",
                "add",
                UNDERLAY,
                "via",
                ROUTER_SRV_IP,
                "dev",
                "eth0",
            ]);
            t.hub
                .ip(&["route", "add", SERVER_NET, "via", ROUTER_IP, "dev", "br0"]);
            for ns in [&t.gw, &t.relay] {
                ns.ip(&["route", "add", SERVER_NET, "via", ROUTER_IP, "dev", "eth0"]);
            }
            t.client
                .ip(&["route", "add", "default", "via", ROUTER_IP, "dev", "eth0"]);
            // gw is no router towards the server: router drops what gw's
            // link sends from any address but gw's own, so a packet of
            // client's tunneled to gw and forwarded there never reaches the
            // server (client's control path works only by its own route).
            let gw_mac = t.gw.must(&["cat", "/sys/class/net/eth0/address"]);
            router.must(&[
                "iptables",
                "-A",
                "FORWARD",
                "-i",
                "eth0",
                "-m",
                "mac",
                "--mac-source",
                gw_mac.trim(),
                "!",
                "-s",
                GW_IP,
                "-j",
                "DROP",
            ]);
        }

        // The echo services.
        let echo = t.binary("echo");
        let echo = echo.to_str().expect("utf-8 path");
        let port = ECHO_PORT.to_string();
        for (ns, label, addrs) in [
            (&t.lan, "echo-lan", vec![LAN4, LAN6]),
            (&t.internet, "echo-internet", vec![INTERNET]),
        ] {
            let mut args = vec![echo, "serve", &port];
            args.extend(addrs);
            let log = t.dir.path().join(format!("{label}.log"));
            let mut p = ns.spawn(label, &args, &[], &log);
            p.wait_output("echo: serving", Duration::from_secs(10));
            t.echoes.push(p);
        }
        t
    }

    /// Links relay to the LAN too (a second gateway for it): its
    /// [`RELAY_LAN_IF`] at [`RELAY_LAN4`] and [`RELAY_LAN6`], on the LAN's
    /// bridge.
    pub fn link_relay_to_lan(&self) {
        veth(&self.relay, RELAY_LAN_IF, &self.lan, "eth1");
        self.lan
            .ip(&["link", "set", "eth1", "master", "br-lan", "up"]);
        self.relay.ip(&[
            "addr",
            "add",
            &format!("{RELAY_LAN4}/24"),
            "dev",
            RELAY_LAN_IF,
        ]);
        self.relay.ip(&[
            "addr",
            "add",
            &format!("{RELAY_LAN6}/64"),
            "dev",
            RELAY_LAN_IF,
        ]);
        self.relay.ip(&["link", "set", RELAY_LAN_IF, "up"]);
    }

    /// Every namespace.
    pub fn all(&self) -> Vec<&Ns> {
        let mut all = vec![
            &self.hub,
            &self.srv,
            &self.gw,
            &self.lan,
            &self.client,
            &self.relay,
            &self.phone,
            &self.internet,
        ];
        all.extend(self.router.as_ref());
        all
    }

    /// The namespaces' names.
    pub fn names(&self) -> Vec<String> {
        self.all().iter().map(|n| n.name.clone()).collect()
    }

    /// The WireGuard interface names.
    pub fn wg_names(&self) -> Vec<String> {
        vec![
            self.wg_gw.clone(),
            self.wg_client.clone(),
            self.wg_relay.clone(),
            self.wg_phone.clone(),
        ]
    }

    /// A path in the test's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A private copy of the built binary `name` (see `built_binary`),
    /// made on first use: every start of it in this test runs the same
    /// build even when the shared target directory is rebuilt meanwhile.
    /// `MESHPLANE_E2E_BIN_<NAME>` (e.g. `MESHPLANE_E2E_BIN_MESHCTL`) names
    /// another file to copy, for a target directory several checkouts
    /// build into.
    pub fn binary(&self, name: &str) -> PathBuf {
        let dir = self.path("bin");
        let copy = dir.join(name);
        if !copy.exists() {
            std::fs::create_dir_all(&dir).expect("bin dir");
            let tmp = dir.join(format!(".{name}.tmp"));
            let var = format!("MESHPLANE_E2E_BIN_{}", name.to_uppercase());
            let from = std::env::var_os(&var)
                .map(PathBuf::from)
                .unwrap_or_else(|| crate::built_binary(name));
            std::fs::copy(&from, &tmp).unwrap_or_else(|e| panic!("copying {name}: {e}"));
            std::fs::rename(&tmp, &copy).expect("rename binary");
        }
        copy
    }

    /// The pids of every process in the namespaces.
    pub fn pids(&self) -> Vec<i32> {
        self.all().iter().flat_map(|n| n.pids()).collect()
    }

    /// Starts `wireguard-go -f IFNAME` in `ns` (in the foreground, so the
    /// returned Proc is the device's process) and waits for the device.
    pub fn wireguard_go(&self, ns: &Ns, ifname: &str) -> Proc {
        let log = self.path(&format!("wireguard-go-{ifname}.log"));
        let mut p = ns.spawn(
            &format!("wireguard-go {ifname}"),
            &["wireguard-go", "-f", ifname],
            &[WG_USERSPACE_ENV],
            &log,
        );
        let sock = PathBuf::from(format!("/var/run/wireguard/{ifname}.sock"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(sock.exists() && ns.run(&["ip", "link", "show", ifname]).0) {
            if let Some(st) = p.try_status() {
                panic!("wireguard-go {ifname} exited ({st}):\n{}", p.output());
            }
            assert!(
                Instant::now() < deadline,
                "wireguard-go made no device {ifname} within 10 s:\n{}",
                p.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    /// Prints the last lines of every log in the test's directory.
    pub fn dump_logs(&self) {
        let Ok(dir) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        let mut logs: Vec<PathBuf> = dir
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        for l in logs {
            let text = std::fs::read_to_string(&l).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "---- {} (last {} lines) ----\n{}",
                l.display(),
                tail.len(),
                tail.join("\n")
            );
        }
    }

    /// Ends every process and deletes every namespace (idempotent).
    pub fn teardown(&mut self) {
        for mut p in self.echoes.drain(..) {
            p.stop(Duration::from_secs(2));
        }
        // End every process everywhere first, then delete the namespaces.
        for ns in self.all() {
            ns.kill_all();
        }
        for ns in [
            &mut self.hub,
            &mut self.srv,
            &mut self.gw,
            &mut self.lan,
            &mut self.client,
            &mut self.relay,
            &mut self.phone,
            &mut self.internet,
        ] {
            ns.delete();
        }
        if let Some(router) = &mut self.router {
            router.delete();
        }
        // wireguard-go's UAPI sockets, when a device was killed before it
        // could remove its own.
        for w in self.wg_names() {
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{w}.sock"));
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
            eprintln!(
                "(namespaces {:?} are being deleted)",
                self.all().iter().map(|n| &n.name).collect::<Vec<_>>()
            );
        }
        self.teardown();
    }
}

/// What a torn-down topology left behind: namespaces still listed,
/// processes still running, WireGuard devices' processes or sockets.
pub fn leftovers(names: &[String], pids: &[i32], wg_names: &[String]) -> Vec<String> {
    let mut left = Vec::new();
    let (_, listed) = run(&["ip", "netns", "list"]);
    for n in names {
        if listed.split_whitespace().any(|w| w == n) {
            left.push(format!("namespace {n}"));
        }
    }
    for p in pids {
        if alive(*p) {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            left.push(format!("process {p} ({cmd})"));
        }
    }
    for w in wg_names {
        for p in pids_mentioning(w) {
            left.push(format!("process {p} naming {w}"));
        }
        let sock = format!("/var/run/wireguard/{w}.sock");
        if Path::new(&sock).exists() {
            left.push(format!("socket {sock}"));
        }
    }
    left
}

/// Creates a veth pair: `a_name` in `a`, `b_name` in `b`.
pub fn veth(a: &Ns, a_name: &str, b: &Ns, b_name: &str) {
    a.ip(&[
        "link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", &b.name,
    ]);
}

/// The echo binary built with this crate.
pub fn echo_binary() -> PathBuf {
    crate::built_binary("echo")
}

/// `echo ask PROTO TARGET` from `ns`: the source address the echo service
/// saw, or why there was no answer.
pub fn ask(ns: &Ns, proto: &str, target: &str, timeout: Duration) -> Result<String, String> {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Each UDP ask from a port no earlier ask of this process used, below
    // the kernel's ephemeral range (where the probes' random ports are):
    // always a new flow for conntrack, so a NAT change is seen at once
    // instead of through an older flow's entry that a random port happened
    // to repeat.
    static NEXT_PORT: AtomicU16 = AtomicU16::new(20000);
    let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
    assert!(port < 32768, "out of UDP source ports for asks");
    let echo = echo_binary();
    let ms = timeout.as_millis().to_string();
    let (ok, out) = ns.run(&[
        echo.to_str().unwrap(),
        "ask",
        proto,
        target,
        &ms,
        &port.to_string(),
    ]);
    if ok {
        Ok(out.trim().to_owned())
    } else {
        Err(out.trim().to_owned())
    }
}

/// `IP:PORT` (or `[IP]:PORT`) of the echo service at `ip`.
pub fn echo_at(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{ECHO_PORT}")
    } else {
        format!("{ip}:{ECHO_PORT}")
    }
}

/// Asks until an answer comes (bounded by `within`, each try 300 ms);
/// returns the answer and how long it took, or every distinct failure.
pub fn first_answer(
    ns: &Ns,
    proto: &str,
    target: &str,
    within: Duration,
) -> Result<(String, Duration), String> {
    let start = Instant::now();
    let mut errors: Vec<String> = Vec::new();
    loop {
        match ask(ns, proto, target, Duration::from_millis(300)) {
            Ok(a) => return Ok((a, start.elapsed())),
            Err(e) => {
                if !errors.contains(&e) {
                    errors.push(e);
                }
            }
        }
        if start.elapsed() >= within {
            return Err(format!(
                "no {proto} answer from {target} in {} within {within:?}: {}",
                ns.name,
                errors.join(" | ")
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `echo probe` from `ns`: UDP questions every 10 ms until the first
/// answer; returns it and how long the probe waited, or why none came.
pub fn probe(ns: &Ns, target: &str, within: Duration) -> Result<(String, Duration), String> {
    let echo = echo_binary();
    let ms = within.as_millis().to_string();
    let (ok, out) = ns.run(&[echo.to_str().unwrap(), "probe", target, &ms]);
    if !ok {
        return Err(out.trim().to_owned());
    }
    let (answer, waited) = out
        .trim()
        .rsplit_once(' ')
        .ok_or_else(|| format!("odd probe output {out:?}"))?;
    let waited: u64 = waited
        .parse()
        .map_err(|_| format!("odd probe output {out:?}"))?;
    Ok((answer.to_owned(), Duration::from_millis(waited)))
}

/// Asserts the echo at `target` answers from `ns` within `within` and then
/// 3 more times in a row, each time reporting `want` as the source.
#[track_caller]
pub fn expect_echo(ns: &Ns, proto: &str, target: &str, want: &str, within: Duration) {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    // An answer with another source is retried too: a config being applied
    // may still route through the previous path.
    while Instant::now() < deadline {
        match first_answer(
            ns,
            proto,
            target,
            deadline.saturating_duration_since(Instant::now()),
        ) {
            Ok((a, _)) if a == want => {
                for i in 0..3 {
                    let again = ask(ns, proto, target, Duration::from_secs(2));
                    assert_eq!(
                        again.as_deref(),
                        Ok(want),
                        "{proto} echo at {target} from {}: answer {} of 4 differs",
                        ns.name,
                        i + 2
                    );
                }
                return;
            }
            Ok((a, _)) => {
                last = format!("answered {a:?}, want {want:?}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => last = e,
        }
    }
    panic!("{proto} echo at {target} from {}: {last}", ns.name);
}

/// Asserts the echo at `target` stops answering from `ns` within `within`
/// (then stays silent for 3 more tries); returns how long it took.
#[track_caller]
pub fn expect_silence(ns: &Ns, proto: &str, target: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if ask(ns, proto, target, Duration::from_millis(300)).is_err() {
            let took = start.elapsed();
            for _ in 0..3 {
                let r = ask(ns, proto, target, Duration::from_millis(500));
                assert!(
                    r.is_err(),
                    "{proto} echo at {target} from {} answered again: {r:?}",
                    ns.name
                );
            }
            return took;
        }
        assert!(
            start.elapsed() < within,
            "{proto} echo at {target} from {} still answers after {within:?}",
            ns.name
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A WireGuard key pair made by `wg genkey` / `wg pubkey`.
pub struct WgKey {
    /// Base64 private key.
    pub private: String,
    /// Base64 public key.
    pub public: String,
}

/// Generates a key pair with `wg`.
pub fn wg_genkey() -> WgKey {
    let private = must(&["wg", "genkey"]).trim().to_owned();
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("wg pubkey");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(private.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("wg pubkey");
    WgKey {
        private,
        public: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    }
}

/// A wg-quick file split into what `wg setconf` takes and what wg-quick
/// itself does (addresses, DNS, MTU, routes for the allowed IPs).
#[derive(Debug, Default)]
pub struct WgQuick {
    /// The file without wg-quick's own keys: `wg setconf` input.
    pub setconf: String,
    /// `Address =` entries (CIDR).
    pub addresses: Vec<String>,
    /// `DNS =` entries.
    pub dns: Vec<String>,
    /// `MTU =`.
    pub mtu: Option<u32>,
    /// Every peer's `AllowedIPs =` entries.
    pub allowed_ips: Vec<String>,
}

impl WgQuick {
    /// Parses a wg-quick file.
    pub fn parse(text: &str) -> Self {
        let mut q = WgQuick::default();
        let list = |v: &str| -> Vec<String> {
            v.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                q.setconf.push_str(line);
                q.setconf.push('\n');
                continue;
            };
            // Base64 keys end in '=': split at the first '=' only.
            let (k, v) = (k.trim(), v.trim());
            match k {
                "Address" => q.addresses.extend(list(v)),
                "DNS" => q.dns.extend(list(v)),
                "MTU" => q.mtu = v.parse().ok(),
                "Table" | "PreUp" | "PostUp" | "PreDown" | "PostDown" | "SaveConfig" => {}
                _ => {
                    if k == "AllowedIPs" {
                        q.allowed_ips.extend(list(v));
                    }
                    q.setconf.push_str(line);
                    q.setconf.push('\n');
                }
            }
        }
        q
    }

    /// Applies it to the existing WireGuard device `ifname` in `ns` the way
    /// wg-quick would (routes in the main table: the peer's endpoint is on a
    /// connected subnet, which stays more specific than any allowed IP).
    pub fn apply(&self, ns: &Ns, ifname: &str, scratch: &Path) {
        std::fs::write(scratch, &self.setconf).expect("write setconf file");
        ns.must(&["wg", "setconf", ifname, scratch.to_str().unwrap()]);
        ns.ip(&["addr", "flush", "dev", ifname]);
        let _ = ns.run(&["ip", "-4", "route", "flush", "dev", ifname]);
        let _ = ns.run(&["ip", "-6", "route", "flush", "dev", ifname]);
        for a in &self.addresses {
            ns.ip(&["addr", "add", a, "dev", ifname]);
        }
        if let Some(m) = self.mtu {
            ns.ip(&["link", "set", ifname, "mtu", &m.to_string()]);
        }
        ns.ip(&["link", "set", ifname, "up"]);
        for r in &self.allowed_ips {
            let fam = if r.contains(':') { "-6" } else { "-4" };
            ns.ip(&[fam, "route", "replace", r, "dev", ifname]);
        }
    }
}

/// `meshplane serve` inside `srv`, on the underlay, with its data directory
/// kept across restarts.
pub struct ServerProc {
    /// The running process, if any.
    pub proc: Option<Proc>,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// `IP:PORT` it listens on.
    listen: String,
    starts: u32,
}

impl ServerProc {
    /// Starts the server in `t.srv` on `t.server_ip`:SERVER_PORT.
    pub fn start(t: &Topology) -> Self {
        let data_dir = t.path("server-data");
        std::fs::create_dir_all(&data_dir).expect("server data dir");
        let mut s = ServerProc {
            proc: None,
            data_dir,
            listen: format!("{}:{SERVER_PORT}", t.server_ip),
            starts: 0,
        };
        s.spawn(t);
        s
    }

    /// `http://IP:SERVER_PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// The admin token the server wrote.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .expect("admin.token")
            .trim()
            .to_owned()
    }

    fn spawn(&mut self, t: &Topology) {
        self.starts += 1;
        let log = t.path(&format!("server-{}.log", self.starts));
        let bin = t.binary("meshplane");
        let listen = self.listen.clone();
        let data = self.data_dir.to_str().unwrap().to_owned();
        let mut p = t.srv.spawn(
            &format!("meshplane serve (start {})", self.starts),
            &[bin.to_str().unwrap(), "serve", "--listen", &listen],
            &[
                ("MESHPLANE_DATA_DIR", data.as_str()),
                // "config stream opened from=R" says which revision each
                // agent resumed from.
                ("RUST_LOG", "info,meshplane_server::api::agent=debug"),
            ],
            &log,
        );
        p.wait_output(
            &format!("meshplane ready: serving gRPC on {listen}"),
            Duration::from_secs(30),
        );
        self.proc = Some(p);
    }

    /// Stops it with SIGTERM; panics unless it exits cleanly within 10 s.
    /// Async so that a current-thread runtime on the calling thread keeps
    /// running meanwhile: the server drains its connections before it
    /// exits, and the test's own idle connections close only when their
    /// tasks run.
    pub async fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            let st = loop {
                if let Some(st) = p.try_status() {
                    break Some(st);
                }
                if Instant::now() >= deadline {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            assert!(
                st.is_some_and(|s| s.success()),
                "meshplane did not exit cleanly on SIGTERM within 10 s ({st:?}):\n{}",
                p.output()
            );
        }
    }

    /// Starts it again on the same address and data directory.
    pub async fn restart(&mut self, t: &Topology) {
        self.stop().await;
        self.spawn(t);
    }

    /// Everything every start of it logged.
    pub fn logs(&self, t: &Topology) -> String {
        (1..=self.starts)
            .map(|i| {
                std::fs::read_to_string(t.path(&format!("server-{i}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("")
    }
}
