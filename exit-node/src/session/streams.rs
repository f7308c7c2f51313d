//! The destination side of a stream: a dialled TCP connection or a connected UDP socket,
//! each served by small tasks that report to the session driver through its inbox.
//!
//! Back-pressure: a TCP reader hands the driver one chunk and then waits for a "go"
//! token, which the driver sends only once the chunk is inside the protocol core (i.e. the
//! client granted credit). A TCP writer gets at most `MAX_OUTSTANDING` chunks ahead of the
//! socket; until it reports them written the driver leaves stream bytes unread in the core,
//! which withholds credit from the client.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use proto::StreamId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::Input;
use crate::descriptors::Permit;

/// Bytes read from a destination per chunk.
pub(crate) const READ_CHUNK: usize = 64 * 1024;
/// Chunks queued to a destination writer before the driver stops reading the stream.
pub(crate) const MAX_OUTSTANDING: usize = 4;
/// Datagrams held for a UDP flow whose socket is not connected yet.
const UDP_BACKLOG: usize = 16;
/// Datagrams queued to a UDP socket's writer.
const UDP_QUEUE: usize = 256;

/// A connected destination.
#[derive(Debug)]
pub(crate) enum Dialed {
    Tcp(TcpStream),
    Udp(UdpSocket),
}

/// Commands to a TCP writer task.
#[derive(Debug)]
pub(crate) enum WriterCmd {
    Chunk(Bytes),
    Shutdown,
}

/// The destination side of one stream.
#[derive(Debug)]
pub(crate) struct Flow {
    pub target: String,
    pub io: FlowIo,
    /// Bytes read from the destination that the core did not take yet.
    pub pending: Option<Bytes>,
    /// The destination finished; send `Fin` once `pending` is in.
    pub eof_pending: bool,
    /// Chunks handed to the writer and not yet written.
    pub outstanding: usize,
    /// The stream's `Fin` was passed to the writer.
    pub fin_forwarded: bool,
    pub last_active: Instant,
    tasks: Vec<AbortHandle>,
}

#[derive(Debug)]
pub(crate) enum FlowIo {
    /// Dialling; datagrams that arrive meanwhile wait here.
    Dialing { backlog: Vec<Bytes> },
    Tcp {
        to_writer: mpsc::UnboundedSender<WriterCmd>,
        go: mpsc::Sender<()>,
    },
    /// A connected UDP socket, written by a task fed through `out` (bounded: datagrams
    /// beyond it are dropped, as a congested network would).
    Udp { out: mpsc::Sender<Bytes> },
}

impl Drop for Flow {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Flow {
    pub fn dialing(target: String, now: Instant) -> Self {
        Flow {
            target,
            io: FlowIo::Dialing {
                backlog: Vec::new(),
            },
            pending: None,
            eof_pending: false,
            outstanding: 0,
            fin_forwarded: false,
            last_active: now,
            tasks: Vec::new(),
        }
    }

    /// Start the tasks of a connected destination. Both tasks hold `permit`: its descriptor
    /// returns to the budget when the last of them, and with it the socket, is gone.
    pub fn connect(
        &mut self,
        id: StreamId,
        dialed: Dialed,
        permit: Permit,
        inbox: &mpsc::Sender<Input>,
    ) {
        let permit = Arc::new(permit);
        let backlog = match &mut self.io {
            FlowIo::Dialing { backlog } => std::mem::take(backlog),
            _ => Vec::new(),
        };
        match dialed {
            Dialed::Tcp(tcp) => {
                let (rd, wr) = tcp.into_split();
                let (to_writer, writer_rx) = mpsc::unbounded_channel();
                let (go, go_rx) = mpsc::channel(1);
                let r = tokio::spawn(holding(
                    permit.clone(),
                    tcp_reader(id, rd, inbox.clone(), go_rx),
                ));
                let w = tokio::spawn(holding(
                    permit,
                    tcp_writer(id, wr, writer_rx, inbox.clone()),
                ));
                self.tasks = vec![r.abort_handle(), w.abort_handle()];
                self.io = FlowIo::Tcp { to_writer, go };
            }
            Dialed::Udp(udp) => {
                let udp = Arc::new(udp);
                let (out, out_rx) = mpsc::channel(UDP_QUEUE);
                for d in backlog {
                    let _ = out.try_send(d);
                }
                let r = tokio::spawn(holding(
                    permit.clone(),
                    udp_reader(id, udp.clone(), inbox.clone()),
                ));
                let w = tokio::spawn(holding(permit, udp_writer(udp, out_rx)));
                self.tasks = vec![r.abort_handle(), w.abort_handle()];
                self.io = FlowIo::Udp { out };
            }
        }
    }

