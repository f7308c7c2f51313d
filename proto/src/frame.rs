//! Frames: the typed contents of a record (docs/PROTOCOL.md §5). A record's plaintext is a
//! sequence of frames, each a type byte followed by fixed big-endian fields. Parsing is
//! checked and never panics; `encode` writes exactly `encoded_len` bytes.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{BufMut, Bytes};

use crate::codec::Reader;
use crate::error::DecodeError;

/// A stream's identifier within a session. Only the client opens streams; ids increase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u32);

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// A reliable byte stream (a TCP connection at the exit).
    Tcp,
    /// Datagrams to one destination (a UDP socket at the exit).
    Udp,
}

impl StreamKind {
    fn code(self) -> u8 {
        match self {
            StreamKind::Tcp => 1,
            StreamKind::Udp => 2,
        }
    }

    fn from_code(value: u8) -> Result<Self, DecodeError> {
        match value {
            1 => Ok(StreamKind::Tcp),
            2 => Ok(StreamKind::Udp),
            _ => Err(DecodeError::UnknownType {
                what: "stream kind",
                value,
            }),
        }
    }
}

/// Longest domain name a destination may carry (RFC 1035 presentation form).
pub const MAX_DOMAIN_LEN: usize = 253;

/// Where a stream goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// An IPv4 or IPv6 address and port.
    Addr(SocketAddr),
    /// A host name, resolved at the exit, and a port.
    Domain(String, u16),
}

impl Destination {
    /// A domain destination, checked: 1–253 bytes of letters, digits, `-`, `_` and `.`.
    pub fn domain(name: &str, port: u16) -> Result<Self, DecodeError> {
        let ok = !name.is_empty()
            && name.len() <= MAX_DOMAIN_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        match ok {
            true => Ok(Destination::Domain(name.to_owned(), port)),
            false => Err(DecodeError::Invalid {
                field: "destination domain",
            }),
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Destination::Addr(SocketAddr::V4(_)) => 1 + 4 + 2,
            Destination::Addr(SocketAddr::V6(_)) => 1 + 16 + 2,
            Destination::Domain(name, _) => 1 + 1 + name.len() + 2,
        }
    }

    fn encode(&self, out: &mut impl BufMut) {
        match self {
            Destination::Addr(addr) => {
                encode_ip(addr.ip(), out);
                out.put_u16(addr.port());
            }
            Destination::Domain(name, port) => {
                out.put_u8(ADDR_DOMAIN);
                // Invariant: `Destination::domain` and `decode` bound the length to 253.
                out.put_u8(name.len() as u8);
                out.put_slice(name.as_bytes());
                out.put_u16(*port);
            }
        }
    }

    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let kind = r.u8()?;
        if kind == ADDR_DOMAIN {
            let len = usize::from(r.u8()?);
            let name = r.bytes(len)?;
            let name = std::str::from_utf8(&name).map_err(|_| DecodeError::Invalid {
                field: "destination domain",
            })?;
            return Destination::domain(name, r.u16()?);
        }
        let ip = decode_ip_of_kind(kind, r)?;
        Ok(Destination::Addr(SocketAddr::new(ip, r.u16()?)))
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Addr(a) => write!(f, "{a}"),
            Destination::Domain(name, port) => write!(f, "{name}:{port}"),
        }
    }
}

const ADDR_V4: u8 = 4;
const ADDR_V6: u8 = 6;
const ADDR_DOMAIN: u8 = 3;

fn ip_len(ip: IpAddr) -> usize {
    match ip {
        IpAddr::V4(_) => 1 + 4,
        IpAddr::V6(_) => 1 + 16,
    }
}

fn encode_ip(ip: IpAddr, out: &mut impl BufMut) {
    match ip {
        IpAddr::V4(v4) => {
            out.put_u8(ADDR_V4);
            out.put_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.put_u8(ADDR_V6);
            out.put_slice(&v6.octets());
        }
    }
}

fn decode_ip_of_kind(kind: u8, r: &mut Reader) -> Result<IpAddr, DecodeError> {
    match kind {
        ADDR_V4 => Ok(IpAddr::V4(Ipv4Addr::from(r.array::<4>()?))),
        ADDR_V6 => Ok(IpAddr::V6(Ipv6Addr::from(r.array::<16>()?))),
        value => Err(DecodeError::UnknownType {
            what: "address",
            value,
        }),
    }
}

