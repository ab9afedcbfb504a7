//! Egress and ingress gateways.

use super::{Service, node::lock_node, node::node_event, txn};
use crate::domain::{
    Error, Result,
    event::{Action, Resource},
    gateway::{EgressInput, check_egress_unique, ingress},
    node::{Egress, Node},
    rules,
};
use crate::store::Clients;

impl Service {
    /// CreateEgressGateway: validated against the node (its host's
    /// interfaces) and its network; no other gateway of the network may
    /// serve one of the ranges (checked under the network's lock).
    pub async fn create_egress(&self, node_id: &str, input: EgressInput) -> Result<(Node, Egress)> {
        self.write(async {
            txn!(self.committer, |tx| {
                let (net, mut node) = lock_node(&mut *tx, node_id).await?;
                let egress = input.clone().validate(&net, &node)?;
                let nodes = tx.network_nodes(net.name.as_str()).await?;
                check_egress_unique(&nodes, node_id, &egress)?;
                node.egress = Some(egress.clone());
                node.update_time = crate::domain::now();
                tx.update_node(&node).await?;
                node.config_revision = node_event(&mut *tx, Action::Updated, &node).await?;
                // Egress ranges are in every client's AllowedIPs.
                tx.set_client_revisions(
                    Clients::OfNetwork(net.name.as_str()),
                    node.config_revision,
                )
                .await?;
                Ok((node, egress))
            })
        })
        .await
    }

    /// DeleteEgressGateway.
    pub async fn delete_egress(&self, node_id: &str) -> Result<Node> {
        self.write(async {
            txn!(self.committer, |tx| {
                let (net, mut node) = lock_node(&mut *tx, node_id).await?;
                rules::is_egress(&node)?;
                node.egress = None;
                node.update_time = crate::domain::now();
                tx.update_node(&node).await?;
                node.config_revision = node_event(&mut *tx, Action::Updated, &node).await?;
                tx.set_client_revisions(
                    Clients::OfNetwork(net.name.as_str()),
                    node.config_revision,
                )
                .await?;
                Ok(node)
            })
        })
        .await
    }

    /// CreateIngressGateway: only on a node external clients can reach.
    pub async fn create_ingress(&self, node_id: &str, ext_client_dns: &[String]) -> Result<Node> {
        let ingress = ingress(ext_client_dns)?;
        self.write(async {
            txn!(self.committer, |tx| {
                let (_, mut node) = lock_node(&mut *tx, node_id).await?;
                if node.endpoint.is_none() {
                    return Err(Error::FailedPrecondition(format!(
                        "node {:?} has no endpoint, so external clients could not reach it; set \
                         one with UpdateNode first",
                        node.name.as_str()
                    )));
                }
                node.ingress = Some(ingress.clone());
                node.update_time = crate::domain::now();
                tx.update_node(&node).await?;
                node.config_revision = node_event(&mut *tx, Action::Updated, &node).await?;
                // The gateway's DNS is in its clients' files.
                tx.set_client_revisions(Clients::OfIngress(node_id), node.config_revision)
                    .await?;
                Ok(node)
            })
        })
        .await
    }

    /// DeleteIngressGateway; with `force`, its external clients too.
    pub async fn delete_ingress(&self, node_id: &str, force: bool) -> Result<Node> {
        self.write(async {
            txn!(self.committer, |tx| {
                let (_, mut node) = lock_node(&mut *tx, node_id).await?;
                let clients = tx.ext_clients_of(node_id).await?;
                rules::ingress_removable(&node, clients.len(), force)?;
                for c in &clients {
                    tx.free_addresses(&c.id).await?;
                    tx.delete_ext_client(&c.id).await?;
                }
                node.ingress = None;
                node.update_time = crate::domain::now();
                tx.update_node(&node).await?;
                for c in clients {
                    tx.append(Action::Deleted, &Resource::ExtClient(Box::new(c)), true)
                        .await?;
                }
                node_event(&mut *tx, Action::Updated, &node)
                    .await
                    .map(|rev| {
                        node.config_revision = rev;
                        node
                    })
            })
        })
        .await
    }
}
