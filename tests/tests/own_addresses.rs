//! Issue 20 §1, TESTPLAN §27: the exit never dials itself. Written from the attacker's
//! side — a client with a valid key, through the tunnel — against an exit whose own
//! addresses lie inside the networks its policy allows (10.40.0.1 in 10.40.0.0/24, fd40::1
//! in fd40::/64), so that no other rule refuses them, with its admin listener on `[::]:9090`
//! (IPv4 and IPv6) and echo services on `0.0.0.0:7` and `[::]:17`. By address and by a name
//! that resolves to them, over TCP, UDP and ICMP echo, nothing answers, and each attempt is
//! refused by the exit's policy (`egress_refused{reason="own_address"}` rises, the refusal
//! is logged with the target). Addresses added to the exit's interface while it runs
//! (IPv4, an IPv4 secondary, IPv6) are listed by the exit within a second and refused the
//! same way.
//!
//! Controls: inside the exit namespace the same services answer on those addresses, and
//! through the tunnel the allowed networks answer (TCP, UDP, ICMP) and the names resolve.
//!
//! A second test covers what no interface lists, so that only the kernel check on the dial
//! path (`exit_node::own::is_local`) can see it: a range routed `local` to `lo` (AnyIP)
//! inside the allowed network, refused by a bind while `net.ipv4.ip_nonlocal_bind` is 0
//! and by the route once it is 1 (when any bind succeeds: the inet host must then still
//! answer).

use std::time::{Duration, Instant};

use e2e::extra;
use e2e::netns::{Netns, namespaces_available};
use e2e::topology::{ADMIN_TOKEN, Topology, addr, bin, port, probe, wait_listening};

/// The echo services the test binds to `::` (dual-stack) in the exit namespace.
const ECHO_ANY6: u16 = 17;
/// An IPv6 address added to the exit while it runs.
const EXIT_LATER6: &str = "fd40::77";
/// A secondary address (in the prefix of `eth-i`'s 10.40.0.1/24) added while the exit
/// runs. Its local route has `src 10.40.0.1`, so a wildcard UDP service answers a datagram
/// to it from 10.40.0.1, which a connected client drops: UDP proves nothing for it, and
/// only TCP, HTTP and ICMP are tried.
const EXIT_SECONDARY: &str = "10.40.0.78";

/// Whether a UDP answer from `ip` can be told from none (see [`EXIT_SECONDARY`]).
fn udp_testable(ip: &str) -> bool {
    ip != EXIT_SECONDARY
}
const OWN_REFUSED: &str = "half_tunnel_exit_egress_refused_total{reason=\"own_address\"}";

