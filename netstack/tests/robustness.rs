//! Hostile input: a corpus of malformed packets with the counter each must
//! increment, plus random mutation; nothing panics and a live flow is unaffected.

mod common;

use common::*;
use netstack::{Config, Event, Stats};
use proptest::prelude::*;

fn fix_ipv4_header_checksum(p: &mut [u8]) {
    let ihl = usize::from(p[0] & 0x0f) * 4;
    p[10] = 0;
    p[11] = 0;
    let mut acc: u32 = 0;
    for w in p[..ihl].chunks(2) {
        acc += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    p[10..12].copy_from_slice(&(!(acc as u16)).to_be_bytes());
}

/// Inserts an 8-byte IPv6 extension header of type `kind` after the fixed header.
fn with_v6_ext(mut p: Vec<u8>, kind: u8, ext: [u8; 8]) -> Vec<u8> {
    let next = p[6];
    p[6] = kind;
    let len = u16::from_be_bytes([p[4], p[5]]) + 8;
    p[4..6].copy_from_slice(&len.to_be_bytes());
    let mut ext = ext;
    ext[0] = next;
    p.splice(40..40, ext);
    p
}

type Counter = fn(&Stats) -> u64;

fn corpus() -> Vec<(&'static str, Vec<u8>, Counter)> {
    let (a4, d4, a6, d6) = (
        app(false, 7000),
        dst(false, 80),
        app(true, 7000),
        dst(true, 80),
    );
    let udp4 = udp_pkt(a4, d4, b"payload!");
    let udp6 = udp_pkt(a6, d6, b"payload!");
    let tcp4 = tcp_pkt(a4, d4, 1, Some(1), NONE, 100, &[], b"data");
    let tcp6 = tcp_pkt(a6, d6, 1, Some(1), NONE, 100, &[], b"data");
    let mut v: Vec<(&'static str, Vec<u8>, Counter)> = Vec::new();
    let malformed: Counter = |s| s.dropped_malformed;
    let checksum: Counter = |s| s.dropped_checksum;
    v.push(("empty", vec![], malformed));
    v.push(("one byte", vec![0x45], malformed));
    v.push(("ipv4 header cut", udp4[..19].to_vec(), malformed));
    v.push(("ipv6 header cut", udp6[..39].to_vec(), malformed));
    v.push((
        "version 7",
        {
            let mut p = udp4.clone();
            p[0] = 0x75;
            p
        },
        malformed,
    ));
    v.push((
        "ihl 3",
        {
            let mut p = udp4.clone();
            p[0] = 0x43;
            p
        },
        malformed,
    ));
    v.push((
        "total length beyond data",
        {
            let mut p = udp4.clone();
            p[3] += 10;
            fix_ipv4_header_checksum(&mut p);
            p
        },
        malformed,
    ));
    v.push((
        "ipv6 payload length beyond data",
        {
            let mut p = udp6.clone();
            p[5] += 10;
            p
        },
        malformed,
    ));
    v.push((
        "tcp header cut",
        {
            let mut p = tcp4[..30].to_vec();
            p[3] = 30;
            fix_ipv4_header_checksum(&mut p);
            p
        },
        malformed,
    ));
    v.push((
        "tcp data offset too big",
        {
            let mut p = tcp6.clone();
            p[40 + 12] = 0xf0;
            p
        },
        malformed,
    ));
    v.push((
        "udp length field wrong",
        {
            let mut p = udp4.clone();
            p[25] += 9;
            p
        },
        malformed,
    ));
    v.push((
        "tcp port 0",
        tcp_pkt(app(false, 0), d4, 1, None, SYN, 100, &[], &[]),
        malformed,
    ));
    v.push((
        "bad ipv4 header checksum",
        {
            let mut p = udp4.clone();
            p[10] ^= 0xff;
            p
        },
        checksum,
    ));
    v.push((
        "bad tcp checksum v4",
        {
            let mut p = tcp4.clone();
            let n = p.len();
            p[n - 1] ^= 1;
            p
        },
        checksum,
    ));
    v.push((
        "bad tcp checksum v6",
        {
            let mut p = tcp6.clone();
            let n = p.len();
            p[n - 1] ^= 1;
            p
        },
        checksum,
    ));
    v.push((
        "bad udp checksum v6",
        {
            let mut p = udp6.clone();
            let n = p.len();
            p[n - 1] ^= 1;
            p
        },
        checksum,
    ));
    v.push((
        "bad syn checksum",
        {
            let mut p = syn(a4, d4, 5);
            p[24] ^= 1;
            p
        },
        checksum,
    ));
    v.push((
        "bad icmp checksum",
        {
            let mut p = echo_pkt(a4.ip(), d4.ip(), 1, 1, b"x");
            p[22] ^= 1;
            p
        },
        checksum,
    ));
    v.push((
        "bad icmpv6 checksum",
        {
            let mut p = echo_pkt(a6.ip(), d6.ip(), 1, 1, b"x");
            p[42] ^= 1;
            p
        },
        checksum,
    ));
    v.push((
        "ipv4 more-fragments",
        {
            let mut p = udp4.clone();
            p[6] |= 0x20;
            fix_ipv4_header_checksum(&mut p);
            p
        },
        |s| s.dropped_fragment,
    ));
    v.push((
        "ipv4 fragment offset",
        {
            let mut p = udp4.clone();
            p[7] = 3;
            fix_ipv4_header_checksum(&mut p);
            p
        },
        |s| s.dropped_fragment,
    ));
    v.push((
        "ipv6 fragment",
        with_v6_ext(udp6.clone(), 44, [0, 0, 0, 1, 0, 0, 0, 9]),
        |s| s.dropped_fragment,
    ));
    v.push((
        "ipv6 hop-by-hop",
        with_v6_ext(udp6.clone(), 0, [0, 0, 1, 4, 0, 0, 0, 0]),
        |s| s.dropped_unsupported,
    ));
    v.push(("oversized", udp_pkt(a4, d4, &[0; 1500]), |s| {
        s.dropped_oversized
    }));
    v.push((
        "gre",
        {
            let mut p = udp4.clone();
            p[9] = 47;
            fix_ipv4_header_checksum(&mut p);
            p
        },
        |s| s.dropped_unsupported,
    ));
    v.push((
        "icmp in ipv6",
        {
            let mut p = udp6.clone();
            p[6] = 1;
            p
        },
        |s| s.dropped_unsupported,
    ));
    v.push((
        "icmp timestamp",
        {
            // A well-formed timestamp request (8 + 12 bytes).
            let mut p = echo_pkt(a4.ip(), d4.ip(), 1, 1, &[0; 12]);
            p[20] = 13;
            p[22] = 0;
            p[23] = 0;
            let mut acc: u32 = 0;
            for w in p[20..].chunks(2) {
                acc += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
            }
            while acc > 0xffff {
                acc = (acc & 0xffff) + (acc >> 16);
            }
            p[22..24].copy_from_slice(&(!(acc as u16)).to_be_bytes());
            p
        },
        |s| s.dropped_unsupported,
    ));
    v.push((
        "multicast destination",
        udp_pkt(a4, "224.0.0.251:5353".parse().unwrap(), b"mdns"),
        |s| s.dropped_non_unicast,
    ));
    v.push((
        "broadcast destination",
        udp_pkt(a4, "255.255.255.255:67".parse().unwrap(), b"dhcp"),
        |s| s.dropped_non_unicast,
    ));
    v.push((
        "ipv6 multicast",
        udp_pkt(a6, "[ff02::fb]:5353".parse().unwrap(), b"mdns"),
        |s| s.dropped_non_unicast,
    ));
    v.push((
        "unspecified source",
        udp_pkt("0.0.0.0:68".parse().unwrap(), d4, b"x"),
        |s| s.dropped_non_unicast,
    ));
    v
}

/// An established flow, exercised before and after the hostile input.
fn live_pair() -> (Pair, smoltcp::iface::SocketHandle, netstack::TcpFlowId) {
    let mut pair = Pair::new(Config {
        tcp_ack_delay: None,
        ..Config::default()
    });
    let (h, id) = pair.open(dst(false, 443), 40500, 65536);
    (pair, h, id)
}

fn still_works(pair: &mut Pair, h: smoltcp::iface::SocketHandle, id: netstack::TcpFlowId, tag: u8) {
    pair.app.sock(h).send_slice(&[tag; 1000]).unwrap();
    let mut got = Vec::new();
    let ok = pair.run_until(500, |p| {
        let mut b = [0u8; 2048];
        let n = p.stack.tcp_recv(id, &mut b).unwrap();
        got.extend_from_slice(&b[..n]);
        got.len() == 1000
    });
    assert!(ok && got.iter().all(|b| *b == tag), "live flow broken");
}

#[test]
fn malformed_corpus_is_counted_and_harmless() {
    let (mut pair, h, id) = live_pair();
    still_works(&mut pair, h, id, 1);
    for (name, pkt, counter) in corpus() {
        let before = counter(pair.stack.stats());
        let events_before = pair.events.len();
        pair.stack.handle_packet(pair.now, &pkt);
        pair.step();
        assert_eq!(
            counter(pair.stack.stats()),
            before + 1,
            "{name}: counter did not move"
        );
        assert_eq!(
            pair.events.len(),
            events_before,
            "{name}: produced an event"
        );
        assert_eq!(pair.stack.tcp_flow_count(), 1, "{name}");
        assert_eq!(pair.stack.udp_flow_count(), 0, "{name}");
    }
    still_works(&mut pair, h, id, 2);
    assert!(
        !pair
            .events
            .iter()
            .any(|e| matches!(e, Event::TcpClosed { .. }))
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn mutated_packets_never_panic(
        which in 0usize..32,
        flips in proptest::collection::vec((0usize..2048, any::<u8>()), 0..6),
        cut in proptest::option::of(0usize..2048),
        junk in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let (mut pair, h, id) = live_pair();
        let mut seeds: Vec<Vec<u8>> = corpus().into_iter().map(|c| c.1).collect();
        seeds.push(syn(app(true, 1), dst(true, 2), 3));
        seeds.push(udp_pkt(app(false, 1), dst(false, 53), b"0123456789abcdef"));
        seeds.push(echo_pkt(app(true, 0).ip(), dst(true, 0).ip(), 1, 2, b"ping"));
        let mut p = seeds[which % seeds.len()].clone();
        for (at, x) in flips {
            if !p.is_empty() {
                let n = p.len();
                p[at % n] ^= x;
            }
        }
        if let Some(c) = cut {
            p.truncate(c);
        }
        p.extend_from_slice(&junk);
        pair.stack.handle_packet(pair.now, &p);
        pair.step();
        while let Some(ev) = pair.stack.poll_event() {
            if let Event::TcpIncoming { id, .. } = ev {
                pair.stack.tcp_accept(id).unwrap();
            }
        }
        pair.step();
        still_works(&mut pair, h, id, 3);
    }
}
