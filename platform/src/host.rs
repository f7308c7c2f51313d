//! [`Host`]: applies changes through a [`System`], journaling each one first.

use std::path::Path;

use crate::dns::{DnsCheck, DnsConfig, DnsMethod};
use crate::error::{Error, Result};
use crate::firewall::FirewallConfig;
use crate::journal::{Journal, UndoAction};
use crate::routing::{FORWARDING_SYSCTLS, ROUTE_ALL_SYSCTLS, RouteAllConfig};
use crate::system::System;
use crate::types::TunConfig;

/// The host being changed, and the journal that can put it back.
///
/// Calling order for `vpn-client up` (after [`recover`] repaired any earlier crash):
/// [`Host::begin`] → [`Host::firewall`] (kill switch first, so nothing leaks while the
/// rest is set up) → [`Host::create_tun`] → [`Host::route_all`] → [`Host::forwarding`]
/// (router mode) → [`Host::dns`]; then call [`Host::check_dns`] every few seconds.
/// On shutdown, drop the TUN handle and call [`Host::restore`]: it undoes everything in
/// reverse, so the kill switch is the last thing to go.
#[derive(Debug)]
pub struct Host<S: System> {
    pub(crate) sys: S,
    pub(crate) journal: Journal,
}

/// What [`recover`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// There was no journal: the host is as we found it.
    Clean,
    /// A journal was replayed; this many undo actions ran.
    Restored(usize),
}

/// Undo whatever an earlier run left behind (`vpn-client down`, and the start of `up`).
///
/// A corrupt journal yields [`Error::JournalCorrupt`] and changes nothing: a kill switch
/// that was on stays on (the safe side), and the message says what to run by hand.
pub fn recover<S: System>(sys: &mut S, journal_dir: &Path) -> Result<Recovery> {
    let Some(journal) = Journal::open(journal_dir)? else {
        return Ok(Recovery::Clean);
    };
    let n = journal.actions().len();
    replay(sys, journal)?;
    Ok(Recovery::Restored(n))
}

/// Run the undo actions newest first; keep failed ones in the journal.
fn replay<S: System>(sys: &mut S, mut journal: Journal) -> Result<()> {
    let mut failed = Vec::new();
    let mut first = None;
    while let Some(action) = journal.actions_mut().pop() {
        if let Err(e) = undo(sys, &action) {
            tracing::warn!(?action, error = %e, "undo failed");
            first.get_or_insert(e);
            failed.push(action);
        }
    }
    let Some(first) = first else {
        return journal.remove();
    };
    failed.reverse();
    let count = failed.len();
    journal.replace(failed)?;
    Err(Error::RestoreIncomplete {
        path: journal.path().into(),
        failed: count,
        first: Box::new(first),
    })
}

fn undo<S: System>(sys: &mut S, action: &UndoAction) -> Result<()> {
    match action {
        UndoAction::DeleteLink { name } => sys.delete_link(name),
        UndoAction::DeleteRule { rule } => sys.delete_rule(rule),
        UndoAction::DeleteRoute { route } => sys.delete_route(route),
        UndoAction::DeleteNftTable { name } => sys.delete_nft_table(name),
        UndoAction::RestoreSysctl { key, value } => sys.write_sysctl(key, value),
        UndoAction::RevertResolved { link } => sys.revert_resolved(link),
        UndoAction::RestoreFile {
            path,
            original,
            ours,
        } => {
            // Someone replaced ours after our last check: theirs is the newest upstream.
            let now = sys.read_file(path)?;
            if now == *ours {
                sys.write_file(path, original)
            } else {
                Ok(())
            }
        }
    }
}

impl<S: System> Host<S> {
    /// Start a run: creates the journal in `journal_dir`. Fails with
    /// [`Error::JournalExists`] if an earlier run was not restored (call [`recover`]).
    pub fn begin(sys: S, journal_dir: &Path) -> Result<Self> {
        Ok(Host {
            sys,
            journal: Journal::create(journal_dir)?,
        })
    }

    /// The system, e.g. to inspect a fake's calls.
    pub fn system(&self) -> &S {
        &self.sys
    }

    /// The journal.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Create the TUN device (journaled as "delete the link"). Refuses a name that is
    /// already taken, so that restore never deletes someone else's interface.
    pub fn create_tun(&mut self, config: &TunConfig) -> Result<S::Tun> {
        if self.sys.link_exists(&config.name)? {
            return Err(Error::LinkExists {
                name: config.name.clone(),
            });
        }
        self.journal.record(UndoAction::DeleteLink {
            name: config.name.clone(),
        })?;
        self.sys.create_tun(config)
    }

