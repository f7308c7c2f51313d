//! The session state machine as a sequence of operations (TESTPLAN §4, §24): the input
//! picks application calls on both ends, leg cuts and re-attaches, the passage of time, a
//! relay that flips, drops, duplicates, delays or replaces messages, and raw garbage fed to
//! `handle_record`. Whatever happens: no panic, no livelock of the simulated drivers, and
//! every stream byte an application reads is the byte the other end wrote at that offset
//! (nothing forged or misplaced ever surfaces).
#![no_main]

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use proto::sim::{App, Dir, LinkConfig, Pair, PairConfig, SimError, Verdict, pattern_byte};
use proto::{
    CloseCode, Connection, Destination, Event, Leg, Read, ResetCode, Scope, Settings, StreamId,
    StreamKind,
};

/// Operations per input, and simulated time per step: keeps each run short.
const MAX_OPS: usize = 96;

/// The input, read a byte at a time; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Offsets written and read of one stream: up written, up read, down written, down read.
#[derive(Default, Clone, Copy)]
struct Offsets([u64; 4]);

/// The down direction's pattern is told apart from the up direction's by this stream tag.
fn down_tag(id: StreamId) -> u32 {
    id.0 ^ 0x8000_0000
}

#[derive(Default)]
struct Fz {
    client_streams: Vec<(StreamId, StreamKind)>,
    exit_streams: Vec<StreamId>,
    offsets: HashMap<StreamId, Offsets>,
}

impl App for Fz {
    fn poll(&mut self, _: Instant, _: &mut Connection, _: &mut Connection) {}
    fn client_event(&mut self, _: Instant, _: &mut Connection, _: Event) {}
    fn exit_event(&mut self, _: Instant, _: &mut Connection, event: Event) {
        if let Event::StreamOpened { id, .. } = event {
            self.exit_streams.push(id);
        }
    }
}

impl Fz {
    fn pick_client(&self, b: u8) -> Option<(StreamId, StreamKind)> {
        let n = self.client_streams.len();
        (n > 0).then(|| self.client_streams[usize::from(b) % n])
    }

    fn pick_exit(&self, b: u8) -> Option<StreamId> {
        let n = self.exit_streams.len();
        (n > 0).then(|| self.exit_streams[usize::from(b) % n])
    }
}

fn pattern(tag: u32, from: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| pattern_byte(tag, from + i))
        .collect()
}

fn write(conn: &mut Connection, id: StreamId, tag: u32, written: &mut u64, len: usize) {
    let data = pattern(tag, *written, len);
    if let Ok(n) = conn.stream_write(id, &data) {
        assert!(n <= len);
        *written += n as u64;
    }
}

fn read(now: Instant, conn: &mut Connection, id: StreamId, tag: u32, read: &mut u64, max: usize) {
    if let Ok(Read::Data(d)) = conn.stream_read(now, id, max) {
        assert!(!d.is_empty() && d.len() <= max);
        assert_eq!(
            &d[..],
            &pattern(tag, *read, d.len())[..],
            "stream {id} corrupted"
        );
        *read += d.len() as u64;
    }
}

fn dest(input: &mut Input<'_>) -> Destination {
    let b = input.byte();
    match b % 3 {
        0 => Destination::Addr(([192, 0, 2, b], 443).into()),
        1 => Destination::Addr((std::net::Ipv6Addr::LOCALHOST, 53).into()),
        _ => Destination::domain("example.com", u16::from(b)).expect("valid domain"),
    }
}

fn leg(b: u8) -> Leg {
    match b & 1 {
        0 => Leg::Up,
        _ => Leg::Down,
    }
}

/// A relay that misbehaves on the next `count` records of one direction.
fn tamper(pair: &mut Pair, input: &mut Input<'_>) {
    let kind = input.byte();
    let dir = if kind & 0x80 == 0 {
        Dir::ToExit
    } else {
        Dir::ToClient
    };
    let count = Rc::new(RefCell::new(1 + input.byte() % 4));
    let pos = usize::from(input.byte());
    let delay = Duration::from_millis(u64::from(input.byte()));
    let garbage = input.bytes(24);
    pair.set_tamper(move |_, d, msg| {
        let mut left = count.borrow_mut();
        if d != dir || *left == 0 {
            return Verdict::Pass;
        }
        *left -= 1;
        match kind % 6 {
            0 => Verdict::Drop,
            1 => Verdict::Duplicate,
            2 => Verdict::Delay(delay),
            3 => {
                let mut m = msg.to_vec();
                let i = pos % m.len().max(1);
                if let Some(b) = m.get_mut(i) {
                    *b ^= 1 << (kind % 8);
                }
                Verdict::Replace(m)
            }
            4 => Verdict::Replace(garbage.clone()),
            _ => {
                // Keep the header (type and counter), forge the rest.
                let mut m = msg[..msg.len().min(9)].to_vec();
                m.extend_from_slice(&garbage);
                Verdict::Replace(m)
            }
        }
    });
}

/// Raw bytes to `handle_record`, as a driver would pass a message from a leg.
fn garbage(pair: &mut Pair, input: &mut Input<'_>) {
    let how = input.byte();
    let leg = leg(how >> 1);
    let mut msg = BytesMut::new();
    if how & 4 != 0 {
        // A plausible header: record type and a counter near what the peer expects.
        msg.extend_from_slice(&[0x06]);
        msg.extend_from_slice(&u64::from(input.byte() % 8).to_be_bytes());
    }
    let n = usize::from(input.byte() % 64);
    msg.extend_from_slice(&input.bytes(n));
    let now = pair.now;
    let conn = match how & 1 {
        0 => &mut pair.client,
        _ => &mut pair.exit,
    };
    if let Err(e) = conn.handle_record(now, leg, msg) {
        if e.scope() == Scope::Leg {
            // The core detached the leg; the driver closes it (and the client reconnects).
            pair.cut(leg);
        }
    }
}

