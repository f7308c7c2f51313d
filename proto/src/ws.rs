//! WebSocket framing of a leg transport (RFC 6455 §5), sans-IO. After the HTTP upgrade a
//! leg driver reads with a [`Decoder`] and writes frames made by [`header`] (a server's
//! frames: the header, then the payload as it is) or [`put_masked`] (a client's frames,
//! which RFC 6455 requires to be masked). docs/PROTOCOL.md §2 says what the messages carry.
//!
//! The calling loop of a reader:
//!
//! ```text
//! let mut buf = bytes_read_past_the_upgrade;      // BytesMut
//! loop {
//!     match decoder.decode(&mut buf)? {
//!         Decoded::Need(n) => { buf.reserve(n.reserve); read at most n.limit bytes into buf }
//!         Decoded::Incoming(Incoming::Message(record)) => hand it on (decrypted in place)
//!         Decoded::Incoming(Incoming::Ping(payload)) => queue a pong carrying `payload`
//!         Decoded::Incoming(Incoming::Close(close)) => answer with a close, stop reading
//!     }
//! }
//! ```
//!
//! A message's payload is read straight into the buffer it is handed out in: nothing is
//! zero-filled or copied on the way (`Need::limit` keeps a read from running past a large
//! frame into the next one, which would otherwise have to be moved to a new buffer).

use bytes::{Buf, Bytes, BytesMut};

/// The longest frame header: 2 bytes, a 64-bit length and a masking key.
pub const MAX_HEADER_LEN: usize = 14;
/// The largest payload of a control frame (close, ping, pong).
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// The close code reported for a close frame without a status (RFC 6455 §7.1.5).
pub const CLOSE_NO_STATUS: u16 = 1005;
/// The close code of a normal closure (RFC 6455 §7.4.1).
pub const CLOSE_NORMAL: u16 = 1000;

/// Which end of the WebSocket this is: a client masks what it sends and must receive
/// unmasked frames; a server the opposite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The end that sent the upgrade request (vpn-client).
    Client,
    /// The end that accepted it (exit-node, or a CDN in front of it).
    Server,
}

/// A frame's opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// The next fragment of a message.
    Continuation,
    /// A text message (not used by legs).
    Text,
    /// A binary message: one leg message.
    Binary,
    /// The closing handshake.
    Close,
    /// A ping, to be answered with a pong.
    Ping,
    /// A pong.
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Result<OpCode, WsError> {
        Ok(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            other => return Err(WsError::UnknownOpcode(other)),
        })
    }

    fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// A frame or message the peer must not send; the transport is closed on any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WsError {
    /// RSV1–3 set, but no extension was negotiated.
    #[error("reserved bits set in a frame header")]
    ReservedBits,
    /// An opcode RFC 6455 does not define.
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    /// A close, ping or pong without FIN.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A control frame longer than 125 bytes.
    #[error("control frame of {0} bytes (at most 125)")]
    ControlTooLong(u64),
    /// A client's frame without a mask.
    #[error("unmasked frame from a client")]
    Unmasked,
    /// A server's frame with a mask.
    #[error("masked frame from a server")]
    Masked,
    /// A 64-bit length with the most significant bit set.
    #[error("invalid 64-bit frame length")]
    BadLength,
    /// A message (all its fragments so far) over the limit.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// The message's length so far, with this frame.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A continuation frame with no fragmented message to continue.
    #[error("continuation frame without a message to continue")]
    StrayContinuation,
    /// A new data message while a fragmented one is unfinished.
    #[error("new message before the fragmented one ended")]
    UnfinishedMessage,
    /// A text message: legs carry binary messages only.
    #[error("text message (a leg carries binary messages only)")]
    Text,
    /// A close frame whose payload is a single byte.
    #[error("close frame with a 1-byte payload")]
    BadClose,
}

/// How much to read before calling [`Decoder::decode`] again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// Spare capacity to reserve in the buffer first.
    pub reserve: usize,
    /// Read at most this many bytes (the rest of a large frame), or `usize::MAX`.
    pub limit: usize,
}

/// A close frame's status and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// The status code, [`CLOSE_NO_STATUS`] if the frame had none.
    pub code: u16,
    /// The reason (lossy UTF-8).
    pub reason: String,
}

