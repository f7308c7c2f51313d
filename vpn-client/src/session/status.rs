//! `vpn-client status`: a snapshot of the driver, served as one JSON line on a Unix socket.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::{Driver, StatusRequest};
use crate::backoff::Breaker;
use crate::flows::{BridgeStats, FlowCounts, PausedFlow};

/// Paused flows listed by the human-readable `status` (JSON has them all).
const PAUSED_SHOWN: usize = 8;

/// One leg in `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LegStatus {
    /// "up" or "down".
    pub leg: String,
    /// The configured URL.
    pub url: String,
    /// down, connecting, connected, handshaking, attaching, up.
    pub state: String,
    /// The address last connected to.
    pub peer: Option<String>,
    /// Whether TLS is used.
    pub tls: Option<bool>,
    /// Connection attempts so far.
    pub connects: u64,
    /// Times attached to the current session.
    pub attaches: u64,
    /// Consecutive failures.
    pub failures: u32,
    /// Whether the circuit breaker is open.
    pub breaker_open: bool,
    /// Why it last failed (cleared once it is attached again).
    pub last_error: Option<String>,
    /// Why its transport was last dropped and reconnected (kept after it is back).
    #[serde(default)]
    pub last_reconnect_reason: Option<String>,
    /// Reconnects ordered by the stall monitor (no data moving while flows waited).
    #[serde(default)]
    pub stall_reconnects: u64,
    /// Record bytes sent and received on it (current session).
    pub bytes_tx: u64,
    /// Record bytes received.
    pub bytes_rx: u64,
}

/// DNS counters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DnsStatus {
    /// Queries intercepted.
    pub queries: u64,
    /// Answers delivered.
    pub answers: u64,
    /// Queries dropped (malformed, limits).
    pub dropped: u64,
    /// Queries that expired unanswered.
    pub expired: u64,
}

/// Packets read from the TUN that the userspace stack dropped, by reason (totals
/// since start; the periodic stats line logs what changed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedStatus {
    /// Broadcast, multicast or unspecified addresses (mDNS, SSDP, LAN discovery…):
    /// never tunnelled, never leaked.
    pub non_unicast: u64,
    /// IP fragments (never reassembled).
    pub fragment: u64,
    /// Larger than the TUN MTU.
    pub oversized: u64,
    /// Other protocols, IPv6 extension headers, non-echo ICMP.
    pub unsupported: u64,
    /// Unparseable or with a wrong checksum.
    pub malformed: u64,
}

impl DroppedStatus {
    /// The counters of a netstack.
    pub fn of(ns: &netstack::Stats) -> Self {
        DroppedStatus {
            non_unicast: ns.dropped_non_unicast,
            fragment: ns.dropped_fragment,
            oversized: ns.dropped_oversized,
            unsupported: ns.dropped_unsupported,
            malformed: ns.dropped_malformed + ns.dropped_checksum,
        }
    }

    /// What grew since `before`, or `None` if nothing did.
    pub fn since(&self, before: &Self) -> Option<Self> {
        let d = DroppedStatus {
            non_unicast: self.non_unicast - before.non_unicast,
            fragment: self.fragment - before.fragment,
            oversized: self.oversized - before.oversized,
            unsupported: self.unsupported - before.unsupported,
            malformed: self.malformed - before.malformed,
        };
        (d != DroppedStatus::default()).then_some(d)
    }
}

/// Everything `status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The session id, if a session exists.
    pub session: Option<String>,
    /// Sessions established since start.
    pub sessions: u64,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Up leg, then down leg.
    pub legs: Vec<LegStatus>,
    /// Smoothed loop RTT (up then down leg) in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Open streams.
    pub streams: usize,
    /// Records re-sent after re-attaches.
    pub retransmitted: u64,
    /// Flow counts.
    pub flows: FlowCountsStatus,
    /// Bridge counters (bytes each way, refusals…).
    pub traffic: BridgeStatsStatus,
    /// App bytes per second each way, averaged since the last periodic stats line (or
    /// since start when those are off).
    #[serde(default)]
    pub throughput: Throughput,
    /// DNS.
    pub dns: DnsStatus,
    /// Packets from the TUN that were not tunnelled, by reason.
    #[serde(default)]
    pub dropped: DroppedStatus,
    /// TCP flows whose app stopped reading, most held first (PROTOCOL.md §6.2): they
    /// hold only their own credit, never the rest of the tunnel.
    #[serde(default)]
    pub paused: Vec<PausedFlow>,
    /// Whether the kill switch is on.
    pub kill_switch: bool,
    /// The TUN's offloads.
    #[serde(default)]
    pub tun: TunStatus,
}

