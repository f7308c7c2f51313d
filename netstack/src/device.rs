//! The smoltcp `phy::Device`: two in-memory packet queues (cf. smoltcp's
//! `phy/loopback.rs`). Checksums are verified by [`crate::packet`] before a packet
//! is queued, so smoltcp only computes them on transmit — except TCP's, which
//! [`TxToken`] fills in with [`crate::checksum::fill_tcp`].

use std::cell::RefCell;
use std::collections::VecDeque;

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Capabilities of the TUN as smoltcp sees it.
pub(crate) fn capabilities(mtu: usize) -> DeviceCapabilities {
    let mut checksum = ChecksumCapabilities::default();
    checksum.ipv4 = Checksum::Tx;
    // TCP checksums are filled in by `TxToken::consume` (faster than smoltcp's loop).
    checksum.tcp = Checksum::None;
    checksum.udp = Checksum::Tx;
    checksum.icmpv4 = Checksum::Tx;
    checksum.icmpv6 = Checksum::Tx;
    let mut caps = DeviceCapabilities::default();
    caps.medium = Medium::Ip;
    caps.max_transmission_unit = mtu;
    caps.checksum = checksum;
    caps
}

/// Leading bytes of a reused buffer zeroed before smoltcp writes a packet into it (the
/// largest IPv6 + TCP header with options is 100 bytes).
const HEADERS_ZEROED: usize = 128;
/// Most spare buffers kept per direction (each up to one MTU: 2 MiB at MTU 65535).
const POOL_MAX: usize = 16;

/// Spare packet buffers. Every packet in and out of smoltcp lives in a `Vec<u8>`; at a
/// 64 KiB MTU a fresh zeroed buffer per packet cost more than smoltcp itself (a memset
/// and often a page-faulting allocation per packet), so spent buffers come back here.
///
/// The two directions keep apart: inbound buffers (copies of TUN packets, returned when
/// smoltcp has consumed them) need no zeroing, while an outbound buffer must be exactly
/// the packet's length, and growing a Vec zero-fills the growth — so outbound packets are
/// built in buffers that held outbound packets before (handed back through
/// [`Stack::recycle`](crate::Stack::recycle)), preferring one at least as long as the new
/// packet, which then costs no zeroing at all.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    rx: Vec<Vec<u8>>,
    tx: Vec<Vec<u8>>,
}

impl Pool {
    /// A buffer of exactly `len` bytes for smoltcp to fill. smoltcp writes every byte of
    /// the packets it emits; the headers are zeroed anyway, so no emitter that counts on
    /// a zeroed buffer can leak an old packet's bytes into a new one.
    pub(crate) fn take(&mut self, len: usize) -> Vec<u8> {
        let fit = self.tx.iter().rposition(|b| b.len() >= len);
        let mut buf = match fit {
            Some(i) => self.tx.swap_remove(i),
            None => self.tx.pop().unwrap_or_default(),
        };
        buf.resize(len, 0);
        let head = len.min(HEADERS_ZEROED);
        buf[..head].fill(0);
        buf
    }

    /// A buffer holding a copy of `pkt` (no zeroing).
    pub(crate) fn copy_of(&mut self, pkt: &[u8]) -> Vec<u8> {
        let mut buf = self.rx.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(pkt);
        buf
    }

    /// Keep an inbound buffer for reuse (dropped when the pool is full).
    pub(crate) fn give_rx(&mut self, buf: Vec<u8>) {
        if self.rx.len() < POOL_MAX && buf.capacity() > 0 {
            self.rx.push(buf);
        }
    }

    /// Keep an outbound buffer (a written packet) for reuse; when the pool is full the
    /// shortest buffer goes, as it is the least likely to fit the next packet.
    pub(crate) fn give_tx(&mut self, buf: Vec<u8>) {
        if buf.is_empty() {
            return;
        }
        if self.tx.len() < POOL_MAX {
            self.tx.push(buf);
        } else if let Some((i, _)) = self.tx.iter().enumerate().min_by_key(|(_, b)| b.len())
            && self.tx[i].len() < buf.len()
        {
            self.tx[i] = buf;
        }
    }
}

/// Borrowed view of one shard's receive queue, the shared transmit queue and the
/// buffer pool.
#[derive(Debug)]
pub(crate) struct QueueDevice<'a> {
    pub rx: &'a mut VecDeque<Vec<u8>>,
    pub tx: &'a mut VecDeque<Vec<u8>>,
    pub pool: &'a RefCell<Pool>,
    pub caps: &'a DeviceCapabilities,
    /// [`crate::Config::tcp_checksum_offload`].
    pub partial_tcp_checksum: bool,
}

impl phy::Device for QueueDevice<'_> {
    type RxToken<'b>
        = RxToken<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxToken<'b>
    where
        Self: 'b;

    fn receive(&mut self, _: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let buffer = self.rx.pop_front()?;
        let pool = self.pool;
        Some((
            RxToken { buffer, pool },
            TxToken {
                queue: self.tx,
                pool,
                partial: self.partial_tcp_checksum,
            },
        ))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
        Some(TxToken {
            queue: self.tx,
            pool: self.pool,
            partial: self.partial_tcp_checksum,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}

/// One queued inbound packet; its buffer goes back to the pool once consumed.
#[derive(Debug)]
pub(crate) struct RxToken<'a> {
    buffer: Vec<u8>,
    pool: &'a RefCell<Pool>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let result = f(&self.buffer);
        self.pool.borrow_mut().give_rx(self.buffer);
        result
    }
}

/// Appends one outbound packet to the transmit queue.
#[derive(Debug)]
pub(crate) struct TxToken<'a> {
    queue: &'a mut VecDeque<Vec<u8>>,
    pool: &'a RefCell<Pool>,
    partial: bool,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buffer = self.pool.borrow_mut().take(len);
        let result = f(&mut buffer);
        crate::checksum::fill_tcp(&mut buffer, self.partial);
        self.queue.push_back(buffer);
        result
    }
}
