//! A node's data directory: its layout and its identity.
//!
//! ```text
//! <data-dir>/node.json        identity: format, node id, region, incarnation
//! <data-dir>/loss.pending     why state was lost, until a new incarnation is taken
//! <data-dir>/cluster-id       the cluster this directory belongs to
//! <data-dir>/rejoined         this directory took its peers' cluster: never bootstrap
//! <data-dir>/raft-log/        fjall: Raft logs and votes of every group
//! <data-dir>/raft-log.marker  per group, the last log index and vote term fsynced
//! <data-dir>/state/           sled: space state machines of every group
//! <data-dir>/state.marker     per group, the applied index sled last flushed
//! <data-dir>/snapshots/g<group>/
//! ```
//!
//! A node refuses to start on a directory that belongs to another node id,
//! holds something that is not a spaceraft data directory, or is corrupt;
//! it never writes to such a directory.
//!
//! The incarnation is a random id made with the directory: a node whose
//! directory was wiped comes back with another one, and its peers know it
//! for a node that lost what it had acknowledged
//! ([`crate::storage::types::NodeAddr::incarnation`]). A node that finds its
//! own durable state damaged takes a new incarnation too
//! ([`DataDir::renew_incarnation`]).

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::NodeId;

const IDENTITY_FILE: &str = "node.json";
/// Why the directory lost acknowledged state, written before anything that
/// would erase the evidence and removed once a new incarnation is taken.
const LOSS_FILE: &str = "loss.pending";
const FORMAT: &str = "spaceraft-data-v4";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    pub format: String,
    pub node_id: NodeId,
    pub region: String,
    /// Random, never 0; made with the directory, renewed when the node finds
    /// its durable state lost.
    pub incarnation: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("data directory {dir} belongs to node {found}, but this node is configured as node {configured}")]
    OtherNode { dir: PathBuf, found: NodeId, configured: NodeId },
    #[error(
        "data directory {dir} is not empty and is not a spaceraft data directory (no node.json); refusing to use it"
    )]
    Foreign { dir: PathBuf },
    #[error("data directory {dir} has an unreadable identity file: {why}")]
    BadIdentity { dir: PathBuf, why: String },
    #[error("data directory {dir}: {source}")]
    Io { dir: PathBuf, source: io::Error },
}

pub struct DataDir {
    pub root: PathBuf,
    pub incarnation: u64,
    /// True when this start made the directory (it held nothing).
    pub created: bool,
}

fn new_incarnation() -> u64 {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id;
        }
    }
}

impl DataDir {
    /// Checks (or, for an empty or new directory, creates) the identity.
    pub fn open(root: &Path, node_id: NodeId, region: &str) -> Result<DataDir, DataDirError> {
        let io_error = |source| DataDirError::Io { dir: root.to_path_buf(), source };
        std::fs::create_dir_all(root).map_err(io_error)?;
        let identity_path = root.join(IDENTITY_FILE);
        if identity_path.exists() {
            let text = std::fs::read_to_string(&identity_path).map_err(io_error)?;
            let found: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| DataDirError::BadIdentity { dir: root.to_path_buf(), why: e.to_string() })?;
            let format = found.get("format").and_then(|format| format.as_str()).unwrap_or_default();
            if format != FORMAT {
                return Err(DataDirError::BadIdentity {
                    dir: root.to_path_buf(),
                    why: format!("format {format:?} is not {FORMAT:?} (written by another version of spaceraft)"),
                });
            }
            let identity: Identity = serde_json::from_value(found)
                .map_err(|e| DataDirError::BadIdentity { dir: root.to_path_buf(), why: e.to_string() })?;
            if identity.incarnation == 0 {
                return Err(DataDirError::BadIdentity {
                    dir: root.to_path_buf(),
                    why: "incarnation 0 is not a valid incarnation".into(),
                });
            }
            if identity.node_id != node_id {
                return Err(DataDirError::OtherNode {
                    dir: root.to_path_buf(),
                    found: identity.node_id,
                    configured: node_id,
                });
            }
            return Ok(DataDir { root: root.to_path_buf(), incarnation: identity.incarnation, created: false });
        }
        let not_empty = std::fs::read_dir(root).map_err(io_error)?.next().is_some();
        if not_empty {
            return Err(DataDirError::Foreign { dir: root.to_path_buf() });
        }
        let identity =
            Identity { format: FORMAT.into(), node_id, region: region.into(), incarnation: new_incarnation() };
        write_identity(root, &identity).map_err(io_error)?;
        Ok(DataDir { root: root.to_path_buf(), incarnation: identity.incarnation, created: true })
    }

    /// Takes a new incarnation, durably: the node found that it lost state
    /// it had acknowledged, so it must not vote until re-admitted.
    pub fn renew_incarnation(&mut self) -> io::Result<u64> {
        let text = std::fs::read_to_string(self.root.join(IDENTITY_FILE))?;
        let mut identity: Identity = serde_json::from_str(&text).map_err(io::Error::other)?;
        identity.incarnation = new_incarnation();
        write_identity(&self.root, &identity)?;
        self.incarnation = identity.incarnation;
        match std::fs::remove_file(self.root.join(LOSS_FILE)) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => crate::storage::snapshot_file::sync_dir(&self.root)?,
        }
        Ok(identity.incarnation)
    }

    /// The losses recorded by [`record_loss`] and not yet answered with a
    /// new incarnation.
    pub fn pending_loss(&self) -> io::Result<Option<String>> {
        pending_loss(&self.root)
    }

    pub fn raft_log_dir(&self) -> PathBuf {
        self.root.join("raft-log")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    pub fn snapshot_dir(&self, group_id: u64) -> PathBuf {
        self.root.join("snapshots").join(format!("g{group_id}"))
    }
}

