//! TCP timestamps (RFC 7323): offered back to an app that offers them (so its kernel can
//! reuse `TIME_WAIT` ports), driven by the stack's clock, and segments that still fit
//! the app's MSS and the MTU with the option's 12 bytes.

mod common;

use std::time::Duration;

use common::*;
use etherparse::TcpOptionElement as Opt;
use netstack::{Config, Event, Stack};

fn config(mtu: usize) -> Config {
    Config {
        mtu,
        tcp_ack_delay: None,
        tcp_rx_buffer: 1 << 20,
        tcp_tx_buffer: 1 << 20,
        ..Config::default()
    }
}

fn mss(mtu: usize, v6: bool) -> u16 {
    (mtu - if v6 { 60 } else { 40 }) as u16
}

/// A Linux-like SYN: MSS for `mtu`, SACK permitted, timestamps (if `tsval`), window
/// scale 7.
fn syn_ts(
    src: std::net::SocketAddr,
    dst: std::net::SocketAddr,
    mtu: usize,
    tsval: Option<u32>,
) -> Vec<u8> {
    let mut opts = vec![
        Opt::MaximumSegmentSize(mss(mtu, src.is_ipv6())),
        Opt::SelectiveAcknowledgementPermitted,
    ];
    if let Some(v) = tsval {
        opts.push(Opt::Timestamp(v, 0));
    }
    opts.extend([Opt::Noop, Opt::WindowScale(7)]);
    tcp_pkt(src, dst, 1000, None, SYN, 64240, &opts, &[])
}

/// Handshake with the app offering timestamps (or not); the SYN-ACK and the flow.
fn open(
    stack: &mut Stack,
    now: std::time::Instant,
    v6: bool,
    mtu: usize,
    tsval: Option<u32>,
) -> (netstack::TcpFlowId, TcpOut) {
    let (src, dst) = (app(v6, 40000), dst(v6, 443));
    stack.handle_packet(now, &syn_ts(src, dst, mtu, tsval));
    let Some(Event::TcpIncoming { id, .. }) = stack.poll_event() else {
        panic!("no TcpIncoming")
    };
    stack.tcp_accept(id).unwrap();
    let out = drain_out(stack, now);
    assert_eq!(out.len(), 1, "{out:?}");
    let sa = tcp_of(out[0].clone());
    assert!(sa.syn);
    let opts: Vec<Opt> = sa
        .ts
        .zip(tsval)
        .map(|((ours, _), theirs)| Opt::Timestamp(theirs + 1, ours))
        .into_iter()
        .collect();
    let ack = tcp_pkt(
        src,
        dst,
        1001,
        Some(sa.seq.wrapping_add(1)),
        NONE,
        65535,
        &opts,
        &[],
    );
    stack.handle_packet(now, &ack);
    assert!(drain_events(stack).contains(&Event::TcpEstablished { id }));
    (id, sa)
}

/// Sends `len` bytes to the app; the raw packets the stack emits.
fn send(
    stack: &mut Stack,
    now: std::time::Instant,
    id: netstack::TcpFlowId,
    len: usize,
) -> Vec<Vec<u8>> {
    let data = vec![0x5a; len];
    assert_eq!(stack.tcp_send(id, &data).unwrap(), len);
    std::iter::from_fn(|| stack.poll_transmit(now)).collect()
}

#[test]
fn timestamps_are_offered_back_and_segments_leave_room_for_them() {
    for mtu in [1500, 65535] {
        for v6 in [false, true] {
            let now = base();
            let mut stack = Stack::new(config(mtu), now).unwrap();
            let (id, sa) = open(&mut stack, now, v6, mtu, Some(7_000));
            let (tsval, tsecr) = sa
                .ts
                .expect("the SYN-ACK answers timestamps with timestamps");
            assert_eq!(tsecr, 7_000, "the SYN-ACK echoes the app's TSval");
            assert_eq!(
                sa.mss,
                Some(mss(mtu, v6)),
                "the MSS we advertise is unchanged"
            );

            let pkts = send(&mut stack, now, id, 3 * mtu);
            assert!(pkts.len() >= 3, "{} packets", pkts.len());
            let mut largest = 0;
            for p in &pkts {
                assert!(p.len() <= mtu, "a {}-byte packet at MTU {mtu}", p.len());
                let seg = tcp_of(parse_out(p));
                assert_eq!(
                    seg.ts,
                    Some((tsval, 7_001)),
                    "every segment carries timestamps"
                );
                largest = largest.max(seg.payload.len());
            }
            assert_eq!(
                largest,
                usize::from(mss(mtu, v6)) - 12,
                "payload and options together fill the app's MSS (RFC 6691)"
            );
        }
    }
}

#[test]
fn no_timestamps_for_an_app_that_does_not_offer_them() {
    let mtu = 1500;
    let now = base();
    let mut stack = Stack::new(config(mtu), now).unwrap();
    let (id, sa) = open(&mut stack, now, false, mtu, None);
    assert_eq!(sa.ts, None);
    let pkts = send(&mut stack, now, id, 3 * mtu);
    let segs: Vec<TcpOut> = pkts.iter().map(|p| tcp_of(parse_out(p))).collect();
    assert!(segs.iter().all(|s| s.ts.is_none()));
    assert_eq!(
        segs.iter().map(|s| s.payload.len()).max(),
        Some(usize::from(mss(mtu, false))),
        "without options a segment carries a full MSS"
    );
}

#[test]
fn tsval_follows_the_stacks_clock_in_milliseconds() {
    let mtu = 1500;
    let t0 = base();
    let mut stack = Stack::new(config(mtu), t0).unwrap();
    let (id, sa) = open(&mut stack, t0, false, mtu, Some(1));
    let first = sa.ts.unwrap().0;
    let later = t0 + Duration::from_millis(2_500);
    let pkts = send(&mut stack, later, id, 10);
    let seg = tcp_of(parse_out(&pkts[0]));
    assert_eq!(seg.ts.unwrap().0.wrapping_sub(first), 2_500);

    // A second stack on the same thread keeps its own clock and offset.
    let seeded = Config {
        random_seed: 99,
        ..config(mtu)
    };
    let mut other = Stack::new(seeded, t0).unwrap();
    let (_, sa2) = open(&mut other, t0, false, mtu, Some(1));
    assert_eq!(
        sa2.ts.unwrap().0.wrapping_sub(first),
        99u32.wrapping_sub(Config::default().random_seed as u32)
    );
}
