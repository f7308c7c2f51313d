//! Relays that tamper and attack, against the real binaries (TESTPLAN §4–6): a relay flips a
//! bit in, drops, or duplicates one record mid-download, closes the legs cleanly
//! mid-download, or replays a leg's first message (a handshake or an attach) on a new
//! connection to the exit. The app's download stays byte-exact, a broken leg is resumed,
//! and replays are refused (no answer, counted by the exit) without touching the session.

use std::process::Stdio;
use std::time::{Duration, Instant};

use e2e::payload::expected_sha256;
use e2e::topology::{Leg, RelayStats, Topology, addr, bin, field, finish, port, probe};

const MIB: u64 = 1 << 20;
/// Each download: 16 MiB paced at 8 MiB/s, so a fault injected after 0.5 s lands inside it.
const SIZE: u64 = 16 * MIB;
const RATE: u64 = 8 * MIB;

fn http() -> String {
    format!("{}:{}", addr::INET, port::HTTP)
}

fn tunnel(test: &str) -> Option<Topology> {
    Topology::with_tunnel(test)
}

/// Run a paced download in the client, call `fault` 0.5 s into it (asserting the download
/// is still running), and assert the app got every byte with the right checksum.
fn download_with(t: &Topology, what: &str, fault: impl FnOnce()) {
    let path = format!("/bytes/{SIZE}?rate={RATE}");
    let mut child = t
        .client
        .command(&bin("ht-probe"))
        .args(["get", &http(), &path])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the download");
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "{what}: the download ended before the fault"
    );
    fault();
    let stdout = finish(child, &format!("{what}: the download"));
    eprintln!("{what}: {} after {:?}", stdout.trim(), started.elapsed());
    assert_eq!(field(&stdout, "status").as_deref(), Some("200"), "{what}");
    assert_eq!(field(&stdout, "bytes"), Some(SIZE.to_string()), "{what}");
    assert_eq!(
        field(&stdout, "sha256"),
        Some(expected_sha256(SIZE)),
        "{what}: the app received different bytes"
    );
}

