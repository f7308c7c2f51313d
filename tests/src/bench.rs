//! The benchmark harness's pieces (issue 7): a direct-path topology, the tunnel with
//! benchmark configs, per-process CPU and memory readings, iperf3 output parsing, the
//! load tools `ht-bench` runs inside the namespaces, summaries and the JSON report.
//!
//! Like everything in this crate it talks only to namespaces it created or to loopback.
//!
//! ```text
//! direct:               client ─ lan ─ relay-a ─ exit ─ inet   (kernel forwarding at lan, relay-a, exit)
//! tunnel, relay legs:   client[TUN→vpn-client] ─ lan ─ relay-a/relay-b (TLS, ht-relay) ─ exit[exit-node] ─ inet
//! tunnel, direct legs:  client[TUN→vpn-client] ─ lan ─ relay-a/relay-b (kernel forwarding) ─ exit[exit-node, TLS] ─ inet
//! ```
//! With the `lan` group a host sits behind the client on a LAN of MTU 1500 (the
//! `lanhost` of [`crate::extra`], 192.168.50.2): the direct path's client forwards its
//! traffic, the tunnel's client runs in router mode and carries it.
//! All use the addresses of [`crate::topology::addr`], so every load command is the same
//! string on every path and each path crosses the same number of veths as the up leg.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::extra;
use crate::netns::{Netns, link};
use crate::topology::{Topology, addr, bin, wait_listening};

/// The TCP port of the `ht-bench serve` echo server in inet.
pub const SERVE_PORT: u16 = 9100;
/// The iperf3 server's port in inet.
pub const IPERF_PORT: u16 = 5201;
/// Bytes of one request and of one response in the latency tests.
pub const MESSAGE: usize = 64;

/// Widen the ephemeral port range and allow TIME_WAIT reuse, so connection-rate tests do
/// not run out of ports in a namespace (per-namespace sysctls).
pub fn tune_ports(ns: &Netns) {
    ns.exec(
        "sysctl",
        &[
            "-qw",
            "net.ipv4.ip_local_port_range=1024 65535",
            "net.ipv4.tcp_tw_reuse=1",
        ],
    );
}

/// Start the benchmark servers (iperf3 and the `ht-bench serve` echo) in `ns` and wait
/// until both listen on [`addr::INET`].
pub fn start_servers(ns: &Netns, log: &std::path::Path) {
    let port = IPERF_PORT.to_string();
    ns.spawn_logged("iperf3", &["-s", "-p", &port], log);
    let serve = format!("0.0.0.0:{SERVE_PORT}");
    ns.spawn_logged(&bin("ht-bench"), &["serve", "--listen", &serve], log);
    wait_listening(ns, &format!("{}:{IPERF_PORT}", addr::INET));
    wait_listening(ns, &format!("{}:{SERVE_PORT}", addr::INET));
}

/// The direct path: the same kind of namespaces and veths as the tunnel's up leg, with
/// kernel forwarding instead of the tunnel. Fields drop in order; each deletes itself.
#[derive(Debug)]
pub struct Direct {
    /// Where the apps run (`10.10.0.2`).
    pub client: Netns,
    /// The client's router.
    pub lan: Netns,
    /// A forwarding hop where relay A sits in the tunnel topology.
    pub relay: Netns,
    /// A forwarding hop where the exit sits.
    pub exit: Netns,
    /// The servers (`10.40.0.2`).
    pub inet: Netns,
    /// A host on a LAN behind the client (192.168.50.2, MTU 1500), for the `lan` group.
    pub lan_host: Netns,
    /// Server logs.
    pub dir: crate::topology::TempDir,
}

impl Direct {
    /// Create and wire the namespaces and start the servers in inet.
    pub fn new() -> Direct {
        Direct::named("d")
    }

    /// [`Direct::new`] with namespaces named `ht-<tag>-client-…` and so on: the same path
    /// carries another tool in [`crate::peers`].
    pub fn named(tag: &str) -> Direct {
        let d = Direct {
            client: Netns::new(&format!("{tag}-client")),
            lan: Netns::new(&format!("{tag}-lan")),
            relay: Netns::new(&format!("{tag}-relay")),
            exit: Netns::new(&format!("{tag}-exit")),
            inet: Netns::new(&format!("{tag}-inet")),
            lan_host: Netns::new(&format!("{tag}-lanhost")),
            dir: crate::topology::TempDir::new(&format!("bench-{tag}")),
        };
        d.wire();
        for ns in [&d.client, &d.exit, &d.inet] {
            tune_ports(ns);
        }
        start_servers(&d.inet, &d.dir.path().join("inet.log"));
        d
    }

