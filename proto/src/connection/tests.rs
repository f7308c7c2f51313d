//! Session behaviour on the deterministic harness (`crate::sim`).

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use super::*;
use crate::sim::{Bulk, Dir, LinkConfig, Pair, PairConfig, SimError, Verdict};

const MIB: u64 = 1024 * 1024;

fn pair() -> Pair {
    Pair::new(PairConfig::default()).expect("handshake")
}

fn finish(pair: &mut Pair, bulk: &mut Bulk, limit_secs: u64) {
    let r = pair.run(bulk, Duration::from_secs(limit_secs), Bulk::done);
    assert_eq!(
        r,
        Ok(()),
        "stats: {:?}, verified {}",
        pair.stats,
        bulk.verified()
    );
    assert_eq!(bulk.corrupt, 0, "pattern mismatches");
    assert_eq!(bulk.resets, 0, "stream resets");
}

#[test]
fn bulk_transfer_survives_five_cuts_of_each_leg() {
    // A 32 MiB session window (4 MiB per stream): with the default 64 MiB the last tenth of
    // the transfer is already in flight when the last cut comes, and that cut goes unseen.
    let windows = Settings {
        session_window: 32 * 1024 * 1024,
        max_stream_window: 4 * 1024 * 1024,
        ..Settings::default()
    };
    let mut pair = Pair::new(PairConfig {
        client: windows.clone(),
        exit: windows,
        ..PairConfig::default()
    })
    .expect("handshake");
    let mut bulk = Bulk::new(16, 100 * MIB / 16, 100 * MIB / 16);
    let total = 200 * MIB;
    // Cut a leg at every 1/11 of the transfer: up, down, up, down, ...
    for k in 1..=10u64 {
        let goal = total * k / 11;
        let r = pair.run(&mut bulk, Duration::from_secs(600), |b| {
            b.verified() >= goal
        });
        assert_eq!(r, Ok(()), "cut {k}: {:?}", pair.stats);
        pair.cut(if k % 2 == 1 { Leg::Up } else { Leg::Down });
    }
    finish(&mut pair, &mut bulk, 600);
    assert_eq!(pair.stats.leg_failures, 10);
    assert!(pair.client.stats().legs[0].attaches >= 6);
    assert!(pair.client.stats().legs[1].attaches >= 6);
    assert!(pair.client.stats().retransmitted + pair.exit.stats().retransmitted > 0);
    assert_eq!(bulk.verified(), total);
}

#[test]
fn both_legs_cut_at_once_resume() {
    let mut pair = pair();
    let mut bulk = Bulk::new(4, 8 * MIB, 8 * MIB);
    pair.run(&mut bulk, Duration::from_secs(60), |b| {
        b.verified() > 20 * MIB
    })
    .unwrap();
    pair.cut(Leg::Up);
    pair.cut(Leg::Down);
    finish(&mut pair, &mut bulk, 120);
}

#[test]
fn a_flipped_bit_never_surfaces_and_the_leg_is_resumed() {
    for dir in [Dir::ToExit, Dir::ToClient] {
        let mut pair = pair();
        let flipped = Rc::new(Cell::new(0u32));
        let f = flipped.clone();
        pair.set_tamper(move |_, d, msg| {
            // Flip one ciphertext bit in every 50th record of that direction.
            if d == dir && msg.first() == Some(&message::ty::RECORD) && msg.len() > 100 {
                f.set(f.get() + 1);
                if f.get().is_multiple_of(50) {
                    let mut m = msg.to_vec();
                    m[60] ^= 0x10;
                    return Verdict::Replace(m);
                }
            }
            Verdict::Pass
        });
        let mut bulk = Bulk::new(4, 4 * MIB, 4 * MIB);
        finish(&mut pair, &mut bulk, 120);
        let stats = [pair.client.stats(), pair.exit.stats()];
        assert!(stats.iter().map(|s| s.auth_failures).sum::<u64>() > 0);
        assert!(
            pair.stats
                .errors
                .iter()
                .all(|e| e.contains("authentication"))
        );
    }
}

