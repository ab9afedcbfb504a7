//! Egress and ingress gateways.

use super::{Service, node::lock_node, node::node_event, txn};
use crate::domain::{
    Error, Result,
    event::{Action, Resource},
    gateway::{EgressInput, ingress, share_ranges},
    node::{Egress, Node},
    rules,
};
use crate::store::Clients;

/// Writes the gateways whose standby ranges [`share_ranges`] changed, each
/// with its event (before the write that made them change, so a range
/// always has a gateway routing it).
pub(super) async fn hand_over(tx: &mut dyn crate::store::Tx, changed: Vec<Node>) -> Result<()> {
    for mut n in changed {
        n.update_time = crate::domain::now();
        tx.update_node(&n).await?;
        node_event(tx, Action::Updated, &n).await?;
    }
    Ok(())
}

impl Service {
    /// CreateEgressGateway: validated against the node (its host's
    /// interfaces) and its network; a range another gateway of the network
    /// serves is shared only when both have a metric (checked under the
    /// network's lock; see [`share_ranges`]), ranges it stops being
    /// primary of go to the best other gateway.
    pub async fn create_egress(&self, node_id: &str, input: EgressInput) -> Result<(Node, Egress)> {
        self.write(async {
            txn!(self.committer, |tx| {
                let (net, mut node) = lock_node(&mut *tx, node_id).await?;
                let egress = input.clone().validate(&net, &node)?;
                let nodes = tx.network_nodes(net.name.as_str()).await?;
                let (egress, changed) = share_ranges(&nodes, node_id, Some(egress))?;
                let egress = egress.expect("an egress in, an egress out");
                hand_over(&mut *tx, changed).await?;
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

    /// Moves the primary of `range` in `network` from `from` to `to` (both
    /// serving it), when `from` still is its primary: the server's
    /// failover, written as the two gateways' events. False when nothing
    /// moved (another replica moved it first, or the gateways changed).
    pub async fn move_primary(
        &self,
        network: &str,
        range: ipnet::IpNet,
        from: &str,
        to: &str,
    ) -> Result<bool> {
        let network = network.to_owned();
        let (from, to) = (from.to_owned(), to.to_owned());
        self.write_if(
            async {
                txn!(self.committer, |tx| {
                    if tx.lock_network(&network).await?.is_none() {
                        return Ok(false);
                    }
                    let nodes = tx.network_nodes(&network).await?;
                    let find = |id: &str| {
                        nodes
                            .iter()
                            .find(|n| {
                                n.id == id
                                    && n.egress.as_ref().is_some_and(|e| e.ranges.contains(&range))
                            })
                            .cloned()
                    };
                    let (Some(mut old), Some(mut new)) = (find(&from), find(&to)) else {
                        return Ok(false);
                    };
                    let routes = |n: &Node| {
                        n.egress
                            .as_ref()
                            .is_some_and(|e| e.routed().any(|r| *r == range))
                    };
                    if !routes(&old) || routes(&new) {
                        return Ok(false);
                    }
                    if let Some(e) = new.egress.as_mut() {
                        e.standby.retain(|r| *r != range);
                    }
                    if let Some(e) = old.egress.as_mut() {
                        e.standby.push(range);
                        e.standby.sort();
                    }
                    // The new primary first: the range is never without one.
                    hand_over(&mut *tx, vec![new, old]).await?;
                    Ok(true)
                })
            },
            |moved| *moved,
        )
        .await
    }

    /// DeleteEgressGateway: the ranges it was primary of go to the best
    /// other gateway serving them.
    pub async fn delete_egress(&self, node_id: &str) -> Result<Node> {
        self.write(async {
            txn!(self.committer, |tx| {
                let (net, mut node) = lock_node(&mut *tx, node_id).await?;
                rules::is_egress(&node)?;
                let nodes = tx.network_nodes(net.name.as_str()).await?;
                hand_over(&mut *tx, share_ranges(&nodes, node_id, None)?.1).await?;
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
