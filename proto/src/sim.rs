//! A deterministic in-memory harness (STYLE.md §10): a client and an exit `Connection`
//! joined by two simulated legs with latency, bandwidth, cuts and a tamper hook, driven in
//! simulated time. It plays the part of both drivers: it carries messages, runs timers,
//! closes and re-attaches legs that fail, and hands every other event to an [`App`].
//!
//! It is public so that benchmarks and the binaries' tests can use it; it does no I/O.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::config::Settings;
use crate::connection::{Connection, Event, Read};
use crate::error::{Error, Scope};
use crate::frame::{Destination, StreamId, StreamKind};
use crate::handshake::{Accept, Acceptor, AllowedClient, ClientConfig, ClientHandshake};
use crate::message::{Attach, Leg, message_type, ty};

/// Which way a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dir {
    /// Client to exit.
    ToExit,
    /// Exit to client.
    ToClient,
}

/// What the tamper hook does with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver unchanged.
    Pass,
    /// Lose it (the transport stays up: a relay that swallows a message).
    Drop,
    /// Deliver it twice.
    Duplicate,
    /// Deliver this instead.
    Replace(Vec<u8>),
    /// Deliver it this much later than it would have arrived (reorders).
    Delay(Duration),
}

/// Properties of one leg.
#[derive(Debug, Clone, Copy)]
pub struct LinkConfig {
    /// One-way latency.
    pub latency: Duration,
    /// Bytes per second each way; `None` is unlimited.
    pub bandwidth: Option<u64>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(10),
            bandwidth: None,
        }
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Instant,
    seq: u64,
    leg: Leg,
    dir: Dir,
    generation: u64,
    msg: Vec<u8>,
}

#[derive(Debug)]
struct Link {
    cfg: LinkConfig,
    connected: bool,
    generation: u64,
    /// When each direction's wire is free again (bandwidth model).
    free_at: [Instant; 2],
    reconnect_at: Option<Instant>,
}

/// The application on both ends, driven by [`Pair::run`].
pub trait App {
    /// Called every step: write, open, read as the application would.
    fn poll(&mut self, now: Instant, client: &mut Connection, exit: &mut Connection);
    /// An event of the client's connection (leg events are handled by the harness).
    fn client_event(&mut self, now: Instant, conn: &mut Connection, event: Event);
    /// An event of the exit's connection.
    fn exit_event(&mut self, now: Instant, conn: &mut Connection, event: Event);
}

/// Why `Pair::run` stopped without reaching its goal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimError {
    /// Nothing left to do and the goal not reached.
    Stalled,
    /// Simulated time ran past the limit.
    TimedOut,
    /// A session ended.
    Closed(String),
    /// Time stopped advancing: a core keeps asking to be woken up in the past.
    Busy(String),
}

/// Counters the harness keeps.
#[derive(Debug, Clone, Default)]
pub struct SimStats {
    /// Messages delivered.
    pub delivered: u64,
    /// Leg failures handled (errors, dead legs, cuts).
    pub leg_failures: u64,
    /// Errors returned by the cores, in order, as text.
    pub errors: Vec<String>,
    /// The longest time a leg was down before its re-attach completed.
    pub longest_outage: Duration,
}

type TamperHook = Box<dyn FnMut(Leg, Dir, &[u8]) -> Verdict>;

