//! Leg messages: what one WebSocket binary message carries (docs/PROTOCOL.md §2). The first
//! byte names the type; records are the bulk, the rest set up sessions and legs.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use uuid::Uuid;

use crate::codec::Reader;
use crate::crypto::{MAC_LEN, TAG_LEN};
use crate::error::DecodeError;

/// The protocol version this implementation speaks.
pub const VERSION: u8 = 1;
/// Every version this implementation accepts.
pub const SUPPORTED_VERSIONS: &[u8] = &[VERSION];

/// Message type bytes.
pub mod ty {
    /// Client→exit, first message of the up leg.
    pub const HANDSHAKE_INIT: u8 = 0x01;
    /// Exit→client, on the up leg.
    pub const HANDSHAKE_RESP: u8 = 0x02;
    /// Exit→client: the offered version is not supported.
    pub const VERSION_REFUSED: u8 = 0x03;
    /// Client→exit, first message of a (re)attached leg.
    pub const ATTACH: u8 = 0x04;
    /// Exit→client, the answer to `ATTACH` on the same leg.
    pub const ATTACH_OK: u8 = 0x05;
    /// Either way: an encrypted record.
    pub const RECORD: u8 = 0x06;
}

/// Bytes in front of a record's ciphertext: type and counter.
pub const RECORD_HEADER_LEN: usize = 1 + 8;
/// Bytes a record adds to its plaintext.
pub const RECORD_OVERHEAD: usize = RECORD_HEADER_LEN + TAG_LEN;

/// Which leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Leg {
    /// Client→exit (Domain A).
    Up,
    /// Exit→client (Domain B).
    Down,
}

impl Leg {
    /// Both legs.
    pub const BOTH: [Leg; 2] = [Leg::Up, Leg::Down];

    /// 0 for up, 1 for down (the order of `Stats::legs`).
    pub fn index(self) -> usize {
        match self {
            Leg::Up => 0,
            Leg::Down => 1,
        }
    }

    fn code(self) -> u8 {
        match self {
            Leg::Up => 1,
            Leg::Down => 2,
        }
    }

    fn from_code(value: u8) -> Result<Self, DecodeError> {
        match value {
            1 => Ok(Leg::Up),
            2 => Ok(Leg::Down),
            _ => Err(DecodeError::UnknownType { what: "leg", value }),
        }
    }
}

impl fmt::Display for Leg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Leg::Up => "up",
            Leg::Down => "down",
        })
    }
}

/// The type of a leg message, from its first byte.
pub fn message_type(msg: &[u8]) -> Result<u8, DecodeError> {
    match msg.first() {
        Some(&t @ ty::HANDSHAKE_INIT..=ty::RECORD) => Ok(t),
        Some(&value) => Err(DecodeError::UnknownType {
            what: "message",
            value,
        }),
        None => Err(DecodeError::Truncated { needed: 1 }),
    }
}

/// A leg attach request (docs §3.5): proves possession of the session's attach key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attach {
    /// Protocol version.
    pub version: u8,
    /// The session.
    pub session: Uuid,
    /// Which leg this connection becomes.
    pub leg: Leg,
    /// Strictly increasing per session; the exit refuses anything not newer.
    pub seq: u64,
    /// The client's next expected down-record counter (where the exit resumes).
    pub next: u64,
    /// HMAC-SHA256 over everything before it, keyed with the client attach key.
    pub mac: [u8; MAC_LEN],
}

/// Encoded length of `Attach`.
pub const ATTACH_LEN: usize = 1 + 1 + 16 + 1 + 8 + 8 + MAC_LEN;

/// The longest valid first message of a leg: a `HandshakeInit` (type, version, at most
/// 512 bytes of Noise, mac1) or an `Attach`. An exit reads no more than this before the
/// peer has authenticated (§10).
pub const MAX_FIRST_MESSAGE: usize = 2 + 512 + MAC_LEN;
const _: () = assert!(ATTACH_LEN <= MAX_FIRST_MESSAGE);
/// Encoded length of `AttachOk`.
pub const ATTACH_OK_LEN: usize = 1 + 16 + 1 + 8 + 8 + MAC_LEN;

