//! The admin listener: `/metrics` (Prometheus text format), `/healthz`, `/readyz`, and the
//! session list/kick endpoint (`GET /sessions`, `POST /sessions/<id>/kick`).
//!
//! It is meant for loopback or a management network. With `[admin] token_file` every path
//! but `/healthz` and `/readyz` (which load balancers probe) needs
//! `Authorization: Bearer <token>`; a listener on anything but loopback must have one (the
//! config refuses it otherwise), because clients' traffic leaves from this host.

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

/// How long a kick waits for its session to end before answering 202.
const KICK_WAIT: Duration = Duration::from_secs(3);
/// The shortest token accepted from `[admin] token_file`.
pub const MIN_TOKEN_LEN: usize = 16;

/// The admin listener's bearer token. Never printed.
#[derive(Clone)]
pub struct AdminToken(Arc<str>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// The token in `text` (a file's contents, surrounding whitespace ignored); an error
    /// says why it cannot be one.
    pub fn parse(text: &str) -> Result<AdminToken, String> {
        let token = text.trim();
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "the token must be at least {MIN_TOKEN_LEN} characters (e.g. `openssl rand -hex 32`)"
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token must be printable ASCII without spaces".into());
        }
        Ok(AdminToken(token.into()))
    }

    /// Whether `header` is `Bearer <this token>` (compared in constant time).
    fn admits(&self, header: Option<&HeaderValue>) -> bool {
        let presented = header
            .and_then(|h| h.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        bool::from(presented.ct_eq(self.0.as_bytes()))
    }
}

/// A leg direction, as a metric label.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Direction {
    /// Client → exit.
    Up,
    /// Exit → client.
    Down,
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        encoder.write_str(match self {
            Direction::Up => "up",
            Direction::Down => "down",
        })
    }
}

/// Label set with one `direction`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// The direction.
    pub direction: Direction,
}

/// Label set with one `reason`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// A short, fixed reason name (never client-controlled text).
    pub reason: &'static str,
}

/// Every metric the node exports. Cheap to clone (shared atomics).
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Sessions in the store.
    pub sessions: Gauge,
    /// Open streams across sessions.
    pub streams: Gauge,
    /// Streams whose destination stopped reading (PROTOCOL.md §6.2), across sessions.
    pub paused_streams: Gauge,
    /// Upload bytes those streams hold unread.
    pub paused_stream_bytes: Gauge,
    /// Credit those streams hold: their bytes plus what their clients may still send.
    pub paused_stream_credit: Gauge,
    /// Attached legs by direction.
    pub legs: Family<DirectionLabel, Gauge>,
    /// Tunnel payload bytes by direction.
    pub bytes: Family<DirectionLabel, Counter>,
    /// Accepted handshakes.
    pub handshakes_accepted: Counter,
    /// Dropped handshake or attach attempts by reason.
    pub handshakes_rejected: Family<ReasonLabel, Counter>,
    /// Attaches accepted although their resume point lay behind the acknowledgements
    /// already received (PROTOCOL.md §3.6), by leg: overtaken by the other leg's records,
    /// or withheld by a relay and released late.
    pub attaches_overtaken: Family<DirectionLabel, Counter>,
    /// Destinations refused by the egress policy, by reason.
    pub egress_refused: Family<ReasonLabel, Counter>,
    /// Limits hit, by limit.
    pub limits_hit: Family<ReasonLabel, Counter>,
    /// DNS queries answered for clients.
    pub dns_queries: Counter,
}

