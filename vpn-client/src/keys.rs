//! Key files: 32 raw bytes as one line of standard base64 (the same format as the exit
//! node's `exit-node/src/keys.rs`, the WireGuard habit).

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
    #[error("{what}: expected a base64 key (44 characters), got text that is not base64")]
    NotBase64 { what: String },
    /// The decoded key has the wrong length.
    #[error("{what}: expected a 32-byte key, got {len} bytes")]
    WrongLength { what: String, len: usize },
}

/// Decode a base64 key; surrounding white space is ignored. `what` names it in errors.
pub fn decode_key(what: &str, text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| KeyError::NotBase64 { what: what.into() })?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::WrongLength {
        what: what.into(),
        len: bytes.len(),
    })
}

/// Encode a key as base64 (44 characters).
pub fn encode_key(key: &[u8; 32]) -> String {
    STANDARD.encode(key)
}

/// Read and decode a key file.
pub fn read_key_file(path: &Path) -> Result<[u8; 32], KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    decode_key(&path.display().to_string(), &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_pubkey_matches_proto() {
        let (private, public) = proto::generate_keypair();
        let text = encode_key(&private);
        assert_eq!(text.len(), 44);
        let back = decode_key("stdin", &format!(" {text}\n")).unwrap();
        assert_eq!(proto::public_key(&back), public);
        assert!(matches!(
            decode_key("k", "not base64!"),
            Err(KeyError::NotBase64 { .. })
        ));
        assert!(matches!(
            decode_key("k", "AAAA"),
            Err(KeyError::WrongLength { len: 3, .. })
        ));
    }
}
