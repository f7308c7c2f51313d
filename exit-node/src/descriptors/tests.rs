use super::*;

/// Acquire until refused; how many were granted.
fn fill(b: &mut Budget, key: SessionKey) -> usize {
    let mut n = 0;
    while b.try_acquire(key).is_ok() {
        n += 1;
    }
    n
}

#[test]
fn reserve_is_an_eighth_but_at_least_64() {
    assert_eq!(Budget::reserve(256), 64);
    assert_eq!(Budget::reserve(1024), 128);
    assert_eq!(Budget::reserve(1 << 20), 1 << 17);
    assert_eq!(Budget::new(256, 0).total(), 192);
    assert_eq!(Budget::new(40, 0).total(), 0, "a tiny limit has no budget");
}

#[test]
fn acquire_and_release_return_to_zero() {
    let mut b = Budget::new(256, 0);
    let s = b.open_session();
    assert_eq!(b.share(), 96, "alone, a session gets half of 192");
    assert_eq!(fill(&mut b, s), 96);
    assert_eq!(
        b.try_acquire(s),
        Err(Refusal::SessionShare {
            held: 96,
            share: 96
        })
    );
    b.release(s);
    assert_eq!(b.held(s), 95);
    assert!(
        b.try_acquire(s).is_ok(),
        "a released descriptor can be taken again"
    );
    for _ in 0..96 {
        b.release(s);
    }
    assert_eq!((b.used(), b.held(s)), (0, 0));
    b.release(s);
    assert_eq!(b.used(), 0, "an extra release does not underflow");
}

#[test]
fn a_newcomer_gets_its_share_while_the_first_session_holds_all_it_may() {
    let mut b = Budget::new(256, 0);
    let flood = b.open_session();
    assert_eq!(fill(&mut b, flood), 96);
    let good = b.open_session();
    assert_eq!(b.share(), 64);
    assert_eq!(fill(&mut b, good), 64, "the newcomer gets a full share");
    assert!(
        b.try_acquire(flood).is_err(),
        "over its new share, the first session gets nothing more"
    );
    // The flood's flows close one by one: it may take again only once under its share.
    for _ in 0..32 {
        b.release(flood);
    }
    assert_eq!(b.held(flood), 64);
    assert!(b.try_acquire(flood).is_err());
    b.release(flood);
    assert!(b.try_acquire(flood).is_ok());
}

#[test]
fn every_session_at_its_share_leaves_room_for_one_more() {
    for sessions in 1..20 {
        let mut b = Budget::new(1024, 0);
        let keys: Vec<_> = (0..sessions).map(|_| b.open_session()).collect();
        for &k in &keys {
            fill(&mut b, k);
        }
        let newcomer = b.open_session();
        let share = b.share();
        assert_eq!(fill(&mut b, newcomer), share, "{sessions} sessions before");
        assert!(b.used() <= b.total());
    }
}

#[test]
fn the_node_budget_bounds_the_sum_of_shares() {
    // More sessions than descriptors: each may hold one, but only `total` in all.
    let mut b = Budget::new(72, 0);
    assert_eq!(b.total(), 8);
    let keys: Vec<_> = (0..12).map(|_| b.open_session()).collect();
    assert_eq!(b.share(), 1);
    let granted: usize = keys.iter().map(|&k| fill(&mut b, k)).sum();
    assert_eq!(granted, 8);
    assert_eq!(
        b.try_acquire(keys[11]),
        Err(Refusal::NodeBudget { used: 8, total: 8 })
    );
}

#[test]
fn ended_sessions_leave_the_share_and_release_what_they_held_later() {
    let mut b = Budget::new(256, 0);
    let a = b.open_session();
    let gone = b.open_session();
    assert_eq!(fill(&mut b, gone), 64);
    b.close_session(gone);
    assert_eq!(b.sessions(), 1);
    assert_eq!(
        b.share(),
        96,
        "the ended session no longer divides the budget"
    );
    assert!(
        b.try_acquire(gone).is_err(),
        "an ended session takes nothing"
    );
    // Its sockets are still open: the node budget still counts them.
    assert_eq!(fill(&mut b, a), 96);
    assert_eq!(b.used(), 160);
    for _ in 0..64 {
        b.release(gone);
    }
    assert_eq!(b.used(), 96);
    assert!(!b.sessions.contains_key(&gone), "the account is forgotten");
    b.close_session(gone);
    assert_eq!(b.sessions(), 1, "closing twice changes nothing");
}

#[test]
fn a_lower_limit_shrinks_the_share_without_taking_sockets_away() {
    let mut b = Budget::new(1 << 20, 0);
    let s = b.open_session();
    for _ in 0..200 {
        b.try_acquire(s).unwrap();
    }
    b.set_limit(256);
    assert_eq!(b.share(), 96);
    assert_eq!(b.held(s), 200);
    assert!(b.try_acquire(s).is_err());
}

#[test]
fn a_configured_cap_bounds_the_fair_share() {
    let mut b = Budget::new(1 << 20, 10);
    let s = b.open_session();
    assert_eq!(b.share(), 10);
    assert_eq!(fill(&mut b, s), 10);
}

#[test]
fn permits_return_their_descriptor_when_dropped() {
    let fds = Descriptors::new(Budget::new(1 << 20, 3));
    let session = fds.session();
    let permits: Vec<Permit> = (0..3).map(|_| session.try_acquire().unwrap()).collect();
    assert!(matches!(
        session.try_acquire(),
        Err(Refusal::SessionShare { held: 3, .. })
    ));
    let shared = Arc::new(permits);
    let clone = shared.clone();
    drop(shared);
    assert_eq!(fds.used(), 3, "a clone still holds the sockets");
    drop(clone);
    assert_eq!((fds.used(), session.held()), (0, 0));
    let held = session.try_acquire().unwrap();
    drop(session);
    assert_eq!(
        fds.used(),
        1,
        "the session ended but its socket is still open"
    );
    drop(held);
    assert_eq!(fds.used(), 0);
}

#[test]
fn the_soft_limit_is_raised_to_the_hard_limit() {
    let (_, hard) = nofile_limits().expect("getrlimit");
    let raised = raise_nofile_limit();
    assert_eq!(raised, nofile_limits().map(|(soft, _)| soft));
    // An unlimited hard limit cannot be the soft one (the kernel caps it at fs.nr_open).
    if hard != nix::sys::resource::RLIM_INFINITY {
        assert_eq!(raised, Some(hard));
    }
}
