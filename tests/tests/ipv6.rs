//! IPv6 through the tunnel (issue 5: "IPv6 too"; TESTPLAN §11).
//!
//! The exit and inet get IPv6 (`extra::inet_ipv6`: `fd40::1` ↔ `fd40::2`, a second
//! `ht-inet` with HTTP and echo on `[fd40::2]`), the exit's policy allows `fd40::/64`.
//! * With `session.exit_has_ipv6 = true`: 100 MiB down and up over IPv6 with checksums
//!   and the relay split, UDP and TCP echo, AAAA by name through the virtual resolver (both
//!   families, UDP and TCP) and through the managed resolv.conf; a capture on the exit's
//!   inet side shows the traffic really left as IPv6, one on the client's `eth0` only the
//!   legs. Plus 64 parallel downloads, half over IPv4, half over IPv6, each checksummed.
//! * With `exit_has_ipv6 = false` on the same topology (so a leaked IPv6 flow *would*
//!   work): IPv6 TCP is refused at once inside the tunnel, UDP gets no answer, nothing
//!   reaches inet's IPv6 address and nothing leaves `eth0` — while IPv4 still works.
//!   (leaks.rs covers IPv6 to addresses nobody serves; this is the case where the exit
//!   could reach the target.)

use std::time::{Duration, Instant};

use e2e::extra::{self, EXIT_INET6, INET6_NET};
use e2e::netns::namespaces_available;
use e2e::payload::{Payload, SEED, expected_sha256, sha256_of};
use e2e::topology::{Capture, Leg, Topology, addr, is_leg_or_link_traffic, port, probe};

const MIB: u64 = 1 << 20;

fn http6() -> String {
    format!("[{}]:{}", addr::INET6, port::HTTP)
}

fn echo6() -> String {
    format!("[{}]:{}", addr::INET6, port::ECHO)
}

/// The topology with IPv6 between exit and inet, allowed by the exit; the client told
/// `exit_has_ipv6`; the tunnel up.
fn v6_tunnel(test: &str, exit_has_ipv6: bool) -> Option<Topology> {
    if !namespaces_available(test) {
        return None;
    }
    let mut t = Topology::new();
    extra::inet_ipv6(&t);
    t.exit_allow(INET6_NET);
    t.client_exit_has_ipv6(exit_has_ipv6);
    t.start_tunnel();
    // Control: the exit itself reaches inet over IPv6 (what the tunnel would use).
    let direct = probe(&t.exit, &["get", &http6(), "/bytes/1000"]);
    assert_eq!(
        direct.field("sha256"),
        Some(expected_sha256(1000).as_str()),
        "exit → inet over IPv6: {}",
        direct.stderr
    );
    Some(t)
}

fn leaks(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|l| !is_leg_or_link_traffic(l))
        .collect()
}

#[test]
fn ipv6_goes_through_an_exit_that_has_ipv6() {
    let Some(t) = v6_tunnel("ipv6_goes_through_an_exit_that_has_ipv6", true) else {
        return;
    };
    let outer = Capture::start(&t.client, "eth0", t.dir.path());
    let inet_side = Capture::start(&t.exit, "eth-i", t.dir.path());

    // AAAA through the virtual resolvers (v4 and v6 addresses, UDP and TCP), and a
    // hard-coded IPv6 resolver (intercepted).
    let expect = format!("rcode=No Error\n{}\n", addr::INET6);
    for (server, transport) in [
        (format!("{}:53", addr::VIRTUAL_RESOLVER), "udp"),
        ("[fd00:4854::2]:53".to_owned(), "tcp"),
        ("[2001:db8::53]:53".to_owned(), "udp"),
    ] {
        let out = probe(
            &t.client,
            &["dns", &server, "www6.inet.test", transport, "AAAA"],
        );
        assert_eq!(
            out.stdout, expect,
            "AAAA via {server}/{transport}: {}",
            out.stderr
        );
    }
    // By name through the managed resolv.conf (getaddrinfo asks for the AAAA).
    let by_name = probe(&t.client, &["get", "www6.inet.test:80", "/bytes/4096"]);
    assert_eq!(
        by_name.field("sha256"),
        Some(expected_sha256(4096).as_str()),
        "GET by name over IPv6: {}",
        by_name.stderr
    );

    let udp = probe(&t.client, &["udp", &echo6(), "v6-udp"]);
    assert_eq!(
        udp.stdout.trim(),
        "v6-udp",
        "UDP echo over IPv6: {}",
        udp.stderr
    );
    let tcp = probe(&t.client, &["tcp", &echo6(), "v6-tcp"]);
    assert_eq!(
        tcp.stdout.trim(),
        "v6-tcp",
        "TCP echo over IPv6: {}",
        tcp.stderr
    );

    let n = 100 * MIB;
    let (a0, b0) = (t.relay_stats(Leg::Up), t.relay_stats(Leg::Down));
    let got = probe(&t.client, &["get", &http6(), &format!("/bytes/{n}")]);
    assert!(got.ok, "IPv6 download: {}", got.stderr);
    assert_eq!(got.field("bytes"), Some(n.to_string().as_str()));
    assert_eq!(got.field("sha256"), Some(expected_sha256(n).as_str()));
    let put = probe(&t.client, &["put", &http6(), &n.to_string()]);
    assert!(put.ok, "IPv6 upload: {}", put.stderr);
    let (_, sha) = sha256_of(Payload::new(SEED, n)).unwrap();
    assert!(
        put.stdout.ends_with(&format!("reply={n} {sha}\n")),
        "the server received something else: {}",
        put.stdout
    );
    let (a1, b1) = (t.relay_stats(Leg::Up), t.relay_stats(Leg::Down));
    assert!(b1.s2c_bytes - b0.s2c_bytes >= n, "download via relay B");
    assert!(a1.c2s_bytes - a0.c2s_bytes >= n, "upload via relay A");
    assert!(
        a1.s2c_bytes - a0.s2c_bytes < MIB,
        "relay A carried download bytes"
    );
    assert!(
        b1.c2s_bytes - b0.c2s_bytes < MIB,
        "relay B carried upload bytes"
    );
    eprintln!("IPv6: {} / {}", got.stdout.trim(), put.stdout.trim());

    let outer = outer.stop();
    let leaked = leaks(&outer);
    assert!(leaked.is_empty(), "leaked on eth0: {leaked:?}");
    // The exit dialled inet over IPv6: its inet side carried the flows as IP6.
    let inet_side = inet_side.stop();
    for (what, needle) in [
        ("HTTP", format!("{EXIT_INET6}.")),
        ("HTTP", format!("> {}.80:", addr::INET6)),
        ("echo", format!("> {}.7:", addr::INET6)),
    ] {
        assert!(
            inet_side
                .iter()
                .any(|l| l.contains(" IP6 ") && l.contains(&needle)),
            "no IPv6 {what} packet ({needle}) on the exit's inet side"
        );
    }
}

