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
