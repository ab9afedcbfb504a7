//! The subcommands over the admin RPCs.

use std::{io::Write, path::PathBuf};

use clap::{Args, Subcommand};
use futures::StreamExt;
use meshplane_sdk::proto as pb;

use crate::{
    Ctx, Failure, Outcome,
    output::{self, Format, Named, Table, list, or_dash, time},
    resolve,
};

/// Prints items as a table or as a JSON/YAML array.
fn show_list<M: Named>(ctx: &Ctx, items: &[M], table: fn(&[M]) -> Table) {
    match ctx.format {
        Format::Table => table(items).print(),
        f => output::print_value(f, &output::list_json(items)),
    }
}

/// Prints one item as a one-row table or as a JSON/YAML object.
fn show_one<M: Named>(ctx: &Ctx, item: &M, table: fn(&[M]) -> Table) {
    match ctx.format {
        Format::Table => table(std::slice::from_ref(item)).print(),
        f => output::print_value(f, &output::to_json(item)),
    }
}

/// Confirms a deletion: a line in table mode, `{}` otherwise.
fn done(ctx: &Ctx, what: String) {
    match ctx.format {
        Format::Table => println!("{what}"),
        f => output::print_value(f, &serde_json::json!({})),
    }
}

/// Comma-separated values; an empty argument is an empty list.
fn csv(v: &[String]) -> Vec<String> {
    v.iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

// ---------------------------------------------------------------- networks

/// Network settings for create and update.
#[derive(Args)]
pub struct NetworkSettings {
    /// Default WireGuard PersistentKeepalive, seconds.
    #[arg(long)]
    keepalive: Option<u32>,
    /// Default MTU of the overlay interface.
    #[arg(long)]
    mtu: Option<u32>,
    /// Default WireGuard listen port of nodes.
    #[arg(long)]
    listen_port: Option<u32>,
    /// DNS servers written into external clients' configs (comma-separated;
    /// "" clears).
    #[arg(long, value_name = "IP,...")]
    ext_client_dns: Option<Vec<String>>,
    /// Upstream resolvers for names outside the zone (comma-separated; ""
    /// clears).
    #[arg(long, value_name = "IP,...")]
    nameservers: Option<Vec<String>>,
}

impl NetworkSettings {
    /// Writes the given settings into `n` and returns their field names.
    fn apply(&self, n: &mut pb::Network) -> Vec<&'static str> {
        let mut fields = Vec::new();
        if let Some(v) = self.keepalive {
            n.default_keepalive = v;
            fields.push("default_keepalive");
        }
        if let Some(v) = self.mtu {
            n.default_mtu = v;
            fields.push("default_mtu");
        }
        if let Some(v) = self.listen_port {
            n.default_listen_port = v;
            fields.push("default_listen_port");
        }
        if let Some(v) = &self.ext_client_dns {
            n.default_ext_client_dns = csv(v);
            fields.push("default_ext_client_dns");
        }
        if let Some(v) = &self.nameservers {
            n.nameservers = csv(v);
            fields.push("nameservers");
        }
        fields
    }
}

/// `meshctl network`.
#[derive(Subcommand)]
pub enum NetworkCmd {
    /// Creates a network.
    Create {
        /// Its name (a DNS label).
        name: String,
        /// IPv4 range, e.g. 10.101.0.0/16.
        #[arg(long, value_name = "CIDR")]
        range: Option<String>,
        /// IPv6 range, e.g. fd00:101::/64.
        #[arg(long, value_name = "CIDR")]
        range6: Option<String>,
        #[command(flatten)]
        settings: NetworkSettings,
    },
    /// Shows a network.
    Get {
        /// Its name.
        name: String,
    },
    /// Lists networks.
    List,
    /// Changes a network's defaults.
    Update {
        /// Its name.
        name: String,
        #[command(flatten)]
        settings: NetworkSettings,
    },
    /// Deletes a network.
    Delete {
        /// Its name.
        name: String,
        /// Also delete its nodes, external clients and names.
        #[arg(long)]
        force: bool,
    },
}

fn network_table(items: &[pb::Network]) -> Table {
    let mut t = Table::new(&[
        "=NAME",
        "RANGE",
        "?RANGE6",
        "?PORT",
        "?MTU",
        "?KEEPALIVE",
        "?CLIENT DNS",
        "?CREATED",
    ]);
    for n in items {
        t.row(vec![
            n.name.clone(),
            or_dash(&n.address_range),
            or_dash(&n.address_range6),
            n.default_listen_port.to_string(),
            n.default_mtu.to_string(),
            n.default_keepalive.to_string(),
            list(&n.default_ext_client_dns),
            time(&n.create_time),
        ]);
    }
    t
}