fn at(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// Allow unprivileged ping sockets for every group in a namespace (a per-namespace sysctl).
fn allow_ping_sockets(ns: &Netns) {
    let out = ns.exec("sysctl", &["-w", "net.ipv4.ping_group_range=0 2147483647"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The topology with the exit's services on wildcard addresses, IPv6 between exit and
/// inet (allowed), and the tunnel up.
fn exit_with_wildcard_services() -> Topology {
    let mut t = Topology::new();
    extra::inet_ipv6(&t);
    t.exit_allow(extra::INET6_NET);
    t.client_exit_has_ipv6(true);
    t.exit_admin_address(&at("::", port::ADMIN));
    let echo = bin("ht-probe");
    let log = t.dir.path().join("exit-echo6.log");
    let any6 = at("::", ECHO_ANY6);
    t.exit.spawn_logged(&echo, &["tcp-echo", &any6], &log);
    t.exit.spawn_logged(&echo, &["udp-echo", &any6], &log);
    wait_listening(&t.exit, &at(addr::EXIT_INET6, ECHO_ANY6));
    allow_ping_sockets(&t.client);
    allow_ping_sockets(&t.exit);
    t.start_tunnel();
    t
}

/// One thing an attacker tries: `ht-probe` arguments, run in the client namespace.
struct Attempt {
    args: Vec<String>,
    /// What the exit logs as the refused target (`ip:port`, or the bare IP for ICMP).
    target: String,
}

impl Attempt {
    fn new(args: &[&str], target: String) -> Attempt {
        Attempt {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            target,
        }
    }
}

/// Every way to reach the exit's own `ip` (its name `name`, if any): TCP and UDP echo
/// on both services, the admin listener over HTTP (metrics, and a kick), ICMP echo.
fn attempts_on(ip: &str, name: Option<&str>) -> Vec<Attempt> {
    let admin = at(ip, port::ADMIN);
    let kick = "POST /sessions/00000000-0000-0000-0000-000000000000/kick HTTP/1.1\r\n\
                Host: exit\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let mut all = vec![
        Attempt::new(&["body", &admin, "/metrics", ADMIN_TOKEN], admin.clone()),
        Attempt::new(&["tcp", &admin, kick], admin.clone()),
        Attempt::new(&["ping", ip, "ssrf"], ip.to_owned()),
    ];
    let mut echoes = vec![ECHO_ANY6];
    if !ip.contains(':') {
        echoes.push(port::ECHO);
    }
    for p in echoes {
        all.push(Attempt::new(&["tcp", &at(ip, p), "ssrf"], at(ip, p)));
        if udp_testable(ip) {
            all.push(Attempt::new(&["udp", &at(ip, p), "ssrf"], at(ip, p)));
        }
    }
    if let Some(name) = name {
        let by_name = format!("{name}:{}", port::ADMIN);
        all.push(Attempt::new(
            &["body", &by_name, "/metrics", ADMIN_TOKEN],
            admin.clone(),
        ));
        let by_name = format!("{name}:{ECHO_ANY6}");
        all.push(Attempt::new(&["tcp", &by_name, "ssrf"], at(ip, ECHO_ANY6)));
        // `ht-probe udp` opens an IPv4 socket for anything not in brackets.
        if !ip.contains(':') {
            all.push(Attempt::new(&["udp", &by_name, "ssrf"], at(ip, ECHO_ANY6)));
        }
    }
    all
}

/// Run `attempt` from the client: nothing may answer, and the exit must count and log
/// the refusal of its own address within 3 s.
fn assert_refused_as_own(t: &Topology, attempt: &Attempt) {
    let what = attempt.args.join(" ");
    let before = t.exit_counter(OWN_REFUSED);
    let args: Vec<&str> = attempt.args.iter().map(String::as_str).collect();
    let out = probe(&t.client, &args);
    let answered = out.stdout.contains("ssrf")
        || out.stdout.contains("half_tunnel")
        || out.stdout.contains("HTTP/1.1")
        || out.stdout.contains("reply=");
    assert!(
        !answered,
        "`ht-probe {what}` from the client got an answer from the exit itself:\n{}",
        out.stdout
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let log = t.log("exit-node.log");
        let stream_line = format!("target={}", attempt.target);
        let echo_line = format!("dest={}", attempt.target);
        let logged = log.lines().any(|l| {
            l.contains("own address")
                && ((l.contains("stream refused") && l.contains(&stream_line))
                    || (l.contains("echo refused") && l.contains(&echo_line)))
        });
        let counted = t.exit_counter(OWN_REFUSED) > before;
        if logged && counted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`ht-probe {what}`: not refused as the exit's own address (logged {logged}, \
             counted {counted}); the exit's log about it:\n{}",
            log.lines()
                .filter(|l| l.contains(&attempt.target))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Inside the exit namespace every service answers on `ip`: what the attacker must not
/// reach is really there.
fn assert_services_answer_inside_the_exit(t: &Topology, ip: &str) {
    let mut echoes = vec![ECHO_ANY6];
    if !ip.contains(':') {
        echoes.push(port::ECHO);
    }
    let transports: &[&str] = if udp_testable(ip) {
        &["tcp", "udp"]
    } else {
        &["tcp"]
    };
    for p in echoes {
        for transport in transports {
            let out = probe(&t.exit, &[transport, &at(ip, p), "here"]);
            assert_eq!(
                out.stdout.trim(),
                "here",
                "control: {transport} echo on {} inside the exit: {}",
                at(ip, p),
                out.stderr
            );
        }
    }
    let metrics = probe(
        &t.exit,
        &["body", &at(ip, port::ADMIN), "/metrics", ADMIN_TOKEN],
    );
    assert!(
        metrics.ok && metrics.stdout.contains("half_tunnel_exit"),
        "control: the admin listener on {ip} inside the exit: {}",
        metrics.stderr
    );
}

/// Through the tunnel the allowed networks answer, names of the exit resolve, and ping
/// works: the refusals below are the policy's, not a broken path.
fn assert_allowed_networks_answer_through_the_tunnel(t: &Topology) {
    for ip in [addr::INET, addr::INET6] {
        for transport in ["tcp", "udp"] {
            let out = probe(&t.client, &[transport, &at(ip, port::ECHO), "fine"]);
            assert_eq!(
                out.stdout.trim(),
                "fine",
                "control: {transport} to {ip} through the tunnel: {}",
                out.stderr
            );
        }
    }
    for ip in [addr::INET, addr::INET6] {
        let ping = probe(&t.client, &["ping", ip, "fine"]);
        assert!(ping.ok, "control: ping {ip} through the tunnel: {ping:?}");
    }
    let resolver = at(addr::VIRTUAL_RESOLVER, 53);
    for (name, ip, rtype) in [
        ("exit.inet.test", addr::EXIT_INET, "A"),
        ("exit6.inet.test", addr::EXIT_INET6, "AAAA"),
        ("later.inet.test", addr::EXIT_LATER, "A"),
    ] {
        let out = probe(&t.client, &["dns", &resolver, name, "udp", rtype]);
        assert!(
            out.stdout.lines().any(|l| l.trim() == ip),
            "control: {name} through the tunnel: {}{}",
            out.stdout,
            out.stderr
        );
    }
}

/// Wait (1 s at most) until the exit logs that its own addresses now include `ip`; how
/// long that took after `since`.
fn listed_within_a_second(t: &Topology, ip: &str, since: Instant) -> Duration {
    loop {
        let listed = t
            .log("exit-node.log")
            .lines()
            .any(|l| l.contains("own addresses changed") && l.contains(ip));
        if listed {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(1),
            "the exit did not list {ip}, added to its interface, within a second:\n{}",
            t.log("exit-node.log")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_exit_never_dials_itself() {
    if !namespaces_available("the_exit_never_dials_itself") {
        return;
    }
    let t = exit_with_wildcard_services();
    assert_services_answer_inside_the_exit(&t, addr::EXIT_INET);
    assert_services_answer_inside_the_exit(&t, addr::EXIT_INET6);
    assert_allowed_networks_answer_through_the_tunnel(&t);
    let mut tried = 0;
    for (ip, name) in [
        (addr::EXIT_INET, "exit.inet.test"),
        (addr::EXIT_INET6, "exit6.inet.test"),
    ] {
        for attempt in attempts_on(ip, Some(name)) {
            assert_refused_as_own(&t, &attempt);
            tried += 1;
        }
    }
    // Addresses added while the exit runs: an IPv4 address of its own, a secondary one
    // in eth-i's prefix, and an IPv6 one.
    let mut listed = Vec::new();
    for (ip, cidr) in [
        (addr::EXIT_LATER, format!("{}/32", addr::EXIT_LATER)),
        (EXIT_SECONDARY, format!("{EXIT_SECONDARY}/24")),
        (EXIT_LATER6, format!("{EXIT_LATER6}/64")),
    ] {
        let added = Instant::now();
        let mut args = vec!["addr", "add", cidr.as_str(), "dev", "eth-i"];
        if ip.contains(':') {
            // Usable at once, without duplicate address detection.
            args.push("nodad");
        }
        t.exit.ip(&args);
        listed.push((ip, listed_within_a_second(&t, ip, added)));
        assert_services_answer_inside_the_exit(&t, ip);
        let name = (ip == addr::EXIT_LATER).then_some("later.inet.test");
        for attempt in attempts_on(ip, name) {
            assert_refused_as_own(&t, &attempt);
            tried += 1;
        }
    }
    // The tunnel still serves the allowed networks.
    let ok = probe(&t.client, &["tcp", &at(addr::INET, port::ECHO), "still"]);
    assert_eq!(ok.stdout.trim(), "still", "{}", ok.stderr);
    eprintln!(
        "{tried} attempts on the exit's own addresses, none answered; \
         egress_refused{{reason=\"own_address\"}} = {}; added addresses listed after {listed:?}",
        t.exit_counter(OWN_REFUSED)
    );
}

/// An AnyIP range of the exit (`ip route add local … dev lo`) inside the allowed network:
/// every address in it is the exit's, though no interface has it.
const ANYIP_NET: &str = "10.40.0.96/28";

#[test]
fn a_range_routed_local_is_refused_with_and_without_nonlocal_bind() {
    if !namespaces_available("a_range_routed_local_is_refused_with_and_without_nonlocal_bind") {
        return;
    }
    let t = exit_with_wildcard_services();
    t.exit
        .ip(&["route", "add", "local", ANYIP_NET, "dev", "lo"]);
    for (nonlocal_bind, ip) in [("0", "10.40.0.100"), ("1", "10.40.0.101")] {
        let sysctl = format!("net.ipv4.ip_nonlocal_bind={nonlocal_bind}");
        t.exit.exec("sysctl", &["-w", &sysctl]);
        assert_services_answer_inside_the_exit(&t, ip);
        for attempt in attempts_on(ip, None) {
            assert_refused_as_own(&t, &attempt);
        }
        // No false positive: with non-local binds allowed, a bind succeeds for every
        // address, and the inet host must still be reached.
        for transport in ["tcp", "udp"] {
            let out = probe(&t.client, &[transport, &at(addr::INET, port::ECHO), "fine"]);
            assert_eq!(
                out.stdout.trim(),
                "fine",
                "{sysctl}: {transport} to {} through the tunnel: {}",
                addr::INET,
                out.stderr
            );
        }
        let listed = t
            .log("exit-node.log")
            .lines()
            .any(|l| l.contains("own addresses") && l.contains(ip));
        assert!(
            !listed,
            "{ip} was listed: this test is about the kernel check"
        );
    }
}
