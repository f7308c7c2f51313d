//! `ht-impair`: a userspace `netem` for a router namespace (see `e2e::impair`).
//!
//! ```text
//! ht-impair --seed N --up SPEC --down SPEC --iif eth-c --iif eth-a \
//!           --client-net 10.10.0.0/24 --stats FILE [--dev imp0] [--table 100]
//! ```
//!
//! Creates the TUN `--dev`, routes every packet arriving on an `--iif` into it (`ip rule
//! iif <dev> lookup <table>`, `default dev <tun>` in that table; rp_filter off, forwarding
//! on), impairs each packet per direction (`--client-net` destinations are "down") with
//! the seeded decisions of `e2e::impair::Shaper`, and writes the survivors back into the
//! TUN at their time. Counters go to `--stats` every 100 ms and once more on SIGTERM/SIGINT,
//! when the rules are removed and the line is also printed. Multicast packets (the TUN's
//! own MLD reports) are dropped uncounted. The seed and both specs are
//! printed at start, so a run can be replayed.

use std::collections::BinaryHeap;
use std::process::{Command, ExitCode};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use e2e::impair::{Dir, Net, Scheduled, Shaper, Spec, Stats, destination};

/// Packets waiting at most (like netem's `limit`); more are dropped and counted.
const QUEUE_LIMIT: usize = 20_000;

#[derive(Debug, Parser)]
#[command(about = "Seeded userspace netem for a router namespace")]
struct Args {
    /// Seed of every decision.
    #[arg(long)]
    seed: u64,
    /// Impairment towards the relays (non-client destinations).
    #[arg(long, default_value = "none")]
    up: Spec,
    /// Impairment towards the client networks.
    #[arg(long, default_value = "none")]
    down: Spec,
    /// Interfaces whose incoming packets go through the impairer.
    #[arg(long, required = true)]
    iif: Vec<String>,
    /// Destinations that make a packet "down".
    #[arg(long = "client-net", required = true)]
    client_net: Vec<Net>,
    /// Counters file.
    #[arg(long)]
    stats: std::path::PathBuf,
    /// The TUN device.
    #[arg(long, default_value = "imp0")]
    dev: String,
    /// The routing table that leads into the TUN.
    #[arg(long, default_value_t = 100)]
    table: u32,
}

/// A packet in the queue, earliest first (then in admission order).
#[derive(Debug, PartialEq, Eq)]
struct Item {
    at: Instant,
    order: u64,
    dir: Dir,
    seq: u64,
    packet: Vec<u8>,
}

impl Ord for Item {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.order).cmp(&(self.at, self.order))
    }
}

impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

#[derive(Debug)]
struct State {
    up: Shaper,
    down: Shaper,
    queue: BinaryHeap<Item>,
    order: u64,
}

impl State {
    fn shaper(&mut self, dir: Dir) -> &mut Shaper {
        match dir {
            Dir::Up => &mut self.up,
            Dir::Down => &mut self.down,
        }
    }

    fn stats(&self) -> Stats {
        Stats {
            up: self.up.counters,
            down: self.down.counters,
        }
    }
}

