//! A userspace `netem` for kernels without `sch_netem`: seeded delay, jitter, loss,
//! reordering, duplication, corruption and rate on packets a router namespace forwards.
//!
//! The `ht-impair` binary runs inside a router namespace (the topology's `lan`): policy
//! routing sends every packet that arrives on the chosen interfaces into a TUN device
//! (`ip rule add iif <dev> lookup <table>`, `default dev imp0` in that table); ht-impair
//! reads each packet, lets a [`Shaper`] decide its fate, and writes what survives back into
//! the TUN, where it arrives with `iif imp0` and is routed by the main table to its real
//! destination (no loop). The direction of a packet is told by its destination: towards
//! one of the client networks is [`Dir::Down`], anything else [`Dir::Up`].
//!
//! Every decision comes from a per-direction splitmix64 stream derived from the seed, and
//! each packet consumes the same number of draws whatever happens to it: with the same
//! seed and the same packet sequence (per direction) the decisions are the same.
//!
//! Semantics, close to netem's:
//! * `delay` + uniform `jitter` (±): jitter does not reorder (a packet never leaves before
//!   the one admitted before it in the same direction), so reordering is only `reorder`.
//! * `loss` %: dropped. `duplicate` %: sent twice. `corrupt` %: one random bit after the IP
//!   header flipped (the receiver's TCP/UDP checksum drops it, like netem's corruption).
//! * `reorder` %: the packet is held back `gap` longer than its delay, so packets admitted
//!   after it overtake it; [`Counters::reordered`] counts packets that really left after a
//!   later one.
//! * `rate` (bytes/s): a serialising link after the delay.
//!
//! [`Impairer`] starts the binary in a namespace and reads its counters.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::netns::Netns;
use crate::topology::bin;

/// splitmix64: tiny, deterministic, good enough for test decisions.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi], rounded to two decimals (printable, replayable parameters).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        let u = (self.next_u64() % 10_001) as f64 / 10_000.0;
        ((lo + u * (hi - lo)) * 100.0).round() / 100.0
    }
}

/// The impairment of one direction. Percentages are 0–100.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spec {
    /// Added to every packet.
    pub delay: Duration,
    /// Uniform ± around `delay` (never reorders).
    pub jitter: Duration,
    /// Packets dropped, %.
    pub loss: f64,
    /// Packets held back by `gap`, %.
    pub reorder: f64,
    /// How long a held-back packet waits beyond its delay.
    pub gap: Duration,
    /// Packets sent twice, %.
    pub duplicate: f64,
    /// Packets with one bit flipped, %.
    pub corrupt: f64,
    /// Link rate in bytes per second (`None`: unlimited).
    pub rate: Option<u64>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            reorder: 0.0,
            gap: Duration::from_millis(5),
            duplicate: 0.0,
            corrupt: 0.0,
            rate: None,
        }
    }
}

fn parse_ms(v: &str) -> Result<Duration, String> {
    let ms: f64 = v
        .strip_suffix("ms")
        .unwrap_or(v)
        .parse()
        .map_err(|_| format!("{v:?}: expected milliseconds like 12.5ms"))?;
    if !(0.0..=60_000.0).contains(&ms) {
        return Err(format!("{v:?}: expected 0 to 60000 ms"));
    }
    Ok(Duration::from_secs_f64(ms / 1000.0))
}

fn parse_pct(v: &str) -> Result<f64, String> {
    let p: f64 = v
        .strip_suffix('%')
        .unwrap_or(v)
        .parse()
        .map_err(|_| format!("{v:?}: expected a percentage like 1.5%"))?;
    if !(0.0..=100.0).contains(&p) {
        return Err(format!("{v:?}: expected 0 to 100 %"));
    }
    Ok(p)
}

impl std::str::FromStr for Spec {
    type Err = String;