#[test]
fn many_parallel_downloads_over_both_families_are_intact() {
    let Some(t) = v6_tunnel(
        "many_parallel_downloads_over_both_families_are_intact",
        true,
    ) else {
        return;
    };
    const FLOWS: u64 = 64;
    let each = 2 * MIB;
    let http4 = format!("{}:{}", addr::INET, port::HTTP);
    let started = Instant::now();
    let results: Vec<(String, Option<String>, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..FLOWS)
            .map(|i| {
                // Different sizes, so that a mixed-up stream cannot match by accident.
                let n = each + i * 4099;
                let target = if i % 2 == 0 { http4.clone() } else { http6() };
                let client = &t.client;
                s.spawn(move || {
                    let out = probe(client, &["get", &target, &format!("/bytes/{n}")]);
                    (
                        expected_sha256(n),
                        out.field("sha256").map(str::to_owned),
                        format!("{target} {n}: {} {}", out.stdout.trim(), out.stderr.trim()),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let bad: Vec<&String> = results
        .iter()
        .filter(|(want, got, _)| got.as_deref() != Some(want.as_str()))
        .map(|(_, _, what)| what)
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {FLOWS} downloads failed:\n{bad:#?}",
        bad.len()
    );
    eprintln!(
        "{FLOWS} parallel downloads (~{} MiB in all, half IPv6) intact in {:?}",
        FLOWS * each / MIB,
        started.elapsed()
    );
}

#[test]
fn without_exit_ipv6_ipv6_is_refused_inside_the_tunnel_even_if_reachable() {
    let Some(t) = v6_tunnel(
        "without_exit_ipv6_ipv6_is_refused_inside_the_tunnel_even_if_reachable",
        false,
    ) else {
        return;
    };
    let outer = Capture::start(&t.client, "eth0", t.dir.path());
    let inet_side = Capture::start(&t.inet, "eth0", t.dir.path());
    // TCP: refused at once by the client's stack (not a timeout).
    let started = Instant::now();
    let tcp = probe(&t.client, &["tcp", &echo6(), "v6-tcp"]);
    let took = started.elapsed();
    assert!(
        !tcp.stdout.contains("v6-tcp"),
        "IPv6 TCP got through although the exit has no IPv6: {}",
        tcp.stdout
    );
    assert!(
        took < Duration::from_millis(1500),
        "IPv6 TCP was not refused promptly ({took:?}): {}",
        tcp.stderr
    );
    let udp = probe(&t.client, &["udp", &echo6(), "v6-udp"]);
    assert!(
        !udp.stdout.contains("v6-udp"),
        "IPv6 UDP echoed: {}",
        udp.stdout
    );
    let get = probe(&t.client, &["get", &http6(), "/bytes/1000"]);
    assert!(!get.ok, "IPv6 HTTP worked: {}", get.stdout);
    // IPv4 in the same tunnel still works.
    let v4 = probe(
        &t.client,
        &["udp", &format!("{}:{}", addr::INET, port::ECHO), "v4"],
    );
    assert_eq!(v4.stdout.trim(), "v4", "{}", v4.stderr);
    let outer = outer.stop();
    let leaked = leaks(&outer);
    assert!(leaked.is_empty(), "leaked on eth0: {leaked:?}");
    let inet_side = inet_side.stop();
    let v6: Vec<&String> = inet_side
        .iter()
        .filter(|l| l.contains(" IP6 ") && l.contains(addr::INET6) && !l.contains("ICMP6"))
        .collect();
    assert!(v6.is_empty(), "IPv6 reached inet: {v6:?}");
    // The capture on inet was live: the IPv4 echo is in it.
    assert!(
        inet_side
            .iter()
            .any(|l| l.contains(&format!("{}.7:", addr::INET))),
        "the inet capture missed the IPv4 control: {inet_side:?}"
    );
    eprintln!("IPv6 TCP refused in {took:?}: {}", tcp.stderr.trim());
}
