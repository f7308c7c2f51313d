//! The undo journal: what to do to put the host back, written before each change.
//!
//! One JSON document (`{"version":1,"actions":[...]}`) at `<dir>/journal.json`, rewritten
//! whole for every new entry via temp file + fsync + rename + fsync(dir), so a crash leaves
//! either the previous or the new complete version, never a torn one. A file that still
//! does not parse was damaged from outside: see [`crate::Error::JournalCorrupt`] for the
//! rule (change nothing, keep the kill switch closed, tell the operator what to run).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::linux::{sibling, sync_parent, write_synced};
use crate::types::{FileState, Route, Rule};

/// Default journal directory (tmpfs: a reboot forgets the kernel state and the journal
/// together).
pub const DEFAULT_JOURNAL_DIR: &str = "/run/half-tunnel";
const FILE_NAME: &str = "journal.json";
const VERSION: u32 = 1;

/// One way to undo one change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "undo", rename_all = "snake_case")]
pub enum UndoAction {
    /// Delete a link we created (the TUN).
    DeleteLink {
        /// Interface name.
        name: String,
    },
    /// Delete a policy rule we added.
    DeleteRule {
        /// The rule.
        rule: Rule,
    },
    /// Delete a route we added.
    DeleteRoute {
        /// The route.
        route: Route,
    },
    /// Delete our nftables table (family `inet`).
    DeleteNftTable {
        /// Table name.
        name: String,
    },
    /// Put a sysctl back.
    RestoreSysctl {
        /// Key, e.g. `net.ipv4.ip_forward`.
        key: String,
        /// The value before we changed it.
        value: String,
    },
    /// `resolvectl revert` on a link.
    RevertResolved {
        /// Interface name.
        link: String,
    },
    /// Put a file back, unless someone replaced ours since (then theirs is newest: keep it).
    RestoreFile {
        /// The file.
        path: PathBuf,
        /// The newest upstream version (updated when a rewrite is detected).
        original: FileState,
        /// What we wrote.
        ours: FileState,
    },
}

#[derive(Serialize, Deserialize)]
struct Document {
    version: u32,
    actions: Vec<UndoAction>,
}

/// The on-disk list of undo actions, oldest first.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    actions: Vec<UndoAction>,
}

impl Journal {
    /// The journal file inside `dir`.
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join(FILE_NAME)
    }

    /// Start an empty journal in `dir` (created if needed). Fails with
    /// [`Error::JournalExists`] if an earlier run left one.
    pub fn create(dir: &Path) -> Result<Journal> {
        fs::create_dir_all(dir).map_err(Error::file("creating directory", dir))?;
        let path = Self::path_in(dir);
        if fs::symlink_metadata(&path).is_ok() {
            return Err(Error::JournalExists { path });
        }
        let journal = Journal {
            path,
            actions: Vec::new(),
        };
        journal.persist()?;
        Ok(journal)
    }

    /// Open the journal in `dir`: `None` if there is none.
    pub fn open(dir: &Path) -> Result<Option<Journal>> {
        let path = Self::path_in(dir);
        let bytes = match fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            other => other.map_err(Error::file("reading", &path))?,
        };
        let corrupt = |reason: String| Error::JournalCorrupt {
            path: path.clone(),
            reason,
        };
        let doc: Document = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if doc.version != VERSION {
            return Err(corrupt(format!("unknown version {}", doc.version)));
        }
        Ok(Some(Journal {
            path,
            actions: doc.actions,
        }))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The actions, oldest first.
    pub fn actions(&self) -> &[UndoAction] {
        &self.actions
    }

    /// Append `action` and make it durable. Call before making the change.
    pub fn record(&mut self, action: UndoAction) -> Result<()> {
        self.actions.push(action);
        self.persist()
    }

    /// Replace the actions (e.g. an updated backup, or what is left after a restore).
    pub(crate) fn replace(&mut self, actions: Vec<UndoAction>) -> Result<()> {
        self.actions = actions;
        self.persist()
    }

    pub(crate) fn actions_mut(&mut self) -> &mut Vec<UndoAction> {
        &mut self.actions
    }

    pub(crate) fn persist(&self) -> Result<()> {
        let doc = Document {
            version: VERSION,
            actions: self.actions.clone(),
        };
        // Serializing plain data to a Vec cannot fail.
        let bytes = serde_json::to_vec_pretty(&doc).expect("journal serializes");
        let tmp = sibling(&self.path, ".tmp");
        write_synced(&tmp, &bytes, 0o600)?;
        fs::rename(&tmp, &self.path).map_err(Error::file("renaming into place", &self.path))?;
        sync_parent(&self.path)
    }

    /// Delete the file: everything has been undone.
    pub fn remove(self) -> Result<()> {
        match fs::remove_file(&self.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => other.map_err(Error::file("removing", &self.path))?,
        }
        sync_parent(&self.path)
    }
}
