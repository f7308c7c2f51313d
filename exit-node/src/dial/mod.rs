//! Dialling destinations for clients: resolve, check every address against the egress
//! policy, ask the kernel whether the address is this host's (`crate::own::is_local`),
//! then connect to the checked address (never re-resolve between check and dial).
//!
//! TCP races the allowed addresses happy-eyeballs style (RFC 8305 §5: alternate families,
//! IPv6 first, a new attempt every 250 ms or as soon as the previous one fails; the first
//! connection wins and the others are dropped).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpStream, UdpSocket};
use tokio::task::JoinSet;

use crate::dns::{Dns, DnsError};
use crate::own;
use crate::policy::{EgressPolicy, Refusal, Transport, Verdict};

/// Where a client wants to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A literal address.
    Addr(SocketAddr),
    /// A host name resolved at the exit, and a port.
    Name(String, u16),
}

/// Why a destination could not be reached. Each maps to a stream reset reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The policy refused every candidate address.
    #[error("refused by egress policy: {0}")]
    Refused(Refusal),
    /// The name did not resolve.
    #[error(transparent)]
    Resolve(#[from] DnsError),
    /// The name resolved to no address.
    #[error("{0} has no addresses")]
    NoAddresses(String),
    /// No attempt connected before the deadline.
    #[error("connection to {0} timed out")]
    Timeout(String),
    /// Every attempt failed; the last error is kept.
    #[error("connection to {target} failed: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
}

/// What a client may dial and how.
#[derive(Debug, Clone)]
pub struct Dialer {
    /// The egress policy.
    pub policy: std::sync::Arc<EgressPolicy>,
    /// The resolver for names.
    pub dns: Dns,
    /// Overall TCP connect deadline.
    pub connect_timeout: Duration,
}

/// Delay between happy-eyeballs attempts (RFC 8305 recommends 250 ms).
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

impl Dialer {
    /// The addresses `client` may use for `target`, canonical and in dial order.
    pub async fn allowed_addrs(
        &self,
        client: &[u8; 32],
        target: &Target,
        transport: Transport,
    ) -> Result<Vec<SocketAddr>, DialError> {
        let candidates = match target {
            Target::Addr(addr) => vec![*addr],
            Target::Name(host, port) => {
                let ips = self.dns.lookup_ip(host).await?;
                interleave(ips)
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, *port))
                    .collect()
            }
        };
        let mut first_refusal = None;
        let mut allowed = Vec::new();
        for addr in candidates {
            let verdict = match self.policy.check(client, addr, transport) {
                Verdict::Allow(checked) => self.kernel_check(checked, target)?,
                refused => refused,
            };
            match verdict {
                Verdict::Allow(canonical) if !allowed.contains(&canonical) => {
                    allowed.push(canonical)
                }
                Verdict::Allow(_) => {}
                Verdict::Refuse(r) => {
                    first_refusal.get_or_insert(r);
                }
            }
        }
        match (allowed.is_empty(), first_refusal) {
            (false, _) => Ok(allowed),
            (true, Some(refusal)) => Err(DialError::Refused(refusal)),
            (true, None) => Err(DialError::NoAddresses(describe(target))),
        }
    }

    /// The kernel's word on an address the policy allowed: one that a local bind (or its
    /// route) says is this host's is refused like any own address — an address added since
    /// the watcher's last list, or a range routed `local` that no interface lists — unless
    /// `egress.allow_own_addresses` names it.
    fn kernel_check(&self, addr: SocketAddr, target: &Target) -> Result<Verdict, DialError> {
        if self.policy.own_address_allowed(addr.ip()) {
            return Ok(Verdict::Allow(addr));
        }
        match own::is_local(addr.ip()) {
            Ok(false) => Ok(Verdict::Allow(addr)),
            Ok(true) => {
                tracing::debug!(ip = %addr.ip(), "the kernel says this address is local");
                Ok(Verdict::Refuse(Refusal::OwnAddress))
            }
            Err(source) => Err(DialError::Connect {
                target: describe(target),
                source,
            }),
        }
    }

    /// Connect a TCP stream for `client` to `target`.
    pub async fn connect_tcp(
        &self,
        client: &[u8; 32],
        target: &Target,
    ) -> Result<TcpStream, DialError> {
        self.connect_tcp_limited(client, target, || Some(())).await
    }

    /// [`Dialer::connect_tcp`] where every attempt after the first needs a guard from
    /// `more` (a descriptor permit, held until the attempt ends); without one, no further
    /// attempt starts until a running one ends.
    pub async fn connect_tcp_limited<G: Send + 'static>(
        &self,
        client: &[u8; 32],
        target: &Target,
        more: impl FnMut() -> Option<G>,
    ) -> Result<TcpStream, DialError> {
        let addrs = self.allowed_addrs(client, target, Transport::Tcp).await?;
        let race = race(addrs, more);
        match tokio::time::timeout(self.connect_timeout, race).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Ok(Err(source)) => Err(DialError::Connect {
                target: describe(target),
                source,
            }),
            Err(_) => Err(DialError::Timeout(describe(target))),
        }
    }

    /// A connected UDP socket for `client`'s flow to `target` (one socket per flow: the
    /// exit's UDP NAT).
    pub async fn connect_udp(
        &self,
        client: &[u8; 32],
        target: &Target,
    ) -> Result<UdpSocket, DialError> {
        let addrs = self.allowed_addrs(client, target, Transport::Udp).await?;
        let connect_err = |source| DialError::Connect {
            target: describe(target),
            source,
        };
        let addr = addrs[0];
        let bind: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .expect("literal wildcard address");
        let socket = UdpSocket::bind(bind).await.map_err(connect_err)?;
        socket.connect(addr).await.map_err(connect_err)?;
        Ok(socket)
    }
}

