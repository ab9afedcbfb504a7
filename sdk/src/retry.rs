//! Exponential backoff with jitter, for retrying idempotent calls and for
//! reconnecting the agent's config stream.

use std::time::Duration;

/// An exponential backoff schedule with random jitter.
///
/// The `n`-th delay (counting from 0) is `initial × multiplier^n`, capped at
/// `max`, then spread uniformly over `±jitter` of itself (and capped at `max`
/// again), so a fleet of clients that failed together does not retry
/// together.
///
/// ```
/// use std::time::Duration;
/// use meshplane_sdk::Backoff;
///
/// let b = Backoff::agent();
/// let first = b.delay(0);
/// assert!(first >= Duration::from_millis(400) && first <= Duration::from_millis(1200));
/// assert!(b.delay(30) <= Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Base delay before the first retry.
    pub initial: Duration,
    /// Factor the base delay grows by with each further retry (at least 1).
    pub multiplier: f64,
    /// Largest delay.
    pub max: Duration,
    /// Relative spread in `[0, 1]`: 0.5 picks each delay uniformly from 50 %
    /// to 150 % of the base delay.
    pub jitter: f64,
}

impl Backoff {
    /// The schedule for retrying idempotent calls: 100 ms × 2 up to 5 s,
    /// ±50 %.
    pub const fn calls() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max: Duration::from_secs(5),
            jitter: 0.5,
        }
    }

    /// The schedule the agent reconnects with: 800 ms × 1.7 up to 10 s,
    /// ±50 % (NetBird's schedule, with jitter), reset after a healthy stream.
    pub const fn agent() -> Self {
        Backoff {
            initial: Duration::from_millis(800),
            multiplier: 1.7,
            max: Duration::from_secs(10),
            jitter: 0.5,
        }
    }

    /// The base delay of retry `attempt` (0 for the first retry), before
    /// jitter.
    pub fn base(&self, attempt: u32) -> Duration {
        let factor = self.multiplier.max(1.0).powi(attempt.min(64) as i32);
        let secs = (self.initial.as_secs_f64() * factor).min(self.max.as_secs_f64());
        Duration::from_secs_f64(secs.max(0.0))
    }

    /// The delay before retry `attempt` (0 for the first retry), with
    /// jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.base(attempt).as_secs_f64();
        let jitter = self.jitter.clamp(0.0, 1.0);
        let spread = if jitter > 0.0 {
            rand::random_range(-jitter..=jitter)
        } else {
            0.0
        };
        let secs = (base * (1.0 + spread)).min(self.max.as_secs_f64());
        Duration::from_secs_f64(secs.max(0.0))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::calls()
    }
}

/// When and how often idempotent calls are retried.
///
/// Only reads (`Get*`, `List*`, `GetNodeConfig`, `ExplainRoute`,
/// `GetHostsFile`, and opening `Watch*` streams) are retried, and only when
/// the server is UNAVAILABLE; writes are never retried, since the first
/// attempt may have taken effect. A delay the server asks for
/// (`google.rpc.RetryInfo`) is waited at least. The call's deadline bounds
/// all attempts together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all (1 disables retries).
    pub max_attempts: u32,
    /// Delays between attempts.
    pub backoff: Backoff,
}

impl RetryPolicy {
    /// No retries.
    pub const fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            backoff: Backoff::calls(),
        }
    }
}

impl Default for RetryPolicy {
    /// 8 attempts, 100 ms × 2 up to 5 s (about 13 s of retrying in all).
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            backoff: Backoff::calls(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_the_multiplier_and_stops_at_max() {
        let b = Backoff::agent();
        assert_eq!(b.base(0), Duration::from_millis(800));
        assert_eq!(b.base(1), Duration::from_millis(1360));
        assert!(b.base(2) > Duration::from_millis(2311) && b.base(2) < Duration::from_millis(2313));
        assert_eq!(b.base(10), Duration::from_secs(10));
        assert_eq!(b.base(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn jitter_spreads_within_bounds_and_never_exceeds_max() {
        let b = Backoff::agent();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..500 {
            let d = b.delay(1);
            assert!(
                d >= Duration::from_millis(680) && d <= Duration::from_millis(2040),
                "{d:?}"
            );
            seen.insert(d.as_millis());
            assert!(b.delay(20) <= b.max);
            assert!(b.delay(20) >= b.max / 2);
        }
        assert!(
            seen.len() > 50,
            "delays are spread: {} distinct",
            seen.len()
        );
        let exact = Backoff { jitter: 0.0, ..b };
        assert_eq!(exact.delay(1), Duration::from_millis(1360));
    }
}
