//! The topology itself, before any tunnel: every hop that must work works, and the client
//! reaches nothing but the relays (so anything it reaches later went through the tunnel).

use e2e::netns::namespaces_available;
use e2e::payload::expected_sha256;
use e2e::topology::{Leg, Topology, addr, port, probe};

#[test]
fn topology_hops_work_and_the_client_reaches_only_the_relays() {
    if !namespaces_available("topology_hops_work_and_the_client_reaches_only_the_relays") {
        return;
    }
    let t = Topology::new();
    let echo = |ip: &str| format!("{ip}:{}", port::ECHO);
    let http = format!("{}:{}", addr::INET, port::HTTP);

    // exit → inet: HTTP with a known checksum, DNS over UDP and TCP, UDP echo, and the
    // private and metadata services (reachable, so only the policy can refuse them later).
    let got = probe(&t.exit, &["get", &http, "/bytes/1048576"]);
    assert!(got.ok, "exit → inet HTTP: {}", got.stderr);
    assert_eq!(got.field("status"), Some("200"));
    assert_eq!(got.field("bytes"), Some("1048576"));
    assert_eq!(got.field("sha256"), Some(expected_sha256(1 << 20).as_str()));
    let put = probe(&t.exit, &["put", &http, "300000"]);
    assert!(put.ok, "exit → inet upload: {}", put.stderr);
    let sha = put.field("sha256").expect("sha256").to_owned();
    assert!(
        put.stdout.ends_with(&format!("reply=300000 {sha}\n")),
        "{}",
        put.stdout
    );
    let resolver = format!("{}:53", addr::INET);
    for transport in ["udp", "tcp"] {
        let dns = probe(&t.exit, &["dns", &resolver, "www.inet.test", transport]);
        assert!(dns.ok, "DNS/{transport}: {}", dns.stderr);
        assert_eq!(dns.stdout, format!("rcode=No Error\n{}\n", addr::INET));
    }
    let nx = probe(&t.exit, &["dns", &resolver, "nope.inet.test"]);
    assert_eq!(nx.stdout, "rcode=Non-Existent Domain\n");
    for ip in [addr::INET, addr::PRIVATE, addr::METADATA] {
        let udp = probe(&t.exit, &["udp", &echo(ip), "ping"]);
        assert_eq!(udp.stdout.trim(), "ping", "exit → {ip} UDP: {}", udp.stderr);
        let tcp = probe(&t.exit, &["tcp", &echo(ip), "ping"]);
        assert_eq!(tcp.stdout.trim(), "ping", "exit → {ip} TCP: {}", tcp.stderr);
    }

    // relay → exit: each relay reaches its own exit address.
    for (ns, ip) in [(&t.relay_a, addr::EXIT_UP), (&t.relay_b, addr::EXIT_DOWN)] {
        let tcp = probe(ns, &["tcp", &echo(ip), "hi"]);
        assert_eq!(
            tcp.stdout.trim(),
            "hi",
            "{} → exit: {}",
            ns.name(),
            tcp.stderr
        );
    }

    // client → relays: the TLS listeners accept; the control ports answer.
    for relay in [addr::RELAY_A, addr::RELAY_B] {
        let wait = probe(
            &t.client,
            &["wait", &format!("{relay}:{}", port::RELAY), "2"],
        );
        assert!(wait.ok, "client → {relay}: {}", wait.stderr);
    }
    assert_eq!(t.relay_stats(Leg::Up).connections, 0);
    assert_eq!(t.relay_stats(Leg::Down).connections, 0);

    // The client reaches nothing else directly.
    for ip in [addr::INET, addr::EXIT_UP, addr::EXIT_INET, addr::PRIVATE] {
        let tcp = probe(&t.client, &["tcp", &echo(ip), "leak"]);
        assert!(
            !tcp.ok,
            "client reached {ip} without the tunnel: {}",
            tcp.stdout
        );
        let udp = probe(&t.client, &["udp", &echo(ip), "leak"]);
        assert!(
            !udp.ok,
            "client reached {ip}/udp without the tunnel: {}",
            udp.stdout
        );
    }
}

#[test]
fn the_exit_node_runs_behind_both_relays() {
    if !namespaces_available("the_exit_node_runs_behind_both_relays") {
        return;
    }
    let mut t = Topology::new();
    // start_exit waits until relay A reaches the up listener and relay B the down one.
    t.start_exit();
    let admin = format!("127.0.0.1:{}", port::ADMIN);
    let health = probe(&t.exit, &["body", &admin, "/healthz"]);
    assert_eq!(health.stdout, "ok\n", "{}", health.stderr);
    let metrics = t.exit_metrics();
    assert!(metrics.contains("# TYPE"), "metrics:\n{metrics}");
    // The up listener is not reachable from relay B's side and vice versa: each relay
    // can only ever carry its own leg.
    let cross = probe(
        &t.relay_b,
        &["wait", &format!("{}:{}", addr::EXIT_UP, port::EXIT_UP), "1"],
    );
    assert!(!cross.ok, "relay B reached the up listener");
}