type Shared = Arc<(Mutex<State>, Condvar)>;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ht-impair: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn sh(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn rule_args<'a>(family: &'a str, verb: &'a str, iif: &'a str, table: &'a str) -> Vec<&'a str> {
    vec![family, "rule", verb, "iif", iif, "lookup", table]
}

fn run(args: Args) -> anyhow::Result<()> {
    println!(
        "ht-impair: seed={} up={} down={} iif={:?} client_net={:?}",
        args.seed, args.up, args.down, args.iif, args.client_net
    );
    let termination = Termination::install()?;
    let dev = tun_rs::DeviceBuilder::new()
        .name(&args.dev)
        .mtu(1500)
        .enable(true)
        .build_sync()
        .map_err(|e| anyhow::anyhow!("create TUN {}: {e}", args.dev))?;
    let dev = Arc::new(dev);
    let table = args.table.to_string();
    sh(
        "sysctl",
        &[
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            &format!("net.ipv4.conf.{}.rp_filter=0", args.dev),
            &format!("net.ipv4.conf.{}.forwarding=1", args.dev),
        ],
    )?;
    for family in ["-4", "-6"] {
        sh(
            "ip",
            &[
                family, "route", "replace", "default", "dev", &args.dev, "table", &table,
            ],
        )?;
        for iif in &args.iif {
            // A rule left by an earlier run would make `add` fail: remove it first.
            let _ = sh("ip", &rule_args(family, "del", iif, &table));
            sh("ip", &rule_args(family, "add", iif, &table))?;
        }
    }
    let shared: Shared = Arc::new((
        Mutex::new(State {
            up: Shaper::new(args.up, args.seed, Dir::Up),
            down: Shaper::new(args.down, args.seed, Dir::Down),
            queue: BinaryHeap::new(),
            order: 0,
        }),
        Condvar::new(),
    ));
    {
        let (dev, shared, nets) = (dev.clone(), shared.clone(), args.client_net.clone());
        std::thread::spawn(move || reader(&dev, &shared, &nets));
    }
    {
        let (dev, shared) = (dev.clone(), shared.clone());
        std::thread::spawn(move || writer(&dev, &shared));
    }
    {
        let (shared, path) = (shared.clone(), args.stats.clone());
        std::thread::spawn(move || {
            loop {
                let _ = write_stats(&shared, &path);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }
    write_stats(&shared, &args.stats)?;
    termination.wait();
    write_stats(&shared, &args.stats)?;
    for family in ["-4", "-6"] {
        for iif in &args.iif {
            let _ = sh("ip", &rule_args(family, "del", iif, &table));
        }
    }
    let stats = shared.0.lock().expect("state lock").stats();
    print!("ht-impair: final\n{stats}");
    Ok(())
}

/// SIGTERM/SIGINT handlers, installed before anything tells the caller we are ready (a
/// signal that arrived earlier would kill the process without counters or clean-up).
struct Termination {
    rt: tokio::runtime::Runtime,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Termination {
    fn install() -> anyhow::Result<Termination> {
        use tokio::signal::unix::{SignalKind, signal};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (term, int) = rt.block_on(async {
            anyhow::Ok((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
            ))
        })?;
        Ok(Termination { rt, term, int })
    }

    fn wait(mut self) {
        self.rt.block_on(async {
            tokio::select! {
                _ = self.term.recv() => {}
                _ = self.int.recv() => {}
            }
        });
    }
}

fn write_stats(shared: &Shared, path: &std::path::Path) -> std::io::Result<()> {
    // The periodic and the final write share the temporary file: one at a time.
    static WRITING: Mutex<()> = Mutex::new(());
    let _one = WRITING.lock().expect("stats write lock");
    let text = shared.0.lock().expect("state lock").stats().to_string();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

fn reader(dev: &tun_rs::SyncDevice, shared: &Shared, nets: &[Net]) {
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match dev.recv(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("ht-impair: read: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let packet = buf[..n].to_vec();
        let dir = match destination(&packet) {
            // The TUN's own link-local chatter (MLD reports when it comes up): never
            // forwarded traffic, so neither impaired nor counted.
            Some(ip) if ip.is_multicast() => continue,
            Some(ip) if nets.iter().any(|net| net.contains(ip)) => Dir::Down,
            _ => Dir::Up,
        };
        let now = Instant::now();
        let (lock, wake) = &**shared;
        let mut state = lock.lock().expect("state lock");
        let full = state.queue.len() >= QUEUE_LIMIT;
        let out = state.shaper(dir).admit(now, packet);
        for Scheduled { at, seq, packet } in out {
            if full {
                state.shaper(dir).counters.overflow += 1;
                continue;
            }
            state.order += 1;
            let order = state.order;
            state.queue.push(Item {
                at,
                order,
                dir,
                seq,
                packet,
            });
        }
        drop(state);
        wake.notify_one();
    }
}

fn writer(dev: &tun_rs::SyncDevice, shared: &Shared) {
    let (lock, wake) = &**shared;
    let mut due = Vec::new();
    loop {
        let mut state = lock.lock().expect("state lock");
        loop {
            let now = Instant::now();
            while state.queue.peek().is_some_and(|i| i.at <= now) {
                let item = state.queue.pop().expect("peeked");
                state.shaper(item.dir).released(item.seq);
                due.push(item.packet);
            }
            if !due.is_empty() {
                break;
            }
            state = match state.queue.peek().map(|i| i.at) {
                Some(at) => wake.wait_timeout(state, at - now).expect("state lock").0,
                None => wake.wait(state).expect("state lock"),
            };
        }
        drop(state);
        for packet in due.drain(..) {
            if let Err(e) = dev.send(&packet) {
                eprintln!("ht-impair: write: {e}");
            }
        }
    }
}
