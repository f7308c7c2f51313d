//! Finding a leg's addresses, again on every connect attempt (CDN addresses change).
//!
//! Once `up` has pointed the system resolver into the tunnel, an ordinary lookup of a leg's
//! host would need the tunnel to find the tunnel. [`MarkedDns`] therefore asks the
//! nameservers the machine used *before* `up` itself, over UDP sockets carrying the
//! client's firewall mark, so the queries take the main routing table, outside the tunnel
//! (issue 5). [`SystemResolver`] (getaddrinfo) serves loopback tests and the first lookup.

use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

/// A boxed future of a lookup's answer.
pub type Lookup<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// Anything that turns a host name and port into addresses.
pub trait Resolve: Debug + Send + Sync {
    /// Every address of `host`, with `port`, in the order to try them.
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> Lookup<'a>;
}

/// The system's resolver (getaddrinfo, `/etc/hosts` included).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> Lookup<'a> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// DNS over UDP to fixed nameservers from sockets with an optional firewall mark.
#[derive(Debug, Clone)]
pub struct MarkedDns {
    servers: Vec<SocketAddr>,
    mark: Option<u32>,
    timeout: Duration,
}

impl MarkedDns {
    /// Ask `servers` (in turn) from sockets marked with `mark`, each query waiting at most
    /// `timeout`.
    pub fn new(servers: Vec<SocketAddr>, mark: Option<u32>, timeout: Duration) -> MarkedDns {
        MarkedDns {
            servers,
            mark,
            timeout,
        }
    }

    /// The nameservers the machine uses now, read from `resolv_conf` — or, when that only
    /// names systemd-resolved's local stub, from `resolved_upstream` (the stub itself would
    /// follow our own DNS settings into the tunnel). Port 53.
    pub fn system_servers(resolv_conf: &Path, resolved_upstream: &Path) -> Vec<SocketAddr> {
        let read = |p: &Path| nameservers(&std::fs::read_to_string(p).unwrap_or_default());
        let servers = read(resolv_conf);
        if servers.iter().all(IpAddr::is_loopback) {
            let upstream = read(resolved_upstream);
            if !upstream.is_empty() {
                return upstream.into_iter().map(|ip| (ip, 53).into()).collect();
            }
        }
        servers.into_iter().map(|ip| (ip, 53).into()).collect()
    }

    async fn query(&self, server: SocketAddr, msg: &[u8], id: u16) -> io::Result<Vec<IpAddr>> {
        let bind: SocketAddr = if server.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = tokio::net::UdpSocket::bind(bind).await?;
        if let Some(mark) = self.mark {
            platform::set_mark(&sock, mark).map_err(io::Error::other)?;
        }
        sock.connect(server).await?;
        sock.send(msg).await?;
        let mut buf = vec![0u8; 4096];
        let answer = async {
            loop {
                let n = sock.recv(&mut buf).await?;
                // Answers with another id are stale or forged: keep waiting.
                if let Some(ips) = dns::parse_answer(&buf[..n], id) {
                    return Ok(ips);
                }
            }
        };
        tokio::time::timeout(self.timeout, answer)
            .await
            .map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, format!("no answer from {server}"))
            })?
    }
}

impl Resolve for MarkedDns {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> Lookup<'a> {
        Box::pin(async move {
            if let Ok(ip) = host.parse::<IpAddr>() {
                return Ok(vec![SocketAddr::new(ip, port)]);
            }
            let mut last = io::Error::new(io::ErrorKind::NotFound, "no nameserver configured");
            for &server in &self.servers {
                let mut ips = Vec::new();
                for qtype in [dns::A, dns::AAAA] {
                    let id = rand_id();
                    let Some(msg) = dns::query(id, host, qtype) else {
                        return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad host name"));
                    };
                    match self.query(server, &msg, id).await {
                        Ok(found) => ips.extend(found),
                        Err(e) => last = e,
                    }
                }
                if !ips.is_empty() {
                    return Ok(ips
                        .into_iter()
                        .map(|ip| SocketAddr::new(ip, port))
                        .collect());
                }
            }
            Err(last)
        })
    }
}

/// `primary`, falling back to the last addresses that worked (first: the lookup made at
/// start, before the system resolver pointed into the tunnel) when it fails — e.g. for a
/// name only `/etc/hosts` knows.
#[derive(Debug)]
pub struct WithFallback<R> {
    primary: R,
    last_good: std::sync::Mutex<Vec<SocketAddr>>,
}

