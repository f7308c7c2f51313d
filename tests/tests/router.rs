//! Router mode (issue 5): `vpn-client up` with `[router]` forwards a LAN interface's
//! traffic into the tunnel. A "lan host" namespace sits behind the client's `lan0`; its
//! traffic must reach inet only through the tunnel (relay counters), its DNS — to the
//! client's LAN address or to a hard-coded resolver — is answered through the tunnel, and
//! with the kill switch (on by default in router mode) nothing of it ever leaves the
//! client's `eth0`: not while the legs are cut, not after `kill -9` of the client.

use std::time::{Duration, Instant};

use e2e::extra::{self, lan};
use e2e::netns::{Netns, namespaces_available};
use e2e::payload::{Payload, SEED, expected_sha256, sha256_of};
use e2e::topology::{
    Capture, Leg, Topology, addr, assert_no_attempt_answered, assert_no_leaks,
    assert_saw_leg_reconnects, bin, leaks, port, probe,
};

const MIB: u64 = 1 << 20;

fn http() -> String {
    format!("{}:{}", addr::INET, port::HTTP)
}

/// A tunnel whose client is in router mode with a lan host behind it (LAN link MTUs as
/// given); `None` when namespace tests cannot run here (outside CI).
fn router_tunnel(
    test: &str,
    host_mtu: u32,
    router_mtu: u32,
    kill_switch: Option<bool>,
) -> Option<(Topology, Netns)> {
    if !namespaces_available(test) {
        return None;
    }
    let mut t = Topology::new();
    let host = extra::lan_host(&t, host_mtu, router_mtu);
    extra::router_mode(&mut t, kill_switch);
    t.start_tunnel();
    wait_lan_tunnel(&t, &host);
    Some((t, host))
}

/// Wait until the lan host's HTTP GET to inet succeeds (only possible through the tunnel).
fn wait_lan_tunnel(t: &Topology, host: &Netns) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = probe(host, &["get", &http(), "/"]);
        if out.ok && out.stdout.contains("status=200") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the lan host did not reach inet through the tunnel: {}\nstatus: {}",
            out.stderr,
            t.client_status()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Download and upload `n` bytes from the lan host; checksums and the relays' split.
fn transfer_through_the_tunnel(t: &Topology, host: &Netns, n: u64) {
    let (a0, b0) = (t.relay_stats(Leg::Up), t.relay_stats(Leg::Down));
    let got = probe(host, &["get", &http(), &format!("/bytes/{n}")]);
    assert!(got.ok, "download: {}", got.stderr);
    assert_eq!(got.field("bytes"), Some(n.to_string().as_str()));
    assert_eq!(got.field("sha256"), Some(expected_sha256(n).as_str()));
    let (a1, b1) = (t.relay_stats(Leg::Up), t.relay_stats(Leg::Down));
    assert!(
        b1.s2c_bytes - b0.s2c_bytes >= n,
        "the download did not come down relay B: {b0:?} → {b1:?}"
    );
    assert!(
        a1.s2c_bytes - a0.s2c_bytes < MIB,
        "relay A carried download bytes"
    );
    let put = probe(host, &["put", &http(), &n.to_string()]);
    assert!(put.ok, "upload: {}", put.stderr);
    let (_, sha) = sha256_of(Payload::new(SEED, n)).unwrap();
    assert!(
        put.stdout.ends_with(&format!("reply={n} {sha}\n")),
        "the server received something else: {}",
        put.stdout
    );
    let (a2, b2) = (t.relay_stats(Leg::Up), t.relay_stats(Leg::Down));
    assert!(
        a2.c2s_bytes - a1.c2s_bytes >= n,
        "the upload did not go up relay A: {a1:?} → {a2:?}"
    );
    assert!(
        b2.c2s_bytes - b1.c2s_bytes < MIB,
        "relay B carried upload bytes"
    );
    eprintln!(
        "lan host: {} / {}; relay A {a0:?} → {a2:?}, relay B {b0:?} → {b2:?}",
        got.stdout.trim(),
        put.stdout.trim()
    );
}

