//! The protocol layer's errors (STYLE.md §8): one enum, domain-named variants, each mapped
//! to what the caller must do — drop a message, reconnect a leg, or end the session — and to
//! the close code sent on the wire.

use crate::frame::CloseCode;

/// Bytes that do not form a valid message, record or frame. Never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before the structure did.
    #[error("truncated: needed {needed} more bytes")]
    Truncated {
        /// How many more bytes the structure needs.
        needed: usize,
    },
    /// A type byte that this version does not define.
    #[error("unknown {what} type 0x{value:02x}")]
    UnknownType {
        /// Which structure ("message", "frame", "stream kind", "address").
        what: &'static str,
        /// The byte seen.
        value: u8,
    },
    /// A field holds a value outside its allowed range.
    #[error("invalid {field}")]
    Invalid {
        /// The field's name in docs/PROTOCOL.md.
        field: &'static str,
    },
    /// Bytes left over after a fixed-size structure.
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// Everything that can go wrong in `proto`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A message could not be parsed.
    #[error("malformed message: {0}")]
    Decode(#[from] DecodeError),
    /// The cheap keyed check (mac1) of a handshake failed: random bytes or a wrong exit key.
    #[error("handshake check value is wrong (not for this exit, or random bytes)")]
    BadMac,
    /// The exact same handshake message was seen recently.
    #[error("replayed handshake message")]
    ReplayedHandshake,
    /// The Noise handshake failed (wrong keys, tampered message).
    #[error("handshake failed cryptographically")]
    HandshakeCrypto,
    /// The client's static key is not on the allow-list.
    #[error("client key is not allowed")]
    UnknownClient,
    /// The handshake timestamp is not newer than the newest seen for this key.
    #[error("handshake timestamp is not newer than the last accepted one")]
    StaleTimestamp,
    /// The handshake timestamp is too far ahead of this host's clock.
    #[error("handshake timestamp is {ahead_secs} s in the future")]
    FutureTimestamp {
        /// How far ahead, in whole seconds.
        ahead_secs: u64,
    },
    /// The handshake timestamp is too far behind this host's clock (an archived message,
    /// or a client clock that is wrong).
    #[error("handshake timestamp is {behind_secs} s in the past")]
    PastTimestamp {
        /// How far behind, in whole seconds.
        behind_secs: u64,
    },
    /// The peer speaks a protocol version we do not.
    #[error("protocol version {offered} is not supported (supported: {supported:?})")]
    UnsupportedVersion {
        /// What the peer offered.
        offered: u8,
        /// What we support.
        supported: Vec<u8>,
    },
    /// No record cipher both sides support.
    #[error("no common record cipher")]
    NoCommonCipher,
    /// Handshake parameters outside their allowed ranges.
    #[error("handshake parameter {0} out of range")]
    BadParameter(&'static str),
    /// A leg attach or attach acknowledgement whose proof does not verify.
    #[error("leg attach proof does not verify")]
    BadAttachProof,
    /// A leg attach for a different session than this one.
    #[error("leg attach names another session")]
    WrongSession,
    /// A leg attach whose sequence number is not newer than the last one (a replay).
    #[error("replayed or stale leg attach (seq {seq}, last accepted {last})")]
    StaleAttach {
        /// The sequence number received.
        seq: u64,
        /// The newest accepted before.
        last: u64,
    },
    /// The peer's attach claims to expect a record counter we never sent. (A resume point
    /// below what was already acknowledged is not an error: an older acknowledgement.)
    #[error("peer's next expected counter {claimed} was never sent (next to send: {sent})")]
    BadResumePoint {
        /// The claimed next expected counter.
        claimed: u64,
        /// The next counter we would send.
        sent: u64,
    },
    /// A record failed authentication: the leg carrying it is broken (tampering or a bug).
    #[error("record {counter} failed authentication")]
    RecordAuth {
        /// The record's counter.
        counter: u64,
    },
    /// A record arrived out of order (a gap): a message was lost or reordered on the leg.
    #[error("record counter gap: expected {expected}, got {got}")]
    CounterGap {
        /// The next counter we accept.
        expected: u64,
        /// The counter seen.
        got: u64,
    },
    /// A record larger than the negotiated maximum.
    #[error("record of {0} bytes exceeds the negotiated maximum")]
    RecordTooLarge(usize),
    /// The peer broke a protocol rule inside an authenticated record.
    #[error("protocol violation: {0}")]
    ProtocolViolation(&'static str),
    /// The peer sent more than it was granted.
    #[error("flow control violation on {0}")]
    FlowControl(&'static str),
    /// The operation names a stream that does not exist (any more).
    #[error("unknown stream {0}")]
    UnknownStream(u32),
    /// The operation does not fit the stream's state (write after fin, datagram on TCP…).
    #[error("stream {0} is not in a state that allows this")]
    StreamState(u32),
    /// Every stream id has been used.
    #[error("stream ids exhausted")]
    StreamIdsExhausted,
    /// The record counter space of a direction is exhausted: the session must end.
    #[error("record counters exhausted")]
    CountersExhausted,
    /// The session is closed.
    #[error("session closed")]
    Closed,
    /// A key is not a valid X25519 key.
    #[error("invalid key material")]
    BadKey,
}

impl Error {
    /// What the caller must do about this error.
    pub fn scope(&self) -> Scope {
        match self {
            Error::RecordAuth { .. } | Error::CounterGap { .. } | Error::RecordTooLarge(_) => {
                Scope::Leg
            }
            Error::ProtocolViolation(_)
            | Error::FlowControl(_)
            | Error::CountersExhausted
            | Error::BadResumePoint { .. }
            | Error::Closed => Scope::Session,
            Error::UnknownStream(_) | Error::StreamState(_) | Error::StreamIdsExhausted => {
                Scope::Stream
            }
            _ => Scope::Message,
        }
    }

    /// The close code this error maps to when it ends a session.
    pub fn close_code(&self) -> CloseCode {
        match self {
            Error::FlowControl(_) => CloseCode::FlowControl,
            Error::CountersExhausted => CloseCode::Internal,
            Error::UnsupportedVersion { .. } => CloseCode::Version,
            _ => CloseCode::ProtocolViolation,
        }
    }
}

/// How far an error reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Drop the offending message (and, before a session exists, the connection); no answer.
    Message,
    /// Close the leg that carried it and re-attach; the session and its streams live on.
    Leg,
    /// The session is over.
    Session,
    /// Only the named stream is affected.
    Stream,
}
