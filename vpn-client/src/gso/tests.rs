use etherparse::{PacketBuilder, TcpHeader};

use super::*;

/// A segment of the flow 10.0.0.1:443 → 10.0.0.2:40000 (or its IPv6 twin) at `seq`,
/// built with full checksums.
fn segment(v6: bool, seq: u32, payload: &[u8], psh: bool, fin: bool) -> Vec<u8> {
    let mut h = TcpHeader::new(443, 40000, seq, 1024);
    h.ack = true;
    h.acknowledgment_number = 77;
    h.psh = psh;
    h.fin = fin;
    let step = if v6 {
        PacketBuilder::ipv6([1; 16], [2; 16], 64).tcp_header(h)
    } else {
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).tcp_header(h)
    };
    let mut out = Vec::new();
    step.write(&mut out, payload).unwrap();
    out
}

/// Reference one's-complement sum (big-endian words, odd tail padded), not folded:
/// independent of netstack's, which the code under test uses.
fn sum(data: &[u8], mut acc: u64) -> u64 {
    for w in data.chunks(2) {
        acc += u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn data(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + seed) as u8).collect()
}

/// A download as netstack sends it: `full` segments of 1,460 bytes, then a shorter one
/// with PSH, then a FIN.
fn download(v6: bool, full: usize) -> Vec<Vec<u8>> {
    let mut pkts = Vec::new();
    let mut seq = 1000u32;
    for i in 0..full {
        pkts.push(segment(v6, seq, &data(1460, i), false, false));
        seq += 1460;
    }
    pkts.push(segment(v6, seq, &data(500, 99), true, false));
    seq += 500;
    pkts.push(segment(v6, seq, &[], false, true));
    pkts
}

/// What the kernel's GSO does with the packet: the first segment's headers on each piece,
/// its own sequence number and lengths, PSH only on the last, full checksums.
fn segment_again(hdr: &[u8; VNET_HDR_LEN], pkt: &[u8]) -> Vec<Vec<u8>> {
    let at = |i: usize| usize::from(u16::from_ne_bytes([hdr[i], hdr[i + 1]]));
    let (headers, gso_size, l4) = (at(2), at(4), at(6));
    let v6 = hdr[1] == GSO_TCPV6;
    let seq0 = u32::from_be_bytes([pkt[l4 + 4], pkt[l4 + 5], pkt[l4 + 6], pkt[l4 + 7]]);
    let payload = &pkt[headers..];
    let n = payload.len().div_ceil(gso_size);
    payload
        .chunks(gso_size)
        .enumerate()
        .map(|(i, chunk)| {
            let psh = i + 1 == n && pkt[l4 + 13] & PSH != 0;
            segment(v6, seq0 + (i * gso_size) as u32, chunk, psh, false)
        })
        .collect()
}

#[test]
fn a_download_run_coalesces_and_segments_back_to_the_same_packets() {
    for v6 in [false, true] {
        let pkts = download(v6, 20);
        assert_eq!(runs(&pkts), vec![(0, 21), (21, 1)], "v6 {v6}");
        let (hdr, merged) = coalesce(&pkts[..21]);
        let l4 = if v6 { 40 } else { 20 };
        assert_eq!(hdr[0], F_NEEDS_CSUM);
        assert_eq!(hdr[1], if v6 { GSO_TCPV6 } else { GSO_TCPV4 });
        let at = |i: usize| u16::from_ne_bytes([hdr[i], hdr[i + 1]]);
        assert_eq!(
            (at(2), at(4), at(6), at(8)),
            (l4 as u16 + 20, 1460, l4 as u16, 16)
        );
        assert_eq!(merged.len(), l4 + 20 + 20 * 1460 + 500);
        if v6 {
            assert_eq!(
                usize::from(u16::from_be_bytes([merged[4], merged[5]])),
                merged.len() - 40
            );
        } else {
            assert_eq!(
                usize::from(u16::from_be_bytes([merged[2], merged[3]])),
                merged.len()
            );
            assert_eq!(fold(sum(&merged[..20], 0)), 0xffff, "IPv4 header checksum");
        }
        // The partial checksum is the pseudo-header sum over the whole segment.
        let (src, dst) = if v6 {
            (8..24, 24..40)
        } else {
            (12..16, 16..20)
        };
        let pseudo = sum(
            &merged[src],
            sum(&merged[dst], 6 + (merged.len() - l4) as u64),
        );
        assert_eq!(
            u16::from_be_bytes([merged[l4 + 16], merged[l4 + 17]]),
            fold(pseudo)
        );
        assert_eq!(segment_again(&hdr, &merged), pkts[..21].to_vec(), "v6 {v6}");
    }
}

#[test]
fn runs_stop_at_anything_the_kernel_could_not_have_cut_from_one_packet() {
    let v6 = false;
    let a = |seq: u32, len: usize| segment(v6, seq, &data(len, 1), false, false);
    // A short segment ends a run; a gap in sequence numbers; PSH before the end.
    let short_then_full = vec![a(0, 1460), a(1460, 700), a(2160, 1460)];
    assert_eq!(runs(&short_then_full), vec![(0, 2), (2, 1)]);
    let gap = vec![a(0, 1460), a(2000, 1460)];
    assert_eq!(runs(&gap), vec![(0, 1), (1, 1)]);
    let psh = vec![segment(v6, 0, &data(1460, 1), true, false), a(1460, 1460)];
    assert_eq!(runs(&psh), vec![(0, 1), (1, 1)]);
    // Another flow, another acknowledgment number, another window.
    let mut other_port = a(1460, 1460);
    other_port[20] ^= 1;
    let mut other_ack = a(1460, 1460);
    other_ack[20 + 11] ^= 1;
    let mut other_window = a(1460, 1460);
    other_window[20 + 15] ^= 1;
    for second in [other_port, other_ack, other_window] {
        assert_eq!(runs(&[a(0, 1460), second]), vec![(0, 1), (1, 1)]);
    }
    // SYN, FIN, RST, pure ACKs and other protocols are written alone.
    let mut udp = Vec::new();
    PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(1, 2)
        .write(&mut udp, &data(1460, 2))
        .unwrap();
    let fin = segment(v6, 1460, &data(1460, 1), false, true);
    let pure_ack = segment(v6, 1460, &[], false, false);
    for second in [fin, pure_ack, udp] {
        assert_eq!(runs(&[a(0, 1460), second]), vec![(0, 1), (1, 1)]);
    }
    // Never beyond 65,535 bytes: 44 full segments of 1,460 and the rest in a second run.
    let long: Vec<Vec<u8>> = (0..50).map(|i| a(i * 1460, 1460)).collect();
    assert_eq!(runs(&long), vec![(0, 44), (44, 6)]);
    assert!(coalesce(&long[..44]).1.len() <= 65535);
    // Junk is written alone, never panics.
    let junk = vec![
        vec![],
        vec![0x45],
        vec![0x60; 10],
        a(0, 1460)[..45].to_vec(),
    ];
    assert_eq!(runs(&junk), vec![(0, 1), (1, 1), (2, 1), (3, 1)]);
}
