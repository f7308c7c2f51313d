//! The kill switch and router-mode rules: one nftables table, loaded atomically.
//!
//! The script first creates-then-deletes the table and then defines it whole, all in one
//! `nft -f` transaction: the host never sees a half-built table, and reloading replaces it.
//! The table is kernel state, so it stays when the client dies, until `down` removes it.

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
        }
    }

    /// Whether there is anything to load at all.
    pub fn is_needed(&self) -> bool {
        self.kill_switch || !self.lan_interfaces.is_empty()
    }

    /// The whole `nft -f -` script.
    pub fn script(&self) -> String {
        let t = &self.table;
        let mut s = format!("table inet {t}\ndelete table inet {t}\ntable inet {t} {{\n");
        if self.kill_switch {
            s += &self.output_chain();
        }
        if !self.lan_interfaces.is_empty() {
            s += &self.forward_chain();
        }
        s + "}\n"
    }

    fn output_chain(&self) -> String {
        format!(
            "  chain output {{\n\
             \x20   type filter hook output priority 0; policy drop;\n\
             \x20   oifname \"lo\" accept\n\
             \x20   meta mark {mark:#x} accept\n\
             \x20   oifname \"{tun}\" accept\n\
             \x20   meta nfproto ipv4 udp sport 68 udp dport 67 accept comment \"DHCPv4\"\n\
             \x20   meta nfproto ipv6 udp sport 546 udp dport 547 accept comment \"DHCPv6\"\n\
             \x20   icmpv6 type {{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert }} accept comment \"NDP\"\n\
             \x20 }}\n",
            mark = self.fwmark,
            tun = self.tun,
        )
    }

    fn forward_chain(&self) -> String {
        let lans = self
            .lan_interfaces
            .iter()
            .map(|l| format!("\"{l}\""))
            .collect::<Vec<_>>()
            .join(", ");
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
