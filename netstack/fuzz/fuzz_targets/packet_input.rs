//! The packet path into the stack (TESTPLAN §24): arbitrary bytes and templated
//! packets interleaved with flow operations and time steps. Nothing may panic;
//! every packet out must parse and fit the MTU; limits must hold.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use etherparse::{IpSlice, PacketBuilder, TcpHeader};
use libfuzzer_sys::fuzz_target;
use netstack::{Config, DnsQueryId, EchoRequest, Event, Refusal, Stack, TcpFlowId, UdpFlowId};

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.byte()?, self.byte()?]))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from(self.u16()?) << 16 | u32::from(self.u16()?))
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

#[derive(Default)]
struct Known {
    incoming: Vec<TcpFlowId>,
    tcp: Vec<TcpFlowId>,
    udp: Vec<UdpFlowId>,
    dns: Vec<DnsQueryId>,
    echo: Vec<EchoRequest>,
}

fn addr(v6: bool, host: u8, port: u16) -> SocketAddr {
    if v6 {
        SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(host))),
            port,
        )
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, host)), port)
    }
}

/// A well-formed packet whose fields come from the input, so the fuzzer reaches
/// the flow logic and not only the parsers.
fn templated(inp: &mut Input<'_>) -> Option<Vec<u8>> {
    let kind = inp.byte()?;
    let v6 = kind & 0x80 != 0;
    let src = addr(v6, 1 + (inp.byte()? & 3), 1000 + u16::from(inp.byte()? & 7));
    let dst = addr(
        v6,
        100 + (inp.byte()? & 3),
        [53, 80, 443, 5353][usize::from(inp.byte()? & 3)],
    );
    let step = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
        _ => return None,
    };
    let len = usize::from(inp.byte()?);
    let payload = inp.take(len).to_vec();
    let mut out = Vec::new();
    match kind & 3 {
        0 | 1 => {
            let mut h = TcpHeader::new(src.port(), dst.port(), inp.u32()?, inp.u16()?);
            let flags = inp.byte()?;
            h.syn = flags & 1 != 0;
            h.fin = flags & 2 != 0;
            h.rst = flags & 4 != 0;
            h.ack = flags & 8 != 0;
            h.acknowledgment_number = inp.u32()?;
            step.tcp_header(h).write(&mut out, &payload).ok()?;
        }
        2 => step
            .udp(src.port(), dst.port())
            .write(&mut out, &payload)
            .ok()?,
        _ if v6 => step
            .icmpv6_echo_request(1, 2)
            .write(&mut out, &payload)
            .ok()?,
        _ => step
            .icmpv4_echo_request(1, 2)
            .write(&mut out, &payload)
            .ok()?,
    }
    Some(out)
}

fn pick<T: Copy>(v: &[T], b: u8) -> Option<T> {
    (!v.is_empty()).then(|| v[usize::from(b) % v.len()])
}

/// A packet as read from a plain TUN, or (`sel`'s top bit) from one with checksum offload
/// that vouches for its TCP/UDP checksum: anything may then follow the parsers.
fn input(stack: &mut Stack, now: Instant, sel: u8, pkt: &[u8]) {
    if sel & 0x80 != 0 {
        stack.handle_vouched_packet(now, pkt);
    } else {
        stack.handle_packet(now, pkt);
    }
}

fn op(stack: &mut Stack, now: &mut Instant, known: &mut Known, inp: &mut Input<'_>) -> Option<()> {
    let code = inp.byte()?;
    let sel = inp.byte()?;
    match code % 10 {
        0 => {
            let len = usize::from(inp.u16()? % 2048);
            let pkt = inp.take(len).to_vec();
            input(stack, *now, sel, &pkt);
        }
        1 | 2 => {
            let pkt = templated(inp)?;
            input(stack, *now, sel, &pkt);
        }
        3 => {
            let id = pick(&known.incoming, sel)?;
            let _ = match sel % 4 {
                0 => stack.tcp_refuse(
                    id,
                    [Refusal::Reset, Refusal::HostUnreachable, Refusal::Silent]
                        [usize::from(sel / 4) % 3],
                ),
                _ => stack.tcp_accept(id),
            };
        }
        4 => {
            let id = pick(&known.tcp, sel)?;
            let len = usize::from(inp.u16()? % 9000);
            let _ = stack.tcp_send(id, &vec![sel; len]);
            let mut buf = [0u8; 3000];
            let _ = stack.tcp_recv(id, &mut buf);
        }
        5 => {
            let id = pick(&known.tcp, sel)?;
            let _ = if sel & 1 == 0 {
                stack.tcp_shutdown_write(id)
            } else {
                stack.tcp_abort(id)
            };
        }
        6 => {
            *now += Duration::from_millis(u64::from(inp.u16()?) * 10);
            stack.handle_timeout(*now);
        }
        7 => {
            let id = pick(&known.udp, sel)?;
            let len = usize::from(inp.u16()? % 2000);
            let _ = stack.udp_send_to_app(id, &vec![1; len]);
        }
        8 => {
            let id = pick(&known.dns, sel)?;
            let len = usize::from(inp.u16()? % 2000);
            let _ = stack.dns_reply(id, &vec![2; len]);
        }
        _ => {
            let req = known
                .echo
                .get(usize::from(sel) % known.echo.len().max(1))?
                .clone();
            let _ = stack.icmp_echo_reply(&req);
        }
    }
    Some(())
}

fn drain(stack: &mut Stack, now: Instant, known: &mut Known, mtu: usize) {
    while let Some(ev) = stack.poll_event() {
        match ev {
            Event::TcpIncoming { id, .. } => known.incoming.push(id),
            Event::TcpEstablished { id } => known.tcp.push(id),
            Event::UdpOpened { id, .. } => known.udp.push(id),
            Event::DnsQuery { id, .. } => known.dns.push(id),
            Event::IcmpEcho(req) => known.echo.push(req),
            _ => {}
        }
    }
    while let Some(pkt) = stack.poll_transmit(now) {
        assert!(pkt.len() <= mtu, "packet larger than the MTU");
        assert!(
            IpSlice::from_slice(&pkt).is_ok(),
            "stack emitted an unparseable packet"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let config = Config {
        tcp_rx_buffer: 4096,
        tcp_tx_buffer: 4096,
        max_tcp_flows: 8,
        max_udp_flows: 8,
        max_pending_dns: 8,
        max_queued_events: 64,
        tcp_checksum_offload: data.first().is_some_and(|b| b & 1 == 1),
        ..Config::default()
    };
    let (mtu, max_flows, max_mem) = (config.mtu, config.max_tcp_flows, config.max_buffer_memory);
    let mut now = Instant::now();
    let Ok(mut stack) = Stack::new(config, now) else {
        return;
    };
    let mut known = Known::default();
    let mut inp = Input(data);
    for _ in 0..64 {
        if op(&mut stack, &mut now, &mut known, &mut inp).is_none() {
            break;
        }
        drain(&mut stack, now, &mut known, mtu);
        assert!(stack.tcp_flow_count() <= max_flows);
        assert!(stack.buffer_memory() <= max_mem);
    }
    // Everything ends: after long enough, no flow is left.
    now += Duration::from_secs(4 * 3600);
    for _ in 0..8 {
        stack.handle_timeout(now);
        drain(&mut stack, now, &mut known, mtu);
        now += Duration::from_secs(600);
    }
    stack.handle_timeout(now);
    assert_eq!(stack.udp_flow_count(), 0, "UDP flows must expire");
});
