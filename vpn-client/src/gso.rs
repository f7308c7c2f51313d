//! Coalescing a flow's consecutive TCP segments into one GSO packet for a TUN with TCP
//! segmentation offload ([`platform::TunOffload::TcpSegments`]).
//!
//! netstack sends a LAN host's download one MSS (1,460 bytes at a LAN MTU of 1,500) at a
//! time; one TUN write each made the client's write path a full core at under a gigabit.
//! Runs of segments that the kernel's own TSO could have produced — same flow and headers,
//! consecutive sequence numbers, every payload but the last exactly `gso_size` — are
//! written as one packet with a virtio-net header (`gso_type` TCPV4/TCPV6, `gso_size`,
//! `NEEDS_CSUM`), and the kernel segments it again where it must (on the way to the LAN),
//! the way Linux's `tcp_gso_segment` does: every segment gets the headers of the first,
//! its own sequence number, and PSH only on the last.
//!
//! Pure functions over byte slices; the TUN writer in [`crate::device`] calls them.

use std::net::IpAddr;

/// Largest IP packet (IPv4 total length, IPv6 payload length are 16-bit).
const MAX_PACKET: usize = 65535;
const TCP: u8 = 6;
const PSH: u8 = 0x08;
/// TCP flag bits that end a run (FIN, SYN, RST, URG, ECE, CWR): only ACK and PSH merge.
const NO_MERGE: u8 = 0x01 | 0x02 | 0x04 | 0x20 | 0x40 | 0x80;
/// `virtio_net_hdr` fields (host byte order) and flag values.
pub(crate) const VNET_HDR_LEN: usize = 10;
pub(crate) const F_NEEDS_CSUM: u8 = 1;
pub(crate) const GSO_NONE: u8 = 0;
pub(crate) const GSO_TCPV4: u8 = 1;
pub(crate) const GSO_TCPV6: u8 = 4;
/// Offset of the checksum in the TCP header.
pub(crate) const TCP_CSUM_OFFSET: u16 = 16;

/// Where a TCP segment's parts are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seg {
    v6: bool,
    /// Start of the TCP header.
    l4: usize,
    /// Length of the IP and TCP headers.
    headers: usize,
    seq: u32,
    flags: u8,
    payload: usize,
}

/// A TCP segment with data and only ACK/PSH set, as netstack emits them (no IPv4
/// options, no IPv6 extension headers); `None` for anything else.
fn seg(pkt: &[u8]) -> Option<Seg> {
    let (v6, l4) = match pkt.first()? >> 4 {
        4 if pkt.len() >= 40 && pkt[0] == 0x45 && pkt[9] == TCP => {
            // Not a fragment: MF clear and offset zero.
            if u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0 {
                return None;
            }
            (false, 20)
        }
        6 if pkt.len() >= 60 && pkt[6] == TCP => (true, 40),
        _ => return None,
    };
    let tcp_len = usize::from(pkt[l4 + 12] >> 4) * 4;
    let headers = l4 + tcp_len;
    let flags = pkt[l4 + 13];
    if tcp_len < 20 || headers >= pkt.len() || flags & NO_MERGE != 0 {
        return None;
    }
    Some(Seg {
        v6,
        l4,
        headers,
        seq: u32::from_be_bytes([pkt[l4 + 4], pkt[l4 + 5], pkt[l4 + 6], pkt[l4 + 7]]),
        flags,
        payload: pkt.len() - headers,
    })
}

/// Whether `next` continues the run that `first` started and `prev` last extended.
fn continues(first: &[u8], f: Seg, prev: Seg, next: &[u8], n: Seg, total: usize) -> bool {
    let same = |a: std::ops::Range<usize>| first.get(a.clone()) == next.get(a);
    let ip_same = if f.v6 {
        // Version, class, flow label; next header, hop limit; addresses.
        same(0..4) && same(6..40)
    } else {
        // Version/IHL/TOS; flags and offset, TTL, protocol; addresses (not the id).
        same(0..2) && same(6..10) && same(12..20)
    };
    let l4 = f.l4;
    ip_same
        && n.v6 == f.v6
        && n.headers == f.headers
        && prev.flags & PSH == 0
        && prev.payload == f.payload
        && n.payload <= f.payload
        && n.seq == prev.seq.wrapping_add(prev.payload as u32)
        && total + n.payload <= MAX_PACKET
        // Ports; acknowledgment; data offset; window; urgent pointer; options.
        && same(l4..l4 + 4)
        && same(l4 + 8..l4 + 13)
        && same(l4 + 14..l4 + 16)
        && same(l4 + 18..f.headers)
        && (n.flags & !PSH) == (f.flags & !PSH)
}

