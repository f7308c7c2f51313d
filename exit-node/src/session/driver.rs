//! One session's driver: a loop around `proto::Connection` (STYLE.md §3). Each step is
//! named: take input (leg messages, destination I/O, dial results, operator commands),
//! feed the core, drain its transmits into the legs, act on its events, re-arm its timer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proto::{
    CloseCode, Connection, Event, LazyDeadline, Read, ResetCode, Scope, StreamId, StreamKind,
    Transmit,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::streams::{Dialed, Flow, MAX_OUTSTANDING, WriterCmd, describe};
use super::{ClientInfo, CloseOrder, Hub, Status, lock};
use crate::admin::{Direction, DirectionLabel, ReasonLabel};
use crate::descriptors::{Permit, SessionFds};
use crate::dial::DialError;
use crate::listener::ws::{Incoming, Outgoing};
use crate::listener::{self, LegSocket, LegStream};
use crate::policy::Refusal;

/// Messages queued to a leg's writer before the driver waits for it.
const LEG_QUEUE: usize = 64;
/// Bytes read from the core per stream read.
const STREAM_READ: usize = 256 * 1024;
/// Inputs handled per loop turn before transmits are drained.
const BATCH: usize = 64;
/// At most one log line per session this often for refused destination sockets.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(5);

/// Everything that wakes the driver.
#[derive(Debug)]
pub(crate) enum Input {
    /// An attach arrived on a new transport.
    Attach(Box<(proto::message::Attach, LegSocket)>),
    /// A message on an attached leg.
    Record {
        leg: proto::Leg,
        generation: u64,
        data: BytesMut,
    },
    /// A leg's transport closed or failed.
    LegClosed { leg: proto::Leg, generation: u64 },
    /// A dial finished; `permit` is the destination socket's descriptor.
    Dialed {
        id: StreamId,
        result: Result<Dialed, DialError>,
        permit: Permit,
    },
    /// Bytes from a TCP destination.
    TcpData { id: StreamId, data: Bytes },
    /// A TCP destination finished sending.
    TcpEof { id: StreamId },
    /// A TCP destination failed.
    TcpError { id: StreamId, error: String },
    /// A writer finished one chunk.
    Wrote { id: StreamId },
    /// A datagram from a UDP destination.
    Udp { id: StreamId, data: Bytes },
    /// An echo reply (`None`: refused, no reply, or echo unavailable).
    EchoReply { id: u32, data: Option<Vec<u8>> },
    /// A DNS answer (`None`: the query was not DNS).
    DnsAnswer { id: u32, msg: Option<Vec<u8>> },
    /// End the session.
    Close(CloseCode, &'static str),
}

fn to_proto(leg: listener::Leg) -> proto::Leg {
    match leg {
        listener::Leg::Up => proto::Leg::Up,
        listener::Leg::Down => proto::Leg::Down,
    }
}

/// A leg's transport: a writer task fed by a channel and a reader task feeding the inbox.
#[derive(Debug)]
struct LegIo {
    generation: u64,
    peer: SocketAddr,
    out: mpsc::Sender<Outgoing>,
    reader: JoinHandle<()>,
}

impl Drop for LegIo {
    fn drop(&mut self) {
        // The writer ends (and closes the WebSocket) once `out` is dropped and drained.
        self.reader.abort();
    }
}

pub(crate) struct Driver {
    hub: Arc<Hub>,
    client: ClientInfo,
    conn: Connection,
    inbox: mpsc::Sender<Input>,
    status: Arc<Mutex<Status>>,
    legs: [Option<LegIo>; 2],
    generation: u64,
    /// A transmit whose leg queue was full.
    stalled: Option<Transmit>,
    flows: HashMap<StreamId, Flow>,
    /// Echo requests in flight.
    echoes: usize,
    /// DNS queries waiting for the upstream.
    dns_queries: usize,
    /// When a DNS limit was last logged, and how many refusals were not logged since.
    dns_refusals_logged: Option<(std::time::Instant, u64)>,
    /// This session's account in the node's descriptor budget.
    fds: SessionFds,
    /// When a descriptor refusal was last logged, and how many were not logged since.
    refusals_logged: Option<(Instant, u64)>,
}

impl Driver {
    pub fn new(
        hub: Arc<Hub>,
        client: ClientInfo,
        conn: Connection,
        inbox: mpsc::Sender<Input>,
        status: Arc<Mutex<Status>>,
        fds: SessionFds,
    ) -> Self {
        Driver {
            hub,
            client,
            conn,
            inbox,
            status,
            legs: [None, None],
            generation: 0,
            stalled: None,
            flows: HashMap::new(),
            echoes: 0,
            dns_queries: 0,
            dns_refusals_logged: None,
            fds,
            refusals_logged: None,
        }
    }

    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }

