//! Probes from the LAN and the routing loop (TESTPLAN §16, §17).
//!
//! * §16 (CVE-2019-14899 class): the LAN router — the client's neighbour, here the
//!   attacker — routes the client's tunnel network to the client's `eth0` and probes the
//!   TUN address and the virtual resolver over TCP and UDP, where echo services listen on
//!   all of the client's addresses. Nothing may answer: no reply on the LAN, and nothing
//!   of it may enter the TUN (a capture on `ht0`) or reach the exit (its refusal log).
//!   Control: the same probes with the client's `prerouting` and `input` rules flushed
//!   get into the client (a UDP echo reply enters the TUN), so the test can fail.
//! * §17: the legs' own packets never enter the TUN — a capture on `ht0` during a
//!   download in which both legs are killed and reconnect shows no packet to or from a
//!   relay's TLS port, and the relays' counters show no amplification (a loop would
//!   multiply bytes). Control: an ordinary app's connection to the same relay port does
//!   enter the TUN (and is refused by the exit), so the capture would see leg packets.

use std::time::Duration;

use e2e::netns::namespaces_available;
use e2e::payload::expected_sha256;
use e2e::topology::{Capture, Leg, Topology, addr, bin, port, probe};

const MIB: u64 = 1 << 20;

/// The client's TUN address (the client config default).
const TUN_ADDR: &str = "172.19.0.1";

fn tunnel(test: &str) -> Option<Topology> {
    Topology::with_tunnel(test)
}

/// The LAN router's probes at the client's tunnel addresses; the replies it got.
fn lan_probes(t: &Topology) -> Vec<String> {
    let mut answered = Vec::new();
    for ip in [TUN_ADDR, addr::VIRTUAL_RESOLVER] {
        let target = format!("{ip}:{}", port::ECHO);
        for proto in ["tcp", "udp"] {
            let out = probe(&t.lan, &[proto, &target, "probe"]);
            if out.stdout.contains("probe") {
                answered.push(format!("{proto} {target}"));
            }
        }
        let dns = probe(&t.lan, &["dns", &format!("{ip}:53"), "www.inet.test"]);
        if dns.stdout.contains(addr::INET) {
            answered.push(format!("dns {ip}:53"));
        }
    }
    answered
}

/// Whether a `tcpdump -n` line involves the LAN router's address.
fn from_or_to_lan(line: &str) -> bool {
    line.contains(&format!("{}.", addr::LAN_GW)) || line.contains(&format!("{} ", addr::LAN_GW))
}

#[test]
fn a_lan_neighbour_gets_no_answer_from_the_tunnel_addresses() {
    let Some(t) = tunnel("a_lan_neighbour_gets_no_answer_from_the_tunnel_addresses") else {
        return;
    };
    // Services on all of the client's addresses, as an app would bind them.
    let any = format!("0.0.0.0:{}", port::ECHO);
    let log = t.dir.path().join("client-echo.log");
    t.client
        .spawn_logged(&bin("ht-probe"), &["tcp-echo", &any], &log);
    t.client
        .spawn_logged(&bin("ht-probe"), &["udp-echo", &any], &log);
    e2e::topology::wait_listening(&t.client, &format!("127.0.0.1:{}", port::ECHO));
    // The attacker routes the tunnel network to the client.
    t.lan
        .ip(&["route", "add", "172.19.0.0/30", "via", addr::CLIENT]);

    let tun = Capture::start(&t.client, "ht0", t.dir.path());
    let answered = lan_probes(&t);
    let in_tun: Vec<String> = tun
        .stop()
        .into_iter()
        .filter(|l| from_or_to_lan(l))
        .collect();
    assert!(
        answered.is_empty(),
        "the LAN got answers from the tunnel addresses: {answered:?}"
    );
    assert!(
        in_tun.is_empty(),
        "the LAN's probes caused packets in the TUN:\n{}",
        in_tun.join("\n")
    );
    let exit_log = t.log("exit-node.log");
    assert!(
        !exit_log.contains(addr::LAN_GW),
        "the exit saw something of the LAN's probes:\n{exit_log}"
    );

    // The client's services on its eth0 address: no answer on the LAN either, nothing in
    // the TUN, nothing at the exit (the client's input chain drops new flows whose
    // replies route-all would send into the TUN; see also the test below).
    let tun = Capture::start(&t.client, "ht0", t.dir.path());
    let eth0 = format!("{}:{}", addr::CLIENT, port::ECHO);
    for proto in ["tcp", "udp"] {
        let out = probe(&t.lan, &[proto, &eth0, "eth0"]);
        assert!(
            !out.stdout.contains("eth0"),
            "{proto} to the client's eth0 service answered the LAN: {}",
            out.stdout
        );
    }
    let in_tun: Vec<String> = tun
        .stop()
        .into_iter()
        .filter(|l| from_or_to_lan(l))
        .collect();
    assert!(in_tun.is_empty(), "eth0 probes entered the TUN: {in_tun:?}");
    assert!(
        !t.log("exit-node.log").contains(addr::LAN_GW),
        "the exit saw something of the LAN's eth0 probes"
    );
    // Control: without the client's prerouting and input rules, the same probes get in (the
    // UDP echo's reply, routed like everything unmarked, enters the TUN).
    for chain in ["prerouting", "input"] {
        t.client
            .exec("nft", &["flush", "chain", "inet", "half_tunnel", chain]);
    }
    let tun = Capture::start(&t.client, "ht0", t.dir.path());
    let _ = lan_probes(&t);
    std::thread::sleep(Duration::from_millis(300));
    let control: Vec<String> = tun
        .stop()
        .into_iter()
        .filter(|l| from_or_to_lan(l))
        .collect();
    assert!(
        !control.is_empty(),
        "control: with the drop rules flushed the probes should reach the client and its replies the TUN"
    );
    eprintln!(
        "with the drop rules: nothing; without them {} packets of the LAN's probes in the TUN, e.g. {}",
        control.len(),
        control[0]
    );
}

