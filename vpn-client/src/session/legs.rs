//! One leg's transport: connecting (with backoff), the reader and writer tasks of a
//! connected WebSocket, and the phase the leg is in. Protocol decisions stay in the driver
//! and in `proto`; this only moves messages.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use proto::{ClientHandshake, Leg};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::backoff::{Backoff, Breaker, Failure};
use crate::leg::ws::{Incoming, Outgoing, WsReader, WsWriter};
use crate::leg::{Connected, LegEndpoint, LegError, LegStream};

/// The WebSocket close code the exit uses when an attach names a session it does not know.
/// Anyone answering a leg can send it: see [`super::unknown`] for what it takes to believe
/// it (PROTOCOL.md §7.4).
pub const CLOSE_UNKNOWN_SESSION: u16 = 4404;

/// How a leg transport ended.
#[derive(Debug, Clone)]
pub enum Ended {
    /// The peer sent a WebSocket close frame.
    Remote { code: u16, reason: String },
    /// A transport error, or the stream ended without a close frame.
    Error(String),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Remote { code, reason } => write!(f, "closed by peer ({code} {reason:?})"),
            Ended::Error(e) => f.write_str(e),
        }
    }
}

/// A connected WebSocket waiting to be used.
pub struct Ws(pub LegStream);

impl std::fmt::Debug for Ws {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ws(..)")
    }
}

/// What leg tasks report to the driver. `generation` tells stale reports from current ones.
#[derive(Debug)]
pub enum LegInput {
    /// TCP, TLS and the WebSocket upgrade are done.
    Connected {
        leg: Leg,
        generation: u64,
        ws: Box<Ws>,
        info: Connected,
    },
    /// Connecting failed.
    ConnectFailed {
        leg: Leg,
        generation: u64,
        error: LegError,
    },
    /// One binary message.
    Message {
        leg: Leg,
        generation: u64,
        data: BytesMut,
    },
    /// The transport is gone.
    Ended {
        leg: Leg,
        generation: u64,
        why: Ended,
    },
}

/// A running transport: the writer's queue and both tasks (aborted on drop).
#[derive(Debug)]
pub struct Transport {
    tx: mpsc::UnboundedSender<Outgoing>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.reader.abort();
        // The writer ends by itself once the queue is closed, after sending what is queued
        // and a close frame; a stuck peer cannot keep it alive past the abort below.
        let writer = self.writer.abort_handle();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            writer.abort();
        });
    }
}

impl Transport {
    /// Split `ws` into a reader task feeding `inputs` and a writer task fed by `send`.
    ///
    /// The writer queue is unbounded on purpose: everything queued is either a record that
    /// `proto` counts against the peer's session window (it stays unacknowledged until the
    /// peer has it) or a small control message, so proto's budget bounds it.
    pub fn start(
        ws: LegStream,
        leg: Leg,
        generation: u64,
        inputs: mpsc::Sender<LegInput>,
    ) -> Transport {
        let (read_half, write_half) = tokio::io::split(ws.io);
        let mut reader = WsReader::new(read_half, ws.read, ws.max_message);
        let mut sink = WsWriter::new(write_half);
        let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
        // The reader queues pongs and the echo of a close; it is aborted with the
        // transport, so this sender never keeps the writer alive on its own.
        let answers = tx.clone();
        let writer_inputs = inputs.clone();
        let writer = tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                sink.push(msg);
                while !sink.full() {
                    match rx.try_recv() {
                        Ok(more) => sink.push(more),
                        Err(_) => break,
                    }
                }
                if let Err(e) = sink.flush().await {
                    let why = Ended::Error(format!("write failed: {e}"));
                    let _ = writer_inputs
                        .send(LegInput::Ended {
                            leg,
                            generation,
                            why,
                        })
                        .await;
                    return;
                }
                if sink.closed() {
                    return;
                }
            }
            sink.push(Outgoing::Close(proto::ws::CLOSE_NORMAL));
            let _ = sink.flush().await;
        });
        let reader = tokio::spawn(async move {
            let why = loop {
                match reader.next().await {
                    Ok(Incoming::Message(data)) => {
                        let input = LegInput::Message {
                            leg,
                            generation,
                            data,
                        };
                        if inputs.send(input).await.is_err() {
                            return;
                        }
                    }
                    Ok(Incoming::Ping(payload)) => {
                        let _ = answers.send(Outgoing::Pong(payload));
                    }
                    Ok(Incoming::Close(close)) => {
                        let _ = answers.send(Outgoing::Close(close.code));
                        break Ended::Remote {
                            code: close.code,
                            reason: close.reason,
                        };
                    }
                    Err(e) => break Ended::Error(e.to_string()),
                }
            };
            let _ = inputs
                .send(LegInput::Ended {
                    leg,
                    generation,
                    why,
                })
                .await;
        });
        Transport { tx, reader, writer }
    }

    /// Queue one binary message. `false` if the writer is gone.
    pub fn send(&self, payload: Bytes) -> bool {
        self.tx.send(Outgoing::Binary(payload)).is_ok()
    }
}