/// Splits `pkts` into runs to write as one packet each: `(start, len)`, in order, every
/// packet in exactly one run; runs longer than one are TCP segments to coalesce.
pub(crate) fn runs(pkts: &[Vec<u8>]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < pkts.len() {
        let mut len = 1;
        if let Some(f) = seg(&pkts[i]) {
            let (mut prev, mut total) = (f, pkts[i].len());
            while let Some(next) = pkts.get(i + len)
                && let Some(n) = seg(next)
                && continues(&pkts[i], f, prev, next, n, total)
            {
                total += n.payload;
                prev = n;
                len += 1;
            }
        }
        out.push((i, len));
        i += len;
    }
    out
}

/// One GSO packet from a run of segments [`runs`] found, with its virtio-net header: the
/// first segment's headers with the lengths of the whole, the flags of the first plus the
/// last one's PSH, the TCP checksum partial (pseudo-header sum over the whole), and
/// `gso_size` the first segment's payload.
pub(crate) fn coalesce(run: &[Vec<u8>]) -> ([u8; VNET_HDR_LEN], Vec<u8>) {
    let first = &run[0];
    let f = seg(first).expect("runs() only merges TCP segments");
    let total = f.headers + run.iter().map(|p| p.len() - f.headers).sum::<usize>();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&first[..f.headers]);
    for p in run {
        out.extend_from_slice(&p[f.headers..]);
    }
    let last_flags = run.last().map_or(0, |p| p[f.l4 + 13]);
    out[f.l4 + 13] |= last_flags & PSH;
    let (src, dst) = if f.v6 {
        // Payload length excludes the fixed header.
        out[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        (ip(&out[8..24]), ip(&out[24..40]))
    } else {
        out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        out[10..12].fill(0);
        let sum = netstack::internet_checksum(&out[..20]);
        out[10..12].copy_from_slice(&sum.to_be_bytes());
        (ip(&out[12..16]), ip(&out[16..20]))
    };
    let partial = netstack::partial_l4_checksum(src, dst, TCP, total - f.l4);
    out[f.l4 + 16..f.l4 + 18].copy_from_slice(&partial.to_be_bytes());
    let gso_type = if f.v6 { GSO_TCPV6 } else { GSO_TCPV4 };
    let hdr = needs_csum_header(f.l4, f.headers, gso_type, f.payload);
    (hdr, out)
}

/// The address in `b` (4 or 16 bytes, as sliced by the caller).
fn ip(b: &[u8]) -> IpAddr {
    match <[u8; 4]>::try_from(b) {
        Ok(v4) => IpAddr::from(v4),
        Err(_) => IpAddr::from(<[u8; 16]>::try_from(b).unwrap_or_default()),
    }
}

/// A virtio-net header asking the kernel to complete the TCP checksum of the segment whose
/// header starts at `l4` (`csum_start`; `csum_offset` 16), with `hdr_len` bytes of headers;
/// for a GSO packet (`gso_type` not [`GSO_NONE`]) also to cut the payload into
/// `gso_size`-byte segments.
pub(crate) fn needs_csum_header(
    l4: usize,
    hdr_len: usize,
    gso_type: u8,
    gso_size: usize,
) -> [u8; VNET_HDR_LEN] {
    let field = |v: usize| u16::try_from(v).unwrap_or(u16::MAX).to_ne_bytes();
    let mut hdr = [0u8; VNET_HDR_LEN];
    hdr[0] = F_NEEDS_CSUM;
    hdr[1] = gso_type;
    hdr[2..4].copy_from_slice(&field(hdr_len));
    hdr[4..6].copy_from_slice(&field(gso_size));
    hdr[6..8].copy_from_slice(&field(l4));
    hdr[8..10].copy_from_slice(&TCP_CSUM_OFFSET.to_ne_bytes());
    hdr
}

#[cfg(test)]
mod tests;
