//! `ht-bench`: the benchmark harness of issue 7 (run by `scripts/bench.sh`, as root).
//!
//! It builds throwaway network namespaces side by side — the direct path (kernel forwarding
//! client → lan → relay-a → exit → inet) and one tunnel path per leg mode (`--legs`): the
//! e2e topology with `vpn-client up` and `exit-node`, both legs through the TLS relays
//! (`relays`), or straight to the exit, which terminates TLS, through the same namespaces
//! as kernel-forwarding hops (`direct`) — and measures every figure on each, alternating,
//! several times: TCP bulk throughput (iperf3,
//! up/down, 1 and 4 streams) with the CPU of the tunnel's processes, UDP throughput and
//! loss at a fixed offered rate, 64-byte request/response latency, connect + request/
//! response + close latency, sustained new flows per second, and the memory of
//! vpn-client and exit-node holding many idle flows. It prints a table (median, min–max,
//! tunnel/direct ratio) and writes a JSON report. Nothing leaves those namespaces.
//! With `--peers`, other tools (tun2proxy, boringtun; [`e2e::peers`]) are measured the same
//! way on their own copies of the direct path, in the TCP, latency and rate groups.
//!
//! The subcommands are the load tools it runs inside the namespaces.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use e2e::bench::{
    self, Direct, Figure, Holder, IPERF_PORT, Legs, SERVE_PORT, Tunnel, TunnelSettings, quantile,
};
use e2e::netns::Netns;
use e2e::peers::{Peer, PeerPath, on_path};
use e2e::topology::{addr, bin};

/// Half-Tunnel benchmark: direct path vs tunnel, in throwaway network namespaces.
#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    tool: Option<Tool>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// CI smoke: one short run of everything (under a minute).
    #[arg(long)]
    quick: bool,
    /// Runs per figure (default 3; 1 with --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// Seconds per iperf3 test (default 5; 1 with --quick).
    #[arg(long)]
    secs: Option<u64>,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/bench.json")]
    json: PathBuf,
    /// The client's TUN MTU (`[tun] mtu`).
    #[arg(long, default_value_t = 65535)]
    mtu: u32,
    /// Offered UDP rate (iperf3 -b).
    #[arg(long, default_value = "200M")]
    udp_rate: String,
    /// Idle flows held for the memory figure (default 10000; 2000 with --quick).
    #[arg(long)]
    flows: Option<usize>,
    /// Only these groups (comma separated): tcp, udp, rr, crr, rate, mem, and `lan` (not
    /// in the default set: TCP from a host on a LAN of MTU 1500 behind the client, which
    /// then runs in router mode).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Record `perf` profiles of vpn-client and exit-node during a 1-stream download and
    /// upload into this directory (needs `perf`).
    #[arg(long)]
    perf: Option<PathBuf>,
    /// How the tunnel's legs reach the exit: through the TLS relays (`relays`, as deployed
    /// behind CDNs), straight to the exit-node terminating TLS (`direct`), or `both` (two
    /// tunnels, measured alternately with the direct path).
    #[arg(long, value_enum, default_value_t = LegsArg::Both)]
    legs: LegsArg,
    /// Also measure other tools on copies of the direct path (comma separated:
    /// `tun2proxy`, `boringtun`, or `all`), in the tcp, rr, crr and rate groups; each needs
    /// its programs on the PATH (the harness says how to install them).
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
}

/// `--legs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LegsArg {
    Relays,
    Direct,
    Both,
}

impl LegsArg {
    fn modes(self) -> Vec<Legs> {
        match self {
            LegsArg::Relays => vec![Legs::Relays],
            LegsArg::Direct => vec![Legs::Direct],
            LegsArg::Both => vec![Legs::Relays, Legs::Direct],
        }
    }
}

