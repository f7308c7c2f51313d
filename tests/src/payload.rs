//! Deterministic test payloads: the byte at offset `i` of a payload with seed `s` is a
//! pure function of `(s, i)`, so a server can stream any length without storing it and a
//! test knows its checksum without downloading it.

use std::io::Read;

/// The seed the `ht-inet` HTTP server and `ht-probe put` use.
pub const SEED: u64 = 0x4854_5445_5354;

/// A reader of `len` deterministic bytes.
#[derive(Debug, Clone)]
pub struct Payload {
    seed: u64,
    pos: u64,
    len: u64,
}

impl Payload {
    /// `len` bytes from the start of seed `seed`'s stream.
    pub fn new(seed: u64, len: u64) -> Payload {
        Payload { seed, pos: 0, len }
    }

    fn word(&self, index: u64) -> [u8; 8] {
        // SplitMix64 of the word index: cheap, and every offset is independent.
        let mut z = self
            .seed
            .wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)).to_le_bytes()
    }
}

impl Read for Payload {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min((self.len - self.pos) as usize);
        let mut i = 0;
        while i < n {
            let word = self.word(self.pos / 8);
            let off = (self.pos % 8) as usize;
            let take = (8 - off).min(n - i);
            buf[i..i + take].copy_from_slice(&word[off..off + take]);
            i += take;
            self.pos += take as u64;
        }
        Ok(n)
    }
}

/// SHA-256 of everything `reader` yields, as lower-case hex, and the byte count.
pub fn sha256_of(mut reader: impl Read) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok((hasher.len, hasher.finish()));
        }
        hasher.update(&buf[..n]);
    }
}

/// An incremental SHA-256 that also counts bytes.
#[derive(Clone)]
pub struct Sha256 {
    ctx: ring::digest::Context,
    len: u64,
}

impl std::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sha256").field("len", &self.len).finish()
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    /// A fresh hash.
    pub fn new() -> Sha256 {
        Sha256 {
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
            len: 0,
        }
    }

    /// Hash more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.ctx.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was hashed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest as lower-case hex.
    pub fn finish(self) -> String {
        self.ctx
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The checksum of the `len`-byte payload that `ht-inet` serves at `/bytes/<len>`.
pub fn expected_sha256(len: u64) -> String {
    sha256_of(Payload::new(SEED, len))
        .expect("reading a payload never fails")
        .1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_of_any_size_see_the_same_stream() {
        let mut whole = vec![0u8; 1000];
        Payload::new(7, 1000).read_exact(&mut whole).unwrap();
        let mut pieces = Vec::new();
        let mut p = Payload::new(7, 1000);
        let mut buf = [0u8; 13];
        loop {
            let n = p.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            pieces.extend_from_slice(&buf[..n]);
        }
        assert_eq!(whole, pieces);
        assert_ne!(whole[..8], whole[8..16]);
        assert_ne!(expected_sha256(1000), expected_sha256(1001));
    }

    #[test]
    fn sha256_matches_a_known_vector() {
        let (n, hex) = sha256_of(&b"abc"[..]).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
