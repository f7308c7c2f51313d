//! Record counter and replay rules (TESTPLAN §1, docs/PROTOCOL.md §4.4): sealed records of
//! a real client are delivered to the exit in adversarial orders and every outcome is
//! compared with a reference model:
//!
//! * `counter == next` → accepted, `next` advances;
//! * `counter <  next` → `Ok`, silently dropped (a duplicate);
//! * `counter >  next` → `Err(CounterGap)`, scope `Leg`, the leg detached, `next` unchanged;
//! * failed authentication → `Err(RecordAuth)`, scope `Leg`, `next` unchanged.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proto::message::{Attach, RECORD_HEADER_LEN};
use proto::{
    Accept, Acceptor, AllowedClient, ClientConfig, ClientHandshake, Connection, Error, Event, Leg,
    Scope, Settings, generate_keypair,
};

/// A client and an exit that completed a handshake in memory (the up leg is attached).
struct Session {
    now: Instant,
    client: Connection,
    exit: Connection,
}

fn session(rekey_shift: u8) -> Session {
    let settings = Settings {
        rekey_shift,
        ..Settings::default()
    };
    let (client_private, client_public) = generate_keypair();
    let (exit_private, exit_public) = generate_keypair();
    let config = ClientConfig {
        private_key: client_private,
        exit_public_key: exit_public,
        psk: None,
        settings: settings.clone(),
    };
    let allowed = [AllowedClient {
        public_key: client_public,
        psk: None,
    }];
    let mut acceptor = Acceptor::new(exit_private, &allowed, settings);
    let now = Instant::now();
    let (hs, init) = ClientHandshake::start(&config, 1).expect("start");
    let Ok(Accept::Session(accepted)) = acceptor.accept(now, Duration::from_secs(1), &init) else {
        panic!("handshake refused");
    };
    let client = hs.finish(now, &accepted.response).expect("finish");
    Session {
        now,
        client,
        exit: accepted.connection,
    }
}

impl Session {
    /// Seal `n` client records; record `i` carries one DNS query with id `i`, so the exit's
    /// events show which record was accepted.
    fn capture(&mut self, n: u32) -> Vec<Bytes> {
        (0..n)
            .map(|i| {
                let queued = self.client.send_dns_query(i, Bytes::from_static(b"q"));
                assert_eq!(queued, Ok(true));
                let t = self.client.poll_transmit(self.now).expect("a record");
                assert_eq!(t.leg, Leg::Up);
                assert!(self.client.poll_transmit(self.now).is_none());
                t.payload
            })
            .collect()
    }

    fn deliver(&mut self, record: &[u8]) -> Result<(), Error> {
        self.exit
            .handle_record(self.now, Leg::Up, BytesMut::from(record))
    }

    /// The DNS query ids the exit surfaced since the last call.
    fn accepted(&mut self) -> Vec<u32> {
        std::iter::from_fn(|| self.exit.poll_event())
            .filter_map(|e| match e {
                Event::DnsQuery { id, .. } => Some(id),
                _ => None,
            })
            .collect()
    }

    /// What a driver does after a leg-scope error: a new transport and an attach on it.
    fn reattach_up(&mut self) {
        assert!(
            !self.exit.is_attached(Leg::Up),
            "a leg error detaches the leg"
        );
        let attach = Attach::decode(&self.client.attach_request(Leg::Up)).expect("attach");
        let ok = self
            .exit
            .handle_attach(self.now, Leg::Up, &attach)
            .expect("attach accepted");
        self.client
            .handle_attach_ok(self.now, Leg::Up, &ok)
            .expect("attach ok accepted");
        assert!(self.exit.is_attached(Leg::Up));
    }
}

/// The reference model's verdict for one delivery.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Accepted,
    Duplicate,
    Gap { expected: u64, got: u64 },
}

struct Model {
    next: u64,
}

impl Model {
    fn deliver(&mut self, counter: u64) -> Outcome {
        match counter.cmp(&self.next) {
            std::cmp::Ordering::Equal => {
                self.next += 1;
                Outcome::Accepted
            }
            std::cmp::Ordering::Less => Outcome::Duplicate,
            std::cmp::Ordering::Greater => Outcome::Gap {
                expected: self.next,
                got: counter,
            },
        }
    }
}

