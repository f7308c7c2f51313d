//! UDP flows, DNS interception (UDP and TCP/53) and ICMP echo, IPv4 and IPv6.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::*;
use netstack::{Config, DnsInterception, DnsTransport, Event, Stack};

fn query(id: u16) -> Vec<u8> {
    // Header (id, RD, 1 question) + "example.com A IN".
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    q.extend_from_slice(b"\x07example\x03com\x00\x00\x01\x00\x01");
    q
}

#[test]
fn udp_both_ways() {
    for v6 in [false, true] {
        let now = base();
        let mut stack = Stack::new(Config::default(), now).unwrap();
        let (src, to) = (app(v6, 5000), dst(v6, 4433));
        stack.handle_packet(now, &udp_pkt(src, to, b"ping 1"));
        stack.handle_packet(now, &udp_pkt(src, to, b"ping 2"));
        let evs = drain_events(&mut stack);
        let Event::UdpOpened { id, src: s, dst: d } = evs[0] else {
            panic!("{evs:?}")
        };
        assert_eq!((s, d), (src, to));
        assert_eq!(
            &evs[1..],
            &[
                Event::UdpDatagram {
                    id,
                    payload: b"ping 1".to_vec().into()
                },
                Event::UdpDatagram {
                    id,
                    payload: b"ping 2".to_vec().into()
                },
            ]
        );
        let big = vec![0xab; netstack::Config::default().mtu - if v6 { 48 } else { 28 }];
        stack.udp_send_to_app(id, b"pong").unwrap();
        stack.udp_send_to_app(id, &big).unwrap();
        let too_big = stack.udp_send_to_app(id, &[0; 1500]);
        assert!(matches!(too_big, Err(netstack::Error::TooLarge { .. })));
        let out = drain_out(&mut stack, now);
        let [
            Out::Udp {
                src: a,
                dst: b,
                payload: p1,
            },
            Out::Udp { payload: p2, .. },
        ] = out.as_slice()
        else {
            panic!("{out:?}")
        };
        assert_eq!(
            (*a, *b),
            (to, src),
            "reply comes from the address the app wrote to"
        );
        assert_eq!(p1, b"pong");
        assert_eq!(p2, &big);
        // A second 5-tuple is a second flow.
        stack.handle_packet(now, &udp_pkt(app(v6, 5001), to, b"x"));
        assert!(
            matches!(stack.poll_event(), Some(Event::UdpOpened { id: other, .. }) if other != id)
        );
        assert_eq!(stack.udp_flow_count(), 2);
    }
}

#[test]
fn udp_ipv4_zero_checksum_accepted_ipv6_rejected() {
    let now = base();
    let mut stack = Stack::new(Config::default(), now).unwrap();
    for v6 in [false, true] {
        let mut p = udp_pkt(app(v6, 5000), dst(v6, 9), b"data");
        let off = if v6 { 40 } else { 20 };
        p[off + 6] = 0;
        p[off + 7] = 0;
        stack.handle_packet(now, &p);
    }
    assert_eq!(
        drain_events(&mut stack).len(),
        2,
        "v4 flow opened + datagram"
    );
    assert_eq!(stack.stats().dropped_checksum, 1);
}

#[test]
fn udp_flows_expire_when_idle() {
    let now = base();
    let config = Config {
        udp_idle_timeout: Duration::from_secs(30),
        ..Config::default()
    };
    let mut stack = Stack::new(config, now).unwrap();
    stack.handle_packet(now, &udp_pkt(app(false, 1), dst(false, 2), b"a"));
    stack.handle_packet(now, &udp_pkt(app(true, 1), dst(true, 2), b"a"));
    let ids: Vec<_> = drain_events(&mut stack)
        .into_iter()
        .filter_map(|e| {
            if let Event::UdpOpened { id, .. } = e {
                Some(id)
            } else {
                None
            }
        })
        .collect();
    // Traffic at t=20 s keeps the v6 flow alive (reply direction counts too).
    let t20 = now + Duration::from_secs(20);
    stack.handle_timeout(t20);
    stack.udp_send_to_app(ids[1], b"reply").unwrap();
    stack.handle_timeout(now + Duration::from_secs(31));
    assert_eq!(
        drain_events(&mut stack),
        vec![Event::UdpClosed { id: ids[0] }]
    );
    assert_eq!(
        stack.udp_send_to_app(ids[0], b"late"),
        Err(netstack::Error::UnknownId)
    );
    stack.handle_timeout(now + Duration::from_secs(51));
    assert_eq!(
        drain_events(&mut stack),
        vec![Event::UdpClosed { id: ids[1] }]
    );
    assert_eq!(stack.udp_flow_count(), 0);
    assert_eq!(stack.stats().udp_flows_expired, 2);
    assert_eq!(
        stack.poll_timeout(),
        None,
        "no timer once everything is gone"
    );
}

