//! MSS clamping for forwarded SYNs (router mode, RFC 879 / RFC 6691).

use std::net::IpAddr;

use etherparse::{IpNumber, IpSlice, TcpSlice};

use crate::checksum;
use crate::error::Error;

/// TCP option kinds (RFC 9293 §3.1).
const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;

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
    let (tcp_start, tcp_len, src, dst) = {
        let ip = IpSlice::from_slice(packet).map_err(|_| Error::Malformed)?;
        let payload = ip.payload();
        if payload.ip_number != IpNumber::TCP || payload.fragmented {
            return Ok(false);
        }
        let tcp = TcpSlice::from_slice(payload.payload).map_err(|_| Error::Malformed)?;
        if !tcp.syn() {
            return Ok(false);
        }
        let start = payload.payload.as_ptr() as usize - packet.as_ptr() as usize;
        (
            start,
            payload.payload.len(),
            ip.source_addr(),
            ip.destination_addr(),
        )
    };
    let tcp = &mut packet[tcp_start..tcp_start + tcp_len];
    let Some(at) = find_mss(tcp) else {
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

/// Offset of the MSS value (2 bytes) within the TCP header, if present.
fn find_mss(tcp: &[u8]) -> Option<usize> {
    let header_len = usize::from(tcp[12] >> 4) * 4;
    let mut i = 20;
    while i < header_len {
        match tcp[i] {
            OPT_END => return None,
            OPT_NOP => i += 1,
            kind => {
                let len = usize::from(*tcp.get(i + 1)?);
                if len < 2 || i + len > header_len {
                    return None;
                }
                if kind == OPT_MSS && len == 4 {
                    return Some(i + 2);
                }
                i += len;
            }
        }
    }
    None
}

fn fix_checksum(tcp: &mut [u8], src: IpAddr, dst: IpAddr) {
    tcp[16..18].fill(0);
    let acc = checksum::pseudo_header(src, dst, 6, tcp.len());
    let sum = checksum::compute(acc, tcp);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
}
