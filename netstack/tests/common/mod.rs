//! Test harness: hand-built app packets (etherparse), an independent checksum
//! check of everything the stack emits, and a second smoltcp instance acting as
//! the app's kernel, pumped back to back with the stack in simulated time.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use etherparse::{
    Icmpv4Slice, Icmpv6Slice, IpNumber, IpSlice, PacketBuilder, PacketBuilderStep, TcpHeader,
    TcpOptionElement, TcpSlice, UdpSlice,
};
use netstack::{Config, Event, Stack, TcpFlowId};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpCidr};

pub const APP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const APP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
pub const DST4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
pub const DST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);

pub fn app(v6: bool, port: u16) -> SocketAddr {
    if v6 {
        SocketAddr::new(APP6.into(), port)
    } else {
        SocketAddr::new(APP4.into(), port)
    }
}
pub fn dst(v6: bool, port: u16) -> SocketAddr {
    if v6 {
        SocketAddr::new(DST6.into(), port)
    } else {
        SocketAddr::new(DST4.into(), port)
    }
}

// ---------- independent checksum (plain RFC 1071 word loop) ----------

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for w in data.chunks(2) {
        let v = if w.len() == 2 {
            u16::from_be_bytes([w[0], w[1]])
        } else {
            u16::from(w[0]) << 8
        };
        acc += u32::from(v);
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut acc = 0;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            acc = sum16(&s.octets(), acc);
            acc = sum16(&d.octets(), acc);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            acc = sum16(&s.octets(), acc);
            acc = sum16(&d.octets(), acc);
        }
        _ => panic!("mixed families"),
    }
    sum16(&[0, proto], sum16(&(len as u32).to_be_bytes(), acc))
}

fn valid(acc: u32) -> bool {
    acc == 0xffff
}