#[test]
fn udp_flow_limit_is_counted() {
    let now = base();
    let mut stack = Stack::new(
        Config {
            max_udp_flows: 2,
            ..Config::default()
        },
        now,
    )
    .unwrap();
    for port in 1..=3 {
        stack.handle_packet(now, &udp_pkt(app(false, port), dst(false, 9), b"x"));
    }
    assert_eq!(stack.udp_flow_count(), 2);
    assert_eq!(stack.stats().udp_dropped_limit, 1);
}

#[test]
fn dns_to_a_hard_coded_resolver_is_intercepted() {
    for v6 in [false, true] {
        let now = base();
        let mut stack = Stack::new(Config::default(), now).unwrap();
        // Any address, e.g. a resolver hard-coded in the app.
        let server = if v6 {
            SocketAddr::new("2001:4860:4860::8888".parse().unwrap(), 53)
        } else {
            SocketAddr::new(Ipv4Addr::new(8, 8, 8, 8).into(), 53)
        };
        let client = app(v6, 33333);
        stack.handle_packet(now, &udp_pkt(client, server, &query(0x1234)));
        let evs = drain_events(&mut stack);
        let [
            Event::DnsQuery {
                id,
                client: c,
                server: s,
                transport,
                message,
            },
        ] = evs.as_slice()
        else {
            panic!("{evs:?}")
        };
        assert_eq!((*c, *s, *transport), (client, server, DnsTransport::Udp));
        assert_eq!(message.as_ref(), query(0x1234).as_slice());
        assert_eq!(stack.udp_flow_count(), 0, "DNS makes no UDP flow");
        let mut answer = query(0x1234);
        answer[2] |= 0x80;
        stack.dns_reply(*id, &answer).unwrap();
        let out = drain_out(&mut stack, now);
        let [
            Out::Udp {
                src,
                dst: d,
                payload,
            },
        ] = out.as_slice()
        else {
            panic!("{out:?}")
        };
        assert_eq!(
            (*src, *d),
            (server, client),
            "answer from the address asked"
        );
        assert_eq!(payload, &answer);
        assert_eq!(
            stack.dns_reply(*id, &answer),
            Err(netstack::Error::UnknownId),
            "one answer per query"
        );
    }
}

#[test]
fn resolver_only_mode_ignores_other_port_53() {
    let now = base();
    let resolver: IpAddr = Ipv4Addr::new(100, 64, 0, 53).into();
    let config = Config {
        dns: DnsInterception::ResolversOnly,
        dns_resolvers: vec![resolver, DST6.into()],
        ..Config::default()
    };
    let mut stack = Stack::new(config, now).unwrap();
    stack.handle_packet(
        now,
        &udp_pkt(app(false, 1000), SocketAddr::new(resolver, 53), &query(1)),
    );
    stack.handle_packet(now, &udp_pkt(app(true, 1000), dst(true, 53), &query(2)));
    stack.handle_packet(
        now,
        &udp_pkt(
            app(false, 1001),
            SocketAddr::new(Ipv4Addr::new(9, 9, 9, 9).into(), 53),
            &query(3),
        ),
    );
    let evs = drain_events(&mut stack);
    assert!(matches!(&evs[0], Event::DnsQuery { server, .. } if server.ip() == resolver));
    assert!(matches!(&evs[1], Event::DnsQuery { server, .. } if *server == dst(true, 53)));
    assert!(
        matches!(&evs[2], Event::UdpOpened { dst, .. } if dst.port() == 53),
        "{evs:?}"
    );
    assert!(matches!(&evs[3], Event::UdpDatagram { .. }));
    assert_eq!(stack.stats().dns_queries, 2);
}

#[test]
fn dns_off_mode_and_junk_queries() {
    let now = base();
    let mut stack = Stack::new(
        Config {
            dns: DnsInterception::Off,
            ..Config::default()
        },
        now,
    )
    .unwrap();
    stack.handle_packet(now, &udp_pkt(app(false, 1), dst(false, 53), &query(1)));
    assert!(matches!(stack.poll_event(), Some(Event::UdpOpened { .. })));
    let mut stack = Stack::new(Config::default(), now).unwrap();
    stack.handle_packet(now, &udp_pkt(app(false, 1), dst(false, 53), b"short"));
    assert_eq!(stack.poll_event(), None);
    assert_eq!(stack.stats().dns_dropped, 1);
}

