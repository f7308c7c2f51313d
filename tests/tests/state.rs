//! Host state damaged from outside while the client runs or after it died (TESTPLAN
//! §14–15):
//!
//! * another program rewrites the resolver file while the tunnel is up: within seconds
//!   the client puts its own back (apps keep resolving through the tunnel), and on a clean
//!   stop the other program's version — the newest upstream — is what is restored;
//! * the undo journal is corrupted after `kill -9`: `vpn-client down` and the next `up`
//!   refuse with an error naming the file and what to do, change nothing, and the kill
//!   switch stays closed (nothing unmarked leaves); following the error's instructions
//!   reopens the host.

use std::time::{Duration, Instant};

use e2e::netns::namespaces_available;
use e2e::payload::expected_sha256;
use e2e::topology::{Topology, addr, bin, port, probe};

fn resolv_path(t: &Topology) -> String {
    format!("/etc/netns/{}/resolv.conf", t.client.name())
}

#[test]
fn a_rewritten_resolver_file_is_put_back_and_the_newest_upstream_restored() {
    if !namespaces_available(
        "a_rewritten_resolver_file_is_put_back_and_the_newest_upstream_restored",
    ) {
        return;
    }
    let mut t = Topology::new();
    t.start_tunnel();
    let path = resolv_path(&t);
    let ours = format!("nameserver {}", addr::VIRTUAL_RESOLVER);
    assert!(std::fs::read_to_string(&path).unwrap().contains(&ours));

    let theirs = "# written by a DHCP client\nnameserver 192.0.2.99\n";
    std::fs::write(&path, theirs).unwrap();
    let rewritten = Instant::now();
    let put_back = loop {
        let now = std::fs::read_to_string(&path).unwrap();
        if now.contains(&ours) {
            break rewritten.elapsed();
        }
        assert!(
            rewritten.elapsed() < Duration::from_secs(10),
            "the resolver file was not put back:\n{now}\n{}",
            t.logs(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let by_name = probe(&t.client, &["get", "www.inet.test:80", "/bytes/1000"]);
    assert_eq!(
        by_name.field("sha256"),
        Some(expected_sha256(1000).as_str()),
        "GET by name after the rewrite: {}",
        by_name.stderr
    );
    let status = t.stop_client().expect("vpn-client stops");
    assert!(status.success(), "vpn-client exit status {status}");
    let after = std::fs::read_to_string(&path).unwrap();
    assert_eq!(after, theirs, "a clean stop restores the newest upstream");
    eprintln!(
        "resolver file put back {put_back:?} after the rewrite; the rewrite restored on stop"
    );
}

#[test]
fn a_corrupt_journal_changes_nothing_and_keeps_the_kill_switch_closed() {
    if !namespaces_available("a_corrupt_journal_changes_nothing_and_keeps_the_kill_switch_closed") {
        return;
    }
    let mut t = Topology::new();
    t.client_config_extra("\n[kill_switch]\nenabled = true\n");
    t.start_tunnel();
    t.signal_client("KILL").expect("vpn-client dies on SIGKILL");
    let journal = t.dir.path().join("journal").join("journal.json");
    assert!(journal.exists(), "no journal at {}", journal.display());
    std::fs::write(&journal, b"{\"version\": 1, \"actions\": [trunc").unwrap();
    let before = t.client_snapshot();
    let relay = format!("{}:{}", addr::RELAY_A, port::RELAY);

    for cmd in ["down", "up"] {
        let out = t.client.try_exec(
            &bin("vpn-client"),
            &[cmd, "--config", &t.file("client.toml")],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "`{cmd}` accepted a corrupt journal: {text}"
        );
        assert!(
            text.contains("corrupt") && text.contains("journal.json"),
            "`{cmd}` does not name the corrupt file: {text}"
        );
        assert!(
            text.contains("nft delete table inet half_tunnel"),
            "`{cmd}` does not say how to reopen the host: {text}"
        );
        assert_eq!(before, t.client_snapshot(), "`{cmd}` changed the host");
        let direct = probe(&t.client, &["wait", &relay, "2"]);
        assert!(!direct.ok, "after `{cmd}` the host is open");
    }
    // The instructions work: delete the table and the journal, and the host is open.
    t.client
        .exec("nft", &["delete", "table", "inet", "half_tunnel"]);
    std::fs::remove_file(&journal).unwrap();
    let direct = probe(&t.client, &["wait", &relay, "5"]);
    assert!(
        direct.ok,
        "the host stays closed after the manual repair: {}",
        direct.stderr
    );
}
