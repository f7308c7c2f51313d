//! Pointing the system resolver at the virtual resolver inside the TUN.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::types::FileState;

/// How to configure system DNS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsMethod {
    /// systemd-resolved if it runs, else the resolver file.
    Auto,
    /// `resolvectl dns/domain ~./default-route` on the TUN link.
    Resolved,
    /// Replace the resolver file (backed up in the journal).
    ResolvConf,
}

/// System DNS configuration while the tunnel is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Resolver addresses inside the TUN.
    pub servers: Vec<IpAddr>,
    /// The TUN interface (for systemd-resolved).
    pub tun: String,
    /// How.
    pub method: DnsMethod,
    /// The resolver file; `/etc/resolv.conf` in production, a temp file in tests.
    pub resolv_conf: PathBuf,
}

impl DnsConfig {
    /// The resolver file we write.
    pub fn resolv_conf_contents(&self) -> FileState {
        let mut text = String::from(
            "# Written by half-tunnel while connected; `vpn-client down` restores the original.\n",
        );
        for s in &self.servers {
            text += &format!("nameserver {s}\n");
        }
        FileState::File {
            contents: text.into_bytes(),
            mode: 0o644,
        }
    }
}

/// What [`crate::Host::check_dns`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsCheck {
    /// Our resolver file is in place (or DNS is not file-based / not configured).
    Intact,
    /// Someone replaced it: their version is now the backup, ours was put back.
    Reasserted,
}
