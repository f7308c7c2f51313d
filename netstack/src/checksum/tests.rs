use super::*;

/// Reference: plain 16-bit word sum.
fn reference(data: &[u8]) -> u16 {
    let mut acc: u32 = 0;
    for w in data.chunks(2) {
        let v = if w.len() == 2 {
            u16::from_be_bytes([w[0], w[1]])
        } else {
            u16::from(w[0]) << 8
        };
        acc += u32::from(v);
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[test]
fn matches_reference_for_all_lengths() {
    let data: Vec<u8> = (0..300u32).map(|i| (i * 151 % 251) as u8).collect();
    for len in 0..data.len() {
        let ours = fold(add(0, &data[..len]));
        let theirs = reference(&data[..len]);
        // 0x0000 and 0xffff are both zero in one's complement.
        assert!(
            ours == theirs || (ours | theirs) == 0xffff && (ours & theirs) == 0,
            "len {len}"
        );
    }
}

#[test]
fn rfc1071_example() {
    // RFC 1071 §3 example words sum to 0xddf2.
    let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
    assert_eq!(fold(add(0, &data)), 0xddf2);
}

#[test]
fn compute_then_verify() {
    let mut seg = vec![1u8, 2, 3, 4, 0, 0, 7, 8, 9];
    let c = compute(5, &seg);
    seg[4..6].copy_from_slice(&c.to_be_bytes());
    assert!(verify(5, &seg));
    seg[8] ^= 1;
    assert!(!verify(5, &seg));
}

#[test]
fn matches_reference_on_packet_sized_inputs_and_any_start() {
    let data: Vec<u8> = (0..70_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for (start, len) in [
        (0, 65_535),
        (1, 65_534),
        (3, 1_500),
        (7, 9_001),
        (0, 65_536 + 17),
    ] {
        let slice = &data[start..start + len];
        let ours = fold(add(0x1234_5678, slice));
        let theirs = fold(u64::from(reference(slice)) + 0x1234_5678);
        assert!(
            ours == theirs || (ours | theirs) == 0xffff && (ours & theirs) == 0,
            "start {start} len {len}: {ours:#06x} vs {theirs:#06x}"
        );
    }
}

#[test]
fn fill_tcp_makes_valid_segments_in_both_families_and_skips_the_rest() {
    use etherparse::PacketBuilder;
    let payload: Vec<u8> = (0..3_001u32).map(|i| (i * 31) as u8).collect();
    let v4 = PacketBuilder::ipv4([10, 0, 0, 1], [93, 184, 216, 34], 64).tcp(40_000, 443, 7, 65_535);
    let v6 = PacketBuilder::ipv6([1; 16], [2; 16], 64).tcp(40_000, 443, 7, 65_535);
    for (builder, l4) in [(v4, 20), (v6, 40)] {
        let mut pkt = Vec::new();
        builder.write(&mut pkt, &payload).unwrap();
        let good = pkt.clone();
        pkt[l4 + 16] ^= 0x5a; // a wrong checksum, as left by a recycled buffer
        fill_tcp(&mut pkt, false);
        assert_eq!(pkt, good, "l4 at {l4}");
    }
    let mut udp = Vec::new();
    PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(1, 2)
        .write(&mut udp, &payload)
        .unwrap();
    let before = udp.clone();
    fill_tcp(&mut udp, false);
    fill_tcp(&mut udp, true);
    assert_eq!(udp, before);
    for junk in [&[][..], &[0x45][..], &[0x60, 0, 0][..]] {
        let mut j = junk.to_vec();
        fill_tcp(&mut j, false);
        fill_tcp(&mut j, true);
        assert_eq!(j, junk);
    }
}

/// What a device with checksum offload does with a `NEEDS_CSUM` packet: sums from
/// `csum_start` to the end, the field included, and stores the complement.
fn complete(pkt: &mut [u8], csum_start: usize) {
    let sum = compute(0, &pkt[csum_start..]);
    pkt[csum_start + 16..csum_start + 18].copy_from_slice(&sum.to_be_bytes());
}

#[test]
fn a_partial_tcp_checksum_is_the_pseudo_header_sum_that_the_device_completes() {
    use etherparse::PacketBuilder;
    for len in [0usize, 1, 63, 1_460, 65_000] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        let v4 = PacketBuilder::ipv4([10, 0, 0, 1], [93, 184, 216, 34], 64).tcp(1, 2, 3, 4);
        let v6 = PacketBuilder::ipv6([1; 16], [2; 16], 64).tcp(1, 2, 3, 4);
        for (builder, l4) in [(v4, 20), (v6, 40)] {
            let mut pkt = Vec::new();
            builder.write(&mut pkt, &payload).unwrap();
            let good = pkt.clone();
            pkt[l4 + 16] ^= 0xa5;
            fill_tcp(&mut pkt, true);
            assert_ne!(pkt, good, "partial, not complete: len {len}, l4 at {l4}");
            // The field holds the pseudo-header's folded sum and nothing of the segment.
            let field = u16::from_be_bytes([pkt[l4 + 16], pkt[l4 + 17]]);
            let (src, dst) = if l4 == 20 {
                (
                    IpAddr::from([10, 0, 0, 1]),
                    IpAddr::from([93, 184, 216, 34]),
                )
            } else {
                (IpAddr::from([1u8; 16]), IpAddr::from([2u8; 16]))
            };
            assert_eq!(field, fold(pseudo_header(src, dst, 6, 20 + len)));
            complete(&mut pkt, l4);
            assert_eq!(pkt, good, "completed: len {len}, l4 at {l4}");
        }
    }
}
