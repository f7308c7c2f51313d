//! The benchmark's comparison paths (`ht-bench --peers`): each other tool carries the
//! client's traffic to inet on its own copy of the direct path. `.ci/run` installs the
//! tools; outside CI a machine without them skips this test and says so.

use e2e::bench::SERVE_PORT;
use e2e::netns::namespaces_available;
use e2e::peers::{Peer, PeerPath};
use e2e::topology::{addr, bin};

#[test]
fn each_peer_carries_request_response_through_its_own_interface() {
    if !namespaces_available("peers") {
        return;
    }
    for peer in Peer::ALL {
        let missing = peer.missing();
        if !missing.is_empty() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{}: {} missing under CI; install with `{}`",
                peer.name(),
                missing.join(" and "),
                peer.install()
            );
            eprintln!(
                "SKIPPED peer {}: {} missing",
                peer.name(),
                missing.join(", ")
            );
            continue;
        }
        let p = PeerPath::new(peer).unwrap_or_else(|e| panic!("{}: {e:#}", peer.name()));
        // The client's default route also reaches inet (kernel forwarding, the direct
        // path): the packets must go into the tool's interface instead.
        let before = p.tun_tx_packets();
        let target = format!("{}:{SERVE_PORT}", addr::INET);
        let out = p.net.client.exec(
            &bin("ht-bench"),
            &["rr", "--target", &target, "--count", "500"],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.starts_with("n=500 "), "{}: {text}", peer.name());
        let sent = p.tun_tx_packets() - before;
        // 550 requests (with the warm-up), each at least one packet.
        assert!(
            sent >= 550,
            "{}: only {sent} packets went into {}",
            peer.name(),
            p.tun()
        );
        for (name, pid) in p.processes() {
            assert!(
                std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "{}: {name} exited",
                peer.name()
            );
        }
    }
}
