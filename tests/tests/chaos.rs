//! Random network impairment on both legs (TESTPLAN §21): `tc netem` delay, jitter, loss,
//! reordering, duplication and corruption on the veths between the client's LAN and both
//! relays, in both directions, during a download and an upload; checksums match and neither
//! binary panics or exits.
//!
//! Each seed picks the impairment parameters (splitmix64) and is printed with the exact `tc`
//! commands, so a failing combination can be re-run with `HT_E2E_SEEDS=<seed>`. (The
//! iproute2 here has no `netem seed`, so netem's own per-packet draws are not replayable;
//! the parameters are.) Default seeds: 1 and 2; `HT_E2E_SEEDS=1,2,3,…` for more.

use std::time::Duration;

use e2e::netns::{Netns, namespaces_available};
use e2e::payload::{Payload, SEED, expected_sha256, sha256_of};
use e2e::topology::{Topology, addr, port, probe};

const MIB: u64 = 1 << 20;

fn seeds() -> Vec<u64> {
    std::env::var("HT_E2E_SEEDS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2])
}

/// splitmix64: a tiny deterministic generator for the parameters.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi] with two decimals.
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        let u = (self.next() % 10_001) as f64 / 10_000.0;
        ((lo + u * (hi - lo)) * 100.0).round() / 100.0
    }
}

/// The netem arguments for one interface, drawn from `rng`.
fn netem(rng: &mut Rng) -> Vec<String> {
    let delay = rng.range(1.0, 20.0);
    let jitter = rng.range(0.0, delay / 4.0);
    [
        "delay".to_owned(),
        format!("{delay}ms"),
        format!("{jitter}ms"),
        "loss".into(),
        format!("{}%", rng.range(0.0, 2.0)),
        "reorder".into(),
        format!("{}%", rng.range(0.0, 10.0)),
        "duplicate".into(),
        format!("{}%", rng.range(0.0, 2.0)),
        "corrupt".into(),
        format!("{}%", rng.range(0.0, 0.5)),
    ]
    .into()
}

#[test]
#[ignore = "needs sch_netem: this CI kernel has CONFIG_NET_SCH_NETEM unset (tc: \"Specified qdisc kind is unknown\"); never run to completion yet — run with --ignored on a kernel with netem"]
fn seeded_netem_on_both_legs_keeps_checksums_and_nobody_panics() {
    if !namespaces_available("seeded_netem_on_both_legs_keeps_checksums_and_nobody_panics") {
        return;
    }
    let mut t = Topology::new();
    t.start_tunnel();
    let http = format!("{}:{}", addr::INET, port::HTTP);
    let (down, up) = (8 * MIB, 4 * MIB);
    let (_, up_sha) = sha256_of(Payload::new(SEED, up)).unwrap();
    // Both directions of both legs: the relays' client-facing ends and the LAN router's.
    let ifaces: [(&Netns, &str); 4] = [
        (&t.relay_a, "eth0"),
        (&t.relay_b, "eth0"),
        (&t.lan, "eth-a"),
        (&t.lan, "eth-b"),
    ];
    for seed in seeds() {
        let mut rng = Rng(seed);
        for (ns, dev) in ifaces {
            let params = netem(&mut rng);
            let mut args = vec!["qdisc", "replace", "dev", dev, "root", "netem"];
            args.extend(params.iter().map(String::as_str));
            eprintln!("seed {seed}: {}: tc {}", ns.name(), args.join(" "));
            ns.exec("tc", &args);
        }
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
        eprintln!(
            "seed {seed}: download {} / upload {}",
            got.stdout.trim(),
            put.stdout.trim()
        );
    }
    for (ns, dev) in ifaces {
        ns.exec("tc", &["qdisc", "del", "dev", dev, "root"]);
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
