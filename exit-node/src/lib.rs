//! The Half-Tunnel exit node: terminates the up and down legs of every client session,
//! dials real destinations under an egress policy, and resolves DNS for clients.
//!
//! This crate is a binary plus the library its tests drive. It may depend on `proto`, tokio,
//! tokio-tungstenite, rustls, hickory-resolver and rtnetlink (the exit's own addresses,
//! `own`); protocol rules live in `proto`, not here.

pub mod admin;
pub mod config;
pub mod descriptors;
pub mod dial;
pub mod dns;
pub mod keys;
pub mod listener;
pub mod node;
pub mod own;
pub mod policy;
pub mod server;
pub mod session;
pub mod state;
#[cfg(test)]
pub(crate) mod testutil;
