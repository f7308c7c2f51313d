//! Random network impairment on both legs (TESTPLAN §21), without `sch_netem`: `ht-impair`
//! (a seeded userspace netem, `e2e::impair`) runs in the client's LAN router and impairs
//! every packet it forwards between the client and both relays, both directions, with
//! delay, jitter, loss, reordering, duplication and corruption, during a download and an
//! upload: checksums match, neither binary panics or exits, and the impairer's counters show
//! that packets really were lost, duplicated, reordered and corrupted.
//!
//! Each seed draws the parameters (splitmix64) and seeds every per-packet decision; both are
//! printed, so a failing seed can be re-run with `HT_E2E_SEEDS=<seed>` (the decisions for
//! the same packet sequence are the same; the packet sequence itself depends on timing).
//! Default seeds: 1 and 2; `HT_E2E_SEEDS=1,2,3,…` for more, `HT_E2E_CHAOS_SCALE=4` harsher.
//!
//! The first test checks the impairer itself on a plain three-namespace path.

use std::time::{Duration, Instant};

use e2e::impair::{Config, Impairer, Rng, Spec};
use e2e::netns::{Netns, link, namespaces_available};
use e2e::payload::{Payload, SEED, expected_sha256, sha256_of};
use e2e::topology::{TempDir, Topology, addr, bin, port, probe};

const MIB: u64 = 1 << 20;

