//! One space cluster replica hosted on this node, and the registry of them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::node::proposer::Proposer;
use crate::raft::types::Raft;
use crate::storage::SpaceReader;

/// Everything a node needs to serve one group.
pub struct Group {
    pub id: u64,
    pub raft: Raft,
    /// Reads the applied state for History and Subscribe.
    pub reader: SpaceReader,
    /// Batches posts into Raft entries when this replica leads.
    pub proposer: Proposer,
    /// Where received snapshots are written before install.
    pub snapshot_dir: PathBuf,
}

/// The groups hosted on this node, by id; cheap to clone.
#[derive(Clone, Default)]
pub struct Groups {
    groups: Arc<RwLock<BTreeMap<u64, Arc<Group>>>>,
}

impl Groups {
    pub fn get(&self, id: u64) -> Option<Arc<Group>> {
        self.groups.read().expect("groups lock").get(&id).cloned()
    }

    pub fn insert(&self, group: Group) {
        self.groups.write().expect("groups lock").insert(group.id, Arc::new(group));
    }

    pub fn all(&self) -> Vec<Arc<Group>> {
        self.groups.read().expect("groups lock").values().cloned().collect()
    }
}