impl Attach {
    /// The bytes the MAC covers.
    pub(crate) fn signed_part(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(ATTACH_LEN);
        out.put_u8(ty::ATTACH);
        out.put_u8(self.version);
        out.put_slice(self.session.as_bytes());
        out.put_u8(self.leg.code());
        out.put_u64(self.seq);
        out.put_u64(self.next);
        out
    }

    /// The wire form.
    pub fn encode(&self) -> Bytes {
        let mut out = self.signed_part();
        out.put_slice(&self.mac);
        out.freeze()
    }

    /// Parse (checks lengths and fields, not the MAC).
    pub fn decode(msg: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(Bytes::copy_from_slice(msg));
        expect_type(&mut r, ty::ATTACH)?;
        let out = Attach {
            version: r.u8()?,
            session: Uuid::from_bytes(r.array()?),
            leg: Leg::from_code(r.u8()?)?,
            seq: r.u64()?,
            next: r.u64()?,
            mac: r.array()?,
        };
        r.finish()?;
        Ok(out)
    }
}

/// The exit's answer to an attach (docs §3.5), authenticated with the exit attach key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachOk {
    /// The session.
    pub session: Uuid,
    /// The attached leg.
    pub leg: Leg,
    /// The attach's `seq`.
    pub seq: u64,
    /// The exit's next expected up-record counter (where the client resumes).
    pub next: u64,
    /// HMAC-SHA256 over everything before it.
    pub mac: [u8; MAC_LEN],
}

impl AttachOk {
    pub(crate) fn signed_part(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(ATTACH_OK_LEN);
        out.put_u8(ty::ATTACH_OK);
        out.put_slice(self.session.as_bytes());
        out.put_u8(self.leg.code());
        out.put_u64(self.seq);
        out.put_u64(self.next);
        out
    }

    /// The wire form.
    pub fn encode(&self) -> Bytes {
        let mut out = self.signed_part();
        out.put_slice(&self.mac);
        out.freeze()
    }

    /// Parse (checks lengths and fields, not the MAC).
    pub fn decode(msg: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(Bytes::copy_from_slice(msg));
        expect_type(&mut r, ty::ATTACH_OK)?;
        let out = AttachOk {
            session: Uuid::from_bytes(r.array()?),
            leg: Leg::from_code(r.u8()?)?,
            seq: r.u64()?,
            next: r.u64()?,
            mac: r.array()?,
        };
        r.finish()?;
        Ok(out)
    }
}

/// The exit's refusal of an unsupported version: the versions it speaks.
pub fn encode_version_refused() -> Bytes {
    let mut out = BytesMut::with_capacity(2 + SUPPORTED_VERSIONS.len());
    out.put_u8(ty::VERSION_REFUSED);
    out.put_u8(SUPPORTED_VERSIONS.len() as u8);
    out.put_slice(SUPPORTED_VERSIONS);
    out.freeze()
}

/// Parse a version refusal into the list of versions the exit speaks.
pub fn decode_version_refused(msg: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut r = Reader::new(Bytes::copy_from_slice(msg));
    expect_type(&mut r, ty::VERSION_REFUSED)?;
    let n = usize::from(r.u8()?);
    let versions = r.bytes(n)?.to_vec();
    r.finish()?;
    Ok(versions)
}

/// The counter of a record message, after checking its type and minimum length.
pub fn record_counter(msg: &[u8]) -> Result<u64, DecodeError> {
    if msg.len() < RECORD_OVERHEAD {
        return Err(DecodeError::Truncated {
            needed: RECORD_OVERHEAD - msg.len(),
        });
    }
    if msg[0] != ty::RECORD {
        return Err(DecodeError::UnknownType {
            what: "message",
            value: msg[0],
        });
    }
    let mut counter = [0u8; 8];
    counter.copy_from_slice(&msg[1..RECORD_HEADER_LEN]);
    Ok(u64::from_be_bytes(counter))
}

pub(crate) fn expect_type(r: &mut Reader, want: u8) -> Result<(), DecodeError> {
    match r.u8()? {
        t if t == want => Ok(()),
        value => Err(DecodeError::UnknownType {
            what: "message",
            value,
        }),
    }
}
