//! The exit's admission and egress policy through the real client (TESTPLAN §18–19):
//! an unknown client key and a key revoked at run time (config edit + SIGHUP) never cause
//! an outbound connection (a capture in `inet` sees nothing); special IPv4 ranges
//! (240/4, limited broadcast, multicast) and IPv6 forms of private addresses (NAT64,
//! 6to4, ULA) are refused by the policy before any dial, and logged.

use std::time::{Duration, Instant};

use e2e::netns::namespaces_available;
use e2e::topology::{Capture, Topology, addr, port, probe};

fn http() -> String {
    format!("{}:{}", addr::INET, port::HTTP)
}

fn echo(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{}", port::ECHO)
    } else {
        format!("{ip}:{}", port::ECHO)
    }
}

/// Apps in the client try inet for `secs` seconds (HTTP, TCP and UDP echo, DNS through the
/// tunnel); every attempt must fail.
fn apps_try(t: &Topology, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        let got = probe(&t.client, &["get", &http(), "/"]);
        assert!(!got.ok, "HTTP reached inet: {}", got.stdout);
        let udp = probe(&t.client, &["udp", &echo(addr::INET), "x"]);
        assert!(!udp.ok, "UDP reached inet: {}", udp.stdout);
        let dns = probe(&t.client, &["dns", "192.0.2.53:53", "www.inet.test"]);
        assert!(
            !dns.stdout.contains(addr::INET),
            "DNS answered: {}",
            dns.stdout
        );
    }
}

/// The packets the capture in `inet` saw, except link housekeeping (ARP, IPv6 ND).
fn inet_packets(lines: Vec<String>) -> Vec<String> {
    lines
        .into_iter()
        .filter(|l| !l.contains(" ARP, ") && !l.contains("ICMP6, "))
        .collect()
}

fn assert_client_logs_handshake_errors(t: &Topology) {
    let log = t.log("vpn-client.log");
    assert!(
        log.lines()
            .any(|l| (l.contains("WARN") || l.contains("ERROR")) && l.contains("handshake")),
        "the client did not log a clear handshake error:\n{log}"
    );
}

#[test]
fn an_unknown_client_key_never_causes_an_outbound_connection() {
    if !namespaces_available("an_unknown_client_key_never_causes_an_outbound_connection") {
        return;
    }
    let mut t = Topology::new();
    let exit_public = t.start_exit();
    // The exit knows the key start_exit generated; the client gets a different one.
    t.keypair("vpn-client", "client.key");
    t.prepare_client(&exit_public);
    let capture = Capture::start(&t.inet, "eth0", t.dir.path());
    t.spawn_client();
    apps_try(&t, 4);
    let seen = inet_packets(capture.stop());
    assert!(
        seen.is_empty(),
        "inet saw traffic for an unknown client:\n{}",
        seen.join("\n")
    );
    let unknown =
        t.exit_counter("half_tunnel_exit_handshakes_rejected_total{reason=\"unknown_client\"}");
    assert!(unknown >= 1.0, "{}", t.exit_metrics());
    assert_eq!(
        t.exit_counter("half_tunnel_exit_handshakes_accepted_total"),
        0.0
    );
    assert_client_logs_handshake_errors(&t);
    // Control: the same capture sees the exit's traffic once the key is known.
    let client_public = t.keypair("vpn-client", "client.key");
    t.reload_exit_clients(&client_public);
    t.stop_client();
    let capture = Capture::start(&t.inet, "eth0", t.dir.path());
    t.spawn_client();
    t.wait_tunnel(Duration::from_secs(20));
    let seen = inet_packets(capture.stop());
    assert!(
        seen.iter()
            .any(|l| l.contains(&format!("{}.80", addr::INET))),
        "the control saw no HTTP in inet: {seen:?}"
    );
}