/// Why a stream was reset (docs/PROTOCOL.md §5.3). Unknown codes decode as `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResetCode {
    /// The local application went away or cancelled.
    Cancelled,
    /// The exit's egress policy refuses this destination.
    PolicyRefused,
    /// The destination refused the connection (TCP RST).
    ConnectionRefused,
    /// The connection attempt timed out.
    ConnectTimeout,
    /// No route to the destination / network unreachable.
    Unreachable,
    /// The domain name did not resolve.
    DnsFailure,
    /// The session's stream limit is reached.
    TooManyStreams,
    /// The destination reset an established connection.
    PeerReset,
    /// The stream was idle too long.
    IdleTimeout,
    /// The exit could not serve the stream (resources, internal error).
    Internal,
    /// A code this version does not know.
    Other(u16),
}

impl ResetCode {
    /// The wire value.
    pub fn code(self) -> u16 {
        match self {
            ResetCode::Cancelled => 0,
            ResetCode::PolicyRefused => 1,
            ResetCode::ConnectionRefused => 2,
            ResetCode::ConnectTimeout => 3,
            ResetCode::Unreachable => 4,
            ResetCode::DnsFailure => 5,
            ResetCode::TooManyStreams => 6,
            ResetCode::PeerReset => 7,
            ResetCode::IdleTimeout => 8,
            ResetCode::Internal => 9,
            ResetCode::Other(c) => c,
        }
    }

    /// From the wire value.
    pub fn from_code(code: u16) -> Self {
        const KNOWN: [ResetCode; 10] = [
            ResetCode::Cancelled,
            ResetCode::PolicyRefused,
            ResetCode::ConnectionRefused,
            ResetCode::ConnectTimeout,
            ResetCode::Unreachable,
            ResetCode::DnsFailure,
            ResetCode::TooManyStreams,
            ResetCode::PeerReset,
            ResetCode::IdleTimeout,
            ResetCode::Internal,
        ];
        KNOWN
            .get(usize::from(code))
            .copied()
            .unwrap_or(ResetCode::Other(code))
    }
}

/// Why a session was closed (docs/PROTOCOL.md §5.4). Unknown codes decode as `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// Orderly shutdown by either side.
    Normal,
    /// The peer broke a protocol rule.
    ProtocolViolation,
    /// The peer sent more than it was granted.
    FlowControl,
    /// An internal error or resource exhaustion.
    Internal,
    /// No leg was attached for longer than the session TTL.
    IdleTimeout,
    /// The client's key was revoked.
    Revoked,
    /// The exit is shutting down.
    Shutdown,
    /// Version mismatch.
    Version,
    /// A code this version does not know.
    Other(u16),
}

impl CloseCode {
    /// The wire value.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 0,
            CloseCode::ProtocolViolation => 1,
            CloseCode::FlowControl => 2,
            CloseCode::Internal => 3,
            CloseCode::IdleTimeout => 4,
            CloseCode::Revoked => 5,
            CloseCode::Shutdown => 6,
            CloseCode::Version => 7,
            CloseCode::Other(c) => c,
        }
    }

    /// From the wire value.
    pub fn from_code(code: u16) -> Self {
        const KNOWN: [CloseCode; 8] = [
            CloseCode::Normal,
            CloseCode::ProtocolViolation,
            CloseCode::FlowControl,
            CloseCode::Internal,
            CloseCode::IdleTimeout,
            CloseCode::Revoked,
            CloseCode::Shutdown,
            CloseCode::Version,
        ];
        KNOWN
            .get(usize::from(code))
            .copied()
            .unwrap_or(CloseCode::Other(code))
    }
}

/// Longest close reason, in bytes.
pub const MAX_REASON_LEN: usize = 255;