/// Wait (10 s at most) until `leg`'s relay has relayed more connections than `before`.
fn await_reconnect(t: &Topology, leg: Leg, before: &RelayStats, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = t.relay_stats(leg);
        if now.connections > before.connections {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the {leg:?} leg was not closed and re-attached: {before:?} → {now:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn bytes(s: &RelayStats, dir: &str) -> u64 {
    if dir == "c2s" {
        s.c2s_bytes
    } else {
        s.s2c_bytes
    }
}

#[test]
fn tampered_dropped_or_duplicated_records_never_corrupt_a_download() {
    let Some(t) = tunnel("tampered_dropped_or_duplicated_records_never_corrupt_a_download") else {
        return;
    };
    // The down leg carries the download's records exit → client; the up leg carries the
    // client's records (window credit, acknowledgements) client → exit.
    let cases = [
        ("flip", Leg::Down, "s2c"),
        ("flip", Leg::Up, "c2s"),
        ("drop", Leg::Down, "s2c"),
        ("drop", Leg::Up, "c2s"),
        ("dup", Leg::Down, "s2c"),
        ("dup", Leg::Up, "c2s"),
    ];
    for (kind, leg, dir) in cases {
        let what = format!("{kind} {dir} 1 on the {leg:?} leg");
        let before = t.relay_stats(leg);
        let mut armed = before;
        download_with(&t, &what, || {
            armed = t.relay_stats(leg);
            assert_eq!(t.relay(leg, &format!("{kind} {dir} 1")), "ok");
        });
        // The fault was used: binary messages went that way after it was armed (every
        // message passing the relay consumes the armed fault, whatever it is).
        let after = t.relay_stats(leg);
        assert!(
            bytes(&after, dir) > bytes(&armed, dir),
            "{what}: no message passed after arming: {armed:?} → {after:?}"
        );
        if kind == "dup" {
            // PROTOCOL.md §4.4: a duplicate (counter < next) is dropped silently; the
            // download above proves nothing of it reached the app.
            continue;
        }
        // A tampered or missing record breaks the leg (RecordAuth / CounterGap): the leg
        // is closed and the client re-attaches it through the same relay.
        await_reconnect(&t, leg, &before, &what);
    }
    // The session survived all of it: one handshake, no new session.
    assert_eq!(
        t.exit_counter("half_tunnel_exit_handshakes_accepted_total"),
        1.0,
        "a fault cost the session: {}",
        t.exit_metrics()
    );
}

#[test]
fn a_relay_closing_the_legs_cleanly_is_no_fin_for_the_app() {
    let Some(t) = tunnel("a_relay_closing_the_legs_cleanly_is_no_fin_for_the_app") else {
        return;
    };
    // A clean WebSocket close (close frame, TLS close_notify, TCP FIN) of the down leg, of
    // the up leg, and of both: the app must see neither an early end (short body, which
    // the length and checksum would show) nor a reset.
    for legs in [&[Leg::Down][..], &[Leg::Up], &[Leg::Up, Leg::Down]] {
        let what = format!("clean close of {legs:?}");
        let before: Vec<RelayStats> = legs.iter().map(|&l| t.relay_stats(l)).collect();
        download_with(&t, &what, || {
            for &leg in legs {
                assert_eq!(t.relay(leg, "close"), "ok");
            }
        });
        for (&leg, before) in legs.iter().zip(&before) {
            await_reconnect(&t, leg, before, &what);
        }
    }
    assert_eq!(
        t.exit_counter("half_tunnel_exit_handshakes_accepted_total"),
        1.0,
        "a clean close cost the session"
    );
}

#[test]
fn replayed_handshakes_and_attaches_are_refused_and_the_victim_is_unaffected() {
    let Some(t) =
        tunnel("replayed_handshakes_and_attaches_are_refused_and_the_victim_is_unaffected")
    else {
        return;
    };
    let rejected = |reason: &str| {
        t.exit_counter(&format!(
            "half_tunnel_exit_handshakes_rejected_total{{reason=\"{reason}\"}}"
        ))
    };
    let (a0, b0) = (t.relay_stats(Leg::Up), t.relay_stats(Leg::Down));

    // Relay A's most recent connection is the up leg that carried the handshake: replay
    // that HandshakeInit on a new connection to the exit.
    let replay0 = rejected("replay");
    assert_eq!(t.relay(Leg::Up, "replay"), "replayed answers=0");
    assert_eq!(rejected("replay"), replay0 + 1.0, "{}", t.exit_metrics());

    // Relay B's most recent connection is the down leg: its first message is an attach.
    // Replayed, it is stale (every attach is single-use) and refused.
    let attach0 = rejected("attach");
    assert_eq!(t.relay(Leg::Down, "replay"), "replayed answers=0");
    assert_eq!(rejected("attach"), attach0 + 1.0, "{}", t.exit_metrics());

    // Re-attach the up leg (kill it), then replay that attach on the up listener.
    assert_eq!(t.relay(Leg::Up, "kill"), "ok");
    await_reconnect(&t, Leg::Up, &a0, "up leg killed");
    t.wait_tunnel(Duration::from_secs(10));
    let a1 = t.relay_stats(Leg::Up);
    assert_eq!(t.relay(Leg::Up, "replay"), "replayed answers=0");
    assert_eq!(rejected("attach"), attach0 + 2.0, "{}", t.exit_metrics());

    // The victim: still the one session, neither leg displaced by the replays (no further
    // reconnects), and it carries a download intact.
    let got = probe(&t.client, &["get", &http(), "/bytes/4194304"]);
    assert!(got.ok, "download after the replays: {}", got.stderr);
    assert_eq!(got.field("sha256"), Some(expected_sha256(4 * MIB).as_str()));
    let (a2, b2) = (t.relay_stats(Leg::Up), t.relay_stats(Leg::Down));
    assert_eq!(a2.connections, a1.connections, "the up leg was displaced");
    assert_eq!(b2.connections, b0.connections, "the down leg was displaced");
    assert_eq!(
        t.exit_counter("half_tunnel_exit_handshakes_accepted_total"),
        1.0,
        "{}",
        t.exit_metrics()
    );
    assert_eq!(t.exit_counter("half_tunnel_exit_sessions "), 1.0);
    let log = t.log("exit-node.log");
    for reason in ["replay", "attach"] {
        assert!(
            log.lines()
                .any(|l| l.contains("leg refused") && l.contains(&format!("reason=\"{reason}\""))),
            "no refusal with reason {reason} logged:\n{log}"
        );
    }
}
