//! The end-to-end topology: six namespaces, every server the tests need, the exit node and
//! the client, wired as in TESTPLAN.md.
//!
//! ```text
//!                      ┌ relay-a (10.20.1.2:443, TLS "a.test") ─ exit 10.30.1.2:8080 /u ┐
//! client ─ lan router ─┤                                                                 ├─ exit ─ inet
//! 10.10.0.2  10.10.0.1 └ relay-b (10.20.2.2:443, TLS "b.test") ─ exit 10.30.2.2:8081 /d ┘ 10.40.0.1  10.40.0.2
//! ```
//!
//! * `client` has one outer interface, `eth0` (also IPv6 `fd10::2`), whose default routes
//!   are the `lan` router.
//!   The router knows only the relays' networks, so without the tunnel the client reaches
//!   nothing but the relays: anything that gets further went through the tunnel.
//! * `relay-a`/`relay-b` run `ht-relay` with certificates of a CA the topology makes (rcgen);
//!   each forwards to one of the exit's plain (TLS-less) leg listeners.
//! * `exit` runs `exit-node` (allowed egress: only [`addr::INET_NET`]; its resolver is the
//!   inet DNS server) and a TCP/UDP echo on port 7 of all its own addresses.
//! * `inet` runs `ht-inet`: HTTP on 80, DNS on 53 (zone `inet.test`), echo on 7, on
//!   [`addr::INET`] (allowed), on [`addr::PRIVATE`] and on [`addr::METADATA`] (both
//!   reachable from the exit but denied by its default policy).
//!
//! Nothing leaves these namespaces; dropping the [`Topology`] stops every process and
//! deletes every namespace, its temporary directory and the client's per-namespace
//! resolver file, also when the test panics (then the processes' logs are printed).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::netns::{Netns, link};

/// Addresses of the topology.
pub mod addr {
    /// The client's outer address.
    pub const CLIENT: &str = "10.10.0.2";
    /// The LAN router, the client's default gateway.
    pub const LAN_GW: &str = "10.10.0.1";
    /// Relay A (Domain A, the up leg), as the client sees it.
    pub const RELAY_A: &str = "10.20.1.2";
    /// Relay B (Domain B, the down leg), as the client sees it.
    pub const RELAY_B: &str = "10.20.2.2";
    /// The exit's up-leg listener address (behind relay A).
    pub const EXIT_UP: &str = "10.30.1.2";
    /// The exit's down-leg listener address (behind relay B).
    pub const EXIT_DOWN: &str = "10.30.2.2";
    /// The exit's address towards the internet.
    pub const EXIT_INET: &str = "10.40.0.1";
    /// The internet host (HTTP, DNS, echo): the one network the exit may dial.
    pub const INET: &str = "10.40.0.2";
    /// The network the exit's egress policy explicitly allows.
    pub const INET_NET: &str = "10.40.0.0/24";
    /// A private service the exit can route to but must refuse (not allowed).
    pub const PRIVATE: &str = "10.41.0.2";
    /// A fake cloud metadata service, also on the inet host.
    pub const METADATA: &str = "169.254.169.254";
    /// The client's virtual resolver (the client config default).
    pub const VIRTUAL_RESOLVER: &str = "172.19.0.2";
    /// The inet host's IPv6 address, once [`crate::extra::inet_ipv6`] gave it one.
    pub const INET6: &str = "fd40::2";
    /// The exit's IPv6 address towards inet, once [`crate::extra::inet_ipv6`] gave it one
    /// (the same as [`crate::extra::EXIT_INET6`]).
    pub const EXIT_INET6: &str = "fd40::1";
    /// An address inside [`INET_NET`] that no host has until a test adds it to the exit's
    /// inet interface while the exit runs (`own_addresses.rs`).
    pub const EXIT_LATER: &str = "10.40.0.77";
}

/// Names in the inet DNS zone, and what they resolve to.
pub const ZONE_NAMES: &[(&str, &str)] = &[
    ("www", addr::INET),
    ("private", addr::PRIVATE),
    ("meta", addr::METADATA),
    ("own", addr::EXIT_UP),
    // AAAA only; the address exists once `extra::inet_ipv6` added it.
    ("www6", addr::INET6),
    // The exit itself, inside the allowed network (issue 20 §1: never dialled).
    ("exit", addr::EXIT_INET),
    ("exit6", addr::EXIT_INET6),
    ("later", addr::EXIT_LATER),
];

