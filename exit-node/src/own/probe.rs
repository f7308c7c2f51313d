//! The kernel's word, per dial, on whether an address is this host's.
//!
//! Why a bind, and why not only a bind: Linux lets a socket bind an address only if a
//! `local` (or broadcast/multicast) route covers it — an interface address, or a range
//! routed `local` to `lo` (AnyIP) — and refuses any other with `EADDRNOTAVAIL`. Unless
//! non-local binds are allowed: per socket with `IP_FREEBIND`/`IP_TRANSPARENT` (the probe
//! sets neither), or for the whole namespace with `net.ipv4.ip_nonlocal_bind` /
//! `net.ipv6.ip_nonlocal_bind` = 1, under which a bind succeeds for *any* address and says
//! nothing. So a successful bind is believed only while that sysctl is 0; otherwise the
//! route decides: a UDP socket connected to the address (nothing is sent) gets the source
//! address the kernel chose, and a destination with a `local` route gets itself as the
//! source; `EACCES` is a broadcast route (the socket has no `SO_BROADCAST`).
//!
//! Limits: the route check misses a `local` route with a preferred source (`src`: the
//! 127/8 route, and every secondary address, whose route has its primary as source; both
//! are in the watcher's list or refused by the policy anyway), and neither check
//! sees an IPv6 range routed `local` (IPv6 binds need an assigned address, and source
//! selection picks one). Interface addresses, IPv4 AnyIP ranges without `src` and IPv4
//! broadcast addresses are covered; an `RTM_GETROUTE` lookup would close the rest.

use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Whether the kernel would deliver a connection to `ip` (canonical) to this host.
pub fn is_local(ip: IpAddr) -> io::Result<bool> {
    match binds(ip) {
        Ok(false) => Ok(false),
        Ok(true) if !nonlocal_bind(ip) => Ok(true),
        // A bind that says nothing, or failed for another reason (`EINVAL` for an IPv6
        // address that needs a scope): ask the route.
        _ => routes_locally(ip),
    }
}

fn udp_socket(ip: IpAddr) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(SocketAddr::new(ip, 0)),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if ip.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

/// Whether a socket can bind `ip` (port 0).
fn binds(ip: IpAddr) -> io::Result<bool> {
    match udp_socket(ip)?.bind(&SockAddr::from(SocketAddr::new(ip, 0))) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether this namespace lets sockets bind addresses that are not local (then a bind
/// proves nothing). Unreadable counts as yes: the route check is right either way.
fn nonlocal_bind(ip: IpAddr) -> bool {
    let family = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
    let path = format!("/proc/sys/net/{family}/ip_nonlocal_bind");
    std::fs::read_to_string(path).map_or(true, |v| v.trim() != "0")
}

/// Whether the route to `ip` is local: the source address the kernel picks for it is `ip`.
fn routes_locally(ip: IpAddr) -> io::Result<bool> {
    let socket = udp_socket(ip)?;
    // Any port: a UDP connect only looks up the route and picks the source address.
    match socket.connect(&SockAddr::from(SocketAddr::new(ip, 9))) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Ok(true),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NetworkUnreachable | io::ErrorKind::HostUnreachable
            ) =>
        {
            return Ok(false);
        }
        Err(e) => return Err(e),
    }
    let source = socket.local_addr()?.as_socket().map(|a| a.ip());
    Ok(source == Some(ip))
}

#[cfg(test)]
pub(super) fn route_check(ip: IpAddr) -> io::Result<bool> {
    routes_locally(ip)
}