#[test]
fn a_forged_record_with_the_next_counter_is_rejected() {
    let mut pair = pair();
    let forged = Rc::new(Cell::new(false));
    let f = forged.clone();
    pair.set_tamper(move |_, d, msg| {
        if d == Dir::ToClient && msg.first() == Some(&message::ty::RECORD) && !f.get() {
            f.set(true);
            // Same header (type and counter), attacker-chosen body and tag.
            let mut m = msg[..RECORD_HEADER_LEN].to_vec();
            m.extend_from_slice(&[0x41; 64]);
            return Verdict::Replace(m);
        }
        Verdict::Pass
    });
    let mut bulk = Bulk::new(2, MIB, MIB);
    finish(&mut pair, &mut bulk, 60);
    assert!(forged.get());
    assert_eq!(pair.client.stats().auth_failures, 1);
}

#[test]
fn duplicated_records_are_dropped_silently() {
    let mut pair = pair();
    pair.set_tamper(|_, _, msg| match msg.first() {
        Some(&message::ty::RECORD) => Verdict::Duplicate,
        _ => Verdict::Pass,
    });
    let mut bulk = Bulk::new(2, 2 * MIB, 2 * MIB);
    finish(&mut pair, &mut bulk, 60);
    assert!(pair.client.stats().duplicates > 0 && pair.exit.stats().duplicates > 0);
    assert!(pair.stats.errors.is_empty(), "{:?}", pair.stats.errors);
}

#[test]
fn reordered_records_break_the_leg_and_it_recovers() {
    let mut pair = pair();
    let n = Rc::new(Cell::new(0u32));
    let c = n.clone();
    pair.set_tamper(move |_, d, msg| {
        if d == Dir::ToExit && msg.first() == Some(&message::ty::RECORD) {
            c.set(c.get() + 1);
            if c.get() == 20 {
                return Verdict::Delay(Duration::from_millis(30));
            }
        }
        Verdict::Pass
    });
    let mut bulk = Bulk::new(2, 4 * MIB, MIB);
    finish(&mut pair, &mut bulk, 60);
    assert!(pair.exit.stats().gaps >= 1);
}

#[test]
fn a_swallowed_leg_is_declared_dead_and_reattached() {
    let mut pair = pair();
    let swallow = Rc::new(Cell::new(true));
    let s = swallow.clone();
    let mut bulk = Bulk::new(2, 2 * MIB, 2 * MIB);
    pair.run(&mut bulk, Duration::from_secs(30), |b| b.verified() > MIB)
        .unwrap();
    // A relay that keeps the down connection open but forwards nothing.
    pair.set_tamper(move |leg, _, _| match leg == Leg::Down && s.get() {
        true => Verdict::Drop,
        false => Verdict::Pass,
    });
    let t0 = pair.now;
    pair.run(&mut bulk, Duration::from_secs(60), |_| false).ok();
    // Nothing moves while the leg swallows; the client must have noticed.
    assert!(pair.stats.leg_failures >= 1, "dead leg not detected");
    swallow.set(false);
    finish(&mut pair, &mut bulk, 120);
    assert!(pair.now > t0);
}

#[test]
fn a_stalled_reader_keeps_memory_bounded_and_resumes() {
    let mut pair = pair();
    let window = u64::from(Settings::default().session_window);
    let mut bulk = Bulk::new(8, 8 * MIB, 16 * MIB);
    bulk.client_reading = false;
    let r = pair.run(&mut bulk, Duration::from_secs(20), |_| false);
    assert!(matches!(
        r,
        Err(SimError::TimedOut) | Err(SimError::Stalled)
    ));
    // Client holds at most one session window of unread data; the exit holds at most what
    // the client may still accept plus records in flight.
    let client_buf = pair.client.buffered_bytes() as u64;
    let exit_buf = pair.exit.buffered_bytes() as u64;
    assert!(
        client_buf <= window + 2 * 128 * 1024,
        "client buffered {client_buf}"
    );
    assert!(
        exit_buf <= window + 4 * 128 * 1024,
        "exit buffered {exit_buf}"
    );
    let down_read: u64 = bulk.down.iter().map(|h| h.read).sum();
    assert_eq!(down_read, 0);
    bulk.client_reading = true;
    finish(&mut pair, &mut bulk, 120);
}

