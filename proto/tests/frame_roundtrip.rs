//! Frame codec round trips (STYLE.md §5, docs/PROTOCOL.md §5): every valid frame encodes to
//! exactly `encoded_len` bytes and decodes back to itself, alone and in sequences; and the
//! byte layouts of PROTOCOL.md §5.2 hold byte for byte.

use std::net::{IpAddr, SocketAddr};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proto::frame::{MAX_REASON_LEN, decode_all};
use proto::{CloseCode, Destination, Frame, ResetCode, StreamId, StreamKind};

fn payload(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn dest() -> impl Strategy<Value = Destination> {
    prop_oneof![
        (any::<IpAddr>(), any::<u16>())
            .prop_map(|(ip, port)| Destination::Addr(SocketAddr::new(ip, port))),
        ("[a-z0-9_.-]{1,253}", any::<u16>())
            .prop_map(|(n, p)| Destination::domain(&n, p).expect("valid domain")),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    let id = any::<u32>().prop_map(StreamId);
    prop_oneof![
        (1usize..300).prop_map(Frame::Padding),
        any::<u64>().prop_map(|id| Frame::Ping { id }),
        any::<u64>().prop_map(|id| Frame::Pong { id }),
        any::<u64>().prop_map(|next| Frame::Ack { next }),
        (id.clone(), any::<bool>(), dest()).prop_map(|(id, udp, dest)| Frame::Open {
            id,
            kind: if udp {
                StreamKind::Udp
            } else {
                StreamKind::Tcp
            },
            dest
        }),
        id.clone().prop_map(|id| Frame::Accept { id }),
        (id.clone(), payload(2000)).prop_map(|(id, data)| Frame::Data { id, data }),
        id.clone().prop_map(|id| Frame::Fin { id }),
        (id.clone(), any::<u16>()).prop_map(|(id, c)| Frame::Reset {
            id,
            code: ResetCode::from_code(c)
        }),
        (id.clone(), any::<u64>()).prop_map(|(id, max)| Frame::MaxStreamData { id, max }),
        any::<u64>().prop_map(|max| Frame::MaxData { max }),
        (any::<u32>(), payload(600)).prop_map(|(id, msg)| Frame::DnsQuery { id, msg }),
        (any::<u32>(), payload(600)).prop_map(|(id, msg)| Frame::DnsResponse { id, msg }),
        (id, payload(600)).prop_map(|(id, data)| Frame::Datagram { id, data }),
        (any::<u32>(), any::<IpAddr>(), payload(600))
            .prop_map(|(id, dest, data)| Frame::EchoRequest { id, dest, data }),
        (any::<u32>(), payload(600)).prop_map(|(id, data)| Frame::EchoReply { id, data }),
        (any::<u16>(), "\\PC{0,60}").prop_map(|(c, reason)| Frame::Close {
            code: CloseCode::from_code(c),
            reason
        }),
    ]
}

/// Consecutive padding frames decode as one: merge them the way the decoder does.
fn normalise(frames: Vec<Frame>) -> Vec<Frame> {
    let mut out: Vec<Frame> = Vec::new();
    for f in frames {
        match (out.last_mut(), &f) {
            (Some(Frame::Padding(a)), Frame::Padding(b)) => *a += b,
            _ => out.push(f),
        }
    }
    out
}

proptest! {
    #[test]
    fn frames_round_trip(frames in proptest::collection::vec(frame(), 0..12)) {
        let frames: Vec<Frame> = frames
            .into_iter()
            .filter(|f| !matches!(f, Frame::Close { reason, .. } if reason.len() > MAX_REASON_LEN))
            .collect();
        let mut buf = BytesMut::new();
        for f in &frames {
            prop_assert!(f.validate().is_ok());
            let before = buf.len();
            f.encode(&mut buf);
            prop_assert_eq!(buf.len() - before, f.encoded_len());
        }
        prop_assert_eq!(decode_all(buf.freeze()), Ok(normalise(frames)));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_all(Bytes::from(bytes));
    }
}

fn encode(f: &Frame) -> Vec<u8> {
    let mut buf = BytesMut::new();
    f.encode(&mut buf);
    buf.to_vec()
}

/// The layouts of docs/PROTOCOL.md §5.2, byte for byte.
#[test]
fn layouts_match_the_specification() {
    let id = StreamId(0x0102_0304);
    let cases: Vec<(Frame, Vec<u8>)> = vec![
        (Frame::Padding(3), vec![0, 0, 0]),
        (Frame::Ping { id: 7 }, vec![1, 0, 0, 0, 0, 0, 0, 0, 7]),
        (Frame::Pong { id: 7 }, vec![2, 0, 0, 0, 0, 0, 0, 0, 7]),
        (
            Frame::Ack { next: 0x0a0b },
            vec![3, 0, 0, 0, 0, 0, 0, 0x0a, 0x0b],
        ),
        (
            Frame::Open {
                id,
                kind: StreamKind::Tcp,
                dest: Destination::Addr(([192, 0, 2, 1], 443).into()),
            },
            vec![4, 1, 2, 3, 4, 1, 4, 192, 0, 2, 1, 0x01, 0xbb],
        ),
        (
            Frame::Open {
                id,
                kind: StreamKind::Udp,
                dest: Destination::domain("a.b", 53).unwrap(),
            },
            vec![4, 1, 2, 3, 4, 2, 3, 3, b'a', b'.', b'b', 0, 53],
        ),
        (Frame::Accept { id }, vec![5, 1, 2, 3, 4]),
        (
            Frame::Data {
                id,
                data: Bytes::from_static(b"hi"),
            },
            vec![6, 1, 2, 3, 4, 0, 0, 0, 2, b'h', b'i'],
        ),
        (Frame::Fin { id }, vec![7, 1, 2, 3, 4]),
        (
            Frame::Reset {
                id,
                code: ResetCode::TooManyStreams,
            },
            vec![8, 1, 2, 3, 4, 0, 6],
        ),
        (
            Frame::MaxStreamData { id, max: 0x1_0000 },
            vec![9, 1, 2, 3, 4, 0, 0, 0, 0, 0, 1, 0, 0],
        ),
        (
            Frame::MaxData { max: 1 },
            vec![0x0a, 0, 0, 0, 0, 0, 0, 0, 1],
        ),
        (
            Frame::DnsQuery {
                id: 9,
                msg: Bytes::from_static(b"q"),
            },
            vec![0x0b, 0, 0, 0, 9, 0, 1, b'q'],
        ),
        (
            Frame::DnsResponse {
                id: 9,
                msg: Bytes::from_static(b"r"),
            },
            vec![0x0c, 0, 0, 0, 9, 0, 1, b'r'],
        ),
        (
            Frame::Datagram {
                id,
                data: Bytes::from_static(b"u"),
            },
            vec![0x0d, 1, 2, 3, 4, 0, 1, b'u'],
        ),
        (
            Frame::EchoRequest {
                id: 5,
                dest: "2001:db8::1".parse().unwrap(),
                data: Bytes::new(),
            },
            vec![
                0x0e, 0, 0, 0, 5, 6, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0,
                0,
            ],
        ),
        (
            Frame::EchoReply {
                id: 5,
                data: Bytes::from_static(b"e"),
            },
            vec![0x0f, 0, 0, 0, 5, 0, 1, b'e'],
        ),
        (
            Frame::Close {
                code: CloseCode::FlowControl,
                reason: "x".into(),
            },
            vec![0x10, 0, 2, 1, b'x'],
        ),
    ];
    for (frame, wire) in cases {
        assert_eq!(encode(&frame), wire, "{frame:?}");
        assert_eq!(decode_all(Bytes::from(wire)), Ok(vec![frame]));
    }
}

#[test]
fn invalid_inputs_are_refused() {
    for bad in [
        &[0x11][..],                                  // unknown frame type
        &[0x04, 0, 0, 0, 1, 3, 4, 1, 2][..],          // unknown stream kind 3
        &[0x04, 0, 0, 0, 1, 1, 5, 0][..],             // unknown address type 5
        &[0x04, 0, 0, 0, 1, 1, 3, 0, 0, 1][..],       // empty domain
        &[0x04, 0, 0, 0, 1, 1, 3, 1, b' ', 0, 1][..], // a space in a domain
        &[0x06, 0, 0, 0, 1, 0, 0, 0, 5, 1][..],       // data shorter than its length
        &[0x01, 0, 0][..],                            // truncated ping
    ] {
        assert!(decode_all(Bytes::copy_from_slice(bad)).is_err(), "{bad:?}");
    }
}

/// A close reason must be UTF-8: invalid bytes are a decode error (a lossy decode could
/// grow past 255 bytes and break parse → emit → parse).
#[test]
fn close_reason_with_invalid_utf8_is_rejected() {
    let mut wire = vec![0x10, 0, 1, 255];
    wire.extend_from_slice(&[0xff; 255]);
    assert_eq!(
        decode_all(Bytes::from(wire)),
        Err(proto::DecodeError::Invalid { field: "reason" })
    );
}
