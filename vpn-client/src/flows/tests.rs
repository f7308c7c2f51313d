//! A real netstack and a real proto session (proto's in-memory `Pair`), joined by the
//! bridge. An app host (a second smoltcp) opens connections through the stack; the exit
//! side of the `Pair` plays the destinations: echo (port 7), discard (9), chargen (19),
//! refused (1), unreachable (2), UDP echo, a DNS server and ping.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use etherparse::{IpSlice, PacketBuilder};
use proto::sim::{App, Pair, PairConfig, pattern_byte};
use proto::{Connection, Event, Read, ResetCode, StreamId};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpCidr};

use super::*;

const APP4: Ipv4Addr = Ipv4Addr::new(172, 19, 0, 1);
const APP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x4854, 0, 0, 0, 0, 0, 1);
const DST4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const DST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);

// ---------- the app host: smoltcp over two queues ----------

pub(crate) struct Queues {
    pub(crate) rx: VecDeque<Vec<u8>>,
    pub(crate) tx: VecDeque<Vec<u8>>,
}
pub(crate) struct QRx(Vec<u8>);
pub(crate) struct QTx<'a>(&'a mut VecDeque<Vec<u8>>);
impl phy::RxToken for QRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}
impl phy::TxToken for QTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0; len];
        let r = f(&mut b);
        self.0.push_back(b);
        r
    }
}
impl phy::Device for Queues {
    type RxToken<'a> = QRx;
    type TxToken<'a> = QTx<'a>;
    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(QRx, QTx<'_>)> {
        let b = self.rx.pop_front()?;
        Some((QRx(b), QTx(&mut self.tx)))
    }
    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<QTx<'_>> {
        Some(QTx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = 1500;
        c
    }
}

/// One app connection: sends `send` pattern bytes then FIN, verifies what comes back
/// against `expect` (a pattern seed), records how it ended.
pub(crate) struct AppConn {
    handle: SocketHandle,
    send: u64,
    pub(crate) sent: u64,
    pub(crate) recv: u64,
    expect_seed: u32,
    pub(crate) corrupt: bool,
    reading: bool,
    closed: bool,
}

pub(crate) struct AppHost {
    pub(crate) iface: Interface,
    pub(crate) sockets: SocketSet<'static>,
    pub(crate) dev: Queues,
    pub(crate) conns: Vec<AppConn>,
    /// Non-TCP packets the stack sent to the app (ICMP errors, UDP, echo replies).
    other: Vec<Vec<u8>>,
    next_port: u16,
}

