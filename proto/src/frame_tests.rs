//! Frame round trips (property tests) and hand-picked malformed inputs.

use bytes::BytesMut;
use proptest::prelude::*;

use super::*;

fn dest() -> impl Strategy<Value = Destination> {
    prop_oneof![
        any::<(u32, u16)>()
            .prop_map(|(a, p)| Destination::Addr(SocketAddr::new(Ipv4Addr::from(a).into(), p))),
        any::<(u128, u16)>()
            .prop_map(|(a, p)| Destination::Addr(SocketAddr::new(Ipv6Addr::from(a).into(), p))),
        ("[a-z0-9][a-z0-9.-]{0,60}", any::<u16>())
            .prop_map(|(n, p)| Destination::domain(&n, p).unwrap()),
    ]
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(a.into())),
        any::<u128>().prop_map(|a| IpAddr::V6(a.into())),
    ]
}

fn payload() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..2000).prop_map(Bytes::from)
}

fn frame() -> impl Strategy<Value = Frame> {
    let id = any::<u32>().prop_map(StreamId);
    prop_oneof![
        (1usize..300).prop_map(Frame::Padding),
        any::<u64>().prop_map(|id| Frame::Ping { id }),
        any::<u64>().prop_map(|id| Frame::Pong { id }),
        any::<u64>().prop_map(|next| Frame::Ack { next }),
        (id.clone(), any::<bool>(), dest()).prop_map(|(id, tcp, dest)| Frame::Open {
            id,
            kind: if tcp {
                StreamKind::Tcp
            } else {
                StreamKind::Udp
            },
            dest
        }),
        id.clone().prop_map(|id| Frame::Accept { id }),
        (id.clone(), payload()).prop_map(|(id, data)| Frame::Data { id, data }),
        id.clone().prop_map(|id| Frame::Fin { id }),
        (id.clone(), any::<u16>()).prop_map(|(id, c)| Frame::Reset {
            id,
            code: ResetCode::from_code(c)
        }),
        (id.clone(), any::<u64>()).prop_map(|(id, max)| Frame::MaxStreamData { id, max }),
        any::<u64>().prop_map(|max| Frame::MaxData { max }),
        (any::<u32>(), payload()).prop_map(|(id, msg)| Frame::DnsQuery { id, msg }),
        (any::<u32>(), payload()).prop_map(|(id, msg)| Frame::DnsResponse { id, msg }),
        (id, payload()).prop_map(|(id, data)| Frame::Datagram { id, data }),
        (any::<u32>(), ip(), payload()).prop_map(|(id, dest, data)| Frame::EchoRequest {
            id,
            dest,
            data
        }),
        (any::<u32>(), payload()).prop_map(|(id, data)| Frame::EchoReply { id, data }),
        (any::<u16>(), "\\PC{0,60}").prop_map(|(c, reason)| Frame::Close {
            code: CloseCode::from_code(c),
            reason
        }),
    ]
}

/// Consecutive padding frames merge on decode; make the expected list do the same.
fn merge_padding(frames: Vec<Frame>) -> Vec<Frame> {
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
    fn every_frame_round_trips(frames in proptest::collection::vec(frame(), 1..20)) {
        let mut buf = BytesMut::new();
        let mut expect_len = 0;
        for f in &frames {
            prop_assert!(f.validate().is_ok());
            expect_len += f.encoded_len();
            f.encode(&mut buf);
        }
        prop_assert_eq!(buf.len(), expect_len);
        let decoded = decode_all(buf.freeze()).unwrap();
        prop_assert_eq!(decoded, merge_padding(frames));
    }

    #[test]
    fn truncation_is_an_error_never_a_panic(f in frame(), cut in 0usize..100) {
        let mut buf = BytesMut::new();
        f.encode(&mut buf);
        // Every strict prefix of a frame is an error (a prefix of padding is padding).
        let cut = cut.min(buf.len() - 1);
        let short = buf.freeze().slice(..cut);
        if !matches!(f, Frame::Padding(_)) && cut > 0 {
            prop_assert!(decode_all(short).is_err());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_all(Bytes::from(bytes));
    }
}

#[test]
fn truncated_frames_report_how_much_is_missing() {
    let mut buf = BytesMut::new();
    Frame::MaxStreamData {
        id: StreamId(1),
        max: 9,
    }
    .encode(&mut buf);
    let short = buf.freeze().slice(..10);
    assert_eq!(decode_all(short), Err(DecodeError::Truncated { needed: 3 }));
    let data = Bytes::from_static(&[ty::DATA, 0, 0, 0, 1, 0, 0, 0, 5, 1, 2]);
    assert_eq!(decode_all(data), Err(DecodeError::Truncated { needed: 3 }));
}

#[test]
fn unknown_types_and_bad_fields_are_errors() {
    assert_eq!(
        decode_all(Bytes::from_static(&[0x7f])),
        Err(DecodeError::UnknownType {
            what: "frame",
            value: 0x7f
        })
    );
    // Open with kind 9.
    let open = Bytes::from_static(&[ty::OPEN, 0, 0, 0, 1, 9, 4, 1, 2, 3, 4, 0, 80]);
    assert!(matches!(
        decode_all(open),
        Err(DecodeError::UnknownType {
            what: "stream kind",
            ..
        })
    ));
    // Domain with a space in it.
    let open = Bytes::from_static(&[ty::OPEN, 0, 0, 0, 1, 1, 3, 3, b'a', b' ', b'b', 0, 80]);
    assert_eq!(
        decode_all(open),
        Err(DecodeError::Invalid {
            field: "destination domain"
        })
    );
    // Address family 5.
    let open = Bytes::from_static(&[ty::OPEN, 0, 0, 0, 1, 1, 5, 1, 2, 3, 4, 0, 80]);
    assert!(matches!(
        decode_all(open),
        Err(DecodeError::UnknownType {
            what: "address",
            ..
        })
    ));
}

#[test]
fn oversized_small_payloads_and_reasons_fail_validation() {
    let big = Bytes::from(vec![0u8; MAX_SMALL_PAYLOAD + 1]);
    assert!(
        Frame::DnsQuery {
            id: 1,
            msg: big.clone()
        }
        .validate()
        .is_err()
    );
    assert!(
        Frame::Datagram {
            id: StreamId(1),
            data: big
        }
        .validate()
        .is_err()
    );
    let reason = "x".repeat(MAX_REASON_LEN + 1);
    assert!(
        Frame::Close {
            code: CloseCode::Normal,
            reason
        }
        .validate()
        .is_err()
    );
    assert!(Destination::domain(&"a".repeat(254), 1).is_err());
    assert!(Destination::domain("", 1).is_err());
}

#[test]
fn codes_round_trip_and_unknown_codes_survive() {
    for c in 0..20u16 {
        assert_eq!(ResetCode::from_code(c).code(), c);
        assert_eq!(CloseCode::from_code(c).code(), c);
    }
    assert_eq!(ResetCode::from_code(500), ResetCode::Other(500));
}
