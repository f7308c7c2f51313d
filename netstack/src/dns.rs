//! DNS interception: UDP/53 datagrams and TCP/53 length-prefixed messages
//! (RFC 1035 §4.2.2, RFC 7766) become [`Event::DnsQuery`]; replies go back from
//! the address the app asked.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use smoltcp::socket::tcp::{self, State};

use crate::error::Error;
use crate::event::{DnsQueryId, DnsTransport, Event, TcpFlowId};
use crate::packet::FlowKey;
use crate::stack::Stack;
use crate::tcp::{FlowKind, FlowState};

/// A DNS header is 12 bytes; anything shorter is not a query.
const DNS_HEADER: usize = 12;
/// Replies queued on one TCP/53 connection beyond what its socket buffer takes;
/// more means the app is not reading, and the connection is reset.
const TCP_BACKLOG: usize = 256 * 1024;

#[derive(Debug, Default)]
pub(crate) struct DnsTable {
    pending: HashMap<DnsQueryId, PendingQuery>,
    /// Expiry order (all queries live for the same `dns_timeout`).
    order: VecDeque<(Instant, DnsQueryId)>,
}

impl DnsTable {
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[derive(Debug)]
struct PendingQuery {
    key: FlowKey,
    /// `Some` for TCP/53: the connection the reply is written to.
    flow: Option<TcpFlowId>,
}

/// State of one TCP/53 connection the stack terminates itself.
#[derive(Debug, Default)]
pub(crate) struct DnsConn {
    /// Bytes read from the app not yet forming a whole message.
    inbuf: Vec<u8>,
    /// Length-prefixed replies not yet taken by the socket.
    out: VecDeque<u8>,
    /// Queries surfaced and not yet answered or expired.
    outstanding: usize,
}

impl Stack {
    /// Surfaces one query (from UDP or from a TCP/53 connection `flow`).
    pub(crate) fn dns_query(
        &mut self,
        key: FlowKey,
        transport: DnsTransport,
        flow: Option<TcpFlowId>,
        msg: &[u8],
    ) -> bool {
        if msg.len() < DNS_HEADER || self.dns.pending.len() >= self.config.max_pending_dns {
            self.stats.dns_dropped += 1;
            return false;
        }
        let id = DnsQueryId(self.fresh_id());
        let message = bytes::Bytes::copy_from_slice(msg);
        let ev = Event::DnsQuery {
            id,
            client: key.src,
            server: key.dst,
            transport,
            message,
        };
        if !self.push_datagram_event(ev) {
            return false;
        }
        self.stats.dns_queries += 1;
        self.dns.pending.insert(id, PendingQuery { key, flow });
        self.dns
            .order
            .push_back((self.now + self.config.dns_timeout, id));
        self.arm_housekeeping();
        true
    }

    /// Answers query `id` with the DNS `message`, from the server address the app
    /// asked. UDP replies must fit one packet (resolvers truncate with TC to the
    /// size the query allows); on `TooLarge` the query stays answerable.
    pub fn dns_reply(&mut self, id: DnsQueryId, message: &[u8]) -> Result<(), Error> {
        let q = self.dns.pending.get(&id).ok_or(Error::UnknownId)?;
        let (key, flow) = (q.key, q.flow);
        match flow {
            None => self.send_udp(key.dst, key.src, message)?,
            Some(flow) => self.dns_tcp_reply(flow, message)?,
        }
        self.dns.pending.remove(&id);
        self.stats.dns_replies += 1;
        Ok(())
    }

    fn dns_tcp_reply(&mut self, id: TcpFlowId, message: &[u8]) -> Result<(), Error> {
        let len = u16::try_from(message.len()).map_err(|_| Error::TooLarge {
            len: message.len(),
            limit: 65535,
        })?;
        let flow = self.tcp.flows.get_mut(&id).ok_or(Error::UnknownId)?;
        let FlowKind::Dns(conn) = &mut flow.kind else {
            return Err(Error::InvalidState);
        };
        conn.out.extend(len.to_be_bytes());
        conn.out.extend(message);
        conn.outstanding = conn.outstanding.saturating_sub(1);
        self.dirty.insert(flow.shard);
        Ok(())
    }

