//! MSS clamping for forwarded SYNs (router mode, RFC 879 / RFC 6691), and the room a
//! SYN's MSS must leave for TCP timestamps.

use std::net::IpAddr;
use std::ops::Range;

use etherparse::{IpNumber, IpSlice, TcpSlice};

use crate::checksum;
use crate::error::Error;
use crate::timestamps::OPTION_LEN;

/// TCP option kinds (RFC 9293 §3.1).
const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;
const OPT_TIMESTAMPS: u8 = 8;

/// The MSS that fits a path MTU: MTU − 40 (IPv4) or MTU − 60 (IPv6).
pub fn mss_for_mtu(mtu: u16, ipv6: bool) -> u16 {
    mtu.saturating_sub(if ipv6 { 60 } else { 40 })
}

/// Lowers the MSS option of a SYN (or SYN-ACK) in `packet` (a whole IPv4/IPv6
/// packet) to at most `max_mss`, fixing the TCP checksum.
///
/// Returns `Ok(true)` if the packet was changed, `Ok(false)` if it is not a SYN,
/// carries no MSS option, or already carries one `<= max_mss`. Fragments and
/// non-TCP packets are returned unchanged (`Ok(false)`); unparseable packets give
/// [`Error::Malformed`].
pub fn clamp_mss(packet: &mut [u8], max_mss: u16) -> Result<bool, Error> {
    let Some((tcp, src, dst)) = syn_header(packet)? else {
        return Ok(false);
    };
    let tcp = &mut packet[tcp];
    let Some(at) = options(tcp).mss else {
        return Ok(false);
    };
    let current = u16::from_be_bytes([tcp[at], tcp[at + 1]]);
    if current <= max_mss {
        return Ok(false);
    }
    tcp[at..at + 2].copy_from_slice(&max_mss.to_be_bytes());
    fix_checksum(tcp, src, dst);
    Ok(true)
}

/// Lowers the MSS option of a SYN that also offers timestamps by the timestamp
/// option's length, so that smoltcp (which sizes payloads by the MSS alone) sends
/// segments whose payload and options together fit the app's MSS
/// (`crate::timestamps`). `Ok(false)`: not a SYN, no MSS or no timestamp option, or an
/// MSS too small to lower.
pub(crate) fn make_room_for_timestamps(packet: &mut [u8]) -> Result<bool, Error> {
    let Some((tcp, src, dst)) = syn_header(packet)? else {
        return Ok(false);
    };
    let tcp = &mut packet[tcp];
    let Options {
        mss: Some(at),
        timestamps: true,
    } = options(tcp)
    else {
        return Ok(false);
    };
    let current = u16::from_be_bytes([tcp[at], tcp[at + 1]]);
    if current <= OPTION_LEN {
        return Ok(false);
    }
    tcp[at..at + 2].copy_from_slice(&(current - OPTION_LEN).to_be_bytes());
    fix_checksum(tcp, src, dst);
    Ok(true)
}

/// Where a SYN's TCP header is in `packet`, and the addresses; `None` for anything
/// else that parses.
fn syn_header(packet: &[u8]) -> Result<Option<(Range<usize>, IpAddr, IpAddr)>, Error> {
    let ip = IpSlice::from_slice(packet).map_err(|_| Error::Malformed)?;
    let payload = ip.payload();
    if payload.ip_number != IpNumber::TCP || payload.fragmented {
        return Ok(None);
    }
    let tcp = TcpSlice::from_slice(payload.payload).map_err(|_| Error::Malformed)?;
    if !tcp.syn() {
        return Ok(None);
    }
    let start = payload.payload.as_ptr() as usize - packet.as_ptr() as usize;
    Ok(Some((
        start..start + payload.payload.len(),
        ip.source_addr(),
        ip.destination_addr(),
    )))
}

/// What a TCP header's options hold.
#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    /// Offset of the MSS value (2 bytes) within the header.
    mss: Option<usize>,
    /// A timestamp option is present.
    timestamps: bool,
}

/// Walks a TCP header's options; nothing is found in a header with a malformed one.
fn options(tcp: &[u8]) -> Options {
    let header_len = usize::from(tcp[12] >> 4) * 4;
    let mut found = Options::default();
    let mut i = 20;
    while i < header_len {
        match tcp[i] {
            OPT_END => break,
            OPT_NOP => i += 1,
            kind => {
                let Some(&len) = tcp.get(i + 1) else {
                    return Options::default();
                };
                let len = usize::from(len);
                if len < 2 || i + len > header_len {
                    return Options::default();
                }
                match (kind, len) {
                    (OPT_MSS, 4) => found.mss = Some(i + 2),
                    (OPT_TIMESTAMPS, 10) => found.timestamps = true,
                    _ => {}
                }
                i += len;
            }
        }
    }
    found
}

fn fix_checksum(tcp: &mut [u8], src: IpAddr, dst: IpAddr) {
    tcp[16..18].fill(0);
    let acc = checksum::pseudo_header(src, dst, 6, tcp.len());
    let sum = checksum::compute(acc, tcp);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
}
