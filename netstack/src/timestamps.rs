//! TCP timestamps (RFC 7323) on the flows smoltcp terminates.
//!
//! An app's kernel may reuse a `TIME_WAIT` port for a new connection to the same
//! destination only if the old connection carried timestamps (Linux's
//! `tcp_twsk_unique`; PAWS keeps the two connections apart). Without them every
//! connection an app closes first holds its local port for 60 s, and an app that opens
//! more than ~28,000 connections a minute to one destination (the default
//! `ip_local_port_range`) stalls in `connect()`. So the stack answers a SYN that offers
//! timestamps with timestamps, as a kernel peer would.
//!
//! smoltcp takes the clock as a plain `fn() -> u32`, which can capture nothing: the
//! stack publishes its own `now` (milliseconds since it started, plus a per-stack
//! offset, RFC 7323 §5.4) in a thread-local right before each poll, so the values stay
//! a function of the caller's `now` (sans-IO) and rise monotonically within a stack.
//!
//! smoltcp sizes a segment's payload as `min(peer's MSS, MTU − 40)` without counting
//! options; with the 12 bytes of the timestamp option a full segment would exceed the
//! peer's MSS and the MTU (and a 65,535-byte IP packet cannot grow). So before a held
//! SYN that offers timestamps reaches smoltcp, its MSS option is lowered by
//! [`OPTION_LEN`]: the app still gets segments of exactly its MSS, options included
//! (RFC 6691), and the MSS we advertise is unchanged.

use std::cell::Cell;

/// Bytes the timestamp option adds to every segment (kind 8, length 10, two NOPs).
pub(crate) const OPTION_LEN: u16 = 12;

thread_local! {
    static CLOCK: Cell<u32> = const { Cell::new(0) };
}

/// smoltcp's timestamp generator: the clock the polling stack published.
pub(crate) fn tsval() -> u32 {
    CLOCK.with(Cell::get)
}

/// Publishes the polling stack's clock (call right before smoltcp runs).
pub(crate) fn set_clock(tsval: u32) {
    CLOCK.with(|c| c.set(tsval));
}