/// Two connected endpoints.
pub struct Pair {
    /// Simulated now.
    pub now: Instant,
    /// The client end.
    pub client: Connection,
    /// The exit end.
    pub exit: Connection,
    links: [Link; 2],
    queue: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    tamper: Option<TamperHook>,
    /// Per leg (up, down): delay before the client re-attaches it after a failure;
    /// `None` leaves it down.
    pub reconnect: [Option<Duration>; 2],
    down_since: [Option<Instant>; 2],
    /// Counters.
    pub stats: SimStats,
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pair")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Keys and settings of a test session.
#[derive(Debug, Clone, Default)]
pub struct PairConfig {
    /// Client settings.
    pub client: Settings,
    /// Exit settings.
    pub exit: Settings,
    /// Up leg.
    pub up: LinkConfig,
    /// Down leg.
    pub down: LinkConfig,
}

impl Pair {
    /// Handshake in memory and attach the down leg through the simulated link.
    pub fn new(cfg: PairConfig) -> Result<Pair, Error> {
        let now = Instant::now();
        let (client_private, client_public) = crate::generate_keypair();
        let (exit_private, exit_public) = crate::generate_keypair();
        let client_cfg = ClientConfig {
            private_key: client_private,
            exit_public_key: exit_public,
            psk: None,
            settings: cfg.client,
        };
        let allowed = [AllowedClient {
            public_key: client_public,
            psk: None,
        }];
        let mut acceptor = Acceptor::new(exit_private, &allowed, cfg.exit);
        let (hs, init) = ClientHandshake::start(&client_cfg, 1)?;
        let Accept::Session(accepted) = acceptor.accept(now, Duration::from_nanos(1), &init)?
        else {
            return Err(Error::UnsupportedVersion {
                offered: crate::VERSION,
                supported: vec![],
            });
        };
        let client = hs.finish(now, &accepted.response)?;
        let link = |cfg| Link {
            cfg,
            connected: true,
            generation: 0,
            free_at: [now; 2],
            reconnect_at: None,
        };
        let mut pair = Pair {
            now,
            client,
            exit: accepted.connection,
            links: [link(cfg.up), link(cfg.down)],
            queue: BinaryHeap::new(),
            seq: 0,
            tamper: None,
            reconnect: [Some(Duration::from_millis(50)); 2],
            down_since: [None; 2],
            stats: SimStats::default(),
        };
        pair.links[Leg::Down.index()].connected = false;
        pair.reattach(Leg::Down);
        Ok(pair)
    }

    /// Install a hook that sees (and may alter) every message on every leg.
    pub fn set_tamper(&mut self, f: impl FnMut(Leg, Dir, &[u8]) -> Verdict + 'static) {
        self.tamper = Some(Box::new(f));
    }

    /// Remove the tamper hook.
    pub fn clear_tamper(&mut self) {
        self.tamper = None;
    }

    /// Change a leg's properties.
    pub fn set_link(&mut self, leg: Leg, cfg: LinkConfig) {
        self.links[leg.index()].cfg = cfg;
    }

    /// Whether a leg's transport is up in the simulation.
    pub fn link_up(&self, leg: Leg) -> bool {
        self.links[leg.index()].connected
    }

    /// Cut a leg's transport: in-flight messages are lost and both ends see it close. The
    /// client re-attaches after `reconnect[leg]`.
    pub fn cut(&mut self, leg: Leg) {
        let link = &mut self.links[leg.index()];
        if !link.connected {
            return;
        }
        link.connected = false;
        link.generation += 1;
        link.reconnect_at = self.reconnect[leg.index()].map(|d| self.now + d);
        self.down_since[leg.index()] = Some(self.now);
        self.stats.leg_failures += 1;
        self.client.leg_lost(self.now, leg);
        self.exit.leg_lost(self.now, leg);
    }

    /// Open a new transport for `leg` and send the client's attach on it.
    pub fn reattach(&mut self, leg: Leg) {
        let link = &mut self.links[leg.index()];
        link.connected = true;
        link.reconnect_at = None;
        let attach = self.client.attach_request(leg);
        self.send(leg, Dir::ToExit, attach.to_vec());
    }

    fn send(&mut self, leg: Leg, dir: Dir, msg: Vec<u8>) {
        let verdict = match &mut self.tamper {
            Some(f) => f(leg, dir, &msg),
            None => Verdict::Pass,
        };
        let (msg, extra, copies) = match verdict {
            Verdict::Pass => (msg, Duration::ZERO, 1),
            Verdict::Drop => return,
            Verdict::Duplicate => (msg, Duration::ZERO, 2),
            Verdict::Replace(m) => (m, Duration::ZERO, 1),
            Verdict::Delay(d) => (msg, d, 1),
        };
        let link = &mut self.links[leg.index()];
        let d = dir as usize;
        let wire = link.cfg.bandwidth.map_or(Duration::ZERO, |bw| {
            Duration::from_secs_f64(msg.len() as f64 / bw as f64)
        });
        let start = link.free_at[d].max(self.now);
        link.free_at[d] = start + wire;
        let at = start + wire + link.cfg.latency + extra;
        for _ in 0..copies {
            self.seq += 1;
            self.queue.push(Reverse(InFlight {
                at,
                seq: self.seq,
                leg,
                dir,
                generation: link.generation,
                msg: msg.clone(),
            }));
        }
    }

