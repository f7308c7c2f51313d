//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while changing (or restoring) the host.
///
/// Messages name the command or file and what failed, so that an operator can act on them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A helper program (`ip`, `nft`, `resolvectl`) could not be started at all.
    #[error("could not run `{program}` (is it installed?): {source}")]
    Spawn {
        /// The program name.
        program: String,
        /// Why spawning failed.
        #[source]
        source: io::Error,
    },
    /// A helper program ran and reported failure.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line, for the log.
        command: String,
        /// Exit status as printed by the OS.
        status: String,
        /// What the program wrote to stderr, trimmed.
        stderr: String,
    },
    /// Reading, writing, renaming or removing a file failed.
    #[error("{op} {}: {source}", path.display())]
    File {
        /// What we were doing ("reading", "writing", ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The TUN device could not be created or configured.
    #[error("creating TUN device {name}: {source}")]
    Tun {
        /// Requested interface name.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An interface with the TUN's name already exists: we will not adopt (and later
    /// delete) something that is not ours.
    #[error("interface {name} already exists; choose another TUN name or remove it")]
    LinkExists {
        /// Interface name.
        name: String,
    },
    /// `setsockopt(SO_MARK)` failed (needs CAP_NET_ADMIN).
    #[error("setting SO_MARK {mark:#x} on a socket: {source}")]
    Mark {
        /// The mark.
        mark: u32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A sysctl key that does not name a file below /proc/sys.
    #[error("invalid sysctl key {0:?}")]
    InvalidSysctlKey(String),
    /// `up` found the journal of an earlier run: the host is not in its original state.
    #[error(
        "undo journal {} exists: an earlier run was not torn down; run `vpn-client down` first",
        path.display()
    )]
    JournalExists {
        /// The journal file.
        path: PathBuf,
    },
    /// The journal cannot be parsed. Nothing was changed: if the kill switch was on, the
    /// host stays closed.
    #[error(
        "undo journal {} is corrupt ({reason}); nothing was changed, so a kill switch that was \
         on stays on. Inspect `ip rule`, `ip -6 rule`, `ip route show table all` and the \
         resolver file by hand, then reopen the host with `nft delete table inet half_tunnel` \
         and delete the journal file",
        path.display()
    )]
    JournalCorrupt {
        /// The journal file.
        path: PathBuf,
        /// The parser's complaint.
        reason: String,
    },
    /// Some undo actions failed; they are kept in the journal for the next attempt.
    #[error(
        "restore left {failed} change(s) in place (kept in {}); first failure: {first}",
        path.display()
    )]
    RestoreIncomplete {
        /// The journal file, still holding the failed actions.
        path: PathBuf,
        /// How many actions failed.
        failed: usize,
        /// The first failure.
        first: Box<Error>,
    },
}

impl Error {
    pub(crate) fn file(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::File { op, path, source }
    }
}