impl AppHost {
    pub(crate) fn new() -> Self {
        let mut dev = Queues {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
        };
        let mut cfg = IfaceConfig::new(HardwareAddress::Ip);
        cfg.random_seed = 7;
        let mut iface = Interface::new(cfg, &mut dev, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(APP4.into(), 24)).unwrap();
            a.push(IpCidr::new(APP6.into(), 64)).unwrap();
        });
        iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Addr::new(172, 19, 0, 2))
            .unwrap();
        iface
            .routes_mut()
            .add_default_ipv6_route(Ipv6Addr::new(0xfd00, 0x4854, 0, 0, 0, 0, 0, 2))
            .unwrap();
        AppHost {
            iface,
            sockets: SocketSet::new(Vec::new()),
            dev,
            conns: Vec::new(),
            other: Vec::new(),
            next_port: 40000,
        }
    }

    pub(crate) fn connect(&mut self, to: SocketAddr, send: u64, expect_seed: u32) -> usize {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 64 * 1024]),
            tcp::SocketBuffer::new(vec![0; 64 * 1024]),
        );
        s.set_ack_delay(None);
        self.next_port += 1;
        s.connect(self.iface.context(), to, self.next_port).unwrap();
        let handle = self.sockets.add(s);
        self.conns.push(AppConn {
            handle,
            send,
            sent: 0,
            recv: 0,
            expect_seed,
            corrupt: false,
            reading: true,
            closed: false,
        });
        self.conns.len() - 1
    }

    fn sock(&self, i: usize) -> &tcp::Socket<'static> {
        self.sockets
            .get::<tcp::Socket<'static>>(self.conns[i].handle)
    }

    /// Write and read every connection as far as the buffers allow.
    pub(crate) fn work(&mut self) {
        for c in &mut self.conns {
            let s = self.sockets.get_mut::<tcp::Socket<'static>>(c.handle);
            while c.sent < c.send && s.can_send() {
                let n = s
                    .send(|buf| {
                        let n = buf.len().min((c.send - c.sent) as usize);
                        for (i, b) in buf[..n].iter_mut().enumerate() {
                            *b = pattern_byte(0, c.sent + i as u64);
                        }
                        (n, n)
                    })
                    .unwrap();
                c.sent += n as u64;
                if n == 0 {
                    break;
                }
            }
            if c.sent == c.send && !c.closed && s.may_send() {
                s.close();
                c.closed = true;
            }
            while c.reading && s.can_recv() {
                let (seed, at) = (c.expect_seed, c.recv);
                let (n, ok) = s
                    .recv(|buf| {
                        let ok = buf
                            .iter()
                            .enumerate()
                            .all(|(i, b)| *b == pattern_byte(seed, at + i as u64));
                        (buf.len(), (buf.len(), ok))
                    })
                    .unwrap();
                c.recv += n as u64;
                c.corrupt |= !ok;
            }
        }
    }
}

// ---------- the exit side: destinations ----------

#[derive(Default)]
struct ExitStream {
    port: u16,
    echo: VecDeque<Bytes>,
    fin_read: bool,
    fin_sent: bool,
    written: u64,
    read: u64,
}

#[derive(Default)]
struct Destinations {
    streams: HashMap<StreamId, ExitStream>,
    opened: u64,
    resets_seen: u64,
    /// Discard (port 9) reads only while this is set.
    discard_reading: bool,
    /// Bytes chargen (port 19) sends before FIN.
    chargen: u64,
}

impl Destinations {
    fn serve(&mut self, now: Instant, exit: &mut Connection) {
        for (&id, s) in &mut self.streams {
            if !exit.has_stream(id) {
                continue;
            }
            if s.port != 9 || self.discard_reading {
                Self::read(now, exit, id, s);
            }
            match s.port {
                7 => {
                    while let Some(front) = s.echo.front_mut() {
                        let n = exit.stream_write(id, front).unwrap_or(0);
                        s.written += n as u64;
                        bytes::Buf::advance(front, n);
                        if !front.is_empty() {
                            break;
                        }
                        s.echo.pop_front();
                    }
                    if s.echo.is_empty() && s.fin_read && !s.fin_sent {
                        s.fin_sent = exit.stream_finish(id).is_ok();
                    }
                }
                19 => {
                    while s.written < self.chargen {
                        let len = (self.chargen - s.written).min(16 * 1024) as usize;
                        let chunk: Vec<u8> = (0..len)
                            .map(|i| pattern_byte(19, s.written + i as u64))
                            .collect();
                        let n = exit.stream_write(id, &chunk).unwrap_or(0);
                        s.written += n as u64;
                        if n < len {
                            break;
                        }
                    }
                    if s.written == self.chargen && !s.fin_sent {
                        s.fin_sent = exit.stream_finish(id).is_ok();
                    }
                }
                _ => {}
            }
        }
    }

    fn read(now: Instant, exit: &mut Connection, id: StreamId, s: &mut ExitStream) {
        loop {
            match exit.stream_read(now, id, usize::MAX) {
                Ok(Read::Data(d)) => {
                    s.read += d.len() as u64;
                    if s.port == 7 {
                        s.echo.push_back(d);
                    }
                }
                Ok(Read::Fin) => {
                    s.fin_read = true;
                    return;
                }
                _ => return,
            }
        }
    }

