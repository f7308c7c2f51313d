//! TCP flows: the held SYN, the accept decision, the smoltcp socket, and the
//! sweep that turns socket state into events and reclaims closed flows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{self, State};
use smoltcp::wire::IpListenEndpoint;

use crate::build;
use crate::dns::DnsConn;
use crate::error::Error;
use crate::event::{CloseReason, Event, Refusal, TcpFlowId};
use crate::packet::{FlowKey, TcpSeg};
use crate::stack::Stack;

/// All TCP flows, by id and by 4-tuple.
#[derive(Debug, Default)]
pub(crate) struct TcpTable {
    pub by_key: HashMap<FlowKey, TcpFlowId>,
    pub flows: HashMap<TcpFlowId, TcpFlow>,
}

/// Where a flow is in its life.
#[derive(Debug)]
pub(crate) enum FlowState {
    /// The SYN is held until the caller decides.
    Pending { syn: Vec<u8>, deadline: Instant },
    /// A smoltcp socket owns the connection.
    Open { handle: SocketHandle },
}

/// Who consumes the flow's bytes.
#[derive(Debug)]
pub(crate) enum FlowKind {
    /// The caller, through `tcp_recv`/`tcp_send`.
    App,
    /// The stack's own DNS-over-TCP framing (RFC 1035 §4.2.2).
    Dns(DnsConn),
}

#[derive(Debug)]
pub(crate) struct TcpFlow {
    pub key: FlowKey,
    pub shard: usize,
    pub state: FlowState,
    pub kind: FlowKind,
    pub last_activity: Instant,
    /// `TcpEstablished` was reported.
    pub established: bool,
    /// `TcpReadable` was reported and the buffer has not been emptied since.
    pub readable_notified: bool,
    /// `tcp_send` fell short; report `TcpWritable` when there is room.
    pub want_writable: bool,
    /// `TcpPeerFin` was reported.
    pub fin_notified: bool,
    /// A segment with FIN / RST from the app was seen.
    pub fin_seen: bool,
    pub rst_seen: bool,
    /// `tcp_shutdown_write` (or DNS close) was called.
    pub write_shut: bool,
    /// Why the stack itself ended the flow (abort, idle timeout).
    pub end: Option<CloseReason>,
}

impl TcpFlow {
    fn handle(&self) -> Option<SocketHandle> {
        match self.state {
            FlowState::Open { handle } => Some(handle),
            FlowState::Pending { .. } => None,
        }
    }

    fn close_reason(&self, state: State) -> CloseReason {
        if let Some(r) = self.end {
            r
        } else if self.rst_seen {
            CloseReason::Reset
        } else if state == State::TimeWait || (self.write_shut && self.fin_seen) {
            CloseReason::Graceful
        } else {
            CloseReason::TimedOut
        }
    }
}

fn free_space(socket: &tcp::Socket<'_>) -> usize {
    socket.send_capacity() - socket.send_queue()
}

impl Stack {
    /// A TCP segment that passed [`crate::packet::classify`].
    pub(crate) fn on_tcp(&mut self, seg: TcpSeg, pkt: &[u8]) {
        let Some(&id) = self.tcp.by_key.get(&seg.key) else {
            if seg.syn && !seg.ack && !seg.rst {
                self.new_tcp(seg.key, pkt);
            } else if !seg.rst {
                // smoltcp answers a segment for no connection with RST (RFC 9293 §3.10.7.1).
                self.stats.tcp_no_flow += 1;
                let s = self.shard_of(&seg.key);
                self.queue_for_smoltcp(s, pkt);
            }
            return;
        };
        let now = self.now;
        let Some(flow) = self.tcp.flows.get_mut(&id) else {
            return;
        };
        flow.last_activity = now;
        flow.fin_seen |= seg.fin;
        flow.rst_seen |= seg.rst;
        let shard = flow.shard;
        match &mut flow.state {
            FlowState::Open { .. } => self.queue_for_smoltcp(shard, pkt),
            FlowState::Pending { syn, .. } if seg.syn && !seg.ack => *syn = pkt.to_vec(),
            FlowState::Pending { .. } if seg.rst => {
                self.remove_flow(id, CloseReason::HandshakeFailed)
            }
            FlowState::Pending { .. } => self.stats.tcp_dropped_pending += 1,
        }
    }

