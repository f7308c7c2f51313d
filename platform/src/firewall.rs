//! The kill switch and router-mode rules: one nftables table, loaded atomically.
//!
//! The script first creates-then-deletes the table and then defines it whole, all in one
//! `nft -f` transaction: the host never sees a half-built table, and reloading replaces it.
//! The table is kernel state, so it stays when the client dies, until `down` removes it.
//!
//! Chains, each present only when configured:
//! * `prerouting` (priority raw): drop packets that arrive on any other interface but are
//!   addressed to the TUN's addresses — a LAN neighbour must not be able to probe the
//!   tunnel address (CVE-2019-14899 class; wg-quick adds the same rule).
//! * `output` (the kill switch, policy drop): only loopback, the marked legs, the TUN,
//!   DHCP/DHCPv6 client traffic and IPv6 neighbour discovery leave; in router mode also
//!   DHCP server replies and established traffic towards the LAN interfaces.
//! * `forward` (router mode): LAN → TUN and its replies, with MSS clamping to the route
//!   MTU; policy drop when the kill switch is on.
//! * `input` (when [`FirewallConfig::guard_inbound`]): new flows that arrive on any other
//!   interface than loopback, the TUN and the LAN interfaces are dropped unless their
//!   source stays outside the tunnel (`inbound_from`, the excluded prefixes) or they are
//!   DHCP/NDP. Route-all would send the replies into the TUN, where they would ask the
//!   exit to open flows towards the neighbour: useless, and they tell the exit about the
//!   LAN (TESTPLAN §16).
//! * `no_loop` (always): the client's own marked packets (the legs, its own lookups of
//!   the leg hosts) are rejected if routing sends them into the TUN — e.g. after someone
//!   adds a main-table default route that resolves through the TUN while up. The legs
//!   then fail at once ("connection refused", counted by the rule) instead of looping
//!   through the tunnel they carry (TESTPLAN §17).
//! * `lan_dns` (router mode, nat prerouting): DNS that LAN hosts send to this host (TCP or
//!   UDP port 53 to any of its local addresses, the usual DHCP-announced resolver) is
//!   redirected to the virtual resolvers inside the TUN, so it is answered through the
//!   tunnel like the host's own queries (nothing listens on port 53 here otherwise).

use std::fmt::Write as _;
use std::net::IpAddr;

/// The default table name (`table inet half_tunnel`).
pub const DEFAULT_TABLE: &str = "half_tunnel";

/// What the firewall table must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallConfig {
    /// nftables table name (family `inet`).
    pub table: String,
    /// The TUN interface: traffic out of it is allowed.
    pub tun: String,
    /// Mark of the client's own sockets: allowed out anywhere.
    pub fwmark: u32,
    /// Drop every other outgoing packet (and, in router mode, every other forwarded one).
    pub kill_switch: bool,
    /// Router mode: LAN interfaces whose traffic is forwarded through the TUN.
    pub lan_interfaces: Vec<String>,
    /// The TUN's own addresses: packets to them from any other interface are dropped.
    pub tun_addresses: Vec<IpAddr>,
    /// Router mode: where DNS from the LAN to this host's own addresses is redirected (the
    /// virtual resolvers, one per family; empty: no redirect).
    pub lan_dns: Vec<IpAddr>,
    /// Drop new inbound flows on the outer interfaces (see the module docs).
    pub guard_inbound: bool,
    /// With `guard_inbound`: sources still allowed to open flows (the prefixes that stay
    /// outside the tunnel, whose replies do not enter the TUN).
    pub inbound_from: Vec<ipnet::IpNet>,
}

impl FirewallConfig {
    /// Kill switch on, no router mode.
    pub fn kill_switch(tun: impl Into<String>, fwmark: u32) -> Self {
        FirewallConfig {
            table: DEFAULT_TABLE.into(),
            tun: tun.into(),
            fwmark,
            kill_switch: true,
            lan_interfaces: Vec::new(),
            tun_addresses: Vec::new(),
            lan_dns: Vec::new(),
            guard_inbound: false,
            inbound_from: Vec::new(),
        }
    }

    /// Whether there is anything to load at all.
    pub fn is_needed(&self) -> bool {
        self.kill_switch
            || !self.lan_interfaces.is_empty()
            || !self.tun_addresses.is_empty()
            || self.guard_inbound
    }

    /// The whole `nft -f -` script.
    pub fn script(&self) -> String {
        let t = &self.table;
        let mut s = format!("table inet {t}\ndelete table inet {t}\ntable inet {t} {{\n");
        s += &self.no_loop_chain();
        if !self.tun_addresses.is_empty() {
            s += &self.prerouting_chain();
        }
        if self.guard_inbound {
            s += &self.input_chain();
        }
        if self.kill_switch {
            s += &self.output_chain();
        }
        if !self.lan_interfaces.is_empty() {
            s += &self.forward_chain();
            if !self.lan_dns.is_empty() {
                s += &self.lan_dns_chain();
            }
        }
        s + "}\n"
    }

