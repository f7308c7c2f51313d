//! The smoltcp `phy::Device`: two in-memory packet queues (cf. smoltcp's
//! `phy/loopback.rs`). Checksums are verified by [`crate::packet`] before a packet
//! is queued, so smoltcp only computes them on transmit.

use std::collections::VecDeque;

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Capabilities of the TUN as smoltcp sees it.
pub(crate) fn capabilities(mtu: usize) -> DeviceCapabilities {
    let mut checksum = ChecksumCapabilities::default();
    checksum.ipv4 = Checksum::Tx;
    checksum.tcp = Checksum::Tx;
    checksum.udp = Checksum::Tx;
    checksum.icmpv4 = Checksum::Tx;
    checksum.icmpv6 = Checksum::Tx;
    let mut caps = DeviceCapabilities::default();
    caps.medium = Medium::Ip;
    caps.max_transmission_unit = mtu;
    caps.checksum = checksum;
    caps
}

/// Borrowed view of one shard's receive queue and the shared transmit queue.
#[derive(Debug)]
pub(crate) struct QueueDevice<'a> {
    pub rx: &'a mut VecDeque<Vec<u8>>,
    pub tx: &'a mut VecDeque<Vec<u8>>,
    pub caps: &'a DeviceCapabilities,
}

impl phy::Device for QueueDevice<'_> {
    type RxToken<'b>
        = RxToken
    where
        Self: 'b;
    type TxToken<'b>
        = TxToken<'b>
    where
        Self: 'b;

    fn receive(&mut self, _: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let buffer = self.rx.pop_front()?;
        Some((RxToken { buffer }, TxToken { queue: self.tx }))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
        Some(TxToken { queue: self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}

/// One queued inbound packet.
#[derive(Debug)]
pub(crate) struct RxToken {
    buffer: Vec<u8>,
}

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.buffer)
    }
}

/// Appends one outbound packet to the transmit queue.
#[derive(Debug)]
pub(crate) struct TxToken<'a> {
    queue: &'a mut VecDeque<Vec<u8>>,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buffer = vec![0; len];
        let result = f(&mut buffer);
        self.queue.push_back(buffer);
        result
    }
}
