//! A node's data directory: its layout and its identity.
//!
//! ```text
//! <data-dir>/node.json     identity: format, node id, region
//! <data-dir>/raft-log/     fjall: Raft logs and votes of every group
//! <data-dir>/state/        sled: space state machines of every group
//! <data-dir>/snapshots/g<group>/
//! ```
//!
//! A node refuses to start on a directory that belongs to another node id,
//! holds something that is not a spaceraft data directory, or is corrupt;
//! it never writes to such a directory.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::NodeId;

const IDENTITY_FILE: &str = "node.json";
const FORMAT: &str = "spaceraft-data-v1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    pub format: String,
    pub node_id: NodeId,
    pub region: String,
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
}

impl DataDir {
    /// Checks (or, for an empty or new directory, creates) the identity.
    pub fn open(root: &Path, node_id: NodeId, region: &str) -> Result<DataDir, DataDirError> {
        let io_error = |source| DataDirError::Io { dir: root.to_path_buf(), source };
        std::fs::create_dir_all(root).map_err(io_error)?;
        let identity_path = root.join(IDENTITY_FILE);
        if identity_path.exists() {
            let text = std::fs::read_to_string(&identity_path).map_err(io_error)?;
            let identity: Identity = serde_json::from_str(&text)
                .map_err(|e| DataDirError::BadIdentity { dir: root.to_path_buf(), why: e.to_string() })?;
            if identity.format != FORMAT {
                return Err(DataDirError::BadIdentity {
                    dir: root.to_path_buf(),
                    why: format!("format {:?} is not {FORMAT:?}", identity.format),
                });
            }
            if identity.node_id != node_id {
                return Err(DataDirError::OtherNode {
                    dir: root.to_path_buf(),
                    found: identity.node_id,
                    configured: node_id,
                });
            }
            return Ok(DataDir { root: root.to_path_buf() });
        }
        let not_empty = std::fs::read_dir(root).map_err(io_error)?.next().is_some();
        if not_empty {
            return Err(DataDirError::Foreign { dir: root.to_path_buf() });
        }
        let identity = Identity { format: FORMAT.into(), node_id, region: region.into() };
        let temp = root.join("node.json.tmp");
        std::fs::write(&temp, serde_json::to_vec_pretty(&identity).expect("identity serializes")).map_err(io_error)?;
        std::fs::File::open(&temp).and_then(|f| f.sync_all()).map_err(io_error)?;
        std::fs::rename(&temp, &identity_path).map_err(io_error)?;
        crate::storage::snapshot_file::sync_dir(root).map_err(io_error)?;
        Ok(DataDir { root: root.to_path_buf() })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_keeps_its_node_id_and_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        DataDir::open(dir.path(), 1, "us-east").unwrap();
        DataDir::open(dir.path(), 1, "us-east").unwrap();
        assert!(matches!(DataDir::open(dir.path(), 2, "us-east"), Err(DataDirError::OtherNode { found: 1, .. })));
    }

    #[test]
    fn a_foreign_directory_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("photo.jpg"), b"not ours").unwrap();
        assert!(matches!(DataDir::open(dir.path(), 1, "us-east"), Err(DataDirError::Foreign { .. })));
        assert!(!dir.path().join("node.json").exists());
    }
}
