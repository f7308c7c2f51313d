//! Runtime configuration of a [`Stack`](crate::Stack).

use std::net::IpAddr;
use std::time::Duration;

use crate::error::Error;

/// Smallest MTU accepted: the IPv6 minimum link MTU (RFC 8200 §5).
pub const MIN_MTU: usize = 1280;
/// Largest MTU accepted: the largest IPv4 packet / IPv6 packet without jumbograms.
pub const MAX_MTU: usize = 65535;

/// Which UDP/TCP port-53 traffic is intercepted as DNS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DnsInterception {
    /// Port 53 is ordinary traffic (UDP flows, TCP flows offered to the caller).
    Off,
    /// Port 53 to *any* destination address is DNS (hijack hard-coded resolvers).
    #[default]
    AnyAddress,
    /// Only port 53 to one of [`Config::dns_resolvers`] is DNS; other port-53
    /// traffic is ordinary traffic.
    ResolversOnly,
}

/// Configuration of a [`Stack`](crate::Stack). Build with [`Config::default`] and
/// override fields; [`Stack::new`](crate::Stack::new) validates it.
#[derive(Debug, Clone)]
pub struct Config {
    /// MTU of the TUN device, in bytes of IP packet (1280..=65535). TCP MSS is
    /// derived from it (MTU − 40 for IPv4, MTU − 60 for IPv6); larger inbound
    /// packets are dropped and counted as oversized.
    pub mtu: usize,
    /// Per-flow TCP receive buffer (bytes from the app not yet taken by `tcp_recv`).
    /// Its size is the advertised window (with window scaling above 64 KiB).
    pub tcp_rx_buffer: usize,
    /// Per-flow TCP send buffer (bytes given to `tcp_send` not yet acknowledged by the app).
    pub tcp_tx_buffer: usize,
    /// Maximum TCP flows (pending + open). SYNs beyond it are answered with RST.
    pub max_tcp_flows: usize,
    /// Maximum bytes of TCP buffers reserved across all flows (each accepted or
    /// pending flow reserves `tcp_rx_buffer + tcp_tx_buffer`); SYNs that would exceed
    /// it are answered with RST. Buffers are committed lazily (a page when data first
    /// reaches it) and returned when the flow is reclaimed, so this bounds the worst
    /// case (every buffer full), not the typical cost. The default (4 GiB on 64-bit)
    /// admits `max_tcp_flows` flows at the default buffer sizes.
    pub max_buffer_memory: usize,
    /// How long a SYN waits for [`Stack::tcp_accept`](crate::Stack::tcp_accept) /
    /// [`Stack::tcp_refuse`](crate::Stack::tcp_refuse) before the flow is dropped.
    pub tcp_accept_timeout: Duration,
    /// A TCP flow with no segment from the app and no data moved by the caller for
    /// this long is reset. `None` disables the idle timeout.
    pub tcp_idle_timeout: Option<Duration>,
    /// Interval of TCP keep-alive probes sent to the app. `None` disables them.
    pub tcp_keepalive: Option<Duration>,
    /// The app must send something (data, ACK, keep-alive answer) at least this
    /// often while we have unacknowledged data or keep-alive is on, else the flow is
    /// reset (dead-peer detection). `None` disables it.
    pub tcp_timeout: Option<Duration>,
    /// Delayed-ACK timer; `None` acknowledges every segment at once.
    pub tcp_ack_delay: Option<Duration>,
    /// Maximum UDP flows (5-tuples); datagrams opening more are dropped and counted.
    pub max_udp_flows: usize,
    /// A UDP flow with no datagram in either direction for this long is expired.
    pub udp_idle_timeout: Duration,
    /// Which port-53 traffic is DNS.
    pub dns: DnsInterception,
    /// The virtual resolver addresses (used by [`DnsInterception::ResolversOnly`]).
    pub dns_resolvers: Vec<IpAddr>,
    /// How long a DNS query id stays answerable.
    pub dns_timeout: Duration,
    /// Maximum unanswered DNS queries; more are dropped and counted.
    pub max_pending_dns: usize,
    /// Maximum queued events; datagram-carrying events (UDP, DNS, ICMP) beyond it
    /// are dropped and counted. TCP lifecycle events are never dropped.
    pub max_queued_events: usize,
    /// Seed for TCP initial sequence numbers (the crate reads no entropy itself).
    pub random_seed: u64,
    /// Leave the checksum of every TCP segment the stack sends *partial*: the field holds
    /// the folded pseudo-header sum and the device completes it, as the kernel does for a
    /// TUN with checksum offload when the packet is written with a virtio-net header
    /// saying `VIRTIO_NET_HDR_F_NEEDS_CSUM` (`csum_start` at the TCP header,
    /// `csum_offset` 16). Off (full checksums) for any other device.
    pub tcp_checksum_offload: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mtu: 1500,
            tcp_rx_buffer: 128 * 1024,
            tcp_tx_buffer: 128 * 1024,
            max_tcp_flows: 16 * 1024,
            max_buffer_memory: if cfg!(target_pointer_width = "64") {
                4 << 30
            } else {
                1 << 30
            },
            tcp_accept_timeout: Duration::from_secs(10),
            tcp_idle_timeout: Some(Duration::from_secs(2 * 3600)),
            tcp_keepalive: Some(Duration::from_secs(60)),
            tcp_timeout: Some(Duration::from_secs(180)),
            tcp_ack_delay: Some(Duration::from_millis(10)),
            max_udp_flows: 16 * 1024,
            udp_idle_timeout: Duration::from_secs(60),
            dns: DnsInterception::AnyAddress,
            dns_resolvers: Vec::new(),
            dns_timeout: Duration::from_secs(15),
            max_pending_dns: 4096,
            max_queued_events: 64 * 1024,
            random_seed: 0x4854_4e53,
            tcp_checksum_offload: false,
        }
    }
}