fn small(conn: &mut Connection, fz: &Fz, input: &mut Input<'_>) {
    let what = input.byte();
    let len = usize::from(input.byte()) * 4;
    let payload = Bytes::from(vec![what; len]);
    let _ = match what % 5 {
        0 => match fz.pick_client(input.byte()) {
            Some((id, _)) => conn.send_datagram(id, payload),
            None => Ok(false),
        },
        1 => conn.send_dns_query(u32::from(what), payload),
        2 => conn.send_dns_response(u32::from(what), payload),
        3 => conn.send_echo_request(u32::from(what), [192, 0, 2, 9].into(), payload),
        _ => conn.send_echo_reply(u32::from(what), payload),
    };
}

/// Run the simulation for `d`; false once the session is over.
fn advance(pair: &mut Pair, fz: &mut Fz, d: Duration) -> bool {
    match pair.run(fz, d, |_| false) {
        Ok(()) | Err(SimError::TimedOut) | Err(SimError::Stalled) => {
            !(pair.client.is_closed() || pair.exit.is_closed())
        }
        Err(SimError::Closed(_)) => false,
        Err(SimError::Busy(why)) => panic!("drivers spin without time advancing: {why}"),
    }
}

fn settings(b: u8) -> Settings {
    Settings {
        // Small windows and a small record size reach the flow-control edges quickly.
        stream_window: 4096 << (b % 4),
        session_window: 16384 << (b % 4),
        max_record: proto::MIN_MAX_RECORD,
        max_streams: 1 + u32::from(b % 8),
        rekey_shift: 8,
        fallback: b & 0x80 != 0,
        ..Settings::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let cfg_byte = input.byte();
    let cfg = PairConfig {
        client: settings(cfg_byte),
        exit: settings(cfg_byte.rotate_left(3)),
        up: LinkConfig::default(),
        down: LinkConfig::default(),
    };
    let mut pair = Pair::new(cfg).expect("handshake with valid settings");
    let mut fz = Fz::default();
    for _ in 0..MAX_OPS {
        if input.is_empty() || !advance(&mut pair, &mut fz, Duration::ZERO) {
            break;
        }
        let op = input.byte();
        let arg = input.byte();
        let now = pair.now;
        match op % 16 {
            0 => {
                let kind = if arg & 1 == 0 {
                    StreamKind::Tcp
                } else {
                    StreamKind::Udp
                };
                if let Ok(id) = pair.client.open_stream(kind, dest(&mut input)) {
                    fz.client_streams.push((id, kind));
                }
            }
            1 => {
                if let Some((id, _)) = fz.pick_client(arg) {
                    let o = fz.offsets.entry(id).or_default();
                    let len = usize::from(input.byte()) << 6;
                    write(&mut pair.client, id, id.0, &mut o.0[0], len);
                }
            }
            2 => {
                if let Some(id) = fz.pick_exit(arg) {
                    let o = fz.offsets.entry(id).or_default();
                    let len = usize::from(input.byte()) << 6;
                    write(&mut pair.exit, id, down_tag(id), &mut o.0[2], len);
                }
            }
            3 => {
                if let Some((id, _)) = fz.pick_client(arg) {
                    let o = fz.offsets.entry(id).or_default();
                    let max = 1 + (usize::from(input.byte()) << 8);
                    read(now, &mut pair.client, id, down_tag(id), &mut o.0[3], max);
                }
            }
            4 => {
                if let Some(id) = fz.pick_exit(arg) {
                    let o = fz.offsets.entry(id).or_default();
                    let max = 1 + (usize::from(input.byte()) << 8);
                    read(now, &mut pair.exit, id, id.0, &mut o.0[1], max);
                }
            }
            5 => {
                let b = input.byte();
                let _ = match arg & 1 {
                    0 => fz
                        .pick_client(b)
                        .map(|(id, _)| pair.client.stream_finish(id)),
                    _ => fz.pick_exit(b).map(|id| pair.exit.stream_finish(id)),
                };
            }
            6 => {
                let b = input.byte();
                let code = ResetCode::from_code(u16::from(b));
                let _ = match arg & 1 {
                    0 => fz
                        .pick_client(b)
                        .map(|(id, _)| pair.client.reset_stream(id, code)),
                    _ => fz.pick_exit(b).map(|id| pair.exit.reset_stream(id, code)),
                };
            }
            7 => {
                if let Some(id) = fz.pick_exit(arg) {
                    let _ = pair.exit.accept_stream(id);
                }
            }
            8 => pair.cut(leg(arg)),
            9 => pair.reattach(leg(arg)),
            10 => {
                let d = match arg {
                    255 => Duration::from_secs(20),
                    a => Duration::from_millis(u64::from(a) * 10),
                };
                if !advance(&mut pair, &mut fz, d) {
                    break;
                }
            }
            11 => tamper(&mut pair, &mut input),
            12 => pair.clear_tamper(),
            13 => garbage(&mut pair, &mut input),
            14 => match arg & 1 {
                0 => small(&mut pair.client, &fz, &mut input),
                _ => small(&mut pair.exit, &fz, &mut input),
            },
            _ => {
                let code = CloseCode::from_code(u16::from(arg));
                match arg & 1 {
                    0 => pair.client.close(code, "fuzz"),
                    _ => pair.exit.close(code, "fuzz"),
                }
            }
        }
    }
    // Let whatever is in flight land, still checking what is read.
    let _ = advance(&mut pair, &mut fz, Duration::from_millis(200));
});
