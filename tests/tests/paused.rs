//! Issue 27: apps that stop reading must not freeze the tunnel for everybody else.
//!
//! A browser opens a couple of dozen downloads (paused videos, a hostile page), reads each
//! of them fast for a while and then stops reading without closing. Session-wide flow
//! control (proto's `MaxData`) must not let the unread bytes of those streams hold all of the
//! session credit: other apps' new downloads, DNS and new connections keep working. The same
//! upstream: many uploads to a destination that accepts them and stops reading must not
//! freeze the client's other uploads.
//!
//! Default configs throughout (`Topology::start_tunnel`), so the numbers are the shipped
//! ones: the client's session window is 64 MiB and its streams' windows auto-tune up to
//! 8 MiB (eight paused streams at their maximum could hold all of it); the exit's session
//! window is half of `max_buffered_bytes_per_session` (32 MiB) with stream windows up to
//! 4 MiB (eight again). `PAUSED` streams of `SHARE` bytes each exceed that three times over.
//!
//! Each direction is its own test with its own topology (so each shows its own failure);
//! they take turns (`SERIAL`) because "promptly" is a time bound, and two floods of
//! hundreds of MiB at once on a 2-core machine would measure CPU contention instead.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use e2e::netns::Netns;
use e2e::payload::{Payload, SEED, expected_sha256, sha256_of};
use e2e::topology::{Leg, Topology, addr, bin, field, port, wait_listening};

const MIB: u64 = 1 << 20;
/// Downloads (uploads) that pause: three times the count that, at the largest stream
/// window, holds the whole session window in either direction.
const PAUSED: usize = 24;
/// What each paused transfer moves fast before it pauses (the others keep reading until
/// all have): enough for proto's auto-tuning to reach the largest stream window.
const SHARE: u64 = 16 * MIB;
/// The paused downloads' body (never read to the end) and the paused uploads' length
/// (never written to the end).
const ENDLESS: u64 = 1024 * MIB;
/// The new transfer that must still go through while they are held.
const NEW: u64 = 32 * MIB;
/// "Promptly" for `NEW`: the test prints the time it takes, idle and with the paused
/// transfers held (a fraction of a second on the idle tunnel). The bound leaves room for a
/// noisy 2-core CI machine running every binary of the test profile at once, and for a fix
/// that gives a new stream less credit while others hold theirs; a frozen tunnel leaves the
/// transfer hanging indefinitely, so the bound is only where that shows.
const PROMPT: Duration = Duration::from_secs(20);
/// DNS and a new connection's echo: each normally takes milliseconds.
const QUICK: Duration = Duration::from_secs(10);
/// How long the paused apps would hold their sockets: longer than the test (they are
/// killed at its end).
const HOLD_SECS: &str = "300";
/// The paused apps print their `paused=` line within this (their own deadline is 60 s).
const PAUSE_SETUP: Duration = Duration::from_secs(75);
/// The destination that stops reading (`ht-probe sink-pause` in inet; the exit's egress
/// policy allows all of the inet network except port 25).
const SINK_PORT: u16 = 9;

/// One direction at a time (see the module doc).
static SERIAL: Mutex<()> = Mutex::new(());

fn http() -> String {
    format!("{}:{}", addr::INET, port::HTTP)
}