impl Config {
    /// Checks every field; the error names the field and what is expected.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field: &'static str, expected: &'static str| {
            Err(Error::InvalidConfig { field, expected })
        };
        if !(MIN_MTU..=MAX_MTU).contains(&self.mtu) {
            return bad("mtu", "1280..=65535");
        }
        if self.tcp_rx_buffer < 2 * self.mtu || self.tcp_rx_buffer > (1 << 30) {
            return bad("tcp_rx_buffer", "at least 2 × mtu and at most 1 GiB");
        }
        if self.tcp_tx_buffer < 2 * self.mtu || self.tcp_tx_buffer > (1 << 30) {
            return bad("tcp_tx_buffer", "at least 2 × mtu and at most 1 GiB");
        }
        if self.max_tcp_flows == 0 {
            return bad("max_tcp_flows", "at least 1");
        }
        if self.dns == DnsInterception::ResolversOnly && self.dns_resolvers.is_empty() {
            return bad(
                "dns_resolvers",
                "at least one address in ResolversOnly mode",
            );
        }
        if self.udp_idle_timeout.is_zero() || self.dns_timeout.is_zero() {
            return bad("udp_idle_timeout/dns_timeout", "a non-zero duration");
        }
        Ok(())
    }

    /// Buffer bytes one accepted TCP flow costs.
    pub(crate) fn flow_buffer_bytes(&self) -> usize {
        self.tcp_rx_buffer + self.tcp_tx_buffer
    }

    /// Whether a port-53 packet to `dst` is DNS under this configuration.
    pub(crate) fn is_dns(&self, dst: IpAddr, port: u16) -> bool {
        port == 53
            && match self.dns {
                DnsInterception::Off => false,
                DnsInterception::AnyAddress => true,
                DnsInterception::ResolversOnly => self.dns_resolvers.contains(&dst),
            }
    }
}