/// One frame (docs/PROTOCOL.md §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `n` zero bytes, ignored (hides record sizes).
    Padding(usize),
    /// Liveness probe; the peer answers with `Pong` carrying the same id.
    Ping {
        /// Opaque to the peer.
        id: u64,
    },
    /// Answer to `Ping`.
    Pong {
        /// The ping's id.
        id: u64,
    },
    /// Cumulative acknowledgement: every record of the opposite direction below `next`
    /// has arrived.
    Ack {
        /// The next record counter the sender of this frame expects.
        next: u64,
    },
    /// Open a stream (client only).
    Open {
        /// New, larger than every id before.
        id: StreamId,
        /// TCP or UDP.
        kind: StreamKind,
        /// Where to.
        dest: Destination,
    },
    /// The exit reached the destination of a TCP stream.
    Accept {
        /// The stream.
        id: StreamId,
    },
    /// Stream bytes, in order.
    Data {
        /// The stream.
        id: StreamId,
        /// The bytes.
        data: Bytes,
    },
    /// The sender will send no more bytes on this stream (half-close).
    Fin {
        /// The stream.
        id: StreamId,
    },
    /// Abort the stream in both directions.
    Reset {
        /// The stream.
        id: StreamId,
        /// Why.
        code: ResetCode,
    },
    /// Stream credit: the sender of this frame accepts stream bytes up to offset `max`.
    MaxStreamData {
        /// The stream.
        id: StreamId,
        /// Absolute byte offset.
        max: u64,
    },
    /// Session credit: total stream bytes (all streams) the sender of this frame accepts.
    MaxData {
        /// Absolute byte count.
        max: u64,
    },
    /// A DNS message to resolve at the exit.
    DnsQuery {
        /// Chosen by the client, echoed in the response.
        id: u32,
        /// The DNS message as sent by the application.
        msg: Bytes,
    },
    /// The answer to `DnsQuery`.
    DnsResponse {
        /// The query's id.
        id: u32,
        /// The DNS message to hand back to the application.
        msg: Bytes,
    },
    /// One UDP payload on a UDP stream.
    Datagram {
        /// The stream.
        id: StreamId,
        /// The payload.
        data: Bytes,
    },
    /// An ICMP/ICMPv6 echo request to forward.
    EchoRequest {
        /// Chosen by the client, echoed in the reply.
        id: u32,
        /// The target.
        dest: IpAddr,
        /// The echo payload.
        data: Bytes,
    },
    /// The answer to `EchoRequest` (only sent when a reply arrived).
    EchoReply {
        /// The request's id.
        id: u32,
        /// The echo payload.
        data: Bytes,
    },
    /// The session ends.
    Close {
        /// Why.
        code: CloseCode,
        /// Human-readable, at most 255 bytes of UTF-8.
        reason: String,
    },
}

/// Frame type bytes.
mod ty {
    pub const PADDING: u8 = 0x00;
    pub const PING: u8 = 0x01;
    pub const PONG: u8 = 0x02;
    pub const ACK: u8 = 0x03;
    pub const OPEN: u8 = 0x04;
    pub const ACCEPT: u8 = 0x05;
    pub const DATA: u8 = 0x06;
    pub const FIN: u8 = 0x07;
    pub const RESET: u8 = 0x08;
    pub const MAX_STREAM_DATA: u8 = 0x09;
    pub const MAX_DATA: u8 = 0x0a;
    pub const DNS_QUERY: u8 = 0x0b;
    pub const DNS_RESPONSE: u8 = 0x0c;
    pub const DATAGRAM: u8 = 0x0d;
    pub const ECHO_REQUEST: u8 = 0x0e;
    pub const ECHO_REPLY: u8 = 0x0f;
    pub const CLOSE: u8 = 0x10;
}

/// Bytes a `Data` frame adds in front of its payload.
pub const DATA_HEADER_LEN: usize = 1 + 4 + 4;
/// Largest payload of a DNS, datagram or echo frame (a 16-bit length).
pub const MAX_SMALL_PAYLOAD: usize = u16::MAX as usize;

impl Frame {
    /// Whether receiving this frame obliges the peer to acknowledge soon (docs §6.3).
    pub fn is_ack_eliciting(&self) -> bool {
        !matches!(self, Frame::Ack { .. } | Frame::Padding(_))
    }