fn seeds() -> Vec<u64> {
    std::env::var("HT_E2E_SEEDS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2])
}

/// `HT_E2E_CHAOS_SCALE=F` multiplies the drawn loss, reorder, duplication and corruption
/// rates (default 1; e.g. 3 for a harsher run).
fn scale() -> f64 {
    std::env::var("HT_E2E_CHAOS_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|f: &f64| (0.0..=50.0).contains(f))
        .unwrap_or(1.0)
}

/// The impairment of one direction, drawn from `rng`. Every kind has a positive lower
/// bound, so that a run of a few thousand packets shows each of them.
fn draw(rng: &mut Rng) -> Spec {
    let delay = rng.range(1.0, 20.0);
    let jitter = rng.range(0.0, delay / 4.0);
    let ms = |v: f64| Duration::from_secs_f64(v / 1000.0);
    let pct = |v: f64| (v * scale()).min(100.0);
    Spec {
        delay: ms(delay),
        jitter: ms(jitter),
        loss: pct(rng.range(0.2, 2.0)),
        reorder: pct(rng.range(1.0, 10.0)),
        gap: ms(rng.range(1.0, 10.0)),
        duplicate: pct(rng.range(0.2, 2.0)),
        corrupt: pct(rng.range(0.1, 0.5)),
        rate: None,
    }
}

/// client (10.9.0.2) ─ router (impairer) ─ server (10.9.1.2, UDP echo on 7).
struct Path {
    client: Netns,
    router: Netns,
    server: Netns,
    dir: TempDir,
}

impl Path {
    fn new() -> Path {
        let p = Path {
            client: Netns::new("imp-c"),
            router: Netns::new("imp-r"),
            server: Netns::new("imp-s"),
            dir: TempDir::new("impair"),
        };
        link(
            &p.client,
            "eth0",
            &["10.9.0.2/24"],
            &p.router,
            "eth-c",
            &["10.9.0.1/24"],
        );
        link(
            &p.router,
            "eth-s",
            &["10.9.1.1/24"],
            &p.server,
            "eth0",
            &["10.9.1.2/24"],
        );
        p.router.forward();
        p.client.ip(&["route", "add", "default", "via", "10.9.0.1"]);
        p.server.ip(&["route", "add", "default", "via", "10.9.1.1"]);
        p.server.spawn(&bin("ht-probe"), &["udp-echo", "0.0.0.0:7"]);
        p
    }

    fn impair(&self, seed: u64, up: &str, down: &str) -> Impairer<'_> {
        let config = Config {
            seed,
            up: up.parse().unwrap(),
            down: down.parse().unwrap(),
            iifs: vec!["eth-c".into(), "eth-s".into()],
            client_nets: vec!["10.9.0.0/24".into()],
        };
        Impairer::start(&self.router, &config, self.dir.path())
    }

    /// One UDP echo round trip from the client; its wall time if a reply came.
    fn echo(&self, text: &str) -> Option<Duration> {
        let start = Instant::now();
        let out = probe(&self.client, &["udp", "10.9.1.2:7", text]);
        (out.ok && out.stdout.trim() == text).then(|| start.elapsed())
    }
}

#[test]
fn the_impairer_delays_loses_corrupts_duplicates_and_counts() {
    if !namespaces_available("the_impairer_delays_loses_corrupts_duplicates_and_counts") {
        return;
    }
    let p = Path::new();
    // Retry the first echo: the server may still be binding.
    assert!(
        (0..50).any(|_| p.echo("hello").is_some() || {
            std::thread::sleep(Duration::from_millis(100));
            false
        }),
        "no echo without the impairer"
    );
    let fastest = |n| (0..n).filter_map(|_| p.echo("ping")).min();
    let direct = fastest(5).expect("echo without the impairer");

    // 50 ms each way: the round trip grows by at least 100 ms; nothing else changes.
    let imp = p.impair(1, "delay=50ms", "delay=50ms");
    let delayed = fastest(5).expect("echo through a delaying impairer");
    let stats = imp.stop();
    eprintln!("direct {direct:?}, delayed {delayed:?}; {stats}");
    assert!(
        delayed >= Duration::from_millis(100) && delayed >= direct + Duration::from_millis(50),
        "50 ms each way: round trip {delayed:?} (direct {direct:?})"
    );
    let t = stats.total();
    // Five echoes: exactly five packets each way went through it.
    assert_eq!((stats.up.packets, stats.down.packets), (5, 5), "{stats}");
    assert_eq!(
        (t.passed, t.lost, t.duplicated),
        (t.packets, 0, 0),
        "{stats}"
    );

    // The impairer's rules and TUN went with it: a direct echo is fast again.
    let after = fastest(3).expect("echo after the impairer stopped");
    assert!(after < Duration::from_millis(100), "after stop: {after:?}");

    // 100 % loss upwards: nothing reaches the server, every packet is counted as lost.
    let imp = p.impair(2, "loss=100%", "none");
    assert_eq!(p.echo("lost"), None, "an echo passed 100 % loss");
    let stats = imp.stop();
    assert!(stats.up.packets >= 1, "{stats}");
    assert_eq!(stats.up.lost, stats.up.packets, "{stats}");
    assert_eq!(stats.up.passed, 0, "{stats}");
    assert_eq!(stats.down.packets, 0, "{stats}");

    // 100 % corruption of the replies: they are forwarded, and the client's UDP checksum
    // drops every one of them (a flipped bit never reaches an application).
    let imp = p.impair(3, "none", "corrupt=100%");
    assert_eq!(p.echo("flipped"), None, "a corrupted reply was delivered");
    let stats = imp.stop();
    assert!(stats.down.packets >= 1, "{stats}");
    assert_eq!(stats.down.corrupted, stats.down.packets, "{stats}");
    assert_eq!(stats.down.passed, stats.down.packets, "{stats}");

    // 100 % duplication: every packet leaves twice and the echo still works.
    let imp = p.impair(4, "duplicate=100%", "duplicate=100%");
    assert!(p.echo("twice").is_some(), "no echo through duplication");
    let stats = imp.stop();
    let t = stats.total();
    // The server echoes both copies of the request: 2 replies for 1 request, each sent
    // twice (the client may answer the late copies with ICMP errors, also duplicated).
    assert!(stats.up.packets >= 1 && stats.down.packets >= 2, "{stats}");
    assert_eq!(
        (t.duplicated, t.passed),
        (t.packets, 2 * t.packets),
        "{stats}"
    );
}

#[test]
fn seeded_impairment_on_both_legs_keeps_checksums_and_nobody_panics() {
    if !namespaces_available("seeded_impairment_on_both_legs_keeps_checksums_and_nobody_panics") {
        return;
    }
    let mut t = Topology::new();
    t.start_tunnel();
    let http = format!("{}:{}", addr::INET, port::HTTP);
    let (down, up) = (8 * MIB, 4 * MIB);
    let (_, up_sha) = sha256_of(Payload::new(SEED, up)).unwrap();
    for seed in seeds() {
        let mut rng = Rng(seed);
        let (up_spec, down_spec) = (draw(&mut rng), draw(&mut rng));
        eprintln!(
            "seed {seed}: ht-impair --seed {seed} --up {up_spec} --down {down_spec} \
             (replay: HT_E2E_SEEDS={seed})"
        );
        let started = Instant::now();
        let imp = Impairer::start(&t.lan, &Config::lan(seed, up_spec, down_spec), t.dir.path());
        let got = probe(&t.client, &["get", &http, &format!("/bytes/{down}")]);
        assert!(got.ok, "seed {seed}: download: {}", got.stderr);
        assert_eq!(
            got.field("sha256"),
            Some(expected_sha256(down).as_str()),
            "seed {seed}: download bytes differ: {}",
            got.stdout
        );
        let put = probe(&t.client, &["put", &http, &up.to_string()]);
        assert!(put.ok, "seed {seed}: upload: {}", put.stderr);
        assert!(
            put.stdout.ends_with(&format!("reply={up} {up_sha}\n")),
            "seed {seed}: the server received something else: {}",
            put.stdout
        );
        let stats = imp.stop();
        eprintln!(
            "seed {seed} after {:?}: download {} / upload {}\n{stats}",
            started.elapsed(),
            got.stdout.trim(),
            put.stdout.trim()
        );
        let c = stats.total();
        // The legs' traffic really went through the impairer, and every kind happened.
        assert!(
            stats.down.packets > down / 1500 && stats.up.packets > up / 1500,
            "seed {seed}: the transfers bypassed the impairer: {stats}"
        );
        for (what, n) in [
            ("lost", c.lost),
            ("duplicated", c.duplicated),
            ("reordered", c.reordered),
            ("corrupted", c.corrupted),
        ] {
            assert!(n > 0, "seed {seed}: nothing {what}: {stats}");
        }
    }
    t.wait_tunnel(Duration::from_secs(10));
    let pid = t.client_pid().expect("client started");
    assert!(t.client.running(pid), "vpn-client exited");
    let pid = t.exit_pid().expect("exit started");
    assert!(t.exit.running(pid), "exit-node exited");
    for log in ["vpn-client.log", "exit-node.log"] {
        assert!(!t.log(log).contains("panicked"), "{log} shows a panic");
    }
}
