//! `meshctl quickstart vpn`: the seed's one-line VPN installer as one
//! idempotent command. It creates (or reuses) the network, registers this
//! host as its gateway node with a key pair generated here, makes it ingress
//! and egress for the whole internet with NAT, points the clients' DNS at
//! it, creates the clients and writes every config file. It ends with the
//! two ways to bring the gateway up: `wg-quick` with the file it wrote (no
//! agent), or `meshctl agent run` with the node's identity.

use std::{
    io::IsTerminal,
    net::{IpAddr, UdpSocket},
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use meshplane_sdk::{Code, agent::KeyPair, proto as pb};
use serde_json::{Value, json};

use crate::{
    Ctx, Failure, Outcome,
    commands::write_private,
    output::{self, Format},
    wgquick,
};

/// `meshctl quickstart`.
#[derive(Subcommand)]
pub enum QuickstartCmd {
    /// A full VPN through this host: network, gateway node (ingress, and
    /// egress 0.0.0.0/0,::/0 with NAT), DNS, and N client configs. Running it
    /// again reuses everything and creates only what is missing.
    Vpn(VpnArgs),
}

/// Options of `quickstart vpn`.
#[derive(Args)]
pub struct VpnArgs {
    /// The network to create or reuse.
    #[arg(long, default_value = "vpn")]
    network: String,
    /// This host's interface to the internet (see `ip route get 1.1.1.1`).
    #[arg(long, default_value = "eth0")]
    interface: String,
    /// How many external clients the network should have on this gateway.
    #[arg(long, default_value_t = 5)]
    clients: u32,
    /// Directory for the clients' wg-quick files (created, mode 0700).
    #[arg(long, default_value = "vpn-clients", value_name = "DIR")]
    out: PathBuf,
    /// host:port clients dial [default: this host's primary address and the
    /// network's listen port].
    #[arg(long, value_name = "HOST:PORT")]
    endpoint: Option<String>,
    /// Directory keeping this node's identity (WireGuard key, node token)
    /// and its wg-quick files (created, mode 0700).
    #[arg(long, default_value = "meshctl-state", value_name = "DIR")]
    state_dir: PathBuf,
    /// IPv4 range of a new network.
    #[arg(long, default_value = "10.201.0.0/24", value_name = "CIDR")]
    range: String,
    /// IPv6 range of a new network ("" for none).
    #[arg(long, default_value = "fd00:201::/64", value_name = "CIDR")]
    range6: String,
    /// This node's name [default: the host name].
    #[arg(long)]
    name: Option<String>,
    /// DNS servers for the clients [default: the gateway's overlay address].
    #[arg(long, value_name = "IP,...", value_delimiter = ',')]
    dns: Option<Vec<String>>,
    /// Clients are named PREFIX-1 ... PREFIX-N.
    #[arg(long, default_value = "client", value_name = "PREFIX")]
    client_prefix: String,
}

/// What the state file keeps (mode 0600): the node's identity.
pub struct State {
    /// The node's id.
    pub node_id: String,
    /// Its WireGuard key pair, generated on this host.
    pub keys: KeyPair,
    /// Its node token.
    pub node_token: String,
}

fn local(what: impl std::fmt::Display) -> Failure {
    Failure::Local(what.to_string())
}

/// Creates `dir` (and parents) with mode 0700.
pub fn private_dir(dir: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| local(format!("creating {}: {e}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| local(format!("chmod {}: {e}", dir.display())))
}

impl State {
    /// `<dir>/<network>.json`.
    pub fn path(dir: &Path, network: &str) -> PathBuf {
        dir.join(format!("{network}.json"))
    }

    /// The state in `path`, when there is one.
    pub fn load(path: &Path) -> Result<Option<State>, Failure> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(local(format!("reading {}: {e}", path.display()))),
        };
        let bad = |what: &str| local(format!("{}: {what}", path.display()));
        let v: Value = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
        let field = |k: &str| {
            v[k].as_str()
                .map(String::from)
                .ok_or_else(|| bad(&format!("{k} is missing")))
        };
        let keys =
            KeyPair::from_private_key(&field("private_key")?).map_err(|e| bad(e.message()))?;
        Ok(Some(State {
            node_id: field("node_id")?,
            keys,
            node_token: field("node_token")?,
        }))
    }

    /// Writes the state to `path` with mode 0600.
    pub fn save(
        &self,
        path: &Path,
        server: &str,
        network: &str,
        name: &str,
    ) -> Result<(), Failure> {
        let v = json!({
            "server": server,
            "network": network,
            "node_id": self.node_id,
            "name": name,
            "public_key": self.keys.public_key(),
            "private_key": self.keys.private_key().expose(),
            "node_token": self.node_token,
        });
        write_private(path, &format!("{v:#}\n"))
    }
}

/// This host's name as a DNS label.
fn host_label() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let raw = unsafe {
        if libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) == 0 {
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            String::from_utf8_lossy(&buf[..end]).into_owned()
        } else {
            String::new()
        }
    };
    label(raw.split('.').next().unwrap_or_default())
}