    /// Run until the session ends.
    pub async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Input>,
        mut close: watch::Receiver<Option<CloseOrder>>,
        up: LegSocket,
    ) {
        self.install_leg(up, None);
        // Until the order arrives (or its sender is gone with the store entry).
        let mut close_open = true;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // One timer, moved only earlier (see `proto::timer`).
        let timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(timer);
        let mut deadline = LazyDeadline::default();
        loop {
            self.drain_transmits();
            if !self.handle_events() {
                break;
            }
            if let Some(at) = deadline.rearm(self.conn.poll_timeout()) {
                timer.as_mut().reset(Instant::from_std(at));
            }
            let stalled_out = self.stalled_sender();
            tokio::select! {
                input = inbox.recv() => match input {
                    Some(input) => self.handle_input_batch(input, &mut inbox),
                    None => break,
                },
                () = &mut timer, if deadline.is_armed() => {
                    deadline.fired();
                    let now = self.now();
                    if self.conn.poll_timeout().is_some_and(|t| t <= now) {
                        self.conn.handle_timeout(now);
                    }
                }
                permit = reserve(stalled_out.clone()), if stalled_out.is_some() => {
                    if let (Ok(permit), Some(t)) = (permit, self.stalled.take()) {
                        self.count_tx(&t);
                        permit.send(Outgoing::Binary(t.payload));
                    }
                }
                changed = close.changed(), if close_open => {
                    close_open = changed.is_ok();
                    let order = *close.borrow_and_update();
                    if let Some((code, reason)) = order {
                        close_open = false;
                        self.handle_input(Input::Close(code, reason));
                    }
                }
                _ = tick.tick() => self.housekeeping(),
            }
        }
        self.finish();
    }

    fn handle_input_batch(&mut self, first: Input, inbox: &mut mpsc::Receiver<Input>) {
        self.handle_input(first);
        for _ in 1..BATCH {
            match inbox.try_recv() {
                Ok(input) => self.handle_input(input),
                Err(_) => return,
            }
        }
    }

    // ---- legs ---------------------------------------------------------------------------

    fn install_leg(&mut self, sock: LegSocket, first: Option<Bytes>) {
        let leg = to_proto(sock.leg);
        self.generation += 1;
        let generation = self.generation;
        let LegStream { reader, writer } = sock.ws;
        let (out, out_rx) = mpsc::channel(LEG_QUEUE);
        if let Some(msg) = first {
            // The queue is new and empty: this cannot fail.
            let _ = out.try_send(Outgoing::Binary(msg));
        }
        tokio::spawn(leg_writer(writer, out_rx));
        let reader = tokio::spawn(leg_reader(
            leg,
            generation,
            reader,
            out.clone(),
            self.inbox.clone(),
        ));
        tracing::info!(session = %self.conn.session_id(), leg = %leg, peer = %sock.peer, tls = sock.tls, "leg attached");
        self.hub.metrics.legs.get_or_create(&direction(leg)).inc();
        if let Some(old) = self.legs[leg.index()].replace(LegIo {
            generation,
            peer: sock.peer,
            out,
            reader,
        }) {
            self.hub.metrics.legs.get_or_create(&direction(leg)).dec();
            tracing::info!(session = %self.conn.session_id(), leg = %leg, old_peer = %old.peer, "replaced by a new transport");
        }
    }

    fn drop_leg(&mut self, leg: proto::Leg, why: &dyn std::fmt::Display) {
        if let Some(io) = self.legs[leg.index()].take() {
            self.hub.metrics.legs.get_or_create(&direction(leg)).dec();
            tracing::info!(session = %self.conn.session_id(), leg = %leg, peer = %io.peer, reason = %why, "leg closed");
        }
        if self.stalled.as_ref().is_some_and(|t| t.leg == leg) {
            self.stalled = None;
        }
        self.conn.leg_lost(self.now(), leg);
    }

    fn on_attach(&mut self, attach: &proto::message::Attach, mut sock: LegSocket) {
        let leg = to_proto(sock.leg);
        let overtaken = self.conn.stats().overtaken_attaches;
        match self.conn.handle_attach(self.now(), leg, attach) {
            Ok(ok) => {
                // The core resumes at the attach's resume point on the new transport; a
                // record stalled for the old one is sent again from there.
                if self.stalled.as_ref().is_some_and(|t| t.leg == leg) {
                    self.stalled = None;
                }
                if self.conn.stats().overtaken_attaches > overtaken {
                    self.on_overtaken_attach(leg, attach, sock.peer);
                }
                self.install_leg(sock, Some(ok));
            }
            Err(e) => {
                self.hub.reject(sock.peer, sock.leg, "attach", &e);
                tokio::spawn(async move {
                    let _ = sock
                        .ws
                        .writer
                        .send(Outgoing::Close(proto::ws::CLOSE_NORMAL, ""))
                        .await;
                });
            }
        }
    }

    /// An authenticated attach whose resume point the client's acknowledgements on the
    /// other leg had already passed (PROTOCOL.md §3.6): an older acknowledgement, accepted.
    /// Honest when the other leg is faster; a relay that withholds attaches and releases
    /// them late shows up here too.
    fn on_overtaken_attach(
        &self,
        leg: proto::Leg,
        attach: &proto::message::Attach,
        peer: SocketAddr,
    ) {
        tracing::info!(
            session = %self.conn.session_id(),
            leg = %leg,
            %peer,
            seq = attach.seq,
            resume_point = attach.next,
            "attach overtaken: its resume point is behind the acknowledgements already \
             received (the other leg was faster, or a relay withheld it); accepted, sending \
             resumes at the first unacknowledged record"
        );
        self.hub
            .metrics
            .attaches_overtaken
            .get_or_create(&direction(leg))
            .inc();
    }

    fn on_record(&mut self, leg: proto::Leg, generation: u64, data: BytesMut) {
        let current = self.legs[leg.index()].as_ref().map(|l| l.generation);
        if current != Some(generation) {
            return;
        }
        self.hub
            .metrics
            .bytes
            .get_or_create(&DirectionLabel {
                direction: Direction::Up,
            })
            .inc_by(data.len() as u64);
        if let Err(e) = self.conn.handle_record(self.now(), leg, data) {
            match e.scope() {
                Scope::Leg | Scope::Message => self.drop_leg(leg, &e),
                Scope::Session | Scope::Stream => {
                    tracing::warn!(session = %self.conn.session_id(), error = %e, "session error")
                }
            }
        }
    }

    fn stalled_sender(&self) -> Option<mpsc::Sender<Outgoing>> {
        let leg = self.stalled.as_ref()?.leg;
        self.legs[leg.index()].as_ref().map(|l| l.out.clone())
    }

    fn drain_transmits(&mut self) {
        if self.stalled.is_some() {
            return;
        }
        while let Some(t) = self.conn.poll_transmit(self.now()) {
            let Some(io) = &self.legs[t.leg.index()] else {
                // The core thinks the leg is attached but its transport is gone: it will
                // be re-sent after the next attach.
                self.conn.leg_lost(self.now(), t.leg);
                continue;
            };
            let out = io.out.clone();
            match out.try_reserve() {
                Ok(permit) => {
                    self.count_tx(&t);
                    permit.send(Outgoing::Binary(t.payload));
                }
                Err(mpsc::error::TrySendError::Full(())) => {
                    self.stalled = Some(t);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(())) => {
                    self.drop_leg(t.leg, &"writer ended");
                }
            }
        }
    }

    fn count_tx(&self, t: &Transmit) {
        let dir = match self.conn.role() {
            proto::Role::Exit => Direction::Down,
            proto::Role::Client => Direction::Up,
        };
        self.hub
            .metrics
            .bytes
            .get_or_create(&DirectionLabel { direction: dir })
            .inc_by(t.payload.len() as u64);
    }

    // ---- inputs -------------------------------------------------------------------------

    fn handle_input(&mut self, input: Input) {
        match input {
            Input::Attach(boxed) => {
                let (attach, sock) = *boxed;
                self.on_attach(&attach, sock)
            }
            Input::Record {
                leg,
                generation,
                data,
            } => self.on_record(leg, generation, data),
            Input::LegClosed { leg, generation } => {
                if self.legs[leg.index()].as_ref().map(|l| l.generation) == Some(generation) {
                    self.drop_leg(leg, &"transport closed");
                }
            }
            Input::Dialed { id, result, permit } => self.on_dialed(id, result, permit),
            Input::TcpData { id, data } => self.on_tcp_data(id, data),
            Input::TcpEof { id } => self.on_tcp_eof(id),
            Input::TcpError { id, error } => {
                tracing::debug!(session = %self.conn.session_id(), stream = %id, %error, "destination error");
                self.reset(id, ResetCode::PeerReset);
            }
            Input::Wrote { id } => {
                if let Some(f) = self.flows.get_mut(&id) {
                    f.outstanding = f.outstanding.saturating_sub(1);
                }
                self.pump_to_destination(id);
            }
            Input::Udp { id, data } => {
                let now = self.now();
                if let Some(f) = self.flows.get_mut(&id) {
                    f.last_active = now;
                    let _ = self.conn.send_datagram(id, data);
                }
            }
            Input::EchoReply { id, data } => {
                self.echoes = self.echoes.saturating_sub(1);
                if let Some(data) = data {
                    let _ = self.conn.send_echo_reply(id, data.into());
                }
            }
            Input::DnsAnswer { id, msg } => {
                self.dns_queries = self.dns_queries.saturating_sub(1);
                if let Some(msg) = msg {
                    self.hub.metrics.dns_queries.inc();
                    let _ = self.conn.send_dns_response(id, msg.into());
                }
            }
            Input::Close(code, reason) => {
                tracing::info!(session = %self.conn.session_id(), reason, "closing session");
                self.conn.close(code, reason);
            }
        }
    }

    fn on_dialed(&mut self, id: StreamId, result: Result<Dialed, DialError>, permit: Permit) {
        let Some(flow) = self.flows.get_mut(&id) else {
            return;
        };
        match result {
            Ok(dialed) => {
                let tcp = matches!(dialed, Dialed::Tcp(_));
                flow.connect(id, dialed, permit, &self.inbox);
                if tcp {
                    let _ = self.conn.accept_stream(id);
                }
                self.pump_to_destination(id);
            }
            Err(e) => {
                let code = reset_code(&e);
                if let DialError::Refused(r) = &e {
                    let reason = refusal_name(r);
                    self.hub
                        .metrics
                        .egress_refused
                        .get_or_create(&ReasonLabel { reason })
                        .inc();
                }
                tracing::info!(session = %self.conn.session_id(), client = %self.client.name, stream = %id, target = %flow.target, error = %e, "stream refused");
                self.flows.remove(&id);
                let _ = self.conn.reset_stream(id, code);
            }
        }
    }

    fn on_tcp_data(&mut self, id: StreamId, data: Bytes) {
        let Some(flow) = self.flows.get_mut(&id) else {
            return;
        };
        flow.pending = Some(data);
        self.push_pending(id);
    }

    /// Move a flow's pending destination bytes into the core; resume its reader when all
    /// went in, and send the deferred `Fin` if the destination is done.
    fn push_pending(&mut self, id: StreamId) {
        let Some(flow) = self.flows.get_mut(&id) else {
            return;
        };
        if let Some(mut data) = flow.pending.take() {
            match self.conn.stream_write(id, &data) {
                Ok(n) if n < data.len() => {
                    flow.pending = Some(data.split_off(n));
                    return;
                }
                Ok(_) => flow.resume_reader(),
                Err(_) => return,
            }
        }
        if flow.eof_pending {
            flow.eof_pending = false;
            let _ = self.conn.stream_finish(id);
            self.reap(id);
        }
    }

    fn on_tcp_eof(&mut self, id: StreamId) {
        if let Some(flow) = self.flows.get_mut(&id) {
            flow.eof_pending = true;
            self.push_pending(id);
        }
    }

    /// Move stream bytes from the core to the destination writer, bounded.
    fn pump_to_destination(&mut self, id: StreamId) {
        let now = self.now();
        let Some(flow) = self.flows.get_mut(&id) else {
            return;
        };
        if !flow.is_tcp_open() {
            return;
        }
        while flow.outstanding < MAX_OUTSTANDING && !flow.fin_forwarded {
            match self.conn.stream_read(now, id, STREAM_READ) {
                Ok(Read::Data(b)) => {
                    flow.last_active = now;
                    flow.send_to_writer(WriterCmd::Chunk(b));
                }
                Ok(Read::Fin) => {
                    flow.fin_forwarded = true;
                    flow.send_to_writer(WriterCmd::Shutdown);
                }
                Ok(Read::WouldBlock) | Err(_) => break,
            }
        }
        self.reap(id);
    }

    /// Forget a flow whose stream the core has reclaimed (both halves done).
    fn reap(&mut self, id: StreamId) {
        if !self.conn.has_stream(id) {
            if let Some(flow) = self.flows.get(&id) {
                // Let the writer finish what it has: keep the tasks running until written.
                if flow.outstanding > 0 || flow.pending.is_some() {
                    return;
                }
            }
            self.flows.remove(&id);
        }
    }

    fn reset(&mut self, id: StreamId, code: ResetCode) {
        self.flows.remove(&id);
        let _ = self.conn.reset_stream(id, code);
    }

    // ---- events -------------------------------------------------------------------------

    /// Act on the core's events; false when the session is over.
    fn handle_events(&mut self) -> bool {
        while let Some(event) = self.conn.poll_event() {
            match event {
                Event::StreamOpened { id, kind, dest } => self.on_open(id, kind, dest),
                Event::StreamReadable { id } => self.pump_to_destination(id),
                Event::StreamWritable { id } => self.push_pending(id),
                Event::StreamReset { id, .. } => {
                    self.flows.remove(&id);
                }
                Event::Datagram { id, data } => self.on_datagram(id, data),
                Event::DnsQuery { id, msg } => self.on_dns(id, msg),
                Event::EchoRequest { id, dest, data } => self.on_echo(id, dest, data),
                Event::LegDead { leg, reason } => self.drop_leg(leg, &format!("{reason:?}")),
                Event::Closed {
                    code,
                    reason,
                    remote,
                } => {
                    tracing::info!(session = %self.conn.session_id(), ?code, reason, remote, "session closed");
                    return false;
                }
                Event::StreamAccepted { .. }
                | Event::DnsResponse { .. }
                | Event::EchoReply { .. } => {}
            }
        }
        true
    }

    fn on_open(&mut self, id: StreamId, kind: StreamKind, dest: proto::Destination) {
        let (target, text) = describe(&dest);
        tracing::debug!(session = %self.conn.session_id(), stream = %id, ?kind, target = %text, "stream opened");
        let Some(permit) = self.descriptor(&text) else {
            let _ = self.conn.reset_stream(id, ResetCode::TooManyStreams);
            return;
        };
        self.flows.insert(id, Flow::dialing(text, self.now()));
        let dialer = self.hub.dialer();
        let key = self.client.key;
        let inbox = self.inbox.clone();
        let fds = self.fds.clone();
        tokio::spawn(async move {
            let result = match kind {
                StreamKind::Tcp => dialer
                    .connect_tcp_limited(&key, &target, || fds.try_acquire().ok())
                    .await
                    .map(Dialed::Tcp),
                StreamKind::Udp => dialer.connect_udp(&key, &target).await.map(Dialed::Udp),
            };
            let _ = inbox.send(Input::Dialed { id, result, permit }).await;
        });
    }

    /// A descriptor for a destination socket to `target`, or `None` (counted, and logged at
    /// most once per `REFUSAL_LOG_EVERY` with the number left unlogged) when the session
    /// holds its share of the node's budget.
    fn descriptor(&mut self, target: &str) -> Option<Permit> {
        let refusal = match self.fds.try_acquire() {
            Ok(permit) => return Some(permit),
            Err(r) => r,
        };
        self.hub
            .metrics
            .limits_hit
            .get_or_create(&ReasonLabel {
                reason: "descriptors",
            })
            .inc();
        let now = Instant::now();
        match &mut self.refusals_logged {
            Some((at, unlogged)) if now.duration_since(*at) < REFUSAL_LOG_EVERY => {
                *unlogged += 1;
            }
            logged => {
                let unlogged = logged.map_or(0, |(_, n)| n);
                tracing::warn!(session = %self.conn.session_id(), client = %self.client.name, %target, reason = %refusal, refused_since_last_line = unlogged, "stream refused: descriptor limit");
                *logged = Some((now, 0));
            }
        }
        None
    }

    fn on_datagram(&mut self, id: StreamId, data: Bytes) {
        let now = self.now();
        let Some(flow) = self.flows.get_mut(&id) else {
            return;
        };
        flow.last_active = now;
        flow.send_datagram(data);
    }

    fn on_echo(&mut self, id: u32, dest: std::net::IpAddr, data: Bytes) {
        if self.echoes >= super::echo::MAX_ECHOES {
            return;
        }
        let Some(permit) = self.descriptor(&dest.to_string()) else {
            return;
        };
        self.echoes += 1;
        let dialer = self.hub.dialer();
        let key = self.client.key;
        let inbox = self.inbox.clone();
        let session = self.conn.session_id();
        let metrics = self.hub.metrics.clone();
        tokio::spawn(async move {
            let target = crate::dial::Target::Addr(SocketAddr::new(dest, 0));
            let data = match dialer
                .allowed_addrs(&key, &target, crate::policy::Transport::Udp)
                .await
            {
                Ok(addrs) => {
                    let reply = super::echo::echo(addrs[0].ip(), &data).await;
                    drop(permit);
                    reply
                }
                Err(e) => {
                    if let DialError::Refused(r) = &e {
                        let reason = refusal_name(r);
                        metrics
                            .egress_refused
                            .get_or_create(&ReasonLabel { reason })
                            .inc();
                    }
                    tracing::info!(%session, %dest, error = %e, "echo refused");
                    None
                }
            };
            let _ = inbox.send(Input::EchoReply { id, data }).await;
        });
    }

    fn on_dns(&mut self, id: u32, msg: Bytes) {
        let slot = match self.dns_queries < crate::dns::MAX_QUERIES_PER_SESSION {
            true => self
                .hub
                .dns_slots
                .clone()
                .try_acquire_owned()
                .map_err(|_| "dns_node"),
            false => Err("dns_session"),
        };
        let permit = match slot {
            Ok(permit) => permit,
            Err(reason) => return self.dns_refused(id, &msg, reason),
        };
        self.dns_queries += 1;
        let dns = self.hub.dialer().dns.clone();
        let inbox = self.inbox.clone();
        tokio::spawn(async move {
            let msg = dns.answer(&msg).await;
            drop(permit);
            let _ = inbox.send(Input::DnsAnswer { id, msg }).await;
        });
    }

    /// A DNS query over a limit: SERVFAIL at once (the app retries), counted, and logged
    /// at most every ten seconds.
    fn dns_refused(&mut self, id: u32, msg: &[u8], reason: &'static str) {
        self.hub
            .metrics
            .limits_hit
            .get_or_create(&ReasonLabel { reason })
            .inc();
        if let Some(answer) = crate::dns::servfail(msg) {
            let _ = self.conn.send_dns_response(id, answer.into());
        }
        let now = self.now();
        match &mut self.dns_refusals_logged {
            Some((at, quiet)) if now.saturating_duration_since(*at) < Duration::from_secs(10) => {
                *quiet += 1;
            }
            logged => {
                let unlogged = logged.map_or(0, |(_, n)| n);
                tracing::info!(session = %self.conn.session_id(), reason, unlogged, "DNS query answered SERVFAIL: too many waiting for the upstream");
                *logged = Some((now, 0));
            }
        }
    }

    // ---- upkeep -------------------------------------------------------------------------

    fn housekeeping(&mut self) {
        let now = self.now();
        let idle = self.hub.limits().udp_idle_timeout;
        let expired: Vec<StreamId> = self
            .flows
            .iter()
            .filter(|(_, f)| f.is_udp())
            .filter(|(_, f)| now.saturating_duration_since(f.last_active) >= idle)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.reset(id, ResetCode::IdleTimeout);
        }
        let paused = super::Paused::of(&self.conn.paused_streams(now));
        let mut status = lock(&self.status);
        status.stats = self.conn.stats();
        status.paused = paused;
    }

    fn finish(mut self) {
        self.drain_transmits();
        if let Some(t) = self.stalled.take()
            && let Some(io) = &self.legs[t.leg.index()]
        {
            let _ = io.out.try_send(Outgoing::Binary(t.payload));
        }
        self.flows.clear();
        for leg in proto::Leg::BOTH {
            if self.legs[leg.index()].take().is_some() {
                self.hub.metrics.legs.get_or_create(&direction(leg)).dec();
            }
        }
    }
}

