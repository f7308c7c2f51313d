//! Identifiers and the events the stack reports.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Ids are never reused within one [`Stack`](crate::Stack).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub(crate) u64);

        impl $name {
            /// The raw number, for logs and maps.
            pub fn as_u64(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}#{}", stringify!($name), self.0)
            }
        }
    };
}

id_type!(
    /// A TCP flow (one app connection, any destination).
    TcpFlowId
);
id_type!(
    /// A UDP flow (one 5-tuple).
    UdpFlowId
);
id_type!(
    /// One DNS query awaiting [`Stack::dns_reply`](crate::Stack::dns_reply).
    DnsQueryId
);

/// How a TCP flow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both sides sent FIN and it was acknowledged.
    Graceful,
    /// The app sent a RST.
    Reset,
    /// The caller called `tcp_abort` (a RST was sent to the app).
    Aborted,
    /// The caller refused the flow.
    Refused,
    /// No accept decision within `tcp_accept_timeout`.
    AcceptTimeout,
    /// No activity within `tcp_idle_timeout` (a RST was sent to the app).
    IdleTimeout,
    /// The app stopped answering (retransmission or keep-alive timeout).
    TimedOut,
    /// The handshake did not complete (the app reset or abandoned it).
    HandshakeFailed,
}

/// How to refuse a TCP flow ([`Stack::tcp_refuse`](crate::Stack::tcp_refuse)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A TCP RST: "connection refused", what a host with a closed port does.
    Reset,
    /// ICMP destination unreachable, network unreachable / no route.
    NetworkUnreachable,
    /// ICMP destination unreachable, host unreachable (address unreachable for v6).
    HostUnreachable,
    /// ICMP destination unreachable, administratively prohibited.
    Prohibited,
    /// Nothing at all: the app's SYN times out, as behind a dropping firewall.
    Silent,
}

/// Transport a DNS query arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsTransport {
    /// One UDP datagram.
    Udp,
    /// One length-prefixed message on a TCP/53 connection the stack terminated.
    Tcp,
}

/// An ICMP or ICMPv6 echo request from an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchoRequest {
    /// The app's address.
    pub src: IpAddr,
    /// The address being pinged.
    pub dst: IpAddr,
    /// Echo identifier.
    pub ident: u16,
    /// Echo sequence number.
    pub seq: u16,
    /// Echo data (echoed back by [`Stack::icmp_echo_reply`](crate::Stack::icmp_echo_reply)).
    pub payload: Bytes,
}

/// What the caller must react to, from [`Stack::poll_event`](crate::Stack::poll_event).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// An app sent a SYN to `dst`. Answer with `tcp_accept` or `tcp_refuse`
    /// (the SYN is held until then, at most `tcp_accept_timeout`).
    TcpIncoming {
        /// The flow.
        id: TcpFlowId,
        /// The app's address.
        src: SocketAddr,
        /// The destination the app asked for.
        dst: SocketAddr,
    },
    /// The three-way handshake finished; `tcp_send` now takes data.
    TcpEstablished {
        /// The flow.
        id: TcpFlowId,
    },
    /// Bytes from the app are waiting; call `tcp_recv` until it returns 0.
    /// Edge-triggered: not repeated until a `tcp_recv` has emptied the buffer.
    TcpReadable {
        /// The flow.
        id: TcpFlowId,
    },
    /// `tcp_send` took fewer bytes than offered earlier and now has room again.
    TcpWritable {
        /// The flow.
        id: TcpFlowId,
    },
    /// The app sent FIN and every byte before it has been read: end of stream
    /// from the app. The flow stays open for `tcp_send` (half-close).
    TcpPeerFin {
        /// The flow.
        id: TcpFlowId,
    },
    /// The flow is gone and its id is dead. Exactly one per `TcpIncoming`.
    TcpClosed {
        /// The flow.
        id: TcpFlowId,
        /// Why.
        reason: CloseReason,
    },
    /// The first datagram of a new UDP 5-tuple (followed by `UdpDatagram`).
    UdpOpened {
        /// The flow.
        id: UdpFlowId,
        /// The app's address.
        src: SocketAddr,
        /// The destination.
        dst: SocketAddr,
    },
    /// A datagram from the app on a UDP flow.
    UdpDatagram {
        /// The flow.
        id: UdpFlowId,
        /// The UDP payload.
        payload: Bytes,
    },
    /// The UDP flow expired after `udp_idle_timeout`; its id is dead.
    UdpClosed {
        /// The flow.
        id: UdpFlowId,
    },
    /// A DNS query; answer with `dns_reply` within `dns_timeout`.
    DnsQuery {
        /// The query.
        id: DnsQueryId,
        /// The app's address.
        client: SocketAddr,
        /// The resolver the app asked (the reply comes from it).
        server: SocketAddr,
        /// UDP or TCP.
        transport: DnsTransport,
        /// The DNS message (without the TCP length prefix).
        message: Bytes,
    },
    /// An ICMP/ICMPv6 echo request; answer with `icmp_echo_reply` if the far end
    /// answers.
    IcmpEcho(EchoRequest),
}
