//! The durable marker of a node's Raft log, kept apart from the journal:
//! per group, the last log index and the vote term known to be fsynced.
//!
//! A crash mid-write tears the journal's tail: entries after the last fsync
//! are gone, and none of them was acknowledged. Loss of fsynced data (a
//! damaged or truncated journal, a deleted `raft-log/`) is different: the
//! node acknowledged entries and votes it no longer has. The marker tells
//! them apart. The log writer raises a group's marks only after the fsync
//! that made them durable, and a background thread writes the marker file
//! (atomically, fsynced) a few times a second; a truncation of a group's
//! log lowers its mark and writes the file before the truncation is made.
//! So the file never claims more than the journal held. At open, a group
//! whose log ends before its mark, or whose vote is older than its mark,
//! lost fsynced data ([`find_losses`]): the node takes a new incarnation
//! and rejoins as a member that lost its data. Losses within the last
//! write interval can go unnoticed; anything older cannot.
//!
//! File: magic `SRMK`, crc32 (LE) of the payload, postcard payload.
//!
//! The state machine has a marker of its own, `state.marker`: per group,
//! the applied index the last successful flush of the sled state covered
//! ([`read_applied`], [`write_applied`]). A state found behind it at open
//! lost writes it had flushed; it is rebuilt from its snapshot and log
//! when they reach back far enough, and otherwise the node rejoins.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The marker file's name, in the data directory (beside `raft-log/`).
pub const MARKER_FILE: &str = "raft-log.marker";
const MAGIC: &[u8; 4] = b"SRMK";
/// The state machine's marker file, in the data directory.
pub const STATE_MARKER_FILE: &str = "state.marker";
const STATE_MAGIC: &[u8; 4] = b"SRSM";
/// How often the marker file is rewritten when marks moved.
const WRITE_INTERVAL: Duration = Duration::from_millis(200);

/// What is known durable of one group's log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The last log index fsynced (0: none).
    pub last_index: u64,
    /// The term of the last vote fsynced (0: none).
    pub vote_term: u64,
}

pub type Marks = BTreeMap<u64, Mark>;

/// A group whose log lost data it had fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loss {
    pub group: u64,
    pub durable: Mark,
    pub found: Mark,
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "group {}: log ends at {} and vote term is {}, but {} and term {} were fsynced",
            self.group, self.found.last_index, self.found.vote_term, self.durable.last_index, self.durable.vote_term
        )
    }
}

