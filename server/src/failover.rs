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

use std::{collections::HashMap, net::IpAddr, time::Duration};

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use tokio::sync::watch;

use crate::domain::failover::{Candidate, Choice, Reason, choose, standings};
use crate::domain::node::Node;
use crate::hub::Hub;
use crate::service::Service;

/// What the watch knows of each gateway's presence, as this replica saw
/// it (since when it has been up, or down), and the grace.
pub struct Presence {
    seen: HashMap<String, Seen>,
    /// How long a primary may be gone before its ranges move.
    pub grace: Duration,
    /// When this replica began watching: until [`STARTUP_GRACE`] later a
    /// primary it has not seen up yet does not count as gone (its agent
    /// may not have reconnected yet).
    started: Option<DateTime<Utc>>,
}

/// How long after a replica starts watching a primary not seen up since
/// does not count as gone:
/// agents reconnect with backoff of up to 10 s (±50 %), and a restart of
/// the server must not move a range only because the standby's agent came
/// back first.
pub const STARTUP_GRACE: Duration = Duration::from_secs(16);

impl Default for Presence {
    fn default() -> Self {
        Presence {
            seen: HashMap::new(),
            grace: Duration::from_secs(2),
            started: None,
        }
    }
}

#[derive(Clone, Copy)]
enum Seen {
    Up(DateTime<Utc>),
    /// Down since; whether this replica ever saw it up.
    Down(DateTime<Utc>, bool),
}

impl Presence {
    /// Notes that `node` opened a config stream at `now` (so that a stream
    /// closing before the next round still counts as seen up).
    pub fn saw_up(&mut self, node: &str, now: DateTime<Utc>) {
        let seen = self.seen.entry(node.to_owned()).or_insert(Seen::Up(now));
        if matches!(seen, Seen::Down(..)) {
            *seen = Seen::Up(now);
        }
    }

    /// Since when `node` counts as healthy at `now`, given whether it is up:
    /// since it last came up; a primary (`primary`) that went down still
    /// counts for the grace (a blip, a restart of its agent or of a server
    /// replica moves nothing); None otherwise.
    pub fn healthy_since(
        &mut self,
        node: &str,
        up: bool,
        primary: bool,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let started = *self.started.get_or_insert(now);
        let starting = now
            .signed_duration_since(started)
            .to_std()
            .unwrap_or_default()
            < STARTUP_GRACE;
        let seen = self.seen.entry(node.to_owned()).or_insert(if up {
            Seen::Up(now)
        } else {
            Seen::Down(now, false)
        });
        match (*seen, up) {
            (Seen::Down(..), true) => *seen = Seen::Up(now),
            (Seen::Up(_), false) => *seen = Seen::Down(now, true),
            _ => {}
        }
        match *seen {
            Seen::Up(t) => Some(t),
            Seen::Down(t, was_up) => {
                let down_for = now.signed_duration_since(t).to_std().unwrap_or_default();
                let waiting = !was_up && starting;
                (primary && (waiting || down_for < self.grace)).then_some(t)
            }
        }
    }
}

/// The gateway of `gateways` that routes `range` (its primary).
fn primary_of(gateways: &[Node], range: IpNet) -> Option<&str> {
    gateways
        .iter()
        .find(|g| {
            g.egress
                .as_ref()
                .is_some_and(|e| e.routed().any(|r| *r == range))
        })
        .map(|g| g.id.as_str())
}

/// The candidates for `range` among `gateways`, as `presence` sees them
/// (and notes) at `now`.
fn candidates<'g>(
    hub: &Hub,
    presence: &mut Presence,
    gateways: &'g [Node],
    current: Option<&str>,
    now: DateTime<Utc>,
) -> Vec<Candidate<'g>> {
    gateways
        .iter()
        .map(|g| {
            let e = g.egress.as_ref().expect("a gateway of the range");
            Candidate {
                node_id: g.id.as_str(),
                name: g.name.as_str(),
                metric: e.metric.unwrap_or(u32::MAX),
                preempt: e.preempt,
                hold: Duration::from_secs(u64::from(e.hold_seconds)),
                healthy_since: presence.healthy_since(
                    &g.id,
                    hub.up(&g.id),
                    current == Some(g.id.as_str()),
                    now,
                ),
            }
        })
        .collect()
}

