//! The monitor's decisions under a simulated clock: no sockets, no sleeping.

use super::*;

const T: Duration = Duration::from_secs(6);
const MS: Duration = Duration::from_millis(1);

/// Armed work: `unacked` bytes whose oldest record went out at `oldest`, `streams` open.
fn work(unacked: usize, oldest: Option<Instant>, streams: usize) -> Work {
    Work {
        armed: true,
        unacked,
        streams,
        oldest_unacked: oldest,
    }
}

/// A monitor armed at `t0` with nothing outstanding but `streams`.
fn armed(t0: Instant, streams: usize) -> StallMonitor {
    let mut m = StallMonitor::new(T, t0);
    m.observe(t0, work(0, None, streams));
    m
}

#[test]
fn a_healthy_transfer_never_stalls() {
    let t0 = Instant::now();
    let mut m = armed(t0, 1);
    // Records arrive every 50 ms and acknowledge ours, so our oldest unacknowledged record
    // is always recent.
    for i in 1..=1000u32 {
        let now = t0 + 50 * MS * i;
        m.on_down_record(now);
        m.observe(now, work(100_000, Some(now - 30 * MS), 1));
        assert_eq!(m.check(now), None, "at {:?}", now - t0);
    }
}

#[test]
fn a_silent_down_leg_with_work_outstanding_is_reconnected_after_the_timeout() {
    let t0 = Instant::now();
    let mut m = armed(t0, 2);
    m.on_down_record(t0 + 100 * MS);
    // Our keepalive goes out and is never acknowledged; nothing arrives.
    m.observe(t0 + 2000 * MS, work(64, Some(t0 + 2000 * MS), 2));
    assert_eq!(m.poll_timeout(), Some(t0 + 100 * MS + T));
    assert_eq!(m.check(t0 + 100 * MS + T - MS), None);
    let stall = m.check(t0 + 100 * MS + T).expect("down stall");
    assert_eq!(stall.leg, Leg::Down);
    assert_eq!((stall.waited, stall.unacked, stall.streams), (T, 64, 2));
    assert!(stall.to_string().starts_with("down leg stalled for 6.0 s"));
    // One verdict, then quiet until the legs are attached again.
    assert_eq!(m.check(t0 + 10 * T), None);
    assert_eq!(m.poll_timeout(), None);
}

#[test]
fn records_unacknowledged_while_the_down_leg_delivers_blame_the_up_leg() {
    let t0 = Instant::now();
    let mut m = armed(t0, 1);
    // An upload: acks come back until 3 s; the record sent at 3 s never is; the exit's
    // keepalives keep arriving on the down leg (without acknowledging it).
    let sent = t0 + 3000 * MS;
    m.on_down_record(sent - MS);
    m.observe(sent, work(9000, Some(sent), 1));
    for s in [5, 8] {
        m.on_down_record(t0 + 1000 * MS * s);
        m.observe(t0 + 1000 * MS * s, work(9000, Some(sent), 1));
    }
    assert_eq!(m.poll_timeout(), Some(sent + T));
    assert_eq!(m.check(sent + T - MS), None);
    let stall = m.check(sent + T).expect("up stall");
    assert_eq!((stall.leg, stall.waited, stall.unacked), (Leg::Up, T, 9000));
    assert_eq!(
        stall.to_string(),
        "up leg stalled for 6.0 s with 9000 bytes unacked (the down leg still delivers)"
    );
}

#[test]
fn a_late_ack_of_an_old_record_does_not_restart_the_up_clock() {
    // The exit acknowledges an ack-only record of ours (sent just before the stall) only
    // with its next keepalive, 5 s later; the data records behind it are still stuck and
    // their age is what counts.
    let t0 = Instant::now();
    let mut m = armed(t0, 1);
    m.observe(t0, work(34 + 500_000, Some(t0), 1));
    let ping = t0 + 5000 * MS;
    m.on_down_record(ping);
    m.observe(ping, work(500_000, Some(t0 + 20 * MS), 1));
    assert_eq!(m.check(t0 + 20 * MS + T).map(|s| s.leg), Some(Leg::Up));
}

