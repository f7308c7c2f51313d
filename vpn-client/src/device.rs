//! The packet device the driver reads and writes: the TUN in production, a pair of
//! channels in tests (so the whole driver runs on loopback as a normal user).

use std::io::{self, IoSlice, IoSliceMut};

use tokio::sync::mpsc;

use crate::gso::{self, F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6, VNET_HDR_LEN};

/// One packet read from the device: `len` bytes at the start of the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Length of the IP packet.
    pub len: usize,
    /// The device vouches for the TCP/UDP checksum (see
    /// [`netstack::Stack::handle_vouched_packet`]).
    pub vouched: bool,
    /// A TCP segment the kernel coalesced from several (a GSO packet; it may exceed the
    /// MTU).
    pub coalesced: bool,
}

impl Received {
    /// A packet the stack must verify in full.
    pub fn plain(len: usize) -> Self {
        Received {
            len,
            vouched: false,
            coalesced: false,
        }
    }
}

/// Whole IP packets in and out.
pub trait PacketDevice: Send + Sync {
    /// Wait for the next packet.
    fn recv(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<Received>> + Send;
    /// Another packet if one is ready now (`WouldBlock` otherwise): lets the driver batch.
    fn try_recv(&self, buf: &mut [u8]) -> io::Result<Received>;
    /// Write `pkts` in order (a failed write is logged and the rest still written);
    /// returns how many went out coalesced into GSO packets.
    fn send_all(&self, pkts: &[Vec<u8>]) -> impl Future<Output = u64> + Send;
    /// Whether the device completes TCP checksums: the stack then leaves them partial
    /// ([`netstack::Config::tcp_checksum_offload`]).
    fn completes_tcp_checksums(&self) -> bool;
}

/// The TUN, plain or with offload ([`platform::TunOffload::Checksum`] or
/// [`platform::TunOffload::TcpSegments`]): every packet then carries a `virtio_net_hdr`
/// in front, which this type reads and writes so the driver only sees IP packets (a TCP
/// GSO packet is one large TCP segment).
pub struct Tun {
    dev: platform::tun_rs::AsyncDevice,
    offload: bool,
}

impl std::fmt::Debug for Tun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tun")
            .field("offload", &self.offload)
            .finish_non_exhaustive()
    }
}

impl Tun {
    /// `offload`: the device was created with [`platform::TunOffload::Checksum`] or
    /// [`platform::TunOffload::TcpSegments`].
    pub fn new(dev: platform::tun_rs::AsyncDevice, offload: bool) -> Self {
        Tun { dev, offload }
    }

    fn received(&self, hdr: &[u8; VNET_HDR_LEN], n: usize) -> io::Result<Received> {
        if !self.offload {
            return Ok(Received::plain(n));
        }
        let len = n.checked_sub(VNET_HDR_LEN).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "TUN read shorter than its header",
            )
        })?;
        read_vnet_header(hdr, len)
    }
}

impl PacketDevice for Tun {
    async fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        let mut hdr = [0u8; VNET_HDR_LEN];
        let n = if self.offload {
            let mut bufs = [IoSliceMut::new(&mut hdr), IoSliceMut::new(buf)];
            self.dev.recv_vectored(&mut bufs).await?
        } else {
            self.dev.recv(buf).await?
        };
        self.received(&hdr, n)
    }

    fn try_recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        let mut hdr = [0u8; VNET_HDR_LEN];
        let n = if self.offload {
            let mut bufs = [IoSliceMut::new(&mut hdr), IoSliceMut::new(buf)];
            self.dev.try_recv_vectored(&mut bufs)?
        } else {
            self.dev.try_recv(buf)?
        };
        self.received(&hdr, n)
    }

    async fn send_all(&self, pkts: &[Vec<u8>]) -> u64 {
        let mut coalesced = 0;
        if !self.offload {
            for pkt in pkts {
                log_write(self.dev.send(pkt).await);
            }
            return coalesced;
        }
        for (start, len) in gso::runs(pkts) {
            let written = if len == 1 {
                let pkt = &pkts[start];
                let hdr = vnet_header_for(pkt);
                let bufs = [IoSlice::new(&hdr), IoSlice::new(pkt)];
                self.dev.send_vectored(&bufs).await
            } else {
                let (hdr, pkt) = gso::coalesce(&pkts[start..start + len]);
                coalesced += len as u64;
                let bufs = [IoSlice::new(&hdr), IoSlice::new(&pkt)];
                self.dev.send_vectored(&bufs).await
            };
            log_write(written);
        }
        coalesced
    }

    fn completes_tcp_checksums(&self) -> bool {
        self.offload
    }
}

