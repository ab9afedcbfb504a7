//! External clients.

use super::Service;
use crate::domain::{
    Result,
    crypto::PrivateKey,
    ext_client::{ExtClient, ExtClientInput, ExtClientPatch},
    wgquick,
};

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
        };
        self.write(self.store.create_ext_client(&client)).await
    }

    /// UpdateExtClient: the fields `mask` names.
    pub async fn update_ext_client(
        &self,
        id: &str,
        name: &str,
        dns: &[String],
        enabled: bool,
        mask: &[String],
    ) -> Result<ExtClient> {
        let patch = ExtClientPatch::from_request(name, dns, enabled, mask)?;
        self.write(self.store.update_ext_client(id, &patch)).await
    }

    /// DeleteExtClient: frees its addresses.
    pub async fn delete_ext_client(&self, id: &str) -> Result<ExtClient> {
        self.write(self.store.delete_ext_client(id)).await
    }

    /// GetExtClientConfig: the client's wg-quick file and the revision it is
    /// stamped with; records the download (no event: nothing to wake).
    pub async fn ext_client_config(&self, id: &str) -> Result<(String, u64)> {
        let client = self.store.get_ext_client(id).await?;
        let view = self.store.network_view(client.network.as_str()).await?;
        // Render from the same snapshot as the revision it is stamped with.
        let client = view
            .ext_clients
            .iter()
            .find(|c| c.id == id)
            .cloned()
            .unwrap_or(client);
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
