//! The leg listeners: TCP (+ optional TLS) → HTTP/1.1 → WebSocket upgrade on a leg's path.
//!
//! The node must look like an ordinary web server to anyone who is not a client: every
//! request that is not a well-formed WebSocket upgrade gets a plain `404 Not Found` from a
//! real HTTP implementation (hyper) and no protocol bytes. A WebSocket upgrade is accepted
//! on every path, and on a path that names no leg (a *decoy*) the session layer answers
//! exactly as a leg path answers anyone who is not a client, so a prober cannot tell a
//! leg path from any other (issue 20 §6). A peer that
//! does not finish TLS and the upgrade within `upgrade_timeout` is disconnected, and one
//! whose request head is too large gets hyper's `431`; both are counted in `limits_hit`
//! (`upgrade_timeout`, `upgrade_too_large`).
//!
//! Accepted legs are handed to the session layer as [`LegSocket`]s over a bounded channel;
//! when the session layer is saturated the connection is dropped rather than queued.

pub mod proxies;
#[cfg(test)]
mod tests;
pub mod tls;
pub mod ws;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::admin::ReasonLabel;
use crate::session::SessionThreads;

/// Where the listener counts connections it ended for a limit (the admin's `limits_hit`).
pub type LimitsHit = prometheus_client::metrics::family::Family<
    ReasonLabel,
    prometheus_client::metrics::counter::Counter,
>;

/// Which half of a session a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leg {
    /// Client → exit ("Domain A").
    Up,
    /// Exit → client ("Domain B").
    Down,
}

impl Leg {
    /// The name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Leg::Up => "up",
            Leg::Down => "down",
        }
    }
}

/// The upgraded transport of a leg.
pub type LegStream = ws::WsStream<LegIo>;

/// The connection under a leg's WebSocket: TCP or TLS, after the HTTP upgrade.
pub type LegIo = TokioIo<hyper::upgrade::Upgraded>;

/// A freshly upgraded leg connection, not yet authenticated.
#[derive(Debug)]
pub struct LegSocket {
    /// Which leg the path named.
    pub leg: Leg,
    /// The TCP peer (a CDN or proxy address when one is in front).
    pub peer: SocketAddr,
    /// The client's address: the peer's, or the one a trusted proxy passed
    /// ([`proxies::TrustedProxies`]).
    pub client: IpAddr,
    /// Whether TLS was terminated here.
    pub tls: bool,
    /// The session thread whose reactor serves the socket, if it was placed on one
    /// ([`crate::session::SessionThreads`]).
    pub home: Option<usize>,
    /// The path names no leg: the socket is answered like a leg to anyone who is not a
    /// client, and never becomes one.
    pub decoy: bool,
    /// The WebSocket.
    pub ws: LegStream,
}

/// How one listening socket routes paths to legs.
#[derive(Debug, Clone)]
pub struct Routes {
    /// `(path, leg)` pairs; a listener shared by both legs has two.
    pub paths: Vec<(String, Leg)>,
}

impl Routes {
    fn leg_for(&self, path: &str) -> Option<Leg> {
        self.paths
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, leg)| *leg)
    }
}

/// Listener limits (from `[limits]`).
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// TLS + HTTP upgrade deadline.
    pub upgrade_timeout: Duration,
    /// Largest WebSocket message (one protocol record).
    pub max_message_size: usize,
}

/// Accept connections on `listener` until the task is dropped, sending upgraded legs to
/// `sink`; connections ended by a limit are counted in `limits_hit`. With `threads`, each
/// connection is set up on the session thread it is placed on.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    routes: Arc<Routes>,
    proxies: Arc<proxies::TrustedProxies>,
    limits: ListenerLimits,
    sink: mpsc::Sender<LegSocket>,
    limits_hit: LimitsHit,
    threads: Option<Arc<SessionThreads>>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let conn = Conn {
            peer,
            routes: routes.clone(),
            proxies: proxies.clone(),
            limits,
            sink: sink.clone(),
            limits_hit: limits_hit.clone(),
            home: None,
        };
        let tls = tls.clone();
        match &threads {
            Some(threads) => {
                threads.place_connection(tcp, move |tcp, home| Conn { home, ..conn }.run(tcp, tls))
            }
            None => drop(tokio::spawn(conn.run(tcp, tls))),
        }
    }
}

