//! ICMP echo through the tunnel (issue 4/5): `ping` from the client namespace reaches a
//! host in the internet namespace through the TUN, netstack, both legs and the exit's
//! unprivileged ping socket, and the payload comes back intact. Refused destinations get no
//! reply.

use e2e::netns::namespaces_available;
use e2e::topology::{Topology, addr, probe};

/// Allow unprivileged ping sockets for every group in a namespace (a per-namespace sysctl).
fn allow_ping_sockets(ns: &e2e::netns::Netns) {
    let out = ns.exec("sysctl", &["-w", "net.ipv4.ping_group_range=0 2147483647"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ping_crosses_the_tunnel_and_refused_targets_stay_silent() {
    if !namespaces_available("ping_crosses_the_tunnel_and_refused_targets_stay_silent") {
        return;
    }
    let mut t = Topology::new();
    allow_ping_sockets(&t.client);
    allow_ping_sockets(&t.exit);
    t.start_tunnel();
    let out = probe(&t.client, &["ping", addr::INET, "half-tunnel echo"]);
    assert!(
        out.ok,
        "ping through the tunnel failed: {out:?}\n{}",
        t.logs(40)
    );
    assert!(out.stdout.contains("reply=half-tunnel echo"), "{out:?}");
    // The private service is reachable from the exit but refused by its egress policy.
    let refused = probe(&t.client, &["ping", addr::PRIVATE, "nope"]);
    assert!(!refused.ok, "a refused destination answered: {refused:?}");
    assert!(
        t.log("exit-node.log").contains("echo refused"),
        "{}",
        t.log("exit-node.log")
    );
}