/// A message or control frame for the leg's driver (pongs need nothing and are dropped).
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A whole binary message, unmasked, in a buffer of its own.
    Message(BytesMut),
    /// A ping: answer with a pong carrying this payload.
    Ping(Bytes),
    /// The peer closes: answer with a close frame and stop reading.
    Close(Close),
}

/// What [`Decoder::decode`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Nothing complete yet: read more.
    Need(Need),
    /// A message, ping or close.
    Incoming(Incoming),
}

#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    len: u64,
}

/// Turns received bytes into messages and control frames; checks every frame.
#[derive(Debug)]
pub struct Decoder {
    side: Side,
    max_message: usize,
    read_chunk: usize,
    /// The header of the frame whose payload is not complete yet.
    frame: Option<Header>,
    /// A fragmented message being put together.
    partial: Option<BytesMut>,
    /// The length of the last data frame: the next header read reserves room for one as
    /// large, so a run of large messages lands in buffers that need not grow.
    last_data: usize,
}

impl Decoder {
    /// A decoder for `side`'s end that refuses messages over `max_message` bytes and asks
    /// for reads of `read_chunk` bytes while it looks for a header or a small payload.
    pub fn new(side: Side, max_message: usize, read_chunk: usize) -> Decoder {
        Decoder {
            side,
            max_message,
            read_chunk: read_chunk.max(MAX_HEADER_LEN),
            frame: None,
            partial: None,
            last_data: 0,
        }
    }

    /// Refuse messages over `max_message` bytes from now on (e.g. a small limit until the
    /// peer has authenticated, the configured one after).
    pub fn set_max_message(&mut self, max_message: usize) {
        self.max_message = max_message;
    }

    /// The next message or control frame in `buf` (consumed from its front), or how much to
    /// read. After an error the transport must be closed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, WsError> {
        loop {
            let header = match self.frame {
                Some(h) => h,
                None => match parse_header(buf)? {
                    None => {
                        let next_frame = self.last_data.saturating_add(MAX_HEADER_LEN);
                        return Ok(Decoded::Need(Need {
                            reserve: self.read_chunk.max(next_frame),
                            limit: usize::MAX,
                        }));
                    }
                    Some(h) => {
                        self.check(&h)?;
                        if !h.opcode.is_control() {
                            // Invariant: `check` bounded the length by `max_message`.
                            self.last_data = usize::try_from(h.len).unwrap_or(usize::MAX);
                        }
                        self.frame = Some(h);
                        h
                    }
                },
            };
            // Invariant: `check` bounded the length by `max_message` (a usize).
            let len = usize::try_from(header.len).unwrap_or(usize::MAX);
            if buf.len() < len {
                let rest = len - buf.len();
                let need = if rest >= self.read_chunk {
                    Need {
                        reserve: rest,
                        limit: rest,
                    }
                } else {
                    Need {
                        reserve: self.read_chunk,
                        limit: usize::MAX,
                    }
                };
                return Ok(Decoded::Need(need));
            }
            self.frame = None;
            let mut payload = buf.split_to(len);
            if let Some(key) = header.mask {
                apply_mask(&mut payload, key);
            }
            // `check` refused text, stray continuations and interleaved messages.
            match header.opcode {
                OpCode::Binary if header.fin => {
                    return Ok(Decoded::Incoming(Incoming::Message(payload)));
                }
                OpCode::Binary => self.partial = Some(payload),
                OpCode::Continuation => {
                    let Some(partial) = self.partial.as_mut() else {
                        return Err(WsError::StrayContinuation);
                    };
                    partial.extend_from_slice(&payload);
                    if header.fin {
                        let whole = self.partial.take().unwrap_or_default();
                        return Ok(Decoded::Incoming(Incoming::Message(whole)));
                    }
                }
                OpCode::Text => return Err(WsError::Text),
                OpCode::Ping => return Ok(Decoded::Incoming(Incoming::Ping(payload.freeze()))),
                OpCode::Pong => {}
                OpCode::Close => {
                    let close = parse_close(&payload)?;
                    return Ok(Decoded::Incoming(Incoming::Close(close)));
                }
            }
        }
    }

    fn check(&self, h: &Header) -> Result<(), WsError> {
        match (self.side, h.mask.is_some()) {
            (Side::Server, false) => return Err(WsError::Unmasked),
            (Side::Client, true) => return Err(WsError::Masked),
            _ => {}
        }
        if h.opcode.is_control() {
            if !h.fin {
                return Err(WsError::FragmentedControl);
            }
            if h.len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(WsError::ControlTooLong(h.len));
            }
            return Ok(());
        }
        let before = match (h.opcode, &self.partial) {
            (OpCode::Continuation, Some(p)) => p.len() as u64,
            (OpCode::Continuation, None) => return Err(WsError::StrayContinuation),
            (_, Some(_)) => return Err(WsError::UnfinishedMessage),
            (OpCode::Text, None) => return Err(WsError::Text),
            _ => 0,
        };
        let len = before.saturating_add(h.len);
        if len > self.max_message as u64 {
            return Err(WsError::TooLong {
                len,
                max: self.max_message,
            });
        }
        Ok(())
    }
}

