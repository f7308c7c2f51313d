//! Half-Tunnel OS integration: every call into the operating system that the client makes.
//!
//! This is the only crate with I/O against the host's network configuration; `proto` and
//! `netstack` never see it. Every change goes through the narrow [`System`] trait, with
//! [`LinuxSystem`] doing it for real (in the calling thread's network namespace) and
//! [`RecordingSystem`] recording calls for callers' unit tests. [`Host`] journals each
//! change *before* making it ([`Journal`]), so that [`Host::restore`] — or [`recover`] after
//! a crash — puts the host back exactly.
//!
//! Calling order of `vpn-client up` / `down`:
//!
//! ```no_run
//! # fn main() -> platform::Result<()> {
//! use platform::*;
//! let dir = std::path::Path::new(DEFAULT_JOURNAL_DIR);
//! let mut sys = LinuxSystem::default();
//! recover(&mut sys, dir)?;                         // repair a crashed run (also `down`)
//! let mut host = Host::begin(sys, dir)?;
//! let route_all = RouteAllConfig::new("ht0");
//! host.firewall(&FirewallConfig::kill_switch("ht0", route_all.fwmark))?;
//! let tun = host.create_tun(&TunConfig {
//!     name: "ht0".into(), mtu: 1500, ipv4: Some(("10.77.0.1".parse().unwrap(), 24)),
//!     ipv6: vec![("fd77::1".parse().unwrap(), 64)], offload: TunOffload::None,
//!     multi_queue: false,
//!     tx_queue_len: Some(4096),
//! })?;
//! host.route_all(&route_all)?;
//! host.dns(&DnsConfig { servers: vec!["10.77.0.53".parse().unwrap()], tun: "ht0".into(),
//!     method: DnsMethod::Auto, resolv_conf: "/etc/resolv.conf".into() })?;
//! // ... mark the legs' sockets with set_mark(&socket, route_all.fwmark) before connect,
//! // drive tun (tun_rs::AsyncDevice::new(tun)), call host.check_dns() every few seconds ...
//! drop(tun);
//! host.restore()?;
//! # Ok(()) }
//! ```
//!
//! `unsafe` is denied crate-wide; nothing here needs it (tun-rs does the ioctls, socket2
//! the setsockopt).

#![deny(unsafe_code)]

mod dns;
mod error;
mod fake;
mod firewall;
mod host;
mod journal;
mod linux;
mod mark;
mod routing;
mod snapshot;
mod system;
mod types;

#[cfg(test)]
mod tests;

pub use dns::{DnsCheck, DnsConfig, DnsMethod};
pub use error::{Error, Result};
pub use fake::{Call, RecordingSystem};
pub use firewall::{DEFAULT_TABLE as DEFAULT_NFT_TABLE, FirewallConfig};
pub use host::{Host, Recovery, recover};
pub use journal::{DEFAULT_JOURNAL_DIR, Journal, UndoAction};
pub use linux::LinuxSystem;
pub use mark::{mark, set_mark};
pub use routing::{
    DEFAULT_FWMARK, DEFAULT_PRIORITY, DEFAULT_TABLE, FORWARDING_SYSCTLS, ROUTE_ALL_SYSCTLS,
    RouteAllConfig,
};
pub use snapshot::Snapshot;
pub use system::System;
/// The TUN crate, re-exported so the client uses the same version (`AsyncDevice::new`).
pub use tun_rs;
pub use types::{
    Family, FileState, Route, RouteKind, Rule, RuleSelector, TABLE_MAIN, TunConfig, TunOffload,
};
