//! The session state machine (docs/PROTOCOL.md §4–§8), the same type on both sides.

mod stream;
mod tx;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use uuid::Uuid;

use crate::config::{PeerLimits, Settings};
use crate::crypto::{self, Cipher, DirectionKey, SessionSecrets};
use crate::error::Error;
use crate::frame::{
    CloseCode, Destination, Frame, Frames, MAX_REASON_LEN, ResetCode, StreamId, StreamKind,
};
use crate::message::{self, Attach, AttachOk, Leg, RECORD_HEADER_LEN, RECORD_OVERHEAD, VERSION};

use stream::{GrantLimits, SendState, SessionFlow, Stream};
use tx::{AckState, Tx};

/// Budget an answer to the peer needs: the frame, an `Ack` and a record's overhead.
const CONTROL_RESERVE: usize = 64;

/// How far answers to the peer's own requests (an `Accept` or `Reset` for each `Open`) may
/// take the send buffer past the send budget before a peer that does not acknowledge them
/// is a protocol violation (§10).
const CONTROL_ALLOWANCE: usize = 1 << 20;

/// Acknowledge at once after this many ack-eliciting records.
pub(crate) const ACK_EVERY: u32 = 4;

/// A stream whose unread bytes have waited this long without the application reading any
/// counts as paused in [`Connection::paused_streams`].
pub const PAUSED_AFTER: Duration = Duration::from_secs(1);

/// A stream whose reader stopped reading, and what it holds (docs/PROTOCOL.md §6.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PausedStream {
    /// The stream.
    pub id: StreamId,
    /// Bytes received and not read.
    pub held: u64,
    /// Credit granted and not read: what it holds plus what the peer may still send it.
    pub credit: u64,
    /// Since when its bytes have waited unread.
    pub since: Instant,
}

/// Which end of the session this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opens streams, sends on the up leg, receives on the down leg.
    Client,
    /// Accepts streams, sends on the down leg (or the up leg in fallback), receives on up.
    Exit,
}

/// What the handshake settled.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Negotiated {
    pub cipher: Cipher,
    pub rekey_shift: u8,
    pub fallback: bool,
    pub peer: PeerLimits,
}

/// A record to send on a leg.
#[derive(Debug, Clone)]
pub struct Transmit {
    /// The leg to send it on.
    pub leg: Leg,
    /// One WebSocket binary message.
    pub payload: Bytes,
}

/// Why a leg was declared dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// Nothing arrived on it for the leg timeout.
    Silent,
    /// What was sent on it stayed unacknowledged for the leg timeout, while the other
    /// leg delivered.
    Unacknowledged,
}

/// Something the application must know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Exit: the client opened a stream. Dial, then `accept_stream` or `reset_stream`.
    StreamOpened {
        /// The stream.
        id: StreamId,
        /// TCP or UDP.
        kind: StreamKind,
        /// Where to.
        dest: Destination,
    },
    /// Client: the exit reached the destination.
    StreamAccepted {
        /// The stream.
        id: StreamId,
    },
    /// Bytes (or the end of the stream) can be read.
    StreamReadable {
        /// The stream.
        id: StreamId,
    },
    /// Credit returned after a short write.
    StreamWritable {
        /// The stream.
        id: StreamId,
    },
    /// The peer reset the stream; it is gone.
    StreamReset {
        /// The stream.
        id: StreamId,
        /// Why.
        code: ResetCode,
    },
    /// A datagram arrived on a UDP stream.
    Datagram {
        /// The stream.
        id: StreamId,
        /// The payload.
        data: Bytes,
    },
    /// Exit: a DNS query to answer with `send_dns_response`.
    DnsQuery {
        /// The query id.
        id: u32,
        /// The DNS message.
        msg: Bytes,
    },
    /// Client: the answer to a DNS query.
    DnsResponse {
        /// The query id.
        id: u32,
        /// The DNS message.
        msg: Bytes,
    },
    /// Exit: forward an echo request.
    EchoRequest {
        /// The request id.
        id: u32,
        /// The target.
        dest: IpAddr,
        /// The payload.
        data: Bytes,
    },
    /// Client: an echo reply.
    EchoReply {
        /// The request id.
        id: u32,
        /// The payload.
        data: Bytes,
    },
    /// A leg is dead: close its transport (the core already treats it as detached) and,
    /// on the client, reconnect it.
    LegDead {
        /// Which.
        leg: Leg,
        /// Why.
        reason: DeadReason,
    },
    /// The session ended.
    Closed {
        /// Why.
        code: CloseCode,
        /// The peer's or our reason text.
        reason: String,
        /// Whether the peer closed it.
        remote: bool,
    },
}

/// The result of reading a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// Bytes, in order.
    Data(Bytes),
    /// Nothing now; a `StreamReadable` event follows when there is.
    WouldBlock,
    /// The peer finished sending and everything was read.
    Fin,
}

/// Per-leg state.
#[derive(Debug, Clone, Copy, Default)]
struct LegState {
    attached: bool,
    last_rx: Option<Instant>,
    attaches: u64,
    records_rx: u64,
    records_tx: u64,
    bytes_rx: u64,
    bytes_tx: u64,
}

/// A leg's counters for status displays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LegStats {
    /// Whether the leg is attached now.
    pub attached: bool,
    /// How many times it was attached (1 + reconnects).
    pub attaches: u64,
    /// Records received on it.
    pub records_rx: u64,
    /// Records sent on it.
    pub records_tx: u64,
    /// Record bytes received on it.
    pub bytes_rx: u64,
    /// Record bytes sent on it.
    pub bytes_tx: u64,
}

