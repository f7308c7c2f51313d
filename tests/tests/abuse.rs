//! Limits under abuse, end to end (TESTPLAN §23): while a well-behaved client keeps a paced
//! download running and opens new flows, attackers abuse the exit directly (from the
//! relay-A namespace, which is on the exit's leg network) and through relay A (from the
//! `lan` neighbour, over TLS), and a second real client opens far more streams than the
//! exit allows and stops reading its downloads.
//!
//! The exit runs with small limits (`EXIT_LIMITS`) so that every timeout fires within the
//! download. Asserted: the good download is byte-exact with no stall over `MAX_STALL`, new
//! flows of the good client keep working, every abusive socket is closed by the exit within
//! its configured timeout (counted on the attacker side), the stream cap holds, the exit's
//! RSS grows by less than `MAX_RSS_GROWTH_KIB`, each refusal is counted by reason on the
//! admin port (`handshakes_rejected` for upgraded sockets, also logged; `limits_hit` for
//! upgrades that time out or are too large), and no log has a panic.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use e2e::multi::{ExtraClient, proc_usage};
use e2e::netns::{Netns, namespaces_available};
use e2e::payload::expected_sha256;
use e2e::topology::{Topology, addr, bin, field, port, probe};

const MIB: u64 = 1 << 20;
/// The exit's limits for this test (TOML). Upgrade and first-message deadlines of 2 s;
/// the smallest allowed message size (one record plus overhead, rounded up) and session
/// buffer (2 × 2 MiB); 64 streams per session.
const EXIT_LIMITS: &str = "[limits]\nupgrade_timeout = \"2s\"\nhandshake_timeout = \"2s\"\n\
    max_message_size = 131072\nmax_streams_per_session = 64\n\
    max_buffered_bytes_per_session = 4194304\n";
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(2);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_STREAMS: usize = 64;
/// How late after its deadline the exit may close a socket: its timers are exact, but
/// hundreds of connections start at once on a 2-core machine running debug builds.
const CLOSE_SLACK: Duration = Duration::from_millis(2500);
/// The good download: 12 MiB paced at 1 MiB/s (about 12 s, longer than the attack).
const GOOD_SIZE: u64 = 12 * MIB;
const GOOD_RATE: u64 = MIB;
/// Longest wait for body bytes the good download may see. Without an attack this path's
/// longest gap is a few tens of ms (printed by the test); the exit serves every session from
/// its own task, so only CPU contention (hundreds of abusive sockets starting at once on two
/// cores) can delay it. A stall over 1.5 s would mean the attack starved the good session.
const MAX_STALL: Duration = Duration::from_millis(1500);
/// RSS growth bound for the exit over the attack. Budget: the stalled downloads can hold at
/// most one session buffer (4 MiB) plus the per-stream socket buffers; hyper may buffer up
/// to ~400 KiB per oversized-header request (10 of them); 400 short-lived connection tasks;
/// the allocator keeps freed pages. 48 MiB is several times the measured growth (printed).
const MAX_RSS_GROWTH_KIB: u64 = 48 * 1024;

fn http() -> String {
    format!("{}:{}", addr::INET, port::HTTP)
}