#[test]
fn a_key_revoked_by_reload_ends_the_session_and_dials_nothing_more() {
    if !namespaces_available("a_key_revoked_by_reload_ends_the_session_and_dials_nothing_more") {
        return;
    }
    let mut t = Topology::new();
    t.start_tunnel();
    // Revoke: the config's only client is now some other key; SIGHUP.
    let other = t.keypair("exit-node", "other.key");
    t.reload_exit_clients(&other);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !t.log("exit-node.log").contains("configuration reloaded") {
        assert!(Instant::now() < deadline, "exit-node did not reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = t.log("exit-node.log");
    assert!(
        log.contains("sessions_ended=1"),
        "the revoked client's session did not end:\n{log}"
    );
    let capture = Capture::start(&t.inet, "eth0", t.dir.path());
    apps_try(&t, 4);
    let seen = inet_packets(capture.stop());
    assert!(
        seen.is_empty(),
        "inet saw traffic for a revoked client:\n{}",
        seen.join("\n")
    );
    assert_eq!(
        t.exit_counter("half_tunnel_exit_handshakes_accepted_total"),
        1.0,
        "a revoked key got a new session"
    );
    assert_eq!(t.exit_counter("half_tunnel_exit_sessions "), 0.0);
    let unknown =
        t.exit_counter("half_tunnel_exit_handshakes_rejected_total{reason=\"unknown_client\"}");
    assert!(unknown >= 1.0, "{}", t.exit_metrics());
    assert_client_logs_handshake_errors(&t);
}

/// Try `target` over `proto` from the client; assert that the exit refused it by policy
/// (its `egress_refused` counter rose, a "not allowed"/"denied" refusal with the target
/// was logged) and that nothing answered.
fn assert_refused_by_policy(t: &Topology, proto: &str, ip: &str) {
    let target = echo(ip);
    let before = t.exit_counter("half_tunnel_exit_egress_refused_total");
    let out = probe(&t.client, &[proto, &target, "ssrf"]);
    assert!(
        !out.stdout.contains("ssrf"),
        "{proto} to {target} got an answer through the exit"
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let log = t.log("exit-node.log");
        let logged = log.lines().any(|l| {
            l.contains("stream refused")
                && l.contains(&format!("target={target}"))
                && (l.contains("not allowed") || l.contains("denied by policy"))
        });
        let counted = t.exit_counter("half_tunnel_exit_egress_refused_total") > before;
        if logged && counted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{proto} to {target}: not refused by the policy (logged {logged}, counted {counted}):\n{}",
            log.lines()
                .filter(|l| l.contains(&target))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The client's `dropped: N broadcast/multicast` status counter.
fn dropped_non_unicast(t: &Topology) -> u64 {
    let status = t.client_status();
    status
        .lines()
        .find_map(|l| l.strip_prefix("dropped:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no dropped line in status: {status}"))
}

#[test]
fn reserved_broadcast_and_multicast_ipv4_destinations_are_refused() {
    if !namespaces_available("reserved_broadcast_and_multicast_ipv4_destinations_are_refused") {
        return;
    }
    let mut t = Topology::new();
    // A service in 240/4 that the exit can route to (its default route is inet): only the
    // policy stands between.
    const RESERVED: &str = "240.0.0.1";
    t.inet
        .ip(&["addr", "add", &format!("{RESERVED}/32"), "dev", "lo"]);
    let probe_bin = e2e::topology::bin("ht-probe");
    t.inet.spawn(&probe_bin, &["udp-echo", &echo(RESERVED)]);
    t.inet.spawn(&probe_bin, &["tcp-echo", &echo(RESERVED)]);
    e2e::topology::wait_listening(&t.exit, &echo(RESERVED));
    let control = probe(&t.exit, &["udp", &echo(RESERVED), "reach"]);
    assert_eq!(
        control.stdout.trim(),
        "reach",
        "exit → 240.0.0.1: {}",
        control.stderr
    );
    t.start_tunnel();
    assert_refused_by_policy(&t, "tcp", RESERVED);
    assert_refused_by_policy(&t, "udp", RESERVED);
    // Limited broadcast and multicast: the client may drop them itself or hand them to the
    // exit, which must refuse them; either way nothing leaves the client's eth0 and the
    // exit sends nothing towards them.
    let dropped_before = dropped_non_unicast(&t);
    for ip in ["255.255.255.255", "239.1.2.3"] {
        let outer = Capture::start(&t.client, "eth0", t.dir.path());
        let egress = Capture::start(&t.exit, "eth-i", t.dir.path());
        let out = probe(&t.client, &["udp", &echo(ip), "ssrf"]);
        assert!(!out.stdout.contains("ssrf"), "UDP to {ip} got an answer");
        let dst = format!("> {ip}.");
        for (name, lines) in [("client eth0", outer.stop()), ("exit eth-i", egress.stop())] {
            let sent: Vec<&String> = lines.iter().filter(|l| l.contains(&dst)).collect();
            assert!(sent.is_empty(), "UDP to {ip} left the {name}: {sent:?}");
        }
        let log = t.log("exit-node.log");
        let target = format!("target={}", echo(ip));
        for l in log.lines().filter(|l| l.contains(&target)) {
            assert!(
                l.contains("stream refused") && l.contains("not allowed"),
                "the exit handled UDP to {ip} other than by a policy refusal: {l}"
            );
        }
        let at_exit = log.lines().any(|l| l.contains(&target));
        eprintln!(
            "UDP to {ip}: refused by the exit's policy: {at_exit}; else dropped in the client"
        );
    }
    // Those the client dropped itself are counted where a user can see them.
    let dropped = dropped_non_unicast(&t) - dropped_before;
    let at_exit = t
        .log("exit-node.log")
        .lines()
        .filter(|l| l.contains("239.1.2.3") || l.contains("255.255.255.255"))
        .count() as u64;
    eprintln!("client counted {dropped} broadcast/multicast drops; the exit logged {at_exit}");
    assert!(
        dropped + at_exit >= 2,
        "broadcast/multicast neither counted by the client ({dropped}) nor refused by the exit"
    );
    // Still serving.
    let ok = probe(&t.client, &["udp", &echo(addr::INET), "fine"]);
    assert_eq!(ok.stdout.trim(), "fine", "{}", ok.stderr);
}

#[test]
fn ipv6_forms_of_private_addresses_are_refused() {
    if !namespaces_available("ipv6_forms_of_private_addresses_are_refused") {
        return;
    }
    let mut t = Topology::new();
    // The client carries IPv6 to the exit; the exit has no IPv6 route, so a destination the
    // policy let through would fail at the dial instead (not counted, not "not allowed").
    t.client_exit_has_ipv6(true);
    t.start_tunnel();
    for ip in [
        "64:ff9b::a29:2",     // NAT64 (RFC 6052) form of 10.41.0.2, the private service
        "64:ff9b::a9fe:a9fe", // NAT64 form of 169.254.169.254
        "64:ff9b::7f00:1",    // NAT64 form of 127.0.0.1
        "2002:a29:2::1",      // 6to4 form of 10.41.0.2
        "2002:a9fe:a9fe::1",  // 6to4 form of 169.254.169.254
        "fc00::1",            // unique local
        "fd12:3456::1",       // unique local
        "::ffff:0:a29:2",     // SIIT-translated form of 10.41.0.2
    ] {
        assert_refused_by_policy(&t, "tcp", ip);
        assert_refused_by_policy(&t, "udp", ip);
    }
    let ok = probe(&t.client, &["udp", &echo(addr::INET), "fine"]);
    assert_eq!(ok.stdout.trim(), "fine", "{}", ok.stderr);
}
