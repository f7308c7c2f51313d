//! The leg WebSocket decoder (`proto::ws`, what a CDN or a hostile peer can send after the
//! upgrade): arbitrary bytes never panic, never ask for more than a frame's worth of
//! buffer, never yield a message over the limit, and give the same messages and the same
//! error however the bytes are split into reads.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use proto::ws::{Decoded, Decoder, Incoming, Side};

const MAX: usize = 4096;
const CHUNK: usize = 64;

/// Decode `wire` fed `step` bytes at a time (honouring `Need::limit`).
fn run(side: Side, wire: &[u8], step: usize) -> (Vec<Incoming>, Option<proto::ws::WsError>) {
    let mut dec = Decoder::new(side, MAX, CHUNK);
    let mut buf = BytesMut::new();
    let (mut at, mut out) = (0, Vec::new());
    loop {
        match dec.decode(&mut buf) {
            Err(e) => return (out, Some(e)),
            Ok(Decoded::Need(need)) => {
                assert!(need.reserve <= CHUNK.max(MAX + proto::ws::MAX_HEADER_LEN), "{need:?}");
                assert!(need.limit > 0);
                if at == wire.len() {
                    return (out, None);
                }
                let n = step.min(need.limit).min(wire.len() - at);
                buf.extend_from_slice(&wire[at..at + n]);
                at += n;
            }
            Ok(Decoded::Incoming(Incoming::Message(m))) => {
                assert!(m.len() <= MAX);
                out.push(Incoming::Message(m));
            }
            Ok(Decoded::Incoming(other)) => out.push(other),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, wire)) = data.split_first() else {
        return;
    };
    let side = if first & 1 == 0 { Side::Server } else { Side::Client };
    let step = usize::from(first >> 1) + 1;
    let whole = run(side, wire, usize::MAX);
    let pieces = run(side, wire, step);
    assert_eq!(whole, pieces, "split into reads of {step}");
});
