//! The narrow trait through which every change to the host goes.
//!
//! Deleting methods are idempotent: removing something that is already gone is `Ok`. That
//! is what lets [`crate::Host::restore`] replay a journal after a crash, when some of the
//! changes may never have been made or were already undone.

use std::net::IpAddr;
use std::path::Path;

use crate::error::Result;
use crate::types::{FileState, Route, Rule, TunConfig};

/// Every OS operation the client needs. [`crate::LinuxSystem`] does it for real;
/// [`crate::RecordingSystem`] records the calls for callers' unit tests.
pub trait System {
    /// The device handle [`System::create_tun`] returns.
    type Tun;

    /// Create the TUN device, set its MTU and addresses, and bring it up.
    fn create_tun(&mut self, config: &TunConfig) -> Result<Self::Tun>;
    /// Whether a network interface with this name exists.
    fn link_exists(&mut self, name: &str) -> Result<bool>;
    /// Delete a network interface (`ip link del`). Missing is fine.
    fn delete_link(&mut self, name: &str) -> Result<()>;
    /// `ip rule add`.
    fn add_rule(&mut self, rule: &Rule) -> Result<()>;
    /// `ip rule del`. Missing is fine.
    fn delete_rule(&mut self, rule: &Rule) -> Result<()>;
    /// `ip route add`.
    fn add_route(&mut self, route: &Route) -> Result<()>;
    /// `ip route del`. Missing is fine.
    fn delete_route(&mut self, route: &Route) -> Result<()>;
    /// Load an nftables script atomically (`nft -f -`).
    fn load_nft(&mut self, script: &str) -> Result<()>;
    /// `nft delete table inet NAME`. Missing is fine.
    fn delete_nft_table(&mut self, name: &str) -> Result<()>;
    /// Read a sysctl such as `net.ipv4.ip_forward` (trimmed).
    fn read_sysctl(&mut self, key: &str) -> Result<String>;
    /// Write a sysctl.
    fn write_sysctl(&mut self, key: &str, value: &str) -> Result<()>;
    /// Whether systemd-resolved is running.
    fn resolved_running(&mut self) -> bool;
    /// Point systemd-resolved's DNS for every domain (`~.`) at `servers` via `link`.
    fn set_resolved(&mut self, link: &str, servers: &[IpAddr]) -> Result<()>;
    /// `resolvectl revert LINK`. Missing link is fine.
    fn revert_resolved(&mut self, link: &str) -> Result<()>;
    /// What is at `path` now.
    fn read_file(&mut self, path: &Path) -> Result<FileState>;
    /// Atomically make `path` be `state` (temp file + fsync + rename).
    fn write_file(&mut self, path: &Path, state: &FileState) -> Result<()>;
}