#[test]
fn the_lan_host_reaches_inet_only_through_the_tunnel() {
    let Some((t, host)) = router_tunnel(
        "the_lan_host_reaches_inet_only_through_the_tunnel",
        1500,
        1500,
        None,
    ) else {
        return;
    };
    let status = t.client_status();
    assert!(
        status.contains("kill switch: on"),
        "router mode default: {status}"
    );
    transfer_through_the_tunnel(&t, &host, 32 * MIB);
    // The TUN's TCP segmentation offload: the lan host's segments reach the client in the
    // kernel's GSO batches, not one read per 1,500 bytes, and the download leaves the
    // client coalesced the same way.
    let status = t.client_status();
    let counts: Vec<u64> = status
        .lines()
        .find_map(|l| l.strip_prefix("tun:"))
        .and_then(|l| l.split("; ").nth(1))
        .map(|l| {
            l.split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        status.contains("offload checksums and TCP segments")
            && counts.len() == 2
            && counts.iter().all(|&n| n > 0),
        "coalesced segments read and written: {status}"
    );
    // UDP through the tunnel too.
    let udp = probe(
        &host,
        &["udp", &format!("{}:{}", addr::INET, port::ECHO), "lan-udp"],
    );
    assert_eq!(udp.stdout.trim(), "lan-udp", "{}", udp.stderr);
}

/// With TCP segmentation offload the kernel hands the client GSO packets of up to 64 KiB
/// whatever the TUN's MTU: a client whose TUN has the LAN's MTU of 1500 must read them
/// whole (a read buffer of one MTU truncated them and the upload stalled).
#[test]
fn coalesced_segments_cross_a_tun_of_mtu_1500() {
    if !namespaces_available("coalesced_segments_cross_a_tun_of_mtu_1500") {
        return;
    }
    let mut t = Topology::new();
    t.client_tun_mtu(1500);
    let host = extra::lan_host(&t, 1500, 1500);
    extra::router_mode(&mut t, None);
    t.start_tunnel();
    wait_lan_tunnel(&t, &host);
    let link = t.client.ip(&["link", "show", "ht0"]);
    assert!(
        String::from_utf8_lossy(&link.stdout).contains("mtu 1500"),
        "the configured MTU"
    );
    transfer_through_the_tunnel(&t, &host, 16 * MIB);
    let status = t.client_status();
    assert!(
        !status.contains("; 0 coalesced TCP segments read"),
        "segments beyond the MTU were read: {status}"
    );
}

/// Router mode with only `[router]` configured (no `routing.exclude`): `up` keeps the
/// LAN's own prefixes out of the tunnel by itself, so the replies reach the lan host
/// (before, they were routed back into the TUN and the LAN got nothing).
#[test]
fn router_mode_works_without_an_explicit_exclude() {
    if !namespaces_available("router_mode_works_without_an_explicit_exclude") {
        return;
    }
    let mut t = Topology::new();
    let host = extra::lan_host(&t, 1500, 1500);
    extra::router_mode_only(&mut t);
    t.start_tunnel();
    wait_lan_tunnel(&t, &host);
    transfer_through_the_tunnel(&t, &host, 4 * MIB);
    let rules = t.client.ip(&["rule", "show"]);
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules.contains(&format!("to {} lookup main", lan::NET)),
        "no exclusion rule for the LAN:\n{rules}"
    );
    assert!(
        t.log("vpn-client.log")
            .contains("the LAN's prefixes stay outside the tunnel"),
        "not logged"
    );
}