    fn deliver(&mut self, m: InFlight) {
        let link = &self.links[m.leg.index()];
        if !link.connected || link.generation != m.generation {
            return;
        }
        self.stats.delivered += 1;
        let now = self.now;
        let result = match (m.dir, message_type(&m.msg)) {
            (Dir::ToExit, Ok(ty::RECORD)) => {
                self.exit
                    .handle_record(now, m.leg, BytesMut::from(&m.msg[..]))
            }
            (Dir::ToClient, Ok(ty::RECORD)) => {
                self.client
                    .handle_record(now, m.leg, BytesMut::from(&m.msg[..]))
            }
            (Dir::ToExit, Ok(ty::ATTACH)) => self.exit_attach(m.leg, &m.msg),
            (Dir::ToClient, Ok(ty::ATTACH_OK)) => {
                let r = self.client.handle_attach_ok(now, m.leg, &m.msg);
                if r.is_ok() {
                    self.end_outage(m.leg);
                }
                r
            }
            (_, Err(e)) => Err(e.into()),
            (_, Ok(_)) => Err(Error::ProtocolViolation("unexpected message type")),
        };
        if let Err(e) = result {
            self.on_error(m.leg, e);
        }
    }

    fn exit_attach(&mut self, leg: Leg, msg: &[u8]) -> Result<(), Error> {
        let attach = Attach::decode(msg)?;
        let ok = self.exit.handle_attach(self.now, leg, &attach)?;
        self.send(leg, Dir::ToClient, ok.to_vec());
        Ok(())
    }

    fn end_outage(&mut self, leg: Leg) {
        if let Some(t) = self.down_since[leg.index()].take() {
            let outage = self.now.saturating_duration_since(t);
            self.stats.longest_outage = self.stats.longest_outage.max(outage);
        }
    }

    fn on_error(&mut self, leg: Leg, e: Error) {
        self.stats.errors.push(e.to_string());
        match e.scope() {
            Scope::Leg | Scope::Message => self.cut(leg),
            Scope::Session | Scope::Stream => {}
        }
    }

    fn pump_transmits(&mut self) {
        while let Some(t) = self.client.poll_transmit(self.now) {
            if self.links[t.leg.index()].connected {
                self.send(t.leg, Dir::ToExit, t.payload.to_vec());
            }
        }
        while let Some(t) = self.exit.poll_transmit(self.now) {
            if self.links[t.leg.index()].connected {
                self.send(t.leg, Dir::ToClient, t.payload.to_vec());
            }
        }
    }

