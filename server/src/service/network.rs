//! Networks.

use super::{Service, txn};
use crate::domain::{
    Error, Result,
    event::{Action, Resource},
    network::{Network, NetworkInput, NetworkPatch, check_no_overlap},
    rules,
};
use crate::store::Clients;

impl Service {
    /// CreateNetwork: a new name whose ranges overlap no other network's.
    pub async fn create_network(&self, input: NetworkInput) -> Result<Network> {
        let net = input.validate(crate::domain::now())?;
        self.write(async {
            txn!(self.committer, |tx| {
                let existing = tx.network_conflicts(&net).await?;
                if existing.iter().any(|n| n.name == net.name) {
                    return Err(Error::already_exists(
                        "network.name",
                        format!("network {:?} already exists", net.name.as_str()),
                    ));
                }
                check_no_overlap(&net, &existing)?;
                tx.insert_network(&net).await?;
                tx.append(Action::Created, &Resource::Network(net.clone()), true)
                    .await?;
                Ok(net.clone())
            })
        })
        .await
    }

    /// UpdateNetwork: the fields `mask` names (or every field set).
    pub async fn update_network(
        &self,
        name: &str,
        input: &NetworkInput,
        mask: &[String],
    ) -> Result<Network> {
        let patch = NetworkPatch::from_request(input, mask)?;
        self.write(async {
            txn!(self.committer, |tx| {
                let mut net = tx
                    .lock_network(name)
                    .await?
                    .ok_or_else(|| Error::not_found("network", name))?;
                patch.apply(&mut net, crate::domain::now())?;
                tx.update_network(&net).await?;
                let rev = tx
                    .append(Action::Updated, &Resource::Network(net.clone()), true)
                    .await?;
                // MTU, keepalive and DNS defaults are in every client's file.
                tx.set_client_revisions(Clients::OfNetwork(name), rev)
                    .await?;
                Ok(net)
            })
        })
        .await
    }

    /// DeleteNetwork; with `force`, everything in it too.
    pub async fn delete_network(&self, name: &str, force: bool) -> Result<()> {
        self.write(async {
            txn!(self.committer, |tx| {
                let net = tx
                    .lock_network(name)
                    .await?
                    .ok_or_else(|| Error::not_found("network", name))?;
                let nodes = tx.network_nodes(name).await?;
                rules::network_deletable(name, nodes.len(), force)?;
                // Nodes, clients, addresses, DNS entries and key memberships
                // go with it.
                tx.delete_network(name).await?;
                tx.append(Action::Deleted, &Resource::Network(net), false)
                    .await?;
                Ok(())
            })
        })
        .await
    }
}