    fn wire(&self) {
        let (c, lan, r, x, i) = (&self.client, &self.lan, &self.relay, &self.exit, &self.inet);
        link(
            c,
            "eth0",
            &["10.10.0.2/24"],
            lan,
            "eth-c",
            &["10.10.0.1/24"],
        );
        link(
            lan,
            "eth-a",
            &["10.20.1.1/24"],
            r,
            "eth0",
            &["10.20.1.2/24"],
        );
        link(r, "eth1", &["10.30.1.1/24"], x, "eth-a", &["10.30.1.2/24"]);
        link(x, "eth-i", &["10.40.0.1/24"], i, "eth0", &["10.40.0.2/24"]);
        for ns in [lan, r, x] {
            ns.forward();
        }
        c.ip(&["route", "add", "default", "via", addr::LAN_GW]);
        lan.ip(&["route", "add", "default", "via", addr::RELAY_A]);
        r.ip(&["route", "add", "default", "via", addr::EXIT_UP]);
        r.ip(&["route", "add", "10.10.0.0/16", "via", "10.20.1.1"]);
        x.ip(&["route", "add", "10.10.0.0/16", "via", "10.30.1.1"]);
        x.ip(&["route", "add", "10.20.0.0/16", "via", "10.30.1.1"]);
        i.ip(&["route", "add", "default", "via", addr::EXIT_INET]);
        // The LAN behind the client, routed back to it hop by hop.
        let h = &self.lan_host;
        link(
            c,
            extra::lan::IFACE,
            &[&format!("{}/24", extra::lan::ROUTER)],
            h,
            "eth0",
            &[&format!("{}/24", extra::lan::HOST)],
        );
        h.ip(&["route", "add", "default", "via", extra::lan::ROUTER]);
        c.forward();
        let net = extra::lan::NET;
        lan.ip(&["route", "add", net, "via", "10.10.0.2"]);
        r.ip(&["route", "add", net, "via", "10.20.1.1"]);
        x.ip(&["route", "add", net, "via", "10.30.1.1"]);
    }
}

impl Default for Direct {
    fn default() -> Self {
        Self::new()
    }
}

/// How the tunnel's two legs reach the exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Legs {
    /// Through the TLS relays (`ht-relay`, the stand-ins for the CDNs) in relay-a and
    /// relay-b, which forward to the exit's plain WebSocket listeners — as deployed.
    Relays,
    /// Straight to the exit-node, which terminates TLS itself (certificates `a.test` and
    /// `b.test` of the topology's CA); relay-a and relay-b are plain kernel-forwarding
    /// hops and no `ht-relay` runs, so only the product's own processes do the work.
    Direct,
}

impl Legs {
    /// Suffix of this mode's figure keys: none for the relays, `_direct_legs` otherwise.
    pub fn key_suffix(self) -> &'static str {
        match self {
            Legs::Relays => "",
            Legs::Direct => "_direct_legs",
        }
    }

    /// Suffix of this mode's table labels.
    pub fn label_suffix(self) -> &'static str {
        match self {
            Legs::Relays => "",
            Legs::Direct => " [direct legs]",
        }
    }

    /// The mode's name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Legs::Relays => "relays",
            Legs::Direct => "direct",
        }
    }
}

/// Settings of the tunnel under test (written into the configs; nothing else changes).
#[derive(Debug, Clone)]
pub struct TunnelSettings {
    /// The client's `[tun] mtu`.
    pub mtu: u32,
    /// How the legs reach the exit.
    pub legs: Legs,
    /// A host on a LAN behind the client (MTU 1500), the client in router mode (its
    /// default kill switch on, as deployed) — for the `lan` group only, so that the other
    /// figures stay comparable with runs without it.
    pub lan_host: bool,
}

/// The exit's leg listeners in each mode: (up address, down address), port included.
fn exit_listeners(legs: Legs) -> (String, String) {
    match legs {
        Legs::Relays => (
            format!("{}:8080", addr::EXIT_UP),
            format!("{}:8081", addr::EXIT_DOWN),
        ),
        Legs::Direct => (
            format!("{}:443", addr::EXIT_UP),
            format!("{}:443", addr::EXIT_DOWN),
        ),
    }
}

