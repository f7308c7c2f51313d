//! Egress policy: which destinations the exit node will dial on a client's behalf.
//!
//! Default-deny for everything that is not public unicast: loopback, unspecified, RFC 1918,
//! CGNAT, link-local (including the cloud metadata address 169.254.169.254), ULA, multicast,
//! broadcast, reserved, benchmarking and documentation ranges, and the exit's own addresses.
//! SMTP (port 25) is blocked by default. Operators allow CIDRs and ports globally or per
//! client key.
//!
//! The exit's own addresses (every address of every interface, followed at run time by
//! `crate::own`, plus loopback and the unspecified addresses) are refused *whatever the
//! allowances say*: an allowed CIDR that happens to hold the exit's address must not open
//! its admin listener or any service bound to `0.0.0.0`/`::` (issue 20 §1, TESTPLAN §27).
//! Only an exact entry in [`EgressPolicy::with_own_allowed`] (`egress.allow_own_addresses`)
//! lifts that rule, for that one address.
//!
//! The check runs on the *canonical* address: IPv4-mapped (`::ffff:a.b.c.d`), IPv4-translated,
//! IPv4-compatible, NAT64 (`64:ff9b::/96`) and 6to4 (`2002::/16`) forms are reduced to the IPv4
//! address they carry, and [`Verdict::Allow`] returns that canonical address — the caller
//! dials exactly the address that was checked. Names are resolved by the caller first and every
//! resolved address goes through [`EgressPolicy::check`] (TESTPLAN §18).

mod ranges;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, PoisonError, RwLock};

use ipnet::IpNet;

pub use ranges::{SpecialRange, special_range};

/// The transport a stream asks for; policies may treat them alike, but refusals say which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// A TCP stream.
    Tcp,
    /// A UDP flow (including DNS the client forwards to a specific server).
    Udp,
}

/// Why a destination was refused. Logged, and mapped to the stream reset reason.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The address lies in a range that is denied unless explicitly allowed.
    SpecialRange(SpecialRange),
    /// The address is one of the exit's own addresses.
    OwnAddress,
    /// The operator denied this network explicitly.
    DeniedNetwork(IpNet),
    /// The port is blocked (SMTP by default).
    BlockedPort(u16),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::SpecialRange(r) => write!(f, "{} range {} is not allowed", r.name, r.net),
            Refusal::OwnAddress => f.write_str("the exit node's own address is not allowed"),
            Refusal::DeniedNetwork(net) => write!(f, "network {net} is denied by policy"),
            Refusal::BlockedPort(port) => write!(f, "port {port} is blocked by policy"),
        }
    }
}

/// The result of a policy check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Dial this address (the canonical form of the one asked for).
    Allow(SocketAddr),
    /// Do not dial; reset the stream with this reason.
    Refuse(Refusal),
}

/// The exit's own addresses: a set shared between the policy (which reads it on every
/// check) and the watcher that follows the interfaces (which replaces it on every change).
/// Cloning gives another handle to the same set. Addresses are stored canonical.
#[derive(Debug, Clone, Default)]
pub struct OwnAddresses(Arc<RwLock<Arc<HashSet<IpAddr>>>>);

impl OwnAddresses {
    /// A set holding `addrs` (until replaced).
    pub fn new(addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        let own = OwnAddresses::default();
        own.replace(addrs);
        own
    }

    /// Whether `ip` (in any form) is one of the addresses.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.snapshot().contains(&canonical_ip(ip))
    }

    /// The current addresses.
    pub fn snapshot(&self) -> Arc<HashSet<IpAddr>> {
        // A panic while holding the lock cannot leave the set half-written: it is swapped
        // whole, so a poisoned lock still holds a complete set.
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replace the addresses; returns those added and those removed.
    pub fn replace(&self, addrs: impl IntoIterator<Item = IpAddr>) -> (Vec<IpAddr>, Vec<IpAddr>) {
        let new: HashSet<IpAddr> = addrs.into_iter().map(canonical_ip).collect();
        let mut guard = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let mut added: Vec<IpAddr> = new.difference(&guard).copied().collect();
        let mut removed: Vec<IpAddr> = guard.difference(&new).copied().collect();
        added.sort();
        removed.sort();
        *guard = Arc::new(new);
        (added, removed)
    }
}

/// Whether `ip` (canonical) always means this host, whatever its interfaces: the loopback
/// ranges and the unspecified addresses (a connect to `0.0.0.0` or `::` reaches the host
/// itself on Linux).
pub fn is_always_own(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified()
}

/// Exceptions granted on top of the defaults, globally or to one client key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowances {
    /// Networks that may be dialled even though they are special-purpose or the exit's own.
    pub cidrs: Vec<IpNet>,
    /// Ports that may be dialled even though they are blocked.
    pub ports: Vec<u16>,
}

impl Allowances {
    fn covers_addr(&self, ip: IpAddr) -> bool {
        self.cidrs.iter().any(|net| net.contains(&ip))
    }

    fn covers_port(&self, port: u16) -> bool {
        self.ports.contains(&port)
    }
}