    fn pump_events(&mut self, app: &mut dyn App) -> Result<(), SimError> {
        while let Some(ev) = self.client.poll_event() {
            match ev {
                Event::LegDead { leg, .. } => self.cut(leg),
                Event::Closed {
                    reason,
                    remote: true,
                    ..
                } => return Err(SimError::Closed(reason)),
                ev => app.client_event(self.now, &mut self.client, ev),
            }
        }
        while let Some(ev) = self.exit.poll_event() {
            match ev {
                Event::LegDead { leg, .. } => self.cut(leg),
                Event::Closed {
                    reason,
                    remote: true,
                    ..
                } => return Err(SimError::Closed(reason)),
                ev => app.exit_event(self.now, &mut self.exit, ev),
            }
        }
        Ok(())
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let reconnects = self.links.iter().filter_map(|l| l.reconnect_at);
        [
            self.queue.peek().map(|m| m.0.at),
            self.client.poll_timeout(),
            self.exit.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .chain(reconnects)
        .min()
    }

    /// Run until `goal(app)` holds, or for at most `limit` of simulated time.
    pub fn run<A: App>(
        &mut self,
        app: &mut A,
        limit: Duration,
        goal: impl Fn(&A) -> bool,
    ) -> Result<(), SimError> {
        let deadline = self.now + limit;
        let mut spins = 0u32;
        loop {
            app.poll(self.now, &mut self.client, &mut self.exit);
            self.pump_transmits();
            self.pump_events(app)?;
            self.pump_transmits();
            if goal(app) {
                return Ok(());
            }
            let Some(next) = self.next_wakeup() else {
                return Err(SimError::Stalled);
            };
            if next > deadline {
                self.now = deadline;
                return Err(SimError::TimedOut);
            }
            spins = if next <= self.now { spins + 1 } else { 0 };
            if spins > 100_000 {
                return Err(SimError::Busy(format!(
                    "client timeout {:?}, exit timeout {:?}, queue {}, now {:?}",
                    self.client
                        .poll_timeout()
                        .map(|t| t.saturating_duration_since(self.now)),
                    self.exit
                        .poll_timeout()
                        .map(|t| t.saturating_duration_since(self.now)),
                    self.queue.len(),
                    self.now
                )));
            }
            self.now = self.now.max(next);
            self.step_to_now();
        }
    }

    fn step_to_now(&mut self) {
        while self.queue.peek().is_some_and(|m| m.0.at <= self.now) {
            if let Some(Reverse(m)) = self.queue.pop() {
                self.deliver(m);
            }
        }
        for leg in Leg::BOTH {
            let link = &self.links[leg.index()];
            if link.reconnect_at.is_some_and(|t| t <= self.now) {
                self.reattach(leg);
            }
        }
        if self.client.poll_timeout().is_some_and(|t| t <= self.now) {
            self.client.handle_timeout(self.now);
        }
        if self.exit.poll_timeout().is_some_and(|t| t <= self.now) {
            self.exit.handle_timeout(self.now);
        }
    }

    /// Advance simulated time by `d` with no application activity.
    pub fn idle(&mut self, d: Duration) -> Result<(), SimError> {
        let mut nothing = Idle;
        let until = self.now + d;
        match self.run(&mut nothing, d, |_| false) {
            Err(SimError::TimedOut) | Err(SimError::Stalled) => {
                self.now = self.now.max(until);
                Ok(())
            }
            other => other,
        }
    }
}

struct Idle;

impl App for Idle {
    fn poll(&mut self, _: Instant, _: &mut Connection, _: &mut Connection) {}
    fn client_event(&mut self, _: Instant, _: &mut Connection, _: Event) {}
    fn exit_event(&mut self, _: Instant, _: &mut Connection, _: Event) {}
}

/// The byte at `offset` of stream `stream`'s test pattern.
pub fn pattern_byte(stream: u32, offset: u64) -> u8 {
    PATTERN[((offset + u64::from(stream) * 7) % PERIOD as u64) as usize]
}

const PERIOD: usize = 251;
static PATTERN: [u8; PERIOD] = {
    let mut t = [0u8; PERIOD];
    let mut i = 0;
    while i < PERIOD {
        t[i] = ((i * 89 + 13) % 256) as u8;
        i += 1;
    }
    t
};

/// The test pattern of every stream, cut from one shared buffer without copying: for
/// applications of the harness other than [`Bulk`].
#[derive(Debug, Clone)]
pub struct Pattern(Bytes);

impl Default for Pattern {
    fn default() -> Self {
        Pattern(pattern_buffer(256 * 1024))
    }
}

impl Pattern {
    /// Up to `len` pattern bytes of `stream` from `offset` (at most 256 KiB at a time).
    pub fn slice(&self, stream: StreamId, offset: u64, len: usize) -> Bytes {
        pattern_slice(&self.0, stream.0, offset, len)
    }

    /// Whether `data` is `stream`'s pattern from `offset`.
    pub fn matches(stream: StreamId, offset: u64, data: &[u8]) -> bool {
        data.iter()
            .enumerate()
            .all(|(i, b)| *b == pattern_byte(stream.0, offset + i as u64))
    }
}

/// Up to `len` pattern bytes of `stream` from `offset`, as one slice of a shared buffer.
fn pattern_slice(buf: &Bytes, stream: u32, offset: u64, len: usize) -> Bytes {
    let start = ((offset + u64::from(stream) * 7) % PERIOD as u64) as usize;
    buf.slice(start..start + len.min(buf.len() - PERIOD))
}

fn pattern_buffer(len: usize) -> Bytes {
    (0..len + PERIOD)
        .map(|i| PATTERN[i % PERIOD])
        .collect::<Vec<_>>()
        .into()
}

/// One direction of one stream in [`Bulk`].
#[derive(Debug, Default, Clone)]
pub struct Half {
    /// Bytes written.
    pub written: u64,
    /// Bytes read and verified.
    pub read: u64,
    /// Fin sent.
    pub fin_sent: bool,
    /// Fin read.
    pub fin_read: bool,
}

/// A bulk transfer over many TCP streams, both ways, with every byte checked against a
/// per-stream pattern: `ok()` means every byte arrived, in order, exactly once.
#[derive(Debug)]
pub struct Bulk {
    /// Streams to open.
    pub streams: usize,
    /// Bytes each stream carries up (client→exit).
    pub up_bytes: u64,
    /// Bytes each stream carries down.
    pub down_bytes: u64,
    ids: Vec<StreamId>,
    /// Per stream: up half (client writes, exit reads).
    pub up: Vec<Half>,
    /// Per stream: down half (exit writes, client reads).
    pub down: Vec<Half>,
    accepted: Vec<bool>,
    /// Pattern mismatches seen (must stay 0).
    pub corrupt: u64,
    /// Resets seen (must stay 0).
    pub resets: u64,
    /// Stop reading on the client (a reader that stalls).
    pub client_reading: bool,
    /// Per stream: stop reading that one stream on the client once this many bytes were
    /// read (an app that pauses one connection while using others). Empty: none paused.
    pub client_pause_at: Vec<Option<u64>>,
    buf: Bytes,
}

impl Bulk {
    /// A transfer of `streams` streams carrying `up` and `down` bytes each.
    pub fn new(streams: usize, up: u64, down: u64) -> Self {
        Self {
            streams,
            up_bytes: up,
            down_bytes: down,
            ids: Vec::new(),
            up: vec![Half::default(); streams],
            down: vec![Half::default(); streams],
            accepted: vec![false; streams],
            corrupt: 0,
            resets: 0,
            client_reading: true,
            client_pause_at: Vec::new(),
            buf: pattern_buffer(256 * 1024),
        }
    }

