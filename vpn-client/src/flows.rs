//! The flow bridge: netstack flows ⇄ proto streams. Synchronous and clock-free like the two
//! cores it joins (callers pass `now`), so it is tested in memory with a real
//! [`netstack::Stack`] and a real [`proto::Connection`].
//!
//! ```text
//! netstack event            bridge                          proto
//! TcpIncoming ───────────── open_stream(Tcp, dst) ────────► Open
//!   tcp_accept ◄─────────── StreamAccepted ◄──────────────── Accept
//!   tcp_refuse(RST/ICMP) ◄── StreamReset (before accept) ◄── Reset
//! TcpReadable: tcp_recv ──► stream_write (credit-limited; short → wait StreamWritable)
//! StreamReadable: stream_read ──► tcp_send (buffer-limited; short → wait TcpWritable)
//! TcpPeerFin ─► stream_finish        Read::Fin ─► tcp_shutdown_write
//! UdpOpened/UdpDatagram ─► open_stream(Udp)/send_datagram;  Datagram ─► udp_send_to_app
//! DnsQuery ─► send_dns_query;  DnsResponse ─► dns_reply
//! IcmpEcho ─► send_echo_request;  EchoReply ─► icmp_echo_reply
//! ```
//!
//! Back-pressure: bytes are read from a side only when the other side has room, so a slow
//! destination closes the app's TCP window, and a slow app stops granting the exit credit.
//! At most one short chunk per direction per flow is held here.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use netstack::{CloseReason, DnsQueryId, EchoRequest, Refusal, Stack, TcpFlowId, UdpFlowId};
use proto::{Connection, Destination, Read, ResetCode, StreamId, StreamKind};

/// Largest chunk moved between the two sides in one call.
const CHUNK: usize = 64 * 1024;
/// Smallest read from proto when the app's send buffer is full: the short `tcp_send` that
/// follows is what arms `TcpWritable`.
const MIN_DOWN_READ: usize = 4 * 1024;

/// What the bridge needs to know.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// Whether the exit can reach IPv6 destinations; if not, they are refused inside the
    /// tunnel (ICMPv6 unreachable for TCP, dropped for UDP and echo), never sent anywhere.
    pub exit_has_ipv6: bool,
    /// How long a DNS or echo id waits for its answer before it is forgotten.
    pub query_timeout: Duration,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            exit_has_ipv6: true,
            query_timeout: Duration::from_secs(15),
        }
    }
}

/// Counters for `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BridgeStats {
    /// TCP flows opened as streams.
    pub tcp_opened: u64,
    /// TCP flows refused (by the exit, by policy here, or because no session).
    pub tcp_refused: u64,
    /// UDP flows opened as streams.
    pub udp_opened: u64,
    /// IPv6 flows, datagrams or pings refused because the exit has no IPv6.
    pub ipv6_refused: u64,
    /// DNS queries sent to the exit.
    pub dns_queries: u64,
    /// DNS answers delivered to apps.
    pub dns_answers: u64,
    /// DNS queries, datagrams or pings dropped (session over budget, or no session).
    pub dropped: u64,
    /// Echo requests sent.
    pub echo_requests: u64,
    /// Echo replies delivered.
    pub echo_replies: u64,
    /// Bytes app → exit.
    pub bytes_up: u64,
    /// Bytes exit → app.
    pub bytes_down: u64,
}

/// One TCP flow and its stream.
#[derive(Debug)]
struct TcpFlow {
    stream: StreamId,
    /// The app's address and the destination it asked for (for `status`).
    app: SocketAddr,
    dst: SocketAddr,
    /// The exit accepted and the app's handshake was completed.
    accepted: bool,
    /// The app sent FIN (every byte before it was read from netstack).
    app_fin: bool,
    /// `stream_finish` was called.
    fin_sent: bool,
    /// The netstack flow is gone (graceful close: every app byte was read) but FIN still
    /// goes out.
    net_closed: bool,
    /// Exit bytes read from the stream that the app's send buffer had no room for yet.
    down_pending: Bytes,
    /// The stream's end was read; the app gets FIN once `down_pending` is delivered.
    down_fin: bool,
    /// `tcp_shutdown_write` was called.
    shut: bool,
}

impl TcpFlow {
    fn new(stream: StreamId, app: SocketAddr, dst: SocketAddr) -> Self {
        TcpFlow {
            stream,
            app,
            dst,
            accepted: false,
            app_fin: false,
            fin_sent: false,
            net_closed: false,
            down_pending: Bytes::new(),
            down_fin: false,
            shut: false,
        }
    }
}

