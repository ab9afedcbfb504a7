//! `meshctl egress`: egress gateways.

use clap::Subcommand;
use meshplane_sdk::proto as pb;

use super::{csv, done, node::NodeArg, node::node_table, show_one};
use crate::{Ctx, Outcome};

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
        /// The node's interface that reaches them. Leave it out once the
        /// node's agent runs: the server then picks the interface the host
        /// routes the ranges through (and refuses a name the host lacks).
        #[arg(long, default_value = "")]
        interface: String,
        /// Keep source addresses (the outside network then needs a return
        /// route to the overlay via this node).
        #[arg(long)]
        no_nat: bool,
        /// Lets other gateways serve the same ranges (each with a metric;
        /// lower wins). It joins a range that has a primary as a standby.
        #[arg(long)]
        metric: Option<u32>,
        /// Never take a range back from a primary with a worse metric.
        #[arg(long)]
        no_preempt: bool,
        /// Seconds it must have been healthy before it takes a range back.
        #[arg(long, default_value_t = 0, value_name = "SECONDS")]
        hold: u32,
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
                metric,
                no_preempt,
                hold,
            } => {
                let n = gw
                    .create_egress(pb::CreateEgressGatewayRequest {
                        node_id: node.id(ctx).await?,
                        ranges: csv(&ranges),
                        interface,
                        nat_enabled: Some(!no_nat),
                        metric,
                        preempt: Some(!no_preempt),
                        hold_seconds: hold,
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
