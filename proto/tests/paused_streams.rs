//! Paused readers never freeze a session (docs/PROTOCOL.md §6.2, issue 27), on the
//! deterministic harness: streams are auto-tuned, then their application stops reading
//! without closing, while a new stream and an old active one must keep moving; the
//! receiver's memory stays under the stated bound; the paused streams resume intact. Then a
//! property test over random pause / resume / close / open schedules.
//!
//! The bounds these tests check, from §6.2, with `W0` the receiver's initial
//! `stream_window`, `P` its `session_window` and `N` its open streams:
//! * memory: stream bytes held ≤ N·W0 + P (`Connection::receive_bound`);
//! * progress: a stream whose reader reads gets at least W0 of credit per round trip, so
//!   16 MiB take at most ⌈16 MiB / W0⌉ + 4 round trips, whatever the other streams do.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proto::sim::{App, LinkConfig, Pair, PairConfig, Pattern};
use proto::{Connection, Destination, Event, Read, Settings, StreamId, StreamKind};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// One-way latency of each simulated leg.
const LATENCY: Duration = Duration::from_millis(10);
const RTT: Duration = Duration::from_millis(20);

/// One download (exit → client) of the test application.
#[derive(Debug, Clone, Default)]
struct Flow {
    id: Option<StreamId>,
    /// The exit writes this many bytes in all, then `Fin`.
    size: u64,
    /// The exit writes no further than this for now.
    write_limit: u64,
    written: u64,
    fin_sent: bool,
    /// The client reads no further than this (`None`: no limit): the app pauses there.
    pause_at: Option<u64>,
    read: u64,
    fin_read: bool,
    /// The client's app closed it (reset) on purpose.
    closed: bool,
}

impl Flow {
    fn new(size: u64, pause_at: Option<u64>) -> Self {
        Flow {
            size,
            write_limit: size,
            pause_at,
            ..Flow::default()
        }
    }

    fn done(&self) -> bool {
        self.closed || (self.fin_read && self.read == self.size)
    }
}

/// Downloads with per-flow sizes and pause points; it checks the memory bound at every step.
#[derive(Debug, Default)]
struct Downloads {
    flows: Vec<Flow>,
    by_id: HashMap<StreamId, usize>,
    pattern: Pattern,
    corrupt: u64,
    resets: u64,
    /// The most stream bytes the client held at any step, and its bound then.
    max_held: u64,
    /// The first step at which the client held more than its bound, if any.
    violation: Option<String>,
    /// Pause points are obeyed only while this is set.
    pausing: bool,
}

impl Downloads {
    fn add(&mut self, flow: Flow) -> usize {
        self.flows.push(flow);
        self.flows.len() - 1
    }

    fn all_done(&self) -> bool {
        self.flows.iter().all(Flow::done)
    }

    fn check_memory(&mut self, client: &Connection) {
        let held = client.held_bytes();
        let bound = client.receive_bound();
        let (pool_used, pool) = client.credit_pool();
        self.max_held = self.max_held.max(held);
        if (held > bound || pool_used > pool) && self.violation.is_none() {
            self.violation = Some(format!(
                "held {held} > bound {bound} or pool {pool_used} > {pool} with {} streams",
                client.stream_count()
            ));
        }
    }

    fn open(&mut self, client: &mut Connection) {
        for (i, f) in self.flows.iter_mut().enumerate() {
            if f.id.is_some() || f.closed {
                continue;
            }
            let dest = Destination::Addr(([192, 0, 2, 1], 443).into());
            match client.open_stream(StreamKind::Tcp, dest) {
                Ok(id) => {
                    // A download: the app sends nothing (half-close at once).
                    client.stream_finish(id).expect("finish");
                    f.id = Some(id);
                    self.by_id.insert(id, i);
                }
                Err(_) => return,
            }
        }
    }

