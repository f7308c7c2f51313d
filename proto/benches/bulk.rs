//! Bulk-transfer throughput of the protocol core, per core.
//!
//! `cargo bench -p proto --bench bulk` (add `-- quick` for one smaller run of each case).
//!
//! Both endpoints run on this one thread, so every figure is "per core with both ends
//! on it": each byte is framed, flow-controlled, sealed, copied into a receive buffer,
//! opened and parsed once, and acknowledged the other way, all within the time measured.
//!
//! * `pair` cases run `proto::sim::Pair` with `proto::sim::Bulk`: the full deterministic
//!   harness (simulated links, timers, events) and a per-byte pattern check on read.
//! * `core` cases drive the two `Connection`s directly — `stream_write`, `poll_transmit`,
//!   `handle_record`, `stream_read` — with a static buffer and no checking: the cost of
//!   the protocol core alone.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use proto::message::Attach;
use proto::sim::{Bulk, Pair, PairConfig};
use proto::{
    Accept, Acceptor, AllowedClient, Cipher, ClientConfig, ClientHandshake, Connection,
    Destination, Event, Leg, Read, Settings, StreamId, StreamKind, generate_keypair,
};

const RUNS: usize = 5;
const MIB: u64 = 1024 * 1024;

/// Which ways the bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ways {
    Up,
    Both,
}

#[derive(Debug, Clone, Copy)]
struct Case {
    harness: &'static str,
    cipher: Cipher,
    streams: usize,
    ways: Ways,
}

fn settings(cipher: Cipher) -> Settings {
    Settings {
        ciphers: vec![cipher],
        ..Settings::default()
    }
}

/// One `Pair` + `Bulk` run moving `total` bytes; returns (bytes, seconds).
fn run_pair(case: Case, total: u64) -> (u64, f64) {
    let cfg = PairConfig {
        client: settings(case.cipher),
        ..PairConfig::default()
    };
    let mut pair = Pair::new(cfg).expect("handshake");
    assert_eq!(pair.client.cipher(), case.cipher);
    let per_way = match case.ways {
        Ways::Up => total,
        Ways::Both => total / 2,
    };
    let per_stream = per_way / case.streams as u64;
    let down = if case.ways == Ways::Both {
        per_stream
    } else {
        0
    };
    let mut bulk = Bulk::new(case.streams, per_stream, down);
    let started = Instant::now();
    let r = pair.run(&mut bulk, Duration::from_secs(3600), Bulk::done);
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(r, Ok(()), "{case:?}");
    assert_eq!(bulk.corrupt, 0);
    (bulk.verified(), secs)
}

/// A client and an exit with both legs attached, driven without the harness.
struct Core {
    now: Instant,
    client: Connection,
    exit: Connection,
}

impl Core {
    fn new(cipher: Cipher) -> Core {
        let (client_private, client_public) = generate_keypair();
        let (exit_private, exit_public) = generate_keypair();
        let config = ClientConfig {
            private_key: client_private,
            exit_public_key: exit_public,
            psk: None,
            settings: settings(cipher),
        };
        let allowed = [AllowedClient {
            public_key: client_public,
            psk: None,
        }];
        let mut acceptor = Acceptor::new(exit_private, &allowed, Settings::default());
        let now = Instant::now();
        let (hs, init) = ClientHandshake::start(&config, 1).expect("start");
        let Ok(Accept::Session(accepted)) = acceptor.accept(now, Duration::from_secs(1), &init)
        else {
            panic!("handshake refused");
        };
        let mut client = hs.finish(now, &accepted.response).expect("finish");
        let mut exit = accepted.connection;
        let attach = Attach::decode(&client.attach_request(Leg::Down)).expect("attach");
        let ok = exit.handle_attach(now, Leg::Down, &attach).expect("attach");
        client
            .handle_attach_ok(now, Leg::Down, &ok)
            .expect("attach ok");
        assert_eq!(client.cipher(), cipher);
        Core { now, client, exit }
    }

    /// Carry every pending record across (copied into a fresh receive buffer, as a
    /// WebSocket read would), and run timers that are due.
    fn pump(&mut self) {
        while let Some(t) = self.client.poll_transmit(self.now) {
            let msg = BytesMut::from(&t.payload[..]);
            self.exit
                .handle_record(self.now, t.leg, msg)
                .expect("up record");
        }
        while let Some(t) = self.exit.poll_transmit(self.now) {
            let msg = BytesMut::from(&t.payload[..]);
            self.client
                .handle_record(self.now, t.leg, msg)
                .expect("down record");
        }
        for conn in [&mut self.client, &mut self.exit] {
            if conn.poll_timeout().is_some_and(|t| t <= self.now) {
                conn.handle_timeout(self.now);
            }
        }
    }
}