#[test]
fn the_lan_hosts_dns_is_answered_through_the_tunnel() {
    let Some((t, host)) = router_tunnel(
        "the_lan_hosts_dns_is_answered_through_the_tunnel",
        1500,
        1500,
        None,
    ) else {
        return;
    };
    let expect = format!("rcode=No Error\n{}\n", addr::INET);
    let router = format!("{}:53", lan::ROUTER);
    let router6 = format!("[{}]:53", lan::ROUTER6);
    let mut failed = Vec::new();
    for (server, transport) in [
        (router.as_str(), "udp"),
        (router.as_str(), "tcp"),
        (router6.as_str(), "udp"),
        ("192.0.2.53:53", "udp"),
        ("198.51.100.7:53", "tcp"),
    ] {
        let out = probe(&host, &["dns", server, "www.inet.test", transport]);
        if out.stdout != expect {
            failed.push(format!(
                "{server}/{transport}: {:?} {}",
                out.stdout,
                out.stderr.trim()
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "DNS from the lan host failed:\n{}",
        failed.join("\n")
    );
    // As a DHCP-configured LAN host does it: the system resolver is the router, and an
    // app resolves a name and connects. (`ip netns exec` binds /etc/netns/<ns>/resolv.conf.)
    let etc = ResolvConf::new(&host, &format!("nameserver {}\n", lan::ROUTER));
    let by_name = probe(&host, &["get", "www.inet.test:80", "/bytes/5000"]);
    assert_eq!(
        by_name.field("sha256"),
        Some(expected_sha256(5000).as_str()),
        "GET by name from the lan host: {}",
        by_name.stderr
    );
    drop(etc);
    drop(t);
}

/// `/etc/netns/<ns>/resolv.conf` for a namespace, removed on drop.
struct ResolvConf(std::path::PathBuf);

impl ResolvConf {
    fn new(ns: &Netns, text: &str) -> ResolvConf {
        let dir = std::path::Path::new("/etc/netns").join(ns.name());
        std::fs::create_dir_all(&dir).expect("create /etc/netns/<ns>");
        std::fs::write(dir.join("resolv.conf"), text).expect("write resolv.conf");
        ResolvConf(dir)
    }
}

impl Drop for ResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A LAN whose path is narrower than the lan host's own link (the lan host's `eth0` at
/// 1500, the client's `lan0` at 1280): the lan host advertises MSS 1460, and the client's
/// stack (smoltcp, where the lan host's connections terminate) sends full-size segments
/// with DF set and ignores ICMP "fragmentation needed" — it does no path-MTU discovery.
/// Only the router's MSS clamping (`rt mtu`: the smaller of both directions' route MTUs,
/// applied to the SYN and the SYN-ACK) makes the segments fit `lan0`. Control: with the
/// clamping rule deleted from the client's table, a download from the lan host stalls.
#[test]
fn mss_clamping_carries_transfers_over_a_lan_link_with_a_smaller_mtu() {
    let Some((t, host)) = router_tunnel(
        "mss_clamping_carries_transfers_over_a_lan_link_with_a_smaller_mtu",
        1500,
        1280,
        None,
    ) else {
        return;
    };
    transfer_through_the_tunnel(&t, &host, 16 * MIB);
    // Control: the same download without the clamping rule does not get through.
    let chain = t.client.exec(
        "nft",
        &["-a", "list", "chain", "inet", "half_tunnel", "forward"],
    );
    let chain = String::from_utf8_lossy(&chain.stdout).into_owned();
    let handle = chain
        .lines()
        .find(|l| l.contains("maxseg size set rt mtu"))
        .and_then(|l| l.rsplit("# handle ").next())
        .unwrap_or_else(|| panic!("no MSS clamping rule in the client's table:\n{chain}"))
        .trim()
        .to_owned();
    t.client.exec(
        "nft",
        &[
            "delete",
            "rule",
            "inet",
            "half_tunnel",
            "forward",
            "handle",
            &handle,
        ],
    );
    let out = host.try_exec(
        "timeout",
        &[
            "8",
            &bin("ht-probe"),
            "get",
            &http(),
            &format!("/bytes/{MIB}"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains(&format!("bytes={MIB} ")),
        "without MSS clamping the download still arrived ({stdout}): this test would not catch a missing clamp"
    );
    eprintln!(
        "control without the clamping rule: {stdout:?} (status {})",
        out.status
    );
}

/// Both ends of the LAN link at 1280 (IPv6's minimum): transfers work both ways.
#[test]
fn a_lan_at_the_ipv6_minimum_mtu_carries_transfers() {
    let Some((t, host)) = router_tunnel(
        "a_lan_at_the_ipv6_minimum_mtu_carries_transfers",
        1280,
        1280,
        None,
    ) else {
        return;
    };
    transfer_through_the_tunnel(&t, &host, 16 * MIB);
}

/// What the lan host tries while the tunnel cannot carry it: inet over TCP/UDP/HTTP, DNS
/// to the client and to a hard-coded resolver, the client's upstream router, a relay's
/// other port, IPv6 (the exit has none). Panics if any gets an answer.
fn lan_host_tries_everything(host: &Netns, rounds_for: Duration) -> u32 {
    let echo = |ip: &str| format!("{ip}:{}", port::ECHO);
    let attempts: Vec<Vec<String>> = vec![
        vec!["get".into(), http(), "/bytes/1000".into()],
        vec!["udp".into(), echo(addr::INET), "x".into()],
        vec!["tcp".into(), echo(addr::INET), "x".into()],
        vec!["dns".into(), "192.0.2.53:53".into(), "www.inet.test".into()],
        vec![
            "dns".into(),
            format!("{}:53", lan::ROUTER),
            "www.inet.test".into(),
            "tcp".into(),
        ],
        vec!["udp".into(), echo(addr::LAN_GW), "x".into()],
        vec!["tcp".into(), format!("{}:80", addr::RELAY_B), "x".into()],
        vec!["udp".into(), format!("{}:7", addr::RELAY_A), "x".into()],
        vec!["udp".into(), "[2001:db8::7]:7".into(), "x".into()],
    ];
    let start = Instant::now();
    let mut rounds = 0;
    while rounds == 0 || start.elapsed() < rounds_for {
        assert_no_attempt_answered(host, &attempts, "lan host without the tunnel");
        rounds += 1;
    }
    rounds
}

/// The kill switch (router mode's default) with the legs cut and then with the client
/// killed by SIGKILL: the lan host's packets never leave the client's `eth0`, and come
/// back through the tunnel once the relays accept again. Control: after `vpn-client down`
/// (forwarding was on before `up`, so the host routes the LAN again) the same capture
/// and classifier do see the lan host's packets on `eth0`.
#[test]
fn the_kill_switch_keeps_the_lan_in_while_the_legs_are_cut_and_after_kill_9() {
    if !namespaces_available(
        "the_kill_switch_keeps_the_lan_in_while_the_legs_are_cut_and_after_kill_9",
    ) {
        return;
    }
    let mut t = Topology::new();
    let host = extra::lan_host(&t, 1500, 1500);
    extra::router_mode(&mut t, None);
    // A router forwards before `up` already: so without the kill switch, a dead tunnel
    // would let the LAN out through eth0 (the control at the end shows it).
    t.client.forward();
    t.start_tunnel();
    wait_lan_tunnel(&t, &host);
    let capture = Capture::start(&t.client, "eth0", t.dir.path());
    for leg in [Leg::Up, Leg::Down] {
        assert_eq!(t.relay(leg, "refuse on"), "ok");
        assert_eq!(t.relay(leg, "kill"), "ok");
    }
    let cut = lan_host_tries_everything(&host, Duration::from_secs(4));
    for leg in [Leg::Up, Leg::Down] {
        assert_eq!(t.relay(leg, "refuse off"), "ok");
    }
    wait_lan_tunnel(&t, &host);
    // The client dies: its TUN and routes go, the nftables table stays.
    let pid = t.client_pid().expect("vpn-client runs");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(3);
    while t.client.running(pid) {
        assert!(Instant::now() < deadline, "vpn-client survived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
    let dead = lan_host_tries_everything(&host, Duration::from_secs(3));
    let lines = capture.stop();
    assert_no_leaks(&lines, "from the lan host on the client's eth0");
    assert_saw_leg_reconnects(&lines);
    eprintln!(
        "{cut} rounds with the legs cut, {dead} after kill -9; {} packets on eth0, all legs' TLS or housekeeping",
        lines.len()
    );

    // Control: once `down` removed the table, the LAN is forwarded out of eth0 and the
    // capture sees it.
    t.client_down();
    let control = Capture::start(&t.client, "eth0", t.dir.path());
    let out = probe(&host, &["udp", &format!("{}:7", addr::RELAY_A), "control"]);
    let lines = control.stop();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(lan::HOST) && l.contains(&format!("{}.7:", addr::RELAY_A))),
        "the control leak was not captured ({}): {lines:?}",
        out.stderr
    );
    assert!(!leaks(&lines).is_empty());
}