fn direction(leg: proto::Leg) -> DirectionLabel {
    DirectionLabel {
        direction: match leg {
            proto::Leg::Up => Direction::Up,
            proto::Leg::Down => Direction::Down,
        },
    }
}

fn reset_code(e: &DialError) -> ResetCode {
    match e {
        DialError::Refused(_) => ResetCode::PolicyRefused,
        DialError::Resolve(_) | DialError::NoAddresses(_) => ResetCode::DnsFailure,
        DialError::Timeout(_) => ResetCode::ConnectTimeout,
        DialError::Connect { source, .. }
            if source.kind() == std::io::ErrorKind::ConnectionRefused =>
        {
            ResetCode::ConnectionRefused
        }
        _ => ResetCode::Unreachable,
    }
}

fn refusal_name(r: &Refusal) -> &'static str {
    match r {
        Refusal::SpecialRange(_) => "special_range",
        Refusal::OwnAddress => "own_address",
        Refusal::DeniedNetwork(_) => "denied_network",
        Refusal::BlockedPort(_) => "blocked_port",
    }
}

async fn reserve(tx: Option<mpsc::Sender<Outgoing>>) -> Result<mpsc::OwnedPermit<Outgoing>, ()> {
    match tx {
        Some(tx) => tx.reserve_owned().await.map_err(|_| ()),
        None => std::future::pending().await,
    }
}