/// Write as much as credit allows; returns bytes taken.
fn write_all(conn: &mut Connection, ids: &[StreamId], buf: &[u8], left: &mut [u64]) -> u64 {
    let mut taken = 0;
    for (id, left) in ids.iter().zip(left.iter_mut()) {
        while *left > 0 {
            let len = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
            match conn.stream_write(*id, &buf[..len]) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    *left -= n as u64;
                    taken += n as u64;
                }
            }
        }
    }
    taken
}

/// Read everything readable without looking at it; returns bytes read.
fn read_all(now: Instant, conn: &mut Connection, ids: &[StreamId]) -> u64 {
    let mut got = 0;
    for id in ids {
        while let Ok(Read::Data(d)) = conn.stream_read(now, *id, usize::MAX) {
            got += d.len() as u64;
        }
    }
    got
}

/// One direct run moving `total` bytes; returns (bytes, seconds).
fn run_core(case: Case, total: u64) -> (u64, f64) {
    let mut core = Core::new(case.cipher);
    let ids: Vec<StreamId> = (0..case.streams)
        .map(|i| {
            let dest = Destination::Addr(([192, 0, 2, 1], 1000 + i as u16).into());
            core.client
                .open_stream(StreamKind::Tcp, dest)
                .expect("open")
        })
        .collect();
    core.pump();
    while let Some(e) = core.exit.poll_event() {
        if let Event::StreamOpened { id, .. } = e {
            core.exit.accept_stream(id).expect("accept");
        }
    }
    core.pump();
    let per_way = match case.ways {
        Ways::Up => total,
        Ways::Both => total / 2,
    };
    let per_stream = per_way / case.streams as u64;
    let mut up_left = vec![per_stream; case.streams];
    let down = if case.ways == Ways::Both {
        per_stream
    } else {
        0
    };
    let mut down_left = vec![down; case.streams];
    let want = per_stream * case.streams as u64 + down * case.streams as u64;
    let buf = vec![0x5a_u8; 256 * 1024];
    let mut got = 0;
    let started = Instant::now();
    let mut idle_rounds = 0;
    while got < want {
        let moved = write_all(&mut core.client, &ids, &buf, &mut up_left)
            + write_all(&mut core.exit, &ids, &buf, &mut down_left);
        core.pump();
        let read =
            read_all(core.now, &mut core.exit, &ids) + read_all(core.now, &mut core.client, &ids);
        got += read;
        core.pump();
        // Events are not needed here (writes are retried every round); drop them.
        while core.client.poll_event().is_some() {}
        while core.exit.poll_event().is_some() {}
        core.now += Duration::from_micros(20);
        idle_rounds = if moved + read == 0 {
            idle_rounds + 1
        } else {
            0
        };
        assert!(idle_rounds < 100_000, "{case:?} stalled at {got} of {want}");
    }
    (got, started.elapsed().as_secs_f64())
}

struct Summary {
    median: f64,
    min: f64,
    max: f64,
}

fn summarize(mut rates: Vec<f64>) -> Summary {
    rates.sort_by(f64::total_cmp);
    Summary {
        median: rates[rates.len() / 2],
        min: rates[0],
        max: rates[rates.len() - 1],
    }
}

fn cipher_name(c: Cipher) -> &'static str {
    match c {
        Cipher::Aes256Gcm => "AES-256-GCM",
        Cipher::ChaCha20Poly1305 => "ChaCha20-Poly1305",
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let (runs, total) = if quick {
        (1, 64 * MIB)
    } else {
        (RUNS, 256 * MIB)
    };
    let mut cases = Vec::new();
    for harness in ["core", "pair"] {
        for cipher in [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305] {
            for streams in [1, 16] {
                for ways in [Ways::Up, Ways::Both] {
                    cases.push(Case {
                        harness,
                        cipher,
                        streams,
                        ways,
                    });
                }
            }
        }
    }
    println!(
        "proto bulk throughput, both endpoints on one core; {} MiB per run, {runs} runs; MiB/s of stream payload",
        total / MIB
    );
    println!(
        "{:<5} {:<18} {:>7} {:>5} {:>9} {:>9} {:>9} {:>8}",
        "path", "cipher", "streams", "ways", "median", "min", "max", "Gbit/s"
    );
    for case in cases {
        let rates: Vec<f64> = (0..runs)
            .map(|_| {
                let (bytes, secs) = match case.harness {
                    "core" => run_core(case, total),
                    _ => run_pair(case, total),
                };
                bytes as f64 / MIB as f64 / secs
            })
            .collect();
        let s = summarize(rates);
        println!(
            "{:<5} {:<18} {:>7} {:>5} {:>9.0} {:>9.0} {:>9.0} {:>8.2}",
            case.harness,
            cipher_name(case.cipher),
            case.streams,
            match case.ways {
                Ways::Up => "up",
                Ways::Both => "both",
            },
            s.median,
            s.min,
            s.max,
            s.median * MIB as f64 * 8.0 / 1e9,
        );
    }
}
