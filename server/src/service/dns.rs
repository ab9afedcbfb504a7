//! Custom DNS entries.

use super::Service;
use crate::domain::{
    Error, Result,
    dns::{DnsEntry, DnsEntryInput, parse_relative_name},
    names::DnsLabel,
};

impl Service {
    /// CreateDnsEntry.
    pub async fn create_dns_entry(&self, input: DnsEntryInput) -> Result<DnsEntry> {
        let entry = input.validate(crate::domain::now())?;
        self.write(self.store.create_dns_entry(&entry)).await
    }

    /// DeleteDnsEntry: `name` relative to the network's zone or inside it.
    pub async fn delete_dns_entry(&self, network: &DnsLabel, name: &str) -> Result<DnsEntry> {
        let name = parse_relative_name("name", name, network.as_str())
            .map_err(|v| Error::InvalidArgument(vec![v]))?;
        self.write(self.store.delete_dns_entry(network.as_str(), &name))
            .await
    }
}
