//! The session driver: one task that owns the netstack, the proto session, the flow bridge
//! and both legs, and pumps TUN ⇄ netstack ⇄ proto ⇄ WebSockets.
//!
//! ```text
//! loop {
//!   wait for: a TUN packet (then read the rest of the batch) | a leg message / state change
//!             | the one timer | a status request | shutdown
//!   feed it to its core (netstack.handle_packet / conn.handle_record / handle_attach_ok …)
//!   bridge.run: netstack events ⇄ proto events until both are quiet
//!   legs: connect what is due, send the handshake or attach of a connected leg
//!   drain conn.poll_transmit into the leg it names; drain netstack.poll_transmit to the TUN
//!   re-arm the timer from poll_timeout of both cores and the legs' deadlines
//! }
//! ```

pub mod legs;
pub mod stall;
pub mod status;
#[cfg(test)]
mod tests;
pub mod unknown;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use proto::{ClientConfig, ClientHandshake, Connection, Leg, Scope};
use tokio::sync::{mpsc, oneshot};

use crate::backoff::{Backoff, Failure};
use crate::device::{PacketDevice, Received};
use crate::flows::{Bridge, BridgeConfig};
use crate::leg::LegEndpoint;
use legs::{CLOSE_UNKNOWN_SESSION, Ended, LegInput, LegSlot, Phase, Transport};
use stall::{StallMonitor, Work};
use status::Status;
use unknown::{UnknownSession, Verdict};

/// How long the exit has to answer a handshake or an attach.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Most TUN packets handled before the cores are polled.
const BATCH: usize = 64;

/// Everything the driver needs, built from the config file (or by a test).
#[derive(Debug)]
pub struct DriverConfig {
    /// Keys and protocol settings.
    pub client: ClientConfig,
    /// The up leg (Domain A) and the down leg (Domain B), with their URLs for logs.
    pub legs: [(LegEndpoint, String); 2],
    /// Mark for the legs' sockets (`None` in loopback tests).
    pub fwmark: Option<u32>,
    /// Backoff bounds.
    pub reconnect: (Duration, Duration),
    /// Flow bridge settings.
    pub bridge: BridgeConfig,
    /// The userspace stack.
    pub netstack: netstack::Config,
    /// Periodic stats log interval (zero: off).
    pub stats_interval: Duration,
    /// Whether the kill switch is on (reported by `status`).
    pub kill_switch: bool,
    /// How long data may stop moving while work is outstanding before the stuck leg is
    /// reconnected (zero: off). See [`stall`].
    pub stall_timeout: Duration,
}

/// A `status` request: the driver answers with a snapshot.
pub type StatusRequest = oneshot::Sender<Status>;

/// The driver's state.
struct Driver {
    client: ClientConfig,
    fwmark: Option<u32>,
    stack: netstack::Stack,
    bridge: Bridge,
    conn: Option<Connection>,
    legs: [LegSlot; 2],
    inputs_tx: mpsc::Sender<LegInput>,
    last_timestamp: u64,
    sessions: u64,
    started: Instant,
    stats_interval: Duration,
    next_stats: Option<Instant>,
    last_stats: (Instant, u64, u64),
    last_dropped: status::DroppedStatus,
    kill_switch: bool,
    stall: StallMonitor,
    /// Whether a close 4404 ("unknown session") is confirmed (PROTOCOL.md §7.4).
    unknown: UnknownSession,
    /// When to next check that the legs' source addresses still exist.
    next_address_check: Instant,
    /// TCP segments the TUN handed over coalesced (GSO packets), since start.
    tun_coalesced: u64,
    /// TCP segments written to the TUN coalesced into GSO packets, since start.
    tun_coalesced_out: u64,
    /// Packets to write, kept between passes for its allocation.
    tx_batch: Vec<Vec<u8>>,
}

