//! The special-purpose address registry (IANA IPv4/IPv6 special-purpose registries, RFC 6890
//! and successors), reduced to what an exit node must never dial by default.

use std::net::IpAddr;
use std::sync::OnceLock;

use ipnet::IpNet;

/// A denied range and its registry name, for logs and reset reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialRange {
    /// The range.
    pub net: IpNet,
    /// What the range is, e.g. "private (RFC 1918)".
    pub name: &'static str,
}

const TABLE: &[(&str, &str)] = &[
    ("255.255.255.255/32", "limited broadcast"),
    ("0.0.0.0/8", "this network / unspecified"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared address space / CGNAT (RFC 6598)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (incl. cloud metadata)"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.31.196.0/24", "AS112 service"),
    ("192.52.193.0/24", "AMT"),
    ("192.88.99.0/24", "deprecated 6to4 relay anycast"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("192.175.48.0/24", "direct delegation AS112 service"),
    ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)"),
    ("100::/64", "discard-only (RFC 6666)"),
    ("2001::/32", "Teredo"),
    ("2001::/23", "IETF protocol assignments"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation (RFC 9637)"),
    ("5f00::/16", "SRv6 SIDs"),
    ("fc00::/7", "unique local (ULA)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "deprecated site-local"),
    ("ff00::/8", "multicast"),
    // Everything outside global unicast 2000::/3 that is not listed above is unassigned.
    ("::/0", "not IPv6 global unicast (outside 2000::/3)"),
];

fn table() -> &'static [SpecialRange] {
    static PARSED: OnceLock<Vec<SpecialRange>> = OnceLock::new();
    PARSED.get_or_init(|| {
        TABLE
            .iter()
            .map(|(net, name)| SpecialRange {
                // The table is a compile-time constant covered by a unit test.
                net: net
                    .parse()
                    .expect("special range table entries are valid CIDRs"),
                name,
            })
            .collect()
    })
}

fn is_global_unicast_v6(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xe000 == 0x2000)
}

/// The first special range that contains `ip` (most specific ranges are listed first).
pub fn special_range(ip: IpAddr) -> Option<SpecialRange> {
    table()
        .iter()
        .filter(|r| r.net.prefix_len() != 0 || !is_global_unicast_v6(ip))
        .find(|r| r.net.contains(&ip))
        .copied()
}