/// Session counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Up leg, then down leg.
    pub legs: [LegStats; 2],
    /// Smoothed loop RTT (up then down), if measured.
    pub rtt: Option<Duration>,
    /// Open streams.
    pub streams: usize,
    /// Sealed records not yet acknowledged, in bytes.
    pub unacked_bytes: usize,
    /// Records sent again after a re-attach.
    pub retransmitted: u64,
    /// Duplicate records dropped.
    pub duplicates: u64,
    /// Records that failed authentication.
    pub auth_failures: u64,
    /// Counter gaps seen.
    pub gaps: u64,
    /// Datagrams, DNS and echo frames dropped because the session was over its budget.
    pub dropped_datagrams: u64,
    /// The send key's epoch.
    pub tx_epoch: u64,
    /// Authenticated attaches (exit) or attach answers (client) whose resume point was
    /// already behind the acknowledgements received: overtaken by records on the other leg,
    /// or withheld by a relay and released late (§3.6). Accepted; a steady count on one
    /// leg points at a relay that holds attaches back.
    pub overtaken_attaches: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Rtt {
    srtt: Option<Duration>,
}

impl Rtt {
    fn sample(&mut self, rtt: Duration) {
        self.srtt = Some(match self.srtt {
            None => rtt,
            Some(s) => (s * 7 + rtt) / 8,
        });
    }

    /// The smoothed RTT, or a conservative guess before the first sample.
    fn get(&self) -> Duration {
        self.srtt.unwrap_or(Duration::from_millis(100))
    }
}

#[derive(Debug)]
struct Ping {
    next_id: u64,
    outstanding: Option<(u64, Instant)>,
    last_sent: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Open,
    Closed,
}

/// One session, sans-IO.
///
/// # Calling order
/// A driver owns one `Connection` and the transports of its two legs and loops:
/// 1. a leg message arrived: records go to [`handle_record`](Self::handle_record);
///    `Attach` (exit) to [`handle_attach`](Self::handle_attach), `AttachOk` (client) to
///    [`handle_attach_ok`](Self::handle_attach_ok); a leg transport that closed to
///    [`leg_lost`](Self::leg_lost);
/// 2. the timer from [`poll_timeout`](Self::poll_timeout) fired:
///    [`handle_timeout`](Self::handle_timeout);
/// 3. application calls: `open_stream`, `stream_write`, `stream_read`, `stream_finish`,
///    `reset_stream`, `accept_stream`, `send_datagram`, `send_dns_*`, `send_echo_*`, `close`;
/// 4. drain [`poll_transmit`](Self::poll_transmit) into the legs it names, then
///    [`poll_event`](Self::poll_event), then re-arm the timer from `poll_timeout`.
///
/// No method blocks, reads a clock or does I/O; `now` always comes from the caller.
#[derive(Debug)]
pub struct Connection {
    role: Role,
    id: Uuid,
    settings: Settings,
    negotiated: Negotiated,
    tx: Tx,
    rx_key: DirectionKey,
    ack: AckState,
    attach_key_client: ring::hmac::Key,
    attach_key_exit: ring::hmac::Key,
    /// Client: last attach seq used. Exit: last accepted.
    attach_seq: u64,
    /// Client: the seq of the attach awaiting its `AttachOk`, per leg.
    attach_pending: [Option<u64>; 2],
    legs: [LegState; 2],
    send_leg: Option<Leg>,
    /// Exit: when the down leg went missing (for fallback).
    down_lost: Option<Instant>,
    /// When the last leg went away.
    orphaned: Option<Instant>,
    streams: HashMap<StreamId, Stream>,
    next_stream_id: u32,
    highest_peer_stream: u32,
    flow: SessionFlow,
    blocked: BTreeSet<StreamId>,
    events: VecDeque<Event>,
    ping: Ping,
    rtt: Rtt,
    state: State,
    stats: Stats,
    /// Bytes of the record being processed: a `Data` payload smaller than half of it is
    /// copied out instead of pinning the record's buffer (§6.2).
    rx_record_len: usize,
}

impl Connection {
    pub(crate) fn new(
        role: Role,
        id: Uuid,
        secrets: &SessionSecrets,
        negotiated: Negotiated,
        settings: Settings,
        now: Instant,
    ) -> Self {
        let key = |secret| DirectionKey::new(negotiated.cipher, secret, negotiated.rekey_shift);
        let (tx_secret, rx_secret) = match role {
            Role::Client => (secrets.up, secrets.down),
            Role::Exit => (secrets.down, secrets.up),
        };
        let mut legs = [LegState::default(); 2];
        legs[Leg::Up.index()] = LegState {
            attached: true,
            last_rx: Some(now),
            attaches: 1,
            ..LegState::default()
        };
        let peer = negotiated.peer;
        Connection {
            role,
            id,
            // Never more than our own limit, whatever the peer announced (§10).
            tx: Tx::new(
                key(tx_secret),
                peer.max_record.min(settings.max_record) as usize,
                now,
            ),
            rx_key: key(rx_secret),
            ack: AckState::default(),
            attach_key_client: crypto::mac_key(&secrets.attach_client),
            attach_key_exit: crypto::mac_key(&secrets.attach_exit),
            attach_seq: 0,
            attach_pending: [None; 2],
            legs,
            send_leg: match role {
                Role::Client => Some(Leg::Up),
                Role::Exit => None,
            },
            down_lost: Some(now),
            orphaned: None,
            streams: HashMap::new(),
            next_stream_id: 1,
            highest_peer_stream: 0,
            flow: SessionFlow::new(peer.session_window, settings.session_window),
            blocked: BTreeSet::new(),
            events: VecDeque::new(),
            ping: Ping {
                next_id: 1,
                outstanding: None,
                last_sent: now,
            },
            rtt: Rtt::default(),
            state: State::Open,
            stats: Stats::default(),
            rx_record_len: 0,
            settings,
            negotiated,
        }
    }

    /// The session id (a routing label, not a credential).
    pub fn session_id(&self) -> Uuid {
        self.id
    }

    /// This end's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The record cipher in use.
    pub fn cipher(&self) -> Cipher {
        self.negotiated.cipher
    }

