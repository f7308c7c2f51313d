//! A node-wide budget of file descriptors for destination sockets (TCP dials, UDP flows,
//! ping sockets), shared fairly between sessions, so that one client cannot take the
//! descriptors every other client needs: their flows, but also the listeners' accepts, leg
//! reconnects, handshakes, DNS and the admin port (TESTPLAN §23).
//!
//! [`Budget`] is the sans-IO core: the process's soft `RLIMIT_NOFILE` goes in
//! ([`Budget::set_limit`]), sessions open and close, and each socket is one
//! [`Budget::try_acquire`] / [`Budget::release`]. The rule:
//!
//! * `total = soft − reserve`, with `reserve = max(64, soft / 8)` descriptors kept for
//!   everything that is not a destination socket;
//! * a session may hold `share = max(1, total / (sessions + 1))` (and at most
//!   `limits.max_dest_sockets_per_session` when that is set). The `+ 1` keeps one share
//!   free for a session that starts next: with every session at its share, `total / (n+1)`
//!   is still free, which is at least the newcomer's share `total / (n+2)`.
//!
//! A session over its share keeps what it holds (sockets are never taken away) but gets
//! no more until it is back under. [`Descriptors`] is the I/O shell: it re-reads the limit
//! (it may be changed at run time with `prlimit`), and hands out [`Permit`]s that give
//! their descriptor back when dropped — the stream's tasks hold the permit next to the
//! socket, so both go at the same moment.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::session::lock;

/// Descriptors always kept for listeners, legs, handshakes, DNS and the admin port.
pub const MIN_RESERVE: u64 = 64;

/// Why a destination socket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The session holds its fair share of the node's descriptors.
    #[error("the session holds its share of the exit's descriptors ({held} of {share})")]
    SessionShare {
        /// Destination sockets the session holds.
        held: usize,
        /// What it may hold now.
        share: usize,
    },
    /// Every descriptor of the node's budget is in use.
    #[error("the exit's descriptor budget is used up ({used} of {total})")]
    NodeBudget {
        /// Destination sockets held over all sessions.
        used: usize,
        /// The budget.
        total: usize,
    },
}

/// One session's account in the budget.
pub type SessionKey = u64;

#[derive(Debug, Default)]
struct Holding {
    held: usize,
    /// False once the session ended; the entry stays until its last socket is released.
    active: bool,
}

/// The budget core: no locks, no syscalls.
#[derive(Debug)]
pub struct Budget {
    soft_limit: u64,
    /// Fixed per-session cap; 0 = only the fair share.
    cap: usize,
    used: usize,
    active: usize,
    next_key: SessionKey,
    sessions: HashMap<SessionKey, Holding>,
}

impl Budget {
    /// A budget for a process whose soft descriptor limit is `soft_limit`; `cap` bounds each
    /// session further (0: no fixed cap).
    pub fn new(soft_limit: u64, cap: usize) -> Self {
        Budget {
            soft_limit,
            cap,
            used: 0,
            active: 0,
            next_key: 0,
            sessions: HashMap::new(),
        }
    }

    /// Descriptors kept out of the budget for a soft limit of `soft`.
    pub fn reserve(soft: u64) -> u64 {
        MIN_RESERVE.max(soft / 8)
    }

    /// The process's soft limit changed.
    pub fn set_limit(&mut self, soft_limit: u64) {
        self.soft_limit = soft_limit;
    }

    /// Destination sockets the node may hold over all sessions.
    pub fn total(&self) -> usize {
        let total = self
            .soft_limit
            .saturating_sub(Self::reserve(self.soft_limit));
        usize::try_from(total).unwrap_or(usize::MAX)
    }

    /// Destination sockets one session may hold now.
    pub fn share(&self) -> usize {
        let fair = (self.total() / (self.active + 1)).max(1);
        match self.cap {
            0 => fair,
            cap => fair.min(cap),
        }
    }

    /// Destination sockets held over all sessions.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Destination sockets `key` holds.
    pub fn held(&self, key: SessionKey) -> usize {
        self.sessions.get(&key).map_or(0, |h| h.held)
    }

    /// Sessions that count for the fair share.
    pub fn sessions(&self) -> usize {
        self.active
    }

    /// A new session's account.
    pub fn open_session(&mut self) -> SessionKey {
        let key = self.next_key;
        self.next_key += 1;
        self.sessions.insert(
            key,
            Holding {
                held: 0,
                active: true,
            },
        );
        self.active += 1;
        key
    }

