//! DnsService: custom entries, the automatic names, the hosts file.

use tonic::{Request, Response, Status};

use meshplane_proto::v1::{self as pb, dns_service_server::DnsService};

use super::{
    AppState,
    error::{IntoStatus, required},
};
use crate::domain::{
    config::dns_for,
    dns::{DnsEntry, DnsEntryInput, DnsKind, hosts_file},
    names::DnsLabel,
    page::PageRequest,
};

/// The DnsService implementation.
pub struct Dns(pub AppState);

fn kind(k: DnsKind) -> pb::DnsEntryKind {
    match k {
        DnsKind::Custom => pb::DnsEntryKind::Custom,
        DnsKind::Node => pb::DnsEntryKind::Node,
        DnsKind::ExtClient => pb::DnsEntryKind::ExtClient,
    }
}

/// A domain entry as its proto message.
pub fn to_pb(e: &DnsEntry) -> pb::DnsEntry {
    pb::DnsEntry {
        network: e.network.to_string(),
        name: e.name.clone(),
        address: e.address.map(|a| a.to_string()).unwrap_or_default(),
        address6: e.address6.map(|a| a.to_string()).unwrap_or_default(),
        kind: kind(e.kind) as i32,
    }
}

fn network_name(field: &str, s: &str) -> Result<DnsLabel, Status> {
    DnsLabel::parse(field, s, DnsLabel::NETWORK_MAX)
        .map_err(|v| super::error::to_status(crate::domain::Error::InvalidArgument(vec![v])))
}

#[tonic::async_trait]
impl DnsService for Dns {
    #[tracing::instrument(skip_all, fields(network))]
    async fn create_dns_entry(
        &self,
        req: Request<pb::CreateDnsEntryRequest>,
    ) -> Result<Response<pb::DnsEntry>, Status> {
        let e = req.into_inner().entry.ok_or_else(|| required("entry"))?;
        tracing::Span::current().record("network", e.network.as_str());
        let entry = self
            .0
            .service
            .create_dns_entry(DnsEntryInput {
                network: e.network,
                name: e.name,
                address: e.address,
                address6: e.address6,
            })
            .await
            .status()?;
        tracing::info!(name = %entry.name, network = %entry.network, "DNS entry created");
        Ok(Response::new(to_pb(&entry)))
    }

    async fn list_dns_entries(
        &self,
        req: Request<pb::ListDnsEntriesRequest>,
    ) -> Result<Response<pb::ListDnsEntriesResponse>, Status> {
        let r = req.into_inner();
        let network = network_name("network", &r.network)?;
        let page = PageRequest::parse(r.page_size, &r.page_token).status()?;
        let view = self
            .0
            .service
            .network_view(network.as_str())
            .await
            .status()?;
        let mut all: Vec<pb::DnsEntry> = Vec::new();
        let entry = |name: &str,
                     a: Option<std::net::Ipv4Addr>,
                     a6: Option<std::net::Ipv6Addr>,
                     k| pb::DnsEntry {
            network: network.to_string(),
            name: name.to_owned(),
            address: a.map(|a| a.to_string()).unwrap_or_default(),
            address6: a6.map(|a| a.to_string()).unwrap_or_default(),
            kind: kind(k) as i32,
        };
        for e in &view.dns_entries {
            all.push(entry(&e.name, e.address, e.address6, DnsKind::Custom));
        }
        for n in &view.nodes {
            all.push(entry(n.name.as_str(), n.address, n.address6, DnsKind::Node));
        }
        for c in &view.ext_clients {
            all.push(entry(
                c.name.as_str(),
                c.address,
                c.address6,
                DnsKind::ExtClient,
            ));
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        let after = page.after.clone().unwrap_or_default();
        let rest: Vec<pb::DnsEntry> = all
            .into_iter()
            .filter(|e| e.name > after)
            .take(page.fetch_limit() as usize)
            .collect();
        let (entries, next_page_token) = page.finish(rest, |e| e.name.clone());
        Ok(Response::new(pb::ListDnsEntriesResponse {
            entries,
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(network))]
    async fn delete_dns_entry(
        &self,
        req: Request<pb::DeleteDnsEntryRequest>,
    ) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        let network = network_name("network", &r.network)?;
        let entry = self
            .0
            .service
            .delete_dns_entry(&network, &r.name)
            .await
            .status()?;
        tracing::info!(name = %entry.name, %network, "DNS entry deleted");
        Ok(Response::new(()))
    }

    async fn get_hosts_file(
        &self,
        req: Request<pb::GetHostsFileRequest>,
    ) -> Result<Response<pb::GetHostsFileResponse>, Status> {
        let network = network_name("network", &req.into_inner().network)?;
        let view = self
            .0
            .service
            .network_view(network.as_str())
            .await
            .status()?;
        let dns = dns_for(&view);
        Ok(Response::new(pb::GetHostsFileResponse {
            content: hosts_file(network.as_str(), dns.records.iter().map(|r| &**r)),
        }))
    }
}