/// `s` made a DNS label (lowercase a-z, 0-9, '-', at most 32 characters).
fn label(s: &str) -> String {
    let mut out = String::new();
    for c in s.to_lowercase().chars() {
        let c = if c.is_ascii_alphanumeric() { c } else { '-' };
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
    }
    let out: String = out.trim_matches('-').chars().take(32).collect();
    let out = out.trim_end_matches('-').to_owned();
    if out.is_empty() {
        "gateway".into()
    } else {
        out
    }
}

/// The source address this host uses towards the internet. Connecting a UDP
/// socket only picks a route; it sends nothing.
fn primary_ip() -> Option<IpAddr> {
    for (bind, target) in [("0.0.0.0:0", "192.0.2.1:9"), ("[::]:0", "[2001:db8::1]:9")] {
        let Ok(s) = UdpSocket::bind(bind) else {
            continue;
        };
        if s.connect(target).is_ok()
            && let Ok(a) = s.local_addr()
            && !a.ip().is_unspecified()
        {
            return Some(a.ip());
        }
    }
    None
}

fn same_set(a: &[String], b: &[String]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort();
    b.sort();
    a == b
}

/// Progress on stderr: one line per step, and, when stderr is a terminal, a
/// spinner below them saying what is under way (piped or captured output
/// gets the lines alone).
struct Progress {
    spinner: Option<ProgressBar>,
}

impl Progress {
    fn new() -> Self {
        let spinner = std::io::stderr().is_terminal().then(|| {
            let s = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
                s.set_style(style);
            }
            s.enable_steady_tick(Duration::from_millis(100));
            s
        });
        Progress { spinner }
    }

    /// A step done: a line of its own.
    fn step(&self, msg: impl std::fmt::Display) {
        match &self.spinner {
            Some(s) => s.println(msg.to_string()),
            None => eprintln!("{msg}"),
        }
    }

    /// What is under way now (shown by the spinner only).
    fn doing(&self, msg: impl Into<std::borrow::Cow<'static, str>>) {
        if let Some(s) = &self.spinner {
            s.set_message(msg);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(s) = &self.spinner {
            s.finish_and_clear();
        }
    }
}

