//! Key schedule and record protection (docs/PROTOCOL.md §3–4). Primitives come from `ring`
//! and `snow`; nothing here is hand-rolled: HKDF-SHA256 derives the session secrets from
//! the Noise split, HMAC-SHA256 makes the cheap pre-DH check (mac1) and the attach proofs,
//! and an AEAD (AES-256-GCM or ChaCha20-Poly1305) seals each record in place.

use ring::{aead, digest, hkdf, hmac};

use crate::error::Error;

/// Length of an AEAD tag.
pub const TAG_LEN: usize = 16;
/// Length of an HMAC-SHA256 tag (mac1, attach proofs).
pub const MAC_LEN: usize = 32;

/// A record cipher (negotiated in the handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    /// AES-256-GCM: fastest where the CPU has AES instructions.
    Aes256Gcm,
    /// ChaCha20-Poly1305: fastest without them.
    ChaCha20Poly1305,
}

impl Cipher {
    /// The bit that names this cipher in the handshake's cipher set.
    pub fn bit(self) -> u8 {
        match self {
            Cipher::Aes256Gcm => 0x01,
            Cipher::ChaCha20Poly1305 => 0x02,
        }
    }

    /// The cipher named by a single bit.
    pub fn from_bit(bit: u8) -> Option<Self> {
        [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305]
            .into_iter()
            .find(|c| c.bit() == bit)
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Cipher::Aes256Gcm => &aead::AES_256_GCM,
            Cipher::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
}

/// Secrets of one session, derived once from the Noise handshake.
#[derive(Clone)]
pub(crate) struct SessionSecrets {
    /// Record key base of the up direction (client→exit).
    pub up: [u8; 32],
    /// Record key base of the down direction (exit→client).
    pub down: [u8; 32],
    /// Key of the client's attach proofs.
    pub attach_client: [u8; 32],
    /// Key of the exit's attach acknowledgements.
    pub attach_exit: [u8; 32],
}

impl std::fmt::Debug for SessionSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionSecrets(..)")
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn expand(prk: &hkdf::Prk, label: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    // Invariant: 32 bytes is far below HKDF-SHA256's 255*32 output limit.
    prk.expand(&[label], Len(32))
        .and_then(|okm| okm.fill(&mut out))
        .expect("HKDF output of 32 bytes");
    out
}

impl SessionSecrets {
    /// Derive from the Noise split keys and the handshake hash (docs §3.4).
    pub fn derive(split: ([u8; 32], [u8; 32]), handshake_hash: &[u8]) -> Self {
        let mut ikm = [0u8; 64];
        ikm[..32].copy_from_slice(&split.0);
        ikm[32..].copy_from_slice(&split.1);
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, handshake_hash).extract(&ikm);
        Self {
            up: expand(&prk, b"half-tunnel v1 up"),
            down: expand(&prk, b"half-tunnel v1 down"),
            attach_client: expand(&prk, b"half-tunnel v1 attach client"),
            attach_exit: expand(&prk, b"half-tunnel v1 attach exit"),
        }
    }
}

/// The AEAD state of one direction: a key per epoch of `2^shift` records, each epoch's key
/// derived from the previous one and the previous one forgotten (docs §4.3).
pub(crate) struct DirectionKey {
    cipher: Cipher,
    shift: u8,
    epoch: u64,
    secret: [u8; 32],
    key: aead::LessSafeKey,
}

impl std::fmt::Debug for DirectionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectionKey")
            .field("cipher", &self.cipher)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

fn aead_key(cipher: Cipher, secret: &[u8; 32]) -> aead::LessSafeKey {
    // Invariant: both ciphers take 32-byte keys.
    let unbound = aead::UnboundKey::new(cipher.algorithm(), secret).expect("32-byte AEAD key");
    aead::LessSafeKey::new(unbound)
}

fn nonce(counter: u64) -> aead::Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    aead::Nonce::assume_unique_for_key(n)
}

impl DirectionKey {
    pub fn new(cipher: Cipher, secret: [u8; 32], shift: u8) -> Self {
        Self {
            cipher,
            shift,
            epoch: 0,
            key: aead_key(cipher, &secret),
            secret,
        }
    }