    fn write(pattern: &Pattern, exit: &mut Connection, id: StreamId, f: &mut Flow) {
        let limit = f.write_limit.min(f.size);
        while f.written < limit {
            let len = usize::try_from(limit - f.written).unwrap_or(usize::MAX);
            let chunk = pattern.slice(id, f.written, len);
            match exit.stream_write(id, &chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => f.written += n as u64,
            }
        }
        if f.written == f.size && !f.fin_sent && exit.stream_finish(id).is_ok() {
            f.fin_sent = true;
        }
    }

    fn read(
        now: Instant,
        client: &mut Connection,
        id: StreamId,
        f: &mut Flow,
        pausing: bool,
    ) -> u64 {
        let mut corrupt = 0;
        loop {
            let room = match (pausing, f.pause_at) {
                (true, Some(at)) => at.saturating_sub(f.read),
                _ => u64::MAX,
            };
            if room == 0 {
                return corrupt;
            }
            let max = usize::try_from(room).unwrap_or(usize::MAX);
            match client.stream_read(now, id, max) {
                Ok(Read::Data(d)) => {
                    corrupt += u64::from(!Pattern::matches(id, f.read, &d));
                    f.read += d.len() as u64;
                }
                Ok(Read::Fin) => {
                    f.fin_read = true;
                    return corrupt;
                }
                Ok(Read::WouldBlock) | Err(_) => return corrupt,
            }
        }
    }
}

impl App for Downloads {
    fn poll(&mut self, now: Instant, client: &mut Connection, exit: &mut Connection) {
        self.open(client);
        for f in &mut self.flows {
            let Some(id) = f.id else { continue };
            if f.closed {
                continue;
            }
            if exit.has_stream(id) {
                Downloads::write(&self.pattern, exit, id, f);
            }
            if client.has_stream(id) {
                self.corrupt += Downloads::read(now, client, id, f, self.pausing);
            }
        }
        self.check_memory(client);
    }

    fn client_event(&mut self, _: Instant, _: &mut Connection, event: Event) {
        if let Event::StreamReset { .. } = event {
            self.resets += 1;
        }
    }

    fn exit_event(&mut self, _: Instant, conn: &mut Connection, event: Event) {
        if let Event::StreamOpened { id, .. } = event {
            conn.accept_stream(id).expect("accept");
        }
    }
}

fn pair(client: Settings) -> Pair {
    let link = LinkConfig {
        latency: LATENCY,
        bandwidth: None,
    };
    Pair::new(PairConfig {
        client,
        exit: Settings::default(),
        up: link,
        down: link,
    })
    .expect("handshake")
}

/// The longest 16 MiB may take for a stream that is read: ⌈16 MiB / W0⌉ + 4 round trips.
fn progress_bound(w0: u64) -> Duration {
    RTT * u32::try_from((16 * MIB).div_ceil(w0) + 4).expect("small")
}

