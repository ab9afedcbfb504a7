//! NetworkService: decode, call the service, encode.

use tonic::{Request, Response, Status};

use meshplane_proto::v1::{self as pb, network_service_server::NetworkService};

use super::{
    AppState,
    convert::{ips, ts},
    error::{IntoStatus, required},
};
use crate::domain::{
    network::{Network, NetworkInput},
    page::PageRequest,
};

/// The NetworkService implementation.
pub struct Networks(pub AppState);

fn input(n: pb::Network) -> NetworkInput {
    NetworkInput {
        name: n.name,
        address_range: n.address_range,
        address_range6: n.address_range6,
        keepalive: n.default_keepalive,
        mtu: n.default_mtu,
        listen_port: n.default_listen_port,
        ext_client_dns: n.default_ext_client_dns,
        nameservers: n.nameservers,
    }
}

/// A domain network as its proto message.
pub fn to_pb(n: &Network) -> pb::Network {
    pb::Network {
        name: n.name.to_string(),
        address_range: n.range4.map(|r| r.to_string()).unwrap_or_default(),
        address_range6: n.range6.map(|r| r.to_string()).unwrap_or_default(),
        default_keepalive: n.keepalive,
        default_mtu: n.mtu,
        default_listen_port: n.listen_port,
        default_ext_client_dns: ips(&n.ext_client_dns),
        nameservers: ips(&n.nameservers),
        create_time: ts(n.create_time),
        update_time: ts(n.update_time),
    }
}

#[tonic::async_trait]
impl NetworkService for Networks {
    #[tracing::instrument(skip_all, fields(network))]
    async fn create_network(
        &self,
        req: Request<pb::CreateNetworkRequest>,
    ) -> Result<Response<pb::Network>, Status> {
        let n = req
            .into_inner()
            .network
            .ok_or_else(|| required("network"))?;
        tracing::Span::current().record("network", n.name.as_str());
        let net = self.0.service.create_network(input(n)).await.status()?;
        tracing::info!(network = %net.name, "network created");
        Ok(Response::new(to_pb(&net)))
    }

    async fn get_network(
        &self,
        req: Request<pb::GetNetworkRequest>,
    ) -> Result<Response<pb::Network>, Status> {
        let name = req.into_inner().name;
        if name.is_empty() {
            return Err(required("name"));
        }
        let net = self.0.service.get_network(&name).await.status()?;
        Ok(Response::new(to_pb(&net)))
    }

    async fn list_networks(
        &self,
        req: Request<pb::ListNetworksRequest>,
    ) -> Result<Response<pb::ListNetworksResponse>, Status> {
        let r = req.into_inner();
        let page = PageRequest::parse(r.page_size, &r.page_token).status()?;
        let nets = self.0.service.list_networks(&page).await.status()?;
        let (nets, next_page_token) = page.finish(nets, |n| n.name.to_string());
        Ok(Response::new(pb::ListNetworksResponse {
            networks: nets.iter().map(to_pb).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(network))]
    async fn update_network(
        &self,
        req: Request<pb::UpdateNetworkRequest>,
    ) -> Result<Response<pb::Network>, Status> {
        let r = req.into_inner();
        let n = r.network.ok_or_else(|| required("network"))?;
        if n.name.is_empty() {
            return Err(required("network.name"));
        }
        tracing::Span::current().record("network", n.name.as_str());
        let mask = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let name = n.name.clone();
        let net = self
            .0
            .service
            .update_network(&name, &input(n), &mask)
            .await
            .status()?;
        tracing::info!(network = %net.name, "network updated");
        Ok(Response::new(to_pb(&net)))
    }

    #[tracing::instrument(skip_all, fields(network))]
    async fn delete_network(
        &self,
        req: Request<pb::DeleteNetworkRequest>,
    ) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        if r.name.is_empty() {
            return Err(required("name"));
        }
        tracing::Span::current().record("network", r.name.as_str());
        self.0
            .service
            .delete_network(&r.name, r.force)
            .await
            .status()?;
        tracing::info!(network = %r.name, force = r.force, "network deleted");
        Ok(Response::new(()))
    }
}
