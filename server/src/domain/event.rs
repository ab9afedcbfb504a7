//! Resource changes, as recorded in the event log with every write.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::dns::DnsEntry;
use super::enrollment::EnrollmentKey;
use super::ext_client::ExtClient;
use super::network::Network;
use super::node::Node;
use super::policy::NetworkPolicy;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Created.
    Created,
    /// Changed.
    Updated,
    /// Deleted.
    Deleted,
}

impl Action {
    /// Stored form.
    pub fn as_i64(self) -> i64 {
        match self {
            Action::Created => 1,
            Action::Updated => 2,
            Action::Deleted => 3,
        }
    }

    /// From the stored form.
    pub fn from_i64(v: i64) -> Option<Self> {
        Some(match v {
            1 => Action::Created,
            2 => Action::Updated,
            3 => Action::Deleted,
            _ => return None,
        })
    }
}

/// The resource after the change (before it, for deletes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "resource", rename_all = "snake_case")]
pub enum Resource {
    /// A network.
    Network(Network),
    /// A node.
    Node(Box<Node>),
    /// An external client.
    ExtClient(Box<ExtClient>),
    /// An enrollment key.
    EnrollmentKey(EnrollmentKey),
    /// A custom DNS entry.
    DnsEntry(DnsEntry),
    /// A network's access policy (always [`Action::Updated`]; it goes with
    /// its network).
    Policy(Box<NetworkPolicy>),
}

impl Resource {
    /// Kind name, as in the event stream.
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Network(_) => "network",
            Resource::Node(_) => "node",
            Resource::ExtClient(_) => "ext_client",
            Resource::EnrollmentKey(_) => "enrollment_key",
            Resource::DnsEntry(_) => "dns_entry",
            Resource::Policy(_) => "policy",
        }
    }

    /// The resource's id.
    pub fn id(&self) -> String {
        match self {
            Resource::Network(n) => n.name.to_string(),
            Resource::Node(n) => n.id.clone(),
            Resource::ExtClient(c) => c.id.clone(),
            Resource::EnrollmentKey(k) => k.id.clone(),
            Resource::DnsEntry(e) => format!("{}.{}", e.name, e.network),
            Resource::Policy(p) => p.network.to_string(),
        }
    }

    /// The network it belongs to (None for enrollment keys, which span
    /// networks).
    pub fn network(&self) -> Option<String> {
        match self {
            Resource::Network(n) => Some(n.name.to_string()),
            Resource::Node(n) => Some(n.network.to_string()),
            Resource::ExtClient(c) => Some(c.network.to_string()),
            Resource::EnrollmentKey(_) => None,
            Resource::DnsEntry(e) => Some(e.network.to_string()),
            Resource::Policy(p) => Some(p.network.to_string()),
        }
    }
}

/// One entry of the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Global revision: strictly increasing, kept in the database.
    pub revision: u64,
    /// What happened.
    pub action: Action,
    /// When.
    pub time: DateTime<Utc>,
    /// The resource.
    pub resource: Resource,
}
