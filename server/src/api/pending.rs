//! Services whose RPCs later issues implement: each answers UNIMPLEMENTED
//! naming what is missing, so clients get a clear answer meanwhile.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use meshplane_proto::v1::{self as pb, *};

fn pending(rpc: &str, what: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc} is not implemented yet: it lands with {what}"
    ))
}

/// A boxed server stream.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Placeholder DnsService.
pub struct PendingDnsService;

#[tonic::async_trait]
impl dns_service_server::DnsService for PendingDnsService {
    async fn create_dns_entry(
        &self,
        _: Request<pb::CreateDnsEntryRequest>,
    ) -> Result<Response<pb::DnsEntry>, Status> {
        Err(pending("DnsService.CreateDnsEntry", "DNS (issue #6, DNS)"))
    }
    async fn list_dns_entries(
        &self,
        _: Request<pb::ListDnsEntriesRequest>,
    ) -> Result<Response<pb::ListDnsEntriesResponse>, Status> {
        Err(pending("DnsService.ListDnsEntries", "DNS (issue #6, DNS)"))
    }
    async fn delete_dns_entry(
        &self,
        _: Request<pb::DeleteDnsEntryRequest>,
    ) -> Result<Response<()>, Status> {
        Err(pending("DnsService.DeleteDnsEntry", "DNS (issue #6, DNS)"))
    }
    async fn get_hosts_file(
        &self,
        _: Request<pb::GetHostsFileRequest>,
    ) -> Result<Response<pb::GetHostsFileResponse>, Status> {
        Err(pending("DnsService.GetHostsFile", "DNS (issue #6, DNS)"))
    }
}