    /// `delay=10ms,jitter=2ms,loss=1%,reorder=5%,gap=5ms,duplicate=1%,corrupt=0.5%,rate=1000000`
    /// (any subset; `none` or the empty string is no impairment).
    fn from_str(s: &str) -> Result<Spec, String> {
        let mut spec = Spec::default();
        for kv in s.split(',').map(str::trim).filter(|kv| !kv.is_empty()) {
            if kv == "none" {
                continue;
            }
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("{kv:?}: expected key=value"))?;
            match k {
                "delay" => spec.delay = parse_ms(v)?,
                "jitter" => spec.jitter = parse_ms(v)?,
                "gap" => spec.gap = parse_ms(v)?,
                "loss" => spec.loss = parse_pct(v)?,
                "reorder" => spec.reorder = parse_pct(v)?,
                "duplicate" => spec.duplicate = parse_pct(v)?,
                "corrupt" => spec.corrupt = parse_pct(v)?,
                "rate" => {
                    let r: u64 = v
                        .parse()
                        .map_err(|_| format!("{v:?}: expected bytes per second"))?;
                    spec.rate = (r > 0).then_some(r);
                }
                _ => return Err(format!("{k:?}: unknown impairment")),
            }
        }
        if spec.jitter > spec.delay {
            return Err("jitter must not exceed delay".into());
        }
        Ok(spec)
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Microsecond precision, no float noise: `12.41ms`, not `12.409999999999998ms`.
        let ms = |d: Duration| {
            let text = format!("{:.3}", d.as_secs_f64() * 1000.0);
            text.trim_end_matches('0').trim_end_matches('.').to_owned()
        };
        let pct = |p: f64| {
            let text = format!("{p:.4}");
            text.trim_end_matches('0').trim_end_matches('.').to_owned()
        };
        write!(
            f,
            "delay={}ms,jitter={}ms,loss={}%,reorder={}%,gap={}ms,duplicate={}%,corrupt={}%",
            ms(self.delay),
            ms(self.jitter),
            pct(self.loss),
            pct(self.reorder),
            ms(self.gap),
            pct(self.duplicate),
            pct(self.corrupt)
        )?;
        if let Some(rate) = self.rate {
            write!(f, ",rate={rate}")?;
        }
        Ok(())
    }
}

/// A packet's direction through the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From the client side (towards the relays).
    Up,
    /// Towards a client network.
    Down,
}

impl Dir {
    /// Its name in the stats file.
    pub fn name(self) -> &'static str {
        match self {
            Dir::Up => "up",
            Dir::Down => "down",
        }
    }
}

/// An IPv4 or IPv6 network, `addr/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Net {
    type Err = String;

    fn from_str(s: &str) -> Result<Net, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected addr/prefix"))?;
        let addr: IpAddr = a.parse().map_err(|_| format!("{a:?}: not an address"))?;
        let prefix: u8 = p.parse().map_err(|_| format!("{p:?}: not a prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("{s:?}: prefix longer than {max}"));
        }
        Ok(Net { addr, prefix })
    }
}

impl Net {
    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (a, b, bits) = match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => (
                u128::from(u32::from(a)) << 96,
                u128::from(u32::from(b)) << 96,
                self.prefix,
            ),
            (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), self.prefix),
            _ => return false,
        };
        let mask = if bits == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(bits))
        };
        a & mask == b & mask
    }
}

/// What happens to one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Dropped (nothing else applies).
    pub lose: bool,
    /// Sent twice.
    pub duplicate: bool,
    /// Held back by the spec's `gap`.
    pub hold: bool,
    /// Flip bit `.1` of byte `.0` (of the first copy).
    pub corrupt: Option<(usize, u8)>,
    /// Delay including jitter.
    pub delay: Duration,
}

/// Counters of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets read from the TUN.
    pub packets: u64,
    /// Packets written back (duplicates included).
    pub passed: u64,
    /// Packets dropped by `loss`.
    pub lost: u64,
    /// Extra copies sent.
    pub duplicated: u64,
    /// Packets held back by `reorder`.
    pub held: u64,
    /// Packets that left after a packet admitted later (real reordering).
    pub reordered: u64,
    /// Packets with a flipped bit.
    pub corrupted: u64,
    /// Packets dropped because the queue was full.
    pub overflow: u64,
}

impl Counters {
    /// `packets=… passed=… …`.
    pub fn line(&self) -> String {
        format!(
            "packets={} passed={} lost={} duplicated={} held={} reordered={} corrupted={} overflow={}",
            self.packets,
            self.passed,
            self.lost,
            self.duplicated,
            self.held,
            self.reordered,
            self.corrupted,
            self.overflow
        )
    }

    fn parse(line: &str) -> Option<Counters> {
        let field = |name: &str| -> Option<u64> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?
                .parse()
                .ok()
        };
        Some(Counters {
            packets: field("packets")?,
            passed: field("passed")?,
            lost: field("lost")?,
            duplicated: field("duplicated")?,
            held: field("held")?,
            reordered: field("reordered")?,
            corrupted: field("corrupted")?,
            overflow: field("overflow")?,
        })
    }
}

