//! External clients.

use super::{Service, node::allocate, txn};
use crate::domain::{
    Error, Result,
    crypto::PrivateKey,
    event::{Action, Resource},
    ext_client::{ExtClient, ExtClientInput, ExtClientPatch},
    rules::{self, Owner},
    wgquick,
};
use crate::store::Clients;

/// Appends a client's event; returns its revision.
async fn client_event(
    tx: &mut dyn crate::store::Tx,
    action: Action,
    c: &ExtClient,
    config: bool,
) -> Result<u64> {
    tx.append(action, &Resource::ExtClient(Box::new(c.clone())), config)
        .await
}

impl Service {
    /// CreateExtClient: with the caller's public key, or a key pair generated
    /// here whose private half is stored sealed.
    pub async fn create_ext_client(&self, input: ExtClientInput) -> Result<ExtClient> {
        let new = input.validate()?;
        let id = uuid::Uuid::new_v4().to_string();
        let (public_key, sealed) = match new.public_key {
            Some(k) => (k, None),
            None => {
                let private = PrivateKey::generate();
                (private.public_key(), Some(self.sealer.seal(&id, &private)))
            }
        };
        let now = crate::domain::now();
        let client = ExtClient {
            id,
            network: new.network,
            name: new.name,
            ingress_node_id: new.ingress_node_id,
            public_key,
            sealed_private_key: sealed,
            address: None,
            address6: None,
            dns: new.dns,
            enabled: true,
            config_revision: 0,
            downloaded_revision: 0,
            create_time: now,
            update_time: now,
            tags: new.tags,
        };
        let network = client.network.as_str();
        self.write(async {
            txn!(self.committer, |tx| {
                let net = tx
                    .lock_network(network)
                    .await?
                    .ok_or_else(|| Error::not_found("network", network))?;
                let ingress = tx
                    .node(&client.ingress_node_id)
                    .await?
                    .ok_or_else(|| Error::not_found("node", &client.ingress_node_id))?;
                rules::ingress_usable(&client, &ingress)?;
                let (name_owner, key_owner) = tx
                    .owners(network, client.name.as_str(), &client.public_key)
                    .await?;
                rules::name_free("name", network, &client.name, name_owner, None)?;
                rules::key_free("public_key", network, &client.public_key, key_owner, None)?;
                let mut c = client.clone();
                (c.address, c.address6) =
                    allocate(&mut *tx, &net, &Owner::ExtClient(c.id.clone())).await?;
                tx.insert_ext_client(&c).await?;
                c.config_revision = client_event(&mut *tx, Action::Created, &c, true).await?;
                tx.set_client_revisions(Clients::One(&c.id), c.config_revision)
                    .await?;
                Ok(c)
            })
        })
        .await
    }

    /// UpdateExtClient: the fields `mask` names.
    pub async fn update_ext_client(
        &self,
        id: &str,
        name: &str,
        dns: &[String],
        enabled: bool,
        tags: &[String],
        mask: &[String],
    ) -> Result<ExtClient> {
        let patch = ExtClientPatch::from_request(name, dns, enabled, tags, mask)?;
        self.write(async {
            txn!(self.committer, |tx| {
                let not_found = || Error::not_found("external client", id);
                let network = tx.ext_client(id).await?.ok_or_else(not_found)?.network;
                let network = network.as_str();
                tx.lock_network(network).await?.ok_or_else(not_found)?;
                let mut c = tx.ext_client(id).await?.ok_or_else(not_found)?;
                if let Some(name) = &patch.name {
                    let owner = tx.name_owner(network, name.as_str()).await?;
                    rules::name_free("ext_client.name", network, name, owner, Some(id))?;
                }
                let network_sees = patch.changes_network(&c);
                patch.apply(&mut c, crate::domain::now());
                tx.update_ext_client(&c).await?;
                c.config_revision =
                    client_event(&mut *tx, Action::Updated, &c, network_sees).await?;
                tx.set_client_revisions(Clients::One(id), c.config_revision)
                    .await?;
                Ok(c)
            })
        })
        .await
    }

    /// DeleteExtClient: frees its addresses.
    pub async fn delete_ext_client(&self, id: &str) -> Result<ExtClient> {
        self.write(async {
            txn!(self.committer, |tx| {
                let not_found = || Error::not_found("external client", id);
                let network = tx.ext_client(id).await?.ok_or_else(not_found)?.network;
                tx.lock_network(network.as_str())
                    .await?
                    .ok_or_else(not_found)?;
                let c = tx.ext_client(id).await?.ok_or_else(not_found)?;
                tx.free_addresses(id).await?;
                tx.delete_ext_client(id).await?;
                client_event(&mut *tx, Action::Deleted, &c, true).await?;
                Ok(c)
            })
        })
        .await
    }

    /// GetExtClientConfig: the client's wg-quick file and the revision it is
    /// stamped with; records the download (no event: nothing to wake).
    pub async fn ext_client_config(&self, id: &str) -> Result<(String, u64)> {
        // The client as stored (its config revision is the store's), then
        // the hub's state of its network, caught up after that read, so the
        // nodes it renders are at least as new as the revision stamped.
        let client = self.get_ext_client(id).await?;
        let view = self.network_view(client.network.as_str()).await?;
        let private = client
            .sealed_private_key
            .as_ref()
            .map(|s| self.sealer.open(&client.id, s))
            .transpose()?;
        let config = wgquick::render(&view.network, &view.nodes, &client, private.as_ref())?;
        self.store
            .mark_downloaded(id, client.config_revision)
            .await?;
        Ok((config, client.config_revision))
    }
}
