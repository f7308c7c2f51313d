//! Checked classification of inbound packets (etherparse slices, no copies).

use std::net::{IpAddr, SocketAddr};

use etherparse::{
    IcmpEchoHeader, Icmpv4Slice, Icmpv4Type, Icmpv6Slice, Icmpv6Type, IpNumber, IpSlice, TcpSlice,
    UdpSlice,
};

use crate::checksum;
use crate::config::MAX_MTU;

/// Why an inbound packet was dropped (each maps to one [`Stats`](crate::Stats) counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drop {
    Malformed,
    Checksum,
    Fragment,
    Oversized,
    Unsupported,
    NonUnicast,
}

/// A flow as seen from the app: `src` is the app, `dst` the address it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FlowKey {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// The TCP facts the stack needs before smoltcp sees the segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TcpSeg {
    pub key: FlowKey,
    pub syn: bool,
    pub ack: bool,
    pub rst: bool,
    pub fin: bool,
}

/// A valid inbound packet the stack handles.
#[derive(Debug)]
pub(crate) enum Inbound<'a> {
    Tcp(TcpSeg),
    Udp {
        key: FlowKey,
        payload: &'a [u8],
    },
    Echo {
        src: IpAddr,
        dst: IpAddr,
        ident: u16,
        seq: u16,
        payload: &'a [u8],
    },
}

/// Which checksums [`classify`] verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verify {
    /// Every checksum.
    All,
    /// All but TCP's and UDP's, which the device vouches for; a TCP segment may also
    /// exceed the MTU (up to [`MAX_MTU`]): the device coalesced several (GSO).
    IpAndIcmp,
}

/// Parses and validates `pkt` (lengths, checksums, addresses, fragments).
pub(crate) fn classify(pkt: &[u8], mtu: usize, verify: Verify) -> Result<Inbound<'_>, Drop> {
    if pkt.len() > MAX_MTU {
        return Err(Drop::Oversized);
    }
    let ip = IpSlice::from_slice(pkt).map_err(|_| Drop::Malformed)?;
    // Only a TCP segment can be a GSO packet (no other segmentation is asked for).
    let coalesced = verify == Verify::IpAndIcmp && ip.payload().ip_number == IpNumber::TCP;
    if pkt.len() > mtu && !coalesced {
        return Err(Drop::Oversized);
    }
    check_ip_header(&ip)?;
    let (src, dst) = (ip.source_addr(), ip.destination_addr());
    if !is_unicast(src) || !is_unicast(dst) {
        return Err(Drop::NonUnicast);
    }
    let payload = ip.payload().payload;
    match (ip.payload().ip_number, src) {
        (IpNumber::TCP, _) => tcp(src, dst, payload, verify),
        (IpNumber::UDP, _) => udp(src, dst, payload, verify),
        (IpNumber::ICMP, IpAddr::V4(_)) => icmpv4(src, dst, payload),
        (IpNumber::IPV6_ICMP, IpAddr::V6(_)) => icmpv6(src, dst, payload),
        _ => Err(Drop::Unsupported),
    }
}

/// Fragments are dropped (see the crate docs); IPv6 extension headers are not
/// supported; the IPv4 header checksum must be right.
fn check_ip_header(ip: &IpSlice<'_>) -> Result<(), Drop> {
    if ip.is_fragmenting_payload() {
        return Err(Drop::Fragment);
    }
    match ip {
        IpSlice::Ipv4(v4) if !checksum::verify(0, v4.header().slice()) => Err(Drop::Checksum),
        IpSlice::Ipv6(v6) if !v6.extensions().is_empty() => Err(Drop::Unsupported),
        _ => Ok(()),
    }
}

/// Unicast in the sense of "a single host could own it".
pub(crate) fn is_unicast(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => !(a.is_unspecified() || a.is_multicast() || a.is_broadcast()),
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast()),
    }
}

fn tcp(src: IpAddr, dst: IpAddr, payload: &[u8], verify: Verify) -> Result<Inbound<'_>, Drop> {
    let tcp = TcpSlice::from_slice(payload).map_err(|_| Drop::Malformed)?;
    if tcp.source_port() == 0 || tcp.destination_port() == 0 {
        return Err(Drop::Malformed);
    }
    if verify == Verify::All
        && !checksum::verify(checksum::pseudo_header(src, dst, 6, payload.len()), payload)
    {
        return Err(Drop::Checksum);
    }
    Ok(Inbound::Tcp(TcpSeg {
        key: FlowKey {
            src: SocketAddr::new(src, tcp.source_port()),
            dst: SocketAddr::new(dst, tcp.destination_port()),
        },
        syn: tcp.syn(),
        ack: tcp.ack(),
        rst: tcp.rst(),
        fin: tcp.fin(),
    }))
}

fn udp(src: IpAddr, dst: IpAddr, payload: &[u8], verify: Verify) -> Result<Inbound<'_>, Drop> {
    let udp = UdpSlice::from_slice(payload).map_err(|_| Drop::Malformed)?;
    if udp.source_port() == 0 || udp.destination_port() == 0 {
        return Err(Drop::Malformed);
    }
    let seg = udp.slice();
    // RFC 768: zero means "no checksum" for IPv4; RFC 8200 §8.1 forbids it for IPv6.
    // A vouched-for packet's field may hold only the pseudo-header sum.
    let skip = verify == Verify::IpAndIcmp || (udp.checksum() == 0 && src.is_ipv4());
    let acc = checksum::pseudo_header(src, dst, 17, seg.len());
    if !skip && !checksum::verify(acc, seg) {
        return Err(Drop::Checksum);
    }
    let key = FlowKey {
        src: SocketAddr::new(src, udp.source_port()),
        dst: SocketAddr::new(dst, udp.destination_port()),
    };
    Ok(Inbound::Udp {
        key,
        payload: udp.payload(),
    })
}

fn icmpv4(src: IpAddr, dst: IpAddr, payload: &[u8]) -> Result<Inbound<'_>, Drop> {
    let icmp = Icmpv4Slice::from_slice(payload).map_err(|_| Drop::Malformed)?;
    if !checksum::verify(0, payload) {
        return Err(Drop::Checksum);
    }
    match icmp.icmp_type() {
        Icmpv4Type::EchoRequest(h) => Ok(echo(src, dst, h, icmp.payload())),
        _ => Err(Drop::Unsupported),
    }
}

fn icmpv6(src: IpAddr, dst: IpAddr, payload: &[u8]) -> Result<Inbound<'_>, Drop> {
    let icmp = Icmpv6Slice::from_slice(payload).map_err(|_| Drop::Malformed)?;
    let acc = checksum::pseudo_header(src, dst, 58, payload.len());
    if !checksum::verify(acc, payload) {
        return Err(Drop::Checksum);
    }
    match icmp.icmp_type() {
        Icmpv6Type::EchoRequest(h) => Ok(echo(src, dst, h, icmp.payload())),
        _ => Err(Drop::Unsupported),
    }
}

fn echo(src: IpAddr, dst: IpAddr, h: IcmpEchoHeader, payload: &[u8]) -> Inbound<'_> {
    Inbound::Echo {
        src,
        dst,
        ident: h.id,
        seq: h.seq,
        payload,
    }
}