impl NetworkCmd {
    pub async fn run(self, ctx: &Ctx) -> Outcome {
        let nets = ctx.client.networks();
        match self {
            NetworkCmd::Create {
                name,
                range,
                range6,
                settings,
            } => {
                let mut n = pb::Network {
                    name,
                    address_range: range.unwrap_or_default(),
                    address_range6: range6.unwrap_or_default(),
                    ..Default::default()
                };
                settings.apply(&mut n);
                show_one(ctx, &nets.create(n).await?, network_table);
            }
            NetworkCmd::Get { name } => show_one(ctx, &nets.get(&name).await?, network_table),
            NetworkCmd::List => show_list(ctx, &nets.list_all().await?, network_table),
            NetworkCmd::Update { name, settings } => {
                let mut n = pb::Network {
                    name,
                    ..Default::default()
                };
                let fields = settings.apply(&mut n);
                if fields.is_empty() {
                    return Err(Failure::Usage(
                        "nothing to change: pass --keepalive, --mtu, --listen-port, \
                         --ext-client-dns or --nameservers"
                            .into(),
                    ));
                }
                show_one(ctx, &nets.update(n, &fields).await?, network_table);
            }
            NetworkCmd::Delete { name, force } => {
                nets.delete(&name, force).await?;
                done(ctx, format!("deleted network {name}"));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- keys

/// `meshctl key`.
#[derive(Subcommand)]
pub enum KeyCmd {
    /// Creates an enrollment key and prints its token (only this once).
    Create {
        /// Networks a node may join with it (comma-separated or repeated).
        #[arg(long = "network", required = true, value_name = "NET")]
        networks: Vec<String>,
        /// Registrations it allows.
        #[arg(
            long,
            conflicts_with = "unlimited",
            required_unless_present = "unlimited"
        )]
        uses: Option<u32>,
        /// Any number of registrations.
        #[arg(long)]
        unlimited: bool,
        /// When it stops working: a duration (30m, 24h, 7d) or an RFC 3339
        /// time.
        #[arg(long, value_name = "WHEN")]
        expires: Option<String>,
        /// A label for operators.
        #[arg(long)]
        description: Option<String>,
    },
    /// Lists enrollment keys (never their tokens).
    List {
        /// Only keys valid for this network.
        #[arg(long)]
        network: Option<String>,
    },
    /// Revokes an enrollment key.
    Delete {
        /// Its id.
        id: String,
    },
}

fn key_table(items: &[pb::EnrollmentKey]) -> Table {
    let mut t = Table::new(&["=ID", "NETWORKS", "USES LEFT", "?EXPIRES", "?DESCRIPTION"]);
    for k in items {
        t.row(vec![
            k.id.clone(),
            list(&k.networks),
            if k.unlimited {
                "unlimited".into()
            } else {
                k.uses_remaining.to_string()
            },
            if k.expire_time.is_some() {
                time(&k.expire_time)
            } else {
                "never".into()
            },
            or_dash(&k.description),
        ]);
    }
    t
}

/// `30m`, `24h`, `7d`, `90s` from now, or an RFC 3339 time.
fn parse_when(s: &str) -> Result<prost_types::Timestamp, Failure> {
    let bad = || {
        Failure::Usage(format!(
            "--expires {s:?}: give a duration (30m, 24h, 7d) or an RFC 3339 time"
        ))
    };
    let at = if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        t.with_timezone(&chrono::Utc)
    } else {
        let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
        let n: i64 = num.parse().map_err(|_| bad())?;
        let secs = match unit {
            "s" => n,
            "m" => n * 60,
            "h" => n * 3600,
            "d" => n * 86400,
            _ => return Err(bad()),
        };
        chrono::Utc::now() + chrono::Duration::seconds(secs)
    };
    Ok(prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: 0,
    })
}