#[derive(Debug, Subcommand)]
enum Tool {
    /// Echo server (TCP_NODELAY), for the latency, rate and memory tests.
    Serve {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// 64-byte request/response on one connection: `n= p50_us= p99_us=`.
    Rr {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 10000)]
        count: usize,
    },
    /// Connect + 64-byte request/response + close in sequence: `n= errors= p50_us= p99_us=`.
    Crr {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
    /// Parallel connect + request/response + close for SECS: `flows= errors= secs=`.
    Rate {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        #[arg(long, default_value_t = 4)]
        parallel: usize,
    },
    /// Open FLOWS idle connections, report, hold them until stdin closes.
    Hold {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        flows: usize,
        #[arg(long, default_value_t = 8)]
        threads: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.tool {
        Some(tool) => run_tool(tool),
        None => run_bench(&args.run),
    }
}

fn run_tool(tool: Tool) -> anyhow::Result<()> {
    match tool {
        Tool::Serve { listen } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(bench::serve(listen))?;
        }
        Tool::Rr { target, count } => {
            let lat = bench::rr(target, count)?;
            println!(
                "n={} p50_us={:.1} p99_us={:.1}",
                lat.len(),
                quantile(&lat, 0.5),
                quantile(&lat, 0.99)
            );
        }
        Tool::Crr { target, count } => {
            let (lat, errors) = bench::crr(target, count);
            println!(
                "n={} errors={errors} p50_us={:.1} p99_us={:.1}",
                lat.len(),
                quantile(&lat, 0.5),
                quantile(&lat, 0.99)
            );
        }
        Tool::Rate {
            target,
            secs,
            parallel,
        } => {
            let t0 = Instant::now();
            let (flows, errors) = bench::flow_rate(target, secs, parallel);
            let secs = t0.elapsed().as_secs_f64();
            println!("flows={flows} errors={errors} secs={secs:.3}");
        }
        Tool::Hold {
            target,
            flows,
            threads,
        } => bench::hold(target, flows, threads),
    }
    Ok(())
}

/// Effective settings of one invocation.
#[derive(Debug)]
struct Plan {
    runs: usize,
    secs: u64,
    flows: usize,
    rr_count: usize,
    crr_count: usize,
    rate_secs: f64,
    groups: Vec<String>,
}

impl Plan {
    fn new(a: &RunArgs) -> Plan {
        let q = a.quick;
        Plan {
            runs: a.runs.unwrap_or(if q { 1 } else { 3 }).max(1),
            secs: a.secs.unwrap_or(if q { 1 } else { 5 }).max(1),
            flows: a.flows.unwrap_or(if q { 2000 } else { 10_000 }),
            rr_count: if q { 2000 } else { 20_000 },
            crr_count: if q { 300 } else { 2000 },
            rate_secs: if q { 1.0 } else { 5.0 },
            groups: a.only.clone(),
        }
    }

    fn wants(&self, group: &str) -> bool {
        (self.groups.is_empty() && group != "lan") || self.groups.iter().any(|g| g == group)
    }
}

/// Which path a measurement runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Direct,
    Tunnel(Legs),
    /// Another tool (`--peers`), on its own copy of the direct path.
    Peer(Peer),
}

/// The figures other tools are measured in (`--peers`): TCP bulk with its CPU rows,
/// request/response, connect+RR and new flows.
fn peer_figure(key: &str) -> bool {
    ["tcp_", "cpu_tcp_", "rr_", "crr_", "flows_per_sec"]
        .iter()
        .any(|p| key.starts_with(p))
}

struct Bench {
    direct: Direct,
    /// One tunnel per leg mode, in `--legs` order.
    tunnels: Vec<Tunnel>,
    /// The other tools of `--peers`.
    peers: Vec<PeerPath>,
    plan: Plan,
    figures: Vec<Figure>,
}

impl Bench {
    fn ns(&self, path: Path) -> &Netns {
        match path {
            Path::Direct => &self.direct.client,
            Path::Tunnel(legs) => &self.tunnel(legs).t.client,
            Path::Peer(peer) => &self.peer(peer).net.client,
        }
    }

    fn peer(&self, peer: Peer) -> &PeerPath {
        self.peers
            .iter()
            .find(|p| p.peer == peer)
            .expect("a path for every peer measured")
    }

    /// The host behind the path's client (the `lan` group).
    fn lan_host(&self, path: Path) -> &Netns {
        match path {
            Path::Direct => &self.direct.lan_host,
            Path::Tunnel(legs) => self
                .tunnel(legs)
                .lan_host
                .as_ref()
                .expect("tunnels have a LAN host when the lan group runs"),
            Path::Peer(_) => unreachable!("the lan group does not run on peers"),
        }
    }

    fn tunnel(&self, legs: Legs) -> &Tunnel {
        self.tunnels
            .iter()
            .find(|t| t.legs == legs)
            .expect("a tunnel for every leg mode measured")
    }

