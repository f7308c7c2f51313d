//! Where a driver arms its one timer, given the deadline its sans-IO cores want now.
//!
//! The cores' `poll_timeout` moves with nearly every message: a record received owes an
//! acknowledgement within `ack_delay`, which the next record sent carries, so the deadline
//! jumps forward and back once per message. Re-arming a runtime timer at each of those
//! (tokio: a new or reset `Sleep`) costs a wake-up of the runtime's own I/O driver (an
//! eventfd write) whenever the new deadline is earlier than the one it is parked for.
//! [`LazyDeadline`] moves the armed deadline only earlier; a later one waits until the
//! armed one fires. Firing early is harmless: the cores' `handle_timeout` acts only on what
//! is due, and the driver then arms what is wanted at that time — but not free: a driver
//! whose deadlines are often withdrawn before they fire (vpn-client's, with netstack's
//! per-flow timers) pays an early wake-up for each, which measured dearer than the eventfd
//! writes saved; exit-node's session driver uses it (docs/BENCHMARKS.md, A/B table).
//!
//! ```text
//! loop {
//!     if let Some(at) = lazy.rearm(core.poll_timeout()) { timer.reset(at) }
//!     select { timer fired, if lazy.is_armed() => { lazy.fired(); core.handle_timeout(now) } … }
//! }
//! ```

use std::time::Instant;

/// The deadline a driver's timer is armed at (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LazyDeadline {
    armed: Option<Instant>,
}

impl LazyDeadline {
    /// Given the deadline wanted now, where to move the timer, if it must move: the first
    /// deadline after the timer fired, or one earlier than the armed one. `None` leaves the
    /// timer as it is (also when nothing is wanted: an armed timer then fires early,
    /// harmlessly).
    pub fn rearm(&mut self, want: Option<Instant>) -> Option<Instant> {
        let want = want?;
        match self.armed {
            Some(armed) if armed <= want => None,
            _ => {
                self.armed = Some(want);
                Some(want)
            }
        }
    }

    /// The timer fired: the next [`Self::rearm`] arms whatever is wanted then.
    pub fn fired(&mut self) {
        self.armed = None;
    }

    /// Whether the timer is armed (a fired timer must not be waited on again).
    pub fn is_armed(&self) -> bool {
        self.armed.is_some()
    }

    /// The deadline the timer is armed at.
    pub fn armed(&self) -> Option<Instant> {
        self.armed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn moves_only_earlier_until_it_fires() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut d = LazyDeadline::default();
        assert!(!d.is_armed());
        assert_eq!(d.rearm(None), None);
        assert!(!d.is_armed());
        // First deadline: armed.
        assert_eq!(d.rearm(Some(ms(5))), Some(ms(5)));
        // Later ones (the ack deadline of the next message, the keepalive): left alone.
        assert_eq!(d.rearm(Some(ms(6))), None);
        assert_eq!(d.rearm(Some(ms(15_000))), None);
        assert_eq!(d.rearm(Some(ms(5))), None);
        assert_eq!(d.rearm(None), None);
        assert_eq!(d.armed(), Some(ms(5)));
        // An earlier one moves it.
        assert_eq!(d.rearm(Some(ms(2))), Some(ms(2)));
        assert_eq!(d.armed(), Some(ms(2)));
        // After it fired, whatever is wanted then, even later.
        d.fired();
        assert!(!d.is_armed());
        assert_eq!(d.rearm(Some(ms(15_000))), Some(ms(15_000)));
        assert!(d.is_armed());
    }
}
