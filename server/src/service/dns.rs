//! Custom DNS entries.

use super::{Service, txn};
use crate::domain::{
    Error, Result,
    dns::{DnsEntry, DnsEntryInput, parse_relative_name},
    event::{Action, Resource},
    names::DnsLabel,
    rules,
};

impl Service {
    /// CreateDnsEntry: a name no node, client or other entry of the zone
    /// holds.
    pub async fn create_dns_entry(&self, input: DnsEntryInput) -> Result<DnsEntry> {
        let entry = input.validate(crate::domain::now())?;
        let network = entry.network.as_str();
        self.write(async {
            txn!(self.committer, |tx| {
                if tx.lock_network(network).await?.is_none() {
                    return Err(Error::not_found("network", network));
                }
                let owner = tx.name_owner(network, &entry.name).await?;
                rules::custom_entry_free(network, &entry.name, owner)?;
                tx.insert_dns_entry(&entry).await?;
                tx.append(Action::Created, &Resource::DnsEntry(entry.clone()), true)
                    .await?;
                Ok(entry.clone())
            })
        })
        .await
    }

    /// DeleteDnsEntry: `name` relative to the network's zone or inside it;
    /// only custom entries (automatic names go with their owner).
    pub async fn delete_dns_entry(&self, network: &DnsLabel, name: &str) -> Result<DnsEntry> {
        let name = parse_relative_name("name", name, network.as_str())
            .map_err(|v| Error::InvalidArgument(vec![v]))?;
        let network = network.as_str();
        self.write(async {
            txn!(self.committer, |tx| {
                if tx.lock_network(network).await?.is_none() {
                    return Err(Error::not_found("network", network));
                }
                let owner = tx.name_owner(network, &name).await?;
                rules::custom_entry_deletable(network, &name, owner)?;
                let entry = tx
                    .dns_entry(network, &name)
                    .await?
                    .ok_or_else(|| Error::not_found("DNS entry", format!("{name}.{network}")))?;
                tx.delete_dns_entry(network, &name).await?;
                tx.append(Action::Deleted, &Resource::DnsEntry(entry.clone()), true)
                    .await?;
                Ok(entry)
            })
        })
        .await
    }
}
