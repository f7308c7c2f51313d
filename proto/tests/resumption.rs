//! Resumption after a leg's transport is replaced (docs/PROTOCOL.md §3.6, §7.3), driven on
//! two `Connection`s directly so that exactly which records are (re)sent is visible.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use proto::message::Attach;
use proto::{
    Accept, Acceptor, AllowedClient, ClientConfig, ClientHandshake, Connection, Leg, Settings,
    Transmit, generate_keypair, message::record_counter,
};

struct Session {
    now: Instant,
    client: Connection,
    exit: Connection,
}

fn session() -> Session {
    let (client_private, client_public) = generate_keypair();
    let (exit_private, exit_public) = generate_keypair();
    let config = ClientConfig {
        private_key: client_private,
        exit_public_key: exit_public,
        psk: None,
        settings: Settings::default(),
    };
    let allowed = [AllowedClient {
        public_key: client_public,
        psk: None,
    }];
    let mut acceptor = Acceptor::new(exit_private, &allowed, Settings::default());
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
    /// A new transport of `leg`: Attach, handle_attach, AttachOk, handle_attach_ok.
    fn attach(&mut self, leg: Leg) {
        let attach = Attach::decode(&self.client.attach_request(leg)).expect("attach");
        let ok = self
            .exit
            .handle_attach(self.now, leg, &attach)
            .expect("attach accepted");
        self.client
            .handle_attach_ok(self.now, leg, &ok)
            .expect("attach ok accepted");
    }

    /// Queue `n` exit→client records and return what the exit puts on the wire.
    fn exit_sends(&mut self, n: u32) -> Vec<Transmit> {
        (0..n)
            .flat_map(|i| {
                let queued = self.exit.send_dns_response(i, Bytes::from_static(b"a"));
                assert_eq!(queued, Ok(true));
                std::iter::from_fn(|| self.exit.poll_transmit(self.now)).collect::<Vec<_>>()
            })
            .collect()
    }

    fn exit_resends(&mut self) -> Vec<u64> {
        std::iter::from_fn(|| self.exit.poll_transmit(self.now))
            .map(|t| record_counter(&t.payload).expect("a record"))
            .collect()
    }

    fn deliver_to_client(&mut self, t: &Transmit) {
        let msg = BytesMut::from(&t.payload[..]);
        self.client
            .handle_record(self.now, t.leg, msg)
            .expect("record accepted");
    }
}

#[test]
fn a_replaced_down_transport_resumes_at_the_clients_next() {
    let mut s = session();
    s.attach(Leg::Down);
    let sent = s.exit_sends(3);
    assert_eq!(sent.len(), 3);
    s.deliver_to_client(&sent[0]);
    // The down transport died with records 1 and 2 in flight; a new one attaches.
    s.attach(Leg::Down);
    assert_eq!(s.exit_resends(), vec![1, 2]);
    for t in &sent[1..] {
        s.deliver_to_client(t);
    }
}

/// An up-leg attach while the exit sends on the down leg leaves the down cursor alone:
/// nothing was lost on the down leg.
#[test]
fn an_up_attach_does_not_rewind_the_down_leg() {
    let mut s = session();
    s.attach(Leg::Down);
    let sent = s.exit_sends(3);
    s.deliver_to_client(&sent[0]);
    s.attach(Leg::Up);
    assert_eq!(s.exit_resends(), Vec::<u64>::new());
    for t in &sent[1..] {
        s.deliver_to_client(t);
    }
}

#[test]
fn fallback_resends_unacknowledged_records_on_the_up_leg() {
    let mut s = session();
    s.attach(Leg::Down);
    let sent = s.exit_sends(2);
    assert!(sent.iter().all(|t| t.leg == Leg::Down));
    // The down leg is lost with both records in flight; after fallback_after the exit
    // sends them again on the up leg.
    s.exit.leg_lost(s.now, Leg::Down);
    s.client.leg_lost(s.now, Leg::Down);
    s.now += Settings::default().fallback_after;
    s.exit.handle_timeout(s.now);
    assert_eq!(s.exit.send_leg(), Some(Leg::Up));
    let again: Vec<Transmit> = std::iter::from_fn(|| s.exit.poll_transmit(s.now)).collect();
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|t| t.leg == Leg::Up));
    for t in &again {
        s.deliver_to_client(t);
    }
}

