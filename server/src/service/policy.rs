//! Access policies (issue #14): GetPolicy, UpdatePolicy (with its preview)
//! and TestAccess.

use super::{Service, txn};
use crate::domain::{
    Error, Result,
    event::{Action, Resource},
    policy::{
        NetworkPolicy, Policy, PolicyInput, Traffic, apply_mask,
        diff::{FlowChange, flow_changes_within},
        eval::{Verdict, test_access},
    },
};

/// Most flow changes an `UpdatePolicy` answer lists.
pub const MAX_CHANGES: usize = 1000;

/// What `UpdatePolicy` answers.
#[derive(Debug, Clone)]
pub struct PolicyUpdate {
    /// The policy as stored (with `validate_only`: as it would be).
    pub policy: NetworkPolicy,
    /// The first [`MAX_CHANGES`] flows whose fate changes.
    pub changes: Vec<FlowChange>,
    /// How many flows change in all.
    pub total_changes: usize,
}

/// The outcome of the write part of an update.
enum Written {
    /// `expected_revision` was not the stored one (which is given).
    Stale(u64),
    /// The change changes nothing: no write, no event.
    Same(NetworkPolicy),
    /// Stored, with the policy it replaced.
    Stored(Policy, NetworkPolicy),
}

/// ABORTED for an `expected_revision` that is not the stored one. Not
/// retried by `txn!`: it is raised outside the transaction.
fn stale(expected: u64, stored: u64) -> Error {
    Error::Aborted(format!(
        "the policy changed: expected_revision is {expected} but the policy is at revision \
         {stored}; read it again and reapply the change"
    ))
}

impl Service {
    /// GetPolicy: the network's stored policy, or the default (ALLOW, no
    /// rules) when it has none. NOT_FOUND when there is no such network.
    pub async fn get_policy(&self, network: &str) -> Result<NetworkPolicy> {
        let net = self.get_network(network).await?;
        Ok(self
            .store
            .get_policy(network)
            .await?
            .unwrap_or_else(|| NetworkPolicy::none(net.name)))
    }

    /// UpdatePolicy: `sent`'s fields that `mask` names over the stored
    /// policy, validated; with `validate_only`, nothing is written. Either
    /// way the answer lists the flows the change allows or denies. With
    /// `expected_revision` other than 0, ABORTED unless the stored policy
    /// is at that revision.
    pub async fn update_policy(
        &self,
        network: &str,
        sent: PolicyInput,
        mask: &[String],
        validate_only: bool,
        expected_revision: u64,
    ) -> Result<PolicyUpdate> {
        let (old, policy) = if validate_only {
            let stored = self.get_policy(network).await?;
            if expected_revision != 0 && stored.revision != expected_revision {
                return Err(stale(expected_revision, stored.revision));
            }
            let new = apply_mask(&stored.policy, sent, mask)?;
            let old = stored.policy.clone();
            (
                old,
                NetworkPolicy {
                    policy: new,
                    ..stored
                },
            )
        } else {
            let written = self
                .write_if(
                    async {
                        txn!(self.committer, |tx| {
                            let net = tx
                                .lock_network(network)
                                .await?
                                .ok_or_else(|| Error::not_found("network", network))?;
                            let stored = tx
                                .policy(network)
                                .await?
                                .unwrap_or_else(|| NetworkPolicy::none(net.name.clone()));
                            if expected_revision != 0 && stored.revision != expected_revision {
                                return Ok(Written::Stale(stored.revision));
                            }
                            let new = apply_mask(&stored.policy, sent.clone(), mask)?;
                            if new == stored.policy {
                                return Ok(Written::Same(stored));
                            }
                            let mut p = NetworkPolicy {
                                network: net.name,
                                policy: new,
                                revision: stored.revision,
                                update_time: Some(crate::domain::now()),
                            };
                            // The event carries the policy; its revision is
                            // the event's, which the row records.
                            p.revision = tx
                                .append(
                                    Action::Updated,
                                    &Resource::Policy(Box::new(p.clone())),
                                    true,
                                )
                                .await?;
                            tx.save_policy(&p).await?;
                            Ok(Written::Stored(stored.policy, p))
                        })
                    },
                    |w| matches!(w, Written::Stored(..)),
                )
                .await?;
            match written {
                Written::Stale(stored) => return Err(stale(expected_revision, stored)),
                Written::Same(p) => (p.policy.clone(), p),
                Written::Stored(old, p) => (old, p),
            }
        };
        let view = self.network_view(network).await?;
        let (changes, total_changes) =
            flow_changes_within(&view, &old, &policy.policy, MAX_CHANGES);
        Ok(PolicyUpdate {
            policy,
            changes,
            total_changes,
        })
    }

    /// TestAccess: the decision of the network's policy for `traffic` from
    /// `from` to `to` (see [`test_access`]).
    pub async fn test_access(
        &self,
        network: &str,
        from: &str,
        to: &str,
        traffic: Traffic,
    ) -> Result<Verdict> {
        let view = self.network_view(network).await?;
        test_access(&view, from, to, traffic)
    }
}
