//! `ht-demo`: the one-command demo (run by `scripts/demo.sh`, as root).
//!
//! It builds the end-to-end topology of [`e2e::topology`] in network namespaces of its own
//! (client, LAN router, relay A for Domain A, relay B for Domain B, exit, "internet"),
//! brings `vpn-client up` in the client namespace, resolves a name and downloads a large
//! file through the tunnel, shows which relay carried which direction, prints
//! `vpn-client status`, and deletes everything again. Nothing leaves those namespaces.

use std::time::Instant;

use clap::Parser;
use e2e::payload::expected_sha256;
use e2e::topology::{Leg, RelayStats, Topology, addr, port, probe};

/// Half-Tunnel demo in throwaway network namespaces.
#[derive(Debug, Parser)]
struct Args {
    /// MiB to download (and upload) through the tunnel.
    #[arg(long, default_value_t = 256)]
    mib: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        e2e::netns::namespaces_available("ht-demo"),
        "the demo creates network namespaces: run it as root"
    );
    let started = Instant::now();
    step("creating namespaces client, lan, relay-a, relay-b, exit, inet");
    let mut t = Topology::new();
    step("starting exit-node behind relay A (up leg) and relay B (down leg)");
    step("starting `vpn-client up` in the client namespace");
    let up = Instant::now();
    t.start_tunnel();
    say(&format!("tunnel up in {:.1} s", up.elapsed().as_secs_f64()));

    dns(&t)?;
    let n = args.mib << 20;
    let (a0, b0) = (t.relay_stats(Leg::Up), t.relay_stats(Leg::Down));
    download(&t, n)?;
    let (a1, b1) = (t.relay_stats(Leg::Up), t.relay_stats(Leg::Down));
    upload(&t, n)?;
    let (a2, b2) = (t.relay_stats(Leg::Up), t.relay_stats(Leg::Down));
    split(n, [a0, a1, a2], [b0, b1, b2])?;

    step("vpn-client status");
    for line in t.client_status().lines() {
        println!("    {line}");
    }
    step("tearing down");
    let names: Vec<String> = [&t.client, &t.lan, &t.relay_a, &t.relay_b, &t.exit, &t.inet]
        .iter()
        .map(|ns| ns.name().to_owned())
        .collect();
    drop(t);
    let left = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()?
            .stdout,
    )
    .into_owned();
    anyhow::ensure!(
        !names.iter().any(|n| left.contains(n.as_str())),
        "namespaces left behind: {left}"
    );
    say(&format!(
        "all namespaces deleted; demo took {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn step(what: &str) {
    println!("==> {what}");
}

fn say(what: &str) {
    println!("    {what}");
}

fn dns(t: &Topology) -> anyhow::Result<()> {
    step("resolving www.inet.test through the tunnel");
    let server = format!("{}:53", addr::VIRTUAL_RESOLVER);
    let out = probe(&t.client, &["dns", &server, "www.inet.test"]);
    anyhow::ensure!(out.ok, "DNS query failed: {}", out.stderr);
    let answer = out.stdout.lines().nth(1).unwrap_or("(no address)");
    say(&format!(
        "www.inet.test = {answer}: asked the virtual resolver {}, answered by the exit's resolver \
         (the client has no route to {} outside the tunnel)",
        addr::VIRTUAL_RESOLVER,
        addr::INET
    ));
    let page = probe(&t.client, &["body", "www.inet.test:80", "/"]);
    anyhow::ensure!(page.ok, "GET http://www.inet.test/ failed: {}", page.stderr);
    say(&format!(
        "GET http://www.inet.test/ by name -> {:?}",
        page.stdout.trim()
    ));
    Ok(())
}

fn download(t: &Topology, n: u64) -> anyhow::Result<()> {
    step(&format!("downloading {} MiB through the tunnel", n >> 20));
    let target = format!("www.inet.test:{}", port::HTTP);
    let out = probe(&t.client, &["get", &target, &format!("/bytes/{n}")]);
    anyhow::ensure!(out.ok, "download failed: {}", out.stderr);
    let ok = out.field("sha256") == Some(expected_sha256(n).as_str())
        && out.field("bytes") == Some(n.to_string().as_str());
    anyhow::ensure!(ok, "download corrupted: {}", out.stdout);
    rate("downloaded", n, out.field("secs"));
    Ok(())
}

fn upload(t: &Topology, n: u64) -> anyhow::Result<()> {
    step(&format!("uploading {} MiB through the tunnel", n >> 20));
    let target = format!("www.inet.test:{}", port::HTTP);
    let out = probe(&t.client, &["put", &target, &n.to_string()]);
    anyhow::ensure!(out.ok, "upload failed: {}", out.stderr);
    let sha = out.field("sha256").unwrap_or("?");
    anyhow::ensure!(
        out.stdout.ends_with(&format!("reply={n} {sha}\n")),
        "upload corrupted: {}",
        out.stdout
    );
    rate("uploaded", n, out.field("secs"));
    Ok(())
}

fn rate(what: &str, n: u64, secs: Option<&str>) {
    let secs: f64 = secs.and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
    say(&format!(
        "{what} {n} bytes in {secs:.2} s = {:.0} MiB/s ({:.0} Mbit/s), SHA-256 verified",
        n as f64 / secs / (1 << 20) as f64,
        n as f64 * 8.0 / secs / 1e6
    ));
}

/// Print each relay's counts for the download and the upload, and check the split: the
/// bulk of each direction crossed only its own relay (less than 1 MiB the other way).
fn split(n: u64, a: [RelayStats; 3], b: [RelayStats; 3]) -> anyhow::Result<()> {
    step("who carried what (bytes counted by each relay)");
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    say("                  relay A (Domain A)      relay B (Domain B)");
    say("                  to exit  from exit      to exit  from exit");
    let mut ok = true;
    for (what, i) in [("download", 0), ("upload", 1)] {
        let a_up = a[i + 1].c2s_bytes - a[i].c2s_bytes;
        let a_down = a[i + 1].s2c_bytes - a[i].s2c_bytes;
        let b_up = b[i + 1].c2s_bytes - b[i].c2s_bytes;
        let b_down = b[i + 1].s2c_bytes - b[i].s2c_bytes;
        say(&format!(
            "{what:<8} MiB  {:>8.1}  {:>9.1}     {:>8.1}  {:>9.1}",
            mib(a_up),
            mib(a_down),
            mib(b_up),
            mib(b_down),
        ));
        ok &= a_down < 1 << 20 && b_up < 1 << 20;
        ok &= if i == 0 { b_down >= n } else { a_up >= n };
    }
    anyhow::ensure!(ok, "the split did not hold: see the table above");
    say("=> client->exit bytes crossed only relay A; exit->client bytes crossed only relay B");
    Ok(())
}
