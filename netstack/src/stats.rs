//! Named counters.

/// Counters of everything the stack did or dropped. All are monotonic except the
/// `*_now` gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Packets given to `handle_packet`.
    pub rx_packets: u64,
    /// Bytes given to `handle_packet`.
    pub rx_bytes: u64,
    /// Packets returned by `poll_transmit`.
    pub tx_packets: u64,
    /// Bytes returned by `poll_transmit`.
    pub tx_bytes: u64,
    /// Dropped: not parseable as IPv4/IPv6/TCP/UDP/ICMP (truncated, bad lengths,
    /// bad header fields).
    pub dropped_malformed: u64,
    /// Dropped: IPv4 header, TCP, UDP or ICMP checksum wrong.
    pub dropped_checksum: u64,
    /// Dropped: IPv4 or IPv6 fragment (fragments are never reassembled).
    pub dropped_fragment: u64,
    /// Dropped: larger than the configured MTU.
    pub dropped_oversized: u64,
    /// Dropped: other IP protocols, IPv6 extension headers, non-echo ICMP.
    pub dropped_unsupported: u64,
    /// Dropped: multicast, broadcast or unspecified source/destination.
    pub dropped_non_unicast: u64,
    /// TCP SYNs answered with RST because `max_tcp_flows` or `max_buffer_memory`
    /// was reached.
    pub tcp_refused_limit: u64,
    /// TCP segments (other than SYN) that arrived while the flow awaited the accept
    /// decision; dropped (the app retransmits).
    pub tcp_dropped_pending: u64,
    /// TCP segments for no known flow, handed to smoltcp, which answers with RST.
    pub tcp_no_flow: u64,
    /// TCP flows offered to the caller (`TcpIncoming`).
    pub tcp_flows_offered: u64,
    /// TCP flows accepted (caller or DNS).
    pub tcp_flows_accepted: u64,
    /// TCP flows refused by the caller.
    pub tcp_flows_refused: u64,
    /// TCP flows whose accept decision timed out.
    pub tcp_accept_timeouts: u64,
    /// TCP flows reset because `tcp_idle_timeout` elapsed.
    pub tcp_idle_timeouts: u64,
    /// TCP flows whose state was reclaimed (every way a flow ends).
    pub tcp_flows_reclaimed: u64,
    /// UDP flows created.
    pub udp_flows_opened: u64,
    /// UDP flows expired after `udp_idle_timeout`.
    pub udp_flows_expired: u64,
    /// UDP datagrams dropped because `max_udp_flows` was reached.
    pub udp_dropped_limit: u64,
    /// DNS queries surfaced.
    pub dns_queries: u64,
    /// DNS replies written back.
    pub dns_replies: u64,
    /// DNS queries dropped: too short to be DNS, too many pending, or (TCP) a
    /// connection that overflowed its reply backlog.
    pub dns_dropped: u64,
    /// DNS query ids that expired unanswered.
    pub dns_expired: u64,
    /// ICMP/ICMPv6 echo requests surfaced.
    pub icmp_echo_requests: u64,
    /// Datagram events (UDP, DNS, ICMP) dropped because the event queue was full.
    pub events_dropped: u64,
}
