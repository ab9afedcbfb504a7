//! GatewayService: egress and ingress gateways, and ExplainRoute.

use std::net::IpAddr;

use tonic::{Request, Response, Status};

use meshplane_proto::v1::{self as pb, gateway_service_server::GatewayService};

use super::{
    AppState,
    error::{IntoStatus, required},
    node::to_pb,
};
use crate::domain::{gateway::EgressInput, route::explain};

/// The GatewayService implementation.
pub struct Gateways(pub AppState);

#[tonic::async_trait]
impl GatewayService for Gateways {
    #[tracing::instrument(skip_all, fields(node))]
    async fn create_egress_gateway(
        &self,
        req: Request<pb::CreateEgressGatewayRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let r = req.into_inner();
        if r.node_id.is_empty() {
            return Err(required("node_id"));
        }
        tracing::Span::current().record("node", r.node_id.as_str());
        let input = EgressInput {
            ranges: r.ranges,
            interface: r.interface,
            nat: r.nat_enabled,
            metric: r.metric,
            preempt: r.preempt,
            hold_seconds: r.hold_seconds,
        };
        let (node, egress) = self
            .0
            .service
            .create_egress(&r.node_id, input)
            .await
            .status()?;
        tracing::info!(node = %node.id, ranges = ?egress.ranges, interface = %egress.interface, nat = egress.nat, "egress gateway set");
        Ok(Response::new(to_pb(&node, &self.0.hub)))
    }

    #[tracing::instrument(skip_all, fields(node))]
    async fn delete_egress_gateway(
        &self,
        req: Request<pb::DeleteEgressGatewayRequest>,
    ) -> Result<Response<()>, Status> {
        let id = req.into_inner().node_id;
        if id.is_empty() {
            return Err(required("node_id"));
        }
        self.0.service.delete_egress(&id).await.status()?;
        tracing::info!(node = %id, "egress gateway removed");
        Ok(Response::new(()))
    }

    #[tracing::instrument(skip_all, fields(node))]
    async fn create_ingress_gateway(
        &self,
        req: Request<pb::CreateIngressGatewayRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let r = req.into_inner();
        if r.node_id.is_empty() {
            return Err(required("node_id"));
        }
        let node = self
            .0
            .service
            .create_ingress(&r.node_id, &r.ext_client_dns)
            .await
            .status()?;
        tracing::info!(node = %node.id, "ingress gateway set");
        Ok(Response::new(to_pb(&node, &self.0.hub)))
    }

    #[tracing::instrument(skip_all, fields(node))]
    async fn delete_ingress_gateway(
        &self,
        req: Request<pb::DeleteIngressGatewayRequest>,
    ) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        if r.node_id.is_empty() {
            return Err(required("node_id"));
        }
        self.0
            .service
            .delete_ingress(&r.node_id, r.force)
            .await
            .status()?;
        tracing::info!(node = %r.node_id, force = r.force, "ingress gateway removed");
        Ok(Response::new(()))
    }

    async fn explain_route(
        &self,
        req: Request<pb::ExplainRouteRequest>,
    ) -> Result<Response<pb::ExplainRouteResponse>, Status> {
        let r = req.into_inner();
        let mut v = crate::domain::error::Violations::default();
        if r.network.is_empty() {
            v.add("network", "is required");
        }
        if r.from_node_id.is_empty() {
            v.add("from_node_id", "is required");
        }
        let dest: Option<IpAddr> = match r.destination.trim().parse() {
            Ok(a) => Some(a),
            Err(_) => {
                v.add(
                    "destination",
                    format!(
                        "{} is not an IP address",
                        crate::domain::error::shown(&r.destination)
                    ),
                );
                None
            }
        };
        v.finish().status()?;
        let view = self.0.service.network_view(&r.network).await.status()?;
        let dest = dest.expect("checked");
        let ex = explain(&view, &r.from_node_id, dest).status()?;
        let egress_gateways = if let Some(egress) = &ex.egress_node_id {
            crate::failover::standing(&self.0.hub, &r.network, egress, dest)
                .into_iter()
                .map(
                    |(node_id, name, primary, reason)| pb::EgressGatewayStanding {
                        node_id,
                        name,
                        primary,
                        reason,
                    },
                )
                .collect()
        } else {
            Vec::new()
        };
        Ok(Response::new(pb::ExplainRouteResponse {
            routable: ex.routable,
            hops: ex
                .hops
                .into_iter()
                .map(|h| pb::RouteHop {
                    at: h.at,
                    action: h.action,
                    matched_prefix: h.matched_prefix.map(|p| p.to_string()).unwrap_or_default(),
                    peer_public_key: h.peer.map(|k| k.to_string()).unwrap_or_default(),
                })
                .collect(),
            egress_node_id: ex.egress_node_id.unwrap_or_default(),
            policy: ex.policy,
            egress_interface: ex.egress_interface.unwrap_or_default(),
            nat: ex.nat,
            reason: ex.reason,
            egress_gateways,
        }))
    }
}
