//! Per-stream state and credit (docs/PROTOCOL.md §6): the receive half buffers what arrived
//! until the application reads it and grants credit as it does, within the session's budget
//! for stream credit; the send half only counts, because `Connection::stream_write` takes
//! no more than the credit allows.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::frame::{Destination, StreamKind};

/// The send half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendState {
    /// Bytes may be written.
    Open,
    /// `Fin` was queued; nothing more may be written.
    Finished,
}

/// One stream.
#[derive(Debug)]
pub(crate) struct Stream {
    pub kind: StreamKind,
    pub dest: Destination,
    pub send: SendState,
    /// Bytes written so far.
    pub sent: u64,
    /// The peer's credit: we may send up to this offset.
    pub send_max: u64,
    /// A write was cut short by credit; announce `StreamWritable` when credit returns.
    pub blocked: bool,
    pub recv: RecvHalf,
}

impl Stream {
    pub fn new(kind: StreamKind, dest: Destination, send_max: u32, window: u32) -> Self {
        Self {
            kind,
            dest,
            send: SendState::Open,
            sent: 0,
            send_max: u64::from(send_max),
            blocked: false,
            recv: RecvHalf::new(window),
        }
    }

    /// Stream credit left.
    pub fn credit(&self) -> u64 {
        self.send_max.saturating_sub(self.sent)
    }

    /// Both halves are done: the stream can be forgotten.
    pub fn is_done(&self) -> bool {
        self.send == SendState::Finished && self.recv.fin_delivered
    }
}

/// The receive half.
#[derive(Debug)]
pub(crate) struct RecvHalf {
    pub chunks: VecDeque<Bytes>,
    /// Bytes received so far (the next offset).
    pub received: u64,
    /// Bytes the application has read.
    pub consumed: u64,
    /// The credit granted: the peer may send up to this offset.
    pub max: u64,
    /// The current window (grows by auto-tuning).
    pub window: u64,
    pub last_grant: Option<Instant>,
    pub fin: bool,
    pub fin_delivered: bool,
    /// `StreamReadable` was announced and the application has not drained the stream since.
    pub readable_announced: bool,
    /// Since when unread bytes have waited without the application reading any: `None`
    /// while nothing is buffered. Old means the reader paused (§6.2).
    pub waiting_since: Option<Instant>,
}

impl RecvHalf {
    fn new(window: u32) -> Self {
        Self {
            chunks: VecDeque::new(),
            received: 0,
            consumed: 0,
            max: u64::from(window),
            window: u64::from(window),
            last_grant: None,
            fin: false,
            fin_delivered: false,
            readable_announced: false,
            waiting_since: None,
        }
    }

    /// Bytes waiting to be read.
    pub fn buffered(&self) -> u64 {
        self.received - self.consumed
    }

    /// Take up to `max` bytes from the front.
    pub fn pop(&mut self, max: usize) -> Option<Bytes> {
        let front = self.chunks.front_mut()?;
        let chunk = match front.len() > max {
            true => front.split_to(max),
            false => self.chunks.pop_front()?,
        };
        self.consumed += chunk.len() as u64;
        Some(chunk)
    }

    /// Credit granted and not yet read: the most this stream can hold (buffered bytes plus
    /// credit the peer has not used yet).
    pub fn outstanding(&self) -> u64 {
        self.max - self.consumed
    }

    /// The part of the outstanding credit above the stream's `base` window, which comes
    /// out of the session's pool (§6.2).
    pub fn excess(&self, base: u64) -> u64 {
        self.outstanding().saturating_sub(base)
    }

    /// If less than half the window is left, the new credit limit to announce. The window
    /// doubles (up to `max_window`) when the previous grant is less than two RTTs old: the
    /// reader keeps up and the window, not the reader, limits the flow. Whatever the
    /// target, the window is never less than `base` (the guaranteed minimum of a stream
    /// that is read) and never takes more than `room` above it out of the pool: a stream
    /// that comes back from a pause while others hold the pool gets a smaller window, not
    /// its old one.
    pub fn grant(&mut self, now: Instant, srtt: Duration, limits: GrantLimits) -> Option<u64> {
        let left = self.max.saturating_sub(self.consumed);
        if left > self.window / 2 {
            return None;
        }
        let mut target = self.window;
        if let Some(last) = self.last_grant
            && now.saturating_duration_since(last) < srtt * 2
        {
            target = (self.window * 2).min(limits.max_window).max(self.window);
        }
        self.window = target.min(limits.base + limits.room).max(limits.base);
        self.last_grant = Some(now);
        let max = self.consumed + self.window;
        if max <= self.max {
            // Credit cannot be taken back: the shrunken window takes effect as it is read.
            return None;
        }
        self.max = max;
        Some(self.max)
    }
}

/// What bounds one stream credit grant (§6.2).
#[derive(Debug, Clone, Copy)]
pub(crate) struct GrantLimits {
    /// The stream's guaranteed window: the initial `stream_window`.
    pub base: u64,
    /// The largest window auto-tuning may reach.
    pub max_window: u64,
    /// Pool credit free for this stream above `base`.
    pub room: u64,
}

/// Session-wide credit and the receive budget (docs §6.2).
#[derive(Debug)]
pub(crate) struct SessionFlow {
    /// Stream bytes sent, all streams.
    pub sent: u64,
    /// The peer's session credit.
    pub send_max: u64,
    /// Stream bytes received, all streams.
    pub received: u64,
    /// Stream bytes read by the application or discarded.
    pub consumed: u64,
    /// The session credit granted to the peer.
    pub recv_max: u64,
    /// The session window: session credit runs this far ahead of what was *received*, and
    /// the stream credit above each stream's initial window never adds up to more.
    pub window: u64,
    /// The sum of every open stream's outstanding credit above its initial window
    /// (`RecvHalf::excess`); never more than `window`.
    pub pool_used: u64,
}

impl SessionFlow {
    pub fn new(peer_window: u32, window: u32) -> Self {
        Self {
            sent: 0,
            send_max: u64::from(peer_window),
            received: 0,
            consumed: 0,
            recv_max: u64::from(window),
            window: u64::from(window),
            pool_used: 0,
        }
    }

    pub fn credit(&self) -> u64 {
        self.send_max.saturating_sub(self.sent)
    }

    /// If less than half the window is left, the new session credit to announce. Counted
    /// on receipt, not on reading: bytes that wait for a paused reader never hold back the
    /// session credit of the others (their memory is bounded by stream credit instead).
    pub fn grant(&mut self) -> Option<u64> {
        let left = self.recv_max.saturating_sub(self.received);
        if left > self.window / 2 {
            return None;
        }
        self.recv_max = self.received + self.window;
        Some(self.recv_max)
    }

    /// Received stream bytes not read yet.
    pub fn held(&self) -> u64 {
        self.received - self.consumed
    }
}
