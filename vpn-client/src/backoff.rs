//! Reconnect pacing for one leg: exponential backoff with jitter, slower after
//! authentication failures, and a circuit breaker that stops hammering a dead endpoint.
//!
//! Pure state (no clock, no I/O): the driver reports outcomes and sleeps for what it is told.

use std::time::Duration;

/// Consecutive failures after which the breaker opens and every retry waits the maximum.
pub const OPEN_AFTER: u32 = 8;

/// What kind of failure ended an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Network, TLS or HTTP trouble: retry on the normal schedule.
    Network,
    /// The exit refused our credentials (or never answered the handshake): retrying fast
    /// cannot help, so wait at least half the maximum.
    Auth,
}

/// The breaker's state, shown by `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    /// Retrying on the exponential schedule.
    Closed,
    /// Too many consecutive failures: retrying at the maximum interval until one succeeds.
    Open,
}

/// Backoff state for one leg.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
    rng: u64,
}

impl Backoff {
    /// Delays start at `initial` and double up to `max`; `seed` drives the jitter.
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            failures: 0,
            rng: seed | 1,
        }
    }

    /// Record a failed attempt; returns how long to wait before the next one.
    pub fn on_failure(&mut self, kind: Failure) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let base = match self.breaker() {
            Breaker::Open => self.max,
            Breaker::Closed => self
                .initial
                .saturating_mul(1 << (self.failures - 1).min(20))
                .min(self.max),
        };
        let base = match kind {
            Failure::Network => base,
            Failure::Auth => base.max(self.max / 2),
        };
        // "Equal jitter": half fixed, half random, so retries of many clients spread out
        // but never collapse to zero.
        let half = base / 2;
        half + half.mul_f64(self.next_unit())
    }

    /// Record a successful attempt: the schedule starts over.
    pub fn on_success(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The breaker's state.
    pub fn breaker(&self) -> Breaker {
        if self.failures >= OPEN_AFTER {
            Breaker::Open
        } else {
            Breaker::Closed
        }
    }

    /// xorshift64*: jitter only, not security.
    fn next_unit(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn delays_double_with_jitter_up_to_the_maximum() {
        let mut b = Backoff::new(S, 60 * S, 42);
        let mut last_base = Duration::ZERO;
        for n in 1..=10u32 {
            let base = (S * 2u32.pow(n - 1)).min(60 * S);
            let d = b.on_failure(Failure::Network);
            assert!(
                d >= base / 2 && d <= base,
                "attempt {n}: {d:?} not in [{:?}, {base:?}]",
                base / 2
            );
            assert!(base >= last_base);
            last_base = base;
        }
        assert_eq!(b.failures(), 10);
    }

    #[test]
    fn success_resets_and_breaker_opens_after_repeated_failures() {
        let mut b = Backoff::new(S, 60 * S, 7);
        for _ in 0..OPEN_AFTER - 1 {
            b.on_failure(Failure::Network);
        }
        assert_eq!(b.breaker(), Breaker::Closed);
        b.on_failure(Failure::Network);
        assert_eq!(b.breaker(), Breaker::Open);
        assert!(b.on_failure(Failure::Network) >= 30 * S);
        b.on_success();
        assert_eq!((b.breaker(), b.failures()), (Breaker::Closed, 0));
        assert!(b.on_failure(Failure::Network) <= S);
    }

    #[test]
    fn auth_failures_retry_slowly_from_the_start() {
        let mut b = Backoff::new(S, 60 * S, 3);
        let d = b.on_failure(Failure::Auth);
        assert!(d >= 15 * S && d <= 30 * S, "{d:?}");
    }

    #[test]
    fn jitter_differs_between_seeds() {
        let delays = |seed| {
            let mut b = Backoff::new(S, 60 * S, seed);
            (0..6)
                .map(|_| b.on_failure(Failure::Network))
                .collect::<Vec<_>>()
        };
        assert_ne!(delays(1), delays(2));
        assert_eq!(delays(5), delays(5));
    }
}
