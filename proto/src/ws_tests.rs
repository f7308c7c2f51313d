use std::io::{Cursor, Read, Write};

use bytes::BytesMut;
use proptest::prelude::*;
use tungstenite::protocol::{Role, WebSocket};
use tungstenite::{Message, Utf8Bytes};

use super::*;

const MAX: usize = 100_000;
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Feed `wire` to a fresh decoder in pieces of `step` bytes, honouring `Need::limit`;
/// everything it decodes, or the first error.
fn decode_all(side: Side, wire: &[u8], step: usize) -> Result<Vec<Incoming>, WsError> {
    let mut dec = Decoder::new(side, MAX, 64);
    let mut buf = BytesMut::new();
    let mut at = 0;
    let mut out = Vec::new();
    loop {
        match dec.decode(&mut buf)? {
            Decoded::Need(need) => {
                if at == wire.len() {
                    return Ok(out);
                }
                let n = step.min(need.limit).min(wire.len() - at);
                buf.reserve(need.reserve);
                buf.extend_from_slice(&wire[at..at + n]);
                at += n;
            }
            Decoded::Incoming(incoming) => out.push(incoming),
        }
    }
}

/// A frame by hand: `b0` (FIN, RSV, opcode), the payload, masked with `mask` if any.
fn raw(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![b0];
    let bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mut body = payload.to_vec();
    if let Some(key) = mask {
        out.extend_from_slice(&key);
        for (i, b) in body.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    out.extend_from_slice(&body);
    out
}

fn message(bytes: &[u8]) -> Incoming {
    Incoming::Message(BytesMut::from(bytes))
}

fn decoded(bytes: &[u8]) -> Decoded {
    Decoded::Incoming(message(bytes))
}

/// An in-memory socket for tungstenite: reads from `input`, writes to `output`.
struct Pipe {
    input: Cursor<Vec<u8>>,
    output: Vec<u8>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.input.read(buf)? {
            0 => Err(std::io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn tungstenite_peer(role: Role, input: Vec<u8>) -> WebSocket<Pipe> {
    let pipe = Pipe {
        input: Cursor::new(input),
        output: Vec::new(),
    };
    WebSocket::from_raw_socket(pipe, role, None)
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

const SIZES: [usize; 8] = [0, 1, 125, 126, 127, 65_535, 65_536, 99_999];

#[test]
fn decodes_what_a_tungstenite_client_sends() {
    let mut client = tungstenite_peer(Role::Client, Vec::new());
    for n in SIZES {
        client.send(Message::binary(payload(n))).unwrap();
    }
    client.send(Message::Ping(vec![1, 2, 3].into())).unwrap();
    let wire = std::mem::take(&mut client.get_mut().output);
    for step in [1, 7, 4096, usize::MAX] {
        let got = decode_all(Side::Server, &wire, step).unwrap();
        let mut want: Vec<Incoming> = SIZES.iter().map(|&n| message(&payload(n))).collect();
        want.push(Incoming::Ping(vec![1, 2, 3].into()));
        assert_eq!(got, want, "step {step}");
    }
}

#[test]
fn decodes_what_a_tungstenite_server_sends() {
    let mut server = tungstenite_peer(Role::Server, Vec::new());
    for n in SIZES {
        server.send(Message::binary(payload(n))).unwrap();
    }
    let wire = std::mem::take(&mut server.get_mut().output);
    let got = decode_all(Side::Client, &wire, 1000).unwrap();
    let want: Vec<Incoming> = SIZES.iter().map(|&n| message(&payload(n))).collect();
    assert_eq!(got, want);
}

#[test]
fn a_tungstenite_server_reads_our_masked_frames() {
    let mut wire = Vec::new();
    for (i, n) in SIZES.into_iter().enumerate() {
        let key = [i as u8, 0x5a, 0xc3, 0x11];
        put_masked(&mut wire, OpCode::Binary, &payload(n), key);
    }
    put_masked(&mut wire, OpCode::Ping, b"hi", KEY);
    let mut server = tungstenite_peer(Role::Server, wire);
    for n in SIZES {
        assert_eq!(server.read().unwrap(), Message::binary(payload(n)));
    }
    assert_eq!(server.read().unwrap(), Message::Ping(b"hi".to_vec().into()));
}

#[test]
fn a_tungstenite_client_reads_our_unmasked_frames_and_close() {
    let mut wire = Vec::new();
    for n in SIZES {
        let body = payload(n);
        wire.extend_from_slice(header(OpCode::Binary, n, None).as_bytes());
        wire.extend_from_slice(&body);
    }
    let close = close_payload(4404, "unknown session");
    wire.extend_from_slice(header(OpCode::Close, close.len(), None).as_bytes());
    wire.extend_from_slice(&close);
    let mut client = tungstenite_peer(Role::Client, wire);
    for n in SIZES {
        assert_eq!(client.read().unwrap(), Message::binary(payload(n)));
    }
    match client.read().unwrap() {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 4404);
            assert_eq!(frame.reason, Utf8Bytes::from_static("unknown session"));
        }
        other => panic!("expected a close, got {other:?}"),
    }
}

#[test]
fn fragments_are_joined_around_control_frames() {
    let mut wire = raw(0x02, b"ab", Some(KEY));
    wire.extend(raw(0x89, b"p", Some(KEY)));
    wire.extend(raw(0x00, b"cd", Some(KEY)));
    wire.extend(raw(0x8A, b"", Some(KEY)));
    wire.extend(raw(0x80, b"ef", Some(KEY)));
    wire.extend(raw(0x82, b"next", Some(KEY)));
    for step in [1, 3, usize::MAX] {
        let got = decode_all(Side::Server, &wire, step).unwrap();
        assert_eq!(
            got,
            vec![
                Incoming::Ping(b"p".to_vec().into()),
                message(b"abcdef"),
                message(b"next"),
            ]
        );
    }
}

#[test]
fn close_frames_report_their_status() {
    let got = decode_all(Side::Client, &raw(0x88, b"", None), 1).unwrap();
    assert_eq!(
        got,
        vec![Incoming::Close(Close {
            code: CLOSE_NO_STATUS,
            reason: String::new()
        })]
    );
    let got = decode_all(
        Side::Client,
        &raw(0x88, &close_payload(1001, "bye"), None),
        2,
    );
    assert_eq!(
        got.unwrap(),
        vec![Incoming::Close(Close {
            code: 1001,
            reason: "bye".into()
        })]
    );
    let err = decode_all(Side::Client, &raw(0x88, &[3], None), 9).unwrap_err();
    assert_eq!(err, WsError::BadClose);
}

#[test]
fn close_payload_fits_a_control_frame_at_a_char_boundary() {
    let long = "é".repeat(100);
    let p = close_payload(1000, &long);
    assert!(p.len() <= MAX_CONTROL_PAYLOAD);
    assert!(std::str::from_utf8(&p[2..]).is_ok());
    assert_eq!(p.len(), 2 + 122);
}

#[test]
fn every_bad_frame_is_refused() {
    let masked = Some(KEY);
    let cases: Vec<(Side, Vec<u8>, WsError)> = vec![
        (Side::Server, raw(0xC2, b"x", masked), WsError::ReservedBits),
        (
            Side::Server,
            raw(0x83, b"x", masked),
            WsError::UnknownOpcode(3),
        ),
        (
            Side::Server,
            raw(0x8B, b"x", masked),
            WsError::UnknownOpcode(0xB),
        ),
        (Side::Server, raw(0x82, b"x", None), WsError::Unmasked),
        (Side::Client, raw(0x82, b"x", masked), WsError::Masked),
        (
            Side::Server,
            raw(0x09, b"x", masked),
            WsError::FragmentedControl,
        ),
        (
            Side::Server,
            raw(0x89, &[0; 126], masked),
            WsError::ControlTooLong(126),
        ),
        (
            Side::Server,
            raw(0x80, b"x", masked),
            WsError::StrayContinuation,
        ),
        (Side::Server, raw(0x81, b"x", masked), WsError::Text),
        (
            Side::Server,
            [raw(0x02, b"a", masked), raw(0x82, b"b", masked)].concat(),
            WsError::UnfinishedMessage,
        ),
        (
            Side::Server,
            [raw(0x02, b"a", masked), raw(0x01, b"b", masked)].concat(),
            WsError::UnfinishedMessage,
        ),
    ];
    for (side, wire, want) in cases {
        for step in [1, usize::MAX] {
            assert_eq!(
                decode_all(side, &wire, step),
                Err(want.clone()),
                "{wire:02x?}"
            );
        }
    }
}

#[test]
fn an_oversized_message_is_refused_from_its_header() {
    // Only the header arrives: the limit is enforced before the payload is awaited.
    let head = header(OpCode::Binary, MAX + 1, None);
    let err = decode_all(Side::Client, head.as_bytes(), 1).unwrap_err();
    assert_eq!(
        err,
        WsError::TooLong {
            len: MAX as u64 + 1,
            max: MAX
        }
    );
    // Fragments count together.
    let half = vec![0u8; MAX / 2 + 1];
    let wire = [raw(0x02, &half, None), raw(0x80, &half, None)].concat();
    let err = decode_all(Side::Client, &wire, usize::MAX).unwrap_err();
    assert!(matches!(err, WsError::TooLong { .. }), "{err:?}");
    // A 64-bit length with the top bit set.
    let mut wire = vec![0x82, 127];
    wire.extend_from_slice(&u64::MAX.to_be_bytes());
    let err = decode_all(Side::Client, &wire, 1).unwrap_err();
    assert_eq!(err, WsError::BadLength);
}

#[test]
fn a_large_frame_is_read_to_its_end_and_no_further() {
    let mut dec = Decoder::new(Side::Client, MAX, 1024);
    let body = payload(50_000);
    let mut wire = raw(0x82, &body, None);
    wire.extend(raw(0x82, b"second", None));
    let mut buf = BytesMut::from(&wire[..1000]);
    let Decoded::Need(need) = dec.decode(&mut buf).unwrap() else {
        panic!("the frame is incomplete");
    };
    let rest = 50_000 - (1000 - 4);
    assert_eq!(
        need,
        Need {
            reserve: rest,
            limit: rest
        }
    );
    buf.extend_from_slice(&wire[1000..1000 + rest]);
    assert_eq!(dec.decode(&mut buf).unwrap(), decoded(&body));
    assert!(buf.is_empty(), "nothing of the next frame was read");
    // The next header read makes room for another frame as large, so its payload can be
    // read into the same allocation without growing it.
    let Decoded::Need(need) = dec.decode(&mut buf).unwrap() else {
        panic!("nothing buffered");
    };
    assert_eq!(need.reserve, 50_000 + MAX_HEADER_LEN);
    assert_eq!(need.limit, usize::MAX);
    buf.extend_from_slice(&wire[1000 + rest..]);
    assert_eq!(dec.decode(&mut buf).unwrap(), decoded(b"second"));
    // After a small message, header reads go back to the small chunk.
    let Decoded::Need(need) = dec.decode(&mut buf).unwrap() else {
        panic!("nothing buffered");
    };
    assert_eq!(need.reserve, 1024);
}

#[test]
fn headers_of_every_length_class_round_trip() {
    for n in SIZES {
        for mask in [None, Some(KEY)] {
            let h = header(OpCode::Binary, n, mask);
            let mut want = raw(0x82, &payload(n), mask);
            want.truncate(h.as_bytes().len());
            assert_eq!(h.as_bytes(), &want[..], "{n} {mask:?}");
        }
    }
}

proptest! {
    #[test]
    fn masked_messages_survive_any_split(
        sizes in proptest::collection::vec(0usize..3000, 1..6),
        key in any::<[u8; 4]>(),
        step in 1usize..5000,
    ) {
        let mut wire = Vec::new();
        for &n in &sizes {
            put_masked(&mut wire, OpCode::Binary, &payload(n), key);
        }
        let got = decode_all(Side::Server, &wire, step).unwrap();
        let want: Vec<Incoming> = sizes.iter().map(|&n| message(&payload(n))).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn apply_mask_matches_the_rfc_definition(data in proptest::collection::vec(any::<u8>(), 0..100), key in any::<[u8; 4]>()) {
        let mut fast = data.clone();
        apply_mask(&mut fast, key);
        let slow: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
        prop_assert_eq!(fast, slow);
    }
}