/// Run until `shutdown` resolves; then close the session politely and return.
pub async fn run<D: PacketDevice>(
    config: DriverConfig,
    dev: D,
    mut status_rx: mpsc::Receiver<StatusRequest>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (inputs_tx, mut inputs) = mpsc::channel(1024);
    let mut config = config;
    config.netstack.tcp_checksum_offload = dev.completes_tcp_checksums();
    let mut d = Driver::new(config, inputs_tx)?;
    // Whatever the MTU: with TCP segmentation offload the TUN hands over GSO packets of up
    // to 64 KiB (a shorter buffer would truncate them).
    let mut buf = vec![0u8; netstack::MAX_MTU + 64];
    tokio::pin!(shutdown);
    loop {
        // Re-armed at the exact next deadline on every pass. Unlike the exit's driver, a
        // lazy timer (`proto::LazyDeadline`) measured slower here: netstack's per-flow
        // timers come and go with each connection, and the early firings it leaves cost
        // more than the runtime wake-ups it saves (BENCHMARKS.md, A/B table).
        let wake = tokio::time::Instant::from_std(d.next_wakeup());
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(input) = inputs.recv() => d.on_leg_input(Instant::now(), input),
            r = dev.recv(&mut buf) => d.on_packets(&dev, &mut buf, r),
            Some(req) = status_rx.recv() => { let _ = req.send(d.status(Instant::now())); }
            () = tokio::time::sleep_until(wake) => d.on_timer(Instant::now()),
        }
        d.drive(Instant::now(), &dev).await;
    }
    d.close().await;
    Ok(())
}

/// Most packets written to the TUN in one batch (a run of 1,460-byte segments coalesces
/// into at most 44 per GSO packet).
const TX_BATCH: usize = 128;
/// Most bytes held for one batch: large packets (64 KiB at the default MTU) cannot be
/// coalesced anyway, and written at once they go back to netstack's buffer pool at once.
const TX_BATCH_BYTES: usize = 256 * 1024;

/// How often the legs' source addresses are checked.
const ADDRESS_CHECK: Duration = Duration::from_secs(1);

/// Whether `ip` is (still) an address of this host: binding a socket to an address that
/// is not assigned fails (`EADDRNOTAVAIL`). With `net.ipv4.ip_nonlocal_bind` set every bind
/// succeeds, and address changes are left to the stall monitor.
fn address_is_local(ip: std::net::IpAddr) -> bool {
    match std::net::UdpSocket::bind((ip, 0)) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::AddrNotAvailable,
    }
}

