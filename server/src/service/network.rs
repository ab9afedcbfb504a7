//! Networks.

use super::Service;
use crate::domain::{
    Result,
    network::{Network, NetworkInput, NetworkPatch},
};

impl Service {
    /// CreateNetwork.
    pub async fn create_network(&self, input: NetworkInput) -> Result<Network> {
        let net = input.validate(crate::domain::now())?;
        self.write(self.store.create_network(&net)).await
    }

    /// UpdateNetwork: the fields `mask` names (or every field set).
    pub async fn update_network(
        &self,
        name: &str,
        input: &NetworkInput,
        mask: &[String],
    ) -> Result<Network> {
        let patch = NetworkPatch::from_request(input, mask)?;
        self.write(self.store.update_network(name, &patch)).await
    }

    /// DeleteNetwork; with `force`, everything in it too.
    pub async fn delete_network(&self, name: &str, force: bool) -> Result<()> {
        self.write(self.store.delete_network(name, force)).await
    }
}