#[test]
fn dns_queries_expire() {
    let now = base();
    let mut stack = Stack::new(
        Config {
            dns_timeout: Duration::from_secs(5),
            ..Config::default()
        },
        now,
    )
    .unwrap();
    stack.handle_packet(now, &udp_pkt(app(false, 1), dst(false, 53), &query(1)));
    let Some(Event::DnsQuery { id, .. }) = stack.poll_event() else {
        panic!()
    };
    stack.handle_timeout(now + Duration::from_secs(6));
    assert_eq!(
        stack.dns_reply(id, &query(1)),
        Err(netstack::Error::UnknownId)
    );
    assert_eq!(stack.stats().dns_expired, 1);
}

#[test]
fn dns_over_tcp() {
    for v6 in [false, true] {
        let mut pair = Pair::new(Config {
            tcp_ack_delay: None,
            ..Config::default()
        });
        pair.auto_accept = false;
        let h = pair.app.connect(dst(v6, 53), 45000, 65536);
        assert!(pair.run_until(100, |p| p.app.sock(h).state()
            == smoltcp::socket::tcp::State::Established));
        assert!(
            !pair
                .events
                .iter()
                .any(|e| matches!(e, Event::TcpIncoming { .. })),
            "TCP/53 is the stack's own"
        );
        // Two pipelined queries, the second split across writes.
        let mut wire = Vec::new();
        for q in [query(7), query(8)] {
            wire.extend_from_slice(&(q.len() as u16).to_be_bytes());
            wire.extend_from_slice(&q);
        }
        pair.app.sock(h).send_slice(&wire[..40]).unwrap();
        pair.run_until(50, |_| false);
        pair.app.sock(h).send_slice(&wire[40..]).unwrap();
        let mut queries = Vec::new();
        pair.run_until(200, |p| {
            for e in p.events.drain(..) {
                if let Event::DnsQuery {
                    id,
                    transport: DnsTransport::Tcp,
                    message,
                    server,
                    ..
                } = e
                {
                    assert_eq!(server, dst(v6, 53));
                    queries.push((id, message));
                }
            }
            queries.len() == 2
        });
        assert_eq!(queries.len(), 2);
        assert_eq!(queries[0].1.as_ref(), query(7).as_slice());
        assert_eq!(queries[1].1.as_ref(), query(8).as_slice());
        // Answer out of order; each comes back length-prefixed.
        pair.stack
            .dns_reply(queries[1].0, b"answer-eight-xxxx")
            .unwrap();
        pair.stack
            .dns_reply(queries[0].0, b"answer-seven-xxxx")
            .unwrap();
        let mut got = Vec::new();
        pair.run_until(200, |p| {
            let mut b = [0u8; 128];
            while let Ok(n @ 1..) = p.app.sock(h).recv_slice(&mut b) {
                got.extend_from_slice(&b[..n]);
            }
            got.len() == 38
        });
        let mut want = vec![0, 17];
        want.extend_from_slice(b"answer-eight-xxxx");
        want.extend_from_slice(&[0, 17]);
        want.extend_from_slice(b"answer-seven-xxxx");
        assert_eq!(got, want);
        // The app closes; the stack closes its side and reclaims the flow.
        pair.app.sock(h).close();
        assert!(pair.run_until(500, |p| p.stack.tcp_flow_count() == 0));
        assert!(pair.run_until(500, |p| matches!(
            p.app.sock(h).state(),
            smoltcp::socket::tcp::State::TimeWait | smoltcp::socket::tcp::State::Closed
        )));
    }
}

#[test]
fn icmp_echo_both_families() {
    for v6 in [false, true] {
        let now = base();
        let mut stack = Stack::new(Config::default(), now).unwrap();
        let (a, d) = (app(v6, 0).ip(), dst(v6, 0).ip());
        stack.handle_packet(now, &echo_pkt(a, d, 0x77, 3, b"abcdefgh"));
        let Some(Event::IcmpEcho(req)) = stack.poll_event() else {
            panic!()
        };
        assert_eq!((req.src, req.dst, req.ident, req.seq), (a, d, 0x77, 3));
        assert_eq!(req.payload.as_ref(), b"abcdefgh");
        stack.icmp_echo_reply(&req).unwrap();
        let out = drain_out(&mut stack, now);
        let [
            Out::Icmp {
                src,
                dst: to,
                kind,
                code,
                header_rest,
                payload,
            },
        ] = out.as_slice()
        else {
            panic!("{out:?}")
        };
        assert_eq!((*src, *to), (d, a));
        assert_eq!((*kind, *code), (if v6 { 129 } else { 0 }, 0));
        assert_eq!(header_rest, &[0, 0x77, 0, 3]);
        assert_eq!(payload, b"abcdefgh");
        assert_eq!(stack.stats().icmp_echo_requests, 1);
    }
}
