//! The [`Stack`]: one smoltcp `Interface`, sharded socket sets, flow tables.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config as IfaceConfig, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::DeviceCapabilities;
use smoltcp::wire::{HardwareAddress, IpCidr};

use crate::buffer::{FlowBuffers, Spares};
use crate::config::Config;
use crate::device::{self, QueueDevice};
use crate::dns::DnsTable;
use crate::error::Error;
use crate::event::{EchoRequest, Event};
use crate::packet::Verify;
use crate::packet::{self, Drop, FlowKey, Inbound};
use crate::stats::Stats;
use crate::tcp::TcpTable;
use crate::udp::UdpTable;
use crate::{build, config};

/// The interface's own addresses. Default routes point at them, which is what
/// smoltcp's AnyIP needs to accept every other destination. Both are from
/// special-purpose blocks (RFC 7600 dummy address, RFC 6666 discard prefix) that no
/// app has a reason to reach.
const IFACE_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 0, 8);
const IFACE_V6: Ipv6Addr = Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 1);

/// Bound on egress rounds per shard poll; smoltcp emits one segment per socket per
/// round. A shard that hits it stays dirty and continues at the next flush.
const MAX_EGRESS_ROUNDS: usize = 4096;
/// Period of the idle/expiry scan over all flow tables.
pub(crate) const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Most shards a stack has (the width of [`ShardSet`]).
const MAX_SHARDS: usize = 256;

/// One slice of the TCP sockets. smoltcp finds the socket for a segment by a
/// linear scan, so sockets are spread over shards by 4-tuple hash and each shard
/// is polled with only its own sockets.
pub(crate) struct Shard {
    /// Its TCP sockets' buffers point into `buffers`: add and remove TCP sockets
    /// only with `Shard::add_tcp_socket` / `Shard::remove_socket` (in `buffer.rs`).
    pub sockets: SocketSet<'static>,
    pub buffers: HashMap<SocketHandle, FlowBuffers>,
    pub rx: VecDeque<Vec<u8>>,
    pub flows: Vec<crate::event::TcpFlowId>,
    /// When smoltcp wants this shard polled next; mirrored in [`Stack::timers`].
    pub poll_at: Option<Instant>,
}

/// A set of shard indices (< [`MAX_SHARDS`]) as a bitmap. Every output call flushes the
/// shards that need a poll; finding them is four words, not a walk over 256 shards.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ShardSet([u64; MAX_SHARDS / 64]);

impl ShardSet {
    pub(crate) fn insert(&mut self, s: usize) {
        self.0[s / 64] |= 1 << (s % 64);
    }