/// Ids waiting for an answer, forgotten after a timeout (the app has given up by then).
#[derive(Debug)]
struct Pending<T> {
    map: HashMap<u32, T>,
    order: VecDeque<(u32, Instant)>,
    next: u32,
}

impl<T> Pending<T> {
    fn new() -> Self {
        Pending {
            map: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
        }
    }

    fn insert(&mut self, now: Instant, timeout: Duration, value: T) -> u32 {
        while let Some(&(id, at)) = self.order.front() {
            if now.saturating_duration_since(at) < timeout {
                break;
            }
            self.order.pop_front();
            self.map.remove(&id);
        }
        self.next = self.next.wrapping_add(1);
        self.map.insert(self.next, value);
        self.order.push_back((self.next, now));
        self.next
    }

    fn take(&mut self, id: u32) -> Option<T> {
        self.map.remove(&id)
    }

    fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }
}

/// The flow tables between one netstack and one session.
#[derive(Debug)]
pub struct Bridge {
    config: BridgeConfig,
    tcp: HashMap<TcpFlowId, TcpFlow>,
    tcp_by_stream: HashMap<StreamId, TcpFlowId>,
    udp: HashMap<UdpFlowId, StreamId>,
    udp_by_stream: HashMap<StreamId, UdpFlowId>,
    dns: Pending<DnsQueryId>,
    echo: Pending<EchoRequest>,
    stats: BridgeStats,
}

/// Flow counts for `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FlowCounts {
    /// TCP flows mapped to streams.
    pub tcp: usize,
    /// UDP flows mapped to streams.
    pub udp: usize,
    /// DNS queries awaiting answers.
    pub dns_pending: usize,
}

/// A TCP flow whose app stopped reading, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PausedFlow {
    /// The app's address (its local port names the app: `ss -tnp`).
    pub app: String,
    /// Where it is connected.
    pub dst: String,
    /// Bytes that arrived for it and wait unread.
    pub held_bytes: u64,
    /// Credit its stream holds: what waits plus what the exit may still send it.
    pub credit_bytes: u64,
    /// Seconds since it last read.
    pub secs: u64,
}

fn refusal_for(code: ResetCode) -> Refusal {
    match code {
        ResetCode::PolicyRefused => Refusal::Prohibited,
        ResetCode::Unreachable | ResetCode::DnsFailure => Refusal::HostUnreachable,
        ResetCode::ConnectTimeout => Refusal::HostUnreachable,
        _ => Refusal::Reset,
    }
}

