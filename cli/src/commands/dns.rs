//! `meshctl dns`: names in a network's zone.

use clap::Subcommand;
use meshplane_sdk::proto as pb;

use super::{done, show_list, show_one};
use crate::{
    Ctx, Outcome,
    output::{self, Format, Table, or_dash},
};

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
