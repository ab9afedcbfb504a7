//! `meshctl extclient`: external clients and their configs.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use meshplane_sdk::proto as pb;

use super::{csv, done, show_list, show_one, write_private};
use crate::{
    Ctx, Failure, Outcome,
    output::{self, Format, Table, list, or_dash},
    resolve,
};

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
        /// Its tags, which policies select it by (comma-separated).
        #[arg(long, value_name = "TAG,...")]
        tags: Vec<String>,
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
        /// Its tags (comma-separated; "" clears).
        #[arg(long, value_name = "TAG,...")]
        tags: Option<Vec<String>>,
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
        "?TAGS",
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
            list(&c.tags),
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
                tags,
            } => {
                let c = clients
                    .create(pb::CreateExtClientRequest {
                        ingress_node_id: resolve::node_id(ctx, &ingress, Some(&network)).await?,
                        network,
                        name: name.unwrap_or_default(),
                        public_key: public_key.unwrap_or_default(),
                        dns: csv(&dns),
                        tags: csv(&tags),
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
                tags,
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
                if let Some(v) = tags {
                    c.tags = csv(&v);
                    fields.push("tags");
                }
                if fields.is_empty() {
                    return Err(Failure::Usage(
                        "nothing to change: pass --name, --dns, --enable, --disable or --tags"
                            .into(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