/// An app that pauses some connections after they ran at full speed (their windows
/// auto-tuned to the maximum) must not freeze the others: session credit follows receipt,
/// so the paused streams' unread bytes never hold it (§6.2). (iperf3 -R -P 4 stops reading
/// its four data connections at the end and then waits for a small message on its control
/// connection; under the old rule, session credit returned only as bytes were read, and
/// that message starved.) `proto/tests/paused_streams.rs` covers up to 1,000 paused streams.
#[test]
fn streams_paused_at_full_window_do_not_starve_the_others() {
    let mut pair = pair();
    let mut bulk = Bulk::new(5, 0, 64 * MIB);
    // Four streams stop being read after 40 MiB (their windows have grown to the maximum
    // by then); the fifth must still get all of its bytes.
    bulk.client_pause_at = vec![
        Some(40 * MIB),
        Some(40 * MIB),
        Some(40 * MIB),
        Some(40 * MIB),
    ];
    pair.run(&mut bulk, Duration::from_secs(120), |b| b.down[4].fin_read)
        .expect("the fifth stream finishes while four are paused");
    assert_eq!(bulk.down[4].read, 64 * MIB);
    assert_eq!(bulk.corrupt, 0);
    let held = pair.client.buffered_bytes() as u64;
    eprintln!("the client holds {held} unread bytes of the four paused streams");
    assert!(
        held > 4 * MIB,
        "the paused streams hold only {held} bytes: the scenario did not fill their windows"
    );
    bulk.client_pause_at.clear();
    finish(&mut pair, &mut bulk, 120);
}

#[test]
fn fallback_to_the_up_leg_and_back() {
    let mut pair = pair();
    let mut bulk = Bulk::new(2, 2 * MIB, 16 * MIB);
    pair.run(&mut bulk, Duration::from_secs(30), |b| {
        b.verified() > 2 * MIB
    })
    .unwrap();
    pair.reconnect[Leg::Down.index()] = None;
    pair.cut(Leg::Down);
    let before: u64 = bulk.down.iter().map(|h| h.read).sum();
    pair.run(&mut bulk, Duration::from_secs(30), |b| {
        b.down.iter().map(|h| h.read).sum::<u64>() > before + 4 * MIB
    })
    .expect("down bytes keep flowing over the up leg");
    assert_eq!(pair.exit.send_leg(), Some(Leg::Up));
    pair.reconnect[Leg::Down.index()] = Some(Duration::from_millis(10));
    pair.reattach(Leg::Down);
    pair.run(&mut bulk, Duration::from_secs(5), |_| false).ok();
    assert_eq!(pair.exit.send_leg(), Some(Leg::Down));
    finish(&mut pair, &mut bulk, 60);
}

#[test]
fn no_fallback_when_the_client_refuses_it() {
    let mut cfg = PairConfig::default();
    cfg.client.fallback = false;
    let mut pair = Pair::new(cfg).unwrap();
    assert!(!pair.exit.fallback_enabled());
    pair.reconnect[Leg::Down.index()] = None;
    pair.cut(Leg::Down);
    let mut bulk = Bulk::new(1, 0, MIB);
    pair.run(&mut bulk, Duration::from_secs(10), |_| false).ok();
    assert_eq!(pair.exit.send_leg(), None);
    assert_eq!(bulk.down[0].read, 0, "down bytes must not use the up leg");
}