    fn event(&mut self, conn: &mut Connection, event: Event) {
        match event {
            Event::StreamOpened { id, dest, .. } => {
                self.opened += 1;
                let port = match dest {
                    proto::Destination::Addr(a) => a.port(),
                    proto::Destination::Domain(_, p) => p,
                };
                match port {
                    1 => conn.reset_stream(id, ResetCode::ConnectionRefused).unwrap(),
                    2 => conn.reset_stream(id, ResetCode::Unreachable).unwrap(),
                    53 | 7 | 9 | 19 => {
                        // UDP streams need no accept; TCP ones do.
                        let _ = conn.accept_stream(id);
                        self.streams.insert(
                            id,
                            ExitStream {
                                port,
                                ..ExitStream::default()
                            },
                        );
                    }
                    _ => conn.reset_stream(id, ResetCode::PolicyRefused).unwrap(),
                }
            }
            Event::Datagram { id, data } => {
                conn.send_datagram(id, data).unwrap();
            }
            Event::DnsQuery { id, msg } => {
                let mut answer = msg.to_vec();
                answer[2] |= 0x80; // QR: a response
                conn.send_dns_response(id, answer.into()).unwrap();
            }
            Event::EchoRequest { id, data, .. } => {
                conn.send_echo_reply(id, data).unwrap();
            }
            Event::StreamReset { .. } => self.resets_seen += 1,
            _ => {}
        }
    }
}

// ---------- the world: app host ⇄ stack ⇄ bridge ⇄ client connection ----------

struct World {
    stack: Stack,
    bridge: Bridge,
    app: AppHost,
    dest: Destinations,
    base: Instant,
    session_events: Vec<Event>,
}

impl World {
    fn new(base: Instant, config: BridgeConfig) -> Self {
        let net = netstack::Config {
            tcp_ack_delay: None,
            ..netstack::Config::default()
        };
        World {
            stack: Stack::new(net, base).unwrap(),
            bridge: Bridge::new(config),
            app: AppHost::new(),
            dest: Destinations {
                discard_reading: true,
                ..Destinations::default()
            },
            base,
            session_events: Vec::new(),
        }
    }