/// The tunnel path: [`Topology`] with benchmark configs, the servers in inet and the
/// processes under test. Stops the client with SIGTERM on drop.
#[derive(Debug)]
pub struct Tunnel {
    /// The topology (client, lan, relays, exit, inet).
    pub t: Topology,
    /// The vpn-client process.
    pub client_pid: u32,
    /// The exit-node process.
    pub exit_pid: u32,
    /// How the legs reach the exit.
    pub legs: Legs,
    /// The host behind the client ([`TunnelSettings::lan_host`]).
    pub lan_host: Option<Netns>,
}

impl Tunnel {
    /// Build the topology, start exit-node and vpn-client with `settings`, the servers in
    /// inet, and wait until the tunnel carries an HTTP GET.
    pub fn new(settings: &TunnelSettings) -> Tunnel {
        let t = Topology::new();
        if settings.legs == Legs::Direct {
            direct_legs(&t);
        }
        for ns in [&t.client, &t.exit, &t.inet] {
            tune_ports(ns);
        }
        start_servers(&t.inet, &t.dir.path().join("bench-servers.log"));
        let lan_host = settings.lan_host.then(|| extra::lan_host(&t, 1500, 1500));
        let exit_pid = start_exit(&t, settings.legs);
        let client_pid = start_client(&t, settings);
        t.wait_tunnel(Duration::from_secs(20));
        Tunnel {
            t,
            client_pid,
            exit_pid,
            legs: settings.legs,
            lan_host,
        }
    }

    /// The processes whose CPU is reported: vpn-client, exit-node and, with relay legs,
    /// both relays.
    pub fn processes(&self) -> Vec<(String, u32)> {
        let mut out = vec![
            ("vpn-client".to_owned(), self.client_pid),
            ("exit-node".to_owned(), self.exit_pid),
        ];
        if self.legs == Legs::Direct {
            return out;
        }
        for (name, ns) in [("relay-a", &self.t.relay_a), ("relay-b", &self.t.relay_b)] {
            out.extend(
                pids_named(ns, "ht-relay")
                    .into_iter()
                    .map(|p| (name.into(), p)),
            );
        }
        out
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self
            .t
            .client
            .stop(self.client_pid, "TERM", Duration::from_secs(3));
    }
}

/// Processes inside `ns` whose command name is `comm`.
pub fn pids_named(ns: &Netns, comm: &str) -> Vec<u32> {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", ns.name()])
        .output()
        .expect("ip netns pids");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .collect()
}

