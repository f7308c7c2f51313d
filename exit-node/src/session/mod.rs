//! The session layer: admits upgraded legs (handshake or attach), keeps the session store,
//! and runs one driver task per session around `proto::Connection`.
//!
//! ```text
//! listener ─LegSocket─► admit ─ HandshakeInit (up leg) ─► Acceptor ─► spawn driver
//!                             └ Attach ─► store lookup ─► driver (verifies the proof)
//! ```
//!
//! Nothing is answered to a first message that fails the cheap checks: the connection is
//! dropped and the reason logged and counted. An attach for an unknown session is closed
//! with WebSocket close code 4404: unauthenticated, so a client starts a new session only
//! once the loss is confirmed (PROTOCOL.md §7.4).

mod driver;
mod echo;
mod streams;
mod threads;

pub use threads::SessionThreads;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::admin::{Metrics, ReasonLabel, SessionAdmin};
use crate::descriptors::Descriptors;
use crate::dial::Dialer;
use crate::listener::ws::{Incoming, Outgoing, ReadError};
use crate::listener::{Leg, LegSocket, LegStream};

pub(crate) use driver::Input;

/// WebSocket close code for "this session does not exist (any more)".
pub const CLOSE_UNKNOWN_SESSION: u16 = 4404;

/// Settings of the session layer (from the config's `[session]` and `[limits]`).
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Protocol settings for every session.
    pub proto: proto::Settings,
    /// Most sessions at once.
    pub max_sessions: usize,
    /// Most sessions of one client key at once; a newer one ends the oldest.
    pub max_sessions_per_client: usize,
    /// Client DNS queries waiting for the upstream, all sessions together.
    pub max_dns_queries: usize,
    /// Deadline for the first message of a leg.
    pub handshake_timeout: Duration,
    /// Largest WebSocket message of a leg once its first message was read (before that,
    /// `proto::message::MAX_FIRST_MESSAGE`).
    pub max_message_size: usize,
    /// Handshakes per second per source address.
    pub handshakes_per_second: u32,
    /// UDP flows idle this long are closed.
    pub udp_idle_timeout: Duration,
}

/// A client's identity for logs and policy.
#[derive(Debug, Clone)]
pub(crate) struct ClientInfo {
    pub name: String,
    pub key: [u8; 32],
}

/// What the store keeps of a running session.
#[derive(Debug)]
struct Entry {
    client: ClientInfo,
    inbox: mpsc::Sender<Input>,
    status: Arc<Mutex<Status>>,
    /// An order to end the session. Not through `inbox`: a full queue must never lose a
    /// kick, a revocation or a shutdown.
    close: watch::Sender<Option<CloseOrder>>,
    /// When it started (the oldest of a client's sessions makes room for a newer one).
    started: Instant,
}

/// Why a session is told to end: the close code and the reason the client is given.
pub(crate) type CloseOrder = (proto::CloseCode, &'static str);

/// A session's latest counters, published by its driver.
#[derive(Debug, Clone, Default)]
pub(crate) struct Status {
    pub stats: proto::Stats,
    /// Streams whose destination stopped reading, and what they hold.
    pub paused: Paused,
}

/// Paused streams of one session (PROTOCOL.md §6.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Paused {
    pub streams: usize,
    /// Bytes held unread.
    pub held: u64,
    /// Credit held: those bytes plus what the client may still send.
    pub credit: u64,
}

impl Paused {
    pub fn of(streams: &[proto::PausedStream]) -> Self {
        Paused {
            streams: streams.len(),
            held: streams.iter().map(|p| p.held).sum(),
            credit: streams.iter().map(|p| p.credit).sum(),
        }
    }

    fn add(self, other: Paused) -> Paused {
        Paused {
            streams: self.streams + other.streams,
            held: self.held + other.held,
            credit: self.credit + other.credit,
        }
    }
}