    fn queue_for_smoltcp(&mut self, shard: usize, pkt: &[u8]) {
        let buf = self.pool.get_mut().copy_of(pkt);
        self.shards[shard].rx.push_back(buf);
        self.dirty.insert(shard);
    }

    /// A SYN for an unknown 4-tuple: refuse at the limits, accept DNS, else ask.
    fn new_tcp(&mut self, key: FlowKey, syn: &[u8]) {
        let shard = self.shard_of(&key);
        let cost = self.config.flow_buffer_bytes();
        if self.tcp.flows.len() >= self.config.max_tcp_flows
            || self.buffer_memory + cost > self.config.max_buffer_memory
        {
            self.stats.tcp_refused_limit += 1;
            self.queue_for_smoltcp(shard, syn);
            return;
        }
        let id = TcpFlowId(self.fresh_id());
        let dns = self.config.is_dns(key.dst.ip(), key.dst.port());
        let deadline = self.now + self.config.tcp_accept_timeout;
        let flow = TcpFlow {
            key,
            shard,
            state: FlowState::Pending {
                syn: syn.to_vec(),
                deadline,
            },
            kind: if dns {
                FlowKind::Dns(DnsConn::default())
            } else {
                FlowKind::App
            },
            last_activity: self.now,
            established: false,
            readable_notified: false,
            want_writable: false,
            fin_notified: false,
            fin_seen: false,
            rst_seen: false,
            write_shut: false,
            end: None,
        };
        self.buffer_memory += cost;
        self.tcp.by_key.insert(key, id);
        self.tcp.flows.insert(id, flow);
        self.arm_housekeeping();
        if dns {
            self.open_socket(id);
        } else {
            self.stats.tcp_flows_offered += 1;
            self.events.push_back(Event::TcpIncoming {
                id,
                src: key.src,
                dst: key.dst,
            });
        }
    }

    /// Accepts a flow reported by [`Event::TcpIncoming`]: smoltcp answers the held
    /// SYN with SYN-ACK; [`Event::TcpEstablished`] follows the app's ACK.
    pub fn tcp_accept(&mut self, id: TcpFlowId) -> Result<(), Error> {
        match self.tcp.flows.get(&id).map(|f| &f.state) {
            None => Err(Error::UnknownId),
            Some(FlowState::Open { .. }) => Err(Error::InvalidState),
            Some(FlowState::Pending { .. }) => {
                self.open_socket(id);
                Ok(())
            }
        }
    }

    /// Creates the socket, listening on exactly the SYN's destination, and feeds it
    /// the SYN. The shard is polled before (so no other segment is queued) and right
    /// after (so the listener has bound to this SYN's 4-tuple and cannot catch
    /// another flow's SYN to the same destination).
    fn open_socket(&mut self, id: TcpFlowId) {
        let shard = self.tcp.flows[&id].shard;
        self.poll_shard(shard);
        let Some(dst) = self.tcp.flows.get(&id).map(|f| f.key.dst) else {
            return;
        };
        let c = &self.config;
        let (rx, tx) = (c.tcp_rx_buffer, c.tcp_tx_buffer);
        let configure = socket_setup(c, dst);
        let Some(handle) = self.shards[shard].add_tcp_socket(&mut self.spares, rx, tx, configure)
        else {
            // The kernel refused the mapping: refuse the flow like any other limit.
            self.stats.tcp_refused_limit += 1;
            let _ = self.tcp_refuse(id, Refusal::Reset);
            return;
        };
        let Some(flow) = self.tcp.flows.get_mut(&id) else {
            self.shards[shard].remove_socket(&mut self.spares, handle);
            return;
        };
        let FlowState::Pending { mut syn, .. } = std::mem::replace(
            &mut flow.state,
            FlowState::Pending {
                syn: Vec::new(),
                deadline: self.now,
            },
        ) else {
            // Unreachable: only pending flows get here.
            self.shards[shard].remove_socket(&mut self.spares, handle);
            return;
        };
        // Parsed by `classify` already: this cannot fail.
        let _ = crate::mss::make_room_for_timestamps(&mut syn);
        let sh = &mut self.shards[shard];
        sh.flows.push(id);
        sh.rx.push_back(syn);
        flow.state = FlowState::Open { handle };
        flow.last_activity = self.now;
        self.stats.tcp_flows_accepted += 1;
        self.poll_shard(shard);
    }

