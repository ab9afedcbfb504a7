//! `meshctl network`: networks and their defaults.

use clap::{Args, Subcommand};
use meshplane_sdk::proto as pb;

use super::{csv, done, show_list, show_one};
use crate::{
    Ctx, Failure, Outcome,
    output::{Table, list, or_dash, time},
};

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
