//! The sending direction (docs/PROTOCOL.md §4, §7): frames are appended to an open record;
//! a full or flushed record is sealed in place and kept until acknowledged, so that it can
//! be sent again after a leg re-attaches. `cursor` is the next counter to put on the wire.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use crate::crypto::DirectionKey;
use crate::frame::Frame;
use crate::message::{RECORD_HEADER_LEN, ty};

/// Space kept free in every record for the `Ack` frame added when it is sealed.
pub(crate) const ACK_RESERVE: usize = 9;

/// Buffers of acknowledged records kept for the next records. Without them every record
/// got a fresh allocation, whose pages the allocator gave back to the kernel when the
/// record was acknowledged and faulted in again for the next one (~4 % of the exit's CPU
/// in a bulk download). Two cover a bulk flow (one being filled, one just acknowledged);
/// an idle session keeps at most this many.
const SPARE_RECORDS: usize = 2;

/// A sealed record waiting for its acknowledgement.
#[derive(Debug)]
pub(crate) struct Sent {
    pub bytes: Bytes,
    pub eliciting: bool,
    /// When it was last put on the wire.
    pub sent_at: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct Tx {
    key: DirectionKey,
    /// The counter the next sealed record gets.
    pub next_counter: u64,
    /// The first unacknowledged counter (`unacked[0]` has it).
    pub acked: u64,
    pub unacked: VecDeque<Sent>,
    pub unacked_bytes: usize,
    /// The next counter to transmit.
    pub cursor: u64,
    /// The open record: header space, then frames.
    builder: BytesMut,
    builder_eliciting: bool,
    /// The largest plaintext the peer accepts.
    max_plain: usize,
    /// Buffers of acknowledged records, cleared, for the next records.
    spare: Vec<BytesMut>,
    pub last_eliciting_sent: Instant,
    pub retransmitted: u64,
}

impl Tx {
    pub fn new(key: DirectionKey, max_plain: usize, now: Instant) -> Self {
        Self {
            key,
            next_counter: 0,
            acked: 0,
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            cursor: 0,
            builder: BytesMut::new(),
            builder_eliciting: false,
            max_plain,
            spare: Vec::new(),
            last_eliciting_sent: now,
            retransmitted: 0,
        }
    }

    /// Bytes of frames in the open record.
    pub fn open_len(&self) -> usize {
        self.builder.len().saturating_sub(RECORD_HEADER_LEN)
    }

    /// Room left in the open record (or in a new one if none is open).
    pub fn room(&self) -> usize {
        self.max_plain - ACK_RESERVE - self.open_len()
    }

    /// The largest record plaintext this side builds.
    pub fn max_plain(&self) -> usize {
        self.max_plain
    }

    /// Room in a fresh record.
    pub fn max_frame(&self) -> usize {
        self.max_plain - ACK_RESERVE
    }

    /// Bytes a record buffer holds: header, the largest plaintext, the AEAD tag.
    fn record_capacity(&self) -> usize {
        RECORD_HEADER_LEN + self.max_plain + 16
    }

    fn ensure_open(&mut self) {
        if self.builder.is_empty() {
            let want = self.record_capacity();
            if self.builder.capacity() < want
                && let Some(spare) = self.spare.pop()
            {
                self.builder = spare;
            }
            self.builder.reserve(want);
            self.builder.put_u8(ty::RECORD);
            self.builder.put_u64(0);
        }
    }

    /// Make room for `len` bytes of frames, sealing the open record if it is too full.
    /// Returns false when the frame cannot fit any record.
    fn make_room(&mut self, len: usize, ack_next: &mut AckState) -> bool {
        if len > self.max_frame() {
            return false;
        }
        if len > self.room() {
            self.seal(ack_next);
        }
        self.ensure_open();
        true
    }

    /// Append a frame (validated by the caller).
    pub fn push(&mut self, frame: &Frame, ack: &mut AckState) -> bool {
        if !self.make_room(frame.encoded_len(), ack) {
            return false;
        }
        frame.encode(&mut self.builder);
        self.builder_eliciting |= frame.is_ack_eliciting();
        true
    }

