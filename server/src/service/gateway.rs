//! Egress and ingress gateways.

use super::Service;
use crate::domain::{
    Error, Result,
    gateway::{EgressInput, ingress},
    node::{Egress, Node},
};

impl Service {
    /// CreateEgressGateway: validated against the node and its network.
    pub async fn create_egress(&self, node_id: &str, input: EgressInput) -> Result<(Node, Egress)> {
        let node = self.store.get_node(node_id).await?;
        let net = self.store.get_network(node.network.as_str()).await?;
        let egress = input.validate(&net, &node)?;
        let node = self
            .write(self.store.set_egress(node_id, Some(&egress)))
            .await?;
        Ok((node, egress))
    }

    /// DeleteEgressGateway.
    pub async fn delete_egress(&self, node_id: &str) -> Result<Node> {
        self.write(self.store.set_egress(node_id, None)).await
    }

    /// CreateIngressGateway: only on a node external clients can reach.
    pub async fn create_ingress(&self, node_id: &str, ext_client_dns: &[String]) -> Result<Node> {
        let ingress = ingress(ext_client_dns)?;
        let node = self.store.get_node(node_id).await?;
        if node.endpoint.is_none() {
            return Err(Error::FailedPrecondition(format!(
                "node {:?} has no endpoint, so external clients could not reach it; set one \
                 with UpdateNode first",
                node.name.as_str()
            )));
        }
        self.write(self.store.set_ingress(node_id, Some(&ingress), false))
            .await
    }

    /// DeleteIngressGateway; with `force`, its external clients too.
    pub async fn delete_ingress(&self, node_id: &str, force: bool) -> Result<Node> {
        self.write(self.store.set_ingress(node_id, None, force))
            .await
    }
}
