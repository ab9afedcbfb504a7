//! NodeService and the node's proto form.

use tonic::{Request, Response, Status};

use meshplane_proto::v1::{self as pb, node_service_server::NodeService};

use crate::hub::Hub;

use super::{
    AppState,
    convert::{ips, ts},
    error::{IntoStatus, required},
};
use crate::domain::{
    host::HostReport,
    node::{Node, NodeUpdateInput},
    page::PageRequest,
};

/// The NodeService implementation.
pub struct Nodes(pub AppState);

/// A domain node as its proto message, with what the hub knows of it: its
/// current config revision and whether its agent holds a stream open.
pub fn to_pb(n: &Node, hub: &Hub) -> pb::Node {
    // Writes bring the hub up to date before they answer, and reads catch
    // up first: the hub's revision is the node's.
    let config_revision = hub.node_revision(&n.id).unwrap_or(n.config_revision);
    pb::Node {
        id: n.id.clone(),
        network: n.network.to_string(),
        name: n.name.to_string(),
        public_key: n.public_key.to_string(),
        endpoint: n
            .endpoint
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        listen_port: n.listen_port.into(),
        address: n.address.map(|a| a.to_string()).unwrap_or_default(),
        address6: n.address6.map(|a| a.to_string()).unwrap_or_default(),
        os: n.os.clone(),
        egress: n.egress.as_ref().map(|e| pb::EgressGateway {
            ranges: e.ranges.iter().map(ToString::to_string).collect(),
            interface: e.interface.clone(),
            nat_enabled: e.nat,
            metric: e.metric,
            preempt: e.preempt,
            hold_seconds: e.hold_seconds,
            standby_ranges: e.standby.iter().map(ToString::to_string).collect(),
        }),
        ingress: n.ingress.as_ref().map(|i| pb::IngressGateway {
            ext_client_dns: ips(&i.ext_client_dns),
        }),
        connected: hub.connected(&n.id),
        last_seen: n.last_seen.and_then(ts),
        applied_revision: n.applied_revision,
        config_revision,
        // A node that never reported has applied nothing yet: not drift.
        drifted: n.last_seen.is_some() && n.applied_revision < config_revision,
        persistent_keepalive: n.keepalive,
        create_time: ts(n.create_time),
        update_time: ts(n.update_time),
        wireguard_interface: n.wireguard_interface.clone().unwrap_or_default(),
        host: n.host.as_ref().map(host_to_pb),
        apply_error: n.apply_error.clone().unwrap_or_default(),
        failed_revision: n.failed_revision,
        tags: n.tags.iter().map(ToString::to_string).collect(),
    }
}

/// A host report as its proto message.
fn host_to_pb(h: &HostReport) -> pb::HostReport {
    pb::HostReport {
        interfaces: h
            .interfaces
            .iter()
            .map(|i| pb::HostInterface {
                name: i.name.clone(),
                addresses: i.addresses.iter().map(ToString::to_string).collect(),
                up: i.up,
            })
            .collect(),
        routes: h
            .routes
            .iter()
            .map(|r| pb::HostRoute {
                destination: r.destination.to_string(),
                interface: r.interface.clone(),
                gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
            })
            .collect(),
        report_time: ts(h.report_time),
    }
}

#[tonic::async_trait]
impl NodeService for Nodes {
    async fn get_node(
        &self,
        req: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let id = req.into_inner().id;
        if id.is_empty() {
            return Err(required("id"));
        }
        let node = self.0.service.get_node(&id).await.status()?;
        self.0.hub.catch_up().await.status()?;
        Ok(Response::new(to_pb(&node, &self.0.hub)))
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let r = req.into_inner();
        let page = PageRequest::parse(r.page_size, &r.page_token).status()?;
        let network = super::network_filter("network", &r.network)?;
        let nodes = self
            .0
            .service
            .list_nodes(network.as_deref(), &page)
            .await
            .status()?;
        self.0.hub.catch_up().await.status()?;
        let (nodes, next_page_token) = page.finish(nodes, |n| format!("{}/{}", n.network, n.name));
        Ok(Response::new(pb::ListNodesResponse {
            nodes: nodes.iter().map(|n| to_pb(n, &self.0.hub)).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(node))]
    async fn update_node(
        &self,
        req: Request<pb::UpdateNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let r = req.into_inner();
        let n = r.node.ok_or_else(|| required("node"))?;
        if n.id.is_empty() {
            return Err(required("node.id"));
        }
        tracing::Span::current().record("node", n.id.as_str());
        let mask = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let input = NodeUpdateInput {
            name: n.name,
            endpoint: n.endpoint,
            listen_port: n.listen_port,
            keepalive: n.persistent_keepalive,
            public_key: n.public_key,
            tags: n.tags,
        };
        let node = self
            .0
            .service
            .update_node(&n.id, &input, &mask)
            .await
            .status()?;
        tracing::info!(node = %node.id, "node updated");
        Ok(Response::new(to_pb(&node, &self.0.hub)))
    }

    #[tracing::instrument(skip_all, fields(node))]
    async fn delete_node(
        &self,
        req: Request<pb::DeleteNodeRequest>,
    ) -> Result<Response<()>, Status> {
        let id = req.into_inner().id;
        if id.is_empty() {
            return Err(required("id"));
        }
        tracing::Span::current().record("node", id.as_str());
        let node = self.0.service.delete_node(&id).await.status()?;
        tracing::info!(node = %node.id, network = %node.network, "node deleted");
        Ok(Response::new(()))
    }

    async fn get_node_config(
        &self,
        req: Request<pb::GetNodeConfigRequest>,
    ) -> Result<Response<pb::NodeConfig>, Status> {
        let id = req.into_inner().id;
        if id.is_empty() {
            return Err(required("id"));
        }
        // The same state agents are fed from, so the revision matches theirs.
        self.0.hub.catch_up().await.status()?;
        let cfg = self
            .0
            .hub
            .snapshot(&id)
            .ok_or_else(|| crate::domain::Error::not_found("node", &id))
            .status()?;
        Ok(Response::new(super::config::node_config(&cfg)))
    }
}
