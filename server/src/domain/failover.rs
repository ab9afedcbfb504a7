//! Which gateway routes an egress range that several gateways serve: the
//! server's choice, a pure function of the gateways' metrics, their health
//! and the current choice.
//!
//! - The primary is the healthy gateway with the lowest metric (ties: the
//!   lower name, then id), chosen again only when something forces it:
//! - a primary that is down is replaced at once by the best healthy one;
//! - a better gateway that recovers takes the range back only once it has
//!   been healthy for its hold time, and never when it does not preempt,
//!   so a flapping gateway does not make the routes flap;
//! - when every gateway is down, the current primary keeps the range
//!   (dropping the route would not bring the traffic anywhere better).

use std::{cmp::Ordering, time::Duration};

use chrono::{DateTime, Utc};

/// One gateway serving the range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// The gateway's node id.
    pub node_id: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Lower wins.
    pub metric: u32,
    /// Whether it takes the range back from a worse primary once healthy
    /// for `hold`.
    pub preempt: bool,
    /// How long it must have been healthy before it takes the range back.
    pub hold: Duration,
    /// Since when it has been healthy without a break; None while it is
    /// down (its agent gone past the grace, or a probe of the range
    /// failing).
    pub healthy_since: Option<DateTime<Utc>>,
}

impl Candidate<'_> {
    fn rank(&self) -> (u32, &str, &str) {
        (self.metric, self.name, self.node_id)
    }

    fn healthy(&self) -> bool {
        self.healthy_since.is_some()
    }

    /// Healthy for its whole hold time at `now`.
    fn settled(&self, now: DateTime<Utc>) -> bool {
        self.healthy_since.is_some_and(|t| {
            now.signed_duration_since(t)
                .to_std()
                .is_ok_and(|d| d >= self.hold)
        })
    }
}

fn by_rank(a: &&Candidate<'_>, b: &&Candidate<'_>) -> Ordering {
    a.rank().cmp(&b.rank())
}

/// Why the primary is the one it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// There was none (or it no longer serves the range): the best one.
    Elected,
    /// It stays: healthy, and no better gateway may take over yet.
    Kept,
    /// The primary (this node id) is down: the best healthy one takes over.
    Failover(String),
    /// A better gateway healthy for its hold time takes the range back from
    /// this node id.
    Preempted(String),
    /// Every gateway is down: the current primary keeps the range.
    AllDown,
}

/// The primary chosen, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice<'a> {
    /// Its node id.
    pub primary: &'a str,
    /// Why.
    pub reason: Reason,
}

impl Choice<'_> {
    /// Whether the primary changes (from a primary that still serves the
    /// range, or had none).
    pub fn moves(&self) -> bool {
        !matches!(self.reason, Reason::Kept | Reason::AllDown)
    }
}

/// The primary among `candidates` (None when there are none), given the
/// `current` one (a node id, which may no longer be a candidate) at `now`.
pub fn choose<'a>(
    current: Option<&str>,
    candidates: &[Candidate<'a>],
    now: DateTime<Utc>,
) -> Option<Choice<'a>> {
    let best_healthy = candidates.iter().filter(|c| c.healthy()).min_by(by_rank);
    let Some(cur) = current.and_then(|id| candidates.iter().find(|c| c.node_id == id)) else {
        let best = best_healthy.or_else(|| candidates.iter().min_by(by_rank))?;
        return Some(Choice {
            primary: best.node_id,
            reason: Reason::Elected,
        });
    };
    if !cur.healthy() {
        return Some(match best_healthy {
            Some(b) => Choice {
                primary: b.node_id,
                reason: Reason::Failover(cur.node_id.to_owned()),
            },
            None => Choice {
                primary: cur.node_id,
                reason: Reason::AllDown,
            },
        });
    }
    let better = candidates
        .iter()
        .filter(|c| c.preempt && c.rank() < cur.rank() && c.settled(now))
        .min_by(by_rank);
    Some(match better {
        Some(b) => Choice {
            primary: b.node_id,
            reason: Reason::Preempted(cur.node_id.to_owned()),
        },
        None => Choice {
            primary: cur.node_id,
            reason: Reason::Kept,
        },
    })
}

