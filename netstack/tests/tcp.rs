//! TCP through the stack: handshake, refusal, data, half-close, reset,
//! back-pressure, timeouts, reclamation, many flows.

mod common;

use std::time::Duration;

use common::*;
use netstack::{CloseReason, Config, Event, Refusal, Stack};
use smoltcp::socket::tcp::State;

fn cfg() -> Config {
    Config {
        tcp_ack_delay: None,
        ..Config::default()
    }
}

fn handshake_to_documentation_address(v6: bool) {
    let now = base();
    let mut stack = Stack::new(cfg(), now).unwrap();
    let (src, dst) = (app(v6, 40000), dst(v6, 443));
    stack.handle_packet(now, &syn(src, dst, 1000));
    let evs = drain_events(&mut stack);
    let [Event::TcpIncoming { id, src: s, dst: d }] = evs.as_slice() else {
        panic!("{evs:?}")
    };
    assert_eq!((*s, *d), (src, dst));
    // Deferred decision: nothing is answered before the accept.
    assert!(drain_out(&mut stack, now).is_empty());
    stack.tcp_accept(*id).unwrap();
    let out = drain_out(&mut stack, now);
    let sa = tcp_of(out[0].clone());
    assert_eq!(out.len(), 1);
    assert_eq!(
        (sa.src, sa.dst),
        (dst, src),
        "SYN-ACK must come from the asked address"
    );
    assert!(sa.syn && !sa.rst);
    assert_eq!(sa.ack, Some(1001));
    assert_eq!(
        sa.mss,
        Some(if v6 { 1440 } else { 1460 }),
        "MSS = MTU - headers"
    );
    assert!(sa.wscale.is_some(), "window scaling offered back");
    let ack = tcp_pkt(
        src,
        dst,
        1001,
        Some(sa.seq.wrapping_add(1)),
        NONE,
        502,
        &[],
        &[],
    );
    stack.handle_packet(now, &ack);
    assert_eq!(
        drain_events(&mut stack),
        vec![Event::TcpEstablished { id: *id }]
    );
}

#[test]
fn handshake_ipv4() {
    handshake_to_documentation_address(false);
}

#[test]
fn handshake_ipv6() {
    handshake_to_documentation_address(true);
}

#[test]
fn mss_follows_a_large_mtu() {
    let now = base();
    let config = Config {
        mtu: 65535,
        tcp_rx_buffer: 1 << 20,
        tcp_tx_buffer: 1 << 20,
        ..cfg()
    };
    for v6 in [false, true] {
        let mut stack = Stack::new(config.clone(), now).unwrap();
        let (src, dst) = (app(v6, 40000), dst(v6, 443));
        let opts = [etherparse::TcpOptionElement::MaximumSegmentSize(65495)];
        stack.handle_packet(now, &tcp_pkt(src, dst, 5, None, SYN, 65535, &opts, &[]));
        let Some(Event::TcpIncoming { id, .. }) = stack.poll_event() else {
            panic!()
        };
        stack.tcp_accept(id).unwrap();
        let sa = tcp_of(drain_out(&mut stack, now).remove(0));
        assert_eq!(sa.mss, Some(if v6 { 65475 } else { 65495 }));
    }
}

fn refused(v6: bool, how: Refusal) -> Vec<Out> {
    let now = base();
    let mut stack = Stack::new(cfg(), now).unwrap();
    let (src, dst) = (app(v6, 40001), dst(v6, 443));
    let syn_pkt = syn(src, dst, 77);
    stack.handle_packet(now, &syn_pkt);
    let Some(Event::TcpIncoming { id, .. }) = stack.poll_event() else {
        panic!()
    };
    stack.tcp_refuse(id, how).unwrap();
    assert_eq!(
        drain_events(&mut stack),
        vec![Event::TcpClosed {
            id,
            reason: CloseReason::Refused
        }]
    );
    assert_eq!(stack.tcp_flow_count(), 0);
    assert_eq!(stack.buffer_memory(), 0);
    assert_eq!(stack.tcp_accept(id), Err(netstack::Error::UnknownId));
    drain_out(&mut stack, now)
}