    /// The direct path, then each tunnel: the order measurements alternate in.
    fn paths(&self) -> Vec<Path> {
        std::iter::once(Path::Direct)
            .chain(self.tunnels.iter().map(|t| Path::Tunnel(t.legs)))
            .collect()
    }

    /// [`Bench::paths`] and then each peer: the paths of the groups peers take part in.
    fn paths_and_peers(&self) -> Vec<Path> {
        let peers = self.peers.iter().map(|p| Path::Peer(p.peer));
        self.paths().into_iter().chain(peers).collect()
    }

    /// The figures (key, label) a measurement on `path` belongs to: a tunnel's or a peer's
    /// own (its suffix), and for the direct path the same figure of every leg mode and
    /// peer, so each row has its ratio against the direct path of the same run.
    fn targets(&self, path: Path, key: &str, label: &str) -> Vec<(String, String)> {
        let tag = |legs: Legs| (legs.key_suffix().to_owned(), legs.label_suffix().to_owned());
        let peer_tag = |p: Peer| (p.key_suffix(), p.label_suffix());
        let tags: Vec<(String, String)> = match path {
            Path::Direct => {
                let peers = self.peers.iter().filter(|_| peer_figure(key));
                (self.tunnels.iter().map(|t| tag(t.legs)))
                    .chain(peers.map(|p| peer_tag(p.peer)))
                    .collect()
            }
            Path::Tunnel(legs) => vec![tag(legs)],
            Path::Peer(peer) => vec![peer_tag(peer)],
        };
        tags.into_iter()
            .map(|(k, l)| (format!("{key}{k}"), format!("{label}{l}")))
            .collect()
    }

    /// The figure `key`, created on first use.
    fn fig(&mut self, key: &str, label: &str, unit: &str, higher: bool) -> &mut Figure {
        if let Some(i) = self.figures.iter().position(|f| f.key == key) {
            return &mut self.figures[i];
        }
        self.figures.push(Figure::new(key, label, unit, higher));
        self.figures.last_mut().expect("just pushed")
    }

    fn record(&mut self, path: Path, key: &str, label: &str, unit: &str, higher: bool, v: f64) {
        for (key, label) in self.targets(path, key, label) {
            let f = self.fig(&key, &label, unit, higher);
            match path {
                Path::Direct => f.direct.push(v),
                Path::Tunnel(_) | Path::Peer(_) => f.tunnel.push(v),
            }
        }
    }

    fn fail(&mut self, path: Path, key: &str, label: &str, unit: &str, why: String) {
        let what = match path {
            Path::Direct => "Direct".to_owned(),
            Path::Tunnel(Legs::Relays) => "Tunnel (relay legs)".to_owned(),
            Path::Tunnel(Legs::Direct) => "Tunnel (direct legs)".to_owned(),
            Path::Peer(peer) => peer.name().to_owned(),
        };
        for (key, label) in self.targets(path, key, label) {
            let f = self.fig(&key, &label, unit, true);
            f.errors.push(format!("{what}: {why}"));
        }
    }
}

