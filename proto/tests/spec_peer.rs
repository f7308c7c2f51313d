//! An independent client written from docs/PROTOCOL.md alone — snow for Noise, ring for
//! HMAC/SHA-256/AEAD, every message and frame built and parsed by hand — talking to the
//! reference exit (`Acceptor` + `Connection`). If the specification and the code drift
//! apart, these tests fail.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use proto::message::Attach;
use proto::{
    Accept, Acceptor, AllowedClient, CloseCode, Connection, Error, Event, Leg, Scope, Settings,
    generate_keypair,
};
use ring::{aead, digest, hmac};

const PATTERN: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
const PROLOGUE: &[u8] = b"half-tunnel v1";

fn hmac256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    ctx.sign().as_ref().try_into().expect("32 bytes")
}

/// §3.4: HKDF-Expand for 32 bytes is one HMAC block.
fn expand(prk: &[u8; 32], label: &[u8]) -> [u8; 32] {
    hmac256(prk, &[label, &[0x01]])
}

/// One direction's key chain (§3.4, §4.2).
struct Chain {
    alg: &'static aead::Algorithm,
    shift: u8,
    epoch: u64,
    secret: [u8; 32],
}

impl Chain {
    fn key(&mut self, counter: u64) -> aead::LessSafeKey {
        let epoch = counter >> self.shift;
        assert!(epoch >= self.epoch);
        while self.epoch < epoch {
            self.secret = expand(&self.secret, b"half-tunnel v1 rekey");
            self.epoch += 1;
        }
        aead::LessSafeKey::new(aead::UnboundKey::new(self.alg, &self.secret).expect("key"))
    }

    fn nonce(counter: u64) -> aead::Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&counter.to_be_bytes());
        aead::Nonce::assume_unique_for_key(n)
    }

    fn seal(&mut self, counter: u64, plaintext: &[u8]) -> Vec<u8> {
        let mut header = vec![0x06];
        header.extend_from_slice(&counter.to_be_bytes());
        let mut body = plaintext.to_vec();
        self.key(counter)
            .seal_in_place_append_tag(Self::nonce(counter), aead::Aad::from(&header), &mut body)
            .expect("seal");
        header.extend_from_slice(&body);
        header
    }

    fn open(&mut self, record: &[u8]) -> (u64, Vec<u8>) {
        assert_eq!(record[0], 0x06);
        let counter = u64::from_be_bytes(record[1..9].try_into().expect("8 bytes"));
        let mut body = record[9..].to_vec();
        let plain = self
            .key(counter)
            .open_in_place(
                Self::nonce(counter),
                aead::Aad::from(&record[..9]),
                &mut body,
            )
            .expect("a genuine record opens")
            .to_vec();
        (counter, plain)
    }
}

/// A minimal frame parser (§5.2) for what the exit sends in these tests.
#[derive(Debug, PartialEq, Eq)]
enum F {
    Ack(u64),
    Pong(u64),
    Ping(u64),
    DnsResponse(u32, Vec<u8>),
    Close(u16, String),
    Other(u8),
}

fn parse(mut p: &[u8]) -> Vec<F> {
    let u32_at = |b: &[u8], i: usize| u32::from_be_bytes(b[i..i + 4].try_into().expect("4"));
    let u64_at = |b: &[u8], i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8"));
    let mut out = Vec::new();
    while let Some(&t) = p.first() {
        let (f, len) = match t {
            0x01 => (F::Ping(u64_at(p, 1)), 9),
            0x02 => (F::Pong(u64_at(p, 1)), 9),
            0x03 => (F::Ack(u64_at(p, 1)), 9),
            0x0c => {
                let n = usize::from(u16::from_be_bytes([p[5], p[6]]));
                (F::DnsResponse(u32_at(p, 1), p[7..7 + n].to_vec()), 7 + n)
            }
            0x10 => {
                let n = usize::from(p[3]);
                let reason = String::from_utf8(p[4..4 + n].to_vec()).expect("utf-8");
                (F::Close(u16::from_be_bytes([p[1], p[2]]), reason), 4 + n)
            }
            other => (F::Other(other), p.len()),
        };
        out.push(f);
        p = &p[len..];
    }
    out
}

fn dns_query(id: u32, msg: &[u8]) -> Vec<u8> {
    let mut f = vec![0x0b];
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    f.extend_from_slice(msg);
    f
}