    fn smol(&self, now: Instant) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros((now - self.base).as_micros() as i64)
    }

    /// Exchange packets between the app host and the stack until both are quiet.
    fn exchange(&mut self, now: Instant, client: &mut Connection) {
        for _ in 0..1000 {
            let t = self.smol(now);
            self.app.work();
            self.app
                .iface
                .poll(t, &mut self.app.dev, &mut self.app.sockets);
            let mut moved = false;
            while let Some(p) = self.app.dev.tx.pop_front() {
                self.stack.handle_packet(now, &p);
                moved = true;
            }
            if self.stack.poll_timeout().is_some_and(|x| x <= now) {
                self.stack.handle_timeout(now);
            }
            let events = self.bridge.run(now, &mut self.stack, Some(client));
            self.session_events.extend(events);
            while let Some(p) = self.stack.poll_transmit(now) {
                let is_tcp = IpSlice::from_slice(&p)
                    .is_ok_and(|ip| ip.payload().ip_number == etherparse::IpNumber::TCP);
                if !is_tcp {
                    self.app.other.push(p.clone());
                }
                self.app.dev.rx.push_back(p);
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }
}

impl App for World {
    fn poll(&mut self, now: Instant, client: &mut Connection, exit: &mut Connection) {
        self.dest.serve(now, exit);
        self.exchange(now, client);
    }

    fn client_event(&mut self, now: Instant, conn: &mut Connection, event: Event) {
        let rest = self
            .bridge
            .on_proto_event(now, &mut self.stack, conn, event);
        self.session_events.extend(rest);
        self.exchange(now, conn);
    }

    fn exit_event(&mut self, now: Instant, conn: &mut Connection, event: Event) {
        self.dest.event(conn, event);
        self.dest.serve(now, conn);
    }
}

fn setup(config: BridgeConfig) -> (Pair, World) {
    let mut pair = Pair::new(PairConfig::default()).unwrap();
    pair.idle(Duration::from_millis(50)).unwrap();
    let world = World::new(pair.now, config);
    (pair, world)
}

fn run(pair: &mut Pair, world: &mut World, goal: impl Fn(&World) -> bool) {
    let r = pair.run(world, Duration::from_secs(120), goal);
    assert!(r.is_ok(), "{r:?}; harness errors {:?}", pair.stats.errors);
}

fn to4(port: u16) -> SocketAddr {
    SocketAddr::new(DST4.into(), port)
}

#[test]
fn tcp_echo_through_the_tunnel_both_ways_with_fin() {
    let (mut pair, mut w) = setup(BridgeConfig::default());
    let len = 3 * 1024 * 1024 + 17;
    let c = w.app.connect(to4(7), len, 0);
    run(&mut pair, &mut w, |w| {
        w.app.conns[c].recv == len && w.app.sock(c).state() == tcp::State::TimeWait
            || w.app.sock(c).state() == tcp::State::Closed
    });
    let conn = &w.app.conns[c];
    assert_eq!((conn.recv, conn.corrupt), (len, false));
    assert_eq!(w.dest.opened, 1);
    assert_eq!(
        w.dest.resets_seen, 0,
        "a clean close must not reset the stream"
    );
    let st = w.bridge.stats();
    assert_eq!((st.bytes_up, st.bytes_down), (len, len));
    pair.run(&mut w, Duration::from_secs(1), |_| false).ok();
    assert_eq!(w.bridge.counts().tcp, 0, "the flow is forgotten");
    assert_eq!(pair.client.stream_count(), 0, "the stream is gone");
}

#[test]
fn many_parallel_flows_download() {
    let (mut pair, mut w) = setup(BridgeConfig::default());
    w.dest.chargen = 512 * 1024;
    let conns: Vec<usize> = (0..20).map(|_| w.app.connect(to4(19), 0, 19)).collect();
    run(&mut pair, &mut w, |w| {
        w.app.conns.iter().all(|c| c.recv == 512 * 1024)
    });
    assert!(conns.iter().all(|&c| !w.app.conns[c].corrupt));
    assert_eq!(w.bridge.stats().tcp_opened, 20);
}

fn icmp_kinds(w: &World) -> Vec<(u8, u8)> {
    w.app
        .other
        .iter()
        .filter_map(|p| {
            let ip = IpSlice::from_slice(p).ok()?;
            let b = ip.payload().payload;
            Some((*b.first()?, *b.get(1)?))
        })
        .collect()
}

#[test]
fn exit_refusals_reach_the_app_as_rst_or_icmp() {
    let (mut pair, mut w) = setup(BridgeConfig::default());
    let refused = w.app.connect(to4(1), 10, 0);
    let unreachable = w.app.connect(to4(2), 10, 0);
    let policy = w.app.connect(to4(25), 10, 0);
    run(&mut pair, &mut w, |w| w.bridge.stats().tcp_refused == 3);
    pair.idle(Duration::from_millis(50)).unwrap();
    // RST → smoltcp's socket is closed; ICMP errors are not processed by smoltcp's TCP,
    // so check the packets themselves.
    assert_eq!(w.app.sock(refused).state(), tcp::State::Closed);
    let kinds = icmp_kinds(&w);
    assert!(kinds.contains(&(3, 1)), "host unreachable: {kinds:?}");
    assert!(kinds.contains(&(3, 13)), "prohibited: {kinds:?}");
    let _ = (unreachable, policy);
    assert_eq!(w.bridge.counts().tcp, 0);
}

#[test]
fn ipv6_is_refused_inside_the_tunnel_when_the_exit_has_none() {
    let cfg = BridgeConfig {
        exit_has_ipv6: false,
        ..BridgeConfig::default()
    };
    let (mut pair, mut w) = setup(cfg);
    let c = w.app.connect(SocketAddr::new(DST6.into(), 7), 10, 0);
    run(&mut pair, &mut w, |w| w.bridge.stats().ipv6_refused == 1);
    pair.idle(Duration::from_millis(50)).unwrap();
    assert_eq!(w.dest.opened, 0, "nothing may reach the exit");
    assert!(icmp_kinds(&w).contains(&(1, 0)), "ICMPv6 no route");
    assert_ne!(w.app.sock(c).state(), tcp::State::Established);
    // IPv4 still works.
    let c4 = w.app.connect(to4(7), 1000, 0);
    run(&mut pair, &mut w, |w| w.app.conns[c4].recv == 1000);
}

#[test]
fn ipv6_is_tunnelled_when_the_exit_has_it() {
    let (mut pair, mut w) = setup(BridgeConfig::default());
    let c = w.app.connect(SocketAddr::new(DST6.into(), 7), 100_000, 0);
    run(&mut pair, &mut w, |w| w.app.conns[c].recv == 100_000);
    assert!(!w.app.conns[c].corrupt);
}

#[test]
fn a_slow_destination_closes_the_apps_window() {
    let (mut pair, mut w) = setup(BridgeConfig::default());
    w.dest.discard_reading = false;
    let len = 8 * 1024 * 1024;
    let c = w.app.connect(to4(9), len, 0);
    run(&mut pair, &mut w, |w| w.app.conns[c].sent > 0);
    pair.idle(Duration::from_secs(2)).unwrap();
    pair.run(&mut w, Duration::from_secs(2), |_| false).ok();
    let stalled = w.app.conns[c].sent;
    // What left the app is bounded by the stream window (256 KiB), netstack's receive
    // buffer (128 KiB), one chunk held here and the app's own send buffer (64 KiB).
    assert!(
        stalled < 600 * 1024,
        "app sent {stalled} bytes into a stalled stream"
    );
    assert!(w.bridge.stats().bytes_up <= 256 * 1024);
    w.dest.discard_reading = true;
    run(&mut pair, &mut w, |w| {
        w.dest.streams.values().any(|s| s.fin_read && s.read == len)
    });
}

#[test]
fn a_slow_app_stops_the_exit() {
    let (mut pair, mut w) = setup(BridgeConfig::default());
    let len = 8 * 1024 * 1024;
    w.dest.chargen = len;
    let c = w.app.connect(to4(19), 0, 19);
    w.app.conns[c].reading = false;
    run(&mut pair, &mut w, |w| {
        w.dest.streams.values().any(|s| s.written > 0)
    });
    pair.run(&mut w, Duration::from_secs(2), |_| false).ok();
    let written: u64 = w.dest.streams.values().map(|s| s.written).sum();
    assert!(
        written < 1024 * 1024,
        "exit wrote {written} bytes to an app that does not read"
    );
    assert!(pair.client.buffered_bytes() <= 256 * 1024);
    // `status` names the flow whose app stopped reading, and what it holds.
    let paused = w
        .bridge
        .paused(&pair.client, pair.now + proto::PAUSED_AFTER);
    assert_eq!(paused.len(), 1, "{paused:?}");
    assert_eq!(paused[0].dst, to4(19).to_string());
    assert!(paused[0].app.starts_with("172.19.0.1:"), "{paused:?}");
    assert!(paused[0].held_bytes > 0, "{paused:?}");
    assert!(paused[0].credit_bytes >= paused[0].held_bytes, "{paused:?}");
    w.app.conns[c].reading = true;
    run(&mut pair, &mut w, |w| w.app.conns[c].recv == len);
    assert!(!w.app.conns[c].corrupt);
    let later = pair.now + proto::PAUSED_AFTER;
    assert!(w.bridge.paused(&pair.client, later).is_empty());
}

fn udp_packet(dst: SocketAddr, sport: u16, payload: &[u8]) -> Vec<u8> {
    let b = match dst.ip() {
        IpAddr::V4(d) => PacketBuilder::ipv4(APP4.octets(), d.octets(), 64),
        IpAddr::V6(d) => PacketBuilder::ipv6(APP6.octets(), d.octets(), 64),
    };
    let b = b.udp(sport, dst.port());
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

fn udp_payloads_to_app(w: &World) -> Vec<(SocketAddr, Vec<u8>)> {
    w.app
        .other
        .iter()
        .filter_map(|p| {
            let ip = IpSlice::from_slice(p).ok()?;
            let u = etherparse::UdpSlice::from_slice(ip.payload().payload).ok()?;
            Some((
                SocketAddr::new(ip.source_addr(), u.source_port()),
                u.payload().to_vec(),
            ))
        })
        .collect()
}

#[test]
fn udp_dns_and_ping_round_trip() {
    let (mut pair, mut w) = setup(BridgeConfig::default());
    let now = pair.now;
    w.stack
        .handle_packet(now, &udp_packet(to4(7), 5000, b"hello udp"));
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    query.extend_from_slice(&[3, b'f', b'o', b'o', 0, 0, 1, 0, 1]);
    let resolver = SocketAddr::new(Ipv4Addr::new(8, 8, 8, 8).into(), 53);
    w.stack
        .handle_packet(now, &udp_packet(resolver, 5001, &query));
    let ping = {
        let mut out = Vec::new();
        PacketBuilder::ipv4(APP4.octets(), DST4.octets(), 64)
            .icmpv4_echo_request(9, 1)
            .write(&mut out, b"ping!")
            .unwrap();
        out
    };
    w.stack.handle_packet(now, &ping);
    run(&mut pair, &mut w, |w| {
        let s = w.bridge.stats();
        s.dns_answers == 1 && s.echo_replies == 1 && udp_payloads_to_app(w).len() >= 2
    });
    let got = udp_payloads_to_app(&w);
    assert!(got.contains(&(to4(7), b"hello udp".to_vec())), "{got:?}");
    let dns = got
        .iter()
        .find(|(from, _)| *from == resolver)
        .expect("DNS answer");
    assert_eq!(dns.1[..2], [0x12, 0x34]);
    assert_eq!(dns.1[2] & 0x80, 0x80, "the exit's answer, not the query");
    assert!(icmp_kinds(&w).contains(&(0, 0)), "echo reply");
    assert_eq!(w.bridge.counts().udp, 1);
}

#[test]
fn reset_all_ends_every_flow_and_no_session_refuses_new_ones() {
    let (mut pair, mut w) = setup(BridgeConfig::default());
    w.dest.chargen = 64 * 1024 * 1024;
    let c = w.app.connect(to4(19), 0, 19);
    run(&mut pair, &mut w, |w| w.app.conns[c].recv > 100_000);
    w.bridge.reset_all(&mut w.stack);
    assert_eq!(w.bridge.counts(), FlowCounts::default());
    // Without a session, new flows are refused at once.
    let now = pair.now;
    let d = w.app.connect(to4(7), 10, 0);
    for _ in 0..20 {
        let t = w.smol(now);
        w.app.work();
        w.app.iface.poll(t, &mut w.app.dev, &mut w.app.sockets);
        while let Some(p) = w.app.dev.tx.pop_front() {
            w.stack.handle_packet(now, &p);
        }
        w.bridge.run(now, &mut w.stack, None);
        while let Some(p) = w.stack.poll_transmit(now) {
            w.app.dev.rx.push_back(p);
        }
    }
    assert_eq!(
        w.app.sock(c).state(),
        tcp::State::Closed,
        "reset by reset_all"
    );
    assert_eq!(w.app.sock(d).state(), tcp::State::Closed, "refused");
    assert_eq!(w.bridge.stats().tcp_refused, 1);
}
