//! What the exit keeps across restarts, under `[runtime] state_dir`: the newest accepted
//! handshake timestamp of every client key (`replay-marks`), so that a relay that archived
//! handshake inits cannot replay them after a restart (PROTOCOL.md §3.3).
//!
//! The file is written atomically (a temporary file, `fsync`, `rename`, `fsync` of the
//! directory) before a handshake is answered. A file that cannot be parsed is moved aside
//! with a warning and the exit starts without marks: the handshake's past bound
//! (`max_past_skew`) still refuses inits older than that.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use proto::Acceptor;

/// The marks' file name in the state directory.
pub const REPLAY_MARKS: &str = "replay-marks";

/// The state directory could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The directory could not be created.
    #[error(
        "cannot create the state directory {}: {source} (set [runtime] state_dir to a directory the exit may write)",
        dir.display()
    )]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The marks could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The replay marks' file.
#[derive(Debug)]
pub struct ReplayStore {
    path: PathBuf,
    /// One writer at a time; each writes the newest marks it finds.
    writing: std::sync::Mutex<()>,
}

/// Marks: (client key, newest accepted timestamp).
pub type Marks = Vec<([u8; 32], u64)>;

impl ReplayStore {
    /// Open (creating) `dir` and read its marks. Writes them back at once, so that a
    /// directory the exit cannot write is an error at start, not at the first handshake.
    pub fn open(dir: &Path) -> Result<(ReplayStore, Marks), StateError> {
        create_private_dir(dir).map_err(|source| StateError::Dir {
            dir: dir.to_owned(),
            source,
        })?;
        let store = ReplayStore {
            path: dir.join(REPLAY_MARKS),
            writing: std::sync::Mutex::new(()),
        };
        let marks = store.read();
        store.write(&marks)?;
        Ok((store, marks))
    }

    fn read(&self) -> Marks {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "cannot read the replay marks; starting without them (inits older than max_past_skew are still refused)");
                return Vec::new();
            }
        };
        match parse(&text) {
            Ok(marks) => marks,
            Err(line) => {
                let aside = self.path.with_extension("corrupt");
                let _ = std::fs::rename(&self.path, &aside);
                tracing::warn!(file = %self.path.display(), line, moved_to = %aside.display(), "the replay marks are not readable; starting without them (inits older than max_past_skew are still refused)");
                Vec::new()
            }
        }
    }

    /// Persist the acceptor's current marks (blocking: call it off the async threads).
    pub fn save(&self, acceptor: &std::sync::Mutex<Acceptor>) -> Result<(), StateError> {
        let _one = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        // Taken under the writer lock, so the last writer writes the newest marks.
        let marks = acceptor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replay_marks();
        self.write(&marks)
    }

    fn write(&self, marks: &[([u8; 32], u64)]) -> Result<(), StateError> {
        let err = |source| StateError::Write {
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp).map_err(err)?;
        file.write_all(format(marks).as_bytes()).map_err(err)?;
        file.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(err)?;
        }
        Ok(())
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// One line per key: the key in base64 and the timestamp in decimal.
fn format(marks: &[([u8; 32], u64)]) -> String {
    let mut out = String::from(
        "# Half-Tunnel exit: the newest accepted handshake timestamp per client key.\n\
         # Written by exit-node; deleting it weakens replay protection until clients reconnect.\n",
    );
    for (key, ts) in marks {
        out.push_str(&crate::keys::encode_key(key));
        out.push(' ');
        out.push_str(&ts.to_string());
        out.push('\n');
    }
    out
}

/// The marks of `text`, or the number of the first line that is not one.
fn parse(text: &str) -> Result<Marks, usize> {
    let mut marks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let key = words.next().and_then(|k| crate::keys::decode_key(k).ok());
        let ts = words.next().and_then(|t| t.parse::<u64>().ok());
        match (key, ts, words.next()) {
            (Some(key), Some(ts), None) => marks.push((key, ts)),
            _ => return Err(i + 1),
        }
    }
    Ok(marks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ht-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn marks_round_trip_and_a_corrupt_file_is_moved_aside() {
        let d = dir("roundtrip");
        let (store, marks) = ReplayStore::open(&d).unwrap();
        assert!(marks.is_empty());
        let want = vec![([1; 32], 5), ([2; 32], u64::MAX)];
        store.write(&want).unwrap();
        let (_, got) = ReplayStore::open(&d).unwrap();
        assert_eq!(got, want);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&d).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "the state directory is private");

        std::fs::write(d.join(REPLAY_MARKS), "garbage here\n").unwrap();
        let (_, got) = ReplayStore::open(&d).unwrap();
        assert!(got.is_empty());
        assert!(d.join("replay-marks.corrupt").exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_directory_that_cannot_be_created_is_a_clear_error() {
        let d = dir("blocked");
        std::fs::write(&d, "a file, not a directory").unwrap();
        let err = ReplayStore::open(&d.join("sub")).unwrap_err().to_string();
        assert!(err.contains("state_dir"), "{err}");
        let _ = std::fs::remove_file(&d);
    }
}
