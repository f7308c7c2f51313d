//! Handshake acceptance and refusal (TESTPLAN §2–3).

use super::*;
use crate::crypto::generate_keypair;

struct World {
    client: ClientConfig,
    acceptor: Acceptor,
    now: Instant,
    unix: Duration,
}

fn world(psk: Option<[u8; 32]>) -> World {
    let (cpriv, cpub) = generate_keypair();
    let (epriv, epub) = generate_keypair();
    let allowed = [AllowedClient {
        public_key: cpub,
        psk,
    }];
    World {
        client: ClientConfig {
            private_key: cpriv,
            exit_public_key: epub,
            psk,
            settings: Settings::default(),
        },
        acceptor: Acceptor::new(epriv, &allowed, Settings::default()),
        now: Instant::now(),
        unix: Duration::from_secs(1_800_000_000),
    }
}

fn ts(w: &World, plus_secs: i64) -> u64 {
    (w.unix.as_nanos() as i64 + plus_secs * 1_000_000_000) as u64
}

fn accept(w: &mut World, msg: &[u8]) -> Result<Accept, Error> {
    w.acceptor.accept(w.now, w.unix, msg)
}

#[test]
fn a_valid_handshake_creates_matching_sessions() {
    let mut w = world(None);
    let (hs, init) = ClientHandshake::start(&w.client, ts(&w, 0)).unwrap();
    let Accept::Session(acc) = accept(&mut w, &init).unwrap() else {
        panic!("refused")
    };
    let client = hs.finish(w.now, &acc.response).unwrap();
    assert_eq!(client.session_id(), acc.connection.session_id());
    assert_eq!(client.session_id().get_version_num(), 4);
    assert_eq!(client.cipher(), Cipher::Aes256Gcm);
    assert_eq!(acc.client_key, crate::public_key(&w.client.private_key));
}

#[test]
fn replays_are_refused_before_any_state_is_created() {
    let mut w = world(None);
    let (_, init) = ClientHandshake::start(&w.client, ts(&w, 0)).unwrap();
    assert!(accept(&mut w, &init).is_ok());
    // Same bytes, same or new connection, minutes later: refused by the cheap cache.
    assert_eq!(accept(&mut w, &init).unwrap_err(), Error::ReplayedHandshake);
    w.unix += Duration::from_secs(600);
    assert_eq!(accept(&mut w, &init).unwrap_err(), Error::ReplayedHandshake);
    // A fresh message with an old or equal timestamp: refused after the DH.
    let (_, old) = ClientHandshake::start(&w.client, ts(&w, -600)).unwrap();
    assert_eq!(accept(&mut w, &old).unwrap_err(), Error::StaleTimestamp);
    let (_, newer) = ClientHandshake::start(&w.client, ts(&w, 0)).unwrap();
    assert!(accept(&mut w, &newer).is_ok());
}

#[test]
fn the_replay_cache_is_bounded_and_timestamps_still_protect() {
    let mut w = world(None);
    let (_, first) = ClientHandshake::start(&w.client, ts(&w, 0)).unwrap();
    assert!(accept(&mut w, &first).is_ok());
    for i in 0..REPLAY_CACHE + 1 {
        let mut tag = [0xee; 32];
        tag[..8].copy_from_slice(&(i as u64).to_be_bytes());
        assert!(w.acceptor.recent.insert(tag));
    }
    assert!(w.acceptor.recent.order.len() <= REPLAY_CACHE);
    assert_eq!(accept(&mut w, &first).unwrap_err(), Error::StaleTimestamp);
}

#[test]
fn a_timestamp_far_in_the_future_is_refused() {
    let mut w = world(None);
    let (_, init) = ClientHandshake::start(&w.client, ts(&w, 3600)).unwrap();
    assert_eq!(
        accept(&mut w, &init).unwrap_err(),
        Error::FutureTimestamp { ahead_secs: 3600 }
    );
    // And it did not poison the newest timestamp.
    let (_, ok) = ClientHandshake::start(&w.client, ts(&w, 1)).unwrap();
    assert!(accept(&mut w, &ok).is_ok());
}

#[test]
fn unknown_clients_and_wrong_exit_keys_are_refused() {
    let mut w = world(None);
    let mut stranger = w.client.clone();
    stranger.private_key = generate_keypair().0;
    let (_, init) = ClientHandshake::start(&stranger, ts(&w, 0)).unwrap();
    assert_eq!(accept(&mut w, &init).unwrap_err(), Error::UnknownClient);
    // A client that pinned another exit key fails the cheap check: no DH is spent.
    let mut misled = w.client.clone();
    misled.exit_public_key = generate_keypair().1;
    let (_, init) = ClientHandshake::start(&misled, ts(&w, 1)).unwrap();
    assert_eq!(accept(&mut w, &init).unwrap_err(), Error::BadMac);
}

#[test]
fn random_and_truncated_bytes_get_no_answer() {
    let mut w = world(None);
    let mut junk = vec![ty::HANDSHAKE_INIT, VERSION];
    junk.extend((0..200u32).map(|i| (i * 37 % 256) as u8));
    assert_eq!(accept(&mut w, &junk).unwrap_err(), Error::BadMac);
    assert!(accept(&mut w, &[]).is_err());
    assert!(accept(&mut w, &[ty::HANDSHAKE_INIT]).is_err());
    assert!(accept(&mut w, b"GET / HTTP/1.1\r\n\r\n").is_err());
    let (_, init) = ClientHandshake::start(&w.client, ts(&w, 0)).unwrap();
    assert!(accept(&mut w, &init[..init.len() - 1]).is_err());
}