#[test]
fn attach_without_the_key_or_replayed_is_refused() {
    let mut pair = pair();
    let now = pair.now;
    let good = pair.client.attach_request(Leg::Up);
    let mut attach = Attach::decode(&good).unwrap();
    // A relay knows the session id but not the key.
    let mut forged = attach.clone();
    forged.mac = [7; 32];
    assert_eq!(
        pair.exit.handle_attach(now, Leg::Up, &forged),
        Err(Error::BadAttachProof)
    );
    forged.seq += 10;
    assert_eq!(
        pair.exit.handle_attach(now, Leg::Up, &forged),
        Err(Error::BadAttachProof)
    );
    // The genuine one works once; replaying it fails.
    assert!(pair.exit.handle_attach(now, Leg::Up, &attach).is_ok());
    assert!(matches!(
        pair.exit.handle_attach(now, Leg::Up, &attach),
        Err(Error::StaleAttach { .. })
    ));
    // An up attach presented on a down transport, or relabelled as down, fails too.
    let fresh = Attach::decode(&pair.client.attach_request(Leg::Up)).unwrap();
    assert_eq!(
        pair.exit.handle_attach(now, Leg::Down, &fresh),
        Err(Error::WrongSession)
    );
    attach.leg = Leg::Down;
    attach.seq += 100;
    assert_eq!(
        pair.exit.handle_attach(now, Leg::Down, &attach),
        Err(Error::BadAttachProof)
    );
    // A forged AttachOk is refused by the client.
    let mut ok = AttachOk::decode(
        &pair
            .exit
            .handle_attach(
                now,
                Leg::Up,
                &Attach::decode(&pair.client.attach_request(Leg::Up)).unwrap(),
            )
            .unwrap(),
    )
    .unwrap();
    ok.next = 0;
    ok.mac[0] ^= 1;
    assert_eq!(
        pair.client.handle_attach_ok(now, Leg::Up, &ok.encode()),
        Err(Error::BadAttachProof)
    );
}

#[test]
fn idle_session_without_legs_expires_after_the_ttl() {
    let mut cfg = PairConfig::default();
    cfg.exit.idle_ttl = Duration::from_secs(30);
    let mut pair = Pair::new(cfg).unwrap();
    pair.reconnect = [None, None];
    pair.idle(Duration::from_secs(1)).unwrap();
    pair.cut(Leg::Up);
    pair.cut(Leg::Down);
    assert!(!pair.exit.is_closed());
    pair.idle(Duration::from_secs(31)).unwrap();
    assert!(pair.exit.is_closed());
}

#[test]
fn an_idle_session_with_legs_stays_up_and_measures_rtt() {
    let mut pair = pair();
    pair.idle(Duration::from_secs(120)).unwrap();
    assert!(!pair.exit.is_closed() && !pair.client.is_closed());
    assert_eq!(pair.stats.leg_failures, 0, "{:?}", pair.stats.errors);
    let rtt = pair.client.stats().rtt.expect("rtt measured");
    assert!(
        rtt >= Duration::from_millis(20) && rtt < Duration::from_millis(40),
        "{rtt:?}"
    );
    // Keepalive records are acknowledged: nothing piles up.
    assert!(pair.client.stats().unacked_bytes < 4096);
}

#[test]
fn keys_ratchet_forward_during_a_transfer() {
    let mut cfg = PairConfig::default();
    cfg.client.rekey_shift = 8;
    let mut pair = Pair::new(cfg).unwrap();
    let mut bulk = Bulk::new(4, 16 * MIB, 16 * MIB);
    finish(&mut pair, &mut bulk, 120);
    assert!(
        pair.client.stats().tx_epoch >= 1,
        "{:?}",
        pair.client.stats()
    );
}

#[test]
fn streams_over_the_limit_are_reset() {
    let mut cfg = PairConfig::default();
    cfg.exit.max_streams = 2;
    let mut pair = Pair::new(cfg).unwrap();
    let mut bulk = Bulk::new(3, 1000, 1000);
    pair.run(&mut bulk, Duration::from_secs(5), |b| b.resets > 0)
        .unwrap();
    pair.idle(Duration::from_secs(1)).unwrap();
    assert_eq!(bulk.resets, 1);
    assert_eq!(bulk.up.iter().filter(|h| h.fin_read).count(), 2);
    assert!(!pair.client.has_stream(StreamId(3)));
}