/// What the TUN offloads.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct TunStatus {
    /// Checksums and TCP segments ([`platform::TunOffload::TcpSegments`]).
    pub offload: bool,
    /// TCP segments read coalesced (GSO packets) since start.
    pub coalesced_segments: u64,
    /// TCP segments written coalesced into GSO packets since start.
    #[serde(default)]
    pub coalesced_segments_written: u64,
}

/// Bytes per second each way.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Throughput {
    /// App → exit.
    pub up_bytes_per_s: u64,
    /// Exit → app.
    pub down_bytes_per_s: u64,
}

/// Serializable copy of [`FlowCounts`].
pub type FlowCountsStatus = FlowCounts;
/// Serializable copy of [`BridgeStats`].
pub type BridgeStatsStatus = BridgeStats;

impl Driver {
    pub(super) fn status(&self, now: Instant) -> Status {
        let stats = self.conn.as_ref().map(|c| c.stats());
        let legs = self
            .legs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let l = stats.as_ref().map(|st| st.legs[i]).unwrap_or_default();
                LegStatus {
                    leg: s.leg.to_string(),
                    url: s.url.clone(),
                    state: s.phase.name().into(),
                    peer: s.peer.as_ref().map(|p| p.peer.to_string()),
                    tls: s.peer.as_ref().map(|p| p.tls),
                    connects: s.connects,
                    attaches: l.attaches,
                    failures: s.backoff.failures(),
                    breaker_open: s.backoff.breaker() == Breaker::Open,
                    last_error: s.last_error.clone(),
                    last_reconnect_reason: s.last_reconnect.clone(),
                    stall_reconnects: s.stalls,
                    bytes_tx: l.bytes_tx,
                    bytes_rx: l.bytes_rx,
                }
            })
            .collect();
        let ns = self.stack.stats();
        let (up_bytes_per_s, down_bytes_per_s) = self.rates(now);
        Status {
            session: self.conn.as_ref().map(|c| c.session_id().to_string()),
            sessions: self.sessions,
            uptime_secs: now.saturating_duration_since(self.started).as_secs(),
            legs,
            rtt_ms: stats
                .as_ref()
                .and_then(|s| s.rtt)
                .map(|r| r.as_secs_f64() * 1e3),
            streams: stats.as_ref().map_or(0, |s| s.streams),
            retransmitted: stats.as_ref().map_or(0, |s| s.retransmitted),
            flows: self.bridge.counts(),
            traffic: self.bridge.stats(),
            throughput: Throughput {
                up_bytes_per_s,
                down_bytes_per_s,
            },
            dns: DnsStatus {
                queries: ns.dns_queries,
                answers: self.bridge.stats().dns_answers,
                dropped: ns.dns_dropped,
                expired: ns.dns_expired,
            },
            dropped: DroppedStatus::of(ns),
            paused: self
                .conn
                .as_ref()
                .map(|c| self.bridge.paused(c, now))
                .unwrap_or_default(),
            kill_switch: self.kill_switch,
            tun: TunStatus {
                offload: self.stack.config().tcp_checksum_offload,
                coalesced_segments: self.tun_coalesced,
                coalesced_segments_written: self.tun_coalesced_out,
            },
        }
    }
}

