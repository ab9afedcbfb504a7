//! The preview of a policy change (`UpdatePolicy` with `validate_only`):
//! which source → destination flows become allowed or denied, and for
//! which traffic.
//!
//! Flows are from every node and external client to every other node and
//! client (by overlay address), and to every egress range of every gateway
//! but the sender itself. A range is reported in the pieces the two
//! policies' CIDR rules cut it into (see [`super::range_pieces`]), pieces
//! that change alike merged back into prefixes as large as possible.

use std::net::IpAddr;

use ipnet::IpNet;

use super::super::config::NetworkView;
use super::eval::{Dest, Party, PolicyIndex, Sender};
use super::{Policy, TrafficSet, range_pieces};

/// One flow whose fate changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowChange {
    /// The sender: "node:NAME" or "client:NAME".
    pub source: String,
    /// Its id.
    pub source_id: String,
    /// The receiver: "node:NAME", "client:NAME", or (part of) an egress
    /// range in CIDR form.
    pub destination: String,
    /// The receiver's id; for a range, its egress gateway's.
    pub destination_id: String,
    /// When only one address of a party receiver changes this way.
    pub destination_address: Option<IpAddr>,
    /// Traffic newly allowed.
    pub allowed: TrafficSet,
    /// Traffic newly denied.
    pub denied: TrafficSet,
}

/// What changes from `old` to `new` for traffic from `x` to `to`: (newly
/// allowed, newly denied).
fn change(
    old: &PolicyIndex<'_>,
    new: &PolicyIndex<'_>,
    x: Party<'_>,
    to: Dest,
) -> (TrafficSet, TrafficSet) {
    let a = old.allowed(Sender::Party(x), to);
    let b = new.allowed(Sender::Party(x), to);
    (b.minus(&a), a.minus(&b))
}

/// Every flow of `view`'s network whose allowed traffic differs between
/// `old` and `new` (the view's own policy is not used), ordered by source
/// label, then destination label and address. Empty exactly when the two
/// policies decide every packet between the network's parties, and from
/// them into its egress ranges, alike.
pub fn flow_changes(view: &NetworkView, old: &Policy, new: &Policy) -> Vec<FlowChange> {
    let oi = PolicyIndex::new(old, &view.nodes, &view.ext_clients);
    let ni = PolicyIndex::new(new, &view.nodes, &view.ext_clients);
    if old == new || (oi.is_unrestricted() && ni.is_unrestricted()) {
        return Vec::new();
    }
    // Pieces fine enough for both policies: cut by the union of their CIDRs.
    let mut both = new.clone();
    both.rules.extend(old.rules.iter().cloned());
    let ranges: Vec<(&str, IpNet, Vec<IpNet>)> = view
        .nodes
        .iter()
        .filter_map(|g| g.egress.as_ref().map(|e| (g, e)))
        .flat_map(|(g, e)| {
            e.ranges.iter().map(|r| {
                (
                    g.id.as_str(),
                    *r,
                    range_pieces(&both, &view.network, &view.nodes, *r),
                )
            })
        })
        .collect();
    let mut out = Vec::new();
    for x in oi.parties() {
        for y in oi.parties() {
            if y.id() == x.id() {
                continue;
            }
            let per: Vec<(IpAddr, (TrafficSet, TrafficSet))> = y
                .addrs()
                .into_iter()
                .map(|a| (a, change(&oi, &ni, *x, Dest::Addr(a))))
                .collect();
            let same = per.windows(2).all(|w| w[0].1 == w[1].1);
            for (a, (allowed, denied)) in &per {
                if allowed.is_empty() && denied.is_empty() {
                    continue;
                }
                out.push(FlowChange {
                    source: x.label(),
                    source_id: x.id().to_owned(),
                    destination: y.label(),
                    destination_id: y.id().to_owned(),
                    destination_address: (!same).then_some(*a),
                    allowed: allowed.clone(),
                    denied: denied.clone(),
                });
                if same {
                    break;
                }
            }
        }
        for (gateway, _, pieces) in &ranges {
            if x.id() == *gateway {
                continue;
            }
            // Pieces that change alike, merged.
            let mut groups: Vec<((TrafficSet, TrafficSet), Vec<IpNet>)> = Vec::new();
            for p in pieces {
                let c = change(&oi, &ni, *x, Dest::Range(*p));
                if c.0.is_empty() && c.1.is_empty() {
                    continue;
                }
                match groups.iter_mut().find(|(k, _)| *k == c) {
                    Some((_, v)) => v.push(*p),
                    None => groups.push((c, vec![*p])),
                }
            }
            for ((allowed, denied), nets) in groups {
                for n in IpNet::aggregate(&nets) {
                    out.push(FlowChange {
                        source: x.label(),
                        source_id: x.id().to_owned(),
                        destination: n.to_string(),
                        destination_id: (*gateway).to_owned(),
                        destination_address: None,
                        allowed: allowed.clone(),
                        denied: denied.clone(),
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| {
        (
            &a.source,
            &a.source_id,
            &a.destination,
            a.destination_address,
        )
            .cmp(&(
                &b.source,
                &b.source_id,
                &b.destination,
                b.destination_address,
            ))
    });
    out
}