#[test]
fn stream_state_errors_are_reported() {
    let mut pair = pair();
    let dest = Destination::Addr(([192, 0, 2, 1], 53).into());
    let udp = pair.client.open_stream(StreamKind::Udp, dest).unwrap();
    assert_eq!(
        pair.client.stream_write(udp, b"x"),
        Err(Error::StreamState(udp.0))
    );
    assert_eq!(
        pair.client.stream_write(StreamId(99), b"x"),
        Err(Error::UnknownStream(99))
    );
    assert!(
        pair.exit
            .open_stream(
                StreamKind::Tcp,
                Destination::Addr(([192, 0, 2, 1], 1).into())
            )
            .is_err()
    );
    assert!(
        pair.client
            .send_datagram(udp, Bytes::from_static(b"ping"))
            .unwrap()
    );
}

#[test]
fn datagrams_dns_and_echo_cross() {
    struct Small {
        got: Vec<Event>,
    }
    impl crate::sim::App for Small {
        fn poll(&mut self, _: Instant, _: &mut Connection, _: &mut Connection) {}
        fn client_event(&mut self, _: Instant, _: &mut Connection, e: Event) {
            self.got.push(e);
        }
        fn exit_event(&mut self, _: Instant, c: &mut Connection, e: Event) {
            match &e {
                Event::DnsQuery { id, msg } => {
                    c.send_dns_response(*id, msg.clone()).unwrap();
                }
                Event::EchoRequest { id, data, .. } => {
                    c.send_echo_reply(*id, data.clone()).unwrap();
                }
                Event::Datagram { id, data } => {
                    c.send_datagram(*id, data.clone()).unwrap();
                }
                _ => {}
            }
            self.got.push(e);
        }
    }
    let mut pair = pair();
    let dest = Destination::domain("example.com", 53).unwrap();
    let udp = pair.client.open_stream(StreamKind::Udp, dest).unwrap();
    pair.client
        .send_datagram(udp, Bytes::from_static(b"hello"))
        .unwrap();
    pair.client
        .send_dns_query(7, Bytes::from_static(b"\x12\x34query"))
        .unwrap();
    let target: IpAddr = "2001:db8::1".parse().unwrap();
    pair.client
        .send_echo_request(9, target, Bytes::from_static(b"ping"))
        .unwrap();
    let mut app = Small { got: vec![] };
    pair.run(&mut app, Duration::from_secs(5), |a| a.got.len() >= 7)
        .unwrap();
    let want = [
        Event::DnsResponse {
            id: 7,
            msg: Bytes::from_static(b"\x12\x34query"),
        },
        Event::EchoReply {
            id: 9,
            data: Bytes::from_static(b"ping"),
        },
        Event::Datagram {
            id: udp,
            data: Bytes::from_static(b"hello"),
        },
        Event::EchoRequest {
            id: 9,
            dest: target,
            data: Bytes::from_static(b"ping"),
        },
    ];
    for w in want {
        assert!(app.got.contains(&w), "missing {w:?} in {:?}", app.got);
    }
}

#[test]
fn close_reaches_the_peer_with_its_reason() {
    let mut pair = pair();
    pair.idle(Duration::from_millis(100)).unwrap();
    pair.exit.close(CloseCode::Revoked, "key revoked");
    let r = pair.idle(Duration::from_secs(1));
    assert_eq!(r, Err(SimError::Closed("key revoked".into())));
    assert!(pair.client.is_closed());
    assert_eq!(
        pair.client
            .open_stream(StreamKind::Tcp, Destination::domain("a.b", 1).unwrap()),
        Err(Error::Closed)
    );
}

/// Accepts every stream at the exit and records client events.
#[derive(Default)]
struct AcceptAll {
    client_events: Vec<Event>,
}

impl crate::sim::App for AcceptAll {
    fn poll(&mut self, _: Instant, _: &mut Connection, _: &mut Connection) {}
    fn client_event(&mut self, _: Instant, _: &mut Connection, e: Event) {
        self.client_events.push(e);
    }
    fn exit_event(&mut self, _: Instant, c: &mut Connection, e: Event) {
        if let Event::StreamOpened { id, .. } = e {
            c.accept_stream(id).unwrap();
        }
    }
}