struct Peer {
    now: Instant,
    exit: Connection,
    session: [u8; 16],
    up: Chain,
    down: Chain,
    attach_client: [u8; 32],
    attach_exit: [u8; 32],
    up_next: u64,
    attach_seq: u64,
}

/// The receive limits the hand-built client announces (§3.1).
#[derive(Clone, Copy)]
struct Limits {
    stream_window: u32,
    session_window: u32,
    max_record: u32,
}

const DEFAULT_LIMITS: Limits = Limits {
    stream_window: 262_144,
    session_window: 33_554_432,
    max_record: 131_072,
};

fn connect(cipher_bits: u8, psk: Option<[u8; 32]>, shift: u8) -> Peer {
    connect_with(cipher_bits, psk, shift, DEFAULT_LIMITS)
}

/// §3: handshake by hand against the reference `Acceptor`.
fn connect_with(cipher_bits: u8, psk: Option<[u8; 32]>, shift: u8, limits: Limits) -> Peer {
    let (client_private, client_public) = generate_keypair();
    let (exit_private, exit_public) = generate_keypair();
    let allowed = [AllowedClient {
        public_key: client_public,
        psk,
    }];
    let mut acceptor = Acceptor::new(exit_private, &allowed, Settings::default());

    let mut noise = snow::Builder::new(PATTERN.parse().expect("pattern"))
        .local_private_key(&client_private)
        .remote_public_key(&exit_public)
        .prologue(PROLOGUE)
        .psk(2, &psk.unwrap_or([0; 32]))
        .build_initiator()
        .expect("initiator");
    // ClientHello, §3.1.
    let mut hello = Vec::new();
    hello.extend_from_slice(&1_000u64.to_be_bytes()); // timestamp
    hello.push(cipher_bits);
    hello.push(1); // fallback
    hello.extend_from_slice(&limits.stream_window.to_be_bytes());
    hello.extend_from_slice(&limits.session_window.to_be_bytes());
    hello.extend_from_slice(&limits.max_record.to_be_bytes());
    hello.push(shift);
    assert_eq!(hello.len(), 23);
    let mut buf = [0u8; 512];
    let n = noise.write_message(&hello, &mut buf).expect("message 1");
    assert_eq!(n, 119, "§2.2: Noise message 1 is 119 bytes");
    let mut init = vec![0x01, 0x01];
    init.extend_from_slice(&buf[..n]);
    // §3.2: mac1.
    let k_mac1 = digest::digest(
        &digest::SHA256,
        &[&b"half-tunnel v1 mac1"[..], &exit_public].concat(),
    );
    let mac1 = hmac256(k_mac1.as_ref(), &[&init]);
    init.extend_from_slice(&mac1);
    assert_eq!(init.len(), 153);

    let now = Instant::now();
    let Ok(Accept::Session(accepted)) = acceptor.accept(now, Duration::from_secs(1), &init) else {
        panic!("the exit refused a handshake built from the specification");
    };
    let resp = &accepted.response;
    assert_eq!(resp.len(), 85, "§2.3");
    assert_eq!(&resp[..2], &[0x02, 0x01]);
    let n = noise.read_message(&resp[2..], &mut buf).expect("message 2");
    let exit_hello = &buf[..n];
    assert_eq!(exit_hello.len(), 35, "§3.1 ExitHello");
    let session: [u8; 16] = exit_hello[..16].try_into().expect("16");
    assert_eq!(&session, accepted.connection.session_id().as_bytes());
    let chosen = exit_hello[16];
    assert_eq!(chosen.count_ones(), 1);
    assert_ne!(chosen & cipher_bits, 0);
    assert_eq!(exit_hello[17], 1, "fallback agreed");
    assert_eq!(exit_hello[30..34], 65_536u32.to_be_bytes(), "max_streams");
    assert_eq!(exit_hello[34], shift.min(24), "min of both shifts");

    // §3.4: key schedule.
    let h = noise.get_handshake_hash().to_vec();
    let (k1, k2) = noise.dangerously_get_raw_split();
    let prk = hmac256(&h, &[&k1, &k2]);
    let alg = match chosen {
        0x01 => &aead::AES_256_GCM,
        _ => &aead::CHACHA20_POLY1305,
    };
    let chain = |label: &[u8]| Chain {
        alg,
        shift: exit_hello[34],
        epoch: 0,
        secret: expand(&prk, label),
    };
    Peer {
        now,
        exit: accepted.connection,
        session,
        up: chain(b"half-tunnel v1 up"),
        down: chain(b"half-tunnel v1 down"),
        attach_client: expand(&prk, b"half-tunnel v1 attach client"),
        attach_exit: expand(&prk, b"half-tunnel v1 attach exit"),
        up_next: 0,
        attach_seq: 0,
    }
}