#[test]
fn the_legs_never_enter_the_tun_even_while_reconnecting() {
    let Some(t) = tunnel("the_legs_never_enter_the_tun_even_while_reconnecting") else {
        return;
    };
    let leg_port = |l: &str| {
        [addr::RELAY_A, addr::RELAY_B]
            .iter()
            .any(|r| l.contains(&format!("{r}.{}", port::RELAY)))
    };
    let tun = Capture::start(&t.client, "ht0", t.dir.path());
    let (a0, b0) = (t.relay_stats(Leg::Up), t.relay_stats(Leg::Down));
    let n = 32 * MIB;
    let http = format!("{}:{}", addr::INET, port::HTTP);
    let path = format!("/bytes/{n}?rate={}", 8 * MIB);
    let download = std::thread::scope(|s| {
        let h = s.spawn(|| probe(&t.client, &["get", &http, &path]));
        for legs in [&[Leg::Up][..], &[Leg::Down], &[Leg::Up, Leg::Down]] {
            std::thread::sleep(Duration::from_millis(800));
            for &leg in legs {
                assert_eq!(t.relay(leg, "kill"), "ok");
            }
        }
        h.join().unwrap()
    });
    assert_eq!(
        download.field("sha256"),
        Some(expected_sha256(n).as_str()),
        "download across the reconnects: {}",
        download.stderr
    );
    let (a1, b1) = (t.relay_stats(Leg::Up), t.relay_stats(Leg::Down));
    assert!(
        a1.connections >= a0.connections + 2 && b1.connections >= b0.connections + 2,
        "the legs did not reconnect: {a0:?} → {a1:?}, {b0:?} → {b1:?}"
    );
    let lines = tun.stop();
    let legs_in_tun: Vec<&String> = lines.iter().filter(|l| leg_port(l)).collect();
    assert!(
        legs_in_tun.is_empty(),
        "leg packets entered the TUN:\n{legs_in_tun:?}"
    );
    // No loop amplifies anything: the down leg carried about the download, the up leg
    // little.
    let down = b1.s2c_bytes - b0.s2c_bytes;
    assert!(
        down >= n && down < n + n / 10,
        "relay B carried {down} bytes for a {n}-byte download"
    );
    assert!(
        a1.c2s_bytes - a0.c2s_bytes < 2 * MIB,
        "relay A carried {} bytes up during a download",
        a1.c2s_bytes - a0.c2s_bytes
    );
    assert!(
        lines.len() > 1000,
        "the TUN capture saw only {} packets of a {n}-byte download",
        lines.len()
    );

    // Control: an ordinary (unmarked) socket to the same relay port does enter the TUN.
    let tun = Capture::start(&t.client, "ht0", t.dir.path());
    let relay = format!("{}:{}", addr::RELAY_A, port::RELAY);
    let _ = probe(&t.client, &["tcp", &relay, "x"]);
    let control = tun.stop();
    assert!(
        control.iter().any(|l| leg_port(l)),
        "control: an app's connection to the relay port was not seen in the TUN: {control:?}"
    );
    eprintln!(
        "{} packets in the TUN during the download and 4 leg reconnects, none of a leg; relay B +{down} bytes",
        lines.len()
    );
}