/// Deliver record `i` and check the outcome against the model.
fn check(s: &mut Session, model: &mut Model, records: &[Bytes], i: usize) {
    let before = s.exit.stats();
    let want = model.deliver(i as u64);
    let got = s.deliver(&records[i]);
    match want {
        Outcome::Accepted => {
            assert_eq!(got, Ok(()), "record {i}");
            assert_eq!(s.accepted(), vec![i as u32], "record {i} surfaced once");
        }
        Outcome::Duplicate => {
            assert_eq!(got, Ok(()), "duplicate {i}");
            assert_eq!(s.accepted(), Vec::<u32>::new(), "duplicate {i} surfaced");
            assert_eq!(s.exit.stats().duplicates, before.duplicates + 1);
        }
        Outcome::Gap { expected, got: g } => {
            let e = got.expect_err("a gap is an error");
            assert_eq!(e, Error::CounterGap { expected, got: g });
            assert_eq!(e.scope(), Scope::Leg);
            assert_eq!(s.accepted(), Vec::<u32>::new());
            assert_eq!(s.exit.stats().gaps, before.gaps + 1);
            s.reattach_up();
        }
    }
    assert!(!s.exit.is_closed());
}

/// How the next delivery is chosen, relative to the model's expected counter.
#[derive(Debug, Clone)]
enum Move {
    Next,
    Back(u16),
    Ahead(u16),
    Any(u16),
}

fn moves() -> impl Strategy<Value = Vec<Move>> {
    let one = prop_oneof![
        6 => Just(Move::Next),
        2 => (1u16..8).prop_map(Move::Back),
        1 => (1u16..8).prop_map(Move::Ahead),
        1 => any::<u16>().prop_map(Move::Any),
    ];
    proptest::collection::vec(one, 1..600)
}

/// Records per case: with `rekey_shift = 8` this crosses a key epoch (256 records).
const RECORDS: u32 = 300;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn exit_agrees_with_the_reference_model(moves in moves()) {
        let mut s = session(8);
        let records = s.capture(RECORDS);
        let mut model = Model { next: 0 };
        let last = records.len() - 1;
        for m in moves {
            let next = model.next as usize;
            let i = match m {
                Move::Next => next,
                Move::Back(d) => next.saturating_sub(usize::from(d)),
                Move::Ahead(d) => next + usize::from(d),
                Move::Any(x) => usize::from(x),
            };
            check(&mut s, &mut model, &records, i.min(last));
        }
        // Whatever happened, the rest still arrives in order.
        for i in model.next as usize..records.len() {
            check(&mut s, &mut model, &records, i);
        }
        prop_assert_eq!(s.exit.stats().auth_failures, 0);
    }
}

fn with_counter(record: &[u8], counter: u64) -> Vec<u8> {
    let mut m = record.to_vec();
    m[1..RECORD_HEADER_LEN].copy_from_slice(&counter.to_be_bytes());
    m
}

#[test]
fn the_next_counter_is_accepted_and_a_repeat_dropped() {
    let mut s = session(24);
    let r = s.capture(2);
    assert_eq!(s.deliver(&r[0]), Ok(()));
    assert_eq!(s.accepted(), vec![0]);
    assert_eq!(s.deliver(&r[0]), Ok(()), "duplicate of the previous record");
    assert_eq!(s.accepted(), Vec::<u32>::new());
    assert_eq!(s.exit.stats().duplicates, 1);
    assert!(
        s.exit.is_attached(Leg::Up),
        "a duplicate does not hurt the leg"
    );
    assert_eq!(s.deliver(&r[1]), Ok(()));
    assert_eq!(s.accepted(), vec![1]);
}

#[test]
fn a_far_future_counter_breaks_the_leg_without_advancing() {
    let mut s = session(24);
    let r = s.capture(2);
    assert_eq!(s.deliver(&r[0]), Ok(()));
    for far in [2, 1 << 20, u64::MAX] {
        let e = s.deliver(&with_counter(&r[1], far)).unwrap_err();
        assert_eq!(
            e,
            Error::CounterGap {
                expected: 1,
                got: far
            }
        );
        assert_eq!(e.scope(), Scope::Leg);
        s.reattach_up();
    }
    assert_eq!(
        s.deliver(&r[1]),
        Ok(()),
        "the genuine next record still fits"
    );
    assert_eq!(s.accepted(), vec![0, 1]);
}