/// Parse a frame header at the front of `buf` and consume it; `None` if incomplete.
fn parse_header(buf: &mut BytesMut) -> Result<Option<Header>, WsError> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(WsError::ReservedBits);
    }
    let opcode = OpCode::from_bits(b0 & 0x0F)?;
    let masked = b1 & 0x80 != 0;
    let extra = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let total = 2 + extra + if masked { 4 } else { 0 };
    if buf.len() < total {
        return Ok(None);
    }
    buf.advance(2);
    let len = match extra {
        2 => u64::from(buf.get_u16()),
        8 => buf.get_u64(),
        _ => u64::from(b1 & 0x7F),
    };
    if len >> 63 != 0 {
        return Err(WsError::BadLength);
    }
    let mask = masked.then(|| buf.get_u32().to_be_bytes());
    Ok(Some(Header {
        fin: b0 & 0x80 != 0,
        opcode,
        mask,
        len,
    }))
}

fn parse_close(payload: &[u8]) -> Result<Close, WsError> {
    match payload {
        [] => Ok(Close {
            code: CLOSE_NO_STATUS,
            reason: String::new(),
        }),
        [_] => Err(WsError::BadClose),
        [hi, lo, reason @ ..] => Ok(Close {
            code: u16::from_be_bytes([*hi, *lo]),
            reason: String::from_utf8_lossy(reason).into_owned(),
        }),
    }
}

/// An encoded frame header.
#[derive(Debug, Clone, Copy)]
pub struct FrameHeader {
    bytes: [u8; MAX_HEADER_LEN],
    len: u8,
}

impl FrameHeader {
    /// The header's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// The header of a final (unfragmented) frame of `opcode` carrying `len` payload bytes,
/// with masking key `mask` (a client's frames) or none (a server's).
pub fn header(opcode: OpCode, len: usize, mask: Option<[u8; 4]>) -> FrameHeader {
    let mut bytes = [0u8; MAX_HEADER_LEN];
    bytes[0] = 0x80 | opcode.bits();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut at = 2;
    if len < 126 {
        // Invariant: len < 126 fits in the 7 length bits.
        bytes[1] = mask_bit | len as u8;
    } else if let Ok(short) = u16::try_from(len) {
        bytes[1] = mask_bit | 126;
        bytes[2..4].copy_from_slice(&short.to_be_bytes());
        at = 4;
    } else {
        bytes[1] = mask_bit | 127;
        bytes[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        at = 10;
    }
    if let Some(key) = mask {
        bytes[at..at + 4].copy_from_slice(&key);
        at += 4;
    }
    FrameHeader {
        bytes,
        // Invariant: at ≤ 14.
        len: at as u8,
    }
}

/// Append a final frame of `opcode` masked with `key` (a client's frame) to `out`: the
/// header, then `payload` masked.
pub fn put_masked(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], key: [u8; 4]) {
    out.extend_from_slice(header(opcode, payload.len(), Some(key)).as_bytes());
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], key);
}

/// XOR `buf` with the masking key `key`, starting at the key's first byte (masking and
/// unmasking are the same operation).
pub fn apply_mask(buf: &mut [u8], key: [u8; 4]) {
    let word = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(w) ^ word).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so at the key's first byte.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// The payload of a close frame with `code` and `reason` (cut to fit 125 bytes, at a
/// character boundary).
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = Vec::with_capacity(2 + end);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..end]);
    out
}

#[cfg(test)]
#[path = "ws_tests.rs"]
mod tests;
