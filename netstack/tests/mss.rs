//! MSS clamping for forwarded SYNs (router mode).

mod common;

use common::*;
use etherparse::TcpOptionElement as Opt;
use netstack::{clamp_mss, mss_for_mtu};

fn syn_with(v6: bool, opts: &[Opt]) -> Vec<u8> {
    tcp_pkt(app(v6, 1), dst(v6, 2), 1, None, SYN, 1000, opts, &[])
}

#[test]
fn lowers_mss_and_keeps_checksums_valid() {
    for v6 in [false, true] {
        // Odd alignment (NOP first) exercises the full checksum recomputation.
        let mut p = syn_with(
            v6,
            &[
                Opt::Noop,
                Opt::WindowScale(7),
                Opt::MaximumSegmentSize(8960),
                Opt::SelectiveAcknowledgementPermitted,
            ],
        );
        assert_eq!(clamp_mss(&mut p, mss_for_mtu(1400, v6)), Ok(true));
        let t = tcp_of(parse_out(&p)); // panics on a bad checksum
        assert_eq!(t.mss, Some(if v6 { 1340 } else { 1360 }));
        assert_eq!(t.wscale, Some(7));
    }
}

#[test]
fn leaves_small_mss_non_syn_and_missing_option_alone() {
    let mut p = syn_with(false, &[Opt::MaximumSegmentSize(1200)]);
    let orig = p.clone();
    assert_eq!(clamp_mss(&mut p, 1360), Ok(false));
    assert_eq!(p, orig);
    let mut p = syn_with(true, &[Opt::WindowScale(2)]);
    assert_eq!(clamp_mss(&mut p, 1360), Ok(false));
    let mut p = tcp_pkt(
        app(false, 1),
        dst(false, 2),
        1,
        Some(1),
        NONE,
        1000,
        &[],
        b"data",
    );
    assert_eq!(clamp_mss(&mut p, 1360), Ok(false));
    let mut p = udp_pkt(app(false, 1), dst(false, 2), b"x");
    assert_eq!(clamp_mss(&mut p, 1360), Ok(false));
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    assert_eq!(clamp_mss(&mut [], 1360), Err(netstack::Error::Malformed));
    let mut p = syn_with(false, &[Opt::MaximumSegmentSize(9000)]);
    p.truncate(30);
    assert!(clamp_mss(&mut p, 1360).is_err());
    // A bogus option length must not read past the header.
    let mut p = syn_with(false, &[Opt::MaximumSegmentSize(9000)]);
    p[41] = 40;
    assert_eq!(clamp_mss(&mut p, 1360), Ok(false));
}
