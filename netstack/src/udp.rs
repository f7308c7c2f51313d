//! UDP flow table (5-tuple → flow), idle expiry, replies built with etherparse.

use std::collections::HashMap;
use std::time::Instant;

use crate::build;
use crate::error::Error;
use crate::event::{DnsTransport, Event, UdpFlowId};
use crate::packet::FlowKey;
use crate::stack::{Stack, max_udp_payload};

#[derive(Debug, Default)]
pub(crate) struct UdpTable {
    pub by_key: HashMap<FlowKey, UdpFlowId>,
    pub flows: HashMap<UdpFlowId, UdpFlow>,
}

#[derive(Debug)]
pub(crate) struct UdpFlow {
    pub key: FlowKey,
    pub last_seen: Instant,
}

impl Stack {
    /// A UDP datagram that passed [`crate::packet::classify`].
    pub(crate) fn on_udp(&mut self, key: FlowKey, payload: &[u8]) {
        if self.config.is_dns(key.dst.ip(), key.dst.port()) {
            self.dns_query(key, DnsTransport::Udp, None, payload);
            return;
        }
        if self.events.len() + 2 > self.config.max_queued_events {
            self.stats.events_dropped += 1;
            return;
        }
        let Some(id) = self.udp_flow(key) else { return };
        let payload = bytes::Bytes::copy_from_slice(payload);
        self.events.push_back(Event::UdpDatagram { id, payload });
    }

    /// The flow for `key`, created (with `UdpOpened`) if new and allowed.
    fn udp_flow(&mut self, key: FlowKey) -> Option<UdpFlowId> {
        let now = self.now;
        if let Some(&id) = self.udp.by_key.get(&key) {
            if let Some(flow) = self.udp.flows.get_mut(&id) {
                flow.last_seen = now;
            }
            return Some(id);
        }
        if self.udp.flows.len() >= self.config.max_udp_flows {
            self.stats.udp_dropped_limit += 1;
            return None;
        }
        let id = UdpFlowId(self.fresh_id());
        self.udp.by_key.insert(key, id);
        self.udp.flows.insert(
            id,
            UdpFlow {
                key,
                last_seen: now,
            },
        );
        self.stats.udp_flows_opened += 1;
        self.events.push_back(Event::UdpOpened {
            id,
            src: key.src,
            dst: key.dst,
        });
        self.arm_housekeeping();
        Some(id)
    }

    /// Sends a datagram to the app on flow `id`, from the address it wrote to.
    pub fn udp_send_to_app(&mut self, id: UdpFlowId, payload: &[u8]) -> Result<(), Error> {
        let now = self.now;
        let flow = self.udp.flows.get_mut(&id).ok_or(Error::UnknownId)?;
        flow.last_seen = now;
        let key = flow.key;
        self.send_udp(key.dst, key.src, payload)
    }

    /// Builds and queues one datagram `from` → `to`.
    pub(crate) fn send_udp(
        &mut self,
        from: std::net::SocketAddr,
        to: std::net::SocketAddr,
        payload: &[u8],
    ) -> Result<(), Error> {
        let limit = max_udp_payload(self.config.mtu, from.ip());
        if payload.len() > limit {
            return Err(Error::TooLarge {
                len: payload.len(),
                limit,
            });
        }
        let pkt = build::udp(from, to, payload).ok_or(Error::InvalidState)?;
        self.push_tx(pkt);
        Ok(())
    }

    /// Forgets a UDP flow now (no `UdpClosed` event).
    pub fn udp_close(&mut self, id: UdpFlowId) -> Result<(), Error> {
        let flow = self.udp.flows.remove(&id).ok_or(Error::UnknownId)?;
        self.udp.by_key.remove(&flow.key);
        Ok(())
    }

    /// The app's address and the destination of flow `id`.
    pub fn udp_endpoints(
        &self,
        id: UdpFlowId,
    ) -> Option<(std::net::SocketAddr, std::net::SocketAddr)> {
        self.udp.flows.get(&id).map(|f| (f.key.src, f.key.dst))
    }

    /// Expires flows idle for `udp_idle_timeout`.
    pub(crate) fn udp_housekeeping(&mut self) {
        let deadline = self.config.udp_idle_timeout;
        let now = self.now;
        let expired: Vec<UdpFlowId> = self
            .udp
            .flows
            .iter()
            .filter(|(_, f)| now >= f.last_seen + deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(flow) = self.udp.flows.remove(&id) {
                self.udp.by_key.remove(&flow.key);
                self.stats.udp_flows_expired += 1;
                self.events.push_back(Event::UdpClosed { id });
            }
        }
    }
}
