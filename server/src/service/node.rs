//! Nodes: registration, updates, deletion, status reports.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::{Service, txn};
use crate::domain::{
    Error, Result,
    enrollment::EnrollmentKey,
    event::{Action, Resource},
    host::StatusReportInput,
    ipam::Family,
    network::Network,
    node::{Node, NodePatch, NodeUpdateInput, RegistrationInput},
    rules::{self, Owner},
    token::{self, NewToken, TokenKind},
};
use crate::store::{Clients, StoredKey, Tx};

/// A registered node and its token, shown once.
pub struct Registered {
    /// The new node.
    pub node: Node,
    /// The node's token (only its hash is stored).
    pub token: String,
}

/// What [`Service::report_status`] did.
#[derive(Debug, Clone)]
pub struct Reported {
    /// The node after the report.
    pub node: Node,
    /// The report changed a config: an event was appended.
    pub config_changed: bool,
}

/// The key a presented enrollment token opens; UNAUTHENTICATED when there
/// is none or the secret is wrong.
fn opened(stored: Option<StoredKey>, presented: &str) -> Result<EnrollmentKey> {
    match stored {
        Some(s) if token::verify(presented, &s.hash) => Ok(s.key),
        _ => Err(Error::Unauthenticated(
            "unknown or revoked enrollment key".into(),
        )),
    }
}

/// Takes the lowest free IPv4 and IPv6 addresses (for the ranges the
/// network has) for `owner`. Runs under the network's lock, so the lowest
/// free offset cannot be taken by another writer before the insert; the
/// allocation's primary key refuses a second owner regardless.
pub(super) async fn allocate(
    tx: &mut dyn Tx,
    net: &Network,
    owner: &Owner,
) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>)> {
    let name = net.name.as_str();
    let mut offsets = (None, None);
    if net.range4.is_some() {
        offsets.0 = Some(tx.take_lowest_free(name, Family::V4, owner).await?);
    }
    if net.range6.is_some() {
        offsets.1 = Some(tx.take_lowest_free(name, Family::V6, owner).await?);
    }
    addresses_at(net, offsets.0, offsets.1)
}

/// The addresses at the offsets taken in `net`'s ranges. An offset beyond
/// its range (the network is full) fails the write, which undoes the
/// allocation with it.
pub(super) fn addresses_at(
    net: &Network,
    offset4: Option<u128>,
    offset6: Option<u128>,
) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>)> {
    let name = net.name.as_str();
    let mut v4 = None;
    if let (Some(range), Some(offset)) = (net.range4, offset4)
        && let std::net::IpAddr::V4(a) = rules::address_at(name, IpNet::V4(range), offset)?
    {
        v4 = Some(a);
    }
    let mut v6 = None;
    if let (Some(range), Some(offset)) = (net.range6, offset6)
        && let std::net::IpAddr::V6(a) = rules::address_at(name, IpNet::V6(range), offset)?
    {
        v6 = Some(a);
    }
    Ok((v4, v6))
}

/// Loads a node and locks its network (which every write in a network
/// takes first); the node is read again after the lock, so it is current.
pub(super) async fn lock_node(tx: &mut dyn Tx, id: &str) -> Result<(Network, Node)> {
    let not_found = || Error::not_found("node", id);
    let network = tx.node(id).await?.ok_or_else(not_found)?.network;
    let net = tx
        .lock_network(network.as_str())
        .await?
        .ok_or_else(not_found)?;
    let node = tx.node(id).await?.ok_or_else(not_found)?;
    Ok((net, node))
}

/// Appends a node's event; returns its revision.
pub(super) async fn node_event(tx: &mut dyn Tx, action: Action, node: &Node) -> Result<u64> {
    tx.append(action, &Resource::Node(Box::new(node.clone())), true)
        .await
}

impl Service {
    /// Register: with a working enrollment key, a new node with the lowest
    /// free addresses.
    pub async fn register(
        &self,
        enrollment_key: &str,
        input: RegistrationInput,
    ) -> Result<Registered> {
        // Credentials first: nobody learns anything without a working key.
        let key_id = match token::parse(enrollment_key) {
            Some((TokenKind::Enrollment, id)) => id.to_owned(),
            _ => {
                return Err(Error::Unauthenticated(if enrollment_key.is_empty() {
                    "enrollment_key is required".into()
                } else {
                    "unknown or revoked enrollment key".into()
                }));
            }
        };
        let key = opened(
            self.store.get_enrollment_key(&key_id).await?,
            enrollment_key,
        )?;
        let now = crate::domain::now();
        key.check_usable(now)?;
        let reg = input.validate()?;
        key.admit(&reg.network, now)?;
        let token = NewToken::generate(TokenKind::Node);
        let node_id = uuid::Uuid::new_v4().to_string();
        let network = reg.network.as_str();
        let node = self
            .write(async {
                txn!(self.committer, |tx| {
                    let load = tx
                        .lock_for_registration(
                            network,
                            &key_id,
                            reg.name.as_str(),
                            &reg.public_key,
                            &Owner::Node(node_id.clone()),
                        )
                        .await?
                        .ok_or_else(|| Error::not_found("network", network))?;
                    let net = load.network;
                    // Again under the key's lock: it may have been used up,
                    // revoked or expired since.
                    // Its use is taken now; a refusal below undoes that.
                    let key = opened(load.key, enrollment_key)?;
                    key.check_usable(now)?;
                    key.admit(&reg.network, now)?;
                    rules::name_free("name", network, &reg.name, load.name_owner, None)?;
                    rules::key_free("public_key", network, &reg.public_key, load.key_owner, None)?;
                    let (address, address6) = addresses_at(&net, load.offset4, load.offset6)?;
                    let mut node =
                        rules::new_node(node_id.clone(), &reg, &net, address, address6, now);
                    tx.insert_node(&node, &token).await?;
                    node.config_revision = node_event(&mut *tx, Action::Created, &node).await?;
                    Ok(node)
                })
            })
            .await?;
        Ok(Registered {
            node,
            token: token.secret,
        })
    }