/// Ports used inside the namespaces (every namespace has its own port space).
pub mod port {
    /// Relays' TLS listener.
    pub const RELAY: u16 = 443;
    /// Relays' control port (on their loopback).
    pub const CONTROL: u16 = 9000;
    /// The exit's up-leg listener.
    pub const EXIT_UP: u16 = 8080;
    /// The exit's down-leg listener.
    pub const EXIT_DOWN: u16 = 8081;
    /// The exit's admin listener (on its loopback).
    pub const ADMIN: u16 = 9090;
    /// HTTP on inet.
    pub const HTTP: u16 = 80;
    /// TCP and UDP echo on inet and on the exit.
    pub const ECHO: u16 = 7;
}

/// One of the two legs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    /// Client → exit, through relay A.
    Up,
    /// Exit → client, through relay B.
    Down,
}

/// What a relay counted (its `stats` control command).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// WebSocket connections relayed so far.
    pub connections: u64,
    /// Binary message bytes client → exit.
    pub c2s_bytes: u64,
    /// Binary message bytes exit → client.
    pub s2c_bytes: u64,
}

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty directory under the system temp dir.
    pub fn new(tag: &str) -> TempDir {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ht-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where the workspace's binaries are: `HT_BIN_DIR`, else the directory of the running
/// executable (`target/<profile>/` for binaries, its parent for test executables).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HT_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe has a directory");
    if dir.ends_with("deps") {
        dir.parent().expect("deps has a parent").to_owned()
    } else {
        dir.to_owned()
    }
}

