//! A bounded soak (TESTPLAN §26, issue 6's "short soak"): three clients (the topology's
//! and two more namespaces, each with its own vpn-client, TUN and key) share the relays and
//! the exit while each runs churn — short HTTP downloads of varying size (checksummed),
//! DNS queries, UDP and TCP echoes — and the relays kill the up leg, the down leg or both
//! every few seconds.
//!
//! Asserted: every transfer is verified; descriptors and RSS of the exit and of every
//! vpn-client at the end are flat against the snapshot after the warm-up (both taken at a
//! quiet moment, `FD_SLACK` / `RSS_SLACK_KIB` + `RSS_SLACK_PCT`); after the clients die
//! (`kill -9`, so their sessions stay without legs) the exit's `sessions` gauge stays at 3
//! until the idle TTL and then reaches 0.
//!
//! Runs 60 s of churn by default (about 80 s in all); `HT_E2E_SOAK_SECS` sets the churn
//! duration (the first quarter, at most 30 s, is the warm-up).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use e2e::multi::{ExtraClient, ProcUsage, metric, proc_usage};
use e2e::netns::{Netns, namespaces_available};
use e2e::payload::expected_sha256;
use e2e::topology::{Leg, Topology, addr, port, probe};

/// The exit's idle TTL for sessions without legs (short, so the test can wait for it).
const IDLE_TTL: Duration = Duration::from_secs(4);
/// The quiet moment before each snapshot: longer than the exit's UDP idle timeout (2 s) plus
/// its housekeeping tick, so no flow of the churn is left open.
const SETTLE: Duration = Duration::from_secs(5);
/// Descriptors may differ by this many (a leg being re-established, a timer fd).
const FD_SLACK: usize = 4;
/// RSS may grow by this much plus `RSS_SLACK_PCT` percent: the allocator keeps some freed
/// pages and arenas per thread; a leak of a few KiB per flow or per leg kill would exceed
/// it over thousands of flows and a dozen kills.
const RSS_SLACK_KIB: u64 = 6 * 1024;
const RSS_SLACK_PCT: u64 = 15;

