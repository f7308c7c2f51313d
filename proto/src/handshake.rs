//! The session handshake (docs/PROTOCOL.md §3): Noise IKpsk2 over the up leg, a cheap keyed
//! check (mac1) before any Diffie-Hellman, an exact-replay cache, and a strictly increasing
//! timestamp per client key.
//!
//! ```text
//! client                                   exit
//! ClientHandshake::start ── HandshakeInit ──► Acceptor::accept
//!                                                (mac1 → replay cache → version → Noise
//!                                                 → allow-list → timestamp → cipher)
//! ClientHandshake::finish ◄─ HandshakeResp ── Accepted { connection, response }
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use ring::hmac;
use uuid::Uuid;

use crate::codec::Reader;
use crate::config::{PeerLimits, Settings};
use crate::connection::{Connection, Role};
use crate::crypto::{self, Cipher, MAC_LEN, SessionSecrets};
use crate::error::{DecodeError, Error};
use crate::message::{self, VERSION, ty};

const NOISE_PATTERN: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
const PROLOGUE: &[u8] = b"half-tunnel v1";
/// Largest Noise message we build or read.
const MAX_NOISE: usize = 512;
/// How many recent mac1 values the exact-replay cache remembers.
const REPLAY_CACHE: usize = 8192;

pub(crate) fn noise_params() -> snow::params::NoiseParams {
    // Invariant: the pattern string is a constant that snow parses.
    NOISE_PATTERN.parse().expect("valid Noise pattern")
}

/// The client's hello, encrypted in the first Noise message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ClientHello {
    timestamp: u64,
    ciphers: u8,
    fallback: bool,
    limits: PeerLimits,
    rekey_shift: u8,
}

const CLIENT_HELLO_LEN: usize = 8 + 1 + 1 + 4 + 4 + 4 + 1;

impl ClientHello {
    fn encode(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(CLIENT_HELLO_LEN);
        out.put_u64(self.timestamp);
        out.put_u8(self.ciphers);
        out.put_u8(u8::from(self.fallback));
        out.put_u32(self.limits.stream_window);
        out.put_u32(self.limits.session_window);
        out.put_u32(self.limits.max_record);
        out.put_u8(self.rekey_shift);
        out
    }

    fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(Bytes::copy_from_slice(buf));
        let out = ClientHello {
            timestamp: r.u64()?,
            ciphers: r.u8()?,
            fallback: r.u8()? & 1 == 1,
            limits: PeerLimits {
                stream_window: r.u32()?,
                session_window: r.u32()?,
                max_record: r.u32()?,
                max_streams: 0,
            },
            rekey_shift: r.u8()?,
        };
        r.finish()?;
        Ok(out)
    }
}

/// The exit's hello, encrypted in the second Noise message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ExitHello {
    session: Uuid,
    cipher: u8,
    fallback: bool,
    limits: PeerLimits,
    rekey_shift: u8,
}

const EXIT_HELLO_LEN: usize = 16 + 1 + 1 + 4 + 4 + 4 + 4 + 1;

impl ExitHello {
    fn encode(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(EXIT_HELLO_LEN);
        out.put_slice(self.session.as_bytes());
        out.put_u8(self.cipher);
        out.put_u8(u8::from(self.fallback));
        out.put_u32(self.limits.stream_window);
        out.put_u32(self.limits.session_window);
        out.put_u32(self.limits.max_record);
        out.put_u32(self.limits.max_streams);
        out.put_u8(self.rekey_shift);
        out
    }

    fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(Bytes::copy_from_slice(buf));
        let out = ExitHello {
            session: Uuid::from_bytes(r.array()?),
            cipher: r.u8()?,
            fallback: r.u8()? & 1 == 1,
            limits: PeerLimits {
                stream_window: r.u32()?,
                session_window: r.u32()?,
                max_record: r.u32()?,
                max_streams: r.u32()?,
            },
            rekey_shift: r.u8()?,
        };
        r.finish()?;
        Ok(out)
    }
}

fn check_shift(shift: u8) -> Result<u8, Error> {
    match shift {
        8..=40 => Ok(shift),
        _ => Err(Error::BadParameter("rekey_shift")),
    }
}

fn local_limits(s: &Settings) -> PeerLimits {
    PeerLimits {
        stream_window: s.stream_window,
        session_window: s.session_window,
        max_record: s.max_record,
        max_streams: s.max_streams,
    }
}

