//! The 4404 rule, case by case (docs/PROTOCOL.md §7.4).

use std::time::{Duration, Instant};

use proto::Leg;

use super::{Confirmed, UnknownSession, Verdict};

const WINDOW: Duration = Duration::from_secs(10);

fn rule() -> (UnknownSession, Instant) {
    (UnknownSession::new(WINDOW), Instant::now())
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn a_4404_on_one_leg_is_advisory_while_records_arrive() {
    let (mut u, t0) = rule();
    // A relay answers the up leg's attaches with 4404 every 2 s; in between the down leg
    // delivers authenticated records (the last one 1 s after each 4404).
    let mut last_auth = Some(t0);
    for i in 0..20u64 {
        let now = t0 + secs(2 * i + 1);
        assert_eq!(
            u.on_unknown(now, Leg::Up, true, last_auth),
            Verdict::RetryLeg
        );
        assert_eq!(u.poll_timeout(), Some(now + WINDOW), "round {i}");
        last_auth = Some(now + secs(1));
        assert_eq!(u.handle_timeout(now + secs(1), last_auth), None);
        assert!(!u.suspect(), "round {i}");
    }
    assert_eq!(u.handle_timeout(t0 + 100 * WINDOW, last_auth), None);
}

#[test]
fn repeated_4404_on_the_same_leg_does_not_extend_the_window() {
    let (mut u, t0) = rule();
    let auth = Some(t0 - secs(1));
    assert_eq!(u.on_unknown(t0, Leg::Up, true, auth), Verdict::RetryLeg);
    assert_eq!(
        u.on_unknown(t0 + secs(4), Leg::Up, true, auth),
        Verdict::RetryLeg
    );
    assert_eq!(u.poll_timeout(), Some(t0 + WINDOW));
    assert_eq!(
        u.handle_timeout(t0 + WINDOW - Duration::from_millis(1), auth),
        None
    );
    assert_eq!(
        u.handle_timeout(t0 + WINDOW, auth),
        Some(Confirmed::Silent(WINDOW))
    );
    assert!(!u.suspect(), "a confirmed loss starts afresh");
}

#[test]
fn authenticated_input_before_the_4404_proves_nothing() {
    let (mut u, t0) = rule();
    // The last record arrived just before the exit restarted; then both legs get 4404.
    let auth = Some(t0);
    assert_eq!(
        u.on_unknown(t0 + secs(1), Leg::Up, true, auth),
        Verdict::RetryLeg
    );
    assert_eq!(
        u.handle_timeout(t0 + secs(1) + WINDOW, auth),
        Some(Confirmed::Silent(WINDOW))
    );
}

#[test]
fn both_legs_4404_with_nothing_in_between_is_a_loss_at_once() {
    for first in Leg::BOTH {
        let (mut u, t0) = rule();
        let other = Leg::BOTH[1 - first.index()];
        assert_eq!(u.on_unknown(t0, first, true, None), Verdict::RetryLeg);
        assert_eq!(
            u.on_unknown(t0 + Duration::from_millis(300), other, true, None),
            Verdict::Lost(Confirmed::BothLegs)
        );
        assert!(!u.suspect());
    }
}

#[test]
fn something_authenticated_between_the_two_clears_the_first() {
    let (mut u, t0) = rule();
    assert_eq!(u.on_unknown(t0, Leg::Up, true, None), Verdict::RetryLeg);
    let t1 = t0 + secs(2);
    let auth = Some(t0 + secs(1));
    assert_eq!(u.on_unknown(t1, Leg::Down, true, auth), Verdict::RetryLeg);
    assert_eq!(
        u.poll_timeout(),
        Some(t1 + WINDOW),
        "a new window from the second"
    );
}

#[test]
fn without_expected_evidence_only_the_other_leg_confirms() {
    // Down leg 4404 while the up leg is attached and fallback is off: the exit cannot send
    // anything, so silence proves nothing.
    let (mut u, t0) = rule();
    assert_eq!(u.on_unknown(t0, Leg::Down, false, None), Verdict::RetryLeg);
    assert_eq!(u.poll_timeout(), None);
    assert_eq!(u.handle_timeout(t0 + 10 * WINDOW, None), None);
    assert!(u.suspect());
    assert_eq!(
        u.on_unknown(t0 + 10 * WINDOW, Leg::Up, true, None),
        Verdict::Lost(Confirmed::BothLegs)
    );
}

#[test]
fn a_later_4404_that_expects_evidence_starts_the_window() {
    let (mut u, t0) = rule();
    assert_eq!(u.on_unknown(t0, Leg::Down, false, None), Verdict::RetryLeg);
    let t1 = t0 + secs(3);
    assert_eq!(u.on_unknown(t1, Leg::Down, true, None), Verdict::RetryLeg);
    assert_eq!(u.poll_timeout(), Some(t1 + WINDOW));
}

#[test]
fn reset_forgets_everything() {
    let (mut u, t0) = rule();
    assert_eq!(u.on_unknown(t0, Leg::Up, true, None), Verdict::RetryLeg);
    u.reset();
    assert!(!u.suspect());
    assert_eq!(u.poll_timeout(), None);
    assert_eq!(u.on_unknown(t0, Leg::Down, true, None), Verdict::RetryLeg);
}