    /// Append a `Data` frame with as much of `data` as fits the open record (opening a new
    /// one if fewer than `min` bytes fit). Returns the bytes taken.
    pub fn push_data(&mut self, id: crate::StreamId, data: &[u8], ack: &mut AckState) -> usize {
        let header = crate::frame::DATA_HEADER_LEN;
        if self.room() < header + data.len().min(1024) {
            self.seal(ack);
        }
        self.ensure_open();
        let n = data.len().min(self.room() - header);
        crate::frame::encode_data_header(&mut self.builder, id, n);
        self.builder.put_slice(&data[..n]);
        self.builder_eliciting = true;
        n
    }

    /// Whether a record is open.
    pub fn has_open(&self) -> bool {
        !self.builder.is_empty()
    }

    /// Seal the open record (adding the pending `Ack`) and queue it. An empty builder with
    /// an ack due becomes an ack-only record.
    pub fn seal(&mut self, ack: &mut AckState) {
        if let Some(next) = ack.take() {
            self.ensure_open();
            Frame::Ack { next }.encode(&mut self.builder);
        }
        if self.builder.is_empty() {
            return;
        }
        let counter = self.next_counter;
        self.builder[1..RECORD_HEADER_LEN].copy_from_slice(&counter.to_be_bytes());
        self.key.seal(counter, &mut self.builder, RECORD_HEADER_LEN);
        // The whole buffer goes with the record (the builder keeps no share of it), so
        // that it is the record's alone once the leg writer is done with it (`recycle`).
        let bytes = std::mem::take(&mut self.builder).freeze();
        self.unacked_bytes += bytes.len();
        self.unacked.push_back(Sent {
            bytes,
            eliciting: std::mem::take(&mut self.builder_eliciting),
            sent_at: None,
        });
        self.next_counter += 1;
    }

    /// The next record to put on the wire, if any is queued past the cursor.
    pub fn next_to_send(&mut self, now: Instant) -> Option<Bytes> {
        let idx = usize::try_from(self.cursor.checked_sub(self.acked)?).ok()?;
        let sent = self.unacked.get_mut(idx)?;
        if sent.sent_at.is_some() {
            self.retransmitted += 1;
        }
        sent.sent_at = Some(now);
        if sent.eliciting {
            self.last_eliciting_sent = now;
        }
        self.cursor += 1;
        Some(sent.bytes.clone())
    }

    /// Drop records below `next` (acknowledged). Returns whether anything was freed.
    pub fn on_ack(&mut self, next: u64) -> bool {
        let mut freed = false;
        while self.acked < next {
            let Some(sent) = self.unacked.pop_front() else {
                break;
            };
            self.unacked_bytes -= sent.bytes.len();
            self.acked += 1;
            freed = true;
            self.recycle(sent.bytes);
        }
        self.cursor = self.cursor.max(self.acked);
        freed
    }

    /// Keep an acknowledged record's buffer for a later record, if nothing else holds it
    /// (a leg writer's copy, or another record sharing the allocation) and it is large
    /// enough.
    fn recycle(&mut self, bytes: Bytes) {
        if self.spare.len() >= SPARE_RECORDS {
            return;
        }
        if let Ok(mut buf) = bytes.try_into_mut()
            && buf.capacity() >= self.record_capacity()
        {
            buf.clear();
            self.spare.push(buf);
        }
    }

    /// When the oldest record on the wire was sent, if one is unacknowledged.
    pub fn oldest_in_flight(&self) -> Option<Instant> {
        self.unacked.front().and_then(|s| s.sent_at)
    }

    /// Bytes sealed or open, not yet acknowledged.
    pub fn pending_bytes(&self) -> usize {
        self.unacked_bytes + self.builder.len()
    }

