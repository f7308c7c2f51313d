//! Connecting one leg: TCP (with the client's firewall mark, so the leg bypasses the TUN)
//! → TLS (rustls; system roots + optional CA file, optional SHA-256 pin, or an explicit
//! insecure switch for tests) → WebSocket upgrade with the configured Host and path.

pub mod resolve;
#[cfg(test)]
mod tests;
mod tls;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::http::Uri;

use crate::config::LegConfig;
use resolve::{Resolve, SystemResolver};

pub use tls::TlsSetupError;

/// Any byte stream a leg can run over (plain TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connected leg: the byte stream after the WebSocket upgrade ([`ws`] frames it).
pub struct LegStream {
    /// TCP or TLS.
    pub io: Box<dyn Io>,
    /// Bytes read past the upgrade response.
    pub read: BytesMut,
    /// The largest message to accept.
    pub max_message: usize,
}

impl std::fmt::Debug for LegStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegStream")
            .field("read", &self.read.len())
            .finish_non_exhaustive()
    }
}

/// Why a leg could not be connected. The driver backs off on all of these; the message
/// is what `status` shows.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LegError {
    /// The URL is not usable.
    #[error("invalid leg URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },
    /// The CA file or pin is unusable.
    #[error(transparent)]
    TlsSetup(TlsSetupError),
    /// The host name did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    /// TCP connect failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The TLS handshake failed (certificate, pin, protocol).
    #[error("TLS with {server} failed: {source}")]
    Tls {
        server: String,
        source: std::io::Error,
    },
    /// The server refused the WebSocket upgrade (e.g. 404: wrong path, or not our server).
    #[error("WebSocket upgrade refused with HTTP status {0}")]
    UpgradeRefused(u16),
    /// The WebSocket handshake failed otherwise.
    #[error(transparent)]
    WebSocket(ws::UpgradeError),
    /// Nothing completed in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// How to reach one leg; built once from config.
#[derive(Clone)]
pub struct LegEndpoint {
    uri: Uri,
    host: String,
    port: u16,
    connect_address: Option<SocketAddr>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    max_message: usize,
    timeout: Duration,
    resolver: Arc<dyn Resolve>,
}

impl std::fmt::Debug for LegEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegEndpoint")
            .field("uri", &self.uri)
            .field("connect_address", &self.connect_address)
            .field("tls", &self.tls.is_some())
            .field("resolver", &self.resolver)
            .finish()
    }
}

/// Facts about a connected leg, for logs and `status`.
#[derive(Debug, Clone)]
pub struct Connected {
    /// The address actually connected to.
    pub peer: SocketAddr,
    /// Our end of the connection (its source address), if the OS told us.
    pub local: Option<SocketAddr>,
    /// Whether TLS is in use.
    pub tls: bool,
}

impl LegEndpoint {
    /// Validate `config` and prepare TLS.
    pub fn new(
        config: &LegConfig,
        max_message: usize,
        timeout: Duration,
    ) -> Result<LegEndpoint, LegError> {
        let bad = |reason| LegError::InvalidUrl {
            url: config.url.clone(),
            reason,
        };
        let uri: Uri = config.url.parse().map_err(|_| bad("not a URL"))?;
        let secure = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            _ => return Err(bad("the scheme must be ws or wss")),
        };
        let host = uri
            .host()
            .ok_or_else(|| bad("no host"))?
            .trim_matches(['[', ']'])
            .to_owned();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let tls = if secure {
            let name = config.sni.clone().unwrap_or_else(|| host.clone());
            let server =
                ServerName::try_from(name).map_err(|_| bad("the TLS server name is invalid"))?;
            Some((tls::connector(config).map_err(LegError::TlsSetup)?, server))
        } else {
            None
        };
        Ok(LegEndpoint {
            uri,
            host,
            port,
            connect_address: config.connect_address,
            tls,
            max_message,
            timeout,
            resolver: Arc::new(SystemResolver),
        })
    }

    /// Look the host up with `resolver` on every connect attempt (unless the config names
    /// a `connect_address`).
    pub fn with_resolver(self, resolver: Arc<dyn Resolve>) -> LegEndpoint {
        LegEndpoint { resolver, ..self }
    }

    /// The URL's host name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Connect and upgrade. `prepare` is called on the socket before it connects (the driver
    /// sets the firewall mark there).
    pub async fn connect(
        &self,
        prepare: &(dyn Fn(&TcpSocket) -> std::io::Result<()> + Sync),
    ) -> Result<(LegStream, Connected), LegError> {
        match tokio::time::timeout(self.timeout, self.connect_inner(prepare)).await {
            Ok(result) => result,
            Err(_) => Err(LegError::Timeout(self.timeout)),
        }
    }

    async fn connect_inner(
        &self,
        prepare: &(dyn Fn(&TcpSocket) -> std::io::Result<()> + Sync),
    ) -> Result<(LegStream, Connected), LegError> {
        let (addr, tcp) = self.connect_tcp(prepare).await?;
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().ok();
        let mut io: Box<dyn Io> = match &self.tls {
            Some((connector, server)) => {
                let tls = connector.connect(server.clone(), tcp).await;
                Box::new(tls.map_err(|source| LegError::Tls {
                    server: server.to_str().into_owned(),
                    source,
                })?)
            }
            None => Box::new(tcp),
        };
        let read = ws::upgrade(&mut io, &self.uri).await?;
        let ws = LegStream {
            io,
            read,
            max_message: self.max_message,
        };
        Ok((
            ws,
            Connected {
                peer: addr,
                local,
                tls: self.tls.is_some(),
            },
        ))
    }

    /// Resolve (afresh on every attempt) and connect to the first address that answers.
    async fn connect_tcp(
        &self,
        prepare: &(dyn Fn(&TcpSocket) -> std::io::Result<()> + Sync),
    ) -> Result<(SocketAddr, TcpStream), LegError> {
        let addrs = self.resolve().await?;
        // Every address gets a share of the attempt's time, so one black hole cannot use
        // it all.
        let share = self.timeout / u32::try_from(addrs.len()).unwrap_or(u32::MAX).max(1);
        let mut last = None;
        for &addr in &addrs {
            let attempt = tokio::time::timeout(share, connect_one(addr, prepare)).await;
            let attempt = attempt.unwrap_or_else(|_| {
                let source = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
                Err(LegError::Connect { addr, source })
            });
            match attempt {
                Ok(tcp) => {
                    tracing::info!(host = %self.host, %addr, resolved = ?addrs, "leg address chosen");
                    return Ok((addr, tcp));
                }
                Err(e) => {
                    tracing::warn!(host = %self.host, "{e}; trying the next address");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| LegError::Resolve {
            host: self.host.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
        }))
    }

    async fn resolve(&self) -> Result<Vec<SocketAddr>, LegError> {
        if let Some(addr) = self.connect_address {
            return Ok(vec![addr]);
        }
        let resolve_err = |source| LegError::Resolve {
            host: self.host.clone(),
            source,
        };
        let addrs = self
            .resolver
            .resolve(&self.host, self.port)
            .await
            .map_err(resolve_err)?;
        if addrs.is_empty() {
            let none = std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses");
            return Err(resolve_err(none));
        }
        Ok(addrs)
    }
}

async fn connect_one(
    addr: SocketAddr,
    prepare: &(dyn Fn(&TcpSocket) -> std::io::Result<()> + Sync),
) -> Result<TcpStream, LegError> {
    let connect_err = |source| LegError::Connect { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(connect_err)?;
    prepare(&socket).map_err(connect_err)?;
    socket.connect(addr).await.map_err(connect_err)
}
