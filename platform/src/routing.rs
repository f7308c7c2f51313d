//! Route-all by policy routing, the way wg-quick does it.
//!
//! ```text
//! pref B    to <exclude>            lookup main          (one per excluded prefix)
//! pref B+1  from all                lookup main suppress_prefixlength 0   (only if bypass_main_routes)
//! pref B+2  not fwmark M            lookup T
//! table T:  default dev <tun>       (or one route per included prefix)
//! ```
//! The client's own sockets (both legs, its DNS) carry mark `M` ([`crate::set_mark`]) and
//! so skip rule B+2: they use the main table and never loop into the TUN, whatever IPs the
//! relays resolve to. Excluded prefixes are looked up in main before anything else: they
//! stay outside.
//!
//! Rule B+1 is wg-quick's: it keeps every main-table route more specific than the default
//! (directly connected LANs, static routes) ahead of the tunnel. It is **off by default**:
//! a full-device VPN must not send LAN-addressed traffic outside the tunnel (test plan
//! items 9 and 16). Keep chosen prefixes local with `exclude` instead, or turn on
//! [`RouteAllConfig::bypass_main_routes`] for exactly wg-quick's behaviour. In router mode
//! the LAN prefixes must be excluded, or the router's replies to its LAN would enter the
//! TUN; `vpn-client up` adds the LAN interface's prefixes to `exclude` itself.

use ipnet::IpNet;

use crate::types::{Family, Route, RouteKind, Rule, RuleSelector, TABLE_MAIN};

/// The default firewall mark of the client's own sockets ("HT"; vpn-client's default too).
pub const DEFAULT_FWMARK: u32 = 0x4854;
/// The default routing table for the TUN.
pub const DEFAULT_TABLE: u32 = 0x4854;
/// The default priority of the first rule.
pub const DEFAULT_PRIORITY: u32 = 5200;

/// What to route into the TUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteAllConfig {
    /// The TUN interface.
    pub tun: String,
    /// Mark carried by the client's own sockets.
    pub fwmark: u32,
    /// Routing table holding the TUN routes.
    pub table: u32,
    /// Priority of the first rule; the rules use `priority..priority+2`.
    pub priority: u32,
    /// Which families to capture (normally both, so that IPv6 never leaks).
    pub families: Vec<Family>,
    /// Add wg-quick's `lookup main suppress_prefixlength 0` rule (see the module docs).
    pub bypass_main_routes: bool,
    /// Prefixes to send into the TUN; empty means everything.
    pub include: Vec<IpNet>,
    /// Prefixes that stay outside the tunnel (e.g. the LAN).
    pub exclude: Vec<IpNet>,
}

impl RouteAllConfig {
    /// Everything, both families, default mark/table/priority.
    pub fn new(tun: impl Into<String>) -> Self {
        RouteAllConfig {
            tun: tun.into(),
            fwmark: DEFAULT_FWMARK,
            table: DEFAULT_TABLE,
            priority: DEFAULT_PRIORITY,
            families: Family::ALL.to_vec(),
            bypass_main_routes: false,
            include: Vec::new(),
            exclude: Vec::new(),
        }
    }

    /// The routes for table T, in the order to add them.
    pub fn routes(&self) -> Vec<Route> {
        let mut out = Vec::new();
        for &family in &self.families {
            let mut nets: Vec<IpNet> = self
                .include
                .iter()
                .filter(|n| Family::of(n) == family)
                .copied()
                .collect();
            if self.include.is_empty() {
                nets.push(family.any());
            }
            out.extend(nets.into_iter().map(|dest| Route {
                dest,
                kind: RouteKind::Dev(self.tun.clone()),
                table: self.table,
            }));
        }
        out
    }

    /// The policy rules, in the order to add them (most specific last, so that traffic
    /// only starts flowing into T once the exclusions are in place).
    pub fn rules(&self) -> Vec<Rule> {
        let mut out = Vec::new();
        for &family in &self.families {
            let excludes = self.exclude.iter().filter(|n| Family::of(n) == family);
            out.extend(excludes.map(|net| Rule {
                family,
                priority: self.priority,
                selector: RuleSelector::To(*net),
                table: TABLE_MAIN,
                suppress_prefixlength: None,
            }));
            out.extend(self.bypass_main_routes.then_some(Rule {
                family,
                priority: self.priority + 1,
                selector: RuleSelector::All,
                table: TABLE_MAIN,
                suppress_prefixlength: Some(0),
            }));
            out.push(Rule {
                family,
                priority: self.priority + 2,
                selector: RuleSelector::NotFwmark(self.fwmark),
                table: self.table,
                suppress_prefixlength: None,
            });
        }
        out
    }
}

/// Sysctls route-all needs:
/// * `src_valid_mark`: with strict `rp_filter`, replies to the marked legs would fail the
///   reverse-path check (the unmarked lookup points into the TUN) unless the mark is taken
///   into account. wg-quick sets the same.
/// * `tcp_mtu_probing = 1` (packetization-layer PMTUD, RFC 4821, for IPv4 and IPv6 TCP,
///   only once a black hole is detected): the legs are long-lived kernel TCP connections
///   across paths we do not control; where a hop drops large packets and its ICMP errors
///   are filtered, a leg would otherwise retransmit full-size segments forever and every
///   flow in the tunnel would stall (TESTPLAN §25, `tests/tests/path_mtu.rs`).
pub const ROUTE_ALL_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.conf.all.src_valid_mark", "1"),
    ("net.ipv4.tcp_mtu_probing", "1"),
];

/// Sysctls router mode needs.
pub const FORWARDING_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
];