struct Conn {
    peer: SocketAddr,
    routes: Arc<Routes>,
    proxies: Arc<proxies::TrustedProxies>,
    limits: ListenerLimits,
    sink: mpsc::Sender<LegSocket>,
    limits_hit: LimitsHit,
    /// The session thread the connection was placed on.
    home: Option<usize>,
}

impl Conn {
    async fn run(self, tcp: TcpStream, tls: Option<TlsAcceptor>) {
        let deadline = tokio::time::Instant::now() + self.limits.upgrade_timeout;
        let Some(acceptor) = tls else {
            return self.serve_http(tcp, false, deadline).await;
        };
        match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => self.serve_http(stream, true, deadline).await,
            Ok(Err(e)) => tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed"),
            Err(_) => {
                tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                hit(&self.limits_hit, "upgrade_timeout");
            }
        }
    }

    /// Serve HTTP/1.1 on one connection until it upgrades, closes, or the deadline passes.
    async fn serve_http<S>(self, io: S, tls: bool, deadline: tokio::time::Instant)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = self.peer;
        let limits_hit = self.limits_hit.clone();
        let this = Arc::new(self);
        let service = hyper::service::service_fn(move |req| {
            let this = this.clone();
            async move { Ok::<_, std::convert::Infallible>(this.handle(req, tls)) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        // The upgrade must complete by the deadline; after it hyper hands the socket over
        // and this future resolves, so the timeout never cuts an established leg.
        match tokio::time::timeout_at(deadline, conn).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "HTTP connection error");
                if e.is_timeout() {
                    hit(&limits_hit, "upgrade_timeout");
                } else if e.is_parse_too_large() {
                    hit(&limits_hit, "upgrade_too_large");
                }
            }
            Err(_) => {
                tracing::debug!(%peer, "upgrade timed out");
                hit(&limits_hit, "upgrade_timeout");
            }
        }
    }

    fn handle(&self, req: Request<Incoming>, tls: bool) -> Response<Full<Bytes>> {
        let Some(accept) = websocket_accept(&req) else {
            return not_found();
        };
        let (leg, decoy) = match self.routes.leg_for(req.uri().path()) {
            Some(leg) => (leg, false),
            None => (self.routes.paths.first().map_or(Leg::Up, |p| p.1), true),
        };
        let (peer, sink, max) = (self.peer, self.sink.clone(), self.limits.max_message_size);
        let home = self.home;
        let client = self.proxies.client(peer, req.headers());
        tokio::spawn(async move {
            let upgraded = match hyper::upgrade::on(req).await {
                Ok(u) => u,
                Err(e) => return tracing::debug!(%peer, error = %e, "upgrade failed"),
            };
            let ws = ws::WsStream::new(TokioIo::new(upgraded), max);
            let sock = LegSocket {
                leg,
                peer,
                client,
                tls,
                home,
                decoy,
                ws,
            };
            if sink.try_send(sock).is_err() {
                tracing::warn!(%peer, leg = leg.as_str(), "session layer saturated; dropping leg");
            }
        });
        switching_protocols(&accept)
    }
}

fn hit(limits_hit: &LimitsHit, reason: &'static str) {
    limits_hit.get_or_create(&ReasonLabel { reason }).inc();
}

/// The `Sec-WebSocket-Accept` value if `req` is a valid RFC 6455 upgrade request.
fn websocket_accept(req: &Request<Incoming>) -> Option<HeaderValue> {
    let h = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    let ok = req.method() == hyper::Method::GET
        && has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket")
        && h.get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v == "13");
    let key = h.get(header::SEC_WEBSOCKET_KEY).filter(|_| ok)?;
    HeaderValue::from_str(&derive_accept_key(key.as_bytes())).ok()
}

fn switching_protocols(accept: &HeaderValue) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept.clone());
    resp
}

/// What any web server says about a page it does not have.
fn not_found() -> Response<Full<Bytes>> {
    let body = "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<center><h1>404 Not Found</h1></center>\r\n</body>\r\n</html>\r\n";
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    resp
}
