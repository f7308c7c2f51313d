//! Which address a leg comes from when a CDN or reverse proxy sits in front of the
//! listeners. The TCP peer is then the proxy, shared by every client behind it, so the
//! per-source handshake limit would throttle them all together. A connection from a
//! trusted proxy (`[listen] trusted_proxies`) is attributed to the address that proxy
//! passes in `[listen] client_address_header` (`X-Forwarded-For` by default); from
//! anyone else the header is ignored, so a client cannot pick its own address.

use std::net::{IpAddr, SocketAddr};

use hyper::header::{HeaderMap, HeaderName};
use ipnet::IpNet;

/// The header trusted proxies pass the client's address in unless the config names another.
pub const DEFAULT_HEADER: &str = "x-forwarded-for";

/// The trusted proxies and the header they pass the client's address in.
#[derive(Debug, Clone)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    header: HeaderName,
}

impl Default for TrustedProxies {
    /// Trust nobody: every leg is attributed to its TCP peer.
    fn default() -> Self {
        TrustedProxies::new(Vec::new(), HeaderName::from_static(DEFAULT_HEADER))
    }
}

impl TrustedProxies {
    /// Trust connections from `nets` to name the client in `header`.
    pub fn new(nets: Vec<IpNet>, header: HeaderName) -> Self {
        TrustedProxies { nets, header }
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The address a request from `peer` is attributed to. From a trusted proxy: the
    /// rightmost address in the header that is not itself a trusted proxy (each proxy
    /// appends the address it received the request from, so entries further left were
    /// written by whoever came before and are only believed through trusted hops). A
    /// malformed header, or none, leaves the request with its TCP peer.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.ip().to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let mut entries = Vec::new();
        for value in headers.get_all(&self.header) {
            let Ok(value) = value.to_str() else {
                tracing::debug!(%peer, header = %self.header, "client address header is not text");
                return peer;
            };
            entries.extend(value.split(',').map(str::trim));
        }
        let mut client = peer;
        for entry in entries.iter().rev() {
            let Some(ip) = parse_entry(entry) else {
                tracing::debug!(%peer, header = %self.header, entry, "client address header has a bad entry");
                return peer;
            };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// One entry: an address, optionally with a port (`192.0.2.1:443`, `[2001:db8::1]:443`)
/// or in brackets (`[2001:db8::1]`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok())?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn proxies(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(
            nets.iter().map(|n| n.parse().unwrap()).collect(),
            HeaderName::from_static("x-forwarded-for"),
        )
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn at(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_cannot_name_its_own_address() {
        let p = proxies(&["10.0.0.0/8"]);
        let h = headers(&["198.51.100.7"]);
        assert_eq!(p.client(at("203.0.113.9"), &h), ip("203.0.113.9"));
        assert_eq!(
            TrustedProxies::default().client(at("10.1.1.1"), &h),
            ip("10.1.1.1")
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_client() {
        let p = proxies(&["10.0.0.0/8", "2001:db8:ffff::/48"]);
        assert_eq!(
            p.client(at("10.1.1.1"), &headers(&["198.51.100.7"])),
            ip("198.51.100.7")
        );
        assert_eq!(
            p.client(at("2001:db8:ffff::1"), &headers(&["2001:db8::42"])),
            ip("2001:db8::42")
        );
        // With a port, in brackets, from an IPv4-mapped peer.
        assert_eq!(
            p.client(at("10.1.1.1"), &headers(&["198.51.100.7:5555"])),
            ip("198.51.100.7")
        );
        assert_eq!(
            p.client(at("10.1.1.1"), &headers(&["[2001:db8::42]:443"])),
            ip("2001:db8::42")
        );
        assert_eq!(
            p.client(at("10.1.1.1"), &headers(&["[2001:db8::42]"])),
            ip("2001:db8::42")
        );
        assert_eq!(
            p.client(at("::ffff:10.1.1.1"), &headers(&["198.51.100.7"])),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn entries_are_believed_only_through_trusted_hops() {
        let p = proxies(&["10.0.0.0/8"]);
        // The client claims 1.2.3.4; the CDN edge (10.2.2.2) appended what it saw.
        let h = headers(&["1.2.3.4, 198.51.100.7, 10.2.2.2"]);
        assert_eq!(p.client(at("10.1.1.1"), &h), ip("198.51.100.7"));
        // Several header lines count as one list, in order.
        let h = headers(&["1.2.3.4", "198.51.100.7"]);
        assert_eq!(p.client(at("10.1.1.1"), &h), ip("198.51.100.7"));
        // Only proxies in the list: the leftmost.
        let h = headers(&["10.3.3.3, 10.2.2.2"]);
        assert_eq!(p.client(at("10.1.1.1"), &h), ip("10.3.3.3"));
    }

    #[test]
    fn a_missing_or_malformed_header_leaves_the_peer() {
        let p = proxies(&["10.0.0.0/8"]);
        assert_eq!(p.client(at("10.1.1.1"), &HeaderMap::new()), ip("10.1.1.1"));
        for bad in ["unknown", "198.51.100.7, not-an-address", "", "1.2.3.4.5"] {
            assert_eq!(
                p.client(at("10.1.1.1"), &headers(&[bad])),
                ip("10.1.1.1"),
                "{bad:?}"
            );
        }
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        assert_eq!(p.client(at("10.1.1.1"), &h), ip("10.1.1.1"));
    }
}