/// `program genkey` into `dir/file`; the public key.
fn keypair(t: &Topology, file: &str) -> String {
    let exit_node = bin("exit-node");
    let out = std::process::Command::new(&exit_node)
        .arg("genkey")
        .output()
        .expect("run exit-node genkey");
    assert!(out.status.success(), "exit-node genkey failed");
    std::fs::write(t.file(file), &out.stdout).expect("write key");
    let out = std::process::Command::new(&exit_node)
        .arg("pubkey")
        .stdin(std::fs::File::open(t.file(file)).expect("open key"))
        .output()
        .expect("run exit-node pubkey");
    assert!(out.status.success(), "exit-node pubkey failed");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Turn the topology's relay namespaces into plain forwarding hops: stop the `ht-relay`
/// processes the topology started there, let relay-a and relay-b forward, route the exit's
/// leg networks from lan through them and route the exit's replies back the way they came
/// (by source address, so the down leg's replies do not take relay-a).
fn direct_legs(t: &Topology) {
    for ns in [&t.relay_a, &t.relay_b] {
        for pid in pids_named(ns, "ht-relay") {
            assert!(
                ns.stop(pid, "TERM", Duration::from_secs(3)).is_some(),
                "ht-relay {pid} in {} did not stop",
                ns.name()
            );
        }
        assert!(
            pids_named(ns, "ht-relay").is_empty(),
            "an ht-relay still runs in {}",
            ns.name()
        );
        ns.forward();
    }
    t.lan
        .ip(&["route", "add", "10.30.1.0/24", "via", addr::RELAY_A]);
    t.lan
        .ip(&["route", "add", "10.30.2.0/24", "via", addr::RELAY_B]);
    for (table, from, via) in [
        ("101", addr::EXIT_UP, "10.30.1.1"),
        ("102", addr::EXIT_DOWN, "10.30.2.1"),
    ] {
        t.exit
            .ip(&["route", "add", "10.10.0.0/16", "via", via, "table", table]);
        t.exit.ip(&["rule", "add", "from", from, "table", table]);
    }
}

fn start_exit(t: &Topology, legs: Legs) -> u32 {
    let client_public = keypair(t, "client.key");
    std::fs::write(t.file("exit.pub"), keypair(t, "exit.key")).expect("write exit.pub");
    let (up, down) = exit_listeners(legs);
    // With direct legs the exit terminates TLS with the certificates the relays would use.
    let tls = |host: &str| match legs {
        Legs::Relays => String::new(),
        Legs::Direct => format!(
            "cert = \"{}\"\nkey = \"{}\"\n",
            t.file(&format!("{host}.crt")),
            t.file(&format!("{host}.key"))
        ),
    };
    let (up_tls, down_tls) = match legs {
        Legs::Relays => (String::new(), String::new()),
        Legs::Direct => (
            format!("\n[listen.up.tls]\n{}", tls("a.test")),
            format!("\n[listen.down.tls]\n{}", tls("b.test")),
        ),
    };
    let config = format!(
        r#"# Written by ht-bench.
private_key_file = "{key}"

[listen.up]
address = "{up}"
path = "/u"
{up_tls}
[listen.down]
address = "{down}"
path = "/d"
{down_tls}
[[clients]]
name = "bench"
public_key = "{client_public}"

[egress]
allow_cidrs = ["{inet_net}"]

[dns]
upstreams = ["{inet}:53"]

[admin]
address = "127.0.0.1:9090"

[runtime]
state_dir = "{state}"

[log]
# Also refreshes the open-streams gauge of /metrics that the memory figure reads.
stats_interval = "1s"
"#,
        key = t.file("exit.key"),
        state = t.file("exit-state"),
        inet_net = addr::INET_NET,
        inet = addr::INET,
    );
    std::fs::write(t.file("exit-node.toml"), config).expect("write exit config");
    let pid = t.exit.spawn_logged(
        &bin("exit-node"),
        &["run", "--config", &t.file("exit-node.toml")],
        &t.dir.path().join("exit-node.log"),
    );
    wait_listening(&t.relay_a, &up);
    wait_listening(&t.relay_b, &down);
    pid
}

fn start_client(t: &Topology, settings: &TunnelSettings) -> u32 {
    // The client's DNS is not used by the benchmark (every target is an address); its
    // resolver file stays in the topology's directory.
    let resolv = t.file("resolv.conf");
    std::fs::write(&resolv, "nameserver 192.0.2.53\n").expect("write resolv.conf");
    let exit_public = std::fs::read_to_string(t.file("exit.pub")).expect("read exit.pub");
    let (up, down) = match settings.legs {
        Legs::Relays => (
            format!("{}:443", addr::RELAY_A),
            format!("{}:443", addr::RELAY_B),
        ),
        Legs::Direct => exit_listeners(Legs::Direct),
    };
    let config = format!(
        r#"# Written by ht-bench.
private_key_file = "{key}"
exit_public_key = "{exit_public}"

[up]
url = "wss://a.test/u"
connect_address = "{up}"
ca_file = "{ca}"

[down]
url = "wss://b.test/d"
connect_address = "{down}"
ca_file = "{ca}"

[tun]
name = "ht0"
mtu = {mtu}

[dns]
manage_system_dns = false
resolv_conf = "{resolv}"

[session]
exit_has_ipv6 = false

[runtime]
control_socket = "{control}"
journal_dir = "{journal}"

[log]
stats_interval = "0s"
{router}"#,
        router = if settings.lan_host {
            extra::router_toml()
        } else {
            String::new()
        },
        key = t.file("client.key"),
        ca = t.file("ca.pem"),
        mtu = settings.mtu,
        control = t.file("control.sock"),
        journal = t.file("journal"),
    );
    std::fs::write(t.file("client.toml"), config).expect("write client config");
    t.client.spawn_logged(
        &bin("vpn-client"),
        &["up", "--config", &t.file("client.toml")],
        &t.dir.path().join("vpn-client.log"),
    )
}

/// CPU time (user + system, clock ticks) of a process, and of its busiest thread.
#[derive(Debug, Clone, Default)]
pub struct CpuSample {
    /// Ticks of the whole process.
    pub total: u64,
    /// Ticks per thread id.
    pub threads: Vec<(u32, u64)>,
}

fn stat_ticks(path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Read a process's CPU ticks (None if it is gone).
pub fn cpu_sample(pid: u32) -> Option<CpuSample> {
    let total = stat_ticks(&format!("/proc/{pid}/stat"))?;
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|tid| Some((tid, stat_ticks(&format!("/proc/{pid}/task/{tid}/stat"))?)))
        .collect();
    Some(CpuSample { total, threads })
}

/// CPU use between two samples over `secs`: (% of one core for the process, % of the
/// busiest thread). Ticks are 1/100 s (`getconf CLK_TCK` on Linux).
pub fn cpu_percent(before: &CpuSample, after: &CpuSample, secs: f64) -> (f64, f64) {
    let pct = |ticks: u64| ticks as f64 / secs; // 100 ticks/s: ticks/secs is already %.
    let busiest = after
        .threads
        .iter()
        .map(|(tid, t)| {
            let t0 = before
                .threads
                .iter()
                .find(|(b, _)| b == tid)
                .map_or(0, |(_, t)| *t);
            t.saturating_sub(t0)
        })
        .max()
        .unwrap_or(0);
    (pct(after.total.saturating_sub(before.total)), pct(busiest))
}

/// Busy and total jiffies of the whole machine (`/proc/stat`, all CPUs; idle and iowait
/// count as not busy).
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = f.iter().take(8).sum();
    let idle = f.get(3)? + f.get(4)?;
    Some((total - idle, total))
}