impl Status {
    /// The human-readable form.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let session = self.session.as_deref().unwrap_or("none");
        // Writing to a String cannot fail.
        let _ = writeln!(
            s,
            "session:     {session} (sessions since start: {}, up {} s)",
            self.sessions, self.uptime_secs
        );
        for l in &self.legs {
            let peer = l.peer.as_deref().unwrap_or("-");
            let tls = match l.tls {
                Some(true) => "TLS",
                Some(false) => "plain",
                None => "-",
            };
            let _ = writeln!(
                s,
                "leg {:<5}    {:<11} {} via {peer} ({tls}); attaches {}, connects {}, sent {} B, received {} B",
                l.leg, l.state, l.url, l.attaches, l.connects, l.bytes_tx, l.bytes_rx
            );
            if let Some(e) = &l.last_error {
                let breaker = if l.breaker_open { ", breaker open" } else { "" };
                let _ = writeln!(
                    s,
                    "             last error: {e} ({} failures{breaker})",
                    l.failures
                );
            }
            if let Some(why) = &l.last_reconnect_reason {
                let _ = writeln!(
                    s,
                    "             last reconnect: {why} ({} stall reconnects)",
                    l.stall_reconnects
                );
            }
        }
        let rtt = self.rtt_ms.map_or("-".into(), |r| format!("{r:.1} ms"));
        let t = &self.traffic;
        let _ = writeln!(s, "rtt:         {rtt}");
        let _ = writeln!(
            s,
            "flows:       {} TCP, {} UDP, {} streams, {} DNS pending",
            self.flows.tcp, self.flows.udp, self.streams, self.flows.dns_pending
        );
        let _ = writeln!(
            s,
            "traffic:     {} B up, {} B down; {} TCP opened, {} refused, {} IPv6 refused",
            t.bytes_up, t.bytes_down, t.tcp_opened, t.tcp_refused, t.ipv6_refused
        );
        let _ = writeln!(
            s,
            "throughput:  {} B/s up, {} B/s down",
            self.throughput.up_bytes_per_s, self.throughput.down_bytes_per_s
        );
        let _ = writeln!(
            s,
            "dns:         {} queries, {} answers, {} dropped, {} expired",
            self.dns.queries, self.dns.answers, self.dns.dropped, self.dns.expired
        );
        let d = &self.dropped;
        let _ = writeln!(
            s,
            "dropped:     {} broadcast/multicast, {} fragments, {} oversized, {} unsupported, {} malformed",
            d.non_unicast, d.fragment, d.oversized, d.unsupported, d.malformed
        );
        let offload = if self.tun.offload {
            "checksums and TCP segments"
        } else {
            "none"
        };
        let _ = writeln!(
            s,
            "tun:         offload {offload}; {} coalesced TCP segments read, {} written",
            self.tun.coalesced_segments, self.tun.coalesced_segments_written
        );
        self.render_paused(&mut s);
        let ks = if self.kill_switch { "on" } else { "off" };
        let _ = writeln!(s, "kill switch: {ks}");
        s
    }
}

impl Status {
    fn render_paused(&self, s: &mut String) {
        if self.paused.is_empty() {
            let _ = writeln!(s, "paused:      none (every app reads its flows)");
            return;
        }
        let held: u64 = self.paused.iter().map(|p| p.held_bytes).sum();
        let credit: u64 = self.paused.iter().map(|p| p.credit_bytes).sum();
        let _ = writeln!(
            s,
            "paused:      {} flows not read by their apps hold {held} B (credit {credit} B)",
            self.paused.len()
        );
        for p in self.paused.iter().take(PAUSED_SHOWN) {
            let _ = writeln!(
                s,
                "             {} -> {}: {} B unread, credit {} B, for {} s",
                p.app, p.dst, p.held_bytes, p.credit_bytes, p.secs
            );
        }
        if self.paused.len() > PAUSED_SHOWN {
            let _ = writeln!(
                s,
                "             … {} more (--json lists all)",
                self.paused.len() - PAUSED_SHOWN
            );
        }
    }
}

/// Serve status requests on `path` (replacing a stale socket file) until the task ends.
pub fn serve(path: &Path, requests: mpsc::Sender<StatusRequest>) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let requests = requests.clone();
            tokio::spawn(async move {
                let (tx, rx) = oneshot::channel();
                if requests.send(tx).await.is_err() {
                    return;
                }
                if let Ok(status) = rx.await
                    && let Ok(mut line) = serde_json::to_vec(&status)
                {
                    line.push(b'\n');
                    let _ = sock.write_all(&line).await;
                }
            });
        }
    });
    Ok(())
}

/// Ask a running client for its status.
pub async fn query(path: &Path) -> anyhow::Result<Status> {
    let mut sock = UnixStream::connect(path).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach a running vpn-client at {}: {e} (is `vpn-client up` running?)",
            path.display()
        )
    })?;
    let mut text = String::new();
    sock.read_to_string(&mut text).await?;
    Ok(serde_json::from_str(text.trim())?)
}
