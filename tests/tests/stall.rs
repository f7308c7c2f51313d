//! The client's stall monitor end to end (issue 5: "a stall monitor (no data moving while
//! flows wait) triggers a leg reconnect"): a relay that silently holds every message — the
//! TCP connection stays up, nothing is closed — must be noticed by `vpn-client` within its
//! `stall_timeout` (6 s by default), long before proto's 15 s leg timeout; the stuck leg is
//! reconnected, the transfer completes intact, and `status` names the reason.

use std::process::Stdio;
use std::time::{Duration, Instant};

use e2e::payload::{Payload, SEED, expected_sha256, sha256_of};
use e2e::topology::{Leg, Topology, addr, bin, field, finish, port};

const MIB: u64 = 1 << 20;
/// The transfer: 8 MiB paced to 1 MiB/s, so the stall lands in the middle of it.
const SIZE: u64 = 8 * MIB;
const RATE: u64 = MIB;
/// The client's default `session.stall_timeout`.
const STALL_TIMEOUT: Duration = Duration::from_secs(6);
/// proto's leg timeout: the stall must be acted on well before it.
const LEG_TIMEOUT: Duration = Duration::from_secs(15);

fn http() -> String {
    format!("{}:{}", addr::INET, port::HTTP)
}

fn tunnel(test: &str) -> Option<Topology> {
    Topology::with_tunnel(test)
}

fn leg_name(leg: Leg) -> &'static str {
    match leg {
        Leg::Up => "up",
        Leg::Down => "down",
    }
}

/// Stall `leg`'s relay during the transfer `args`; wait for the client's stall line and
/// its reconnect through the relay, release the relay; the probe's stdout once it ends.
fn transfer_with_a_stalled_leg(t: &Topology, leg: Leg, args: &[&str]) -> String {
    let name = leg_name(leg);
    let needle = format!("{name} leg stalled for ");
    assert!(
        !t.log("vpn-client.log").contains(&needle),
        "a stall before the test"
    );
    let mut child = t
        .client
        .command(&bin("ht-probe"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the transfer");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the transfer ended early"
    );
    let before = t.relay_stats(leg);
    assert_eq!(t.relay(leg, "stall on"), "ok");
    let stalled = Instant::now();

    // The client notices: one clear line, within about stall_timeout.
    let line = loop {
        let log = t.log("vpn-client.log");
        if let Some(line) = log.lines().find(|l| l.contains(&needle)) {
            break line.to_owned();
        }
        assert!(
            stalled.elapsed() < LEG_TIMEOUT,
            "no stall line for the {name} leg within {LEG_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let noticed = stalled.elapsed();
    eprintln!("stall noticed after {noticed:?}: {line}");
    assert!(line.contains("reconnecting"), "{line}");
    assert!(
        noticed >= STALL_TIMEOUT - Duration::from_millis(1500),
        "noticed after {noticed:?}: sooner than the stall timeout allows"
    );
    assert!(
        noticed < STALL_TIMEOUT + Duration::from_secs(3),
        "noticed after {noticed:?}: not within about the stall timeout"
    );

    // It reconnects through the same relay while the old connection is still held.
    loop {
        if t.relay_stats(leg).connections > before.connections {
            break;
        }
        assert!(
            stalled.elapsed() < LEG_TIMEOUT - Duration::from_secs(2),
            "the {name} leg did not reconnect well before proto's leg timeout: {before:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let reconnected = stalled.elapsed();
    eprintln!("{name} leg reconnected after {reconnected:?}");
    assert!(
        !t.log("vpn-client.log").contains("leg declared dead"),
        "proto's leg timeout fired: the stall monitor was too slow"
    );
    // Release the relay: the new connection's attach goes through (the old connection's
    // client side is gone, so nothing of it comes back).
    assert_eq!(t.relay(leg, "stall off"), "ok");
    finish(child, "the transfer")
}

/// `status --json` and the plain form show the stall as the leg's reconnect reason.
fn assert_status_shows_the_stall(t: &Topology, leg: Leg) {
    let name = leg_name(leg);
    let out = t.client.try_exec(
        &bin("vpn-client"),
        &["status", "--json", "--config", &t.file("client.toml")],
    );
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "status --json: {json}");
    let legs = json.split("\"leg\":").skip(1);
    let ours = legs
        .into_iter()
        .find(|l| l.starts_with(&format!("\"{name}\"")))
        .unwrap_or_else(|| panic!("no {name} leg in {json}"));
    assert!(ours.contains("\"stall_reconnects\":1"), "{json}");
    assert!(
        ours.contains(&format!(
            "\"last_reconnect_reason\":\"{name} leg stalled for "
        )),
        "{json}"
    );
    let other = if leg == Leg::Up { "down" } else { "up" };
    let theirs = json
        .split("\"leg\":")
        .find(|l| l.starts_with(&format!("\"{other}\"")))
        .unwrap();
    assert!(theirs.contains("\"stall_reconnects\":0"), "{json}");
    let text = t.client_status();
    eprintln!("{text}");
    assert!(
        text.contains(&format!("last reconnect: {name} leg stalled for ")),
        "{text}"
    );
    assert!(text.contains("(1 stall reconnects)"), "{text}");
}

#[test]
fn a_stalled_down_leg_is_reconnected_mid_download() {
    let Some(t) = tunnel("a_stalled_down_leg_is_reconnected_mid_download") else {
        return;
    };
    let path = format!("/bytes/{SIZE}?rate={RATE}");
    let out = transfer_with_a_stalled_leg(&t, Leg::Down, &["get", &http(), &path]);
    assert_eq!(field(&out, "status").as_deref(), Some("200"), "{out}");
    assert_eq!(field(&out, "bytes"), Some(SIZE.to_string()));
    assert_eq!(field(&out, "sha256"), Some(expected_sha256(SIZE)));
    assert_status_shows_the_stall(&t, Leg::Down);
}

#[test]
fn a_stalled_up_leg_is_reconnected_mid_upload() {
    let Some(t) = tunnel("a_stalled_up_leg_is_reconnected_mid_upload") else {
        return;
    };
    let (target, size, rate) = (http(), SIZE.to_string(), RATE.to_string());
    let out = transfer_with_a_stalled_leg(&t, Leg::Up, &["put", &target, &size, &rate]);
    assert_eq!(field(&out, "status").as_deref(), Some("200"), "{out}");
    let (_, sha) = sha256_of(Payload::new(SEED, SIZE)).unwrap();
    assert!(
        out.ends_with(&format!("reply={SIZE} {sha}\n")),
        "the server received something else: {out}"
    );
    assert_status_shows_the_stall(&t, Leg::Up);
}
