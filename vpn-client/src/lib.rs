//! The Half-Tunnel client: `sudo vpn-client up` routes the whole machine through the tunnel.
//!
//! This crate is the binary plus the library its tests drive: the CLI, the configuration,
//! and the async drivers that pump TUN ⇄ netstack ⇄ proto ⇄ the two WebSocket legs. Protocol
//! rules live in `proto`, packet handling in `netstack`, OS calls in `platform`; nothing here
//! re-implements them.

pub mod backoff;
pub mod config;
pub mod device;
pub mod flows;
mod gso;
pub mod keys;
pub mod leg;
pub mod session;
pub mod up;
