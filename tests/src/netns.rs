//! Network namespaces that a test creates for itself and always deletes.
//!
//! Every name is unique per process and call, so tests run in parallel. Dropping a
//! [`Netns`] kills the processes it spawned and deletes the namespace (and with it every
//! veth end inside it), also when the test panics.

use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Whether namespace tests can run here. Outside CI a non-root run skips them (returns
/// false after saying why); under `CI` they must run, so this panics instead.
pub fn namespaces_available(test: &str) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    let ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if root && ip {
        return true;
    }
    let why = if root {
        "iproute2 (`ip`) is missing"
    } else {
        "they need root"
    };
    if std::env::var_os("CI").is_some() {
        panic!(
            "{test}: namespace tests cannot run ({why}) but CI is set: failing instead of skipping"
        );
    }
    // Straight to the stderr handle: libtest would swallow `eprintln!` of a passing test.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
    false
}

/// A network namespace owned by a test.
#[derive(Debug)]
pub struct Netns {
    name: String,
    children: Mutex<Vec<Child>>,
}

impl Netns {
    /// Create `ht-<role>-<pid>-<n>` with loopback up.
    pub fn new(role: &str) -> Netns {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("ht-{role}-{}-{n}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns {
            name,
            children: Mutex::new(Vec::new()),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Run `program args` inside; panic with its output if it fails.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        run(self.command(program).args(args))
    }

    /// Run `program args` inside and return the output whatever the status.
    pub fn try_exec(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .expect("spawn ip netns exec")
    }

    /// `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Output {
        self.exec("ip", args)
    }

    /// Start a long-running process inside; it is killed when the namespace is dropped.
    pub fn spawn(&self, program: &str, args: &[&str]) -> u32 {
        let child = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program} in {}: {e}", self.name));
        let pid = child.id();
        self.children.lock().expect("children lock").push(child);
        pid
    }

    /// Like [`Netns::spawn`], with stdout and stderr appended to `log`.
    pub fn spawn_logged(&self, program: &str, args: &[&str], log: &std::path::Path) -> u32 {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let child = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program} in {}: {e}", self.name));
        let pid = child.id();
        self.children.lock().expect("children lock").push(child);
        pid
    }

    /// Send `signal` (e.g. "TERM") to a process this namespace spawned and wait up to
    /// `timeout` for it to exit; its exit status, or `None` if it is still running.
    pub fn stop(
        &self,
        pid: u32,
        signal: &str,
        timeout: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let mut children = self.children.lock().expect("children lock");
            let at = children.iter().position(|c| c.id() == pid)?;
            if let Ok(Some(status)) = children[at].try_wait() {
                // Already reaped by try_wait; wait() just returns the same status.
                let _ = children.remove(at).wait();
                return Some(status);
            }
            drop(children);
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Whether a process this namespace spawned is still running.
    pub fn running(&self, pid: u32) -> bool {
        let mut children = self.children.lock().expect("children lock");
        children
            .iter_mut()
            .find(|c| c.id() == pid)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Enable IPv4 and IPv6 forwarding (a router namespace).
    pub fn forward(&self) {
        self.exec(
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(children) = self.children.get_mut() {
            for child in children.iter_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // Processes started by other means (e.g. daemons a test forked) die with this.
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Join `a` and `b` with a veth pair named `<a_if>`/`<b_if>` and give each end addresses
/// (CIDR strings, IPv4 or IPv6). IPv6 DAD is disabled so addresses are usable at once.
pub fn link(a: &Netns, a_if: &str, a_addrs: &[&str], b: &Netns, b_if: &str, b_addrs: &[&str]) {
    // Created in the caller's namespace (shared by every test process) before being moved:
    // unique across processes too, within IFNAMSIZ (15) with the "p" of the peer.
    let tmp = format!(
        "htv{}x{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    run(Command::new("ip").args([
        "link",
        "add",
        &tmp,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{tmp}p"),
    ]));
    for (ns, dev, ifname, addrs) in [
        (a, tmp.clone(), a_if, a_addrs),
        (b, format!("{tmp}p"), b_if, b_addrs),
    ] {
        run(Command::new("ip").args(["link", "set", &dev, "netns", ns.name()]));
        ns.ip(&["link", "set", &dev, "name", ifname]);
        ns.exec(
            "sysctl",
            &["-qw", &format!("net.ipv6.conf.{ifname}.accept_dad=0")],
        );
        for addr in addrs {
            let flags: &[&str] = if addr.contains(':') { &["nodad"] } else { &[] };
            ns.ip(&[&["addr", "add", addr, "dev", ifname][..], flags].concat());
        }
        ns.ip(&["link", "set", ifname, "up"]);
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}