    /// Load the firewall table (kill switch and/or router mode). Nothing if neither.
    pub fn firewall(&mut self, config: &FirewallConfig) -> Result<()> {
        if !config.is_needed() {
            return Ok(());
        }
        self.journal.record(UndoAction::DeleteNftTable {
            name: config.table.clone(),
        })?;
        self.sys.load_nft(&config.script())
    }

    /// Add the route-all routes and policy rules (and the sysctl they need).
    pub fn route_all(&mut self, config: &RouteAllConfig) -> Result<()> {
        self.sysctls(ROUTE_ALL_SYSCTLS)?;
        for route in config.routes() {
            self.journal.record(UndoAction::DeleteRoute {
                route: route.clone(),
            })?;
            self.sys.add_route(&route)?;
        }
        for rule in config.rules() {
            self.journal
                .record(UndoAction::DeleteRule { rule: rule.clone() })?;
            self.sys.add_rule(&rule)?;
        }
        Ok(())
    }

    /// Router mode: enable IPv4 and IPv6 forwarding.
    pub fn forwarding(&mut self) -> Result<()> {
        self.sysctls(FORWARDING_SYSCTLS)
    }

    fn sysctls(&mut self, wanted: &[(&str, &str)]) -> Result<()> {
        for &(key, value) in wanted {
            let old = self.sys.read_sysctl(key)?;
            if old == value {
                continue;
            }
            self.journal.record(UndoAction::RestoreSysctl {
                key: key.into(),
                value: old,
            })?;
            self.sys.write_sysctl(key, value)?;
        }
        Ok(())
    }

    /// Point system DNS at `config.servers`.
    pub fn dns(&mut self, config: &DnsConfig) -> Result<()> {
        let resolved = match config.method {
            DnsMethod::Auto => self.sys.resolved_running(),
            DnsMethod::Resolved => true,
            DnsMethod::ResolvConf => false,
        };
        if resolved {
            self.journal.record(UndoAction::RevertResolved {
                link: config.tun.clone(),
            })?;
            return self.sys.set_resolved(&config.tun, &config.servers);
        }
        let original = self.sys.read_file(&config.resolv_conf)?;
        let ours = config.resolv_conf_contents();
        let path = config.resolv_conf.clone();
        self.journal.record(UndoAction::RestoreFile {
            path,
            original,
            ours: ours.clone(),
        })?;
        self.sys.write_file(&config.resolv_conf, &ours)
    }

    /// Check that our resolver file is still in place. If another program replaced it,
    /// remember theirs as the version to restore, and put ours back.
    pub fn check_dns(&mut self) -> Result<DnsCheck> {
        let Some(index) = self.resolv_conf_entry() else {
            return Ok(DnsCheck::Intact);
        };
        let UndoAction::RestoreFile { path, ours, .. } = &self.journal.actions()[index] else {
            unreachable!("resolv_conf_entry returns the index of a RestoreFile");
        };
        let (path, ours) = (path.clone(), ours.clone());
        let now = self.sys.read_file(&path)?;
        if now == ours {
            return Ok(DnsCheck::Intact);
        }
        tracing::info!(path = %path.display(), "resolver file was rewritten; putting ours back");
        let mut actions = self.journal.actions().to_vec();
        if let UndoAction::RestoreFile { original, .. } = &mut actions[index] {
            *original = now;
        }
        self.journal.replace(actions)?;
        self.sys.write_file(&path, &ours)?;
        Ok(DnsCheck::Reasserted)
    }

    fn resolv_conf_entry(&self) -> Option<usize> {
        let actions = self.journal.actions();
        actions
            .iter()
            .rposition(|a| matches!(a, UndoAction::RestoreFile { .. }))
    }

    /// Undo everything, newest first, and remove the journal. Returns the system.
    pub fn restore(mut self) -> Result<S> {
        replay(&mut self.sys, self.journal)?;
        Ok(self.sys)
    }

    /// Give up the in-memory state without undoing anything (what a crash does); the
    /// journal stays on disk for [`recover`]. For tests and for handing over to `down`.
    pub fn forget(self) -> S {
        self.sys
    }
}
