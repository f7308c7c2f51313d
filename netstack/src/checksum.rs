//! Internet checksum (RFC 1071) over byte slices and IP pseudo-headers.

use std::net::IpAddr;

/// Adds `data` to a running one's-complement accumulator (not yet folded).
///
/// Sums 32-bit big-endian words: since 2^16 ≡ 1 (mod 2^16 − 1) this equals the
/// 16-bit word sum after folding, and is about twice as fast.
pub(crate) fn add(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        acc += (v >> 32) + (v & 0xffff_ffff);
    }
    let mut words = chunks.remainder().chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [b] = words.remainder() {
        acc += u64::from(*b) << 8;
    }
    acc
}

/// Folds the accumulator to 16 bits (not complemented).
pub(crate) fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    // The loop leaves at most 16 bits.
    acc as u16
}

/// Accumulator for the TCP/UDP/ICMPv6 pseudo-header.
pub(crate) fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u64 {
    let acc = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => add(add(0, &s.octets()), &d.octets()),
        (s, d) => add(add(0, &v6_octets(s)), &v6_octets(d)),
    };
    acc + u64::from(proto) + len as u64
}

fn v6_octets(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
    }
}

/// Whether `segment` (checksum field included) sums to the all-ones value.
pub(crate) fn verify(acc: u64, segment: &[u8]) -> bool {
    fold(add(acc, segment)) == 0xffff
}

/// The value to store in a checksum field that is zero in `segment`.
pub(crate) fn compute(acc: u64, segment: &[u8]) -> u16 {
    !fold(add(acc, segment))
}

#[cfg(test)]
mod tests;
