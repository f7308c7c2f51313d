//! Path MTU and MSS clamping (TESTPLAN §25): paths that drop large packets, with the ICMP
//! "fragmentation needed" / "packet too big" errors dropped too, so path-MTU discovery
//! cannot help.
//!
//! Where a too-small path matters in this architecture, and what is tested here:
//! * **Apps on the client** terminate in the client's own stack (smoltcp) behind the TUN;
//!   those packets never cross a link, so their MSS (from the TUN MTU) is irrelevant.
//! * **The legs** are ordinary kernel TCP from the client to the relays (the CDNs). A
//!   black hole on that path is the case a user meets: tested below with the LAN router
//!   forwarding at most 1280 bytes towards both relays and back (route MTU locked) and
//!   dropping every ICMP error, so neither the client nor the relay learns it. Clamping
//!   cannot help there without knowing the path; the client turns on packetization-layer
//!   PMTUD (`net.ipv4.tcp_mtu_probing = 1`, also used by IPv6 TCP) for its legs. IPv4
//!   only: the legs of this topology run over IPv4.
//! * **Router mode**: LAN hosts' connections also terminate in smoltcp, which sends
//!   segments as large as the LAN host's MSS with DF set and does no path-MTU discovery;
//!   the router's MSS clamping is what fits them to the LAN. IPv4 is in `router.rs`
//!   (with a control that fails without the clamping rule); the IPv6 case is here.
//! * **The exit's dials** are kernel TCP from the exit to destinations, like any server's
//!   connections; the exit's operator owns that path. Not tested here.

use std::time::{Duration, Instant};

use e2e::extra::{self, INET6_NET, lan};
use e2e::netns::{Netns, namespaces_available};
use e2e::payload::{Payload, SEED, expected_sha256, sha256_of};
use e2e::topology::{Leg, Topology, addr, bin, port};

const MIB: u64 = 1 << 20;

/// Download and upload `n` bytes from `ns` to `target` (HTTP), each within `limit`.
fn transfer(ns: &Netns, target: &str, n: u64, limit: Duration) {
    let started = Instant::now();
    let out = ns.try_exec(
        "timeout",
        &[
            &limit.as_secs().to_string(),
            &bin("ht-probe"),
            "get",
            target,
            &format!("/bytes/{n}"),
        ],
    );
    let got = String::from_utf8_lossy(&out.stdout);
    assert!(
        got.contains(&format!("bytes={n} sha256={}", expected_sha256(n))),
        "download of {n} bytes from {target} did not complete within {limit:?}: {got} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let down = started.elapsed();
    let started = Instant::now();
    let out = ns.try_exec(
        "timeout",
        &[
            &limit.as_secs().to_string(),
            &bin("ht-probe"),
            "put",
            target,
            &n.to_string(),
        ],
    );
    let put = String::from_utf8_lossy(&out.stdout);
    let (_, sha) = sha256_of(Payload::new(SEED, n)).unwrap();
    assert!(
        put.ends_with(&format!("reply={n} {sha}\n")),
        "upload of {n} bytes to {target} did not complete within {limit:?}: {put} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "{target}: {n} bytes down in {down:?}, up in {:?}",
        started.elapsed()
    );
}

fn mtu_probing(ns: &Netns) -> String {
    let out = ns.exec("sysctl", &["-n", "net.ipv4.tcp_mtu_probing"]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The legs cross a hop that forwards at most 1280 bytes and swallows its ICMP errors.
/// `vpn-client up` turns on packetization-layer PMTUD (`tcp_mtu_probing = 1`, journaled
/// like every sysctl): the client's leg sockets detect the black hole and send smaller
/// segments. The relays stand for CDNs, which handle black holes on their side (here:
/// the same sysctl in their namespaces) — they send the downloads. Control: with the
/// client's setting back at the kernel default and a fresh up leg, an upload stalls.
#[test]
fn the_legs_cross_a_path_that_drops_large_packets() {
    if !namespaces_available("the_legs_cross_a_path_that_drops_large_packets") {
        return;
    }
    let mut t = Topology::new();
    for (net, dev) in [
        ("10.10.0.0/24", "eth-c"),
        ("10.20.1.0/24", "eth-a"),
        ("10.20.2.0/24", "eth-b"),
    ] {
        t.lan
            .ip(&["route", "change", net, "dev", dev, "mtu", "lock", "1280"]);
    }
    extra::drop_icmp_too_big(&t.lan);
    for relay in [&t.relay_a, &t.relay_b] {
        relay.exec("sysctl", &["-qw", "net.ipv4.tcp_mtu_probing=1"]);
    }
    assert_eq!(mtu_probing(&t.client), "0", "the kernel default before up");
    t.start_tunnel();
    assert_eq!(
        mtu_probing(&t.client),
        "1",
        "vpn-client up turns PLPMTUD on"
    );
    let http = format!("{}:{}", addr::INET, port::HTTP);
    // Slow while the relay re-probes the path (several seconds for 8 MiB here).
    transfer(&t.client, &http, 8 * MIB, Duration::from_secs(40));
    let dropped = extra::icmp_too_big_dropped(&t.lan);
    assert!(
        dropped > 0,
        "the black hole never had to swallow an ICMP error"
    );

    // Control: without PLPMTUD on the client, a fresh up leg cannot carry an upload.
    t.client
        .exec("sysctl", &["-qw", "net.ipv4.tcp_mtu_probing=0"]);
    let before = t.relay_stats(Leg::Up).connections;
    assert_eq!(t.relay(Leg::Up, "kill"), "ok");
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.relay_stats(Leg::Up).connections == before {
        assert!(Instant::now() < deadline, "the up leg did not reconnect");
        std::thread::sleep(Duration::from_millis(50));
    }
    t.wait_tunnel(Duration::from_secs(10));
    let out = t.client.try_exec(
        "timeout",
        &["6", &bin("ht-probe"), "put", &http, &(4 * MIB).to_string()],
    );
    let put = String::from_utf8_lossy(&out.stdout);
    assert!(
        !put.contains(&format!("reply={}", 4 * MIB)),
        "the upload crossed the black hole without PLPMTUD ({put}): the test would not catch a regression"
    );
    eprintln!(
        "{dropped} ICMP too-big errors swallowed; control without PLPMTUD: upload stalled ({})",
        out.status
    );
}

/// Router mode over IPv6: the lan host's link at 1500, the client's `lan0` at 1280 and
/// every ICMPv6 "packet too big" dropped; the exit has IPv6.
#[test]
fn a_narrow_lan_carries_ipv6_through_the_tunnel() {
    if !namespaces_available("a_narrow_lan_carries_ipv6_through_the_tunnel") {
        return;
    }
    let mut t = Topology::new();
    let host = extra::lan_host(&t, 1500, 1280);
    extra::router_mode(&mut t, None);
    extra::inet_ipv6(&t);
    t.exit_allow(INET6_NET);
    t.client_exit_has_ipv6(true);
    extra::drop_icmp_too_big(&t.client);
    extra::drop_icmp_too_big(&host);
    t.start_tunnel();
    let target = format!("[{}]:{}", addr::INET6, port::HTTP);
    transfer(&host, &target, 16 * MIB, Duration::from_secs(30));
    // And IPv4 across the same narrow LAN with the same black hole.
    transfer(
        &host,
        &format!("{}:{}", addr::INET, port::HTTP),
        16 * MIB,
        Duration::from_secs(30),
    );
    let _ = lan::HOST6;
}