    /// Whether fallback to a single leg was agreed.
    pub fn fallback_enabled(&self) -> bool {
        self.negotiated.fallback
    }

    /// The leg records of this side currently go out on, if any.
    pub fn send_leg(&self) -> Option<Leg> {
        self.send_leg
    }

    /// When the last authenticated message of the session arrived, on either leg: a record
    /// that opened, or an attach (exit) or attach answer (client) whose proof verified — the
    /// peer holds the session. Nothing unauthenticated (a duplicate record, a WebSocket
    /// close) moves it.
    pub fn last_authenticated(&self) -> Option<Instant> {
        self.legs.iter().filter_map(|l| l.last_rx).max()
    }

    /// Whether `leg` is attached.
    pub fn is_attached(&self, leg: Leg) -> bool {
        self.legs[leg.index()].attached
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// When the oldest unacknowledged record was (last) put on the wire, if one is. A
    /// driver's stall monitor compares it with what arrives on the other leg.
    pub fn oldest_unacked_sent(&self) -> Option<Instant> {
        self.tx.oldest_in_flight()
    }

    /// Counters for status and metrics.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        for leg in Leg::BOTH {
            let l = &self.legs[leg.index()];
            s.legs[leg.index()] = LegStats {
                attached: l.attached,
                attaches: l.attaches,
                records_rx: l.records_rx,
                records_tx: l.records_tx,
                bytes_rx: l.bytes_rx,
                bytes_tx: l.bytes_tx,
            };
        }
        s.rtt = self.rtt.srtt;
        s.streams = self.streams.len();
        s.unacked_bytes = self.tx.unacked_bytes;
        s.retransmitted = self.tx.retransmitted;
        s.tx_epoch = self.tx.key_epoch();
        s
    }

    /// Bytes this session holds for the peer or the application: sealed-unacknowledged
    /// records, the open record, and received stream bytes not yet read.
    pub fn buffered_bytes(&self) -> usize {
        let recv = self.flow.held();
        self.tx.pending_bytes() + usize::try_from(recv).unwrap_or(usize::MAX)
    }

    /// Received stream bytes not read yet, all streams: never more than
    /// [`receive_bound`](Self::receive_bound).
    pub fn held_bytes(&self) -> u64 {
        self.flow.held()
    }

    /// The most stream bytes this side can be made to hold with its streams open now
    /// (docs/PROTOCOL.md §6.2): the initial `stream_window` per open stream plus the
    /// session window, which is the pool for every window above the initial one.
    pub fn receive_bound(&self) -> u64 {
        self.streams.len() as u64 * u64::from(self.settings.stream_window) + self.flow.window
    }

    /// Pool credit (stream credit above the initial windows) in use, and the pool's size.
    pub fn credit_pool(&self) -> (u64, u64) {
        (self.flow.pool_used, self.flow.window)
    }

    /// Streams whose unread bytes have waited at least [`PAUSED_AFTER`], most held first:
    /// what shows a user which application is holding data.
    pub fn paused_streams(&self, now: Instant) -> Vec<PausedStream> {
        let mut paused: Vec<PausedStream> = self
            .streams
            .iter()
            .filter_map(|(id, s)| {
                let since = s.recv.waiting_since?;
                (now.saturating_duration_since(since) >= PAUSED_AFTER).then(|| PausedStream {
                    id: *id,
                    held: s.recv.buffered(),
                    credit: s.recv.outstanding(),
                    since,
                })
            })
            .collect();
        paused.sort_by(|a, b| b.held.cmp(&a.held).then(a.id.0.cmp(&b.id.0)));
        paused
    }

    // ---- legs -------------------------------------------------------------------------

    /// Client: the attach message for a new transport of `leg` (first attach of the down
    /// leg, or any re-attach). Send it as the transport's first message.
    pub fn attach_request(&mut self, leg: Leg) -> Bytes {
        self.attach_seq += 1;
        self.attach_pending[leg.index()] = Some(self.attach_seq);
        let mut attach = Attach {
            version: VERSION,
            session: self.id,
            leg,
            seq: self.attach_seq,
            next: self.ack.next,
            mac: [0; crypto::MAC_LEN],
        };
        attach.mac = crypto::mac(&self.attach_key_client, &attach.signed_part());
        attach.encode()
    }

    /// Exit: verify an attach that arrived as the first message of a transport of `leg`.
    /// On success the leg is attached (replacing any older transport of it, which the
    /// driver must close) and the returned `AttachOk` must be sent on it. A resume point
    /// already behind the client's acknowledgements (the attach was overtaken or withheld)
    /// is an older acknowledgement, not an error (§3.6; counted in
    /// [`Stats::overtaken_attaches`]); errors other than `BadResumePoint` leave the session
    /// as it was: drop that transport.
    pub fn handle_attach(
        &mut self,
        now: Instant,
        leg: Leg,
        attach: &Attach,
    ) -> Result<Bytes, Error> {
        self.check_open()?;
        if attach.session != self.id || attach.leg != leg {
            return Err(Error::WrongSession);
        }
        if !crypto::verify_mac(&self.attach_key_client, &attach.signed_part(), &attach.mac) {
            return Err(Error::BadAttachProof);
        }
        if attach.version != VERSION {
            return Err(Error::UnsupportedVersion {
                offered: attach.version,
                supported: message::SUPPORTED_VERSIONS.to_vec(),
            });
        }
        if attach.seq <= self.attach_seq {
            return Err(Error::StaleAttach {
                seq: attach.seq,
                last: self.attach_seq,
            });
        }
        self.check_resume_point(attach.next)
            .map_err(|e| self.fail(e))?;
        self.attach_seq = attach.seq;
        self.tx.on_ack(attach.next);
        self.mark_attached(now, leg);
        self.resume_sending(now, leg, attach.next);
        let mut ok = AttachOk {
            session: self.id,
            leg,
            seq: attach.seq,
            next: self.ack.next,
            mac: [0; crypto::MAC_LEN],
        };
        ok.mac = crypto::mac(&self.attach_key_exit, &ok.signed_part());
        Ok(ok.encode())
    }

    /// Client: verify the exit's answer to an attach on `leg`; on success the leg is
    /// attached and sending resumes where the exit says (or at the first unacknowledged
    /// record, if acknowledgements on the other leg overtook the answer, §3.6). Errors
    /// other than `BadResumePoint` leave the session as it was: drop that transport.
    pub fn handle_attach_ok(&mut self, now: Instant, leg: Leg, msg: &[u8]) -> Result<(), Error> {
        self.check_open()?;
        let ok = AttachOk::decode(msg)?;
        if ok.session != self.id || ok.leg != leg {
            return Err(Error::WrongSession);
        }
        if !crypto::verify_mac(&self.attach_key_exit, &ok.signed_part(), &ok.mac) {
            return Err(Error::BadAttachProof);
        }
        if self.attach_pending[leg.index()] != Some(ok.seq) {
            return Err(Error::StaleAttach {
                seq: ok.seq,
                last: self.attach_pending[leg.index()].unwrap_or(0),
            });
        }
        self.check_resume_point(ok.next).map_err(|e| self.fail(e))?;
        self.attach_pending[leg.index()] = None;
        self.tx.on_ack(ok.next);
        self.mark_attached(now, leg);
        if leg == Leg::Up {
            self.send_leg = Some(Leg::Up);
            self.tx.cursor = ok.next.max(self.tx.acked);
        }
        self.wake_blocked();
        Ok(())
    }

    /// The resume point `next` of an authenticated `Attach`/`AttachOk` (§3.6): beyond the
    /// next counter to be sealed is a violation (the peer claims records never sent);
    /// below the first unacknowledged one it is an older acknowledgement — the peer's
    /// records on the other leg overtook the attach (an honest race in fallback, or a
    /// relay that withheld it and released it later) — harmless and only counted.
    fn check_resume_point(&mut self, next: u64) -> Result<(), Error> {
        if next > self.tx.next_counter {
            return Err(Error::BadResumePoint {
                claimed: next,
                sent: self.tx.next_counter,
            });
        }
        if next < self.tx.acked {
            self.stats.overtaken_attaches += 1;
        }
        Ok(())
    }

    fn mark_attached(&mut self, now: Instant, leg: Leg) {
        let l = &mut self.legs[leg.index()];
        l.attached = true;
        l.attaches += 1;
        l.last_rx = Some(now);
        self.orphaned = None;
        if leg == Leg::Down {
            self.down_lost = None;
        }
    }

    /// Exit: after an attach of `leg`, pick the send leg; if it changed, or is the leg
    /// just attached (a new transport), resume at the client's `next`.
    fn resume_sending(&mut self, now: Instant, leg: Leg, next: u64) {
        let before = self.send_leg;
        self.send_leg = self.exit_send_leg(now);
        if self.send_leg.is_some() && (self.send_leg != before || self.send_leg == Some(leg)) {
            self.tx.cursor = next.max(self.tx.acked);
        }
    }

    fn exit_send_leg(&self, now: Instant) -> Option<Leg> {
        if self.is_attached(Leg::Down) {
            return Some(Leg::Down);
        }
        let fallback_due = self
            .down_lost
            .is_some_and(|t| now.saturating_duration_since(t) >= self.settings.fallback_after);
        (self.negotiated.fallback && fallback_due && self.is_attached(Leg::Up)).then_some(Leg::Up)
    }

    /// The transport of `leg` closed or failed. Records in flight on it are sent again
    /// after the next attach.
    pub fn leg_lost(&mut self, now: Instant, leg: Leg) {
        let l = &mut self.legs[leg.index()];
        if !l.attached {
            return;
        }
        l.attached = false;
        if leg == Leg::Down {
            self.down_lost = Some(now);
        }
        if self.send_leg == Some(leg) {
            self.send_leg = None;
        }
        if self.role == Role::Exit {
            self.send_leg = self.exit_send_leg(now);
            if self.send_leg.is_some() {
                self.tx.cursor = self.tx.acked;
            }
        }
        if Leg::BOTH.iter().all(|l| !self.is_attached(*l)) {
            self.orphaned = Some(now);
        }
        // Pings in flight may have died with the leg.
        self.ping.outstanding = None;
    }

    // ---- records ----------------------------------------------------------------------

    /// A record arrived on `leg`. Errors with [`Scope::Leg`](crate::Scope::Leg) mean the
    /// leg is broken: the core has detached it and the driver must close and re-attach it;
    /// errors with `Scope::Session` have closed the session (a `Closed` event follows).
    pub fn handle_record(
        &mut self,
        now: Instant,
        leg: Leg,
        mut msg: BytesMut,
    ) -> Result<(), Error> {
        self.check_open()?;
        let counter = message::record_counter(&msg)?;
        if msg.len() > self.settings.max_record as usize + RECORD_OVERHEAD {
            return self.leg_fault(now, leg, Error::RecordTooLarge(msg.len()));
        }
        if counter < self.ack.next {
            self.stats.duplicates += 1;
            return Ok(());
        }
        if counter > self.ack.next {
            self.stats.gaps += 1;
            let gap = Error::CounterGap {
                expected: self.ack.next,
                got: counter,
            };
            return self.leg_fault(now, leg, gap);
        }
        let plain_len = match self.rx_key.open(counter, &mut msg, RECORD_HEADER_LEN) {
            Ok(n) => n,
            Err(e) => {
                self.stats.auth_failures += 1;
                return self.leg_fault(now, leg, e);
            }
        };
        self.ack.next = match counter.checked_add(1) {
            Some(next) => next,
            None => return Err(self.fail(Error::CountersExhausted)),
        };
        let l = &mut self.legs[leg.index()];
        l.last_rx = Some(now);
        l.records_rx += 1;
        l.bytes_rx += msg.len() as u64;
        self.rx_record_len = msg.len();
        let plain = msg
            .freeze()
            .slice(RECORD_HEADER_LEN..RECORD_HEADER_LEN + plain_len);
        let mut eliciting = false;
        for frame in Frames::new(plain) {
            // Undecodable bytes inside an authenticated record: the peer is broken.
            let frame = frame.map_err(|_| Error::ProtocolViolation("malformed frame"));
            let result = frame.and_then(|f| {
                eliciting |= f.is_ack_eliciting();
                self.on_frame(now, f)
            });
            if let Err(e) = result {
                return Err(self.fail(e));
            }
        }
        if eliciting {
            self.ack.on_eliciting(now + self.settings.ack_delay);
        }
        Ok(())
    }

    fn leg_fault(&mut self, now: Instant, leg: Leg, e: Error) -> Result<(), Error> {
        self.leg_lost(now, leg);
        Err(e)
    }

    fn check_open(&self) -> Result<(), Error> {
        match self.state {
            State::Open => Ok(()),
            State::Closed => Err(Error::Closed),
        }
    }

    /// End the session because of `e`: tell the peer, raise `Closed`.
    fn fail(&mut self, e: Error) -> Error {
        let code = e.close_code();
        self.close_with(code, &e.to_string(), false);
        e
    }

    fn violation(&self, what: &'static str) -> Result<(), Error> {
        Err(Error::ProtocolViolation(what))
    }

    fn on_frame(&mut self, now: Instant, frame: Frame) -> Result<(), Error> {
        let exit = self.role == Role::Exit;
        match frame {
            Frame::Padding(_) => {}
            // A peer that pings but never acknowledges gets no more answers once our
            // budget is spent: answers are the peer's to pace (§8.1, §10).
            Frame::Ping { id } if self.write_budget() >= CONTROL_RESERVE => {
                self.queue(Frame::Pong { id })
            }
            Frame::Ping { .. } => {}
            Frame::Pong { id } => self.on_pong(now, id),
            Frame::Ack { next } => self.on_ack(next)?,
            Frame::Open { id, kind, dest } if exit => self.on_open(id, kind, dest)?,
            Frame::Accept { id } if !exit => self.on_accept(id),
            Frame::Data { id, data } => self.on_data(now, id, data)?,
            Frame::Fin { id } => self.on_fin(id),
            Frame::Reset { id, code } => self.on_reset(id, code),
            Frame::MaxStreamData { id, max } => self.on_max_stream_data(id, max),
            Frame::MaxData { max } => self.on_max_data(max),
            Frame::DnsQuery { id, msg } if exit => {
                self.events.push_back(Event::DnsQuery { id, msg })
            }
            Frame::DnsResponse { id, msg } if !exit => {
                self.events.push_back(Event::DnsResponse { id, msg })
            }
            Frame::Datagram { id, data } => self.on_datagram(id, data),
            Frame::EchoRequest { id, dest, data } if exit => {
                self.events.push_back(Event::EchoRequest { id, dest, data })
            }
            Frame::EchoReply { id, data } if !exit => {
                self.events.push_back(Event::EchoReply { id, data })
            }
            Frame::Close { code, reason } => self.on_close(code, reason),
            _ => return self.violation("frame not allowed in this direction"),
        }
        Ok(())
    }

    fn on_pong(&mut self, now: Instant, id: u64) {
        if let Some((want, sent)) = self.ping.outstanding
            && want == id
        {
            self.rtt.sample(now.saturating_duration_since(sent));
            self.ping.outstanding = None;
        }
    }

    fn on_ack(&mut self, next: u64) -> Result<(), Error> {
        if next > self.tx.next_counter {
            return self.violation("ack of a record never sent");
        }
        if self.tx.on_ack(next) {
            self.wake_blocked();
        }
        Ok(())
    }

    fn on_open(&mut self, id: StreamId, kind: StreamKind, dest: Destination) -> Result<(), Error> {
        if id.0 <= self.highest_peer_stream {
            return self.violation("stream id not increasing");
        }
        self.highest_peer_stream = id.0;
        // Every open costs an answer (Accept or Reset) queued outside the budget: a peer
        // that keeps opening without acknowledging them must not grow our queue (§10).
        if self.tx.pending_bytes() > self.send_cap() + CONTROL_ALLOWANCE {
            return self.violation("opens streams without acknowledging the answers");
        }
        if self.streams.len() >= self.settings.max_streams as usize {
            if self.write_budget() < CONTROL_RESERVE {
                return self.violation("opens streams past the limit without acknowledging");
            }
            self.queue(Frame::Reset {
                id,
                code: ResetCode::TooManyStreams,
            });
            return Ok(());
        }
        let s = Stream::new(
            kind,
            dest.clone(),
            self.negotiated.peer.stream_window,
            self.settings.stream_window,
        );
        self.streams.insert(id, s);
        self.events
            .push_back(Event::StreamOpened { id, kind, dest });
        Ok(())
    }

    fn on_accept(&mut self, id: StreamId) {
        if self.streams.contains_key(&id) {
            self.events.push_back(Event::StreamAccepted { id });
        }
    }

    fn on_data(&mut self, now: Instant, id: StreamId, data: Bytes) -> Result<(), Error> {
        let len = data.len() as u64;
        self.flow.received += len;
        if self.flow.received > self.flow.recv_max {
            return Err(Error::FlowControl("session"));
        }
        if self.role == Role::Exit && id.0 > self.highest_peer_stream {
            return self.violation("data for a stream never opened");
        }
        // Session credit follows receipt (§6.2): whatever the readers do.
        self.grant_session();
        let Some(s) = self.streams.get_mut(&id).filter(|s| !s.recv.fin) else {
            // A stream we already reset or finished reading: discard.
            self.flow.consumed += len;
            return Ok(());
        };
        s.recv.received += len;
        if s.recv.received > s.recv.max {
            return Err(Error::FlowControl("stream"));
        }
        if !data.is_empty() {
            // A slice keeps its whole record buffer alive while only its length is charged
            // to credit: a payload smaller than half its record is copied out, so what the
            // held bytes pin is at most twice their number (§6.2).
            let data = match data.len() * 2 < self.rx_record_len {
                true => Bytes::copy_from_slice(&data),
                false => data,
            };
            s.recv.chunks.push_back(data);
            s.recv.waiting_since.get_or_insert(now);
        }
        if !s.recv.readable_announced {
            s.recv.readable_announced = true;
            self.events.push_back(Event::StreamReadable { id });
        }
        Ok(())
    }

    fn on_fin(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.recv.fin = true;
            if !s.recv.readable_announced {
                s.recv.readable_announced = true;
                self.events.push_back(Event::StreamReadable { id });
            }
        }
    }

    fn on_reset(&mut self, id: StreamId, code: ResetCode) {
        if let Some(s) = self.streams.remove(&id) {
            self.forget(&s);
            self.blocked.remove(&id);
            self.events.push_back(Event::StreamReset { id, code });
        }
    }

    /// A stream left the table: its unread bytes are discarded and its pool credit freed.
    fn forget(&mut self, s: &Stream) {
        self.flow.consumed += s.recv.buffered();
        let mine = s.recv.excess(u64::from(self.settings.stream_window));
        debug_assert!(self.flow.pool_used >= mine, "pool accounting");
        self.flow.pool_used = self.flow.pool_used.saturating_sub(mine);
    }

    fn on_max_stream_data(&mut self, id: StreamId, max: u64) {
        if let Some(s) = self.streams.get_mut(&id)
            && max > s.send_max
        {
            s.send_max = max;
            self.wake_blocked();
        }
    }

    fn on_max_data(&mut self, max: u64) {
        if max > self.flow.send_max {
            self.flow.send_max = max;
            self.wake_blocked();
        }
    }

    fn on_datagram(&mut self, id: StreamId, data: Bytes) {
        if self
            .streams
            .get(&id)
            .is_some_and(|s| s.kind == StreamKind::Udp)
        {
            self.events.push_back(Event::Datagram { id, data });
        }
    }

    fn on_close(&mut self, code: CloseCode, reason: String) {
        self.state = State::Closed;
        self.events.push_back(Event::Closed {
            code,
            reason,
            remote: true,
        });
    }

    /// Announce `StreamWritable` for blocked streams that have credit and budget again.
    fn wake_blocked(&mut self) {
        if self.blocked.is_empty() || self.write_budget() == 0 {
            return;
        }
        let session = self.flow.credit() > 0;
        let ready: Vec<StreamId> = self
            .blocked
            .iter()
            .copied()
            .filter(|id| session && self.streams.get(id).is_some_and(|s| s.credit() > 0))
            .collect();
        for id in ready {
            self.blocked.remove(&id);
            if let Some(s) = self.streams.get_mut(&id) {
                s.blocked = false;
            }
            self.events.push_back(Event::StreamWritable { id });
        }
    }

    // ---- output -----------------------------------------------------------------------

    fn queue(&mut self, frame: Frame) {
        // Control frames are small and always fit; the budget does not apply to them.
        self.tx.push(&frame, &mut self.ack);
    }

    /// The next message to send, and on which leg. Call until `None` after every input.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        let leg = self.send_leg?;
        if self.tx.cursor == self.tx.next_counter {
            // An ack-only record needs budget too: a peer that never acknowledges must not
            // make us pile up acknowledgements (§10).
            let ack_only = self.ack.due(now) && self.write_budget() >= CONTROL_RESERVE;
            if self.tx.has_open() || ack_only {
                self.tx.seal(&mut self.ack);
            } else {
                return None;
            }
        }
        let payload = self.tx.next_to_send(now)?;
        let l = &mut self.legs[leg.index()];
        l.records_tx += 1;
        l.bytes_tx += payload.len() as u64;
        Some(Transmit { leg, payload })
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_closed() {
            return None;
        }
        let s = &self.settings;
        // Acknowledgements can only leave on a send leg, and only within budget (an
        // armed timer that could not act would spin the driver).
        let ack_can_go =
            self.send_leg.is_some() && self.ack.owed() && self.write_budget() >= CONTROL_RESERVE;
        let mut t = self.ack.deadline.filter(|_| ack_can_go);
        let mut at = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        at(Some(
            self.ping.last_sent.max(self.tx.last_eliciting_sent) + s.keepalive,
        ));
        at(self
            .recv_leg_attached()
            .and_then(|l| self.legs[l.index()].last_rx)
            .map(|x| x + s.leg_timeout));
        at(self.send_leg_deadline());
        at(self.orphaned.map(|x| x + s.idle_ttl));
        let fallback_pending = self.role == Role::Exit
            && self.negotiated.fallback
            && self.send_leg.is_none()
            && self.is_attached(Leg::Up);
        if fallback_pending {
            at(self.down_lost.map(|x| x + s.fallback_after));
        }
        t
    }

    fn recv_leg(&self) -> Leg {
        match self.role {
            Role::Client => Leg::Down,
            Role::Exit => Leg::Up,
        }
    }

    fn recv_leg_attached(&self) -> Option<Leg> {
        Some(self.recv_leg()).filter(|l| self.is_attached(*l))
    }

    /// Run the timers: keepalive pings, leg liveness, fallback, idle expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_closed() {
            return;
        }
        let s = self.settings.clone();
        if self
            .orphaned
            .is_some_and(|t| now.saturating_duration_since(t) >= s.idle_ttl)
        {
            let reason = "no leg attached within the session TTL";
            self.close_with(CloseCode::IdleTimeout, reason, false);
            return;
        }
        self.check_recv_leg(now, &s);
        self.check_send_leg(now);
        if self.role == Role::Exit && self.send_leg.is_none() {
            self.send_leg = self.exit_send_leg(now);
            if self.send_leg.is_some() {
                self.tx.cursor = self.tx.acked;
            }
        }
        self.maybe_ping(now, &s);
    }

    fn check_recv_leg(&mut self, now: Instant, s: &Settings) {
        let Some(leg) = self.recv_leg_attached() else {
            return;
        };
        let silent = self.legs[leg.index()]
            .last_rx
            .is_some_and(|t| now.saturating_duration_since(t) >= s.leg_timeout);
        if silent {
            self.declare_dead(now, leg, DeadReason::Silent);
        }
    }

    /// When the oldest record on the send leg will have waited a leg timeout for its
    /// acknowledgement. Acks arrive on the other leg, so the send leg is blamed only if
    /// something arrived after that record was sent (the other direction works).
    fn send_leg_deadline(&self) -> Option<Instant> {
        self.send_leg?;
        let oldest = self.tx.oldest_in_flight()?;
        let last_rx = self.legs.iter().filter_map(|l| l.last_rx).max()?;
        (last_rx > oldest).then(|| oldest + self.settings.leg_timeout)
    }

    fn check_send_leg(&mut self, now: Instant) {
        let Some(leg) = self.send_leg else {
            return;
        };
        if self.send_leg_deadline().is_some_and(|t| t <= now) {
            self.declare_dead(now, leg, DeadReason::Unacknowledged);
        }
    }

    fn declare_dead(&mut self, now: Instant, leg: Leg, reason: DeadReason) {
        self.leg_lost(now, leg);
        self.events.push_back(Event::LegDead { leg, reason });
    }

    fn maybe_ping(&mut self, now: Instant, s: &Settings) {
        let idle = now.saturating_duration_since(self.tx.last_eliciting_sent) >= s.keepalive;
        let ping_due = now.saturating_duration_since(self.ping.last_sent) >= s.keepalive;
        if !(idle || ping_due) {
            return;
        }
        let id = self.ping.next_id;
        self.ping.next_id += 1;
        self.ping.last_sent = now;
        if self.ping.outstanding.is_none() {
            self.ping.outstanding = Some((id, now));
        }
        self.queue(Frame::Ping { id });
    }

    // ---- streams ----------------------------------------------------------------------

    /// Client: open a stream. TCP streams wait for `StreamAccepted` (or `StreamReset`);
    /// UDP streams may send datagrams at once.
    pub fn open_stream(&mut self, kind: StreamKind, dest: Destination) -> Result<StreamId, Error> {
        self.check_open()?;
        if self.role != Role::Client {
            return Err(Error::ProtocolViolation("only the client opens streams"));
        }
        let id = StreamId(self.next_stream_id);
        self.next_stream_id = self
            .next_stream_id
            .checked_add(1)
            .ok_or(Error::StreamIdsExhausted)?;
        let s = Stream::new(
            kind,
            dest.clone(),
            self.negotiated.peer.stream_window,
            self.settings.stream_window,
        );
        self.streams.insert(id, s);
        self.queue(Frame::Open { id, kind, dest });
        Ok(id)
    }

    /// Exit: the destination of stream `id` was reached.
    pub fn accept_stream(&mut self, id: StreamId) -> Result<(), Error> {
        self.check_open()?;
        self.stream(id)?;
        self.queue(Frame::Accept { id });
        Ok(())
    }

    fn stream(&self, id: StreamId) -> Result<&Stream, Error> {
        self.streams.get(&id).ok_or(Error::UnknownStream(id.0))
    }

    /// Bytes this session may still queue for sending: the peer's session window bounds
    /// what is unacknowledged, so memory stays bounded whatever the peer does.
    fn write_budget(&self) -> usize {
        self.send_cap().saturating_sub(self.tx.pending_bytes())
    }

    /// The most this side holds for the peer: the peer's session window, bounded by our
    /// own (so a peer announcing huge windows cannot make us buffer more), plus two
    /// records (§10).
    fn send_cap(&self) -> usize {
        let peer = self.negotiated.peer;
        let window = peer.session_window.min(self.settings.session_window) as usize;
        window + 2 * self.tx.max_plain()
    }

    /// Write to a stream; returns how many bytes were taken (possibly 0). A short write
    /// means credit ran out: wait for `StreamWritable`.
    pub fn stream_write(&mut self, id: StreamId, data: &[u8]) -> Result<usize, Error> {
        self.check_open()?;
        let s = self.stream(id)?;
        if s.send != SendState::Open || s.kind != StreamKind::Tcp {
            return Err(Error::StreamState(id.0));
        }
        let end = data.len().min(self.stream_writable(id)?);
        let mut taken = 0;
        while taken < end {
            taken += self.tx.push_data(id, &data[taken..end], &mut self.ack);
        }
        let s = self
            .streams
            .get_mut(&id)
            .ok_or(Error::UnknownStream(id.0))?;
        s.sent += taken as u64;
        self.flow.sent += taken as u64;
        if taken < data.len() {
            s.blocked = true;
            self.blocked.insert(id);
        }
        Ok(taken)
    }

    /// How many bytes `stream_write` would take now.
    pub fn stream_writable(&self, id: StreamId) -> Result<usize, Error> {
        let s = self.stream(id)?;
        let credit = s.credit().min(self.flow.credit());
        Ok(usize::try_from(credit)
            .unwrap_or(usize::MAX)
            .min(self.write_budget()))
    }

    /// Read up to `max` bytes from a stream.
    pub fn stream_read(&mut self, now: Instant, id: StreamId, max: usize) -> Result<Read, Error> {
        let srtt = self.rtt.get();
        let base = u64::from(self.settings.stream_window);
        let max_window = u64::from(self.settings.max_stream_window);
        let s = self
            .streams
            .get_mut(&id)
            .ok_or(Error::UnknownStream(id.0))?;
        // This stream's share of the pool before the read; the others' stays as it is.
        let mine = s.recv.excess(base);
        debug_assert!(self.flow.pool_used >= mine, "pool accounting");
        let others = self.flow.pool_used.saturating_sub(mine);
        let Some(chunk) = s.recv.pop(max) else {
            s.recv.readable_announced = false;
            if !s.recv.fin {
                return Ok(Read::WouldBlock);
            }
            s.recv.fin_delivered = true;
            self.reap(id);
            return Ok(Read::Fin);
        };
        s.recv.waiting_since = (s.recv.buffered() > 0).then_some(now);
        let limits = GrantLimits {
            base,
            max_window,
            room: self.flow.window.saturating_sub(others),
        };
        let grant = s.recv.grant(now, srtt, limits);
        self.flow.pool_used = others + s.recv.excess(base);
        self.flow.consumed += chunk.len() as u64;
        if let Some(max) = grant {
            self.queue(Frame::MaxStreamData { id, max });
        }
        Ok(Read::Data(chunk))
    }

    fn grant_session(&mut self) {
        if let Some(max) = self.flow.grant() {
            self.queue(Frame::MaxData { max });
        }
    }

    /// No more bytes will be written to this stream (half-close).
    pub fn stream_finish(&mut self, id: StreamId) -> Result<(), Error> {
        self.check_open()?;
        let s = self
            .streams
            .get_mut(&id)
            .ok_or(Error::UnknownStream(id.0))?;
        if s.send == SendState::Finished {
            return Ok(());
        }
        s.send = SendState::Finished;
        self.blocked.remove(&id);
        self.queue(Frame::Fin { id });
        self.reap(id);
        Ok(())
    }

    /// Abort a stream both ways; it is forgotten at once.
    pub fn reset_stream(&mut self, id: StreamId, code: ResetCode) -> Result<(), Error> {
        self.check_open()?;
        let s = self.streams.remove(&id).ok_or(Error::UnknownStream(id.0))?;
        self.forget(&s);
        self.blocked.remove(&id);
        self.queue(Frame::Reset { id, code });
        Ok(())
    }

    fn reap(&mut self, id: StreamId) {
        if self.streams.get(&id).is_some_and(Stream::is_done)
            && let Some(s) = self.streams.remove(&id)
        {
            self.forget(&s);
        }
    }

    /// A stream's kind and destination.
    pub fn stream_info(&self, id: StreamId) -> Option<(StreamKind, &Destination)> {
        self.streams.get(&id).map(|s| (s.kind, &s.dest))
    }

    /// Whether the stream still exists.
    pub fn has_stream(&self, id: StreamId) -> bool {
        self.streams.contains_key(&id)
    }

    /// Open streams.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Queue a small frame that may be dropped under pressure (datagrams, DNS, echo).
    fn queue_droppable(&mut self, frame: Frame) -> Result<bool, Error> {
        self.check_open()?;
        frame.validate()?;
        if frame.encoded_len() > self.write_budget() {
            self.stats.dropped_datagrams += 1;
            return Ok(false);
        }
        Ok(self.tx.push(&frame, &mut self.ack))
    }

    /// Queue up to `len` bytes of `Padding` in the open record (at most what it has room
    /// for and what the send budget allows): hides the size of what the record carries.
    /// Not ack-eliciting. Returns the bytes queued.
    pub fn pad(&mut self, len: usize) -> Result<usize, Error> {
        self.check_open()?;
        let n = len.min(self.tx.room()).min(self.write_budget());
        if n > 0 {
            self.tx.push(&Frame::Padding(n), &mut self.ack);
        }
        Ok(n)
    }

    /// Send a datagram on a UDP stream. `Ok(false)`: dropped, the session is over budget.
    pub fn send_datagram(&mut self, id: StreamId, data: Bytes) -> Result<bool, Error> {
        match self.stream(id)?.kind {
            StreamKind::Udp => self.queue_droppable(Frame::Datagram { id, data }),
            StreamKind::Tcp => Err(Error::StreamState(id.0)),
        }
    }

    /// Client: send a DNS query. `Ok(false)`: dropped under pressure.
    pub fn send_dns_query(&mut self, id: u32, msg: Bytes) -> Result<bool, Error> {
        self.queue_droppable(Frame::DnsQuery { id, msg })
    }

    /// Exit: answer a DNS query.
    pub fn send_dns_response(&mut self, id: u32, msg: Bytes) -> Result<bool, Error> {
        self.queue_droppable(Frame::DnsResponse { id, msg })
    }

    /// Client: forward an echo request.
    pub fn send_echo_request(&mut self, id: u32, dest: IpAddr, data: Bytes) -> Result<bool, Error> {
        self.queue_droppable(Frame::EchoRequest { id, dest, data })
    }

    /// Exit: return an echo reply.
    pub fn send_echo_reply(&mut self, id: u32, data: Bytes) -> Result<bool, Error> {
        self.queue_droppable(Frame::EchoReply { id, data })
    }

    /// End the session: the peer is told with `code` and `reason` (cut to 255 bytes).
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        if !self.is_closed() {
            self.close_with(code, reason, false);
        }
    }

    fn close_with(&mut self, code: CloseCode, reason: &str, remote: bool) {
        let mut cut = reason.len().min(MAX_REASON_LEN);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        let reason = reason[..cut].to_owned();
        self.queue(Frame::Close {
            code,
            reason: reason.clone(),
        });
        self.tx.seal(&mut self.ack);
        self.state = State::Closed;
        self.events.push_back(Event::Closed {
            code,
            reason,
            remote,
        });
    }

    /// After `close`, the remaining messages to send (the `Close` frame among them).
    /// `poll_transmit` keeps working after close for this purpose.
    pub fn drain_closing(&mut self, now: Instant) -> Vec<Transmit> {
        std::iter::from_fn(|| self.poll_transmit(now)).collect()
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
