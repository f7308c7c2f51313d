//! The WebSocket of an upgraded leg, server side (frames parsed and built by `proto::ws`).
//! The reader reads each message's payload straight into a buffer of its own, which the
//! session decrypts in place; the writer sends a batch of frames with one vectored write,
//! each payload as it is (a server's frames are not masked), so nothing is copied on the
//! way out except by TLS.

use std::io::IoSlice;

use bytes::{Bytes, BytesMut};
pub use proto::ws::Incoming;
use proto::ws::{self, Decoded, Decoder, FrameHeader, OpCode, Side};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Most bytes one read asks for while a header or a small payload is awaited (a large
/// payload is read to its end at once).
const READ_CHUNK: usize = 16 * 1024;

/// Bytes the writer gathers before it writes (more waits for the next write).
const WRITE_BATCH: usize = 256 * 1024;

/// Frames per write (two slices each; well under the kernel's 1,024 per `writev`).
const WRITE_FRAMES: usize = 64;

/// Why reading stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The connection failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    /// The connection ended without a close frame.
    #[error("connection ended without a close")]
    Eof,
    /// The peer broke RFC 6455 or our limits.
    #[error("bad WebSocket frame: {0}")]
    Frame(#[from] ws::WsError),
}

/// Reads messages and control frames.
#[derive(Debug)]
pub struct WsReader<R> {
    io: R,
    buf: BytesMut,
    decoder: Decoder,
}

impl<R: AsyncRead + Unpin> WsReader<R> {
    /// A reader of `io` that refuses messages over `max_message` bytes.
    pub fn new(io: R, max_message: usize) -> WsReader<R> {
        WsReader {
            io,
            buf: BytesMut::new(),
            decoder: Decoder::new(Side::Server, max_message, READ_CHUNK),
        }
    }

    /// Refuse messages over `max_message` bytes from now on.
    pub fn set_max_message(&mut self, max_message: usize) {
        self.decoder.set_max_message(max_message);
    }

    /// The next message, ping or close.
    pub async fn next(&mut self) -> Result<Incoming, ReadError> {
        loop {
            match self.decoder.decode(&mut self.buf)? {
                Decoded::Need(need) => {
                    self.buf.reserve(need.reserve);
                    let limit = u64::try_from(need.limit).unwrap_or(u64::MAX);
                    if (&mut self.io).take(limit).read_buf(&mut self.buf).await? == 0 {
                        return Err(ReadError::Eof);
                    }
                }
                Decoded::Incoming(incoming) => return Ok(incoming),
            }
        }
    }
}

/// What the writer sends.
#[derive(Debug)]
pub enum Outgoing {
    /// A binary message.
    Binary(Bytes),
    /// The answer to a ping.
    Pong(Bytes),
    /// A close frame with this status and reason; nothing is sent after it.
    Close(u16, &'static str),
}

/// Frames and writes messages in batches.
#[derive(Debug)]
pub struct WsWriter<W> {
    io: W,
    frames: Vec<(FrameHeader, Bytes)>,
    bytes: usize,
    closed: bool,
}

impl<W: AsyncWrite + Unpin> WsWriter<W> {
    /// A writer of `io`.
    pub fn new(io: W) -> WsWriter<W> {
        WsWriter {
            io,
            frames: Vec::new(),
            bytes: 0,
            closed: false,
        }
    }

    /// Queue `msg` in the batch (ignored once a close frame is queued).
    pub fn push(&mut self, msg: Outgoing) {
        if self.closed {
            return;
        }
        let (opcode, payload) = match msg {
            Outgoing::Binary(b) => (OpCode::Binary, b),
            Outgoing::Pong(p) => (OpCode::Pong, p),
            Outgoing::Close(code, reason) => {
                self.closed = true;
                (OpCode::Close, ws::close_payload(code, reason).into())
            }
        };
        self.bytes += payload.len();
        self.frames
            .push((ws::header(opcode, payload.len(), None), payload));
    }

    /// Whether the batch is big enough to write now.
    pub fn full(&self) -> bool {
        self.bytes >= WRITE_BATCH || self.frames.len() >= WRITE_FRAMES
    }

    /// Whether a close frame was queued.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Write the batch; after a close frame, also shut the connection down.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(2 * self.frames.len());
        for (header, payload) in &self.frames {
            slices.push(IoSlice::new(header.as_bytes()));
            slices.push(IoSlice::new(payload));
        }
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let n = self.io.write_vectored(rest).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut rest, n);
        }
        drop(slices);
        self.frames.clear();
        self.bytes = 0;
        if self.closed {
            self.io.shutdown().await
        } else {
            self.io.flush().await
        }
    }

    /// Send one message now.
    pub async fn send(&mut self, msg: Outgoing) -> std::io::Result<()> {
        self.push(msg);
        self.flush().await
    }
}

/// A leg's upgraded connection, split into its reader and writer.
#[derive(Debug)]
pub struct WsStream<IO> {
    /// Messages from the client.
    pub reader: WsReader<tokio::io::ReadHalf<IO>>,
    /// Messages to the client.
    pub writer: WsWriter<tokio::io::WriteHalf<IO>>,
}

impl<IO: AsyncRead + AsyncWrite> WsStream<IO> {
    /// Frame `io` (the connection after the upgrade response).
    pub fn new(io: IO, max_message: usize) -> WsStream<IO> {
        let (read_half, write_half) = tokio::io::split(io);
        WsStream {
            reader: WsReader::new(read_half, max_message),
            writer: WsWriter::new(write_half),
        }
    }
}

#[cfg(test)]
#[path = "ws_tests.rs"]
mod tests;
