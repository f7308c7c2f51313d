//! More clients for a [`Topology`]: each extra client has its own namespace (a second LAN
//! port of the `lan` router, `10.10.<n>.2/24`), its own `vpn-client`, TUN, key pair,
//! control socket, journal and resolver file, and shares the relays and the exit with the
//! topology's own client. Also the process gauges the abuse and soak tests watch.
//!
//! ```text
//! client  10.10.0.2 ─┐
//! client2 10.10.2.2 ─┼─ lan router ─ relay-a / relay-b ─ exit ─ inet
//! client3 10.10.3.2 ─┘
//! ```
//!
//! Make every extra client (which generates its key) before [`Topology::start_exit`], and
//! append [`ExtraClient::exit_clients_toml`] with [`Topology::exit_config_extra`] so that
//! the exit knows the key.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::netns::{Netns, link};
use crate::topology::{Topology, addr, bin, port, probe};

/// A further client namespace with its own `vpn-client`.
#[derive(Debug)]
pub struct ExtraClient {
    /// The namespace: the client's apps run here.
    pub ns: Netns,
    /// Its outer address (`10.10.<n>.2`).
    pub address: String,
    /// Its public key (base64), for the exit's `[[clients]]`.
    pub public_key: String,
    /// `client<n>`: names its key, config and log files in the topology's directory.
    tag: String,
    /// The topology's directory (configs, keys, logs).
    dir: PathBuf,
    netns_etc: PathBuf,
    pid: Mutex<Option<u32>>,
}

impl ExtraClient {
    /// Create namespace `client<n>` (n in 2..=254) on its own port of the `lan` router
    /// and generate its key pair. Does not start anything.
    pub fn new(t: &Topology, n: u8) -> ExtraClient {
        assert!((2..=254).contains(&n), "extra client number {n}");
        let tag = format!("client{n}");
        let ns = Netns::new(&tag);
        let gw = format!("10.10.{n}.1");
        let address = format!("10.10.{n}.2");
        link(
            &t.lan,
            &format!("eth-c{n}"),
            &[&format!("{gw}/24")],
            &ns,
            "eth0",
            &[&format!("{address}/24")],
        );
        ns.ip(&["route", "add", "default", "via", &gw]);
        let public_key = t.keypair("exit-node", &format!("{tag}.key"));
        let dir = PathBuf::from(t.file("."));
        ExtraClient {
            netns_etc: PathBuf::from("/etc/netns").join(ns.name()),
            ns,
            address,
            public_key,
            tag,
            dir,
            pid: Mutex::new(None),
        }
    }

    /// The `[[clients]]` entry the exit needs for this client.
    pub fn exit_clients_toml(&self) -> String {
        format!(
            "\n[[clients]]\nname = \"e2e-{}\"\npublic_key = \"{}\"\n",
            self.tag, self.public_key
        )
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// The name of this client's log in the topology's directory (printed on failure with
    /// the topology's other logs).
    pub fn log_name(&self) -> String {
        format!("vpn-{}.log", self.tag)
    }

    /// Write this client's config (the same settings as the topology's client) and start
    /// `vpn-client up`; does not wait for the tunnel.
    pub fn start(&self, exit_public: &str) {
        std::fs::create_dir_all(&self.netns_etc).expect("create /etc/netns/<client>");
        let resolv = self.netns_etc.join("resolv.conf");
        std::fs::write(&resolv, "# before vpn-client up\nnameserver 192.0.2.53\n")
            .expect("write resolv.conf");
        let tag = &self.tag;
        let config = crate::topology::client_config(&crate::topology::ClientFiles {
            key: &self.file(&format!("{tag}.key")),
            exit_public,
            ca: &self.file("ca.pem"),
            resolv: &resolv.display().to_string(),
            control: &self.file(&format!("{tag}-control.sock")),
            journal: &self.file(&format!("{tag}-journal")),
            exit_has_ipv6: false,
            offload: true,
            tun_mtu: None,
            extra: "",
        });
        let config_path = self.file(&format!("{tag}.toml"));
        std::fs::write(&config_path, config).expect("write client config");
        let pid = self.ns.spawn_logged(
            &bin("vpn-client"),
            &["up", "--config", &config_path],
            &self.dir.join(self.log_name()),
        );
        *self.pid.lock().expect("pid lock") = Some(pid);
    }

    /// Wait until an HTTP GET from this client to inet succeeds (only possible through the
    /// tunnel); panics after `timeout`.
    pub fn wait_tunnel(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let target = format!("{}:{}", addr::INET, port::HTTP);
        loop {
            let out = probe(&self.ns, &["get", &target, "/"]);
            if out.ok && out.stdout.contains("status=200") {
                return;
            }
            if let Some(pid) = self.pid() {
                assert!(self.ns.running(pid), "vpn-client {} exited", self.tag);
            }
            assert!(
                Instant::now() < deadline,
                "{}: the tunnel did not carry an HTTP GET within {timeout:?}: {}",
                self.tag,
                out.stderr
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The vpn-client process, while running.
    pub fn pid(&self) -> Option<u32> {
        *self.pid.lock().expect("pid lock")
    }

    /// Send `signal` to vpn-client and wait up to 3 s for it to exit; its exit status.
    pub fn signal(&self, signal: &str) -> Option<std::process::ExitStatus> {
        let pid = self.pid.lock().expect("pid lock").take()?;
        self.ns.stop(pid, signal, Duration::from_secs(3))
    }
}

impl Drop for ExtraClient {
    fn drop(&mut self) {
        let _ = self.signal("TERM");
        let _ = std::fs::remove_dir_all(&self.netns_etc);
    }
}

/// Open descriptors and resident memory of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcUsage {
    /// Entries in `/proc/<pid>/fd`.
    pub fds: usize,
    /// `VmRSS` of `/proc/<pid>/status`, KiB.
    pub rss_kib: u64,
}

/// The descriptors and RSS of `pid` now; panics if the process is gone.
pub fn proc_usage(pid: u32) -> ProcUsage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e} (did the process exit?)"));
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .count();
    ProcUsage { fds, rss_kib }
}

/// The value of one unlabelled gauge or counter line of a `/metrics` text, e.g.
/// `half_tunnel_exit_sessions`.
pub fn metric(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}