    /// Exactly how many bytes `encode` writes.
    pub fn encoded_len(&self) -> usize {
        1 + match self {
            Frame::Padding(n) => n.saturating_sub(1),
            Frame::Ping { .. } | Frame::Pong { .. } | Frame::Ack { .. } | Frame::MaxData { .. } => {
                8
            }
            Frame::Open { dest, .. } => 4 + 1 + dest.encoded_len(),
            Frame::Accept { .. } | Frame::Fin { .. } => 4,
            Frame::Data { data, .. } => 4 + 4 + data.len(),
            Frame::Reset { .. } => 4 + 2,
            Frame::MaxStreamData { .. } => 4 + 8,
            Frame::DnsQuery { msg, .. } | Frame::DnsResponse { msg, .. } => 4 + 2 + msg.len(),
            Frame::Datagram { data, .. } => 4 + 2 + data.len(),
            Frame::EchoRequest { dest, data, .. } => 4 + ip_len(*dest) + 2 + data.len(),
            Frame::EchoReply { data, .. } => 4 + 2 + data.len(),
            Frame::Close { reason, .. } => 2 + 1 + reason.len(),
        }
    }

    /// Check the lengths that the wire format bounds; a frame that passes encodes exactly.
    pub fn validate(&self) -> Result<(), DecodeError> {
        let small = |field: &'static str, len: usize| match len <= MAX_SMALL_PAYLOAD {
            true => Ok(()),
            false => Err(DecodeError::Invalid { field }),
        };
        match self {
            Frame::Padding(0) => Err(DecodeError::Invalid { field: "padding" }),
            Frame::Data { data, .. } if data.len() > u32::MAX as usize => {
                Err(DecodeError::Invalid { field: "data" })
            }
            Frame::DnsQuery { msg, .. } | Frame::DnsResponse { msg, .. } => small("dns", msg.len()),
            Frame::Datagram { data, .. } => small("datagram", data.len()),
            Frame::EchoRequest { data, .. } | Frame::EchoReply { data, .. } => {
                small("echo", data.len())
            }
            Frame::Close { reason, .. } if reason.len() > MAX_REASON_LEN => {
                Err(DecodeError::Invalid { field: "reason" })
            }
            _ => Ok(()),
        }
    }

    /// Append the frame. The frame must have passed `validate` (lengths are truncated
    /// to their field width otherwise).
    pub fn encode(&self, out: &mut impl BufMut) {
        match self {
            Frame::Padding(n) => out.put_bytes(0, *n),
            Frame::Ping { id } => put_u64(out, ty::PING, *id),
            Frame::Pong { id } => put_u64(out, ty::PONG, *id),
            Frame::Ack { next } => put_u64(out, ty::ACK, *next),
            Frame::MaxData { max } => put_u64(out, ty::MAX_DATA, *max),
            Frame::Open { id, kind, dest } => {
                put_id(out, ty::OPEN, *id);
                out.put_u8(kind.code());
                dest.encode(out);
            }
            Frame::Accept { id } => put_id(out, ty::ACCEPT, *id),
            Frame::Fin { id } => put_id(out, ty::FIN, *id),
            Frame::Data { id, data } => {
                encode_data_header(out, *id, data.len());
                out.put_slice(data);
            }
            Frame::Reset { id, code } => {
                put_id(out, ty::RESET, *id);
                out.put_u16(code.code());
            }
            Frame::MaxStreamData { id, max } => {
                put_id(out, ty::MAX_STREAM_DATA, *id);
                out.put_u64(*max);
            }
            Frame::DnsQuery { id, msg } => put_small(out, ty::DNS_QUERY, id, msg),
            Frame::DnsResponse { id, msg } => put_small(out, ty::DNS_RESPONSE, id, msg),
            Frame::Datagram { id, data } => put_small(out, ty::DATAGRAM, &id.0, data),
            Frame::EchoRequest { id, dest, data } => {
                out.put_u8(ty::ECHO_REQUEST);
                out.put_u32(*id);
                encode_ip(*dest, out);
                out.put_u16(data.len() as u16);
                out.put_slice(data);
            }
            Frame::EchoReply { id, data } => put_small(out, ty::ECHO_REPLY, id, data),
            Frame::Close { code, reason } => {
                out.put_u8(ty::CLOSE);
                out.put_u16(code.code());
                out.put_u8(reason.len() as u8);
                out.put_slice(reason.as_bytes());
            }
        }
    }

    /// Parse one frame from the front of `r`. A run of zero bytes is one `Padding` frame.
    pub(crate) fn decode(r: &mut Reader) -> Result<Frame, DecodeError> {
        let t = r.u8()?;
        let id = |r: &mut Reader| r.u32().map(StreamId);
        Ok(match t {
            ty::PADDING => Frame::Padding(1 + r.skip_zeros()),
            ty::PING => Frame::Ping { id: r.u64()? },
            ty::PONG => Frame::Pong { id: r.u64()? },
            ty::ACK => Frame::Ack { next: r.u64()? },
            ty::MAX_DATA => Frame::MaxData { max: r.u64()? },
            ty::OPEN => Frame::Open {
                id: id(r)?,
                kind: StreamKind::from_code(r.u8()?)?,
                dest: Destination::decode(r)?,
            },
            ty::ACCEPT => Frame::Accept { id: id(r)? },
            ty::FIN => Frame::Fin { id: id(r)? },
            ty::DATA => {
                let id = id(r)?;
                let len = r.u32()? as usize;
                Frame::Data {
                    id,
                    data: r.bytes(len)?,
                }
            }
            ty::RESET => Frame::Reset {
                id: id(r)?,
                code: ResetCode::from_code(r.u16()?),
            },
            ty::MAX_STREAM_DATA => Frame::MaxStreamData {
                id: id(r)?,
                max: r.u64()?,
            },
            ty::DNS_QUERY => Frame::DnsQuery {
                id: r.u32()?,
                msg: small(r)?,
            },
            ty::DNS_RESPONSE => Frame::DnsResponse {
                id: r.u32()?,
                msg: small(r)?,
            },
            ty::DATAGRAM => Frame::Datagram {
                id: id(r)?,
                data: small(r)?,
            },
            ty::ECHO_REQUEST => Frame::EchoRequest {
                id: r.u32()?,
                dest: {
                    let kind = r.u8()?;
                    decode_ip_of_kind(kind, r)?
                },
                data: small(r)?,
            },
            ty::ECHO_REPLY => Frame::EchoReply {
                id: r.u32()?,
                data: small(r)?,
            },
            ty::CLOSE => decode_close(r)?,
            value => {
                return Err(DecodeError::UnknownType {
                    what: "frame",
                    value,
                });
            }
        })
    }
}