fn wall_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Driver {
    fn new(config: DriverConfig, inputs_tx: mpsc::Sender<LegInput>) -> anyhow::Result<Self> {
        let now = Instant::now();
        let stack = netstack::Stack::new(config.netstack, now)?;
        let (initial, max) = config.reconnect;
        let [(up, up_url), (down, down_url)] = config.legs;
        let seed = wall_nanos();
        // Longer than the exit's keepalive (the default, 5 s, is ours too): an exit that
        // holds the session sends at least a ping that often (PROTOCOL.md §7.4).
        let unknown = UnknownSession::new(2 * config.client.settings.keepalive);
        Ok(Driver {
            client: config.client,
            fwmark: config.fwmark,
            stack,
            bridge: Bridge::new(config.bridge),
            conn: None,
            legs: [
                LegSlot::new(Leg::Up, up, up_url, Backoff::new(initial, max, seed)),
                LegSlot::new(Leg::Down, down, down_url, Backoff::new(initial, max, !seed)),
            ],
            inputs_tx,
            last_timestamp: 0,
            sessions: 0,
            started: now,
            stats_interval: config.stats_interval,
            next_stats: (!config.stats_interval.is_zero()).then(|| now + config.stats_interval),
            last_stats: (now, 0, 0),
            last_dropped: status::DroppedStatus::default(),
            kill_switch: config.kill_switch,
            stall: StallMonitor::new(config.stall_timeout, now),
            unknown,
            next_address_check: now + ADDRESS_CHECK,
            tun_coalesced: 0,
            tun_coalesced_out: 0,
            tx_batch: Vec::new(),
        })
    }

    fn slot(&mut self, leg: Leg) -> &mut LegSlot {
        match leg {
            Leg::Up => &mut self.legs[0],
            Leg::Down => &mut self.legs[1],
        }
    }

    // ---- input ------------------------------------------------------------------------

    fn on_packets<D: PacketDevice>(
        &mut self,
        dev: &D,
        buf: &mut [u8],
        first: std::io::Result<Received>,
    ) {
        let now = Instant::now();
        match first {
            Ok(r) => self.on_packet(now, &buf[..r.len], r),
            Err(e) => tracing::warn!("TUN read failed: {e}"),
        }
        for _ in 1..BATCH {
            match dev.try_recv(buf) {
                Ok(r) => self.on_packet(now, &buf[..r.len], r),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!("TUN read failed: {e}");
                    break;
                }
            }
        }
    }

    fn on_packet(&mut self, now: Instant, pkt: &[u8], r: Received) {
        self.tun_coalesced += u64::from(r.coalesced);
        if r.vouched {
            self.stack.handle_vouched_packet(now, pkt);
        } else {
            self.stack.handle_packet(now, pkt);
        }
    }

    fn on_timer(&mut self, now: Instant) {
        if let Some(conn) = &mut self.conn
            && conn.poll_timeout().is_some_and(|t| t <= now)
        {
            conn.handle_timeout(now);
        }
        if self.stack.poll_timeout().is_some_and(|t| t <= now) {
            self.stack.handle_timeout(now);
        }
        for leg in Leg::BOTH {
            let slot = self.slot(leg);
            let expired = matches!(&slot.phase,
                Phase::Handshaking { deadline, .. } | Phase::Attaching { deadline, .. } if *deadline <= now);
            if expired {
                let kind = match slot.phase {
                    Phase::Handshaking { .. } => Failure::Auth,
                    _ => Failure::Network,
                };
                slot.fail(now, kind, "no answer from the exit in time".into());
            }
        }
        let last_auth = self.conn.as_ref().and_then(Connection::last_authenticated);
        if let Some(confirmed) = self.unknown.handle_timeout(now, last_auth) {
            self.new_session(
                now,
                &format!("the exit does not know the session: {confirmed}"),
            );
        }
        if self.next_stats.is_some_and(|t| t <= now) {
            self.log_stats(now);
        }
        if self.next_address_check <= now {
            self.check_addresses(now);
        }
    }

    /// A leg whose source address was removed from this host (the laptop changed networks,
    /// DHCP gave a new lease) can never carry another byte: reconnect it now from the new
    /// address instead of waiting for the stall monitor or the leg timeout.
    fn check_addresses(&mut self, now: Instant) {
        self.next_address_check = now + ADDRESS_CHECK;
        for leg in Leg::BOTH {
            let slot = self.slot(leg);
            if slot.transport().is_none() {
                continue;
            }
            let Some(local) = slot.peer.as_ref().and_then(|p| p.local) else {
                continue;
            };
            if address_is_local(local.ip()) {
                continue;
            }
            let why = format!(
                "the {leg} leg's source address {} is no longer on this host",
                local.ip()
            );
            tracing::warn!(leg = %leg, "{why}; reconnecting from the current address");
            if let Some(conn) = &mut self.conn {
                conn.leg_lost(now, leg);
            }
            let slot = self.slot(leg);
            slot.last_reconnect = Some(why);
            slot.restart(now);
        }
    }

    fn on_leg_input(&mut self, now: Instant, input: LegInput) {
        match input {
            LegInput::Connected {
                leg,
                generation,
                ws,
                info,
            } => {
                let slot = self.slot(leg);
                if slot.generation != generation {
                    return;
                }
                tracing::info!(
                    leg = %leg,
                    url = %slot.url,
                    peer = %info.peer,
                    local = ?info.local,
                    tls = if info.tls { "TLS verified" } else { "plain (no TLS)" },
                    "leg connected"
                );
                slot.peer = Some(info);
                slot.phase = Phase::Parked(ws);
            }
            LegInput::ConnectFailed {
                leg,
                generation,
                error,
            } => {
                let slot = self.slot(leg);
                if slot.generation == generation {
                    slot.fail(now, Failure::Network, error.to_string());
                }
            }
            LegInput::Message {
                leg,
                generation,
                data,
            } => {
                if self.slot(leg).generation == generation {
                    self.on_message(now, leg, data);
                }
            }
            LegInput::Ended {
                leg,
                generation,
                why,
            } => {
                if self.slot(leg).generation == generation {
                    self.on_ended(now, leg, why);
                }
            }
        }
    }

    fn on_message(&mut self, now: Instant, leg: Leg, data: BytesMut) {
        let phase = std::mem::replace(&mut self.slot(leg).phase, Phase::Connecting);
        match phase {
            Phase::Handshaking { hs, io, .. } => self.on_handshake_answer(now, hs, io, &data),
            Phase::Attaching { io, .. } => self.on_attach_answer(now, leg, io, &data),
            Phase::Open { io } => {
                self.slot(leg).phase = Phase::Open { io };
                self.on_record(now, leg, data);
            }
            other => self.slot(leg).phase = other,
        }
    }

    fn on_handshake_answer(
        &mut self,
        now: Instant,
        hs: Box<ClientHandshake>,
        io: Transport,
        msg: &[u8],
    ) {
        match hs.finish(now, msg) {
            Ok(conn) => {
                self.sessions += 1;
                tracing::info!(session = %conn.session_id(), cipher = ?conn.cipher(), "session established (up leg attached)");
                self.conn = Some(conn);
                let slot = self.slot(Leg::Up);
                slot.backoff.on_success();
                slot.last_error = None;
                slot.phase = Phase::Open { io };
            }
            Err(e) => {
                let why = format!("handshake refused: {e}");
                self.slot(Leg::Up).fail(now, Failure::Auth, why);
            }
        }
    }

    fn on_attach_answer(&mut self, now: Instant, leg: Leg, io: Transport, msg: &[u8]) {
        let Some(conn) = &mut self.conn else {
            return self.slot(leg).restart(now);
        };
        let overtaken = conn.stats().overtaken_attaches;
        match conn.handle_attach_ok(now, leg, msg) {
            Ok(()) => {
                let stats = conn.stats();
                let attaches = stats.legs[leg.index()].attaches;
                if stats.overtaken_attaches > overtaken {
                    // PROTOCOL.md §3.6: an older acknowledgement, harmless.
                    tracing::info!(leg = %leg, "the exit's attach answer was overtaken by acknowledgements on the other leg (late, or held back by a relay); accepted");
                }
                let slot = self.slot(leg);
                tracing::info!(leg = %leg, attaches, "leg attached");
                slot.backoff.on_success();
                slot.last_error = None;
                slot.phase = Phase::Open { io };
            }
            Err(e) if e.scope() == Scope::Session => self.new_session(now, &format!("{e}")),
            Err(e) => self
                .slot(leg)
                .fail(now, Failure::Network, format!("attach refused: {e}")),
        }
    }

    fn on_record(&mut self, now: Instant, leg: Leg, data: BytesMut) {
        let Some(conn) = &mut self.conn else {
            return;
        };
        let result = conn.handle_record(now, leg, data);
        if result.is_ok() && leg == Leg::Down {
            self.stall.on_down_record(now);
        }
        let Err(e) = result else {
            return;
        };
        match e.scope() {
            Scope::Leg => {
                // The core has detached the leg; close it and re-attach.
                self.slot(leg)
                    .fail(now, Failure::Network, format!("leg broken: {e}"));
            }
            Scope::Session => tracing::warn!("session error: {e}"), // `Closed` follows
            Scope::Message | Scope::Stream => tracing::debug!(leg = %leg, "record dropped: {e}"),
        }
    }

    fn on_ended(&mut self, now: Instant, leg: Leg, why: Ended) {
        let phase = &self.slot(leg).phase;
        let attaching = matches!(phase, Phase::Attaching { .. });
        let handshaking = matches!(phase, Phase::Handshaking { .. });
        let unknown = matches!(&why, Ended::Remote { code, .. } if *code == CLOSE_UNKNOWN_SESSION);
        if attaching && unknown {
            return self.on_unknown_session(now, leg);
        }
        if let Some(conn) = &mut self.conn {
            conn.leg_lost(now, leg);
        }
        let kind = if handshaking {
            Failure::Auth
        } else {
            Failure::Network
        };
        let why = if handshaking {
            format!(
                "{why} during the handshake (is this client's key on the exit's allow-list, \
                 and is this machine's clock within 2 minutes of the exit's?)"
            )
        } else {
            why.to_string()
        };
        self.slot(leg).fail(now, kind, why);
    }

    /// `leg`'s attach was answered with close 4404. Not authenticated (a relay can send
    /// it): the session is given up only once that is confirmed (PROTOCOL.md §7.4);
    /// until then only the leg is retried.
    fn on_unknown_session(&mut self, now: Instant, leg: Leg) {
        // Would an exit that still holds the session send us something authenticated?
        // Yes, unless the 4404 is on the down leg while the up leg is attached and the exit
        // may not fall back to it: then nothing can arrive either way.
        let up_open = matches!(self.slot(Leg::Up).phase, Phase::Open { .. });
        let fallback = self.conn.as_ref().is_some_and(Connection::fallback_enabled);
        let evidence_expected = leg == Leg::Up || !up_open || fallback;
        let last_auth = self.conn.as_ref().and_then(Connection::last_authenticated);
        let verdict = self
            .unknown
            .on_unknown(now, leg, evidence_expected, last_auth);
        if let Verdict::Lost(confirmed) = verdict {
            return self.new_session(
                now,
                &format!("the exit does not know the session: {confirmed}"),
            );
        }
        let until = match self.unknown.poll_timeout() {
            Some(t) => format!(
                "given up if the other leg answers 4404 too or nothing authenticated arrives \
                 within {:.1?}",
                t.saturating_duration_since(now)
            ),
            None => "given up if the other leg answers 4404 too".to_owned(),
        };
        tracing::warn!(
            leg = %leg,
            "the {leg} leg's attach was answered with close 4404 (unknown session), which is \
             not authenticated: keeping the session and its flows ({until}) and retrying the leg"
        );
        if let Some(conn) = &mut self.conn {
            conn.leg_lost(now, leg);
        }
        let why = "closed with 4404 (unknown session; unconfirmed)".to_owned();
        self.slot(leg).fail(now, Failure::Network, why);
    }

    /// Forget the session: reset every flow, drop both legs, handshake again.
    fn new_session(&mut self, now: Instant, why: &str) {
        tracing::warn!("session ended: {why}; starting a new one (open connections are reset)");
        self.conn = None;
        self.unknown.reset();
        self.bridge.reset_all(&mut self.stack);
        // A session that worked is replaced at once; repeated failures back off.
        let up = self.slot(Leg::Up);
        let delay = up.backoff.on_failure(Failure::Network);
        up.generation += 1;
        up.phase = Phase::Idle {
            retry_at: now + delay,
        };
        self.slot(Leg::Down).restart(now);
    }

    // ---- output -----------------------------------------------------------------------

    async fn drive<D: PacketDevice>(&mut self, now: Instant, dev: &D) {
        for event in self.bridge.run(now, &mut self.stack, self.conn.as_mut()) {
            self.on_session_event(now, event);
        }
        self.advance_legs(now);
        self.flush_transmits(now);
        self.watch_stalls(now);
        // Written in batches, so that a TUN with segmentation offload can coalesce a flow's
        // consecutive segments (see gso.rs).
        let mut batch = std::mem::take(&mut self.tx_batch);
        let mut bytes = 0;
        loop {
            let pkt = self.stack.poll_transmit(now);
            let done = pkt.is_none();
            bytes += pkt.as_ref().map_or(0, Vec::len);
            batch.extend(pkt);
            if batch.len() >= TX_BATCH || bytes >= TX_BATCH_BYTES || (done && !batch.is_empty()) {
                bytes = 0;
                self.tun_coalesced_out += dev.send_all(&batch).await;
                for pkt in batch.drain(..) {
                    self.stack.recycle(pkt);
                }
            }
            if done {
                break;
            }
        }
        self.tx_batch = batch;
    }

    fn on_session_event(&mut self, now: Instant, event: proto::Event) {
        match event {
            proto::Event::LegDead { leg, reason } => {
                self.slot(leg).fail(
                    now,
                    Failure::Network,
                    format!("leg declared dead ({reason:?})"),
                );
            }
            proto::Event::Closed {
                code,
                reason,
                remote,
            } => {
                let by = if remote { "the exit" } else { "us" };
                self.new_session(now, &format!("closed by {by}: {code:?} {reason}"));
            }
            other => tracing::debug!(?other, "unexpected session event"),
        }
    }

    /// Connect legs that are due; give a connected leg its first message when it is its turn.
    fn advance_legs(&mut self, now: Instant) {
        for i in 0..2 {
            let inputs = self.inputs_tx.clone();
            let fwmark = self.fwmark;
            self.legs[i].maybe_connect(now, fwmark, &inputs);
        }
        let busy = self
            .legs
            .iter()
            .any(|s| matches!(s.phase, Phase::Handshaking { .. } | Phase::Attaching { .. }));
        if busy {
            return;
        }
        let order = if self.conn.is_some() {
            [Leg::Up, Leg::Down]
        } else {
            [Leg::Up, Leg::Up]
        };
        for leg in order {
            if matches!(self.slot(leg).phase, Phase::Parked(_)) {
                self.send_first_message(now, leg);
                return;
            }
        }
    }

    fn send_first_message(&mut self, now: Instant, leg: Leg) {
        let Phase::Parked(ws) = std::mem::replace(&mut self.slot(leg).phase, Phase::Connecting)
        else {
            return;
        };
        let generation = self.slot(leg).generation;
        let io = Transport::start(ws.0, leg, generation, self.inputs_tx.clone());
        let deadline = now + ANSWER_TIMEOUT;
        let phase = match &mut self.conn {
            Some(conn) => {
                io.send(conn.attach_request(leg));
                Phase::Attaching { io, deadline }
            }
            None => {
                self.last_timestamp = wall_nanos().max(self.last_timestamp + 1);
                match ClientHandshake::start(&self.client, self.last_timestamp) {
                    Ok((hs, init)) => {
                        io.send(init);
                        Phase::Handshaking {
                            hs: Box::new(hs),
                            io,
                            deadline,
                        }
                    }
                    Err(e) => {
                        // Keys or settings are unusable: no retry can help, but keep
                        // trying slowly so that `status` shows why.
                        return self.slot(leg).fail(
                            now,
                            Failure::Auth,
                            format!("cannot start the handshake: {e}"),
                        );
                    }
                }
            }
        };
        self.slot(leg).phase = phase;
    }

    fn flush_transmits(&mut self, now: Instant) {
        let Some(conn) = &mut self.conn else {
            return;
        };
        let mut broken = Vec::new();
        while let Some(t) = conn.poll_transmit(now) {
            let i = usize::from(t.leg == Leg::Down);
            let sent = matches!(self.legs[i].phase, Phase::Open { .. })
                && self.legs[i]
                    .transport()
                    .is_some_and(|io| io.send(t.payload));
            if !sent && !broken.contains(&t.leg) {
                // Proto thinks the leg is attached but its transport is gone: the record
                // stays unacknowledged and is sent again after the re-attach.
                conn.leg_lost(now, t.leg);
                broken.push(t.leg);
            }
        }
        for leg in broken {
            if matches!(self.slot(leg).phase, Phase::Open { .. }) {
                self.slot(leg)
                    .fail(now, Failure::Network, "writer stopped".into());
            }
        }
    }

    /// Feed the stall monitor this turn's outstanding work; reconnect the leg it names.
    fn watch_stalls(&mut self, now: Instant) {
        let open = self
            .legs
            .iter()
            .all(|s| matches!(s.phase, Phase::Open { .. }));
        let work = match &self.conn {
            Some(conn) => {
                let stats = conn.stats();
                Work {
                    armed: open,
                    unacked: stats.unacked_bytes,
                    streams: stats.streams,
                    oldest_unacked: conn.oldest_unacked_sent(),
                }
            }
            None => Work::default(),
        };
        self.stall.observe(now, work);
        let Some(stall) = self.stall.check(now) else {
            return;
        };
        tracing::warn!(leg = %stall.leg, "{stall}; reconnecting");
        if let Some(conn) = &mut self.conn {
            // Records in flight on the stuck transport are sent again after the re-attach.
            conn.leg_lost(now, stall.leg);
        }
        let slot = self.slot(stall.leg);
        slot.stalls += 1;
        slot.fail(now, Failure::Network, stall.to_string());
    }

    fn next_wakeup(&mut self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let conn = self.conn.as_ref().and_then(Connection::poll_timeout);
        let legs = self.legs.iter().filter_map(LegSlot::deadline);
        let stall = self.stall.poll_timeout();
        let address = Some(self.next_address_check);
        [
            conn,
            self.stack.poll_timeout(),
            self.next_stats,
            stall,
            address,
            self.unknown.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .chain(legs)
        .fold(far, Instant::min)
    }

    /// App bytes per second (up, down) since the last stats line.
    fn rates(&self, now: Instant) -> (u64, u64) {
        let s = self.bridge.stats();
        let (then, up0, down0) = self.last_stats;
        let secs = now.saturating_duration_since(then).as_secs_f64().max(0.001);
        let rate = |b: u64| (b as f64 / secs) as u64;
        (rate(s.bytes_up - up0), rate(s.bytes_down - down0))
    }

    fn log_stats(&mut self, now: Instant) {
        let s = self.bridge.stats();
        let (up_bytes_per_s, down_bytes_per_s) = self.rates(now);
        let counts = self.bridge.counts();
        let rtt = self.conn.as_ref().and_then(|c| c.stats().rtt);
        let paused = self
            .conn
            .as_ref()
            .map_or(0, |c| c.paused_streams(now).len());
        tracing::info!(
            up_bytes_per_s,
            down_bytes_per_s,
            paused_flows = paused,
            tcp_flows = counts.tcp,
            udp_flows = counts.udp,
            rtt = ?rtt,
            up_leg = self.legs[0].phase.name(),
            down_leg = self.legs[1].phase.name(),
            "stats"
        );
        self.last_stats = (now, s.bytes_up, s.bytes_down);
        self.next_stats = Some(now + self.stats_interval);
        let dropped = status::DroppedStatus::of(self.stack.stats());
        if let Some(d) = dropped.since(&self.last_dropped) {
            tracing::info!(
                broadcast_multicast = d.non_unicast,
                fragments = d.fragment,
                oversized = d.oversized,
                unsupported = d.unsupported,
                malformed = d.malformed,
                "packets from the TUN not tunnelled since the last stats line (dropped, not \
                 leaked; totals in `vpn-client status`)"
            );
        }
        self.last_dropped = dropped;
    }

    /// Tell the exit we are leaving, give the writers a moment to send it.
    async fn close(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        conn.close(proto::CloseCode::Normal, "client shutting down");
        let now = Instant::now();
        for t in conn.drain_closing(now) {
            let i = usize::from(t.leg == Leg::Down);
            if let Some(io) = self.legs[i].transport() {
                io.send(t.payload);
            }
        }
        // Dropping the transports closes the writers after what is queued.
        for slot in &mut self.legs {
            slot.phase = Phase::Idle { retry_at: now };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        tracing::info!(session = %conn.session_id(), "session closed");
    }
}
