//! The client's outer address or default route changes mid-transfer (TESTPLAN §22): during
//! a paced download and with an idle TCP connection open through the tunnel,
//!
//! * the client's `eth0` gets a new address and loses the old one (same LAN);
//! * the client moves to a second LAN link (`eth1`, another subnet): the default route
//!   points there and `eth0` loses its address (Wi-Fi → mobile);
//! * the default route disappears for 3 s and comes back.
//!
//! Each time the download completes with the right length and checksum, the idle
//! connection still echoes afterwards, both binaries keep running, and (when the address
//! changed) both legs are re-established from the new address within 5 s: the client
//! notices that a leg's source address left the host (checked every second) and logs it,
//! rather than waiting for the stall monitor (6 s) or the leg timeout (15 s). The longest
//! stall the app saw is printed.

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use e2e::netns::{link, namespaces_available};
use e2e::payload::expected_sha256;
use e2e::topology::{Leg, Topology, addr, bin, field, finish, port};

const MIB: u64 = 1 << 20;
/// The paced download: 12 MiB at 1 MiB/s, so the change lands well inside it.
const SIZE: u64 = 12 * MIB;
const RATE: u64 = MIB;

/// An idle TCP connection from the client to inet's echo service, through the tunnel.
struct Hold {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Hold {
    fn open(t: &Topology) -> Hold {
        let mut child = t
            .client
            .command(&bin("ht-hold"))
            .arg(format!("{}:{}", addr::INET, port::ECHO))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ht-hold");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut hold = Hold {
            child,
            stdin,
            lines,
        };
        let first = hold.next_line();
        assert!(first.starts_with("connected "), "ht-hold: {first}");
        hold
    }

