//! Leak checks (TESTPLAN §9–11): while the tunnel is up, a capture on the client's outer
//! interface shows nothing but the two legs' TLS (and link housekeeping), whatever the
//! apps send: TCP and UDP, IPv4 and IPv6, DNS to hard-coded resolvers over UDP and TCP,
//! public (documentation-range) and LAN destinations.

use e2e::netns::namespaces_available;
use e2e::topology::{
    Capture, Leg, Topology, addr, assert_no_leaks, is_leg_or_link_traffic, port, probe,
};

#[test]
fn the_classifier_tells_leg_traffic_from_leaks() {
    let leg =
        "12:00:00.000001 IP 10.10.0.2.40000 > 10.20.1.2.443: Flags [P.], seq 1:100, length 99";
    let back = "12:00:00.000002 IP 10.20.2.2.443 > 10.10.0.2.40002: Flags [.], ack 100, length 0";
    let arp = "12:00:00.000003 ARP, Request who-has 10.10.0.1 tell 10.10.0.2, length 28";
    for ok in [leg, back, arp] {
        assert!(is_leg_or_link_traffic(ok), "{ok}");
    }
    let leaks = [
        "12:00:00.1 IP 10.10.0.2.40000 > 10.40.0.2.80: Flags [S], seq 1, length 0",
        "12:00:00.2 IP 10.10.0.2.53000 > 192.0.2.53.53: 4660+ A? www.inet.test. (31)",
        "12:00:00.3 IP 10.10.0.2.40000 > 10.20.1.2.80: Flags [S], seq 1, length 0",
        "12:00:00.4 IP 10.10.0.2.5000 > 10.20.1.2.443: UDP, length 5",
        "12:00:00.5 IP6 fd10::2.5000 > 2001:db8::7.7: UDP, length 5",
        "12:00:00.6 IP 10.10.0.2 > 10.40.0.2: ICMP echo request, id 1, seq 1, length 64",
    ];
    for leak in leaks {
        assert!(!is_leg_or_link_traffic(leak), "{leak}");
    }
}

#[test]
fn only_the_legs_tls_leaves_the_client_while_connected() {
    if !namespaces_available("only_the_legs_tls_leaves_the_client_while_connected") {
        return;
    }
    let mut t = Topology::new();
    // Control: without the tunnel, the same capture and classifier do see a leak.
    let control = Capture::start(&t.client, "eth0", t.dir.path());
    probe(&t.client, &["udp", "192.0.2.1:9", "x"]);
    let seen = control.stop();
    assert!(
        seen.iter()
            .any(|l| l.contains("192.0.2.1.9") && !is_leg_or_link_traffic(l)),
        "the control leak was not seen: {seen:?}"
    );
    t.start_tunnel();
    let capture = Capture::start(&t.client, "eth0", t.dir.path());
    let echo = |ip: &str| format!("{ip}:{}", port::ECHO);
    // Through the tunnel, and must work.
    let got = probe(
        &t.client,
        &[
            "get",
            &format!("{}:{}", addr::INET, port::HTTP),
            "/bytes/1048576",
        ],
    );
    assert!(
        got.ok && got.field("bytes") == Some("1048576"),
        "{}",
        got.stderr
    );
    let udp = probe(&t.client, &["udp", &echo(addr::INET), "u"]);
    assert_eq!(udp.stdout.trim(), "u", "{}", udp.stderr);
    let dns = probe(&t.client, &["dns", "192.0.2.53:53", "www.inet.test", "tcp"]);
    assert!(dns.stdout.contains(addr::INET), "{}", dns.stderr);
    // Destinations that fail (refused inside the tunnel or by the exit) but must not leak:
    // documentation-range "public" hosts, the LAN router, IPv6 (the exit has none),
    // resolvers on the LAN and hard-coded ones.
    let attempts: Vec<Vec<String>> = vec![
        vec!["udp".into(), "192.0.2.1:9".into(), "x".into()],
        vec!["tcp".into(), "198.51.100.1:80".into(), "x".into()],
        vec!["udp".into(), echo(addr::LAN_GW), "x".into()],
        vec!["tcp".into(), echo(addr::LAN_GW), "x".into()],
        vec!["udp".into(), "[2001:db8::7]:7".into(), "x".into()],
        vec!["tcp".into(), "[2001:db8::7]:7".into(), "x".into()],
        vec!["udp".into(), "[fd10::1]:7".into(), "x".into()],
        vec![
            "dns".into(),
            format!("{}:53", addr::LAN_GW),
            "www.inet.test".into(),
        ],
        vec![
            "dns".into(),
            "198.51.100.53:53".into(),
            "www.inet.test".into(),
            "udp".into(),
        ],
    ];
    std::thread::scope(|s| {
        for args in &attempts {
            let client = &t.client;
            s.spawn(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                probe(client, &args)
            });
        }
    });
    let lines = capture.stop();
    assert_no_leaks(&lines, "on the client's eth0");
    // The capture did see the tunnel working: both legs carried packets.
    for relay in [addr::RELAY_A, addr::RELAY_B] {
        let n = lines
            .iter()
            .filter(|l| l.contains(&format!("{relay}.443")))
            .count();
        assert!(n >= 10, "only {n} packets of the leg via {relay} captured");
    }
    eprintln!(
        "{} packets captured, all legs' TLS or link housekeeping; relays: {:?} {:?}",
        lines.len(),
        t.relay_stats(Leg::Up),
        t.relay_stats(Leg::Down)
    );
}