#[test]
fn counter_zero_replayed_after_three_is_dropped() {
    let mut s = session(24);
    let r = s.capture(5);
    for rec in &r[..4] {
        assert_eq!(s.deliver(rec), Ok(()));
    }
    assert_eq!(s.accepted(), vec![0, 1, 2, 3]);
    assert_eq!(s.deliver(&r[0]), Ok(()));
    assert_eq!(s.accepted(), Vec::<u32>::new());
    assert_eq!(s.exit.stats().duplicates, 1);
    assert_eq!(s.deliver(&r[4]), Ok(()));
    assert_eq!(s.accepted(), vec![4]);
}

#[test]
fn a_flipped_tag_bit_fails_and_does_not_advance() {
    let mut s = session(24);
    let r = s.capture(5);
    for rec in &r[..3] {
        assert_eq!(s.deliver(rec), Ok(()));
    }
    let mut bad = r[3].to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    let e = s.deliver(&bad).unwrap_err();
    assert_eq!(e, Error::RecordAuth { counter: 3 });
    assert_eq!(e.scope(), Scope::Leg);
    assert_eq!(s.exit.stats().auth_failures, 1);
    s.reattach_up();
    // Not advanced: record 4 is still a gap, and the genuine record 3 is accepted.
    assert_eq!(
        s.deliver(&r[4]).unwrap_err(),
        Error::CounterGap {
            expected: 3,
            got: 4
        }
    );
    s.reattach_up();
    assert_eq!(s.deliver(&r[3]), Ok(()));
    assert_eq!(s.deliver(&r[4]), Ok(()));
    assert_eq!(s.accepted(), vec![0, 1, 2, 3, 4]);
}

#[test]
fn every_bit_of_a_record_is_authenticated() {
    let mut s = session(24);
    let r = s.capture(1);
    // The header is the AEAD's associated data: a changed type byte is not a record, a
    // changed counter is a gap, and any changed byte after it fails authentication.
    for i in RECORD_HEADER_LEN..r[0].len() {
        for bit in [0x01, 0x80] {
            let mut bad = r[0].to_vec();
            bad[i] ^= bit;
            assert_eq!(
                s.deliver(&bad),
                Err(Error::RecordAuth { counter: 0 }),
                "byte {i}"
            );
            s.reattach_up();
        }
    }
    assert_eq!(
        s.exit.stats().auth_failures,
        2 * (r[0].len() - RECORD_HEADER_LEN) as u64
    );
    assert_eq!(s.deliver(&r[0]), Ok(()));
    assert_eq!(s.accepted(), vec![0]);
}

#[test]
fn short_or_mistyped_messages_are_dropped_without_touching_the_leg() {
    let mut s = session(24);
    let r = s.capture(1);
    for bad in [&r[0][..RECORD_HEADER_LEN + 15], &[0x06][..], &[][..]] {
        let e = s.deliver(bad).unwrap_err();
        assert!(matches!(e, Error::Decode(_)), "{e:?}");
        assert_eq!(e.scope(), Scope::Message);
    }
    let mut mistyped = r[0].to_vec();
    mistyped[0] = 0x05;
    assert_eq!(s.deliver(&mistyped).unwrap_err().scope(), Scope::Message);
    assert!(s.exit.is_attached(Leg::Up));
    assert_eq!(s.deliver(&r[0]), Ok(()));
    assert_eq!(s.accepted(), vec![0]);
}

#[test]
fn a_record_over_the_announced_maximum_breaks_the_leg() {
    let mut s = session(24);
    let r = s.capture(1);
    let max = Settings::default().max_record as usize;
    let mut big = r[0].to_vec();
    big.resize(RECORD_HEADER_LEN + max + 16 + 1, 0);
    let e = s.deliver(&big).unwrap_err();
    assert_eq!(e, Error::RecordTooLarge(big.len()));
    assert_eq!(e.scope(), Scope::Leg);
    s.reattach_up();
    assert_eq!(s.deliver(&r[0]), Ok(()));
}

#[test]
fn records_cross_key_epochs_in_order() {
    let mut s = session(8);
    let r = s.capture(600);
    for rec in &r {
        assert_eq!(s.deliver(rec), Ok(()));
    }
    assert_eq!(s.accepted().len(), 600);
    assert_eq!(s.client.stats().tx_epoch, 2);
}
