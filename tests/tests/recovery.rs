//! The kill switch and host-state recovery with the real client (TESTPLAN §12–14):
//! both legs cut while apps keep trying leaks nothing and the tunnel comes back by itself;
//! `kill -9` leaves the host closed until `vpn-client down` restores routes, rules, the
//! nftables ruleset and the resolver file byte for byte; a clean SIGTERM does the same.

use std::time::{Duration, Instant};

use e2e::netns::namespaces_available;
use e2e::topology::{
    Capture, Leg, Topology, addr, assert_no_attempt_answered, assert_no_leaks,
    assert_saw_leg_reconnects, port, probe,
};

const KILL_SWITCH: &str = "\n[kill_switch]\nenabled = true\n";

fn http() -> String {
    format!("{}:{}", addr::INET, port::HTTP)
}

fn relay_a() -> String {
    format!("{}:{}", addr::RELAY_A, port::RELAY)
}

/// A topology whose client has the kill switch on; the snapshot of the client namespace
/// taken just before `vpn-client up`; the tunnel is up.
fn kill_switch_tunnel(test: &str) -> Option<(Topology, String)> {
    if !namespaces_available(test) {
        return None;
    }
    let mut t = Topology::new();
    t.client_config_extra(KILL_SWITCH);
    let exit_public = t.start_exit();
    t.prepare_client(&exit_public);
    let before = t.client_snapshot();
    // Control for the "host stays closed" checks: before `up`, an ordinary socket reaches
    // the relay directly.
    let direct = probe(&t.client, &["wait", &relay_a(), "2"]);
    assert!(
        direct.ok,
        "before up, the relay is reachable: {}",
        direct.stderr
    );
    t.spawn_client();
    t.wait_tunnel(Duration::from_secs(20));
    assert!(
        t.client_status().contains("kill switch: on"),
        "{}",
        t.client_status()
    );
    Some((t, before))
}

/// Line-by-line difference of two snapshots, for the failure message.
fn diff(before: &str, after: &str) -> String {
    let b: Vec<&str> = before.lines().collect();
    let a: Vec<&str> = after.lines().collect();
    let mut out = String::new();
    for l in &b {
        if !a.contains(l) {
            out += &format!("- {l}\n");
        }
    }
    for l in &a {
        if !b.contains(l) {
            out += &format!("+ {l}\n");
        }
    }
    out
}

fn assert_same_snapshot(before: &str, after: &str, when: &str) {
    assert!(
        before == after,
        "{when}: the client namespace differs from before `up`:\n{}\n--- before\n{before}\n--- after\n{after}",
        diff(before, after)
    );
}

#[test]
fn both_legs_cut_with_the_kill_switch_leak_nothing_and_recover_by_themselves() {
    let Some((t, _)) = kill_switch_tunnel(
        "both_legs_cut_with_the_kill_switch_leak_nothing_and_recover_by_themselves",
    ) else {
        return;
    };
    let capture = Capture::start(&t.client, "eth0", t.dir.path());
    // Cut both legs: new connections are reset by the relays, the current ones dropped.
    for leg in [Leg::Up, Leg::Down] {
        assert_eq!(t.relay(leg, "refuse on"), "ok");
        assert_eq!(t.relay(leg, "kill"), "ok");
    }
    let cut = Instant::now();
    // Apps keep trying for 5 s: TCP, UDP, DNS (hard-coded and LAN resolvers), IPv6, the
    // LAN router, the relays' other ports. None may succeed, none may leave eth0.
    let echo = |ip: &str| format!("{ip}:{}", port::ECHO);
    let attempts: Vec<Vec<String>> = vec![
        vec!["get".into(), http(), "/bytes/1000".into()],
        vec!["udp".into(), echo(addr::INET), "x".into()],
        vec!["tcp".into(), echo(addr::INET), "x".into()],
        vec!["dns".into(), "192.0.2.53:53".into(), "www.inet.test".into()],
        vec![
            "dns".into(),
            format!("{}:53", addr::LAN_GW),
            "www.inet.test".into(),
            "tcp".into(),
        ],
        vec!["udp".into(), echo(addr::LAN_GW), "x".into()],
        vec!["tcp".into(), format!("{}:80", addr::RELAY_B), "x".into()],
        vec!["udp".into(), "[fd10::1]:7".into(), "x".into()],
        vec!["udp".into(), "[2001:db8::7]:7".into(), "x".into()],
    ];
    let mut tries = 0;
    while cut.elapsed() < Duration::from_secs(5) {
        assert_no_attempt_answered(&t.client, &attempts, "while both legs were cut");
        tries += 1;
    }
    // Traffic resumes by itself once the relays accept again.
    for leg in [Leg::Up, Leg::Down] {
        assert_eq!(t.relay(leg, "refuse off"), "ok");
    }
    let resumed = Instant::now();
    t.wait_tunnel(Duration::from_secs(20));
    eprintln!(
        "cut for {:?} ({tries} rounds of attempts); resumed {:?} after the relays accepted again",
        resumed - cut,
        resumed.elapsed()
    );
    let lines = capture.stop();
    assert_no_leaks(&lines, "on the client's eth0 while the legs were cut");
    // The capture was live throughout: the legs' reconnect attempts are in it.
    assert_saw_leg_reconnects(&lines);
    let got = probe(&t.client, &["get", &http(), "/bytes/1048576"]);
    assert_eq!(got.field("bytes"), Some("1048576"), "{}", got.stderr);
}

