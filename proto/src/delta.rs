//! How an agent applies a [`ConfigUpdate`](crate::v1::ConfigUpdate): the
//! wire contract shared by the server's tests, the SDK and agents.

use crate::v1::{ConfigDelta, ConfigUpdate, NodeConfig, config_update::Update};

/// Why an update could not be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyError {
    /// A delta arrived but no config is held yet.
    NoBase,
    /// The delta continues from another revision than the one held.
    RevisionMismatch {
        /// Revision held.
        held: u64,
        /// Revision the delta applies to.
        from: u64,
    },
    /// The update carries neither a snapshot nor a delta.
    Empty,
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyError::NoBase => f.write_str("a delta arrived before any snapshot"),
            ApplyError::RevisionMismatch { held, from } => {
                write!(
                    f,
                    "delta continues from revision {from}, but {held} is held"
                )
            }
            ApplyError::Empty => f.write_str("update carries neither snapshot nor delta"),
        }
    }
}

impl std::error::Error for ApplyError {}

/// Applies a delta to `config`: removals first, then upserts (so a key that
/// moved between peers ends up right), then the replaced sections. Peers stay
/// ordered by public key and DNS records by name.
pub fn apply_delta(config: &mut NodeConfig, delta: &ConfigDelta, revision: u64) {
    if !delta.remove_peers.is_empty() {
        let gone: std::collections::HashSet<&str> =
            delta.remove_peers.iter().map(String::as_str).collect();
        config
            .peers
            .retain(|p| !gone.contains(p.public_key.as_str()));
    }
    for p in &delta.upsert_peers {
        match config
            .peers
            .binary_search_by(|q| q.public_key.as_str().cmp(&p.public_key))
        {
            Ok(i) => config.peers[i] = p.clone(),
            Err(i) => config.peers.insert(i, p.clone()),
        }
    }
    if let Some(i) = &delta.interface {
        config.interface = Some(i.clone());
    }
    if let Some(r) = &delta.routes {
        config.routes = r.routes.clone();
    }
    if let Some(f) = &delta.firewall {
        config.firewall = Some(f.clone());
    }
    let dns = config.dns.get_or_insert_with(Default::default);
    if !delta.remove_dns_records.is_empty() {
        let gone: std::collections::HashSet<&str> = delta
            .remove_dns_records
            .iter()
            .map(String::as_str)
            .collect();
        dns.records.retain(|r| !gone.contains(r.name.as_str()));
    }
    for r in &delta.upsert_dns_records {
        match dns
            .records
            .binary_search_by(|q| q.name.as_str().cmp(&r.name))
        {
            Ok(i) => dns.records[i] = r.clone(),
            Err(i) => dns.records.insert(i, r.clone()),
        }
    }
    if let Some(n) = &delta.nameservers {
        dns.nameservers = n.nameservers.clone();
    }
    config.revision = revision;
}

/// Applies one streamed update to the config held (None before the first
/// snapshot), checking that deltas continue from the revision held.
pub fn apply_update(
    held: &mut Option<NodeConfig>,
    update: &ConfigUpdate,
) -> Result<(), ApplyError> {
    match &update.update {
        Some(Update::Snapshot(s)) => {
            let mut s = s.clone();
            s.revision = update.revision;
            *held = Some(s);
            Ok(())
        }
        Some(Update::Delta(d)) => {
            let cfg = held.as_mut().ok_or(ApplyError::NoBase)?;
            if cfg.revision != d.from_revision {
                return Err(ApplyError::RevisionMismatch {
                    held: cfg.revision,
                    from: d.from_revision,
                });
            }
            apply_delta(cfg, d, update.revision);
            Ok(())
        }
        None => Err(ApplyError::Empty),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{DnsConfig, DnsRecord, Peer, RouteSet};

    fn peer(k: &str, ip: &str) -> Peer {
        Peer {
            public_key: k.into(),
            allowed_ips: vec![ip.into()],
            ..Default::default()
        }
    }

    #[test]
    fn removes_then_upserts_in_key_order() {
        let mut c = NodeConfig {
            revision: 1,
            peers: vec![peer("a", "1"), peer("c", "3")],
            dns: Some(DnsConfig {
                records: vec![DnsRecord {
                    name: "x.n".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let d = ConfigDelta {
            from_revision: 1,
            upsert_peers: vec![peer("b", "2"), peer("c", "33"), peer("a", "9")],
            remove_peers: vec!["a".into()],
            routes: Some(RouteSet { routes: vec![] }),
            upsert_dns_records: vec![DnsRecord {
                name: "a.n".into(),
                ..Default::default()
            }],
            remove_dns_records: vec!["x.n".into()],
            ..Default::default()
        };
        let mut held = Some(c.clone());
        apply_update(
            &mut held,
            &ConfigUpdate {
                revision: 5,
                update: Some(Update::Delta(d.clone())),
                partial: false,
            },
        )
        .unwrap();
        apply_delta(&mut c, &d, 5);
        assert_eq!(held.as_ref(), Some(&c));
        let keys: Vec<_> = c.peers.iter().map(|p| p.public_key.as_str()).collect();
        assert_eq!(keys, vec!["a", "b", "c"], "a was removed then re-added");
        assert_eq!(c.peers[2].allowed_ips, vec!["33"]);
        assert_eq!(c.dns.unwrap().records[0].name, "a.n");
        assert_eq!(c.revision, 5);
        // Out of order deltas are refused.
        let stale = ConfigUpdate {
            revision: 9,
            update: Some(Update::Delta(ConfigDelta {
                from_revision: 4,
                ..Default::default()
            })),
            partial: false,
        };
        assert_eq!(
            apply_update(&mut held, &stale),
            Err(ApplyError::RevisionMismatch { held: 5, from: 4 })
        );
        assert_eq!(apply_update(&mut None, &stale), Err(ApplyError::NoBase));
    }
}