/// A UDP service on the client's `eth0` address must not answer a LAN probe into the
/// TUN: route-all would send the reply there (with the TUN address as its source), and
/// the exit would be asked to open a stream to the LAN neighbour — telling it the LAN's
/// address and port. The client's `input` chain drops such new inbound flows. Control:
/// the same probe before `up` gets its echo.
#[test]
fn udp_replies_of_eth0_services_do_not_reach_the_exit() {
    if !namespaces_available("udp_replies_of_eth0_services_do_not_reach_the_exit") {
        return;
    }
    let mut t = Topology::new();
    let any = format!("0.0.0.0:{}", port::ECHO);
    let log = t.dir.path().join("client-echo.log");
    t.client
        .spawn_logged(&bin("ht-probe"), &["udp-echo", &any], &log);
    std::thread::sleep(Duration::from_millis(300));
    let eth0 = format!("{}:{}", addr::CLIENT, port::ECHO);
    let before = probe(&t.lan, &["udp", &eth0, "before"]);
    assert_eq!(before.stdout.trim(), "before", "control: {}", before.stderr);
    t.start_tunnel();
    let tun = Capture::start(&t.client, "ht0", t.dir.path());
    let out = probe(&t.lan, &["udp", &eth0, "x"]);
    assert!(!out.stdout.contains('x'), "answered: {}", out.stdout);
    let in_tun: Vec<String> = tun
        .stop()
        .into_iter()
        .filter(|l| from_or_to_lan(l))
        .collect();
    assert!(in_tun.is_empty(), "the reply entered the TUN: {in_tun:?}");
    std::thread::sleep(Duration::from_secs(1));
    let exit_log = t.log("exit-node.log");
    let seen: Vec<&str> = exit_log
        .lines()
        .filter(|l| l.contains(addr::LAN_GW))
        .collect();
    assert!(seen.is_empty(), "the exit saw the LAN's probe: {seen:?}");
}

/// The `no_loop` rule's packet counter (`nft list chain inet half_tunnel no_loop`).
fn no_loop_rejected(t: &Topology) -> u64 {
    let out = t
        .client
        .exec("nft", &["list", "chain", "inet", "half_tunnel", "no_loop"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in the no_loop chain:\n{text}"))
}

/// TESTPLAN §17, the routing-loop case: while the client is up, someone replaces the main
/// table's default route with one through the TUN (e.g. `ip route add default via GW`
/// resolving through the tunnel rules). The legs' marked packets would then enter the
/// tunnel they carry. The `no_loop` rule rejects them: the legs fail at once ("connection
/// refused", counted by the rule), nothing of theirs enters the TUN, and the tunnel
/// comes back by itself when the route is repaired. Control: with the rule flushed, the
/// same route sends the legs' reconnects into the TUN.
#[test]
fn a_default_route_into_the_tun_makes_legs_fail_fast_instead_of_looping() {
    let Some(t) = tunnel("a_default_route_into_the_tun_makes_legs_fail_fast_instead_of_looping")
    else {
        return;
    };
    let leg_port = |l: &String| {
        [addr::RELAY_A, addr::RELAY_B]
            .iter()
            .any(|r| l.contains(&format!("{r}.{}", port::RELAY)))
    };
    let gateway = [
        "route",
        "replace",
        "default",
        "via",
        addr::LAN_GW,
        "dev",
        "eth0",
    ];
    let into_tun = ["route", "replace", "default", "dev", "ht0"];
    let break_legs = |t: &Topology| {
        t.client.ip(&into_tun);
        for leg in [Leg::Up, Leg::Down] {
            assert_eq!(t.relay(leg, "kill"), "ok");
        }
        std::thread::sleep(Duration::from_secs(4));
    };

    let before = no_loop_rejected(&t);
    let tun = Capture::start(&t.client, "ht0", t.dir.path());
    break_legs(&t);
    let lines = tun.stop();
    let rejected = no_loop_rejected(&t) - before;
    let in_tun: Vec<&String> = lines.iter().filter(|l| leg_port(l)).collect();
    assert!(in_tun.is_empty(), "leg packets entered the TUN: {in_tun:?}");
    assert!(rejected > 0, "the no_loop rule rejected nothing");
    let log = t.log("vpn-client.log");
    assert!(
        log.contains("cannot connect to 10.20.1.2:443: Connection refused")
            && log.contains("cannot connect to 10.20.2.2:443: Connection refused"),
        "the legs did not fail fast on the rejected route:\n{}",
        t.logs(30)
    );
    t.client.ip(&gateway);
    t.wait_tunnel(Duration::from_secs(40));
    eprintln!(
        "route into the TUN: {rejected} leg packets rejected, none entered the TUN; recovered"
    );

    // Control: without the rule, the same route sends the legs into the TUN.
    t.client
        .exec("nft", &["flush", "chain", "inet", "half_tunnel", "no_loop"]);
    let tun = Capture::start(&t.client, "ht0", t.dir.path());
    break_legs(&t);
    let lines = tun.stop();
    t.client.ip(&gateway);
    assert!(
        lines.iter().any(leg_port),
        "control: without the rule no leg packet entered the TUN ({} packets seen)",
        lines.len()
    );
}