/// The groups whose log or vote is behind what was durable. A log that
/// ends past its mark (entries fsynced after the last marker write, or a
/// torn tail that was never acknowledged) is no loss.
pub fn find_losses(durable: &Marks, found: &Marks) -> Vec<Loss> {
    durable
        .iter()
        .filter_map(|(group, durable)| {
            let found = found.get(group).copied().unwrap_or_default();
            (found.last_index < durable.last_index || found.vote_term < durable.vote_term).then_some(Loss {
                group: *group,
                durable: *durable,
                found,
            })
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum MarkerError {
    #[error("marker file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("marker file {path} is damaged: {why}")]
    Damaged { path: PathBuf, why: String },
}

pub fn encode(marks: &Marks) -> Vec<u8> {
    seal(MAGIC, marks)
}

pub fn decode(bytes: &[u8]) -> Result<Marks, String> {
    unseal(MAGIC, bytes)
}

fn seal<T: Serialize>(magic: &[u8; 4], value: &T) -> Vec<u8> {
    let payload = postcard::to_stdvec(value).expect("marks serialize");
    let mut bytes = Vec::with_capacity(payload.len() + 8);
    bytes.extend_from_slice(magic);
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    bytes
}

fn unseal<T: serde::de::DeserializeOwned>(magic: &[u8; 4], bytes: &[u8]) -> Result<T, String> {
    if bytes.len() < 8 || &bytes[..4] != magic {
        return Err("not a marker file".into());
    }
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[8..]) != crc {
        return Err("checksum mismatch".into());
    }
    postcard::from_bytes(&bytes[8..]).map_err(|error| error.to_string())
}

fn read_file<T: serde::de::DeserializeOwned>(path: PathBuf, magic: &[u8; 4]) -> Result<Option<T>, MarkerError> {
    match std::fs::read(&path) {
        Ok(bytes) => unseal(magic, &bytes).map(Some).map_err(|why| MarkerError::Damaged { path, why }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(MarkerError::Io { path, source }),
    }
}

/// Writes `bytes` as `root/name`: a temporary file, fsynced, renamed over
/// the old one, the directory fsynced.
fn write_file(root: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let temp = root.join(format!("{name}.tmp"));
    std::fs::write(&temp, bytes)?;
    std::fs::File::open(&temp)?.sync_all()?;
    std::fs::rename(&temp, root.join(name))?;
    crate::storage::snapshot_file::sync_dir(root)
}

/// Reads the marker file of `root`; None when there is none.
pub fn read(root: &Path) -> Result<Option<Marks>, MarkerError> {
    read_file(root.join(MARKER_FILE), MAGIC)
}

/// Per group, the applied index the sled state was flushed at.
pub type Applied = BTreeMap<u64, u64>;

/// Reads the state machine's marker of `root`; None when there is none.
pub fn read_applied(root: &Path) -> Result<Option<Applied>, MarkerError> {
    read_file(root.join(STATE_MARKER_FILE), STATE_MAGIC)
}

/// Records what a successful flush of the sled state covered. Blocking.
pub fn write_applied(root: &Path, applied: &Applied) -> io::Result<()> {
    write_file(root, STATE_MARKER_FILE, &seal(STATE_MAGIC, applied))
}

/// A change to a group's marks, known durable after an fsync.
#[derive(Debug, Clone, Copy)]
pub enum Raise {
    LastIndex(u64, u64),
    VoteTerm(u64, u64),
}

/// The live marks of a node's log and the thread that writes them out.
pub struct Marker {
    root: PathBuf,
    marks: Mutex<Marks>,
    dirty: AtomicBool,
    /// Held while the file is written: one writer at a time, each writing
    /// the marks current when it holds this.
    writing: Mutex<()>,
}

impl Marker {
    /// Starts from `marks` (what the log holds at open) and writes them.
    pub fn start(root: &Path, marks: Marks) -> io::Result<Arc<Marker>> {
        let marker = Arc::new(Marker {
            root: root.to_path_buf(),
            marks: Mutex::new(marks),
            dirty: AtomicBool::new(false),
            writing: Mutex::new(()),
        });
        marker.write_now()?;
        let weak = Arc::downgrade(&marker);
        std::thread::Builder::new().name("raft-log-marker".into()).spawn(move || loop {
            std::thread::sleep(WRITE_INTERVAL);
            let Some(marker) = weak.upgrade() else { return };
            if marker.dirty.swap(false, Ordering::AcqRel) {
                if let Err(error) = marker.write_now() {
                    marker.dirty.store(true, Ordering::Release);
                    tracing::warn!(%error, "cannot write the raft log marker");
                }
            }
        })?;
        Ok(marker)
    }

    /// Raises marks made durable by an fsync.
    pub fn raise(&self, raises: &[Raise]) {
        if raises.is_empty() {
            return;
        }
        let mut marks = self.marks.lock().expect("marks lock");
        for raise in raises {
            match *raise {
                Raise::LastIndex(group, index) => {
                    let mark = marks.entry(group).or_default();
                    mark.last_index = mark.last_index.max(index);
                }
                Raise::VoteTerm(group, term) => {
                    let mark = marks.entry(group).or_default();
                    mark.vote_term = mark.vote_term.max(term);
                }
            }
        }
        self.dirty.store(true, Ordering::Release);
    }

    /// Lowers a group's last index before its log is truncated after
    /// `last_index`, and writes the file at once when it was higher.
    pub fn lower(&self, group: u64, last_index: u64) -> io::Result<()> {
        let lowered = {
            let mut marks = self.marks.lock().expect("marks lock");
            match marks.get_mut(&group) {
                Some(mark) if mark.last_index > last_index => {
                    mark.last_index = last_index;
                    true
                }
                _ => false,
            }
        };
        if lowered {
            self.write_now()?;
        }
        Ok(())
    }

    fn write_now(&self) -> io::Result<()> {
        let _writing = self.writing.lock().expect("marker write lock");
        let bytes = encode(&self.marks.lock().expect("marks lock").clone());
        write_file(&self.root, MARKER_FILE, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks(groups: &[(u64, u64, u64)]) -> Marks {
        groups
            .iter()
            .map(|(group, last_index, vote_term)| (*group, Mark { last_index: *last_index, vote_term: *vote_term }))
            .collect()
    }

    #[test]
    fn a_torn_tail_is_no_loss_but_fsynced_entries_or_votes_gone_are() {
        let durable = marks(&[(0, 100, 3), (1, 50, 2)]);
        assert!(find_losses(&durable, &marks(&[(0, 100, 3), (1, 50, 2)])).is_empty(), "all there");
        assert!(find_losses(&durable, &marks(&[(0, 130, 4), (1, 51, 2)])).is_empty(), "more than the marker knew");
        let lost = find_losses(&durable, &marks(&[(0, 40, 3), (1, 50, 2)]));
        assert_eq!(lost, vec![Loss { group: 0, durable: durable[&0], found: Mark { last_index: 40, vote_term: 3 } }]);
        let vote_lost = find_losses(&durable, &marks(&[(0, 100, 2), (1, 50, 2)]));
        assert_eq!(vote_lost.len(), 1, "a vote older than the fsynced one is a loss");
        let wiped = find_losses(&durable, &Marks::new());
        assert_eq!(wiped.len(), 2, "a deleted log lost every group");
        assert!(find_losses(&Marks::new(), &marks(&[(0, 5, 1)])).is_empty(), "no marker, nothing to compare");
    }

    #[test]
    fn a_damaged_marker_is_told_from_a_good_one() {
        let good = encode(&marks(&[(7, 9, 1)]));
        assert_eq!(decode(&good).unwrap(), marks(&[(7, 9, 1)]));
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        assert!(decode(&flipped).unwrap_err().contains("checksum"));
        assert!(decode(b"junk").is_err());
        assert!(decode(&good[..6]).is_err());
    }

    #[test]
    fn the_state_marker_round_trips_and_is_told_apart_from_the_log_marker() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_applied(dir.path()).unwrap().is_none());
        let applied: Applied = [(0, 17), (5, 3)].into_iter().collect();
        write_applied(dir.path(), &applied).unwrap();
        assert_eq!(read_applied(dir.path()).unwrap().unwrap(), applied);
        std::fs::copy(dir.path().join(STATE_MARKER_FILE), dir.path().join(MARKER_FILE)).unwrap();
        assert!(matches!(read(dir.path()), Err(MarkerError::Damaged { .. })), "a state marker is no log marker");
    }

    #[test]
    fn the_file_never_claims_more_than_after_a_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let marker = Marker::start(dir.path(), marks(&[(1, 10, 1)])).unwrap();
        marker.raise(&[Raise::LastIndex(1, 20), Raise::VoteTerm(1, 2), Raise::LastIndex(2, 4)]);
        marker.lower(1, 15).unwrap();
        assert_eq!(read(dir.path()).unwrap().unwrap(), marks(&[(1, 15, 2), (2, 4, 0)]), "written at the truncation");
        marker.lower(1, 30).unwrap();
        assert_eq!(read(dir.path()).unwrap().unwrap()[&1].last_index, 15, "lowering never raises");
    }
}
