//! When a WebSocket close 4404 ("unknown session") means the exit really lost the session
//! (docs/PROTOCOL.md §7.4).
//!
//! A 4404 is not authenticated: whoever answers a leg — a relay or CDN, treated as an
//! active attacker — can send it. So a 4404 alone never ends a session whose exit still
//! speaks: it is **advisory** (retry that leg with its backoff, keep the session and its
//! flows) until it is **confirmed**:
//!
//! * both legs answered 4404 with nothing authenticated arriving in between; or
//! * a leg answered 4404 and nothing authenticated (a record, an `AttachOk`) arrived within
//!   the confirmation window, although the exit, if it still held the session, would have
//!   sent something: its records or keepalive pings on the down leg, or in fallback on the
//!   up leg, or the answer to the other leg's attach.
//!
//! Anything authenticated after the 4404 clears the suspicion — only what proto
//! authenticated counts ([`proto::Connection::last_authenticated`]), never a duplicate
//! record a relay replays. When nothing authenticated can arrive in any case (a 4404 on
//! the down leg while the up leg is attached and fallback was not agreed), no window runs:
//! only the other leg's 4404 confirms.
//!
//! Sans-IO like [`super::stall`]: the driver reports 4404s and time, with when proto last
//! authenticated something (`last_auth`).
//!
//! ```text
//! driver                                          UnknownSession
//! close 4404 on an attaching transport   ────►    on_unknown(now, leg, evidence_expected, last_auth)
//!                                        ◄────    Verdict::RetryLeg | Verdict::Lost(why)
//! the timer fired                        ────►    handle_timeout(now, last_auth) -> Option<Confirmed>
//! re-arm the timer                       ◄────    poll_timeout()
//! ```

use std::time::{Duration, Instant};

use proto::Leg;

/// What the driver does about a 4404.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not confirmed: retry that leg with its normal backoff; the session and its flows stay.
    RetryLeg,
    /// Confirmed: the exit lost the session; start a new one.
    Lost(Confirmed),
}

/// How a 4404 was confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmed {
    /// Both legs answered 4404, nothing authenticated in between.
    BothLegs,
    /// A 4404, then nothing authenticated for this long.
    Silent(Duration),
}

impl std::fmt::Display for Confirmed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Confirmed::BothLegs => f.write_str("both legs were answered with close 4404"),
            Confirmed::Silent(d) => write!(
                f,
                "close 4404, and nothing authenticated arrived from the exit for {d:?} after it"
            ),
        }
    }
}

/// Whether an unconfirmed 4404 is pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing authenticated is missing: no 4404 since the last authenticated input.
    Trusted,
    /// 4404 on `legs` (up, down), the first at `since`, and nothing authenticated since;
    /// the session is given up at `deadline`, if one runs.
    Suspect {
        since: Instant,
        legs: [bool; 2],
        deadline: Option<Instant>,
    },
}

/// The 4404 rule of one session.
#[derive(Debug)]
pub struct UnknownSession {
    window: Duration,
    state: State,
}

impl UnknownSession {
    /// A rule with confirmation window `window`: it must exceed the exit's keepalive
    /// interval (5 s by default), the longest an alive exit is silent on a working leg.
    pub fn new(window: Duration) -> UnknownSession {
        UnknownSession {
            window,
            state: State::Trusted,
        }
    }

    /// The confirmation window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Forget any 4404 (a new session starts).
    pub fn reset(&mut self) {
        self.state = State::Trusted;
    }

    /// Something authenticated arrived after the first unconfirmed 4404: the exit holds the
    /// session, the 4404s were not true.
    fn refresh(&mut self, last_auth: Option<Instant>) {
        if let State::Suspect { since, .. } = self.state
            && last_auth.is_some_and(|t| t > since)
        {
            self.state = State::Trusted;
        }
    }

    /// The attaching transport of `leg` was closed with 4404. `evidence_expected`: whether
    /// an exit that still held the session would send something authenticated within the
    /// window (false only when nothing can arrive: see the module doc). `last_auth`: when
    /// proto last authenticated a message of this session.
    pub fn on_unknown(
        &mut self,
        now: Instant,
        leg: Leg,
        evidence_expected: bool,
        last_auth: Option<Instant>,
    ) -> Verdict {
        self.refresh(last_auth);
        let (since, mut legs, mut deadline) = match self.state {
            State::Trusted => (now, [false; 2], None),
            State::Suspect {
                since,
                legs,
                deadline,
            } => (since, legs, deadline),
        };
        legs[leg.index()] = true;
        if legs == [true; 2] {
            self.state = State::Trusted;
            return Verdict::Lost(Confirmed::BothLegs);
        }
        if evidence_expected && deadline.is_none() {
            deadline = Some(now + self.window);
        }
        self.state = State::Suspect {
            since,
            legs,
            deadline,
        };
        Verdict::RetryLeg
    }

    /// Whether a 4404 is waiting for confirmation (as of the last call).
    pub fn suspect(&self) -> bool {
        matches!(self.state, State::Suspect { .. })
    }

    /// When the window of an unconfirmed 4404 ends (authenticated input may have cleared
    /// it by then: [`handle_timeout`](Self::handle_timeout) checks).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Trusted => None,
            State::Suspect { deadline, .. } => deadline,
        }
    }

    /// `Some` if the window ran out with nothing authenticated since the 4404: the session
    /// is lost.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        last_auth: Option<Instant>,
    ) -> Option<Confirmed> {
        self.refresh(last_auth);
        let due = self.poll_timeout().is_some_and(|t| t <= now);
        if !due {
            return None;
        }
        self.state = State::Trusted;
        Some(Confirmed::Silent(self.window))
    }
}

#[cfg(test)]
mod tests;
