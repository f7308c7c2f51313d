//! Other tools on the benchmark's direct-path namespaces: the optional comparison rows of
//! issue 7 (`ht-bench --peers`).
//!
//! Each peer gets its own copy of the direct path ([`Direct::named`]: client ─ lan ─ relay ─
//! exit ─ inet, kernel forwarding, the same servers in inet) and carries the client's
//! traffic to inet's prefix ([`addr::INET_NET`]) instead of the kernel:
//!
//! ```text
//! tun2proxy:  client [apps → TUN → tun2proxy-bin] ─ lan ─ relay ─ exit [microsocks, SOCKS5] ─ inet
//! boringtun:  client [apps → wg TUN → boringtun-cli] ─ lan ─ relay ─ exit [boringtun-cli → wg TUN] ─ inet
//! ```
//!
//! Neither encrypts twice as we do (tun2proxy not at all), and boringtun is a layer-3 tunnel
//! (the apps' TCP runs end to end). The tools are not dependencies: they are found on the
//! `PATH` (see [`Peer::install`]) and only run when asked for. Like everything in this crate,
//! they talk only to namespaces the harness created.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench::{Direct, SERVE_PORT};
use crate::topology::{addr, bin};

/// tun2proxy's `--tcp-timeout` in seconds. It keeps the SOCKS connection of a flow the app
/// has closed until that timeout (600 s by default), so the connection tests' flows pile
/// up until microsocks runs out of descriptors and every later flow fails; 15 s reclaims
/// them between runs and is longer than iperf3's idle control connection.
pub const TUN2PROXY_TCP_TIMEOUT: &str = "15";
/// The port of the SOCKS5 server (microsocks) in the exit namespace.
pub const SOCKS_PORT: u16 = 1080;
/// boringtun's UDP port at the exit.
pub const WG_PORT: u16 = 51820;
/// tun2proxy's TUN MTU: the issue's measurement used 9000 (its TCP stack sends segments of
/// MTU − 40, and advertises that MSS with `--tcp-mss`).
pub const TUN2PROXY_MTU: u32 = 9000;

/// A tool measured beside the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// tun2proxy (Rust, the `ipstack` TCP/IP stack) to a SOCKS5 server (microsocks) at the
    /// exit; no encryption.
    Tun2proxy,
    /// boringtun (userspace WireGuard) at both ends, one thread each.
    Boringtun,
}

impl Peer {
    /// Every peer the harness knows.
    pub const ALL: [Peer; 2] = [Peer::Tun2proxy, Peer::Boringtun];

    /// The name used in `--peers`, row tags and JSON keys.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Tun2proxy => "tun2proxy",
            Peer::Boringtun => "boringtun",
        }
    }

    /// The peer called `name`.
    pub fn from_name(name: &str) -> Option<Peer> {
        Peer::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The programs it needs on the `PATH`.
    pub fn programs(self) -> &'static [&'static str] {
        match self {
            Peer::Tun2proxy => &["tun2proxy-bin", "microsocks"],
            Peer::Boringtun => &["boringtun-cli", "wg"],
        }
    }

    /// How to install it on Debian.
    pub fn install(self) -> &'static str {
        match self {
            Peer::Tun2proxy => "cargo install --locked tun2proxy && apt-get install -y microsocks",
            Peer::Boringtun => {
                "cargo install --locked boringtun-cli && apt-get install -y wireguard-tools"
            }
        }
    }

    /// The programs missing from the `PATH`.
    pub fn missing(self) -> Vec<&'static str> {
        self.programs()
            .iter()
            .copied()
            .filter(|p| !on_path(p))
            .collect()
    }

    /// An error naming the missing programs and how to install them, if any is missing.
    pub fn ensure_installed(self) -> anyhow::Result<()> {
        let missing = self.missing();
        anyhow::ensure!(
            missing.is_empty(),
            "{} needs {} on the PATH; install with `{}`",
            self.name(),
            missing.join(" and "),
            self.install()
        );
        Ok(())
    }

    /// How it is set up, for the report.
    pub fn setup(self) -> String {
        match self {
            Peer::Tun2proxy => format!(
                "tun2proxy-bin --mtu {m} --tcp-mss {mss} --max-sessions 65535 --tcp-timeout {t} \
                 to microsocks at the exit",
                m = TUN2PROXY_MTU,
                mss = TUN2PROXY_MTU - 40,
                t = TUN2PROXY_TCP_TIMEOUT
            ),
            Peer::Boringtun => {
                "boringtun-cli --threads 1 at the client and the exit, wg MTU as created".into()
            }
        }
    }

    /// The first line of its `--version`.
    pub fn version(self) -> String {
        let program = self.programs()[0];
        Command::new(program)
            .arg("--version")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_default()
    }

    /// The suffix of its figures' keys, e.g. `_tun2proxy`.
    pub fn key_suffix(self) -> String {
        format!("_{}", self.name())
    }

    /// The tag of its rows, e.g. ` [tun2proxy]`.
    pub fn label_suffix(self) -> String {
        format!(" [{}]", self.name())
    }
}