fn churn_secs() -> u64 {
    std::env::var("HT_E2E_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

/// What one client's churn did.
#[derive(Debug, Default)]
struct Counts {
    gets: AtomicU64,
    bytes: AtomicU64,
    dns: AtomicU64,
    udp: AtomicU64,
    tcp: AtomicU64,
    /// UDP/DNS exchanges that needed a second try (a datagram lost in a leg kill).
    retries: AtomicU64,
}

/// Short connections from `ns` until `stop`: each round an HTTP GET of a size from a
/// simple deterministic sequence (verified), a DNS query, a UDP and a TCP echo.
fn churn(ns: &Netns, who: &str, seed: u64, stop: &AtomicBool, counts: &Counts) {
    let http = format!("{}:{}", addr::INET, port::HTTP);
    let echo = format!("{}:{}", addr::INET, port::ECHO);
    let resolver = format!("{}:53", addr::VIRTUAL_RESOLVER);
    let mut x = seed;
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let n = 1 + (x >> 33) % (512 * 1024);
        let get = probe(ns, &["get", &http, &format!("/bytes/{n}")]);
        assert!(get.ok, "{who}: GET {n}: {}", get.stderr);
        assert_eq!(get.field("bytes"), Some(n.to_string().as_str()), "{who}");
        assert_eq!(
            get.field("sha256"),
            Some(expected_sha256(n).as_str()),
            "{who}"
        );
        counts.gets.fetch_add(1, Ordering::Relaxed);
        counts.bytes.fetch_add(n, Ordering::Relaxed);

        let text = format!("{who} round {round}");
        // Datagrams: one retry, as an application would; counted.
        let twice = |args: &[&str], check: &dyn Fn(&str) -> bool| {
            for attempt in 0..2 {
                let out = probe(ns, args);
                if out.ok && check(&out.stdout) {
                    if attempt > 0 {
                        counts.retries.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
            }
            panic!("{who}: {args:?} failed twice");
        };
        twice(&["dns", &resolver, "www.inet.test"], &|o| {
            o == format!("rcode=No Error\n{}\n", addr::INET)
        });
        counts.dns.fetch_add(1, Ordering::Relaxed);
        twice(&["udp", &echo, &text], &|o| o.trim_end() == text);
        counts.udp.fetch_add(1, Ordering::Relaxed);

        let tcp = probe(ns, &["tcp", &echo, &text]);
        assert!(tcp.ok, "{who}: TCP echo: {}", tcp.stderr);
        assert_eq!(tcp.stdout.trim_end(), text, "{who}: TCP echo");
        counts.tcp.fetch_add(1, Ordering::Relaxed);
        round += 1;
    }
}

/// Run churn on every client for `secs` while killing legs every 3 s; return the counts.
fn phase(clients: &[(&Netns, String)], t: &Topology, secs: u64, kills: &mut usize) -> Vec<Counts> {
    let stop = AtomicBool::new(false);
    let counts: Vec<Counts> = clients.iter().map(|_| Counts::default()).collect();
    let legs: [&[Leg]; 3] = [&[Leg::Up], &[Leg::Down], &[Leg::Up, Leg::Down]];
    std::thread::scope(|s| {
        let workers: Vec<_> = clients
            .iter()
            .zip(&counts)
            .enumerate()
            .map(|(i, ((ns, who), c))| {
                let stop = &stop;
                s.spawn(move || churn(ns, who, 7 + i as u64, stop, c))
            })
            .collect();
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end && workers.iter().all(|w| !w.is_finished()) {
            std::thread::sleep(Duration::from_secs(3).min(end - Instant::now()));
            if Instant::now() + Duration::from_secs(1) < end {
                for &leg in legs[*kills % legs.len()] {
                    assert_eq!(t.relay(leg, "kill"), "ok");
                }
                *kills += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            if let Err(panic) = w.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
    counts
}

fn usage(pids: &[(String, u32)]) -> Vec<(String, ProcUsage)> {
    pids.iter()
        .map(|(name, pid)| (name.clone(), proc_usage(*pid)))
        .collect()
}

fn sessions(t: &Topology) -> f64 {
    metric(&t.exit_metrics(), "half_tunnel_exit_sessions").expect("sessions gauge")
}

#[test]
fn three_clients_churn_with_leg_kills_and_stay_flat() {
    if !namespaces_available("three_clients_churn_with_leg_kills_and_stay_flat") {
        return;
    }
    let mut t = Topology::new();
    let extra = [ExtraClient::new(&t, 2), ExtraClient::new(&t, 3)];
    // UDP flows have no end: the exit closes each after `udp_idle_timeout` (60 s by
    // default, longer than the churn, so every UDP flow of the run would still hold its
    // socket); 2 s lets the quiet moments (`SETTLE`) see none left.
    t.exit_egress_extra("udp_idle_timeout = \"2s\"\n");
    t.exit_config_extra(&format!(
        "[session]\nidle_ttl = \"{}s\"\n",
        IDLE_TTL.as_secs()
    ));
    for c in &extra {
        t.exit_config_extra(&c.exit_clients_toml());
    }
    let exit_public = t.start_exit();
    t.start_client(&exit_public);
    for c in &extra {
        c.start(&exit_public);
    }
    t.wait_tunnel(Duration::from_secs(20));
    for c in &extra {
        c.wait_tunnel(Duration::from_secs(20));
    }
    assert_eq!(sessions(&t), 3.0, "one session per client");
    let mut pids = vec![
        ("exit-node".to_owned(), t.exit_pid().expect("exit runs")),
        (
            "vpn-client".to_owned(),
            t.client_pid().expect("client runs"),
        ),
    ];
    for c in &extra {
        pids.push((c.log_name(), c.pid().expect("client runs")));
    }
    let mut clients: Vec<(&Netns, String)> = vec![(&t.client, "client".into())];
    clients.extend(extra.iter().map(|c| (&c.ns, c.log_name())));

    let total = churn_secs();
    let warm = (total / 4).clamp(5, 30);
    let mut kills = 0;
    let settle = || std::thread::sleep(SETTLE);
    let started = Instant::now();
    phase(&clients, &t, warm, &mut kills);
    settle();
    let after_warm = usage(&pids);
    let counts = phase(&clients, &t, total - warm, &mut kills);
    settle();
    let at_end = usage(&pids);
    eprintln!(
        "churn {:?} ({warm} s warm-up), {kills} leg kills",
        started.elapsed()
    );
    for ((_, who), c) in clients.iter().zip(&counts) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        eprintln!(
            "{who} after warm-up: {} GETs ({} bytes), {} DNS, {} UDP, {} TCP echoes, {} datagram retries",
            get(&c.gets),
            get(&c.bytes),
            get(&c.dns),
            get(&c.udp),
            get(&c.tcp),
            get(&c.retries)
        );
        assert!(get(&c.gets) >= 5, "{who} hardly ran");
    }
    assert!(kills >= 4, "only {kills} leg kills");
    let m = t.exit_metrics();
    eprintln!(
        "exit gauges: sessions {:?}, streams {:?}",
        metric(&m, "half_tunnel_exit_sessions"),
        metric(&m, "half_tunnel_exit_streams")
    );
    assert_eq!(sessions(&t), 3.0, "still one session per client");
    for ((name, warm), (_, end)) in after_warm.iter().zip(&at_end) {
        eprintln!("{name}: after warm-up {warm:?}, at the end {end:?}");
        assert!(
            end.fds <= warm.fds + FD_SLACK,
            "{name}: descriptors grew {} → {}",
            warm.fds,
            end.fds
        );
        let bound = warm.rss_kib + RSS_SLACK_KIB + warm.rss_kib * RSS_SLACK_PCT / 100;
        assert!(
            end.rss_kib <= bound,
            "{name}: RSS grew {} → {} KiB (bound {bound})",
            warm.rss_kib,
            end.rss_kib
        );
    }

    // The clients die without closing their sessions: the exit keeps them for the idle
    // TTL (a client could resume), then forgets them.
    let killed = Instant::now();
    assert!(t.signal_client("KILL").is_some(), "vpn-client killed");
    for c in &extra {
        assert!(c.signal("KILL").is_some(), "{} killed", c.log_name());
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sessions(&t), 3.0, "sessions gone before the idle TTL");
    let deadline = killed + IDLE_TTL + Duration::from_secs(5);
    while sessions(&t) != 0.0 {
        assert!(
            Instant::now() < deadline,
            "sessions left {:?} after the clients died (idle TTL {IDLE_TTL:?})",
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let emptied = killed.elapsed();
    eprintln!("session table empty {emptied:?} after the clients died");
    assert!(
        emptied + Duration::from_millis(500) >= IDLE_TTL,
        "sessions removed after {emptied:?}, before the idle TTL"
    );
    for (name, _) in &pids {
        let log = if name == "exit-node" {
            "exit-node.log".to_owned()
        } else if name == "vpn-client" {
            "vpn-client.log".to_owned()
        } else {
            name.clone()
        };
        assert!(!t.log(&log).contains("panicked"), "{log} has a panic");
    }
}