/// What a client needs to start a session.
#[derive(Clone)]
pub struct ClientConfig {
    /// The client's static X25519 private key.
    pub private_key: [u8; 32],
    /// The exit's static public key (pinned).
    pub exit_public_key: [u8; 32],
    /// Optional pre-shared key (must match the exit's entry for this client).
    pub psk: Option<[u8; 32]>,
    /// Local tunables.
    pub settings: Settings,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A client handshake in flight: built by `start`, consumed by `finish`.
pub struct ClientHandshake {
    noise: snow::HandshakeState,
    settings: Settings,
}

impl std::fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientHandshake(..)")
    }
}

impl ClientHandshake {
    /// Build the handshake message. `timestamp` is nanoseconds since the Unix epoch from the
    /// caller's wall clock; it must grow between handshakes of the same client key.
    pub fn start(config: &ClientConfig, timestamp: u64) -> Result<(Self, Bytes), Error> {
        let psk = config.psk.unwrap_or([0; 32]);
        let mut noise = snow::Builder::new(noise_params())
            .local_private_key(&config.private_key)
            .remote_public_key(&config.exit_public_key)
            .prologue(PROLOGUE)
            .psk(2, &psk)
            .build_initiator()
            .map_err(|_| Error::BadKey)?;
        let s = &config.settings;
        let hello = ClientHello {
            timestamp,
            ciphers: s.cipher_mask(),
            fallback: s.fallback,
            limits: local_limits(s),
            rekey_shift: check_shift(s.rekey_shift)?,
        };
        let mut buf = [0u8; MAX_NOISE];
        let n = noise
            .write_message(&hello.encode(), &mut buf)
            .map_err(|_| Error::HandshakeCrypto)?;
        let mut msg = BytesMut::with_capacity(2 + n + MAC_LEN);
        msg.put_u8(ty::HANDSHAKE_INIT);
        msg.put_u8(VERSION);
        msg.put_slice(&buf[..n]);
        let mac1 = crypto::mac(&crypto::mac1_key(&config.exit_public_key), &msg);
        msg.put_slice(&mac1);
        let hs = ClientHandshake {
            noise,
            settings: config.settings.clone(),
        };
        Ok((hs, msg.freeze()))
    }

    /// Process the exit's answer; on success the session exists with the up leg attached.
    pub fn finish(mut self, now: Instant, msg: &[u8]) -> Result<Connection, Error> {
        match message::message_type(msg)? {
            ty::HANDSHAKE_RESP => {}
            ty::VERSION_REFUSED => {
                return Err(Error::UnsupportedVersion {
                    offered: VERSION,
                    supported: message::decode_version_refused(msg)?,
                });
            }
            value => {
                return Err(DecodeError::UnknownType {
                    what: "message",
                    value,
                }
                .into());
            }
        }
        let version = *msg.get(1).ok_or(DecodeError::Truncated { needed: 1 })?;
        if version != VERSION {
            return Err(Error::UnsupportedVersion {
                offered: VERSION,
                supported: vec![version],
            });
        }
        let mut payload = [0u8; MAX_NOISE];
        let n = self
            .noise
            .read_message(&msg[2..], &mut payload)
            .map_err(|_| Error::HandshakeCrypto)?;
        let hello = ExitHello::decode(&payload[..n])?;
        let cipher = Cipher::from_bit(hello.cipher)
            .filter(|c| self.settings.ciphers.contains(c))
            .ok_or(Error::NoCommonCipher)?;
        let shift = check_shift(hello.rekey_shift)?;
        if shift > self.settings.rekey_shift {
            return Err(Error::BadParameter("rekey_shift"));
        }
        let limits = hello.limits.check()?;
        if limits.max_streams == 0 {
            return Err(Error::BadParameter("max_streams"));
        }
        let secrets = split(&mut self.noise);
        Ok(Connection::new(
            Role::Client,
            hello.session,
            &secrets,
            crate::connection::Negotiated {
                cipher,
                rekey_shift: shift,
                fallback: hello.fallback && self.settings.fallback,
                peer: limits,
            },
            self.settings,
            now,
        ))
    }
}

fn split(noise: &mut snow::HandshakeState) -> SessionSecrets {
    let hash = noise.get_handshake_hash().to_vec();
    SessionSecrets::derive(noise.dangerously_get_raw_split(), &hash)
}

/// A client the exit accepts.
#[derive(Clone)]
pub struct AllowedClient {
    /// Its static public key.
    pub public_key: [u8; 32],
    /// Its pre-shared key, if configured.
    pub psk: Option<[u8; 32]>,
}