type LegReader = listener::ws::WsReader<tokio::io::ReadHalf<listener::LegIo>>;
type LegWriter = listener::ws::WsWriter<tokio::io::WriteHalf<listener::LegIo>>;

async fn leg_writer(mut sink: LegWriter, mut rx: mpsc::Receiver<Outgoing>) {
    while let Some(msg) = rx.recv().await {
        sink.push(msg);
        while !sink.full() {
            match rx.try_recv() {
                Ok(more) => sink.push(more),
                Err(_) => break,
            }
        }
        if sink.flush().await.is_err() || sink.closed() {
            return;
        }
    }
    sink.push(Outgoing::Close(proto::ws::CLOSE_NORMAL, ""));
    let _ = sink.flush().await;
}

async fn leg_reader(
    leg: proto::Leg,
    generation: u64,
    mut stream: LegReader,
    out: mpsc::Sender<Outgoing>,
    inbox: mpsc::Sender<Input>,
) {
    loop {
        match stream.next().await {
            Ok(Incoming::Message(data)) => {
                let record = Input::Record {
                    leg,
                    generation,
                    data,
                };
                if inbox.send(record).await.is_err() {
                    return;
                }
            }
            // A pong that finds the queue full is dropped: the peer's ping only checks
            // that the connection is alive, which the records behind it show.
            Ok(Incoming::Ping(p)) => drop(out.try_send(Outgoing::Pong(p))),
            Ok(Incoming::Close(_)) | Err(_) => break,
        }
    }
    let _ = inbox.send(Input::LegClosed { leg, generation }).await;
}