#[test]
fn half_close_each_way_independently() {
    let mut pair = pair();
    let mut app = AcceptAll::default();
    let id = pair
        .client
        .open_stream(
            StreamKind::Tcp,
            Destination::domain("example.net", 80).unwrap(),
        )
        .unwrap();
    assert_eq!(pair.client.stream_write(id, b"request").unwrap(), 7);
    pair.client.stream_finish(id).unwrap();
    pair.run(&mut app, Duration::from_secs(1), |a| {
        a.client_events.contains(&Event::StreamAccepted { id })
    })
    .unwrap();
    pair.idle(Duration::from_millis(100)).unwrap();
    let now = pair.now;
    assert_eq!(
        pair.exit.stream_read(now, id, 100).unwrap(),
        Read::Data(Bytes::from_static(b"request"))
    );
    assert_eq!(pair.exit.stream_read(now, id, 100).unwrap(), Read::Fin);
    // The client finished sending; the exit may still answer.
    assert!(pair.exit.has_stream(id));
    assert_eq!(pair.exit.stream_write(id, b"late reply").unwrap(), 10);
    pair.exit.stream_finish(id).unwrap();
    assert!(!pair.exit.has_stream(id), "both halves done: reclaimed");
    assert_eq!(
        pair.exit.stream_write(id, b"more"),
        Err(Error::UnknownStream(id.0))
    );
    pair.idle(Duration::from_millis(100)).unwrap();
    let now = pair.now;
    assert_eq!(
        pair.client.stream_read(now, id, 100).unwrap(),
        Read::Data(Bytes::from_static(b"late reply"))
    );
    assert_eq!(pair.client.stream_read(now, id, 100).unwrap(), Read::Fin);
    assert!(!pair.client.has_stream(id));
}

#[test]
fn reset_reaches_the_other_side_and_frees_the_stream() {
    let mut pair = pair();
    let mut app = AcceptAll::default();
    let id = pair
        .client
        .open_stream(
            StreamKind::Tcp,
            Destination::domain("example.net", 80).unwrap(),
        )
        .unwrap();
    pair.run(&mut app, Duration::from_secs(1), |a| {
        !a.client_events.is_empty()
    })
    .unwrap();
    pair.exit.reset_stream(id, ResetCode::PeerReset).unwrap();
    pair.run(&mut app, Duration::from_secs(1), |a| {
        a.client_events.len() >= 2
    })
    .unwrap();
    assert_eq!(
        app.client_events[1],
        Event::StreamReset {
            id,
            code: ResetCode::PeerReset
        }
    );
    assert!(!pair.client.has_stream(id) && !pair.exit.has_stream(id));
}

/// Issue 20 §2 ("control frames"), from a hostile client's side: it opens stream after
/// stream to destinations the exit refuses, and never acknowledges the exit's records (the
/// relay drops everything towards the client). Each refusal is a `Reset` queued outside
/// the send budget; the exit's queue stays bounded and the session ends as a violation.
#[test]
fn opens_without_acknowledgements_cannot_grow_the_exits_queue() {
    let small = Settings {
        stream_window: 4096,
        session_window: 8192,
        ..Settings::default()
    };
    let mut pair = Pair::new(PairConfig {
        client: small.clone(),
        exit: small,
        ..PairConfig::default()
    })
    .expect("handshake");
    pair.set_tamper(|_, dir, _| match dir {
        Dir::ToClient => Verdict::Drop,
        Dir::ToExit => Verdict::Pass,
    });
    let mut opens = 0u64;
    let mut most = 0usize;
    while opens < 1_000_000 && !pair.exit.is_closed() {
        for _ in 0..5_000 {
            let dest = Destination::Addr(([192, 0, 2, 1], 9).into());
            if pair.client.open_stream(StreamKind::Tcp, dest).is_err() {
                break;
            }
            opens += 1;
        }
        pair.run(&mut Refuser, Duration::from_millis(20), |_| false)
            .ok();
        most = most.max(pair.exit.buffered_bytes());
    }
    eprintln!("{opens} opens; the exit's queue peaked at {most} bytes");
    assert!(
        pair.exit.is_closed(),
        "the session survived {opens} unacknowledged opens"
    );
    let bound = 8192 + 2 * 65_600 + CONTROL_ALLOWANCE + 65_600;
    assert!(
        most <= bound,
        "the exit queued {most} bytes (bound {bound})"
    );
}