/// Records, durably, that the data directory at `root` lost state it had
/// acknowledged, and why. Called before the start that found the loss
/// repairs or forgets anything (which erases the evidence): a start cut off
/// before it takes a new incarnation finds the record and takes it then.
pub fn record_loss(root: &Path, why: &str) -> io::Result<()> {
    let recorded = pending_loss(root)?.unwrap_or_default();
    if recorded.contains(why) {
        return Ok(());
    }
    let text = if recorded.is_empty() { why.to_string() } else { format!("{recorded}; {why}") };
    write_durably(root, LOSS_FILE, text.as_bytes())
}

fn pending_loss(root: &Path) -> io::Result<Option<String>> {
    match std::fs::read_to_string(root.join(LOSS_FILE)) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Writes the identity file atomically and durably.
fn write_identity(root: &Path, identity: &Identity) -> io::Result<()> {
    write_durably(root, IDENTITY_FILE, &serde_json::to_vec_pretty(identity).expect("identity serializes"))
}

/// Writes `root/name` atomically and durably.
fn write_durably(root: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let temp = root.join(format!("{name}.tmp"));
    std::fs::write(&temp, bytes)?;
    std::fs::File::open(&temp).and_then(|f| f.sync_all())?;
    std::fs::rename(&temp, root.join(name))?;
    crate::storage::snapshot_file::sync_dir(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_keeps_its_node_id_and_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        let made = DataDir::open(dir.path(), 1, "us-east").unwrap();
        assert!(made.created && made.incarnation != 0);
        let mut again = DataDir::open(dir.path(), 1, "us-east").unwrap();
        assert!(!again.created);
        assert_eq!(again.incarnation, made.incarnation, "a directory keeps its incarnation");
        let renewed = again.renew_incarnation().unwrap();
        assert_ne!(renewed, made.incarnation);
        assert_eq!(DataDir::open(dir.path(), 1, "us-east").unwrap().incarnation, renewed, "renewal is durable");
        assert!(matches!(DataDir::open(dir.path(), 2, "us-east"), Err(DataDirError::OtherNode { found: 1, .. })));
    }

    #[test]
    fn a_foreign_directory_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("photo.jpg"), b"not ours").unwrap();
        assert!(matches!(DataDir::open(dir.path(), 1, "us-east"), Err(DataDirError::Foreign { .. })));
        assert!(!dir.path().join("node.json").exists());
    }

    #[test]
    fn a_recorded_loss_outlives_a_cut_off_start_until_a_new_incarnation_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let made = DataDir::open(dir.path(), 1, "us-east").unwrap();
        assert_eq!(made.pending_loss().unwrap(), None);
        record_loss(dir.path(), "group 3: log ends at 5 but 9 were fsynced").unwrap();
        record_loss(dir.path(), "group 3: log ends at 5 but 9 were fsynced").unwrap();
        record_loss(dir.path(), "group 4: its log starts after 300").unwrap();
        // The start that recorded it is cut off here; the next one finds it.
        let mut again = DataDir::open(dir.path(), 1, "us-east").unwrap();
        assert_eq!(again.incarnation, made.incarnation);
        assert_eq!(
            again.pending_loss().unwrap().as_deref(),
            Some("group 3: log ends at 5 but 9 were fsynced; group 4: its log starts after 300")
        );
        let renewed = again.renew_incarnation().unwrap();
        assert_ne!(renewed, made.incarnation);
        assert_eq!(DataDir::open(dir.path(), 1, "us-east").unwrap().pending_loss().unwrap(), None, "answered");
    }

    #[test]
    fn a_directory_of_another_format_is_refused_with_its_format_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("node.json"), br#"{"format":"spaceraft-data-v1","node_id":1,"region":"r"}"#)
            .unwrap();
        let error = DataDir::open(dir.path(), 1, "r").err().expect("refused").to_string();
        assert!(error.contains("spaceraft-data-v1"), "{error}");
    }
}
