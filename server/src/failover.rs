//! The server's watch over ranges several egress gateways serve: a
//! primary whose agent has been gone longer than the grace is replaced by
//! the best gateway that is up, and a better gateway that came back takes
//! its ranges again once up for its hold time (unless it does not
//! preempt). The choice is [`crate::domain::failover::choose`]; it is
//! written as data (the gateways' standby ranges, with their events), so
//! every replica and agent agrees, and a move another replica made first
//! is not made twice.
//!
//! A gateway is up while its config stream is open on any replica (this
//! one's streams as of now, the others' as shared presence last said: see
//! [`Hub::up`]). Probes of the ranges by the gateways' agents are not yet
//! taken into account.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::domain::failover::{Candidate, Reason, choose};
use crate::hub::Hub;
use crate::service::Service;

/// What the watch knows of each gateway's presence, as this replica saw
/// it: since when it has been up, or down.
#[derive(Default)]
pub struct Presence {
    seen: HashMap<String, Seen>,
}

#[derive(Clone, Copy)]
enum Seen {
    Up(DateTime<Utc>),
    Down(DateTime<Utc>),
}

impl Presence {
    /// Since when `node` counts as healthy at `now`, given whether it is up:
    /// since it last came up; a primary (`primary`) that went down still
    /// counts for `grace` (a blip, a restart of its agent or of a server
    /// replica moves nothing); None otherwise.
    pub fn healthy_since(
        &mut self,
        node: &str,
        up: bool,
        primary: bool,
        now: DateTime<Utc>,
        grace: Duration,
    ) -> Option<DateTime<Utc>> {
        let seen = self.seen.entry(node.to_owned()).or_insert(if up {
            Seen::Up(now)
        } else {
            Seen::Down(now)
        });
        match (*seen, up) {
            (Seen::Down(_), true) => *seen = Seen::Up(now),
            (Seen::Up(_), false) => *seen = Seen::Down(now),
            _ => {}
        }
        match *seen {
            Seen::Up(t) => Some(t),
            Seen::Down(t) => {
                let down_for = now.signed_duration_since(t).to_std().unwrap_or_default();
                (primary && down_for < grace).then_some(t)
            }
        }
    }
}

/// One round: every shared range's primary chosen again, moved when the
/// choice says so. Returns how many moved.
pub async fn round(
    service: &Service,
    hub: &Hub,
    presence: &mut Presence,
    grace: Duration,
    now: DateTime<Utc>,
) -> usize {
    let mut moved = 0;
    for (network, range, gateways) in hub.shared_ranges() {
        let current = gateways
            .iter()
            .find(|g| {
                g.egress
                    .as_ref()
                    .is_some_and(|e| e.routed().any(|r| *r == range))
            })
            .map(|g| g.id.as_str());
        let candidates: Vec<Candidate<'_>> = gateways
            .iter()
            .map(|g| {
                let e = g.egress.as_ref().expect("a gateway of the range");
                let up = hub.up(&g.id);
                Candidate {
                    node_id: g.id.as_str(),
                    name: g.name.as_str(),
                    metric: e.metric.unwrap_or(u32::MAX),
                    preempt: e.preempt,
                    hold: Duration::from_secs(u64::from(e.hold_seconds)),
                    healthy_since: presence.healthy_since(
                        &g.id,
                        up,
                        current == Some(g.id.as_str()),
                        now,
                        grace,
                    ),
                }
            })
            .collect();
        let Some(choice) = choose(current, &candidates, now) else {
            continue;
        };
        let from = match (&choice.reason, current) {
            (Reason::Failover(f) | Reason::Preempted(f), _) => f.clone(),
            (Reason::Elected, Some(c)) if c != choice.primary => c.to_owned(),
            _ => continue,
        };
        match service
            .move_primary(&network, range, &from, choice.primary)
            .await
        {
            Ok(true) => {
                moved += 1;
                tracing::info!(%network, %range, from = %from, to = %choice.primary, reason = ?choice.reason, "egress range moved to another gateway");
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(%network, %range, error = %e, "moving an egress range failed"),
        }
    }
    moved
}

/// Runs [`round`] every `every` until `stop`.
pub async fn run(
    service: Service,
    hub: std::sync::Arc<Hub>,
    grace: Duration,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut presence = Presence::default();
    loop {
        round(&service, &hub, &mut presence, grace, crate::domain::now()).await;
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
