//! Key files: 32 raw bytes written as one line of standard base64 (the WireGuard habit).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// A key file or key string that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The text is not base64.
    #[error("expected a base64 key (44 characters), got text that is not base64")]
    NotBase64,
    /// The decoded key has the wrong length.
    #[error("expected a 32-byte key, got {0} bytes")]
    WrongLength(usize),
}

/// Decode a base64 key; surrounding white space is ignored.
pub fn decode_key(text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| KeyError::NotBase64)?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::WrongLength(bytes.len()))
}

/// Encode a key as base64.
pub fn encode_key(key: &[u8; 32]) -> String {
    STANDARD.encode(key)
}

/// Read and decode a key file.
pub fn read_key_file(path: &Path) -> Result<[u8; 32], KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    decode_key(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_reject_garbage() {
        let key = [0xa5; 32];
        assert_eq!(
            decode_key(&format!(" {}\n", encode_key(&key))).unwrap(),
            key
        );
        assert!(matches!(
            decode_key("not base64!"),
            Err(KeyError::NotBase64)
        ));
        assert!(matches!(decode_key("AAAA"), Err(KeyError::WrongLength(3))));
    }
}