/// The exit node's egress policy, built once from config and shared read-only.
#[derive(Debug, Clone)]
pub struct EgressPolicy {
    global: Allowances,
    per_client: HashMap<[u8; 32], Allowances>,
    deny_cidrs: Vec<IpNet>,
    blocked_ports: Vec<u16>,
    own_addrs: OwnAddresses,
    own_allowed: Vec<IpAddr>,
}

/// Ports blocked unless allowed: SMTP, the classic spam vector from VPN exits.
pub const DEFAULT_BLOCKED_PORTS: &[u16] = &[25];

impl Default for EgressPolicy {
    fn default() -> Self {
        EgressPolicy {
            global: Allowances::default(),
            per_client: HashMap::new(),
            deny_cidrs: Vec::new(),
            blocked_ports: DEFAULT_BLOCKED_PORTS.to_vec(),
            own_addrs: OwnAddresses::default(),
            own_allowed: Vec::new(),
        }
    }
}

impl EgressPolicy {
    /// Allowances that apply to every client.
    pub fn with_global(mut self, allow: Allowances) -> Self {
        self.global = allow;
        self
    }

    /// Allowances for one client static key (added to the global ones).
    pub fn with_client(mut self, client_key: [u8; 32], allow: Allowances) -> Self {
        self.per_client.insert(client_key, allow);
        self
    }

    /// Extra networks to deny even when public (checked before any allowance).
    pub fn with_denied(mut self, cidrs: Vec<IpNet>) -> Self {
        self.deny_cidrs = cidrs;
        self
    }

    /// Replace the set of blocked ports (default [`DEFAULT_BLOCKED_PORTS`]).
    pub fn with_blocked_ports(mut self, ports: Vec<u16>) -> Self {
        self.blocked_ports = ports;
        self
    }

    /// The exit's own interface addresses (a fixed set), refused unless in
    /// [`EgressPolicy::with_own_allowed`].
    pub fn with_own_addresses(self, addrs: Vec<IpAddr>) -> Self {
        self.with_own_set(OwnAddresses::new(addrs))
    }

    /// The exit's own interface addresses as a set that is kept up to date elsewhere.
    pub fn with_own_set(mut self, own: OwnAddresses) -> Self {
        self.own_addrs = own;
        self
    }

    /// Own addresses clients may reach anyway (`egress.allow_own_addresses`): each lifts
    /// the own-address rule for exactly that address; the other rules still apply.
    pub fn with_own_allowed(mut self, addrs: Vec<IpAddr>) -> Self {
        self.own_allowed = addrs.into_iter().map(canonical_ip).collect();
        self
    }

    /// Whether the own-address rule is lifted for `ip` (exact, canonical match). The dialer
    /// asks before refusing an address the kernel says is local.
    pub fn own_address_allowed(&self, ip: IpAddr) -> bool {
        self.own_allowed.contains(&canonical_ip(ip))
    }

    /// Whether `ip` is one of the exit's own addresses as far as the policy knows (the
    /// followed set, loopback, unspecified); the dialer adds the kernel's word on top.
    pub fn is_own(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        is_always_own(ip) || self.own_addrs.contains(ip)
    }

    /// Decide whether `client` may reach `dest` over `transport`.
    ///
    /// TCP and UDP follow the same rules; `transport` is accepted so that a future rule can
    /// differ and so callers cannot forget to state it.
    pub fn check(&self, client: &[u8; 32], dest: SocketAddr, transport: Transport) -> Verdict {
        let _ = transport;
        let ip = canonical_ip(dest.ip());
        let extra = self.per_client.get(client);
        let allowed_addr =
            |ip| self.global.covers_addr(ip) || extra.is_some_and(|a| a.covers_addr(ip));
        if let Some(net) = self.deny_cidrs.iter().find(|net| net.contains(&ip)) {
            return Verdict::Refuse(Refusal::DeniedNetwork(*net));
        }
        if !allowed_addr(ip)
            && let Some(range) = special_range(ip)
        {
            return Verdict::Refuse(Refusal::SpecialRange(range));
        }
        // Not lifted by `allowed_addr`: an allowed CIDR may hold the exit's own address.
        if self.is_own(ip) && !self.own_address_allowed(ip) {
            return Verdict::Refuse(Refusal::OwnAddress);
        }
        let port = dest.port();
        let allowed_port =
            self.global.covers_port(port) || extra.is_some_and(|a| a.covers_port(port));
        if self.blocked_ports.contains(&port) && !allowed_port {
            return Verdict::Refuse(Refusal::BlockedPort(port));
        }
        Verdict::Allow(SocketAddr::new(ip, port))
    }
}

/// Reduce every IPv6 form that embeds an IPv4 address to that IPv4 address.
///
/// Covered: IPv4-mapped `::ffff:0:0/96`, IPv4-translated `::ffff:0:0:0/96` (RFC 2765),
/// IPv4-compatible `::/96` (deprecated; `::` and `::1` keep their IPv6 meaning), the NAT64
/// well-known prefix `64:ff9b::/96` (RFC 6052) and 6to4 `2002::/16` (RFC 3056). Teredo and
/// the local-use NAT64 prefix are not reduced; they are denied as special ranges.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0xffff, 0, _, _] => Some(low),
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => None,
        [0, 0, 0, 0, 0, 0, _, _] => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}