fn num(line: &str, key: &str) -> u64 {
    field(line, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// A program that holds paused transfers in a namespace, until killed.
struct Held {
    child: Child,
    what: &'static str,
}

impl Held {
    /// Start `ht-abuse ARGS` in `ns` (stderr to `log` in the topology's directory) and
    /// wait for its `paused=` line; `(Held, that line)`.
    fn start(t: &Topology, ns: &Netns, args: &[&str], what: &'static str) -> (Held, String) {
        let log = std::fs::File::create(t.file(&format!("{}.log", args[0])))
            .expect("create the paused app's log");
        let mut child = ns
            .command(&bin("ht-abuse"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start ht-abuse {args:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut held = Held { child, what };
        let started = Instant::now();
        let line = loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) if line.starts_with("paused=") => break line,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("{what} ended before pausing: {:?}", held.child.try_wait())
                }
            }
            assert!(
                started.elapsed() < PAUSE_SETUP,
                "{what} did not report within {PAUSE_SETUP:?}"
            );
        };
        eprintln!(
            "{what}: {line} (after {:.1} s)",
            started.elapsed().as_secs_f64()
        );
        (held, line)
    }

    /// The app goes away: its sockets are closed (with unread data: reset) by the kernel.
    fn release(mut self) {
        assert!(
            self.child
                .try_wait()
                .expect("poll the paused app")
                .is_none(),
            "{} exited while it should hold its sockets",
            self.what
        );
        self.child.kill().expect("kill the paused app");
        let _ = self.child.wait();
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait until the relay of `leg` carried no more than 256 KiB in its direction of interest
/// for a whole second (at most 20 s): the paused streams have taken in all they can (their
/// apps' socket buffers, the tunnel's buffers, and whatever credit flow control gives them).
fn wait_quiet(t: &Topology, leg: Leg) {
    let bytes = |t: &Topology| {
        let s = t.relay_stats(leg);
        match leg {
            Leg::Down => s.s2c_bytes,
            Leg::Up => s.c2s_bytes,
        }
    };
    let started = Instant::now();
    let first = bytes(t);
    let mut last = first;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = bytes(t);
        let moved = now - last;
        last = now;
        if moved <= 256 * 1024 || started.elapsed() > Duration::from_secs(20) {
            eprintln!(
                "{leg:?} leg: {:.1} MiB more after the pause, quiet after {:.1} s \
                 ({} KiB in the last second)",
                (now - first) as f64 / MIB as f64,
                started.elapsed().as_secs_f64(),
                moved / 1024
            );
            return;
        }
    }
}

/// What a bounded `ht-probe` run did.
struct Timed {
    ok: bool,
    stdout: String,
    stderr: String,
    secs: f64,
    timed_out: bool,
}

/// Run `ht-probe ARGS` in `ns`, killed if it takes longer than `limit`.
fn probe_within(ns: &Netns, args: &[&str], limit: Duration) -> Timed {
    let started = Instant::now();
    let mut child = ns
        .command(&bin("ht-probe"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start ht-probe {args:?}: {e}"));
    let mut timed_out = false;
    while child.try_wait().expect("poll ht-probe").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("wait for ht-probe");
    Timed {
        ok: out.status.success() && !timed_out,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        secs: started.elapsed().as_secs_f64(),
        timed_out,
    }
}

impl Timed {
    /// `None` if it succeeded and `check` accepts its stdout, else what went wrong.
    fn problem(&self, what: &str, check: impl Fn(&str) -> bool) -> Option<String> {
        let how = if self.timed_out {
            format!("did not finish within {:.0} s", self.secs)
        } else if !self.ok {
            format!("failed after {:.1} s: {}", self.secs, self.stderr.trim())
        } else if !check(&self.stdout) {
            format!("wrong answer: {}", self.stdout.trim())
        } else {
            eprintln!("{what}: ok in {:.2} s", self.secs);
            return None;
        };
        eprintln!("{what}: {how}");
        Some(format!("{what} {how}"))
    }
}

/// A new download of `size` bytes within `limit`: right length and SHA-256.
fn new_download(t: &Topology, size: u64, limit: Duration, problems: &mut Vec<String>) {
    let got = probe_within(
        &t.client,
        &["get", &http(), &format!("/bytes/{size}")],
        limit,
    );
    let sha = expected_sha256(size);
    let what = format!("a new {} MiB download", size / MIB);
    problems.extend(got.problem(&what, |out| {
        field(out, "status").as_deref() == Some("200")
            && field(out, "bytes") == Some(size.to_string())
            && field(out, "sha256") == Some(sha.clone())
    }));
    if got.ok {
        eprintln!("  {}", got.stdout.trim());
    }
}

/// A new upload of `size` bytes within `limit`: the server got the right length and SHA-256.
fn new_upload(t: &Topology, size: u64, limit: Duration, problems: &mut Vec<String>) {
    let got = probe_within(&t.client, &["put", &http(), &size.to_string()], limit);
    let (_, sha) = sha256_of(Payload::new(SEED, size)).expect("payload checksum");
    let what = format!("a new {} MiB upload", size / MIB);
    problems.extend(got.problem(&what, |out| {
        field(out, "status").as_deref() == Some("200")
            && out.ends_with(&format!("reply={size} {sha}\n"))
    }));
    if got.ok {
        eprintln!("  {}", got.stdout.trim());
    }
}

/// DNS through the tunnel (the virtual resolver over UDP and TCP, and a GET by name through
/// the managed resolv.conf) and a new TCP connection to inet's echo.
fn other_apps(t: &Topology, problems: &mut Vec<String>) {
    let resolver = format!("{}:53", addr::VIRTUAL_RESOLVER);
    let expect = format!("rcode=No Error\n{}\n", addr::INET);
    for transport in ["udp", "tcp"] {
        let dns = probe_within(
            &t.client,
            &["dns", &resolver, "www.inet.test", transport],
            QUICK,
        );
        problems.extend(dns.problem(&format!("DNS over {transport}"), |out| out == expect));
    }
    let by_name = probe_within(
        &t.client,
        &[
            "get",
            &format!("www.inet.test:{}", port::HTTP),
            "/bytes/65536",
        ],
        QUICK,
    );
    let sha = expected_sha256(65536);
    problems.extend(by_name.problem("a GET by name", |out| {
        field(out, "sha256") == Some(sha.clone())
    }));
    let echo = format!("{}:{}", addr::INET, port::ECHO);
    let tcp = probe_within(&t.client, &["tcp", &echo, "still-here"], QUICK);
    problems.extend(tcp.problem("a new TCP connection", |out| out.trim() == "still-here"));
}

/// Both binaries still run and neither log has a panic.
fn assert_healthy(t: &Topology) {
    let client = t.client_pid().expect("vpn-client started");
    assert!(t.client.running(client), "vpn-client exited");
    let exit = t.exit_pid().expect("exit-node started");
    assert!(t.exit.running(exit), "exit-node exited");
    for log in ["vpn-client.log", "exit-node.log"] {
        assert!(!t.log(log).contains("panicked"), "{log} has a panic");
    }
}

fn tunnel(test: &str) -> Option<Topology> {
    Topology::with_tunnel(test)
}

#[test]
fn paused_downloads_do_not_freeze_the_tunnel() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(t) = tunnel("paused_downloads_do_not_freeze_the_tunnel") else {
        return;
    };
    // For comparison: the same download on the idle tunnel.
    let mut problems = Vec::new();
    new_download(&t, NEW, PROMPT, &mut problems);
    assert!(problems.is_empty(), "the idle tunnel: {problems:?}");

    let (count, share) = (PAUSED.to_string(), SHARE.to_string());
    let (held, line) = Held::start(
        &t,
        &t.client,
        &[
            "pause-get",
            &http(),
            &format!("/bytes/{ENDLESS}"),
            &count,
            &share,
            HOLD_SECS,
        ],
        "paused downloads",
    );
    assert_eq!(
        num(&line, "paused"),
        PAUSED as u64,
        "not every paused download read its share: {line}"
    );
    wait_quiet(&t, Leg::Down);

    // `status` names the flows whose app stopped reading and what they hold.
    let status = t.client_status();
    let paused_line = status
        .lines()
        .find(|l| l.starts_with("paused:"))
        .unwrap_or_else(|| panic!("no paused: line in status: {status}"));
    eprintln!("status: {paused_line}");
    let listed = paused_line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    assert!(
        (1..=PAUSED).contains(&listed),
        "status lists {listed} paused flows: {status}"
    );
    assert!(
        status.contains(&format!("-> {}: ", http())),
        "status names no paused flow to {}: {status}",
        http()
    );

    // While they are held, other apps are served.
    new_download(&t, NEW, PROMPT, &mut problems);
    other_apps(&t, &mut problems);
    assert!(
        problems.is_empty(),
        "with {PAUSED} paused downloads held: {}",
        problems.join("; ")
    );

    // The apps go away; the tunnel goes on.
    held.release();
    new_download(&t, MIB, QUICK, &mut problems);
    assert!(problems.is_empty(), "after the release: {problems:?}");
    assert_healthy(&t);
}

#[test]
fn uploads_to_a_destination_that_stops_reading_do_not_freeze_the_tunnel() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(t) = tunnel("uploads_to_a_destination_that_stops_reading_do_not_freeze_the_tunnel")
    else {
        return;
    };
    let mut problems = Vec::new();
    new_upload(&t, NEW, PROMPT, &mut problems);
    assert!(problems.is_empty(), "the idle tunnel: {problems:?}");

    // The destination: reads `SHARE` of each connection (until all `PAUSED` have delivered
    // theirs), then nothing more, keeping every connection open.
    let sink = format!("{}:{SINK_PORT}", addr::INET);
    let (count, share) = (PAUSED.to_string(), SHARE.to_string());
    t.inet.spawn_logged(
        &bin("ht-probe"),
        &["sink-pause", &sink, &share, &count],
        Path::new(&t.file("sink-pause.log")),
    );
    wait_listening(&t.inet, &sink);
    let (held, line) = Held::start(
        &t,
        &t.client,
        &["pause-put", &sink, &count, &ENDLESS.to_string(), HOLD_SECS],
        "blocked uploads",
    );
    assert_eq!(
        num(&line, "paused"),
        PAUSED as u64,
        "not every upload was blocked: {line}"
    );
    let delivered = t
        .log("sink-pause.log")
        .lines()
        .filter(|l| l.contains(" delivered "))
        .count();
    eprintln!(
        "{delivered} of {PAUSED} uploads delivered their {} MiB",
        SHARE / MIB
    );
    wait_quiet(&t, Leg::Up);
    // The exit's metrics show the streams whose destination stopped reading (its
    // housekeeping counts a stream as paused after a second without a write).
    std::thread::sleep(Duration::from_millis(1500));
    let metrics = t.exit_metrics();
    let gauge = |name: &str| e2e::multi::metric(&metrics, name).unwrap_or(0.0);
    let paused_streams = gauge("half_tunnel_exit_paused_streams");
    let paused_bytes = gauge("half_tunnel_exit_paused_stream_bytes");
    eprintln!("exit metrics: {paused_streams} paused streams hold {paused_bytes} bytes");
    assert!(
        (1.0..=PAUSED as f64).contains(&paused_streams) && paused_bytes > 0.0,
        "exit metrics show {paused_streams} paused streams holding {paused_bytes} bytes"
    );

    new_upload(&t, NEW, PROMPT, &mut problems);
    other_apps(&t, &mut problems);
    assert!(
        problems.is_empty(),
        "with {PAUSED} blocked uploads held: {}",
        problems.join("; ")
    );
    assert_eq!(
        delivered, PAUSED,
        "not every blocked upload delivered its share before it was blocked"
    );

    held.release();
    new_upload(&t, MIB, QUICK, &mut problems);
    new_download(&t, MIB, QUICK, &mut problems);
    assert!(problems.is_empty(), "after the release: {problems:?}");
    assert_healthy(&t);
}