    /// The session ended: it no longer counts for the share; what it still holds is
    /// released as its sockets close.
    pub fn close_session(&mut self, key: SessionKey) {
        if let Some(h) = self.sessions.get_mut(&key)
            && h.active
        {
            h.active = false;
            self.active -= 1;
            if h.held == 0 {
                self.sessions.remove(&key);
            }
        }
    }

    /// Take one descriptor for `key`'s next destination socket.
    pub fn try_acquire(&mut self, key: SessionKey) -> Result<(), Refusal> {
        let share = self.share();
        let total = self.total();
        let Some(h) = self.sessions.get_mut(&key).filter(|h| h.active) else {
            return Err(Refusal::SessionShare { held: 0, share: 0 });
        };
        if h.held >= share {
            return Err(Refusal::SessionShare {
                held: h.held,
                share,
            });
        }
        if self.used >= total {
            return Err(Refusal::NodeBudget {
                used: self.used,
                total,
            });
        }
        h.held += 1;
        self.used += 1;
        Ok(())
    }

    /// Give back one descriptor `key` acquired.
    pub fn release(&mut self, key: SessionKey) {
        let Some(h) = self.sessions.get_mut(&key) else {
            return;
        };
        if h.held == 0 {
            return;
        }
        h.held -= 1;
        self.used -= 1;
        if h.held == 0 && !h.active {
            self.sessions.remove(&key);
        }
    }
}

/// The process's descriptor limits (soft, hard), if they can be read.
pub fn nofile_limits() -> Option<(u64, u64)> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok()
}

/// Raise the soft descriptor limit to the hard limit (a service started with the usual
/// soft limit of 1024 would otherwise run out long before its hard limit) and log both.
/// Returns the soft limit in force afterwards.
pub fn raise_nofile_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, setrlimit};
    let (soft, hard) = nofile_limits()?;
    if soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(soft, hard, error = %e, "could not raise the descriptor limit");
        return Some(soft);
    }
    let now = nofile_limits().map_or(soft, |(s, _)| s);
    tracing::info!(
        soft_before = soft,
        hard,
        soft = now,
        reserve = Budget::reserve(now),
        "descriptor limit (RLIMIT_NOFILE)"
    );
    Some(now)
}

/// The budget shared by every session of a node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Descriptors {
    budget: Arc<Mutex<Budget>>,
}

impl Descriptors {
    /// Share `budget` between sessions.
    pub fn new(budget: Budget) -> Self {
        Descriptors {
            budget: Arc::new(Mutex::new(budget)),
        }
    }

    /// Open a session's account; closed when the last clone of the handle is dropped.
    pub fn session(&self) -> SessionFds {
        let key = lock(&self.budget).open_session();
        SessionFds(Arc::new(Account {
            budget: self.budget.clone(),
            key,
        }))
    }

    /// Destination sockets held over all sessions.
    pub fn used(&self) -> usize {
        lock(&self.budget).used()
    }
}

#[derive(Debug)]
struct Account {
    budget: Arc<Mutex<Budget>>,
    key: SessionKey,
}

impl Drop for Account {
    fn drop(&mut self) {
        lock(&self.budget).close_session(self.key);
    }
}

/// A session's handle on the budget. Clones share the account.
#[derive(Debug, Clone)]
pub struct SessionFds(Arc<Account>);

impl SessionFds {
    /// One descriptor for a destination socket, given back when the permit is dropped.
    pub fn try_acquire(&self) -> Result<Permit, Refusal> {
        let soft = nofile_limits().map(|(soft, _)| soft);
        let mut budget = lock(&self.0.budget);
        if let Some(soft) = soft {
            budget.set_limit(soft);
        }
        budget.try_acquire(self.0.key)?;
        Ok(Permit {
            budget: self.0.budget.clone(),
            key: self.0.key,
        })
    }

    /// Destination sockets this session holds.
    pub fn held(&self) -> usize {
        lock(&self.0.budget).held(self.0.key)
    }
}

/// One descriptor of the budget; returned on drop. Held next to the socket it stands for.
#[derive(Debug)]
pub struct Permit {
    budget: Arc<Mutex<Budget>>,
    key: SessionKey,
}

impl Drop for Permit {
    fn drop(&mut self) {
        lock(&self.budget).release(self.key);
    }
}

#[cfg(test)]
mod tests;
