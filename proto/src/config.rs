//! Settings of one endpoint. Each side announces its receive limits in the handshake; the
//! sender obeys the receiver's (docs/PROTOCOL.md §3.3).

use std::time::Duration;

use crate::crypto::Cipher;

/// Smallest `max_record` either side may announce: a record must hold the largest DNS,
/// datagram or echo frame (65,535 bytes of payload) with its headers.
pub const MIN_MAX_RECORD: u32 = 65_600;
/// Smallest window either side may announce.
pub const MIN_WINDOW: u32 = 4_096;

/// Tunables of one endpoint. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Initial receive window granted to each new stream, in bytes; also the window every
    /// stream that is read is guaranteed, however many others are paused (PROTOCOL.md §6.2).
    pub stream_window: u32,
    /// Largest per-stream window that auto-tuning grows to (doubling while the reader keeps
    /// up), in bytes.
    pub max_stream_window: u32,
    /// Session-wide receive window: session credit runs this far ahead of the stream bytes
    /// received, and it is the pool that stream windows above `stream_window` share. Stream
    /// bytes buffered here never exceed open streams × `stream_window` + `session_window`.
    pub session_window: u32,
    /// Largest record plaintext accepted, in bytes (≥ `MIN_MAX_RECORD`).
    pub max_record: u32,
    /// Exit only: concurrent streams per session.
    pub max_streams: u32,
    /// Records per key epoch, as a power of two (8..=40): the record key ratchets forward
    /// every `2^rekey_shift` records. The smaller of both sides' values is used.
    pub rekey_shift: u8,
    /// Record ciphers in order of preference.
    pub ciphers: Vec<Cipher>,
    /// Client: allow the exit to send down records on the up leg while the down leg is
    /// missing. Exit: offer it. Used only when both sides say yes.
    pub fallback: bool,
    /// Exit: how long the down leg must be missing before falling back to the up leg.
    pub fallback_after: Duration,
    /// Send a ping after this long without sending anything that must be acknowledged.
    pub keepalive: Duration,
    /// A leg that delivers nothing, or whose records stay unacknowledged, this long is dead.
    pub leg_timeout: Duration,
    /// Longest delay before acknowledging received records.
    pub ack_delay: Duration,
    /// A session with no leg attached for this long ends.
    pub idle_ttl: Duration,
    /// Exit: how far in the future a handshake timestamp may be.
    pub max_future_skew: Duration,
    /// Exit: how far in the past a handshake timestamp may be (an init archived longer
    /// than this is refused even by an exit that forgot the client's newest timestamp).
    pub max_past_skew: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            stream_window: 256 * 1024,
            max_stream_window: 8 * 1024 * 1024,
            session_window: 64 * 1024 * 1024,
            max_record: MIN_MAX_RECORD,
            max_streams: 65_536,
            rekey_shift: 24,
            ciphers: vec![Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305],
            fallback: true,
            fallback_after: Duration::from_secs(3),
            keepalive: Duration::from_secs(5),
            leg_timeout: Duration::from_secs(15),
            ack_delay: Duration::from_millis(5),
            idle_ttl: Duration::from_secs(300),
            max_future_skew: Duration::from_secs(120),
            max_past_skew: Duration::from_secs(120),
        }
    }
}

impl Settings {
    /// The cipher set as the handshake's bit mask.
    pub(crate) fn cipher_mask(&self) -> u8 {
        self.ciphers.iter().fold(0, |m, c| m | c.bit())
    }
}

/// Limits the peer announced, which this side obeys when sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLimits {
    /// Initial credit of each stream.
    pub stream_window: u32,
    /// Initial session credit.
    pub session_window: u32,
    /// Largest record plaintext the peer accepts.
    pub max_record: u32,
    /// Concurrent streams the exit allows (client side only; 0 on the exit).
    pub max_streams: u32,
}

impl PeerLimits {
    /// Check announced values against the protocol minimums.
    pub(crate) fn check(self) -> Result<Self, crate::Error> {
        use crate::Error::BadParameter;
        if self.stream_window < MIN_WINDOW {
            return Err(BadParameter("stream_window"));
        }
        if self.session_window < self.stream_window {
            return Err(BadParameter("session_window"));
        }
        if self.max_record < MIN_MAX_RECORD {
            return Err(BadParameter("max_record"));
        }
        Ok(self)
    }
}