/// The session store and everything a driver needs that is shared.
pub struct Hub {
    acceptor: Mutex<proto::Acceptor>,
    /// Where accepted handshakes' timestamps are persisted (set at start).
    replay: std::sync::OnceLock<Arc<crate::state::ReplayStore>>,
    clients: RwLock<HashMap<[u8; 32], String>>,
    sessions: Mutex<HashMap<Uuid, Entry>>,
    dialer: RwLock<Arc<Dialer>>,
    limits: SessionLimits,
    rate: Mutex<RateLimiter>,
    /// The node's budget of descriptors for destination sockets.
    descriptors: Descriptors,
    /// Client DNS queries waiting for the upstream, all sessions together.
    pub(crate) dns_slots: Arc<tokio::sync::Semaphore>,
    /// Metrics shared with the admin listener.
    pub metrics: Metrics,
    /// Where sessions run; `None`: on the runtime that admits them.
    threads: Option<Arc<SessionThreads>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

fn allowed(clients: &[crate::config::Client]) -> Vec<proto::AllowedClient> {
    clients
        .iter()
        .map(|c| proto::AllowedClient {
            public_key: c.public_key,
            psk: c.psk,
        })
        .collect()
}

fn names(clients: &[crate::config::Client]) -> HashMap<[u8; 32], String> {
    clients
        .iter()
        .map(|c| (c.public_key, c.name.clone()))
        .collect()
}

impl Hub {
    /// A store for the exit key, clients and dialer given; destination sockets are taken
    /// from `descriptors`; sessions run on `threads` if given.
    pub fn new(
        private_key: [u8; 32],
        clients: &[crate::config::Client],
        dialer: Dialer,
        limits: SessionLimits,
        descriptors: Descriptors,
        metrics: Metrics,
        threads: Option<Arc<SessionThreads>>,
    ) -> Arc<Hub> {
        let acceptor = proto::Acceptor::new(private_key, &allowed(clients), limits.proto.clone());
        Arc::new(Hub {
            acceptor: Mutex::new(acceptor),
            replay: std::sync::OnceLock::new(),
            clients: RwLock::new(names(clients)),
            sessions: Mutex::new(HashMap::new()),
            dialer: RwLock::new(Arc::new(dialer)),
            rate: Mutex::new(RateLimiter::new(limits.handshakes_per_second)),
            descriptors,
            dns_slots: Arc::new(tokio::sync::Semaphore::new(limits.max_dns_queries)),
            limits,
            metrics,
            threads,
        })
    }

    /// Apply a reloaded client list and dialer (SIGHUP): sessions of removed keys end with
    /// `Revoked`. Returns how many sessions were ended.
    pub fn reload(&self, clients: &[crate::config::Client], dialer: Dialer) -> usize {
        let removed = lock(&self.acceptor).set_clients(&allowed(clients));
        *self.clients.write().unwrap_or_else(|e| e.into_inner()) = names(clients);
        *self.dialer.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(dialer);
        let sessions = lock(&self.sessions);
        let mut ended = 0;
        for entry in sessions.values() {
            if removed.contains(&entry.client.key) {
                entry
                    .close
                    .send_replace(Some((proto::CloseCode::Revoked, "client key revoked")));
                ended += 1;
            }
        }
        ended
    }

    /// End every session (graceful shutdown).
    pub fn close_all(&self, code: proto::CloseCode, reason: &'static str) {
        for entry in lock(&self.sessions).values() {
            entry.close.send_replace(Some((code, reason)));
        }
    }

    /// A new session of `key` is about to start: if the key already holds
    /// `max_sessions_per_client` sessions not yet told to end, end the oldest ones, so one
    /// key never takes every slot and a client that restarted is never locked out by its
    /// own stale sessions.
    fn make_room_for(&self, client: &ClientInfo) {
        let sessions = lock(&self.sessions);
        let mut theirs: Vec<(&Uuid, &Entry)> = sessions
            .iter()
            .filter(|(_, e)| e.client.key == client.key && e.close.borrow().is_none())
            .collect();
        let cap = self.limits.max_sessions_per_client.max(1);
        if theirs.len() < cap {
            return;
        }
        theirs.sort_by_key(|(_, e)| e.started);
        for (id, e) in &theirs[..=theirs.len() - cap] {
            let order = (
                proto::CloseCode::Normal,
                "superseded by a newer session of this client key",
            );
            e.close.send_replace(Some(order));
            self.metrics
                .limits_hit
                .get_or_create(&ReasonLabel {
                    reason: "sessions_per_client",
                })
                .inc();
            tracing::info!(session = %id, client = %client.name, cap, "ending the client's oldest session: limits.max_sessions_per_client reached");
        }
    }

    /// Restore persisted replay `marks` and persist every accepted handshake's timestamp
    /// to `store` from now on (PROTOCOL.md §3.3).
    pub fn persist_replay_marks(
        &self,
        store: Arc<crate::state::ReplayStore>,
        marks: &[([u8; 32], u64)],
    ) {
        lock(&self.acceptor).restore_replay_marks(marks);
        let _ = self.replay.set(store);
    }

