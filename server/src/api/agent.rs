//! AgentService: registration with an enrollment key, then calls with the
//! node's own token (the auth layer has resolved it to a node id).

use tonic::{Request, Response, Status};

use meshplane_proto::v1::{self as pb, agent_service_server::AgentService};

use super::{
    AppState,
    auth::{Principal, principal},
    error::{IntoStatus, to_status},
    pending::BoxStream,
};
use crate::domain::{
    Error,
    node::{Endpoint, RegistrationInput},
    token::{self, NewToken, TokenKind},
};
use crate::store::NodeRegistration;

/// The AgentService implementation.
pub struct Agents(pub AppState);

fn node_id<T>(req: &Request<T>) -> Result<String, Status> {
    match principal(req)? {
        Principal::Node(id) => Ok(id.clone()),
        Principal::Admin(_) => Err(Status::permission_denied(
            "AgentService needs the node's own token",
        )),
    }
}

#[tonic::async_trait]
impl AgentService for Agents {
    #[tracing::instrument(skip_all, fields(network, name))]
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let r = req.into_inner();
        let span = tracing::Span::current();
        span.record("network", r.network.as_str());
        span.record("name", r.name.as_str());
        // Credentials first: nobody learns anything without a working key.
        let key_id = match token::parse(&r.enrollment_key) {
            Some((TokenKind::Enrollment, id)) => id.to_owned(),
            _ => {
                return Err(to_status(Error::Unauthenticated(
                    if r.enrollment_key.is_empty() {
                        "enrollment_key is required".into()
                    } else {
                        "unknown or revoked enrollment key".into()
                    },
                )));
            }
        };
        let store = &self.0.store;
        let key = store
            .enrollment_key(&key_id, &r.enrollment_key)
            .await
            .status()?;
        let now = crate::domain::now();
        key.check_usable(now).status()?;
        let registration = RegistrationInput {
            network: r.network,
            name: r.name,
            public_key: r.public_key,
            endpoint: r.endpoint,
            listen_port: r.listen_port,
            os: r.os,
        }
        .validate()
        .status()?;
        key.admit(&registration.network, now).status()?;
        let token = NewToken::generate(TokenKind::Node);
        let node = store
            .register_node(&NodeRegistration {
                key_id: &key_id,
                key_token: &r.enrollment_key,
                registration: &registration,
                node_id: uuid::Uuid::new_v4().to_string(),
                token: &token,
            })
            .await
            .status()?;
        tracing::info!(node = %node.id, address = ?node.address, address6 = ?node.address6, "node registered");
        Ok(Response::new(pb::RegisterResponse {
            node: Some(super::node::to_pb(&node)),
            node_token: token.secret,
        }))
    }

    type WatchConfigStream = BoxStream<pb::ConfigUpdate>;

    async fn watch_config(
        &self,
        req: Request<pb::WatchConfigRequest>,
    ) -> Result<Response<Self::WatchConfigStream>, Status> {
        node_id(&req)?;
        Err(Status::unimplemented(
            "AgentService.WatchConfig is not implemented yet: it lands with config streaming (issue #5)",
        ))
    }

    async fn report_status(
        &self,
        req: Request<pb::ReportStatusRequest>,
    ) -> Result<Response<()>, Status> {
        let id = node_id(&req)?;
        let r = req.into_inner();
        let endpoint = if r.endpoint.is_empty() {
            None
        } else {
            Some(
                Endpoint::parse("endpoint", &r.endpoint)
                    .map_err(|v| to_status(Error::InvalidArgument(vec![v])))?,
            )
        };
        self.0
            .store
            .report_status(&id, r.applied_revision, endpoint.as_ref())
            .await
            .status()?;
        Ok(Response::new(()))
    }
}