/// `s` quoted for a POSIX shell when it needs quoting.
fn sh_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain {
        s.into()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

impl QuickstartCmd {
    pub async fn run(self, ctx: &Ctx) -> Outcome {
        let QuickstartCmd::Vpn(a) = self;
        a.run(ctx).await
    }
}

impl VpnArgs {
    async fn network(&self, ctx: &Ctx, p: &Progress) -> Result<pb::Network, Failure> {
        p.doing(format!("network {}", self.network));
        let nets = ctx.client.networks();
        match nets.get(&self.network).await {
            Ok(n) => {
                p.step(format!(
                    "network {}: exists ({} {}), reusing it",
                    n.name, n.address_range, n.address_range6
                ));
                Ok(n)
            }
            Err(e) if e.code() == Code::NotFound => {
                let n = nets
                    .create(pb::Network {
                        name: self.network.clone(),
                        address_range: self.range.clone(),
                        address_range6: self.range6.clone(),
                        ..Default::default()
                    })
                    .await?;
                p.step(format!(
                    "network {}: created ({} {})",
                    n.name, n.address_range, n.address_range6
                ));
                Ok(n)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn endpoint(&self, net: &pb::Network) -> Result<String, Failure> {
        if let Some(e) = &self.endpoint {
            return Ok(e.clone());
        }
        let ip = primary_ip().ok_or_else(|| {
            Failure::Usage(
                "cannot tell this host's primary address (no default route): pass \
                 --endpoint HOST:PORT, the address clients dial"
                    .into(),
            )
        })?;
        Ok(std::net::SocketAddr::new(ip, net.default_listen_port as u16).to_string())
    }

    /// The gateway node: the one in the state file when the server still
    /// has it, else a new registration with an enrollment key of one use.
    async fn node(
        &self,
        ctx: &Ctx,
        p: &Progress,
        net: &pb::Network,
        endpoint: &str,
    ) -> Result<(pb::Node, State, PathBuf), Failure> {
        p.doing("gateway node");
        private_dir(&self.state_dir)?;
        let path = State::path(&self.state_dir, &self.network);
        let state = State::load(&path)?;
        if let Some(s) = &state {
            match ctx.client.nodes().get(&s.node_id).await {
                Ok(n) if n.public_key == s.keys.public_key() && n.network == net.name => {
                    p.step(format!(
                        "node {}: registered before ({}), reusing it",
                        n.name,
                        path.display()
                    ));
                    let n = if n.endpoint != endpoint {
                        let mut change = n.clone();
                        change.endpoint = endpoint.into();
                        let n = ctx.client.nodes().update(change, &["endpoint"]).await?;
                        p.step(format!("node {}: endpoint now {endpoint}", n.name));
                        n
                    } else {
                        n
                    };
                    let s = state.expect("checked");
                    return Ok((n, s, path));
                }
                Ok(n) => p.step(format!(
                    "node {} no longer matches {}; registering anew",
                    n.id,
                    path.display()
                )),
                Err(e) if e.code() == Code::NotFound => p.step(format!(
                    "node {} from {} is gone from the server; registering anew",
                    s.node_id,
                    path.display()
                )),
                Err(e) => return Err(e.into()),
            }
        }
        // Keep the key pair of an earlier run: only this host has it.
        let keys = state.map(|s| s.keys).unwrap_or_else(KeyPair::generate);
        let name = self.name.clone().unwrap_or_else(host_label);
        let key = ctx
            .client
            .enrollment_keys()
            .create(pb::EnrollmentKey {
                networks: vec![net.name.clone()],
                uses_remaining: 1,
                description: format!("meshctl quickstart vpn: {name}"),
                ..Default::default()
            })
            .await?;
        p.step(format!("enrollment key {}: created (one use)", key.id));
        let reg = ctx
            .client
            .agent()
            .register(pb::RegisterRequest {
                enrollment_key: key.token.clone(),
                network: net.name.clone(),
                name: name.clone(),
                public_key: keys.public_key().into(),
                endpoint: endpoint.into(),
                listen_port: None,
                os: std::env::consts::OS.into(),
            })
            .await?;
        let state = State {
            node_id: reg.node.id.clone(),
            keys,
            node_token: reg.node_token.expose().to_owned(),
        };
        state.save(&path, &ctx.server, &net.name, &name)?;
        p.step(format!(
            "node {name}: registered as {} at {} (identity in {}, mode 0600)",
            reg.node.id,
            reg.node.address,
            path.display()
        ));
        Ok((reg.node, state, path))
    }

    async fn run(&self, ctx: &Ctx) -> Outcome {
        if self.clients == 0 {
            return Err(Failure::Usage("--clients must be at least 1".into()));
        }
        let p = Progress::new();
        let net = self.network(ctx, &p).await?;
        let endpoint = self.endpoint(&net)?;
        let (mut node, state, state_file) = self.node(ctx, &p, &net, &endpoint).await?;
        let gw = ctx.client.gateways();

        // Clients' DNS: the gateway's overlay address unless told otherwise.
        let dns = match &self.dns {
            Some(d) => d.clone(),
            None => vec![if node.address.is_empty() {
                node.address6.clone()
            } else {
                node.address.clone()
            }],
        };
        p.doing("gateways");
        if node.ingress.as_ref().map(|i| &i.ext_client_dns) != Some(&dns) {
            node = gw
                .create_ingress(pb::CreateIngressGatewayRequest {
                    node_id: node.id.clone(),
                    ext_client_dns: dns.clone(),
                })
                .await?;
            p.step(format!(
                "ingress: {} now takes external clients (DNS {})",
                node.name,
                dns.join(",")
            ));
        }

        let mut ranges = Vec::new();
        if !net.address_range.is_empty() {
            ranges.push("0.0.0.0/0".to_string());
        }
        if !net.address_range6.is_empty() {
            ranges.push("::/0".to_string());
        }
        let egress_ok = node.egress.as_ref().is_some_and(|e| {
            same_set(&e.ranges, &ranges) && e.interface == self.interface && e.nat_enabled
        });
        if !egress_ok {
            node = gw
                .create_egress(pb::CreateEgressGatewayRequest {
                    node_id: node.id.clone(),
                    ranges: ranges.clone(),
                    interface: self.interface.clone(),
                    nat_enabled: Some(true),
                    ..Default::default()
                })
                .await?;
            p.step(format!(
                "egress: {} routes {} out of {} with NAT",
                node.name,
                ranges.join(","),
                self.interface
            ));
        }

        // The clients: PREFIX-1 ... PREFIX-N on this gateway.
        p.doing("external clients");
        let clients_api = ctx.client.ext_clients();
        let existing = clients_api
            .list_all(Some(&net.name), Some(&node.id))
            .await?;
        let wanted: Vec<String> = (1..=self.clients)
            .map(|i| format!("{}-{i}", self.client_prefix))
            .collect();
        let mut clients = Vec::new();
        let missing = wanted
            .iter()
            .filter(|w| !existing.iter().any(|c| &c.name == *w))
            .count();
        let mut made = 0;
        for name in &wanted {
            match existing.iter().find(|c| &c.name == name) {
                Some(c) => clients.push(c.clone()),
                None => {
                    p.doing(format!("external client {name} ({}/{missing})", made + 1));
                    let c = clients_api
                        .create(pb::CreateExtClientRequest {
                            network: net.name.clone(),
                            ingress_node_id: node.id.clone(),
                            name: name.clone(),
                            ..Default::default()
                        })
                        .await?;
                    made += 1;
                    p.step(format!(
                        "[{made}/{missing}] external client {name}: created at {}",
                        c.address
                    ));
                    clients.push(c);
                }
            }
        }
        if missing == 0 {
            p.step(format!(
                "external clients: all {} exist, reusing them",
                wanted.len()
            ));
        }
        let others: Vec<&str> = existing
            .iter()
            .filter(|c| !wanted.contains(&c.name))
            .map(|c| c.name.as_str())
            .collect();
        if !others.is_empty() {
            p.step(format!(
                "note: this gateway has other clients too, left as they are: {}",
                others.join(", ")
            ));
        }

        // Their configs.
        private_dir(&self.out)?;
        let mut files = Vec::new();
        for (i, c) in clients.iter().enumerate() {
            p.doing(format!(
                "config of {} ({}/{})",
                c.name,
                i + 1,
                clients.len()
            ));
            let conf = clients_api.config(&c.id).await?;
            let path = self.out.join(format!("{}.conf", c.name));
            write_private(&path, &conf.config)?;
            p.step(format!(
                "[{}/{}] wrote {}",
                i + 1,
                clients.len(),
                path.display()
            ));
            files.push(path);
        }

        // The gateway's own wg-quick file, from the config its agent gets.
        p.doing("the gateway's wg-quick file");
        let cfg = ctx.client.nodes().config(&node.id).await?;
        let state_dir = std::path::absolute(&self.state_dir).map_err(local)?;
        let gwf = wgquick::render(&cfg, state.keys.private_key().expose(), &state_dir);
        let ifname = wgquick::interface_name(&cfg);
        let gw_conf = state_dir.join(format!("{ifname}.conf"));
        write_private(&gw_conf, &gwf.conf)?;
        for (ext, text) in [("iptables", &gwf.iptables), ("ip6tables", &gwf.ip6tables)] {
            if let Some(t) = text {
                write_private(&state_dir.join(format!("{ifname}.{ext}")), t)?;
            }
        }
        p.step(format!(
            "wrote {} (revision {})",
            gw_conf.display(),
            cfg.revision
        ));

        // The agent's state directory, holding this node's identity: `meshctl
        // agent run` takes the node over instead of registering another.
        let agent_dir = state_dir.join(format!("agent-{}", net.name));
        let handed = crate::agent::state::StateDir::open(&agent_dir)
            .and_then(|d| {
                d.adopt(crate::agent::state::Identity {
                    node_id: node.id.clone(),
                    network: net.name.clone(),
                    name: node.name.clone(),
                    server: ctx.server.clone(),
                    interface: ifname.clone(),
                    private_key: state.keys.private_key().expose().to_owned(),
                    public_key: state.keys.public_key().to_owned(),
                    node_token: state.node_token.clone(),
                    created: None,
                })
            })
            .map_err(local)?;
        if handed {
            p.step(format!(
                "agent identity: {} (mode 0600)",
                agent_dir.display()
            ));
        }
        drop(p);
        let agent = AgentLine {
            server: &ctx.server,
            tls_args: &ctx.tls_args,
            interface: &ifname,
            state_dir: &agent_dir,
        };
        let summary = Summary {
            net: &net,
            node: &node,
            endpoint: &endpoint,
            dns: &dns,
            clients: &clients,
            files: &files,
            gw_conf: &gw_conf,
            state_file: &state_file,
            agent: &agent,
        };
        match ctx.format {
            Format::Table => summary.print(&self.interface),
            f => output::print_value(f, &summary.json()),
        }
        Ok(())
    }
}

/// The `meshctl agent run` line for the gateway host: the agent takes over
/// the node `quickstart vpn` registered, whose identity is in the agent's
/// state directory (no enrollment key needed).
struct AgentLine<'a> {
    server: &'a str,
    /// `--ca-file FILE` and the like, as given to this meshctl.
    tls_args: &'a [String],
    interface: &'a str,
    state_dir: &'a Path,
}

impl AgentLine<'_> {
    fn command(&self) -> String {
        let tls: String = self
            .tls_args
            .iter()
            .map(|w| format!(" {}", sh_word(w)))
            .collect();
        format!(
            "meshctl agent run --server {}{tls} --interface {} --state-dir {}",
            sh_word(self.server),
            sh_word(self.interface),
            sh_word(&self.state_dir.display().to_string())
        )
    }
}

struct Summary<'a> {
    net: &'a pb::Network,
    node: &'a pb::Node,
    endpoint: &'a str,
    dns: &'a [String],
    clients: &'a [pb::ExtClient],
    files: &'a [PathBuf],
    gw_conf: &'a Path,
    state_file: &'a Path,
    agent: &'a AgentLine<'a>,
}

impl Summary<'_> {
    fn json(&self) -> Value {
        json!({
            "network": output::to_json(self.net),
            "node": output::to_json(self.node),
            "endpoint": self.endpoint,
            "dns": self.dns,
            "clients": self.clients.iter().zip(self.files).map(|(c, f)| json!({
                "id": c.id,
                "name": c.name,
                "address": c.address,
                "address6": c.address6,
                "configFile": f.display().to_string(),
            })).collect::<Vec<_>>(),
            "gatewayConfigFile": self.gw_conf.display().to_string(),
            "stateFile": self.state_file.display().to_string(),
            "agentCommand": self.agent.command(),
            "agentStateDir": self.agent.state_dir.display().to_string(),
        })
    }

    fn print(&self, interface: &str) {
        let n = self.node;
        let first = self.clients.first().map(|c| c.name.as_str()).unwrap_or("");
        println!(
            "VPN {net:?} is ready: gateway node {name} ({id}), reached at {ep}, overlay {addr} {addr6}.\n\
             It routes 0.0.0.0/0,::/0 out of {interface} with NAT; clients use DNS {dns}.\n",
            net = self.net.name,
            name = n.name,
            id = n.id,
            ep = self.endpoint,
            addr = n.address,
            addr6 = n.address6,
            dns = self.dns.join(","),
        );
        println!("Client configs ({}, mode 0600):", self.clients.len());
        for f in self.files {
            println!("  {}", f.display());
        }
        println!(
            "  on a phone, scan: meshctl extclient config {first} --network {} --qr\n",
            self.net.name
        );
        println!(
            "Next, on this host (the gateway), bring WireGuard up with this node's identity, \
             either way:\n\n\
             - with the meshplane agent, which keeps the interface, routes and NAT rules in step \
             with the server:\n  \
             sudo {}\n\
             - or without an agent, with the wg-quick file written here (a snapshot: run this \
             command again after changes):\n  \
             sudo wg-quick up {}\n\n\
             Either enables forwarding and installs the NAT rules; UDP port {} must be reachable \
             from the clients.",
            self.agent.command(),
            self.gw_conf.display(),
            n.listen_port
        );
        println!(
            "The agent takes over this node from {} (no enrollment key needed); add \
             --userspace wireguard-go where the kernel has no WireGuard module.",
            self.agent.state_dir.display()
        );
        if self.dns.iter().any(|d| d == &n.address || d == &n.address6) {
            println!(
                "Clients resolve names through {}: run a resolver listening there (e.g. \
                 `dnsmasq --listen-address={}`), or run this again with --dns 1.1.1.1.",
                self.dns.join(","),
                self.dns[0]
            );
        }
        println!(
            "The node's WireGuard key and token are in {} (mode 0600). Run this command again \
             after changes: it reuses what exists and refreshes the files.",
            self.state_file.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_become_dns_labels() {
        assert_eq!(label("My_Host.example"), "my-host-example");
        assert_eq!(label("--a--b--"), "a-b");
        assert_eq!(label(""), "gateway");
        assert_eq!(label(&"x".repeat(40)).len(), 32);
        assert!(!host_label().is_empty());
    }

    #[test]
    fn the_agent_line_names_every_flag_and_quotes_for_the_shell() {
        let line = AgentLine {
            server: "http://127.0.0.1:50051",
            tls_args: &[],
            interface: "mp-vpn",
            state_dir: Path::new("/srv/my state/agent-vpn"),
        };
        assert_eq!(
            line.command(),
            "meshctl agent run --server http://127.0.0.1:50051 --interface mp-vpn \
             --state-dir '/srv/my state/agent-vpn'"
        );
        let tls = ["--ca-file".to_owned(), "/etc/mesh ca.pem".to_owned()];
        let line = AgentLine {
            server: "https://mesh.example.net:50051",
            tls_args: &tls,
            ..line
        };
        assert_eq!(
            line.command(),
            "meshctl agent run --server https://mesh.example.net:50051 --ca-file \
             '/etc/mesh ca.pem' --interface mp-vpn --state-dir '/srv/my state/agent-vpn'"
        );
        assert_eq!(sh_word("it's"), r"'it'\''s'");
    }

    #[test]
    fn the_state_file_round_trips_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("meshctl-state-test-{}", std::process::id()));
        private_dir(&dir).ok().unwrap();
        let path = State::path(&dir, "vpn");
        let s = State {
            node_id: "n1".into(),
            keys: KeyPair::generate(),
            node_token: "mpn_x".into(),
        };
        s.save(&path, "http://s", "vpn", "gw").ok().unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = State::load(&path).ok().unwrap().unwrap();
        assert_eq!(back.node_id, "n1");
        assert_eq!(back.keys.public_key(), s.keys.public_key());
        assert_eq!(back.node_token, "mpn_x");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
