//! `meshctl route`: the path a packet takes.

use clap::Subcommand;

use crate::{
    Ctx, Outcome,
    output::{self, Format},
    resolve,
};

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
                if !r.policy.is_empty() {
                    println!("  {}", r.policy);
                }
            }
            f => output::print_value(f, &output::to_json(&r)),
        }
        Ok(())
    }
}