#[test]
fn an_unknown_version_is_refused_cleanly() {
    let mut w = world(None);
    let (hs, init) = ClientHandshake::start(&w.client, ts(&w, 0)).unwrap();
    let mut body = init[..init.len() - MAC_LEN].to_vec();
    body[1] = 9;
    let mac1 = crypto::mac(&crypto::mac1_key(&w.client.exit_public_key), &body);
    body.extend_from_slice(&mac1);
    let Accept::Refuse(reply) = accept(&mut w, &body).unwrap() else {
        panic!("accepted a future version")
    };
    assert_eq!(
        hs.finish(w.now, &reply).unwrap_err(),
        Error::UnsupportedVersion {
            offered: VERSION,
            supported: vec![VERSION]
        }
    );
}

#[test]
fn psk_mismatch_fails_the_handshake() {
    let mut w = world(Some([5; 32]));
    let (hs, init) = ClientHandshake::start(&w.client, ts(&w, 0)).unwrap();
    let Accept::Session(acc) = accept(&mut w, &init).unwrap() else {
        panic!()
    };
    assert!(hs.finish(w.now, &acc.response).is_ok());
    let mut wrong = w.client.clone();
    wrong.psk = Some([6; 32]);
    let (hs, init) = ClientHandshake::start(&wrong, ts(&w, 1)).unwrap();
    let Accept::Session(acc) = accept(&mut w, &init).unwrap() else {
        panic!()
    };
    assert_eq!(
        hs.finish(w.now, &acc.response).unwrap_err(),
        Error::HandshakeCrypto
    );
}

#[test]
fn revoked_keys_are_reported_and_refused() {
    let mut w = world(None);
    let key = crate::public_key(&w.client.private_key);
    assert_eq!(w.acceptor.set_clients(&[]), vec![key]);
    let (_, init) = ClientHandshake::start(&w.client, ts(&w, 0)).unwrap();
    assert_eq!(accept(&mut w, &init).unwrap_err(), Error::UnknownClient);
}

#[test]
fn cipher_choice_follows_the_exit_preference_within_the_client_set() {
    let mut w = world(None);
    w.client.settings.ciphers = vec![Cipher::ChaCha20Poly1305];
    let (hs, init) = ClientHandshake::start(&w.client, ts(&w, 0)).unwrap();
    let Accept::Session(acc) = accept(&mut w, &init).unwrap() else {
        panic!()
    };
    assert_eq!(
        hs.finish(w.now, &acc.response).unwrap().cipher(),
        Cipher::ChaCha20Poly1305
    );
}

/// Issue 20 §4: an init archived by a relay cannot be replayed after the exit restarts —
/// the newest timestamp per key is exported and restored (`replay_marks`), and an init
/// older than `max_past_skew` is refused even by an exit that lost them.
#[test]
fn archived_inits_are_refused_after_a_restart_and_past_the_window() {
    let (cpriv, cpub) = generate_keypair();
    let (epriv, epub) = generate_keypair();
    let allowed = [AllowedClient {
        public_key: cpub,
        psk: None,
    }];
    let client = ClientConfig {
        private_key: cpriv,
        exit_public_key: epub,
        psk: None,
        settings: Settings::default(),
    };
    let (now, unix) = (Instant::now(), Duration::from_secs(1_800_000_000));
    let at = |plus_secs: i64| (unix.as_nanos() as i64 + plus_secs * 1_000_000_000) as u64;
    let mut exit = Acceptor::new(epriv, &allowed, Settings::default());
    assert!(exit.replay_marks().is_empty());
    // The relay archives `first` and lets a newer init through.
    let (_, first) = ClientHandshake::start(&client, at(-10)).unwrap();
    let (_, second) = ClientHandshake::start(&client, at(0)).unwrap();
    assert!(exit.accept(now, unix, &second).is_ok());
    let marks = exit.replay_marks();
    assert_eq!(marks, vec![(cpub, at(0))]);

    // A restarted exit that forgot: the archived init would open a session.
    let mut forgetful = Acceptor::new(epriv, &allowed, Settings::default());
    assert!(forgetful.accept(now, unix, &first).is_ok(), "control");
    // One that restored the marks refuses it (after the cheap checks, before any state).
    let mut restarted = Acceptor::new(epriv, &allowed, Settings::default());
    restarted.restore_replay_marks(&marks);
    assert_eq!(
        restarted.accept(now, unix, &first).unwrap_err(),
        Error::StaleTimestamp
    );
    // A mark never lowers what is known, and unknown keys are ignored.
    restarted.restore_replay_marks(&[(cpub, 1), ([9; 32], u64::MAX)]);
    assert_eq!(restarted.replay_marks(), marks);

    // Without any mark, an init older than max_past_skew (120 s) is refused.
    let (_, archived) = ClientHandshake::start(&client, at(-600)).unwrap();
    let mut fresh = Acceptor::new(epriv, &allowed, Settings::default());
    assert_eq!(
        fresh.accept(now, unix, &archived).unwrap_err(),
        Error::PastTimestamp { behind_secs: 600 }
    );
    let (_, recent) = ClientHandshake::start(&client, at(-100)).unwrap();
    assert!(fresh.accept(now, unix, &recent).is_ok());
}