    /// Every byte arrived and every stream finished both ways.
    pub fn done(&self) -> bool {
        self.ids.len() == self.streams
            && self
                .up
                .iter()
                .all(|h| h.fin_read && h.read == self.up_bytes)
            && self
                .down
                .iter()
                .all(|h| h.fin_read && h.read == self.down_bytes)
    }

    /// Bytes verified so far, both ways.
    pub fn verified(&self) -> u64 {
        self.up.iter().chain(&self.down).map(|h| h.read).sum()
    }

    fn index(&self, id: StreamId) -> Option<usize> {
        self.ids.iter().position(|x| *x == id)
    }

    fn write(buf: &Bytes, conn: &mut Connection, id: StreamId, half: &mut Half, total: u64) {
        while half.written < total {
            let len = usize::try_from(total - half.written).unwrap_or(usize::MAX);
            let chunk = pattern_slice(buf, id.0, half.written, len);
            match conn.stream_write(id, &chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => half.written += n as u64,
            }
        }
        if !half.fin_sent && conn.stream_finish(id).is_ok() {
            half.fin_sent = true;
        }
    }

    fn read(now: Instant, conn: &mut Connection, id: StreamId, half: &mut Half, corrupt: &mut u64) {
        loop {
            match conn.stream_read(now, id, usize::MAX) {
                Ok(Read::Data(d)) => {
                    let ok = d
                        .iter()
                        .enumerate()
                        .all(|(i, b)| *b == pattern_byte(id.0, half.read + i as u64));
                    *corrupt += u64::from(!ok);
                    half.read += d.len() as u64;
                }
                Ok(Read::Fin) => {
                    half.fin_read = true;
                    return;
                }
                Ok(Read::WouldBlock) | Err(_) => return,
            }
        }
    }
}

impl App for Bulk {
    fn poll(&mut self, now: Instant, client: &mut Connection, exit: &mut Connection) {
        while self.ids.len() < self.streams {
            let port = 1000 + self.ids.len() as u16;
            let dest = Destination::Addr(([192, 0, 2, 1], port).into());
            match client.open_stream(StreamKind::Tcp, dest) {
                Ok(id) => self.ids.push(id),
                Err(_) => break,
            }
        }
        for (i, id) in self.ids.clone().into_iter().enumerate() {
            if client.has_stream(id) {
                Bulk::write(&self.buf, client, id, &mut self.up[i], self.up_bytes);
                let paused = self
                    .client_pause_at
                    .get(i)
                    .copied()
                    .flatten()
                    .is_some_and(|at| self.down[i].read >= at);
                if self.client_reading && !paused {
                    Bulk::read(now, client, id, &mut self.down[i], &mut self.corrupt);
                }
            }
            if self.accepted[i] && exit.has_stream(id) {
                Bulk::write(&self.buf, exit, id, &mut self.down[i], self.down_bytes);
                Bulk::read(now, exit, id, &mut self.up[i], &mut self.corrupt);
            }
        }
    }

    fn client_event(&mut self, _: Instant, _: &mut Connection, event: Event) {
        if let Event::StreamReset { .. } = event {
            self.resets += 1;
        }
    }

    fn exit_event(&mut self, _: Instant, conn: &mut Connection, event: Event) {
        match event {
            Event::StreamOpened { id, .. } => {
                if let Some(i) = self.index(id) {
                    self.accepted[i] = conn.accept_stream(id).is_ok();
                }
            }
            Event::StreamReset { .. } => self.resets += 1,
            _ => {}
        }
    }
}
