//! ExtClientService.

use tonic::{Request, Response, Status};

use meshplane_proto::v1::{self as pb, ext_client_service_server::ExtClientService};

use super::{
    AppState,
    convert::{ips, ts},
    error::{IntoStatus, required},
};
use crate::domain::{
    ext_client::{ExtClient, ExtClientInput},
    page::PageRequest,
};

/// The ExtClientService implementation.
pub struct ExtClients(pub AppState);

/// A domain client as its proto message.
pub fn to_pb(c: &ExtClient) -> pb::ExtClient {
    pb::ExtClient {
        id: c.id.clone(),
        network: c.network.to_string(),
        name: c.name.to_string(),
        ingress_node_id: c.ingress_node_id.clone(),
        public_key: c.public_key.to_string(),
        address: c.address.map(|a| a.to_string()).unwrap_or_default(),
        address6: c.address6.map(|a| a.to_string()).unwrap_or_default(),
        dns: ips(&c.dns),
        enabled: c.enabled,
        config_revision: c.config_revision,
        config_stale: c.config_stale(),
        create_time: ts(c.create_time),
        update_time: ts(c.update_time),
        tags: c.tags.iter().map(ToString::to_string).collect(),
    }
}

#[tonic::async_trait]
impl ExtClientService for ExtClients {
    #[tracing::instrument(skip_all, fields(network))]
    async fn create_ext_client(
        &self,
        req: Request<pb::CreateExtClientRequest>,
    ) -> Result<Response<pb::ExtClient>, Status> {
        let r = req.into_inner();
        tracing::Span::current().record("network", r.network.as_str());
        let client = self
            .0
            .service
            .create_ext_client(ExtClientInput {
                network: r.network,
                ingress_node_id: r.ingress_node_id,
                name: r.name,
                public_key: r.public_key,
                dns: r.dns,
                tags: r.tags,
            })
            .await
            .status()?;
        tracing::info!(client = %client.id, name = %client.name, "external client created");
        Ok(Response::new(to_pb(&client)))
    }

    async fn get_ext_client(
        &self,
        req: Request<pb::GetExtClientRequest>,
    ) -> Result<Response<pb::ExtClient>, Status> {
        let id = req.into_inner().id;
        if id.is_empty() {
            return Err(required("id"));
        }
        let c = self.0.service.get_ext_client(&id).await.status()?;
        Ok(Response::new(to_pb(&c)))
    }

    async fn list_ext_clients(
        &self,
        req: Request<pb::ListExtClientsRequest>,
    ) -> Result<Response<pb::ListExtClientsResponse>, Status> {
        let r = req.into_inner();
        let page = PageRequest::parse(r.page_size, &r.page_token).status()?;
        let clients = self
            .0
            .service
            .list_ext_clients(
                super::network_filter("network", &r.network)?.as_deref(),
                (!r.ingress_node_id.is_empty()).then_some(r.ingress_node_id.as_str()),
                &page,
            )
            .await
            .status()?;
        let (clients, next_page_token) =
            page.finish(clients, |c| format!("{}/{}", c.network, c.name));
        Ok(Response::new(pb::ListExtClientsResponse {
            ext_clients: clients.iter().map(to_pb).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(client))]
    async fn update_ext_client(
        &self,
        req: Request<pb::UpdateExtClientRequest>,
    ) -> Result<Response<pb::ExtClient>, Status> {
        let r = req.into_inner();
        let c = r.ext_client.ok_or_else(|| required("ext_client"))?;
        if c.id.is_empty() {
            return Err(required("ext_client.id"));
        }
        let mask = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let c = self
            .0
            .service
            .update_ext_client(&c.id, &c.name, &c.dns, c.enabled, &c.tags, &mask)
            .await
            .status()?;
        tracing::info!(client = %c.id, enabled = c.enabled, "external client updated");
        Ok(Response::new(to_pb(&c)))
    }

    #[tracing::instrument(skip_all, fields(client))]
    async fn delete_ext_client(
        &self,
        req: Request<pb::DeleteExtClientRequest>,
    ) -> Result<Response<()>, Status> {
        let id = req.into_inner().id;
        if id.is_empty() {
            return Err(required("id"));
        }
        self.0.service.delete_ext_client(&id).await.status()?;
        tracing::info!(client = %id, "external client deleted");
        Ok(Response::new(()))
    }

    async fn get_ext_client_config(
        &self,
        req: Request<pb::GetExtClientConfigRequest>,
    ) -> Result<Response<pb::GetExtClientConfigResponse>, Status> {
        let id = req.into_inner().id;
        if id.is_empty() {
            return Err(required("id"));
        }
        let (config, revision) = self.0.service.ext_client_config(&id).await.status()?;
        Ok(Response::new(pb::GetExtClientConfigResponse {
            config,
            revision,
        }))
    }
}