/// Alternate address families, IPv6 first, keeping the resolver's order within a family.
fn interleave(ips: Vec<IpAddr>) -> Vec<IpAddr> {
    let (v6, v4): (Vec<_>, Vec<_>) = ips.into_iter().partition(IpAddr::is_ipv6);
    let mut out = Vec::with_capacity(v6.len() + v4.len());
    let (mut a, mut b) = (v6.into_iter(), v4.into_iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => return out,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
}

/// Staggered connection attempts; the first success wins. The first attempt uses the
/// caller's descriptor; each later one holds a guard from `more` while it runs.
async fn race<G: Send + 'static>(
    addrs: Vec<SocketAddr>,
    mut more: impl FnMut() -> Option<G>,
) -> std::io::Result<TcpStream> {
    let mut attempts = JoinSet::new();
    let mut pending = addrs.into_iter().peekable();
    let mut last_err = std::io::Error::new(std::io::ErrorKind::NotFound, "no address to try");
    loop {
        // `Some(None)`: the caller's descriptor (no attempt holds it now).
        let guard = if attempts.is_empty() {
            Some(None)
        } else if pending.peek().is_some() {
            more().map(Some)
        } else {
            None
        };
        if let Some(guard) = guard
            && let Some(addr) = pending.next()
        {
            attempts.spawn(async move {
                let _guard = guard;
                TcpStream::connect(addr).await
            });
        }
        let next_attempt = tokio::time::sleep(ATTEMPT_DELAY);
        tokio::select! {
            done = attempts.join_next() => match done {
                Some(Ok(Ok(stream))) => return Ok(stream),
                Some(Ok(Err(e))) => last_err = e,
                Some(Err(join)) => last_err = std::io::Error::other(join),
                None if pending.len() == 0 => return Err(last_err),
                None => {}
            },
            _ = next_attempt, if pending.len() > 0 => {}
        }
    }
}

fn describe(target: &Target) -> String {
    match target {
        Target::Addr(addr) => addr.to_string(),
        Target::Name(host, port) => format!("{host}:{port}"),
    }
}

#[cfg(test)]
mod tests;