impl Bridge {
    /// An empty bridge.
    pub fn new(config: BridgeConfig) -> Self {
        Bridge {
            config,
            tcp: HashMap::new(),
            tcp_by_stream: HashMap::new(),
            udp: HashMap::new(),
            udp_by_stream: HashMap::new(),
            dns: Pending::new(),
            echo: Pending::new(),
            stats: BridgeStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> BridgeStats {
        self.stats
    }

    /// Current flow counts.
    pub fn counts(&self) -> FlowCounts {
        FlowCounts {
            tcp: self.tcp.len(),
            udp: self.udp.len(),
            dns_pending: self.dns.map.len(),
        }
    }

    /// TCP flows whose app stopped reading (PROTOCOL.md §6.2), most held first: what it
    /// holds in the tunnel and the credit its stream keeps.
    pub fn paused(&self, conn: &Connection, now: Instant) -> Vec<PausedFlow> {
        conn.paused_streams(now)
            .into_iter()
            .filter_map(|p| {
                let flow = self.tcp.get(self.tcp_by_stream.get(&p.id)?)?;
                Some(PausedFlow {
                    app: flow.app.to_string(),
                    dst: flow.dst.to_string(),
                    held_bytes: p.held,
                    credit_bytes: p.credit,
                    secs: now.saturating_duration_since(p.since).as_secs(),
                })
            })
            .collect()
    }

    fn refuses(&mut self, dst: SocketAddr) -> bool {
        let refuse = dst.is_ipv6() && !self.config.exit_has_ipv6;
        self.stats.ipv6_refused += u64::from(refuse);
        refuse
    }

    // ---- netstack → proto -------------------------------------------------------------

    /// React to one netstack event. `conn` is `None` while there is no session: new flows
    /// are then refused (the app retries) and datagrams dropped.
    pub fn on_net_event(
        &mut self,
        now: Instant,
        stack: &mut Stack,
        conn: Option<&mut Connection>,
        event: netstack::Event,
    ) {
        use netstack::Event as N;
        match (event, conn) {
            (N::TcpIncoming { id, src, dst }, conn) => self.tcp_incoming(stack, conn, id, src, dst),
            (N::TcpReadable { id } | N::TcpEstablished { id }, Some(conn)) => {
                self.pump_up(stack, conn, id);
                self.pump_down(now, stack, conn, id);
            }
            (N::TcpWritable { id }, Some(conn)) => self.pump_down(now, stack, conn, id),
            (N::TcpPeerFin { id }, Some(conn)) => {
                if let Some(f) = self.tcp.get_mut(&id) {
                    f.app_fin = true;
                }
                self.pump_up(stack, conn, id);
            }
            (N::TcpClosed { id, reason }, conn) => self.tcp_closed(stack, conn, id, reason),
            (N::UdpOpened { id, dst, .. }, conn) => self.udp_opened(stack, conn, id, dst),
            (N::UdpDatagram { id, payload }, Some(conn)) => {
                if let Some(&sid) = self.udp.get(&id) {
                    self.count_drop(conn.send_datagram(sid, payload));
                }
            }
            (N::UdpClosed { id }, conn) => {
                if let Some(sid) = self.udp.remove(&id) {
                    self.udp_by_stream.remove(&sid);
                    if let Some(conn) = conn {
                        let _ = conn.reset_stream(sid, ResetCode::Cancelled);
                    }
                }
            }
            (N::DnsQuery { id, message, .. }, Some(conn)) => {
                let qid = self.dns.insert(now, self.config.query_timeout, id);
                self.stats.dns_queries += 1;
                self.count_drop(conn.send_dns_query(qid, message));
            }
            (N::IcmpEcho(req), Some(conn)) => self.echo_request(now, conn, req),
            (N::UdpDatagram { .. } | N::DnsQuery { .. } | N::IcmpEcho(_), None) => {
                self.stats.dropped += 1
            }
            // TCP data waits in netstack (the app's window closes) until a session exists;
            // `reset_all` ends those flows when a new session replaces the old one.
            _ => {}
        }
    }

    fn count_drop(&mut self, sent: Result<bool, proto::Error>) {
        if !matches!(sent, Ok(true)) {
            self.stats.dropped += 1;
        }
    }

    fn tcp_incoming(
        &mut self,
        stack: &mut Stack,
        conn: Option<&mut Connection>,
        id: TcpFlowId,
        src: SocketAddr,
        dst: SocketAddr,
    ) {
        let how = if self.refuses(dst) {
            Refusal::NetworkUnreachable
        } else {
            Refusal::Reset
        };
        let opened = match conn {
            Some(conn) if how == Refusal::Reset => {
                conn.open_stream(StreamKind::Tcp, Destination::Addr(dst))
            }
            _ => Err(proto::Error::Closed),
        };
        match opened {
            Ok(sid) => {
                self.stats.tcp_opened += 1;
                self.tcp.insert(id, TcpFlow::new(sid, src, dst));
                self.tcp_by_stream.insert(sid, id);
            }
            Err(_) => {
                self.stats.tcp_refused += 1;
                let _ = stack.tcp_refuse(id, how);
            }
        }
    }

    fn tcp_closed(
        &mut self,
        stack: &mut Stack,
        conn: Option<&mut Connection>,
        id: TcpFlowId,
        reason: CloseReason,
    ) {
        let Some(flow) = self.tcp.get_mut(&id) else {
            return;
        };
        let sid = flow.stream;
        let Some(conn) = conn else {
            self.forget_tcp(id);
            return;
        };
        if reason == CloseReason::Graceful && flow.fin_sent {
            self.forget_tcp(id);
            return;
        }
        if reason == CloseReason::Graceful {
            // Every app byte was read from netstack; the stream's FIN still goes out.
            flow.net_closed = true;
            flow.app_fin = true;
            self.pump_up(stack, conn, id);
            return;
        }
        self.forget_tcp(id);
        let _ = conn.reset_stream(sid, ResetCode::Cancelled);
    }

    fn forget_tcp(&mut self, id: TcpFlowId) {
        if let Some(f) = self.tcp.remove(&id) {
            self.tcp_by_stream.remove(&f.stream);
        }
    }

    fn udp_opened(
        &mut self,
        stack: &mut Stack,
        conn: Option<&mut Connection>,
        id: UdpFlowId,
        dst: SocketAddr,
    ) {
        let opened = match conn {
            Some(conn) if !self.refuses(dst) => {
                conn.open_stream(StreamKind::Udp, Destination::Addr(dst))
            }
            _ => Err(proto::Error::Closed),
        };
        match opened {
            Ok(sid) => {
                self.stats.udp_opened += 1;
                self.udp.insert(id, sid);
                self.udp_by_stream.insert(sid, id);
            }
            Err(_) => {
                self.stats.dropped += 1;
                let _ = stack.udp_close(id);
            }
        }
    }

    fn echo_request(&mut self, now: Instant, conn: &mut Connection, req: EchoRequest) {
        if req.dst.is_ipv6() && !self.config.exit_has_ipv6 {
            self.stats.ipv6_refused += 1;
            return;
        }
        let (dst, data) = (req.dst, req.payload.clone());
        let id = self.echo.insert(now, self.config.query_timeout, req);
        self.stats.echo_requests += 1;
        self.count_drop(conn.send_echo_request(id, dst, data));
    }

    /// App → exit for one flow: read from netstack only what the stream has credit for.
    fn pump_up(&mut self, stack: &mut Stack, conn: &mut Connection, id: TcpFlowId) {
        let Some(flow) = self.tcp.get_mut(&id) else {
            return;
        };
        if !flow.accepted || flow.fin_sent {
            return;
        }
        let sid = flow.stream;
        // A flow netstack closed gracefully has nothing left to read.
        if !flow.net_closed {
            loop {
                // Straight from netstack's buffer into the record; what the stream's credit
                // does not take stays there (stream_write marks the stream blocked, and
                // StreamWritable wakes us).
                let mut failed = false;
                let taken = stack.tcp_recv_with(id, CHUNK, |data| {
                    if data.is_empty() {
                        return 0;
                    }
                    conn.stream_write(sid, data).unwrap_or_else(|_| {
                        failed = true;
                        0
                    })
                });
                if failed {
                    return self.abort_tcp(stack, conn, id);
                }
                match taken {
                    Ok(0) | Err(_) => break,
                    Ok(n) => self.stats.bytes_up += n as u64,
                }
            }
        }
        // netstack reports the app's FIN only once every byte before it was read.
        if flow.app_fin {
            flow.fin_sent = true;
            let _ = conn.stream_finish(sid);
            if flow.net_closed {
                self.forget_tcp(id);
            }
        }
    }

    /// Exit → app for one flow: read from the stream only what the app's buffer takes.
    fn pump_down(&mut self, now: Instant, stack: &mut Stack, conn: &mut Connection, id: TcpFlowId) {
        let Some(flow) = self.tcp.get_mut(&id) else {
            return;
        };
        if !flow.accepted || flow.shut || flow.net_closed {
            return;
        }
        let sid = flow.stream;
        loop {
            if !flow.down_pending.is_empty() {
                match stack.tcp_send(id, &flow.down_pending) {
                    Ok(n) => {
                        self.stats.bytes_down += n as u64;
                        flow.down_pending.advance(n);
                    }
                    Err(_) => return self.abort_tcp(stack, conn, id),
                }
                if !flow.down_pending.is_empty() {
                    return; // TcpWritable wakes us.
                }
            }
            if flow.down_fin {
                flow.shut = true;
                let _ = stack.tcp_shutdown_write(id);
                return;
            }
            let room = stack.tcp_send_capacity(id).unwrap_or(0);
            match conn.stream_read(now, sid, room.clamp(MIN_DOWN_READ, CHUNK)) {
                Ok(Read::Data(d)) => flow.down_pending = d,
                Ok(Read::Fin) => flow.down_fin = true,
                Ok(Read::WouldBlock) => return,
                Err(_) => return self.abort_tcp(stack, conn, id),
            }
        }
    }

    fn abort_tcp(&mut self, stack: &mut Stack, conn: &mut Connection, id: TcpFlowId) {
        if let Some(f) = self.tcp.remove(&id) {
            self.tcp_by_stream.remove(&f.stream);
            let _ = conn.reset_stream(f.stream, ResetCode::Cancelled);
            if !f.net_closed {
                let _ = stack.tcp_abort(id);
            }
        }
    }

    // ---- proto → netstack -------------------------------------------------------------

    /// React to one proto event. Session-level events (`LegDead`, `Closed`) and events of
    /// the exit role are handed back to the caller.
    pub fn on_proto_event(
        &mut self,
        now: Instant,
        stack: &mut Stack,
        conn: &mut Connection,
        event: proto::Event,
    ) -> Option<proto::Event> {
        use proto::Event as P;
        match event {
            P::StreamAccepted { id } => self.stream_accepted(now, stack, conn, id),
            P::StreamReadable { id } => {
                if let Some(&fid) = self.tcp_by_stream.get(&id) {
                    self.pump_down(now, stack, conn, fid);
                }
            }
            P::StreamWritable { id } => {
                if let Some(&fid) = self.tcp_by_stream.get(&id) {
                    self.pump_up(stack, conn, fid);
                }
            }
            P::StreamReset { id, code } => self.stream_reset(stack, id, code),
            P::Datagram { id, data } => {
                if let Some(&uid) = self.udp_by_stream.get(&id) {
                    let _ = stack.udp_send_to_app(uid, &data);
                }
            }
            P::DnsResponse { id, msg } => {
                if let Some(qid) = self.dns.take(id)
                    && stack.dns_reply(qid, &msg).is_ok()
                {
                    self.stats.dns_answers += 1;
                }
            }
            P::EchoReply { id, .. } => {
                if let Some(req) = self.echo.take(id)
                    && stack.icmp_echo_reply(&req).is_ok()
                {
                    self.stats.echo_replies += 1;
                }
            }
            other => return Some(other),
        }
        None
    }

    fn stream_accepted(
        &mut self,
        now: Instant,
        stack: &mut Stack,
        conn: &mut Connection,
        sid: StreamId,
    ) {
        let Some(&fid) = self.tcp_by_stream.get(&sid) else {
            return;
        };
        if stack.tcp_accept(fid).is_err() {
            // The app gave up meanwhile (its TcpClosed is on the way or already handled).
            self.forget_tcp(fid);
            let _ = conn.reset_stream(sid, ResetCode::Cancelled);
            return;
        }
        if let Some(f) = self.tcp.get_mut(&fid) {
            f.accepted = true;
        }
        self.pump_down(now, stack, conn, fid);
    }

    fn stream_reset(&mut self, stack: &mut Stack, sid: StreamId, code: ResetCode) {
        if let Some(fid) = self.tcp_by_stream.remove(&sid) {
            let Some(f) = self.tcp.remove(&fid) else {
                return;
            };
            if f.accepted {
                let _ = stack.tcp_abort(fid);
            } else {
                self.stats.tcp_refused += 1;
                let _ = stack.tcp_refuse(fid, refusal_for(code));
            }
        } else if let Some(uid) = self.udp_by_stream.remove(&sid) {
            self.udp.remove(&uid);
            let _ = stack.udp_close(uid);
        }
    }

    /// The session is gone (a new one replaces it): every flow is reset, pending queries
    /// forgotten. Apps see RST (or "connection refused" for flows not yet accepted).
    pub fn reset_all(&mut self, stack: &mut Stack) {
        for (fid, f) in self.tcp.drain() {
            let _ = match (f.accepted, f.net_closed) {
                (_, true) => Ok(()),
                (true, false) => stack.tcp_abort(fid),
                (false, false) => stack.tcp_refuse(fid, Refusal::Reset),
            };
        }
        self.tcp_by_stream.clear();
        for (uid, _) in self.udp.drain() {
            let _ = stack.udp_close(uid);
        }
        self.udp_by_stream.clear();
        self.dns.clear();
        self.echo.clear();
    }

    /// Drain both cores' events, feeding each to the other, until neither has any. Returns
    /// the session-level proto events the caller must handle.
    pub fn run(
        &mut self,
        now: Instant,
        stack: &mut Stack,
        mut conn: Option<&mut Connection>,
    ) -> Vec<proto::Event> {
        let mut out = Vec::new();
        loop {
            let mut any = false;
            while let Some(ev) = stack.poll_event() {
                any = true;
                self.on_net_event(now, stack, conn.as_deref_mut(), ev);
            }
            if let Some(c) = conn.as_deref_mut() {
                while let Some(ev) = c.poll_event() {
                    any = true;
                    out.extend(self.on_proto_event(now, stack, c, ev));
                }
            }
            if !any {
                return out;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