impl std::ops::Add for Counters {
    type Output = Counters;

    fn add(self, o: Counters) -> Counters {
        Counters {
            packets: self.packets + o.packets,
            passed: self.passed + o.passed,
            lost: self.lost + o.lost,
            duplicated: self.duplicated + o.duplicated,
            held: self.held + o.held,
            reordered: self.reordered + o.reordered,
            corrupted: self.corrupted + o.corrupted,
            overflow: self.overflow + o.overflow,
        }
    }
}

/// Both directions' counters (the stats file: one `up …` and one `down …` line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Towards the relays.
    pub up: Counters,
    /// Towards the client.
    pub down: Counters,
}

impl Stats {
    /// Parse the stats file's text.
    pub fn parse(text: &str) -> Option<Stats> {
        let line = |dir: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(dir)?.strip_prefix(' '))
                .and_then(Counters::parse)
        };
        Some(Stats {
            up: line("up")?,
            down: line("down")?,
        })
    }

    /// Both directions added.
    pub fn total(&self) -> Counters {
        self.up + self.down
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "up {}", self.up.line())?;
        writeln!(f, "down {}", self.down.line())
    }
}

/// One packet scheduled to leave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduled {
    /// When.
    pub at: Instant,
    /// Its admission number in its direction (a duplicate shares it).
    pub seq: u64,
    /// The bytes.
    pub packet: Vec<u8>,
}

/// The sans-IO core of one direction: packets and `now` go in, [`Scheduled`] packets come
/// out; the caller writes each at its time and reports it with [`Shaper::released`].
#[derive(Debug, Clone)]
pub struct Shaper {
    spec: Spec,
    rng: Rng,
    seq: u64,
    last_at: Option<Instant>,
    link_free: Option<Instant>,
    max_released: Option<u64>,
    /// What happened so far.
    pub counters: Counters,
}

impl Shaper {
    /// A shaper for direction `dir` of run `seed`.
    pub fn new(spec: Spec, seed: u64, dir: Dir) -> Shaper {
        let salt = match dir {
            Dir::Up => 0x7570,
            Dir::Down => 0x646f_776e,
        };
        Shaper {
            spec,
            rng: Rng(seed ^ salt),
            seq: 0,
            last_at: None,
            link_free: None,
            max_released: None,
            counters: Counters::default(),
        }
    }

    /// The fate of the next packet, `len` bytes whose IP header is `l4_offset` long. Always
    /// consumes seven draws, so later decisions do not depend on earlier outcomes.
    pub fn decide(&mut self, len: usize, l4_offset: usize) -> Decision {
        let s = self.spec;
        let u: [f64; 7] = std::array::from_fn(|_| self.rng.unit());
        let lose = u[0] * 100.0 < s.loss;
        let corrupt = (u[1] * 100.0 < s.corrupt && len > 0).then(|| {
            let (start, span) = if len > l4_offset {
                (l4_offset, len - l4_offset)
            } else {
                (0, len)
            };
            let at = start + ((u[4] * span as f64) as usize).min(span - 1);
            (at, (u[5] * 8.0) as u8 & 7)
        });
        let jitter = s.jitter.as_secs_f64() * (2.0 * u[2] - 1.0);
        let delay = Duration::from_secs_f64((s.delay.as_secs_f64() + jitter).max(0.0));
        Decision {
            lose,
            duplicate: !lose && u[3] * 100.0 < s.duplicate,
            hold: !lose && u[6] * 100.0 < s.reorder,
            corrupt: corrupt.filter(|_| !lose),
            delay,
        }
    }

    /// Admit `packet` at `now`: what leaves, and when (nothing if it is lost).
    pub fn admit(&mut self, now: Instant, mut packet: Vec<u8>) -> Vec<Scheduled> {
        let l4 = l4_offset(&packet);
        let d = self.decide(packet.len(), l4);
        let seq = self.seq;
        self.seq += 1;
        self.counters.packets += 1;
        if d.lose {
            self.counters.lost += 1;
            return Vec::new();
        }
        let mut at = now + d.delay;
        if let Some(rate) = self.spec.rate {
            let start = self.link_free.map_or(at, |f| f.max(at));
            at = start + Duration::from_secs_f64(packet.len() as f64 / rate as f64);
            self.link_free = Some(at);
        }
        if d.hold {
            self.counters.held += 1;
            at += self.spec.gap;
        } else {
            at = self.last_at.map_or(at, |last| last.max(at));
            self.last_at = Some(at);
        }
        let copy = d.duplicate.then(|| packet.clone());
        if let Some((byte, bit)) = d.corrupt {
            packet[byte] ^= 1 << bit;
            self.counters.corrupted += 1;
        }
        let mut out = vec![Scheduled { at, seq, packet }];
        if let Some(packet) = copy {
            self.counters.duplicated += 1;
            out.push(Scheduled { at, seq, packet });
        }
        out
    }