/// `paused` streams read `read_first` bytes each (auto-tuning their windows as far as the
/// pool lets them), then their app stops reading; one stream stays active throughout. A
/// new stream and the active one must each move 16 MiB within `progress_bound`, the
/// client's memory must stay under its bound, and every paused stream must finish intact
/// once read again.
fn paused_streams_do_not_stop_the_others(paused: usize, read_first: u64) {
    let settings = Settings::default();
    let w0 = u64::from(settings.stream_window);
    let pool = u64::from(settings.session_window);
    let mut pair = pair(settings);
    let mut app = Downloads {
        pausing: true,
        ..Downloads::default()
    };
    let hogs: Vec<usize> = (0..paused)
        .map(|_| app.add(Flow::new(2 * read_first + MIB, Some(read_first))))
        .collect();
    let active = app.add(Flow::new(read_first + 16 * MIB, None));
    app.flows[active].write_limit = read_first;

    // Phase 1: everyone reads; then the hogs pause with their windows full.
    pair.run(&mut app, Duration::from_secs(600), |a| {
        a.flows[active].read == read_first && hogs.iter().all(|&i| a.flows[i].read == read_first)
    })
    .expect("the streams reach their pause points");
    pair.idle(Duration::from_millis(200)).expect("idle");
    pair.run(&mut app, Duration::from_secs(1), |_| false).ok();
    let held = pair.client.held_bytes();
    let (pool_used, _) = pair.client.credit_pool();
    let paused_now = pair.client.paused_streams(pair.now + proto::PAUSED_AFTER);
    eprintln!(
        "{paused} paused: client holds {} KiB (bound {} KiB), pool {} of {} KiB in use, {} streams seen as paused",
        held / KIB,
        pair.client.receive_bound() / KIB,
        pool_used / KIB,
        pool / KIB,
        paused_now.len()
    );
    assert_eq!(paused_now.len(), paused, "every hog is reported as paused");
    assert!(
        paused_now.iter().all(|p| p.held > 0 && p.credit >= p.held),
        "{paused_now:?}"
    );
    // The scenario is the hard one: the hogs hold at least what froze the old rule (the
    // whole pool), or, for a single hog, a window auto-tuned well past its initial one.
    let hogs_hold: u64 = paused_now.iter().map(|p| p.held).sum();
    if paused >= 8 {
        assert!(
            hogs_hold >= pool.min(paused as u64 * w0),
            "the hogs hold only {hogs_hold} bytes"
        );
    } else {
        assert!(hogs_hold >= 4 * w0, "the hog holds only {hogs_hold} bytes");
    }

    // Phase 2: a new stream and the old active one each move 16 MiB.
    let start = pair.now;
    let fresh = app.add(Flow::new(16 * MIB, None));
    app.flows[active].write_limit += 16 * MIB;
    let mut finished: [Option<Duration>; 2] = [None; 2];
    while finished.iter().any(Option::is_none) {
        pair.run(&mut app, progress_bound(w0) * 2, |a| {
            (a.flows[fresh].read == 16 * MIB && finished[0].is_none())
                || (a.flows[active].read == read_first + 16 * MIB && finished[1].is_none())
        })
        .unwrap_or_else(|e| {
            panic!(
                "{paused} paused: new stream {} / active {} bytes after {:?}: {e:?}",
                app.flows[fresh].read,
                app.flows[active].read - read_first,
                pair.now - start
            )
        });
        let t = pair.now - start;
        if app.flows[fresh].read == 16 * MIB && finished[0].is_none() {
            finished[0] = Some(t);
        }
        if app.flows[active].read == read_first + 16 * MIB && finished[1].is_none() {
            finished[1] = Some(t);
        }
    }
    let bound = progress_bound(w0);
    eprintln!(
        "{paused} paused: new stream 16 MiB in {:?}, active stream 16 MiB in {:?} (bound {bound:?})",
        finished[0].unwrap(),
        finished[1].unwrap()
    );
    for (what, t) in ["new", "active"].iter().zip(finished) {
        let t = t.expect("finished");
        assert!(
            t <= bound,
            "{paused} paused: the {what} stream took {t:?} > {bound:?}"
        );
    }
    assert!(
        hogs.iter().all(|&i| app.flows[i].read == read_first),
        "the hogs stayed paused"
    );

    // Phase 3: the hogs' apps read again; everything arrives intact.
    app.pausing = false;
    pair.run(&mut app, Duration::from_secs(600), Downloads::all_done)
        .expect("the paused streams finish once read");
    assert_eq!(app.corrupt, 0, "pattern mismatches");
    assert_eq!(app.resets, 0, "stream resets");
    assert!(app.violation.is_none(), "{:?}", app.violation);
    let stated = paused as u64 * w0 + 2 * w0 + pool;
    eprintln!(
        "{paused} paused: the client held at most {} KiB (stated bound with {} streams: {} KiB)",
        app.max_held / KIB,
        paused + 2,
        stated / KIB
    );
    assert!(app.max_held <= stated);
    assert_eq!(pair.client.held_bytes(), 0);
    assert_eq!(pair.client.credit_pool().0, 0, "the pool is free again");
}

#[test]
fn one_paused_stream() {
    paused_streams_do_not_stop_the_others(1, 32 * MIB);
}