/// The exit's app of the test above: it refuses every stream.
struct Refuser;

impl crate::sim::App for Refuser {
    fn poll(&mut self, _: Instant, _: &mut Connection, _: &mut Connection) {}
    fn client_event(&mut self, _: Instant, _: &mut Connection, _: Event) {}
    fn exit_event(&mut self, _: Instant, conn: &mut Connection, event: Event) {
        if let Event::StreamOpened { id, .. } = event {
            let _ = conn.reset_stream(id, ResetCode::PolicyRefused);
        }
    }
}

/// Bytes the client's application has read on the down halves.
fn down_read(bulk: &Bulk) -> u64 {
    bulk.down.iter().map(|h| h.read).sum()
}

/// A relay on the down leg withholds the client's Attach and releases it once fallback
/// traffic on the up leg moved the acknowledgements past its resume point (§3.6, issue 20
/// §3). Its `seq` is still the newest, its proof verifies: an older acknowledgement, not a
/// violation. The session, its streams and every byte survive.
#[test]
fn a_withheld_down_attach_released_after_fallback_keeps_the_session() {
    // 4 MiB/s each way: the 64 MiB download is still running when the attach arrives.
    let link = LinkConfig {
        bandwidth: Some(4 * MIB),
        ..LinkConfig::default()
    };
    let mut pair = Pair::new(PairConfig {
        up: link,
        down: link,
        ..PairConfig::default()
    })
    .expect("handshake");
    let mut bulk = Bulk::new(2, 2 * MIB, 32 * MIB);
    pair.run(&mut bulk, Duration::from_secs(30), |b| {
        down_read(b) > 2 * MIB
    })
    .unwrap();
    // The down leg drops; the re-attach 50 ms later is held back for 8 s by the relay, so
    // the exit falls back to the up leg after 3 s and the client acknowledges what arrives.
    let held = Rc::new(Cell::new(false));
    let h = held.clone();
    pair.set_tamper(move |leg, dir, msg| {
        let attach = dir == Dir::ToExit && msg.first() == Some(&message::ty::ATTACH);
        if leg == Leg::Down && attach && !h.get() {
            h.set(true);
            return Verdict::Delay(Duration::from_secs(8));
        }
        Verdict::Pass
    });
    let before = down_read(&bulk);
    pair.cut(Leg::Down);
    pair.run(&mut bulk, Duration::from_secs(7), |_| false).ok();
    assert!(held.get(), "the re-attach was not held back");
    assert_eq!(pair.exit.send_leg(), Some(Leg::Up), "not in fallback");
    assert!(
        down_read(&bulk) > before + MIB,
        "no fallback traffic moved the acknowledgements"
    );
    // The attach arrives now, behind the acknowledgements: accepted, down leg back.
    pair.run(&mut bulk, Duration::from_secs(2), |_| false).ok();
    assert_eq!(pair.exit.stats().overtaken_attaches, 1);
    assert_eq!(pair.exit.send_leg(), Some(Leg::Down));
    finish(&mut pair, &mut bulk, 120);
    assert!(!pair.exit.is_closed() && !pair.client.is_closed());
    assert!(pair.stats.errors.is_empty(), "{:?}", pair.stats.errors);
}

