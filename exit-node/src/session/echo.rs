//! ICMP echo for clients through an unprivileged ping socket (`SOCK_DGRAM`,
//! `IPPROTO_ICMP`/`IPPROTO_ICMPV6`): the kernel fills in the identifier and checksum and
//! hands back only replies to this socket, so no raw socket or privilege is needed. Hosts
//! that do not allow ping sockets (`net.ipv4.ping_group_range`) get one warning and no
//! echo forwarding.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

/// How long to wait for an echo reply.
pub(crate) const ECHO_TIMEOUT: Duration = Duration::from_secs(5);
/// Echo requests one session may have in flight.
pub(crate) const MAX_ECHOES: usize = 64;

static WARNED: AtomicBool = AtomicBool::new(false);

fn echo_socket(dest: IpAddr) -> std::io::Result<UdpSocket> {
    let (domain, proto) = match dest {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(proto))?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

/// Send one echo request with `payload` to `dest` and return the reply's payload, or
/// `None` (no reply in time, or ping sockets unavailable).
pub(crate) async fn echo(dest: IpAddr, payload: &[u8]) -> Option<Vec<u8>> {
    let socket = match echo_socket(dest) {
        Ok(s) => s,
        Err(e) => {
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "ICMP echo forwarding unavailable: this host does not allow unprivileged ping sockets (net.ipv4.ping_group_range)");
            }
            return None;
        }
    };
    let (request, reply) = match dest {
        IpAddr::V4(_) => (8u8, 0u8),
        IpAddr::V6(_) => (128, 129),
    };
    // Type, code, checksum (kernel), identifier (kernel), sequence, payload.
    let mut packet = vec![request, 0, 0, 0, 0, 0, 0, 1];
    packet.extend_from_slice(payload);
    socket.connect(SocketAddr::new(dest, 0)).await.ok()?;
    socket.send(&packet).await.ok()?;
    let mut buf = vec![0u8; 65_536];
    let wait = async {
        loop {
            let n = socket.recv(&mut buf).await.ok()?;
            if n >= 8 && buf[0] == reply && buf[6..8] == [0, 1] {
                return Some(buf[8..n].to_vec());
            }
        }
    };
    tokio::time::timeout(ECHO_TIMEOUT, wait)
        .await
        .ok()
        .flatten()
}