fn log_write(r: io::Result<usize>) {
    if let Err(e) = r {
        tracing::warn!("TUN write failed: {e}");
    }
}

// The kernel's `struct virtio_net_hdr` (no `num_buffers`: the TUN's default): see gso.rs.
const F_DATA_VALID: u8 = 2;
/// Flag bit of `gso_type`: the segments had ECN CE set.
const GSO_ECN: u8 = 0x80;

/// Interprets the header of a packet of `len` bytes. Fields are in the host's byte order
/// (the legacy virtio header on a little- or big-endian host alike).
fn read_vnet_header(hdr: &[u8; VNET_HDR_LEN], len: usize) -> io::Result<Received> {
    let vouched = hdr[0] & (F_NEEDS_CSUM | F_DATA_VALID) != 0;
    match hdr[1] & !GSO_ECN {
        GSO_NONE => Ok(Received {
            len,
            vouched,
            coalesced: false,
        }),
        // TCP segmentation offload: one segment with valid IP lengths carrying several of
        // the sender's; its checksum is always partial.
        GSO_TCPV4 | GSO_TCPV6 if hdr[0] & F_NEEDS_CSUM != 0 => Ok(Received {
            len,
            vouched: true,
            coalesced: true,
        }),
        // UDP segmentation is never asked for.
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("TUN handed a GSO packet of type {other} it was not set up for"),
        )),
    }
}

/// The header to write in front of `pkt`: TCP segments (whose checksum the stack left
/// partial) ask the kernel to complete it if the packet leaves the host; local sockets
/// accept it as it is. Anything else carries a complete checksum and an empty header.
fn vnet_header_for(pkt: &[u8]) -> [u8; VNET_HDR_LEN] {
    const TCP: u8 = 6;
    let l4 = match pkt.first().map(|b| b >> 4) {
        Some(4) if pkt.len() >= 20 && pkt[9] == TCP => usize::from(pkt[0] & 0x0f) * 4,
        Some(6) if pkt.len() >= 40 && pkt[6] == TCP => 40,
        _ => return [0; VNET_HDR_LEN],
    };
    if pkt.len() < l4 + 20 {
        return [0; VNET_HDR_LEN];
    }
    // The headers up to the checksum field, as the kernel requires at least.
    gso::needs_csum_header(l4, l4 + 18, GSO_NONE, 0)
}

/// A device made of two channels: what the "apps" send arrives on `recv`; what the driver
/// writes comes out of the other end. For tests.
#[derive(Debug)]
pub struct ChannelDevice {
    rx: tokio::sync::Mutex<mpsc::Receiver<Vec<u8>>>,
    tx: mpsc::UnboundedSender<Vec<u8>>,
}

impl ChannelDevice {
    /// The device, the sender for packets into it, and the receiver of packets it writes.
    pub fn new() -> (
        ChannelDevice,
        mpsc::Sender<Vec<u8>>,
        mpsc::UnboundedReceiver<Vec<u8>>,
    ) {
        let (in_tx, in_rx) = mpsc::channel(1024);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let dev = ChannelDevice {
            rx: tokio::sync::Mutex::new(in_rx),
            tx: out_tx,
        };
        (dev, in_tx, out_rx)
    }

    fn copy(pkt: Vec<u8>, buf: &mut [u8]) -> io::Result<Received> {
        let n = pkt.len().min(buf.len());
        buf[..n].copy_from_slice(&pkt[..n]);
        Ok(Received::plain(n))
    }
}