#[test]
fn eight_paused_streams() {
    paused_streams_do_not_stop_the_others(8, 32 * MIB);
}

#[test]
fn sixty_four_paused_streams() {
    paused_streams_do_not_stop_the_others(64, 4 * MIB);
}

#[test]
fn a_thousand_paused_streams() {
    paused_streams_do_not_stop_the_others(1000, 512 * KIB);
}

/// One step of a random schedule.
#[derive(Debug, Clone)]
enum Step {
    /// The app of stream `i` stops reading at what it has read so far.
    Pause(usize),
    /// ... reads again.
    Resume(usize),
    /// ... closes it (reset), unread bytes and all.
    Close(usize),
    /// A new download of this many KiB starts.
    Open(u64),
    /// Time passes (ms).
    Run(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..12usize).prop_map(Step::Pause),
        (0..12usize).prop_map(Step::Resume),
        (0..12usize).prop_map(Step::Close),
        (16..2048u64).prop_map(Step::Open),
        (1..400u64).prop_map(Step::Run),
    ]
}

/// Small windows so that a few streams contend for the pool.
fn small() -> Settings {
    Settings {
        stream_window: 16 * 1024,
        max_stream_window: 256 * 1024,
        session_window: 512 * 1024,
        ..Settings::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever the other streams do, the receiver stays under its bound, a stream that is
    /// always read keeps moving at W0 per round trip, and every stream not closed ends
    /// intact once its app reads again.
    #[test]
    fn random_pause_resume_close_schedules(steps in proptest::collection::vec(step(), 1..40)) {
        let settings = small();
        let w0 = u64::from(settings.stream_window);
        let mut pair = pair(settings);
        let mut app = Downloads { pausing: true, ..Downloads::default() };
        // Stream 0 is read all along and never runs dry: the witness of progress.
        let witness = app.add(Flow::new(u64::MAX / 2, None));
        for _ in 0..4 {
            app.add(Flow::new(4 * MIB, None));
        }
        for step in steps {
            let before = (pair.now, app.flows[witness].read);
            match step {
                Step::Pause(i) | Step::Resume(i) | Step::Close(i) if i == witness || i >= app.flows.len() => {}
                Step::Pause(i) => app.flows[i].pause_at = Some(app.flows[i].read),
                Step::Resume(i) => app.flows[i].pause_at = None,
                Step::Close(i) => {
                    let f = &mut app.flows[i];
                    if let (Some(id), false) = (f.id, f.done()) {
                        if pair.client.has_stream(id) {
                            pair.client.reset_stream(id, proto::ResetCode::Cancelled).expect("reset");
                        }
                        f.closed = true;
                    }
                }
                Step::Open(kib) => {
                    app.add(Flow::new(kib * KIB, None));
                }
                Step::Run(ms) => {
                    pair.run(&mut app, Duration::from_millis(ms), |_| false).ok();
                    let elapsed = pair.now - before.0;
                    let moved = app.flows[witness].read - before.1;
                    // At least W0 per round trip once the stream is open and a round trip
                    // has passed for the first grant (two round trips of slack).
                    let rtts = (elapsed.as_millis() / RTT.as_millis()) as u64;
                    let owed = rtts.saturating_sub(2) * w0;
                    prop_assert!(moved >= owed, "the witness moved {moved} bytes in {elapsed:?} (owed {owed})");
                }
            }
            prop_assert!(app.violation.is_none(), "{:?}", app.violation);
        }
        // Every app reads again: all that was not closed arrives, intact.
        app.flows[witness].size = app.flows[witness].written;
        app.flows[witness].write_limit = app.flows[witness].written;
        app.pausing = false;
        pair.run(&mut app, Duration::from_secs(120), Downloads::all_done)
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(app.corrupt, 0);
        prop_assert_eq!(app.resets, 0);
        prop_assert!(app.violation.is_none(), "{:?}", app.violation);
        prop_assert_eq!(pair.client.held_bytes(), 0);
        prop_assert_eq!(pair.client.credit_pool().0, 0);
    }
}