/// One round: every shared range's primary chosen again, moved when the
/// choice says so. Returns how many moved.
pub async fn round(service: &Service, hub: &Hub, now: DateTime<Utc>) -> usize {
    let mut moves: Vec<(String, IpNet, String, String, Reason)> = Vec::new();
    {
        let mut presence = hub
            .egress_presence
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (network, range, gateways) in hub.shared_ranges() {
            let current = primary_of(&gateways, range);
            let c = candidates(hub, &mut presence, &gateways, current, now);
            let Some(Choice { primary, reason }) = choose(current, &c, now) else {
                continue;
            };
            let from = match (&reason, current) {
                (Reason::Failover(f) | Reason::Preempted(f), _) => f.clone(),
                (Reason::Elected, Some(c)) if c != primary => c.to_owned(),
                _ => continue,
            };
            moves.push((network, range, from, primary.to_owned(), reason));
        }
    }
    let mut moved = 0;
    for (network, range, from, to, reason) in moves {
        match service.move_primary(&network, range, &from, &to).await {
            Ok(true) => {
                moved += 1;
                tracing::info!(%network, %range, %from, %to, ?reason, "egress range moved to another gateway");
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(%network, %range, error = %e, "moving an egress range failed"),
        }
    }
    moved
}

/// Each gateway of the range of `network` that `egress` carries `dest`
/// out through, when several gateways serve it (the most specific such
/// range holding `dest`), the primary first: (node id, name, primary,
/// why). Empty when no such range holds `dest`.
pub fn standing(
    hub: &Hub,
    network: &str,
    egress: &str,
    dest: IpAddr,
) -> Vec<(String, String, bool, String)> {
    let now = crate::domain::now();
    let Some((range, gateways)) = hub
        .shared_ranges()
        .into_iter()
        .filter(|(n, r, g)| n == network && r.contains(&dest) && g.iter().any(|g| g.id == egress))
        .max_by_key(|(_, r, _)| r.prefix_len())
        .map(|(_, r, g)| (r, g))
    else {
        return Vec::new();
    };
    let Some(current) = primary_of(&gateways, range) else {
        return Vec::new();
    };
    let mut presence = hub
        .egress_presence
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let c = candidates(hub, &mut presence, &gateways, Some(current), now);
    let mut out: Vec<(String, String, bool, String)> = standings(current, &c, now)
        .into_iter()
        .zip(&c)
        .map(|((id, why), c)| (id.clone(), c.name.to_owned(), id == current, why))
        .collect();
    out.sort_by_key(|(_, name, primary, _)| (!*primary, name.clone()));
    out
}

/// Runs [`round`] every `every` until `stop`, with `grace`.
pub async fn run(
    service: Service,
    hub: std::sync::Arc<Hub>,
    grace: Duration,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    hub.egress_presence
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .grace = grace;
    loop {
        round(&service, &hub, crate::domain::now()).await;
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn a_primary_seen_up_then_gone_counts_past_the_grace_and_one_never_seen_up_waits_for_startup() {
        let mut p = Presence::default();
        // At start, "a" (primary) is not connected yet: not gone before
        // the start-up grace, though its own grace (2 s) has passed.
        assert_eq!(p.healthy_since("a", false, true, t(0)), Some(t(0)));
        assert_eq!(p.healthy_since("a", false, true, t(10)), Some(t(0)));
        assert_eq!(p.healthy_since("a", false, true, t(16)), None);
        // "b" was seen up: gone past its grace, even during start-up.
        assert_eq!(p.healthy_since("b", true, true, t(1)), Some(t(1)));
        assert_eq!(p.healthy_since("b", false, true, t(3)), Some(t(3)));
        assert_eq!(p.healthy_since("b", false, true, t(4)), Some(t(3)));
        assert_eq!(p.healthy_since("b", false, true, t(5)), None);
        // Back: healthy since it came back (its hold counts from there).
        assert_eq!(p.healthy_since("b", true, true, t(6)), Some(t(6)));
        // A standby that is down is gone at once.
        assert_eq!(p.healthy_since("c", true, false, t(1)), Some(t(1)));
        assert_eq!(p.healthy_since("c", false, false, t(2)), None);
    }
}
