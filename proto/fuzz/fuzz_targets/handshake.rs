//! The handshake parsers (TESTPLAN §3, §24, docs/PROTOCOL.md §3): arbitrary bytes fed to
//! the exit's `Acceptor::accept` (raw, and with a correct mac1 so that the bytes reach the
//! version check and the Noise parser) and to the client's `ClientHandshake::finish` never
//! panic and never produce a session; a genuine client with fuzz-chosen settings always
//! completes, its message cannot be replayed, and a tampered answer is always refused.
#![no_main]

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use proto::{
    Accept, Acceptor, AllowedClient, Cipher, ClientConfig, ClientHandshake, Error, Settings,
    public_key,
};
use ring::{digest, hmac};

const EXIT_PRIVATE: [u8; 32] = [0x11; 32];
const CLIENT_PRIVATE: [u8; 32] = [0x22; 32];
/// The exit's wall clock in every run.
const UNIX_NOW: Duration = Duration::from_secs(1_700_000_000);

fn allowed() -> [AllowedClient; 1] {
    [AllowedClient {
        public_key: public_key(&CLIENT_PRIVATE),
        psk: None,
    }]
}

/// Built once: the fixed exit that receives the raw inputs.
fn acceptor() -> &'static Mutex<Acceptor> {
    static ACCEPTOR: OnceLock<Mutex<Acceptor>> = OnceLock::new();
    ACCEPTOR
        .get_or_init(|| Mutex::new(Acceptor::new(EXIT_PRIVATE, &allowed(), Settings::default())))
}

fn exit_public() -> [u8; 32] {
    static PUBLIC: OnceLock<[u8; 32]> = OnceLock::new();
    *PUBLIC.get_or_init(|| public_key(&EXIT_PRIVATE))
}

/// docs/PROTOCOL.md §3.2, computed independently of proto: HMAC-SHA256 keyed with
/// SHA-256("half-tunnel v1 mac1" ‖ exit public key).
fn with_mac1(body: &[u8]) -> Vec<u8> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"half-tunnel v1 mac1");
    ctx.update(&exit_public());
    let key = hmac::Key::new(hmac::HMAC_SHA256, ctx.finish().as_ref());
    let mut msg = body.to_vec();
    msg.extend_from_slice(hmac::sign(&key, body).as_ref());
    msg
}

fn client_config(settings: Settings) -> ClientConfig {
    ClientConfig {
        private_key: CLIENT_PRIVATE,
        exit_public_key: exit_public(),
        psk: None,
        settings,
    }
}

fn accept_raw(msg: &[u8]) {
    let mut acceptor = acceptor().lock().unwrap_or_else(|e| e.into_inner());
    match acceptor.accept(Instant::now(), UNIX_NOW, msg) {
        // Only the genuine client key can complete a handshake; fuzz input cannot.
        Ok(Accept::Session(_)) => panic!("a session from fuzz bytes"),
        Ok(Accept::Refuse(r)) => assert_eq!(proto::message::message_type(&r), Ok(0x03)),
        Err(_) => {}
    }
}

/// Settings of a genuine client, chosen by the input.
fn fuzzed_settings(b: &[u8]) -> Settings {
    let get = |i: usize| b.get(i).copied().unwrap_or(0);
    let word = |i: usize| u32::from_be_bytes([get(i), get(i + 1), get(i + 2), get(i + 3)]);
    let ciphers = match get(0) % 3 {
        0 => vec![Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305],
        1 => vec![Cipher::ChaCha20Poly1305],
        _ => vec![Cipher::Aes256Gcm],
    };
    Settings {
        ciphers,
        fallback: get(1) & 1 == 1,
        rekey_shift: 8 + get(2) % 33,
        stream_window: word(3),
        session_window: word(7),
        max_record: word(11),
        ..Settings::default()
    }
}

fn genuine(b: &[u8]) {
    let settings = fuzzed_settings(b);
    let timestamp = UNIX_NOW.as_nanos() as u64 - 1_000 + u64::from(b.get(15).copied().unwrap_or(0));
    let Ok((hs, init)) = ClientHandshake::start(&client_config(settings.clone()), timestamp) else {
        return;
    };
    let mut exit = Acceptor::new(EXIT_PRIVATE, &allowed(), Settings::default());
    let now = Instant::now();
    let accepted = match exit.accept(now, UNIX_NOW, &init) {
        Ok(Accept::Session(a)) => a,
        Ok(Accept::Refuse(_)) => panic!("version 1 refused"),
        Err(e) => {
            // Only the client's own announced limits can make a genuine handshake fail.
            assert!(matches!(e, Error::BadParameter(_)), "{e:?}");
            return;
        }
    };
    assert_eq!(
        exit.accept(now, UNIX_NOW, &init).err(),
        Some(Error::ReplayedHandshake)
    );
    // The same timestamp in a fresh message (new ephemeral key) is stale.
    let (_, init2) = ClientHandshake::start(&client_config(settings.clone()), timestamp)
        .expect("started once already");
    assert_eq!(
        exit.accept(now, UNIX_NOW, &init2).err(),
        Some(Error::StaleTimestamp)
    );

    // A tampered answer is always refused (checked on a second genuine handshake, since
    // `finish` consumes its state); the genuine answer always completes.
    let (hs2, init3) = ClientHandshake::start(&client_config(settings), timestamp + 1)
        .expect("started once already");
    let Ok(Accept::Session(second)) = exit.accept(now, UNIX_NOW, &init3) else {
        panic!("a newer genuine handshake is refused");
    };
    let mut tampered = second.response.to_vec();
    for (i, x) in b.iter().skip(16).enumerate() {
        if let Some(t) = tampered.get_mut(i) {
            *t ^= x;
        }
    }
    match tampered[..] == second.response[..] {
        true => assert!(hs2.finish(now, &tampered).is_ok(), "genuine answer refused"),
        false => assert!(
            hs2.finish(now, &tampered).is_err(),
            "tampered answer accepted"
        ),
    }
    let client = hs.finish(now, &accepted.response).expect("genuine answer");
    assert_eq!(client.session_id(), accepted.connection.session_id());
    assert_eq!(client.cipher(), accepted.connection.cipher());
}

fn finish_raw(msg: &[u8]) {
    let config = client_config(Settings::default());
    let (hs, _) = ClientHandshake::start(&config, 1).expect("fixed valid config");
    assert!(
        hs.finish(Instant::now(), msg).is_err(),
        "a session from fuzz bytes"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => accept_raw(rest),
        1 => {
            let mut body = vec![0x01];
            body.extend_from_slice(rest);
            accept_raw(&with_mac1(&body));
        }
        2 => genuine(rest),
        _ => finish_raw(rest),
    }
});