/// A process's resident set size in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The number after `"key":` in a JSON text, searching from the first occurrence of
/// `section` (an iperf3 report has a fixed shape; this avoids a JSON dependency).
pub fn json_number(text: &str, section: &str, key: &str) -> Option<f64> {
    let from = text.find(&format!("\"{section}\""))?;
    let rest = &text[from..];
    let at = rest.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = rest[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The `"error"` of an iperf3 JSON report, if any.
pub fn json_error(text: &str) -> Option<String> {
    let at = text.find("\"error\"")?;
    let rest = &text[at + 7..];
    let start = rest.find('"')? + 1;
    let end = rest[start..].find('"')? + start;
    Some(rest[start..end].to_owned())
}

/// Median, minimum and maximum of some runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// The median (mean of the middle two for an even count).
    pub median: f64,
    /// The smallest run.
    pub min: f64,
    /// The largest run.
    pub max: f64,
}

/// Summarise runs; None when there are none.
pub fn summarize(runs: &[f64]) -> Option<Summary> {
    let mut v: Vec<f64> = runs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

/// The `q` quantile (0..=1) of sorted samples (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

// ---- load tools (run inside a namespace as `ht-bench <tool>`) ----

/// Echo server: every connection gets back what it sends (TCP_NODELAY), until EOF.
pub async fn serve(listen: SocketAddr) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(listen).await?;
    loop {
        let (mut s, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n @ 1..) = s.read(&mut buf).await {
                if s.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
    }
}

fn exchange(s: &mut TcpStream, msg: &[u8; MESSAGE]) -> std::io::Result<()> {
    s.write_all(msg)?;
    let mut back = [0u8; MESSAGE];
    s.read_exact(&mut back)?;
    if back != *msg {
        return Err(std::io::Error::other("echo mismatch"));
    }
    Ok(())
}

fn connect(target: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

/// Latencies of `count` 64-byte request/responses on one connection, in µs, sorted
/// (after `count / 10` warm-up exchanges).
pub fn rr(target: SocketAddr, count: usize) -> std::io::Result<Vec<f64>> {
    let mut s = connect(target)?;
    let msg = [0x5a; MESSAGE];
    for _ in 0..count / 10 {
        exchange(&mut s, &msg)?;
    }
    let mut lat = Vec::with_capacity(count);
    for _ in 0..count {
        let t0 = Instant::now();
        exchange(&mut s, &msg)?;
        lat.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    Ok(lat)
}

fn one_crr(target: SocketAddr, msg: &[u8; MESSAGE]) -> std::io::Result<()> {
    let mut s = connect(target)?;
    exchange(&mut s, msg)
}

/// Connect + one 64-byte request/response + close, `count` times in sequence: the
/// latencies in µs (sorted) and the number of failures.
pub fn crr(target: SocketAddr, count: usize) -> (Vec<f64>, usize) {
    let msg = [0xa5; MESSAGE];
    let (mut lat, mut errors) = (Vec::with_capacity(count), 0);
    for _ in 0..count {
        let t0 = Instant::now();
        match one_crr(target, &msg) {
            Ok(()) => lat.push(t0.elapsed().as_secs_f64() * 1e6),
            Err(_) => errors += 1,
        }
    }
    lat.sort_by(f64::total_cmp);
    (lat, errors)
}

/// `parallel` threads doing connect + request/response + close for `secs`: completed
/// flows and failures.
pub fn flow_rate(target: SocketAddr, secs: f64, parallel: usize) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let workers: Vec<_> = (0..parallel)
        .map(|_| {
            std::thread::spawn(move || {
                let msg = [0x3c; MESSAGE];
                let (mut ok, mut err) = (0u64, 0u64);
                while Instant::now() < deadline {
                    match one_crr(target, &msg) {
                        Ok(()) => ok += 1,
                        Err(_) => err += 1,
                    }
                }
                (ok, err)
            })
        })
        .collect();
    workers
        .into_iter()
        .map(|w| w.join().unwrap_or((0, 1)))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// Open `flows` idle connections (with `threads` connecting in parallel), print
/// `ready opened=N failed=M`, and hold them until stdin reaches EOF.
pub fn hold(target: SocketAddr, flows: usize, threads: usize) {
    let per = flows.div_ceil(threads.max(1));
    let workers: Vec<_> = (0..threads.max(1))
        .map(|i| {
            let n = per.min(flows.saturating_sub(i * per));
            std::thread::spawn(move || {
                let mut held = Vec::with_capacity(n);
                let mut failed = 0usize;
                for _ in 0..n {
                    match connect(target) {
                        Ok(s) => held.push(s),
                        Err(e) => {
                            if failed == 0 {
                                eprintln!(
                                    "hold: thread {i}: connection {} failed: {e}",
                                    held.len()
                                );
                            }
                            failed += 1
                        }
                    }
                }
                (held, failed)
            })
        })
        .collect();
    let mut held = Vec::new();
    let mut failed = 0;
    for w in workers {
        let (h, f) = w.join().unwrap_or_default();
        held.extend(h);
        failed += f;
    }
    println!("ready opened={} failed={failed}", held.len());
    let _ = std::io::stdout().flush();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(held);
}

/// A running `ht-bench hold` inside a namespace.
#[derive(Debug)]
pub struct Holder {
    child: Child,
    /// Connections it opened.
    pub opened: u64,
    /// Connections that failed.
    pub failed: u64,
}

impl Holder {
    /// Start `ht-bench hold` in `ns` and wait until it reports its flows open.
    pub fn start(ns: &Netns, target: &str, flows: usize) -> anyhow::Result<Holder> {
        let mut child = ns
            .command(&bin("ht-bench"))
            .args(["hold", "--target", target, "--flows", &flows.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout).read_line(&mut line)?;
        let field = |k: &str| -> Option<u64> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
        };
        let (Some(opened), Some(failed)) = (field("opened"), field("failed")) else {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("ht-bench hold did not report: {line:?}");
        };
        Ok(Holder {
            child,
            opened,
            failed,
        })
    }

    /// Close the flows (EOF on its stdin) and wait for it.
    pub fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

// ---- the report ----

/// One figure measured on both paths.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Stable key, e.g. `tcp_down_1`.
    pub key: String,
    /// What it is, for the table.
    pub label: String,
    /// Unit, e.g. `Gbit/s`, `µs`.
    pub unit: String,
    /// Whether larger is better (throughput) or smaller (latency, loss, memory).
    pub higher_is_better: bool,
    /// The direct path's runs (empty when it does not apply).
    pub direct: Vec<f64>,
    /// The tunnel path's runs.
    pub tunnel: Vec<f64>,
    /// Failures seen while measuring (each printed, none hidden).
    pub errors: Vec<String>,
}

impl Figure {
    /// A new, empty figure.
    pub fn new(key: &str, label: &str, unit: &str, higher_is_better: bool) -> Figure {
        Figure {
            key: key.into(),
            label: label.into(),
            unit: unit.into(),
            higher_is_better,
            direct: Vec::new(),
            tunnel: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// tunnel median / direct median.
    pub fn ratio(&self) -> Option<f64> {
        let (d, t) = (summarize(&self.direct)?, summarize(&self.tunnel)?);
        (d.median != 0.0).then(|| t.median / d.median)
    }
}

fn cell(runs: &[f64]) -> String {
    match summarize(runs) {
        Some(s) if runs.len() > 1 => {
            format!("{} ({}–{})", num(s.median), num(s.min), num(s.max))
        }
        Some(s) => num(s.median),
        None => "-".into(),
    }
}

fn num(x: f64) -> String {
    match x.abs() {
        a if a >= 100.0 => format!("{x:.0}"),
        a if a >= 10.0 => format!("{x:.1}"),
        _ => format!("{x:.2}"),
    }
}

/// The table printed to stdout: median (min–max) per path and the ratio.
pub fn table(figures: &[Figure]) -> String {
    let mut out = format!(
        "{:<58} {:>8} {:>26} {:>26} {:>8}\n",
        "figure", "unit", "direct median (min–max)", "tunnel median (min–max)", "ratio"
    );
    for f in figures {
        let ratio = f.ratio().map_or("-".into(), |r| format!("{r:.2}×"));
        out += &format!(
            "{:<58} {:>8} {:>26} {:>26} {:>8}\n",
            f.label,
            f.unit,
            cell(&f.direct),
            cell(&f.tunnel),
            ratio
        );
        for e in &f.errors {
            out += &format!("    FAILED: {e}\n");
        }
    }
    out
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out += "\\\"",
            '\\' => out += "\\\\",
            c if (c as u32) < 0x20 => out += &format!("\\u{:04x}", c as u32),
            c => out.push(c),
        }
    }
    out + "\""
}

fn json_runs(runs: &[f64]) -> String {
    let list: Vec<String> = runs
        .iter()
        .map(|x| {
            if x.is_finite() {
                format!("{x}")
            } else {
                "null".into()
            }
        })
        .collect();
    let summary = summarize(runs).map_or("null".into(), |s| {
        format!(
            "{{\"median\":{},\"min\":{},\"max\":{}}}",
            s.median, s.min, s.max
        )
    });
    format!("{{\"runs\":[{}],\"summary\":{summary}}}", list.join(","))
}

/// The JSON report: `meta` (already-encoded JSON object members) and every figure.
pub fn json(meta: &[(&str, String)], figures: &[Figure]) -> String {
    let meta: Vec<String> = meta
        .iter()
        .map(|(k, v)| format!("{}:{v}", json_str(k)))
        .collect();
    let figs: Vec<String> = figures
        .iter()
        .map(|f| {
            let errors: Vec<String> = f.errors.iter().map(|e| json_str(e)).collect();
            format!(
                "{{\"key\":{},\"label\":{},\"unit\":{},\"higher_is_better\":{},\
                 \"direct\":{},\"tunnel\":{},\"ratio\":{},\"errors\":[{}]}}",
                json_str(&f.key),
                json_str(&f.label),
                json_str(&f.unit),
                f.higher_is_better,
                json_runs(&f.direct),
                json_runs(&f.tunnel),
                f.ratio().map_or("null".into(), |r| format!("{r}")),
                errors.join(",")
            )
        })
        .collect();
    format!(
        "{{{},\"figures\":[\n{}\n]}}\n",
        meta.join(","),
        figs.join(",\n")
    )
}

/// Pass the string through `json_str` (for `meta` values).
pub fn json_string(s: &str) -> String {
    json_str(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_and_quantiles() {
        let s = summarize(&[3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        assert!(summarize(&[]).is_none());
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
    }

    #[test]
    fn iperf_fields() {
        let text = r#"{"end":{"sum_sent":{"bits_per_second":2e9},
            "sum_received":{"bits_per_second":1.5E+9,"lost_percent": 0.25}}}"#;
        assert_eq!(
            json_number(text, "sum_received", "bits_per_second"),
            Some(1.5e9)
        );
        assert_eq!(
            json_number(text, "sum_received", "lost_percent"),
            Some(0.25)
        );
        assert_eq!(
            json_error(r#"{"error": "unable to connect"}"#).unwrap(),
            "unable to connect"
        );
    }
}