/// Whether `program` is on the `PATH`.
pub fn on_path(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A peer running on its own copy of the direct path. The processes stop with the
/// namespaces.
#[derive(Debug)]
pub struct PeerPath {
    /// Which tool.
    pub peer: Peer,
    /// Its namespaces (the apps run in `net.client`).
    pub net: Direct,
    procs: Vec<(String, u32)>,
    /// The client's interface into the tool.
    tun: String,
    /// WireGuard user-API sockets to remove afterwards (their directory is not per namespace).
    sockets: Vec<std::path::PathBuf>,
}

impl PeerPath {
    /// Build the namespaces, start the tool, route inet's prefix into it and wait until it
    /// carries a request/response to inet's echo server.
    pub fn new(peer: Peer) -> anyhow::Result<PeerPath> {
        peer.ensure_installed()?;
        let mut p = PeerPath {
            peer,
            net: Direct::named(match peer {
                Peer::Tun2proxy => "t2p",
                Peer::Boringtun => "wg",
            }),
            procs: Vec::new(),
            tun: String::new(),
            sockets: Vec::new(),
        };
        match peer {
            Peer::Tun2proxy => p.start_tun2proxy()?,
            Peer::Boringtun => p.start_boringtun()?,
        }
        // The client's default route reaches inet too (kernel forwarding): make sure the
        // figures are the tool's.
        let route = p.net.client.ip(&["route", "get", addr::INET]);
        let route = String::from_utf8_lossy(&route.stdout).into_owned();
        anyhow::ensure!(
            route.contains(&format!("dev {} ", p.tun)),
            "{}: inet is not routed into {}: {}",
            peer.name(),
            p.tun,
            route.trim()
        );
        p.wait_carries(Duration::from_secs(20))?;
        Ok(p)
    }

    /// The processes whose CPU is reported.
    pub fn processes(&self) -> Vec<(String, u32)> {
        self.procs.clone()
    }

    /// The client's interface into the tool, which carries inet's prefix.
    pub fn tun(&self) -> &str {
        &self.tun
    }

    /// Packets the client has sent into the tool's interface.
    pub fn tun_tx_packets(&self) -> u64 {
        let stat = format!("/sys/class/net/{}/statistics/tx_packets", self.tun);
        let out = self.net.client.try_exec("cat", &[&stat]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    fn log(&self, name: &str) -> std::path::PathBuf {
        self.net.dir.path().join(format!("{name}.log"))
    }

    fn start_tun2proxy(&mut self) -> anyhow::Result<()> {
        let (client, exit) = (&self.net.client, &self.net.exit);
        let port = SOCKS_PORT.to_string();
        let socks = exit.spawn_logged(
            "microsocks",
            &["-i", addr::EXIT_UP, "-p", &port],
            &self.log("microsocks"),
        );
        crate::topology::wait_listening(exit, &format!("{}:{SOCKS_PORT}", addr::EXIT_UP));
        let proxy = format!("socks5://{}:{SOCKS_PORT}", addr::EXIT_UP);
        let mtu = TUN2PROXY_MTU.to_string();
        let mss = (TUN2PROXY_MTU - 40).to_string();
        let tun = "t2p0";
        self.tun = tun.into();
        let t2p = client.spawn_logged(
            "tun2proxy-bin",
            &[
                "--tun",
                tun,
                "--proxy",
                &proxy,
                "--mtu",
                &mtu,
                "--tcp-mss",
                &mss,
                "--max-sessions",
                "65535",
                "--tcp-timeout",
                TUN2PROXY_TCP_TIMEOUT,
                "-v",
                "warn",
            ],
            &self.log("tun2proxy"),
        );
        self.procs = vec![("tun2proxy".into(), t2p), ("microsocks".into(), socks)];
        wait_link(client, tun)?;
        // Without `--setup` tun2proxy leaves the device down and routes alone.
        client.ip(&["link", "set", tun, "up", "mtu", &mtu]);
        client.ip(&["route", "add", addr::INET_NET, "dev", tun]);
        Ok(())
    }

    fn start_boringtun(&mut self) -> anyhow::Result<()> {
        let (client, exit) = (&self.net.client, &self.net.exit);
        // The user-API sockets live in /var/run/wireguard whatever the namespace: names
        // unique to this process.
        let id = std::process::id();
        let (cif, xif) = (format!("htwgc{id}"), format!("htwgx{id}"));
        let mut pids = Vec::new();
        for (ns, ifname, side) in [(client, &cif, "client"), (exit, &xif, "exit")] {
            let pid = ns.spawn_logged(
                "boringtun-cli",
                &[
                    ifname,
                    "--foreground",
                    "--threads",
                    "1",
                    "--disable-drop-privileges",
                ],
                &self.log(&format!("boringtun-{side}")),
            );
            pids.push((format!("boringtun-{side}"), pid));
            let sock = std::path::PathBuf::from(format!("/var/run/wireguard/{ifname}.sock"));
            wait_for(Duration::from_secs(5), || sock.exists())
                .map_err(|_| anyhow::anyhow!("boringtun made no {}", sock.display()))?;
            self.sockets.push(sock);
        }
        self.procs = pids;
        self.tun.clone_from(&cif);
        let dir = self.net.dir.path();
        let (ckey, xkey) = (dir.join("client.key"), dir.join("exit.key"));
        let (cpub, xpub) = (wg_keypair(&ckey)?, wg_keypair(&xkey)?);
        let endpoint = format!("{}:{WG_PORT}", addr::EXIT_UP);
        let port = WG_PORT.to_string();
        let ckey = ckey.to_string_lossy().into_owned();
        let xkey = xkey.to_string_lossy().into_owned();
        #[rustfmt::skip]
        client.exec("wg", &["set", &cif, "private-key", &ckey, "peer", &xpub,
            "endpoint", &endpoint, "allowed-ips", "0.0.0.0/0"]);
        #[rustfmt::skip]
        exit.exec("wg", &["set", &xif, "private-key", &xkey, "listen-port", &port,
            "peer", &cpub, "allowed-ips", "10.99.0.1/32"]);
        client.ip(&["addr", "add", "10.99.0.1/24", "dev", &cif]);
        client.ip(&["link", "set", &cif, "up"]);
        client.ip(&["route", "add", addr::INET_NET, "dev", &cif]);
        // inet answers 10.99.0.1 through its default route, the exit.
        exit.ip(&["addr", "add", "10.99.0.2/24", "dev", &xif]);
        exit.ip(&["link", "set", &xif, "up"]);
        Ok(())
    }

    fn wait_carries(&self, timeout: Duration) -> anyhow::Result<()> {
        let target = format!("{}:{SERVE_PORT}", addr::INET);
        let mut last = String::new();
        let carried = wait_for(timeout, || {
            let out = self.net.client.try_exec(
                "timeout",
                &[
                    "5",
                    &bin("ht-bench"),
                    "rr",
                    "--target",
                    &target,
                    "--count",
                    "10",
                ],
            );
            last = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            out.status.success()
        });
        carried.map_err(|_| {
            anyhow::anyhow!(
                "{} did not carry a request to {target} within {timeout:?}: {last}; logs in {}",
                self.peer.name(),
                self.net.dir.path().display()
            )
        })
    }
}

impl Drop for PeerPath {
    fn drop(&mut self) {
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
    }
}

fn wait_for(timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() > deadline {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn wait_link(ns: &crate::netns::Netns, ifname: &str) -> anyhow::Result<()> {
    wait_for(Duration::from_secs(5), || {
        ns.try_exec("ip", &["link", "show", ifname])
            .status
            .success()
    })
    .map_err(|_| anyhow::anyhow!("no interface {ifname} in {}", ns.name()))
}

/// `wg genkey` into `file`; the public key.
fn wg_keypair(file: &std::path::Path) -> anyhow::Result<String> {
    let key = Command::new("wg").arg("genkey").output()?;
    anyhow::ensure!(key.status.success(), "wg genkey failed");
    std::fs::write(file, &key.stdout)?;
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(&key.stdout)?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "wg pubkey failed");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_tag_rows() {
        for p in Peer::ALL {
            assert_eq!(Peer::from_name(p.name()), Some(p));
            assert!(p.key_suffix().starts_with('_'));
            assert!(p.label_suffix().contains(p.name()));
            assert!(!p.programs().is_empty());
        }
        assert_eq!(Peer::from_name("wireguard"), None);
    }
}
