//! PolicyService: decode, call the service, encode.

use tonic::{Request, Response, Status};

use meshplane_proto::v1::{self as pb, policy_service_server::PolicyService};

use super::{
    AppState,
    convert::ts,
    error::{IntoStatus, required},
};
use crate::domain::{
    Error,
    error::Violations,
    policy::{
        Action, NetworkPolicy, PolicyInput, Protocol, RuleInput, Traffic, diff::FlowChange,
        eval::DecidedBy,
    },
};

/// The PolicyService implementation.
pub struct Policies(pub AppState);

fn action_of(a: i32) -> Option<Action> {
    match pb::PolicyAction::try_from(a).ok()? {
        pb::PolicyAction::Allow => Some(Action::Allow),
        pb::PolicyAction::Deny => Some(Action::Deny),
        pb::PolicyAction::Unspecified => None,
    }
}

fn action_pb(a: Action) -> pb::PolicyAction {
    match a {
        Action::Allow => pb::PolicyAction::Allow,
        Action::Deny => pb::PolicyAction::Deny,
    }
}

fn protocol_of(p: i32) -> Option<Protocol> {
    match pb::Protocol::try_from(p).ok()? {
        pb::Protocol::Tcp => Some(Protocol::Tcp),
        pb::Protocol::Udp => Some(Protocol::Udp),
        pb::Protocol::Icmp => Some(Protocol::Icmp),
        pb::Protocol::Unspecified => None,
    }
}

fn protocol_pb(p: Protocol) -> pb::Protocol {
    match p {
        Protocol::Tcp => pb::Protocol::Tcp,
        Protocol::Udp => pb::Protocol::Udp,
        Protocol::Icmp => pb::Protocol::Icmp,
    }
}

/// A policy as sent, before the mask and validation.
fn input(p: pb::Policy) -> PolicyInput {
    PolicyInput {
        default_action: action_of(p.default_action),
        rules: p
            .rules
            .into_iter()
            .map(|r| RuleInput {
                name: r.name,
                sources: r.sources,
                destinations: r.destinations,
                protocols: r.protocols.into_iter().map(protocol_of).collect(),
                ports: r.ports,
                action: action_of(r.action),
            })
            .collect(),
    }
}

/// A stored policy as its proto message.
pub fn to_pb(p: &NetworkPolicy) -> pb::Policy {
    pb::Policy {
        network: p.network.to_string(),
        default_action: action_pb(p.policy.default_action) as i32,
        rules: p
            .policy
            .rules
            .iter()
            .map(|r| pb::PolicyRule {
                name: r.name.as_ref().map(ToString::to_string).unwrap_or_default(),
                sources: r.sources.iter().map(ToString::to_string).collect(),
                destinations: r.destinations.iter().map(ToString::to_string).collect(),
                protocols: r.protocols.iter().map(|p| protocol_pb(*p) as i32).collect(),
                ports: r.ports.iter().map(ToString::to_string).collect(),
                action: action_pb(r.action) as i32,
            })
            .collect(),
        revision: p.revision,
        update_time: p.update_time.and_then(ts),
    }
}

fn change_pb(c: FlowChange) -> pb::FlowChange {
    pb::FlowChange {
        source: c.source,
        source_id: c.source_id,
        destination: c.destination,
        destination_id: c.destination_id,
        destination_address: c
            .destination_address
            .map(|a| a.to_string())
            .unwrap_or_default(),
        allowed: c.allowed.describe(),
        denied: c.denied.describe(),
    }
}

#[tonic::async_trait]
impl PolicyService for Policies {
    async fn get_policy(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        let network = req.into_inner().network;
        if network.is_empty() {
            return Err(required("network"));
        }
        let p = self.0.service.get_policy(&network).await.status()?;
        Ok(Response::new(to_pb(&p)))
    }

    #[tracing::instrument(skip_all, fields(network, validate_only))]
    async fn update_policy(
        &self,
        req: Request<pb::UpdatePolicyRequest>,
    ) -> Result<Response<pb::UpdatePolicyResponse>, Status> {
        let r = req.into_inner();
        let p = r.policy.ok_or_else(|| required("policy"))?;
        if p.network.is_empty() {
            return Err(required("policy.network"));
        }
        let span = tracing::Span::current();
        span.record("network", p.network.as_str());
        span.record("validate_only", r.validate_only);
        let network = p.network.clone();
        let mask = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let out = self
            .0
            .service
            .update_policy(
                &network,
                input(p),
                &mask,
                r.validate_only,
                r.expected_revision,
            )
            .await
            .status()?;
        if !r.validate_only {
            tracing::info!(
                revision = out.policy.revision,
                rules = out.policy.policy.rules.len(),
                changes = out.total_changes,
                "policy updated"
            );
        }
        Ok(Response::new(pb::UpdatePolicyResponse {
            policy: Some(to_pb(&out.policy)),
            total_changes: u32::try_from(out.total_changes).unwrap_or(u32::MAX),
            changes: out.changes.into_iter().map(change_pb).collect(),
        }))
    }

    async fn test_access(
        &self,
        req: Request<pb::TestAccessRequest>,
    ) -> Result<Response<pb::TestAccessResponse>, Status> {
        let r = req.into_inner();
        let mut v = Violations::default();
        for (field, value) in [("network", &r.network), ("from", &r.from), ("to", &r.to)] {
            if value.is_empty() {
                v.add(field, "is required");
            }
        }
        let traffic = v.check(Traffic::from_request(protocol_of(r.protocol), r.port));
        v.finish().status()?;
        let traffic = traffic
            .ok_or_else(|| Error::Internal("checked".into()))
            .status()?;
        let verdict = self
            .0
            .service
            .test_access(&r.network, &r.from, &r.to, traffic)
            .await
            .status()?;
        let (rule_index, rule_name) = match verdict.decided_by {
            DecidedBy::Rule { index, name } => {
                (u32::try_from(index).ok(), name.unwrap_or_default())
            }
            DecidedBy::Default => (None, String::new()),
        };
        Ok(Response::new(pb::TestAccessResponse {
            action: action_pb(verdict.action) as i32,
            rule_index,
            rule_name,
            reason: verdict.reason,
            address: verdict.address.to_string(),
        }))
    }
}
