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

/// Placeholder EventService.
pub struct PendingEventService;

#[tonic::async_trait]
impl event_service_server::EventService for PendingEventService {
    type WatchEventsStream = BoxStream<pb::Event>;
    async fn watch_events(
        &self,
        _: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        Err(pending(
            "EventService.WatchEvents",
            "event streaming (issue #5, Streaming)",
        ))
    }
}

/// Placeholder ExtClientService.
pub struct PendingExtClientService;

#[tonic::async_trait]
impl ext_client_service_server::ExtClientService for PendingExtClientService {
    async fn create_ext_client(
        &self,
        _: Request<pb::CreateExtClientRequest>,
    ) -> Result<Response<pb::ExtClient>, Status> {
        Err(pending(
            "ExtClientService.CreateExtClient",
            "external clients (issue #4, Gateways)",
        ))
    }
    async fn get_ext_client(
        &self,
        _: Request<pb::GetExtClientRequest>,
    ) -> Result<Response<pb::ExtClient>, Status> {
        Err(pending(
            "ExtClientService.GetExtClient",
            "external clients (issue #4, Gateways)",
        ))
    }
    async fn list_ext_clients(
        &self,
        _: Request<pb::ListExtClientsRequest>,
    ) -> Result<Response<pb::ListExtClientsResponse>, Status> {
        Err(pending(
            "ExtClientService.ListExtClients",
            "external clients (issue #4, Gateways)",
        ))
    }
    async fn update_ext_client(
        &self,
        _: Request<pb::UpdateExtClientRequest>,
    ) -> Result<Response<pb::ExtClient>, Status> {
        Err(pending(
            "ExtClientService.UpdateExtClient",
            "external clients (issue #4, Gateways)",
        ))
    }
    async fn delete_ext_client(
        &self,
        _: Request<pb::DeleteExtClientRequest>,
    ) -> Result<Response<()>, Status> {
        Err(pending(
            "ExtClientService.DeleteExtClient",
            "external clients (issue #4, Gateways)",
        ))
    }
    async fn get_ext_client_config(
        &self,
        _: Request<pb::GetExtClientConfigRequest>,
    ) -> Result<Response<pb::GetExtClientConfigResponse>, Status> {
        Err(pending(
            "ExtClientService.GetExtClientConfig",
            "external clients (issue #4, Gateways)",
        ))
    }
}

/// Placeholder GatewayService.
pub struct PendingGatewayService;

#[tonic::async_trait]
impl gateway_service_server::GatewayService for PendingGatewayService {
    async fn create_egress_gateway(
        &self,
        _: Request<pb::CreateEgressGatewayRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        Err(pending(
            "GatewayService.CreateEgressGateway",
            "gateways (issue #4, Gateways)",
        ))
    }
    async fn delete_egress_gateway(
        &self,
        _: Request<pb::DeleteEgressGatewayRequest>,
    ) -> Result<Response<()>, Status> {
        Err(pending(
            "GatewayService.DeleteEgressGateway",
            "gateways (issue #4, Gateways)",
        ))
    }
    async fn create_ingress_gateway(
        &self,
        _: Request<pb::CreateIngressGatewayRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        Err(pending(
            "GatewayService.CreateIngressGateway",
            "gateways (issue #4, Gateways)",
        ))
    }
    async fn delete_ingress_gateway(
        &self,
        _: Request<pb::DeleteIngressGatewayRequest>,
    ) -> Result<Response<()>, Status> {
        Err(pending(
            "GatewayService.DeleteIngressGateway",
            "gateways (issue #4, Gateways)",
        ))
    }
    async fn explain_route(
        &self,
        _: Request<pb::ExplainRouteRequest>,
    ) -> Result<Response<pb::ExplainRouteResponse>, Status> {
        Err(pending(
            "GatewayService.ExplainRoute",
            "gateways (issue #4, Gateways)",
        ))
    }
}