/// Parse a whole record plaintext into frames.
pub fn decode_all(plaintext: Bytes) -> Result<Vec<Frame>, DecodeError> {
    let mut r = Reader::new(plaintext);
    let mut frames = Vec::new();
    while !r.is_empty() {
        frames.push(Frame::decode(&mut r)?);
    }
    Ok(frames)
}

/// Iterate over the frames of a record plaintext without collecting them.
#[derive(Debug)]
pub struct Frames {
    reader: Reader,
}

impl Frames {
    /// Frames of `plaintext`.
    pub fn new(plaintext: Bytes) -> Self {
        Self {
            reader: Reader::new(plaintext),
        }
    }
}

impl Iterator for Frames {
    type Item = Result<Frame, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.reader.is_empty() {
            return None;
        }
        let item = Frame::decode(&mut self.reader);
        if item.is_err() {
            // Stop after the first error: the rest cannot be framed.
            self.reader = Reader::new(Bytes::new());
        }
        Some(item)
    }
}

/// Write the header of a `Data` frame whose `len` payload bytes follow.
pub(crate) fn encode_data_header(out: &mut impl BufMut, id: StreamId, len: usize) {
    put_id(out, ty::DATA, id);
    out.put_u32(len as u32);
}

fn put_u64(out: &mut impl BufMut, t: u8, v: u64) {
    out.put_u8(t);
    out.put_u64(v);
}

fn put_id(out: &mut impl BufMut, t: u8, id: StreamId) {
    out.put_u8(t);
    out.put_u32(id.0);
}

fn put_small(out: &mut impl BufMut, t: u8, id: &u32, data: &[u8]) {
    out.put_u8(t);
    out.put_u32(*id);
    out.put_u16(data.len() as u16);
    out.put_slice(data);
}

fn small(r: &mut Reader) -> Result<Bytes, DecodeError> {
    let len = usize::from(r.u16()?);
    r.bytes(len)
}

fn decode_close(r: &mut Reader) -> Result<Frame, DecodeError> {
    let code = CloseCode::from_code(r.u16()?);
    let len = usize::from(r.u8()?);
    let reason = r.bytes(len)?;
    let reason =
        String::from_utf8(reason.to_vec()).map_err(|_| DecodeError::Invalid { field: "reason" })?;
    Ok(Frame::Close { code, reason })
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
