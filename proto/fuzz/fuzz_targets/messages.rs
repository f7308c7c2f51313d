//! The leg message decoders (docs/PROTOCOL.md §2): arbitrary bytes never panic; what
//! decodes re-encodes to exactly the input (every message has one encoding) and decodes
//! back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::message::{
    ATTACH_LEN, ATTACH_OK_LEN, Attach, AttachOk, RECORD_OVERHEAD, decode_version_refused,
    message_type, record_counter,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = message_type(data) {
        assert_eq!(t, data[0]);
        assert!((0x01..=0x06).contains(&t));
    }
    if let Ok(attach) = Attach::decode(data) {
        assert_eq!(data.len(), ATTACH_LEN);
        let wire = attach.encode();
        assert_eq!(&wire[..], data, "Attach has one encoding");
        assert_eq!(Attach::decode(&wire), Ok(attach));
    }
    if let Ok(ok) = AttachOk::decode(data) {
        assert_eq!(data.len(), ATTACH_OK_LEN);
        let wire = ok.encode();
        assert_eq!(&wire[..], data, "AttachOk has one encoding");
        assert_eq!(AttachOk::decode(&wire), Ok(ok));
    }
    if let Ok(versions) = decode_version_refused(data) {
        let mut wire = vec![0x03, versions.len() as u8];
        wire.extend_from_slice(&versions);
        assert_eq!(&wire[..], data, "VersionRefused has one encoding");
    }
    if let Ok(counter) = record_counter(data) {
        assert!(data.len() >= RECORD_OVERHEAD);
        assert_eq!(data[0], 0x06);
        let mut be = [0u8; 8];
        be.copy_from_slice(&data[1..9]);
        assert_eq!(counter, u64::from_be_bytes(be));
    }
});
