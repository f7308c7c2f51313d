//! The packet device the driver reads and writes: the TUN in production, a pair of
//! channels in tests (so the whole driver runs on loopback as a normal user).

use std::io;

use tokio::sync::mpsc;

/// Whole IP packets in and out.
pub trait PacketDevice: Send + Sync {
    /// Wait for the next packet; returns its length.
    fn recv(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<usize>> + Send;
    /// Another packet if one is ready now (`WouldBlock` otherwise): lets the driver batch.
    fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Write one packet.
    fn send(&self, pkt: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
}

impl PacketDevice for platform::tun_rs::AsyncDevice {
    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        platform::tun_rs::AsyncDevice::recv(self, buf).await
    }

    fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        platform::tun_rs::AsyncDevice::try_recv(self, buf)
    }

    async fn send(&self, pkt: &[u8]) -> io::Result<()> {
        platform::tun_rs::AsyncDevice::send(self, pkt)
            .await
            .map(|_| ())
    }
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

    fn copy(pkt: Vec<u8>, buf: &mut [u8]) -> io::Result<usize> {
        let n = pkt.len().min(buf.len());
        buf[..n].copy_from_slice(&pkt[..n]);
        Ok(n)
    }
}

impl PacketDevice for ChannelDevice {
    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self.rx.lock().await.recv().await {
            Some(pkt) => Self::copy(pkt, buf),
            None => std::future::pending().await,
        }
    }

    fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let Ok(mut rx) = self.rx.try_lock() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        match rx.try_recv() {
            Ok(pkt) => Self::copy(pkt, buf),
            Err(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    async fn send(&self, pkt: &[u8]) -> io::Result<()> {
        self.tx
            .send(pkt.to_vec())
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }
}