    /// Write the acceptor's marks before a handshake is answered. A failure is logged and
    /// the handshake still answered: refusing every client over a full disk would be worse
    /// than the replay window it leaves (bounded by `max_past_skew`).
    async fn save_replay_marks(self: &Arc<Self>) {
        let Some(store) = self.replay.get().cloned() else {
            return;
        };
        let hub = self.clone();
        match tokio::task::spawn_blocking(move || store.save(&hub.acceptor)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot persist the handshake replay marks"),
            Err(e) => tracing::error!(error = %e, "persisting the handshake replay marks failed"),
        }
    }

    /// Whether session `id` is still in the store.
    pub fn has_session(&self, id: Uuid) -> bool {
        lock(&self.sessions).contains_key(&id)
    }

    /// Sessions in the store.
    pub fn session_count(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// Open streams and record bytes (received up, sent down) over all sessions.
    pub fn totals(&self) -> (usize, u64, u64) {
        let sessions = lock(&self.sessions);
        sessions.values().fold((0, 0, 0), |(s, up, down), e| {
            let st = &lock(&e.status).stats;
            (
                s + st.streams,
                up + st.legs[0].bytes_rx,
                down + down_bytes(st),
            )
        })
    }

    pub(crate) fn dialer(&self) -> Arc<Dialer> {
        self.dialer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn limits(&self) -> &SessionLimits {
        &self.limits
    }

    /// Destination sockets held over all sessions.
    pub fn dest_sockets(&self) -> usize {
        self.descriptors.used()
    }

    fn reject(
        &self,
        peer: SocketAddr,
        leg: Leg,
        reason: &'static str,
        detail: &dyn std::fmt::Display,
    ) {
        tracing::info!(%peer, leg = leg.as_str(), reason, %detail, "leg refused");
        self.metrics
            .handshakes_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    fn remove(&self, id: Uuid) {
        lock(&self.sessions).remove(&id);
        self.metrics.sessions.set(self.session_count() as i64);
    }
}

/// Record bytes sent to the client: on the down leg, or the up leg in fallback.
fn down_bytes(st: &proto::Stats) -> u64 {
    st.legs[1].bytes_tx + st.legs[0].bytes_tx
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking holder cannot leave these maps inconsistent: every update is one call.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serve legs from the listeners until the channel closes.
pub async fn serve(hub: Arc<Hub>, mut legs: mpsc::Receiver<LegSocket>) {
    while let Some(sock) = legs.recv().await {
        // On the thread that holds the leg's socket, if it was placed on one.
        let home = sock.home;
        let admit = admit(hub.clone(), sock);
        match &hub.threads {
            Some(threads) => threads.spawn_on(home, admit),
            None => drop(tokio::spawn(admit)),
        }
    }
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Read a leg's first message and route it.
async fn admit(hub: Arc<Hub>, mut sock: LegSocket) {
    let deadline = hub.limits.handshake_timeout;
    // Nothing longer than a handshake or an attach is read before the peer authenticated.
    sock.ws
        .reader
        .set_max_message(proto::message::MAX_FIRST_MESSAGE);
    let first = match tokio::time::timeout(deadline, first_binary(&mut sock.ws)).await {
        Ok(Ok(msg)) => msg,
        Ok(Err(NoFirst { reason, detail })) => {
            return hub.reject(sock.peer, sock.leg, reason, &detail);
        }
        Err(_) => return hub.reject(sock.peer, sock.leg, "timeout", &"no first message in time"),
    };
    sock.ws.reader.set_max_message(hub.limits.max_message_size);
    if sock.decoy {
        return decoy(hub, sock, first).await;
    }
    match proto::message::message_type(&first) {
        Ok(proto::message::ty::HANDSHAKE_INIT) if sock.leg == Leg::Up => {
            handshake(hub, sock, first).await
        }
        Ok(proto::message::ty::ATTACH) => attach(hub, sock, first).await,
        _ => hub.reject(
            sock.peer,
            sock.leg,
            "bad_first_message",
            &"not a handshake or attach",
        ),
    }
}

/// A path that names no leg got a first message: answer it as a leg path answers anyone who
/// is not a client — an attach names a session this node does not hold, anything else is
/// dropped — and never let it become a leg.
async fn decoy(hub: Arc<Hub>, mut sock: LegSocket, first: Bytes) {
    match proto::message::Attach::decode(&first) {
        Ok(a) => unknown_session(&hub, &mut sock, "unknown_path", &a.session).await,
        Err(_) => hub.reject(
            sock.peer,
            sock.leg,
            "unknown_path",
            &"a first message on a path that names no leg",
        ),
    }
}

/// Answer an attach for a session this node does not hold: close 4404, then count and log
/// the refusal under `reason`. Leg paths and decoys answer through here alike.
async fn unknown_session(hub: &Hub, sock: &mut LegSocket, reason: &'static str, session: &Uuid) {
    let close = Outgoing::Close(CLOSE_UNKNOWN_SESSION, "unknown session");
    let _ = sock.ws.writer.send(close).await;
    hub.reject(sock.peer, sock.leg, reason, session);
}

/// Why a leg sent no first binary message: a fixed reason (metric label) and the detail
/// for the log line.
struct NoFirst {
    reason: &'static str,
    detail: String,
}

/// The leg's first binary message (pings are answered).
async fn first_binary(ws: &mut LegStream) -> Result<Bytes, NoFirst> {
    let no = |reason, detail: &dyn std::fmt::Display| NoFirst {
        reason,
        detail: detail.to_string(),
    };
    loop {
        match ws.reader.next().await {
            Ok(Incoming::Message(m)) => return Ok(m.freeze()),
            Ok(Incoming::Ping(p)) => {
                if let Err(e) = ws.writer.send(Outgoing::Pong(p)).await {
                    return Err(no("no_message", &e));
                }
            }
            Ok(Incoming::Close(_)) => return Err(no("no_message", &"closed before a message")),
            Err(ReadError::Frame(e @ proto::ws::WsError::TooLong { .. })) => {
                return Err(no("oversized", &e));
            }
            Err(ReadError::Frame(proto::ws::WsError::Text)) => {
                return Err(no("bad_first_message", &"a text message"));
            }
            Err(e @ ReadError::Frame(_)) => return Err(no("bad_frame", &e)),
            Err(e) => return Err(no("no_message", &e)),
        }
    }
}

async fn handshake(hub: Arc<Hub>, mut sock: LegSocket, msg: Bytes) {
    if !lock(&hub.rate).allow(sock.client, Instant::now()) {
        hub.metrics
            .limits_hit
            .get_or_create(&ReasonLabel {
                reason: "handshake_rate",
            })
            .inc();
        return hub.reject(
            sock.peer,
            sock.leg,
            "rate_limited",
            &format_args!("too many handshakes from {}", sock.client),
        );
    }
    if hub.session_count() >= hub.limits.max_sessions {
        hub.metrics
            .limits_hit
            .get_or_create(&ReasonLabel { reason: "sessions" })
            .inc();
        return hub.reject(
            sock.peer,
            sock.leg,
            "session_limit",
            &"max_sessions reached",
        );
    }
    let outcome = lock(&hub.acceptor).accept(Instant::now(), unix_now(), &msg);
    let accepted = match outcome {
        Ok(proto::Accept::Session(a)) => {
            // Before the answer: a restart must not reopen this init to a replay.
            hub.save_replay_marks().await;
            a
        }
        Ok(proto::Accept::Refuse(reply)) => {
            sock.ws.writer.push(Outgoing::Binary(reply));
            let _ = sock
                .ws
                .writer
                .send(Outgoing::Close(proto::ws::CLOSE_NORMAL, ""))
                .await;
            return hub.reject(
                sock.peer,
                sock.leg,
                "version",
                &"unsupported protocol version",
            );
        }
        Err(e) => return hub.reject(sock.peer, sock.leg, handshake_reason(&e), &e),
    };
    if sock
        .ws
        .writer
        .send(Outgoing::Binary(accepted.response.clone()))
        .await
        .is_err()
    {
        return hub.reject(
            sock.peer,
            sock.leg,
            "send_failed",
            &"leg closed during the handshake",
        );
    }
    hub.metrics.handshakes_accepted.inc();
    let accepted = *accepted;
    let name = hub
        .clients
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&accepted.client_key)
        .cloned()
        .unwrap_or_default();
    let client = ClientInfo {
        name,
        key: accepted.client_key,
    };
    start_session(hub, client, accepted.connection, sock);
}

fn handshake_reason(e: &proto::Error) -> &'static str {
    match e {
        proto::Error::BadMac => "bad_mac",
        proto::Error::ReplayedHandshake => "replay",
        proto::Error::UnknownClient => "unknown_client",
        proto::Error::StaleTimestamp => "stale_timestamp",
        proto::Error::FutureTimestamp { .. } => "future_timestamp",
        proto::Error::PastTimestamp { .. } => "past_timestamp",
        proto::Error::HandshakeCrypto => "crypto",
        _ => "malformed",
    }
}

fn start_session(hub: Arc<Hub>, client: ClientInfo, conn: proto::Connection, up: LegSocket) {
    let id = conn.session_id();
    let (tx, rx) = mpsc::channel(1024);
    let (close, close_rx) = watch::channel(None);
    let status = Arc::new(Mutex::new(Status::default()));
    hub.make_room_for(&client);
    let entry = Entry {
        client: client.clone(),
        inbox: tx.clone(),
        status: status.clone(),
        close,
        started: Instant::now(),
    };
    lock(&hub.sessions).insert(id, entry);
    hub.metrics.sessions.set(hub.session_count() as i64);
    tracing::info!(session = %id, client = %client.name, address = %up.client, peer = %up.peer, tls = up.tls, "session started");
    // The thread holding the up leg's socket, if it was placed on one.
    let home = up.home;
    let session = {
        let hub = hub.clone();
        async move {
            let fds = hub.descriptors.session();
            let driver = driver::Driver::new(hub.clone(), client, conn, tx, status, fds);
            driver.run(rx, close_rx, up).await;
            hub.remove(id);
            tracing::info!(session = %id, "session ended");
        }
    };
    match &hub.threads {
        Some(threads) => threads.spawn_session(home, session),
        None => drop(tokio::spawn(session)),
    }
}

async fn attach(hub: Arc<Hub>, mut sock: LegSocket, msg: Bytes) {
    let attach = match proto::message::Attach::decode(&msg) {
        Ok(a) => a,
        Err(e) => return hub.reject(sock.peer, sock.leg, "malformed", &e),
    };
    let inbox = lock(&hub.sessions)
        .get(&attach.session)
        .map(|e| e.inbox.clone());
    let Some(inbox) = inbox else {
        return unknown_session(&hub, &mut sock, "unknown_session", &attach.session).await;
    };
    let peer = sock.peer;
    let leg = sock.leg;
    if inbox
        .send(Input::Attach(Box::new((attach, sock))))
        .await
        .is_err()
    {
        hub.reject(peer, leg, "session_ending", &"session is shutting down");
    }
}

/// A token bucket per source address: `rate` per second, bursts of `rate`.
#[derive(Debug)]
struct RateLimiter {
    rate: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimiter {
    fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate.max(1)),
            buckets: HashMap::new(),
        }
    }

    fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.buckets.len() > 65_536 {
            let rate = self.rate;
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < rate
            });
        }
        let (tokens, at) = self.buckets.entry(ip).or_insert((self.rate, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.rate);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl SessionAdmin for Hub {
    fn list_json(&self) -> String {
        let sessions = lock(&self.sessions);
        let items: Vec<serde_json::Value> = sessions
            .iter()
            .map(|(id, e)| {
                let status = lock(&e.status);
                let (st, paused) = (&status.stats, status.paused);
                serde_json::json!({
                    "id": id.to_string(),
                    "client": e.client.name,
                    "up_attached": st.legs[0].attached,
                    "down_attached": st.legs[1].attached,
                    "streams": st.streams,
                    "bytes_up": st.legs[0].bytes_rx,
                    "bytes_down": down_bytes(st),
                    "paused_streams": paused.streams,
                    "paused_bytes": paused.held,
                    "paused_credit": paused.credit,
                })
            })
            .collect();
        serde_json::Value::Array(items).to_string()
    }

    fn refresh(&self, metrics: &Metrics) {
        let sessions = lock(&self.sessions);
        let (streams, paused) = sessions.values().fold((0, Paused::default()), |(n, p), e| {
            let status = lock(&e.status);
            (n + status.stats.streams, p.add(status.paused))
        });
        metrics.streams.set(streams as i64);
        metrics.paused_streams.set(paused.streams as i64);
        metrics.paused_stream_bytes.set(paused.held as i64);
        metrics.paused_stream_credit.set(paused.credit as i64);
    }

    fn kick(&self, id: &str) -> bool {
        let Ok(id) = Uuid::parse_str(id) else {
            return false;
        };
        match lock(&self.sessions).get(&id) {
            Some(e) => {
                let order = (proto::CloseCode::Normal, "closed by the operator");
                e.close.send_replace(Some(order));
                true
            }
            None => false,
        }
    }

    fn is_running(&self, id: &str) -> bool {
        Uuid::parse_str(id).is_ok_and(|id| self.has_session(id))
    }
}

#[cfg(test)]
mod tests;
