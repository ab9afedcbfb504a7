//! `meshctl node`: nodes, their registration and the config each one
//! receives.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use meshplane_sdk::proto as pb;

use super::{csv, done, show_list, show_one};
use crate::{
    Ctx, Failure, Outcome,
    output::{self, Fields, Format, Table, list, or_dash, time},
    resolve,
};

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
        /// Its tags, which policies select it by (comma-separated; ""
        /// clears).
        #[arg(long, value_name = "TAG,...")]
        tags: Option<Vec<String>>,
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
    pub(super) async fn id(&self, ctx: &Ctx) -> Result<String, Failure> {
        resolve::node_id(ctx, &self.node, self.network.as_deref()).await
    }
}

/// A node's gateway roles in a few words, or `-`.
fn roles(n: &pb::Node) -> String {
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
    if roles.is_empty() {
        "-".into()
    } else {
        roles.join("; ")
    }
}

/// `applied/current`, with ` drifted` when the agent is behind.
fn revision(n: &pb::Node) -> String {
    format!(
        "{}/{}{}",
        n.applied_revision,
        n.config_revision,
        if n.drifted { " drifted" } else { "" }
    )
}

/// The agent's last apply error with its revision, or `-`.
fn apply_error(n: &pb::Node) -> String {
    match (n.apply_error.as_str(), n.failed_revision) {
        ("", _) => "-".into(),
        (e, 0) => e.into(),
        (e, r) => format!("revision {r}: {e}"),
    }
}

pub(super) fn node_table(items: &[pb::Node]) -> Table {
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
        "?APPLY ERROR",
    ]);
    for n in items {
        t.row(vec![
            n.id.clone(),
            n.name.clone(),
            n.network.clone(),
            or_dash(&n.address),
            roles(n),
            or_dash(&n.address6),
            or_dash(&n.endpoint),
            if n.connected { "yes" } else { "no" }.into(),
            revision(n),
            apply_error(n),
        ]);
    }
    t
}

/// One node, a field a line (`node get`): what the list shows, and what its
/// agent reported about the host.
fn node_fields(n: &pb::Node) -> Fields {
    let mut f = Fields::new();
    f.add("id", &n.id)
        .add("name", &n.name)
        .add("network", &n.network)
        .add("address", or_dash(&n.address))
        .add("address6", or_dash(&n.address6))
        .add("endpoint", or_dash(&n.endpoint))
        .add("listen port", n.listen_port.to_string())
        .add("public key", &n.public_key)
        .add("roles", roles(n))
        .add("tags", or_dash(&n.tags.join(",")))
        .add(
            "connected",
            match (n.connected, &n.last_seen) {
                (true, _) => "yes".to_string(),
                (false, None) => "no".to_string(),
                (false, seen) => format!("no (last seen {})", time(seen)),
            },
        )
        .add("revision", format!("{} (applied/current)", revision(n)))
        .add(
            "wireguard interface",
            if n.wireguard_interface.is_empty() {
                format!("- (not reported; configs name mp-{})", n.network)
            } else {
                n.wireguard_interface.clone()
            },
        );
    if !n.apply_error.is_empty() {
        f.add("apply error", apply_error(n));
    }
    match &n.host {
        Some(h) => {
            let ifaces: Vec<String> = h
                .interfaces
                .iter()
                .map(|i| format!("{}{}", i.name, if i.up { "" } else { " (down)" }))
                .collect();
            f.add("host interfaces", ifaces.join(", "));
            let default: Vec<String> = h
                .routes
                .iter()
                .filter(|r| r.destination == "0.0.0.0/0" || r.destination == "::/0")
                .map(|r| match r.gateway.as_str() {
                    "" => format!("{} dev {}", r.destination, r.interface),
                    gw => format!("{} via {gw} dev {}", r.destination, r.interface),
                })
                .collect();
            f.add(
                "host routes",
                format!(
                    "{} ({})",
                    h.routes.len(),
                    if default.is_empty() {
                        "no default route".to_string()
                    } else {
                        default.join("; ")
                    }
                ),
            );
            f.add("host reported", time(&h.report_time));
        }
        None => {
            f.add("host interfaces", "- (not reported)");
        }
    }
    f.add("os", or_dash(&n.os))
        .add("keepalive", n.persistent_keepalive.to_string())
        .add("created", time(&n.create_time))
        .add("updated", time(&n.update_time));
    f
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
                match ctx.format {
                    Format::Table => node_fields(&n).print(),
                    f => output::print_value(f, &output::to_json(&n)),
                }
            }
            NodeCmd::Update {
                node,
                name,
                endpoint,
                listen_port,
                keepalive,
                public_key,
                tags,
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
                if let Some(v) = tags {
                    n.tags = csv(&v);
                    fields.push("tags");
                }
                if fields.is_empty() {
                    return Err(Failure::Usage(
                        "nothing to change: pass --name, --endpoint, --listen-port, \
                         --keepalive, --public-key or --tags"
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reported() -> pb::Node {
        pb::Node {
            id: "n1".into(),
            name: "office".into(),
            network: "corp".into(),
            address: "10.101.0.2".into(),
            applied_revision: 2,
            config_revision: 3,
            drifted: true,
            wireguard_interface: "wg0".into(),
            apply_error: "iptables-restore: permission denied".into(),
            failed_revision: 3,
            host: Some(pb::HostReport {
                interfaces: vec![
                    pb::HostInterface {
                        name: "eth0".into(),
                        addresses: vec!["192.0.2.7/24".into()],
                        up: true,
                    },
                    pb::HostInterface {
                        name: "eth2".into(),
                        addresses: vec![],
                        up: false,
                    },
                ],
                routes: vec![pb::HostRoute {
                    destination: "0.0.0.0/0".into(),
                    interface: "eth0".into(),
                    gateway: "192.0.2.1".into(),
                }],
                report_time: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn node_get_shows_what_the_agent_reported() {
        let text = node_fields(&reported()).render(None);
        for want in [
            "id                   n1\n",
            "revision             2/3 drifted (applied/current)\n",
            "wireguard interface  wg0\n",
            "apply error          revision 3: iptables-restore: permission denied\n",
            "host interfaces      eth0, eth2 (down)\n",
            "host routes          1 (0.0.0.0/0 via 192.0.2.1 dev eth0)\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        let quiet = node_fields(&pb::Node {
            network: "corp".into(),
            ..Default::default()
        })
        .render(None);
        assert!(!quiet.contains("apply error"), "{quiet}");
        assert!(
            quiet.contains("wireguard interface  - (not reported; configs name mp-corp)\n"),
            "{quiet}"
        );
        assert!(quiet.contains("host interfaces      - (not reported)\n"));
    }

    #[test]
    fn node_list_has_an_optional_apply_error_column() {
        let t = node_table(&[reported()]);
        let wide = t.render(None);
        assert!(wide.lines().next().unwrap().ends_with("APPLY ERROR"));
        assert!(wide.contains("revision 3: iptables-restore: permission denied"));
        let narrow = t.render(Some(80));
        assert!(!narrow.contains("APPLY ERROR"), "{narrow}");
    }
}