#[test]
fn refused_flow_gets_rst() {
    for v6 in [false, true] {
        let out = refused(v6, Refusal::Reset);
        let [Out::Tcp(rst)] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert!(rst.rst && rst.ack == Some(78), "{rst:?}");
        assert_eq!(rst.src, dst(v6, 443));
    }
}

#[test]
fn refused_flow_gets_icmp_unreachable() {
    for v6 in [false, true] {
        for (how, code4, code6) in [
            (Refusal::NetworkUnreachable, 0, 0),
            (Refusal::HostUnreachable, 1, 3),
            (Refusal::Prohibited, 13, 1),
        ] {
            let out = refused(v6, how);
            let [
                Out::Icmp {
                    src,
                    dst: to,
                    kind,
                    code,
                    payload,
                    ..
                },
            ] = out.as_slice()
            else {
                panic!("{out:?}")
            };
            assert_eq!(*kind, if v6 { 1 } else { 3 });
            assert_eq!(*code, if v6 { code6 } else { code4 });
            assert_eq!(*src, dst(v6, 443).ip());
            assert_eq!(*to, app(v6, 1).ip());
            // The quoted packet is the SYN itself.
            assert_eq!(payload, &syn(app(v6, 40001), dst(v6, 443), 77));
        }
    }
}

#[test]
fn silent_refusal_sends_nothing() {
    assert!(refused(false, Refusal::Silent).is_empty());
}