#[test]
fn kill_9_keeps_the_host_closed_and_down_restores_it_byte_identical() {
    let Some((mut t, before)) =
        kill_switch_tunnel("kill_9_keeps_the_host_closed_and_down_restores_it_byte_identical")
    else {
        return;
    };
    let up = t.client_snapshot();
    assert_ne!(up, before, "`up` changed nothing visible");
    let status = t.signal_client("KILL").expect("vpn-client dies on SIGKILL");
    assert!(!status.success());
    // The kill switch outlives the process: nothing unmarked leaves (the relay, reachable
    // directly before `up`, is not), and nothing reaches inet either (the TUN is gone).
    let after_kill = t.client_snapshot();
    assert!(
        after_kill.contains("table inet half_tunnel"),
        "the kill switch table is gone after kill -9:\n{after_kill}"
    );
    let direct = probe(&t.client, &["wait", &relay_a(), "2"]);
    assert!(
        !direct.ok,
        "after kill -9 the host is open: reached {}",
        relay_a()
    );
    let got = probe(&t.client, &["get", &http(), "/"]);
    assert!(!got.ok, "after kill -9 inet is reachable: {}", got.stdout);

    let out = t.client_down();
    eprintln!("vpn-client down: {}", out.trim());
    assert!(out.contains("restored"), "{out}");
    assert_same_snapshot(&before, &t.client_snapshot(), "after kill -9 and down");
    let direct = probe(&t.client, &["wait", &relay_a(), "2"]);
    assert!(
        direct.ok,
        "after down the host is still closed: {}",
        direct.stderr
    );
    // A second `down` finds nothing to do.
    let again = t.client_down();
    assert!(again.contains("nothing to restore"), "{again}");
}

#[test]
fn kill_9_then_the_next_up_recovers_and_a_clean_stop_restores_byte_identical() {
    let Some((mut t, before)) = kill_switch_tunnel(
        "kill_9_then_the_next_up_recovers_and_a_clean_stop_restores_byte_identical",
    ) else {
        return;
    };
    t.signal_client("KILL").expect("vpn-client dies on SIGKILL");
    // The next `up` undoes the dead instance's changes first, then works.
    t.spawn_client();
    t.wait_tunnel(Duration::from_secs(20));
    let log = t.log("vpn-client.log");
    assert!(
        log.contains("a previous run did not clean up"),
        "the second up did not recover the journal:\n{log}"
    );
    // Clean SIGTERM: everything back as before the first `up`, no device, rule or file left.
    let status = t.stop_client().expect("vpn-client stops on SIGTERM");
    assert!(status.success(), "vpn-client exit status {status}");
    assert_same_snapshot(&before, &t.client_snapshot(), "after SIGTERM");
    assert!(
        !t.dir.path().join("control.sock").exists(),
        "control socket left behind"
    );
    let journal: Vec<_> = std::fs::read_dir(t.dir.path().join("journal"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(journal.is_empty(), "journal files left behind: {journal:?}");
    let down = t.client_down();
    assert!(down.contains("nothing to restore"), "{down}");
}