impl PacketDevice for ChannelDevice {
    async fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        match self.rx.lock().await.recv().await {
            Some(pkt) => Self::copy(pkt, buf),
            None => std::future::pending().await,
        }
    }

    fn try_recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        let Ok(mut rx) = self.rx.try_lock() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        match rx.try_recv() {
            Ok(pkt) => Self::copy(pkt, buf),
            Err(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    async fn send_all(&self, pkts: &[Vec<u8>]) -> u64 {
        for pkt in pkts {
            if self.tx.send(pkt.clone()).is_err() {
                tracing::warn!("TUN write failed: the test's receiver is gone");
            }
        }
        0
    }

    fn completes_tcp_checksums(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(v6: bool, proto: u8, ihl: u8) -> Vec<u8> {
        let mut p = vec![0u8; 100];
        if v6 {
            p[0] = 0x60;
            p[6] = proto;
        } else {
            p[0] = 0x40 | ihl;
            p[9] = proto;
        }
        p
    }

    fn fields(h: &[u8; VNET_HDR_LEN]) -> (u8, u8, u16, u16, u16, u16) {
        let at = |i: usize| u16::from_ne_bytes([h[i], h[i + 1]]);
        (h[0], h[1], at(2), at(4), at(6), at(8))
    }

    #[test]
    fn tcp_segments_ask_the_kernel_to_complete_their_checksum() {
        let v4 = vnet_header_for(&packet(false, 6, 5));
        assert_eq!(fields(&v4), (F_NEEDS_CSUM, GSO_NONE, 38, 0, 20, 16));
        let v4_options = vnet_header_for(&packet(false, 6, 6));
        assert_eq!(fields(&v4_options), (F_NEEDS_CSUM, GSO_NONE, 42, 0, 24, 16));
        let v6 = vnet_header_for(&packet(true, 6, 0));
        assert_eq!(fields(&v6), (F_NEEDS_CSUM, GSO_NONE, 58, 0, 40, 16));
    }

    #[test]
    fn other_packets_and_junk_get_an_empty_header() {
        for pkt in [
            packet(false, 17, 5),
            packet(true, 17, 0),
            packet(false, 1, 5),
            packet(true, 58, 0),
            packet(false, 6, 5)[..39].to_vec(), // shorter than a TCP header
            vec![],
            vec![0x45],
        ] {
            assert_eq!(vnet_header_for(&pkt), [0; VNET_HDR_LEN], "{pkt:?}");
        }
    }

    #[test]
    fn headers_read_from_the_kernel() {
        let mut hdr = [0u8; VNET_HDR_LEN];
        let plain = read_vnet_header(&hdr, 60).unwrap();
        assert_eq!(plain, Received::plain(60));
        hdr[0] = F_NEEDS_CSUM;
        assert!(read_vnet_header(&hdr, 60).unwrap().vouched);
        hdr[0] = F_DATA_VALID;
        assert!(read_vnet_header(&hdr, 60).unwrap().vouched);
        // TCP GSO packets: one segment, always with a partial checksum.
        hdr[0] = F_NEEDS_CSUM;
        for gso in [GSO_TCPV4, GSO_TCPV6, GSO_TCPV4 | GSO_ECN] {
            hdr[1] = gso;
            assert_eq!(
                read_vnet_header(&hdr, 9000).unwrap(),
                Received {
                    len: 9000,
                    vouched: true,
                    coalesced: true
                }
            );
        }
        hdr[0] = 0;
        hdr[1] = GSO_TCPV4;
        assert!(
            read_vnet_header(&hdr, 60).is_err(),
            "GSO without NEEDS_CSUM"
        );
        hdr[0] = F_NEEDS_CSUM;
        for udp_gso in [3, 5] {
            hdr[1] = udp_gso; // never asked for
            assert_eq!(
                read_vnet_header(&hdr, 60).unwrap_err().kind(),
                io::ErrorKind::InvalidData
            );
        }
    }
}