    /// Send a datagram to the destination, or hold it while dialling; false if dropped.
    pub fn send_datagram(&mut self, data: Bytes) -> bool {
        match &mut self.io {
            FlowIo::Dialing { backlog } if backlog.len() < UDP_BACKLOG => {
                backlog.push(data);
                true
            }
            FlowIo::Udp { out } => out.try_send(data).is_ok(),
            _ => false,
        }
    }

    pub fn is_udp(&self) -> bool {
        matches!(self.io, FlowIo::Udp { .. })
    }

    /// Let the reader read its next chunk.
    pub fn resume_reader(&self) {
        if let FlowIo::Tcp { go, .. } = &self.io {
            let _ = go.try_send(());
        }
    }

    /// Queue bytes (or the end) for the destination.
    pub fn send_to_writer(&mut self, cmd: WriterCmd) -> bool {
        match &self.io {
            FlowIo::Tcp { to_writer, .. } => {
                if matches!(cmd, WriterCmd::Chunk(_)) {
                    self.outstanding += 1;
                }
                to_writer.send(cmd).is_ok()
            }
            _ => false,
        }
    }

    pub fn is_tcp_open(&self) -> bool {
        matches!(self.io, FlowIo::Tcp { .. })
    }
}

/// Run `task`, keeping `permit` until it ends or is aborted (the future is dropped with
/// the socket half it owns).
async fn holding<F: std::future::Future>(permit: Arc<Permit>, task: F) -> F::Output {
    let output = task.await;
    drop(permit);
    output
}

async fn tcp_reader(
    id: StreamId,
    mut rd: OwnedReadHalf,
    inbox: mpsc::Sender<Input>,
    mut go: mpsc::Receiver<()>,
) {
    let mut buf = BytesMut::new();
    loop {
        buf.reserve(READ_CHUNK);
        let input = match rd.read_buf(&mut buf).await {
            Ok(0) => Input::TcpEof { id },
            Ok(_) => Input::TcpData {
                id,
                data: buf.split().freeze(),
            },
            Err(e) => Input::TcpError {
                id,
                error: e.to_string(),
            },
        };
        let more = matches!(input, Input::TcpData { .. });
        if inbox.send(input).await.is_err() || !more || go.recv().await.is_none() {
            return;
        }
    }
}

async fn tcp_writer(
    id: StreamId,
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<WriterCmd>,
    inbox: mpsc::Sender<Input>,
) {
    while let Some(cmd) = rx.recv().await {
        match cmd {
            WriterCmd::Chunk(b) => {
                if let Err(e) = wr.write_all(&b).await {
                    let _ = inbox
                        .send(Input::TcpError {
                            id,
                            error: e.to_string(),
                        })
                        .await;
                    return;
                }
                if inbox.send(Input::Wrote { id }).await.is_err() {
                    return;
                }
            }
            WriterCmd::Shutdown => {
                let _ = wr.shutdown().await;
                return;
            }
        }
    }
}

async fn udp_writer(udp: Arc<UdpSocket>, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(d) = rx.recv().await {
        // A send error (e.g. ICMP unreachable reported on a connected socket) loses this
        // datagram only, as on any network.
        let _ = udp.send(&d).await;
    }
}

async fn udp_reader(id: StreamId, udp: Arc<UdpSocket>, inbox: mpsc::Sender<Input>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        match udp.recv(&mut buf).await {
            Ok(n) => {
                let data = Bytes::copy_from_slice(&buf[..n]);
                if inbox.send(Input::Udp { id, data }).await.is_err() {
                    return;
                }
            }
            // ICMP errors surface as recv errors on a connected socket: keep listening.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(_) => return,
        }
    }
}

/// Text for logs.
pub(crate) fn describe(dest: &proto::Destination) -> (crate::dial::Target, String) {
    match dest {
        proto::Destination::Addr(a) => (crate::dial::Target::Addr(*a), a.to_string()),
        proto::Destination::Domain(h, p) => {
            (crate::dial::Target::Name(h.clone(), *p), format!("{h}:{p}"))
        }
    }
}