    /// A scheduled packet with admission number `seq` was written.
    pub fn released(&mut self, seq: u64) {
        self.counters.passed += 1;
        match self.max_released {
            Some(max) if seq < max => self.counters.reordered += 1,
            Some(max) if seq == max => {}
            _ => self.max_released = Some(seq),
        }
    }
}

/// The length of an IP packet's header(s) (0 if it is not a valid IP packet).
pub fn l4_offset(packet: &[u8]) -> usize {
    match etherparse::IpSlice::from_slice(packet) {
        Ok(ip) => {
            let payload = ip.payload().payload;
            (payload.as_ptr() as usize).saturating_sub(packet.as_ptr() as usize)
        }
        Err(_) => 0,
    }
}

/// The destination address of an IP packet.
pub fn destination(packet: &[u8]) -> Option<IpAddr> {
    etherparse::IpSlice::from_slice(packet)
        .ok()
        .map(|ip| ip.destination_addr())
}

/// How to run `ht-impair`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The seed of every decision.
    pub seed: u64,
    /// Towards the relays.
    pub up: Spec,
    /// Towards the client.
    pub down: Spec,
    /// Interfaces whose incoming packets are impaired.
    pub iifs: Vec<String>,
    /// Destinations that make a packet [`Dir::Down`].
    pub client_nets: Vec<String>,
}

impl Config {
    /// Impair everything the topology's `lan` router forwards between the client
    /// (`eth-c`, 10.10.0.0/24) and both relays (`eth-a`, `eth-b`).
    pub fn lan(seed: u64, up: Spec, down: Spec) -> Config {
        Config {
            seed,
            up,
            down,
            iifs: ["eth-c", "eth-a", "eth-b"].map(String::from).into(),
            client_nets: vec!["10.10.0.0/24".into()],
        }
    }
}

/// A running `ht-impair` in a namespace; killed with the namespace if not stopped.
#[derive(Debug)]
pub struct Impairer<'a> {
    ns: &'a Netns,
    pid: u32,
    stats: PathBuf,
    log: PathBuf,
}

