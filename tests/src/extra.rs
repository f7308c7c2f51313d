//! Pieces some scenarios add to the [`Topology`]: a host on a LAN behind the client (router
//! mode), IPv6 between the exit and inet, links with a small MTU, and a firewall that drops
//! the ICMP errors path-MTU discovery needs.
//!
//! ```text
//! lanhost ── client (router mode) ── lan ── relays ── exit ── inet
//! 192.168.50.2  lan0 192.168.50.1                       fd40::1  fd40::2
//! fd50::2       lan0 fd50::1
//! ```
//!
//! Everything stays inside the test's namespaces: the lan host's namespace is deleted when
//! the returned [`Netns`] drops, the extra inet server dies with the inet namespace.

use crate::netns::{Netns, link};
use crate::topology::{Topology, addr, bin, port, wait_listening};

/// Addresses of the LAN behind the client.
pub mod lan {
    /// The client's address on its LAN interface (the lan host's gateway and resolver).
    pub const ROUTER: &str = "192.168.50.1";
    /// The lan host.
    pub const HOST: &str = "192.168.50.2";
    /// The LAN's IPv4 network.
    pub const NET: &str = "192.168.50.0/24";
    /// The client's IPv6 address on its LAN interface.
    pub const ROUTER6: &str = "fd50::1";
    /// The lan host's IPv6 address.
    pub const HOST6: &str = "fd50::2";
    /// The LAN's IPv6 network.
    pub const NET6: &str = "fd50::/64";
    /// The client's LAN interface.
    pub const IFACE: &str = "lan0";
}

/// The exit's IPv6 address towards inet.
pub const EXIT_INET6: &str = addr::EXIT_INET6;
/// The IPv6 network between the exit and inet.
pub const INET6_NET: &str = "fd40::/64";

/// Create a host on a new LAN behind the client: the client's `lan0` (MTU `router_mtu`)
/// joined to the host's `eth0` (MTU `host_mtu`), IPv4 and IPv6, the host's default routes
/// via the client. Returns the host's namespace.
pub fn lan_host(t: &Topology, host_mtu: u32, router_mtu: u32) -> Netns {
    let host = Netns::new("lanhost");
    link(
        &t.client,
        lan::IFACE,
        &[
            &format!("{}/24", lan::ROUTER),
            &format!("{}/64", lan::ROUTER6),
        ],
        &host,
        "eth0",
        &[&format!("{}/24", lan::HOST), &format!("{}/64", lan::HOST6)],
    );
    set_mtu(&t.client, lan::IFACE, router_mtu);
    set_mtu(&host, "eth0", host_mtu);
    host.ip(&["route", "add", "default", "via", lan::ROUTER]);
    host.ip(&["-6", "route", "add", "default", "via", lan::ROUTER6]);
    host
}

/// Client config for router mode on `lan0`, the LAN's prefixes kept out of the tunnel
/// (so that the client's replies to its LAN go to the LAN, as the routing docs require).
/// The kill switch is left at its default (on in router mode) unless `kill_switch` says.
pub fn router_mode(t: &mut Topology, kill_switch: Option<bool>) {
    t.client_config_extra(&router_toml());
    if let Some(on) = kill_switch {
        t.client_config_extra(&format!("\n[kill_switch]\nenabled = {on}\n"));
    }
}

/// The client config tables of [`router_mode`]: `[router]` on `lan0` and the LAN's
/// prefixes in `routing.exclude`.
pub fn router_toml() -> String {
    format!(
        "\n[router]\nenabled = true\nlan_interface = \"{}\"\n\n[routing]\nexclude = [\"{}\", \"{}\"]\n",
        lan::IFACE,
        lan::NET,
        lan::NET6
    )
}

/// Client config for router mode on `lan0` with nothing else: `vpn-client up` must keep
/// the LAN's prefixes out of the tunnel by itself.
pub fn router_mode_only(t: &mut Topology) {
    t.client_config_extra(&format!(
        "\n[router]\nenabled = true\nlan_interface = \"{}\"\n",
        lan::IFACE
    ));
}

/// Set `iface`'s MTU inside `ns`.
pub fn set_mtu(ns: &Netns, iface: &str, mtu: u32) {
    ns.ip(&["link", "set", iface, "mtu", &mtu.to_string()]);
}

/// Give the exit (`eth-i`, [`EXIT_INET6`]) and inet (`eth0`, [`addr::INET6`]) IPv6, start a
/// second `ht-inet` serving HTTP and echo on inet's IPv6 address, and wait for it. The
/// exit's egress policy must still allow [`INET6_NET`] ([`Topology::exit_allow`]) and the
/// client must be told the exit has IPv6 ([`Topology::client_exit_has_ipv6`]).
pub fn inet_ipv6(t: &Topology) {
    for (ns, dev, ip) in [
        (&t.exit, "eth-i", EXIT_INET6),
        (&t.inet, "eth0", addr::INET6),
    ] {
        ns.ip(&["addr", "add", &format!("{ip}/64"), "dev", dev, "nodad"]);
    }
    t.inet
        .ip(&["-6", "route", "add", "default", "via", EXIT_INET6]);
    let http = format!("[{}]:{}", addr::INET6, port::HTTP);
    let echo = format!("[{}]:{}", addr::INET6, port::ECHO);
    t.inet.spawn_logged(
        &bin("ht-inet"),
        &["--http", &http, "--echo", &echo],
        &t.dir.path().join("inet6.log"),
    );
    wait_listening(&t.inet, &http);
}

/// Load an nftables table in `ns` that drops every ICMP "fragmentation needed" and ICMPv6
/// "packet too big" the namespace would send, forward or receive: a path-MTU black hole.
/// Returns the table name.
pub fn drop_icmp_too_big(ns: &Netns) -> &'static str {
    let script = "table inet ht_pmtu_blackhole {\n\
         \x20 chain c_in { type filter hook input priority -10; policy accept;\n\
         \x20   icmp type destination-unreachable icmp code frag-needed counter drop\n\
         \x20   icmpv6 type packet-too-big counter drop\n\x20 }\n\
         \x20 chain c_fwd { type filter hook forward priority -10; policy accept;\n\
         \x20   icmp type destination-unreachable icmp code frag-needed counter drop\n\
         \x20   icmpv6 type packet-too-big counter drop\n\x20 }\n\
         \x20 chain c_out { type filter hook output priority -10; policy accept;\n\
         \x20   icmp type destination-unreachable icmp code frag-needed counter drop\n\
         \x20   icmpv6 type packet-too-big counter drop\n\x20 }\n\
         }\n";
    let path =
        std::env::temp_dir().join(format!("ht-pmtu-{}-{}.nft", std::process::id(), ns.name()));
    std::fs::write(&path, script).expect("write nft script");
    ns.exec("nft", &["-f", &path.to_string_lossy()]);
    let _ = std::fs::remove_file(&path);
    "ht_pmtu_blackhole"
}

/// How many packets the black hole of [`drop_icmp_too_big`] dropped in `ns`.
pub fn icmp_too_big_dropped(ns: &Netns) -> u64 {
    let out = ns.exec("nft", &["list", "table", "inet", "ht_pmtu_blackhole"]);
    String::from_utf8_lossy(&out.stdout)
        .split("counter packets ")
        .skip(1)
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