    pub(crate) fn remove(&mut self, s: usize) {
        self.0[s / 64] &= !(1 << (s % 64));
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// Removes and returns the lowest index.
    fn pop(&mut self) -> Option<usize> {
        for (i, w) in self.0.iter_mut().enumerate() {
            if *w != 0 {
                let bit = w.trailing_zeros() as usize;
                *w &= *w - 1;
                return Some(i * 64 + bit);
            }
        }
        None
    }
}

/// Userspace TCP/IP termination for every packet a TUN device hands over.
///
/// Sans-IO: it never reads the clock, touches a socket or spawns a task. The
/// caller owns the TUN and the clock and drives it in this order:
///
/// 1. [`Stack::new`] once.
/// 2. For every packet read from the TUN: [`handle_packet(now, &pkt)`](Stack::handle_packet).
///    When the instant from [`poll_timeout`](Stack::poll_timeout) passes:
///    [`handle_timeout(now)`](Stack::handle_timeout).
/// 3. Drain [`poll_event`](Stack::poll_event) until `None`, reacting with the flow
///    methods (`tcp_accept`/`tcp_refuse`, `tcp_recv`, `tcp_send`, `udp_send_to_app`,
///    `dns_reply`, `icmp_echo_reply`, ...). Flow methods may be called at any time,
///    e.g. when tunnel data arrives.
/// 4. Drain [`poll_transmit(now)`](Stack::poll_transmit) until `None`, writing each
///    packet to the TUN.
/// 5. Re-arm one timer from [`poll_timeout`](Stack::poll_timeout), then wait for the
///    TUN, the tunnel or the timer, and go to 2.
///
/// Work is batched: inputs and flow methods only queue; smoltcp runs when an output
/// method is called. Every output method brings the stack up to date first, so any
/// order of output calls is correct.
pub struct Stack {
    pub(crate) config: Config,
    pub(crate) iface: Interface,
    pub(crate) caps: DeviceCapabilities,
    pub(crate) base: Instant,
    pub(crate) now: Instant,
    pub(crate) shards: Vec<Shard>,
    /// Shards with queued input or socket changes, polled at the next flush.
    pub(crate) dirty: ShardSet,
    /// Every shard's `poll_at`, ordered: the next timer without a scan of the shards.
    timers: BTreeSet<(Instant, usize)>,
    pub(crate) tx: VecDeque<Vec<u8>>,
    pub(crate) pool: RefCell<device::Pool>,
    pub(crate) events: VecDeque<Event>,
    pub(crate) stats: Stats,
    pub(crate) tcp: TcpTable,
    pub(crate) udp: UdpTable,
    pub(crate) dns: DnsTable,
    pub(crate) next_id: u64,
    pub(crate) next_housekeeping: Option<Instant>,
    pub(crate) buffer_memory: usize,
    /// Mappings of reclaimed flows' buffers kept for new flows (`buffer.rs`); no
    /// socket points into them.
    pub(crate) spares: Spares,
    hasher: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("tcp_flows", &self.tcp.flows.len())
            .field("udp_flows", &self.udp.flows.len())
            .field("buffer_memory", &self.buffer_memory)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Stack {
    /// Creates a stack; `now` is the time base for every later call.
    pub fn new(config: Config, now: Instant) -> Result<Self, Error> {
        config.validate()?;
        let caps = device::capabilities(config.mtu);
        let iface = new_interface(&config, &caps);
        let nshards = (config.max_tcp_flows / 64)
            .clamp(1, MAX_SHARDS)
            .next_power_of_two();
        let shards = (0..nshards).map(|_| Shard::new()).collect();
        Ok(Self {
            config,
            iface,
            caps,
            base: now,
            now,
            shards,
            dirty: ShardSet::default(),
            timers: BTreeSet::new(),
            tx: VecDeque::new(),
            pool: RefCell::default(),
            events: VecDeque::new(),
            stats: Stats::default(),
            tcp: TcpTable::default(),
            udp: UdpTable::default(),
            dns: DnsTable::default(),
            next_id: 1,
            next_housekeeping: None,
            buffer_memory: 0,
            spares: Spares::default(),
            hasher: Default::default(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Bytes of TCP socket buffers currently allocated or reserved (pending flows
    /// reserve theirs), the quantity limited by `max_buffer_memory`.
    pub fn buffer_memory(&self) -> usize {
        self.buffer_memory
    }

    /// Number of TCP flows (pending, open, and DNS-over-TCP).
    pub fn tcp_flow_count(&self) -> usize {
        self.tcp.flows.len()
    }

    /// Number of UDP flows.
    pub fn udp_flow_count(&self) -> usize {
        self.udp.flows.len()
    }

    /// Feeds one IP packet read from the TUN. Bad packets are counted and dropped.
    pub fn handle_packet(&mut self, now: Instant, pkt: &[u8]) {
        self.input(now, pkt, Verify::All);
    }

    /// Feeds one IP packet whose TCP or UDP checksum the device vouches for, so it is not
    /// verified again: a TUN with checksum offload marks packets of this host's own
    /// sockets `VIRTIO_NET_HDR_F_NEEDS_CSUM` (the field then holds only the pseudo-header
    /// sum; nothing crossed a wire) and packets a NIC already verified
    /// `VIRTIO_NET_HDR_F_DATA_VALID`. A TCP segment may exceed the MTU (up to 65535 bytes):
    /// with TCP segmentation offload the kernel hands over a GSO packet, one TCP segment
    /// carrying several of the sender's (a LAN's 1,500-byte segments coalesced by GRO or
    /// TSO). Everything else (lengths, addresses, the IPv4 header checksum, ICMP checksums)
    /// is checked as in [`Stack::handle_packet`].
    pub fn handle_vouched_packet(&mut self, now: Instant, pkt: &[u8]) {
        self.input(now, pkt, Verify::IpAndIcmp);
    }

    fn input(&mut self, now: Instant, pkt: &[u8], verify: Verify) {
        self.advance(now);
        self.stats.rx_packets += 1;
        self.stats.rx_bytes += pkt.len() as u64;
        match packet::classify(pkt, self.config.mtu, verify) {
            Err(drop) => self.count_drop(drop),
            Ok(Inbound::Tcp(seg)) => self.on_tcp(seg, pkt),
            Ok(Inbound::Udp { key, payload }) => self.on_udp(key, payload),
            Ok(Inbound::Echo {
                src,
                dst,
                ident,
                seq,
                payload,
            }) => self.on_echo(EchoRequest {
                src,
                dst,
                ident,
                seq,
                payload: payload.to_vec().into(),
            }),
        }
    }

    /// Runs timers (retransmission, keep-alive, delayed ACK, idle expiry) due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        while let Some(&(at, s)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            self.shards[s].poll_at = None;
            self.dirty.insert(s);
        }
        self.flush();
        if self.next_housekeeping.is_some_and(|t| t <= now) {
            self.housekeeping();
        }
    }

    /// Next packet to write to the TUN.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        self.advance(now);
        self.flush();
        let pkt = self.tx.pop_front()?;
        self.stats.tx_packets += 1;
        self.stats.tx_bytes += pkt.len() as u64;
        Some(pkt)
    }

    /// Hands a packet from [`poll_transmit`](Self::poll_transmit) back once it is
    /// written, so its buffer is reused for a later packet. Optional: a packet that is not
    /// handed back is simply freed.
    pub fn recycle(&mut self, pkt: Vec<u8>) {
        self.pool.get_mut().give_tx(pkt);
    }

    /// Next event for the caller.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.flush();
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next; `None`
    /// when nothing is timed.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.flush();
        let shards = self.timers.first().map(|&(at, _)| at);
        shards.into_iter().chain(self.next_housekeeping).min()
    }

    fn advance(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// The TCP timestamp clock at `ts`: milliseconds, from a per-stack offset.
    fn tsval(&self, ts: smoltcp::time::Instant) -> u32 {
        // Truncation is the point: the clock wraps every 49.7 days (RFC 7323 §5.2).
        (self.config.random_seed as u32).wrapping_add(ts.total_millis() as u32)
    }

    pub(crate) fn smol_now(&self) -> smoltcp::time::Instant {
        let micros = self.now.saturating_duration_since(self.base).as_micros();
        smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
    }

    fn std_instant(&self, t: smoltcp::time::Instant) -> Instant {
        self.base + Duration::from_micros(u64::try_from(t.total_micros()).unwrap_or(0))
    }

    pub(crate) fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(crate) fn shard_of(&self, key: &FlowKey) -> usize {
        // shards.len() is a power of two.
        (self.hasher.hash_one(key) as usize) & (self.shards.len() - 1)
    }

    /// Makes sure the housekeeping scan is scheduled while any table has entries.
    pub(crate) fn arm_housekeeping(&mut self) {
        if self.next_housekeeping.is_none() {
            self.next_housekeeping = Some(self.now + HOUSEKEEPING);
        }
    }

    fn count_drop(&mut self, drop: Drop) {
        let s = &mut self.stats;
        *match drop {
            Drop::Malformed => &mut s.dropped_malformed,
            Drop::Checksum => &mut s.dropped_checksum,
            Drop::Fragment => &mut s.dropped_fragment,
            Drop::Oversized => &mut s.dropped_oversized,
            Drop::Unsupported => &mut s.dropped_unsupported,
            Drop::NonUnicast => &mut s.dropped_non_unicast,
        } += 1;
    }

    /// Queues an event that carries a datagram, unless the queue is full.
    pub(crate) fn push_datagram_event(&mut self, ev: Event) -> bool {
        if self.events.len() >= self.config.max_queued_events {
            self.stats.events_dropped += 1;
            return false;
        }
        self.events.push_back(ev);
        true
    }

    /// Queues a packet built by the stack itself.
    pub(crate) fn push_tx(&mut self, pkt: Vec<u8>) {
        self.tx.push_back(pkt);
    }

    fn on_echo(&mut self, req: EchoRequest) {
        if self.push_datagram_event(Event::IcmpEcho(req)) {
            self.stats.icmp_echo_requests += 1;
        }
    }

    /// Answers an echo request with an echo reply from `req.dst` carrying `req.payload`.
    pub fn icmp_echo_reply(&mut self, req: &EchoRequest) -> Result<(), Error> {
        let pkt = build::echo_reply(req.dst, req.src, req.ident, req.seq, &req.payload)
            .ok_or(Error::InvalidState)?;
        if pkt.len() > self.config.mtu {
            return Err(Error::TooLarge {
                len: pkt.len(),
                limit: self.config.mtu,
            });
        }
        self.push_tx(pkt);
        Ok(())
    }

    /// Polls every dirty shard until none is dirty (bounded).
    pub(crate) fn flush(&mut self) {
        for _ in 0..4 {
            if self.dirty.is_empty() {
                break;
            }
            let mut pass = std::mem::take(&mut self.dirty);
            while let Some(s) = pass.pop() {
                self.poll_shard(s);
            }
        }
    }

    /// Runs smoltcp over one shard: all queued ingress, egress until quiet, then
    /// the flow sweep that turns socket state into events.
    pub(crate) fn poll_shard(&mut self, s: usize) {
        let ts = self.smol_now();
        crate::timestamps::set_clock(self.tsval(ts));
        let shard = &mut self.shards[s];
        self.dirty.remove(s);
        let mut dev = QueueDevice {
            rx: &mut shard.rx,
            tx: &mut self.tx,
            pool: &self.pool,
            caps: &self.caps,
            partial_tcp_checksum: self.config.tcp_checksum_offload,
        };
        self.iface.poll(ts, &mut dev, &mut shard.sockets);
        let mut rounds = 0;
        while self.iface.poll_egress(ts, &mut dev, &mut shard.sockets)
            == PollResult::SocketStateChanged
        {
            rounds += 1;
            if rounds == MAX_EGRESS_ROUNDS {
                self.dirty.insert(s);
                break;
            }
        }
        self.sweep_shard(s);
        let ts = self.smol_now();
        let at = self.iface.poll_at(ts, &self.shards[s].sockets);
        let at = at.map(|t| self.std_instant(t));
        let old = std::mem::replace(&mut self.shards[s].poll_at, at);
        if old != at {
            if let Some(old) = old {
                self.timers.remove(&(old, s));
            }
            if let Some(at) = at {
                self.timers.insert((at, s));
            }
        }
    }

    /// Periodic scan: accept/idle timeouts, UDP expiry, DNS expiry.
    fn housekeeping(&mut self) {
        self.next_housekeeping = None;
        self.tcp_housekeeping();
        self.udp_housekeeping();
        self.dns_housekeeping();
        self.flush();
        if !(self.tcp.flows.is_empty() && self.udp.flows.is_empty() && self.dns.is_empty()) {
            self.arm_housekeeping();
        }
    }
}

impl Shard {
    pub(crate) fn new() -> Self {
        Self {
            sockets: SocketSet::new(Vec::new()),
            buffers: HashMap::new(),
            rx: VecDeque::new(),
            flows: Vec::new(),
            poll_at: None,
        }
    }
}

fn new_interface(config: &Config, caps: &DeviceCapabilities) -> Interface {
    let mut ic = IfaceConfig::new(HardwareAddress::Ip);
    ic.random_seed = config.random_seed;
    let (mut rx, mut tx) = (VecDeque::new(), VecDeque::new());
    let pool = RefCell::default();
    let mut dev = QueueDevice {
        rx: &mut rx,
        tx: &mut tx,
        pool: &pool,
        caps,
        partial_tcp_checksum: config.tcp_checksum_offload,
    };
    let mut iface = Interface::new(ic, &mut dev, smoltcp::time::Instant::ZERO);
    iface.update_ip_addrs(|addrs| {
        // Capacity (IFACE_MAX_ADDR_COUNT) is at least 2 in every smoltcp build.
        let _ = addrs.push(IpCidr::new(IFACE_V4.into(), 32));
        let _ = addrs.push(IpCidr::new(IFACE_V6.into(), 128));
    });
    // A fresh route table has room for both defaults.
    let _ = iface.routes_mut().add_default_ipv4_route(IFACE_V4);
    let _ = iface.routes_mut().add_default_ipv6_route(IFACE_V6);
    iface.set_any_ip(true);
    iface
}

/// Largest UDP payload that fits one packet from `src` at this MTU.
pub(crate) fn max_udp_payload(mtu: usize, src: std::net::IpAddr) -> usize {
    mtu.min(config::MAX_MTU) - build::udp_overhead(src)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_set_pops_each_index_once_in_order() {
        let mut set = ShardSet::default();
        assert!(set.is_empty());
        for s in [255, 0, 64, 63, 130, 64] {
            set.insert(s);
        }
        set.remove(130);
        set.remove(7);
        let mut got = Vec::new();
        while let Some(s) = set.pop() {
            got.push(s);
        }
        assert_eq!(got, [0, 63, 64, 255]);
        assert!(set.is_empty());
    }
}