impl<'a> Impairer<'a> {
    /// Start `ht-impair` in `ns` (files in `dir`) and wait until its TUN and rules are in
    /// place (it writes its stats file then).
    pub fn start(ns: &'a Netns, config: &Config, dir: &Path) -> Impairer<'a> {
        let stats = dir.join(format!("impair-{}.stats", config.seed));
        let log = dir.join(format!("impair-{}.log", config.seed));
        let _ = std::fs::remove_file(&stats);
        let (up, down) = (config.up.to_string(), config.down.to_string());
        let seed = config.seed.to_string();
        let stats_arg = stats.to_string_lossy().into_owned();
        let mut args = vec![
            "--seed", &seed, "--up", &up, "--down", &down, "--stats", &stats_arg,
        ];
        for iif in &config.iifs {
            args.extend(["--iif", iif]);
        }
        for net in &config.client_nets {
            args.extend(["--client-net", net]);
        }
        let pid = ns.spawn_logged(&bin("ht-impair"), &args, &log);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !stats.exists() {
            assert!(
                ns.running(pid),
                "ht-impair exited: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            assert!(Instant::now() < deadline, "ht-impair did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Impairer {
            ns,
            pid,
            stats,
            log,
        }
    }

    /// The counters so far (the file is rewritten every 100 ms).
    pub fn stats(&self) -> Stats {
        let text = std::fs::read_to_string(&self.stats).unwrap_or_default();
        Stats::parse(&text).unwrap_or_else(|| panic!("bad ht-impair stats: {text:?}"))
    }

    /// Stop it (SIGTERM: it writes its final counters and removes its rules; the TUN and
    /// its route go with the process); the final counters.
    pub fn stop(self) -> Stats {
        let status = self.ns.stop(self.pid, "TERM", Duration::from_secs(5));
        assert!(
            status.is_some_and(|s| s.success()),
            "ht-impair did not stop cleanly ({status:?}): {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        self.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 20, 1, 2]);
        p[16..20].copy_from_slice(&[10, 10, 0, 2]);
        p
    }

    #[test]
    fn spec_round_trips_and_rejects_nonsense() {
        let s: Spec =
            "delay=10ms,jitter=2.5ms,loss=1.5%,reorder=5%,duplicate=1%,corrupt=0.5%,rate=1000"
                .parse()
                .unwrap();
        assert_eq!(s.to_string().parse::<Spec>().unwrap(), s);
        assert_eq!("none".parse::<Spec>().unwrap(), Spec::default());
        for bad in ["loss=101%", "delay=-1ms", "jitter=5ms", "speed=1", "loss"] {
            assert!(bad.parse::<Spec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn nets_contain_what_they_should() {
        let n: Net = "10.10.0.0/24".parse().unwrap();
        assert!(n.contains("10.10.0.200".parse().unwrap()));
        assert!(!n.contains("10.10.1.2".parse().unwrap()));
        assert!(!n.contains("fd10::2".parse().unwrap()));
        let v6: Net = "fd10::/64".parse().unwrap();
        assert!(v6.contains("fd10::2".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Net>().is_err());
    }

    #[test]
    fn same_seed_same_decisions_other_seed_others() {
        let spec: Spec = "delay=5ms,jitter=2ms,loss=10%,reorder=10%,duplicate=10%,corrupt=10%"
            .parse()
            .unwrap();
        let run = |seed| {
            let mut s = Shaper::new(spec, seed, Dir::Down);
            (0..2000)
                .map(|i| s.decide(60 + i % 1400, 20))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let d = run(7);
        let frac = |f: &dyn Fn(&Decision) -> bool| d.iter().filter(|x| f(x)).count();
        // 10 % each of 2000: far from 0 and far from everything.
        for (what, n) in [
            ("lose", frac(&|x| x.lose)),
            ("dup", frac(&|x| x.duplicate)),
            ("hold", frac(&|x| x.hold)),
            ("corrupt", frac(&|x| x.corrupt.is_some())),
        ] {
            assert!((120..=280).contains(&n), "{what}: {n} of 2000");
        }
        // Corruption lands after the IP header.
        assert!(d.iter().filter_map(|x| x.corrupt).all(|(at, _)| at >= 20));
    }

    #[test]
    fn rate_serialises_packets() {
        let t0 = Instant::now();
        let mut s = Shaper::new("delay=10ms,rate=1000".parse().unwrap(), 1, Dir::Up);
        let first = s.admit(t0, packet(500));
        let second = s.admit(t0, packet(500));
        assert_eq!(first[0].at, t0 + Duration::from_millis(510));
        assert_eq!(second[0].at, t0 + Duration::from_millis(1010));
    }

    #[test]
    fn shaper_loses_delays_duplicates_and_reorders() {
        let t0 = Instant::now();
        let mut all_lost = Shaper::new("loss=100%".parse().unwrap(), 1, Dir::Up);
        assert!(all_lost.admit(t0, packet(100)).is_empty());
        assert_eq!(all_lost.counters.lost, 1);

        let mut s = Shaper::new(
            "delay=50ms,reorder=30%,gap=10ms,duplicate=30%,corrupt=30%"
                .parse()
                .unwrap(),
            3,
            Dir::Down,
        );
        let mut out = Vec::new();
        for i in 0..200u32 {
            let now = t0 + Duration::from_millis(u64::from(i));
            for p in s.admit(now, packet(200)) {
                assert!(p.at >= now + Duration::from_millis(50), "delay kept");
                out.push(p);
            }
        }
        let c = s.counters;
        assert_eq!(c.packets, 200);
        assert_eq!(out.len() as u64, 200 + c.duplicated);
        assert!(
            c.held > 20 && c.duplicated > 20 && c.corrupted > 20,
            "{c:?}"
        );
        let corrupted = out.iter().filter(|p| p.packet != packet(200)).count() as u64;
        assert_eq!(corrupted, c.corrupted);
        out.sort_by_key(|p| p.at);
        for p in &out {
            s.released(p.seq);
        }
        assert_eq!(s.counters.passed, out.len() as u64);
        assert!(s.counters.reordered > 0 && s.counters.reordered <= c.held + c.duplicated);
    }
}
