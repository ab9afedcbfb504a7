//! `meshctl ingress`: ingress gateways.

use clap::Subcommand;
use meshplane_sdk::proto as pb;

use super::{csv, done, node::NodeArg, node::node_table, show_one};
use crate::{Ctx, Outcome};

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
