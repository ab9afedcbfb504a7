//! AgentService: registration with an enrollment key, then calls with the
//! node's own token (the auth layer has resolved it to a node id).

use tonic::{Request, Response, Status};

use meshplane_proto::v1::{self as pb, agent_service_server::AgentService};

use super::config::Parts;
use super::{
    AppState, BoxStream,
    auth::{Principal, principal},
    error::{IntoStatus, to_status},
};
use crate::domain::{
    Error,
    host::{HostInterfaceInput, HostReportInput, HostRouteInput, StatusReportInput},
    node::RegistrationInput,
};
use crate::hub::{Hub, OwedQueue, StreamGuard};
use crate::service::Registered;
use std::sync::Arc;
use tokio::sync::watch;

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
        let Registered { node, token } = self
            .0
            .service
            .register(
                &r.enrollment_key,
                RegistrationInput {
                    network: r.network,
                    name: r.name,
                    public_key: r.public_key,
                    endpoint: r.endpoint,
                    listen_port: r.listen_port,
                    os: r.os,
                },
            )
            .await
            .status()?;
        tracing::info!(node = %node.id, address = ?node.address, address6 = ?node.address6, "node registered");
        Ok(Response::new(pb::RegisterResponse {
            node: Some(super::node::to_pb(&node, &self.0.hub)),
            node_token: token,
        }))
    }

    type WatchConfigStream = BoxStream<pb::ConfigUpdate>;

    #[tracing::instrument(skip_all, fields(node))]
    async fn watch_config(
        &self,
        req: Request<pb::WatchConfigRequest>,
    ) -> Result<Response<Self::WatchConfigStream>, Status> {
        let id = node_id(&req)?;
        tracing::Span::current().record("node", id.as_str());
        let last = req.into_inner().last_revision;
        let hub = self.0.hub.clone();
        let guard = hub.admit(&id).map_err(retry_later)?;
        // Include every write acknowledged before this call.
        hub.catch_up().await.status()?;
        let (cell, owed) = hub
            .subscribe(&id)
            .ok_or_else(|| to_status(Error::not_found("node", &id)))?;
        let first = hub
            .update_since(&id, last)
            .await
            .map_err(retry_later)?
            .ok_or_else(|| to_status(Error::not_found("node", &id)))?;
        tracing::debug!(
            from = last,
            revision = first.revision(),
            "config stream opened"
        );
        touch(&self.0, &id);
        let stream = ConfigStream {
            hub,
            node: id,
            sent: first.revision(),
            parts: Some(Parts::new(first)),
            cell,
            owed,
            drain: self.0.drain.clone(),
            done: false,
            state: self.0.clone(),
            _guard: guard,
        };
        Ok(Response::new(Box::pin(futures::stream::unfold(
            stream,
            ConfigStream::next,
        ))))
    }

    async fn report_status(
        &self,
        req: Request<pb::ReportStatusRequest>,
    ) -> Result<Response<()>, Status> {
        let id = node_id(&req)?;
        let r = req.into_inner();
        let report = StatusReportInput {
            applied_revision: r.applied_revision,
            endpoint: r.endpoint,
            wireguard_interface: r.wireguard_interface,
            host: r.host.map(host_input),
            apply_error: r.apply_error,
            failed_revision: r.failed_revision,
        };
        let done = self.0.service.report_status(&id, report).await.status()?;
        if done.config_changed {
            tracing::info!(node = %id, interface = ?done.node.wireguard_interface, endpoint = ?done.node.endpoint, "agent reported a config change");
        }
        if let Some(e) = &done.node.apply_error {
            tracing::debug!(node = %id, revision = done.node.failed_revision, error = %e, "agent reported a failed apply");
        }
        Ok(Response::new(()))
    }
}

/// A host report's plain fields, for the domain to validate.
fn host_input(h: pb::HostReport) -> HostReportInput {
    HostReportInput {
        interfaces: h
            .interfaces
            .into_iter()
            .map(|i| HostInterfaceInput {
                name: i.name,
                addresses: i.addresses,
                up: i.up,
            })
            .collect(),
        routes: h
            .routes
            .into_iter()
            .map(|r| HostRouteInput {
                destination: r.destination,
                interface: r.interface,
                gateway: r.gateway,
            })
            .collect(),
    }
}

/// RESOURCE_EXHAUSTED (and UNAVAILABLE) with a jittered retry hint, so a
/// reconnecting fleet spreads out instead of stampeding.
fn retry_later(e: Error) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    match e {
        Error::ResourceExhausted(m) => {
            let secs = 1 + rand::random::<u64>() % 5;
            Status::with_error_details(
                tonic::Code::ResourceExhausted,
                format!("{m} (retry in about {secs} s)"),
                ErrorDetails::with_retry_info(Some(std::time::Duration::from_secs(secs))),
            )
        }
        other => to_status(other),
    }
}

/// Records (without delaying the stream) that the node was heard from.
fn touch(state: &AppState, id: &str) {
    let service = state.service.clone();
    let id = id.to_owned();
    tokio::spawn(async move {
        if let Err(e) = service.touch_node(&id).await {
            tracing::debug!(node = %id, error = %e, "recording last_seen failed");
        }
    });
}

/// One agent's config stream: waits on the node's cell and sends one
/// update per wake-up, from the revision it sent last to the current one.
struct ConfigStream {
    hub: Arc<Hub>,
    node: String,
    sent: u64,
    /// Parts of the update being sent.
    parts: Option<Parts>,
    cell: watch::Receiver<u64>,
    /// Events this node's streams owe an update for (fan-out metrics).
    owed: Arc<OwedQueue>,
    drain: watch::Receiver<bool>,
    done: bool,
    state: AppState,
    _guard: StreamGuard,
}

impl ConfigStream {
    async fn next(mut self) -> Option<(Result<pb::ConfigUpdate, Status>, Self)> {
        if self.done {
            return None;
        }
        loop {
            if let Some(p) = self.parts.as_mut().and_then(Iterator::next) {
                if !p.partial {
                    // The update's last part goes out now.
                    self.owed.sent(self.sent);
                }
                return Some((Ok(p), self));
            }
            self.parts = None;
            let alive = tokio::select! {
                biased;
                _ = self.drain.wait_for(|d| *d) => return None,
                changed = self.cell.changed() => changed.is_ok(),
            };
            if !alive {
                // The hub dropped the cell: the node is gone.
                self.done = true;
                let msg = format!("node {} was deleted; its config stream ends", self.node);
                return Some((Err(Status::not_found(msg)), self));
            }
            let rev = *self.cell.borrow_and_update();
            if rev <= self.sent {
                continue;
            }
            match self.hub.update_since(&self.node, self.sent).await {
                Ok(Some(u)) => {
                    self.sent = u.revision();
                    self.parts = Some(Parts::new(u));
                }
                Ok(None) => continue,
                Err(e) => {
                    self.done = true;
                    return Some((Err(retry_later(e)), self));
                }
            }
        }
    }
}

impl Drop for ConfigStream {
    fn drop(&mut self) {
        touch(&self.state, &self.node);
    }
}