#[test]
fn unacked_records_with_a_silent_down_leg_blame_the_down_leg_not_the_up_leg() {
    // Acks travel on the down leg: if nothing arrives at all, the up leg cannot be judged.
    let t0 = Instant::now();
    let mut m = armed(t0, 1);
    m.observe(t0 + MS, work(1000, Some(t0 + MS), 1));
    let stall = m.check(t0 + T + MS).expect("stall");
    assert_eq!(stall.leg, Leg::Down);
}

#[test]
fn nothing_outstanding_is_never_a_stall() {
    // No streams, nothing unacknowledged: silence on the down leg is just an idle session
    // (proto's keepalives and leg timeout watch that).
    let t0 = Instant::now();
    let mut m = armed(t0, 0);
    assert_eq!(m.poll_timeout(), None);
    assert_eq!(m.check(t0 + 100 * T), None);
}

#[test]
fn unarmed_or_disabled_monitors_stay_quiet_and_rearming_restarts_the_down_clock() {
    let t0 = Instant::now();
    let mut m = StallMonitor::new(T, t0);
    let reconnecting = Work {
        armed: false,
        ..work(500, Some(t0), 3)
    };
    m.observe(t0, reconnecting);
    assert_eq!(
        m.check(t0 + 5 * T),
        None,
        "a leg is reconnecting: not judged"
    );
    // Both legs attached again at 40 s, the records sent again right after.
    let back = t0 + 40 * T / 6;
    m.observe(back, work(500, Some(back + MS), 3));
    assert_eq!(m.check(back + T - MS), None);
    assert_eq!(m.check(back + T).map(|s| s.leg), Some(Leg::Down));

    let mut off = StallMonitor::new(Duration::ZERO, t0);
    off.observe(t0, work(500, Some(t0), 3));
    assert_eq!((off.poll_timeout(), off.check(t0 + 100 * T)), (None, None));
}

#[test]
fn every_deadline_it_asks_for_yields_a_verdict() {
    // The driver re-arms its timer from poll_timeout; a deadline without a verdict would
    // make it spin. Try many orders of events.
    let t0 = Instant::now();
    for down_at in [0u32, 500, 2500, 7000] {
        for sent_at in [0u32, 1000, 3000] {
            let mut m = armed(t0, 0);
            m.observe(t0, work(1, Some(t0 + MS * sent_at), 0));
            if down_at > 0 {
                m.on_down_record(t0 + MS * down_at);
            }
            let due = m.poll_timeout().expect("work outstanding");
            assert!(m.check(due).is_some(), "down {down_at} sent {sent_at}");
        }
    }
}

#[test]
fn a_leg_that_stalls_again_soon_gets_twice_the_timeout_then_the_plain_one() {
    let t0 = Instant::now();
    let mut m = armed(t0, 1);
    let first = m.check(t0 + T).expect("first stall");
    assert_eq!(first.leg, Leg::Down);
    // Reattached at once: a fresh connection that needs more time (PMTU black hole).
    let back = t0 + T + 100 * MS;
    m.observe(back, work(0, None, 1));
    assert_eq!(m.poll_timeout(), Some(back + 2 * T));
    assert_eq!(
        m.check(back + T),
        None,
        "the plain timeout right after a stall"
    );
    let second = m
        .check(back + 2 * T)
        .expect("second stall, at twice the timeout");
    assert_eq!(second.waited, 2 * T);
    // Long after the last stall the plain timeout applies again.
    let later = back + 2 * T + REPEAT_WINDOW * T;
    m.observe(
        later,
        Work {
            armed: false,
            ..work(0, None, 1)
        },
    );
    m.observe(later, work(0, None, 1));
    assert_eq!(m.poll_timeout(), Some(later + T));
    assert_eq!(m.check(later + T).map(|s| s.waited), Some(T));
    // A deadline that falls where the doubled window ends is still a verdict (no spin).
    let mut m = armed(t0, 1);
    m.check(t0 + T).expect("stall");
    let late = t0 + T + (REPEAT_WINDOW - 1) * T;
    m.observe(late, work(0, None, 1));
    let due = m.poll_timeout().expect("armed");
    assert_eq!(due, t0 + T + REPEAT_WINDOW * T);
    assert!(m.check(due).is_some());
}