    /// The key of `counter`'s epoch, ratcheting forward if needed. Epochs never go back.
    fn key_for(&mut self, counter: u64) -> Option<&aead::LessSafeKey> {
        let epoch = counter.checked_shr(u32::from(self.shift)).unwrap_or(0);
        if epoch < self.epoch {
            return None;
        }
        while self.epoch < epoch {
            let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &self.secret);
            self.secret = expand(&prk, b"half-tunnel v1 rekey");
            self.epoch += 1;
        }
        self.key = aead_key(self.cipher, &self.secret);
        Some(&self.key)
    }

    /// Seal `buf[header_len..]` in place, authenticating `buf[..header_len]`; append the tag.
    pub fn seal(&mut self, counter: u64, buf: &mut bytes::BytesMut, header_len: usize) {
        let epoch_key_changed =
            counter.checked_shr(u32::from(self.shift)).unwrap_or(0) != self.epoch;
        let key = match epoch_key_changed {
            true => self.key_for(counter),
            false => Some(&self.key),
        };
        // Invariant: the sender's counters only grow, so its epoch never goes back.
        let key = key.expect("send counter never goes back");
        let (header, body) = buf.split_at_mut(header_len);
        // Invariant: a record stays far below AES-GCM's and ChaCha's per-message limits.
        let tag = key
            .seal_in_place_separate_tag(nonce(counter), aead::Aad::from(&*header), body)
            .expect("record within AEAD size limits");
        buf.extend_from_slice(tag.as_ref());
    }

    /// Open `buf[header_len..]` in place; on success the plaintext is
    /// `buf[header_len..len - TAG_LEN]`.
    pub fn open(
        &mut self,
        counter: u64,
        buf: &mut [u8],
        header_len: usize,
    ) -> Result<usize, Error> {
        let auth = Error::RecordAuth { counter };
        let epoch_key_changed =
            counter.checked_shr(u32::from(self.shift)).unwrap_or(0) != self.epoch;
        let key = match epoch_key_changed {
            true => self.key_for(counter).ok_or(auth.clone())?,
            false => &self.key,
        };
        let (header, body) = buf.split_at_mut(header_len);
        key.open_in_place(nonce(counter), aead::Aad::from(&*header), body)
            .map(|plain| plain.len())
            .map_err(|_| auth)
    }

    /// The current key epoch (for stats and tests).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

/// The exit-specific key of the cheap pre-DH check: SHA-256 over a label and the exit's
/// static public key (docs §3.2). Anyone who knows the exit's public key can compute it;
/// it keeps random bytes and scanners from costing a Diffie-Hellman.
pub(crate) fn mac1_key(exit_public: &[u8; 32]) -> hmac::Key {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"half-tunnel v1 mac1");
    ctx.update(exit_public);
    hmac::Key::new(hmac::HMAC_SHA256, ctx.finish().as_ref())
}

/// An HMAC-SHA256 key for attach proofs.
pub(crate) fn mac_key(secret: &[u8; 32]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret)
}

/// HMAC-SHA256 of `msg`.
pub(crate) fn mac(key: &hmac::Key, msg: &[u8]) -> [u8; MAC_LEN] {
    let tag = hmac::sign(key, msg);
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Constant-time check of an HMAC-SHA256 tag.
pub(crate) fn verify_mac(key: &hmac::Key, msg: &[u8], tag: &[u8]) -> bool {
    hmac::verify(key, msg, tag).is_ok()
}

/// X25519 public key of a private key.
pub fn public_key(private: &[u8; 32]) -> [u8; 32] {
    use snow::resolvers::CryptoResolver as _;
    // Invariant: the default resolver always provides Curve25519.
    let mut dh = snow::resolvers::DefaultResolver
        .resolve_dh(&snow::params::DHChoice::Curve25519)
        .expect("snow provides X25519");
    dh.set(private);
    let mut out = [0u8; 32];
    out.copy_from_slice(dh.pubkey());
    out
}

/// A new random X25519 private key and its public key.
pub fn generate_keypair() -> ([u8; 32], [u8; 32]) {
    // Invariant: key generation only fails without an OS random source, which snow
    // needs for every handshake anyway.
    let kp = snow::Builder::new(crate::handshake::noise_params())
        .generate_keypair()
        .expect("OS random source");
    let mut private = [0u8; 32];
    private.copy_from_slice(&kp.private);
    (private, public_key(&private))
}