    fn next_line(&mut self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(40))
            .unwrap_or_else(|_| panic!("ht-hold said nothing (exit: {:?})", self.child.try_wait()))
    }

    /// Send `text` on the idle connection; what came back.
    fn say(&mut self, text: &str) -> String {
        writeln!(self.stdin, "{text}").expect("write to ht-hold");
        self.stdin.flush().expect("flush ht-hold");
        self.next_line()
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start the paced download in the background.
fn start_download(t: &Topology) -> Child {
    t.client
        .command(&bin("ht-probe"))
        .args([
            "get",
            &format!("{}:{}", addr::INET, port::HTTP),
            &format!("/bytes/{SIZE}?rate={RATE}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the download")
}

/// Wait for the download; its `key=value` line (panics unless intact).
fn finish_download(child: Child, what: &str) -> String {
    let out = finish(child, &format!("{what}: the download"));
    assert_eq!(
        field(&out, "bytes"),
        Some(SIZE.to_string()),
        "{what}: {out}"
    );
    assert_eq!(
        field(&out, "sha256"),
        Some(expected_sha256(SIZE)),
        "{what}: download bytes differ: {out}"
    );
    out.trim().to_owned()
}

/// The client's established TCP connections (`local peer` per line).
fn client_connections(t: &Topology) -> Vec<String> {
    let out = t.client.exec("ss", &["-tnH", "state", "established"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() >= 4).then(|| format!("{} {}", w[2], w[3]))
        })
        .collect()
}

/// Wait until both legs are established from `local` (an IPv4 address); how long it took.
fn wait_legs_from(t: &Topology, local: &str, since: Instant) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let conns = client_connections(t);
        let from = |relay: &str| {
            conns.iter().any(|c| {
                c.starts_with(&format!("{local}:")) && c.ends_with(&format!(" {relay}:443"))
            })
        };
        if from(addr::RELAY_A) && from(addr::RELAY_B) {
            return since.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "the legs were not re-established from {local}: {conns:?}\n{}",
            t.client_status()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run `change` 2 s into the paced download with an idle connection open; then check the
/// download, the idle connection and both binaries. `new_local`: the address the legs
/// must come from afterwards. Returns the download's result line.
fn survive(test: &str, new_local: Option<&str>, change: impl FnOnce(&Topology)) -> Option<String> {
    if !namespaces_available(test) {
        return None;
    }
    let mut t = Topology::new();
    t.start_tunnel();
    let mut hold = Hold::open(&t);
    assert_eq!(hold.say("before"), "echo=before");
    let (a0, b0) = (t.relay_stats(Leg::Up), t.relay_stats(Leg::Down));
    let download = start_download(&t);
    std::thread::sleep(Duration::from_secs(2));
    let changed = Instant::now();
    change(&t);
    eprintln!(
        "{test}: changed; client routes now:\n{}",
        String::from_utf8_lossy(&t.client.ip(&["route"]).stdout)
    );
    if let Some(local) = new_local {
        let took = wait_legs_from(&t, local, changed);
        let (a1, b1) = (t.relay_stats(Leg::Up), t.relay_stats(Leg::Down));
        eprintln!(
            "{test}: both legs re-established from {local} {took:?} after the change (relay connections up {} → {}, down {} → {})",
            a0.connections, a1.connections, b0.connections, b1.connections
        );
        assert!(a1.connections > a0.connections && b1.connections > b0.connections);
        assert!(
            took < Duration::from_secs(5),
            "{test}: the legs took {took:?} to come back from {local}"
        );
        assert!(
            t.log("vpn-client.log")
                .contains("is no longer on this host"),
            "{test}: the client did not say why it reconnected:\n{}",
            t.logs(20)
        );
    }
    let result = finish_download(download, test);
    eprintln!(
        "{test}: download {result} ({:?} after the change)",
        changed.elapsed()
    );
    // The idle connection, untouched during all this, still carries data both ways.
    assert_eq!(hold.say("after"), "echo=after", "{test}: idle connection");
    // How the client noticed (for the record: the legs die silently, nothing watches the
    // outer address).
    for line in t.log("vpn-client.log").lines() {
        if line.contains("WARN") || line.contains("leg connected") {
            eprintln!("{test}: vpn-client: {line}");
        }
    }
    let pid = t.client_pid().expect("client started");
    assert!(t.client.running(pid), "vpn-client exited");
    let pid = t.exit_pid().expect("exit started");
    assert!(t.exit.running(pid), "exit-node exited");
    for log in ["vpn-client.log", "exit-node.log"] {
        assert!(!t.log(log).contains("panicked"), "{log} shows a panic");
    }
    Some(result)
}

#[test]
fn a_new_address_on_the_same_lan_keeps_long_and_idle_flows() {
    survive(
        "a_new_address_on_the_same_lan_keeps_long_and_idle_flows",
        Some("10.10.0.3"),
        |t| {
            let c = &t.client;
            // Keep the new (secondary) address when the old primary goes.
            c.exec(
                "sysctl",
                &["-qw", "net.ipv4.conf.eth0.promote_secondaries=1"],
            );
            c.ip(&["addr", "add", "10.10.0.3/24", "dev", "eth0"]);
            c.ip(&["addr", "del", "10.10.0.2/24", "dev", "eth0"]);
            // The default route may go with the old primary address: put it back.
            c.ip(&[
                "route",
                "replace",
                "default",
                "via",
                addr::LAN_GW,
                "dev",
                "eth0",
            ]);
        },
    );
}

#[test]
fn moving_to_another_link_keeps_long_and_idle_flows() {
    survive(
        "moving_to_another_link_keeps_long_and_idle_flows",
        Some("10.11.0.2"),
        |t| {
            link(
                &t.client,
                "eth1",
                &["10.11.0.2/24"],
                &t.lan,
                "eth-c2",
                &["10.11.0.1/24"],
            );
            let c = &t.client;
            c.ip(&[
                "route",
                "replace",
                "default",
                "via",
                "10.11.0.1",
                "dev",
                "eth1",
            ]);
            c.ip(&["addr", "flush", "dev", "eth0"]);
        },
    );
}

#[test]
fn the_default_route_gone_for_3s_keeps_long_and_idle_flows() {
    survive(
        "the_default_route_gone_for_3s_keeps_long_and_idle_flows",
        None,
        |t| {
            t.client.ip(&["route", "del", "default"]);
            std::thread::sleep(Duration::from_secs(3));
            // With `dev`: without it the kernel resolves the gateway through the policy
            // rules, i.e. through the TUN's table, and the route would point into `ht0`.
            t.client.ip(&[
                "route",
                "add",
                "default",
                "via",
                addr::LAN_GW,
                "dev",
                "eth0",
            ]);
        },
    );
}