/// Where a leg is in its life. Each phase carries what it needs.
#[derive(Debug)]
pub enum Phase {
    /// Not connected; the next attempt is due at `retry_at`.
    Idle { retry_at: Instant },
    /// A connect task is running.
    Connecting,
    /// Connected, waiting for its turn to send its first message (attaches go one at a
    /// time so their sequence numbers reach the exit in order).
    Parked(Box<Ws>),
    /// Up leg: handshake sent, waiting for the answer until `deadline`.
    Handshaking {
        hs: Box<ClientHandshake>,
        io: Transport,
        deadline: Instant,
    },
    /// Attach sent, waiting for `AttachOk` until `deadline`.
    Attaching { io: Transport, deadline: Instant },
    /// Attached: records flow.
    Open { io: Transport },
}

impl Phase {
    /// A short name for logs and `status`.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Idle { .. } => "down",
            Phase::Connecting => "connecting",
            Phase::Parked(_) => "connected",
            Phase::Handshaking { .. } => "handshaking",
            Phase::Attaching { .. } => "attaching",
            Phase::Open { .. } => "up",
        }
    }
}

/// One leg: endpoint, phase, backoff, and what `status` shows.
#[derive(Debug)]
pub struct LegSlot {
    pub leg: Leg,
    pub endpoint: LegEndpoint,
    pub url: String,
    pub phase: Phase,
    pub generation: u64,
    pub backoff: Backoff,
    pub peer: Option<Connected>,
    pub last_error: Option<String>,
    pub connects: u64,
    /// Why the transport was last dropped (kept after the leg is back, unlike `last_error`).
    pub last_reconnect: Option<String>,
    /// Reconnects ordered by the stall monitor.
    pub stalls: u64,
}

impl LegSlot {
    /// A leg that will connect at once.
    pub fn new(leg: Leg, endpoint: LegEndpoint, url: String, backoff: Backoff) -> LegSlot {
        LegSlot {
            leg,
            endpoint,
            url,
            phase: Phase::Idle {
                retry_at: Instant::now(),
            },
            generation: 0,
            backoff,
            peer: None,
            last_error: None,
            connects: 0,
            last_reconnect: None,
            stalls: 0,
        }
    }

    /// The writer of an open (or attaching/handshaking) transport.
    pub fn transport(&self) -> Option<&Transport> {
        match &self.phase {
            Phase::Handshaking { io, .. } | Phase::Attaching { io, .. } | Phase::Open { io } => {
                Some(io)
            }
            _ => None,
        }
    }

    /// Drop the transport and schedule the next attempt per the backoff.
    pub fn fail(&mut self, now: Instant, kind: Failure, why: String) {
        self.generation += 1;
        let delay = self.backoff.on_failure(kind);
        let breaker = match self.backoff.breaker() {
            Breaker::Open => " (circuit breaker open: retrying at the maximum interval)",
            Breaker::Closed => "",
        };
        tracing::warn!(leg = %self.leg, url = %self.url, "leg down: {why}; retry in {delay:.1?}{breaker}");
        self.last_reconnect = Some(why.clone());
        self.last_error = Some(why);
        self.phase = Phase::Idle {
            retry_at: now + delay,
        };
    }

    /// Drop the transport and retry at once (a new session is starting).
    pub fn restart(&mut self, now: Instant) {
        self.generation += 1;
        self.phase = Phase::Idle { retry_at: now };
    }

    /// Start a connect task if one is due.
    pub fn maybe_connect(
        &mut self,
        now: Instant,
        fwmark: Option<u32>,
        inputs: &mpsc::Sender<LegInput>,
    ) {
        let Phase::Idle { retry_at } = self.phase else {
            return;
        };
        if retry_at > now {
            return;
        }
        self.generation += 1;
        self.connects += 1;
        self.phase = Phase::Connecting;
        let (leg, generation) = (self.leg, self.generation);
        let endpoint = self.endpoint.clone();
        let inputs = inputs.clone();
        tokio::spawn(async move {
            let prepare = move |s: &tokio::net::TcpSocket| match fwmark {
                Some(mark) => platform::set_mark(s, mark).map_err(std::io::Error::other),
                None => Ok(()),
            };
            let input = match endpoint.connect(&prepare).await {
                Ok((ws, info)) => LegInput::Connected {
                    leg,
                    generation,
                    ws: Box::new(Ws(ws)),
                    info,
                },
                Err(error) => LegInput::ConnectFailed {
                    leg,
                    generation,
                    error,
                },
            };
            let _ = inputs.send(input).await;
        });
    }

    /// The earliest instant this leg needs the driver to wake up.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Idle { retry_at } => Some(*retry_at),
            Phase::Handshaking { deadline, .. } | Phase::Attaching { deadline, .. } => {
                Some(*deadline)
            }
            _ => None,
        }
    }
}