/// Why each candidate is or is not the primary `primary` (for
/// ExplainRoute), in their order.
pub fn standings(
    primary: &str,
    candidates: &[Candidate<'_>],
    now: DateTime<Utc>,
) -> Vec<(String, String)> {
    let cur = candidates.iter().find(|c| c.node_id == primary);
    candidates
        .iter()
        .map(|c| {
            let why = if c.node_id == primary {
                if c.healthy() {
                    format!("primary (metric {})", c.metric)
                } else {
                    format!(
                        "primary though down: no gateway of the range is healthy (metric {})",
                        c.metric
                    )
                }
            } else if !c.healthy() {
                format!("standby, down (metric {})", c.metric)
            } else if cur.is_some_and(|p| c.rank() > p.rank()) {
                format!("standby (metric {}, the primary's is better)", c.metric)
            } else if !c.preempt {
                format!("standby (metric {}; does not preempt)", c.metric)
            } else if !c.settled(now) {
                let up = c
                    .healthy_since
                    .map(|t| now.signed_duration_since(t).num_seconds().max(0))
                    .unwrap_or(0);
                format!(
                    "standby (metric {}; healthy for {up} s of its {} s hold)",
                    c.metric,
                    c.hold.as_secs()
                )
            } else {
                format!("standby (metric {})", c.metric)
            };
            (c.node_id.to_owned(), why)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn gw<'a>(id: &'a str, metric: u32, up_since: Option<i64>) -> Candidate<'a> {
        Candidate {
            node_id: id,
            name: id,
            metric,
            preempt: true,
            hold: Duration::from_secs(30),
            healthy_since: up_since.map(t),
        }
    }

    #[test]
    fn the_healthy_gateway_with_the_lowest_metric_is_elected() {
        let c = [gw("b", 20, Some(0)), gw("a", 10, Some(0)), gw("c", 5, None)];
        let got = choose(None, &c, t(0)).unwrap();
        assert_eq!(got.primary, "a");
        assert_eq!(got.reason, Reason::Elected);
        // Ties: the lower name.
        let c = [gw("y", 10, Some(0)), gw("x", 10, Some(0))];
        assert_eq!(choose(None, &c, t(0)).unwrap().primary, "x");
        // None healthy: the best by metric still routes it.
        let c = [gw("b", 20, None), gw("a", 10, None)];
        assert_eq!(choose(None, &c, t(0)).unwrap().primary, "a");
        assert!(choose(None, &[], t(0)).is_none());
    }

    #[test]
    fn a_primary_that_goes_down_is_replaced_at_once_and_kept_when_all_are_down() {
        let c = [gw("a", 10, None), gw("b", 20, Some(0))];
        let got = choose(Some("a"), &c, t(1)).unwrap();
        assert_eq!(got.primary, "b");
        assert_eq!(got.reason, Reason::Failover("a".into()));
        assert!(got.moves());
        let c = [gw("a", 10, None), gw("b", 20, None)];
        let got = choose(Some("b"), &c, t(1)).unwrap();
        assert_eq!((got.primary, got.reason), ("b", Reason::AllDown));
    }

    #[test]
    fn a_better_gateway_takes_back_only_after_its_hold_and_only_when_it_preempts() {
        let mut c = [gw("a", 10, Some(100)), gw("b", 20, Some(0))];
        assert_eq!(choose(Some("b"), &c, t(129)).unwrap().reason, Reason::Kept);
        let got = choose(Some("b"), &c, t(130)).unwrap();
        assert_eq!(
            (got.primary, got.reason),
            ("a", Reason::Preempted("b".into()))
        );
        c[0].preempt = false;
        assert_eq!(choose(Some("b"), &c, t(1000)).unwrap().primary, "b");
        // A worse gateway never preempts.
        let c = [gw("a", 10, Some(0)), gw("b", 20, Some(0))];
        assert_eq!(choose(Some("a"), &c, t(1000)).unwrap().reason, Reason::Kept);
    }

    #[test]
    fn standings_say_why() {
        let c = [
            gw("a", 10, Some(100)),
            gw("b", 20, Some(0)),
            gw("c", 30, None),
        ];
        let s = standings("b", &c, t(110));
        assert_eq!(
            s[0].1,
            "standby (metric 10; healthy for 10 s of its 30 s hold)"
        );
        assert_eq!(s[1].1, "primary (metric 20)");
        assert_eq!(s[2].1, "standby, down (metric 30)");
    }

    proptest! {
        #![proptest_config(crate::domain::proptests::config(256))]

        /// Over any health timeline of three gateways, checked every second:
        /// the primary is healthy whenever one is; it moves only when it is
        /// down or a better one has been healthy for its hold; choosing
        /// again at once keeps it; and it moves at most once per change of
        /// any gateway's health (no flapping without a cause).
        #[test]
        fn prop_the_choice_is_healthy_stable_and_moves_only_for_a_reason(
            flips in prop::collection::vec((0usize..3, 1i64..40), 0..30),
            metrics in prop::collection::vec(0u32..3, 3),
            preempt in prop::collection::vec(any::<bool>(), 3),
        ) {
            let ids = ["a", "b", "c"];
            let mut since: [Option<i64>; 3] = [Some(0), Some(0), Some(0)];
            let mut events: Vec<(i64, usize)> = Vec::new();
            let mut at = 0;
            for (g, gap) in flips {
                at += gap;
                events.push((at, g));
            }
            let end = at + 100;
            let mut primary: Option<String> = None;
            let (mut moves, mut transitions) = (0usize, 0usize);
            let mut e = 0;
            for now in 0..=end {
                while e < events.len() && events[e].0 == now {
                    let g = events[e].1;
                    since[g] = match since[g] {
                        Some(_) => None,
                        None => Some(now),
                    };
                    transitions += 1;
                    e += 1;
                }
                let c: Vec<Candidate> = (0..3)
                    .map(|i| Candidate {
                        node_id: ids[i],
                        name: ids[i],
                        metric: metrics[i],
                        preempt: preempt[i],
                        hold: Duration::from_secs(10),
                        healthy_since: since[i].map(t),
                    })
                    .collect();
                let got = choose(primary.as_deref(), &c, t(now)).unwrap();
                let chosen = c.iter().find(|x| x.node_id == got.primary).unwrap();
                if c.iter().any(|x| x.healthy()) {
                    prop_assert!(chosen.healthy(), "at {}: {:?} chose {:?}", now, c, got);
                }
                if primary.is_some() && got.moves() {
                    moves += 1;
                    let old = c.iter().find(|x| Some(x.node_id) == primary.as_deref()).unwrap();
                    prop_assert!(
                        !old.healthy() || (chosen.preempt && chosen.settled(t(now)) && chosen.rank() < old.rank()),
                        "at {}: moved from {:?} to {:?}", now, old, chosen
                    );
                }
                let again = choose(Some(got.primary), &c, t(now)).unwrap();
                prop_assert!(!again.moves(), "at {}: not stable: {:?} then {:?}", now, got, again);
                primary = Some(got.primary.to_owned());
            }
            prop_assert!(moves <= transitions, "{} moves for {} health changes", moves, transitions);
        }
    }
}