#[test]
fn segments_for_unknown_flows_get_rst() {
    let now = base();
    let mut stack = Stack::new(cfg(), now).unwrap();
    let p = tcp_pkt(
        app(false, 1234),
        dst(false, 80),
        10,
        Some(99),
        NONE,
        100,
        &[],
        b"x",
    );
    stack.handle_packet(now, &p);
    let out = drain_out(&mut stack, now);
    let [Out::Tcp(rst)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert!(rst.rst && rst.seq == 99);
    assert_eq!(stack.stats().tcp_no_flow, 1);
}

#[test]
fn hand_driven_data_both_ways_and_app_reset() {
    for v6 in [false, true] {
        let now = base();
        let mut stack = Stack::new(cfg(), now).unwrap();
        let (src, dst) = (app(v6, 40002), dst(v6, 8080));
        let (id, sseq, aseq) = handshake(&mut stack, now, src, dst, 500);
        let p = tcp_pkt(src, dst, aseq, Some(sseq), NONE, 502, &[], b"hello stack");
        stack.handle_packet(now, &p);
        assert_eq!(drain_events(&mut stack), vec![Event::TcpReadable { id }]);
        let mut buf = [0u8; 64];
        assert_eq!(stack.tcp_recv(id, &mut buf).unwrap(), 11);
        assert_eq!(&buf[..11], b"hello stack");
        assert_eq!(stack.tcp_recv(id, &mut buf).unwrap(), 0);
        assert_eq!(stack.tcp_send(id, b"hi app").unwrap(), 6);
        let out = drain_out(&mut stack, now);
        let data = out
            .iter()
            .map(|o| tcp_of(o.clone()))
            .find(|t| !t.payload.is_empty())
            .unwrap();
        assert_eq!(data.payload, b"hi app");
        assert_eq!(data.seq, sseq);
        assert_eq!(data.ack, Some(aseq + 11));
        // The app resets the connection.
        let rst = tcp_pkt(src, dst, aseq + 11, None, RST, 0, &[], &[]);
        stack.handle_packet(now, &rst);
        assert_eq!(
            drain_events(&mut stack),
            vec![Event::TcpClosed {
                id,
                reason: CloseReason::Reset
            }]
        );
        assert_eq!(stack.tcp_flow_count(), 0);
        assert_eq!(stack.buffer_memory(), 0);
        assert_eq!(stack.tcp_send(id, b"x"), Err(netstack::Error::UnknownId));
    }
}

#[test]
fn abort_sends_rst_to_app() {
    for v6 in [false, true] {
        let mut pair = Pair::new(cfg());
        let (h, id) = pair.open(dst(v6, 443), 41000, 65536);
        pair.stack.tcp_abort(id).unwrap();
        assert!(pair.run_until(100, |p| p.app.sock(h).state() == State::Closed));
        assert!(pair.events.contains(&Event::TcpClosed {
            id,
            reason: CloseReason::Aborted
        }));
        assert_eq!(pair.stack.tcp_flow_count(), 0);
    }
}

/// Moves `len` bytes each way at once, verifying every byte and every checksum.
fn bulk_both_ways(v6: bool, mtu: usize, len: u64) {
    let config = Config {
        mtu,
        tcp_rx_buffer: 256 * 1024,
        tcp_tx_buffer: 256 * 1024,
        ..cfg()
    };
    let mut pair = Pair::new(config);
    let (h, id) = pair.open(dst(v6, 443), 41001, 256 * 1024);
    let (mut up_sent, mut up_recv, mut down_sent, mut down_recv) = (0u64, 0u64, 0u64, 0u64);
    let mut buf = vec![0u8; 64 * 1024];
    let done = pair.run_until(2_000_000, |p| {
        // App → stack.
        let s = p.app.sock(h);
        while up_sent < len && s.can_send() {
            let n = s
                .send(|b| {
                    let n = b.len().min((len - up_sent) as usize);
                    for (i, x) in b[..n].iter_mut().enumerate() {
                        *x = pattern(1, up_sent + i as u64);
                    }
                    (n, n)
                })
                .unwrap();
            up_sent += n as u64;
        }
        loop {
            let n = p.stack.tcp_recv(id, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            for (i, x) in buf[..n].iter().enumerate() {
                assert_eq!(
                    *x,
                    pattern(1, up_recv + i as u64),
                    "upload byte {}",
                    up_recv + i as u64
                );
            }
            up_recv += n as u64;
        }
        // Stack → app.
        loop {
            let n = ((len - down_sent) as usize).min(buf.len());
            if n == 0 {
                break;
            }
            let chunk: Vec<u8> = (0..n as u64).map(|i| pattern(2, down_sent + i)).collect();
            let took = p.stack.tcp_send(id, &chunk).unwrap();
            down_sent += took as u64;
            if took < n {
                break;
            }
        }
        let s = p.app.sock(h);
        while s.can_recv() {
            let got = s
                .recv(|b| {
                    for (i, x) in b.iter().enumerate() {
                        assert_eq!(
                            *x,
                            pattern(2, down_recv + i as u64),
                            "download byte {}",
                            down_recv + i as u64
                        );
                    }
                    (b.len(), b.len())
                })
                .unwrap();
            down_recv += got as u64;
        }
        up_recv == len && down_recv == len
    });
    assert!(done, "up {up_recv}/{len} down {down_recv}/{len}");
}

#[test]
fn bulk_both_ways_ipv4_mtu1500() {
    bulk_both_ways(false, 1500, 8 << 20);
}

#[test]
fn bulk_both_ways_ipv6_mtu1500() {
    bulk_both_ways(true, 1500, 8 << 20);
}

#[test]
fn bulk_both_ways_mtu_1280_and_65535() {
    bulk_both_ways(true, 1280, 2 << 20);
    bulk_both_ways(false, 65535, 32 << 20);
}

/// The app closes its side first; the stack keeps sending; then the stack closes.
fn half_close(v6: bool) {
    let mut pair = Pair::new(cfg());
    let (h, id) = pair.open(dst(v6, 443), 41002, 65536);
    pair.app.sock(h).send_slice(b"request").unwrap();
    pair.app.sock(h).close();
    assert!(pair.run_until(200, |p| p.events.contains(&Event::TcpReadable { id })));
    let mut buf = [0u8; 16];
    assert_eq!(pair.stack.tcp_recv(id, &mut buf).unwrap(), 7);
    assert!(pair.run_until(200, |p| p.events.contains(&Event::TcpPeerFin { id })));
    // Half-closed: the stack side still sends, the app still receives.
    assert_eq!(pair.stack.tcp_send(id, b"response").unwrap(), 8);
    assert!(pair.run_until(200, |p| p.app.sock(h).recv_queue() == 8));
    assert_eq!(pair.app.sock(h).state(), State::FinWait2);
    pair.stack.tcp_shutdown_write(id).unwrap();
    assert!(pair.run_until(200, |p| {
        p.events
            .iter()
            .any(|e| matches!(e, Event::TcpClosed { .. }))
    }));
    assert!(pair.events.contains(&Event::TcpClosed {
        id,
        reason: CloseReason::Graceful
    }));
    assert_eq!(
        pair.stack.tcp_flow_count(),
        0,
        "closed flow reclaimed at once"
    );
    let mut got = [0u8; 8];
    assert_eq!(pair.app.sock(h).recv_slice(&mut got).unwrap(), 8);
    assert_eq!(&got, b"response");
    assert!(matches!(
        pair.app.sock(h).state(),
        State::TimeWait | State::Closed
    ));
}

#[test]
fn half_close_app_first_ipv4() {
    half_close(false);
}

#[test]
fn half_close_app_first_ipv6() {
    half_close(true);
}

#[test]
fn half_close_stack_first() {
    for v6 in [false, true] {
        let mut pair = Pair::new(cfg());
        let (h, id) = pair.open(dst(v6, 443), 41003, 65536);
        pair.stack.tcp_send(id, b"banner").unwrap();
        pair.stack.tcp_shutdown_write(id).unwrap();
        assert_eq!(
            pair.stack.tcp_send(id, b"x"),
            Err(netstack::Error::InvalidState)
        );
        assert!(pair.run_until(200, |p| p.app.sock(h).state() == State::CloseWait));
        // The app keeps sending after our FIN.
        pair.app.sock(h).send_slice(b"more from app").unwrap();
        assert!(pair.run_until(200, |p| p.events.contains(&Event::TcpReadable { id })));
        let mut buf = [0u8; 32];
        assert_eq!(pair.stack.tcp_recv(id, &mut buf).unwrap(), 13);
        pair.app.sock(h).close();
        assert!(
            pair.run_until(200, |p| p.events.contains(&Event::TcpClosed {
                id,
                reason: CloseReason::Graceful
            }))
        );
        assert!(pair.events.contains(&Event::TcpPeerFin { id }));
        assert_eq!(pair.stack.tcp_flow_count(), 0);
    }
}

#[test]
fn backpressure_both_ways() {
    let config = Config {
        tcp_rx_buffer: 16 * 1024,
        tcp_tx_buffer: 16 * 1024,
        ..cfg()
    };
    let mut pair = Pair::new(config);
    let (h, id) = pair.open(dst(false, 443), 41004, 64 * 1024);
    // The caller does not read: the app can put only the window into flight.
    let blob = vec![7u8; 64 * 1024];
    pair.app.sock(h).send_slice(&blob).unwrap();
    pair.run_until(300, |_| false);
    assert_eq!(
        pair.stack.tcp_recv_queue(id).unwrap(),
        16 * 1024,
        "receive buffer full"
    );
    assert_eq!(
        pair.app.sock(h).send_queue(),
        48 * 1024,
        "rest held by the app: window closed"
    );
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    let drained = pair.run_until(2000, |p| {
        total += p.stack.tcp_recv(id, &mut buf).unwrap();
        total == 64 * 1024
    });
    assert!(drained, "window reopened after reads: {total}");
    // The app does not read: tcp_send takes only what fits, then says when to retry.
    let mut took = 0;
    for _ in 0..100 {
        let n = pair.stack.tcp_send(id, &blob).unwrap();
        took += n;
        pair.run_until(20, |_| false);
        if n == 0 {
            break;
        }
    }
    // Exactly our send buffer plus the app's receive window, then nothing.
    assert_eq!(
        took,
        16 * 1024 + 64 * 1024,
        "send must stop when the app stops reading"
    );
    assert_eq!(pair.stack.tcp_send(id, b"x").unwrap(), 0);
    pair.events.clear();
    let mut sink = vec![0u8; 128 * 1024];
    pair.app.sock(h).recv_slice(&mut sink).unwrap();
    assert!(pair.run_until(200, |p| p.events.contains(&Event::TcpWritable { id })));
    assert!(pair.stack.tcp_send_capacity(id).unwrap() > 0);
}

#[test]
fn accept_timeout_and_idle_timeout() {
    let now = base();
    let config = Config {
        tcp_accept_timeout: Duration::from_secs(5),
        tcp_idle_timeout: Some(Duration::from_secs(30)),
        ..cfg()
    };
    let mut stack = Stack::new(config, now).unwrap();
    stack.handle_packet(now, &syn(app(false, 50000), dst(false, 443), 1));
    let Some(Event::TcpIncoming { id: pending, .. }) = stack.poll_event() else {
        panic!()
    };
    let (idle, ..) = handshake(&mut stack, now, app(true, 50001), dst(true, 443), 9);
    let mut t = now;
    let mut closed = Vec::new();
    while t < now + Duration::from_secs(40) {
        t = stack
            .poll_timeout()
            .unwrap_or(t + Duration::from_secs(1))
            .max(t + Duration::from_millis(100));
        stack.handle_timeout(t);
        closed.extend(drain_events(&mut stack));
        drain_out(&mut stack, t);
    }
    assert!(
        closed.contains(&Event::TcpClosed {
            id: pending,
            reason: CloseReason::AcceptTimeout
        }),
        "{closed:?}"
    );
    assert!(
        closed.contains(&Event::TcpClosed {
            id: idle,
            reason: CloseReason::IdleTimeout
        }),
        "{closed:?}"
    );
    assert_eq!(stack.tcp_flow_count(), 0);
    assert_eq!(stack.stats().tcp_accept_timeouts, 1);
    assert_eq!(stack.stats().tcp_idle_timeouts, 1);
}

#[test]
fn flow_limit_refuses_with_rst_and_reclaims() {
    let now = base();
    let config = Config {
        max_tcp_flows: 4,
        ..cfg()
    };
    let mut stack = Stack::new(config, now).unwrap();
    // Churn: 10 rounds of 4 flows opened and reset; a stack that does not reclaim
    // would refuse from round 2 on.
    for round in 0..10u16 {
        let mut ids = Vec::new();
        for i in 0..4u16 {
            let src = app(round % 2 == 1, 1000 + round * 10 + i);
            let (id, _, aseq) = handshake(&mut stack, now, src, dst(round % 2 == 1, 443), 1);
            ids.push((id, src, aseq));
        }
        // One more is refused with RST.
        let extra = app(false, 9999);
        stack.handle_packet(now, &syn(extra, dst(false, 443), 1));
        assert!(drain_events(&mut stack).is_empty());
        let out = drain_out(&mut stack, now);
        assert!(matches!(out.as_slice(), [Out::Tcp(t)] if t.rst), "{out:?}");
        for (id, src, aseq) in ids {
            stack.handle_packet(
                now,
                &tcp_pkt(src, dst(round % 2 == 1, 443), aseq, None, RST, 0, &[], &[]),
            );
            assert_eq!(
                drain_events(&mut stack),
                vec![Event::TcpClosed {
                    id,
                    reason: CloseReason::Reset
                }]
            );
        }
        assert_eq!(stack.tcp_flow_count(), 0);
    }
    assert_eq!(stack.stats().tcp_refused_limit, 10);
    assert_eq!(stack.stats().tcp_flows_reclaimed, 40);
}

#[test]
fn memory_budget_limits_flows() {
    let now = base();
    let config = Config {
        tcp_rx_buffer: 8192,
        tcp_tx_buffer: 8192,
        max_buffer_memory: 3 * 16384,
        ..cfg()
    };
    let mut stack = Stack::new(config, now).unwrap();
    for i in 0..4u16 {
        stack.handle_packet(now, &syn(app(false, 2000 + i), dst(false, 443), 1));
    }
    let offered = drain_events(&mut stack).len();
    assert_eq!(offered, 3);
    assert_eq!(stack.buffer_memory(), 3 * 16384);
    assert_eq!(stack.stats().tcp_refused_limit, 1);
}

#[test]
fn ten_thousand_concurrent_flows() {
    let now = base();
    let config = Config {
        tcp_rx_buffer: 4096,
        tcp_tx_buffer: 4096,
        max_tcp_flows: 12_000,
        ..cfg()
    };
    let mut stack = Stack::new(config, now).unwrap();
    let n = 10_000u32;
    let key = |i: u32| {
        (
            app(i % 2 == 1, 10_000 + (i / 2) as u16),
            dst(i % 2 == 1, 443),
        )
    };
    for i in 0..n {
        let (s, d) = key(i);
        stack.handle_packet(now, &syn(s, d, i));
    }
    let mut ids = std::collections::HashMap::new();
    for ev in drain_events(&mut stack) {
        let Event::TcpIncoming { id, src, dst } = ev else {
            panic!("{ev:?}")
        };
        ids.insert((src, dst), id);
        stack.tcp_accept(id).unwrap();
    }
    assert_eq!(ids.len(), n as usize);
    let mut isn = std::collections::HashMap::new();
    for o in drain_out(&mut stack, now) {
        let t = tcp_of(o);
        assert!(t.syn);
        isn.insert((t.dst, t.src), t.seq);
    }
    assert_eq!(isn.len(), n as usize);
    // ACK + 4 bytes of data on every flow, echo it back, check all.
    for i in 0..n {
        let (s, d) = key(i);
        let p = tcp_pkt(
            s,
            d,
            i + 1,
            Some(isn[&(s, d)] + 1),
            NONE,
            502,
            &[],
            &i.to_be_bytes(),
        );
        stack.handle_packet(now, &p);
    }
    let mut readable = 0;
    let mut buf = [0u8; 8];
    for ev in drain_events(&mut stack) {
        if let Event::TcpReadable { id } = ev {
            readable += 1;
            assert_eq!(stack.tcp_recv(id, &mut buf).unwrap(), 4);
            stack.tcp_send(id, &buf[..4]).unwrap();
        }
    }
    assert_eq!(readable, n);
    let mut echoed = 0;
    for o in drain_out(&mut stack, now) {
        let t = tcp_of(o);
        if !t.payload.is_empty() {
            let i = u32::from_be_bytes(t.payload[..4].try_into().unwrap());
            assert_eq!(key(i), (t.dst, t.src), "data went to the wrong flow");
            echoed += 1;
        }
    }
    assert_eq!(echoed, n);
    assert_eq!(stack.tcp_flow_count(), n as usize);
    assert_eq!(stack.buffer_memory(), n as usize * 8192);
}

/// With `tcp_checksum_offload` the stack leaves TCP checksums for the device to
/// complete, and packets fed with `handle_vouched_packet` are not checked for TCP/UDP
/// checksums (the kernel marked them `NEEDS_CSUM`: the field holds a partial sum); the
/// IPv4 header checksum is still checked, and plain `handle_packet` still checks all.
fn checksum_offload(v6: bool) {
    let now = base();
    let config = Config {
        tcp_checksum_offload: true,
        ..cfg()
    };
    let mut stack = Stack::new(config, now).unwrap();
    let (src, to) = (app(v6, 40000), dst(v6, 443));
    let mut partial_syn = syn(src, to, 1000);
    let l4 = if v6 { 40 } else { 20 };
    partial_syn[l4 + 16] ^= 0x3c;
    stack.handle_packet(now, &partial_syn);
    assert!(drain_events(&mut stack).is_empty());
    assert_eq!(stack.stats().dropped_checksum, 1);
    if !v6 {
        let mut bad_ip = partial_syn.clone();
        bad_ip[10] ^= 0x01;
        stack.handle_vouched_packet(now, &bad_ip);
        assert!(drain_events(&mut stack).is_empty());
        assert_eq!(
            stack.stats().dropped_checksum,
            2,
            "the IP header is still checked"
        );
    }
    stack.handle_vouched_packet(now, &partial_syn);
    let evs = drain_events(&mut stack);
    let [Event::TcpIncoming { id, .. }] = evs.as_slice() else {
        panic!("{evs:?}")
    };
    stack.tcp_accept(*id).unwrap();
    let mut syn_ack = stack.poll_transmit(now).expect("a SYN-ACK");
    complete_partial_tcp(&mut syn_ack);
    let sa = tcp_of(parse_out(&syn_ack));
    assert!(sa.syn && sa.ack == Some(1001));
    // UDP: a vouched datagram with a partial checksum is delivered.
    let mut datagram = udp_pkt(app(v6, 40001), dst(v6, 5000), b"vouched");
    datagram[l4 + 6] ^= 0x77;
    stack.handle_packet(now, &datagram);
    assert!(drain_events(&mut stack).is_empty());
    stack.handle_vouched_packet(now, &datagram);
    let evs = drain_events(&mut stack);
    assert!(
        matches!(evs.as_slice(), [Event::UdpOpened { .. }, Event::UdpDatagram { payload, .. }] if &payload[..] == b"vouched"),
        "{evs:?}"
    );
}

#[test]
fn checksum_offload_ipv4() {
    checksum_offload(false);
}

#[test]
fn checksum_offload_ipv6() {
    checksum_offload(true);
}

/// With TCP segmentation offload the kernel hands over one segment carrying several of a
/// LAN sender's (GSO): a vouched packet may exceed the MTU, an unvouched one may not.
#[test]
fn a_vouched_segment_may_exceed_the_mtu() {
    for v6 in [false, true] {
        let now = base();
        let mut stack = Stack::new(cfg(), now).unwrap();
        assert_eq!(stack.config().mtu, 1500);
        let (src, dst) = (app(v6, 40003), dst(v6, 8080));
        let (id, sseq, aseq) = handshake(&mut stack, now, src, dst, 900);
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let p = tcp_pkt(src, dst, aseq, Some(sseq), NONE, 502, &[], &data);
        stack.handle_packet(now, &p);
        assert!(drain_events(&mut stack).is_empty());
        assert_eq!(stack.stats().dropped_oversized, 1);
        stack.handle_vouched_packet(now, &p);
        assert_eq!(drain_events(&mut stack), vec![Event::TcpReadable { id }]);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stack.tcp_recv(id, &mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, data, "v6 {v6}");
        let ack = drain_out(&mut stack, now + std::time::Duration::from_millis(20))
            .into_iter()
            .map(tcp_of)
            .filter_map(|t| t.ack)
            .max();
        assert_eq!(
            ack,
            Some(aseq + 20_000),
            "the whole segment is acknowledged"
        );
        // Anything else beyond the MTU is dropped, vouched or not: only TCP is coalesced.
        let big_udp = udp_pkt(app(v6, 40004), dst, &data[..4000]);
        let big_echo = echo_pkt(src.ip(), dst.ip(), 7, 1, &data[..4000]);
        stack.handle_vouched_packet(now, &big_udp);
        stack.handle_vouched_packet(now, &big_echo);
        assert!(drain_events(&mut stack).is_empty());
        assert_eq!(stack.stats().dropped_oversized, 3);
    }
}

/// `tcp_recv_with` hands out what the app sent in order, at most `max` at a time, and keeps
/// what the taker leaves (nothing, or part of it) for the next call — across the receive
/// buffer's wrap-around.
#[test]
fn recv_with_keeps_what_the_taker_leaves() {
    let len: u64 = 1 << 20;
    let mut pair = Pair::new(cfg());
    let (h, id) = pair.open(dst(false, 443), 41002, 64 * 1024);
    let (mut sent, mut got, mut calls) = (0u64, 0u64, 0u64);
    let done = pair.run_until(2_000_000, |p| {
        let s = p.app.sock(h);
        while sent < len && s.can_send() {
            sent += s
                .send(|b| {
                    let n = b.len().min((len - sent) as usize);
                    for (i, x) in b[..n].iter_mut().enumerate() {
                        *x = pattern(3, sent + i as u64);
                    }
                    (n, n)
                })
                .unwrap() as u64;
        }
        loop {
            calls += 1;
            // A few bytes, ~1,000 or up to everything offered; now and then nothing.
            let want = [0, 1000, 40_000][(calls % 3) as usize] + (calls % 7) as usize;
            let mut offered = 0;
            let n = p
                .stack
                .tcp_recv_with(id, 30_000, |data| {
                    offered = data.len();
                    assert!(data.len() <= 30_000, "more than max offered");
                    let take = want.min(data.len());
                    for (i, x) in data[..take].iter().enumerate() {
                        assert_eq!(*x, pattern(3, got + i as u64), "byte {}", got + i as u64);
                    }
                    take
                })
                .unwrap();
            assert!(n <= offered);
            got += n as u64;
            if n == 0 && want != 0 {
                break;
            }
        }
        got == len
    });
    assert!(done, "{got} of {len} bytes arrived");
}