    pub fn key_epoch(&self) -> u64 {
        self.key.epoch()
    }
}

/// What the receive direction owes the peer in acknowledgements.
#[derive(Debug, Default)]
pub(crate) struct AckState {
    /// The receiver's next expected counter.
    pub next: u64,
    /// The value last sent in an `Ack`.
    pub sent: u64,
    /// Ack-eliciting records received since the last `Ack`.
    pub eliciting: u32,
    /// When the pending acknowledgement is due at the latest.
    pub deadline: Option<Instant>,
}

impl AckState {
    /// The `Ack` value to send, if it says anything new; resets the timers.
    fn take(&mut self) -> Option<u64> {
        if self.next == self.sent {
            return None;
        }
        self.sent = self.next;
        self.eliciting = 0;
        self.deadline = None;
        Some(self.next)
    }

    /// Whether an `Ack` would say something new.
    pub fn owed(&self) -> bool {
        self.next != self.sent
    }

    /// An ack-eliciting record arrived (after any `Ack` its processing already sent).
    pub fn on_eliciting(&mut self, latest: Instant) {
        if self.owed() {
            self.eliciting += 1;
            self.deadline.get_or_insert(latest);
        }
    }

    /// An acknowledgement must go out now, even in a record of its own.
    pub fn due(&self, now: Instant) -> bool {
        self.next != self.sent
            && (self.eliciting >= super::ACK_EVERY || self.deadline.is_some_and(|d| d <= now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StreamId;
    use crate::crypto::Cipher;

    fn tx() -> Tx {
        let key = DirectionKey::new(Cipher::Aes256Gcm, [7; 32], 24);
        Tx::new(key, crate::MIN_MAX_RECORD as usize, Instant::now())
    }

    /// Fill one record with `byte`, seal it and put it on the wire (the writer's copy is
    /// returned); the address of its buffer.
    fn full_record(tx: &mut Tx, byte: u8) -> (*const u8, Bytes) {
        let mut ack = AckState::default();
        let data = vec![byte; tx.max_frame()];
        let taken = tx.push_data(StreamId(1), &data, &mut ack);
        assert!(taken > data.len() - 64, "one frame fills the record");
        tx.seal(&mut ack);
        let wire = tx.next_to_send(Instant::now()).expect("a record to send");
        (tx.unacked.back().expect("sealed").bytes.as_ptr(), wire)
    }

    #[test]
    fn acknowledged_records_lend_their_buffers_to_the_next_ones() {
        let mut tx = tx();
        let (a, wire_a) = full_record(&mut tx, 1);
        let (b, wire_b) = full_record(&mut tx, 2);
        assert_ne!(a, b);
        drop((wire_a, wire_b)); // written to the leg
        tx.on_ack(2);
        assert_eq!(tx.spare.len(), 2, "both buffers kept");
        let (c, _) = full_record(&mut tx, 3);
        let (d, _) = full_record(&mut tx, 4);
        let mut reused = [c, d];
        reused.sort();
        let mut freed = [a, b];
        freed.sort();
        assert_eq!(
            reused, freed,
            "both new records live in the acknowledged ones' buffers"
        );
        assert!(tx.spare.is_empty());
    }

    #[test]
    fn a_buffer_still_held_elsewhere_is_never_reused() {
        let mut tx = tx();
        let (a, wire_a) = full_record(&mut tx, 1);
        let before = wire_a.clone();
        tx.on_ack(1); // acknowledged while a leg writer still holds its copy
        assert!(tx.spare.is_empty(), "a shared buffer is not kept");
        let (b, _) = full_record(&mut tx, 2);
        let (c, _) = full_record(&mut tx, 3);
        assert!(b != a && c != a);
        assert_eq!(wire_a, before, "the held record was not overwritten");
        assert_eq!(wire_a.as_ptr(), a);
    }

    #[test]
    fn at_most_two_spare_buffers_are_kept() {
        let mut tx = tx();
        for i in 0..6 {
            drop(full_record(&mut tx, i).1);
        }
        tx.on_ack(6);
        assert_eq!(tx.spare.len(), SPARE_RECORDS);
        assert!(tx.unacked.is_empty());
    }
}