impl std::fmt::Debug for AllowedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllowedClient")
            .field("public_key", &crate::fingerprint(&self.public_key))
            .finish_non_exhaustive()
    }
}

struct ClientEntry {
    psk: [u8; 32],
    newest: u64,
}

/// The outcome of a handshake message that passed the cheap checks.
#[derive(Debug)]
pub enum Accept {
    /// A new session: send `response`, then drive `connection`.
    Session(Box<Accepted>),
    /// The client speaks a version we do not: send this refusal and close.
    Refuse(Bytes),
}

/// A session the exit accepted.
#[derive(Debug)]
pub struct Accepted {
    /// The handshake response to send on the up leg.
    pub response: Bytes,
    /// The session's protocol state, up leg attached.
    pub connection: Connection,
    /// The client's static public key.
    pub client_key: [u8; 32],
}

/// The exit's side of the handshake: the allow-list and the replay state.
pub struct Acceptor {
    private_key: [u8; 32],
    mac1: hmac::Key,
    clients: HashMap<[u8; 32], ClientEntry>,
    recent: RecentSet,
    settings: Settings,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("clients", &self.clients.len())
            .finish_non_exhaustive()
    }
}

impl Acceptor {
    /// An acceptor for the exit key `private_key` and the given clients.
    pub fn new(private_key: [u8; 32], clients: &[AllowedClient], settings: Settings) -> Self {
        let mut acceptor = Acceptor {
            mac1: crypto::mac1_key(&crypto::public_key(&private_key)),
            private_key,
            clients: HashMap::new(),
            recent: RecentSet::default(),
            settings,
        };
        acceptor.set_clients(clients);
        acceptor
    }

    /// The newest accepted handshake timestamp of every allowed client key that has one:
    /// what an exit persists so that a restart does not reopen old inits to replay (§3.3).
    pub fn replay_marks(&self) -> Vec<([u8; 32], u64)> {
        let mut marks: Vec<_> = self
            .clients
            .iter()
            .filter(|(_, e)| e.newest > 0)
            .map(|(k, e)| (*k, e.newest))
            .collect();
        marks.sort_unstable();
        marks
    }

    /// Raise the newest timestamps of allowed keys to persisted `marks` (keys no longer
    /// allowed are ignored; a mark never lowers what is known).
    pub fn restore_replay_marks(&mut self, marks: &[([u8; 32], u64)]) {
        for (key, mark) in marks {
            if let Some(e) = self.clients.get_mut(key) {
                e.newest = e.newest.max(*mark);
            }
        }
    }

    /// Replace the allow-list (config reload). Returns the keys that were removed, whose
    /// sessions the caller must end. Newest timestamps of kept keys are kept.
    pub fn set_clients(&mut self, clients: &[AllowedClient]) -> Vec<[u8; 32]> {
        let mut next = HashMap::new();
        for c in clients {
            let newest = self.clients.get(&c.public_key).map_or(0, |e| e.newest);
            let psk = c.psk.unwrap_or([0; 32]);
            next.insert(c.public_key, ClientEntry { psk, newest });
        }
        let removed = self
            .clients
            .keys()
            .filter(|k| !next.contains_key(*k))
            .copied()
            .collect();
        self.clients = next;
        removed
    }