impl Peer {
    fn send(&mut self, plaintext: &[u8]) -> Result<(), Error> {
        let record = self.up.seal(self.up_next, plaintext);
        self.up_next += 1;
        self.exit
            .handle_record(self.now, Leg::Up, BytesMut::from(&record[..]))
    }

    /// §2.5/§2.6 by hand; returns the AttachOk's `next`.
    fn attach(&mut self, leg: u8, next: u64) -> u64 {
        self.attach_seq += 1;
        let mut msg = vec![0x04, 0x01];
        msg.extend_from_slice(&self.session);
        msg.push(leg);
        msg.extend_from_slice(&self.attach_seq.to_be_bytes());
        msg.extend_from_slice(&next.to_be_bytes());
        let mac = hmac256(&self.attach_client, &[&msg]);
        msg.extend_from_slice(&mac);
        assert_eq!(msg.len(), 67);
        let attach = Attach::decode(&msg).expect("decodes");
        let l = if leg == 1 { Leg::Up } else { Leg::Down };
        let ok = self
            .exit
            .handle_attach(self.now, l, &attach)
            .expect("the exit accepts an attach built from the specification");
        assert_eq!(ok.len(), 66);
        assert_eq!(ok[0], 0x05);
        assert_eq!(&ok[1..17], &self.session);
        assert_eq!(ok[17], leg);
        assert_eq!(ok[18..26], self.attach_seq.to_be_bytes());
        assert_eq!(&ok[34..], &hmac256(&self.attach_exit, &[&ok[..34]]));
        u64::from_be_bytes(ok[26..34].try_into().expect("8"))
    }

    /// Everything the exit sends now, opened by hand.
    fn receive(&mut self) -> Vec<(u64, Vec<F>)> {
        std::iter::from_fn(|| self.exit.poll_transmit(self.now))
            .map(|t| {
                assert_eq!(t.leg, Leg::Down);
                let (counter, plain) = self.down.open(&t.payload);
                (counter, parse(&plain))
            })
            .collect()
    }
}

fn exchange(cipher_bits: u8, psk: Option<[u8; 32]>) {
    let mut p = connect(cipher_bits, psk, 8);
    let mut frames = dns_query(7, b"query");
    frames.extend_from_slice(&[0x01, 0, 0, 0, 0, 0, 0, 0, 42]); // Ping 42
    assert_eq!(p.send(&frames), Ok(()));
    assert_eq!(
        p.exit.poll_event(),
        Some(Event::DnsQuery {
            id: 7,
            msg: Bytes::from_static(b"query")
        })
    );
    assert_eq!(p.attach(2, 0), 1, "the exit expects up record 1 next");
    assert_eq!(
        p.exit.send_dns_response(7, Bytes::from_static(b"answer")),
        Ok(true)
    );
    let got = p.receive();
    assert_eq!(got.len(), 1);
    let (counter, frames) = &got[0];
    assert_eq!(*counter, 0);
    assert!(frames.contains(&F::Pong(42)), "{frames:?}");
    assert!(frames.contains(&F::DnsResponse(7, b"answer".to_vec())));
    assert_eq!(
        frames.last(),
        Some(&F::Ack(1)),
        "§6.3: the Ack is appended at sealing"
    );

    // Both directions across two key epochs (shift 8 → 256 records per epoch).
    for i in 1..600u32 {
        assert_eq!(p.send(&dns_query(i, b"q")), Ok(()), "up record {i}");
        assert_eq!(
            p.exit.send_dns_response(i, Bytes::from_static(b"a")),
            Ok(true)
        );
        for (c, frames) in p.receive() {
            assert!(
                frames.contains(&F::DnsResponse(i, b"a".to_vec())),
                "down {c}"
            );
        }
    }
    assert_eq!(p.down.epoch, 2);
    assert_eq!(p.exit.stats().tx_epoch, 2);
}

#[test]
fn aes_without_psk() {
    exchange(0x01, None);
}

#[test]
fn chacha_with_psk() {
    exchange(0x02, Some([7; 32]));
}

#[test]
fn exit_prefers_its_own_order() {
    let p = connect(0x03, None, 24);
    assert_eq!(p.up.alg, &aead::AES_256_GCM);
}

