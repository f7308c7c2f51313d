//! Typed descriptions of the changes this crate makes. They are also the journal's
//! vocabulary, hence serde.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The kernel's main routing table (`ip route show table main`).
pub const TABLE_MAIN: u32 = 254;

/// IPv4 or IPv6, for commands that need `-4` / `-6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The family of a prefix.
    pub fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    /// The `ip` flag selecting this family.
    pub fn flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }

    /// The default route's prefix (`0.0.0.0/0` or `::/0`).
    pub fn any(self) -> IpNet {
        match self {
            Family::V4 => IpNet::V4(ipnet::Ipv4Net::default()),
            Family::V6 => IpNet::V6(ipnet::Ipv6Net::default()),
        }
    }
}

/// Which packets a policy rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuleSelector {
    /// Every packet.
    All,
    /// Packets whose firewall mark is not this one (`not fwmark M`).
    NotFwmark(u32),
    /// Packets to this prefix (`to CIDR`).
    To(IpNet),
}

/// One `ip rule`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Address family.
    pub family: Family,
    /// Rule priority (`pref`); lower is consulted first.
    pub priority: u32,
    /// Which packets it matches.
    pub selector: RuleSelector,
    /// The table to look up.
    pub table: u32,
    /// `suppress_prefixlength N`: ignore routes with a prefix this short or shorter.
    pub suppress_prefixlength: Option<u8>,
}

impl Rule {
    /// Arguments after `ip -4|-6 rule add|del`.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["priority".to_owned(), self.priority.to_string()];
        match &self.selector {
            RuleSelector::All => {}
            RuleSelector::NotFwmark(m) => {
                a.extend(["not".into(), "fwmark".into(), format!("{m:#x}")])
            }
            RuleSelector::To(net) => a.extend(["to".into(), net.to_string()]),
        }
        a.extend(["table".into(), self.table.to_string()]);
        if let Some(n) = self.suppress_prefixlength {
            a.extend(["suppress_prefixlength".into(), n.to_string()]);
        }
        a
    }
}

/// What a route does with matching packets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteKind {
    /// Send out of this interface (`dev NAME`).
    Dev(String),
    /// Return from this table and continue with the next rule (`throw`).
    Throw,
}

/// One `ip route` in a given table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination prefix.
    pub dest: IpNet,
    /// What to do with it.
    pub kind: RouteKind,
    /// Routing table id.
    pub table: u32,
}

impl Route {
    /// Address family of the destination.
    pub fn family(&self) -> Family {
        Family::of(&self.dest)
    }

    /// Arguments after `ip -4|-6 route add|del`.
    pub fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if self.kind == RouteKind::Throw {
            a.push("throw".to_owned());
        }
        a.push(self.dest.to_string());
        if let RouteKind::Dev(dev) = &self.kind {
            a.extend(["dev".into(), dev.clone()]);
        }
        a.extend(["table".into(), self.table.to_string()]);
        a
    }
}

/// What is at a path: used to back up and restore the resolver file exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileState {
    /// Nothing.
    Absent,
    /// A regular file with these bytes and permission bits.
    File {
        /// Contents.
        contents: Vec<u8>,
        /// `st_mode & 0o7777`.
        mode: u32,
    },
    /// A symbolic link (e.g. to systemd-resolved's stub file).
    Symlink {
        /// Where it points.
        target: PathBuf,
    },
}

/// What a TUN leaves to its reader (`IFF_VNET_HDR`). With anything but `None` every
/// packet read or written starts with a 10-byte `virtio_net_hdr` (tun-rs'
/// `VirtioNetHdr`, `VIRTIO_NET_HDR_LEN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TunOffload {
    /// Plain IP packets; the kernel computes and verifies every checksum.
    #[default]
    None,
    /// `TUN_F_CSUM` only: packets of this host's sockets arrive with their TCP/UDP
    /// checksum partial (`VIRTIO_NET_HDR_F_NEEDS_CSUM`; the field holds the pseudo-header
    /// sum), and packets written with `NEEDS_CSUM` are completed by the kernel only if
    /// they leave the host (local sockets trust them). No GSO: every packet fits the MTU.
    Checksum,
    /// `TUN_F_CSUM|TSO4|TSO6`, no UDP segmentation: as [`TunOffload::Checksum`], and TCP
    /// packets may arrive as GSO packets of up to 64 KiB (`gso_type` `TCPV4`/`TCPV6`,
    /// `NEEDS_CSUM`), each one TCP segment with valid IP lengths covering several of the
    /// sender's segments: traffic forwarded from a LAN of MTU 1500 then reaches the reader
    /// in the kernel's GRO/TSO batches instead of one read per 1,500 bytes, whatever the
    /// TUN's MTU. Written packets may be TCP GSO packets too; the kernel cuts them where
    /// they leave the host.
    TcpSegments,
    /// `TUN_F_CSUM|TSO4|TSO6` (and `USO4|USO6` where the kernel has them): reads may be
    /// 64 KiB GSO super-packets; use tun-rs' `recv_multiple`/`send_multiple`.
    Segmentation,
}

/// The TUN device to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunConfig {
    /// Interface name (at most 15 bytes).
    pub name: String,
    /// MTU; TUN devices accept up to 65535.
    pub mtu: u16,
    /// IPv4 address and prefix length.
    pub ipv4: Option<(Ipv4Addr, u8)>,
    /// IPv6 addresses and prefix lengths.
    pub ipv6: Vec<(Ipv6Addr, u8)>,
    /// What the kernel offloads to the reader (see [`TunOffload`]).
    pub offload: TunOffload,
    /// Ask for IFF_MULTI_QUEUE so the device can be cloned per worker.
    pub multi_queue: bool,
    /// Packets the kernel queues for us to read (`txqueuelen`: the size of the TUN's
    /// ring); `None` keeps the kernel's default (500). A full ring drops what the kernel
    /// sends next, so it must absorb a burst while the reader catches up.
    pub tx_queue_len: Option<u32>,
}