fn num(stdout: &str, key: &str) -> u64 {
    field(stdout, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {stdout:?}"))
}

/// A background program in `ns`, its output collected by [`finish`].
fn spawn(ns: &Netns, program: &str, args: &[&str]) -> Child {
    ns.command(&bin(program))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {program} {args:?}: {e}"))
}

/// Wait for a background program; its stdout (panics with stderr if it failed).
fn finish(child: Child, what: &str) -> String {
    let out = child.wait_with_output().expect("wait for child");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{what}: {}", stdout.trim());
    stdout
}

/// One kind of abuse: where from, how, how many, and when the exit must close it.
struct Attack {
    what: &'static str,
    via_relay: bool,
    mode: &'static str,
    path: &'static str,
    count: usize,
    /// The exit must close each socket no earlier than this after its start (None: any time).
    not_before: Option<Duration>,
    /// ... and no later than this.
    by: Duration,
    /// The response is not a WebSocket upgrade (an HTTP error from the exit).
    refused_upgrade: bool,
}

fn attacks() -> Vec<Attack> {
    let soon = Duration::from_secs(2);
    let upgrade = (
        Some(UPGRADE_TIMEOUT - Duration::from_millis(300)),
        UPGRADE_TIMEOUT + CLOSE_SLACK,
    );
    let first = (
        Some(HANDSHAKE_TIMEOUT - Duration::from_millis(300)),
        HANDSHAKE_TIMEOUT + CLOSE_SLACK,
    );
    let a = |what, via_relay, mode, path, count, (not_before, by): (Option<Duration>, Duration)| {
        Attack {
            what,
            via_relay,
            mode,
            path,
            count,
            not_before,
            by,
            refused_upgrade: mode == "bighead",
        }
    };
    vec![
        a(
            "never-sending sockets (direct)",
            false,
            "idle",
            "/u",
            100,
            upgrade,
        ),
        a(
            "slowloris upgrades (direct)",
            false,
            "slowloris",
            "/u",
            50,
            upgrade,
        ),
        a(
            "oversized upgrade requests (direct)",
            false,
            "bighead",
            "/u",
            10,
            (None, soon),
        ),
        a(
            "upgraded, never handshaking, up (direct)",
            false,
            "silent",
            "/u",
            40,
            first,
        ),
        a(
            "upgraded, never handshaking, down (direct)",
            false,
            "silent",
            "/d",
            20,
            first,
        ),
        a(
            "oversized first message (direct)",
            false,
            "oversized",
            "/u",
            10,
            (None, soon),
        ),
        a(
            "non-protocol binary message (direct)",
            false,
            "junk",
            "/u",
            20,
            (None, soon),
        ),
        a(
            "text message (direct)",
            false,
            "text",
            "/u",
            10,
            (None, soon),
        ),
        a(
            "garbage after the upgrade (direct)",
            false,
            "garbage",
            "/u",
            10,
            (None, soon),
        ),
        a(
            "upgraded, never handshaking (via relay A)",
            true,
            "silent",
            "/u",
            30,
            first,
        ),
        a(
            "oversized first message (via relay A)",
            true,
            "oversized",
            "/u",
            5,
            (None, soon),
        ),
        a(
            "non-protocol binary message (via relay A)",
            true,
            "junk",
            "/u",
            10,
            (None, soon),
        ),
    ]
}

#[test]
fn limits_hold_under_abuse_while_a_good_client_is_served() {
    if !namespaces_available("limits_hold_under_abuse_while_a_good_client_is_served") {
        return;
    }
    let mut t = Topology::new();
    let c2 = ExtraClient::new(&t, 2);
    t.exit_config_extra(EXIT_LIMITS);
    t.exit_config_extra(&c2.exit_clients_toml());
    let exit_public = t.start_exit();
    t.start_client(&exit_public);
    t.wait_tunnel(Duration::from_secs(20));
    c2.start(&exit_public);
    c2.wait_tunnel(Duration::from_secs(20));
    let exit_pid = t.exit_pid().expect("exit runs");

    // The undisturbed path: its longest gap, for comparison with MAX_STALL.
    let calm = probe(
        &t.client,
        &["get", &http(), &format!("/bytes/{MIB}?rate={MIB}")],
    );
    assert!(calm.ok, "calm download: {}", calm.stderr);
    eprintln!("without attack: {}", calm.stdout.trim());

    let metric = |reason: &str| {
        t.exit_counter(&format!(
            "half_tunnel_exit_handshakes_rejected_total{{reason=\"{reason}\"}}"
        ))
    };
    let reasons = ["timeout", "oversized", "bad_first_message", "bad_frame"];
    let before: Vec<f64> = reasons.iter().map(|r| metric(r)).collect();
    let limit = |reason: &str| {
        t.exit_counter(&format!(
            "half_tunnel_exit_limits_hit_total{{reason=\"{reason}\"}}"
        ))
    };
    let limits_before = [limit("upgrade_timeout"), limit("upgrade_too_large")];
    let usage0 = proc_usage(exit_pid);

    let good = spawn(
        &t.client,
        "ht-probe",
        &[
            "get",
            &http(),
            &format!("/bytes/{GOOD_SIZE}?rate={GOOD_RATE}"),
        ],
    );
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(500));

    // The second client: an app that stops reading (8 downloads of 1 GiB, 64 KiB read
    // each), then one that opens 200 connections at once (the cap is 64 streams).
    let stall = spawn(
        &c2.ns,
        "ht-abuse",
        &[
            "stall-get",
            &http(),
            &format!("/bytes/{}", 1024 * MIB),
            "8",
            "9",
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let echo = format!("{}:{}", addr::INET, port::ECHO);
    let hold = spawn(&c2.ns, "ht-abuse", &["hold-tcp", &echo, "200", "6"]);

    let list = attacks();
    let ca = t.file("ca.pem");
    let mut running = Vec::new();
    for attack in &list {
        let (ns, target, tls): (&Netns, String, Vec<&str>) = if attack.via_relay {
            (
                &t.lan,
                format!("{}:{}", addr::RELAY_A, port::RELAY),
                vec!["--tls", "a.test", &ca],
            )
        } else {
            // The exit's leg networks: only each leg's relay namespace reaches them.
            if attack.path == "/d" {
                let target = format!("{}:{}", addr::EXIT_DOWN, port::EXIT_DOWN);
                (&t.relay_b, target, vec![])
            } else {
                let target = format!("{}:{}", addr::EXIT_UP, port::EXIT_UP);
                (&t.relay_a, target, vec![])
            }
        };
        let wait = (attack.by + Duration::from_secs(2)).as_secs().to_string();
        let count = attack.count.to_string();
        let mut args = vec![
            "conns",
            &target,
            attack.mode,
            &count,
            &wait,
            "--path",
            attack.path,
        ];
        args.extend(tls);
        running.push(spawn(ns, "ht-abuse", &args));
    }

    // Meanwhile the good client opens new flows: HTTP and DNS, every 300 ms.
    let mut flows = 0;
    let mut slowest = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(8) {
        let at = Instant::now();
        let get = probe(&t.client, &["get", &http(), "/bytes/1000"]);
        assert!(
            get.ok,
            "a new flow of the good client failed: {}",
            get.stderr
        );
        assert_eq!(field(&get.stdout, "sha256"), Some(expected_sha256(1000)));
        let dns = probe(
            &t.client,
            &[
                "dns",
                &format!("{}:53", addr::VIRTUAL_RESOLVER),
                "www.inet.test",
            ],
        );
        assert!(
            dns.ok && dns.stdout.contains(addr::INET),
            "DNS: {}{}",
            dns.stdout,
            dns.stderr
        );
        slowest = slowest.max(at.elapsed());
        flows += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    eprintln!(
        "{flows} new HTTP+DNS flows of the good client during the attack, slowest {slowest:?}"
    );

    for (attack, child) in list.iter().zip(running) {
        let out = finish(child, attack.what);
        let count = attack.count as u64;
        assert_eq!(num(&out, "refused"), 0, "{}: connect refused", attack.what);
        assert_eq!(
            num(&out, "closed"),
            count,
            "{}: the exit left sockets open",
            attack.what
        );
        let not_upgraded = num(&out, "not_upgraded");
        if attack.refused_upgrade {
            assert_eq!(not_upgraded, count, "{}: upgraded", attack.what);
        } else if attack.mode != "idle" && attack.mode != "slowloris" {
            assert_eq!(not_upgraded, 0, "{}: upgrade refused", attack.what);
        }
        let (min, max) = (
            Duration::from_millis(num(&out, "min_ms")),
            Duration::from_millis(num(&out, "max_ms")),
        );
        assert!(
            max <= attack.by,
            "{}: a socket was closed only after {max:?}",
            attack.what
        );
        if let Some(floor) = attack.not_before {
            assert!(
                min >= floor,
                "{}: closed before its deadline ({min:?})",
                attack.what
            );
        }
    }

    let stalled = finish(stall, "app that stops reading");
    assert_eq!(
        num(&stalled, "stalled"),
        8,
        "the stalled downloads did not start"
    );
    let held = finish(hold, "200 connections at once");
    let ok = num(&held, "ok") as usize;
    // 8 streams belong to the stalled downloads (still open while these connect).
    assert!(
        ok <= MAX_STREAMS - 8,
        "{ok} connections worked: the exit's cap of {MAX_STREAMS} streams did not hold"
    );
    assert!(
        ok >= (MAX_STREAMS - 8) / 2,
        "only {ok} connections worked under the cap"
    );

    let got = finish(good, "the good download");
    assert_eq!(field(&got, "status").as_deref(), Some("200"));
    assert_eq!(num(&got, "bytes"), GOOD_SIZE);
    assert_eq!(field(&got, "sha256"), Some(expected_sha256(GOOD_SIZE)));
    let gap = Duration::from_millis(num(&got, "max_gap_ms"));
    assert!(
        gap <= MAX_STALL,
        "the good download stalled {gap:?} during the attack"
    );

    let usage1 = proc_usage(exit_pid);
    let growth = usage1.rss_kib.saturating_sub(usage0.rss_kib);
    eprintln!("exit before {usage0:?}, after {usage1:?}: RSS +{growth} KiB");
    assert!(
        growth <= MAX_RSS_GROWTH_KIB,
        "exit RSS grew {growth} KiB under abuse (bound {MAX_RSS_GROWTH_KIB})"
    );

    // Every refusal is counted by its reason and logged.
    let sum = |mode: &str| -> f64 {
        list.iter()
            .filter(|a| a.mode == mode)
            .map(|a| a.count as f64)
            .sum()
    };
    let expected = [
        sum("silent"),
        sum("oversized"),
        sum("junk") + sum("text"),
        sum("garbage"),
    ];
    let after: Vec<f64> = reasons.iter().map(|r| metric(r)).collect();
    let log = t.log("exit-node.log");
    for (i, reason) in reasons.iter().enumerate() {
        assert_eq!(
            after[i] - before[i],
            expected[i],
            "handshakes_rejected{{reason={reason:?}}}"
        );
        let lines = log
            .lines()
            .filter(|l| l.contains("leg refused") && l.contains(&format!("reason=\"{reason}\"")))
            .count();
        assert!(
            lines as f64 >= expected[i],
            "{lines} \"leg refused\" lines with reason={reason}, expected {}",
            expected[i]
        );
    }
    // Sockets that never finish the upgrade are counted by the listener.
    let limits_after = [limit("upgrade_timeout"), limit("upgrade_too_large")];
    assert_eq!(
        limits_after[0] - limits_before[0],
        sum("idle") + sum("slowloris"),
        "limits_hit{{reason=\"upgrade_timeout\"}}"
    );
    assert_eq!(
        limits_after[1] - limits_before[1],
        sum("bighead"),
        "limits_hit{{reason=\"upgrade_too_large\"}}"
    );
    for name in ["exit-node.log", "vpn-client.log", &c2.log_name()] {
        let text = t.log(name);
        assert!(!text.contains("panicked"), "{name} has a panic");
    }
    let exit_pid_alive = t.exit.running(exit_pid);
    assert!(exit_pid_alive, "exit-node exited");
}

/// One client must not be able to take the descriptors the exit needs for everybody else.
/// The exit's `RLIMIT_NOFILE` is lowered to 256 while it runs (a stand-in for the 1024 soft
/// limit a systemd service gets by default) and the session keeps the default 16384 streams;
/// a second client then tries to hold 400 TCP flows. Without a descriptor budget every
/// further dial and accept failed with EMFILE. Now the exit keeps `max(64, 256 / 8) = 64`
/// descriptors in reserve and lets each of the two sessions hold at most
/// `192 / (2 + 1) = 64` destination sockets: the flood gets at most 64 flows (refusals
/// counted in `limits_hit{reason="descriptors"}` and logged), the exit stays under its
/// limit, and the good client's new TCP flows, UDP and a leg reconnect keep working.
#[test]
fn one_client_cannot_exhaust_the_exits_descriptors() {
    if !namespaces_available("one_client_cannot_exhaust_the_exits_descriptors") {
        return;
    }
    /// The fair share of each of the two sessions for a limit of 256 (see above).
    const SHARE: u64 = 64;
    let mut t = Topology::new();
    let c2 = ExtraClient::new(&t, 2);
    t.exit_config_extra(&c2.exit_clients_toml());
    let exit_public = t.start_exit();
    t.start_client(&exit_public);
    t.wait_tunnel(Duration::from_secs(20));
    c2.start(&exit_public);
    c2.wait_tunnel(Duration::from_secs(20));
    let exit_pid = t.exit_pid().expect("exit runs");
    let pid = exit_pid.to_string();
    let limit = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=256:256"])
        .status()
        .expect("run prlimit");
    assert!(limit.success(), "prlimit on exit-node");
    let refused = || t.exit_counter("half_tunnel_exit_limits_hit_total{reason=\"descriptors\"}");
    let refused_before = refused();
    let echo = format!("{}:{}", addr::INET, port::ECHO);
    let flood = spawn(&c2.ns, "ht-abuse", &["hold-tcp", &echo, "400", "12"]);
    std::thread::sleep(Duration::from_secs(6));
    let open_fds = || {
        std::fs::read_dir(format!("/proc/{exit_pid}/fd"))
            .expect("list the exit's descriptors")
            .count()
    };
    let fds = open_fds();
    eprintln!("exit descriptors during the flood: {fds}");
    assert!(
        fds < 256 - 32,
        "{fds} descriptors open: too close to the limit"
    );
    let get = probe(&t.client, &["get", &http(), "/bytes/1000"]);
    assert!(get.ok, "the good client's new flow failed: {}", get.stderr);
    assert_eq!(field(&get.stdout, "sha256"), Some(expected_sha256(1000)));
    let udp = probe(&t.client, &["udp", &echo, "still-here"]);
    assert!(
        udp.ok && udp.stdout.contains("still-here"),
        "the good client's UDP failed: {}{}",
        udp.stdout,
        udp.stderr
    );
    assert_eq!(t.relay(e2e::topology::Leg::Up, "kill"), "ok");
    std::thread::sleep(Duration::from_secs(2));
    let get = probe(&t.client, &["get", &http(), "/bytes/1000"]);
    assert!(get.ok, "after a leg kill: {}", get.stderr);
    let held = finish(flood, "400 flows from one client");
    let ok = num(&held, "ok");
    assert!(
        ok <= SHARE,
        "{ok} flows of one client worked: its share is {SHARE}"
    );
    assert!(ok >= SHARE / 2, "only {ok} flows worked under the share");
    let refusals = refused() - refused_before;
    assert!(
        refusals >= (400 - SHARE) as f64,
        "limits_hit{{reason=\"descriptors\"}} grew by {refusals}"
    );
    let log = t.log("exit-node.log");
    assert!(
        log.contains("stream refused: descriptor limit"),
        "no log line for the refusals"
    );
    assert!(
        !log.contains("Too many open files"),
        "the exit ran out of descriptors"
    );
    for name in ["exit-node.log", "vpn-client.log", &c2.log_name()] {
        assert!(!t.log(name).contains("panicked"), "{name} has a panic");
    }
}