/// No attacker needed: when the down leg's path is slower than the up leg's, a down-leg
/// re-attach during a download in fallback is overtaken by the client's acknowledgements
/// on the up leg. It must still attach (refusing it would keep the session on one path for
/// as long as the download runs; ending the session is worse).
#[test]
fn a_slow_down_leg_reattaches_during_a_fallback_download() {
    let mut pair = Pair::new(PairConfig {
        up: LinkConfig {
            latency: Duration::from_millis(5),
            bandwidth: Some(16 * MIB),
        },
        down: LinkConfig {
            latency: Duration::from_millis(150),
            bandwidth: Some(16 * MIB),
        },
        ..PairConfig::default()
    })
    .expect("handshake");
    let mut bulk = Bulk::new(1, 0, 160 * MIB);
    pair.run(&mut bulk, Duration::from_secs(30), |b| {
        down_read(b) > 8 * MIB
    })
    .unwrap();
    pair.reconnect[Leg::Down.index()] = Some(Duration::from_secs(4));
    pair.cut(Leg::Down);
    pair.run(&mut bulk, Duration::from_secs(5), |_| false).ok();
    assert!(
        !bulk.done(),
        "the download ended too early to show anything"
    );
    assert_eq!(pair.exit.send_leg(), Some(Leg::Down), "{:?}", pair.stats);
    assert!(pair.exit.stats().overtaken_attaches >= 1);
    finish(&mut pair, &mut bulk, 120);
}

/// The client's side of it: the AttachOk of its pending attach arrives after records on
/// the other leg acknowledged more (a relay held it back). It is the genuine answer (its
/// `seq` is single-use), so the leg attaches.
#[test]
fn an_attach_ok_overtaken_by_acknowledgements_is_accepted() {
    let mut pair = pair();
    let now = pair.now;
    for i in 0..4 {
        assert_eq!(
            pair.client.send_dns_query(i, Bytes::from_static(b"q")),
            Ok(true)
        );
    }
    let records: Vec<Transmit> = std::iter::from_fn(|| pair.client.poll_transmit(now)).collect();
    assert!(!records.is_empty());
    // The down transport is replaced; the exit answers the attach, the relay holds the
    // answer back.
    pair.client.leg_lost(now, Leg::Down);
    pair.exit.leg_lost(now, Leg::Down);
    let attach = Attach::decode(&pair.client.attach_request(Leg::Down)).unwrap();
    let ok = pair.exit.handle_attach(now, Leg::Down, &attach).unwrap();
    // Meanwhile the exit gets the client's records and acknowledges them on the up leg
    // (any leg works for records, §4.4).
    for t in &records {
        let msg = BytesMut::from(&t.payload[..]);
        pair.exit.handle_record(now, Leg::Up, msg).unwrap();
    }
    // The exit's next record (a DNS answer here) carries the acknowledgement.
    assert_eq!(
        pair.exit.send_dns_response(0, Bytes::from_static(b"a")),
        Ok(true)
    );
    let acks: Vec<Transmit> = std::iter::from_fn(|| pair.exit.poll_transmit(now)).collect();
    for t in &acks {
        let msg = BytesMut::from(&t.payload[..]);
        pair.client.handle_record(now, Leg::Up, msg).unwrap();
    }
    assert!(pair.client.tx.acked > AttachOk::decode(&ok).unwrap().next);
    assert_eq!(pair.client.handle_attach_ok(now, Leg::Down, &ok), Ok(()));
    assert!(pair.client.is_attached(Leg::Down));
    assert_eq!(pair.client.stats().overtaken_attaches, 1);
    // Replayed once more, the same answer is stale (its attach is no longer pending): the
    // driver drops that transport, the session stays.
    assert!(matches!(
        pair.client.handle_attach_ok(now, Leg::Down, &ok),
        Err(Error::StaleAttach { .. })
    ));
    assert!(!pair.client.is_closed());
}

/// Only a resume point beyond anything sent is a violation: it ends the session.
#[test]
fn a_resume_point_beyond_what_was_sent_ends_the_session() {
    let mut pair = pair();
    let now = pair.now;
    pair.client.ack.next = pair.exit.tx.next_counter + 1;
    let attach = Attach::decode(&pair.client.attach_request(Leg::Up)).unwrap();
    assert!(matches!(
        pair.exit.handle_attach(now, Leg::Up, &attach),
        Err(Error::BadResumePoint { .. })
    ));
    assert!(pair.exit.is_closed());
}