    /// After a poll of a TCP/53 flow: read whole messages, write queued replies,
    /// close once the app has closed and every query is answered.
    pub(crate) fn dns_service(&mut self, id: TcpFlowId, s: usize) {
        let Some(flow) = self.tcp.flows.get_mut(&id) else {
            return;
        };
        let (FlowKind::Dns(conn), FlowState::Open { handle }) = (&mut flow.kind, &flow.state)
        else {
            return;
        };
        let socket = self.shards[s]
            .sockets
            .get_mut::<tcp::Socket<'static>>(*handle);
        read_into(socket, &mut conn.inbuf);
        let msgs = split_messages(&mut conn.inbuf);
        conn.outstanding += msgs.len();
        let mut changed = write_from(socket, &mut conn.out) > 0;
        if conn.out.len() > TCP_BACKLOG {
            socket.abort();
            self.stats.dns_dropped += 1;
            changed = true;
        } else if socket.state() == State::CloseWait && conn.outstanding == 0 && conn.out.is_empty()
        {
            socket.close();
            flow.write_shut = true;
            changed = true;
        }
        // What was written or closed here goes out at the next poll.
        if changed {
            self.dirty.insert(s);
        }
        let key = flow.key;
        for m in msgs {
            if !self.dns_query(key, DnsTransport::Tcp, Some(id), &m) {
                self.dns_unanswerable(id);
            }
        }
    }

    /// A query from `flow` that will never be answered (dropped or expired).
    fn dns_unanswerable(&mut self, flow: TcpFlowId) {
        if let Some(f) = self.tcp.flows.get_mut(&flow) {
            if let FlowKind::Dns(conn) = &mut f.kind {
                conn.outstanding = conn.outstanding.saturating_sub(1);
            }
            self.dirty.insert(f.shard);
        }
    }

    /// A TCP/53 flow went away: its queries can no longer be answered.
    pub(crate) fn dns_forget_flow(&mut self, flow: TcpFlowId) {
        self.dns.pending.retain(|_, q| q.flow != Some(flow));
    }

    /// Expires queries older than `dns_timeout`.
    pub(crate) fn dns_housekeeping(&mut self) {
        while let Some(&(deadline, id)) = self.dns.order.front() {
            if deadline > self.now {
                break;
            }
            self.dns.order.pop_front();
            if let Some(q) = self.dns.pending.remove(&id) {
                self.stats.dns_expired += 1;
                if let Some(flow) = q.flow {
                    self.dns_unanswerable(flow);
                }
            }
        }
    }
}

/// Moves readable bytes into `inbuf`, never beyond one maximal message.
fn read_into(socket: &mut tcp::Socket<'_>, inbuf: &mut Vec<u8>) {
    const MAX: usize = 2 + 65535;
    while socket.can_recv() && inbuf.len() < MAX {
        let room = MAX - inbuf.len();
        let got = socket.recv(|data| {
            let n = data.len().min(room);
            inbuf.extend_from_slice(&data[..n]);
            (n, n)
        });
        if !matches!(got, Ok(n) if n > 0) {
            break;
        }
    }
}

/// Removes every complete length-prefixed message from the front of `inbuf`.
fn split_messages(inbuf: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut msgs = Vec::new();
    let mut at = 0;
    while let [hi, lo, ..] = inbuf[at..] {
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if inbuf.len() - at - 2 < len {
            break;
        }
        msgs.push(inbuf[at + 2..at + 2 + len].to_vec());
        at += 2 + len;
    }
    inbuf.drain(..at);
    msgs
}

/// Writes as much of `out` as the socket takes; returns the byte count.
fn write_from(socket: &mut tcp::Socket<'_>, out: &mut VecDeque<u8>) -> usize {
    let mut total = 0;
    while !out.is_empty() && socket.can_send() {
        let (a, _) = out.as_slices();
        let n = socket.send_slice(a).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.drain(..n);
        total += n;
    }
    total
}

/// A length-prefixed message, for tests of the framing.
#[cfg(test)]
pub(crate) fn frame(msg: &[u8]) -> Vec<u8> {
    let mut v = (msg.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(msg);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_whole_messages_and_keeps_the_rest() {
        let mut buf = frame(b"abc");
        buf.extend(frame(b""));
        buf.extend(frame(b"hello"));
        buf.extend_from_slice(&[0, 9, 1, 2]);
        let msgs = split_messages(&mut buf);
        assert_eq!(msgs, vec![b"abc".to_vec(), Vec::new(), b"hello".to_vec()]);
        assert_eq!(buf, vec![0, 9, 1, 2]);
    }

    #[test]
    fn single_length_byte_is_incomplete() {
        let mut buf = vec![0u8];
        assert!(split_messages(&mut buf).is_empty());
        assert_eq!(buf, vec![0]);
    }
}
