//! Half-Tunnel wire protocol, sans-IO: the handshake, encrypted records, the two legs, the
//! stream mux with flow control, and resumption after a leg is lost. The normative
//! specification is `docs/PROTOCOL.md`; section numbers in comments refer to it.
//!
//! This crate must not depend on tokio, sockets, clocks or global state: callers pass bytes
//! and `now`, and poll for what to send, when to wake up, and what happened.
//!
//! ```text
//! client driver                                          exit driver
//! ClientHandshake::start ──(up leg)── HandshakeInit ──►  Acceptor::accept → Connection
//! ClientHandshake::finish ◄──(up leg)─ HandshakeResp ──
//! conn.attach_request(Down) ─(down leg)─ Attach ──────►  conn.handle_attach(Down)
//! conn.handle_attach_ok ◄──(down leg)─── AttachOk ─────
//! loop {                                                 loop {
//!   handle_record / handle_timeout / app calls             the same
//!   while let Some(t) = poll_transmit(now) { send(t) }
//!   while let Some(e) = poll_event() { act(e) }
//!   arm timer at poll_timeout()
//! }                                                      }
//! ```
//!
//! Client→exit records travel only on the up leg and exit→client records only on the down
//! leg (unless fallback is agreed and the down leg is missing); acknowledgements of one
//! direction ride in the records of the other.

mod codec;
mod config;
mod connection;
mod crypto;
mod error;
pub mod frame;
mod handshake;
pub mod message;
pub mod sim;
pub mod timer;
pub mod ws;

pub use config::{MIN_MAX_RECORD, MIN_WINDOW, PeerLimits, Settings};
pub use connection::{
    Connection, DeadReason, Event, LegStats, PAUSED_AFTER, PausedStream, Read, Role, Stats,
    Transmit,
};
pub use crypto::{Cipher, generate_keypair, public_key};
pub use error::{DecodeError, Error, Scope};
pub use frame::{CloseCode, Destination, Frame, ResetCode, StreamId, StreamKind};
pub use handshake::{Accept, Accepted, Acceptor, AllowedClient, ClientConfig, ClientHandshake};
pub use message::{Leg, SUPPORTED_VERSIONS, VERSION};
pub use timer::LazyDeadline;

/// A short, loggable fingerprint of a public key (first 8 bytes, hex). Never log keys.
pub fn fingerprint(public_key: &[u8; 32]) -> String {
    public_key[..8].iter().map(|b| format!("{b:02x}")).collect()
}
