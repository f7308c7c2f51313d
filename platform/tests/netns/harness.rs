//! Network namespaces the tests create for themselves and always delete (on drop, also
//! when the test panics), and running a closure inside one on a dedicated thread.

use std::fs::File;
use std::io::Write as _;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Whether namespace tests can run. Outside CI they are skipped (with a reason) when not
/// root or a tool is missing; with `CI` set they fail instead.
pub fn available(test: &str) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    let tool = |t: &str, flag: &str| {
        Command::new(t)
            .arg(flag)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let why = match () {
        _ if !root => "they need root",
        _ if !tool("ip", "-V") => "iproute2 (`ip`) is missing",
        _ if !tool("nft", "--version") => "nftables (`nft`) is missing",
        _ if !tool("sysctl", "--version") => "procps (`sysctl`) is missing",
        _ if !std::path::Path::new("/dev/net/tun").exists() => "/dev/net/tun is missing",
        _ => return true,
    };
    if std::env::var_os("CI").is_some() {
        panic!(
            "{test}: namespace tests cannot run ({why}) but CI is set: failing instead of skipping"
        );
    }
    // Straight to the stderr handle: libtest would swallow `eprintln!` of a passing test.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
    false
}

/// A network namespace owned by a test.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Create `htp-<role>-<pid>-<n>` with loopback up.
    pub fn new(role: &str) -> Netns {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("htp-{role}-{}-{n}", std::process::id());
        sh("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        // No duplicate address detection: IPv6 addresses (and their local routes) appear
        // at once, so snapshots do not change under the test's feet.
        ns.exec("sysctl", &["-qw", "net.ipv6.conf.all.accept_dad=0"]);
        ns.exec("sysctl", &["-qw", "net.ipv6.conf.default.accept_dad=0"]);
        ns
    }

    /// Run a program inside; panic with its output on failure; return stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend(args);
        sh("ip", &all)
    }

    /// `ip ARGS` inside.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend(args);
        sh("ip", &all)
    }

    /// Run `f` on a fresh thread that has entered this namespace; the thread's sockets,
    /// devices and child processes belong to the namespace. Panics propagate.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        std::thread::scope(|s| {
            let handle = s.spawn(move || {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            });
            handle
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Two namespaces joined by a veth pair: `a` has 10.201.0.1/24 on `veth-a`, `b` has
/// 10.201.0.2/24 on `veth-b`, and `a`'s main table has a default route via `b`.
pub fn pair(role: &str) -> (Netns, Netns) {
    let a = Netns::new(&format!("{role}a"));
    let b = Netns::new(&format!("{role}b"));
    a.ip(&[
        "link", "add", "veth-a", "type", "veth", "peer", "name", "veth-b", "netns", &b.name,
    ]);
    a.ip(&["addr", "add", "10.201.0.1/24", "dev", "veth-a"]);
    b.ip(&["addr", "add", "10.201.0.2/24", "dev", "veth-b"]);
    a.ip(&["link", "set", "veth-a", "up"]);
    b.ip(&["link", "set", "veth-b", "up"]);
    a.ip(&["route", "add", "default", "via", "10.201.0.2"]);
    (a, b)
}

/// Run a command on the host (namespace management only); panic on failure.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