fn run_bench(a: &RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        e2e::netns::namespaces_available("ht-bench"),
        "the benchmark creates network namespaces: run it as root"
    );
    anyhow::ensure!(
        on_path("iperf3"),
        "iperf3 is missing: install it with `apt-get install -y iperf3`"
    );
    let _ = bin("ht-bench");
    let peers = peers_asked(&a.peers)?;
    let started = Instant::now();
    let plan = Plan::new(a);
    let modes = a.legs.modes();
    let names: Vec<&str> = modes.iter().map(|m| m.name()).collect();
    println!(
        "==> building the direct and the tunnel namespaces (legs: {}; TUN MTU {})",
        names.join(" and "),
        a.mtu
    );
    let direct = Direct::new();
    let tunnels = modes
        .iter()
        .map(|&legs| {
            Tunnel::new(&TunnelSettings {
                mtu: a.mtu,
                legs,
                lan_host: plan.wants("lan"),
            })
        })
        .collect();
    let peers = peers
        .into_iter()
        .map(|p| {
            println!(
                "==> starting {} on its own namespaces: {}",
                p.name(),
                p.setup()
            );
            PeerPath::new(p)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!(
        "==> {} run(s), {} s per iperf3 test; the paths alternate",
        plan.runs, plan.secs
    );
    let mut b = Bench {
        direct,
        tunnels,
        peers,
        plan,
        figures: Vec::new(),
    };
    if b.plan.wants("mem") {
        for legs in modes {
            memory(&mut b, legs);
        }
    }
    for run in 0..b.plan.runs {
        println!("==> run {}/{}", run + 1, b.plan.runs);
        one_run(&mut b, &a.udp_rate);
    }
    if let Some(dir) = &a.perf {
        profile(&b, dir)?;
    }
    let table = bench::table(&b.figures);
    println!("\n{table}");
    write_json(a, &b, started.elapsed().as_secs_f64())?;
    println!(
        "==> report written to {}; took {:.0} s",
        a.json.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The peers of `--peers`, each with its programs installed.
fn peers_asked(names: &[String]) -> anyhow::Result<Vec<Peer>> {
    let mut peers = Vec::new();
    for name in names {
        let add: Vec<Peer> = match name.as_str() {
            "all" => Peer::ALL.to_vec(),
            n => vec![Peer::from_name(n).ok_or_else(|| {
                let known: Vec<&str> = Peer::ALL.iter().map(|p| p.name()).collect();
                anyhow::anyhow!("unknown peer {n:?}: known are {} and all", known.join(", "))
            })?],
        };
        for p in add {
            p.ensure_installed()?;
            if !peers.contains(&p) {
                peers.push(p);
            }
        }
    }
    Ok(peers)
}

fn one_run(b: &mut Bench, udp_rate: &str) {
    let paths = b.paths();
    let with_peers = b.paths_and_peers();
    if b.plan.wants("tcp") {
        for (dir, reverse) in [("up", false), ("down", true)] {
            for streams in [1, 4] {
                for &path in &with_peers {
                    tcp_bulk(b, path, dir, reverse, streams, AppsOn::Client);
                }
            }
        }
    }
    if b.plan.wants("lan") {
        for (dir, reverse) in [("up", false), ("down", true)] {
            for &path in &paths {
                tcp_bulk(b, path, dir, reverse, 1, AppsOn::LanHost);
            }
        }
    }
    if b.plan.wants("udp") {
        for (dir, reverse) in [("up", false), ("down", true)] {
            for &path in &paths {
                udp(b, path, dir, reverse, udp_rate);
            }
        }
    }
    for &path in &with_peers {
        if b.plan.wants("rr") {
            rr(b, path);
        }
        if b.plan.wants("crr") {
            crr(b, path);
        }
        if b.plan.wants("rate") {
            rate(b, path);
        }
    }
}

/// Run iperf3 in the path's client namespace against inet; its JSON report.
fn iperf(b: &Bench, path: Path, extra: &[&str]) -> Result<String, String> {
    iperf_in(b, b.ns(path), extra)
}

/// Run iperf3 in `ns` against inet; its JSON report.
fn iperf_in(b: &Bench, ns: &Netns, extra: &[&str]) -> Result<String, String> {
    let secs = b.plan.secs.to_string();
    let limit = (b.plan.secs + 30).to_string();
    let target = addr::INET;
    let port = IPERF_PORT.to_string();
    let mut args = vec![
        limit.as_str(),
        "iperf3",
        "-c",
        target,
        "-p",
        &port,
        "-t",
        &secs,
        "-J",
        "--connect-timeout",
        "5000",
    ];
    if !b.plan.groups.is_empty() || b.plan.secs >= 3 {
        // Leave slow start out of the figure on longer runs.
        args.extend(["-O", "1"]);
    }
    args.extend(extra);
    let out = ns.try_exec("timeout", &args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if let Some(e) = bench::json_error(&text) {
        return Err(format!("iperf3: {e}"));
    }
    if !out.status.success() {
        return Err(format!(
            "iperf3 exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(text)
}

type Samples = Vec<(String, u32, Option<bench::CpuSample>)>;

fn sample(b: &Bench, path: Path) -> Samples {
    let procs = match path {
        Path::Direct => return Vec::new(),
        Path::Tunnel(legs) => b.tunnel(legs).processes(),
        Path::Peer(peer) => b.peer(peer).processes(),
    };
    procs
        .into_iter()
        .map(|(name, pid)| {
            let s = bench::cpu_sample(pid);
            (name, pid, s)
        })
        .collect()
}

/// Where a bulk test's iperf3 client runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AppsOn {
    /// The path's client namespace (the apps of the VPN's own host).
    Client,
    /// The host on the LAN behind the path's client, which forwards its traffic (direct
    /// path) or carries it in router mode (tunnel); the LAN's MTU is 1500.
    LanHost,
}

fn tcp_bulk(b: &mut Bench, path: Path, dir: &str, reverse: bool, streams: u32, apps: AppsOn) {
    let (key, label, what) = match apps {
        AppsOn::Client => (
            format!("tcp_{dir}_{streams}"),
            format!("TCP {dir}load, {streams} stream(s)"),
            format!("{dir} {streams}"),
        ),
        AppsOn::LanHost => (
            format!("lan_tcp_{dir}_{streams}"),
            format!("TCP {dir}load from a LAN host (MTU 1500), {streams} stream(s)"),
            format!("LAN {dir} {streams}"),
        ),
    };
    let p = streams.to_string();
    let mut extra = vec!["-P", p.as_str()];
    if reverse {
        extra.push("-R");
    }
    let before = sample(b, path);
    let m0 = bench::machine_ticks();
    let t0 = Instant::now();
    let result = match apps {
        AppsOn::Client => iperf(b, path, &extra),
        AppsOn::LanHost => iperf_in(b, b.lan_host(path), &extra),
    };
    let wall = t0.elapsed().as_secs_f64();
    let after = sample(b, path);
    if let (Some((b0, t0)), Some((b1, t1))) = (m0, bench::machine_ticks()) {
        let busy = 100.0 * (b1 - b0) as f64 / (t1 - t0).max(1) as f64;
        let label = format!("  machine CPU busy, all cores ({what})");
        b.record(
            path,
            &format!("cpu_{key}_machine"),
            &label,
            "%",
            false,
            busy,
        );
    }
    match result.map(|t| bench::json_number(&t, "sum_received", "bits_per_second")) {
        Ok(Some(bps)) => b.record(path, &key, &label, "Gbit/s", true, bps / 1e9),
        Ok(None) => b.fail(path, &key, &label, "Gbit/s", "no sum_received".into()),
        Err(e) => b.fail(path, &key, &label, "Gbit/s", e),
    }
    if path != Path::Direct {
        cpu_figures(b, path, &key, &what, &before, &after, wall);
    }
}

/// Record CPU % of each process of the tunnel or peer on `path` (and its busiest thread)
/// during a bulk test; the relays' row exists only with relay legs (no relay runs
/// otherwise).
fn cpu_figures(
    b: &mut Bench,
    tunnel: Path,
    key: &str,
    what: &str,
    s0: &Samples,
    s1: &Samples,
    wall: f64,
) {
    let mut relays = 0.0;
    let mut seen_relay = false;
    for (name, pid, before) in s0 {
        let after = s1
            .iter()
            .find(|(_, p, _)| p == pid)
            .and_then(|x| x.2.as_ref());
        let (Some(before), Some(after)) = (before, after) else {
            let label = format!("  CPU {name} ({what})");
            b.fail(
                tunnel,
                &format!("cpu_{key}_{name}"),
                &label,
                "%",
                "process gone".into(),
            );
            continue;
        };
        let (total, busiest) = bench::cpu_percent(before, after, wall);
        if name.starts_with("relay") {
            relays += total;
            seen_relay = true;
            continue;
        }
        let fk = format!("cpu_{key}_{name}");
        b.record(
            tunnel,
            &fk,
            &format!("  CPU {name} ({what})"),
            "% core",
            false,
            total,
        );
        let label = format!("  CPU {name} busiest thread ({what})");
        b.record(
            tunnel,
            &format!("{fk}_thread"),
            &label,
            "% core",
            false,
            busiest,
        );
    }
    if seen_relay {
        let label = format!("  CPU relay-a + relay-b ({what})");
        b.record(
            tunnel,
            &format!("cpu_{key}_relays"),
            &label,
            "% core",
            false,
            relays,
        );
    }
}

fn udp(b: &mut Bench, path: Path, dir: &str, reverse: bool, rate: &str) {
    let key = format!("udp_{dir}");
    let label = format!("UDP {dir}load received at {rate}bit/s offered");
    let loss_key = format!("udp_{dir}_loss");
    let loss_label = format!("UDP {dir}load loss at {rate}bit/s offered");
    let mut extra = vec!["-u", "-b", rate, "-l", "1200"];
    if reverse {
        extra.push("-R");
    }
    match iperf(b, path, &extra) {
        Ok(text) => {
            // The receiver's view: `sum_received` in iperf3 ≥ 3.10 (else `sum`).
            let section = if text.contains("\"sum_received\"") {
                "sum_received"
            } else {
                "sum"
            };
            let bps = bench::json_number(&text, section, "bits_per_second");
            let loss = bench::json_number(&text, section, "lost_percent");
            match (bps, loss) {
                (Some(bps), Some(loss)) => {
                    b.record(path, &key, &label, "Mbit/s", true, bps / 1e6);
                    b.record(path, &loss_key, &loss_label, "%", false, loss);
                }
                _ => b.fail(path, &key, &label, "Mbit/s", "no UDP summary".into()),
            }
        }
        Err(e) => b.fail(path, &key, &label, "Mbit/s", e),
    }
}

fn target() -> String {
    format!("{}:{SERVE_PORT}", addr::INET)
}

/// Run `ht-bench TOOL ARGS` in the path's client namespace; its `key=value` fields.
fn tool(b: &Bench, path: Path, args: &[&str]) -> Result<Vec<(String, f64)>, String> {
    let out = b.ns(path).try_exec(&bin("ht-bench"), args);
    if !out.status.success() {
        return Err(format!(
            "ht-bench {} failed: {}",
            args[0],
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect())
}

fn field(fields: &[(String, f64)], key: &str) -> f64 {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map_or(f64::NAN, |(_, v)| *v)
}

fn rr(b: &mut Bench, path: Path) {
    let count = b.plan.rr_count.to_string();
    let label = "TCP 64 B request/response p50";
    let before = sample(b, path);
    let result = tool(b, path, &["rr", "--target", &target(), "--count", &count]);
    let after = sample(b, path);
    match result {
        Ok(f) => {
            cpu_per_exchange(b, path, &before, &after, field(&f, "n"));
            b.record(path, "rr_p50", label, "µs", false, field(&f, "p50_us"));
            let p99 = field(&f, "p99_us");
            b.record(
                path,
                "rr_p99",
                "TCP 64 B request/response p99",
                "µs",
                false,
                p99,
            );
        }
        Err(e) => b.fail(path, "rr_p50", label, "µs", e),
    }
}

/// CPU time per request/response of each process of the tunnel or peer on `path`: its
/// CPU over the `rr` tool's run divided by the `n` timed exchanges and the `n / 10`
/// warm-up ones before them.
fn cpu_per_exchange(b: &mut Bench, path: Path, s0: &Samples, s1: &Samples, n: f64) {
    for (name, pid, before) in s0 {
        let after = s1
            .iter()
            .find(|(_, p, _)| p == pid)
            .and_then(|x| x.2.as_ref());
        let (Some(before), Some(after), true) = (before, after, n > 0.0) else {
            continue;
        };
        // Ticks are 10 ms.
        let exchanges = n + (n / 10.0).floor();
        let us = after.total.saturating_sub(before.total) as f64 * 1e4 / exchanges;
        let label = format!("  CPU {name} per request/response");
        b.record(path, &format!("cpu_rr_{name}"), &label, "µs", false, us);
    }
}

fn crr(b: &mut Bench, path: Path) {
    let count = b.plan.crr_count.to_string();
    let label = "TCP connect+RR+close p50";
    match tool(b, path, &["crr", "--target", &target(), "--count", &count]) {
        Ok(f) => {
            b.record(path, "crr_p50", label, "µs", false, field(&f, "p50_us"));
            let p99 = field(&f, "p99_us");
            b.record(
                path,
                "crr_p99",
                "TCP connect+RR+close p99",
                "µs",
                false,
                p99,
            );
            let errors = field(&f, "errors");
            if errors > 0.0 {
                b.fail(
                    path,
                    "crr_p50",
                    label,
                    "µs",
                    format!("{errors} of {count} failed"),
                );
            }
        }
        Err(e) => b.fail(path, "crr_p50", label, "µs", e),
    }
}

fn rate(b: &mut Bench, path: Path) {
    let secs = b.plan.rate_secs.to_string();
    let label = "new flows/s (4 parallel connect+RR+close)";
    let args = [
        "rate",
        "--target",
        &target(),
        "--secs",
        &secs,
        "--parallel",
        "4",
    ];
    match tool(b, path, &args) {
        Ok(f) => {
            let rate = field(&f, "flows") / field(&f, "secs");
            b.record(path, "flows_per_sec", label, "flows/s", true, rate);
            let errors = field(&f, "errors");
            if errors > 0.0 {
                b.fail(
                    path,
                    "flows_per_sec",
                    label,
                    "flows/s",
                    format!("{errors} failed"),
                );
            }
        }
        Err(e) => b.fail(path, "flows_per_sec", label, "flows/s", e),
    }
}

/// Memory of vpn-client and exit-node while holding `flows` idle TCP flows (tunnel only,
/// measured once on the fresh tunnel of each leg mode): RSS before, while held, per flow,
/// and after close.
fn memory(b: &mut Bench, legs: Legs) {
    let n = b.plan.flows;
    let t = Path::Tunnel(legs);
    println!(
        "==> memory: opening {n} idle flows through the tunnel (legs: {})",
        legs.name()
    );
    let procs = [
        ("vpn-client", b.tunnel(legs).client_pid),
        ("exit-node", b.tunnel(legs).exit_pid),
    ];
    let before: Vec<Option<u64>> = procs.iter().map(|(_, p)| bench::rss_kib(*p)).collect();
    let holder = match Holder::start(&b.tunnel(legs).t.client, &target(), n) {
        Ok(h) => h,
        Err(e) => {
            let label = format!("idle flows opened (of {n})");
            b.fail(t, "mem_flows", &label, "flows", e.to_string());
            return;
        }
    };
    std::thread::sleep(Duration::from_secs(2));
    let held: Vec<Option<u64>> = procs.iter().map(|(_, p)| bench::rss_kib(*p)).collect();
    let streams = exit_streams(b, legs);
    let label = format!("idle flows opened (of {n})");
    b.record(t, "mem_flows", &label, "flows", true, holder.opened as f64);
    if holder.failed > 0 {
        let why = format!("{} connections failed", holder.failed);
        b.fail(t, "mem_flows", &label, "flows", why);
    }
    if let Some(s) = streams {
        let label = "  exit-node open streams while held";
        b.record(t, "mem_exit_streams", label, "streams", true, s);
    }
    let opened = holder.opened.max(1) as f64;
    holder.stop();
    // Closed flows must be reclaimed end to end: wait (up to 60 s) for the exit's
    // open-streams gauge to reach 0 and report how long that took.
    let closed = Instant::now();
    let mut left = exit_streams(b, legs);
    while left.is_some_and(|s| s > 0.0) && closed.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
        left = exit_streams(b, legs);
    }
    let reclaim = closed.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let after: Vec<Option<u64>> = procs.iter().map(|(_, p)| bench::rss_kib(*p)).collect();
    for (i, (name, _)) in procs.iter().enumerate() {
        mem_rows(b, legs, name, [before[i], held[i], after[i]], opened);
    }
    match left {
        Some(0.0) => {
            let label = "  exit-node streams all reclaimed after close";
            b.record(t, "mem_reclaim_secs", label, "s", false, reclaim);
        }
        Some(s) => {
            let label = "  exit-node streams all reclaimed after close";
            let why = format!("{s} streams still open 60 s after the flows closed");
            b.fail(t, "mem_reclaim_secs", label, "s", why);
        }
        None => {}
    }
}

fn mem_rows(b: &mut Bench, legs: Legs, name: &str, rss: [Option<u64>; 3], opened: f64) {
    let key = format!("mem_{name}");
    let [Some(before), Some(held), Some(after)] = rss else {
        b.fail(
            Path::Tunnel(legs),
            &key,
            &format!("{name} RSS"),
            "MiB",
            "no VmRSS".into(),
        );
        return;
    };
    let mib = |k: u64| k as f64 / 1024.0;
    let t = Path::Tunnel(legs);
    b.record(
        t,
        &format!("{key}_idle"),
        &format!("{name} RSS idle tunnel"),
        "MiB",
        false,
        mib(before),
    );
    b.record(
        t,
        &format!("{key}_held"),
        &format!("{name} RSS with the flows"),
        "MiB",
        false,
        mib(held),
    );
    let per = (held as f64 - before as f64) / opened;
    b.record(
        t,
        &format!("{key}_per_flow"),
        &format!("{name} per idle flow"),
        "KiB",
        false,
        per,
    );
    b.record(
        t,
        &format!("{key}_after"),
        &format!("{name} RSS after close (reclaimed + 1 s)"),
        "MiB",
        false,
        mib(after),
    );
}

/// The exit's open-streams gauge from its `/metrics`.
fn exit_streams(b: &Bench, legs: Legs) -> Option<f64> {
    let admin = "127.0.0.1:9090";
    let out = b
        .tunnel(legs)
        .t
        .exit
        .try_exec(&bin("ht-probe"), &["body", admin, "/metrics"]);
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let (name, value) = l.split_once(' ')?;
        (!l.starts_with('#') && name.ends_with("streams")).then(|| value.trim().parse().ok())?
    })
}

/// `perf record` vpn-client and exit-node of each tunnel during a 1-stream download and
/// upload and a request/response test; writes `perf report` summaries next to the data files (`NAME-down1.data` with
/// relay legs, `NAME-down1_direct_legs.data` with direct legs).
fn profile(b: &Bench, dir: &std::path::Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        on_path("perf"),
        "perf is missing: apt-get install -y linux-perf"
    );
    std::fs::create_dir_all(dir)?;
    for tunnel in &b.tunnels {
        profile_tunnel(b, tunnel, dir)?;
    }
    println!("==> perf profiles in {}", dir.display());
    Ok(())
}

fn profile_tunnel(b: &Bench, tunnel: &Tunnel, dir: &std::path::Path) -> anyhow::Result<()> {
    let suffix = tunnel.legs.key_suffix();
    for what in ["down1", "up1", "rr"] {
        let mut recs = Vec::new();
        for (name, pid) in [
            ("vpn-client", tunnel.client_pid),
            ("exit-node", tunnel.exit_pid),
        ] {
            let data = dir.join(format!("{name}-{what}{suffix}.data"));
            let child = std::process::Command::new("perf")
                .args(["record", "-F", "499", "--call-graph", "dwarf"])
                .args(["-p", &pid.to_string(), "-o"])
                .arg(&data)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?;
            recs.push((child, data));
        }
        // perf records until it is interrupted after the load.
        std::thread::sleep(Duration::from_millis(500));
        let path = Path::Tunnel(tunnel.legs);
        match what {
            "rr" => {
                // Five times the figure's exchanges, for enough samples.
                let count = (5 * b.plan.rr_count).to_string();
                let _ = tool(b, path, &["rr", "--target", &target(), "--count", &count]);
            }
            "down1" => drop(iperf(b, path, &["-R"])),
            _ => drop(iperf(b, path, &[])),
        }
        for (mut child, data) in recs {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            child.wait()?;
            let report = std::process::Command::new("perf")
                .args([
                    "report",
                    "--stdio",
                    "--no-children",
                    "--sort",
                    "dso,symbol",
                    "-i",
                ])
                .arg(&data)
                .output()?;
            std::fs::write(data.with_extension("txt"), report.stdout)?;
        }
    }
    Ok(())
}

/// The checked-out commit (with `-dirty` for local changes), for the report.
fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    git(&["rev-parse", "--short", "HEAD"]) + if dirty { "-dirty" } else { "" }
}

fn write_json(a: &RunArgs, b: &Bench, took: f64) -> anyhow::Result<()> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let meta = [
        ("date", bench::json_string(&date)),
        ("commit", bench::json_string(&commit())),
        ("kernel", bench::json_string(kernel.trim())),
        ("cpus", cpus.to_string()),
        ("runs", b.plan.runs.to_string()),
        ("iperf_secs", b.plan.secs.to_string()),
        ("quick", a.quick.to_string()),
        ("tun_mtu", a.mtu.to_string()),
        ("legs", {
            let names: Vec<String> = b
                .tunnels
                .iter()
                .map(|t| bench::json_string(t.legs.name()))
                .collect();
            format!("[{}]", names.join(","))
        }),
        ("peers", {
            let peers: Vec<String> = b
                .peers
                .iter()
                .map(|p| {
                    format!(
                        "{{\"name\":{},\"version\":{},\"setup\":{}}}",
                        bench::json_string(p.peer.name()),
                        bench::json_string(&p.peer.version()),
                        bench::json_string(&p.peer.setup())
                    )
                })
                .collect();
            format!("[{}]", peers.join(","))
        }),
        ("udp_rate", bench::json_string(&a.udp_rate)),
        ("idle_flows", b.plan.flows.to_string()),
        ("took_secs", format!("{took:.1}")),
    ];
    if let Some(parent) = a.json.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&a.json, bench::json(&meta, &b.figures))?;
    Ok(())
}