impl KeyCmd {
    pub async fn run(self, ctx: &Ctx) -> Outcome {
        let keys = ctx.client.enrollment_keys();
        match self {
            KeyCmd::Create {
                networks,
                uses,
                unlimited,
                expires,
                description,
            } => {
                let k = pb::EnrollmentKey {
                    networks: csv(&networks),
                    uses_remaining: uses.unwrap_or(0),
                    unlimited,
                    expire_time: expires.as_deref().map(parse_when).transpose()?,
                    description: description.unwrap_or_default(),
                    ..Default::default()
                };
                let k = keys.create(k).await?;
                show_one(ctx, &k, key_table);
                if ctx.format == Format::Table {
                    println!("\ntoken (shown only now): {}", k.token);
                }
            }
            KeyCmd::List { network } => {
                show_list(ctx, &keys.list_all(network.as_deref()).await?, key_table)
            }
            KeyCmd::Delete { id } => {
                keys.delete(&id).await?;
                done(ctx, format!("revoked enrollment key {id}"));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- nodes

/// `meshctl node`.
#[derive(Subcommand)]
pub enum NodeCmd {
    /// Registers this host as a node (what an agent does when installed):
    /// generates its WireGuard key pair here and keeps it, with the node
    /// token, in the state directory (mode 0600).
    Register {
        /// The network to join.
        #[arg(long)]
        network: String,
        /// The node's name (a DNS label).
        #[arg(long)]
        name: String,
        /// An enrollment key's token.
        #[arg(long, env = "MESHCTL_ENROLLMENT_KEY", hide_env_values = true)]
        key: String,
        /// host:port the other nodes dial (none: behind NAT).
        #[arg(long, value_name = "HOST:PORT")]
        endpoint: Option<String>,
        /// WireGuard listen port [default: the network's].
        #[arg(long)]
        listen_port: Option<u32>,
        /// Directory keeping the node's identity (`<network>.json`).
        #[arg(long, default_value = "meshctl-state", value_name = "DIR")]
        state_dir: PathBuf,
    },
    /// Lists nodes.
    List {
        /// Only nodes of this network.
        #[arg(long)]
        network: Option<String>,
    },
    /// Shows a node.
    Get(NodeArg),
    /// Changes a node.
    Update {
        #[command(flatten)]
        node: NodeArg,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// host:port the others dial ("" for none).
        #[arg(long)]
        endpoint: Option<String>,
        /// WireGuard listen port.
        #[arg(long)]
        listen_port: Option<u32>,
        /// PersistentKeepalive others use towards it (0: the network's).
        #[arg(long)]
        keepalive: Option<u32>,
        /// New WireGuard public key.
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Deletes a node (frees its addresses, revokes its token).
    Delete(NodeArg),
    /// Shows exactly the config the node's agent receives.
    Config(NodeArg),
}

/// A NODE argument.
#[derive(Args)]
pub struct NodeArg {
    /// The node's id or name.
    #[arg(value_name = "NODE")]
    node: String,
    /// Network to look the name up in.
    #[arg(long)]
    network: Option<String>,
}

impl NodeArg {
    async fn id(&self, ctx: &Ctx) -> Result<String, Failure> {
        resolve::node_id(ctx, &self.node, self.network.as_deref()).await
    }
}

fn node_table(items: &[pb::Node]) -> Table {
    let mut t = Table::new(&[
        "=ID",
        "NAME",
        "NETWORK",
        "ADDRESS",
        "ROLES",
        "?ADDRESS6",
        "?ENDPOINT",
        "?CONNECTED",
        "?REVISION",
    ]);
    for n in items {
        let mut roles = Vec::new();
        if let Some(e) = &n.egress {
            roles.push(format!(
                "egress {} via {}{}",
                e.ranges.join(","),
                e.interface,
                if e.nat_enabled { "" } else { " (no NAT)" }
            ));
        }
        if n.ingress.is_some() {
            roles.push("ingress".into());
        }
        t.row(vec![
            n.id.clone(),
            n.name.clone(),
            n.network.clone(),
            or_dash(&n.address),
            if roles.is_empty() {
                "-".into()
            } else {
                roles.join("; ")
            },
            or_dash(&n.address6),
            or_dash(&n.endpoint),
            if n.connected { "yes" } else { "no" }.into(),
            format!(
                "{}/{}{}",
                n.applied_revision,
                n.config_revision,
                if n.drifted { " drifted" } else { "" }
            ),
        ]);
    }
    t
}

fn print_node_config(c: &pb::NodeConfig) {
    println!(
        "node {} in network {}, revision {}",
        c.node_id, c.network, c.revision
    );
    if let Some(i) = &c.interface {
        println!(
            "interface {}: {} port {} mtu {}",
            i.name,
            i.addresses.join(", "),
            i.listen_port,
            i.mtu
        );
    }
    println!("\npeers:");
    let mut t = Table::new(&[
        "NAME",
        "=PUBLIC KEY",
        "ALLOWED IPS",
        "?ENDPOINT",
        "?KEEPALIVE",
    ]);
    for p in &c.peers {
        t.row(vec![
            format!("{}{}", p.name, if p.ext_client { " (client)" } else { "" }),
            p.public_key.clone(),
            list(&p.allowed_ips),
            or_dash(&p.endpoint),
            p.persistent_keepalive.to_string(),
        ]);
    }
    t.print();
    if !c.routes.is_empty() {
        println!("\nroutes:");
        let mut t = Table::new(&["DESTINATION", "DEV", "=VIA PEER"]);
        for r in &c.routes {
            t.row(vec![
                r.destination.clone(),
                r.dev.clone(),
                r.via_peer.clone(),
            ]);
        }
        t.print();
    }
    if let Some(f) = &c.firewall
        && (!f.iptables_restore.is_empty() || !f.ip6tables_restore.is_empty())
    {
        println!(
            "\nfirewall (ipv4 forwarding {}, ipv6 forwarding {}):",
            f.ipv4_forwarding, f.ipv6_forwarding
        );
        for r in f.rules.iter().filter(|r| r.hook) {
            let bin = if r.family == 6 {
                "ip6tables"
            } else {
                "iptables"
            };
            println!("  hook: {bin} -t {} -I {} {}", r.table, r.chain, r.rule);
        }
        if !f.iptables_restore.is_empty() {
            print!(
                "# iptables-restore --noflush (IPv4)\n{}",
                f.iptables_restore
            );
        }
        if !f.ip6tables_restore.is_empty() {
            print!(
                "# ip6tables-restore --noflush (IPv6)\n{}",
                f.ip6tables_restore
            );
        }
    }
    if let Some(d) = &c.dns {
        println!(
            "\ndns zone {}: {} names, nameservers {}",
            or_dash(&d.domain),
            d.records.len(),
            list(&d.nameservers)
        );
    }
}

impl NodeCmd {
    pub async fn run(self, ctx: &Ctx) -> Outcome {
        let nodes = ctx.client.nodes();
        match self {
            NodeCmd::Register {
                network,
                name,
                key,
                endpoint,
                listen_port,
                state_dir,
            } => {
                use crate::quickstart::{State, private_dir};
                private_dir(&state_dir)?;
                let path = State::path(&state_dir, &network);
                if let Some(s) = State::load(&path)? {
                    return Err(Failure::Local(format!(
                        "{} already holds node {} of network {network}; use another \
                         --state-dir, or delete the node and the file first",
                        path.display(),
                        s.node_id
                    )));
                }
                let keys = meshplane_sdk::agent::KeyPair::generate();
                let reg = ctx
                    .client
                    .agent()
                    .register(pb::RegisterRequest {
                        enrollment_key: key,
                        network: network.clone(),
                        name: name.clone(),
                        public_key: keys.public_key().into(),
                        endpoint: endpoint.unwrap_or_default(),
                        listen_port,
                        os: std::env::consts::OS.into(),
                    })
                    .await?;
                State {
                    node_id: reg.node.id.clone(),
                    keys,
                    node_token: reg.node_token.expose().to_owned(),
                }
                .save(&path, &ctx.server, &network, &name)?;
                eprintln!(
                    "identity (key pair, node token) in {} (mode 0600)",
                    path.display()
                );
                show_one(ctx, &reg.node, node_table);
            }
            NodeCmd::List { network } => {
                show_list(ctx, &nodes.list_all(network.as_deref()).await?, node_table)
            }
            NodeCmd::Get(a) => {
                let n = resolve::node(ctx, &a.node, a.network.as_deref()).await?;
                show_one(ctx, &n, node_table);
            }
            NodeCmd::Update {
                node,
                name,
                endpoint,
                listen_port,
                keepalive,
                public_key,
            } => {
                let mut n = pb::Node {
                    id: node.id(ctx).await?,
                    ..Default::default()
                };
                let mut fields = Vec::new();
                if let Some(v) = name {
                    n.name = v;
                    fields.push("name");
                }
                if let Some(v) = endpoint {
                    n.endpoint = v;
                    fields.push("endpoint");
                }
                if let Some(v) = listen_port {
                    n.listen_port = v;
                    fields.push("listen_port");
                }
                if let Some(v) = keepalive {
                    n.persistent_keepalive = v;
                    fields.push("persistent_keepalive");
                }
                if let Some(v) = public_key {
                    n.public_key = v;
                    fields.push("public_key");
                }
                if fields.is_empty() {
                    return Err(Failure::Usage(
                        "nothing to change: pass --name, --endpoint, --listen-port, \
                         --keepalive or --public-key"
                            .into(),
                    ));
                }
                show_one(ctx, &nodes.update(n, &fields).await?, node_table);
            }
            NodeCmd::Delete(a) => {
                let id = a.id(ctx).await?;
                nodes.delete(&id).await?;
                done(ctx, format!("deleted node {id}"));
            }
            NodeCmd::Config(a) => {
                let cfg = nodes.config(&a.id(ctx).await?).await?;
                match ctx.format {
                    Format::Table => print_node_config(&cfg),
                    f => output::print_value(f, &output::to_json(&cfg)),
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- gateways

/// `meshctl egress`.
#[derive(Subcommand)]
pub enum EgressCmd {
    /// Makes a node an egress gateway (replacing any egress it had).
    Create {
        #[command(flatten)]
        node: NodeArg,
        /// Outside ranges it routes (comma-separated), e.g.
        /// 10.10.10.0/24 or 0.0.0.0/0,::/0.
        #[arg(long, required = true, value_name = "CIDR,...")]
        ranges: Vec<String>,
        /// The node's interface that reaches them (see `ip route get`).
        #[arg(long)]
        interface: String,
        /// Keep source addresses (the outside network then needs a return
        /// route to the overlay via this node).
        #[arg(long)]
        no_nat: bool,
    },
    /// Removes a node's egress gateway.
    Delete(NodeArg),
}

impl EgressCmd {
    pub async fn run(self, ctx: &Ctx) -> Outcome {
        let gw = ctx.client.gateways();
        match self {
            EgressCmd::Create {
                node,
                ranges,
                interface,
                no_nat,
            } => {
                let n = gw
                    .create_egress(pb::CreateEgressGatewayRequest {
                        node_id: node.id(ctx).await?,
                        ranges: csv(&ranges),
                        interface,
                        nat_enabled: Some(!no_nat),
                    })
                    .await?;
                show_one(ctx, &n, node_table);
            }
            EgressCmd::Delete(a) => {
                let id = a.id(ctx).await?;
                gw.delete_egress(&id).await?;
                done(ctx, format!("removed the egress gateway of node {id}"));
            }
        }
        Ok(())
    }
}

/// `meshctl ingress`.
#[derive(Subcommand)]
pub enum IngressCmd {
    /// Makes a node an ingress gateway for external clients.
    Create {
        #[command(flatten)]
        node: NodeArg,
        /// DNS servers for its clients (comma-separated); overrides the
        /// network's default.
        #[arg(long, value_name = "IP,...")]
        dns: Vec<String>,
    },
    /// Removes a node's ingress gateway.
    Delete {
        #[command(flatten)]
        node: NodeArg,
        /// Also delete the external clients that use it.
        #[arg(long)]
        force: bool,
    },
}

impl IngressCmd {
    pub async fn run(self, ctx: &Ctx) -> Outcome {
        let gw = ctx.client.gateways();
        match self {
            IngressCmd::Create { node, dns } => {
                let n = gw
                    .create_ingress(pb::CreateIngressGatewayRequest {
                        node_id: node.id(ctx).await?,
                        ext_client_dns: csv(&dns),
                    })
                    .await?;
                show_one(ctx, &n, node_table);
            }
            IngressCmd::Delete { node, force } => {
                let id = node.id(ctx).await?;
                gw.delete_ingress(&id, force).await?;
                done(ctx, format!("removed the ingress gateway of node {id}"));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- clients

/// A CLIENT argument.
#[derive(Args)]
pub struct ClientArg {
    /// The external client's id or name.
    #[arg(value_name = "CLIENT")]
    client: String,
    /// Network to look the name up in.
    #[arg(long)]
    network: Option<String>,
}

impl ClientArg {
    async fn get(&self, ctx: &Ctx) -> Result<pb::ExtClient, Failure> {
        resolve::ext_client(ctx, &self.client, self.network.as_deref()).await
    }
}

/// `meshctl extclient`.
#[derive(Subcommand)]
pub enum ExtClientCmd {
    /// Creates an external client on an ingress gateway.
    Create {
        /// The network.
        #[arg(long)]
        network: String,
        /// The ingress gateway node (id or name).
        #[arg(long, value_name = "NODE")]
        ingress: String,
        /// Its name (a DNS label); generated when missing.
        #[arg(long)]
        name: Option<String>,
        /// Its WireGuard public key; when missing the server generates a key
        /// pair and the config carries the private key.
        #[arg(long)]
        public_key: Option<String>,
        /// DNS servers for it (comma-separated).
        #[arg(long, value_name = "IP,...")]
        dns: Vec<String>,
    },
    /// Shows an external client.
    Get(ClientArg),
    /// Lists external clients.
    List {
        /// Only clients of this network.
        #[arg(long)]
        network: Option<String>,
        /// Only clients of this ingress node (id or name).
        #[arg(long, value_name = "NODE")]
        ingress: Option<String>,
    },
    /// Changes an external client.
    Update {
        #[command(flatten)]
        client: ClientArg,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// DNS servers (comma-separated; "" clears).
        #[arg(long, value_name = "IP,...")]
        dns: Option<Vec<String>>,
        /// Make it a peer of its gateway again.
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// Cut it off (keeps it and its address).
        #[arg(long)]
        disable: bool,
    },
    /// Deletes an external client.
    Delete(ClientArg),
    /// Prints the client's wg-quick config, or a QR code of it.
    Config {
        #[command(flatten)]
        client: ClientArg,
        /// Print a QR code for the WireGuard mobile app instead.
        #[arg(long)]
        qr: bool,
        /// Write the config to this file (mode 0600) instead of stdout.
        #[arg(long, value_name = "FILE", conflicts_with = "qr")]
        out: Option<PathBuf>,
    },
}

fn client_table(items: &[pb::ExtClient]) -> Table {
    let mut t = Table::new(&[
        "=ID",
        "NAME",
        "NETWORK",
        "ADDRESS",
        "ENABLED",
        "?ADDRESS6",
        "?DNS",
        "?STALE",
        "?INGRESS",
    ]);
    for c in items {
        t.row(vec![
            c.id.clone(),
            c.name.clone(),
            c.network.clone(),
            or_dash(&c.address),
            if c.enabled { "yes" } else { "no" }.into(),
            or_dash(&c.address6),
            list(&c.dns),
            if c.config_stale { "yes" } else { "no" }.into(),
            c.ingress_node_id.clone(),
        ]);
    }
    t
}

/// A QR code of `text` for a terminal (two rows per character line, with a
/// quiet zone, light on dark as phones scan best from a dark terminal).
pub fn qr(text: &str) -> Result<String, Failure> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(text.as_bytes())
        .map_err(|e| Failure::Local(format!("the config does not fit a QR code: {e}")))?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

/// Writes `text` to `path` with mode 0600 (replacing what is there).
pub fn write_private(path: &std::path::Path, text: &str) -> Result<(), Failure> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let fail = |e: std::io::Error| Failure::Local(format!("writing {}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    // An existing file keeps its mode on open: set it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(fail)?;
    f.write_all(text.as_bytes()).map_err(fail)
}

impl ExtClientCmd {
    pub async fn run(self, ctx: &Ctx) -> Outcome {
        let clients = ctx.client.ext_clients();
        match self {
            ExtClientCmd::Create {
                network,
                ingress,
                name,
                public_key,
                dns,
            } => {
                let c = clients
                    .create(pb::CreateExtClientRequest {
                        ingress_node_id: resolve::node_id(ctx, &ingress, Some(&network)).await?,
                        network,
                        name: name.unwrap_or_default(),
                        public_key: public_key.unwrap_or_default(),
                        dns: csv(&dns),
                    })
                    .await?;
                show_one(ctx, &c, client_table);
            }
            ExtClientCmd::Get(a) => show_one(ctx, &a.get(ctx).await?, client_table),
            ExtClientCmd::List { network, ingress } => {
                let ingress = match ingress {
                    Some(i) => Some(resolve::node_id(ctx, &i, network.as_deref()).await?),
                    None => None,
                };
                let all = clients
                    .list_all(network.as_deref(), ingress.as_deref())
                    .await?;
                show_list(ctx, &all, client_table);
            }
            ExtClientCmd::Update {
                client,
                name,
                dns,
                enable,
                disable,
            } => {
                let mut c = pb::ExtClient {
                    id: client.get(ctx).await?.id,
                    ..Default::default()
                };
                let mut fields = Vec::new();
                if let Some(v) = name {
                    c.name = v;
                    fields.push("name");
                }
                if let Some(v) = dns {
                    c.dns = csv(&v);
                    fields.push("dns");
                }
                if enable || disable {
                    c.enabled = enable;
                    fields.push("enabled");
                }
                if fields.is_empty() {
                    return Err(Failure::Usage(
                        "nothing to change: pass --name, --dns, --enable or --disable".into(),
                    ));
                }
                show_one(ctx, &clients.update(c, &fields).await?, client_table);
            }
            ExtClientCmd::Delete(a) => {
                let id = a.get(ctx).await?.id;
                clients.delete(&id).await?;
                done(ctx, format!("deleted external client {id}"));
            }
            ExtClientCmd::Config {
                client,
                qr: as_qr,
                out,
            } => {
                let id = client.get(ctx).await?.id;
                let r = clients.config(&id).await?;
                if as_qr {
                    print!("{}", qr(&r.config)?);
                } else if let Some(path) = out {
                    write_private(&path, &r.config)?;
                    eprintln!("wrote {}", path.display());
                } else {
                    match ctx.format {
                        Format::Table => print!("{}", r.config),
                        f => output::print_value(f, &output::to_json(&r)),
                    }
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- dns

/// `meshctl dns`.
#[derive(Subcommand)]
pub enum DnsCmd {
    /// Creates a custom name.
    Create {
        /// Name relative to the zone (e.g. "db" for db.<network>).
        name: String,
        /// The network (the zone).
        #[arg(long)]
        network: String,
        /// IPv4 address.
        #[arg(long)]
        address: Option<String>,
        /// IPv6 address.
        #[arg(long)]
        address6: Option<String>,
    },
    /// Lists a network's names.
    List {
        /// The network.
        #[arg(long)]
        network: String,
    },
    /// Deletes a custom name.
    Delete {
        /// The name.
        name: String,
        /// The network.
        #[arg(long)]
        network: String,
    },
    /// Prints the network's names as an /etc/hosts file.
    Hosts {
        /// The network.
        #[arg(long)]
        network: String,
    },
}

fn dns_table(items: &[pb::DnsEntry]) -> Table {
    let mut t = Table::new(&["NAME", "NETWORK", "ADDRESS", "?ADDRESS6", "?KIND"]);
    for e in items {
        let kind = pb::DnsEntryKind::try_from(e.kind)
            .map(|k| {
                k.as_str_name()
                    .trim_start_matches("DNS_ENTRY_KIND_")
                    .to_lowercase()
            })
            .unwrap_or_else(|_| e.kind.to_string());
        t.row(vec![
            e.name.clone(),
            e.network.clone(),
            or_dash(&e.address),
            or_dash(&e.address6),
            kind,
        ]);
    }
    t
}

impl DnsCmd {
    pub async fn run(self, ctx: &Ctx) -> Outcome {
        let dns = ctx.client.dns();
        match self {
            DnsCmd::Create {
                name,
                network,
                address,
                address6,
            } => {
                let e = dns
                    .create(pb::DnsEntry {
                        network,
                        name,
                        address: address.unwrap_or_default(),
                        address6: address6.unwrap_or_default(),
                        ..Default::default()
                    })
                    .await?;
                show_one(ctx, &e, dns_table);
            }
            DnsCmd::List { network } => show_list(ctx, &dns.list_all(&network).await?, dns_table),
            DnsCmd::Delete { name, network } => {
                dns.delete(&network, &name).await?;
                done(ctx, format!("deleted {name}.{network}"));
            }
            DnsCmd::Hosts { network } => {
                let content = dns.hosts_file(&network).await?;
                match ctx.format {
                    Format::Table => print!("{content}"),
                    f => output::print_value(
                        f,
                        &output::to_json(&pb::GetHostsFileResponse { content }),
                    ),
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- routes

/// `meshctl route`.
#[derive(Subcommand)]
pub enum RouteCmd {
    /// Explains the path a packet to IP takes.
    Get {
        /// Destination address.
        ip: String,
        /// Where the packet leaves from: a node or external client (id or
        /// name).
        #[arg(long, value_name = "NODE")]
        from: String,
        /// The network (default: the one of --from).
        #[arg(long)]
        network: Option<String>,
    },
}

impl RouteCmd {
    pub async fn run(self, ctx: &Ctx) -> Outcome {
        let RouteCmd::Get { ip, from, network } = self;
        let (id, net) = resolve::node_or_client(ctx, &from, network.as_deref()).await?;
        let r = ctx.client.gateways().explain_route(&net, &id, &ip).await?;
        match ctx.format {
            Format::Table => {
                println!(
                    "{ip} from {from}: {}",
                    if r.routable {
                        "routable"
                    } else {
                        "not routable"
                    }
                );
                for (i, h) in r.hops.iter().enumerate() {
                    let via = if h.matched_prefix.is_empty() {
                        String::new()
                    } else {
                        format!(" [matched {}]", h.matched_prefix)
                    };
                    println!("  {}. {}: {}{via}", i + 1, h.at, h.action);
                }
                if !r.egress_interface.is_empty() {
                    println!(
                        "  out of {} on node {}{}",
                        r.egress_interface,
                        r.egress_node_id,
                        if r.nat {
                            ", masqueraded"
                        } else {
                            ", source kept"
                        }
                    );
                }
                if !r.reason.is_empty() {
                    println!("  {}", r.reason);
                }
            }
            f => output::print_value(f, &output::to_json(&r)),
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- events

/// `meshctl events`.
#[derive(Subcommand)]
pub enum EventsCmd {
    /// Prints changes as they happen (one line, JSON object or YAML
    /// document each) until interrupted.
    Watch {
        /// Replay events after this revision first (default: only new ones).
        #[arg(long, default_value_t = 0, value_name = "REVISION")]
        after: u64,
        /// Only events of these networks (comma-separated or repeated).
        #[arg(long = "network", value_name = "NET")]
        networks: Vec<String>,
        /// Stop after this many events.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
    },
}

fn event_name(e: &pb::Event) -> String {
    use pb::event::Resource as R;
    match &e.resource {
        Some(R::Network(n)) => n.name.clone(),
        Some(R::Node(n)) => format!("{}/{}", n.network, n.name),
        Some(R::ExtClient(c)) => format!("{}/{}", c.network, c.name),
        Some(R::EnrollmentKey(k)) => list(&k.networks),
        Some(R::DnsEntry(d)) => format!("{}/{}", d.network, d.name),
        None => "-".into(),
    }
}

impl EventsCmd {
    pub async fn run(self, ctx: &Ctx) -> Outcome {
        let EventsCmd::Watch {
            after,
            networks,
            limit,
        } = self;
        let mut stream = ctx
            .client
            .events()
            .watch(pb::WatchEventsRequest {
                after_revision: after,
                networks: csv(&networks),
            })
            .await?;
        if ctx.format == Format::Table {
            println!(
                "{:<8}  {:<7}  {:<14}  {:<36}  {:<24}  TIME",
                "REVISION", "ACTION", "KIND", "ID", "NAME"
            );
        }
        let mut seen = 0u64;
        while limit.is_none_or(|l| seen < l) {
            let Some(e) = stream.next().await else { break };
            let e = e?;
            seen += 1;
            match ctx.format {
                Format::Table => {
                    let action = pb::EventAction::try_from(e.action)
                        .map(|a| {
                            a.as_str_name()
                                .trim_start_matches("EVENT_ACTION_")
                                .to_lowercase()
                        })
                        .unwrap_or_default();
                    println!(
                        "{:<8}  {:<7}  {:<14}  {:<36}  {:<24}  {}",
                        e.revision,
                        action,
                        e.kind,
                        e.id,
                        event_name(&e),
                        time(&e.event_time)
                    );
                }
                Format::Json => println!("{}", output::to_json(&e)),
                Format::Yaml => print!("---\n{}", output::yaml(&output::to_json(&e))),
            }
            std::io::stdout().flush().ok();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comma_lists_split_trim_and_drop_empties() {
        assert_eq!(
            csv(&["10.10.10.0/24, 0.0.0.0/0".into(), "::/0".into()]),
            ["10.10.10.0/24", "0.0.0.0/0", "::/0"]
        );
        assert!(csv(&["".into()]).is_empty());
    }

    #[test]
    fn expiry_takes_durations_and_times() {
        let now = chrono::Utc::now().timestamp();
        let t = parse_when("24h").ok().unwrap();
        assert!((t.seconds - now - 86400).abs() < 5);
        let t = parse_when("2030-01-02T03:04:05Z").ok().unwrap();
        assert_eq!(t.seconds, 1_893_553_445);
        assert!(parse_when("soon").is_err());
        assert!(parse_when("5w").is_err());
    }

    #[test]
    fn qr_codes_render_as_half_blocks() {
        let q = qr("[Interface]\nPrivateKey = x\n").ok().unwrap();
        let lines: Vec<&str> = q.lines().collect();
        assert!(lines.len() > 10);
        let w = lines[0].chars().count();
        assert!(lines.iter().all(|l| l.chars().count() == w));
        assert!(q.contains('▀') || q.contains('▄'));
    }
}