/// When the exit sends on the up leg in fallback and a new up transport attaches
/// (replacing the old one without `leg_lost` first), sending resumes at `Attach.next`:
/// the records lost with the old transport are sent again.
#[test]
fn a_replaced_up_transport_in_fallback_resumes_at_the_clients_next() {
    let mut s = session();
    // The down leg never attaches; after fallback_after the exit sends on the up leg.
    s.now += Settings::default().fallback_after;
    s.exit.handle_timeout(s.now);
    assert_eq!(s.exit.send_leg(), Some(Leg::Up));
    let lost = s.exit_sends(2);
    assert!(lost.iter().all(|t| t.leg == Leg::Up));
    // Both records die with the up transport; the client opens a new one and attaches.
    s.attach(Leg::Up);
    assert_eq!(s.exit_resends(), vec![0, 1]);
}

/// A down-leg attach withheld (by a relay, or just slower than the up leg) while the exit
/// sends in fallback, released after the client acknowledged more on the up leg: its
/// resume point is behind the acknowledgements. It is accepted as an older acknowledgement
/// (§3.6) and the exit resumes on the down leg at the first unacknowledged record — not at
/// the attach's `next`, whose records are freed — with the session intact.
#[test]
fn an_overtaken_attach_resumes_at_the_first_unacknowledged_record() {
    let mut s = session();
    s.now += Settings::default().fallback_after;
    s.exit.handle_timeout(s.now);
    assert_eq!(s.exit.send_leg(), Some(Leg::Up));
    let first = s.exit_sends(3);
    s.deliver_to_client(&first[0]);
    // The client opens a down transport; the relay holds its attach (next = 1).
    let withheld = Attach::decode(&s.client.attach_request(Leg::Down)).expect("attach");
    assert_eq!(withheld.next, 1);
    for t in &first[1..] {
        s.deliver_to_client(t);
    }
    // The client's next up record acknowledges all three.
    assert_eq!(
        s.client.send_dns_query(9, Bytes::from_static(b"q")),
        Ok(true)
    );
    let up: Vec<Transmit> = std::iter::from_fn(|| s.client.poll_transmit(s.now)).collect();
    for t in &up {
        let msg = BytesMut::from(&t.payload[..]);
        s.exit
            .handle_record(s.now, Leg::Up, msg)
            .expect("record accepted");
    }
    assert_eq!(s.exit.stats().unacked_bytes, 0, "all three acknowledged");
    // Two more go out on the up leg and are lost with it.
    let lost = s.exit_sends(2);
    assert!(lost.iter().all(|t| t.leg == Leg::Up));
    // Now the withheld attach arrives.
    let ok = s
        .exit
        .handle_attach(s.now, Leg::Down, &withheld)
        .expect("an overtaken attach is accepted");
    assert!(!s.exit.is_closed());
    assert_eq!(s.exit.stats().overtaken_attaches, 1);
    assert_eq!(s.exit.send_leg(), Some(Leg::Down));
    let again: Vec<Transmit> = std::iter::from_fn(|| s.exit.poll_transmit(s.now)).collect();
    let counters: Vec<u64> = again
        .iter()
        .map(|t| record_counter(&t.payload).expect("a record"))
        .collect();
    assert_eq!(
        counters,
        vec![3, 4],
        "resumes at the first unacknowledged record"
    );
    assert!(again.iter().all(|t| t.leg == Leg::Down));
    s.client
        .handle_attach_ok(s.now, Leg::Down, &ok)
        .expect("attach ok accepted");
    for t in &again {
        s.deliver_to_client(t);
    }
    // A replay of the same attach is refused by its seq and changes nothing.
    assert!(matches!(
        s.exit.handle_attach(s.now, Leg::Down, &withheld),
        Err(proto::Error::StaleAttach { .. })
    ));
    assert!(!s.exit.is_closed());
}