impl<R: Resolve> WithFallback<R> {
    /// `primary`, with `start` as the fallback until it answers.
    pub fn new(primary: R, start: Vec<SocketAddr>) -> WithFallback<R> {
        WithFallback {
            primary,
            last_good: std::sync::Mutex::new(start),
        }
    }
}

impl<R: Resolve> Resolve for WithFallback<R> {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> Lookup<'a> {
        Box::pin(async move {
            let fresh = self.primary.resolve(host, port).await;
            // A poisoned lock only means a panic elsewhere; the list inside is still valid.
            let mut last = self.last_good.lock().unwrap_or_else(|e| e.into_inner());
            match fresh {
                Ok(addrs) if !addrs.is_empty() => {
                    last.clone_from(&addrs);
                    Ok(addrs)
                }
                Ok(_) | Err(_) if !last.is_empty() => {
                    let why = fresh.err().map_or("no addresses".into(), |e| e.to_string());
                    tracing::warn!(%host, "looking the leg host up again failed ({why}); using {last:?}");
                    Ok(last.clone())
                }
                other => other,
            }
        })
    }
}

/// A query id nobody off-path can guess cheaply.
fn rand_id() -> u16 {
    let mut b = [0u8; 2];
    // ring's system RNG cannot fail on Linux; a fixed id would still work, only guessable.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u16::from_be_bytes(b)
}

/// `nameserver` lines of a resolv.conf.
fn nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| {
            rest.split_whitespace()
                .next()?
                .split('%')
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// The few DNS bits a stub needs (RFC 1035 §4): build an A/AAAA query, read the addresses
/// out of an answer. Parsing is checked: malformed input is `None`, never a panic.
pub(crate) mod dns {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    pub const A: u16 = 1;
    pub const AAAA: u16 = 28;
    const CLASS_IN: u16 = 1;

    /// A recursive query for `name`'s records of `qtype`; `None` if the name is not valid.
    pub fn query(id: u16, name: &str, qtype: u16) -> Option<Vec<u8>> {
        let mut m = Vec::with_capacity(18 + name.len());
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
        for label in name.trim_end_matches('.').split('.') {
            let len = u8::try_from(label.len())
                .ok()
                .filter(|l| (1..=63).contains(l))?;
            m.push(len);
            m.extend_from_slice(label.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&CLASS_IN.to_be_bytes());
        Some(m)
    }

    /// The A and AAAA addresses of a response to query `id` (CNAMEs and others skipped).
    /// `None` if it is not a well-formed response to that query.
    pub fn parse_answer(msg: &[u8], id: u16) -> Option<Vec<IpAddr>> {
        let mut r = Reader { msg, at: 0 };
        let (got, flags) = (r.u16()?, r.u16()?);
        let (qd, an) = (r.u16()?, r.u16()?);
        r.skip(4)?; // NS and AR counts
        if got != id || flags & 0x8000 == 0 {
            return None;
        }
        for _ in 0..qd {
            r.name()?;
            r.skip(4)?;
        }
        let mut ips = Vec::new();
        for _ in 0..an {
            r.name()?;
            let (kind, class) = (r.u16()?, r.u16()?);
            r.skip(4)?; // TTL
            let len = usize::from(r.u16()?);
            let data = r.take(len)?;
            match (kind, class, data.len()) {
                (A, CLASS_IN, 4) => {
                    ips.push(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(data).ok()?)))
                }
                (AAAA, CLASS_IN, 16) => {
                    ips.push(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(data).ok()?)))
                }
                _ => {}
            }
        }
        Some(ips)
    }

    struct Reader<'a> {
        msg: &'a [u8],
        at: usize,
    }

    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            let s = self.msg.get(self.at..self.at.checked_add(n)?)?;
            self.at += n;
            Some(s)
        }

        fn skip(&mut self, n: usize) -> Option<()> {
            self.take(n).map(|_| ())
        }

        fn u16(&mut self) -> Option<u16> {
            self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
        }

        /// Skip a name: labels up to a zero byte, or up to a compression pointer.
        fn name(&mut self) -> Option<()> {
            loop {
                let len = self.take(1)?[0];
                match len {
                    0 => return Some(()),
                    l if l & 0xc0 == 0xc0 => return self.skip(1),
                    l if l & 0xc0 == 0 => self.skip(usize::from(l))?,
                    _ => return None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
