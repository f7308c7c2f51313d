//! The frame decoder (TESTPLAN §24, docs/PROTOCOL.md §5): arbitrary record plaintext never
//! panics, and every frame that decodes is valid, encodes to exactly `encoded_len` bytes,
//! and decodes back to itself (parse → emit → parse), alone and as the whole sequence;
//! emitting what was parsed gives back exactly the input bytes.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use proto::frame::decode_all;

fuzz_target!(|data: &[u8]| {
    let Ok(frames) = decode_all(Bytes::copy_from_slice(data)) else {
        return;
    };
    let mut all = BytesMut::new();
    for frame in &frames {
        frame.validate().expect("a decoded frame passes validate");
        let mut one = BytesMut::new();
        frame.encode(&mut one);
        assert_eq!(one.len(), frame.encoded_len(), "{frame:?}");
        let again = decode_all(one.clone().freeze()).expect("an emitted frame decodes");
        assert_eq!(
            again,
            std::slice::from_ref(frame),
            "single frame round trip"
        );
        all.extend_from_slice(&one);
    }
    // Every frame has exactly one encoding, so emitting gives back the input.
    assert_eq!(&all[..], data, "emit(parse(x)) == x");
    let again = decode_all(all.freeze()).expect("emitted frames decode");
    assert_eq!(again, frames, "sequence round trip");
});
