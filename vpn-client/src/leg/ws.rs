//! The WebSocket of a leg, client side: the HTTP upgrade, then frames (parsed and built by
//! `proto::ws`). The reader reads each message's payload straight into a buffer of its
//! own, which the session decrypts in place; the writer masks a batch of frames into one
//! buffer and writes it in one go.

use bytes::{Buf, Bytes, BytesMut};
pub use proto::ws::Incoming;
use proto::ws::{self, Decoded, Decoder, OpCode, Side};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::http::Uri;

use super::LegError;

/// Most bytes one read asks for while a header or a small payload is awaited (a large
/// payload is read to its end at once).
pub const READ_CHUNK: usize = 16 * 1024;

/// A batch the writer frames before it writes (more waits for the next write).
const WRITE_BATCH: usize = 256 * 1024;

/// The largest HTTP response to the upgrade request.
const MAX_RESPONSE: usize = 16 * 1024;

/// Send the upgrade request for `uri` on `io` and check the answer. Returns the bytes
/// read past the response (the start of the first frames, if the server sent any).
pub async fn upgrade<S>(io: &mut S, uri: &Uri) -> Result<BytesMut, LegError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let key = generate_key();
    let host = uri.host().unwrap_or_default();
    let host = match uri.port_u16() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    );
    let failed = |e| LegError::WebSocket(UpgradeError::Io(e));
    io.write_all(request.as_bytes()).await.map_err(failed)?;
    io.flush().await.map_err(failed)?;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if io.read_buf(&mut buf).await.map_err(failed)? == 0 {
            return Err(invalid("connection closed before the response"));
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let parsed = response
            .parse(&buf)
            .map_err(|_| invalid("malformed HTTP response"))?;
        let httparse::Status::Complete(len) = parsed else {
            if buf.len() >= MAX_RESPONSE {
                return Err(invalid("HTTP response headers too large"));
            }
            continue;
        };
        check_response(&response, &derive_accept_key(key.as_bytes()))?;
        buf.advance(len);
        return Ok(buf);
    }
}

fn invalid(why: &'static str) -> LegError {
    LegError::WebSocket(UpgradeError::Invalid(why))
}

fn check_response(response: &httparse::Response<'_, '_>, accept: &str) -> Result<(), LegError> {
    let status = response.code.unwrap_or(0);
    if status != 101 {
        return Err(LegError::UpgradeRefused(status));
    }
    let header = |name: &'static str| {
        response
            .headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
    };
    if !header("upgrade").any(|v| v.trim().eq_ignore_ascii_case("websocket")) {
        return Err(invalid("no `Upgrade: websocket` in the response"));
    }
    let has_upgrade_token = header("connection").any(|v| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    });
    if !has_upgrade_token {
        return Err(invalid("no `Connection: upgrade` in the response"));
    }
    if !header("sec-websocket-accept").any(|v| v.trim() == accept) {
        return Err(invalid("wrong Sec-WebSocket-Accept"));
    }
    // Nothing was offered, so nothing may be chosen (RFC 6455 §4.1).
    if header("sec-websocket-extensions").next().is_some()
        || header("sec-websocket-protocol").next().is_some()
    {
        return Err(invalid("the server chose an extension or subprotocol"));
    }
    Ok(())
}

/// Why the WebSocket upgrade failed, other than a refusal (`LegError::UpgradeRefused`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The answer is not a valid upgrade.
    #[error("WebSocket handshake failed: {0}")]
    Invalid(&'static str),
    /// Reading or writing failed.
    #[error("WebSocket handshake failed: {0}")]
    Io(#[from] std::io::Error),
}

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
    /// A reader of `io` that starts with the bytes `read` past the upgrade and refuses
    /// messages over `max_message` bytes.
    pub fn new(io: R, read: BytesMut, max_message: usize) -> WsReader<R> {
        WsReader {
            io,
            buf: read,
            decoder: Decoder::new(Side::Client, max_message, READ_CHUNK),
        }
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
    /// A close frame with this status; nothing is sent after it.
    Close(u16),
}

/// Frames (masked, as a client must) and writes messages in batches.
#[derive(Debug)]
pub struct WsWriter<W> {
    io: W,
    out: Vec<u8>,
    closed: bool,
}

impl<W: AsyncWrite + Unpin> WsWriter<W> {
    /// A writer of `io`.
    pub fn new(io: W) -> WsWriter<W> {
        WsWriter {
            io,
            out: Vec::new(),
            closed: false,
        }
    }

    /// Frame `msg` into the batch (ignored once a close frame is queued).
    pub fn push(&mut self, msg: Outgoing) {
        if self.closed {
            return;
        }
        let key: [u8; 4] = rand::random();
        match msg {
            Outgoing::Binary(b) => ws::put_masked(&mut self.out, OpCode::Binary, &b, key),
            Outgoing::Pong(p) => ws::put_masked(&mut self.out, OpCode::Pong, &p, key),
            Outgoing::Close(code) => {
                self.closed = true;
                let payload = ws::close_payload(code, "");
                ws::put_masked(&mut self.out, OpCode::Close, &payload, key);
            }
        }
    }

    /// Whether the batch is big enough to write now.
    pub fn full(&self) -> bool {
        self.out.len() >= WRITE_BATCH
    }

    /// Whether a close frame was queued.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Write the batch; after a close frame, also shut the connection down.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.io.write_all(&self.out).await?;
        self.out.clear();
        if self.closed {
            self.io.shutdown().await
        } else {
            self.io.flush().await
        }
    }
}

#[cfg(test)]
#[path = "ws_tests.rs"]
mod tests;