/// The path of workspace binary `name`; panics with the command that builds it.
pub fn bin(name: &str) -> String {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build -p exit-node -p vpn-client -p e2e --bins`)",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

/// The running topology. Fields drop in order: the client first, the inet host last.
#[derive(Debug)]
pub struct Topology {
    /// Where vpn-client runs and creates its TUN; the apps run here.
    pub client: Netns,
    /// The client's LAN router (the neighbour, also an attacker).
    pub lan: Netns,
    /// Relay for the up leg (Domain A).
    pub relay_a: Netns,
    /// Relay for the down leg (Domain B).
    pub relay_b: Netns,
    /// The exit node.
    pub exit: Netns,
    /// The internet.
    pub inet: Netns,
    /// Configs, keys, certificates and logs.
    pub dir: TempDir,
    client_pid: std::sync::Mutex<Option<u32>>,
    exit_pid: Option<u32>,
    /// Extra TOML appended to the client's config (e.g. `[kill_switch]`).
    client_extra: String,
    /// Extra TOML appended to the exit's config (e.g. `[limits]`, more `[[clients]]`).
    exit_extra: String,
    /// Extra lines of the exit config's `[egress]` table.
    exit_egress_extra: String,
    /// The client config's `session.exit_has_ipv6` (false: the exit namespace has none).
    exit_has_ipv6: bool,
    /// The client config's `tun.offload`.
    client_offload: bool,
    /// The client config's `tun.mtu` (`None`: the default).
    client_tun_mtu: Option<u32>,
    /// `/etc/netns/<client>/`: `ip netns exec` binds its `resolv.conf` over the client's.
    netns_etc: PathBuf,
    /// More CIDRs for the exit's `egress.allow_cidrs` (see [`Topology::exit_allow`]).
    exit_allow: Vec<String>,
    /// The exit config's `admin.address` (see [`Topology::exit_admin_address`]).
    exit_admin: String,
}

impl Topology {
    /// Create the namespaces, links and routes; start the inet servers, the exit's echo and
    /// both relays, and wait until each listens.
    pub fn new() -> Topology {
        let client = Netns::new("client");
        let t = Topology {
            netns_etc: Path::new("/etc/netns").join(client.name()),
            client,
            lan: Netns::new("lan"),
            relay_a: Netns::new("relay-a"),
            relay_b: Netns::new("relay-b"),
            exit: Netns::new("exit"),
            inet: Netns::new("inet"),
            dir: TempDir::new("e2e"),
            client_pid: std::sync::Mutex::new(None),
            exit_pid: None,
            client_extra: String::new(),
            exit_extra: String::new(),
            exit_egress_extra: String::new(),
            exit_has_ipv6: false,
            client_offload: true,
            client_tun_mtu: None,
            exit_allow: Vec::new(),
            exit_admin: format!("127.0.0.1:{}", port::ADMIN),
        };
        t.wire();
        t.write_certificates();
        t.start_inet();
        t.start_exit_echo();
        t.start_relays();
        t
    }

    fn wire(&self) {
        let (c, lan, a, b, x, i) = (
            &self.client,
            &self.lan,
            &self.relay_a,
            &self.relay_b,
            &self.exit,
            &self.inet,
        );
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
            a,
            "eth0",
            &["10.20.1.2/24"],
        );
        link(
            lan,
            "eth-b",
            &["10.20.2.1/24"],
            b,
            "eth0",
            &["10.20.2.2/24"],
        );
        link(a, "eth1", &["10.30.1.1/24"], x, "eth-a", &["10.30.1.2/24"]);
        link(b, "eth1", &["10.30.2.1/24"], x, "eth-b", &["10.30.2.2/24"]);
        link(x, "eth-i", &["10.40.0.1/24"], i, "eth0", &["10.40.0.2/24"]);
        lan.forward();
        c.ip(&["route", "add", "default", "via", addr::LAN_GW]);
        // IPv6 on the LAN too, so an IPv6 leak would have a way out (the exit has none).
        c.ip(&[
            "-6", "route", "add", "default", "via", "fd10::1", "dev", "eth0", "onlink",
        ]);
        a.ip(&["route", "add", "default", "via", "10.20.1.1"]);
        b.ip(&["route", "add", "default", "via", "10.20.2.1"]);
        x.ip(&["route", "add", "default", "via", addr::INET]);
        i.ip(&["route", "add", "default", "via", addr::EXIT_INET]);
        for extra in [addr::PRIVATE, addr::METADATA] {
            i.ip(&["addr", "add", &format!("{extra}/32"), "dev", "lo"]);
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The path of a file in the topology's directory, as a string.
    pub fn file(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }

    fn write_certificates(&self) {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Half-Tunnel e2e test CA");
        let ca = params.self_signed(&ca_key).expect("self-sign CA");
        std::fs::write(self.path("ca.pem"), ca.pem()).expect("write CA");
        let issuer = rcgen::Issuer::new(params, ca_key);
        for host in ["a.test", "b.test"] {
            let key = rcgen::KeyPair::generate().expect("leaf key");
            let leaf = rcgen::CertificateParams::new(vec![host.into()])
                .expect("leaf params")
                .signed_by(&key, &issuer)
                .expect("sign leaf");
            std::fs::write(self.path(&format!("{host}.crt")), leaf.pem()).expect("write cert");
            std::fs::write(self.path(&format!("{host}.key")), key.serialize_pem())
                .expect("write key");
        }
    }

    fn start_inet(&self) {
        let mut args = vec![
            "--http".to_owned(),
            format!("0.0.0.0:{}", port::HTTP),
            "--dns".into(),
            "0.0.0.0:53".into(),
        ];
        for ip in [addr::INET, addr::PRIVATE, addr::METADATA] {
            args.extend(["--echo".into(), format!("{ip}:{}", port::ECHO)]);
        }
        for (label, ip) in ZONE_NAMES {
            args.extend(["--name".into(), format!("{label}={ip}")]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.inet
            .spawn_logged(&bin("ht-inet"), &args, &self.path("inet.log"));
        wait_listening(&self.inet, &format!("{}:{}", addr::INET, port::HTTP));
    }

    fn start_exit_echo(&self) {
        let echo = format!("0.0.0.0:{}", port::ECHO);
        let probe = bin("ht-probe");
        let log = self.path("exit-echo.log");
        self.exit.spawn_logged(&probe, &["tcp-echo", &echo], &log);
        self.exit.spawn_logged(&probe, &["udp-echo", &echo], &log);
        wait_listening(&self.exit, &format!("{}:{}", addr::EXIT_UP, port::ECHO));
    }

    fn start_relays(&self) {
        for (ns, host, upstream) in [
            (
                &self.relay_a,
                "a.test",
                format!("{}:{}", addr::EXIT_UP, port::EXIT_UP),
            ),
            (
                &self.relay_b,
                "b.test",
                format!("{}:{}", addr::EXIT_DOWN, port::EXIT_DOWN),
            ),
        ] {
            ns.spawn_logged(
                &bin("ht-relay"),
                &[
                    "--listen",
                    &format!("0.0.0.0:{}", port::RELAY),
                    "--cert",
                    &self.file(&format!("{host}.crt")),
                    "--key",
                    &self.file(&format!("{host}.key")),
                    "--upstream",
                    &upstream,
                    "--control",
                    &format!("127.0.0.1:{}", port::CONTROL),
                ],
                &self.path(&format!("relay-{host}.log")),
            );
        }
        for ns in [&self.relay_a, &self.relay_b] {
            wait_listening(ns, &format!("127.0.0.1:{}", port::CONTROL));
            wait_listening(ns, &format!("127.0.0.1:{}", port::RELAY));
        }
    }

    /// The relay namespace of a leg.
    pub fn relay_ns(&self, leg: Leg) -> &Netns {
        match leg {
            Leg::Up => &self.relay_a,
            Leg::Down => &self.relay_b,
        }
    }

    /// Send a control command (`kill`, `close`, `stall on`, …) to a leg's relay; its reply.
    pub fn relay(&self, leg: Leg, command: &str) -> String {
        let out = probe(
            self.relay_ns(leg),
            &[
                "tcp",
                &format!("127.0.0.1:{}", port::CONTROL),
                &format!("{command}\n"),
            ],
        );
        assert!(out.ok, "relay control {command:?}: {}", out.stderr);
        out.stdout.trim().to_owned()
    }

    /// A leg's relay counters.
    pub fn relay_stats(&self, leg: Leg) -> RelayStats {
        let line = self.relay(leg, "stats");
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in relay stats {line:?}"))
        };
        RelayStats {
            connections: field("connections"),
            c2s_bytes: field("c2s_bytes"),
            s2c_bytes: field("s2c_bytes"),
        }
    }

    /// Generate a key pair with `program genkey`/`pubkey`; the private key is written to
    /// `file` (in the topology's directory), the public key returned.
    pub fn keypair(&self, program: &str, file: &str) -> String {
        let out = Command::new(bin(program))
            .arg("genkey")
            .output()
            .expect("run genkey");
        assert!(
            out.status.success(),
            "{program} genkey: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(self.path(file), &out.stdout).expect("write key");
        let out = Command::new(bin(program))
            .arg("pubkey")
            .stdin(std::fs::File::open(self.path(file)).expect("open key"))
            .output()
            .expect("run pubkey");
        assert!(
            out.status.success(),
            "{program} pubkey: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The topology with the tunnel up, for the namespace test `test`; `None` when the test
    /// must skip (not root, outside CI; see [`crate::netns::namespaces_available`]).
    pub fn with_tunnel(test: &str) -> Option<Topology> {
        if !crate::netns::namespaces_available(test) {
            return None;
        }
        let mut t = Topology::new();
        t.start_tunnel();
        Some(t)
    }

    /// Start the exit node and the client, and wait until the tunnel carries traffic.
    pub fn start_tunnel(&mut self) {
        let exit_public = self.start_exit();
        self.start_client(&exit_public);
        self.wait_tunnel(Duration::from_secs(20));
    }

    /// The client config's `tun.offload` (default on, as shipped).
    pub fn client_offload(&mut self, on: bool) {
        self.client_offload = on;
    }

    /// The client config's `tun.mtu` (default: the client's own default).
    pub fn client_tun_mtu(&mut self, mtu: u32) {
        self.client_tun_mtu = Some(mtu);
    }

    /// Append `toml` to the client config written by the next [`Topology::start_client`]
    /// (e.g. `"[kill_switch]\nenabled = true\n"`).
    pub fn client_config_extra(&mut self, toml: &str) {
        self.client_extra.push_str(toml);
    }

    /// Append `toml` to the exit config written by the next [`Topology::start_exit`] (e.g.
    /// `"[limits]\nupgrade_timeout = \"2s\"\n"` or another `[[clients]]` entry). The
    /// topology's own config has no `[limits]` or `[session]` table.
    pub fn exit_config_extra(&mut self, toml: &str) {
        self.exit_extra.push_str(toml);
    }

    /// Append `lines` to the `[egress]` table of the exit config written by the next
    /// [`Topology::start_exit`] (e.g. `"udp_idle_timeout = \"3s\"\n"`); a second `[egress]`
    /// table via [`Topology::exit_config_extra`] would be invalid TOML.
    pub fn exit_egress_extra(&mut self, lines: &str) {
        self.exit_egress_extra.push_str(lines);
    }

    /// Set the client config's `session.exit_has_ipv6` for the next
    /// [`Topology::start_client`]: with `true` the client carries IPv6 flows to the exit
    /// (which has no IPv6 route, so only its policy decides what is refused before a dial).
    pub fn client_exit_has_ipv6(&mut self, yes: bool) {
        self.exit_has_ipv6 = yes;
    }

    /// Also allow `cidr` in the exit's egress policy (for the next [`Topology::start_exit`]).
    pub fn exit_allow(&mut self, cidr: &str) {
        self.exit_allow.push(cidr.to_owned());
    }

    /// Bind the exit's admin listener to `address` (for the next [`Topology::start_exit`];
    /// default `127.0.0.1:9090`). [`Topology::exit_metrics`] still asks `127.0.0.1:9090`,
    /// so keep the port and use a wildcard (`0.0.0.0`, `[::]`) or loopback. Off loopback the
    /// listener gets the bearer token [`ADMIN_TOKEN`] (the exit refuses it without one).
    pub fn exit_admin_address(&mut self, address: &str) {
        self.exit_admin = address.to_owned();
    }

    /// The admin token the exit was given, if its admin listener is off loopback.
    pub fn exit_admin_token(&self) -> Option<&'static str> {
        let ip = self.exit_admin.parse::<std::net::SocketAddr>().ok()?.ip();
        (!ip.is_loopback()).then_some(ADMIN_TOKEN)
    }

    /// The exit-node process, once started.
    pub fn exit_pid(&self) -> Option<u32> {
        self.exit_pid
    }

    /// Rewrite the exit's config so that its only client has public key `client_public`,
    /// and make the running exit-node reload it (SIGHUP).
    pub fn reload_exit_clients(&self, client_public: &str) {
        self.write_exit_config(client_public);
        let pid = self.exit_pid.expect("exit-node runs");
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP exit-node");
    }

    /// Generate both key pairs (with `exit-node genkey`/`pubkey`), write the exit's config
    /// and start it; wait until both relays reach its listeners. The exit's public key.
    pub fn start_exit(&mut self) -> String {
        let client_public = self.keypair("exit-node", "client.key");
        let exit_public = self.keypair("exit-node", "exit.key");
        self.write_exit_config(&client_public);
        self.spawn_exit();
        exit_public
    }

    /// Run exit-node on the written config; wait until both relays reach its listeners
    /// (which proves relay → exit as well).
    fn spawn_exit(&mut self) {
        let pid = self.exit.spawn_logged(
            &bin("exit-node"),
            &["run", "--config", &self.file("exit-node.toml")],
            &self.path("exit-node.log"),
        );
        self.exit_pid = Some(pid);
        wait_listening(
            &self.relay_a,
            &format!("{}:{}", addr::EXIT_UP, port::EXIT_UP),
        );
        wait_listening(
            &self.relay_b,
            &format!("{}:{}", addr::EXIT_DOWN, port::EXIT_DOWN),
        );
    }

    /// `kill -9` the exit-node and start it again with the same config and keys (its
    /// sessions are gone, as after a crash); wait until both relays reach it again.
    pub fn restart_exit(&mut self) {
        let pid = self.exit_pid.take().expect("exit-node runs");
        let stopped = self.exit.stop(pid, "KILL", Duration::from_secs(5));
        assert!(stopped.is_some(), "exit-node did not die");
        self.spawn_exit();
    }

    /// The exit's `/metrics` text (from its admin listener).
    pub fn exit_metrics(&self) -> String {
        let admin = format!("127.0.0.1:{}", port::ADMIN);
        let mut args = vec!["body", &admin, "/metrics"];
        args.extend(self.exit_admin_token());
        let out = probe(&self.exit, &args);
        assert!(out.ok, "exit metrics: {}", out.stderr);
        out.stdout
    }

    fn write_exit_config(&self, client_public: &str) {
        let config = format!(
            r#"# Written by the e2e topology.
private_key_file = "{key}"

[listen.up]
address = "{up}:{up_port}"
path = "/u"

[listen.down]
address = "{down}:{down_port}"
path = "/d"

[[clients]]
name = "e2e-client"
public_key = "{client_public}"

[egress]
allow_cidrs = ["{inet_net}"{more_allowed}]
{egress_extra}

[dns]
upstreams = ["{inet}:53"]

[admin]
address = "{admin}"
{admin_token}

[runtime]
state_dir = "{state}"

[log]
stats_interval = "5s"
{extra}"#,
            extra = self.exit_extra,
            state = self.file("exit-state"),
            egress_extra = self.exit_egress_extra,
            key = self.file("exit.key"),
            up = addr::EXIT_UP,
            up_port = port::EXIT_UP,
            down = addr::EXIT_DOWN,
            down_port = port::EXIT_DOWN,
            inet_net = addr::INET_NET,
            more_allowed = self
                .exit_allow
                .iter()
                .map(|c| format!(", \"{c}\""))
                .collect::<String>(),
            inet = addr::INET,
            admin = self.exit_admin,
            admin_token = match self.exit_admin_token() {
                Some(token) => {
                    let path = self.file("admin.token");
                    std::fs::write(&path, token).expect("write the admin token");
                    format!("token_file = \"{path}\"")
                }
                None => String::new(),
            },
        );
        std::fs::write(self.path("exit-node.toml"), config).expect("write exit config");
    }

    /// Write the client's config (and the resolver file it manages) and start
    /// `vpn-client up`; does not wait for the tunnel (see [`Topology::wait_tunnel`]).
    pub fn start_client(&mut self, exit_public: &str) {
        self.prepare_client(exit_public);
        self.spawn_client();
    }

    /// Write the client's config and the client namespace's resolver file as it is before
    /// `vpn-client up`, without starting anything.
    pub fn prepare_client(&mut self, exit_public: &str) {
        // `ip netns exec` bind-mounts /etc/netns/<ns>/resolv.conf over /etc/resolv.conf, so
        // the resolver file vpn-client manages is the one every app in `client` reads.
        std::fs::create_dir_all(&self.netns_etc).expect("create /etc/netns/<client>");
        let resolv = self.netns_etc.join("resolv.conf");
        std::fs::write(&resolv, "# before vpn-client up\nnameserver 192.0.2.53\n")
            .expect("write resolv.conf");
        let ca = self.file("ca.pem");
        let config = client_config(&ClientFiles {
            key: &self.file("client.key"),
            exit_public,
            ca: &ca,
            resolv: &resolv.display().to_string(),
            control: &self.file("control.sock"),
            journal: &self.file("journal"),
            exit_has_ipv6: self.exit_has_ipv6,
            offload: self.client_offload,
            tun_mtu: self.client_tun_mtu,
            extra: &self.client_extra,
        });
        std::fs::write(self.path("client.toml"), config).expect("write client config");
    }

    /// Start `vpn-client up` with the config [`Topology::prepare_client`] wrote.
    pub fn spawn_client(&self) {
        let pid = self.client.spawn_logged(
            &bin("vpn-client"),
            &["up", "--config", &self.file("client.toml")],
            &self.path("vpn-client.log"),
        );
        *self.client_pid.lock().expect("client pid lock") = Some(pid);
    }

    /// Wait until an HTTP GET from the client to inet succeeds (only possible through
    /// the tunnel); panics with the logs after `timeout`.
    pub fn wait_tunnel(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let target = format!("{}:{}", addr::INET, port::HTTP);
        loop {
            let out = probe(&self.client, &["get", &target, "/"]);
            if out.ok && out.stdout.contains("status=200") {
                return;
            }
            if let Some(pid) = self.client_pid() {
                assert!(self.client.running(pid), "vpn-client exited during start");
            }
            if let Some(pid) = self.exit_pid {
                assert!(self.exit.running(pid), "exit-node exited during start");
            }
            assert!(
                Instant::now() < deadline,
                "the tunnel did not carry an HTTP GET within {timeout:?}: {}",
                out.stderr
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The vpn-client process, once started.
    pub fn client_pid(&self) -> Option<u32> {
        *self.client_pid.lock().expect("client pid lock")
    }

    /// `vpn-client status` output (plain text).
    pub fn client_status(&self) -> String {
        let out = self.client.try_exec(
            &bin("vpn-client"),
            &["status", "--config", &self.file("client.toml")],
        );
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// Stop the client with SIGTERM and wait for it (it must tear down within 2 s, issue 5);
    /// its exit status.
    pub fn stop_client(&mut self) -> Option<std::process::ExitStatus> {
        let pid = self.client_pid.lock().expect("client pid lock").take()?;
        self.client.stop(pid, "TERM", Duration::from_secs(3))
    }

    /// Send `signal` (e.g. "KILL") to vpn-client and wait up to 3 s for it to exit; its
    /// exit status (`None` if it did not exit or was not running).
    pub fn signal_client(&mut self, signal: &str) -> Option<std::process::ExitStatus> {
        let pid = self.client_pid.lock().expect("client pid lock").take()?;
        self.client.stop(pid, signal, Duration::from_secs(3))
    }

    /// Run `vpn-client down` in the client namespace; its output (panics if it fails).
    pub fn client_down(&self) -> String {
        let out = self.client.try_exec(
            &bin("vpn-client"),
            &["down", "--config", &self.file("client.toml")],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "vpn-client down: {text}");
        text
    }

    /// The client namespace's host state that `up` changes and `down` must restore:
    /// policy rules and routes of every table (IPv4 and IPv6), links, the whole nftables
    /// ruleset and the resolver file — one text to compare byte for byte.
    pub fn client_snapshot(&self) -> String {
        let mut all = String::new();
        for args in [
            &["rule", "show"][..],
            &["-6", "rule", "show"],
            &["route", "show", "table", "all"],
            &["-6", "route", "show", "table", "all"],
            &["-o", "link", "show"],
        ] {
            let out = self.client.ip(args);
            all += &format!(
                "=== ip {}\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let nft = self.client.exec("nft", &["list", "ruleset"]);
        all += &format!(
            "=== nft list ruleset\n{}",
            String::from_utf8_lossy(&nft.stdout)
        );
        let resolv =
            std::fs::read_to_string(self.netns_etc.join("resolv.conf")).unwrap_or_default();
        all + "=== resolv.conf\n" + &resolv
    }

    /// The sum of the exit's `/metrics` samples whose line starts with `prefix`, e.g.
    /// `half_tunnel_exit_handshakes_rejected_total{reason="replay"}`.
    pub fn exit_counter(&self, prefix: &str) -> f64 {
        self.exit_metrics()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The text of log `name` (e.g. "exit-node.log") without terminal colour codes.
    pub fn log(&self, name: &str) -> String {
        let raw = std::fs::read_to_string(self.path(name)).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // CSI: ESC [ parameters… final byte (@ to ~).
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) && c != '[' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// The last `lines` lines of every log.
    pub fn logs(&self, lines: usize) -> String {
        let mut all = String::new();
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return all;
        };
        let mut logs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            all += &format!("=== {} (last {lines} lines)\n", log.display());
            for line in tail.into_iter().rev() {
                all += line;
                all.push('\n');
            }
        }
        all
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if std::thread::panicking() {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "{}", self.logs(60));
        }
        let pid = self.client_pid.lock().map(|mut p| p.take()).unwrap_or(None);
        if let Some(pid) = pid {
            let _ = self.client.stop(pid, "TERM", Duration::from_secs(3));
        }
        let _ = std::fs::remove_dir_all(&self.netns_etc);
    }
}

/// Where a test client's files are, and its few varying settings.
#[derive(Debug)]
pub struct ClientFiles<'a> {
    /// Its private key file.
    pub key: &'a str,
    /// The exit's public key.
    pub exit_public: &'a str,
    /// The topology CA (relays' certificates).
    pub ca: &'a str,
    /// The resolver file it manages.
    pub resolv: &'a str,
    /// Its control socket.
    pub control: &'a str,
    /// Its undo-journal directory.
    pub journal: &'a str,
    /// `session.exit_has_ipv6`.
    pub exit_has_ipv6: bool,
    /// `tun.offload`.
    pub offload: bool,
    /// `tun.mtu`, if not the default.
    pub tun_mtu: Option<u32>,
    /// TOML appended at the end.
    pub extra: &'a str,
}

/// The client config every test client uses: both legs through the relays (TLS with the
/// topology CA), TUN `ht0`, managed resolver file, fast reconnects, 5 s stats lines.
pub fn client_config(f: &ClientFiles<'_>) -> String {
    format!(
        r#"# Written by the e2e topology.
private_key_file = "{key}"
exit_public_key = "{exit_public}"

[up]
url = "wss://a.test/u"
connect_address = "{relay_a}:{relay_port}"
ca_file = "{ca}"

[down]
url = "wss://b.test/d"
connect_address = "{relay_b}:{relay_port}"
ca_file = "{ca}"

[tun]
name = "ht0"
offload = {offload}
{mtu}
[dns]
manage_system_dns = true
resolv_conf = "{resolv}"

[session]
reconnect_initial = "200ms"
reconnect_max = "2s"
# The exit namespace has no IPv6 unless a test gives it some: IPv6 must then be refused
# inside the tunnel.
exit_has_ipv6 = {v6}

[runtime]
control_socket = "{control}"
journal_dir = "{journal}"

[log]
stats_interval = "5s"
{extra}"#,
        key = f.key,
        exit_public = f.exit_public,
        ca = f.ca,
        resolv = f.resolv,
        control = f.control,
        journal = f.journal,
        v6 = f.exit_has_ipv6,
        offload = f.offload,
        mtu = f.tun_mtu.map_or(String::new(), |m| format!("mtu = {m}\n")),
        extra = f.extra,
        relay_a = addr::RELAY_A,
        relay_b = addr::RELAY_B,
        relay_port = port::RELAY,
    )
}

/// Runs every `ht-probe` command of `attempts` in `ns` at once and panics (naming
/// `context`) if any got an answer: an echo of "x", an HTTP 200 or the inet address in a
/// DNS answer. For tests in which nothing may get through (legs cut, kill switch).
pub fn assert_no_attempt_answered(ns: &Netns, attempts: &[Vec<String>], context: &str) {
    std::thread::scope(|s| {
        let handles: Vec<_> = attempts
            .iter()
            .map(|args| {
                s.spawn(move || {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    (args.join(" "), probe(ns, &args))
                })
            })
            .collect();
        for h in handles {
            let (what, out) = h.join().expect("probe thread");
            let reached = out.stdout.trim() == "x"
                || out.stdout.contains("status=200")
                || out.stdout.contains(addr::INET);
            assert!(
                !(out.ok && reached),
                "{context}: {what} got an answer: {}",
                out.stdout
            );
        }
    });
}

/// The value of `key=value` among the whitespace-separated words of `text` (how
/// `ht-probe` and the other test tools report).
pub fn field(text: &str, key: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
}

/// Wait for `child` (started with piped stdout and stderr) and return its stdout; panics,
/// naming `what` and quoting stderr, unless it exited successfully.
pub fn finish(child: std::process::Child, what: &str) -> String {
    let out = child.wait_with_output().expect("wait for the child");
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a probe run printed.
#[derive(Debug, Clone)]
pub struct ProbeOutput {
    /// Whether it exited successfully.
    pub ok: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl ProbeOutput {
    /// The value of `key=value` in stdout.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.stdout
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }
}

/// The exit admin listener's bearer token when a test binds it off loopback.
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdef";

/// Run `ht-probe ARGS` inside `ns`.
pub fn probe(ns: &Netns, args: &[&str]) -> ProbeOutput {
    let out = ns.try_exec(&bin("ht-probe"), args);
    ProbeOutput {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Wait until a TCP connect to `addr` from inside `ns` succeeds (10 s at most).
pub fn wait_listening(ns: &Netns, addr: &str) {
    let out = probe(ns, &["wait", addr, "10"]);
    assert!(
        out.ok,
        "nothing listens on {addr} seen from {}: {}",
        ns.name(),
        out.stderr
    );
}

/// A packet capture (tcpdump) on an interface of a namespace, e.g. the client's `eth0`.
#[derive(Debug)]
pub struct Capture<'a> {
    ns: &'a Netns,
    pid: u32,
    file: PathBuf,
}

impl<'a> Capture<'a> {
    /// Start capturing on `iface`; returns once tcpdump listens. `dir` holds the files.
    pub fn start(ns: &'a Netns, iface: &str, dir: &Path) -> Capture<'a> {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let file = dir.join(format!("capture-{n}.pcap"));
        let log = dir.join(format!("capture-{n}.log"));
        let pid = ns.spawn_logged(
            "tcpdump",
            // --immediate-mode: packets reach the file at once, not when the kernel retires
            // a ring block (up to a second later, and never if tcpdump stops first).
            &[
                "-i",
                iface,
                "-n",
                "-U",
                "--immediate-mode",
                "-w",
                &file.to_string_lossy(),
            ],
            &log,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("listening on")) {
            assert!(
                ns.running(pid),
                "tcpdump exited: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            assert!(Instant::now() < deadline, "tcpdump did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Capture { ns, pid, file }
    }

    /// Stop and return one line per packet (`tcpdump -n -r`).
    pub fn stop(self) -> Vec<String> {
        // Let tcpdump drain what the kernel already queued for it: SIGINT does not.
        std::thread::sleep(Duration::from_millis(100));
        self.ns
            .stop(self.pid, "INT", Duration::from_secs(5))
            .expect("tcpdump stops on SIGINT");
        let out = Command::new("tcpdump")
            .args(["-n", "-r"])
            .arg(&self.file)
            .output()
            .expect("run tcpdump -r");
        assert!(
            out.status.success(),
            "tcpdump -r: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Whether a `tcpdump -n` line is one of the tunnel's own packets on the client's outer
/// interface: TCP between the client and a relay's port 443 (the legs' TLS), or link
/// housekeeping (ARP, IPv6 neighbour/router discovery, multicast listener reports).
pub fn is_leg_or_link_traffic(line: &str) -> bool {
    const HOUSEKEEPING: [&str; 4] = [
        " ARP, ",
        "ICMP6, neighbor ",
        "ICMP6, router solicitation",
        "multicast listener report",
    ];
    if HOUSEKEEPING.iter().any(|h| line.contains(h)) {
        return true;
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some(at) = words.iter().position(|w| *w == "IP") else {
        return false;
    };
    let (Some(src), Some(dst)) = (words.get(at + 1), words.get(at + 3)) else {
        return false;
    };
    let dst = dst.trim_end_matches(':');
    let client = format!("{}.", addr::CLIENT);
    let legs = [
        format!("{}.{}", addr::RELAY_A, port::RELAY),
        format!("{}.{}", addr::RELAY_B, port::RELAY),
    ];
    let is_leg = |a: &str| legs.iter().any(|l| l == a);
    let tcp = line.contains(": Flags [");
    tcp && ((src.starts_with(&client) && is_leg(dst)) || (is_leg(src) && dst.starts_with(&client)))
}

/// The captured lines that are neither the legs' traffic nor link housekeeping: leaks.
pub fn leaks(lines: &[String]) -> Vec<&str> {
    lines
        .iter()
        .map(String::as_str)
        .filter(|l| !is_leg_or_link_traffic(l))
        .collect()
}

/// Panics, listing them, if any captured line is a leak (`what`: where and when).
pub fn assert_no_leaks(lines: &[String], what: &str) {
    let leaked = leaks(lines);
    assert!(leaked.is_empty(), "leaked {what}:\n{}", leaked.join("\n"));
}

/// Panics unless the capture saw at least two of the up leg's connection attempts (SYNs
/// to relay A): proof that it was live while the legs were reconnecting.
pub fn assert_saw_leg_reconnects(lines: &[String]) {
    let syn = format!("{}.{}: Flags [S]", addr::RELAY_A, port::RELAY);
    let syns = lines.iter().filter(|l| l.contains(&syn)).count();
    assert!(
        syns >= 2,
        "only {syns} leg SYNs captured:\n{}",
        lines.join("\n")
    );
}