    /// Handle a handshake message. `unix_now` is the exit's wall clock. Errors mean: drop
    /// the connection without answering.
    pub fn accept(
        &mut self,
        now: Instant,
        unix_now: Duration,
        msg: &[u8],
    ) -> Result<Accept, Error> {
        let body = self.check_mac1(msg)?;
        if body[1] != VERSION {
            return Ok(Accept::Refuse(message::encode_version_refused()));
        }
        let mut noise = snow::Builder::new(noise_params())
            .local_private_key(&self.private_key)
            .prologue(PROLOGUE)
            .build_responder()
            .map_err(|_| Error::BadKey)?;
        let mut payload = [0u8; MAX_NOISE];
        let n = noise
            .read_message(&body[2..], &mut payload)
            .map_err(|_| Error::HandshakeCrypto)?;
        let client_key: [u8; 32] = noise
            .get_remote_static()
            .and_then(|k| k.try_into().ok())
            .ok_or(Error::HandshakeCrypto)?;
        let hello = ClientHello::decode(&payload[..n])?;
        let entry = self.clients.get(&client_key).ok_or(Error::UnknownClient)?;
        check_timestamp(hello.timestamp, entry.newest, unix_now, &self.settings)?;
        let negotiated = self.negotiate(&hello)?;
        noise
            .set_psk(2, &entry.psk)
            .map_err(|_| Error::HandshakeCrypto)?;
        let session = Uuid::new_v4();
        let reply = ExitHello {
            session,
            cipher: negotiated.cipher.bit(),
            fallback: negotiated.fallback,
            limits: local_limits(&self.settings),
            rekey_shift: negotiated.rekey_shift,
        };
        let mut buf = [0u8; MAX_NOISE];
        let n = noise
            .write_message(&reply.encode(), &mut buf)
            .map_err(|_| Error::HandshakeCrypto)?;
        // Only now, with the handshake complete, does the timestamp count.
        if let Some(e) = self.clients.get_mut(&client_key) {
            e.newest = hello.timestamp;
        }
        let mut response = BytesMut::with_capacity(2 + n);
        response.put_u8(ty::HANDSHAKE_RESP);
        response.put_u8(VERSION);
        response.put_slice(&buf[..n]);
        let secrets = split(&mut noise);
        let connection = Connection::new(
            Role::Exit,
            session,
            &secrets,
            negotiated,
            self.settings.clone(),
            now,
        );
        Ok(Accept::Session(Box::new(Accepted {
            response: response.freeze(),
            connection,
            client_key,
        })))
    }

    /// The cheap checks: type, length, mac1, exact replay. Returns the part before mac1.
    fn check_mac1<'a>(&mut self, msg: &'a [u8]) -> Result<&'a [u8], Error> {
        if message::message_type(msg)? != ty::HANDSHAKE_INIT {
            return Err(DecodeError::UnknownType {
                what: "message",
                value: msg[0],
            }
            .into());
        }
        if msg.len() < 2 + MAC_LEN || msg.len() > 2 + MAX_NOISE + MAC_LEN {
            return Err(DecodeError::Invalid {
                field: "handshake length",
            }
            .into());
        }
        let (body, mac1) = msg.split_at(msg.len() - MAC_LEN);
        if !crypto::verify_mac(&self.mac1, body, mac1) {
            return Err(Error::BadMac);
        }
        // Invariant: the slice is exactly MAC_LEN bytes long.
        let tag: [u8; MAC_LEN] = mac1.try_into().expect("MAC_LEN bytes");
        if !self.recent.insert(tag) {
            return Err(Error::ReplayedHandshake);
        }
        Ok(body)
    }

    fn negotiate(&self, hello: &ClientHello) -> Result<crate::connection::Negotiated, Error> {
        let cipher = self
            .settings
            .ciphers
            .iter()
            .copied()
            .find(|c| hello.ciphers & c.bit() != 0)
            .ok_or(Error::NoCommonCipher)?;
        let shift = check_shift(hello.rekey_shift)?.min(check_shift(self.settings.rekey_shift)?);
        Ok(crate::connection::Negotiated {
            cipher,
            rekey_shift: shift,
            fallback: hello.fallback && self.settings.fallback,
            peer: hello.limits.check()?,
        })
    }
}

fn check_timestamp(ts: u64, newest: u64, unix_now: Duration, s: &Settings) -> Result<(), Error> {
    if ts <= newest {
        return Err(Error::StaleTimestamp);
    }
    let oldest = unix_now.saturating_sub(s.max_past_skew).as_nanos();
    if u128::from(ts) < oldest {
        let behind = unix_now.saturating_sub(Duration::from_nanos(ts));
        return Err(Error::PastTimestamp {
            behind_secs: behind.as_secs(),
        });
    }
    let limit = unix_now.saturating_add(s.max_future_skew).as_nanos();
    if u128::from(ts) > limit {
        let ahead = Duration::from_nanos(ts).saturating_sub(unix_now);
        return Err(Error::FutureTimestamp {
            ahead_secs: ahead.as_secs(),
        });
    }
    Ok(())
}

/// A bounded set of recently seen mac1 values (FIFO eviction).
#[derive(Default)]
struct RecentSet {
    order: VecDeque<[u8; MAC_LEN]>,
    set: HashSet<[u8; MAC_LEN]>,
}

impl RecentSet {
    /// Insert; false if already present.
    fn insert(&mut self, tag: [u8; MAC_LEN]) -> bool {
        if !self.set.insert(tag) {
            return false;
        }
        self.order.push_back(tag);
        if self.order.len() > REPLAY_CACHE
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;
