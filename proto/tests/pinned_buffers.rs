//! Issue 20 §2 ("pinned buffers"), from a hostile client's side: it sends thousands of
//! records that each carry a one-byte `Data` frame and padding to the record's full size,
//! on a stream whose destination never reads. Flow control charges one byte per record;
//! kept as a zero-copy slice, each byte would pin its whole ~64 KiB record buffer at the
//! receiver (4,000 records: ~250 MiB for 4,000 bytes of credit). The receiver copies small
//! payloads out of their records, so what it holds costs what it is.
//!
//! Alone in its test binary: it measures the process's resident memory.

use std::time::{Duration, Instant};

use proto::sim::{App, Pair, PairConfig};
use proto::{Connection, Destination, Event, StreamId, StreamKind};

const RECORDS: u64 = 4_000;

/// Resident memory of this process, in bytes (Linux).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

/// The hostile client: one byte of stream data per record, padded to the record's size.
#[derive(Default)]
struct Padder {
    id: Option<StreamId>,
    accepted: bool,
    written: u64,
}

impl App for Padder {
    fn poll(&mut self, _: Instant, client: &mut Connection, _: &mut Connection) {
        let id = match self.id {
            Some(id) => id,
            None => {
                let dest = Destination::Addr(([192, 0, 2, 1], 9).into());
                let id = client.open_stream(StreamKind::Tcp, dest).expect("open");
                self.id = Some(id);
                id
            }
        };
        // The exit's destination never reads: nothing of the stream is ever consumed.
        for _ in 0..64 {
            if !self.accepted || self.written == RECORDS {
                return;
            }
            match client.stream_write(id, &[7]) {
                Ok(1) => {
                    self.written += 1;
                    client.pad(usize::MAX).expect("pad");
                }
                _ => return,
            }
        }
    }

    fn client_event(&mut self, _: Instant, _: &mut Connection, event: Event) {
        if let Event::StreamAccepted { .. } = event {
            self.accepted = true;
        }
    }

    fn exit_event(&mut self, _: Instant, conn: &mut Connection, event: Event) {
        if let Event::StreamOpened { id, .. } = event {
            conn.accept_stream(id).expect("accept");
        }
    }
}

#[test]
fn tiny_padded_data_frames_cost_what_they_hold() {
    let mut pair = Pair::new(PairConfig::default()).expect("handshake");
    let mut app = Padder::default();
    let before = rss();
    pair.run(&mut app, Duration::from_secs(600), |a| a.written == RECORDS)
        .expect("every record is written");
    // Deliver what is still in flight.
    pair.run(&mut app, Duration::from_secs(2), |_| false).ok();
    let held = pair.exit.held_bytes();
    let grown = rss().saturating_sub(before);
    eprintln!(
        "{} one-byte records sent; the exit holds {held} stream bytes; this process grew by {} KiB",
        app.written,
        grown / 1024
    );
    assert_eq!(
        app.written, RECORDS,
        "the client could not send every record"
    );
    assert_eq!(
        held, RECORDS,
        "the exit holds every byte (its app never reads)"
    );
    // Both ends and the simulated wire live in this process: records in flight and
    // unacknowledged are bounded by the send budget (one session window). Pinned, the
    // 4,000 records alone would be ~250 MiB.
    assert!(
        grown < 96 << 20,
        "holding {held} bytes cost {} MiB",
        grown >> 20
    );
}