#[test]
fn a_close_frame_by_hand_closes_the_exit() {
    let mut p = connect(0x01, None, 24);
    let close = [0x10, 0x00, 0x00, 0x03, b'b', b'y', b'e'];
    assert_eq!(p.send(&close), Ok(()));
    assert_eq!(
        p.exit.poll_event(),
        Some(Event::Closed {
            code: CloseCode::Normal,
            reason: "bye".into(),
            remote: true
        })
    );
}

#[test]
fn a_wrong_direction_frame_closes_the_session() {
    let mut p = connect(0x01, None, 24);
    p.attach(2, 0);
    // Accept (0x05) is exit→client only.
    let e = p.send(&[0x05, 0, 0, 0, 1]).unwrap_err();
    assert_eq!(e.scope(), Scope::Session);
    assert!(p.exit.is_closed());
    let got = p.receive();
    let (_, frames) = got.last().expect("a close record");
    assert!(matches!(
        frames.last(),
        Some(F::Close(1, _)) | Some(F::Ack(_))
    ));
    assert!(
        frames.iter().any(|f| matches!(f, F::Close(1, _))),
        "{frames:?}"
    );
}

/// Undecodable frames inside an authenticated record end the session (`Scope::Session`).
#[test]
fn a_malformed_frame_in_a_record_is_a_session_error() {
    let mut p = connect(0x01, None, 24);
    let e = p.send(&[0x11]).unwrap_err(); // unknown frame type, authenticated
    assert!(p.exit.is_closed(), "the session was closed");
    assert_eq!(e.scope(), Scope::Session, "{e:?}");
}

/// Frames the core queues in answer to the peer (`Pong` for every `Ping`, `Reset
/// {TooManyStreams}` for every excess `Open`) bypass the send budget of §10, and sealed
/// records stay until the peer acknowledges them. An authenticated client that fills its
/// records with pings and never acknowledges makes the exit's memory grow without bound
/// (at the client's upload rate). Here: budget = 4,096 + 2 × 65,600 bytes, and 16
/// records of pings leave about 0.5 MB queued at the exit. Fix: answer at most one
/// outstanding `Pong` (e.g. only the latest ping id), coalesce excess-stream resets, or
/// count these frames against the budget and end the session when a peer exceeds it.
#[test]
fn pings_from_a_peer_that_never_acknowledges_stay_within_the_budget() {
    let limits = Limits {
        stream_window: 4_096,
        session_window: 4_096,
        max_record: 65_600,
    };
    let mut p = connect_with(0x01, None, 24, limits);
    p.attach(2, 0);
    let budget = (limits.session_window + 2 * limits.max_record) as usize;
    let mut pings = Vec::new();
    // One record of pings, within the exit's max_record.
    for id in 0..(65_536 / 9) as u64 {
        pings.push(0x01);
        pings.extend_from_slice(&id.to_be_bytes());
    }
    for _ in 0..16 {
        assert_eq!(p.send(&pings), Ok(()));
        // Drain what the exit sends (it goes nowhere; nothing is ever acknowledged).
        while p.exit.poll_transmit(p.now).is_some() {}
    }
    let held = p.exit.buffered_bytes();
    assert!(
        held <= budget,
        "the exit holds {held} bytes, budget {budget}"
    );
}

/// What the exit may hold for one session is bounded by the limits the *client* announces, up to
/// `u32::MAX` each. A client announcing 4 GiB windows and a 4 GiB `max_record` lets the
/// exit take 4 GiB of writes on one stream (and its sender reserves `max_record + 25`
/// bytes for every record it opens: a 4 GiB allocation). Fix: an upper bound on announced
/// values (refuse with `BadParameter`, or clamp to local maxima).
#[test]
fn what_the_exit_buffers_is_bounded_by_its_own_settings() {
    let huge = Limits {
        stream_window: u32::MAX,
        session_window: u32::MAX,
        max_record: u32::MAX,
    };
    let mut p = connect_with(0x01, None, 24, huge);
    // Open stream 1 (TCP to 192.0.2.1:80) by hand, §5.2.
    let open = [0x04, 0, 0, 0, 1, 0x01, 0x04, 192, 0, 2, 1, 0, 80];
    assert_eq!(p.send(&open), Ok(()));
    let id = proto::StreamId(1);
    assert!(p.exit.has_stream(id));
    let own = Settings::default();
    let bound = (own.session_window + 2 * own.max_record) as usize;
    let writable = p.exit.stream_writable(id).expect("stream");
    assert!(writable <= bound, "one stream may buffer {writable} bytes");
}