/// Does what a TUN with checksum offload does with a TCP packet written with
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`, after checking that the stack left exactly the
/// pseudo-header sum in the field: sums the segment, field included, and stores the
/// complement.
pub fn complete_partial_tcp(pkt: &mut [u8]) {
    let ip = IpSlice::from_slice(pkt).expect("stack emitted unparseable IP");
    assert_eq!(ip.payload().ip_number, IpNumber::TCP);
    let (s, d) = (ip.source_addr(), ip.destination_addr());
    let l4 = pkt.len() - ip.payload().payload.len();
    let seg_len = pkt.len() - l4;
    let field = u16::from_be_bytes([pkt[l4 + 16], pkt[l4 + 17]]);
    assert_eq!(
        u32::from(field),
        pseudo(s, d, 6, seg_len),
        "not the pseudo-header sum"
    );
    let sum = !(sum16(&pkt[l4..], 0) as u16);
    pkt[l4 + 16..l4 + 18].copy_from_slice(&sum.to_be_bytes());
}

// ---------- packets the stack emitted ----------

/// A parsed packet from the stack, every checksum already verified.
#[derive(Debug, Clone)]
pub enum Out {
    Tcp(TcpOut),
    Udp {
        src: SocketAddr,
        dst: SocketAddr,
        payload: Vec<u8>,
    },
    Icmp {
        src: IpAddr,
        dst: IpAddr,
        kind: u8,
        code: u8,
        header_rest: [u8; 4],
        payload: Vec<u8>,
    },
}

#[derive(Debug, Clone)]
pub struct TcpOut {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: Option<u32>,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub window: u16,
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
    /// The timestamp option: (TSval, TSecr).
    pub ts: Option<(u32, u32)>,
    pub payload: Vec<u8>,
}

/// Parses a packet from the stack, panicking on any bad length or checksum.
pub fn parse_out(pkt: &[u8]) -> Out {
    let ip = IpSlice::from_slice(pkt).expect("stack emitted unparseable IP");
    assert!(!ip.is_fragmenting_payload(), "stack emitted a fragment");
    if let IpSlice::Ipv4(v4) = &ip {
        assert!(
            valid(sum16(v4.header().slice(), 0)),
            "bad IPv4 header checksum"
        );
        assert_eq!(v4.header().total_len() as usize, pkt.len());
    }
    let (s, d) = (ip.source_addr(), ip.destination_addr());
    let p = ip.payload().payload;
    match ip.payload().ip_number {
        IpNumber::TCP => {
            assert!(
                valid(sum16(p, pseudo(s, d, 6, p.len()))),
                "bad TCP checksum"
            );
            Out::Tcp(tcp_out(s, d, TcpSlice::from_slice(p).unwrap()))
        }
        IpNumber::UDP => {
            assert!(
                valid(sum16(p, pseudo(s, d, 17, p.len()))),
                "bad UDP checksum"
            );
            let u = UdpSlice::from_slice(p).unwrap();
            assert_eq!(u.length() as usize, p.len());
            Out::Udp {
                src: SocketAddr::new(s, u.source_port()),
                dst: SocketAddr::new(d, u.destination_port()),
                payload: u.payload().to_vec(),
            }
        }
        IpNumber::ICMP => {
            assert!(valid(sum16(p, 0)), "bad ICMP checksum");
            let i = Icmpv4Slice::from_slice(p).unwrap();
            icmp_out(s, d, i.type_u8(), i.code_u8(), i.bytes5to8(), i.payload())
        }
        IpNumber::IPV6_ICMP => {
            assert!(
                valid(sum16(p, pseudo(s, d, 58, p.len()))),
                "bad ICMPv6 checksum"
            );
            let i = Icmpv6Slice::from_slice(p).unwrap();
            icmp_out(s, d, i.type_u8(), i.code_u8(), i.bytes5to8(), i.payload())
        }
        other => panic!("unexpected protocol {other:?}"),
    }
}

fn icmp_out(src: IpAddr, dst: IpAddr, kind: u8, code: u8, rest: [u8; 4], payload: &[u8]) -> Out {
    Out::Icmp {
        src,
        dst,
        kind,
        code,
        header_rest: rest,
        payload: payload.to_vec(),
    }
}

fn tcp_out(s: IpAddr, d: IpAddr, t: TcpSlice<'_>) -> TcpOut {
    let mut mss = None;
    let mut wscale = None;
    let mut ts = None;
    for opt in t.options_iterator().flatten() {
        match opt {
            TcpOptionElement::MaximumSegmentSize(m) => mss = Some(m),
            TcpOptionElement::WindowScale(w) => wscale = Some(w),
            TcpOptionElement::Timestamp(val, ecr) => ts = Some((val, ecr)),
            _ => {}
        }
    }
    TcpOut {
        src: SocketAddr::new(s, t.source_port()),
        dst: SocketAddr::new(d, t.destination_port()),
        seq: t.sequence_number(),
        ack: t.ack().then(|| t.acknowledgment_number()),
        syn: t.syn(),
        fin: t.fin(),
        rst: t.rst(),
        window: t.window_size(),
        mss,
        wscale,
        ts,
        payload: t.payload().to_vec(),
    }
}

pub fn tcp_of(o: Out) -> TcpOut {
    match o {
        Out::Tcp(t) => t,
        other => panic!("expected TCP, got {other:?}"),
    }
}

// ---------- packets from the app ----------

fn ip_step(src: IpAddr, dst: IpAddr) -> PacketBuilderStep<etherparse::IpHeaders> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    }
}

/// TCP flags for [`tcp_pkt`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Flags {
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub psh: bool,
}
pub const SYN: Flags = Flags {
    syn: true,
    fin: false,
    rst: false,
    psh: false,
};
pub const NONE: Flags = Flags {
    syn: false,
    fin: false,
    rst: false,
    psh: false,
};
pub const FIN: Flags = Flags {
    syn: false,
    fin: true,
    rst: false,
    psh: false,
};
pub const RST: Flags = Flags {
    syn: false,
    fin: false,
    rst: true,
    psh: false,
};

#[allow(clippy::too_many_arguments)]
pub fn tcp_pkt(
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: Option<u32>,
    f: Flags,
    window: u16,
    opts: &[TcpOptionElement],
    payload: &[u8],
) -> Vec<u8> {
    let mut h = TcpHeader::new(src.port(), dst.port(), seq, window);
    h.syn = f.syn;
    h.fin = f.fin;
    h.rst = f.rst;
    h.psh = f.psh;
    if let Some(a) = ack {
        h.ack = true;
        h.acknowledgment_number = a;
    }
    h.set_options(opts).unwrap();
    let step = ip_step(src.ip(), dst.ip()).tcp_header(h);
    let mut out = Vec::with_capacity(step.size(payload.len()));
    step.write(&mut out, payload).unwrap();
    out
}

/// A SYN with MSS 1460 and window scale 7, like Linux sends.
pub fn syn(src: SocketAddr, dst: SocketAddr, isn: u32) -> Vec<u8> {
    let opts = [
        TcpOptionElement::MaximumSegmentSize(1460),
        TcpOptionElement::Noop,
        TcpOptionElement::WindowScale(7),
    ];
    tcp_pkt(src, dst, isn, None, SYN, 64240, &opts, &[])
}

pub fn udp_pkt(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let step = ip_step(src.ip(), dst.ip()).udp(src.port(), dst.port());
    let mut out = Vec::new();
    step.write(&mut out, payload).unwrap();
    out
}

pub fn echo_pkt(src: IpAddr, dst: IpAddr, ident: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if src.is_ipv4() {
        ip_step(src, dst)
            .icmpv4_echo_request(ident, seq)
            .write(&mut out, payload)
            .unwrap();
    } else {
        ip_step(src, dst)
            .icmpv6_echo_request(ident, seq)
            .write(&mut out, payload)
            .unwrap();
    }
    out
}

// ---------- driving the stack by hand ----------

pub fn base() -> Instant {
    Instant::now()
}

/// Every packet the stack emits now, parsed and verified.
pub fn drain_out(stack: &mut Stack, now: Instant) -> Vec<Out> {
    std::iter::from_fn(|| stack.poll_transmit(now))
        .map(|p| parse_out(&p))
        .collect()
}

pub fn drain_events(stack: &mut Stack) -> Vec<Event> {
    std::iter::from_fn(|| stack.poll_event()).collect()
}

/// Completes a handshake by hand: SYN → accept → SYN-ACK → ACK. Returns the flow
/// id, the stack's ISN + 1 (next seq from the stack) and the app's next seq.
pub fn handshake(
    stack: &mut Stack,
    now: Instant,
    src: SocketAddr,
    dst: SocketAddr,
    isn: u32,
) -> (TcpFlowId, u32, u32) {
    stack.handle_packet(now, &syn(src, dst, isn));
    let id = match drain_events(stack).as_slice() {
        [Event::TcpIncoming { id, src: s, dst: d }] if *s == src && *d == dst => *id,
        other => panic!("expected TcpIncoming, got {other:?}"),
    };
    stack.tcp_accept(id).unwrap();
    let out = drain_out(stack, now);
    assert_eq!(out.len(), 1, "{out:?}");
    let sa = tcp_of(out.into_iter().next().unwrap());
    assert!(sa.syn && sa.ack == Some(isn.wrapping_add(1)));
    let ack = tcp_pkt(
        src,
        dst,
        isn.wrapping_add(1),
        Some(sa.seq.wrapping_add(1)),
        NONE,
        502,
        &[],
        &[],
    );
    stack.handle_packet(now, &ack);
    let evs = drain_events(stack);
    assert!(evs.contains(&Event::TcpEstablished { id }), "{evs:?}");
    (id, sa.seq.wrapping_add(1), isn.wrapping_add(1))
}

// ---------- a second smoltcp as the app's kernel ----------

/// Deterministic test data: byte `i` of a stream.
pub fn pattern(seed: u8, i: u64) -> u8 {
    let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i >> 17) ^ u64::from(seed);
    (x >> 24) as u8
}

pub struct Queues {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    mtu: usize,
}

pub struct QRx(Vec<u8>);
pub struct QTx<'a>(&'a mut VecDeque<Vec<u8>>);

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
        c.max_transmission_unit = self.mtu;
        c
    }
}

/// The app host: its own smoltcp Interface (checksums verified on receive).
pub struct AppHost {
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    pub dev: Queues,
}

impl AppHost {
    pub fn new(mtu: usize) -> Self {
        let mut dev = Queues {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            mtu,
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
            .add_default_ipv4_route(Ipv4Addr::new(192, 0, 2, 254))
            .unwrap();
        iface
            .routes_mut()
            .add_default_ipv6_route(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0xfe))
            .unwrap();
        Self {
            iface,
            sockets: SocketSet::new(Vec::new()),
            dev,
        }
    }

    /// Opens a connection from the app's address to `to`.
    pub fn connect(&mut self, to: SocketAddr, local_port: u16, buf: usize) -> SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; buf]),
            tcp::SocketBuffer::new(vec![0; buf]),
        );
        s.set_ack_delay(None);
        s.set_nagle_enabled(false);
        s.connect(self.iface.context(), to, local_port).unwrap();
        self.sockets.add(s)
    }

    pub fn sock(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket<'static>>(h)
    }

    fn poll(&mut self, now: smoltcp::time::Instant) {
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        while self
            .iface
            .poll_egress(now, &mut self.dev, &mut self.sockets)
            == smoltcp::iface::PollResult::SocketStateChanged
        {}
    }
}

/// The stack and an app host wired back to back, in simulated time.
pub struct Pair {
    pub stack: Stack,
    pub app: AppHost,
    pub base: Instant,
    pub now: Instant,
    /// Accept every `TcpIncoming` automatically.
    pub auto_accept: bool,
    /// Verify every packet in both directions with [`parse_out`].
    pub check: bool,
    pub events: Vec<Event>,
    pub packets_to_app: u64,
    pub packets_to_stack: u64,
    /// Wall time spent inside `Stack` calls made by [`Pair::step`] (benchmarks).
    pub stack_time: Duration,
    /// Hand every packet from the stack back through `Stack::recycle` as a buffer of the
    /// same length filled with garbage, with `RECYCLED_SPARE` bytes of spare capacity.
    pub recycle_garbage: bool,
    /// Packets to the app built in such a buffer (told apart by their capacity).
    pub packets_in_recycled: u64,
}

/// Spare capacity that marks a recycled garbage buffer (no fresh packet buffer has it).
const RECYCLED_SPARE: usize = 4093;

impl Pair {
    pub fn new(config: Config) -> Self {
        let base = Instant::now();
        let mtu = config.mtu;
        Self {
            stack: Stack::new(config, base).unwrap(),
            app: AppHost::new(mtu),
            base,
            now: base,
            auto_accept: true,
            check: true,
            events: Vec::new(),
            packets_to_app: 0,
            packets_to_stack: 0,
            stack_time: Duration::ZERO,
            recycle_garbage: false,
            packets_in_recycled: 0,
        }
    }

    fn smol_now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros((self.now - self.base).as_micros() as i64)
    }

    /// One exchange in both directions; `true` if any packet moved.
    pub fn step(&mut self) -> bool {
        let mut moved = false;
        self.app.poll(self.smol_now());
        let started = Instant::now();
        while let Some(p) = self.app.dev.tx.pop_front() {
            if self.check {
                parse_out(&p);
            }
            self.stack.handle_packet(self.now, &p);
            self.packets_to_stack += 1;
            moved = true;
        }
        while let Some(ev) = self.stack.poll_event() {
            if let (true, Event::TcpIncoming { id, .. }) = (self.auto_accept, &ev) {
                self.stack.tcp_accept(*id).unwrap();
            }
            self.events.push(ev);
        }
        while let Some(p) = self.stack.poll_transmit(self.now) {
            if self.check {
                parse_out(&p);
            }
            if self.recycle_garbage {
                if p.capacity() == p.len() + RECYCLED_SPARE {
                    self.packets_in_recycled += 1;
                }
                let mut garbage = Vec::with_capacity(p.len() + RECYCLED_SPARE);
                garbage.resize(p.len(), 0xa5);
                self.stack.recycle(garbage);
            }
            self.app.dev.rx.push_back(p);
            self.packets_to_app += 1;
            moved = true;
        }
        self.stack_time += started.elapsed();
        moved
    }

    /// Advances simulated time by `d` and runs due timers.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        if self.stack.poll_timeout().is_some_and(|t| t <= self.now) {
            self.stack.handle_timeout(self.now);
        }
    }

    /// Steps (advancing 1 ms when idle) until `done` or `max_steps`.
    pub fn run_until(&mut self, max_steps: usize, mut done: impl FnMut(&mut Self) -> bool) -> bool {
        for _ in 0..max_steps {
            if done(self) {
                return true;
            }
            if !self.step() {
                self.advance(Duration::from_millis(1));
            }
        }
        done(self)
    }

    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Connects the app to `to`, runs the handshake, returns (app socket, flow id).
    pub fn open(
        &mut self,
        to: SocketAddr,
        local_port: u16,
        buf: usize,
    ) -> (SocketHandle, TcpFlowId) {
        let h = self.app.connect(to, local_port, buf);
        let mut id = None;
        let ok = self.run_until(1000, |p| {
            for ev in &p.events {
                if let Event::TcpEstablished { id: i } = ev {
                    id = Some(*i);
                }
            }
            id.is_some() && p.app.sock(h).state() == tcp::State::Established
        });
        assert!(ok, "handshake did not complete: {:?}", self.events);
        self.events.clear();
        (h, id.unwrap())
    }
}
