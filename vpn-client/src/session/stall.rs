//! The stall monitor: notices that data has stopped moving while the session waits for it,
//! and names the leg to reconnect — well before `proto`'s leg timeout would.
//!
//! Sans-IO like the cores it watches: the driver reports progress with `now` and asks for a
//! verdict; nothing here reads a clock.
//!
//! ```text
//! driver                                   StallMonitor
//! a record arrived on the down leg  ────►  on_down_record(now)
//! after every loop turn             ────►  observe(now, Work { armed, unacked, streams,
//!                                                              oldest_unacked })
//!                                   ◄────  check(now) -> Option<Stall>   (reconnect that leg)
//! re-arm the timer                  ◄────  poll_timeout()
//! ```
//!
//! The rules (acknowledgements travel on the down leg, so the down leg is judged first):
//! * **down** — work is outstanding (records of ours unacknowledged, or streams open) and
//!   nothing at all has arrived on the down leg for `timeout`. The exit owes us at least its
//!   acknowledgements and its keepalive pings (every 5 s), so the timeout must exceed the
//!   keepalive interval.
//! * **up** — our oldest unacknowledged record was sent `timeout` ago, *although* the down
//!   leg delivered something after it was sent. Every record the exit seals acknowledges
//!   all it has received, so a later record without that acknowledgement means ours never
//!   arrived: the way back works, the way there is stuck. (The age of the oldest record,
//!   not the time of the last acknowledgement, is what counts: a late acknowledgement of an
//!   ack-only record that reached the exit before the stall is not progress.)
//!
//! Only judged while both legs are attached; the clocks restart when they are again.
//!
//! A leg that stalled again within [`REPEAT_WINDOW`] timeouts of its previous stall gets
//! twice the timeout: a fresh connection across a path that silently drops large packets
//! needs several retransmission timeouts before the kernel's packetization-layer PMTU
//! probing shrinks its segments, and reconnecting every `timeout` would restart that
//! discovery forever (proto's leg timeout still bounds the wait).

use std::time::{Duration, Instant};

use proto::Leg;

/// What the session is waiting for, sampled by the driver after each loop turn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Work {
    /// Both legs are attached (otherwise reconnecting is already under way).
    pub armed: bool,
    /// Our sealed records not yet acknowledged, in bytes.
    pub unacked: usize,
    /// Open streams (flows waiting for data or credit from the exit).
    pub streams: usize,
    /// When our oldest unacknowledged record was put on the wire.
    pub oldest_unacked: Option<Instant>,
}

/// A verdict: reconnect `leg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    /// The stuck leg.
    pub leg: Leg,
    /// How long nothing moved.
    pub waited: Duration,
    /// Our bytes unacknowledged at the time.
    pub unacked: usize,
    /// Open streams at the time.
    pub streams: usize,
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.waited.as_secs_f64();
        match self.leg {
            Leg::Up => write!(
                f,
                "up leg stalled for {secs:.1} s with {} bytes unacked (the down leg still delivers)",
                self.unacked
            ),
            Leg::Down => write!(
                f,
                "down leg stalled for {secs:.1} s: nothing received while {} bytes are unacked and {} streams wait",
                self.unacked, self.streams
            ),
        }
    }
}

/// A stall of the same leg within this many timeouts of the previous one doubles its
/// timeout.
pub const REPEAT_WINDOW: u32 = 4;

/// The monitor's state. `timeout` zero turns it off.
#[derive(Debug, Clone)]
pub struct StallMonitor {
    timeout: Duration,
    work: Work,
    /// The last record on the down leg (or when watching started).
    down_rx: Instant,
    /// When each leg (up, down) was last judged stalled.
    last_stall: [Option<Instant>; 2],
}

impl StallMonitor {
    /// A monitor that starts unarmed.
    pub fn new(timeout: Duration, now: Instant) -> StallMonitor {
        StallMonitor {
            timeout,
            work: Work::default(),
            down_rx: now,
            last_stall: [None, None],
        }
    }

    /// When `leg`, quiet since `since`, counts as stalled: after the timeout, or twice the
    /// timeout while its previous stall is recent (until [`REPEAT_WINDOW`] timeouts after
    /// it, when the plain timeout applies again).
    fn deadline(&self, leg: Leg, since: Instant) -> Instant {
        let plain = since + self.timeout;
        match self.last_stall[leg_index(leg)] {
            Some(at) if plain < at + self.timeout * REPEAT_WINDOW => {
                (since + self.timeout * 2).min(at + self.timeout * REPEAT_WINDOW)
            }
            _ => plain,
        }
    }

    /// A record arrived on the down leg.
    pub fn on_down_record(&mut self, now: Instant) {
        self.down_rx = now;
    }

    /// The session's current outstanding work. Arming (both legs attached again) restarts
    /// the down clock: the time spent reconnecting is not a stall (records in flight are
    /// sent again after an attach, which restarts their age).
    pub fn observe(&mut self, now: Instant, work: Work) {
        if work.armed && !self.work.armed {
            self.down_rx = now;
        }
        self.work = work;
    }

    /// The leg to reconnect, if one is stuck. After a verdict the monitor disarms until the
    /// driver reports both legs attached again.
    pub fn check(&mut self, now: Instant) -> Option<Stall> {
        let stall = self.verdict(now)?;
        self.work.armed = false;
        self.last_stall[leg_index(stall.leg)] = Some(now);
        Some(stall)
    }

    fn verdict(&self, now: Instant) -> Option<Stall> {
        if !self.active() {
            return None;
        }
        let w = self.work;
        let stall = |leg, since: Instant| Stall {
            leg,
            waited: now.saturating_duration_since(since),
            unacked: w.unacked,
            streams: w.streams,
        };
        if self.outstanding() && now >= self.deadline(Leg::Down, self.down_rx) {
            return Some(stall(Leg::Down, self.down_rx));
        }
        let sent = self.work.oldest_unacked?;
        (now >= self.deadline(Leg::Up, sent) && self.down_rx > sent).then(|| stall(Leg::Up, sent))
    }

    /// When [`check`](Self::check) may next return a verdict.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.active() {
            return None;
        }
        let down = self
            .outstanding()
            .then(|| self.deadline(Leg::Down, self.down_rx));
        let up = self
            .work
            .oldest_unacked
            .map(|sent| self.deadline(Leg::Up, sent));
        down.into_iter().chain(up).min()
    }

    fn active(&self) -> bool {
        self.work.armed && !self.timeout.is_zero()
    }

    fn outstanding(&self) -> bool {
        self.work.unacked > 0 || self.work.streams > 0
    }
}

fn leg_index(leg: Leg) -> usize {
    usize::from(leg == Leg::Down)
}

#[cfg(test)]
mod tests;