impl Metrics {
    fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("half_tunnel_exit");
        r.register(
            "sessions",
            "Sessions in the session store",
            self.sessions.clone(),
        );
        r.register(
            "streams",
            "Open streams across all sessions",
            self.streams.clone(),
        );
        r.register(
            "paused_streams",
            "Streams whose destination stopped reading for a second or more",
            self.paused_streams.clone(),
        );
        r.register(
            "paused_stream_bytes",
            "Upload bytes held unread by paused streams",
            self.paused_stream_bytes.clone(),
        );
        r.register(
            "paused_stream_credit",
            "Stream credit held by paused streams (held bytes plus credit not yet used)",
            self.paused_stream_credit.clone(),
        );
        r.register("legs", "Attached legs by direction", self.legs.clone());
        r.register(
            "tunnel_bytes",
            "Tunnel payload bytes by direction",
            self.bytes.clone(),
        );
        r.register(
            "handshakes_accepted",
            "Handshakes that created a session",
            self.handshakes_accepted.clone(),
        );
        r.register(
            "handshakes_rejected",
            "Dropped handshake or attach attempts",
            self.handshakes_rejected.clone(),
        );
        r.register(
            "attaches_overtaken",
            "Attaches accepted whose resume point was behind the acknowledgements already \
             received (overtaken by the other leg, or withheld by a relay)",
            self.attaches_overtaken.clone(),
        );
        r.register(
            "egress_refused",
            "Destinations refused by the egress policy",
            self.egress_refused.clone(),
        );
        r.register(
            "limits_hit",
            "Requests refused because a limit was reached",
            self.limits_hit.clone(),
        );
        r.register(
            "dns_queries",
            "DNS queries answered for clients",
            self.dns_queries.clone(),
        );
        r
    }

    /// The Prometheus/OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry());
        out
    }
}

/// What the admin endpoint needs from the session store.
pub trait SessionAdmin: Send + Sync + 'static {
    /// One JSON object per session (id, client name, legs, streams, bytes).
    fn list_json(&self) -> String;
    /// Order a session to end by id; false if there is no such session.
    fn kick(&self, id: &str) -> bool;
    /// Whether the session `id` is still running.
    fn is_running(&self, _id: &str) -> bool {
        false
    }
    /// Bring the gauges that sum over sessions up to date before a scrape.
    fn refresh(&self, _metrics: &Metrics) {}
}

/// Shared state of the admin endpoint.
#[derive(Clone)]
pub struct Admin {
    /// Metrics to export.
    pub metrics: Metrics,
    /// Set once every leg listener is bound and the node accepts sessions.
    pub ready: Arc<AtomicBool>,
    /// The session store.
    pub sessions: Arc<dyn SessionAdmin>,
    /// The bearer token every path but the health checks needs, if configured.
    pub token: Option<AdminToken>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}

/// Serve the admin endpoint until the task is dropped.
pub async fn serve(listener: TcpListener, admin: Admin) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, std::convert::Infallible>(admin.handle(&req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
        });
    }
}

impl Admin {
    async fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        let health = req.method() == Method::GET && matches!(path, "/healthz" | "/readyz");
        if let Some(token) = &self.token
            && !health
            && !token.admits(req.headers().get(AUTHORIZATION))
        {
            let mut resp = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
            resp.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
        match (req.method(), path) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") if self.ready.load(Ordering::Relaxed) => {
                text(StatusCode::OK, "ready\n")
            }
            (&Method::GET, "/readyz") => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            (&Method::GET, "/metrics") => {
                self.sessions.refresh(&self.metrics);
                let mut resp = text(StatusCode::OK, &self.metrics.encode());
                let ct = "application/openmetrics-text; version=1.0.0; charset=utf-8";
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
                resp
            }
            (&Method::GET, "/sessions") => {
                let mut resp = text(StatusCode::OK, &self.sessions.list_json());
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                resp
            }
            (&Method::POST, p) => match p
                .strip_prefix("/sessions/")
                .and_then(|r| r.strip_suffix("/kick"))
            {
                Some(id) if self.sessions.kick(id) => self.closed(id).await,
                Some(_) => text(StatusCode::NOT_FOUND, "no such session\n"),
                None => text(StatusCode::NOT_FOUND, "not found\n"),
            },
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

impl Admin {
    /// After a kick: 200 once the session has ended, 202 if it is still ending after
    /// `KICK_WAIT` (the order stands; it cannot be lost).
    async fn closed(&self, id: &str) -> Response<Full<Bytes>> {
        let deadline = tokio::time::Instant::now() + KICK_WAIT;
        while self.sessions.is_running(id) {
            if tokio::time::Instant::now() >= deadline {
                return text(
                    StatusCode::ACCEPTED,
                    "close ordered; the session is still ending\n",
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        text(StatusCode::OK, "closed\n")
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