    fn no_loop_chain(&self) -> String {
        format!(
            "  chain no_loop {{\n\
             \x20   type filter hook output priority -10; policy accept;\n\
             \x20   oifname \"{tun}\" meta mark {mark:#x} counter reject comment \"routing loop: own packet into the TUN\"\n\
             \x20 }}\n",
            tun = self.tun,
            mark = self.fwmark,
        )
    }

    fn prerouting_chain(&self) -> String {
        let mut s = String::from(
            "  chain prerouting {\n    type filter hook prerouting priority raw; policy accept;\n",
        );
        for addr in &self.tun_addresses {
            let family = if addr.is_ipv4() { "ip" } else { "ip6" };
            // Writing to a String cannot fail.
            let _ = writeln!(
                s,
                "    iifname != \"{}\" {family} daddr {addr} fib saddr type != local drop",
                self.tun
            );
        }
        s + "  }\n"
    }

    fn input_chain(&self) -> String {
        let mut inner = vec!["\"lo\"".to_owned(), format!("\"{}\"", self.tun)];
        inner.extend(self.lan_interfaces.iter().map(|l| format!("\"{l}\"")));
        let mut s = format!(
            "  chain input {{\n\
             \x20   type filter hook input priority 0; policy accept;\n\
             \x20   iifname {{ {inner} }} accept\n\
             \x20   ct state established,related accept\n\
             \x20   meta nfproto ipv4 udp sport 67 udp dport 68 accept comment \"DHCPv4\"\n\
             \x20   meta nfproto ipv6 udp sport 547 udp dport 546 accept comment \"DHCPv6\"\n\
             \x20   icmpv6 type {{ nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect, mld-listener-query }} accept comment \"NDP\"\n",
            inner = inner.join(", ")
        );
        for net in &self.inbound_from {
            let family = if matches!(net, ipnet::IpNet::V4(_)) {
                "ip"
            } else {
                "ip6"
            };
            // Writing to a String cannot fail.
            let _ = writeln!(s, "    {family} saddr {net} accept comment \"excluded\"");
        }
        s + "    drop comment \"replies would enter the TUN\"\n  }\n"
    }

    fn lans(&self) -> String {
        let lans: Vec<String> = self
            .lan_interfaces
            .iter()
            .map(|l| format!("\"{l}\""))
            .collect();
        lans.join(", ")
    }

    fn output_chain(&self) -> String {
        let mut s = format!(
            "  chain output {{\n\
             \x20   type filter hook output priority 0; policy drop;\n\
             \x20   oifname \"lo\" accept\n\
             \x20   meta mark {mark:#x} accept\n\
             \x20   oifname \"{tun}\" accept\n\
             \x20   meta nfproto ipv4 udp sport 68 udp dport 67 accept comment \"DHCPv4\"\n\
             \x20   meta nfproto ipv6 udp sport 546 udp dport 547 accept comment \"DHCPv6\"\n\
             \x20   icmpv6 type {{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert }} accept comment \"NDP\"\n",
            mark = self.fwmark,
            tun = self.tun,
        );
        if !self.lan_interfaces.is_empty() {
            // The router still serves its LAN: DHCP offers and replies to LAN-initiated flows.
            let lans = self.lans();
            s += &format!(
                "    oifname {{ {lans} }} udp sport 67 accept comment \"DHCP server\"\n\
                 \x20   oifname {{ {lans} }} ct state established,related accept\n"
            );
        }
        s + "  }\n"
    }

    fn lan_dns_chain(&self) -> String {
        let lans = self.lans();
        let mut s = String::from(
            "  chain lan_dns {\n    type nat hook prerouting priority dstnat; policy accept;\n",
        );
        for addr in &self.lan_dns {
            let (nfproto, family) = if addr.is_ipv4() {
                ("ipv4", "ip")
            } else {
                ("ipv6", "ip6")
            };
            let to = if addr.is_ipv4() {
                addr.to_string()
            } else {
                format!("[{addr}]")
            };
            // Writing to a String cannot fail.
            let _ = writeln!(
                s,
                "    iifname {{ {lans} }} meta nfproto {nfproto} fib daddr type local \
                 meta l4proto {{ tcp, udp }} th dport 53 dnat {family} to {to}:53 \
                 comment \"LAN DNS into the tunnel\""
            );
        }
        s + "  }\n"
    }

    fn forward_chain(&self) -> String {
        let lans = self.lans();
        let policy = if self.kill_switch { "drop" } else { "accept" };
        format!(
            "  chain forward {{\n\
             \x20   type filter hook forward priority 0; policy {policy};\n\
             \x20   tcp flags syn tcp option maxseg size set rt mtu comment \"MSS clamping\"\n\
             \x20   iifname {{ {lans} }} oifname \"{tun}\" accept\n\
             \x20   iifname \"{tun}\" oifname {{ {lans} }} ct state established,related accept\n\
             \x20 }}\n",
            tun = self.tun,
        )
    }
}