    /// Refuses a flow reported by [`Event::TcpIncoming`]; the app sees `how`.
    /// [`Event::TcpClosed`] with [`CloseReason::Refused`] follows.
    pub fn tcp_refuse(&mut self, id: TcpFlowId, how: Refusal) -> Result<(), Error> {
        let flow = self.tcp.flows.get_mut(&id).ok_or(Error::UnknownId)?;
        let FlowState::Pending { syn, .. } = &mut flow.state else {
            return Err(Error::InvalidState);
        };
        let syn = std::mem::take(syn);
        let (key, shard) = (flow.key, flow.shard);
        self.remove_flow(id, CloseReason::Refused);
        self.stats.tcp_flows_refused += 1;
        match how {
            Refusal::Reset => self.queue_for_smoltcp(shard, &syn),
            Refusal::Silent => {}
            _ => {
                if let Some(pkt) = build::unreachable(key.src.ip(), key.dst.ip(), how, &syn) {
                    self.push_tx(pkt);
                }
            }
        }
        Ok(())
    }

    fn app_socket(
        &mut self,
        id: TcpFlowId,
    ) -> Result<(&mut TcpFlow, &mut tcp::Socket<'static>), Error> {
        let flow = self.tcp.flows.get_mut(&id).ok_or(Error::UnknownId)?;
        let (FlowKind::App, Some(handle)) = (&flow.kind, flow.handle()) else {
            return Err(Error::InvalidState);
        };
        self.dirty.insert(flow.shard);
        let shard = &mut self.shards[flow.shard];
        Ok((flow, shard.sockets.get_mut::<tcp::Socket<'static>>(handle)))
    }

    /// Queues bytes for the app; returns how many were taken (0 when the send
    /// buffer is full or the handshake is not finished yet, in which case
    /// [`Event::TcpWritable`] follows when there is room).
    pub fn tcp_send(&mut self, id: TcpFlowId, data: &[u8]) -> Result<usize, Error> {
        let now = self.now;
        let (flow, socket) = self.app_socket(id)?;
        if flow.write_shut {
            return Err(Error::InvalidState);
        }
        if !socket.may_send() {
            if matches!(socket.state(), State::SynReceived) {
                flow.want_writable = true;
                return Ok(0);
            }
            return Err(Error::InvalidState);
        }
        let n = socket.send_slice(data).unwrap_or(0);
        if n < data.len() {
            flow.want_writable = true;
        }
        if n > 0 {
            flow.last_activity = now;
        }
        Ok(n)
    }

    /// Free room in the flow's send buffer (the credit the tunnel may be granted).
    pub fn tcp_send_capacity(&mut self, id: TcpFlowId) -> Result<usize, Error> {
        let (_, socket) = self.app_socket(id)?;
        Ok(if socket.may_send() {
            free_space(socket)
        } else {
            0
        })
    }

    /// Copies bytes the app sent into `buf`; `Ok(0)` when none are waiting
    /// (end of stream is reported by [`Event::TcpPeerFin`]).
    pub fn tcp_recv(&mut self, id: TcpFlowId, buf: &mut [u8]) -> Result<usize, Error> {
        let now = self.now;
        let (flow, socket) = self.app_socket(id)?;
        let n = socket.recv_slice(buf).unwrap_or(0);
        if socket.recv_queue() == 0 {
            flow.readable_notified = false;
        }
        if n > 0 {
            flow.last_activity = now;
        }
        Ok(n)
    }

    /// [`Stack::tcp_recv`] without the copy: `take` sees up to `max` bytes the app sent
    /// (the first contiguous part of what waits; call again for the rest) and returns how
    /// many it consumed. Unconsumed bytes stay in the flow's buffer, in order.
    pub fn tcp_recv_with(
        &mut self,
        id: TcpFlowId,
        max: usize,
        take: impl FnOnce(&[u8]) -> usize,
    ) -> Result<usize, Error> {
        let now = self.now;
        let (flow, socket) = self.app_socket(id)?;
        let n = socket
            .recv(|waiting| {
                let offered = &waiting[..waiting.len().min(max)];
                let n = take(offered).min(offered.len());
                (n, n)
            })
            .unwrap_or(0);
        if socket.recv_queue() == 0 {
            flow.readable_notified = false;
        }
        if n > 0 {
            flow.last_activity = now;
        }
        Ok(n)
    }

    /// Bytes from the app waiting for `tcp_recv`.
    pub fn tcp_recv_queue(&mut self, id: TcpFlowId) -> Result<usize, Error> {
        let (_, socket) = self.app_socket(id)?;
        Ok(socket.recv_queue())
    }

    /// Sends FIN after the queued bytes (half-close); the app can keep sending.
    pub fn tcp_shutdown_write(&mut self, id: TcpFlowId) -> Result<(), Error> {
        let (flow, socket) = self.app_socket(id)?;
        flow.write_shut = true;
        socket.close();
        Ok(())
    }

    /// Resets the flow (the app gets RST); pending flows are refused with RST.
    /// [`Event::TcpClosed`] with [`CloseReason::Aborted`] follows.
    pub fn tcp_abort(&mut self, id: TcpFlowId) -> Result<(), Error> {
        let flow = self.tcp.flows.get_mut(&id).ok_or(Error::UnknownId)?;
        flow.end = Some(CloseReason::Aborted);
        let Some(handle) = flow.handle() else {
            let FlowState::Pending { syn, .. } = &mut flow.state else {
                return Ok(());
            };
            let (syn, shard) = (std::mem::take(syn), flow.shard);
            self.remove_flow(id, CloseReason::Aborted);
            self.queue_for_smoltcp(shard, &syn);
            return Ok(());
        };
        let shard = &mut self.shards[flow.shard];
        shard
            .sockets
            .get_mut::<tcp::Socket<'static>>(handle)
            .abort();
        self.dirty.insert(flow.shard);
        Ok(())
    }

    /// The app's address and the destination it asked for.
    pub fn tcp_endpoints(&self, id: TcpFlowId) -> Option<(SocketAddr, SocketAddr)> {
        self.tcp.flows.get(&id).map(|f| (f.key.src, f.key.dst))
    }

    /// Forgets a flow: frees its socket and buffers; reports `TcpClosed` for
    /// flows the caller knows about.
    pub(crate) fn remove_flow(&mut self, id: TcpFlowId, reason: CloseReason) {
        let Some(flow) = self.tcp.flows.remove(&id) else {
            return;
        };
        self.tcp.by_key.remove(&flow.key);
        self.buffer_memory -= self.config.flow_buffer_bytes();
        self.stats.tcp_flows_reclaimed += 1;
        if let Some(handle) = flow.handle() {
            let shard = &mut self.shards[flow.shard];
            shard.remove_socket(&mut self.spares, handle);
            if let Some(i) = shard.flows.iter().position(|f| *f == id) {
                shard.flows.swap_remove(i);
            }
        }
        match flow.kind {
            FlowKind::App => self.events.push_back(Event::TcpClosed { id, reason }),
            FlowKind::Dns(_) => self.dns_forget_flow(id),
        }
    }

    /// After a poll: report state changes of every flow in the shard and reclaim
    /// the finished ones.
    pub(crate) fn sweep_shard(&mut self, s: usize) {
        let ids = std::mem::take(&mut self.shards[s].flows);
        let mut done = Vec::new();
        for &id in &ids {
            if let Some(reason) = self.sweep_flow(s, id) {
                done.push((id, reason));
            }
        }
        let shard = &mut self.shards[s];
        shard.flows = ids;
        for (id, reason) in done {
            self.remove_flow(id, reason);
            self.dirty.insert(s);
        }
    }

    /// One flow's sweep; `Some` when the flow is finished.
    fn sweep_flow(&mut self, s: usize, id: TcpFlowId) -> Option<CloseReason> {
        let flow = self.tcp.flows.get_mut(&id)?;
        let handle = flow.handle()?;
        let socket = self.shards[s]
            .sockets
            .get_mut::<tcp::Socket<'static>>(handle);
        let state = socket.state();
        match state {
            // Listen here means the SYN was not taken, or the app reset the
            // half-open connection (smoltcp returns to LISTEN): never keep a listener.
            State::Listen => return Some(flow.end.unwrap_or(CloseReason::HandshakeFailed)),
            State::SynReceived | State::SynSent => return None,
            _ => {}
        }
        let app = matches!(flow.kind, FlowKind::App);
        if !flow.established {
            flow.established = true;
            if app && state != State::Closed {
                self.events.push_back(Event::TcpEstablished { id });
            }
        }
        if app {
            report_io(flow, socket, &mut self.events, id);
        }
        let fin = matches!(
            state,
            State::CloseWait | State::LastAck | State::Closing | State::TimeWait
        ) || (state == State::Closed
            && flow.close_reason(state) == CloseReason::Graceful);
        if fin && socket.recv_queue() == 0 && !flow.fin_notified {
            flow.fin_notified = true;
            if app {
                self.events.push_back(Event::TcpPeerFin { id });
            }
        }
        if !app {
            self.dns_service(id, s);
        }
        let flow = self.tcp.flows.get(&id)?;
        let socket = self.shards[s].sockets.get::<tcp::Socket<'static>>(handle);
        let finished = matches!(socket.state(), State::Closed | State::TimeWait);
        // Unread bytes of a gracefully closed flow stay readable until drained.
        (finished && socket.recv_queue() == 0).then(|| flow.close_reason(socket.state()))
    }

    /// Accept timeouts of pending flows and idle timeouts of open ones.
    pub(crate) fn tcp_housekeeping(&mut self) {
        let now = self.now;
        let idle = self.config.tcp_idle_timeout;
        let mut expired = Vec::new();
        for (&id, flow) in &self.tcp.flows {
            match flow.state {
                FlowState::Pending { deadline, .. } if deadline <= now => expired.push((id, true)),
                FlowState::Open { .. } if idle.is_some_and(|d| now >= flow.last_activity + d) => {
                    expired.push((id, false))
                }
                _ => {}
            }
        }
        for (id, pending) in expired {
            if pending {
                self.stats.tcp_accept_timeouts += 1;
                self.remove_flow(id, CloseReason::AcceptTimeout);
            } else {
                self.stats.tcp_idle_timeouts += 1;
                self.idle_out(id);
            }
        }
    }

    fn idle_out(&mut self, id: TcpFlowId) {
        let Some(flow) = self.tcp.flows.get_mut(&id) else {
            return;
        };
        flow.end = Some(CloseReason::IdleTimeout);
        let Some(handle) = flow.handle() else { return };
        let shard = &mut self.shards[flow.shard];
        let socket = shard.sockets.get_mut::<tcp::Socket<'static>>(handle);
        if matches!(socket.state(), State::Closed | State::TimeWait) {
            // Nothing left to reset (e.g. unread bytes never drained).
            self.remove_flow(id, CloseReason::IdleTimeout);
        } else {
            socket.abort();
            self.dirty.insert(flow.shard);
        }
    }
}

/// Readable / writable edge events for a caller-owned flow.
fn report_io(
    flow: &mut TcpFlow,
    socket: &tcp::Socket<'_>,
    events: &mut std::collections::VecDeque<Event>,
    id: TcpFlowId,
) {
    if socket.can_recv() && !flow.readable_notified {
        flow.readable_notified = true;
        events.push_back(Event::TcpReadable { id });
    }
    if flow.want_writable && socket.may_send() && free_space(socket) >= socket.send_capacity() / 4 {
        flow.want_writable = false;
        events.push_back(Event::TcpWritable { id });
    }
}

/// Sets up a fresh socket: our options, listening on exactly `dst`.
fn socket_setup(
    c: &crate::Config,
    dst: SocketAddr,
) -> impl FnOnce(&mut tcp::Socket<'static>) + use<> {
    let dur = |d: std::time::Duration| smoltcp::time::Duration::from_micros(d.as_micros() as u64);
    let (ack_delay, keep_alive, timeout) = (
        c.tcp_ack_delay.map(dur),
        c.tcp_keepalive.map(dur),
        c.tcp_timeout.map(dur),
    );
    move |s| {
        s.set_nagle_enabled(false);
        s.set_ack_delay(ack_delay);
        s.set_keep_alive(keep_alive);
        s.set_timeout(timeout);
        // Used only if the app's SYN offers timestamps (`crate::timestamps`).
        s.set_tsval_generator(Some(crate::timestamps::tsval));
        let ep = IpListenEndpoint {
            addr: Some(dst.ip().into()),
            port: dst.port(),
        };
        // Only fails for port 0, which `classify` rejects.
        let _ = s.listen(ep);
    }
}