    /// UpdateNode: the fields `mask` names.
    pub async fn update_node(
        &self,
        id: &str,
        input: &NodeUpdateInput,
        mask: &[String],
    ) -> Result<Node> {
        let patch = NodePatch::from_request(input, mask)?;
        self.write(async {
            txn!(self.committer, |tx| {
                let (net, mut node) = lock_node(&mut *tx, id).await?;
                let network = net.name.as_str();
                if let Some(name) = &patch.name {
                    let owner = tx.name_owner(network, name.as_str()).await?;
                    rules::name_free("node.name", network, name, owner, Some(id))?;
                }
                if let Some(key) = &patch.public_key {
                    let owner = tx.key_owner(network, key).await?;
                    rules::key_free("node.public_key", network, key, owner, Some(id))?;
                }
                let before = node.clone();
                patch.apply(&mut node, crate::domain::now());
                tx.update_node(&node).await?;
                node.config_revision = node_event(&mut *tx, Action::Updated, &node).await?;
                if rules::client_files_change(&before, &node) {
                    tx.set_client_revisions(Clients::OfIngress(id), node.config_revision)
                        .await?;
                }
                Ok(node)
            })
        })
        .await
    }

    /// DeleteNode: its external clients go with it; frees its addresses and
    /// revokes its token.
    pub async fn delete_node(&self, id: &str) -> Result<Node> {
        self.write(async {
            txn!(self.committer, |tx| {
                let (net, node) = lock_node(&mut *tx, id).await?;
                if node.egress.is_some() {
                    // Ranges it was primary of go to the best other gateway.
                    let nodes = tx.network_nodes(net.name.as_str()).await?;
                    let changed = crate::domain::gateway::share_ranges(&nodes, id, None)?.1;
                    super::gateway::hand_over(&mut *tx, changed).await?;
                }
                let clients = tx.ext_clients_of(id).await?;
                for c in &clients {
                    tx.free_addresses(&c.id).await?;
                    tx.delete_ext_client(&c.id).await?;
                }
                tx.free_addresses(id).await?;
                tx.delete_node(id).await?;
                for c in clients {
                    tx.append(Action::Deleted, &Resource::ExtClient(Box::new(c)), true)
                        .await?;
                }
                node_event(&mut *tx, Action::Deleted, &node).await?;
                Ok(node)
            })
        })
        .await
    }

    /// ReportStatus: records what the agent reported (and that it was heard
    /// from now). A report that changes no config (most of them) is one
    /// statement writing only what reports own, with no lock but the node
    /// row's. One that changes a config (the node's interface name, its
    /// endpoint; see [`crate::domain::host::StatusReport::apply`]) is a
    /// write like UpdateNode's, with an event, and wakes the hub.
    pub async fn report_status(&self, node_id: &str, input: StatusReportInput) -> Result<Reported> {
        let now = crate::domain::now();
        let report = input.validate(now)?;
        let mut node = self.get_node(node_id).await?;
        rules::report_revisions_sent(
            node.config_revision,
            report.applied_revision,
            report.failure.as_ref().map(|(_, r)| *r),
        )?;
        if !report.apply(&mut node) {
            node.last_seen = Some(now);
            self.store.save_report(&node).await?;
            return Ok(Reported {
                node,
                config_changed: false,
            });
        }
        self.write_if(
            async {
                txn!(self.committer, |tx| {
                    let (_, mut node) = lock_node(&mut *tx, node_id).await?;
                    let before = node.clone();
                    let config_changed = report.apply(&mut node);
                    node.last_seen = Some(now);
                    tx.save_report(&node).await?;
                    if config_changed {
                        node.update_time = now;
                        tx.update_node(&node).await?;
                        node.config_revision = node_event(&mut *tx, Action::Updated, &node).await?;
                        if rules::client_files_change(&before, &node) {
                            tx.set_client_revisions(
                                Clients::OfIngress(node_id),
                                node.config_revision,
                            )
                            .await?;
                        }
                    }
                    Ok(Reported {
                        node,
                        config_changed,
                    })
                })
            },
            |r| r.config_changed,
        )
        .await
    }
}
