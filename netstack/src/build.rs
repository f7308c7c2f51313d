//! Packets the stack writes itself (UDP replies, ICMP): etherparse builders,
//! which fill in lengths and checksums.

use std::net::{IpAddr, SocketAddr};

use etherparse::{
    Icmpv4Type, Icmpv6Type, PacketBuilder, PacketBuilderStep, icmpv4::DestUnreachableHeader,
    icmpv6::DestUnreachableCode,
};

use crate::event::Refusal;

const TTL: u8 = 64;
/// RFC 1812 §4.3.2.3: an ICMPv4 error should not exceed 576 bytes.
const ICMPV4_ERROR_MAX: usize = 576;
/// RFC 4443 §2.4(c): an ICMPv6 error must not exceed the minimum MTU.
const ICMPV6_ERROR_MAX: usize = 1280;

fn ip_step(src: IpAddr, dst: IpAddr) -> Option<PacketBuilderStep<etherparse::IpHeaders>> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Some(PacketBuilder::ipv4(s.octets(), d.octets(), TTL)),
        (IpAddr::V6(s), IpAddr::V6(d)) => Some(PacketBuilder::ipv6(s.octets(), d.octets(), TTL)),
        _ => None,
    }
}

/// Bytes of IP + UDP headers for a datagram from `src`.
pub(crate) fn udp_overhead(src: IpAddr) -> usize {
    if src.is_ipv4() { 28 } else { 48 }
}

/// A UDP datagram `src` → `dst`; `None` if the address families differ.
pub(crate) fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    let step = ip_step(src.ip(), dst.ip())?.udp(src.port(), dst.port());
    write(step.size(payload.len()), |out| {
        step.write(out, payload).is_ok()
    })
}

/// An echo reply to a request `app` → `pinged`.
pub(crate) fn echo_reply(
    pinged: IpAddr,
    app: IpAddr,
    ident: u16,
    seq: u16,
    payload: &[u8],
) -> Option<Vec<u8>> {
    let step = ip_step(pinged, app)?;
    if app.is_ipv4() {
        let step = step.icmpv4_echo_reply(ident, seq);
        write(step.size(payload.len()), |out| {
            step.write(out, payload).is_ok()
        })
    } else {
        let step = step.icmpv6_echo_reply(ident, seq);
        write(step.size(payload.len()), |out| {
            step.write(out, payload).is_ok()
        })
    }
}

/// An ICMP destination-unreachable about `original` (a packet `app` → `dst`),
/// sent from `dst`; `None` for [`Refusal::Reset`]/[`Refusal::Silent`].
pub(crate) fn unreachable(
    app: IpAddr,
    dst: IpAddr,
    how: Refusal,
    original: &[u8],
) -> Option<Vec<u8>> {
    let step = ip_step(dst, app)?;
    if app.is_ipv4() {
        let code = match how {
            Refusal::NetworkUnreachable => DestUnreachableHeader::Network,
            Refusal::HostUnreachable => DestUnreachableHeader::Host,
            Refusal::Prohibited => DestUnreachableHeader::FilterProhibited,
            Refusal::Reset | Refusal::Silent => return None,
        };
        let quoted = &original[..original.len().min(ICMPV4_ERROR_MAX - 28)];
        let step = step.icmpv4(Icmpv4Type::DestinationUnreachable(code));
        write(step.size(quoted.len()), |out| {
            step.write(out, quoted).is_ok()
        })
    } else {
        let code = match how {
            Refusal::NetworkUnreachable => DestUnreachableCode::NoRoute,
            Refusal::HostUnreachable => DestUnreachableCode::Address,
            Refusal::Prohibited => DestUnreachableCode::Prohibited,
            Refusal::Reset | Refusal::Silent => return None,
        };
        let quoted = &original[..original.len().min(ICMPV6_ERROR_MAX - 48)];
        let step = step.icmpv6(Icmpv6Type::DestinationUnreachable(code));
        write(step.size(quoted.len()), |out| {
            step.write(out, quoted).is_ok()
        })
    }
}

fn write(size: usize, f: impl FnOnce(&mut Vec<u8>) -> bool) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(size);
    f(&mut out).then_some(out)
}
